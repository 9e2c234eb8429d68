//! The user keys one range's store holds: a half-open span `[start, end)` of the data
//! partition every range of the node shares.
//!
//! Ranges share one data partition keyed by user key, so a split moves no data: it
//! only cuts a span in two. Every scan a store makes (its index at open, snapshots,
//! installs, compaction, hashes) stays within its span, and a request outside it is a
//! routing bug (requests are checked against the range's span before they take effect).

use std::ops::Bound;

use ostrakon_proto::peer::KeySpanRecord;
use prost::Message as _;

use super::keys::key_prefix;

/// A half-open span of user keys; `end: None` is the end of the keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeySpan {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeySpan {
    /// Every user key.
    pub fn whole() -> KeySpan {
        KeySpan {
            start: Vec::new(),
            end: None,
        }
    }

    /// No user key (the meta range's store: it holds what is cluster-wide, no data).
    pub fn none() -> KeySpan {
        KeySpan {
            start: Vec::new(),
            end: Some(Vec::new()),
        }
    }

    /// `[start, end)`; `end` must be above `start`.
    pub fn new(start: Vec<u8>, end: Option<Vec<u8>>) -> KeySpan {
        if let Some(end) = &end {
            assert!(start < *end, "an empty or reversed span {start:?}..{end:?}");
        }
        KeySpan { start, end }
    }

    /// The first key held.
    pub fn start(&self) -> &[u8] {
        &self.start
    }

    /// The first key after the span (None: the end of the keyspace).
    pub fn end(&self) -> Option<&[u8]> {
        self.end.as_deref()
    }

    /// Whether no key falls in it.
    pub fn is_none(&self) -> bool {
        self.end
            .as_deref()
            .is_some_and(|end| end <= self.start.as_slice())
    }

    /// Whether `key` falls in the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Whether the two spans share a key.
    pub fn overlaps(&self, other: &KeySpan) -> bool {
        if self.is_none() || other.is_none() {
            return false;
        }
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

    /// Whether every key of an etcd request's interval falls in the span: `range_end`
    /// empty means `key` alone, `"\0"` every key from `key` on.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        if range_end.is_empty() {
            return self.contains(key);
        }
        if range_end == [0] {
            return key >= self.start.as_slice() && self.end.is_none();
        }
        if range_end <= key {
            return true; // an empty interval
        }
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| range_end <= end)
    }

    /// The part of an etcd request's interval that falls in the span, in etcd's interval
    /// form (`range_end` empty: `key` alone; `"\0"`: every key from `key` on); None if no
    /// key of it does.
    pub fn clip(&self, key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        if range_end.is_empty() {
            return self.contains(key).then(|| (key.to_vec(), Vec::new()));
        }
        let interval_end = (range_end != [0]).then_some(range_end);
        if self.is_none() || interval_end.is_some_and(|end| end <= key) {
            return None;
        }
        let start = key.max(self.start.as_slice());
        let end = match (interval_end, self.end.as_deref()) {
            (None, None) => None,
            (Some(end), None) | (None, Some(end)) => Some(end),
            (Some(a), Some(b)) => Some(a.min(b)),
        };
        match end {
            None => Some((start.to_vec(), vec![0])),
            Some(end) if end <= start => None,
            // Only the empty key is below "\0": the interval of it alone.
            Some([0]) => Some((start.to_vec(), Vec::new())),
            Some(end) => Some((start.to_vec(), end.to_vec())),
        }
    }

    /// The two spans a split at `key` makes; `key` must fall strictly inside.
    pub fn split_at(&self, key: &[u8]) -> (KeySpan, KeySpan) {
        assert!(
            self.contains(key) && key > self.start.as_slice(),
            "split key {key:?} is not inside {self:?}"
        );
        (
            KeySpan::new(self.start.clone(), Some(key.to_vec())),
            KeySpan::new(key.to_vec(), self.end.clone()),
        )
    }

    /// The span as snapshots and the local state record it.
    pub fn to_record(&self) -> KeySpanRecord {
        KeySpanRecord {
            start: self.start.clone().into(),
            end: self.end.clone().map(Into::into),
        }
    }

    /// The span a record describes (which this node wrote: a bad one is a bug).
    pub fn from_record(record: &KeySpanRecord) -> KeySpan {
        KeySpan {
            start: record.start.to_vec(),
            end: record.end.as_ref().map(|end| end.to_vec()),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        self.to_record().encode_to_vec()
    }

    pub(crate) fn decode(bytes: &[u8]) -> KeySpan {
        KeySpan::from_record(&KeySpanRecord::decode(bytes).expect("a stored span decodes"))
    }

    /// The bounds of the span's stored versions in the data partition.
    pub(crate) fn storage_bounds(&self) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        if self.is_none() {
            // An empty interval fjall accepts: [x, x).
            return (Bound::Included(Vec::new()), Bound::Excluded(Vec::new()));
        }
        let low = Bound::Included(key_prefix(&self.start));
        let high = match &self.end {
            None => Bound::Unbounded,
            Some(end) => Bound::Excluded(key_prefix(end)),
        };
        (low, high)
    }
}

