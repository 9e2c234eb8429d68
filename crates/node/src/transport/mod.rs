//! Raft messages between nodes over gRPC.
//!
//! Each peer has one sender task and one long-lived client stream; all messages for that
//! peer, of every group, are batched into one `MessageBatch` per send. A broken stream is
//! reported to raft (`Unreachable`) and reopened; messages queued meanwhile are dropped,
//! which raft tolerates. Snapshots go in their own stream, in chunks, and their outcome is
//! always reported back to raft.
//!
//! A sender with nothing to send for a heartbeat interval sends an empty batch: the
//! peer's node liveness (`Liveness`) hears from this node even when every group is
//! quiesced.

mod codec;
mod forwarder;
mod read_point_asks;
mod service;
mod stream_asks;
mod timestamp_asks;
pub use timestamp_asks::{Granted, VOUCH_FOR_MAX};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ostrakon_proto::peer::peer_client::PeerClient;
use ostrakon_proto::peer::{
    self as pb, write_request, ForwardRequest, MembersQuery, MessageBatch, SnapshotChunk,
    SnapshotHeader, WriteRequest,
};
use ostrakon_raft::{GroupId, LogIndex, Message, MessageBody, NodeId};
use ostrakon_storage::mvcc::WriteOutcome;
use prost::Message as _;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub use service::PeerService;

/// Why a snapshot did not reach its receiver.
#[derive(Debug)]
enum SnapshotSendError {
    /// The receiver refused it: it overlaps another range there.
    Overlaps(String),
    /// No file holds the snapshot (not written yet: `SnapshotSent::NoFile`).
    NoFile,
    /// The stream failed (the receiver is down, a file could not be read, ...).
    Failed(String),
}

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::input::{Input, InputSender, SnapshotSent};
use crate::layout::Layout;
use crate::liveness::Liveness;
use crate::node_load::NodeLoads;
use crate::tls::TlsMaterial;

/// Messages in one batch at most.
const BATCH_MESSAGES_MAX: usize = 4096;
/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Snapshot streams to one peer at once. More would only meet the receiver's bound
/// (`service::INCOMING_SNAPSHOTS_MAX`, from all its peers) and fail: with thousands of
/// ranges behind on one member, every range's leader retried at every heartbeat, and a
/// sender held a gigabyte in failing streams.
const OUTGOING_SNAPSHOTS_PER_PEER: usize = 1;
/// The pause before a failed or refused snapshot send is reported to raft (which then
/// sends it again), doubling with each failure in a row of the range's snapshots to that
/// peer, up to `SNAPSHOT_RETRY_PAUSE_MAX`. A refusal most often means the receiver has
/// not applied the split that created the range yet: it soon will, and then needs no
/// snapshot at all.
const SNAPSHOT_RETRY_PAUSE_MIN: Duration = Duration::from_millis(200);
const SNAPSHOT_RETRY_PAUSE_MAX: Duration = Duration::from_secs(5);
/// A snapshot stream that makes no progress this long (a chunk not taken, or no answer
/// once all was sent) has failed: a peer behind a link that drops everything would
/// otherwise hold the peer's one permit (`OUTGOING_SNAPSHOTS_PER_PEER`) until TCP gives
/// up, many minutes after the link came back. The answer, once every chunk is sent, gets
/// as long again and a second per MiB of the file: the receiver writes it, fsyncs it and
/// reads it back before it answers.
const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before reopening a broken stream.
const RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// Messages waiting for one peer's stream; beyond it they are dropped (raft resends), as
/// etcd drops them when its per-peer buffer is full.
const PEER_QUEUE_MESSAGES_MAX: usize = 4096;

/// `PEER_QUEUE_MESSAGES_MAX`, unless `OSTRAKON_PEER_QUEUE_MESSAGES_MAX` in the environment
/// sets another bound: tests make it tiny to see what a full queue does.
fn peer_queue_messages_max() -> usize {
    static BOUND: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BOUND.get_or_init(|| {
        std::env::var("OSTRAKON_PEER_QUEUE_MESSAGES_MAX")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&bound| bound > 0)
            .unwrap_or(PEER_QUEUE_MESSAGES_MAX)
    })
}
/// How often the round trip to each peer is measured.
const ROUND_TRIP_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A probe slower than this counts as lost.
const ROUND_TRIP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

