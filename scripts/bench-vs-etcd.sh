#!/usr/bin/env bash
# Runs `ostrakon bench` against a real etcd 3.5 cluster and an ostrakon cluster on this
# machine in one go, and writes the side-by-side table into docs/BENCHMARKS.md (between
# the "bench-vs-etcd" markers). Both clusters have 3 members on loopback with default
# flags and run side by side; every workload runs on one system and then at once on
# the other (which goes first alternates), ROUNDS times, and the table shows each
# system's median run. A lone client runs once from each member in turn. This shared machine's
# speed drifts by 2x within minutes, so interleaving is what makes the ratio mean
# something. Values are 256 bytes. Clients' connections are spread over all three
# members, as etcd's client balances them (so followers forward, as they do for users).
# Besides throughput and latency, the table has the CPU time all members of a cluster
# spent per 1,000 requests (user + system, from /proc, over the measured requests) and every
# member's resident memory after the runs. Fewer than 3 rounds print figures but do not
# write the table: a median of fewer means little on this machine.
# With SPLITS (keys, space-separated), the ostrakon cluster's keyspace is split at them
# before the runs (`ostrakon ranges split`), and the table goes to its own section:
# writes then take their revisions from the oracle, and the range workload reads across
# ranges. The benchmark's keys are b0000000 to b0009999: "b0005" halves them.
#   bash scripts/bench-vs-etcd.sh                     # full run
#   TOTAL=5000 ROUNDS=1 bash scripts/bench-vs-etcd.sh # shorter, not written to the docs
#   SPLITS="b0005" bash scripts/bench-vs-etcd.sh      # on a keyspace split in two
# With WORKLOADS (names, space-separated: put get get-serializable txn range), only those
# run, and the table is printed, not written (a partial table would replace the whole):
#   WORKLOADS="get" SPLITS="b0005" bash scripts/bench-vs-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-20000}
ROUNDS=${ROUNDS:-3}
SPLITS=${SPLITS:-}
WORKLOADS=${WORKLOADS:-}
ANCHOR=../shared/tools/etcd-anchor.sh
source scripts/lib/ostrakon-cluster.sh
cargo build --release -p ostrakon
bin=$PWD/target/release/ostrakon
results=$(mktemp)

# workload clients conns total [rotation of the endpoints: a lone client runs once from
# each member, `rotated_endpoints`]
runs=(
  "put 1 1 1000 0"
  "put 1 1 1000 1"
  "put 1 1 1000 2"
  "put 64 8 $TOTAL"
  "put 256 16 $TOTAL"
  "get 64 8 $TOTAL"
  "get-serializable 64 8 $TOTAL"
  "txn 64 8 $TOTAL"
  "range 64 8 $((TOTAL / 4))"
)

bench() { # system endpoints pids-var workload clients conns total
  local system=$1 endpoints=$2 line
  local -n members=$3
  shift 3
  # The members' CPU over the measured requests only (not the loading of the keys a
  # read workload needs), as `ostrakon bench` reads it from /proc.
  line=$("$bin" bench --endpoints "$(rotated_endpoints "$endpoints" "${5:-0}")" --workload "$1" \
    --clients "$2" --conns "$3" --total "$4" --cpu-of-pids "$(IFS=,; echo "${members[*]}")" --json)
  echo "$system $line" >> "$results"
  echo "$system $line"
}

rss_kib_each() { for pid in "$@"; do ps -o rss= -p "$pid"; done | tr -s ' \n' ' '; }

echo "== starting etcd 3.5 and ostrakon"
bash "$ANCHOR" stop >/dev/null 2>&1 || true
bash "$ANCHOR" start 3.5
dir=$(mktemp -d /tmp/ostrakon-bench.XXXX)
start_ostrakon_cluster "$bin" "$dir"
pids=("${ostrakon_pids[@]}")
for key in $SPLITS; do
  "$bin" ranges split "$key" --endpoint 127.0.0.1:2379
