//! ostrakon's Ranges service: the keyspace's ranges, listed and split by hand.

use ostrakon_node::NodeHandle;
use ostrakon_proto::ostrakonpb::ranges_server::Ranges;
use ostrakon_proto::ostrakonpb::{
    ListRangesRequest, ListRangesResponse, MergeRangesRequest, MergeRangesResponse, RangeInfo,
    SplitRangeRequest, SplitRangeResponse,
};
use tonic::{Request, Response, Status};

use crate::errors::ApiError;

pub struct RangesService {
    node: NodeHandle,
}

impl RangesService {
    pub fn new(node: NodeHandle) -> RangesService {
        RangesService { node }
    }
}

/// The data ranges this member holds, in key order, as it knows them (the listing, and
/// the dashboard's range map); a range that goes away while it is listed (a split or a
/// removal racing the listing) is left out.
pub(crate) fn describe_ranges(node: &NodeHandle) -> Vec<RangeInfo> {
    let mut ranges = Vec::new();
    for (group, span) in node.data_ranges() {
        let (Ok(store), Ok(status)) = (node.store(group), node.status(group)) else {
            continue;
        };
        let view = store.read_view();
        ranges.push(RangeInfo {
            range_id: group.0,
            start: span.start().to_vec().into(),
            end: span.end().unwrap_or_default().to_vec().into(),
            unbounded_end: span.end().is_none(),
            leader: status.leader.0,
            replicas: store
                .applied()
                .conf_state
                .members()
                .iter()
                .map(|id| id.0)
                .collect(),
            keys: view.live_keys() as u64,
            live_bytes: view.live_bytes(),
            requests_per_second: node.requests_per_second(group).unwrap_or(0.0),
            revision: view.current_revision().0,
        });
    }
    ranges
}

#[tonic::async_trait]
impl Ranges for RangesService {
    async fn list(
        &self,
        request: Request<ListRangesRequest>,
    ) -> Result<Response<ListRangesResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_authenticated()?;
        let ranges = describe_ranges(&self.node);
        Ok(Response::new(ListRangesResponse { ranges }))
    }

    async fn split(
        &self,
        request: Request<SplitRangeRequest>,
    ) -> Result<Response<SplitRangeResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_admin()?;
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(Status::invalid_argument(
                "ostrakon: a split key must not be empty (the first range starts there)",
            ));
        }
        let (left, right) = self
            .node
            .split_range(&key, true)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(SplitRangeResponse {
            left_range_id: left.0,
            right_range_id: right.0,
        }))
    }

    async fn merge(
        &self,
        request: Request<MergeRangesRequest>,
    ) -> Result<Response<MergeRangesResponse>, Status> {
        crate::auth::caller(&self.node, request.metadata())
            .await?
            .check_admin()?;
        let key = request.into_inner().key;
        let (left, right) = self
            .node
            .merge_ranges_at(&key)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(MergeRangesResponse {
            left_range_id: left.0,
            right_range_id: right.0,
        }))
    }
}
