use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{
    compare, range_request, request_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use ostrakon_proto::peer::{write_request::Request, WriteRequest};
use ostrakon_raft::{GroupId, LogIndex, Term};

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    keyspace: fjall::Keyspace,
    store: std::sync::Arc<MvccStore>,
    index: u64,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = std::sync::Arc::new(MvccStore::open(&keyspace, GroupId(1), KeySpan::whole()));
        Fixture {
            _dir: dir,
            keyspace,
            store,
            index: 1,
        }
    }

    fn write(&mut self, request: Request) -> WriteOutcome {
        self.index += 1;
        let write = WriteRequest {
            auth_revision: 0,
            origin: 1,
            id: self.index,
            request: Some(request),
            ..Default::default()
        };
        apply_write(&self.store, LogIndex(self.index), Term(1), &write)
    }

    fn put(&mut self, key: &str, value: &str) -> i64 {
        let outcome = self.write(Request::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        }));
        match outcome {
            WriteOutcome::Put(r) => r.header.unwrap().revision,
            other => panic!("{other:?}"),
        }
    }

    fn delete(&mut self, key: &str, range_end: &str) -> i64 {
        match self.write(Request::DeleteRange(DeleteRangeRequest {
            key: Bytes::from(key.to_string()),
            range_end: Bytes::from(range_end.to_string()),
            prev_kv: false,
        })) {
            WriteOutcome::DeleteRange(r) => r.deleted,
            other => panic!("{other:?}"),
        }
    }

    fn range(
        &self,
        request: RangeRequest,
    ) -> Result<ostrakon_proto::etcdserverpb::RangeResponse, MvccError> {
        range(&self.store.read_view(), &request)
    }

    fn get(&self, key: &str) -> Option<ostrakon_proto::mvccpb::KeyValue> {
        self.range(RangeRequest {
            key: Bytes::from(key.to_string()),
            ..Default::default()
        })
        .unwrap()
        .kvs
        .pop()
    }
}

fn keys(response: &ostrakon_proto::etcdserverpb::RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

fn all_from(key: &str) -> RangeRequest {
    RangeRequest {
        key: Bytes::from(key.to_string()),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    }
}

#[test]
fn revisions_versions_and_deletes_follow_etcd() {
    let mut f = Fixture::new();
    assert_eq!(
        f.store.current_revision(),
        Revision(1),
        "an empty store is at revision 1"
    );
    assert_eq!(f.put("a", "1"), 2);
    assert_eq!(f.put("a", "2"), 3);
    let a = f.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    assert_eq!(f.delete("a", ""), 1);
    assert!(f.get("a").is_none());
    assert_eq!(f.store.current_revision(), Revision(4));
    // Deleting nothing does not make a revision.
    assert_eq!(f.delete("a", ""), 0);
    assert_eq!(f.store.current_revision(), Revision(4));
    // A new generation starts over.
    assert_eq!(f.put("a", "3"), 5);
    let a = f.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
    // Reads at past revisions see the past.
    let past = f
        .range(RangeRequest {
            key: "a".into(),
            revision: 3,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(past.kvs[0].value, Bytes::from("2"));
    assert_eq!(
        past.header.unwrap().revision,
        5,
        "the header carries the current revision"
    );
    let gone = f
        .range(RangeRequest {
            key: "a".into(),
            revision: 4,
            ..Default::default()
        })
        .unwrap();
    assert!(gone.kvs.is_empty());
    assert_eq!(
        f.range(RangeRequest {
            key: "a".into(),
            revision: 6,
            ..Default::default()
        })
        .err(),
        Some(MvccError::FutureRevision)
    );
}

#[test]
fn range_limit_count_sort_and_filters() {
    let mut f = Fixture::new();
    for (key, value) in [("k3", "a"), ("k1", "c"), ("k2", "b"), ("other", "z")] {
        f.put(key, value);
    }
    f.put("k1", "d"); // k1: version 2, mod 6
    let prefix = RangeRequest {
        key: "k".into(),
        range_end: "l".into(),
        ..Default::default()
    };
    let all = f.range(prefix.clone()).unwrap();
    assert_eq!(keys(&all), ["k1", "k2", "k3"]);
    assert_eq!((all.count, all.more), (3, false));

    let limited = f
        .range(RangeRequest {
            limit: 2,
            ..prefix.clone()
        })
        .unwrap();
    assert_eq!(keys(&limited), ["k1", "k2"]);
    assert_eq!((limited.count, limited.more), (3, true));

    let by_value_desc = f
        .range(RangeRequest {
            sort_target: range_request::SortTarget::Value as i32,
            sort_order: range_request::SortOrder::Descend as i32,
            ..prefix.clone()
        })
        .unwrap();
    assert_eq!(keys(&by_value_desc), ["k1", "k2", "k3"]);
    let by_mod = f
        .range(RangeRequest {
            sort_target: range_request::SortTarget::Mod as i32,
            ..prefix.clone()
        })
        .unwrap();
    assert_eq!(
        keys(&by_mod),
        ["k3", "k2", "k1"],
        "no order with a target means ascending"
    );
    let by_key_desc = f
        .range(RangeRequest {
            sort_order: range_request::SortOrder::Descend as i32,
            ..prefix.clone()
        })
        .unwrap();
    assert_eq!(keys(&by_key_desc), ["k3", "k2", "k1"]);

    let count_only = f
        .range(RangeRequest {
            count_only: true,
            ..prefix.clone()
        })
        .unwrap();
    assert!(count_only.kvs.is_empty());
    assert_eq!(count_only.count, 3);
    let keys_only = f
        .range(RangeRequest {
            keys_only: true,
            ..prefix.clone()
        })
        .unwrap();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));

    let modified_late = f
        .range(RangeRequest {
            min_mod_revision: 5,
            ..prefix.clone()
        })
        .unwrap();
    assert_eq!(keys(&modified_late), ["k1"]);
    assert_eq!(modified_late.count, 3, "etcd counts before filtering");
    let created_early = f
        .range(RangeRequest {
            max_create_revision: 3,
            ..prefix.clone()
        })
        .unwrap();
    assert_eq!(keys(&created_early), ["k1", "k3"]);

    assert_eq!(
        keys(&f.range(all_from("k2")).unwrap()),
        ["k2", "k3", "other"]
    );
    assert_eq!(
        keys(&f.range(all_from("\0")).unwrap()).len(),
        4,
        "\\0 to \\0 is every key"
    );
}

#[test]
fn keys_with_zero_bytes_are_kept_apart() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("a\0", "2");
    f.put("a\0b", "3");
    f.put("ab", "4");
    assert_eq!(f.get("a").unwrap().value, Bytes::from("1"));
    assert_eq!(f.get("a\0").unwrap().value, Bytes::from("2"));
    let prefix = f
        .range(RangeRequest {
            key: "a\0".into(),
            range_end: "a\x01".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(keys(&prefix), ["a\0", "a\0b"]);
}

#[test]
fn put_options_prev_kv_ignore_value_and_leases() {
    let mut f = Fixture::new();
    f.put("a", "1");
    let outcome = f.write(Request::Put(PutRequest {
        key: "a".into(),
        ignore_value: true,
        prev_kv: true,
        ..Default::default()
    }));
    let WriteOutcome::Put(response) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(response.prev_kv.unwrap().value, Bytes::from("1"));
    let a = f.get("a").unwrap();
    assert_eq!((a.value.as_ref(), a.version), (b"1".as_ref(), 2));

    let missing = f.write(Request::Put(PutRequest {
        key: "b".into(),
        ignore_value: true,
        ..Default::default()
    }));
    assert!(
        matches!(missing, WriteOutcome::Error(ref e) if e.message == "etcdserver: key not found"),
        "{missing:?}"
    );
    let leased = f.write(Request::Put(PutRequest {
        key: "b".into(),
        lease: 7,
        ..Default::default()
    }));
    assert!(
        matches!(leased, WriteOutcome::Error(ref e) if e.code == 5),
        "{leased:?}"
    );
    assert_eq!(
        f.store.current_revision(),
        Revision(3),
        "refused writes make no revision"
    );
    assert_eq!(
        f.store.applied_index(),
        LogIndex(f.index),
        "refused writes are still applied"
    );
}

fn cmp(
    key: &str,
    target: compare::CompareTarget,
    result: compare::CompareResult,
    value: compare::TargetUnion,
) -> Compare {
    Compare {
        key: Bytes::from(key.to_string()),
        target: target as i32,
        result: result as i32,
        target_union: Some(value),
        range_end: Bytes::new(),
    }
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        })),
    }
}

