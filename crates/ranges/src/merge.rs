//! Merging a range into its left neighbour: what every replica of the left range decides
//! when the merge command reaches it, and the merged range's description.
//!
//! A merge takes three commands in two logs (docs/RANGES.md, "Merges"): the right range
//! freezes in its own log (from then on it applies nothing but its thaw, so every
//! replica's copy of it ends at the same state); once every replica's log holds the
//! freeze, the left range's log takes the merge; a merge given up is fenced off in the
//! left range's log before the right range thaws, so the left log decides once whether
//! the merge happened.
//!
//! A replica of the left range applying the merge must take over the right range *as of
//! its freeze*: its own replica of the right range may not have applied that far yet
//! (the freeze is committed, as the left range committed the merge, but this replica may
//! not have heard so), and taking it over earlier would lose the writes in between. So
//! it waits, holding the left range's log meanwhile. The planted bug
//! [`RangeBug::MergeSkipsFreezeWait`](crate::RangeBug) takes it over at once.

use crate::descriptor::{RangeDescriptor, RangeId};
#[cfg(feature = "planted-bugs")]
use crate::RangeBug;

/// Where the right range froze, and for which left range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FreezeMark {
    /// The range it is to be merged into.
    pub left: RangeId,
    /// The freeze command's log index in the right range's log.
    pub index: u64,
    /// Its term.
    pub term: u64,
}

/// What a replica of the left range knows of its own range when a merge command
/// applies. Every field follows from the left range's log up to the merge, so every
/// replica sees the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeftRange {
    /// The left range.
    pub id: RangeId,
    /// It took the right range over already: this is the same merge command again (a
    /// proposal retried after a lost answer).
    pub absorbed_right: bool,
    /// It froze for a merge of its own.
    pub frozen: bool,
    /// A transaction across ranges holds keys in it.
    pub holds_locks: bool,
    /// This merge was fenced off (given up) in its log before.
    pub fenced: bool,
    /// It ends where the right range (as the merge names it) starts.
    pub ends_where_right_starts: bool,
    /// Its membership is the one the merge names (the right range's).
    pub same_membership: bool,
}

/// This node's replica of the right range, as it stands when the merge applies here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RightReplica {
    /// The last log index it applied.
    pub applied_index: u64,
    /// Its freeze, if it applied one.
    pub frozen: Option<FreezeMark>,
}

/// Why every replica of the left range refused a merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeRefused {
    /// The left range took the right one over already (by an earlier copy of this
    /// command).
    AlreadyMerged {
        /// The right range.
        right: RangeId,
    },
    /// The left range froze for a merge of its own.
    LeftFrozen,
    /// A transaction's part in the left range is written at its lock's revision, which
    /// must stay above the range's: taking the right range's higher revision breaks that.
    LeftLocked,
    /// The merge was fenced off: given up, and the right range may have thawed since.
    GivenUp {
        /// The right range.
        right: RangeId,
    },
    /// A split changed the left range since the merge was proposed.
    NotAdjacent {
        /// The left range.
        left: RangeId,
        /// The right range.
        right: RangeId,
    },
    /// The two ranges are replicated by different members.
    MembershipsDiffer,
}

impl std::fmt::Display for MergeRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MergeRefused::AlreadyMerged { right } => {
                write!(f, "ostrakon: range {} is merged already", right.0)
            }
            MergeRefused::LeftFrozen => f.write_str("ostrakon: the left range is being merged itself"),
            MergeRefused::LeftLocked => f.write_str(
                "ostrakon: a transaction across ranges holds keys of the left range; merge again later",
            ),
            MergeRefused::GivenUp { right } => {
                write!(f, "ostrakon: the merge of range {} was given up", right.0)
            }
            MergeRefused::NotAdjacent { left, right } => write!(
                f,
                "ostrakon: range {} no longer ends where range {} starts",
                left.0, right.0
            ),
            MergeRefused::MembershipsDiffer => {
                f.write_str("ostrakon: the two ranges' memberships differ")
            }
        }
    }
}

impl std::error::Error for MergeRefused {}

