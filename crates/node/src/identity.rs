//! Who this member is, decided once and kept in the data directory: its member id, its
//! cluster's id, and whether it founded the cluster or joined it. As in etcd, the data
//! directory wins over the flags on every later start.
//!
//! A founding member computes both ids from `--initial-cluster`. A member joining with
//! `--initial-cluster-state existing` asks the running members, which registered it (with
//! the id they chose) when `MemberAdd` was called.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ostrakon_proto::peer::peer_client::PeerClient;
use ostrakon_proto::peer::{MemberRecord, MembersQuery};
use ostrakon_raft::NodeId;

use crate::config::NodeConfig;
use crate::error::StartError;
use crate::layout::Layout;
use crate::DEFAULT_GROUP;

/// How long a joining member waits for one peer's answer.
const ASK_PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// Rounds over the peers before a joining member gives up (one round per second).
const ASK_ROUNDS_MAX: u32 = 30;

/// The identity recorded in `member/identity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    /// This member's id.
    pub member_id: NodeId,
    /// Its cluster's id.
    pub cluster_id: u64,
    /// Whether it founded the cluster (else it joined a running one).
    pub founder: bool,
}

fn identity_file(data_dir: &Path) -> PathBuf {
    Layout::new(data_dir)
        .wal
        .parent()
        .expect("the WAL lives under member/")
        .join("identity")
}

impl Identity {
    fn encode(&self) -> String {
        format!(
            "member {:x}\ncluster {:x}\nfounder {}\n",
            self.member_id.0, self.cluster_id, self.founder
        )
    }

    fn decode(text: &str) -> Option<Identity> {
        let mut member_id = None;
        let mut cluster_id = None;
        let mut founder = None;
        for line in text.lines() {
            match line.split_once(' ')? {
                ("member", hex) => member_id = u64::from_str_radix(hex, 16).ok(),
                ("cluster", hex) => cluster_id = u64::from_str_radix(hex, 16).ok(),
                ("founder", flag) => founder = flag.parse().ok(),
                _ => return None,
            }
        }
        Some(Identity {
            member_id: NodeId(member_id?),
            cluster_id: cluster_id?,
            founder: founder?,
        })
    }

    /// The recorded identity, if this data directory has one.
    pub fn load(data_dir: &Path) -> Result<Option<Identity>, StartError> {
        let path = identity_file(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => Identity::decode(&text)
                .map(Some)
                .ok_or_else(|| StartError::Inconsistent(format!("{} is damaged", path.display()))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(StartError::Io(path, error)),
        }
    }

    /// Records the identity durably (temporary file, fsync, rename, fsync of the directory).
    pub fn store(&self, data_dir: &Path) -> Result<(), StartError> {
        let path = identity_file(data_dir);
        let dir = path.parent().expect("a parent").to_path_buf();
        let io = |e| StartError::Io(path.clone(), e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, self.encode()).map_err(io)?;
        std::fs::File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&temporary, &path).map_err(io)?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// Settles the member's identity before it starts: the recorded one if there is one,
/// else a founder's (from the flags) or a joiner's (asked of the running members). On
/// return `config.id` and `config.cluster_id` are final and `config.join` says whether
/// the member starts without bootstrapping.
pub async fn settle(config: &mut NodeConfig) -> Result<Identity, StartError> {
    if let Some(identity) = Identity::load(&config.data_dir)? {
        apply(config, identity);
        if !identity.founder {
            // The registry arrives with the first snapshot; until then, reach the members
            // the cluster reports (best effort: the flags' ids are not a joiner's).
            if let Ok((_, members)) = ask_members(config, 1).await {
                config.peers = peers_of(&members);
            }
        }
        return Ok(identity);
    }
    let identity = if config.join {
        let (cluster_id, members) = ask_members(config, ASK_ROUNDS_MAX).await?;
        let my_url = config.peers[&config.id].clone();
        let me = members
            .iter()
            .find(|m| m.peer_urls.contains(&my_url))
            .ok_or_else(|| {
                StartError::Inconsistent(format!(
                    "the cluster has no member with peer URL {my_url}; add it first \
                     (etcdctl member add NAME --peer-urls={my_url})"
                ))
            })?;
        if me.name.is_empty() {
            tracing::info!(member = %format!("{:x}", me.id), "joining the cluster");
        } else {
            tracing::warn!(
                member = %format!("{:x}", me.id),
                name = %me.name,
                "joining as a member that has started before with another data directory"
            );
        }
        config.peers = peers_of(&members);
        Identity {
            member_id: NodeId(me.id),
            cluster_id,
            founder: false,
        }
    } else {
        Identity {
            member_id: config.id,
            cluster_id: config.cluster_id,
            founder: true,
        }
    };
    identity.store(&config.data_dir)?;
    apply(config, identity);
    Ok(identity)
}

fn apply(config: &mut NodeConfig, identity: Identity) {
    config.id = identity.member_id;
    config.cluster_id = identity.cluster_id;
    config.join = !identity.founder;
}

/// Each member's first peer URL.
pub fn peers_of(members: &[MemberRecord]) -> std::collections::BTreeMap<NodeId, String> {
    members
        .iter()
        .filter_map(|m| Some((NodeId(m.id), m.peer_urls.first()?.clone())))
        .collect()
}

/// Asks the other members of `--initial-cluster`, in turn, for the cluster's id and
/// member registry.
async fn ask_members(
    config: &NodeConfig,
    rounds: u32,
) -> Result<(u64, Vec<MemberRecord>), StartError> {
    let my_url = config.peers.get(&config.id).cloned().unwrap_or_default();
    let others: Vec<&String> = config.peers.values().filter(|u| **u != my_url).collect();
    if others.is_empty() {
        return Err(StartError::Inconsistent(
            "--initial-cluster-state existing needs the running members in --initial-cluster"
                .into(),
        ));
    }
    let mut last_error = String::new();
    for round in 0..rounds {
        if round > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        for url in &others {
            match ask_one(url, config.peer_tls.as_ref()).await {
                Ok(answer) => return Ok(answer),
                Err(error) => last_error = format!("{url}: {error}"),
            }
        }
    }
    Err(StartError::Inconsistent(format!(
        "could not reach a running member to join the cluster ({last_error})"
    )))
}

async fn ask_one(
    url: &str,
    tls: Option<&crate::tls::TlsMaterial>,
) -> Result<(u64, Vec<MemberRecord>), String> {
    let endpoint = crate::transport::peer_endpoint(url, tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(ASK_PEER_TIMEOUT)
        .timeout(ASK_PEER_TIMEOUT);
    let channel = match tls {
        Some(tls) => endpoint.connect_with_connector(tls.connector()).await,
        None => endpoint.connect().await,
    }
    .map_err(|e| e.to_string())?;
    let answer = PeerClient::new(channel)
        .members(MembersQuery {
            group: DEFAULT_GROUP.0,
        })
        .await
        .map_err(|status| status.message().to_string())?
        .into_inner();
    if answer.members.is_empty() {
        return Err("it knows no members yet".into());
    }
    Ok((answer.cluster_id, answer.members))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), None);
        let identity = Identity {
            member_id: NodeId(0xabc),
            cluster_id: 0xdef,
            founder: false,
        };
        identity.store(dir.path()).unwrap();
        assert_eq!(Identity::load(dir.path()).unwrap(), Some(identity));
        std::fs::write(identity_file(dir.path()), "member zz\n").unwrap();
        assert!(Identity::load(dir.path()).is_err());
    }
}