#[test]
fn txn_compares_and_runs_one_branch_at_one_revision() {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let mut f = Fixture::new();
    f.put("a", "1");
    let txn = |compare: Vec<Compare>| {
        Request::Txn(TxnRequest {
            compare,
            success: vec![
                put_op("x", "yes"),
                put_op("y", "yes"),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: "x".into(),
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![put_op("x", "no")],
        })
    };
    let outcome = f.write(txn(vec![
        cmp("a", T::Value, R::Equal, U::Value("1".into())),
        cmp("a", T::Version, R::Greater, U::Version(0)),
    ]));
    let WriteOutcome::Txn(response) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(response.succeeded);
    assert_eq!(
        response.header.unwrap().revision,
        3,
        "one revision for the whole txn"
    );
    assert_eq!(
        f.get("x").unwrap().mod_revision,
        f.get("y").unwrap().mod_revision
    );
    // The range in the txn saw the txn's own put.
    let Some(ostrakon_proto::etcdserverpb::response_op::Response::ResponseRange(read)) =
        &response.responses[2].response
    else {
        panic!()
    };
    assert_eq!(read.kvs[0].value, Bytes::from("yes"));

    // A VALUE compare on a missing key fails; a CREATE compare treats it as 0.
    let WriteOutcome::Txn(r) = f.write(txn(vec![cmp(
        "missing",
        T::Value,
        R::NotEqual,
        U::Value("z".into()),
    )])) else {
        panic!()
    };
    assert!(!r.succeeded);
    assert_eq!(f.get("x").unwrap().value, Bytes::from("no"));
    let WriteOutcome::Txn(r) = f.write(txn(vec![cmp(
        "missing",
        T::Create,
        R::Equal,
        U::CreateRevision(0),
    )])) else {
        panic!()
    };
    assert!(r.succeeded);

    // A compare over a range holds only if it holds for every key in it.
    let mut over_range = cmp("x", T::Value, R::Equal, U::Value("yes".into()));
    over_range.range_end = "z".into();
    let WriteOutcome::Txn(r) = f.write(txn(vec![over_range.clone()])) else {
        panic!()
    };
    assert!(r.succeeded);
    f.put("y", "other");
    let WriteOutcome::Txn(r) = f.write(txn(vec![over_range])) else {
        panic!()
    };
    assert!(!r.succeeded);
}

/// A sort target without a sort order sorts ascending, but etcd applies the limit
/// first (it reads `limit + 1` keys in key order, then sorts them): found by the
/// differential test against etcd.
#[test]
fn a_sort_target_without_an_order_sorts_the_first_page_only() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("a", "2");
    f.put("a", "3");
    f.put("b", "1");
    f.put("b", "2");
    f.put("c", "1");
    f.put("d", "1");
    f.put("d", "2");
    f.put("d", "3");
    f.put("d", "4");
    let response = f
        .range(RangeRequest {
            limit: 2,
            sort_target: range_request::SortTarget::Version as i32,
            ..all_from("a")
        })
        .unwrap();
    // The first three keys (a: 3, b: 2, c: 1) sorted by version, then cut to two; d,
    // with the highest version, is not among them.
    assert_eq!(keys(&response), vec!["c", "b"]);
    assert!(response.more);
    assert_eq!(response.count, 4);
}

