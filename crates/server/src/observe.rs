//! What operators scrape and probe on the client port: `/metrics` (Prometheus text, etcd's
//! names), `/readyz` and `/livez` (as etcd 3.5's), and the gRPC request metrics recorded
//! by a layer around every gRPC service, which also starts each call's trace span.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ostrakon_node::metrics::metrics;
use ostrakon_node::spans::{self, Span, SpanKind};
use ostrakon_node::{NodeHandle, DEFAULT_GROUP};

/// gRPC's status codes by number, named as go-grpc-prometheus names them.
const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The call's type, as go-grpc-prometheus labels it.
fn grpc_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => {
            "server_stream"
        }
        _ => "unary",
    }
}

/// Counts and times every gRPC call. A stream is counted as handled when its response
/// starts, so its latency is the time to the first response, not the stream's life.
pub async fn grpc_metrics(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return next.run(request).await;
    };
    let kind = grpc_type(service, method);
    let labels = [kind, service, method];
    let registry = metrics();
    registry.grpc_started.with(&labels).inc();
    let started = Instant::now();
    let mut span = server_span(&request, service, method);
    let response = spans::within(span.as_ref().map(Span::context), next.run(request)).await;
    // Errors go out trailers-only, their status in the headers; no status there is OK.
    let code_number = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let code = GRPC_CODES.get(code_number).copied().unwrap_or("Unknown");
    if let Some(span) = &mut span {
        span.set_attribute("rpc.grpc.status_code", code_number as u64);
        if code_number != 0 {
            span.set_error(code);
        }
    }
    registry
        .grpc_handled
        .with(&[kind, service, method, code])
        .inc();
    registry
        .grpc_handling
        .with(&labels)
        .observe(started.elapsed());
    response
}

/// The call's server span (OpenTelemetry's gRPC conventions), continuing the trace of a
/// client that sent a `traceparent`; none when tracing is off or the trace not sampled.
fn server_span(request: &Request, service: &str, method: &str) -> Option<Span> {
    if !spans::enabled() {
        return None;
    }
    let parent = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(spans::parse_parent);
    let mut span = spans::start(parent, format!("{service}/{method}"), SpanKind::Server)?;
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service);
    span.set_attribute("rpc.method", method);
    Some(span)
}

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
