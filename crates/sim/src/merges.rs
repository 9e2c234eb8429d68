//! Merges driven by the nemesis, step by step as the node's merge coordinator drives
//! them (`crates/node/src/merge_coordinator.rs`, docs/RANGES.md "Merges"):
//!
//! 1. the right range's leader proposes its freeze;
//! 2. once every member's log holds the freeze (the leader's progress of each), the left
//!    range's leader proposes the merge, naming the right range and its membership;
//! 3. a merge not applied in time is fenced off in the left range's log, and only then
//!    does the right range thaw: the left log decides once whether the merge happened.
//!
//! What each replica does with these commands is the range layer's real code
//! (`ostrakon_ranges::merge`, applied in `simulation.rs`); this module is the driver.
//! One merge is in flight at a time. A range found frozen with no merge in flight for
//! it (a freeze that applied after its driver gave up waiting) is fenced and thawed, as
//! the node's leader of a range frozen too long does.

use ostrakon_raft::{GroupId, NodeId};
use ostrakon_ranges::merge::FreezeMark;
use ostrakon_ranges::RangeId;

use crate::events::Event;
use crate::invariants::Violation;
use crate::kv::{conf_fingerprint, Command, KvState, MergeCommand};
use crate::node::Input;
use crate::simulation::{trace, Simulation};

/// How often the driver looks at the ranges while a merge is in flight.
const STEP_US: u64 = 20_000;
/// How long it waits before proposing a step's command again (the leader may have
/// changed and the proposal been lost).
const PROPOSE_AGAIN_US: u64 = 200_000;
/// How long, while faults run, the freeze waits for a client's write to follow.
const FREEZE_BEHIND_WRITE_WAIT_US: u64 = 1_000_000;
/// How long it waits for the freeze to apply at the right range's leader.
const FREEZE_WAIT_US: u64 = 1_000_000;
/// How long it waits for every member's log to hold the freeze, as the node's
/// coordinator waits (up to 5 s there).
const SPREAD_WAIT_US: u64 = 1_000_000;
/// How long it waits for the merge to apply at the left range's leader.
const MERGE_WAIT_US: u64 = 1_000_000;
/// How often, while faults run, a member of the right range dies as the merge is
/// proposed.
const CRASH_RIGHT_MEMBER_PROBABILITY: f64 = 0.2;
/// How often, while faults run, the right range's leader cannot send from the instant
/// its freeze (proposed behind a write) commits.
const SILENCE_AT_FREEZE_PROBABILITY: f64 = 0.5;
/// How long after healing every merge must have ended (merged, or fenced and thawed).
const SETTLE_DEADLINE_US: u64 = 5_000_000;

/// A merge in flight.
#[derive(Clone, Debug)]
pub(crate) struct MergeAttempt {
    left: GroupId,
    right: GroupId,
    phase: Phase,
    phase_since_us: u64,
    proposed_us: Option<u64>,
    /// Where the freeze was proposed behind a write (`maybe_freeze_behind_write`): the
    /// leader and the freeze's index, until it commits there.
    freeze_proposed: Option<(NodeId, ostrakon_raft::LogIndex)>,
}

#[derive(Clone, Debug)]
enum Phase {
    /// The right range's freeze is proposed.
    Freezing,
    /// It froze; every member's log must hold the freeze.
    Spreading(FreezeMark),
    /// The merge is proposed in the left range.
    Merging(MergeCommand),
    /// Given up: the fence is proposed in the left range (or the range that absorbed it).
    Fencing(FreezeMark),
    /// Fenced: the right range's thaw is proposed.
    Thawing(FreezeMark),
}

impl MergeAttempt {
    /// Whether the merge involves `group`, as its left or right range.
    pub(crate) fn involves(&self, group: GroupId) -> bool {
        self.left == group || self.right == group
    }
}

impl Simulation {
    /// The nemesis merges two neighbouring ranges, unless a merge is in flight.
    pub(crate) fn start_merge(&mut self) {
        if self.merge_attempt.is_some() {
            return;
        }
        let mut ranges = self.ranges.clone();
        ranges.sort_by(|a, b| a.start.cmp(&b.start));
        // A right range the register clients write to, when there is one: what a merge
        // can lose is writes.
        let written = |range: &ostrakon_ranges::RangeDescriptor| {
            (0..self.scenario.key_count).any(|key| range.contains(&crate::kv::routing_key(key)))
        };
        let mut pairs: Vec<(GroupId, GroupId)> = ranges
            .windows(2)
            .filter(|pair| written(&pair[1]))
            .map(|pair| (pair[0].id.group(), pair[1].id.group()))
            .collect();
        if pairs.is_empty() {
            pairs = ranges
                .windows(2)
                .map(|pair| (pair[0].id.group(), pair[1].id.group()))
                .collect();
        }
        if pairs.is_empty() {
            return;
        }
        let (left, right) = self.rng.pick(&pairs);
        trace!(self, "nemesis: merge {right:?} into {left:?}");
        self.begin_merge_phase(left, right, Phase::Freezing);
    }

