//! The verdict of a run, as JSON: valid or not, the operation counts, the fault windows
//! and, when the history is not linearizable, why.

use std::time::Duration;

use ostrakon_check::{check, simplify_unknowns, CheckResult, KeyedRegisterModel};

use crate::nemesis::FaultWindow;
use crate::workload::RegisterHistory;
use crate::RunConfig;

/// How long the linearizability checker may search.
const CHECK_BUDGET: Duration = Duration::from_secs(60);

/// The outcome of a run.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Linearizable (and checked within the budget).
    pub valid: bool,
    /// The checker's answer: "linearizable", "not linearizable" or "unknown" (budget).
    pub checker: String,
    /// Operations recorded.
    pub ops: usize,
    /// Operations that completed with a result.
    pub ok: usize,
    /// Operations that definitely did not apply.
    pub failed: usize,
    /// Operations whose outcome the client never learned.
    pub unknown: usize,
    /// The faults injected.
    pub faults: Vec<FaultWindow>,
    /// Why the history is not linearizable, if it is not.
    pub explanation: Option<String>,
    /// The nemesis's name.
    pub nemesis: String,
}

impl Verdict {
    /// The verdict as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "valid": self.valid,
            "checker": self.checker,
            "nemesis": self.nemesis,
            "ops": self.ops,
            "ok": self.ok,
            "failed": self.failed,
            "unknown": self.unknown,
            "faults": self.faults.iter().map(|f| serde_json::json!({
                "what": f.what, "start_ms": f.start_ms, "end_ms": f.end_ms,
            })).collect::<Vec<_>>(),
            "explanation": self.explanation,
        })
    }
}

pub(crate) fn judge(
    history: RegisterHistory,
    faults: Vec<FaultWindow>,
    config: &RunConfig,
) -> Verdict {
    let counts = history.counts();
    // Written values are unique, so unknown outcomes can be resolved or dropped soundly
    // before the search, which would otherwise have to place each one up to infinity.
    let ops = simplify_unknowns(history.ops());
    let result = check(&KeyedRegisterModel, &ops, CHECK_BUDGET);
    let (checker, explanation) = match &result {
        CheckResult::Linearizable => ("linearizable", None),
        CheckResult::NotLinearizable(why) => ("not linearizable", Some(format!("{why:?}"))),
        CheckResult::Unknown => ("unknown", None),
    };
    Verdict {
        valid: result.is_linearizable(),
        checker: checker.to_string(),
        ops: history.len(),
        ok: counts.ok,
        failed: counts.failed,
        unknown: counts.unknown,
        faults,
        explanation,
        nemesis: format!("{:?}", config.nemesis),
    }
}
