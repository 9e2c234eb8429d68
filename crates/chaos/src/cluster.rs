//! The cluster under test: one `ostrakon server` process per host. A host is a network
//! namespace with its own address (the default as root) or, without root, a pair of
//! ports on loopback. Peer links always pass a fault proxy in front of the receiver.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::disk::LazyDisk;
use crate::netns::Netns;
use crate::proxy::{LinkFaults, Proxy};
use crate::ChaosError;

/// How long a cluster may take to elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports inside a host's namespace (each host has its own address).
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// Where the hosts live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// One network namespace per host on a bridge; partitions with iptables. Needs root.
    Namespaces,
    /// Every host on 127.0.0.1 with its own ports; no partitions.
    Loopback,
}

/// One host and the member process it runs.
pub struct Member {
    /// The member's name; a member that rejoined after removal gets a new one.
    pub name: String,
    /// Its client URL.
    pub client_url: String,
    /// Its advertised peer URL (its proxy).
    pub peer_url: String,
    peer_listen: SocketAddr,
    data_dir: PathBuf,
    /// The fsync failpoint's trigger: while this file exists, every WAL sync fails.
    pub fsync_trigger: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Extra environment for the next start (libfaketime for clock skew).
    pub start_env: Vec<(String, String)>,
    /// How the last process ended, if it ended by itself.
    pub last_exit: Option<String>,
    /// The faults on the peer links into this member.
    pub link: std::sync::Arc<LinkFaults>,
    _proxy: Proxy,
    /// Start as a new member of a running cluster, with this initial cluster.
    join_cluster: Option<String>,
}

/// The running cluster.
pub struct Cluster {
    dir: PathBuf,
    binary: PathBuf,
    /// The hosts, in order; a host keeps its index for the whole run.
    pub members: Vec<Member>,
    initial_cluster: String,
    /// The namespaces, when the hosts are namespaces.
    pub netns: Option<Netns>,
    /// Each host's disk, when power cuts are injected (unmounted when the cluster is
    /// dropped, after `Drop` killed the members).
    disks: Vec<LazyDisk>,
    /// A split the split-merge nemesis made, to merge back before its window heals.
    pub split_to_undo: Option<String>,
}

fn free_port() -> Result<u16, ChaosError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ChaosError::Cluster(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| ChaosError::Cluster(e.to_string()))?
        .port())
}

