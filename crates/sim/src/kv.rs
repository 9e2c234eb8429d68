//! The simulated state machine: a map of versioned registers and the timestamp oracle's
//! persisted bound (the real code of the range layer), and the commands that change
//! them.
//!
//! A register write carries its revision, a timestamp its client took from the oracle
//! (as a transaction's coordinator takes one). A range applies writes in rising
//! revisions only: one at or below the range's last is refused, identically on every
//! replica, as the node refuses a stale revision. Every version is kept, so a read at a
//! revision can be checked against the final history.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use ostrakon_ranges::merge::{FreezeMark, LeftRange};
use ostrakon_ranges::{
    OracleBound, RangeDescriptor, RangeId, SplitRefused, SplitRequest, Timestamp,
};

/// A write command, replicated through raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The register.
        key: u64,
        /// The new value (unique per write in the simulator).
        value: u64,
        /// The write's revision (0: unversioned, the simulator's own progress probe).
        revision: u64,
    },
    /// Set `key` to `new` if it currently holds `expected`.
    Cas {
        /// The register.
        key: u64,
        /// The value required (None: never written).
        expected: Option<u64>,
        /// The value to write.
        new: u64,
        /// The write's revision, as for `Put`.
        revision: u64,
    },
    /// Raise the timestamp oracle's persisted bound (proposed by the oracle's leader).
    OracleBound {
        /// The new bound.
        bound: u64,
    },
    /// Split the range: registers from `at` on move to the new range `right`.
    Split {
        /// The first register of the right half.
        at: u64,
        /// The new range's id.
        right: u64,
        /// The range's generation the proposer saw.
        expected_generation: u64,
    },
    /// In the right range of a merge: freeze for a merge into `left` (from this entry on
    /// the range applies nothing but its thaw).
    Freeze {
        /// The range it is to be merged into.
        left: u64,
    },
    /// In a frozen range: thaw, if frozen by the freeze at `freeze_index` (the merge was
    /// fenced off in the left range first).
    Unfreeze {
        /// The freeze's log index.
        freeze_index: u64,
    },
    /// In the left range: take over the right range, frozen at `freeze_index`.
    Merge(MergeCommand),
    /// In the left range: the merge of `right` frozen at `freeze_index` is given up (no
    /// effect if it applied already; refused if it comes later).
    FenceMerge {
        /// The right range.
        right: u64,
        /// Its freeze's log index.
        freeze_index: u64,
    },
}

/// What a merge command names: the right range as it froze, and its membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeCommand {
    /// The right range's id.
    pub right: u64,
    /// Where it froze.
    pub freeze_index: u64,
    /// See `freeze_index`.
    pub freeze_term: u64,
    /// Its first register.
    pub right_start: u64,
    /// The first register after it (None: the end of the keyspace).
    pub right_end: Option<u64>,
    /// Its generation.
    pub right_generation: u64,
    /// Its membership (`conf_fingerprint`).
    pub conf: u64,
}

impl MergeCommand {
    /// The right range as the merge names it.
    pub fn right_descriptor(&self) -> RangeDescriptor {
        RangeDescriptor::new(
            RangeId(self.right),
            routing_key(self.right_start).to_vec(),
            self.right_end.map(|end| routing_key(end).to_vec()),
            self.right_generation,
        )
    }
}

/// A membership as one number, for a merge command to name it (FNV-1a over the voters,
/// the outgoing voters and the learners, each list ended).
pub fn conf_fingerprint(conf: &ostrakon_raft::ConfState) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |value: u64| {
        for byte in value.to_be_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for list in [&conf.voters, &conf.voters_outgoing, &conf.learners] {
        for id in list.iter() {
            mix(id.0);
        }
        mix(u64::MAX);
    }
    hash
}

impl Command {
    /// A register write's revision (None: not a register write, or unversioned).
    pub fn revision(&self) -> Option<u64> {
        match *self {
            Command::Put { revision, .. } | Command::Cas { revision, .. } if revision != 0 => {
                Some(revision)
            }
            _ => None,
        }
    }

