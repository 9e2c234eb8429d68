//! A deterministic simulator for the ostrakon raft core and the range layer's deciding
//! code (today the timestamp oracle).
//!
//! One seed drives everything: the cluster shape, the workload, the fault knobs and every
//! random choice along the way, in virtual time. Nodes run the real `RawNode` with a
//! small key-value state machine; a simulated disk loses whatever was not persisted when
//! a node crashes; a simulated network drops, duplicates, delays, reorders and
//! partitions messages. After every step the safety invariants are checked; at the end
//! the faults heal and the run checks convergence, progress and linearizability of the
//! clients' history, and of the timestamps the oracle handed out. A failing seed replays
//! exactly, with a trace.
#![deny(missing_docs)]

pub mod clients;
mod end_checks;
pub mod events;
pub mod invariants;
pub mod kv;
mod leader_spread;
mod liveness;
mod nemesis;
pub mod node;
mod requests;
pub mod rng;
pub mod runner;
pub mod scenario;
pub mod simulation;
mod timestamps;
