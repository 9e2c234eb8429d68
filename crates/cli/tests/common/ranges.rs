//! The ranges of a test cluster, as its members list them.

use std::time::{Duration, Instant};

use ostrakon_proto::ostrakonpb::{ranges_client::RangesClient, ListRangesRequest, RangeInfo};

use super::TestCluster;

/// The ranges member `i` knows (None while it does not answer: it is starting).
pub async fn ranges(cluster: &TestCluster, i: usize) -> Option<Vec<RangeInfo>> {
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
pub async fn wait_for_spans(cluster: &TestCluster, spans: &[(&str, &str)]) {
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

/// Splits the keyspace at "m" and "t" by hand (three data ranges) and waits until every
/// member holds the three.
pub async fn split_in_three(cluster: &TestCluster) {
    for at in ["m", "t"] {
        let (ok, out, err) =
            cluster.ostrakon(&["ranges", "split", at, "--endpoint", &cluster.host_port(0)]);
        assert!(ok, "split at {at} failed: {out} {err}");
    }
    wait_for_spans(cluster, &[("", "m"), ("m", "t"), ("t", "")]).await;
}

/// Splits the keyspace at "m" and waits until every member serves both ranges (on a
/// keyspace split eagerly, every member has a range starting at "m").
pub async fn split_at_m(cluster: &TestCluster) {
    let (ok, out, err) =
        cluster.ostrakon(&["ranges", "split", "m", "--endpoint", &cluster.host_port(0)]);
    assert!(ok, "split failed: {out} {err}");
    if !super::splits_eagerly() {
        wait_for_spans(cluster, &[("", "m"), ("m", "")]).await;
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut all = true;
        for i in (0..cluster.members.len()).filter(|&i| cluster.is_running(i)) {
            let listed = ranges(cluster, i).await.unwrap_or_default();
            all &= listed.iter().any(|range| range.start == b"m"[..]);
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the members do not all split at m"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Merges the range of a test cluster that starts at `key` into the one before it,
/// through member `i`. A merge refused because a replica of the right range was behind
/// says "merge again later": it is, up to three more times (printed, so a log shows it).
/// Seen once in CI right after a split: the coordinator then checked the replicas'
/// progress once, before freezing, while the new range's leadership had just moved and
/// knew no follower's progress yet; it now waits up to 2 s for them.
#[allow(dead_code)]
pub fn merge_at(cluster: &TestCluster, key: &str, i: usize) {
    for attempt in 1..=4 {
        let (ok, out, err) =
            cluster.ostrakon(&["ranges", "merge", key, "--endpoint", &cluster.host_port(i)]);
        if ok {
            return;
        }
        let transient = err.contains("merge again later");
        assert!(
            transient && attempt < 4,
            "merge at {key} failed: {out} {err}"
        );
        eprintln!("merge at {key}, attempt {attempt}: {err}; trying again");
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// A member of a keyspace split in two that leads neither data range, once each is led
/// by a different member: an auth change and its gates go on without it while it is
/// paused (a request forwarded to a paused leader would wait out its timeout). A quiet
/// cluster keeps its leaders through a test's rounds.
pub async fn member_leading_no_data_range(cluster: &TestCluster) -> usize {
    use std::time::Duration;
    let mut admin = cluster.client(0).await;
    let listed = admin.member_list().await.unwrap();
    let ids: Vec<u64> = (1..=3)
        .map(|n| {
            let name = format!("m{n}");
            listed
                .members()
                .iter()
                .find(|m| m.name() == name)
                .unwrap()
                .id()
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let leaders: Vec<u64> = loop {
        let leaders: Vec<u64> = ranges(cluster, 0)
            .await
            .unwrap_or_default()
            .iter()
            .filter(|range| range.range_id != 0) // the meta range
            .map(|range| range.leader)
            .collect();
        // Two leaders, one each: the leader spreading moves nothing more.
        if leaders.len() == 2 && !leaders.contains(&0) && leaders[0] != leaders[1] {
            break leaders;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leaders: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (0..3)
        .find(|i| !leaders.contains(&ids[*i]))
        .unwrap_or_else(|| panic!("every member leads a range: {leaders:?} {ids:?}"))
}