/// What a replica of the left range does with a merge command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeStep {
    /// Refused, alike on every replica: nothing changes.
    Refused(MergeRefused),
    /// This node's replica of the right range has not applied the freeze yet: the left
    /// range applies nothing more until it has.
    Wait,
    /// Take the right range over, as its replica here stands (at its freeze).
    Apply,
    /// This node holds no replica of the right range, so it cannot take it over: it
    /// joined the left range after the merge was proposed and replays the merge from a
    /// log older than it. Members are added only once a snapshot covers every merge in
    /// the log, so this takes a leader change between a new member's admission and its
    /// first snapshot, or a bug; the caller decides (the simulator calls it a bug).
    MissingRight,
}

/// The decision a left range's replica makes on a merge command (where a bug may be
/// planted).
#[derive(Clone, Copy, Debug, Default)]
pub struct MergeCheck {
    #[cfg(feature = "planted-bugs")]
    bug: Option<RangeBug>,
}

impl MergeCheck {
    /// The same decision, with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(bug: Option<RangeBug>) -> MergeCheck {
        MergeCheck { bug }
    }

    /// Decides what the replica of `left` does with the merge of `right`, frozen at
    /// `freeze_index`, given this node's replica of the right range. The refusals
    /// depend only on the left range's log, so every replica refuses alike; the wait
    /// only on this node's right replica.
    ///
    /// Panics if this node holds a replica of the right range past the freeze that is
    /// not frozen there: a merge is proposed only after its freeze applied, and a range
    /// frozen for it thaws only once the left range's log fenced the merge off.
    /// A merge the left range applied already is refused first: its right range is
    /// gone, and a later split may have made the left range end at its start again.
    pub fn step(
        &self,
        left: &LeftRange,
        right: RangeId,
        freeze_index: u64,
        right_replica: Option<&RightReplica>,
    ) -> MergeStep {
        let refusal = if left.absorbed_right {
            Some(MergeRefused::AlreadyMerged { right })
        } else if left.frozen {
            Some(MergeRefused::LeftFrozen)
        } else if left.holds_locks {
            Some(MergeRefused::LeftLocked)
        } else if left.fenced {
            Some(MergeRefused::GivenUp { right })
        } else if !left.ends_where_right_starts {
            Some(MergeRefused::NotAdjacent {
                left: left.id,
                right,
            })
        } else if !left.same_membership {
            Some(MergeRefused::MembershipsDiffer)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return MergeStep::Refused(refusal);
        }
        let Some(replica) = right_replica else {
            return MergeStep::MissingRight;
        };
        if replica.applied_index < freeze_index {
            #[cfg(feature = "planted-bugs")]
            if self.bug == Some(RangeBug::MergeSkipsFreezeWait) {
                return MergeStep::Apply;
            }
            return MergeStep::Wait;
        }
        let frozen_here = replica
            .frozen
            .is_some_and(|mark| mark.index == freeze_index && mark.left == left.id);
        assert!(
            frozen_here,
            "range {} past its freeze at {freeze_index} for range {} is frozen at {:?}, and no fence stopped the merge",
            right.0, left.id.0, replica.frozen
        );
        MergeStep::Apply
    }
}

