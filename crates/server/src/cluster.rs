//! etcd's Cluster service: `MemberList`. Changing the membership (add, remove, update,
//! promote) is refused with UNIMPLEMENTED until joint-consensus changes are wired to the
//! runtime (issue 4); the README lists it as not done.

use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::cluster_server::Cluster;
use ostrakon_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::common;
use crate::errors::ApiError;

const CHANGES_NOT_SUPPORTED: &str =
    "ostrakon: changing the membership is not supported yet; only MemberList is";

pub struct ClusterService {
    node: NodeHandle,
}

impl ClusterService {
    pub fn new(node: NodeHandle) -> ClusterService {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.node
                .linearizable_read_point(DEFAULT_GROUP)
                .await
                .map_err(ApiError::from)?;
        }
        let members = self
            .node
            .members(DEFAULT_GROUP)
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .map(|m| Member {
                id: m.id.0,
                name: m.name,
                peer_ur_ls: m.peer_urls,
                client_ur_ls: m.client_urls,
                is_learner: m.is_learner,
            })
            .collect();
        Ok(Response::new(MemberListResponse {
            header: common::current_header(&self.node),
            members,
        }))
    }

    async fn member_add(
        &self,
        _: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(Status::unimplemented(CHANGES_NOT_SUPPORTED))
    }

    async fn member_remove(
        &self,
        _: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(Status::unimplemented(CHANGES_NOT_SUPPORTED))
    }

    async fn member_update(
        &self,
        _: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(CHANGES_NOT_SUPPORTED))
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(Status::unimplemented(CHANGES_NOT_SUPPORTED))
    }
}
