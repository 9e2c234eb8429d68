//! A key-value store with etcd-style revisions.
//!
//! Every mutation that changes the store increments the store-wide revision, so operations
//! on different keys are ordered by it and the history cannot be partitioned by key.

use std::collections::BTreeMap;

use crate::model::Model;

/// A key's value and revision metadata, as etcd reports it in a range response.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyValue {
    /// The stored value.
    pub value: u64,
    /// Store revision of the put that created the key (since its last deletion).
    pub create_revision: u64,
    /// Store revision of the last put to the key.
    // Invariant: create_revision <= mod_revision.
    pub mod_revision: u64,
    /// Number of puts since the key was created; 1 after the creating put.
    pub version: u64,
}

/// An operation on the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EtcdInput {
    /// Write `value` to `key`.
    Put {
        /// The key written.
        key: u64,
        /// The value written.
        value: u64,
    },
    /// Read `key`.
    Get {
        /// The key read.
        key: u64,
    },
    /// Delete `key` if present.
    Delete {
        /// The key deleted.
        key: u64,
    },
    /// A transaction `if mod_revision(key) == expected_mod_revision then put(key, value)`;
    /// an expected revision of 0 means "the key is absent".
    TxnCas {
        /// The key compared and written.
        key: u64,
        /// The mod revision the key must have; 0 for absent.
        expected_mod_revision: u64,
        /// The value written on success.
        value: u64,
    },
}

/// What a store operation returns. `revision` is the store revision in the response
/// header: after the operation's effect, if it had one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EtcdOutput {
    /// The put's new store revision.
    Put {
        /// The store revision created by the put.
        revision: u64,
    },
    /// The key's current value, if any.
    Get {
        /// The key-value pair, None if the key is absent.
        kv: Option<KeyValue>,
        /// The current store revision.
        revision: u64,
    },
    /// How many keys were deleted (0 or 1).
    Delete {
        /// Number of keys deleted.
        deleted: u64,
        /// The store revision after the delete.
        revision: u64,
    },
    /// Whether the comparison held and the put happened.
    TxnCas {
        /// Whether the put happened.
        succeeded: bool,
        /// The store revision after the transaction.
        revision: u64,
    },
}

/// The store: its current revision and every live key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EtcdState {
    /// Current store revision; 1 for an empty store, as in etcd.
    pub revision: u64,
    /// Live keys. A BTreeMap rather than a HashMap so that the state is hashable.
    // Invariant: every mod_revision <= revision.
    pub kvs: BTreeMap<u64, KeyValue>,
}

/// A key-value store with etcd revisions; see the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct EtcdKvModel;

impl EtcdState {
    fn put(&self, key: u64, value: u64) -> EtcdState {
        let revision = self.revision + 1;
        let kv = match self.kvs.get(&key) {
            Some(old) => KeyValue {
                value,
                create_revision: old.create_revision,
                mod_revision: revision,
                version: old.version + 1,
            },
            None => KeyValue {
                value,
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
        };
        let mut next = self.clone();
        next.revision = revision;
        next.kvs.insert(key, kv);
        next
    }

    /// The state after deleting `key` and the number of keys deleted.
    fn delete(&self, key: u64) -> (EtcdState, u64) {
        if !self.kvs.contains_key(&key) {
            // etcd does not create a revision for a delete that removes nothing.
            return (self.clone(), 0);
        }
        let mut next = self.clone();
        next.revision += 1;
        next.kvs.remove(&key);
        (next, 1)
    }

    fn mod_revision(&self, key: u64) -> u64 {
        self.kvs.get(&key).map_or(0, |kv| kv.mod_revision)
    }

    /// Applies `input` and returns the new state with the output etcd would answer: the
    /// sequential reference that a test or simulator can compute expected outputs with.
    pub fn apply(&self, input: &EtcdInput) -> (EtcdState, EtcdOutput) {
        let (next, output) = match *input {
            EtcdInput::Put { key, value } => {
                let next = self.put(key, value);
                let revision = next.revision;
                (next, EtcdOutput::Put { revision })
            }
            EtcdInput::Get { key } => {
                let kv = self.kvs.get(&key).cloned();
                let revision = self.revision;
                (self.clone(), EtcdOutput::Get { kv, revision })
            }
            EtcdInput::Delete { key } => {
                let (next, deleted) = self.delete(key);
                let revision = next.revision;
                (next, EtcdOutput::Delete { deleted, revision })
            }
            EtcdInput::TxnCas {
                key,
                expected_mod_revision,
                value,
            } => {
                let succeeded = self.mod_revision(key) == expected_mod_revision;
                let next = if succeeded {
                    self.put(key, value)
                } else {
                    self.clone()
                };
                let revision = next.revision;
                (
                    next,
                    EtcdOutput::TxnCas {
                        succeeded,
                        revision,
                    },
                )
            }
        };
        assert!(next.revision >= self.revision, "revisions never go back");
        (next, output)
    }
}

impl Model for EtcdKvModel {
    type Input = EtcdInput;
    type Output = EtcdOutput;
    type State = EtcdState;

