//! etcd's Auth service and the permission checks every other service makes.
//!
//! A client authenticates with a name and password and gets a token (etcd's simple
//! token: a random prefix and the raft index of the Authenticate entry, valid on every
//! member once applied there); it sends the token in the gRPC metadata key `token` (or
//! `authorization`). With auth enabled, each request is checked against the caller's
//! roles; a write carries the auth revision it was checked at and is refused at apply if
//! the users, roles or permissions changed meanwhile.
//!
//! Deliberate differences from etcd 3.5.1 (its later releases do the same): AuthStatus
//! needs no admin, a token is ignored while auth is disabled, nested Txns are checked, and
//! the admin-only Maintenance calls answer PERMISSION_DENIED rather than UNKNOWN.

use std::sync::Arc;

use ostrakon_node::{NodeHandle, DEFAULT_GROUP};
use ostrakon_proto::authpb::UserAddOptions;
use ostrakon_proto::etcdserverpb::auth_server::Auth;
use ostrakon_proto::etcdserverpb::*;
use ostrakon_proto::peer::{auth_write, write_request, AuthWrite, AuthenticateWrite};
use ostrakon_raft::LogIndex;
use ostrakon_storage::mvcc::auth::{Access, AuthError, AuthState};
use ostrakon_storage::mvcc::WriteOutcome;
use rand::Rng;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::common;
use crate::errors::ApiError;

/// Who is calling, as far as auth is concerned.
#[derive(Clone)]
pub struct Caller {
    /// The user, if a valid token was sent.
    user: Option<String>,
    /// The token sent: a read checked again at its read point (`at_read_point`) resolves
    /// it again if the auth store changed meanwhile (auth enabled, the user deleted, a
    /// password changed: tokens are then no longer valid, as in etcd).
    token: Option<String>,
    /// The auth store the checks are made against.
    state: Arc<AuthState>,
}

impl Caller {
    /// Whether auth is on (checks can be skipped, and what they need not gathered).
    pub fn auth_enabled(&self) -> bool {
        self.state.enabled()
    }

    /// Whether the caller may read or write the keys from `key` to `range_end`.
    pub fn check(&self, key: &[u8], range_end: &[u8], access: Access) -> Result<(), ApiError> {
        if !self.state.enabled() {
            return Ok(());
        }
        let user = self.user.as_deref().ok_or(AuthError::UserEmpty)?;
        Ok(self.state.check(user, key, range_end, access)?)
    }

    /// Whether the caller may administer (root role), when auth is enabled.
    /// Whether the caller is a user (any user) when auth is enabled.
    pub fn check_authenticated(&self) -> Result<(), ApiError> {
        if self.state.enabled() && self.user.is_none() {
            return Err(AuthError::UserEmpty.into());
        }
        Ok(())
    }

    pub fn check_admin(&self) -> Result<(), ApiError> {
        Ok(self.state.check_admin(self.user.as_deref())?)
    }

    /// What a write checked here carries of its check, for its apply to refuse it if the
    /// auth store changed since: the store's revision, and whether auth was off here (a
    /// write let through unchecked by a member that had not applied an enable yet is
    /// refused where auth is on at apply, as etcd refuses a request without a user).
    pub fn auth_revision(&self) -> u64 {
        ostrakon_storage::mvcc::checked_auth(self.state.revision(), self.state.enabled())
    }

