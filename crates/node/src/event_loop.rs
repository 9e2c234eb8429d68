//! The node's single event loop: every raft group, one WAL, one `fdatasync` per round.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fjall::AbstractTree as _;
use ostrakon_proto::peer::{MemberAttributes, MemberPeerUrls, MemberRecord, WriteRequest};
use ostrakon_raft::{
    ConfChange, Config, GroupId, InitialState, LogIndex, MessageBody, NodeId, RawNode, Ready, Role,
    SnapshotMeta,
};
use ostrakon_ranges::read_wait::{grant_step, GrantStep};
use ostrakon_storage::mvcc::MemberChange;
use ostrakon_storage::mvcc::{MvccStore, DATA_PARTITION, LOCAL_PARTITION};
use ostrakon_storage::snapshot;
use ostrakon_storage::wal::{RecoveredGroup, Wal, SEGMENT_BYTES_DEFAULT};
use tokio::sync::watch;

use crate::config::{BlockCompression, NodeConfig, StoreSettings};
use crate::error::NodeError;
pub use crate::error::StartError;
use crate::handle::{GroupShared, GroupStatus, NodeHandle, SharedGroups};
pub use crate::input::{ConfResponder, Input, InputSender, ReadResponder, WriteResponder};
pub use crate::layout::Layout;
use crate::replica::Replica;
use crate::transport::Transport;
use crate::{DEFAULT_GROUP, META_GROUP};

/// Inputs drained per round before the groups' Readys are handled; bounds a round's work.
const INPUTS_PER_ROUND_MAX: usize = 4096;
/// Inputs waiting for the loop, all groups together. Beyond it, client requests are
/// refused ("too many requests") and peers' streams wait for room, so a loop that falls
/// behind slows its senders rather than growing memory without bound.
pub const INPUT_QUEUE_MAX: usize = 16 * INPUTS_PER_ROUND_MAX;
/// A snapshot is due once this many bytes of entries were applied since the last (or as
/// many as the last snapshot file holds, if more), whatever `--snapshot-count` says.
pub const SNAPSHOT_LOG_BYTES_MIN: u64 = 64 << 20;

/// Snapshot files written at once on a node; more wait (`EventLoop::snapshots_waiting`).
/// Each syncs the store, then copies a range: thousands at once (a new member catching
/// up on every range) would each take a thread and its memory.
const SNAPSHOT_WRITERS_MAX: usize = 4;

/// After a snapshot file could not be written, how long before the next try (a failing
/// disk fails each at once).
const SNAPSHOT_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often the raft logs held in memory are weighed against the node-wide budget
/// (`log_budget`): a look visits every group.
const LOG_LOOK_INTERVAL: Duration = Duration::from_millis(500);
/// At most this many groups compacted per look: each writes its applied position down
/// on the loop (a restarted node at 100,000 ranges holds a little log in each).
const LOG_COMPACTIONS_PER_LOOK_MAX: usize = 1_000;

/// The running loop's state.
pub struct EventLoop {
    config: NodeConfig,
    layout: Layout,
    /// The snapshot files kept here, per range.
    snapshot_files: crate::snapshot_files::SnapshotFiles,
    wal: Wal,
    /// The state machines' keyspace, for the stores of ranges created at runtime.
    keyspace: fjall::Keyspace,
    replicas: HashMap<GroupId, Replica>,
    /// What the handle sees of every group (the loop adds the ranges it creates).
    groups: SharedGroups,
    inputs: flume::Receiver<Input>,
    /// For the threads the loop starts (snapshot writers) to report back.
    input_tx: InputSender,
    transport: Transport,
    /// The member registry's version the transport's peers were last taken from.
    members_version_seen: u64,
    /// Whether this node has been in the group's membership (a joining node is not, until
    /// the change that adds it applies).
    was_member: bool,
    /// Raised when this node is removed from the group.
    removed: Arc<watch::Sender<bool>>,
    /// Groups that are not quiesced: the only ones a tick visits.
    ticking: BTreeSet<GroupId>,
    /// Groups given an input or a tick since their Ready was last looked at: the only
    /// ones a round visits.
    dirty: BTreeSet<GroupId>,
    /// Peers reported down to the quiesced groups they led, and not heard from since.
    nodes_down: BTreeSet<NodeId>,
    /// When each peer was last heard from (shared with the transport).
    liveness: Arc<crate::liveness::Liveness>,
    /// This node's load as leader and its peers' (shared with the transport).
    loads: Arc<crate::node_load::NodeLoads>,
    /// Each range's last step toward the first data range's membership, until answered
    /// (and, if refused, until it may be tried again): the meta range's and the other
    /// data ranges' (`follow_membership`).
    follow_attempts: HashMap<GroupId, FollowAttempt>,
    /// When the ranges this node leads are next checked against the first data range's
    /// membership (at once when it changes).
    next_follow_check: Instant,
    /// The first data range's membership when they were last checked.
    followed_conf: Option<ostrakon_raft::ConfState>,
    /// Ranges whose leadership this node won since the last check: checked at the next
    /// round, alone (a whole check per leadership won made splitting into 100,000
    /// ranges quadratic).
    follow_due: BTreeSet<GroupId>,
    /// The spans of the snapshots received and taken since the last Readies were handled
    /// (they install there): a snapshot received meanwhile must not overlap them either.
    snapshots_taken_this_round: Vec<(GroupId, ostrakon_storage::mvcc::KeySpan)>,
    /// Ranges that were due while frozen for a merge: due again each
    /// `FOLLOW_FROZEN_INTERVAL` (a thaw or a merge ends the freeze within seconds; left
    /// to the whole check, one waited `FOLLOW_SETTLED_INTERVAL`).
    follow_frozen: BTreeSet<GroupId>,
    next_follow_frozen: Instant,
    /// When this node next looks at its ranges' leaders, to spread them over the nodes.
    leader_spread: crate::leader_spread::LeaderSpread,
    /// Writes of ranges that take their revisions from the oracle, waiting for them.
    revisions: crate::revisions::RevisionFetcher,
    /// For the tasks that fetch revisions from the oracle.
    handle: NodeHandle,
    runtime: tokio::runtime::Handle,
    /// Ranges merged into others: gone from this node for good, so no late message
    /// brings a replica of one back.
    merged_away: BTreeSet<GroupId>,
    /// The ranges holding committed entries from a merge on, until this node's replica
    /// of the merge's right range has applied its freeze (`crate::merge`).
    held: BTreeSet<GroupId>,
    /// Removes every data range's compaction garbage, on one thread.
    compactor: ostrakon_storage::mvcc::Compactor,
    /// Snapshot files being written, on a thread each (at most `SNAPSHOT_WRITERS_MAX`).
    snapshot_writers: usize,
    /// Ranges whose snapshot waits for a writer, in the order they asked.
    snapshots_waiting: std::collections::VecDeque<GroupId>,
    /// The node-wide bound on the raft log held in memory.
    log_budget: crate::log_budget::LogBudget,
    /// A sync of the engine before compacting logs over the budget is under way.
    log_compaction_in_flight: bool,
    /// When the logs are next weighed against the budget.
    next_log_look: Instant,
    /// Prepares waiting for ranges this node leads, in line (`prepare_line`).
    prepare_lines: crate::prepare_line::PrepareLines,
}

struct FollowAttempt {
    step: ostrakon_raft::ConfChangeStep,
    answer: tokio::sync::oneshot::Receiver<Result<ostrakon_raft::ConfState, NodeError>>,
    retry_at: Instant,
}

/// The members that published their name, from the member registry (the data range's).
fn started_members(replicas: &HashMap<GroupId, Replica>) -> BTreeSet<NodeId> {
    replicas[&DEFAULT_GROUP]
        .store
        .members()
        .iter()
        .filter(|m| !m.name.is_empty())
        .map(|m| NodeId(m.id))
        .collect()
}

/// How often the ranges a node leads are checked against the first data range's
/// membership when it does not change (a learner caught up, a leadership moved here).
const FOLLOW_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How often a range due while frozen for a merge is looked at again.
const FOLLOW_FROZEN_INTERVAL: Duration = Duration::from_secs(1);
/// How often once every range led here has the first data range's membership and no step
/// is in flight: a check visits every range, and thousands of idle ranges made it most
/// of an idle node's work. A leadership change or a membership change checks at once.
const FOLLOW_SETTLED_INTERVAL: Duration = Duration::from_secs(10);

/// The timestamp oracle persists its bound this far ahead of its clock (docs/RANGES.md).
const ORACLE_WINDOW_MS: u64 = 3_000;

/// Opens the node's storage, recovers or bootstraps its groups (the data range and the
/// meta range), and starts the event loop on its own thread. Returns the handle and the
/// thread.
pub fn start(
    config: NodeConfig,
    runtime: tokio::runtime::Handle,
) -> Result<(NodeHandle, std::thread::JoinHandle<()>), StartError> {
    let layout = Layout::new(&config.data_dir);
    let (mut wal, mut recovered, keyspace) = open_storage(&layout, config.store_settings)?;
    remove_incoming_snapshots(&layout);
    let (input_tx, input_rx) = flume::bounded(INPUT_QUEUE_MAX);
    let transport = Transport::new(&config, layout.clone(), input_tx.clone(), runtime.clone());
    let had_data_group = recovered.groups.contains_key(&DEFAULT_GROUP);
    let (data, was_member) = open_group(
        &config,
        &layout,
        &mut wal,
        &mut recovered,
        &keyspace,
        DEFAULT_GROUP,
        false,
    )?;
    let compactor = ostrakon_storage::mvcc::Compactor::start()
        .map_err(|e| StartError::Io(PathBuf::from("compactor thread"), e))?;
    // A data directory written before the meta range existed has the data range only:
    // its members cannot found the meta range alike, so it waits for a snapshot.
    let (mut meta, _) = open_group(
        &config,
        &layout,
        &mut wal,
        &mut recovered,
        &keyspace,
        META_GROUP,
        had_data_group,
    )?;
    meta.timestamps = Some(crate::timestamps::TimestampService::new(ORACLE_WINDOW_MS));
    // The ranges splits made (and replicas waiting for a range's first snapshot): every
    // group the state machine or the WAL knows beyond the two every node has.
    let mut others: BTreeSet<GroupId> = MvccStore::stored_groups(&keyspace).into_iter().collect();
    others.extend(recovered.groups.keys().copied());
    others.retain(|group| *group != DEFAULT_GROUP && *group != META_GROUP);
    // A range merged away whose WAL records outlived a crash right after the merge.
    let merged_away = MvccStore::merged_away(&keyspace);
    for group in &merged_away {
        others.remove(group);
        if recovered.groups.remove(group).is_some() {
            wal.forget_group(*group);
        }
    }
    let mut other_replicas = Vec::new();
    for group in others {
        let (replica, _) = open_group(
            &config,
            &layout,
            &mut wal,
            &mut recovered,
            &keyspace,
            group,
            true,
        )?;
        other_replicas.push(replica);
    }
    let groups: SharedGroups = Arc::new(RwLock::new(HashMap::new()));
    let removed = Arc::new(watch::channel(false).0);
    let handle = NodeHandle::new(
        &config,
        input_tx.clone(),
        groups.clone(),
        transport.clone(),
        removed.subscribe(),
    );
    let liveness = transport.liveness().clone();
    let loads = transport.loads().clone();
    let data_store = data.store.clone();
    let (data_lessor, tasks_runtime) = (data.lessor.clone(), runtime.clone());
    let leader_spread =
        crate::leader_spread::LeaderSpread::new(config.tick_interval, config.election_ticks);
    let (range_max_bytes, range_split_qps) = (config.range_max_bytes, config.range_split_qps);
    let range_split_spare_cores = config.range_split_spare_cores;
    let snapshot_files = crate::snapshot_files::SnapshotFiles::scan(&layout);
    let log_budget = crate::log_budget::LogBudget {
        bytes_max: config.raft_log_memory_bytes,
    };
    let mut event_loop = EventLoop {
        config,
        snapshot_files,
        layout,
        wal,
        keyspace,
        replicas: HashMap::new(),
        groups,
        inputs: input_rx,
        input_tx,
        transport,
        members_version_seen: 0,
        was_member,
        removed,
        ticking: BTreeSet::new(),
        dirty: BTreeSet::new(),
        nodes_down: BTreeSet::new(),
        liveness,
        loads,
        follow_attempts: HashMap::new(),
        next_follow_check: Instant::now(),
        followed_conf: None,
        follow_due: BTreeSet::new(),
        follow_frozen: BTreeSet::new(),
        next_follow_frozen: Instant::now(),
        snapshots_taken_this_round: Vec::new(),
        leader_spread,
        revisions: crate::revisions::RevisionFetcher::default(),
        handle: handle.clone(),
        runtime,
        merged_away,
        held: BTreeSet::new(),
        compactor,
        snapshot_writers: 0,
        snapshots_waiting: std::collections::VecDeque::new(),
        log_budget,
        log_compaction_in_flight: false,
        next_log_look: Instant::now(),
        prepare_lines: crate::prepare_line::PrepareLines::default(),
    };
    event_loop.add_group(data);
    event_loop.add_group(meta);
    for replica in other_replicas {
        event_loop.add_group(replica);
    }
    // Only once the handle sees the groups: these tasks end when their group is unknown.
    tasks_runtime.spawn(crate::lease_expiry::run(
        handle.clone(),
        DEFAULT_GROUP,
        data_lessor,
        data_store.clone(),
    ));
    tasks_runtime.spawn(crate::handle::publish_attributes(
        handle.clone(),
        DEFAULT_GROUP,
    ));
    if range_max_bytes > 0 {
        tasks_runtime.spawn(crate::size_split::run(handle.clone(), range_max_bytes));
    }
    if range_split_qps > 0 {
        tasks_runtime.spawn(crate::load_split::run(
            handle.clone(),
            range_split_qps,
            range_split_spare_cores,
        ));
    }
    // Whatever this member's own splits: its peers' splits by load read its figure.
    let stopped_handle = handle.clone();
    let host_loads = handle.transport().loads().clone();
    tasks_runtime.spawn(crate::host_cpu::run(host_loads, move || {
        stopped_handle.status(DEFAULT_GROUP).is_err()
    }));
    tasks_runtime.spawn(crate::txn_pusher::run(handle.clone()));
    tasks_runtime.spawn(crate::write_gates::run(handle.clone()));
    tasks_runtime.spawn(crate::txn_horizon::run(handle.clone()));
    tasks_runtime.spawn(crate::merge_queue::run(
        handle.clone(),
        range_max_bytes,
        range_split_qps,
    ));
    event_loop.follow_member_registry(&data_store);
    let thread = std::thread::Builder::new()
        .name("ostrakon-raft".into())
        .spawn(move || event_loop.run())
        .map_err(|e| StartError::Io(PathBuf::from("thread"), e))?;
    Ok((handle, thread))
}

