//! Node liveness: when each peer node was last heard from, whatever the raft groups.
//!
//! Quiesced groups send nothing, so their followers cannot tell a dead leader from an
//! idle one. The node pair's stream can: every batch a peer sends counts, and a peer's
//! sender sends an empty batch when it has had nothing to send for a heartbeat interval
//! (`Transport`'s idle ping). The event loop reports a peer silent for an election
//! timeout to every group quiesced under a leader there (`RawNode::report_node_down`).
//! One heartbeat per node pair, instead of one per group, is what lets a node hold many
//! groups at almost no cost at rest (CockroachDB's node liveness plays the same part for
//! its quiesced ranges).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ostrakon_raft::NodeId;

/// When each peer was last heard from.
#[derive(Debug)]
pub struct Liveness {
    /// Peers never heard from count from here (the node's start): a peer gets an
    /// election timeout to show up before it is called down.
    started: Instant,
    heard: Mutex<HashMap<NodeId, Instant>>,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            started: Instant::now(),
            heard: Mutex::new(HashMap::new()),
        }
    }
}

impl Liveness {
    /// A batch (possibly empty) arrived from `from`.
    pub fn heard(&self, from: NodeId) {
        self.heard.lock().unwrap().insert(from, Instant::now());
    }

    /// Whether `peer` has been silent for longer than `silence` at `now`.
    pub fn is_silent(&self, peer: NodeId, silence: Duration, now: Instant) -> bool {
        let last = self
            .heard
            .lock()
            .unwrap()
            .get(&peer)
            .copied()
            .unwrap_or(self.started);
        now.saturating_duration_since(last) > silence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_silent_only_after_the_whole_window_without_a_batch() {
        let liveness = Liveness::default();
        let window = Duration::from_secs(1);
        let peer = NodeId(7);
        let start = liveness.started;
        assert!(!liveness.is_silent(peer, window, start + Duration::from_millis(900)));
        assert!(liveness.is_silent(peer, window, start + Duration::from_millis(1100)));
        liveness.heard(peer);
        let heard_at = liveness.heard.lock().unwrap()[&peer];
        assert!(!liveness.is_silent(peer, window, heard_at + Duration::from_millis(999)));
        assert!(liveness.is_silent(peer, window, heard_at + Duration::from_millis(1001)));
        assert!(liveness.is_silent(NodeId(8), window, heard_at + Duration::from_secs(2)));
    }
}