    fn init(&self) -> EtcdState {
        EtcdState {
            revision: 1,
            kvs: BTreeMap::new(),
        }
    }

    fn step(
        &self,
        state: &EtcdState,
        input: &EtcdInput,
        output: Option<&EtcdOutput>,
    ) -> Option<EtcdState> {
        // Every operation is deterministic, so the model computes the one possible output
        // and the observation must equal it.
        let (next, expected) = state.apply(input);
        let Some(observed) = output else {
            return Some(next);
        };
        assert_eq!(
            std::mem::discriminant(observed),
            std::mem::discriminant(&expected),
            "output {observed:?} does not answer input {input:?}"
        );
        (*observed == expected).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: u64, create_revision: u64, mod_revision: u64, version: u64) -> KeyValue {
        KeyValue {
            value,
            create_revision,
            mod_revision,
            version,
        }
    }

    /// Runs inputs sequentially from the empty store and returns the outputs.
    fn run(inputs: &[EtcdInput]) -> Vec<EtcdOutput> {
        let mut state = EtcdKvModel.init();
        inputs
            .iter()
            .map(|input| {
                let (next, output) = state.apply(input);
                assert_eq!(
                    EtcdKvModel.step(&state, input, Some(&output)),
                    Some(next.clone())
                );
                state = next;
                output
            })
            .collect()
    }

    #[test]
    fn revisions_follow_etcd() {
        use EtcdInput as I;
        use EtcdOutput as O;
        let outputs = run(&[
            I::Get { key: 1 },
            I::Put { key: 1, value: 10 },
            I::Put { key: 1, value: 11 },
            I::Delete { key: 2 },
            I::Get { key: 1 },
            I::TxnCas {
                key: 1,
                expected_mod_revision: 2,
                value: 12,
            },
            I::TxnCas {
                key: 1,
                expected_mod_revision: 3,
                value: 12,
            },
            I::Delete { key: 1 },
            I::TxnCas {
                key: 1,
                expected_mod_revision: 0,
                value: 13,
            },
            I::Get { key: 1 },
        ]);
        let expected = vec![
            O::Get {
                kv: None,
                revision: 1,
            },
            O::Put { revision: 2 },
            O::Put { revision: 3 },
            // Deleting an absent key creates no revision.
            O::Delete {
                deleted: 0,
                revision: 3,
            },
            O::Get {
                kv: Some(kv(11, 2, 3, 2)),
                revision: 3,
            },
            O::TxnCas {
                succeeded: false,
                revision: 3,
            },
            O::TxnCas {
                succeeded: true,
                revision: 4,
            },
            O::Delete {
                deleted: 1,
                revision: 5,
            },
            // After a delete the key is recreated with a fresh create revision and version.
            O::TxnCas {
                succeeded: true,
                revision: 6,
            },
            O::Get {
                kv: Some(kv(13, 6, 6, 1)),
                revision: 6,
            },
        ];
        assert_eq!(outputs, expected);
    }

    #[test]
    fn rejects_wrong_revision_and_applies_unknown() {
        let init = EtcdKvModel.init();
        let put = EtcdInput::Put { key: 1, value: 5 };
        assert_eq!(
            EtcdKvModel.step(&init, &put, Some(&EtcdOutput::Put { revision: 3 })),
            None
        );
        let after = EtcdKvModel
            .step(&init, &put, None)
            .expect("unknown always applies");
        assert_eq!(after.revision, 2);
        assert_eq!(after.kvs[&1], kv(5, 2, 2, 1));
    }
}
