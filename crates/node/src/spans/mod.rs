//! Distributed tracing: spans that follow a request along its path (the gRPC call, the
//! forward to the leader, the raft proposal, the WAL fsync that made it durable, its
//! commit, and its apply on every member), exported to an OpenTelemetry collector over
//! OTLP/gRPC ([`export`]).
//!
//! Off unless [`export::install`] ran (etcd's `--experimental-enable-distributed-tracing`);
//! then every span function is a check of one `OnceLock`. Only sampled spans exist: a span
//! whose trace is not sampled is `None`, so the hot paths carry nothing. Sampling is
//! etcd's: a trace a client started and sampled is always followed; a trace started here
//! is sampled at the configured rate per million.
//!
//! The current span travels with a request's task (a task-local set by the gRPC layer);
//! across members and through the raft log it travels as a W3C `traceparent` string.
//! Spans from the event loop thread (fsync, commit, apply) are built after the fact with
//! the times they began and ended.

pub mod export;
mod traceparent;

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;
use std::time::SystemTime;

pub use traceparent::{SpanContext, SpanId, TraceId};

/// What a span stands for, as OTLP classifies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Work inside the member.
    Internal,
    /// A request this member served.
    Server,
    /// A request this member made of another.
    Client,
}

/// A span attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttributeValue {
    fn from(value: &str) -> Self {
        AttributeValue::Str(value.to_string())
    }
}

impl From<String> for AttributeValue {
    fn from(value: String) -> Self {
        AttributeValue::Str(value)
    }
}

impl From<i64> for AttributeValue {
    fn from(value: i64) -> Self {
        AttributeValue::Int(value)
    }
}

impl From<u64> for AttributeValue {
    fn from(value: u64) -> Self {
        AttributeValue::Int(i64::try_from(value).unwrap_or(i64::MAX))
    }
}

impl From<bool> for AttributeValue {
    fn from(value: bool) -> Self {
        AttributeValue::Bool(value)
    }
}

/// A span that has ended, as queued for export.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    pub context: SpanContext,
    pub parent: Option<SpanId>,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, AttributeValue)>,
    /// The error the work ended with, if it failed.
    pub error: Option<String>,
}

/// A span being recorded. It ends, and is queued for export, when dropped (or at a
/// given time with [`Span::end_at`]).
#[derive(Debug)]
pub struct Span {
    recording: Option<FinishedSpan>,
}

impl Span {
    pub fn context(&self) -> SpanContext {
        self.recording
            .as_ref()
            .expect("recording until dropped")
            .context
    }

    pub fn set_attribute(&mut self, key: &'static str, value: impl Into<AttributeValue>) {
        if let Some(span) = &mut self.recording {
            span.attributes.push((key, value.into()));
        }
    }

    /// Marks the span failed, with the error's message.
    pub fn set_error(&mut self, error: impl std::fmt::Display) {
        if let Some(span) = &mut self.recording {
            span.error = Some(error.to_string());
        }
    }

    /// Drops the span unrecorded (the work it stood for turned out not to happen here).
    pub fn discard(mut self) {
        self.recording = None;
    }

    /// Ends the span at `end` (work measured by someone else, such as a group commit).
    pub fn end_at(mut self, end: SystemTime) {
        if let Some(mut span) = self.recording.take() {
            span.end = end;
            export::submit(span);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut span) = self.recording.take() {
            span.end = SystemTime::now();
            export::submit(span);
        }
    }
}

/// The sampling rate, set once by [`export::install`]; unset means tracing is off.
static SAMPLING_PER_MILLION: OnceLock<u32> = OnceLock::new();

/// Whether spans are recorded at all.
pub fn enabled() -> bool {
    SAMPLING_PER_MILLION.get().is_some()
}

/// Starts a span under `parent`, or without one the root of a new trace. `None` when
/// tracing is off or the trace is not sampled: a parent's decision is followed (it is
/// the client's), and a new trace is sampled at the configured rate.
pub fn start(
    parent: Option<SpanContext>,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
) -> Option<Span> {
    start_at(parent, name, kind, SystemTime::now())
}

/// [`start`], for work that began at `start`.
pub fn start_at(
    parent: Option<SpanContext>,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
    start: SystemTime,
) -> Option<Span> {
    let per_million = *SAMPLING_PER_MILLION.get()?;
    let (trace_id, parent_span) = match parent {
        Some(parent) if parent.sampled => (parent.trace_id, Some(parent.span_id)),
        Some(_) => return None,
        None => {
            let trace_id = TraceId::random();
            if !ratio_samples(trace_id, per_million) {
                return None;
            }
            (trace_id, None)
        }
    };
    Some(Span {
        recording: Some(FinishedSpan {
            context: SpanContext {
                trace_id,
                span_id: SpanId::random(),
                sampled: true,
            },
            parent: parent_span,
            name: name.into(),
            kind,
            start,
            end: start,
            attributes: Vec::new(),
            error: None,
        }),
    })
}

/// A child of `parent` (which is sampled, or this is `None`).
pub fn child(
    parent: Option<SpanContext>,
    name: impl Into<Cow<'static, str>>,
    kind: SpanKind,
) -> Option<Span> {
    parent.and_then(|parent| start(Some(parent), name, kind))
}

/// OpenTelemetry's TraceIdRatioBased: sampled when the id's random low half falls under
/// the rate's share of its range, so every member decides a trace alike.
fn ratio_samples(trace_id: TraceId, per_million: u32) -> bool {
    if per_million >= 1_000_000 {
        return true;
    }
    let bound = (u128::from(per_million) << 64) / 1_000_000;
    u128::from(trace_id.low_u64()) < bound
}

tokio::task_local! {
    static CURRENT: SpanContext;
}

/// The span the calling task works under, if it is traced.
pub fn current() -> Option<SpanContext> {
    CURRENT.try_with(|context| *context).ok()
}

/// Runs `future` with `context` as its current span (nothing changes for `None`).
pub async fn within<F: Future>(context: Option<SpanContext>, future: F) -> F::Output {
    match context {
        Some(context) => CURRENT.scope(context, future).await,
        None => future.await,
    }
}

/// Parses a `traceparent` carried in a write or a request; empty or malformed: none.
pub fn parse_parent(traceparent: &str) -> Option<SpanContext> {
    if traceparent.is_empty() {
        return None;
    }
    SpanContext::from_traceparent(traceparent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_sampling_follows_the_rate() {
        let sampled = |per_million| {
            (0..20_000)
                .filter(|_| ratio_samples(TraceId::random(), per_million))
                .count()
        };
        assert_eq!(sampled(0), 0);
        assert_eq!(sampled(1_000_000), 20_000);
        let half = sampled(500_000);
        assert!((9_000..11_000).contains(&half), "{half} of 20000 at 50%");
    }
}