/// Opens one group's state machine and raft state: recovered from the WAL, or waiting for
/// the leader's snapshot (a joining node, or `wait_for_snapshot`), or bootstrapped as a
/// founder. Returns its replica and whether this node is in its membership.
fn open_group(
    config: &NodeConfig,
    layout: &Layout,
    wal: &mut Wal,
    recovered: &mut ostrakon_storage::wal::Recovered,
    keyspace: &fjall::Keyspace,
    group: GroupId,
    wait_for_snapshot: bool,
) -> Result<(Replica, bool), StartError> {
    let store = Arc::new(MvccStore::open(keyspace, group, crate::group_span(group)));
    let initial = match recovered.groups.remove(&group) {
        Some(state) => {
            let (initial, adopted) = recovered_state(state, &store)?;
            if adopted {
                seal_adopted_snapshot(layout, wal, &store, group, &initial)?;
            }
            initial
        }
        // A range a split created whose WAL records were lost in a crash (they are
        // written with the next round's sync): it starts where its state machine is.
        None if store.applied().index > LogIndex(0) => {
            let (initial, _) = recovered_state(RecoveredGroup::default(), &store)?;
            seal_adopted_snapshot(layout, wal, &store, group, &initial)?;
            initial
        }
        None if config.join || wait_for_snapshot => {
            tracing::info!(
                group = group.0,
                "waiting for the leader's snapshot of a group of a running cluster"
            );
            InitialState::joining()
        }
        None => bootstrap(config, layout, wal, &store, group)?,
    };
    let was_member = initial.conf_state.members().contains(&config.id);
    let replica = new_replica(config, group, store, initial)?;
    Ok((replica, was_member))
}

/// A replica of `group` starting from `initial`, with its state machine.
fn new_replica(
    config: &NodeConfig,
    group: GroupId,
    store: Arc<MvccStore>,
    initial: InitialState,
) -> Result<Replica, StartError> {
    let mut raft_config = Config::new(config.id, group);
    raft_config.election_ticks = config.election_ticks;
    raft_config.heartbeat_ticks = config.heartbeat_ticks;
    // A leadership transfer gives up after an election timeout, as etcd's does.
    raft_config.transfer_timeout_ticks = config.election_ticks;
    raft_config.quiesce = config.quiesce;
    let seed = config.id.0
        ^ group.0.rotate_left(32)
        ^ std::process::id() as u64
        ^ Instant::now().elapsed().as_nanos() as u64;
    let wal_hard_state = initial.hard_state;
    let node = RawNode::new(raft_config, initial, seed).map_err(|e| StartError::Raft(e.0))?;
    let status = Arc::new(RwLock::new(GroupStatus::default()));
    let (applied_tx, _) = watch::channel(store.applied_index());
    let lessor = Arc::new(crate::lessor::Lessor::new(
        config.tick_interval * config.election_ticks,
        config.lease_checkpoint_interval,
    ));
    let mut replica = Replica::new(group, node, store, status, applied_tx, lessor);
    replica.wal_hard_state = wal_hard_state;
    // Up means: the leader heard from it within an election timeout (the window
    // check-quorum uses to decide the leader still leads).
    replica.strict_reconfig_active_ticks = config
        .strict_reconfig_check
        .then_some(u64::from(config.election_ticks));
    replica.publish_status(config.id);
    Ok(replica)
}

/// Opens (creating if needed) the WAL and the state machines' keyspace under `layout`.
pub(crate) fn open_storage(
    layout: &Layout,
    store_settings: StoreSettings,
) -> Result<(Wal, ostrakon_storage::wal::Recovered, fjall::Keyspace), StartError> {
    for dir in [&layout.snap, &layout.kv] {
        std::fs::create_dir_all(dir).map_err(|e| StartError::Io(dir.clone(), e))?;
    }
    let (wal, recovered) = Wal::open(&layout.wal, SEGMENT_BYTES_DEFAULT)?;
    if recovered.torn_bytes_truncated > 0 {
        tracing::warn!(
            bytes = recovered.torn_bytes_truncated,
            "repaired a torn WAL tail"
        );
    }
    // The engine's journal stays in its 8 KiB buffer until it fills, the store is
    // persisted or the round that applied ends (`MvccStore::flush_journal`), rather
    // than going to the kernel with every batch (one `write` per applied entry on every
    // member: most of the event loop's system calls per put). Nothing is given up: the
    // raft log keeps every entry until the store has synced past it (`persist` and
    // `sync` before a log forgets), so a member that dies with its journal's tail
    // unwritten applies those entries again, as after a power loss.
    let keyspace = fjall::Config::new(&layout.kv)
        .manual_journal_persist(true)
        .cache_size(store_settings.cache_bytes)
        .max_write_buffer_size(store_settings.write_buffer_bytes)
        .open()
        .map_err(|e| StartError::Store(layout.kv.clone(), e.to_string()))?;
    // Before the ranges shared one data partition, each group had its own (`g1-kv`).
    // Checked before anything is made in the directory.
    if keyspace.partition_exists("g1-kv") {
        return Err(StartError::Store(
            layout.kv.clone(),
            "written by an older ostrakon (one partition per group); start a new member \
             from a backup of it (ostrakon snapshot restore)"
                .into(),
        ));
    }
    // The partitions take their block format and memtable size when they are made, here
    // on a new member; an existing partition keeps what it was made with (the engine
    // records both), and the stores that open them later ask for nothing.
    let compression = match store_settings.compression {
        BlockCompression::None => fjall::CompressionType::None,
        BlockCompression::Lz4 => fjall::CompressionType::Lz4,
    };
    for partition in [DATA_PARTITION, LOCAL_PARTITION] {
        let handle = keyspace
            .open_partition(
                partition,
                fjall::PartitionCreateOptions::default()
                    .compression(compression)
                    .max_memtable_size(store_settings.memtable_bytes()),
            )
            .map_err(|e| StartError::Store(layout.kv.clone(), e.to_string()))?;
        let made_with = handle.tree.tree_config().compression;
        if made_with != compression {
            tracing::warn!(
                partition,
                made_with = ?made_with,
                asked = ?compression,
                "the storage engine keeps the block compression this member's data \
                 directory was made with; --store-compression applies to new members"
            );
        }
    }
    Ok((wal, recovered, keyspace))
}

/// The raft state to restart from: the WAL's, unless the state machine holds a snapshot
/// received from the leader that the WAL never recorded (the member crashed between the
/// two). Returns whether the state machine's position was adopted as the snapshot; the
/// WAL must then record it before anything else is appended.
fn recovered_state(
    state: RecoveredGroup,
    store: &MvccStore,
) -> Result<(InitialState, bool), StartError> {
    let applied = store.applied();
    let mut snapshot = state.snapshot.unwrap_or_default();
    let mut entries = state.entries;
    if applied.index < snapshot.index {
        return Err(StartError::Inconsistent(format!(
            "the state machine is at index {} but the WAL starts after a snapshot at {}; \
             the data directory is damaged",
            applied.index, snapshot.index
        )));
    }
    let mut hard_state = state.hard_state;
    // Entries are applied only once the WAL holds them, so a state machine ahead of the
    // WAL's log (or at an entry the log has with another term) installed a snapshot whose
    // WAL record was lost in a crash. The data is the leader's, committed and durable:
    // restart from it as the snapshot, discarding the log as raft does when it installs
    // one. Otherwise the commit index would be raised past the log's end.
    let log_matches = applied.index == snapshot.index
        || entries
            .iter()
            .any(|e| e.index == applied.index && e.term == applied.term);
    let adopted = !log_matches;
    if adopted {
        tracing::warn!(
            index = applied.index.0,
            wal_snapshot = snapshot.index.0,
            "the state machine holds a snapshot the WAL did not record (a crash while \
             installing it); restarting from it"
        );
        snapshot = SnapshotMeta {
            index: applied.index,
            term: applied.term,
            conf_state: applied.conf_state.clone(),
        };
        entries.clear();
        if hard_state.term < applied.term {
            // The vote of an older term means nothing in this one.
            hard_state.term = applied.term;
            hard_state.vote = NodeId::NONE;
        }
    }
    // The state machine may have applied entries whose commit index the WAL recorded in
    // a later round; what is applied was committed.
    hard_state.commit = hard_state.commit.max(applied.index);
    let initial = InitialState {
        hard_state,
        snapshot,
        entries,
        applied: applied.index,
        conf_state: applied.conf_state,
    };
    Ok((initial, adopted))
}

/// Records an adopted snapshot (`recovered_state`) durably: a snapshot file of the
/// state machine at its position, if the crash came before the received one was kept
/// (a leader must be able to send it), then the WAL's snapshot and hard state records.
fn seal_adopted_snapshot(
    layout: &Layout,
    wal: &mut Wal,
    store: &MvccStore,
    group: GroupId,
    initial: &InitialState,
) -> Result<(), StartError> {
    let meta = initial.snapshot.clone();
    let file = layout.snapshot_file(group, meta.index);
    if !file.exists() {
        snapshot::create(store, &file).map_err(|e| StartError::Inconsistent(e.to_string()))?;
    }
    wal.set_snapshot(group, meta);
    wal.set_hard_state(group, initial.hard_state);
    wal.sync();
    Ok(())
}

