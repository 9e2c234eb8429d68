//! etcd's Cluster service: MemberList, MemberAdd (voter or learner), MemberRemove,
//! MemberUpdate and MemberPromote. Raft membership changes go through joint consensus
//! (the raft core enters and leaves the joint configuration); a member's URLs and name
//! live in the replicated member registry.

use std::time::{SystemTime, UNIX_EPOCH};

use ostrakon_node::config::stable_id;
use ostrakon_node::{MemberDescription, NodeError, NodeHandle, DEFAULT_GROUP, META_GROUP};
use ostrakon_proto::etcdserverpb::cluster_server::Cluster;
use ostrakon_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use ostrakon_proto::peer::{write_request, MemberLeaving, MemberPeerUrls};
use ostrakon_raft::{ConfChange, ConfChangeStep, GroupId, NodeId};
use tonic::{Request, Response, Status};

use crate::common;
use crate::errors::ApiError;

/// etcd allows one learner at a time (`--experimental-max-learners` defaults to 1).
const LEARNERS_MAX: usize = 1;

pub struct ClusterService {
    node: NodeHandle,
}

impl ClusterService {
    pub fn new(node: NodeHandle) -> ClusterService {
        ClusterService { node }
    }

    fn members(&self) -> Result<Vec<MemberDescription>, Status> {
        Ok(self.node.members(DEFAULT_GROUP).map_err(ApiError::from)?)
    }

    fn member(&self, id: u64) -> Result<MemberDescription, Status> {
        self.members()?
            .into_iter()
            .find(|m| m.id == NodeId(id))
            .ok_or_else(|| Status::not_found("etcdserver: member not found"))
    }

    fn member_list(&self) -> Result<Vec<Member>, Status> {
        Ok(self.members()?.into_iter().map(to_member).collect())
    }

    /// Refuses URLs that do not parse or that another member already uses.
    fn check_peer_urls(&self, urls: &[String], except: Option<u64>) -> Result<(), Status> {
        let valid = !urls.is_empty()
            && urls.iter().all(|url| {
                url.parse::<tonic::transport::Uri>().is_ok_and(|u| {
                    matches!(u.scheme_str(), Some("http" | "https")) && u.port_u16().is_some()
                })
            });
        if !valid {
            return Err(Status::invalid_argument(
                "etcdserver: given member URLs are invalid",
            ));
        }
        let taken = self.members()?.into_iter().any(|member| {
            Some(member.id.0) != except && member.peer_urls.iter().any(|u| urls.contains(u))
        });
        if taken {
            return Err(Status::failed_precondition(
                "etcdserver: Peer URLs already exists",
            ));
        }
        Ok(())
    }

    async fn register_peer_urls(&self, id: u64, peer_urls: Vec<String>) -> Result<(), Status> {
        let write = write_request::Request::MemberPeerUrls(MemberPeerUrls { id, peer_urls });
        self.node
            .write(DEFAULT_GROUP, write)
            .await
            .map_err(ApiError::from)?;
        Ok(())
    }

    /// Removes a member from every range but the first data range (the meta range and
    /// the ranges split from it) before that one: once out of the first data range it
    /// stops, and the other ranges must not wait for it (two members would lose their
    /// quorum). They otherwise follow the first data range's membership by themselves
    /// (ostrakon_node's `follow_membership`), which also finishes this if the first data
    /// range's change fails after it. Each is answered once its leader applied the
    /// removal: until the first data range's removal applies, the follower may add the
    /// member back as a learner (it is still in that range), and then remove it again, so
    /// waiting here for one settled membership could wait for nothing.
    async fn leave_other_ranges(&self, id: NodeId) -> Result<(), Status> {
        // Listed again until no range holds it: a split meanwhile founds a range with it.
        for _ in 0..LEAVE_PASSES_MAX {
            let mut groups = vec![META_GROUP];
            groups.extend(
                self.node
                    .data_ranges()
                    .into_iter()
                    .map(|(group, _)| group)
                    .filter(|group| *group != DEFAULT_GROUP),
            );
            let holding: Vec<GroupId> = groups
                .into_iter()
                .filter(|group| {
                    self.node
                        .store(*group)
                        .is_ok_and(|store| store.applied().conf_state.members().contains(&id))
                })
                .collect();
            if holding.is_empty() {
                return Ok(());
            }
            for group in holding {
                self.leave_range(group, id).await?;
            }
        }
        Ok(())
    }

    /// Marks member `id` as leaving or staying in the member registry.
    async fn set_leaving(&self, id: u64, leaving: bool) -> Result<(), Status> {
        let write = write_request::Request::MemberLeaving(MemberLeaving { id, leaving });
        self.node
            .write(DEFAULT_GROUP, write)
            .await
            .map_err(ApiError::from)?;
        Ok(())
    }