/// etcd decides every branch of a Txn, nested ones included, from the state before the
/// Txn writes (`compareToPath`): a nested compare does not see the outer Txn's writes
/// (found by the differential test against etcd).
#[test]
fn nested_compares_see_the_state_before_the_txn() {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let mut f = Fixture::new();
    let nested = RequestOp {
        request: Some(request_op::Request::RequestTxn(TxnRequest {
            compare: vec![cmp("n", T::Value, R::Equal, U::Value("new".into()))],
            success: vec![put_op("hit", "1")],
            failure: vec![put_op("miss", "1")],
        })),
    };
    let WriteOutcome::Txn(response) = f.write(Request::Txn(TxnRequest {
        success: vec![put_op("n", "new"), nested],
        ..Default::default()
    })) else {
        panic!()
    };
    assert!(response.succeeded);
    assert!(f.get("miss").is_some() && f.get("hit").is_none());
}

/// etcd's duplicate check takes a range end of "\0" literally, so it lets one Txn put a
/// key and delete it with such a range (or the reverse); etcd applies them in order, and
/// so must the store, at one revision (found by the differential test against etcd).
#[test]
fn a_txn_may_put_and_delete_a_key_through_a_range_ending_in_zero() {
    let delete_from = |key: &str| RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: Bytes::from(key.to_string()),
                range_end: Bytes::from_static(b"\0"),
                prev_kv: true,
            },
        )),
    };
    let mut f = Fixture::new();
    f.put("a", "1");
    let put_then_delete = Request::Txn(TxnRequest {
        success: vec![put_op("z", "new"), delete_from("a")],
        ..Default::default()
    });
    let WriteOutcome::Txn(response) = f.write(put_then_delete) else {
        panic!()
    };
    assert_eq!(response.header.unwrap().revision, 3);
    let Some(ostrakon_proto::etcdserverpb::response_op::Response::ResponseDeleteRange(deleted)) =
        &response.responses[1].response
    else {
        panic!()
    };
    assert_eq!(
        deleted.deleted, 2,
        "the key put a moment before is deleted too"
    );
    assert!(f.get("z").is_none() && f.get("a").is_none());

    let delete_then_put = Request::Txn(TxnRequest {
        success: vec![delete_from("a"), put_op("z", "again")],
        ..Default::default()
    });
    f.put("y", "1");
    let WriteOutcome::Txn(response) = f.write(delete_then_put) else {
        panic!()
    };
    assert_eq!(response.header.unwrap().revision, 5);
    let z = f.get("z").unwrap();
    assert_eq!(
        (z.value, z.version, z.create_revision),
        (Bytes::from("again"), 1, 5)
    );
    assert!(f.get("y").is_none());
}

