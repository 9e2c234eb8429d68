# Sourced by the measuring scripts: starts a 3-member ostrakon cluster on loopback.
#   start_ostrakon_cluster BINARY DIR   # sets ostrakon_pids; members log to DIR/o<i>.log
# Client ports 2379, 2479, 2579; peer ports 2380, 2480, 2580. Returns once member 1 is
# healthy (or after 20 s).
start_ostrakon_cluster() {
  local bin=$1 dir=$2 i c p
  local cluster="o1=http://127.0.0.1:2380,o2=http://127.0.0.1:2480,o3=http://127.0.0.1:2580"
  ostrakon_pids=()
  for i in 1 2 3; do
    c=$((2279 + 100 * i)); p=$((2280 + 100 * i))
    "$bin" server --name o$i --data-dir "$dir/o$i" \
      --listen-client-urls http://127.0.0.1:$c --advertise-client-urls http://127.0.0.1:$c \
      --listen-peer-urls http://127.0.0.1:$p --initial-advertise-peer-urls http://127.0.0.1:$p \
      --initial-cluster $cluster --log-level warn 2>"$dir/o$i.log" &
    ostrakon_pids+=($!)
  done
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:2379/health >/dev/null && break; sleep 0.2; done
}
