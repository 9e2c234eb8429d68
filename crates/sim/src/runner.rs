//! Runs seeds (in parallel), checks each history, and summarises.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ostrakon_check::{
    check, check_timestamps, simplify_unknowns, CheckResult, KeyedRegisterModel, Outcome,
};

use crate::scenario::{Bug, TxnProtocol};
use crate::simulation::Simulation;

/// Time the linearizability checker may spend on one seed's history before answering
/// Unknown.
pub const CHECK_BUDGET: Duration = Duration::from_secs(10);

/// What one seed found.
#[derive(Clone, Debug)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Client operations invoked.
    pub ops: usize,
    /// Operations that completed Ok / Failed / with unknown outcome.
    pub ok: usize,
    /// See `ok`.
    pub failed: usize,
    /// See `ok`.
    pub unknown: usize,
    /// The first broken property, if any (an invariant, a panic, or linearizability).
    pub violation: Option<String>,
    /// The linearizability checker ran out of budget.
    pub check_unknown: bool,
    /// Operations left for the checker after pruning.
    pub checked_ops: usize,
    /// Timestamp requests the oracle answered (all checked).
    pub timestamps_granted: usize,
    /// Reads of every register at one revision that completed (all checked).
    pub scans: usize,
    /// Revisions sent to watchers of every register (all checked).
    pub watch_revisions: usize,
    /// Transfers between accounts acknowledged committed.
    pub transfers: u64,
    /// Those that touched two ranges (two-phase commit across ranges).
    pub transfers_across_ranges: u64,
    /// Transaction records forgotten below horizons.
    pub records_forgotten: u64,
    /// Of those, committed ones pushers finished.
    pub committed_forgotten: u64,
    /// Merges applied.
    pub merges: u64,
    /// Merges given up (fenced off and thawed).
    pub merges_given_up: u64,
    /// Merges a replica held until its right replica reached the freeze.
    pub merges_held: u64,
    /// Whether it ran the node's transaction variant (whole-range locks, revisions
    /// fetched by range leaders).
    pub whole_range: bool,
    /// Writes and prepares whose revision a range's leader fetched.
    pub writes_fetched: u64,
    /// Reads at a revision held for a fetch in flight.
    pub barriers_held: u64,
    /// Reads at a revision answered while a fetch was in flight (a planted bug only).
    pub barriers_skipped: u64,
    /// Fetches asked again after a refusal, and writes fetched again for a later term.
    pub fetches_retried: u64,
    /// See `fetches_retried`.
    pub fetches_again: u64,
    /// Asks the oracle's leader took with the asking member's word, and asks whose word
    /// was of another term than the leader's.
    pub asks_confirmed_by_word: u64,
    /// See `asks_confirmed_by_word`.
    pub words_of_other_terms: u64,
    /// Register reads a follower sent on to its range's leader with its word, and those
    /// the leader took the word for.
    pub forwarded_reads: u64,
    /// See `forwarded_reads`.
    pub reads_confirmed_by_word: u64,
    /// Fresh reads whose range leader took the word the oracle's grant carried for its
    /// heartbeat round.
    pub fresh_reads_confirmed_by_grant: u64,
    /// Prepares a range's leader proposed behind the resolve or release of the locks
    /// in their way.
    pub prepares_behind_unlocks: u64,
    /// Audits (read-only transactions over every account) whose sums were checked.
    pub audits_checked: u64,
    /// Committed transfers with a guard account (a part that writes nothing).
    pub guarded_transfers: u64,
    /// Pushes a refusing member's leader hint sent on.
    pub pushes_sent_on: u64,
    /// Committed records nobody finished that a primary's leader finished once old.
    pub records_finished_late: u64,
    /// Fresh reads (the node's variant) whose revisions were checked.
    pub fresh_reads: u64,
    /// Wall-clock time of the simulation and of the check.
    pub simulate_time: Duration,
    /// See `simulate_time`.
    pub check_time: Duration,
}

/// Runs one seed to the end, turning panics inside the core into violations.
pub fn run_seed(seed: u64, bug: Option<Bug>, keep_trace: bool) -> (SeedReport, Vec<String>) {
    run_seed_with(seed, bug, None, keep_trace)
}

