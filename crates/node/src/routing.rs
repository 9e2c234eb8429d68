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

/// Which of `ranges` (in key order, as the node's directory keeps them) holds `key`, by
/// binary search: a request's route costs the same at 3 ranges and at 100,000.
fn holder(ranges: &[(GroupId, Arc<KeySpan>)], key: &[u8]) -> Option<usize> {
    let after = ranges.partition_point(|(_, span)| span.start() <= key);
    let index = after.checked_sub(1)?;
    ranges[index].1.contains(key).then_some(index)
}

/// The route of a request touching `intervals` (at least one), given the data ranges'
/// spans in key order.
pub fn route(ranges: &[(GroupId, Arc<KeySpan>)], intervals: &[KeyInterval<'_>]) -> Route {
    let mut chosen: Option<GroupId> = None;
    for &(key, range_end) in intervals {
        let Some(index) = holder(ranges, key) else {
            return Route::Unknown;
        };
        let (group, span) = (ranges[index].0, &ranges[index].1);
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
/// created on this node). `ranges` are in key order: each interval costs a binary search
/// and a walk over the ranges it touches.
pub fn touched(
    ranges: &[(GroupId, Arc<KeySpan>)],
    intervals: &[KeyInterval<'_>],
) -> Option<Vec<GroupId>> {
    let mut touched = std::collections::BTreeSet::new();
    for &(key, range_end) in intervals {
        if range_end.is_empty() {
            touched.insert(holder(ranges, key)?);
            continue;
        }
        // etcd's interval: "\0" is every key from `key` on.
        let end = (range_end != [0]).then_some(range_end);
        if end.is_some_and(|end| end <= key) {
            continue; // no key
        }
        let mut index = holder(ranges, key)?;
        loop {
            touched.insert(index);
            let Some(span_end) = ranges[index].1.end() else {
                break;
            };
            if end.is_some_and(|end| end <= span_end) {
                break;
            }
            // The next range must start where this one ends: a gap is a range being
            // created here.
            let next = ranges.get(index + 1)?;
            if next.1.start() > span_end {
                return None;
            }
            index += 1;
        }
    }
    Some(touched.into_iter().map(|index| ranges[index].0).collect())
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
        let ranges = many_ranges();
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
        let mut gapped = ranges.clone();
        gapped.remove(50);
        assert_eq!(touched(&gapped, &[(b"k49", b"k51")]), None);
        assert_eq!(route(&gapped, &[(b"k50", b"")]), Route::Unknown);
        assert_eq!(
            touched(&gapped, &[(b"k48", b"k50")]),
            Some(vec![GroupId(48), GroupId(49)])
        );
    }
}