/// Removes received snapshot files that were never installed, and partial ones whose
/// stream broke off: after a restart nothing waits for them (the leader sends again what
/// it still needs).
fn remove_incoming_snapshots(layout: &Layout) {
    let Ok(entries) = std::fs::read_dir(&layout.snap) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        if entry.file_name().to_string_lossy().starts_with("incoming-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A founding member's first start of a group: the synthetic snapshot at index 1, made
/// durable in the state machine, as a snapshot file (so it can be sent to members added
/// later) and in the WAL. The data range's holds the member registry of the founders.
pub(crate) fn bootstrap(
    config: &NodeConfig,
    layout: &Layout,
    wal: &mut Wal,
    store: &MvccStore,
    group: GroupId,
) -> Result<InitialState, StartError> {
    if store.applied().index > LogIndex(0) {
        return Err(StartError::Inconsistent(
            "the state machine has data but the WAL is empty; the data directory is damaged".into(),
        ));
    }
    let initial = InitialState::bootstrap(config.voters());
    let meta = initial.snapshot.clone();
    // Every founder registers the same founders, from the same flags.
    let registry = if group == DEFAULT_GROUP {
        founder_records(config)
    } else {
        Vec::new()
    };
    for record in registry {
        let change = MemberChange::PeerUrls(MemberPeerUrls {
            id: record.id,
            peer_urls: record.peer_urls,
        });
        store.apply_member_change(meta.index, meta.term, &change);
        let change = MemberChange::Attributes(MemberAttributes {
            id: record.id,
            name: record.name,
            client_urls: Vec::new(),
        });
        store.apply_member_change(meta.index, meta.term, &change);
    }
    store.apply_conf_state(meta.index, meta.term, meta.conf_state.clone());
    seal_bootstrap(layout, wal, store, group, &initial)?;
    tracing::info!(group = group.0, voters = ?config.voters(), "bootstrapped a new cluster's group");
    Ok(initial)
}

/// The founding members' registry records, from `--initial-cluster`.
pub(crate) fn founder_records(config: &NodeConfig) -> Vec<MemberRecord> {
    config
        .peers
        .iter()
        .map(|(id, url)| MemberRecord {
            id: id.0,
            name: config.member_names.get(id).cloned().unwrap_or_default(),
            peer_urls: vec![url.clone()],
            client_urls: Vec::new(),
            removed: false,
            leaving: false,
        })
        .collect()
}

/// Makes a founder's starting state durable: the state machine, a snapshot file at the
/// bootstrap position (so it can be sent to members added later) and the WAL.
pub(crate) fn seal_bootstrap(
    layout: &Layout,
    wal: &mut Wal,
    store: &MvccStore,
    group: GroupId,
    initial: &InitialState,
) -> Result<(), StartError> {
    let meta = initial.snapshot.clone();
    store.persist();
    snapshot::create(store, &layout.snapshot_file(group, meta.index))
        .map_err(|e| StartError::Inconsistent(e.to_string()))?;
    wal.set_snapshot(group, meta);
    wal.set_hard_state(group, initial.hard_state);
    wal.sync();
    Ok(())
}

impl EventLoop {
    /// Hosts a group: the loop drives it from now on and the handle sees it. A data
    /// range publishes its events for watchers, and the node's compactor removes its
    /// compactions' garbage.
    fn add_group(&mut self, replica: Replica) {
        let group = replica.group;
        if group != META_GROUP {
            self.compactor.attach(&replica.store);
        }
        let events = Arc::new(crate::events::RevisionChannel::default());
        if group != META_GROUP {
            replica
                .store
                .set_event_sink(Arc::new(crate::events::BroadcastSink(events.clone())));
        }
        let shared = GroupShared {
            store: replica.store.clone(),
            status: replica.status.clone(),
            applied: replica.applied_tx.subscribe(),
            lessor: replica.lessor.clone(),
            events,
            requests: Default::default(),
            term_word: replica.term_word.clone(),
        };
        self.groups.write().unwrap().insert(group, Arc::new(shared));
        // Once listed: a store opened frozen tells the directory at once, and a look at
        // the directory must find the range (a range gone is no longer frozen here).
        replica.store.set_span_listener(self.handle.span_listener());
        self.handle.group_changed(group);
        self.replicas.insert(group, replica);
        self.ticking.insert(group);
        self.dirty.insert(group);
        self.leader_spread.unsettle();
    }

    /// A replica of a range this node does not host yet, for a message from the range's
    /// group (whose leader is ahead of this node's split, or sends it the range's first
    /// snapshot because this node will never apply the split): it holds nothing until
    /// the snapshot comes.
    fn host_uninitialized(&mut self, group: GroupId) {
        if group == META_GROUP
            || group == DEFAULT_GROUP
            || self.replicas.contains_key(&group)
            || self.merged_away.contains(&group)
        {
            return;
        }
        let store = Arc::new(MvccStore::open(
            &self.keyspace,
            group,
            crate::group_span(group),
        ));
        let replica = match new_replica(&self.config, group, store, InitialState::joining()) {
            Ok(replica) => replica,
            Err(error) => panic!("a new replica of group {} fails: {error}", group.0),
        };
        tracing::info!(
            group = group.0,
            "hosting a replica of a new range, waiting for its snapshot"
        );
        self.add_group(replica);
    }

    /// The range a split just created on this node: its group starts here from the
    /// founding state every replica of the range shares (replacing a replica that was
    /// waiting for the range's snapshot, whose vote it keeps).
    fn host_split_range(&mut self, split: crate::split::SplitOff) {
        let group = split.group;
        let Some(store) = split.store else {
            // The range's own snapshot reached this node first: it is here already.
            return;
        };
        // The cut must be on disk before the WAL records that say the new range exists
        // (a power loss between them would leave a WAL ahead of the state machine).
        store.sync();
        let mut initial = InitialState::founding(split.conf_state);
        if let Some(mut waiting) = self.replicas.remove(&group) {
            let voted = waiting.wal_hard_state;
            if voted.term >= initial.hard_state.term {
                initial.hard_state.term = voted.term;
                initial.hard_state.vote = voted.vote;
            }
            waiting.fail_all(NodeError::LeaderChanged);
            self.groups.write().unwrap().remove(&group);
            self.handle.group_changed(group);
            self.ticking.remove(&group);
        }
        self.wal.set_snapshot(group, initial.snapshot.clone());
        self.wal.set_hard_state(group, initial.hard_state);
        let replica = match new_replica(&self.config, group, Arc::new(store), initial) {
            Ok(replica) => replica,
            Err(error) => panic!("the range a split created fails to start: {error}"),
        };
        tracing::info!(group = group.0, span = ?replica.store.span(), "a split created a range");
        crate::metrics::metrics().range_splits.inc();
        // No snapshot file yet: the first is written when a follower first needs one
        // (`SnapshotSent::NoFile`). Every member writing one at every split made
        // thousands of snapshot writes at once when splits came fast.
        self.add_group(replica);
    }

    /// Removes the replica of a range merged into another, for good: its group stops,
    /// its waiting clients are told to route again, the WAL forgets it, its snapshot
    /// files go, and no later message brings it back. Its data stays: it is the merged
    /// range's now.
    /// `waiting_error` is what its waiting clients get: `Dropped` where the replica had
    /// applied its freeze (nothing proposed after it applies), `LeaderChanged` where a
    /// snapshot overtook it (a proposal may have applied).
    fn destroy_merged(&mut self, group: GroupId, waiting_error: NodeError) {
        self.merged_away.insert(group);
        let Some(mut replica) = self.replicas.remove(&group) else {
            return;
        };
        // Never proposed: routed again.
        for parked in self.prepare_lines.drain(group) {
            drop(parked.respond.send(Err(NodeError::Dropped)));
        }
        self.publish_prepares_in_line();
        replica.fail_all(waiting_error);
        // Readers holding its store route again.
        replica.store.retire();
        let was_leader = replica.status.read().unwrap().is_leader;
        record_group_role(group, false, was_leader);
        self.groups.write().unwrap().remove(&group);
        self.handle.group_changed(group);
        self.ticking.remove(&group);
        self.dirty.remove(&group);
        self.held.remove(&group);
        self.leader_spread.unsettle();
        self.wal.forget_group(group);
        self.snapshot_files.remove_all(group);
        self.transport.forget_range(group);
        crate::metrics::metrics().range_merges.inc();
        self.publish_group_gauges();
        tracing::info!(
            group = group.0,
            "a range merged into another is gone from this node"
        );
    }

    /// Applies the merges held in the ranges of `held` whose right range has reached its
    /// freeze here, then what each held after its merge.
    fn apply_held_merges(&mut self) {
        for group in self.held.clone() {
            if !self.apply_held_merge(group) {
                self.held.remove(&group);
            }
        }
    }

    /// The merge `left` holds first: applied (or refused), unless this node's replica of
    /// its right range must catch up first. Returns whether `left` still holds entries.
    fn apply_held_merge(&mut self, left: GroupId) -> bool {
        let me = self.config.id;
        let Some(replica) = self.replicas.get(&left) else {
            return false;
        };
        let Some(entry) = replica.held_entries.first() else {
            return false;
        };
        let (index, term) = (entry.index, entry.term);
        let merge = crate::merge::held_command(entry);
        let right = GroupId(merge.right_range_id);
        let step = crate::merge::step(
            &replica.store,
            replica.node.conf_state(),
            &merge,
            self.replicas.get(&right).map(|r| &r.store),
        );
        let outcome = match step {
            crate::merge::MergeStep::Wait {
                right,
                freeze_index,
                freeze_term,
            } => {
                // The left range's commit of the merge proves the freeze committed; this
                // replica may not have heard so from a leader that is gone now.
                if let Some(right_replica) = self.replicas.get_mut(&right) {
                    if right_replica.node.commit_known(freeze_index, freeze_term) {
                        self.dirty.insert(right);
                    }
                }
                return true;
            }
            crate::merge::MergeStep::MissingRight { right } => {
                // Cannot apply: the range stays held here (its other replicas go on)
                // rather than crash on every restart. See `MergeStep::MissingRight`.
                let replica = self.replicas.get_mut(&left).expect("looked up above");
                if replica.missing_right_logged != Some(index) {
                    replica.missing_right_logged = Some(index);
                    tracing::error!(
                        left = left.0,
                        right = right.0,
                        index = index.0,
                        "this replica replays a merge of a range it holds no replica of \
                         (it joined after the merge, from an older snapshot): it stops here"
                    );
                }
                return true;
            }
            crate::merge::MergeStep::Refused(error) => {
                replica.store.set_applied(index, term);
                ostrakon_storage::mvcc::WriteOutcome::Error(error)
            }
            crate::merge::MergeStep::Apply(right) => {
                let right_store = self.replicas[&right].store.clone();
                replica.store.apply_merge(index, term, &right_store);
                // On disk before the WAL forgets the right range.
                replica.store.sync();
                let span = replica.store.span().to_record();
                tracing::info!(
                    left = left.0,
                    right = right.0,
                    "merged a range into the one before it"
                );
                self.destroy_merged(right, NodeError::Dropped);
                ostrakon_storage::mvcc::WriteOutcome::RangesMerged(
                    ostrakon_proto::peer::RangesMerged { span: Some(span) },
                )
            }
        };
        let merged = matches!(
            outcome,
            ostrakon_storage::mvcc::WriteOutcome::RangesMerged(_)
        );
        let replica = self.replicas.get_mut(&left).expect("looked up above");
        replica.finish_merge(outcome, me);
        if merged {
            // A member added to the range from now on must get a snapshot that holds
            // the merged keys, not the log: its membership changes wait for one.
            replica.snapshot_due_for_merge = Some(index);
            replica.span_changed_at = index;
        }
        let campaign = replica.node.role() == Role::Leader;
        if campaign {
            // The merge and the entries held after it applied outside a round's Readies.
            self.handle.range_work().after_change(
                left,
                &replica.store,
                self.config.range_max_bytes,
            );
        }
        let split_offs: Vec<_> = replica
            .take_split_offs()
            .into_iter()
            .map(|split| (split, campaign))
            .collect();
        let still_held = !replica.held_entries.is_empty();
        self.dirty.insert(left);
        self.host_split_offs(split_offs);
        if merged && !crate::merge::skips_snapshot_after_merge() {
            self.start_snapshot(left);
        }
        still_held
    }

    /// Another data range here whose span overlaps `span` (the span of a snapshot for
    /// `group`), if any.
    fn overlapping_range(
        &self,
        group: GroupId,
        span: &ostrakon_storage::mvcc::KeySpan,
        absorbed: &[GroupId],
    ) -> Option<GroupId> {
        // The node's directory: every data range here with its store's span (the meta
        // range's holds no key), searched rather than every replica looked at (a look
        // per snapshot received was most of a node's work at 40,000 ranges). And the
        // snapshots taken earlier this round: each installs in this round's Readies,
        // after this check, so two overlapping ones taken in one round both went in.
        let directory = self.handle.directory();
        crate::local_directory::overlapping_for_snapshot(
            &directory,
            &self.snapshots_taken_this_round,
            group,
            span,
            absorbed,
        )
    }

    /// A read barrier no fetch holds up: every write of the range that can take a
    /// revision at or below the read's is in the leader's log, so the read waits for the
    /// leader's last entry and for a read index (the leader is still the leader).
    fn read_barrier(&mut self, barrier: crate::revisions::WaitingBarrier) {
        let crate::revisions::WaitingBarrier {
            group,
            respond,
            word,
        } = barrier;
        match self.replicas.get_mut(&group) {
            Some(replica) if replica.node.role() == Role::Leader => {
                let last = replica.node.last_index();
                replica.read_index_at_least(last, respond, word);
                self.dirty.insert(group);
            }
            Some(replica) => drop(respond.send(Err(NodeError::NotLeader(replica.node.leader())))),
            None => drop(respond.send(Err(NodeError::UnknownGroup))),
        }
    }

    /// A fresh read whose fetch gave it `revision`, after the fetch's writes were
    /// proposed: a barrier at `revision` in the term it arrived in (a later leadership
    /// may not have proposed every write of this one's fetches: the reader tries again).
    /// `granter_word`: the word of the member whose oracle granted the fetch, read after
    /// it handed `revision` out, if it gave one for the read's range.
    fn fresh_read_point(
        &mut self,
        read: crate::revisions::WaitingFreshRead,
        revision: u64,
        granter_word: Option<crate::member_word::MemberWord>,
    ) {
        let crate::revisions::WaitingFreshRead {
            group,
            respond,
            term,
        } = read;
        match self.replicas.get_mut(&group) {
            Some(replica) if replica.node.role() == Role::Leader && replica.node.term() == term => {
                let last = replica.node.last_index();
                let waiter = crate::input::ReadWaiter::Fresh { respond, revision };
                // The read index must follow this fetch (`NodeHandle::fresh_read_point`):
                // a heartbeat round begun now, or the granter's word, read after its
                // oracle handed `revision` out. A leader of a later term needs the
                // granter's vote or this one's, so none was elected before `revision`
                // was handed out, and a later one fetches its writes' revisions above
                // it (docs/PERFORMANCE.md, "A grant vouches for its asker's leadership").
                replica.read_index_at_least(last, waiter, granter_word);
                self.dirty.insert(group);
            }
            Some(replica) if replica.node.role() == Role::Leader => {
                drop(respond.send(Err(NodeError::LeaderChanged)))
            }
            Some(replica) => drop(respond.send(Err(NodeError::NotLeader(replica.node.leader())))),
            None => drop(respond.send(Err(NodeError::UnknownGroup))),
        }
    }

    /// Asks the oracle for the revisions of the writes waiting for them, if none is
    /// being fetched; the answer comes back as `Input::RevisionsGranted`.
    fn fetch_revisions(&mut self) {
        let Some((fetch, count)) = self.revisions.start() else {
            return;
        };
        let vouch_for = self
            .revisions
            .fresh_read_ranges_in_flight(crate::transport::VOUCH_FOR_MAX);
        let handle = self.handle.clone();
        let inputs = self.input_tx.clone();
        self.runtime.spawn(async move {
            let (granted, vouched) = match handle.timestamps_vouched(count, &vouch_for).await {
                Ok(granted) => (Ok(granted.range), granted.vouched),
                Err(error) => (Err(error), Vec::new()),
            };
            let _ = inputs
                .send_async(Input::RevisionsGranted {
                    fetch,
                    granted,
                    vouched,
                })
                .await;
        });
    }

    fn run(mut self) {
        let tick = self.config.tick_interval;
        let mut next_tick = Instant::now() + tick;
        loop {
            // Persisting can itself make a Ready (a lone member commits once its own
            // WAL has the entry): handle it now rather than a tick later.
            let wait = if !self.dirty.is_empty() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            match self.inputs.recv_timeout(wait) {
                Ok(Input::Shutdown) => break,
                Ok(input) => self.handle(input),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            let mut shutdown = false;
            for _ in 0..INPUTS_PER_ROUND_MAX {
                match self.inputs.try_recv() {
                    Ok(Input::Shutdown) => {
                        shutdown = true;
                        break;
                    }
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.tick_groups();
                next_tick += tick;
                if next_tick < Instant::now() {
                    // The loop fell behind (a long fsync); do not fire a burst of ticks.
                    next_tick = Instant::now() + tick;
                }
            }
            self.fetch_revisions();
            self.handle_readies();
            // A head let in on a range that takes the oracle's revisions asks for its
            // revision now, not a round later (which may be a tick away).
            if self.release_prepare_lines() {
                self.fetch_revisions();
            }
            if shutdown {
                break;
            }
        }
        self.stop();
    }

    /// A tick for every group that is not quiesced, then node liveness.
    fn tick_groups(&mut self) {
        for &group in &self.ticking {
            self.replicas
                .get_mut(&group)
                .expect("a ticking group exists")
                .node
                .tick();
            self.dirty.insert(group);
        }
        self.check_liveness();
        self.publish_group_gauges();
        if !self.snapshots_waiting.is_empty() {
            self.start_waiting_snapshots();
        }
        self.weigh_logs();
    }

    /// The group counts as they are now: also after a round that woke or quiesced a
    /// group, not only at the next tick (a scrape in between saw a woken group as
    /// quiesced, which the quiescence test caught on a loaded machine).
    fn publish_group_gauges(&self) {
        let metrics = crate::metrics::metrics();
        metrics.raft_groups.set(self.replicas.len() as i64);
        metrics
            .raft_groups_quiesced
            .set((self.replicas.len() - self.ticking.len()) as i64);
    }

    /// Reports every peer newly silent for an election timeout to every group (quiesced
    /// followers of a leader there no longer time out by themselves), and every peer
    /// heard from again after that (a quiesced leader catches it up).
    fn check_liveness(&mut self) {
        let silence = self.config.tick_interval * self.config.election_ticks;
        let now = Instant::now();
        for peer in self.transport.peer_ids() {
            let silent = self.liveness.is_silent(peer, silence, now);
            if !silent {
                if self.nodes_down.remove(&peer) {
                    tracing::info!(peer = %format!("{:x}", peer.0), "a peer reported down is heard from again");
                    self.leader_spread.unsettle();
                    for (&group, replica) in self.replicas.iter_mut() {
                        replica.node.report_node_up(peer);
                        self.dirty.insert(group);
                    }
                }
                continue;
            }
            if !self.nodes_down.insert(peer) {
                continue;
            }
            crate::metrics::metrics().nodes_reported_down.inc();
            self.leader_spread.unsettle();
            tracing::info!(
                peer = %format!("{:x}", peer.0),
                "no word from a peer for an election timeout: its quiesced groups elect again"
            );
            // Only on the transition, so a scan of the groups is rare.
            for (&group, replica) in self.replicas.iter_mut() {
                replica.node.report_node_down(peer);
                self.dirty.insert(group);
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let quiesced_group = input.group().filter(|group| {
            self.replicas
                .get(group)
                .is_some_and(|replica| replica.node.is_quiesced())
        });
        let woken_by = quiesced_group.map(|_| input.kind_name());
        if let Some(group) = input.group() {
            // Whatever reaches a group may wake it; its Ready decides (handle_readies).
            self.dirty.insert(group);
        }
        self.handle_input(input);
        if let (Some(group), Some(woken_by)) = (quiesced_group, woken_by) {
            if self
                .replicas
                .get(&group)
                .is_some_and(|replica| !replica.node.is_quiesced())
            {
                tracing::debug!(group = group.0, woken_by, "a quiesced group woke");
            }
        }
    }

    fn handle_input(&mut self, input: Input) {
        match input {
            Input::Raft(message) => {
                self.host_uninitialized(message.group);
                if let Some(replica) = self.replicas.get_mut(&message.group) {
                    replica.node.step(message);
                }
            }
            Input::Propose {
                group,
                write,
                respond,
                may_wait,
            } => self.propose_write(group, write, respond, may_wait),
            Input::RevisionsGranted {
                fetch,
                granted,
                vouched,
            } => {
                if granted.is_err() {
                    // Its writes are answered with the error: no line waits for them.
                    self.prepare_lines.fetch_failed();
                }
                for waiting in self.revisions.granted(fetch, granted) {
                    let Some(replica) = self.replicas.get_mut(&waiting.group) else {
                        drop(waiting.respond.send(Err(NodeError::UnknownGroup)));
                        continue;
                    };
                    let leading_in =
                        (replica.node.role() == Role::Leader).then(|| replica.node.term());
                    let step = grant_step(leading_in, waiting.term);
                    if is_prepare(&waiting.write) {
                        match step {
                            // Fetched again: the line still waits for it.
                            GrantStep::FetchAgain => {
                                self.prepare_lines.fetching(waiting.group, Instant::now());
                            }
                            GrantStep::Propose | GrantStep::NotLeader => {
                                self.prepare_lines.fetched(waiting.group);
                            }
                        }
                    }
                    if waiting.respond.is_closed() {
                        // Its caller gave up (answered a timeout): not proposed, it
                        // leaves its revision unused, as revisions may be sparse.
                        continue;
                    }
                    match step {
                        GrantStep::Propose => {
                            replica.propose(waiting.write, waiting.respond);
                            self.dirty.insert(waiting.group);
                        }
                        GrantStep::FetchAgain => {
                            let mut waiting = waiting;
                            waiting.term = replica.node.term();
                            waiting.write.revision = 0;
                            self.revisions.wait(waiting);
                        }
                        GrantStep::NotLeader => drop(
                            waiting
                                .respond
                                .send(Err(NodeError::NotLeader(replica.node.leader()))),
                        ),
                    }
                }
                for barrier in self.revisions.released_barriers() {
                    self.read_barrier(barrier);
                }
                for (read, revision) in self.revisions.released_fresh_reads() {
                    let word = vouched
                        .iter()
                        .find(|(group, _)| *group == read.group)
                        .map(|(_, word)| *word);
                    self.fresh_read_point(read, revision, word);
                }
            }
            Input::FreshReadPoint { group, respond } => match self.replicas.get(&group) {
                Some(replica) if replica.node.role() == Role::Leader => {
                    self.revisions
                        .wait_fresh(crate::revisions::WaitingFreshRead {
                            group,
                            respond,
                            term: replica.node.term(),
                        });
                }
                Some(replica) => {
                    drop(respond.send(Err(NodeError::NotLeader(replica.node.leader()))))
                }
                None => drop(respond.send(Err(NodeError::UnknownGroup))),
            },
            Input::ReadBarrier {
                group,
                respond,
                word,
            } => {
                let barrier = crate::revisions::WaitingBarrier {
                    group,
                    respond,
                    word,
                };
                if let Some(barrier) = self.revisions.barrier(barrier) {
                    self.read_barrier(barrier);
                }
            }
            Input::ReadIndex { group, respond } => match self.replicas.get_mut(&group) {
                Some(replica) => replica.read_index(respond),
                None => drop(respond.send(Err(NodeError::UnknownGroup))),
            },
            Input::SnapshotReceived {
                message,
                path,
                span,
                absorbed,
                verdict,
            } => {
                self.host_uninitialized(message.group);
                // Ranges merged into the snapshot's range overlap it here until it is
                // installed, which removes them.
                if let Some(other) = span
                    .as_ref()
                    .and_then(|span| self.overlapping_range(message.group, span, &absorbed))
                {
                    // Another range here holds some of its keys: installing it now would
                    // mix the two ranges' versions. Either that range has not applied the
                    // split that gave them to this one (the leader sends the snapshot
                    // again, and by then it has caught up), or the snapshot is older
                    // than a split of its own range whose new range is here already (its
                    // leader, told, takes a newer one: waiting would never end).
                    tracing::info!(
                        group = message.group.0,
                        other = other.0,
                        "a snapshot overlaps another range here; refused"
                    );
                    let _ = std::fs::remove_file(&path);
                    let _ = verdict.send(crate::input::SnapshotVerdict::Overlaps(other));
                    return;
                }
                let _ = verdict.send(crate::input::SnapshotVerdict::Taken);
                let Some(replica) = self.replicas.get_mut(&message.group) else {
                    return;
                };
                if let Some(span) = span {
                    self.snapshots_taken_this_round.push((message.group, span));
                }
                crate::metrics::metrics().snapshots_received.inc();
                if let MessageBody::InstallSnapshot { meta } = &message.body {
                    replica.incoming_snapshots.insert(meta.index, path);
                }
                replica.node.step(message);
            }
            Input::SnapshotReport {
                group,
                to,
                outcome,
                index,
            } => {
                if let Some(replica) = self.replicas.get_mut(&group) {
                    replica
                        .node
                        .report_snapshot(to, outcome == crate::input::SnapshotSent::Delivered);
                }
                match outcome {
                    crate::input::SnapshotSent::RefusedAsOverlapping => {
                        self.refresh_snapshot_older_than_split(group)
                    }
                    // Written now; raft sends it again once the log starts at it. Not if
                    // a newer file replaced it while the send waited for its turn: raft
                    // sends that one.
                    crate::input::SnapshotSent::NoFile
                        if self.replicas.contains_key(&group)
                            && self
                                .snapshot_files
                                .newest(group)
                                .is_none_or(|newest| newest <= index) =>
                    {
                        self.start_snapshot(group)
                    }
                    _ => {}
                }
            }
            Input::SnapshotCreated {
                group,
                meta,
                file_bytes,
            } => self.snapshot_created(group, meta, file_bytes),
            Input::SnapshotFailed { group } => self.snapshot_failed(group),
            Input::LogsCompactable { metas } => self.compact_logs(metas),
            Input::TransferLeader {
                group,
                target,
                only_to_a_live_voter,
                respond,
            } => {
                self.leader_spread.pause_after_operator_move(Instant::now());
                let started = match self.replicas.get_mut(&group) {
                    // Down by node liveness (silent for an election timeout), not by the
                    // group's progress: a target a little behind is caught up by raft's
                    // transfer, and a range won moments ago has heard from no one yet.
                    Some(_) if only_to_a_live_voter && self.nodes_down.contains(&target) => {
                        Err(NodeError::Refused {
                            code: tonic::Code::FailedPrecondition as i32,
                            message: "the transferee is down".to_string(),
                        })
                    }
                    Some(replica) => replica
                        .node
                        .transfer_leader(target)
                        .map_err(crate::replica::propose_error),
                    None => Err(NodeError::UnknownGroup),
                };
                let _ = respond.send(started);
            }
            Input::ChangeMembership {
                group,
                change,
                respond,
            } => match self.replicas.get_mut(&group) {
                Some(_) => {
                    let started = started_members(&self.replicas);
                    let replica = self.replicas.get_mut(&group).expect("matched above");
                    let merge =
                        replica.propose_conf_change(change, respond, &self.nodes_down, &started);
                    self.snapshot_past_merge(group, merge);
                }
                None => drop(respond.send(Err(NodeError::UnknownGroup))),
            },
            Input::Freeze { group, respond } => {
                if let Some(replica) = self.replicas.get(&group) {
                    let _ = respond.send(replica.store.freeze());
                }
            }
            Input::FreezeEvery { groups, respond } => {
                let frozen: Option<Vec<_>> = groups
                    .iter()
                    .map(|group| {
                        self.replicas
                            .get(group)
                            .map(|replica| replica.store.freeze())
                    })
                    .collect();
                if let Some(frozen) = frozen {
                    let _ = respond.send(frozen);
                }
            }
            Input::RaftStatus { group, respond } => {
                if let Some(replica) = self.replicas.get(&group) {
                    let _ = respond.send(replica.node.status());
                }
            }
            Input::RemovedByPeer(peer) => {
                // The peer applied the change that removed this member; this member may
                // never learn it from its log (the leader stops sending once it is out).
                if !*self.removed.borrow() {
                    tracing::warn!(
                        peer = %format!("{:x}", peer.0),
                        "a peer reports that this member has been removed from the cluster; stopping"
                    );
                    self.removed.send_replace(true);
                }
            }
            Input::Timestamps {
                count,
                respond,
                word,
            } => match self.replicas.get_mut(&META_GROUP) {
                Some(replica) => replica.request_timestamps(count, respond, word),
                None => respond.answer(Err(NodeError::UnknownGroup)),
            },
            Input::Unreachable(to) => {
                for (&group, replica) in self.replicas.iter_mut() {
                    // A quiesced group sends nothing, so it lost nothing.
                    if !replica.node.is_quiesced()
                        && replica.node.conf_state().members().contains(&to)
                    {
                        replica.node.report_unreachable(to);
                        self.dirty.insert(group);
                    }
                }
            }
            Input::Shutdown => unreachable!("handled by the loop"),
        }
    }

    /// A write for `group`: answered "locked" at once if a transaction across ranges
    /// holds the range (it would only go through the log to be refused, as it would be
    /// at apply on every replica; the node tries it again shortly), a prepare parked in
    /// the range's line if it waits in line (`prepare_line`), else proposed.
    fn propose_write(
        &mut self,
        group: GroupId,
        write: WriteRequest,
        respond: WriteResponder,
        may_wait: bool,
    ) {
        use ostrakon_proto::peer::write_request::Request;
        let Some(replica) = self.replicas.get(&group) else {
            drop(respond.send(Err(NodeError::UnknownGroup)));
            return;
        };
        if replica.node.role() == Role::Leader {
            match &write.request {
                Some(Request::TxnPrepare(prepare)) => {
                    // A prepare queued behind the resolve or release of the lock in its
                    // way, already in the log, counts the range free. One of the
                    // transaction holding the range (its release of a later range failed,
                    // and it prepares there again in key order) goes at once: the line
                    // waits for that very lock.
                    let taken = !holds_lock(replica, prepare)
                        && (self.prepare_lines.busy(group, Instant::now())
                            || replica.prepare_in_log()
                            || leader_holds_off(
                                replica,
                                write.request.as_ref().expect("a prepare"),
                            ));
                    match crate::prepare_line::admission(
                        prepare.waits_in_line,
                        taken,
                        self.prepare_lines.has_room(),
                    ) {
                        crate::prepare_line::Admission::Propose => {}
                        crate::prepare_line::Admission::Park => {
                            crate::metrics::metrics().txn_prepares_parked.inc();
                            self.prepare_lines
                                .park(group, crate::prepare_line::Parked { write, respond });
                            return;
                        }
                        crate::prepare_line::Admission::Refuse => {
                            crate::metrics::metrics().writes_held_off_by_locks.inc();
                            drop(respond.send(Ok(ostrakon_storage::mvcc::locked_outcome())));
                            return;
                        }
                    }
                }
                // Waits in the range's line, ahead of the prepares, until the range is
                // free (`prepare_line`); answered "locked" if the lines are full.
                Some(request) if leader_holds_off(replica, request) => {
                    if may_wait && self.prepare_lines.has_room() {
                        crate::metrics::metrics().writes_parked.inc();
                        self.prepare_lines.park_write(
                            group,
                            crate::prepare_line::Parked { write, respond },
                            Instant::now(),
                        );
                    } else {
                        crate::metrics::metrics().writes_held_off_by_locks.inc();
                        drop(respond.send(Ok(ostrakon_storage::mvcc::locked_outcome())));
                    }
                    return;
                }
                _ => {}
            }
        }
        self.admit_write(group, write, respond);
    }

    /// Proposes a write let through: on a range that takes its writes' revisions from
    /// the oracle, once the node has them (`fetch_revisions`).
    fn admit_write(&mut self, group: GroupId, write: WriteRequest, respond: WriteResponder) {
        let Some(replica) = self.replicas.get_mut(&group) else {
            drop(respond.send(Err(NodeError::UnknownGroup)));
            return;
        };
        if replica.store.oracle_revisions()
            && replica.node.role() == Role::Leader
            && takes_fetched_revision(&write)
        {
            crate::metrics::metrics().oracle_revision_writes.inc();
            if is_prepare(&write) {
                self.prepare_lines.fetching(group, Instant::now());
            }
            self.revisions.wait(crate::revisions::WaitingWrite {
                group,
                write,
                respond,
                term: replica.node.term(),
            });
        } else {
            replica.propose(write, respond);
            self.dirty.insert(group);
        }
    }

    /// Lets the head of each range's line in once its range is free, one at a time; a
    /// line of a range this node no longer leads is answered so its coordinators ask the
    /// new leader.
    /// Whether it let a prepare in.
    fn release_prepare_lines(&mut self) -> bool {
        if self.prepare_lines.is_empty() {
            return false;
        }
        let mut let_in = false;
        let now = Instant::now();
        for group in self.prepare_lines.groups() {
            let gone = match self.replicas.get(&group) {
                None => Some(NodeError::UnknownGroup),
                Some(replica) if replica.node.role() != Role::Leader => {
                    Some(NodeError::NotLeader(replica.node.leader()))
                }
                Some(_) => None,
            };
            if let Some(error) = gone {
                for parked in self.prepare_lines.drain(group) {
                    drop(parked.respond.send(Err(error.clone())));
                }
                continue;
            }
            let replica = &self.replicas[&group];
            // Plain writes first: any lock holds them off, and a prepare in the log
            // would take the range before they apply.
            let free = !replica.store.has_txn_locks() && !replica.prepare_in_log();
            let (writes, expired) = self.prepare_lines.take_writes(group, now, free);
            for parked in expired {
                crate::metrics::metrics().writes_held_off_by_locks.inc();
                drop(
                    parked
                        .respond
                        .send(Ok(ostrakon_storage::mvcc::locked_outcome())),
                );
            }
            let head = self.prepare_lines.next_free(group, now, |write| {
                !replica.prepare_in_log()
                    && write
                        .request
                        .as_ref()
                        .is_some_and(|request| !leader_holds_off(replica, request))
            });
            for parked in writes {
                self.admit_write(group, parked.write, parked.respond);
                let_in = true;
            }
            if let Some(head) = head {
                self.admit_write(group, head.write, head.respond);
                let_in = true;
            }
        }
        self.publish_prepares_in_line();
        let_in
    }

    fn publish_prepares_in_line(&self) {
        crate::metrics::metrics()
            .writes_in_line
            .set(i64::try_from(self.prepare_lines.parked_total()).unwrap_or(i64::MAX));
    }

    /// Every group's Ready: early messages out, one WAL sync for all, then the rest.
    fn handle_readies(&mut self) {
        // (group, its Ready, the peers whose send queue was full while it was sent)
        let mut readies: Vec<(GroupId, Ready, Vec<NodeId>)> = Vec::new();
        let mut ticking_changed = false;
        let mut merged_by_snapshot = Vec::new();
        // Ranges whose leadership this node won this round.
        let mut won = BTreeSet::new();
        for group in std::mem::take(&mut self.dirty) {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue;
            };
            replica.before_ready();
            if replica.node.is_quiesced() {
                if self.ticking.remove(&group) {
                    tracing::debug!(group = group.0, "group quiesced");
                    ticking_changed = true;
                }
            } else if self.ticking.insert(group) {
                tracing::debug!(group = group.0, "group ticks again");
                ticking_changed = true;
            }
            if !replica.node.has_ready() {
                continue;
            }
            let mut ready = replica.node.ready();
            // Before any message of this Ready leaves: the word this member gives with
            // its oracle asks and forwarded reads must never be of a term older than a
            // vote it sent.
            replica.term_word.raise(replica.node.term());
            if let Some(soft) = ready.soft_state {
                tracing::info!(group = group.0, term = soft.term.0, leader = soft.leader.0, role = ?soft.role, "raft state changed");
                self.leader_spread.unsettle();
                // A range led here now may be behind the data range's membership.
                if soft.role == Role::Leader {
                    self.follow_due.insert(group);
                }
                let (previous_leader, was_leader) = {
                    let status = replica.status.read().unwrap();
                    (status.leader, status.is_leader)
                };
                record_group_role(group, soft.role == Role::Leader, was_leader);
                if group == DEFAULT_GROUP {
                    record_soft_state(soft, previous_leader);
                }
                if soft.role == Role::Leader && !was_leader {
                    won.insert(group);
                }
            }
            replica.term_word.assert_covers(group, &ready.messages);
            let full = self.transport.send(std::mem::take(&mut ready.messages));
            if let Some(meta) = &ready.snapshot {
                install_snapshot(&self.layout, &mut self.snapshot_files, replica, meta);
                self.wal.set_snapshot(group, meta.clone());
                // A snapshot taken after merges: this node applies them no more from
                // the log, and the merged ranges' keys are the snapshot's now.
                merged_by_snapshot.extend(
                    replica
                        .store
                        .absorbed_ranges()
                        .into_iter()
                        .filter(|absorbed| !self.merged_away.contains(absorbed)),
                );
            }
            self.wal.append_entries(group, &ready.entries);
            if let Some(hard_state) = ready.hard_state {
                // A new commit index alone is not worth an fdatasync (it can be learnt
                // again from the leader, and recovery takes at least the applied index),
                // as etcd's raft does not sync for it: it goes to the WAL with the next
                // entries or vote. Syncing it cost the leader a second fdatasync per
                // put, before the apply (scripts/latency-budget.sh).
                let previous = replica.wal_hard_state;
                let vote_changed =
                    hard_state.term != previous.term || hard_state.vote != previous.vote;
                if vote_changed || !ready.entries.is_empty() || ready.snapshot.is_some() {
                    self.wal.set_hard_state(group, hard_state);
                    replica.wal_hard_state = hard_state;
                }
            }
            readies.push((group, ready, full));
        }
        // Every snapshot taken this round is installed (or raft dropped it as stale).
        self.snapshots_taken_this_round.clear();
        if ticking_changed {
            self.publish_group_gauges();
        }
        // Group commit: one write and one fdatasync for every group's entries and votes.
        let sync_started = std::time::Instant::now();
        // Only the round's groups: their fsync is the one timed (a look at every
        // replica was a tenth of an idle node's work at 3,000 ranges).
        let traced_sync_started = readies
            .iter()
            .any(|(group, _, _)| self.replicas[group].has_traced())
            .then(std::time::SystemTime::now);
        if self.wal.sync() > 0 {
            crate::metrics::metrics()
                .wal_fsync
                .observe(sync_started.elapsed());
        }
        if let Some(started) = traced_sync_started {
            let ended = std::time::SystemTime::now();
            let synced = readies
                .iter()
                .map(|(_, ready, _)| ready.entries.len())
                .sum();
            for (group, ready, _) in &readies {
                self.replicas[group].record_fsync(&ready.entries, synced, started, ended);
            }
        }
        let me = self.config.id;
        let mut split_offs = Vec::new();
        // A store of the round that applied entries: every range's store is a view of
        // one engine, whose journal is handed to the kernel once the round's applies end.
        let mut applied_store: Option<Arc<MvccStore>> = None;
        for (group, mut ready, mut full) in readies {
            let replica = self.replicas.get_mut(&group).expect("group exists");
            replica
                .term_word
                .assert_covers(group, &ready.persisted_messages);
            full.extend(
                self.transport
                    .send(std::mem::take(&mut ready.persisted_messages)),
            );
            if merged_by_snapshot.contains(&group) {
                // A snapshot of this round took the range in (its replica is destroyed
                // below): its entries must not write over the span the snapshot
                // installed, whose versions may since have been compacted (found by
                // review).
                ready.committed_entries.clear();
            }
            let applied_now = !ready.committed_entries.is_empty();
            if applied_now {
                let apply_started = std::time::Instant::now();
                replica.apply(std::mem::take(&mut ready.committed_entries), me);
                applied_store.get_or_insert_with(|| replica.store.clone());
                crate::metrics::metrics()
                    .backend_commit
                    .observe(apply_started.elapsed());
                if !replica.held_entries.is_empty() {
                    self.held.insert(group);
                }
            }
            // The split range's leader starts the new range's election at once (as TiKV
            // does), rather than every replica waiting out an election timeout.
            let campaign = replica.node.role() == Role::Leader;
            split_offs.extend(replica.take_split_offs().into_iter().map(|s| (s, campaign)));
            replica.answer_reads(std::mem::take(&mut ready.read_states));
            replica.node.advance();
            // Only now: raft takes no input between ready() and advance().
            report_full_queues(replica, &full);
            replica.after_advance(me);
            if replica.node.has_ready() || !full.is_empty() {
                // Persisting made more work (a commit once our own write is durable).
                self.dirty.insert(group);
            }
            replica.publish_status(me);
            if group != META_GROUP
                && replica.node.role() == Role::Leader
                && (applied_now || won.contains(&group))
            {
                self.handle.range_work().after_change(
                    group,
                    &replica.store,
                    self.config.range_max_bytes,
                );
            }
            if group == DEFAULT_GROUP {
                let store = replica.store.clone();
                self.follow_member_registry(&store);
                self.notice_removal(group);
            }
            self.maybe_snapshot(group);
        }
        if let Some(store) = applied_store {
            store.flush_journal();
        }
        // Only once every Ready of the round is advanced: a new range may replace a
        // replica whose Ready was in this round.
        self.host_split_offs(split_offs);
        for merged in merged_by_snapshot {
            self.destroy_merged(merged, NodeError::LeaderChanged);
        }
        self.apply_held_merges();
        self.follow_data_membership();
        self.spread_leaders();
    }

    /// Hosts the ranges splits created, each campaigning at once if its split range's
    /// leader is here.
    fn host_split_offs(&mut self, split_offs: Vec<(crate::split::SplitOff, bool)>) {
        for (split, campaign) in split_offs {
            let group = split.group;
            self.host_split_range(split);
            if campaign {
                if let Some(new) = self.replicas.get_mut(&group) {
                    new.node.campaign();
                    self.dirty.insert(group);
                }
            }
        }
    }

    /// Hands ranges this node leads to the node leading the fewest, if this one leads two
    /// more than it, or, the counts even, one range to a node far less loaded
    /// (`leader_spread`).
    fn spread_leaders(&mut self) {
        let Some(data) = self.replicas.get(&DEFAULT_GROUP) else {
            return;
        };
        let store = &data.store;
        let now = Instant::now();
        // A member draining its leaderships (an operator's MoveLeader) is handed none.
        let loads = &self.loads;
        let may_lead = crate::leader_spread::may_lead(&self.nodes_down, |id| {
            store.is_leaving_member(id) || loads.peer_draining(id, now)
        });
        let moves = if self.loads.draining_after_passes(now) {
            self.leader_spread
                .drain_moves(self.config.id, &self.replicas, may_lead, now)
        } else {
            self.leader_spread.next_moves(
                self.config.id,
                &self.replicas,
                &self.groups,
                &self.loads,
                may_lead,
                now,
            )
        };
        if moves.is_empty() {
            return;
        }
        let mut handed = 0;
        for &(group, to) in &moves {
            let replica = self.replicas.get_mut(&group).expect("a range led here");
            match replica.node.transfer_leader(to) {
                Ok(()) => {
                    tracing::debug!(group = group.0, to = %format!("{:x}", to.0), "handing a range's leadership over");
                    crate::metrics::metrics().leader_spread_moves.inc();
                    handed += 1;
                }
                Err(error) => {
                    tracing::debug!(group = group.0, ?error, "a leadership move was refused")
                }
            }
            self.dirty.insert(group);
        }
        let (first, to) = moves[0];
        tracing::info!(
            handed,
            first = first.0,
            to = %format!("{:x}", to.0),
            "handing ranges' leaderships over, to spread leaders over the nodes"
        );
    }

    /// On the leader of each range but the first data range (the meta range and the
    /// ranges split from it): one step toward the first data range's membership, if one
    /// is due and no change of that range is in flight (`follow_membership`). The ranges
    /// are checked when that membership changes and every `FOLLOW_CHECK_INTERVAL` (a
    /// learner catching up, a leadership moving here), not every round: a round visits
    /// only the groups with work. A refused step is logged and tried again a second
    /// later.
    fn follow_data_membership(&mut self) {
        let Some(data) = self.replicas.get(&DEFAULT_GROUP) else {
            return;
        };
        // Raft's membership, as applied (read without the store's lock: this runs every
        // round).
        let conf = data.node.conf_state();
        let now = Instant::now();
        if !self.follow_frozen.is_empty() && now >= self.next_follow_frozen {
            self.follow_due.append(&mut self.follow_frozen);
            self.next_follow_frozen = now + FOLLOW_FROZEN_INTERVAL;
        }
        let whole = now >= self.next_follow_check || self.followed_conf.as_ref() != Some(conf);
        if !whole && self.follow_due.is_empty() {
            return;
        }
        let target = conf.clone();
        self.followed_conf = Some(target.clone());
        let any_leaving = target
            .members()
            .into_iter()
            .any(|id| data.store.is_leaving_member(id));
        let due = std::mem::take(&mut self.follow_due);
        for group in &due {
            if let Some(replica) = self.replicas.get(group) {
                if replica.node.role() == Role::Leader && replica.store.frozen().is_some() {
                    self.follow_frozen.insert(*group);
                }
            }
        }
        let candidates: Vec<GroupId> = if whole {
            self.replicas.keys().copied().collect()
        } else {
            due.into_iter().collect()
        };
        let attempts = &self.follow_attempts;
        let groups: Vec<GroupId> = candidates
            .iter()
            .filter_map(|group| self.replicas.get(group).map(|replica| (group, replica)))
            .filter(|(group, replica)| {
                **group != DEFAULT_GROUP
                    && replica.node.role() == Role::Leader
                    // A range with the target membership, none of it leaving, and no
                    // step in flight has nothing to do: most ranges, so this cheap test
                    // comes before the store's.
                    && (any_leaving
                        || replica.node.conf_state() != &target
                        || attempts.contains_key(group))
                    // A range frozen for a merge keeps the membership the merge checks.
                    && replica.store.frozen().is_none()
            })
            .map(|(group, _)| *group)
            .collect();
        let stepped = !groups.is_empty();
        for group in groups {
            self.follow_step(group, &target, now);
        }
        if !whole {
            // Ranges that took a step are looked at again soon (a learner to promote).
            if stepped {
                self.next_follow_check = self.next_follow_check.min(now + FOLLOW_CHECK_INTERVAL);
            }
            return;
        }
        let settled = self.follow_attempts.is_empty()
            && self.replicas.iter().all(|(group, replica)| {
                *group == DEFAULT_GROUP
                    || replica.node.role() != Role::Leader
                    || *replica.node.conf_state() == target
            });
        let interval = if settled {
            FOLLOW_SETTLED_INTERVAL
        } else {
            FOLLOW_CHECK_INTERVAL
        };
        self.next_follow_check = now + interval;
    }

    /// One step of range `group` (led here) toward `target`, if due.
    fn follow_step(&mut self, group: GroupId, target: &ostrakon_raft::ConfState, now: Instant) {
        if let Some(attempt) = self.follow_attempts.get_mut(&group) {
            use tokio::sync::oneshot::error::TryRecvError;
            let taken = match attempt.answer.try_recv() {
                Err(TryRecvError::Empty) => return, // in flight
                Ok(Ok(_)) => true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, group = group.0, step = ?attempt.step, "a range could not take a membership step; will retry");
                    false
                }
                Err(TryRecvError::Closed) => false,
            };
            if !taken && now < attempt.retry_at {
                return;
            }
            self.follow_attempts.remove(&group);
        }
        let data = &self.replicas[&DEFAULT_GROUP];
        let replica = &self.replicas[&group];
        if replica.has_conf_proposal() {
            return;
        }
        let step = crate::follow_membership::next_step(
            target,
            replica.node.conf_state(),
            // A member MemberRemove is taking out is not added back meanwhile.
            |id| data.store.is_leaving_member(id),
            |id| replica.learner_is_ready(id),
        );
        let Some(step) = step else {
            return;
        };
        tracing::info!(
            group = group.0,
            ?step,
            "a range follows the first data range's membership"
        );
        let (respond, answer) = tokio::sync::oneshot::channel();
        let started = started_members(&self.replicas);
        let replica = self.replicas.get_mut(&group).expect("checked above");
        let merge = replica.propose_conf_change(
            ConfChange::Change(vec![step]),
            respond,
            &self.nodes_down,
            &started,
        );
        self.snapshot_past_merge(group, merge);
        self.follow_attempts.insert(
            group,
            FollowAttempt {
                step,
                answer,
                retry_at: now + Duration::from_secs(1),
            },
        );
        self.dirty.insert(group);
    }

    /// Keeps the transport's peers those of the member registry.
    fn follow_member_registry(&mut self, store: &MvccStore) {
        let version = store.members_version();
        if version == self.members_version_seen {
            return;
        }
        self.members_version_seen = version;
        let peers = crate::identity::peers_of(&store.members());
        // A registry is empty only before a joining node's first snapshot; the peers it
        // was told about stay until then.
        if !peers.is_empty() {
            self.transport.set_peers(&peers);
        }
    }

    /// A member removed from the group stops (as etcd's does): it would only disturb the
    /// others.
    fn notice_removal(&mut self, group: GroupId) {
        let replica = &self.replicas[&group];
        let is_member = replica
            .store
            .applied()
            .conf_state
            .members()
            .contains(&self.config.id);
        if is_member {
            self.was_member = true;
        } else if self.was_member && !*self.removed.borrow() {
            tracing::warn!("this member has been removed from the cluster; stopping");
            self.removed.send_replace(true);
        }
    }

    /// Every `snapshot_entries` applied entries, or once the entries applied since the
    /// last snapshot outweigh it (and `SNAPSHOT_LOG_BYTES_MIN`), starts a snapshot: the
    /// state is frozen here, between applies, and written to a file on its own thread
    /// while writes go on (copying a large store on this thread would stall every group).
    /// The log is compacted when the file is durable (`snapshot_created`).
    ///
    /// The byte bound is TiKV's and CockroachDB's (they truncate the raft log by size):
    /// etcd's count alone lets large values hold gigabytes of log in memory (100,000
    /// entries of 1 MiB). Tied to the snapshot's own size, it never makes snapshots write
    /// more than the log they replace.
    fn maybe_snapshot(&mut self, group: GroupId) {
        let replica = self.replicas.get_mut(&group).expect("group exists");
        let applied = replica.store.applied_index();
        let entries_due = applied.0 >= replica.snapshot_index.0 + self.config.snapshot_entries;
        let bytes_due = replica.log_bytes_since_snapshot
            >= SNAPSHOT_LOG_BYTES_MIN.max(replica.snapshot_file_bytes);
        if replica.snapshot_in_progress || !(entries_due || bytes_due) {
            return;
        }
        self.start_snapshot(group);
    }

    /// Starts writing a snapshot file of the group at its applied position (unless one
    /// is being written or waits to be), or queues it while `SNAPSHOT_WRITERS_MAX` are
    /// being written.
    fn start_snapshot(&mut self, group: GroupId) {
        let replica = self.replicas.get_mut(&group).expect("group exists");
        if replica.snapshot_in_progress {
            return;
        }
        replica.snapshot_in_progress = true;
        if self.snapshot_writers >= SNAPSHOT_WRITERS_MAX {
            self.snapshots_waiting.push_back(group);
            return;
        }
        if !self.write_snapshot(group) {
            self.snapshots_waiting.push_back(group);
        }
    }

    /// A snapshot writer finished (or failed): the next waiting snapshot starts.
    fn snapshot_writer_done(&mut self) {
        assert!(
            self.snapshot_writers > 0,
            "a snapshot writer finished twice"
        );
        self.snapshot_writers -= 1;
        self.start_waiting_snapshots();
    }

    /// Starts waiting snapshots while writer slots are free (also at every tick: a
    /// writer thread that could not be started is tried again).
    fn start_waiting_snapshots(&mut self) {
        while self.snapshot_writers < SNAPSHOT_WRITERS_MAX {
            let Some(group) = self.snapshots_waiting.pop_front() else {
                return;
            };
            // A range merged away (or a replica replaced) meanwhile wants none.
            if self
                .replicas
                .get(&group)
                .is_some_and(|replica| replica.snapshot_in_progress)
                && !self.write_snapshot(group)
            {
                self.snapshots_waiting.push_front(group);
                return;
            }
        }
    }

    /// Writes a snapshot file of the group at its applied position, on a thread.
    /// Returns false if no thread could be started (the caller queues it again).
    fn write_snapshot(&mut self, group: GroupId) -> bool {
        let replica = self.replicas.get_mut(&group).expect("group exists");
        replica.log_bytes_since_snapshot = 0;
        let meta = replica.snapshot_meta();
        let frozen = replica.store.freeze();
        let store = replica.store.clone();
        let path = self.layout.snapshot_file(group, meta.index);
        let done = self.input_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("ostrakon-snapshot".into())
            .spawn(move || {
                // The store up to the frozen position must be durable before the log
                // that could rebuild it is compacted. A panic is reported as a failure:
                // a writer slot is never lost.
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    store.sync();
                    snapshot::write(frozen, &path)
                }))
                .map_err(|_| "the snapshot writer panicked".to_string())
                .and_then(|written| written.map_err(|error| error.to_string()));
                match written {
                    Ok(info) => {
                        // The loop may have stopped meanwhile; the file is then simply
                        // the newest snapshot on disk. (This thread may wait for room.)
                        let _ = done.send(Input::SnapshotCreated {
                            group,
                            meta,
                            file_bytes: info.file_bytes,
                        });
                    }
                    Err(error) => {
                        tracing::error!(group = group.0, %error, "could not write a snapshot");
                        // Not left marked as in progress for ever: the loop tries again,
                        // after a pause (on a failing disk each try fails).
                        std::thread::sleep(SNAPSHOT_RETRY_PAUSE);
                        let _ = done.send(Input::SnapshotFailed { group });
                    }
                }
            });
        match spawned {
            Ok(_) => {
                self.snapshot_writers += 1;
                true
            }
            Err(error) => {
                tracing::error!(%error, "could not start a snapshot writer; will retry");
                false
            }
        }
    }

    /// A membership change waits for a snapshot past the merge at `merge` (if any): one
    /// is taken once the merge applied here. (Applying a merge starts one, but a restart
    /// in between forgets it: nothing else would, on an idle range.)
    fn snapshot_past_merge(&mut self, group: GroupId, merge: Option<LogIndex>) {
        let Some(merge) = merge else {
            return;
        };
        let Some(replica) = self.replicas.get(&group) else {
            return;
        };
        if replica.store.applied_index() >= merge && !replica.snapshot_in_progress {
            tracing::info!(
                group = group.0,
                merge = merge.0,
                "a membership change waits for a snapshot past the range's merge; taking one"
            );
            self.start_snapshot(group);
        }
    }

    /// A follower refused this range's snapshot because another range there holds some
    /// of its keys. If the snapshot is older than the range's latest split, that other
    /// range may be the split's new range, installed there from its own newer snapshot:
    /// the old one can never go in, so a snapshot after the split is taken (as
    /// CockroachDB's snapshots, made when sent, are never older than the range's span).
    fn refresh_snapshot_older_than_split(&mut self, group: GroupId) {
        let Some(replica) = self.replicas.get(&group) else {
            return;
        };
        // The newest file, not the log's snapshot position: the log is also compacted
        // without a file (`compact_logs`).
        let file_after_split = self
            .snapshot_files
            .newest(group)
            .is_some_and(|index| index >= replica.span_changed_at);
        if replica.node.role() != Role::Leader || replica.snapshot_in_progress || file_after_split {
            return;
        }
        tracing::info!(
            group = group.0,
            snapshot_index = replica.snapshot_index.0,
            span_changed_at = replica.span_changed_at.0,
            "a follower refused a snapshot older than this range's split; taking a newer one"
        );
        self.start_snapshot(group);
    }

    /// A snapshot file could not be written (its writer paused before saying so): the
    /// reason it was started still holds (the entries or bytes due, a range's first
    /// snapshot after a split, one after a merge, a follower's refusal), and an idle range
    /// would not start another by itself, so another is started, unless one installed
    /// meanwhile covers everything applied.
    fn snapshot_failed(&mut self, group: GroupId) {
        self.snapshot_writer_done();
        let Some(replica) = self.replicas.get_mut(&group) else {
            return;
        };
        replica.snapshot_in_progress = false;
        if replica.store.applied_index() > replica.snapshot_index {
            self.start_snapshot(group);
        }
    }

    /// A snapshot file is durable: compact the raft log up to it.
    fn snapshot_created(&mut self, group: GroupId, meta: SnapshotMeta, file_bytes: u64) {
        crate::metrics::metrics().snapshots_created.inc();
        self.snapshot_writer_done();
        let Some(replica) = self.replicas.get_mut(&group) else {
            // The range merged into another while the file was written.
            let _ = std::fs::remove_file(self.layout.snapshot_file(group, meta.index));
            return;
        };
        replica.snapshot_in_progress = false;
        replica.snapshot_file_bytes = file_bytes;
        let merge_due = replica.snapshot_due_for_merge;
        if merge_due.is_some_and(|due| meta.index.max(replica.snapshot_index) < due) {
            // Taken before a merge applied: another one, after it.
            self.start_snapshot(group);
        }
        let replica = self.replicas.get_mut(&group).expect("looked up above");
        // Known before anything else, so that a newer snapshot's file removes it.
        self.snapshot_files.kept(group, meta.index);
        if meta.index <= replica.snapshot_index {
            // A received snapshot moved the log past it meanwhile.
            return;
        }
        self.wal.set_snapshot(group, meta.clone());
        replica.node.compact(meta.index, meta.conf_state.clone());
        replica.snapshot_index = meta.index;
        tracing::info!(
            group = group.0,
            index = meta.index.0,
            "snapshot taken, log compacted"
        );
    }

    /// Every `LOG_LOOK_INTERVAL`: weighs the raft logs held in memory and, over the
    /// budget, writes down the applied position of the heaviest groups' state machines
    /// and syncs the engine on a thread; the logs are compacted when it is durable
    /// (`compact_logs`). One such sync at a time.
    fn weigh_logs(&mut self) {
        let now = Instant::now();
        if self.log_compaction_in_flight || now < self.next_log_look {
            return;
        }
        self.next_log_look = now + LOG_LOOK_INTERVAL;
        let logs: Vec<(GroupId, u64)> = self
            .replicas
            .iter()
            .map(|(&group, replica)| (group, replica.node.log_bytes()))
            .collect();
        let total: u64 = logs.iter().map(|&(_, bytes)| bytes).sum();
        crate::metrics::metrics().raft_log_bytes.set(total as i64);
        let (candidates, to_free) = self.log_budget.candidates(logs);
        let follower_window_ticks = 2 * u64::from(self.config.election_ticks);
        let (mut metas, mut freed) = (Vec::new(), 0);
        let mut store = None;
        for (group, bytes) in candidates {
            if freed >= to_free || metas.len() >= LOG_COMPACTIONS_PER_LOOK_MAX {
                break;
            }
            let replica = self.replicas.get(&group).expect("weighed above");
            let Some(meta) = crate::log_budget::compactable(replica, follower_window_ticks) else {
                continue;
            };
            replica.store.write_applied();
            store.get_or_insert_with(|| replica.store.clone());
            metas.push((group, meta));
            freed += bytes;
        }
        let Some(store) = store else {
            return;
        };
        let done = self.input_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("ostrakon-log-sync".into())
            .spawn(move || {
                // Every range's store is a view of one engine: one sync makes each
                // position written down above durable.
                store.sync();
                let _ = done.send(Input::LogsCompactable { metas });
            });
        match spawned {
            Ok(_) => self.log_compaction_in_flight = true,
            Err(error) => tracing::error!(%error, "could not start a log sync; will retry"),
        }
    }

    /// The state machine is durable up to each position: the WAL records it as the
    /// group's snapshot position (its segments before it may go) and the raft log before
    /// it goes. No file is written: a follower that needs one gets it when sent
    /// (`SnapshotSent::NoFile`).
    fn compact_logs(&mut self, metas: Vec<(GroupId, SnapshotMeta)>) {
        self.log_compaction_in_flight = false;
        for (group, meta) in metas {
            let Some(replica) = self.replicas.get_mut(&group) else {
                continue; // Merged away meanwhile.
            };
            let log_snapshot = replica.node.snapshot_meta().index;
            if meta.index <= replica.snapshot_index.max(log_snapshot) {
                continue; // A snapshot (made or received) moved the log past it.
            }
            if replica.node.log_term(meta.index) != Some(meta.term) {
                continue; // Not the log it was taken from (a replica replaced meanwhile).
            }
            if replica.snapshot_in_progress {
                // A file being written (a follower waits for it): compacting past it
                // would make it useless before it is sent.
                continue;
            }
            self.wal.set_snapshot(group, meta.clone());
            replica.node.compact(meta.index, meta.conf_state);
            replica.snapshot_index = meta.index;
            replica.log_bytes_since_snapshot = 0;
        }
    }

    fn stop(mut self) {
        self.revisions.fail_all(NodeError::Stopped);
        for group in self.prepare_lines.groups() {
            for parked in self.prepare_lines.drain(group) {
                drop(parked.respond.send(Err(NodeError::Stopped)));
            }
        }
        self.publish_prepares_in_line();
        self.wal.sync();
        // Every range's applied position written down, then one sync of the engine they
        // share (a sync per range cost a member of 100,000 ranges that many fdatasyncs
        // on its way out; found by review).
        let mut store = None;
        for replica in self.replicas.values_mut() {
            replica.fail_all(NodeError::Stopped);
            replica.store.write_applied();
            store.get_or_insert_with(|| replica.store.clone());
        }
        if let Some(store) = store {
            store.sync();
        }
        tracing::info!("event loop stopped");
    }
}

