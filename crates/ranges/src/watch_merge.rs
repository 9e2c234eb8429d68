//! Merging one watcher's events from several ranges (docs/RANGES.md, "Watches across
//! ranges"): the rule that decides which revisions a watcher of keys in more than one
//! range may be sent, run by the node's watch streams and by the simulator alike.
//!
//! A revision is released only once every range of the watcher has *resolved* it: the
//! range has applied every write at or below it, and no transaction holding a lock in
//! it at or below it is still to write there. The watcher's round takes a revision R
//! from the oracle and waits until each range has applied every write that can take a
//! revision at or below R (the read-wait rule); a range holding a lock at T <= R is
//! final only below T ([`resolved`]). Then each range's history, read from the
//! watcher's next revision on, covers up to what it was read to; the merge sends the
//! revisions that *every* range covers, each revision's events from every range
//! together, in key order ([`Merger::merge`]). So a watcher gets each revision once,
//! whole, in order, with no gap, as from one range.
//!
//! The planted bug [`RangeBug::WatchReleasesEarly`] releases what *any* range covers
//! instead: the revisions a range whose history was cut short had not covered yet are
//! then skipped for ever.

#[cfg(feature = "planted-bugs")]
use crate::RangeBug;

/// One revision's events, of one range or merged from several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionEvents<E> {
    /// The revision.
    pub revision: u64,
    /// Its events, in key order.
    pub events: Vec<E>,
}

/// One range's history of a watcher's keys, read from the watcher's next revision on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeHistory<E> {
    /// The revisions with events, ascending.
    pub revisions: Vec<RevisionEvents<E>>,
    /// The last revision the history covers: `current`, unless it was cut short (read
    /// on from the revision after it).
    pub covered: u64,
    /// The range's revision when the history was read.
    pub current: u64,
}

/// The revision up to which every range of a watcher is final: `now`, a revision the
/// oracle handed out once the round began, after every range applied every write that
/// can take a revision at or below it; less where a range holds a lock at or below it
/// (the transaction will write there at the lock's revision). `lowest_locks`: the
/// lowest lock revision of each range that holds any.
pub fn resolved(now: u64, lowest_locks: impl IntoIterator<Item = u64>) -> u64 {
    lowest_locks
        .into_iter()
        .map(|lock| lock.saturating_sub(1))
        .fold(now, u64::min)
}

/// Merges the ranges' histories of one watcher.
#[derive(Clone, Copy, Debug, Default)]
pub struct Merger {
    #[cfg(feature = "planted-bugs")]
    bug: Option<RangeBug>,
}

impl Merger {
    /// A merger with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(bug: Option<RangeBug>) -> Merger {
        Merger { bug }
    }

    /// The revisions of `histories` (one per range, in key order) that every range
    /// covers up to `resolved` ([`resolved`]), merged in revision order, with the last
    /// revision they cover: `resolved`, or less where a history was cut short (the
    /// watcher reads on from the revision after it).
    pub fn merge<E>(
        &self,
        histories: Vec<RangeHistory<E>>,
        resolved: u64,
    ) -> (Vec<RevisionEvents<E>>, u64) {
        let coverage = histories.iter().map(|range| {
            if range.covered >= range.current {
                // The whole history to the range's revision: nothing above it up to
                // `resolved`, which the range has applied every write at or below.
                resolved
            } else {
                range.covered.min(resolved)
            }
        });
        #[cfg(feature = "planted-bugs")]
        let covered = if self.bug == Some(RangeBug::WatchReleasesEarly) {
            coverage.max().unwrap_or(resolved)
        } else {
            coverage.min().unwrap_or(resolved)
        };
        #[cfg(not(feature = "planted-bugs"))]
        let covered = coverage.min().unwrap_or(resolved);
        let mut by_revision: std::collections::BTreeMap<u64, Vec<E>> = Default::default();
        for range in histories {
            for revision in range.revisions {
                if revision.revision <= covered {
                    // Ranges come in key order: a revision's events stay in key order.
                    by_revision
                        .entry(revision.revision)
                        .or_default()
                        .extend(revision.events);
                }
            }
        }
        let merged = by_revision
            .into_iter()
            .map(|(revision, events)| RevisionEvents { revision, events })
            .collect();
        (merged, covered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(revision: u64, keys: &[&'static str]) -> RevisionEvents<&'static str> {
        RevisionEvents {
            revision,
            events: keys.to_vec(),
        }
    }

    fn range(
        revisions: Vec<RevisionEvents<&'static str>>,
        covered: u64,
        current: u64,
    ) -> RangeHistory<&'static str> {
        RangeHistory {
            revisions,
            covered,
            current,
        }
    }

    fn shape(merged: &[RevisionEvents<&'static str>]) -> Vec<(u64, Vec<&'static str>)> {
        merged
            .iter()
            .map(|r| (r.revision, r.events.clone()))
            .collect()
    }

    #[test]
    fn revisions_come_in_order_up_to_what_every_range_covers() {
        // The left range is quiet (current 10), the right one has applied past the
        // resolved revision 40: 50 waits for a later round.
        let left = range(vec![revision(5, &["a"])], 10, 10);
        let right = range(
            vec![
                revision(3, &["x"]),
                revision(30, &["y"]),
                revision(50, &["z"]),
            ],
            50,
            50,
        );
        let (merged, covered) = Merger::default().merge(vec![left, right], 40);
        assert_eq!(covered, 40);
        assert_eq!(
            shape(&merged),
            vec![(3, vec!["x"]), (5, vec!["a"]), (30, vec!["y"])]
        );
    }

    #[test]
    fn a_history_cut_short_holds_every_range_back_to_it() {
        let left = range(vec![revision(5, &["a"]), revision(8, &["b"])], 8, 20);
        let right = range(vec![revision(7, &["x"]), revision(9, &["y"])], 30, 30);
        let (merged, covered) = Merger::default().merge(vec![left.clone(), right.clone()], 40);
        assert_eq!(covered, 8, "the left history stopped at 8");
        assert_eq!(
            shape(&merged),
            vec![(5, vec!["a"]), (7, vec!["x"]), (8, vec!["b"])]
        );
        // The planted bug releases what the right range covers: 9 goes out, and the
        // left range's revisions between 8 and 40 are never read.
        let buggy = Merger::with_bug(Some(RangeBug::WatchReleasesEarly));
        let (merged, covered) = buggy.merge(vec![left, right], 40);
        assert_eq!(covered, 40);
        assert_eq!(merged.last().map(|r| r.revision), Some(9));
    }

    #[test]
    fn one_revisions_events_from_several_ranges_go_out_together_in_key_order() {
        let left = range(vec![revision(6, &["a", "b"])], 9, 9);
        let right = range(vec![revision(6, &["x"])], 9, 9);
        let (merged, covered) = Merger::default().merge(vec![left, right], 9);
        assert_eq!(covered, 9);
        assert_eq!(shape(&merged), vec![(6, vec!["a", "b", "x"])]);
    }

    #[test]
    fn a_pending_lock_holds_the_resolved_revision_below_it() {
        assert_eq!(resolved(40, []), 40);
        assert_eq!(resolved(40, [50]), 40, "a lock above the round's revision");
        assert_eq!(resolved(40, [50, 31, 35]), 30);
        assert_eq!(resolved(40, [1]), 0);
    }
}
