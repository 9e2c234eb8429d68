//! Auth on a real cluster, as an etcd operator sets it up with etcdctl: a root user, a
//! role with read and write permissions on key ranges, a user with that role, `auth
//! enable`; then what each user may do, through etcdctl 3.4 and 3.5 and etcd-client.

mod common;

use common::etcdctl::{etcdctls, Etcdctl};
use common::{status_of, TestCluster};

/// Runs etcdctl and returns (success, stdout + stderr).
fn run(etcdctl: &Etcdctl, args: &[&str]) -> (bool, String) {
    let (ok, stdout, stderr) = etcdctl.run(args, None);
    (ok, format!("{stdout}{stderr}"))
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn expect(etcdctl: &Etcdctl, args: &[&str], output: &str) {
    let printed = etcdctl.ok(args);
    assert_eq!(printed.trim_end(), output, "{args:?}");
}

fn refused(etcdctl: &Etcdctl, args: &[&str], error: &str) {
    let (ok, printed) = run(etcdctl, args);
    assert!(
        !ok && printed.contains(error),
        "{args:?} should fail with {error:?}: {printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_limit_what_each_client_may_do() {
    let binaries = etcdctls();
    let mut cluster = TestCluster::start(3, &["--bcrypt-cost", "4"]).await;
    let v35 = Etcdctl {
        binary: &binaries[1],
        endpoints: cluster.host_port(0),
    };
    expect(
        &v35,
        &["user", "add", "root", "--new-user-password=rootpw"],
        "User root created",
    );
    expect(
        &v35,
        &["user", "grant-role", "root", "root"],
        "Role root is granted to user root",
    );
    expect(&v35, &["role", "add", "reader"], "Role reader created");
    expect(
        &v35,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "app/",
            "--prefix",
        ],
        "Role reader updated",
    );
    expect(
        &v35,
        &[
            "role",
            "grant-permission",
            "reader",
            "readwrite",
            "app/self",
        ],
        "Role reader updated",
    );
    expect(
        &v35,
        &["user", "add", "alice", "--new-user-password=alicepw"],
        "User alice created",
    );
    expect(
        &v35,
        &["user", "grant-role", "alice", "reader"],
        "Role reader is granted to user alice",
    );
    refused(
        &v35,
        &["user", "add", "alice", "--new-user-password=x"],
        "user name already exists",
    );
    refused(
        &v35,
        &["user", "grant-role", "alice", "nosuch"],
        "role name not found",
    );
    expect(&v35, &["auth", "enable"], "Authentication Enabled");

    // Without credentials nothing is served; with a wrong password neither.
    refused(&v35, &["get", "app/x"], "etcdserver: user name is empty");
    refused(
        &v35,
        &["--user", "alice:wrong", "get", "app/x"],
        "authentication failed, invalid user ID or password",
    );
    let root = |args: &[&str]| -> Vec<String> {
        ["--user", "root:rootpw"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    v35.ok(&strs(&root(&["put", "app/x", "1"])));
    v35.ok(&strs(&root(&["put", "other", "secret"])));
    expect(
        &v35,
        &strs(&root(&["auth", "status"])),
        "Authentication Status: true\nAuthRevision: 8",
    );
    expect(
        &v35,
        &strs(&root(&["user", "get", "alice"])),
        "User: alice\nRoles: reader",
    );
    expect(&v35, &strs(&root(&["user", "list"])), "alice\nroot");
    let role = v35.ok(&strs(&root(&["role", "get", "reader"])));
    assert!(
        role.contains("KV Read:") && role.contains("(prefix app/)") && role.contains("app/self"),
        "{role}"
    );

    for binary in &binaries {
        let etcdctl = Etcdctl {
            binary,
            endpoints: cluster.host_port(1),
        };
        let alice = |args: &[&str]| -> Vec<String> {
            ["--user", "alice:alicepw"]
                .iter()
                .chain(args)
                .map(|s| s.to_string())
                .collect()
        };
        expect(
            &etcdctl,
            &strs(&alice(&["get", "app/x", "--print-value-only"])),
            "1",
        );
        let listed = etcdctl.ok(&strs(&alice(&["get", "app/", "--prefix", "--keys-only"])));
        assert!(listed.contains("app/x"), "{listed}");
        etcdctl.ok(&strs(&alice(&["put", "app/self", "mine"])));
        refused(
            &etcdctl,
            &strs(&alice(&["put", "app/x", "2"])),
            "etcdserver: permission denied",
        );
        refused(
            &etcdctl,
            &strs(&alice(&["get", "other"])),
            "etcdserver: permission denied",
        );
        // A range reaching past the permission is refused whole.
        refused(
            &etcdctl,
            &strs(&alice(&["get", "app", "--prefix"])),
            "permission denied",
        );
        refused(
            &etcdctl,
            &strs(&alice(&["del", "app/x"])),
            "permission denied",
        );
        refused(
            &etcdctl,
            &strs(&alice(&["user", "list"])),
            "permission denied",
        );
        refused(
            &etcdctl,
            &strs(&alice(&[
                "member",
                "add",
                "x",
                "--peer-urls=http://127.0.0.1:1",
            ])),
            "permission denied",
        );
    }

    // A lease's key names go only to a caller who may read every one of them (etcd
    // 3.5.9, CVE-2023-32082); its TTL alone needs nothing.
    let alice = |args: &[&str]| -> Vec<String> {
        ["--user", "alice:alicepw"]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let grant = |ttl: &str| -> String {
        let granted = v35.ok(&strs(&root(&["lease", "grant", ttl])));
        granted.split_whitespace().nth(1).unwrap().to_string()
    };
    let mixed = grant("600");
    v35.ok(&strs(&root(&["put", "app/leased", "v", "--lease", &mixed])));
    v35.ok(&strs(&root(&[
        "put",
        "other-leased",
        "v",
        "--lease",
        &mixed,
    ])));
    let readable = grant("600");
    v35.ok(&strs(&root(&[
        "put",
        "app/leased2",
        "v",
        "--lease",
        &readable,
    ])));
    refused(
        &v35,
        &strs(&alice(&["lease", "timetolive", &mixed, "--keys"])),
        "etcdserver: permission denied",
    );
    let ttl = v35.ok(&strs(&alice(&["lease", "timetolive", &mixed])));
    assert!(ttl.contains("granted with TTL(600s)"), "{ttl}");
    assert!(
        !ttl.contains("leased"),
        "no key names without --keys: {ttl}"
    );
    let ttl = v35.ok(&strs(&alice(&["lease", "timetolive", &readable, "--keys"])));
    assert!(ttl.contains("attached keys([app/leased2])"), "{ttl}");
    refused(
        &v35,
        &["lease", "timetolive", &mixed, "--keys"],
        "etcdserver: user name is empty",
    );
    let ttl = v35.ok(&strs(&root(&["lease", "timetolive", &mixed, "--keys"])));
    assert!(
        ttl.contains("app/leased") && ttl.contains("other-leased"),
        "{ttl}"
    );

    // etcd-client: a watch outside the permissions is canceled; one inside gets events.
    let options = cluster
        .connect_options(std::time::Duration::from_secs(10))
        .with_user("alice", "alicepw");
    let mut alice = etcd_client::Client::connect([cluster.endpoint(2)], Some(options))
        .await
        .unwrap();
    let denied = alice.put("other", "x", None).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    // etcd-client consumes the first (created and canceled) response itself: the watch
    // it hands back has the id etcd gives a watch refused for permissions, the one asked
    // for (0: none), as a real etcd 3.5 answers in the differential test.
    let (outside, mut outside_events) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        alice.watch("elsewhere", None),
    )
    .await
    .expect("the refused watch is answered")
    .unwrap();
    assert_eq!(outside.watch_id(), 0, "the id asked for (none)");
    v35.ok(&strs(&root(&["put", "elsewhere", "y"])));
    let leaked = tokio::time::timeout(std::time::Duration::from_secs(2), outside_events.message())
        .await
        .ok()
        .and_then(|next| next.ok().flatten())
        .is_some_and(|response| !response.events().is_empty());
    assert!(
        !leaked,
        "a watch outside the permissions is refused: no event reaches it"
    );
    let (_watcher, mut inside) = alice
        .watch("app/", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    v35.ok(&strs(&root(&["put", "app/y", "2"])));
    let mut seen = false;
    for _ in 0..3 {
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), inside.message())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        if response
            .events()
            .iter()
            .any(|e| e.kv().unwrap().key() == b"app/y")
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "alice's watch inside her permission saw the put");

    // Revoking the role takes effect at once, on every member.
    expect(
        &v35,
        &strs(&root(&["user", "revoke-role", "alice", "reader"])),
        "Role reader is revoked from user alice",
    );
    let denied = alice.get("app/x", None).await.unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");

    // Users, roles and the enabled flag survive a restart.
    cluster.terminate(0);
    cluster.restart(0);
    cluster.wait_member_knows_leader(0).await;
    refused(&v35, &["get", "app/x"], "user name is empty");
    expect(
        &v35,
        &strs(&root(&["get", "app/x", "--print-value-only"])),
        "1",
    );

    refused(
        &v35,
        &strs(&root(&["user", "delete", "root"])),
        "invalid auth management",
    );
    expect(
        &v35,
        &strs(&root(&["auth", "disable"])),
        "Authentication Disabled",
    );
    expect(&v35, &["get", "other", "--print-value-only"], "secret");
}

/// A token names the raft index of the Authenticate entry that issued it, so a member
/// that has not applied it yet can wait for it. That index is the client's to write: a
/// forged one used to hold the request for the whole request timeout (7 s here). Now an
/// index beyond what is committed is refused at once with etcd's error, while a real
/// token issued by another member a moment ago still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_forged_index_is_refused_at_once() {
    use ostrakon_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};
    let cluster = TestCluster::start(3, &["--bcrypt-cost", "4"]).await;
    let mut admin = cluster.client(0).await;
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let token = admin
        .auth_client()
        .authenticate("root".into(), "rootpw".into())
        .await
        .unwrap()
        .token()
        .to_string();
    let (prefix, index) = token.split_once('.').unwrap();
    let index: u64 = index.parse().unwrap();

    let range = |token: String| {
        let mut request = tonic::Request::new(RangeRequest {
            key: b"k".to_vec().into(),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("token", token.parse().unwrap());
        request
    };
    // The real token, right away through another member.
    let mut kv = KvClient::connect(cluster.endpoint(2)).await.unwrap();
    kv.range(range(token.clone())).await.unwrap();

    for forged in [index + 1_000_000, u64::MAX] {
        let started = std::time::Instant::now();
        let status = kv
            .range(range(format!("{prefix}.{forged}")))
            .await
            .unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), "etcdserver: invalid auth token");
        assert!(
            elapsed < std::time::Duration::from_secs(2),
            "a forged index held the request for {elapsed:?}"
        );
    }
}

