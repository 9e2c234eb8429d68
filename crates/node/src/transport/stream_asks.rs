//! The table of requests sent to a peer on the stream that carries raft messages and
//! waiting for their answers on the peer's stream back (the oracle's asks, read points):
//! shared by `timestamp_asks` and `read_point_asks`, which say what rides the streams.
//!
//! Streams drop what they cannot carry (a full queue, a broken connection), so a
//! request unanswered within its timeout is asked again by the caller's unary call. A
//! member of an earlier version ignores such requests: after `MISSES_BEFORE_UNARY` in a
//! row go unanswered, and none of its answers came for `ANSWERED_RECENTLY`, it is asked
//! by unary calls only, for `UNARY_ONLY_FOR`. One lost request (a restarted peer's
//! stream drops what was queued) is not enough, nor are slow answers: a leader that
//! answers late under load still answers (a review found several requests to one
//! leader timing out together turned the streams off for 30 s).
//!
//! Ids start at a random number in each process: an answer queued for a process that
//! crashed must not match a request of its successor.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ostrakon_raft::NodeId;
use tokio::sync::oneshot;

/// Unanswered requests in a row after which a member is asked by unary calls only.
const MISSES_BEFORE_UNARY: u32 = 3;
/// How long a member that stopped answering is asked by unary calls only.
const UNARY_ONLY_FOR: Duration = Duration::from_secs(30);
/// A member that answered within this long answers: its misses are slow answers.
const ANSWERED_RECENTLY: Duration = Duration::from_secs(5);

/// Requests waiting for their answers (`T`), and what is known of each peer's answering.
pub(super) struct StreamAsks<T> {
    next_id: AtomicU64,
    /// Request id to the member asked and its waiter.
    waiting: Mutex<HashMap<u64, (NodeId, oneshot::Sender<T>)>>,
    /// Each member's unanswered requests in a row.
    misses: Mutex<HashMap<NodeId, u32>>,
    /// When each member last answered a request, late ones included.
    last_answer: Mutex<HashMap<NodeId, Instant>>,
    /// Members asked by unary calls only until then.
    unary_only: Mutex<HashMap<NodeId, Instant>>,
}

impl<T> Default for StreamAsks<T> {
    fn default() -> StreamAsks<T> {
        // Random per process (the standard library seeds it from the OS).
        let first_id = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        StreamAsks {
            next_id: AtomicU64::new(first_id),
            waiting: Mutex::default(),
            misses: Mutex::default(),
            last_answer: Mutex::default(),
            unary_only: Mutex::default(),
        }
    }
}

/// A request in the table: removed however its wait ends (a caller that gives up drops
/// the wait mid-way).
pub(super) struct Pending<'a, T> {
    asks: &'a StreamAsks<T>,
    /// The request's id, to send with it.
    pub id: u64,
    peer: NodeId,
    answer: oneshot::Receiver<T>,
}

impl<T> Drop for Pending<'_, T> {
    fn drop(&mut self) {
        self.asks.waiting.lock().unwrap().remove(&self.id);
    }
}

impl<T> Pending<'_, T> {
    /// The answer, or None if none came within `timeout` (a miss of the peer). The
    /// request stays in the table: its answer may still come (`late_answer`).
    pub async fn answer(&mut self, timeout: Duration) -> Option<T> {
        match tokio::time::timeout(timeout, &mut self.answer).await {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(_)) => unreachable!("a waiter leaves the table only to be answered"),
            Err(_) => {
                self.asks.missed(self.peer);
                None
            }
        }
    }

    /// The answer, however late (the caller bounds the wait).
    pub async fn late_answer(&mut self) -> T {
        match (&mut self.answer).await {
            Ok(answer) => answer,
            Err(_) => unreachable!("a waiter leaves the table only to be answered"),
        }
    }
}

impl<T> StreamAsks<T> {
    /// A request to `peer` went unanswered in time.
    fn missed(&self, peer: NodeId) {
        let answered_recently = self
            .last_answer
            .lock()
            .unwrap()
            .get(&peer)
            .is_some_and(|at| at.elapsed() < ANSWERED_RECENTLY);
        let mut misses = self.misses.lock().unwrap();
        let missed = misses.entry(peer).or_default();
        *missed += 1;
        if *missed >= MISSES_BEFORE_UNARY && !answered_recently {
            *missed = 0;
            let until = Instant::now() + UNARY_ONLY_FOR;
            self.unary_only.lock().unwrap().insert(peer, until);
        }
    }

    /// Whether `peer` is asked by unary calls only for now.
    pub fn unary_only(&self, peer: NodeId) -> bool {
        let mut unary_only = self.unary_only.lock().unwrap();
        match unary_only.get(&peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                unary_only.remove(&peer);
                false
            }
            None => false,
        }
    }

    /// A new request to `peer`, in the table until its `Pending` is dropped.
    pub fn ask(&self, peer: NodeId) -> Pending<'_, T> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (waiter, answer) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, (peer, waiter));
        Pending {
            asks: self,
            id,
            peer,
            answer,
        }
    }

    /// The waiter of request `id`, if `from` was asked it and it still waits (else the
    /// answer is late, or from a member that was not asked). Any answer from `from`
    /// shows it answers: its misses are forgotten.
    pub fn answered(&self, from: NodeId, id: u64) -> Option<oneshot::Sender<T>> {
        self.misses.lock().unwrap().remove(&from);
        self.last_answer
            .lock()
            .unwrap()
            .insert(from, Instant::now());
        let mut waiting = self.waiting.lock().unwrap();
        match waiting.get(&id) {
            Some((asked, _)) if *asked == from => waiting.remove(&id).map(|(_, waiter)| waiter),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(1);

    /// A leader that answers late under load stays on the stream; one that never
    /// answers (an earlier version) is asked by unary calls after three misses. A review
    /// found three requests timing out together turned a loaded leader's streams off.
    #[tokio::test]
    async fn only_a_peer_that_never_answers_is_asked_by_calls_alone() {
        let asks: StreamAsks<u32> = StreamAsks::default();
        let (slow, silent) = (NodeId(1), NodeId(2));
        let mut late = asks.ask(slow);
        assert!(late.answer(SOON).await.is_none());
        let waiter = asks
            .answered(slow, late.id)
            .expect("a late answer still waited for");
        waiter.send(7).unwrap();
        assert_eq!(late.late_answer().await, 7);
        for _ in 0..MISSES_BEFORE_UNARY {
            assert!(asks.ask(slow).answer(SOON).await.is_none());
            assert!(asks.ask(silent).answer(SOON).await.is_none());
        }
        assert!(
            !asks.unary_only(slow),
            "a peer that answers lost its stream asks"
        );
        assert!(
            asks.unary_only(silent),
            "a peer that never answers is still asked"
        );
        // An answer to another member's request, or an unknown one, is nobody's.
        let request = asks.ask(slow);
        assert!(asks.answered(silent, request.id).is_none());
        assert!(asks.answered(slow, request.id + 1).is_none());
        assert!(asks.answered(slow, request.id).is_some());
    }
}
