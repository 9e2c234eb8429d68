//! Helpers shared by the integration tests: a tiny PRNG, operation builders and random
//! history generators that produce linearizable histories from a real sequential run.
#![allow(dead_code)] // Each test binary uses a different subset.

use ostrakon_check::{
    EtcdInput, EtcdKvModel, EtcdOutput, EtcdState, Model, Operation, Outcome, RegisterInput,
    RegisterOutput,
};

/// splitmix64: small, fast and good enough to drive test generators; a seed reproduces a
/// history exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

pub fn ok<I, O>(
    client: u64,
    input: I,
    invoked_at: u64,
    completed_at: u64,
    output: O,
) -> Operation<I, O> {
    Operation {
        client,
        input,
        invoked_at,
        completed_at: Some(completed_at),
        outcome: Outcome::Ok(output),
    }
}

pub fn failed<I, O>(client: u64, input: I, invoked_at: u64, completed_at: u64) -> Operation<I, O> {
    Operation {
        client,
        input,
        invoked_at,
        completed_at: Some(completed_at),
        outcome: Outcome::Failed,
    }
}

pub fn unknown<I, O>(client: u64, input: I, invoked_at: u64) -> Operation<I, O> {
    Operation {
        client,
        input,
        invoked_at,
        completed_at: None,
        outcome: Outcome::Unknown,
    }
}

/// Shape of a random concurrent history.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub clients: u64,
    pub ops_per_client: usize,
    pub keys: u64,
    pub failed_per_mille: u64,
    pub unknown_per_mille: u64,
}

/// How an operation ended in the generator's sequential run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ok,
    Failed,
    /// The client never learned the outcome; `applied` says whether it took effect.
    Unknown {
        applied: bool,
    },
}

/// An operation's timing before its input is chosen. Invocations and completions are even,
/// linearization points odd, so each point lies strictly inside its interval and two ops
/// with the same point overlap (any order of them is a valid linearization).
struct Slot {
    client: u64,
    invoked_at: u64,
    linearized_at: u64,
    completed_at: u64,
    fate: Fate,
}

fn slots(rng: &mut Rng, shape: Shape) -> Vec<Slot> {
    let mut slots = Vec::new();
    for client in 0..shape.clients {
        let mut cursor = 0;
        for _ in 0..shape.ops_per_client {
            let invoked_at = cursor + 2 * rng.below(4);
            let linearized_at = invoked_at + 1 + 2 * rng.below(5);
            let completed_at = linearized_at + 1 + 2 * rng.below(5);
            let fate = if rng.chance(shape.failed_per_mille) {
                Fate::Failed
            } else if rng.chance(shape.unknown_per_mille) {
                Fate::Unknown {
                    applied: rng.chance(500),
                }
            } else {
                Fate::Ok
            };
            slots.push(Slot {
                client,
                invoked_at,
                linearized_at,
                completed_at,
                fate,
            });
            // The next op may start exactly when this one completes, exercising the rule
            // that a completion at t precedes an invocation at t.
            cursor = completed_at;
        }
    }
    // Execute in linearization order; the client/invocation tie-break only makes the order
    // deterministic.
    slots.sort_by_key(|slot| (slot.linearized_at, slot.client, slot.invoked_at));
    slots
}

fn finish<I, O>(slot: &Slot, input: I, output: O) -> Operation<I, O> {
    match slot.fate {
        Fate::Ok => ok(
            slot.client,
            input,
            slot.invoked_at,
            slot.completed_at,
            output,
        ),
        Fate::Failed => failed(slot.client, input, slot.invoked_at, slot.completed_at),
        Fate::Unknown { .. } => unknown(slot.client, input, slot.invoked_at),
    }
}

fn takes_effect(fate: Fate) -> bool {
    matches!(fate, Fate::Ok | Fate::Unknown { applied: true })
}

/// A linearizable keyed-register history. Every written value is unique and below
/// [`NEVER_WRITTEN`].
pub fn keyed_register_history(
    rng: &mut Rng,
    shape: Shape,
) -> Vec<Operation<(u64, RegisterInput), RegisterOutput>> {
    let mut registers: Vec<Option<u64>> = vec![None; shape.keys as usize];
    let mut next_value = 0;
    let mut ops = Vec::new();
    for slot in slots(rng, shape) {
        let key = rng.below(shape.keys);
        let current = registers[key as usize];
        next_value += 1;
        assert!(next_value < NEVER_WRITTEN);
        let (input, output, after) = match rng.below(3) {
            0 => (RegisterInput::Read, RegisterOutput::Read(current), current),
            1 => (
                RegisterInput::Write(next_value),
                RegisterOutput::Write,
                Some(next_value),
            ),
            _ => {
                // Half the time expect the current value so that swaps do happen.
                let expected = if rng.chance(500) {
                    current
                } else {
                    Some(rng.below(next_value))
                };
                let swaps = expected == current;
                let after = if swaps { Some(next_value) } else { current };
                let input = RegisterInput::Cas {
                    expected,
                    new: next_value,
                };
                (input, RegisterOutput::Cas(swaps), after)
            }
        };
        if takes_effect(slot.fate) {
            registers[key as usize] = after;
        }
        ops.push(finish(&slot, (key, input), output));
    }
    ops
}

/// A value no generator ever writes.
pub const NEVER_WRITTEN: u64 = 1_000_000_000;

/// A linearizable single-register history.
pub fn register_history(
    rng: &mut Rng,
    shape: Shape,
) -> Vec<Operation<RegisterInput, RegisterOutput>> {
    let shape = Shape { keys: 1, ..shape };
    keyed_register_history(rng, shape)
        .into_iter()
        .map(|op| Operation {
            client: op.client,
            input: op.input.1,
            invoked_at: op.invoked_at,
            completed_at: op.completed_at,
            outcome: op.outcome,
        })
        .collect()
}

/// A linearizable etcd history over `shape.keys` keys. Every written value is unique.
pub fn etcd_history(rng: &mut Rng, shape: Shape) -> Vec<Operation<EtcdInput, EtcdOutput>> {
    let mut state: EtcdState = EtcdKvModel.init();
    let mut ops = Vec::new();
    for (index, slot) in slots(rng, shape).into_iter().enumerate() {
        let key = rng.below(shape.keys);
        let next_value = 1 + index as u64;
        let input = match rng.below(4) {
            0 => EtcdInput::Get { key },
            1 => EtcdInput::Put {
                key,
                value: next_value,
            },
            2 => EtcdInput::Delete { key },
            _ => {
                let current = state.kvs.get(&key).map_or(0, |kv| kv.mod_revision);
                let expected_mod_revision = if rng.chance(500) {
                    current
                } else {
                    rng.below(state.revision + 1)
                };
                EtcdInput::TxnCas {
                    key,
                    expected_mod_revision,
                    value: next_value,
                }
            }
        };
        let (after, output) = state.apply(&input);
        if takes_effect(slot.fate) {
            state = after;
        }
        ops.push(finish(&slot, input, output));
    }
    ops
}
