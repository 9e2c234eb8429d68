//! One watcher's revisions from several ranges (a watcher whose keys fall in more than
//! one range; docs/RANGES.md, "Watches across ranges").
//!
//! Such a watcher is served in rounds: each round takes a revision R from the oracle and
//! waits until every range it watches has applied every write at or below R (the
//! read-wait rule, as a read at R); then it sends what every range covers up to R,
//! merged in revision order: a revision is released only once no range can still
//! produce an event below it. The events come from the ranges' live broadcasts, kept
//! per watcher until released (`Pending`); where those may miss some (a watcher that
//! starts in the past, a broadcast that moved on without the stream, a range new to
//! the stream), from the ranges' histories. So the watcher gets each revision once,
//! whole, in order, with no gap, as from one range.

use std::collections::{BTreeMap, HashMap};

use ostrakon_raft::GroupId;
use ostrakon_ranges::watch_merge;

use ostrakon_proto::mvccpb::Event;
use ostrakon_storage::mvcc::{History, Revision, RevisionEvents};

/// Events a watcher holds at most before it falls back to reading histories.
const PENDING_EVENTS_MAX: usize = 10_000;

/// How far a stream has received each range's broadcast.
#[derive(Default)]
pub struct LiveRanges {
    ranges: HashMap<GroupId, Live>,
}

struct Live {
    /// Every revision of the range above it has been or will be received, in order.
    from: Revision,
    /// The last revision received.
    seen: Revision,
    /// `seen` when a round last found it below the range's current revision.
    stalled: Option<Revision>,
}

impl LiveRanges {
    /// The stream subscribed to `group`'s broadcast, then read its current revision.
    pub fn subscribed(&mut self, group: GroupId, current: Revision) {
        self.ranges.insert(
            group,
            Live {
                from: current,
                seen: current,
                stalled: None,
            },
        );
    }

    /// Revisions above this are received from `group` (None: not subscribed).
    pub fn from(&self, group: GroupId) -> Option<Revision> {
        self.ranges.get(&group).map(|live| live.from)
    }

    /// The last revision received from `group` (None: not subscribed): a watcher new
    /// to the stream missed what came up to there, which was never kept for it.
    pub fn seen(&self, group: GroupId) -> Option<Revision> {
        self.ranges.get(&group).map(|live| live.seen)
    }

    /// A revision of `group` was received; `previous` is the range's revision before it.
    /// If the stream had not received up to `previous`, it missed revisions (a snapshot
    /// moved the range on): their events come from the history.
    pub fn received(&mut self, group: GroupId, revision: Revision, previous: Revision) {
        if let Some(live) = self.ranges.get_mut(&group) {
            if previous > live.seen {
                live.from = live.from.max(previous);
            }
            live.seen = live.seen.max(revision);
            live.stalled = None;
        }
    }

    /// Called each round with `group`'s current revision: a range whose broadcast has not
    /// brought its current revision over two rounds (a snapshot moved it on without
    /// events, and nothing was written since) is read from the history up to there.
    pub fn check_stalled(&mut self, group: GroupId, current: Revision) {
        let Some(live) = self.ranges.get_mut(&group) else {
            return;
        };
        if live.seen >= current {
            live.stalled = None;
            return;
        }
        match live.stalled {
            Some(seen) if seen == live.seen => {
                live.from = live.from.max(current);
                live.seen = current;
                live.stalled = None;
            }
            _ => live.stalled = Some(live.seen),
        }
    }

    /// `group`'s broadcast moved on without the stream: what it held up to `current`
    /// may be lost.
    pub fn lagged(&mut self, group: GroupId, current: Revision) {
        self.subscribed(group, current);
    }

    /// `gone` was merged into a range the stream follows (it holds no keys here any
    /// more): its broadcast may still hold revisions the stream has not received, and no
    /// round waits for them now that no watcher's keys fall in it. The range that
    /// absorbed it holds their history, at no revision above its current one: every
    /// range still followed (`followed`, each with its current revision) is read from
    /// its history up to there.
    pub fn merged_away(
        &mut self,
        gone: GroupId,
        followed: impl IntoIterator<Item = (GroupId, Revision)>,
    ) {
        self.ranges.remove(&gone);
        for (group, current) in followed {
            self.lagged(group, current);
        }
    }

    /// The stream no longer follows `group` (merged away, and no watcher's keys left in
    /// it).
    pub fn forget(&mut self, group: GroupId) {
        self.ranges.remove(&group);
    }

