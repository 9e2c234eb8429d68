#!/usr/bin/env bash
# Resident memory of two builds of ostrakon under the side-by-side workloads
# (scripts/bench-vs-etcd.sh's: puts from 1, 64 and 256 clients, gets, serializable gets,
# Txns and ranges, 256-byte values), three rounds of all of them on one fresh 3-member
# cluster on loopback per build, each member's resident memory printed after every
# round. The builds alternate (A, B, A, B); compare adjacent runs.
#   bash scripts/bench-memory.sh BINARY_A BINARY_B [RUNS_EACH] [TOTAL]
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1
b=$2
runs=${3:-2}
total=${4:-20000}
source scripts/lib/ostrakon-cluster.sh
endpoints="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"

one_run() {
  local label=$1 bin=$2 dir round workload pid rss
  dir=$(mktemp -d /tmp/ostrakon-memory.XXXX)
  start_ostrakon_cluster "$bin" "$dir" 2379
  sleep 2
  for round in 1 2 3; do
    for workload in "put 1 1 3000" "put 64 8 $total" "put 256 16 $total" "get 64 8 $total" \
      "get-serializable 64 8 $total" "txn 64 8 $total" "range 64 8 $((total / 4))"; do
      set -- $workload
      "$a" bench --endpoints "$endpoints" --workload "$1" --clients "$2" --conns "$3" \
        --total "$4" >/dev/null
    done
    rss=()
    for pid in "${ostrakon_pids[@]}"; do
      rss+=("$(( $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") / 1024 ))")
    done
    printf '%s\tround %s\tRSS %s MiB\n' "$label" "$round" "$(IFS=/; echo "${rss[*]}")"
  done
  kill "${ostrakon_pids[@]}"
  sleep 1
  kill -9 "${ostrakon_pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}

for run in $(seq 1 "$runs"); do
  one_run A "$a"
  one_run B "$b"
done
