#!/usr/bin/env bash
# Linearizable gets from clients on one member against clients spread over all three,
# on a keyspace whole and split (issue 14: why a split keyspace's single-range reads
# cost more CPU). For each of ROUNDS rounds and each case, a fresh 3-member cluster on
# loopback (no split by load), SPLITS applied ("c" puts every benchmark key in one data
# range whose writes and reads take revisions from the oracle), 20,000 gets to warm
# up, then 20,000 measured: throughput, p50, CPU of the members per 1,000 gets and the
# oracle requests the members made (`ostrakon_oracle_requests_total`, one per fetch).
#   bash scripts/bench-read-spread.sh [ROUNDS]
#   BIN=/tmp/ostrakon-old SPLITS="b0005" bash scripts/bench-read-spread.sh 2
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
SPLITS=${SPLITS:-c}
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
spread=127.0.0.1:4379,127.0.0.1:4479,127.0.0.1:4579
one_case() { # splits endpoints
  local dir fetches line
  dir=$(mktemp -d /tmp/ostrakon-spread.XXXX)
  start_ostrakon_cluster "$BIN" "$dir" 4379 --range-split-qps 0
  for key in $1; do "$BIN" ranges split "$key" --endpoint 127.0.0.1:4379 >/dev/null; done
  sleep 3
  "$BIN" bench --endpoints "$spread" --workload get --clients 64 --conns 8 --total 20000 >/dev/null
  fetches() {
    local port sum=0 value
    for port in 4379 4479 4579; do
      value=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^ostrakon_oracle_requests_total /{print $2}')
      sum=$((sum + ${value%.*}))
    done
    echo "$sum"
  }
  fetches=$(fetches)
  line=$("$BIN" bench --endpoints "$2" --workload get --clients 64 --conns 8 --total 20000 \
    --cpu-of-pids "$(IFS=,; echo "${ostrakon_pids[*]}")" --json)
  echo "$line" | sed "s/}\$/,\"oracle_fetches\":$(( $(fetches) - fetches ))}/"
  kill "${ostrakon_pids[@]}"
  wait "${ostrakon_pids[@]}" 2>/dev/null || true
  rm -rf "$dir"
}
for round in $(seq 1 "$rounds"); do
  echo "== round $round of $rounds"
  for splits in "" "$SPLITS"; do
    for endpoints in 127.0.0.1:4479 "$spread"; do
      echo "splits=\"$splits\" endpoints=$endpoints $(one_case "$splits" "$endpoints")"
    done
  done
done
