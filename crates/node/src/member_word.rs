//! A member's word of a group's term, given with a request to the group's leader, and
//! the term each replica publishes for it.
//!
//! A member that sends its term of a group, read after what the request is for began,
//! vouches that it had sent no vote of a later term by then: its event loop raises the
//! published term before any message of a new term leaves it (`TermWord::raise`, checked
//! by `TermWord::assert_covers`). The leader of that term, to whom that member and itself
//! are a quorum (three voters), needs no heartbeat round to confirm it still led after
//! the request began (`ostrakon_raft::RawNode::read_index_confirmed_by`): the oracle's
//! asks give the meta range's word (docs/PERFORMANCE.md, "An ask confirms its oracle"),
//! and reads a follower sends its range's leader give the range's
//! (docs/PERFORMANCE.md, "A forwarded read confirms its leader").

use std::sync::atomic::{AtomicU64, Ordering};

use ostrakon_raft::{GroupId, Message, MessageBody, NodeId, Term};

/// A member's word that its term of the group was `term` at a moment after what its
/// request is for began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberWord {
    /// The member giving it.
    pub member: NodeId,
    /// Its term of the group.
    pub term: Term,
}

impl MemberWord {
    /// The word carried on the wire as a term, 0 for none.
    pub fn from_wire(member: NodeId, term: u64) -> Option<MemberWord> {
        (term > 0).then_some(MemberWord {
            member,
            term: Term(term),
        })
    }
}

/// The term a replica gives its word of: raised by the event loop before any message of
/// a new term leaves, read by requests on other threads.
#[derive(Debug, Default)]
pub struct TermWord(AtomicU64);

impl TermWord {
    /// Starts at `term` (a replica's recovered term: a vote of it was persisted first).
    pub fn new(term: Term) -> TermWord {
        TermWord(AtomicU64::new(term.0))
    }

    /// Raises the word to `term` (never lowers it: a higher word vouches for less).
    pub fn raise(&self, term: Term) {
        self.0.fetch_max(term.0, Ordering::SeqCst);
    }

    /// The word for a request made now, as a term on the wire: 0 for none.
    pub fn word(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Crashes if a message of `group` is about to leave with a term above the word:
    /// words given after it would vouch for a term this member already left, and a
    /// deposed leader could answer a read or hand out timestamps.
    pub fn assert_covers(&self, group: GroupId, messages: &[Message]) {
        let word = self.word();
        // Pre-votes carry the term they would campaign in without entering it, and
        // vote for no one.
        let counted = messages.iter().filter(|message| {
            !matches!(
                message.body,
                MessageBody::RequestVote { pre_vote: true, .. }
                    | MessageBody::VoteResponse { pre_vote: true, .. }
            )
        });
        for message in counted {
            assert!(
                message.term.0 <= word,
                "a message of group {} and term {} leaves before the word is raised from {word}",
                group.0,
                message.term.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(term: u64, body: MessageBody) -> Message {
        Message {
            group: GroupId(2),
            from: NodeId(1),
            to: NodeId(2),
            term: Term(term),
            body,
        }
    }

    #[test]
    fn a_word_only_rises() {
        let word = TermWord::new(Term(3));
        word.raise(Term(2));
        assert_eq!(word.word(), 3);
        word.raise(Term(5));
        assert_eq!(word.word(), 5);
        assert_eq!(MemberWord::from_wire(NodeId(2), 0), None);
        assert_eq!(
            MemberWord::from_wire(NodeId(2), 5),
            Some(MemberWord {
                member: NodeId(2),
                term: Term(5)
            })
        );
    }

    #[test]
    #[should_panic(expected = "leaves before the word is raised")]
    fn a_vote_of_a_later_term_than_the_word_is_a_bug() {
        let word = TermWord::new(Term(3));
        let pre_vote = MessageBody::RequestVote {
            last_index: ostrakon_raft::LogIndex(0),
            last_term: Term(0),
            pre_vote: true,
            transfer: false,
        };
        word.assert_covers(GroupId(2), &[message(4, pre_vote)]);
        let vote = MessageBody::VoteResponse {
            granted: true,
            pre_vote: false,
        };
        word.assert_covers(GroupId(2), &[message(4, vote)]);
    }
}
