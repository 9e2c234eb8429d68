//! etcd's KV service.

use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::kv_server::Kv;
use ostrakon_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, TxnRequest, TxnResponse,
};
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_storage::mvcc::{self, Revision, WriteOutcome};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::common;
use crate::errors::ApiError;
use crate::validate::{self, Limits};

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

    async fn write(&self, write: Write, encoded_bytes: usize) -> Result<WriteOutcome, ApiError> {
        validate::size(encoded_bytes, &self.limits)?;
        common::write(&self.node, write).await
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse, ApiError> {
        validate::range(&request)?;
        if !request.serializable {
            common::refuse_on_learner(&self.node)?;
            self.node.linearizable_read_point(DEFAULT_GROUP).await?;
        }
        let store = self.node.store(DEFAULT_GROUP)?;
        let mut response = if request.range_end.is_empty() {
            mvcc::range(&store.read_view(), &request)?
        } else {
            // A range may read many keys: keep it off the async workers, where it would
            // hold up every other request sharing the worker.
            tokio::task::spawn_blocking(move || mvcc::range(&store.read_view(), &request))
                .await
                .expect("a range read panicked")?
        };
        response.header = self.header(response.header);
        Ok(response)
    }
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
        Ok(Response::new(
            KvService::range(self, request.into_inner()).await?,
        ))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let request = request.into_inner();
        validate::put(&request)?;
        let bytes = request.encoded_len();
        respond!(self, self.write(Write::Put(request), bytes).await?, Put)
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let request = request.into_inner();
        validate::delete_range(&request)?;
        let bytes = request.encoded_len();
        respond!(
            self,
            self.write(Write::DeleteRange(request), bytes).await?,
            DeleteRange
        )
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let request = request.into_inner();
        validate::txn(&request, &self.limits)?;
        let bytes = request.encoded_len();
        respond!(self, self.write(Write::Txn(request), bytes).await?, Txn)
    }

    async fn compact(
        &self,
        request: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let request = request.into_inner();
        let bytes = request.encoded_len();
        respond!(
            self,
            self.write(Write::Compaction(request), bytes).await?,
            Compaction
        )
    }
}
