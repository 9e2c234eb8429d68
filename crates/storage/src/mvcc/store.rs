//! Storage of versions in fjall: consistent read views and atomic write transactions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use ostrakon_proto::etcdserverpb::{
    alarm_request, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
};
use ostrakon_proto::mvccpb::KeyValue;
use ostrakon_proto::peer as pb;
use ostrakon_raft::{ConfState, GroupId, LogIndex, NodeId, Term};
use prost::Message as _;

use super::auth::AUTH_KEY_PREFIX;
use super::auth::{AuthError, AuthState};
use super::compactor::CompactionQueue;
use super::events::{delete_event, put_event, EventSink, RevisionEvents};
use super::keys::{key_prefix, split_versioned_key, versioned_key};
use super::latest::{KeyMeta, LatestIndex};
use super::local::LocalState;
use super::members::{MemberChange, MemberRegistry, MEMBER_KEY_PREFIX};
use super::span::KeySpan;
use super::txn_tables::{self, LocalChange, TxnOutcomes};
use super::value::StoredVersion;
use super::{MvccError, Revision, INITIAL_REVISION};
use crate::fatal::engine;
use ostrakon_ranges::txn::LockTable;

mod gate_apply;
mod merge_apply;
mod txn_apply;

pub use gate_apply::{checked_auth, WriteRules, CHECKED_WHILE_AUTH_OFF};
pub use merge_apply::FreezeMark;

/// The partition of every range's versions, keyed by user key then revision.
pub const DATA_PARTITION: &str = "kv";
/// The applied index, its term and the store's revision, in one record (24 bytes, big
/// endian): written with every applied entry, so one insert rather than three.
pub(super) const META_APPLIED_AT: &[u8] = b"applied_at";
/// Each in a record of its own, as stores written before `META_APPLIED_AT` hold them
/// (read when it is absent, removed once it is written).
pub(super) const LEGACY_APPLIED_INDEX: &[u8] = b"applied_index";
pub(super) const LEGACY_APPLIED_TERM: &[u8] = b"applied_term";
pub(super) const LEGACY_REVISION: &[u8] = b"revision";
const META_COMPACT_REVISION: &[u8] = b"compact_revision";
/// The compacted revision of a store never compacted (etcd's initial `compactMainRev`).
pub const NEVER_COMPACTED: Revision = Revision(-1);
/// The revision up to which compaction's garbage has been removed from disk (absent in
/// stores written before compaction was split in two: they compacted at apply).
const META_COMPACTED_PHYSICALLY: &[u8] = b"compacted_physically";
const META_CONF_STATE: &[u8] = b"conf_state";
/// The range's span, once a split made or cut it (a store without it holds the span it
/// was opened with).
const META_SPAN: &[u8] = b"span";
/// The next range id the meta range hands out.
const META_NEXT_RANGE_ID: &[u8] = b"next_range_id";
/// The first id a split gives a range (0: the meta range; 1: the first data range).
pub const FIRST_SPLIT_RANGE_ID: u64 = 2;
/// Present once the range takes its revisions from the oracle.
const META_ORACLE_REVISIONS: &[u8] = b"oracle_revisions";
/// The timestamp oracle's persisted bound (the meta range's store only).
const META_ORACLE_BOUND: &[u8] = b"oracle_bound";

/// The raft position the state machine reflects.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AppliedState {
    /// The last applied log index.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
    /// The membership as of `index`.
    pub conf_state: ConfState,
}

/// What `META_APPLIED_AT` holds.
struct AppliedAt {
    index: LogIndex,
    term: Term,
    revision: Revision,
}

