//! Ranges sharing one data partition: each store reads, compacts, snapshots and installs
//! within its span only, and keeps its own local state.

use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{CompactionRequest, LeaseGrantRequest, PutRequest};
use ostrakon_proto::peer::{write_request::Request, WriteRequest};
use ostrakon_raft::{GroupId, LogIndex, Term};

use super::*;

/// One range's store and the index of its next entry.
pub(super) struct Range {
    pub(super) store: MvccStore,
    pub(super) index: u64,
}

impl Range {
    pub(super) fn open(keyspace: &fjall::Keyspace, group: u64, span: KeySpan) -> Range {
        let store = MvccStore::open(keyspace, GroupId(group), span);
        let index = store.applied_index().0;
        Range { store, index }
    }

    pub(super) fn write(&mut self, request: Request) -> WriteOutcome {
        self.write_at(request, Revision(0))
    }

    /// A write whose revision the range's leader chose (0: none).
    fn write_at(&mut self, request: Request, revision: Revision) -> WriteOutcome {
        self.write_checked_at(request, revision, 0)
    }

    /// Applies a split at `key` as the range's next entry; returns the new right range
    /// (group `group`).
    pub(super) fn split_off(&mut self, key: &[u8], group: u64) -> Range {
        self.index += 1;
        let store = self
            .store
            .split(
                key,
                LogIndex(self.index),
                Term(1),
                GroupId(group),
                split_position(group),
                false,
            )
            .expect("a new right range");
        Range {
            index: store.applied_index().0,
            store,
        }
    }

    /// `write_at`, checked against the auth store's revision `auth_revision` (0: not
    /// checked).
    pub(super) fn write_checked_at(
        &mut self,
        request: Request,
        revision: Revision,
        auth_revision: u64,
    ) -> WriteOutcome {
        self.index += 1;
        let write = WriteRequest {
            origin: 1,
            id: self.index,
            request: Some(request),
            revision: revision.0,
            auth_revision,
            ..Default::default()
        };
        apply_write(&self.store, LogIndex(self.index), Term(1), &write)
    }

