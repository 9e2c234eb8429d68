//! The forgets of committed transactions' records, gathered and proposed together.
//!
//! A committed transaction's record is forgotten at its primary once every part is
//! written (`txn_coordinator::forget`): one entry of the primary's log each. Every entry
//! costs each replica an fsync unless it shares one, and a forget proposed on its own,
//! about a round after its client was answered, lands in the middle of that client's
//! next transaction and takes an fsync of its own on every member that the next
//! prepare or commit then waits behind. Gathered for [`FORGET_GATHER`] and proposed at
//! once, a burst of forgets goes into the log in one append, and costs one fsync for
//! them all. Measured with one client's Txns across two ranges (2,000): each member made
//! 4.7 fsyncs a transaction with forgets one by one, 3.9-4.0 with bursts of 50 ms (4.4
//! with 10 ms); the median Txn took 3.79 and 3.58 ms before, 3.35 and 3.45 after
//! (`BIN=... ROUNDS=2 TOTAL=4000 bash scripts/bench-txn-across.sh`, builds alternating). A record forgotten a little later costs
//! only its space meanwhile; one whose forget is lost is finished by the primary's
//! leader once it is old (`txn_horizon`).

use std::sync::Mutex;
use std::time::Duration;

use ostrakon_raft::GroupId;
use ostrakon_ranges::txn::TxnId;

/// How long a forget waits for others to go with it.
pub(crate) const FORGET_GATHER: Duration = Duration::from_millis(50);

/// The forgets waiting for the next burst, with their primaries.
#[derive(Default)]
pub(crate) struct ForgetQueue {
    waiting: Mutex<Vec<(TxnId, GroupId)>>,
}

impl ForgetQueue {
    /// Queues the forget of `txn` at `primary`. True if it is the first of its burst:
    /// the caller proposes the burst after [`FORGET_GATHER`].
    pub(crate) fn push(&self, txn: TxnId, primary: GroupId) -> bool {
        let mut waiting = self.waiting.lock().expect("forget queue lock");
        waiting.push((txn, primary));
        waiting.len() == 1
    }

    /// The burst due now; the next forget queued starts another.
    pub(crate) fn take(&self) -> Vec<(TxnId, GroupId)> {
        std::mem::take(&mut *self.waiting.lock().expect("forget queue lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(number: u64) -> TxnId {
        TxnId {
            coordinator: ostrakon_raft::NodeId(1),
            number,
            born: 0,
        }
    }

    #[test]
    fn the_first_forget_of_a_burst_schedules_it_and_the_rest_join_it() {
        let queue = ForgetQueue::default();
        assert!(queue.push(txn(1), GroupId(1)));
        assert!(!queue.push(txn(2), GroupId(2)));
        assert!(!queue.push(txn(3), GroupId(1)));
        assert_eq!(
            queue.take(),
            vec![
                (txn(1), GroupId(1)),
                (txn(2), GroupId(2)),
                (txn(3), GroupId(1))
            ]
        );
        assert!(queue.take().is_empty());
        // After a burst is taken, the next forget starts another.
        assert!(queue.push(txn(4), GroupId(1)));
    }
}
