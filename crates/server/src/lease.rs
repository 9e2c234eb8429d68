//! etcd's Lease service.
//!
//! Grants and revokes are replicated writes. Keep-alives and time-to-live questions go to
//! the leader, which alone keeps the deadlines (`ostrakon_node::lessor`); a follower
//! forwards them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};

use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::etcdserverpb::lease_server::Lease;
use ostrakon_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use ostrakon_proto::peer::write_request::Request as Write;
use ostrakon_storage::mvcc::{Revision, WriteOutcome};
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use crate::common;
use crate::errors::ApiError;

/// etcd's largest lease TTL, in seconds.
const TTL_MAX_SECS: i64 = 9_000_000_000;

pub struct LeaseService {
    node: NodeHandle,
    /// Shorter TTLs are raised to this, as etcd does: a lease must outlive an election.
    ttl_min_secs: i64,
    /// Mixed into generated lease ids.
    next_id: AtomicU64,
}

impl LeaseService {
    /// `election_timeout_ms` sets the minimum TTL (etcd's rule: 1.5 election timeouts,
    /// rounded up to whole seconds).
    pub fn new(node: NodeHandle, election_timeout_ms: u64) -> LeaseService {
        let seed = node.id().0 ^ std::process::id() as u64 ^ now_nanos();
        LeaseService {
            ttl_min_secs: (3 * election_timeout_ms / 2).div_ceil(1000).max(1) as i64,
            node,
            next_id: AtomicU64::new(seed),
        }
    }

    /// A fresh positive lease id (a mixed counter, so members rarely collide; a collision
    /// is refused by the state machine with etcd's "lease already exists").
    fn generate_id(&self) -> i64 {
        let n = self
            .next_id
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mut x = n ^ (n >> 31);
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        ((x & (i64::MAX as u64)).max(1)) as i64
    }

