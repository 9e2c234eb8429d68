//! etcd's JSON gateway on the client port: `POST /v3/...` with a JSON body, answered in
//! JSON as etcd 3.5's gateway (grpc-gateway v1) answers: proto field names, 64-bit
//! integers as strings, bytes in base64, enums by name, zero values left out. As in
//! etcd, the gateway is a client of the member's own gRPC port, so every request takes
//! exactly the path a gRPC request takes (validation, auth, forwarding).
//!
//! Streams (`/v3/watch`, `/v3/lease/keepalive`, `/v3/election/observe`,
//! `/v3/maintenance/snapshot`) answer one `{"result":...}` line per message; an error in
//! a stream is one `{"error":{...}}` line. The body of a watch or keep-alive may hold
//! several JSON requests in a row; a watch goes on until the client disconnects.

use std::future::Future;

use axum::body::{Body, Bytes};
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{any, MethodRouter};
use axum::Router;
use ostrakon_proto::etcdserverpb::auth_client::AuthClient;
use ostrakon_proto::etcdserverpb::cluster_client::ClusterClient;
use ostrakon_proto::etcdserverpb::kv_client::KvClient;
use ostrakon_proto::etcdserverpb::lease_client::LeaseClient;
use ostrakon_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ostrakon_proto::etcdserverpb::watch_client::WatchClient;
use ostrakon_proto::etcdserverpb::*;
use ostrakon_proto::v3electionpb::election_client::ElectionClient;
use ostrakon_proto::v3electionpb::*;
use ostrakon_proto::v3lockpb::lock_client::LockClient;
use ostrakon_proto::v3lockpb::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// HTTP headers passed to the gRPC call as metadata of the same name.
const PASSED_HEADERS: [&str; 3] = ["authorization", "traceparent", "tracestate"];

/// The largest message the gateway's own client accepts from the member.
const MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// grpc-gateway v1's HTTP status for each gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("a valid response")
}

/// etcd 3.5's error body: `{"error":msg,"code":n,"message":msg}`.
fn error_response(status: &Status) -> Response {
    // Written by hand: the keys stay in etcd's order.
    let message = serde_json::Value::from(status.message()).to_string();
    let body = format!(
        r#"{{"error":{message},"code":{},"message":{message}}}"#,
        status.code() as i32
    );
    json_response(http_status(status.code()), body)
}

/// An error inside a stream, as grpc-gateway v1 writes it.
fn stream_error_line(status: &Status) -> String {
    let http = http_status(status.code());
    let quoted = |text: &str| serde_json::Value::from(text).to_string();
    format!(
        r#"{{"error":{{"grpc_code":{},"http_code":{},"message":{},"http_status":{}}}}}"#,
        status.code() as i32,
        http.as_u16(),
        quoted(status.message()),
        quoted(http.canonical_reason().unwrap_or_default()),
    )
}

fn result_line<T: Serialize>(message: &T) -> String {
    let message = serde_json::to_string(message).expect("messages serialize");
    format!("{{\"result\":{message}}}\n")
}

/// Every JSON value in a body (an empty body is one default message).
fn parse_all<T: DeserializeOwned + Default>(body: &[u8]) -> Result<Vec<T>, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(vec![T::default()]);
    }
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .map(|value| value.map_err(|e| Status::invalid_argument(e.to_string())))
        .collect()
}

fn parse_one<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    Ok(parse_all(body)?.into_iter().next().unwrap_or_default())
}

/// A gRPC request carrying the HTTP caller's token, as grpc-gateway passes it on: the
/// `Authorization` header becomes the metadata `authorization`, `Grpc-Metadata-K` becomes
/// `k`. The W3C trace context headers pass as they are, so that the call's spans join
/// the HTTP caller's trace.
fn grpc_request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in headers {
        let key = if PASSED_HEADERS.contains(&name.as_str()) {
            name.as_str().to_string()
        } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            key.to_string()
        } else {
            continue;
        };
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
        let value = value.to_str().ok().and_then(|v| v.parse().ok());
        if let (Ok(key), Some(value)) = (key, value) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

