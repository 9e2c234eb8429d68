//! The bank: `ACCOUNTS` accounts under `BANK_PREFIX`, opened together by one Txn before
//! the faults begin. Clients (and one that only reads) move money between two accounts at a time (a Txn that
//! compares both accounts' mod revisions with what the client just read, then puts both
//! new balances) and read every account at one revision, four ways: a linearizable
//! Range, a serializable one, pages of three accounts at the first page's revision, and
//! a Range at a revision seen earlier; and, right after each of its own transfers that
//! committed, a linearizable Range. Every read must find the total the accounts opened
//! with (`ostrakon_check::bank`).
//!
//! A split inside the accounts (`ostrakon chaos --split-at chaos/bank/4`) puts a
//! transfer's two accounts in different ranges: it commits by two-phase commit, and
//! each read reads several ranges at one revision.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};
use ostrakon_check::bank::BankRead;
use rand::Rng;

use super::{connect, write_error_is_definite, Ended, Recorder, TimelineOp};
use crate::cluster::Cluster;

/// The accounts' prefix.
pub const BANK_PREFIX: &str = "chaos/bank/";
/// The first key after every account (the prefix's range end).
const BANK_END: &str = "chaos/bank0";
/// Accounts.
const ACCOUNTS: usize = 8;
/// What each account opens with.
const INITIAL_BALANCE: i64 = 100;
/// Clients moving money and reading.
const CLIENTS: u64 = 2;
/// Clients that only read (they catch what a transfer shows only for a moment).
const READERS: u64 = 1;
/// Client ids on the timeline.
const CLIENT_BASE: u64 = 3000;
/// Accounts per page of a paged read.
const PAGE_ACCOUNTS: i64 = 3;
/// Revisions a client keeps, its latest, for its reads at a revision.
const SEEN_REVISIONS_KEPT: usize = 1000;
/// How long opening the accounts may take (the cluster has just started).
const OPEN_ATTEMPTS: usize = 60;

/// The accounts' keys.
pub fn accounts() -> Vec<String> {
    (0..ACCOUNTS).map(|i| format!("{BANK_PREFIX}{i}")).collect()
}

/// The money in the bank.
pub fn total() -> i64 {
    ACCOUNTS as i64 * INITIAL_BALANCE
}

/// How the transfers ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct TransferCounts {
    /// Committed: the money moved.
    pub committed: u64,
    /// Refused by their compares (another transfer came first): nothing moved.
    pub refused: u64,
    /// Definitely not applied.
    pub failed: u64,
    /// The client never learned.
    pub unknown: u64,
}

/// What the bank's clients recorded.
pub struct Recorded {
    /// The revision the accounts were opened at, or why they could not be.
    pub opened: Result<i64, String>,
    /// Every read of all accounts that completed.
    pub reads: Vec<BankRead>,
    /// How the transfers ended.
    pub transfers: TransferCounts,
}

#[derive(Default)]
struct Shared {
    reads: Vec<BankRead>,
    transfers: TransferCounts,
}