#[test]
fn compaction_refuses_old_reads_and_removes_old_versions() {
    let mut f = Fixture::new();
    f.put("a", "1"); // 2
    f.put("a", "2"); // 3
    f.put("b", "1"); // 4
    f.delete("b", ""); // 5
    f.put("a", "3"); // 6
    let compact = |f: &mut Fixture, revision| {
        f.write(Request::Compaction(CompactionRequest {
            revision,
            physical: true,
        }))
    };
    assert!(
        matches!(compact(&mut f, 7), WriteOutcome::Error(ref e) if e.message.contains("future revision"))
    );
    assert!(matches!(compact(&mut f, 5), WriteOutcome::Compaction(_)));
    assert!(
        matches!(compact(&mut f, 5), WriteOutcome::Error(ref e) if e.message.contains("compacted"))
    );
    assert_eq!(
        f.range(RangeRequest {
            key: "a".into(),
            revision: 4,
            ..Default::default()
        })
        .err(),
        Some(MvccError::Compacted {
            compacted: Revision(5)
        })
    );
    // At the compacted revision itself everything is still readable.
    let at5 = f
        .range(RangeRequest {
            key: "a".into(),
            revision: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(at5.kvs[0].value, Bytes::from("2"));
    let stored = |f: &Fixture| -> Vec<_> {
        f.store
            .freeze()
            .items()
            .map(|(k, _)| super::keys::split_versioned_key(&k))
            .collect()
    };
    // Applying the compaction only raised the compacted revision: it did not scan the
    // store (that ran on the event loop and stalled every group). The garbage is still
    // on disk, invisible, and the hash is already what it will be without it.
    assert_eq!(stored(&f).len(), 5);
    assert_eq!(f.store.compacted_physically(), Revision(-1));
    let hash_before = f.store.read_view().hash_kv(Revision(6));
    // The compactor's pass: a@3 (newest at or below 5) and a@6 stay; a@2 and all of b
    // are gone.
    assert!(f.store.compact_physically());
    assert!(!f.store.compact_physically(), "nothing left to do");
    assert_eq!(f.store.compacted_physically(), Revision(5));
    assert_eq!(
        stored(&f),
        vec![(b"a".to_vec(), Revision(3)), (b"a".to_vec(), Revision(6))]
    );
    assert_eq!(f.store.read_view().hash_kv(Revision(6)), hash_before);
    assert!(f
        .store
        .wait_compacted_physically(Revision(5), std::time::Duration::ZERO));
}

/// One compactor thread serves every store attached to it, with no polling: a store with
/// a compaction pending when attached is served, and so is one compacted afterwards.
#[test]
fn one_compactor_serves_every_store_attached_to_it() {
    let compactor = Compactor::start().unwrap();
    let mut fixtures: Vec<Fixture> = (0..3).map(|_| Fixture::new()).collect();
    for f in &mut fixtures {
        for i in 0..20 {
            f.put(&format!("k{}", i % 4), "v");
        }
    }
    let compact = |f: &mut Fixture, revision: i64| {
        f.write(Request::Compaction(CompactionRequest {
            revision,
            physical: false,
        }));
    };
    compact(&mut fixtures[0], 10);
    for f in &fixtures {
        compactor.attach(&f.store);
    }
    let wait = std::time::Duration::from_secs(10);
    assert!(fixtures[0]
        .store
        .wait_compacted_physically(Revision(10), wait));
    for f in &mut fixtures[1..] {
        compact(f, 15);
    }
    compact(&mut fixtures[0], 18);
    for f in &fixtures {
        let target = f.store.compact_revision();
        assert!(f.store.wait_compacted_physically(target, wait));
        assert_eq!(f.store.compacted_physically(), target);
        // 4 keys, each with its newest version at or below the target kept.
        assert_eq!(
            f.store.freeze().items().count(),
            4 + (21 - target.0 as usize)
        );
    }
}

/// The physical compaction resumes after a restart that came before it finished, and
/// goes over an installed snapshot again (it may carry its sender's garbage).
#[test]
fn physical_compaction_resumes_after_a_restart_and_after_an_install() {
    let mut f = Fixture::new();
    for i in 0..2500 {
        f.put(&format!("k{}", i % 10), "v");
    }
    f.write(Request::Compaction(CompactionRequest {
        revision: 2000,
        physical: false,
    }));
    let hash = f.store.read_view().hash_kv(Revision(2501));
    // A restart before the compactor ran.
    f.store.persist();
    let store = MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(store.compact_revision(), Revision(2000));
    assert_eq!(store.compacted_physically(), Revision(-1));
    assert_eq!(store.read_view().hash_kv(Revision(2501)), hash);
    assert!(store.compact_physically());
    assert_eq!(store.compacted_physically(), Revision(2000));
    assert_eq!(store.freeze().items().count(), 10 + 501);
    assert_eq!(store.read_view().hash_kv(Revision(2501)), hash);

    // A snapshot of an uncompacted store installed here is compacted again.
    let mut g = Fixture::new();
    for i in 0..2500 {
        g.put(&format!("k{}", i % 10), "v");
    }
    g.write(Request::Compaction(CompactionRequest {
        revision: 2000,
        physical: false,
    }));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.snap");
    crate::snapshot::create(&g.store, &path).unwrap();
    crate::snapshot::install(&store, &path).unwrap();
    assert_eq!(store.compacted_physically(), Revision(-1));
    assert!(store.compact_physically());
    assert_eq!(store.freeze().items().count(), 10 + 501);
    assert_eq!(
        store.read_view().hash_kv(Revision(2501)),
        g.store.read_view().hash_kv(Revision(2501))
    );
}

#[test]
fn applied_index_and_data_survive_reopen_together() {
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("b", "2");
    f.store.persist();
    let index = f.index;
    drop(f.store);
    let store = MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(store.applied().index, LogIndex(index));
    assert_eq!(store.current_revision(), Revision(3));
}

#[test]
fn a_snapshot_installs_the_same_state_elsewhere() {
    let mut source = Fixture::new();
    source.put("a", "1");
    source.put("b", "2");
    source.delete("a", "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    let info = crate::snapshot::create(&source.store, &path).unwrap();
    assert_eq!(info.revision, Revision(4));

    let mut target = Fixture::new();
    target.put("stale", "x");
    let installed = crate::snapshot::install(&target.store, &path).unwrap();
    assert_eq!(
        installed,
        crate::snapshot::SnapshotInfo {
            file_bytes: installed.file_bytes,
            ..info
        }
    );
    assert!(target.get("stale").is_none());
    assert!(target.get("a").is_none());
    assert_eq!(target.get("b").unwrap().mod_revision, 3);
    assert_eq!(target.store.current_revision(), Revision(4));
    assert_eq!(target.store.applied_index(), source.store.applied_index());

    // Damaged files are refused by the reader and by the streaming check alike, and an
    // install of one changes nothing: a flipped bit anywhere, a cut tail, trailing bytes.
    let good = std::fs::read(&path).unwrap();
    assert!(crate::snapshot::check(&path).is_ok());
    let mut damaged_files = Vec::new();
    for at in [9, good.len() / 2, good.len() - 30, good.len() - 1] {
        let mut data = good.clone();
        data[at] ^= 1;
        damaged_files.push(data);
    }
    damaged_files.push(good[..good.len() - 7].to_vec());
    damaged_files.push(good[..20].to_vec());
    damaged_files.push([good.as_slice(), b"xx"].concat());
    for data in damaged_files {
        std::fs::write(&path, &data).unwrap();
        assert!(
            crate::snapshot::read(&path).is_err(),
            "read: {}",
            data.len()
        );
        assert!(
            crate::snapshot::check(&path).is_err(),
            "check: {}",
            data.len()
        );
        assert!(crate::snapshot::install(&target.store, &path).is_err());
        assert_eq!(target.store.current_revision(), Revision(4));
    }
}

/// A deterministic pseudo-random sequence (xorshift), so a failure replays.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Key to (value, create revision, mod revision, version).
type Model = std::collections::BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>;
/// (key, value, create revision, mod revision, version) in key order.
type Listing = Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>;

fn model_range(model: &Model) -> Listing {
    model
        .iter()
        .map(|(k, (v, c, m, ver))| (k.clone(), v.clone(), *c, *m, *ver))
        .collect()
}

fn store_range(store: &MvccStore, at: i64) -> Listing {
    let request = RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        revision: at,
        ..Default::default()
    };
    range(&store.read_view(), &request)
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key.to_vec(),
                kv.value.to_vec(),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

/// Reads at the current revision come from the latest-version index and reads at past
/// revisions from the versions themselves: both must agree with a model of etcd, through
/// puts, deletes, compactions, a reopen and a snapshot install.
#[test]
fn latest_version_index_agrees_with_the_versions_and_a_model() {
    for seed in 1..=12u64 {
        let mut rng = Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut f = Fixture::new();
        let mut model = Model::new();
        let mut history: Vec<(i64, Model)> = vec![(1, Model::new())];
        let keys: [&[u8]; 6] = [b"\0", b"a", b"a\0", b"ab", b"b", b"c\0\0"];
        for _ in 0..120 {
            let revision_before = f.store.current_revision().0;
            let key = keys[rng.below(keys.len() as u64) as usize];
            match rng.below(10) {
                0..=5 => {
                    let value = format!("v{}", rng.below(1000)).into_bytes();
                    f.write(Request::Put(PutRequest {
                        key: Bytes::copy_from_slice(key),
                        value: Bytes::from(value.clone()),
                        ..Default::default()
                    }));
                    let revision = revision_before + 1;
                    let entry = model
                        .entry(key.to_vec())
                        .or_insert((vec![], revision, 0, 0));
                    *entry = (value, entry.1, revision, entry.3 + 1);
                }
                6..=7 => {
                    let end = keys[rng.below(keys.len() as u64) as usize];
                    f.write(Request::DeleteRange(DeleteRangeRequest {
                        key: Bytes::copy_from_slice(key),
                        range_end: Bytes::copy_from_slice(end),
                        prev_kv: false,
                    }));
                    // A range end of "\0" means every key from `key` on.
                    let unbounded = end == b"\0";
                    model
                        .retain(|k, _| !(k.as_slice() >= key && (unbounded || k.as_slice() < end)));
                }
                8 => {
                    f.write(Request::DeleteRange(DeleteRangeRequest {
                        key: Bytes::copy_from_slice(key),
                        ..Default::default()
                    }));
                    model.remove(key);
                }
                _ => {
                    let compact_to = (revision_before + f.store.compact_revision().0.max(1)) / 2;
                    if compact_to > f.store.compact_revision().0 {
                        f.write(Request::Compaction(CompactionRequest {
                            revision: compact_to,
                            physical: true,
                        }));
                        history.retain(|(r, _)| *r >= compact_to);
                    }
                }
            }
            let current = f.store.current_revision().0;
            if history.last().unwrap().0 != current {
                history.push((current, model.clone()));
            }
            assert_eq!(store_range(&f.store, 0), model_range(&model), "seed {seed}");
            for (revision, past) in &history {
                if *revision >= f.store.compact_revision().0 {
                    assert_eq!(
                        store_range(&f.store, *revision),
                        model_range(past),
                        "seed {seed} at revision {revision}"
                    );
                }
            }
            for key in keys {
                let got = f.store.read_view().get(key, f.store.current_revision());
                assert_eq!(
                    got.map(|kv| kv.value.to_vec()),
                    model.get(key).map(|e| e.0.clone())
                );
            }
        }
        f.store.persist();
        drop(std::mem::replace(
            &mut f.store,
            std::sync::Arc::new(MvccStore::open(&f.keyspace, GroupId(2), KeySpan::none())),
        ));
        let reopened = MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole());
        assert_eq!(
            store_range(&reopened, 0),
            model_range(&model),
            "seed {seed} reopened"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        crate::snapshot::create(&reopened, &path).unwrap();
        let target = Fixture::new();
        crate::snapshot::install(&target.store, &path).unwrap();
        assert_eq!(
            store_range(&target.store, 0),
            model_range(&model),
            "seed {seed} installed"
        );
    }
}

/// Collects what the store publishes.
#[derive(Default)]
struct Collector(std::sync::Mutex<Vec<RevisionEvents>>);

impl EventSink for Collector {
    fn wants_events(&self) -> bool {
        true
    }
    fn publish(&self, events: RevisionEvents) {
        self.0.lock().unwrap().push(events);
    }
}

/// The events published as revisions commit and the events read back from storage are
/// the same sequence, whole or read in chunks, for any range; a compacted start is refused.
#[test]
fn history_read_back_equals_the_events_published_live() {
    let mut f = Fixture::new();
    let collector = std::sync::Arc::new(Collector::default());
    f.store.set_event_sink(collector.clone());
    let mut rng = Xorshift(7);
    let keys: [&[u8]; 5] = [b"a", b"a\0", b"ab", b"b", b"c"];
    for _ in 0..200 {
        let key = keys[rng.below(keys.len() as u64) as usize];
        if rng.below(4) == 0 {
            f.write(Request::DeleteRange(DeleteRangeRequest {
                key: Bytes::copy_from_slice(key),
                range_end: Bytes::from_static(b"b"),
                prev_kv: false,
            }));
        } else {
            f.write(Request::Put(PutRequest {
                key: Bytes::copy_from_slice(key),
                value: Bytes::from(format!("{}", rng.below(100))),
                ..Default::default()
            }));
        }
    }
    let live = collector.0.lock().unwrap().clone();
    assert!(live.len() > 150, "most writes changed something");
    let in_range = |events: &[RevisionEvents], key: &[u8], end: &[u8]| -> Vec<RevisionEvents> {
        events
            .iter()
            .filter_map(|r| {
                let kept: Vec<_> = r
                    .events
                    .iter()
                    .filter(|e| {
                        let k = &e.kv.as_ref().unwrap().key[..];
                        if end.is_empty() {
                            k == key
                        } else {
                            k >= key && (end == [0] || k < end)
                        }
                    })
                    .cloned()
                    .collect();
                (!kept.is_empty()).then(|| RevisionEvents {
                    revision: r.revision,
                    previous: Revision(0),
                    events: kept,
                })
            })
            .collect()
    };
    let view = f.store.read_view();
    for (key, end) in [
        (&b"a"[..], &b"\0"[..]),
        (b"a", b""),
        (b"a\0", b"b"),
        (b"b", b"c"),
    ] {
        let expected = in_range(&live, key, end);
        let whole = view.history(key, end, Revision(2), usize::MAX).unwrap();
        assert_eq!(whole.covered, view.current_revision());
        assert_eq!(whole.revisions, expected, "range {key:?}..{end:?}");
        let mut chunked = Vec::new();
        let mut from = Revision(2);
        while from <= view.current_revision() {
            let part = view.history(key, end, from, 3).unwrap();
            chunked.extend(part.revisions);
            from = Revision(part.covered.0 + 1);
        }
        assert_eq!(chunked, expected, "chunked {key:?}..{end:?}");
        let late = view.history(key, end, Revision(150), usize::MAX).unwrap();
        let expected_late: Vec<_> = expected
            .into_iter()
            .filter(|r| r.revision.0 >= 150)
            .collect();
        assert_eq!(late.revisions, expected_late);
    }
    f.write(Request::Compaction(CompactionRequest {
        revision: 100,
        physical: true,
    }));
    let view = f.store.read_view();
    assert_eq!(
        view.history(b"a", b"\0", Revision(99), 10).unwrap_err(),
        MvccError::Compacted {
            compacted: Revision(100)
        }
    );
    assert!(view.history(b"a", b"\0", Revision(100), 10).is_ok());
}

/// Stores with the same writes hash alike; a past revision's hash does not change with
/// later writes; different data hashes differently.
#[test]
fn hash_kv_agrees_across_stores_and_is_stable_for_past_revisions() {
    let mut a = Fixture::new();
    let mut b = Fixture::new();
    for f in [&mut a, &mut b] {
        f.put("x", "1");
        f.put("y", "2");
        f.delete("x", "");
    }
    let at = a.store.current_revision();
    let hash = a.store.read_view().hash_kv(at);
    assert_eq!(hash, b.store.read_view().hash_kv(at));
    a.put("z", "3");
    assert_eq!(
        a.store.read_view().hash_kv(at),
        hash,
        "a past revision's hash is stable"
    );
    b.put("z", "4");
    let now = a.store.current_revision();
    assert_ne!(
        a.store.read_view().hash_kv(now),
        b.store.read_view().hash_kv(now)
    );
}

fn lease_grant(f: &mut Fixture, id: i64, ttl: i64) -> WriteOutcome {
    f.write(Request::LeaseGrant(
        ostrakon_proto::etcdserverpb::LeaseGrantRequest { ttl, id },
    ))
}

fn put_with_lease(f: &mut Fixture, key: &str, lease: i64) -> WriteOutcome {
    f.write(Request::Put(PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from_static(b"v"),
        lease,
        ..Default::default()
    }))
}

/// Leases as etcd has them: granted once, keys attached by Put, a revoke deletes exactly
/// its keys in one revision; unknown leases are refused; leases survive a reopen and
/// travel in snapshots.
#[test]
fn leases_attach_keys_and_a_revoke_deletes_them_in_one_revision() {
    let mut f = Fixture::new();
    let collector = std::sync::Arc::new(Collector::default());
    f.store.set_event_sink(collector.clone());
    assert!(
        matches!(lease_grant(&mut f, 7, 30), WriteOutcome::LeaseGrant(r) if r.id == 7 && r.ttl == 30)
    );
    match lease_grant(&mut f, 7, 30) {
        WriteOutcome::Error(e) => assert_eq!(
            (e.code, e.message.as_str()),
            (9, "etcdserver: lease already exists")
        ),
        other => panic!("{other:?}"),
    }
    match put_with_lease(&mut f, "nope", 8) {
        WriteOutcome::Error(e) => assert_eq!(e.message, "etcdserver: requested lease not found"),
        other => panic!("{other:?}"),
    }
    lease_grant(&mut f, 9, 60);
    put_with_lease(&mut f, "a", 7);
    put_with_lease(&mut f, "b", 7);
    put_with_lease(&mut f, "c", 9);
    put_with_lease(&mut f, "b", 9); // moves b to lease 9
    f.put("d", "plain");
    let view = f.store.read_view();
    assert_eq!(view.lease_keys(7), vec![Bytes::from_static(b"a")]);
    assert_eq!(
        view.lease_keys(9),
        vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]
    );

    let before = f.store.current_revision();
    assert!(matches!(
        f.write(Request::LeaseRevoke(
            ostrakon_proto::etcdserverpb::LeaseRevokeRequest { id: 9 }
        )),
        WriteOutcome::LeaseRevoke(_)
    ));
    assert_eq!(
        f.store.current_revision(),
        Revision(before.0 + 1),
        "one revision"
    );
    assert!(f.get("b").is_none() && f.get("c").is_none());
    assert!(f.get("a").is_some() && f.get("d").is_some());
    assert!(f.store.lease(9).is_none());
    let last = collector.0.lock().unwrap().last().unwrap().clone();
    assert_eq!(last.events.len(), 2, "one delete event per attached key");
    match f.write(Request::LeaseRevoke(
        ostrakon_proto::etcdserverpb::LeaseRevokeRequest { id: 9 },
    )) {
        WriteOutcome::Error(e) => assert_eq!(e.code, 5),
        other => panic!("{other:?}"),
    }

    // A checkpoint, then a reopen and a snapshot carry the lease and its keys.
    f.write(Request::LeaseCheckpoint(
        ostrakon_proto::etcdserverpb::LeaseCheckpointRequest {
            checkpoints: vec![ostrakon_proto::etcdserverpb::LeaseCheckpoint {
                id: 7,
                remaining_ttl: 12,
            }],
        },
    ));
    let expected = LeaseRecord {
        ttl_secs: 30,
        remaining_secs: 12,
    };
    assert_eq!(f.store.lease(7), Some(expected));
    // A checkpoint read in term 2 and proposed in an entry of term 1 (its member
    // deposed, then elected again) records nothing: it would undo a renewal made
    // meanwhile. The entry is applied all the same.
    f.index += 1;
    let stale = WriteRequest {
        origin: 1,
        id: f.index,
        request: Some(Request::LeaseCheckpoint(
            ostrakon_proto::etcdserverpb::LeaseCheckpointRequest {
                checkpoints: vec![ostrakon_proto::etcdserverpb::LeaseCheckpoint {
                    id: 7,
                    remaining_ttl: 3,
                }],
            },
        )),
        only_in_term: 2,
        ..Default::default()
    };
    match apply_write(&f.store, LogIndex(f.index), Term(1), &stale) {
        WriteOutcome::Error(e) => assert_eq!(e.code, 14, "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.store.lease(7), Some(expected));
    assert_eq!(f.store.applied_index(), LogIndex(f.index));
    f.store.persist();
    drop(std::mem::replace(
        &mut f.store,
        std::sync::Arc::new(MvccStore::open(&f.keyspace, GroupId(2), KeySpan::none())),
    ));
    let reopened = MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(reopened.leases(), vec![(7, expected)]);
    assert_eq!(
        reopened.read_view().lease_keys(7),
        vec![Bytes::from_static(b"a")]
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    crate::snapshot::create(&reopened, &path).unwrap();
    let mut target = Fixture::new();
    lease_grant(&mut target, 99, 5);
    crate::snapshot::install(&target.store, &path).unwrap();
    assert_eq!(target.store.leases(), vec![(7, expected)]);
    assert_eq!(
        target.store.read_view().lease_keys(7),
        vec![Bytes::from_static(b"a")]
    );
}

fn member_urls(id: u64, url: &str) -> Request {
    Request::MemberPeerUrls(ostrakon_proto::peer::MemberPeerUrls {
        id,
        peer_urls: vec![url.to_string()],
    })
}

#[test]
fn member_registry_is_replicated_state_reopened_and_carried_by_snapshots() {
    use ostrakon_raft::{ConfState, NodeId};
    let mut f = Fixture::new();
    f.store.apply_conf_state(
        LogIndex(1),
        Term(1),
        ConfState::with_voters([NodeId(1), NodeId(2)]),
    );
    let version = f.store.members_version();
    f.write(member_urls(1, "http://a:1"));
    f.write(member_urls(2, "http://b:1"));
    f.write(Request::MemberAttributes(
        ostrakon_proto::peer::MemberAttributes {
            id: 2,
            name: "b".into(),
            client_urls: vec!["http://b:2".into()],
        },
    ));
    assert!(f.store.members_version() > version);
    // A member registered before its raft change keeps its record when another member
    // leaves the configuration.
    f.write(member_urls(3, "http://c:1"));
    f.index += 1;
    f.store.apply_conf_state(
        LogIndex(f.index),
        Term(1),
        ConfState::with_voters([NodeId(2)]),
    );
    let ids: Vec<u64> = f.store.members().iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![2, 3], "member 1 left the configuration");
    let b = f.store.members()[0].clone();
    assert_eq!((b.name.as_str(), b.client_urls.len()), ("b", 1));

    f.store.persist();
    drop(std::mem::replace(
        &mut f.store,
        std::sync::Arc::new(MvccStore::open(&f.keyspace, GroupId(2), KeySpan::none())),
    ));
    let reopened = MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(
        reopened.members(),
        vec![b.clone(), reopened.members()[1].clone()]
    );
    assert_eq!(reopened.members().len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    crate::snapshot::create(&reopened, &path).unwrap();
    let mut target = Fixture::new();
    target.write(member_urls(9, "http://stale:1"));
    crate::snapshot::install(&target.store, &path).unwrap();
    assert_eq!(target.store.members(), reopened.members());
}

fn alarm(
    f: &mut Fixture,
    action: ostrakon_proto::etcdserverpb::alarm_request::AlarmAction,
) -> WriteOutcome {
    f.write(Request::Alarm(ostrakon_proto::etcdserverpb::AlarmRequest {
        action: action as i32,
        member_id: 42,
        alarm: ostrakon_proto::etcdserverpb::AlarmType::Nospace as i32,
    }))
}

#[test]
fn a_nospace_alarm_lets_only_reads_deletes_and_compaction_apply_until_cleared() {
    use ostrakon_proto::etcdserverpb::alarm_request::AlarmAction;
    use ostrakon_proto::etcdserverpb::AlarmType;
    let mut f = Fixture::new();
    f.put("a", "1");
    match alarm(&mut f, AlarmAction::Activate) {
        WriteOutcome::Alarm(response) => assert_eq!(response.alarms.len(), 1),
        other => panic!("{other:?}"),
    }
    assert!(f.store.has_alarm(AlarmType::Nospace));
    let refused = f.write(Request::Put(PutRequest {
        key: Bytes::from_static(b"b"),
        value: Bytes::from_static(b"2"),
        ..Default::default()
    }));
    assert!(
        matches!(&refused, WriteOutcome::Error(e) if e.code == 8 && e.message == "etcdserver: mvcc: database space exceeded"),
        "{refused:?}"
    );
    let txn_put = f.write(Request::Txn(TxnRequest {
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from_static(b"c"),
                ..Default::default()
            })),
        }],
        ..Default::default()
    }));
    assert!(matches!(txn_put, WriteOutcome::Error(_)), "{txn_put:?}");
    assert_eq!(f.delete("a", ""), 1, "deletes still apply");

    // The alarm survives a reopen and travels in snapshots.
    f.store.persist();
    let reopened = MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(reopened.alarms(), f.store.alarms());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    crate::snapshot::create(&f.store, &path).unwrap();
    let target = Fixture::new();
    crate::snapshot::install(&target.store, &path).unwrap();
    assert!(target.store.has_alarm(AlarmType::Nospace));
    drop(reopened);

    alarm(&mut f, AlarmAction::Deactivate);
    assert!(f.store.alarms().is_empty());
    f.put("b", "2");
    let status = crate::backup::status(&path).unwrap();
    assert_eq!(
        (status.total_keys, status.total_versions),
        (0, 2),
        "{status:?}"
    );
}

