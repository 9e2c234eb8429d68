//! ostrakon's Oracle service: timestamps from the cluster's timestamp oracle (on the meta
//! range's leader; any member forwards), as TiKV's placement driver hands them to its
//! clients. The same timestamps will become the revisions of writes once the keyspace is
//! in ranges (docs/RANGES.md).

use ostrakon_node::handle::TIMESTAMPS_PER_REQUEST_MAX;
use ostrakon_node::NodeHandle;
use ostrakon_proto::ostrakonpb::oracle_server::Oracle;
use ostrakon_proto::ostrakonpb::{TimestampsRequest, TimestampsResponse};
use tonic::{Request, Response, Status};

use crate::errors::ApiError;

pub struct OracleService {
    node: NodeHandle,
}

impl OracleService {
    pub fn new(node: NodeHandle) -> OracleService {
        OracleService { node }
    }
}

#[tonic::async_trait]
impl Oracle for OracleService {
    async fn timestamps(
        &self,
        request: Request<TimestampsRequest>,
    ) -> Result<Response<TimestampsResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_authenticated()?;
        let count = request.into_inner().count.max(1);
        if count > TIMESTAMPS_PER_REQUEST_MAX {
            return Err(Status::invalid_argument(format!(
                "ostrakon: at most {TIMESTAMPS_PER_REQUEST_MAX} timestamps per request"
            )));
        }
        let range = self.node.timestamps(count).await.map_err(ApiError::from)?;
        Ok(Response::new(TimestampsResponse {
            first: range.first.0,
            count: range.count,
        }))
    }
}
