//! The timestamp oracle: one source of revisions for the whole keyspace, on range 0's
//! leader (TiKV's placement driver does the same job).
//!
//! What it promises: timestamps handed out are unique, and a timestamp handed out after
//! another was received is greater (strictly increasing in real-time order), across
//! leader changes, crashes and skewed clocks.
//!
//! How:
//! - **A persisted bound.** Range 0's state machine holds a bound ([`OracleBound`]);
//!   every leader hands out only timestamps below the bound it has applied. A new leader
//!   starts at the bound, so it starts above everything its predecessors handed out.
//!   Raising the bound is a command through range 0's log, made a window ahead of the
//!   clock (3 s by default), or of the timestamps handed out when they run ahead of it,
//!   so handing out a timestamp costs no disk write: one persisted bound covers millions
//!   of them.
//! - **The bound is raised before it is reached.** Once the clock is within half a
//!   window of the bound the leader proposes the next one while it goes on handing out
//!   below the current, so in steady state no request waits for a write. If the clock
//!   passes the bound before the next one applies, timestamps lag the clock until it
//!   does; only a request with no room left below the bound (the first of a new
//!   leadership, or a batch larger than the room) waits for the next bound.
//! - **Leadership confirmed per request.** A deposed leader that does not know it yet
//!   must not hand out timestamps below what the new leader already gave away. The
//!   caller confirms, after the request arrived, that it still leads (a read index, or a
//!   valid lease) and applies the log up to that point before calling
//!   [`Oracle::allocate`]. A leader confirmed after a request arrived was the leader at
//!   an instant after the request began, so its answer is ordered after everything
//!   answered before the request began. Requests that arrive together share one
//!   confirmation (one heartbeat round), and one call hands out a batch.
//!
//! The planted bug [`OracleBug::HandOutBeyondBound`] (feature `planted-bugs`) hands out
//! past the persisted bound without waiting for the next one to apply; the simulator
//! must catch it when the leader crashes or is deposed before that bound commits.

use ostrakon_raft::Term;

use crate::timestamp::{Timestamp, TimestampRange};

/// How the oracle runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OracleConfig {
    /// How far ahead of the clock a new bound is persisted: one write to range 0 per
    /// window in steady state. TiKV's placement driver saves 3 s ahead.
    pub window_ms: u64,
}

impl Default for OracleConfig {
    fn default() -> Self {
        OracleConfig { window_ms: 3_000 }
    }
}

/// A deliberate bug the simulator's checkers must catch. Never built into the server.
#[cfg(feature = "planted-bugs")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleBug {
    /// Follow the clock past the persisted bound, handing out timestamps at or beyond
    /// it as soon as the next bound is proposed, without waiting for it to apply: a
    /// leader that crashes or is deposed before that bound commits leaves its successor
    /// starting below timestamps already handed out.
    HandOutBeyondBound,
}

/// The oracle's replicated state, kept in range 0's state machine (and its snapshots):
/// every timestamp any leader handed out is below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OracleBound(Timestamp);

impl OracleBound {
    /// A bound at `initial`: a store that already holds revisions starts above them.
    pub fn new(initial: Timestamp) -> OracleBound {
        OracleBound(initial)
    }

    /// The bound.
    pub fn get(self) -> Timestamp {
        self.0
    }

    /// Applies a bound committed in range 0's log. Bounds only rise: a proposal from a
    /// deposed leader may commit after a higher one.
    pub fn apply(&mut self, proposed: Timestamp) {
        self.0 = self.0.max(proposed);
    }
}

/// What one call to [`Oracle::allocate`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The timestamps handed out, if any. None: wait until a new bound applies, then
    /// call again.
    pub granted: Option<TimestampRange>,
    /// A new bound to propose through range 0's log (its apply calls
    /// [`OracleBound::apply`] on every replica).
    pub propose_bound: Option<Timestamp>,
}

