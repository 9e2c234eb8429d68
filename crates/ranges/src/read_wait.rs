//! Revisions from the oracle for the writes of a keyspace in ranges, and the read-wait
//! rule (docs/RANGES.md, "Revisions from the oracle"): the node's bookkeeping of the
//! writes waiting for revisions, the fetch in flight, and the reads that wait for it,
//! as a plain state machine over the node's own types (`W` a write, `B` a read barrier,
//! `R` a fresh read), so that the simulator can run the same rules.
//!
//! Invariants, and why:
//! - *Every write that arrived before a fetch started shares that fetch* (one request to
//!   the oracle for all of them, whatever their ranges), and one fetch is in flight at a
//!   time: a write acknowledged before another began got its revision from an earlier
//!   fetch, so it has the smaller revision. The writes are stamped in arrival order and
//!   proposed in timestamp order, so revisions rise in each range's log.
//! - *A read at revision R waits for the fetch in flight when it arrived* (a barrier).
//!   Its R came from the oracle before it reached the range's leader, so a fetch started
//!   after that gets timestamps above R; only the fetch in flight can hand out less. Once
//!   that fetch's writes are proposed, every write that can take a revision at or below
//!   R is in the leader's log, and the read waits for them to apply.
//! - *A fresh read (a linearizable read of the current state) takes the last timestamp
//!   of the next fetch*, never of the one in flight: that one may have been answered
//!   before the read arrived, and a write acknowledged before the read began could then
//!   carry a higher revision than the read's.

use crate::timestamp::TimestampRange;
use ostrakon_raft::Term;

/// What a range's replica does with a write once the fetch its leader started for it is
/// granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantStep {
    /// It still leads in the term that fetched: propose the write at its revision.
    Propose,
    /// It leads again, in a later term: a read barrier of that leadership did not wait
    /// for this fetch, so the write takes a new revision, fetched now.
    FetchAgain,
    /// It no longer leads: the write was never proposed (the client may retry).
    NotLeader,
}

/// The grant's leadership check: `leading_in` is the term the replica leads in now (None
/// if it does not lead), `fetched_in` the term its leader fetched the revision in.
pub fn grant_step(leading_in: Option<Term>, fetched_in: Term) -> GrantStep {
    match leading_in {
        Some(term) if term == fetched_in => GrantStep::Propose,
        Some(term) => {
            assert!(term > fetched_in, "a leader's term went back");
            GrantStep::FetchAgain
        }
        None => GrantStep::NotLeader,
    }
}

/// A write that takes a revision.
pub trait Stamped {
    /// Sets the write's revision, granted by the oracle.
    fn stamp(&mut self, revision: u64);
}

/// The fetch in flight, and who it is for.
#[derive(Debug)]
struct InFlight<W, R> {
    number: u64,
    writes: Vec<W>,
    reads: Vec<R>,
}

/// What a failed fetch leaves to answer with its error.
#[derive(Debug)]
pub struct Failed<W, R> {
    /// The writes it was for.
    pub writes: Vec<W>,
    /// The fresh reads it was for.
    pub reads: Vec<R>,
}

/// Everything waiting, handed back on shutdown to be answered.
#[derive(Debug)]
pub struct Drained<W, B, R> {
    /// Writes waiting for a fetch or in the one in flight.
    pub writes: Vec<W>,
    /// Barriers held for the fetch in flight.
    pub barriers: Vec<B>,
    /// Fresh reads waiting, in flight, or released and not yet taken.
    pub reads: Vec<R>,
}

/// The writes waiting for revisions, the fetch in flight, and the reads waiting on it.
#[derive(Debug)]
pub struct RevisionFetcher<W, B, R> {
    /// At most this many timestamps per fetch (the oracle's limit per request).
    timestamps_per_fetch_max: u64,
    waiting: Vec<W>,
    /// Fresh reads waiting for the next fetch.
    waiting_reads: Vec<R>,
    in_flight: Option<InFlight<W, R>>,
    next_fetch: u64,
    /// Barriers waiting for the fetch in flight.
    barriers: Vec<B>,
    /// Fresh reads the last answered fetch released, with their revision.
    released_reads: Vec<(R, u64)>,
    #[cfg(feature = "planted-bugs")]
    bug: Option<crate::RangeBug>,
}

