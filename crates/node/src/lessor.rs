//! Lease deadlines, kept by the leader of each group.
//!
//! Which leases exist, with their TTLs, is replicated state (the store). When they expire
//! is not: wall clocks differ between members, so only the leader keeps deadlines, renews
//! them on keep-alives (followers forward those), and proposes a revoke when one passes.
//! A new leader starts each lease from its last checkpointed remaining TTL (or its full
//! TTL), and the leader checkpoints remaining TTLs regularly, so a lease's life is not
//! reset again and again by leader changes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ostrakon_proto::etcdserverpb::LeaseCheckpoint;
use ostrakon_raft::Term;
use ostrakon_storage::mvcc::MvccStore;

/// A revoke that has not taken effect after this long is proposed again.
const REVOKE_RETRY: Duration = Duration::from_secs(3);

/// A clear a renewal queued, or the clears a write carries: the lessor's leadership
/// (`LessorState::epoch`: a term's leadership that ended and came back is another) and
/// a number in this lessor (`LessorState::clears_queued`; of a write: its last).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedClear {
    /// The leadership it was queued in.
    pub epoch: u64,
    /// Its number.
    pub number: u64,
}

/// What a lease query found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTtl {
    /// Seconds left.
    pub remaining_secs: i64,
    /// The granted TTL.
    pub ttl_secs: i64,
}

/// etcd's default lease checkpoint interval.
pub const CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);

/// The shortest wait for a lease's next checkpoint: one due sooner is not scheduled (a
/// new leader would start the lease from at most this much more than it has).
const CHECKPOINT_GAP_MIN: Duration = Duration::from_secs(1);

/// The most checkpoints one write carries (etcd's limit): the others stay due for the
/// next.
const CHECKPOINTS_PER_WRITE_MAX: usize = 1_000;

/// One group's lease deadlines on this member (empty unless it leads).
pub struct Lessor {
    state: Mutex<LessorState>,
    /// Added to every deadline a new leadership starts from (an election timeout, as
    /// etcd's lessor extends its leases when promoted): keep-alives sent to the old
    /// leader while it was being replaced had no leader to answer them.
    takeover_extension: Duration,
    /// The longest a lease goes without a keep-alive or a checkpoint of its remaining
    /// TTL (etcd's checkpoint interval), often sooner (`checkpoint_gap`); None: never
    /// checkpointed.
    checkpoint_interval: Option<Duration>,
    /// The leadership this lessor keeps deadlines for (`LessorState::epoch`), and the
    /// number of the last clear a write of it carried: a keep-alive that queued one is
    /// answered once it is written, and fails once the leadership ends (its clear was
    /// dropped then, and its deadline with it: `wait_for_clear`).
    clears_written: tokio::sync::watch::Sender<QueuedClear>,
    /// Wakes the group's lease task for a clear a keep-alive waits for.
    pub(crate) clear_wanted: tokio::sync::Notify,
}

impl Default for Lessor {
    fn default() -> Self {
        Lessor::new(Duration::ZERO, Some(CHECKPOINT_INTERVAL_DEFAULT))
    }
}

#[derive(Default)]
struct LessorState {
    /// The term this member leads in, if it leads.
    leading: Option<Term>,
    deadlines: HashMap<i64, Instant>,
    /// Revokes proposed and when.
    revoking: HashMap<i64, Instant>,
    /// Leases renewed since a checkpoint recorded a remaining TTL for them: that record
    /// is cleared through the log (`checkpoint_clears`), or a new leader would start
    /// them from it, short of the TTL the keep-alive gave (etcd clears it at renew).
    to_clear: std::collections::HashSet<i64>,
    /// When each lease is next checkpointed, if it is not renewed before.
    next_checkpoint: HashMap<i64, Instant>,
    /// The leases this leadership wrote a checkpoint for: the renewal of one clears it
    /// also when the checkpoint has not been applied yet (the store then shows none, and
    /// the record would outlive the renewal).
    checkpointed: std::collections::HashSet<i64>,
    /// Clears queued by renewals so far, each numbered (never reset: a number waited
    /// for is written or the wait times out).
    clears_queued: u64,
    /// Raised at every change of `leading`: a term's leadership that ends and comes
    /// back (a sweep as a follower in between) dropped what the first one queued.
    epoch: u64,
}

