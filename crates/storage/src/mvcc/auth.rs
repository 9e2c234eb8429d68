//! etcd's auth store: users (with hashed passwords), roles with read and write
//! permissions on key ranges, the root user and role, and whether auth is enabled. It
//! is replicated state, changed only by applied entries; every change raises the auth
//! revision, so a request checked against an older revision is refused at apply.

use std::collections::BTreeMap;

use ostrakon_proto::authpb::{permission, Permission, Role, User};
use ostrakon_proto::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest,
};
use ostrakon_proto::peer::{auth_write, AuthTables, AuthWrite};
use prost::Message as _;

/// The user and role that may do everything, as in etcd.
pub const ROOT: &str = "root";

/// Every auth record's name in the range's local state starts with it.
pub(crate) const AUTH_KEY_PREFIX: &[u8] = b"auth/";
const KEY_ENABLED: &[u8] = b"auth/enabled";
const KEY_REVISION: &[u8] = b"auth/revision";
const USER_PREFIX: &[u8] = b"auth/user/";
const ROLE_PREFIX: &[u8] = b"auth/role/";

/// Why an auth request is refused; etcd's gRPC code and message for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Enabling auth without a root user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// Enabling auth while root lacks the root role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// Adding a user that exists.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// An empty user name.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// No such user.
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// Adding a role that exists.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// An empty role name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Wrong user or password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// A grant without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticating while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is unknown or expired.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock everyone out (root's user or role while enabled).
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The permissions changed after the request was checked.
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// Password authentication of a user added with `no_password`.
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
}

impl AuthError {
    /// The gRPC status code etcd answers with.
    pub fn code(&self) -> i32 {
        // InvalidArgument 3, FailedPrecondition 9, PermissionDenied 7, Unauthenticated 16.
        match self {
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::PermissionNotGiven
            | AuthError::InvalidAuthMgmt
            | AuthError::AuthOldRevision => 3,
            // etcd returns this one unmapped.
            AuthError::NoPasswordUser => 2,
            AuthError::PermissionDenied => 7,
            AuthError::InvalidAuthToken => 16,
            _ => 9,
        }
    }
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Range, Watch.
    Read,
    /// Put, DeleteRange.
    Write,
}

/// The auth store's state.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthState {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            enabled: false,
            // etcd's auth revision starts at 1.
            revision: 1,
            users: BTreeMap::new(),
            roles: BTreeMap::new(),
        }
    }
}

/// Storage changes: keys to write (`Some`) or delete (`None`) in the range's local state.
pub type AuthChanges = Vec<(Vec<u8>, Option<Vec<u8>>)>;

