//! The leader's view of each follower's log, and the flow control of appends to it.

use std::collections::VecDeque;

use crate::ids::LogIndex;

/// How the leader is sending to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log matches: it sends one append at
    /// a time and waits for the answer before sending the next.
    Probe,
    /// The follower's log matches up to `match_index`: appends are pipelined, bounded by
    /// the in-flight window.
    Replicate,
    /// The follower needs a snapshot because the entries it lacks are compacted; nothing
    /// else is sent until it reports the snapshot installed or failed.
    Snapshot {
        /// The index of the snapshot in flight.
        pending_index: LogIndex,
    },
}

/// A bounded window of append messages in flight, each remembered by its last index.
#[derive(Clone, Debug)]
pub struct Inflights {
    last_indexes: VecDeque<LogIndex>,
    capacity_msgs: usize,
}

impl Inflights {
    /// An empty window holding at most `capacity_msgs` messages.
    pub fn new(capacity_msgs: usize) -> Inflights {
        assert!(capacity_msgs > 0);
        Inflights {
            last_indexes: VecDeque::new(),
            capacity_msgs,
        }
    }

    /// Whether another message may be sent.
    pub fn is_full(&self) -> bool {
        self.last_indexes.len() >= self.capacity_msgs
    }

    /// Records a message whose last entry is `last_index`.
    pub fn add(&mut self, last_index: LogIndex) {
        assert!(!self.is_full(), "inflight window overflow");
        if let Some(&back) = self.last_indexes.back() {
            assert!(
                last_index > back,
                "inflight indexes must increase: {last_index:?} after {back:?}"
            );
        }
        self.last_indexes.push_back(last_index);
    }

    /// Frees every message whose entries are all acknowledged up to `index`.
    pub fn free_to(&mut self, index: LogIndex) {
        while self.last_indexes.front().is_some_and(|&i| i <= index) {
            self.last_indexes.pop_front();
        }
    }

    /// Frees the oldest message in flight: a heartbeat answer shows the follower is alive,
    /// so a full window is more likely waiting on lost responses than on a slow follower.
    pub fn free_first_one(&mut self) {
        self.last_indexes.pop_front();
    }

    /// Forgets every message in flight.
    pub fn reset(&mut self) {
        self.last_indexes.clear();
    }

    /// Number of messages in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.last_indexes.len()
    }

    /// Whether no message is in flight.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.last_indexes.is_empty()
    }
}

/// The leader's knowledge of one member.
///
/// Invariant: `match_index < next_index`.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated (durably) on the member.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// The sending mode.
    pub state: ProgressState,
    /// In `Probe`: an append was sent and no answer has come since.
    pub probe_sent: bool,
    /// The in-flight window (used in `Replicate`).
    pub inflights: Inflights,
    /// Whether the member was heard from since the last check-quorum round.
    pub recent_active: bool,
    /// `match_index` when the previous periodic heartbeat went out.
    pub match_at_last_heartbeat: LogIndex,
    /// Whether entries were outstanding when the previous periodic heartbeat went out.
    pub behind_at_last_heartbeat: bool,
    /// Entries outstanding for a whole heartbeat interval without the match moving: the
    /// appends were lost. Acted on when the follower shows it is alive.
    pub stalled: bool,
    /// The latest leader tick at which a heartbeat this member acknowledged was sent.
    pub heartbeat_acked_tick: u64,
    /// The leader's tick when it last received any message from the member.
    pub heard_at_tick: Option<u64>,
}

