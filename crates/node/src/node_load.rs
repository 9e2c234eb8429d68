//! The load each node serves as leader of its ranges, for spreading leaders by load
//! (`ostrakon_ranges::leader_balance`): this node's own figure, set by the event loop at
//! each look, rides every batch of the peer streams (idle pings included), and the
//! figures the peers send are kept with the time they arrived. A figure older than
//! `PEER_LOAD_FRESH_FOR` (a peer that went quiet, or an older build that sends none)
//! does not count: that peer takes no range by load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ostrakon_raft::NodeId;
use ostrakon_ranges::leader_balance::PeerLoads;

/// How long a peer's figure counts after it arrived: a peer sends one at least every
/// idle ping, and refreshes it at every look (every 2 s while it carries load).
pub const PEER_LOAD_FRESH_FOR: Duration = Duration::from_secs(10);

/// This node's load and its peers', and which of them are draining their leaderships.
#[derive(Debug)]
pub struct NodeLoads {
    /// This node's requests per second as leader, as `f64` bits (0 until the first look).
    mine_bits: AtomicU64,
    peers: Mutex<HashMap<NodeId, (f64, Instant)>>,
    /// Until when this node hands its leaderships away and takes none by spreading.
    draining_until: Mutex<Option<Instant>>,
    /// Counts the drains begun (and ended), so that the end of one drain's MoveLeader
    /// passes is not taken for a later one's.
    drain_generation: AtomicU64,
    /// The drain whose MoveLeader passes are over: from then on the event loop hands
    /// away every leadership this node takes while that drain lasts (one won in an
    /// election).
    drain_passes_done: AtomicU64,
    /// The peers that said they are draining, with when they last said so.
    peers_draining: Mutex<HashMap<NodeId, Instant>>,
    /// The CPU cores this node's host has to spare (`host_cpu`), as `f64` bits; NaN
    /// until measured.
    spare_cores_bits: AtomicU64,
    /// The peers' spare cores, with when they arrived.
    peers_spare: Mutex<HashMap<NodeId, (f64, Instant)>>,
}

impl Default for NodeLoads {
    fn default() -> Self {
        NodeLoads {
            mine_bits: AtomicU64::default(),
            peers: Mutex::default(),
            draining_until: Mutex::default(),
            drain_generation: AtomicU64::default(),
            drain_passes_done: AtomicU64::default(),
            peers_draining: Mutex::default(),
            spare_cores_bits: AtomicU64::new(f64::NAN.to_bits()),
            peers_spare: Mutex::default(),
        }
    }
}

impl NodeLoads {
    /// This node's load, as the last look found it.
    pub fn mine(&self) -> f64 {
        f64::from_bits(self.mine_bits.load(Ordering::Relaxed))
    }

    /// The event loop's look found this node serving `per_second` as leader.
    pub fn set_mine(&self, per_second: f64) {
        self.mine_bits
            .store(per_second.to_bits(), Ordering::Relaxed);
    }

    /// `from` reported its load. A figure that is not a load (negative, not finite)
    /// is ignored: the peer then has no fresh figure.
    pub fn heard(&self, from: NodeId, per_second: f64, now: Instant) {
        if per_second.is_finite() && per_second >= 0.0 {
            self.peers
                .lock()
                .expect("peer loads lock")
                .insert(from, (per_second, now));
        }
    }

