#!/usr/bin/env bash
# What one request costs a 3-member cluster, counted from the members' own metrics and
# /proc (issue 16, "know where the time goes"): WAL fdatasyncs, raft messages and peer
# batches sent, peer bytes, writes forwarded, oracle requests and asks, and CPU of all
# members, each per request, over a run of `ostrakon bench` with clients spread over
# the three members.
#   bash scripts/count-per-request.sh put                     # one range
#   SPLITS="b0005" bash scripts/count-per-request.sh put      # split at b0005 first
#   BIN=/tmp/ostrakon-old TOTAL=50000 CLIENTS=256 bash scripts/count-per-request.sh get
# Splits by load are off (`--range-split-qps 0`) unless FLAGS says otherwise, so the
# ranges stay as SPLITS made them for the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKLOAD=${1:-put}
CLIENTS=${CLIENTS:-64}
TOTAL=${TOTAL:-30000}
SPLITS=${SPLITS:-}
FLAGS=${FLAGS:---range-split-qps 0}
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
dir=$(mktemp -d /tmp/ostrakon-count.XXXX)
# shellcheck disable=SC2086 # FLAGS is a list of flags
start_ostrakon_cluster "$BIN" "$dir" 2379 $FLAGS
cleanup() {
  kill "${ostrakon_pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
for key in $SPLITS; do
  "$BIN" ranges split "$key" --endpoint 127.0.0.1:2379
done
endpoints="127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579"
bench() { # TOTAL [FLAG]
  "$BIN" bench --endpoints "$endpoints" --workload "$WORKLOAD" --clients "$CLIENTS" \
    --conns 8 --total "$@"
}
# Every member's metrics and CPU ticks (user + system), one line per figure, summed over
# the members.
snapshot() { # FILE
  local port pid
  : >"$1"
  for port in 2379 2479 2579; do
    curl -sf "http://127.0.0.1:$port/metrics" >>"$1"
  done
  for pid in "${ostrakon_pids[@]}"; do
    awk '{ print "cpu_ticks", $14 + $15 }' "/proc/$pid/stat" >>"$1"
  done
}
# The sum over the members of a figure (a metric's lines whose name is exactly NAME,
# any labels).
figure() { # FILE NAME
  awk -v name="$2" '$1 == name || index($1, name "{") == 1 { sum += $NF } END { printf "%.0f", sum }' "$1"
}
bench 10000 >/dev/null # fills the keyspace a read needs; warms the members up
snapshot "$dir/before"
# The measured run writes no keys first: the counts are of its requests alone.
bench "$TOTAL" --keys-loaded >"$dir/bench.out"
snapshot "$dir/after"
cat "$dir/bench.out"
ticks_per_second=$(getconf CLK_TCK)
echo "per request, all 3 members ($WORKLOAD, $CLIENTS clients, $TOTAL requests, splits: ${SPLITS:-none}):"
for name in etcd_disk_wal_fsync_duration_seconds_count \
  ostrakon_transport_batch_messages_sum ostrakon_transport_batch_messages_count \
  etcd_network_peer_sent_bytes_total ostrakon_forward_batch_writes_count \
  ostrakon_forward_batch_writes_sum ostrakon_oracle_requests_total \
  ostrakon_oracle_asks_granted_total ostrakon_oracle_asks_confirmed_by_word_total \
  ostrakon_reads_confirmed_by_word_total ostrakon_read_barriers_served_total \
  ostrakon_fresh_read_points_served_total ostrakon_read_point_asks_answered_total \
  etcd_server_proposals_committed_total cpu_ticks; do
  before=$(figure "$dir/before" "$name")
  after=$(figure "$dir/after" "$name")
  awk -v name="$name" -v d="$((after - before))" -v n="$TOTAL" -v hz="$ticks_per_second" \
    'BEGIN { if (name == "cpu_ticks") printf "  %-48s %8.3f ms\n", "CPU", d * 1000 / hz / n;
             else printf "  %-48s %8.3f\n", name, d / n }'
done
