#!/usr/bin/env bash
# Rate-limit benchmark: 600 calls (200 tickets of three nodes, 16 in flight) against the mock LLM
# server enforcing a token bucket (full at start) of 300 requests a minute, described in OpenAI's
# headers, in Anthropic's, or in none. Prints per scenario: the wall time, the least the bucket
# allows (what is left after the full bucket, at 5 a second), the attempts the server saw, how many
# it answered 429, and the most attempts one call took (from the mock's own count), and the time the
# build spent waiting for a rate limit (from `build --json`, when the binary reports it).
# Usage: bench/ratelimit.sh [TICKETS]   (default 200)
# TICKETBUILD_BIN=path compares another build of ticketbuild on the same scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
tickets=${1:-200}
rpm=300
cargo build --release --locked --example mock-llm --bin ticketbuild >/dev/null 2>&1
bin=${TICKETBUILD_BIN:-$PWD/target/release/ticketbuild}
mock=$PWD/target/release/examples/mock-llm
work=$(mktemp -d)
mock_pid=
trap 'test -n "$mock_pid" && kill $mock_pid 2>/dev/null; rm -rf "$work"' EXIT
export BENCH_RATELIMIT_KEY=bench

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
printf '%-40s %6s %7s %6s %9s %6s %9s %7s\n' scenario calls wall_s min_s attempts 429s most/call wait_s

# scenario NAME HEADERS PROVIDER EXTRA_MODEL_LINES
scenario() {
  local name=$1 headers=$2 provider=$3 extra=$4
  local port dir
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  dir=$(mktemp -d -p "$work")
  "$mock" --latency-ms 100 --rpm "$rpm" --limit-headers "$headers" --port "$port" > "$dir/mock.log" 2>&1 &
  mock_pid=$!
  sleep 0.5
  mkdir -p "$dir/prompts"
  cat > "$dir/dataset.toml" <<TOML
[dataset]
name = "paced"
rows = $tickets
seed = 5
formats = ["jsonl"]
concurrency = 64

[tables.queue]
"IT Support" = 1
"Billing and Payments" = 1

[models.default]
provider = "$provider"
model = "mock"
base_url = "http://127.0.0.1:$port/v1"
api_key_env = "BENCH_RATELIMIT_KEY"
max_concurrency = 16
max_tokens = 200
$extra

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
  echo 'Name one issue a customer of ticket {{ ticket_id }} raises with the {{ queue }} team.' > "$dir/prompts/topic.jinja"
  echo 'Write a subject line about: {{ topic }}' > "$dir/prompts/subject.jinja"
  echo 'Write the email body for "{{ subject }}" about {{ topic }}.' > "$dir/prompts/body.jinja"
  local start end
  start=$(date +%s%N)
  (cd "$dir" && "$bin" build --json --no-progress > summary.json 2> build.log) || true
  end=$(date +%s%N)
  sleep 5.5   # the mock reports its counts every 5 seconds
  kill "$mock_pid" 2>/dev/null || true
  wait "$mock_pid" 2>/dev/null || true
  mock_pid=
  python3 - "$name" "$dir" "$start" "$end" "$rpm" <<'PY'
import json, re, sys
name, d, start, end, rpm = sys.argv[1:]
wall = (int(end) - int(start)) / 1e9
s = json.load(open(f"{d}/summary.json"))
calls = sum(n["generated"] for n in s["nodes"])
least = max(0, calls - int(rpm)) / (int(rpm) / 60)
last = [l for l in open(f"{d}/mock.log") if " requests, " in l][-1]
attempts = int(re.match(r"(\d+) requests", last).group(1))
most = re.search(r"at most (\d+) requests for one key", last).group(1)
rejected = attempts - int(re.search(r"(\d+) answered", last).group(1))
wait = sum(m.get("rate_limit_wait_ms", 0) for m in s.get("models", [])) / 1000 if s.get("models") else None
share = f"{rejected} ({rejected / attempts:.0%})"
print(f"{name:<40} {calls:>6} {wall:>7.1f} {least:>6.1f} {attempts:>9} {share:>10} {most:>8} {'-' if wait is None else f'{wait:.1f}':>7}")
PY
}

scenario "OpenAI headers" openai openai-compatible ""
scenario "Anthropic headers" anthropic anthropic ""
scenario "no headers, requests_per_minute = 300" none openai-compatible "requests_per_minute = $rpm"
scenario "no headers, no limit set" none openai-compatible ""
