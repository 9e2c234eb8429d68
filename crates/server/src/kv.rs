//! etcd's KV service.

use ostrakon_node::NodeHandle;
use ostrakon_proto::etcdserverpb::kv_server::Kv;
use ostrakon_proto::etcdserverpb::request_op;
use ostrakon_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_storage::mvcc::auth::Access;
use ostrakon_storage::mvcc::{self, Revision, WriteOutcome};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::auth::{self, Caller};
use crate::common;
use crate::errors::ApiError;
use crate::routed::RoutedRead;
use crate::validate::{self, Limits};

/// How long a `physical` compaction waits for the compactor before giving up with a
/// timeout (the compaction itself applied: only the wait ends).
const PHYSICAL_COMPACTION_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// Serves Range, Put, DeleteRange, Txn and Compact for the node's single group.
pub struct KvService {
    node: NodeHandle,
    limits: Limits,
}

impl KvService {
    pub fn new(node: NodeHandle, limits: Limits) -> KvService {
        KvService { node, limits }
    }

    fn header(&self, header: Option<ResponseHeader>) -> Option<ResponseHeader> {
        let revision = header.map(|h| h.revision).unwrap_or_default();
        common::header(&self.node, Revision(revision))
    }

    async fn write(
        &self,
        write: Write,
        encoded_bytes: usize,
        caller: &Caller,
    ) -> Result<WriteOutcome, ApiError> {
        validate::size(encoded_bytes, &self.limits)?;
        let node = &self.node;
        auth::write_rechecked(node, caller, write, |caller, write| {
            check_write(node, caller, write)
        })
        .await
    }

    async fn range(
        &self,
        request: RangeRequest,
        caller: &Caller,
    ) -> Result<RangeResponse, ApiError> {
        validate::range(&request)?;
        if request.serializable {
            caller.check(&request.key, &request.range_end, Access::Read)?;
        } else {
            common::refuse_on_learner(&self.node)?;
        }
        let interval = [(&request.key[..], &request.range_end[..])];
        let routed = crate::routed::read_at(
            &self.node,
            &interval,
            !request.serializable,
            request.revision,
        )
        .await?;
        if !request.serializable {
            // As etcd: checked after the read index, against an auth store that has every
            // change acknowledged before the read began.
            let groups = self.node.ranges_touched(&interval).await?;
            let caller = caller.at_read_point(&self.node, &groups).await?;
            caller.check(&request.key, &request.range_end, Access::Read)?;
        }
        let mut response = match routed {
            RoutedRead::One(view) if request.range_end.is_empty() => mvcc::range(&view, &request)?,
            // A range may read many keys: keep it off the async workers, where it would
            // hold up every other request sharing the worker.
            RoutedRead::One(view) => {
                tokio::task::spawn_blocking(move || mvcc::range(&view, &request))
                    .await
                    .expect("a range read panicked")?
            }
            RoutedRead::Across { views, at, header } => {
                // A single key (a read of one range of a keyspace in ranges) is read here:
                // a hop to a blocking thread costs more than the read.
                let mut response = if request.range_end.is_empty() {
                    mvcc::range_across(&views, &request, at)?
                } else {
                    tokio::task::spawn_blocking(move || mvcc::range_across(&views, &request, at))
                        .await
                        .expect("a range read panicked")?
                };
                response.header = Some(ResponseHeader {
                    revision: header.0,
                    ..ResponseHeader::default()
                });
                response
            }
        };
        response.header = self.header(response.header);
        Ok(response)
    }
}

impl KvService {
    /// A Txn without writes is a read, as etcd serves it: linearizable through a read
    /// index (unless every Range in it is serializable), then evaluated on one view of
    /// the local store, so it costs no raft entry, WAL write or fsync.
    async fn read_txn(
        &self,
        request: TxnRequest,
        caller: &Caller,
    ) -> Result<TxnResponse, ApiError> {
        // A learner serves only serializable Ranges, as before (etcd refuses Txn there).
        common::refuse_on_learner(&self.node)?;
        let mut intervals = Vec::new();
        mvcc::txn_intervals(&request, &mut intervals);
        let linearizable = !mvcc::txn_is_serializable(&request);
        if !linearizable {
            check_txn(caller, &request)?;
        }
        let routed = crate::routed::read_at(&self.node, &intervals, linearizable, 0).await?;
        if linearizable {
            // As etcd: checked after the read index (as a Range is).
            let groups = self.node.ranges_touched(&intervals).await?;
            check_txn(&caller.at_read_point(&self.node, &groups).await?, &request)?;
        }
        // Reads of single keys are evaluated here (a hop to a blocking thread costs more
        // than they do); ranges of keys off the async workers.
        let single_keys = intervals.iter().all(|(_, range_end)| range_end.is_empty());
        drop(intervals);
        let evaluate = move || match routed {
            RoutedRead::One(view) => mvcc::read_txn(&view, &request),
            // Compares and reads across ranges at one revision, which the header carries.
            RoutedRead::Across { views, at, .. } => mvcc::read_txn_across(&views, &request, at),
        };
        let mut response = if single_keys {
            evaluate()?
        } else {
            tokio::task::spawn_blocking(evaluate)
                .await
                .expect("a read-only Txn panicked")?
        };
        response.header = self.header(response.header);
        Ok(response)
    }
}

