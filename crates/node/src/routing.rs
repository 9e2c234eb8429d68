//! Which range holds a request's keys, from the spans of the ranges this node has
//! replicas of (every member holds every range until placement exists, so a node's own
//! replicas are its directory; one that lags learns a split when it applies it, and a
//! write routed by a stale view is sent back by the range at apply).

use std::sync::Arc;

use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::{KeyInterval, KeySpan};

use crate::local_directory::{RangeStart, Ranges};

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

/// The range of the directory holding `key` (the last one starting at or before it, if
/// it holds it), by a search of the ordered map: a request's route costs about the same
/// at 3 ranges and at 100,000.
fn holder<'a>(ranges: &'a Ranges, key: &[u8]) -> Option<(&'a RangeStart, &'a Arc<KeySpan>)> {
    ranges
        .range(..=(key.to_vec(), GroupId(u64::MAX)))
        .next_back()
        .filter(|(_, span)| span.contains(key))
}

/// The route of a request touching `intervals` (at least one), given the data ranges
/// (the node's directory).
pub fn route(ranges: &Ranges, intervals: &[KeyInterval<'_>]) -> Route {
    let mut chosen: Option<GroupId> = None;
    for &(key, range_end) in intervals {
        let Some(((_, group), span)) = holder(ranges, key) else {
            return Route::Unknown;
        };
        let group = *group;
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
/// created on this node). Each interval costs a search of the directory and a walk over
/// the ranges it touches.
pub fn touched(ranges: &Ranges, intervals: &[KeyInterval<'_>]) -> Option<Vec<GroupId>> {
    let mut touched = std::collections::BTreeSet::new();
    for &(key, range_end) in intervals {
        if range_end.is_empty() {
            touched.insert(holder(ranges, key)?.0.clone());
            continue;
        }
        // etcd's interval: "\0" is every key from `key` on.
        let end = (range_end != [0]).then_some(range_end);
        if end.is_some_and(|end| end <= key) {
            continue; // no key
        }
        let (first, _) = holder(ranges, key)?;
        let mut walk = ranges.range(first.clone()..);
        let mut reached: Option<&[u8]> = None;
        loop {
            let Some((at, span)) = walk.next() else {
                return None; // the keyspace's end is in no range here
            };
            // The next range must start where the last one ended: a gap is a range
            // being created here.
            if reached.is_some_and(|reached| span.start() > reached) {
                return None;
            }
            touched.insert(at.clone());
            let Some(span_end) = span.end() else {
                break;
            };
            if end.is_some_and(|end| end <= span_end) {
                break;
            }
            reached = Some(span_end);
        }
    }
    Some(touched.into_iter().map(|(_, group)| group).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The directory of `ranges`.
    fn directory(ranges: Vec<(GroupId, Arc<KeySpan>)>) -> Ranges {
        ranges
            .into_iter()
            .map(|(group, span)| ((span.start().to_vec(), group), span))
            .collect()
    }

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
        let all = ranges();
        let ranges = directory(all.clone());
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
        assert_eq!(
            route(&directory(all[1..].to_vec()), &[(b"a", b"")]),
            Route::Unknown
        );
    }

    #[test]
    fn a_read_touches_every_range_holding_some_of_its_keys() {
        let all = ranges();
        let ranges = directory(all.clone());
        let (one, two) = (GroupId(1), GroupId(2));
        assert_eq!(touched(&ranges, &[(b"a", b"")]), Some(vec![one]));
        assert_eq!(touched(&ranges, &[(b"", b"\0")]), Some(vec![one, two]));
        assert_eq!(touched(&ranges, &[(b"n", b"\0")]), Some(vec![two]));
        assert_eq!(
            touched(&ranges, &[(b"x", b""), (b"a", b"")]),
            Some(vec![one, two])
        );
        assert_eq!(touched(&ranges, &[(b"c", b"a")]), Some(vec![]));
        assert_eq!(
            touched(&directory(all[1..].to_vec()), &[(b"a", b"z")]),
            None
        );
    }

    /// 100 ranges: `[, k01)`, `[k01, k02)`, ... `[k99, +inf)`, groups 0 to 99.
    fn many_ranges() -> Vec<(GroupId, Arc<KeySpan>)> {
        let bound = |i: u64| format!("k{i:02}").into_bytes();
        (0..100u64)
            .map(|i| {
                let start = if i == 0 { Vec::new() } else { bound(i) };
                let end = (i < 99).then(|| bound(i + 1));
                (GroupId(i), Arc::new(KeySpan::new(start, end)))
            })
            .collect()
    }

    #[test]
    fn among_many_ranges_each_key_finds_the_one_holding_it() {
        let all = many_ranges();
        let ranges = directory(all.clone());
        assert_eq!(route(&ranges, &[(b"a", b"")]), Route::One(GroupId(0)));
        assert_eq!(route(&ranges, &[(b"k01", b"")]), Route::One(GroupId(1)));
        assert_eq!(route(&ranges, &[(b"k41x", b"")]), Route::One(GroupId(41)));
        assert_eq!(route(&ranges, &[(b"k99", b"\0")]), Route::One(GroupId(99)));
        assert_eq!(route(&ranges, &[(b"k41", b"k43")]), Route::Several);
        assert_eq!(
            touched(&ranges, &[(b"k41", b"k43")]),
            Some(vec![GroupId(41), GroupId(42)])
        );
        assert_eq!(
            touched(&ranges, &[(b"k98x", b"\0"), (b"k05", b"")]),
            Some(vec![GroupId(5), GroupId(98), GroupId(99)])
        );
        assert_eq!(
            touched(&ranges, &[(b"", b"\0")]).map(|g| g.len()),
            Some(100)
        );
        // A gap (range 50 not created here yet): a read across it waits, one beside it
        // does not.
        let mut gapped = all.clone();
        gapped.remove(50);
        let gapped = directory(gapped);
        assert_eq!(touched(&gapped, &[(b"k49", b"k51")]), None);
        assert_eq!(route(&gapped, &[(b"k50", b"")]), Route::Unknown);
        assert_eq!(
            touched(&gapped, &[(b"k48", b"k50")]),
            Some(vec![GroupId(48), GroupId(49)])
        );
    }
}
