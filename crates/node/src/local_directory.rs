//! The data ranges this node holds, in key order, as requests route by them. Kept up
//! to date change by change: a store tells it when its span changes, and the event loop
//! when a range comes or goes here; a read takes the changes since the last one. Built
//! again from every range for every request, then for every change, it was most of a
//! node's work while splitting into tens of thousands of ranges.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::{KeySpan, SpanListener};

/// The data ranges by (first key, range), each with its span. The range is part of the
/// key so that two ranges whose spans briefly share a first key (a merge half applied
/// here) are both listed.
pub type Ranges = BTreeMap<RangeStart, Arc<KeySpan>>;

/// Where a range is listed: its first key, and the range.
pub type RangeStart = (Vec<u8>, GroupId);

/// The directory as one read sees it; unchanged by later changes.
pub type Directory = Arc<Ranges>;

/// The directory and the ranges changed since it was last brought up to date.
#[derive(Default)]
pub struct LocalDirectory {
    changed: Mutex<HashSet<GroupId>>,
    state: Mutex<State>,
    /// The ranges here frozen for a merge (a few at a time): the merge queue looks at
    /// these at every look, not only when its paced pass over every range comes by.
    frozen: Mutex<HashSet<GroupId>>,
}

#[derive(Default)]
struct State {
    ranges: Directory,
    /// Where each range is listed in `ranges`.
    starts: HashMap<GroupId, Vec<u8>>,
}

impl SpanListener for LocalDirectory {
    fn span_changed(&self, group: GroupId) {
        self.changed(group);
    }

    fn frozen_changed(&self, group: GroupId, frozen: bool) {
        let mut ranges = self.frozen.lock().unwrap();
        if frozen {
            ranges.insert(group);
        } else {
            ranges.remove(&group);
        }
        crate::metrics::metrics()
            .ranges_frozen
            .set(ranges.len() as i64);
    }
}

impl LocalDirectory {
    /// `group` came, went, or changed its span: read it again at the next `get`.
    pub fn changed(&self, group: GroupId) {
        self.changed.lock().unwrap().insert(group);
    }

    /// The ranges here frozen for a merge, as their stores last told (a range merged
    /// away or removed while frozen is listed until the next `get`).
    pub fn frozen(&self) -> Vec<GroupId> {
        self.frozen.lock().unwrap().iter().copied().collect()
    }

    /// The directory, with every range changed since the last call read again through
    /// `span_of` (None: not a data range here, or gone). The changes are taken before
    /// the spans are read, so a change made meanwhile is read again by the next call.
    /// The map is copied only if a reader still holds the previous one.
    pub fn get(&self, span_of: impl Fn(GroupId) -> Option<Arc<KeySpan>>) -> Directory {
        let mut state = self.state.lock().unwrap();
        let changed = std::mem::take(&mut *self.changed.lock().unwrap());
        if changed.is_empty() {
            return state.ranges.clone();
        }
        let State { ranges, starts } = &mut *state;
        let ranges_now = Arc::make_mut(ranges);
        for group in changed {
            if let Some(start) = starts.remove(&group) {
                ranges_now.remove(&(start, group));
            }
            let span = span_of(group);
            if span.is_none() {
                // Gone from here: no longer frozen here either.
                self.frozen_changed(group, false);
            }
            if let Some(span) = span.filter(|span| !span.is_none()) {
                let start = span.start().to_vec();
                ranges_now.insert((start.clone(), group), span);
                starts.insert(group, start);
            }
        }
        state.ranges.clone()
    }
}

/// The ranges of `ranges` whose spans overlap `span`, from the last one on. The ranges
/// here never overlap one another (a split or a merge changes both spans in one apply of
/// the event loop, which is where this is asked), so they end in the order they start:
/// the walk back stops at the first that ends at or before `span` starts, and costs a
/// search and the ranges it finds, not a look at every range.
pub fn overlapping<'a>(
    ranges: &'a Ranges,
    span: &'a KeySpan,
) -> impl Iterator<Item = GroupId> + 'a {
    let before_end = match span.end() {
        Some(end) => ranges.range(..(end.to_vec(), GroupId(0))),
        None => ranges.range(..),
    };
    before_end
        .rev()
        .take_while(move |(_, other)| other.end().is_none_or(|end| end > span.start()))
        .filter(move |(_, other)| other.overlaps(span))
        .map(|((_, group), _)| *group)
}

