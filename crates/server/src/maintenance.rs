//! etcd's Maintenance service: `Status` (what `etcdctl endpoint status` shows), `Alarm`
//! (list, raise, clear: replicated), `Defragment` (online: the member keeps serving),
//! `Snapshot` (a consistent backup, streamed), `Hash` and `HashKV` (what `etcdctl
//! endpoint hashkv` compares across members) and `MoveLeader`.

use ostrakon_node::{NodeError, NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::maintenance_server::Maintenance;
use ostrakon_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use ostrakon_proto::peer::write_request;
use ostrakon_raft::NodeId;
use ostrakon_storage::mvcc::WriteOutcome;
use ostrakon_storage::mvcc::{KeyInterval, MvccError, ReadView, Revision};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::common;
use crate::errors::ApiError;
use crate::routed::RoutedRead;

pub struct MaintenanceService {
    node: NodeHandle,
}

impl MaintenanceService {
    pub fn new(node: NodeHandle) -> MaintenanceService {
        MaintenanceService { node }
    }
}

impl MaintenanceService {
    /// Backups, hashes, defragmentation, alarms and leadership moves are for
    /// administrators (the root role) when auth is enabled.
    async fn check_admin(&self, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        crate::auth::caller(&self.node, metadata)
            .await?
            .check_admin()?;
        Ok(())
    }
}

/// An alarm's name as etcd prints it.
fn alarm_name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm).map_or("UNKNOWN", |a| a.as_str_name())
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Lists the raised alarms (all, or those of one type), or raises or clears one
    /// through raft, as etcd does.
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        if request.action != alarm_request::AlarmAction::Get as i32 {
            caller.check_admin()?;
        }
        let store = self.node.store(DEFAULT_GROUP).map_err(ApiError::from)?;
        let alarms = match alarm_request::AlarmAction::try_from(request.action) {
            // Linearizable, as etcd's (a list goes through its raft log): an alarm raised
            // or cleared before the list began is in it, whichever member answers.
            Ok(alarm_request::AlarmAction::Get) => {
                self.node
                    .linearizable_read_point(DEFAULT_GROUP)
                    .await
                    .map_err(ApiError::from)?;
                store
                    .alarms()
                    .into_iter()
                    .filter(|a| request.alarm == AlarmType::None as i32 || a.alarm == request.alarm)
                    .collect()
            }
            Ok(_) => {
                let write = write_request::Request::Alarm(request);
                match common::write(&self.node, write).await? {
                    WriteOutcome::Alarm(response) => response.alarms,
                    other => panic!("an alarm request answered with {other:?}"),
                }
            }
            Err(_) => return Err(Status::invalid_argument("unknown alarm action")),
        };
        Ok(Response::new(AlarmResponse {
            header: common::current_header(&self.node),
            alarms,
        }))
    }

    /// Compacts this member's storage on the blocking pool while it keeps serving (etcd's
    /// defragmentation stops the member's traffic for its duration).
    async fn defragment(
        &self,
        request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.check_admin(request.metadata()).await?;
        let store = self.node.store(DEFAULT_GROUP).map_err(ApiError::from)?;
        let before = store.disk_bytes();
        let compacted = tokio::task::spawn_blocking(move || store.defragment())
            .await
            .expect("defragmenting panicked");
        compacted.map_err(|error| Status::internal(format!("ostrakon: defragment: {error}")))?;
        let after = self
            .node
            .store(DEFAULT_GROUP)
            .map_err(ApiError::from)?
            .disk_bytes();
        tracing::info!(before_bytes = before, after_bytes = after, "defragmented");
        // etcd answers a defragmentation without a header (found by the differential
        // test).
        Ok(Response::new(DefragmentResponse { header: None }))
    }

    type SnapshotStream = ReceiverStream<Result<SnapshotResponse, Status>>;

    /// A consistent copy of this member's state, as of the moment of the call, streamed
    /// in chunks in etcd's format (a bbolt database with etcd's buckets, then its
    /// SHA-256), so that `etcdutl snapshot status|restore` read it as they read etcd's.
    async fn snapshot(
        &self,
        request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_admin(request.metadata()).await?;
        let header = common::current_header(&self.node);
        let one_range = self
            .node
            .write_backup_of_one_range()
            .await
            .map_err(ApiError::from)?;
        let Some((path, info)) = one_range else {
            // A keyspace in ranges: every range at one consistent point.
            let (etcd_path, file_bytes, revision) = self
                .node
                .write_etcd_backup_across()
                .await
                .map_err(ApiError::from)?;
            tracing::info!(
                revision = revision.0,
                bytes = file_bytes,
                "streaming a backup of every range"
            );
            let header = common::header(&self.node, revision);
            let (chunks, stream) = tokio::sync::mpsc::channel(4);
            tokio::spawn(stream_backup(etcd_path, file_bytes, header, chunks));
            return Ok(Response::new(ReceiverStream::new(stream)));
        };
        let etcd_path = path.with_extension("etcd.db");
        let converted = {
            let (path, etcd_path) = (path.clone(), etcd_path.clone());
            tokio::task::spawn_blocking(move || {
                let content = ostrakon_storage::snapshot::read(&path)?;
                ostrakon_storage::etcd_backup::write(&content, &etcd_path)
            })
            .await
            .expect("writing a backup panicked")
        };
        let _ = tokio::fs::remove_file(&path).await;
        let file_bytes = match converted {
            Ok(bytes) => bytes,
            Err(error) => {
                let _ = tokio::fs::remove_file(&etcd_path).await;
                return Err(Status::internal(format!(
                    "ostrakon: writing the backup: {error}"
                )));
            }
        };
        tracing::info!(
            revision = info.revision.0,
            bytes = file_bytes,
            "streaming a backup"
        );
        let (chunks, stream) = tokio::sync::mpsc::channel(4);
        tokio::spawn(stream_backup(etcd_path, file_bytes, header, chunks));
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    /// The hash of every stored version on this member (read locally on a keyspace in
    /// one range, as etcd does; see `hash_ranges` for one in ranges).
    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.check_admin(request.metadata()).await?;
        // The stored versions up to the current revision: a keyspace in ranges is hashed
        // at one revision, as HashKV is (versions above it are not the keyspace's yet).
        let (hash, at, _) = hash_ranges(&self.node, 0).await?;
        Ok(Response::new(HashResponse {
            header: header_at_least(&self.node, at),
            hash,
        }))
    }

    /// The hash of the stored versions up to a revision (0: the current one), with the
    /// compacted revision, so members can be compared at one revision.
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.check_admin(request.metadata()).await?;
        let requested = request.into_inner().revision;
        let (hash, at, compacted) = hash_ranges(&self.node, requested).await?;
        Ok(Response::new(HashKvResponse {
            header: header_at_least(&self.node, at),
            hash,
            compact_revision: compacted,
            hash_revision: at,
        }))
    }

    /// Hands leadership to another voter, as etcd does: only the leader accepts it, and it
    /// answers once the target leads.
    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.check_admin(request.metadata()).await?;
        let target = NodeId(request.into_inner().target_id);
        let status = self.node.status(DEFAULT_GROUP).map_err(ApiError::from)?;
        if !status.is_leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        let store = self.node.store(DEFAULT_GROUP).map_err(ApiError::from)?;
        if !store.applied().conf_state.is_voter(target) {
            return Err(Status::failed_precondition(
                "etcdserver: bad leader transferee",
            ));
        }
        if target != self.node.id() {
            // On a keyspace in ranges every leadership of this member goes to the target
            // (an operator moves the leader away to stop or upgrade it), and spreading
            // hands this member none back for a while. On one range, as etcd: the first
            // range's only (nothing spreads leaders there).
            // Run on a task of its own: a client that gives up (etcdctl's 5 s) drops this
            // handler, and a drain must still end, or the other leaderships still move.
            let node = self.node.clone();
            let moving = tokio::spawn(async move { move_leaderships(node, target).await });
            moving.await.expect("moving leaderships panicked")?;
        }
        Ok(Response::new(MoveLeaderResponse {
            header: common::current_header(&self.node),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = self.node.status(DEFAULT_GROUP).map_err(ApiError::from)?;
        let store = self.node.store(DEFAULT_GROUP).map_err(ApiError::from)?;
        let db_bytes = store.disk_bytes() as i64;
        // As etcd's: a member that knows no leader says so first, then its alarms.
        let no_leader = (status.leader.0 == 0).then(|| "etcdserver: no leader".to_string());
        let alarms = store
            .alarms()
            .iter()
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
            .collect::<Vec<_>>();
        Ok(Response::new(StatusResponse {
            header: common::current_header(&self.node),
            version: crate::etcd_http::ETCD_SERVER_VERSION.to_string(),
            db_size: db_bytes,
            leader: status.leader.0,
            raft_index: status.commit.0,
            raft_term: status.term.0,
            raft_applied_index: status.applied.0,
            errors: no_leader.into_iter().chain(alarms).collect(),
            db_size_in_use: db_bytes,
            is_learner: status.is_learner,
        }))
    }
}

/// MoveLeader's work once the target is checked: on a keyspace in ranges every
/// leadership of this member goes to the target (an operator moves the leader away to
/// stop or upgrade it), and spreading hands this member none back for a while; on one
/// range, as etcd, the first range's only (nothing spreads leaders there). Answered once
/// the first range moved, as etcd answers; the others move after, on their own (a slow
/// one must not hold the answer past a client's timeout).
async fn move_leaderships(node: NodeHandle, target: NodeId) -> Result<(), Status> {
    let in_ranges = node.data_ranges().len() > 1;
    let drain = if in_ranges {
        node.drain_leaderships()
    } else {
        0
    };
    let moved = match node.move_leader(DEFAULT_GROUP, target).await {
        Ok(()) => Ok(()),
        Err(NodeError::Timeout) => Err(Status::unavailable(
            "etcdserver: request timed out, leader transfer took too long",
        )),
        Err(other) => Err(ApiError::from(other).into()),
    };
    if let Err(error) = moved {
        if in_ranges {
            node.end_drain();
        }
        return Err(error);
    }
    if in_ranges {
        tokio::spawn(async move {
            let failed = node.move_every_leadership(target, drain).await;
            if failed > 0 {
                tracing::warn!(
                    failed,
                    "MoveLeader moved the first range's leadership, not every other"
                );
            }
        });
    }
    Ok(())
}

/// Bytes of backup per `SnapshotResponse`.
const BACKUP_CHUNK_BYTES: usize = 64 * 1024;

/// Sends the backup file (a database and its SHA-256) in chunks, then removes it (also
/// when the client goes away).
async fn stream_backup(
    path: std::path::PathBuf,
    file_bytes: u64,
    header: Option<ostrakon_proto::etcdserverpb::ResponseHeader>,
    chunks: tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    use tokio::io::AsyncReadExt;
    let result = async {
        let mut file = tokio::fs::File::open(&path).await?;
        let mut remaining = file_bytes;
        let mut buffer = vec![0u8; BACKUP_CHUNK_BYTES];
        let mut header = header;
        while remaining > 0 {
            let read = file.read(&mut buffer).await?;
            if read == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the backup file is shorter than written",
                ));
            }
            remaining -= read as u64;
            let chunk = SnapshotResponse {
                header: header.take(),
                remaining_bytes: remaining,
                blob: bytes::Bytes::copy_from_slice(&buffer[..read]),
                version: crate::etcd_http::ETCD_SERVER_VERSION.to_string(),
            };
            if chunks.send(Ok(chunk)).await.is_err() {
                break;
            }
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        let _ = chunks
            .send(Err(Status::internal(format!(
                "ostrakon: reading the backup: {error}"
            ))))
            .await;
    }
    let _ = tokio::fs::remove_file(&path).await;
}

