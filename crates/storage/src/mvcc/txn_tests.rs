//! Two-phase commit as two ranges of one node apply it: a prepare locks, writes wait,
//! the primary decides, each range writes its part at one revision.

use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use ostrakon_proto::peer::{self as pb, write_request::Request, WriteRequest};
use ostrakon_raft::{GroupId, LogIndex, Term};

use super::*;

/// Two ranges sharing one data partition, as after a split at "m": the left holds
/// keys before "m", the right the rest.
struct TwoRanges {
    dir: tempfile::TempDir,
    keyspace: fjall::Keyspace,
    left: MvccStore,
    right: MvccStore,
    index: u64,
}

fn left_span() -> KeySpan {
    KeySpan::new(Vec::new(), Some(b"m".to_vec()))
}

fn right_span() -> KeySpan {
    KeySpan::new(b"m".to_vec(), None)
}

fn txn_id(number: u64) -> pb::TxnIdRecord {
    pb::TxnIdRecord {
        coordinator: 7,
        number,
        born: 100 + number,
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            prev_kv: true,
            ..Default::default()
        })),
    }
}

/// A Txn: if `a` holds `expected`, put `a` and `x` to `new`, else read `x`.
fn transfer(expected: &str, new: &str) -> Request {
    Request::Txn(TxnRequest {
        compare: vec![Compare {
            key: "a".into(),
            target: compare::CompareTarget::Value as i32,
            result: compare::CompareResult::Equal as i32,
            target_union: Some(compare::TargetUnion::Value(expected.to_string().into())),
            ..Default::default()
        }],
        success: vec![put_op("a", new), put_op("x", new)],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: "x".into(),
                ..Default::default()
            })),
        }],
    })
}

impl TwoRanges {
    fn new() -> TwoRanges {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let left = MvccStore::open(&keyspace, GroupId(1), left_span());
        let right = MvccStore::open(&keyspace, GroupId(2), right_span());
        TwoRanges {
            dir,
            keyspace,
            left,
            right,
            index: 1,
        }
    }

    fn store(&self, right: bool) -> &MvccStore {
        if right {
            &self.right
        } else {
            &self.left
        }
    }

    fn apply(&mut self, right: bool, request: Request, revision: i64) -> WriteOutcome {
        self.apply_checked(right, request, revision, 0)
    }

    /// `apply`, its check saying `auth_revision` (`checked_auth`).
    fn apply_checked(
        &mut self,
        right: bool,
        request: Request,
        revision: i64,
        auth_revision: u64,
    ) -> WriteOutcome {
        self.index += 1;
        let write = WriteRequest {
            origin: 1,
            id: self.index,
            request: Some(request),
            revision,
            auth_revision,
            ..Default::default()
        };
        apply_write(self.store(right), LogIndex(self.index), Term(1), &write)
    }

    fn put(&mut self, key: &str, value: &str, revision: i64) -> WriteOutcome {
        let right = key >= "m";
        self.apply(
            right,
            Request::Put(PutRequest {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
                ..Default::default()
            }),
            revision,
        )
    }

    fn prepare(&mut self, right: bool, number: u64, keys: &[&str], revision: i64) -> WriteOutcome {
        let prepare = pb::TxnPrepare {
            txn: Some(txn_id(number)),
            primary: 1,
            spans: keys
                .iter()
                .map(|key| {
                    txn_tables::span_record(&txn_tables::lock_span(key.as_bytes(), b"").unwrap())
                })
                .collect(),
            adds_data: true,
            waits_in_line: false,
        };
        self.apply(right, Request::TxnPrepare(prepare), revision)
    }

    /// Transaction 1 prepared in both ranges (at 20 and 21) and evaluated: the writes
    /// of `transfer("1", new)` at 21.
    fn prepared_transfer(&mut self, new: &str) -> pb::TxnWrites {
        prepared_revision(self.prepare(false, 1, &["a"], 20));
        prepared_revision(self.prepare(true, 1, &["x"], 21));
        let views = vec![self.left.read_view(), self.right.read_view()];
        let request = transfer("1", new);
        let (_, writes) = evaluate_across(
            &self.left,
            self.left.merged_view(views, &write_intervals(&request)),
            Revision(21),
            &request,
        )
        .unwrap();
        writes
    }

