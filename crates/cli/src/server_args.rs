//! `ostrakon server`: etcd's flags, turned into a `ServerConfig`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use ostrakon_node::config::{cluster_id, BlockCompression, StoreSettings};
use ostrakon_node::spans::export::ExportConfig;
use ostrakon_node::tls::{TlsFiles, TlsMaterial};
use ostrakon_node::{member_id, NodeConfig};
use ostrakon_raft::NodeId;
use ostrakon_server::validate::Limits;
use ostrakon_server::ServerConfig;

use crate::urls;

/// Raft ticks per heartbeat interval. etcd ticks once per heartbeat, so a follower's
/// randomized election timeout (between one and two election timeouts) takes one of only
/// ten values at the default flags, and two followers that lost their leader pick the same
/// one, campaign together and split the vote one time in ten (a failover of about 3.4 s
/// instead of 1.2). Four ticks per heartbeat give forty values.
const TICKS_PER_HEARTBEAT: u32 = 4;

/// etcd's default space quota (`--quota-backend-bytes 0`): 2 GiB.
const QUOTA_BACKEND_BYTES_DEFAULT: u64 = 2 << 30;

/// etcd's `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClusterState {
    /// Found a new cluster with the members of `--initial-cluster`.
    New,
    /// Join a running cluster.
    Existing,
}

/// `--store-compression`: how the storage engine writes its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreCompression {
    /// Uncompressed: a read outside the small block cache is a copy from the OS page
    /// cache.
    None,
    /// LZ4: less disk where values compress, a decompression per block read.
    Lz4,
}

impl From<StoreCompression> for BlockCompression {
    fn from(flag: StoreCompression) -> Self {
        match flag {
            StoreCompression::None => BlockCompression::None,
            StoreCompression::Lz4 => BlockCompression::Lz4,
        }
    }
}

