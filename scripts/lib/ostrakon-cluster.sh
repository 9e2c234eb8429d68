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
