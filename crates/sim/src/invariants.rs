//! The safety properties checked after every step, incrementally: each check looks only
//! at what changed, so checking stays cheap enough to run on every event.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use ostrakon_raft::{ConfState, Entry, EntryPayload, LogIndex, NodeId, RawNode, Role, Term};

use crate::node::Disk;

/// A broken safety property, with enough context to understand it from the trace.
#[derive(Clone, Debug)]
pub struct Violation(pub String);

/// Global knowledge accumulated over the run, against which each node is checked.
#[derive(Default)]
pub struct Invariants {
    /// Election safety: the leader of each term.
    leader_of_term: HashMap<Term, NodeId>,
    /// Log matching: every entry ever written to any log, by (index, term), with its
    /// content digest and the term of the entry before it in that log. If two logs agree
    /// on (index, term) they agree on content and on the previous term, and so by
    /// induction on the whole prefix.
    entries: HashMap<(LogIndex, Term), (u64, Option<Term>)>,
    /// The committed log as observed anywhere: index → term.
    committed: BTreeMap<LogIndex, Term>,
    /// For each committed index, the lowest term of a node seen holding it committed:
    /// never below the term whose leader committed it, so a leader of a later term
    /// must hold it (leader completeness). A leader of an earlier term may win its
    /// election late (its vote answers delayed) and need not.
    committed_seen_in_term: BTreeMap<LogIndex, Term>,
    /// Per node: commit index and role at the last check, applied index in this life.
    last_commit: HashMap<NodeId, LogIndex>,
    last_role: HashMap<NodeId, Role>,
    last_applied: HashMap<NodeId, LogIndex>,
    last_term: HashMap<NodeId, Term>,
}

fn digest(entry: &Entry) -> u64 {
    let mut hasher = DefaultHasher::new();
    match &entry.payload {
        EntryPayload::Empty => 0u8.hash(&mut hasher),
        EntryPayload::Normal(data) => {
            1u8.hash(&mut hasher);
            data.hash(&mut hasher);
        }
        EntryPayload::ConfChange(change) => {
            2u8.hash(&mut hasher);
            format!("{change:?}").hash(&mut hasher);
        }
    }
    hasher.finish()
}

