//! The verdict of a run: every checker's finding, availability during each fault, and
//! the counts, as one JSON object; valid only when every checker passed.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use ostrakon_check::bank::{check_bank, BankRead};
use ostrakon_check::invariants::{
    check_set, check_watch, revisions_never_decrease, AddOutcome, RevisionObservation, WatchEvent,
};
use ostrakon_check::{
    check, simplify_unknowns, CheckResult, KeyedRegisterModel, Outcome, RegisterInput,
    RegisterOutput,
};
use serde_json::{json, Value};

use crate::convergence::Convergence;
use crate::nemesis::FaultWindow;
use crate::workload::register::{keys_of, RegisterHistory, Shape};
use crate::workload::{bank, watch, Ended, Recorded, TimelineOp};

/// How long the linearizability checker may search, per history.
const CHECK_BUDGET: Duration = Duration::from_secs(60);

/// Everything a run gathered, for the checkers.
pub(crate) struct Evidence {
    pub recorded: Recorded,
    pub timeline: Vec<TimelineOp>,
    pub faults: Vec<FaultWindow>,
    pub convergence: Convergence,
    pub final_set: Result<BTreeMap<String, i64>, String>,
    pub final_bank: Result<BankRead, String>,
    pub watch_start: i64,
    pub watched: Vec<(String, watch::Received, bool)>,
    pub reference: Result<Vec<WatchEvent>, String>,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Every checker passed.
    pub valid: bool,
    /// The JSON verdict.
    pub json: Value,
    /// Every operation, for the report's plots.
    pub timeline: Vec<TimelineOp>,
    /// The faults injected.
    pub faults: Vec<FaultWindow>,
    /// The members' logs and data, kept when the verdict is not valid.
    pub logs: Option<PathBuf>,
}

/// One checker's finding.
struct Finding {
    valid: bool,
    detail: Value,
}

fn linearizable(history: &RegisterHistory) -> Finding {
    // Written values are unique, so unknown outcomes can be resolved or dropped soundly
    // before the search, which would otherwise have to place each one up to infinity.
    let ops = simplify_unknowns(history.ops());
    let result = check(&KeyedRegisterModel, &ops, CHECK_BUDGET);
    let counts = history.counts();
    let (checker, explanation) = match &result {
        CheckResult::Linearizable => ("linearizable", None),
        CheckResult::NotLinearizable(why) => ("not linearizable", Some(why.to_string())),
        CheckResult::Unknown => ("unknown (the search ran out of its budget)", None),
    };
    Finding {
        valid: result.is_linearizable(),
        detail: json!({
            "checker": checker,
            "ops": history.len(),
            "ok": counts.ok,
            "failed": counts.failed,
            "unknown": counts.unknown,
            "explanation": explanation,
        }),
    }
}

/// Every (key, value) a client saw acknowledged.
fn acknowledged_writes(recorded: &Recorded) -> Vec<(String, String)> {
    let mut writes = Vec::new();
    for (shape, history) in [
        (Shape::SingleKeys, &recorded.registers.history),
        (Shape::TxnGroups, &recorded.txns.history),
    ] {
        for op in history.ops() {
            let (register, input) = &op.input;
            let value = match (input, &op.outcome) {
                (RegisterInput::Write(v), Outcome::Ok(_)) => *v,
                (RegisterInput::Cas { new, .. }, Outcome::Ok(RegisterOutput::Cas(true))) => *new,
                _ => continue,
            };
            for key in keys_of(shape, *register) {
                writes.push((key, value.to_string()));
            }
        }
    }
    for (element, outcome) in &recorded.set {
        if *outcome == AddOutcome::Ok {
            let sequence = element.rsplit('-').next().unwrap_or_default();
            writes.push((element.clone(), sequence.to_string()));
        }
    }
    writes
}