impl LessorState {
    /// Sets the lease's deadline, and schedules its next checkpoint `gap` from `now`
    /// (`Lessor::checkpoint_gap`), or none.
    fn set_deadline(&mut self, id: i64, deadline: Instant, now: Instant, gap: Option<Duration>) {
        self.deadlines.insert(id, deadline);
        match gap {
            Some(gap) => self.next_checkpoint.insert(id, now + gap),
            None => self.next_checkpoint.remove(&id),
        };
    }
}

/// Why a lease's deadline was set, which decides when it is checkpointed next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeadlineSet {
    /// Its holder granted or renewed it.
    ByHolder,
    /// A new leadership took it over, or a checkpoint recorded it: nobody renewed it
    /// since this member knows of.
    Otherwise,
}

impl Lessor {
    /// When a lease with `left` to live, whose deadline was just set (`why`), is next
    /// checkpointed, if it is not renewed before: none with checkpoints off, or under a
    /// second away.
    ///
    /// - Set by its holder: once half of `left` has gone, or after the interval if that
    ///   is sooner. A lease kept alive (etcd's client renews at a third of its TTL) with
    ///   a TTL under three intervals (15 minutes) is never checkpointed: it costs no
    ///   write. A longer one is, once an interval, as in etcd.
    /// - Otherwise: after a quarter of `left` or two election timeouts, whichever is
    ///   longer (the interval at most). A lease whose holder went away is so recorded
    ///   ever more often as its end nears, and a new leader starts it from at most a
    ///   quarter more than it had and an election timeout; one whose first range's
    ///   leadership moves every few seconds still runs out (with only the first rule, a
    ///   leadership lasting less than half the lease's TTL wrote none, and every new
    ///   leader restarted it at its full TTL). A kept-alive lease costs one checkpoint
    ///   (and its clear) per leader change at most.
    fn checkpoint_gap(&self, left: Duration, why: DeadlineSet) -> Option<Duration> {
        let interval = self.checkpoint_interval?.max(CHECKPOINT_GAP_MIN);
        let gap = match why {
            DeadlineSet::ByHolder => left / 2,
            DeadlineSet::Otherwise => (left / 4).max(self.takeover_extension * 2),
        }
        .min(interval);
        (gap >= CHECKPOINT_GAP_MIN).then_some(gap)
    }

    /// A lessor whose new leaderships extend every deadline by `takeover_extension`, and
    /// which checkpoints a lease not kept alive at least every `checkpoint_interval`
    /// (never if None: etcd's `--experimental-enable-lease-checkpoint=false`).
    pub fn new(takeover_extension: Duration, checkpoint_interval: Option<Duration>) -> Lessor {
        assert!(
            checkpoint_interval.is_none_or(|interval| !interval.is_zero()),
            "a checkpoint interval"
        );
        Lessor {
            state: Mutex::default(),
            takeover_extension,
            checkpoint_interval,
            clears_written: tokio::sync::watch::Sender::new(QueuedClear {
                epoch: 0,
                number: 0,
            }),
            clear_wanted: tokio::sync::Notify::new(),
        }
    }

    /// A keep-alive, answered by this member as leader in `term` (confirmed by the
    /// caller): the lease gets its full TTL again from now. The deadlines of `term` are
    /// taken over first if this lessor does not keep them (under the same lock: a sweep
    /// that dropped them in between made a live lease answer "not found", found by
    /// review). `None` if the lease does not exist, and for a lease whose deadline has
    /// passed (its revoke is due or under way: acknowledging the keep-alive would tell
    /// its holder it has a TTL left while its keys go; etcd answers it as not found too).
    pub fn renew(&self, store: &MvccStore, term: Term, id: i64) -> Option<LeaseTtl> {
        self.renew_queueing_clear(store, term, id)
            .map(|(ttl, _)| ttl)
    }

