# Sourced by the measuring scripts.

# Sets BIN to the ostrakon binary to measure: BIN if the caller set it (to compare
# builds), else a release build of this tree.
release_binary_unless_given() {
  if [ -z "${BIN:-}" ]; then
    cargo build --release -p ostrakon
    BIN=$PWD/target/release/ostrakon
  fi
}

# Starts a 3-member ostrakon cluster on loopback.
#   start_ostrakon_cluster BINARY DIR [BASE [FLAGS...]]
# Sets ostrakon_pids; members log to DIR/o<i>.log. Client ports BASE, BASE+100, BASE+200
# (default 2379), peer ports one above each. FLAGS go to every member. Returns once
# member 1 is healthy (or after 20 s).
start_ostrakon_cluster() {
  local bin=$1 dir=$2 base=${3:-2379} i c p
  shift $(( $# < 3 ? $# : 3 ))
  local cluster="o1=http://127.0.0.1:$((base + 1)),o2=http://127.0.0.1:$((base + 101)),o3=http://127.0.0.1:$((base + 201))"
  ostrakon_pids=()
  for i in 1 2 3; do
    c=$((base - 100 + 100 * i)); p=$((c + 1))
    "$bin" server --name o$i --data-dir "$dir/o$i" \
      --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
      --listen-peer-urls http://127.0.0.1:$p --initial-advertise-peer-urls http://127.0.0.1:$p \
      --initial-cluster $cluster --log-level warn "$@" 2>"$dir/o$i.log" &
    ostrakon_pids+=($!)
  done
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$base/health >/dev/null && break; sleep 0.2; done
}

# Caps a process (every thread) at FRACTION of one core in a cgroup of its own, as if it
# ran on a machine of its own with that much CPU (root; cgroup v1's cpu controller or
# cgroup v2). The members of a cluster on one machine otherwise share every core, so a
# leader can take the CPU its followers leave idle, which no deployment on three
# machines allows.
#   cap_cpu PID FRACTION NAME
cap_cpu() {
  local pid=$1 fraction=$2 name=$3 quota dir
  quota=$(awk -v f="$fraction" 'BEGIN { printf "%d", f * 100000 }')
  if [ -d /sys/fs/cgroup/cpu ] && [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    dir=/sys/fs/cgroup/cpu/ostrakon-$name
    mkdir -p "$dir"
    echo 100000 >"$dir/cpu.cfs_period_us"
    echo "$quota" >"$dir/cpu.cfs_quota_us"
  else
    dir=/sys/fs/cgroup/ostrakon-$name
    mkdir -p "$dir"
    echo "$quota 100000" >"$dir/cpu.max"
  fi
  echo "$pid" >"$dir/cgroup.procs"
}

# The comma-separated endpoints, rotated left by N: `rotated_endpoints a,b,c 1` is b,c,a.
# A lone client's connection goes to the first endpoint, and its latency depends on
# whether that member leads (a forward costs about 0.3 ms): benchmarks run it once
# from each member, or where one cluster's leader happened to land decides the figure.
rotated_endpoints() { # endpoints rotation
  local list out=() i n
  IFS=, read -r -a list <<< "$1"
  n=${#list[@]}
  for ((i = 0; i < n; i++)); do out+=("${list[$(((i + $2) % n))]}"); done
  (IFS=,; echo "${out[*]}")
}
