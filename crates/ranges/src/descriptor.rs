//! A range: a half-open span of user keys `[start, end)` replicated by its own raft
//! group, and the generation that tells a newer description of it from an older one.

use ostrakon_raft::GroupId;

/// A range's id; its raft group has the same number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeId(pub u64);

impl RangeId {
    /// Range 0 holds what is cluster-wide (the directory, the oracle's bound) and no
    /// user keys.
    pub const META: RangeId = RangeId(0);

    /// The raft group replicating the range.
    pub fn group(self) -> GroupId {
        GroupId(self.0)
    }
}

/// The span a range covers and its generation, which grows with every split and merge
/// that changes it: of two descriptions of one range, the higher generation is current.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RangeDescriptor {
    /// The range.
    pub id: RangeId,
    /// The first key it holds.
    pub start: Vec<u8>,
    /// The first key after it; None: the end of the keyspace.
    pub end: Option<Vec<u8>>,
    /// Grows with every split and merge of the range.
    pub generation: u64,
}

impl RangeDescriptor {
    /// A description of range `id` holding `[start, end)`.
    pub fn new(id: RangeId, start: Vec<u8>, end: Option<Vec<u8>>, generation: u64) -> Self {
        if let Some(end) = &end {
            assert!(start < *end, "range {id:?}: an empty or reversed span");
        }
        RangeDescriptor {
            id,
            start,
            end,
            generation,
        }
    }

    /// Whether `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Whether the two spans share a key.
    pub fn overlaps(&self, other: &RangeDescriptor) -> bool {
        let starts_before_other_ends = other
            .end
            .as_deref()
            .is_none_or(|end| self.start.as_slice() < end);
        let other_starts_before_end = self
            .end
            .as_deref()
            .is_none_or(|end| other.start.as_slice() < end);
        starts_before_other_ends && other_starts_before_end
    }

    /// `count` ranges, ids `first_id..`, that cover the whole keyspace between them,
    /// cut at the given keys (which must be increasing and not empty).
    pub fn partition(first_id: RangeId, split_keys: &[Vec<u8>]) -> Vec<RangeDescriptor> {
        let mut starts = vec![Vec::new()];
        starts.extend(split_keys.iter().cloned());
        let ends = split_keys.iter().cloned().map(Some).chain([None]);
        starts
            .into_iter()
            .zip(ends)
            .enumerate()
            .map(|(i, (start, end))| {
                RangeDescriptor::new(RangeId(first_id.0 + i as u64), start, end, 1)
            })
            .collect()
    }
}

/// A descriptor for tests: range `id` over `[start, end)` at `generation`.
#[cfg(test)]
pub(crate) fn test_range(
    id: u64,
    start: &[u8],
    end: Option<&[u8]>,
    generation: u64,
) -> RangeDescriptor {
    RangeDescriptor::new(
        RangeId(id),
        start.to_vec(),
        end.map(<[u8]>::to_vec),
        generation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: u64, start: &[u8], end: Option<&[u8]>) -> RangeDescriptor {
        RangeDescriptor::new(RangeId(id), start.to_vec(), end.map(<[u8]>::to_vec), 1)
    }

    #[test]
    fn a_span_holds_its_start_and_not_its_end() {
        let range = span(1, b"b", Some(b"d"));
        assert!(range.contains(b"b"));
        assert!(range.contains(b"c\xff"));
        assert!(!range.contains(b"d"));
        assert!(!range.contains(b"a"));
        let last = span(2, b"d", None);
        assert!(last.contains(b"\xff\xff\xff"));
    }

    #[test]
    fn overlaps_are_symmetric_and_touching_spans_do_not_overlap() {
        let left = span(1, b"", Some(b"m"));
        let right = span(2, b"m", None);
        let middle = span(3, b"k", Some(b"n"));
        assert!(!left.overlaps(&right) && !right.overlaps(&left));
        assert!(left.overlaps(&middle) && middle.overlaps(&left));
        assert!(right.overlaps(&middle) && middle.overlaps(&right));
    }

    #[test]
    fn a_partition_covers_the_keyspace_without_gaps() {
        let ranges = RangeDescriptor::partition(RangeId(1), &[b"g".to_vec(), b"p".to_vec()]);
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0], span(1, b"", Some(b"g")));
        assert_eq!(ranges[1], span(2, b"g", Some(b"p")));
        assert_eq!(ranges[2], span(3, b"p", None));
    }

    #[test]
    #[should_panic(expected = "empty or reversed")]
    fn an_empty_span_is_a_bug() {
        span(1, b"b", Some(b"b"));
    }
}
