//! The set: one client per member, pinned to it, adds unique elements (a Put of a new
//! key each). At the end every acknowledged element must be present, and each present
//! element must have been put once (version 1). Pinned clients also show availability
//! per member: a member cut off from the majority must not acknowledge a write.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ostrakon_check::invariants::AddOutcome;

use super::{connect, write_error_is_definite, Ended, Recorder, TimelineOp};
use crate::cluster::Cluster;

/// The prefix of the set's elements.
pub const SET_PREFIX: &str = "chaos/set/";

/// The elements added, each with what its client learned.
pub type Recorded = BTreeMap<String, AddOutcome>;

/// The running set clients.
pub struct SetWorkload {
    added: Arc<Mutex<Recorded>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl SetWorkload {
    /// One client per member of `cluster`.
    pub fn start(cluster: &Cluster, recorder: Arc<Recorder>) -> SetWorkload {
        let added = Arc::new(Mutex::new(BTreeMap::new()));
        let clients = cluster
            .endpoints()
            .into_iter()
            .enumerate()
            .map(|(member, endpoint)| {
                let added = added.clone();
                let recorder = recorder.clone();
                tokio::spawn(run_client(member, endpoint, added, recorder))
            })
            .collect();
        SetWorkload { added, clients }
    }

    /// Waits for the clients (the recorder's stop flag is set).
    pub async fn stop(&mut self) -> Recorded {
        for client in std::mem::take(&mut self.clients) {
            let _ = client.await;
        }
        std::mem::take(&mut *self.added.lock().unwrap())
    }
}

async fn run_client(
    member: usize,
    endpoint: String,
    added: Arc<Mutex<Recorded>>,
    recorder: Arc<Recorder>,
) {
    let client = 2000 + member as u64;
    let mut connection = None;
    for sequence in 0..super::OPERATIONS_PER_CLIENT_MAX {
        if recorder.stopping() {
            break;
        }
        if connection.is_none() {
            connection = connect(std::slice::from_ref(&endpoint)).await;
            if connection.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let etcd = connection.as_mut().expect("connected above");
        let element = format!("{SET_PREFIX}{member}-{sequence}");
        // Pending until the outcome is known: a run that stops now leaves it unknown.
        added
            .lock()
            .unwrap()
            .insert(element.clone(), AddOutcome::Unknown);
        let invoked_us = recorder.now_us();
        let result = etcd.put(element.clone(), sequence.to_string(), None).await;
        let completed_us = recorder.now_us();
        let (outcome, ended, revision) = match &result {
            Ok(response) => (
                AddOutcome::Ok,
                Ended::Ok,
                response.header().map(|h| h.revision()),
            ),
            Err(error) if write_error_is_definite(error) => {
                (AddOutcome::Failed, Ended::Failed, None)
            }
            Err(_) => (AddOutcome::Unknown, Ended::Unknown, None),
        };
        added.lock().unwrap().insert(element, outcome);
        recorder.record(TimelineOp {
            workload: "set",
            client,
            member: Some(member),
            write: true,
            invoked_us,
            completed_us: (ended != Ended::Unknown).then_some(completed_us),
            ended,
            revision,
        });
        if result.is_err() {
            // A member that is down or cut off fails fast; don't spin on it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Elements per page of the final read: a long run's set does not fit in one response
/// (the client refuses messages over 4 MiB).
const PAGE_ELEMENTS: i64 = 5000;

/// Reads every element present, with its version: page by page, all pages at the
/// revision of the first (a linearizable read), from any member.
pub async fn read_final(endpoints: &[String]) -> Result<BTreeMap<String, i64>, String> {
    let mut last_error = String::from("no member answered");
    for _ in 0..20 {
        match read_pages(endpoints).await {
            Ok(present) => return Ok(present),
            Err(error) => last_error = error,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last_error)
}

async fn read_pages(endpoints: &[String]) -> Result<BTreeMap<String, i64>, String> {
    let mut etcd = connect(endpoints)
        .await
        .ok_or_else(|| "no member answered".to_string())?;
    // The end of the prefix: its last byte plus one ('/' + 1 = '0').
    let mut end = SET_PREFIX.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    let mut present = BTreeMap::new();
    let mut from = SET_PREFIX.as_bytes().to_vec();
    let mut revision = 0;
    loop {
        let mut options = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE_ELEMENTS);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let response = etcd
            .get(from.clone(), Some(options))
            .await
            .map_err(|e| e.to_string())?;
        if revision == 0 {
            revision = response.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in response.kvs() {
            present.insert(String::from_utf8_lossy(kv.key()).into_owned(), kv.version());
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(present),
        }
    }
}
