//! Linearizable reads without writing to the log (thesis 6.4): the leader records its
//! commit index, confirms with a heartbeat round that it still leads, and the read is
//! served once the state machine has applied up to that index.

use crate::config::{BugKind, ReadMode};
use crate::ids::{LogIndex, NodeId, Term};
use crate::message::MessageBody;
use crate::progress::ProgressState;
use crate::quorum::{committed_index, vote_result, VoteResult};
use crate::raft::{ProposeError, Raft, ReadState, Role};
use crate::read_queue::PendingRead;

/// A lease lasts this share of an election timeout after the quorum's acknowledged
/// heartbeat was sent; the rest is margin for clock-rate differences.
const LEASE_FRACTION_PERCENT: u64 = 80;

/// Bound on reads a follower has forwarded to the leader and awaits answers for; beyond
/// it the oldest is failed (its answer was probably lost with a message).
const FORWARDED_READS_MAX: usize = 4096;

impl Raft {
    /// Requests a read index for `request_id`; the answer arrives in `Ready::read_states`.
    /// On a follower the request is forwarded to the leader.
    pub fn read_index(&mut self, request_id: u64) -> Result<(), ProposeError> {
        match self.role {
            Role::Leader => {
                let me = self.config.id;
                self.handle_read_index(me, request_id);
                Ok(())
            }
            Role::Follower if self.leader.is_some() => {
                if self.reads.forwarded.len() >= FORWARDED_READS_MAX {
                    let oldest = self.reads.forwarded.pop_front().expect("non-empty");
                    self.reads.ready.push(ReadState {
                        request_id: oldest,
                        index: None,
                    });
                }
                self.reads.forwarded.push_back(request_id);
                let leader = self.leader;
                self.send(leader, MessageBody::ReadIndex { request_id });
                Ok(())
            }
            _ => Err(ProposeError::NoLeader),
        }
    }

    /// `read_index` with `confirmer`'s word that its term was `confirmer_term` after the
    /// read began. Why the word can stand for a heartbeat answer: a leader of a later
    /// term needs a quorum's votes. If this leader and `confirmer` are a quorum, that
    /// quorum holds one of them. This leader has voted for no later leader, since it
    /// still leads in its term; `confirmer` had sent no such vote when its term was
    /// this one, after the read began. So no later leader existed when the read began,
    /// and every write acknowledged before it is within this leader's commit index
    /// (once an entry of its own term is committed), as after a heartbeat round.
    pub fn read_index_confirmed_by(
        &mut self,
        request_id: u64,
        confirmer: NodeId,
        confirmer_term: Term,
    ) -> Result<bool, ProposeError> {
        let me = self.config.id;
        let term_agrees =
            confirmer_term == self.term || self.has_bug(BugKind::ConfirmationIgnoresTerm);
        let confirms = self.role == Role::Leader
            && confirmer != me
            && term_agrees
            && self.committed_in_current_term()
            && vote_result(&self.conf, |id| {
                (id == me || id == confirmer).then_some(true)
            }) == VoteResult::Won;
        if !confirms {
            return self.read_index(request_id).map(|()| false);
        }
        let read = PendingRead {
            from: me,
            request_id,
            index: self.log.committed(),
        };
        self.answer_read(read, Some(read.index));
        Ok(true)
    }

    /// A read index `from` forwarded, in a message of this term. The message is its
    /// word, given after the read began, that its term was this one then: it had voted
    /// for no later leader. Where this leader and `from` are a quorum (three voters),
    /// that word stands for the heartbeat round, as in `read_index_confirmed_by`: the
    /// read is answered at once at the commit index, and the follower's batch of reads
    /// costs no round of its own. Otherwise, or before an entry of this term is
    /// committed, the read waits for a round as the leader's own do.
    pub(crate) fn handle_forwarded_read_index(&mut self, from: NodeId, request_id: u64) {
        let me = self.config.id;
        let confirms = self.role == Role::Leader
            && from != me
            && self.committed_in_current_term()
            && vote_result(&self.conf, |id| (id == me || id == from).then_some(true))
                == VoteResult::Won;
        if !confirms {
            self.handle_read_index(from, request_id);
            return;
        }
        let read = PendingRead {
            from,
            request_id,
            index: self.log.committed(),
        };
        self.answer_read(read, Some(read.index));
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    pub(crate) fn handle_read_index(&mut self, from: NodeId, request_id: u64) {
        assert_eq!(self.role, Role::Leader);
        let read = PendingRead {
            from,
            request_id,
            index: self.log.committed(),
        };
        if self.has_bug(BugKind::ReadWithoutReadIndex) {
            self.answer_read(read, Some(read.index));
            return;
        }
        if !self.committed_in_current_term() {
            self.reads.waiting_for_commit.push(read);
            return;
        }
        let me = self.config.id;
        let sole_voter = self.conf.voters_outgoing.is_empty()
            && self.conf.voters.len() == 1
            && self.conf.voters.contains(&me);
        if sole_voter || (self.config.read_mode == ReadMode::LeaseBased && self.holds_lease()) {
            self.answer_read(read, Some(read.index));
            return;
        }
        self.reads.unsent.push(read);
    }

    /// Starts a heartbeat round for the reads queued since the last one.
    pub(crate) fn flush_read_round(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if !self.reads.waiting_for_commit.is_empty() && self.committed_in_current_term() {
            for read in std::mem::take(&mut self.reads.waiting_for_commit) {
                self.handle_read_index(read.from, read.request_id);
            }
        }
        if !self.reads.has_unsent() {
            return;
        }
        let round = self.reads.next_round;
        self.reads.next_round += 1;
        for read in std::mem::take(&mut self.reads.unsent) {
            self.reads.in_flight.push_back((round, read));
        }
        self.bcast_heartbeat(round);
        self.maybe_confirm_reads();
    }

    pub(crate) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_round: u64,
        sent_tick: u64,
    ) {
        if !self.progress.contains_key(&from) {
            return;
        }
        self.note_quiesce_ack(from, sent_tick);
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        if sent_tick >= self.lease_floor_tick {
            progress.heartbeat_acked_tick = progress.heartbeat_acked_tick.max(sent_tick);
        }
        // The follower is alive: resume a paused probe, re-probe a follower whose appends
        // were lost, or make room in a full window whose acknowledgements were lost.
        progress.probe_sent = false;
        if progress.stalled {
            progress.stalled = false;
            progress.become_probe();
        } else if progress.state == ProgressState::Replicate && progress.inflights.is_full() {
            progress.inflights.free_first_one();
        }
        if progress.match_index < self.log.last_index() {
            // Even an empty append: in probe, the answer to the last one may have been
            // lost, and only a new probe at `next` brings the follower's refusal back.
            self.send_append(from, true);
        }
        if read_round > 0 {
            let acked = self.reads.acked_rounds.entry(from).or_insert(0);
            *acked = (*acked).max(read_round);
            self.maybe_confirm_reads();
        }
    }

