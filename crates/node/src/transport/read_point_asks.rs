//! Read barriers and fresh read points asked of a range's leader on the peer streams
//! that carry raft messages, as the oracle's asks are (`timestamp_asks`, which says
//! why): a unary `ReadBarrier` call per request cost a new HTTP/2 stream, a task on
//! each side and tonic's buffers, where an ask joins the next batch of raft messages to
//! the leader and its answer rides a batch back. The reads of a range on a member share
//! one request (`coalesce`), so a request stands for a batch of linearizable gets.
//!
//! A request unanswered within `ASK_TIMEOUT` is sent again by the unary call, and a
//! member that ignores them is asked by unary calls only for a while (`stream_asks`).
//! An answer that comes late is dropped: the unary call asks the leader again, so a
//! lost answer costs time, never safety.

use std::time::Duration;

use ostrakon_proto::peer::{self as pb};
use ostrakon_raft::{LogIndex, NodeId};

use super::{codec, Outgoing, Transport};
use crate::error::NodeError;

/// A request unanswered this long is sent again by the unary call: well above a read
/// point's wait for its leader's next fetch and read index under load.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether this member ignores the read point asks it receives, as a member of an
/// earlier version does: `OSTRAKON_TEST_IGNORE_READ_POINT_ASKS=1` (tests show the askers
/// fall back to the unary call).
pub(super) fn ignore_asks() -> bool {
    static IGNORE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IGNORE.get_or_init(|| {
        std::env::var("OSTRAKON_TEST_IGNORE_READ_POINT_ASKS").is_ok_and(|value| value == "1")
    })
}

/// A read point: the index to wait for, and a fresh read point's revision (0 for a
/// barrier).
pub(super) type ReadPoint = (LogIndex, u64);

/// The read point asks waiting for answers.
pub(super) type ReadPointAsks = super::stream_asks::StreamAsks<Result<ReadPoint, NodeError>>;

/// The read point a leader's answer gives, or the error it reports.
pub(super) fn read_point_of(response: pb::ReadBarrierResponse) -> Result<ReadPoint, NodeError> {
    match response.error {
        Some(error) => Err(codec::decode_node_error(error)),
        None => Ok((LogIndex(response.index), response.revision)),
    }
}

impl Transport {
    /// Whether `leader` is asked for read points by unary calls only for now.
    pub(super) fn read_points_unary_only(&self, leader: NodeId) -> bool {
        self.inner.read_point_asks.unary_only(leader)
    }

    /// A read point from `leader`, asked on the stream; if no answer came within
    /// `ASK_TIMEOUT`, asked again by `unary` as well, and the first answer of the two
    /// taken (both are valid: each was asked after the reads it is for began). Only
    /// `unary` if the ask cannot be queued.
    pub(super) async fn read_point_on_stream(
        &self,
        leader: NodeId,
        request: pb::ReadBarrierRequest,
        unary: impl std::future::Future<Output = Result<ReadPoint, NodeError>>,
    ) -> Result<ReadPoint, NodeError> {
        let mut pending = self.inner.read_point_asks.ask(leader);
        let ask = Outgoing::ReadPointAsk(pb::ReadPointAsk {
            id: pending.id,
            request: Some(request),
        });
        if !self.offer(leader, ask) {
            // Our own queue is full: nothing learnt about the peer.
            return unary.await;
        }
        if let Some(answer) = pending.answer(ASK_TIMEOUT).await {
            return answer;
        }
        crate::metrics::metrics().read_point_asks_unanswered.inc();
        tokio::select! {
            answer = pending.late_answer() => answer,
            answer = unary => answer,
        }
    }

    /// An answer arrived on `from`'s stream.
    pub(super) fn read_point_answered(&self, from: NodeId, answer: pb::ReadPointAnswer) {
        let Some(waiter) = self.inner.read_point_asks.answered(from, answer.id) else {
            return;
        };
        crate::metrics::metrics().read_point_asks_answered.inc();
        let response = answer.response.unwrap_or_else(|| pb::ReadBarrierResponse {
            error: Some(codec::encode_node_error(NodeError::LeaderChanged)),
            ..Default::default()
        });
        let _ = waiter.send(read_point_of(response));
    }

    /// Answers `to`'s ask `id` on the stream back to it (never blocks; a full queue
    /// drops the answer, and the asker asks again by the unary call).
    pub(super) fn answer_read_point(&self, to: NodeId, id: u64, response: pb::ReadBarrierResponse) {
        if self.channel(to).is_none() {
            return; // not (or no longer) a peer: no stream to answer on
        }
        let answer = Outgoing::ReadPointAnswer(pb::ReadPointAnswer {
            id,
            response: Some(response),
        });
        self.offer(to, answer);
    }
}
