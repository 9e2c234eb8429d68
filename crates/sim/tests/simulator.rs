//! The simulator itself: seeds replay exactly, clean seeds pass, planted bugs are caught.

use ostrakon_raft::PlantedBug;
use ostrakon_ranges::{OracleBug, RangeBug};
use ostrakon_sim::runner::{run_seed, run_seed_with, run_seeds, run_seeds_with};
use ostrakon_sim::scenario::{Bug, TxnProtocol};
use ostrakon_sim::simulation::Simulation;

fn fingerprint(seed: u64, bug: Option<Bug>) -> String {
    let mut sim = Simulation::new(seed, bug, true);
    sim.run();
    format!(
        "{:?}\n{}",
        sim.history().ops(),
        sim.trace_lines().join("\n")
    )
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 11, 56] {
        assert_eq!(
            fingerprint(seed, None),
            fingerprint(seed, None),
            "seed {seed} diverged on replay"
        );
    }
    assert_ne!(
        fingerprint(3, None),
        fingerprint(4, None),
        "different seeds differ"
    );
}

#[test]
fn clean_seeds_pass_with_real_work_done() {
    // The key-lock variant (the node's is checked apart: its own figures, below).
    let summary = run_seeds_with(0, 40, None, Some(TxnProtocol::KeyLocks), 2, false, false);
    assert_eq!(
        summary.violations, 0,
        "first failure: {:?}",
        summary.first_failure
    );
    // A third of the seeds pause up to 300 ms between operations (so groups quiesce).
    // 4,000 to 5,000 ops in these seeds; how many moves with every change to timing (a
    // leadership moved after a read, a faster failover), so the floor only says the
    // clients did real work.
    assert!(
        summary.ops > 3_500,
        "the clients did work: {} ops",
        summary.ops
    );
    // Two seeds in three have clients of the timestamp oracle.
    assert!(
        summary.timestamps_granted > 1_000,
        "the oracle handed out timestamps: {} requests answered",
        summary.timestamps_granted
    );
    // Three seeds in four have accounts, and bank clients moving amounts between them
    // (50 to 150 across ranges in these seeds, depending on how often leaderships move
    // and how long the locks of coordinators that stop after their commit stand).
    assert!(
        summary.transfers_across_ranges > 40,
        "transfers across ranges committed (and were checked): {} of {}",
        summary.transfers_across_ranges,
        summary.transfers
    );
    // Aborts by pushers and by coordinators leave records, which horizons forget (457
    // in these seeds).
    assert!(
        summary.records_forgotten > 100,
        "aborted transaction records were forgotten below horizons: {}",
        summary.records_forgotten
    );
    // Two seeds in three have clients reading every register at one revision.
    assert!(
        summary.scans > 500,
        "reads at one revision completed (and were checked): {}",
        summary.scans
    );
    // Three seeds in four have watchers of every register, merged across ranges (736
    // revisions in these seeds).
    assert!(
        summary.watch_revisions > 400,
        "revisions sent to watchers (and checked): {}",
        summary.watch_revisions
    );
}

#[test]
fn each_seed_checks_its_history_for_linearizability() {
    let (report, _) = run_seed(7, None, false);
    assert!(report.checked_ops > 0, "the history went to the checker");
    assert!(report.ok > 0);
    assert!(report.violation.is_none(), "{:?}", report.violation);
}

#[test]
fn a_bank_coordinator_whose_commit_failed_asks_how_its_transaction_ended() {
    // Seed 682: a transfer's commit was delivered twice (a retransmission); the first
    // copy was proposed, the second refused (a leadership transfer had begun), and the
    // refusal reached the coordinator first. It took the refusal for a definite abort,
    // while the first copy committed. It now asks the primary with an abort, as the
    // node's coordinator does, which answers the committed record.
    let (report, _) = run_seed_with(682, None, Some(TxnProtocol::KeyLocks), false);
    assert!(report.violation.is_none(), "{:?}", report.violation);
}

#[test]
fn a_read_at_a_revision_goes_behind_granted_writes_still_in_the_inbox() {
    // Seed 1435: a read at a revision waited in its replica's inbox (a Ready was being
    // persisted) while the fetch in flight was answered; the granted write queued behind
    // it. Handled first, the read found no fetch in flight and was served without the
    // write, whose revision was below the read's. It now goes behind granted writes.
    let (report, _) = run_seed_with(1435, None, Some(TxnProtocol::WholeRange), false);
    assert!(report.violation.is_none(), "{:?}", report.violation);
}