/// The range here, other than `group`, the ranges merged into it (`absorbed`) and the
/// meta range, that a snapshot of `group` holding `span` would overlap: one in
/// `ranges`, or one whose snapshot was taken earlier in the event loop's round (`taken`:
/// not installed yet, so not in `ranges`, and installed in the same round as this one).
pub fn overlapping_for_snapshot(
    ranges: &Ranges,
    taken: &[(GroupId, KeySpan)],
    group: GroupId,
    span: &KeySpan,
    absorbed: &[GroupId],
) -> Option<GroupId> {
    let other = |other: &GroupId| *other != group && !absorbed.contains(other);
    overlapping(ranges, span)
        .find(|found| other(found) && *found != crate::META_GROUP)
        .or_else(|| {
            taken
                .iter()
                .find(|(found, taken)| other(found) && taken.overlaps(span))
                .map(|(found, _)| *found)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: &str, end: Option<&str>) -> Arc<KeySpan> {
        Arc::new(KeySpan::new(
            start.as_bytes().to_vec(),
            end.map(|end| end.as_bytes().to_vec()),
        ))
    }

    fn groups(directory: &Directory) -> Vec<GroupId> {
        directory.keys().map(|(_, group)| *group).collect()
    }

    #[test]
    fn the_directory_reads_again_only_the_ranges_that_changed() {
        let directory = LocalDirectory::default();
        let mut spans: HashMap<GroupId, Arc<KeySpan>> = HashMap::new();
        spans.insert(GroupId(2), span("", Some("m")));
        spans.insert(GroupId(3), span("m", None));
        spans.insert(GroupId(4), Arc::new(KeySpan::none()));
        for group in [2, 3, 4] {
            directory.changed(GroupId(group));
        }
        let built = directory.get(|group| spans.get(&group).cloned());
        assert_eq!(
            groups(&built),
            vec![GroupId(2), GroupId(3)],
            "in key order, no empty span"
        );
        // Unchanged: nothing is read.
        let again = directory.get(|_| panic!("read with nothing changed"));
        assert!(Arc::ptr_eq(&built, &again));
        // Range 3 splits at "t" into 3 and 5: only those two are read.
        spans.insert(GroupId(3), span("m", Some("t")));
        spans.insert(GroupId(5), span("t", None));
        directory.span_changed(GroupId(3));
        directory.changed(GroupId(5));
        let split = directory.get(|group| {
            assert!(group == GroupId(3) || group == GroupId(5), "read {group:?}");
            spans.get(&group).cloned()
        });
        assert_eq!(groups(&split), vec![GroupId(2), GroupId(3), GroupId(5)]);
        assert_eq!(
            groups(&built),
            vec![GroupId(2), GroupId(3)],
            "a held directory stays"
        );
        // Range 5 merges into 3: both listed while their spans share a start, then 5 goes.
        spans.insert(GroupId(3), span("m", None));
        directory.span_changed(GroupId(3));
        spans.remove(&GroupId(5));
        directory.changed(GroupId(5));
        let merged = directory.get(|group| spans.get(&group).cloned());
        assert_eq!(groups(&merged), vec![GroupId(2), GroupId(3)]);
        assert_eq!(
            merged.get(&(b"m".to_vec(), GroupId(3))).unwrap().end(),
            None
        );
    }

    #[test]
    fn the_frozen_ranges_are_listed_until_they_thaw_or_go() {
        let directory = LocalDirectory::default();
        directory.frozen_changed(GroupId(3), true);
        directory.frozen_changed(GroupId(4), true);
        let mut frozen = directory.frozen();
        frozen.sort();
        assert_eq!(frozen, vec![GroupId(3), GroupId(4)]);
        directory.frozen_changed(GroupId(3), false);
        assert_eq!(directory.frozen(), vec![GroupId(4)], "3 thawed");
        // Range 4 merged away while frozen: gone at the next read of the directory.
        directory.changed(GroupId(4));
        directory.get(|_| None);
        assert!(directory.frozen().is_empty(), "4 is gone");
    }

    #[test]
    fn the_ranges_overlapping_a_span_are_found_without_a_look_at_every_range() {
        let ranges: Ranges = [
            (2, span("", Some("c"))),
            (3, span("c", Some("g"))),
            (4, span("g", Some("m"))),
            (5, span("m", None)),
        ]
        .into_iter()
        .map(|(group, span)| ((span.start().to_vec(), GroupId(group)), span))
        .collect();
        let found = |start: &str, end: Option<&str>| {
            let span = span(start, end);
            let mut found: Vec<u64> = overlapping(&ranges, &span).map(|g| g.0).collect();
            found.sort();
            found
        };
        assert_eq!(found("c", Some("g")), vec![3]);
        assert_eq!(found("d", Some("h")), vec![3, 4]);
        assert_eq!(found("a", None), vec![2, 3, 4, 5]);
        assert_eq!(
            found("g", Some("m")),
            vec![4],
            "touching spans do not overlap"
        );
        assert_eq!(found("z", None), vec![5]);
        assert_eq!(found("", Some("a")), vec![2]);
    }

    #[test]
    fn a_snapshot_overlapping_one_taken_earlier_in_the_round_is_refused() {
        let ranges: Ranges = [(2, span("", Some("c")))]
            .into_iter()
            .map(|(group, span)| ((span.start().to_vec(), GroupId(group)), span))
            .collect();
        // Range 5's snapshot, [c, g), was taken this round: not in the directory yet.
        let taken = vec![(GroupId(5), KeySpan::new(b"c".to_vec(), Some(b"g".to_vec())))];
        let check = |group: u64, start: &str, end: Option<&str>, absorbed: &[GroupId]| {
            overlapping_for_snapshot(&ranges, &taken, GroupId(group), &span(start, end), absorbed)
        };
        assert_eq!(check(7, "e", Some("h"), &[]), Some(GroupId(5)));
        assert_eq!(
            check(7, "a", Some("d"), &[]),
            Some(GroupId(2)),
            "installed first"
        );
        assert_eq!(check(7, "g", None, &[]), None, "touching only");
        assert_eq!(
            check(5, "c", Some("h"), &[]),
            None,
            "its own earlier snapshot"
        );
        assert_eq!(
            check(7, "c", Some("z"), &[GroupId(5)]),
            None,
            "merged into it"
        );
    }
}
