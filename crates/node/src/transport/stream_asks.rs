//! The table of requests sent to a peer on the stream that carries raft messages and
//! waiting for their answers on the peer's stream back (the oracle's asks, read points):
//! shared by `timestamp_asks` and `read_point_asks`, which say what rides the streams.
//!
//! Streams drop what they cannot carry (a full queue, a broken connection), so a
//! request unanswered within its timeout is asked again by the caller's unary call. A
//! member of an earlier version ignores such requests: after `MISSES_BEFORE_UNARY` in a
//! row go unanswered, it is asked by unary calls only, for `UNARY_ONLY_FOR` (one lost
//! request, as when a restarted peer's stream drops what was queued, is not enough).
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

/// Requests waiting for their answers (`T`), and what is known of each peer's answering.
pub(super) struct StreamAsks<T> {
    next_id: AtomicU64,
    /// Request id to the member asked and its waiter.
    waiting: Mutex<HashMap<u64, (NodeId, oneshot::Sender<T>)>>,
    /// Each member's unanswered requests in a row.
    misses: Mutex<HashMap<NodeId, u32>>,
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
    /// The answer, or None if none came within `timeout` (counted as a miss of the peer).
    pub async fn answer(mut self, timeout: Duration) -> Option<T> {
        match tokio::time::timeout(timeout, &mut self.answer).await {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(_)) => unreachable!("a waiter leaves the table only to be answered"),
            Err(_) => {
                let mut misses = self.asks.misses.lock().unwrap();
                let missed = misses.entry(self.peer).or_default();
                *missed += 1;
                if *missed >= MISSES_BEFORE_UNARY {
                    *missed = 0;
                    let until = Instant::now() + UNARY_ONLY_FOR;
                    self.asks
                        .unary_only
                        .lock()
                        .unwrap()
                        .insert(self.peer, until);
                }
                None
            }
        }
    }
}

impl<T> StreamAsks<T> {
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
        let mut waiting = self.waiting.lock().unwrap();
        match waiting.get(&id) {
            Some((asked, _)) if *asked == from => waiting.remove(&id).map(|(_, waiter)| waiter),
            _ => None,
        }
    }
}
