//! Transfers between accounts in different ranges, by two-phase commit (the
//! coordinator's half; the ranges' half is `txn_kv`). The accounts are registers after
//! the plain clients' ones, each starting at `INITIAL_BALANCE`. A bank client moves an
//! amount from one account to another:
//!
//! 1. it takes a revision T from the oracle;
//! 2. it prepares both accounts' ranges at T (each locks its accounts and answers their
//!    balances as of T); the range of the lower account is the primary;
//! 3. with every range prepared, it commits at the primary with both new balances (the
//!    commit point), then resolves the others; on any refusal it aborts at the primary
//!    and releases the others.
//!
//! A coordinator may pause, lose its messages or give up at any step. Range leaders push
//! locks held too long: they ask the primary to abort the transaction, which either
//! aborts it or answers its committed record, and resolve their part accordingly. At
//! the end no lock may be left, the accounts must hold their initial total, every read
//! at one revision must sum to it, and every committed record's writes must be in the
//! final versions at its revision.

use std::collections::BTreeMap;

use ostrakon_raft::{GroupId, NodeId, Role};
use ostrakon_ranges::txn::TxnId;
use ostrakon_ranges::{RangeId, Timestamp};

use crate::clients::{BANK_CLIENT_BASE, BANK_REQUEST_BASE, PUSH_REQUEST_BASE};
use crate::events::{Event, Reply};
use crate::invariants::Violation;
use crate::node::Request;
use crate::requests::route_in;
use crate::scenario::TxnProtocol;
use crate::simulation::{trace, Simulation, META};
use crate::txn_kv::{TxnApplied, TxnCommand, Writes};
use ostrakon_ranges::frozen_txn;

/// Every account's balance before any transfer.
pub(crate) const INITIAL_BALANCE: u64 = 100;
/// Coordinators' ids in transaction ids (unique per bank client, apart from nodes).
const COORDINATOR_ID_BASE: u64 = 1 << 20;
/// How long a coordinator waits for an answer.
const BANK_REQUEST_TIMEOUT_US: u64 = 500_000;
/// A leader pushes a lock it has seen held this long.
const PUSH_AFTER_US: u64 = 300_000;
/// How often a coordinator pauses before its prepares, and before its commit.
const SLOW_COORDINATOR_PROBABILITY: f64 = 0.2;
/// How long it pauses at most (beyond `PUSH_AFTER_US`, so that its locks get pushed).
const SLOW_COORDINATOR_PAUSE_US_MAX: u64 = 600_000;
/// How often a coordinator stops after its commit is answered, leaving its other
/// ranges' locks to the pushers.
const COORDINATOR_STOPS_AFTER_COMMIT: f64 = 0.25;
/// How long a pusher waits for the primary's answer before asking again.
const PUSH_TIMEOUT_US: u64 = 300_000;
/// How far a primary's transaction horizon stays behind the range's last revision, in
/// the oracle's milliseconds (the node keeps 10 minutes; short here, so that late
/// commits meet horizons that forgot their records).
const HORIZON_LAG_MS: u64 = 400;
/// How many committed records nobody finished a primary's leader finishes at one look.
const FINISHES_PER_LOOK_MAX: usize = 16;
/// How often a primary's leader proposes a horizon at most (when it forgets something).
const HORIZON_EVERY_US: u64 = 200_000;
/// Under whole-range locks, how often a bank client audits instead of transferring: a
/// read-only transaction over every account's range (the node's read-only path).
const AUDIT_PROBABILITY: f64 = 0.1;
/// Under whole-range locks, how often a transfer also locks a third account, in another
/// range, that it reads and does not write (a guard): that range's part writes nothing.
const GUARD_PROBABILITY: f64 = 0.5;

/// A bank client: one transfer at a time.
pub struct BankClient {
    /// Where it sends each range's requests.
    pub believed_leader: BTreeMap<GroupId, NodeId>,
    /// Which range holds which account.
    pub directory: ostrakon_ranges::Directory,
    /// Its transfer in flight.
    pub transfer: Option<Transfer>,
    /// Numbers its transactions (each attempt a new one).
    pub next_number: u64,
}

/// How a transfer ended, as its coordinator knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TransferEnd {
    /// The primary answered its commit: committed.
    Committed,
    /// It never commits: aborted before its commit was proposed, its commit never
    /// applied, or the primary answered that it was aborted first.
    Aborted,
    /// Its commit may or may not apply (the pushers finish it).
    Unknown,
}

/// A range's answer to a prepare: the revision it prepared at, and the balances.
type PreparedPart = (u64, Vec<(u64, Option<u64>)>);

