//! What operators see: `/metrics` parses as Prometheus text, has etcd's metric names, and
//! moves under load and through a leader change; `/readyz`, `/livez`, the dashboard's
//! page and status; JSON logs.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{http_get as get, TestCluster};

/// One scrape, parsed by a Prometheus text parser; samples keyed by their line's name and
/// labels as written (`name{a="b"}`).
fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, head, body) = get(port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    assert!(parsed.samples.len() > 20, "{body}");
    let mut samples = HashMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').unwrap();
        samples.insert(key.to_string(), value.parse::<f64>().unwrap());
    }
    samples
}

fn sample(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from {:?}", samples.keys()))
}

/// The sum of every sample whose key starts with `prefix` and contains every `part`.
fn sum(samples: &HashMap<String, f64>, prefix: &str, parts: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(prefix) && parts.iter().all(|p| k.contains(p)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_etcds_names_and_move_under_load_and_leader_changes() {
    let mut cluster = TestCluster::start(3, &["--log-format", "json"]).await;
    let leader = cluster.wait_for_leader().await;
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let before: Vec<_> = ports.iter().map(|&p| scrape(p)).collect();
    for samples in &before {
        assert_eq!(sample(samples, "etcd_server_has_leader"), 1.0);
    }
    let leaders: f64 = before
        .iter()
        .map(|s| sample(s, "etcd_server_is_leader"))
        .sum();
    assert_eq!(leaders, 1.0);
    assert_eq!(sample(&before[leader], "etcd_server_is_leader"), 1.0);

    let mut client = cluster.client(leader).await;
    for i in 0..200 {
        client.put(format!("metrics/{i}"), "v", None).await.unwrap();
    }
    // An invalid request is counted with its code.
    let empty_key = client.put("", "v", None).await;
    assert!(empty_key.is_err());
    // The round-trip probe runs every 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let after = scrape(ports[leader]);
    let grew = |key: &str, by: f64| {
        let (old, new) = (sample(&before[leader], key), sample(&after, key));
        assert!(new >= old + by, "{key}: {old} -> {new}, expected +{by}");
    };
    grew("etcd_server_proposals_committed_total", 200.0);
    grew("etcd_server_proposals_applied_total", 200.0);
    grew("etcd_disk_wal_fsync_duration_seconds_count", 50.0);
    grew("etcd_disk_backend_commit_duration_seconds_count", 50.0);
    grew("ostrakon_transport_batch_messages_count", 100.0);
    assert_eq!(sample(&after, "etcd_server_proposals_pending"), 0.0);
    let puts_ok = sum(
        &after,
        "grpc_server_handled_total",
        &["grpc_method=\"Put\"", "grpc_code=\"OK\""],
    );
    assert!(puts_ok >= 200.0, "{puts_ok}");
    assert_eq!(
        sum(
            &after,
            "grpc_server_handled_total",
            &["grpc_method=\"Put\"", "grpc_code=\"InvalidArgument\""]
        ),
        1.0
    );
    assert!(sum(&after, "grpc_server_handling_seconds_count", &["Put"]) >= 201.0);
    // A round trip to each of the two peers, labelled by its id as etcd's are.
    let round_trips: Vec<_> = after
        .keys()
        .filter(|k| k.starts_with("etcd_network_peer_round_trip_time_seconds_count{To="))
        .collect();
    assert_eq!(round_trips.len(), 2, "{round_trips:?}");
    assert!(sum(&after, "etcd_network_peer_sent_bytes_total", &[]) > 10_000.0);
    let follower = (leader + 1) % 3;
    assert!(
        sum(
            &scrape(ports[follower]),
            "etcd_network_peer_received_bytes_total",
            &[]
        ) > 10_000.0
    );

    // A watch stream is handled when it ends, not when it starts: started minus handled
    // is the number of open streams, as etcd's dashboards chart it.
    let open_watches = |samples: &HashMap<String, f64>| {
        let watch = [
            "grpc_service=\"etcdserverpb.Watch\"",
            "grpc_type=\"bidi_stream\"",
        ];
        sum(samples, "grpc_server_started_total", &watch)
            - sum(samples, "grpc_server_handled_total", &watch)
    };
    let mut watching = cluster.client(leader).await;
    let (watcher, mut stream) = watching.watch("metrics/", None).await.unwrap();
    client.put("metrics/", "watched", None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
    assert!(event.expect("the watch hears the put").unwrap().is_some());
    assert_eq!(open_watches(&scrape(ports[leader])), 1.0);
    drop((watcher, stream, watching));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while open_watches(&scrape(ports[leader])) != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the ended watch stream is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = scrape(ports[leader]);
    assert_eq!(
        sum(
            &ended,
            "grpc_server_handling_seconds_count",
            &["grpc_service=\"etcdserverpb.Watch\""]
        ),
        1.0
    );

    // A leader change is seen by the survivors.
    let changes_before = sample(
        &scrape(ports[follower]),
        "etcd_server_leader_changes_seen_total",
    );
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    // Metrics are published after the event loop's rounds, and a new leader may lose
    // its leadership again on a slow machine: polled, within a bound.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let survivor = scrape(ports[follower]);
        let changes = sample(&survivor, "etcd_server_leader_changes_seen_total");
        let has_leader = sample(&survivor, "etcd_server_has_leader");
        let leaders = (0..3)
            .filter(|&i| i != leader)
            .filter(|&i| sample(&scrape(ports[i]), "etcd_server_is_leader") == 1.0)
            .count();
        if changes > changes_before && has_leader == 1.0 && leaders == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after the leader's death: leader changes {changes} (before {changes_before}), \
             has_leader {has_leader}, {leaders} members leading"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // JSON logs: every line of a member's log is one JSON object with a level.
    let log = cluster.log(follower);
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_liveness_and_the_dashboard_are_served() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let port = cluster.members[leader].client_port;
    let (status, _, body) = get(port, "/readyz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(get(port, "/livez").0, 200);
    let (status, head, page) = get(port, "/dashboard");
    assert_eq!(status, 200);
    assert!(head.contains("text/html"), "{head}");
    assert!(page.contains("<title>ostrakon dashboard</title>"));
    assert!(page.contains("/dashboard/events"));
    let (status, head, body) = get(port, "/dashboard/status");
    assert_eq!(status, 200);
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["raft"]["role"], "leader", "{json}");
    assert_eq!(json["members"].as_array().unwrap().len(), 3, "{json}");
    assert_eq!(
        json["raft"]["progress"].as_array().unwrap().len(),
        2,
        "{json}"
    );
    assert!(json["control_url"].is_null());
    // The event stream sends the same status.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /dashboard/events HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("\"raft\"") {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "the event stream ended");
        received.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("data: {"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_range_map_live() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    cluster.wait_for_published_members().await;
    let port = cluster.members[0].client_port;
    let (_, _, page) = get(port, "/dashboard");
    assert!(page.contains("id=\"ranges\""), "the page has the range map");
    let status = || -> serde_json::Value {
        let (code, _, body) = get(port, "/dashboard/status");
        assert_eq!(code, 200);
        serde_json::from_str(&body).unwrap()
    };
    let first = status();
    let ids: Vec<String> = first["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let ranges = first["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 1, "{first}");
    assert_eq!(ranges[0]["start"], "", "{first}");
    assert!(ranges[0]["end"].is_null(), "{first}");
    // Each range's size and the requests this member serves for it.
    assert!(ranges[0]["live_bytes"].is_u64(), "{first}");
    assert!(ranges[0]["requests_per_second"].is_f64(), "{first}");

    // A split shows as a second range, and the leaders, spread over the members, show
    // where they move: the meta range and both data ranges each on their own member.
    let (ok, out, err) =
        cluster.ostrakon(&["ranges", "split", "m", "--endpoint", &cluster.host_port(0)]);
    assert!(ok, "split failed: {out} {err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = status();
        let ranges = now["ranges"].as_array().unwrap();
        let spans: Vec<(String, Option<String>)> = ranges
            .iter()
            .map(|r| {
                (
                    r["start"].as_str().unwrap().to_string(),
                    r["end"].as_str().map(str::to_string),
                )
            })
            .collect();
        let mut leaders: Vec<String> = ranges
            .iter()
            .map(|r| r["leader"].as_str().unwrap().to_string())
            .chain(now["meta_leader"].as_str().map(str::to_string))
            .collect();
        let every_leader_a_member = leaders.iter().all(|l| ids.contains(l));
        leaders.sort();
        leaders.dedup();
        if spans == [("".into(), Some("m".into())), ("m".into(), None)]
            && every_leader_a_member
            && leaders.len() == 3
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard did not show two ranges led by different members: {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ostrakon_status_prints_etcdctls_endpoint_status_table() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    cluster.wait_for_published_members().await;
    let endpoints = cluster.host_ports();
    let etcdctl35 = &common::etcdctl::etcdctls()[1];
    let etcdctl = common::etcdctl::Etcdctl {
        binary: etcdctl35,
        endpoints: endpoints.clone(),
    };
    // An idle cluster: the same table from both, unless an index moved in between.
    let mut last = (String::new(), String::new());
    for _ in 0..5 {
        let (ok, ours, stderr) = cluster.ostrakon(&["status", "--endpoints", &endpoints]);
        assert!(ok, "{stderr}");
        let theirs = etcdctl.ok(&["endpoint", "status", "-w", "table"]);
        if ours == theirs {
            assert_eq!(ours.lines().count(), 7, "{ours}");
            assert_eq!(
                ours.matches("|      true |").count(),
                1,
                "one leader: {ours}"
            );
            return;
        }
        last = (ours, theirs);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("ostrakon status:\n{}\netcdctl:\n{}", last.0, last.1);
}

/// A call to a method no protocol declares is answered Unimplemented and counted
/// nowhere, as grpc-go's server does (counted under its made-up name, each new name
/// added label sets to `/metrics` for good: a client could grow the member's memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_undeclared_methods_add_nothing_to_the_metrics() {
    use ostrakon_proto::etcdserverpb::{RangeRequest, RangeResponse};
    let cluster = TestCluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let port = cluster.members[0].client_port;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for path in [
        "/etcdserverpb.KV/MadeUp0",
        "/etcdserverpb.KV/MadeUp1",
        "/nosuch.Service/Range",
        "/etcdserverpb.KV/Range",
    ] {
        grpc.ready().await.unwrap();
        let outcome = grpc
            .unary::<RangeRequest, RangeResponse, _>(
                tonic::Request::new(RangeRequest {
                    key: b"k".to_vec().into(),
                    ..RangeRequest::default()
                }),
                path.parse().unwrap(),
                tonic::codec::ProstCodec::default(),
            )
            .await;
        if path.ends_with("KV/Range") {
            assert!(outcome.is_ok(), "{outcome:?}");
        } else {
            let code = outcome.map(|_| ()).unwrap_err().code();
            assert_eq!(code, tonic::Code::Unimplemented, "{path}");
        }
    }
    let samples = tokio::task::spawn_blocking(move || scrape(port))
        .await
        .unwrap();
    let made_up: Vec<_> = samples
        .keys()
        .filter(|key| key.contains("MadeUp") || key.contains("nosuch"))
        .collect();
    assert!(made_up.is_empty(), "{made_up:?}");
    assert!(
        sum(
            &samples,
            "grpc_server_started_total",
            &["grpc_method=\"Range\""]
        ) >= 1.0
    );
}

/// A call that ends before it is answered (its deadline passed, or the client went away)
/// is counted handled, as Canceled, as grpc-go's server counts it: started minus handled
/// is what etcd's dashboards chart as open calls, and it must not grow with every call
/// that ended unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ended_before_its_answer_is_counted_handled_as_canceled() {
    use ostrakon_proto::etcdserverpb::lease_client::LeaseClient;
    use ostrakon_proto::etcdserverpb::LeaseGrantRequest;
    use ostrakon_proto::v3lockpb::lock_client::LockClient;
    use ostrakon_proto::v3lockpb::LockRequest;
    let cluster = TestCluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let port = cluster.members[0].client_port;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let leases = LeaseClient::new(channel.clone());
    let grant = || {
        let mut leases = leases.clone();
        async move {
            leases
                .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await
                .unwrap()
                .into_inner()
                .id
        }
    };
    let (holder, waiter) = (grant().await, grant().await);
    let mut locks = LockClient::new(channel);
    let lock = |lease| LockRequest {
        name: b"held".to_vec().into(),
        lease,
    };
    locks.lock(lock(holder)).await.unwrap();
    // The lock is held: each of these waits for it, until its deadline ends the call.
    for _ in 0..3 {
        let mut wait = tonic::Request::new(lock(waiter));
        // Sent as grpc-timeout: the server ends the call when it passes.
        wait.set_timeout(Duration::from_millis(200));
        let outcome = tokio::time::timeout(Duration::from_secs(5), locks.lock(wait))
            .await
            .expect("the call ends by its deadline");
        assert!(outcome.is_err(), "a lock held by another: {outcome:?}");
    }
    let lock_calls = ["grpc_method=\"Lock\""];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let samples = tokio::task::spawn_blocking(move || scrape(port))
            .await
            .unwrap();
        let started = sum(&samples, "grpc_server_started_total", &lock_calls);
        let handled = sum(&samples, "grpc_server_handled_total", &lock_calls);
        let canceled = sum(
            &samples,
            "grpc_server_handled_total",
            &["grpc_method=\"Lock\"", "grpc_code=\"Canceled\""],
        );
        if started == 4.0 && handled == 4.0 && canceled == 3.0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "started {started}, handled {handled}, canceled {canceled}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