struct Inner {
    me: NodeId,
    cluster_id: u64,
    layout: Layout,
    inputs: InputSender,
    runtime: tokio::runtime::Handle,
    /// TLS for connecting to peers, if configured.
    tls: Option<TlsMaterial>,
    /// The peers' URLs and channels (lazily connected, reconnecting by themselves);
    /// replaced as the member registry changes.
    channels: RwLock<BTreeMap<NodeId, (String, Channel)>>,
    /// Each peer's queue of messages waiting for its stream; bounded by
    /// `PEER_QUEUE_MESSAGES_MAX`.
    queues: Mutex<HashMap<NodeId, mpsc::Sender<Outgoing>>>,
    /// Timestamp asks sent on the peer streams, waiting for their grants.
    asks: timestamp_asks::Asks,
    /// Read point asks sent on the peer streams, waiting for their answers.
    read_point_asks: read_point_asks::ReadPointAsks,
    /// When each peer was last heard from (filled by the peer service).
    liveness: Arc<Liveness>,
    /// This node's load as leader, sent on every batch, and the peers' (filled by the
    /// peer service).
    loads: Arc<NodeLoads>,
    /// An idle sender sends an empty batch this often (the raft heartbeat interval).
    idle_ping_interval: Duration,
    /// Each peer's permits for snapshot streams (`OUTGOING_SNAPSHOTS_PER_PEER`).
    outgoing_snapshots: Mutex<HashMap<NodeId, Arc<tokio::sync::Semaphore>>>,
    /// Failed snapshot sends in a row, per range and peer (for the retry pause);
    /// forgotten on success, and when the range or the peer goes.
    snapshot_failures: Mutex<HashMap<(GroupId, NodeId), u32>>,
    /// How long a forwarded write may take (`--request-timeout`): a batch's call ends
    /// by then.
    request_timeout: Duration,
    /// Each leader member's queue of writes to forward (`forwarder`).
    forward_queues: Mutex<HashMap<NodeId, mpsc::Sender<forwarder::QueuedForward>>>,
}

/// What a peer's stream carries: raft messages, the oracle's asks and grants, and read
/// points asked of ranges' leaders and their answers.
enum Outgoing {
    Raft(pb::RaftMessage),
    Ask(pb::TimestampsAsk),
    Grant(pb::TimestampsGrant),
    ReadPointAsk(pb::ReadPointAsk),
    ReadPointAnswer(pb::ReadPointAnswer),
}

/// The client side of the peer protocol.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// An endpoint for a peer's URL; with TLS configured, for `TlsMaterial::connector`.
pub(crate) fn peer_endpoint(
    url: &str,
    tls: Option<&TlsMaterial>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = match tls {
        Some(_) => TlsMaterial::endpoint(url)?,
        None => Endpoint::from_shared(url.to_string())?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true))
}

/// A channel to a peer that connects when first used, over TLS if configured.
pub(crate) fn peer_channel_lazy(endpoint: Endpoint, tls: Option<&TlsMaterial>) -> Channel {
    match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
        None => endpoint.connect_lazy(),
    }
}

impl Transport {
    /// A transport to the configured peers.
    pub fn new(
        config: &NodeConfig,
        layout: Layout,
        inputs: InputSender,
        runtime: tokio::runtime::Handle,
    ) -> Transport {
        let transport = Transport {
            inner: Arc::new(Inner {
                me: config.id,
                cluster_id: config.cluster_id,
                layout,
                inputs,
                runtime,
                channels: RwLock::new(BTreeMap::new()),
                tls: config.peer_tls.clone(),
                queues: Mutex::new(HashMap::new()),
                liveness: Arc::new(Liveness::default()),
                loads: Arc::new(NodeLoads::default()),
                idle_ping_interval: config.tick_interval * config.heartbeat_ticks,
                outgoing_snapshots: Mutex::default(),
                snapshot_failures: Mutex::default(),
                request_timeout: config.request_timeout,
                forward_queues: Mutex::default(),
                asks: Default::default(),
                read_point_asks: Default::default(),
            }),
        };
        transport.set_peers(&config.peers);
        transport
            .inner
            .runtime
            .spawn(transport.clone().probe_round_trips());
        transport
    }

