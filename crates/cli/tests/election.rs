//! etcd's Election service against a real 3-member cluster: the first campaigner leads,
//! the second waits; Proclaim changes the leader's value and Observe sees it; only the
//! leader may proclaim or resign; resigning hands leadership on.

mod common;

use std::time::Duration;

use common::TestCluster;
use etcd_client::{ObserveStream, ProclaimOptions, ResignOptions};

async fn next_value(stream: &mut ObserveStream) -> String {
    let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an observation within 10 s")
        .unwrap()
        .unwrap();
    response.kv().unwrap().value_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_proclaim_observe_resign_as_etcd() {
    let cluster = TestCluster::start(3, &[]).await;
    let mut a = cluster.client(0).await;
    let mut b = cluster.client(1).await;
    let lease_a = a.lease_grant(60, None).await.unwrap().id();
    let lease_b = b.lease_grant(60, None).await.unwrap().id();

    let no_leader = a.leader("chief").await.unwrap_err();
    assert!(
        no_leader.to_string().contains("election: no leader"),
        "{no_leader}"
    );

    let won = a.campaign("chief", "alice", lease_a).await.unwrap();
    let key_a = won.leader().unwrap().clone();
    let mut observer = cluster.client(2).await.observe("chief").await.unwrap();
    assert_eq!(next_value(&mut observer).await, "alice");

    // The second campaigner waits while the first leads.
    let mut b_campaign = b.clone();
    let waiting =
        tokio::spawn(async move { b_campaign.campaign("chief", "bob", lease_b).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "one leader at a time");

    a.proclaim(
        "alice-2",
        Some(ProclaimOptions::new().with_leader(key_a.clone())),
    )
    .await
    .unwrap();
    assert_eq!(next_value(&mut observer).await, "alice-2");
    let leader = b.leader("chief").await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"alice-2");

    a.resign(Some(ResignOptions::new().with_leader(key_a.clone())))
        .await
        .unwrap();
    let won_b = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("resigning hands leadership on")
        .unwrap();
    assert_eq!(next_value(&mut observer).await, "bob");
    assert!(won_b.leader().unwrap().rev() > key_a.rev());

    // The former leader can no longer proclaim.
    let refused = a
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(key_a)))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("election: not leader"),
        "{refused}"
    );
}
