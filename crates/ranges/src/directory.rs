//! The range directory as a node (or a client) caches it: which range holds a key.
//!
//! Entries are learnt from range 0 and from the answers of replicas that no longer hold
//! a key (a range that split or merged answers with its current descriptor). A cache can
//! be stale; routing through it is always checked by the replica, which refuses keys
//! outside its span, so a stale entry costs a retry, never a wrong answer.
//!
//! Of two overlapping descriptors the one with the higher generation is newer: a split
//! gives both halves the old generation plus one and a merge gives the merged range the
//! higher of the two plus one (CockroachDB's rule), so a newer description of any part
//! of the keyspace always has a higher generation than an older one it overlaps.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::descriptor::{RangeDescriptor, RangeId};

/// Cached range descriptors, keyed by start key; no two overlap.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    by_start: BTreeMap<Vec<u8>, RangeDescriptor>,
}

impl Directory {
    /// A directory holding `ranges`.
    pub fn with(ranges: impl IntoIterator<Item = RangeDescriptor>) -> Directory {
        let mut directory = Directory::default();
        for range in ranges {
            directory.learn(range);
        }
        directory
    }

    /// The cached range that holds `key`, if any.
    pub fn lookup(&self, key: &[u8]) -> Option<&RangeDescriptor> {
        self.by_start
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(_, range)| range)
            .filter(|range| range.contains(key))
    }

    /// Takes `range` in unless a newer description of part of its span is cached; the
    /// older descriptions it overlaps are dropped. Returns whether it was taken.
    pub fn learn(&mut self, range: RangeDescriptor) -> bool {
        let overlapping: Vec<Vec<u8>> = self
            .by_start
            .values()
            .filter(|cached| cached.overlaps(&range))
            .map(|cached| cached.start.clone())
            .collect();
        let newer_cached = overlapping.iter().any(|start| {
            self.by_start[start].generation >= range.generation && self.by_start[start] != range
        });
        if newer_cached {
            return false;
        }
        for start in overlapping {
            self.by_start.remove(&start);
        }
        self.by_start.insert(range.start.clone(), range);
        true
    }

    /// Drops the cached entry of `id`, if any (its replicas say it no longer exists).
    pub fn forget(&mut self, id: RangeId) {
        self.by_start.retain(|_, range| range.id != id);
    }

    /// Every cached range, in key order.
    pub fn ranges(&self) -> impl Iterator<Item = &RangeDescriptor> {
        self.by_start.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::descriptor::test_range as range;

    #[test]
    fn a_key_routes_to_the_range_whose_span_holds_it() {
        let directory = Directory::with(RangeDescriptor::partition(
            RangeId(1),
            &[b"g".to_vec(), b"p".to_vec()],
        ));
        assert_eq!(directory.lookup(b"").unwrap().id, RangeId(1));
        assert_eq!(directory.lookup(b"f\xff").unwrap().id, RangeId(1));
        assert_eq!(directory.lookup(b"g").unwrap().id, RangeId(2));
        assert_eq!(directory.lookup(b"zzz").unwrap().id, RangeId(3));
    }

    #[test]
    fn a_gap_in_the_cache_routes_nowhere() {
        let directory = Directory::with([range(2, b"g", Some(b"p"), 1)]);
        assert!(directory.lookup(b"a").is_none());
        assert!(directory.lookup(b"q").is_none());
    }

    #[test]
    fn the_halves_of_a_split_replace_the_range_they_came_from() {
        let mut directory = Directory::with([range(1, b"", None, 3)]);
        assert!(directory.learn(range(1, b"", Some(b"m"), 4)));
        assert!(
            directory.lookup(b"q").is_none(),
            "the right half is not known yet"
        );
        assert!(directory.learn(range(2, b"m", None, 4)));
        assert_eq!(directory.lookup(b"q").unwrap().id, RangeId(2));
        assert_eq!(directory.lookup(b"a").unwrap().id, RangeId(1));
    }

    #[test]
    fn an_older_description_does_not_replace_a_newer_one() {
        let mut directory =
            Directory::with([range(1, b"", Some(b"m"), 4), range(2, b"m", None, 4)]);
        // A slow answer from before the split arrives late.
        assert!(!directory.learn(range(1, b"", None, 3)));
        assert_eq!(directory.lookup(b"q").unwrap().id, RangeId(2));
        // Learning what is already known changes nothing.
        assert!(directory.learn(range(2, b"m", None, 4)));
        assert_eq!(directory.ranges().count(), 2);
    }

    #[test]
    fn a_merge_replaces_both_halves() {
        let mut directory =
            Directory::with([range(1, b"", Some(b"m"), 4), range(2, b"m", None, 4)]);
        assert!(directory.learn(range(1, b"", None, 5)));
        assert_eq!(directory.ranges().count(), 1);
        assert_eq!(directory.lookup(b"q").unwrap().id, RangeId(1));
    }

    #[test]
    fn forgetting_a_range_leaves_a_gap() {
        let mut directory =
            Directory::with([range(1, b"", Some(b"m"), 4), range(2, b"m", None, 4)]);
        directory.forget(RangeId(2));
        assert!(directory.lookup(b"q").is_none());
        assert!(directory.lookup(b"a").is_some());
    }
}
