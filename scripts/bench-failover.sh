#!/usr/bin/env bash
# Failover time: kill -9 the leader of a 3-member cluster on loopback (default flags:
# 100 ms heartbeat, 1000 ms election timeout) and time until a put through any member
# succeeds; restart the member, let it catch up, repeat ROUNDS times. Prints each round
# and the min / median / max, and how many rounds took longer than two election timeouts,
# which a failover should not (a split vote does).
#   bash scripts/bench-failover.sh
#   ROUNDS=10 BIN=/path/to/other/ostrakon bash scripts/bench-failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-30}
BASE=${BASE:-6380}
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
dir=$(mktemp -d /tmp/ostrakon-bench-failover.XXXX)
cluster="o1=http://127.0.0.1:$((BASE + 1)),o2=http://127.0.0.1:$((BASE + 101)),o3=http://127.0.0.1:$((BASE + 201))"
eps=127.0.0.1:$BASE,127.0.0.1:$((BASE + 100)),127.0.0.1:$((BASE + 200))
declare -A pids
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
start_member() {
  local i=$1 c=$((BASE - 100 + 100 * $1)) p
  p=$((c + 1))
  "$BIN" server --name o$i --data-dir "$dir/o$i" \
    --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
    --listen-peer-urls http://127.0.0.1:$p --initial-advertise-peer-urls http://127.0.0.1:$p \
    --initial-cluster "$cluster" --log-level warn 2>>"$dir/o$i.log" &
  pids[$i]=$!
}
put_until_ok() {
  local deadline=$((SECONDS + 30))
  until etcdctl --dial-timeout=200ms --command-timeout=300ms --endpoints "$eps" put k v >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then echo "no put succeeded within 30 s" >&2; exit 1; fi
  done
}
for i in 1 2 3; do start_member $i; done
times_ms=()
for round in $(seq 1 "$ROUNDS"); do
  put_until_ok
  sleep 1.5
  leader=$(etcdctl --endpoints "$eps" endpoint status | awk -F', ' '$5=="true" {print $1}')
  i=$(( (${leader##*:} - BASE + 100) / 100 ))
  t0=$(date +%s%N)
  kill -9 "${pids[$i]}"
  wait "${pids[$i]}" 2>/dev/null || true
  put_until_ok
  t1=$(date +%s%N)
  ms=$(( (t1 - t0) / 1000000 ))
  times_ms+=("$ms")
  echo "round $round: killed the leader o$i; a put succeeded after $ms ms"
  start_member "$i"
  sleep 2.5
done
printf '%s\n' "${times_ms[@]}" | sort -n | awk '
  { t[NR] = $1; if ($1 > 2000) slow++ }
  END { printf "rounds %d: min %d ms, median %d ms, max %d ms, over 2 s: %d\n",
        NR, t[1], t[int((NR + 1) / 2)], t[NR], slow + 0 }'
