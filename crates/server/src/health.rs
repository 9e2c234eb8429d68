//! `/health`, as etcd serves it: healthy when a linearizable read succeeds.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use ostrakon_node::{NodeError, NodeHandle, DEFAULT_GROUP};

pub async fn health(State(node): State<NodeHandle>) -> impl IntoResponse {
    let (status, reason) = match node.linearizable_read_point(DEFAULT_GROUP).await {
        Ok(()) => (StatusCode::OK, ""),
        Err(NodeError::NoLeader) | Err(NodeError::NotLeader(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "RAFT NO LEADER")
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "QGET ERROR"),
    };
    let healthy = status == StatusCode::OK;
    (
        status,
        [("content-type", "application/json")],
        format!("{{\"health\":\"{healthy}\",\"reason\":\"{reason}\"}}"),
    )
}
