//! Ranges sharing one data partition: each store reads, compacts, snapshots and installs
//! within its span only, and keeps its own local state.

use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{CompactionRequest, LeaseGrantRequest, PutRequest};
use ostrakon_proto::peer::{write_request::Request, WriteRequest};
use ostrakon_raft::{GroupId, LogIndex, Term};

use super::*;

/// One range's store and the index of its next entry.
struct Range {
    store: MvccStore,
    index: u64,
}

impl Range {
    fn open(keyspace: &fjall::Keyspace, group: u64, span: KeySpan) -> Range {
        let store = MvccStore::open(keyspace, GroupId(group), span);
        let index = store.applied_index().0;
        Range { store, index }
    }

    fn write(&mut self, request: Request) -> WriteOutcome {
        self.index += 1;
        let write = WriteRequest {
            origin: 1,
            id: self.index,
            request: Some(request),
            ..Default::default()
        };
        apply_write(&self.store, LogIndex(self.index), Term(1), &write)
    }

    fn put(&mut self, key: &str, value: &str, lease: i64) -> Revision {
        match self.write(Request::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            lease,
            ..Default::default()
        })) {
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