/// A peer whose send queue was full lost messages: raft treats it as unreachable (a
/// leader then probes it one message at a time instead of pipelining), as etcd does.
/// Called after the group's `advance()`.
fn report_full_queues(replica: &mut Replica, full: &[NodeId]) {
    for &peer in full {
        replica.node.report_unreachable(peer);
    }
}

/// Replaces the state machine with a received snapshot, before the Ready's entries.
fn install_snapshot(
    layout: &Layout,
    snapshot_files: &mut crate::snapshot_files::SnapshotFiles,
    replica: &mut Replica,
    meta: &SnapshotMeta,
) {
    let path = replica
        .incoming_snapshots
        .remove(&meta.index)
        .unwrap_or_else(|| {
            panic!(
                "raft restores snapshot {} whose data never arrived",
                meta.index
            )
        });
    let info = match snapshot::install(&replica.store, &path) {
        Ok(info) => info,
        Err(error) => {
            panic!("a received snapshot that passed its checksum fails to install: {error}")
        }
    };
    ostrakon_storage::fatal::crash_failpoint("after-snapshot-install");
    assert_eq!(
        info.applied.index, meta.index,
        "snapshot data and metadata disagree"
    );
    let kept = layout.snapshot_file(replica.group, meta.index);
    if let Err(error) = std::fs::rename(&path, &kept) {
        ostrakon_storage::fatal::disk_failure("keeping a received snapshot", &error);
    }
    for (_, stale) in replica.incoming_snapshots.drain() {
        let _ = std::fs::remove_file(stale);
    }
    replica.snapshot_index = meta.index;
    // Entries held for a merge are in the snapshot (a leader sends one only below what
    // this member has).
    replica
        .held_entries
        .retain(|entry| entry.index > meta.index);
    snapshot_files.kept(replica.group, meta.index);
    replica.applied_tx.send_replace(meta.index);
    tracing::info!(
        group = replica.group.0,
        index = meta.index.0,
        "installed a snapshot from the leader"
    );
}

