//! The client-facing server's way into the node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ostrakon_proto::peer::{write_request, MemberAttributes, MemberRecord, WriteRequest};
use ostrakon_raft::{next_conf_state, ConfChange, ConfState, GroupId, LogIndex, NodeId};
use ostrakon_storage::mvcc::{MvccStore, WriteOutcome};
use tokio::sync::{oneshot, watch};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::input::{Input, InputSender};
use crate::spans::{self, SpanKind};
pub use crate::status::GroupStatus;
use crate::transport::Transport;

/// What the handle shares with the event loop about one group.
pub struct GroupShared {
    /// The state machine (read concurrently with the loop's writes).
    pub store: Arc<MvccStore>,
    /// Published by the loop after every round.
    pub status: Arc<RwLock<GroupStatus>>,
    /// The applied index, for readers waiting on a read index.
    pub applied: watch::Receiver<LogIndex>,
    /// Lease deadlines (kept while this member leads).
    pub lessor: Arc<crate::lessor::Lessor>,
    /// Every committed revision's events, for watchers.
    pub events: Arc<crate::events::RevisionChannel>,
    /// The requests this member serves for the range.
    pub requests: crate::request_rate::RequestRate,
    /// The term this member gives its word of with requests to the range's leader.
    pub term_word: Arc<crate::member_word::TermWord>,
}

/// Every group hosted here, shared by the handle and the event loop (which adds the
/// ranges splits create).
pub type SharedGroups = Arc<RwLock<HashMap<GroupId, Arc<GroupShared>>>>;

struct Inner {
    id: NodeId,
    cluster_id: u64,
    inputs: InputSender,
    groups: SharedGroups,
    /// The data ranges in key order, kept up to date change by change.
    directory: Arc<crate::local_directory::LocalDirectory>,
    transport: Transport,
    /// The ranges noticed for the node's periodic range tasks.
    range_work: crate::range_work::RangeWork,
    /// What the other members report of the ranges this member leads.
    remote_load: crate::remote_load::RemoteLoad,
    request_timeout: Duration,
    /// How long a request waits for a group's leadership to settle (two election
    /// timeouts) before it fails with no leader or leader changed.
    leader_wait: Duration,
    next_write_id: AtomicU64,
    name: String,
    client_urls: Vec<String>,
    /// Raised by the event loop when this member is removed from the cluster.
    removed: watch::Receiver<bool>,
    /// Where backups are written before they are streamed.
    snap_dir: std::path::PathBuf,
    quota_backend_bytes: u64,
    /// Reads' timestamps from the oracle, one fetch at a time for the node.
    read_timestamps: Arc<crate::coalesce::Coalescer<(), u64>>,
    /// Reads' barriers, one at a time per range.
    read_barriers: Arc<crate::coalesce::Coalescer<GroupId, LogIndex>>,
    /// Raft read indexes of linearizable reads, one at a time per range (as etcd's
    /// read loop: one ReadIndex per batch of reads).
    read_indexes: Arc<crate::coalesce::Coalescer<GroupId, LogIndex>>,
    /// Fresh read points, one at a time per range.
    fresh_read_points: Arc<crate::coalesce::Coalescer<GroupId, (LogIndex, u64)>>,
    /// Forgets of committed transactions' records, waiting to be proposed together.
    txn_forgets: crate::txn_forgets::ForgetQueue,
}

/// One member as `MemberList` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    /// Its member id.
    pub id: NodeId,
    /// Its name (empty if it could not be asked).
    pub name: String,
    /// Where peers reach it.
    pub peer_urls: Vec<String>,
    /// Where clients reach it (empty if it could not be asked).
    pub client_urls: Vec<String>,
    /// Whether it is a learner.
    pub is_learner: bool,
}

/// How long a request waits before it is routed again (a range being created here, or a
/// split this node has not applied yet).
const ROUTE_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// A linearizable read's read index unanswered this long is asked again, the earlier
/// asks still waited for (etcd's read loop sends again after 500 ms:
/// `readIndexRetryTime`).
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// The pause before trying a write again that met a transaction's lock for the
/// `retries`th time: from 2 ms, doubling up to 64 ms, spread over half to the whole of it.
pub(crate) fn locked_pause(retries: u32) -> Duration {
    let ceiling_ms = 2u64 << retries.min(5);
    let spread = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| u64::from(now.subsec_nanos()));
    Duration::from_millis(ceiling_ms / 2 + spread % (ceiling_ms / 2 + 1))
}

/// Whether a write attaches a lease to a key (a Put with a lease, or one keeping the
/// key's lease, `ignore_lease`, in a Txn too): the lease's existence is checked in the
/// first data range, which holds the leases.
pub(crate) fn attaches_lease(request: &write_request::Request) -> bool {
    use ostrakon_proto::etcdserverpb::{request_op, TxnRequest};
    fn txn_attaches(txn: &TxnRequest) -> bool {
        txn.success
            .iter()
            .chain(&txn.failure)
            .any(|op| match &op.request {
                Some(request_op::Request::RequestPut(put)) => put.lease != 0 || put.ignore_lease,
                Some(request_op::Request::RequestTxn(nested)) => txn_attaches(nested),
                _ => false,
            })
    }
    match request {
        write_request::Request::Put(put) => put.lease != 0 || put.ignore_lease,
        write_request::Request::Txn(txn) => txn_attaches(txn),
        _ => false,
    }
}

/// Whether a range, as `view` shows it, may hold a key of `lease` by the time a revoke
/// reads it: a key attached, or the lock of a transaction whose record the first range
/// keeps (every transaction that attaches a lease has it as its primary, and its part
/// here may attach one).
pub(crate) fn may_hold_lease_keys(view: &ostrakon_storage::mvcc::ReadView, lease: i64) -> bool {
    !view.lease_keys(lease).is_empty() || !view.lock_holders_of(first_range_id()).is_empty()
}

/// The first data range, as the id its transactions name as their primary.
pub(crate) fn first_range_id() -> ostrakon_ranges::RangeId {
    ostrakon_ranges::RangeId(crate::DEFAULT_GROUP.0)
}

/// A state machine refusal as a write's outcome.
fn mvcc_error_outcome(error: &ostrakon_storage::mvcc::MvccError) -> WriteOutcome {
    let (code, message) = ostrakon_storage::mvcc::etcd_status(error);
    WriteOutcome::Error(ostrakon_proto::peer::Error {
        code,
        message,
        ..Default::default()
    })
}

/// How long a request to a range a split created waits for the range's leader.
const NEW_RANGE_ELECTION_WAIT: Duration = Duration::from_secs(3);

/// The error a write's unexpected outcome stands for.
fn refusal_of(outcome: WriteOutcome) -> NodeError {
    match outcome {
        WriteOutcome::Error(error) => NodeError::Refused {
            code: error.code,
            message: error.message,
        },
        other => panic!("a write answered with the outcome of another kind: {other:?}"),
    }
}

/// The most timestamps one request may ask for.
pub const TIMESTAMPS_PER_REQUEST_MAX: u64 = 1024;

/// How many leaderships a MoveLeader moves at once, beyond the first range's.
const LEADERSHIP_MOVES_AT_ONCE: usize = 64;
/// How many times a MoveLeader looks for leaderships left here, and the pause between.
const LEADERSHIP_MOVE_PASSES: usize = 3;
const LEADERSHIP_MOVE_PASS_PAUSE: Duration = Duration::from_secs(1);
/// How long a member drained by MoveLeader takes no leadership by spreading: long enough
/// for an operator to stop it, short enough that a member left running is given its
/// share again soon.
const DRAIN_HOLD: Duration = Duration::from_secs(60);

/// How long a lease query waits before it tries again, when no leader is known or the
/// leader it went to did not answer (etcd's `LeaseRenew` throttles its tries as much).
const LEASE_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A cheap, cloneable handle on the running node.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

impl NodeHandle {
    pub(crate) fn new(
        config: &NodeConfig,
        inputs: InputSender,
        groups: SharedGroups,
        transport: Transport,
        removed: watch::Receiver<bool>,
    ) -> NodeHandle {
        NodeHandle {
            inner: Arc::new(Inner {
                id: config.id,
                cluster_id: config.cluster_id,
                inputs,
                groups,
                directory: Default::default(),
                transport,
                range_work: crate::range_work::RangeWork::default(),
                remote_load: crate::remote_load::RemoteLoad::default(),
                request_timeout: config.request_timeout,
                leader_wait: config.tick_interval * config.election_ticks * 2,
                next_write_id: AtomicU64::new(1),
                name: config.name.clone(),
                client_urls: config.client_urls.clone(),
                removed,
                snap_dir: crate::layout::Layout::new(&config.data_dir).snap,
                quota_backend_bytes: config.quota_backend_bytes,
                read_timestamps: Arc::new(crate::coalesce::Coalescer::new(config.request_timeout)),
                read_barriers: Arc::new(crate::coalesce::Coalescer::new(config.request_timeout)),
                read_indexes: Arc::new(crate::coalesce::Coalescer::new(config.request_timeout)),
                fresh_read_points: Arc::new(crate::coalesce::Coalescer::new(
                    config.request_timeout,
                )),
                txn_forgets: Default::default(),
            }),
        }
    }

