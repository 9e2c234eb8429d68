#!/usr/bin/env bash
# Where a single client's put spends its time (issue 16, item 2), on the leader and
# through a follower, beside etcd 3.5 on the same machine in the same run.
#
# One client puts 256-byte values one at a time (TOTAL of them) through one member; every
# member's /metrics is read before and after, and the per-put means of what the members
# measure themselves are set against the client's mean: the gRPC handling on the member
# the client calls, the WAL fdatasync on the leader and on each follower, the apply, and
# the peers' round trip (probed every few seconds: its mean since the members started). A put commits once the leader's own fdatasync and one follower's
# (after a round trip) are done, which the leader waits for in parallel (it sends its
# appends before it syncs), so the commit costs about max(leader fsync, round trip +
# follower fsync); what handling leaves beyond that and the apply is the runtime's own
# (channel hops, the event loop's rounds, encoding, forwarding).
# etcd's members report their WAL fdatasync too (not their gRPC handling, which needs
# --metrics extensive); the client's mean is measured alike.
#   bash scripts/latency-budget.sh             # 3,000 puts per case, 3 rounds
#   TOTAL=1000 ROUNDS=1 bash scripts/latency-budget.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TOTAL=${TOTAL:-3000}
ROUNDS=${ROUNDS:-3}
ANCHOR=../shared/tools/etcd-anchor.sh
source scripts/lib/ostrakon-cluster.sh
release_binary_unless_given
dir=$(mktemp -d /tmp/ostrakon-budget.XXXX)
bash "$ANCHOR" stop >/dev/null 2>&1 || true
bash "$ANCHOR" start 3.5
start_ostrakon_cluster "$BIN" "$dir"
cleanup() { kill "${ostrakon_pids[@]}" 2>/dev/null || true; bash "$ANCHOR" stop >/dev/null 2>&1 || true; rm -rf "$dir"; }
trap cleanup EXIT

ostrakon_ports=(2379 2479 2579)
etcd_ports=(12379 22379 32379)
scrape() { # system tag ports...
  local system=$1 tag=$2 port
  shift 2
  for port in "$@"; do curl -sf "http://127.0.0.1:$port/metrics" > "$dir/$system.$tag.$port"; done
}
leader_port() {
  local port
  local metrics
  for port in "$@"; do
    metrics=$(curl -sf "http://127.0.0.1:$port/metrics" || true)
    if grep -q '^etcd_server_is_leader 1' <<<"$metrics"; then
      echo "$port"
      return
    fi
  done
}
put_one_client() { # endpoint label
  "$BIN" bench --endpoints "127.0.0.1:$1" --workload put --clients 1 --conns 1 --total "$TOTAL" --json
}

# A warm-up on both, so connections, caches and the WAL's preallocation are in place.
"$BIN" bench --endpoints 127.0.0.1:2379 --workload put --clients 1 --conns 1 --total 500 >/dev/null
"$BIN" bench --endpoints 127.0.0.1:12379 --workload put --clients 1 --conns 1 --total 500 >/dev/null

results=$dir/results
for round in $(seq 1 "$ROUNDS"); do
  for system in etcd ostrakon; do
    if [ "$system" = etcd ]; then ports=("${etcd_ports[@]}"); else ports=("${ostrakon_ports[@]}"); fi
    leader=$(leader_port "${ports[@]}")
    follower=""
    for port in "${ports[@]}"; do [ "$port" != "$leader" ] && { follower=$port; break; }; done
    for role in leader follower; do
      if [ "$role" = leader ]; then target=$leader; else target=$follower; fi
      tag="$round-$role"
      scrape "$system" "$tag-before" "${ports[@]}"
      line=$(put_one_client "$target")
      scrape "$system" "$tag-after" "${ports[@]}"
      echo "$system $role $round $leader $target $line" | tee -a "$results"
    done
  done
done

python3 - "$dir" "$results" "${ostrakon_ports[*]}" "${etcd_ports[*]}" <<'PY'
import json, re, sys, statistics
from collections import defaultdict
dir, results = sys.argv[1], sys.argv[2]
ports = {"ostrakon": sys.argv[3].split(), "etcd": sys.argv[4].split()}

def parse(path):
    values = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values