/// On a keyspace in ranges, a permission revoked holds in every range from its
/// acknowledgement on, also for a write whose permissions a member checked before it had
/// applied the revoke: the range of the write's key took the revoke in by a write gate
/// in its own log before the revoke was acknowledged, and refuses a write checked
/// against the auth store before it (docs/RANGES.md, "Auth and alarms on a keyspace in
/// ranges"). A member that leads no data range is paused while the revoke goes through
/// the others, and is sent the write as it resumes, before it can apply the revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_holds_in_every_range_for_writes_checked_on_a_member_behind_on_it() {
    use etcd_client::{Permission, RoleRevokePermissionOptions};
    use std::time::Duration;
    let cluster = TestCluster::start(3, &["--bcrypt-cost", "4"]).await;
    common::ranges::split_at_m(&cluster).await;
    let mut admin = cluster.client(0).await;
    // Asked before auth is on: the listing would need a token then.
    let paused = common::ranges::member_leading_no_data_range(&cluster).await;
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("writer").await.unwrap();
    admin.user_add("alice", "alicepw", None).await.unwrap();
    admin.user_grant_role("alice", "writer").await.unwrap();
    admin.auth_enable().await.unwrap();
    let connect = |member: usize, user: &str, password: &str| {
        let options = cluster
            .connect_options(Duration::from_secs(20))
            .with_user(user, password);
        etcd_client::Client::connect([cluster.endpoint(member)], Some(options))
    };
    for round in 0..3 {
        let mut root = connect((paused + 1) % 3, "root", "rootpw").await.unwrap();
        let mut alice = connect(paused, "alice", "alicepw").await.unwrap();
        root.role_grant_permission("writer", Permission::read_write("n/").with_prefix())
            .await
            .unwrap();
        // Alice may write through the member once it has applied the grant.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alice
            .put(format!("n/granted/{round}"), "v", None)
            .await
            .is_err()
        {
            assert!(std::time::Instant::now() < deadline, "the grant never held");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        pause(&cluster, paused, true);
        // The paused member may lead the meta range: a write meeting its failover is
        // answered "leader changed" and asked again. Once "not granted", the revoke
        // applied before, and the member that says so carried its gates first, as it
        // does for any answer to an auth change.
        let mut attempts = 0;
        let revoked = loop {
            attempts += 1;
            let revoked = root
                .role_revoke_permission(
                    "writer",
                    "n/",
                    Some(RoleRevokePermissionOptions::new().with_prefix()),
                )
                .await;
            match revoked {
                Err(error) if error.to_string().contains("permission is not granted") => {
                    break Ok(())
                }
                Err(error) if attempts < 5 => {
                    let status = status_of(error);
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                }
                other => break other.map(|_| ()),
            }
        };
        let key = format!("n/after-revoke/{round}");
        let write = {
            let key = key.clone();
            tokio::spawn(async move { alice.put(key, "v", None).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        pause(&cluster, paused, false);
        revoked.unwrap();
        let written = write.await.unwrap();
        let refusal = match written {
            Ok(response) => {
                panic!("round {round}: a write after the revoke was acknowledged went through: {response:?}")
            }
            Err(error) => error.to_string(),
        };
        // Refused where it was checked, if the member applied the revoke first; else by
        // its range at apply, the case this test is for, and then checked again by the
        // member, as etcd's server does: the client sees "permission denied" either way.
        assert!(refusal.contains("permission denied"), "{refusal}");
        let read = root.get(key.as_str(), None).await.unwrap();
        assert!(
            read.kvs().is_empty(),
            "round {round}: the refused write left {:?}",
            read.kvs()
        );
    }
    let refused_at_apply = cluster
        .log(paused)
        .matches("a write refused as checked against an old auth store is checked again")
        .count();
    assert!(
        refused_at_apply > 0,
        "every write was refused by the member that checked it: the race was never run"
    );
}

/// Pauses (true) or resumes (false) a member's process.
fn pause(cluster: &TestCluster, member: usize, paused: bool) {
    let signal = if paused { libc::SIGSTOP } else { libc::SIGCONT };
    // SAFETY: a signal to a child process this test started.
    unsafe { libc::kill(cluster.pid(member) as i32, signal) };
}

/// Runs an auth change through members that may be failing over from a paused meta
/// range leader (answered "unavailable" then, and asked again); `applied` tells the
/// answer of a change asked again after it had applied.
async fn auth_change<T, Fut>(mut change: impl FnMut() -> Fut, applied: &str)
where
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    for attempt in 1.. {
        match change().await {
            Ok(_) => return,
            Err(error) if error.to_string().contains(applied) && attempt > 1 => return,
            Err(error) if attempt < 5 => {
                let status = status_of(error);
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            }
            Err(error) => panic!("the auth change failed: {error}"),
        }
    }
}

/// A member that has not applied an auth change yet still refuses, once the change is
/// acknowledged, what the change forbids (as etcd does): a linearizable read is checked
/// after its read index, against an auth store that has applied every change the ranges
/// read were told of, and a write it let through unchecked while auth was off there is
/// refused at apply. The member is paused while the change goes through the others, and
/// is sent the requests as it resumes. Keys on both sides of a split at `m`: the first
/// data range holds the auth tables, the other takes them in as write gates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_after_an_auth_change_are_refused_on_a_member_behind_on_it() {
    use etcd_client::{Permission, RoleRevokePermissionOptions};
    use std::time::Duration;
    let cluster = TestCluster::start(3, &["--bcrypt-cost", "4"]).await;
    common::ranges::split_at_m(&cluster).await;
    let mut admin = cluster.client(0).await;
    for key in ["c/k", "n/k"] {
        admin.put(key, "v", None).await.unwrap();
    }
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("reader").await.unwrap();
    admin.user_add("alice", "alicepw", None).await.unwrap();
    admin.user_grant_role("alice", "reader").await.unwrap();
    let connect = |member: usize, user: &str, password: &str| {
        let options = cluster
            .connect_options(Duration::from_secs(20))
            .with_user(user, password);
        etcd_client::Client::connect([cluster.endpoint(member)], Some(options))
    };
    for round in 0..2 {
        // Picked again each round (auth is off then): a pause may have moved leaders.
        let paused = common::ranges::member_leading_no_data_range(&cluster).await;
        let other = (paused + 1) % 3;
        let admin = cluster.client(other).await;
        // Auth enabled while the member is paused: what it is sent without a token then
        // is refused, reads and writes, in both ranges.
        let anonymous = cluster.client(paused).await;
        pause(&cluster, paused, true);
        auth_change(
            || {
                let mut admin = admin.clone();
                async move { admin.auth_enable().await }
            },
            // Asked again after it applied, without a token.
            "user name is empty",
        )
        .await;
        // An enable asked again after it applied is refused by the member's own check,
        // which carries nothing: an auth change acknowledged now carries the rules with
        // auth on into every range first.
        let mut root = connect(other, "root", "rootpw").await.unwrap();
        auth_change(
            || {
                let mut root = root.clone();
                async move { root.role_add(format!("carried-{round}")).await }
            },
            "role name already exists",
        )
        .await;
        let mut sent = tokio::task::JoinSet::new();
        for key in ["c/k", "n/k"] {
            let mut client = anonymous.clone();
            sent.spawn(async move { (key, client.get(key, None).await.map(|_| ())) });
        }
        for key in ["c/w", "n/w"] {
            let mut client = anonymous.clone();
            sent.spawn(async move { (key, client.put(key, "v", None).await.map(|_| ())) });
        }
        let mut client = anonymous.clone();
        sent.spawn(async move { ("user list", client.user_list().await.map(|_| ())) });
        tokio::time::sleep(Duration::from_millis(200)).await;
        pause(&cluster, paused, false);
        while let Some(answer) = sent.join_next().await {
            let (key, answer) = answer.unwrap();
            let Err(error) = answer else {
                panic!("round {round}: {key} without a token after auth was enabled went through")
            };
            let error = error.to_string();
            assert!(
                error.contains("user name is empty")
                    || (key == "user list" && error.contains("permission denied")),
                "round {round}: {key}: {error}"
            );
        }
        for key in ["c/w", "n/w"] {
            let read = root.get(key, None).await.unwrap();
            assert!(read.kvs().is_empty(), "round {round}: {key} was written");
        }

        // A permission revoked while the member is paused: alice's reads there are
        // refused, in both ranges.
        root.role_grant_permission("reader", Permission::read("c/").with_range_end("o"))
            .await
            .unwrap();
        let mut alice = connect(paused, "alice", "alicepw").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while alice.get("n/k", None).await.is_err() || alice.get("c/k", None).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the grant never held");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pause(&cluster, paused, true);
        auth_change(
            || {
                let mut root = root.clone();
                async move {
                    root.role_revoke_permission(
                        "reader",
                        "c/",
                        Some(RoleRevokePermissionOptions::new().with_range_end("o")),
                    )
                    .await
                }
            },
            "permission is not granted",
        )
        .await;
        let mut sent = tokio::task::JoinSet::new();
        for key in ["c/k", "n/k"] {
            let mut client = alice.clone();
            sent.spawn(async move { (key, client.get(key, None).await) });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        pause(&cluster, paused, false);
        while let Some(answer) = sent.join_next().await {
            let (key, answer) = answer.unwrap();
            match answer {
                Ok(read) => panic!(
                    "round {round}: alice read {key} after the revoke was acknowledged: {:?}",
                    read.kvs()
                ),
                Err(error) => assert!(
                    error.to_string().contains("permission denied"),
                    "round {round}: {key}: {error}"
                ),
            }
        }
        auth_change(
            || {
                let mut root = root.clone();
                async move { root.auth_disable().await }
            },
            // Asked again after it applied: answered as the first time.
            "(no other answer)",
        )
        .await;
    }
}

/// A watch created on a stream opened before a revoke is checked against the auth store
/// as it stands when it is created, as etcd checks each create: the revoked user's new
/// watch is canceled with "permission denied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_created_after_a_revoke_on_a_stream_opened_before_it_is_refused() {
    use etcd_client::{Permission, RoleRevokePermissionOptions};
    use std::time::Duration;
    let cluster = TestCluster::start(1, &["--bcrypt-cost", "4"]).await;
    let mut admin = cluster.client(0).await;
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("reader").await.unwrap();
    admin
        .role_grant_permission("reader", Permission::read("w/").with_prefix())
        .await
        .unwrap();
    admin.user_add("alice", "alicepw", None).await.unwrap();
    admin.user_grant_role("alice", "reader").await.unwrap();
    admin.auth_enable().await.unwrap();
    let connect = |user: &str, password: &str| {
        let options = cluster
            .connect_options(Duration::from_secs(20))
            .with_user(user, password);
        etcd_client::Client::connect([cluster.endpoint(0)], Some(options))
    };
    let mut root = connect("root", "rootpw").await.unwrap();
    let mut alice = connect("alice", "alicepw").await.unwrap();
    // Answered once created (etcd-client waits for the created response).
    let (mut watcher, mut stream) = alice.watch("w/a", None).await.unwrap();
    root.role_revoke_permission(
        "reader",
        "w/",
        Some(RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    watcher.watch("w/b", None).await.unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        refused.canceled() && refused.cancel_reason().contains("permission denied"),
        "a watch created after the revoke: {refused:?}"
    );
}