async fn unary<Req, Resp, F, Fut>(headers: HeaderMap, body: Bytes, call: F) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let message = match parse_one::<Req>(&body) {
        Ok(message) => message,
        Err(status) => return error_response(&status),
    };
    match call(grpc_request(&headers, message)).await {
        Ok(response) => match serde_json::to_string(response.get_ref()) {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(error) => error_response(&Status::internal(error.to_string())),
        },
        Err(status) => error_response(&status),
    }
}

/// A streamed answer: one `{"result":...}` line per message, or one error line.
fn stream_response<T, M, S>(
    messages: S,
    keep_alive: Option<tokio::sync::mpsc::Sender<T>>,
) -> Response
where
    T: Send + 'static,
    M: Serialize,
    S: tokio_stream::Stream<Item = Result<M, Status>> + Send + 'static,
{
    let mut failed = false;
    let lines = messages.map_while(move |message| {
        // The request side stays open as long as the response is read (a watch's
        // client half-close would otherwise end nothing, as in etcd).
        let _keep = &keep_alive;
        if failed {
            return None;
        }
        Some(Ok::<_, std::convert::Infallible>(match message {
            Ok(message) => result_line(&message),
            Err(status) => {
                failed = true;
                stream_error_line(&status)
            }
        }))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(lines))
        .expect("a valid response")
}

/// A POST route that answers other methods as etcd's gateway does: 405 with Go's plain
/// "Method Not Allowed" and no `Allow` header (axum's own 405 adds one).
fn post_only<H, T>(handler: H) -> MethodRouter
where
    H: Handler<T, ()>,
    T: 'static,
{
    any(move |request: axum::extract::Request| {
        let handler = handler.clone();
        async move {
            if request.method() != axum::http::Method::POST {
                return (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [
                        ("content-type", "text/plain; charset=utf-8"),
                        ("x-content-type-options", "nosniff"),
                    ],
                    "Method Not Allowed\n",
                )
                    .into_response();
            }
            handler.call(request, ()).await
        }
    })
}

/// The routes, calling the member's gRPC services over `channel`.
pub fn routes(channel: Channel) -> Router {
    let mut router = Router::new();
    macro_rules! route {
        ($path:expr, $client:ident, $method:ident, $request:ty) => {{
            let channel = channel.clone();
            router = router.route(
                $path,
                post_only(move |headers: HeaderMap, body: Bytes| {
                    let channel = channel.clone();
                    async move {
                        unary::<$request, _, _, _>(headers, body, |request| async move {
                            $client::new(channel)
                                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                                .$method(request)
                                .await
                        })
                        .await
                    }
                }),
            );
        }};
    }
    route!("/v3/kv/range", KvClient, range, RangeRequest);
    route!("/v3/kv/put", KvClient, put, PutRequest);
    route!(
        "/v3/kv/deleterange",
        KvClient,
        delete_range,
        DeleteRangeRequest
    );
    route!("/v3/kv/txn", KvClient, txn, TxnRequest);
    route!("/v3/kv/compaction", KvClient, compact, CompactionRequest);
    route!(
        "/v3/lease/grant",
        LeaseClient,
        lease_grant,
        LeaseGrantRequest
    );
    route!(
        "/v3/lease/revoke",
        LeaseClient,
        lease_revoke,
        LeaseRevokeRequest
    );
    route!(
        "/v3/kv/lease/revoke",
        LeaseClient,
        lease_revoke,
        LeaseRevokeRequest
    );
    route!(
        "/v3/lease/timetolive",
        LeaseClient,
        lease_time_to_live,
        LeaseTimeToLiveRequest
    );
    route!(
        "/v3/kv/lease/timetolive",
        LeaseClient,
        lease_time_to_live,
        LeaseTimeToLiveRequest
    );
    route!(
        "/v3/lease/leases",
        LeaseClient,
        lease_leases,
        LeaseLeasesRequest
    );
    route!(
        "/v3/kv/lease/leases",
        LeaseClient,
        lease_leases,
        LeaseLeasesRequest
    );
    route!(
        "/v3/cluster/member/add",
        ClusterClient,
        member_add,
        MemberAddRequest
    );
    route!(
        "/v3/cluster/member/remove",
        ClusterClient,
        member_remove,
        MemberRemoveRequest
    );
    route!(
        "/v3/cluster/member/update",
        ClusterClient,
        member_update,
        MemberUpdateRequest
    );
    route!(
        "/v3/cluster/member/list",
        ClusterClient,
        member_list,
        MemberListRequest
    );
    route!(
        "/v3/cluster/member/promote",
        ClusterClient,
        member_promote,
        MemberPromoteRequest
    );
    route!(
        "/v3/maintenance/alarm",
        MaintenanceClient,
        alarm,
        AlarmRequest
    );
    route!(
        "/v3/maintenance/status",
        MaintenanceClient,
        status,
        StatusRequest
    );
    route!(
        "/v3/maintenance/defragment",
        MaintenanceClient,
        defragment,
        DefragmentRequest
    );
    route!("/v3/maintenance/hash", MaintenanceClient, hash, HashRequest);
    route!(
        "/v3/maintenance/hashkv",
        MaintenanceClient,
        hash_kv,
        HashKvRequest
    );
    route!(
        "/v3/maintenance/transfer-leadership",
        MaintenanceClient,
        move_leader,
        MoveLeaderRequest
    );
    route!(
        "/v3/auth/enable",
        AuthClient,
        auth_enable,
        AuthEnableRequest
    );
    route!(
        "/v3/auth/disable",
        AuthClient,
        auth_disable,
        AuthDisableRequest
    );
    route!(
        "/v3/auth/status",
        AuthClient,
        auth_status,
        AuthStatusRequest
    );
    route!(
        "/v3/auth/authenticate",
        AuthClient,
        authenticate,
        AuthenticateRequest
    );
    route!(
        "/v3/auth/user/add",
        AuthClient,
        user_add,
        AuthUserAddRequest
    );
    route!(
        "/v3/auth/user/get",
        AuthClient,
        user_get,
        AuthUserGetRequest
    );
    route!(
        "/v3/auth/user/list",
        AuthClient,
        user_list,
        AuthUserListRequest
    );
    route!(
        "/v3/auth/user/delete",
        AuthClient,
        user_delete,
        AuthUserDeleteRequest
    );
    route!(
        "/v3/auth/user/changepw",
        AuthClient,
        user_change_password,
        AuthUserChangePasswordRequest
    );
    route!(
        "/v3/auth/user/grant",
        AuthClient,
        user_grant_role,
        AuthUserGrantRoleRequest
    );
    route!(
        "/v3/auth/user/revoke",
        AuthClient,
        user_revoke_role,
        AuthUserRevokeRoleRequest
    );
    route!(
        "/v3/auth/role/add",
        AuthClient,
        role_add,
        AuthRoleAddRequest
    );
    route!(
        "/v3/auth/role/get",
        AuthClient,
        role_get,
        AuthRoleGetRequest
    );
    route!(
        "/v3/auth/role/list",
        AuthClient,
        role_list,
        AuthRoleListRequest
    );
    route!(
        "/v3/auth/role/delete",
        AuthClient,
        role_delete,
        AuthRoleDeleteRequest
    );
    route!(
        "/v3/auth/role/grant",
        AuthClient,
        role_grant_permission,
        AuthRoleGrantPermissionRequest
    );
    route!(
        "/v3/auth/role/revoke",
        AuthClient,
        role_revoke_permission,
        AuthRoleRevokePermissionRequest
    );
    route!("/v3/lock/lock", LockClient, lock, LockRequest);
    route!("/v3/lock/unlock", LockClient, unlock, UnlockRequest);
    route!(
        "/v3/election/campaign",
        ElectionClient,
        campaign,
        CampaignRequest
    );
    route!(
        "/v3/election/proclaim",
        ElectionClient,
        proclaim,
        ProclaimRequest
    );
    route!("/v3/election/leader", ElectionClient, leader, LeaderRequest);
    route!("/v3/election/resign", ElectionClient, resign, ResignRequest);

    let watch_channel = channel.clone();
    router = router.route(
        "/v3/watch",
        post_only(move |headers: HeaderMap, body: Bytes| {
            let channel = watch_channel.clone();
            async move {
                let requests = match parse_all::<WatchRequest>(&body) {
                    Ok(requests) => requests,
                    Err(status) => return error_response(&status),
                };
                let (sender, receiver) = tokio::sync::mpsc::channel(requests.len().max(1));
                for request in requests {
                    let _ = sender.try_send(request);
                }
                let request = grpc_request(&headers, ReceiverStream::new(receiver));
                match WatchClient::new(channel)
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .watch(request)
                    .await
                {
                    Ok(stream) => stream_response(stream.into_inner(), Some(sender)),
                    Err(status) => error_response(&status),
                }
            }
        }),
    );
    let keepalive_channel = channel.clone();
    router = router.route(
        "/v3/lease/keepalive",
        post_only(move |headers: HeaderMap, body: Bytes| {
            let channel = keepalive_channel.clone();
            async move {
                let requests = match parse_all::<LeaseKeepAliveRequest>(&body) {
                    Ok(requests) => requests,
                    Err(status) => return error_response(&status),
                };
                let expected = requests.len();
                let request = grpc_request(&headers, tokio_stream::iter(requests));
                match LeaseClient::new(channel).lease_keep_alive(request).await {
                    // One answer per request, then the response ends.
                    Ok(stream) => {
                        stream_response::<(), _, _>(stream.into_inner().take(expected), None)
                    }
                    Err(status) => error_response(&status),
                }
            }
        }),
    );
    let observe_channel = channel.clone();
    router = router.route(
        "/v3/election/observe",
        post_only(move |headers: HeaderMap, body: Bytes| {
            let channel = observe_channel.clone();
            async move {
                let request = match parse_one::<LeaderRequest>(&body) {
                    Ok(request) => request,
                    Err(status) => return error_response(&status),
                };
                match ElectionClient::new(channel)
                    .observe(grpc_request(&headers, request))
                    .await
                {
                    Ok(stream) => stream_response::<(), _, _>(stream.into_inner(), None),
                    Err(status) => error_response(&status),
                }
            }
        }),
    );
    let snapshot_channel = channel;
    router.route(
        "/v3/maintenance/snapshot",
        post_only(move |headers: HeaderMap| {
            let channel = snapshot_channel.clone();
            async move {
                match MaintenanceClient::new(channel)
                    .max_decoding_message_size(MESSAGE_BYTES_MAX)
                    .snapshot(grpc_request(&headers, SnapshotRequest {}))
                    .await
                {
                    Ok(stream) => stream_response::<(), _, _>(stream.into_inner(), None),
                    Err(status) => error_response(&status),
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_written_as_etcds_gateway_writes_them() {
        let response = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 12585971608760269493,
                member_id: 13847567121247652255,
                revision: 2,
                raft_term: 3,
            }),
            kvs: vec![ostrakon_proto::mvccpb::KeyValue {
                key: Bytes::from_static(b"foo"),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: Bytes::from_static(b"bar"),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"header":{"cluster_id":"12585971608760269493","member_id":"13847567121247652255","revision":"2","raft_term":"3"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        // Both field-name forms, strings or numbers for 64-bit integers, enums by name.
        let txn: TxnRequest = parse_one(
            br#"{"compare":[{"target":"CREATE","key":"Zm9v","createRevision":"2","result":"EQUAL"}],"success":[{"requestPut":{"key":"Zm9v","value":"YmFy"}}]}"#,
        )
        .unwrap();
        assert_eq!(txn.compare[0].target, compare::CompareTarget::Create as i32);
        assert_eq!(
            txn.compare[0].target_union,
            Some(compare::TargetUnion::CreateRevision(2))
        );
        let watches: Vec<WatchRequest> = parse_all(
            br#"{"create_request":{"key":"Zm9v","start_revision":1}} {"progress_request":{}}"#,
        )
        .unwrap();
        assert_eq!(watches.len(), 2);
        let status = Status::failed_precondition("etcdserver: authentication is not enabled");
        assert_eq!(http_status(status.code()), StatusCode::BAD_REQUEST);
        assert_eq!(
            result_line(&LeaseKeepAliveResponse {
                header: None,
                id: 7,
                ttl: 30
            }),
            "{\"result\":{\"ID\":\"7\",\"TTL\":\"30\"}}\n"
        );
    }
}
