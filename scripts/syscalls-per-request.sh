#!/usr/bin/env bash
# System calls and context switches of the members per request, ostrakon against etcd
# 3.5 on the same machine (issue 16): a 3-member ostrakon cluster (default flags) and
# `../shared/tools/etcd-anchor.sh start 3.5` side by side on loopback, one workload of
# `ostrakon bench` (clients spread over the members) on each, the members' system calls
# counted by perf over the whole run, per request. Writes to sockets are most of a small
# request's kernel time on loopback (the receiver's side of TCP runs in the sender's
# call). Rust's std writes a socket with send (sendto) or writev, Go with write; write
# is also how tokio wakes a worker parked in epoll (an eventfd), and a WAL's write.
#   bash scripts/syscalls-per-request.sh [WORKLOAD] [TOTAL]   # get-serializable, 40000
#   BIN=/tmp/ostrakon-old bash scripts/syscalls-per-request.sh put
# Needs perf (Debian: linux-perf) and permission to trace (root).
set -euo pipefail
cd "$(dirname "$0")/.."
workload=${1:-get-serializable}
total=${2:-40000}
clients=${CLIENTS:-64}
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
dir=$(mktemp -d /tmp/ostrakon-syscalls.XXXX)
start_ostrakon_cluster "$BIN" "$dir" 2379
ostrakon_members=$(IFS=,; echo "${ostrakon_pids[*]}")
trap 'kill "${ostrakon_pids[@]}" 2>/dev/null; bash ../shared/tools/etcd-anchor.sh stop; wait 2>/dev/null; rm -rf "$dir"' EXIT
bash ../shared/tools/etcd-anchor.sh start 3.5 >/dev/null
etcd_members=$(pgrep -d, -f "data-dir /tmp/etcd-anchor")
events=context-switches
for call in write writev sendmsg sendto read readv recvfrom recvmsg epoll_wait epoll_pwait futex; do
  events="$events,syscalls:sys_enter_$call"
done
echo "| system | req/s | write | writev | sendto, sendmsg | read, recvfrom | epoll waits | futex | context switches |"
echo "|---|---|---|---|---|---|---|---|---|"
for system in ostrakon etcd; do
  if [ $system = ostrakon ]; then
    endpoints=127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579 members=$ostrakon_members
  else
    endpoints=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379 members=$etcd_members
  fi
  bench() {
    "$BIN" bench --endpoints "$endpoints" --workload "$workload" --clients "$clients" --conns 8 --total "$1"
  }
  bench 10000 >/dev/null # fills the keys a read needs; warms up
  perf stat -x, -e "$events" -p "$members" -o "$dir/stat" -- \
    "$BIN" bench --endpoints "$endpoints" --workload "$workload" --clients "$clients" \
    --conns 8 --total "$total" >"$dir/bench.out"
  python3 - "$dir/stat" "$dir/bench.out" "$system" "$total" <<'PY'
import re, sys
counts = {}
for line in open(sys.argv[1]):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].isdigit():
        counts[fields[2].replace("syscalls:sys_enter_", "")] = int(fields[0])
total = int(sys.argv[4])
rate = re.search(r"([0-9.]+) req/s", open(sys.argv[2]).read()).group(1)
per = lambda *names: f"{sum(counts.get(n, 0) for n in names) / total:.2f}"
print(f"| {sys.argv[3]} | {rate} | {per('write')} | {per('writev')} | {per('sendto', 'sendmsg')} | "
      f"{per('read', 'readv', 'recvfrom', 'recvmsg')} | {per('epoll_wait', 'epoll_pwait')} | "
      f"{per('futex')} | {per('context-switches')} |")
PY
done