    /// A put at `revision`: the revision it took, or the refusal's gRPC code.
    fn put_at(&mut self, key: &str, value: &str, revision: i64) -> Result<Revision, i32> {
        let put = Request::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        });
        match self.write_at(put, Revision(revision)) {
            WriteOutcome::Put(r) => Ok(Revision(r.header.unwrap().revision)),
            WriteOutcome::Error(error) => Err(error.code),
            other => panic!("{other:?}"),
        }
    }

    /// A put; on a range that takes its revisions from the oracle, the test stands in for
    /// it with a revision above the range's.
    fn put(&mut self, key: &str, value: &str, lease: i64) -> Revision {
        let revision = if self.store.oracle_revisions() {
            Revision(self.store.current_revision().0 + 1_000)
        } else {
            Revision(0)
        };
        let put = Request::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            lease,
            ..Default::default()
        });
        match self.write_at(put, revision) {
            WriteOutcome::Put(r) => Revision(r.header.unwrap().revision),
            other => panic!("{other:?}"),
        }
    }

    fn grant(&mut self, id: i64) {
        let outcome = self.write(Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id }));
        assert!(
            matches!(outcome, WriteOutcome::LeaseGrant(_)),
            "{outcome:?}"
        );
    }

    /// Every live key and value of the span at `at` (0: current).
    fn listing(&self, at: i64) -> Vec<(String, String)> {
        let view = self.store.read_view();
        let at = view.resolve(at).unwrap();
        let span = self.store.span();
        let end = span.end().map_or(vec![0], <[u8]>::to_vec);
        view.range(span.start(), &end, at)
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key.to_vec()).unwrap(),
                    String::from_utf8(kv.value.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn hash(&self) -> u32 {
        let view = self.store.read_view();
        view.hash_kv(view.current_revision())
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn left_span() -> KeySpan {
    KeySpan::new(Vec::new(), Some(b"m".to_vec()))
}

fn right_span() -> KeySpan {
    KeySpan::new(b"m".to_vec(), None)
}

#[test]
fn ranges_on_one_data_partition_see_compact_and_reopen_only_their_spans() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut left = Range::open(&keyspace, 1, left_span());
    let mut right = Range::open(&keyspace, 2, right_span());
    left.grant(7);
    left.put("a", "a1", 7);
    let old = left.put("b", "b1", 0);
    right.put("n", "n1", 0);
    right.put("x", "x1", 0);
    let right_old = right.put("n", "n2", 0);
    right.put("n", "n3", 0);
    left.put("b", "b2", 0);

    // Each range counts its own revisions (a lease grant takes none) and sees only its
    // own keys.
    assert_eq!(left.store.current_revision(), Revision(4));
    assert_eq!(right.store.current_revision(), Revision(5));
    assert_eq!(left.listing(0), pairs(&[("a", "a1"), ("b", "b2")]));
    assert_eq!(left.listing(old.0), pairs(&[("a", "a1"), ("b", "b1")]));
    assert_eq!(right.listing(0), pairs(&[("n", "n3"), ("x", "x1")]));
    assert_eq!(left.store.leases().len(), 1);
    assert!(right.store.leases().is_empty(), "leases are range-local");

    // Compacting the left range removes its garbage only.
    let right_hash = right.hash();
    let compacted = left.write(Request::Compaction(CompactionRequest {
        revision: left.store.current_revision().0,
        physical: false,
    }));
    assert!(
        matches!(compacted, WriteOutcome::Compaction(_)),
        "{compacted:?}"
    );
    assert!(left.store.compact_physically());
    assert_eq!(left.store.compacted_physically(), Revision(4));
    assert_eq!(
        right.listing(right_old.0),
        pairs(&[("n", "n2"), ("x", "x1")])
    );
    assert_eq!(right.hash(), right_hash);

    // Reopened, each rebuilds its index and position from its span and local state.
    let (left_applied, right_applied) = (left.store.applied(), right.store.applied());
    left.store.persist();
    right.store.persist();
    drop((left, right));
    let left = Range::open(&keyspace, 1, left_span());
    let right = Range::open(&keyspace, 2, right_span());
    assert_eq!(left.store.applied(), left_applied);
    assert_eq!(right.store.applied(), right_applied);
    assert_eq!(left.listing(0), pairs(&[("a", "a1"), ("b", "b2")]));
    assert_eq!(right.listing(0), pairs(&[("n", "n3"), ("x", "x1")]));
    assert_eq!(
        right.listing(right_old.0),
        pairs(&[("n", "n2"), ("x", "x1")])
    );
    assert_eq!(left.store.compact_revision(), Revision(4));
    assert_eq!(right.store.compact_revision(), NEVER_COMPACTED);
    assert_eq!(
        left.store.read_view().lease_keys(7),
        vec![Bytes::from_static(b"a")]
    );
    assert!(right.store.leases().is_empty());
}

#[test]
fn an_install_replaces_its_span_and_leaves_the_other_ranges_alone() {
    // The source: a left range elsewhere, whose snapshot holds its span only although its
    // node's data partition holds a right range too.
    let source_dir = tempfile::tempdir().unwrap();
    let source_keyspace = fjall::Config::new(source_dir.path()).open().unwrap();
    let mut source = Range::open(&source_keyspace, 1, left_span());
    let mut source_right = Range::open(&source_keyspace, 2, right_span());
    source.put("a", "fresh", 0);
    source.put("c", "fresh", 0);
    source_right.put("z", "not in the left snapshot", 0);
    let snapshots = tempfile::tempdir().unwrap();
    let path = snapshots.path().join("left");
    crate::snapshot::create(&source.store, &path).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut left = Range::open(&keyspace, 1, left_span());
    let mut right = Range::open(&keyspace, 2, right_span());
    left.put("b", "stale", 0);
    right.put("m", "m1", 0);
    right.put("y", "y1", 0);
    let right_hash = right.hash();
    let right_applied = right.store.applied();

    crate::snapshot::install(&left.store, &path).unwrap();
    assert_eq!(left.listing(0), pairs(&[("a", "fresh"), ("c", "fresh")]));
    assert_eq!(left.store.applied(), source.store.applied());
    assert_eq!(right.listing(0), pairs(&[("m", "m1"), ("y", "y1")]));
    assert_eq!(right.hash(), right_hash);
    assert_eq!(right.store.applied(), right_applied);

    drop((left, right));
    let left = Range::open(&keyspace, 1, left_span());
    let right = Range::open(&keyspace, 2, right_span());
    assert_eq!(left.listing(0), pairs(&[("a", "fresh"), ("c", "fresh")]));
    assert_eq!(right.listing(0), pairs(&[("m", "m1"), ("y", "y1")]));
}

#[test]
#[should_panic(expected = "outside the store's span")]
fn a_read_beyond_the_span_is_a_broken_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let left = Range::open(&keyspace, 1, left_span());
    // Requests are checked against the range's span before they reach the store: one
    // that gets here reaches into another range's keys.
    left.store
        .read_view()
        .range(b"a", b"\0", left.store.current_revision());
}

/// How many versions the node's data partition holds, whatever range they belong to.
fn stored_versions(keyspace: &fjall::Keyspace) -> usize {
    keyspace
        .open_partition(DATA_PARTITION, Default::default())
        .unwrap()
        .snapshot()
        .iter()
        .count()
}

fn split_position(group: u64) -> AppliedState {
    AppliedState {
        index: LogIndex(5),
        term: Term(1),
        conf_state: ostrakon_raft::ConfState::with_voters([ostrakon_raft::NodeId(group)]),
    }
}

