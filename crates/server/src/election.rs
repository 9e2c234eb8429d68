//! etcd's Election service (`v3electionpb`), on the same create-revision queue as Lock.
//!
//! A campaigner's key is `<name>/<lease in hex>` holding its proclaimed value; the leader
//! is the campaigner whose key was created first. Proclaim and Resign only act while the
//! caller's key still exists with the create revision it was elected with.

use std::pin::Pin;

use bytes::Bytes;
use ostrakon_node::NodeHandle;
use ostrakon_proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_proto::v3electionpb::election_server::Election;
use ostrakon_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use ostrakon_storage::mvcc::{Revision, WriteOutcome};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use ostrakon_storage::mvcc::auth::Access;

use crate::common;
use crate::errors::ApiError;
use crate::queue;

/// Responses queued for an observer before the stream waits for it to read.
const OBSERVED_QUEUED_MAX: usize = 16;

pub struct ElectionService {
    node: NodeHandle,
}

impl ElectionService {
    pub fn new(node: NodeHandle) -> ElectionService {
        ElectionService { node }
    }

    /// Runs `then` only while `leader`'s key exists with its election revision; else
    /// etcd's "not leader" error.
    async fn as_leader(
        &self,
        leader: Option<LeaderKey>,
        then: RequestOp,
        caller: &crate::auth::Caller,
    ) -> Result<(), Status> {
        let leader = leader.ok_or_else(|| Status::invalid_argument("election: no leader key"))?;
        let txn = TxnRequest {
            compare: vec![Compare {
                key: leader.key.clone(),
                target: compare::CompareTarget::Create as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::CreateRevision(leader.rev)),
                range_end: Bytes::new(),
            }],
            success: vec![then],
            failure: vec![],
        };
        // Both callers need write permission on the leader's key, checked again if the
        // auth store changed before the write applied.
        let key = leader.key.clone();
        let recheck =
            |caller: &crate::auth::Caller, _: &Write| caller.check(&key, b"", Access::Write);
        match crate::auth::write_rechecked(&self.node, caller, Write::Txn(txn), recheck).await? {
            WriteOutcome::Txn(response) if response.succeeded => Ok(()),
            WriteOutcome::Txn(_) => Err(Status::failed_precondition("election: not leader")),
            other => panic!("an election txn answered with {other:?}"),
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        let end = queue::prefix_end(&request.name);
        caller.check(&request.name, &end, Access::Write)?;
        caller.check(&request.name, &end, Access::Read)?;
        let (prefix, key) = queue::owner_key(&request.name, request.lease);
        let created = queue::enqueue(
            &self.node,
            &key,
            request.value.clone(),
            request.lease,
            &caller,
            |caller| {
                caller.check(&request.name, &end, Access::Write)?;
                caller.check(&request.name, &end, Access::Read)
            },
        )
        .await?;
        queue::wait_for_turn(&self.node, &prefix, created.create_revision).await?;
        Ok(Response::new(CampaignResponse {
            header: common::current_header(&self.node),
            leader: Some(LeaderKey {
                name: request.name,
                key,
                rev: created.create_revision,
                lease: request.lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        let leader = request.leader.clone();
        if let Some(leader) = &leader {
            caller.check(&leader.key, b"", Access::Write)?;
        }
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: leader.as_ref().map(|l| l.key.clone()).unwrap_or_default(),
                value: request.value,
                lease: leader.as_ref().map_or(0, |l| l.lease),
                ..PutRequest::default()
            })),
        };
        self.as_leader(leader, put, &caller).await?;
        Ok(Response::new(ProclaimResponse {
            header: common::current_header(&self.node),
        }))
    }

    async fn leader(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let (prefix, _) = queue::owner_key(&request.into_inner().name, 0);
        let end = queue::prefix_end(&prefix);
        let head = queue::head(&self.node, &prefix).await?;
        // As a Range: checked after its read index (`Caller::at_read_point`).
        let groups = self
            .node
            .ranges_touched(&[(&prefix[..], &end[..])])
            .await
            .map_err(ApiError::from)?;
        let caller = caller.at_read_point(&self.node, &groups).await?;
        caller.check(&prefix, &end, Access::Read)?;
        match head {
            Some(kv) => Ok(Response::new(LeaderResponse {
                header: common::current_header(&self.node),
                kv: Some(kv),
            })),
            None => Err(Status::not_found("election: no leader")),
        }
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

    /// The leader's key-value now and after every change of leader or of its value.
    async fn observe(
        &self,
        request: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let (prefix, _) = queue::owner_key(&request.into_inner().name, 0);
        caller.check(&prefix, &queue::prefix_end(&prefix), Access::Read)?;
        let node = self.node.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(OBSERVED_QUEUED_MAX);
        tokio::spawn(async move {
            let mut last: Option<(Bytes, i64)> = None;
            loop {
                let mut events = match queue::prefix_events(&node, &prefix).await {
                    Ok(events) => events,
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(error))).await;
                        return;
                    }
                };
                match queue::head(&node, &prefix).await {
                    Ok(Some(kv)) => {
                        let seen = (kv.key.clone(), kv.mod_revision);
                        if last.as_ref() != Some(&seen) {
                            last = Some(seen);
                            let response = LeaderResponse {
                                header: common::header(&node, Revision(kv.mod_revision)),
                                kv: Some(kv),
                            };
                            if sender.send(Ok(response)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(error) => {
                        let _ = sender.send(Err(Status::from(error))).await;
                        return;
                    }
                }
                // Look again after anything under the election's prefix changes.
                loop {
                    let Ok(received) =
                        tokio::time::timeout(queue::TURN_RECHECK, events.recv()).await
                    else {
                        if sender.is_closed() {
                            return; // the observer went away
                        }
                        break; // a change in another range: look again
                    };
                    match received {
                        Ok(revision) => {
                            let touched = revision.events.iter().any(|e| {
                                e.kv.as_ref().is_some_and(|kv| kv.key.starts_with(&prefix))
                            });
                            if touched {
                                break;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                    if sender.is_closed() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn resign(
        &self,
        request: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let leader = request.into_inner().leader;
        if let Some(leader) = &leader {
            caller.check(&leader.key, b"", Access::Write)?;
        }
        let delete = RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: leader.as_ref().map(|l| l.key.clone()).unwrap_or_default(),
                    ..DeleteRangeRequest::default()
                },
            )),
        };
        self.as_leader(leader, delete, &caller).await?;
        Ok(Response::new(ResignResponse {
            header: common::current_header(&self.node),
        }))
    }
}
