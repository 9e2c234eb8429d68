//! Randomized tests: histories generated from a real sequential run must pass, provably
//! illegal mutations of them must fail, and on tiny histories the checker must agree with
//! a brute-force enumeration of every linearization.

mod common;

use std::time::Duration;

use common::{Rng, Shape, NEVER_WRITTEN};
use ostrakon_check::{
    check, CheckResult, EtcdKvModel, EtcdOutput, KeyValue, KeyedRegisterModel, Model, Operation,
    Outcome, RegisterInput, RegisterModel, RegisterOutput,
};

const BUDGET: Duration = Duration::from_secs(30);
const HISTORIES_COUNT: u64 = 300;

const SHAPE: Shape = Shape {
    clients: 4,
    ops_per_client: 12,
    keys: 1,
    failed_per_mille: 50,
    unknown_per_mille: 50,
};

/// Keyed histories: more clients and operations, spread over several keys.
const KEYED_SHAPE: Shape = Shape {
    clients: 5,
    ops_per_client: 40,
    keys: 4,
    ..SHAPE
};

type RegisterOp = Operation<RegisterInput, RegisterOutput>;

fn assert_linearizable<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>], seed: u64) {
    let result = check(model, ops, BUDGET);
    assert_eq!(result, CheckResult::Linearizable, "seed {seed}: {ops:#?}");
}

fn assert_not_linearizable<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    seed: u64,
) -> String {
    match check(model, ops, BUDGET) {
        CheckResult::NotLinearizable(explanation) => explanation.partition,
        other => panic!("seed {seed}: expected NotLinearizable, got {other:?}: {ops:#?}"),
    }
}

fn ok_read_indexes<I>(ops: &[Operation<I, RegisterOutput>]) -> Vec<usize> {
    (0..ops.len())
        .filter(|&index| matches!(ops[index].outcome, Outcome::Ok(RegisterOutput::Read(_))))
        .collect()
}

/// The value an op would write, if it writes one.
fn written_value(input: &RegisterInput) -> Option<u64> {
    match *input {
        RegisterInput::Read => None,
        RegisterInput::Write(value) | RegisterInput::Cas { new: value, .. } => Some(value),
    }
}

#[test]
fn generated_register_histories_are_linearizable() {
    for seed in 0..HISTORIES_COUNT {
        let ops = common::register_history(&mut Rng::new(seed), SHAPE);
        assert_linearizable(&RegisterModel, &ops, seed);
    }
}

#[test]
fn generated_keyed_histories_are_linearizable() {
    let shape = KEYED_SHAPE;
    for seed in 0..HISTORIES_COUNT {
        let ops = common::keyed_register_history(&mut Rng::new(seed), shape);
        assert_linearizable(&KeyedRegisterModel, &ops, seed);
    }
}

#[test]
fn generated_etcd_histories_are_linearizable() {
    let shape = Shape { keys: 3, ..SHAPE };
    for seed in 0..HISTORIES_COUNT {
        let ops = common::etcd_history(&mut Rng::new(seed), shape);
        assert_linearizable(&EtcdKvModel, &ops, seed);
    }
}

#[test]
fn reading_a_value_never_written_is_caught() {
    let mut mutated = 0;
    for seed in 0..HISTORIES_COUNT {
        let mut rng = Rng::new(seed);
        let mut ops = common::register_history(&mut rng, SHAPE);
        let reads = ok_read_indexes(&ops);
        if reads.is_empty() {
            continue;
        }
        let victim = reads[rng.below(reads.len() as u64) as usize];
        ops[victim].outcome = Outcome::Ok(RegisterOutput::Read(Some(NEVER_WRITTEN)));
        assert_not_linearizable(&RegisterModel, &ops, seed);
        mutated += 1;
    }
    assert!(
        mutated > HISTORIES_COUNT * 9 / 10,
        "only {mutated} histories mutated"
    );
}

