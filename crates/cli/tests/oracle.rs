//! The timestamp oracle on real processes: timestamps asked of every member are unique
//! and ordered in real time, across a kill -9 of the member that serves the oracle.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{metrics, timestamps, TestCluster};

/// One answered request: when it was sent and answered, and what it got.
#[derive(Clone, Copy, Debug)]
struct Grant {
    invoked: Instant,
    completed: Instant,
    first: u64,
    count: u64,
}

impl Grant {
    fn last(&self) -> u64 {
        self.first + self.count - 1
    }
}

/// The member serving the oracle, as the members' metrics say (bounded wait).
async fn oracle_leader(cluster: &TestCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<usize> = (0..cluster.members.len())
            .filter(|&i| cluster.is_running(i))
            .filter(|&i| {
                metrics(cluster.members[i].client_port)["ostrakon_oracle_is_leader"] == 1.0
            })
            .collect();
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "no single oracle leader: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks `endpoint` for timestamps until `until`, one request at a time (at most 3,000).
async fn ask_until(endpoint: String, until: Instant, seed: u64) -> (Vec<Grant>, usize) {
    let mut grants = Vec::new();
    let mut failures = 0;
    let mut state = seed;
    for _ in 0..3_000 {
        if Instant::now() >= until {
            break;
        }
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let count = 1 + (state >> 60); // 1 to 16
        let invoked = Instant::now();
        match timestamps(&endpoint, count).await {
            Ok((first, granted)) => {
                assert_eq!(granted, count, "asked for {count}, got {granted}");
                grants.push(Grant {
                    invoked,
                    completed: Instant::now(),
                    first,
                    count,
                });
            }
            Err(_) => {
                failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (grants, failures)
}

/// Unique, and a grant answered before another was asked for is below it.
fn check(grants: &[Grant]) {
    let mut by_first: Vec<Grant> = grants.to_vec();
    by_first.sort_by_key(|g| g.first);
    for pair in by_first.windows(2) {
        assert!(
            pair[0].last() < pair[1].first,
            "timestamps handed out twice: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    let mut by_completion: Vec<Grant> = grants.to_vec();
    by_completion.sort_by_key(|g| g.completed);
    let mut by_invocation: Vec<Grant> = grants.to_vec();
    by_invocation.sort_by_key(|g| g.invoked);
    let mut done = 0;
    let mut highest_done: Option<Grant> = None;
    for grant in &by_invocation {
        while done < by_completion.len() && by_completion[done].completed < grant.invoked {
            let finished = by_completion[done];
            if highest_done.is_none_or(|h| h.last() < finished.last()) {
                highest_done = Some(finished);
            }
            done += 1;
        }
        if let Some(before) = highest_done {
            assert!(
                before.last() < grant.first,
                "{grant:?} was asked for after {before:?} was answered, yet is not above it"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_unique_and_ordered_across_members_and_a_killed_oracle_leader() {
    let mut cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // A client on every member, while the member serving the oracle is killed.
    let until = Instant::now() + Duration::from_secs(8);
    let clients: Vec<_> = (0..3)
        .map(|i| tokio::spawn(ask_until(cluster.endpoint(i), until, i as u64 + 1)))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = oracle_leader(&cluster).await;
    let served_before =
        metrics(cluster.members[victim].client_port)["ostrakon_oracle_timestamps_total"];
    assert!(
        served_before > 0.0,
        "the oracle's leader served nothing in 2 s"
    );
    cluster.kill(victim);
    let killed_at = Instant::now();
    let mut grants = Vec::new();
    let mut failures = 0;
    for client in clients {
        let (mut answered, failed) = client.await.unwrap();
        grants.append(&mut answered);
        failures += failed;
    }
    let after_kill = grants.iter().filter(|g| g.invoked > killed_at).count();
    assert!(
        after_kill > 20,
        "only {after_kill} requests were answered after the oracle's leader died ({failures} failed)"
    );

    // The killed member comes back and asks through whoever serves the oracle now.
    cluster.restart(victim);
    cluster.wait_member_knows_leader(victim).await;
    let (mut answered, _) = ask_until(
        cluster.endpoint(victim),
        Instant::now() + Duration::from_secs(2),
        7,
    )
    .await;
    assert!(
        !answered.is_empty(),
        "the restarted member got no timestamps"
    );
    grants.append(&mut answered);

    check(&grants);
    // Timestamps follow the wall clock: 45 bits of milliseconds, 18 logical.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for grant in &grants {
        let physical_ms = grant.first >> 18;
        assert!(
            physical_ms + 10_000 >= started_ms && physical_ms <= now_ms + 10_000,
            "{grant:?} is {physical_ms} ms, far from the clock ({started_ms} to {now_ms})"
        );
    }
    eprintln!(
        "{} grants checked ({} after the kill, {failures} failed requests)",
        grants.len(),
        after_kill
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_timestamp_requests_get_clear_errors() {
    let cluster = TestCluster::start(1, &[]).await;
    cluster.wait_for_leader().await;
    let error = timestamps(&cluster.endpoint(0), 1025).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("at most 1024"), "{error:?}");
    // Zero means one.
    let (_, count) = timestamps(&cluster.endpoint(0), 0).await.unwrap();
    assert_eq!(count, 1);
}

/// Asks a member that does not serve the oracle for timestamps `requests` times, one
/// request at a time; each must be answered, above the one before.
async fn ask_through_a_follower(cluster: &TestCluster, requests: usize) -> usize {
    let leader = oracle_leader(cluster).await;
    let follower = (leader + 1) % cluster.members.len();
    let mut last = 0;
    for _ in 0..requests {
        let (first, count) = timestamps(&cluster.endpoint(follower), 2)
            .await
            .expect("timestamps through a follower");
        assert_eq!(count, 2);
        assert!(first > last, "{first} after {last}");
        last = first + 1;
    }
    follower
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_timestamp_requests_ride_the_peer_stream() {
    let cluster = TestCluster::start(3, &[]).await;
    cluster.wait_for_leader().await;
    let follower = ask_through_a_follower(&cluster, 200).await;
    let seen = metrics(cluster.members[follower].client_port);
    assert!(
        seen["ostrakon_oracle_asks_granted_total"] >= 200.0,
        "every request was granted on the stream: {}",
        seen["ostrakon_oracle_asks_granted_total"]
    );
    assert_eq!(seen["ostrakon_oracle_asks_unanswered_total"], 0.0);
    // Three voters: the asker's word of its meta term stands for its heartbeat answer.
    let leader = oracle_leader(&cluster).await;
    let served = metrics(cluster.members[leader].client_port);
    assert!(
        served["ostrakon_oracle_asks_confirmed_by_word_total"] >= 200.0,
        "the leader took the asker's word for each ask: {}",
        served["ostrakon_oracle_asks_confirmed_by_word_total"]
    );
}

/// A member of an earlier version ignores asks on the stream (simulated here): the
/// asker falls back to a unary call for each unanswered ask, and after three in a row
/// keeps to unary calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oracle_leader_that_ignores_asks_is_asked_by_unary_calls() {
    let cluster =
        TestCluster::start_with_env(3, &[], &[("OSTRAKON_TEST_IGNORE_TIMESTAMP_ASKS", "1")]).await;
    cluster.wait_for_leader().await;
    let follower = ask_through_a_follower(&cluster, 50).await;
    let seen = metrics(cluster.members[follower].client_port);
    assert_eq!(seen["ostrakon_oracle_asks_granted_total"], 0.0);
    assert_eq!(
        seen["ostrakon_oracle_asks_unanswered_total"], 3.0,
        "three asks went unanswered, then unary calls only"
    );
    // The unary calls carry the asker's word too.
    let leader = oracle_leader(&cluster).await;
    let served = metrics(cluster.members[leader].client_port);
    assert!(
        served["ostrakon_oracle_asks_confirmed_by_word_total"] >= 50.0,
        "the leader took the asker's word for each unary call: {}",
        served["ostrakon_oracle_asks_confirmed_by_word_total"]
    );
}
