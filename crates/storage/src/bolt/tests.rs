use std::io::Cursor;

use super::*;

fn written(buckets: &[Bucket]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let bytes = write_buckets(buckets, &mut out).unwrap();
    let file = out.into_inner();
    assert_eq!(file.len() as u64, bytes);
    assert_eq!(file.len() % PAGE_BYTES, 0);
    file
}

/// A real etcd 3.5.1 backup (see tests/fixtures/README.md).
const ETCD_BACKUP: &[u8] = include_bytes!("../../tests/fixtures/etcd-3.5.1-backup.db");

#[test]
fn buckets_round_trip_small_and_empty() {
    let buckets = vec![
        Bucket::new(
            b"meta",
            vec![(b"term".to_vec(), 2u64.to_be_bytes().to_vec())],
        ),
        Bucket::new(b"empty", Vec::new()),
        Bucket::new(
            b"key",
            vec![
                (b"b".to_vec(), b"2".to_vec()),
                (b"a".to_vec(), b"1".to_vec()),
            ],
        ),
    ];
    let read = read_buckets(&written(&buckets)).unwrap();
    let mut expected = buckets.clone();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(read, expected);
}

#[test]
fn many_keys_take_branch_pages_and_large_values_overflow_pages() {
    let many: Vec<(Vec<u8>, Vec<u8>)> = (0u64..20_000)
        .map(|i| (i.to_be_bytes().to_vec(), format!("value {i}").into_bytes()))
        .collect();
    let large = vec![
        (b"big".to_vec(), vec![7u8; 3 * PAGE_BYTES + 100]),
        (b"huge".to_vec(), vec![9u8; 40 * PAGE_BYTES]),
        (b"small".to_vec(), b"s".to_vec()),
    ];
    let buckets = vec![Bucket::new(b"key", many), Bucket::new(b"large", large)];
    let file = written(&buckets);
    assert!(file.len() > 100 * PAGE_BYTES);
    assert_eq!(read_buckets(&file).unwrap(), buckets);
}

#[test]
fn a_real_etcd_backup_reads_with_its_buckets_and_keys() {
    let buckets = read_buckets(ETCD_BACKUP).unwrap();
    let names: Vec<&[u8]> = buckets.iter().map(|b| b.name.as_slice()).collect();
    let expected: [&[u8]; 10] = [
        b"alarm",
        b"auth",
        b"authRoles",
        b"authUsers",
        b"cluster",
        b"key",
        b"lease",
        b"members",
        b"members_removed",
        b"meta",
    ];
    assert_eq!(names, expected);
    let key = &buckets[5];
    assert_eq!(key.entries.len(), 7, "seven revisions, a delete among them");
    assert_eq!(
        key.entries[3].0.last(),
        Some(&b't'),
        "the delete's tombstone mark"
    );
    let meta = &buckets[9];
    assert_eq!(meta.get(b"term"), Some(&2u64.to_be_bytes()[..]));
    let cluster = &buckets[4];
    assert_eq!(cluster.get(b"clusterVersion"), Some(&b"3.5.0"[..]));
    // etcdutl's status counts 19 keys in all buckets.
    assert_eq!(buckets.iter().map(|b| b.entries.len()).sum::<usize>(), 19);
}

#[test]
fn what_we_write_reads_like_what_etcd_wrote() {
    let from_etcd = read_buckets(ETCD_BACKUP).unwrap();
    let rewritten = read_buckets(&written(&from_etcd)).unwrap();
    assert_eq!(rewritten, from_etcd);
}

#[test]
fn damaged_files_are_refused_with_a_reason() {
    let file = written(&[Bucket::new(b"key", vec![(b"a".to_vec(), b"1".to_vec())])]);
    assert!(read_buckets(&file[..100]).is_err(), "cut short");
    assert!(read_buckets(b"not a database at all, not even close to a page").is_err());
    let mut both_metas_bad = file.clone();
    both_metas_bad[PAGE_HEADER_BYTES + 20] ^= 0xff;
    both_metas_bad[PAGE_BYTES + PAGE_HEADER_BYTES + 20] ^= 0xff;
    let error = read_buckets(&both_metas_bad).unwrap_err();
    assert!(error.0.contains("checksum"), "{error}");
    // One damaged meta page: the other is used, as bbolt does.
    let mut one_meta_bad = file.clone();
    one_meta_bad[PAGE_BYTES + PAGE_HEADER_BYTES + 20] ^= 0xff;
    assert!(read_buckets(&one_meta_bad).is_ok());
    // A tree page cut off: the file ends inside it.
    let cut = &file[..file.len() - PAGE_BYTES];
    let error = read_buckets(cut).unwrap_err();
    assert!(error.0.contains("outside the file"), "{error}");
}