impl<W: Stamped, B, R> RevisionFetcher<W, B, R> {
    /// A fetcher asking at most `timestamps_per_fetch_max` timestamps at a time.
    pub fn new(timestamps_per_fetch_max: u64) -> Self {
        assert!(
            timestamps_per_fetch_max >= 2,
            "a fetch must fit a write and the fresh reads"
        );
        RevisionFetcher {
            timestamps_per_fetch_max,
            waiting: Vec::new(),
            waiting_reads: Vec::new(),
            in_flight: None,
            next_fetch: 0,
            barriers: Vec::new(),
            released_reads: Vec::new(),
            #[cfg(feature = "planted-bugs")]
            bug: None,
        }
    }

    /// A fetcher with a bug planted.
    #[cfg(feature = "planted-bugs")]
    pub fn with_bug(timestamps_per_fetch_max: u64, bug: Option<crate::RangeBug>) -> Self {
        RevisionFetcher {
            bug,
            ..Self::new(timestamps_per_fetch_max)
        }
    }

    /// The fresh reads the fetch in flight is for (none if no fetch is in flight).
    pub fn reads_in_flight(&self) -> &[R] {
        self.in_flight
            .as_ref()
            .map_or(&[], |in_flight| &in_flight.reads)
    }

    /// Whether a fetch is in flight (a barrier asked now is held for it).
    pub fn fetch_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A read barrier: returned at once if no fetch is in flight, else kept until that
    /// fetch is answered (`released_barriers` hands it back).
    pub fn barrier(&mut self, barrier: B) -> Option<B> {
        if self.in_flight.is_none() {
            return Some(barrier);
        }
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(crate::RangeBug::BarrierSkipsFetchInFlight) {
            return Some(barrier);
        }
        self.barriers.push(barrier);
        None
    }

    /// The barriers the last answered fetch released (call after `granted`, once its
    /// writes are proposed).
    pub fn released_barriers(&mut self) -> Vec<B> {
        assert!(
            self.in_flight.is_none() || self.barriers.is_empty(),
            "barriers released while their fetch is in flight"
        );
        std::mem::take(&mut self.barriers)
    }

    /// Queues a write until the next fetch is granted.
    pub fn wait(&mut self, write: W) {
        self.waiting.push(write);
    }

    /// Writes waiting for the next fetch (not those of the fetch in flight).
    pub fn waiting_writes(&self) -> usize {
        self.waiting.len()
    }

    /// Queues a fresh read until the next fetch is granted.
    pub fn wait_fresh(&mut self, read: R) {
        #[cfg(feature = "planted-bugs")]
        if self.bug == Some(crate::RangeBug::FreshReadTakesFetchInFlight) {
            // Joins the fetch in flight if that one has a timestamp for reads already.
            if let Some(in_flight) = self.in_flight.as_mut().filter(|f| !f.reads.is_empty()) {
                in_flight.reads.push(read);
                return;
            }
        }
        self.waiting_reads.push(read);
    }

    /// The fresh reads the last answered fetch released, with their revision (call after
    /// `granted`, once its writes are proposed).
    pub fn released_fresh_reads(&mut self) -> Vec<(R, u64)> {
        std::mem::take(&mut self.released_reads)
    }

    /// If no fetch is in flight and writes or fresh reads wait: starts one for them (at
    /// most `timestamps_per_fetch_max` timestamps: one per write, and one the reads
    /// share), returning its number and how many timestamps it needs.
    pub fn start(&mut self) -> Option<(u64, u64)> {
        if self.in_flight.is_some() || (self.waiting.is_empty() && self.waiting_reads.is_empty()) {
            return None;
        }
        let for_reads = u64::from(!self.waiting_reads.is_empty());
        let room = usize::try_from(self.timestamps_per_fetch_max - for_reads).unwrap_or(usize::MAX);
        let count = self.waiting.len().min(room);
        let rest = self.waiting.split_off(count);
        let writes = std::mem::replace(&mut self.waiting, rest);
        self.next_fetch += 1;
        self.in_flight = Some(InFlight {
            number: self.next_fetch,
            writes,
            reads: std::mem::take(&mut self.waiting_reads),
        });
        Some((self.next_fetch, count as u64 + for_reads))
    }

