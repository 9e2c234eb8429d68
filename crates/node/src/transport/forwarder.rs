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

use ostrakon_proto::peer::peer_client::PeerClient;
use ostrakon_proto::peer::{ForwardBatchRequest, ForwardRequest, ForwardResponse};
use ostrakon_raft::NodeId;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, Semaphore};

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
            let mut bytes = first.forward.encoded_len();
            let mut batch = vec![first];
            while batch.len() < FORWARD_BATCH_WRITES_MAX && bytes < FORWARD_BATCH_BYTES_MAX {
                match queue.try_recv() {
                    Ok(next) => {
                        bytes += next.forward.encoded_len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let Some(channel) = self.channel(to) else {
                for queued in batch {
                    let _ = queued.answer.send(Err(NodeError::NoLeader));
                }
                return;
            };
            crate::metrics::metrics()
                .forward_batch_writes
                .observe_value(batch.len() as f64);
            let (forwards, answers): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|queued| (queued.forward, queued.answer))
                .unzip();
            let request = ForwardBatchRequest {
                writes: forwards,
                cluster_id: self.inner.cluster_id,
                from: self.inner.me.0,
            };
            tokio::spawn(async move {
                let outcome = PeerClient::new(channel).forward_batch(request).await;
                drop(permit);
                match outcome {
                    Ok(response) => {
                        let responses = response.into_inner().responses;
                        if responses.len() != answers.len() {
                            // A leader of another version, or a broken one: no write's
                            // fate is known.
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
                    Err(status) => {
                        let error = match status.code() {
                            tonic::Code::DeadlineExceeded => NodeError::Timeout,
                            _ => NodeError::LeaderChanged,
                        };
                        for answer in answers {
                            let _ = answer.send(Err(error.clone()));
                        }
                    }
                }
            });
        }
    }
}