/// The oracle of one range 0 replica, used while it leads. Not persisted: a restarted
/// or newly elected leader starts again from the persisted bound.
#[derive(Debug)]
pub struct Oracle {
    config: OracleConfig,
    /// The term whose leadership the state below belongs to.
    term: Term,
    /// The lowest timestamp it may hand out next: the bound found when `term`'s first
    /// allocation came (everything below it may have been handed out by a
    /// predecessor), then one past the last handed out.
    next: Timestamp,
    /// The highest bound proposed in `term` and not yet seen applied.
    proposed: Option<Timestamp>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<OracleBug>,
}

impl Oracle {
    /// An oracle that has handed out nothing.
    pub fn new(config: OracleConfig) -> Oracle {
        assert!(config.window_ms >= 2, "an oracle window of under 2 ms");
        Oracle {
            config,
            term: Term(0),
            next: Timestamp(0),
            proposed: None,
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// The same oracle, with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(mut self, bug: Option<OracleBug>) -> Oracle {
        self.bug = bug;
        self
    }

    /// Hands out `count` timestamps as the leader of `term`, with `bound` the persisted
    /// bound as applied here and `now_ms` this node's clock.
    ///
    /// The caller guarantees that this node led `term` at some instant after the
    /// request arrived (a read index taken after it arrived, or a valid lease) and that
    /// `bound` was read after applying the log up to that read index, so it is at least
    /// every bound committed before. Calls with an older term than a previous call are
    /// a bug.
    pub fn allocate(
        &mut self,
        term: Term,
        bound: OracleBound,
        now_ms: u64,
        count: u64,
    ) -> Allocation {
        assert!(count > 0, "an allocation of no timestamps");
        assert!(
            term >= self.term,
            "oracle called in term {term:?} after term {:?}",
            self.term
        );
        let bound = bound.get();
        if term > self.term {
            // A new leadership: whatever this node handed out before, its predecessors
            // may have handed out more since; the bound is above all of it.
            self.term = term;
            self.next = bound;
            self.proposed = None;
        }
        if self.proposed.is_some_and(|p| p <= bound) {
            self.proposed = None;
        }
        // Follow the clock while there is room below the bound; once the clock passes
        // it, lag behind the clock rather than wait (order and uniqueness never needed
        // the clock). Only a request with no room left below the bound waits.
        let clock = Timestamp::from_physical_ms(now_ms);
        let first = match bound.0.checked_sub(count).map(Timestamp) {
            Some(latest_fitting)
                if latest_fitting >= self.next && !self.hands_out_beyond_bound() =>
            {
                self.next.max(clock.min(latest_fitting))
            }
            _ => self.next.max(clock),
        };
        let range = TimestampRange { first, count };
        // The window runs ahead of the clock, or of the timestamps handed out when they
        // are ahead of it (a leader whose clock lags its predecessor's bound): measured
        // from the clock alone, each bound would make room for one more batch, and every
        // request would wait for a round of range 0's log until the clock caught up
        // (simulator seed 3992).
        let ahead_of_ms = now_ms.max(range.last().physical_ms());
        let next_bound = Timestamp::from_physical_ms(ahead_of_ms + self.config.window_ms)
            .max(range.last().plus(1));
        let half_window_ahead =
            Timestamp::from_physical_ms(ahead_of_ms + self.config.window_ms / 2);
        let wants_bound = range.last() >= bound || half_window_ahead >= bound;
        let propose_bound = if wants_bound && self.proposed.is_none_or(|p| p <= range.last()) {
            self.proposed = Some(next_bound);
            Some(next_bound)
        } else {
            None
        };
        let grant = range.last() < bound || self.hands_out_beyond_bound();
        if grant {
            self.next = range.last().plus(1);
        }
        Allocation {
            granted: grant.then_some(range),
            propose_bound,
        }
    }

    /// A bound this oracle asked for could not be proposed (the log refused it): ask
    /// again at the next allocation.
    pub fn bound_not_proposed(&mut self) {
        self.proposed = None;
    }

    #[cfg(feature = "planted-bugs")]
    fn hands_out_beyond_bound(&self) -> bool {
        self.bug == Some(OracleBug::HandOutBeyondBound)
    }

    #[cfg(not(feature = "planted-bugs"))]
    fn hands_out_beyond_bound(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW_MS: u64 = 1_000;

    fn oracle() -> Oracle {
        Oracle::new(OracleConfig {
            window_ms: WINDOW_MS,
        })
    }

    fn ms(physical_ms: u64) -> Timestamp {
        Timestamp::from_physical_ms(physical_ms)
    }

    /// An oracle leading `term` whose first bound (proposed at `now_ms`) has applied.
    fn leading(term: Term, bound: &mut OracleBound, now_ms: u64) -> Oracle {
        let mut oracle = oracle();
        let first = oracle.allocate(term, *bound, now_ms, 1);
        assert_eq!(first.granted, None, "a new leader starts at the bound");
        bound.apply(first.propose_bound.expect("asks for a bound"));
        oracle
    }

    #[test]
    fn a_new_leadership_waits_for_a_bound_above_the_one_it_found() {
        let mut oracle = oracle();
        let bound = OracleBound::new(ms(6_000));
        let allocation = oracle.allocate(Term(1), bound, 5_000, 1);
        assert_eq!(allocation.granted, None);
        // A window ahead of the timestamps it will hand out, the clock being behind.
        assert_eq!(allocation.propose_bound, Some(ms(6_000 + WINDOW_MS)));
        // Asked again before it applies: no second proposal.
        let again = oracle.allocate(Term(1), bound, 5_001, 1);
        assert_eq!(
            again,
            Allocation {
                granted: None,
                propose_bound: None
            }
        );
    }

    #[test]
    fn timestamps_rise_by_one_within_a_millisecond_and_follow_the_clock() {
        let mut bound = OracleBound::new(ms(1_000));
        let mut oracle = leading(Term(1), &mut bound, 900);
        bound.apply(ms(7_000));
        let a = oracle.allocate(Term(1), bound, 5_000, 3).granted.unwrap();
        let b = oracle.allocate(Term(1), bound, 5_000, 1).granted.unwrap();
        assert_eq!(a.first, ms(5_000));
        assert_eq!(b.first, ms(5_000).plus(3));
        // A clock that goes back changes nothing.
        let c = oracle.allocate(Term(1), bound, 4_000, 1).granted.unwrap();
        assert_eq!(c.first, ms(5_000).plus(4));
        let d = oracle.allocate(Term(1), bound, 5_100, 1).granted.unwrap();
        assert_eq!(d.first, ms(5_100));
    }

    #[test]
    fn the_next_bound_is_proposed_half_a_window_early_and_only_once() {
        let mut bound = OracleBound::new(ms(1_000));
        let mut oracle = leading(Term(1), &mut bound, 900);
        bound.apply(ms(6_000));
        let early = oracle.allocate(Term(1), bound, 5_600, 1);
        assert!(early.granted.is_some(), "still below the bound: no wait");
        assert_eq!(early.propose_bound, Some(ms(6_600)));
        let meanwhile = oracle.allocate(Term(1), bound, 5_700, 1);
        assert!(meanwhile.granted.is_some());
        assert_eq!(meanwhile.propose_bound, None, "one proposal in flight");
        bound.apply(ms(6_600));
        let after = oracle.allocate(Term(1), bound, 5_800, 1);
        assert_eq!(
            after.propose_bound, None,
            "6,600 is more than half a window away"
        );
    }

    #[test]
    fn past_the_bound_timestamps_lag_the_clock_and_wait_only_without_room() {
        let mut bound = OracleBound::new(ms(1_000));
        let mut oracle = leading(Term(1), &mut bound, 900);
        bound.apply(ms(6_000));
        let lagging = oracle.allocate(Term(1), bound, 6_500, 2);
        assert_eq!(lagging.granted.unwrap().last(), Timestamp(ms(6_000).0 - 1));
        assert_eq!(lagging.propose_bound, Some(ms(7_500)));
        let no_room = oracle.allocate(Term(1), bound, 6_500, 1);
        assert_eq!(no_room.granted, None, "the bound is reached");
        assert_eq!(no_room.propose_bound, None, "the next is on its way");
        bound.apply(ms(7_500));
        let granted = oracle.allocate(Term(1), bound, 6_500, 1).granted.unwrap();
        assert_eq!(granted.first, ms(6_500), "back with the clock");
    }

    #[test]
    fn a_leader_whose_clock_lags_the_bound_still_hands_out_a_window_per_bound() {
        // The previous leader's clock ran 10 s ahead of this one's.
        let mut bound = OracleBound::new(ms(20_000));
        let mut oracle = oracle();
        let mut proposals = 0;
        let mut granted = 0;
        for request in 0..10_000u64 {
            let allocation = oracle.allocate(Term(2), bound, 10_000 + request / 100, 1);
            if let Some(proposed) = allocation.propose_bound {
                proposals += 1;
                bound.apply(proposed);
            }
            granted += u64::from(allocation.granted.is_some());
        }
        assert_eq!(granted, 10_000 - 1, "only the first waits for a bound");
        assert_eq!(proposals, 1, "one bound covers a window of timestamps");
    }

    #[test]
    fn a_batch_larger_than_the_window_gets_a_bound_above_it() {
        let mut bound = OracleBound::new(ms(1_000));
        let mut oracle = leading(Term(1), &mut bound, 900);
        let huge = (WINDOW_MS + 5) << crate::timestamp::LOGICAL_BITS;
        let allocation = oracle.allocate(Term(1), bound, 1_000, huge);
        assert_eq!(allocation.granted, None);
        let proposed = allocation.propose_bound.unwrap();
        assert!(proposed > ms(1_000).plus(huge - 1));
        bound.apply(proposed);
        assert!(oracle
            .allocate(Term(1), bound, 1_000, huge)
            .granted
            .is_some());
    }

    #[test]
    fn a_new_leader_starts_at_the_bound_above_everything_handed_out_before() {
        let mut bound = OracleBound::new(ms(1_000));
        let mut old = leading(Term(1), &mut bound, 900);
        let handed = old.allocate(Term(1), bound, 1_800, 10).granted.unwrap();
        // The new leader's clock is behind by a second.
        let mut new = oracle();
        let first = new.allocate(Term(2), bound, 800, 1);
        assert_eq!(first.granted, None);
        let found = bound.get();
        bound.apply(first.propose_bound.unwrap());
        let first = new.allocate(Term(2), bound, 800, 1).granted.unwrap();
        assert_eq!(first.first, found);
        assert!(first.first > handed.last());
    }

    #[test]
    fn a_node_leading_again_starts_from_the_bound_not_from_its_earlier_term() {
        let mut bound = OracleBound::new(ms(1_000));
        let mut oracle = leading(Term(1), &mut bound, 900);
        oracle.allocate(Term(1), bound, 1_000, 1).granted.unwrap();
        // Another leader may have handed out up to the bound meanwhile.
        let again = oracle.allocate(Term(3), bound, 1_000, 1);
        assert_eq!(again.granted, None, "1,000.1 could repeat another leader's");
        let found = bound.get();
        bound.apply(again.propose_bound.unwrap());
        let first = oracle.allocate(Term(3), bound, 1_000, 1).granted.unwrap();
        assert_eq!(first.first, found);
    }

    #[test]
    fn bounds_only_rise() {
        let mut bound = OracleBound::new(ms(10));
        bound.apply(ms(5));
        assert_eq!(bound.get(), ms(10));
        bound.apply(ms(20));
        assert_eq!(bound.get(), ms(20));
    }

    #[test]
    #[should_panic(expected = "after term")]
    fn an_older_term_is_a_bug() {
        let mut oracle = oracle();
        let bound = OracleBound::new(ms(6_000));
        oracle.allocate(Term(2), bound, 5_000, 1);
        oracle.allocate(Term(1), bound, 5_000, 1);
    }

    #[test]
    fn the_planted_bug_hands_out_at_the_bound() {
        let mut oracle = oracle().with_bug(Some(OracleBug::HandOutBeyondBound));
        let bound = OracleBound::new(ms(6_000));
        let allocation = oracle.allocate(Term(1), bound, 6_500, 1);
        assert_eq!(allocation.granted.unwrap().first, ms(6_500));
        assert!(
            allocation.propose_bound.is_some(),
            "and asks for the next bound"
        );
    }
}