/// A Put needs write permission on its key, read permission too if it returns the
/// previous value, and write permission on every key already attached to its lease.
fn check_put(node: &NodeHandle, caller: &Caller, put: &PutRequest) -> Result<(), ApiError> {
    caller.check(&put.key, b"", Access::Write)?;
    if put.prev_kv {
        caller.check(&put.key, b"", Access::Read)?;
    }
    if put.lease != 0 && caller.auth_enabled() {
        for key in node.lease_keys(put.lease) {
            caller.check(&key, b"", Access::Write)?;
        }
    }
    Ok(())
}

/// What a write needs, checked again when its apply found the auth store changed.
fn check_write(node: &NodeHandle, caller: &Caller, write: &Write) -> Result<(), ApiError> {
    match write {
        Write::Put(put) => check_put(node, caller, put),
        Write::DeleteRange(delete) => check_delete(caller, delete),
        Write::Txn(txn) => check_txn(caller, txn),
        // Compaction needs no permission (as in etcd).
        _ => Ok(()),
    }
}

fn check_delete(caller: &Caller, delete: &DeleteRangeRequest) -> Result<(), ApiError> {
    caller.check(&delete.key, &delete.range_end, Access::Write)?;
    if delete.prev_kv {
        caller.check(&delete.key, &delete.range_end, Access::Read)?;
    }
    Ok(())
}

/// A Txn needs read permission on what it compares, and on both branches what each
/// operation needs (nested Txns included, which etcd 3.5 skips).
fn check_txn(caller: &Caller, txn: &TxnRequest) -> Result<(), ApiError> {
    for compare in &txn.compare {
        caller.check(&compare.key, &compare.range_end, Access::Read)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(range)) => {
                caller.check(&range.key, &range.range_end, Access::Read)?
            }
            Some(request_op::Request::RequestPut(put)) => {
                caller.check(&put.key, b"", Access::Write)?;
                if put.prev_kv {
                    caller.check(&put.key, b"", Access::Read)?;
                }
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => check_delete(caller, delete)?,
            Some(request_op::Request::RequestTxn(inner)) => check_txn(caller, inner)?,
            None => {}
        }
    }
    Ok(())
}

/// The response inside a write's outcome, with etcd's header filled in.
macro_rules! respond {
    ($service:expr, $outcome:expr, $variant:ident) => {
        match $outcome {
            WriteOutcome::$variant(mut response) => {
                response.header = $service.header(response.header);
                Ok(Response::new(response))
            }
            other => panic!(
                "the state machine answered a write with the wrong kind of outcome: {other:?}"
            ),
        }
    };
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<RangeRequest>,
    ) -> Result<Response<RangeResponse>, Status> {
        // etcd checks a request's shape before its token.
        validate::range(request.get_ref()).map_err(Status::from)?;
        let caller = auth::caller(&self.node, request.metadata()).await?;
        Ok(Response::new(
            KvService::range(self, request.into_inner(), &caller).await?,
        ))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        // etcd checks a request's shape before its token.
        validate::put(request.get_ref())?;
        let caller = auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        // As etcd: the size is checked as the request goes to raft, and permissions
        // after (etcd checks a write's permissions as it applies).
        let bytes = request.encoded_len();
        validate::size(bytes, &self.limits)?;
        check_put(&self.node, &caller, &request)?;
        respond!(
            self,
            self.write(Write::Put(request), bytes, &caller).await?,
            Put
        )
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::delete_range(request.get_ref())?;
        let caller = auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        let bytes = request.encoded_len();
        validate::size(bytes, &self.limits)?;
        check_delete(&caller, &request)?;
        respond!(
            self,
            self.write(Write::DeleteRange(request), bytes, &caller)
                .await?,
            DeleteRange
        )
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        validate::txn(request.get_ref(), &self.limits)?;
        let caller = auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        let read_only = mvcc::txn_is_read_only(&request);
        let bytes = request.encoded_len();
        if !read_only {
            validate::size(bytes, &self.limits)?;
        }
        if read_only {
            return Ok(Response::new(self.read_txn(request, &caller).await?));
        }
        check_txn(&caller, &request)?;
        respond!(
            self,
            self.write(Write::Txn(request), bytes, &caller).await?,
            Txn
        )
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // As in etcd, compaction needs no permission.
        let caller = auth::caller(&self.node, request.metadata()).await?;
        let request = request.into_inner();
        let bytes = request.encoded_len();
        let (revision, physical) = (Revision(request.revision), request.physical);
        let outcome = self
            .write(Write::Compaction(request), bytes, &caller)
            .await?;
        if physical && matches!(outcome, WriteOutcome::Compaction(_)) {
            // etcd's physical compaction: answer once this member's compactors have
            // removed the garbage (the apply only made it invisible); each range
            // compacted at the revision or at its own current one if lower.
            for (group, _) in self.node.data_ranges() {
                let store = self.node.store(group).map_err(ApiError::from)?;
                let done = tokio::task::spawn_blocking(move || {
                    let at = revision.min(store.current_revision());
                    store.wait_compacted_physically(at, PHYSICAL_COMPACTION_WAIT_MAX)
                })
                .await
                .expect("waiting for a compaction panicked");
                if !done {
                    return Err(ApiError::Node(ostrakon_node::NodeError::Timeout).into());
                }
            }
        }
        respond!(self, outcome, Compaction)
    }
}