#[test]
fn a_split_moves_no_data_and_both_halves_go_on_through_restarts_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut whole = Range::open(&keyspace, 1, KeySpan::whole());
    whole.put("a", "a1", 0);
    let before = whole.put("m", "m1", 0);
    whole.put("m", "m2", 0);
    whole.put("z", "z1", 0);
    let versions = stored_versions(&keyspace);

    whole.index += 1;
    let right_store = whole
        .store
        .split(
            b"m",
            LogIndex(whole.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .expect("a new right range");
    let mut left = whole;
    let mut right = Range {
        index: right_store.applied_index().0,
        store: right_store,
    };
    assert_eq!(
        stored_versions(&keyspace),
        versions,
        "a split copies nothing"
    );
    assert_eq!(*left.store.span(), left_span());
    assert_eq!(*right.store.span(), right_span());
    assert_eq!(left.store.applied_index(), LogIndex(left.index));
    assert_eq!(right.store.applied(), split_position(2));
    assert_eq!(left.listing(0), pairs(&[("a", "a1")]));
    assert_eq!(right.listing(0), pairs(&[("m", "m2"), ("z", "z1")]));
    assert_eq!(
        right.listing(before.0),
        pairs(&[("m", "m1")]),
        "history moves too"
    );
    assert_eq!(
        right.store.current_revision(),
        left.store.current_revision()
    );

    left.put("b", "b1", 0);
    right.put("n", "n1", 0);
    left.store.persist();
    right.store.persist();
    let (left_applied, right_applied) = (left.store.applied(), right.store.applied());
    drop((left, right));
    // The spans a split recorded win over the span a store is opened with.
    let left = Range::open(&keyspace, 1, KeySpan::whole());
    let right = Range::open(&keyspace, 2, KeySpan::none());
    assert_eq!(*left.store.span(), left_span());
    assert_eq!(*right.store.span(), right_span());
    assert_eq!(
        (left.store.applied(), right.store.applied()),
        (left_applied, right_applied)
    );
    assert_eq!(left.listing(0), pairs(&[("a", "a1"), ("b", "b1")]));
    assert_eq!(
        right.listing(0),
        pairs(&[("m", "m2"), ("n", "n1"), ("z", "z1")])
    );

    // The right range's snapshot holds its span, and a new replica of it (which knows no
    // span yet) takes that span from it.
    let snapshots = tempfile::tempdir().unwrap();
    let path = snapshots.path().join("right");
    crate::snapshot::create(&right.store, &path).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = fjall::Config::new(other_dir.path()).open().unwrap();
    let replica = Range::open(&other, 2, KeySpan::none());
    crate::snapshot::install(&replica.store, &path).unwrap();
    assert_eq!(*replica.store.span(), right_span());
    assert_eq!(replica.listing(0), right.listing(0));
    assert_eq!(
        stored_versions(&other),
        4,
        "m twice, n and z: the right span only"
    );
}

#[test]
fn a_snapshot_taken_after_a_split_installs_into_a_replica_that_missed_the_split() {
    // The leader's node: split at "m", then each half moves on.
    let leader_dir = tempfile::tempdir().unwrap();
    let leader_keyspace = fjall::Config::new(leader_dir.path()).open().unwrap();
    let mut leader_left = Range::open(&leader_keyspace, 1, KeySpan::whole());
    leader_left.put("a", "a1", 0);
    leader_left.put("x", "x1", 0);
    leader_left.index += 1;
    let right_store = leader_left
        .store
        .split(
            b"m",
            LogIndex(leader_left.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .expect("a new right range");
    let mut leader_right = Range {
        index: right_store.applied_index().0,
        store: right_store,
    };
    leader_left.put("b", "b1", 0);
    leader_right.put("x", "x2", 0);

    // A follower that was cut off before the split: its range 1 still holds everything.
    let follower_dir = tempfile::tempdir().unwrap();
    let follower_keyspace = fjall::Config::new(follower_dir.path()).open().unwrap();
    let mut follower_left = Range::open(&follower_keyspace, 1, KeySpan::whole());
    follower_left.put("a", "a1", 0);
    follower_left.put("x", "x1", 0);

    let snapshots = tempfile::tempdir().unwrap();
    let left_path = snapshots.path().join("left");
    let right_path = snapshots.path().join("right");
    crate::snapshot::create(&leader_left.store, &left_path).unwrap();
    crate::snapshot::create(&leader_right.store, &right_path).unwrap();

    // Range 2's replica is made on the follower by its own snapshot (here before range
    // 1 catches up), which replaces what range 1 still holds in its span.
    let follower_right = Range::open(&follower_keyspace, 2, KeySpan::none());
    crate::snapshot::install(&follower_right.store, &right_path).unwrap();
    assert_eq!(*follower_right.store.span(), right_span());
    assert_eq!(follower_right.listing(0), pairs(&[("x", "x2")]));
    // Range 1's snapshot cuts the follower's range to the leader's span and replaces only
    // that: range 2's keys stay.
    crate::snapshot::install(&follower_left.store, &left_path).unwrap();
    assert_eq!(*follower_left.store.span(), left_span());
    assert_eq!(follower_left.listing(0), leader_left.listing(0));
    assert_eq!(follower_right.listing(0), pairs(&[("x", "x2")]));
    assert_eq!(follower_right.hash(), leader_right.hash());
    assert_eq!(follower_left.hash(), leader_left.hash());
}

/// gRPC's Unavailable: what a stale revision is refused with (the node retries it).
const UNAVAILABLE: i32 = 14;

#[test]
fn writes_take_the_revision_the_leader_chose_and_revisions_only_rise() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut range = Range::open(&keyspace, 1, KeySpan::whole());
    assert_eq!(
        range.put_at("a", "1", 0),
        Ok(Revision(2)),
        "no revision: the next"
    );
    assert_eq!(range.put_at("a", "2", 1_000), Ok(Revision(1_000)));
    assert_eq!(range.put_at("b", "1", 1_000), Err(UNAVAILABLE), "not above");
    assert_eq!(range.put_at("b", "1", 999), Err(UNAVAILABLE), "below");
    assert_eq!(range.store.current_revision(), Revision(1_000));
    assert_eq!(
        range.store.applied_index(),
        LogIndex(range.index),
        "refusals apply"
    );
    assert_eq!(range.put_at("b", "1", 5_000), Ok(Revision(5_000)));
    assert_eq!(range.put_at("a", "3", 0), Ok(Revision(5_001)));

    // Reads between sparse revisions see the newest write at or below them, and the
    // history holds exactly the revisions written.
    assert_eq!(range.listing(999), pairs(&[("a", "1")]));
    assert_eq!(range.listing(4_999), pairs(&[("a", "2")]));
    assert_eq!(range.listing(5_000), pairs(&[("a", "2"), ("b", "1")]));
    let view = range.store.read_view();
    let history = view.history(b"", b"\0", Revision(1), 100).unwrap();
    let revisions: Vec<i64> = history.revisions.iter().map(|r| r.revision.0).collect();
    assert_eq!(revisions, vec![2, 1_000, 5_000, 5_001]);

    drop(view);
    range.store.persist();
    drop(range);
    let range = Range::open(&keyspace, 1, KeySpan::whole());
    assert_eq!(range.store.current_revision(), Revision(5_001));
    assert_eq!(range.listing(4_999), pairs(&[("a", "2")]));
}

#[test]
fn after_a_split_both_ranges_refuse_writes_without_an_oracle_revision() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut left = Range::open(&keyspace, 1, KeySpan::whole());
    left.put("a", "1", 0);
    assert!(!left.store.oracle_revisions());
    left.index += 1;
    let right_store = left
        .store
        .split(
            b"m",
            LogIndex(left.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .expect("a new right range");
    let mut right = Range {
        index: right_store.applied_index().0,
        store: right_store,
    };
    assert!(left.store.oracle_revisions() && right.store.oracle_revisions());
    // A write proposed before the split applied, without a revision, would count on from
    // the range's own revision and fall below what the other range has handed out.
    assert_eq!(left.put_at("b", "1", 0), Err(UNAVAILABLE));
    assert_eq!(right.put_at("n", "1", 0), Err(UNAVAILABLE));
    assert_eq!(right.put_at("n", "1", 1 << 40), Ok(Revision(1 << 40)));
    assert_eq!(
        left.put_at("b", "1", (1 << 40) + 1),
        Ok(Revision((1 << 40) + 1))
    );

    // The mode survives a restart and travels in snapshots.
    let snapshots = tempfile::tempdir().unwrap();
    let path = snapshots.path().join("right");
    crate::snapshot::create(&right.store, &path).unwrap();
    left.store.persist();
    drop((left, right));
    assert!(Range::open(&keyspace, 1, KeySpan::whole())
        .store
        .oracle_revisions());
    let other_dir = tempfile::tempdir().unwrap();
    let other = fjall::Config::new(other_dir.path()).open().unwrap();
    let mut replica = Range::open(&other, 2, KeySpan::none());
    crate::snapshot::install(&replica.store, &path).unwrap();
    replica.index = replica.store.applied_index().0;
    assert!(replica.store.oracle_revisions());
    assert_eq!(replica.put_at("o", "1", 0), Err(UNAVAILABLE));
}

#[test]
fn a_write_routed_to_a_range_that_no_longer_holds_its_keys_is_sent_back() {
    use ostrakon_proto::peer::Retry;
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut left = Range::open(&keyspace, 1, KeySpan::whole());
    left.index += 1;
    left.store
        .split(
            b"m",
            LogIndex(left.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .expect("a new right range");
    assert_eq!(
        MvccStore::stored_groups(&keyspace),
        vec![GroupId(1), GroupId(2)]
    );
    let put = Request::Put(PutRequest {
        key: Bytes::from_static(b"x"),
        value: Bytes::from_static(b"1"),
        ..Default::default()
    });
    let revision_before = left.store.current_revision();
    match left.write_at(put, Revision(1 << 40)) {
        WriteOutcome::Error(error) => assert_eq!(error.retry, Retry::WrongRange as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(left.store.current_revision(), revision_before);
    assert_eq!(left.store.applied_index(), LogIndex(left.index));
}

#[test]
fn the_meta_range_hands_out_each_range_id_once_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut meta = Range::open(&keyspace, 0, KeySpan::none());
    let allocate = |meta: &mut Range| match meta.write(Request::AllocateRangeId(
        ostrakon_proto::peer::AllocateRangeId {},
    )) {
        WriteOutcome::RangeIdAllocated(allocated) => allocated.range_id,
        other => panic!("{other:?}"),
    };
    assert_eq!(allocate(&mut meta), 2);
    assert_eq!(allocate(&mut meta), 3);
    meta.store.persist();
    drop(meta);
    let mut meta = Range::open(&keyspace, 0, KeySpan::none());
    assert_eq!(allocate(&mut meta), 4);
}

#[test]
fn a_meta_replica_made_from_a_snapshot_goes_on_from_the_next_range_id() {
    // A member added later, or one behind a compacted log, gets the meta range by
    // snapshot; once it leads, its ids must not repeat those handed out before.
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut meta = Range::open(&keyspace, 0, KeySpan::none());
    let allocate = |meta: &mut Range| match meta.write(Request::AllocateRangeId(
        ostrakon_proto::peer::AllocateRangeId {},
    )) {
        WriteOutcome::RangeIdAllocated(allocated) => allocated.range_id,
        other => panic!("{other:?}"),
    };
    for expected in 2..=5 {
        assert_eq!(allocate(&mut meta), expected);
    }
    let path = dir.path().join("meta.snap");
    crate::snapshot::create(&meta.store, &path).unwrap();

    // Behind: it had handed out 2 itself before it fell behind.
    let behind_dir = tempfile::tempdir().unwrap();
    let behind_keyspace = fjall::Config::new(behind_dir.path()).open().unwrap();
    let mut behind = Range::open(&behind_keyspace, 0, KeySpan::none());
    assert_eq!(allocate(&mut behind), 2);
    crate::snapshot::install(&behind.store, &path).unwrap();
    behind.index = behind.store.applied_index().0;
    assert_eq!(allocate(&mut behind), 6);
    behind.store.persist();
    drop(behind);
    let mut behind = Range::open(&behind_keyspace, 0, KeySpan::none());
    assert_eq!(allocate(&mut behind), 7, "across a restart");

    // New: it had none.
    let new_dir = tempfile::tempdir().unwrap();
    let new_keyspace = fjall::Config::new(new_dir.path()).open().unwrap();
    let mut new = Range::open(&new_keyspace, 0, KeySpan::none());
    crate::snapshot::install(&new.store, &path).unwrap();
    new.index = new.store.applied_index().0;
    assert_eq!(allocate(&mut new), 6);
    assert_eq!(allocate(&mut meta), 6, "the same id on every replica");
}

#[test]
fn a_split_founds_the_right_range_over_an_empty_replica_stopped_cleanly() {
    // A replica of range 2 made for a message of its group, waiting for its snapshot,
    // then a clean stop (which writes every store's applied position down).
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let waiting = Range::open(&keyspace, 2, KeySpan::none());
    waiting.store.persist();
    drop(waiting);
    let mut left = Range::open(&keyspace, 1, KeySpan::whole());
    left.put("x", "x1", 0);
    let right = left.split_off(b"m", 2);
    assert_eq!(right.store.span().start(), b"m");
    let at = right.store.current_revision();
    let x = right
        .store
        .read_view()
        .get(b"x", at)
        .expect("x in the new range");
    assert_eq!(x.value.as_ref(), b"x1");
}

#[test]
fn a_split_whose_right_range_arrived_first_by_snapshot_only_cuts_the_left() {
    // The leader's node splits; range 2's leader sends its snapshot to a follower whose
    // range 1 has not applied the split yet.
    let leader_dir = tempfile::tempdir().unwrap();
    let leader_keyspace = fjall::Config::new(leader_dir.path()).open().unwrap();
    let mut leader = Range::open(&leader_keyspace, 1, KeySpan::whole());
    leader.put("x", "x1", 0);
    leader.index += 1;
    let right_store = leader
        .store
        .split(
            b"m",
            LogIndex(leader.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .expect("a new right range");
    let mut leader_right = Range {
        index: right_store.applied_index().0,
        store: right_store,
    };
    leader_right.put("x", "x2", 0);
    let snapshots = tempfile::tempdir().unwrap();
    let path = snapshots.path().join("right");
    crate::snapshot::create(&leader_right.store, &path).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut follower = Range::open(&keyspace, 1, KeySpan::whole());
    follower.put("x", "x1", 0);
    let follower_right = Range::open(&keyspace, 2, KeySpan::none());
    crate::snapshot::install(&follower_right.store, &path).unwrap();
    follower.index += 1;
    let created = follower.store.split(
        b"m",
        LogIndex(follower.index),
        Term(1),
        GroupId(2),
        split_position(2),
        false,
    );
    assert!(created.is_none(), "range 2's newer state is kept");
    assert_eq!(*follower.store.span(), left_span());
    assert!(follower.store.oracle_revisions());
    assert_eq!(follower.listing(0), Vec::<(String, String)>::new());
    assert_eq!(follower_right.listing(0), pairs(&[("x", "x2")]));
}

#[test]
fn a_range_across_ranges_answers_as_one_range_holding_every_key() {
    use ostrakon_proto::etcdserverpb::{range_request, DeleteRangeRequest, RangeRequest};
    // The same writes on a keyspace that stays whole and on one split in three.
    let one_dir = tempfile::tempdir().unwrap();
    let one_keyspace = fjall::Config::new(one_dir.path()).open().unwrap();
    let mut one = Range::open(&one_keyspace, 1, KeySpan::whole());
    let split_dir = tempfile::tempdir().unwrap();
    let split_keyspace = fjall::Config::new(split_dir.path()).open().unwrap();
    let mut left = Range::open(&split_keyspace, 1, KeySpan::whole());
    let keys = ["a", "c", "f", "g", "k", "m", "n", "q", "t", "z", "zz"];
    let mut past = Vec::new();
    for round in 0..3 {
        for (i, key) in keys.iter().enumerate() {
            if (i + round) % 4 == 3 {
                let delete = || {
                    Request::DeleteRange(DeleteRangeRequest {
                        key: Bytes::from(key.to_string()),
                        ..Default::default()
                    })
                };
                one.write(delete());
                left.write(delete());
            } else {
                // Few distinct values, so sorts by value meet ties.
                let value = format!("{}", (i * 7 + round * 3) % 5);
                assert_eq!(one.put(key, &value, 0), left.put(key, &value, 0));
            }
        }
        past.push(one.store.current_revision());
    }
    left.index += 1;
    let middle_store = left
        .store
        .split(
            b"g",
            LogIndex(left.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .unwrap();
    let mut middle = Range {
        index: middle_store.applied_index().0,
        store: middle_store,
    };
    middle.index += 1;
    let right_store = middle
        .store
        .split(
            b"q",
            LogIndex(middle.index),
            Term(1),
            GroupId(3),
            split_position(3),
            false,
        )
        .unwrap();
    let views = |ranges: [&MvccStore; 3]| ranges.map(|store| store.read_view());
    let split_views = views([&left.store, &middle.store, &right_store]);
    let one_view = one.store.read_view();

    use range_request::{SortOrder, SortTarget};
    let targets = [
        SortTarget::Key,
        SortTarget::Version,
        SortTarget::Create,
        SortTarget::Mod,
        SortTarget::Value,
    ];
    let orders = [SortOrder::None, SortOrder::Ascend, SortOrder::Descend];
    let intervals: [(&str, &str); 6] = [
        ("", "\0"),
        ("b", "r"),
        ("g", "q"),
        ("h", "i"),
        ("m", ""),
        ("zz", ""),
    ];
    let mut compared = 0;
    for (key, range_end) in intervals {
        for limit in [0, 1, 2, 5] {
            for target in targets {
                for order in orders {
                    for revision in [0, past[0].0, past[1].0] {
                        for variant in 0..4 {
                            let request = RangeRequest {
                                key: Bytes::from(key),
                                range_end: Bytes::from(range_end),
                                limit,
                                sort_order: order as i32,
                                sort_target: target as i32,
                                revision,
                                keys_only: variant == 1,
                                count_only: variant == 2,
                                min_mod_revision: if variant == 3 { past[0].0 + 2 } else { 0 },
                                ..Default::default()
                            };
                            let expected = range(&one_view, &request).unwrap();
                            let at = one_view.resolve(revision).unwrap();
                            let across = range_across(&split_views, &request, at).unwrap();
                            assert_eq!(
                                (&across.kvs, across.more, across.count),
                                (&expected.kvs, expected.more, expected.count),
                                "{request:?}"
                            );
                            compared += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(compared, 6 * 4 * 5 * 3 * 3 * 4);

    // Read-only Txns whose compares and reads fall in several ranges.
    use ostrakon_proto::etcdserverpb::{
        compare::{CompareResult, CompareTarget, TargetUnion},
        request_op, Compare, RequestOp, TxnRequest,
    };
    let get = |key: &str, range_end: &str, revision: i64| RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: Bytes::from(key.to_string()),
            range_end: Bytes::from(range_end.to_string()),
            revision,
            ..Default::default()
        })),
    };
    let compare = |key: &str, range_end: &str, result: CompareResult, version: i64| Compare {
        key: Bytes::from(key.to_string()),
        range_end: Bytes::from(range_end.to_string()),
        result: result as i32,
        target: CompareTarget::Version as i32,
        target_union: Some(TargetUnion::Version(version)),
    };
    let txns = [
        (vec![compare("a", "\0", CompareResult::Greater, 0)], true),
        (vec![compare("a", "z", CompareResult::Greater, 2)], false),
        (
            vec![
                compare("a", "", CompareResult::Greater, 0),
                compare("t", "", CompareResult::Greater, 0),
            ],
            true,
        ),
        (vec![compare("nothing", "", CompareResult::Equal, 0)], true),
    ];
    for (compares, holds) in &txns {
        for revision in [0, past[1].0] {
            let request = TxnRequest {
                compare: compares.clone(),
                success: vec![get("", "\0", revision), get("f", "r", 0)],
                failure: vec![get("k", "", revision)],
            };
            let expected = read_txn(&one_view, &request).unwrap();
            let across =
                read_txn_across(&split_views, &request, one_view.current_revision()).unwrap();
            assert_eq!(across.succeeded, expected.succeeded, "{request:?}");
            assert_eq!(across.succeeded, *holds, "{request:?}");
            assert_eq!(across.responses, expected.responses, "{request:?}");
        }
    }

    // A write to the middle range only: the others are read at their current revision,
    // and the read below it still sees the old value.
    let before = middle.store.current_revision();
    let after = middle.put("k", "new", 0);
    let split_views = views([&left.store, &middle.store, &right_store]);
    let every = RangeRequest {
        key: Bytes::from(""),
        range_end: Bytes::from("\0"),
        ..Default::default()
    };
    let read = |at: Revision| {
        range_across(&split_views, &every, at)
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
            .collect::<Vec<_>>()
    };
    let mut expected: Vec<_> = range(&one_view, &every)
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
        .collect();
    assert_eq!(read(before), expected);
    let k = expected.iter().position(|(key, _)| key == b"k").unwrap();
    expected[k].1 = b"new".to_vec();
    assert_eq!(read(after), expected);
    assert_eq!(
        read(Revision(after.0 + 5)),
        expected,
        "nothing above `after`"
    );
    // A revision compacted in one range is compacted for the read.
    left.write(Request::Compaction(CompactionRequest {
        revision: past[2].0,
        ..Default::default()
    }));
    let split_views = views([&left.store, &middle.store, &right_store]);
    assert!(matches!(
        range_across(&split_views, &every, past[1]),
        Err(MvccError::Compacted { .. })
    ));
}

#[test]
fn a_compaction_above_a_range_s_last_write_raises_its_revision_on_a_keyspace_in_ranges() {
    use ostrakon_proto::etcdserverpb::CompactionRequest;
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut whole = Range::open(&keyspace, 1, KeySpan::whole());
    let first = whole.put("a", "a1", 0);
    whole.put("z", "z1", 0);
    // On one range, a revision not reached yet is etcd's future revision.
    let future = Request::Compaction(CompactionRequest {
        revision: whole.store.current_revision().0 + 10,
        physical: false,
    });
    assert!(
        matches!(whole.write(future), WriteOutcome::Error(e) if e.code == 11),
        "future revision"
    );
    whole.index += 1;
    let right_store = whole
        .store
        .split(
            b"m",
            LogIndex(whole.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .expect("a new right range");
    let mut right = Range {
        index: right_store.applied_index().0,
        store: right_store,
    };
    let mut left = whole;
    let later = left.put("b", "b1", 0);
    // The keyspace's Compact at `later` reaches the right range, whose last write is
    // older: its revision rises to it and reads below it are refused there too.
    let compact = Request::Compaction(CompactionRequest {
        revision: later.0,
        physical: false,
    });
    assert!(matches!(
        right.write(compact.clone()),
        WriteOutcome::Compaction(_)
    ));
    assert_eq!(right.store.current_revision(), later);
    assert_eq!(right.store.compact_revision(), later);
    assert!(right.store.read_view().resolve(first.0).is_err());
    assert_eq!(right.listing(0), pairs(&[("z", "z1")]));
    // No write lands at or below it now.
    assert!(right.put_at("y", "late", later.0).is_err());
    assert!(matches!(left.write(compact), WriteOutcome::Compaction(_)));
    // Not while a transaction's lock is held (its writes must land above the range's
    // revision): the node tries again once it is gone.
    let prepare = Request::TxnPrepare(ostrakon_proto::peer::TxnPrepare {
        txn: Some(ostrakon_proto::peer::TxnIdRecord {
            coordinator: 1,
            number: 1,
            born: 0,
        }),
        primary: 1,
        spans: Vec::new(),
        adds_data: false,
        waits_in_line: false,
    });
    let lock_at = Revision(later.0 + 100);
    assert!(matches!(
        right.write_at(prepare, lock_at),
        WriteOutcome::TxnPrepared(_)
    ));
    let held_off = right.write(Request::Compaction(CompactionRequest {
        revision: lock_at.0 + 1,
        physical: false,
    }));
    assert!(
        matches!(&held_off, WriteOutcome::Error(e) if e.retry == ostrakon_proto::peer::Retry::Locked as i32),
        "{held_off:?}"
    );
}

#[test]
fn a_merge_takes_the_frozen_right_range_over_and_a_fenced_merge_thaws_it() {
    use ostrakon_proto::peer::{FreezeRange, RefuseMerge, Retry, UnfreezeRange};
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut whole = Range::open(&keyspace, 1, KeySpan::whole());
    whole.put("a", "a1", 0);
    let before = whole.put("m", "m1", 0);
    whole.put("m", "m2", 0);
    whole.put("z", "z1", 0);
    whole.index += 1;
    let right_store = whole
        .store
        .split(
            b"m",
            LogIndex(whole.index),
            Term(1),
            GroupId(2),
            split_position(2),
            false,
        )
        .expect("a new right range");
    let mut left = whole;
    let mut right = Range {
        index: right_store.applied_index().0,
        store: right_store,
    };
    left.put("b", "b1", 0);
    right.put("n", "n1", 0);
    let right_revision = right.put("z", "z2", 0);

    let freeze =
        |right: &mut Range, freezer: u64| match right.write(Request::FreezeRange(FreezeRange {
            left_range_id: 1,
            freezer,
        })) {
            WriteOutcome::RangeFrozen(frozen) => LogIndex(frozen.freeze_index),
            other => panic!("{other:?}"),
        };
    // Frozen: nothing applies, no read is served; the node routes them again.
    let first_freeze = freeze(&mut right, 77);
    assert_eq!(first_freeze, LogIndex(right.index));
    // The mark names who froze it: a coordinator whose answer was lost fences only its
    // own freeze.
    assert_eq!(right.store.frozen().map(|mark| mark.freezer), Some(77));
    let refused = right.write_at(
        Request::Put(PutRequest {
            key: Bytes::from_static(b"n"),
            value: Bytes::from_static(b"n2"),
            ..Default::default()
        }),
        Revision(right.store.current_revision().0 + 1_000),
    );
    assert!(
        matches!(&refused, WriteOutcome::Error(e) if e.retry == Retry::Locked as i32),
        "{refused:?}"
    );
    assert!(right.store.read_view().span().is_none());
    assert_eq!(
        freeze(&mut right, 78),
        first_freeze,
        "frozen already: the same mark"
    );
    assert_eq!(right.store.frozen().map(|mark| mark.freezer), Some(77));

    // A merge given up: fenced in the left range, then the right one thaws.
    let fence = |left: &mut Range, freeze_index: LogIndex| match left.write(Request::RefuseMerge(
        RefuseMerge {
            right_range_id: 2,
            freeze_index: freeze_index.0,
        },
    )) {
        WriteOutcome::MergeFence(fence) => fence.merged,
        other => panic!("{other:?}"),
    };
    assert!(!fence(&mut left, first_freeze), "not merged: fenced");
    assert!(left.store.has_merge_fence(GroupId(2), first_freeze));
    let thaw = right.write(Request::UnfreezeRange(UnfreezeRange {
        freeze_index: first_freeze.0,
    }));
    assert!(
        matches!(thaw, WriteOutcome::RangeUnfrozen(ref t) if t.thawed),
        "{thaw:?}"
    );
    assert_eq!(*right.store.read_view().span(), right_span());
    let right_revision = right_revision.max(right.put("n", "n2", 0));

    // Frozen again, and merged: the left range holds both spans, every version, the
    // higher revision; the right range's local state is gone, and it is recorded.
    let freeze_index = freeze(&mut right, 79);
    assert!(freeze_index > first_freeze);
    let versions = stored_versions(&keyspace);
    left.index += 1;
    left.store
        .apply_merge(LogIndex(left.index), Term(1), &right.store);
    assert_eq!(
        stored_versions(&keyspace),
        versions,
        "a merge copies nothing"
    );
    assert_eq!(*left.store.span(), KeySpan::whole());
    assert!(
        right.store.span().is_none(),
        "the right store holds nothing now"
    );
    assert_eq!(left.store.current_revision(), right_revision);
    let everything = pairs(&[
        ("a", "a1"),
        ("b", "b1"),
        ("m", "m2"),
        ("n", "n2"),
        ("z", "z2"),
    ]);
    assert_eq!(left.listing(0), everything);
    assert_eq!(
        left.store.read_view().range(b"m", b"", before).len(),
        1,
        "history moves too"
    );
    assert_eq!(left.store.absorbed_ranges(), vec![GroupId(2)]);
    assert_eq!(MvccStore::stored_groups(&keyspace), vec![GroupId(1)]);
    assert!(
        fence(&mut left, freeze_index),
        "merged first: the fence says so"
    );
    left.put("p", "p1", 0);

    // Through a restart, and a snapshot into a new replica.
    left.store.persist();
    let (applied, listing) = (left.store.applied(), left.listing(0));
    drop((left, right));
    let left = Range::open(&keyspace, 1, left_span());
    assert_eq!(*left.store.span(), KeySpan::whole());
    assert_eq!(left.store.applied(), applied);
    assert_eq!(left.listing(0), listing);
    assert_eq!(left.store.absorbed_ranges(), vec![GroupId(2)]);
    let snapshots = tempfile::tempdir().unwrap();
    let path = snapshots.path().join("merged");
    crate::snapshot::create(&left.store, &path).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = fjall::Config::new(other_dir.path()).open().unwrap();
    let replica = Range::open(&other, 1, left_span());
    crate::snapshot::install(&replica.store, &path).unwrap();
    assert_eq!(*replica.store.span(), KeySpan::whole());
    assert_eq!(replica.listing(0), listing);
    assert_eq!(replica.store.absorbed_ranges(), vec![GroupId(2)]);
    assert!(replica.store.has_merge_fence(GroupId(2), first_freeze));
}

/// A keyspace's hash, chained range after range in key order, is the hash of the same
/// versions in one range: a split changes none. Counted at a compaction that one range
/// applied and the other has not yet, the two hash as both would once both applied it.
#[test]
fn a_hash_chained_across_ranges_is_the_one_range_hash() {
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let mut whole = Range::open(&keyspace, 1, KeySpan::whole());
    for round in 0..3 {
        for key in ["a", "k", "m", "q", "z"] {
            whole.put(key, &format!("{key}{round}"), 0);
        }
    }
    let at = whole.store.current_revision();
    let unsplit = whole.store.read_view().hash_kv(at);
    let compact_at = Revision(at.0 - 4);
    let unsplit_compacted = whole.store.read_view().hash_kv_from(0, at, compact_at);
    assert_ne!(
        unsplit, unsplit_compacted,
        "the compaction's garbage is left out"
    );

    let right = whole.split_off(b"m", 2);
    let mut left = whole;
    let chained = |left: &Range, right: &Range, compacted: Revision| {
        let crc = left.store.read_view().hash_kv_from(0, at, compacted);
        right.store.read_view().hash_kv_from(crc, at, compacted)
    };
    assert_eq!(chained(&left, &right, Revision(0)), unsplit);

    let compacted = left.write(Request::Compaction(CompactionRequest {
        revision: compact_at.0,
        physical: false,
    }));
    assert!(
        matches!(compacted, WriteOutcome::Compaction(_)),
        "{compacted:?}"
    );
    assert_eq!(chained(&left, &right, compact_at), unsplit_compacted);
}
