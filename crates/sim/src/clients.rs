//! What the simulated clients remember between operations.

use std::collections::BTreeMap;

use ostrakon_check::OpId;
use ostrakon_raft::{GroupId, NodeId};
use ostrakon_ranges::Directory;

/// Client ids from here on are timestamp clients (`id - TIMESTAMP_CLIENT_BASE` indexes
/// them); below it, register clients.
pub const TIMESTAMP_CLIENT_BASE: u64 = 1 << 32;
/// From here on, bank clients (`id - BANK_CLIENT_BASE` indexes them; only their
/// next-operation events carry these ids).
pub const BANK_CLIENT_BASE: u64 = 1 << 34;
/// From here on, the requests of bank clients (`id - BANK_REQUEST_BASE` numbers them).
pub const BANK_REQUEST_BASE: u64 = 1 << 37;
/// From here on, range leaders' pushes of stale locks (`id - PUSH_REQUEST_BASE`
/// numbers them).
pub const PUSH_REQUEST_BASE: u64 = 1 << 41;
/// From here on, pushers' requests that finish committed transactions (`id -
/// FINISH_REQUEST_BASE` numbers them).
pub const FINISH_REQUEST_BASE: u64 = 1 << 42;
/// From here on, a node's fetches of revisions for its range leaders' writes
/// (`id - REVISION_FETCH_BASE` numbers them).
pub const REVISION_FETCH_BASE: u64 = 1 << 43;
/// From here on, scanning clients (`id - SCAN_CLIENT_BASE` indexes them; only their
/// next-operation events carry these ids).
pub const SCAN_CLIENT_BASE: u64 = 1 << 36;
/// From here on, the requests of scanning clients (`id - SCAN_REQUEST_BASE` numbers
/// them): each request its own id, so a late answer is told from the current one.
pub const SCAN_REQUEST_BASE: u64 = 1 << 38;
/// From here on, a range leader's requests for its read floor (`id - FLOOR_CLIENT_BASE`
/// numbers them). The progress probe's pseudo-client is above, and never answered.
pub const FLOOR_CLIENT_BASE: u64 = 1 << 40;

/// A client of the registers.
pub struct ClientState {
    /// Where it sends each range's requests.
    pub believed_leader: BTreeMap<GroupId, NodeId>,
    /// Which range holds which register (the range layer's routing cache).
    pub directory: Directory,
    /// Its operation in flight, if any (at most one).
    pub outstanding: Option<OpId>,
    /// The value it last saw on each register (the expected value of its next CAS).
    pub last_seen: BTreeMap<u64, Option<u64>>,
    /// Its write waiting for a revision from the oracle (its operation is outstanding).
    pub awaiting_revision: Option<crate::kv::Command>,
    /// Revisions its write in flight has taken so far.
    pub write_attempts: u32,
}

/// A client reading every register at one revision, range by range.
pub struct ScanClient {
    /// Where it sends each range's requests.
    pub believed_leader: BTreeMap<GroupId, NodeId>,
    /// Which range holds which register.
    pub directory: Directory,
    /// Its read in flight, if any.
    pub scan: Option<Scan>,
    /// For a watcher (its reads are rounds of a watch of every register): what it was
    /// sent so far.
    pub watch: Option<WatchState>,
}

/// A register's new value: a watch event of the simulator.
pub type WatchEvent = (u64, u64);

/// A watcher of every register, served in rounds as the node serves a watcher of keys
/// in several ranges: each round takes a revision R from the oracle, reads each range's
/// history from the watcher's next revision at its leader (which raises its read floor
/// to R first, as a read at R does), then sends what the range layer's merge releases.
pub struct WatchState {
    /// The first revision not sent yet: every revision below it was sent or has no
    /// event.
    pub next: u64,
    /// The revisions sent, in the order sent.
    pub sent: Vec<ostrakon_ranges::watch_merge::RevisionEvents<WatchEvent>>,
    /// The range layer's merge (with the planted bug, if that is the seed's).
    pub merger: ostrakon_ranges::watch_merge::Merger,
}

/// One range's answer to a watcher's round.
#[derive(Clone, Debug)]
pub struct RangeWatchAnswer {
    /// The span it answered for.
    pub descriptor: ostrakon_ranges::RangeDescriptor,
    /// Its history of the registers from the watcher's next revision.
    pub history: ostrakon_ranges::watch_merge::RangeHistory<WatchEvent>,
    /// The revision of its lowest pending lock, if any.
    pub lowest_lock: Option<u64>,
}

/// A read of every register at one revision, in progress.
pub struct Scan {
    /// When it began.
    pub invoked_us: u64,
    /// The revision (None: still asking the oracle).
    pub revision: Option<u64>,
    /// What the ranges answered so far, register by register.
    pub values: BTreeMap<u64, Option<u64>>,
    /// The number of its request in flight (see `SCAN_REQUEST_BASE`), if any.
    pub request: Option<u64>,
    /// Requests sent so far; past a bound it gives up.
    pub attempts: u32,
    /// A watcher's round: the ranges' answers so far.
    pub histories: Vec<RangeWatchAnswer>,
}

/// A read of every register at one revision that completed.
#[derive(Clone, Debug)]
pub struct ScanRecord {
    /// The revision.
    pub revision: u64,
    /// Every register's value at it (None: not written at or below it).
    pub values: BTreeMap<u64, Option<u64>>,
    /// When it began and ended.
    pub invoked_us: u64,
    /// See `invoked_us`.
    pub completed_us: u64,
}

/// A client of the timestamp oracle.
pub struct TimestampClient {
    /// Where it sends requests.
    pub believed_leader: NodeId,
    /// Its request in flight, if any (at most one), in the timestamp history.
    pub outstanding: Option<OpId>,
}
