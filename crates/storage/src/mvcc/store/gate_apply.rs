//! The cluster-wide write rules every data range enforces at apply: a write checked
//! against an older auth store is refused, and nothing that adds data applies while
//! NOSPACE is raised (docs/RANGES.md, "Auth and alarms on a keyspace in ranges").
//!
//! The first data range holds the auth tables and the alarms, and applies their changes.
//! Another range cannot read them at apply: replicas apply the first range and theirs
//! at different paces, so their decisions would differ. Each other range takes the rules
//! into its own log instead (a `WriteGate` entry, proposed by the node after every
//! change) and decides by what its log holds, identically on every replica. A gate
//! carries the first range's index of the change that made its rules; a range keeps the
//! gate of the latest change, so gates whose proposals race leave it at the newest, and
//! a range lacks a change exactly when its gate's index is below the change's.

use std::sync::atomic::Ordering;

use ostrakon_proto::etcdserverpb::AlarmType;
use ostrakon_proto::peer as pb;
use ostrakon_raft::{LogIndex, Term};
use prost::Message as _;

use super::MvccStore;
use crate::fatal::engine;

/// The gate this range took in last (absent in the first data range).
pub(super) const META_WRITE_GATE: &[u8] = b"write_gate";
/// The applied index of the last change to the range's own rules (the first data
/// range's are the cluster's).
pub(super) const META_RULES_CHANGED_AT: &[u8] = b"rules_changed_at";

/// The rules a write must pass in a range: the first data range's own tables there, the
/// gate it took in elsewhere.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteRules {
    /// Writes checked against an auth store older than this are refused (while auth is
    /// enabled).
    pub auth_revision: u64,
    pub auth_enabled: bool,
    /// NOSPACE is raised: nothing that adds data applies.
    pub nospace: bool,
}

impl WriteRules {
    fn of_gate(gate: &pb::WriteGate) -> WriteRules {
        WriteRules {
            auth_revision: gate.auth_revision,
            auth_enabled: gate.auth_enabled,
            nospace: gate.nospace,
        }
    }

    /// Whether a write checked against the auth store's revision `checked` (0: not
    /// checked; see `checked_auth`) must be refused as checked against an old one.
    pub fn refuses_auth_revision(&self, checked: u64) -> bool {
        self.auth_refusal(checked).is_some()
    }

    /// Why a write checked as `checked` says (`checked_auth`; 0: not checked, an
    /// internal write) is refused, if it is: checked while auth was off where it was
    /// checked, but on here (etcd: the request carries no user, "user name is empty"),
    /// or checked against an auth store older than these rules.
    pub fn auth_refusal(&self, checked: u64) -> Option<crate::mvcc::auth::AuthError> {
        if checked == 0 || !self.auth_enabled {
            return None;
        }
        if checked & CHECKED_WHILE_AUTH_OFF != 0 {
            return Some(crate::mvcc::auth::AuthError::UserEmpty);
        }
        (checked >> 1 < self.auth_revision).then_some(crate::mvcc::auth::AuthError::AuthOldRevision)
    }
}

/// The bit of a write's `auth_revision` that says its proposer checked it while auth was
/// off there: enabling auth does not raise the auth store's revision (as in etcd), so the
/// revision alone would not refuse a write a member behind on the enable let through
/// unchecked. The revision is in the bits above it (the lowest bit keeps the varint short:
/// a write costs a byte or two more, not ten).
pub const CHECKED_WHILE_AUTH_OFF: u64 = 1;

/// What a write's `auth_revision` says of its check: the auth store's `revision` it was
/// checked against, and whether auth was `enabled` there. Never 0 (0: not checked).
pub fn checked_auth(revision: u64, enabled: bool) -> u64 {
    assert!(
        revision < 1 << 62,
        "an auth revision of 2^62 or more: {revision}"
    );
    (revision << 1) | if enabled { 0 } else { CHECKED_WHILE_AUTH_OFF }
}

/// The index of the last rules change of a store that recorded none (one from before
/// gates), alike on every replica: 0 with the default rules (nothing to carry), else 1,
/// above every range's default gate, so the rules are carried once.
pub(super) fn unrecorded_rules_change(
    auth: &crate::mvcc::auth::AuthState,
    alarms: &std::collections::BTreeSet<(u64, i32)>,
) -> u64 {
    let nospace = alarms
        .iter()
        .any(|(_, alarm)| *alarm == AlarmType::Nospace as i32);
    u64::from(auth.enabled() || nospace)
}

pub(super) fn decode_gate(stored: &[u8]) -> pb::WriteGate {
    pb::WriteGate::decode(stored).expect("a stored write gate decodes")
}

impl MvccStore {
    /// Whether this range holds the cluster's auth tables and alarms: the first data
    /// range (the keyspace's first key is its own). Its own rules are the cluster's; a
    /// gate it took over in a merge means nothing there.
    fn holds_cluster_tables(&self) -> bool {
        self.span().start().is_empty()
    }