impl AppliedAt {
    fn encode(&self) -> [u8; 24] {
        let mut bytes = [0; 24];
        bytes[..8].copy_from_slice(&self.index.0.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.term.0.to_be_bytes());
        bytes[16..].copy_from_slice(&(self.revision.0 as u64).to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> AppliedAt {
        assert_eq!(bytes.len(), 24, "a stored applied position is 24 bytes");
        let field = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        AppliedAt {
            index: LogIndex(field(0)),
            term: Term(field(8)),
            revision: Revision(field(16) as i64),
        }
    }
}

/// Told whenever a store's span changes, or it freezes or thaws for a merge (the node's
/// directory of ranges listens).
pub trait SpanListener: Send + Sync {
    /// `group`'s span changed: read it again.
    fn span_changed(&self, group: GroupId);
    /// `group` froze for a merge (`frozen`), or thawed.
    fn frozen_changed(&self, group: GroupId, frozen: bool);
}

/// The state machine of one group. Reads may run on any thread, concurrently with the
/// single writer (the node's event loop).
pub struct MvccStore {
    keyspace: Keyspace,
    group: GroupId,
    /// The user keys this range holds (see `span`); changed by a split under the
    /// `latest` lock, so a reader takes the two together.
    span: Mutex<Arc<KeySpan>>,
    /// The data partition every range of the node shares, keyed by user key; this
    /// store reads and writes only its span of it.
    kv: PartitionHandle,
    /// Updated after each write's batch commits, so a reader that copies it and then
    /// takes a `kv` snapshot finds every version it points at.
    latest: Mutex<LatestIndex>,
    /// This range's local state: applied position, revisions, membership, leases and
    /// the cluster-wide tables (see `local`).
    local: LocalState,
    /// Invariant: every version at or below it is committed in `kv`.
    revision: AtomicI64,
    /// Raised when a compaction applies (before its batch commits), so no reader trusts
    /// data that is about to go (see `ReadView`).
    compact_revision: AtomicI64,
    /// The physical compaction's progress (`compaction` module); its changes are
    /// signalled on `physical_compaction_changed`.
    physical_compaction: Mutex<PhysicalCompaction>,
    physical_compaction_changed: Condvar,
    /// The node's compactor once attached, with this store's own handle for its queue.
    compactor: OnceLock<(Weak<CompactionQueue>, Weak<MvccStore>)>,
    /// Whether this store is on the compactor's queue.
    compaction_queued: AtomicBool,
    applied_index: AtomicU64,
    applied: Mutex<AppliedState>,
    /// Every lease, as persisted under `LEASE_NAME_PREFIX` in `local`.
    leases: Mutex<BTreeMap<i64, LeaseRecord>>,
    /// Where committed revisions' events go, once the node has set it.
    events: OnceLock<Arc<dyn EventSink>>,
    /// Told of every change of `span`.
    span_listener: OnceLock<Arc<dyn SpanListener>>,
    /// Every member's id, name and URLs (persisted in `local`).
    members: Mutex<MemberRegistry>,
    /// Raised on every change of `members`, so the runtime notices cheaply.
    members_version: AtomicU64,
    /// Raised alarms: (member id, alarm type), persisted in `local`.
    alarms: Mutex<BTreeSet<(u64, i32)>>,
    /// The auth store (persisted in `local`), replaced whole on each change so readers
    /// hold a consistent copy.
    auth: Mutex<Arc<AuthState>>,
    /// Tokens handed out by Authenticate: token to (user, expiry). Every member records
    /// them when the Authenticate entry applies; they are not persisted (as etcd's simple
    /// tokens): after a restart, clients authenticate again.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    /// The timestamp oracle's bound (persisted in `local`): 0 outside the meta range.
    oracle_bound: AtomicU64,
    /// Whether writes take their revisions from the oracle (persisted in `local`; set by
    /// a split on both its ranges, and carried by snapshots).
    oracle_revisions: std::sync::atomic::AtomicBool,
    /// The locks of transactions across ranges prepared here (persisted in `local`);
    /// replaced whole under the `latest` lock, so a view holds the locks that go with
    /// its data.
    txn_locks: Mutex<Arc<LockTable>>,
    /// The outcomes of transactions across ranges whose primary this range is
    /// (persisted in `local`).
    txn_outcomes: Mutex<TxnOutcomes>,
    /// Where the range froze for a merge (persisted in `local`): it then applies nothing
    /// but its thaw, and serves no read.
    frozen: Mutex<Option<FreezeMark>>,
    /// The first data range's write rules as this range last took them in (persisted
    /// in `local`; the default one in the first data range itself): `gate_apply`.
    write_gate: Mutex<pb::WriteGate>,
    /// The applied index of the last change to this range's own write rules (persisted
    /// in `local`; what the first data range's gates carry as their source).
    rules_changed_at: AtomicU64,
}

/// What the compactor thread has to do. Invariant: `done <= target`, and `target` is the
/// compacted revision (so every version the compactor removes is invisible to reads).
#[derive(Debug)]
struct PhysicalCompaction {
    target: Revision,
    done: Revision,
    /// Raised by every install of a snapshot: a pass that started before one is
    /// abandoned (its classification was of data that is gone).
    installs: u64,
}

/// How long an auth token lives without use (etcd's simple-token TTL).
pub const AUTH_TOKEN_TTL: Duration = Duration::from_secs(300);

impl MvccStore {
    /// Opens (creating if needed) the state machine of `group` in `keyspace`. A new
    /// store holds the user keys of `span`; one that recorded its own span (a split
    /// made it or cut it) keeps that.
    pub fn open(keyspace: &Keyspace, group: GroupId, span: KeySpan) -> MvccStore {
        MvccStore::open_indexed(keyspace, group, span, None)
    }

    /// `open`, with the latest-version index already built (by a split) or not.
    fn open_indexed(
        keyspace: &Keyspace,
        group: GroupId,
        span: KeySpan,
        index: Option<LatestIndex>,
    ) -> MvccStore {
        let kv = engine(
            "opening a partition",
            keyspace.open_partition(DATA_PARTITION, PartitionCreateOptions::default()),
        );
        let local = LocalState::open(keyspace, group);
        let leases = local
            .scan(LEASE_NAME_PREFIX)
            .into_iter()
            .map(|(name, value)| (lease_id_of(&name), LeaseRecord::decode(&value)))
            .collect();
        let read_u64 = |name: &[u8]| {
            local
                .get(name)
                .map(|v| u64::from_be_bytes(v.as_ref().try_into().expect("8-byte meta")))
        };
        let oracle_bound = read_u64(META_ORACLE_BOUND).unwrap_or(0);
        let oracle_revisions = local.get(META_ORACLE_REVISIONS).is_some();
        let stored_applied = local.get(META_APPLIED_AT).map(|v| AppliedAt::decode(&v));
        let revision = match &stored_applied {
            Some(at) => at.revision.0,
            None => read_u64(LEGACY_REVISION).map_or(INITIAL_REVISION.0, |v| v as i64),
        };
        // Never compacted is -1, as in etcd: a fresh store may be compacted at revision 0
        // once (etcd answers "compacted revision 0"), and HashKV reports -1 until then.
        let compact_revision =
            read_u64(META_COMPACT_REVISION).map_or(NEVER_COMPACTED.0, |v| v as i64);
        let compacted_physically =
            read_u64(META_COMPACTED_PHYSICALLY).map_or(compact_revision, |v| v as i64);
        let conf_state = local
            .get(META_CONF_STATE)
            .map(|v| {
                let wire = pb::ConfState::decode(v.as_ref()).expect("stored conf state decodes");
                ConfState::try_from(&wire).expect("stored conf state is valid")
            })
            .unwrap_or_default();
        let stored_members = local.scan(MEMBER_KEY_PREFIX);
        let members = MemberRegistry::from_stored(
            stored_members.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
        );
        let alarms = local
            .scan(ALARM_KEY_PREFIX)
            .iter()
            .map(|(name, _)| alarm_of_key(name))
            .collect();
        let stored_auth = local.scan(AUTH_KEY_PREFIX);
        let auth =
            AuthState::from_stored(stored_auth.iter().map(|(k, v)| (k.as_ref(), v.as_ref())));
        let applied = match &stored_applied {
            Some(at) => AppliedState {
                index: at.index,
                term: at.term,
                conf_state,
            },
            None => AppliedState {
                index: LogIndex(read_u64(LEGACY_APPLIED_INDEX).unwrap_or(0)),
                term: Term(read_u64(LEGACY_APPLIED_TERM).unwrap_or(0)),
                conf_state,
            },
        };
        if stored_applied.is_none() && local.get(LEGACY_APPLIED_INDEX).is_some() {
            // Written by an earlier version: its three records become one.
            let mut batch = keyspace.batch();
            let at = AppliedAt {
                index: applied.index,
                term: applied.term,
                revision: Revision(revision),
            };
            local.insert(&mut batch, META_APPLIED_AT, at.encode());
            for legacy in [LEGACY_APPLIED_INDEX, LEGACY_APPLIED_TERM, LEGACY_REVISION] {
                local.remove(&mut batch, legacy);
            }
            engine("rewriting the applied position", batch.commit());
        }
        let span = local
            .get(META_SPAN)
            .map_or(span, |stored| KeySpan::decode(&stored));
        let (txn_locks, txn_outcomes) = txn_tables::load(&local);
        let frozen = MvccStore::load_freeze_mark(&local);
        let write_gate = local
            .get(gate_apply::META_WRITE_GATE)
            .map(|stored| gate_apply::decode_gate(&stored))
            .unwrap_or_default();
        let rules_changed_at = read_u64(gate_apply::META_RULES_CHANGED_AT)
            .unwrap_or_else(|| gate_apply::unrecorded_rules_change(&auth, &alarms));
        let latest = index.unwrap_or_else(|| {
            LatestIndex::build(
                Revision(revision),
                kv.snapshot()
                    .range(span.storage_bounds())
                    .map(|item| engine("reading the store to index it", item)),
            )
        });
        assert_eq!(
            latest.revision(),
            Revision(revision),
            "an index of another revision"
        );
        MvccStore {
            keyspace: keyspace.clone(),
            group,
            span: Mutex::new(Arc::new(span)),
            kv,
            latest: Mutex::new(latest),
            local,
            revision: AtomicI64::new(revision),
            compact_revision: AtomicI64::new(compact_revision),
            physical_compaction: Mutex::new(PhysicalCompaction {
                target: Revision(compact_revision),
                done: Revision(compacted_physically.min(compact_revision)),
                installs: 0,
            }),
            physical_compaction_changed: Condvar::new(),
            compactor: OnceLock::new(),
            compaction_queued: AtomicBool::new(false),
            applied_index: AtomicU64::new(applied.index.0),
            applied: Mutex::new(applied),
            leases: Mutex::new(leases),
            events: OnceLock::new(),
            span_listener: OnceLock::new(),
            members: Mutex::new(members),
            members_version: AtomicU64::new(1),
            alarms: Mutex::new(alarms),
            auth: Mutex::new(Arc::new(auth)),
            tokens: Mutex::new(HashMap::new()),
            oracle_bound: AtomicU64::new(oracle_bound),
            oracle_revisions: oracle_revisions.into(),
            txn_locks: Mutex::new(Arc::new(txn_locks)),
            txn_outcomes: Mutex::new(txn_outcomes),
            frozen: Mutex::new(frozen),
            write_gate: Mutex::new(write_gate),
            rules_changed_at: AtomicU64::new(rules_changed_at),
        }
    }

    /// The timestamp oracle's persisted bound as of the last applied entry (0 before the
    /// first, and outside the meta range).
    pub fn oracle_bound(&self) -> u64 {
        self.oracle_bound.load(Ordering::SeqCst)
    }

    /// Applies a raise of the oracle's bound. A bound never falls: a proposal overtaken
    /// by a higher one leaves the higher. Returns the bound after it.
    pub fn apply_oracle_bound(&self, index: LogIndex, term: Term, proposed: u64) -> u64 {
        let bound = self.oracle_bound().max(proposed);
        let mut batch = self.keyspace.batch();
        self.local
            .insert(&mut batch, META_ORACLE_BOUND, bound.to_be_bytes());
        self.put_applied(&mut batch, index, term);
        engine("committing the oracle's bound", batch.commit());
        self.oracle_bound.store(bound, Ordering::SeqCst);
        self.set_applied(index, term);
        bound
    }

    /// Hands out the next range id (the meta range's store): ids 0 and 1 are the meta
    /// range and the first data range.
    pub fn apply_allocate_range_id(&self, index: LogIndex, term: Term) -> u64 {
        let id = self.next_range_id();
        let mut batch = self.keyspace.batch();
        self.local
            .insert(&mut batch, META_NEXT_RANGE_ID, (id + 1).to_be_bytes());
        self.put_applied(&mut batch, index, term);
        engine("committing a range id", batch.commit());
        self.set_applied(index, term);
        id
    }

    /// Readies a restored keyspace's new meta range, before its bootstrap: it hands out
    /// range ids from `next_range_id` (above the restored ranges') and timestamps from
    /// `oracle_bound` (above the restored revision, whatever this machine's clock says).
    pub fn seed_restored_meta(&self, next_range_id: u64, oracle_bound: u64) {
        assert!(
            self.applied_index() == LogIndex(0) && self.local.get(META_NEXT_RANGE_ID).is_none(),
            "only a new meta range is seeded"
        );
        let mut batch = self.keyspace.batch();
        self.local
            .insert(&mut batch, META_NEXT_RANGE_ID, next_range_id.to_be_bytes());
        self.local
            .insert(&mut batch, META_ORACLE_BOUND, oracle_bound.to_be_bytes());
        engine("seeding a restored meta range", batch.commit());
        self.oracle_bound.store(oracle_bound, Ordering::SeqCst);
    }

    /// The range id the meta range hands out next.
    pub fn next_range_id(&self) -> u64 {
        self.local
            .get(META_NEXT_RANGE_ID)
            .map_or(FIRST_SPLIT_RANGE_ID, |v| {
                u64::from_be_bytes(v.as_ref().try_into().expect("an 8-byte range id"))
            })
    }

    /// The groups whose state the keyspace holds (every range this node has a replica
    /// of, the meta range included), in id order.
    pub fn stored_groups(keyspace: &Keyspace) -> Vec<GroupId> {
        LocalState::stored_groups(keyspace)
    }

    /// The auth store as of the last applied entry.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.lock().unwrap().clone()
    }

    /// The user a token stands for, if it is known and unexpired (its life is extended).
    pub fn token_user(&self, token: &str) -> Option<String> {
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap();
        let (user, expires) = tokens.get_mut(token)?;
        if *expires < now {
            tokens.remove(token);
            return None;
        }
        *expires = now + AUTH_TOKEN_TTL;
        Some(user.clone())
    }

    /// Applies an auth change; returns the auth revision after it and, for Authenticate,
    /// the token.
    pub fn apply_auth(
        &self,
        index: LogIndex,
        term: Term,
        write: &pb::AuthWrite,
    ) -> Result<(u64, String), AuthError> {
        let mut current = self.auth.lock().unwrap();
        let mut next = (**current).clone();
        let changes = next.apply(write)?;
        let mut batch = self.keyspace.batch();
        for (key, value) in changes {
            match value {
                Some(value) => self.local.insert(&mut batch, key, value),
                None => self.local.remove(&mut batch, key),
            }
        }
        // While auth is off no revision is checked: only turning it on or off, or a
        // change while it is on, changes what a write must pass (so setting up users and
        // roles before enabling auth carries nothing into the other ranges).
        let rules = |auth: &AuthState| (auth.enabled(), auth.enabled().then(|| auth.revision()));
        let rules_change = rules(&next) != rules(&current);
        if rules_change {
            self.note_rules_change(&mut batch, index);
        }
        self.put_applied(&mut batch, index, term);
        engine("committing an auth change", batch.commit());
        if rules_change {
            self.rules_changed_at.store(index.0, Ordering::SeqCst);
        }
        let mut token = String::new();
        {
            let now = Instant::now();
            let mut tokens = self.tokens.lock().unwrap();
            tokens.retain(|_, (_, expires)| *expires >= now);
            match &write.op {
                // etcd's simple token: the proposer's random prefix and the entry's index,
                // so every member assigns the same token.
                Some(pb::auth_write::Op::Authenticate(authenticate)) => {
                    token = format!("{}.{}", authenticate.token, index.0);
                    tokens.insert(
                        token.clone(),
                        (authenticate.name.clone(), now + AUTH_TOKEN_TTL),
                    );
                }
                Some(pb::auth_write::Op::UserDelete(pb_user)) => {
                    tokens.retain(|_, (user, _)| *user != pb_user.name);
                }
                Some(pb::auth_write::Op::UserChangePassword(pb_user)) => {
                    tokens.retain(|_, (user, _)| *user != pb_user.name);
                }
                _ => {}
            }
            if !next.enabled() {
                tokens.clear();
            }
        }
        let revision = next.revision();
        *current = Arc::new(next);
        drop(current);
        self.set_applied(index, term);
        Ok((revision, token))
    }

    /// Rewrites the store's files without dead data (superseded and compacted versions,
    /// tombstones), while reads and writes go on.
    pub fn defragment(&self) -> Result<(), fjall::Error> {
        for partition in [&self.kv, self.local.partition()] {
            // Memtable data first, so that what compaction removed is dropped too.
            partition.rotate_memtable_and_wait()?;
            partition.major_compact()?;
        }
        Ok(())
    }

    /// Every raised alarm.
    pub fn alarms(&self) -> Vec<AlarmMember> {
        self.alarms
            .lock()
            .unwrap()
            .iter()
            .map(|(member_id, alarm)| AlarmMember {
                member_id: *member_id,
                alarm: *alarm,
            })
            .collect()
    }

    /// Whether an alarm of this type is raised by any member.
    pub fn has_alarm(&self, alarm: AlarmType) -> bool {
        self.alarms
            .lock()
            .unwrap()
            .iter()
            .any(|(_, raised)| *raised == alarm as i32)
    }

    /// Applies a replicated alarm request (raise or clear), as etcd's alarm store does.
    pub fn apply_alarm(
        &self,
        index: LogIndex,
        term: Term,
        request: &AlarmRequest,
    ) -> AlarmResponse {
        let member = AlarmMember {
            member_id: request.member_id,
            alarm: request.alarm,
        };
        let key = alarm_key(request.member_id, request.alarm);
        let mut batch = self.keyspace.batch();
        let mut alarms = self.alarms.lock().unwrap();
        let nospace = |alarms: &BTreeSet<(u64, i32)>| {
            alarms
                .iter()
                .any(|(_, raised)| *raised == AlarmType::Nospace as i32)
        };
        let nospace_before = nospace(&alarms);
        let entry = (request.member_id, request.alarm);
        let mut answered = Vec::new();
        match alarm_request::AlarmAction::try_from(request.action) {
            Ok(alarm_request::AlarmAction::Activate) if request.alarm != AlarmType::None as i32 => {
                alarms.insert(entry);
                self.local.insert(&mut batch, key, []);
                answered.push(member);
            }
            Ok(alarm_request::AlarmAction::Deactivate) if alarms.remove(&entry) => {
                self.local.remove(&mut batch, key);
                answered.push(member);
            }
            _ => {}
        }
        let rules_change = nospace(&alarms) != nospace_before;
        if rules_change {
            self.note_rules_change(&mut batch, index);
        }
        self.put_applied(&mut batch, index, term);
        engine("committing an alarm", batch.commit());
        drop(alarms);
        if rules_change {
            self.rules_changed_at.store(index.0, Ordering::SeqCst);
        }
        self.set_applied(index, term);
        AlarmResponse {
            header: None,
            alarms: answered,
        }
    }

    /// Every registered member, in id order.
    pub fn members(&self) -> Vec<pb::MemberRecord> {
        self.members.lock().unwrap().records()
    }

    /// Whether `id` was a member and has been removed (its id never returns).
    pub fn is_removed_member(&self, id: NodeId) -> bool {
        self.members.lock().unwrap().is_removed(id)
    }

    /// Whether MemberRemove began to take the member out of the cluster (or did).
    pub fn is_leaving_member(&self, id: NodeId) -> bool {
        self.members.lock().unwrap().is_leaving(id)
    }

    /// Changes whenever the registry does.
    pub fn members_version(&self) -> u64 {
        self.members_version.load(Ordering::SeqCst)
    }

    /// Applies a registry change at `index`, durably with the applied position.
    pub fn apply_member_change(&self, index: LogIndex, term: Term, change: &MemberChange) {
        let mut batch = self.keyspace.batch();
        let mut members = self.members.lock().unwrap();
        self.put_member_change(&mut batch, &mut members, change);
        self.put_applied(&mut batch, index, term);
        engine("committing a member change", batch.commit());
        drop(members);
        self.members_version.fetch_add(1, Ordering::SeqCst);
        self.set_applied(index, term);
    }

    fn put_member_change(
        &self,
        batch: &mut fjall::Batch,
        members: &mut MemberRegistry,
        change: &MemberChange,
    ) {
        for (key, value) in members.apply(change) {
            match value {
                Some(value) => self.local.insert(batch, key, value),
                None => self.local.remove(batch, key),
            }
        }
    }

    /// A lease's record.
    pub fn lease(&self, id: i64) -> Option<LeaseRecord> {
        self.leases.lock().unwrap().get(&id).copied()
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Vec<(i64, LeaseRecord)> {
        self.leases
            .lock()
            .unwrap()
            .iter()
            .map(|(id, record)| (*id, *record))
            .collect()
    }

    /// Sets where the events of each committed revision go (once).
    pub fn set_event_sink(&self, sink: Arc<dyn EventSink>) {
        assert!(
            self.events.set(sink).is_ok(),
            "the store's event sink is set twice"
        );
    }

    /// The group this store belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The user keys this store holds.
    pub fn span(&self) -> Arc<KeySpan> {
        self.span.lock().unwrap().clone()
    }

    /// Changes the user keys this store holds, and tells the span listener.
    fn set_span(&self, span: KeySpan) {
        *self.span.lock().unwrap() = Arc::new(span);
        if let Some(listener) = self.span_listener.get() {
            listener.span_changed(self.group);
        }
    }

    /// Sets who is told of every change of the span and of every freeze and thaw (the
    /// first listener set stays: a store belongs to one node). A store opened frozen
    /// tells it at once.
    pub fn set_span_listener(&self, listener: Arc<dyn SpanListener>) {
        if self.span_listener.set(listener.clone()).is_ok() && self.frozen().is_some() {
            listener.frozen_changed(self.group, true);
        }
    }

    /// Sets the freeze mark, and tells the span listener.
    fn set_frozen(&self, mark: Option<FreezeMark>) {
        *self.frozen.lock().unwrap() = mark;
        if let Some(listener) = self.span_listener.get() {
            listener.frozen_changed(self.group, mark.is_some());
        }
    }

    /// Splits the range at `key`, applying the split's entry at (`index`, `term`): this
    /// store keeps the keys before `key`, and the store returned, of `right_group`,
    /// holds the rest, at the same revision and compacted revision, with the applied
    /// position `right_applied` (its raft group's initial state). No data moves: both
    /// spans' versions stay where they are in the shared data partition. The two
    /// ranges' new state commits in one batch, so a crash leaves both or neither.
    /// Members, alarms, auth and leases stay with this store.
    ///
    /// If the right range has state here already (its own leader's snapshot reached this
    /// replica before the split applied), that state is newer than the split's: only this
    /// range is cut, and None is returned.
    pub fn split(
        &self,
        key: &[u8],
        index: LogIndex,
        term: Term,
        right_group: GroupId,
        right_applied: AppliedState,
        by_hand: bool,
    ) -> Option<MvccStore> {
        assert!(
            self.txn_locks.lock().unwrap().is_empty(),
            "a range split while a transaction holds a lock in it"
        );
        let (left_span, right_span) = self.span().split_at(key);
        let right_local = LocalState::open(&self.keyspace, right_group);
        // The right range's own snapshot went in here first: it wrote its span, as every
        // install does. An empty replica waiting for that snapshot (made for a message of
        // the range's group) has none, though it may have written its applied position
        // (0) at a clean stop; the split founds it (found by review: taken for an install
        // after a restart, it left the range to a snapshot the split made needless).
        let right_exists = right_local.get(META_SPAN).is_some();
        if right_exists {
            let mut batch = self.keyspace.batch();
            self.local.insert(&mut batch, META_SPAN, left_span.encode());
            self.local.insert(&mut batch, META_ORACLE_REVISIONS, []);
            self.put_applied(&mut batch, index, term);
            let mut physical = self.physical_compaction.lock().unwrap();
            let mut latest = self.latest.lock().unwrap();
            engine("committing a split", batch.commit());
            drop(latest.split_off(key));
            self.set_span(left_span);
            physical.installs += 1;
            self.compaction_changed();
            self.oracle_revisions.store(true, Ordering::SeqCst);
            drop((latest, physical));
            self.set_applied(index, term);
            return None;
        }
        let revision = self.current_revision();
        let mut batch = self.keyspace.batch();
        self.local.insert(&mut batch, META_SPAN, left_span.encode());
        self.put_applied(&mut batch, index, term);
        right_local.insert(&mut batch, META_SPAN, right_span.encode());
        // From the split on, the two ranges' revisions must be comparable: both take them
        // from the oracle (its timestamps are far above any count of writes).
        self.local.insert(&mut batch, META_ORACLE_REVISIONS, []);
        right_local.insert(&mut batch, META_ORACLE_REVISIONS, []);
        if by_hand {
            right_local.insert(&mut batch, merge_apply::META_SPLIT_BY_HAND, []);
        }
        right_local.insert(
            &mut batch,
            gate_apply::META_WRITE_GATE,
            self.gate_for_split().encode_to_vec(),
        );

        let compacted = self.compact_revision();
        right_local.insert(
            &mut batch,
            META_COMPACT_REVISION,
            (compacted.0 as u64).to_be_bytes(),
        );
        let right_index = {
            // The compactor abandons a pass over the old span, and readers see the old
            // span with the old index or the new with the new.
            let mut physical = self.physical_compaction.lock().unwrap();
            right_local.insert(
                &mut batch,
                META_COMPACTED_PHYSICALLY,
                (physical.done.0 as u64).to_be_bytes(),
            );
            right_local.insert(
                &mut batch,
                META_APPLIED_AT,
                AppliedAt {
                    index: right_applied.index,
                    term: right_applied.term,
                    revision,
                }
                .encode(),
            );
            right_local.insert(
                &mut batch,
                META_CONF_STATE,
                pb::ConfState::from(&right_applied.conf_state).encode_to_vec(),
            );
            let mut latest = self.latest.lock().unwrap();
            engine("committing a split", batch.commit());
            let right_index = latest.split_off(key);
            self.set_span(left_span);
            physical.installs += 1;
            self.compaction_changed();
            self.oracle_revisions.store(true, Ordering::SeqCst);
            right_index
        };
        self.set_applied(index, term);
        Some(MvccStore::open_indexed(
            &self.keyspace,
            right_group,
            right_span,
            Some(right_index),
        ))
    }

    /// The revision of the last write transaction.
    pub fn current_revision(&self) -> Revision {
        Revision(self.revision.load(Ordering::SeqCst))
    }

    /// The compacted revision: reads below it fail with `Compacted`.
    pub fn compact_revision(&self) -> Revision {
        Revision(self.compact_revision.load(Ordering::SeqCst))
    }

    /// Bytes the state machine's storage takes on disk (shared by every group's store).
    pub fn disk_bytes(&self) -> u64 {
        // The partitions' files; the journal is left out: fjall sizes its files ahead of
        // use, so the keyspace's figure starts at tens of megabytes for an empty store.
        // Data still only in memtables (up to the write buffer) is not counted yet.
        [&self.kv, self.local.partition()]
            .iter()
            .map(|partition| partition.disk_space())
            .sum()
    }

    /// The last applied index (cheap; for waiting readers).
    pub fn applied_index(&self) -> LogIndex {
        LogIndex(self.applied_index.load(Ordering::SeqCst))
    }

    /// The raft position the state machine reflects.
    pub fn applied(&self) -> AppliedState {
        self.applied.lock().unwrap().clone()
    }

    /// Records that entries up to `index` are applied without changing data (an empty or
    /// refused entry). It is persisted with the next write; replaying such entries after a
    /// crash changes nothing.
    pub fn set_applied(&self, index: LogIndex, term: Term) {
        let mut applied = self.applied.lock().unwrap();
        assert!(
            index >= applied.index,
            "applied index goes back: {index} < {}",
            applied.index
        );
        applied.index = index;
        applied.term = term;
        self.applied_index.store(index.0, Ordering::SeqCst);
    }

    /// Applies a membership change entry: the conf state is stored with its index, and
    /// the registry forgets the members it no longer has (only those: a member being
    /// added is registered before its raft change is proposed).
    pub fn apply_conf_state(&self, index: LogIndex, term: Term, conf_state: ConfState) {
        let mut batch = self.keyspace.batch();
        self.local.insert(
            &mut batch,
            META_CONF_STATE,
            pb::ConfState::from(&conf_state).encode_to_vec(),
        );
        let previous = self.applied.lock().unwrap().conf_state.members();
        let gone: std::collections::BTreeSet<_> = previous
            .difference(&conf_state.members())
            .copied()
            .collect();
        let mut members = self.members.lock().unwrap();
        if !gone.is_empty() {
            self.put_member_change(&mut batch, &mut members, &MemberChange::Remove(gone));
        }
        self.put_applied(&mut batch, index, term);
        engine("committing a batch", batch.commit());
        drop(members);
        self.members_version.fetch_add(1, Ordering::SeqCst);
        self.applied.lock().unwrap().conf_state = conf_state;
        self.set_applied(index, term);
    }

    /// Makes everything written so far durable (before the raft log may forget it).
    pub fn persist(&self) {
        self.write_applied();
        engine(
            "persisting the state machine",
            self.keyspace.persist(PersistMode::SyncAll),
        );
    }

    /// Captures the current state for a snapshot file, to be written on another thread
    /// while writes go on. Must be called by the writer, between applies, so the applied
    /// position matches the data. The applied index is written down first (an empty entry
    /// moves it without a write), so once `sync` has run the store on disk is at or beyond
    /// the frozen position and the raft log before it may go.
    pub fn freeze(&self) -> FrozenState {
        let applied = self.write_applied();
        let outcomes = self.txn_outcomes.lock().unwrap();
        let (txn_locks, txn_outcomes) =
            txn_tables::records_of_tables(&self.txn_locks.lock().unwrap(), &outcomes);
        let txn_horizon = outcomes.horizon();
        drop(outcomes);
        let mut tables = pb::SnapshotTables {
            members: self.members.lock().unwrap().all_records(),
            alarms: self.alarms(),
            auth: Some(self.auth().tables()),
            oracle_bound: self.oracle_bound(),
            next_range_id: self
                .local
                .get(META_NEXT_RANGE_ID)
                .map_or(0, |_| self.next_range_id()),
            span: Some(self.span().to_record()),
            oracle_revisions: self.oracle_revisions(),
            txn_locks,
            txn_outcomes,
            txn_horizon,
            write_gate: Some(self.held_gate()),
            rules_changed_at: self.rules_changed_at.load(Ordering::SeqCst),
            ..Default::default()
        };
        self.merge_tables(&mut tables);
        FrozenState {
            revision: self.current_revision(),
            compact_revision: self.compact_revision(),
            applied,
            leases: self.leases(),
            tables,
            kv: self.kv.snapshot(),
            span: self.span(),
        }
    }

    /// Writes the applied position down, without syncing (an empty entry moves it
    /// without a write): once `sync` has run, the store on disk is at or beyond it, and
    /// the raft log up to it may go. Must be called by the writer, between applies.
    /// Returns the position written.
    pub fn write_applied(&self) -> AppliedState {
        let applied = self.applied();
        let mut batch = self.keyspace.batch();
        self.put_applied(&mut batch, applied.index, applied.term);
        engine("committing a batch", batch.commit());
        applied
    }

    /// Hands the engine's journal to the kernel (no fsync): what a kill -9 would keep.
    /// The keyspace is opened with its journal kept in its own buffer between persists,
    /// so the event loop calls this once per round that applied anything, rather than
    /// the engine writing once per batch. It also surfaces a failed journal write, which
    /// fjall 2's batch commit does not report (fjall-rs/fjall#304): the member exits as
    /// on any storage failure, before its raft log forgets entries a torn batch lost.
    pub fn flush_journal(&self) {
        engine(
            "writing the state machine's journal",
            self.keyspace.persist(PersistMode::Buffer),
        );
    }

    /// Makes every write committed so far durable, without touching the applied position
    /// (safe to call from any thread).
    pub fn sync(&self) {
        engine(
            "persisting the state machine",
            self.keyspace.persist(PersistMode::SyncAll),
        );
    }

    fn put_local_changes(
        &self,
        batch: &mut fjall::Batch,
        changes: impl IntoIterator<Item = LocalChange>,
    ) {
        for (name, value) in changes {
            match value {
                Some(value) => self.local.insert(batch, name, value),
                None => self.local.remove(batch, name),
            }
        }
    }

    /// Writes the applied position, the store's revision unchanged.
    fn put_applied(&self, batch: &mut fjall::Batch, index: LogIndex, term: Term) {
        self.put_applied_at(batch, index, term, self.current_revision());
    }

    /// Writes the applied position and the revision the batch brings the store to.
    fn put_applied_at(
        &self,
        batch: &mut fjall::Batch,
        index: LogIndex,
        term: Term,
        revision: Revision,
    ) {
        let at = AppliedAt {
            index,
            term,
            revision,
        };
        self.local.insert(batch, META_APPLIED_AT, at.encode());
    }

    /// The bytes of the live keys and values (what a split by size weighs), without
    /// taking a read view.
    pub fn live_bytes(&self) -> u64 {
        self.latest.lock().unwrap().live_bytes()
    }

    /// A consistent view for reads at any revision from the compacted one to the current.
    pub fn read_view(&self) -> ReadView {
        loop {
            // The index and then the versions, under the index's lock: a write updates the
            // index after its batch commits and an install swaps both under the lock, so
            // the snapshot holds every version the index points at. Only a compaction
            // beyond the index's revision could remove one (the compacted revision is
            // raised before a compaction commits): then start again.
            let (latest, span, kv, locks) = {
                let latest = self.latest.lock().unwrap();
                let locks = self.txn_locks.lock().unwrap().clone();
                // A range frozen for a merge serves no read: its keys are about to be
                // the left range's, which may take writes before this replica learns it.
                let span = if self.frozen().is_some() {
                    Arc::new(KeySpan::none())
                } else {
                    self.span()
                };
                (latest.clone(), span, self.kv.snapshot(), locks)
            };
            let compacted = self.compact_revision();
            if compacted <= latest.revision() {
                return ReadView {
                    kv,
                    span,
                    current: latest.revision(),
                    latest,
                    compacted,
                    locks,
                };
            }
        }
    }

    /// Starts the write transaction of the next revision.
    pub fn write_txn(&self) -> WriteTxn<'_> {
        let view = self.read_view();
        WriteTxn {
            store: self,
            revision: Revision(view.current.0 + 1),
            given_revision: Revision(0),
            view,
            changes: BTreeMap::new(),
            next_sub: 0,
            lease_changes: BTreeMap::new(),
            raises: false,
        }
    }

    /// The views of several ranges as one, holding the keys in `intervals` only (what
    /// a transaction across ranges reads: `ReadView::merged`), over a snapshot of the
    /// data taken now (every range of the node shares the data partition).
    pub fn merged_view(
        &self,
        views: Vec<ReadView>,
        intervals: &[super::KeyInterval<'_>],
    ) -> ReadView {
        ReadView::merged(views, self.kv.snapshot(), intervals)
    }

    /// A write transaction over `view` (the views of several ranges merged, `ReadView::
    /// merged`) whose changes take `revision`: a transaction across ranges, evaluated by
    /// its coordinator and never committed here (`WriteTxn::into_writes`). Leases are
    /// this store's (the first data range's, which holds them).
    pub fn write_txn_over(&self, view: ReadView, revision: Revision) -> WriteTxn<'_> {
        WriteTxn {
            store: self,
            revision,
            given_revision: revision,
            view,
            changes: BTreeMap::new(),
            next_sub: 0,
            lease_changes: BTreeMap::new(),
            raises: false,
        }
    }

    /// Starts a write transaction whose changes take `revision` (0: the next one); see
    /// `WriteTxn::check_revision`.
    pub fn write_txn_at(&self, revision: Revision) -> WriteTxn<'_> {
        let mut txn = self.write_txn();
        txn.given_revision = revision;
        if revision.0 != 0 {
            txn.revision = revision;
        }
        txn
    }