#[test]
fn the_nodes_transaction_variant_passes_clean_seeds_with_real_work_done() {
    // Whole-range locks, revisions fetched by range leaders, reads behind the fetch in
    // flight: the node's own rules (`ostrakon_ranges::frozen_txn`, `read_wait`).
    let summary = run_seeds_with(0, 40, None, Some(TxnProtocol::WholeRange), 2, false, false);
    assert_eq!(
        summary.violations, 0,
        "first failure: {:?}",
        summary.first_failure
    );
    assert_eq!(summary.whole_range_seeds, 40);
    // About 1,500 in these seeds.
    assert!(
        summary.writes_fetched > 800,
        "range leaders fetched revisions: {}",
        summary.writes_fetched
    );
    // About 340: without reads held, the barrier is not exercised.
    assert!(
        summary.barriers_held > 150,
        "reads at a revision held for a fetch in flight: {}",
        summary.barriers_held
    );
    // Fetches refused by a member that does not lead the meta range are asked again
    // within their time, as the node's are (146 in these seeds), so some span
    // an oracle failover or a leadership change of their range.
    assert!(
        summary.fetches_retried > 60,
        "fetches asked again: {}",
        summary.fetches_retried
    );
    // The barrier answers no read while a fetch is in flight (only the planted
    // `barrier-skips-fetch-in-flight` does: `planted_barrier_bug_is_caught`).
    assert_eq!(summary.barriers_skipped, 0);
    // About 600: linearizable reads at their ranges' leaders, each taking its revision
    // from the next fetch, checked against the writes acknowledged before them.
    assert!(
        summary.fresh_reads > 400,
        "fresh reads checked: {}",
        summary.fresh_reads
    );
    // Read-only transactions over every account's range (the node's read-only path:
    // releases that raise their ranges to the revision read at), each checked for the
    // accounts' total (7 in these seeds).
    assert!(
        summary.audits_checked > 3,
        "audits checked: {}",
        summary.audits_checked
    );
    // 16 in these seeds: fewer than under key locks, since one transaction holds a
    // whole range and a second one aborts (the node's coordinator waits instead).
    assert!(
        summary.whole_range_transfers_across > 8,
        "transfers across ranges committed (and were checked): {} of {}",
        summary.whole_range_transfers_across,
        summary.transfers
    );
    assert!(
        summary.scans > 300,
        "reads at one revision completed (and were checked): {}",
        summary.scans
    );
    assert!(
        summary.watch_revisions > 300,
        "revisions sent to watchers (and checked): {}",
        summary.watch_revisions
    );
}

#[test]
fn planted_no_truncate_bug_is_caught() {
    let summary = run_seeds(
        0,
        50,
        Some(PlantedBug::NoTruncateOnConflict.into()),
        2,
        true,
        false,
    );
    assert!(
        summary.violations > 0,
        "the checkers missed a log that keeps conflicting entries"
    );
}

#[test]
fn planted_ack_before_persist_bug_is_caught() {
    let summary = run_seeds(
        0,
        50,
        Some(PlantedBug::AckBeforePersist.into()),
        2,
        true,
        false,
    );
    let failure = summary.first_failure.expect("caught");
    assert!(
        failure.violation.unwrap().contains("durable only on"),
        "caught by the durability check"
    );
}

#[test]
fn planted_quiescence_bugs_are_caught() {
    let summary = run_seeds(
        0,
        50,
        Some(PlantedBug::NodeDownIgnored.into()),
        2,
        true,
        false,
    );
    let failure = summary.first_failure.expect("caught");
    assert!(
        failure.violation.unwrap().contains("no new leader"),
        "caught by the quiesced failover check"
    );
    let summary = run_seeds(
        0,
        100,
        Some(PlantedBug::QuiescedLeaseKept.into()),
        2,
        true,
        false,
    );
    let failure = summary.first_failure.expect("caught");
    assert!(
        failure.violation.unwrap().contains("stale read"),
        "caught by the read floor"
    );
}

#[test]
fn planted_oracle_bug_is_caught() {
    let summary = run_seeds(
        0,
        200,
        Some(OracleBug::HandOutBeyondBound.into()),
        2,
        true,
        false,
    );
    let violation = summary.first_failure.expect("caught").violation.unwrap();
    // Timestamps out of order show in the oracle's own answers, or in a read at one
    // revision that missed a write given a timestamp below it after the crash.
    assert!(
        violation.contains("timestamps")
            || violation.contains("a read of every register at revision")
            || violation.contains("watcher"),
        "caught by the timestamp check, a read at one revision or a watcher: {violation}"
    );
}