/// The count of groups led, and whether this member serves the oracle.
fn record_group_role(group: GroupId, is_leader: bool, was_leader: bool) {
    let metrics = crate::metrics::metrics();
    metrics
        .raft_groups_led
        .add(i64::from(is_leader) - i64::from(was_leader));
    if group == META_GROUP {
        metrics.oracle_is_leader.set(i64::from(is_leader));
    }
}

/// Leader gauges and etcd's count of leader changes: a change is a new leader other than
/// none that differs from the one known before.
fn record_soft_state(soft: ostrakon_raft::SoftState, previous_leader: NodeId) {
    let metrics = crate::metrics::metrics();
    metrics
        .has_leader
        .set(i64::from(soft.leader != NodeId::NONE));
    metrics.is_leader.set(i64::from(soft.role == Role::Leader));
    metrics.raft_term.set(soft.term.0 as i64);
    if soft.leader != NodeId::NONE && soft.leader != previous_leader {
        metrics.leader_changes_seen.inc();
    }
}

/// Whether the leading `replica` answers `request` "locked" at once rather than propose
/// it (`held_off_by_locks_unless_unlocking`), counting the prepares it lets through
/// behind an unlock already in its log.
fn leader_holds_off(
    replica: &Replica,
    request: &ostrakon_proto::peer::write_request::Request,
) -> bool {
    use ostrakon_storage::mvcc::{held_off_by_locks, held_off_by_locks_unless_unlocking};
    if !held_off_by_locks(&replica.store, request) {
        return false;
    }
    let held_off =
        held_off_by_locks_unless_unlocking(&replica.store, request, |txn| replica.unlocking(txn));
    if !held_off {
        crate::metrics::metrics().txn_prepares_behind_unlocks.inc();
    }
    held_off
}

