//! The simulated state machine: a map of versioned registers and the timestamp oracle's
//! persisted bound (the real code of the range layer), and the commands that change
//! them.
//!
//! A register write carries its revision, a timestamp its client took from the oracle
//! (as a transaction's coordinator takes one). A range applies writes in rising
//! revisions only: one at or below the range's last is refused, identically on every
//! replica, as the node refuses a stale revision. Every version is kept, so a read at a
//! revision can be checked against the final history.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
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
        Command::Split { .. } => panic!("a split is applied with apply_split"),
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
            records: Default::default(),
        },
        oracle_bound: OracleBound::default(),
    })
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
