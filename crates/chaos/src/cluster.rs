//! A cluster of `ostrakon server` processes on loopback, each in its own data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ChaosError;

/// How long a cluster may take to elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One member process.
pub struct Member {
    /// Its name.
    pub name: String,
    /// Its client port on 127.0.0.1.
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The running cluster.
pub struct LocalCluster {
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// The members, running or not.
    pub members: Vec<Member>,
    initial_cluster: String,
}

fn free_port() -> Result<u16, ChaosError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ChaosError::Cluster(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| ChaosError::Cluster(e.to_string()))?
        .port())
}

impl LocalCluster {
    /// Starts `nodes` members and waits until one leads.
    pub async fn start(binary: &Path, nodes: usize) -> Result<LocalCluster, ChaosError> {
        let dir = tempfile::tempdir().map_err(|e| ChaosError::Cluster(e.to_string()))?;
        let mut members = Vec::new();
        for i in 0..nodes {
            members.push(Member {
                name: format!("c{}", i + 1),
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LocalCluster {
            dir,
            binary: binary.to_path_buf(),
            members,
            initial_cluster,
        };
        for i in 0..nodes {
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while cluster.leader().await.is_none() {
            if Instant::now() > deadline {
                return Err(ChaosError::Cluster(format!(
                    "no leader within {READY_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), ChaosError> {
        let member = &self.members[i];
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .map_err(|e| ChaosError::Cluster(e.to_string()))?;
        let child = Command::new(&self.binary)
            .arg("server")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&member.name))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", "chaos"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| ChaosError::Cluster(format!("{}: {e}", self.binary.display())))?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// kill -9 of member `i` (no chance to sync).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to member `i`'s process (SIGSTOP / SIGCONT pause and resume it).
    pub fn signal(&self, i: usize, signal: i32) {
        if let Some(child) = &self.members[i].child {
            // SAFETY: kill(2) on a pid this cluster started and has not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Starts member `i` again from its data directory.
    pub fn restart(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            if let Err(error) = self.spawn(i) {
                tracing::error!(%error, "could not restart a member");
            }
        }
    }

    /// Resumes paused members and restarts stopped ones.
    pub async fn heal(&mut self) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGCONT);
            self.restart(i);
        }
    }

    /// The member that leads, as the running members report it.
    pub async fn leader(&self) -> Option<usize> {
        for (i, member) in self.members.iter().enumerate() {
            if member.child.is_none() {
                continue;
            }
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(1));
            let endpoint = format!("http://127.0.0.1:{}", member.client_port);
            let Ok(mut client) = etcd_client::Client::connect([endpoint], Some(options)).await
            else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let me = status.header().map(|h| h.member_id()).unwrap_or(0);
            if status.leader() != 0 && status.leader() == me {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.signal(i, libc::SIGCONT);
            self.kill(i);
        }
    }
}