/// A read-only Txn served from a view (`read_txn`) answers exactly what applying it as a
/// write answers, over both branches, nested Txns, every compare target, sorted and
/// past reads, and it is refused the same way below the compacted revision.
#[test]
fn a_read_only_txn_served_from_a_view_answers_as_its_apply_would() {
    use compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("b", "2");
    f.put("a", "3");
    f.put("c", "4");
    let get = |key: &str, end: &str, revision: i64| RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: Bytes::from(key.to_string()),
            range_end: Bytes::from(end.to_string()),
            revision,
            sort_order: range_request::SortOrder::Descend as i32,
            sort_target: range_request::SortTarget::Value as i32,
            ..Default::default()
        })),
    };
    let txn = |compare: Vec<Compare>| TxnRequest {
        compare,
        success: vec![
            get("a", "z", 0),
            get("a", "", 2),
            RequestOp {
                request: Some(request_op::Request::RequestTxn(TxnRequest {
                    compare: vec![cmp("b", T::Value, R::Equal, U::Value("2".into()))],
                    success: vec![get("b", "", 0)],
                    failure: vec![],
                })),
            },
        ],
        failure: vec![get("c", "", 0)],
    };
    let cases = [
        txn(vec![cmp("a", T::Version, R::Equal, U::Version(2))]),
        txn(vec![cmp("a", T::Mod, R::Greater, U::ModRevision(4))]),
        txn(vec![cmp("a", T::Create, R::Equal, U::CreateRevision(2))]),
        txn(vec![cmp(
            "missing",
            T::Value,
            R::Equal,
            U::Value("x".into()),
        )]),
        txn(vec![cmp("missing", T::Version, R::Equal, U::Version(0))]),
        txn(vec![cmp("a", T::Lease, R::NotEqual, U::Lease(0))]),
    ];
    for request in cases {
        assert!(txn_is_read_only(&request));
        let read = read_txn(&f.store.read_view(), &request).unwrap();
        let WriteOutcome::Txn(applied) = f.write(Request::Txn(request.clone())) else {
            panic!("a read-only Txn applies")
        };
        assert_eq!(read, applied, "{request:?}");
    }
    assert!(!txn_is_read_only(&TxnRequest {
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                success: vec![put_op("x", "y")],
                ..Default::default()
            })),
        }],
        ..Default::default()
    }));

    f.write(Request::Compaction(CompactionRequest {
        revision: 4,
        physical: false,
    }));
    let old = TxnRequest {
        success: vec![get("a", "", 2)],
        ..Default::default()
    };
    let refused = read_txn(&f.store.read_view(), &old).unwrap_err();
    let WriteOutcome::Error(applied) = f.write(Request::Txn(old)) else {
        panic!("a read below the compaction is refused")
    };
    assert_eq!(etcd_status(&refused), (applied.code, applied.message));
}

