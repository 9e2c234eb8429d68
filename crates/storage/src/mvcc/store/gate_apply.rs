//! The cluster-wide write rules every data range enforces at apply: a write checked
//! against an older auth store is refused, and nothing that adds data applies while
//! NOSPACE is raised (docs/RANGES.md, "Auth and alarms on a keyspace in ranges").
//!
//! The first data range holds the auth tables and the alarms, and applies their changes.
//! Another range cannot read them at apply: replicas apply the first range and theirs
//! at different paces, so their decisions would differ. Each other range takes the rules
//! into its own log instead (a `WriteGate` entry, proposed by the node after every
//! change) and decides by what its log holds, identically on every replica. A gate
//! carries the first range's applied index it was read at; a range keeps the gate from
//! the latest position, so gates whose proposals race leave it at the newest.

use ostrakon_proto::etcdserverpb::AlarmType;
use ostrakon_proto::peer as pb;
use ostrakon_raft::{LogIndex, Term};
use prost::Message as _;

use super::MvccStore;
use crate::fatal::engine;

/// The gate this range took in last (absent in the first data range).
pub(super) const META_WRITE_GATE: &[u8] = b"write_gate";

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
    /// checked) must be refused as checked against an old one.
    pub fn refuses_auth_revision(&self, checked: u64) -> bool {
        checked != 0 && self.auth_enabled && checked < self.auth_revision
    }
}

pub(super) fn decode_gate(stored: &[u8]) -> pb::WriteGate {
    pb::WriteGate::decode(stored).expect("a stored write gate decodes")
}

impl MvccStore {
    /// The rules this range's writes must pass: its own auth store and alarms (the first
    /// data range's are the cluster's), or else the gate it took in last.
    pub fn write_rules(&self) -> WriteRules {
        let auth = self.auth();
        let gate = self.write_gate.lock().unwrap();
        WriteRules {
            auth_revision: auth.revision().max(gate.auth_revision),
            auth_enabled: auth.enabled() || gate.auth_enabled,
            nospace: self.has_alarm(AlarmType::Nospace) || gate.nospace,
        }
    }

    /// The gate to carry this range's own rules (the first data range's) into the
    /// others, at its current applied position. The position is read first: the rules
    /// read after it are at least as new, so a range that takes in a later gate never
    /// goes back to older rules.
    pub fn gate_to_carry(&self) -> pb::WriteGate {
        let source_index = self.applied_index().0;
        let auth = self.auth();
        pb::WriteGate {
            source_index,
            auth_revision: auth.revision(),
            auth_enabled: auth.enabled(),
            nospace: self.has_alarm(AlarmType::Nospace),
        }
    }

    /// Whether this range still lacks `gate`: it holds a gate from an earlier position
    /// with other rules. (Equal rules from an earlier position enforce the same.)
    pub fn lacks_gate(&self, gate: &pb::WriteGate) -> bool {
        let held = self.write_gate.lock().unwrap();
        held.source_index < gate.source_index
            && WriteRules::of_gate(&held) != WriteRules::of_gate(gate)
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
        pb::GateApplied { raised }
    }

    /// The gate a range split off this one at `index` starts with: this range's own
    /// rules at the split if it holds the cluster's tables (the first data range), else
    /// the gate this range holds.
    pub(super) fn gate_for_split(&self, index: LogIndex) -> pb::WriteGate {
        if self.span().start().is_empty() {
            let mut gate = self.gate_to_carry();
            gate.source_index = index.0;
            gate
        } else {
            self.held_gate()
        }
    }

    /// In a merge, the left range keeps the newer of its gate and the right range's.
    pub(super) fn take_newer_gate(&self, batch: &mut fjall::Batch, right: &MvccStore) {
        let right_gate = right.held_gate();
        let mut held = self.write_gate.lock().unwrap();
        if right_gate.source_index > held.source_index {
            self.local
                .insert(batch, META_WRITE_GATE, right_gate.encode_to_vec());
            *held = right_gate;
        }
    }

    /// Replaces the gate with a snapshot's, in `batch`.
    pub(super) fn install_gate(&self, batch: &mut fjall::Batch, tables: &pb::SnapshotTables) {
        let gate = tables.write_gate.unwrap_or_default();
        if gate == pb::WriteGate::default() {
            self.local.remove(batch, META_WRITE_GATE);
        } else {
            self.local
                .insert(batch, META_WRITE_GATE, gate.encode_to_vec());
        }
        *self.write_gate.lock().unwrap() = gate;
    }
}