#[test]
fn planted_leader_spread_bug_is_caught() {
    let summary = run_seeds(
        0,
        200,
        Some(RangeBug::MoveLeadersOneApart.into()),
        2,
        true,
        false,
    );
    let failure = summary.first_failure.expect("caught");
    assert!(
        failure
            .violation
            .unwrap()
            .contains("did not settle spread over the nodes"),
        "caught by the spread check: leaderships moved back and forth"
    );
}

/// The first violation among seeds 0..200 with `bug` planted that one of `checks`
/// names. Seeds that fail otherwise are skipped: the liveness checks (quiescence,
/// progress after healing) fail on about one seed in 2,500 of clean runs too (replicas
/// a merge or a membership change left behind; not fixed yet), and a planted bug
/// changes every seed's course.
fn first_violation_among(bug: Bug, checks: &[&str]) -> String {
    let mut seen = Vec::new();
    let mut start = 0;
    while start < 200 {
        let summary = run_seeds(start, 200 - start, Some(bug), 2, true, false);
        let Some(seed) = summary.first_failing_seed else {
            break;
        };
        let violation = summary.first_failure.unwrap().violation.unwrap();
        if checks.iter().any(|check| violation.contains(check)) {
            return violation;
        }
        seen.push(format!("seed {seed}: {violation}"));
        start = seed + 1;
    }
    panic!("{bug:?} not caught by {checks:?} within 200 seeds; other failures: {seen:?}");
}

#[test]
fn planted_split_bug_is_caught() {
    // The left range served a key that had moved: a register's history, a read at one
    // revision or a watcher (a version the right range never had) shows it.
    first_violation_among(
        RangeBug::ServeMovedKeys.into(),
        &[
            "not linearizable",
            "a read of every register at revision",
            "watcher",
        ],
    );
}

#[test]
fn planted_read_floor_bugs_are_caught() {
    for bug in [RangeBug::ReadLeavesFloor, RangeBug::NewLeaderSkipsFloor] {
        let summary = run_seeds(0, 200, Some(bug.into()), 2, true, false);
        let failure = summary.first_failure.expect("caught");
        let violation = failure.violation.unwrap();
        // A write landing below a revision already served shows in a read at that
        // revision, or as a gap in a watcher's revisions (sent up to the same point).
        assert!(
            violation.contains("a read of every register at revision")
                || violation.contains("watcher"),
            "{bug:?} caught by the check of reads at one revision or of watchers: {violation}"
        );
    }
}

#[test]
fn planted_watch_merge_bug_is_caught() {
    let summary = run_seeds(
        0,
        200,
        Some(RangeBug::WatchReleasesEarly.into()),
        2,
        true,
        false,
    );
    let violation = summary.first_failure.expect("caught").violation.unwrap();
    assert!(
        violation.contains("watcher"),
        "caught by the watch check: a revision skipped or sent in part ({violation})"
    );
}

#[test]
fn planted_pending_lock_bug_is_caught() {
    let summary = run_seeds(
        0,
        200,
        Some(RangeBug::ReadIgnoresPendingLock.into()),
        2,
        true,
        false,
    );
    let violation = summary.first_failure.expect("caught").violation.unwrap();
    assert!(
        violation.contains("a read of every register at revision"),
        "caught by the check of reads at one revision: a read saw part of a transfer \
         ({violation})"
    );
}

#[test]
fn planted_horizon_bug_is_caught() {
    let summary = run_seeds(
        0,
        200,
        Some(RangeBug::HorizonForgetsOnly.into()),
        2,
        true,
        false,
    );
    let violation = summary.first_failure.expect("caught").violation.unwrap();
    // A commit that arrived after its transaction was aborted and the record forgotten
    // was accepted: its coordinator was told it committed, but the parts were released.
    assert!(
        violation.contains("committed"),
        "caught by the bank's checks of committed transactions: {violation}"
    );
}

#[test]
fn planted_txn_revision_bug_is_caught() {
    // A transaction that takes the lowest of its prepares' revisions: a range whose lock
    // is above it takes its part for a late prepare's and drops it, so the accounts'
    // total changes, or a committed transfer's balance is missing from the end state,
    // or an audit (a read-only transaction over every account) sums wrong after it.
    // (No read sees part of it torn: the dropped part is never written, so every read
    // at one revision sees the same partial transfer the end state holds, and only
    // sums or the committed values can show it. In seeds 0-199: 72 by the end sum, 2
    // by an audit, 3 by a value.)
    first_violation_among(
        RangeBug::TxnTakesLowestPrepare.into(),
        &[
            "the accounts hold",
            "which the final versions do not hold",
            "an audit of every account",
        ],
    );
}

#[test]
fn planted_fresh_read_bug_is_caught() {
    // A fresh read that joins the fetch in flight, whose answer was slow to come: a
    // write another leader got a later timestamp for was acknowledged before the read
    // began, above the read's revision.
    first_violation_among(
        RangeBug::FreshReadTakesFetchInFlight.into(),
        &["a fresh read"],
    );
}