    /// Measures the round trip to each peer every few seconds with the cheapest call the
    /// peer service has, over the same connection the raft stream uses (so through
    /// whatever the link does to it): etcd_network_peer_round_trip_time_seconds.
    async fn probe_round_trips(self) {
        loop {
            tokio::time::sleep(ROUND_TRIP_PROBE_INTERVAL).await;
            let peers: Vec<(NodeId, Channel)> = self
                .inner
                .channels
                .read()
                .unwrap()
                .iter()
                .map(|(id, (_, channel))| (*id, channel.clone()))
                .collect();
            for (id, channel) in peers {
                let started = std::time::Instant::now();
                let query = MembersQuery {
                    group: crate::DEFAULT_GROUP.0,
                };
                let mut client = PeerClient::new(channel);
                let call = client.members(query);
                if let Ok(Ok(_)) = tokio::time::timeout(ROUND_TRIP_PROBE_TIMEOUT, call).await {
                    crate::metrics::metrics()
                        .peer_round_trip
                        .with(&[&format!("{:x}", id.0)])
                        .observe(started.elapsed());
                }
            }
        }
    }

    /// When each peer was last heard from.
    pub fn liveness(&self) -> &Arc<Liveness> {
        &self.inner.liveness
    }

    /// This node's load as leader and its peers'.
    pub fn loads(&self) -> &Arc<NodeLoads> {
        &self.inner.loads
    }

