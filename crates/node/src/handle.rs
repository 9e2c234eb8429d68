//! The client-facing server's way into the node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ostrakon_proto::peer::{write_request, WriteRequest};
use ostrakon_raft::{GroupId, LogIndex, NodeId, Term};
use ostrakon_storage::mvcc::{MvccStore, WriteOutcome};
use tokio::sync::{oneshot, watch};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::event_loop::{Input, InputSender};
use crate::transport::Transport;

/// A group's state as last published by the event loop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    /// The current term.
    pub term: Term,
    /// The known leader, or `NodeId::NONE`.
    pub leader: NodeId,
    /// Whether this node leads the group.
    pub is_leader: bool,
    /// The commit index.
    pub commit: LogIndex,
    /// The applied index.
    pub applied: LogIndex,
    /// Whether this node is a learner of the group.
    pub is_learner: bool,
}

/// What the handle shares with the event loop about one group.
pub struct GroupShared {
    /// The state machine (read concurrently with the loop's writes).
    pub store: Arc<MvccStore>,
    /// Published by the loop after every round.
    pub status: Arc<RwLock<GroupStatus>>,
    /// The applied index, for readers waiting on a read index.
    pub applied: watch::Receiver<LogIndex>,
    /// Lease deadlines (kept while this member leads).
    pub lessor: Arc<crate::lessor::Lessor>,
    /// Every committed revision's events, for watchers.
    pub events: tokio::sync::broadcast::Sender<Arc<ostrakon_storage::mvcc::RevisionEvents>>,
}

struct Inner {
    id: NodeId,
    cluster_id: u64,
    inputs: InputSender,
    groups: HashMap<GroupId, GroupShared>,
    transport: Transport,
    request_timeout: Duration,
    next_write_id: AtomicU64,
    name: String,
    client_urls: Vec<String>,
    peers: std::collections::BTreeMap<NodeId, String>,
    member_names: std::collections::BTreeMap<NodeId, String>,
}

/// One member as `MemberList` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    /// Its member id.
    pub id: NodeId,
    /// Its name (empty if it could not be asked).
    pub name: String,
    /// Where peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it (empty if it could not be asked).
    pub client_urls: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// A cheap, cloneable handle on the running node.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

impl NodeHandle {
    pub(crate) fn new(
        config: &NodeConfig,
        inputs: InputSender,
        groups: HashMap<GroupId, GroupShared>,
        transport: Transport,
    ) -> NodeHandle {
        NodeHandle {
            inner: Arc::new(Inner {
                id: config.id,
                cluster_id: config.cluster_id,
                inputs,
                groups,
                transport,
                request_timeout: config.request_timeout,
                next_write_id: AtomicU64::new(1),
                name: config.name.clone(),
                client_urls: config.client_urls.clone(),
                peers: config.peers.clone(),
                member_names: config.member_names.clone(),
            }),
        }
    }

