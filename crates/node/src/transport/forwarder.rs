//! Writes a follower forwards to a range's leader, sent in batches.
//!
//! A peer call costs far more than the write it carries: HTTP/2 headers and trailers,
//! a task on each side, wake-ups and socket writes (docs/PERFORMANCE.md). So each
//! leader member has one queue here and a driver that keeps at most
//! `FORWARD_CALLS_IN_FLIGHT` calls to it open: while they are out, the writes that come
//! queue up and leave together in the next call. A lone client's write leaves at once;
//! under load, one call carries many writes. The leader answers each write as a
//! single forward would (`ForwardBatch`), in order, once all of them have their
//! outcome: they were proposed together and commit in the same rounds.

use std::sync::Arc;
use std::time::Duration;

use ostrakon_proto::peer::peer_client::PeerClient;
use ostrakon_proto::peer::{ForwardBatchRequest, ForwardRequest, ForwardResponse};
use ostrakon_raft::NodeId;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::transport::Channel;

use super::Transport;
use crate::error::NodeError;

/// Calls to one leader member open at once: enough to keep the leader's pipeline full,
/// few enough that writes arriving meanwhile share the next call.
const FORWARD_CALLS_IN_FLIGHT: usize = 2;
/// Writes in one call at most.
const FORWARD_BATCH_WRITES_MAX: usize = 512;
/// Encoded bytes of one call's writes, beyond which no further write joins it (the
/// first always goes).
const FORWARD_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Writes waiting for a call, per leader member; a full queue holds the caller back.
const FORWARD_QUEUE_WRITES_MAX: usize = 4096;
/// The largest answer to a batch accepted (the peer server's limit on what it takes): a
/// batch of writes with `prev_kv` answers more than it sent.
const FORWARD_RESPONSE_BYTES_MAX: usize = 256 * 1024 * 1024;
/// How much longer than the request timeout a batch's call may take.
const FORWARD_CALL_MARGIN: Duration = Duration::from_secs(1);

/// A write waiting to be forwarded, and where its answer goes.
pub(super) struct QueuedForward {
    forward: ForwardRequest,
    answer: oneshot::Sender<Result<ForwardResponse, NodeError>>,
}

impl Transport {
    /// Sends `forward` to `leader` in the next batch and waits for its answer.
    pub(super) async fn forward_batched(
        &self,
        leader: NodeId,
        forward: ForwardRequest,
    ) -> Result<ForwardResponse, NodeError> {
        let queue = {
            let mut queues = self.inner.forward_queues.lock().unwrap();
            match queues.get(&leader) {
                Some(queue) if !queue.is_closed() => queue.clone(),
                _ => {
                    let queue = self.start_forwarder(leader);
                    queues.insert(leader, queue.clone());
                    queue
                }
            }
        };
        let (answer, answered) = oneshot::channel();
        queue
            .send(QueuedForward { forward, answer })
            .await
            .map_err(|_| NodeError::NoLeader)?;
        answered.await.map_err(|_| NodeError::LeaderChanged)?
    }

