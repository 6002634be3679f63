#!/usr/bin/env bash
# HTTP macro benchmark: whole builds against the mock LLM server on 127.0.0.1 with a set latency.
# Prints one table: scenario, tickets, calls, wall s, CPU s (user+sys), peak RSS, calls/s, and the
# ratio of the ideal wall time (calls / concurrency * latency) to the measured one. "durability off"
# is the same cold build without waiting for group commits, to show what the guarantee costs.
# Usage: bench/mock.sh [TICKETS] [CONCURRENCY] [LATENCY_MS]   (default 1000 100 100)
set -euo pipefail
cd "$(dirname "$0")/.."
tickets=${1:-1000}
concurrency=${2:-100}
latency=${3:-100}
cargo build --release --locked --example mock-llm --bin ticketbuild >/dev/null 2>&1
bin=${TICKETBUILD_BIN:-$PWD/target/release/ticketbuild}   # TICKETBUILD_BIN: compare another build
mock=$PWD/target/release/examples/mock-llm
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$mock" --latency-ms "$latency" --port "$port" > /dev/null 2>&1 &
mock_pid=$!
work=$(mktemp -d)
trap 'kill $mock_pid 2>/dev/null; rm -rf "$work"' EXIT
sleep 0.5

mkdir -p "$work/prompts"
cd "$work"
cat > dataset.toml <<TOML
[dataset]
name = "bench"
rows = $tickets
seed = 1
formats = ["parquet", "csv", "jsonl"]
concurrency = $concurrency

[tables.queue]
"IT Support" = 1
"Billing and Payments" = 1

[models.default]
provider = "openai-compatible"
model = "mock"
base_url = "http://127.0.0.1:$port/v1"
max_concurrency = $concurrency

[cost.prices.mock]
input = 0.15
output = 0.60

[nodes.topic]
prompt = "prompts/topic.jinja"

[nodes.subject]
prompt = "prompts/subject.jinja"

[nodes.body]
prompt = "prompts/body.jinja"
TOML
echo 'Name one issue a customer raises with the {{ queue }} team, ticket {{ ticket_id }}.' > prompts/topic.jinja
echo 'Write a subject line about: {{ topic }}' > prompts/subject.jinja
echo 'Write the email body for "{{ subject }}" about {{ topic }}.' > prompts/body.jinja

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
printf '%-28s %8s %7s %8s %7s %7s %8s %8s\n' scenario tickets calls wall_s cpu_s rss_mb calls/s ideal
run() {
  local name=$1; shift
  local start end out
  start=$(date +%s%N)
  out=$( { /usr/bin/time -f '%U %S %M' "$bin" build --json --no-progress "$@" > summary.json; } 2>&1 | tail -1)
  end=$(date +%s%N)
  read -r user sys rss <<< "$out"
  python3 - "$name" "$tickets" "$start" "$end" "$user" "$sys" "$rss" "$concurrency" "$latency" <<'PY'
import json, sys
name, tickets, start, end, user, sys_, rss, conc, lat = sys.argv[1:]
s = json.load(open("summary.json"))
calls = sum(n["generated"] for n in s["nodes"])
wall = (int(end) - int(start)) / 1e9
ideal = calls / int(conc) * int(lat) / 1000
ratio = f"{ideal / wall:.0%}" if calls else "-"
cps = int(calls / wall) if calls else 0
print(f"{name:<28} {tickets:>8} {calls:>7} {wall:>8.2f} {float(user)+float(sys_):>7.2f} {int(rss)//1024:>7} {cps:>8} {ratio:>8}")
PY
}
run "cold build"
run "cold, durability off" --no-durable --cache cache-nodurable --output out-nodurable
run "no-op rebuild"
sed -i 's/Write the email body/Write the full email body/' prompts/body.jinja
run "edit the last node's prompt"
