//! Quiescence: an idle group stops ticking and heartbeating, so that a node can hold
//! many groups at almost no cost at rest (CockroachDB's quiesced ranges, TiKV's
//! hibernated regions).
//!
//! Once every member holds every committed entry and nothing is pending, the leader's
//! heartbeats become quiescing heartbeats: they carry the commit index and tell each
//! follower to stop ticking. The leader stops too once every member has acknowledged
//! one, so no member is left with a stale commit index (a learner would never time out
//! to ask for it). Any message other than those heartbeats and their answers wakes a
//! quiesced member, and so does a proposal, a read or a transfer on the leader.
//!
//! A quiesced follower no longer times out, so it cannot notice a dead leader by itself:
//! the runtime watches the nodes (one heartbeat per node pair, whatever the number of
//! groups) and calls `report_node_down` when a leader's node stops answering. The
//! follower then forgets that leader and, once awake, elects another as after any
//! election timeout.
//!
//! Two promises change while asleep, and are kept:
//! - A quiesced leader holds no lease: its clock stands still while its followers' run,
//!   so a lease measured in its ticks could outlive the followers' promise not to vote.
//!   On waking it counts only acknowledgements of heartbeats sent after it woke.
//! - Check-quorum restarts on waking: a leader that slept through a partition steps down
//!   one election timeout after waking unless a quorum answers meanwhile.

use std::collections::BTreeSet;

use crate::config::BugKind;
use crate::ids::{LogIndex, NodeId};
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ProgressState};
use crate::quiescing::Quiescing;
use crate::quorum::{vote_result, VoteResult};
use crate::raft::{Raft, Role};

/// Heartbeat intervals after a quiesced group's leader is reported down before the
/// voter picked to campaign first does (`Raft::report_node_down`). The other voters'
/// liveness reports the death within about a heartbeat of this one's: each node pair's
/// last ping before the death came at its own time in the heartbeat interval.
const FIRST_CAMPAIGN_DELAY_HEARTBEATS: u32 = 2;

impl Raft {
    /// Whether the group is idle enough for its leader to stop ticking: every entry is
    /// durable here, committed, handed out for applying, and held by every member,
    /// each of which answered within an election timeout; no read, transfer
    /// or membership change is in progress.
    fn can_quiesce(&self) -> bool {
        if !self.config.quiesce || self.role != Role::Leader || self.quiesced {
            return false;
        }
        let last = self.log.last_index();
        let log_settled = self.term_durable
            && self.log.persisted() == last
            && self.log.committed() == last
            && self.log.applied() == last
            && !self.pending_broadcast;
        let nothing_pending = self.transfer.is_none()
            && self.reads.is_idle()
            && self.pending_conf_index <= self.log.applied()
            && self.conf.voters_outgoing.is_empty();
        let election_ticks = u64::from(self.config.election_ticks);
        let caught_up = |p: &Progress| {
            p.match_index == last
                && !matches!(p.state, ProgressState::Snapshot { .. })
                && p.heard_at_tick
                    .is_some_and(|tick| self.now_ticks.saturating_sub(tick) < election_ticks)
        };
        // Members on nodes reported down are not waited for (they are brought up to date
        // when reported up), but the others must be a quorum: a leader that lost its
        // quorum must stay awake for check-quorum to depose it.
        let live_followers_caught_up = self
            .progress
            .iter()
            .filter(|(id, _)| !self.down_peers.contains(id))
            .all(|(_, p)| caught_up(p));
        let me = self.config.id;
        let live_quorum = vote_result(&self.conf, |id| {
            Some(id == me || (!self.down_peers.contains(&id) && self.progress.contains_key(&id)))
        }) == VoteResult::Won;
        log_settled && nothing_pending && live_followers_caught_up && live_quorum
    }