    /// The peers' ids.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.inner
            .channels
            .read()
            .unwrap()
            .keys()
            .copied()
            .collect()
    }

    /// Makes the peers these (id to peer URL): new members get a channel, members whose
    /// URL changed a new one, members that left none. Every peer gets a sender at once,
    /// so its idle pings start before any group has anything to say.
    pub fn set_peers(&self, peers: &BTreeMap<NodeId, String>) {
        self.set_channels(peers);
        let ids = self.peer_ids();
        self.inner
            .outgoing_snapshots
            .lock()
            .unwrap()
            .retain(|id, _| ids.contains(id));
        self.inner
            .snapshot_failures
            .lock()
            .unwrap()
            .retain(|(_, id), _| ids.contains(id));
        // A member that left: its forwarder's queue closes, and the forwarder ends.
        self.inner
            .forward_queues
            .lock()
            .unwrap()
            .retain(|id, _| ids.contains(id));
        let mut queues = self.inner.queues.lock().unwrap();
        for id in ids {
            let running = queues.get(&id).is_some_and(|queue| !queue.is_closed());
            if !running {
                queues.insert(id, self.start_sender(id));
            }
        }
    }

    fn set_channels(&self, peers: &BTreeMap<NodeId, String>) {
        let _guard = self.inner.runtime.enter();
        let mut channels = self.inner.channels.write().unwrap();
        channels.retain(|id, (url, _)| peers.get(id) == Some(url));
        for (id, url) in peers {
            if *id == self.inner.me || channels.contains_key(id) {
                continue;
            }
            let endpoint = match peer_endpoint(url, self.inner.tls.as_ref()) {
                Ok(endpoint) => endpoint,
                Err(error) => {
                    tracing::error!(peer = id.0, %url, %error, "a member's peer URL is unusable");
                    continue;
                }
            };
            tracing::info!(peer = %format!("{:x}", id.0), %url, "peer link");
            let channel = peer_channel_lazy(endpoint, self.inner.tls.as_ref());
            channels.insert(*id, (url.clone(), channel));
        }
    }

    fn channel(&self, id: NodeId) -> Option<Channel> {
        self.inner
            .channels
            .read()
            .unwrap()
            .get(&id)
            .map(|(_, channel)| channel.clone())
    }

    /// Sends messages (from the event loop thread; never blocks). Returns the peers
    /// whose queue was full: messages to them were dropped, as a lossy network would
    /// (raft resends), and the caller reports them unreachable to raft.
    pub fn send(&self, messages: Vec<Message>) -> Vec<NodeId> {
        let mut full = Vec::new();
        if messages.is_empty() {
            return full;
        }
        let mut queues = self.inner.queues.lock().unwrap();
        for message in messages {
            let to = message.to;
            if self.channel(to).is_none() {
                tracing::debug!(to = to.0, "message to an unknown peer dropped");
                continue;
            }
            if let MessageBody::InstallSnapshot { .. } = &message.body {
                self.send_snapshot(message);
                continue;
            }
            if matches!(message.body, MessageBody::ReadIndex { .. }) && drops_read_index() {
                continue;
            }
            let message = Outgoing::Raft(pb::RaftMessage::from(&message));
            if !self.enqueue(&mut queues, to, message) {
                crate::metrics::metrics().peer_messages_dropped.inc();
                if !full.contains(&to) {
                    tracing::debug!(to = to.0, "peer send queue full: message dropped");
                    full.push(to);
                }
            }
        }
        full
    }

    /// Queues `item` for `to`'s stream; false if the queue is full (dropped, and
    /// counted).
    fn offer(&self, to: NodeId, item: Outgoing) -> bool {
        let mut queues = self.inner.queues.lock().unwrap();
        let queued = self.enqueue(&mut queues, to, item);
        if !queued {
            crate::metrics::metrics().peer_messages_dropped.inc();
        }
        queued
    }

    /// Queues `item` for `to`'s stream; false if the queue is full (dropped).
    fn enqueue(
        &self,
        queues: &mut HashMap<NodeId, mpsc::Sender<Outgoing>>,
        to: NodeId,
        item: Outgoing,
    ) -> bool {
        let queue = queues.entry(to).or_insert_with(|| self.start_sender(to));
        match queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(unsent)) => {
                // The sender ended (the peer's URL changed); start a new one.
                let queue = self.start_sender(to);
                let sent = queue.try_send(unsent).is_ok();
                queues.insert(to, queue);
                sent
            }
        }
    }

    fn start_sender(&self, to: NodeId) -> mpsc::Sender<Outgoing> {
        let (tx, rx) = mpsc::channel(peer_queue_messages_max());
        let transport = self.clone();
        self.inner
            .runtime
            .spawn(async move { transport.run_sender(to, rx).await });
        tx
    }

    async fn run_sender(self, to: NodeId, mut queue: mpsc::Receiver<Outgoing>) {
        loop {
            // Each connection uses the member's current URL; a member that left ends it.
            let Some(channel) = self.channel(to) else {
                return;
            };
            let (batches, stream) = mpsc::channel::<MessageBatch>(64);
            // Looked up once per connection, not per batch.
            let sent_bytes = crate::metrics::metrics()
                .peer_sent_bytes
                .with(&[&format!("{:x}", to.0)]);
            let mut client = PeerClient::new(channel.clone());
            let call = tokio::spawn(async move { client.raft(ReceiverStream::new(stream)).await });
            loop {
                let idle_ping_interval = self.inner.idle_ping_interval;
                let mut items = Vec::new();
                match tokio::time::timeout(idle_ping_interval, queue.recv()).await {
                    Ok(Some(first)) => items.push(first),
                    Ok(None) => return,
                    // Nothing to say: an empty batch tells the peer this node is up.
                    Err(_) => {}
                }
                while !items.is_empty() && items.len() < BATCH_MESSAGES_MAX {
                    match queue.try_recv() {
                        Ok(item) => items.push(item),
                        Err(_) => break,
                    }
                }
                let mut batch = MessageBatch {
                    from: self.inner.me.0,
                    to: to.0,
                    cluster_id: self.inner.cluster_id,
                    leading_per_second: Some(self.inner.loads.mine()),
                    spare_cores: self.inner.loads.spare_cores(),
                    draining: self
                        .inner
                        .loads
                        .draining(std::time::Instant::now())
                        .then_some(true),
                    ..MessageBatch::default()
                };
                for item in items {
                    match item {
                        Outgoing::Raft(message) => batch.messages.push(message),
                        Outgoing::Ask(ask) => batch.timestamps_asks.push(ask),
                        Outgoing::Grant(grant) => batch.timestamps_grants.push(grant),
                        Outgoing::ReadPointAsk(ask) => batch.read_point_asks.push(ask),
                        Outgoing::ReadPointAnswer(answer) => batch.read_point_answers.push(answer),
                    }
                }
                if !batch.messages.is_empty() {
                    crate::metrics::metrics()
                        .transport_batch_messages
                        .observe_value(batch.messages.len() as f64);
                }
                sent_bytes.add(batch.encoded_len() as u64);
                if batches.send(batch).await.is_err() {
                    break;
                }
            }
            if let Ok(Err(status)) = call.await {
                tracing::debug!(to = to.0, %status, "peer stream broke");
                if status.code() == tonic::Code::FailedPrecondition
                    && status.message() == codec::MEMBER_REMOVED
                {
                    let _ = self.inner.inputs.send_async(Input::RemovedByPeer(to)).await;
                    return;
                }
            }
            let _ = self.inner.inputs.send_async(Input::Unreachable(to)).await;
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
            let MessageBody::InstallSnapshot { meta } = &message.body else {
                unreachable!("only snapshot messages are streamed")
            };
            let snapshot_index = meta.index;
            let permits = transport
                .inner
                .outgoing_snapshots
                .lock()
                .unwrap()
                .entry(to)
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(OUTGOING_SNAPSHOTS_PER_PEER))
                })
                .clone();
            let permit = permits.acquire_owned().await.expect("never closed");
            let outcome = match transport.stream_snapshot(&message).await {
                Ok(()) => {
                    crate::metrics::metrics().snapshots_sent.inc();
                    SnapshotSent::Delivered
                }
                Err(SnapshotSendError::Overlaps(refusal)) => {
                    tracing::info!(to = to.0, group = group.0, %refusal, "snapshot refused");
                    SnapshotSent::RefusedAsOverlapping
                }
                Err(SnapshotSendError::NoFile) => SnapshotSent::NoFile,
                Err(SnapshotSendError::Failed(error)) => {
                    tracing::warn!(to = to.0, %error, "snapshot stream failed");
                    SnapshotSent::Failed
                }
            };
            drop(permit);
            let pause = transport.retry_pause(group, to, outcome);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let _ = transport
                .inner
                .inputs
                .send_async(Input::SnapshotReport {
                    group,
                    to,
                    outcome,
                    index: snapshot_index,
                })
                .await;
        });
    }

    /// `group` is gone from this node (merged away): its failed sends are forgotten.
    pub fn forget_range(&self, group: GroupId) {
        self.inner
            .snapshot_failures
            .lock()
            .unwrap()
            .retain(|(failed, _), _| *failed != group);
    }

    /// How long to wait before reporting `outcome` of a snapshot send of `group` to
    /// `to` (`SNAPSHOT_RETRY_PAUSE_MIN`): none unless it failed or was refused.
    fn retry_pause(&self, group: GroupId, to: NodeId, outcome: SnapshotSent) -> Duration {
        let mut failures = self.inner.snapshot_failures.lock().unwrap();
        match outcome {
            SnapshotSent::Delivered | SnapshotSent::NoFile => {
                failures.remove(&(group, to));
                Duration::ZERO
            }
            SnapshotSent::Failed | SnapshotSent::RefusedAsOverlapping => {
                let in_a_row = failures.entry((group, to)).or_insert(0);
                *in_a_row = in_a_row.saturating_add(1);
                retry_pause_after(*in_a_row)
            }
        }
    }

    async fn stream_snapshot(&self, message: &Message) -> Result<(), SnapshotSendError> {
        let MessageBody::InstallSnapshot { meta } = &message.body else {
            unreachable!("only snapshot messages are streamed")
        };
        let path = self.inner.layout.snapshot_file(message.group, meta.index);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                SnapshotSendError::NoFile
            } else {
                SnapshotSendError::Failed(format!("{}: {e}", path.display()))
            }
        })?;
        let file_bytes = file.metadata().await.map_or(0, |meta| meta.len());
        let answer_timeout = SNAPSHOT_STALL_TIMEOUT + Duration::from_secs(file_bytes >> 20);
        let (chunks, stream) = mpsc::channel::<SnapshotChunk>(4);
        let channel = self.channel(message.to).ok_or_else(|| {
            SnapshotSendError::Failed(format!("member {:x} has no peer URL", message.to.0))
        })?;
        let mut client = PeerClient::new(channel);
        let mut call =
            tokio::spawn(async move { client.snapshot(ReceiverStream::new(stream)).await });
        let header = SnapshotHeader {
            cluster_id: self.inner.cluster_id,
            group: message.group.0,
            from: message.from.0,
            to: message.to.0,
            message: Some(pb::RaftMessage::from(message)),
        };
        if let Err(error) = send_chunks(file, header, chunks, SNAPSHOT_STALL_TIMEOUT).await {
            call.abort();
            return Err(error);
        }
        let answer = match tokio::time::timeout(answer_timeout, &mut call).await {
            Ok(answer) => answer,
            Err(_) => {
                call.abort();
                return Err(SnapshotSendError::Failed(format!(
                    "no answer {answer_timeout:?} after the last chunk"
                )));
            }
        };
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status))
                if status.code() == tonic::Code::FailedPrecondition
                    && status.message().starts_with(codec::SNAPSHOT_OVERLAPS) =>
            {
                Err(SnapshotSendError::Overlaps(status.message().to_string()))
            }
            Ok(Err(status)) => Err(SnapshotSendError::Failed(status.to_string())),
            Err(error) => Err(SnapshotSendError::Failed(error.to_string())),
        }
    }

    /// Has the leader carry out a membership change; returns the membership once it
    /// applied there.
    pub async fn change_membership(
        &self,
        leader: NodeId,
        group: GroupId,
        change: &ostrakon_raft::ConfChange,
    ) -> Result<ostrakon_raft::ConfState, NodeError> {
        let Some(channel) = self.channel(leader) else {
            return Err(NodeError::NoLeader);
        };
        let response = PeerClient::new(channel)
            .change_membership(pb::MembershipChangeRequest {
                group: group.0,
                change: Some(change.into()),
                cluster_id: self.inner.cluster_id,
                from: self.inner.me.0,
            })
            .await
            .map_err(|_| NodeError::LeaderChanged)?
            .into_inner();
        if let Some(error) = response.error {
            return Err(codec::decode_node_error(error));
        }
        let conf_state = response.conf_state.ok_or(NodeError::LeaderChanged)?;
        ostrakon_raft::ConfState::try_from(&conf_state).map_err(|_| NodeError::LeaderChanged)
    }

    /// Has the right range's leader merge it into the left one.
    pub async fn merge_ranges(
        &self,
        leader: NodeId,
        left: GroupId,
        right: GroupId,
    ) -> Result<(), NodeError> {
        let Some(channel) = self.channel(leader) else {
            return Err(NodeError::NoLeader);
        };
        let response = PeerClient::new(channel)
            .merge_ranges(pb::PeerMergeRequest {
                left_range_id: left.0,
                right_range_id: right.0,
                cluster_id: self.inner.cluster_id,
                from: self.inner.me.0,
            })
            .await
            .map_err(|_| NodeError::LeaderChanged)?
            .into_inner();
        match response.error {
            Some(error) => Err(codec::decode_node_error(error)),
            None => Ok(()),
        }
    }

    /// Reports the load this member served for ranges `leader` leads (`remote_load`).
    pub async fn report_load(
        &self,
        leader: NodeId,
        ranges: Vec<pb::RangeLoad>,
    ) -> Result<(), NodeError> {
        let Some(channel) = self.channel(leader) else {
            return Err(NodeError::NoLeader);
        };
        PeerClient::new(channel)
            .report_load(pb::LoadReport {
                cluster_id: self.inner.cluster_id,
                from: self.inner.me.0,
                ranges,
            })
            .await
            .map_err(|_| NodeError::LeaderChanged)?;
        Ok(())
    }

    /// A read barrier on the range's leader (`NodeHandle::read_barrier_local` there).
    /// `word`: this member's term of the range, read after the reads it is for began
    /// (`crate::member_word`; 0 for none).
    pub async fn read_barrier(
        &self,
        leader: NodeId,
        group: GroupId,
        word: u64,
    ) -> Result<LogIndex, NodeError> {
        self.read_point_at_leader(leader, group, false, word)
            .await
            .map(|(index, _)| index)
    }

    /// Asks the leader of `group` for a fresh read point: a revision from its next
    /// oracle fetch and the index to read at (`Input::FreshReadPoint`; no word goes
    /// with it: `NodeHandle::fresh_read_point`).
    pub async fn fresh_read_point(
        &self,
        leader: NodeId,
        group: GroupId,
    ) -> Result<(LogIndex, u64), NodeError> {
        self.read_point_at_leader(leader, group, true, 0).await
    }

    async fn read_point_at_leader(
        &self,
        leader: NodeId,
        group: GroupId,
        fresh: bool,
        word: u64,
    ) -> Result<(LogIndex, u64), NodeError> {
        let Some(channel) = self.channel(leader) else {
            return Err(NodeError::NoLeader);
        };
        let request = pb::ReadBarrierRequest {
            group: group.0,
            cluster_id: self.inner.cluster_id,
            from: self.inner.me.0,
            fresh,
            asker_term: word,
        };
        let unary = async move {
            let response = PeerClient::new(channel)
                .read_barrier(request)
                .await
                .map_err(|_| NodeError::LeaderChanged)?
                .into_inner();
            read_point_asks::read_point_of(response)
        };
        if self.read_points_unary_only(leader) {
            return unary.await;
        }
        self.read_point_on_stream(leader, request, unary).await
    }

    /// Asks the leader to renew a lease or report its remaining TTL.
    pub async fn lease_query(
        &self,
        leader: NodeId,
        group: GroupId,
        id: i64,
        renew: bool,
    ) -> Result<Option<crate::lessor::LeaseTtl>, NodeError> {
        let Some(channel) = self.channel(leader) else {
            return Err(NodeError::NoLeader);
        };
        let answer = PeerClient::new(channel)
            .lease(ostrakon_proto::peer::LeaseQuery {
                group: group.0,
                id,
                renew,
                cluster_id: self.inner.cluster_id,
                from: self.inner.me.0,
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
        auth_revision: u64,
        trace_parent: String,
    ) -> Result<WriteOutcome, NodeError> {
        if self.channel(leader).is_none() {
            return Err(NodeError::NoLeader);
        }
        let forward = ForwardRequest {
            group: group.0,
            write: Some(WriteRequest {
                origin: 0,
                id: 0,
                request: Some(request),
                auth_revision,
                trace_parent,
                // The leader chooses it.
                revision: 0,
                // Term-bound writes are proposed on their member only.
                only_in_term: 0,
            }),
            // The batch carries them.
            cluster_id: 0,
            from: 0,
        };
        let response = if forwarder::waits_in_line(&forward) {
            self.forward_alone(leader, forward).await?
        } else {
            self.forward_batched(leader, forward).await?
        };
        codec::decode_forward_response(response)
    }
}

/// Sends `file` as snapshot chunks into `chunks`, `header` on the first, a checksum of
/// the whole on the last; fails if a chunk is not taken within `stall_timeout`. A
/// receiver that ended the call early stops the sending (its answer says why).
async fn send_chunks(
    mut file: tokio::fs::File,
    header: SnapshotHeader,
    chunks: mpsc::Sender<SnapshotChunk>,
    stall_timeout: Duration,
) -> Result<(), SnapshotSendError> {
    let mut header = Some(header);
    let mut crc = 0u32;
    let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
    loop {
        let read = file
            .read(&mut buffer)
            .await
            .map_err(|e| SnapshotSendError::Failed(e.to_string()))?;
        crc = crc32c::crc32c_append(crc, &buffer[..read]);
        let last = read == 0;
        let chunk = SnapshotChunk {
            header: header.take(),
            data: bytes::Bytes::copy_from_slice(&buffer[..read]),
            last,
            crc32c: if last { crc } else { 0 },
        };
        match tokio::time::timeout(stall_timeout, chunks.send(chunk)).await {
            Err(_) => {
                return Err(SnapshotSendError::Failed(format!(
                    "the receiver took no chunk for {stall_timeout:?}"
                )))
            }
            Ok(Err(_)) => return Ok(()),
            Ok(Ok(())) if last => return Ok(()),
            Ok(Ok(())) => {}
        }
    }
}

/// The pause after `in_a_row` failed snapshot sends (at least 1): doubling from
/// `SNAPSHOT_RETRY_PAUSE_MIN` up to `SNAPSHOT_RETRY_PAUSE_MAX`.
fn retry_pause_after(in_a_row: u32) -> Duration {
    let doublings = in_a_row.saturating_sub(1).min(16);
    SNAPSHOT_RETRY_PAUSE_MIN
        .saturating_mul(1 << doublings)
        .min(SNAPSHOT_RETRY_PAUSE_MAX)
}

/// Whether to drop this ReadIndex message: `OSTRAKON_TEST_DROP_READ_INDEXES=N` drops the
/// first N this member sends, as a full queue or a dropped connection loses one (tests
/// show that the reads waiting for it are asked again).
fn drops_read_index() -> bool {
    static LEFT_TO_DROP: std::sync::OnceLock<std::sync::atomic::AtomicU64> =
        std::sync::OnceLock::new();
    let left = LEFT_TO_DROP.get_or_init(|| {
        let count = std::env::var("OSTRAKON_TEST_DROP_READ_INDEXES")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        std::sync::atomic::AtomicU64::new(count)
    });
    left.fetch_update(
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
        |left| left.checked_sub(1),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_snapshot_sends_pause_longer_in_a_row_up_to_a_bound() {
        assert_eq!(retry_pause_after(1), SNAPSHOT_RETRY_PAUSE_MIN);
        assert_eq!(retry_pause_after(2), SNAPSHOT_RETRY_PAUSE_MIN * 2);
        assert_eq!(retry_pause_after(30), SNAPSHOT_RETRY_PAUSE_MAX);
        assert_eq!(retry_pause_after(u32::MAX), SNAPSHOT_RETRY_PAUSE_MAX);
    }

    async fn snapshot_file(bytes: usize) -> (tempfile::TempDir, tokio::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g2-7.snap");
        let content: Vec<u8> = (0..bytes).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, content).unwrap();
        let file = tokio::fs::File::open(&path).await.unwrap();
        (dir, file)
    }

    #[tokio::test]
    async fn a_snapshot_goes_in_chunks_with_the_header_first_and_a_checksum_last() {
        let bytes = SNAPSHOT_CHUNK_BYTES * 2 + 17;
        let (_dir, file) = snapshot_file(bytes).await;
        let (chunks, mut received) = mpsc::channel(1);
        let header = SnapshotHeader {
            group: 2,
            ..Default::default()
        };
        let sent = tokio::spawn(send_chunks(file, header, chunks, Duration::from_secs(5)));
        let mut all = Vec::new();
        let mut headers = 0;
        let last = loop {
            let chunk = received.recv().await.expect("a last chunk");
            headers += chunk.header.is_some() as usize;
            assert_eq!(chunk.header.is_some(), all.is_empty(), "header first only");
            all.extend_from_slice(&chunk.data);
            if chunk.last {
                break chunk;
            }
        };
        assert!(matches!(sent.await.unwrap(), Ok(())));
        assert_eq!((all.len(), headers), (bytes, 1));
        assert_eq!(last.crc32c, crc32c::crc32c(&all));
    }

    #[tokio::test]
    async fn a_snapshot_stream_whose_receiver_takes_nothing_fails_after_the_stall_timeout() {
        let (_dir, file) = snapshot_file(SNAPSHOT_CHUNK_BYTES * 3).await;
        // Room for one chunk, and a receiver that never reads: a peer whose link drops
        // everything, the stream's flow-control window full.
        let (chunks, _never_read) = mpsc::channel(1);
        let started = std::time::Instant::now();
        let sent = send_chunks(
            file,
            SnapshotHeader::default(),
            chunks,
            Duration::from_millis(200),
        )
        .await;
        assert!(
            matches!(&sent, Err(SnapshotSendError::Failed(why)) if why.contains("took no chunk")),
            "{sent:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
