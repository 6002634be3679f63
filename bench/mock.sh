#!/usr/bin/env bash
# HTTP macro benchmark: whole builds against the mock LLM server on 127.0.0.1 with a set latency.
# Prints one table: scenario, tickets, calls, wall s, CPU s (user+sys), peak RSS, calls/s, the
# ratio of the ideal wall time (total reply time / concurrency) to the measured one, and the best
# wall time attainable ("best_s": a simulated scheduler with no overhead that keeps every slot busy
# while there is a call to make and never pays for a call twice, averaged over 20 draws of which
# replies are slow), and the tickets read back from the cache in their turn because they finished
# far ahead of it (behind a slow one). With a tail the best ends well after the ideal: the last slow reply starts
# near the end of the build, and nothing can run in its place. "durability off" is the
# same cold build without waiting for group commits, to show what the guarantee costs.
# Usage: bench/mock.sh [TICKETS] [CONCURRENCY] [LATENCY_MS]   (default 1000 100 100)
# A latency tail: SLOW_SHARE=0.01 SLOW_MS=30000 bench/mock.sh 2000 100 500 makes 1% of the replies
# (chosen by key) take 30 s; the ideal then counts them (total reply time / concurrency).
set -euo pipefail
cd "$(dirname "$0")/.."
tickets=${1:-1000}
concurrency=${2:-100}
latency=${3:-100}
cargo build --release --locked --example mock-llm --bin ticketbuild >/dev/null 2>&1
bin=${TICKETBUILD_BIN:-$PWD/target/release/ticketbuild}   # TICKETBUILD_BIN: compare another build
mock=$PWD/target/release/examples/mock-llm
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
slow_share=${SLOW_SHARE:-0}
slow_ms=${SLOW_MS:-30000}
"$mock" --latency-ms "$latency" --slow-share "$slow_share" --slow-ms "$slow_ms" --port "$port" > /dev/null 2>&1 &
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
printf '%-28s %8s %7s %8s %7s %7s %8s %8s %8s %9s\n' scenario tickets calls wall_s cpu_s rss_mb calls/s ideal best_s read_back
run() {
  local name=$1; shift
  local start end out
  start=$(date +%s%N)
  out=$( { /usr/bin/time -f '%U %S %M' "$bin" build --json --no-progress "$@" > summary.json; } 2>&1 | tail -1)
  end=$(date +%s%N)
  read -r user sys rss <<< "$out"
  python3 - "$name" "$tickets" "$start" "$end" "$user" "$sys" "$rss" "$concurrency" "$latency" "$slow_share" "$slow_ms" <<'PY'
import heapq, json, random, sys
name, tickets, start, end, user, sys_, rss, conc, lat, share, slow = sys.argv[1:]
tickets, conc, share = int(tickets), int(conc), float(share)
lat_s, slow_s = int(lat) / 1000, int(slow) / 1000
s = json.load(open("summary.json"))
calls = sum(n["generated"] for n in s["nodes"])
wall = (int(end) - int(start)) / 1e9

def best(seed):
    """A scheduler with no overhead that never pays twice: `conc` calls always in flight while
    there is a call to make, each ticket's calls one after the other, the same tail."""
    rng = random.Random(seed)
    chain = max(1, round(calls / tickets))
    running, waiting, started, now = [], [], 0, 0.0
    while True:
        while len(running) < conc and (waiting or started < tickets):
            if waiting:
                node = waiting.pop()
            else:
                node, started = 0, started + 1
            took = slow_s if rng.random() < share else lat_s
            heapq.heappush(running, (now + took, node))
        if not running:
            return now
        now, node = heapq.heappop(running)
        if node + 1 < chain:
            waiting.append(node + 1)

ideal = calls / conc * ((1 - share) * lat_s + share * slow_s)
ratio = f"{ideal / wall:.0%}" if calls else "-"
best_s = f"{sum(best(seed) for seed in range(20)) / 20:.2f}" if calls else "-"
cps = int(calls / wall) if calls else 0
print(f"{name:<28} {tickets:>8} {calls:>7} {wall:>8.2f} {float(user)+float(sys_):>7.2f} {int(rss)//1024:>7} {cps:>8} {ratio:>8} {best_s:>8} {s.get('read_back', 0):>9}")
PY
}
run "cold build"
run "cold, durability off" --no-durable --cache cache-nodurable --output out-nodurable
run "no-op rebuild"
sed -i 's/Write the email body/Write the full email body/' prompts/body.jinja
run "edit the last node's prompt"