    /// Up to which revision the stream has received every event of `group` at or below
    /// `resolved` (which the range has applied every write at or below), given the
    /// range's current revision now: all of them once it has received up to there.
    pub fn complete_to(&self, group: GroupId, current: Revision, resolved: Revision) -> Revision {
        match self.ranges.get(&group) {
            Some(live) if live.seen >= current => resolved,
            Some(live) => live.seen.min(resolved),
            None => Revision(0),
        }
    }
}

/// A merged watcher's events received live, kept until every range resolved them.
pub struct Pending {
    revisions: BTreeMap<Revision, Vec<Event>>,
    events: usize,
    /// Every event of the watcher's keys above it is here (or was sent); below or at
    /// it, the histories must be read.
    pub from: Revision,
}

impl Pending {
    /// Nothing received yet; events above `from` will be.
    pub fn new(from: Revision) -> Pending {
        Pending {
            revisions: BTreeMap::new(),
            events: 0,
            from,
        }
    }

    /// Keeps a revision's events. Past `PENDING_EVENTS_MAX`, drops them all and counts
    /// on the histories up to `current` (the highest revision received anywhere).
    pub fn push(&mut self, revision: Revision, events: Vec<Event>, current: Revision) {
        if revision <= self.from {
            return;
        }
        self.events += events.len();
        self.revisions.entry(revision).or_default().extend(events);
        if self.events > PENDING_EVENTS_MAX {
            self.revisions.clear();
            self.events = 0;
            self.from = self.from.max(current);
        }
    }

    /// The revisions from `next` up to `covered`, in order (those below `next` were
    /// sent already and are dropped).
    pub fn take(&mut self, next: Revision, covered: Revision) -> Vec<RevisionEvents> {
        let mut later = self.revisions.split_off(&Revision(covered.0 + 1));
        std::mem::swap(&mut later, &mut self.revisions);
        let taken: Vec<RevisionEvents> = later
            .into_iter()
            .filter(|(revision, _)| *revision >= next)
            .map(|(revision, events)| RevisionEvents {
                revision,
                previous: Revision(0),
                events,
            })
            .collect();
        self.events = self.revisions.values().map(Vec::len).sum();
        taken
    }

    /// Whether events wait here.
    pub fn is_empty(&self) -> bool {
        self.revisions.is_empty()
    }
}

/// One range's history of a watcher's keys, read from a view of the range.
pub struct RangeHistory {
    /// What the view held from the watcher's next revision on.
    pub history: History,
    /// The view's current revision.
    pub current: Revision,
}

/// The revisions of `histories` (one per range, in key order) that every range covers
/// up to `resolved`, merged in revision order, with the last revision they cover: the
/// range layer's rule (`ostrakon_ranges::watch_merge`, which the simulator runs too) on
/// the store's events.
pub fn merge(histories: Vec<RangeHistory>, resolved: Revision) -> (Vec<RevisionEvents>, Revision) {
    let histories = histories
        .into_iter()
        .map(|range| watch_merge::RangeHistory {
            revisions: range
                .history
                .revisions
                .into_iter()
                .map(|revision| watch_merge::RevisionEvents {
                    revision: unsigned(revision.revision),
                    events: revision.events,
                })
                .collect(),
            covered: unsigned(range.history.covered),
            current: unsigned(range.current),
        })
        .collect();
    let (merged, covered) = watch_merge::Merger::default().merge(histories, unsigned(resolved));
    let merged = merged
        .into_iter()
        .map(|revision| RevisionEvents {
            revision: signed(revision.revision),
            previous: Revision(0),
            events: revision.events,
        })
        .collect();
    (merged, signed(covered))
}

/// The revision up to which every range of a watcher is final, given the oracle's `now`
/// (after each range applied every write at or below it) and the ranges' lowest locks.
pub fn resolved(now: Revision, lowest_locks: impl IntoIterator<Item = Revision>) -> Revision {
    signed(watch_merge::resolved(
        unsigned(now),
        lowest_locks.into_iter().map(unsigned),
    ))
}

fn unsigned(revision: Revision) -> u64 {
    u64::try_from(revision.0).expect("revisions are not negative")
}

