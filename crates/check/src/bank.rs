//! The bank: accounts whose balances transactions move between, never creating or
//! destroying money. Every read of all accounts at one revision must find each account
//! present, no balance below zero, and the total the accounts started with. A read that
//! sums wrong saw part of a transfer (a transaction that was not atomic, or a read that
//! was not one snapshot), lost a transfer's half, or applied one twice.

use std::collections::BTreeMap;

/// At most this many examples of a wrong read are kept.
const EXAMPLES_MAX: usize = 10;

/// One read of every account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankRead {
    /// How it was read (for the report: "linearizable", "paged", "at revision", ...).
    pub kind: &'static str,
    /// The revision it was read at (the response header's, or the one asked for).
    pub revision: i64,
    /// Each account present, with its balance as stored (not parsed: a value that is
    /// not a number is itself a finding).
    pub balances: BTreeMap<String, String>,
    /// What the client found wrong in the answers themselves (a key in two pages, a page
    /// that says more follow and holds none), if anything.
    pub malformed: Option<String>,
}

/// What the reads showed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BankReport {
    /// Reads checked.
    pub reads: usize,
    /// Examples of reads that broke the invariant, described.
    pub wrong: Vec<String>,
    /// How many reads broke it.
    pub wrong_count: usize,
}

impl BankReport {
    /// Whether every read summed right.
    pub fn is_valid(&self) -> bool {
        self.wrong_count == 0
    }
}

/// Checks `reads` against the accounts' names and the total they hold together. The
/// accounts were opened at revision `opened_at`: a read below it (a serializable read of a
/// member that has not applied the opening yet) may find none of them, but not some.
pub fn check_bank(
    reads: &[BankRead],
    accounts: &[String],
    total: i64,
    opened_at: i64,
) -> BankReport {
    let mut report = BankReport {
        reads: reads.len(),
        ..BankReport::default()
    };
    for read in reads {
        if read.revision < opened_at && read.balances.is_empty() && read.malformed.is_none() {
            continue;
        }
        if let Some(problem) = problem_of(read, accounts, total) {
            report.wrong_count += 1;
            if report.wrong.len() < EXAMPLES_MAX {
                report.wrong.push(format!(
                    "{} read at revision {}: {problem}; balances {:?}",
                    read.kind, read.revision, read.balances
                ));
            }
        }
    }
    report
}

fn problem_of(read: &BankRead, accounts: &[String], total: i64) -> Option<String> {
    if let Some(malformed) = &read.malformed {
        return Some(malformed.clone());
    }
    let missing: Vec<&String> = accounts
        .iter()
        .filter(|a| !read.balances.contains_key(*a))
        .collect();
    if !missing.is_empty() {
        return Some(format!("accounts missing: {missing:?}"));
    }
    let unexpected: Vec<&String> = read
        .balances
        .keys()
        .filter(|k| !accounts.contains(k))
        .collect();
    if !unexpected.is_empty() {
        return Some(format!("keys that are no account: {unexpected:?}"));
    }
    let mut sum = 0i64;
    for (account, balance) in &read.balances {
        let Ok(balance) = balance.parse::<i64>() else {
            return Some(format!("{account} holds {balance:?}, not a number"));
        };
        if balance < 0 {
            return Some(format!("{account} is overdrawn ({balance})"));
        }
        sum += balance;
    }
    (sum != total).then(|| format!("the balances sum to {sum}, not {total}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> Vec<String> {
        (0..3).map(|i| format!("a{i}")).collect()
    }

    fn read(balances: &[(&str, &str)]) -> BankRead {
        BankRead {
            kind: "linearizable",
            revision: 7,
            balances: balances
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            malformed: None,
        }
    }

    #[test]
    fn reads_that_sum_right_pass() {
        let reads = [
            read(&[("a0", "10"), ("a1", "10"), ("a2", "10")]),
            read(&[("a0", "0"), ("a1", "25"), ("a2", "5")]),
        ];
        let report = check_bank(&reads, &accounts(), 30, 1);
        assert!(report.is_valid(), "{report:?}");
        assert_eq!(report.reads, 2);
    }

    #[test]
    fn half_a_transfer_is_caught() {
        // 5 left a0 but never reached a1: a torn transaction.
        let reads = [
            read(&[("a0", "10"), ("a1", "10"), ("a2", "10")]),
            read(&[("a0", "5"), ("a1", "10"), ("a2", "10")]),
        ];
        let report = check_bank(&reads, &accounts(), 30, 1);
        assert!(!report.is_valid());
        assert_eq!(report.wrong_count, 1);
        assert!(report.wrong[0].contains("sum to 25, not 30"), "{report:?}");
    }

    #[test]
    fn missing_overdrawn_and_garbled_accounts_are_caught() {
        let reads = [
            read(&[("a0", "10"), ("a1", "20")]),
            read(&[("a0", "-1"), ("a1", "21"), ("a2", "10")]),
            read(&[("a0", "x"), ("a1", "20"), ("a2", "10")]),
            read(&[("a0", "10"), ("a1", "10"), ("a2", "10"), ("b", "0")]),
        ];
        let report = check_bank(&reads, &accounts(), 30, 1);
        assert_eq!(report.wrong_count, 4, "{report:?}");
        assert!(report.wrong[0].contains("missing"));
        assert!(report.wrong[1].contains("overdrawn"));
        assert!(report.wrong[2].contains("not a number"));
        assert!(report.wrong[3].contains("no account"));
    }

    /// Before the opening, no account is right; some accounts are not. After it, none is
    /// not. A malformed answer is wrong whatever it holds.
    #[test]
    fn reads_below_the_opening_may_find_nothing() {
        let mut before = read(&[]);
        before.revision = 4;
        let mut partly_opened = read(&[("a0", "10")]);
        partly_opened.revision = 4;
        let after = read(&[]);
        let mut malformed = read(&[("a0", "10"), ("a1", "10"), ("a2", "10")]);
        malformed.malformed = Some("a0 in two pages".into());
        let report = check_bank(&[before.clone()], &accounts(), 30, 5);
        assert!(report.is_valid(), "{report:?}");
        let report = check_bank(
            &[before, partly_opened, after, malformed],
            &accounts(),
            30,
            5,
        );
        assert_eq!(report.wrong_count, 3, "{report:?}");
        assert!(report.wrong[2].contains("two pages"), "{report:?}");
    }
}
