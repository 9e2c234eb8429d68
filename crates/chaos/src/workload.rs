//! The register workload: clients read, write and compare-and-set a few keys, each
//! operation recorded with its invocation and completion time and its outcome. A write
//! whose outcome the client did not learn is recorded as unknown: it may have applied.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use ostrakon_check::{History, Outcome, RegisterInput, RegisterOutput};
use rand::Rng;

use crate::cluster::LocalCluster;

/// The history of the register workload: inputs are (key, operation).
pub type RegisterHistory = History<(u64, RegisterInput), RegisterOutput>;

/// How long a client waits for one operation.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(2);
/// Operations per client at most, so a run is bounded even if the clock misbehaves.
const OPERATIONS_PER_CLIENT_MAX: usize = 100_000;

/// The running workload.
pub struct RegisterWorkload {
    history: Arc<Mutex<RegisterHistory>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

fn key_name(key: u64) -> String {
    format!("chaos/register/{key}")
}

impl RegisterWorkload {
    /// Starts `clients` clients on `keys` registers.
    pub fn start(cluster: &LocalCluster, clients: usize, keys: u64) -> RegisterWorkload {
        let history = Arc::new(Mutex::new(History::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let handles = (0..clients as u64)
            .map(|client| {
                let endpoints = cluster.endpoints();
                let history = history.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    run_client(client, endpoints, keys, history, stop, started).await
                })
            })
            .collect();
        RegisterWorkload {
            history,
            stop,
            clients: handles,
        }
    }

    /// Stops the clients and returns the history; operations still pending are unknown.
    pub async fn stop(self) -> RegisterHistory {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            let _ = client.await;
        }
        let mut history = std::mem::take(&mut *self.history.lock().unwrap());
        history.finish_pending_as_unknown();
        history
    }
}

async fn run_client(
    client: u64,
    endpoints: Vec<String>,
    keys: u64,
    history: Arc<Mutex<RegisterHistory>>,
    stop: Arc<AtomicBool>,
    started: Instant,
) {
    let now = || started.elapsed().as_micros() as u64;
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(OPERATION_TIMEOUT);
    let mut connection = None;
    let mut next_value = client * 1_000_000_000;
    // What this client last read of each key: what its compare-and-sets expect.
    let mut last_read: std::collections::HashMap<u64, Option<u64>> = Default::default();
    for _ in 0..OPERATIONS_PER_CLIENT_MAX {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if connection.is_none() {
            connection = etcd_client::Client::connect(endpoints.clone(), Some(options.clone()))
                .await
                .ok();
            if connection.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let etcd = connection.as_mut().expect("connected above");
        let key = rand::thread_rng().gen_range(0..keys);
        let choice = rand::thread_rng().gen_range(0..10);
        let input = match choice {
            0..=3 => RegisterInput::Read,
            4..=6 => {
                next_value += 1;
                RegisterInput::Write(next_value)
            }
            _ => {
                next_value += 1;
                let expected = match rand::thread_rng().gen_range(0..4) {
                    0 => None,
                    _ => Some(
                        rand::thread_rng().gen_range(next_value.saturating_sub(20)..next_value),
                    ),
                };
                RegisterInput::Cas {
                    expected,
                    new: next_value,
                }
            }
        };
        let id = history
            .lock()
            .unwrap()
            .invoke(client, (key, input.clone()), now());
        let outcome = perform(etcd, key, &input).await;
        if let Outcome::Ok(RegisterOutput::Read(value)) = &outcome {
            last_read.insert(key, *value);
        }
        history.lock().unwrap().complete(id, outcome, now());
    }
}

async fn perform(
    etcd: &mut etcd_client::Client,
    key: u64,
    input: &RegisterInput,
) -> Outcome<RegisterOutput> {
    let name = key_name(key);
    match input {
        RegisterInput::Read => match etcd.get(name, None).await {
            Ok(response) => {
                let value = response
                    .kvs()
                    .first()
                    .and_then(|kv| kv.value_str().ok())
                    .and_then(|v| v.parse().ok());
                Outcome::Ok(RegisterOutput::Read(value))
            }
            // A read changes nothing: a failed one is simply left out.
            Err(_) => Outcome::Failed,
        },
        RegisterInput::Write(value) => match etcd.put(name, value.to_string(), None).await {
            Ok(_) => Outcome::Ok(RegisterOutput::Write),
            Err(error) => write_error(&error),
        },
        RegisterInput::Cas { expected, new } => {
            let guard = match expected {
                Some(value) => Compare::value(name.clone(), CompareOp::Equal, value.to_string()),
                None => Compare::create_revision(name.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new()
                .when([guard])
                .and_then([TxnOp::put(name, new.to_string(), None)]);
            match etcd.txn(txn).await {
                Ok(response) => Outcome::Ok(RegisterOutput::Cas(response.succeeded())),
                Err(error) => write_error(&error),
            }
        }
    }
}

/// What a failed write means. Only errors that prove the request never reached a server
/// (it could not connect) or was never proposed (no leader) count as failed; anything
/// else (a timeout, a lost leader, a broken connection) may have applied: unknown. A
/// wrong "failed" could only make a correct history look wrong, never hide a bug.
fn write_error(error: &etcd_client::Error) -> Outcome<RegisterOutput> {
    let text = error.to_string();
    let never_sent = text.contains("tcp connect error")
        || text.contains("error trying to connect")
        || text.contains("Connection refused");
    let never_proposed = text.contains("etcdserver: no leader");
    if never_sent || never_proposed {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}
