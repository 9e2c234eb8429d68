//! Raft messages between nodes over gRPC.
//!
//! Each peer has one sender task and one long-lived client stream; all messages for that
//! peer, of every group, are batched into one `MessageBatch` per send. A broken stream is
//! reported to raft (`Unreachable`) and reopened; messages queued meanwhile are dropped,
//! which raft tolerates. Snapshots go in their own stream, in chunks, and their outcome is
//! always reported back to raft.

mod service;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ostrakon_proto::peer::peer_client::PeerClient;
use ostrakon_proto::peer::{
    self as pb, write_request, ForwardRequest, MessageBatch, SnapshotChunk, SnapshotHeader,
    WriteRequest,
};
use ostrakon_raft::{GroupId, Message, MessageBody, NodeId};
use ostrakon_storage::mvcc::WriteOutcome;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub use service::PeerService;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::event_loop::{Input, InputSender, Layout};

/// Messages in one batch at most.
const BATCH_MESSAGES_MAX: usize = 4096;
/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Pause before reopening a broken stream.
const RECONNECT_DELAY: Duration = Duration::from_millis(50);

struct Inner {
    me: NodeId,
    cluster_id: u64,
    layout: Layout,
    inputs: InputSender,
    runtime: tokio::runtime::Handle,
    /// The peers' channels (lazily connected, reconnecting by themselves).
    channels: BTreeMap<NodeId, Channel>,
    queues: Mutex<HashMap<NodeId, mpsc::UnboundedSender<pb::RaftMessage>>>,
}

/// The client side of the peer protocol.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

