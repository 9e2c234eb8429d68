//! Sends finished spans to an OpenTelemetry collector over OTLP/gRPC, in batches, from a
//! task of its own: whoever ends a span only queues it, and a full queue drops spans
//! (counted in `ostrakon_trace_spans_dropped_total`) rather than slow a request.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ostrakon_proto::otlp::{
    self, any_value, span, status, trace_service_client::TraceServiceClient, AnyValue,
    ExportTraceServiceRequest, InstrumentationScope, KeyValue, Resource, ResourceSpans, ScopeSpans,
};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Endpoint};

use super::{AttributeValue, FinishedSpan, SpanKind, SAMPLING_PER_MILLION};
use crate::metrics::metrics;

/// Spans waiting for export; beyond this they are dropped.
const QUEUE_SPANS_MAX: usize = 8192;
/// Spans per export request.
const BATCH_SPANS_MAX: usize = 512;
/// How long a span waits, at most, before its batch is sent.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// A collector that does not answer within this loses the batch.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom spans are exported (etcd's `--experimental-distributed-tracing-*`).
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The collector's OTLP/gRPC address: `host:port`, or a URL.
    pub address: String,
    /// `service.name`: the same for every member.
    pub service_name: String,
    /// `service.instance.id`: one per member (empty: not set).
    pub instance_id: String,
    /// Traces started here that are sampled, per million (a client's sampled trace is
    /// always followed).
    pub sampling_per_million: u32,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid distributed tracing address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error("tracing sampling rate must be between 0 and 1000000, got {0}")]
    SamplingRate(u32),
    #[error("distributed tracing is already installed in this process")]
    AlreadyInstalled,
}

enum Command {
    Span(FinishedSpan),
    /// Export everything queued before this, then answer.
    Flush(oneshot::Sender<()>),
}

static QUEUE: OnceLock<mpsc::Sender<Command>> = OnceLock::new();

/// Queues a finished span (from any thread, never blocking).
pub(super) fn submit(span: FinishedSpan) {
    let Some(queue) = QUEUE.get() else {
        return;
    };
    if queue.try_send(Command::Span(span)).is_err() {
        metrics().trace_spans_dropped.inc();
    }
}

