//! Hosts as Linux network namespaces joined by a bridge, and partitions between them with
//! iptables. Each host has its own address on a /24 that this run owns; the clients stay
//! in the caller's namespace and reach the hosts through the bridge, so a partition cuts
//! only the links between members, as it would between machines.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;

use crate::ChaosError;

/// Bridges this harness may create at once: one /24 (10.77.<slot>.0) per run.
const SLOTS: u8 = 200;

/// The namespaces and bridge of one run; removed on drop.
pub struct Netns {
    slot: u8,
    hosts: usize,
    /// The slot's lock, held for the run: the kernel releases it if the process dies.
    _lock: File,
}

fn run(program: &str, args: &[&str]) -> Result<(), ChaosError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ChaosError::Network(format!("{program}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Network(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Why namespaces cannot be used here, if they cannot: the clear message for the user.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "network namespaces need root: run ostrakon chaos as root (sudo), or use \
             --network loopback, which has no partitions"
                .into(),
        );
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "{tool} not found: install Debian's {package} (scripts/install-test-tools.sh does)"
            ));
        }
    }
    None
}

impl Netns {
    /// Creates `hosts` namespaces on a fresh bridge.
    pub fn create(hosts: usize) -> Result<Netns, ChaosError> {
        if let Some(reason) = unavailable_reason() {
            return Err(ChaosError::Network(reason));
        }
        assert!(hosts < 250, "a /24 holds the bridge and at most 249 hosts");
        let (slot, lock) = Self::claim_slot()?;
        let netns = Netns {
            slot,
            hosts,
            _lock: lock,
        };
        let bridge = netns.bridge();
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", netns.gateway()),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for i in 0..hosts {
            netns.add_host(i)?;
        }
        Ok(netns)
    }

    /// Takes the first free slot: an exclusive lock on the slot's lock file claims it,
    /// so parallel runs never share one, and a run that died releases it with its process.
    /// Whatever a dead run left in the slot (bridge, namespaces) is removed first.
    fn claim_slot() -> Result<(u8, File), ChaosError> {
        let locks = std::path::Path::new("/run/ostrakon-chaos");
        std::fs::create_dir_all(locks)
            .map_err(|e| ChaosError::Network(format!("{}: {e}", locks.display())))?;
        for slot in 1..=SLOTS {
            let path = locks.join(format!("{slot}.lock"));
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| ChaosError::Network(format!("{}: {e}", path.display())))?;
            // SAFETY: flock on a descriptor this function owns.
            let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if locked != 0 {
                continue;
            }
            remove_slot(slot);
            run("ip", &["link", "add", &bridge_name(slot), "type", "bridge"])?;
            return Ok((slot, lock));
        }
        Err(ChaosError::Network(format!(
            "all {SLOTS} chaos slots are taken (locks in /run/ostrakon-chaos)"
        )))
    }

    fn add_host(&self, i: usize) -> Result<(), ChaosError> {
        let ns = self.namespace(i);
        let outer = format!("ostk{}h{}", self.slot, i);
        run("ip", &["netns", "add", &ns])?;
        run(
            "ip",
            &[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        run("ip", &["link", "set", &outer, "master", &self.bridge()])?;
        run("ip", &["link", "set", &outer, "up"])?;
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        exec(&["ip", "link", "set", "lo", "up"])?;
        exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", self.host_ip(i)),
            "dev",
            "eth0",
        ])?;
        exec(&["ip", "link", "set", "eth0", "up"])?;
        Ok(())
    }

    fn bridge(&self) -> String {
        bridge_name(self.slot)
    }

    /// The bridge's address: where the clients' traffic comes from.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.slot, 1)
    }

    /// Host `i`'s address.
    pub fn host_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.slot, i as u8 + 2)
    }

    /// Host `i`'s namespace name.
    pub fn namespace(&self, i: usize) -> String {
        format!("ostk{}n{}", self.slot, i)
    }

    /// An open handle on host `i`'s namespace, for setns(2).
    pub fn namespace_file(&self, i: usize) -> Result<File, ChaosError> {
        let path = format!("/var/run/netns/{}", self.namespace(i));
        File::open(&path).map_err(|e| ChaosError::Network(format!("{path}: {e}")))
    }

    /// Host `at` drops every packet from host `from` (one direction of a partition).
    pub fn drop_from(&self, at: usize, from: usize) -> Result<(), ChaosError> {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.namespace(at),
                "iptables",
                "-A",
                "INPUT",
                "-s",
                &self.host_ip(from).to_string(),
                "-j",
                "DROP",
            ],
        )
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> Result<(), ChaosError> {
        for i in 0..self.hosts {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.namespace(i),
                    "iptables",
                    "-F",
                    "INPUT",
                ],
            )?;
        }
        Ok(())
    }
}

fn bridge_name(slot: u8) -> String {
    format!("ostk-br{slot}")
}

/// Deletes a slot's namespaces (their veths go with them) and its bridge.
fn remove_slot(slot: u8) {
    if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
        let prefix = format!("ostk{slot}n");
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(&prefix) {
                let _ = run("ip", &["netns", "del", &name]);
            }
        }
    }
    // A veth whose namespace a leftover process still holds outlives the namespace's
    // name: delete the outer ends by name (the inner ends go with them).
    if let Ok(output) = Command::new("ip").args(["-o", "link", "show"]).output() {
        let prefix = format!("ostk{slot}h");
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name.starts_with(&prefix) {
                let _ = run("ip", &["link", "del", name]);
            }
        }
    }
    let _ = run("ip", &["link", "del", &bridge_name(slot)]);
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_slot(self.slot);
    }
}
