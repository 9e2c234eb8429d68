#!/usr/bin/env bash
# What distributed tracing costs: three 3-member ostrakon clusters side by side, one
# without tracing, one with it enabled at sampling rate 0 (etcd's default: only clients'
# sampled traces are recorded, and this load sends none), one recording every request
# (rate 1000000) into an OTLP collector (scripts/lib/otlp_collector.py, built on
# OpenTelemetry's own Python classes). Each workload runs on the three in turn, ROUNDS
# times; the table (median round) goes into docs/BENCHMARKS.md between the
# "bench-tracing" markers.
#   bash scripts/bench-tracing.sh
#   TOTAL=5000 ROUNDS=1 bash scripts/bench-tracing.sh   # shorter
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-20000}
ROUNDS=${ROUNDS:-3}
COLLECTOR_PORT=5317
source scripts/lib/ostrakon-cluster.sh

venv=target/tools/otlp-python
if [ ! -x "$venv/bin/python" ]; then
  echo "== installing the collector's Python packages (grpcio, opentelemetry-proto) in $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet grpcio opentelemetry-proto
fi
cargo build --release -p ostrakon
bin=$PWD/target/release/ostrakon
results=$(mktemp)
dir=$(mktemp -d /tmp/ostrakon-bench-tracing.XXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

"$venv/bin/python" scripts/lib/otlp_collector.py "$COLLECTOR_PORT" "$dir/spans" &
pids+=($!)
tracing=(--experimental-enable-distributed-tracing
  --experimental-distributed-tracing-address "127.0.0.1:$COLLECTOR_PORT")
mkdir -p "$dir/off" "$dir/rate0" "$dir/all"
start_ostrakon_cluster "$bin" "$dir/off" 2379
pids+=("${ostrakon_pids[@]}")
start_ostrakon_cluster "$bin" "$dir/rate0" 3379 "${tracing[@]}" \
  --experimental-distributed-tracing-sampling-rate 0
pids+=("${ostrakon_pids[@]}")
start_ostrakon_cluster "$bin" "$dir/all" 4379 "${tracing[@]}" \
  --experimental-distributed-tracing-sampling-rate 1000000
pids+=("${ostrakon_pids[@]}")

# workload clients conns total
runs=("put 1 1 2000" "put 64 8 $TOTAL" "get 64 8 $TOTAL")
declare -A endpoints=(
  [off]="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"
  [rate0]="127.0.0.1:3379,127.0.0.1:3479,127.0.0.1:3579"
  [all]="127.0.0.1:4379,127.0.0.1:4479,127.0.0.1:4579"
)
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  for run in "${runs[@]}"; do
    set -- $run
    for config in off rate0 all; do
      line=$("$bin" bench --endpoints "${endpoints[$config]}" --workload "$1" --clients "$2" \
        --conns "$3" --total "$4" --json)
      echo "$config $line" | tee -a "$results"
    done
  done
done
sleep 2 # the last batch of spans
spans=$(cat "$dir/spans" 2>/dev/null || echo 0)
dropped=$(curl -s http://127.0.0.1:4379/metrics | awk '/^ostrakon_trace_spans_dropped_total/ {print $2}')

python3 - "$results" "$ROUNDS" "$spans" "${dropped:-0}" <<'PY'
import json, sys, datetime, re
path, rounds, spans, dropped = sys.argv[1], int(sys.argv[2]), sys.argv[3].strip(), sys.argv[4]
by_run = {}
for line in open(path):
    config, data = line.split(" ", 1)
    r = json.loads(data)
    by_run.setdefault((r["workload"], r["clients"]), {}).setdefault(config, []).append(r)
median = lambda rs: sorted(rs, key=lambda r: r["throughput"])[len(rs) // 2]
out = ["| workload | clients | off req/s | rate 0 req/s (ratio) | every request req/s (ratio) | p50 / p99 ms off | rate 0 | every request |",
       "|---|---|---|---|---|---|---|---|"]
for (workload, clients), configs in by_run.items():
    off, zero, every = (median(configs[c]) for c in ("off", "rate0", "all"))
    out.append(f"| {workload} | {clients} | {off['throughput']:.0f} | {zero['throughput']:.0f} ({zero['throughput']/off['throughput']:.2f}x) | "
               f"{every['throughput']:.0f} ({every['throughput']/off['throughput']:.2f}x) | {off['p50_ms']:.2f} / {off['p99_ms']:.2f} | "
               f"{zero['p50_ms']:.2f} / {zero['p99_ms']:.2f} | {every['p50_ms']:.2f} / {every['p99_ms']:.2f} |")
table = "\n".join(out)
stamp = datetime.date.today().isoformat()
block = (f"<!-- bench-tracing:start -->\nMeasured {stamp} by `bash scripts/bench-tracing.sh` (three 3-member clusters side by side, "
         f"each workload on the three in turn, {rounds} rounds, median round shown). The collector received {spans} spans; "
         f"the recording cluster's leader dropped {dropped}.\n\n{table}\n<!-- bench-tracing:end -->")
doc = open("docs/BENCHMARKS.md").read()
if "<!-- bench-tracing:start -->" in doc:
    doc = re.sub(r"<!-- bench-tracing:start -->.*<!-- bench-tracing:end -->", lambda _: block, doc, flags=re.S)
else:
    doc += "\n## What distributed tracing costs\n\n" + block + "\n"
open("docs/BENCHMARKS.md", "w").write(doc)
print(table)
PY
rm -f "$results"
