#!/usr/bin/env bash
# Two builds of ostrakon side by side on the put path of a keyspace in two ranges:
# each round starts a fresh 3-member cluster on loopback from one build (splits by load
# off, split by hand at b0005, so both ranges' leaders and the oracle's are spread as
# the node spreads them), then measures one client's puts (latency) and 64 clients'
# puts (throughput, CPU of the three members per 1,000 puts from /proc, and their
# resident memory after). Rounds
# alternate the builds (old, new, old, new, ...); compare the ratios of adjacent rounds,
# never absolute figures of different runs.
#   bash scripts/bench-builds.sh OLD_BINARY NEW_BINARY [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1
new=$2
rounds=${3:-4}
source scripts/lib/ostrakon-cluster.sh
endpoints="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"

cpu_ticks() {
  local total=0 pid utime stime
  for pid in "${ostrakon_pids[@]}"; do
    read -r utime stime < <(awk '{print $14, $15}' "/proc/$pid/stat")
    total=$((total + utime + stime))
  done
  echo "$total"
}

# Resident memory of each member, MiB, after the round's puts.
rss_mib() {
  local pid out=()
  for pid in "${ostrakon_pids[@]}"; do
    out+=("$(( $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") / 1024 ))")
  done
  (IFS=/; echo "${out[*]}")
}

one_round() {
  local label=$1 bin=$2 dir single many before after
  dir=$(mktemp -d /tmp/ostrakon-builds.XXXX)
  start_ostrakon_cluster "$bin" "$dir" 2379 --range-split-qps 1000000
  "$bin" ranges split b0005 --endpoint 127.0.0.1:2379 >/dev/null
  sleep 1
  # Warm up (connections, the oracle's first bounds, leaders spread).
  "$bin" bench --endpoints "$endpoints" --clients 64 --conns 8 --total 5000 >/dev/null
  single=$("$bin" bench --endpoints "$endpoints" --clients 1 --conns 1 --total 3000 |
    grep -o 'p50 [0-9.]* ms')
  before=$(cpu_ticks)
  many=$("$bin" bench --endpoints "$endpoints" --clients 64 --conns 8 --total 30000 |
    grep -o '[0-9]* req/s')
  after=$(cpu_ticks)
  printf '%s\t1 client %s\t64 clients %s\tCPU %s ms per 1,000 puts\tRSS %s MiB\n' "$label" \
    "$single" "$many" "$(( (after - before) * 1000 / $(getconf CLK_TCK) / 30 ))" "$(rss_mib)"
  kill "${ostrakon_pids[@]}"
  sleep 1
  kill -9 "${ostrakon_pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}

for round in $(seq 1 "$rounds"); do
  one_round old "$old"
  one_round new "$new"
done