    /// Answers every read whose round a quorum has acknowledged. The leader counts as
    /// having acknowledged every round it sent, so a leader that is (now) the only voter
    /// confirms everything at once.
    pub(crate) fn maybe_confirm_reads(&mut self) {
        if self.role != Role::Leader || self.reads.in_flight.is_empty() {
            return;
        }
        let me = self.config.id;
        let latest_sent = self.reads.next_round - 1;
        let confirmed = committed_index(&self.conf, |id| {
            LogIndex(if id == me {
                latest_sent
            } else {
                self.reads.acked_rounds.get(&id).copied().unwrap_or(0)
            })
        })
        .0;
        while self
            .reads
            .in_flight
            .front()
            .is_some_and(|(round, _)| *round <= confirmed)
        {
            let (_, read) = self.reads.in_flight.pop_front().expect("non-empty");
            self.answer_read(read, Some(read.index));
        }
    }

    /// Lease reads (thesis 6.4): a follower that received a heartbeat refuses to vote for
    /// an election timeout of its own clock, so the leader may serve reads alone until
    /// `LEASE_FRACTION` of an election timeout after a quorum's latest acknowledged
    /// heartbeat was *sent*. The margin absorbs clock-rate differences up to about
    /// 20 %. A leader that told a transfer target to campaign (which overrides leases)
    /// holds no lease.
    fn holds_lease(&self) -> bool {
        if self.timeout_now_sent || self.transfer.is_some() || self.quiesced {
            return false;
        }
        let me = self.config.id;
        let quorum_tick = committed_index(&self.conf, |id| {
            LogIndex(if id == me {
                self.now_ticks
            } else {
                self.progress.get(&id).map_or(0, |p| p.heartbeat_acked_tick)
            })
        })
        .0;
        let lease_ticks = u64::from(self.config.election_ticks) * LEASE_FRACTION_PERCENT / 100;
        quorum_tick > 0 && self.now_ticks.saturating_sub(quorum_tick) < lease_ticks
    }

    fn answer_read(&mut self, read: PendingRead, index: Option<LogIndex>) {
        if read.from == self.config.id {
            self.reads.ready.push(ReadState {
                request_id: read.request_id,
                index,
            });
        } else {
            self.send(
                read.from,
                MessageBody::ReadIndexResponse {
                    request_id: read.request_id,
                    index,
                },
            );
        }
    }

    /// Leader side, on losing leadership: every read not yet confirmed fails.
    pub(crate) fn fail_pending_reads(&mut self) {
        let reads = std::mem::take(&mut self.reads);
        let mut failed: Vec<PendingRead> = reads.waiting_for_commit;
        failed.extend(reads.unsent);
        failed.extend(reads.in_flight.into_iter().map(|(_, read)| read));
        // Keep the follower-side state and answers already produced.
        self.reads.forwarded = reads.forwarded;
        self.reads.ready = reads.ready;
        for read in failed {
            self.answer_read(read, None);
        }
    }

    /// Follower side, on a leader change: reads forwarded to the old leader fail.
    pub(crate) fn fail_forwarded_reads(&mut self) {
        for request_id in std::mem::take(&mut self.reads.forwarded) {
            self.reads.ready.push(ReadState {
                request_id,
                index: None,
            });
        }
    }

    /// A read forwarded to a node that is not the leader (any more) fails at once, so the
    /// forwarding follower can retry elsewhere instead of waiting.
    pub(crate) fn refuse_read_index(&mut self, from: NodeId, request_id: u64) {
        self.send(
            from,
            MessageBody::ReadIndexResponse {
                request_id,
                index: None,
            },
        );
    }

    pub(crate) fn handle_read_index_response(&mut self, request_id: u64, index: Option<LogIndex>) {
        if let Some(position) = self.reads.forwarded.iter().position(|&id| id == request_id) {
            self.reads.forwarded.remove(position);
            self.reads.ready.push(ReadState { request_id, index });
        }
    }
}