    /// Whether the range's writes take their revisions from the oracle (every range once
    /// the keyspace has split).
    pub fn oracle_revisions(&self) -> bool {
        self.oracle_revisions.load(Ordering::SeqCst)
    }

    /// Removes every version that no read at or above `revision` can see, and records
    /// `revision` as compacted, in one atomic batch.
    pub fn compact(
        &self,
        revision: Revision,
        index: LogIndex,
        term: Term,
    ) -> Result<(), MvccError> {
        let current = self.current_revision();
        let compacted = self.compact_revision();
        // On a keyspace in ranges, a Compact at a revision the keyspace reached (the node
        // checks the oracle handed it out) applies in every range, also one whose last
        // write is older: its revision is raised to it, so that reads below it are
        // refused here too, as etcd refuses them, and no write lands at or below it. Not
        // while a transaction's lock is held: its writes must land above the range's
        // revision.
        let raise = revision > current;
        if raise && !self.oracle_revisions() {
            return Err(MvccError::FutureRevision);
        }
        if raise && self.has_txn_locks() {
            return Err(MvccError::Locked);
        }
        if revision <= compacted {
            return Err(MvccError::Compacted { compacted });
        }
        // Logical compaction only: reads below `revision` are refused from now on. The
        // versions it makes garbage are removed later by the compactor thread, off the
        // event loop (a scan of the whole store here stalled every group). Recorded with
        // how far the garbage was removed, so a restart knows (a store without the record
        // compacted at apply, all of it). The compactor may record a later point
        // meanwhile: going back only repeats a pass.
        let done = self.compacted_physically();
        let records = vec![
            (
                META_COMPACT_REVISION.to_vec(),
                Some((revision.0 as u64).to_be_bytes().to_vec()),
            ),
            (
                META_COMPACTED_PHYSICALLY.to_vec(),
                Some((done.0 as u64).to_be_bytes().to_vec()),
            ),
        ];
        // The transaction's view first: a view is taken only at or above the compacted
        // revision. Without a raise, that is raised before the compaction commits; with
        // one, after (readers would otherwise spin until the raise commits; nothing is
        // removed before the compactor's target moves, below).
        let mut write = self.write_txn_at(revision);
        if raise {
            write.raise_revision();
            write.commit_with(index, term, records, None);
            self.compact_revision.store(revision.0, Ordering::SeqCst);
        } else {
            self.compact_revision.store(revision.0, Ordering::SeqCst);
            write.commit_with(index, term, records, None);
        }
        let mut physical = self.physical_compaction.lock().unwrap();
        physical.target = physical.target.max(revision);
        self.compaction_changed();
        drop(physical);
        self.set_applied(index, term);
        Ok(())
    }