fn watch_finding(evidence: &Evidence) -> Finding {
    let reference = match &evidence.reference {
        Ok(reference) => reference,
        Err(error) => {
            return Finding {
                valid: false,
                detail: json!({ "error": error }),
            }
        }
    };
    let mut valid = true;
    let mut watchers = Vec::new();
    for (member, received, caught_up) in &evidence.watched {
        let responses = &received.responses;
        let report = check_watch(responses, reference);
        valid &= report.is_valid() && *caught_up;
        watchers.push(json!({
            "member": member,
            "caught_up": caught_up,
            "events": report.events,
            "responses": responses.len(),
            "connections": received.connections.len(),
            "first_gap": first_gap(received, reference),
            "out_of_order": report.out_of_order,
            "duplicates": report.duplicates,
            "missing": report.missing,
            "unexpected": report.unexpected,
            "split_revisions": report.split_revisions,
        }));
    }
    // Every acknowledged write must be among the events, with its value.
    let events: HashSet<(&str, &str)> = reference
        .iter()
        .filter(|e| e.is_put)
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    let acknowledged = acknowledged_writes(&evidence.recorded);
    let unseen: Vec<String> = acknowledged
        .iter()
        .filter(|(k, v)| !events.contains(&(k.as_str(), v.as_str())))
        .take(10)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    valid &= unseen.is_empty();
    Finding {
        valid,
        detail: json!({
            "start_revision": evidence.watch_start,
            "reference_events": reference.len(),
            "acknowledged_writes": acknowledged.len(),
            "acknowledged_writes_not_in_events": unseen,
            "watchers": watchers,
        }),
    }
}

/// Where a watcher's first missing event (of the reference) should have come: the
/// events it received just before and after that revision, when, and the connections
/// made between them; None if it missed nothing. Enough to find the moment in the
/// members' logs.
fn first_gap(received: &watch::Received, reference: &[WatchEvent]) -> Option<Value> {
    let seen: HashSet<&WatchEvent> = received.responses.iter().flatten().collect();
    let missing = reference.iter().find(|event| !seen.contains(event))?;
    let mut before: Option<(usize, i64)> = None;
    let mut after: Option<(usize, i64)> = None;
    for (index, response) in received.responses.iter().enumerate() {
        for event in response {
            if event.revision < missing.revision {
                before = Some((index, event.revision));
            } else if event.revision > missing.revision && after.is_none() {
                after = Some((index, event.revision));
            }
        }
    }
    let place = |at: Option<(usize, i64)>| {
        at.map(|(index, revision)| {
            json!({
                "revision": revision,
                "response": index,
                "arrived_ms": received.arrived_ms.get(index),
            })
        })
    };
    let low = before.map_or(0, |(index, _)| index + 1);
    let high = after.map_or(usize::MAX, |(index, _)| index);
    let connections: Vec<Value> = received
        .connections
        .iter()
        .filter(|c| c.after_responses >= low && c.after_responses <= high)
        .map(|c| {
            json!({
                "after_responses": c.after_responses,
                "start_revision": c.start_revision,
                "at_ms": c.at_ms,
            })
        })
        .collect();
    Some(json!({
        "missing": format!("{} at revision {}", missing.key, missing.revision),
        "received_before": place(before),
        "received_after": place(after),
        "connections_between": connections,
    }))
}

/// The timestamp oracle's promises: unique, increasing in real-time order.
fn timestamps_finding(ops: &crate::workload::timestamps::Recorded) -> Finding {
    let answered = ops
        .iter()
        .filter(|op| matches!(op.outcome, ostrakon_check::Outcome::Ok(_)))
        .count();
    let result = ostrakon_check::check_timestamps(ops);
    Finding {
        // A run in which the oracle answered nothing proves nothing about it.
        valid: result.is_ok() && answered > 0,
        detail: json!({
            "requests": ops.len(),
            "answered": answered,
            "violation": result.err(),
        }),
    }
}