/// A read returns a value whose only writer was invoked after the read completed (at the
/// same instant counts: a completion at t precedes an invocation at t).
fn read_from_the_future(rng: &mut Rng, ops: &mut [RegisterOp]) -> bool {
    let mut pairs = Vec::new();
    for read in ok_read_indexes(ops) {
        let read_completed_at = ops[read].completed_at.expect("ok ops complete");
        for op in ops.iter().filter(|op| op.invoked_at >= read_completed_at) {
            if let Some(value) = written_value(&op.input) {
                pairs.push((read, value));
            }
        }
    }
    if pairs.is_empty() {
        return false;
    }
    let (read, value) = pairs[rng.below(pairs.len() as u64) as usize];
    ops[read].outcome = Outcome::Ok(RegisterOutput::Read(Some(value)));
    true
}

#[test]
fn reading_from_the_future_is_caught() {
    let mut mutated = 0;
    for seed in 0..HISTORIES_COUNT {
        let mut rng = Rng::new(seed);
        let mut ops = common::register_history(&mut rng, SHAPE);
        if read_from_the_future(&mut rng, &mut ops) {
            assert_not_linearizable(&RegisterModel, &ops, seed);
            mutated += 1;
        }
    }
    assert!(
        mutated > HISTORIES_COUNT * 9 / 10,
        "only {mutated} histories mutated"
    );
}

#[test]
fn reading_a_failed_write_is_caught() {
    let mut mutated = 0;
    for seed in 0..HISTORIES_COUNT {
        let mut rng = Rng::new(seed);
        let mut ops = common::register_history(&mut rng, SHAPE);
        let failed_values: Vec<u64> = ops
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Failed))
            .filter_map(|op| written_value(&op.input))
            .collect();
        let reads = ok_read_indexes(&ops);
        if failed_values.is_empty() || reads.is_empty() {
            continue;
        }
        let value = failed_values[rng.below(failed_values.len() as u64) as usize];
        let victim = reads[rng.below(reads.len() as u64) as usize];
        ops[victim].outcome = Outcome::Ok(RegisterOutput::Read(Some(value)));
        assert_not_linearizable(&RegisterModel, &ops, seed);
        mutated += 1;
    }
    assert!(
        mutated > HISTORIES_COUNT / 2,
        "only {mutated} histories mutated"
    );
}

#[test]
fn keyed_violation_names_the_mutated_key() {
    let shape = KEYED_SHAPE;
    for seed in 0..HISTORIES_COUNT {
        let mut rng = Rng::new(seed);
        let mut ops = common::keyed_register_history(&mut rng, shape);
        let reads = ok_read_indexes(&ops);
        let victim = reads[rng.below(reads.len() as u64) as usize];
        ops[victim].outcome = Outcome::Ok(RegisterOutput::Read(Some(NEVER_WRITTEN)));
        let partition = assert_not_linearizable(&KeyedRegisterModel, &ops, seed);
        assert_eq!(
            partition,
            format!("key {}", ops[victim].input.0),
            "seed {seed}"
        );
    }
}

#[test]
fn impossible_etcd_outputs_are_caught() {
    let shape = Shape { keys: 3, ..SHAPE };
    for seed in 0..HISTORIES_COUNT {
        let mut rng = Rng::new(seed);
        let mut ops = common::etcd_history(&mut rng, shape);
        let ok_indexes: Vec<usize> = (0..ops.len())
            .filter(|&index| matches!(ops[index].outcome, Outcome::Ok(_)))
            .collect();
        let victim = ok_indexes[rng.below(ok_indexes.len() as u64) as usize];
        // The store's revision never exceeds 1 + the number of ops, and no value is ever
        // NEVER_WRITTEN, so each mutation is impossible.
        let revision_max = 1 + ops.len() as u64;
        let Outcome::Ok(output) = &mut ops[victim].outcome else {
            unreachable!()
        };
        match output {
            EtcdOutput::Put { revision }
            | EtcdOutput::Delete { revision, .. }
            | EtcdOutput::TxnCas { revision, .. } => *revision += revision_max,
            EtcdOutput::Get { kv, .. } => {
                *kv = Some(KeyValue {
                    value: NEVER_WRITTEN,
                    create_revision: 2,
                    mod_revision: 2,
                    version: 1,
                })
            }
        }
        assert_not_linearizable(&EtcdKvModel, &ops, seed);
    }
}

