#!/usr/bin/env bash
# The project's whole test suite: formatting, lints, unit/scenario/integration tests, and
# the deterministic simulator (clean seeds plus every planted bug, each of which must be
# caught), and integration tests on real 3-process clusters driven by etcdctl 3.4 and 3.5
# (installed by scripts/install-test-tools.sh) and the etcd-client crate.
# The chaos tests (crates/cli/tests/chaos.rs) run every nemesis for 25 s in network
# namespaces, so this must run as root, as CI does.
# Bounded: about 40 minutes on 2 cores (each step prints its time).
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS=${SIM_SEEDS:-1000}
BUG_SEEDS=200
BUGS="ack-before-persist read-without-read-index commit-previous-term vote-not-persisted no-truncate-on-conflict quiesced-lease-kept node-down-ignored oracle-beyond-bound serve-moved-keys move-leaders-one-apart move-leaders-hotter-than-gap read-leaves-floor new-leader-skips-floor read-ignores-pending-lock watch-releases-early merge-skips-freeze-wait horizon-forgets-only txn-takes-lowest-prepare barrier-skips-fetch-in-flight fresh-read-takes-fetch-in-flight confirmation-ignores-term barrier-read-before-apply"

# Each step prints how long the one before it took, so a slow CI run shows where to cut.
suite_start=$SECONDS
step_start=$SECONDS
step() {
  printf '\n(%d s; %d s so far)\n=== %s\n' "$((SECONDS - step_start))" "$((SECONDS - suite_start))" "$*"
  step_start=$SECONDS
}

step "test tools (etcdctl 3.4 and 3.5, iptables, libfaketime, chromium, playwright-core)"
bash scripts/install-test-tools.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "planted-bug build for the chaos harness's self-test (target/planted/ostrakon)"
cargo build -p ostrakon --features planted-bugs
cargo build -p ostrakon-lazyfs
mkdir -p target/planted
cp target/debug/ostrakon target/planted/ostrakon
cp target/debug/ostrakon-lazyfs target/planted/ostrakon-lazyfs

step "cargo test"
# Integration tests start real clusters; one test binary at a time keeps the 2-core
# machine from starving their elections.
timeout 1800 cargo test --workspace -- --test-threads 2

step "the etcd API's tests again on a keyspace that splits eagerly (five ranges from the start, then splits past 2 KiB) and raft logs compacted past 16 KiB"
# docs/RANGES.md: every etcd API test passes on a keyspace in ranges as on one range.
# The two skipped pause a member that leads no data range: here every member leads many.
# --workspace, as above: `-p ostrakon` alone resolves other features (the simulator's
# planted bugs are on in a workspace build) and compiled the whole tree again (5 min).
OSTRAKON_TEST_RANGE_MAX_BYTES=2048 timeout 900 cargo test --workspace \
  --test etcdctl --test kv_api --test watch --test lease --test lock --test election \
  --test auth --test backup --test membership -- --test-threads 2 \
  --skip a_revoke_holds_in_every_range --skip after_an_auth_change_are_refused_on_a_member_behind

step "dashboard in headless Chromium (playwright-core): stop the leader from the page"
timeout 300 node tests/browser/dashboard.test.mjs target/debug/ostrakon

step "simulator: $SIM_SEEDS clean seeds"
cargo build --release -p ostrakon-sim
sim=./target/release/ostrakon-sim
timeout 900 "$sim" --seeds "$SIM_SEEDS" --json | tail -n 3

for bug in $BUGS; do
  step "simulator: planted bug $bug must be caught within $BUG_SEEDS seeds"
  set +e
  out=$(timeout 600 "$sim" --seeds "$BUG_SEEDS" --bug "$bug" --json)
  status=$?
  set -e
  echo "$out" | grep -E '^--- seed|^\{' || true
  if [ "$status" -ne 1 ]; then
    echo "FAIL: planted bug $bug was not caught (exit status $status)"
    exit 1
  fi
done

step "all tests passed"
