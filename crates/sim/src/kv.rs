//! The simulated state machine: a map of registers and the timestamp oracle's persisted
//! bound (the real code of the range layer), and the commands that change them.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use ostrakon_ranges::{OracleBound, RangeDescriptor, Timestamp};

/// A write command, replicated through raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value`.
    Put {
        /// The register.
        key: u64,
        /// The new value (unique per write in the simulator).
        value: u64,
    },
    /// Set `key` to `new` if it currently holds `expected`.
    Cas {
        /// The register.
        key: u64,
        /// The value required (None: never written).
        expected: Option<u64>,
        /// The value to write.
        new: u64,
    },
    /// Raise the timestamp oracle's persisted bound (proposed by the oracle's leader).
    OracleBound {
        /// The new bound.
        bound: u64,
    },
}

impl Command {
    /// The wire form: a tag byte then fixed-width fields.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(26);
        match *self {
            Command::Put { key, value } => {
                buf.put_u8(1);
                buf.put_u64(key);
                buf.put_u64(value);
            }
            Command::Cas { key, expected, new } => {
                buf.put_u8(2);
                buf.put_u64(key);
                buf.put_u64(new);
                buf.put_u8(expected.is_some() as u8);
                buf.put_u64(expected.unwrap_or(0));
            }
            Command::OracleBound { bound } => {
                buf.put_u8(3);
                buf.put_u64(bound);
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
            },
            2 => Command::Cas {
                key: u64_at(1),
                new: u64_at(9),
                expected: (data[17] == 1).then(|| u64_at(18)),
            },
            3 => Command::OracleBound { bound: u64_at(1) },
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
    /// The registers.
    pub registers: BTreeMap<u64, u64>,
    /// The timestamp oracle's persisted bound (in the meta range).
    pub oracle_bound: OracleBound,
}

/// The byte key a register is routed by (its big-endian bytes, so that ranges of
/// registers are spans of keys).
pub fn routing_key(register: u64) -> [u8; 8] {
    register.to_be_bytes()
}

/// Applies `command`; returns whether it took effect (always for Put).
pub fn apply(state: &mut KvState, command: Command) -> bool {
    match command {
        Command::Put { key, value } => {
            state.registers.insert(key, value);
            true
        }
        Command::Cas { key, expected, new } => {
            if state.registers.get(&key).copied() == expected {
                state.registers.insert(key, new);
                true
            } else {
                false
            }
        }
        Command::OracleBound { bound } => {
            state.oracle_bound.apply(Timestamp(bound));
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for command in [
            Command::Put { key: 3, value: 99 },
            Command::Cas {
                key: 1,
                expected: None,
                new: 5,
            },
            Command::Cas {
                key: 1,
                expected: Some(0),
                new: 5,
            },
            Command::OracleBound { bound: 1 << 40 },
        ] {
            assert_eq!(Command::decode(&command.encode()), command);
        }
    }

    #[test]
    fn cas_requires_the_expected_value() {
        let mut state = KvState::default();
        assert!(!apply(
            &mut state,
            Command::Cas {
                key: 1,
                expected: Some(1),
                new: 2
            }
        ));
        assert!(apply(
            &mut state,
            Command::Cas {
                key: 1,
                expected: None,
                new: 2
            }
        ));
        assert_eq!(state.registers.get(&1), Some(&2));
    }
}
