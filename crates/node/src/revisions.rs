//! Revisions from the oracle for the writes of ranges that split (docs/RANGES.md,
//! "Revisions from the oracle").
//!
//! The rules are the range layer's (`ostrakon_ranges::read_wait`, run by the simulator
//! too); this module adapts them to the node's requests and answers.
//!
//! A write to such a range waits here until the node has timestamps for it: every write
//! that arrived before a fetch started shares that fetch (one request to the oracle for
//! all of them, whatever their ranges), so a write acknowledged before another began
//! always gets the smaller revision, and writes are proposed in timestamp order, so
//! revisions rise in each range's log. One fetch is in flight at a time; writes arriving
//! meanwhile wait for the next.
//!
//! A read at revision R of such a range (the read-wait rule) must not miss a write that
//! commits below R. Its R came from the oracle before the read reached the range's
//! leader, so a fetch the leader starts after that gets timestamps above R; only the
//! fetch in flight when the read arrived can hand out less. So the read waits for that
//! fetch (a *barrier*), after which every write that can take a revision at or below R
//! is in the leader's log. A write is proposed only by the leadership that fetched its
//! revision (same term): another leader's entry could commit after a read that never
//! waited for its fetch.

use ostrakon_proto::peer::WriteRequest;
use ostrakon_raft::{GroupId, Term};
use ostrakon_ranges::read_wait::{Failed, RevisionFetcher as Fetcher, Stamped};
use ostrakon_ranges::TimestampRange;

use crate::error::NodeError;
use crate::handle::TIMESTAMPS_PER_REQUEST_MAX;
use crate::input::{FreshReadResponder, ReadResponder, WriteResponder};

/// Writes waiting for the next fetch on a node at most (the event loop's input bound).
const WRITES_WAITING_MAX: usize = 65_536;

/// A write waiting for its revision.
pub struct WaitingWrite {
    /// Its range.
    pub group: GroupId,
    /// The write; its `revision` is set once granted.
    pub write: WriteRequest,
    /// Its proposer.
    pub respond: WriteResponder,
    /// The range leader's term when the write arrived: it is proposed in that term only.
    pub term: Term,
}

/// A read barrier waiting for the fetch in flight when it arrived.
pub struct WaitingBarrier {
    /// Its range.
    pub group: GroupId,
    /// Answered with the index to read at, once released.
    pub respond: ReadResponder,
    /// The word of the member it came from, if another (`crate::member_word`).
    pub word: Option<crate::member_word::MemberWord>,
}

/// A linearizable read of the range's current state, on its leader: it takes the last
/// timestamp of the next fetch as its revision R, so it is answered after that fetch's
/// writes are proposed, as a barrier at R would be (`Input::FreshReadPoint`).
pub struct WaitingFreshRead {
    /// Its range.
    pub group: GroupId,
    /// Answered with R and the index to read at.
    pub respond: FreshReadResponder,
    /// The range leader's term when the read arrived: answered in that term only.
    pub term: Term,
}

impl Stamped for WaitingWrite {
    fn stamp(&mut self, revision: u64) {
        self.write.revision = i64::try_from(revision).expect("timestamps stay below 2^63");
    }
}

/// The writes waiting for revisions, and the fetch in flight: the range layer's rules
/// (`ostrakon_ranges::read_wait`), answering with the node's errors what they hand back.
pub struct RevisionFetcher(Fetcher<WaitingWrite, WaitingBarrier, WaitingFreshRead>);

impl Default for RevisionFetcher {
    fn default() -> Self {
        RevisionFetcher(Fetcher::new(TIMESTAMPS_PER_REQUEST_MAX))
    }
}

impl RevisionFetcher {
    /// A read barrier: returned at once if no fetch is in flight, else kept until it is
    /// answered (`granted` hands it back).
    pub fn barrier(&mut self, barrier: WaitingBarrier) -> Option<WaitingBarrier> {
        self.0.barrier(barrier)
    }

    /// The barriers the last answered fetch released (call after `granted`, once its
    /// writes are proposed).
    pub fn released_barriers(&mut self) -> Vec<WaitingBarrier> {
        self.0.released_barriers()
    }

    /// Queues a write until the next fetch is granted; answers it "too many requests"
    /// if `WRITES_WAITING_MAX` wait already (an oracle slow to answer would otherwise
    /// let them pile up without bound: a fetch takes at most 1,024).
    pub fn wait(&mut self, waiting: WaitingWrite) {
        if self.0.waiting_writes() >= WRITES_WAITING_MAX {
            crate::metrics::metrics()
                .writes_refused_waiting_revisions
                .inc();
            let _ = waiting.respond.send(Err(NodeError::Overloaded));
            return;
        }
        self.0.wait(waiting);
    }

    /// Queues a fresh read until the next fetch is granted.
    pub fn wait_fresh(&mut self, read: WaitingFreshRead) {
        self.0.wait_fresh(read);
    }