    fn value(&self, key: &str) -> Option<(String, i64)> {
        let store = self.store(key >= "m");
        store
            .read_view()
            .get(key.as_bytes(), store.current_revision())
            .map(|kv| {
                (
                    String::from_utf8(kv.value.to_vec()).unwrap(),
                    kv.mod_revision,
                )
            })
    }
}

fn prepared_revision(outcome: WriteOutcome) -> i64 {
    match outcome {
        WriteOutcome::TxnPrepared(prepared) => prepared.revision,
        other => panic!("not prepared: {other:?}"),
    }
}

fn is_locked(outcome: &WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Error(error) if error.retry == pb::Retry::Locked as i32)
}

#[test]
fn a_transaction_across_two_ranges_writes_at_one_revision_and_holds_writes_off_meanwhile() {
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    ranges.put("x", "1", 11);
    assert_eq!(prepared_revision(ranges.prepare(false, 1, &["a"], 20)), 20);
    assert_eq!(prepared_revision(ranges.prepare(true, 1, &["x"], 21)), 21);
    // A second transaction, and any plain write, wait while the locks are held; reads of
    // the current state see that a lock is there.
    assert!(is_locked(&ranges.prepare(true, 2, &["y"], 22)));
    assert!(is_locked(&ranges.put("b", "9", 23)));
    assert!(is_locked(&ranges.put("z", "9", 24)));
    let intervals: [KeyInterval; 1] = [(b"a", b"")];
    assert!(ranges.left.read_view().locked(&intervals, None));
    assert!(ranges
        .left
        .read_view()
        .locked(&intervals, Some(Revision(20))));
    assert!(!ranges
        .left
        .read_view()
        .locked(&intervals, Some(Revision(19))));
    let elsewhere: [KeyInterval; 1] = [(b"b", b"")];
    assert!(!ranges.left.read_view().locked(&elsewhere, None));
    assert_eq!(
        ranges.left.read_view().lowest_lock_revision(),
        Some(Revision(20))
    );

    // The coordinator evaluates the Txn over both views at the highest lock's revision.
    let views = vec![ranges.left.read_view(), ranges.right.read_view()];
    let request = transfer("1", "2");
    let (outcome, writes) = evaluate_across(
        &ranges.left,
        ranges.left.merged_view(views, &write_intervals(&request)),
        Revision(21),
        &request,
    )
    .unwrap();
    let WriteOutcome::Txn(response) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(response.succeeded);
    assert_eq!(response.header.unwrap().revision, 21);
    assert_eq!(writes.revision, 21);
    assert_eq!(writes.writes.len(), 2);
    let subs: Vec<u32> = writes.writes.iter().map(|w| w.sub).collect();
    assert_eq!(subs, vec![0, 1]);

    let decide = pb::TxnDecide {
        txn: Some(txn_id(1)),
        writes: Some(writes.clone()),
    };
    match ranges.apply(false, Request::TxnCommit(decide.clone()), 0) {
        WriteOutcome::TxnDecided(decided) => assert!(decided.committed),
        other => panic!("{other:?}"),
    }
    assert_eq!(ranges.value("a"), Some(("2".into(), 21)));
    // The other range's part waits for its resolve; its lock still holds writes off.
    assert_eq!(ranges.value("x"), Some(("1".into(), 11)));
    assert!(is_locked(&ranges.put("z", "9", 25)));
    ranges.apply(true, Request::TxnResolve(decide.clone()), 0);
    assert_eq!(ranges.value("x"), Some(("2".into(), 21)));
    let x = ranges.right.read_view().get(b"x", Revision(21)).unwrap();
    assert_eq!((x.version, x.create_revision), (2, 11));
    // A resolve delivered twice writes nothing more.
    ranges.apply(true, Request::TxnResolve(decide), 0);
    assert_eq!(ranges.right.current_revision(), Revision(21));
    assert!(!ranges.left.has_txn_locks() && !ranges.right.has_txn_locks());
    assert!(matches!(ranges.put("z", "9", 26), WriteOutcome::Put(_)));
    // Every part written, the primary forgets the record; an abort then finds none.
    assert_eq!(ranges.left.txn_outcome_count(), 1);
    ranges.apply(false, Request::TxnForget(txn_id(1)), 0);
    assert_eq!(ranges.left.txn_outcome_count(), 0);
    ranges.left.persist();
    let reopened = MvccStore::open(&ranges.keyspace, GroupId(1), left_span());
    assert_eq!(reopened.txn_outcome_count(), 0);
}