/// `run_seed` with the transaction protocol pinned (drawn from the seed if None).
pub fn run_seed_with(
    seed: u64,
    bug: Option<Bug>,
    protocol: Option<TxnProtocol>,
    keep_trace: bool,
) -> (SeedReport, Vec<String>) {
    let began = Instant::now();
    let mut sim = Simulation::with_protocol(seed, bug, keep_trace, protocol);
    let outcome = catch_unwind(AssertUnwindSafe(|| sim.run()));
    let simulate_time = began.elapsed();
    let mut violation = sim.violation.as_ref().map(|v| v.0.clone());
    if let Err(panic) = outcome {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        violation.get_or_insert(format!("panic: {message}"));
    }
    sim.history.finish_pending_as_unknown();
    sim.timestamps.finish_pending_as_unknown();
    let timestamps_granted = sim
        .timestamps
        .ops()
        .iter()
        .filter(|op| matches!(op.outcome, Outcome::Ok(_)))
        .count();
    if violation.is_none() {
        if let Err(broken) = check_timestamps(sim.timestamps.ops()) {
            violation = Some(broken);
        }
    }
    let counts = sim.history.counts();
    let mut check_unknown = false;
    let mut checked_ops = 0;
    let began = Instant::now();
    if violation.is_none() {
        let ops = simplify_unknowns(sim.history.ops());
        checked_ops = ops.len();
        match check(&KeyedRegisterModel, &ops, CHECK_BUDGET) {
            CheckResult::Linearizable => {}
            CheckResult::Unknown => check_unknown = true,
            CheckResult::NotLinearizable(explanation) => {
                violation = Some(format!("history is not linearizable:\n{explanation}"));
            }
        }
    }
    let report = SeedReport {
        seed,
        ops: sim.history.len(),
        ok: counts.ok,
        failed: counts.failed,
        unknown: counts.unknown,
        violation,
        check_unknown,
        checked_ops,
        timestamps_granted,
        scans: sim.scans.len(),
        watch_revisions: sim.watch_revisions_sent(),
        transfers: sim.transfers_committed,
        transfers_across_ranges: sim.transfers_across_ranges,
        records_forgotten: sim.records_forgotten,
        committed_forgotten: sim.committed_forgotten,
        merges: sim.merges,
        merges_given_up: sim.merges_given_up,
        merges_held: sim.merges_held,
        whole_range: sim.scenario.txn_protocol == TxnProtocol::WholeRange,
        writes_fetched: sim.writes_fetched,
        barriers_held: sim.barriers_held,
        barriers_skipped: sim.barriers_skipped,
        fetches_retried: sim.fetches_retried,
        fetches_again: sim.fetches_again,
        asks_confirmed_by_word: sim.asks_confirmed_by_word,
        words_of_other_terms: sim.words_of_other_terms,
        forwarded_reads: sim.forwarded_reads,
        reads_confirmed_by_word: sim.reads_confirmed_by_word,
        fresh_reads_confirmed_by_grant: sim.fresh_reads_confirmed_by_grant,
        prepares_behind_unlocks: sim.prepares_behind_unlocks,
        audits_checked: sim.audits_checked,
        guarded_transfers: sim.guarded_transfers,
        pushes_sent_on: sim.pushes_sent_on,
        records_finished_late: sim.records_finished_late,
        fresh_reads: sim.fresh_reads_checked,
        simulate_time,
        check_time: began.elapsed(),
    };
    (report, sim.trace_lines())
}

/// Totals over many seeds.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds with a violation.
    pub violations: u64,
    /// Seeds whose linearizability check ran out of budget.
    pub unknown: u64,
    /// Client operations over all seeds.
    pub ops: u64,
    /// Timestamp requests answered over all seeds.
    pub timestamps_granted: u64,
    /// Reads at one revision completed over all seeds.
    pub scans: u64,
    /// Revisions sent to watchers over all seeds.
    pub watch_revisions: u64,
    /// Transfers committed over all seeds.
    pub transfers: u64,
    /// Those that touched two ranges.
    pub transfers_across_ranges: u64,
    /// Transaction records forgotten over all seeds.
    pub records_forgotten: u64,
    /// Of those, committed ones pushers finished.
    pub committed_forgotten: u64,
    /// Merges applied over all seeds.
    pub merges: u64,
    /// Merges given up over all seeds.
    pub merges_given_up: u64,
    /// Merges held over all seeds.
    pub merges_held: u64,
    /// Seeds that ran the node's transaction variant.
    pub whole_range_seeds: u64,
    /// Transfers across ranges committed in those seeds.
    pub whole_range_transfers_across: u64,
    /// Writes and prepares whose revision a range's leader fetched, over all seeds.
    pub writes_fetched: u64,
    /// Reads at a revision held for a fetch in flight, over all seeds.
    pub barriers_held: u64,
    /// Reads at a revision answered while a fetch was in flight (a planted bug only).
    pub barriers_skipped: u64,
    /// Fetches asked again after a refusal, and writes fetched again for a later term.
    pub fetches_retried: u64,
    /// See `fetches_retried`.
    pub fetches_again: u64,
    /// Asks the oracle's leader took with the asking member's word, and asks whose word
    /// was of another term than the leader's.
    pub asks_confirmed_by_word: u64,
    /// See `asks_confirmed_by_word`.
    pub words_of_other_terms: u64,
    /// Register reads a follower sent on to its range's leader with its word, and those
    /// the leader took the word for.
    pub forwarded_reads: u64,
    /// See `forwarded_reads`.
    pub reads_confirmed_by_word: u64,
    /// Fresh reads whose range leader took the word the oracle's grant carried for its
    /// heartbeat round.
    pub fresh_reads_confirmed_by_grant: u64,
    /// Prepares a range's leader proposed behind the resolve or release of the locks
    /// in their way.
    pub prepares_behind_unlocks: u64,
    /// Audits (read-only transactions over every account) whose sums were checked.
    pub audits_checked: u64,
    /// Committed transfers with a guard account (a part that writes nothing).
    pub guarded_transfers: u64,
    /// Pushes a refusing member's leader hint sent on.
    pub pushes_sent_on: u64,
    /// Committed records nobody finished that a primary's leader finished once old.
    pub records_finished_late: u64,
    /// Fresh reads checked, over all seeds.
    pub fresh_reads: u64,
    /// Lowest failing seed.
    pub first_failing_seed: Option<u64>,
    /// The report of that seed.
    pub first_failure: Option<SeedReport>,
    /// Wall-clock time.
    pub elapsed: Duration,
}