/// The range `left` becomes when it takes over `right`, its right neighbour: the span of
/// both, and a generation above both (a client's directory keeps the newer of two
/// overlapping descriptions, so the merged one must outrank the right range's).
pub fn merged(left: &RangeDescriptor, right: &RangeDescriptor) -> RangeDescriptor {
    assert_eq!(
        left.end.as_deref(),
        Some(right.start.as_slice()),
        "range {:?} merges range {:?}, which does not start where it ends",
        left.id,
        right.id
    );
    RangeDescriptor::new(
        left.id,
        left.start.clone(),
        right.end.clone(),
        left.generation.max(right.generation) + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::descriptor::test_range as range;

    fn fitting_left() -> LeftRange {
        LeftRange {
            id: RangeId(1),
            absorbed_right: false,
            frozen: false,
            holds_locks: false,
            fenced: false,
            ends_where_right_starts: true,
            same_membership: true,
        }
    }

    fn frozen_right(applied_index: u64, freeze_index: u64) -> RightReplica {
        RightReplica {
            applied_index,
            frozen: (applied_index >= freeze_index).then_some(FreezeMark {
                left: RangeId(1),
                index: freeze_index,
                term: 2,
            }),
        }
    }

    #[test]
    fn a_merge_waits_until_the_right_replica_applied_its_freeze() {
        let check = MergeCheck::default();
        let left = fitting_left();
        let behind = frozen_right(6, 7);
        assert_eq!(
            check.step(&left, RangeId(2), 7, Some(&behind)),
            MergeStep::Wait
        );
        let there = frozen_right(7, 7);
        assert_eq!(
            check.step(&left, RangeId(2), 7, Some(&there)),
            MergeStep::Apply
        );
    }

    #[test]
    fn a_merge_that_no_longer_fits_is_refused_before_anything_else() {
        let check = MergeCheck::default();
        let cases = [
            (
                LeftRange {
                    absorbed_right: true,
                    // A split at the same key made it end where the right range began.
                    ..fitting_left()
                },
                MergeRefused::AlreadyMerged { right: RangeId(2) },
            ),
            (
                LeftRange {
                    absorbed_right: true,
                    frozen: true,
                    ..fitting_left()
                },
                MergeRefused::AlreadyMerged { right: RangeId(2) },
            ),
            (
                LeftRange {
                    frozen: true,
                    ..fitting_left()
                },
                MergeRefused::LeftFrozen,
            ),
            (
                LeftRange {
                    holds_locks: true,
                    ..fitting_left()
                },
                MergeRefused::LeftLocked,
            ),
            (
                LeftRange {
                    fenced: true,
                    ..fitting_left()
                },
                MergeRefused::GivenUp { right: RangeId(2) },
            ),
            (
                LeftRange {
                    ends_where_right_starts: false,
                    ..fitting_left()
                },
                MergeRefused::NotAdjacent {
                    left: RangeId(1),
                    right: RangeId(2),
                },
            ),
            (
                LeftRange {
                    same_membership: false,
                    ..fitting_left()
                },
                MergeRefused::MembershipsDiffer,
            ),
        ];
        for (left, refusal) in cases {
            // Refused even with no right replica here: the refusal depends only on the
            // left range's log.
            assert_eq!(
                check.step(&left, RangeId(2), 7, None),
                MergeStep::Refused(refusal)
            );
        }
        assert_eq!(
            MergeRefused::GivenUp { right: RangeId(2) }.to_string(),
            "ostrakon: the merge of range 2 was given up"
        );
    }

    #[test]
    #[should_panic(expected = "no fence stopped the merge")]
    fn a_right_replica_past_its_freeze_but_thawed_is_a_bug() {
        let thawed = RightReplica {
            applied_index: 9,
            frozen: None,
        };
        MergeCheck::default().step(&fitting_left(), RangeId(2), 7, Some(&thawed));
    }

    #[test]
    fn a_merge_without_a_right_replica_cannot_apply() {
        assert_eq!(
            MergeCheck::default().step(&fitting_left(), RangeId(2), 7, None),
            MergeStep::MissingRight
        );
    }

    #[test]
    fn the_planted_bug_takes_the_right_range_over_before_its_freeze() {
        let check = MergeCheck::with_bug(Some(RangeBug::MergeSkipsFreezeWait));
        let behind = frozen_right(3, 7);
        assert_eq!(
            check.step(&fitting_left(), RangeId(2), 7, Some(&behind)),
            MergeStep::Apply
        );
    }

    #[test]
    fn the_merged_range_covers_both_above_both_generations() {
        let left = range(1, b"b", Some(b"m"), 3);
        let right = range(4, b"m", None, 5);
        assert_eq!(merged(&left, &right), range(1, b"b", None, 6));
        let right = range(4, b"m", Some(b"q"), 2);
        assert_eq!(merged(&left, &right), range(1, b"b", Some(b"q"), 4));
    }

    #[test]
    #[should_panic(expected = "does not start where it ends")]
    fn merging_ranges_that_do_not_touch_is_a_bug() {
        merged(&range(1, b"b", Some(b"m"), 1), &range(2, b"n", None, 1));
    }
}