/// A transfer in flight.
pub struct Transfer {
    txn: TxnId,
    from: u64,
    to: u64,
    /// An account it locks and reads but does not write, in a range of its own: that
    /// range's part changes no key and only raises its revision (`part_raises`).
    guard: Option<u64>,
    amount: u64,
    revision: Option<u64>,
    /// Each participant range and the accounts it holds.
    participants: BTreeMap<GroupId, Vec<u64>>,
    primary: GroupId,
    /// The balances each prepared range answered, with the revision it prepared at.
    prepared: BTreeMap<GroupId, PreparedPart>,
    /// Requests in flight: number → range.
    waiting: BTreeMap<u64, GroupId>,
    committing: bool,
    /// Its commit failed where it was sent: an abort at the primary asks how the
    /// transaction ended (a copy of the commit may be in the log all the same).
    asking_outcome: bool,
    /// An audit: it reads every account under its locks and writes nothing, then
    /// releases them raising their ranges to its revision, as the node's coordinator
    /// ends a read-only transaction across ranges.
    audit: bool,
    /// An audit's releases not answered yet, and whether every one answered so far
    /// still held its lock (else a pusher ended one, and what was read may be torn:
    /// the node answers such a transaction "try again").
    releases_left: usize,
    releases_held: bool,
}

impl Transfer {
    /// The participants other than the primary.
    fn others(&self) -> Vec<GroupId> {
        let primary = self.primary;
        let groups = self.participants.keys().copied();
        groups.filter(|&g| g != primary).collect()
    }
}

impl Simulation {
    /// The accounts: registers after the plain clients' ones.
    pub(crate) fn accounts(&self) -> std::ops::Range<u64> {
        self.scenario.key_count..self.scenario.key_count + self.scenario.account_count
    }

    pub(crate) fn start_transfer(&mut self, client: u64) {
        let index = (client - BANK_CLIENT_BASE) as usize;
        if self.clients_stopped || self.bank_clients[index].transfer.is_some() {
            return;
        }
        let accounts: Vec<u64> = self.accounts().collect();
        let from = self.rng.pick(&accounts);
        // Mostly to an account its directory places in another range.
        let directory = &self.bank_clients[index].directory;
        let elsewhere: Vec<u64> = accounts
            .iter()
            .copied()
            .filter(|&a| route_in(directory, a) != route_in(directory, from))
            .collect();
        let to = if !elsewhere.is_empty() && self.rng.chance(0.8) {
            self.rng.pick(&elsewhere)
        } else {
            loop {
                let to = self.rng.pick(&accounts);
                if to != from {
                    break to;
                }
            }
        };
        let amount = self.rng.range(1, 20);
        // Drawn only under whole-range locks: key-lock seeds keep their course.
        let whole_range = self.scenario.txn_protocol == TxnProtocol::WholeRange;
        let audit = whole_range && self.rng.chance(AUDIT_PROBABILITY);
        let guard = if whole_range && !audit && self.rng.chance(GUARD_PROBABILITY) {
            let directory = &self.bank_clients[index].directory;
            let taken = [route_in(directory, from), route_in(directory, to)];
            let apart: Vec<u64> = accounts
                .iter()
                .copied()
                .filter(|&a| !taken.contains(&route_in(directory, a)))
                .collect();
            (!apart.is_empty()).then(|| self.rng.pick(&apart))
        } else {
            None
        };
        let state = &mut self.bank_clients[index];
        let txn = TxnId {
            coordinator: NodeId(COORDINATOR_ID_BASE + index as u64),
            number: state.next_number,
            // Set when its revision arrives, before any command of it is sent.
            born: 0,
        };
        state.next_number += 1;
        state.transfer = Some(Transfer {
            txn,
            from,
            to,
            guard,
            amount,
            revision: None,
            participants: BTreeMap::new(),
            primary: META,
            prepared: BTreeMap::new(),
            waiting: BTreeMap::new(),
            committing: false,
            asking_outcome: false,
            audit,
            releases_left: 0,
            releases_held: true,
        });
        if audit {
            trace!(self, "bank client {index} {txn:?}: audits every account");
        } else {
            trace!(
                self,
                "bank client {index} {txn:?}: {amount} from {from} to {to} (guard {guard:?})"
            );
        }
        self.send_bank(
            index,
            META,
            Request::Timestamps {
                count: 1,
                word: None,
            },
        );
    }