    /// Takes the member out of one range's group. Retried while the range's leader
    /// changes (it may be the member being removed, down, and the others elect a new one
    /// first): a removal applied twice is refused the second time, which is what it is
    /// meant to achieve.
    async fn leave_range(&self, group: GroupId, id: NodeId) -> Result<(), Status> {
        let store = self.node.store(group).map_err(ApiError::from)?;
        let deadline = tokio::time::Instant::now() + RANGE_LEAVE_TIMEOUT;
        loop {
            if !store.applied().conf_state.members().contains(&id) {
                return Ok(());
            }
            let removal = ConfChange::Change(vec![ConfChangeStep::Remove(id)]);
            match self.node.change_membership_at_leader(group, removal).await {
                // Already gone (this member's view was stale).
                Ok(_) | Err(NodeError::Refused { .. }) => return Ok(()),
                Err(
                    NodeError::LeaderChanged
                    | NodeError::Dropped
                    | NodeError::NoLeader
                    | NodeError::Timeout,
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(error) => return Err(ApiError::from(error).into()),
            }
        }
    }

    async fn change(&self, step: ConfChangeStep) -> Result<(), Status> {
        self.node
            .change_membership(DEFAULT_GROUP, ConfChange::Change(vec![step]))
            .await
            .map_err(ApiError::from)?;
        Ok(())
    }
}

/// How many times MemberRemove lists the ranges that still hold the member.
const LEAVE_PASSES_MAX: usize = 3;

/// How long MemberRemove tries to take the member out of each range but the first data
/// range: long enough for the range to elect a new leader when the member was its leader
/// and is down (a silence of an election timeout, then an election).
const RANGE_LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn to_member(m: MemberDescription) -> Member {
    Member {
        id: m.id.0,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

/// A new member's id, from its URLs, the cluster and the time (as etcd's), so a member
/// added again after removal gets a new id.
fn new_member_id(peer_urls: &[String], cluster_id: u64) -> u64 {
    let mut sorted = peer_urls.to_vec();
    sorted.sort();
    let now_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let cluster = format!("{cluster_id:x}");
    let now = now_nanos.to_string();
    let mut parts: Vec<&str> = sorted.iter().map(String::as_str).collect();
    parts.push(&cluster);
    parts.push(&now);
    stable_id(&parts)
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
        Ok(Response::new(MemberListResponse {
            header: common::current_header(&self.node),
            members: self.member_list()?,
        }))
    }

    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_admin()?;
        let request = request.into_inner();
        self.check_peer_urls(&request.peer_ur_ls, None)?;
        if request.is_learner {
            let learners = self.members()?.iter().filter(|m| m.is_learner).count();
            if learners >= LEARNERS_MAX {
                return Err(Status::failed_precondition(
                    "etcdserver: too many learner members in cluster",
                ));
            }
        }
        let id = new_member_id(&request.peer_ur_ls, self.node.cluster_id());
        // Registered first, so that when the raft change applies every member already
        // knows where to reach the new one.
        self.register_peer_urls(id, request.peer_ur_ls.clone())
            .await?;
        let step = if request.is_learner {
            ConfChangeStep::AddLearner(NodeId(id))
        } else {
            ConfChangeStep::AddVoter(NodeId(id))
        };
        self.change(step).await?;
        tracing::info!(member = %format!("{id:x}"), urls = ?request.peer_ur_ls, learner = request.is_learner, "member added");
        Ok(Response::new(MemberAddResponse {
            header: common::current_header(&self.node),
            member: Some(Member {
                id,
                name: String::new(),
                peer_ur_ls: request.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: request.is_learner,
            }),
            members: self.member_list()?,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_admin()?;
        let id = request.into_inner().id;
        self.member(id)?;
        // Marked first, so that the ranges following the membership do not add it back
        // between its removal from them and from the first data range.
        self.set_leaving(id, true).await?;
        let removal = async {
            self.leave_other_ranges(NodeId(id)).await?;
            self.change(ConfChangeStep::Remove(NodeId(id))).await
        };
        if let Err(status) = removal.await {
            // Not removed (refused, or no quorum): it stays, and the ranges it left take
            // it back. (If this member stops before that, it stays marked, left by the
            // other ranges, until MemberRemove is asked again.)
            let _ = self.set_leaving(id, false).await;
            return Err(status);
        }
        tracing::info!(member = %format!("{id:x}"), "member removed");
        Ok(Response::new(MemberRemoveResponse {
            header: common::current_header(&self.node),
            members: self.member_list()?,
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_admin()?;
        let request = request.into_inner();
        self.member(request.id)?;
        self.check_peer_urls(&request.peer_ur_ls, Some(request.id))?;
        self.register_peer_urls(request.id, request.peer_ur_ls.clone())
            .await?;
        tracing::info!(member = %format!("{:x}", request.id), urls = ?request.peer_ur_ls, "member updated");
        Ok(Response::new(MemberUpdateResponse {
            header: common::current_header(&self.node),
            members: self.member_list()?,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_admin()?;
        let id = request.into_inner().id;
        if !self.member(id)?.is_learner {
            return Err(Status::failed_precondition(
                "etcdserver: can only promote a learner member",
            ));
        }
        self.change(ConfChangeStep::AddVoter(NodeId(id))).await?;
        tracing::info!(member = %format!("{id:x}"), "learner promoted");
        Ok(Response::new(MemberPromoteResponse {
            header: common::current_header(&self.node),
            members: self.member_list()?,
        }))
    }
}
