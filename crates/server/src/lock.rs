//! etcd's Lock service (`v3lockpb`), built on leases and revisions as etcd builds it.
//!
//! A caller's key is `<name>/<lease in hex>`, attached to its lease. Callers are served in
//! the order their keys were created: a caller holds the lock once no key under the name
//! has a smaller create revision. The key's create revision is a fencing token: a store
//! guarded by the lock should refuse writes carrying a smaller one (see docs/LOCKS.md).

use bytes::Bytes;
use ostrakon_node::NodeHandle;
use ostrakon_proto::etcdserverpb::DeleteRangeRequest;
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_proto::v3lockpb::lock_server::Lock;
use ostrakon_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use ostrakon_storage::mvcc::{Revision, WriteOutcome};
use tonic::{Request, Response, Status};

use ostrakon_storage::mvcc::auth::Access;

use crate::common;
use crate::queue;

pub struct LockService {
    node: NodeHandle,
}

impl LockService {
    pub fn new(node: NodeHandle) -> LockService {
        LockService { node }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        // The caller's key goes under the name, and waiting reads the others there.
        let end = queue::prefix_end(&request.name);
        caller.check(&request.name, &end, Access::Write)?;
        caller.check(&request.name, &end, Access::Read)?;
        let (prefix, key) = queue::owner_key(&request.name, request.lease);
        let created = queue::enqueue(
            &self.node,
            &key,
            Bytes::new(),
            request.lease,
            &caller,
            |caller| {
                caller.check(&request.name, &end, Access::Write)?;
                caller.check(&request.name, &end, Access::Read)
            },
        )
        .await?;
        queue::wait_for_turn(&self.node, &prefix, created.create_revision).await?;
        let revision = self.node.current_revision();
        Ok(Response::new(LockResponse {
            header: common::header(&self.node, revision),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let key = request.into_inner().key;
        caller.check(&key, b"", Access::Write)?;
        let delete = DeleteRangeRequest {
            key: key.clone(),
            ..DeleteRangeRequest::default()
        };
        let recheck =
            |caller: &crate::auth::Caller, _: &Write| caller.check(&key, b"", Access::Write);
        let WriteOutcome::DeleteRange(response) =
            crate::auth::write_rechecked(&self.node, &caller, Write::DeleteRange(delete), recheck)
                .await?
        else {
            panic!("an unlock answered with another kind of outcome");
        };
        let revision = Revision(response.header.map(|h| h.revision).unwrap_or_default());
        Ok(Response::new(UnlockResponse {
            header: common::header(&self.node, revision),
        }))
    }
}