    /// This caller as the auth store stands once a linearizable read of the ranges
    /// `groups` has its read point. etcd checks a read's permissions after its read
    /// index, so a revoke (or an enable) acknowledged before the read began holds on a
    /// member that had not applied it when the read arrived. The auth tables live in the
    /// first data range; on a keyspace in ranges this member may have applied that range
    /// less far than the ones read, but each of those holds, in its write gate, the first
    /// range's index of the last rules change acknowledged before the read began (a
    /// change is carried into every range before it is acknowledged): waited for here.
    pub async fn at_read_point(
        &self,
        node: &NodeHandle,
        groups: &[ostrakon_raft::GroupId],
    ) -> Result<Caller, ApiError> {
        let first = node.store(DEFAULT_GROUP)?;
        let changed_at = groups
            .iter()
            .filter(|group| **group != DEFAULT_GROUP)
            .filter_map(|group| node.store(*group).ok())
            .map(|store| store.held_gate().source_index)
            .max()
            .unwrap_or(0);
        if first.applied_index() < LogIndex(changed_at) {
            node.wait_applied(DEFAULT_GROUP, LogIndex(changed_at))
                .await?;
        }
        let state = first.auth();
        if Arc::ptr_eq(&state, &self.state) {
            return Ok(Caller {
                user: self.user.clone(),
                token: self.token.clone(),
                state,
            });
        }
        let user = match &self.token {
            Some(token) if state.enabled() => Some(token_user(node, &first, token).await?),
            _ => None,
        };
        Ok(Caller {
            user,
            token: self.token.clone(),
            state: first.auth(),
        })
    }
}

/// Proposes `write`, checked (`check`) as `caller`, and while its apply refuses it as
/// checked against an old auth store (etcd's ErrAuthOldRevision: the users, roles or
/// permissions changed after the check), checks it again against this member's auth
/// store as it stands then and proposes it again, until the request timeout. etcd's
/// server does the same (`raftRequest` loops on that error), so its clients never see
/// it; a member behind on an auth change answered it to a client (found by CI). While
/// auth is off here a write goes once, uncopied (its apply refuses it as "user name is
/// empty" if auth came on meanwhile, as etcd's does). Used for KV writes, auth changes,
/// Lock and Election (etcd's go through `raftRequest` too) and lease revokes (etcd's
/// `LeaseRevoke` answers the error; a refused revoke did nothing, so trying it again is
/// safe). A disable applied here while a range's rules still say auth is on makes the
/// next attempt "user name is empty" there, as a write checked while auth was off.
pub async fn write_rechecked(
    node: &NodeHandle,
    caller: &Caller,
    write: write_request::Request,
    check: impl Fn(&Caller, &write_request::Request) -> Result<(), ApiError>,
) -> Result<WriteOutcome, ApiError> {
    if !caller.auth_enabled() {
        return common::write_checked(node, write, caller.auth_revision()).await;
    }
    let deadline = tokio::time::Instant::now() + node.request_timeout();
    let mut caller = caller.clone();
    loop {
        match common::write_checked(node, write.clone(), caller.auth_revision()).await {
            Err(error)
                if is_old_auth_revision(&error) && tokio::time::Instant::now() < deadline =>
            {
                tracing::info!(
                    "a write refused as checked against an old auth store is checked again"
                );
                // The rules that refused it were carried from what the first data range
                // had applied (or are that range's own): once this member has applied
                // that range up to a read index, its auth store holds the change.
                node.linearizable_read_point(DEFAULT_GROUP).await?;
                let rechecked = caller.at_read_point(node, &[]).await?;
                if rechecked.state.revision() <= caller.state.revision() {
                    // Nothing newer to check against: proposing again would be refused again.
                    return Err(error);
                }
                caller = rechecked;
                check(&caller, &write)?;
            }
            other => return other,
        }
    }
}

/// Whether a write was refused at apply as checked against an old auth store.
fn is_old_auth_revision(error: &ApiError) -> bool {
    matches!(
        error,
        ApiError::Node(ostrakon_node::NodeError::Refused { message, .. })
            if *message == AuthError::AuthOldRevision.to_string()
    )
}

/// The caller of a request, from its token. A token that is unknown or expired is
/// refused; while auth is disabled tokens are ignored.
pub async fn caller(node: &NodeHandle, metadata: &MetadataMap) -> Result<Caller, ApiError> {
    let store = node.store(DEFAULT_GROUP)?;
    let state = store.auth();
    let token = metadata
        .get("token")
        .or_else(|| metadata.get("authorization"))
        .and_then(|v| v.to_str().ok());
    let token = token.map(str::to_owned);
    let user = match &token {
        Some(token) if state.enabled() => Some(token_user(node, &store, token).await?),
        _ => None,
    };
    Ok(Caller {
        user,
        token,
        state: store.auth(),
    })
}