#[test]
fn an_aborted_transaction_leaves_nothing_and_never_commits() {
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    prepared_revision(ranges.prepare(false, 1, &["a"], 20));
    prepared_revision(ranges.prepare(true, 1, &["x"], 21));
    match ranges.apply(false, Request::TxnAbort(txn_id(1)), 0) {
        WriteOutcome::TxnDecided(decided) => assert!(!decided.committed),
        other => panic!("{other:?}"),
    }
    let late = pb::TxnDecide {
        txn: Some(txn_id(1)),
        writes: Some(pb::TxnWrites {
            revision: 21,
            writes: vec![pb::TxnWrite {
                key: "a".into(),
                value: "2".into(),
                version: 2,
                create_revision: 10,
                ..Default::default()
            }],
            revoked_leases: Vec::new(),
            participants: Vec::new(),
        }),
    };
    match ranges.apply(false, Request::TxnCommit(late), 0) {
        WriteOutcome::TxnDecided(decided) => assert!(!decided.committed),
        other => panic!("{other:?}"),
    }
    ranges.apply(
        true,
        Request::TxnRelease(pb::TxnRelease {
            txn: Some(txn_id(1)),
            raise_revision: 0,
            prepared_revision: 0,
        }),
        0,
    );
    assert_eq!(ranges.value("a"), Some(("1".into(), 10)));
    assert!(!ranges.left.has_txn_locks() && !ranges.right.has_txn_locks());
}

#[test]
fn a_prepare_applied_after_its_transaction_committed_is_only_forgotten() {
    // A copy of a prepare that reaches a leader late (its first copy answered, the
    // transaction committed and its part written) takes a lock above the transaction's
    // revision; whoever pushes it learns the commit and resolves. A review found every
    // replica then asserted the part's revision was above the range's, and crashed.
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    ranges.put("x", "1", 11);
    let decide = pb::TxnDecide {
        txn: Some(txn_id(1)),
        writes: Some(ranges.prepared_transfer("2")),
    };
    ranges.apply(false, Request::TxnCommit(decide.clone()), 0);
    ranges.apply(true, Request::TxnResolve(decide.clone()), 0);
    assert_eq!(ranges.value("x"), Some(("2".into(), 21)));
    assert_eq!(prepared_revision(ranges.prepare(true, 1, &["x"], 30)), 30);
    assert!(ranges.right.has_txn_locks());
    ranges.apply(true, Request::TxnResolve(decide), 0);
    assert!(!ranges.right.has_txn_locks(), "the late lock is forgotten");
    assert_eq!(
        ranges.value("x"),
        Some(("2".into(), 21)),
        "nothing written again"
    );
    assert!(matches!(ranges.put("y", "9", 31), WriteOutcome::Put(_)));
}

#[test]
fn an_abort_after_the_commit_learns_it_and_locks_and_outcomes_survive_a_restart() {
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    let writes = ranges.prepared_transfer("3");
    ranges.apply(
        false,
        Request::TxnCommit(pb::TxnDecide {
            txn: Some(txn_id(1)),
            writes: Some(writes.clone()),
        }),
        0,
    );
    ranges.left.persist();
    ranges.right.persist();
    // A restart keeps the right range's lock and the primary's record.
    let TwoRanges {
        dir,
        keyspace,
        left,
        right,
        mut index,
    } = ranges;
    drop((left, right));
    let left = MvccStore::open(&keyspace, GroupId(1), left_span());
    let right = MvccStore::open(&keyspace, GroupId(2), right_span());
    assert!(right.has_txn_locks());
    index += 1;
    // Whoever finds the lock stale asks the primary to abort, and learns the commit.
    let abort = WriteRequest {
        request: Some(Request::TxnAbort(txn_id(1))),
        ..Default::default()
    };
    match apply_write(&left, LogIndex(index), Term(1), &abort) {
        WriteOutcome::TxnDecided(decided) => {
            assert!(decided.committed);
            assert_eq!(decided.writes, Some(writes));
        }
        other => panic!("{other:?}"),
    }
    drop(dir);
}

