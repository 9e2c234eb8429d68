//! The wall-clock budget is honoured, and realistic histories check quickly.

mod common;

use std::time::{Duration, Instant};

use common::{ok, Rng, Shape};
use ostrakon_check::{
    check, CheckResult, KeyedRegisterModel, Operation, RegisterInput as I, RegisterModel,
    RegisterOutput as O,
};

/// 200 mutually overlapping ops on one register, one of them reading a value nobody wrote:
/// proving that takes exploring (nearly) every subset of the writes, far beyond any budget.
fn hopeless_history(rng: &mut Rng) -> Vec<Operation<I, O>> {
    const WRITES_COUNT: u64 = 100;
    let mut ops = Vec::new();
    for value in 1..=WRITES_COUNT {
        ops.push(ok(value, I::Write(value), value, 10_000 + value, O::Write));
    }
    for reader in 0..WRITES_COUNT {
        let seen = if reader == WRITES_COUNT - 1 {
            0 // Never written.
        } else {
            1 + rng.below(WRITES_COUNT)
        };
        let invoked_at = WRITES_COUNT + reader;
        ops.push(ok(
            1000 + reader,
            I::Read,
            invoked_at,
            20_000,
            O::Read(Some(seen)),
        ));
    }
    ops
}

#[test]
fn search_stops_near_the_deadline() {
    let ops = hopeless_history(&mut Rng::new(7));
    let started = Instant::now();
    let result = check(&RegisterModel, &ops, Duration::from_millis(1));
    let elapsed = started.elapsed();
    eprintln!("hopeless: {result:?} after {elapsed:?}");
    assert!(elapsed < Duration::from_millis(200), "took {elapsed:?}");
    assert!(!result.is_linearizable(), "{result:?}");
}

#[test]
fn longer_budget_is_used_but_not_overrun() {
    let ops = hopeless_history(&mut Rng::new(8));
    let budget = Duration::from_millis(50);
    let started = Instant::now();
    let result = check(&RegisterModel, &ops, budget);
    let elapsed = started.elapsed();
    eprintln!("hopeless: {result:?} after {elapsed:?}");
    assert_eq!(result, CheckResult::Unknown);
    assert!(elapsed >= budget, "gave up early after {elapsed:?}");
    assert!(
        elapsed < budget + Duration::from_millis(200),
        "took {elapsed:?}"
    );
}

#[test]
fn two_thousand_keyed_ops_check_quickly() {
    let shape = Shape {
        clients: 5,
        ops_per_client: 400,
        keys: 20,
        failed_per_mille: 20,
        unknown_per_mille: 20,
    };
    let ops = common::keyed_register_history(&mut Rng::new(42), shape);
    assert_eq!(ops.len(), 2000);
    let started = Instant::now();
    let result = check(&KeyedRegisterModel, &ops, Duration::from_secs(10));
    let elapsed = started.elapsed();
    assert_eq!(result, CheckResult::Linearizable);
    eprintln!("2000 ops: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(500), "took {elapsed:?}");
}
