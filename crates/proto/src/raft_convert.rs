//! Raft core types to and from the peer protocol.

use std::collections::BTreeSet;

use ostrakon_raft::{
    ConfChange, ConfChangeStep, ConfState, Entry, EntryPayload, GroupId, LogIndex, Message,
    MessageBody, NodeId, RejectHint, SnapshotMeta, Term,
};

use crate::peer as pb;
use crate::peer::raft_message::Body;

/// A peer message that does not describe a valid raft message.
#[derive(Debug, thiserror::Error)]
#[error("invalid peer message: {0}")]
pub struct InvalidMessage(pub &'static str);

fn ids(set: &BTreeSet<NodeId>) -> Vec<u64> {
    set.iter().map(|id| id.0).collect()
}

fn id_set(ids: &[u64]) -> Result<BTreeSet<NodeId>, InvalidMessage> {
    if ids.contains(&0) {
        return Err(InvalidMessage("node id 0 in a configuration"));
    }
    Ok(ids.iter().map(|&id| NodeId(id)).collect())
}

impl From<&ConfState> for pb::ConfState {
    fn from(conf: &ConfState) -> Self {
        pb::ConfState {
            voters: ids(&conf.voters),
            voters_outgoing: ids(&conf.voters_outgoing),
            learners: ids(&conf.learners),
            learners_next: ids(&conf.learners_next),
        }
    }
}

impl TryFrom<&pb::ConfState> for ConfState {
    type Error = InvalidMessage;
    fn try_from(conf: &pb::ConfState) -> Result<Self, InvalidMessage> {
        Ok(ConfState {
            voters: id_set(&conf.voters)?,
            voters_outgoing: id_set(&conf.voters_outgoing)?,
            learners: id_set(&conf.learners)?,
            learners_next: id_set(&conf.learners_next)?,
        })
    }
}

impl From<&SnapshotMeta> for pb::SnapshotMeta {
    fn from(meta: &SnapshotMeta) -> Self {
        pb::SnapshotMeta {
            index: meta.index.0,
            term: meta.term.0,
            conf_state: Some((&meta.conf_state).into()),
        }
    }
}

impl TryFrom<&pb::SnapshotMeta> for SnapshotMeta {
    type Error = InvalidMessage;
    fn try_from(meta: &pb::SnapshotMeta) -> Result<Self, InvalidMessage> {
        let conf = meta
            .conf_state
            .as_ref()
            .ok_or(InvalidMessage("snapshot without a configuration"))?;
        Ok(SnapshotMeta {
            index: LogIndex(meta.index),
            term: Term(meta.term),
            conf_state: conf.try_into()?,
        })
    }
}

impl From<&ConfChange> for pb::ConfChange {
    fn from(change: &ConfChange) -> Self {
        match change {
            ConfChange::LeaveJoint => pb::ConfChange {
                steps: Vec::new(),
                leave_joint: true,
            },
            ConfChange::Change(steps) => pb::ConfChange {
                steps: steps
                    .iter()
                    .map(|step| {
                        let (kind, node) = match *step {
                            ConfChangeStep::AddVoter(n) => {
                                (pb::conf_change_step::Kind::AddVoter, n)
                            }
                            ConfChangeStep::AddLearner(n) => {
                                (pb::conf_change_step::Kind::AddLearner, n)
                            }
                            ConfChangeStep::Remove(n) => (pb::conf_change_step::Kind::Remove, n),
                        };
                        pb::ConfChangeStep {
                            kind: kind as i32,
                            node: node.0,
                        }
                    })
                    .collect(),
                leave_joint: false,
            },
        }
    }
}

impl TryFrom<&pb::ConfChange> for ConfChange {
    type Error = InvalidMessage;
    fn try_from(change: &pb::ConfChange) -> Result<Self, InvalidMessage> {
        if change.leave_joint {
            if !change.steps.is_empty() {
                return Err(InvalidMessage("leave-joint change with steps"));
            }
            return Ok(ConfChange::LeaveJoint);
        }
        let mut steps = Vec::with_capacity(change.steps.len());
        for step in &change.steps {
            if step.node == 0 {
                return Err(InvalidMessage("configuration change of node 0"));
            }
            let node = NodeId(step.node);
            steps.push(match pb::conf_change_step::Kind::try_from(step.kind) {
                Ok(pb::conf_change_step::Kind::AddVoter) => ConfChangeStep::AddVoter(node),
                Ok(pb::conf_change_step::Kind::AddLearner) => ConfChangeStep::AddLearner(node),
                Ok(pb::conf_change_step::Kind::Remove) => ConfChangeStep::Remove(node),
                Err(_) => return Err(InvalidMessage("unknown configuration change kind")),
            });
        }
        Ok(ConfChange::Change(steps))
    }
}

impl From<&Entry> for pb::Entry {
    fn from(entry: &Entry) -> Self {
        use pb::entry::Payload;
        let payload = match &entry.payload {
            EntryPayload::Empty => Payload::Empty(true),
            EntryPayload::Normal(data) => Payload::Normal(data.clone()),
            EntryPayload::ConfChange(change) => Payload::ConfChange(change.into()),
        };
        pb::Entry {
            term: entry.term.0,
            index: entry.index.0,
            payload: Some(payload),
        }
    }
}

impl TryFrom<pb::Entry> for Entry {
    type Error = InvalidMessage;
    fn try_from(entry: pb::Entry) -> Result<Self, InvalidMessage> {
        use pb::entry::Payload;
        let payload = match entry.payload {
            Some(Payload::Empty(_)) => EntryPayload::Empty,
            Some(Payload::Normal(data)) => EntryPayload::Normal(data),
            Some(Payload::ConfChange(change)) => EntryPayload::ConfChange((&change).try_into()?),
            None => return Err(InvalidMessage("entry without a payload")),
        };
        if entry.index == 0 || entry.term == 0 {
            return Err(InvalidMessage("entry with index or term 0"));
        }
        Ok(Entry {
            term: Term(entry.term),
            index: LogIndex(entry.index),
            payload,
        })
    }
}

impl From<&Message> for pb::RaftMessage {
    fn from(message: &Message) -> Self {
        let body = match &message.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => Body::Append(pb::Append {
                prev_index: prev_index.0,
                prev_term: prev_term.0,
                entries: entries.iter().map(pb::Entry::from).collect(),
                commit: commit.0,
            }),
            MessageBody::AppendResponse { index, reject } => {
                Body::AppendResponse(pb::AppendResponse {
                    index: index.0,
                    reject: reject.is_some(),
                    hint: reject.map(|hint| pb::RejectHint {
                        index: hint.index.0,
                        term: hint.term.0,
                    }),
                })
            }
            MessageBody::RequestVote {
                pre_vote,
                last_index,
                last_term,
                transfer,
            } => Body::RequestVote(pb::RequestVote {
                pre_vote: *pre_vote,
                last_index: last_index.0,
                last_term: last_term.0,
                transfer: *transfer,
            }),
            MessageBody::VoteResponse { pre_vote, granted } => {
                Body::VoteResponse(pb::VoteResponse {
                    pre_vote: *pre_vote,
                    granted: *granted,
                })
            }
            MessageBody::Heartbeat {
                commit,
                read_round,
                sent_tick,
                quiesce,
            } => Body::Heartbeat(pb::Heartbeat {
                commit: commit.0,
                read_round: *read_round,
                sent_tick: *sent_tick,
                quiesce: *quiesce,
            }),
            MessageBody::HeartbeatResponse {
                read_round,
                sent_tick,
            } => Body::HeartbeatResponse(pb::HeartbeatResponse {
                read_round: *read_round,
                sent_tick: *sent_tick,
            }),
            MessageBody::InstallSnapshot { meta } => Body::InstallSnapshot(pb::InstallSnapshot {
                meta: Some(meta.into()),
            }),
            MessageBody::TimeoutNow => Body::TimeoutNow(pb::TimeoutNow {}),
            MessageBody::ReadIndex { request_id } => Body::ReadIndex(pb::ReadIndex {
                request_id: *request_id,
            }),
            MessageBody::ReadIndexResponse { request_id, index } => {
                Body::ReadIndexResponse(pb::ReadIndexResponse {
                    request_id: *request_id,
                    ok: index.is_some(),
                    index: index.map_or(0, |i| i.0),
                })
            }
        };
        pb::RaftMessage {
            group: message.group.0,
            from: message.from.0,
            to: message.to.0,
            term: message.term.0,
            body: Some(body),
        }
    }
}

