//! Prepares waiting in line for a range another transaction across ranges holds
//! (docs/RANGES.md, "Many clients on the same ranges: a line per range").
//!
//! Without a line, a coordinator whose prepare met a lock asked the range again every
//! millisecond, and whichever ask landed first after the lock ended won: with 64
//! clients on the same two ranges some lost many times in a row, past their deadline.
//! A prepare its coordinator marks `waits_in_line` is parked here by the range's leader
//! instead, and proposed once the range is free, in the order they came. Coordinators
//! mark only the prepares of their key-ordered phase, where they hold no range after
//! this one, so waiting in line never closes a cycle of transactions waiting for each
//! other. While anyone waits, or a prepare let in has not applied yet, a new prepare
//! joins the line (marked) or is answered "locked" (unmarked): none overtakes it.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use ostrakon_proto::peer::WriteRequest;
use ostrakon_raft::GroupId;

use crate::input::WriteResponder;

/// Prepares parked on a node at most, over all its ranges; beyond it a prepare is
/// answered "locked" and its coordinator asks again, as before lines existed.
pub(crate) const PARKED_PREPARES_MAX: usize = 4096;

/// How long a prepare let in may wait for its revision from the oracle before the line
/// stops counting on it (its fetch failed and answered it: the next may go).
const FETCH_UNSEEN_MAX: Duration = Duration::from_secs(1);

/// How long a plain write (one taking no lock: a Put, DeleteRange or Txn within the
/// range) waits in a line at most; then it is answered "locked" and routed again. A
/// plain write forwarded by another member shares its peer call's answer with others,
/// so it must not wait long; it usually waits for one lock, a few milliseconds.
const PLAIN_WRITE_WAIT_MAX: Duration = Duration::from_millis(50);

/// A prepare waiting in line, and where its answer goes.
pub(crate) struct Parked {
    pub write: WriteRequest,
    pub respond: WriteResponder,
}

/// What the range's leader does with a prepare.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The range is free: proposed now.
    Propose,
    /// The range is taken and the prepare waits in line: parked.
    Park,
    /// The range is taken and the prepare does not wait (or the node's lines are full):
    /// answered "locked" at once.
    Refuse,
}

/// The leader's choice for a prepare, given whether it `waits_in_line`, whether the
/// range is `taken` (held by a lock, a prepare let in and not applied, or anyone in
/// line) and whether the node's lines have `room`.
pub(crate) fn admission(waits_in_line: bool, taken: bool, room: bool) -> Admission {
    match (taken, waits_in_line && room) {
        (false, _) => Admission::Propose,
        (true, true) => Admission::Park,
        (true, false) => Admission::Refuse,
    }
}

#[derive(Default)]
struct Line {
    parked: VecDeque<Parked>,
    /// Plain writes a lock held off, with when they came: all let in, ahead of the next
    /// prepare, as soon as the range is free (they take no lock, so they hold nobody
    /// up; behind the prepares, they would wait for every transaction in line).
    writes: VecDeque<(Parked, Instant)>,
    /// A prepare let in that waits for its revision from the oracle (so not in the log
    /// yet), since when.
    fetching_since: Option<Instant>,
}

impl Line {
    fn fetching(&self, now: Instant) -> bool {
        self.fetching_since
            .is_some_and(|since| now.duration_since(since) < FETCH_UNSEEN_MAX)
    }

    fn is_idle(&self, now: Instant) -> bool {
        self.parked.is_empty() && self.writes.is_empty() && !self.fetching(now)
    }
}

/// The lines of the ranges this node leads, kept only while someone is in one or a
/// prepare let in waits for its revision.
#[derive(Default)]
pub(crate) struct PrepareLines {
    lines: HashMap<GroupId, Line>,
    parked_total: usize,
}

