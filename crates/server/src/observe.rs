//! What operators scrape and probe on the client port: `/metrics` (Prometheus text, etcd's
//! names), `/readyz` and `/livez` (as etcd 3.5's). The gRPC request metrics are recorded
//! around every gRPC service (`grpc_calls`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use ostrakon_node::metrics::metrics;
use ostrakon_node::{NodeHandle, DEFAULT_GROUP};

/// `/metrics`: every metric in Prometheus's text format; gauges read at scrape time are
/// refreshed first.
pub async fn metrics_text(State(node): State<NodeHandle>) -> impl IntoResponse {
    if let Ok(store) = node.store(DEFAULT_GROUP) {
        let bytes = tokio::task::spawn_blocking(move || store.disk_bytes())
            .await
            .unwrap_or(0);
        metrics().db_total_size_bytes.set(bytes as i64);
    }
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        metrics().render(),
    )
}

/// `/readyz`: ready to serve when a leader is known and a linearizable read succeeds,
/// as etcd's; the body names the failed check.
pub async fn readyz(State(node): State<NodeHandle>) -> impl IntoResponse {
    match node.linearizable_read_point(DEFAULT_GROUP).await {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]linearizable_read failed: {error}\nreadyz check failed\n"),
        ),
    }
}

/// `/livez`: the process serves HTTP (etcd's liveness only checks that it is not stuck).
pub async fn livez() -> impl IntoResponse {
    (StatusCode::OK, "ok\n")
}
