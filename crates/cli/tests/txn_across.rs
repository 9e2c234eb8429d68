//! Writes whose keys fall in several ranges, on real processes: DeleteRange and Txn
//! across ranges take effect at one revision, all or nothing, seen whole by readers and
//! watchers; concurrent transfers between ranges keep their total; a coordinator that
//! dies after its prepares or after its commit leaves nothing stuck.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::ranges::split_at_m;
use common::{status_of, TestCluster};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

/// A watcher, through member `i`, of every key from "a" to "z", from the next revision.
async fn watch_from_now(
    cluster: &TestCluster,
    i: usize,
) -> (etcd_client::Watcher, etcd_client::WatchStream) {
    let mut client = cluster.client(i).await;
    let now = client.get("a", None).await.unwrap();
    let now = now.header().unwrap().revision();
    let options = WatchOptions::new()
        .with_range("z")
        .with_start_revision(now + 1);
    client.watch("a", Some(options)).await.unwrap()
}

/// Every live key from "a" to "z" with its value and mod revision.
async fn everything(client: &mut etcd_client::Client) -> BTreeMap<String, (String, i64)> {
    let got = client
        .get("a", Some(GetOptions::new().with_range("z")))
        .await
        .unwrap();
    got.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                (kv.value_str().unwrap().to_string(), kv.mod_revision()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_across_ranges_take_effect_at_one_revision_all_or_nothing() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    for key in ["a", "k", "m", "x"] {
        client.put(key, "1", None).await.unwrap();
    }
    split_at_m(&cluster).await;
    let (_watcher, mut watch) = watch_from_now(&cluster, 2).await;

    // A DeleteRange across both ranges: every key gone at one revision.
    let mut member1 = cluster.client(1).await;
    let deleted = member1
        .delete(
            "k",
            Some(DeleteOptions::new().with_range("z").with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 3);
    let prev: Vec<&str> = deleted
        .prev_kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap())
        .collect();
    assert_eq!(prev, ["k", "m", "x"]);
    let delete_revision = deleted.header().unwrap().revision();
    let left: Vec<String> = everything(&mut client).await.into_keys().collect();
    assert_eq!(left, ["a"]);

    // A Txn across both: its compare decides for every range, its writes share one
    // revision, its reads see the state before it.
    let mut member2 = cluster.client(2).await;
    let holds = Compare::value("a", CompareOp::Equal, "1");
    let txn = Txn::new().when([holds.clone()]).and_then([
        TxnOp::put("k", "2", Some(PutOptions::new().with_prev_key())),
        TxnOp::put("y", "2", None),
        TxnOp::get("a", Some(GetOptions::new().with_range("z"))),
    ]);
    let done = member2.txn(txn).await.unwrap();
    assert!(done.succeeded());
    let txn_revision = done.header().unwrap().revision();
    assert!(txn_revision > delete_revision);
    let now = everything(&mut client).await;
    assert_eq!(now["k"], ("2".to_string(), txn_revision));
    assert_eq!(now["y"], ("2".to_string(), txn_revision));
    let missed = Compare::value("a", CompareOp::Equal, "nope");
    let txn = Txn::new()
        .when([missed])
        .and_then([TxnOp::put("a", "never", None)])
        .or_else([TxnOp::put("a", "3", None), TxnOp::put("z0", "3", None)]);
    let done = client.txn(txn).await.unwrap();
    assert!(!done.succeeded());
    let failure_revision = done.header().unwrap().revision();
    let now = everything(&mut client).await;
    assert_eq!(now["a"], ("3".to_string(), failure_revision));
    assert!(!now.contains_key("z0"), "z0 is past the read's end");
    let z0 = client.get("z0", None).await.unwrap();
    assert_eq!(z0.kvs()[0].mod_revision(), failure_revision);

    // One refused as a whole (a put that keeps the value of a missing key): nothing
    // written, nothing left locked.
    let refused = client
        .txn(Txn::new().and_then([
            TxnOp::put("b", "4", None),
            TxnOp::put("q", "", Some(PutOptions::new().with_ignore_value())),
        ]))
        .await
        .unwrap_err();
    let status = status_of(refused);
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(client.get("b", None).await.unwrap().kvs().is_empty());
    client.put("b", "5", None).await.unwrap();
    client.put("q", "5", None).await.unwrap();

    // The watcher got each of those revisions once, whole, in one response each.
    let expected: Vec<(i64, Vec<&str>)> = vec![
        (delete_revision, vec!["k", "m", "x"]),
        (txn_revision, vec!["k", "y"]),
        // ("z0" is past the watch's end.)
        (failure_revision, vec!["a"]),
    ];
    let mut seen: Vec<(i64, Vec<String>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen
        .last()
        .is_none_or(|(revision, _)| *revision < failure_revision)
        && Instant::now() < deadline
    {
        let Ok(Ok(Some(response))) =
            tokio::time::timeout(Duration::from_secs(1), watch.message()).await
        else {
            continue;
        };
        let mut by_revision: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for event in response.events() {
            let kv = event.kv().unwrap();
            by_revision
                .entry(kv.mod_revision())
                .or_default()
                .push(kv.key_str().unwrap().to_string());
        }
        for (revision, mut keys) in by_revision {
            assert!(
                seen.iter()
                    .all(|(seen_revision, _)| *seen_revision < revision),
                "revision {revision} came again or out of order: {seen:?}"
            );
            keys.sort();
            if revision <= failure_revision {
                seen.push((revision, keys));
            }
        }
    }
    let expected: Vec<(i64, Vec<String>)> = expected
        .into_iter()
        .map(|(revision, keys)| (revision, keys.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(seen, expected);
}

/// Two accounts, one in each range: transfers between them move one unit at a time.
const ACCOUNTS: [&str; 2] = ["b-account", "y-account"];
const OPENING_BALANCE: i64 = 100;

/// Both balances at one revision (a read across both ranges), with their revisions.
async fn balances(
    client: &mut etcd_client::Client,
    serializable: bool,
) -> Result<[(i64, i64); 2], etcd_client::Error> {
    let mut options = GetOptions::new().with_range("z");
    if serializable {
        options = options.with_serializable();
    }
    let got = client.get(ACCOUNTS[0], Some(options)).await?;
    assert_eq!(got.kvs().len(), 2, "{got:?}");
    let balance = |at: usize| {
        let kv = &got.kvs()[at];
        (
            kv.value_str().unwrap().parse::<i64>().unwrap(),
            kv.mod_revision(),
        )
    };
    Ok([balance(0), balance(1)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_across_ranges_keep_their_total() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    for account in ACCOUNTS {
        client
            .put(account, OPENING_BALANCE.to_string(), None)
            .await
            .unwrap();
    }
    split_at_m(&cluster).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut transfers = tokio::task::JoinSet::new();
    for member in 0..3 {
        let mut client = cluster.client(member).await;
        transfers.spawn(async move {
            let mut committed = 0;
            for _ in 0..15 {
                if Instant::now() > deadline {
                    break;
                }
                let [(from, from_revision), (to, to_revision)] =
                    balances(&mut client, false).await.unwrap();
                let txn = Txn::new()
                    .when([
                        Compare::mod_revision(ACCOUNTS[0], CompareOp::Equal, from_revision),
                        Compare::mod_revision(ACCOUNTS[1], CompareOp::Equal, to_revision),
                    ])
                    .and_then([
                        TxnOp::put(ACCOUNTS[0], (from - 1).to_string(), None),
                        TxnOp::put(ACCOUNTS[1], (to + 1).to_string(), None),
                    ]);
                if client.txn(txn).await.unwrap().succeeded() {
                    committed += 1;
                }
            }
            committed
        });
    }
    // Readers of both accounts at one revision, linearizable and serializable, on other
    // members, while the transfers run: the total never changes.
    let mut reads = 0;
    let mut committed = 0;
    let mut linearizable = cluster.client(1).await;
    let mut serializable = cluster.client(2).await;
    while !transfers.is_empty() {
        for (client, local) in [(&mut linearizable, false), (&mut serializable, true)] {
            let [(from, _), (to, _)] = balances(client, local).await.unwrap();
            assert_eq!(
                from + to,
                2 * OPENING_BALANCE,
                "a read saw part of a transfer"
            );
            reads += 1;
        }
        while let Some(done) = transfers.try_join_next() {
            committed += done.unwrap();
        }
    }
    assert!(committed > 0, "no transfer committed");
    assert!(reads > 0);
    // Every transfer that answered success is in the balances, and no other, as every
    // member serves them.
    for member in 0..3 {
        let mut client = cluster.client(member).await;
        let [(from, _), (to, _)] = balances(&mut client, false).await.unwrap();
        assert_eq!(
            (from, to),
            (OPENING_BALANCE - committed, OPENING_BALANCE + committed),
            "member {member}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_that_dies_leaves_nothing_stuck() {
    for failpoint in ["after-prepare", "after-commit"] {
        let cluster = TestCluster::start_with_env(
            3,
            &[],
            &[("OSTRAKON_FAILPOINT_TXN_COORDINATOR", failpoint)],
        )
        .await;
        cluster.wait_for_leader().await;
        let mut client = cluster.client(0).await;
        client.put("a", "1", None).await.unwrap();
        client.put("x", "1", None).await.unwrap();
        split_at_m(&cluster).await;
        let (_watcher, mut watch) = watch_from_now(&cluster, 1).await;
        // The coordinator stops as if it died: the client hears nothing definite.
        let lost = client
            .txn(Txn::new().and_then([TxnOp::put("a", "2", None), TxnOp::put("x", "2", None)]))
            .await;
        assert!(lost.is_err(), "{failpoint}: {lost:?}");
        // Its locks hold readers and writers of its keys until a range leader finds
        // them stale and ends them: aborted before the commit, finished after it.
        let began = Instant::now();
        let mut other = cluster.client(2).await;
        let now = everything(&mut other).await;
        let (a, x) = (&now["a"], &now["x"]);
        match failpoint {
            "after-prepare" => assert_eq!((a.0.as_str(), x.0.as_str()), ("1", "1")),
            _ => {
                assert_eq!((a.0.as_str(), x.0.as_str()), ("2", "2"));
                assert_eq!(a.1, x.1, "one revision for both writes");
            }
        }
        other.put("x", "3", None).await.unwrap();
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{failpoint}: the locks took {:?} to go",
            began.elapsed()
        );
        assert_eq!(everything(&mut other).await["x"].0, "3");
        // A watcher of both ranges got the transaction whole, or not at all, then the
        // put.
        let mut first = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while first.is_empty() && Instant::now() < deadline {
            if let Ok(Ok(Some(response))) =
                tokio::time::timeout(Duration::from_secs(1), watch.message()).await
            {
                first = response
                    .events()
                    .iter()
                    .map(|event| {
                        let kv = event.kv().unwrap();
                        (
                            kv.key_str().unwrap().to_string(),
                            kv.value_str().unwrap().to_string(),
                        )
                    })
                    .collect();
            }
        }
        let pair = |value: &str| {
            vec![
                ("a".to_string(), value.to_string()),
                ("x".to_string(), value.to_string()),
            ]
        };
        let expected = match failpoint {
            "after-prepare" => vec![("x".to_string(), "3".to_string())],
            _ => [pair("2"), vec![("x".to_string(), "3".to_string())]].concat(),
        };
        assert!(
            first == expected || first == expected[..expected.len().min(2)],
            "{failpoint}: the watcher's first response {first:?}"
        );
    }
}

/// Records of one outcome (`aborted` or `committed`) kept by the ranges the members
/// lead, summed over the members.
async fn records_kept(cluster: &TestCluster, outcome: &str) -> f64 {
    metric_summed(cluster, &format!("ostrakon_txn_records_{outcome}")).await
}

/// The metric `name` summed over the members.
async fn metric_summed(cluster: &TestCluster, name: &str) -> f64 {
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        ports.iter().map(|&port| common::metrics(port)[&name]).sum()
    })
    .await
    .unwrap()
}

/// A transaction across "a" and "x" whose coordinator stops as if it died at
/// `failpoint`, on a cluster whose horizons stay 4 s behind the oracle's time instead
/// of 10 minutes; returns the cluster once its primary keeps the transaction's record
/// (the pushers decided it without the coordinator).
async fn transaction_left_by_its_coordinator(failpoint: &str, outcome: &str) -> TestCluster {
    let (cluster, lost) = transfer_with_failpoint(failpoint).await;
    assert!(lost.is_err(), "{lost:?}");
    until_a_record_is_kept(&cluster, outcome).await;
    cluster
}

/// A cluster whose coordinators stop at `failpoint`, with horizons 4 s behind the
/// oracle's time, "a" and "x" put, and the keyspace split at "m"; and the answer to a
/// transaction across both ranges.
async fn transfer_with_failpoint(
    failpoint: &str,
) -> (
    TestCluster,
    Result<etcd_client::TxnResponse, etcd_client::Error>,
) {
    let cluster = TestCluster::start_with_env(
        3,
        &[],
        &[
            ("OSTRAKON_FAILPOINT_TXN_COORDINATOR", failpoint),
            ("OSTRAKON_TXN_HORIZON_LAG_MS", "4000"),
        ],
    )
    .await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    client.put("a", "1", None).await.unwrap();
    client.put("x", "1", None).await.unwrap();
    split_at_m(&cluster).await;
    let answer = client
        .txn(Txn::new().and_then([TxnOp::put("a", "2", None), TxnOp::put("x", "2", None)]))
        .await;
    (cluster, answer)
}

/// Waits (20 s at most) until the ranges keep a record of `outcome`.
async fn until_a_record_is_kept(cluster: &TestCluster, outcome: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while records_kept(cluster, outcome).await < 1.0 {
        assert!(Instant::now() < deadline, "no {outcome} record was kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes through member 1 until no record of `outcome` is kept (the oracle's time
/// moves with writes, and the horizons follow it), within 30 s; returns how many.
async fn write_until_forgotten(cluster: &TestCluster, outcome: &str) -> u64 {
    let mut other = cluster.client(1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut puts = 0;
    while records_kept(cluster, outcome).await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the {outcome} record was kept past the horizon ({puts} puts later)"
        );
        puts += 1;
        other.put("b", puts.to_string(), None).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    puts
}

/// The abort the pushers record is forgotten once the primary's horizon passes the
/// transaction's birth, and the transaction stays aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_records_are_forgotten_once_the_horizon_passes() {
    let cluster = transaction_left_by_its_coordinator("after-prepare", "aborted").await;
    let puts = write_until_forgotten(&cluster, "aborted").await;
    let now = everything(&mut cluster.client(2).await).await;
    assert_eq!((now["a"].0.as_str(), now["x"].0.as_str()), ("1", "1"));
    assert_eq!(now["b"].0, puts.to_string());
}

/// A committed transaction its coordinator left is finished by the pushers in every
/// range, and its record forgotten once the horizon passes its birth (not at once: its
/// coordinator, if alive, may still ask how it ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_a_pusher_finished_are_forgotten() {
    let cluster = transaction_left_by_its_coordinator("after-commit", "committed").await;
    write_until_forgotten(&cluster, "committed").await;
    let now = everything(&mut cluster.client(2).await).await;
    assert_eq!((now["a"].0.as_str(), now["x"].0.as_str()), ("2", "2"));
    assert_eq!(now["a"].1, now["x"].1, "one revision for both writes");
}

/// A committed transaction whose coordinator's forget was lost (every try failed; or a
/// late copy of its commit recorded it again after the forget) leaves a committed record
/// and no lock for a pusher to find: once old, the primary's leader finishes it and the
/// horizon forgets it. Before, it was kept for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_records_whose_forget_was_lost_are_finished_and_forgotten() {
    let (cluster, done) = transfer_with_failpoint("lose-forget").await;
    assert!(done.unwrap().succeeded());
    until_a_record_is_kept(&cluster, "committed").await;
    write_until_forgotten(&cluster, "committed").await;
    let finished = metric_summed(&cluster, "ostrakon_txn_records_finished_late_total").await;
    // At least once: a finish whose mark was lost is finished again at a later look
    // (or by another leader), counted again.
    assert!(finished >= 1.0, "the leader finished the record");
    let now = everything(&mut cluster.client(2).await).await;
    assert_eq!((now["a"].0.as_str(), now["x"].0.as_str()), ("2", "2"));
    assert_eq!(now["a"].1, now["x"].1, "one revision for both writes");
}

/// A client's transactions one after the other over the same two ranges: each one's
/// part in the second range is written after its client is answered, and the next
/// one's prepare there is proposed behind that resolve rather than turned away until it
/// applies (`Replica::unlocking`). Every transaction commits, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_next_transaction_queues_behind_its_last_ones_resolve() {
    const TRANSACTIONS: u64 = 40;
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    split_at_m(&cluster).await;
    for n in 1..=TRANSACTIONS {
        let txn = Txn::new().and_then([
            TxnOp::put("a", n.to_string(), None),
            TxnOp::put("x", n.to_string(), None),
        ]);
        assert!(client.txn(txn).await.unwrap().succeeded());
    }
    for key in ["a", "x"] {
        let got = client.get(key, None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), TRANSACTIONS.to_string().as_bytes());
        assert_eq!(got.kvs()[0].version(), TRANSACTIONS as i64);
    }
    let behind = metric_summed(&cluster, "ostrakon_txn_prepares_behind_unlocks_total").await;
    // Most of them do (782 of 1,000 in a benchmark run); one that reaches the range
    // before the resolve is turned away and tried again 1 ms later.
    assert!(
        behind > 0.0,
        "no prepare went behind its predecessor's resolve"
    );
    // The coordinator timed each attempt's steps (an attempt tried again, rarely, counts
    // twice).
    for phase in ["prepare", "evaluate", "commit"] {
        let name = format!("ostrakon_txn_across_phase_seconds_count{{phase=\"{phase}\"}}");
        let timed = metric_summed_where_present(&cluster, &name).await;
        assert!(timed >= TRANSACTIONS as f64, "{phase} steps timed: {timed}");
    }
    // Their records are forgotten, in bursts (`txn_forgets`), without waiting for the
    // horizon (10 minutes behind).
    let deadline = Instant::now() + Duration::from_secs(10);
    while records_kept(&cluster, "committed").await > 0.0 {
        assert!(Instant::now() < deadline, "committed records kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The metric `name` summed over the members that have it.
async fn metric_summed_where_present(cluster: &TestCluster, name: &str) -> f64 {
    let ports: Vec<u16> = cluster.members.iter().map(|m| m.client_port).collect();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || {
        ports
            .iter()
            .filter_map(|&port| common::metrics(port).get(&name).copied())
            .sum()
    })
    .await
    .unwrap()
}

/// Many clients whose every Txn spans the same two ranges, on every member: a prepare
/// that meets another transaction's hold waits in the range's line (`prepare_line`),
/// and every Txn commits, none turned away past its deadline; plain puts to the same
/// ranges wait in the lines too, ahead of the prepares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_on_the_same_ranges_wait_in_line_and_all_commit() {
    const CLIENTS: usize = 12;
    const TRANSACTIONS_EACH: usize = 15;
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    split_at_m(&cluster).await;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mut client = cluster.client(c % 3).await;
        clients.spawn(async move {
            let mut slowest = Duration::ZERO;
            for n in 1..=TRANSACTIONS_EACH {
                let txn = Txn::new().and_then([
                    TxnOp::put(format!("a{c}"), n.to_string(), None),
                    TxnOp::put(format!("x{c}"), n.to_string(), None),
                ]);
                let started = Instant::now();
                let answer = client.txn(txn).await;
                assert!(
                    answer.as_ref().is_ok_and(|answer| answer.succeeded()),
                    "client {c}'s Txn {n}: {answer:?}"
                );
                slowest = slowest.max(started.elapsed());
            }
            slowest
        });
    }
    // Plain puts into both ranges meanwhile, through every member: one sent to the
    // range's leader waits in the range's line, ahead of the prepares, for the lock in
    // its way (one forwarded is answered "locked" and routed again); none is turned
    // away for good.
    let mut puts = tokio::task::JoinSet::new();
    for member in 0..3 {
        let mut putter = cluster.client(member).await;
        puts.spawn(async move {
            let mut put = 0;
            for n in 0..30 {
                let key = if n % 2 == 0 { "b-plain" } else { "y-plain" };
                putter
                    .put(format!("{key}{member}"), n.to_string(), None)
                    .await
                    .unwrap();
                put += 1;
            }
            put
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(done) = clients.join_next().await {
        slowest = slowest.max(done.unwrap());
    }
    eprintln!("the slowest Txn took {slowest:?}");
    let mut put = 0;
    while let Some(done) = puts.join_next().await {
        put += done.unwrap();
    }
    assert_eq!(put, 90);
    let mut client = cluster.client(0).await;
    for c in 0..CLIENTS {
        for key in [format!("a{c}"), format!("x{c}")] {
            let got = client.get(key.as_str(), None).await.unwrap();
            assert_eq!(
                got.kvs()[0].value(),
                TRANSACTIONS_EACH.to_string().as_bytes(),
                "{key}"
            );
        }
    }
    let parked = metric_summed(&cluster, "ostrakon_txn_prepares_parked_total").await;
    assert!(parked > 0.0, "no prepare waited in a range's line");
    let in_line = metric_summed_where_present(&cluster, "ostrakon_writes_in_line").await;
    assert_eq!(in_line, 0.0, "writes left in line");
    let writes_parked = metric_summed(&cluster, "ostrakon_writes_parked_total").await;
    assert!(
        writes_parked > 0.0,
        "no plain write waited in a range's line"
    );
}