#[test]
fn a_snapshot_carries_locks_and_outcomes() {
    let mut ranges = TwoRanges::new();
    prepared_revision(ranges.prepare(true, 1, &["x"], 21));
    ranges.apply(false, Request::TxnAbort(txn_id(5)), 0);
    let path = ranges.dir.path().join("snap");
    crate::snapshot::create(&ranges.right, &path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let target = MvccStore::open(&keyspace, GroupId(2), right_span());
    crate::snapshot::install(&target, &path).unwrap();
    assert_eq!(target.txn_locks(), ranges.right.txn_locks());
    let path = ranges.dir.path().join("snap-left");
    crate::snapshot::create(&ranges.left, &path).unwrap();
    let target_left = MvccStore::open(&keyspace, GroupId(1), left_span());
    crate::snapshot::install(&target_left, &path).unwrap();
    // The installed primary remembers the abort: a late commit is refused.
    let late = WriteRequest {
        request: Some(Request::TxnCommit(pb::TxnDecide {
            txn: Some(txn_id(5)),
            writes: Some(pb::TxnWrites::default()),
        })),
        ..Default::default()
    };
    let index = target_left.applied_index().0 + 1;
    match apply_write(&target_left, LogIndex(index), Term(1), &late) {
        WriteOutcome::TxnDecided(decided) => assert!(!decided.committed),
        other => panic!("{other:?}"),
    }
    drop(ranges.keyspace);
}

#[test]
fn a_horizon_forgets_aborted_records_and_late_commits_below_it_stay_refused() {
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    // Born at 101 (aborted), 103 (committed) and 105 (aborted).
    prepared_revision(ranges.prepare(false, 1, &["a"], 20));
    ranges.apply(false, Request::TxnAbort(txn_id(1)), 0);
    ranges.apply(false, Request::TxnAbort(txn_id(5)), 0);
    ranges.apply(
        false,
        Request::TxnCommit(pb::TxnDecide {
            txn: Some(txn_id(3)),
            writes: Some(pb::TxnWrites {
                revision: 30,
                ..Default::default()
            }),
        }),
        0,
    );
    assert_eq!(ranges.left.txn_outcome_count(), 3);
    assert_eq!(ranges.left.oldest_forgettable_txn(104), Some(101));
    ranges.apply(false, Request::TxnHorizon(pb::TxnHorizon { below: 104 }), 0);
    assert_eq!(ranges.left.txn_outcome_count(), 2);
    assert_eq!(ranges.left.txn_aborted_count(), 1);
    assert_eq!(ranges.left.oldest_forgettable_txn(104), None);
    let late_commit = |number| {
        Request::TxnCommit(pb::TxnDecide {
            txn: Some(txn_id(number)),
            writes: Some(pb::TxnWrites {
                revision: 40,
                writes: vec![pb::TxnWrite {
                    key: "a".into(),
                    value: "late".into(),
                    version: 2,
                    create_revision: 10,
                    ..Default::default()
                }],
                revoked_leases: Vec::new(),
                participants: Vec::new(),
            }),
        })
    };
    // Its record is gone, its commit still refused: across a restart and a snapshot too.
    let refused = |outcome: WriteOutcome| match outcome {
        WriteOutcome::TxnDecided(decided) => !decided.committed,
        other => panic!("{other:?}"),
    };
    assert!(refused(ranges.apply(false, late_commit(1), 0)));
    ranges.left.persist();
    let reopened = MvccStore::open(&ranges.keyspace, GroupId(1), left_span());
    assert_eq!(reopened.txn_outcome_count(), 2);
    let index = reopened.applied_index().0 + 1;
    let late = WriteRequest {
        request: Some(late_commit(2)),
        ..Default::default()
    };
    assert!(refused(apply_write(
        &reopened,
        LogIndex(index),
        Term(1),
        &late
    )));
    let path = ranges.dir.path().join("snap-horizon");
    crate::snapshot::create(&reopened, &path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keyspace = fjall::Config::new(dir.path()).open().unwrap();
    let installed = MvccStore::open(&keyspace, GroupId(1), left_span());
    crate::snapshot::install(&installed, &path).unwrap();
    assert_eq!(installed.txn_outcome_count(), 2);
    let index = installed.applied_index().0 + 1;
    assert!(refused(apply_write(
        &installed,
        LogIndex(index),
        Term(1),
        &late
    )));
    // Born above it, a transaction commits as before.
    let above = WriteRequest {
        request: Some(late_commit(6)),
        ..Default::default()
    };
    assert!(!refused(apply_write(
        &installed,
        LogIndex(index + 1),
        Term(1),
        &above
    )));
    assert_eq!(ranges.value("a"), Some(("1".into(), 10)));
    drop(reopened);
}

/// A copy of a commit applied again after a pusher marked the record finished (a
/// proposal retried through the log) keeps it finished on disk as in memory: reopened,
/// the store's horizon forgets it as the others' do (found by review: the copy stored it
/// again unmarked, and a replica restarted then kept it for good).
#[test]
fn a_commit_applied_again_after_its_record_was_finished_keeps_it_finished() {
    let mut ranges = TwoRanges::new();
    let commit = Request::TxnCommit(pb::TxnDecide {
        txn: Some(txn_id(3)),
        writes: Some(pb::TxnWrites {
            revision: 30,
            ..Default::default()
        }),
    });
    ranges.apply(false, commit.clone(), 0);
    ranges.apply(false, Request::TxnFinished(txn_id(3)), 0);
    let again = ranges.apply(false, commit, 0);
    let WriteOutcome::TxnDecided(decided) = again else {
        panic!("{again:?}")
    };
    assert!(decided.committed, "the commit stands");
    ranges.left.persist();
    let reopened = MvccStore::open(&ranges.keyspace, GroupId(1), left_span());
    assert_eq!(reopened.txn_outcome_count(), 1);
    let index = reopened.applied_index().0 + 1;
    let horizon = WriteRequest {
        request: Some(Request::TxnHorizon(pb::TxnHorizon { below: 104 })),
        ..Default::default()
    };
    apply_write(&reopened, LogIndex(index), Term(1), &horizon);
    assert_eq!(
        reopened.txn_outcome_count(),
        0,
        "a finished record below the horizon is forgotten after a restart too"
    );
    drop(reopened);
}

/// A commit answered "forgotten" (born below the primary's horizon) releases the
/// transaction's lock in the primary, as an abort answered so does: the coordinator
/// releases the other ranges' only, and the primary would stay frozen until a pusher
/// came (found by review).
#[test]
fn a_commit_below_the_horizon_releases_the_primarys_lock() {
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    prepared_revision(ranges.prepare(false, 2, &["a"], 20));
    ranges.apply(false, Request::TxnHorizon(pb::TxnHorizon { below: 104 }), 0);
    assert!(ranges.left.has_txn_locks());
    let commit = Request::TxnCommit(pb::TxnDecide {
        txn: Some(txn_id(2)),
        writes: Some(pb::TxnWrites {
            revision: 20,
            ..Default::default()
        }),
    });
    let answer = ranges.apply(false, commit, 0);
    let WriteOutcome::TxnDecided(decided) = answer else {
        panic!("{answer:?}")
    };
    assert!(decided.forgotten && !decided.committed);
    assert!(!ranges.left.has_txn_locks(), "the range is not left frozen");
    assert!(matches!(ranges.put("a", "2", 25), WriteOutcome::Put(_)));
}

#[test]
fn a_release_after_a_path_without_writes_raises_the_revision_it_read_at() {
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    prepared_revision(ranges.prepare(false, 1, &["a"], 20));
    prepared_revision(ranges.prepare(true, 1, &["x"], 30));
    let views = vec![ranges.left.read_view(), ranges.right.read_view()];
    let request = transfer("9", "2");
    let merged = ranges.left.merged_view(views, &write_intervals(&request));
    let (outcome, writes) = evaluate_across(&ranges.left, merged, Revision(30), &request).unwrap();
    assert!(writes.writes.is_empty());
    let WriteOutcome::Txn(response) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(!response.succeeded);
    assert_eq!(response.header.unwrap().revision, 30);
    for (right, prepared_revision) in [(false, 20), (true, 30)] {
        let release = pb::TxnRelease {
            txn: Some(txn_id(1)),
            raise_revision: 30,
            prepared_revision,
        };
        let done = ranges.apply(right, Request::TxnRelease(release), 0);
        assert_eq!(done, WriteOutcome::TxnDone(pb::TxnDone { held: true }));
    }
    // Released again (its lock gone): answered as not held, and nothing raised.
    let release = pb::TxnRelease {
        txn: Some(txn_id(1)),
        raise_revision: 30,
        prepared_revision: 20,
    };
    let again = ranges.apply(false, Request::TxnRelease(release), 0);
    assert_eq!(again, WriteOutcome::TxnDone(pb::TxnDone { held: false }));
    // The answer said "as of 30": no write may land at or below it now.
    assert_eq!(ranges.left.current_revision(), Revision(30));
    assert_eq!(ranges.right.current_revision(), Revision(30));
    let stale = ranges.put("b", "late", 25);
    assert!(
        matches!(&stale, WriteOutcome::Error(error) if error.retry == pb::Retry::StaleRevision as i32),
        "{stale:?}"
    );
    assert!(matches!(ranges.put("b", "fresh", 31), WriteOutcome::Put(_)));
    // A write that changes nothing answers with the revision it came with.
    let missed = ranges.apply(
        false,
        Request::Txn(TxnRequest {
            compare: vec![Compare {
                key: "a".into(),
                target: compare::CompareTarget::Value as i32,
                result: compare::CompareResult::Equal as i32,
                target_union: Some(compare::TargetUnion::Value("nope".into())),
                ..Default::default()
            }],
            ..Default::default()
        }),
        40,
    );
    let WriteOutcome::Txn(missed) = missed else {
        panic!("{missed:?}")
    };
    assert_eq!(missed.header.unwrap().revision, 40);
}

#[test]
fn a_release_after_a_read_finds_only_the_lock_its_prepare_took() {
    // A read-only transaction prepared at 20 and read at 30; a pusher ended its lock
    // here, a write landed at 25, and a late copy of the prepare locked again at 26.
    // Its release must not answer "held": the read at 30 missed the write at 25
    // (review, 2026-12-04: the release answered for any lock of the transaction).
    let mut ranges = TwoRanges::new();
    ranges.put("a", "1", 10);
    prepared_revision(ranges.prepare(false, 1, &["a"], 20));
    let view = ranges.left.read_view();
    assert!(view.holds_lock_at(txn_tables::txn_id_of(&txn_id(1)), 20));
    let pushed = pb::TxnRelease {
        txn: Some(txn_id(1)),
        raise_revision: 0,
        prepared_revision: 0,
    };
    assert_eq!(
        ranges.apply(false, Request::TxnRelease(pushed), 0),
        WriteOutcome::TxnDone(pb::TxnDone { held: true })
    );
    assert!(matches!(ranges.put("a", "2", 25), WriteOutcome::Put(_)));
    assert_eq!(prepared_revision(ranges.prepare(false, 1, &["a"], 26)), 26);
    let late = ranges.left.read_view();
    assert!(!late.holds_lock_at(txn_tables::txn_id_of(&txn_id(1)), 20));
    let release = pb::TxnRelease {
        txn: Some(txn_id(1)),
        raise_revision: 30,
        prepared_revision: 20,
    };
    assert_eq!(
        ranges.apply(false, Request::TxnRelease(release), 0),
        WriteOutcome::TxnDone(pb::TxnDone { held: false })
    );
    assert!(!ranges.left.has_txn_locks(), "the late lock is forgotten");
    assert_eq!(
        ranges.left.current_revision(),
        Revision(25),
        "nothing is raised by a release that did not find its lock"
    );
}

impl TwoRanges {
    /// A prepare of transaction `number` locking every key of one range (a revoke's).
    fn prepare_whole(&mut self, right: bool, number: u64, revision: i64) -> WriteOutcome {
        let span = self.store(right).span();
        let (key, range_end) = span.clip(b"", b"\0").unwrap();
        let prepare = pb::TxnPrepare {
            txn: Some(txn_id(number)),
            primary: 1,
            spans: vec![txn_tables::span_record(
                &txn_tables::lock_span(&key, &range_end).unwrap(),
            )],
            adds_data: false,
            waits_in_line: false,
        };
        self.apply(right, Request::TxnPrepare(prepare), revision)
    }

    fn decide(&mut self, right: bool, number: u64, writes: &pb::TxnWrites) -> WriteOutcome {
        let decide = pb::TxnDecide {
            txn: Some(txn_id(number)),
            writes: Some(writes.clone()),
        };
        let request = if right {
            Request::TxnResolve(decide)
        } else {
            Request::TxnCommit(decide)
        };
        self.apply(right, request, 0)
    }
}

#[test]
fn a_lease_attached_and_revoked_across_ranges_deletes_every_key_at_one_revision() {
    use ostrakon_proto::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
    let mut ranges = TwoRanges::new();
    let grant = Request::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 5 });
    assert!(matches!(
        ranges.apply(false, grant, 10),
        WriteOutcome::LeaseGrant(_)
    ));
    let leased_put = |key: &str| PutRequest {
        key: Bytes::from(key.to_string()),
        value: "v".into(),
        lease: 5,
        ..Default::default()
    };
    assert!(matches!(
        ranges.apply(false, Request::Put(leased_put("a")), 11),
        WriteOutcome::Put(_)
    ));
    // The right range holds no lease: a plain put there with the lease is refused.
    let refused = ranges.apply(true, Request::Put(leased_put("x")), 12);
    assert!(
        matches!(&refused, WriteOutcome::Error(e) if e.code == 5),
        "{refused:?}"
    );

    // Attaching it to "x" is a transaction with the first range, which locks no key
    // there (the coordinator reads only the right range's view) but keeps the lease.
    prepared_revision(ranges.prepare(false, 1, &[], 20));
    prepared_revision(ranges.prepare(true, 1, &["x"], 21));
    let request = Request::Put(leased_put("x"));
    let merged = ranges
        .left
        .merged_view(vec![ranges.right.read_view()], &write_intervals(&request));
    let (_, writes) = evaluate_across(&ranges.left, merged, Revision(21), &request).unwrap();
    assert!(writes.revoked_leases.is_empty());
    ranges.decide(false, 1, &writes);
    ranges.decide(true, 1, &writes);
    assert_eq!(
        ranges.right.read_view().lease_keys(5),
        vec![Bytes::from("x")]
    );
    // The first range wrote nothing but its revision moved to the transaction's: no
    // write fetched before it may land below it.
    assert_eq!(ranges.left.current_revision(), Revision(21));
    assert!(matches!(
        ranges.put("b", "late", 15),
        WriteOutcome::Error(e) if e.retry == pb::Retry::StaleRevision as i32
    ));

    // A plain revoke in the first range of a split keyspace would leave "x" behind: it
    // is refused as in the wrong range (the node sends it round every range instead).
    let revoke = Request::LeaseRevoke(LeaseRevokeRequest { id: 5 });
    let refused = ranges.apply(false, revoke, 30);
    assert!(
        matches!(&refused, WriteOutcome::Error(e) if e.retry == pb::Retry::WrongRange as i32),
        "{refused:?}"
    );
    assert!(ranges.left.lease(5).is_some());

    // The revoke across ranges: every range locked whole, each evaluated on its own.
    prepared_revision(ranges.prepare_whole(false, 2, 40));
    prepared_revision(ranges.prepare_whole(true, 2, 41));
    assert!(is_locked(&ranges.put("y", "9", 42)));
    let views = vec![ranges.left.read_view(), ranges.right.read_view()];
    let (outcome, writes) = evaluate_revoke_across(&ranges.left, views, Revision(41), 5).unwrap();
    assert!(matches!(outcome, WriteOutcome::LeaseRevoke(_)));
    assert_eq!(writes.revoked_leases, vec![5]);
    let deleted: Vec<_> = writes
        .writes
        .iter()
        .map(|w| (w.key.clone(), w.delete))
        .collect();
    assert_eq!(
        deleted,
        vec![(Bytes::from("a"), true), (Bytes::from("x"), true)]
    );
    // One count of sub-revisions over the ranges: no two versions of the revision share
    // one (a backup keys them by both).
    let subs: Vec<u32> = writes.writes.iter().map(|w| w.sub).collect();
    assert_eq!(subs, vec![0, 1]);
    ranges.decide(false, 2, &writes);
    assert!(ranges.left.lease(5).is_none());
    assert_eq!(ranges.value("a"), None);
    // Until its resolve, the right range still holds "x" under the lock.
    assert!(ranges.right.read_view().locked(&[(b"x", b"")], None));
    ranges.decide(true, 2, &writes);
    assert_eq!(ranges.value("x"), None);
    assert!(ranges.right.read_view().lease_keys(5).is_empty());
    let history = ranges.right.read_view().get(b"x", Revision(40)).unwrap();
    assert_eq!(history.lease, 5);
    assert_eq!(ranges.right.current_revision(), Revision(41));
    assert_eq!(ranges.left.current_revision(), Revision(41));

    // A lease that does not exist is refused as etcd refuses it.
    prepared_revision(ranges.prepare_whole(false, 3, 50));
    let views = vec![ranges.left.read_view()];
    assert_eq!(
        evaluate_revoke_across(&ranges.left, views, Revision(50), 5).unwrap_err(),
        MvccError::LeaseNotFound
    );
}