    /// This node's member id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    fn group(&self, group: GroupId) -> Result<&GroupShared, NodeError> {
        self.inner.groups.get(&group).ok_or(NodeError::UnknownGroup)
    }

    /// Renews a lease (`renew`) or reads how long it has left, on the leader: here if this
    /// member leads, else forwarded. `None`: no such lease.
    pub async fn lease_query(
        &self,
        group: GroupId,
        id: i64,
        renew: bool,
    ) -> Result<Option<crate::lessor::LeaseTtl>, NodeError> {
        let status = self.status(group)?;
        if status.is_leader {
            return self.lease_query_local(group, id, renew);
        }
        let leader = status.leader;
        if leader == NodeId::NONE || leader == self.id() {
            // No leader known (or only a stale view of this member as leader): the
            // client retries.
            return Err(NodeError::NoLeader);
        }
        let attempt = self.inner.transport.lease_query(leader, group, id, renew);
        tokio::time::timeout(self.inner.request_timeout, attempt)
            .await
            .map_err(|_| NodeError::Timeout)?
    }

    /// `lease_query` on this member only; fails with `NotLeader` unless it leads.
    pub fn lease_query_local(
        &self,
        group: GroupId,
        id: i64,
        renew: bool,
    ) -> Result<Option<crate::lessor::LeaseTtl>, NodeError> {
        let shared = self.group(group)?;
        let status = self.status(group)?;
        if !status.is_leader {
            return Err(NodeError::NotLeader(status.leader));
        }
        shared
            .lessor
            .take_over(&shared.store, status.term, std::time::Instant::now());
        Ok(if renew {
            shared.lessor.renew(&shared.store, id)
        } else {
            shared.lessor.remaining(&shared.store, id)
        })
    }

    /// This member's name and advertised client URLs.
    pub fn self_description(&self) -> (String, Vec<String>) {
        (self.inner.name.clone(), self.inner.client_urls.clone())
    }

    /// Every member of the group, with the names and client URLs each one reports about
    /// itself (asked over the peer links; a member that does not answer within a second
    /// is listed with its configured name and no client URLs).
    pub async fn members(&self, group: GroupId) -> Result<Vec<MemberDescription>, NodeError> {
        let conf_state = self.group(group)?.store.applied().conf_state;
        let mut members = Vec::new();
        for id in conf_state.members() {
            let peer_urls = self.inner.peers.get(&id).cloned().into_iter().collect();
            let (name, client_urls) = if id == self.inner.id {
                self.self_description()
            } else {
                let asked = self.inner.transport.member_info(id);
                match tokio::time::timeout(Duration::from_secs(1), asked).await {
                    Ok(Some(info)) => (info.name, info.client_urls),
                    _ => (
                        self.inner
                            .member_names
                            .get(&id)
                            .cloned()
                            .unwrap_or_default(),
                        Vec::new(),
                    ),
                }
            };
            members.push(MemberDescription {
                id,
                name,
                peer_urls,
                client_urls,
                is_learner: conf_state.is_learner(id),
            });
        }
        Ok(members)
    }

    /// Subscribes to the events of every revision the group commits from now on.
    pub fn subscribe_events(
        &self,
        group: GroupId,
    ) -> Result<
        tokio::sync::broadcast::Receiver<Arc<ostrakon_storage::mvcc::RevisionEvents>>,
        NodeError,
    > {
        Ok(self.group(group)?.events.subscribe())
    }

    /// The group's state machine, for reads.
    pub fn store(&self, group: GroupId) -> Result<Arc<MvccStore>, NodeError> {
        Ok(self.group(group)?.store.clone())
    }

    /// The group's last published status.
    pub fn status(&self, group: GroupId) -> Result<GroupStatus, NodeError> {
        Ok(self.group(group)?.status.read().unwrap().clone())
    }

    /// Replicates and applies a write, through the leader wherever it is; the outcome is
    /// the state machine's response. Gives up after the request timeout, in which case the
    /// write may or may not have been applied.
    pub async fn write(
        &self,
        group: GroupId,
        request: write_request::Request,
    ) -> Result<WriteOutcome, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let attempt = async {
            match self.write_local(group, request.clone()).await {
                Err(NodeError::NotLeader(leader)) if leader != NodeId::NONE => {
                    self.inner.transport.forward(leader, group, request).await
                }
                Err(NodeError::NotLeader(_)) => Err(NodeError::NoLeader),
                other => other,
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Proposes on this node only; fails with `NotLeader` on a follower.
    pub async fn write_local(
        &self,
        group: GroupId,
        request: write_request::Request,
    ) -> Result<WriteOutcome, NodeError> {
        self.group(group)?;
        let write = WriteRequest {
            origin: self.inner.id.0,
            id: self.inner.next_write_id.fetch_add(1, Ordering::Relaxed),
            request: Some(request),
        };
        let (respond, response) = oneshot::channel();
        self.send(Input::Propose {
            group,
            write,
            respond,
        })?;
        response.await.map_err(|_| NodeError::Stopped)?
    }

    /// Hands the group's leadership to `target` and waits until it leads (this node must
    /// lead; `target` must be a voter).
    pub async fn move_leader(&self, group: GroupId, target: NodeId) -> Result<(), NodeError> {
        let (respond, response) = oneshot::channel();
        self.send(Input::TransferLeader {
            group,
            target,
            respond,
        })?;
        response.await.map_err(|_| NodeError::Stopped)??;
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            if self.status(group)?.leader == target {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until this node's state machine reflects every write acknowledged before the
    /// call (raft's ReadIndex); then a read of the local store is linearizable.
    pub async fn linearizable_read_point(&self, group: GroupId) -> Result<(), NodeError> {
        let mut applied = self.group(group)?.applied.clone();
        let wait = async {
            let (respond, response) = oneshot::channel();
            self.send(Input::ReadIndex { group, respond })?;
            let index = response.await.map_err(|_| NodeError::Stopped)??;
            applied
                .wait_for(|applied| *applied >= index)
                .await
                .map_err(|_| NodeError::Stopped)?;
            Ok(())
        };
        match tokio::time::timeout(self.inner.request_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    pub(crate) fn inputs(&self) -> InputSender {
        self.inner.inputs.clone()
    }

    /// Asks the event loop to stop.
    pub fn shutdown(&self) {
        let _ = self.inner.inputs.send(Input::Shutdown);
    }

    fn send(&self, input: Input) -> Result<(), NodeError> {
        self.inner
            .inputs
            .send(input)
            .map_err(|_| NodeError::Stopped)
    }
}
