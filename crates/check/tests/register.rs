//! Hand-written single-register histories with known verdicts.

mod common;

use std::time::Duration;

use common::{failed, ok, unknown};
use ostrakon_check::{
    check, CheckResult, Explanation, History, Operation, Outcome, RegisterInput as I,
    RegisterModel, RegisterOutput as O,
};

type Op = Operation<I, O>;

const BUDGET: Duration = Duration::from_secs(10);

fn verdict(ops: &[Op]) -> CheckResult {
    check(&RegisterModel, ops, BUDGET)
}

fn assert_linearizable(ops: &[Op]) {
    let result = verdict(ops);
    assert_eq!(result, CheckResult::Linearizable, "history: {ops:#?}");
}

fn explanation(ops: &[Op]) -> Explanation {
    match verdict(ops) {
        CheckResult::NotLinearizable(explanation) => explanation,
        other => panic!("expected NotLinearizable, got {other:?} for {ops:#?}"),
    }
}

fn write(client: u64, value: u64, invoked_at: u64, completed_at: u64) -> Op {
    ok(client, I::Write(value), invoked_at, completed_at, O::Write)
}

fn read(client: u64, value: Option<u64>, invoked_at: u64, completed_at: u64) -> Op {
    ok(client, I::Read, invoked_at, completed_at, O::Read(value))
}

fn cas(client: u64, expected: Option<u64>, new: u64, times: (u64, u64), swapped: bool) -> Op {
    ok(
        client,
        I::Cas { expected, new },
        times.0,
        times.1,
        O::Cas(swapped),
    )
}

#[test]
fn empty_and_all_failed_histories_are_linearizable() {
    assert_linearizable(&[]);
    assert_linearizable(&[failed(1, I::Write(1), 0, 10)]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        read(1, None, 0, 5),
        write(1, 1, 10, 20),
        read(2, Some(1), 30, 40),
        write(3, 2, 50, 60),
        read(1, Some(2), 70, 80),
        cas(2, Some(2), 3, (90, 100), true),
        cas(3, Some(2), 4, (110, 120), false),
        read(1, Some(3), 130, 140),
    ]);
}

#[test]
fn read_concurrent_with_write_may_see_either_value() {
    let before = write(1, 1, 0, 10);
    let concurrent = write(1, 2, 20, 40);
    for seen in [1, 2] {
        assert_linearizable(&[
            before.clone(),
            concurrent.clone(),
            read(2, Some(seen), 25, 35),
        ]);
    }
    let explanation = explanation(&[before, concurrent, read(2, Some(3), 25, 35)]);
    assert_eq!(
        explanation.stuck,
        vec!["client 2 [25, 35] Read -> Read(Some(3))"],
        "{explanation}"
    );
}

#[test]
fn stale_read_after_completed_write_is_not_linearizable() {
    // Once the write of 2 has completed, every later read must see 2.
    let explanation = explanation(&[
        write(1, 1, 0, 10),
        write(1, 2, 20, 30),
        read(2, Some(1), 40, 50),
    ]);
    assert_eq!(explanation.partition, "all");
    assert_eq!(
        explanation.linearized,
        vec![
            "client 1 [0, 10] Write(1) -> Write",
            "client 1 [20, 30] Write(2) -> Write",
        ]
    );
    assert_eq!(
        explanation.stuck,
        vec!["client 2 [40, 50] Read -> Read(Some(1))"]
    );
    assert_eq!(explanation.state, "Some(2)");
    let report = explanation.to_string();
    assert!(report.contains("partition all"), "{report}");
    assert!(report.contains("Read -> Read(Some(1))"), "{report}");
}

#[test]
fn completion_at_t_precedes_invocation_at_t() {
    // The write completes at 10, exactly when the read is invoked: it must be visible.
    let explanation = explanation(&[write(1, 1, 0, 10), read(2, None, 10, 20)]);
    assert_eq!(
        explanation.stuck,
        vec!["client 2 [10, 20] Read -> Read(None)"]
    );
    // One tick earlier the two overlap and the read may precede the write.
    assert_linearizable(&[write(1, 1, 0, 10), read(2, None, 9, 20)]);
}

