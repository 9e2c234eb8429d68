//! etcd's KV API against a real 3-member cluster, through the etcd-client crate, checked
//! against etcd's documented behaviour. Each member is used: followers forward writes and
//! serve linearizable reads through ReadIndex.

mod common;

use common::{assert_header_reached, splits_eagerly, status_of, Revisions, TestCluster};
use etcd_client::{
    CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_semantics_match_etcd_on_every_member() {
    let cluster = TestCluster::start(3, &[]).await;
    let mut c0 = cluster.client(0).await;
    let mut c1 = cluster.client(1).await;
    let mut c2 = cluster.client(2).await;

    // Writes through any member; the first write of an empty store is revision 2.
    let mut revs = Revisions::default();
    let put = c0.put("k1", "v1", None).await.unwrap();
    let header = put.header().unwrap();
    revs.wrote(2, header.revision());
    assert!(header.cluster_id() != 0 && header.member_id() != 0 && header.raft_term() >= 2);
    let put = c1.put("k2", "v2", None).await.unwrap();
    revs.wrote(3, put.header().unwrap().revision());
    let put = c2
        .put("k1", "v1b", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(put.prev_key().unwrap().value(), b"v1");
    revs.wrote(4, put.header().unwrap().revision());

    // A linearizable read on any member sees every acknowledged write.
    for client in [&mut c0, &mut c1, &mut c2] {
        let got = client.get("k1", None).await.unwrap();
        let kv = &got.kvs()[0];
        assert_eq!(
            (
                kv.value(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version()
            ),
            (&b"v1b"[..], revs.of(2), revs.of(4), 2)
        );
    }
    let serializable = c2
        .get("k2", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    // c2 just served a linearizable read at revision 4, so its local state holds k2.
    assert_eq!(serializable.kvs()[0].value(), b"v2");

    // Prefix, limit and more, sort, keys-only, count-only, from-key.
    let put = c0.put("k3", "v0", None).await.unwrap();
    revs.wrote(5, put.header().unwrap().revision());
    let put = c0.put("other", "x", None).await.unwrap();
    revs.wrote(6, put.header().unwrap().revision());
    let prefix = c1
        .get("k", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(
        prefix
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap())
            .collect::<Vec<_>>(),
        ["k1", "k2", "k3"]
    );
    let limited = c1
        .get("k", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(
        (limited.kvs().len(), limited.more(), limited.count()),
        (2, true, 3)
    );
    let sorted = c1
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Value, SortOrder::Ascend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        sorted
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap())
            .collect::<Vec<_>>(),
        ["k3", "k1", "k2"]
    );
    let keys_only = c1
        .get("k", Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    let count_only = c1
        .get("k", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert_eq!((count_only.kvs().len(), count_only.count()), (0, 3));
    let from_key = c1
        .get("k2", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(from_key.count(), 3, "k2, k3, other");
    let min_mod = c1
        .get(
            "k",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(revs.of(5)),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        min_mod
            .kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap())
            .collect::<Vec<_>>(),
        ["k3"]
    );

    // Reads at a past revision.
    let past = c2
        .get("k1", Some(GetOptions::new().with_revision(revs.of(3))))
        .await
        .unwrap();
    assert_eq!(past.kvs()[0].value(), b"v1");
    // The header carries the current revision.
    revs.assert_header(past.header().unwrap().revision(), 6);

    // Txn: compare, both branches, one revision.
    let txn = Txn::new()
        .when(vec![
            Compare::value("k1", CompareOp::Equal, "v1b"),
            Compare::version("k2", CompareOp::Greater, 0),
        ])
        .and_then(vec![
            TxnOp::put("t1", "a", None),
            TxnOp::put("t2", "a", None),
            TxnOp::get("t1", None),
        ])
        .or_else(vec![TxnOp::put("t1", "b", None)]);
    let response = c1.txn(txn).await.unwrap();
    assert!(response.succeeded());
    revs.wrote(7, response.header().unwrap().revision());
    let t = c0
        .get("t", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(t.kvs().iter().all(|kv| kv.mod_revision() == revs.of(7)));
    let failing = Txn::new()
        .when(vec![Compare::value("missing", CompareOp::NotEqual, "x")])
        .and_then(vec![TxnOp::put("t1", "yes", None)])
        .or_else(vec![TxnOp::put("t1", "no", None)]);
    assert!(
        !c2.txn(failing).await.unwrap().succeeded(),
        "a VALUE compare on a missing key fails"
    );
    assert_eq!(c0.get("t1", None).await.unwrap().kvs()[0].value(), b"no");

    // Delete with prev_kv; deleting nothing makes no revision.
    let deleted = c2
        .delete(
            "t",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!((deleted.deleted(), deleted.prev_kvs().len()), (2, 2));
    let revision = deleted.header().unwrap().revision();
    let nothing = c2
        .delete("t", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(nothing.deleted(), 0);
    assert_header_reached(nothing.header().unwrap().revision(), revision);

    // Compaction, then etcd's errors for compacted and future revisions.
    c0.compact(revs.of(5), Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let compacted = status_of(
        c1.get("k1", Some(GetOptions::new().with_revision(revs.of(3))))
            .await
            .unwrap_err(),
    );
    assert_eq!(compacted.code(), tonic::Code::OutOfRange);
    assert_eq!(
        compacted.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    let future_revision = if splits_eagerly() {
        2 * revs.of(6) // the oracle's revisions grow with time: twice is far ahead
    } else {
        1000
    };
    let future = status_of(
        c1.get("k1", Some(GetOptions::new().with_revision(future_revision)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        future.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    let again = status_of(c0.compact(revs.of(5), None).await.unwrap_err());
    assert_eq!(
        again.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcds_errors_and_change_nothing() {
    let cluster =
        TestCluster::start(3, &["--max-txn-ops", "4", "--max-request-bytes", "10000"]).await;
    let mut client = cluster.client(1).await;
    let written = client.put("a", "1", None).await.unwrap();
    let written = written.header().unwrap().revision();

    let empty = status_of(client.put("", "x", None).await.unwrap_err());
    assert_eq!(
        (empty.code(), empty.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: key is not provided"
        )
    );
    let empty_get = status_of(client.get("", None).await.unwrap_err());
    assert_eq!(empty_get.message(), "etcdserver: key is not provided");

    let too_many = Txn::new().and_then(
        (0..5)
            .map(|i| TxnOp::put(format!("k{i}"), "v", None))
            .collect::<Vec<_>>(),
    );
    let status = status_of(client.txn(too_many).await.unwrap_err());
    assert_eq!(
        (status.code(), status.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )
    );

    let twice = Txn::new().and_then(vec![TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let status = status_of(client.txn(twice).await.unwrap_err());
    assert_eq!(
        status.message(),
        "etcdserver: duplicate key given in txn request"
    );

    let large = status_of(
        client
            .put("big", vec![b'x'; 20_000], None)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (large.code(), large.message()),
        (
            tonic::Code::InvalidArgument,
            "etcdserver: request is too large"
        )
    );

    let ignore = status_of(
        client
            .put("nokey", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .unwrap_err(),
    );
    assert_eq!(ignore.message(), "etcdserver: key not found");
    let lease = status_of(
        client
            .put("leased", "v", Some(PutOptions::new().with_lease(42)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (lease.code(), lease.message()),
        (
            tonic::Code::NotFound,
            "etcdserver: requested lease not found"
        )
    );

    let after = client.get("a", None).await.unwrap();
    // No refused request made a revision: the header is still at the put's (on a
    // keyspace in ranges, at the oracle's present; the put still the last write).
    assert_header_reached(after.header().unwrap().revision(), written);
    assert_eq!(after.kvs()[0].mod_revision(), written);
    let all = client
        .get("\0", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(all.count(), 1, "only the first put is stored");
}

/// A lone member commits an entry as soon as its own WAL has it; it used to wait for the
/// next tick, so every write took up to a heartbeat interval (1 s here, 5 puts: 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_member_answers_writes_without_waiting_for_a_tick() {
    let cluster = TestCluster::start(
        1,
        &["--heartbeat-interval", "1000", "--election-timeout", "5000"],
    )
    .await;
    let mut client = cluster.client(0).await;
    client.put("warm", "up", None).await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..5 {
        client.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let elapsed = started.elapsed();
    // Generous for a loaded machine, and far below the 5 ticks the bug cost.
    assert!(
        elapsed < std::time::Duration::from_millis(2500),
        "5 puts took {elapsed:?}: writes wait for ticks"
    );
}

/// The test harness itself: a port taken by another process between `free_port` and
/// the member's bind (CI, 2026-12-04) makes a new cluster start again on new ports,
/// rather than wait 30 s for a member that exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_whose_port_was_taken_starts_on_new_ports() {
    // The harness's free port may be taken by another test before this one holds it:
    // a new cluster's ports then.
    let (mut cluster, taken, _holder) = (0..10)
        .find_map(|_| {
            let cluster = TestCluster::unstarted(3, &[]);
            let taken = cluster.members[0].client_port;
            let holder = std::net::TcpListener::bind(("127.0.0.1", taken)).ok()?;
            Some((cluster, taken, holder))
        })
        .expect("a free port to hold");
    cluster.start_members().await;
    assert_ne!(
        cluster.members[0].client_port, taken,
        "started on new ports"
    );
    let mut client = cluster.client(0).await;
    client.put("k", "v", None).await.unwrap();
    let got = client.get("k", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
}

/// A Txn without writes is served as a read (etcd's behaviour): a read index and the
/// local store, no raft entry. Before, each one was proposed, written to every WAL and
/// fsync'd. It must still see every write acknowledged before it, on any member, with
/// one revision for its compares and reads, and etcd's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_txn_is_a_linearizable_read_without_a_raft_entry() {
    let cluster = TestCluster::start(3, &[]).await;
    let mut c0 = cluster.client(0).await;
    let mut c2 = cluster.client(2).await;
    let mut revs = Revisions::default();
    let put = c0.put("a", "1", None).await.unwrap();
    revs.wrote(2, put.header().unwrap().revision());
    let put = c0.put("b", "2", None).await.unwrap();
    revs.wrote(3, put.header().unwrap().revision());

    // Compares and reads at one revision, nested Txns included, through a follower or
    // the leader alike.
    let read = Txn::new()
        .when(vec![Compare::value("a", CompareOp::Equal, "1")])
        .and_then(vec![
            TxnOp::get("a", None),
            TxnOp::txn(Txn::new().and_then(vec![TxnOp::get("b", None)])),
        ])
        .or_else(vec![TxnOp::get("b", None)]);
    for client in [&mut c0, &mut c2] {
        let response = client.txn(read.clone()).await.unwrap();
        assert!(response.succeeded());
        revs.assert_header(response.header().unwrap().revision(), 3);
        let ops = response.op_responses();
        assert_eq!(ops.len(), 2);
        let etcd_client::TxnOpResponse::Get(get) = &ops[0] else {
            panic!("expected a get: {ops:?}")
        };
        assert_eq!(get.kvs()[0].value(), b"1");
        let etcd_client::TxnOpResponse::Txn(nested) = &ops[1] else {
            panic!("expected a nested txn: {ops:?}")
        };
        let etcd_client::TxnOpResponse::Get(get) = &nested.op_responses()[0] else {
            panic!("expected a get in the nested txn")
        };
        assert_eq!(get.kvs()[0].value(), b"2");
    }

    // Linearizable: a write acknowledged through one member is seen at once through
    // another, by the compare and by the read.
    for i in 0..20 {
        let put = c0.put("a", format!("v{i}"), None).await.unwrap();
        revs.wrote(4 + i, put.header().unwrap().revision());
        let seen = c2
            .txn(
                Txn::new()
                    .when(vec![Compare::value("a", CompareOp::Equal, format!("v{i}"))])
                    .and_then(vec![TxnOp::get("a", None)]),
            )
            .await
            .unwrap();
        assert!(
            seen.succeeded(),
            "round {i}: the txn missed an acknowledged write"
        );
    }

    // No raft entry: a hundred read-only Txns leave every member's committed count where
    // it was (give or take an entry the cluster writes by itself).
    let before = committed_counts(&cluster).await;
    for _ in 0..100 {
        c2.txn(read.clone()).await.unwrap();
    }
    let after = committed_counts(&cluster).await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert!(
            a - b < 10.0,
            "member {i}: {b} -> {a} committed entries for 100 reads"
        );
    }

    // etcd's error for a read below the compacted revision, inside a Txn too.
    c0.compact(revs.of(5), Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let old = Txn::new().and_then(vec![TxnOp::get(
        "a",
        Some(GetOptions::new().with_revision(revs.of(3))),
    )]);
    let status = status_of(c2.txn(old).await.unwrap_err());
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    assert_eq!(
        status.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );
}

/// Every member's count of committed raft entries.
async fn committed_counts(cluster: &TestCluster) -> Vec<f64> {
    let mut counts = Vec::new();
    for i in 0..cluster.members.len() {
        counts.push(member_metric(cluster, i, "etcd_server_proposals_committed_total").await);
    }
    counts
}

/// One metric's value from member `i`'s `/metrics`.
async fn member_metric(cluster: &TestCluster, i: usize, name: &str) -> f64 {
    let url = format!("127.0.0.1:{}", cluster.members[i].client_port);
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(url).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing"))
            .parse()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Writes a follower forwards travel many to a peer call (the forwarder), and each still
/// gets its own answer: its own revision, and the version it replaced. Each key is
/// written through each member in turn: whichever member leads its range (leaders may
/// move as the cluster spreads them, and on a keyspace in ranges each range has its
/// own), about two writes in three are forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_forwarded_together_each_get_their_own_answer() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut clients = Vec::new();
    for member in 0..3 {
        cluster.wait_member_knows_leader(member).await;
        clients.push(cluster.client(member).await);
    }
    const KEYS: usize = 60;
    const ROUNDS: usize = 5;
    let mut revisions = Vec::new();
    for round in 0..ROUNDS {
        let mut puts = tokio::task::JoinSet::new();
        for key in 0..KEYS {
            let mut client = clients[(key + round) % 3].clone();
            puts.spawn(async move {
                let key = format!("fwd/{key:02}");
                let put = client
                    .put(
                        key.clone(),
                        format!("{round}"),
                        Some(PutOptions::new().with_prev_key()),
                    )
                    .await
                    .unwrap();
                (key, put)
            });
        }
        for (key, put) in puts.join_all().await {
            revisions.push(put.header().unwrap().revision());
            match round {
                0 => assert!(put.prev_key().is_none(), "{key} had no version"),
                _ => {
                    let prev = put.prev_key().expect("the version it replaced");
                    assert_eq!(prev.value(), format!("{}", round - 1).as_bytes());
                    assert_eq!(prev.version(), round as i64);
                }
            }
        }
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        KEYS * ROUNDS,
        "two writes answered one revision"
    );
    let (mut writes, mut calls) = (0.0, 0.0);
    for member in &cluster.members {
        let metrics = common::metrics(member.client_port);
        writes += metrics["ostrakon_forward_batch_writes_sum"];
        calls += metrics["ostrakon_forward_batch_writes_count"];
    }
    assert!(
        writes >= (KEYS * ROUNDS / 2) as f64,
        "{writes} writes forwarded of {}",
        KEYS * ROUNDS
    );
    assert!(
        calls < writes,
        "{calls} calls for {writes} writes: none carried two"
    );
}

/// A batch of forwarded writes may answer more than it sent (each write's `prev_kv`):
/// answers above gRPC's default 4 MiB message still reach the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_writes_whose_answers_outweigh_them_are_answered() {
    let cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    cluster.wait_member_knows_leader(follower).await;
    let client = cluster.client(follower).await;
    const KEYS: usize = 48;
    const VALUE_BYTES: usize = 256 * 1024;
    for round in 0..2u8 {
        let mut puts = tokio::task::JoinSet::new();
        for key in 0..KEYS {
            let mut client = client.clone();
            puts.spawn(async move {
                let put = client
                    .put(
                        format!("big/{key:02}"),
                        vec![b'a' + round; VALUE_BYTES],
                        Some(PutOptions::new().with_prev_key()),
                    )
                    .await;
                (key, put)
            });
        }
        for (key, put) in puts.join_all().await {
            let put = put.unwrap_or_else(|e| panic!("put big/{key:02}: {e}"));
            if round == 1 {
                let prev = put.prev_key().expect("the version it replaced");
                assert_eq!(prev.value(), vec![b'a'; VALUE_BYTES].as_slice());
            }
        }
    }
}

/// Linearizable reads of a range on a member share raft read indexes (one in flight at
/// a time). A ReadIndex message a follower sends its leader can be lost (a full send
/// queue drops it, as does a dropped connection) and is then never answered: the reads
/// waiting for it must not wait out their whole deadline. The follower here drops its
/// first three ReadIndex messages; each is asked again after 500 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_waiting_for_a_lost_read_index_ask_again() {
    if splits_eagerly() {
        // A keyspace in ranges reads through fresh read points, not raft's ReadIndex.
        return;
    }
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut writer = cluster.client(leader).await;
    writer.put("k", "before", None).await.unwrap();
    cluster.terminate(follower);
    cluster.restart_with_env(follower, &[("OSTRAKON_TEST_DROP_READ_INDEXES", "3")]);
    cluster.wait_member_knows_leader(follower).await;
    let mut reader = cluster.client(follower).await;
    let started = std::time::Instant::now();
    for round in 0..5 {
        let value = format!("v{round}");
        writer.put("k", value.as_str(), None).await.unwrap();
        let begun = std::time::Instant::now();
        let read = reader.get("k", None).await.unwrap();
        assert_eq!(read.kvs()[0].value_str().unwrap(), value, "round {round}");
        assert!(
            begun.elapsed() < std::time::Duration::from_secs(3),
            "round {round}: a read took {:?} (the request timeout is 7 s)",
            begun.elapsed()
        );
    }
    // Three lost asks, each waited for 500 ms before the next: the reads above met them
    // (no read before these needs a read index on a member just restarted).
    eprintln!("5 reads in {:?}", started.elapsed());
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1_400),
        "the dropped read indexes were not the reads': 5 reads in {:?}",
        started.elapsed()
    );
}
