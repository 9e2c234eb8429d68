//! The linearizability checker: Wing & Gong / Lowe search as in Porcupine.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use crate::bitset::Bitset;
use crate::entries::{EntryId, EntryKind, EntryList, Interval, Time};
use crate::history::{Operation, Outcome};
use crate::model::Model;

/// How many search iterations run between two reads of the clock. An iteration costs well
/// under a microsecond for small states, so the deadline is overrun by well under a
/// millisecond while the clock costs nothing measurable.
const DEADLINE_CHECK_ITERATIONS: u64 = 256;

/// Bound on the memo cache's entries per partition. Past it the search stops memoizing
/// (it stays correct, only slower) instead of exhausting memory before the deadline.
const CACHE_ENTRIES_MAX: usize = 1 << 22;

// The clock check masks the iteration count instead of dividing it.
const _: () = assert!(DEADLINE_CHECK_ITERATIONS.is_power_of_two());

/// The verdict of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every partition has a linearization.
    Linearizable,
    /// Some partition has none; the explanation is that of the first such partition.
    NotLinearizable(Explanation),
    /// No partition was shown non-linearizable, but some ran out of time.
    Unknown,
}

impl CheckResult {
    /// Whether the history was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable)
    }

    /// Whether the history was proven not linearizable.
    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, CheckResult::NotLinearizable(_))
    }
}

/// Why a partition is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// Label of the failing partition ([`Model::partition_label`]).
    pub partition: String,
    /// Longest prefix the search managed to linearize (op descriptions in linearization
    /// order, Debug of input/output with client and times).
    pub linearized: Vec<String>,
    /// Operations none of which could be linearized next after that prefix (the "cannot be
    /// linearized" set).
    pub stuck: Vec<String>,
    /// Debug of the model state after the prefix.
    pub state: String,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history is not linearizable in partition {}",
            self.partition
        )?;
        writeln!(
            f,
            "longest linearizable prefix ({} ops):",
            self.linearized.len()
        )?;
        for (position, op) in self.linearized.iter().enumerate() {
            writeln!(f, "  {:>4}. {op}", position + 1)?;
        }
        writeln!(f, "state after the prefix: {}", self.state)?;
        writeln!(
            f,
            "none of these {} ops can be linearized next:",
            self.stuck.len()
        )?;
        for op in &self.stuck {
            writeln!(f, "        {op}")?;
        }
        Ok(())
    }
}

/// Checks whether `ops` is linearizable with respect to `model`, giving up with
/// [`CheckResult::Unknown`] once `budget` of wall-clock time has passed.
///
/// Failed operations are ignored; Unknown ones may take effect at any instant after their
/// invocation or never (their `completed_at` is ignored). At equal times a completion
/// happens before an invocation. See the crate documentation for the algorithm.
///
/// Panics if an Ok operation has no completion time or completes before its invocation,
/// or if the model's partitions name an operation twice or out of range.
pub fn check<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> CheckResult {
    // A budget too large to represent is no deadline at all.
    let deadline = Instant::now().checked_add(budget);
    validate(ops);
    let partitions = model.partition(ops);
    validate_partitions(ops.len(), &partitions);

    let mut timed_out = false;
    for partition in &partitions {
        let live: Vec<usize> = partition
            .iter()
            .copied()
            .filter(|&index| !matches!(ops[index].outcome, Outcome::Failed))
            .collect();
        match Search::new(model, ops, &live).run(deadline) {
            SearchOutcome::Linearizable => {}
            SearchOutcome::TimedOut => timed_out = true,
            SearchOutcome::Stuck(stuck) => {
                let label = model.partition_label(ops, partition);
                return CheckResult::NotLinearizable(stuck.explain(label, ops, &live));
            }
        }
    }
    if timed_out {
        CheckResult::Unknown
    } else {
        CheckResult::Linearizable
    }
}