    fn begin_merge_phase(&mut self, left: GroupId, right: GroupId, phase: Phase) {
        let first_step = self.merge_attempt.is_none();
        self.merge_attempt = Some(MergeAttempt {
            left,
            right,
            phase,
            phase_since_us: self.now_us,
            proposed_us: None,
            freeze_proposed: None,
        });
        if first_step {
            self.events.push(self.now_us, Event::MergeStep);
        }
    }

    /// One look of the driver (`Event::MergeStep`).
    pub(crate) fn step_merge(&mut self) {
        let Some(attempt) = self.merge_attempt.take() else {
            return;
        };
        let next = self.advance_merge(attempt);
        self.merge_attempt = next;
        if self.merge_attempt.is_some() {
            self.events.push(self.now_us + STEP_US, Event::MergeStep);
        } else {
            self.thaw_stray_freezes();
        }
    }

    fn advance_merge(&mut self, mut attempt: MergeAttempt) -> Option<MergeAttempt> {
        let (left, right) = (attempt.left, attempt.right);
        let waited_us = self.now_us - attempt.phase_since_us;
        let due = attempt
            .proposed_us
            .is_none_or(|at| self.now_us >= at + PROPOSE_AGAIN_US);
        let next_phase = match attempt.phase.clone() {
            Phase::Freezing => match self.leader_kv(right).map(|kv| kv.frozen) {
                Some(Some(mark)) if mark.left == RangeId(left.0) => Some(Phase::Spreading(mark)),
                Some(Some(_)) => {
                    trace!(self, "merge of {right:?}: frozen for another merge");
                    return None;
                }
                _ if waited_us > FREEZE_BEHIND_WRITE_WAIT_US + FREEZE_WAIT_US => {
                    trace!(self, "merge of {right:?}: gave up before it froze");
                    return None;
                }
                _ => {
                    // While faults run, the freeze first waits a while for a client's
                    // write to follow (`maybe_freeze_behind_write`).
                    let waited_for_a_write =
                        self.healed_at_us.is_some() || waited_us > FREEZE_BEHIND_WRITE_WAIT_US;
                    if due && waited_for_a_write {
                        self.propose_merge_step(right, Command::Freeze { left: left.0 });
                        attempt.proposed_us = Some(self.now_us);
                    }
                    None
                }
            },
            Phase::Spreading(mark) => match self.merge_command(right, mark) {
                Some(merge) => {
                    self.propose_merge_step(left, Command::Merge(merge));
                    self.maybe_crash_right_member(left, right);
                    attempt.proposed_us = Some(self.now_us);
                    attempt.phase = Phase::Merging(merge);
                    attempt.phase_since_us = self.now_us;
                    return Some(attempt);
                }
                None if waited_us > SPREAD_WAIT_US => Some(Phase::Fencing(mark)),
                None => None,
            },
            Phase::Merging(merge) => {
                let mark = FreezeMark {
                    left: RangeId(left.0),
                    index: merge.freeze_index,
                    term: merge.freeze_term,
                };
                match self.merge_outcome(left, right, mark.index) {
                    Some(true) => return self.merge_done(right, true),
                    Some(false) => Some(Phase::Thawing(mark)),
                    None if waited_us > MERGE_WAIT_US => Some(Phase::Fencing(mark)),
                    None => {
                        if due {
                            self.propose_merge_step(left, Command::Merge(merge));
                            attempt.proposed_us = Some(self.now_us);
                        }
                        None
                    }
                }
            }
            Phase::Fencing(mark) => match self.merge_outcome(left, right, mark.index) {
                Some(true) => return self.merge_done(right, true),
                Some(false) => Some(Phase::Thawing(mark)),
                None => {
                    if due {
                        let fence = Command::FenceMerge {
                            right: right.0,
                            freeze_index: mark.index,
                        };
                        if let Some(target) = self.left_or_absorber(left) {
                            self.propose_merge_step(target, fence);
                        }
                        attempt.proposed_us = Some(self.now_us);
                    }
                    None
                }
            },
            Phase::Thawing(mark) => match self.leader_kv(right).map(|kv| kv.frozen) {
                Some(frozen) if frozen != Some(mark) => return self.merge_done(right, false),
                _ => {
                    if due {
                        let thaw = Command::Unfreeze {
                            freeze_index: mark.index,
                        };
                        self.propose_merge_step(right, thaw);
                        attempt.proposed_us = Some(self.now_us);
                    }
                    None
                }
            },
        };
        if let Some(phase) = next_phase {
            trace!(self, "merge of {right:?} into {left:?}: {phase:?}");
            attempt.phase = phase;
            attempt.phase_since_us = self.now_us;
            attempt.proposed_us = None;
        }
        Some(attempt)
    }

