//! Membership changes (joint consensus, learners), leadership transfer and compaction.

use crate::confchange::{self, ConfChangeError};
use crate::ids::{LogIndex, NodeId};
use crate::message::MessageBody;
use crate::progress::Progress;
use crate::raft::{Proposal, ProposeError, Raft, Role, Transfer};
use crate::types::{ConfChange, ConfState, EntryPayload, SnapshotMeta};

impl Raft {
    /// Proposes a membership change. Only one may be in flight: a new one is refused
    /// until the previous one is applied.
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Proposal, ProposeError> {
        self.check_can_propose()?;
        if self.pending_conf_index > self.log.applied() {
            return Err(ProposeError::ConfChangePending);
        }
        let index = self.append_entry(EntryPayload::ConfChange(change));
        self.pending_conf_index = index;
        Ok(Proposal {
            index,
            term: self.term,
        })
    }

    /// Called by the application when it applies a committed membership change entry.
    /// Returns the new membership, or why the change is void (the configuration is then
    /// unchanged on every member alike, since they all apply the same entries).
    pub fn apply_conf_change(&mut self, change: &ConfChange) -> Result<ConfState, ConfChangeError> {
        let next = confchange::apply(&self.conf, change)?;
        self.switch_to_config(next);
        Ok(self.conf.clone())
    }

    fn switch_to_config(&mut self, conf: ConfState) {
        self.conf = conf;
        if self.role != Role::Leader {
            return;
        }
        let me = self.config.id;
        if !self.conf.is_voter(me) {
            // The leader was removed (or demoted): it steps down once the configuration
            // that excludes it applies, and the others elect a leader among themselves.
            let term = self.term;
            self.become_follower(term, NodeId::NONE);
            return;
        }
        let members = self.peers();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index().next();
        for id in members {
            self.progress.entry(id).or_insert_with(|| {
                let mut progress = Progress::new(next, self.config.inflight_msgs_max);
                progress.recent_active = true;
                progress
            });
        }
        if let Some(transfer) = self.transfer {
            if !self.conf.is_voter(transfer.target) {
                self.transfer = None;
            }
        }
        // A smaller quorum may commit at once, and may confirm reads at once.
        self.maybe_confirm_reads();
        if self.maybe_commit() {
            self.pending_broadcast = true;
        }
        self.pending_broadcast = true;
    }

    /// Leader side: once the entry that entered a joint configuration is applied, propose
    /// the entry that leaves it.
    pub(crate) fn maybe_leave_joint(&mut self) {
        if self.role == Role::Leader
            && self.conf.is_joint()
            && self.transfer.is_none()
            && self.log.applied() >= self.pending_conf_index
        {
            let index = self.append_entry(EntryPayload::ConfChange(ConfChange::LeaveJoint));
            self.pending_conf_index = index;
        }
    }

    /// Moves leadership to `target`: proposals are refused meanwhile; the target is
    /// brought up to date and told to campaign at once. Abandoned after
    /// `transfer_timeout_ticks`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.config.id {
            return Ok(());
        }
        if !self.conf.is_voter(target) {
            return Err(ProposeError::NotAVoter { node: target });
        }
        if self.transfer.is_some_and(|t| t.target == target) {
            return Ok(());
        }
        self.transfer = Some(Transfer {
            target,
            elapsed_ticks: 0,
        });
        if self.progress[&target].match_index == self.log.last_index() {
            self.send_timeout_now(target);
        } else {
            self.send_append(target, true);
        }
        Ok(())
    }

    fn send_timeout_now(&mut self, target: NodeId) {
        // The target will campaign asking voters to ignore their leases: ours is void.
        self.timeout_now_sent = true;
        self.send(target, MessageBody::TimeoutNow);
    }

    /// The transfer target caught up: tell it to campaign.
    pub(crate) fn maybe_send_timeout_now(&mut self, from: NodeId) {
        let caught_up = self
            .progress
            .get(&from)
            .is_some_and(|p| p.match_index == self.log.last_index());
        if self.transfer.is_some_and(|t| t.target == from) && caught_up {
            self.send_timeout_now(from);
        }
    }

    /// The application captured the state machine up to `index` in a snapshot whose
    /// membership is `conf_state`: entries up to `index` are dropped.
    pub fn compact(&mut self, index: LogIndex, conf_state: ConfState) {
        if index <= self.log.snapshot().index {
            return;
        }
        let term = self
            .log
            .term(index)
            .expect("compaction index must be in the log");
        self.log.compact(SnapshotMeta {
            index,
            term,
            conf_state,
        });
    }
}
