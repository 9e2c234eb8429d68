//! Watches: one watcher per member, pinned to it, over every key the workloads write,
//! from the revision at which the run began. When its stream breaks (the member was
//! killed, paused or cut off) the watcher reconnects to the same member and resumes after
//! the last revision it received, as etcd's clients do. After the cluster has healed,
//! each watcher must catch up, and what each received is compared with a fresh watch of
//! the whole range and with the writes that clients saw acknowledged.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{EventType, GetOptions, SortOrder, SortTarget, WatchOptions};
use ostrakon_check::invariants::WatchEvent;

use super::{connect, KEY_PREFIX};
use crate::cluster::Cluster;

/// What one watcher received: its responses' events, in arrival order.
pub type Responses = Vec<Vec<WatchEvent>>;

/// What one watcher received, with when, and where its stream broke: enough to place a
/// gap in the members' logs.
#[derive(Default)]
pub struct Received {
    /// The responses' events, in arrival order.
    pub responses: Responses,
    /// When each response arrived (milliseconds since the Unix epoch).
    pub arrived_ms: Vec<u64>,
    /// Each (re)connection: how many responses had arrived, the revision it asked to
    /// start from, and when.
    pub connections: Vec<Connection>,
}

/// One watch request of a watcher.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    /// Responses received before it.
    pub after_responses: usize,
    /// The revision it started from.
    pub start_revision: i64,
    /// When it was sent (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

struct Watcher {
    responses: Arc<Mutex<Received>>,
    last_revision: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

/// The running watchers.
pub struct WatchWorkload {
    /// The first revision watched.
    pub start_revision: i64,
    watchers: Vec<Watcher>,
    stop: Arc<AtomicBool>,
}

impl WatchWorkload {
    /// One watcher per member, from the cluster's current revision on.
    pub async fn start(cluster: &Cluster) -> WatchWorkload {
        let start_revision = current_revision(&cluster.endpoints()).await + 1;
        let stop = Arc::new(AtomicBool::new(false));
        let watchers = cluster
            .endpoints()
            .into_iter()
            .map(|endpoint| {
                let responses = Arc::new(Mutex::new(Received::default()));
                let last_revision = Arc::new(AtomicI64::new(start_revision - 1));
                let task = tokio::spawn(run_watcher(
                    endpoint,
                    responses.clone(),
                    last_revision.clone(),
                    stop.clone(),
                ));
                Watcher {
                    responses,
                    last_revision,
                    task,
                }
            })
            .collect();
        WatchWorkload {
            start_revision,
            watchers,
            stop,
        }
    }

    /// Waits (at most `timeout`) until every watcher has received revision `target`, then
    /// stops them; returns what each received and whether it caught up.
    pub async fn finish(&mut self, target: i64, timeout: Duration) -> Vec<(Received, bool)> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline
            && self
                .watchers
                .iter()
                .any(|w| w.last_revision.load(Ordering::SeqCst) < target)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        let mut received = Vec::new();
        for watcher in std::mem::take(&mut self.watchers) {
            let _ = watcher.task.await;
            let caught_up = watcher.last_revision.load(Ordering::SeqCst) >= target;
            let responses = std::mem::take(&mut *watcher.responses.lock().unwrap());
            received.push((responses, caught_up));
        }
        received
    }
}

impl Drop for WatchWorkload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for watcher in &self.watchers {
            watcher.task.abort();
        }
    }
}

/// The store's revision now, as any member reports it (0 if none answers).
pub async fn current_revision(endpoints: &[String]) -> i64 {
    for _ in 0..20 {
        if let Some(mut etcd) = connect(endpoints).await {
            if let Ok(response) = etcd.get(KEY_PREFIX, None).await {
                return response.header().map(|h| h.revision()).unwrap_or(0);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    0
}

async fn run_watcher(
    endpoint: String,
    responses: Arc<Mutex<Received>>,
    last_revision: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let Some(mut etcd) = connect(std::slice::from_ref(&endpoint)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let start_revision = last_revision.load(Ordering::SeqCst) + 1;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision);
        {
            let mut received = responses.lock().unwrap();
            let after_responses = received.responses.len();
            received.connections.push(Connection {
                after_responses,
                start_revision,
                at_ms: now_ms(),
            });
        }
        let Ok((_watcher, mut stream)) = etcd.watch(KEY_PREFIX, Some(options)).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !stop.load(Ordering::SeqCst) {
            let message =
                match tokio::time::timeout(Duration::from_millis(250), stream.message()).await {
                    Err(_) => continue,
                    Ok(Ok(Some(message))) => message,
                    Ok(_) => break,
                };
            if message.canceled() {
                break;
            }
            let events: Vec<WatchEvent> = message.events().iter().filter_map(to_event).collect();
            if let Some(last) = events.last() {
                last_revision.fetch_max(last.revision, Ordering::SeqCst);
            }
            if !events.is_empty() {
                let mut received = responses.lock().unwrap();
                received.responses.push(events);
                received.arrived_ms.push(now_ms());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn to_event(event: &etcd_client::Event) -> Option<WatchEvent> {
    let kv = event.kv()?;
    let is_put = event.event_type() == EventType::Put;
    Some(WatchEvent {
        revision: kv.mod_revision(),
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: if is_put {
            String::from_utf8_lossy(kv.value()).into_owned()
        } else {
            String::new()
        },
        is_put,
    })
}

/// The revision of the last write under the workloads' prefix (none deletes), as any
/// member answers a linearizable read; None if none answers. The watches are complete
/// once they reached it: the keyspace's revision may be higher with no event there (a
/// transaction across ranges that wrote nothing raises its ranges' revisions, and so
/// do writes outside the prefix).
pub async fn last_write_revision(endpoints: &[String]) -> Option<i64> {
    let newest_first = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(1);
    for _ in 0..20 {
        if let Some(mut etcd) = connect(endpoints).await {
            if let Ok(response) = etcd.get(KEY_PREFIX, Some(newest_first.clone())).await {
                return Some(response.kvs().first().map_or(0, |kv| kv.mod_revision()));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Every event from `start` to `target`, from one fresh watch on any member: the
/// reference the watchers are compared with.
pub async fn reference(
    endpoints: &[String],
    start: i64,
    target: i64,
    timeout: Duration,
) -> Result<Vec<WatchEvent>, String> {
    let deadline = Instant::now() + timeout;
    let mut events: Vec<WatchEvent> = Vec::new();
    while Instant::now() < deadline {
        let resume = events.last().map(|e| e.revision + 1).unwrap_or(start);
        if resume > target {
            return Ok(events);
        }
        let Some(mut etcd) = connect(endpoints).await else {
            continue;
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(resume);
        let Ok((_watcher, mut stream)) = etcd.watch(KEY_PREFIX, Some(options)).await else {
            continue;
        };
        while events.last().is_none_or(|e| e.revision < target) && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(message))) => {
                    events.extend(message.events().iter().filter_map(to_event))
                }
                Ok(_) => break,
            }
        }
        if events.last().is_some_and(|e| e.revision >= target) {
            return Ok(events);
        }
    }
    Err(format!(
        "a fresh watch from revision {start} did not reach revision {target} within {timeout:?}"
    ))
}
