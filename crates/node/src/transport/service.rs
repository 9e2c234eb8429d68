//! The server side of the peer protocol.

use std::path::PathBuf;

use ostrakon_proto::peer::peer_server::Peer;
use ostrakon_proto::peer::{
    self as pb, ForwardRequest, ForwardResponse, MessageBatch, RaftAck, SnapshotAck, SnapshotChunk,
};
use ostrakon_raft::{ConfChange, GroupId, Message, MessageBody, NodeId};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use super::codec::{encode_forward_response, encode_node_error, MEMBER_REMOVED, SNAPSHOT_OVERLAPS};
use crate::handle::NodeHandle;
use crate::input::{Input, InputSender, SnapshotVerdict};
use crate::layout::Layout;
use crate::member_word::MemberWord;

/// Snapshots received at once, every group and sender together. A snapshot stream
/// holds a file and disk bandwidth; a leader refused here reports the snapshot
/// undelivered and raft sends it again later.
pub const INCOMING_SNAPSHOTS_MAX: usize = 2;

/// Serves peers: raft message streams, snapshot streams, forwarded writes.
pub struct PeerService {
    handle: NodeHandle,
    inputs: InputSender,
    snap_dir: PathBuf,
    incoming_snapshots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Numbers the incoming snapshot streams, for their partial files' names.
    incoming_streams: std::sync::atomic::AtomicU64,
}

/// A file being received: removed when dropped before `keep` (the stream failed, or the
/// call was dropped midway), so an aborted snapshot leaves nothing behind.
struct PartialFile {
    path: Option<PathBuf>,
}

