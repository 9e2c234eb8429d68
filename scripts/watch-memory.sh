#!/usr/bin/env bash
# Measures what a watcher that reads nothing costs the server: a 3-member cluster under a
# 60 s put load, once without a watcher and once with one that never reads (etcdctl
# watch piped into a process that does not read its input), sampling the watched
# member's resident memory. Writes the figures into docs/BENCHMARKS.md between the
# "watch-memory" markers.
#   bash scripts/watch-memory.sh                 # 60 s per phase
#   SECONDS_PER_PHASE=20 bash scripts/watch-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${SECONDS_PER_PHASE:-60}
cargo build --release -p ostrakon
bin=$PWD/target/release/ostrakon
bash scripts/install-test-tools.sh >/dev/null
etcdctl=$(command -v etcdctl)
source scripts/lib/ostrakon-cluster.sh

phase() { # with_watcher -> prints "max_rss_kib final_rss_kib puts_per_s"
  local with_watcher=$1 dir pids=() watcher=""
  dir=$(mktemp -d /tmp/ostrakon-watchmem.XXXX)
  start_ostrakon_cluster "$bin" "$dir"
  pids=("${ostrakon_pids[@]}")
  if [ "$with_watcher" = 1 ]; then
    # `sleep` never reads the pipe: once it is full, etcdctl blocks and stops reading.
    ( ETCDCTL_API=3 "$etcdctl" --endpoints=127.0.0.1:2379 watch --prefix "" | sleep $((PHASE + 30)) ) &
    watcher=$!
    sleep 1
  fi
  local samples=$(mktemp)
  ( for _ in $(seq 1 $((PHASE / 5))); do sleep 5; ps -o rss= -p "${pids[0]}" >> "$samples"; done ) &
  local sampler=$!
  local line
  line=$("$bin" bench --endpoints 127.0.0.1:2379 --workload put --clients 16 --conns 4 \
    --total 100000000 --duration-max-secs "$PHASE" --val-size 1024 --json)
  wait $sampler
  local final; final=$(ps -o rss= -p "${pids[0]}")
  [ -n "$watcher" ] && pkill -P "$watcher" 2>/dev/null; kill $watcher 2>/dev/null || true
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  rm -rf "$dir"
  local rate; rate=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["throughput"]))' "$line")
  echo "$(sort -n "$samples" | tail -1) $final $rate"
  rm -f "$samples"
}

echo "== without a watcher"; read -r base_max base_final base_rate < <(phase 0); echo "$base_max $base_final $base_rate"
echo "== with a watcher that reads nothing"; read -r w_max w_final w_rate < <(phase 1); echo "$w_max $w_final $w_rate"

python3 - "$PHASE" "$base_max" "$base_final" "$base_rate" "$w_max" "$w_final" "$w_rate" <<'PY'
import sys, datetime, re
phase, bmax, bfin, brate, wmax, wfin, wrate = sys.argv[1], *map(int, sys.argv[2:])
mib = lambda kib: f"{kib/1024:.0f} MiB"
block = f"""<!-- watch-memory:start -->
Measured {datetime.date.today().isoformat()} by `bash scripts/watch-memory.sh`: a 3-member cluster under {phase} s of puts (16 clients, 1 KiB values) through member 1, once without a watcher and once with a watcher on every key (on member 1) whose client reads nothing; resident memory of member 1 sampled every 5 s.

| | puts/s | largest RSS sample | RSS at the end |
|---|---|---|---|
| no watcher | {brate} | {mib(bmax)} | {mib(bfin)} |
| a watcher that reads nothing | {wrate} | {mib(wmax)} | {mib(wfin)} |
<!-- watch-memory:end -->"""
doc = open("docs/BENCHMARKS.md").read()
if "<!-- watch-memory:start -->" in doc:
    doc = re.sub(r"<!-- watch-memory:start -->.*<!-- watch-memory:end -->", lambda _: block, doc, flags=re.S)
else:
    doc += "\n## A watcher that reads nothing\n\n" + block + "\n"
open("docs/BENCHMARKS.md", "w").write(doc)
print(block)
PY