/// The bank's promise: every read of all accounts, during the faults and after, finds
/// the money the accounts opened with. A run in which no transfer committed, or no read
/// completed, proves nothing and is not valid.
fn bank_finding(recorded: &bank::Recorded, final_read: &Result<BankRead, String>) -> Finding {
    let opened = match &recorded.opened {
        Ok(revision) => *revision,
        Err(error) => {
            return Finding {
                valid: false,
                detail: json!({ "error": error }),
            }
        }
    };
    let mut reads = recorded.reads.clone();
    let final_error = match final_read {
        Ok(read) => {
            reads.push(read.clone());
            None
        }
        Err(error) => Some(format!("the final read failed: {error}")),
    };
    let report = check_bank(&reads, &bank::accounts(), bank::total(), opened);
    let transfers = recorded.transfers;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for read in &reads {
        *kinds.entry(read.kind).or_default() += 1;
    }
    Finding {
        valid: report.is_valid()
            && final_error.is_none()
            && transfers.committed > 0
            && !recorded.reads.is_empty(),
        detail: json!({
            "accounts": bank::accounts().len(),
            "total": bank::total(),
            "opened_at": opened,
            "transfers_committed": transfers.committed,
            "transfers_refused": transfers.refused,
            "transfers_failed": transfers.failed,
            "transfers_unknown": transfers.unknown,
            "reads": kinds,
            "wrong_reads": report.wrong_count,
            "wrong": report.wrong,
            "final_error": final_error,
        }),
    }
}

fn revisions_finding(timeline: &[TimelineOp]) -> Finding {
    let observations: Vec<RevisionObservation> = timeline
        .iter()
        .filter(|op| op.ended == Ended::Ok)
        .filter_map(|op| {
            Some(RevisionObservation {
                client: op.client,
                invoked_at: op.invoked_us,
                completed_at: op.completed_us?,
                revision: op.revision?,
            })
        })
        .collect();
    let violations = revisions_never_decrease(&observations);
    Finding {
        valid: violations.is_empty(),
        detail: json!({ "responses": observations.len(), "violations": violations }),
    }
}

/// Availability during each fault, and whether members cut off from the majority
/// acknowledged writes (a CP system must refuse them).
fn availability(timeline: &[TimelineOp], faults: &[FaultWindow]) -> (Finding, Vec<Value>) {
    let mut valid = true;
    let mut windows = Vec::new();
    for fault in faults {
        let (start_us, end_us) = (fault.start_ms * 1000, fault.end_ms * 1000);
        let during: Vec<&TimelineOp> = timeline
            .iter()
            .filter(|op| op.invoked_us >= start_us && op.invoked_us <= end_us)
            .collect();
        let ok = during.iter().filter(|op| op.ended == Ended::Ok).count();
        let writes = during.iter().filter(|op| op.write).count();
        let writes_ok = during
            .iter()
            .filter(|op| op.write && op.ended == Ended::Ok)
            .count();
        let cut_off_writes_ok = during
            .iter()
            .filter(|op| {
                op.write
                    && op.ended == Ended::Ok
                    && op.member.is_some_and(|m| fault.cut_off.contains(&m))
                    && op.completed_us.is_some_and(|c| c <= end_us)
            })
            .count();
        valid &= cut_off_writes_ok == 0;
        let fraction = |part: usize, whole: usize| {
            if whole == 0 {
                Value::Null
            } else {
                json!((part as f64 / whole as f64 * 1000.0).round() / 1000.0)
            }
        };
        windows.push(json!({
            "fault": fault.fault,
            "what": fault.what,
            "start_ms": fault.start_ms,
            "end_ms": fault.end_ms,
            "ops": during.len(),
            "ok": ok,
            "availability": fraction(ok, during.len()),
            "write_availability": fraction(writes_ok, writes),
            "cut_off": fault.cut_off,
            "cut_off_writes_ok": cut_off_writes_ok,
        }));
    }
    (
        Finding {
            valid,
            detail: json!({ "cut_off_members_acknowledged_no_write": valid }),
        },
        windows,
    )
}

