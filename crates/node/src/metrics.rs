//! The member's metrics, in Prometheus's text exposition format (0.0.4), with etcd's names
//! where the meaning is the same so that etcd's dashboards and alerts work unchanged.
//!
//! A handful of fixed metrics does not need a metrics library: counters and gauges are
//! atomics, histograms fixed buckets of atomics, labelled families a small map. Recording
//! is lock-free except for labelled families, whose map is locked only to find the entry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets it.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract).
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution of durations over fixed buckets (upper bounds in seconds).
pub struct Histogram {
    bounds_seconds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// The sum of the observations, as f64 bits.
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds_seconds` (ascending); +Inf is implied.
    pub fn new(bounds_seconds: &'static [f64]) -> Histogram {
        assert!(
            bounds_seconds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must ascend"
        );
        Histogram {
            bounds_seconds,
            counts: (0..bounds_seconds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, duration: Duration) {
        self.observe_value(duration.as_secs_f64());
    }

    /// Records one value (in the unit of the bounds).
    pub fn observe_value(&self, value: f64) {
        if let Some(bucket) = self.bounds_seconds.iter().position(|&b| value <= b) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of the observations.
    pub fn sum_seconds(&self) -> f64 {
        f64::from_bits(self.sum_bits.load(Ordering::Relaxed))
    }

    /// The value below which `quantile` of the observations fall, as the upper bound of
    /// its bucket (None without observations, or past the last bound).
    pub fn quantile_upper_bound(&self, quantile: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let wanted = (quantile * total as f64).ceil() as u64;
        let mut seen = 0;
        for (bound, count) in self.bounds_seconds.iter().zip(&self.counts) {
            seen += count.load(Ordering::Relaxed);
            if seen >= wanted {
                return Some(*bound);
            }
        }
        None
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let separator = if labels.is_empty() { "" } else { "," };
        for (bound, count) in self.bounds_seconds.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{separator}le=\"{bound}\"}} {cumulative}"
            );
        }
        let total = self.count();
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{separator}le=\"+Inf\"}} {total}"
        );
        let braces = |labels: &str| {
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {}", braces(labels), self.sum_seconds());
        let _ = writeln!(out, "{name}_count{} {total}", braces(labels));
    }
}

/// A family of metrics told apart by label values.
pub struct Family<M> {
    label_names: &'static [&'static str],
    members: Mutex<BTreeMap<Vec<String>, Arc<M>>>,
    make: fn() -> M,
}

impl<M> Family<M> {
    fn new(label_names: &'static [&'static str], make: fn() -> M) -> Family<M> {
        Family {
            label_names,
            members: Mutex::new(BTreeMap::new()),
            make,
        }
    }

    /// The metric for these label values (in the order of the label names).
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        assert_eq!(values.len(), self.label_names.len(), "one value per label");
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let mut members = self.members.lock().expect("metrics lock");
        members
            .entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    /// Calls `f` with each member's label values (in the order of the names).
    pub fn each_metric(&self, mut f: impl FnMut(&[String], &M)) {
        let members = self.members.lock().expect("metrics lock");
        for (values, metric) in members.iter() {
            f(values, metric);
        }
    }

    fn each(&self, mut f: impl FnMut(String, &M)) {
        let members = self.members.lock().expect("metrics lock");
        for (values, metric) in members.iter() {
            let labels: Vec<String> = self
                .label_names
                .iter()
                .zip(values)
                .map(|(name, value)| format!("{name}=\"{}\"", escape_label(value)))
                .collect();
            f(labels.join(","), metric);
        }
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// etcd's buckets for disk latencies: 1 ms to about 8 s, doubling.
const DISK_BOUNDS_SECONDS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];
/// etcd's buckets for peer round trips: 0.1 ms to about 3.3 s, doubling.
const RTT_BOUNDS_SECONDS: &[f64] = &[
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768,
];
/// go-grpc-prometheus's default buckets for request latencies.
const GRPC_BOUNDS_SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Messages per transport batch.
const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Every metric of the member.
pub struct Metrics {
    /// 1 while the member knows a leader.
    pub has_leader: Gauge,
    /// 1 while the member leads.
    pub is_leader: Gauge,
    /// Leader changes this member has seen since it started.
    pub leader_changes_seen: Counter,
    /// The commit index of the member's raft group.
    pub proposals_committed: Gauge,
    /// The applied index.
    pub proposals_applied: Gauge,
    /// Proposals made here and not yet answered.
    pub proposals_pending: Gauge,
    /// Proposals that failed (no leader, timeout, dropped).
    pub proposals_failed: Counter,
    /// The member's raft term.
    pub raft_term: Gauge,
    /// WAL fsync latency.
    pub wal_fsync: Histogram,
    /// Latency of a batch of applied entries reaching the key-value backend.
    pub backend_commit: Histogram,
    /// The key-value store's size on disk.
    pub db_total_size_bytes: Gauge,
    /// Round trips to each peer, labelled `To` (the peer's id in hex), as etcd's.
    pub peer_round_trip: Family<Histogram>,
    /// Bytes sent to each peer.
    pub peer_sent_bytes: Family<Counter>,
    /// Bytes received from each peer.
    pub peer_received_bytes: Family<Counter>,
    /// Messages per batch the transport sends.
    pub transport_batch_messages: Histogram,
    /// Writes per batch this member forwards to a leader.
    pub forward_batch_writes: Histogram,
    /// Snapshots sent to followers.
    pub snapshots_sent: Counter,
    /// Snapshots received and installed.
    pub snapshots_received: Counter,
    /// Snapshots this member created (log compactions).
    pub snapshots_created: Counter,
    /// Raft messages dropped because a peer's send queue was full.
    pub peer_messages_dropped: Counter,
    /// Client requests refused because the event loop's input queue was full.
    pub inputs_refused: Counter,
    /// Raft groups hosted here.
    pub raft_groups: Gauge,
    /// Raft groups hosted here that are quiesced (neither ticked nor heartbeating).
    pub raft_groups_quiesced: Gauge,
    /// What the raft logs of every group here weigh in memory, at the last look.
    pub raft_log_bytes: Gauge,
    /// Raft groups this member leads.
    pub raft_groups_led: Gauge,
    /// Ranges here frozen for a merge.
    pub ranges_frozen: Gauge,
    /// Splits applied on this member that created a range here.
    pub range_splits: Counter,
    /// Looks at a range past its load (`--range-split-qps`) that left it whole, as no
    /// member had CPU to spare (`--range-split-spare-cores`).
    pub load_splits_held: Counter,
    /// Merges applied on this member (a range taken over by the one before it).
    pub range_merges: Counter,
    /// Range leaderships handed to another member to spread leaders over the nodes.
    pub leader_spread_moves: Counter,
    /// Requests per second this member serves as leader of its ranges, at the last look
    /// at spreading leaders (the figure it gossips).
    pub leading_requests_per_second: Gauge,
    /// Thousandths of a CPU core this member's host had idle (the lower of the last
    /// 10 s's and 3 s's means), as the member gossips it for splits by load (`host_cpu`).
    pub host_spare_millicores: Gauge,
    /// Writes across ranges this member coordinated that committed.
    pub txns_committed_across_ranges: Counter,
    /// Locks of transactions across ranges this member ended as stale (`txn_pusher`).
    pub txn_locks_pushed: Counter,
    /// Writes and prepares a range this member leads answered "locked" without
    /// proposing them (a transaction across ranges held the range).
    pub writes_held_off_by_locks: Counter,
    /// Prepares a range this member leads proposed behind the resolve or release of the
    /// lock in their way, already in its log (`Replica::unlocking`).
    pub txn_prepares_behind_unlocks: Counter,
    /// Prepares a range this member leads parked in its line while another
    /// transaction held the range (`prepare_line`).
    pub txn_prepares_parked: Counter,
    /// Writes answered "too many requests" because too many waited for revisions from
    /// the oracle already.
    pub writes_refused_waiting_revisions: Counter,
    /// Plain writes a range this member leads parked in its line while a transaction
    /// held the range (let in ahead of the prepares once it is free).
    pub writes_parked: Counter,
    /// Prepares and plain writes waiting in the lines of the ranges this member leads.
    pub writes_in_line: Gauge,
    /// How long the steps of a transaction across ranges that this member coordinated
    /// took, labelled `phase`: `prepare` (every range locked, revisions fetched),
    /// `evaluate` (the frozen views read and the request run over them), `commit` (the
    /// record written at the primary; the client is answered after it).
    pub txn_across_phase: Family<Histogram>,
    /// Committed transaction records nobody finished that the ranges this member leads
    /// finished once old (`txn_horizon`): every part written and the record marked.
    pub txn_records_finished_late: Counter,
    /// Aborted transaction records kept by the ranges this member leads, at the last
    /// look (`txn_horizon`).
    pub txn_records_aborted: Gauge,
    /// Committed transaction records kept by the ranges this member leads, at the last
    /// look (a coordinator or a pusher forgets one once every part is written).
    pub txn_records_committed: Gauge,
    /// Writes that waited for revisions from the oracle (ranges that split).
    pub oracle_revision_writes: Counter,
    /// Whether this member leads the meta range, and so serves the timestamp oracle.
    pub oracle_is_leader: Gauge,
    /// Timestamps the oracle on this member handed out.
    pub oracle_timestamps: Counter,
    /// Requests the oracle on this member answered (each for one or more timestamps).
    pub oracle_requests: Counter,
    /// Timestamp asks on a peer stream that went unanswered (asked again by a unary
    /// call).
    pub oracle_asks_unanswered: Counter,
    /// Timestamp asks this member sent on a peer stream and got a grant for.
    pub oracle_asks_granted: Counter,
    /// Other members' timestamp asks the oracle on this member served on the asker's
    /// word, with no heartbeat round (`crate::member_word::MemberWord`).
    pub oracle_asks_confirmed_by_word: Counter,
    /// Read barriers other members sent this member as their range's leader, confirmed
    /// on the sender's word of its range term, with no heartbeat round.
    pub reads_confirmed_by_word: Counter,
    /// Read points other members asked this member for as their range's leader (one
    /// peer call each, shared by the reads of the range waiting on that member): read
    /// barriers at a revision, and fresh read points.
    pub read_barriers_served: Counter,
    pub fresh_read_points_served: Counter,
    /// Read points this member asked ranges' leaders for on the peer streams: answered
    /// there, and unanswered within 500 ms (asked again by a unary call).
    pub read_point_asks_answered: Counter,
    pub read_point_asks_unanswered: Counter,
    /// Peer nodes this node reported down (silent for an election timeout).
    pub nodes_reported_down: Counter,
    /// Spans sent to the OpenTelemetry collector.
    pub trace_spans_exported: Counter,
    /// Spans dropped: the export queue was full or the collector refused or failed.
    pub trace_spans_dropped: Counter,
    /// gRPC requests started, by type, service and method.
    pub grpc_started: Family<Counter>,
    /// gRPC requests completed, by type, service, method and code.
    pub grpc_handled: Family<Counter>,
    /// gRPC handling latency, by type, service and method.
    pub grpc_handling: Family<Histogram>,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes_seen: Counter::default(),
            proposals_committed: Gauge::default(),
            proposals_applied: Gauge::default(),
            proposals_pending: Gauge::default(),
            proposals_failed: Counter::default(),
            raft_term: Gauge::default(),
            wal_fsync: Histogram::new(DISK_BOUNDS_SECONDS),
            backend_commit: Histogram::new(DISK_BOUNDS_SECONDS),
            db_total_size_bytes: Gauge::default(),
            peer_round_trip: Family::new(&["To"], || Histogram::new(RTT_BOUNDS_SECONDS)),
            peer_sent_bytes: Family::new(&["To"], Counter::default),
            peer_received_bytes: Family::new(&["From"], Counter::default),
            transport_batch_messages: Histogram::new(BATCH_BOUNDS),
            forward_batch_writes: Histogram::new(BATCH_BOUNDS),
            snapshots_sent: Counter::default(),
            snapshots_received: Counter::default(),
            snapshots_created: Counter::default(),
            peer_messages_dropped: Counter::default(),
            inputs_refused: Counter::default(),
            raft_groups: Gauge::default(),
            raft_groups_quiesced: Gauge::default(),
            raft_log_bytes: Gauge::default(),
            raft_groups_led: Gauge::default(),
            ranges_frozen: Gauge::default(),
            range_splits: Counter::default(),
            load_splits_held: Counter::default(),
            range_merges: Counter::default(),
            leader_spread_moves: Counter::default(),
            leading_requests_per_second: Gauge::default(),
            host_spare_millicores: Gauge::default(),
            txns_committed_across_ranges: Counter::default(),
            txn_locks_pushed: Counter::default(),
            writes_held_off_by_locks: Counter::default(),
            txn_prepares_behind_unlocks: Counter::default(),
            txn_prepares_parked: Counter::default(),
            writes_refused_waiting_revisions: Counter::default(),
            writes_parked: Counter::default(),
            writes_in_line: Gauge::default(),
            txn_across_phase: Family::new(&["phase"], || Histogram::new(RTT_BOUNDS_SECONDS)),
            txn_records_finished_late: Counter::default(),
            txn_records_aborted: Gauge::default(),
            txn_records_committed: Gauge::default(),
            oracle_revision_writes: Counter::default(),
            oracle_is_leader: Gauge::default(),
            oracle_timestamps: Counter::default(),
            oracle_requests: Counter::default(),
            oracle_asks_unanswered: Counter::default(),
            oracle_asks_confirmed_by_word: Counter::default(),
            reads_confirmed_by_word: Counter::default(),
            read_barriers_served: Counter::default(),
            fresh_read_points_served: Counter::default(),
            read_point_asks_answered: Counter::default(),
            read_point_asks_unanswered: Counter::default(),
            oracle_asks_granted: Counter::default(),
            nodes_reported_down: Counter::default(),
            trace_spans_exported: Counter::default(),
            trace_spans_dropped: Counter::default(),
            grpc_started: Family::new(
                &["grpc_type", "grpc_service", "grpc_method"],
                Counter::default,
            ),
            grpc_handled: Family::new(
                &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
                Counter::default,
            ),
            grpc_handling: Family::new(&["grpc_type", "grpc_service", "grpc_method"], || {
                Histogram::new(GRPC_BOUNDS_SECONDS)
            }),
        }
    }

    /// Every metric in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut scalar = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        scalar(
            "etcd_server_has_leader",
            "gauge",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            self.has_leader.get().to_string(),
        );
        scalar(
            "etcd_server_is_leader",
            "gauge",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            self.is_leader.get().to_string(),
        );
        scalar(
            "etcd_server_leader_changes_seen_total",
            "counter",
            "The number of leader changes seen.",
            self.leader_changes_seen.get().to_string(),
        );
        // etcd exposes these two as gauges despite the _total suffix; so do we.
        scalar(
            "etcd_server_proposals_committed_total",
            "gauge",
            "The total number of consensus proposals committed.",
            self.proposals_committed.get().to_string(),
        );
        scalar(
            "etcd_server_proposals_applied_total",
            "gauge",
            "The total number of consensus proposals applied.",
            self.proposals_applied.get().to_string(),
        );
        scalar(
            "etcd_server_proposals_pending",
            "gauge",
            "The current number of pending proposals to commit.",
            self.proposals_pending.get().to_string(),
        );
        scalar(
            "etcd_server_proposals_failed_total",
            "counter",
            "The total number of failed proposals seen.",
            self.proposals_failed.get().to_string(),
        );
        scalar(
            "etcd_mvcc_db_total_size_in_bytes",
            "gauge",
            "Total size of the underlying database physically allocated in bytes.",
            self.db_total_size_bytes.get().to_string(),
        );
        scalar(
            "ostrakon_raft_term",
            "gauge",
            "The raft term of this member's group.",
            self.raft_term.get().to_string(),
        );
        scalar(
            "ostrakon_snapshots_sent_total",
            "counter",
            "Raft snapshots sent to followers.",
            self.snapshots_sent.get().to_string(),
        );
        scalar(
            "ostrakon_snapshots_received_total",
            "counter",
            "Raft snapshots received and installed.",
            self.snapshots_received.get().to_string(),
        );
        scalar(
            "ostrakon_peer_messages_dropped_total",
            "counter",
            "Raft messages dropped because the peer's send queue was full (raft resends).",
            self.peer_messages_dropped.get().to_string(),
        );
        scalar(
            "ostrakon_inputs_refused_total",
            "counter",
            "Requests refused with 'too many requests' because the event loop's input queue was full.",
            self.inputs_refused.get().to_string(),
        );
        scalar(
            "ostrakon_raft_groups",
            "gauge",
            "Raft groups with a replica on this member.",
            self.raft_groups.get().to_string(),
        );
        scalar(
            "ostrakon_raft_groups_quiesced",
            "gauge",
            "Raft groups on this member that are quiesced: idle, neither ticked nor heartbeating.",
            self.raft_groups_quiesced.get().to_string(),
        );
        scalar(
            "ostrakon_raft_log_bytes",
            "gauge",
            "Bytes of raft log entries every group on this member holds in memory (bounded by --raft-log-memory-bytes).",
            self.raft_log_bytes.get().to_string(),
        );
        scalar(
            "ostrakon_ranges_frozen",
            "gauge",
            "Ranges on this member frozen for a merge: a merge under way (one whose coordinator died is thawed after 15 s).",
            self.ranges_frozen.get().to_string(),
        );
        scalar(
            "ostrakon_raft_groups_led",
            "gauge",
            "Raft groups this member leads.",
            self.raft_groups_led.get().to_string(),
        );
        scalar(
            "ostrakon_range_splits_total",
            "counter",
            "Splits applied on this member that created a range here.",
            self.range_splits.get().to_string(),
        );
        scalar(
            "ostrakon_load_splits_held_total",
            "counter",
            "Looks at a range past its load that left it whole, as no member had CPU to spare (--range-split-spare-cores).",
            self.load_splits_held.get().to_string(),
        );
        scalar(
            "ostrakon_range_merges_total",
            "counter",
            "Merges applied on this member (a range taken over by the one before it).",
            self.range_merges.get().to_string(),
        );
        scalar(
            "ostrakon_txns_committed_across_ranges_total",
            "counter",
            "Writes across ranges this member coordinated that committed.",
            self.txns_committed_across_ranges.get().to_string(),
        );
        scalar(
            "ostrakon_txn_locks_pushed_total",
            "counter",
            "Locks of transactions across ranges this member ended as stale.",
            self.txn_locks_pushed.get().to_string(),
        );
        scalar(
            "ostrakon_writes_held_off_by_locks_total",
            "counter",
            "Writes and prepares the ranges this member leads answered locked without proposing them.",
            self.writes_held_off_by_locks.get().to_string(),
        );
        scalar(
            "ostrakon_txn_prepares_behind_unlocks_total",
            "counter",
            "Prepares proposed behind the resolve or release of the lock in their way.",
            self.txn_prepares_behind_unlocks.get().to_string(),
        );
        scalar(
            "ostrakon_txn_prepares_parked_total",
            "counter",
            "Prepares parked in the line of a range this member leads while another transaction held it.",
            self.txn_prepares_parked.get().to_string(),
        );
        scalar(
            "ostrakon_writes_refused_waiting_revisions_total",
            "counter",
            "Writes answered too many requests because too many waited for revisions from the oracle.",
            self.writes_refused_waiting_revisions.get().to_string(),
        );
        scalar(
            "ostrakon_writes_parked_total",
            "counter",
            "Plain writes parked in the line of a range this member leads while a transaction held it.",
            self.writes_parked.get().to_string(),
        );
        scalar(
            "ostrakon_writes_in_line",
            "gauge",
            "Prepares and plain writes waiting in the lines of the ranges this member leads.",
            self.writes_in_line.get().to_string(),
        );
        scalar(
            "ostrakon_txn_records_finished_late_total",
            "counter",
            "Committed transaction records nobody finished that this member finished once old.",
            self.txn_records_finished_late.get().to_string(),
        );
        scalar(
            "ostrakon_txn_records_aborted",
            "gauge",
            "Aborted records of transactions across ranges kept by the ranges this member leads (forgotten once their horizon passes, 10 minutes on).",
            self.txn_records_aborted.get().to_string(),
        );
        scalar(
            "ostrakon_txn_records_committed",
            "gauge",
            "Committed records of transactions across ranges kept by the ranges this member leads (forgotten once every range wrote its part).",
            self.txn_records_committed.get().to_string(),
        );
        scalar(
            "ostrakon_leader_spread_moves_total",
            "counter",
            "Range leaderships this member handed to another to spread leaders over the nodes.",
            self.leader_spread_moves.get().to_string(),
        );
        scalar(
            "ostrakon_leading_requests_per_second",
            "gauge",
            "Requests per second this member serves as leader of its ranges, at its last look at spreading leaders (the load it tells the other members).",
            self.leading_requests_per_second.get().to_string(),
        );
        scalar(
            "ostrakon_host_spare_millicores",
            "gauge",
            "Thousandths of a CPU core this member's host had idle, the lower of the last 10 s's and 3 s's means (less where a cgroup limit leaves less), as it tells its peers for splits by load.",
            self.host_spare_millicores.get().to_string(),
        );
        scalar(
            "ostrakon_oracle_revision_writes_total",
            "counter",
            "Writes that took their revision from the timestamp oracle (ranges that split).",
            self.oracle_revision_writes.get().to_string(),
        );
        scalar(
            "ostrakon_oracle_is_leader",
            "gauge",
            "Whether this member leads the meta range and serves the timestamp oracle (1) or not (0).",
            self.oracle_is_leader.get().to_string(),
        );
        scalar(
            "ostrakon_oracle_timestamps_total",
            "counter",
            "Timestamps the oracle on this member handed out.",
            self.oracle_timestamps.get().to_string(),
        );
        scalar(
            "ostrakon_oracle_requests_total",
            "counter",
            "Requests the oracle on this member answered; timestamps per request is the batching.",
            self.oracle_requests.get().to_string(),
        );
        scalar(
            "ostrakon_oracle_asks_confirmed_by_word_total",
            "counter",
            "Other members' timestamp asks the oracle on this member served on the asker's word of its meta term, with no heartbeat round.",
            self.oracle_asks_confirmed_by_word.get().to_string(),
        );
        scalar(
            "ostrakon_reads_confirmed_by_word_total",
            "counter",
            "Read barriers other members sent this member as their range's leader, confirmed on the sender's word of its range term, with no heartbeat round.",
            self.reads_confirmed_by_word.get().to_string(),
        );
        scalar(
            "ostrakon_read_barriers_served_total",
            "counter",
            "Read barriers at a revision other members asked this member for as their range's leader (a peer call each, shared by the reads waiting on that member).",
            self.read_barriers_served.get().to_string(),
        );
        scalar(
            "ostrakon_fresh_read_points_served_total",
            "counter",
            "Fresh read points other members asked this member for as their range's leader (a peer call each, shared by the linearizable reads of the range waiting on that member).",
            self.fresh_read_points_served.get().to_string(),
        );
        scalar(
            "ostrakon_read_point_asks_answered_total",
            "counter",
            "Read barriers and fresh read points this member asked ranges' leaders for on the peer streams and got answered there.",
            self.read_point_asks_answered.get().to_string(),
        );
        scalar(
            "ostrakon_read_point_asks_unanswered_total",
            "counter",
            "Read point asks on a peer stream unanswered within 500 ms, asked again by a unary call.",
            self.read_point_asks_unanswered.get().to_string(),
        );
        scalar(
            "ostrakon_oracle_asks_unanswered_total",
            "counter",
            "Timestamp asks on a peer stream unanswered within 500 ms, asked again by a unary call.",
            self.oracle_asks_unanswered.get().to_string(),
        );
        scalar(
            "ostrakon_oracle_asks_granted_total",
            "counter",
            "Timestamp asks this member sent on a peer stream and got a grant for.",
            self.oracle_asks_granted.get().to_string(),
        );
        scalar(
            "ostrakon_nodes_reported_down_total",
            "counter",
            "Times a peer was silent for an election timeout and reported down to the quiesced groups it led.",
            self.nodes_reported_down.get().to_string(),
        );
        scalar(
            "ostrakon_snapshots_created_total",
            "counter",
            "Raft snapshots this member created to compact its log.",
            self.snapshots_created.get().to_string(),
        );
        scalar(
            "ostrakon_trace_spans_exported_total",
            "counter",
            "Spans sent to the OpenTelemetry collector.",
            self.trace_spans_exported.get().to_string(),
        );
        scalar(
            "ostrakon_trace_spans_dropped_total",
            "counter",
            "Spans dropped because the export queue was full or the collector failed.",
            self.trace_spans_dropped.get().to_string(),
        );
        for (name, help, histogram) in [
            (
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                &self.wal_fsync,
            ),
            (
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                &self.backend_commit,
            ),
            (
                "ostrakon_transport_batch_messages",
                "Raft messages per batch sent to a peer.",
                &self.transport_batch_messages,
            ),
            (
                "ostrakon_forward_batch_writes",
                "Writes per batch forwarded to a range's leader.",
                &self.forward_batch_writes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            histogram.render(&mut out, name, "");
        }
        let name = "etcd_network_peer_round_trip_time_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Round-Trip-Time histogram between peers\n# TYPE {name} histogram"
        );
        self.peer_round_trip
            .each(|labels, histogram| histogram.render(&mut out, name, &labels));
        let name = "ostrakon_txn_across_phase_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Steps of the transactions across ranges this member coordinated \
             (prepare, evaluate, commit).\n# TYPE {name} histogram"
        );
        self.txn_across_phase
            .each(|labels, histogram| histogram.render(&mut out, name, &labels));
        for (name, help, family) in [
            (
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &self.peer_sent_bytes,
            ),
            (
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &self.peer_received_bytes,
            ),
            (
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &self.grpc_started,
            ),
            (
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &self.grpc_handled,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            family.each(|labels, counter| {
                let _ = writeln!(out, "{name}{{{labels}}} {}", counter.get());
            });
        }
        let name = "grpc_server_handling_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Histogram of response latency (seconds) of gRPC that had been \
             application-level handled by the server.\n# TYPE {name} histogram"
        );
        self.grpc_handling
            .each(|labels, histogram| histogram.render(&mut out, name, &labels));
        out
    }
}

/// The process's metrics (one member per process).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::new(&[0.001, 0.01]);
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_secs(1));
        let mut out = String::new();
        histogram.render(&mut out, "x", "To=\"a\"");
        assert_eq!(
            out,
            "x_bucket{To=\"a\",le=\"0.001\"} 1\nx_bucket{To=\"a\",le=\"0.01\"} 2\n\
             x_bucket{To=\"a\",le=\"+Inf\"} 3\nx_sum{To=\"a\"} 1.0055\nx_count{To=\"a\"} 3\n"
        );
        assert_eq!(histogram.quantile_upper_bound(0.5), Some(0.01));
        assert_eq!(histogram.quantile_upper_bound(0.99), None);
    }

    #[test]
    fn families_render_one_line_per_label_set_with_escaped_values() {
        let metrics = Metrics::new();
        metrics
            .grpc_handled
            .with(&["unary", "etcdserverpb.KV", "Put", "OK"])
            .add(3);
        metrics.leader_changes_seen.inc();
        let text = metrics.render();
        assert!(text.contains(
            "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"etcdserverpb.KV\",\
             grpc_method=\"Put\",grpc_code=\"OK\"} 3\n"
        ));
        assert!(text.contains("# TYPE etcd_server_leader_changes_seen_total counter\n"));
        assert!(text.contains("etcd_server_leader_changes_seen_total 1\n"));
        assert_eq!(escape_label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