    fn send_bank(&mut self, index: usize, group: GroupId, request: Request) {
        let number = self.next_internal_request;
        self.next_internal_request += 1;
        let state = &mut self.bank_clients[index];
        let believed = state
            .believed_leader
            .get(&group)
            .copied()
            .unwrap_or(NodeId::NONE);
        if let Some(transfer) = state.transfer.as_mut() {
            transfer.waiting.insert(number, group);
        }
        self.bank_requests.insert(number, index);
        let target = self.pick_node(group, believed, true);
        self.push_request(
            BANK_REQUEST_BASE + number,
            target,
            group,
            request,
            BANK_REQUEST_TIMEOUT_US,
        );
    }

    /// Ends the transfer and schedules the next. A definite outcome (the coordinator
    /// was told it committed, or knows it never will) is kept for the checks at the end.
    fn end_transfer(&mut self, index: usize, outcome: TransferEnd) {
        if let Some(transfer) = self.bank_clients[index].transfer.take() {
            trace!(self, "bank client {index} {:?} {outcome:?}", transfer.txn);
            if transfer.audit {
                // Nothing to remember: an audit writes nothing, and checked its sum.
                return self.next_bank_operation(index);
            }
            let across = transfer.participants.len() > 1;
            if outcome == TransferEnd::Committed {
                self.transfers_committed += 1;
                self.transfers_across_ranges += u64::from(across);
                self.guarded_transfers += u64::from(transfer.guard.is_some());
            }
            if let Some(revision) = transfer.revision {
                let definite = match outcome {
                    TransferEnd::Committed => Some(true),
                    TransferEnd::Aborted => Some(false),
                    TransferEnd::Unknown => None,
                };
                if let Some(committed) = definite {
                    let accounts = [transfer.from, transfer.to];
                    self.transfer_outcomes
                        .push((transfer.txn, revision, accounts, committed));
                }
            }
        }
        self.next_bank_operation(index);
    }

    fn next_bank_operation(&mut self, index: usize) {
        let think_us = self.rng.range(0, self.scenario.client_think_us_max);
        self.events.push(
            self.now_us + think_us,
            Event::ClientNext(BANK_CLIENT_BASE + index as u64),
        );
    }

    /// Gives the transfer up before its commit: aborted at the primary (so it can never
    /// commit), its locks released (best effort: pushers release what this misses).
    fn abort_transfer(&mut self, index: usize) {
        let transfer = self.bank_clients[index]
            .transfer
            .as_ref()
            .expect("a transfer");
        let txn = transfer.txn;
        let primary = transfer.primary;
        let others = transfer.others();
        if transfer.audit {
            // No record to abort: its locks go (a read-only transaction has none).
            let groups: Vec<GroupId> = transfer.participants.keys().copied().collect();
            for group in groups {
                let release = TxnCommand::Release {
                    txn,
                    raise: 0,
                    prepared: 0,
                };
                self.send_bank(index, group, Request::Txn(release));
            }
            return self.end_transfer(index, TransferEnd::Aborted);
        }
        if primary != META {
            self.send_bank(index, primary, Request::Txn(TxnCommand::Abort { txn }));
            for group in others {
                self.send_bank(
                    index,
                    group,
                    Request::Txn(TxnCommand::Release {
                        txn,
                        raise: 0,
                        prepared: 0,
                    }),
                );
            }
        }
        self.end_transfer(index, TransferEnd::Aborted);
    }