    /// The revision up to which compaction's garbage is gone from disk.
    pub fn compacted_physically(&self) -> Revision {
        self.physical_compaction.lock().unwrap().done
    }

    /// One pass of the physical compaction, if one is due: removes the versions that the
    /// compacted revision makes garbage, `COMPACTION_BATCH_VERSIONS` at a time with a
    /// pause between batches. Returns whether a pass ran (finished or was abandoned for
    /// an install). Runs on the compactor thread, concurrently with the event loop.
    pub fn compact_physically(&self) -> bool {
        use super::compaction::{classify, COMPACTION_BATCH_PAUSE, COMPACTION_BATCH_VERSIONS};
        let (target, installs) = {
            let physical = self.physical_compaction.lock().unwrap();
            if physical.done >= physical.target {
                return false;
            }
            (physical.target, physical.installs)
        };
        let snapshot = self.kv.snapshot();
        let versions = snapshot
            .range(self.span().storage_bounds())
            .map(|item| engine("scanning for compaction", item));
        let mut garbage: Vec<Vec<u8>> = Vec::new();
        let mut removed = 0usize;
        let walked = classify(versions, target, |stored_key, _, is_garbage| {
            if is_garbage {
                garbage.push(stored_key.to_vec());
            }
            if garbage.len() < COMPACTION_BATCH_VERSIONS {
                return ControlFlow::Continue(());
            }
            removed += garbage.len();
            if !self.remove_garbage(std::mem::take(&mut garbage), installs, None) {
                return ControlFlow::Break(());
            }
            std::thread::sleep(COMPACTION_BATCH_PAUSE);
            ControlFlow::Continue(())
        });
        if walked.is_break() {
            return true;
        }
        removed += garbage.len();
        if self.remove_garbage(garbage, installs, Some(target)) {
            tracing::debug!(
                group = self.group.0,
                revision = target.0,
                removed,
                "compaction's garbage removed"
            );
        }
        true
    }

