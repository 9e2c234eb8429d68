//! History recording and linearizability checking for ostrakon.
//!
//! The simulator records every client operation in a [`History`]: the client calls
//! [`History::invoke`] when it sends a request and [`History::complete`] when it learns the
//! outcome. A finished history is a set of [`Operation`]s, each an interval
//! `[invoked_at, completed_at]` of (virtual) time plus an input and an [`Outcome`].
//!
//! [`check`] decides whether such a history is *linearizable* with respect to a sequential
//! [`Model`]: whether every operation can be given a single instant inside its interval at
//! which it took effect atomically, such that replaying the operations in the order of those
//! instants through the model produces exactly the outputs the clients observed.
//!
//! ```
//! use std::time::Duration;
//! use ostrakon_check::{check, CheckResult, History, Outcome, RegisterInput, RegisterModel,
//!     RegisterOutput};
//!
//! let mut history = History::new();
//! let write = history.invoke(1, RegisterInput::Write(7), 0);
//! let read = history.invoke(2, RegisterInput::Read, 5);
//! history.complete(write, Outcome::Ok(RegisterOutput::Write), 10);
//! // The read overlaps the write, so it may see the register before the write took effect.
//! history.complete(read, Outcome::Ok(RegisterOutput::Read(None)), 12);
//! let stale = history.invoke(2, RegisterInput::Read, 20);
//! history.complete(stale, Outcome::Ok(RegisterOutput::Read(None)), 30);
//! // But not after the write completed.
//! let result = check(&RegisterModel, history.ops(), Duration::from_secs(1));
//! let CheckResult::NotLinearizable(explanation) = result else { panic!() };
//! assert_eq!(explanation.stuck, ["client 2 [20, 30] Read -> Read(None)"]);
//! ```
//!
//! # The algorithm
//!
//! The checker follows Wing & Gong's search as improved by Lowe and implemented by
//! Porcupine (github.com/anishathalye/porcupine):
//!
//! 1. The model may split the history into independent partitions ([`Model::partition`],
//!    e.g. one per key of a key-value store). A history is linearizable iff every partition
//!    is, so each one is searched on its own, which turns one exponential search into many
//!    small ones.
//! 2. Each operation becomes two entries, a *call* at `invoked_at` and a *return* at
//!    `completed_at`, sorted by time into a doubly linked list. At equal times a return is
//!    ordered before a call: an operation that completed at `t` happened before one invoked
//!    at `t` (the simulator processes a response before anything it causes). The one
//!    exception is a pair of zero-length operations at the same instant, whose relative
//!    order is unknown; they are treated as concurrent.
//! 3. A depth-first search (with an explicit stack, not recursion) walks the list from its
//!    head. A call entry is a candidate to be linearized next: if the model accepts the
//!    operation's observed output from the current state, the operation is *lifted* out of
//!    the list (both its call and its return entry) and the search restarts at the head
//!    with the new state. Reaching a return entry means that operation had to take effect
//!    already but could not, so the search backtracks: it pops the last linearized
//!    operation, *unlifts* it back into the list (dancing-links style, O(1)) and tries the
//!    next candidate after it. An empty list means every operation was linearized.
//! 4. A memo cache of `(set of linearized operations, model state)` prunes configurations
//!    reached before along another order: the remaining search from them is identical.
//!
//! The search is exponential in the worst case, so [`check`] takes a wall-clock budget and
//! answers [`CheckResult::Unknown`] when it runs out rather than running on.
//!
//! # Failed and unknown outcomes
//!
//! * [`Outcome::Failed`] means the operation definitely did not take effect (e.g. the server
//!   rejected it before doing anything). Such operations are removed before the search.
//! * [`Outcome::Unknown`] means the client never learned what happened (timeout, crash): the
//!   operation may have taken effect at any instant after its invocation, or never. It is
//!   given a return time of +infinity and is stepped with output `None`, which the model
//!   must accept from any state, applying the operation's effect. "Never took effect" needs
//!   no special case: an operation whose return is at infinity can always be linearized
//!   after every other one, where its effect is invisible to all observed outputs.
//!
//! # Explanations
//!
//! When a partition is not linearizable the search reports the longest prefix it managed to
//! linearize and the operations none of which could be linearized after that prefix
//! ([`Explanation`]); usually the culprit is among the latter.
#![deny(missing_docs)]

pub mod bank;
mod bitset;
mod entries;
mod history;
pub mod invariants;
mod linearizability;
mod model;
mod models;
mod timestamps;

pub use history::{ClientId, History, OpId, Operation, Outcome, OutcomeCounts};
pub use linearizability::{check, CheckResult, Explanation};
pub use model::Model;
pub use models::etcd_kv::{EtcdInput, EtcdKvModel, EtcdOutput, EtcdState, KeyValue};
pub use models::keyed_register::{simplify_unknowns, KeyedRegisterModel};
pub use models::register::{RegisterInput, RegisterModel, RegisterOutput};
pub use timestamps::{check_timestamps, TimestampCount, TimestampGrant};