/// The flags, named and defaulted as etcd's.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: "<name>.etcd").
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (gRPC and HTTP).
    #[arg(long, default_value = "http://localhost:2379")]
    pub listen_client_urls: String,
    /// This member's client URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2379")]
    pub advertise_client_urls: String,
    /// URLs to listen on for peer traffic.
    #[arg(long, default_value = "http://localhost:2380")]
    pub listen_peer_urls: String,
    /// This member's peer URLs to advertise to the rest of the cluster.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping: name=peer-url,...
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// Initial cluster state ("new" or "existing").
    #[arg(long, value_enum, default_value = "new")]
    pub initial_cluster_state: ClusterState,
    /// Initial cluster token, distinguishing clusters bootstrapped from the same config.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout: u64,
    /// Number of committed transactions to trigger a snapshot to disk.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Past this many bytes of raft log held in memory by all ranges together, the
    /// heaviest logs are compacted (their entries stay in the WAL until the state
    /// machine is durable past them; 0: each range compacts only at its snapshots).
    /// 4 MiB: a member held 53 MiB after 80,000 puts against 88 MiB with 32 MiB, at the
    /// same throughput (docs/BENCHMARKS.md).
    #[arg(long, default_value_t = 4 << 20)]
    pub raft_log_memory_bytes: u64,
    /// The storage engine's block cache, in bytes. Reads of recent versions mostly hit
    /// the memtables and the OS page cache, so a small cache keeps a member small.
    #[arg(long, default_value_t = StoreSettings::default().cache_bytes)]
    pub store_cache_bytes: u64,
    /// The storage engine's memtables together, in bytes: each is flushed to disk past a
    /// quarter of this (fixed when the data directory is made), and past all of it
    /// writes wait for flushes.
    #[arg(long, default_value_t = StoreSettings::default().write_buffer_bytes)]
    pub store_write_buffer_bytes: u64,
    /// How the storage engine writes its blocks to disk, chosen when the data directory
    /// is made (a member started again keeps the choice it was made with).
    #[arg(long, value_enum, default_value_t = StoreCompression::None)]
    pub store_compression: StoreCompression,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
    /// Split a range whose live keys and values hold more than this many bytes, where
    /// the bytes are halved (0: never; ranges are then split by hand with `ostrakon
    /// ranges split`). 64 MiB by default, as CockroachDB's ranges were for years (TiKV's
    /// regions split at 96 MiB).
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub range_max_bytes: u64,
    /// Split a range whose leader's member served more than this many requests per
    /// second over the last 10 s, where its sampled requests halve (0: never). 2,500 by
    /// default, as CockroachDB's `kv.range_split.load_qps_threshold`.
    #[arg(long, default_value_t = 2_500)]
    pub range_split_qps: u64,
    /// A split by load waits until another member's host has at least this many CPU
    /// cores idle, over the last 10 s and over the last 3 s (less where a cgroup limit
    /// leaves less): a split
    /// spreads load only if a member can take half of it, and members sharing one
    /// host's busy cores would pay for two ranges and gain nothing (0: split whatever
    /// the members' CPU).
    #[arg(long, default_value_t = 0.5)]
    pub range_split_spare_cores: f64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1_572_864)]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Duration of periodic watch progress notifications (Go duration syntax, as etcd's).
    #[arg(long, default_value = "10m0s", value_parser = crate::duration::parse_go_duration)]
    pub experimental_watch_progress_notify_interval: std::time::Duration,
    /// The longest a lease not kept alive goes without its remaining TTL recorded in
    /// the log, so that a new leader continues it instead of granting its full TTL
    /// again; sooner once half of what it had left has gone. A kept-alive lease is not
    /// recorded (Go duration syntax, as etcd's; 0 for the default, 5 minutes).
    #[arg(long, default_value = "5m0s", value_parser = crate::duration::parse_go_duration)]
    pub experimental_lease_checkpoint_interval: std::time::Duration,
    /// Record leases' remaining TTLs in the log (`--experimental-enable-lease-checkpoint=false`
    /// never does: a new leader then restarts every lease at its full TTL). On by
    /// default, where etcd's is off: ostrakon's leaderships move more (leaders spread
    /// over the members).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub experimental_enable_lease_checkpoint: bool,
    /// Accepted for etcd's configurations: a checkpoint is always a write of the log, so
    /// it outlives a restart of every member, as etcd's persisted checkpoints do.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub experimental_enable_lease_checkpoint_persist: bool,
    /// Path to the client server TLS cert file.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication (clients must present a cert signed by the
    /// trusted CA).
    #[arg(long)]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long)]
    pub peer_client_cert_auth: bool,
    /// bcrypt's cost for hashing user passwords (4 to 31).
    #[arg(long, default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Refuse membership changes that would leave the members that are up short of a
    /// quorum (`--strict-reconfig-check=false` to allow them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub strict_reconfig_check: bool,
    /// Quiesce idle raft groups: once every member has every entry, the leader stops
    /// heartbeating until there is work; one heartbeat per node pair tells followers
    /// the leader's node is up (`--raft-quiesce=false` heartbeats as etcd does).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true")]
    pub raft_quiesce: bool,
    /// Log level: debug, info, warn, error.
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// The playground's control URL: the dashboard then offers to stop, restart, pause
    /// and resume members (set by `ostrakon playground`).
    #[arg(long, hide = true)]
    pub dashboard_control_url: Option<String>,
    /// Log format: text (for people) or json (one object per line, for collectors).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Export OpenTelemetry spans of requests (gRPC call, forward, proposal, WAL fsync,
    /// replication, apply) to an OTLP/gRPC collector.
    #[arg(long)]
    pub experimental_enable_distributed_tracing: bool,
    /// The collector's OTLP/gRPC address.
    #[arg(long, default_value = "localhost:4317")]
    pub experimental_distributed_tracing_address: String,
    /// The service name spans carry; the same for every member.
    #[arg(long, default_value = "ostrakon")]
    pub experimental_distributed_tracing_service_name: String,
    /// The instance id spans carry, unique per member (default: the member's name).
    #[arg(long, default_value = "")]
    pub experimental_distributed_tracing_instance_id: String,
    /// Traces started by this member that are sampled, per million (0 to 1000000). A
    /// trace a client sampled and propagated (W3C traceparent) is always followed.
    #[arg(long, default_value_t = 0)]
    pub experimental_distributed_tracing_sampling_rate: u32,
}

