//! Convergence: once every fault is healed and the writers have stopped, every member
//! must reach the same revision and hash its key-value history (HashKV) the same there.

use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// What the members reported.
#[derive(Clone, Debug, Default)]
pub struct Convergence {
    /// Whether every member reported the same hash at the same revision.
    pub converged: bool,
    /// The revision they were compared at.
    pub revision: i64,
    /// Each member's name and HashKV at that revision (None when it did not answer).
    pub hashes: Vec<(String, Option<u32>)>,
    /// Why it did not converge, if it did not.
    pub problem: Option<String>,
    /// The last error of each member whose HashKV never answered.
    pub errors: Vec<String>,
}

/// How long a member that does not answer HashKV is asked again, at least.
const HASH_RETRY_FOR: Duration = Duration::from_secs(15);

async fn revision_of(cluster: &Cluster, i: usize) -> Option<i64> {
    let mut client = cluster.client(i).await?;
    let status = client.status().await.ok()?;
    status.header().map(|h| h.revision())
}

/// Waits (at most `timeout`) for every member to reach one revision, then compares
/// their hashes there.
pub async fn check(cluster: &Cluster, timeout: Duration) -> Convergence {
    let deadline = Instant::now() + timeout;
    let n = cluster.members.len();
    let mut revisions = vec![None; n];
    while Instant::now() < deadline {
        for (i, revision) in revisions.iter_mut().enumerate() {
            *revision = revision_of(cluster, i).await;
        }
        let first = revisions[0];
        if first.is_some() && revisions.iter().all(|r| *r == first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut result = Convergence::default();
    let highest = revisions.iter().flatten().copied().max().unwrap_or(0);
    result.revision = highest;
    if revisions.iter().any(|r| *r != Some(highest)) {
        let seen: Vec<String> = (0..n)
            .map(|i| format!("{}: {:?}", cluster.members[i].name, revisions[i]))
            .collect();
        result.problem = Some(format!(
            "members did not reach one revision within {timeout:?}: {}",
            seen.join(", ")
        ));
    }
    // On a keyspace in ranges a member hashes each range once it holds every write up to
    // the revision, which takes each range's leader: a range still electing one after
    // the last fault answers "no leader" for a moment, so each member is asked again
    // (bounded) until it answers.
    let hash_deadline = deadline.max(Instant::now() + HASH_RETRY_FOR);
    for i in 0..n {
        let mut hash = None;
        let mut last_error = None;
        while hash.is_none() && Instant::now() < hash_deadline {
            match cluster.client(i).await {
                Some(mut client) => match client.hash_kv(highest).await {
                    Ok(response) => hash = Some(response.hash()),
                    Err(error) => last_error = Some(error.to_string()),
                },
                None => last_error = Some("no connection".to_string()),
            }
            if hash.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if let (None, Some(error)) = (hash, last_error) {
            result
                .errors
                .push(format!("{}: {error}", cluster.members[i].name));
        }
        result.hashes.push((cluster.members[i].name.clone(), hash));
    }
    let first = result.hashes[0].1;
    if result.problem.is_none() {
        if first.is_none() || result.hashes.iter().any(|(_, h)| *h != first) {
            result.problem = Some(format!(
                "HashKV at revision {highest} differs: {:?} (errors: {:?})",
                result.hashes, result.errors
            ));
        } else {
            result.converged = true;
        }
    }
    result
}
