//! Recording what clients did and saw.

/// Identifies the client (the sequential actor) that issued an operation.
pub type ClientId = u64;

/// Result of one operation as seen by the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// The operation took effect and returned this output.
    Ok(O),
    /// The operation definitely did not take effect.
    Failed,
    /// The client never learned whether the operation took effect (timeout, crash, or still
    /// pending when the history ended). It may have taken effect at any instant after its
    /// invocation, or never.
    Unknown,
}

/// One operation: invocation and completion times in arbitrary monotonic units (the
/// simulator uses virtual nanoseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client that issued the operation.
    pub client: ClientId,
    /// What the client asked for.
    pub input: I,
    /// When the client sent the request.
    pub invoked_at: u64,
    /// None when the client never learned the outcome (Outcome::Unknown); treated as
    /// "completes at infinity".
    // Invariant: completed_at >= invoked_at when Some.
    pub completed_at: Option<u64>,
    /// What the client observed.
    pub outcome: Outcome<O>,
}

/// Index of an operation in a [`History`], returned by [`History::invoke`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

impl OpId {
    /// An id no history hands out: for requests a test harness makes on its own behalf.
    pub const NONE: OpId = OpId(usize::MAX);

    /// Position of the operation in [`History::ops`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// How many operations of a history ended each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Operations with [`Outcome::Ok`].
    pub ok: usize,
    /// Operations with [`Outcome::Failed`].
    pub failed: usize,
    /// Operations with [`Outcome::Unknown`], including those still pending.
    pub unknown: usize,
}

/// Recorder of a concurrent history: clients call [`History::invoke`] when they send a
/// request and [`History::complete`] when they learn its outcome.
#[derive(Clone, Debug)]
pub struct History<I, O> {
    ops: Vec<Operation<I, O>>,
    // Invariant: pending[i] iff ops[i] was invoked but neither completed nor finished as
    // unknown; a pending op has outcome Unknown and completed_at None.
    pending: Vec<bool>,
}

impl<I, O> Default for History<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> History<I, O> {
    /// An empty history.
    pub fn new() -> Self {
        History {
            ops: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Records that `client` sent a request with `input` at time `at`. The operation stays
    /// pending (outcome [`Outcome::Unknown`]) until [`History::complete`] is called.
    pub fn invoke(&mut self, client: ClientId, input: I, at: u64) -> OpId {
        assert_eq!(self.ops.len(), self.pending.len());
        let id = OpId(self.ops.len());
        self.ops.push(Operation {
            client,
            input,
            invoked_at: at,
            completed_at: None,
            outcome: Outcome::Unknown,
        });
        self.pending.push(true);
        id
    }

    /// Records that the client learned `outcome` for operation `id` at time `at`.
    /// [`Outcome::Unknown`] leaves `completed_at` None: a request that timed out may still
    /// take effect later, so its interval never closes.
    ///
    /// Panics if the operation is not pending or `at` precedes its invocation.
    pub fn complete(&mut self, id: OpId, outcome: Outcome<O>, at: u64) {
        assert!(self.pending[id.0], "operation {id:?} is not pending");
        let op = &mut self.ops[id.0];
        assert!(
            at >= op.invoked_at,
            "operation {id:?} completed at {at} before its invocation at {}",
            op.invoked_at
        );
        assert!(op.completed_at.is_none());
        if !matches!(outcome, Outcome::Unknown) {
            op.completed_at = Some(at);
        }
        op.outcome = outcome;
        self.pending[id.0] = false;
    }

    /// Marks every still-pending operation as [`Outcome::Unknown`], e.g. when the
    /// simulation ends with requests in flight.
    pub fn finish_pending_as_unknown(&mut self) {
        for (op, pending) in self.ops.iter_mut().zip(self.pending.iter_mut()) {
            if *pending {
                assert!(matches!(op.outcome, Outcome::Unknown));
                assert_eq!(op.completed_at, None);
                *pending = false;
            }
        }
    }

    /// Whether operation `id` was invoked but has not completed yet.
    pub fn is_pending(&self, id: OpId) -> bool {
        self.pending[id.0]
    }

    /// The operations in invocation order of recording; [`OpId::index`] indexes this slice.
    pub fn ops(&self) -> &[Operation<I, O>] {
        &self.ops
    }

    /// The recorded operations, consuming the history.
    pub fn into_ops(self) -> Vec<Operation<I, O>> {
        self.ops
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether no operation was recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// How many operations ended each way; pending operations count as unknown.
    pub fn counts(&self) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok(_) => counts.ok += 1,
                Outcome::Failed => counts.failed += 1,
                Outcome::Unknown => counts.unknown += 1,
            }
        }
        assert_eq!(counts.ok + counts.failed + counts.unknown, self.ops.len());
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_outcomes_and_counts() {
        let mut history: History<&str, u64> = History::new();
        assert!(history.is_empty());
        let a = history.invoke(1, "a", 10);
        let b = history.invoke(2, "b", 11);
        let c = history.invoke(3, "c", 12);
        let d = history.invoke(4, "d", 13);
        assert_eq!(history.len(), 4);
        assert!(history.is_pending(a));

        history.complete(a, Outcome::Ok(7), 20);
        history.complete(b, Outcome::Failed, 21);
        history.complete(c, Outcome::Unknown, 22);
        assert!(!history.is_pending(a));
        assert!(history.is_pending(d));

        let ops = history.ops();
        assert_eq!(ops[a.index()].completed_at, Some(20));
        assert_eq!(ops[a.index()].outcome, Outcome::Ok(7));
        assert_eq!(ops[b.index()].completed_at, Some(21));
        // A timed-out request may still take effect later: its interval stays open.
        assert_eq!(ops[c.index()].completed_at, None);
        assert_eq!(
            history.counts(),
            OutcomeCounts {
                ok: 1,
                failed: 1,
                unknown: 2
            }
        );

        history.finish_pending_as_unknown();
        assert!(!history.is_pending(d));
        assert_eq!(history.ops()[d.index()].outcome, Outcome::Unknown);
        assert_eq!(history.ops()[d.index()].completed_at, None);
    }

    #[test]
    #[should_panic(expected = "is not pending")]
    fn completing_twice_panics() {
        let mut history: History<(), ()> = History::new();
        let id = history.invoke(1, (), 0);
        history.complete(id, Outcome::Ok(()), 1);
        history.complete(id, Outcome::Ok(()), 2);
    }

    #[test]
    #[should_panic(expected = "before its invocation")]
    fn completing_before_invocation_panics() {
        let mut history: History<(), ()> = History::new();
        let id = history.invoke(1, (), 5);
        history.complete(id, Outcome::Ok(()), 4);
    }
}
