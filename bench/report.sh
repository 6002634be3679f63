#!/usr/bin/env bash
# Report benchmark: builds the example dataset with the offline model at each size, then times
# `ticketbuild report` (HTML) on it: wall seconds, CPU seconds, peak RSS and the HTML's size.
# Usage: bench/report.sh [TICKETS...]   (default 10000 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin ticketbuild >/dev/null 2>&1
bin=${TICKETBUILD_BIN:-$PWD/target/release/ticketbuild}
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
printf '%10s %8s %7s %8s %9s\n' tickets wall_s cpu_s rss_mb html_kb
for tickets in "${@:-10000 100000}"; do
  for n in $tickets; do
    dir="$work/$n"
    mkdir -p "$dir"
    cp "$root/dataset.toml" "$dir/" && cp -r "$root/prompts" "$dir/"
    sed -i "s/^rows = .*/rows = $n/" "$dir/dataset.toml"
    (cd "$dir" && "$bin" build --no-progress > /dev/null)
    out=$( { cd "$dir" && /usr/bin/time -f '%e %U %S %M' "$bin" report > /dev/null; } 2>&1 | tail -1)
    read -r wall user sys rss <<< "$out"
    html=$(stat -c %s "$dir/out/tickets.report.html")
    printf '%10s %8s %7.2f %8d %9d\n' "$n" "$wall" "$(python3 -c "print($user + $sys)")" $((rss / 1024)) $((html / 1024))
  done
done