    /// Removes `keys` in one batch, unless a snapshot was installed since the pass began
    /// (`installs` changed); with `finished`, also records the pass as done. Returns
    /// whether it removed them.
    fn remove_garbage(
        &self,
        keys: Vec<Vec<u8>>,
        installs: u64,
        finished: Option<Revision>,
    ) -> bool {
        let mut physical = self.physical_compaction.lock().unwrap();
        if physical.installs != installs {
            return false;
        }
        let mut batch = self.keyspace.batch();
        for key in keys {
            batch.remove(&self.kv, key);
        }
        if let Some(target) = finished {
            assert!(
                target <= self.compact_revision(),
                "compacted beyond the compacted revision"
            );
            self.local.insert(
                &mut batch,
                META_COMPACTED_PHYSICALLY,
                (target.0 as u64).to_be_bytes(),
            );
        }
        engine("removing compacted versions", batch.commit());
        if let Some(target) = finished {
            physical.done = physical.done.max(target);
            self.physical_compaction_changed.notify_all();
        }
        true
    }

    /// Hands this store's physical compaction to the node's compactor.
    pub(crate) fn attach_compactor(self: &Arc<Self>, queue: Weak<CompactionQueue>) {
        let attached = self.compactor.set((queue, Arc::downgrade(self)));
        assert!(attached.is_ok(), "a store attached to two compactors");
        if self.compaction_due() {
            self.queue_compaction();
        }
    }

    /// Whether garbage below the compacted revision is left on disk.
    pub(crate) fn compaction_due(&self) -> bool {
        let physical = self.physical_compaction.lock().unwrap();
        physical.done < physical.target
    }

    /// Puts this store on its compactor's queue (if attached, and not on it already).
    pub(crate) fn queue_compaction(&self) {
        if let Some((queue, this)) = self.compactor.get() {
            if let Some(queue) = queue.upgrade() {
                queue.push(this.clone(), &self.compaction_queued);
            }
        }
    }

    /// The compactor took this store off its queue.
    pub(crate) fn compaction_dequeued(&self) {
        self.compaction_queued.store(false, Ordering::SeqCst);
    }

    /// The compaction target or the data changed: wakes whoever waits on the physical
    /// compaction and queues the store for the compactor. Called with the
    /// `physical_compaction` lock held or not (the queue's lock is taken after it).
    fn compaction_changed(&self) {
        self.physical_compaction_changed.notify_all();
        self.queue_compaction();
    }

    /// Waits until the garbage of a compaction at `revision` is gone from disk (etcd's
    /// `physical` compaction), for at most `timeout`; returns whether it is.
    pub fn wait_compacted_physically(&self, revision: Revision, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut physical = self.physical_compaction.lock().unwrap();
        while physical.done < revision {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            physical = self
                .physical_compaction_changed
                .wait_timeout(physical, left)
                .unwrap()
                .0;
        }
        true
    }

    /// Replaces the whole state machine with a snapshot's content, atomically.
    pub(crate) fn install(
        &self,
        items: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        leases: Vec<(i64, LeaseRecord)>,
        tables: pb::SnapshotTables,
        revision: Revision,
        compact_revision: Revision,
        applied: AppliedState,
    ) {
        let mut batch = self.keyspace.batch();
        let freeze_mark = self.install_merge_tables(&mut batch, &tables);
        let rules_changed_at = self.install_gate(&mut batch, &tables);
        // A snapshot is of a later position than ours, and a bound never falls.
        assert!(
            tables.oracle_bound >= self.oracle_bound(),
            "a snapshot lowers the oracle's bound from {} to {}",
            self.oracle_bound(),
            tables.oracle_bound
        );
        self.local.insert(
            &mut batch,
            META_ORACLE_BOUND,
            tables.oracle_bound.to_be_bytes(),
        );
        self.oracle_bound
            .store(tables.oracle_bound, Ordering::SeqCst);
        // The meta range's next range id travels too: a replica made from a snapshot
        // (a new member, one behind a compacted log) that went on counting from its own
        // stale id, or from 2, would hand out ids of ranges that exist once it leads,
        // and a split to such an id only cuts the range it splits (its right half is
        // taken for one installed first), leaving keys no range holds. 0: a snapshot
        // written before ids travelled, which leaves the id as it was.
        if tables.next_range_id != 0 {
            assert!(
                tables.next_range_id >= self.next_range_id(),
                "a snapshot lowers the next range id from {} to {}",
                self.next_range_id(),
                tables.next_range_id
            );
            self.local.insert(
                &mut batch,
                META_NEXT_RANGE_ID,
                tables.next_range_id.to_be_bytes(),
            );
        }
        let (new_locks, new_outcomes) = txn_tables::tables_of_records(
            &tables.txn_locks,
            &tables.txn_outcomes,
            tables.txn_horizon,
        );
        for prefix in [
            txn_tables::LOCK_NAME_PREFIX,
            txn_tables::OUTCOME_NAME_PREFIX,
        ] {
            for (name, _) in self.local.scan(prefix) {
                self.local.remove(&mut batch, &name);
            }
        }
        let txn_changes = new_locks
            .locks()
            .map(txn_tables::store_lock)
            .chain(new_outcomes.records().map(|(txn, outcome)| {
                txn_tables::store_outcome(*txn, outcome, new_outcomes.is_finished(*txn))
            }))
            .chain([txn_tables::store_horizon(new_outcomes.horizon())]);
        self.put_local_changes(&mut batch, txn_changes);
        let new_members = MemberRegistry::from_records(tables.members);
        let mut alarms = self.alarms.lock().unwrap();
        for (member_id, alarm) in std::mem::take(&mut *alarms) {
            self.local.remove(&mut batch, alarm_key(member_id, alarm));
        }
        for raised in &tables.alarms {
            self.local
                .insert(&mut batch, alarm_key(raised.member_id, raised.alarm), []);
            alarms.insert((raised.member_id, raised.alarm));
        }
        drop(alarms);
        let mut registry = self.members.lock().unwrap();
        for record in registry.all_records() {
            self.local
                .remove(&mut batch, super::members::member_key(record.id));
        }
        for record in new_members.all_records() {
            self.local.insert(
                &mut batch,
                super::members::member_key(record.id),
                record.encode_to_vec(),
            );
        }
        *registry = new_members;
        drop(registry);
        let new_auth = tables
            .auth
            .as_ref()
            .map(AuthState::from_tables)
            .unwrap_or_default();
        let mut auth = self.auth.lock().unwrap();
        for (name, _) in self.local.scan(AUTH_KEY_PREFIX) {
            self.local.remove(&mut batch, &name);
        }
        for (key, value) in new_auth.stored() {
            self.local
                .insert(&mut batch, key, value.expect("stored state has values"));
        }
        *auth = Arc::new(new_auth);
        drop(auth);
        // The tokens this replica issued or dropped as it applied its log: the entries
        // the snapshot stands for may have dropped some of them on every other replica
        // (a password changed, a user deleted, auth disabled), so none is kept, as after a
        // restart; their clients authenticate again (found by review, 2026-12-06).
        self.tokens.lock().unwrap().clear();
        // After the tables it names: a carrier reading it then reads them too.
        self.set_rules_changed_at(rules_changed_at);
        // The snapshot's span only: the data partition holds other ranges' keys too. A
        // snapshot taken after a split this store has not applied holds less than the
        // store; what it leaves out belongs to the split's other range, whose replica
        // here replaces it with its own snapshot.
        let span = tables
            .span
            .as_ref()
            .map_or_else(|| (*self.span()).clone(), KeySpan::from_record);
        self.local.insert(&mut batch, META_SPAN, span.encode());
        if tables.oracle_revisions {
            self.local.insert(&mut batch, META_ORACLE_REVISIONS, []);
        } else {
            self.local.remove(&mut batch, META_ORACLE_REVISIONS);
        }
        for item in self.kv.snapshot().range(span.storage_bounds()) {
            batch.remove(&self.kv, engine("reading for an install", item).0);
        }
        for (name, _) in self.local.scan(LEASE_NAME_PREFIX) {
            self.local.remove(&mut batch, &name);
        }
        for (id, record) in &leases {
            self.local
                .insert(&mut batch, lease_name(*id), record.encode());
        }
        // The items go into the batch as the index is built from them: one pass, no
        // copy of them all beside the batch.
        let new_latest = LatestIndex::build(
            revision,
            items.into_iter().inspect(|(key, value)| {
                batch.insert(&self.kv, key.as_slice(), value.as_slice());
            }),
        );
        self.local.insert(
            &mut batch,
            META_COMPACT_REVISION,
            (compact_revision.0 as u64).to_be_bytes(),
        );
        self.local.insert(
            &mut batch,
            META_CONF_STATE,
            pb::ConfState::from(&applied.conf_state).encode_to_vec(),
        );
        // The snapshot may carry its sender's garbage not yet removed: the compactor
        // goes over it again.
        self.local.insert(
            &mut batch,
            META_COMPACTED_PHYSICALLY,
            (NEVER_COMPACTED.0 as u64).to_be_bytes(),
        );
        self.put_applied_at(&mut batch, applied.index, applied.term, revision);
        // Lower the compaction bound only after the data is in; raise it before.
        self.compact_revision
            .fetch_max(compact_revision.0, Ordering::SeqCst);
        {
            // Readers see the old index with the old data or the new with the new; the
            // compactor commits no removal while the data is replaced.
            let mut physical = self.physical_compaction.lock().unwrap();
            let mut latest = self.latest.lock().unwrap();
            engine("installing a snapshot", batch.commit());
            *latest = new_latest;
            self.set_span(span);
            self.oracle_revisions
                .store(tables.oracle_revisions, Ordering::SeqCst);
            *self.leases.lock().unwrap() = leases.into_iter().collect();
            *self.txn_locks.lock().unwrap() = Arc::new(new_locks);
            *self.txn_outcomes.lock().unwrap() = new_outcomes;
            self.set_frozen(freeze_mark);
            physical.installs += 1;
            physical.target = compact_revision;
            physical.done = NEVER_COMPACTED;
            self.compaction_changed();
        }
        engine(
            "persisting a snapshot",
            self.keyspace.persist(PersistMode::SyncAll),
        );
        self.members_version.fetch_add(1, Ordering::SeqCst);
        self.compact_revision
            .store(compact_revision.0, Ordering::SeqCst);
        self.revision.store(revision.0, Ordering::SeqCst);
        self.applied_index.store(applied.index.0, Ordering::SeqCst);
        *self.applied.lock().unwrap() = applied;
    }
}

