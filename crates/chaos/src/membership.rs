//! Membership changes and leadership transfers during the load, through the cluster's
//! own API as an operator would make them.

use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// How long one membership call is retried.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a rejoining member may take to be promoted.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of some running member other than `except`.
async fn client_of_another(cluster: &Cluster, except: usize) -> Option<etcd_client::Client> {
    for i in 0..cluster.members.len() {
        if i != except && cluster.is_running(i) {
            if let Some(client) = cluster.client(i).await {
                return Some(client);
            }
        }
    }
    None
}

/// The id of the member named `name`, as the cluster lists it.
async fn member_id(client: &mut etcd_client::Client, name: &str) -> Option<u64> {
    let list = client.member_list().await.ok()?;
    list.members()
        .iter()
        .find(|m| m.name() == name)
        .map(|m| m.id())
}

/// Removes member `victim`, wipes its host, adds it back as a new learner under a new
/// name, starts it and promotes it once it has caught up. Says what happened.
pub async fn replace(cluster: &mut Cluster, victim: usize) -> String {
    let old_name = cluster.members[victim].name.clone();
    let deadline = Instant::now() + CALL_TIMEOUT;
    let mut removed = None;
    let mut last_error = String::from("no other member answered");
    while removed.is_none() && Instant::now() < deadline {
        if let Some(mut client) = client_of_another(cluster, victim).await {
            if let Some(id) = member_id(&mut client, &old_name).await {
                match client.member_remove(id).await {
                    Ok(_) => {
                        removed = Some(());
                        break;
                    }
                    Err(error) => last_error = error.to_string(),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if removed.is_none() {
        return format!("could not remove {old_name} within {CALL_TIMEOUT:?}: {last_error}");
    }
    // A removed member stops by itself; give it a moment, then make sure.
    let stop_deadline = Instant::now() + Duration::from_secs(5);
    let mut stopped_itself = false;
    while Instant::now() < stop_deadline {
        if cluster.reap(victim) {
            stopped_itself = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let generation = old_name
        .split_once('.')
        .and_then(|(_, g)| g.parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    let base = old_name.split('.').next().unwrap_or(&old_name).to_string();
    let new_name = format!("{base}.{generation}");
    let peer_url = cluster.members[victim].peer_url.clone();
    let mut added = None;
    while added.is_none() && Instant::now() < deadline + CALL_TIMEOUT {
        if let Some(mut client) = client_of_another(cluster, victim).await {
            let options = etcd_client::MemberAddOptions::new().with_is_learner();
            if let Ok(response) = client.member_add([peer_url.as_str()], Some(options)).await {
                let id = response.member().map(|m| m.id()).unwrap_or(0);
                let initial_cluster: Vec<String> = response
                    .member_list()
                    .iter()
                    .map(|m| {
                        let name = if m.id() == id {
                            new_name.as_str()
                        } else {
                            m.name()
                        };
                        format!("{name}={}", m.peer_urls().join(&format!(",{name}=")))
                    })
                    .collect();
                added = Some((id, initial_cluster.join(",")));
            }
        }
        if added.is_none() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let Some((new_id, initial_cluster)) = added else {
        cluster.kill(victim);
        return format!("removed {old_name}, but could not add {new_name} back");
    };
    cluster.reincarnate(victim, new_name.clone(), initial_cluster);
    cluster.restart(victim);
    let added_at = Instant::now();
    let promote_deadline = added_at + PROMOTE_TIMEOUT;
    let mut promoted = false;
    while Instant::now() < promote_deadline {
        if let Some(mut client) = client_of_another(cluster, victim).await {
            if client.member_promote(new_id).await.is_ok() {
                promoted = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    format!(
        "removed {old_name} ({}), added {new_name} as a learner, {}",
        if stopped_itself {
            "it stopped itself"
        } else {
            "killed"
        },
        if promoted {
            format!("promoted after {:.1} s", added_at.elapsed().as_secs_f64())
        } else {
            format!("not promoted within {PROMOTE_TIMEOUT:?}")
        }
    )
}

/// Moves leadership from member `from` to member `to`. Says what happened.
pub async fn move_leader(cluster: &Cluster, from: usize, to: usize) -> String {
    let (from_name, to_name) = (&cluster.members[from].name, &cluster.members[to].name);
    let Some(mut client) = cluster.client(from).await else {
        return format!("could not reach leader {from_name}");
    };
    let Some(id) = member_id(&mut client, to_name).await else {
        return format!("{to_name} is not listed");
    };
    match client.move_leader(id).await {
        Ok(_) => format!("moved leadership from {from_name} to {to_name}"),
        Err(error) => format!("moving leadership from {from_name} to {to_name} failed: {error}"),
    }
}
