#!/usr/bin/env bash
# Input benchmark: the first TICKETS tickets of an `[input]` CSV of ROWS rows (two nodes against the
# mock LLM server on 127.0.0.1), against the same tickets drawn from a 3-row file: wall seconds
# and peak RSS of each, so the cost of the input itself shows (it is read by row, never held).
# Usage: bench/input.sh [ROWS] [TICKETS]   (default 1000000 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
tickets=${2:-1000}
cargo build --release --locked --example mock-llm --bin ticketbuild >/dev/null 2>&1
bin=${TICKETBUILD_BIN:-$PWD/target/release/ticketbuild}
mock=$PWD/target/release/examples/mock-llm
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$mock" --port "$port" > /dev/null 2>&1 &
mock_pid=$!
work=$(mktemp -d)
trap 'kill $mock_pid 2>/dev/null; rm -rf "$work"' EXIT
sleep 0.5
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
python3 - "$work/big.csv" "$rows" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write("issue,product\n")
    for i in range(int(sys.argv[2])):
        f.write(f'"Order {i} arrived damaged, the box was open",Product {i % 97}\n')
PY
printf 'issue,product\n"The invoice shows the wrong VAT rate",Billing Pro\n"The app crashes on upload",PhotoSync\n"I cannot reset my password",Account Center\n' > "$work/small.csv"
printf '%-34s %10s %8s %8s %8s\n' input input_mb tickets wall_s rss_mb
for case in "big.csv:each" "small.csv:draw"; do
  file=${case%%:*}
  mode=${case##*:}
  dir="$work/project-$mode"
  mkdir -p "$dir/prompts"
  cp "$work/$file" "$dir/"
  extra=""
  if [ "$mode" = draw ]; then extra=$'mode = "draw"\nreplace = true'; fi
  cat > "$dir/dataset.toml" <<TOML
[dataset]
name = "rows"
seed = 9
formats = ["jsonl"]

[input]
path = "$file"
$extra

[models.default]
provider = "openai-compatible"
model = "mock"
base_url = "http://127.0.0.1:$port/v1"

[cost.prices.mock]
input = 0.5
output = 1.5

[nodes.subject]
prompt = "prompts/subject.jinja"

[nodes.body]
prompt = "prompts/body.jinja"
TOML
  echo 'Write a subject line for a ticket about {{ product }}: {{ issue }}' > "$dir/prompts/subject.jinja"
  echo 'Write the email about "{{ subject }}" ({{ issue }}).' > "$dir/prompts/body.jinja"
  start=$(date +%s%N)
  rss=$( { cd "$dir" && /usr/bin/time -f '%M' "$bin" build --no-progress --rows "$tickets" > /dev/null; } 2>&1 | tail -1)
  end=$(date +%s%N)
  size=$(stat -c %s "$dir/$file")
  printf '%-34s %10.1f %8s %8.2f %8d\n' "$file ($mode)" "$(python3 -c "print($size / 1e6)")" "$tickets" "$(python3 -c "print(($end - $start) / 1e9)")" $((rss / 1024))
done