impl Transport {
    /// A transport to the configured peers.
    pub fn new(
        config: &NodeConfig,
        layout: Layout,
        inputs: InputSender,
        runtime: tokio::runtime::Handle,
    ) -> Transport {
        let _guard = runtime.enter();
        let channels = config
            .peers
            .iter()
            .filter(|(id, _)| **id != config.id)
            .map(|(id, url)| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .expect("peer URLs are validated at startup")
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true);
                (*id, endpoint.connect_lazy())
            })
            .collect();
        Transport {
            inner: Arc::new(Inner {
                me: config.id,
                cluster_id: config.cluster_id,
                layout,
                inputs,
                runtime,
                channels,
                queues: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sends messages (from the event loop thread; never blocks).
    pub fn send(&self, messages: Vec<Message>) {
        if messages.is_empty() {
            return;
        }
        let mut queues = self.inner.queues.lock().unwrap();
        for message in messages {
            let to = message.to;
            if !self.inner.channels.contains_key(&to) {
                tracing::debug!(to = to.0, "message to an unknown peer dropped");
                continue;
            }
            if let MessageBody::InstallSnapshot { .. } = &message.body {
                self.send_snapshot(message);
                continue;
            }
            let queue = queues.entry(to).or_insert_with(|| self.start_sender(to));
            if queue.send(pb::RaftMessage::from(&message)).is_err() {
                tracing::warn!(to = to.0, "peer sender stopped");
            }
        }
    }

    fn start_sender(&self, to: NodeId) -> mpsc::UnboundedSender<pb::RaftMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        let transport = self.clone();
        self.inner
            .runtime
            .spawn(async move { transport.run_sender(to, rx).await });
        tx
    }

    async fn run_sender(self, to: NodeId, mut queue: mpsc::UnboundedReceiver<pb::RaftMessage>) {
        let channel = self.inner.channels[&to].clone();
        loop {
            let (batches, stream) = mpsc::channel::<MessageBatch>(64);
            let mut client = PeerClient::new(channel.clone());
            let call = tokio::spawn(async move { client.raft(ReceiverStream::new(stream)).await });
            loop {
                let Some(first) = queue.recv().await else {
                    return;
                };
                let mut messages = vec![first];
                while messages.len() < BATCH_MESSAGES_MAX {
                    match queue.try_recv() {
                        Ok(message) => messages.push(message),
                        Err(_) => break,
                    }
                }
                let batch = MessageBatch {
                    from: self.inner.me.0,
                    to: to.0,
                    cluster_id: self.inner.cluster_id,
                    messages,
                };
                if batches.send(batch).await.is_err() {
                    break;
                }
            }
            if let Ok(Err(status)) = call.await {
                tracing::debug!(to = to.0, %status, "peer stream broke");
            }
            let _ = self.inner.inputs.send(Input::Unreachable(to));
            tokio::time::sleep(RECONNECT_DELAY).await;
            // What queued up while the stream was down is stale; raft resends.
            while queue.try_recv().is_ok() {}
        }
    }

    fn send_snapshot(&self, message: Message) {
        let transport = self.clone();
        self.inner.runtime.spawn(async move {
            let group = message.group;
            let to = message.to;
            let delivered = match transport.stream_snapshot(&message).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(to = to.0, %error, "snapshot stream failed");
                    false
                }
            };
            let _ = transport.inner.inputs.send(Input::SnapshotReport {
                group,
                to,
                delivered,
            });
        });
    }

    async fn stream_snapshot(&self, message: &Message) -> Result<(), String> {
        let MessageBody::InstallSnapshot { meta } = &message.body else {
            unreachable!("only snapshot messages are streamed")
        };
        let path = self.inner.layout.snapshot_file(message.group, meta.index);
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (chunks, stream) = mpsc::channel::<SnapshotChunk>(4);
        let mut client = PeerClient::new(self.inner.channels[&message.to].clone());
        let call = tokio::spawn(async move { client.snapshot(ReceiverStream::new(stream)).await });
        let mut header = Some(SnapshotHeader {
            cluster_id: self.inner.cluster_id,
            group: message.group.0,
            from: message.from.0,
            to: message.to.0,
            message: Some(pb::RaftMessage::from(message)),
        });
        let mut crc = 0u32;
        let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
        loop {
            let read = file.read(&mut buffer).await.map_err(|e| e.to_string())?;
            crc = crc32c::crc32c_append(crc, &buffer[..read]);
            let last = read == 0;
            let chunk = SnapshotChunk {
                header: header.take(),
                data: bytes::Bytes::copy_from_slice(&buffer[..read]),
                last,
                crc32c: if last { crc } else { 0 },
            };
            if chunks.send(chunk).await.is_err() || last {
                break;
            }
        }
        drop(chunks);
        match call.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status.to_string()),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Has the leader propose a write for us; returns its outcome.
    /// Asks a member about itself; `None` if it cannot be reached.
    pub async fn member_info(&self, member: NodeId) -> Option<ostrakon_proto::peer::MemberInfo> {
        let channel = self.inner.channels.get(&member)?;
        PeerClient::new(channel.clone())
            .member(ostrakon_proto::peer::MemberQuery {})
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Asks the leader to renew a lease or report its remaining TTL.
    pub async fn lease_query(
        &self,
        leader: NodeId,
        group: GroupId,
        id: i64,
        renew: bool,
    ) -> Result<Option<crate::lessor::LeaseTtl>, NodeError> {
        let Some(channel) = self.inner.channels.get(&leader) else {
            return Err(NodeError::NoLeader);
        };
        let answer = PeerClient::new(channel.clone())
            .lease(ostrakon_proto::peer::LeaseQuery {
                group: group.0,
                id,
                renew,
            })
            .await
            .map_err(|status| {
                tracing::debug!(%status, "a lease query to the leader failed");
                NodeError::LeaderChanged
            })?
            .into_inner();
        if answer.not_leader {
            return Err(NodeError::LeaderChanged);
        }
        Ok(answer.found.then_some(crate::lessor::LeaseTtl {
            remaining_secs: answer.remaining_secs,
            ttl_secs: answer.ttl_secs,
        }))
    }

    pub async fn forward(
        &self,
        leader: NodeId,
        group: GroupId,
        request: write_request::Request,
    ) -> Result<WriteOutcome, NodeError> {
        let Some(channel) = self.inner.channels.get(&leader) else {
            return Err(NodeError::NoLeader);
        };
        let mut client = PeerClient::new(channel.clone());
        let forward = ForwardRequest {
            group: group.0,
            write: Some(WriteRequest {
                origin: 0,
                id: 0,
                request: Some(request),
            }),
        };
        let response = client
            .forward(forward)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::DeadlineExceeded => NodeError::Timeout,
                _ => NodeError::LeaderChanged,
            })?
            .into_inner();
        service::decode_forward_response(response)
    }
}
