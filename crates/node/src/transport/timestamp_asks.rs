//! Timestamps from the meta range's leader, asked and granted on the peer streams that
//! carry raft messages (docs/PERFORMANCE.md, "Oracle requests on the peer stream").
//!
//! A unary gRPC call per oracle request cost more thread hand-offs than the read index
//! the oracle waits for: a task on each side, a new HTTP/2 stream, tonic's buffer. An
//! ask instead joins the next batch of raft messages to the leader, and the grant rides
//! the batch back, often with the heartbeat answers of the very read index it waited
//! for. The asker keeps a table of asks by id; the grant's sender must be the member
//! asked.
//!
//! An ask unanswered within `ASK_TIMEOUT` is asked again with the unary `Timestamps`
//! call, and a member that ignores asks (an earlier version) is asked by unary calls
//! only for a while (`stream_asks`). A lost or late grant leaves its timestamps unused,
//! which the oracle allows. Ask ids start at a random number in each process: a grant
//! queued for a process that crashed must not match an ask of its successor, whose
//! caller began after those timestamps were handed out (they could be below a write
//! acknowledged in between).

use std::time::Duration;

use ostrakon_proto::peer::peer_client::PeerClient;
use ostrakon_proto::peer::{self as pb};
use ostrakon_raft::{GroupId, NodeId, Term};
use ostrakon_ranges::{Timestamp, TimestampRange};

use super::{codec, Outgoing, Transport};
use crate::error::NodeError;
use crate::member_word::MemberWord;

/// At most this many ranges an ask names for the granter's word: a fetch's fresh reads
/// of further ranges take their own heartbeat rounds, as before.
pub const VOUCH_FOR_MAX: usize = 64;

/// Timestamps granted, and the granter's word of each range the ask named that it gave
/// (read after it handed the timestamps out).
#[derive(Debug)]
pub struct Granted {
    /// The timestamps.
    pub range: TimestampRange,
    /// The granter's word of each range it vouched for.
    pub vouched: Vec<(GroupId, MemberWord)>,
}

impl Granted {
    fn without_words(range: TimestampRange) -> Granted {
        Granted {
            range,
            vouched: Vec::new(),
        }
    }
}

/// An ask unanswered this long is asked again by a unary call. Well above the read
/// index round it waits for, which takes a round trip and the followers' turns.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether this member ignores the asks it receives, as a member of an earlier version
/// does: `OSTRAKON_TEST_IGNORE_TIMESTAMP_ASKS=1` (tests show the askers fall back).
pub(super) fn ignore_asks() -> bool {
    static IGNORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IGNORE.get_or_init(|| {
        std::env::var("OSTRAKON_TEST_IGNORE_TIMESTAMP_ASKS").is_ok_and(|value| value == "1")
    })
}

/// The asks waiting for grants.
pub(super) type Asks = super::stream_asks::StreamAsks<Result<Granted, NodeError>>;

impl Transport {
    /// `count` timestamps from the meta range's leader `leader`: asked on the peer
    /// stream, or by a unary call if that goes unanswered. `asker_term`: this member's
    /// word (`crate::member_word::MemberWord`), 0 for none. `vouch_for`: ranges this
    /// member leads whose fresh reads wait for the timestamps (at most `VOUCH_FOR_MAX`);
    /// a grant on the stream carries the granter's word of each (a unary answer none).
    pub async fn timestamps(
        &self,
        leader: NodeId,
        count: u64,
        asker_term: u64,
        vouch_for: &[GroupId],
    ) -> Result<Granted, NodeError> {
        if !self.asks_unary_only(leader) {
            if let Some(granted) = self
                .ask_on_stream(leader, count, asker_term, vouch_for)
                .await
            {
                return granted;
            }
        }
        self.timestamps_unary(leader, count, asker_term)
            .await
            .map(Granted::without_words)
    }

    fn asks_unary_only(&self, leader: NodeId) -> bool {
        self.inner.asks.unary_only(leader)
    }