    /// This node's member id.
    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// The peer links (and the node liveness they feed).
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    fn group(&self, group: GroupId) -> Result<Arc<GroupShared>, NodeError> {
        self.inner
            .groups
            .read()
            .unwrap()
            .get(&group)
            .cloned()
            .ok_or(NodeError::UnknownGroup)
    }

    /// How long a request may take before it fails with a timeout.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The data ranges this node holds a replica of, with their spans, in key order
    /// (replicas still waiting for their first snapshot hold no span and are left out).
    pub fn data_ranges(&self) -> Vec<(GroupId, Arc<ostrakon_storage::mvcc::KeySpan>)> {
        self.directory()
            .iter()
            .map(|((_, group), span)| (*group, span.clone()))
            .collect()
    }

    /// `data_ranges`, shared, by first key (`local_directory`).
    pub fn directory(&self) -> crate::local_directory::Directory {
        self.inner.directory.get(|group| {
            if group == crate::META_GROUP {
                return None;
            }
            let groups = self.inner.groups.read().unwrap();
            groups.get(&group).map(|shared| shared.store.span())
        })
    }

    /// The event loop added or removed `group`: the directory reads it again.
    pub(crate) fn group_changed(&self, group: GroupId) {
        self.inner.directory.changed(group);
    }

    /// The ranges here frozen for a merge (`LocalDirectory::frozen`).
    pub(crate) fn frozen_ranges(&self) -> Vec<GroupId> {
        self.inner.directory.frozen()
    }

    /// Told by the stores here of their spans' changes.
    pub(crate) fn span_listener(&self) -> Arc<dyn ostrakon_storage::mvcc::SpanListener> {
        self.inner.directory.clone()
    }

