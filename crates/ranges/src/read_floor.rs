//! A range leader's read floor (CockroachDB's timestamp cache, reduced to one number):
//! the highest revision a read of the range was served at. A write whose revision was
//! fetched elsewhere (by a client or a transaction's coordinator, then sent to the
//! range) is proposed only above it, so no write can land below a revision a reader
//! has already been answered at (docs/RANGES.md, "Reads raise the range's floor").
//!
//! - A read at R raises the floor to R before it reads; it then waits until the leader
//!   has applied every entry in its log when the read arrived, so writes proposed before
//!   the floor rose (which may be below R) are seen.
//! - The floor is the leader's memory, not replicated: a new leadership does not know
//!   what its predecessors served. It takes a timestamp from the oracle, fetched after
//!   it began to lead: every read an earlier leadership served was at a revision handed
//!   out before that (the read was confirmed by a quorum that then elected this leader),
//!   so the oracle's next timestamp is above all of them. Until it has one, it serves no
//!   read at a revision and takes no write with a revision.

use ostrakon_raft::Term;

#[cfg(feature = "planted-bugs")]
use crate::RangeBug;

/// Why a range's leader did not serve a read at a revision or take a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloorRefused {
    /// This leadership has no floor from the oracle yet: try again shortly.
    Unknown,
    /// A read at or above the write's revision was served already: the write needs a
    /// newer revision.
    BelowFloor {
        /// The write's revision.
        revision: u64,
        /// The floor.
        floor: u64,
    },
}

impl std::fmt::Display for FloorRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FloorRefused::Unknown => {
                f.write_str("the range's leader has not learned its read floor yet")
            }
            FloorRefused::BelowFloor { revision, floor } => {
                write!(
                    f,
                    "revision {revision} is not above the range's read floor {floor}"
                )
            }
        }
    }
}

impl std::error::Error for FloorRefused {}

/// One replica's read floor, for the leadership term it was learned in.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadFloor {
    term: Term,
    floor: Option<u64>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<RangeBug>,
}

impl ReadFloor {
    /// An unknown floor, with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(bug: Option<RangeBug>) -> ReadFloor {
        ReadFloor {
            bug,
            ..ReadFloor::default()
        }
    }

    /// The replica leads in `term`: a term it did not lead in before starts without a
    /// floor.
    pub fn lead(&mut self, term: Term) {
        if term != self.term {
            self.term = term;
            self.floor = None;
            #[cfg(feature = "planted-bugs")]
            if self.bug == Some(RangeBug::NewLeaderSkipsFloor) {
                self.floor = Some(0);
            }
        }
    }

    /// The range took over another (a merge), whose leader served reads this one never
    /// saw: the floor is learnt anew from the oracle, as a new leadership's. The caller
    /// ignores answers to requests made before (they may predate those reads).
    pub fn forget(&mut self) {
        self.floor = None;
    }

    /// Whether this leadership still needs a timestamp from the oracle.
    pub fn is_unknown(&self) -> bool {
        self.floor.is_none()
    }

    /// The leadership of `term` got `timestamp` from the oracle, asked for after it
    /// began to lead. Ignored if the replica has led in another term since.
    pub fn learn(&mut self, term: Term, timestamp: u64) {
        if term == self.term {
            self.floor = Some(self.floor.map_or(timestamp, |floor| floor.max(timestamp)));
        }
    }

    /// A read at `revision` is about to be served: no later write may be at or below it.
    pub fn raise(&mut self, revision: u64) -> Result<(), FloorRefused> {
        let floor = self.floor.as_mut().ok_or(FloorRefused::Unknown)?;
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(RangeBug::ReadLeavesFloor) {
            return Ok(());
        }
        *floor = (*floor).max(revision);
        Ok(())
    }

    /// Whether a write at `revision` may be proposed now.
    pub fn admit(&self, revision: u64) -> Result<(), FloorRefused> {
        match self.floor {
            None => Err(FloorRefused::Unknown),
            Some(floor) if revision <= floor => Err(FloorRefused::BelowFloor { revision, floor }),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_leadership_serves_nothing_until_it_learns_its_floor() {
        let mut floor = ReadFloor::default();
        floor.lead(Term(3));
        assert_eq!(floor.raise(10), Err(FloorRefused::Unknown));
        assert_eq!(floor.admit(10), Err(FloorRefused::Unknown));
        // A timestamp fetched in an earlier term says nothing about this one.
        floor.learn(Term(2), 50);
        assert!(floor.is_unknown());
        floor.learn(Term(3), 50);
        assert_eq!(
            floor.admit(50),
            Err(FloorRefused::BelowFloor {
                revision: 50,
                floor: 50
            })
        );
        assert_eq!(floor.admit(51), Ok(()));
    }

    #[test]
    fn reads_raise_the_floor_and_writes_below_it_are_refused() {
        let mut floor = ReadFloor::default();
        floor.lead(Term(1));
        floor.learn(Term(1), 5);
        floor.raise(20).unwrap();
        floor.raise(10).unwrap(); // never lowers
        assert_eq!(
            floor.admit(20),
            Err(FloorRefused::BelowFloor {
                revision: 20,
                floor: 20
            })
        );
        assert_eq!(floor.admit(21), Ok(()));
        // Leading again in a new term forgets it.
        floor.lead(Term(4));
        assert!(floor.is_unknown());
    }

    #[test]
    fn a_merge_forgets_the_floor_within_the_same_leadership() {
        let mut floor = ReadFloor::default();
        floor.lead(Term(2));
        floor.learn(Term(2), 30);
        floor.forget();
        assert_eq!(floor.admit(31), Err(FloorRefused::Unknown));
        assert_eq!(floor.raise(31), Err(FloorRefused::Unknown));
        floor.lead(Term(2)); // still the same leadership: still unknown
        assert!(floor.is_unknown());
        floor.learn(Term(2), 90);
        assert_eq!(floor.admit(91), Ok(()));
    }

    #[cfg(feature = "planted-bugs")]
    #[test]
    fn the_planted_bug_lets_a_write_in_below_a_served_read() {
        let mut floor = ReadFloor::with_bug(Some(RangeBug::ReadLeavesFloor));
        floor.lead(Term(1));
        floor.learn(Term(1), 5);
        floor.raise(20).unwrap();
        assert_eq!(floor.admit(10), Ok(()));
    }
}
