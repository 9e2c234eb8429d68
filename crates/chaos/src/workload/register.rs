//! Registers: clients read, write and compare-and-set, each operation recorded with its
//! invocation and completion time and its outcome. A write whose outcome the client did
//! not learn is recorded as unknown: it may have applied.
//!
//! Two shapes share the code. Single keys use Range, Put and a Txn compare-and-set. Txn
//! groups are registers made of several keys: every write is one Txn putting the same
//! value on each key, every read one Range over the group, so a read that finds the keys
//! disagreeing, or changed at different revisions, shows a Txn that was not atomic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use ostrakon_check::{History, Outcome, RegisterInput, RegisterOutput};
use rand::Rng;

use super::{connect, write_error_is_definite, Ended, Recorder, TimelineOp};
use crate::cluster::Cluster;

/// The history of a register workload: inputs are (register, operation).
pub type RegisterHistory = History<(u64, RegisterInput), RegisterOutput>;

/// Keys in a Txn group.
const GROUP_KEYS: usize = 3;

/// Which registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One key per register.
    SingleKeys,
    /// `GROUP_KEYS` keys per register, written by one Txn.
    TxnGroups,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::SingleKeys => "register",
            Shape::TxnGroups => "txn",
        }
    }

    fn client_base(self) -> u64 {
        match self {
            Shape::SingleKeys => 0,
            Shape::TxnGroups => 1000,
        }
    }
}

/// What a register workload recorded.
pub struct Recorded {
    /// The history.
    pub history: RegisterHistory,
    /// Reads of a group that found its keys disagreeing (Txn groups only).
    pub torn_reads: Vec<String>,
}

/// The running workload.
pub struct RegisterWorkload {
    history: Arc<Mutex<RegisterHistory>>,
    torn_reads: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

fn key_name(shape: Shape, register: u64) -> String {
    match shape {
        Shape::SingleKeys => format!("{}register/{register}", super::KEY_PREFIX),
        Shape::TxnGroups => format!("{}txn/{register}/", super::KEY_PREFIX),
    }
}

/// The keys a register is stored under.
pub fn keys_of(shape: Shape, register: u64) -> Vec<String> {
    let name = key_name(shape, register);
    match shape {
        Shape::SingleKeys => vec![name],
        Shape::TxnGroups => (0..GROUP_KEYS).map(|k| format!("{name}{k}")).collect(),
    }
}

impl RegisterWorkload {
    /// Starts `clients` clients on `registers` registers.
    pub fn start(
        cluster: &Cluster,
        recorder: Arc<Recorder>,
        shape: Shape,
        clients: usize,
        registers: u64,
    ) -> RegisterWorkload {
        let history = Arc::new(Mutex::new(History::new()));
        let torn_reads = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..clients as u64)
            .map(|client| {
                let client = Client {
                    id: shape.client_base() + client,
                    shape,
                    endpoints: cluster.endpoints(),
                    registers,
                    history: history.clone(),
                    torn_reads: torn_reads.clone(),
                    recorder: recorder.clone(),
                };
                tokio::spawn(client.run())
            })
            .collect();
        RegisterWorkload {
            history,
            torn_reads,
            clients: handles,
        }
    }

    /// Waits for the clients (the recorder's stop flag is set) and returns the history;
    /// operations still pending are unknown.
    pub async fn stop(&mut self) -> Recorded {
        for client in std::mem::take(&mut self.clients) {
            let _ = client.await;
        }
        let mut history = std::mem::take(&mut *self.history.lock().unwrap());
        history.finish_pending_as_unknown();
        Recorded {
            history,
            torn_reads: std::mem::take(&mut *self.torn_reads.lock().unwrap()),
        }
    }
}

struct Client {
    id: u64,
    shape: Shape,
    endpoints: Vec<String>,
    registers: u64,
    history: Arc<Mutex<RegisterHistory>>,
    torn_reads: Arc<Mutex<Vec<String>>>,
    recorder: Arc<Recorder>,
}