/// The running bank.
pub struct BankWorkload {
    opened: Result<i64, String>,
    shared: Arc<Mutex<Shared>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl BankWorkload {
    /// Opens the accounts, then starts the clients (none if the accounts could not be
    /// opened: the verdict then says so).
    pub async fn start(cluster: &Cluster, recorder: Arc<Recorder>) -> BankWorkload {
        let endpoints = cluster.endpoints();
        let opened = open_accounts(&endpoints).await;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let clients = match opened {
            Ok(opened_at) => (0..CLIENTS + READERS)
                .map(|i| {
                    let client = Client {
                        id: CLIENT_BASE + i,
                        reader: i >= CLIENTS,
                        endpoints: endpoints.clone(),
                        shared: shared.clone(),
                        recorder: recorder.clone(),
                        seen_revisions: VecDeque::from([opened_at]),
                        read_next: false,
                    };
                    tokio::spawn(client.run())
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        BankWorkload {
            opened,
            shared,
            clients,
        }
    }

    /// Waits for the clients (the recorder's stop flag is set).
    pub async fn stop(&mut self) -> Recorded {
        for client in std::mem::take(&mut self.clients) {
            let _ = client.await;
        }
        let shared = std::mem::take(&mut *self.shared.lock().unwrap());
        Recorded {
            opened: self.opened.clone(),
            reads: shared.reads,
            transfers: shared.transfers,
        }
    }
}

/// Puts every account's opening balance in one Txn, unless the first account exists (an
/// earlier attempt whose answer was lost applied). Returns the revision of the Txn that
/// found them open.
async fn open_accounts(endpoints: &[String]) -> Result<i64, String> {
    let mut last_error = String::from("no member answered");
    for _ in 0..OPEN_ATTEMPTS {
        let Some(mut etcd) = connect(endpoints).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let opening = accounts()
            .into_iter()
            .map(|account| TxnOp::put(account, INITIAL_BALANCE.to_string(), None))
            .collect::<Vec<_>>();
        let txn = Txn::new()
            .when([Compare::create_revision(
                accounts()[0].clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(opening);
        match etcd.txn(txn).await {
            Ok(response) => return Ok(response.header().map_or(0, |h| h.revision())),
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("the accounts could not be opened: {last_error}"))
}

/// Reads every account after the cluster healed (linearizable, from any member).
pub async fn read_final(endpoints: &[String]) -> Result<BankRead, String> {
    let mut last_error = String::from("no member answered");
    for _ in 0..20 {
        if let Some(mut etcd) = connect(endpoints).await {
            match etcd
                .get(BANK_PREFIX, Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(response) => {
                    let revision = response.header().map_or(0, |h| h.revision());
                    return Ok(bank_read("final", revision, &[response]));
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last_error)
}

/// The balances in `pages`, and what is wrong with the pages themselves: a key in two
/// of them, a page that says more follow and holds none, or more after the last page.
fn bank_read(kind: &'static str, revision: i64, pages: &[GetResponse]) -> BankRead {
    let mut balances = std::collections::BTreeMap::new();
    let mut malformed = None;
    for (number, page) in pages.iter().enumerate() {
        if page.more() && page.kvs().is_empty() {
            malformed = Some(format!("page {number} says more follow and holds no key"));
        }
        for kv in page.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = String::from_utf8_lossy(kv.value()).into_owned();
            if balances.insert(key.clone(), value).is_some() {
                malformed = Some(format!("{key} came twice"));
            }
        }
    }
    if pages.last().is_some_and(|page| page.more()) {
        malformed = Some(format!("more after {} pages of 8 accounts", pages.len()));
    }
    BankRead {
        kind,
        revision,
        balances,
        malformed,
    }
}

/// How a read of every account is made.
#[derive(Clone, Copy)]
enum ReadKind {
    Linearizable,
    Serializable,
    Paged,
    AtRevision,
}

struct Client {
    id: u64,
    /// Only reads.
    reader: bool,
    endpoints: Vec<String>,
    shared: Arc<Mutex<Shared>>,
    recorder: Arc<Recorder>,
    /// Revisions this client's linearizable reads answered with: where its reads at a
    /// revision read.
    seen_revisions: VecDeque<i64>,
    /// Its last transfer committed: the next step reads every account. The client is
    /// answered once the transfer commits in its first range; the other range writes its
    /// part a moment later, so this read lands where a read that ignored the other
    /// range's lock would see part of the transfer.
    read_next: bool,
}

/// What one step did, for the timeline.
struct Step {
    write: bool,
    ended: Ended,
    /// The header's revision, when the checker of revisions may compare it: a stale
    /// read (serializable) or one at an old revision carries none.
    revision: Option<i64>,
}

impl Client {
    async fn run(mut self) {
        let mut connection = None;
        for _ in 0..super::OPERATIONS_PER_CLIENT_MAX {
            if self.recorder.stopping() {
                break;
            }
            if connection.is_none() {
                connection = connect(&self.endpoints).await;
                if connection.is_none() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
            let etcd = connection.as_mut().expect("connected above");
            let invoked_us = self.recorder.now_us();
            let choice = if std::mem::take(&mut self.read_next) {
                12
            } else if self.reader {
                rand::thread_rng().gen_range(12..20)
            } else {
                rand::thread_rng().gen_range(0..20)
            };
            let step = match choice {
                0..=11 => self.transfer(etcd).await,
                12..=15 => self.read(etcd, ReadKind::Linearizable).await,
                16 | 17 => self.read(etcd, ReadKind::Paged).await,
                18 => self.read(etcd, ReadKind::Serializable).await,
                _ => self.read(etcd, ReadKind::AtRevision).await,
            };
            let Some(step) = step else { continue };
            let completed_us = self.recorder.now_us();
            self.recorder.record(TimelineOp {
                workload: "bank",
                client: self.id,
                member: None,
                write: step.write,
                invoked_us,
                completed_us: (step.ended != Ended::Unknown).then_some(completed_us),
                ended: step.ended,
                revision: step.revision,
            });
            if step.ended != Ended::Ok {
                // Without a leader every request fails fast; don't spin on it.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Moves a little money between two accounts; None when the source is empty.
    async fn transfer(&mut self, etcd: &mut etcd_client::Client) -> Option<Step> {
        let accounts = accounts();
        let (from, to) = {
            let mut rng = rand::thread_rng();
            let from = rng.gen_range(0..ACCOUNTS);
            let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
            (accounts[from].clone(), accounts[to].clone())
        };
        // Both balances in one read-only Txn (one revision, across ranges if they are).
        let read =
            Txn::new().and_then([TxnOp::get(from.clone(), None), TxnOp::get(to.clone(), None)]);
        let response = match etcd.txn(read).await {
            Ok(response) => response,
            Err(_) => {
                return Some(Step {
                    write: false,
                    ended: Ended::Failed,
                    revision: None,
                })
            }
        };
        let mut found = response.op_responses().into_iter().map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| {
                let balance = String::from_utf8_lossy(kv.value()).parse::<i64>().ok()?;
                Some((balance, kv.mod_revision()))
            }),
            _ => None,
        });
        let (Some((from_balance, from_revision)), Some((to_balance, to_revision))) =
            (found.next().flatten(), found.next().flatten())
        else {
            // An account missing or garbled: the reads of every account will show it.
            return None;
        };
        if from_balance <= 0 {
            return None;
        }
        let amount = rand::thread_rng().gen_range(1..=from_balance.min(5));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(from.clone(), CompareOp::Equal, from_revision),
                Compare::mod_revision(to.clone(), CompareOp::Equal, to_revision),
            ])
            .and_then([
                TxnOp::put(from, (from_balance - amount).to_string(), None),
                TxnOp::put(to, (to_balance + amount).to_string(), None),
            ]);
        let result = etcd.txn(txn).await;
        let mut shared = self.shared.lock().unwrap();
        let (ended, revision) = match &result {
            Ok(response) => {
                if response.succeeded() {
                    shared.transfers.committed += 1;
                    self.read_next = true;
                } else {
                    shared.transfers.refused += 1;
                }
                (Ended::Ok, response.header().map(|h| h.revision()))
            }
            Err(error) if write_error_is_definite(error) => {
                shared.transfers.failed += 1;
                (Ended::Failed, None)
            }
            Err(_) => {
                shared.transfers.unknown += 1;
                (Ended::Unknown, None)
            }
        };
        Some(Step {
            write: true,
            ended,
            revision,
        })
    }

    /// Reads every account one way and keeps the read for the checker.
    async fn read(&mut self, etcd: &mut etcd_client::Client, kind: ReadKind) -> Option<Step> {
        let prefix = GetOptions::new().with_range(BANK_END);
        let result = match kind {
            ReadKind::Linearizable => etcd
                .get(BANK_PREFIX, Some(prefix))
                .await
                .map(|page| (page.header().map_or(0, |h| h.revision()), vec![page])),
            ReadKind::Serializable => etcd
                .get(BANK_PREFIX, Some(prefix.with_serializable()))
                .await
                .map(|page| (page.header().map_or(0, |h| h.revision()), vec![page])),
            ReadKind::AtRevision => {
                let at = {
                    let seen = &self.seen_revisions;
                    seen[rand::thread_rng().gen_range(0..seen.len())]
                };
                etcd.get(BANK_PREFIX, Some(prefix.with_revision(at)))
                    .await
                    .map(|page| (at, vec![page]))
            }
            ReadKind::Paged => read_pages(etcd).await,
        };
        let Ok((revision, pages)) = result else {
            // A read changes nothing: a failed one is simply left out.
            return Some(Step {
                write: false,
                ended: Ended::Failed,
                revision: None,
            });
        };
        let name = match kind {
            ReadKind::Linearizable => "linearizable",
            ReadKind::Serializable => "serializable",
            ReadKind::Paged => "paged",
            ReadKind::AtRevision => "at revision",
        };
        self.shared
            .lock()
            .unwrap()
            .reads
            .push(bank_read(name, revision, &pages));
        let current = matches!(kind, ReadKind::Linearizable | ReadKind::Paged);
        if current {
            // The latest ones: reads at a revision go over the whole run as it goes.
            if self.seen_revisions.len() == SEEN_REVISIONS_KEPT {
                self.seen_revisions.pop_front();
            }
            self.seen_revisions.push_back(revision);
        }
        Some(Step {
            write: false,
            ended: Ended::Ok,
            revision: current.then_some(revision),
        })
    }
}

/// Every account, `PAGE_ACCOUNTS` per page, each page at the first page's revision (as
/// kube-apiserver lists).
async fn read_pages(
    etcd: &mut etcd_client::Client,
) -> Result<(i64, Vec<GetResponse>), etcd_client::Error> {
    let first = etcd
        .get(
            BANK_PREFIX,
            Some(
                GetOptions::new()
                    .with_range(BANK_END)
                    .with_limit(PAGE_ACCOUNTS),
            ),
        )
        .await?;
    let revision = first.header().map_or(0, |h| h.revision());
    let mut more = first.more();
    let mut pages = vec![first];
    // At most one page per account, whatever the server says of `more`.
    for _ in 0..ACCOUNTS {
        if !more {
            break;
        }
        let Some(last) = pages
            .last()
            .and_then(|page| page.kvs().last())
            .map(|kv| kv.key().to_vec())
        else {
            // A page that says more follow and holds no key: `bank_read` reports it.
            break;
        };
        let mut next = last;
        next.push(0);
        let page = etcd
            .get(
                next,
                Some(
                    GetOptions::new()
                        .with_range(BANK_END)
                        .with_limit(PAGE_ACCOUNTS)
                        .with_revision(revision),
                ),
            )
            .await?;
        more = page.more();
        pages.push(page);
    }
    Ok((revision, pages))
}
