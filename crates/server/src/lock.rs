//! etcd's Lock service (`v3lockpb`), built on leases and revisions as etcd builds it.
//!
//! A caller's key is `<name>/<lease in hex>`, attached to its lease. Callers are served in
//! the order their keys were created: a caller holds the lock once no key under the name
//! has a smaller create revision. The key's create revision is a fencing token: a store
//! guarded by the lock should refuse writes carrying a smaller one (see docs/LOCKS.md).

use std::sync::Arc;

use bytes::Bytes;
use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::{
    compare, range_request, request_op, response_op, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, TxnRequest,
};
use ostrakon_proto::mvccpb::event::EventType;
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_proto::v3lockpb::lock_server::Lock;
use ostrakon_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use ostrakon_storage::mvcc::{self, Revision, RevisionEvents, WriteOutcome};
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use crate::common;
use crate::errors::ApiError;

pub struct LockService {
    node: NodeHandle,
}

impl LockService {
    pub fn new(node: NodeHandle) -> LockService {
        LockService { node }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        common::header(&self.node, Revision(revision))
    }

    async fn write(&self, write: Write) -> Result<WriteOutcome, ApiError> {
        common::write(&self.node, write).await
    }

    /// Creates the caller's key unless it exists (the same lease locking twice is one
    /// acquisition); returns its create revision.
    async fn enqueue(&self, key: &Bytes, lease: i64) -> Result<i64, ApiError> {
        let read_key = RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })),
        };
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                target: compare::CompareTarget::Create as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::CreateRevision(0)),
                range_end: Bytes::new(),
            }],
            success: vec![
                RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        lease,
                        ..PutRequest::default()
                    })),
                },
                read_key.clone(),
            ],
            failure: vec![read_key],
        };
        let WriteOutcome::Txn(response) = self.write(Write::Txn(txn)).await? else {
            panic!("a lock's txn answered with another kind of outcome");
        };
        let created = response
            .responses
            .iter()
            .find_map(|r| match &r.response {
                Some(response_op::Response::ResponseRange(range)) => range.kvs.first().cloned(),
                _ => None,
            })
            .expect("the lock key exists right after its txn");
        Ok(created.create_revision)
    }

    /// The key under `prefix` created last before `revision`, if any (the caller's
    /// predecessor in the queue).
    async fn predecessor(&self, prefix: &Bytes, revision: i64) -> Result<Option<Bytes>, ApiError> {
        self.node.linearizable_read_point(DEFAULT_GROUP).await?;
        let store = self.node.store(DEFAULT_GROUP)?;
        let request = RangeRequest {
            key: prefix.clone(),
            range_end: prefix_end(prefix),
            max_create_revision: revision - 1,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Create as i32,
            limit: 1,
            ..RangeRequest::default()
        };
        let response =
            tokio::task::spawn_blocking(move || mvcc::range(&store.read_view(), &request))
                .await
                .expect("a lock's range panicked")?;
        Ok(response.kvs.first().map(|kv| kv.key.clone()))
    }
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::from_static(b"\0")
}

/// Waits until `key` is deleted (or the event stream lagged, so the caller looks again).
async fn deleted(events: &mut broadcast::Receiver<Arc<RevisionEvents>>, key: &[u8]) {
    loop {
        match events.recv().await {
            Ok(revision) => {
                let gone = revision.events.iter().any(|e| {
                    e.r#type == EventType::Delete as i32
                        && e.kv.as_ref().is_some_and(|kv| kv.key == key)
                });
                if gone {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let request = request.into_inner();
        let mut prefix = request.name.to_vec();
        prefix.push(b'/');
        let prefix = Bytes::from(prefix);
        let key = Bytes::from(format!(
            "{}{:x}",
            String::from_utf8_lossy(&prefix),
            request.lease
        ));
        let my_revision = self.enqueue(&key, request.lease).await?;
        loop {
            // Subscribe before looking, so a delete between the two is not missed.
            let mut events = self
                .node
                .subscribe_events(DEFAULT_GROUP)
                .map_err(ApiError::from)?;
            match self.predecessor(&prefix, my_revision).await? {
                None => break,
                Some(waiting_for) => deleted(&mut events, &waiting_for).await,
            }
        }
        let revision = self
            .node
            .store(DEFAULT_GROUP)
            .map_err(ApiError::from)?
            .current_revision()
            .0;
        Ok(Response::new(LockResponse {
            header: self.header(revision),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let delete = DeleteRangeRequest {
            key: request.into_inner().key,
            ..DeleteRangeRequest::default()
        };
        let WriteOutcome::DeleteRange(response) = self.write(Write::DeleteRange(delete)).await?
        else {
            panic!("an unlock answered with another kind of outcome");
        };
        let revision = response.header.map(|h| h.revision).unwrap_or_default();
        Ok(Response::new(UnlockResponse {
            header: self.header(revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"lock/"), Bytes::from_static(b"lock0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
    }
}