/// Every stored version of `span` in a snapshot of `kv`: (storage key, stored value).
fn stored_versions(
    kv: fjall::Snapshot,
    span: &KeySpan,
) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    kv.range(span.storage_bounds()).map(|item| {
        let (key, value) = engine("reading for a snapshot", item);
        (key.to_vec(), value.to_vec())
    })
}

/// A lease as the state machine keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The granted time to live.
    pub ttl_secs: i64,
    /// What was left at the last checkpoint (0: none yet).
    pub remaining_secs: i64,
}

impl LeaseRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.ttl_secs.to_le_bytes());
        out.extend_from_slice(&self.remaining_secs.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> LeaseRecord {
        assert_eq!(bytes.len(), 16, "a stored lease record is 16 bytes");
        LeaseRecord {
            ttl_secs: i64::from_le_bytes(bytes[..8].try_into().unwrap()),
            remaining_secs: i64::from_le_bytes(bytes[8..].try_into().unwrap()),
        }
    }
}

const ALARM_KEY_PREFIX: &[u8] = b"alarm/";

fn alarm_key(member_id: u64, alarm: i32) -> Vec<u8> {
    let mut key = ALARM_KEY_PREFIX.to_vec();
    key.extend_from_slice(&member_id.to_be_bytes());
    key.extend_from_slice(&alarm.to_be_bytes());
    key
}

fn alarm_of_key(key: &[u8]) -> (u64, i32) {
    let rest = &key[ALARM_KEY_PREFIX.len()..];
    assert_eq!(rest.len(), 12, "an alarm key is a prefix, 8 and 4 bytes");
    (
        u64::from_be_bytes(rest[..8].try_into().unwrap()),
        i32::from_be_bytes(rest[8..].try_into().unwrap()),
    )
}

/// Every lease record's name in the range's local state starts with it.
const LEASE_NAME_PREFIX: &[u8] = b"lease/";

fn lease_name(id: i64) -> Vec<u8> {
    let mut name = LEASE_NAME_PREFIX.to_vec();
    name.extend_from_slice(&id.to_be_bytes());
    name
}

fn lease_id_of(name: &[u8]) -> i64 {
    let id = name
        .strip_prefix(LEASE_NAME_PREFIX)
        .expect("a lease record's name");
    i64::from_be_bytes(id.try_into().expect("an 8-byte lease id"))
}

/// The state of the store at one applied position, readable from any thread while the
/// store moves on (see `MvccStore::freeze`).
pub struct FrozenState {
    /// The applied raft position the state reflects.
    pub applied: AppliedState,
    /// The revision at that position.
    pub revision: Revision,
    /// The compacted revision at that position.
    pub compact_revision: Revision,
    /// Every lease at that position.
    pub leases: Vec<(i64, LeaseRecord)>,
    /// The member registry and the alarms at that position.
    pub tables: pb::SnapshotTables,
    kv: fjall::Snapshot,
    span: Arc<KeySpan>,
}

impl FrozenState {
    /// The user keys the range held.
    pub fn span(&self) -> &KeySpan {
        &self.span
    }

    /// Every stored version: (storage key, stored value), in storage order.
    pub(crate) fn items(self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
        stored_versions(self.kv, &self.span)
    }
}

/// A consistent, point-in-time view of the store.
pub struct ReadView {
    pub(super) kv: fjall::Snapshot,
    /// The store's span: every read stays in it.
    pub(super) span: Arc<KeySpan>,
    pub(super) latest: LatestIndex,
    pub(super) current: Revision,
    pub(super) compacted: Revision,
    /// The locks of transactions across ranges held when the view was taken (their
    /// writes are not in it yet).
    pub(super) locks: Arc<LockTable>,
}

