#!/usr/bin/env bash
# What a Txn across two ranges costs against one within a range, on one ostrakon
# cluster (3 members on loopback, default flags) whose keyspace is split at "c": the
# txn-pair workload puts two keys per Txn, b<digits> and its pair, either b<digits>p
# (the same range: one-phase) or c<digits>p (the next range: two-phase commit).
# Interleaved rounds (which goes first alternating), medians; one client (latency, run
# once from each member) and 64 clients (throughput).
# Writes the table into docs/BENCHMARKS.md between the "bench-txn-across" markers
# (3 rounds or more).
#   bash scripts/bench-txn-across.sh
#   ROUNDS=1 TOTAL=2000 bash scripts/bench-txn-across.sh   # shorter, not written
#   BIN=path/to/ostrakon bash scripts/bench-txn-across.sh  # another build
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-10000}
ROUNDS=${ROUNDS:-3}
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
bin=$BIN
results=$(mktemp)
dir=$(mktemp -d /tmp/ostrakon-bench-txn.XXXX)
start_ostrakon_cluster "$bin" "$dir"
pids=("${ostrakon_pids[@]}")
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
"$bin" ranges split c --endpoint 127.0.0.1:2379
endpoints="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"

# clients conns total rotation: one client runs once from each member
# (`rotated_endpoints`), as a lone client's latency depends on whether its member leads.
runs=("1 1 $((TOTAL / 15)) 0" "1 1 $((TOTAL / 15)) 1" "1 1 $((TOTAL / 15)) 2" "64 8 $TOTAL 0")
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  step=0
  for run in "${runs[@]}"; do
    # shellcheck disable=SC2086 # a run is its words
    set -- $run
    # Which goes first alternates: the one after the other's run ran slower.
    pairs="b c"
    if (( (round + step) % 2 == 0 )); then pairs="c b"; fi
    for pair in $pairs; do
      line=$("$bin" bench --endpoints "$(rotated_endpoints "$endpoints" "$4")" --workload txn-pair \
        --pair-prefix "$pair" --clients "$1" --conns "$2" --total "$3" --json)
      echo "$pair $1 $line" | tee -a "$results"
    done
    step=$((step + 1))
  done
done

python3 - "$results" "$ROUNDS" <<'PY'
import json, statistics, sys, pathlib, re
path, rounds = sys.argv[1], int(sys.argv[2])
rows = {}
for line in open(path):
    pair, clients, blob = line.split(" ", 2)
    rows.setdefault((pair, int(clients)), []).append(json.loads(blob))
def med(runs, key):
    return statistics.median(r[key] for r in runs)
lines = ["| clients | one range: Txn/s | across two: Txn/s | ratio | one range: p50 ms | across two: p50 ms | latency ratio |",
         "|---|---|---|---|---|---|---|"]
for clients in sorted({c for _, c in rows}):
    one, two = rows[("b", clients)], rows[("c", clients)]
    t1, t2 = med(one, "throughput"), med(two, "throughput")
    l1, l2 = med(one, "p50_ms"), med(two, "p50_ms")
    lines.append(f"| {clients} | {t1:.0f} | {t2:.0f} | {t2 / t1:.2f}x | {l1:.2f} | {l2:.2f} | {l2 / l1:.2f}x |")
table = "\n".join(lines)
print(table)
if rounds < 3:
    print("(fewer than 3 rounds: not written to docs/BENCHMARKS.md)")
    sys.exit(0)
docs = pathlib.Path("docs/BENCHMARKS.md")
text = docs.read_text()
block = (f"<!-- bench-txn-across -->\nMedians of {rounds} interleaved rounds "
         "(`bash scripts/bench-txn-across.sh`):\n\n" + table + "\n<!-- /bench-txn-across -->")
if "<!-- bench-txn-across -->" in text:
    text = re.sub(r"<!-- bench-txn-across -->.*?<!-- /bench-txn-across -->", block, text, flags=re.S)
else:
    text += "\n## A Txn across two ranges against one within a range\n\n" + block + "\n"
docs.write_text(text)
PY