/// As etcd: a fresh store has never been compacted (-1), so Compact at revision 0
/// succeeds once, then is refused as already compacted; reads are unaffected.
#[test]
fn a_fresh_store_compacts_at_revision_zero_once_as_etcd_does() {
    let mut f = Fixture::new();
    assert_eq!(f.store.compact_revision(), store::NEVER_COMPACTED);
    assert_eq!(f.store.read_view().compact_revision(), Revision(-1));
    let compact = |f: &mut Fixture, revision| {
        f.write(Request::Compaction(CompactionRequest {
            revision,
            physical: false,
        }))
    };
    assert!(matches!(compact(&mut f, 0), WriteOutcome::Compaction(_)));
    assert_eq!(f.store.compact_revision(), Revision(0));
    assert!(
        matches!(compact(&mut f, 0), WriteOutcome::Error(ref e) if e.message == "etcdserver: mvcc: required revision has been compacted")
    );
    assert!(matches!(compact(&mut f, 1), WriteOutcome::Compaction(_)));
    f.put("a", "1");
    assert_eq!(f.store.current_revision(), Revision(2));
    // The never-compacted state survives a reopen, and a snapshot carries it.
    let g = Fixture::new();
    g.store.persist();
    let reopened = MvccStore::open(&g.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(reopened.compact_revision(), Revision(-1));
    assert!(!reopened.compact_physically());
}

/// A snapshot file that changes between its check and the read of its items is caught
/// at the end of the items, before the install's batch could commit.
#[test]
#[should_panic(expected = "changed after it was checked")]
fn a_snapshot_changed_after_its_check_is_refused_at_its_end() {
    let mut source = Fixture::new();
    source.put("a", "1");
    source.put("b", "2");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.snap");
    crate::snapshot::create(&source.store, &path).unwrap();
    let checked = crate::snapshot::check(&path).unwrap();
    let mut data = std::fs::read(&path).unwrap();
    // The last item is b's version, its value "2" right before the end marker.
    let value_byte = data
        .windows(5)
        .position(|w| w == [b'2', 0xFF, 0xFF, 0xFF, 0xFF])
        .expect("the last value is in the file before the end marker");
    data[value_byte] = b'3';
    std::fs::write(&path, data).unwrap();
    let _items: Vec<_> = checked.items().collect();
}

#[test]
fn the_oracle_bound_never_falls_survives_a_restart_and_travels_in_snapshots() {
    let mut meta = Fixture::new();
    assert_eq!(meta.store.oracle_bound(), 0);
    let raise = |bound| Request::OracleBound(ostrakon_proto::peer::OracleBound { bound });
    let bound_of = |outcome| match outcome {
        WriteOutcome::OracleBound(applied) => applied.bound,
        other => panic!("{other:?}"),
    };
    assert_eq!(bound_of(meta.write(raise(500))), 500);
    // A proposal overtaken by a higher one leaves the higher.
    assert_eq!(bound_of(meta.write(raise(300))), 500);
    assert_eq!(meta.store.applied_index(), LogIndex(meta.index));
    // It is data of the state machine, not a revision of the keyspace.
    assert_eq!(meta.store.current_revision(), Revision(1));
    meta.store.persist();
    let reopened = MvccStore::open(&meta.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(reopened.oracle_bound(), 500);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    crate::snapshot::create(&reopened, &path).unwrap();
    let target = Fixture::new();
    crate::snapshot::install(&target.store, &path).unwrap();
    assert_eq!(target.store.oracle_bound(), 500);
    let reopened_target = MvccStore::open(&target.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(reopened_target.oracle_bound(), 500);
}

#[test]
fn a_store_with_three_applied_records_opens_at_its_position_and_keeps_one() {
    // As written by versions before `applied_at`: applied index, term and revision each
    // in a record of their own.
    let mut f = Fixture::new();
    f.put("a", "1");
    f.put("b", "2");
    let index = f.index;
    drop(f.store);
    let local = local::LocalState::open(&f.keyspace, GroupId(1));
    let mut batch = f.keyspace.batch();
    local.remove(&mut batch, store::META_APPLIED_AT);
    local.insert(&mut batch, store::LEGACY_APPLIED_INDEX, index.to_be_bytes());
    local.insert(&mut batch, store::LEGACY_APPLIED_TERM, 1u64.to_be_bytes());
    local.insert(&mut batch, store::LEGACY_REVISION, 3u64.to_be_bytes());
    batch.commit().unwrap();
    let store = std::sync::Arc::new(MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole()));
    assert_eq!(store.applied().index, LogIndex(index));
    assert_eq!(store.applied().term, Term(1));
    assert_eq!(store.current_revision(), Revision(3));
    assert!(local.get(store::LEGACY_APPLIED_INDEX).is_none());
    assert!(local.get(store::LEGACY_REVISION).is_none());
    // Writes go on from there, and the one record follows them.
    f.store = store;
    f.put("c", "3");
    drop(f.store);
    let store = MvccStore::open(&f.keyspace, GroupId(1), KeySpan::whole());
    assert_eq!(store.applied().index, LogIndex(index + 1));
    assert_eq!(store.current_revision(), Revision(4));
}
