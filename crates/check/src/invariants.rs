//! Checkers for the guarantees beyond linearizability that an etcd-like store gives, each
//! over what real clients recorded: revisions never go back in real time, an
//! acknowledged write is never lost and none applies twice, and watches deliver every
//! event once, in order, and a transaction's events together.

use std::collections::{BTreeMap, BTreeSet, HashSet};

/// At most this many examples of a violation are kept.
const EXAMPLES_MAX: usize = 10;

/// A response's revision, with when its request was sent and answered (same clock units
/// as the histories).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionObservation {
    /// The client that saw it.
    pub client: u64,
    /// When the request was sent.
    pub invoked_at: u64,
    /// When the response arrived.
    pub completed_at: u64,
    /// The response header's revision.
    pub revision: i64,
}

/// Every response begun after another completed must carry a revision at least as high:
/// the store's revision never goes back in real time, whichever member answers. Returns
/// examples of responses that broke it (empty when none did).
pub fn revisions_never_decrease(observations: &[RevisionObservation]) -> Vec<String> {
    let mut by_completion: Vec<&RevisionObservation> = observations.iter().collect();
    by_completion.sort_by_key(|o| o.completed_at);
    let mut by_invocation: Vec<&RevisionObservation> = observations.iter().collect();
    by_invocation.sort_by_key(|o| o.invoked_at);
    let mut violations = Vec::new();
    let mut next_completed = 0;
    // The highest revision among responses that completed before the current invocation.
    let mut floor: Option<&RevisionObservation> = None;
    for later in by_invocation {
        while next_completed < by_completion.len()
            && by_completion[next_completed].completed_at < later.invoked_at
        {
            let done = by_completion[next_completed];
            if floor.is_none_or(|f| done.revision > f.revision) {
                floor = Some(done);
            }
            next_completed += 1;
        }
        if let Some(earlier) = floor {
            if later.revision < earlier.revision && violations.len() < EXAMPLES_MAX {
                violations.push(format!(
                    "client {} saw revision {} at {}..{}, after client {} had seen revision {} \
                     (completed at {})",
                    later.client,
                    later.revision,
                    later.invoked_at,
                    later.completed_at,
                    earlier.client,
                    earlier.revision,
                    earlier.completed_at
                ));
            }
        }
    }
    violations
}

/// What a client learned of one element it added to a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Acknowledged: it must be present at the end.
    Ok,
    /// Definitely not applied: it must be absent.
    Failed,
    /// Either; but if present, applied once.
    Unknown,
}

/// The set checker's findings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetReport {
    /// Elements acknowledged.
    pub acknowledged: usize,
    /// Unknown elements found present at the end.
    pub unknown_present: usize,
    /// Acknowledged elements missing at the end.
    pub lost: Vec<String>,
    /// Elements applied more than once (version above 1).
    pub duplicated: Vec<String>,
    /// Elements reported failed that are present anyway.
    pub failed_but_present: Vec<String>,
    /// Elements present that no client ever added.
    pub unexpected: Vec<String>,
}

impl SetReport {
    /// Whether nothing was lost, duplicated or invented.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.failed_but_present.is_empty()
            && self.unexpected.is_empty()
    }
}

/// Compares the elements clients added (each added once, under a unique key) with the
/// final state: each present key with its version, which counts how often it was put.
pub fn check_set(
    added: &BTreeMap<String, AddOutcome>,
    present: &BTreeMap<String, i64>,
) -> SetReport {
    let mut report = SetReport::default();
    for (element, outcome) in added {
        let version = present.get(element);
        match (outcome, version) {
            (AddOutcome::Ok, None) => report.lost.push(element.clone()),
            (AddOutcome::Failed, Some(_)) => report.failed_but_present.push(element.clone()),
            (AddOutcome::Unknown, Some(_)) => report.unknown_present += 1,
            _ => {}
        }
        if *outcome == AddOutcome::Ok {
            report.acknowledged += 1;
        }
        if version.is_some_and(|&v| v > 1) {
            report.duplicated.push(element.clone());
        }
    }
    for element in present.keys() {
        if !added.contains_key(element) {
            report.unexpected.push(element.clone());
        }
    }
    report
}

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchEvent {
    /// The revision of the change (the key's mod revision, or the delete's revision).
    pub revision: i64,
    /// The key.
    pub key: String,
    /// The new value; empty for a delete.
    pub value: String,
    /// Put or delete.
    pub is_put: bool,
}

/// The watch checker's findings for one watcher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchReport {
    /// Events received.
    pub events: usize,
    /// Events that came after an event of a higher revision (ordered).
    pub out_of_order: Vec<String>,
    /// Events received twice (unique).
    pub duplicates: Vec<String>,
    /// Events of the reference the watcher never received (reliable).
    pub missing: Vec<String>,
    /// Events received that the reference does not have.
    pub unexpected: Vec<String>,
    /// Revisions whose events arrived split over several responses (atomic).
    pub split_revisions: Vec<i64>,
}

impl WatchReport {
    /// Whether every guarantee held.
    pub fn is_valid(&self) -> bool {
        self.out_of_order.is_empty()
            && self.duplicates.is_empty()
            && self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.split_revisions.is_empty()
    }
}