def delta_mean_ms(before, after, prefix, labels=""):
    """Mean of a histogram's observations between two scrapes, in ms, and their count."""
    s = after.get(f"{prefix}_sum{labels}", 0) - before.get(f"{prefix}_sum{labels}", 0)
    c = after.get(f"{prefix}_count{labels}", 0) - before.get(f"{prefix}_count{labels}", 0)
    return (s / c * 1000 if c else None), c

def family_mean_ms(before, after, prefix, match):
    s = c = 0.0
    for name, value in after.items():
        if name.startswith(prefix + "_sum") and match in name:
            s += value - before.get(name, 0)
        if name.startswith(prefix + "_count") and match in name:
            c += value - before.get(name, 0)
    return (s / c * 1000 if c else None), c

rows = defaultdict(lambda: defaultdict(list))
for line in open(results):
    system, role, rnd, leader, target, data = line.split(" ", 5)
    r = json.loads(data)
    tag = f"{rnd}-{role}"
    scraped = {p: (parse(f"{dir}/{system}.{tag}-before.{p}"), parse(f"{dir}/{system}.{tag}-after.{p}"))
               for p in ports[system]}
    row = rows[(system, role)]
    row["client mean"].append(r["seconds"] / r["ok"] * 1000)
    row["client p50"].append(r["p50_ms"])
    lb, la = scraped[leader]
    m, c = delta_mean_ms(lb, la, "etcd_disk_wal_fsync_duration_seconds")
    row["leader WAL fdatasync"].append(m)
    row["leader fdatasyncs per put"].append(c / r["ok"])
    followers = [p for p in ports[system] if p != leader]
    fsyncs = [delta_mean_ms(*scraped[p], "etcd_disk_wal_fsync_duration_seconds")[0] for p in followers]
    row["follower WAL fdatasync (faster follower)"].append(min(f for f in fsyncs if f is not None))
    # Probed every few seconds: the mean since the start, not over this run alone.
    m, _ = family_mean_ms({}, la, "etcd_network_peer_round_trip_time_seconds", "")
    row["peer round trip (leader's pings)"].append(m)
    if system == "ostrakon":
        tb, ta = scraped[target]
        m, _ = family_mean_ms(tb, ta, "grpc_server_handling_seconds", 'grpc_method="Put"')
        row["gRPC handling on the member called"].append(m)
        m, _ = delta_mean_ms(lb, la, "etcd_disk_backend_commit_duration_seconds")
        row["apply on the leader"].append(m)

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

order = ["client mean", "client p50", "gRPC handling on the member called", "leader WAL fdatasync",
         "leader fdatasyncs per put", "follower WAL fdatasync (faster follower)",
         "peer round trip (leader's pings)", "apply on the leader"]
out = ["| per put, median of rounds | etcd 3.5, on the leader | etcd 3.5, through a follower | ostrakon, on the leader | ostrakon, through a follower |",
       "|---|---|---|---|---|"]
for key in order:
    cells = []
    for system in ["etcd", "ostrakon"]:
        for role in ["leader", "follower"]:
            v = med(rows[(system, role)].get(key, []))
            cells.append("" if v is None else (f"{v:.2f}" if "per put" in key else f"{v:.3f} ms"))
    out.append(f"| {key} | " + " | ".join(cells) + " |")
# What the members' own measures leave: on the member called, handling beyond the
# leader's fdatasyncs and the apply is the wait for a follower (round trip and its
# fdatasync, in parallel with the leader's) plus the runtime's hops and rounds (and, through
# a follower, the forwarding); beyond handling, the client and HTTP/2 on loopback.
derived = {}
for role in ["leader", "follower"]:
    row = rows[("ostrakon", role)]
    handling = med(row["gRPC handling on the member called"])
    disk = med(row["leader WAL fdatasync"]) * med(row["leader fdatasyncs per put"])
    derived[role] = (handling - disk - med(row["apply on the leader"]),
                     med(row["client mean"]) - handling)
out.append("| ostrakon: handling beyond the leader's fdatasyncs and the apply | | | "
           f"{derived['leader'][0]:.3f} ms | {derived['follower'][0]:.3f} ms |")
out.append("| ostrakon: client mean beyond handling (client, HTTP/2, loopback) | | | "
           f"{derived['leader'][1]:.3f} ms | {derived['follower'][1]:.3f} ms |")
print("\n".join(out))
PY