impl AuthState {
    /// The state from stored (key, value) pairs of the range's local state.
    pub fn from_stored<'a>(items: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> AuthState {
        let mut state = AuthState::default();
        for (key, value) in items {
            if key == KEY_ENABLED {
                state.enabled = value == [1];
            } else if key == KEY_REVISION {
                state.revision = u64::from_be_bytes(value.try_into().expect("8-byte revision"));
            } else if key.starts_with(USER_PREFIX) {
                let user = User::decode(value).expect("a stored user decodes");
                state.users.insert(name_of(&user.name), user);
            } else if key.starts_with(ROLE_PREFIX) {
                let role = Role::decode(value).expect("a stored role decodes");
                state.roles.insert(name_of(&role.name), role);
            }
        }
        state
    }

    /// Whether a local-state name belongs to the auth store.
    pub fn is_auth_key(key: &[u8]) -> bool {
        key.starts_with(AUTH_KEY_PREFIX)
    }

    /// The state as a snapshot carries it.
    pub fn tables(&self) -> AuthTables {
        AuthTables {
            enabled: self.enabled,
            revision: self.revision,
            users: self.users.values().cloned().collect(),
            roles: self.roles.values().cloned().collect(),
        }
    }

    /// The state a snapshot carried.
    pub fn from_tables(tables: &AuthTables) -> AuthState {
        AuthState {
            enabled: tables.enabled,
            revision: tables.revision,
            users: tables
                .users
                .iter()
                .map(|u| (name_of(&u.name), u.clone()))
                .collect(),
            roles: tables
                .roles
                .iter()
                .map(|r| (name_of(&r.name), r.clone()))
                .collect(),
        }
    }

    /// Every key of this state, for storing it whole.
    pub fn stored(&self) -> AuthChanges {
        let mut out = vec![
            (KEY_ENABLED.to_vec(), Some(vec![self.enabled as u8])),
            (
                KEY_REVISION.to_vec(),
                Some(self.revision.to_be_bytes().to_vec()),
            ),
        ];
        for (name, user) in &self.users {
            out.push((user_key(name), Some(user.encode_to_vec())));
        }
        for (name, role) in &self.roles {
            out.push((role_key(name), Some(role.encode_to_vec())));
        }
        out
    }

    /// Whether auth is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision, raised by every change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A user.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// A role.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Whether `user` may administer (has the root role), in etcd's order of errors.
    pub fn check_admin(&self, user: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let user = user.ok_or(AuthError::UserEmpty)?;
        let found = self.users.get(user).ok_or(AuthError::UserNotFound)?;
        if found.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Whether `user` has the root role (may do everything, including administration).
    pub fn is_admin(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    /// Whether `user` may read or write the keys from `key` to `range_end` (etcd's
    /// conventions: empty `range_end` is the single key, "\0" is every key from `key`).
    /// The range must be covered by the union of the user's roles' permissions.
    pub fn check(
        &self,
        user: &str,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        let Some(found) = self.users.get(user) else {
            return Err(AuthError::PermissionDenied);
        };
        if found.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let mut intervals: Vec<(Vec<u8>, Option<Vec<u8>>)> = found
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| &role.key_permission)
            .filter(|perm| allows(perm, access))
            .map(|perm| (perm.key.to_vec(), interval_end(&perm.key, &perm.range_end)))
            .collect();
        intervals.sort();
        let wanted_end = interval_end(key, range_end);
        // Sweep: how far from `key` the permissions reach without a gap. `key` itself
        // must be covered, even for an empty or backward range (which reads nothing):
        // etcd refuses `[z, b)` to a user who may not read "z" and serves `[foo/bar, b)`
        // to one who may read "foo/bar" (found by the differential test with auth on).
        let mut reached = key.to_vec();
        let mut key_covered = false;
        for (start, end) in intervals {
            if start > reached {
                break;
            }
            match end {
                None => return Ok(()),
                Some(end) if end > reached => {
                    reached = end;
                    key_covered = true;
                }
                Some(_) => {}
            }
        }
        match wanted_end {
            Some(end) if key_covered && reached >= end => Ok(()),
            _ => Err(AuthError::PermissionDenied),
        }
    }

    /// Applies a change; returns what to store. Errors change nothing.
    pub fn apply(&mut self, write: &AuthWrite) -> Result<AuthChanges, AuthError> {
        use auth_write::Op;
        let op = write.op.as_ref().expect("an auth write has an operation");
        let mut touched_users = Vec::new();
        let mut touched_roles = Vec::new();
        match op {
            Op::Enable(_) => {
                if self.enabled {
                    return Ok(Vec::new());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                // As in etcd, enabling does not move the auth revision.
                return Ok(vec![(KEY_ENABLED.to_vec(), Some(vec![1]))]);
            }
            Op::Disable(_) => {
                if !self.enabled {
                    return Ok(Vec::new());
                }
                self.enabled = false;
            }
            Op::Authenticate(authenticate) => {
                if !self.enabled {
                    return Err(AuthError::AuthNotEnabled);
                }
                if !self.users.contains_key(&authenticate.name) {
                    return Err(AuthError::AuthFailed);
                }
                // Tokens are not stored; the store keeps them in memory.
                return Ok(Vec::new());
            }
            Op::UserAdd(add) => {
                self.user_add(add)?;
                touched_users.push(add.name.clone());
            }
            Op::UserDelete(delete) => {
                if self.enabled && delete.name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users
                    .remove(&delete.name)
                    .ok_or(AuthError::UserNotFound)?;
                touched_users.push(delete.name.clone());
            }
            Op::UserChangePassword(change) => {
                self.change_password(change)?;
                touched_users.push(change.name.clone());
            }
            Op::UserGrantRole(grant) => {
                // etcd looks the user up first (found by the differential test).
                if !self.users.contains_key(&grant.user) {
                    return Err(AuthError::UserNotFound);
                }
                if grant.role != ROOT && !self.roles.contains_key(&grant.role) {
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(&grant.user).expect("checked just above");
                if user.roles.contains(&grant.role) {
                    return Ok(Vec::new());
                }
                user.roles.push(grant.role.clone());
                user.roles.sort();
                touched_users.push(grant.user.clone());
            }
            Op::UserRevokeRole(revoke) => {
                if self.enabled && revoke.name == ROOT && revoke.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self
                    .users
                    .get_mut(&revoke.name)
                    .ok_or(AuthError::UserNotFound)?;
                let before = user.roles.len();
                user.roles.retain(|r| r != &revoke.role);
                if user.roles.len() == before {
                    return Err(AuthError::RoleNotGranted);
                }
                touched_users.push(revoke.name.clone());
            }
            Op::RoleAdd(add) => {
                if add.name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(&add.name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(
                    add.name.clone(),
                    Role {
                        name: add.name.clone().into_bytes().into(),
                        key_permission: Vec::new(),
                    },
                );
                touched_roles.push(add.name.clone());
            }
            Op::RoleDelete(delete) => {
                if self.enabled && delete.role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles
                    .remove(&delete.role)
                    .ok_or(AuthError::RoleNotFound)?;
                touched_roles.push(delete.role.clone());
                // Users lose the deleted role, as in etcd.
                for (name, user) in self.users.iter_mut() {
                    if user.roles.contains(&delete.role) {
                        user.roles.retain(|r| r != &delete.role);
                        touched_users.push(name.clone());
                    }
                }
            }
            Op::RoleGrantPermission(grant) => {
                self.grant_permission(grant)?;
                touched_roles.push(grant.name.clone());
            }
            Op::RoleRevokePermission(revoke) => {
                self.revoke_permission(revoke)?;
                touched_roles.push(revoke.role.clone());
            }
        }
        self.revision += 1;
        let mut changes = vec![
            (KEY_ENABLED.to_vec(), Some(vec![self.enabled as u8])),
            (
                KEY_REVISION.to_vec(),
                Some(self.revision.to_be_bytes().to_vec()),
            ),
        ];
        for name in touched_users {
            let value = self.users.get(&name).map(|u| u.encode_to_vec());
            changes.push((user_key(&name), value));
        }
        for name in touched_roles {
            let value = self.roles.get(&name).map(|r| r.encode_to_vec());
            changes.push((role_key(&name), value));
        }
        Ok(changes)
    }

    fn user_add(&mut self, add: &AuthUserAddRequest) -> Result<(), AuthError> {
        if add.name.is_empty() {
            return Err(AuthError::UserEmpty);
        }
        if self.users.contains_key(&add.name) {
            return Err(AuthError::UserAlreadyExist);
        }
        self.users.insert(
            add.name.clone(),
            User {
                name: add.name.clone().into_bytes().into(),
                password: add.hashed_password.clone().into_bytes().into(),
                roles: Vec::new(),
                options: add.options,
            },
        );
        Ok(())
    }

    fn change_password(&mut self, change: &AuthUserChangePasswordRequest) -> Result<(), AuthError> {
        let user = self
            .users
            .get_mut(&change.name)
            .ok_or(AuthError::UserNotFound)?;
        user.password = change.hashed_password.clone().into_bytes().into();
        Ok(())
    }

    fn grant_permission(
        &mut self,
        grant: &AuthRoleGrantPermissionRequest,
    ) -> Result<(), AuthError> {
        let perm = grant.perm.clone().ok_or(AuthError::PermissionNotGiven)?;
        let role = self
            .roles
            .get_mut(&grant.name)
            .ok_or(AuthError::RoleNotFound)?;
        // As etcd: permissions are kept sorted by key alone (a stable sort, so those of
        // one key stay in the order granted); a grant replaces the type of the first
        // permission with its key only if that one has its range end too, and is added
        // otherwise (found by the differential test).
        let first_at_or_after = role
            .key_permission
            .partition_point(|p| p.key.as_ref() < perm.key.as_ref());
        match role.key_permission.get_mut(first_at_or_after) {
            Some(existing) if existing.key == perm.key && existing.range_end == perm.range_end => {
                existing.perm_type = perm.perm_type;
            }
            _ => {
                role.key_permission.push(perm);
                role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        Ok(())
    }

    fn revoke_permission(
        &mut self,
        revoke: &AuthRoleRevokePermissionRequest,
    ) -> Result<(), AuthError> {
        let role = self
            .roles
            .get_mut(&revoke.role)
            .ok_or(AuthError::RoleNotFound)?;
        let before = role.key_permission.len();
        role.key_permission
            .retain(|p| !(p.key == revoke.key && p.range_end == revoke.range_end));
        if role.key_permission.len() == before {
            return Err(AuthError::PermissionNotGranted);
        }
        Ok(())
    }
}

fn name_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn user_key(name: &str) -> Vec<u8> {
    [USER_PREFIX, name.as_bytes()].concat()
}

fn role_key(name: &str) -> Vec<u8> {
    [ROLE_PREFIX, name.as_bytes()].concat()
}

fn allows(perm: &Permission, access: Access) -> bool {
    let granted = permission::Type::try_from(perm.perm_type).unwrap_or(permission::Type::Read);
    matches!(
        (granted, access),
        (permission::Type::Readwrite, _)
            | (permission::Type::Read, Access::Read)
            | (permission::Type::Write, Access::Write)
    )
}

/// The exclusive end of a key range in etcd's conventions; `None` is "no end".
fn interval_end(key: &[u8], range_end: &[u8]) -> Option<Vec<u8>> {
    if range_end.is_empty() {
        // The single key: [key, key + "\0").
        let mut end = key.to_vec();
        end.push(0);
        Some(end)
    } else if range_end == [0] {
        None
    } else {
        Some(range_end.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ostrakon_proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    };

    fn apply(state: &mut AuthState, op: auth_write::Op) -> Result<AuthChanges, AuthError> {
        state.apply(&AuthWrite { op: Some(op) })
    }

    fn user(state: &mut AuthState, name: &str) {
        apply(
            state,
            auth_write::Op::UserAdd(AuthUserAddRequest {
                name: name.into(),
                hashed_password: "hash".into(),
                ..Default::default()
            }),
        )
        .unwrap();
    }

    fn grant(state: &mut AuthState, role: &str, key: &str, end: &str, kind: permission::Type) {
        apply(
            state,
            auth_write::Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(Permission {
                    perm_type: kind as i32,
                    key: key.as_bytes().to_vec().into(),
                    range_end: end.as_bytes().to_vec().into(),
                }),
            }),
        )
        .unwrap();
    }

    /// A range that ends before it begins names no key; etcd lets a user name it when
    /// they may read its first key (found by the differential test with auth on).
    #[test]
    fn a_backward_range_is_permitted_only_if_its_key_is() {
        use ostrakon_proto::authpb::{permission::Type, Permission};
        use ostrakon_proto::etcdserverpb::AuthRoleGrantPermissionRequest;
        let mut state = AuthState::default();
        user(&mut state, "alice");
        apply(
            &mut state,
            auth_write::Op::RoleAdd(AuthRoleAddRequest {
                name: "reader".into(),
            }),
        )
        .unwrap();
        for (key, range_end) in [("a", "b"), ("foo", "fop")] {
            let perm = Permission {
                perm_type: Type::Read as i32,
                key: key.as_bytes().to_vec().into(),
                range_end: range_end.as_bytes().to_vec().into(),
            };
            apply(
                &mut state,
                auth_write::Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                    name: "reader".into(),
                    perm: Some(perm),
                }),
            )
            .unwrap();
        }
        apply(
            &mut state,
            auth_write::Op::UserGrantRole(AuthUserGrantRoleRequest {
                user: "alice".into(),
                role: "reader".into(),
            }),
        )
        .unwrap();
        let read = |key: &str, end: &str| {
            state.check("alice", key.as_bytes(), end.as_bytes(), Access::Read)
        };
        assert_eq!(read("foo/bar", "b"), Ok(()));
        assert_eq!(read("z", "b/1"), Err(AuthError::PermissionDenied));
        assert_eq!(read("a/1", "a"), Ok(()));
        // Forward ranges as before: covered, or not.
        assert_eq!(read("a", "b"), Ok(()));
        assert_eq!(read("a", "c"), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn enabling_needs_root_with_the_root_role_and_then_protects_it() {
        let mut state = AuthState::default();
        let enable = || auth_write::Op::Enable(AuthEnableRequest {});
        assert_eq!(
            apply(&mut state, enable()),
            Err(AuthError::RootUserNotExist)
        );
        user(&mut state, ROOT);
        assert_eq!(
            apply(&mut state, enable()),
            Err(AuthError::RootRoleNotExist)
        );
        apply(
            &mut state,
            auth_write::Op::UserGrantRole(AuthUserGrantRoleRequest {
                user: ROOT.into(),
                role: ROOT.into(),
            }),
        )
        .unwrap();
        let revision = state.revision();
        apply(&mut state, enable()).unwrap();
        assert!(state.enabled());
        assert_eq!(
            state.revision(),
            revision,
            "enabling does not move the revision"
        );
        assert_eq!(
            apply(
                &mut state,
                auth_write::Op::UserDelete(AuthUserDeleteRequest { name: ROOT.into() })
            ),
            Err(AuthError::InvalidAuthMgmt)
        );
        assert!(state.is_admin(ROOT));
    }

    /// etcd keeps a role's permissions sorted by key alone, in grant order for one key,
    /// and replaces a permission's type only when it is the first of its key (found by
    /// the differential test against etcd, whose RoleGet answers must match).
    #[test]
    fn permissions_keep_etcds_order_and_its_replacement_rule() {
        use permission::Type;
        let mut state = AuthState::default();
        apply(
            &mut state,
            auth_write::Op::RoleAdd(AuthRoleAddRequest { name: "r".into() }),
        )
        .unwrap();
        grant(&mut state, "r", "b", "", Type::Read);
        grant(&mut state, "r", "a", "foo", Type::Read);
        grant(&mut state, "r", "a", "\0", Type::Read);
        let listed = |state: &AuthState| -> Vec<(String, String, i32)> {
            state.roles["r"]
                .key_permission
                .iter()
                .map(|p| (name_of(&p.key), name_of(&p.range_end), p.perm_type))
                .collect()
        };
        let (read, write) = (Type::Read as i32, Type::Write as i32);
        assert_eq!(
            listed(&state),
            vec![
                ("a".into(), "foo".into(), read),
                ("a".into(), "\0".into(), read),
                ("b".into(), "".into(), read),
            ]
        );
        // The first permission of key "a" is replaced in place...
        grant(&mut state, "r", "a", "foo", Type::Write);
        assert_eq!(listed(&state)[0], ("a".into(), "foo".into(), write));
        // ...but another range of "a" granted again is added once more, as etcd does.
        grant(&mut state, "r", "a", "\0", Type::Write);
        assert_eq!(listed(&state).len(), 4);
    }

    /// etcd looks the user up before the role (found by the differential test).
    #[test]
    fn granting_a_missing_role_to_a_missing_user_reports_the_user() {
        let mut state = AuthState::default();
        let grant = || {
            auth_write::Op::UserGrantRole(AuthUserGrantRoleRequest {
                user: "nobody".into(),
                role: "nothing".into(),
            })
        };
        assert_eq!(apply(&mut state, grant()), Err(AuthError::UserNotFound));
        user(&mut state, "nobody");
        assert_eq!(apply(&mut state, grant()), Err(AuthError::RoleNotFound));
    }

    #[test]
    fn a_range_is_allowed_only_when_the_roles_cover_it_whole() {
        let mut state = AuthState::default();
        user(&mut state, "u");
        for role in ["a", "b"] {
            apply(
                &mut state,
                auth_write::Op::RoleAdd(AuthRoleAddRequest { name: role.into() }),
            )
            .unwrap();
            apply(
                &mut state,
                auth_write::Op::UserGrantRole(AuthUserGrantRoleRequest {
                    user: "u".into(),
                    role: role.into(),
                }),
            )
            .unwrap();
        }
        grant(&mut state, "a", "k1", "k5", permission::Type::Read);
        grant(&mut state, "b", "k5", "k9", permission::Type::Readwrite);
        grant(&mut state, "b", "single", "", permission::Type::Write);
        let check =
            |key: &str, end: &str, access| state.check("u", key.as_bytes(), end.as_bytes(), access);
        assert_eq!(check("k1", "k9", Access::Read), Ok(()), "two roles join up");
        assert_eq!(
            check("k1", "k9", Access::Write),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(check("k6", "", Access::Write), Ok(()));
        assert_eq!(
            check("k0", "k3", Access::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            check("k1", "\0", Access::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(check("single", "", Access::Write), Ok(()));
        assert_eq!(
            check("single", "", Access::Read),
            Err(AuthError::PermissionDenied)
        );
        assert_eq!(
            check("singlex", "", Access::Write),
            Err(AuthError::PermissionDenied)
        );
        grant(&mut state, "a", "z", "\0", permission::Type::Read);
        let check =
            |key: &str, end: &str, access| state.check("u", key.as_bytes(), end.as_bytes(), access);
        assert_eq!(
            check("zz", "\0", Access::Read),
            Ok(()),
            "\\0 reaches every key"
        );
        assert_eq!(
            state.check("nobody", b"k1", b"", Access::Read),
            Err(AuthError::PermissionDenied)
        );
        // Stored whole and read back.
        let stored = state.stored();
        let reloaded = AuthState::from_stored(
            stored
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_deref().unwrap())),
        );
        assert_eq!(reloaded, state);
        assert_eq!(AuthState::from_tables(&state.tables()), state);
    }
}
