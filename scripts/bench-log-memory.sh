#!/usr/bin/env bash
# What the in-memory raft log costs under large values: a 3-member cluster on loopback,
# TOTAL puts of VALUE_BYTES (default 3,000 of 64 KiB: about 190 MiB of log, far below
# --snapshot-count's 100,000 entries), then every member's resident memory. Run it with
# BIN set to two builds to compare (the byte bound on the log came in after 9085965).
#   bash scripts/bench-log-memory.sh
#   BIN=/path/to/older/ostrakon bash scripts/bench-log-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-3000}
VALUE_BYTES=${VALUE_BYTES:-65536}
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
dir=$(mktemp -d /tmp/ostrakon-log-memory.XXXX)
cleanup() { kill "${ostrakon_pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
start_ostrakon_cluster "$BIN" "$dir" 7379
"$BIN" bench --endpoints 127.0.0.1:7379,127.0.0.1:7479,127.0.0.1:7579 --workload put \
  --clients 16 --total "$TOTAL" --val-size "$VALUE_BYTES" --key-space 1000
sleep 3 # let a snapshot in progress finish
rss="" snapshots=""
for i in 0 1 2; do
  rss="$rss $(( $(ps -o rss= -p "${ostrakon_pids[$i]}") / 1024 ))"
  snapshots="$snapshots $(curl -s http://127.0.0.1:$((7379 + 100 * i))/metrics |
    awk '$1 == "ostrakon_snapshots_created_total" {print $2}')"
done
echo "resident MiB per member:$rss; snapshots taken per member:$snapshots"
