//! The layer around every gRPC service on the client port. It counts and times every
//! call as go-grpc-prometheus does: started when it arrives, handled when its response
//! ends (a stream's at its end, so started minus handled is the number of open streams,
//! as etcd's dashboards chart it), with the status code its trailers carry; and it
//! starts the call's trace span, which ends then too. A request on a service's path that
//! is not gRPC (no `application/grpc` content type) goes to the HTTP routes instead, as
//! etcd's port hands whatever is not gRPC to its HTTP handlers (a 404, with the CORS
//! headers).
//!
//! A plain service around each tonic service rather than axum middleware around a router
//! of routers: a call passes one router (tonic's, by service name) and no boxed
//! middleware (the two routers and two middlewares it passed were about 5 % of the
//! members' CPU under 64 clients' puts, docs/PERFORMANCE.md).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{HeaderMap, Request, Response};
use bytes::Bytes;
use http_body::Frame;
use ostrakon_node::metrics::{metrics, Counter, Histogram};
use ostrakon_node::spans::{self, Span, SpanKind};
use ostrakon_proto::GRPC_METHODS;
use tonic::body::BoxBody;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::Status;

/// A tonic service, observed; requests that are not gRPC go to `http`.
#[derive(Clone)]
pub struct GrpcCalls<S> {
    inner: S,
    http: axum::Router,
}

impl<S> GrpcCalls<S> {
    /// Observes `inner`'s calls; what is not gRPC goes to `http`.
    pub fn new(inner: S, http: axum::Router) -> GrpcCalls<S> {
        GrpcCalls { inner, http }
    }
}

impl<S: NamedService> NamedService for GrpcCalls<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<BoxBody>> for GrpcCalls<S>
where
    S: Service<Request<BoxBody>, Response = Response<BoxBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = CallFuture<S::Future>;

    // Only the gRPC service is readied: the HTTP router is always ready (axum's), and a
    // request goes to one or the other only once `call` sees its headers.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<BoxBody>) -> Self::Future {
        if !crate::etcd_http::is_grpc_content(request.headers()) {
            let request = request.map(axum::body::Body::new);
            return CallFuture::Http {
                inner: self.http.call(request),
            };
        }
        // A method nobody declared is answered Unimplemented and counted nowhere, as
        // grpc-go's server does: counted under its name, each new name a client made up
        // would add label sets to `/metrics` for good.
        let Some(call_metrics) = method_metrics(request.uri().path()) else {
            return CallFuture::Call {
                inner: self.inner.call(request),
                call: None,
            };
        };
        call_metrics.started().inc();
        let started = Instant::now();
        let span = server_span(request.headers(), call_metrics.service, call_metrics.method);
        let context = span.as_ref().map(Span::context);
        let call = Some(CallEnd {
            metrics: call_metrics,
            started,
            code: None,
            span,
        });
        match context {
            // Tracing on and the call sampled: the span is the current one while the
            // handler runs, so the spans it starts are its children.
            Some(context) => CallFuture::Traced {
                inner: Box::pin(spans::within(Some(context), self.inner.call(request))),
                call,
            },
            None => CallFuture::Call {
                inner: self.inner.call(request),
                call,
            },
        }
    }
}

type TracedCall = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// A call in progress: the service's own future, or the HTTP routes'.
    #[project = CallFutureProjection]
    pub enum CallFuture<F> {
        Call { #[pin] inner: F, call: Option<CallEnd> },
        Traced { inner: TracedCall, call: Option<CallEnd> },
        Http { #[pin] inner: axum::routing::future::RouteFuture<Infallible> },
    }
}

impl<F> Future for CallFuture<F>
where
    F: Future<Output = Result<Response<BoxBody>, Infallible>>,
{
    type Output = Result<Response<BoxBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (response, call) = match self.project() {
            CallFutureProjection::Call { inner, call } => {
                let Ok(response) = std::task::ready!(inner.poll(cx));
                (response, call.take())
            }
            CallFutureProjection::Traced { inner, call } => {
                let Ok(response) = std::task::ready!(inner.as_mut().poll(cx));
                (response, call.take())
            }
            CallFutureProjection::Http { inner } => {
                let Ok(response) = std::task::ready!(inner.poll(cx));
                return Poll::Ready(Ok(response.map(tonic::body::boxed)));
            }
        };
        let Some(mut call) = call else {
            return Poll::Ready(Ok(response));
        };
        // Errors go out trailers-only, their status in the headers.
        call.code = grpc_status(response.headers());
        Poll::Ready(Ok(response.map(|body| {
            tonic::body::boxed(ObservedBody {
                inner: body,
                call: Some(call),
            })
        })))
    }
}

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
    inner: BoxBody,
    call: Option<CallEnd>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
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
fn server_span(headers: &HeaderMap, service: &str, method: &str) -> Option<Span> {
    if !spans::enabled() {
        return None;
    }
    let parent = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(spans::parse_parent);
    let mut span = spans::start(parent, format!("{service}/{method}"), SpanKind::Server)?;
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.service", service);
    span.set_attribute("rpc.method", method);
    Some(span)
}
