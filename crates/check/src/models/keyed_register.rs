//! Many independent registers addressed by key: the model the simulator checks against.

use std::collections::BTreeMap;

use crate::history::{Operation, Outcome};
use crate::model::Model;
use crate::models::register::{step_register, RegisterInput, RegisterOutput};

/// Registers addressed by a `u64` key, each starting unwritten.
///
/// Operations on different keys commute, so the history is partitioned by key and each key
/// is checked as a single [`crate::RegisterModel`]. The state is therefore that of one
/// register: the model relies on [`Model::partition`] never mixing keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyedRegisterModel;

impl Model for KeyedRegisterModel {
    type Input = (u64, RegisterInput);
    type Output = RegisterOutput;
    type State = Option<u64>;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        input: &(u64, RegisterInput),
        output: Option<&RegisterOutput>,
    ) -> Option<Option<u64>> {
        step_register(*state, &input.1, output)
    }

    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        // BTreeMap so that partitions come out in key order, making reports deterministic.
        let mut by_key: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (index, op) in ops.iter().enumerate() {
            by_key.entry(op.input.0).or_default().push(index);
        }
        by_key.into_values().collect()
    }

    fn partition_label(
        &self,
        ops: &[Operation<Self::Input, Self::Output>],
        partition: &[usize],
    ) -> String {
        let key = ops[partition[0]].input.0;
        assert!(partition.iter().all(|&index| ops[index].input.0 == key));
        format!("key {key}")
    }
}

/// Whether a compare-and-set on `key` expecting `expected`, invoked at `invoked_at`, could
/// fail only thanks to an unknown write. It could not if, in every linearization, a
/// definite write of another value sits between the write of `expected` and the
/// compare-and-set: a definite write invoked after the write of `expected` completed and
/// completed before the compare-and-set was invoked (for `expected == None`, any definite
/// write completed before it).
fn failure_needs_help(
    ops: &[Operation<(u64, RegisterInput), RegisterOutput>],
    key: u64,
    expected: Option<u64>,
    invoked_at: u64,
) -> bool {
    let definite_writes = ops.iter().filter(|op| op.input.0 == key).filter_map(|op| {
        let value = match (&op.input.1, &op.outcome) {
            (RegisterInput::Write(value), Outcome::Ok(_)) => *value,
            (RegisterInput::Cas { new, .. }, Outcome::Ok(RegisterOutput::Cas(true))) => *new,
            _ => return None,
        };
        Some((value, op.invoked_at, op.completed_at?))
    });
    let Some(expected) = expected else {
        return !definite_writes
            .clone()
            .any(|(_, _, done)| done < invoked_at);
    };
    let Some((_, _, expected_done)) = definite_writes
        .clone()
        .find(|(value, _, _)| *value == expected)
    else {
        return true; // The expected value came from an unknown write: no shortcut.
    };
    !definite_writes
        .into_iter()
        .any(|(value, start, done)| value != expected && start > expected_done && done < invoked_at)
}

/// Simplifies operations with an unknown outcome so the search does not have to place
/// them anywhere up to infinity. Sound for register histories whose written values are
/// unique (the verdict is unchanged):
///
/// - an unknown read changes nothing and constrains nothing: dropped;
/// - an unknown write or compare-and-set whose value some completed operation observed
///   (an Ok read returned it, or a successful compare-and-set expected it) did take
///   effect, before the earliest such observer completed: it becomes an Ok operation
///   completing then;
/// - an unknown write or compare-and-set nobody observed can be linearized after every
///   other operation, the same as dropping it, unless a failed compare-and-set on that key,
///   completing after it was invoked, could need it: one whose failure no definite write
///   explains already (see `failure_needs_help`). Dropped otherwise.
pub fn simplify_unknowns(
    ops: &[Operation<(u64, RegisterInput), RegisterOutput>],
) -> Vec<Operation<(u64, RegisterInput), RegisterOutput>> {
    // (key, value) -> earliest completion of an operation that observed it.
    let mut observed_by: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for op in ops {
        let (key, input) = &op.input;
        let Some(done_at) = op.completed_at else {
            continue;
        };
        let observed = match (&op.outcome, input) {
            (Outcome::Ok(RegisterOutput::Read(Some(value))), _) => *value,
            (
                Outcome::Ok(RegisterOutput::Cas(true)),
                RegisterInput::Cas {
                    expected: Some(value),
                    ..
                },
            ) => *value,
            _ => continue,
        };
        let earliest = observed_by.entry((*key, observed)).or_insert(done_at);
        *earliest = (*earliest).min(done_at);
    }
    // Pass 1: drop unknown reads, resolve observed unknown writes.
    let mut resolved: Vec<Operation<(u64, RegisterInput), RegisterOutput>> =
        Vec::with_capacity(ops.len());
    for op in ops {
        if op.outcome != Outcome::Unknown {
            resolved.push(op.clone());
            continue;
        }
        let (key, input) = &op.input;
        let (value, output) = match input {
            RegisterInput::Read => continue,
            RegisterInput::Write(value) => (*value, RegisterOutput::Write),
            RegisterInput::Cas { new, .. } => (*new, RegisterOutput::Cas(true)),
        };
        let mut op = op.clone();
        if let Some(&done_at) = observed_by.get(&(*key, value)) {
            op.completed_at = Some(done_at.max(op.invoked_at));
            op.outcome = Outcome::Ok(output);
        }
        resolved.push(op);
    }
    // Pass 2: keep an unobserved unknown write only where a failed compare-and-set that no
    // definite write explains completes after it was invoked.
    let mut needs_help_until: BTreeMap<u64, u64> = BTreeMap::new();
    for op in &resolved {
        if let (
            Outcome::Ok(RegisterOutput::Cas(false)),
            RegisterInput::Cas { expected, .. },
            Some(done_at),
        ) = (&op.outcome, &op.input.1, op.completed_at)
        {
            if failure_needs_help(&resolved, op.input.0, *expected, op.invoked_at) {
                let until = needs_help_until.entry(op.input.0).or_insert(done_at);
                *until = (*until).max(done_at);
            }
        }
    }
    resolved
        .into_iter()
        .filter(|op| {
            op.outcome != Outcome::Unknown
                || needs_help_until
                    .get(&op.input.0)
                    .is_some_and(|&until| until >= op.invoked_at)
        })
        .collect()
}

