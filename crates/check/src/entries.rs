//! The doubly linked list of call and return entries that the search walks.
//!
//! Entries live in a vector and link to each other by index, so lifting an operation out of
//! the list and putting it back are O(1) pointer swaps (Knuth's dancing links): a lifted
//! entry keeps its own `prev`/`next`, which still name its neighbours when it is unlifted in
//! reverse (LIFO) order.

/// Index of an entry in [`EntryList`]; 0 is the head sentinel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryId(usize);

const HEAD: EntryId = EntryId(0);

/// When an operation's call or return happens. `Infinite` sorts after every finite time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Time {
    At(u64),
    Infinite,
}

/// An operation's interval as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interval {
    pub(crate) call: u64,
    pub(crate) ret: Time,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Head,
    /// Invocation of operation `op`; `ret` is its return entry.
    Call {
        op: usize,
        ret: EntryId,
    },
    Return {
        op: usize,
    },
}

#[derive(Clone, Debug)]
struct Node {
    kind: EntryKind,
    prev: Option<EntryId>,
    next: Option<EntryId>,
}

/// Call and return entries of a set of operations, in time order.
pub(crate) struct EntryList {
    nodes: Vec<Node>,
    /// The call entry of each operation.
    calls: Vec<EntryId>,
}

impl EntryList {
    /// Builds the list for operations `0..intervals.len()`.
    ///
    /// At equal times a return sorts before a call: an operation that completed at `t`
    /// precedes one invoked at `t`. Zero-length operations at the same instant are the
    /// exception, since each would have to precede the other: their calls all sort before
    /// their returns, so they are concurrent among themselves, while still following the
    /// returns and preceding the calls of longer operations at that instant.
    pub(crate) fn new(intervals: &[Interval]) -> Self {
        let mut events: Vec<(Time, u8, usize, bool)> = Vec::with_capacity(2 * intervals.len());
        for (op, interval) in intervals.iter().enumerate() {
            let zero_length = interval.ret == Time::At(interval.call);
            if let Time::At(ret) = interval.ret {
                assert!(ret >= interval.call, "op {op} returns before its call");
            }
            let (call_rank, ret_rank) = if zero_length { (1, 2) } else { (3, 0) };
            events.push((Time::At(interval.call), call_rank, op, true));
            events.push((interval.ret, ret_rank, op, false));
        }
        // The op index breaks remaining ties so that the order is deterministic.
        events.sort_unstable();

        let mut list = EntryList {
            nodes: Vec::with_capacity(events.len() + 1),
            calls: vec![HEAD; intervals.len()],
        };
        list.nodes.push(Node {
            kind: EntryKind::Head,
            prev: None,
            next: None,
        });
        let mut rets = vec![None; intervals.len()];
        // Walk backwards so that every call can name its (already placed) return entry.
        for &(_, _, op, is_call) in events.iter().rev() {
            let id = EntryId(list.nodes.len());
            let kind = if is_call {
                let ret = rets[op].expect("a return sorts after its own call");
                list.calls[op] = id;
                EntryKind::Call { op, ret }
            } else {
                rets[op] = Some(id);
                EntryKind::Return { op }
            };
            list.nodes.push(Node {
                kind,
                prev: None,
                next: None,
            });
        }
        list.link_in_reverse_push_order();
        list
    }

    /// Nodes 1.. were pushed in reverse time order; link head -> last pushed -> ... -> 1.
    fn link_in_reverse_push_order(&mut self) {
        let mut prev = HEAD;
        for index in (1..self.nodes.len()).rev() {
            let id = EntryId(index);
            self.nodes[prev.0].next = Some(id);
            self.nodes[index].prev = Some(prev);
            prev = id;
        }
    }

    /// The first entry after the head, or None when every operation is lifted.
    pub(crate) fn first(&self) -> Option<EntryId> {
        self.nodes[HEAD.0].next
    }

    pub(crate) fn next(&self, id: EntryId) -> Option<EntryId> {
        self.nodes[id.0].next
    }

    pub(crate) fn kind(&self, id: EntryId) -> EntryKind {
        self.nodes[id.0].kind
    }