impl ServerArgs {
    /// Where spans go, if distributed tracing is enabled.
    fn tracing_config(&self) -> anyhow::Result<Option<ExportConfig>> {
        if !self.experimental_enable_distributed_tracing {
            return Ok(None);
        }
        let sampling_per_million = self.experimental_distributed_tracing_sampling_rate;
        if sampling_per_million > 1_000_000 {
            bail!(
                "--experimental-distributed-tracing-sampling-rate must be at most 1000000 (per million), got {sampling_per_million}"
            );
        }
        let instance_id = match self.experimental_distributed_tracing_instance_id.as_str() {
            "" => self.name.clone(),
            id => id.to_string(),
        };
        Ok(Some(ExportConfig {
            address: self.experimental_distributed_tracing_address.clone(),
            service_name: self.experimental_distributed_tracing_service_name.clone(),
            instance_id,
            sampling_per_million,
        }))
    }

    /// Checks the flags and builds the member's configuration.
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            bail!(
                "--election-timeout[{}ms] should be at least 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout,
                self.heartbeat_interval
            );
        }
        if self.experimental_watch_progress_notify_interval.is_zero() {
            bail!("--experimental-watch-progress-notify-interval must be positive");
        }
        if !(self.range_split_spare_cores.is_finite() && self.range_split_spare_cores >= 0.0) {
            bail!(
                "--range-split-spare-cores must be a count of cores, 0 or more (got {})",
                self.range_split_spare_cores
            );
        }
        let membership = FoundingMembership::parse(
            &self.initial_cluster,
            &self.initial_cluster_token,
            &self.name,
            &self.initial_advertise_peer_urls,
        )?;
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)));
        let node = NodeConfig {
            id: membership.id,
            name: self.name.clone(),
            cluster_id: cluster_id(membership.peers.keys().copied()),
            peers: membership.peers,
            member_names: membership.member_names,
            client_urls: self
                .advertise_client_urls
                .split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect(),
            data_dir,
            tick_interval: Duration::from_micros(
                self.heartbeat_interval * 1000 / u64::from(TICKS_PER_HEARTBEAT),
            ),
            heartbeat_ticks: TICKS_PER_HEARTBEAT,
            election_ticks: (self.election_timeout * u64::from(TICKS_PER_HEARTBEAT)
                / self.heartbeat_interval) as u32,
            strict_reconfig_check: self.strict_reconfig_check,
            quiesce: self.raft_quiesce,
            snapshot_entries: self.snapshot_count.max(1),
            raft_log_memory_bytes: self.raft_log_memory_bytes,
            store_settings: StoreSettings {
                cache_bytes: self.store_cache_bytes,
                write_buffer_bytes: self.store_write_buffer_bytes,
                compression: self.store_compression.into(),
            },
            // etcd: 5 s plus twice the election timeout.
            request_timeout: Duration::from_millis(5000 + 2 * self.election_timeout),
            // etcd's lessor takes 0 for its default.
            lease_checkpoint_interval: self.experimental_enable_lease_checkpoint.then(|| {
                if self.experimental_lease_checkpoint_interval.is_zero() {
                    Duration::from_secs(300)
                } else {
                    self.experimental_lease_checkpoint_interval
                }
            }),
            // A joining member learns its id and the cluster's from the running members
            // (identity::settle); the ids computed above are then only provisional.
            join: self.initial_cluster_state == ClusterState::Existing,
            peer_tls: None,
            quota_backend_bytes: if self.quota_backend_bytes == 0 {
                QUOTA_BACKEND_BYTES_DEFAULT
            } else {
                self.quota_backend_bytes
            },
            range_max_bytes: self.range_max_bytes,
            range_split_qps: self.range_split_qps,
            range_split_spare_cores: self.range_split_spare_cores,
        };
        let client_tls = tls_material(
            "",
            &self.listen_client_urls,
            &self.cert_file,
            &self.key_file,
            &self.trusted_ca_file,
            self.client_cert_auth,
        )?;
        let peer_tls = tls_material(
            "peer-",
            &self.listen_peer_urls,
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
            self.peer_client_cert_auth,
        )?;
        let mut node = node;
        node.peer_tls = peer_tls;
        let peer_addrs = urls::socket_addrs(&self.listen_peer_urls)?;
        let client_addrs = urls::socket_addrs(&self.listen_client_urls)?;
        if peer_addrs.len() != 1 {
            bail!("--listen-peer-urls: exactly one URL is supported");
        }
        Ok(ServerConfig {
            node,
            client_addrs,
            peer_addr: peer_addrs[0],
            limits: Limits {
                txn_ops_max: self.max_txn_ops,
                request_bytes_max: self.max_request_bytes,
            },
            watch_progress_notify_interval: self.experimental_watch_progress_notify_interval,
            client_tls,
            // etcd falls back to the default for a cost out of bcrypt's range.
            bcrypt_cost: if (4..=31).contains(&self.bcrypt_cost) {
                self.bcrypt_cost
            } else {
                10
            },
            dashboard_control_url: self.dashboard_control_url.clone(),
            tracing: self.tracing_config()?,
        })
    }
}