    /// The register a write is about.
    pub fn key(&self) -> Option<u64> {
        match *self {
            Command::Put { key, .. } | Command::Cas { key, .. } => Some(key),
            _ => None,
        }
    }

    /// A register write at `revision`.
    pub fn with_revision(self, revision: u64) -> Command {
        match self {
            Command::Put { key, value, .. } => Command::Put {
                key,
                value,
                revision,
            },
            Command::Cas {
                key, expected, new, ..
            } => Command::Cas {
                key,
                expected,
                new,
                revision,
            },
            other => panic!("{other:?} is not a register write"),
        }
    }

    /// The wire form: a tag byte then fixed-width fields.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(34);
        match *self {
            Command::Put {
                key,
                value,
                revision,
            } => {
                buf.put_u8(1);
                buf.put_u64(key);
                buf.put_u64(value);
                buf.put_u64(revision);
            }
            Command::Cas {
                key,
                expected,
                new,
                revision,
            } => {
                buf.put_u8(2);
                buf.put_u64(key);
                buf.put_u64(new);
                buf.put_u8(expected.is_some() as u8);
                buf.put_u64(expected.unwrap_or(0));
                buf.put_u64(revision);
            }
            Command::OracleBound { bound } => {
                buf.put_u8(3);
                buf.put_u64(bound);
            }
            Command::Split {
                at,
                right,
                expected_generation,
            } => {
                buf.put_u8(4);
                buf.put_u64(at);
                buf.put_u64(right);
                buf.put_u64(expected_generation);
            }
            Command::Freeze { left } => {
                buf.put_u8(5);
                buf.put_u64(left);
            }
            Command::Unfreeze { freeze_index } => {
                buf.put_u8(6);
                buf.put_u64(freeze_index);
            }
            Command::Merge(merge) => {
                buf.put_u8(7);
                for field in [
                    merge.right,
                    merge.freeze_index,
                    merge.freeze_term,
                    merge.right_start,
                    merge.right_end.unwrap_or(0),
                    merge.right_generation,
                    merge.conf,
                ] {
                    buf.put_u64(field);
                }
                buf.put_u8(merge.right_end.is_some() as u8);
            }
            Command::FenceMerge {
                right,
                freeze_index,
            } => {
                buf.put_u8(8);
                buf.put_u64(right);
                buf.put_u64(freeze_index);
            }
        }
        buf.freeze()
    }

    /// Parses the wire form. The simulator only decodes what it encoded: malformed
    /// input is a bug.
    pub fn decode(data: &[u8]) -> Command {
        let u64_at = |offset: usize| {
            u64::from_be_bytes(data[offset..offset + 8].try_into().expect("8 bytes"))
        };
        match data[0] {
            1 => Command::Put {
                key: u64_at(1),
                value: u64_at(9),
                revision: u64_at(17),
            },
            2 => Command::Cas {
                key: u64_at(1),
                new: u64_at(9),
                expected: (data[17] == 1).then(|| u64_at(18)),
                revision: u64_at(26),
            },
            3 => Command::OracleBound { bound: u64_at(1) },
            4 => Command::Split {
                at: u64_at(1),
                right: u64_at(9),
                expected_generation: u64_at(17),
            },
            5 => Command::Freeze { left: u64_at(1) },
            6 => Command::Unfreeze {
                freeze_index: u64_at(1),
            },
            7 => Command::Merge(MergeCommand {
                right: u64_at(1),
                freeze_index: u64_at(9),
                freeze_term: u64_at(17),
                right_start: u64_at(25),
                right_end: (data[57] == 1).then(|| u64_at(33)),
                right_generation: u64_at(41),
                conf: u64_at(49),
            }),
            8 => Command::FenceMerge {
                right: u64_at(1),
                freeze_index: u64_at(9),
            },
            tag => panic!("unknown command tag {tag}"),
        }
    }
}

