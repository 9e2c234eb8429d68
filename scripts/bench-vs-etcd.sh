#!/usr/bin/env bash
# Runs `ostrakon bench` against a real etcd 3.5 cluster and an ostrakon cluster on this
# machine, one after the other in one go, and writes the side-by-side table into
# docs/BENCHMARKS.md (between the "bench-vs-etcd" markers). Both clusters have 3 members
# on loopback with default flags; values are 256 bytes.
#   bash scripts/bench-vs-etcd.sh            # full run
#   TOTAL=5000 bash scripts/bench-vs-etcd.sh # shorter
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-20000}
ANCHOR=../shared/tools/etcd-anchor.sh
cargo build --release -p ostrakon
bin=$PWD/target/release/ostrakon
results=$(mktemp)

# name clients conns total workload
runs=(
  "put 1 1 3000"
  "put 64 8 $TOTAL"
  "put 256 16 $TOTAL"
  "get 64 8 $TOTAL"
  "get-serializable 64 8 $TOTAL"
  "txn 64 8 $TOTAL"
  "range 64 8 $((TOTAL / 4))"
)

measure() { # system endpoints pids...
  local system=$1 endpoints=$2; shift 2
  for run in "${runs[@]}"; do
    set -- $run
    line=$("$bin" bench --endpoints "$endpoints" --workload "$1" --clients "$2" --conns "$3" --total "$4" --json)
    echo "$system $line" >> "$results"
    echo "$system $line"
  done
}

rss_kib() { for pid in "$@"; do ps -o rss= -p "$pid"; done | sort -n | tail -1; }

echo "== etcd 3.5"
bash "$ANCHOR" stop >/dev/null 2>&1 || true
bash "$ANCHOR" start 3.5
measure etcd "127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
etcd_rss=$(rss_kib $(cat /tmp/etcd-anchor/*.pid))
bash "$ANCHOR" stop

echo "== ostrakon"
dir=$(mktemp -d /tmp/ostrakon-bench.XXXX)
cluster="o1=http://127.0.0.1:2380,o2=http://127.0.0.1:2480,o3=http://127.0.0.1:2580"
pids=()
for i in 1 2 3; do
  c=$((2279 + 100 * i)); p=$((2280 + 100 * i))
  "$bin" server --name o$i --data-dir "$dir/o$i" \
    --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
    --listen-peer-urls http://127.0.0.1:$p --initial-advertise-peer-urls http://127.0.0.1:$p \
    --initial-cluster $cluster --log-level warn 2>"$dir/o$i.log" &
  pids+=($!)
done
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:2379/health >/dev/null && break; sleep 0.2; done
measure ostrakon "127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"
ostrakon_rss=$(rss_kib "${pids[@]}")
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
rm -rf "$dir"

python3 - "$results" "$etcd_rss" "$ostrakon_rss" <<'PY'
import json, sys, datetime, re
path, etcd_rss, ostrakon_rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = {}
for line in open(path):
    system, data = line.split(" ", 1)
    r = json.loads(data)
    rows.setdefault((r["workload"], r["clients"]), {})[system] = r
out = ["| workload | clients | etcd 3.5 req/s | ostrakon req/s | ratio | etcd p50 / p99 ms | ostrakon p50 / p99 ms | errors (etcd / ostrakon) |",
       "|---|---|---|---|---|---|---|---|"]
for (workload, clients), r in rows.items():
    e, o = r["etcd"], r["ostrakon"]
    out.append(f"| {workload} | {clients} | {e['throughput']:.0f} | {o['throughput']:.0f} | {o['throughput']/e['throughput']:.2f}x | "
               f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {o['p50_ms']:.2f} / {o['p99_ms']:.2f} | {e['errors']} / {o['errors']} |")
out.append(f"| resident memory, largest member after the runs | | {etcd_rss/1024:.0f} MiB | {ostrakon_rss/1024:.0f} MiB | {ostrakon_rss/etcd_rss:.2f}x | | | |")
table = "\n".join(out)
stamp = datetime.date.today().isoformat()
block = f"<!-- bench-vs-etcd:start -->\nMeasured {stamp} by `bash scripts/bench-vs-etcd.sh` (3 members each on loopback, 256-byte values, 2-core machine; one run, etcd first, then ostrakon):\n\n{table}\n<!-- bench-vs-etcd:end -->"
doc = open("docs/BENCHMARKS.md").read()
if "<!-- bench-vs-etcd:start -->" in doc:
    doc = re.sub(r"<!-- bench-vs-etcd:start -->.*<!-- bench-vs-etcd:end -->", lambda _: block, doc, flags=re.S)
else:
    doc += "\n## ostrakon against etcd 3.5, side by side\n\n" + block + "\n"
open("docs/BENCHMARKS.md", "w").write(doc)
print(table)
PY
rm -f "$results"