    /// While faults run, a member of the right range sometimes dies right as the merge is
    /// proposed: every member's log holds the freeze, but a member restarted from its
    /// last snapshot may apply the left range's merge before its right replica has
    /// replayed its log to the freeze. It must wait (`ostrakon_ranges::merge`), not take
    /// the right range over as it stands.
    fn maybe_crash_right_member(&mut self, left: GroupId, right: GroupId) {
        if self.healed_at_us.is_some() || !self.rng.chance(CRASH_RIGHT_MEMBER_PROBABILITY) {
            return;
        }
        let left_leader = self.current_leader(left);
        let members: Vec<NodeId> = self.latest_conf[&right]
            .1
            .members()
            .into_iter()
            .filter(|&id| Some(id) != left_leader && self.is_up(id))
            .collect();
        if members.is_empty() {
            return;
        }
        let victim = self.rng.pick(&members);
        trace!(
            self,
            "nemesis: {victim:?}, a member of {right:?}, dies as {left:?} is asked to merge it"
        );
        self.crash(victim);
    }

    /// The right range's leader `id` stepped a message: if it just learned that the
    /// freeze it proposed behind a write committed, then while faults run it sometimes
    /// cannot send from that instant (it still hears the others), so the messages that
    /// would tell its followers are lost. Their logs hold the freeze, so the merge goes
    /// ahead in the left range, whose members must wait for their right replica to learn
    /// that the freeze (and the write before it) committed, from the left range
    /// (`RawNode::commit_known`), not take it over as it stands.
    pub(crate) fn maybe_silence_at_freeze_commit(&mut self, id: NodeId, right: GroupId) {
        let Some(attempt) = &self.merge_attempt else {
            return;
        };
        let Some((proposer, freeze_index)) = attempt.freeze_proposed else {
            return;
        };
        let committed = self
            .replica_ref(id, right)
            .is_some_and(|replica| replica.raw.commit() >= freeze_index);
        if attempt.right != right || proposer != id || !committed {
            return;
        }
        let left_leader = self.current_leader(attempt.left);
        self.merge_attempt
            .as_mut()
            .expect("checked")
            .freeze_proposed = None;
        if left_leader == Some(id)
            || self.healed_at_us.is_some()
            || !self.rng.chance(SILENCE_AT_FREEZE_PROBABILITY)
        {
            return;
        }
        trace!(
            self,
            "nemesis: {id:?}, leading {right:?}, cannot send from the instant its freeze commits"
        );
        self.silence(id);
    }

    fn merge_done(&mut self, right: GroupId, merged: bool) -> Option<MergeAttempt> {
        trace!(
            self,
            "merge of {right:?}: {}",
            if merged {
                "merged"
            } else {
                "given up and thawed"
            }
        );
        if !merged {
            self.merges_given_up += 1;
        }
        None
    }

    /// The leader `id` of `group` just proposed a client's write: if the merge in flight
    /// waits to freeze `group`, the freeze is proposed right behind it, so the two
    /// travel and commit together (a member that does not hear of that commit lacks
    /// both: taking its replica over as it stands would lose the write).
    pub(crate) fn maybe_freeze_behind_write(&mut self, id: NodeId, group: GroupId) {
        let Some(attempt) = self.merge_attempt.as_mut() else {
            return;
        };
        let waiting = attempt.right == group
            && matches!(attempt.phase, Phase::Freezing)
            && attempt.proposed_us.is_none();
        if !waiting || self.healed_at_us.is_some() {
            return;
        }
        attempt.proposed_us = Some(self.now_us);
        let freeze = Command::Freeze {
            left: attempt.left.0,
        };
        // The replica is handling an input (not persisting); its caller drives it after.
        let result = self.replica(id, group).raw.propose(freeze.encode());
        trace!(
            self,
            "{id:?} {group:?} proposes the freeze right behind a write: {result:?}"
        );
        if let Ok(proposal) = result {
            let attempt = self.merge_attempt.as_mut().expect("above");
            attempt.freeze_proposed = Some((id, proposal.index));
        }
    }

