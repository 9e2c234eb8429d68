//! Watchers of every register, whose keys fall in several ranges: each is a scanning
//! client whose reads are rounds of a watch (`clients::WatchState`). A round takes a
//! revision R from the oracle, asks each range's leader for its history of the
//! registers from the watcher's next revision (the leader raises its read floor to R
//! and answers once it has applied what its log held, as for a read at R, but does not
//! wait for locks: it reports its lowest), then sends what the range layer's merge
//! releases (`ostrakon_ranges::watch_merge`, the node's own rule). At the end every
//! watcher must have been sent each revision of the registers' final history below its
//! next revision once, whole, in order (`check_watches`).

use std::collections::BTreeMap;

use ostrakon_ranges::watch_merge::{self, RangeHistory, RevisionEvents};
use ostrakon_ranges::RangeDescriptor;

use crate::clients::{RangeWatchAnswer, Scan, WatchEvent};
use crate::invariants::Violation;
use crate::kv::{routing_key, KvState};
use crate::simulation::{trace, Simulation};

/// A range's answer to a watcher's round: its history of the registers in its span
/// from revision `from` on, whole revisions only, cut short once it holds
/// `events_max` events (at least one revision), and its lowest lock.
pub(crate) fn watch_answer(
    kv: &KvState,
    descriptor: &RangeDescriptor,
    from: u64,
    events_max: usize,
) -> RangeWatchAnswer {
    assert!(events_max > 0, "a history holds at least one revision");
    let mut by_revision: BTreeMap<u64, Vec<WatchEvent>> = BTreeMap::new();
    // Versions come in key order, so each revision's events are in key order.
    for (&(key, revision), &value) in &kv.versions {
        if revision >= from && descriptor.contains(&routing_key(key)) {
            by_revision.entry(revision).or_default().push((key, value));
        }
    }
    let current = kv.last_revision;
    let mut history = RangeHistory {
        revisions: Vec::new(),
        covered: current,
        current,
    };
    let mut events_held = 0;
    for (revision, events) in by_revision {
        if events_held >= events_max {
            // Cut short: the next round reads on from the revision after the last here.
            history.covered = history.revisions.last().map_or(current, |r| r.revision);
            break;
        }
        events_held += events.len();
        history.revisions.push(RevisionEvents { revision, events });
    }
    RangeWatchAnswer {
        descriptor: descriptor.clone(),
        history,
        lowest_lock: kv.txns.locks.locks().map(|lock| lock.revision).min(),
    }
}

impl Simulation {
    /// Every range answered a watcher's round at `revision`: sends what the merge
    /// releases.
    pub(crate) fn finish_watch_round(&mut self, index: usize, revision: u64, scan: Scan) {
        let mut answers = scan.histories;
        answers.sort_by(|a, b| a.descriptor.start.cmp(&b.descriptor.start));
        let resolved = watch_merge::resolved(
            revision,
            answers.iter().filter_map(|answer| answer.lowest_lock),
        );
        let watch = self.scan_clients[index]
            .watch
            .as_mut()
            .expect("a watcher's round");
        let histories = answers.into_iter().map(|answer| answer.history).collect();
        let (merged, covered) = watch.merger.merge(histories, resolved);
        let sent: Vec<u64> = merged.iter().map(|r| r.revision).collect();
        watch.sent.extend(merged);
        watch.next = watch.next.max(covered + 1);
        trace!(
            self,
            "watcher {index} round at {revision} (resolved {resolved}) sends {sent:?}, \
             next {}",
            covered + 1
        );
    }

    /// Revisions sent to the watchers so far.
    pub(crate) fn watch_revisions_sent(&self) -> usize {
        self.scan_clients
            .iter()
            .filter_map(|client| client.watch.as_ref())
            .map(|watch| watch.sent.len())
            .sum()
    }

    /// Every watcher was sent each revision of the registers' final history below its
    /// next one, once, whole, in order, and nothing else (run once the ranges
    /// converged).
    pub(crate) fn check_watches(&mut self) {
        let mut history: BTreeMap<u64, Vec<WatchEvent>> = BTreeMap::new();
        for ((key, revision), value) in self.final_versions() {
            history.entry(revision).or_default().push((key, value));
        }
        for events in history.values_mut() {
            events.sort_unstable();
        }
        let mut violation = None;
        for (index, client) in self.scan_clients.iter().enumerate() {
            let Some(watch) = &client.watch else {
                continue;
            };
            violation = violation.or_else(|| check_watcher(index, watch, &history));
        }
        if let Some(message) = violation {
            self.fail(Violation(message));
        }
    }
}

/// What is wrong with what one watcher was sent, if anything.
fn check_watcher(
    index: usize,
    watch: &crate::clients::WatchState,
    history: &BTreeMap<u64, Vec<WatchEvent>>,
) -> Option<String> {
    let mut last = 0;
    for sent in &watch.sent {
        if sent.revision <= last {
            return Some(format!(
                "watcher {index} was sent revision {} after revision {last}: out of order \
                 or twice",
                sent.revision
            ));
        }
        last = sent.revision;
        let expected = history.get(&sent.revision);
        if expected != Some(&sent.events) {
            return Some(format!(
                "watcher {index} was sent revision {} as {:?}; the registers' final history \
                 holds {expected:?} there (part of a revision, or events that never \
                 happened)",
                sent.revision, sent.events
            ));
        }
    }
    let sent: std::collections::BTreeSet<u64> = watch.sent.iter().map(|r| r.revision).collect();
    for (revision, events) in history.range(..watch.next) {
        if !sent.contains(revision) {
            return Some(format!(
                "watcher {index} was never sent revision {revision} ({events:?}), below its \
                 next revision {}: a gap",
                watch.next
            ));
        }
    }
    None
}