done
etcd_pids=()
for f in /tmp/etcd-anchor/*.pid; do etcd_pids+=("$(cat "$f")"); done
cleanup() { kill "${pids[@]}" 2>/dev/null || true; bash "$ANCHOR" stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

etcd_endpoints="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
ostrakon_endpoints="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round of $ROUNDS"
  step=0
  for run in "${runs[@]}"; do
    # shellcheck disable=SC2086 # a run is its words
    set -- $run
    if [ -n "$WORKLOADS" ] && ! [[ " $WORKLOADS " == *" $1 "* ]]; then continue; fi
    # Which system goes first alternates: the one that follows the other's heavier
    # workload runs slower.
    if (( (round + step) % 2 == 1 )); then
      bench etcd "$etcd_endpoints" etcd_pids "$@"
      bench ostrakon "$ostrakon_endpoints" pids "$@"
    else
      bench ostrakon "$ostrakon_endpoints" pids "$@"
      bench etcd "$etcd_endpoints" etcd_pids "$@"
    fi
    step=$((step + 1))
  done
  # What splits by load did (a split waits for a member with CPU to spare).
  for port in 2379 2479 2579; do
    echo "== after round $round, ostrakon member :$port:" $(curl -s "http://127.0.0.1:$port/metrics" |
      grep -E '^ostrakon_(range_splits_total|load_splits_held_total|host_spare_millicores) ')
  done
done
etcd_rss=$(rss_kib_each "${etcd_pids[@]}")
ostrakon_rss=$(rss_kib_each "${pids[@]}")

python3 - "$results" "$etcd_rss" "$ostrakon_rss" "$ROUNDS" "$SPLITS" "$WORKLOADS" <<'PY'
import json, sys, datetime, re
path, rounds, splits, only = sys.argv[1], int(sys.argv[4]), sys.argv[5].split(), sys.argv[6]
etcd_rss = [int(k) for k in sys.argv[2].split()]
ostrakon_rss = [int(k) for k in sys.argv[3].split()]
by_run = {}
for line in open(path):
    system, data = line.split(" ", 1)
    r = json.loads(data)
    # CPU of all members per 1,000 answered requests, over this round.
    r["cpu_ms_per_1k"] = r["servers_cpu_ms_per_1k"]
    by_run.setdefault((r["workload"], r["clients"]), {}).setdefault(system, []).append(r)
# Each system's median round by throughput.
rows = {key: {system: sorted(rs, key=lambda r: r["throughput"])[len(rs) // 2]
              for system, rs in systems.items()}
        for key, systems in by_run.items()}
# CPU per request: each system's median over the rounds, on its own.
def median(values):
    values = sorted(values)
    return values[len(values) // 2]
cpu = {key: {system: median([r["cpu_ms_per_1k"] for r in rs]) for system, rs in systems.items()}
       for key, systems in by_run.items()}
out = ["| workload | clients | etcd 3.5 req/s | ostrakon req/s | ratio | etcd p50 / p99 ms | ostrakon p50 / p99 ms | CPU ms per 1,000 req, all members (etcd / ostrakon) | CPU ratio | errors (etcd / ostrakon) |",
       "|---|---|---|---|---|---|---|---|---|---|"]
for (workload, clients), r in rows.items():
    e, o = r["etcd"], r["ostrakon"]
    ce, co = cpu[(workload, clients)]["etcd"], cpu[(workload, clients)]["ostrakon"]
    out.append(f"| {workload} | {clients} | {e['throughput']:.0f} | {o['throughput']:.0f} | {o['throughput']/e['throughput']:.2f}x | "
               f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f} | {o['p50_ms']:.2f} / {o['p99_ms']:.2f} | {ce:.0f} / {co:.0f} | {co/ce:.2f}x | {e['errors']} / {o['errors']} |")
mib = lambda kibs: " / ".join(f"{k/1024:.0f}" for k in kibs)
out.append(f"| resident memory of each member after the runs, MiB | | {mib(etcd_rss)} | {mib(ostrakon_rss)} | {max(ostrakon_rss)/max(etcd_rss):.2f}x (largest) | | | | | |")
table = "\n".join(out)
print(table)
if rounds < 3:
    print(f"{rounds} round(s): not written to docs/BENCHMARKS.md (3 at least)")
    sys.exit(0)
if only:
    print(f"only {only}: not written to docs/BENCHMARKS.md (a partial table)")
    sys.exit(0)
stamp = datetime.date.today().isoformat()
marker = "bench-vs-etcd-split" if splits else "bench-vs-etcd"
command = f"SPLITS=\"{' '.join(splits)}\" bash scripts/bench-vs-etcd.sh" if splits else "bash scripts/bench-vs-etcd.sh"
split_note = f"; ostrakon's keyspace split at {', '.join(splits)} into {len(splits) + 1} ranges" if splits else ""
block = f"<!-- {marker}:start -->\nMeasured {stamp} by `{command}` (3 members each on loopback, 256-byte values, 2-core machine; clients' connections spread over the 3 members; both clusters up at once, each workload on one then at once on the other, which first alternating, {rounds} rounds, median run shown, a lone client's put run once from each member per round; CPU is user + system time of all 3 members over a round's measured requests, per 1,000 answered, read from /proc, median of the rounds{split_note}):\n\n{table}\n<!-- {marker}:end -->"
doc = open("docs/BENCHMARKS.md").read()
if f"<!-- {marker}:start -->" in doc:
    doc = re.sub(f"<!-- {marker}:start -->.*<!-- {marker}:end -->", lambda _: block, doc, flags=re.S)
else:
    title = "on a keyspace split into ranges" if splits else "side by side"
    doc += f"\n## ostrakon against etcd 3.5, {title}\n\n" + block + "\n"
open("docs/BENCHMARKS.md", "w").write(doc)
PY
rm -f "$results"