impl Cluster {
    /// Starts `nodes` members and waits until one leads. With `lazy_disks` (the
    /// `ostrakon-lazyfs` binary), each host's data lives on a disk that can lose power.
    pub async fn start(
        binary: &Path,
        nodes: usize,
        network: Network,
        dir: &Path,
        lazy_disks: Option<&Path>,
    ) -> Result<Cluster, ChaosError> {
        let netns = match network {
            Network::Namespaces => Some(Netns::create(nodes)?),
            Network::Loopback => None,
        };
        let mut disks = Vec::new();
        if let Some(lazyfs) = lazy_disks {
            for host in 0..nodes {
                disks.push(LazyDisk::start(lazyfs, dir, host)?);
            }
        }
        let mut members = Vec::new();
        for i in 0..nodes {
            let name = format!("c{}", i + 1);
            let (client, proxy_listen, peer_listen, namespace) = match &netns {
                Some(netns) => {
                    let ip = netns.host_ip(i);
                    (
                        SocketAddr::from((ip, CLIENT_PORT)),
                        SocketAddr::from((ip, PEER_PORT)),
                        SocketAddr::from(([127, 0, 0, 1], PEER_PORT)),
                        Some(netns.namespace_file(i)?),
                    )
                }
                None => (
                    SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                    SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                    SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                    None,
                ),
            };
            let proxy = Proxy::start(proxy_listen, peer_listen, namespace)?;
            let data_root = disks.get(i).map_or(dir, |disk: &LazyDisk| &disk.mountpoint);
            members.push(Member {
                data_dir: data_root.join(&name),
                fsync_trigger: dir.join(format!("host{i}.fail-fsync")),
                name,
                client_url: format!("http://{client}"),
                peer_url: format!("http://{proxy_listen}"),
                peer_listen,
                child: None,
                paused: false,
                start_env: Vec::new(),
                last_exit: None,
                link: proxy.faults.clone(),
                _proxy: proxy,
                join_cluster: None,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            members,
            initial_cluster,
            netns,
            disks,
            split_to_undo: None,
        };
        for i in 0..nodes {
            cluster.spawn(i)?;
        }
        cluster.wait_for_leader(READY_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Waits until a member leads.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<usize, ChaosError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Cluster(format!(
                    "no leader within {timeout:?}; member logs are in {}",
                    self.dir.as_path().display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), ChaosError> {
        let namespace = match &self.netns {
            Some(netns) => Some(netns.namespace_file(i)?),
            None => None,
        };
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", member.name)))
            .map_err(|e| ChaosError::Cluster(e.to_string()))?;
        let (initial_cluster, state) = match &member.join_cluster {
            Some(cluster) => (cluster.as_str(), "existing"),
            None => (self.initial_cluster.as_str(), "new"),
        };
        let mut command = Command::new(&self.binary);
        command
            .arg("server")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args([
                "--listen-peer-urls",
                &format!("http://{}", member.peer_listen),
            ])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "chaos"])
            .env(
                "OSTRAKON_FAILPOINT_FSYNC",
                format!("file:{}", member.fsync_trigger.display()),
            )
            .envs(member.start_env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(namespace) = &namespace {
            let fd = namespace.as_raw_fd();
            // SAFETY: only setns(2), async-signal-safe, runs between fork and exec; the
            // handle stays open in the parent until spawn returns.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command
            .spawn()
            .map_err(|e| ChaosError::Cluster(format!("{}: {e}", self.binary.display())))?;
        drop(namespace);
        self.members[i].child = Some(child);
        self.members[i].paused = false;
        Ok(())
    }

    /// Splits the keyspace at `key` (`ostrakon ranges split` through a member), tried
    /// again on every member until it applies or `timeout` passes.
    pub async fn split(&self, key: &str, timeout: Duration) -> Result<(), ChaosError> {
        self.ranges_command("split", key, timeout).await
    }

    /// Merges the range starting at `key` into the one before it (`ostrakon ranges
    /// merge`), tried again on every member until it applies or `timeout` passes.
    pub async fn merge(&self, key: &str, timeout: Duration) -> Result<(), ChaosError> {
        self.ranges_command("merge", key, timeout).await
    }

    /// `ostrakon ranges <command> <key>` through each member in turn, until one applies
    /// it or `timeout` passes.
    async fn ranges_command(
        &self,
        command: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<(), ChaosError> {
        let deadline = Instant::now() + timeout;
        let mut last_error = String::new();
        for endpoint in self.endpoints().iter().cycle() {
            if Instant::now() > deadline {
                break;
            }
            let output = tokio::process::Command::new(&self.binary)
                .args(["ranges", command, key, "--endpoint", endpoint])
                .output()
                .await
                .map_err(|e| ChaosError::Cluster(format!("{}: {e}", self.binary.display())))?;
            if output.status.success() {
                return Ok(());
            }
            // The message, without a backtrace.
            last_error = String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ChaosError::Cluster(format!(
            "ranges {command} at {key:?} failed: {last_error}"
        )))
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Whether member `i`'s process runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// kill -9 of member `i` (no chance to sync).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    /// Sends `signal` to member `i`'s process (SIGSTOP / SIGCONT pause and resume it).
    pub fn signal(&mut self, i: usize, signal: i32) {
        if let Some(child) = &self.members[i].child {
            // SAFETY: kill(2) on a pid this cluster started and has not reaped.
            unsafe { libc::kill(child.id() as i32, signal) };
            self.members[i].paused = signal == libc::SIGSTOP;
        }
    }

    /// Whether member `i`'s process has exited by itself; records how.
    pub fn reap(&mut self, i: usize) -> bool {
        let member = &mut self.members[i];
        let Some(child) = &mut member.child else {
            return false;
        };
        match child.try_wait() {
            Ok(Some(status)) => {
                member.last_exit = Some(match (status.code(), status.signal()) {
                    (Some(code), _) => format!("exit code {code}"),
                    (None, Some(signal)) => format!("signal {signal}"),
                    _ => status.to_string(),
                });
                member.child = None;
                true
            }
            _ => false,
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

    /// Every member loses power at once: killed, and what each had written and not
    /// synced is gone from its disk. They start again at the next heal.
    pub fn cut_power(&mut self) -> Result<(), ChaosError> {
        assert!(
            !self.disks.is_empty(),
            "power cuts need the cluster's lazy disks"
        );
        for i in 0..self.members.len() {
            self.kill(i);
        }
        for disk in &mut self.disks {
            disk.cut_power()?;
        }
        Ok(())
    }

    /// Member `i`'s raft log directory.
    pub fn wal_dir(&self, i: usize) -> PathBuf {
        self.members[i].data_dir.join("member").join("wal")
    }

    /// Replaces member `i` by a new member on the same host: a new name and an empty data
    /// directory, started to join `initial_cluster` (the membership after the add).
    pub fn reincarnate(&mut self, i: usize, name: String, initial_cluster: String) {
        self.kill(i);
        let data_root = self.disks.get(i).map_or(&self.dir, |disk| &disk.mountpoint);
        let member = &mut self.members[i];
        let _ = std::fs::remove_dir_all(&member.data_dir);
        member.data_dir = data_root.join(&name);
        member.name = name;
        member.join_cluster = Some(initial_cluster);
    }

    /// Resumes paused members, lifts every network fault and restarts stopped members
    /// without any clock skew.
    pub async fn heal(&mut self) {
        if let Some(netns) = &self.netns {
            if let Err(error) = netns.heal() {
                tracing::error!(%error, "could not lift a partition");
            }
        }
        for i in 0..self.members.len() {
            self.members[i].link.heal();
            let _ = std::fs::remove_file(&self.members[i].fsync_trigger);
            if self.members[i].paused {
                self.signal(i, libc::SIGCONT);
            }
            self.reap(i);
            if !self.members[i].start_env.is_empty() {
                self.members[i].start_env.clear();
                self.kill(i);
            }
            self.restart(i);
        }
    }

    /// A client of member `i` alone.
    pub async fn client(&self, i: usize) -> Option<etcd_client::Client> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(2));
        etcd_client::Client::connect([self.members[i].client_url.clone()], Some(options))
            .await
            .ok()
    }

    /// The member that leads, as the running members report it.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() || self.members[i].paused {
                continue;
            }
            let Some(mut client) = self.client(i).await else {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                self.signal(i, libc::SIGCONT);
            }
            self.kill(i);
        }
    }
}