    /// The fresh reads the last answered fetch released, with their revision (call after
    /// `granted`, once its writes are proposed).
    pub fn released_fresh_reads(&mut self) -> Vec<(WaitingFreshRead, u64)> {
        self.0.released_fresh_reads()
    }

    /// The ranges of the fresh reads the fetch in flight is for, at most `max` of them
    /// (the ranges whose leadership the oracle's grant may vouch for).
    pub fn fresh_read_ranges_in_flight(&self, max: usize) -> Vec<GroupId> {
        let mut groups: Vec<GroupId> = Vec::new();
        for read in self.0.reads_in_flight() {
            if groups.len() == max {
                break;
            }
            if !groups.contains(&read.group) {
                groups.push(read.group);
            }
        }
        groups
    }

    /// If no fetch is in flight and writes or fresh reads wait: starts one for them,
    /// returning its number and how many timestamps it needs.
    pub fn start(&mut self) -> Option<(u64, u64)> {
        self.0.start()
    }

    /// The oracle's answer to fetch `fetch`: the writes with their revisions, in
    /// timestamp order (to be proposed in that order), or, if it failed, nothing (its
    /// writes were answered with the error).
    pub fn granted(
        &mut self,
        fetch: u64,
        granted: Result<TimestampRange, NodeError>,
    ) -> Vec<WaitingWrite> {
        let (range, error) = match granted {
            Ok(range) => (Some(range), None),
            Err(error) => (None, Some(error)),
        };
        match self.0.granted(fetch, range) {
            Ok(writes) => writes,
            Err(Failed { writes, reads }) => {
                let error = error.expect("a fetch fails with an error");
                for waiting in writes {
                    let _ = waiting.respond.send(Err(error.clone()));
                }
                for read in reads {
                    let _ = read.respond.send(Err(error.clone()));
                }
                Vec::new()
            }
        }
    }

