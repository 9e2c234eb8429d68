//! etcd's Maintenance service; for now `Status` (what `etcdctl endpoint status` shows).

use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::maintenance_server::Maintenance;
use ostrakon_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmResponse, ResponseHeader, StatusRequest, StatusResponse,
};
use tonic::{Request, Response, Status};

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

impl MaintenanceService {
    fn header(&self) -> Option<ResponseHeader> {
        let term = self
            .node
            .status(DEFAULT_GROUP)
            .map(|s| s.term.0)
            .unwrap_or_default();
        let revision = self
            .node
            .store(DEFAULT_GROUP)
            .map(|s| s.current_revision().0)
            .unwrap_or_default();
        Some(ResponseHeader {
            cluster_id: self.node.cluster_id(),
            member_id: self.node.id().0,
            revision,
            raft_term: term,
        })
    }
}

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
                header: self.header(),
                alarms: Vec::new(),
            })),
            _ => Err(Status::unimplemented(
                "ostrakon: raising and clearing alarms is not supported yet",
            )),
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let status = self.node.status(DEFAULT_GROUP).map_err(ApiError::from)?;
        let store = self.node.store(DEFAULT_GROUP).map_err(ApiError::from)?;
        let db_bytes = store.disk_bytes() as i64;
        Ok(Response::new(StatusResponse {
            header: self.header(),
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
