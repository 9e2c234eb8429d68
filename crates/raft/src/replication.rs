//! Log replication: the leader's appends with flow control, the follower's consistency
//! check with fast backtracking, commitment, and snapshots for followers left behind.

use bytes::Bytes;

use crate::config::BugKind;
use crate::ids::{LogIndex, NodeId};
use crate::message::{MessageBody, RejectHint};
use crate::progress::ProgressState;
use crate::quorum::committed_index;
use crate::raft::{Proposal, ProposeError, Raft, Role};
use crate::types::{EntryPayload, SnapshotMeta};

impl Raft {
    // --- Proposals ----------------------------------------------------------------------

    /// Checks that this node may accept a proposal now.
    pub(crate) fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(if self.leader.is_some() {
                ProposeError::NotLeader {
                    leader: self.leader,
                }
            } else {
                ProposeError::NoLeader
            });
        }
        if let Some(transfer) = self.transfer {
            return Err(ProposeError::TransferInProgress {
                target: transfer.target,
            });
        }
        Ok(())
    }

    /// Appends an application command. The broadcast happens at the next flush, so that
    /// proposals made between two `Ready`s travel in one message per follower.
    pub fn propose(&mut self, data: Bytes) -> Result<Proposal, ProposeError> {
        self.check_can_propose()?;
        let size_bytes = data.len() as u64;
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size_bytes > self.config.uncommitted_bytes_max
        {
            return Err(ProposeError::Overloaded);
        }
        let index = self.append_entry(EntryPayload::Normal(data));
        Ok(Proposal {
            index,
            term: self.term,
        })
    }

    // --- Leader side --------------------------------------------------------------------

    /// Sends new entries (or just the commit index) to every member.
    pub(crate) fn bcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            self.send_append(id, true);
        }
    }

    /// Sends appends to `to` while the flow control allows and there is something to send.
    /// With `send_if_empty`, sends an empty append to carry the commit index if nothing
    /// else goes out.
    pub(crate) fn send_append(&mut self, to: NodeId, send_if_empty: bool) {
        let mut sent_any = false;
        loop {
            let progress = &self.progress[&to];
            if progress.is_paused() {
                return;
            }
            let next = progress.next_index;
            let is_probe = progress.state == ProgressState::Probe;
            let prev_index = next.prev();
            let (Some(prev_term), Some(entries)) = (
                self.log.term(prev_index),
                self.log.slice(
                    next,
                    self.log.last_index().next(),
                    self.config.append_bytes_max,
                    self.config.append_entries_max,
                ),
            ) else {
                self.send_snapshot(to);
                return;
            };
            if entries.is_empty() && (sent_any || !send_if_empty) {
                return;
            }
            let last = entries.last().map_or(prev_index, |e| e.index);
            let count = entries.len();
            let commit = self.log.committed();
            self.send(
                to,
                MessageBody::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                },
            );
            self.progress
                .get_mut(&to)
                .expect("progress")
                .sent_entries(last, count);
            sent_any = true;
            if is_probe || count == 0 {
                return;
            }
        }
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let meta = self.log.snapshot().clone();
        assert!(
            meta.index > LogIndex(0),
            "entries are compacted but there is no snapshot"
        );
        self.progress
            .get_mut(&to)
            .expect("progress")
            .become_snapshot(meta.index);
        self.send(to, MessageBody::InstallSnapshot { meta });
    }

    /// Heartbeats to every member. `read_round` confirms read-index requests (0 = none).
    pub(crate) fn bcast_heartbeat(&mut self, read_round: u64) {
        let committed = self.log.committed();
        let targets: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(&id, p)| (id, p.match_index))
            .collect();
        for (id, match_index) in targets {
            // Never tell a follower to commit beyond what it is known to have.
            let commit = committed.min(match_index);
            let sent_tick = self.now_ticks;
            self.send(
                id,
                MessageBody::Heartbeat {
                    commit,
                    read_round,
                    sent_tick,
                    quiesce: false,
                },
            );
        }
    }

    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        index: LogIndex,
        reject: Option<RejectHint>,
    ) {
        let Some(progress) = self.progress.get_mut(&from) else {
            return; // Removed from the group meanwhile.
        };
        if let Some(hint) = reject {
            let retry_from = self.log.find_conflict_by_term(hint.index, hint.term);
            let progress = self.progress.get_mut(&from).expect("progress");
            if progress.maybe_decrease_to(index, retry_from) {
                if progress.state == ProgressState::Replicate {
                    progress.become_probe();
                }
                self.send_append(from, true);
            }
            return;
        }
        let advanced = progress.maybe_update(index);
        match progress.state {
            ProgressState::Probe
                if advanced || progress.match_index.next() == progress.next_index =>
            {
                progress.become_replicate();
            }
            ProgressState::Snapshot { pending_index } if progress.match_index >= pending_index => {
                progress.become_replicate();
            }
            ProgressState::Replicate => progress.inflights.free_to(index),
            _ => {}
        }
        if advanced && self.maybe_commit() {
            self.pending_broadcast = true;
        }
        self.send_append(from, false);
        self.maybe_send_timeout_now(from);
    }

    /// Raises the commit index to what a quorum has durably, if that entry is of the
    /// current term. Counting replicas of an older entry is not enough (Figure 8): only
    /// an entry of the leader's own term, once replicated on a quorum, commits (5.4.2).
    pub(crate) fn maybe_commit(&mut self) -> bool {
        let me = self.config.id;
        let self_acked = self.self_acked();
        let quorum_index = committed_index(&self.conf, |id| {
            if id == me {
                self_acked
            } else {
                self.progress
                    .get(&id)
                    .map_or(LogIndex(0), |p| p.match_index)
            }
        });
        if quorum_index <= self.log.committed() {
            return false;
        }
        let quorum_index = quorum_index.min(self.log.last_index());
        if self.log.term(quorum_index) != Some(self.term)
            && !self.has_bug(BugKind::CommitPreviousTerm)
        {
            return false;
        }
        self.log.commit_to(quorum_index)
    }

    // --- Follower side ------------------------------------------------------------------

    pub(crate) fn handle_append(
        &mut self,
        leader: NodeId,
        prev_index: LogIndex,
        prev_term: crate::ids::Term,
        entries: &[crate::types::Entry],
        commit: LogIndex,
    ) {
        if prev_index < self.log.committed() {
            // Everything up to our commit index matches the leader already.
            let index = self.log.committed();
            self.send(
                leader,
                MessageBody::AppendResponse {
                    index,
                    reject: None,
                },
            );
            return;
        }
        if !self.log.matches(prev_index, prev_term) {
            let hint_index = self
                .log
                .find_conflict_by_term(prev_index.min(self.log.last_index()), prev_term);
            let hint_term = self
                .log
                .term(hint_index)
                .expect("hint index is in the log or at the snapshot");
            let reject = Some(RejectHint {
                index: hint_index,
                term: hint_term,
            });
            self.send(
                leader,
                MessageBody::AppendResponse {
                    index: prev_index,
                    reject,
                },
            );
            return;
        }
        let keep_conflicts = self.has_bug(BugKind::NoTruncateOnConflict);
        self.log.append_from_leader(entries, keep_conflicts);
        let last_new = prev_index.plus(entries.len() as u64);
        self.log.commit_to(commit.min(last_new));
        self.send(
            leader,
            MessageBody::AppendResponse {
                index: last_new,
                reject: None,
            },
        );
    }

    pub(crate) fn handle_heartbeat(
        &mut self,
        leader: NodeId,
        commit: LogIndex,
        read_round: u64,
        sent_tick: u64,
    ) {
        self.log.commit_to(commit.min(self.log.last_index()));
        self.send(
            leader,
            MessageBody::HeartbeatResponse {
                read_round,
                sent_tick,
            },
        );
    }

    pub(crate) fn handle_snapshot(&mut self, leader: NodeId, meta: SnapshotMeta) {
        let index = meta.index;
        if index <= self.log.committed() {
            let committed = self.log.committed();
            self.send(
                leader,
                MessageBody::AppendResponse {
                    index: committed,
                    reject: None,
                },
            );
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // We already have the entries: fast-forward the commit instead of restoring.
            self.log.commit_to(index);
        } else {
            self.conf = meta.conf_state.clone();
            self.log.restore_snapshot(meta);
        }
        self.send(
            leader,
            MessageBody::AppendResponse {
                index,
                reject: None,
            },
        );
    }

    /// Called by the runtime when a snapshot stream to `to` ended: `delivered` if the
    /// follower received it all. Either way the leader goes back to probing (after the
    /// snapshot if it was delivered), so a lost acknowledgement cannot leave the follower
    /// waiting forever; the runtime must report every stream it starts.
    pub fn report_snapshot(&mut self, to: NodeId, delivered: bool) {
        let Some(progress) = self.progress.get_mut(&to) else {
            return;
        };
        if !matches!(progress.state, ProgressState::Snapshot { .. }) {
            return;
        }
        if delivered {
            progress.become_probe();
        } else {
            progress.abort_snapshot();
        }
    }

    /// Called by the runtime when a message to `to` could not be delivered: stop
    /// pipelining to it and probe instead.
    pub fn report_unreachable(&mut self, to: NodeId) {
        if let Some(progress) = self.progress.get_mut(&to) {
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
        }
    }
}