    /// Sends `forward` to `leader` in a call of its own and waits for its answer.
    pub(super) async fn forward_alone(
        &self,
        leader: NodeId,
        forward: ForwardRequest,
    ) -> Result<ForwardResponse, NodeError> {
        let Some(channel) = self.channel(leader) else {
            return Err(NodeError::NoLeader);
        };
        let forward = ForwardRequest {
            cluster_id: self.inner.cluster_id,
            from: self.inner.me.0,
            ..forward
        };
        let mut client =
            PeerClient::new(channel).max_decoding_message_size(FORWARD_RESPONSE_BYTES_MAX);
        let deadline = self.inner.request_timeout + FORWARD_CALL_MARGIN;
        match tokio::time::timeout(deadline, client.forward(forward)).await {
            Ok(outcome) => outcome
                .map(tonic::Response::into_inner)
                .map_err(|status| forward_failure(&status)),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    fn start_forwarder(&self, to: NodeId) -> mpsc::Sender<QueuedForward> {
        let (tx, rx) = mpsc::channel(FORWARD_QUEUE_WRITES_MAX);
        let transport = self.clone();
        self.inner
            .runtime
            .spawn(async move { transport.run_forwarder(to, rx).await });
        tx
    }

    /// Drains `queue` into calls to `to`, until every sender is gone or `to` is no
    /// longer a peer.
    async fn run_forwarder(self, to: NodeId, mut queue: mpsc::Receiver<QueuedForward>) {
        let in_flight = Arc::new(Semaphore::new(FORWARD_CALLS_IN_FLIGHT));
        while let Some(first) = queue.recv().await {
            // Waiting for a call to come back lets the writes behind this one gather.
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the forwarder's semaphore is never closed");
            let mut bytes = 0;
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(queued) = next.take() {
                // A write whose caller gave up (its deadline passed) is not sent: it was
                // answered Timeout, and nobody waits for it.
                if !queued.answer.is_closed() {
                    bytes += queued.forward.encoded_len();
                    batch.push(queued);
                }
                if batch.len() < FORWARD_BATCH_WRITES_MAX && bytes < FORWARD_BATCH_BYTES_MAX {
                    next = queue.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let Some(channel) = self.channel(to) else {
                // Not a peer any more: nothing queued for it was sent.
                // Closed, the queue still yields what senders that reserved a slot put
                // in, then ends.
                queue.close();
                while let Some(queued) = queue.recv().await {
                    batch.push(queued);
                }
                for queued in batch {
                    let _ = queued.answer.send(Err(NodeError::NoLeader));
                }
                return;
            };
            crate::metrics::metrics()
                .forward_batch_writes
                .observe_value(batch.len() as f64);
            let transport = self.clone();
            tokio::spawn(async move {
                transport.send_batch(channel, batch).await;
                drop(permit);
            });
        }
    }

    /// Sends one batch and hands each write its answer.
    async fn send_batch(&self, channel: Channel, batch: Vec<QueuedForward>) {
        let (forwards, answers): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|queued| (queued.forward, queued.answer))
            .unzip();
        let request = ForwardBatchRequest {
            // Cheap to keep: the writes' keys and values are shared buffers.
            writes: forwards.clone(),
            cluster_id: self.inner.cluster_id,
            from: self.inner.me.0,
        };
        let mut client =
            PeerClient::new(channel.clone()).max_decoding_message_size(FORWARD_RESPONSE_BYTES_MAX);
        // The leader answers each write within the request timeout (a write that takes
        // longer is answered Timeout); the margin covers the trip.
        let deadline = self.inner.request_timeout + FORWARD_CALL_MARGIN;
        let outcome = match tokio::time::timeout(deadline, client.forward_batch(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(tonic::Status::deadline_exceeded("the forwarded batch")),
        };
        let responses = match outcome {
            Ok(response) => response.into_inner().responses,
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                // A leader of an earlier version, during a rolling upgrade: one call
                // per write, as it knows.
                let (cluster_id, from) = (self.inner.cluster_id, self.inner.me.0);
                for (forward, answer) in forwards.into_iter().zip(answers) {
                    let mut client = PeerClient::new(channel.clone())
                        .max_decoding_message_size(FORWARD_RESPONSE_BYTES_MAX);
                    tokio::spawn(async move {
                        let forward = ForwardRequest {
                            cluster_id,
                            from,
                            ..forward
                        };
                        let _ = answer.send(
                            client
                                .forward(forward)
                                .await
                                .map(tonic::Response::into_inner)
                                .map_err(|status| forward_failure(&status)),
                        );
                    });
                }
                return;
            }
            Err(status) => {
                let error = forward_failure(&status);
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
                return;
            }
        };
        if responses.len() != answers.len() {
            // A broken leader: no write's fate is known.
            tracing::warn!(
                sent = answers.len(),
                answered = responses.len(),
                "a forwarded batch came back with a different count"
            );
            for answer in answers {
                let _ = answer.send(Err(NodeError::LeaderChanged));
            }
            return;
        }
        for (answer, response) in answers.into_iter().zip(responses) {
            let _ = answer.send(Ok(response));
        }
    }
}

/// Whether `forward` is a prepare that may wait in its range's line, for as long as the
/// range is held: it goes in a call of its own, as the leader answers a batch once
/// its last write is answered.
pub(super) fn waits_in_line(forward: &ForwardRequest) -> bool {
    matches!(
        forward.write.as_ref().and_then(|write| write.request.as_ref()),
        Some(ostrakon_proto::peer::write_request::Request::TxnPrepare(prepare)) if prepare.waits_in_line
    )
}

/// What a failed call means for the writes it carried: they may have applied, so they
/// are not tried again (as for a failed single forward).
fn forward_failure(status: &tonic::Status) -> NodeError {
    match status.code() {
        tonic::Code::DeadlineExceeded => NodeError::Timeout,
        _ => NodeError::LeaderChanged,
    }
}