/// A commit that reaches the primary's log after an auth change (whose gate every range
/// holds before it is acknowledged) was checked against the old permissions: the
/// transaction aborts there, as a write would be refused, and its locks go.
#[test]
fn a_commit_checked_against_an_older_auth_store_aborts_at_the_primary() {
    use ostrakon_proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    };
    use pb::auth_write::Op;
    let mut ranges = TwoRanges::new();
    assert!(is_put(ranges.put("a", "1", 10)));
    assert!(is_put(ranges.put("x", "1", 11)));
    for op in [
        Op::UserAdd(AuthUserAddRequest {
            name: "root".into(),
            hashed_password: "hash".into(),
            ..Default::default()
        }),
        Op::UserGrantRole(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        }),
        Op::Enable(AuthEnableRequest {}),
    ] {
        let applied = ranges.apply(false, Request::Auth(pb::AuthWrite { op: Some(op) }), 0);
        assert!(matches!(applied, WriteOutcome::Auth(_)), "{applied:?}");
    }
    let checked_at = ranges.left.auth().revision();
    let writes = ranges.prepared_transfer("2");
    // The permissions change after the prepares (a role added moves the revision).
    let changed = ranges.apply(
        false,
        Request::Auth(pb::AuthWrite {
            op: Some(Op::RoleAdd(AuthRoleAddRequest { name: "r".into() })),
        }),
        0,
    );
    assert!(matches!(changed, WriteOutcome::Auth(_)), "{changed:?}");
    let commit = Request::TxnCommit(pb::TxnDecide {
        txn: Some(txn_id(1)),
        writes: Some(writes),
    });
    match ranges.apply_checked(false, commit, 0, checked_auth(checked_at, true)) {
        WriteOutcome::TxnDecided(decided) => assert!(!decided.committed, "{decided:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ranges.value("a"), Some(("1".to_string(), 10)));
    assert!(is_put(ranges.put("a", "3", 30)), "the primary's lock went");
}

fn is_put(outcome: WriteOutcome) -> bool {
    matches!(outcome, WriteOutcome::Put(_))
}