#[cfg(test)]
mod simplify_tests {
    use super::*;
    use crate::{check, CheckResult};
    use std::time::Duration;

    use RegisterInput::{Cas, Read, Write};

    type Op = Operation<(u64, RegisterInput), RegisterOutput>;

    /// An operation on key 0 by a client named after its invocation time.
    fn op(
        input: RegisterInput,
        invoked_at: u64,
        completed_at: Option<u64>,
        outcome: Outcome<RegisterOutput>,
    ) -> Op {
        Operation {
            client: invoked_at,
            input: (0, input),
            invoked_at,
            completed_at,
            outcome,
        }
    }

    fn ok(output: RegisterOutput) -> Outcome<RegisterOutput> {
        Outcome::Ok(output)
    }

    fn verdict(ops: &[Op]) -> CheckResult {
        check(&KeyedRegisterModel, ops, Duration::from_secs(1))
    }

    #[test]
    fn unknown_reads_and_unobserved_unknown_writes_go_observed_ones_resolve() {
        let ops = vec![
            op(Write(1), 0, None, Outcome::Unknown),
            op(Write(2), 0, None, Outcome::Unknown),
            op(Read, 0, None, Outcome::Unknown),
            op(Read, 5, Some(6), ok(RegisterOutput::Read(Some(2)))),
        ];
        let simplified = simplify_unknowns(&ops);
        assert_eq!(
            simplified.len(),
            2,
            "write 1 and the unknown read go; write 2 is observed"
        );
        assert_eq!(
            simplified[0].completed_at,
            Some(6),
            "write 2 completes by its observer's completion"
        );
        assert_eq!(simplified[0].outcome, ok(RegisterOutput::Write));
        assert_eq!(verdict(&simplified), CheckResult::Linearizable);
    }

    #[test]
    fn unknown_writes_are_kept_where_a_failed_cas_may_need_them() {
        // write(1) ok; unknown write(2); CAS(1 -> 3) fails: only write(2) explains it.
        let ops = vec![
            op(Write(1), 0, Some(1), ok(RegisterOutput::Write)),
            op(Write(2), 2, None, Outcome::Unknown),
            op(
                Cas {
                    expected: Some(1),
                    new: 3,
                },
                3,
                Some(4),
                ok(RegisterOutput::Cas(false)),
            ),
        ];
        let simplified = simplify_unknowns(&ops);
        assert_eq!(simplified.len(), 3);
        assert_eq!(verdict(&simplified), CheckResult::Linearizable);
    }

    #[test]
    fn an_observed_unknown_write_still_cannot_explain_a_stale_read() {
        // w1 ok; unknown w2 observed by t=10; a read at [20, 21] returns 1 again: stale.
        let ops = vec![
            op(Write(1), 0, Some(1), ok(RegisterOutput::Write)),
            op(Write(2), 2, None, Outcome::Unknown),
            op(Read, 5, Some(10), ok(RegisterOutput::Read(Some(2)))),
            op(Read, 20, Some(21), ok(RegisterOutput::Read(Some(1)))),
        ];
        assert!(verdict(&simplify_unknowns(&ops)).is_not_linearizable());
        assert!(
            verdict(&ops).is_not_linearizable(),
            "same verdict as the full history"
        );
    }

    #[test]
    fn a_failed_cas_explained_by_a_definite_write_keeps_no_unknown_write() {
        let ops = vec![
            op(Write(1), 0, Some(1), ok(RegisterOutput::Write)),
            op(Write(2), 2, Some(3), ok(RegisterOutput::Write)),
            op(Write(7), 2, None, Outcome::Unknown),
            op(
                Cas {
                    expected: Some(1),
                    new: 3,
                },
                4,
                Some(5),
                ok(RegisterOutput::Cas(false)),
            ),
        ];
        let simplified = simplify_unknowns(&ops);
        assert_eq!(
            simplified.len(),
            3,
            "write 2 explains the failure; unknown write 7 goes"
        );
        assert_eq!(verdict(&simplified), CheckResult::Linearizable);
    }

    #[test]
    fn an_unknown_write_after_the_last_failed_cas_is_dropped() {
        let ops = vec![
            op(
                Cas {
                    expected: Some(9),
                    new: 3,
                },
                0,
                Some(1),
                ok(RegisterOutput::Cas(false)),
            ),
            op(Write(4), 5, None, Outcome::Unknown),
        ];
        assert_eq!(simplify_unknowns(&ops).len(), 1);
    }
}