impl Progress {
    /// A member about which nothing is known yet: probe from `next_index`.
    pub fn new(next_index: LogIndex, inflight_msgs_max: usize) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(inflight_msgs_max),
            recent_active: false,
            match_at_last_heartbeat: LogIndex(0),
            behind_at_last_heartbeat: false,
            stalled: false,
            heartbeat_acked_tick: 0,
            heard_at_tick: None,
        }
    }

    /// Whether the leader must hold back appends to this member for now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Switch to probing from just after the match.
    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot { pending_index } = self.state {
            // After a snapshot, probing resumes after it (or after the match if larger).
            self.next_index = self.match_index.max(pending_index).next();
        } else {
            self.next_index = self.match_index.next();
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// The snapshot did not arrive: probe from just after the match, not after the
    /// snapshot the follower lacks.
    pub fn abort_snapshot(&mut self) {
        self.state = ProgressState::Probe;
        self.become_probe();
    }

    /// A periodic heartbeat goes out: compare with the previous one, a heartbeat interval
    /// ago, to tell lost appends from slow ones.
    pub fn note_periodic_heartbeat(&mut self, last_index: LogIndex) {
        self.stalled = self.state == ProgressState::Replicate
            && self.behind_at_last_heartbeat
            && self.match_index == self.match_at_last_heartbeat;
        self.match_at_last_heartbeat = self.match_index;
        self.behind_at_last_heartbeat = self.match_index < last_index;
    }

    /// Switch to pipelining from just after the match.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Stop sending appends until the snapshot at `pending_index` is installed.
    pub fn become_snapshot(&mut self, pending_index: LogIndex) {
        self.state = ProgressState::Snapshot { pending_index };
        self.probe_sent = false;
        self.inflights.reset();
    }

    /// Records that appends up to `last_index` were sent.
    pub fn sent_entries(&mut self, last_index: LogIndex, entry_count: usize) {
        match self.state {
            ProgressState::Replicate => {
                if entry_count > 0 {
                    self.next_index = last_index.next();
                    self.inflights.add(last_index);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => panic!("sending entries while a snapshot is pending"),
        }
    }

    /// A successful append response up to `index`. Returns whether the match advanced.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let advanced = index > self.match_index;
        if advanced {
            self.match_index = index;
            self.probe_sent = false;
        }
        self.next_index = self.next_index.max(index.next());
        advanced
    }

    /// A rejection of the append at `rejected` with a suggested retry point `retry_from`.
    /// Returns false if the rejection is stale (answers an append already superseded).
    pub fn maybe_decrease_to(&mut self, rejected: LogIndex, retry_from: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            // In replicate, only a rejection of an append at or beyond the match is news.
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index.next();
            return true;
        }
        // In probe, only the answer to the latest probe (sent at next - 1) counts.
        if self.next_index.prev() != rejected {
            return false;
        }
        self.next_index = retry_from.next().min(rejected).max(self.match_index.next());
        self.probe_sent = false;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_are_bounded_and_freed_in_order() {
        let mut inflights = Inflights::new(2);
        inflights.add(LogIndex(3));
        inflights.add(LogIndex(5));
        assert!(inflights.is_full());
        inflights.free_to(LogIndex(4));
        assert_eq!(inflights.len(), 1);
        inflights.free_to(LogIndex(5));
        assert!(inflights.is_empty());
    }

    #[test]
    fn probe_pauses_after_one_message() {
        let mut pr = Progress::new(LogIndex(5), 4);
        assert!(!pr.is_paused());
        pr.sent_entries(LogIndex(6), 2);
        assert!(pr.is_paused());
        assert!(pr.maybe_update(LogIndex(6)));
        assert!(!pr.is_paused());
    }

    #[test]
    fn stale_rejection_is_ignored_in_probe() {
        let mut pr = Progress::new(LogIndex(10), 4);
        assert!(
            !pr.maybe_decrease_to(LogIndex(5), LogIndex(3)),
            "probe was sent at 9, not 5"
        );
        assert!(pr.maybe_decrease_to(LogIndex(9), LogIndex(3)));
        assert_eq!(pr.next_index, LogIndex(4));
    }

    #[test]
    fn replicate_rejection_falls_back_to_match() {
        let mut pr = Progress::new(LogIndex(1), 4);
        pr.maybe_update(LogIndex(5));
        pr.become_replicate();
        pr.sent_entries(LogIndex(8), 3);
        assert!(!pr.maybe_decrease_to(LogIndex(4), LogIndex(4)));
        assert!(pr.maybe_decrease_to(LogIndex(8), LogIndex(2)));
        assert_eq!(pr.next_index, LogIndex(6));
    }
}