    pub(crate) fn handle_bank_reply(&mut self, client: u64, reply: Reply) {
        let number = client - BANK_REQUEST_BASE;
        let Some(index) = self.bank_requests.remove(&number) else {
            return;
        };
        let Some(transfer) = self.bank_clients[index].transfer.as_mut() else {
            return;
        };
        let Some(group) = transfer.waiting.remove(&number) else {
            return;
        };
        match &reply {
            Reply::Failed { leader_hint } => {
                self.bank_clients[index]
                    .believed_leader
                    .insert(group, *leader_hint);
            }
            // An account moved (a split): routed right next time.
            Reply::Mismatch { ranges } => {
                for range in ranges {
                    self.bank_clients[index].directory.learn(range.clone());
                }
            }
            _ => {}
        }
        let transfer = self.bank_clients[index].transfer.as_mut().expect("above");
        let whole_range = self.scenario.txn_protocol == TxnProtocol::WholeRange;
        let born = transfer.txn.born != 0;
        match (born, reply) {
            (false, Reply::Timestamps(grant, _)) => {
                // Born at the timestamp: every command of it carries that. Under key
                // locks it is the transaction's revision too; under whole-range locks
                // the revision is the highest its ranges' leaders fetch for the prepares.
                transfer.txn.born = grant.first;
                if !whole_range {
                    transfer.revision = Some(grant.first);
                }
                self.prepare_transfer(index);
            }
            (true, Reply::Txn(TxnApplied::Prepared { revision, values }))
                if !transfer.committing =>
            {
                transfer.prepared.insert(group, (revision, values));
                if transfer.prepared.len() == transfer.participants.len() {
                    if whole_range {
                        let prepared = transfer.prepared.values().map(|(revision, _)| *revision);
                        let bug = self.scenario.bug.and_then(crate::scenario::Bug::range);
                        let revision = frozen_txn::txn_revision_with_bug(prepared, bug);
                        trace!(
                            self,
                            "bank client {index} {:?} takes revision {revision}",
                            transfer.txn
                        );
                        let transfer = self.bank_clients[index].transfer.as_mut().expect("above");
                        transfer.revision = Some(revision);
                    }
                    self.commit_transfer(index);
                }
            }
            (true, Reply::Txn(TxnApplied::Released { held })) if transfer.releases_left > 0 => {
                // Held since the audit read here only if it is the lock its prepare
                // took, which the release names: a pusher may have ended that one, and
                // a late copy of the prepare taken another since (review, 2026-12-04).
                transfer.releases_held &= held;
                transfer.releases_left -= 1;
                if transfer.releases_left == 0 {
                    self.finish_audit(index);
                }
            }
            (_, _) if transfer.releases_left > 0 => {
                // A release not answered: whether the audit's locks all held is unknown.
                self.end_transfer(index, TransferEnd::Unknown);
            }
            (true, Reply::Txn(TxnApplied::Committed(_))) if transfer.committing => {
                let transfer = self.bank_clients[index].transfer.as_ref().expect("above");
                let (txn, revision) = (transfer.txn, transfer.revision.expect("set"));
                let writes = self.transfer_writes(index);
                // Some coordinators stop once their client is answered, as if they died:
                // pushers finish their transactions (`finishes`).
                let others = if self.rng.chance(COORDINATOR_STOPS_AFTER_COMMIT) {
                    trace!(self, "bank client {index} {txn:?} stops after its commit");
                    Vec::new()
                } else {
                    transfer.others()
                };
                for group in others {
                    let resolve = TxnCommand::Resolve {
                        txn,
                        revision,
                        writes: writes.clone(),
                    };
                    self.send_bank(index, group, Request::Txn(resolve));
                }
                self.end_transfer(index, TransferEnd::Committed);
            }
            (true, Reply::Txn(TxnApplied::Aborted)) if transfer.committing => {
                // Someone found its locks stale and aborted it first, or its own abort
                // did after its commit failed.
                if transfer.asking_outcome {
                    let txn = transfer.txn;
                    for group in transfer.others() {
                        self.send_bank(
                            index,
                            group,
                            Request::Txn(TxnCommand::Release {
                                txn,
                                raise: 0,
                                prepared: 0,
                            }),
                        );
                    }
                }
                self.end_transfer(index, TransferEnd::Aborted);
            }
            (true, Reply::Txn(TxnApplied::Forgotten)) if transfer.committing => {
                // Born below its primary's horizon with no record there: it can no
                // longer commit, but whether it did is not known (its locks go).
                let txn = transfer.txn;
                for group in transfer.others() {
                    self.send_bank(
                        index,
                        group,
                        Request::Txn(TxnCommand::Release {
                            txn,
                            raise: 0,
                            prepared: 0,
                        }),
                    );
                }
                self.end_transfer(index, TransferEnd::Unknown);
            }
            (_, Reply::Failed { .. }) if transfer.committing && !transfer.asking_outcome => {
                // This copy of the commit was not proposed, but another (a
                // retransmission) may be in the log: an abort at the primary answers how
                // the transaction ended (after a commit it finds the record), as the
                // node's coordinator asks. Until then the outcome is not known.
                transfer.asking_outcome = true;
                let txn = transfer.txn;
                let primary = transfer.primary;
                self.send_bank(index, primary, Request::Txn(TxnCommand::Abort { txn }));
            }
            (_, reply) if transfer.committing => {
                trace!(self, "bank client {index}: {reply:?} to its commit");
                self.end_transfer(index, TransferEnd::Unknown);
            }
            (_, _) => self.abort_transfer(index),
        }
    }