/// A range's state machine, as of some applied index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    /// The span the range holds (None: the meta range, which holds no registers, or a
    /// replica that has not received its first snapshot).
    pub descriptor: Option<RangeDescriptor>,
    /// The registers' latest values.
    pub registers: BTreeMap<u64, u64>,
    /// Every version of the registers: (register, revision) → value.
    pub versions: BTreeMap<(u64, u64), u64>,
    /// The revision of the last write applied (0: none yet).
    pub last_revision: u64,
    /// Transactions across ranges: this range's locks and records.
    pub txns: crate::txn_kv::TxnState,
    /// The timestamp oracle's persisted bound (in the meta range).
    pub oracle_bound: OracleBound,
    /// Frozen for a merge into its left neighbour: it applies nothing but its thaw.
    pub frozen: Option<FreezeMark>,
    /// Merges given up (right range, freeze index): refused if they come later.
    pub fences: BTreeSet<(u64, u64)>,
    /// The ranges merged into this one (their transaction records are here now).
    pub absorbed: BTreeSet<u64>,
}

/// The byte key a register is routed by (its big-endian bytes, so that ranges of
/// registers are spans of keys).
pub fn routing_key(register: u64) -> [u8; 8] {
    register.to_be_bytes()
}

/// A write whose revision is not above the range's last: refused, with no effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleRevision;

/// Applies `command`; returns whether it took effect (always for Put, unless stale).
pub fn apply(state: &mut KvState, command: Command) -> Result<bool, StaleRevision> {
    match command {
        Command::Put {
            key,
            value,
            revision,
        } => {
            write(state, key, value, revision)?;
            Ok(true)
        }
        Command::Cas {
            key,
            expected,
            new,
            revision,
        } => {
            if revision != 0 && revision <= state.last_revision {
                return Err(StaleRevision);
            }
            if state.registers.get(&key).copied() == expected {
                write(state, key, new, revision)?;
                Ok(true)
            } else {
                Ok(false)
            }
        }
        Command::OracleBound { bound } => {
            state.oracle_bound.apply(Timestamp(bound));
            Ok(true)
        }
        Command::Split { .. }
        | Command::Freeze { .. }
        | Command::Unfreeze { .. }
        | Command::Merge(_)
        | Command::FenceMerge { .. } => {
            panic!("{command:?} is a command of the range layer, applied apart")
        }
    }
}

fn write(state: &mut KvState, key: u64, value: u64, revision: u64) -> Result<(), StaleRevision> {
    if revision != 0 {
        if revision <= state.last_revision {
            return Err(StaleRevision);
        }
        state.last_revision = revision;
        state.versions.insert((key, revision), value);
    }
    state.registers.insert(key, value);
    Ok(())
}

/// The value of `key` as of `revision`: its latest version at or below it.
pub fn value_at(versions: &BTreeMap<(u64, u64), u64>, key: u64, revision: u64) -> Option<u64> {
    versions
        .range((key, 0)..=(key, revision))
        .next_back()
        .map(|(_, value)| *value)
}

/// Applies a split command: the range keeps the registers before the split key and
/// hands the others to the new range, whose first state this returns (the same on
/// every replica), or refuses the split as every replica does.
pub fn apply_split(state: &mut KvState, command: Command) -> Result<KvState, SplitRefused> {
    let Command::Split {
        at,
        right,
        expected_generation,
    } = command
    else {
        panic!("not a split: {command:?}");
    };
    let current = state
        .descriptor
        .as_ref()
        .expect("only data ranges split, and only once they hold a span");
    let request = SplitRequest {
        at: routing_key(at).to_vec(),
        right: RangeId(right),
        expected_generation,
    };
    let halves = ostrakon_ranges::split(current, &request)?;
    let moved = state.registers.split_off(&at);
    let moved_versions = state.versions.split_off(&(at, 0));
    let moved_locks = state.txns.locks.split_off(&routing_key(at));
    state.descriptor = Some(halves.left);
    Ok(KvState {
        descriptor: Some(halves.right),
        registers: moved,
        versions: moved_versions,
        // Writes in flight to the moved keys were fetched their revisions before the
        // split applied: the right half refuses those the left would have.
        last_revision: state.last_revision,
        // The records stay with the range's id, where transactions ask for them.
        txns: crate::txn_kv::TxnState {
            locks: moved_locks,
            records: state.txns.records.fresh(),
            forgotten: 0,
            forgotten_committed: Vec::new(),
        },
        oracle_bound: OracleBound::default(),
        frozen: None,
        fences: BTreeSet::new(),
        absorbed: BTreeSet::new(),
    })
}