    /// This node drains its leaderships from `now` for `hold`: an operator moved them
    /// away (MoveLeader), and spreading must not hand them back at once, or a member
    /// drained before a stop would lead again by the time it stops.
    /// Returns the drain's generation, for `end_drain_passes`.
    pub fn drain_for(&self, hold: Duration, now: Instant) -> u64 {
        let mut until = self.draining_until.lock().expect("draining lock");
        *until = Some(now + hold);
        self.drain_generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// MoveLeader's passes over this node's leaderships ended for the drain of
    /// `generation`: what it leads from now on while that drain lasts, the event loop
    /// hands away (before, its moves would race the operator's, and send the first
    /// range elsewhere than the target asked for).
    pub fn end_drain_passes(&self, generation: u64) {
        // The latest drain whose passes ended: an earlier drain's passes ending later
        // must not hide the current one's.
        self.drain_passes_done
            .fetch_max(generation, Ordering::Relaxed);
    }

    /// Whether this node drains at `now` and the MoveLeader passes of that drain are
    /// over.
    pub fn draining_after_passes(&self, now: Instant) -> bool {
        let generation = self.drain_generation.load(Ordering::Relaxed);
        generation != 0
            && self.drain_passes_done.load(Ordering::Relaxed) == generation
            && self.draining(now)
    }

    /// Whether this node is draining its leaderships at `now`.
    pub fn draining(&self, now: Instant) -> bool {
        self.draining_until
            .lock()
            .expect("draining lock")
            .is_some_and(|until| now < until)
    }

    /// `from`'s batch said whether it is draining its leaderships.
    pub fn heard_draining(&self, from: NodeId, draining: bool, now: Instant) {
        let mut peers = self.peers_draining.lock().expect("draining lock");
        if draining {
            peers.insert(from, now);
        } else {
            peers.remove(&from);
        }
    }

    /// Whether `node` said lately (within `PEER_LOAD_FRESH_FOR`) that it is draining,
    /// and has not said otherwise since.
    pub fn peer_draining(&self, node: NodeId, now: Instant) -> bool {
        self.peers_draining
            .lock()
            .expect("draining lock")
            .get(&node)
            .is_some_and(|&at| now.saturating_duration_since(at) < PEER_LOAD_FRESH_FOR)
    }

    /// The cores this node's host has to spare, as last measured (None before).
    pub fn spare_cores(&self) -> Option<f64> {
        let cores = f64::from_bits(self.spare_cores_bits.load(Ordering::Relaxed));
        (!cores.is_nan()).then_some(cores)
    }

    /// `host_cpu` measured the host's spare cores.
    pub fn set_spare_cores(&self, cores: f64) {
        self.spare_cores_bits
            .store(cores.to_bits(), Ordering::Relaxed);
        crate::metrics::metrics()
            .host_spare_millicores
            .set((cores * 1000.0).round() as i64);
    }

    /// This node's host can no longer be measured: it tells its peers nothing.
    pub fn clear_spare_cores(&self) {
        self.spare_cores_bits
            .store(f64::NAN.to_bits(), Ordering::Relaxed);
        crate::metrics::metrics().host_spare_millicores.set(0);
    }

    /// `from` said its host has `cores` to spare. A figure that is not a count of cores
    /// (negative, not finite) is ignored.
    pub fn heard_spare(&self, from: NodeId, cores: f64, now: Instant) {
        if cores.is_finite() && cores >= 0.0 {
            self.peers_spare
                .lock()
                .expect("peer spare lock")
                .insert(from, (cores, now));
        }
    }

    /// `from` sent a batch without a figure: it has none to spare from now on.
    pub fn forget_spare(&self, from: NodeId) {
        self.peers_spare
            .lock()
            .expect("peer spare lock")
            .remove(&from);
    }

    /// The peer with the most cores to spare among those that said so lately (within
    /// `PEER_LOAD_FRESH_FOR`) and `may_take` load, with its figure; None if none did.
    pub fn most_spare_peer(
        &self,
        now: Instant,
        may_take: impl Fn(NodeId) -> bool,
    ) -> Option<(NodeId, f64)> {
        self.peers_spare
            .lock()
            .expect("peer spare lock")
            .iter()
            .filter(|(_, &(_, at))| now.saturating_duration_since(at) < PEER_LOAD_FRESH_FOR)
            .filter(|(&node, _)| may_take(node))
            .map(|(&node, &(cores, _))| (node, cores))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The peers' fresh figures.
    pub fn fresh(&self, now: Instant) -> PeerLoads {
        self.peers
            .lock()
            .expect("peer loads lock")
            .iter()
            .filter(|(_, &(_, at))| now.saturating_duration_since(at) < PEER_LOAD_FRESH_FOR)
            .map(|(&node, &(load, _))| (node, load))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_holds_for_its_time_and_a_peer_drains_until_it_says_otherwise() {
        let loads = NodeLoads::default();
        let start = Instant::now();
        assert!(!loads.draining(start));
        let drain = loads.drain_for(Duration::from_secs(30), start);
        assert!(
            !loads.draining_after_passes(start),
            "its passes are not over"
        );
        loads.end_drain_passes(drain);
        assert!(loads.draining_after_passes(start));
        // A later drain's passes are not over when the earlier drain's end.
        let later = loads.drain_for(Duration::from_secs(30), start);
        loads.end_drain_passes(drain);
        assert!(!loads.draining_after_passes(start));
        loads.end_drain_passes(later);
        assert!(loads.draining_after_passes(start));
        assert!(loads.draining(start + Duration::from_secs(29)));
        assert!(!loads.draining(start + Duration::from_secs(30)));

        loads.heard_draining(NodeId(2), true, start);
        assert!(loads.peer_draining(NodeId(2), start + Duration::from_secs(1)));
        assert!(!loads.peer_draining(NodeId(3), start));
        assert!(
            !loads.peer_draining(NodeId(2), start + PEER_LOAD_FRESH_FOR),
            "a peer gone quiet drains no longer"
        );
        loads.heard_draining(NodeId(2), false, start + Duration::from_secs(2));
        assert!(!loads.peer_draining(NodeId(2), start + Duration::from_secs(2)));
    }

    #[test]
    fn a_peer_figure_counts_while_fresh_and_only_if_it_is_a_load() {
        let loads = NodeLoads::default();
        let start = Instant::now();
        loads.heard(NodeId(2), 250.0, start);
        loads.heard(NodeId(3), f64::NAN, start);
        loads.heard(NodeId(4), -1.0, start);
        let fresh = loads.fresh(start + Duration::from_secs(1));
        assert_eq!(
            fresh.into_iter().collect::<Vec<_>>(),
            vec![(NodeId(2), 250.0)]
        );
        assert!(loads.fresh(start + PEER_LOAD_FRESH_FOR).is_empty());
        assert_eq!(loads.mine(), 0.0);
        loads.set_mine(12.5);
        assert_eq!(loads.mine(), 12.5);
    }

    #[test]
    fn the_most_spare_peer_is_among_fresh_figures_of_cores() {
        let loads = NodeLoads::default();
        let start = Instant::now();
        assert_eq!(loads.spare_cores(), None, "not measured yet");
        loads.set_spare_cores(0.25);
        assert_eq!(loads.spare_cores(), Some(0.25));
        let any = |_| true;
        assert_eq!(loads.most_spare_peer(start, any), None);
        loads.heard_spare(NodeId(2), 0.5, start);
        loads.heard_spare(NodeId(3), 1.5, start);
        loads.heard_spare(NodeId(4), f64::INFINITY, start);
        loads.heard_spare(NodeId(5), -1.0, start);
        let later = start + Duration::from_secs(1);
        assert_eq!(loads.most_spare_peer(later, any), Some((NodeId(3), 1.5)));
        let not_3 = |node| node != NodeId(3);
        assert_eq!(
            loads.most_spare_peer(later, not_3),
            Some((NodeId(2), 0.5)),
            "only peers that may take load"
        );
        loads.heard_spare(NodeId(2), 0.75, later);
        let stale_for_3 = start + PEER_LOAD_FRESH_FOR;
        assert_eq!(
            loads.most_spare_peer(stale_for_3, any),
            Some((NodeId(2), 0.75)),
            "a peer gone quiet no longer counts"
        );
        assert_eq!(
            loads.most_spare_peer(later + PEER_LOAD_FRESH_FOR, any),
            None
        );
        loads.forget_spare(NodeId(2));
        let still_fresh = start + Duration::from_secs(2);
        assert_eq!(
            loads.most_spare_peer(still_fresh, any),
            Some((NodeId(3), 1.5))
        );
        loads.forget_spare(NodeId(3));
        assert_eq!(
            loads.most_spare_peer(still_fresh, any),
            None,
            "forgotten at once"
        );
        loads.clear_spare_cores();
        assert_eq!(loads.spare_cores(), None);
    }
}
