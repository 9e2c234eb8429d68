//! Leases on a keyspace in ranges, on real processes: a lease attaches to keys in any
//! range, and its revoke (a client's, or its expiry) deletes every attached key, whatever
//! ranges hold them, at one revision; splits may cut through leased keys; Lock and
//! Election names fall in any range.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::ranges::{ranges, split_at_m, split_in_three, wait_for_spans};
use common::{status_of, TestCluster};
use etcd_client::{
    EventType, GetOptions, LeaseTimeToLiveOptions, LockOptions, PutOptions, WatchOptions,
};

fn leased(lease: i64) -> Option<PutOptions> {
    Some(PutOptions::new().with_lease(lease))
}

/// A watcher, through member `i`, of every key from "a" to "z", from the next revision.
async fn watch_from_now(
    cluster: &TestCluster,
    i: usize,
) -> (etcd_client::Watcher, etcd_client::WatchStream) {
    let mut client = cluster.client(i).await;
    let now = client
        .get("a", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let options = WatchOptions::new()
        .with_range("z")
        .with_start_revision(now + 1);
    client.watch("a", Some(options)).await.unwrap()
}

/// The watch's delete events until `keys` were all deleted (bounded): key -> revision.
async fn deletes_of(watch: &mut etcd_client::WatchStream, keys: &[&str]) -> BTreeMap<String, i64> {
    let mut deleted = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !keys.iter().all(|key| deleted.contains_key(*key)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(received) = tokio::time::timeout(left, watch.message()).await else {
            panic!("deletes of {keys:?} not seen; saw {deleted:?}");
        };
        let response = received.unwrap().expect("the watch stream ended");
        for event in response.events() {
            if event.event_type() == EventType::Delete {
                let kv = event.kv().unwrap();
                deleted.insert(kv.key_str().unwrap().to_string(), kv.mod_revision());
            }
        }
    }
    deleted
}

async fn live_keys(client: &mut etcd_client::Client) -> Vec<String> {
    let got = client
        .get(
            "a",
            Some(GetOptions::new().with_range("z").with_keys_only()),
        )
        .await
        .unwrap();
    got.kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_spans_ranges_and_its_revoke_or_expiry_deletes_every_key_at_one_revision() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    client.put("a", "plain", None).await.unwrap();
    split_at_m(&cluster).await;

    // Attached in both ranges, through different members.
    let lease = cluster
        .client(1)
        .await
        .lease_grant(60, None)
        .await
        .unwrap()
        .id();
    client.put("b", "left", leased(lease)).await.unwrap();
    let mut member2 = cluster.client(2).await;
    member2.put("x", "right", leased(lease)).await.unwrap();
    let ttl = member2
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let keys: Vec<&[u8]> = ttl.keys().iter().map(|k| k.as_slice()).collect();
    assert_eq!(keys, vec![&b"b"[..], &b"x"[..]]);
    // A lease that does not exist is refused in any range, as etcd refuses it.
    let refused = client.put("y", "v", leased(lease + 1)).await.unwrap_err();
    assert_eq!(status_of(refused).code(), tonic::Code::NotFound);
    // A put keeping the key's lease (ignore_lease) finds the lease where it lives.
    member2
        .put("x", "right-2", Some(PutOptions::new().with_ignore_lease()))
        .await
        .unwrap();
    let x = client.get("x", None).await.unwrap();
    assert_eq!(
        (x.kvs()[0].value(), x.kvs()[0].lease()),
        (&b"right-2"[..], lease)
    );

    // A client's revoke: both keys go at one revision, seen whole by a watcher.
    let (_watcher, mut watch) = watch_from_now(&cluster, 2).await;
    cluster.client(1).await.lease_revoke(lease).await.unwrap();
    assert_eq!(live_keys(&mut client).await, vec!["a"]);
    let deleted = deletes_of(&mut watch, &["b", "x"]).await;
    assert_eq!(deleted["b"], deleted["x"], "{deleted:?}");
    let gone = member2.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    // A lease without keys goes too (a transaction that deletes nothing but the lease).
    let keyless = client.lease_grant(60, None).await.unwrap().id();
    member2.lease_revoke(keyless).await.unwrap();
    let gone = client.lease_time_to_live(keyless, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
    let refused = member2.lease_revoke(keyless).await.unwrap_err();
    assert_eq!(status_of(refused).code(), tonic::Code::NotFound);

    // Expiry: the same, with nobody asking.
    let expiring = client.lease_grant(2, None).await.unwrap().id();
    client.put("c", "left", leased(expiring)).await.unwrap();
    member2.put("y", "right", leased(expiring)).await.unwrap();
    let deleted = deletes_of(&mut watch, &["c", "y"]).await;
    assert_eq!(deleted["c"], deleted["y"], "{deleted:?}");
    assert_eq!(live_keys(&mut client).await, vec!["a"]);

    // A split may cut through a lease's keys; its revoke then takes the new range too.
    let kept = client.lease_grant(60, None).await.unwrap().id();
    client.put("q", "1", leased(kept)).await.unwrap();
    client.put("t", "2", leased(kept)).await.unwrap();
    let (ok, out, err) =
        cluster.ostrakon(&["ranges", "split", "s", "--endpoint", &cluster.host_port(1)]);
    assert!(ok, "split failed: {out} {err}");
    wait_for_spans(&cluster, &[("", "m"), ("m", "s"), ("s", "")]).await;
    assert_eq!(live_keys(&mut client).await, vec!["a", "q", "t"]);
    client.lease_revoke(kept).await.unwrap();
    let deleted = deletes_of(&mut watch, &["q", "t"]).await;
    assert_eq!(deleted["q"], deleted["t"], "{deleted:?}");
    assert_eq!(live_keys(&mut client).await, vec!["a"]);
}

/// A revoke's coordinator that stops after its commit (a failpoint): the ranges' leaders
/// finish it, deleting the keys in the other range too, and the lease is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_whose_coordinator_dies_after_its_commit_is_finished_by_the_ranges() {
    let cluster = TestCluster::start_with_env(
        3,
        &[],
        &[("OSTRAKON_FAILPOINT_TXN_COORDINATOR", "after-commit")],
    )
    .await;
    cluster.wait_for_leader().await;
    split_at_m(&cluster).await;
    let mut client = cluster.client(0).await;
    let lease = client.lease_grant(60, None).await.unwrap().id();
    client
        .put("b", "left", leased(lease))
        .await
        .unwrap_or_else(|error| panic!("a put in the first range is no transaction: {error}"));
    // Attaching in the other range is a transaction: its coordinator stops after the
    // commit too, and the pushers write the key.
    let _ = client.put("x", "right", leased(lease)).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while live_keys(&mut client).await != vec!["b", "x"] {
        assert!(Instant::now() < deadline, "the attach was not finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_watcher, mut watch) = watch_from_now(&cluster, 2).await;
    let lost = client.lease_revoke(lease).await;
    assert!(lost.is_err(), "{lost:?}");
    let deleted = deletes_of(&mut watch, &["b", "x"]).await;
    assert_eq!(deleted["b"], deleted["x"], "{deleted:?}");
    assert!(live_keys(&mut client).await.is_empty());
    let gone = cluster
        .client(1)
        .await
        .lease_time_to_live(lease, None)
        .await
        .unwrap();
    assert_eq!(gone.ttl(), -1);
}

/// The revision member `i`'s replica of the range starting at `start` has.
async fn range_revision(cluster: &TestCluster, i: usize, start: &str) -> i64 {
    let listed = ranges(cluster, i)
        .await
        .expect("the member lists its ranges");
    listed
        .iter()
        .find(|range| range.start == start.as_bytes())
        .unwrap_or_else(|| panic!("no range starts at {start:?}: {listed:?}"))
        .revision
}

/// A revoke locks the first range and the ranges holding the lease's keys, not every
/// range: a range without them takes no part (its revision stays where it was; a
/// range a transaction locks is raised to the transaction's revision), and keeps taking
/// writes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_takes_only_the_ranges_holding_its_keys() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    split_in_three(&cluster).await;
    let mut client = cluster.client(0).await;
    client.put("u", "bystander", None).await.unwrap();
    let lease = client.lease_grant(60, None).await.unwrap().id();
    client.put("b", "first", leased(lease)).await.unwrap();
    client.put("n", "middle", leased(lease)).await.unwrap();
    // Read through member 0, so that its replicas have every write above.
    assert_eq!(live_keys(&mut client).await, vec!["b", "n", "u"]);
    let bystander_before = range_revision(&cluster, 0, "t").await;
    let holder_before = range_revision(&cluster, 0, "m").await;

    let revoked = cluster.client(1).await.lease_revoke(lease).await.unwrap();
    let revoked_at = revoked.header().unwrap().revision();
    assert!(revoked_at > bystander_before);
    // A linearizable read of every range through member 0: it waits for the revoke's
    // locks to go, so member 0's replicas have applied every part of it.
    assert_eq!(live_keys(&mut client).await, vec!["u"]);
    // The range holding a key of the lease deleted it, and a read at the revoke's
    // revision sees it gone (its answer carried the member's own revision, below the
    // transaction's, before 2026-12-06).
    assert!(range_revision(&cluster, 0, "m").await > holder_before);
    let at_revoke = GetOptions::new().with_revision(revoked_at);
    let read = client.get("n", Some(at_revoke)).await.unwrap();
    assert!(read.kvs().is_empty(), "{:?} at {revoked_at}", read.kvs());
    assert_eq!(
        range_revision(&cluster, 0, "t").await,
        bystander_before,
        "the range without the lease's keys took part in its revoke"
    );
    let gone = client.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
}

/// Keys attached to a lease in every range, through every member, as the lease is
/// revoked: none is left behind. A revoke takes only the ranges its member sees holding
/// the lease's keys (or a lock); an attach committed after that look but before the
/// revoke's lock on the first range is found when the ranges left out are checked. The
/// rounds start the attaches at different offsets from the revoke, each range without
/// the lease's keys until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_attached_while_their_lease_is_revoked_are_never_left_behind() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    split_in_three(&cluster).await;
    let mut revoker = cluster.client(1).await;
    let mut attached = 0;
    for round in 0..16u64 {
        let lease = revoker.lease_grant(60, None).await.unwrap().id();
        let mut writers = Vec::new();
        for (i, prefix) in ["b", "n", "v", "n", "v"].into_iter().enumerate() {
            let mut client = cluster.client(i % 3).await;
            writers.push(tokio::spawn(async move {
                let mut attached = Vec::new();
                // Bounded: until the lease is gone (NotFound), or 50 puts.
                for n in 0..50 {
                    let key = format!("{prefix}{round:02}-{i}-{n:02}");
                    match client.put(key.clone(), "v", leased(lease)).await {
                        Ok(_) => attached.push(key),
                        Err(_) => break,
                    }
                }
                attached
            }));
        }
        tokio::time::sleep(Duration::from_micros(500 * round)).await;
        revoker.lease_revoke(lease).await.unwrap();
        for writer in writers {
            attached += writer.await.unwrap().len();
        }
        let mut client = cluster.client(2).await;
        let left = client
            .get("a", Some(GetOptions::new().with_range("z")))
            .await
            .unwrap();
        let with_lease: Vec<String> = left
            .kvs()
            .iter()
            .filter(|kv| kv.lease() == lease)
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect();
        assert!(
            with_lease.is_empty(),
            "round {round}: keys of the revoked lease left: {with_lease:?}"
        );
    }
    assert!(attached > 0, "no key was attached before a revoke");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_names_fall_in_any_range() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    split_at_m(&cluster).await;
    let mut first = cluster.client(0).await;
    let mut second = cluster.client(1).await;
    let lease_a = first.lease_grant(60, None).await.unwrap().id();
    let lease_b = second.lease_grant(60, None).await.unwrap().id();

    // "zz-job" falls in the second range; its owners' leases live in the first.
    let held = first
        .lock("zz-job", Some(LockOptions::new().with_lease(lease_a)))
        .await
        .unwrap();
    let held_key = held.key().to_vec();
    assert!(held_key.starts_with(b"zz-job/"));
    let mut waiter = second.clone();
    let waiting = tokio::spawn(async move {
        waiter
            .lock("zz-job", Some(LockOptions::new().with_lease(lease_b)))
            .await
            .unwrap()
            .key()
            .to_vec()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "the lock is exclusive");
    // Revoking the owner's lease hands the lock on.
    first.lease_revoke(lease_a).await.unwrap();
    let second_key = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the revoke hands the lock on")
        .unwrap();
    assert!(second_key.starts_with(b"zz-job/"));
    assert!(first.get(held_key, None).await.unwrap().kvs().is_empty());

    // An election in the second range.
    let lease_c = first.lease_grant(60, None).await.unwrap().id();
    let won = first.campaign("zz-chief", "alice", lease_c).await.unwrap();
    assert!(won.leader().unwrap().key().starts_with(b"zz-chief/"));
    let leader = cluster.client(2).await.leader("zz-chief").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"alice");
    let mut observer = cluster.client(2).await.observe("zz-chief").await.unwrap();
    let observed = tokio::time::timeout(Duration::from_secs(10), observer.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(observed.kv().unwrap().value(), b"alice");
}
