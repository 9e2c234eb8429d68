//! What operators scrape and probe on the client port: `/metrics` (Prometheus text, etcd's
//! names), `/readyz` and `/livez` (as etcd 3.5's), and the gRPC request metrics recorded
//! by a layer around every gRPC service, which also starts each call's trace span.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use ostrakon_node::metrics::{metrics, Counter, Histogram};
use ostrakon_node::spans::{self, Span, SpanKind};
use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::GRPC_METHODS;

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

/// One declared method's metrics, looked up in their families on first use and kept:
/// a call then makes no label strings and takes no family's lock.
struct MethodMetrics {
    kind: &'static str,
    service: &'static str,
    method: &'static str,
    started: OnceLock<Arc<Counter>>,
    handling: OnceLock<Arc<Histogram>>,
    /// By status code (a code never answered adds no label set to `/metrics`).
    handled: [OnceLock<Arc<Counter>>; GRPC_CODES.len()],
}

impl MethodMetrics {
    fn new(path: &'static str) -> MethodMetrics {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .expect("a declared method's path is /package.Service/Method");
        MethodMetrics {
            kind: grpc_type(service, method),
            service,
            method,
            started: OnceLock::new(),
            handling: OnceLock::new(),
            handled: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn started(&self) -> &Counter {
        let labels = [self.kind, self.service, self.method];
        self.started
            .get_or_init(|| metrics().grpc_started.with(&labels))
    }

    fn handling(&self) -> &Histogram {
        let labels = [self.kind, self.service, self.method];
        self.handling
            .get_or_init(|| metrics().grpc_handling.with(&labels))
    }

    /// The handled counter of the code numbered `code` (one out of range is Unknown's).
    fn handled(&self, code: usize) -> &Counter {
        let code = if code < GRPC_CODES.len() { code } else { 2 };
        let labels = [self.kind, self.service, self.method, GRPC_CODES[code]];
        self.handled[code].get_or_init(|| metrics().grpc_handled.with(&labels))
    }
}

/// Every declared method's metrics, in the order of `GRPC_METHODS` (sorted by path).
fn method_metrics(path: &str) -> Option<&'static MethodMetrics> {
    static TABLE: OnceLock<Vec<MethodMetrics>> = OnceLock::new();
    let index = GRPC_METHODS.binary_search(&path).ok()?;
    let table = TABLE.get_or_init(|| {
        GRPC_METHODS
            .iter()
            .map(|path| MethodMetrics::new(path))
            .collect()
    });
    Some(&table[index])
}

/// Counts and times every gRPC call, as go-grpc-prometheus does: started when it
/// arrives, handled when its response ends (a stream's at its end, so started minus
/// handled is the number of open streams, as etcd's dashboards chart it), with the status
/// code its trailers carry. The call's trace span ends then too.
pub async fn grpc_metrics(request: Request, next: Next) -> Response {
    // A method nobody declared is answered Unimplemented and counted nowhere, as
    // grpc-go's server does: counted under its name, each new name a client made up
    // would add label sets to `/metrics` for good.
    let Some(call_metrics) = method_metrics(request.uri().path()) else {
        return next.run(request).await;
    };
    call_metrics.started().inc();
    let started = Instant::now();
    let span = server_span(&request, call_metrics.service, call_metrics.method);
    let response = spans::within(span.as_ref().map(Span::context), next.run(request)).await;
    // Errors go out trailers-only, their status in the headers.
    let code = grpc_status(response.headers());
    let call = CallEnd {
        metrics: call_metrics,
        started,
        code,
        span,
    };
    response.map(|body| {
        Body::new(ObservedBody {
            inner: body,
            call: Some(call),
        })
    })
}

fn grpc_status(headers: &HeaderMap) -> Option<usize> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// What is recorded when a call's response ends (or is dropped: a client that went away).
struct CallEnd {
    metrics: &'static MethodMetrics,
    started: Instant,
    /// The status, once headers or trailers gave it.
    code: Option<usize>,
    span: Option<Span>,
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        // No status: the response never finished, the client cancelled (grpc-go's
        // server reports Canceled then too).
        let code_number = self.code.unwrap_or(1);
        self.metrics.handled(code_number).inc();
        self.metrics.handling().observe(self.started.elapsed());
        if let Some(span) = &mut self.span {
            span.set_attribute("rpc.grpc.status_code", code_number as u64);
            if code_number != 0 {
                let code = GRPC_CODES.get(code_number).copied().unwrap_or("Unknown");
                span.set_error(code);
            }
        }
    }
}

/// A response body that notes the gRPC status in its trailers and records the call when
/// it is done.
struct ObservedBody {
    inner: Body,
    call: Option<CallEnd>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), &mut self.call) {
                    call.code = grpc_status(trailers).or(call.code);
                }
            }
            Poll::Ready(None) => {
                if let Some(mut call) = self.call.take() {
                    call.code = call.code.or(Some(0));
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
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