/// The user `token` stands for, once this member has applied the entry that issued it.
async fn token_user(
    node: &NodeHandle,
    store: &ostrakon_storage::mvcc::MvccStore,
    token: &str,
) -> Result<String, ApiError> {
    let index = token
        .split_once('.')
        .and_then(|(_, index)| index.parse::<u64>().ok())
        .map(LogIndex)
        .ok_or(AuthError::InvalidAuthToken)?;
    if store.applied_index() < index {
        // The token's entry may not be applied here yet: another member issued it. An
        // issued token's entry was committed before the token was handed out, so once
        // this member has applied everything committed now (a read index) it has the
        // entry. The index is the client's to choose: one beyond that was never issued,
        // and is refused at once rather than waited for.
        node.linearizable_read_point(DEFAULT_GROUP).await?;
        if store.applied_index() < index {
            return Err(AuthError::InvalidAuthToken.into());
        }
    }
    Ok(store.token_user(token).ok_or(AuthError::InvalidAuthToken)?)
}

pub struct AuthService {
    node: NodeHandle,
    bcrypt_cost: u32,
}

impl AuthService {
    pub fn new(node: NodeHandle, bcrypt_cost: u32) -> AuthService {
        AuthService { node, bcrypt_cost }
    }

    fn header(&self) -> Option<ResponseHeader> {
        common::current_header(&self.node)
    }

    /// Replicates an auth change, checked (admin) at the caller's auth revision.
    async fn change(
        &self,
        caller: &Caller,
        op: auth_write::Op,
    ) -> Result<ostrakon_proto::peer::AuthApplied, Status> {
        let write = write_request::Request::Auth(AuthWrite { op: Some(op) });
        let outcome =
            write_rechecked(&self.node, caller, write, |caller, _| caller.check_admin()).await?;
        match outcome {
            WriteOutcome::Auth(applied) => Ok(applied),
            other => panic!("an auth change answered with {other:?}"),
        }
    }

    async fn admin<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = caller(&self.node, request.metadata()).await?;
        caller.check_admin()?;
        Ok(caller)
    }

    /// The caller of a read of the auth tables, as the store stands after a read index
    /// on the first data range: etcd answers these reads through its log and checks them
    /// as they apply, so a change acknowledged before the read began holds for it.
    async fn reader<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let caller = caller(&self.node, request.metadata()).await?;
        self.node
            .linearizable_read_point(DEFAULT_GROUP)
            .await
            .map_err(ApiError::from)?;
        Ok(caller.at_read_point(&self.node, &[DEFAULT_GROUP]).await?)
    }

    /// A bcrypt hash of `password`, off the async workers (hashing is slow on purpose).
    async fn hash(&self, password: String) -> Result<String, Status> {
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .expect("hashing panicked")
            .map_err(|e| Status::internal(format!("ostrakon: hashing the password: {e}")))
    }

    /// The auth store after a linearizable read point (what every member agrees on).
    async fn current_state(&self) -> Result<Arc<AuthState>, Status> {
        self.node
            .linearizable_read_point(DEFAULT_GROUP)
            .await
            .map_err(ApiError::from)?;
        Ok(self
            .node
            .store(DEFAULT_GROUP)
            .map_err(ApiError::from)?
            .auth())
    }
}