    pub(crate) fn bank_request_timed_out(&mut self, client: u64) {
        let number = client - BANK_REQUEST_BASE;
        let Some(index) = self.bank_requests.remove(&number) else {
            return;
        };
        let Some(transfer) = self.bank_clients[index].transfer.as_mut() else {
            return;
        };
        if let Some(group) = transfer.waiting.remove(&number) {
            self.bank_clients[index].believed_leader.remove(&group);
            let transfer = self.bank_clients[index].transfer.as_ref().expect("above");
            if transfer.committing || transfer.releases_left > 0 {
                // The commit may or may not apply: the pushers finish the transaction.
                self.end_transfer(index, TransferEnd::Unknown);
            } else {
                self.abort_transfer(index);
            }
        }
    }

    /// The transfer has its revision: the prepares go out (now, or after a pause).
    fn prepare_transfer(&mut self, index: usize) {
        if !self.pauses(index) {
            self.send_prepares(index);
        }
    }

    fn send_prepares(&mut self, index: usize) {
        let state = &mut self.bank_clients[index];
        let transfer = state.transfer.as_mut().expect("a transfer");
        // Under whole-range locks each range's leader stamps its prepare's revision.
        let revision = transfer.revision.unwrap_or(0);
        let accounts: Vec<u64> = if transfer.audit {
            (self.scenario.key_count..self.scenario.key_count + self.scenario.account_count)
                .collect()
        } else {
            [transfer.from, transfer.to]
                .into_iter()
                .chain(transfer.guard)
                .collect()
        };
        for account in accounts {
            let group = route_in(&state.directory, account);
            transfer
                .participants
                .entry(group)
                .or_default()
                .push(account);
        }
        let lower = if transfer.audit {
            self.scenario.key_count
        } else {
            transfer.from.min(transfer.to)
        };
        transfer.primary = route_in(&state.directory, lower);
        let txn = transfer.txn;
        let primary = RangeId(transfer.primary.0);
        let participants = transfer.participants.clone();
        for (group, keys) in participants {
            let prepare = TxnCommand::Prepare {
                txn,
                revision,
                primary,
                keys,
            };
            self.send_bank(index, group, Request::Txn(prepare));
        }
    }

    /// The transfer's writes, from the balances its ranges answered.
    fn transfer_writes(&self, index: usize) -> Writes {
        let transfer = self.bank_clients[index]
            .transfer
            .as_ref()
            .expect("a transfer");
        let balance = |account: u64| {
            transfer
                .prepared
                .values()
                .flat_map(|(_, values)| values)
                .find(|(key, _)| *key == account)
                .and_then(|(_, value)| *value)
                .unwrap_or(INITIAL_BALANCE)
        };
        vec![
            (
                transfer.from,
                balance(transfer.from).wrapping_sub(transfer.amount),
            ),
            (
                transfer.to,
                balance(transfer.to).wrapping_add(transfer.amount),
            ),
        ]
    }

    /// A slow coordinator pauses (its revision may fall below reads served meanwhile,
    /// by this leader or the next; its locks may be pushed): true if it does, and then
    /// resumes later.
    fn pauses(&mut self, index: usize) -> bool {
        if !self.rng.chance(SLOW_COORDINATOR_PROBABILITY) {
            return false;
        }
        let transfer = self.bank_clients[index]
            .transfer
            .as_ref()
            .expect("a transfer");
        let txn = transfer.txn;
        let pause_us = self.rng.range(0, SLOW_COORDINATOR_PAUSE_US_MAX);
        self.events
            .push(self.now_us + pause_us, Event::ResumeTransfer { index, txn });
        true
    }

    /// A paused coordinator goes on where it stopped: its prepares, or its commit.
    pub(crate) fn resume_transfer(&mut self, index: usize, txn: TxnId) {
        match &self.bank_clients[index].transfer {
            Some(transfer) if transfer.txn == txn && transfer.participants.is_empty() => {
                self.send_prepares(index)
            }
            Some(transfer) if transfer.txn == txn && !transfer.committing => {
                self.send_commit(index)
            }
            _ => {}
        }
    }

    /// Every range prepared: the commit goes to the primary (now, or after a pause).
    fn commit_transfer(&mut self, index: usize) {
        if !self.pauses(index) {
            self.send_commit(index);
        }
    }

    fn send_commit(&mut self, index: usize) {
        if self.bank_clients[index]
            .transfer
            .as_ref()
            .is_some_and(|transfer| transfer.audit)
        {
            return self.release_audit(index);
        }
        let writes = self.transfer_writes(index);
        let transfer = self.bank_clients[index]
            .transfer
            .as_mut()
            .expect("a transfer");
        transfer.committing = true;
        let commit = TxnCommand::Commit {
            txn: transfer.txn,
            revision: transfer.revision.expect("a revision"),
            writes,
        };
        let primary = transfer.primary;
        self.send_bank(index, primary, Request::Txn(commit));
    }