fn validate<I, O>(ops: &[Operation<I, O>]) {
    for (index, op) in ops.iter().enumerate() {
        if let Some(completed_at) = op.completed_at {
            assert!(
                completed_at >= op.invoked_at,
                "op {index} completes at {completed_at} before its invocation at {}",
                op.invoked_at
            );
        }
        if matches!(op.outcome, Outcome::Ok(_)) {
            assert!(
                op.completed_at.is_some(),
                "op {index} is Ok but never completed"
            );
        }
    }
}

fn validate_partitions(ops_count: usize, partitions: &[Vec<usize>]) {
    let mut seen = Bitset::new(ops_count);
    for &index in partitions.iter().flatten() {
        assert!(
            index < ops_count,
            "partition names op {index} of {ops_count}"
        );
        assert!(!seen.contains(index), "op {index} is in two partitions");
        seen.set(index);
    }
}

/// A one-line description of an operation for explanations.
fn describe<I: fmt::Debug, O: fmt::Debug>(op: &Operation<I, O>) -> String {
    let client = op.client;
    let invoked_at = op.invoked_at;
    match (&op.outcome, op.completed_at) {
        (Outcome::Ok(output), Some(completed_at)) => {
            format!(
                "client {client} [{invoked_at}, {completed_at}] {:?} -> {output:?}",
                op.input
            )
        }
        (Outcome::Unknown, _) => {
            format!(
                "client {client} [{invoked_at}, inf) {:?} -> unknown",
                op.input
            )
        }
        (outcome, completed_at) => unreachable!("searched op {outcome:?} at {completed_at:?}"),
    }
}

enum SearchOutcome<S> {
    Linearizable,
    Stuck(Stuck<S>),
    TimedOut,
}

/// The deepest point the search reached, in partition-local op indexes.
struct Stuck<S> {
    prefix: Vec<usize>,
    candidates: Vec<usize>,
    state: S,
}

impl<S: fmt::Debug> Stuck<S> {
    fn explain<I: fmt::Debug, O: fmt::Debug>(
        &self,
        partition: String,
        ops: &[Operation<I, O>],
        live: &[usize],
    ) -> Explanation {
        let describe_local = |&local: &usize| describe(&ops[live[local]]);
        Explanation {
            partition,
            linearized: self.prefix.iter().map(describe_local).collect(),
            stuck: self.candidates.iter().map(describe_local).collect(),
            state: format!("{:?}", self.state),
        }
    }
}

/// A linearized operation on the search stack, with the state from before it.
struct Frame<S> {
    op: usize,
    state_before: S,
}

