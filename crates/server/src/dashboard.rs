//! `/dashboard`: a live page on every member. It shows the members with their role, term,
//! commit and applied index, each follower's replication progress as the leader sees it,
//! leader changes over time, request rate and latency, and WAL fsync latency.
//!
//! The page is static (dashboard.html). It opens a server-sent event stream
//! (`/dashboard/events`) on every member it learns of, each sending that member's
//! `/dashboard/status` twice a second; the members allow it cross-origin so one page can
//! watch them all. Under `ostrakon playground` the page also shows buttons that ask the
//! playground (which owns the processes) to stop, restart, pause, resume, isolate or heal
//! a member.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use ostrakon_node::metrics::metrics;
use ostrakon_node::{NodeHandle, DEFAULT_GROUP, META_GROUP};
use ostrakon_raft::Role;
use serde_json::{json, Value};

/// How often the event stream sends the member's status.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// What the dashboard routes need.
#[derive(Clone)]
pub struct Dashboard {
    node: NodeHandle,
    /// The playground's control URL, when the member runs under one.
    control_url: Option<String>,
}

/// The dashboard's routes.
pub fn routes(node: NodeHandle, control_url: Option<String>) -> Router {
    Router::new()
        .route("/dashboard", get(page))
        .route("/dashboard/status", get(status_json))
        .route("/dashboard/events", get(events))
        .with_state(Dashboard { node, control_url })
}

async fn page() -> impl IntoResponse {
    Html(include_str!("dashboard.html"))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Follower => "follower",
    }
}

/// This member's state, as the page draws it.
async fn status(dashboard: &Dashboard) -> Value {
    let node = &dashboard.node;
    let registry = metrics();
    // Unary calls only: a stream's latency says nothing about requests.
    let (mut requests, mut request_seconds) = (0, 0.0);
    registry.grpc_handling.each_metric(|labels, histogram| {
        if labels.first().is_some_and(|kind| kind == "unary") {
            requests += histogram.count();
            request_seconds += histogram.sum_seconds();
        }
    });
    let members: Vec<Value> = node
        .store(DEFAULT_GROUP)
        .map(|store| store.members())
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            json!({
                "id": format!("{:x}", m.id),
                "name": m.name,
                "client_urls": m.client_urls,
                "peer_urls": m.peer_urls,
            })
        })
        .collect();
    let raft = match node.raft_status(DEFAULT_GROUP).await {
        Ok(status) => json!({
            "role": role_name(status.role),
            "term": status.term.0,
            "leader": format!("{:x}", status.leader.0),
            "commit": status.commit.0,
            "applied": status.applied.0,
            "last_index": status.last_index.0,
            "progress": status.progress.iter().map(|(id, matched, next, state)| json!({
                "id": format!("{:x}", id.0),
                "match": matched.0,
                "next": next.0,
                "state": format!("{state:?}"),
            })).collect::<Vec<_>>(),
        }),
        Err(error) => json!({ "error": error.to_string() }),
    };
    // The range map: who leads which range, as this member knows it (splits and
    // leadership moves show as they happen). The page needs no login, so with auth on
    // the spans (user keys) are left out, as `ostrakon ranges` requires a login.
    let auth_enabled = node
        .store(DEFAULT_GROUP)
        .is_ok_and(|store| store.auth().enabled());
    let ranges: Vec<Value> = crate::ranges::describe_ranges(node)
        .into_iter()
        .map(|range| {
            let (start, end) = if auth_enabled {
                (Value::Null, Value::Null)
            } else {
                (
                    json!(String::from_utf8_lossy(&range.start)),
                    json!((!range.unbounded_end)
                        .then(|| String::from_utf8_lossy(&range.end).into_owned())),
                )
            };
            json!({
                "id": range.range_id,
                "start": start,
                "end": end,
                "leader": format!("{:x}", range.leader),
                "replicas": range.replicas.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
                "keys": range.keys,
                "live_bytes": range.live_bytes,
                "requests_per_second": range.requests_per_second,
                "revision": range.revision,
            })
        })
        .collect();
    let meta_leader = node
        .status(META_GROUP)
        .map(|status| format!("{:x}", status.leader.0))
        .ok();
    json!({
        "id": format!("{:x}", node.id().0),
        "raft": raft,
        "members": members,
        "ranges": ranges,
        "range_spans_hidden": auth_enabled,
        "meta_leader": meta_leader,
        "control_url": dashboard.control_url,
        "metrics": {
            "leader_changes_seen": registry.leader_changes_seen.get(),
            "proposals_pending": registry.proposals_pending.get(),
            "proposals_failed": registry.proposals_failed.get(),
            "requests": requests,
            "request_seconds": request_seconds,
            "wal_fsyncs": registry.wal_fsync.count(),
            "wal_fsync_seconds": registry.wal_fsync.sum_seconds(),
            "db_size_bytes": registry.db_total_size_bytes.get(),
        },
    })
}

fn cross_origin<T: IntoResponse>(body: T) -> impl IntoResponse {
    ([("access-control-allow-origin", "*")], body)
}

async fn status_json(State(dashboard): State<Dashboard>) -> impl IntoResponse {
    cross_origin(Json(status(&dashboard).await))
}

async fn events(State(dashboard): State<Dashboard>) -> impl IntoResponse {
    let stream = async_stream_of_status(dashboard);
    cross_origin(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn async_stream_of_status(
    dashboard: Dashboard,
) -> impl tokio_stream::Stream<Item = Result<Event, Infallible>> {
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(STATUS_INTERVAL));
    tokio_stream::StreamExt::then(ticks, move |_| {
        let dashboard = dashboard.clone();
        async move { Ok(Event::default().data(status(&dashboard).await.to_string())) }
    })
}