/// Why a range did not freeze (alike on every replica).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezeRefused {
    /// Frozen already (for this merge, or another).
    Frozen,
    /// A transaction across ranges holds keys here: they must stay put until it ends.
    Locked,
}

/// Applies a freeze for a merge into `left`, at the entry (`index`, `term`).
pub fn apply_freeze(
    state: &mut KvState,
    left: u64,
    index: u64,
    term: u64,
) -> Result<FreezeMark, FreezeRefused> {
    if state.frozen.is_some() {
        return Err(FreezeRefused::Frozen);
    }
    if !state.txns.locks.is_empty() {
        return Err(FreezeRefused::Locked);
    }
    let mark = FreezeMark {
        left: RangeId(left),
        index,
        term,
    };
    state.frozen = Some(mark);
    Ok(mark)
}

/// Applies a thaw: returns whether the range was frozen by that freeze (and thaws).
pub fn apply_unfreeze(state: &mut KvState, freeze_index: u64) -> bool {
    let thaws = state.frozen.is_some_and(|mark| mark.index == freeze_index);
    if thaws {
        state.frozen = None;
    }
    thaws
}

/// Applies a fence: from now on the merge is refused, unless it applied already.
/// Returns whether it applied already (the range absorbed the right one).
pub fn apply_fence(state: &mut KvState, right: u64, freeze_index: u64) -> bool {
    if state.absorbed.contains(&right) {
        return true;
    }
    state.fences.insert((right, freeze_index));
    false
}

/// What the left range's log says about a merge, for the range layer's decision.
pub fn left_facts(
    state: &KvState,
    conf: &ostrakon_raft::ConfState,
    merge: &MergeCommand,
) -> LeftRange {
    let descriptor = state
        .descriptor
        .as_ref()
        .expect("only data ranges merge, and only once they hold a span");
    LeftRange {
        id: descriptor.id,
        absorbed_right: state.absorbed.contains(&merge.right),
        frozen: state.frozen.is_some(),
        holds_locks: !state.txns.locks.is_empty(),
        fenced: state.fences.contains(&(merge.right, merge.freeze_index)),
        ends_where_right_starts: descriptor.end.as_deref()
            == Some(routing_key(merge.right_start).as_slice()),
        same_membership: conf_fingerprint(conf) == merge.conf,
    }
}