impl Client {
    async fn run(self) {
        let mut connection = None;
        // Values are unique across clients: the client id in the high digits.
        let mut next_value = (self.id + 1) * 1_000_000_000;
        // What this client last read of each register: what its compare-and-sets expect,
        // so that many of them succeed.
        let mut last_read: HashMap<u64, Option<u64>> = HashMap::new();
        for _ in 0..super::OPERATIONS_PER_CLIENT_MAX {
            if self.recorder.stopping() {
                break;
            }
            if connection.is_none() {
                connection = connect(&self.endpoints).await;
                if connection.is_none() {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            }
            let etcd = connection.as_mut().expect("connected above");
            let register = rand::thread_rng().gen_range(0..self.registers);
            let input = match rand::thread_rng().gen_range(0..10) {
                0..=3 => RegisterInput::Read,
                4..=6 => {
                    next_value += 1;
                    RegisterInput::Write(next_value)
                }
                _ => {
                    next_value += 1;
                    let expected = match rand::thread_rng().gen_range(0..4) {
                        0 => None,
                        _ => last_read.get(&register).copied().flatten(),
                    };
                    RegisterInput::Cas {
                        expected,
                        new: next_value,
                    }
                }
            };
            let invoked_us = self.recorder.now_us();
            let id =
                self.history
                    .lock()
                    .unwrap()
                    .invoke(self.id, (register, input.clone()), invoked_us);
            let (outcome, revision) = self.perform(etcd, register, &input).await;
            let completed_us = self.recorder.now_us();
            if let Outcome::Ok(RegisterOutput::Read(value)) = &outcome {
                last_read.insert(register, *value);
            }
            self.recorder.record(TimelineOp {
                workload: self.shape.name(),
                client: self.id,
                member: None,
                write: input != RegisterInput::Read,
                invoked_us,
                completed_us: (!matches!(outcome, Outcome::Unknown)).then_some(completed_us),
                ended: match outcome {
                    Outcome::Ok(_) => Ended::Ok,
                    Outcome::Failed => Ended::Failed,
                    Outcome::Unknown => Ended::Unknown,
                },
                revision,
            });
            let errored = !matches!(outcome, Outcome::Ok(_));
            self.history
                .lock()
                .unwrap()
                .complete(id, outcome, completed_us);
            if errored {
                // Without a leader every request fails fast; don't spin on it.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }

    async fn perform(
        &self,
        etcd: &mut etcd_client::Client,
        register: u64,
        input: &RegisterInput,
    ) -> (Outcome<RegisterOutput>, Option<i64>) {
        let name = key_name(self.shape, register);
        let keys = keys_of(self.shape, register);
        let puts = |value: u64| {
            keys.iter()
                .map(|key| TxnOp::put(key.clone(), value.to_string(), None))
                .collect::<Vec<_>>()
        };
        match input {
            RegisterInput::Read => {
                let options =
                    (self.shape == Shape::TxnGroups).then(|| GetOptions::new().with_prefix());
                match etcd.get(name.clone(), options).await {
                    Ok(response) => {
                        let revision = response.header().map(|h| h.revision());
                        let values: Vec<(Option<u64>, i64)> = response
                            .kvs()
                            .iter()
                            .map(|kv| {
                                let value = kv.value_str().ok().and_then(|v| v.parse().ok());
                                (value, kv.mod_revision())
                            })
                            .collect();
                        let value = values.first().and_then(|(v, _)| *v);
                        if self.shape == Shape::TxnGroups
                            && !values.is_empty()
                            && (values.len() != GROUP_KEYS
                                || values.iter().any(|entry| *entry != values[0]))
                        {
                            self.torn_reads.lock().unwrap().push(format!(
                                "group {register} read as {values:?} (value, mod revision)"
                            ));
                        }
                        (Outcome::Ok(RegisterOutput::Read(value)), revision)
                    }
                    // A read changes nothing: a failed one is simply left out.
                    Err(_) => (Outcome::Failed, None),
                }
            }
            RegisterInput::Write(value) => {
                let result = match self.shape {
                    Shape::SingleKeys => etcd
                        .put(name, value.to_string(), None)
                        .await
                        .map(|r| r.header().map(|h| h.revision())),
                    Shape::TxnGroups => etcd
                        .txn(Txn::new().and_then(puts(*value)))
                        .await
                        .map(|r| r.header().map(|h| h.revision())),
                };
                match result {
                    Ok(revision) => (Outcome::Ok(RegisterOutput::Write), revision),
                    Err(error) => (write_outcome(&error), None),
                }
            }
            RegisterInput::Cas { expected, new } => {
                let guard_key = keys[0].clone();
                let guard = match expected {
                    Some(value) => Compare::value(guard_key, CompareOp::Equal, value.to_string()),
                    None => Compare::create_revision(guard_key, CompareOp::Equal, 0),
                };
                let txn = Txn::new().when([guard]).and_then(puts(*new));
                match etcd.txn(txn).await {
                    Ok(response) => (
                        Outcome::Ok(RegisterOutput::Cas(response.succeeded())),
                        response.header().map(|h| h.revision()),
                    ),
                    Err(error) => (write_outcome(&error), None),
                }
            }
        }
    }
}

fn write_outcome(error: &etcd_client::Error) -> Outcome<RegisterOutput> {
    if write_error_is_definite(error) {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}
