//! `ostrakon-sim`: run many seeds of the deterministic simulator, or replay one.

use std::process::ExitCode;

use clap::Parser;
use ostrakon_raft::PlantedBug;
use ostrakon_ranges::{OracleBug, RangeBug};
use ostrakon_sim::runner::{run_seed_with, run_seeds_with};
use ostrakon_sim::scenario::{Bug, NodeBug, TxnProtocol};

/// Runs the deterministic raft simulator over a range of seeds.
#[derive(Parser, Debug)]
#[command(name = "ostrakon-sim", version)]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start_seed: u64,
    /// Plant a protocol bug the checkers must catch: ack-before-persist,
    /// read-without-read-index, commit-previous-term, vote-not-persisted,
    /// no-truncate-on-conflict, quiesced-lease-kept, node-down-ignored (raft);
    /// oracle-beyond-bound (the timestamp oracle); serve-moved-keys (splits);
    /// move-leaders-one-apart (leader spreading); read-leaves-floor,
    /// new-leader-skips-floor (reads at a revision); read-ignores-pending-lock
    /// (transactions across ranges); watch-releases-early (watches across ranges);
    /// merge-skips-freeze-wait (merges), horizon-forgets-only (transaction records);
    /// txn-takes-lowest-prepare, barrier-skips-fetch-in-flight,
    /// fresh-read-takes-fetch-in-flight (the node's transaction variant);
    /// barrier-read-before-apply (reads a follower sends its range's leader).
    #[arg(long)]
    bug: Option<String>,
    /// Run every seed's transactions under one protocol: key-locks or whole-range (the
    /// node's). By default each seed draws one.
    #[arg(long)]
    protocol: Option<String>,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    json: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Keep running after the first failing seed.
    #[arg(long)]
    keep_going: bool,
    /// Print one line per seed (on stderr).
    #[arg(long)]
    verbose: bool,
    /// Print the trace of the first seed even if it passes (to read what a seed does).
    #[arg(long)]
    trace: bool,
}

fn parse_bug(name: &str) -> Result<Bug, String> {
    Ok(match name {
        "ack-before-persist" => PlantedBug::AckBeforePersist.into(),
        "read-without-read-index" => PlantedBug::ReadWithoutReadIndex.into(),
        "commit-previous-term" => PlantedBug::CommitPreviousTerm.into(),
        "vote-not-persisted" => PlantedBug::VoteNotPersisted.into(),
        "no-truncate-on-conflict" => PlantedBug::NoTruncateOnConflict.into(),
        "quiesced-lease-kept" => PlantedBug::QuiescedLeaseKept.into(),
        "node-down-ignored" => PlantedBug::NodeDownIgnored.into(),
        "confirmation-ignores-term" => PlantedBug::ConfirmationIgnoresTerm.into(),
        "oracle-beyond-bound" => OracleBug::HandOutBeyondBound.into(),
        "serve-moved-keys" => RangeBug::ServeMovedKeys.into(),
        "move-leaders-one-apart" => RangeBug::MoveLeadersOneApart.into(),
        "move-leaders-hotter-than-gap" => RangeBug::MoveLeadersHotterThanGap.into(),
        "read-leaves-floor" => RangeBug::ReadLeavesFloor.into(),
        "new-leader-skips-floor" => RangeBug::NewLeaderSkipsFloor.into(),
        "read-ignores-pending-lock" => RangeBug::ReadIgnoresPendingLock.into(),
        "watch-releases-early" => RangeBug::WatchReleasesEarly.into(),
        "merge-skips-freeze-wait" => RangeBug::MergeSkipsFreezeWait.into(),
        "horizon-forgets-only" => RangeBug::HorizonForgetsOnly.into(),
        "txn-takes-lowest-prepare" => RangeBug::TxnTakesLowestPrepare.into(),
        "barrier-skips-fetch-in-flight" => RangeBug::BarrierSkipsFetchInFlight.into(),
        "fresh-read-takes-fetch-in-flight" => RangeBug::FreshReadTakesFetchInFlight.into(),
        "barrier-read-before-apply" => NodeBug::BarrierReadBeforeApply.into(),
        other => {
            return Err(format!(
                "unknown bug '{other}'; expected one of ack-before-persist, \
                 read-without-read-index, commit-previous-term, vote-not-persisted, \
                 no-truncate-on-conflict, quiesced-lease-kept, node-down-ignored, \
                 confirmation-ignores-term, \
                 oracle-beyond-bound, serve-moved-keys, move-leaders-one-apart, \
                 move-leaders-hotter-than-gap, \
                 read-leaves-floor, new-leader-skips-floor, read-ignores-pending-lock, \
                 watch-releases-early, merge-skips-freeze-wait, horizon-forgets-only, \
                 txn-takes-lowest-prepare, barrier-skips-fetch-in-flight, \
                 fresh-read-takes-fetch-in-flight, barrier-read-before-apply"
            ))
        }
    })
}