#[test]
fn a_push_refused_by_a_member_goes_on_to_the_leader_it_names() {
    // Seed 5254: a prepare whose revision fetch was asked again landed after its
    // transaction's release; the lock's pusher, on a node without a replica of the
    // primary, sent each push to a member picked at random, missed the leader nine
    // times in a row, and the lock was still there when the run ended.
    // Later changes to how seeds are drawn move that path to other seeds: the count of
    // pushes sent on is what shows the rule still runs (24 in these seeds).
    let (report, _) = run_seed_with(5254, None, Some(TxnProtocol::WholeRange), false);
    assert!(report.violation.is_none(), "{:?}", report.violation);
    let summary = run_seeds(0, 80, None, 2, false, false);
    assert_eq!(summary.violations, 0, "{:?}", summary.first_failure);
    assert!(
        summary.pushes_sent_on > 3,
        "pushes sent on to the leader a member named: {}",
        summary.pushes_sent_on
    );
}

#[test]
fn writes_are_fetched_again_for_a_later_term_of_their_leader() {
    // `GrantStep::FetchAgain`: the range's leadership that fetched lost it and won it
    // back before the grant; the write is fetched again in the new term (16 in these
    // seeds; 57 in the 1,036 of the node's variant among seeds 0-1,999).
    let summary = run_seeds_with(0, 300, None, Some(TxnProtocol::WholeRange), 2, false, false);
    assert_eq!(summary.violations, 0, "{:?}", summary.first_failure);
    assert!(
        summary.fetches_again > 0,
        "writes fetched again: {}",
        summary.fetches_again
    );
    // And committed transfers that locked a guard account in a third range, whose part
    // there writes nothing and only raises the range (`frozen_txn::part_raises`): 8
    // here. (This counts the transfers; that the guard's part reached the path is what
    // the bank's code does with every committed transfer's other ranges.)
    assert!(
        summary.guarded_transfers > 0,
        "transfers with a part writing nothing: {}",
        summary.guarded_transfers
    ); // And prepares a range's leader proposed behind the resolve or release of the lock
       // in their way, already in its log (`Replica::unlocking`, as the node's leader):
       // where they apply, the locks then decide, so a checked run with some is what shows
       // that this shortcut keeps transfers atomic.
    assert!(
        summary.prepares_behind_unlocks > 0,
        "prepares behind an unlock: {}",
        summary.prepares_behind_unlocks
    );
}

#[test]
fn a_convergence_check_lets_a_leaders_last_entry_reach_every_member() {
    // Seed 1350: a pusher's abort was proposed 46 ms before the check, which compared
    // at once and found a learner one entry behind. Members now get a second.
    let (report, _) = run_seed(1350, None, false);
    assert!(report.violation.is_none(), "{:?}", report.violation);
}

#[test]
fn planted_barrier_bug_is_caught() {
    // A read at a revision served while a fetch that can grant below it is in flight:
    // a write lands at or below a revision already read.
    first_violation_among(
        RangeBug::BarrierSkipsFetchInFlight.into(),
        &["a read of every register at revision", "watcher"],
    );
    // Most reads it answers past a fetch see nothing wrong (a write of the fetch lands
    // below the read's revision in few of them): counted, so that a change that takes
    // the bug's chances away shows here before its catch rate drops.
    let summary = run_seeds(
        0,
        20,
        Some(RangeBug::BarrierSkipsFetchInFlight.into()),
        2,
        false,
        false,
    );
    assert!(
        summary.barriers_skipped > 100,
        "reads answered past a fetch in flight in 20 seeds: {}",
        summary.barriers_skipped
    );
}

#[test]
fn the_simulator_refuses_a_protocol_a_planted_bug_cannot_run_under() {
    // The node's bugs run only under its whole-range variant, every other bug under key
    // locks: pinning the other would let its seeds pass without testing the checkers.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ostrakon-sim"))
        .args([
            "--seeds",
            "1",
            "--bug",
            "txn-takes-lowest-prepare",
            "--protocol",
            "key-locks",
        ])
        .output()
        .expect("the simulator runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--protocol key-locks contradicts --bug txn-takes-lowest-prepare"),
        "{stderr}"
    );
    assert_eq!(
        Bug::from(RangeBug::ServeMovedKeys).forced_protocol(),
        TxnProtocol::KeyLocks
    );
    assert_eq!(
        Bug::from(RangeBug::FreshReadTakesFetchInFlight).forced_protocol(),
        TxnProtocol::WholeRange
    );
}