impl PrepareLines {
    /// Whether a prepare of `group` waits in line, or one let in waits for its revision.
    pub fn busy(&self, group: GroupId, now: Instant) -> bool {
        self.lines
            .get(&group)
            .is_some_and(|line| !line.is_idle(now))
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn has_room(&self) -> bool {
        self.parked_total < PARKED_PREPARES_MAX
    }

    /// Prepares parked on this node, over all its ranges.
    pub fn parked_total(&self) -> usize {
        self.parked_total
    }

    /// Puts `parked` at the end of `group`'s line.
    pub fn park(&mut self, group: GroupId, parked: Parked) {
        assert!(self.has_room(), "a prepare parked beyond the node's bound");
        self.lines
            .entry(group)
            .or_default()
            .parked
            .push_back(parked);
        self.parked_total += 1;
    }

    /// Puts the plain write `parked`, held off by a lock, in `group`'s line.
    pub fn park_write(&mut self, group: GroupId, parked: Parked, now: Instant) {
        assert!(self.has_room(), "a write parked beyond the node's bound");
        self.lines
            .entry(group)
            .or_default()
            .writes
            .push_back((parked, now));
        self.parked_total += 1;
    }

    /// The plain writes of `group`'s line to let in now, in the order they came: all of
    /// them if the range is `free` (no lock, no prepare in its log) and no prepare let
    /// in waits for its revision. And those that waited `PLAIN_WRITE_WAIT_MAX`, to be
    /// answered "locked".
    pub fn take_writes(
        &mut self,
        group: GroupId,
        now: Instant,
        free: bool,
    ) -> (Vec<Parked>, Vec<Parked>) {
        let Some(line) = self.lines.get_mut(&group) else {
            return (Vec::new(), Vec::new());
        };
        let before = line.writes.len();
        line.writes
            .retain(|(parked, _)| !parked.respond.is_closed());
        let mut gone = before - line.writes.len();
        let (mut let_in, mut expired) = (Vec::new(), Vec::new());
        if free && !line.fetching(now) {
            let_in = line.writes.drain(..).map(|(parked, _)| parked).collect();
        } else {
            while let Some((_, since)) = line.writes.front() {
                if now.duration_since(*since) < PLAIN_WRITE_WAIT_MAX {
                    break;
                }
                expired.push(line.writes.pop_front().expect("a front").0);
            }
        }
        gone += let_in.len() + expired.len();
        self.parked_total -= gone;
        if line.is_idle(now) {
            self.lines.remove(&group);
        }
        (let_in, expired)
    }

    /// A prepare of `group` let in now waits for its revision from the oracle.
    pub fn fetching(&mut self, group: GroupId, now: Instant) {
        self.lines.entry(group).or_default().fetching_since = Some(now);
    }

    /// The prepare of `group` that waited for its revision has it (proposed, or
    /// answered otherwise).
    pub fn fetched(&mut self, group: GroupId) {
        if let Some(line) = self.lines.get_mut(&group) {
            line.fetching_since = None;
        }
    }

    /// The oracle did not answer a fetch: the prepares let in that waited for it were
    /// answered with the error (a prepare waiting for the next fetch may be counted out
    /// too; it is then refused where it applies, and comes back).
    pub fn fetch_failed(&mut self) {
        for line in self.lines.values_mut() {
            line.fetching_since = None;
        }
    }

    /// The ranges with a line.
    pub fn groups(&self) -> Vec<GroupId> {
        self.lines.keys().copied().collect()
    }

    /// Takes `group`'s line away (its range is no longer led here): whoever waited in
    /// it is answered by the caller.
    pub fn drain(&mut self, group: GroupId) -> Vec<Parked> {
        let Some(line) = self.lines.remove(&group) else {
            return Vec::new();
        };
        self.parked_total -= line.parked.len() + line.writes.len();
        line.writes
            .into_iter()
            .map(|(parked, _)| parked)
            .chain(line.parked)
            .collect()
    }

    /// The head of `group`'s line if the range is free for it: no prepare let in waits
    /// for its revision, and `free` says the range takes the head now. Prepares whose
    /// coordinators gave up (their answer is no longer awaited) leave the line unseen.
    /// A line left idle goes.
    pub fn next_free(
        &mut self,
        group: GroupId,
        now: Instant,
        free: impl FnOnce(&WriteRequest) -> bool,
    ) -> Option<Parked> {
        let line = self.lines.get_mut(&group)?;
        let before = line.parked.len();
        line.parked.retain(|parked| !parked.respond.is_closed());
        self.parked_total -= before - line.parked.len();
        // Plain writes waiting go first (`take_writes`).
        let head = if line.fetching(now) || !line.writes.is_empty() {
            None
        } else {
            line.fetching_since = None;
            match line.parked.front() {
                Some(head) if free(&head.write) => line.parked.pop_front(),
                _ => None,
            }
        };
        if head.is_some() {
            self.parked_total -= 1;
        }
        if line.is_idle(now) {
            self.lines.remove(&group);
        }
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::NodeError;
    use ostrakon_storage::mvcc::WriteOutcome;
    use tokio::sync::oneshot;

    type Answer = oneshot::Receiver<Result<WriteOutcome, NodeError>>;

    fn parked(id: u64) -> (Parked, Answer) {
        let (respond, answer) = oneshot::channel();
        let write = WriteRequest {
            id,
            ..WriteRequest::default()
        };
        (Parked { write, respond }, answer)
    }

    #[test]
    fn a_prepare_is_proposed_on_a_free_range_parked_if_it_waits_else_refused() {
        assert_eq!(admission(false, false, true), Admission::Propose);
        assert_eq!(admission(true, false, true), Admission::Propose);
        assert_eq!(admission(true, true, true), Admission::Park);
        assert_eq!(admission(false, true, true), Admission::Refuse);
        // Lines full: it asks again, as before.
        assert_eq!(admission(true, true, false), Admission::Refuse);
    }

    #[test]
    fn the_line_lets_prepares_go_in_the_order_they_came_one_at_a_time() {
        let group = GroupId(7);
        let now = Instant::now();
        let mut lines = PrepareLines::default();
        let mut answers = Vec::new();
        for id in 1..=3 {
            let (parked, answer) = parked(id);
            lines.park(group, parked);
            answers.push(answer);
        }
        assert!(lines.busy(group, now));
        assert_eq!(lines.parked_total(), 3);
        // The range is still held: nobody goes.
        assert!(lines.next_free(group, now, |_| false).is_none());
        let first = lines.next_free(group, now, |_| true).expect("the head");
        assert_eq!(first.write.id, 1);
        // Let in, it waits for its revision: the next waits for it to be in the log.
        lines.fetching(group, now);
        assert!(lines.next_free(group, now, |_| true).is_none());
        lines.fetched(group);
        assert_eq!(lines.next_free(group, now, |_| true).unwrap().write.id, 2);
        // A coordinator that gave up leaves the line unseen.
        drop(answers.pop());
        assert!(lines.next_free(group, now, |_| true).is_none());
        assert_eq!(lines.parked_total(), 0);
        assert!(!lines.busy(group, now), "an idle line goes");
        assert!(lines.groups().is_empty());
    }

    #[test]
    fn a_fetch_that_never_reports_back_stops_holding_the_line() {
        let group = GroupId(3);
        let start = Instant::now();
        let mut lines = PrepareLines::default();
        let (waiting, _answer) = parked(1);
        lines.park(group, waiting);
        lines.fetching(group, start);
        assert!(lines.next_free(group, start, |_| true).is_none());
        let later = start + FETCH_UNSEEN_MAX;
        assert_eq!(lines.next_free(group, later, |_| true).unwrap().write.id, 1);
    }

    #[test]
    fn a_failed_fetch_frees_every_line_waiting_for_it() {
        let now = Instant::now();
        let mut lines = PrepareLines::default();
        let mut answers = Vec::new();
        for group in [1, 2] {
            let (waiting, answer) = parked(group);
            lines.park(GroupId(group), waiting);
            lines.fetching(GroupId(group), now);
            answers.push(answer);
        }
        assert!(lines.next_free(GroupId(1), now, |_| true).is_none());
        lines.fetch_failed();
        for group in [1, 2] {
            assert_eq!(
                lines
                    .next_free(GroupId(group), now, |_| true)
                    .unwrap()
                    .write
                    .id,
                group
            );
        }
    }

    #[test]
    fn plain_writes_go_ahead_of_the_prepares_once_the_range_is_free_or_give_up() {
        let group = GroupId(5);
        let start = Instant::now();
        let mut lines = PrepareLines::default();
        let (prepare, _prepare_answer) = parked(1);
        lines.park(group, prepare);
        let (write, _write_answer) = parked(2);
        lines.park_write(group, write, start);
        assert_eq!(lines.parked_total(), 2);
        // Still locked: nobody goes, and the prepare waits behind the write.
        let (let_in, expired) = lines.take_writes(group, start, false);
        assert!(let_in.is_empty() && expired.is_empty());
        assert!(lines.next_free(group, start, |_| true).is_none());
        // Free: the write goes, then the prepare.
        let (let_in, _) = lines.take_writes(group, start, true);
        assert_eq!(
            let_in.iter().map(|w| w.write.id).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(lines.next_free(group, start, |_| true).unwrap().write.id, 1);
        // A write held off long is answered "locked" (routed again).
        let (late, _late_answer) = parked(3);
        lines.park_write(group, late, start);
        let (_, expired) = lines.take_writes(group, start + PLAIN_WRITE_WAIT_MAX, false);
        assert_eq!(
            expired.iter().map(|w| w.write.id).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(lines.parked_total(), 0);
        assert!(lines.is_empty());
    }

    #[test]
    fn a_line_drained_gives_back_its_prepares_and_its_room() {
        let mut lines = PrepareLines::default();
        let mut answers = Vec::new();
        for group in [1, 1, 2] {
            let (waiting, answer) = parked(group);
            lines.park(GroupId(group), waiting);
            answers.push(answer);
        }
        assert_eq!(lines.drain(GroupId(1)).len(), 2);
        assert_eq!(lines.parked_total(), 1);
        assert_eq!(lines.groups(), vec![GroupId(2)]);
        assert!(lines.drain(GroupId(1)).is_empty());
    }
}