pub(crate) fn judge(evidence: Evidence, config: &crate::RunConfig) -> Verdict {
    let mut checks: BTreeMap<&str, Finding> = BTreeMap::new();
    checks.insert(
        "registers",
        linearizable(&evidence.recorded.registers.history),
    );
    let mut txn = linearizable(&evidence.recorded.txns.history);
    let torn = &evidence.recorded.txns.torn_reads;
    txn.valid &= torn.is_empty();
    txn.detail["torn_reads"] = json!(torn.iter().take(10).collect::<Vec<_>>());
    checks.insert("txn", txn);
    let set = match &evidence.final_set {
        Ok(present) => {
            let report = check_set(&evidence.recorded.set, present);
            Finding {
                valid: report.is_valid(),
                detail: json!({
                    "added": evidence.recorded.set.len(),
                    "acknowledged": report.acknowledged,
                    "unknown_present": report.unknown_present,
                    "lost": report.lost.iter().take(10).collect::<Vec<_>>(),
                    "lost_count": report.lost.len(),
                    "duplicated": report.duplicated.iter().take(10).collect::<Vec<_>>(),
                    "failed_but_present": report.failed_but_present.iter().take(10).collect::<Vec<_>>(),
                    "unexpected": report.unexpected.iter().take(10).collect::<Vec<_>>(),
                }),
            }
        }
        Err(error) => Finding {
            valid: false,
            detail: json!({ "error": format!("the final read failed: {error}") }),
        },
    };
    let lost = set.detail["lost_count"].as_u64().unwrap_or(0);
    checks.insert("set", set);
    checks.insert("revisions", revisions_finding(&evidence.timeline));
    checks.insert(
        "timestamps",
        timestamps_finding(&evidence.recorded.timestamps),
    );
    checks.insert("watch", watch_finding(&evidence));
    checks.insert(
        "bank",
        bank_finding(&evidence.recorded.bank, &evidence.final_bank),
    );
    checks.insert(
        "convergence",
        Finding {
            valid: evidence.convergence.converged,
            detail: json!({
                "revision": evidence.convergence.revision,
                "hashes": evidence.convergence.hashes.iter()
                    .map(|(name, hash)| json!({ "member": name, "hash": hash }))
                    .collect::<Vec<_>>(),
                "problem": evidence.convergence.problem,
            }),
        },
    );
    let (available, windows) = availability(&evidence.timeline, &evidence.faults);
    checks.insert("availability", available);
    let fault_violations: Vec<&String> =
        evidence.faults.iter().flat_map(|f| &f.violations).collect();
    checks.insert(
        "faults",
        Finding {
            valid: fault_violations.is_empty(),
            detail: json!({ "violations": fault_violations }),
        },
    );
    let valid = checks.values().all(|c| c.valid);
    let failing: Vec<&str> = checks
        .iter()
        .filter(|(_, c)| !c.valid)
        .map(|(name, _)| *name)
        .collect();
    let count = |ended: Ended| {
        evidence
            .timeline
            .iter()
            .filter(|op| op.ended == ended)
            .count()
    };
    let json = json!({
        "valid": valid,
        "failing_checks": failing,
        "nemesis": config.nemesis.to_string(),
        "network": format!("{:?}", config.network).to_lowercase(),
        "nodes": config.nodes,
        "split_at": config.split_at,
        "duration_s": config.duration.as_secs_f64(),
        "ops": evidence.timeline.len(),
        "ok": count(Ended::Ok),
        "failed": count(Ended::Failed),
        "unknown": count(Ended::Unknown),
        "lost": lost,
        "checks": checks.iter().map(|(name, c)| {
            let mut detail = c.detail.clone();
            detail["valid"] = json!(c.valid);
            (name.to_string(), detail)
        }).collect::<serde_json::Map<String, Value>>(),
        "availability": windows,
    });
    Verdict {
        valid,
        json,
        timeline: evidence.timeline,
        faults: evidence.faults,
        logs: None,
    }
}
