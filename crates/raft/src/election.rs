//! Leader election: pre-vote, vote, and counting.

use crate::config::BugKind;
use crate::ids::{LogIndex, NodeId, Term};
use crate::message::{Message, MessageBody};
use crate::quorum::{vote_result, VoteResult};
use crate::raft::{Raft, Role};

impl Raft {
    /// Starts an election: a pre-vote round first unless disabled or transferring.
    pub(crate) fn campaign(&mut self, transfer: bool) {
        assert!(
            self.is_promotable(),
            "{:?} cannot campaign: not a voter",
            self.config.id
        );
        let pre_vote = self.config.pre_vote && !transfer;
        self.start_round(pre_vote, transfer);
    }

    /// One round of (pre-)voting. `transfer` asks voters to disregard their leader lease.
    fn start_round(&mut self, pre_vote: bool, transfer: bool) {
        if pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate();
        }
        let term = if pre_vote {
            self.term.next()
        } else {
            self.term
        };
        // Our own vote counts at once.
        let me = self.config.id;
        self.votes.insert(me, true);
        if self.tally() == VoteResult::Won {
            self.win_round();
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .conf
            .voters
            .union(&self.conf.voters_outgoing)
            .copied()
            .collect();
        for id in voters {
            if id == me {
                continue;
            }
            let message = Message {
                group: self.config.group,
                from: me,
                to: id,
                term,
                body: MessageBody::RequestVote {
                    pre_vote,
                    last_index,
                    last_term,
                    transfer,
                },
            };
            // A real vote request is sent after our term and self-vote are durable, so we
            // cannot vote for someone else in this term after a crash.
            self.msgs_after_persist.push(message);
        }
    }

    fn tally(&self) -> VoteResult {
        vote_result(&self.conf, |id| self.votes.get(&id).copied())
    }

    fn win_round(&mut self) {
        if self.role == Role::PreCandidate {
            self.start_round(false, false);
        } else {
            self.become_leader();
        }
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
        match self.tally() {
            VoteResult::Won => self.win_round(),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, NodeId::NONE);
            }
            VoteResult::Pending => {}
        }
    }

    /// Answers a (pre-)vote request whose term is at least ours.
    pub(crate) fn handle_vote_request(
        &mut self,
        m: &Message,
        pre_vote: bool,
        last_index: LogIndex,
        last_term: Term,
    ) {
        let can_vote = self.vote == m.from
            || (self.vote == NodeId::NONE && self.leader == NodeId::NONE)
            || (pre_vote && m.term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_index, last_term);
        if granted && !pre_vote {
            self.election_elapsed_ticks = 0;
            self.vote = m.from;
        }
        // A granted pre-vote answers in the term asked about; everything else in ours.
        let term = if pre_vote && granted {
            m.term
        } else {
            self.term
        };
        let response = Message {
            group: self.config.group,
            from: self.config.id,
            to: m.from,
            term,
            body: MessageBody::VoteResponse { pre_vote, granted },
        };
        self.queue(response);
    }

    /// The vote to persist: with the planted bug, the vote is left out of the hard state.
    pub(crate) fn vote_to_persist(&self) -> NodeId {
        if self.has_bug(BugKind::VoteNotPersisted) {
            return NodeId::NONE;
        }
        self.vote
    }
}
