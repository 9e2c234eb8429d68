#!/usr/bin/env bash
# Two builds of ostrakon side by side on what users run: both builds' 3-member clusters
# up at once on loopback with default flags (so keyspaces split by load where a member
# has CPU to spare, and leaders spread as they would), every workload of scripts/bench-vs-etcd.sh run on one build and
# then at once on the other, ROUNDS times (4 by default), clients spread over the members. Prints one
# JSON line per run (throughput, latency, CPU of the members per 1,000 requests) and,
# after each round, the leaderships each cluster handed over to spread its leaders; at
# the end, a table of each build's medians and B's throughput against A's.
# Interleaving is what makes the ratio mean something on this shared machine: compare
# the two builds' medians, never figures of different runs. Which build runs first
# alternates (run to run, round to round): give an even ROUNDS. After each round it prints
# every member's resident memory.
#   bash scripts/bench-builds-side-by-side.sh BINARY_A BINARY_B [ROUNDS] [TOTAL]
# With SPLITS_A or SPLITS_B (keys, space-separated), that cluster's keyspace is split at
# them first. SPLITS_B alone: one
# build against itself measures what a split keyspace costs single-range work
# (issue 14's "within 10 % of one group"):
#   SPLITS_B="b0005" bash scripts/bench-builds-side-by-side.sh target/release/ostrakon target/release/ostrakon
# FLAGS_A and FLAGS_B go to every member of A's and B's cluster (FLAGS_A="--range-split-qps 0"
# keeps A's keyspace whole: no split by load).
# With WORKLOADS (names, space-separated: put get get-serializable txn range), only those
# run: WORKLOADS="get" SPLITS_A="b0005" SPLITS_B="b0005" bash scripts/bench-builds-side-by-side.sh OLD NEW
# With MEMBER_CPU (a fraction of one core, e.g. 0.5; root), every member is capped at
# that much CPU in a cgroup of its own, as on a machine of its own (`cap_cpu`).
set -euo pipefail
cd "$(dirname "$0")/.."
bin_a=$1
bin_b=$2
rounds=${3:-4}
total=${4:-20000}
source scripts/lib/ostrakon-cluster.sh
dir_a=$(mktemp -d /tmp/ostrakon-a.XXXX)
dir_b=$(mktemp -d /tmp/ostrakon-b.XXXX)
# shellcheck disable=SC2086 # FLAGS_A and FLAGS_B are lists of flags
start_ostrakon_cluster "$bin_a" "$dir_a" 2379 ${FLAGS_A:-}
pids_a=("${ostrakon_pids[@]}")
for key in ${SPLITS_A:-}; do
  "$bin_a" ranges split "$key" --endpoint 127.0.0.1:2379
done
# shellcheck disable=SC2086
start_ostrakon_cluster "$bin_b" "$dir_b" 3379 ${FLAGS_B:-}
pids_b=("${ostrakon_pids[@]}")
for key in ${SPLITS_B:-}; do
  "$bin_b" ranges split "$key" --endpoint 127.0.0.1:3379
done
trap 'kill "${pids_a[@]}" "${pids_b[@]}" 2>/dev/null; wait; rm -rf "$dir_a" "$dir_b"' EXIT
if [ -n "${MEMBER_CPU:-}" ]; then
  for i in 0 1 2; do
    cap_cpu "${pids_a[$i]}" "$MEMBER_CPU" "a$i"
    cap_cpu "${pids_b[$i]}" "$MEMBER_CPU" "b$i"
  done
fi
endpoints_a=127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579
endpoints_b=127.0.0.1:3379,127.0.0.1:3479,127.0.0.1:3579

moves() { # client ports
  local sum=0 port value
  for port in "$@"; do
    value=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^ostrakon_leader_spread_moves_total /{print $2}')
    sum=$((sum + ${value%.*}))
  done
  echo "$sum"
}

rss_mib() { # pids
  local pid out=()
  for pid in "$@"; do out+=("$(( $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") / 1024 ))"); done
  (IFS=/; echo "${out[*]}")
}

# A lone client runs once from each member (the fifth word: how far the endpoints are
# rotated, `rotated_endpoints`).
runs=("put 1 1 1000 0" "put 1 1 1000 1" "put 1 1 1000 2" "put 64 8 $total"
  "put 256 16 $total" "get 64 8 $total" "get-serializable 64 8 $total" "txn 64 8 $total"
  "range 64 8 $((total / 4))")
results=$(mktemp)
bench_a() {
  echo "A $("$bin_a" bench --endpoints "$(rotated_endpoints "$endpoints_a" "${5:-0}")" --workload "$1" \
    --clients "$2" --conns "$3" --total "$4" --cpu-of-pids "$(IFS=,; echo "${pids_a[*]}")" --json)" | tee -a "$results"
}
bench_b() {
  echo "B $("$bin_b" bench --endpoints "$(rotated_endpoints "$endpoints_b" "${5:-0}")" --workload "$1" \
    --clients "$2" --conns "$3" --total "$4" --cpu-of-pids "$(IFS=,; echo "${pids_b[*]}")" --json)" | tee -a "$results"
}
for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds"
  step=0
  for run in "${runs[@]}"; do
    # shellcheck disable=SC2086 # a run is its words
    set -- $run
    if [ -n "${WORKLOADS:-}" ] && ! [[ " $WORKLOADS " == *" $1 "* ]]; then continue; fi
    # Which build goes first alternates from run to run and from round to round: the
    # one that follows the other's heavier workload runs slower (a lone client's put
    # after a 64-client range ran about 1.25x slower on whichever build came first),
    # so a fixed order favours one build. An even ROUNDS balances it.
    if (( (round + step) % 2 == 1 )); then
      bench_a "$@"
      bench_b "$@"
    else
      bench_b "$@"
      bench_a "$@"
    fi
    step=$((step + 1))
  done
  echo "leaderships handed over so far: A $(moves 2379 2479 2579), B $(moves 3379 3479 3579)"
  echo "resident memory of the members, MiB: A $(rss_mib "${pids_a[@]}"), B $(rss_mib "${pids_b[@]}")"
done

# Medians of each build's runs, and B against A.
python3 - "$results" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(lambda: {"A": [], "B": []})
for line in open(sys.argv[1]):
    build, data = line.split(" ", 1)
    r = json.loads(data)
    runs[(r["workload"], r["clients"])][build].append(r)
print("| workload | clients | A req/s | B req/s | B/A | p50 ms A / B | CPU ms per 1,000 A / B | runs |")
print("|---|---|---|---|---|---|---|---|")
for (workload, clients), by in runs.items():
    med = lambda build, key: statistics.median(r[key] for r in by[build])
    a, b = med("A", "throughput"), med("B", "throughput")
    print(f"| {workload} | {clients} | {a:.0f} | {b:.0f} | {b / a:.2f}x | "
          f"{med('A', 'p50_ms'):.2f} / {med('B', 'p50_ms'):.2f} | "
          f"{med('A', 'servers_cpu_ms_per_1k'):.0f} / {med('B', 'servers_cpu_ms_per_1k'):.0f} | "
          f"{len(by['A'])} |")
PY
rm -f "$results"