/// Whether `a` must be linearized before `b` by real time: the checker's documented rule.
fn precedes(a: &RegisterOp, b: &RegisterOp) -> bool {
    let Some(a_completed_at) = a.completed_at else {
        return false;
    };
    let zero_length = |op: &RegisterOp| op.completed_at == Some(op.invoked_at);
    a_completed_at < b.invoked_at
        || (a_completed_at == b.invoked_at && !(zero_length(a) && zero_length(b)))
}

/// Exhaustive search over every order of the ops, where Unknown ops may also be left out
/// entirely (never took effect): an oracle independent of the checker's cache and list.
fn brute_force(ops: &[RegisterOp], placed: u64, state: Option<u64>) -> bool {
    let live = |index: usize| !matches!(ops[index].outcome, Outcome::Failed);
    let unplaced = |index: usize| placed & (1 << index) == 0;
    let all_ok_placed = (0..ops.len())
        .all(|index| !matches!(ops[index].outcome, Outcome::Ok(_)) || !unplaced(index));
    if all_ok_placed {
        return true;
    }
    (0..ops.len())
        .filter(|&index| live(index) && unplaced(index))
        .filter(|&index| {
            !(0..ops.len()).any(|other| {
                other != index
                    && live(other)
                    && unplaced(other)
                    && precedes(&ops[other], &ops[index])
            })
        })
        .any(|index| {
            let output = match &ops[index].outcome {
                Outcome::Ok(output) => Some(output),
                _ => None,
            };
            RegisterModel
                .step(&state, &ops[index].input, output)
                .is_some_and(|next| brute_force(ops, placed | (1 << index), next))
        })
}

/// A small arbitrary (usually not linearizable) history with many timing ties.
fn arbitrary_history(rng: &mut Rng) -> Vec<RegisterOp> {
    let ops_count = 1 + rng.below(7);
    (0..ops_count)
        .map(|client| {
            let invoked_at = rng.below(6);
            let completed_at = invoked_at + rng.below(4);
            let input = match rng.below(3) {
                0 => RegisterInput::Read,
                1 => RegisterInput::Write(1 + rng.below(3)),
                _ => RegisterInput::Cas {
                    expected: [None, Some(1), Some(2)][rng.below(3) as usize],
                    new: 1 + rng.below(3),
                },
            };
            let output = match input {
                RegisterInput::Read => {
                    RegisterOutput::Read([None, Some(1), Some(2), Some(3)][rng.below(4) as usize])
                }
                RegisterInput::Write(_) => RegisterOutput::Write,
                RegisterInput::Cas { .. } => RegisterOutput::Cas(rng.chance(500)),
            };
            match rng.below(10) {
                0 => common::failed(client, input, invoked_at, completed_at),
                1 | 2 => common::unknown(client, input, invoked_at),
                _ => common::ok(client, input, invoked_at, completed_at, output),
            }
        })
        .collect()
}

#[test]
fn agrees_with_brute_force_on_tiny_histories() {
    let mut verdicts = [0u32; 2];
    for seed in 0..5_000 {
        let ops = arbitrary_history(&mut Rng::new(seed));
        let expected = brute_force(&ops, 0, None);
        let result = check(&RegisterModel, &ops, BUDGET);
        assert_ne!(result, CheckResult::Unknown);
        assert_eq!(
            result.is_linearizable(),
            expected,
            "seed {seed}: checker says {result:?}: {ops:#?}"
        );
        verdicts[usize::from(expected)] += 1;
    }
    // Both verdicts must be well represented for the comparison to mean anything.
    assert!(verdicts.iter().all(|&count| count > 500), "{verdicts:?}");
}