impl ReadView {
    /// The views of several ranges, each frozen by a transaction's locks, as one view:
    /// the span from the first's start to the last's end (the transaction reads only
    /// keys of these ranges), at the highest of their revisions (each range has no write
    /// between its own and that one), over `kv`, a snapshot taken after every view. Its
    /// index holds the live keys in `intervals` only, the keys the transaction reads and
    /// writes: merging the ranges' whole indexes took time in every key they held (1 ms
    /// per transaction at 2,000 keys, growing with them).
    fn merged(
        mut views: Vec<ReadView>,
        kv: fjall::Snapshot,
        intervals: &[super::KeyInterval<'_>],
    ) -> ReadView {
        assert!(!views.is_empty(), "a merge of no views");
        views.sort_by(|a, b| a.span.start().cmp(b.span.start()));
        let start = views[0].span.start().to_vec();
        let end = views[views.len() - 1].span.end().map(<[u8]>::to_vec);
        let mut views = views.into_iter();
        let first = views.next().expect("one view at least");
        let mut merged = ReadView {
            kv,
            span: Arc::new(KeySpan::new(start, end)),
            current: first.current,
            compacted: first.compacted,
            latest: first.latest.within(intervals),
            locks: Arc::new(LockTable::default()),
        };
        for view in views {
            merged.current = merged.current.max(view.current);
            merged.compacted = merged.compacted.max(view.compacted);
            merged.latest = merged.latest.merge(view.latest.within(intervals));
        }
        merged
    }

    /// The revision of the last write the view contains.
    pub fn current_revision(&self) -> Revision {
        self.current
    }

    /// Whether the view holds the lock of `txn` taken at `revision` (its prepare's; not
    /// one a late copy of the prepare took after a pusher ended that one).
    pub fn holds_lock_at(&self, txn: ostrakon_ranges::txn::TxnId, revision: u64) -> bool {
        self.locks
            .locks()
            .any(|lock| lock.txn == txn && lock.revision == revision)
    }

    /// Whether a transaction across ranges holds a lock on some key of `intervals`:
    /// any lock if `at` is None (a linearizable read of the current state, which must
    /// not miss a transaction that may have committed), else one whose revision is at
    /// or below `at` (a read at `at`; a lock above it cannot write below it). A read
    /// that meets one waits for it to go and takes a new view.
    pub fn locked(&self, intervals: &[super::KeyInterval<'_>], at: Option<Revision>) -> bool {
        if self.locks.is_empty() {
            return false;
        }
        let spans: Vec<_> = intervals
            .iter()
            .filter_map(|&(key, range_end)| txn_tables::lock_span(key, range_end))
            .collect();
        match at {
            None => self.locks.blocking_write(&spans).is_some(),
            Some(at) => self
                .locks
                .blocking_read(&spans, u64::try_from(at.0).unwrap_or(0))
                .is_some(),
        }
    }

    /// The lowest revision a lock held in the view will write at, if any: the range's
    /// history below it is final (what a watcher merging ranges may release).
    pub fn lowest_lock_revision(&self) -> Option<Revision> {
        self.locks
            .locks()
            .map(|lock| Revision(i64::try_from(lock.revision).expect("revisions below 2^63")))
            .min()
    }

    /// How many keys are live in the view.
    pub fn live_keys(&self) -> usize {
        self.latest.live_keys()
    }

    /// The bytes of the view's live keys and their values.
    pub fn live_bytes(&self) -> u64 {
        self.latest.live_bytes()
    }

    /// Where a split would halve the view's live bytes (`LatestIndex::middle_key`).
    pub fn middle_key(&self) -> Option<Bytes> {
        self.latest.middle_key()
    }

    /// The user keys the view's range held when it was taken.
    pub fn span(&self) -> &KeySpan {
        &self.span
    }

    /// The live keys attached to a lease.
    pub fn lease_keys(&self, lease: i64) -> Vec<Bytes> {
        self.latest.lease_keys(lease)
    }

    /// The transactions across ranges whose record is kept by `primary` that held a
    /// lock here when the view was taken.
    pub fn lock_holders_of(
        &self,
        primary: ostrakon_ranges::descriptor::RangeId,
    ) -> Vec<ostrakon_ranges::txn::TxnId> {
        self.locks
            .locks()
            .filter(|lock| lock.primary == primary)
            .map(|lock| lock.txn)
            .collect()
    }

    /// The compacted revision when the view was taken.
    pub fn compact_revision(&self) -> Revision {
        self.compacted
    }

    /// Checks a requested revision (0 = current) and resolves it.
    pub fn resolve(&self, requested: i64) -> Result<Revision, MvccError> {
        if requested <= 0 {
            return Ok(self.current);
        }
        let requested = Revision(requested);
        if requested > self.current {
            return Err(MvccError::FutureRevision);
        }
        if requested < self.compacted {
            return Err(MvccError::Compacted {
                compacted: self.compacted,
            });
        }
        Ok(requested)
    }

    /// The live keys in `[key, range_end)` at `at`, in key order (`range_end` empty means
    /// just `key`; `"\0"` means no upper bound).
    pub fn range(&self, key: &[u8], range_end: &[u8], at: Revision) -> Vec<KeyValue> {
        self.range_counted(key, range_end, at, usize::MAX).0
    }

    /// Like `range`, but builds at most `materialize_max` key-values while still counting
    /// every live key: a limited Range over many keys copies only what it returns.
    pub fn range_counted(
        &self,
        key: &[u8],
        range_end: &[u8],
        at: Revision,
        materialize_max: usize,
    ) -> (Vec<KeyValue>, usize) {
        assert!(
            at <= self.current,
            "reading at {at:?} beyond {:?}",
            self.current
        );
        assert!(
            self.span.covers(key, range_end),
            "a read of {key:?}..{range_end:?} outside the store's span {:?}",
            self.span
        );
        if range_end.is_empty() {
            let mut found: Vec<KeyValue> = self.get(key, at).into_iter().collect();
            let count = found.len();
            found.truncate(materialize_max);
            return (found, count);
        }
        let unbounded = range_end == [0];
        if !unbounded && range_end <= key {
            return (Vec::new(), 0);
        }
        if at == self.current {
            return self.range_counted_latest(key, range_end, materialize_max);
        }
        let low = Bound::Included(key_prefix(key));
        let high = if unbounded {
            Bound::Unbounded
        } else {
            Bound::Excluded(key_prefix(range_end))
        };
        let mut out = Vec::new();
        let mut count = 0;
        // The newest version at or below `at` of the key being scanned: (escaped prefix,
        // storage key, stored value).
        let mut pending: Option<(Vec<u8>, fjall::Slice, fjall::Slice)> = None;
        let mut finish = |pending: Option<(Vec<u8>, fjall::Slice, fjall::Slice)>,
                          out: &mut Vec<KeyValue>| {
            let Some((_, stored_key, stored_value)) = pending else {
                return;
            };
            if StoredVersion::is_tombstone(&stored_value) {
                return;
            }
            count += 1;
            if out.len() < materialize_max {
                out.extend(live_key_value(&stored_key, &stored_value));
            }
        };
        for item in self.kv.range::<Vec<u8>, _>((low, high)) {
            let (stored_key, stored_value) = engine("reading a range", item);
            let (prefix, revision) = stored_key.split_at(stored_key.len() - 8);
            if u64::from_be_bytes(revision.try_into().unwrap()) as i64 > at.0 {
                continue;
            }
            if pending
                .as_ref()
                .is_some_and(|(p, ..)| p.as_slice() != prefix)
            {
                finish(pending.take(), &mut out);
            }
            pending = Some((prefix.to_vec(), stored_key, stored_value));
        }
        finish(pending, &mut out);
        (out, count)
    }

    /// A checksum (CRC32C) of every stored version at or below `at`, in storage order:
    /// members that applied the same writes and compactions agree on it.
    pub fn hash_kv(&self, at: Revision) -> u32 {
        self.hash_kv_from(0, at, self.compacted)
    }

    /// `hash_kv` of this view's versions appended to `crc`, the hash of the ranges before
    /// this one in key order, counting as garbage what a compaction at `compacted` (at or
    /// above this view's own) leaves: chained range by range in key order, the hash of a
    /// keyspace in ranges is that of the same versions in one range, however it is split
    /// (a split or merge must not look like corruption to a checker comparing members),
    /// and ranges that applied a cluster-wide compaction and ranges about to apply it
    /// hash alike.
    pub fn hash_kv_from(&self, crc: u32, at: Revision, compacted: Revision) -> u32 {
        assert!(
            compacted >= self.compacted,
            "a hash counts as garbage at least what this range's compaction removed"
        );
        // The view took its snapshot before it read the compacted revision: every version
        // missing from the snapshot is garbage at that revision (and so at any later
        // one), so the hash is of what the compaction keeps, whether or not its garbage
        // is gone from this member's disk yet.
        let mut crc = crc;
        let versions = self
            .kv
            .range(self.span.storage_bounds())
            .map(|item| engine("hashing the store", item));
        let _ = super::compaction::classify(
            versions,
            compacted,
            |stored_key, stored_value, garbage| {
                let revision = u64::from_be_bytes(
                    stored_key[stored_key.len() - 8..]
                        .try_into()
                        .expect("8 revision bytes"),
                ) as i64;
                if !garbage && revision <= at.0 {
                    crc = crc32c::crc32c_append(crc, stored_key);
                    crc = crc32c::crc32c_append(crc, stored_value);
                }
                ControlFlow::Continue(())
            },
        );
        crc
    }

    /// `range_counted` at the current revision, from the latest-version index: one index
    /// entry per live key, and one point read per key returned.
    fn range_counted_latest(
        &self,
        key: &[u8],
        range_end: &[u8],
        materialize_max: usize,
    ) -> (Vec<KeyValue>, usize) {
        let mut out = Vec::new();
        let mut count = 0;
        for (user_key, revision) in self.latest.range(key, range_end) {
            count += 1;
            if out.len() < materialize_max {
                out.push(self.version_from_index(user_key, revision));
            }
        }
        (out, count)
    }

    /// The version the index points at: the view's snapshot holds it, and it is live.
    fn version_from_index(&self, user_key: &[u8], revision: Revision) -> KeyValue {
        let stored_key = versioned_key(user_key, revision);
        let stored_value = engine("reading a key", self.kv.get(&stored_key)).unwrap_or_else(|| {
            panic!("the latest-version index points at a missing version {stored_key:?}")
        });
        live_key_value(&stored_key, &stored_value).unwrap_or_else(|| {
            panic!("the latest-version index points at a tombstone {stored_key:?}")
        })
    }

    /// The newest live version of `key`, without its value, from the index alone.
    pub fn latest_meta(&self, key: &[u8]) -> Option<KeyMeta> {
        assert!(
            self.span.contains(key),
            "a read of {key:?} outside the store's span {:?}",
            self.span
        );
        let meta = self.latest.meta(key);
        if cfg!(debug_assertions) {
            // The index agrees with the stored version it points at.
            let stored = self.get(key, self.current);
            assert_eq!(
                meta,
                stored.as_ref().map(KeyMeta::of),
                "the latest-version index disagrees with the stored version of {key:?}"
            );
        }
        meta
    }

    /// The live version of `key` at `at`.
    pub fn get(&self, key: &[u8], at: Revision) -> Option<KeyValue> {
        assert!(
            self.span.contains(key),
            "a read of {key:?} outside the store's span {:?}",
            self.span
        );
        if at == self.current {
            let revision = self.latest.get(key)?;
            return Some(self.version_from_index(key, revision));
        }
        self.stored_version_at(key, at)
    }

    /// The live version of `key` at `at`, from the stored versions alone (not the
    /// index).
    fn stored_version_at(&self, key: &[u8], at: Revision) -> Option<KeyValue> {
        let low = versioned_key(key, Revision(0));
        let high = versioned_key(key, at);
        let item = self.kv.range(low..=high).next_back()?;
        let (stored_key, stored_value) = engine("reading a key", item);
        live_key_value(&stored_key, &stored_value)
    }
}

/// The key-value a stored version shows to clients, unless it is a tombstone.
fn live_key_value(stored_key: &[u8], stored_value: &[u8]) -> Option<KeyValue> {
    let (user_key, revision) = split_versioned_key(stored_key);
    let stored = StoredVersion::decode(stored_value);
    (!stored.tombstone).then(|| key_value(Bytes::from(user_key), revision, stored))
}

pub(super) fn key_value(key: Bytes, mod_revision: Revision, stored: StoredVersion) -> KeyValue {
    KeyValue {
        key,
        create_revision: stored.create_revision.0,
        mod_revision: mod_revision.0,
        version: stored.version,
        value: stored.value,
        lease: stored.lease,
    }
}

/// The writes of one revision, visible to the transaction's own later reads, applied
/// atomically by `commit`.
pub struct WriteTxn<'a> {
    store: &'a MvccStore,
    view: ReadView,
    /// The revision its changes take.
    revision: Revision,
    /// The revision the write came with (0: none).
    given_revision: Revision,
    /// User key to its new version, whose `sub` numbers the writes in order.
    /// Invariant: a key is put at most once and deleted at most once (etcd refuses a
    /// Txn that writes a key twice before it reaches the store, but for a delete of a
    /// range ending in "\0"); the last write is kept.
    changes: BTreeMap<Bytes, StoredVersion>,
    /// The next write's sub-revision.
    next_sub: u32,
    /// Leases granted or changed (`Some`) and revoked (`None`).
    lease_changes: BTreeMap<i64, Option<LeaseRecord>>,
    /// Whether the store's revision moves to `revision` even without changes.
    raises: bool,
}

impl WriteTxn<'_> {
    /// The lease as this transaction sees it.
    pub fn lease(&self, id: i64) -> Option<LeaseRecord> {
        match self.lease_changes.get(&id) {
            Some(changed) => *changed,
            None => self.store.lease(id),
        }
    }

    /// Grants a lease.
    pub fn grant_lease(&mut self, id: i64, ttl_secs: i64) -> Result<(), MvccError> {
        if self.lease(id).is_some() {
            return Err(MvccError::LeaseExists);
        }
        let record = LeaseRecord {
            ttl_secs,
            remaining_secs: 0,
        };
        self.lease_changes.insert(id, Some(record));
        Ok(())
    }

    /// Revokes a lease: the keys attached to it are deleted in this revision.
    pub fn revoke_lease(&mut self, id: i64) -> Result<(), MvccError> {
        if self.lease(id).is_none() {
            return Err(MvccError::LeaseNotFound);
        }
        for key in self.view.latest.lease_keys(id) {
            if self.changes.contains_key(&key) {
                continue;
            }
            let tombstone = self.next_write(StoredVersion::tombstone());
            self.changes.insert(key, tombstone);
        }
        self.lease_changes.insert(id, None);
        Ok(())
    }

    /// Records how long a lease had left, so a new leader does not give it a full TTL
    /// again; leases that no longer exist are skipped.
    pub fn checkpoint_lease(&mut self, id: i64, remaining_secs: i64) {
        if let Some(mut record) = self.lease(id) {
            record.remaining_secs = remaining_secs;
            self.lease_changes.insert(id, Some(record));
        }
    }

    /// The view the transaction reads committed data from.
    pub fn view(&self) -> &ReadView {
        &self.view
    }

