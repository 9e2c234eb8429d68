//! Distributed tracing: a put sent to a follower with a client's `traceparent` is followed
//! by spans (gRPC call, forward, proposal, WAL fsync, replication, apply on every member)
//! that reach an OTLP collector, here a fake one in the test, as one trace; sampling
//! follows etcd's flags; a collector that is down costs spans, never requests.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use ostrakon_proto::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use ostrakon_proto::otlp::trace_service_server::{TraceService, TraceServiceServer};
use ostrakon_proto::otlp::{
    any_value, span::SpanKind, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// A span as the collector received it, with the member (instance) that sent it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    instance: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    name: String,
    kind: i32,
    start_ns: u64,
    end_ns: u64,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct FakeCollector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for FakeCollector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = attributes(&resource_spans.resource.unwrap_or_default().attributes);
            for scope in resource_spans.scope_spans {
                assert_eq!(scope.scope.unwrap_or_default().name, "ostrakon");
                for span in scope.spans {
                    received.push(Received {
                        service: resource["service.name"].clone(),
                        instance: resource["service.instance.id"].clone(),
                        trace_id: span.trace_id.to_vec(),
                        span_id: span.span_id.to_vec(),
                        parent_span_id: span.parent_span_id.to_vec(),
                        name: span.name,
                        kind: span.kind,
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attributes(pairs: &[ostrakon_proto::otlp::KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|v| v.value.clone()) {
                Some(any_value::Value::StringValue(text)) => text,
                Some(any_value::Value::IntValue(number)) => number.to_string(),
                Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
                None => String::new(),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

impl FakeCollector {
    /// Serves OTLP/gRPC on a free loopback port.
    async fn start() -> (FakeCollector, SocketAddr) {
        let collector = FakeCollector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for the spans received so far.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not received within 20 s; received: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn kv(cluster: &TestCluster, i: usize) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(cluster.endpoint(i)).await.unwrap()
}

fn put_request(key: &str, traceparent: Option<&str>) -> tonic::Request<PutRequest> {
    let mut request = tonic::Request::new(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    });
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    request
}

fn tracing_flags(collector: SocketAddr, sampling_per_million: u32) -> Vec<String> {
    vec![
        "--experimental-enable-distributed-tracing".into(),
        "--experimental-distributed-tracing-address".into(),
        collector.to_string(),
        "--experimental-distributed-tracing-sampling-rate".into(),
        sampling_per_million.to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_trace_follows_a_put_through_forward_fsync_replication_and_every_apply() {
    let (collector, addr) = FakeCollector::start().await;
    let flags = tracing_flags(addr, 0);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = TestCluster::start(3, &flags).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;

    // Sampling rate 0: a request that brings no sampled trace is not traced, nor is one
    // whose client decided not to sample.
    let mut client = kv(&cluster, follower).await;
    client.put(put_request("untraced", None)).await.unwrap();
    let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
    client
        .put(put_request("unsampled", Some(unsampled)))
        .await
        .unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    client
        .put(put_request("traced", Some(&traceparent)))
        .await
        .unwrap();

    let in_trace = |spans: &[Received], name: &str| -> Vec<Received> {
        spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id && s.name == name)
            .cloned()
            .collect()
    };
    let spans = collector
        .wait_until(
            "the put's spans, with an apply from every member",
            |spans| {
                in_trace(spans, "mvcc.apply").len() == 3
                    && in_trace(spans, "wal.fsync").len() == 1
                    && in_trace(spans, "raft.replicate").len() == 1
                    && in_trace(spans, "etcdserverpb.KV/Put").len() == 1
            },
        )
        .await;
    // Nothing but the client's sampled trace was recorded.
    for span in &spans {
        assert_eq!(
            hex(&span.trace_id),
            trace_id,
            "an unexpected trace: {span:?}"
        );
        assert_eq!(span.service, "ostrakon");
    }
    let name = |i: usize| cluster.members[i].name.clone();
    let one = |name: &str| {
        let found = in_trace(&spans, name);
        assert_eq!(found.len(), 1, "{name}: {found:#?}");
        found.into_iter().next().unwrap()
    };

    // The follower served the call under the client's span and forwarded it.
    let call = one("etcdserverpb.KV/Put");
    assert_eq!(hex(&call.parent_span_id), client_span);
    assert_eq!(call.kind, SpanKind::Server as i32);
    assert_eq!(call.instance, name(follower));
    assert_eq!(call.attributes["rpc.system"], "grpc");
    assert_eq!(call.attributes["rpc.service"], "etcdserverpb.KV");
    assert_eq!(call.attributes["rpc.method"], "Put");
    assert_eq!(call.attributes["rpc.grpc.status_code"], "0");
    let forward = one("raft.forward_to_leader");
    assert_eq!(forward.parent_span_id, call.span_id);
    assert_eq!(forward.kind, SpanKind::Client as i32);
    assert_eq!(forward.instance, name(follower));

    // The leader proposed it under the forward, fsynced it and learned it committed.
    let propose = one("raft.propose");
    assert_eq!(propose.parent_span_id, forward.span_id);
    assert_eq!(propose.instance, name(leader));
    let fsync = one("wal.fsync");
    let replicate = one("raft.replicate");
    for span in [&fsync, &replicate] {
        assert_eq!(span.parent_span_id, propose.span_id, "{span:?}");
        assert_eq!(span.instance, name(leader));
        assert!(
            propose.start_ns <= span.start_ns && span.end_ns <= propose.end_ns,
            "{span:?} outside the proposal {propose:?}"
        );
    }
    assert!(fsync.start_ns <= fsync.end_ns);
    assert_eq!(
        fsync.attributes["raft.index"],
        replicate.attributes["raft.index"]
    );

    // Every member applied the entry under the proposal's span, at the same index.
    let applies = in_trace(&spans, "mvcc.apply");
    let mut appliers: Vec<String> = applies.iter().map(|s| s.instance.clone()).collect();
    appliers.sort();
    assert_eq!(appliers, ["m1", "m2", "m3"]);
    for apply in &applies {
        assert_eq!(apply.parent_span_id, propose.span_id);
        assert_eq!(
            apply.attributes["raft.index"],
            fsync.attributes["raft.index"]
        );
    }
    let leader_apply = applies.iter().find(|s| s.instance == name(leader)).unwrap();
    assert!(replicate.end_ns <= leader_apply.start_ns + 1_000_000);
    assert!(leader_apply.end_ns <= propose.end_ns);
    // The call spans all of it on the follower's clock (same machine: one clock).
    assert!(call.start_ns <= propose.start_ns && propose.end_ns <= call.end_ns);

    // The JSON gateway passes an HTTP caller's trace context on to its gRPC call.
    let http_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let http_span = "10f067aa0ba902b8";
    let response = http_post(
        &cluster,
        follower,
        "/v3/kv/put",
        &format!("00-{http_trace}-{http_span}-01"),
        r#"{"key":"Z2F0ZXdheQ==","value":"dg=="}"#,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let spans = collector
        .wait_until("the gateway put's applies", |spans| {
            spans
                .iter()
                .filter(|s| hex(&s.trace_id) == http_trace && s.name == "mvcc.apply")
                .count()
                == 3
        })
        .await;
    let call = spans
        .iter()
        .find(|s| hex(&s.trace_id) == http_trace && s.name == "etcdserverpb.KV/Put")
        .expect("the gateway's gRPC call is in the HTTP caller's trace");
    assert_eq!(hex(&call.parent_span_id), http_span);
    assert_eq!(call.instance, name(follower));
}

/// POSTs a JSON body to a member's gateway with a `traceparent` header; the raw response.
async fn http_post(
    cluster: &TestCluster,
    i: usize,
    path: &str,
    traceparent: &str,
    body: &str,
) -> String {
    let address = format!("127.0.0.1:{}", cluster.members[i].client_port);
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\ntraceparent: {traceparent}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_traced_at_the_full_sampling_rate_and_a_dead_collector_costs_no_request() {
    let (collector, addr) = FakeCollector::start().await;
    let flags = tracing_flags(addr, 1_000_000);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = TestCluster::start(1, &flags).await;
    let mut client = kv(&cluster, 0).await;
    client.put(put_request("k", None)).await.unwrap();
    client
        .range(RangeRequest {
            key: b"k".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let spans = collector
        .wait_until("a traced put and a traced linearizable range", |spans| {
            spans.iter().any(|s| s.name == "raft.read_index")
                && spans.iter().any(|s| s.name == "mvcc.apply")
        })
        .await;
    let root = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id.is_empty())
            .unwrap_or_else(|| panic!("no root span {name}: {spans:#?}"))
            .clone()
    };
    let put = root("etcdserverpb.KV/Put");
    let range = root("etcdserverpb.KV/Range");
    assert_ne!(put.trace_id, range.trace_id, "two requests, two traces");
    let read_index = spans.iter().find(|s| s.name == "raft.read_index").unwrap();
    assert_eq!(read_index.parent_span_id, range.span_id);
    let propose = spans
        .iter()
        .find(|s| s.name == "raft.propose" && s.trace_id == put.trace_id)
        .expect("the put's proposal");
    assert_eq!(propose.parent_span_id, put.span_id);
    assert_eq!(
        propose.instance, "m1",
        "the instance id defaults to the name"
    );
    let exported = metric(&cluster, "ostrakon_trace_spans_exported_total").await;
    assert!(exported >= 4.0, "{exported} spans exported");
    drop(cluster);

    // A collector that is not there: requests succeed, spans are counted as dropped.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let flags = tracing_flags(closed, 1_000_000);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = TestCluster::start(1, &flags).await;
    let mut client = kv(&cluster, 0).await;
    for i in 0..20 {
        client
            .put(put_request(&format!("k{i}"), None))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dropped = metric(&cluster, "ostrakon_trace_spans_dropped_total").await;
        if dropped >= 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {dropped} spans counted as dropped"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(cluster
        .log(0)
        .contains("span export to the collector failed"));
}

#[test]
fn a_sampling_rate_over_a_million_is_refused() {
    let cluster = TestCluster::unstarted(1, &[]);
    let (ok, _, stderr) = cluster.ostrakon(&[
        "server",
        "--experimental-enable-distributed-tracing",
        "--experimental-distributed-tracing-sampling-rate",
        "1000001",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("--experimental-distributed-tracing-sampling-rate must be at most 1000000"),
        "{stderr}"
    );
}

/// One metric's value from the member's `/metrics`.
async fn metric(cluster: &TestCluster, name: &str) -> f64 {
    let url = format!("127.0.0.1:{}", cluster.members[0].client_port);
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(url).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    })
    .await
    .unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}
