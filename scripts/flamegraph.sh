#!/usr/bin/env bash
# A flame graph of a 3-member cluster's members under load (issue 16, item 2), and the
# share of their CPU samples in each part of the request path.
#
# Starts a 3-member cluster on loopback with default flags, runs `ostrakon bench`
# (clients spread over the 3 members, 64 by default) and, in the middle of it, samples
# the three members with perf (call graphs from DWARF, 499 Hz, 4 s). Writes
# docs/flamegraphs/NAME.svg (inferno, installed under target/tools on first use) and
# prints the parts' shares; the folded stacks stay in /tmp for a diff
# (`inferno-diff-folded`).
#   bash scripts/flamegraph.sh put                  # docs/flamegraphs/put.svg
#   bash scripts/flamegraph.sh get
#   BIN=/tmp/ostrakon-old NAME=put-before bash scripts/flamegraph.sh put
#   SPLITS="b0005" NAME=put-split bash scripts/flamegraph.sh put   # keyspace split first
# Needs perf (Debian: linux-perf) and permission to sample (root, or
# kernel.perf_event_paranoid <= 1).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${1:-put}
NAME=${NAME:-$WORKLOAD}
CLIENTS=${CLIENTS:-64}
SPLITS=${SPLITS:-}
FLAGS=${FLAGS:-} # to every member, e.g. FLAGS="--range-split-qps 0": no split by load
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
tools=$PWD/target/tools/inferno
if [ ! -x "$tools/bin/inferno-flamegraph" ]; then
  cargo install --locked inferno --version 0.12.8 --root "$tools"
fi
dir=$(mktemp -d /tmp/ostrakon-flame.XXXX)
# shellcheck disable=SC2086 # FLAGS is a list of flags
start_ostrakon_cluster "$BIN" "$dir" 2379 $FLAGS
cleanup() {
  kill "${ostrakon_pids[@]}" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "${ostrakon_pids[@]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -9 "${ostrakon_pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for key in $SPLITS; do
  "$BIN" ranges split "$key" --endpoint 127.0.0.1:2379
done
endpoints="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"
bench() {
  "$BIN" bench --endpoints "$endpoints" --workload "$WORKLOAD" --clients "$CLIENTS" \
    --conns 8 --total "$1"
}
# Fills the keyspace a read needs and warms the members up.
bench 20000 >/dev/null
bench 150000 >"$dir/bench.out" 2>&1 &
load=$!
sleep 3
perf record -F 499 --call-graph dwarf,16384 -o "$dir/perf.data" \
  -p "$(IFS=,; echo "${ostrakon_pids[*]}")" -- sleep 4 >/dev/null 2>&1
kill "$load" 2>/dev/null || true
wait "$load" 2>/dev/null || true
folded=/tmp/ostrakon-flame-$NAME.folded
perf script -i "$dir/perf.data" 2>/dev/null | "$tools/bin/inferno-collapse-perf" >"$folded"
mkdir -p docs/flamegraphs
"$tools/bin/inferno-flamegraph" --minwidth 1 --title "ostrakon, 3 members: $WORKLOAD, $CLIENTS clients ($NAME)" \
  <"$folded" >"docs/flamegraphs/$NAME.svg"
echo "== docs/flamegraphs/$NAME.svg; folded stacks in $folded"
# Each sample goes to the first part, in this order, that a frame of its stack names.
python3 - "$folded" <<'PY'
import sys, collections
parts = [
    ("apply (state machine)", ["Replica::apply"]),
    ("raft WAL write and fdatasync", ["storage::wal"]),
    ("event loop, rest", ["EventLoop"]),
    ("peer service (leader side of forwards, raft stream in)", ["peer_server", "PeerService"]),
    ("peer client (raft stream out, forwards)", ["Transport", "PeerClient"]),
    ("client KV service", ["kv_server", "KvService"]),
    ("HTTP/2 and gRPC, rest", ["h2::", "hyper", "tonic"]),
    ("tokio parking and scheduling", ["park", "tokio"]),
    ("storage engine background (flush, compaction)", ["fjall", "lsm_tree"]),
]
counts = collections.Counter()
total = 0
for line in open(sys.argv[1]):
    stack, _, n = line.rstrip().rpartition(" ")
    n = int(n)
    total += n
    for name, marks in parts:
        if any(m in stack for m in marks):
            counts[name] += n
            break
    else:
        counts["other"] += n
for name, _ in parts + [("other", [])]:
    print(f"{100 * counts[name] / total:5.1f}%  {name}")
print(f"{total} samples")
PY
grep "req/s" "$dir/bench.out" || true