    /// `renew`, with the number of the clear it queued if the lease had a checkpoint of
    /// its remaining TTL recorded (or being written): its holder is to be answered only
    /// once a write carried it (`wait_for_clear`), as etcd's renew proposes the clear
    /// before it answers, or a new leader would start the lease from that record, short
    /// of the TTL the answer promised (found by review).
    pub fn renew_queueing_clear(
        &self,
        store: &MvccStore,
        term: Term,
        id: i64,
    ) -> Option<(LeaseTtl, Option<QueuedClear>)> {
        let mut state = self.state.lock().unwrap();
        let now = Instant::now();
        if state.leading != Some(term) {
            self.sync_locked(&mut state, store, Some(term), now);
        }
        let record = store.lease(id)?;
        let expired = state
            .deadlines
            .get(&id)
            .is_some_and(|deadline| *deadline <= now);
        if expired || state.revoking.contains_key(&id) {
            return None;
        }
        let left = Duration::from_secs(record.ttl_secs as u64);
        let gap = self.checkpoint_gap(left, DeadlineSet::ByHolder);
        state.set_deadline(id, now + left, now, gap);
        let mut clear = None;
        if state.checkpointed.remove(&id) || record.remaining_secs > 0 {
            state.to_clear.insert(id);
            state.clears_queued += 1;
            clear = Some(QueuedClear {
                epoch: state.epoch,
                number: state.clears_queued,
            });
        }
        let ttl = LeaseTtl {
            remaining_secs: record.ttl_secs,
            ttl_secs: record.ttl_secs,
        };
        Some((ttl, clear))
    }

    /// Waits until a write of the clear's leadership carried it (true), or that
    /// leadership ended (false: the clear was dropped, and the renewal with it).
    pub async fn wait_for_clear(&self, clear: QueuedClear) -> bool {
        let mut written = self.clears_written.subscribe();
        // The sender lives as long as `self`; epochs only rise.
        let Ok(seen) = written
            .wait_for(|seen| seen.epoch != clear.epoch || seen.number >= clear.number)
            .await
        else {
            return false;
        };
        seen.epoch == clear.epoch && seen.number >= clear.number
    }

    /// A write carried `written` (`take_checkpoint_clears`): every clear of its
    /// leadership numbered up to it is written (one write at a time per leadership,
    /// and a failed one's clears requeued before the next is taken).
    pub(crate) fn clears_written_upto(&self, written: QueuedClear) {
        self.clears_written.send_if_modified(|kept| {
            let raised = kept.epoch == written.epoch && written.number > kept.number;
            if raised {
                kept.number = written.number;
            }
            raised
        });
    }

    /// A grant applied: if this member leads, the lease's deadline is its full TTL from
    /// now. A lease revoked and granted again under the same id between two sweeps must
    /// not keep the revoked one's deadline (found by the differential test: the new
    /// lease would expire early, deleting its keys).
    pub fn applied_grant(&self, id: i64, ttl_secs: i64, now: Instant) {
        let mut state = self.state.lock().unwrap();
        state.revoking.remove(&id);
        if state.leading.is_some() {
            let left = Duration::from_secs(ttl_secs.max(0) as u64);
            let gap = self.checkpoint_gap(left, DeadlineSet::ByHolder);
            state.set_deadline(id, now + left, now, gap);
        }
    }

    /// A revoke applied: the lease's deadline goes with it.
    pub fn applied_revoke(&self, id: i64) {
        let mut state = self.state.lock().unwrap();
        state.deadlines.remove(&id);
        state.revoking.remove(&id);
        state.next_checkpoint.remove(&id);
        state.checkpointed.remove(&id);
    }

