//! The simulated state machine: a map of registers and the timestamp oracle's persisted
//! bound (the real code of the range layer), and the commands that change them.

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
            },
            2 => Command::Cas {
                key: u64_at(1),
                new: u64_at(9),
                expected: (data[17] == 1).then(|| u64_at(18)),
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
        Command::Split { .. } => panic!("a split is applied with apply_split"),
    }
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
    state.descriptor = Some(halves.left);
    Ok(KvState {
        descriptor: Some(halves.right),
        registers: moved,
        oracle_bound: OracleBound::default(),
    })
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
            state.registers.insert(key, key * 10);
        }
        let split = Command::Split {
            at: 5,
            right: 2,
            expected_generation: 1,
        };
        let right = apply_split(&mut state, split).unwrap();
        assert_eq!(state.registers.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(right.registers.keys().copied().collect::<Vec<_>>(), [5, 9]);
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