/// The search over one partition. Operations are numbered `0..live.len()` locally.
struct Search<'a, M: Model> {
    model: &'a M,
    inputs: Vec<&'a M::Input>,
    /// None for Unknown outcomes.
    outputs: Vec<Option<&'a M::Output>>,
    list: EntryList,
    // Invariant: linearized == the set of ops in stack.
    linearized: Bitset,
    stack: Vec<Frame<M::State>>,
    state: M::State,
    /// Configurations already explored; see the crate documentation.
    cache: HashSet<(Bitset, M::State)>,
    deepest: Option<Stuck<M::State>>,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &'a [Operation<M::Input, M::Output>], live: &[usize]) -> Self {
        let intervals: Vec<Interval> = live
            .iter()
            .map(|&index| {
                let op = &ops[index];
                let ret = match op.outcome {
                    Outcome::Ok(_) => Time::At(op.completed_at.expect("validated")),
                    Outcome::Unknown => Time::Infinite,
                    Outcome::Failed => unreachable!("failed ops are filtered out"),
                };
                Interval {
                    call: op.invoked_at,
                    ret,
                }
            })
            .collect();
        let outputs = live
            .iter()
            .map(|&index| match &ops[index].outcome {
                Outcome::Ok(output) => Some(output),
                _ => None,
            })
            .collect();
        Search {
            model,
            inputs: live.iter().map(|&index| &ops[index].input).collect(),
            outputs,
            list: EntryList::new(&intervals),
            linearized: Bitset::new(live.len()),
            stack: Vec::with_capacity(live.len()),
            state: model.init(),
            cache: HashSet::new(),
            deepest: None,
        }
    }

    fn run(mut self, deadline: Option<Instant>) -> SearchOutcome<M::State> {
        let mut cursor = self.list.first();
        let mut iterations: u64 = 0;
        while self.list.first().is_some() {
            if iterations & (DEADLINE_CHECK_ITERATIONS - 1) == 0
                && deadline.is_some_and(|deadline| Instant::now() >= deadline)
            {
                return SearchOutcome::TimedOut;
            }
            iterations += 1;
            // The last entry of a non-empty list is always a return, so the walk stops
            // there before running off the end.
            let entry = cursor.expect("walk ends at a return entry");
            cursor = match self.list.kind(entry) {
                EntryKind::Call { op, .. } => {
                    if self.maybe_linearize(op) {
                        self.list.first()
                    } else {
                        self.list.next(entry)
                    }
                }
                EntryKind::Return { .. } => {
                    self.record_if_deepest(entry);
                    let Some(op) = self.backtrack() else {
                        let deepest = self.deepest.expect("recorded before giving up");
                        return SearchOutcome::Stuck(deepest);
                    };
                    self.list.next(self.list.call_of(op))
                }
                EntryKind::Head => unreachable!("the head is never walked"),
            };
        }
        assert_eq!(self.stack.len(), self.inputs.len());
        assert_eq!(self.linearized.count(), self.inputs.len());
        SearchOutcome::Linearizable
    }

    /// Linearizes `op` next if the model allows it and the resulting configuration is new.
    fn maybe_linearize(&mut self, op: usize) -> bool {
        assert!(!self.linearized.contains(op));
        let Some(next_state) = self
            .model
            .step(&self.state, self.inputs[op], self.outputs[op])
        else {
            return false;
        };
        self.linearized.set(op);
        if self.cache.len() < CACHE_ENTRIES_MAX {
            let inserted = self
                .cache
                .insert((self.linearized.clone(), next_state.clone()));
            if !inserted {
                // Explored before along another order: nothing new below.
                self.linearized.clear(op);
                return false;
            }
        }
        let state_before = std::mem::replace(&mut self.state, next_state);
        self.stack.push(Frame { op, state_before });
        self.list.lift(op);
        true
    }

    /// Undoes the last linearized op and returns it, or None when nothing is left to undo.
    fn backtrack(&mut self) -> Option<usize> {
        let frame = self.stack.pop()?;
        assert!(self.linearized.contains(frame.op));
        self.linearized.clear(frame.op);
        self.state = frame.state_before;
        self.list.unlift(frame.op);
        Some(frame.op)
    }

    /// The walk reached return entry `ret`: every call before it in the list failed to be
    /// linearized after the current stack. Keeps the first such point of greatest depth,
    /// where (the depth being maximal) every candidate was rejected by the model.
    fn record_if_deepest(&mut self, ret: EntryId) {
        if self
            .deepest
            .as_ref()
            .is_some_and(|deepest| deepest.prefix.len() >= self.stack.len())
        {
            return;
        }
        let mut candidates = Vec::new();
        let mut cursor = self.list.first();
        while let Some(entry) = cursor {
            if entry == ret {
                break;
            }
            let EntryKind::Call { op, .. } = self.list.kind(entry) else {
                unreachable!("the walk stops at the first return entry")
            };
            candidates.push(op);
            cursor = self.list.next(entry);
        }
        assert!(!candidates.is_empty(), "a return follows its own call");
        self.deepest = Some(Stuck {
            prefix: self.stack.iter().map(|frame| frame.op).collect(),
            candidates,
            state: self.state.clone(),
        });
    }
}
