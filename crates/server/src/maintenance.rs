//! etcd's Maintenance service: `Status` (what `etcdctl endpoint status` shows), `Alarm`
//! (list), `Hash` and `HashKV` (what `etcdctl endpoint hashkv` compares across members).

use ostrakon_node::{NodeError, NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::maintenance_server::Maintenance;
use ostrakon_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, HashKvRequest, HashKvResponse, HashRequest,
    HashResponse, MoveLeaderRequest, MoveLeaderResponse, StatusRequest, StatusResponse,
};
use ostrakon_raft::NodeId;
use ostrakon_storage::mvcc::ReadView;
use tonic::{Request, Response, Status};

use crate::common;
use crate::errors::ApiError;

/// The etcd API version ostrakon implements; clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub struct MaintenanceService {
    node: NodeHandle,
}

impl MaintenanceService {
    pub fn new(node: NodeHandle) -> MaintenanceService {
        MaintenanceService { node }
    }
}

impl MaintenanceService {}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    /// Listing alarms works (there are none: the space quota and its NOSPACE alarm are not
    /// enforced yet); raising or clearing one is refused until they are.
    async fn alarm(
        &self,
        request: Request<AlarmRequest>,
    ) -> Result<Response<AlarmResponse>, Status> {
        match alarm_request::AlarmAction::try_from(request.into_inner().action) {
            Ok(alarm_request::AlarmAction::Get) => Ok(Response::new(AlarmResponse {
                header: common::current_header(&self.node),
                alarms: Vec::new(),
            })),
            _ => Err(Status::unimplemented(
                "ostrakon: raising and clearing alarms is not supported yet",
            )),
        }
    }

    /// The hash of every stored version on this member (read locally, as etcd does).
    async fn hash(&self, _: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let view = self
            .node
            .store(DEFAULT_GROUP)
            .map_err(ApiError::from)?
            .read_view();
        let hash = hash_off_the_workers(view, None).await?.0;
        Ok(Response::new(HashResponse {
            header: common::current_header(&self.node),
            hash,
        }))
    }

    /// The hash of the stored versions up to a revision (0: the current one), with the
    /// compacted revision, so members can be compared at one revision.
    async fn hash_kv(
        &self,
        request: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let view = self
            .node
            .store(DEFAULT_GROUP)
            .map_err(ApiError::from)?
            .read_view();
        let requested = request.into_inner().revision;
        let (hash, at, compacted) = hash_off_the_workers(view, Some(requested)).await?;
        Ok(Response::new(HashKvResponse {
            header: common::current_header(&self.node),
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
            match self.node.move_leader(DEFAULT_GROUP, target).await {
                Ok(()) => {}
                Err(NodeError::Timeout) => {
                    return Err(Status::unavailable(
                        "etcdserver: request timed out, leader transfer took too long",
                    ))
                }
                Err(other) => return Err(ApiError::from(other).into()),
            }
        }
        Ok(Response::new(MoveLeaderResponse {
            header: common::current_header(&self.node),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = self.node.status(DEFAULT_GROUP).map_err(ApiError::from)?;
        let store = self.node.store(DEFAULT_GROUP).map_err(ApiError::from)?;
        let db_bytes = store.disk_bytes() as i64;
        Ok(Response::new(StatusResponse {
            header: common::current_header(&self.node),
            version: ETCD_API_VERSION.to_string(),
            db_size: db_bytes,
            leader: status.leader.0,
            raft_index: status.commit.0,
            raft_term: status.term.0,
            raft_applied_index: status.applied.0,
            errors: Vec::new(),
            db_size_in_use: db_bytes,
            is_learner: status.is_learner,
        }))
    }
}

/// Hashes a view on the blocking pool (it reads every stored version): at `revision`
/// (checked as a Range's revision is) or, for `None`, everything. Returns the hash, the
/// revision hashed and the compacted revision.
async fn hash_off_the_workers(
    view: ReadView,
    revision: Option<i64>,
) -> Result<(u32, i64, i64), Status> {
    let compacted = view.compact_revision().0;
    let at = match revision {
        Some(requested) => view.resolve(requested).map_err(ApiError::from)?,
        None => view.current_revision(),
    };
    let hash = tokio::task::spawn_blocking(move || view.hash_kv(at))
        .await
        .expect("hashing the store panicked");
    Ok((hash, at.0, compacted))
}