impl Summary {
    /// The summary as one JSON object.
    pub fn to_json(&self, bug: Option<&str>) -> String {
        let seed = self
            .first_failing_seed
            .map_or("null".to_string(), |s| s.to_string());
        let bug = bug.map_or("null".to_string(), |b| format!("\"{b}\""));
        format!(
            "{{\"seeds\":{},\"violations\":{},\"unknown\":{},\"ops\":{},\"first_failing_seed\":{},\"bug\":{},\"elapsed_ms\":{}}}",
            self.seeds,
            self.violations,
            self.unknown,
            self.ops,
            seed,
            bug,
            self.elapsed.as_millis()
        )
    }
}

/// Runs seeds `[start, start + count)` on `threads` threads. With `stop_on_failure`,
/// stops handing out seeds once one fails (seeds already running finish).
pub fn run_seeds(
    start: u64,
    count: u64,
    bug: Option<Bug>,
    threads: usize,
    stop_on_failure: bool,
    verbose: bool,
) -> Summary {
    run_seeds_with(start, count, bug, None, threads, stop_on_failure, verbose)
}

/// `run_seeds` with the transaction protocol pinned (drawn from each seed if None).
pub fn run_seeds_with(
    start: u64,
    count: u64,
    bug: Option<Bug>,
    protocol: Option<TxnProtocol>,
    threads: usize,
    stop_on_failure: bool,
    verbose: bool,
) -> Summary {
    let began = Instant::now();
    let next = Arc::new(AtomicU64::new(start));
    let summary = Arc::new(Mutex::new(Summary::default()));
    let end = start + count;
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            let next = Arc::clone(&next);
            let summary = Arc::clone(&summary);
            scope.spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let (report, _) = run_seed_with(seed, bug, protocol, false);
                if verbose {
                    eprintln!(
                        "seed {seed}: {} ops ({} ok, {} failed, {} unknown), {} checked, sim {:?}, check {:?}{}{}",
                        report.ops,
                        report.ok,
                        report.failed,
                        report.unknown,
                        report.checked_ops,
                        report.simulate_time,
                        report.check_time,
                        if report.check_unknown { ", CHECK UNKNOWN" } else { "" },
                        if report.violation.is_some() { ", VIOLATION" } else { "" },
                    );
                }
                let mut summary = summary.lock().expect("summary lock");
                summary.seeds += 1;
                summary.ops += report.ops as u64;
                summary.timestamps_granted += report.timestamps_granted as u64;
                summary.scans += report.scans as u64;
                summary.watch_revisions += report.watch_revisions as u64;
                summary.transfers += report.transfers;
                summary.transfers_across_ranges += report.transfers_across_ranges;
                summary.records_forgotten += report.records_forgotten;
                summary.committed_forgotten += report.committed_forgotten;
                summary.merges += report.merges;
                summary.merges_given_up += report.merges_given_up;
                summary.merges_held += report.merges_held;
                if report.whole_range {
                    summary.whole_range_seeds += 1;
                    summary.whole_range_transfers_across += report.transfers_across_ranges;
                }
                summary.writes_fetched += report.writes_fetched;
                summary.barriers_held += report.barriers_held;
                summary.barriers_skipped += report.barriers_skipped;
                summary.fetches_retried += report.fetches_retried;
                summary.fetches_again += report.fetches_again;
                summary.asks_confirmed_by_word += report.asks_confirmed_by_word;
                summary.words_of_other_terms += report.words_of_other_terms;
                summary.forwarded_reads += report.forwarded_reads;
                summary.reads_confirmed_by_word += report.reads_confirmed_by_word;
                summary.fresh_reads_confirmed_by_grant += report.fresh_reads_confirmed_by_grant;
                summary.prepares_behind_unlocks += report.prepares_behind_unlocks;
                summary.audits_checked += report.audits_checked;
                summary.guarded_transfers += report.guarded_transfers;
                summary.pushes_sent_on += report.pushes_sent_on;
                summary.records_finished_late += report.records_finished_late;
                summary.fresh_reads += report.fresh_reads;
                summary.unknown += report.check_unknown as u64;
                if report.violation.is_some() {
                    summary.violations += 1;
                    if summary.first_failing_seed.is_none_or(|s| seed < s) {
                        summary.first_failing_seed = Some(seed);
                        summary.first_failure = Some(report);
                    }
                    if stop_on_failure {
                        next.store(end, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let mut summary = Arc::try_unwrap(summary)
        .expect("threads joined")
        .into_inner()
        .expect("lock");
    summary.elapsed = began.elapsed();
    summary
}