    /// The oracle's answer to fetch `fetch`: the writes stamped with their revisions, in
    /// timestamp order (to be proposed in that order); or, if it failed (`None`), what
    /// it was for, to be answered with the error. Either way its barriers are released.
    pub fn granted(
        &mut self,
        fetch: u64,
        granted: Option<TimestampRange>,
    ) -> Result<Vec<W>, Failed<W, R>> {
        let Some(InFlight {
            number,
            writes,
            reads,
        }) = self.in_flight.take()
        else {
            panic!("revisions granted for fetch {fetch} with none in flight");
        };
        assert_eq!(number, fetch, "the answer of another fetch");
        assert!(
            self.released_reads.is_empty(),
            "fresh reads left unreleased"
        );
        let Some(range) = granted else {
            return Err(Failed { writes, reads });
        };
        assert_eq!(
            range.count,
            writes.len() as u64 + u64::from(!reads.is_empty()),
            "the oracle granted another count"
        );
        // The reads take the last timestamp: above every write of the fetch.
        let read_revision = range.first.plus(range.count - 1).0;
        self.released_reads = reads
            .into_iter()
            .map(|read| (read, read_revision))
            .collect();
        Ok(writes
            .into_iter()
            .enumerate()
            .map(|(i, mut write)| {
                write.stamp(range.first.plus(i as u64).0);
                write
            })
            .collect())
    }