/// One side's TLS flags, checked as etcd checks them and read. `prefix` is "" for the
/// client side and "peer-" for the peer side.
fn tls_material(
    prefix: &str,
    listen_urls: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    trusted_ca: &Option<PathBuf>,
    client_cert_auth: bool,
) -> anyhow::Result<Option<TlsMaterial>> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) => {
            if urls::any_https(listen_urls) {
                bail!(
                    "TLS key/cert (--{prefix}cert-file, --{prefix}key-file) must be provided for {} url with HTTPS scheme",
                    if prefix.is_empty() { "client" } else { "peer" }
                );
            }
            if client_cert_auth {
                bail!(
                    "--{prefix}client-cert-auth needs --{prefix}cert-file and --{prefix}key-file"
                );
            }
            return Ok(None);
        }
        _ => bail!("--{prefix}cert-file and --{prefix}key-file go together"),
    };
    if client_cert_auth && trusted_ca.is_none() {
        bail!("--{prefix}client-cert-auth needs --{prefix}trusted-ca-file");
    }
    let files = TlsFiles {
        cert,
        key,
        trusted_ca: trusted_ca.clone(),
        client_cert_auth,
    };
    Ok(Some(TlsMaterial::load(&files)?))
}

/// The founding members from `--initial-cluster`, and this member's id among them.
pub struct FoundingMembership {
    /// This member's id.
    pub id: NodeId,
    /// Every founding member's peer URL.
    pub peers: BTreeMap<NodeId, String>,
    /// Every founding member's name.
    pub member_names: BTreeMap<NodeId, String>,
}

impl FoundingMembership {
    /// Parses `--initial-cluster` (name=url,...) and finds `name` in it, whose URL must
    /// be the first of `advertise_peer_urls`. Ids are derived as etcd derives them.
    pub fn parse(
        initial_cluster: &str,
        token: &str,
        name: &str,
        advertise_peer_urls: &str,
    ) -> anyhow::Result<FoundingMembership> {
        let mut peers = BTreeMap::new();
        let mut member_names = BTreeMap::new();
        let mut my_id = None;
        for member in initial_cluster.split(',').filter(|m| !m.is_empty()) {
            let (member_name, url) = member
                .split_once('=')
                .with_context(|| format!("--initial-cluster: {member:?} is not name=url"))?;
            urls::socket_addr(url)
                .with_context(|| format!("--initial-cluster member {member_name}"))?;
            let id = member_id(url, token);
            if peers.insert(id, url.to_string()).is_some() {
                bail!("--initial-cluster: {url} appears twice");
            }
            member_names.insert(id, member_name.to_string());
            if member_name == name {
                my_id = Some(id);
                let advertised = advertise_peer_urls.split(',').next().unwrap_or_default();
                if url != advertised {
                    bail!(
                        "--initial-cluster has {name}={url} but --initial-advertise-peer-urls is {advertise_peer_urls}"
                    );
                }
            }
        }
        let id = my_id.with_context(|| {
            format!("couldn't find local name {name:?} in the initial cluster configuration")
        })?;
        Ok(FoundingMembership {
            id,
            peers,
            member_names,
        })
    }
}

/// Runs a member until SIGTERM or SIGINT.
pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, &args.log_format)?;
    crate::heap::hold_less();
    let config = args.to_config()?;
    tracing::info!(
        name = %args.name,
        member = %format!("{:x}", config.node.id.0),
        cluster = %format!("{:x}", config.node.cluster_id),
        data_dir = %config.node.data_dir.display(),
        "starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ostrakon-io")
        .build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        ostrakon_server::run(config, shutdown).await
    })?;
    Ok(())
}

fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{level},h2=warn,tower=warn,hyper=warn"))
            .with_context(|| format!("--log-level {level}"))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    fn node_config(flags: &[&str]) -> NodeConfig {
        let argv = std::iter::once("ostrakon").chain(flags.iter().copied());
        Cli::try_parse_from(argv)
            .expect("flags parse")
            .server
            .to_config()
            .expect("flags are valid")
            .node
    }

    /// Regression: with one tick per heartbeat, the default flags left ten possible
    /// election timeouts, and one failover in ten was a split vote (3.4 s, not 1.2).
    #[test]
    fn randomized_election_timeouts_take_forty_values_at_the_default_flags() {
        let config = node_config(&[]);
        assert_eq!(config.tick_interval, Duration::from_millis(25));
        assert_eq!(config.heartbeat_ticks, 4);
        // The raft core draws from [election_ticks, 2 * election_ticks).
        assert_eq!(config.election_ticks, 40);
    }

    #[test]
    fn a_split_by_load_waits_for_half_a_spare_core_unless_told_otherwise() {
        assert_eq!(node_config(&[]).range_split_spare_cores, 0.5);
        let flags = ["--range-split-spare-cores", "0"];
        assert_eq!(node_config(&flags).range_split_spare_cores, 0.0);
        let argv = ["ostrakon", "--range-split-spare-cores=-1"];
        let error = Cli::try_parse_from(argv)
            .expect("flags parse")
            .server
            .to_config()
            .expect_err("no negative count of cores");
        assert!(error.to_string().contains("--range-split-spare-cores"));
    }

    #[test]
    fn lease_checkpoints_take_etcds_flags() {
        let interval = |flags: &[&str]| node_config(flags).lease_checkpoint_interval;
        assert_eq!(interval(&[]), Some(Duration::from_secs(300)));
        assert_eq!(
            interval(&["--experimental-lease-checkpoint-interval", "7s"]),
            Some(Duration::from_secs(7))
        );
        // 0 is etcd's default.
        assert_eq!(
            interval(&["--experimental-lease-checkpoint-interval", "0s"]),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            interval(&[
                "--experimental-enable-lease-checkpoint",
                "--experimental-enable-lease-checkpoint-persist"
            ]),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            interval(&["--experimental-enable-lease-checkpoint=false"]),
            None
        );
    }

    #[test]
    fn strict_reconfig_check_is_on_unless_turned_off_as_in_etcd() {
        assert!(node_config(&[]).strict_reconfig_check);
        assert!(node_config(&["--strict-reconfig-check"]).strict_reconfig_check);
        assert!(!node_config(&["--strict-reconfig-check=false"]).strict_reconfig_check);
    }

    #[test]
    fn heartbeats_and_election_timeouts_keep_their_milliseconds() {
        let config = node_config(&["--heartbeat-interval", "30", "--election-timeout", "450"]);
        assert_eq!(
            config.tick_interval * config.heartbeat_ticks,
            Duration::from_millis(30)
        );
        assert_eq!(
            config.tick_interval * config.election_ticks,
            Duration::from_millis(450)
        );
    }

    #[test]
    fn the_storage_engines_settings_are_set_by_flags() {
        assert_eq!(node_config(&[]).store_settings, StoreSettings::default());
        assert_eq!(StoreSettings::default().compression, BlockCompression::None);
        // Memtables are flushed at a quarter of the write buffer, within bounds.
        assert_eq!(StoreSettings::default().memtable_bytes(), 2 << 20);
        let tiny = StoreSettings {
            write_buffer_bytes: 1000,
            ..StoreSettings::default()
        };
        assert_eq!(tiny.memtable_bytes(), 64 << 10);
        let config = node_config(&[
            "--store-cache-bytes",
            "1048576",
            "--store-write-buffer-bytes",
            "2097152",
            "--store-compression",
            "lz4",
        ]);
        assert_eq!(
            config.store_settings,
            StoreSettings {
                cache_bytes: 1 << 20,
                write_buffer_bytes: 2 << 20,
                compression: BlockCompression::Lz4,
            }
        );
    }
}
