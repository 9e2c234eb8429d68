//! Checking a history of timestamp requests against what a timestamp oracle promises:
//! every timestamp handed out is unique, and a request that began after another was
//! answered got greater timestamps (strictly increasing in real-time order).
//!
//! Unlike linearizability in general this takes no search: sort the answered requests
//! by their first timestamp and look for overlaps, then sweep them in invocation order
//! against the highest timestamp of every request answered before. As in the
//! linearizability checker, an answer at the instant another request began came first
//! (the simulator delivers a response before anything it causes).

use crate::history::{Operation, Outcome};

/// An input: how many timestamps were asked for.
pub type TimestampCount = u64;

/// An output: timestamps `[first, first + count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampGrant {
    /// The first.
    pub first: u64,
    /// How many.
    pub count: u64,
}

impl TimestampGrant {
    fn last(&self) -> u64 {
        self.first + self.count - 1
    }
}

/// Checks `ops`; returns a description of the first broken promise found. Failed and
/// unknown outcomes promise nothing and are skipped.
pub fn check_timestamps(ops: &[Operation<TimestampCount, TimestampGrant>]) -> Result<(), String> {
    let answered: Vec<(usize, u64, u64, TimestampGrant)> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match (&op.outcome, op.completed_at) {
            (Outcome::Ok(grant), Some(done)) => {
                assert!(grant.count >= 1, "op {i}: a grant of no timestamps");
                assert_eq!(grant.count, op.input, "op {i}: a grant of another size");
                Some((i, op.invoked_at, done, *grant))
            }
            _ => None,
        })
        .collect();
    let mut by_first = answered.clone();
    by_first.sort_by_key(|(_, _, _, grant)| grant.first);
    for pair in by_first.windows(2) {
        let ((a, _, _, ga), (b, _, _, gb)) = (pair[0], pair[1]);
        if gb.first <= ga.last() {
            return Err(format!(
                "timestamps handed out twice: op {a} got {ga:?} and op {b} got {gb:?}"
            ));
        }
    }
    // Real-time order: sweep by invocation, with the answers that came before it.
    let mut by_completion = answered.clone();
    by_completion.sort_by_key(|(_, _, done, _)| *done);
    let mut by_invocation = answered;
    by_invocation.sort_by_key(|(_, invoked, _, _)| *invoked);
    let mut completed = by_completion.iter().peekable();
    let mut highest_before: Option<(usize, u64)> = None;
    for (b, invoked, _, grant) in by_invocation {
        while let Some((a, _, _, ga)) = completed.next_if(|(_, _, done, _)| *done <= invoked) {
            if highest_before.is_none_or(|(_, last)| ga.last() > last) {
                highest_before = Some((*a, ga.last()));
            }
        }
        if let Some((a, last)) = highest_before {
            if grant.first <= last {
                return Err(format!(
                    "timestamps out of real-time order: op {b} began after op {a} was \
                     answered with timestamps up to {last}, yet got {grant:?}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::History;

    type TimestampHistory = History<TimestampCount, TimestampGrant>;

    fn answered(
        history: &mut TimestampHistory,
        client: u64,
        at: (u64, u64),
        first: u64,
        count: u64,
    ) {
        let op = history.invoke(client, count, at.0);
        history.complete(op, Outcome::Ok(TimestampGrant { first, count }), at.1);
    }

    #[test]
    fn concurrent_requests_may_be_answered_in_any_order() {
        let mut history = TimestampHistory::new();
        answered(&mut history, 1, (0, 10), 20, 1);
        answered(&mut history, 2, (5, 15), 10, 3);
        answered(&mut history, 1, (11, 12), 21, 1);
        assert_eq!(check_timestamps(history.ops()), Ok(()));
    }

    #[test]
    fn a_timestamp_handed_out_twice_is_caught() {
        let mut history = TimestampHistory::new();
        answered(&mut history, 1, (0, 10), 20, 3);
        answered(&mut history, 2, (5, 15), 22, 1);
        let error = check_timestamps(history.ops()).unwrap_err();
        assert!(error.contains("handed out twice"), "{error}");
    }

    #[test]
    fn a_smaller_timestamp_after_an_answer_is_caught() {
        let mut history = TimestampHistory::new();
        answered(&mut history, 1, (0, 10), 20, 2);
        answered(&mut history, 2, (3, 4), 30, 1);
        // Began after op 0 was answered (at 10) with up to 21.
        answered(&mut history, 3, (11, 12), 19, 1);
        let error = check_timestamps(history.ops()).unwrap_err();
        assert!(error.contains("op 2 began after op 1"), "{error}");
    }

    #[test]
    fn failed_and_unknown_requests_promise_nothing() {
        let mut history = TimestampHistory::new();
        answered(&mut history, 1, (0, 10), 20, 1);
        let failed = history.invoke(2, 1, 11);
        history.complete(failed, Outcome::Failed, 12);
        history.invoke(3, 1, 13);
        answered(&mut history, 1, (14, 15), 21, 1);
        assert_eq!(check_timestamps(history.ops()), Ok(()));
    }

    #[test]
    fn an_answer_at_the_instant_another_began_came_first() {
        let mut history = TimestampHistory::new();
        answered(&mut history, 1, (0, 10), 20, 1);
        answered(&mut history, 1, (10, 11), 5, 1);
        assert!(check_timestamps(history.ops()).is_err());
    }
}
