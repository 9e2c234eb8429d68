//! Keyed registers: keys are checked independently and violations name their key.

mod common;

use std::time::Duration;

use common::ok;
use ostrakon_check::{
    check, CheckResult, KeyedRegisterModel, Model, Operation, RegisterInput as I, RegisterModel,
    RegisterOutput as O,
};

type Op = Operation<(u64, I), O>;

const BUDGET: Duration = Duration::from_secs(10);

fn write(client: u64, key: u64, value: u64, invoked_at: u64, completed_at: u64) -> Op {
    ok(
        client,
        (key, I::Write(value)),
        invoked_at,
        completed_at,
        O::Write,
    )
}

fn read(client: u64, key: u64, value: Option<u64>, invoked_at: u64, completed_at: u64) -> Op {
    ok(
        client,
        (key, I::Read),
        invoked_at,
        completed_at,
        O::Read(value),
    )
}

/// Drops the keys, as if every op addressed one register.
fn unkeyed(ops: &[Op]) -> Vec<Operation<I, O>> {
    ops.iter()
        .map(|op| Operation {
            client: op.client,
            input: op.input.1.clone(),
            invoked_at: op.invoked_at,
            completed_at: op.completed_at,
            outcome: op.outcome.clone(),
        })
        .collect()
}

#[test]
fn keys_are_independent() {
    // Key 2 was never written, so reading None there after a write to key 1 is fine; the
    // same ops on a single register are not.
    let ops = vec![
        write(1, 1, 10, 0, 10),
        read(2, 2, None, 20, 30),
        read(2, 1, Some(10), 40, 50),
    ];
    assert_eq!(
        check(&KeyedRegisterModel, &ops, BUDGET),
        CheckResult::Linearizable
    );
    assert!(check(&RegisterModel, &unkeyed(&ops), BUDGET).is_not_linearizable());
}

#[test]
fn partitions_by_key_in_key_order() {
    let ops = vec![
        read(1, 9, None, 0, 1),
        read(1, 3, None, 2, 3),
        read(1, 9, None, 4, 5),
    ];
    assert_eq!(
        KeyedRegisterModel.partition(&ops),
        vec![vec![1], vec![0, 2]]
    );
    assert_eq!(KeyedRegisterModel.partition_label(&ops, &[0, 2]), "key 9");
}

#[test]
fn violation_on_one_key_is_reported_with_its_label() {
    let mut ops = Vec::new();
    // Healthy traffic on keys 1..=5.
    for key in 1..=5 {
        let t = key * 100;
        ops.push(write(1, key, key, t, t + 10));
        ops.push(read(2, key, Some(key), t + 5, t + 20));
    }
    // A stale read on key 7: the write of 71 completed before the read began.
    ops.push(write(1, 7, 70, 1000, 1010));
    ops.push(write(1, 7, 71, 1020, 1030));
    ops.push(read(3, 7, Some(70), 1040, 1050));

    let CheckResult::NotLinearizable(explanation) = check(&KeyedRegisterModel, &ops, BUDGET) else {
        panic!("expected a violation on key 7");
    };
    assert_eq!(explanation.partition, "key 7");
    assert_eq!(
        explanation.stuck,
        vec!["client 3 [1040, 1050] (7, Read) -> Read(Some(70))"]
    );
    assert!(explanation.to_string().contains("partition key 7"));
}
