//! Splitting a range, and the check that keeps a range from serving keys it no longer
//! holds.
//!
//! A split is one command in the log of the range being split. Every replica applies it
//! at the same log position, so they all cut the span at the same key and describe both
//! halves alike: the left half keeps the range's id, the right half gets a new id (and
//! its own raft group, founded with the left's membership), and both get the old
//! generation plus one. The command names the generation its proposer saw; a replica
//! whose range changed since (another split got there first) refuses it, the same way
//! on every replica.
//!
//! After a split the left range must not serve the keys that moved. A request checked
//! when it arrives can still reach the state machine after the split applied (a write
//! proposed just before, a read whose read index covers the split), so the span is
//! checked again where the request takes effect: a write at apply, a read once its read
//! index has applied. The planted bug [`RangeBug::ServeMovedKeys`] checks only on
//! arrival.

use crate::descriptor::{RangeDescriptor, RangeId};

/// A deliberate bug the simulator's checkers must catch. Never built into the server.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeBug {
    /// Check a request's key against the span only when it arrives, not where it takes
    /// effect: a write or read in flight across a split is served by the left range for
    /// a key that moved to the right one.
    ServeMovedKeys,
    /// Spread range leaders from a node leading one more range than another (not two):
    /// leaderships move back and forth for ever (`leader_balance`).
    MoveLeadersOneApart,
    /// Spread range leaders by load moving a range that carries more than the gap
    /// between two nodes' loads: the hot range moves back and forth for ever
    /// (`leader_balance`).
    MoveLeadersHotterThanGap,
    /// A read passes a pending lock at or below its revision, as if the transaction
    /// holding it had not written there (`txn::LockTable::blocking_read`): it may see
    /// part of a transaction.
    ReadIgnoresPendingLock,
    /// A read at a revision does not raise the range's read floor
    /// (`read_floor::ReadFloor::raise`): a write whose revision was fetched before the
    /// read's can land below it after the read was answered without it.
    ReadLeavesFloor,
    /// A new leadership starts with a floor of zero instead of asking the oracle
    /// (`read_floor::ReadFloor::lead`): a write with an old revision can land below a
    /// read its predecessor served.
    NewLeaderSkipsFloor,
    /// A watcher of keys in several ranges is sent what any one range has covered,
    /// not what every range has (`watch_merge::Merger::merge`): the revisions a range
    /// had not covered yet are skipped.
    WatchReleasesEarly,
    /// A replica of the left range takes the right range over when the merge applies,
    /// without waiting for its own replica of the right range to reach the freeze
    /// (`merge::MergeCheck::step`): the writes between are lost on that replica.
    MergeSkipsFreezeWait,
    /// A range forgets the aborted records below its horizon but still lets a
    /// transaction born below it commit (`txn::TxnRecords::raise_horizon`): a commit
    /// arriving late, after the transaction was aborted and its record forgotten,
    /// commits a transaction whose other parts were released.
    HorizonForgetsOnly,
    /// A transaction across ranges under whole-range locks takes the lowest of its
    /// prepares' revisions instead of the highest (`frozen_txn::txn_revision`): a range
    /// whose lock is above it takes its part for a late prepare's and drops it
    /// (`frozen_txn::decide_part`), so the transaction commits in part.
    TxnTakesLowestPrepare,
    /// A read at a revision does not wait for the revision fetch in flight when it
    /// arrived (`read_wait::RevisionFetcher::barrier`): a write that fetch stamps at or
    /// below the read's revision is proposed after the read was served without it.
    BarrierSkipsFetchInFlight,
    /// A fresh read (a linearizable read of the current state) takes the last timestamp
    /// of the fetch in flight when it arrived, not of the next one
    /// (`read_wait::RevisionFetcher::wait_fresh`): that fetch may have been answered by
    /// the oracle before the read began, below a revision acknowledged meanwhile.
    FreshReadTakesFetchInFlight,
}

/// What a split command asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRequest {
    /// The first key of the right half.
    pub at: Vec<u8>,
    /// The right half's id (unused before).
    pub right: RangeId,
    /// The generation of the range the proposer saw.
    pub expected_generation: u64,
}

/// Why a replica refused a split, the same way on every replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SplitRefused {
    /// The range changed since the proposer looked.
    GenerationChanged {
        /// The range's generation now.
        current: u64,
    },
    /// The key is not strictly inside the span (a half would be empty).
    KeyOutsideSpan,
}

