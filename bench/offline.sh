#!/usr/bin/env bash
# Offline macro benchmark: whole builds of the example dataset with the built-in offline model.
# Prints one table: scenario, tickets, artifacts generated, wall s, CPU s (user+sys), peak RSS MB.
# Usage: bench/offline.sh [ROWS]   (default 100000). Needs a release build (cargo build --release);
# BIN=path/to/ticketbuild runs another binary (to compare two builds back to back).
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-100000}
bin=${BIN:-$PWD/target/release/ticketbuild}
[ -x "$bin" ] || cargo build --release --locked
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r dataset.toml prompts "$work/"
cd "$work"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
printf '%-34s %9s %10s %8s %8s %9s %12s\n' scenario tickets generated wall_s cpu_s rss_mb tickets/s

run() {
  local name=$1; shift
  local out start end
  start=$(date +%s%N)
  out=$( { /usr/bin/time -f '%e %U %S %M' "$bin" build --json --no-progress --rows "$rows" "$@" > summary.json; } 2>&1 | tail -1)
  end=$(date +%s%N)
  read -r _ user sys rss <<< "$out"
  local wall
  wall=$(python3 -c "print(round(($end - $start) / 1e9, 3))")
  local generated
  generated=$(python3 -c 'import json; s=json.load(open("summary.json")); print(sum(n["generated"] for n in s["nodes"]))')
  local cpu
  cpu=$(python3 -c "print(round($user + $sys, 2))")
  local rate
  rate=$(python3 -c "print(int($rows / max($wall, 0.001)))")
  printf '%-34s %9s %10s %8s %8s %9s %12s\n' "$name" "$rows" "$generated" "$wall" "$cpu" "$((rss / 1024))" "$rate"
}

run "cold build (empty cache)"
run "no-op rebuild (nothing changed)"
rm -rf out
run "reassembly (out/ deleted)"
sed -i 's/sign with your name and team/sign with your name and your team/' prompts/first_response.jinja
run "one downstream prompt edited"
echo "cache: $(du -sb cache | cut -f1) bytes on disk for $(python3 -c "import json; s=json.load(open('summary.json')); print(sum(n['reused']+n['generated'] for n in s['nodes']))") artifacts"