    /// Fails every waiting write (on shutdown).
    pub fn fail_all(&mut self, error: NodeError) {
        let drained = self.0.drain();
        for waiting in drained.writes {
            let _ = waiting.respond.send(Err(error.clone()));
        }
        for read in drained.reads {
            let _ = read.respond.send(Err(error.clone()));
        }
        for barrier in drained.barriers {
            let _ = barrier.respond.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_ranges::Timestamp;

    type Answer =
        tokio::sync::oneshot::Receiver<Result<ostrakon_storage::mvcc::WriteOutcome, NodeError>>;

    fn waiting(group: u64, id: u64) -> (WaitingWrite, Answer) {
        let (respond, answer) = tokio::sync::oneshot::channel();
        let write = WriteRequest {
            id,
            ..Default::default()
        };
        (
            WaitingWrite {
                group: GroupId(group),
                write,
                respond,
                term: Term(1),
            },
            answer,
        )
    }

    #[test]
    fn writes_share_a_fetch_in_arrival_order_and_later_ones_wait_for_the_next() {
        let mut fetcher = RevisionFetcher::default();
        assert_eq!(fetcher.start(), None);
        let mut answers = Vec::new();
        for (group, id) in [(1, 1), (2, 2), (1, 3)] {
            let (w, answer) = waiting(group, id);
            fetcher.wait(w);
            answers.push(answer);
        }
        let (fetch, count) = fetcher.start().expect("writes wait");
        assert_eq!(count, 3);
        let (late, _late_answer) = waiting(2, 4);
        fetcher.wait(late);
        assert_eq!(fetcher.start(), None, "one fetch in flight");
        let first = Timestamp::from_physical_ms(1_000);
        let granted = fetcher.granted(fetch, Ok(TimestampRange { first, count: 3 }));
        let stamped: Vec<(u64, u64, i64)> = granted
            .iter()
            .map(|w| (w.group.0, w.write.id, w.write.revision))
            .collect();
        let base = first.0 as i64;
        assert_eq!(
            stamped,
            vec![(1, 1, base), (2, 2, base + 1), (1, 3, base + 2)]
        );
        assert_eq!(fetcher.start().map(|(_, count)| count), Some(1));
    }

    #[test]
    fn writes_beyond_the_bound_are_answered_too_many_requests() {
        let mut fetcher = RevisionFetcher::default();
        let mut answers = Vec::new();
        for id in 0..=WRITES_WAITING_MAX as u64 {
            let (w, answer) = waiting(1, id);
            fetcher.wait(w);
            answers.push(answer);
        }
        let mut last = answers.pop().unwrap();
        assert!(matches!(last.try_recv(), Ok(Err(NodeError::Overloaded))));
        assert!(answers[0].try_recv().is_err(), "the first waits");
        let (_, count) = fetcher.start().expect("writes wait");
        assert_eq!(count, TIMESTAMPS_PER_REQUEST_MAX);
    }

    type FreshAnswer =
        tokio::sync::oneshot::Receiver<Result<(ostrakon_raft::LogIndex, u64), NodeError>>;

    fn fresh_read(group: u64) -> (WaitingFreshRead, FreshAnswer) {
        let (respond, answer) = tokio::sync::oneshot::channel();
        let read = WaitingFreshRead {
            group: GroupId(group),
            respond,
            term: Term(1),
        };
        (read, answer)
    }

    #[test]
    fn fresh_reads_take_the_last_timestamp_of_the_next_fetch_never_the_one_in_flight() {
        let mut fetcher = RevisionFetcher::default();
        let (w, _answer) = waiting(1, 1);
        fetcher.wait(w);
        let (fetch, count) = fetcher.start().unwrap();
        assert_eq!(count, 1);
        // Arrived while fetch 1 is in flight: it may have been answered before.
        let (read, _read_answer) = fresh_read(1);
        fetcher.wait_fresh(read);
        let (other, _other_answer) = fresh_read(2);
        fetcher.wait_fresh(other);
        let (w, _answer) = waiting(1, 2);
        fetcher.wait(w);
        assert_eq!(fetcher.start(), None, "one fetch in flight");
        let first = Timestamp::from_physical_ms(1_000);
        assert_eq!(
            fetcher
                .granted(fetch, Ok(TimestampRange { first, count: 1 }))
                .len(),
            1
        );
        assert!(fetcher.released_fresh_reads().is_empty());
        // The next fetch: one timestamp for the write, one the two reads share, above it.
        let (fetch, count) = fetcher.start().unwrap();
        assert_eq!(count, 2);
        let first = Timestamp::from_physical_ms(2_000);
        let writes = fetcher.granted(fetch, Ok(TimestampRange { first, count: 2 }));
        assert_eq!(writes[0].write.revision, first.0 as i64);
        let reads = fetcher.released_fresh_reads();
        let revisions: Vec<(u64, u64)> = reads.iter().map(|(r, at)| (r.group.0, *at)).collect();
        assert_eq!(revisions, vec![(1, first.0 + 1), (2, first.0 + 1)]);
        assert!(fetcher.released_fresh_reads().is_empty());

        // Reads alone start a fetch; a failed one answers them with its error.
        let (read, mut read_answer) = fresh_read(1);
        fetcher.wait_fresh(read);
        let (fetch, count) = fetcher.start().unwrap();
        assert_eq!(count, 1);
        assert!(fetcher.granted(fetch, Err(NodeError::Timeout)).is_empty());
        assert!(fetcher.released_fresh_reads().is_empty());
        assert_eq!(read_answer.try_recv().unwrap(), Err(NodeError::Timeout));
    }

    #[test]
    fn a_failed_fetch_answers_its_writes_with_the_error() {
        let mut fetcher = RevisionFetcher::default();
        let (w, mut answer) = waiting(1, 1);
        fetcher.wait(w);
        let (fetch, _) = fetcher.start().unwrap();
        assert!(fetcher.granted(fetch, Err(NodeError::Timeout)).is_empty());
        assert_eq!(answer.try_recv().unwrap(), Err(NodeError::Timeout));
        assert_eq!(fetcher.start(), None);
    }

    #[test]
    fn a_barrier_waits_only_for_the_fetch_in_flight_when_it_arrived() {
        let mut fetcher = RevisionFetcher::default();
        let barrier = || {
            let (respond, answer) = tokio::sync::oneshot::channel();
            (
                WaitingBarrier {
                    group: GroupId(2),
                    respond,
                    word: None,
                },
                answer,
            )
        };
        let (first, _answer) = barrier();
        assert!(fetcher.barrier(first).is_some(), "no fetch in flight");
        let (w, _answer) = waiting(2, 1);
        fetcher.wait(w);
        let (queued, _queued_answer) = barrier();
        assert!(
            fetcher.barrier(queued).is_some(),
            "a queued write's fetch starts after the barrier arrived"
        );
        let (fetch, _) = fetcher.start().unwrap();
        let (held, _held_answer) = barrier();
        assert!(
            fetcher.barrier(held).is_none(),
            "held for the fetch in flight"
        );
        let first = Timestamp::from_physical_ms(1_000);
        assert_eq!(
            fetcher
                .granted(fetch, Ok(TimestampRange { first, count: 1 }))
                .len(),
            1
        );
        assert_eq!(fetcher.released_barriers().len(), 1);
        assert!(fetcher.released_barriers().is_empty());

        // A failed fetch releases its barriers too, and shutdown answers those held.
        let (w, _answer) = waiting(2, 2);
        fetcher.wait(w);
        let (fetch, _) = fetcher.start().unwrap();
        let (held, _held_answer) = barrier();
        assert!(fetcher.barrier(held).is_none());
        assert!(fetcher.granted(fetch, Err(NodeError::Timeout)).is_empty());
        assert_eq!(fetcher.released_barriers().len(), 1);
        let (w, _answer) = waiting(2, 3);
        fetcher.wait(w);
        fetcher.start().unwrap();
        let (held, mut held_answer) = barrier();
        assert!(fetcher.barrier(held).is_none());
        fetcher.fail_all(NodeError::Stopped);
        assert_eq!(held_answer.try_recv().unwrap(), Err(NodeError::Stopped));
    }
}
