//! A deterministic simulator for the ostrakon raft core and the range layer's deciding
//! code (the timestamp oracle, splits, merges, leader spreading and the read floor).
//!
//! One seed drives everything: the cluster shape, the workload, the fault knobs and every
//! random choice along the way, in virtual time. Nodes run the real `RawNode` with a
//! small key-value state machine; a simulated disk loses whatever was not persisted when
//! a node crashes; a simulated network drops, duplicates, delays, reorders and
//! partitions messages. After every step the safety invariants are checked; at the end
//! the faults heal and the run checks convergence, progress and linearizability of the
//! clients' history, of the timestamps the oracle handed out, and of every read of all
//! registers at one revision against the registers' final versions. A failing seed replays
//! exactly, with a trace.
#![deny(missing_docs)]

mod bank;
pub mod clients;
mod end_checks;
pub mod events;
mod finishes;
pub mod invariants;
pub mod kv;
mod leader_spread;
mod liveness;
mod merges;
mod nemesis;
pub mod node;
mod read_barriers;
mod read_floors;
mod requests;
mod revision_fetches;
pub mod rng;
pub mod runner;
mod scans;
pub mod scenario;
pub mod simulation;
mod timestamps;
pub mod txn_kv;
mod watches;