impl TryFrom<pb::RaftMessage> for Message {
    type Error = InvalidMessage;
    fn try_from(message: pb::RaftMessage) -> Result<Self, InvalidMessage> {
        if message.from == 0 || message.to == 0 {
            return Err(InvalidMessage("message from or to node 0"));
        }
        let body = match message
            .body
            .ok_or(InvalidMessage("message without a body"))?
        {
            Body::Append(append) => MessageBody::Append {
                prev_index: LogIndex(append.prev_index),
                prev_term: Term(append.prev_term),
                entries: append
                    .entries
                    .into_iter()
                    .map(Entry::try_from)
                    .collect::<Result<_, _>>()?,
                commit: LogIndex(append.commit),
            },
            Body::AppendResponse(response) => MessageBody::AppendResponse {
                index: LogIndex(response.index),
                reject: match (response.reject, response.hint) {
                    (false, _) => None,
                    (true, Some(hint)) => Some(RejectHint {
                        index: LogIndex(hint.index),
                        term: Term(hint.term),
                    }),
                    (true, None) => return Err(InvalidMessage("rejection without a hint")),
                },
            },
            Body::RequestVote(vote) => MessageBody::RequestVote {
                pre_vote: vote.pre_vote,
                last_index: LogIndex(vote.last_index),
                last_term: Term(vote.last_term),
                transfer: vote.transfer,
            },
            Body::VoteResponse(response) => MessageBody::VoteResponse {
                pre_vote: response.pre_vote,
                granted: response.granted,
            },
            Body::Heartbeat(heartbeat) => MessageBody::Heartbeat {
                commit: LogIndex(heartbeat.commit),
                read_round: heartbeat.read_round,
                sent_tick: heartbeat.sent_tick,
                quiesce: heartbeat.quiesce,
            },
            Body::HeartbeatResponse(response) => MessageBody::HeartbeatResponse {
                read_round: response.read_round,
                sent_tick: response.sent_tick,
            },
            Body::InstallSnapshot(install) => MessageBody::InstallSnapshot {
                meta: install
                    .meta
                    .as_ref()
                    .ok_or(InvalidMessage("snapshot message without metadata"))?
                    .try_into()?,
            },
            Body::TimeoutNow(_) => MessageBody::TimeoutNow,
            Body::ReadIndex(read) => MessageBody::ReadIndex {
                request_id: read.request_id,
            },
            Body::ReadIndexResponse(response) => MessageBody::ReadIndexResponse {
                request_id: response.request_id,
                index: response.ok.then_some(LogIndex(response.index)),
            },
        };
        Ok(Message {
            group: GroupId(message.group),
            from: NodeId(message.from),
            to: NodeId(message.to),
            term: Term(message.term),
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn round_trip(message: Message) {
        let wire = pb::RaftMessage::from(&message);
        let back = Message::try_from(wire).expect("valid message");
        assert_eq!(back, message);
    }

    #[test]
    fn every_message_kind_survives_the_wire() {
        let conf = ConfState {
            voters: [NodeId(1), NodeId(2)].into(),
            voters_outgoing: [NodeId(3)].into(),
            learners: [NodeId(4)].into(),
            learners_next: BTreeSet::new(),
        };
        let entries = vec![
            Entry {
                term: Term(2),
                index: LogIndex(5),
                payload: EntryPayload::Empty,
            },
            Entry {
                term: Term(2),
                index: LogIndex(6),
                payload: EntryPayload::Normal(Bytes::from_static(b"put")),
            },
            Entry {
                term: Term(2),
                index: LogIndex(7),
                payload: EntryPayload::ConfChange(ConfChange::Change(vec![
                    ConfChangeStep::AddLearner(NodeId(4)),
                    ConfChangeStep::Remove(NodeId(3)),
                ])),
            },
            Entry {
                term: Term(2),
                index: LogIndex(8),
                payload: EntryPayload::ConfChange(ConfChange::LeaveJoint),
            },
        ];
        let bodies = vec![
            MessageBody::Append {
                prev_index: LogIndex(4),
                prev_term: Term(1),
                entries,
                commit: LogIndex(3),
            },
            MessageBody::AppendResponse {
                index: LogIndex(8),
                reject: None,
            },
            MessageBody::AppendResponse {
                index: LogIndex(8),
                reject: Some(RejectHint {
                    index: LogIndex(2),
                    term: Term(1),
                }),
            },
            MessageBody::RequestVote {
                pre_vote: true,
                last_index: LogIndex(8),
                last_term: Term(2),
                transfer: true,
            },
            MessageBody::VoteResponse {
                pre_vote: false,
                granted: true,
            },
            MessageBody::Heartbeat {
                commit: LogIndex(8),
                read_round: 3,
                sent_tick: 99,
                quiesce: false,
            },
            MessageBody::Heartbeat {
                commit: LogIndex(9),
                read_round: 0,
                sent_tick: 100,
                quiesce: true,
            },
            MessageBody::HeartbeatResponse {
                read_round: 3,
                sent_tick: 99,
            },
            MessageBody::InstallSnapshot {
                meta: SnapshotMeta {
                    index: LogIndex(9),
                    term: Term(2),
                    conf_state: conf,
                },
            },
            MessageBody::TimeoutNow,
            MessageBody::ReadIndex { request_id: 7 },
            MessageBody::ReadIndexResponse {
                request_id: 7,
                index: Some(LogIndex(8)),
            },
            MessageBody::ReadIndexResponse {
                request_id: 7,
                index: None,
            },
        ];
        for body in bodies {
            round_trip(Message {
                group: GroupId(3),
                from: NodeId(1),
                to: NodeId(2),
                term: Term(2),
                body,
            });
        }
    }

    #[test]
    fn a_message_without_body_is_rejected() {
        let wire = pb::RaftMessage {
            group: 1,
            from: 1,
            to: 2,
            term: 1,
            body: None,
        };
        assert!(Message::try_from(wire).is_err());
    }

    #[test]
    fn an_entry_at_index_zero_is_rejected() {
        let wire = pb::Entry {
            term: 1,
            index: 0,
            payload: Some(pb::entry::Payload::Empty(true)),
        };
        assert!(Entry::try_from(wire).is_err());
    }
}
