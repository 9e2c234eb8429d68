//! etcd's Lock service against a real 3-member cluster: callers are served one at a time
//! in arrival order, Unlock or the owner's lease revocation hands the lock on, and the
//! key's create revision grows with each owner (the fencing token).

mod common;

use std::time::Duration;

use common::TestCluster;
use etcd_client::LockOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_is_exclusive_and_handed_on_by_unlock_or_lease_revoke() {
    let cluster = TestCluster::start(3, &[]).await;
    let mut first = cluster.client(0).await;
    let mut second = cluster.client(1).await;
    let lease_a = first.lease_grant(60, None).await.unwrap().id();
    let lease_b = second.lease_grant(60, None).await.unwrap().id();
    let lease_c = second.lease_grant(60, None).await.unwrap().id();

    let held = first
        .lock("job", Some(LockOptions::new().with_lease(lease_a)))
        .await
        .unwrap();
    let held_key = held.key().to_vec();
    assert!(held_key.starts_with(b"job/"));
    let token_a = first.get(held_key.clone(), None).await.unwrap().kvs()[0].create_revision();

    // The second caller waits while the first holds the lock.
    let mut waiter = second.clone();
    let waiting = tokio::spawn(async move {
        waiter
            .lock("job", Some(LockOptions::new().with_lease(lease_b)))
            .await
            .unwrap()
            .key()
            .to_vec()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "the lock is exclusive");
    first.unlock(held_key).await.unwrap();
    let second_key = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("unlock hands the lock on")
        .unwrap();
    let token_b = second.get(second_key.clone(), None).await.unwrap().kvs()[0].create_revision();
    assert!(
        token_b > token_a,
        "fencing tokens grow: {token_a} then {token_b}"
    );

    // A third caller gets it when the owner's lease is revoked.
    let mut third = cluster.client(2).await;
    let waiting = tokio::spawn(async move {
        third
            .lock("job", Some(LockOptions::new().with_lease(lease_c)))
            .await
            .unwrap()
            .key()
            .to_vec()
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!waiting.is_finished());
    second.lease_revoke(lease_b).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("revoking the owner's lease hands the lock on")
        .unwrap();

    // A lock with a lease that does not exist gets etcd's error.
    let error = first
        .lock("job", Some(LockOptions::new().with_lease(12345)))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("requested lease not found"),
        "{error}"
    );
}
