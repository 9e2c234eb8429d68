//! Quiescence on real processes: an idle cluster's group stops exchanging raft messages
//! (the nodes only ping each other), wakes for a write, and elects a new leader when
//! the quiesced leader's process is killed, through node liveness alone.

mod common;

use std::time::{Duration, Instant};

use common::{metrics, TestCluster};

/// How long an idle group may take to quiesce: a few heartbeats after the last write.
const QUIESCE_WITHIN: Duration = Duration::from_secs(5);

/// Raft messages member `i` has sent, all peers together (every non-empty batch).
fn raft_messages_sent(cluster: &TestCluster, i: usize) -> f64 {
    metrics(cluster.members[i].client_port)["ostrakon_transport_batch_messages_sum"]
}

async fn wait_until_every_member_is_quiesced(cluster: &TestCluster, members: &[usize]) {
    let deadline = Instant::now() + QUIESCE_WITHIN;
    loop {
        // Every group: the data range's and the meta range's.
        let quiesced = members.iter().all(|&i| {
            let scraped = metrics(cluster.members[i].client_port);
            scraped["ostrakon_raft_groups"] == 2.0
                && scraped["ostrakon_raft_groups_quiesced"] == scraped["ostrakon_raft_groups"]
        });
        if quiesced {
            return;
        }
        if Instant::now() > deadline {
            cluster.dump_logs();
            panic!("the idle groups did not quiesce on every member within {QUIESCE_WITHIN:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_group_quiesces_sends_no_raft_message_and_wakes_for_a_write() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    // Each member publishes its name with a write of its own: no write may come after
    // the test's (one did, on a loaded machine, and woke the group in the quiet window).
    cluster.wait_for_published_members().await;
    let mut client = cluster.client(0).await;
    client.put("quiet", "1", None).await.unwrap();
    wait_until_every_member_is_quiesced(&cluster, &[0, 1, 2]).await;
    // A new leader's lessor confirms its leadership once with a read index before it
    // takes over the lease deadlines (within a sweep, 250 ms, of the election), and that
    // wakes the group once: CI's run caught it just after the group had quiesced. Rest
    // past it, then wait for the groups to be quiesced again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_until_every_member_is_quiesced(&cluster, &[0, 1, 2]).await;

    // Two seconds of rest: two election timeouts without a single raft message, and no
    // election (the nodes' idle pings carry none).
    let before: Vec<f64> = (0..3).map(|i| raft_messages_sent(&cluster, i)).collect();
    let term_before = client.status().await.unwrap().raft_term();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<f64> = (0..3).map(|i| raft_messages_sent(&cluster, i)).collect();
    assert_eq!(before, after, "raft messages were sent while quiesced");
    assert_eq!(client.status().await.unwrap().raft_term(), term_before);

    // A write through a follower wakes the group, commits, and the group quiesces again.
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut through_follower = cluster.client(follower).await;
    let started = Instant::now();
    through_follower.put("quiet", "2", None).await.unwrap();
    let woken_put = started.elapsed();
    let value = client.get("quiet", None).await.unwrap();
    assert_eq!(value.kvs()[0].value(), b"2");
    println!("a put to the quiesced group took {woken_put:?}");
    assert!(woken_put < Duration::from_secs(2), "{woken_put:?}");
    wait_until_every_member_is_quiesced(&cluster, &[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_quiesced_leader_elects_another_through_node_liveness() {
    let mut cluster = TestCluster::start(3, &[]).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    client.put("before", "1", None).await.unwrap();
    wait_until_every_member_is_quiesced(&cluster, &[0, 1, 2]).await;

    cluster.kill(leader);
    let killed_at = Instant::now();
    let survivor = (leader + 1) % 3;
    let mut client = cluster.client(survivor).await;
    // Quiesced followers never time out by themselves: only node liveness (no batch
    // from the leader's node for an election timeout) gets them to elect.
    let deadline = killed_at + Duration::from_secs(15);
    loop {
        if client.put("after", "1", None).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded within 15 s of killing the quiesced leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a write succeeded {:?} after the quiesced leader was killed",
        killed_at.elapsed()
    );
    let reported =
        metrics(cluster.members[survivor].client_port)["ostrakon_nodes_reported_down_total"];
    assert!(reported >= 1.0, "the survivor reported the dead node");
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);

    // The dead member comes back and is brought up to date; the group quiesces again.
    cluster.restart(leader);
    cluster.wait_member_knows_leader(leader).await;
    let mut restarted = cluster.client(leader).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = restarted
            .get(
                "after",
                Some(etcd_client::GetOptions::new().with_serializable()),
            )
            .await;
        if got.is_ok_and(|r| r.count() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted member never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until_every_member_is_quiesced(&cluster, &[0, 1, 2]).await;
}
