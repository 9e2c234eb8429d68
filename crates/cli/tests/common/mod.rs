//! Real multi-process clusters on loopback for integration tests. Every wait is bounded.

#![allow(dead_code)]

pub mod etcdctl;
pub mod ranges;
pub mod real_etcd;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to elect a leader and serve.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a new cluster starts on new ports when a member's was taken.
const PORT_ATTEMPTS: usize = 3;

pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    child: Option<Child>,
    /// For a member that joined a running cluster: the `--initial-cluster` it was given
    /// (with `--initial-cluster-state existing`).
    joined_with: Option<String>,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    initial_cluster: String,
    extra_args: Vec<String>,
    /// "http" or "https", for client and peer URLs.
    client_scheme: &'static str,
    peer_scheme: &'static str,
    /// How the harness's own clients connect when the client port speaks TLS.
    client_tls: Option<etcd_client::TlsOptions>,
    /// Environment variables every member starts with.
    member_env: Vec<(String, String)>,
}

/// A TLS cluster's schemes and the harness's client credentials.
pub struct TlsSetup {
    pub client_https: bool,
    pub peer_https: bool,
    pub client_tls: Option<etcd_client::TlsOptions>,
}

/// A port nothing listens on now, below the kernel's ephemeral range (32768 and up on
/// Linux): a port the kernel handed out (as port 0 does) can be taken again meanwhile by
/// an outgoing connection, and then the member cannot listen on it.
/// A GET over HTTP/1.0 (no chunking) to a member's client port; returns the status, the
/// headers (lowercased) and the body.
#[allow(dead_code)]
pub fn http_get(port: u16, path: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (status, head.to_lowercase(), body.to_string())
}

pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    // Test binaries run as separate processes: each starts at its own offset.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free port left below the ephemeral range");
        let port = (FIRST + (start + n * 13) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The environment variable that makes every test cluster's members split their ranges
/// past that many bytes (`--range-max-bytes`), unless a test sets its own limit:
/// `scripts/test.sh` runs the etcd API's tests once more with a tiny one.
pub const SPLIT_EAGERLY_ENV: &str = "OSTRAKON_TEST_RANGE_MAX_BYTES";

/// Where a run that splits eagerly splits every new cluster's keyspace first (keys the
/// tests' own splits do not use).
const PRESPLIT_KEYS: [&str; 4] = ["d", "h", "p", "u"];

/// Whether this run splits every cluster's keyspace eagerly (revisions are then the
/// oracle's, sparse, as docs/RANGES.md says).
pub fn splits_eagerly() -> bool {
    std::env::var_os(SPLIT_EAGERLY_ENV).is_some()
}

/// The revisions a test's writes took, by the number etcd gives them on a keyspace of one
/// range (dense: the first write 2, then 3, ...). On a keyspace split eagerly they are the
/// oracle's (sparse, rising): each write's is recorded under its dense number, which the
/// test's assertions then look up.
#[derive(Default)]
pub struct Revisions {
    taken: std::collections::BTreeMap<i64, i64>,
}

impl Revisions {
    /// The write etcd numbers `dense` answered `actual` (the same, on one range).
    pub fn wrote(&mut self, dense: i64, actual: i64) -> i64 {
        if splits_eagerly() {
            if let Some((_, last)) = self.taken.range(..dense).next_back() {
                assert!(actual > *last, "revisions rise: {last} then {actual}");
            }
        } else {
            assert_eq!(actual, dense, "etcd's dense revisions");
        }
        self.taken.insert(dense, actual);
        actual
    }

    /// The revision of the write etcd numbers `dense`.
    pub fn of(&self, dense: i64) -> i64 {
        if splits_eagerly() {
            *self
                .taken
                .get(&dense)
                .unwrap_or_else(|| panic!("no write numbered {dense} recorded"))
        } else {
            dense
        }
    }

    /// A header's revision where the last write is the one etcd numbers `dense`: its
    /// revision on one range; at least it on a keyspace in ranges (a header may give the
    /// oracle's revision as of a later moment).
    pub fn assert_header(&self, header: i64, dense: i64) {
        assert_header_reached(header, self.of(dense));
    }
}

/// A header's revision where the last write took `last`: that one on one range; at least
/// it on a keyspace in ranges.
pub fn assert_header_reached(header: i64, last: i64) {
    if splits_eagerly() {
        assert!(
            header >= last,
            "header at {header}, below the last write's {last}"
        );
    } else {
        assert_eq!(header, last, "the header carries the last write's revision");
    }
}

impl TestCluster {
    /// Starts `size` members with extra server flags and waits until one leads.
    pub async fn start(size: usize, extra_args: &[&str]) -> TestCluster {
        let mut cluster = TestCluster::unstarted(size, extra_args);
        cluster.start_members().await;
        cluster
    }

    /// Starts `size` members, each with the environment variables `env` (a tunable or a
    /// failpoint), and waits until one leads.
    pub async fn start_with_env(
        size: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> TestCluster {
        let mut cluster = TestCluster::unstarted(size, extra_args);
        cluster.member_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster.start_members().await;
        cluster
    }

    /// A cluster's names, ports and directory, with no member started (to prepare the
    /// data directories first, as a restore from a backup does).
    pub fn unstarted(size: usize, extra_args: &[&str]) -> TestCluster {
        TestCluster::unstarted_with_tls(
            size,
            extra_args,
            TlsSetup {
                client_https: false,
                peer_https: false,
                client_tls: None,
            },
        )
    }

    /// Starts `size` members with TLS on the client and/or peer URLs (the certificate
    /// flags are in `extra_args`).
    pub async fn start_with_tls(size: usize, extra_args: &[&str], tls: TlsSetup) -> TestCluster {
        let mut cluster = TestCluster::unstarted_with_tls(size, extra_args, tls);
        cluster.start_members().await;
        cluster
    }

    fn unstarted_with_tls(size: usize, extra_args: &[&str], tls: TlsSetup) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let peer_scheme = if tls.peer_https { "https" } else { "http" };
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{}", i + 1),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                joined_with: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={peer_scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        // A CI run of the etcd API's tests on a keyspace that splits eagerly, and whose
        // raft logs are compacted eagerly (past 16 KiB held by the member, without a
        // snapshot file: members catch up by snapshots written when they need one).
        if let Ok(bytes) = std::env::var(SPLIT_EAGERLY_ENV) {
            if !extra_args.iter().any(|arg| arg == "--range-max-bytes") {
                extra_args.extend(["--range-max-bytes".to_string(), bytes]);
            }
            if !extra_args
                .iter()
                .any(|arg| arg == "--raft-log-memory-bytes")
            {
                extra_args.extend(["--raft-log-memory-bytes".to_string(), "16384".to_string()]);
            }
        }
        TestCluster {
            dir,
            members,
            initial_cluster,
            extra_args,
            client_scheme: if tls.client_https { "https" } else { "http" },
            peer_scheme,
            client_tls: tls.client_tls,
            member_env: Vec::new(),
        }
    }

    /// Starts every member and waits until one leads and all have published themselves.
    pub async fn start_members(&mut self) {
        // A port `free_port` found free can be taken by another process before the
        // member binds it (a CI run, 2026-12-04: "cannot listen on 127.0.0.1:24529:
        // Address already in use", and the test timed out waiting for that member). A
        // new cluster, with nothing in its data directories yet, starts again on new
        // ports; a cluster with data (restarted, restored) keeps its ports.
        let fresh = (0..self.members.len()).all(|i| !self.data_dir(i).exists());
        for attempt in 1..=PORT_ATTEMPTS {
            for i in 0..self.members.len() {
                self.spawn(i);
            }
            if !fresh || attempt == PORT_ATTEMPTS || !self.a_member_lost_its_port().await {
                break;
            }
            eprintln!("a member's port was taken before it bound it: starting on new ports");
            for i in 0..self.members.len() {
                if let Some(mut child) = self.members[i].child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                std::fs::remove_dir_all(self.data_dir(i)).ok();
            }
            self.pick_new_ports();
        }
        self.wait_for_leader().await;
        self.wait_for_published_members().await;
        if splits_eagerly() {
            self.presplit().await;
        }
    }

    /// Splits a new cluster's keyspace at `PRESPLIT_KEYS` (a run that splits eagerly),
    /// so that every test's keys spread over several ranges from its first write.
    async fn presplit(&self) {
        if ranges::ranges(self, 0)
            .await
            .is_some_and(|listed| listed.len() > 1)
        {
            return; // split already (a restarted or restored cluster)
        }
        for key in PRESPLIT_KEYS {
            let (ok, out, err) =
                self.ostrakon(&["ranges", "split", key, "--endpoint", &self.host_port(0)]);
            assert!(ok, "presplit at {key} failed: {out} {err}");
        }
        let mut spans = vec![("", PRESPLIT_KEYS[0])];
        spans.extend(PRESPLIT_KEYS.windows(2).map(|pair| (pair[0], pair[1])));
        spans.push((PRESPLIT_KEYS[PRESPLIT_KEYS.len() - 1], ""));
        ranges::wait_for_spans(self, &spans).await;
    }

    /// `--initial-cluster` of the founding members.
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// Runs `ostrakon ARGS` to completion; returns (success, stdout, stderr).
    pub fn ostrakon(&self, args: &[&str]) -> (bool, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_ostrakon"))
            .args(args)
            .output()
            .expect("the ostrakon binary runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Waits until every member has published its client URLs in the member registry
    /// (through raft, once a leader is elected), so that member lists are complete.
    /// A member list is answered from the member's own registry, so every member is
    /// asked: one that has not applied the last publication yet lists it without URLs.
    pub async fn wait_for_published_members(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.members.len() {
            let mut client = self.client(i).await;
            loop {
                if let Ok(list) = client.member_list().await {
                    if list.members().len() == self.members.len()
                        && list.members().iter().all(|m| !m.client_urls().is_empty())
                    {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    self.dump_logs();
                    panic!(
                        "member {i} did not list every member's client URLs within {READY_TIMEOUT:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Whether a member just started exited because its port was taken, watched until
    /// every member listens on its client port (or for a few seconds).
    async fn a_member_lost_its_port(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            for i in 0..self.members.len() {
                let child = self.members[i].child.as_mut().expect("just started");
                if child.try_wait().unwrap().is_some() {
                    let name = &self.members[i].name;
                    let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                        .unwrap_or_default();
                    return log.contains("Address already in use");
                }
            }
            let listening = self.members.iter().all(|member| {
                std::net::TcpStream::connect(("127.0.0.1", member.client_port)).is_ok()
            });
            if listening {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// New free ports for every member of a cluster not started yet.
    fn pick_new_ports(&mut self) {
        for member in &mut self.members {
            member.client_port = free_port();
            member.peer_port = free_port();
        }
        let scheme = self.peer_scheme;
        self.initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={scheme}://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
    }

    /// A member's name and free ports, for `etcdctl member add`, before it starts.
    pub fn new_member(&mut self, name: &str) -> usize {
        self.members.push(Member {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            joined_with: None,
        });
        self.members.len() - 1
    }

    /// Starts member `i` (made by `new_member`) to join the running cluster, with the
    /// `--initial-cluster` that `etcdctl member add` printed.
    pub fn join(&mut self, i: usize, initial_cluster: &str) {
        self.members[i].joined_with = Some(initial_cluster.to_string());
        self.spawn(i);
    }

    /// Whether member `i`'s process has exited by itself (within `timeout`).
    pub fn wait_for_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let child = self.members[i].child.as_mut().expect("member is running");
        loop {
            if child.try_wait().unwrap().is_some() {
                self.members[i].child = None;
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn peer_url(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.peer_scheme, self.members[i].peer_port
        )
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    pub fn wal_dir(&self, i: usize) -> PathBuf {
        self.data_dir(i).join("member").join("wal")
    }

    fn spawn(&mut self, i: usize) {
        self.spawn_with_env(i, &[]);
    }

    fn spawn_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let member = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .unwrap();
        let peer_url = self.peer_url(i);
        let client_url = self.endpoint(i);
        let child = Command::new(env!("CARGO_BIN_EXE_ostrakon"))
            .env_remove("RUST_BACKTRACE")
            .envs(
                self.member_env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .envs(env.iter().copied())
            .arg("server")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args([
                "--initial-cluster",
                member.joined_with.as_ref().unwrap_or(&self.initial_cluster),
            ])
            .args([
                "--initial-cluster-state",
                if member.joined_with.is_some() {
                    "existing"
                } else {
                    "new"
                },
            ])
            .args(["--initial-cluster-token", "test"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the ostrakon binary starts");
        self.members[i].child = Some(child);
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.client_scheme, self.members[i].client_port
        )
    }

    /// Connection options of the harness's clients (TLS when the cluster has it).
    pub fn connect_options(&self, timeout: Duration) -> etcd_client::ConnectOptions {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(timeout);
        match &self.client_tls {
            Some(tls) => options.with_tls(tls.clone()),
            None => options,
        }
    }

    pub fn host_port(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's `host:port`, comma-separated (etcdctl's `--endpoints`).
    #[allow(dead_code)]
    pub fn host_ports(&self) -> String {
        (0..self.members.len())
            .map(|i| self.host_port(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub async fn client(&self, i: usize) -> etcd_client::Client {
        let options = self.connect_options(Duration::from_secs(15));
        // Connecting is retried: a member that was just restarted may not listen yet.
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match etcd_client::Client::connect([self.endpoint(i)], Some(options.clone())).await {
                Ok(client) => return client,
                Err(error) if Instant::now() > deadline => {
                    panic!("cannot connect to member {i}: {error}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Member `i`'s process id (it must be running).
    pub fn pid(&self, i: usize) -> u32 {
        self.members[i]
            .child
            .as_ref()
            .expect("member is running")
            .id()
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// kill -9: no chance to sync or clean up.
    pub fn kill(&mut self, i: usize) {
        let mut child = self.members[i].child.take().expect("member is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.members[i].child.take().expect("member is running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "member did not stop within 15 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none());
        self.spawn(i);
    }

    /// Restarts member `i` with extra environment variables (a failpoint, say).
    pub fn restart_with_env(&mut self, i: usize, env: &[(&str, &str)]) {
        assert!(self.members[i].child.is_none());
        self.spawn_with_env(i, env);
    }

    /// The index of the member that leads, as the running members report it.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                continue;
            }
            let Ok(mut client) = etcd_client::Client::connect(
                [self.endpoint(i)],
                Some(self.connect_options(Duration::from_secs(1))),
            )
            .await
            else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let leader = status.leader();
            if leader != 0 && leader == status.header().map(|h| h.member_id()).unwrap_or(0) {
                return Some(i);
            }
        }
        None
    }

    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(leader) = self.leader().await {
                return leader;
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no leader within {READY_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until member `i` knows a leader (after a restart it learns one from the
    /// first heartbeat).
    pub async fn wait_member_knows_leader(&self, i: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut client = self.client(i).await;
        loop {
            if let Ok(status) = client.status().await {
                if status.leader() != 0 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "member {i} learned of no leader within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything member `i` has logged so far.
    #[allow(dead_code)]
    pub fn log(&self, i: usize) -> String {
        let name = &self.members[i].name;
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn dump_logs(&self) {
        for member in &self.members {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", member.name)))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} (last lines)", member.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The gRPC status inside an etcd-client error.
#[allow(dead_code)]
pub fn status_of(error: etcd_client::Error) -> tonic::Status {
    match error {
        etcd_client::Error::GRpcStatus(status) => status,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// A member's `/metrics`, as `name{labels}` → value.
pub fn metrics(port: u16) -> std::collections::HashMap<String, f64> {
    let (status, _, body) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_string(), v.parse::<f64>().unwrap()))
        .collect()
}

/// `count` timestamps from the cluster's oracle through `endpoint` (ostrakon's Oracle
/// service): the first and how many.
pub async fn timestamps(endpoint: &str, count: u64) -> Result<(u64, u64), tonic::Status> {
    use ostrakon_proto::ostrakonpb::{oracle_client::OracleClient, TimestampsRequest};
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let response = OracleClient::new(channel)
        .timestamps(TimestampsRequest { count })
        .await?
        .into_inner();
    Ok((response.first, response.count))
}