    /// The rules this range's writes must pass: its own auth store and alarms in the
    /// first data range, the gate it took in last elsewhere.
    pub fn write_rules(&self) -> WriteRules {
        if self.holds_cluster_tables() {
            let auth = self.auth();
            WriteRules {
                auth_revision: auth.revision(),
                auth_enabled: auth.enabled(),
                nospace: self.has_alarm(AlarmType::Nospace),
            }
        } else {
            WriteRules::of_gate(&self.write_gate.lock().unwrap())
        }
    }

    /// The gate to carry this range's own rules (the first data range's) into the
    /// others, named by the index of their last change. The index is read first: the
    /// rules read after it are at least as new, so a range that takes in a later gate
    /// never goes back to older rules.
    pub fn gate_to_carry(&self) -> pb::WriteGate {
        let source_index = self.rules_changed_at.load(Ordering::SeqCst);
        let auth = self.auth();
        pb::WriteGate {
            source_index,
            auth_revision: auth.revision(),
            auth_enabled: auth.enabled(),
            nospace: self.has_alarm(AlarmType::Nospace),
        }
    }

    /// Whether this range's log (as far as this replica applied it) lacks `gate`: it
    /// holds the gate of an earlier change. Rules alone would not tell: NOSPACE raised
    /// and cleared again gives the same rules as before it.
    pub fn lacks_gate(&self, gate: &pb::WriteGate) -> bool {
        self.write_gate.lock().unwrap().source_index < gate.source_index
    }

    /// Records, in `batch`, that this range's own rules change at `index` (the caller
    /// sets `rules_changed_at` once the batch is committed).
    pub(super) fn note_rules_change(&self, batch: &mut fjall::Batch, index: LogIndex) {
        self.local
            .insert(batch, META_RULES_CHANGED_AT, index.0.to_be_bytes());
    }

    /// The gate this range took in last (the default one if none).
    pub fn held_gate(&self) -> pb::WriteGate {
        *self.write_gate.lock().unwrap()
    }

    /// Applies a `WriteGate` entry: taken in if it is from a later position of the first
    /// range than the gate held. Returns whether it was.
    pub fn apply_write_gate(
        &self,
        index: LogIndex,
        term: Term,
        gate: &pb::WriteGate,
    ) -> pb::GateApplied {
        let mut held = self.write_gate.lock().unwrap();
        let raised = gate.source_index > held.source_index;
        let mut batch = self.keyspace.batch();
        if raised {
            self.local
                .insert(&mut batch, META_WRITE_GATE, gate.encode_to_vec());
        }
        self.put_applied(&mut batch, index, term);
        engine("committing a write gate", batch.commit());
        if raised {
            *held = *gate;
        }
        drop(held);
        self.set_applied(index, term);
        pb::GateApplied {
            raised,
            index: index.0,
        }
    }

    /// The gate a range split off this one starts with: this range's own rules if it
    /// holds the cluster's tables (the first data range), else the gate it holds.
    pub(super) fn gate_for_split(&self) -> pb::WriteGate {
        if self.holds_cluster_tables() {
            self.gate_to_carry()
        } else {
            self.held_gate()
        }
    }

    /// In a merge, the left range keeps the newer of its gate and the right range's
    /// (the first data range keeps its own rules).
    pub(super) fn take_newer_gate(&self, batch: &mut fjall::Batch, right: &MvccStore) {
        if self.holds_cluster_tables() {
            return;
        }
        let right_gate = right.held_gate();
        let mut held = self.write_gate.lock().unwrap();
        if right_gate.source_index > held.source_index {
            self.local
                .insert(batch, META_WRITE_GATE, right_gate.encode_to_vec());
            *held = right_gate;
        }
    }

    /// Replaces the gate and the index of the last rules change with a snapshot's, in
    /// `batch`; returns the index, to be set once the snapshot's tables are in (so a
    /// carrier never reads it with the tables from before).
    pub(super) fn install_gate(
        &self,
        batch: &mut fjall::Batch,
        tables: &pb::SnapshotTables,
    ) -> u64 {
        self.note_rules_change(batch, LogIndex(tables.rules_changed_at));
        let gate = tables.write_gate.unwrap_or_default();
        if gate == pb::WriteGate::default() {
            self.local.remove(batch, META_WRITE_GATE);
        } else {
            self.local
                .insert(batch, META_WRITE_GATE, gate.encode_to_vec());
        }
        *self.write_gate.lock().unwrap() = gate;
        tables.rules_changed_at
    }

    /// Sets the index of the last rules change (after a snapshot's tables are in).
    pub(super) fn set_rules_changed_at(&self, index: u64) {
        self.rules_changed_at.store(index, Ordering::SeqCst);
    }
}