fn parse_protocol(name: &str) -> Result<TxnProtocol, String> {
    match name {
        "key-locks" => Ok(TxnProtocol::KeyLocks),
        "whole-range" => Ok(TxnProtocol::WholeRange),
        other => Err(format!(
            "unknown protocol '{other}'; expected key-locks or whole-range"
        )),
    }
}

fn protocol_name(protocol: TxnProtocol) -> &'static str {
    match protocol {
        TxnProtocol::KeyLocks => "key-locks",
        TxnProtocol::WholeRange => "whole-range",
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let protocol = match args.protocol.as_deref().map(parse_protocol).transpose() {
        Ok(protocol) => protocol,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let bug = match args.bug.as_deref().map(parse_bug).transpose() {
        Ok(bug) => bug,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if let (Some(bug), Some(protocol)) = (bug, protocol) {
        if bug.forced_protocol() != protocol {
            eprintln!(
                "error: --protocol {} contradicts --bug {}, which runs only under {}",
                protocol_name(protocol),
                args.bug.as_deref().unwrap_or_default(),
                protocol_name(bug.forced_protocol())
            );
            return ExitCode::from(2);
        }
    }
    // Panics inside a seed are caught and reported as violations with their message;
    // the default hook would print each one as well (kept with RUST_BACKTRACE set, to
    // find where a seed panics).
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let summary = run_seeds_with(
        args.start_seed,
        args.seeds,
        bug,
        protocol,
        threads,
        !args.keep_going,
        args.verbose,
    );
    if args.trace && summary.first_failing_seed != Some(args.start_seed) {
        let (_, trace) = run_seed_with(args.start_seed, bug, protocol, true);
        for line in &trace {
            println!("{line}");
        }
    }
    if let Some(seed) = summary.first_failing_seed {
        // Replay the failing seed with a trace: the same seed reproduces the same run.
        let (report, trace) = run_seed_with(seed, bug, protocol, true);
        println!("--- trace of seed {seed} (last {} lines) ---", trace.len());
        for line in &trace {
            println!("{line}");
        }
        println!("--- seed {seed} failed ---");
        println!(
            "{}",
            report
                .violation
                .as_deref()
                .unwrap_or("(no violation on replay: nondeterminism!)")
        );
        let mut bug_flag = args
            .bug
            .as_deref()
            .map_or(String::new(), |b| format!(" --bug {b}"));
        if let Some(protocol) = args.protocol.as_deref() {
            bug_flag.push_str(&format!(" --protocol {protocol}"));
        }
        println!("replay: cargo run --release -p ostrakon-sim -- --seeds 1 --start-seed {seed}{bug_flag}");
    }
    println!(
        "{} seeds, {} violations, {} unknown, {} ops, {} timestamp requests answered, {} \
         reads at one revision, {} revisions sent to watchers, {} transfers ({} across \
         ranges, {} records forgotten, {} of them committed, {} pushes sent on to a named leader, {} old records finished by their leader) and {} merges ({} given up, {} held by a replica); \
         {} seeds ran the node's transaction variant ({} transfers across ranges, {} revisions fetched by range \
         leaders, {} fetches asked again, {} writes fetched again, {} oracle asks taken on the asker's word, {} words of another term, {} reads at a revision sent on by a follower, {} reads taken on a follower's word, {} prepares behind an unlock, {} audits checked, {} transfers with a part writing nothing, {} reads held for a fetch, {} answered past one, {} fresh reads checked, {} of them taken on the oracle's word) in {:.1} s",
        summary.seeds,
        summary.violations,
        summary.unknown,
        summary.ops,
        summary.timestamps_granted,
        summary.scans,
        summary.watch_revisions,
        summary.transfers,
        summary.transfers_across_ranges,
        summary.records_forgotten,
        summary.committed_forgotten,
        summary.pushes_sent_on,
        summary.records_finished_late,
        summary.merges,
        summary.merges_given_up,
        summary.merges_held,
        summary.whole_range_seeds,
        summary.whole_range_transfers_across,
        summary.writes_fetched,
        summary.fetches_retried,
        summary.fetches_again,
        summary.asks_confirmed_by_word,
        summary.words_of_other_terms,
        summary.forwarded_reads,
        summary.reads_confirmed_by_word,
        summary.prepares_behind_unlocks,
        summary.audits_checked,
        summary.guarded_transfers,
        summary.barriers_held,
        summary.barriers_skipped,
        summary.fresh_reads,
        summary.fresh_reads_confirmed_by_grant,
        summary.elapsed.as_secs_f64()
    );
    if args.json {
        println!("{}", summary.to_json(args.bug.as_deref()));
    }
    if summary.violations > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
