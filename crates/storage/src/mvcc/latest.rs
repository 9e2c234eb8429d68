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
use ostrakon_proto::mvccpb::KeyValue;

use super::keys::split_versioned_key;
use super::value::StoredVersion;
use super::Revision;

/// The newest version of every live key, as of `revision`, and the keys attached to each
/// lease.
#[derive(Clone, Debug, Default)]
pub struct LatestIndex {
    revision: Revision,
    /// Key to its newest version.
    keys: imbl::OrdMap<Bytes, Newest>,
    /// Lease to the live keys attached to it.
    attached: imbl::OrdMap<i64, imbl::OrdSet<Bytes>>,
    /// The bytes of every live key and its value (a range's size, as CockroachDB's
    /// live bytes: what a split by size looks at).
    live_bytes: u64,
}

/// What the index keeps of a live key's newest version: all a put, a compare of
/// anything but the value, or an `ignore_lease` needs, so that they read no stored
/// version (etcd's treeIndex keeps a key's created revision and version count too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Newest {
    revision: Revision,
    create_revision: Revision,
    version: i64,
    /// Its lease, or 0.
    lease: i64,
    value_bytes: u32,
}

/// A live key's newest version without its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMeta {
    pub mod_revision: Revision,
    pub create_revision: Revision,
    pub version: i64,
    pub lease: i64,
}

impl KeyMeta {
    /// What a key-value shows of its version.
    pub fn of(kv: &KeyValue) -> KeyMeta {
        KeyMeta {
            mod_revision: Revision(kv.mod_revision),
            create_revision: Revision(kv.create_revision),
            version: kv.version,
            lease: kv.lease,
        }
    }

    /// The key-value with an empty value: what a compare of anything but the value
    /// looks at.
    pub fn without_value(&self, key: Bytes) -> KeyValue {
        KeyValue {
            key,
            create_revision: self.create_revision.0,
            mod_revision: self.mod_revision.0,
            version: self.version,
            value: Bytes::new(),
            lease: self.lease,
        }
    }
}

impl Newest {
    /// The live bytes of `key` with this version.
    fn bytes(&self, key: &[u8]) -> u64 {
        key.len() as u64 + u64::from(self.value_bytes)
    }
}