/// Whether `spans` (disjoint, in key order) together hold every key of an etcd
/// interval.
pub fn spans_cover(spans: &[&KeySpan], key: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        return spans.iter().any(|span| span.contains(key));
    }
    let end = (range_end != [0]).then_some(range_end);
    if end.is_some_and(|end| end <= key) {
        return true; // an empty interval
    }
    let mut from = key.to_vec();
    loop {
        let Some(span) = spans.iter().find(|span| span.contains(&from)) else {
            return false;
        };
        match span.end() {
            None => return true,
            Some(span_end) if end.is_some_and(|end| end <= span_end) => return true,
            Some(span_end) => from = span_end.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::keys::versioned_key;
    use super::super::Revision;
    use super::*;

    fn inside(bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>), stored: &[u8]) -> bool {
        use std::ops::RangeBounds;
        bounds.contains(&stored.to_vec())
    }

    #[test]
    fn storage_bounds_hold_exactly_the_versions_of_the_spans_keys() {
        let span = KeySpan::new(b"b".to_vec(), Some(b"d".to_vec()));
        let bounds = span.storage_bounds();
        let keys: [&[u8]; 8] = [
            b"",
            b"a",
            b"a\xff",
            b"b",
            b"b\0",
            b"c\xff\xff",
            b"d",
            b"d\0",
        ];
        for key in keys {
            for revision in [0, 1, i64::MAX] {
                let stored = versioned_key(key, Revision(revision));
                assert_eq!(
                    inside(&bounds, &stored),
                    span.contains(key),
                    "{key:?} at {revision}"
                );
            }
        }
        let whole = KeySpan::whole().storage_bounds();
        let none = KeySpan::none().storage_bounds();
        for key in keys {
            assert!(inside(&whole, &versioned_key(key, Revision(3))));
            assert!(!inside(&none, &versioned_key(key, Revision(3))));
        }
    }

    #[test]
    fn covers_follows_etcds_interval_forms() {
        let span = KeySpan::new(b"b".to_vec(), Some(b"d".to_vec()));
        assert!(span.covers(b"b", b""));
        assert!(!span.covers(b"d", b""));
        assert!(span.covers(b"b", b"d"));
        assert!(!span.covers(b"b", b"d\0"));
        assert!(!span.covers(b"a", b"c"));
        assert!(!span.covers(b"b", b"\0"), "to the end of the keyspace");
        assert!(span.covers(b"c", b"a"), "an empty interval");
        let (left, right) = span.split_at(b"c");
        assert!(left.covers(b"b", b"c") && !left.covers(b"b", b"c\0"));
        assert!(right.covers(b"c", b"d") && !right.contains(b"b\xff"));
        assert!(KeySpan::whole().covers(b"", b"\0"));
        assert!(KeySpan::none().is_none() && !KeySpan::none().contains(b""));
        assert!(left.overlaps(&KeySpan::whole()) && !left.overlaps(&right));
        assert!(right.overlaps(&span) && !KeySpan::none().overlaps(&KeySpan::whole()));
        for span in [span, left, right, KeySpan::whole(), KeySpan::none()] {
            assert_eq!(KeySpan::decode(&span.encode()), span);
        }
    }

    #[test]
    fn spans_cover_an_interval_only_without_a_gap() {
        let left = KeySpan::new(Vec::new(), Some(b"g".to_vec()));
        let middle = KeySpan::new(b"g".to_vec(), Some(b"q".to_vec()));
        let right = KeySpan::new(b"q".to_vec(), None);
        let all = [&left, &middle, &right];
        assert!(spans_cover(&all, b"", b"\0"));
        assert!(spans_cover(&all, b"a", b"z"));
        assert!(spans_cover(&all, b"x", b""));
        assert!(spans_cover(&[&left, &right], b"a", b"g"));
        assert!(!spans_cover(&[&left, &right], b"a", b"g\0"), "a gap at g");
        assert!(
            !spans_cover(&[&left, &middle], b"a", b"\0"),
            "nothing from q on"
        );
        assert!(spans_cover(&[&left, &middle], b"a", b"q"));
        assert!(!spans_cover(&[&middle], b"f", b"h"));
        assert!(spans_cover(&[&middle], b"h", b"a"), "an empty interval");
        assert!(!spans_cover(&[], b"a", b""));
    }

    #[test]
    fn clip_keeps_the_part_of_an_interval_inside_the_span() {
        let span = KeySpan::new(b"b".to_vec(), Some(b"d".to_vec()));
        let clip = |key: &[u8], end: &[u8]| span.clip(key, end);
        let some = |key: &[u8], end: &[u8]| Some((key.to_vec(), end.to_vec()));
        assert_eq!(clip(b"c", b""), some(b"c", b""));
        assert_eq!(clip(b"d", b""), None);
        assert_eq!(clip(b"a", b"c"), some(b"b", b"c"));
        assert_eq!(clip(b"a", b"\0"), some(b"b", b"d"));
        assert_eq!(clip(b"", b"\0"), some(b"b", b"d"));
        assert_eq!(clip(b"c", b"z"), some(b"c", b"d"));
        assert_eq!(clip(b"d", b"z"), None);
        assert_eq!(clip(b"a", b"b"), None, "ends where the span starts");
        assert_eq!(clip(b"c", b"a"), None, "an empty interval");
        let right = KeySpan::new(b"m".to_vec(), None);
        assert_eq!(right.clip(b"a", b"\0"), some(b"m", b"\0"));
        assert_eq!(right.clip(b"a", b"n"), some(b"m", b"n"));
        assert_eq!(KeySpan::whole().clip(b"", b"\0"), some(b"", b"\0"));
        assert_eq!(KeySpan::none().clip(b"", b"\0"), None);
        // Every key the clipped interval names is in both the interval and the span.
        for key in [&b"a"[..], b"b", b"b\0", b"c", b"c\xff", b"d", b"z"] {
            for (start, end) in [(&b"a"[..], &b"c"[..]), (b"", b"\0"), (b"c", b"z")] {
                let in_interval = key >= start && (end == b"\0" || key < end);
                let in_clip = clip(start, end).is_some_and(|(s, e)| {
                    key >= s.as_slice() && (e == b"\0" || key < e.as_slice())
                });
                assert_eq!(in_clip, in_interval && span.contains(key), "{key:?}");
            }
        }
    }
}