    /// How long a lease has left, answered by this member as leader in `term` (taken
    /// over first, as for `renew`). `None` if it does not exist.
    pub fn remaining(&self, store: &MvccStore, term: Term, id: i64) -> Option<LeaseTtl> {
        let mut state = self.state.lock().unwrap();
        if state.leading != Some(term) {
            self.sync_locked(&mut state, store, Some(term), Instant::now());
        }
        let record = store.lease(id)?;
        let remaining_secs = match state.deadlines.get(&id) {
            Some(deadline) => {
                // Rounded up, as etcd reports it; at most the granted TTL, which a new
                // leadership's extension would otherwise overstate.
                let left = deadline.saturating_duration_since(Instant::now());
                (left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)).min(record.ttl_secs)
            }
            None => record.ttl_secs,
        };
        Some(LeaseTtl {
            remaining_secs,
            ttl_secs: record.ttl_secs,
        })
    }

    /// Whether this lessor keeps the deadlines of `term` already.
    pub fn keeps_term(&self, term: Term) -> bool {
        self.state.lock().unwrap().leading == Some(term)
    }

    /// Starts keeping the deadlines for `term` if this lessor does not yet (what `renew`
    /// and `remaining` do first; the tests set a lessor up with it).
    pub fn take_over(&self, store: &MvccStore, term: Term, now: Instant) {
        let mut state = self.state.lock().unwrap();
        if state.leading != Some(term) {
            self.sync_locked(&mut state, store, Some(term), now);
        }
    }

    /// Brings the deadlines in line with the store and leadership.
    fn sync_locked(
        &self,
        state: &mut LessorState,
        store: &MvccStore,
        leading: Option<Term>,
        now: Instant,
    ) {
        if leading != state.leading {
            // Leadership came or went: start over from the replicated state.
            tracing::info!(term = ?leading, "lessor: lease deadlines kept here from now on (or no longer)");
            state.deadlines.clear();
            state.revoking.clear();
            state.to_clear.clear();
            state.next_checkpoint.clear();
            state.checkpointed.clear();
            state.leading = leading;
            // Keep-alives waiting for a clear of the leadership that ended fail.
            state.epoch += 1;
            self.clears_written.send_replace(QueuedClear {
                epoch: state.epoch,
                number: 0,
            });
        }
        if state.leading.is_none() {
            return;
        }
        let leases = store.leases();
        let live: std::collections::HashSet<i64> = leases.iter().map(|(id, _)| *id).collect();
        state.deadlines.retain(|id, _| live.contains(id));
        state.revoking.retain(|id, _| live.contains(id));
        state.next_checkpoint.retain(|id, _| live.contains(id));
        state.checkpointed.retain(|id| live.contains(id));
        for (id, record) in leases {
            if state.deadlines.contains_key(&id) {
                continue;
            }
            let left = if record.remaining_secs > 0 {
                record.remaining_secs
            } else {
                record.ttl_secs
            };
            let left = Duration::from_secs(left as u64) + self.takeover_extension;
            let gap = self.checkpoint_gap(left, DeadlineSet::Otherwise);
            state.set_deadline(id, now + left, now, gap);
        }
    }

    /// `sync`, then the leases whose deadline passed and whose revoke should be proposed
    /// now.
    pub(crate) fn sweep(&self, store: &MvccStore, leading: Option<Term>, now: Instant) -> Vec<i64> {
        let mut state = self.state.lock().unwrap();
        self.sync_locked(&mut state, store, leading, now);
        if state.leading.is_none() {
            return Vec::new();
        }
        let expired: Vec<i64> = state
            .deadlines
            .iter()
            .filter(|(id, deadline)| {
                **deadline <= now
                    && state
                        .revoking
                        .get(id)
                        .is_none_or(|proposed| now.duration_since(*proposed) > REVOKE_RETRY)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            state.revoking.insert(*id, now);
        }
        expired
    }

    /// A write of checkpoints by the leadership of `term` failed: the clears among them
    /// (`ids`) are due again, or the record they clear would outlive the renewal.
    pub(crate) fn requeue_clears(&self, term: Term, ids: &[i64]) {
        let mut state = self.state.lock().unwrap();
        if state.leading == Some(term) {
            state.to_clear.extend(ids.iter().copied());
        }
    }

    /// The checkpoints that clear the remaining TTL recorded for leases renewed since
    /// (`to_clear`), once each; none unless this member leads.
    #[cfg(test)]
    pub(crate) fn checkpoint_clears(&self) -> Vec<LeaseCheckpoint> {
        let leading = self.state.lock().unwrap().leading;
        leading.map_or_else(Vec::new, |term| self.take_checkpoint_clears(term).0)
    }

    /// `checkpoint_clears` for a write of `term`'s leadership (none if this lessor
    /// keeps another's), with the number of the last clear queued: once the write
    /// carries them, every clear of the term up to it is written (clears requeued
    /// after a failed write are numbered below it, and go in a later write).
    pub(crate) fn take_checkpoint_clears(&self, term: Term) -> (Vec<LeaseCheckpoint>, QueuedClear) {
        let mut state = self.state.lock().unwrap();
        let none = QueuedClear {
            epoch: state.epoch,
            number: 0,
        };
        if state.leading != Some(term) {
            if state.leading.is_none() {
                state.to_clear.clear();
            }
            return (Vec::new(), none);
        }
        let clears = state
            .to_clear
            .drain()
            .map(|id| LeaseCheckpoint {
                id,
                remaining_ttl: 0,
            })
            .collect();
        let written = QueuedClear {
            epoch: state.epoch,
            number: state.clears_queued,
        };
        (clears, written)
    }

    /// The remaining TTLs of the leases whose checkpoint is due at `now`, each scheduled
    /// again (`set_deadline`): rounded up (1.9 s left is 2, not 1: a new leader starting
    /// from it must not revoke early), and at most its granted TTL (a new leadership's
    /// extension is its own, not to be passed on).
    pub(crate) fn checkpoints(&self, store: &MvccStore, now: Instant) -> Vec<LeaseCheckpoint> {
        let mut state = self.state.lock().unwrap();
        let due: Vec<i64> = state
            .next_checkpoint
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .take(CHECKPOINTS_PER_WRITE_MAX)
            .collect();
        let mut checkpoints = Vec::with_capacity(due.len());
        for id in due {
            let (Some(deadline), Some(record)) =
                (state.deadlines.get(&id).copied(), store.lease(id))
            else {
                state.next_checkpoint.remove(&id);
                continue;
            };
            let left = deadline.saturating_duration_since(now);
            if left.is_zero() {
                // Its revoke is due: nothing to record.
                state.next_checkpoint.remove(&id);
                continue;
            }
            let secs = (left.as_secs() + u64::from(left.subsec_nanos() > 0)) as i64;
            checkpoints.push(LeaseCheckpoint {
                id,
                remaining_ttl: secs.clamp(1, record.ttl_secs.max(1)),
            });
            let gap = self.checkpoint_gap(left, DeadlineSet::Otherwise);
            state.set_deadline(id, deadline, now, gap);
            state.checkpointed.insert(id);
        }
        checkpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::etcdserverpb::LeaseGrantRequest;
    use ostrakon_proto::peer::write_request;
    use ostrakon_proto::peer::WriteRequest;
    use ostrakon_raft::GroupId;
    use ostrakon_raft::LogIndex;
    use ostrakon_storage::mvcc::apply_write;

    fn grant(store: &MvccStore, index: u64, id: i64, ttl: i64) {
        let write = WriteRequest {
            auth_revision: 0,
            trace_parent: String::new(),
            origin: 1,
            id: index,
            request: Some(write_request::Request::LeaseGrant(LeaseGrantRequest {
                ttl,
                id,
            })),
            revision: 0,
            only_in_term: 0,
        };
        apply_write(store, LogIndex(index), Term(1), &write);
    }

    #[test]
    fn only_a_leader_keeps_deadlines_and_expired_leases_are_revoked_once_per_retry() {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = MvccStore::open(
            &keyspace,
            GroupId(1),
            ostrakon_storage::mvcc::KeySpan::whole(),
        );
        grant(&store, 2, 1, 10);
        grant(&store, 3, 2, 100);
        let lessor = Lessor::default();
        let t0 = Instant::now();
        assert!(lessor.sweep(&store, None, t0).is_empty());
        assert!(!lessor.keeps_term(Term(2)), "a follower keeps no deadlines");

        assert!(lessor.sweep(&store, Some(Term(2)), t0).is_empty());
        assert_eq!(lessor.remaining(&store, Term(2), 2).unwrap().ttl_secs, 100);
        let later = t0 + Duration::from_secs(11);
        assert_eq!(lessor.sweep(&store, Some(Term(2)), later), vec![1]);
        assert!(
            lessor
                .sweep(&store, Some(Term(2)), later + Duration::from_secs(1))
                .is_empty(),
            "a revoke in flight is not proposed again at once"
        );
        assert_eq!(
            lessor.sweep(
                &store,
                Some(Term(2)),
                later + REVOKE_RETRY + Duration::from_secs(1)
            ),
            vec![1]
        );
        assert_eq!(lessor.renew(&store, Term(2), 99), None, "unknown lease");
        // A new term (a new leadership) starts over from the store.
        assert!(lessor.sweep(&store, Some(Term(3)), later).is_empty());
    }

    /// A lease revoked and granted again under the same id between two sweeps starts
    /// from its new TTL (the revoked one's deadline would expire it early, deleting its
    /// keys; found by the differential test against etcd).
    #[test]
    fn a_lease_granted_again_after_a_revoke_gets_a_fresh_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = MvccStore::open(
            &keyspace,
            GroupId(1),
            ostrakon_storage::mvcc::KeySpan::whole(),
        );
        let lessor = Lessor::default();
        let t0 = Instant::now();
        grant(&store, 2, 7, 5);
        assert!(lessor.sweep(&store, Some(Term(2)), t0).is_empty());
        // Revoked and granted again with a long TTL before the next sweep.
        let write = WriteRequest {
            request: Some(write_request::Request::LeaseRevoke(
                ostrakon_proto::etcdserverpb::LeaseRevokeRequest { id: 7 },
            )),
            ..Default::default()
        };
        apply_write(&store, LogIndex(3), Term(2), &write);
        lessor.applied_revoke(7);
        grant(&store, 4, 7, 3600);
        lessor.applied_grant(7, 3600, t0);
        let later = t0 + Duration::from_secs(6);
        assert!(
            lessor.sweep(&store, Some(Term(2)), later).is_empty(),
            "the new lease is not expired by the old deadline"
        );
        assert!(lessor.remaining(&store, Term(2), 7).unwrap().remaining_secs > 3500);
    }
}

