//! The sequential specification that a history is checked against.

use std::fmt::Debug;
use std::hash::Hash;

use crate::history::Operation;

/// A sequential specification: what each operation does to the state and returns.
pub trait Model {
    /// What a client asks for.
    type Input: Clone + Debug;
    /// What a client observes.
    type Output: Clone + Debug;
    /// The abstract state; hashed and compared by the search's memo cache, so keep it small.
    type State: Clone + Eq + Hash + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Apply `input` in `state`. `output` is None for operations with Unknown outcome: they
    /// may take effect (at any time after invocation) or never.
    /// Returns None if the observed output is impossible from this state.
    ///
    /// With `output` None the step must succeed from every state, applying the operation's
    /// effect: the checker models "never took effect" by linearizing the operation last.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// Split the history into independent sub-histories (e.g. by key). Default: one
    /// partition of everything. Returns op indexes; each index may appear in at most one
    /// partition, and an op in none is not checked.
    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..ops.len()).collect()]
    }

    /// Human-readable label of a partition for explanations (e.g. "key 7").
    fn partition_label(
        &self,
        ops: &[Operation<Self::Input, Self::Output>],
        partition: &[usize],
    ) -> String {
        let _ = (ops, partition);
        "all".into()
    }
}
