//! Many independent registers addressed by key: the model the simulator checks against.

use std::collections::BTreeMap;

use crate::history::Operation;
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