/// Both halves of a split range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// The range, cut short at the split key.
    pub left: RangeDescriptor,
    /// The new range, from the split key to the old end.
    pub right: RangeDescriptor,
}

/// Applies a split command to the range as a replica describes it.
pub fn split(current: &RangeDescriptor, request: &SplitRequest) -> Result<Split, SplitRefused> {
    if current.generation != request.expected_generation {
        return Err(SplitRefused::GenerationChanged {
            current: current.generation,
        });
    }
    if request.at <= current.start || !current.contains(&request.at) {
        return Err(SplitRefused::KeyOutsideSpan);
    }
    assert_ne!(request.right, current.id, "a split names a new range");
    let generation = current.generation + 1;
    let left = RangeDescriptor::new(
        current.id,
        current.start.clone(),
        Some(request.at.clone()),
        generation,
    );
    let right = RangeDescriptor::new(
        request.right,
        request.at.clone(),
        current.end.clone(),
        generation,
    );
    Ok(Split { left, right })
}

/// Where a replica checks that a key is in its span: on arrival (to route the client
/// elsewhere early) and where the request takes effect (the check that matters).
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanCheck {
    #[cfg(feature = "planted-bugs")]
    bug: Option<RangeBug>,
}

impl SpanCheck {
    /// The same check, with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(bug: Option<RangeBug>) -> SpanCheck {
        SpanCheck { bug }
    }

    /// Whether a request for `key` arriving at a replica of `range` is served there.
    pub fn on_arrival(&self, range: Option<&RangeDescriptor>, key: &[u8]) -> bool {
        range.is_some_and(|range| range.contains(key))
    }

    /// Whether a request for `key` takes effect at a replica of `range`: a write as it
    /// applies, a read once its read index applied.
    pub fn where_it_takes_effect(&self, range: Option<&RangeDescriptor>, key: &[u8]) -> bool {
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(RangeBug::ServeMovedKeys) {
            return true;
        }
        range.is_some_and(|range| range.contains(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::descriptor::test_range as range;

    fn request(at: &[u8], right: u64, expected_generation: u64) -> SplitRequest {
        SplitRequest {
            at: at.to_vec(),
            right: RangeId(right),
            expected_generation,
        }
    }

    #[test]
    fn a_split_cuts_the_span_and_raises_both_generations() {
        let current = range(1, b"b", Some(b"x"), 3);
        let halves = split(&current, &request(b"m", 7, 3)).unwrap();
        assert_eq!(halves.left, range(1, b"b", Some(b"m"), 4));
        assert_eq!(halves.right, range(7, b"m", Some(b"x"), 4));
        let last = range(2, b"m", None, 1);
        let halves = split(&last, &request(b"q", 8, 1)).unwrap();
        assert_eq!(halves.right, range(8, b"q", None, 2));
    }

    #[test]
    fn a_split_of_a_range_that_changed_is_refused() {
        let current = range(1, b"", Some(b"m"), 4);
        assert_eq!(
            split(&current, &request(b"c", 9, 3)),
            Err(SplitRefused::GenerationChanged { current: 4 })
        );
    }

    #[test]
    fn a_split_that_would_leave_a_half_empty_is_refused() {
        let current = range(1, b"b", Some(b"m"), 1);
        for at in [&b"b"[..], b"a", b"m", b"z"] {
            assert_eq!(
                split(&current, &request(at, 9, 1)),
                Err(SplitRefused::KeyOutsideSpan),
                "{at:?}"
            );
        }
    }

    #[test]
    fn keys_outside_the_span_are_refused_on_arrival_and_where_they_take_effect() {
        let check = SpanCheck::default();
        let left = range(1, b"", Some(b"m"), 2);
        assert!(check.on_arrival(Some(&left), b"c"));
        assert!(!check.on_arrival(Some(&left), b"q"));
        assert!(!check.where_it_takes_effect(Some(&left), b"q"));
        assert!(
            !check.where_it_takes_effect(None, b"c"),
            "no span yet: nothing served"
        );
        let planted = SpanCheck::with_bug(Some(RangeBug::ServeMovedKeys));
        assert!(planted.where_it_takes_effect(Some(&left), b"q"));
    }
}