    async fn write(&self, write: Write) -> Result<WriteOutcome, ApiError> {
        common::write(&self.node, write).await
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        // No permission is needed, but a token, if given, must be valid (etcd checks it
        // for every request that goes through raft; found by the differential test).
        crate::auth::caller(&self.node, request.metadata()).await?;
        let mut grant = request.into_inner();
        if grant.ttl > TTL_MAX_SECS {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        grant.ttl = grant.ttl.max(self.ttl_min_secs);
        if grant.id == 0 {
            grant.id = self.generate_id();
        }
        match self.write(Write::LeaseGrant(grant)).await? {
            WriteOutcome::LeaseGrant(mut response) => {
                response.header = common::current_header(&self.node);
                Ok(Response::new(response))
            }
            other => panic!("a lease grant answered with {other:?}"),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // Revoking deletes the lease's keys: it needs write permission on each of them.
        let caller = crate::auth::caller(&self.node, request.metadata()).await?;
        let revoke = request.into_inner();
        let id = revoke.id;
        let node = &self.node;
        let check = |caller: &crate::auth::Caller, _: &Write| {
            let keys = if caller.auth_enabled() {
                node.lease_keys(id)
            } else {
                Vec::new()
            };
            for key in keys {
                caller.check(&key, b"", ostrakon_storage::mvcc::auth::Access::Write)?;
            }
            Ok(())
        };
        let write = Write::LeaseRevoke(revoke);
        check(&caller, &write)?;
        match crate::auth::write_rechecked(node, &caller, write, check).await? {
            // The revoke's own revision, where this member has not applied it yet (on a
            // keyspace in ranges the transaction is answered at its commit): a read at
            // the answer's revision sees its keys gone, as in etcd (found 2026-12-06).
            WriteOutcome::LeaseRevoke(done) => {
                let revoked_at = done.header.map_or(0, |header| header.revision);
                let current = self.node.current_revision();
                Ok(Response::new(LeaseRevokeResponse {
                    header: common::header(&self.node, current.max(Revision(revoked_at))),
                }))
            }
            other => panic!("a lease revoke answered with {other:?}"),
        }
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let node = self.node.clone();
        let header = common::current_header(&self.node);
        let requests = request.into_inner();
        let responses = requests.then(move |request| {
            let node = node.clone();
            let mut header = header;
            async move {
                let request = request?;
                let renewed = node
                    .lease_query(DEFAULT_GROUP, request.id, true)
                    .await
                    .map_err(ApiError::from)?;
                if let (Some(h), Ok(store)) = (header.as_mut(), node.store(DEFAULT_GROUP)) {
                    h.revision = store.current_revision().0;
                }
                Ok(LeaseKeepAliveResponse {
                    header,
                    id: request.id,
                    // etcd answers 0 for a lease that does not exist (any more).
                    ttl: renewed.map_or(0, |t| t.ttl_secs),
                })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        // The names of a lease's keys go only to a caller who may read each of them
        // (etcd 3.5.9 and 3.4.26, CVE-2023-32082): with auth on, asking for them needs
        // a user even for a lease that does not exist, as in etcd. Without `keys`
        // nothing is checked, as there.
        let caller = if request.get_ref().keys {
            let caller = crate::auth::caller(&self.node, request.metadata()).await?;
            caller.check_authenticated()?;
            Some(caller)
        } else {
            None
        };
        let request = request.into_inner();
        let found = self
            .node
            .lease_query(DEFAULT_GROUP, request.id, false)
            .await
            .map_err(ApiError::from)?;
        let Some(ttl) = found else {
            // etcd's answer for a lease that does not exist: TTL -1.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header: common::current_header(&self.node),
                id: request.id,
                ttl: -1,
                ..LeaseTimeToLiveResponse::default()
            }));
        };
        let keys = match caller {
            Some(caller) => {
                // The keys as of a linearizable point in every range, like the leader's
                // answer (a keyspace in ranges keeps a lease's keys wherever they fall).
                let keys = linearizable_lease_keys(&self.node, request.id).await?;
                // Checked against the auth store as of that point: the first range,
                // which holds it, has applied every change acknowledged before.
                let caller = caller.at_read_point(&self.node, &[]).await?;
                for key in &keys {
                    caller.check(key, b"", ostrakon_storage::mvcc::auth::Access::Read)?;
                }
                keys
            }
            None => Vec::new(),
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header: common::current_header(&self.node),
            id: request.id,
            ttl: ttl.remaining_secs,
            granted_ttl: ttl.ttl_secs,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        self.node
            .linearizable_read_point(DEFAULT_GROUP)
            .await
            .map_err(ApiError::from)?;
        let store = self.node.store(DEFAULT_GROUP).map_err(ApiError::from)?;
        let leases = store
            .leases()
            .into_iter()
            .map(|(id, _)| LeaseStatus { id })
            .collect();
        Ok(Response::new(LeaseLeasesResponse {
            header: common::current_header(&self.node),
            leases,
        }))
    }
}

/// How long a lease's keys wait before looking again at a range a transaction across
/// ranges holds.
const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The live keys attached to `lease` in every data range, as of a linearizable point: on
/// a keyspace in ranges, once no range holds a lock taken before it (a transaction that
/// attached the lease to a key, acknowledged at its commit, writes the key in the other
/// ranges as its locks go).
async fn linearizable_lease_keys(
    node: &NodeHandle,
    lease: i64,
) -> Result<Vec<bytes::Bytes>, ApiError> {
    let ranges = node.data_ranges();
    let split = ranges.len() > 1;
    let now = if split {
        node.current_timestamp().await?
    } else {
        0
    };
    for (group, _) in &ranges {
        node.linearizable_read_point(*group).await?;
    }
    let deadline = tokio::time::Instant::now() + node.request_timeout();
    let held_before = |group: ostrakon_raft::GroupId| -> Result<bool, ApiError> {
        let lowest = node.store(group)?.read_view().lowest_lock_revision();
        Ok(lowest.is_some_and(|lock| u64::try_from(lock.0).unwrap_or(0) <= now))
    };
    if split {
        loop {
            let mut held = false;
            for (group, _) in &ranges {
                held |= held_before(*group)?;
            }
            if !held {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ostrakon_node::NodeError::Timeout.into());
            }
            tokio::time::sleep(LOCK_RETRY_PAUSE).await;
        }
    }
    Ok(node.lease_keys(lease))
}