    /// Whether the transaction has written anything yet.
    pub fn has_changes(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Whether the revision its changes would take may be used, if it changes keys: one
    /// at or below the current is refused, and so is none on a range that takes its
    /// revisions from the oracle (revisions rise in every range's log). Writes that
    /// change no key take no revision and pass.
    pub fn check_revision(&self) -> Result<(), MvccError> {
        if !self.has_changes() {
            return Ok(());
        }
        let given = self.given_revision;
        let current = self.view.current;
        let unusable = if given.0 == 0 {
            self.store.oracle_revisions()
        } else {
            given <= current
        };
        if unusable {
            return Err(MvccError::StaleRevision { given, current });
        }
        Ok(())
    }

    /// The revision this transaction's writes get.
    pub fn write_revision(&self) -> Revision {
        self.revision
    }

    /// The revision the transaction's responses report: the new one if it wrote; if it
    /// wrote nothing, the revision it came with if higher than the view's (a range that
    /// takes revisions from the oracle: no write at or below that one can still apply
    /// here, and other ranges' writes acknowledged before it are below it, so answers
    /// keep rising in real time as on one range).
    pub fn response_revision(&self) -> Revision {
        if self.changes.is_empty() {
            self.view.current.max(self.given_revision)
        } else {
            self.write_revision()
        }
    }

    /// Live keys in the range as of now, including this transaction's own writes.
    pub fn range_latest(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        let mut base = self.view.range(key, range_end, self.view.current);
        if self.changes.is_empty() {
            return base;
        }
        let written_revision = self.write_revision();
        let in_range = |k: &[u8]| {
            if range_end.is_empty() {
                k == key
            } else {
                k >= key && (range_end == [0] || k < range_end)
            }
        };
        let mut merged: BTreeMap<Bytes, KeyValue> =
            base.drain(..).map(|kv| (kv.key.clone(), kv)).collect();
        for (changed_key, version) in &self.changes {
            if !in_range(changed_key) {
                continue;
            }
            if version.tombstone {
                merged.remove(changed_key);
            } else {
                let kv = key_value(changed_key.clone(), written_revision, version.clone());
                merged.insert(changed_key.clone(), kv);
            }
        }
        merged.into_values().collect()
    }

    /// The newest live version of `key` as of now, including this transaction's own
    /// writes, without its value: no stored version is read.
    pub fn latest_meta(&self, key: &[u8]) -> Option<KeyMeta> {
        match self.changes.get(key) {
            Some(version) if version.tombstone => None,
            Some(version) => Some(KeyMeta {
                mod_revision: self.write_revision(),
                create_revision: version.create_revision,
                version: version.version,
                lease: version.lease,
            }),
            None => self.view.latest_meta(key),
        }
    }

    /// Numbers a write of this transaction (its sub-revision).
    fn next_write(&mut self, version: StoredVersion) -> StoredVersion {
        let sub = self.next_sub;
        self.next_sub += 1;
        StoredVersion { sub, ..version }
    }

    /// Writes `value` under `key`.
    pub fn put(&mut self, key: Bytes, value: Bytes, lease: i64) {
        let previous = self.latest_meta(&key);
        let version = StoredVersion {
            tombstone: false,
            create_revision: previous
                .as_ref()
                .map_or(self.write_revision(), |p| p.create_revision),
            version: previous.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
            sub: 0,
        };
        let version = self.next_write(version);
        // etcd's duplicate check lets one Txn delete a key (a range ending in "\0") and
        // then put it; the put wins. Two puts of a key are refused before apply.
        let replaced = self.changes.insert(key, version);
        assert!(
            replaced.is_none_or(|r| r.tombstone),
            "a key put twice in one revision"
        );
    }

    /// Deletes the live keys in the range; returns them.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        let deleted = self.range_latest(key, range_end);
        for kv in &deleted {
            // A key this transaction put is deleted again (etcd's duplicate check lets a
            // range ending in "\0" through): the tombstone wins.
            let tombstone = self.next_write(StoredVersion::tombstone());
            let replaced = self.changes.insert(kv.key.clone(), tombstone);
            assert!(
                replaced.is_none_or(|r| !r.tombstone),
                "a key deleted twice in one revision"
            );
        }
        deleted
    }

    /// Adds the lease changes to the transaction's batch: a revoke's record goes in the
    /// same atomic batch as the deletion of its keys.
    fn put_lease_changes(&self, batch: &mut fjall::Batch) {
        for (id, change) in &self.lease_changes {
            match change {
                Some(record) => self
                    .store
                    .local
                    .insert(batch, lease_name(*id), record.encode()),
                None => self.store.local.remove(batch, lease_name(*id)),
            }
        }
    }

    /// Makes committed lease changes visible in the in-memory table.
    fn publish_lease_changes(&self) {
        if self.lease_changes.is_empty() {
            return;
        }
        let mut leases = self.store.leases.lock().unwrap();
        for (id, change) in &self.lease_changes {
            match change {
                Some(record) => leases.insert(*id, *record),
                None => leases.remove(id),
            };
        }
    }

    /// The transaction's writes, in the order it made them (a transaction across ranges
    /// evaluated by its coordinator: each range then writes its part, `set_version`).
    pub fn into_writes(self) -> ostrakon_proto::peer::TxnWrites {
        let revoked_leases = self
            .lease_changes
            .iter()
            .map(|(id, change)| {
                assert!(
                    change.is_none(),
                    "a transaction across ranges only revokes leases"
                );
                *id
            })
            .collect();
        let mut changes: Vec<(Bytes, StoredVersion)> = self.changes.into_iter().collect();
        changes.sort_by_key(|(_, version)| version.sub);
        ostrakon_proto::peer::TxnWrites {
            revision: self.revision.0,
            writes: changes
                .into_iter()
                .map(|(key, version)| ostrakon_proto::peer::TxnWrite {
                    key,
                    delete: version.tombstone,
                    value: version.value,
                    lease: version.lease,
                    create_revision: version.create_revision.0,
                    version: version.version,
                    sub: version.sub,
                })
                .collect(),
            revoked_leases,
            // The coordinator names them in its commit.
            participants: Vec::new(),
        }
    }

    /// Forgets a lease another transaction revoked (`into_writes`; its keys' deletes come
    /// as writes), if this range holds its record.
    pub(crate) fn forget_lease(&mut self, id: i64) {
        if self.lease(id).is_some() {
            self.lease_changes.insert(id, None);
        }
    }

    /// Moves the store's revision to the transaction's even if it changes no key: no
    /// later write then takes a revision at or below it.
    pub(crate) fn raise_revision(&mut self) {
        assert!(
            self.revision > self.view.current,
            "a revision raised from {:?} to {:?}",
            self.view.current,
            self.revision
        );
        self.raises = true;
    }

    /// Writes a version another transaction computed (`into_writes`), as the next write.
    /// The write keeps its sub-revision in the whole transaction, so the versions one
    /// transaction writes in several ranges at one revision never share one (a backup
    /// in etcd's format keys every version by both). Writes made before they carried it
    /// (`numbered_here`: every sub 0) are numbered in this range's order, as they were
    /// then, so a replica replaying an old entry stores what the others stored.
    pub(crate) fn set_version(
        &mut self,
        write: &ostrakon_proto::peer::TxnWrite,
        numbered_here: bool,
    ) {
        let sub = if numbered_here {
            self.next_sub
        } else {
            write.sub
        };
        let version = if write.delete {
            StoredVersion::tombstone()
        } else {
            StoredVersion {
                tombstone: false,
                create_revision: Revision(write.create_revision),
                version: write.version,
                lease: write.lease,
                value: write.value.clone(),
                sub,
            }
        };
        let version = StoredVersion { sub, ..version };
        self.next_sub = self.next_sub.max(sub + 1);
        self.changes.insert(write.key.clone(), version);
    }

    /// Applies the writes, if any, with the applied index, in one atomic batch.
    pub fn commit(self, index: LogIndex, term: Term) {
        self.commit_with(index, term, Vec::new(), None);
    }

    /// `commit`, with changes to the range's local state in the same batch, and the lock
    /// table replaced by `locks` as the writes become visible.
    pub(crate) fn commit_with(
        self,
        index: LogIndex,
        term: Term,
        local_changes: Vec<LocalChange>,
        locks: Option<LockTable>,
    ) {
        if self.changes.is_empty()
            && !self.raises
            && self.lease_changes.is_empty()
            && local_changes.is_empty()
        {
            assert!(locks.is_none(), "the locks changed without a stored change");
            self.store.set_applied(index, term);
            return;
        }
        let mut batch = self.store.keyspace.batch();
        self.put_lease_changes(&mut batch);
        self.store.put_local_changes(&mut batch, local_changes);
        if self.changes.is_empty() && !self.raises {
            self.store.put_applied(&mut batch, index, term);
            engine("committing lease changes", batch.commit());
            self.publish_lease_changes();
            if let Some(locks) = locks {
                let _latest = self.store.latest.lock().unwrap();
                *self.store.txn_locks.lock().unwrap() = Arc::new(locks);
            }
            self.store.set_applied(index, term);
            return;
        }
        let revision = self.write_revision();
        for (key, version) in &self.changes {
            batch.insert(
                &self.store.kv,
                versioned_key(key, revision),
                version.encode(),
            );
        }
        self.store.put_applied_at(&mut batch, index, term, revision);
        engine("committing a write", batch.commit());
        self.publish_lease_changes();
        // The view's index shares the store's nodes: released, the update below changes
        // an index no reader holds in place instead of copying the path to every key it
        // writes. The view's snapshot of the versions stays, for the events.
        let mut view = self.view;
        view.latest = LatestIndex::default();
        {
            // A reader takes the index and the locks together: it sees the lock or the
            // writes it stood for, never neither.
            let mut latest = self.store.latest.lock().unwrap();
            latest.apply(revision, &self.changes);
            if let Some(locks) = locks {
                *self.store.txn_locks.lock().unwrap() = Arc::new(locks);
            }
        }
        self.store.revision.store(revision.0, Ordering::SeqCst);
        self.store.set_applied(index, term);
        // Asked only now: a watch subscribes and then reads the current revision, so one
        // that read the revision before this write must get its events.
        if let Some(sink) = self.store.events.get().filter(|sink| sink.wants_events()) {
            // In the order the transaction wrote them, as etcd publishes them, each with
            // the version it replaced.
            let mut changes: Vec<(Bytes, StoredVersion)> = self.changes.into_iter().collect();
            changes.sort_by_key(|(_, version)| version.sub);
            let events = changes
                .into_iter()
                .map(|(key, version)| {
                    let prev_kv = view.stored_version_at(&key, view.current);
                    if version.tombstone {
                        delete_event(key, revision, prev_kv)
                    } else {
                        put_event(key_value(key, revision, version), prev_kv)
                    }
                })
                .collect();
            sink.publish(RevisionEvents {
                revision,
                previous: view.current,
                events,
            });
        }
    }
}