/// Applies a merge the range layer decided to apply: the left range takes over the
/// right one's registers, versions and records (as its replica here stands), covers
/// both spans one generation above both, and keeps the higher revision.
pub fn apply_merge(left: &mut KvState, merge: &MergeCommand, right: KvState) {
    let right_descriptor = merge.right_descriptor();
    let current = left.descriptor.as_ref().expect("a data range");
    let merged = ostrakon_ranges::merge::merged(current, &right_descriptor);
    if right.frozen.is_some() {
        assert!(
            right.txns.locks.is_empty(),
            "a frozen range holds no lock (it refused to freeze)"
        );
    }
    let in_span = |key: &u64| right_descriptor.contains(&routing_key(*key));
    left.registers
        .extend(right.registers.into_iter().filter(|(key, _)| in_span(key)));
    left.versions.extend(
        right
            .versions
            .into_iter()
            .filter(|((key, _), _)| in_span(key)),
    );
    left.last_revision = left.last_revision.max(right.last_revision);
    left.txns.records.absorb(right.txns.records);
    left.txns.forgotten += right.txns.forgotten;
    left.txns
        .forgotten_committed
        .extend(right.txns.forgotten_committed);
    left.absorbed.insert(merge.right);
    left.absorbed.extend(right.absorbed);
    left.descriptor = Some(merged);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for command in [
            Command::Put {
                key: 3,
                value: 99,
                revision: 7,
            },
            Command::Cas {
                key: 1,
                expected: None,
                new: 5,
                revision: 0,
            },
            Command::Cas {
                key: 1,
                expected: Some(0),
                new: 5,
                revision: 1 << 40,
            },
            Command::OracleBound { bound: 1 << 40 },
            Command::Split {
                at: 7,
                right: 3,
                expected_generation: 2,
            },
            Command::Freeze { left: 4 },
            Command::Unfreeze { freeze_index: 12 },
            Command::FenceMerge {
                right: 5,
                freeze_index: 9,
            },
            Command::Merge(MergeCommand {
                right: 5,
                freeze_index: 9,
                freeze_term: 3,
                right_start: 4,
                right_end: Some(8),
                right_generation: 6,
                conf: 0xdead_beef,
            }),
            Command::Merge(MergeCommand {
                right: 5,
                freeze_index: 9,
                freeze_term: 3,
                right_start: 4,
                right_end: None,
                right_generation: 6,
                conf: 1,
            }),
        ] {
            assert_eq!(Command::decode(&command.encode()), command);
        }
    }

    #[test]
    fn cas_requires_the_expected_value() {
        let mut state = KvState::default();
        let cas = |expected, revision| Command::Cas {
            key: 1,
            expected,
            new: 2,
            revision,
        };
        assert_eq!(apply(&mut state, cas(Some(1), 5)), Ok(false));
        assert_eq!(apply(&mut state, cas(None, 5)), Ok(true));
        assert_eq!(state.registers.get(&1), Some(&2));
    }

    #[test]
    fn writes_apply_in_rising_revisions_and_every_version_is_kept() {
        let mut state = KvState::default();
        let put = |value, revision| Command::Put {
            key: 1,
            value,
            revision,
        };
        assert_eq!(apply(&mut state, put(10, 5)), Ok(true));
        assert_eq!(apply(&mut state, put(11, 5)), Err(StaleRevision));
        assert_eq!(apply(&mut state, put(12, 3)), Err(StaleRevision));
        assert_eq!(apply(&mut state, put(13, 9)), Ok(true));
        assert_eq!(state.registers.get(&1), Some(&13));
        assert_eq!(value_at(&state.versions, 1, 4), None);
        assert_eq!(value_at(&state.versions, 1, 5), Some(10));
        assert_eq!(value_at(&state.versions, 1, 8), Some(10));
        assert_eq!(value_at(&state.versions, 1, 9), Some(13));
        assert_eq!(value_at(&state.versions, 2, 9), None);
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn a_split_moves_the_registers_from_its_key_on() {
        let range = RangeDescriptor::new(RangeId(1), Vec::new(), None, 1);
        let mut state = KvState {
            descriptor: Some(range),
            ..KvState::default()
        };
        for key in [1, 5, 9] {
            let put = Command::Put {
                key,
                value: key * 10,
                revision: key,
            };
            apply(&mut state, put).unwrap();
        }
        let split = Command::Split {
            at: 5,
            right: 2,
            expected_generation: 1,
        };
        let right = apply_split(&mut state, split).unwrap();
        assert_eq!(state.registers.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(right.registers.keys().copied().collect::<Vec<_>>(), [5, 9]);
        assert_eq!(value_at(&right.versions, 5, 9), Some(50));
        assert_eq!(value_at(&state.versions, 5, 9), None);
        assert_eq!(right.last_revision, 9);
        assert!(state.descriptor.unwrap().contains(&routing_key(4)));
        assert!(right.descriptor.unwrap().contains(&routing_key(5)));
        // Proposed against the old generation again: refused.
        let mut again = KvState {
            descriptor: Some(RangeDescriptor::new(RangeId(1), Vec::new(), None, 2)),
            ..KvState::default()
        };
        assert!(apply_split(&mut again, split).is_err());
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;
    use ostrakon_raft::{ConfState, NodeId};

    /// A range split at register 5 into ranges 1 and 2, each written once.
    fn split_pair() -> (KvState, KvState) {
        let range = RangeDescriptor::new(RangeId(1), Vec::new(), None, 1);
        let mut left = KvState {
            descriptor: Some(range),
            ..KvState::default()
        };
        for (key, revision) in [(1, 10), (7, 20)] {
            let put = Command::Put {
                key,
                value: key * 100,
                revision,
            };
            apply(&mut left, put).unwrap();
        }
        let split = Command::Split {
            at: 5,
            right: 2,
            expected_generation: 1,
        };
        let right = apply_split(&mut left, split).unwrap();
        (left, right)
    }

    fn merge_of(right: &KvState, freeze_index: u64, conf: &ConfState) -> MergeCommand {
        let descriptor = right.descriptor.as_ref().unwrap();
        MergeCommand {
            right: descriptor.id.0,
            freeze_index,
            freeze_term: 1,
            right_start: 5,
            right_end: None,
            right_generation: descriptor.generation,
            conf: conf_fingerprint(conf),
        }
    }

    #[test]
    fn a_merge_takes_over_the_frozen_right_range_whole() {
        let (mut left, mut right) = split_pair();
        let put = Command::Put {
            key: 8,
            value: 800,
            revision: 30,
        };
        apply(&mut right, put).unwrap();
        let mark = apply_freeze(&mut right, 1, 4, 1).unwrap();
        assert_eq!(
            apply_freeze(&mut right, 1, 5, 1),
            Err(FreezeRefused::Frozen)
        );
        let conf = ConfState::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let merge = merge_of(&right, mark.index, &conf);
        let facts = left_facts(&left, &conf, &merge);
        assert!(facts.ends_where_right_starts && facts.same_membership && !facts.fenced);
        apply_merge(&mut left, &merge, right);
        let merged = left.descriptor.clone().unwrap();
        assert_eq!(
            merged,
            RangeDescriptor::new(RangeId(1), Vec::new(), None, 3)
        );
        assert_eq!(
            left.registers.keys().copied().collect::<Vec<_>>(),
            [1, 7, 8]
        );
        assert_eq!(value_at(&left.versions, 8, 30), Some(800));
        assert_eq!(value_at(&left.versions, 7, 25), Some(700));
        assert_eq!(left.last_revision, 30, "the higher revision of the two");
        assert_eq!(left.absorbed, BTreeSet::from([2]));
        // A fence that comes after the merge finds it applied.
        assert!(apply_fence(&mut left, 2, mark.index));
        assert!(left.fences.is_empty());
    }

    #[test]
    fn a_fenced_merge_is_refused_and_the_right_range_thaws() {
        let (mut left, mut right) = split_pair();
        let mark = apply_freeze(&mut right, 1, 4, 1).unwrap();
        assert!(!apply_fence(&mut left, 2, mark.index));
        let conf = ConfState::with_voters([NodeId(1)]);
        let merge = merge_of(&right, mark.index, &conf);
        assert!(left_facts(&left, &conf, &merge).fenced);
        // Another membership: refused as well.
        let other = ConfState::with_voters([NodeId(1), NodeId(2)]);
        assert!(!left_facts(&left, &other, &merge).same_membership);
        assert!(
            !apply_unfreeze(&mut right, mark.index + 1),
            "another freeze's thaw"
        );
        assert!(apply_unfreeze(&mut right, mark.index));
        assert_eq!(right.frozen, None);
    }

    #[test]
    fn a_range_a_transaction_holds_does_not_freeze() {
        let (_, mut right) = split_pair();
        let lock = ostrakon_ranges::txn::Lock {
            txn: ostrakon_ranges::txn::TxnId {
                coordinator: NodeId(1),
                number: 1,
                born: 0,
            },
            revision: 50,
            primary: RangeId(2),
            spans: vec![ostrakon_ranges::txn::KeySpan::key(&routing_key(7))],
        };
        right.txns.locks.prepare(lock, right.last_revision).unwrap();
        assert_eq!(
            apply_freeze(&mut right, 1, 4, 1),
            Err(FreezeRefused::Locked)
        );
    }
}
