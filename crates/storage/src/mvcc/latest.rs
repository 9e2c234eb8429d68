//! The latest-version index: for every live key, the revision of its newest version.
//!
//! Reads at the current revision (nearly all of them) go through it, so a Range touches
//! one entry per live key instead of every stored version, as etcd's in-memory treeIndex
//! does. It lives in memory and is rebuilt from the stored versions when a store opens or
//! installs a snapshot. It is a persistent map: a reader's copy is O(1) and shares
//! structure with the writer's, so a long scan never holds up a write.

use std::collections::BTreeMap;
use std::ops::Bound;

use bytes::Bytes;

use super::keys::split_versioned_key;
use super::value::StoredVersion;
use super::Revision;

/// The newest version of every live key, as of `revision`.
#[derive(Clone, Debug, Default)]
pub struct LatestIndex {
    revision: Revision,
    keys: imbl::OrdMap<Bytes, Revision>,
}

impl LatestIndex {
    /// Builds the index from every stored version, in storage order (a key's versions
    /// adjacent and ascending by revision), as of `revision`.
    pub fn build<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        revision: Revision,
        items: impl Iterator<Item = (K, V)>,
    ) -> LatestIndex {
        let mut keys = imbl::OrdMap::new();
        for (stored_key, stored_value) in items {
            let (user_key, version_revision) = split_versioned_key(stored_key.as_ref());
            assert!(
                version_revision <= revision,
                "a stored version at {version_revision:?} is beyond the revision {revision:?}"
            );
            // A later (newer) version of the same key replaces the entry.
            if StoredVersion::is_tombstone(stored_value.as_ref()) {
                keys.remove(user_key.as_slice());
            } else {
                keys.insert(Bytes::from(user_key), version_revision);
            }
        }
        LatestIndex { revision, keys }
    }

    /// The revision the index reflects.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Records the writes of `revision`, the one after the index's.
    pub fn apply(&mut self, revision: Revision, changes: &BTreeMap<Bytes, StoredVersion>) {
        assert_eq!(
            revision.0,
            self.revision.0 + 1,
            "the latest-version index skips a revision"
        );
        for (key, version) in changes {
            if version.tombstone {
                self.keys.remove(key);
            } else {
                self.keys.insert(key.clone(), revision);
            }
        }
        self.revision = revision;
    }

    /// The newest version's revision of a live key.
    pub fn get(&self, key: &[u8]) -> Option<Revision> {
        self.keys.get(key).copied()
    }

    /// The live keys in `[key, range_end)` in key order (`range_end` `"\0"` means no upper
    /// bound; the caller handles the single-key and empty cases).
    pub fn range<'a>(
        &'a self,
        key: &[u8],
        range_end: &[u8],
    ) -> impl Iterator<Item = (&'a Bytes, Revision)> + 'a {
        let low = Bound::Included(Bytes::copy_from_slice(key));
        let high = if range_end == [0] {
            Bound::Unbounded
        } else {
            Bound::Excluded(Bytes::copy_from_slice(range_end))
        };
        self.keys.range((low, high)).map(|(k, r)| (k, *r))
    }
}
