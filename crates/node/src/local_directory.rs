//! The data ranges this node holds, in key order, as requests route by them: built once
//! and kept until a range comes or goes here or a span changes, not rebuilt (a lock,
//! a copy and a sort of every range) for every request. At 3,000 ranges the rebuild
//! was a large part of a request; at 100,000 it would be most of it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ostrakon_raft::GroupId;
use ostrakon_storage::mvcc::KeySpan;

/// The data ranges in key order, each with its span.
pub type Directory = Arc<[(GroupId, Arc<KeySpan>)]>;

/// The cached directory and what it was built from.
#[derive(Default)]
pub struct LocalDirectory {
    /// Bumped whenever a group comes or goes here.
    groups_changes: AtomicU64,
    cached: Mutex<Option<Built>>,
}

struct Built {
    groups_changes: u64,
    span_changes: u64,
    ranges: Directory,
}

impl LocalDirectory {
    /// A group was added here or removed.
    pub fn groups_changed(&self) {
        self.groups_changes.fetch_add(1, Ordering::Release);
    }

    /// The directory, built by `build` (the data ranges with their spans, in any order)
    /// if a group or a span changed since it was last built. The counts are read before
    /// building, so a change made during a build makes the next call build again.
    pub fn get(&self, build: impl FnOnce() -> Vec<(GroupId, Arc<KeySpan>)>) -> Directory {
        let groups_changes = self.groups_changes.load(Ordering::Acquire);
        let span_changes = ostrakon_storage::mvcc::span_changes();
        let mut cached = self.cached.lock().unwrap();
        if let Some(built) = cached.as_ref() {
            if built.groups_changes == groups_changes && built.span_changes == span_changes {
                return built.ranges.clone();
            }
        }
        let mut ranges = build();
        ranges.retain(|(_, span)| !span.is_none());
        ranges.sort_by(|a, b| a.1.start().cmp(b.1.start()));
        let ranges: Directory = ranges.into();
        *cached = Some(Built {
            groups_changes,
            span_changes,
            ranges: ranges.clone(),
        });
        ranges
    }
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

    #[test]
    fn the_directory_is_rebuilt_only_after_a_group_changed() {
        let directory = LocalDirectory::default();
        let built = directory.get(|| {
            vec![
                (GroupId(3), span("m", None)),
                (GroupId(2), span("", Some("m"))),
                (GroupId(0), Arc::new(KeySpan::none())),
            ]
        });
        let groups: Vec<GroupId> = built.iter().map(|(group, _)| *group).collect();
        assert_eq!(
            groups,
            vec![GroupId(2), GroupId(3)],
            "in key order, no empty span"
        );
        // Unchanged: the build is not run.
        let again = directory.get(|| panic!("rebuilt with nothing changed"));
        assert!(Arc::ptr_eq(&built, &again));
        directory.groups_changed();
        let rebuilt = directory.get(|| vec![(GroupId(2), span("", None))]);
        assert_eq!(rebuilt.len(), 1);
    }
}