#[cfg(test)]
mod failover_tests {
    use super::*;
    use ostrakon_proto::etcdserverpb::LeaseGrantRequest;
    use ostrakon_proto::peer::{write_request, WriteRequest};
    use ostrakon_raft::{GroupId, LogIndex};
    use ostrakon_storage::mvcc::apply_write;

    fn write(store: &MvccStore, index: u64, request: write_request::Request) {
        let write = WriteRequest {
            origin: 1,
            id: index,
            request: Some(request),
            ..Default::default()
        };
        apply_write(store, LogIndex(index), Term(1), &write);
    }

    fn store() -> (tempfile::TempDir, fjall::Keyspace, MvccStore) {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = MvccStore::open(
            &keyspace,
            GroupId(1),
            ostrakon_storage::mvcc::KeySpan::whole(),
        );
        (dir, keyspace, store)
    }

    #[test]
    fn a_keep_alive_confirmed_as_leader_finds_its_lease_after_a_sweep_dropped_the_deadlines() {
        let (_dir, _keyspace, store) = store();
        write(
            &store,
            2,
            write_request::Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 5 }),
        );
        let lessor = Lessor::default();
        lessor.take_over(&store, Term(2), Instant::now());
        // A sweep that saw no leadership (a status read between two roles) dropped the
        // deadlines, between the keep-alive's confirmation and its renewal.
        assert!(lessor.sweep(&store, None, Instant::now()).is_empty());
        assert_eq!(
            lessor.renew(&store, Term(2), 5).map(|ttl| ttl.ttl_secs),
            Some(60),
            "a live lease is not answered as not found"
        );
        assert!(lessor.keeps_term(Term(2)));
        assert_eq!(
            lessor
                .remaining(&store, Term(3), 5)
                .map(|ttl| ttl.remaining_secs),
            Some(60),
            "a later term starts over from the store"
        );
    }

    #[test]
    fn a_lease_past_its_deadline_is_not_renewed() {
        let (_dir, _keyspace, store) = store();
        write(
            &store,
            2,
            write_request::Request::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 5 }),
        );
        let lessor = Lessor::default();
        lessor.take_over(&store, Term(2), Instant::now());
        assert!(lessor.renew(&store, Term(2), 5).is_some());
        std::thread::sleep(Duration::from_millis(1_100));
        // Its revoke is due: the holder must not be told it has a TTL left.
        assert_eq!(lessor.renew(&store, Term(2), 5), None);
        assert_eq!(lessor.sweep(&store, Some(Term(2)), Instant::now()), vec![5]);
        assert_eq!(
            lessor.renew(&store, Term(2), 5),
            None,
            "nor while it is revoked"
        );
    }

    #[test]
    fn a_new_leadership_extends_deadlines_and_clears_checkpoints_of_renewed_leases() {
        let (_dir, _keyspace, store) = store();
        write(
            &store,
            2,
            write_request::Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 5 }),
        );
        // A checkpoint recorded 2 s left.
        write(
            &store,
            3,
            write_request::Request::LeaseCheckpoint(
                ostrakon_proto::etcdserverpb::LeaseCheckpointRequest {
                    checkpoints: vec![LeaseCheckpoint {
                        id: 5,
                        remaining_ttl: 2,
                    }],
                },
            ),
        );
        let extension = Duration::from_secs(1);
        let lessor = Lessor::new(extension, Some(CHECKPOINT_INTERVAL_DEFAULT));
        let t0 = Instant::now();
        lessor.take_over(&store, Term(2), t0);
        assert!(
            lessor
                .sweep(&store, Some(Term(2)), t0 + Duration::from_millis(2_500))
                .is_empty(),
            "2 s from the checkpoint and an election timeout more"
        );
        // A keep-alive: the recorded 2 s must not outlive it.
        assert_eq!(lessor.renew(&store, Term(2), 5).unwrap().remaining_secs, 60);
        assert_eq!(
            lessor.checkpoint_clears(),
            vec![LeaseCheckpoint {
                id: 5,
                remaining_ttl: 0
            }]
        );
        assert!(lessor.checkpoint_clears().is_empty(), "once");
        // Kept alive, it is not checkpointed before half its TTL has gone.
        assert!(lessor
            .checkpoints(&store, Instant::now() + Duration::from_secs(29))
            .is_empty());
    }

    #[tokio::test]
    async fn a_keep_alive_of_a_checkpointed_lease_waits_for_its_clear_to_be_written() {
        let (_dir, _keyspace, store) = store();
        for (index, id) in [(2, 5), (3, 6)] {
            let grant = LeaseGrantRequest { ttl: 60, id };
            write(&store, index, write_request::Request::LeaseGrant(grant));
        }
        let checkpoint = LeaseCheckpoint {
            id: 5,
            remaining_ttl: 20,
        };
        let checkpoints = ostrakon_proto::etcdserverpb::LeaseCheckpointRequest {
            checkpoints: vec![checkpoint],
        };
        write(
            &store,
            4,
            write_request::Request::LeaseCheckpoint(checkpoints),
        );
        let lessor = Lessor::new(Duration::ZERO, Some(CHECKPOINT_INTERVAL_DEFAULT));
        lessor.take_over(&store, Term(2), Instant::now());
        // No record: nothing to wait for.
        let (_, clear) = lessor.renew_queueing_clear(&store, Term(2), 6).unwrap();
        assert_eq!(clear, None);
        let (ttl, clear) = lessor.renew_queueing_clear(&store, Term(2), 5).unwrap();
        assert_eq!(ttl.remaining_secs, 60);
        let clear = clear.expect("the recorded 20 s is cleared before the answer");
        let wait = lessor.wait_for_clear(clear);
        tokio::pin!(wait);
        let pending = tokio::time::timeout(Duration::from_millis(50), &mut wait).await;
        assert!(pending.is_err(), "answered before its clear was written");
        let (clears, written) = lessor.take_checkpoint_clears(Term(2));
        assert_eq!(clears.len(), 1);
        assert!(written.number >= clear.number);
        lessor.clears_written_upto(written);
        let written = tokio::time::timeout(Duration::from_secs(1), wait)
            .await
            .expect("answered once its clear was written");
        assert!(written);

        // A keep-alive waiting when its leadership ends fails then, and stays failed
        // when the same term's leadership comes back and writes clears numbered above
        // its dropped one (found by review). The record is still in the store: each
        // renewal queues a clear.
        let (_, clear) = lessor.renew_queueing_clear(&store, Term(2), 5).unwrap();
        let clear = clear.expect("a record to clear");
        let wait = lessor.wait_for_clear(clear);
        tokio::pin!(wait);
        let pending = tokio::time::timeout(Duration::from_millis(50), &mut wait).await;
        assert!(pending.is_err(), "answered before its clear was written");
        lessor.sweep(&store, None, Instant::now());
        let written = tokio::time::timeout(Duration::from_secs(1), &mut wait)
            .await
            .expect("answered once its leadership ended");
        assert!(!written, "a dropped clear was answered as written");
        // The same term again, without a waiter polled in between.
        let (_, clear) = lessor.renew_queueing_clear(&store, Term(2), 5).unwrap();
        let clear = clear.expect("a record to clear");
        lessor.sweep(&store, None, Instant::now());
        lessor.take_over(&store, Term(2), Instant::now());
        let (_, later) = lessor.renew_queueing_clear(&store, Term(2), 5).unwrap();
        let later = later.expect("a record to clear");
        let (_, written) = lessor.take_checkpoint_clears(Term(2));
        lessor.clears_written_upto(written);
        assert!(later.number > clear.number);
        assert!(
            !lessor.wait_for_clear(clear).await,
            "a clear of a leadership that ended and came back was answered as written"
        );
        assert!(lessor.wait_for_clear(later).await);
    }

    #[test]
    fn a_lease_not_kept_alive_is_checkpointed_ever_more_often_as_its_end_nears() {
        let (_dir, _keyspace, store) = store();
        for (index, id, ttl) in [(2, 5, 60), (3, 6, 600)] {
            write(
                &store,
                index,
                write_request::Request::LeaseGrant(LeaseGrantRequest { ttl, id }),
            );
        }
        let lessor = Lessor::new(Duration::ZERO, Some(Duration::from_secs(100)));
        let t0 = Instant::now();
        lessor.take_over(&store, Term(2), t0);
        let at = |secs_tenths: u64| t0 + Duration::from_millis(secs_tenths * 100);
        let due = |when| -> Vec<(i64, i64)> {
            let mut due: Vec<(i64, i64)> = lessor
                .checkpoints(&store, when)
                .iter()
                .map(|c| (c.id, c.remaining_ttl))
                .collect();
            due.sort();
            due
        };
        // Taken over, renewed by nobody yet: after a quarter of what it has left.
        assert_eq!(due(at(149)), vec![], "not yet due");
        assert_eq!(due(at(151)), vec![(5, 45)], "44.9 s left rounds up");
        assert_eq!(due(at(260)), vec![], "once");
        // A quarter of the rest (11.2 s) on; the 600 s lease at the interval (100 s).
        assert_eq!(due(at(264)), vec![(5, 34)]);
        assert_eq!(due(at(1001)), vec![(6, 500)], "past its deadline, none");
        assert_eq!(due(at(1200)), vec![]);
        // Renewed by its holder: after half its TTL, or the interval if sooner; the
        // checkpoint written is cleared, applied or not.
        assert!(lessor.renew(&store, Term(2), 6).is_some());
        assert_eq!(
            lessor.checkpoint_clears(),
            vec![LeaseCheckpoint {
                id: 6,
                remaining_ttl: 0
            }]
        );
        let renewed = Instant::now();
        assert_eq!(due(renewed + Duration::from_secs(50)), vec![]);
        assert_eq!(
            due(renewed + Duration::from_millis(100_500)),
            vec![(6, 500)]
        );
        // Checkpoints off: none.
        let off = Lessor::new(Duration::ZERO, None);
        off.take_over(&store, Term(2), t0);
        assert!(off.checkpoints(&store, at(590)).is_empty());
    }
}