    /// The state machine of `group`'s current leader, if it has one.
    fn leader_kv(&self, group: GroupId) -> Option<&KvState> {
        let leader = self.current_leader(group)?;
        Some(&self.replica_ref(leader, group)?.kv)
    }

    fn propose_merge_step(&mut self, group: GroupId, command: Command) {
        if let Some(leader) = self.current_leader(group) {
            self.input(leader, group, Input::Propose(command));
        }
    }

    /// The merge command, once the right range's leader (still frozen at `mark`) sees
    /// the freeze in every member's log and no membership change in flight.
    fn merge_command(&self, right: GroupId, mark: FreezeMark) -> Option<MergeCommand> {
        let leader = self.current_leader(right)?;
        let replica = self.replica_ref(leader, right)?;
        if replica.kv.frozen != Some(mark) {
            return None;
        }
        let conf = replica.raw.conf_state();
        if conf.is_joint() {
            return None;
        }
        let status = replica.raw.status();
        let holds_freeze = |id: NodeId| {
            id == leader
                || status
                    .progress
                    .iter()
                    .any(|&(member, match_index, _, _)| member == id && match_index.0 >= mark.index)
        };
        if !conf.members().into_iter().all(holds_freeze) {
            return None;
        }
        let descriptor = replica.kv.descriptor.as_ref()?;
        Some(MergeCommand {
            right: right.0,
            freeze_index: mark.index,
            freeze_term: mark.term,
            right_start: register_of(&descriptor.start),
            right_end: descriptor.end.as_deref().map(register_of),
            right_generation: descriptor.generation,
            conf: conf_fingerprint(conf),
        })
    }

    /// How the left range's log (at its leader) decided the merge of `right` frozen at
    /// `freeze_index`: merged (true), fenced off (false), or not yet.
    fn merge_outcome(&self, left: GroupId, right: GroupId, freeze_index: u64) -> Option<bool> {
        let target = self.left_or_absorber(left)?;
        let kv = self.leader_kv(target)?;
        if kv.absorbed.contains(&right.0) {
            Some(true)
        } else if kv.fences.contains(&(right.0, freeze_index)) {
            Some(false)
        } else {
            None
        }
    }

    /// The left range, or the range that absorbed it since (a freeze found stray after
    /// its left range merged into another: the fence goes where its log went).
    fn left_or_absorber(&self, left: GroupId) -> Option<GroupId> {
        if self.ranges.iter().any(|r| r.id.group() == left) {
            return Some(left);
        }
        self.ranges.iter().map(|r| r.id.group()).find(|&group| {
            self.leader_kv(group)
                .is_some_and(|kv| kv.absorbed.contains(&left.0))
        })
    }

    /// With no merge in flight: a range whose leader is frozen froze after its driver
    /// gave up waiting; it is fenced and thawed.
    pub(crate) fn thaw_stray_freezes(&mut self) {
        if self.merge_attempt.is_some() {
            return;
        }
        let stray = self.ranges.iter().find_map(|range| {
            let group = range.id.group();
            let mark = self.leader_kv(group)?.frozen?;
            Some((group, mark))
        });
        if let Some((right, mark)) = stray {
            trace!(
                self,
                "{right:?} is frozen with no merge in flight: fenced and thawed"
            );
            self.begin_merge_phase(mark.left.group(), right, Phase::Fencing(mark));
        }
    }

    /// After healing: every merge ends (merged, or fenced and thawed) in time, and no
    /// range is left frozen.
    pub(crate) fn check_merges_settle(&mut self) {
        let deadline_us = self.now_us + SETTLE_DEADLINE_US;
        loop {
            self.thaw_stray_freezes();
            // Followers left frozen behind a thawed leader would fail convergence.
            let frozen = self.ranges.iter().any(|range| {
                self.leader_kv(range.id.group())
                    .is_some_and(|kv| kv.frozen.is_some())
            });
            if self.merge_attempt.is_none() && !frozen {
                return;
            }
            if self.now_us >= deadline_us {
                self.fail(Violation(format!(
                    "a merge did not end within {} ms of healing (in flight: {:?})",
                    SETTLE_DEADLINE_US / 1000,
                    self.merge_attempt
                )));
                return;
            }
            self.run_until(self.now_us + 50_000);
            if self.violation.is_some() {
                return;
            }
        }
    }
}

/// The register a range boundary is the routing key of.
fn register_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(
        key.try_into()
            .expect("a range boundary is a register's key"),
    )
}