    /// Asks on the stream; None if no grant came within `ASK_TIMEOUT` (or the ask could
    /// not be queued).
    async fn ask_on_stream(
        &self,
        leader: NodeId,
        count: u64,
        asker_term: u64,
        vouch_for: &[GroupId],
    ) -> Option<Result<Granted, NodeError>> {
        if self.channel(leader).is_none() {
            return Some(Err(NodeError::NoLeader));
        }
        let mut pending = self.inner.asks.ask(leader);
        let id = pending.id;
        // Further ranges' fresh reads take their own rounds (the caller bounds them too).
        let vouch_for = &vouch_for[..vouch_for.len().min(VOUCH_FOR_MAX)];
        let ask = Outgoing::Ask(pb::TimestampsAsk {
            id,
            count,
            asker_term,
            vouch_for: vouch_for.iter().map(|group| group.0).collect(),
        });
        if !self.offer(leader, ask) {
            // Our own queue is full: nothing learnt about the peer.
            return None;
        }
        match pending.answer(ASK_TIMEOUT).await {
            Some(result) => Some(result.and_then(|granted| {
                // An answer for another count is not this ask's.
                if granted.range.count == count {
                    Ok(granted)
                } else {
                    Err(NodeError::LeaderChanged)
                }
            })),
            None => {
                crate::metrics::metrics().oracle_asks_unanswered.inc();
                None
            }
        }
    }

    /// A grant arrived on `from`'s stream.
    pub(super) fn granted(&self, from: NodeId, grant: pb::TimestampsGrant) {
        let Some(waiter) = self.inner.asks.answered(from, grant.id) else {
            return;
        };
        let result = match grant.error {
            Some(error) => Err(codec::decode_node_error(error)),
            None => {
                crate::metrics::metrics().oracle_asks_granted.inc();
                Ok(Granted {
                    range: TimestampRange {
                        first: Timestamp(grant.first),
                        count: grant.count,
                    },
                    vouched: grant
                        .vouched
                        .iter()
                        .filter(|vouched| vouched.term > 0)
                        .map(|vouched| {
                            let word = MemberWord {
                                member: from,
                                term: Term(vouched.term),
                            };
                            (GroupId(vouched.group), word)
                        })
                        .collect(),
                })
            }
        };
        let _ = waiter.send(result);
    }

    /// Answers `to`'s ask `id` on the stream back to it (from the event loop: never
    /// blocks; a full queue drops the grant, and the asker asks again), with this
    /// member's word of the ranges in `vouched`.
    pub(super) fn grant(
        &self,
        to: NodeId,
        id: u64,
        result: Result<TimestampRange, NodeError>,
        vouched: Vec<pb::GroupTerm>,
    ) {
        if self.channel(to).is_none() {
            return; // not (or no longer) a peer: no stream to answer on
        }
        let grant = match result {
            Ok(range) => pb::TimestampsGrant {
                id,
                first: range.first.0,
                count: range.count,
                error: None,
                vouched,
            },
            Err(error) => pb::TimestampsGrant {
                id,
                error: Some(codec::encode_node_error(error)),
                ..Default::default()
            },
        };
        self.offer(to, Outgoing::Grant(grant));
    }

    /// The unary `Timestamps` call.
    async fn timestamps_unary(
        &self,
        leader: NodeId,
        count: u64,
        asker_term: u64,
    ) -> Result<TimestampRange, NodeError> {
        let Some(channel) = self.channel(leader) else {
            return Err(NodeError::NoLeader);
        };
        let response = PeerClient::new(channel)
            .timestamps(pb::PeerTimestampsRequest {
                count,
                cluster_id: self.inner.cluster_id,
                from: self.inner.me.0,
                asker_term,
            })
            .await
            .map_err(|_| NodeError::LeaderChanged)?
            .into_inner();
        if let Some(error) = response.error {
            return Err(codec::decode_node_error(error));
        }
        if response.count != count {
            return Err(NodeError::LeaderChanged);
        }
        Ok(TimestampRange {
            first: Timestamp(response.first),
            count,
        })
    }
}
