#!/usr/bin/env bash
# Remote cache benchmark against moto's S3 server on 127.0.0.1 (the API the tests use): the example
# with the offline model, TICKETS tickets, four scenarios, each in a fresh project and local cache:
#   local       no [cache.remote]: the baseline cold build
#   write       cold build with a read-write remote: answers uploaded behind the build
#   catch-up    a build whose remote was unreachable owes every upload; the next build, with
#               nothing to build, uploads them all: pure upload throughput
#   read        a new machine with an empty local cache builds everything from the remote
#   write-file, read-file   the same two against a shared folder (file://): the remote tier's own
#               cost, without moto's (a Python server: it answers about 300 requests a second here)
# Prints wall time, artifacts, and uploads/s or hits/s. moto comes from the test suite's venv
# (target/tmp/moto-venv) when there is one, else is pip-installed into a temporary venv.
# Usage: bench/remote.sh [TICKETS]   (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
tickets=${1:-2000}
cargo build --release --locked --bin ticketbuild >/dev/null 2>&1
bin=${TICKETBUILD_BIN:-$PWD/target/release/ticketbuild}
work=$(mktemp -d)
moto_pid=
trap 'test -n "$moto_pid" && kill $moto_pid 2>/dev/null; rm -rf "$work"' EXIT

python=$PWD/target/tmp/moto-venv/bin/python
if ! "$python" -c 'import moto.server' 2>/dev/null; then
  python3 -m venv "$work/venv" && "$work/venv/bin/pip" install -q 'moto[server]'
  python=$work/venv/bin/python
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$python" -m moto.server -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
moto_pid=$!
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
curl -s -X PUT -o /dev/null "http://127.0.0.1:$port/bench"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1

# project NAME PREFIX [URL]: a copy of the example with TICKETS rows and, with a prefix, the remote
# cache (s3://bench/PREFIX, or URL).
project() {
  local dir=$work/$1
  mkdir -p "$dir"
  cp -r dataset.toml prompts "$dir/"
  sed -i "s/^rows = 200/rows = $tickets/" "$dir/dataset.toml"
  if [ -n "$2" ]; then
    printf '\n[cache.remote]\nurl = "%s"\n' "${3:-s3://bench/$2}" >> "$dir/dataset.toml"
  fi
  echo "$dir"
}

# build DIR ENDPOINT: `build --json` in DIR with AWS_ENDPOINT_URL=ENDPOINT; prints the JSON.
build() {
  (cd "$1" && AWS_ENDPOINT_URL=$2 "$bin" build --json --no-progress 2>/dev/null)
}

field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
printf '%-10s %8s %10s %10s %10s\n' scenario wall_s artifacts uploaded per_s
moto=http://127.0.0.1:$port

json=$(build "$(project local "")" "$moto")
wall=$(echo "$json" | field 'd["wall_ms"]/1000')
artifacts=$(echo "$json" | field 'sum(n["generated"] for n in d["nodes"])')
printf '%-10s %8.2f %10s %10s %10s\n' local "$wall" "$artifacts" - -

json=$(build "$(project write w)" "$moto")
wall=$(echo "$json" | field 'd["wall_ms"]/1000')
up=$(echo "$json" | field 'd["remote"]["uploaded"]')
printf '%-10s %8.2f %10s %10s %10.0f\n' write "$wall" "$artifacts" "$up" "$(echo "$up $wall" | awk '{print $1/$2}')"

dir=$(project catchup c)
build "$dir" "http://127.0.0.1:9" > /dev/null   # nothing listens on port 9: every upload is owed
json=$(build "$dir" "$moto")
wall=$(echo "$json" | field 'd["wall_ms"]/1000')
up=$(echo "$json" | field 'd["remote"]["uploaded"]')
printf '%-10s %8.2f %10s %10s %10.0f\n' catch-up "$wall" - "$up" "$(echo "$up $wall" | awk '{print $1/$2}')"

json=$(build "$(project read w)" "$moto")
wall=$(echo "$json" | field 'd["wall_ms"]/1000')
hits=$(echo "$json" | field 'd["remote"]["hits"]')
printf '%-10s %8.2f %10s %10s %10.0f  (hits/s)\n' read "$wall" "$hits" - "$(echo "$hits $wall" | awk '{print $1/$2}')"

shared=file://$work/shared
json=$(build "$(project write-file f "$shared")" "$moto")
wall=$(echo "$json" | field 'd["wall_ms"]/1000')
up=$(echo "$json" | field 'd["remote"]["uploaded"]')
printf '%-10s %8.2f %10s %10s %10.0f\n' write-file "$wall" "$artifacts" "$up" "$(echo "$up $wall" | awk '{print $1/$2}')"

json=$(build "$(project read-file f "$shared")" "$moto")
wall=$(echo "$json" | field 'd["wall_ms"]/1000')
hits=$(echo "$json" | field 'd["remote"]["hits"]')
printf '%-10s %8.2f %10s %10s %10.0f  (hits/s)\n' read-file "$wall" "$hits" - "$(echo "$hits $wall" | awk '{print $1/$2}')"