    /// An audit read every account under its locks: it writes nothing, so it releases
    /// them, raising each range's revision to the one it read at (no write may land
    /// below it later: the node's `frozen_txn::release_raises`).
    fn release_audit(&mut self, index: usize) {
        let transfer = self.bank_clients[index]
            .transfer
            .as_mut()
            .expect("a transfer");
        transfer.committing = true;
        let (txn, raise) = (transfer.txn, transfer.revision.expect("a revision"));
        let groups: Vec<(GroupId, u64)> = transfer
            .participants
            .keys()
            .map(|group| {
                let (prepared, _) = transfer.prepared[group];
                (*group, prepared)
            })
            .collect();
        transfer.releases_left = groups.len();
        for (group, prepared) in groups {
            self.send_bank(
                index,
                group,
                Request::Txn(TxnCommand::Release {
                    txn,
                    raise,
                    prepared,
                }),
            );
        }
    }

    /// Every release of an audit answered: if each range still held its lock, what it
    /// read is one consistent point, and the accounts must hold their total there.
    fn finish_audit(&mut self, index: usize) {
        let transfer = self.bank_clients[index]
            .transfer
            .as_ref()
            .expect("a transfer");
        if !transfer.releases_held {
            // A pusher ended a lock first: the node answers "try again".
            trace!(
                self,
                "bank client {index} {:?}: a lock was gone, read again",
                transfer.txn
            );
            return self.end_transfer(index, TransferEnd::Aborted);
        }
        let balances: Vec<(u64, Option<u64>)> = transfer
            .prepared
            .values()
            .flat_map(|(_, values)| values.iter().copied())
            .collect();
        let sum = balances.iter().fold(0u64, |sum, (_, balance)| {
            sum.wrapping_add(balance.unwrap_or(INITIAL_BALANCE))
        });
        let total = INITIAL_BALANCE.wrapping_mul(self.scenario.account_count);
        let (txn, revision) = (transfer.txn, transfer.revision.expect("a revision"));
        self.audits_checked += 1;
        trace!(
            self,
            "bank client {index} {txn:?} audited {sum} at {revision}"
        );
        if sum != total || balances.len() as u64 != self.scenario.account_count {
            let message = format!(
                "an audit of every account at revision {revision} ({txn:?}, a read-only \
                 transaction across ranges) read {balances:?}, summing to {sum}, not {total}"
            );
            return self.fail(Violation(message));
        }
        self.end_transfer(index, TransferEnd::Committed);
    }

    // --- Pushers ------------------------------------------------------------------------

