//! Reads served by the range holding their keys.

use ostrakon_node::NodeHandle;
use ostrakon_storage::mvcc::{KeyInterval, ReadView};

use crate::errors::ApiError;

/// A view of the range holding every key of `intervals` (linearizable: after the range's
/// read index). If a split moved the keys between the route and the view (this node
/// applied it while the read waited), the read is routed again.
pub async fn read_view(
    node: &NodeHandle,
    intervals: &[KeyInterval<'_>],
    linearizable: bool,
) -> Result<ReadView, ApiError> {
    loop {
        let group = node.route(intervals).await?;
        if linearizable && !crate::planted::stale_reads() {
            match node.linearizable_read_point(group).await {
                Err(ostrakon_node::NodeError::NoLeader)
                    if node.await_new_range_leader(group).await =>
                {
                    continue
                }
                other => other?,
            }
        }
        let view = node.store(group)?.read_view();
        if intervals
            .iter()
            .all(|(key, range_end)| view.span().covers(key, range_end))
        {
            return Ok(view);
        }
    }
}
