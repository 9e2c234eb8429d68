//! What etcd 3.5 serves over plain HTTP on its client port besides the JSON gateway, as
//! it serves it (checked response by response against a real etcd 3.5 in
//! `crates/cli/tests/against_etcd.rs`): `/version`, `/health`, `/debug/vars`, the CORS
//! headers of etcd's default `--cors=*` on every HTTP response (and any `OPTIONS` answered
//! as a preflight), Go's "404 page not found" for an unknown path and "Method Not
//! Allowed" for a wrong method. gRPC requests pass through untouched.

use std::collections::BTreeMap;

use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ostrakon_node::{NodeError, NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::AlarmType;
use ostrakon_raft::{NodeId, ProgressState, Role};

/// The etcd server version ostrakon reports (`/version`, `Maintenance.Status`). Clients
/// turn features on by it: kube-apiserver sends watch progress requests only to etcd
/// 3.4.31+ or 3.5.13+, and ostrakon serves them. 3.5.13 is the oldest 3.5 release whose
/// every client-visible gate ostrakon meets (docs/COMPATIBILITY.md).
pub const ETCD_SERVER_VERSION: &str = "3.5.13";
/// The cluster version etcd 3.5 reports: major.minor.0.
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Whether a request is gRPC (its content type says so), which etcd's HTTP handlers
/// never see.
fn is_grpc(request: &Request) -> bool {
    is_grpc_content(request.headers())
}

/// Whether headers say gRPC (`application/grpc`, with or without `+proto`).
pub fn is_grpc_content(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn add_cors(response: &mut Response) {
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// etcd's CORS handler with its default `--cors=*`: every HTTP response carries the
/// headers, and `OPTIONS` (a browser's preflight) is answered at once, whatever the path.
pub async fn cors(request: Request, next: Next) -> Response {
    if is_grpc(&request) {
        return next.run(request).await;
    }
    if request.method() == Method::OPTIONS {
        let mut response = StatusCode::OK.into_response();
        add_cors(&mut response);
        return response;
    }
    let mut response = next.run(request).await;
    add_cors(&mut response);
    response
}

/// A plain-text error as Go's `http.Error` writes it.
fn go_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, TEXT_PLAIN),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

/// What no route matches: gRPC's "unimplemented" for a gRPC call, Go's 404 otherwise.
pub async fn not_found(request: Request) -> Response {
    if is_grpc(&request) {
        return (
            StatusCode::OK,
            [
                ("grpc-status", "12"),
                (header::CONTENT_TYPE.as_str(), "application/grpc"),
            ],
        )
            .into_response();
    }
    go_error(StatusCode::NOT_FOUND, "404 page not found")
}

/// etcd's handlers that take only GET (HEAD included) answer anything else so.
pub async fn get_only(request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        let mut response = go_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    next.run(request).await
}

/// `/version`.
pub async fn version() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"etcdserver\":\"{ETCD_SERVER_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}"
        ),
    )
        .into_response()
}

/// `/health`, as etcd 3.5's: unhealthy while an alarm is raised (unless excluded with
/// `?exclude=NOSPACE`), without a leader, or when a read fails (a linearizable one,
/// unless `?serializable=true`).
pub async fn health(
    State(node): State<NodeHandle>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let excluded: Vec<&str> = query
        .iter()
        .filter(|(name, _)| name == "exclude")
        .map(|(_, value)| value.as_str())
        .collect();
    let serializable = query
        .iter()
        .any(|(name, value)| name == "serializable" && value == "true");
    let reason = unhealthy_reason(&node, &excluded, serializable).await;
    let (status, healthy, reason) = match reason {
        None => (StatusCode::OK, true, String::new()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, false, reason),
    };
    (
        status,
        [(header::CONTENT_TYPE, TEXT_PLAIN)],
        format!("{{\"health\":\"{healthy}\",\"reason\":\"{reason}\"}}"),
    )
        .into_response()
}

async fn unhealthy_reason(
    node: &NodeHandle,
    excluded: &[&str],
    serializable: bool,
) -> Option<String> {
    let store = match node.store(DEFAULT_GROUP) {
        Ok(store) => store,
        Err(_) => return Some("QGET ERROR".into()),
    };
    for alarm in store.alarms() {
        let name = AlarmType::try_from(alarm.alarm)
            .map(|a| a.as_str_name())
            .unwrap_or("UNKNOWN");
        if !excluded.contains(&name) {
            return Some(format!("ALARM {name}"));
        }
    }
    let leader_known = node
        .status(DEFAULT_GROUP)
        .is_ok_and(|status| status.leader != NodeId::NONE);
    if !leader_known {
        return Some("RAFT NO LEADER".into());
    }
    if serializable {
        // A serializable read of the local store cannot fail once the store is open.
        return None;
    }
    match node.linearizable_read_point(DEFAULT_GROUP).await {
        Ok(()) => None,
        Err(NodeError::NoLeader) | Err(NodeError::NotLeader(_)) => Some("RAFT NO LEADER".into()),
        Err(_) => Some("QGET ERROR".into()),
    }
}

/// `/debug/vars`, Go's expvar page as etcd fills it, without Go's memory statistics
/// (ostrakon has no garbage collector to report on): the command line, the open-files
/// limit and the raft status.
pub async fn debug_vars(State(node): State<NodeHandle>) -> Response {
    let cmdline: Vec<String> = std::env::args().collect();
    let raft = node
        .raft_status(DEFAULT_GROUP)
        .await
        .ok()
        .map(raft_status_json);
    let vars = serde_json::json!({
        "cmdline": cmdline,
        "file_descriptor_limit": open_files_limit(),
        "raft.status": raft,
    });
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        vars.to_string(),
    )
        .into_response()
}

/// etcd's `raft.status` expvar: ids in hex, states by etcd/raft's names.
fn raft_status_json(status: ostrakon_raft::Status) -> serde_json::Value {
    let role = match status.role {
        Role::Follower => "StateFollower",
        Role::PreCandidate => "StatePreCandidate",
        Role::Candidate => "StateCandidate",
        Role::Leader => "StateLeader",
    };
    let progress: BTreeMap<String, serde_json::Value> = status
        .progress
        .iter()
        .map(|(id, matched, next, state)| {
            let state = match state {
                ProgressState::Probe => "StateProbe",
                ProgressState::Replicate => "StateReplicate",
                ProgressState::Snapshot { .. } => "StateSnapshot",
            };
            (
                format!("{:x}", id.0),
                serde_json::json!({"match": matched.0, "next": next.0, "state": state}),
            )
        })
        .collect();
    serde_json::json!({
        "id": format!("{:x}", status.id.0),
        "term": status.term.0,
        "vote": format!("{:x}", status.vote.0),
        "commit": status.commit.0,
        "lead": format!("{:x}", status.leader.0),
        "raftState": role,
        "applied": status.applied.0,
        "progress": progress,
        "leadtransferee": "0",
    })
}

/// The soft limit on open files, from /proc (0 if it cannot be read).
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|line| line.starts_with("Max open files"))
                .and_then(|line| line.split_whitespace().nth(3))
                .and_then(|soft| soft.parse().ok())
        })
        .unwrap_or(0)
}