    /// At every tick of a range's leader: a lock held too long is pushed, its primary
    /// asked to abort the transaction (which answers the record if it committed).
    pub(crate) fn push_stale_locks(&mut self, id: NodeId, group: GroupId) {
        if group == META {
            return;
        }
        let now_us = self.now_us;
        let replica = self.replica(id, group);
        if replica.raw.role() != Role::Leader {
            replica.locks_seen_us.clear();
            return;
        }
        let below = Timestamp(replica.kv.last_revision)
            .physical_ms()
            .saturating_sub(HORIZON_LAG_MS);
        let below = Timestamp::from_physical_ms(below).0;
        let look_due = now_us >= replica.horizon_proposed_us + HORIZON_EVERY_US;
        // Committed records nobody finished, born below the horizon: no lock of them is
        // left for a pusher to find (the node's coordinator forgets its records; one whose
        // forget was lost, or recorded again by a late copy of its commit, would stay for
        // good). The leader finishes them, as the node's `txn_horizon` does, and the
        // horizon then forgets them. (This simulator's coordinators never forget, so
        // every committed record takes this path once old.)
        let unfinished: Vec<(TxnId, (u64, crate::txn_kv::Writes))> = if look_due {
            replica
                .kv
                .txns
                .records
                .unfinished_committed_below(below, FINISHES_PER_LOOK_MAX)
                .into_iter()
                .map(|(txn, record)| (txn, record.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let horizon_due = look_due && replica.kv.txns.records.oldest_forgettable(below).is_some();
        if horizon_due {
            replica.horizon_proposed_us = now_us;
            trace!(
                self,
                "{id:?} {group:?} proposes a transaction horizon at {below}"
            );
            let input = crate::node::Input::Request {
                client: crate::simulation::PROBE_CLIENT,
                op: ostrakon_check::OpId::NONE,
                request: Request::Txn(TxnCommand::Horizon { below }),
            };
            self.input(id, group, input);
        }
        for (txn, (revision, writes)) in unfinished {
            if self.finishes.values().any(|finish| finish.txn() == txn) {
                continue;
            }
            if self.start_finish(group, txn, revision, &writes) {
                self.records_finished_late += 1;
            }
        }
        let replica = self.replica(id, group);
        let held: Vec<(TxnId, RangeId)> = replica
            .kv
            .txns
            .locks
            .locks()
            .map(|lock| (lock.txn, lock.primary))
            .collect();
        replica
            .locks_seen_us
            .retain(|txn, _| held.iter().any(|(held, _)| held == txn));
        let mut due = Vec::new();
        for (txn, primary) in held {
            let seen = *replica.locks_seen_us.entry(txn).or_insert(now_us);
            if now_us >= seen + PUSH_AFTER_US && !replica.pushes.contains_key(&txn) {
                due.push((txn, primary));
            }
        }
        for (txn, primary) in due {
            let number = self.next_internal_request;
            self.next_internal_request += 1;
            self.replica(id, group).pushes.insert(txn, number);
            let primary = self.live_range(id, primary.group());
            self.push_requests.insert(number, (id, group, txn, primary));
            let target = self.pick_node_as_known_on(id, primary);
            trace!(
                self,
                "{id:?} {group:?} pushes {txn:?} at {target:?} {primary:?}"
            );
            let request = Request::Txn(TxnCommand::Abort { txn });
            self.push_request(
                PUSH_REQUEST_BASE + number,
                target,
                primary,
                request,
                PUSH_TIMEOUT_US,
            );
        }
    }

    /// The range that holds `group`'s records now, as node `id` knows it: `group` while
    /// `id` holds a replica of it, else the range its replicas say absorbed it in a
    /// merge (as the node's `live_range`; a primary merged away keeps answering there).
    pub(crate) fn live_range(&self, id: NodeId, group: GroupId) -> GroupId {
        let mut group = group;
        // Each step goes to a range that absorbed the last: at most one per merge.
        for _ in 0..64 {
            if self.replica_ref(id, group).is_some() {
                return group;
            }
            let absorbing = self.groups_on(id).into_iter().find(|&g| {
                self.replica_ref(id, g)
                    .is_some_and(|r| r.kv.absorbed.contains(&group.0))
            });
            match absorbing {
                Some(next) => group = next,
                None => return group,
            }
        }
        group
    }

    /// The primary answered a push: the pusher resolves its part as the record says.
    pub(crate) fn handle_push_reply(&mut self, client: u64, reply: Reply) {
        let number = client - PUSH_REQUEST_BASE;
        if let (Reply::Failed { leader_hint }, Some(&(id, group, txn, primary))) =
            (&reply, self.push_requests.get(&number))
        {
            // A member that does not lead the primary named its leader: the push goes
            // on there, once, as the node forwards a request to its range's leader.
            // (Sent to members picked at random, a push from a node without a replica
            // of the primary missed its leader nine times in a row in seed 5254, past
            // the end of the run.) Under a new request number, so that a copy of this
            // refusal, or the first request's timeout, cannot end the push sent on.
            let current = self
                .replica_if_up(id, group)
                .is_some_and(|replica| replica.pushes.get(&txn) == Some(&number));
            let hint = *leader_hint;
            if current && hint != NodeId::NONE && !self.pushes_redirected.contains(&number) {
                let entry = self.push_requests.remove(&number).expect("looked up above");
                let redirected = self.next_internal_request;
                self.next_internal_request += 1;
                self.push_requests.insert(redirected, entry);
                self.pushes_redirected.insert(redirected);
                self.replica(id, group).pushes.insert(txn, redirected);
                self.pushes_sent_on += 1;
                trace!(self, "{id:?} sends its push of {txn:?} on to {hint:?}");
                let request = Request::Txn(TxnCommand::Abort { txn });
                let client = PUSH_REQUEST_BASE + redirected;
                self.push_request(client, hint, primary, request, PUSH_TIMEOUT_US);
                return;
            }
        }
        let Some((id, group, txn, primary)) = self.end_push(client) else {
            return;
        };
        let command = match reply {
            Reply::Txn(TxnApplied::Committed((revision, writes))) => {
                self.start_finish(primary, txn, revision, &writes);
                TxnCommand::Resolve {
                    txn,
                    revision,
                    writes,
                }
            }
            Reply::Txn(TxnApplied::Aborted | TxnApplied::Forgotten) => TxnCommand::Release {
                txn,
                raise: 0,
                prepared: 0,
            },
            _ => return, // tried again at a later tick
        };
        trace!(
            self,
            "{id:?} {group:?} resolves {txn:?} after a push: {command:?}"
        );
        // Through the replica's inputs (it may be in the middle of a Ready); nobody
        // waits for the answer.
        let input = crate::node::Input::Request {
            client: crate::simulation::PROBE_CLIENT,
            op: ostrakon_check::OpId::NONE,
            request: Request::Txn(command),
        };
        self.input(id, group, input);
    }

    pub(crate) fn push_timed_out(&mut self, client: u64) {
        self.end_push(client);
    }

    fn end_push(&mut self, client: u64) -> Option<(NodeId, GroupId, TxnId, GroupId)> {
        let number = client - PUSH_REQUEST_BASE;
        let (id, group, txn, primary) = self.push_requests.remove(&number)?;
        self.pushes_redirected.remove(&number);
        let replica = self.replica_if_up(id, group)?;
        if replica.pushes.get(&txn) != Some(&number) {
            return None;
        }
        replica.pushes.remove(&txn);
        // Pushed again only after another wait.
        replica.locks_seen_us.remove(&txn);
        Some((id, group, txn, primary))
    }

    // --- The checks at the end ----------------------------------------------------------

    /// No lock left, the accounts' total kept in the final state and in every read at
    /// one revision, every committed transaction whole in the final versions.
    pub(crate) fn check_bank(&mut self) {
        if self.scenario.account_count == 0 {
            return;
        }
        let total = INITIAL_BALANCE.wrapping_mul(self.scenario.account_count);
        let mut versions = BTreeMap::new();
        let mut records = Vec::new();
        let (mut forgotten, mut committed_forgotten) = (0, 0);
        for group in self.groups().into_iter().filter(|&g| g != META) {
            let Some(leader) = self.current_leader(group) else {
                continue;
            };
            let kv = &self.replica_ref(leader, group).expect("the leader").kv;
            let left = kv.txns.locks.locks().next().map(|lock| format!("{lock:?}"));
            if let Some(lock) = left {
                let message = format!("{group:?}: a lock was left behind: {lock}");
                self.fail(Violation(message));
                return;
            }
            versions.extend(kv.versions.iter().map(|(k, v)| (*k, *v)));
            forgotten += kv.txns.forgotten;
            for (txn, outcome) in kv.txns.records.records() {
                if let ostrakon_ranges::txn::TxnOutcome::Committed(record) = outcome {
                    records.push((*txn, record.clone()));
                }
            }
            // Those horizons forgot once pushers finished them count as well.
            records.extend(kv.txns.forgotten_committed.iter().cloned());
            committed_forgotten += kv.txns.forgotten_committed.len() as u64;
        }
        self.records_forgotten = forgotten;
        self.committed_forgotten = committed_forgotten;
        let sum_at = |revision: u64| {
            self.accounts().fold(0u64, |sum, account| {
                let balance = crate::kv::value_at(&versions, account, revision);
                sum.wrapping_add(balance.unwrap_or(INITIAL_BALANCE))
            })
        };
        if sum_at(u64::MAX) != total {
            let message = format!(
                "the accounts hold {} in the end, not {total}",
                sum_at(u64::MAX)
            );
            return self.fail(Violation(message));
        }
        // What coordinators were told: committed exactly when the record says so, and
        // an aborted transfer wrote nothing.
        for &(txn, revision, accounts, told_committed) in &self.transfer_outcomes {
            let recorded = records.iter().any(|(t, _)| *t == txn);
            let written = accounts
                .iter()
                .any(|&account| versions.contains_key(&(account, revision)));
            if told_committed != recorded || told_committed != written {
                let message = format!(
                    "{txn:?} at {revision}: its coordinator was told committed = \
                     {told_committed}, but a committed record exists = {recorded} and its \
                     writes exist = {written}"
                );
                self.fail(Violation(message));
                return;
            }
        }
        for (txn, (revision, writes)) in records {
            for (key, value) in writes {
                if versions.get(&(key, revision)) != Some(&value) {
                    let message = format!(
                        "{txn:?} committed at {revision} with account {key} = {value}, \
                         which the final versions do not hold"
                    );
                    return self.fail(Violation(message));
                }
            }
        }
        let accounts = self.accounts();
        for scan in &self.scans {
            let sum = accounts.clone().fold(0u64, |sum, account| {
                let balance = scan.values.get(&account).copied().flatten();
                sum.wrapping_add(balance.unwrap_or(INITIAL_BALANCE))
            });
            if sum != total {
                let message = format!(
                    "a read of every account at revision {} summed to {sum}, not {total}",
                    scan.revision
                );
                return self.fail(Violation(message));
            }
        }
    }
}
