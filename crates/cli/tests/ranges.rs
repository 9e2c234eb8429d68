//! The keyspace split into ranges on real processes: `ostrakon ranges split`, every
//! member serving both ranges' keys, revisions from the oracle ordered across ranges, a
//! watcher following its keys into the new range, and members that restart or missed
//! the split catching up.

mod common;

use std::time::{Duration, Instant};

use common::{status_of, TestCluster};
use etcd_client::{GetOptions, PutOptions, WatchOptions};
use ostrakon_proto::ostrakonpb::{ranges_client::RangesClient, ListRangesRequest, RangeInfo};

/// The ranges member `i` knows (None while it does not answer: it is starting).
async fn ranges(cluster: &TestCluster, i: usize) -> Option<Vec<RangeInfo>> {
    let channel = tonic::transport::Endpoint::from_shared(cluster.endpoint(i))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .ok()?;
    let listed = RangesClient::new(channel)
        .list(ListRangesRequest {})
        .await
        .ok()?;
    Some(listed.into_inner().ranges)
}

/// Waits (bounded) until every running member lists `spans` (start, end; "" for the end
/// of the keyspace).
async fn wait_for_spans(cluster: &TestCluster, spans: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = true;
        for i in (0..cluster.members.len()).filter(|&i| cluster.is_running(i)) {
            let listed: Vec<(String, String)> = ranges(cluster, i)
                .await
                .unwrap_or_default()
                .iter()
                .map(|r| {
                    (
                        String::from_utf8_lossy(&r.start).into_owned(),
                        String::from_utf8_lossy(&r.end).into_owned(),
                    )
                })
                .collect();
            let expected: Vec<(String, String)> = spans
                .iter()
                .map(|(s, e)| (s.to_string(), e.to_string()))
                .collect();
            all &= listed == expected;
        }
        if all {
            return;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("the members do not all list {spans:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A key's value as member `i` serves it without asking the leader (serializable),
/// waited for (bounded) until it is `expected`.
async fn wait_for_local_value(cluster: &TestCluster, i: usize, key: &str, expected: &str) {
    let mut client = cluster.client(i).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = client
            .get(key, Some(GetOptions::new().with_serializable()))
            .await
            .ok()
            .and_then(|r| {
                r.kvs()
                    .first()
                    .map(|kv| kv.value_str().unwrap().to_string())
            });
        if got.as_deref() == Some(expected) {
            return;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("member {i} serves {key} = {got:?}, not {expected}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_makes_two_ranges_that_every_member_serves_with_one_revision_order() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    for key in ["a", "k", "m", "x"] {
        client.put(key, format!("{key}1"), None).await.unwrap();
    }
    let before_split = client
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    // A watcher of "x" from before the split: its key moves to the new range. (From the
    // revision after the puts: a member that has not applied them yet would send them.)
    let (_watcher, mut watch) = client
        .watch(
            "x",
            Some(WatchOptions::new().with_start_revision(before_split + 1)),
        )
        .await
        .unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();

    // A key from the split key on attached to a lease (the leases live in the first
    // range) keeps the range whole until the lease is gone.
    let early_lease = client.lease_grant(60, None).await.unwrap().id();
    client
        .put(
            "zz",
            "leased",
            Some(PutOptions::new().with_lease(early_lease)),
        )
        .await
        .unwrap();
    let split_m = ["ranges", "split", "m", "--endpoint", &cluster.host_port(1)];
    let (ok, _, err) = cluster.ostrakon(&split_m);
    assert!(!ok && err.contains("attached to a lease"), "{err}");
    client.lease_revoke(early_lease).await.unwrap();

    let (ok, out, err) = cluster.ostrakon(&split_m);
    assert!(ok, "split failed: {out} {err}");
    // (The refused split took range id 2: ids are handed out before a split applies.)
    assert!(
        out.contains("split range 1 at") && out.contains("range 3"),
        "{out}"
    );
    wait_for_spans(&cluster, &[("", "m"), ("m", "")]).await;
    let (ok, listing, _) = cluster.ostrakon(&["ranges", "--endpoint", &cluster.host_port(2)]);
    assert!(
        ok && listing.contains("\"m\"") && listing.contains("+inf"),
        "{listing}"
    );

    // Every member serves both ranges' keys, and writes alternating between the ranges
    // through different members get revisions in the order they were acknowledged.
    let mut last_revision = before_split;
    for round in 0..6 {
        for (i, key) in [(0, "a"), (1, "x"), (2, "k"), (0, "m")] {
            let mut member = cluster.client(i).await;
            let value = format!("{key}-{round}");
            let put = match member.put(key, value.clone(), None).await {
                Ok(put) => put,
                Err(error) => {
                    cluster.dump_logs();
                    panic!("put of {key} through member {i}: {error}");
                }
            };
            let revision = put.header().unwrap().revision();
            assert!(
                revision > last_revision,
                "put of {key} through member {i} got revision {revision}, after {last_revision}"
            );
            last_revision = revision;
            let got = cluster
                .client((i + 1) % 3)
                .await
                .get(key, None)
                .await
                .unwrap();
            assert_eq!(got.kvs()[0].value_str().unwrap(), value);
            assert_eq!(got.kvs()[0].mod_revision(), revision);
        }
    }

    // The watcher followed "x" into the new range: every put of it, in order, once.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 6 && Instant::now() < deadline {
        if let Ok(Some(response)) = tokio::time::timeout(Duration::from_secs(1), watch.message())
            .await
            .unwrap_or(Ok(None))
        {
            for event in response.events() {
                seen.push(event.kv().unwrap().value_str().unwrap().to_string());
            }
        }
    }
    let expected: Vec<String> = (0..6).map(|round| format!("x-{round}")).collect();
    assert_eq!(seen, expected);

    // A read within one range; one across both is refused clearly.
    let left = client
        .get("a", Some(GetOptions::new().with_range("l")))
        .await
        .unwrap();
    let keys: Vec<&str> = left.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(keys, vec!["a", "k"]);
    let across = client
        .get("a", Some(GetOptions::new().with_range("z")))
        .await
        .unwrap_err();
    let status = status_of(across);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("more than one range"),
        "{}",
        status.message()
    );
    // Leases stay with the first range until they span ranges.
    client
        .put("b", "leased", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let refused = client
        .put("y", "leased", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap_err();
    assert_eq!(status_of(refused).code(), tonic::Code::FailedPrecondition);
    // What a split keyspace does not do yet is refused, not half done: membership
    // changes, backups, and election names outside the first range.
    let refused = client
        .member_add(["http://127.0.0.1:1"], None)
        .await
        .unwrap_err();
    assert_eq!(status_of(refused).code(), tonic::Code::FailedPrecondition);
    let refused = match client.snapshot().await {
        Err(refused) => refused,
        Ok(mut backup) => backup.message().await.unwrap_err(),
    };
    assert_eq!(status_of(refused).code(), tonic::Code::FailedPrecondition);
    let refused = client.leader("zz-election").await.unwrap_err();
    assert_eq!(status_of(refused).code(), tonic::Code::FailedPrecondition);
    assert_eq!(client.member_list().await.unwrap().members().len(), 3);
    // A split key outside the keyspace's ranges' insides is refused clearly.
    let (ok, _, err) =
        cluster.ostrakon(&["ranges", "split", "m", "--endpoint", &cluster.host_port(0)]);
    assert!(!ok && err.contains("not inside range"), "{err}");
    // A watch across ranges is cancelled with a reason (asked on a stream that has a
    // watcher already: the client reads a stream's first answer itself).
    let (mut watcher, mut stream) = client.watch("b", None).await.unwrap();
    watcher
        .watch("a", Some(WatchOptions::new().with_range("z")))
        .await
        .unwrap();
    let cancelled = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the refusal comes")
        .unwrap()
        .unwrap();
    assert!(cancelled.canceled(), "{cancelled:?}");
    assert!(cancelled.cancel_reason().contains("more than one range"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_restart_or_missed_the_split_catch_up_on_both_ranges() {
    // A small snapshot count, so that the first range's log is compacted past the split
    // and the member that was down gets its snapshot instead of the split entry.
    let mut cluster = TestCluster::start(3, &["--snapshot-count", "20"]).await;
    let leader = cluster.wait_for_leader().await;
    let down = (leader + 1) % 3;
    let up = (leader + 2) % 3;
    let mut client = cluster.client(leader).await;
    client.put("a", "a0", None).await.unwrap();
    client.put("x", "x0", None).await.unwrap();
    cluster.kill(down);

    let (ok, out, err) = cluster.ostrakon(&[
        "ranges",
        "split",
        "m",
        "--endpoint",
        &cluster.host_port(leader),
    ]);
    assert!(ok, "split failed: {out} {err}");
    wait_for_spans(&cluster, &[("", "m"), ("m", "")]).await;
    for round in 0..60 {
        client.put("a", format!("a{round}"), None).await.unwrap();
        client.put("x", format!("x{round}"), None).await.unwrap();
    }
    cluster.restart(down);
    wait_for_spans(&cluster, &[("", "m"), ("m", "")]).await;
    wait_for_local_value(&cluster, down, "a", "a59").await;
    wait_for_local_value(&cluster, down, "x", "x59").await;
    // It never applied the split: the first range's log was compacted past it, and both
    // ranges came to it by snapshot (the new one to a replica made for its messages).
    let scraped = common::metrics(cluster.members[down].client_port);
    assert_eq!(scraped["ostrakon_range_splits_total"], 0.0);
    assert!(
        scraped["ostrakon_snapshots_received_total"] >= 2.0,
        "{scraped:?}"
    );

    // Every member restarted: the ranges and their data come back from disk.
    for i in [leader, up, down] {
        cluster.kill(i);
        cluster.restart(i);
    }
    cluster.wait_for_leader().await;
    wait_for_spans(&cluster, &[("", "m"), ("m", "")]).await;
    let mut client = cluster.client(up).await;
    client.put("x", "after restart", None).await.unwrap();
    for i in 0..3 {
        wait_for_local_value(&cluster, i, "x", "after restart").await;
        wait_for_local_value(&cluster, i, "a", "a59").await;
    }
}
