//! A node's static configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ostrakon_raft::NodeId;

/// Everything the runtime needs to know to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's member id.
    pub id: NodeId,
    /// The human name (`--name`).
    pub name: String,
    /// The cluster id reported in every response header.
    pub cluster_id: u64,
    /// The founding members and their peer URLs, this node included.
    pub peers: BTreeMap<NodeId, String>,
    /// Every founding member's name (from `--initial-cluster`).
    pub member_names: BTreeMap<NodeId, String>,
    /// This member's advertised client URLs.
    pub client_urls: Vec<String>,
    /// Where the WAL, the state machine and snapshots live.
    pub data_dir: PathBuf,
    /// The raft tick: a fraction of the heartbeat interval, so that randomized election
    /// timeouts take more distinct values than etcd's ten.
    pub tick_interval: Duration,
    /// Ticks between the leader's heartbeats (etcd's heartbeat interval / tick interval).
    pub heartbeat_ticks: u32,
    /// Ticks without a leader before an election (election timeout / tick interval).
    pub election_ticks: u32,
    /// etcd's `--strict-reconfig-check`: refuse voter changes that would leave the
    /// members that are up short of a quorum.
    pub strict_reconfig_check: bool,
    /// Quiesce idle raft groups (`--raft-quiesce`): their leaders stop ticking and
    /// heartbeating until there is work, and node liveness replaces their heartbeats
    /// for noticing a dead leader. Default true.
    pub quiesce: bool,
    /// Applied entries between snapshots of the state machine (etcd's `--snapshot-count`).
    pub snapshot_entries: u64,
    /// `--raft-log-memory-bytes`: past this, the raft logs of all groups together held in
    /// memory are compacted, heaviest first (`log_budget`; 0: no node-wide bound).
    pub raft_log_memory_bytes: u64,
    /// The storage engine's memory and block format.
    pub store_settings: StoreSettings,
    /// How long a client request may wait for commit or a read point.
    pub request_timeout: Duration,
    /// `--experimental-lease-checkpoint-interval`: the longest a lease not kept alive
    /// goes without its remaining TTL recorded in the log, so a new leader continues it
    /// from there (`lessor`: sooner once half of what it had left has gone); None: no
    /// checkpoints (`--experimental-enable-lease-checkpoint=false`).
    pub lease_checkpoint_interval: Option<Duration>,
    /// `--quota-backend-bytes`: past this store size, writes that add data raise the
    /// NOSPACE alarm and are refused.
    pub quota_backend_bytes: u64,
    /// `--range-max-bytes`: a data range whose live keys and values hold more is split
    /// (0: never, by size).
    pub range_max_bytes: u64,
    /// `--range-split-qps`: a data range serving more requests per second (on its
    /// leader's member, over 10 s) is split where its load halves (0: never, by load).
    pub range_split_qps: u64,
    /// `--range-split-spare-cores`: a split by load waits until another member's host
    /// has this many CPU cores idle, over 10 s and 3 s (`host_cpu`; 0: it waits for
    /// none).
    pub range_split_spare_cores: f64,
    /// TLS on the peer links (`--peer-cert-file` ...), if configured.
    pub peer_tls: Option<crate::tls::TlsMaterial>,
    /// Join a running cluster (`--initial-cluster-state existing`) instead of founding
    /// one; settled by `identity::settle` from the data directory on later starts.
    pub join: bool,
}

/// The storage engine's settings (`--store-cache-bytes`, `--store-write-buffer-bytes`,
/// `--store-compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// The block cache.
    pub cache_bytes: u64,
    /// All memtables together. fjall's monitor flushes the largest once they pass half
    /// of it, and past all of it a commit waits, 10 ms at a time, until flushes bring
    /// them under: on the event loop, whose commits those are, that stalls every range.
    /// So each memtable is flushed much earlier, past a quarter of this
    /// ([`StoreSettings::memtable_bytes`]), and this is the cap behind it.
    pub write_buffer_bytes: u64,
    /// How the data's blocks are written. Fixed when a member's data directory is made:
    /// the engine keeps the choice its partitions were created with.
    pub compression: BlockCompression,
}

/// How the storage engine compresses the blocks it writes to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockCompression {
    /// Blocks as they are. A read that misses the block cache costs a copy from the OS
    /// page cache, not a decompression, so the cache can stay small (docs/PERFORMANCE.md,
    /// "A small block cache over uncompressed blocks").
    None,
    /// LZ4: less disk for values that compress, and a decompression per block read
    /// outside the cache.
    Lz4,
}

impl StoreSettings {
    /// Past this a partition's memtable is flushed, as the write that fills it commits: a
    /// quarter of the write buffer, so that flushes start long before the buffer's cap
    /// stalls commits. Fixed, as the compression, when the partition is made.
    pub fn memtable_bytes(&self) -> u32 {
        (self.write_buffer_bytes / 4).clamp(64 << 10, u64::from(u32::MAX)) as u32
    }
}

impl Default for StoreSettings {
    /// A 2 MiB cache over uncompressed blocks and memtables flushed at 2 MiB: against an
    /// 8 MiB cache over LZ4 blocks and memtables flushed by fjall's monitor only, a
    /// quarter less memory per member after the side-by-side workloads at the same
    /// throughput (docs/PERFORMANCE.md, "A small block cache over uncompressed blocks").
    fn default() -> Self {
        StoreSettings {
            cache_bytes: 2 << 20,
            write_buffer_bytes: 8 << 20,
            compression: BlockCompression::None,
        }
    }
}

impl NodeConfig {
    /// The founding voters.
    pub fn voters(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }
}

/// A stable, nonzero 64-bit id from strings (FNV-1a): members and clusters are named
/// by hashes of their configuration, as in etcd, so every member computes the same ids.
pub fn stable_id(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xFF]) {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
    }
    hash.max(1)
}

/// A member's id from its peer URLs and the cluster token (etcd derives it the same way,
/// from the same inputs).
pub fn member_id(peer_urls: &str, cluster_token: &str) -> NodeId {
    NodeId(stable_id(&[peer_urls, cluster_token]))
}

/// The cluster's id from its founding members.
pub fn cluster_id(members: impl IntoIterator<Item = NodeId>) -> u64 {
    let ids: Vec<String> = members.into_iter().map(|m| m.0.to_string()).collect();
    let parts: Vec<&str> = ids.iter().map(String::as_str).collect();
    stable_id(&parts)
}
