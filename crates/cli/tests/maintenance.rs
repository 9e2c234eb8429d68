//! Maintenance against a real cluster: the space quota and its NOSPACE alarm (raised
//! through raft, then only reads, deletes and compaction until an operator disarms it),
//! `etcdctl alarm list|disarm`, and `etcdctl defrag` while the member keeps serving.

mod common;

use std::time::{Duration, Instant};

use common::etcdctl::{etcdctls, Etcdctl};
use common::TestCluster;

/// Values that do not compress (the store compresses blocks).
fn incompressible(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..bytes)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_quota_raises_nospace_which_stops_puts_until_disarmed() {
    let binaries = etcdctls();
    let cluster = TestCluster::start(3, &["--quota-backend-bytes", "8000000"]).await;
    let mut client = cluster.client(0).await;
    // A small key to delete later: deleting (and compacting) it under the alarm frees
    // nothing that would bring the store back under the quota.
    client.put("tiny", "v", None).await.unwrap();
    let mut refused = None;
    for n in 0..200u64 {
        match client
            .put(format!("big/{n:03}"), incompressible(300_000, n), None)
            .await
        {
            Ok(_) => {}
            Err(error) => {
                refused = Some((n, error.to_string()));
                break;
            }
        }
    }
    let (written, error) = refused.expect("the quota stops puts within 60 MB");
    assert!(
        error.contains("etcdserver: mvcc: database space exceeded"),
        "{error}"
    );
    assert!(written >= 20, "refused after only {written} puts of 300 kB");

    for binary in &binaries {
        let etcdctl = Etcdctl {
            binary,
            endpoints: cluster.host_port(1),
        };
        let alarms = etcdctl.ok(&["alarm", "list"]);
        assert!(alarms.contains("alarm:NOSPACE"), "{alarms}");
    }
    // Every member refuses puts (the alarm is replicated), even small ones; reads,
    // deletes and compaction go on.
    for i in 0..3 {
        let mut member = cluster.client(i).await;
        let error = member.put("small", "v", None).await.unwrap_err();
        assert!(
            error.to_string().contains("database space exceeded"),
            "{error}"
        );
        let read = member.get("big/000", None).await.unwrap();
        assert_eq!(read.kvs().len(), 1, "member {i}");
    }
    let deleted = client
        .delete("tiny", None)
        .await
        .expect("deletes apply under NOSPACE");
    assert_eq!(deleted.deleted(), 1);
    let revision = deleted.header().unwrap().revision();
    client.compact(revision, None).await.unwrap();
    let status = client.status().await.unwrap();
    assert!(
        status.errors().iter().any(|e| e.contains("NOSPACE")),
        "{:?}",
        status.errors()
    );
    // etcd's /health is unhealthy while an alarm is raised, unless it is excluded.
    let health = |query: &str| {
        let url = format!("127.0.0.1:{}", cluster.members[1].client_port);
        let query = query.to_string();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(url).unwrap();
            write!(stream, "GET /health{query} HTTP/1.0\r\n\r\n").unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .join()
        .unwrap()
    };
    let alarmed = health("");
    assert!(alarmed.starts_with("HTTP/1.0 503"), "{alarmed}");
    assert!(
        alarmed.ends_with(r#"{"health":"false","reason":"ALARM NOSPACE"}"#),
        "{alarmed}"
    );
    let excluded = health("?exclude=NOSPACE");
    assert!(
        excluded.ends_with(r#"{"health":"true","reason":""}"#),
        "{excluded}"
    );

    let etcdctl = Etcdctl {
        binary: &binaries[1],
        endpoints: cluster.host_port(2),
    };
    let disarmed = etcdctl.ok(&["alarm", "disarm"]);
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(etcdctl.ok(&["alarm", "list"]).trim(), "");
    // Still past the quota: the next put raises the alarm again, as in etcd. As large as
    // the refused one: the check counts the request's size (as etcd's does), so the first
    // refusal may have come with the store just under the quota, where a small put fits
    // (it failed 1 run in 6 with a small put here).
    let error = client
        .put("again", incompressible(300_000, 1_000), None)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("database space exceeded"),
        "{error}"
    );
    assert!(etcdctl.ok(&["alarm", "list"]).contains("alarm:NOSPACE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragment_runs_while_the_member_keeps_serving() {
    let binaries = etcdctls();
    let cluster = TestCluster::start(3, &[]).await;
    let mut client = cluster.client(0).await;
    for n in 0..300u64 {
        client
            .put(format!("k/{}", n % 30), incompressible(10_000, n), None)
            .await
            .unwrap();
    }
    let revision = client
        .get("k/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(revision, None).await.unwrap();
    for binary in &binaries {
        let etcdctl = Etcdctl {
            binary,
            endpoints: cluster.host_port(0),
        };
        // Reads and writes keep being answered while the member defragments.
        let reader = {
            let mut client = cluster.client(0).await;
            tokio::spawn(async move {
                let started = Instant::now();
                let mut served = 0;
                while started.elapsed() < Duration::from_secs(2) {
                    client.put("during", "v", None).await.unwrap();
                    client.get("k/1", None).await.unwrap();
                    served += 1;
                }
                served
            })
        };
        let defragmented = etcdctl.ok(&["defrag"]);
        assert!(
            defragmented.contains("Finished defragmenting etcd member"),
            "{defragmented}"
        );
        assert!(reader.await.unwrap() > 0);
    }
    // k/7 was last written by put number 277 (277 % 30 == 7).
    let value = client.get("k/7", None).await.unwrap();
    assert!(
        value.kvs()[0].value() == incompressible(10_000, 277).as_slice(),
        "defragmenting changed a value"
    );
}

/// HashKV of member `i` at `revision` (0: current): (hash, compact revision, hash
/// revision), or the refusal.
async fn hash_kv(
    cluster: &TestCluster,
    i: usize,
    revision: i64,
) -> Result<(u32, i64, i64), tonic::Status> {
    use ostrakon_proto::etcdserverpb::{maintenance_client::MaintenanceClient, HashKvRequest};
    let channel = tonic::transport::Endpoint::from_shared(cluster.endpoint(i))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let answer = MaintenanceClient::new(channel)
        .hash_kv(HashKvRequest { revision })
        .await?
        .into_inner();
    Ok((answer.hash, answer.compact_revision, answer.hash_revision))
}

/// HashKV on a keyspace in ranges is the keyspace's at one revision, the same however it
/// is split, so that etcd's corruption check (members compared at one revision) holds
/// across splits: a revision above a compaction is hashed in every range (also one with
/// no write since), the compaction reported is the cluster's, one at or below it is
/// refused, and one the keyspace has not reached is refused as etcd refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_across_ranges_is_one_revision_however_the_keyspace_is_split() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    for round in 0..3 {
        for n in 0..10 {
            let value = format!("{round}");
            client
                .put(format!("a/{n}"), value.clone(), None)
                .await
                .unwrap();
            client.put(format!("x/{n}"), value, None).await.unwrap();
        }
    }
    client.delete("x/0", None).await.unwrap();
    let compacted = client
        .get("a/0", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .put("x/1", "after the compaction", None)
        .await
        .unwrap();
    client.compact(compacted, None).await.unwrap();
    let before_split = client.put("a/1", "last", None).await.unwrap();
    let at = before_split.header().unwrap().revision();
    let whole = hash_kv(&cluster, 0, at).await.unwrap();
    assert_eq!((whole.1, whole.2), (compacted, at));

    common::ranges::split_at_m(&cluster).await;
    for i in 0..3 {
        assert_eq!(
            hash_kv(&cluster, i, at).await.unwrap(),
            whole,
            "member {i}: a split changes no hash"
        );
    }

    // A compaction at the current revision, then writes to the first range only: the
    // range past m has had none since.
    let now = client
        .get("x/1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.compact(now, None).await.unwrap();
    let mut last = now;
    for n in 0..3 {
        let put = client.put(format!("a/{n}"), "newer", None).await.unwrap();
        last = put.header().unwrap().revision();
    }
    let mut hashes = Vec::new();
    for i in 0..3 {
        let (hash, compact_revision, hash_revision) = hash_kv(&cluster, i, last).await.unwrap();
        assert_eq!((compact_revision, hash_revision), (now, last), "member {i}");
        hashes.push(hash);
    }
    assert!(hashes.iter().all(|&hash| hash == hashes[0]), "{hashes:?}");
    let (_, _, current) = hash_kv(&cluster, 1, 0).await.unwrap();
    assert!(current >= last, "HashKV(0) at {current}, after {last}");
    let header = client.hash_kv(0).await.unwrap();
    let header_revision = header.header().unwrap().revision();
    let (_, _, hashed_at) = hash_kv(&cluster, 0, 0).await.unwrap();
    assert!(
        header_revision > last && hashed_at > last,
        "a header at {header_revision}, a hash at {hashed_at}, after {last}"
    );

    // Merged back into one range: the same hash again.
    common::ranges::merge_at(&cluster, "m", 0);
    common::ranges::wait_for_spans(&cluster, &[("", "")]).await;
    for i in 0..3 {
        let (hash, compact_revision, hash_revision) = hash_kv(&cluster, i, last).await.unwrap();
        assert_eq!(
            (hash, compact_revision, hash_revision),
            (hashes[0], now, last),
            "member {i}: a merge changes no hash"
        );
    }

    let refused = hash_kv(&cluster, 2, now).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    assert!(refused.message().contains("compacted"), "{refused:?}");
    let future = hash_kv(&cluster, 2, last + 1_000_000_000_000_000)
        .await
        .unwrap_err();
    assert_eq!(future.code(), tonic::Code::OutOfRange, "{future:?}");
    assert!(future.message().contains("future revision"), "{future:?}");
}

/// A member that knows no leader says so in its Status, as etcd's does: `etcdctl
/// endpoint status` shows "etcdserver: no leader" in its errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_no_leader_when_the_member_knows_none() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    let status = client.status().await.unwrap();
    assert!(status.errors().is_empty(), "{:?}", status.errors());
    let survivor = (leader + 1) % 3;
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.kill(i);
    }
    let mut client = cluster.client(survivor).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = client.status().await.unwrap();
        if status.leader() == 0 {
            assert_eq!(status.errors(), ["etcdserver: no leader"]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor still names a leader 20 s after the others died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The data ranges' leaders as member `i` lists them (0 where none is known).
async fn range_leaders(cluster: &TestCluster, i: usize) -> Vec<u64> {
    common::ranges::ranges(cluster, i)
        .await
        .expect("the member lists its ranges")
        .iter()
        .map(|range| range.leader)
        .collect()
}

/// MoveLeader asked of the first range's leader (found again if spreading moved it
/// meanwhile), to the next member in `ids` (the members' ids by index): the index of the
/// member it was asked of.
async fn move_leader_to_the_next(cluster: &TestCluster, ids: &[u64]) -> usize {
    let mut drained = cluster.wait_for_leader().await;
    for attempt in 1..=3 {
        let target = ids[(drained + 1) % 3];
        match cluster.client(drained).await.move_leader(target).await {
            Ok(_) => break,
            Err(error) => {
                assert!(attempt < 3, "MoveLeader failed: {error}");
                eprintln!("MoveLeader, attempt {attempt}: {error}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                drained = cluster.wait_for_leader().await;
            }
        }
    }
    drained
}

/// MoveLeader on a keyspace in ranges moves every leadership of the member away, as an
/// operator draining it before a stop expects, and the other members' spreading of
/// leaders hands it none back meanwhile (it moved the first range's only, and
/// spreading would have given the drained member its share again within seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_drains_every_leadership_of_the_member() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    common::ranges::split_in_three(&cluster).await;
    // Every range has a leader, and the leaders had time to spread over the members.
    let mut ids = Vec::new();
    for i in 0..3 {
        let status = cluster.client(i).await.status().await.unwrap();
        ids.push(status.header().unwrap().member_id());
    }
    // Settled: the same leaders in two looks 3 s apart (spreading moves one range per
    // look, one look in 2-2.25 s after a move).
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut before = Vec::new();
    loop {
        let leaders = range_leaders(&cluster, 0).await;
        let known = leaders.len() == 3 && leaders.iter().all(|id| ids.contains(id));
        if known && leaders == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ranges' leaders do not settle: {leaders:?} over {ids:?}"
        );
        before = leaders;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let drained = move_leader_to_the_next(&cluster, &ids).await;
    // Every range's and the meta range's leadership leaves (the first range's before
    // the answer, the others right after): the member leads no group at all (the gauge
    // is set once a round of its event loop has seen the moves).
    let groups_led =
        || common::metrics(cluster.members[drained].client_port)["ostrakon_raft_groups_led"];
    let deadline = Instant::now() + Duration::from_secs(5);
    while groups_led() != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the drained member still leads {} groups",
            groups_led()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the spreading's pauses and looks: still none.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(
            groups_led(),
            0.0,
            "the drained member was handed a leadership"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Nine ranges (split at c, e, ... q), once every member knows them: the members' ids
/// by index.
async fn split_in_nine(cluster: &TestCluster) -> Vec<u64> {
    cluster.wait_for_leader().await;
    let keys = ["c", "e", "g", "i", "k", "m", "o", "q"];
    let mut args = vec!["ranges", "split"];
    args.extend(keys);
    let endpoint = cluster.host_port(0);
    args.extend(["--endpoint", &endpoint]);
    let (ok, out, err) = cluster.ostrakon(&args);
    assert!(ok, "split failed: {out} {err}");
    let mut spans = vec![("", "c")];
    spans.extend(keys.windows(2).map(|pair| (pair[0], pair[1])));
    spans.push(("q", ""));
    common::ranges::wait_for_spans(cluster, &spans).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let status = cluster.client(i).await.status().await.unwrap();
        ids.push(status.header().unwrap().member_id());
    }
    ids
}

/// Waits until member `heir` sees every range led by itself and member `drained`
/// leads no group, within `within`.
async fn wait_until_all_led_by(
    cluster: &TestCluster,
    ids: &[u64],
    heir: usize,
    drained: usize,
    within: Duration,
) {
    let groups_led =
        || common::metrics(cluster.members[drained].client_port)["ostrakon_raft_groups_led"];
    let start = Instant::now();
    let deadline = start + within;
    loop {
        let leaders = range_leaders(cluster, heir).await;
        if leaders.iter().all(|&id| id == ids[heir]) && groups_led() == 0.0 {
            eprintln!("every range led by the heir after {:?}", start.elapsed());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ranges are led by {leaders:?} ({} by the drained member {:x}), not all by {:x}",
            groups_led(),
            ids[drained],
            ids[heir]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A MoveLeader whose target dies as its leaderships move: the drained member hands
/// what it still leads, and what it wins of the dead target's, to the member left, at
/// once. Its passes waited a request timeout for each move to the dead target, three
/// passes, and the drain took over only after (found by CI: 21 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_target_dies_hands_its_leaderships_to_the_member_left() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let ids = split_in_nine(&cluster).await;
    let drained = move_leader_to_the_next(&cluster, &ids).await;
    let target = (drained + 1) % 3;
    cluster.kill(target);
    let heir = 3 - drained - target;
    wait_until_all_led_by(&cluster, &ids, heir, drained, Duration::from_secs(15)).await;
}

/// A member drained by MoveLeader that wins a range's election afterwards (the range's
/// leader died, and a drained voter campaigns as any other) hands that leadership away
/// too: it kept it, and the count rule, which evens counts out, left it about half the
/// dead member's ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_member_hands_away_leaderships_it_wins() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let ids = split_in_nine(&cluster).await;
    let drained = move_leader_to_the_next(&cluster, &ids).await;
    let groups_led = |cluster: &TestCluster, i: usize| {
        common::metrics(cluster.members[i].client_port)["ostrakon_raft_groups_led"]
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while groups_led(&cluster, drained) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the drained member still leads {} groups",
            groups_led(&cluster, drained)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // MoveLeader's passes are over (3, a second apart, each quick with nothing left to
    // move); the drain holds for a minute.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The member that took them dies: its ranges elect among the two left.
    let victim = (0..3)
        .filter(|&i| i != drained)
        .max_by_key(|&i| groups_led(&cluster, i) as u64)
        .unwrap();
    let heir = 3 - drained - victim;
    assert!(groups_led(&cluster, victim) > 0.0);
    cluster.kill(victim);
    wait_until_all_led_by(&cluster, &ids, heir, drained, Duration::from_secs(15)).await;
}
