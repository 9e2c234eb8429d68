//! Which range holds a request's keys, from the spans of the ranges this node has
//! replicas of (every member holds every range until placement exists, so a node's own
//! replicas are its directory; one that lags learns a split when it applies it, and a
//! write routed by a stale view is sent back by the range at apply).

use std::sync::Arc;

use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::{KeyInterval, KeySpan};

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// One range holds every key of it.
    One(GroupId),
    /// Its keys fall in more than one range.
    Several,
    /// No range here holds its first key (a range being created on this node).
    Unknown,
}

/// The route of a request touching `intervals` (at least one), given the data ranges'
/// spans.
pub fn route(ranges: &[(GroupId, Arc<KeySpan>)], intervals: &[KeyInterval<'_>]) -> Route {
    let mut chosen: Option<GroupId> = None;
    for &(key, range_end) in intervals {
        let holder = ranges
            .iter()
            .find(|(_, span)| span.contains(key))
            .map(|(group, span)| (*group, span));
        let Some((group, span)) = holder else {
            return Route::Unknown;
        };
        if !span.covers(key, range_end) {
            return Route::Several;
        }
        match chosen {
            Some(previous) if previous != group => return Route::Several,
            _ => chosen = Some(group),
        }
    }
    chosen.map_or(Route::Unknown, Route::One)
}

/// Every range a request touching `intervals` reads, in key order (none for a request
/// without keys); None while some of its keys fall in no range here (a range being
/// created on this node).
pub fn touched(
    ranges: &[(GroupId, Arc<KeySpan>)],
    intervals: &[KeyInterval<'_>],
) -> Option<Vec<GroupId>> {
    let spans: Vec<&KeySpan> = ranges.iter().map(|(_, span)| span.as_ref()).collect();
    if !intervals
        .iter()
        .all(|&(key, range_end)| ostrakon_storage::mvcc::spans_cover(&spans, key, range_end))
    {
        return None;
    }
    let touched = ranges.iter().filter(|(_, span)| {
        intervals
            .iter()
            .any(|&(key, range_end)| span.clip(key, range_end).is_some())
    });
    Some(touched.map(|(group, _)| *group).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges() -> Vec<(GroupId, Arc<KeySpan>)> {
        vec![
            (
                GroupId(1),
                Arc::new(KeySpan::new(Vec::new(), Some(b"m".to_vec()))),
            ),
            (GroupId(2), Arc::new(KeySpan::new(b"m".to_vec(), None))),
        ]
    }

    #[test]
    fn a_request_goes_to_the_one_range_holding_all_its_keys() {
        let ranges = ranges();
        assert_eq!(route(&ranges, &[(b"a", b"")]), Route::One(GroupId(1)));
        assert_eq!(route(&ranges, &[(b"m", b"")]), Route::One(GroupId(2)));
        assert_eq!(route(&ranges, &[(b"a", b"m")]), Route::One(GroupId(1)));
        assert_eq!(route(&ranges, &[(b"x", b"\0")]), Route::One(GroupId(2)));
        assert_eq!(
            route(&ranges, &[(b"a", b""), (b"b", b"c")]),
            Route::One(GroupId(1))
        );
        assert_eq!(route(&ranges, &[(b"a", b"m\0")]), Route::Several);
        assert_eq!(route(&ranges, &[(b"", b"\0")]), Route::Several);
        assert_eq!(route(&ranges, &[(b"a", b""), (b"x", b"")]), Route::Several);
        assert_eq!(route(&ranges[1..], &[(b"a", b"")]), Route::Unknown);
    }

    #[test]
    fn a_read_touches_every_range_holding_some_of_its_keys() {
        let ranges = ranges();
        let (one, two) = (GroupId(1), GroupId(2));
        assert_eq!(touched(&ranges, &[(b"a", b"")]), Some(vec![one]));
        assert_eq!(touched(&ranges, &[(b"", b"\0")]), Some(vec![one, two]));
        assert_eq!(touched(&ranges, &[(b"n", b"\0")]), Some(vec![two]));
        assert_eq!(
            touched(&ranges, &[(b"x", b""), (b"a", b"")]),
            Some(vec![one, two])
        );
        assert_eq!(touched(&ranges, &[(b"c", b"a")]), Some(vec![]));
        assert_eq!(touched(&ranges[1..], &[(b"a", b"z")]), None);
    }
}