fn push_example<T>(examples: &mut Vec<T>, example: T) {
    if examples.len() < EXAMPLES_MAX {
        examples.push(example);
    }
}

/// Checks one watcher's responses (each a batch of events, in arrival order) against the
/// reference: every event of the watched range from the watch's start revision on, in
/// order. The watcher may have reconnected, resuming after the last revision it saw.
pub fn check_watch(responses: &[Vec<WatchEvent>], reference: &[WatchEvent]) -> WatchReport {
    let mut report = WatchReport::default();
    let mut seen: HashSet<&WatchEvent> = HashSet::new();
    let mut last_revision = i64::MIN;
    // The response each revision arrived in.
    let mut response_of: BTreeMap<i64, usize> = BTreeMap::new();
    let mut split: BTreeSet<i64> = BTreeSet::new();
    for (index, response) in responses.iter().enumerate() {
        for event in response {
            report.events += 1;
            if event.revision < last_revision {
                push_example(
                    &mut report.out_of_order,
                    format!("revision {} after {}", event.revision, last_revision),
                );
            }
            last_revision = last_revision.max(event.revision);
            if !seen.insert(event) {
                push_example(
                    &mut report.duplicates,
                    format!("{} at revision {}", event.key, event.revision),
                );
                continue;
            }
            if *response_of.entry(event.revision).or_insert(index) != index {
                split.insert(event.revision);
            }
        }
    }
    report.split_revisions = split.into_iter().take(EXAMPLES_MAX).collect();
    let expected: HashSet<&WatchEvent> = reference.iter().collect();
    for event in reference {
        if !seen.contains(event) {
            push_example(
                &mut report.missing,
                format!("{} at revision {}", event.key, event.revision),
            );
        }
    }
    for event in seen {
        if !expected.contains(event) {
            push_example(
                &mut report.unexpected,
                format!("{} at revision {}", event.key, event.revision),
            );
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(
        client: u64,
        invoked_at: u64,
        completed_at: u64,
        revision: i64,
    ) -> RevisionObservation {
        RevisionObservation {
            client,
            invoked_at,
            completed_at,
            revision,
        }
    }

    #[test]
    fn a_revision_lower_than_one_seen_before_is_a_violation() {
        let ok = [
            observed(1, 0, 10, 5),
            observed(2, 11, 20, 5),
            observed(1, 12, 30, 7),
        ];
        assert!(revisions_never_decrease(&ok).is_empty());
        // Overlapping requests may see revisions in either order.
        let overlapping = [observed(1, 0, 10, 7), observed(2, 5, 20, 5)];
        assert!(revisions_never_decrease(&overlapping).is_empty());
        let stale = [observed(1, 0, 10, 7), observed(2, 11, 20, 5)];
        let violations = revisions_never_decrease(&stale);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].contains("revision 5"), "{violations:?}");
    }

    #[test]
    fn the_set_checker_finds_lost_duplicated_and_invented_elements() {
        let added: BTreeMap<String, AddOutcome> = [
            ("a", AddOutcome::Ok),
            ("b", AddOutcome::Ok),
            ("c", AddOutcome::Unknown),
            ("d", AddOutcome::Failed),
            ("e", AddOutcome::Unknown),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let good: BTreeMap<String, i64> = [("a", 1), ("b", 1), ("c", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let report = check_set(&added, &good);
        assert!(report.is_valid(), "{report:?}");
        assert_eq!((report.acknowledged, report.unknown_present), (2, 1));
        let bad: BTreeMap<String, i64> = [("a", 1), ("c", 2), ("d", 1), ("z", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let report = check_set(&added, &bad);
        assert_eq!(report.lost, vec!["b".to_string()]);
        assert_eq!(report.duplicated, vec!["c".to_string()]);
        assert_eq!(report.failed_but_present, vec!["d".to_string()]);
        assert_eq!(report.unexpected, vec!["z".to_string()]);
    }

    fn put(revision: i64, key: &str) -> WatchEvent {
        WatchEvent {
            revision,
            key: key.into(),
            value: format!("v{revision}"),
            is_put: true,
        }
    }

    #[test]
    fn the_watch_checker_finds_each_broken_guarantee() {
        let reference = vec![put(2, "a"), put(3, "b"), put(3, "c"), put(4, "a")];
        let good = vec![
            vec![put(2, "a")],
            vec![put(3, "b"), put(3, "c")],
            vec![put(4, "a")],
        ];
        assert!(check_watch(&good, &reference).is_valid());

        let bad = vec![
            vec![put(2, "a"), put(3, "b")],
            vec![put(3, "c")],
            vec![put(2, "a")],
            vec![put(9, "x")],
        ];
        let report = check_watch(&bad, &reference);
        assert_eq!(report.split_revisions, vec![3]);
        assert_eq!(report.out_of_order.len(), 1, "{report:?}");
        assert_eq!(report.duplicates.len(), 1, "{report:?}");
        assert_eq!(report.missing.len(), 1, "{report:?}");
        assert_eq!(report.unexpected.len(), 1, "{report:?}");
        assert!(!report.is_valid());
    }
}