    /// The range holding every key of `intervals`, waiting (until the request timeout)
    /// while no range here holds them yet (one being created by a split). Fails with
    /// `SpansRanges` if they fall in several. A request without keys (an empty Txn) goes
    /// to the first data range.
    pub async fn route(
        &self,
        intervals: &[ostrakon_storage::mvcc::KeyInterval<'_>],
    ) -> Result<GroupId, NodeError> {
        if intervals.is_empty() {
            return Ok(crate::DEFAULT_GROUP);
        }
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            match crate::routing::route(&self.directory(), intervals) {
                crate::routing::Route::One(group) => return Ok(group),
                crate::routing::Route::Several => return Err(NodeError::SpansRanges),
                crate::routing::Route::Unknown if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
                }
                crate::routing::Route::Unknown => return Err(NodeError::Timeout),
            }
        }
    }

    /// Every range holding some key of `intervals`, in key order, waiting (until the
    /// request timeout) while some of them fall in no range here yet (one being created
    /// by a split). A request without keys reads the first data range.
    pub async fn ranges_touched(
        &self,
        intervals: &[ostrakon_storage::mvcc::KeyInterval<'_>],
    ) -> Result<Vec<GroupId>, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            match crate::routing::touched(&self.directory(), intervals) {
                Some(groups) if groups.is_empty() => return Ok(vec![crate::DEFAULT_GROUP]),
                Some(groups) => return Ok(groups),
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
                }
                None => return Err(NodeError::Timeout),
            }
        }
    }

    /// Applies a write to the range holding its keys (`write_intervals`), routed again
    /// while a split moves them; writes without keys go to the first data range, which
    /// holds leases, members, auth and alarms.
    pub async fn write_routed(
        &self,
        request: write_request::Request,
        auth_revision: u64,
    ) -> Result<WriteOutcome, NodeError> {
        if !crate::write_gates::changes_write_rules(&request) {
            return self.write_routed_once(request, auth_revision).await;
        }
        let outcome = self.write_routed_once(request, auth_revision).await?;
        // Acknowledged only once every range enforces the change (`write_gates`): this
        // member's replica of the first range holds it after a read index, and with it
        // every split of the first range before it (the ranges are counted after).
        self.linearizable_read_point(crate::DEFAULT_GROUP).await?;
        if self.directory().len() > 1 {
            crate::write_gates::carry(self).await?;
        }
        Ok(outcome)
    }

    /// An expired lease's revoke, from the lessor of `group` leading in `term`: each
    /// attempt (the first, and each after a transaction's lock or a split held it off)
    /// only once a read index confirms this member still leads in `term`, whose
    /// deadlines found it expired. A successor may have renewed the lease meanwhile.
    pub async fn revoke_while_leading(
        &self,
        request: write_request::Request,
        group: GroupId,
        term: ostrakon_raft::Term,
    ) -> Result<WriteOutcome, NodeError> {
        self.write_routed_guarded(request, 0, Some((group, term)))
            .await
    }

    /// `write_routed`, without carrying a change of the write rules to the other ranges.
    async fn write_routed_once(
        &self,
        request: write_request::Request,
        auth_revision: u64,
    ) -> Result<WriteOutcome, NodeError> {
        self.write_routed_guarded(request, auth_revision, None)
            .await
    }

    /// `write_routed_once`, each attempt made only while `leading` (a group and term)
    /// is confirmed, if given.
    async fn write_routed_guarded(
        &self,
        request: write_request::Request,
        auth_revision: u64,
        leading: Option<(GroupId, ostrakon_raft::Term)>,
    ) -> Result<WriteOutcome, NodeError> {
        use ostrakon_proto::peer::Retry;
        if let write_request::Request::Compaction(compaction) = &request {
            return self.compact_every_range(compaction, auth_revision).await;
        }
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let mut locked_retries = 0u32;
        loop {
            if let Some((group, term)) = leading {
                if !self.confirm_leading(group, term).await {
                    return Err(NodeError::NotLeader(self.status(group)?.leader));
                }
            }
            let groups = self.write_participants(&request).await?;
            // A revoke on a keyspace in ranges is a transaction even in one range: its
            // coordinator checks that the ranges it leaves out hold none of the lease's
            // keys (a plain revoke in a first range that no longer spans the keyspace is
            // refused as in the wrong range).
            let revoke_across = matches!(request, write_request::Request::LeaseRevoke(_))
                && self.directory().len() > 1;
            let outcome = if let ([group], false) = (&groups[..], revoke_across) {
                let group = *group;
                match self
                    .write_checked(group, request.clone(), auth_revision)
                    .await
                {
                    Err(NodeError::NoLeader)
                        if tokio::time::Instant::now() < deadline
                            && self.await_new_range_leader(group).await =>
                    {
                        continue
                    }
                    // The range merged into another while the write was on its way.
                    Err(NodeError::UnknownGroup) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
                        continue;
                    }
                    other => other?,
                }
            } else {
                // On a task of its own: a client that gives up must not stop the
                // coordinator between its steps (its locks would hold the keys until a
                // pusher found them stale).
                let (handle, request) = (self.clone(), request.clone());
                tokio::spawn(async move {
                    crate::txn_coordinator::attempt(&handle, &request, auth_revision, &groups).await
                })
                .await
                .expect("a transaction's coordinator panicked")?
            };
            let retry = match &outcome {
                WriteOutcome::Error(error) => error.retry,
                _ => Retry::None as i32,
            };
            if retry == Retry::None as i32 || tokio::time::Instant::now() >= deadline {
                return Ok(outcome);
            }
            if retry == Retry::WrongRange as i32 {
                // This node has not applied the split the range has: wait for it.
                tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
            }
            if retry == Retry::Locked as i32 {
                // A transaction across ranges holds the keys: it ends within a few
                // round trips. Pauses grow, and vary, so that transactions that keep
                // meeting each other's locks stop meeting.
                locked_retries += 1;
                tokio::time::sleep(locked_pause(locked_retries)).await;
            }
            // A stale revision (a leader changed between the fetch and the apply): the
            // write changed nothing and is proposed again with a new one.
        }
    }

    /// The ranges a write takes part in, in key order: those holding its keys, and the
    /// first data range too if it attaches a lease (the lease lives there: a transaction
    /// with it keeps the lease from being revoked before its keys are written); a lease
    /// revoke takes the ranges that may hold its keys (`revoke_participants`). Writes
    /// without keys go to the first data range, which holds leases, members, auth and
    /// alarms.
    async fn write_participants(
        &self,
        request: &write_request::Request,
    ) -> Result<Vec<GroupId>, NodeError> {
        if let write_request::Request::LeaseRevoke(revoke) = request {
            return Ok(self.revoke_participants(revoke.id));
        }
        let intervals = ostrakon_storage::mvcc::write_intervals(request);
        if intervals.is_empty() {
            return Ok(vec![crate::DEFAULT_GROUP]);
        }
        let mut groups = self.ranges_touched(&intervals).await?;
        if attaches_lease(request) && groups[0] != crate::DEFAULT_GROUP {
            groups.insert(0, crate::DEFAULT_GROUP);
        }
        Ok(groups)
    }

    /// The ranges a revoke of `lease` locks, in key order: the first data range, which
    /// holds the lease (its lock there keeps every attach out: an attach outside it is a
    /// transaction with it), and every other range whose replica here holds a key of the
    /// lease or the lock of a transaction with the first range as its primary (maybe an
    /// attach's, whose key is written as the lock goes). This replica may lag: once the first range is locked the coordinator
    /// checks the ranges left out at their read index (`txn_coordinator::attempt`), and
    /// routes the revoke again if one holds either. The other ranges go on taking writes
    /// while the lease's keys are deleted (every range was locked before, 2026-12-06).
    pub(crate) fn revoke_participants(&self, lease: i64) -> Vec<GroupId> {
        let mut groups: Vec<GroupId> = self
            .data_ranges()
            .into_iter()
            .map(|(group, _)| group)
            .filter(|&group| {
                group == crate::DEFAULT_GROUP
                    || self
                        .store(group)
                        .is_ok_and(|store| may_hold_lease_keys(&store.read_view(), lease))
            })
            .collect();
        if groups.first() != Some(&crate::DEFAULT_GROUP) {
            groups.insert(0, crate::DEFAULT_GROUP);
        }
        groups
    }

    /// The live keys attached to `lease`, in every data range here, in key order.
    pub fn lease_keys(&self, lease: i64) -> Vec<bytes::Bytes> {
        let mut keys: Vec<bytes::Bytes> = self
            .data_ranges()
            .into_iter()
            .filter_map(|(group, _)| self.store(group).ok())
            .flat_map(|store| store.read_view().lease_keys(lease))
            .collect();
        keys.sort();
        keys
    }

    /// Waits until this member's replica of `group` has applied `index` (within the
    /// request timeout).
    pub async fn wait_applied(&self, group: GroupId, index: LogIndex) -> Result<(), NodeError> {
        let mut applied = self.group(group)?.applied.clone();
        let waited = tokio::time::timeout(
            self.inner.request_timeout,
            applied.wait_for(|applied| *applied >= index),
        )
        .await
        .map(|result| result.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NodeError::Stopped),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// For a range a split created (not the first data range, whose requests fail at
    /// once without a leader, as etcd's): waits up to `NEW_RANGE_ELECTION_WAIT` for a
    /// leader, as the range elects its first one right after the split. Returns whether
    /// one is known now (the request is then tried again).
    pub async fn await_new_range_leader(&self, group: GroupId) -> bool {
        if group == crate::DEFAULT_GROUP || group == crate::META_GROUP {
            return false;
        }
        let deadline = tokio::time::Instant::now() + NEW_RANGE_ELECTION_WAIT;
        loop {
            if self
                .status(group)
                .is_ok_and(|status| status.leader != NodeId::NONE)
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
        }
    }

    /// The data ranges' current revision: the highest of them (each range's writes since
    /// the keyspace split carry the oracle's timestamps, so the highest is the last).
    pub fn current_revision(&self) -> ostrakon_storage::mvcc::Revision {
        let groups = self.inner.groups.read().unwrap();
        groups
            .iter()
            .filter(|(group, _)| **group != crate::META_GROUP)
            .map(|(_, shared)| shared.store.current_revision())
            .max()
            .unwrap_or_default()
    }

    /// etcd's Compact on a keyspace in ranges: every range compacts at the revision (one
    /// whose last write is older raises its revision to it). The revision may not be
    /// above the keyspace's current one; one every range compacted already is refused as
    /// in etcd.
    async fn compact_every_range(
        &self,
        compaction: &ostrakon_proto::etcdserverpb::CompactionRequest,
        auth_revision: u64,
    ) -> Result<WriteOutcome, NodeError> {
        use ostrakon_storage::mvcc::{MvccError, Revision};
        let ranges = self.data_ranges();
        let revision = Revision(compaction.revision);
        let oracle_revisions = ranges.iter().any(|(group, _)| {
            self.store(*group)
                .is_ok_and(|store| store.oracle_revisions())
        });
        if ranges.len() == 1 && !oracle_revisions {
            let request = write_request::Request::Compaction(*compaction);
            return self
                .write_checked(ranges[0].0, request, auth_revision)
                .await;
        }
        if revision > self.current_revision() {
            // A revision a read across ranges answered with (the oracle's at the time)
            // is above every range's last write: future only if the oracle has not
            // handed it out yet.
            let now = self.current_timestamp().await?;
            if revision.0 as u64 > now {
                return Ok(mvcc_error_outcome(&MvccError::FutureRevision));
            }
        }
        let mut last = None;
        let mut refusal = None;
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        for (group, _) in ranges {
            // A range merged into another since the listing: its keys are in a range
            // compacted here (at least at the revision, the higher of the two).
            let Ok(shared) = self.group(group) else {
                continue;
            };
            let store = shared.store.clone();
            if revision <= store.compact_revision() {
                refusal.get_or_insert(MvccError::Compacted {
                    compacted: store.compact_revision(),
                });
                continue;
            }
            // Every range compacts at the revision, raising its own to it if it is
            // behind (`MvccStore::compact`), so reads below it are refused everywhere.
            let request = write_request::Request::Compaction(*compaction);
            let mut locked_retries = 0;
            loop {
                let outcome = match self
                    .write_checked(group, request.clone(), auth_revision)
                    .await
                {
                    Err(NodeError::UnknownGroup) => break, // merged meanwhile: as above
                    other => other?,
                };
                match outcome {
                    // A transaction's lock: it ends within a few round trips.
                    WriteOutcome::Error(error)
                        if error.retry == ostrakon_proto::peer::Retry::Locked as i32
                            && tokio::time::Instant::now() < deadline =>
                    {
                        locked_retries += 1;
                        tokio::time::sleep(locked_pause(locked_retries)).await;
                    }
                    WriteOutcome::Error(error) => return Ok(WriteOutcome::Error(error)),
                    outcome => {
                        last = Some(outcome);
                        break;
                    }
                }
            }
        }
        Ok(last.unwrap_or_else(|| {
            mvcc_error_outcome(&refusal.expect("every range refused or compacted"))
        }))
    }

    /// Splits the range holding `key` at `key` (which must not be the range's first
    /// key): the keys from `key` on go to a new range, with a new raft group on every
    /// replica of the old one. Returns the two ranges' groups. A split `by_hand` (an
    /// operator's) is never merged back on the node's own initiative.
    pub async fn split_range(
        &self,
        key: &[u8],
        by_hand: bool,
    ) -> Result<(GroupId, GroupId), NodeError> {
        use ostrakon_proto::peer::{AllocateRangeId, SplitRange};
        let allocate = write_request::Request::AllocateRangeId(AllocateRangeId {});
        let allocated = self.write_retrying(crate::META_GROUP, allocate).await?;
        let WriteOutcome::RangeIdAllocated(allocated) = allocated else {
            return Err(refusal_of(allocated));
        };
        let right = GroupId(allocated.range_id);
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            // An earlier attempt whose answer was lost may have split the range already.
            if let Some(done) = self.split_done_at(key, right) {
                return Ok(done);
            }
            let left = self.route(&[(key, b"")]).await?;
            let split = write_request::Request::Split(SplitRange {
                key: key.to_vec().into(),
                right_range_id: right.0,
                by_hand,
            });
            match self.write(left, split).await {
                Ok(WriteOutcome::RangeSplit(done)) => {
                    return Ok((left, GroupId(done.right_range_id)))
                }
                Ok(WriteOutcome::Error(error))
                    if error.retry == ostrakon_proto::peer::Retry::Locked as i32
                        && tokio::time::Instant::now() < deadline =>
                {
                    // A transaction across ranges holds keys of the range: it ends soon.
                    tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
                }
                Ok(WriteOutcome::Error(error))
                    if by_hand
                        && error.retry == ostrakon_proto::peer::Retry::WrongRange as i32
                        && tokio::time::Instant::now() < deadline =>
                {
                    // This node routed on ranges that a split or a merge had changed on
                    // the range's leader: routed again once it applies that too. (A split
                    // by size or load was meant for the range it measured: it is dropped,
                    // and the next look measures again.) An earlier attempt whose answer
                    // was lost may be what moved the key.
                    if let Some(done) = self.split_done_at(key, right) {
                        return Ok(done);
                    }
                    tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
                }
                Ok(other) => {
                    // A retry routed to `right` itself is refused ("not inside"): the
                    // split it retries applied.
                    if let Some(done) = self.split_done_at(key, right) {
                        return Ok(done);
                    }
                    return Err(refusal_of(other));
                }
                Err(
                    NodeError::NoLeader
                    | NodeError::LeaderChanged
                    | NodeError::Dropped
                    | NodeError::Timeout,
                ) if tokio::time::Instant::now() < deadline => {
                    // The split may have applied without its answer reaching us: then
                    // the range `right` starts at the key once this node applies it.
                    tokio::time::sleep(ROUTE_RETRY_PAUSE * 5).await;
                    if let Some(done) = self.split_done_at(key, right) {
                        return Ok(done);
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// If the split at `key` that gave `right` its id has applied here (an earlier
    /// attempt whose answer was lost): the range before `key` and `right`. The range
    /// before is looked up, not the one the last attempt routed to: once the split
    /// applied, that was `right` itself.
    fn split_done_at(&self, key: &[u8], right: GroupId) -> Option<(GroupId, GroupId)> {
        if !self
            .group(right)
            .is_ok_and(|g| g.store.span().start() == key)
        {
            return None;
        }
        let directory = self.directory();
        let left = directory
            .iter()
            .find(|(_, span)| span.end() == Some(key))
            .map(|((_, group), _)| *group)?;
        Some((left, right))
    }

    /// Merges the range that starts at `key` into the range before it, undoing a split
    /// at `key` (CockroachDB's unsplit; docs/RANGES.md, "Merges"), through the node
    /// leading the right range, and waits until this node has applied it. Returns (the
    /// merged range, the range merged into it).
    pub async fn merge_ranges_at(&self, key: &[u8]) -> Result<(GroupId, GroupId), NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout * 2;
        let no_boundary = || {
            NodeError::Refused {
            code: tonic::Code::FailedPrecondition as i32,
            message: format!(
                "ostrakon: no range starts at {:?} after another one; `ostrakon ranges` lists where ranges start",
                String::from_utf8_lossy(key)
            ),
        }
        };
        if key.is_empty() {
            return Err(no_boundary());
        }
        let right = self.route(&[(key, b"")]).await?;
        if self.store(right)?.span().start() != key {
            return Err(no_boundary());
        }
        // Merged: by this call's attempt, or by one whose answer was lost.
        let merged = || {
            self.group(right)
                .is_err()
                .then(|| self.absorbing_range(right))
                .flatten()
        };
        // The range before `key`, looked up again on every attempt: it may merge into the
        // range before it meanwhile.
        let range_before = || {
            self.data_ranges()
                .into_iter()
                .find(|(_, span)| span.end() == Some(key))
                .map(|(range, _)| range)
        };
        if range_before().is_none() {
            return Err(no_boundary());
        }
        let left = loop {
            if let Some(left) = merged() {
                return Ok((left, right));
            }
            let Some(left) = range_before() else {
                return Err(no_boundary());
            };
            let status = self.status(right)?;
            // The coordinator goes on detached past the deadline (a merge is never left
            // halfway); its answer is not waited for.
            let attempt = if status.is_leader {
                let local = crate::merge_coordinator::merge_detached(self, left, right);
                tokio::time::timeout_at(deadline, local)
                    .await
                    .unwrap_or(Err(NodeError::Timeout))
            } else if status.leader == NodeId::NONE || status.leader == self.id() {
                Err(NodeError::NoLeader)
            } else {
                let remote = self
                    .inner
                    .transport
                    .merge_ranges(status.leader, left, right);
                tokio::time::timeout_at(deadline, remote)
                    .await
                    .unwrap_or(Err(NodeError::Timeout))
            };
            // Asked again while the leadership moves, while an attempt's fate is unknown
            // (a forwarded merge's answer lost: "leader changed", which a merge asked
            // during leaders' spreading answered; found by CI) and while another attempt
            // holds the range frozen (ABORTED, from its leader): the top of the loop sees
            // the merge once it applied here.
            let retried = |error: &NodeError| match error {
                NodeError::NoLeader
                | NodeError::NotLeader(_)
                | NodeError::Dropped
                | NodeError::LeaderChanged => true,
                NodeError::Refused { code, .. } => *code == tonic::Code::Aborted as i32,
                _ => false,
            };
            match attempt {
                Ok(()) => break left,
                Err(error) if retried(&error) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(ROUTE_RETRY_PAUSE * 10).await;
                }
                Err(error) => {
                    // An unknown fate may have been a merge all the same.
                    return match merged() {
                        Some(left) => Ok((left, right)),
                        None => Err(error),
                    };
                }
            }
        };
        // Merged: this node's replicas follow within a round trip or so.
        while self.group(right).is_ok() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(ROUTE_RETRY_PAUSE).await;
        }
        Ok((merged().unwrap_or(left), right))
    }

    /// The range here that took `group` over by a merge (directly or through others),
    /// if `group` merged away.
    pub fn absorbing_range(&self, group: GroupId) -> Option<GroupId> {
        self.data_ranges().into_iter().find_map(|(range, _)| {
            self.store(range)
                .is_ok_and(|store| store.absorbed_ranges().contains(&group))
                .then_some(range)
        })
    }

    /// `group`, or the range that took it over if it merged away (a transaction's
    /// primary: the merged range keeps its outcomes).
    pub fn live_range(&self, group: GroupId) -> GroupId {
        if self.group(group).is_ok() {
            return group;
        }
        self.absorbing_range(group).unwrap_or(group)
    }

    /// Merges `right` into `left` from this node, which must lead `right` (a peer's
    /// `merge_ranges_at` lands here).
    pub async fn merge_ranges_here(&self, left: GroupId, right: GroupId) -> Result<(), NodeError> {
        crate::merge_coordinator::merge_detached(self, left, right).await
    }

    /// `write`, retried while the group has no leader or its leader changes, until the
    /// request timeout: for writes that may be repeated safely.
    async fn write_retrying(
        &self,
        group: GroupId,
        request: write_request::Request,
    ) -> Result<WriteOutcome, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            match self.write(group, request.clone()).await {
                Err(NodeError::NoLeader | NodeError::LeaderChanged | NodeError::Dropped)
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(ROUTE_RETRY_PAUSE * 5).await;
                }
                other => return other,
            }
        }
    }

    /// Renews a lease (`renew`) or reads how long it has left, on the leader: here if this
    /// member leads, else forwarded. `None`: no such lease. Tried again, within the
    /// request timeout, while the leadership is unknown or moving, as etcd's `LeaseRenew`
    /// waits for a leader and tries again: a forward is given up once this member sees
    /// another leader (or none), and goes to whoever leads by then. A keep-alive forwarded to a leader
    /// that was paused or cut off used to wait out the whole request timeout (7 s), past
    /// the TTL of a short lease, which the new leader then revoked although its holder
    /// kept it alive all along (found by review, 2026-12-06).
    pub async fn lease_query(
        &self,
        group: GroupId,
        id: i64,
        renew: bool,
    ) -> Result<Option<crate::lessor::LeaseTtl>, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            let status = self.status(group)?;
            let leader = status.leader;
            let attempt = if status.is_leader {
                tokio::time::timeout_at(deadline, self.lease_query_local(group, id, renew))
                    .await
                    .unwrap_or(Err(NodeError::Timeout))
            } else if leader == NodeId::NONE || leader == self.id() {
                // No leader known (or only a stale view of this member as leader).
                Err(NodeError::NoLeader)
            } else {
                self.lease_query_forwarded(leader, group, id, renew, deadline)
                    .await
            };
            match attempt {
                Err(
                    NodeError::NoLeader
                    | NodeError::NotLeader(_)
                    | NodeError::LeaderChanged
                    | NodeError::Timeout,
                ) if tokio::time::Instant::now() + LEASE_RETRY_PAUSE < deadline => {
                    tokio::time::sleep(LEASE_RETRY_PAUSE).await;
                }
                // As etcd's: "no leader" when none was found in time, a timeout when
                // one was and did not answer.
                Err(NodeError::NoLeader) => return Err(NodeError::NoLeader),
                Err(NodeError::NotLeader(_) | NodeError::LeaderChanged) => {
                    return Err(NodeError::Timeout);
                }
                other => return other,
            }
        }
    }

    /// `lease_query` forwarded to `leader`, given up (`LeaderChanged`) as soon as this
    /// member sees another leader or none: a slow leader is waited for (its
    /// confirmation may take longer than an election timeout), a replaced one is not.
    async fn lease_query_forwarded(
        &self,
        leader: NodeId,
        group: GroupId,
        id: i64,
        renew: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Option<crate::lessor::LeaseTtl>, NodeError> {
        let forward = self.inner.transport.lease_query(leader, group, id, renew);
        tokio::pin!(forward);
        loop {
            tokio::select! {
                biased;
                answer = &mut forward => return answer,
                () = tokio::time::sleep(LEASE_RETRY_PAUSE) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(NodeError::Timeout);
                    }
                    if self.status(group)?.leader != leader {
                        return Err(NodeError::LeaderChanged);
                    }
                }
            }
        }
    }

    /// `lease_query` on this member only; fails with `NotLeader` unless it leads. As
    /// etcd's leader (`ensureLeadership`), it first confirms its leadership with a read
    /// index taken after the request arrived, and applies up to it: a leader deposed
    /// without knowing it yet (paused, partitioned) must not acknowledge a keep-alive of
    /// a lease its successor may be revoking (found by review, 2026-12-06), and a leader
    /// new to its term may not have applied the grant of a lease its predecessor
    /// acknowledged, and would answer that it knows no such lease.
    pub async fn lease_query_local(
        &self,
        group: GroupId,
        id: i64,
        renew: bool,
    ) -> Result<Option<crate::lessor::LeaseTtl>, NodeError> {
        let shared = self.group(group)?.clone();
        let status = self.status(group)?;
        if !status.is_leader {
            return Err(NodeError::NotLeader(status.leader));
        }
        if !self.confirm_leading(group, status.term).await {
            return Err(NodeError::NotLeader(self.status(group)?.leader));
        }
        if !renew {
            return Ok(shared.lessor.remaining(&shared.store, status.term, id));
        }
        let renewed = shared
            .lessor
            .renew_queueing_clear(&shared.store, status.term, id);
        let Some((ttl, Some(clear))) = renewed else {
            return Ok(renewed.map(|(ttl, _)| ttl));
        };
        // The lease had a checkpoint of its remaining TTL: answered once the clear is
        // written (`Lessor::renew_queueing_clear`).
        shared.lessor.clear_wanted.notify_one();
        match tokio::time::timeout(
            self.inner.request_timeout,
            shared.lessor.wait_for_clear(clear),
        )
        .await
        {
            Ok(true) => Ok(Some(ttl)),
            // The leadership ended first: its successor answers the keep-alive again.
            Ok(false) => Err(NodeError::NotLeader(self.status(group)?.leader)),
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Whether this member leads `group` in `term`, confirmed by a read index taken now
    /// (a quorum still follows it), with everything up to it applied here.
    pub async fn confirm_leading(&self, group: GroupId, term: ostrakon_raft::Term) -> bool {
        let leads = |node: &NodeHandle| {
            node.status(group)
                .is_ok_and(|status| status.is_leader && status.term == term)
        };
        if !leads(self) {
            return false;
        }
        // A read index a follower would forward to another leader: leadership is checked
        // again after it, in the same term.
        self.linearizable_read_point(group).await.is_ok() && leads(self)
    }

    /// Writes a consistent copy of a keyspace in one range, as of now on this member, to
    /// a new snapshot file, and returns its path (the caller removes it); None if the
    /// keyspace is in ranges (`write_etcd_backup_across`). The first range is frozen
    /// between two applies first, and whether it holds the whole keyspace is read from
    /// the frozen state: read before, a first split applied in between would leave every
    /// key past it out of the backup, silently (found by review). Writes go on while the
    /// file is written.
    pub async fn write_backup_of_one_range(
        &self,
    ) -> Result<Option<(std::path::PathBuf, ostrakon_storage::snapshot::SnapshotInfo)>, NodeError>
    {
        crate::failpoints::pause("backup-before-freeze").await;
        let frozen = self.freeze(crate::DEFAULT_GROUP).await?;
        if *frozen.span() != ostrakon_storage::mvcc::KeySpan::whole() {
            return Ok(None);
        }
        let path = self.backup_path("backup");
        let target = path.clone();
        let written =
            tokio::task::spawn_blocking(move || ostrakon_storage::snapshot::write(frozen, &target))
                .await
                .expect("writing a backup panicked");
        match written {
            Ok(info) => Ok(Some((path, info))),
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                Err(NodeError::Refused {
                    code: tonic::Code::Internal as i32,
                    message: format!("ostrakon: writing the backup failed: {error}"),
                })
            }
        }
    }

    /// This member's replica of `group`, frozen between two applies.
    pub async fn freeze(
        &self,
        group: GroupId,
    ) -> Result<ostrakon_storage::mvcc::FrozenState, NodeError> {
        let (respond, frozen) = oneshot::channel();
        self.send(Input::Freeze { group, respond })?;
        frozen.await.map_err(|_| NodeError::UnknownGroup)
    }

    /// This member's replicas of `groups`, frozen in one round of the event loop (fails
    /// with `UnknownGroup` if this member holds one no longer).
    pub(crate) async fn freeze_every(
        &self,
        groups: Vec<GroupId>,
    ) -> Result<Vec<ostrakon_storage::mvcc::FrozenState>, NodeError> {
        let (respond, frozen) = oneshot::channel();
        self.send(Input::FreezeEvery { groups, respond })?;
        frozen.await.map_err(|_| NodeError::UnknownGroup)
    }

    /// A new file name for a backup being written, in the snapshot directory.
    fn backup_path(&self, extension: &str) -> std::path::PathBuf {
        static BACKUPS: AtomicU64 = AtomicU64::new(0);
        self.inner.snap_dir.join(format!(
            "backup-{}-{}.{extension}",
            std::process::id(),
            BACKUPS.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Writes a backup of a keyspace in ranges in etcd's format (every data range at one
    /// consistent point, `consistent_point`); returns the file, its size and revision.
    pub async fn write_etcd_backup_across(
        &self,
    ) -> Result<(std::path::PathBuf, u64, ostrakon_storage::mvcc::Revision), NodeError> {
        let (revision, frozen) = crate::consistent_point::freeze_every_range(self).await?;
        let path = self.backup_path("etcd.db");
        let target = path.clone();
        let written = tokio::task::spawn_blocking(move || {
            let content = ostrakon_storage::snapshot::content_across(frozen, revision);
            ostrakon_storage::etcd_backup::write(&content, &target)
        })
        .await
        .expect("writing a backup panicked");
        match written {
            Ok(file_bytes) => Ok((path, file_bytes, revision)),
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                Err(NodeError::Refused {
                    code: tonic::Code::Internal as i32,
                    message: format!("ostrakon: writing the backup failed: {error}"),
                })
            }
        }
    }

    /// The store size past which writes that add data are refused (`--quota-backend-bytes`).
    pub fn quota_backend_bytes(&self) -> u64 {
        self.inner.quota_backend_bytes
    }

    /// Resolves once this member has been removed from the cluster.
    pub async fn removed(&self) {
        let mut removed = self.inner.removed.clone();
        let _ = removed.wait_for(|removed| *removed).await;
    }

    /// Every member of the group (voters and learners), with what the member registry
    /// knows of it: a member that has not started yet has no name and no client URLs.
    pub fn members(&self, group: GroupId) -> Result<Vec<MemberDescription>, NodeError> {
        let store = self.group(group)?.store.clone();
        let conf_state = store.applied().conf_state;
        let registry: std::collections::BTreeMap<u64, MemberRecord> =
            store.members().into_iter().map(|r| (r.id, r)).collect();
        Ok(conf_state
            .members()
            .into_iter()
            .map(|id| {
                let record = registry.get(&id.0).cloned().unwrap_or_default();
                MemberDescription {
                    id,
                    name: record.name,
                    peer_urls: record.peer_urls,
                    client_urls: record.client_urls,
                    is_learner: conf_state.is_learner(id),
                }
            })
            .collect())
    }

    /// Changes the group's membership through its leader, and waits until this member
    /// has applied the resulting membership (a joint configuration is left first).
    /// Retried while another change is in progress or no leader is known, until the
    /// request timeout. Not retried after a lost leader: the change may have applied.
    pub async fn change_membership(
        &self,
        group: GroupId,
        change: ConfChange,
    ) -> Result<ConfState, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let applied = self.change_membership_at_leader(group, change).await?;
        let settled = if applied.is_joint() {
            next_conf_state(&applied, &ConfChange::LeaveJoint).expect("a joint config can be left")
        } else {
            applied
        };
        let store = self.store(group)?;
        while store.applied().conf_state != settled {
            if tokio::time::Instant::now() >= deadline {
                // The change is committed; only this member's view lags.
                tracing::warn!(?settled, "membership changed, but not yet applied here");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(settled)
    }

    /// `change_membership`, answered once the change has applied on the leader (this
    /// member's view may lag, and a joint configuration may not be left yet): for a group
    /// whose membership other changes may follow at once (the meta range's).
    pub async fn change_membership_at_leader(
        &self,
        group: GroupId,
        change: ConfChange,
    ) -> Result<ConfState, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let applied = loop {
            let status = self.status(group)?;
            let attempt = if status.is_leader {
                self.change_membership_local(group, change.clone()).await
            } else if status.leader == NodeId::NONE || status.leader == self.id() {
                Err(NodeError::NoLeader)
            } else {
                let remote = self
                    .inner
                    .transport
                    .change_membership(status.leader, group, &change);
                tokio::time::timeout_at(deadline, remote)
                    .await
                    .unwrap_or(Err(NodeError::Timeout))
            };
            match attempt {
                Err(
                    NodeError::ChangeInProgress
                    | NodeError::NoLeader
                    | NodeError::NotLeader(_)
                    | NodeError::Dropped,
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        Ok(applied)
    }

    /// `change_membership` on this member only; fails with `NotLeader` unless it leads.
    pub async fn change_membership_local(
        &self,
        group: GroupId,
        change: ConfChange,
    ) -> Result<ConfState, NodeError> {
        let (respond, response) = oneshot::channel();
        self.send(Input::ChangeMembership {
            group,
            change,
            respond,
        })?;
        match tokio::time::timeout(self.inner.request_timeout, response).await {
            Ok(answer) => answer.map_err(|_| NodeError::Stopped)?,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// `count` timestamps from the oracle on the meta range's leader (forwarded there if
    /// this node does not lead it), retried while no leader is known or the leader
    /// changes, until the request timeout. Retrying is safe: a lost answer only leaves
    /// timestamps unused.
    pub async fn timestamps(
        &self,
        count: u64,
    ) -> Result<ostrakon_ranges::TimestampRange, NodeError> {
        Ok(self.timestamps_vouched(count, &[]).await?.range)
    }

    /// `timestamps`, with the word of the member that granted them (another member: the
    /// meta range's leader) of each range in `vouch_for` it gave, read after it handed
    /// them out (at most `VOUCH_FOR_MAX` ranges; docs/PERFORMANCE.md, "A grant vouches
    /// for its asker's leadership").
    pub async fn timestamps_vouched(
        &self,
        count: u64,
        vouch_for: &[GroupId],
    ) -> Result<crate::transport::Granted, NodeError> {
        assert!(
            (1..=TIMESTAMPS_PER_REQUEST_MAX).contains(&count),
            "timestamp count checked by the caller"
        );
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            let status = self.status(crate::META_GROUP)?;
            let attempt = if status.is_leader {
                self.timestamps_local(count, None)
                    .await
                    .map(|range| crate::transport::Granted {
                        range,
                        vouched: Vec::new(),
                    })
            } else if status.leader == NodeId::NONE || status.leader == self.id() {
                Err(NodeError::NoLeader)
            } else {
                // Read at each attempt, after what the timestamps are for began.
                let word = self.term_word(crate::META_GROUP);
                let remote = self
                    .inner
                    .transport
                    .timestamps(status.leader, count, word, vouch_for);
                tokio::time::timeout_at(deadline, remote)
                    .await
                    .unwrap_or(Err(NodeError::Timeout))
            };
            match attempt {
                Err(
                    NodeError::NoLeader
                    | NodeError::NotLeader(_)
                    | NodeError::LeaderChanged
                    | NodeError::Dropped,
                ) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
    }

    /// A timestamp the oracle handed out after this call began: at or above the revision
    /// of every write acknowledged before it, in any range (the current revision of a
    /// read across ranges, or of a linearizable read of a keyspace in ranges). Reads on
    /// this member share fetches (`coalesce`): one is in flight at a time.
    pub async fn current_timestamp(&self) -> Result<u64, NodeError> {
        let node = self.clone();
        let fetch = move || {
            let node = node.clone();
            async move { Ok(node.timestamps(1).await?.first.0) }
        };
        self.inner.read_timestamps.join((), fetch).await
    }

    /// `timestamps` from this member's oracle; fails with `NotLeader` unless it leads the
    /// meta range. `word`: the asking member's, if another member asked.
    pub async fn timestamps_local(
        &self,
        count: u64,
        word: Option<crate::member_word::MemberWord>,
    ) -> Result<ostrakon_ranges::TimestampRange, NodeError> {
        let (respond, response) = oneshot::channel();
        let respond = crate::timestamps::TimestampResponder::Local(respond);
        self.send(Input::Timestamps {
            count,
            respond,
            word,
        })?;
        match tokio::time::timeout(self.inner.request_timeout, response).await {
            Ok(answer) => answer.map_err(|_| NodeError::Stopped)?,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Subscribes to the events of every revision the group commits from now on.
    pub fn subscribe_events(
        &self,
        group: GroupId,
    ) -> Result<
        tokio::sync::broadcast::Receiver<Arc<ostrakon_storage::mvcc::RevisionEvents>>,
        NodeError,
    > {
        Ok(self.group(group)?.events.subscribe())
    }

    /// The ranges noticed for the node's periodic range tasks.
    pub(crate) fn range_work(&self) -> &crate::range_work::RangeWork {
        &self.inner.range_work
    }

    /// Forgets of committed transactions' records waiting for their burst.
    pub(crate) fn txn_forgets(&self) -> &crate::txn_forgets::ForgetQueue {
        &self.inner.txn_forgets
    }

    /// The load the other members report for the ranges this member leads.
    pub(crate) fn remote_load(&self) -> &crate::remote_load::RemoteLoad {
        &self.inner.remote_load
    }

    /// The group's state machine, for reads.
    pub fn store(&self, group: GroupId) -> Result<Arc<MvccStore>, NodeError> {
        Ok(self.group(group)?.store.clone())
    }

    /// A read of `group` served by this member, from `key` (writes are counted where
    /// proposed).
    pub fn record_read(&self, group: GroupId, key: &[u8]) {
        if let Ok(shared) = self.group(group) {
            if shared.requests.record_key(key) {
                self.inner.range_work.served.notice(group);
            }
        }
    }

    /// The keys `group`'s requests on this member were sampled at since the last call,
    /// sorted (see `request_rate`).
    pub fn take_key_sample(&self, group: GroupId) -> Result<Vec<Vec<u8>>, NodeError> {
        Ok(self.group(group)?.requests.take_key_sample())
    }

    /// The requests per second this member serves for `group` (see `request_rate`).
    pub fn requests_per_second(&self, group: GroupId) -> Result<f64, NodeError> {
        Ok(self.group(group)?.requests.per_second())
    }

    /// The group's last published status.
    pub fn status(&self, group: GroupId) -> Result<GroupStatus, NodeError> {
        Ok(self.group(group)?.status.read().unwrap().clone())
    }

    /// The group's full raft status (role, term, indexes, and each follower's progress
    /// when this member leads), from the event loop; for status pages.
    pub async fn raft_status(&self, group: GroupId) -> Result<ostrakon_raft::Status, NodeError> {
        let (respond, status) = oneshot::channel();
        self.send(Input::RaftStatus { group, respond })?;
        status.await.map_err(|_| NodeError::UnknownGroup)
    }

    /// Replicates and applies a write, through the leader wherever it is; the outcome is
    /// the state machine's response. Gives up after the request timeout, in which case the
    /// write may or may not have been applied.
    pub async fn write(
        &self,
        group: GroupId,
        request: write_request::Request,
    ) -> Result<WriteOutcome, NodeError> {
        self.write_checked(group, request, 0).await
    }

    /// `write`, refused at apply if the auth store's revision has moved past
    /// `auth_revision` (the permissions the caller checked changed meanwhile; 0: none).
    pub async fn write_checked(
        &self,
        group: GroupId,
        request: write_request::Request,
        auth_revision: u64,
    ) -> Result<WriteOutcome, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let _pending = PendingProposal::new();
        let attempt = || {
            let request = request.clone();
            async move {
                // A member that knows another leads the range forwards the write at once:
                // its event loop would only answer "not leader" (a hop there and back per
                // write). A view one round stale is corrected as the loop's answer is: the
                // member asked answers "not leader" in turn.
                let local = match self.known_leader_elsewhere(group) {
                    Some(leader) => Err(NodeError::NotLeader(leader)),
                    None => {
                        self.write_local(group, request.clone(), auth_revision)
                            .await
                    }
                };
                match local {
                    Err(NodeError::NotLeader(leader)) if leader != NodeId::NONE => {
                        let mut span = spans::child(
                            spans::current(),
                            "raft.forward_to_leader",
                            SpanKind::Client,
                        );
                        let trace_parent = span
                            .as_ref()
                            .map(|span| span.context().to_traceparent())
                            .unwrap_or_default();
                        if let Some(span) = &mut span {
                            span.set_attribute("raft.leader", format!("{:x}", leader.0));
                        }
                        let outcome = self
                            .inner
                            .transport
                            .forward(leader, group, request, auth_revision, trace_parent)
                            .await;
                        if let (Some(span), Err(error)) = (&mut span, &outcome) {
                            span.set_error(error);
                        }
                        outcome
                    }
                    Err(NodeError::NotLeader(_)) => Err(NodeError::NoLeader),
                    other => other,
                }
            }
        };
        let never_applied =
            |error: &NodeError| matches!(error, NodeError::NoLeader | NodeError::Dropped);
        let result = self
            .while_leadership_moves(deadline, never_applied, attempt)
            .await;
        // A refusal by the state machine is an answer, not a failed proposal.
        if matches!(&result, Err(error) if !matches!(error, NodeError::Refused { .. })) {
            crate::metrics::metrics().proposals_failed.inc();
        }
        result
    }

    /// This member's word for an ask of group's leader made now (after what it is for
    /// began), as a term on the wire: 0 for none (`crate::member_word`).
    pub(crate) fn term_word(&self, group: GroupId) -> u64 {
        self.group(group)
            .map_or(0, |shared| shared.term_word.word())
    }

    /// The range's leader as the event loop last published it, if another member.
    fn known_leader_elsewhere(&self, group: GroupId) -> Option<NodeId> {
        let status = self.status(group).ok()?;
        (!status.is_leader && status.leader != NodeId::NONE && status.leader != self.id())
            .then_some(status.leader)
    }

    /// Proposes on this node only; fails with `NotLeader` on a follower.
    pub async fn write_local(
        &self,
        group: GroupId,
        request: write_request::Request,
        auth_revision: u64,
    ) -> Result<WriteOutcome, NodeError> {
        self.write_here(group, request, auth_revision, true, None)
            .await
    }

    /// [`Self::write_local`] of a write that holds only under this member's leadership
    /// of `term` (what it carries was read then): in an entry of another term it is
    /// refused at apply (`WriteRequest::only_in_term`).
    pub async fn write_local_in_term(
        &self,
        group: GroupId,
        request: write_request::Request,
        term: ostrakon_raft::Term,
    ) -> Result<WriteOutcome, NodeError> {
        self.write_here(group, request, 0, true, Some(term)).await
    }

    /// [`Self::write_local`] for a write another member forwarded: a plain write a
    /// transaction's lock holds off is answered "locked" at once rather than wait in
    /// the range's line (its batch's other writes share its answer).
    pub async fn write_forwarded(
        &self,
        group: GroupId,
        request: write_request::Request,
        auth_revision: u64,
    ) -> Result<WriteOutcome, NodeError> {
        self.write_here(group, request, auth_revision, false, None)
            .await
    }

    async fn write_here(
        &self,
        group: GroupId,
        request: write_request::Request,
        auth_revision: u64,
        may_wait: bool,
        only_in_term: Option<ostrakon_raft::Term>,
    ) -> Result<WriteOutcome, NodeError> {
        let shared = self.group(group)?;
        // Where the write falls, for a split by load (writes without keys count only).
        let first_key = ostrakon_storage::mvcc::write_intervals(&request)
            .first()
            .map(|(key, _)| key.to_vec());
        // The proposal's span: members that apply the entry record their apply under it.
        let span = spans::child(spans::current(), "raft.propose", SpanKind::Internal);
        let write = WriteRequest {
            origin: self.inner.id.0,
            id: self.inner.next_write_id.fetch_add(1, Ordering::Relaxed),
            request: Some(request),
            auth_revision,
            // The event loop sets it on a range that takes its revisions from the oracle.
            revision: 0,
            trace_parent: span
                .as_ref()
                .map(|span| span.context().to_traceparent())
                .unwrap_or_default(),
            only_in_term: only_in_term.map_or(0, |term| term.0),
        };
        let (respond, response) = oneshot::channel();
        self.send(Input::Propose {
            group,
            write,
            respond,
            may_wait,
        })?;
        let outcome = response.await.map_err(|_| NodeError::Stopped)?;
        if matches!(&outcome, Ok(applied) if !matches!(applied, WriteOutcome::Error(_))) {
            // Applied through this member as the range's leader (refused or retried
            // attempts are not the range's load).
            match &first_key {
                Some(key) => {
                    if shared.requests.record_key(key) {
                        self.inner.range_work.served.notice(group);
                    }
                }
                None => shared.requests.record(),
            }
        }
        if let Some(mut span) = span {
            match &outcome {
                // Not proposed here: the forward to the leader is the next span.
                Err(NodeError::NotLeader(_)) => span.discard(),
                Err(error) => span.set_error(error),
                Ok(_) => span.set_attribute("raft.group", group.0),
            }
        }
        outcome
    }

    /// Hands the group's leadership to `target` and waits until it leads (this node must
    /// lead; `target` must be a voter).
    pub async fn move_leader(&self, group: GroupId, target: NodeId) -> Result<(), NodeError> {
        let (respond, response) = oneshot::channel();
        self.send(Input::TransferLeader {
            group,
            target,
            only_to_a_live_voter: false,
            respond,
        })?;
        response.await.map_err(|_| NodeError::Stopped)??;
        self.wait_for_status(group, self.inner.request_timeout, |status| {
            status.leader == target
        })
        .await
    }

    /// Polls the group's status until `done` holds of it (Ok) or `wait` passed (Timeout).
    async fn wait_for_status(
        &self,
        group: GroupId,
        wait: Duration,
        done: impl Fn(&GroupStatus) -> bool,
    ) -> Result<(), NodeError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if done(&self.status(group)?) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Hands the group's leadership to `target`, unless it is reported down, and waits
    /// until this member no longer leads it (moved to `target`, or on from it), for at
    /// most two election timeouts: raft gives a transfer up after one. A drain's move,
    /// which must neither wait on a target that died (the drain's other leaderships
    /// stay put meanwhile: it held a drained member's leaderships won after its
    /// target's death for three request timeouts, found by CI) nor on a leadership the
    /// target's spreading handed on.
    async fn move_leadership_away(&self, group: GroupId, target: NodeId) -> Result<(), NodeError> {
        let (respond, response) = oneshot::channel();
        self.send(Input::TransferLeader {
            group,
            target,
            only_to_a_live_voter: true,
            respond,
        })?;
        response.await.map_err(|_| NodeError::Stopped)??;
        self.wait_for_status(group, self.inner.leader_wait, |status| !status.is_leader)
            .await
    }

    /// Hands every leadership this member holds but the first range's (which MoveLeader
    /// moves first, and answers for) to `target`, `LEADERSHIP_MOVES_AT_ONCE` at a time,
    /// each waited for as `move_leadership_away` waits; and drains this member for
    /// `DRAIN_HOLD`, so that spreading hands none back meanwhile (a member drained
    /// before a stop kept leading its share of the ranges, the meta range among them;
    /// found by review). Returns how many moves failed (each logged). A pass with a
    /// move refused or timed out is the last (the target looks dead): the event loop's
    /// drain then hands what this member leads to whichever voters are up and caught
    /// up. A range that merged or whose leadership left meanwhile is no reason to stop.
    pub async fn move_every_leadership(&self, target: NodeId, drain: u64) -> usize {
        use futures_util::StreamExt;
        let mut failed = 0;
        // A few passes: a leadership handed here by spreading just before the drain was
        // told to the peers arrives after the first pass listed what this member led.
        for pass in 0..LEADERSHIP_MOVE_PASSES {
            if pass > 0 {
                tokio::time::sleep(LEADERSHIP_MOVE_PASS_PAUSE).await;
            }
            let mut groups: Vec<GroupId> = self
                .data_ranges()
                .into_iter()
                .map(|(group, _)| group)
                .collect();
            groups.push(crate::META_GROUP);
            let led: Vec<GroupId> = groups
                .into_iter()
                .filter(|&group| group != crate::DEFAULT_GROUP || pass > 0)
                .filter(|&group| self.status(group).is_ok_and(|status| status.is_leader))
                .collect();
            if led.is_empty() {
                continue;
            }
            let moves = futures_util::stream::iter(led)
                .map(|group| async move { (group, self.move_leadership_away(group, target).await) })
                .buffer_unordered(LEADERSHIP_MOVES_AT_ONCE)
                .collect::<Vec<_>>()
                .await;
            let mut target_looks_dead = false;
            for (group, moved) in moves {
                if let Err(error) = moved {
                    failed += 1;
                    target_looks_dead |=
                        matches!(error, NodeError::Timeout | NodeError::Refused { .. });
                    tracing::warn!(group = group.0, %error, "a leadership was not moved");
                }
            }
            if target_looks_dead {
                break;
            }
        }
        self.inner.transport.loads().end_drain_passes(drain);
        failed
    }

    /// Marks this member as draining its leaderships for `DRAIN_HOLD` (told to the peers
    /// on every batch): an operator's MoveLeader moves them away.
    /// Returns the drain's generation, for `move_every_leadership`.
    pub fn drain_leaderships(&self) -> u64 {
        self.inner
            .transport
            .loads()
            .drain_for(DRAIN_HOLD, std::time::Instant::now())
    }

    /// Ends a drain at once (a MoveLeader that failed moves nothing away).
    pub fn end_drain(&self) {
        let _ = self
            .inner
            .transport
            .loads()
            .drain_for(Duration::ZERO, std::time::Instant::now());
    }

    /// Waits until this node's replica of `group` holds every write of it whose revision
    /// is at or below `revision` that will ever apply (the read-wait rule of ranges that
    /// take revisions from the oracle; `revision` must be at or below one the oracle
    /// handed out before the call: the barrier's word of this member's range term, read
    /// after that, vouches only for writes of revisions handed out before it). At once
    /// if the replica applied a write above `revision` (revisions rise in a range's
    /// log); otherwise a read barrier on the range's leader, which also confirms the
    /// read is linearizable.
    pub async fn read_point_at(
        &self,
        group: GroupId,
        revision: ostrakon_storage::mvcc::Revision,
    ) -> Result<(), NodeError> {
        let shared = self.group(group)?;
        if shared.store.current_revision() >= revision {
            return Ok(());
        }
        let mut applied = shared.applied.clone();
        // Any barrier sent after `revision` came from the oracle will do: reads of the
        // range on this member share them (`coalesce`).
        let node = self.clone();
        let barrier = move || {
            let node = node.clone();
            async move {
                match node.read_barrier_local(group, None).await {
                    Err(NodeError::NotLeader(leader)) if leader != NodeId::NONE => {
                        // Read after every read this barrier is for began.
                        let word = node.term_word(group);
                        node.inner.transport.read_barrier(leader, group, word).await
                    }
                    Err(NodeError::NotLeader(_)) => Err(NodeError::NoLeader),
                    other => other,
                }
            }
        };
        let wait = async {
            let index = self.inner.read_barriers.join(group, barrier).await?;
            // The replica gone meanwhile (merged into its left neighbour): routed again.
            applied
                .wait_for(|applied| *applied >= index)
                .await
                .map_err(|_| NodeError::UnknownGroup)?;
            Ok(())
        };
        match tokio::time::timeout(self.inner.request_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// A revision R at or above every revision acknowledged before the call, in any range,
    /// once this member's replica of `group` holds every write of the range at or below
    /// R that will ever apply: a linearizable read of the range's current state reads
    /// there. R comes from the range leader's next oracle fetch, which its writes share
    /// (one request to the leader instead of one to the oracle and a barrier), and the
    /// reads of the range on this member share their requests (`coalesce`). The
    /// request carries no word of this member's range term: the word would be read
    /// before the leader's fetch, and a leader elected in between, unknown to the old
    /// one, could commit a write below R the old one never had (docs/PERFORMANCE.md, "A
    /// forwarded read confirms its leader"; taking R from the oracle first and then a
    /// barrier with the word was measured no faster).
    pub async fn fresh_read_point(
        &self,
        group: GroupId,
    ) -> Result<ostrakon_storage::mvcc::Revision, NodeError> {
        let mut applied = self.group(group)?.applied.clone();
        let node = self.clone();
        let point = move || {
            let node = node.clone();
            async move {
                match node.fresh_read_point_local(group).await {
                    Err(NodeError::NotLeader(leader)) if leader != NodeId::NONE => {
                        node.inner.transport.fresh_read_point(leader, group).await
                    }
                    Err(NodeError::NotLeader(_)) => Err(NodeError::NoLeader),
                    other => other,
                }
            }
        };
        let wait = async {
            let (index, revision) = self.inner.fresh_read_points.join(group, point).await?;
            // The replica gone meanwhile (merged into its left neighbour): routed again.
            applied
                .wait_for(|applied| *applied >= index)
                .await
                .map_err(|_| NodeError::UnknownGroup)?;
            let revision = i64::try_from(revision).expect("timestamps stay below 2^63");
            Ok(ostrakon_storage::mvcc::Revision(revision))
        };
        match tokio::time::timeout(self.inner.request_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// A fresh read point from this node's replica of `group`: R and the index to wait
    /// for, or `NotLeader` unless it leads the range. It takes no member's word: R
    /// comes from a fetch after the request arrived (`fresh_read_point`).
    pub async fn fresh_read_point_local(
        &self,
        group: GroupId,
    ) -> Result<(LogIndex, u64), NodeError> {
        self.group(group)?;
        let (respond, response) = oneshot::channel();
        self.send(Input::FreshReadPoint { group, respond })?;
        match tokio::time::timeout(self.inner.request_timeout, response).await {
            Ok(answer) => answer.map_err(|_| NodeError::Stopped)?,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// A read barrier on this node's replica of `group`: the index to wait for, or
    /// `NotLeader` unless it leads the range. `word`: the asking member's, if another
    /// member asked.
    pub async fn read_barrier_local(
        &self,
        group: GroupId,
        word: Option<crate::member_word::MemberWord>,
    ) -> Result<LogIndex, NodeError> {
        self.group(group)?;
        let (respond, response) = oneshot::channel();
        self.send(Input::ReadBarrier {
            group,
            respond,
            word,
        })?;
        match tokio::time::timeout(self.inner.request_timeout, response).await {
            Ok(answer) => answer.map_err(|_| NodeError::Stopped)?,
            Err(_) => Err(NodeError::Timeout),
        }
    }

    /// Waits until this node's state machine reflects every write acknowledged before the
    /// call (raft's ReadIndex); then a read of the local store is linearizable. Reads of
    /// the range on this member share read indexes: any asked after the read began will
    /// do (`coalesce`), so a batch of reads costs one event-loop input and, on a
    /// follower, one ReadIndex message to the leader and its answer.
    pub async fn linearizable_read_point(&self, group: GroupId) -> Result<(), NodeError> {
        let applied = self.group(group)?.applied.clone();
        let mut span = spans::child(spans::current(), "raft.read_index", SpanKind::Internal);
        let node = self.clone();
        let read_index = move || {
            let node = node.clone();
            async move {
                // A ReadIndex message lost on its way to the leader (a connection
                // dropped) is never answered, and the reads of the range on this member
                // wait for this one: asked again every `READ_INDEX_RETRY`, taking the
                // first answer to any of the asks (each was asked after the batch's
                // reads began), as etcd's read loop sends its request again and takes
                // any answer. A slow answer is still taken.
                use futures_util::StreamExt as _;
                let mut answers = futures_util::stream::FuturesUnordered::new();
                loop {
                    let (respond, response) = oneshot::channel();
                    match node.send(Input::ReadIndex { group, respond }) {
                        Ok(()) => answers.push(response),
                        Err(error) if answers.is_empty() => return Err(error),
                        // Waits on for the asks already made.
                        Err(_) => {}
                    }
                    if let Ok(answer) = tokio::time::timeout(READ_INDEX_RETRY, answers.next()).await
                    {
                        let answer = answer.expect("at least one ask is waiting");
                        return answer.map_err(|_| NodeError::Stopped)?;
                    }
                }
            }
        };
        let wait = || async {
            let index = self
                .inner
                .read_indexes
                .join(group, read_index.clone())
                .await?;
            applied
                .clone()
                .wait_for(|applied| *applied >= index)
                .await
                .map_err(|_| NodeError::Stopped)?;
            Ok(())
        };
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        let leadership_moved = |error: &NodeError| {
            matches!(
                error,
                NodeError::NoLeader | NodeError::LeaderChanged | NodeError::Dropped
            )
        };
        let result = self
            .while_leadership_moves(deadline, leadership_moved, wait)
            .await;
        if let (Some(span), Err(error)) = (&mut span, &result) {
            span.set_error(error);
        }
        result
    }

    /// Runs `attempt` (within `deadline`) again while it fails because the group's
    /// leadership is moving and `retry` says trying again is safe: for a write, no leader
    /// known or the request dropped (refused during a leadership transfer, or its log
    /// index taken by another leader's entry: it never applies, so trying again cannot
    /// apply it twice); for a read, any leader change. Leaderships move on purpose
    /// (leaders spread over the nodes, `MoveLeader`), and clients should not see that;
    /// after two election timeouts without a leader the error is the client's, as before.
    async fn while_leadership_moves<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        retry: fn(&NodeError) -> bool,
        mut attempt: F,
    ) -> Result<T, NodeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let settle_by = (tokio::time::Instant::now() + self.inner.leader_wait).min(deadline);
        loop {
            let result = match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(NodeError::Timeout),
            };
            match result {
                Err(error) if retry(&error) && tokio::time::Instant::now() < settle_by => {
                    tokio::time::sleep(ROUTE_RETRY_PAUSE * 2).await;
                }
                other => return other,
            }
        }
    }

    /// This member's name and advertised client URLs.
    pub fn self_description(&self) -> (String, Vec<String>) {
        (self.inner.name.clone(), self.inner.client_urls.clone())
    }

    pub(crate) fn inputs(&self) -> InputSender {
        self.inner.inputs.clone()
    }

    /// Asks the event loop to stop (waiting for room in its queue, which it drains).
    pub fn shutdown(&self) {
        let _ = self.inner.inputs.send(Input::Shutdown);
    }

    fn send(&self, input: Input) -> Result<(), NodeError> {
        offer(&self.inner.inputs, input)
    }
}

/// Queues `input` for the event loop unless its queue is full: then the request is
/// refused at once with etcd's "too many requests" rather than let requests pile up
/// without bound.
fn offer(inputs: &InputSender, input: Input) -> Result<(), NodeError> {
    inputs.try_send(input).map_err(|error| match error {
        flume::TrySendError::Full(_) => {
            crate::metrics::metrics().inputs_refused.inc();
            NodeError::Overloaded
        }
        flume::TrySendError::Disconnected(_) => NodeError::Stopped,
    })
}

/// How often a member checks that the registry holds its name and client URLs, until it
/// does.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// Publishes this member's name and client URLs in the member registry through raft (as
/// etcd's members publish their attributes), so every member lists them, even while this
/// one is down. Ends once the registry holds them, or when the node stops.
pub(crate) async fn publish_attributes(handle: NodeHandle, group: GroupId) {
    let (name, client_urls) = handle.self_description();
    loop {
        tokio::time::sleep(PUBLISH_INTERVAL).await;
        let Ok(store) = handle.store(group) else {
            return;
        };
        let Some(record) = store.members().into_iter().find(|m| m.id == handle.id().0) else {
            // Not registered yet (a joining member before its first snapshot).
            continue;
        };
        if record.name == name && record.client_urls == client_urls {
            return;
        }
        let attributes = write_request::Request::MemberAttributes(MemberAttributes {
            id: handle.id().0,
            name: name.clone(),
            client_urls: client_urls.clone(),
        });
        match handle.write(group, attributes).await {
            Ok(_) => tracing::info!(%name, ?client_urls, "published this member's attributes"),
            Err(NodeError::Stopped) => return,
            Err(error) => tracing::debug!(%error, "publishing attributes; will retry"),
        }
    }
}

/// Counts a write from its start until it is answered or abandoned (the guard is dropped
/// either way): etcd_server_proposals_pending.
struct PendingProposal;

impl PendingProposal {
    fn new() -> PendingProposal {
        crate::metrics::metrics().proposals_pending.add(1);
        PendingProposal
    }
}

impl Drop for PendingProposal {
    fn drop(&mut self) {
        crate::metrics::metrics().proposals_pending.add(-1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop's queue is bounded: a request beyond it is refused with "too many
    /// requests" (and counted), not queued; once the loop is gone, requests are told so.
    #[test]
    fn a_full_input_queue_refuses_requests_at_once() {
        let (inputs, queue) = flume::bounded(2);
        let status = || {
            let (respond, _) = oneshot::channel();
            Input::RaftStatus {
                group: crate::DEFAULT_GROUP,
                respond,
            }
        };
        let refused_before = crate::metrics::metrics().inputs_refused.get();
        assert!(offer(&inputs, status()).is_ok());
        assert!(offer(&inputs, status()).is_ok());
        assert!(matches!(
            offer(&inputs, status()),
            Err(NodeError::Overloaded)
        ));
        assert!(crate::metrics::metrics().inputs_refused.get() > refused_before);
        assert_eq!(queue.len(), 2, "the refused request was not queued");
        // The loop drains one: there is room again.
        drop(queue.try_recv().unwrap());
        assert!(offer(&inputs, status()).is_ok());
        drop(queue);
        assert!(matches!(offer(&inputs, status()), Err(NodeError::Stopped)));
    }
}