    /// Everything waiting, handed back to be answered (on shutdown).
    pub fn drain(&mut self) -> Drained<W, B, R> {
        let (in_flight_writes, in_flight_reads) = match self.in_flight.take() {
            Some(in_flight) => (in_flight.writes, in_flight.reads),
            None => (Vec::new(), Vec::new()),
        };
        let writes = self.waiting.drain(..).chain(in_flight_writes).collect();
        let released = self.released_reads.drain(..).map(|(read, _)| read);
        let reads = self
            .waiting_reads
            .drain(..)
            .chain(in_flight_reads)
            .chain(released)
            .collect();
        Drained {
            writes,
            barriers: self.barriers.drain(..).collect(),
            reads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    /// A write: its id and the revision it was stamped with.
    #[derive(Debug, PartialEq)]
    struct Write(u64, Option<u64>);

    impl Stamped for Write {
        fn stamp(&mut self, revision: u64) {
            self.1 = Some(revision);
        }
    }

    type Fetcher = RevisionFetcher<Write, &'static str, &'static str>;

    #[test]
    fn writes_share_a_fetch_in_arrival_order_and_later_ones_wait_for_the_next() {
        let mut fetcher = Fetcher::new(16);
        assert_eq!(fetcher.start(), None);
        for id in 1..=3 {
            fetcher.wait(Write(id, None));
        }
        let (fetch, count) = fetcher.start().expect("writes wait");
        assert_eq!(count, 3);
        fetcher.wait(Write(4, None));
        assert_eq!(fetcher.start(), None, "one fetch in flight");
        let first = Timestamp::from_physical_ms(1_000);
        let stamped = fetcher
            .granted(fetch, Some(TimestampRange { first, count: 3 }))
            .unwrap();
        let base = first.0;
        assert_eq!(
            stamped,
            vec![
                Write(1, Some(base)),
                Write(2, Some(base + 1)),
                Write(3, Some(base + 2))
            ]
        );
        assert_eq!(fetcher.start().map(|(_, count)| count), Some(1));
    }

    #[test]
    fn a_fetch_asks_at_most_its_limit_keeping_one_for_the_fresh_reads() {
        let mut fetcher = Fetcher::new(3);
        for id in 1..=5 {
            fetcher.wait(Write(id, None));
        }
        fetcher.wait_fresh("read");
        let (fetch, count) = fetcher.start().unwrap();
        assert_eq!(count, 3, "two writes and the reads' one");
        let first = Timestamp::from_physical_ms(1_000);
        let writes = fetcher
            .granted(fetch, Some(TimestampRange { first, count: 3 }))
            .unwrap();
        assert_eq!(writes.len(), 2);
        assert_eq!(fetcher.released_fresh_reads(), vec![("read", first.0 + 2)]);
        assert_eq!(fetcher.start().map(|(_, count)| count), Some(3));
    }

    #[test]
    fn fresh_reads_take_the_last_timestamp_of_the_next_fetch_never_the_one_in_flight() {
        let mut fetcher = Fetcher::new(16);
        fetcher.wait(Write(1, None));
        let (fetch, _) = fetcher.start().unwrap();
        // Arrived while fetch 1 is in flight: it may have been answered before.
        fetcher.wait_fresh("late read");
        let first = Timestamp::from_physical_ms(1_000);
        let granted = fetcher.granted(fetch, Some(TimestampRange { first, count: 1 }));
        assert_eq!(granted.unwrap().len(), 1);
        assert!(fetcher.released_fresh_reads().is_empty());
        let (fetch, count) = fetcher.start().unwrap();
        assert_eq!(count, 1, "the reads alone start a fetch");
        let first = Timestamp::from_physical_ms(2_000);
        assert!(fetcher
            .granted(fetch, Some(TimestampRange { first, count: 1 }))
            .unwrap()
            .is_empty());
        assert_eq!(fetcher.released_fresh_reads(), vec![("late read", first.0)]);
    }

    #[test]
    fn the_planted_bug_lets_a_fresh_read_join_the_fetch_in_flight() {
        let mut fetcher = Fetcher::with_bug(16, Some(crate::RangeBug::FreshReadTakesFetchInFlight));
        fetcher.wait_fresh("first");
        let (fetch, count) = fetcher.start().unwrap();
        assert_eq!(count, 1);
        fetcher.wait_fresh("late");
        let first = Timestamp::from_physical_ms(1_000);
        let granted = fetcher.granted(fetch, Some(TimestampRange { first, count: 1 }));
        assert!(granted.unwrap().is_empty());
        assert_eq!(
            fetcher.released_fresh_reads(),
            vec![("first", first.0), ("late", first.0)]
        );
    }

    #[test]
    fn only_the_leadership_that_fetched_proposes() {
        assert_eq!(grant_step(Some(Term(3)), Term(3)), GrantStep::Propose);
        assert_eq!(grant_step(Some(Term(4)), Term(3)), GrantStep::FetchAgain);
        assert_eq!(grant_step(None, Term(3)), GrantStep::NotLeader);
    }

    #[test]
    fn the_planted_bug_lets_a_barrier_pass_the_fetch_in_flight() {
        let mut fetcher = Fetcher::with_bug(16, Some(crate::RangeBug::BarrierSkipsFetchInFlight));
        fetcher.wait(Write(1, None));
        fetcher.start().unwrap();
        assert_eq!(fetcher.barrier("passes"), Some("passes"));
    }

    #[test]
    fn a_barrier_waits_only_for_the_fetch_in_flight_when_it_arrived() {
        let mut fetcher = Fetcher::new(16);
        assert_eq!(fetcher.barrier("idle"), Some("idle"), "no fetch in flight");
        fetcher.wait(Write(1, None));
        assert_eq!(
            fetcher.barrier("queued"),
            Some("queued"),
            "a queued write's fetch starts after the barrier arrived"
        );
        let (fetch, _) = fetcher.start().unwrap();
        assert_eq!(fetcher.barrier("held"), None);
        let failed = fetcher.granted(fetch, None).unwrap_err();
        assert_eq!(failed.writes, vec![Write(1, None)]);
        assert_eq!(fetcher.released_barriers(), vec!["held"]);
        // Shutdown hands back whatever waits.
        fetcher.wait(Write(2, None));
        fetcher.start().unwrap();
        assert_eq!(fetcher.barrier("at shutdown"), None);
        fetcher.wait_fresh("read");
        let drained = fetcher.drain();
        assert_eq!(drained.writes, vec![Write(2, None)]);
        assert_eq!(drained.barriers, vec!["at shutdown"]);
        assert_eq!(drained.reads, vec!["read"]);
    }
}