impl LatestIndex {
    /// Builds the index from every stored version, in storage order (a key's versions
    /// adjacent and ascending by revision), as of `revision`.
    pub fn build<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        revision: Revision,
        items: impl Iterator<Item = (K, V)>,
    ) -> LatestIndex {
        let mut index = LatestIndex {
            revision,
            ..LatestIndex::default()
        };
        for (stored_key, stored_value) in items {
            let (user_key, version_revision) = split_versioned_key(stored_key.as_ref());
            assert!(
                version_revision <= revision,
                "a stored version at {version_revision:?} is beyond the revision {revision:?}"
            );
            // A later (newer) version of the same key replaces the entry.
            let stored = StoredVersion::decode(stored_value.as_ref());
            index.set(Bytes::from(user_key), version_revision, &stored);
        }
        index
    }

    /// How many keys are live.
    pub fn live_keys(&self) -> usize {
        self.keys.len()
    }

    /// The bytes of the live keys and their values.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// The key to split at so that the keys before it hold about half the live bytes:
    /// the first key after which they hold at least half (never the first live key, so
    /// both sides keep a key); None with fewer than two live keys. Takes time in the
    /// number of keys before it.
    pub fn middle_key(&self) -> Option<Bytes> {
        let half = self.live_bytes / 2;
        let mut before = 0;
        let mut keys = self.keys.iter().peekable();
        let mut last_candidate = None;
        while let Some((key, newest)) = keys.next() {
            before += newest.bytes(key);
            let Some((next, _)) = keys.peek() else {
                break;
            };
            last_candidate = Some((*next).clone());
            if before >= half {
                return last_candidate;
            }
        }
        last_candidate
    }

    /// Records `version` (at `revision`) as the newest of `key`.
    fn set(&mut self, key: Bytes, revision: Revision, version: &StoredVersion) {
        let old = if version.tombstone {
            self.keys.remove(&key)
        } else {
            let newest = Newest {
                revision,
                create_revision: version.create_revision,
                version: version.version,
                lease: version.lease,
                value_bytes: u32::try_from(version.value.len()).expect("values stay below 4 GiB"),
            };
            self.live_bytes += newest.bytes(&key);
            self.keys.insert(key.clone(), newest)
        };
        if let Some(old) = old {
            self.live_bytes -= old.bytes(&key);
        }
        let old_lease = old.map(|old| old.lease);
        if let Some(old_lease) = old_lease.filter(|lease| *lease != 0) {
            if let Some(keys) = self.attached.get_mut(&old_lease) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.attached.remove(&old_lease);
                }
            }
        }
        if !version.tombstone && version.lease != 0 {
            self.attached.entry(version.lease).or_default().insert(key);
        }
    }

    /// The live keys attached to `lease`, in key order.
    pub fn lease_keys(&self, lease: i64) -> Vec<Bytes> {
        self.attached
            .get(&lease)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The revision the index reflects.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Records the writes of `revision`, above the index's (the next one, or an oracle
    /// timestamp).
    pub fn apply(&mut self, revision: Revision, changes: &BTreeMap<Bytes, StoredVersion>) {
        assert!(
            revision > self.revision,
            "the latest-version index goes back from {:?} to {revision:?}",
            self.revision
        );
        for (key, version) in changes {
            self.set(key.clone(), revision, version);
        }
        self.revision = revision;
    }

    /// The index of two ranges' keys together (disjoint spans), at the higher revision:
    /// what a transaction across ranges reads through.
    pub fn merge(mut self, other: LatestIndex) -> LatestIndex {
        self.revision = self.revision.max(other.revision);
        self.live_bytes += other.live_bytes;
        for (key, newest) in other.keys {
            let replaced = self.keys.insert(key, newest);
            assert!(replaced.is_none(), "merged indexes share a key");
        }
        for (lease, keys) in other.attached {
            let attached = self.attached.entry(lease).or_default();
            *attached = attached.clone().union(keys);
        }
        self
    }

    /// The index of the live keys in `intervals` only (etcd's `(key, range_end)` form),
    /// at the same revision: what a transaction across ranges reads through, in time
    /// in the keys it touches rather than in every key of its ranges.
    pub fn within(&self, intervals: &[super::KeyInterval<'_>]) -> LatestIndex {
        let mut index = LatestIndex {
            revision: self.revision,
            ..LatestIndex::default()
        };
        for &(key, range_end) in intervals {
            let single = range_end.is_empty().then(|| self.keys.get_key_value(key));
            let entries: Box<dyn Iterator<Item = (&Bytes, &Newest)>> = match single {
                Some(found) => Box::new(found.into_iter()),
                None if range_end != [0] && range_end <= key => Box::new(std::iter::empty()),
                None => {
                    let low = Bound::Included(Bytes::copy_from_slice(key));
                    let high = if range_end == [0] {
                        Bound::Unbounded
                    } else {
                        Bound::Excluded(Bytes::copy_from_slice(range_end))
                    };
                    Box::new(self.keys.range((low, high)))
                }
            };
            for (key, newest) in entries {
                if index.keys.insert(key.clone(), *newest).is_some() {
                    continue; // in two intervals
                }
                index.live_bytes += newest.bytes(key);
                if newest.lease != 0 {
                    index
                        .attached
                        .entry(newest.lease)
                        .or_default()
                        .insert(key.clone());
                }
            }
        }
        index
    }

    /// Moves every key from `key` on into a new index (at the same revision), keeping
    /// those before it: the index of a split's two ranges. It takes time in the number
    /// of keys moved (imbl's maps cannot be cut in O(log n)).
    pub fn split_off(&mut self, key: &[u8]) -> LatestIndex {
        let mut right = LatestIndex {
            revision: self.revision,
            ..LatestIndex::default()
        };
        let moved: Vec<(Bytes, Newest)> = self
            .keys
            .range(Bytes::copy_from_slice(key)..)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (moved_key, newest) in moved {
            self.keys.remove(&moved_key);
            self.live_bytes -= newest.bytes(&moved_key);
            right.live_bytes += newest.bytes(&moved_key);
            let lease = newest.lease;
            if lease != 0 {
                if let Some(keys) = self.attached.get_mut(&lease) {
                    keys.remove(&moved_key);
                    if keys.is_empty() {
                        self.attached.remove(&lease);
                    }
                }
                right
                    .attached
                    .entry(lease)
                    .or_default()
                    .insert(moved_key.clone());
            }
            right.keys.insert(moved_key, newest);
        }
        right
    }

    /// The newest version's revision of a live key.
    pub fn get(&self, key: &[u8]) -> Option<Revision> {
        self.keys.get(key).map(|newest| newest.revision)
    }

    /// The newest version of a live key, without its value.
    pub fn meta(&self, key: &[u8]) -> Option<KeyMeta> {
        self.keys.get(key).map(|newest| KeyMeta {
            mod_revision: newest.revision,
            create_revision: newest.create_revision,
            version: newest.version,
            lease: newest.lease,
        })
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
        self.keys
            .range((low, high))
            .map(|(k, newest)| (k, newest.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(value: Option<&str>) -> StoredVersion {
        StoredVersion {
            tombstone: value.is_none(),
            create_revision: Revision(1),
            version: 1,
            lease: 0,
            value: Bytes::copy_from_slice(value.unwrap_or_default().as_bytes()),
            sub: 0,
        }
    }

    fn changes(items: &[(&str, Option<&str>)]) -> BTreeMap<Bytes, StoredVersion> {
        items
            .iter()
            .map(|(key, value)| (Bytes::copy_from_slice(key.as_bytes()), version(*value)))
            .collect()
    }

    #[test]
    fn an_index_within_intervals_holds_their_keys_and_leases_only() {
        let mut index = LatestIndex::default();
        let mut items = changes(&[
            ("a", Some("1")),
            ("b", Some("22")),
            ("c", Some("3")),
            ("x", Some("4")),
        ]);
        items.get_mut(&b"c"[..]).unwrap().lease = 7;
        items.get_mut(&b"x"[..]).unwrap().lease = 7;
        index.apply(Revision(5), &items);
        let keys = |within: &LatestIndex| -> Vec<Bytes> {
            within.range(b"", b"\0").map(|(k, _)| k.clone()).collect()
        };
        // A single key, an interval to the end, and one key in both.
        let within = index.within(&[(b"b", b""), (b"c", b"\0"), (b"x", b"")]);
        assert_eq!(keys(&within), vec!["b", "c", "x"]);
        assert_eq!(within.revision(), Revision(5));
        assert_eq!(within.live_bytes(), 3 + 2 + 2);
        assert_eq!(within.lease_keys(7), vec!["c", "x"]);
        // A bounded interval, an empty one, and a key not there.
        let within = index.within(&[(b"a", b"c"), (b"q", b"d"), (b"zz", b"")]);
        assert_eq!(keys(&within), vec!["a", "b"]);
        assert!(within.lease_keys(7).is_empty());
        let meta = within.meta(b"b").unwrap();
        assert_eq!(meta.mod_revision, Revision(5));
    }

    #[test]
    fn live_bytes_follow_puts_overwrites_deletes_and_splits() {
        let mut index = LatestIndex::default();
        index.apply(
            Revision(1),
            &changes(&[("a", Some("12345")), ("m", Some("1"))]),
        );
        assert_eq!(index.live_bytes(), 6 + 2);
        index.apply(
            Revision(2),
            &changes(&[("a", Some("12")), ("zz", Some("123"))]),
        );
        assert_eq!(index.live_bytes(), 3 + 2 + 5);
        index.apply(Revision(3), &changes(&[("m", None), ("nothing", None)]));
        assert_eq!(index.live_bytes(), 3 + 5);
        let right = index.split_off(b"b");
        assert_eq!((index.live_bytes(), right.live_bytes()), (3, 5));
        assert_eq!((index.live_keys(), right.live_keys()), (1, 1));
    }

    #[test]
    fn the_index_keeps_what_a_put_and_a_compare_need_without_the_value() {
        let mut index = LatestIndex::default();
        assert_eq!(index.meta(b"a"), None);
        let mut first = version(Some("1"));
        first.create_revision = Revision(4);
        first.lease = 7;
        index.apply(Revision(4), &[(Bytes::from_static(b"a"), first)].into());
        let mut second = version(Some("22"));
        second.create_revision = Revision(4);
        second.version = 2;
        index.apply(Revision(9), &[(Bytes::from_static(b"a"), second)].into());
        assert_eq!(
            index.meta(b"a"),
            Some(KeyMeta {
                mod_revision: Revision(9),
                create_revision: Revision(4),
                version: 2,
                lease: 0,
            })
        );
        index.apply(Revision(10), &changes(&[("a", None)]));
        assert_eq!(index.meta(b"a"), None);
    }

    #[test]
    fn the_middle_key_halves_the_live_bytes_and_leaves_a_key_on_each_side() {
        let mut index = LatestIndex::default();
        assert_eq!(index.middle_key(), None);
        index.apply(Revision(1), &changes(&[("a", Some("123456789"))]));
        // One key cannot be split.
        assert_eq!(index.middle_key(), None);
        index.apply(
            Revision(2),
            &changes(&[("b", Some("1")), ("c", Some("1")), ("d", Some("1"))]),
        );
        // a holds 10 of 16 bytes: the split goes right after it.
        assert_eq!(index.middle_key().as_deref(), Some(&b"b"[..]));
        index.apply(
            Revision(3),
            &changes(&[("a", Some("")), ("e", Some("1234567"))]),
        );
        // 1 + 2 + 2 + 2 + 8 = 15: a, b, c hold 5, a..d 7 (at least 7): split before e.
        assert_eq!(index.middle_key().as_deref(), Some(&b"e"[..]));
    }
}