/// Turns tracing on for the process and starts the exporting task (on the calling
/// tokio runtime). The collector is connected lazily: one that is down loses spans,
/// never requests.
pub fn install(config: ExportConfig) -> Result<Exporter, ExportError> {
    if config.sampling_per_million > 1_000_000 {
        return Err(ExportError::SamplingRate(config.sampling_per_million));
    }
    let url = if config.address.contains("://") {
        config.address.clone()
    } else {
        format!("http://{}", config.address)
    };
    let endpoint = Endpoint::from_shared(url).map_err(|error| ExportError::Address {
        address: config.address.clone(),
        reason: error.to_string(),
    })?;
    let channel = endpoint
        .connect_timeout(EXPORT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_lazy();
    let (sender, receiver) = mpsc::channel(QUEUE_SPANS_MAX);
    QUEUE
        .set(sender.clone())
        .map_err(|_| ExportError::AlreadyInstalled)?;
    SAMPLING_PER_MILLION
        .set(config.sampling_per_million)
        .map_err(|_| ExportError::AlreadyInstalled)?;
    tokio::spawn(run(
        receiver,
        TraceServiceClient::new(channel),
        resource(&config),
    ));
    tracing::info!(
        address = %config.address,
        service_name = %config.service_name,
        sampling_per_million = config.sampling_per_million,
        "distributed tracing enabled"
    );
    Ok(Exporter { queue: sender })
}

/// The running exporter, to flush on shutdown.
pub struct Exporter {
    queue: mpsc::Sender<Command>,
}

impl Exporter {
    /// Sends every span ended so far (on shutdown), waiting at most `limit`.
    pub async fn flush(&self, limit: Duration) {
        let (done, flushed) = oneshot::channel();
        let flush = async {
            if self.queue.send(Command::Flush(done)).await.is_ok() {
                let _ = flushed.await;
            }
        };
        let _ = tokio::time::timeout(limit, flush).await;
    }
}

fn resource(config: &ExportConfig) -> Resource {
    let mut attributes = vec![key_value(
        "service.name",
        config.service_name.clone().into(),
    )];
    if !config.instance_id.is_empty() {
        attributes.push(key_value(
            "service.instance.id",
            config.instance_id.clone().into(),
        ));
    }
    Resource { attributes }
}

async fn run(
    mut queue: mpsc::Receiver<Command>,
    mut client: TraceServiceClient<Channel>,
    resource: Resource,
) {
    let mut batch: Vec<FinishedSpan> = Vec::new();
    let mut failing = false;
    let mut ticker = tokio::time::interval(EXPORT_INTERVAL);
    loop {
        tokio::select! {
            command = queue.recv() => match command {
                Some(Command::Span(span)) => {
                    batch.push(span);
                    if batch.len() >= BATCH_SPANS_MAX {
                        export(&mut client, &resource, &mut batch, &mut failing).await;
                    }
                }
                Some(Command::Flush(done)) => {
                    export(&mut client, &resource, &mut batch, &mut failing).await;
                    let _ = done.send(());
                }
                None => {
                    export(&mut client, &resource, &mut batch, &mut failing).await;
                    return;
                }
            },
            _ = ticker.tick() => {
                export(&mut client, &resource, &mut batch, &mut failing).await;
            }
        }
    }
}

/// Sends the batch (emptying it). A failure is logged once until exports work again:
/// a collector that is down must not flood the log.
async fn export(
    client: &mut TraceServiceClient<Channel>,
    resource: &Resource,
    batch: &mut Vec<FinishedSpan>,
    failing: &mut bool,
) {
    if batch.is_empty() {
        return;
    }
    let count = batch.len() as u64;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "ostrakon".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                }),
                spans: batch.drain(..).map(encode).collect(),
            }],
        }],
    };
    match client.export(request).await {
        Ok(response) => {
            let rejected = response
                .into_inner()
                .partial_success
                .map_or(0, |partial| partial.rejected_spans.max(0) as u64);
            metrics()
                .trace_spans_exported
                .add(count - rejected.min(count));
            metrics().trace_spans_dropped.add(rejected.min(count));
            if *failing {
                tracing::info!("span export to the collector works again");
                *failing = false;
            }
        }
        Err(status) => {
            metrics().trace_spans_dropped.add(count);
            if !*failing {
                tracing::warn!(code = ?status.code(), message = status.message(), "span export to the collector failed; spans are dropped until it works");
                *failing = true;
            }
        }
    }
}

fn encode(span: FinishedSpan) -> otlp::Span {
    let kind = match span.kind {
        SpanKind::Internal => span::SpanKind::Internal,
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
    };
    let status = match &span.error {
        Some(message) => otlp::Status {
            message: message.clone(),
            code: status::StatusCode::Error as i32,
        },
        None => otlp::Status {
            message: String::new(),
            code: status::StatusCode::Unset as i32,
        },
    };
    otlp::Span {
        trace_id: span.context.trace_id.0.to_vec().into(),
        span_id: span.context.span_id.0.to_vec().into(),
        parent_span_id: span
            .parent
            .map(|parent| parent.0.to_vec().into())
            .unwrap_or_default(),
        name: span.name.into_owned(),
        kind: kind as i32,
        start_time_unix_nano: unix_nanos(span.start),
        end_time_unix_nano: unix_nanos(span.end.max(span.start)),
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| key_value(key, value))
            .collect(),
        status: Some(status),
    }
}

fn key_value(key: &str, value: AttributeValue) -> KeyValue {
    let value = match value {
        AttributeValue::Str(text) => any_value::Value::StringValue(text),
        AttributeValue::Int(number) => any_value::Value::IntValue(number),
        AttributeValue::Bool(flag) => any_value::Value::BoolValue(flag),
    };
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}