#[test]
fn zero_length_ops_at_one_instant_are_concurrent() {
    // Both orders of the two instantaneous ops are possible, so the read may see either.
    for seen in [None, Some(1)] {
        assert_linearizable(&[write(1, 1, 5, 5), read(2, seen, 5, 5)]);
    }
    // But a zero-length op at t still precedes ops invoked later at t.
    explanation(&[write(1, 1, 5, 5), read(2, None, 5, 6)]);
}

#[test]
fn concurrent_cas_from_empty_only_one_may_win() {
    let a = |swapped| cas(1, None, 1, (0, 10), swapped);
    let b = |swapped| cas(2, None, 2, (5, 15), swapped);
    assert_linearizable(&[a(true), b(false), read(3, Some(1), 20, 30)]);
    assert_linearizable(&[a(false), b(true), read(3, Some(2), 20, 30)]);
    explanation(&[a(true), b(true)]);
    explanation(&[a(false), b(false)]);
    // The winner must be the value read afterwards.
    explanation(&[a(true), b(false), read(3, Some(2), 20, 30)]);
}

#[test]
fn cas_failing_when_it_must_succeed_is_not_linearizable() {
    explanation(&[write(1, 1, 0, 10), cas(2, Some(1), 2, (20, 30), false)]);
    assert_linearizable(&[write(1, 1, 0, 10), cas(2, Some(1), 2, (20, 30), true)]);
}

#[test]
fn unknown_write_that_later_appears_in_a_read_is_linearizable() {
    assert_linearizable(&[
        write(1, 1, 0, 10),
        unknown(1, I::Write(2), 20),
        read(2, Some(1), 30, 40),
        read(2, Some(2), 100, 110),
        read(3, Some(2), 200, 210),
    ]);
}

#[test]
fn unknown_write_that_never_appears_is_linearizable() {
    assert_linearizable(&[
        write(1, 1, 0, 10),
        unknown(1, I::Write(2), 20),
        read(2, Some(1), 30, 40),
        read(2, Some(1), 100, 110),
    ]);
}

#[test]
fn unknown_write_cannot_take_effect_before_its_invocation_or_twice() {
    explanation(&[read(2, Some(2), 0, 10), unknown(1, I::Write(2), 20)]);
    // Once the unknown write was observed it stays in effect until overwritten.
    explanation(&[
        write(1, 1, 0, 10),
        unknown(1, I::Write(2), 20),
        read(2, Some(2), 30, 40),
        read(2, Some(1), 50, 60),
    ]);
}

#[test]
fn failed_write_appearing_in_a_read_is_not_linearizable() {
    let explanation = explanation(&[
        write(1, 1, 0, 10),
        failed(1, I::Write(2), 20, 30),
        read(2, Some(2), 40, 50),
    ]);
    assert_eq!(
        explanation.stuck,
        vec!["client 2 [40, 50] Read -> Read(Some(2))"]
    );
}

#[test]
fn read_of_a_value_never_written_is_not_linearizable() {
    let explanation = explanation(&[read(1, Some(5), 0, 10)]);
    assert!(explanation.linearized.is_empty());
    assert_eq!(
        explanation.stuck,
        vec!["client 1 [0, 10] Read -> Read(Some(5))"]
    );
}

#[test]
fn history_recorder_feeds_the_checker() {
    let mut history = History::new();
    let w = history.invoke(1, I::Write(7), 0);
    let r = history.invoke(2, I::Read, 5);
    let lost = history.invoke(3, I::Write(8), 6);
    history.complete(w, Outcome::Ok(O::Write), 10);
    history.complete(r, Outcome::Ok(O::Read(Some(8))), 12);
    history.finish_pending_as_unknown();
    assert!(history.ops()[lost.index()].completed_at.is_none());
    // The read saw the in-flight write of 8, which therefore took effect.
    assert_linearizable(history.ops());
}

#[test]
fn zero_budget_gives_up_and_huge_budget_does_not_overflow() {
    let ops = [write(1, 1, 0, 10), read(2, Some(1), 20, 30)];
    assert_eq!(
        check(&RegisterModel, &ops, Duration::ZERO),
        CheckResult::Unknown
    );
    assert_eq!(
        check(&RegisterModel, &ops, Duration::MAX),
        CheckResult::Linearizable
    );
}

#[test]
#[should_panic(expected = "never completed")]
fn ok_op_without_completion_is_rejected() {
    let mut op = read(1, None, 0, 10);
    op.completed_at = None;
    verdict(&[op]);
}