/// The hash of the stored versions up to a revision (0: the current one), with the
/// revision hashed and the compacted revision. On a keyspace in one range, that range's,
/// as etcd's. On a keyspace in ranges, the keyspace's at one revision, read as a Range of
/// every key is (`routed::read_at`: every range has applied every write at or below it,
/// no transaction's lock at or below it is pending, together the views cover the
/// keyspace, and a revision the keyspace has not reached is refused), hashed range after
/// range in key order as one range's would be: a split or merge changes nothing.
async fn hash_ranges(node: &NodeHandle, revision: i64) -> Result<(u32, i64, i64), Status> {
    let every_key: [KeyInterval<'_>; 1] = [(b"", b"\0")];
    // On one range, local, as etcd's: the current revision is this member's own, and no
    // leader is needed. On a keyspace in ranges, the current revision is the oracle's,
    // taken once: the lowest revision every range here has reached can lag far behind
    // (a range with no write since a compaction sits at it), and members asked to hash
    // at it then refuse it as compacted; and a read of the current state, retried while
    // a transaction's lock is pending, would take a newer one at each try, below which
    // a steady stream of transactions always holds some lock (found by review). Unlike
    // etcd's, a hash across ranges needs the oracle and each range's leader (the
    // read-wait rule): a member cut off from them answers with a timeout.
    let read = match crate::routed::read_at(node, &every_key, false, revision).await? {
        RoutedRead::Across { .. } if revision <= 0 => {
            let now = node.current_timestamp().await.map_err(ApiError::from)?;
            let now = i64::try_from(now).expect("timestamps stay below 2^63");
            crate::routed::read_at(node, &every_key, false, now).await?
        }
        read => read,
    };
    match read {
        RoutedRead::One(view) => hash_off_the_workers(view, revision).await,
        RoutedRead::Across { views, at, .. } => hash_across(views, at, revision).await,
    }
}

/// The current header, its revision raised to `at` if below: a hash across ranges at
/// the oracle's current revision is above every range's last write (etcd's header is
/// never below the revision it hashed).
fn header_at_least(
    node: &NodeHandle,
    at: i64,
) -> Option<ostrakon_proto::etcdserverpb::ResponseHeader> {
    let mut header = common::current_header(node);
    if let Some(header) = header.as_mut() {
        header.revision = header.revision.max(at);
    }
    header
}

/// Hashes the views of every range, in key order, at `at`, counting as garbage what the
/// highest compaction among them leaves (a cluster-wide compaction applies range by
/// range: members part way through it hash as members past it), which is also the
/// compacted revision reported. A hash at or below it is refused, as etcd refuses one.
async fn hash_across(
    views: Vec<ReadView>,
    at: Revision,
    requested: i64,
) -> Result<(u32, i64, i64), Status> {
    let compacted = views
        .iter()
        .map(ReadView::compact_revision)
        .max()
        .expect("a keyspace has at least one range");
    if (requested > 0 && requested <= compacted.0) || at < compacted {
        return Err(ApiError::from(MvccError::Compacted { compacted }).into());
    }
    let hash = tokio::task::spawn_blocking(move || {
        views
            .iter()
            .fold(0, |crc, view| view.hash_kv_from(crc, at, compacted))
    })
    .await
    .expect("hashing the store panicked");
    Ok((hash, at.0, compacted.0))
}

/// Hashes one range's view on the blocking pool (it reads every stored version): at
/// `revision` (0: the current one; checked as a Range's revision is). Returns the hash, the
/// revision hashed and the compacted revision.
async fn hash_off_the_workers(view: ReadView, revision: i64) -> Result<(u32, i64, i64), Status> {
    let compacted = view.compact_revision().0;
    // etcd refuses a hash at the compacted revision itself (`HashByRev`), where a Range
    // there is served (found by the differential test).
    if revision > 0 && revision <= compacted {
        return Err(ApiError::from(MvccError::Compacted {
            compacted: view.compact_revision(),
        })
        .into());
    }
    let at = view.resolve(revision).map_err(ApiError::from)?;
    let hash = tokio::task::spawn_blocking(move || view.hash_kv(at))
        .await
        .expect("hashing the store panicked");
    Ok((hash, at.0, compacted))
}
