#!/usr/bin/env bash
# Runs `ostrakon bench` against a real etcd 3.5 cluster and an ostrakon cluster on this
# machine in one go, and writes the side-by-side table into docs/BENCHMARKS.md (between
# the "bench-vs-etcd" markers). Both clusters have 3 members on loopback with default
# flags and run side by side; every workload runs on etcd and then at once on ostrakon,
# ROUNDS times, and the table shows each system's median round. This shared machine's
# speed drifts by 2x within minutes, so interleaving is what makes the ratio mean
# something. Values are 256 bytes.
#   bash scripts/bench-vs-etcd.sh                     # full run
#   TOTAL=5000 ROUNDS=1 bash scripts/bench-vs-etcd.sh # shorter
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-20000}
ROUNDS=${ROUNDS:-3}
ANCHOR=../shared/tools/etcd-anchor.sh
source scripts/lib/ostrakon-cluster.sh
cargo build --release -p ostrakon
bin=$PWD/target/release/ostrakon
results=$(mktemp)

# workload clients conns total
runs=(
  "put 1 1 3000"
  "put 64 8 $TOTAL"
  "put 256 16 $TOTAL"
  "get 64 8 $TOTAL"
  "get-serializable 64 8 $TOTAL"
  "txn 64 8 $TOTAL"
  "range 64 8 $((TOTAL / 4))"
)

bench() { # system endpoints workload clients conns total
  local line
  line=$("$bin" bench --endpoints "$2" --workload "$3" --clients "$4" --conns "$5" --total "$6" --json)
  echo "$1 $line" >> "$results"
  echo "$1 $line"
}

rss_kib() { for pid in "$@"; do ps -o rss= -p "$pid"; done | sort -n | tail -1; }

echo "== starting etcd 3.5 and ostrakon"
bash "$ANCHOR" stop >/dev/null 2>&1 || true
bash "$ANCHOR" start 3.5
dir=$(mktemp -d /tmp/ostrakon-bench.XXXX)
start_ostrakon_cluster "$bin" "$dir"
pids=("${ostrakon_pids[@]}")
cleanup() { kill "${pids[@]}" 2>/dev/null || true; bash "$ANCHOR" stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

etcd_endpoints="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
ostrakon_endpoints="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  for run in "${runs[@]}"; do
    set -- $run
    bench etcd "$etcd_endpoints" "$@"
    bench ostrakon "$ostrakon_endpoints" "$@"
  done
done
etcd_rss=$(rss_kib $(cat /tmp/etcd-anchor/*.pid))
ostrakon_rss=$(rss_kib "${pids[@]}")

python3 - "$results" "$etcd_rss" "$ostrakon_rss" "$ROUNDS" <<'PY'
import json, sys, datetime, re
path, etcd_rss, ostrakon_rss, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
by_run = {}
for line in open(path):
    system, data = line.split(" ", 1)
    r = json.loads(data)
    by_run.setdefault((r["workload"], r["clients"]), {}).setdefault(system, []).append(r)
# Each system's median round by throughput.
rows = {key: {system: sorted(rs, key=lambda r: r["throughput"])[len(rs) // 2]
              for system, rs in systems.items()}
        for key, systems in by_run.items()}
out = ["| workload | clients | etcd 3.5 req/s | ostrakon req/s | ratio | etcd p50 / p99 ms | ostrakon p50 / p99 ms | errors (etcd / ostrakon) |",
       "|---|---|---|---|---|---|---|---|"]
for (workload, clients), r in rows.items():
    e, o = r["etcd"], r["ostrakon"]
    out.append(f"| {workload} | {clients} | {e['throughput']:.0f} | {o['throughput']:.0f} | {o['throughput']/e['throughput']:.2f}x | "
               f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {o['p50_ms']:.2f} / {o['p99_ms']:.2f} | {e['errors']} / {o['errors']} |")
out.append(f"| resident memory, largest member after the runs | | {etcd_rss/1024:.0f} MiB | {ostrakon_rss/1024:.0f} MiB | {ostrakon_rss/etcd_rss:.2f}x | | | |")
table = "\n".join(out)
stamp = datetime.date.today().isoformat()
block = f"<!-- bench-vs-etcd:start -->\nMeasured {stamp} by `bash scripts/bench-vs-etcd.sh` (3 members each on loopback, 256-byte values, 2-core machine; both clusters up at once, each workload on etcd then on ostrakon, {rounds} rounds, median round shown):\n\n{table}\n<!-- bench-vs-etcd:end -->"
doc = open("docs/BENCHMARKS.md").read()
if "<!-- bench-vs-etcd:start -->" in doc:
    doc = re.sub(r"<!-- bench-vs-etcd:start -->.*<!-- bench-vs-etcd:end -->", lambda _: block, doc, flags=re.S)
else:
    doc += "\n## ostrakon against etcd 3.5, side by side\n\n" + block + "\n"
open("docs/BENCHMARKS.md", "w").write(doc)
print(table)
PY
rm -f "$results"
