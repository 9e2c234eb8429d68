//! Timestamps: one client per member, pinned to it, asks ostrakon's Oracle service for 1
//! to 16 timestamps at a time. Every answer is checked (`ostrakon_check::check_timestamps`):
//! no timestamp is handed out twice, and a request that began after another was answered
//! got greater timestamps, across every fault of the nemesis. Under clock skew this is the
//! oracle's hardest case: its timestamps follow its leader's clock, which may jump back
//! minutes when leadership moves to a skewed member; their order must not.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ostrakon_check::{Operation, Outcome, TimestampCount, TimestampGrant};
use ostrakon_proto::ostrakonpb::{oracle_client::OracleClient, TimestampsRequest};
use tonic::transport::Channel;

use super::{Ended, Recorder, TimelineOp, OPERATION_TIMEOUT};
use crate::cluster::Cluster;

/// Every request, with what its client learned.
pub type Recorded = Vec<Operation<TimestampCount, TimestampGrant>>;

/// The running timestamp clients.
pub struct TimestampWorkload {
    ops: Arc<Mutex<Recorded>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl TimestampWorkload {
    /// One client per member of `cluster`.
    pub fn start(cluster: &Cluster, recorder: Arc<Recorder>) -> TimestampWorkload {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let clients = cluster
            .endpoints()
            .into_iter()
            .enumerate()
            .map(|(member, endpoint)| {
                tokio::spawn(run_client(member, endpoint, ops.clone(), recorder.clone()))
            })
            .collect();
        TimestampWorkload { ops, clients }
    }

    /// Waits for the clients (the recorder's stop flag is set).
    pub async fn stop(&mut self) -> Recorded {
        for client in std::mem::take(&mut self.clients) {
            let _ = client.await;
        }
        std::mem::take(&mut *self.ops.lock().unwrap())
    }
}

async fn connect(endpoint: &str) -> Option<OracleClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(OPERATION_TIMEOUT)
        .connect()
        .await
        .ok()?;
    Some(OracleClient::new(channel))
}

async fn run_client(
    member: usize,
    endpoint: String,
    ops: Arc<Mutex<Recorded>>,
    recorder: Arc<Recorder>,
) {
    let client = 3000 + member as u64;
    let mut connection = None;
    let mut state = client;
    for _ in 0..super::OPERATIONS_PER_CLIENT_MAX {
        if recorder.stopping() {
            break;
        }
        if connection.is_none() {
            connection = connect(&endpoint).await;
            if connection.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let oracle = connection.as_mut().expect("connected above");
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let count = 1 + (state >> 60);
        let invoked_us = recorder.now_us();
        let result = oracle.timestamps(TimestampsRequest { count }).await;
        let completed_us = recorder.now_us();
        let (outcome, ended) = match &result {
            Ok(response) => {
                let response = response.get_ref();
                let grant = TimestampGrant {
                    first: response.first,
                    count: response.count,
                };
                (Outcome::Ok(grant), Ended::Ok)
            }
            // Asking twice is harmless (unused timestamps are lost, never handed out
            // again), so a failure promises nothing either way: the checker skips it.
            Err(_) => (Outcome::Unknown, Ended::Unknown),
        };
        ops.lock().unwrap().push(Operation {
            client,
            input: count,
            invoked_at: invoked_us,
            completed_at: (ended == Ended::Ok).then_some(completed_us),
            outcome,
        });
        recorder.record(TimelineOp {
            workload: "timestamps",
            client,
            member: Some(member),
            write: false,
            invoked_us,
            completed_us: (ended == Ended::Ok).then_some(completed_us),
            ended,
            revision: None,
        });
        match result {
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(_) => {
                // A member that is down or cut off fails fast; don't spin on it.
                connection = None;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
