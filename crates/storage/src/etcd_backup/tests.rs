use bytes::Bytes;
use ostrakon_proto::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest};
use ostrakon_proto::peer::{write_request::Request, WriteRequest};
use ostrakon_raft::{GroupId, LogIndex, Term};

use super::*;
use crate::mvcc::{apply_write, MvccStore};

/// A real etcd 3.5.1 backup (see tests/fixtures/README.md).
const ETCD_BACKUP: &[u8] = include_bytes!("../../tests/fixtures/etcd-3.5.1-backup.db");

#[test]
fn a_real_etcd_backup_reads_with_its_revisions_leases_and_users() {
    let (backup, status) = read(ETCD_BACKUP, Path::new("fixture")).unwrap();
    // Exactly what `etcdutl snapshot status -w json` printed for this file.
    assert_eq!(
        status,
        EtcdStatus {
            hash: 3_631_314_004,
            revision: 7,
            total_keys: 19,
            total_bytes: 20_480,
        }
    );
    assert_eq!(backup.revision, Revision(7));
    assert_eq!(backup.compact_revision, Revision(3));
    assert_eq!(backup.items.len(), 7);
    let versions: Vec<(Vec<u8>, Revision, StoredVersion)> = backup
        .items
        .iter()
        .map(|(k, v)| {
            let (key, revision) = split_versioned_key(k);
            (key, revision, StoredVersion::decode(v))
        })
        .collect();
    // a@2 "1", a@4 "3" (version 2), b@3, b deleted at 5, c@6 on the lease, d and e at 7
    // in that order.
    assert_eq!(versions[1].0, b"a");
    assert_eq!(versions[1].1, Revision(4));
    assert_eq!(versions[1].2.version, 2);
    assert_eq!(versions[1].2.create_revision, Revision(2));
    assert!(versions[3].2.tombstone && versions[3].1 == Revision(5));
    assert_eq!(versions[4].2.lease, backup.leases[0].0);
    assert_eq!((versions[5].2.sub, versions[6].2.sub), (0, 1));
    assert_eq!(backup.leases[0].1.ttl_secs, 100);
    assert_eq!(backup.auth.revision, 6);
    assert!(!backup.auth.enabled);
    let users: Vec<&[u8]> = backup.auth.users.iter().map(|u| u.name.as_ref()).collect();
    assert_eq!(users, [&b"root"[..], b"u1"]);
    assert_eq!(backup.auth.roles[0].key_permission[0].key.as_ref(), b"/x");
}

#[test]
fn a_damaged_etcd_backup_is_refused_by_its_hash() {
    let mut damaged = ETCD_BACKUP.to_vec();
    damaged[5000] ^= 1;
    let error = read(&damaged, Path::new("damaged.db")).unwrap_err();
    assert!(error.to_string().contains("SHA-256"), "{error}");
    // Without the hash (a database copied from a data directory) it reads.
    let db = &ETCD_BACKUP[..ETCD_BACKUP.len() - 32];
    assert!(read(db, Path::new("db")).is_ok());
}

struct Store {
    _dir: tempfile::TempDir,
    _keyspace: fjall::Keyspace,
    store: MvccStore,
    index: u64,
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let store = MvccStore::open(&keyspace, GroupId(1), crate::mvcc::KeySpan::whole());
        Store {
            _dir: dir,
            _keyspace: keyspace,
            store,
            index: 1,
        }
    }

    fn write(&mut self, request: Request) {
        self.index += 1;
        let write = WriteRequest {
            id: self.index,
            request: Some(request),
            ..Default::default()
        };
        apply_write(&self.store, LogIndex(self.index), Term(1), &write);
    }

    fn put(&mut self, key: &str, value: &str) {
        self.write(Request::Put(PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            ..Default::default()
        }));
    }
}

