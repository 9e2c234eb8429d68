//! Which stored versions a compaction makes garbage.
//!
//! A compaction at revision C applies in two steps. Logically, at apply: the compacted
//! revision is raised (reads below it are refused) atomically with the applied index, in
//! O(1), on the event loop. Physically, later, on the node's compactor thread: the
//! versions no read at or above C can see are removed in small batches, as etcd's
//! scheduled compaction does (`--experimental-compaction-batch-limit`, a pause between
//! batches). Until then they are present but invisible, so whatever reads every stored
//! version (HashKV) classifies them with `classify` instead of trusting the disk.
//!
//! A version at or below C is garbage if a newer version of the same key is also at or
//! below C, or if it is the newest at or below C and a tombstone. Versions above C are
//! kept.

use std::ops::ControlFlow;

use super::value::StoredVersion;
use super::Revision;

/// The revision's bytes at the end of every storage key (`keys::versioned_key`).
const REVISION_BYTES: usize = 8;

/// Stored versions removed per batch by the physical compaction (etcd's batch limit).
pub const COMPACTION_BATCH_VERSIONS: usize = 1000;
/// The compactor's pause between batches, so that writes and reads keep their share of
/// the disk and of the engine's locks (etcd's default sleep interval).
pub const COMPACTION_BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// The newest version seen of the current key at or below the compacted revision, until
/// it is known whether a newer one supersedes it.
struct Pending {
    prefix_len: usize,
    key: Vec<u8>,
    value: Vec<u8>,
    tombstone: bool,
}

/// Calls `visit(stored_key, stored_value, is_garbage)` for every stored version of
/// `versions` (in storage order: by key, then by revision), telling whether a compaction
/// at `compacted` makes it garbage. Survivors are visited in storage order; a garbage
/// version may be visited later than the next key's versions would suggest, never
/// earlier. `visit` may stop the walk.
pub fn classify<K, V>(
    versions: impl Iterator<Item = (K, V)>,
    compacted: Revision,
    mut visit: impl FnMut(&[u8], &[u8], bool) -> ControlFlow<()>,
) -> ControlFlow<()>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut pending: Option<Pending> = None;
    for (key, value) in versions {
        let (key, value) = (key.as_ref(), value.as_ref());
        let prefix_len = key.len() - REVISION_BYTES;
        let revision = Revision(u64::from_be_bytes(
            key[prefix_len..].try_into().expect("8 revision bytes"),
        ) as i64);
        if let Some(previous) = pending.take() {
            let same_key = previous.key[..previous.prefix_len] == key[..prefix_len];
            if same_key && revision <= compacted {
                // Superseded by a newer version that is also at or below the compaction.
                visit(&previous.key, &previous.value, true)?;
            } else {
                let garbage = previous.tombstone;
                visit(&previous.key, &previous.value, garbage)?;
            }
        }
        if revision <= compacted {
            pending = Some(Pending {
                prefix_len,
                key: key.to_vec(),
                value: value.to_vec(),
                tombstone: StoredVersion::is_tombstone(value),
            });
        } else {
            visit(key, value, false)?;
        }
    }
    if let Some(last) = pending {
        visit(&last.key, &last.value, last.tombstone)?;
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::super::keys::{split_versioned_key, versioned_key};
    use super::*;

    fn version(key: &str, revision: i64, tombstone: bool) -> (Vec<u8>, Vec<u8>) {
        let value = if tombstone {
            StoredVersion::tombstone()
        } else {
            StoredVersion {
                tombstone: false,
                create_revision: Revision(2),
                version: 1,
                lease: 0,
                value: bytes::Bytes::from_static(b"v"),
                sub: 0,
            }
        };
        (
            versioned_key(key.as_bytes(), Revision(revision)),
            value.encode(),
        )
    }

    fn garbage_at(versions: &[(Vec<u8>, Vec<u8>)], compacted: i64) -> Vec<(Vec<u8>, Revision)> {
        let mut out = Vec::new();
        let _ = classify(
            versions.iter().map(|(k, v)| (k, v)),
            Revision(compacted),
            |key, _, garbage| {
                if garbage {
                    out.push(split_versioned_key(key));
                }
                ControlFlow::Continue(())
            },
        );
        out.sort();
        out
    }

    #[test]
    fn superseded_versions_and_newest_tombstones_below_the_compaction_are_garbage() {
        let versions = vec![
            version("a", 2, false),
            version("a", 3, false),
            version("a", 6, false),
            version("b", 4, false),
            version("b", 5, true),
            version("c", 7, false),
            version("d", 3, true),
            version("d", 8, false),
        ];
        let a = |r| (b"a".to_vec(), Revision(r));
        let b = |r| (b"b".to_vec(), Revision(r));
        let d = |r| (b"d".to_vec(), Revision(r));
        assert_eq!(garbage_at(&versions, 1), vec![]);
        assert_eq!(garbage_at(&versions, 3), vec![a(2), d(3)]);
        assert_eq!(garbage_at(&versions, 5), vec![a(2), b(4), b(5), d(3)]);
        assert_eq!(garbage_at(&versions, 8), vec![a(2), a(3), b(4), b(5), d(3)]);
    }

    #[test]
    fn survivors_are_visited_in_storage_order_and_the_walk_can_stop() {
        let versions = [
            version("a", 2, false),
            version("a", 3, false),
            version("b", 4, false),
        ];
        let mut kept = Vec::new();
        let _ = classify(versions.iter().cloned(), Revision(3), |key, _, garbage| {
            if !garbage {
                kept.push(split_versioned_key(key).1);
            }
            ControlFlow::Continue(())
        });
        assert_eq!(kept, vec![Revision(3), Revision(4)]);
        let mut visited = 0;
        let stopped = classify(versions.iter().cloned(), Revision(3), |_, _, _| {
            visited += 1;
            ControlFlow::Break(())
        });
        assert_eq!((stopped, visited), (ControlFlow::Break(()), 1));
    }
}