    pub(crate) fn call_of(&self, op: usize) -> EntryId {
        self.calls[op]
    }

    /// Removes operation `op`'s call and return entries from the list.
    pub(crate) fn lift(&mut self, op: usize) {
        let call = self.calls[op];
        let EntryKind::Call { ret, .. } = self.kind(call) else {
            unreachable!("calls[] names call entries")
        };
        self.unlink(call);
        self.unlink(ret);
    }

    /// Puts operation `op` back; must undo the most recent [`EntryList::lift`] not yet undone.
    pub(crate) fn unlift(&mut self, op: usize) {
        let call = self.calls[op];
        let EntryKind::Call { ret, .. } = self.kind(call) else {
            unreachable!("calls[] names call entries")
        };
        self.relink(ret);
        self.relink(call);
    }

    fn unlink(&mut self, id: EntryId) {
        let node = &self.nodes[id.0];
        let (prev, next) = (node.prev.expect("only the head has no prev"), node.next);
        assert_eq!(self.nodes[prev.0].next, Some(id), "entry is linked");
        self.nodes[prev.0].next = next;
        if let Some(next) = next {
            self.nodes[next.0].prev = Some(prev);
        }
    }

    fn relink(&mut self, id: EntryId) {
        let node = &self.nodes[id.0];
        let (prev, next) = (node.prev.expect("only the head has no prev"), node.next);
        assert_eq!(self.nodes[prev.0].next, next, "entry is unlinked");
        self.nodes[prev.0].next = Some(id);
        if let Some(next) = next {
            self.nodes[next.0].prev = Some(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(list: &EntryList) -> Vec<EntryKind> {
        let mut kinds = Vec::new();
        let mut cursor = list.first();
        while let Some(id) = cursor {
            kinds.push(list.kind(id));
            cursor = list.next(id);
        }
        kinds
    }

    /// Renders the list as e.g. "c0 r0 c1" (call/return and op index).
    fn render(list: &EntryList) -> String {
        let words: Vec<String> = walk(list)
            .into_iter()
            .map(|kind| match kind {
                EntryKind::Call { op, .. } => format!("c{op}"),
                EntryKind::Return { op } => format!("r{op}"),
                EntryKind::Head => unreachable!(),
            })
            .collect();
        words.join(" ")
    }

    fn at(call: u64, ret: u64) -> Interval {
        Interval {
            call,
            ret: Time::At(ret),
        }
    }

    #[test]
    fn sorts_by_time_with_returns_before_calls() {
        // Op 1 is invoked exactly when op 0 completes, so op 0 precedes it.
        let list = EntryList::new(&[at(0, 10), at(10, 20), at(5, 15)]);
        assert_eq!(render(&list), "c0 c2 r0 c1 r2 r1");
    }

    #[test]
    fn infinite_returns_sort_last() {
        let open = Interval {
            call: 3,
            ret: Time::Infinite,
        };
        let list = EntryList::new(&[open, at(5, 6)]);
        assert_eq!(render(&list), "c0 c1 r1 r0");
    }

    #[test]
    fn zero_length_ops_at_one_instant_are_concurrent() {
        // Op 0 returns at 5 and op 3 is invoked at 5: both sandwich the zero-length ops 1, 2.
        let list = EntryList::new(&[at(0, 5), at(5, 5), at(5, 5), at(5, 9)]);
        assert_eq!(render(&list), "c0 r0 c1 c2 r1 r2 c3 r3");
    }

    #[test]
    fn lift_and_unlift_restore_the_list() {
        let mut list = EntryList::new(&[at(0, 10), at(1, 2), at(3, 30)]);
        let before = render(&list);
        assert_eq!(before, "c0 c1 r1 c2 r0 r2");
        list.lift(1);
        assert_eq!(render(&list), "c0 c2 r0 r2");
        list.lift(0);
        assert_eq!(render(&list), "c2 r2");
        list.unlift(0);
        list.unlift(1);
        assert_eq!(render(&list), before);
        assert_eq!(list.kind(list.call_of(2)), walk(&list)[3]);
    }
}