#[test]
fn ostrakon_state_written_as_an_etcd_backup_reads_back_the_same_without_garbage() {
    let mut store = Store::new();
    store.put("a", "1");
    store.put("b", "2");
    store.put("a", "3");
    store.write(Request::DeleteRange(DeleteRangeRequest {
        key: Bytes::from_static(b"b"),
        ..Default::default()
    }));
    store.put("c", &"x".repeat(10_000));
    store.write(Request::Compaction(CompactionRequest {
        revision: 4,
        physical: false,
    }));
    store.put("a", "4");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    crate::snapshot::create(&store.store, &ours).unwrap();
    let content = crate::snapshot::read(&ours).unwrap();
    let theirs = dir.path().join("backup.db");
    let bytes = write(&content, &theirs).unwrap();
    let file = std::fs::read(&theirs).unwrap();
    assert_eq!(file.len() as u64, bytes);
    assert_eq!(
        file.len() % 512,
        32,
        "whole pages and a SHA-256, as etcdctl expects"
    );
    let (backup, status) = read(&file, &theirs).unwrap();
    assert_eq!(backup.revision, Revision(7));
    assert_eq!(status.revision, 7);
    assert_eq!(backup.compact_revision, Revision(4));
    // a@2 is garbage after the compaction at 4 (a@4 supersedes it); the tombstone of b
    // at 5 is above it and stays.
    let kept: Vec<(Vec<u8>, Revision)> = backup
        .items
        .iter()
        .map(|(k, _)| split_versioned_key(k))
        .collect();
    let expected: Vec<(Vec<u8>, Revision)> = vec![
        (b"a".to_vec(), Revision(4)),
        (b"a".to_vec(), Revision(7)),
        (b"b".to_vec(), Revision(3)),
        (b"b".to_vec(), Revision(5)),
        (b"c".to_vec(), Revision(6)),
    ];
    assert_eq!(kept, expected);
    for (key, value) in &backup.items {
        let original = content.items.iter().find(|(k, _)| k == key).expect("kept");
        assert_eq!(
            StoredVersion::decode(value),
            StoredVersion::decode(&original.1)
        );
    }
}

#[test]
fn the_ranges_of_a_backup_travel_in_a_bucket_of_their_own_and_only_then() {
    let mut store = Store::new();
    store.put("a", "1");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    crate::snapshot::create(&store.store, &ours).unwrap();
    let mut content = crate::snapshot::read(&ours).unwrap();

    // One range: exactly etcd's buckets.
    let names: Vec<Vec<u8>> = buckets_of(&content).into_iter().map(|b| b.name).collect();
    assert!(!names.iter().any(|name| name == RANGES_BUCKET), "{names:?}");
    let one = dir.path().join("one.db");
    write(&content, &one).unwrap();
    let (backup, _) = read(&std::fs::read(&one).unwrap(), &one).unwrap();
    assert!(backup.range_starts.is_empty());

    content.range_starts = vec![
        RangeStart {
            key: b"m".to_vec(),
            by_hand: true,
        },
        RangeStart {
            key: b"t\0".to_vec(),
            by_hand: false,
        },
    ];
    let three = dir.path().join("three.db");
    write(&content, &three).unwrap();
    let (backup, status) = read(&std::fs::read(&three).unwrap(), &three).unwrap();
    assert_eq!(backup.range_starts, content.range_starts);
    let (_, one_status) = read(&std::fs::read(&one).unwrap(), &one).unwrap();
    assert_eq!(
        status.total_keys,
        one_status.total_keys + 2,
        "counted as etcdutl counts every bucket's entries"
    );

    // A malformed mark is refused, not guessed.
    let mut buckets = buckets_of(&content);
    let ranges = buckets
        .iter_mut()
        .find(|b| b.name == RANGES_BUCKET)
        .unwrap();
    ranges.entries[0].1 = vec![7];
    let error = from_buckets(&buckets).unwrap_err();
    assert!(error.contains("malformed mark"), "{error}");
}

#[test]
fn a_backup_at_an_oracle_timestamp_restores_into_a_range_taking_the_oracles_revisions() {
    let mut store = Store::new();
    store.put("a", "1");
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours");
    crate::snapshot::create(&store.store, &ours).unwrap();
    let mut content = crate::snapshot::read(&ours).unwrap();
    let restore = |content: &SnapshotContent, name: &str| {
        let path = dir.path().join(name);
        write(content, &path).unwrap();
        let target = Store::new();
        crate::backup::restore(
            &target.store,
            &path,
            crate::mvcc::AppliedState::default(),
            Vec::new(),
            crate::backup::RevisionBump::default(),
        )
        .unwrap();
        target
    };
    // Dense revisions count on, as etcd's.
    let dense = restore(&content, "dense.db");
    assert!(!dense.store.oracle_revisions());
    // A keyspace that split and merged back: its revision is a timestamp.
    let timestamp = 1_i64 << 57;
    content.info.compact_revision = Revision(timestamp);
    let restored = restore(&content, "timestamp.db");
    assert_eq!(restored.store.current_revision(), Revision(timestamp));
    assert!(restored.store.oracle_revisions());
}
