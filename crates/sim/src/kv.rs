//! The simulated state machine: a map of registers, and the commands that change it.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

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
            tag => panic!("unknown command tag {tag}"),
        }
    }
}

/// The registers, as of some applied index.
pub type KvState = BTreeMap<u64, u64>;

/// Applies `command`; returns whether it took effect (always for Put).
pub fn apply(state: &mut KvState, command: Command) -> bool {
    match command {
        Command::Put { key, value } => {
            state.insert(key, value);
            true
        }
        Command::Cas { key, expected, new } => {
            if state.get(&key).copied() == expected {
                state.insert(key, new);
                true
            } else {
                false
            }
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
        ] {
            assert_eq!(Command::decode(&command.encode()), command);
        }
    }

    #[test]
    fn cas_requires_the_expected_value() {
        let mut state = KvState::new();
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
        assert_eq!(state.get(&1), Some(&2));
    }
}