impl PartialFile {
    fn keep(mut self) -> PathBuf {
        self.path.take().expect("kept once")
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl PeerService {
    /// A service for the node behind `handle`.
    pub fn new(handle: NodeHandle, data_dir: &std::path::Path) -> PeerService {
        let inputs = handle.inputs();
        PeerService {
            handle,
            inputs,
            snap_dir: Layout::new(data_dir).snap,
            incoming_snapshots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                INCOMING_SNAPSHOTS_MAX,
            )),
            incoming_streams: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the registry marks `id` removed (it applied that member's removal).
    fn is_removed(&self, id: NodeId) -> bool {
        self.handle
            .store(crate::DEFAULT_GROUP)
            .is_ok_and(|store| store.is_removed_member(id))
    }

    /// Proposes one forwarded write here (its sender checked by the caller) and
    /// answers with its outcome.
    async fn forward_one(&self, forward: ForwardRequest) -> Result<ForwardResponse, Status> {
        let write = forward
            .write
            .ok_or_else(|| Status::invalid_argument("no write"))?;
        let auth_revision = write.auth_revision;
        let parent = crate::spans::parse_parent(&write.trace_parent);
        let request = write
            .request
            .ok_or_else(|| Status::invalid_argument("no write"))?;
        let outcome = crate::spans::within(
            parent,
            self.handle
                .write_forwarded(GroupId(forward.group), request, auth_revision),
        )
        .await;
        Ok(encode_forward_response(outcome))
    }

    /// A request from another member: refused unless it comes from this cluster and from
    /// a member that has not been removed from it (the checks the raft stream makes).
    fn check_sender(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        self.check_cluster(cluster_id)?;
        if self.is_removed(NodeId(from)) {
            return Err(Status::failed_precondition(MEMBER_REMOVED));
        }
        Ok(())
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.handle.cluster_id() {
            return Err(Status::failed_precondition(format!(
                "peer belongs to cluster {cluster_id:x}, this member to {:x}",
                self.handle.cluster_id()
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: Request<Streaming<MessageBatch>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = request.into_inner();
        let mut received_bytes = None;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            self.check_sender(batch.cluster_id, batch.from)?;
            self.handle.transport().liveness().heard(NodeId(batch.from));
            // A stream carries one peer's batches: look its counter up once.
            let received = received_bytes.get_or_insert_with(|| {
                crate::metrics::metrics()
                    .peer_received_bytes
                    .with(&[&format!("{:x}", batch.from)])
            });
            received.add(prost::Message::encoded_len(&batch) as u64);
            for message in batch.messages {
                let message = Message::try_from(message)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                if message.to != self.handle.id() {
                    return Err(Status::invalid_argument("message for another member"));
                }
                if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                    return Err(Status::invalid_argument(
                        "snapshots come on their own stream",
                    ));
                }
                // A full queue holds the stream (and so the peer's sender) until the loop
                // catches up.
                self.inputs
                    .send_async(Input::Raft(message))
                    .await
                    .map_err(|_| Status::unavailable("stopping"))?;
            }
            let from = NodeId(batch.from);
            if batch.to != self.handle.id().0 {
                // A stream meant for another member at this URL: its asks and grants
                // are not ours (its raft messages were refused above).
                continue;
            }
            let heard_at = std::time::Instant::now();
            let loads = self.handle.transport().loads();
            if let Some(load) = batch.leading_per_second {
                loads.heard(from, load, heard_at);
            }
            match batch.spare_cores {
                Some(cores) => loads.heard_spare(from, cores, heard_at),
                // No longer measured (or an older build): none to spare, from now on.
                None => loads.forget_spare(from),
            }
            loads.heard_draining(from, batch.draining == Some(true), heard_at);
            for grant in batch.timestamps_grants {
                self.handle.transport().granted(from, grant);
            }
            for answer in batch.read_point_answers {
                self.handle.transport().read_point_answered(from, answer);
            }
            let read_point_asks = if super::read_point_asks::ignore_asks() {
                Vec::new()
            } else {
                batch.read_point_asks
            };
            for ask in read_point_asks {
                let Some(request) = ask.request else {
                    continue;
                };
                let handle = self.handle.clone();
                // Each waits for its range's next fetch or read index: on a task of its
                // own, so that the stream goes on.
                tokio::spawn(async move {
                    let response = read_point(&handle, from, request).await;
                    handle.transport().answer_read_point(from, ask.id, response);
                });
            }
            let asks = if super::timestamp_asks::ignore_asks() {
                Vec::new()
            } else {
                batch.timestamps_asks
            };
            for ask in asks {
                let transport = self.handle.transport().clone();
                let id = ask.id;
                if ask.count == 0 || ask.count > crate::handle::TIMESTAMPS_PER_REQUEST_MAX {
                    // As the unary call fails alone: this ask only, not the stream.
                    let refused = crate::error::NodeError::Refused {
                        code: tonic::Code::InvalidArgument as i32,
                        message: "timestamp count out of range".to_string(),
                    };
                    transport.grant(from, id, Err(refused), Vec::new());
                    continue;
                }
                let vouch_for: Vec<GroupId> = ask
                    .vouch_for
                    .iter()
                    .take(super::timestamp_asks::VOUCH_FOR_MAX)
                    .map(|&group| GroupId(group))
                    .collect();
                let handle = self.handle.clone();
                let respond =
                    crate::timestamps::TimestampResponder::Peer(Box::new(move |result| {
                        // Read as the oracle answers, after it handed these timestamps
                        // out: the word vouches for the asker's leadership after that.
                        let vouched = match &result {
                            Ok(_) => vouch_for
                                .iter()
                                .map(|&group| pb::GroupTerm {
                                    group: group.0,
                                    term: handle.term_word(group),
                                })
                                .filter(|vouched| vouched.term > 0)
                                .collect(),
                            Err(_) => Vec::new(),
                        };
                        transport.grant(from, id, result, vouched)
                    }));
                self.inputs
                    .send_async(Input::Timestamps {
                        count: ask.count,
                        respond,
                        word: MemberWord::from_wire(from, ask.asker_term),
                    })
                    .await
                    .map_err(|_| Status::unavailable("stopping"))?;
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let header = first
            .header
            .clone()
            .ok_or_else(|| Status::invalid_argument("no header"))?;
        self.check_sender(header.cluster_id, header.from)?;
        let message = header
            .message
            .ok_or_else(|| Status::invalid_argument("no message"))?;
        let message =
            Message::try_from(message).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let MessageBody::InstallSnapshot { meta } = &message.body else {
            return Err(Status::invalid_argument("not a snapshot message"));
        };
        let path = self.snap_dir.join(format!(
            "incoming-g{}-{:016}-from-{}.snap",
            GroupId(header.group).0,
            meta.index.0,
            message.from.0
        ));
        let _permit = self
            .incoming_snapshots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("too many snapshots in flight"))?;
        // Two streams of the same snapshot may overlap (a resend while the first is
        // still running): each writes its own partial file.
        let stream_number = self
            .incoming_streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let partial_path = path.with_extension(format!("{stream_number}.part"));
        let io = |e: std::io::Error| Status::internal(format!("{}: {e}", partial_path.display()));
        let mut file = tokio::fs::File::create(&partial_path).await.map_err(io)?;
        let partial = PartialFile {
            path: Some(partial_path.clone()),
        };
        let mut crc = 0u32;
        let mut chunk = first;
        loop {
            crc = crc32c::crc32c_append(crc, &chunk.data);
            file.write_all(&chunk.data).await.map_err(io)?;
            if chunk.last {
                if chunk.crc32c != crc {
                    return Err(Status::data_loss("snapshot checksum mismatch"));
                }
                break;
            }
            chunk = stream
                .next()
                .await
                .ok_or_else(|| Status::aborted("snapshot stream ended early"))??;
        }
        if let Err(error) = file.sync_all().await {
            ostrakon_storage::fatal::disk_failure("fsync of a received snapshot", &error);
        }
        tokio::fs::rename(partial.keep(), &path).await.map_err(io)?;
        // The span it holds decides whether the node may install it now (the event loop
        // refuses one that overlaps another range here): read off the event loop.
        let checked_path = path.clone();
        let checked =
            tokio::task::spawn_blocking(move || ostrakon_storage::snapshot::check(&checked_path))
                .await
                .expect("checking a snapshot panicked");
        let (span, absorbed) = match checked {
            Ok(checked) => (
                checked
                    .tables
                    .span
                    .as_ref()
                    .map(ostrakon_storage::mvcc::KeySpan::from_record),
                checked
                    .tables
                    .absorbed_ranges
                    .iter()
                    .map(|&id| GroupId(id))
                    .collect(),
            ),
            Err(error) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Status::data_loss(error.to_string()));
            }
        };
        let (verdict, verdict_rx) = tokio::sync::oneshot::channel();
        self.inputs
            .send_async(Input::SnapshotReceived {
                message,
                path,
                span,
                absorbed,
                verdict,
            })
            .await
            .map_err(|_| Status::unavailable("stopping"))?;
        // The sender hears of a refusal: its leader may have to take a newer snapshot.
        match verdict_rx.await {
            Ok(SnapshotVerdict::Taken) => Ok(Response::new(SnapshotAck {})),
            Ok(SnapshotVerdict::Overlaps(other)) => Err(Status::failed_precondition(format!(
                "{SNAPSHOT_OVERLAPS} (range {})",
                other.0
            ))),
            Err(_) => Err(Status::unavailable("stopping")),
        }
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let forward = request.into_inner();
        self.check_sender(forward.cluster_id, forward.from)?;
        Ok(Response::new(self.forward_one(forward).await?))
    }

    async fn forward_batch(
        &self,
        request: Request<pb::ForwardBatchRequest>,
    ) -> Result<Response<pb::ForwardBatchResponse>, Status> {
        let batch = request.into_inner();
        self.check_sender(batch.cluster_id, batch.from)?;
        // Polled in order, so the writes are proposed in the order they came. The batch
        // is answered when its last write is: a write that hangs (its group lost this
        // leader, cut off) is answered Timeout after half the request timeout, so the
        // others' answers still reach their callers, whose own deadlines (the whole
        // timeout) began a little before the batch left.
        let timeout = self.handle.request_timeout() / 2;
        let outcomes =
            futures_util::future::join_all(batch.writes.into_iter().map(|write| async {
                match tokio::time::timeout(timeout, self.forward_one(write)).await {
                    Ok(outcome) => outcome,
                    Err(_) => Ok(encode_forward_response(Err(crate::NodeError::Timeout))),
                }
            }))
            .await;
        let responses = outcomes.into_iter().collect::<Result<Vec<_>, Status>>()?;
        Ok(Response::new(pb::ForwardBatchResponse { responses }))
    }

    async fn members(
        &self,
        request: Request<pb::MembersQuery>,
    ) -> Result<Response<pb::MembersAnswer>, Status> {
        let group = GroupId(request.into_inner().group);
        let store = self
            .handle
            .store(group)
            .map_err(|e| Status::not_found(e.to_string()))?;
        Ok(Response::new(pb::MembersAnswer {
            cluster_id: self.handle.cluster_id(),
            members: store.members(),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<pb::MembershipChangeRequest>,
    ) -> Result<Response<pb::MembershipChangeResponse>, Status> {
        let request = request.into_inner();
        self.check_sender(request.cluster_id, request.from)?;
        let change = request
            .change
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("no change"))
            .and_then(|c| {
                ConfChange::try_from(c).map_err(|e| Status::invalid_argument(e.to_string()))
            })?;
        let response = match self
            .handle
            .change_membership_local(GroupId(request.group), change)
            .await
        {
            Ok(conf_state) => pb::MembershipChangeResponse {
                conf_state: Some((&conf_state).into()),
                error: None,
            },
            Err(error) => pb::MembershipChangeResponse {
                conf_state: None,
                error: Some(encode_node_error(error)),
            },
        };
        Ok(Response::new(response))
    }

    async fn merge_ranges(
        &self,
        request: Request<pb::PeerMergeRequest>,
    ) -> Result<Response<pb::PeerMergeResponse>, Status> {
        let request = request.into_inner();
        self.check_sender(request.cluster_id, request.from)?;
        let (left, right) = (
            GroupId(request.left_range_id),
            GroupId(request.right_range_id),
        );
        if crate::merge_coordinator::loses_peer_answer() {
            let handle = self.handle.clone();
            tokio::spawn(async move { handle.merge_ranges_here(left, right).await });
            tracing::info!(
                left = left.0,
                right = right.0,
                "failpoint: a merge's answer is lost"
            );
            return Ok(Response::new(pb::PeerMergeResponse {
                error: Some(encode_node_error(crate::NodeError::LeaderChanged)),
            }));
        }
        let merged = self.handle.merge_ranges_here(left, right).await;
        Ok(Response::new(pb::PeerMergeResponse {
            error: merged.err().map(encode_node_error),
        }))
    }

    async fn timestamps(
        &self,
        request: Request<pb::PeerTimestampsRequest>,
    ) -> Result<Response<pb::PeerTimestampsResponse>, Status> {
        let request = request.into_inner();
        self.check_sender(request.cluster_id, request.from)?;
        if request.count == 0 || request.count > crate::handle::TIMESTAMPS_PER_REQUEST_MAX {
            return Err(Status::invalid_argument("timestamp count out of range"));
        }
        let word = MemberWord::from_wire(NodeId(request.from), request.asker_term);
        let response = match self.handle.timestamps_local(request.count, word).await {
            Ok(range) => pb::PeerTimestampsResponse {
                first: range.first.0,
                count: range.count,
                error: None,
            },
            Err(error) => pb::PeerTimestampsResponse {
                error: Some(encode_node_error(error)),
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn report_load(
        &self,
        request: Request<pb::LoadReport>,
    ) -> Result<Response<pb::LoadReportAck>, Status> {
        let request = request.into_inner();
        self.check_sender(request.cluster_id, request.from)?;
        let from = NodeId(request.from);
        for range in request
            .ranges
            .into_iter()
            .take(crate::load_split::REPORT_RANGES_MAX)
        {
            if !range.per_second.is_finite() || range.per_second < 0.0 {
                return Err(Status::invalid_argument(
                    "a load report's rate is not a rate",
                ));
            }
            let group = GroupId(range.group);
            if !self
                .handle
                .status(group)
                .is_ok_and(|status| status.is_leader)
            {
                continue; // led elsewhere by now: the reporter learns the new leader
            }
            let sample = range
                .sample
                .into_iter()
                .take(crate::request_rate::SAMPLED_KEYS)
                .map(|key| key.to_vec())
                .collect();
            self.handle
                .remote_load()
                .record(from, group, range.per_second, sample);
        }
        Ok(Response::new(pb::LoadReportAck {}))
    }

    async fn read_barrier(
        &self,
        request: Request<pb::ReadBarrierRequest>,
    ) -> Result<Response<pb::ReadBarrierResponse>, Status> {
        let request = request.into_inner();
        self.check_sender(request.cluster_id, request.from)?;
        let from = NodeId(request.from);
        Ok(Response::new(read_point(&self.handle, from, request).await))
    }

    async fn lease(
        &self,
        request: Request<ostrakon_proto::peer::LeaseQuery>,
    ) -> Result<Response<ostrakon_proto::peer::LeaseAnswer>, Status> {
        let query = request.into_inner();
        self.check_sender(query.cluster_id, query.from)?;
        let answer = match self
            .handle
            .lease_query_local(GroupId(query.group), query.id, query.renew)
            .await
        {
            Ok(found) => ostrakon_proto::peer::LeaseAnswer {
                not_leader: false,
                found: found.is_some(),
                remaining_secs: found.map_or(0, |t| t.remaining_secs),
                ttl_secs: found.map_or(0, |t| t.ttl_secs),
            },
            Err(_) => ostrakon_proto::peer::LeaseAnswer {
                not_leader: true,
                ..Default::default()
            },
        };
        Ok(Response::new(answer))
    }
}

/// A read barrier or fresh read point of this member's replica of a range, asked by
/// `from` (by the unary call or on the stream), as its answer.
async fn read_point(
    handle: &NodeHandle,
    from: NodeId,
    request: pb::ReadBarrierRequest,
) -> pb::ReadBarrierResponse {
    let group = GroupId(request.group);
    let point = if request.fresh {
        crate::metrics::metrics().fresh_read_points_served.inc();
        handle.fresh_read_point_local(group).await
    } else {
        crate::metrics::metrics().read_barriers_served.inc();
        let word = MemberWord::from_wire(from, request.asker_term);
        let index = handle.read_barrier_local(group, word).await;
        index.map(|index| (index, 0))
    };
    match point {
        Ok((index, revision)) => pb::ReadBarrierResponse {
            index: index.0,
            error: None,
            revision,
        },
        Err(error) => pb::ReadBarrierResponse {
            index: 0,
            error: Some(encode_node_error(error)),
            revision: 0,
        },
    }
}
