//! A deterministic, sans-IO Raft consensus core.
//!
//! This crate does no I/O, reads no clock and draws no randomness of its own: the caller
//! feeds it messages, ticks and proposals, and collects what to persist, send and apply.
//! That makes every behaviour reproducible in the simulator (`ostrakon-sim`) and lets one
//! event loop drive thousands of groups on a node: a group is plain data, with no thread,
//! task or timer of its own, and every message carries its `GroupId`.
//!
//! # The Ready loop
//!
//! ```
//! use ostrakon_raft::{Config, GroupId, InitialState, NodeId, RawNode};
//!
//! let config = Config::new(NodeId(1), GroupId(7));
//! let mut node = RawNode::new(config, InitialState::bootstrap([NodeId(1)]), 42).unwrap();
//! node.campaign(); // a single voter elects itself
//! loop {
//!     if !node.has_ready() {
//!         break; // in a real loop: wait for a tick, a message or a proposal
//!     }
//!     let ready = node.ready();
//!     // 1. ready.messages may go out now (the leader's appends run in parallel with
//!     //    its own disk write).
//!     // 2. persist ready.snapshot, ready.entries and ready.hard_state; fdatasync.
//!     // 3. ready.persisted_messages may go out now: votes and acknowledgements
//!     //    promise durable state, so they never leave before it is durable.
//!     // 4. install the snapshot, apply ready.committed_entries, serve ready.read_states
//!     //    once applied.
//!     node.advance();
//! }
//! assert_eq!(node.role(), ostrakon_raft::Role::Leader);
//! ```
//!
//! # What is inside
//!
//! Election with pre-vote and check-quorum; replication with the (index, term) check,
//! fast backtracking and pipelined appends bounded per follower; commitment only of
//! entries of the leader's term (5.4.2); ReadIndex and opt-in lease reads; snapshots
//! and compaction; joint-consensus membership changes with learners; leadership
//! transfer. Role changes happen only in `become_*`; quorum arithmetic is in `quorum`.
//!
//! Invariants are asserted in production builds: a broken invariant is a bug, and a
//! crash with context beats silently diverging replicas.
#![deny(missing_docs)]

mod confchange;
mod config;
mod election;
mod ids;
mod log;
mod membership;
mod message;
mod progress;
mod quiesce;
mod quiescing;
pub mod quorum;
mod raft;
mod raw_node;
mod read_index;
mod read_queue;
mod replication;
mod types;

pub use confchange::{apply as next_conf_state, ConfChangeError};
#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{Config, ConfigError, ReadMode};
pub use ids::{GroupId, LogIndex, NodeId, Term};
pub use message::{Message, MessageBody, RejectHint};
pub use progress::ProgressState;
pub use raft::{Proposal, ProposeError, ReadState, Role};
pub use raw_node::{InitialState, RawNode, Ready, SoftState, Status};
pub use types::{
    ConfChange, ConfChangeStep, ConfState, Entry, EntryPayload, HardState, SnapshotMeta,
};
