//! Throughput of the raft core alone: one 3-replica group in one process, in memory, no
//! disk and no network. Each of N concurrent proposers keeps one proposal in flight and
//! proposes again once it is applied on the leader; proposals made between two `Ready`s
//! travel together (batching).
//!
//! Run: `cargo run --release -p ostrakon-raft --example throughput`
//! Optional arguments: proposer counts, e.g. `-- 1 64 4096`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ostrakon_raft::{Config, EntryPayload, GroupId, InitialState, Message, NodeId, RawNode, Role};

/// How long each configuration runs.
const RUN_TIME: Duration = Duration::from_secs(3);
/// Payload of every proposal (a small key-value write).
const PAYLOAD_BYTES: usize = 64;

struct Group {
    nodes: Vec<RawNode>,
    inboxes: Vec<Vec<Message>>,
}

impl Group {
    fn new() -> Group {
        let voters: Vec<NodeId> = (1..=3).map(NodeId).collect();
        let nodes = voters
            .iter()
            .map(|&id| {
                let mut config = Config::new(id, GroupId(1));
                config.inflight_msgs_max = 256;
                RawNode::new(config, InitialState::bootstrap(voters.clone()), id.0)
                    .expect("valid config")
            })
            .collect();
        Group {
            nodes,
            inboxes: vec![Vec::new(), Vec::new(), Vec::new()],
        }
    }

    /// One round: every node handles its Ready, then every message is delivered.
    /// Returns the number of commands the leader (node 0) applied.
    fn round(&mut self) -> u64 {
        let mut applied_at_leader = 0;
        for (k, node) in self.nodes.iter_mut().enumerate() {
            if !node.has_ready() {
                continue;
            }
            let mut ready = node.ready();
            // In memory, "persisting" is free; the order of the steps is kept anyway.
            for message in ready
                .messages
                .drain(..)
                .chain(ready.persisted_messages.drain(..))
            {
                self.inboxes[(message.to.0 - 1) as usize].push(message);
            }
            if k == 0 {
                applied_at_leader += ready
                    .committed_entries
                    .iter()
                    .filter(|e| matches!(e.payload, EntryPayload::Normal(_)))
                    .count() as u64;
            }
            node.advance();
        }
        for k in 0..self.nodes.len() {
            for message in std::mem::take(&mut self.inboxes[k]) {
                self.nodes[k].step(message);
            }
        }
        applied_at_leader
    }
}

fn measure(proposers: u64) -> f64 {
    let mut group = Group::new();
    group.nodes[0].campaign();
    for _ in 0..100 {
        group.round();
    }
    assert_eq!(group.nodes[0].role(), Role::Leader);
    let payload = Bytes::from(vec![7u8; PAYLOAD_BYTES]);
    let mut in_flight = 0u64;
    let mut committed = 0u64;
    let started = Instant::now();
    while started.elapsed() < RUN_TIME {
        for _ in 0..256 {
            while in_flight < proposers {
                group.nodes[0]
                    .propose(payload.clone())
                    .expect("leader accepts");
                in_flight += 1;
            }
            let applied = group.round();
            in_flight -= applied;
            committed += applied;
        }
    }
    committed as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let counts: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![1, 64, 4096]
    } else {
        counts
    };
    println!("raft core, 3 replicas in one process, {PAYLOAD_BYTES}-byte proposals, {RUN_TIME:?} per run");
    println!("{:>10} {:>22}", "proposers", "committed proposals/s");
    for proposers in counts {
        let rate = measure(proposers);
        println!("{proposers:>10} {rate:>22.0}");
    }
}
