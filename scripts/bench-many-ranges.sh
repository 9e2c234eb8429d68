#!/usr/bin/env bash
# What ranges cost a node at rest: a 3-member cluster on loopback split into RANGES
# ranges by hand (`ostrakon ranges split`), left idle for SETTLE_S seconds, then each
# member's resident memory, threads, and CPU over IDLE_S seconds with no requests.
#   RANGES=1000 bash scripts/bench-many-ranges.sh
#   BIN=/path/to/ostrakon RANGES=1000 bash scripts/bench-many-ranges.sh   # another build
# Prints one line per member count of ranges measured (1, then RANGES).
set -euo pipefail
cd "$(dirname "$0")/.."
RANGES=${RANGES:-1000}
SETTLE_S=${SETTLE_S:-15}
IDLE_S=${IDLE_S:-30}
BASE=${BASE:-5379}
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
dir=$(mktemp -d)
cleanup() { kill "${ostrakon_pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
start_ostrakon_cluster "$BIN" "$dir" "$BASE"
endpoint=http://127.0.0.1:$BASE
tck=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_field() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
# Snapshot files a member wrote since it started (its /metrics).
snapshots_written() { curl -sf "http://127.0.0.1:$1/metrics" | awk '$1 == "ostrakon_snapshots_created_total" {print int($2)}'; }

measure() { # label
  sleep "$SETTLE_S"
  local before=() after=() i pid
  for pid in "${ostrakon_pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  sleep "$IDLE_S"
  for pid in "${ostrakon_pids[@]}"; do after+=("$(cpu_ticks "$pid")"); done
  local line="$1:"
  for i in 0 1 2; do
    pid=${ostrakon_pids[$i]}
    line+=$(printf ' | o%d rss %d MiB, threads %d, cpu %.1f%% of a core, %d snapshots written' $((i + 1)) \
      $(( $(status_field "$pid" VmRSS) / 1024 )) "$(status_field "$pid" Threads)" \
      "$(awk -v t=$(( ${after[$i]} - ${before[$i]} )) -v hz="$tck" -v s="$IDLE_S" 'BEGIN {print t * 100 / hz / s}')" \
      "$(snapshots_written $((BASE + 100 * i)))")
  done
  echo "$line"
}

measure "1 data range"
started=$(date +%s)
# The split keys r0000001.. in bit-reversed order of their numbers (the middle key
# first, then the quarters, ...), so that the splits in flight at once fall in different
# ranges; 1,000 keys per call, 16 splits in flight.
seq 1 $((RANGES - 1)) |
  awk -v n=$((RANGES - 1)) '{ r = 0; x = $1; for (m = n; m >= 1; m = int(m / 2)) { r = r * 2 + x % 2; x = int(x / 2) }; printf "%d r%07d\n", r, $1 }' |
  sort -n | cut -d' ' -f2 |
  xargs -n 1000 "$BIN" ranges --endpoint "$endpoint" split --concurrency 16 >/dev/null
listed=$("$BIN" ranges --endpoint "$endpoint" list | grep -c '^| *[0-9]')
echo "split into $RANGES ranges in $(( $(date +%s) - started )) s; ranges list shows $listed data ranges"
measure "$RANGES data ranges"