    /// The followers a quiescing leader waits for: those not reported down.
    fn live_followers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.progress
            .keys()
            .copied()
            .filter(|id| !self.down_peers.contains(id))
    }

    /// Leader, at heartbeat time: if the group is idle, sends quiescing heartbeats
    /// instead of heartbeats to the members that have not acknowledged one yet (and
    /// quiesces at once without followers). Returns whether it did.
    pub(crate) fn maybe_quiesce(&mut self) -> bool {
        if !self.can_quiesce() {
            self.quiescing = None;
            return false;
        }
        let commit = self.log.committed();
        let sent_tick = self.now_ticks;
        let quiescing = self.quiescing.get_or_insert_with(|| Quiescing {
            since_tick: sent_tick,
            acked: BTreeSet::new(),
        });
        let acked = quiescing.acked.clone();
        let unacked: Vec<NodeId> = self
            .live_followers()
            .filter(|id| !acked.contains(id))
            .collect();
        if unacked.is_empty() {
            self.quiesced = true;
            self.quiescing = None;
            return true;
        }
        for id in unacked {
            self.send(
                id,
                MessageBody::Heartbeat {
                    commit,
                    read_round: 0,
                    sent_tick,
                    quiesce: true,
                },
            );
        }
        true
    }

    /// Leader: `from` answered a heartbeat sent at `sent_tick`. Once every member has
    /// answered a quiescing heartbeat and the group is still idle, the leader quiesces.
    pub(crate) fn note_quiesce_ack(&mut self, from: NodeId, sent_tick: u64) {
        let Some(quiescing) = self.quiescing.as_mut() else {
            return;
        };
        if sent_tick < quiescing.since_tick {
            return;
        }
        quiescing.acked.insert(from);
        let acked = quiescing.acked.clone();
        let all_acked = self.live_followers().all(|id| acked.contains(&id));
        if all_acked && self.can_quiesce() {
            self.quiesced = true;
            self.quiescing = None;
        }
    }

    /// Follower, on the leader's quiescing heartbeat: quiesce if this member holds
    /// exactly what the leader committed (a follower still missing entries keeps its
    /// timer: it will be brought up to date once it asks).
    pub(crate) fn maybe_quiesce_follower(&mut self, leader_commit: LogIndex) {
        assert_eq!(self.role, Role::Follower);
        assert!(self.leader.is_some());
        if self.log.last_index() == leader_commit && self.log.committed() == leader_commit {
            self.quiesced = true;
        }
    }

    /// The messages a quiesced member exchanges without waking: the leader's quiescing
    /// heartbeat and the answers to heartbeats that confirmed no read.
    pub(crate) fn is_quiesced_traffic(&self, m: &Message) -> bool {
        match m.body {
            MessageBody::Heartbeat { quiesce, .. } => quiesce && m.from == self.leader,
            MessageBody::HeartbeatResponse { read_round, .. } => {
                self.role == Role::Leader && read_round == 0
            }
            _ => false,
        }
    }

    /// Resumes ticking. A leader also restarts check-quorum and its lease from now: its
    /// clock stood still while asleep, so nothing measured before says anything now.
    pub(crate) fn wake(&mut self) {
        // Whatever woke the group may change what the quiescing heartbeats said.
        self.quiescing = None;
        if !self.quiesced {
            return;
        }
        self.quiesced = false;
        if self.role != Role::Leader {
            return;
        }
        self.election_elapsed_ticks = 0;
        // Heartbeat at the next tick: followers woken by it resume their timers.
        self.heartbeat_elapsed_ticks = self.config.heartbeat_ticks.saturating_sub(1);
        if self.has_bug(BugKind::QuiescedLeaseKept) {
            return;
        }
        self.now_ticks += 1;
        self.lease_floor_tick = self.now_ticks;
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
            progress.heartbeat_acked_tick = 0;
        }
    }

    /// Wakes a quiesced leader before it takes a proposal, a read or a transfer.
    pub(crate) fn wake_leader(&mut self) {
        if self.role == Role::Leader {
            self.wake();
        }
    }

    /// The runtime's node liveness says `node` is down (its process stopped answering
    /// for an election timeout).
    ///
    /// A follower quiesced under a leader on that node forgets it and wakes, so the
    /// group elects another leader; forgetting also ends the follower's promise not to
    /// vote, which is safe since a quiesced leader holds no lease. One voter of those
    /// left campaigns after `FIRST_CAMPAIGN_DELAY_HEARTBEATS` (which one by the group's
    /// id, so that a dead node's ranges spread over the others), the others a whole
    /// randomized election timeout later: every follower waiting out its own timeout took 3-4 s for
    /// every range of a dead node to have a leader (two followers timing out close
    /// together split the vote and wait again). The delay lets the other voters notice
    /// the death too (until then they keep their promise and refuse the vote); a
    /// campaign that fails anyway leaves the usual timeouts to elect. An awake follower has
    /// its own timer, and a learner cannot campaign (a new leader's first message wakes
    /// it). A quiesced leader wakes: without that member it may have lost its quorum,
    /// which check-quorum decides; if not, it quiesces again without waiting for it.
    ///
    /// A follower woken by another voter's pre-vote before it was told of the death is
    /// treated as still quiesced until it hears from its leader: otherwise it would keep
    /// the dead leader, and refuse votes for it, for a whole election timeout. Woken, it
    /// has been ticking: its election timer is left as it is.
    ///
    /// Why forgetting the leader keeps the lease promise, asleep or woken: the report
    /// comes only after this node heard nothing from the leader's node (raft messages
    /// included) for a whole election timeout of its own clock, longer than any lease
    /// the leader may hold from this member's acknowledgements (a lease lasts a fraction
    /// of the election timeout, and a leader that slept counts only acknowledgements of
    /// heartbeats sent after it woke). Runtimes must keep that: liveness reports a node
    /// down after at least an election timeout of silence.
    pub fn report_node_down(&mut self, node: NodeId) {
        self.down_peers.insert(node);
        let asleep_under_leader = self.quiesced || self.leader_unheard_since_wake;
        if !asleep_under_leader {
            return;
        }
        match self.role {
            Role::Leader if self.progress.contains_key(&node) => self.wake(),
            Role::Follower if self.leader == node && self.is_promotable() => {
                if self.has_bug(BugKind::NodeDownIgnored) {
                    return;
                }
                let was_awake = !self.quiesced;
                self.wake();
                self.leader = NodeId::NONE;
                self.leader_unheard_since_wake = false;
                self.election_elapsed_ticks = if self.campaigns_first() {
                    let delay = self
                        .config
                        .heartbeat_ticks
                        .saturating_mul(FIRST_CAMPAIGN_DELAY_HEARTBEATS);
                    self.randomized_election_ticks.saturating_sub(delay)
                } else if was_awake {
                    self.election_elapsed_ticks
                } else {
                    0
                };
            }
            _ => {}
        }
    }

    /// Whether this voter is the one of the voters not reported down that campaigns
    /// first when its quiesced group's leader dies: the group's id picks it, the same on
    /// every voter that sees the same nodes down.
    fn campaigns_first(&self) -> bool {
        let up: Vec<NodeId> = self
            .conf
            .voters
            .iter()
            .copied()
            .filter(|voter| !self.down_peers.contains(voter))
            .collect();
        if up.is_empty() {
            return false;
        }
        up[(self.config.group.0 % up.len() as u64) as usize] == self.config.id
    }

    /// The runtime's node liveness hears from `node` again. A quiesced leader wakes to
    /// bring that member up to date: it may have missed entries while it was down.
    pub fn report_node_up(&mut self, node: NodeId) {
        let was_down = self.down_peers.remove(&node);
        if was_down
            && self.quiesced
            && self.role == Role::Leader
            && self.progress.contains_key(&node)
        {
            self.wake();
        }
    }

    /// A learner that heard nothing for an election timeout tells its leader what it
    /// holds, which wakes a quiesced leader: a learner woken by a stray message would
    /// otherwise tick forever (it never campaigns, which is how a voter wakes the
    /// group). Its commit index is the claim: committed entries match the leader's log.
    /// Returns whether it asked.
    pub(crate) fn maybe_ask_leader_for_news(&mut self) -> bool {
        if !self.config.quiesce || self.role != Role::Follower || !self.leader.is_some() {
            return false;
        }
        let leader = self.leader;
        let index = self.log.committed();
        self.send(
            leader,
            MessageBody::AppendResponse {
                index,
                reject: None,
            },
        );
        true
    }

    /// Whether this member is quiesced (it need not be ticked).
    pub fn is_quiesced(&self) -> bool {
        self.quiesced
    }
}