/// Whether the range holds a lock of the transaction `prepare` is for.
fn holds_lock(replica: &Replica, prepare: &ostrakon_proto::peer::TxnPrepare) -> bool {
    let Some(txn) = prepare.txn.as_ref() else {
        return false;
    };
    let txn = ostrakon_storage::mvcc::txn_tables::txn_id_of(txn);
    replica.store.has_txn_locks()
        && replica
            .store
            .txn_lock_table()
            .locks()
            .any(|lock| lock.txn == txn)
}

fn is_prepare(write: &WriteRequest) -> bool {
    matches!(
        write.request,
        Some(ostrakon_proto::peer::write_request::Request::TxnPrepare(_))
    )
}

/// Whether a write on a range that takes its revisions from the oracle waits for one.
/// The decisions of a transaction across ranges do not: a commit or resolve writes at
/// the transaction's own revision, and an abort, release, forget or horizon writes nothing
/// (the range is locked meanwhile, so the read-wait rule holds through its prepare).
fn takes_fetched_revision(write: &ostrakon_proto::peer::WriteRequest) -> bool {
    use ostrakon_proto::peer::write_request::Request;
    !matches!(
        write.request,
        Some(
            Request::TxnCommit(_)
                | Request::TxnResolve(_)
                | Request::TxnAbort(_)
                | Request::TxnRelease(_)
                | Request::TxnForget(_)
                | Request::TxnHorizon(_)
                | Request::TxnFinished(_)
                | Request::FreezeRange(_)
                | Request::UnfreezeRange(_)
                | Request::MergeRange(_)
                | Request::RefuseMerge(_)
                | Request::WriteGate(_)
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_with_one_partition_per_group_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        drop(open_storage(&layout, Default::default()).expect("a new data directory opens"));
        {
            // What ostrakon wrote before the ranges shared one data partition.
            let keyspace = fjall::Config::new(&layout.kv).open().unwrap();
            keyspace
                .open_partition("g1-kv", fjall::PartitionCreateOptions::default())
                .unwrap();
            keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
        }
        let refused = open_storage(&layout, Default::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            refused.contains("older ostrakon") && refused.contains("snapshot restore"),
            "{refused}"
        );
    }

    /// Bytes on disk for 1 MiB of zeros written to the data partition and flushed.
    fn disk_bytes_for_a_mib_of_zeros(keyspace: &fjall::Keyspace, first_key: u32) -> u64 {
        let data = keyspace
            .open_partition(DATA_PARTITION, Default::default())
            .unwrap();
        let before = data.disk_space();
        for key in first_key..first_key + 256 {
            data.insert(key.to_be_bytes(), [0u8; 4096]).unwrap();
        }
        data.rotate_memtable_and_wait().unwrap();
        data.disk_space() - before
    }

    #[test]
    fn blocks_are_compressed_as_the_member_was_made_to_and_stay_so() {
        let settings = |compression| StoreSettings {
            compression,
            ..StoreSettings::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let (_, _, keyspace) = open_storage(&layout, settings(BlockCompression::None)).unwrap();
        let plain = disk_bytes_for_a_mib_of_zeros(&keyspace, 0);
        assert!(plain >= 1 << 20, "uncompressed: {plain} bytes");
        drop(keyspace);

        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let (_, _, keyspace) = open_storage(&layout, settings(BlockCompression::Lz4)).unwrap();
        let compressed = disk_bytes_for_a_mib_of_zeros(&keyspace, 0);
        assert!(
            compressed > 0 && compressed < plain / 10,
            "LZ4: {compressed} against {plain}"
        );
        drop(keyspace);
        // Started again with the other setting, the member keeps the format it was made
        // with, in both partitions.
        let (_, _, keyspace) = open_storage(&layout, settings(BlockCompression::None)).unwrap();
        for partition in [DATA_PARTITION, LOCAL_PARTITION] {
            let handle = keyspace
                .open_partition(partition, Default::default())
                .unwrap();
            assert_eq!(
                handle.tree.tree_config().compression,
                fjall::CompressionType::Lz4,
                "{partition}"
            );
        }
        let again = disk_bytes_for_a_mib_of_zeros(&keyspace, 1000);
        assert!(
            again > 0 && again < plain / 10,
            "LZ4 kept: {again} against {plain}"
        );
    }
}