fn refused(error: AuthError) -> Status {
    ApiError::from(error).into()
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(&caller, auth_write::Op::Enable(AuthEnableRequest {}))
            .await?;
        tracing::info!("authentication enabled");
        Ok(Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(&caller, auth_write::Op::Disable(AuthDisableRequest {}))
            .await?;
        tracing::info!("authentication disabled");
        Ok(Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let state = self.current_state().await?;
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: state.enabled(),
            auth_revision: state.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let request = request.into_inner();
        let state = self.current_state().await?;
        if !state.enabled() {
            return Err(refused(AuthError::AuthNotEnabled));
        }
        let user = state
            .user(&request.name)
            .ok_or(AuthError::AuthFailed)
            .map_err(refused)?;
        if user.options.is_some_and(|o| o.no_password) {
            return Err(Status::unknown(AuthError::NoPasswordUser.to_string()));
        }
        let hash = String::from_utf8_lossy(&user.password).into_owned();
        let password = request.password;
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .expect("checking a password panicked")
            .unwrap_or(false);
        if !matches {
            return Err(refused(AuthError::AuthFailed));
        }
        let prefix: String = rand::thread_rng()
            .sample_iter(&rand::distributions::Alphanumeric)
            .filter(u8::is_ascii_alphabetic)
            .take(16)
            .map(char::from)
            .collect();
        // Not checked against an auth revision: the password was, just now.
        let write = write_request::Request::Auth(AuthWrite {
            op: Some(auth_write::Op::Authenticate(AuthenticateWrite {
                name: request.name,
                token: prefix,
            })),
        });
        let WriteOutcome::Auth(applied) = common::write_checked(&self.node, write, 0).await? else {
            panic!("an authenticate write answered with another outcome");
        };
        Ok(Response::new(AuthenticateResponse {
            header: self.header(),
            token: applied.token,
        }))
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.admin(&request).await?;
        let mut add = request.into_inner();
        let no_password = add.options.is_some_and(|o| o.no_password);
        add.hashed_password = if no_password {
            String::new()
        } else {
            self.hash(std::mem::take(&mut add.password)).await?
        };
        add.password.clear();
        add.options = Some(UserAddOptions { no_password });
        self.change(&caller, auth_write::Op::UserAdd(add)).await?;
        Ok(Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.reader(&request).await?;
        let name = request.into_inner().name;
        // Anyone may get their own user; a caller without a token is the user named ""
        // (etcd compares names, so an anonymous UserGet of "" is answered "user name not
        // found" rather than refused; found by the differential test with auth on).
        if caller.user.as_deref().unwrap_or("") != name {
            caller.check_admin()?;
        }
        let user = caller
            .state
            .user(&name)
            .ok_or(AuthError::UserNotFound)
            .map_err(refused)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.header(),
            roles: user.roles.clone(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let caller = self.reader(&request).await?;
        caller.check_admin()?;
        Ok(Response::new(AuthUserListResponse {
            header: self.header(),
            users: caller.state.user_names(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(&caller, auth_write::Op::UserDelete(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.admin(&request).await?;
        let mut change = request.into_inner();
        if !change.password.is_empty() {
            change.hashed_password = self.hash(std::mem::take(&mut change.password)).await?;
        }
        self.change(&caller, auth_write::Op::UserChangePassword(change))
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(&caller, auth_write::Op::UserGrantRole(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(
            &caller,
            auth_write::Op::UserRevokeRole(request.into_inner()),
        )
        .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(&caller, auth_write::Op::RoleAdd(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.reader(&request).await?;
        let role = request.into_inner().role;
        let holds_role = caller
            .user
            .as_deref()
            .and_then(|u| caller.state.user(u))
            .is_some_and(|u| u.roles.contains(&role));
        if !holds_role {
            caller.check_admin()?;
        }
        let found = caller
            .state
            .role(&role)
            .ok_or(AuthError::RoleNotFound)
            .map_err(refused)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm: found.key_permission.clone(),
        }))
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let caller = self.reader(&request).await?;
        caller.check_admin()?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: caller.state.role_names(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(&caller, auth_write::Op::RoleDelete(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(
            &caller,
            auth_write::Op::RoleGrantPermission(request.into_inner()),
        )
        .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.admin(&request).await?;
        self.change(
            &caller,
            auth_write::Op::RoleRevokePermission(request.into_inner()),
        )
        .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
