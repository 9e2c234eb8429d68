//! Reads at a revision a follower sends on to its range's leader as read barriers, as the
//! node does (`NodeHandle::read_point_at`): the leader answers with the index to read at
//! (confirmed by the follower's word where it can), over the simulated network, and the
//! follower reads its own replica once it has applied that far. What the leader answers
//! travels as raft messages do: lost with the drop probability, delayed, and not across
//! a partition; the client of a lost one times out.

use ostrakon_raft::LogIndex;

use crate::events::{Event, Reply};
use crate::invariants::Violation;
use crate::node::{BarrierFrom, Waiting};
use crate::simulation::{trace, Simulation};

impl Simulation {
    /// The leader's answer to a follower's read barrier: the index to read at, or the
    /// reply for the follower's client.
    pub(crate) fn answer_barrier(&mut self, from: BarrierFrom, answer: Result<LogIndex, Reply>) {
        if self.rng.chance(self.scenario.faults.drop_probability) {
            return;
        }
        let faults = &self.scenario.faults;
        let latency = self.rng.range(faults.delay_us_min, faults.delay_us_max);
        self.events
            .push(self.now_us + latency, Event::BarrierAnswer { from, answer });
    }

    /// Whether a barrier from `follower` reaches `leader` now (both up, no partition
    /// between them).
    pub(crate) fn barrier_reaches(
        &self,
        follower: ostrakon_raft::NodeId,
        leader: ostrakon_raft::NodeId,
    ) -> bool {
        !self.blocked.contains(&(follower, leader)) && self.is_up(leader)
    }

    /// A leader's answer reached the follower that sent the barrier: the follower reads
    /// its own replica once it has applied the index, or answers its client the
    /// leader's failure.
    pub(crate) fn barrier_answered(&mut self, from: BarrierFrom, answer: Result<LogIndex, Reply>) {
        let BarrierFrom {
            follower,
            leader,
            barrier,
        } = from;
        if self.blocked.contains(&(leader, follower)) {
            return;
        }
        // A follower that crashed since lost its barriers (its client times out).
        let Some(running) = self
            .nodes
            .get_mut(&follower)
            .and_then(|node| node.running.as_mut())
        else {
            return;
        };
        let Some((group, waiting)) = running.barriers_sent.remove(&barrier) else {
            return;
        };
        let index = match answer {
            Ok(index) => index,
            Err(reply) => return self.reply(waiting, reply),
        };
        if !self.hosts(follower, group) {
            // Merged away meanwhile: the client routes again.
            let ranges = self.local_descriptors(follower);
            return self.reply(waiting, Reply::Mismatch { ranges });
        }
        if index < waiting.read_floor {
            let message = format!(
                "stale read: {leader:?} answered {follower:?}'s barrier for client {}'s read \
                 with index {index:?}, below {:?}, committed before the read began",
                waiting.client, waiting.read_floor
            );
            return self.fail_in(group, Violation(message));
        }
        trace!(
            self,
            "{follower:?} {group:?} reads client {}'s read at {:?} once applied to {index:?} (barrier {barrier})",
            waiting.client,
            waiting.scan_at
        );
        // The planted bug reads at once, whatever this replica has applied.
        let bug = crate::scenario::Bug::Node(crate::scenario::NodeBug::BarrierReadBeforeApply);
        let index = if self.scenario.bug == Some(bug) {
            LogIndex(0)
        } else {
            index
        };
        let waiting = Waiting {
            wait_index: index,
            ..waiting
        };
        self.replica(follower, group)
            .reads_waiting_apply
            .push((index, waiting));
        self.release_reads(follower, group);
    }
}
