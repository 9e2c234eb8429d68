//! Leaderships that move on purpose (`MoveLeader`, leaders spread over the nodes) are
//! not the clients' business: writes and reads through every member keep succeeding
//! while the leadership moves round the members.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_the_leadership_moves_round_the_members() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    cluster.wait_for_published_members().await;
    let ids: Vec<u64> = {
        let mut client = cluster.client(0).await;
        let members = client.member_list().await.unwrap();
        (0..3)
            .map(|i| {
                members
                    .members()
                    .iter()
                    .find(|m| m.name() == cluster.members[i].name)
                    .expect("every member is listed")
                    .id()
            })
            .collect()
    };

    // A writer and reader per member, each put read back linearizably, until the moves
    // end (bounded in time too).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut client = cluster.client(i).await;
        let (stop, done) = (stop.clone(), done.clone());
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let key = format!("k{i}");
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                round += 1;
                let value = round.to_string();
                client
                    .put(key.as_str(), value.as_str(), None)
                    .await
                    .unwrap_or_else(|error| panic!("put {key} #{round} failed: {error}"));
                let read = client
                    .get(key.as_str(), None)
                    .await
                    .unwrap_or_else(|error| panic!("get {key} #{round} failed: {error}"));
                assert_eq!(read.kvs()[0].value(), value.as_bytes(), "{key} #{round}");
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    // Six moves round the members, each waited for.
    for moved in 0..6 {
        let leader = cluster.wait_for_leader().await;
        let target = (leader + 1) % 3;
        let before = done.load(Ordering::SeqCst);
        cluster
            .client(leader)
            .await
            .move_leader(ids[target])
            .await
            .unwrap_or_else(|error| panic!("move {moved} to member {target} failed: {error}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.leader().await != Some(target) {
            assert!(
                Instant::now() < deadline,
                "move {moved} did not take effect"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Requests ran across the move.
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < before + 30 {
            assert!(
                Instant::now() < deadline,
                "requests stalled after move {moved}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client
            .await
            .expect("a client's request failed while the leadership moved");
    }
    println!(
        "{} puts, each read back, through six leadership moves",
        done.load(Ordering::SeqCst)
    );
}