impl Invariants {
    /// Log matching, for entries a node is about to write to its log.
    pub fn check_new_entries(
        &mut self,
        node: NodeId,
        raw: &RawNode,
        entries: &[Entry],
    ) -> Result<(), Violation> {
        for entry in entries {
            let prev_term = raw.log_term(entry.index.prev());
            let mine = (digest(entry), prev_term);
            match self.entries.get(&(entry.index, entry.term)) {
                None => {
                    self.entries.insert((entry.index, entry.term), mine);
                }
                Some(&(content, first_prev)) => {
                    if content != mine.0 {
                        return Err(Violation(format!(
                            "log matching: {node:?} writes a different entry at ({:?}, {:?})",
                            entry.index, entry.term
                        )));
                    }
                    if let (Some(a), Some(b)) = (first_prev, prev_term) {
                        if a != b {
                            return Err(Violation(format!(
                                "log matching: at ({:?}, {:?}) {node:?}'s log has term {b:?} before it, another log has {a:?}",
                                entry.index, entry.term
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Election safety, committed entries never change, leader completeness.
    pub fn check_node(&mut self, node: NodeId, raw: &RawNode) -> Result<(), Violation> {
        let role = raw.role();
        if role == Role::Leader {
            let leader = *self.leader_of_term.entry(raw.term()).or_insert(node);
            if leader != node {
                return Err(Violation(format!(
                    "election safety: {leader:?} and {node:?} both lead {:?}",
                    raw.term()
                )));
            }
        }
        let commit = raw.commit();
        let last_commit = self.last_commit.get(&node).copied().unwrap_or(LogIndex(0));
        // Known committed before this node's step: a commit index learned, not decided
        // (`RawNode::commit_known`, a merge's proof that the right range's freeze
        // committed), is no leader's decision under the commit rule below.
        let commit_known_already = raw.log_term(commit).is_some()
            && self.committed.get(&commit).copied() == raw.log_term(commit);
        let from = last_commit.max(raw.first_index().prev());
        let mut index = from.next();
        while index <= commit {
            let term = raw
                .log_term(index)
                .expect("committed entries after the snapshot are in the log");
            match self.committed.get(&index) {
                Some(&known) if known != term => {
                    return Err(Violation(format!(
                        "state machine safety: {node:?} committed ({index:?}, {term:?}) but ({index:?}, {known:?}) was committed before"
                    )))
                }
                Some(_) => {}
                None => {
                    self.committed.insert(index, term);
                }
            }
            let seen_in = self
                .committed_seen_in_term
                .entry(index)
                .or_insert(raw.term());
            *seen_in = (*seen_in).min(raw.term());
            index = index.next();
        }
        // Figure 2's commit rule: a leader advances its commit index only to an entry of
        // its own term; earlier entries commit indirectly, with it (5.4.2).
        let led_already = self.last_role.get(&node) == Some(&Role::Leader)
            && self.last_term.get(&node) == Some(&raw.term());
        if role == Role::Leader
            && led_already
            && commit > last_commit
            && raw.log_term(commit) != Some(raw.term())
            && !commit_known_already
        {
            return Err(Violation(format!(
                "commit rule: leader {node:?} of {:?} advanced its commit index to {commit:?}, an entry of {:?}",
                raw.term(),
                raw.log_term(commit)
            )));
        }
        self.last_commit.insert(node, commit);
        self.last_term.insert(node, raw.term());
        let became_leader =
            role == Role::Leader && self.last_role.get(&node) != Some(&Role::Leader);
        self.last_role.insert(node, role);
        if became_leader {
            self.check_leader_completeness(node, raw)?;
        }
        Ok(())
    }

    fn check_leader_completeness(&self, node: NodeId, raw: &RawNode) -> Result<(), Violation> {
        let snapshot_index = raw.first_index().prev();
        for (&index, &term) in self.committed.range(snapshot_index.next()..) {
            let seen_in = self.committed_seen_in_term[&index];
            if seen_in < raw.term() && raw.log_term(index) != Some(term) {
                return Err(Violation(format!(
                    "leader completeness: {node:?} leads {:?} without committed entry ({index:?}, {term:?}); it has {:?}",
                    raw.term(),
                    raw.log_term(index)
                )));
            }
        }
        Ok(())
    }

    /// The applied index never decreases during a node's life.
    pub fn check_applied(&mut self, node: NodeId, applied: LogIndex) -> Result<(), Violation> {
        let previous = self
            .last_applied
            .insert(node, applied)
            .unwrap_or(LogIndex(0));
        if applied < previous {
            return Err(Violation(format!(
                "applied index of {node:?} went back from {previous:?} to {applied:?}"
            )));
        }
        Ok(())
    }

    /// A node restarted: its volatile cursors start over.
    pub fn forget_volatile(&mut self, node: NodeId) {
        self.last_applied.remove(&node);
        self.last_role.remove(&node);
        self.last_commit.remove(&node);
        self.last_term.remove(&node);
    }

    /// An acknowledged write must be committed and durable on a majority of every voter
    /// set of the configuration that committed it: one of `confs` (the acknowledging
    /// node's configuration now, and before its last membership change).
    pub fn check_acknowledged(
        &self,
        index: LogIndex,
        term: Term,
        confs: &[ConfState],
        disks: &BTreeMap<NodeId, &Disk>,
    ) -> Result<(), Violation> {
        if self.committed.get(&index) != Some(&term) {
            return Err(Violation(format!(
                "write acknowledged at ({index:?}, {term:?}) is not the committed entry"
            )));
        }
        let durable_on_majority = |voters: &std::collections::BTreeSet<NodeId>| {
            let durable = voters
                .iter()
                .filter(|id| disks.get(id).is_some_and(|d| d.holds(index, term)))
                .count();
            voters.is_empty() || durable > voters.len() / 2
        };
        if confs.iter().any(|conf| {
            durable_on_majority(&conf.voters) && durable_on_majority(&conf.voters_outgoing)
        }) {
            return Ok(());
        }
        let holders: Vec<NodeId> = disks
            .iter()
            .filter(|(_, d)| d.holds(index, term))
            .map(|(&id, _)| id)
            .collect();
        Err(Violation(format!(
            "write acknowledged at ({index:?}, {term:?}) is durable only on {holders:?}, not on a majority of {confs:?}"
        )))
    }

    /// Highest index observed committed.
    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }
}