fn signed(revision: u64) -> Revision {
    Revision(i64::try_from(revision).expect("revisions stay below 2^63"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::mvccpb::KeyValue;

    fn revision(revision: i64, keys: &[&str]) -> RevisionEvents {
        let events = keys
            .iter()
            .map(|key| Event {
                kv: Some(KeyValue {
                    key: bytes::Bytes::from(key.to_string()),
                    mod_revision: revision,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        RevisionEvents {
            revision: Revision(revision),
            previous: Revision(0),
            events,
        }
    }

    fn shape(merged: &[RevisionEvents]) -> Vec<(i64, Vec<String>)> {
        merged
            .iter()
            .map(|r| {
                let keys = r
                    .events
                    .iter()
                    .map(|e| String::from_utf8(e.kv.as_ref().unwrap().key.to_vec()).unwrap())
                    .collect();
                (r.revision.0, keys)
            })
            .collect()
    }

    #[test]
    fn a_range_is_complete_to_the_resolved_revision_once_its_current_one_arrived() {
        let mut live = LiveRanges::default();
        let group = GroupId(2);
        assert_eq!(
            live.complete_to(group, Revision(5), Revision(9)),
            Revision(0)
        );
        live.subscribed(group, Revision(5));
        assert_eq!(live.from(group), Some(Revision(5)));
        assert_eq!(
            live.complete_to(group, Revision(5), Revision(9)),
            Revision(9)
        );
        // Revision 7 applied, not received yet: complete to 5 only.
        assert_eq!(
            live.complete_to(group, Revision(7), Revision(9)),
            Revision(5)
        );
        live.received(group, Revision(7), Revision(5));
        assert_eq!(
            live.complete_to(group, Revision(7), Revision(9)),
            Revision(9)
        );
        // Applied past the resolved revision, received below it.
        assert_eq!(
            live.complete_to(group, Revision(12), Revision(9)),
            Revision(7)
        );
        live.received(group, Revision(12), Revision(7));
        assert_eq!(
            live.complete_to(group, Revision(12), Revision(9)),
            Revision(9)
        );
        assert_eq!(live.from(group), Some(Revision(5)), "no revision missed");
        live.lagged(group, Revision(20));
        assert_eq!(live.from(group), Some(Revision(20)));
        // A revision whose previous one never came: the ones between are in the history.
        live.received(group, Revision(40), Revision(30));
        assert_eq!(live.from(group), Some(Revision(30)));
        // The range moved to 50 without a broadcast: history to there after two rounds.
        live.check_stalled(group, Revision(50));
        assert_eq!(
            live.from(group),
            Some(Revision(30)),
            "one round may be a delay"
        );
        live.check_stalled(group, Revision(50));
        assert_eq!(live.from(group), Some(Revision(50)));
        assert_eq!(
            live.complete_to(group, Revision(50), Revision(60)),
            Revision(60)
        );
    }

    /// The race CI's split-merge chaos run found: the right range's last writes were
    /// still in its broadcast when the merge applied; the next round no longer looked at
    /// the right range, found the left one received up to a revision above those writes
    /// (its own, written after the freeze), and released past them: watchers missed
    /// them for good.
    #[test]
    fn a_range_merged_away_sends_the_watchers_to_the_merged_history() {
        let (left, right) = (GroupId(1), GroupId(2));
        let mut live = LiveRanges::default();
        live.subscribed(left, Revision(10));
        live.subscribed(right, Revision(10));
        // The right range applies 11 and 12 (not received yet), freezes; the left
        // writes 13 and 14 (received), then takes the right range over at 14.
        live.received(left, Revision(13), Revision(10));
        live.received(left, Revision(14), Revision(13));
        assert_eq!(
            live.complete_to(right, Revision(12), Revision(20)),
            Revision(10),
            "while the right range is followed, its unreceived revisions hold releases"
        );
        live.merged_away(right, [(left, Revision(14))]);
        assert_eq!(live.from(right), None);
        assert_eq!(
            live.from(left),
            Some(Revision(14)),
            "up to the merged range's revision, its history is read"
        );
    }

    #[test]
    fn pending_events_go_out_in_order_once_covered_and_overflow_falls_back_to_history() {
        let mut pending = Pending::new(Revision(3));
        pending.push(Revision(3), revision(3, &["old"]).events, Revision(3));
        pending.push(Revision(6), revision(6, &["x"]).events, Revision(6));
        pending.push(Revision(4), revision(4, &["a"]).events, Revision(6));
        pending.push(Revision(9), revision(9, &["b"]).events, Revision(9));
        let taken = pending.take(Revision(4), Revision(6));
        assert_eq!(
            shape(&taken),
            vec![(4, vec!["a".to_string()]), (6, vec!["x".to_string()])]
        );
        assert!(!pending.is_empty());
        assert_eq!(shape(&pending.take(Revision(7), Revision(9))).len(), 1);
        assert!(pending.is_empty());
        let many: Vec<&str> = vec!["k"; PENDING_EVENTS_MAX + 1];
        pending.push(Revision(20), revision(20, &many).events, Revision(25));
        assert!(pending.is_empty());
        assert_eq!(
            pending.from,
            Revision(25),
            "read from the histories up to 25"
        );
    }
}
