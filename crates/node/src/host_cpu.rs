//! The CPU this node's host has to spare, for splits by load (`load_split`): a split by
//! load helps only if another member can take half of the range's work, and a member
//! can only if its host has idle CPU. Three members sharing one host's cores (as on a
//! developer's machine, or the benchmark's) gain nothing from a split and pay for it:
//! two groups batch writes apart and every write of a split keyspace takes its
//! revision from the oracle (docs/RANGES.md, "Splits by load").
//!
//! Measured every second from `/proc/stat` (idle and iowait time of every CPU, at most
//! as many cores as this process may run on), and where the node runs in a cgroup with
//! a CPU limit (cgroup v2 `cpu.max` or v1 `cpu.cfs_quota_us`, as containers and the
//! benchmarks' `MEMBER_CPU` set them), from what the limit leaves once this process's
//! own CPU time is taken (a container holds one member): the smaller of the two. The
//! cgroups are read again every second (a benchmark moves a running member into one).
//! The figure is the smaller of the mean of the last `WINDOW_SAMPLES` seconds, the
//! window a range's request rate is measured over, and the mean of the last
//! `RECENT_SAMPLES`: a burst of load after a quiet spell passes the rate's limit within
//! seconds, while the quiet seconds still fill most of the window. It rides every
//! peer-stream batch (`node_load`).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::node_load::NodeLoads;

/// Seconds of samples the figure is the mean of.
pub const WINDOW_SAMPLES: usize = crate::request_rate::WINDOW_SECONDS as usize;

/// The last seconds whose mean also bounds the figure.
pub const RECENT_SAMPLES: usize = 3;

/// Test hook: a fixed figure (cores) instead of the measured one, so that tests on one
/// host can play members with CPU to spare, or with none.
const FIXED_SPARE_CORES_ENV: &str = "OSTRAKON_TEST_SPARE_CORES";

/// A reading of the host's CPU time counters (`/proc/stat`'s `cpu` line, in clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTimes {
    /// Idle and iowait time summed over every CPU (a CPU waiting on a disk could run).
    pub idle_ticks: u64,
    /// All time summed over every CPU (user, nice, system, idle, iowait, irq, softirq,
    /// steal: guest time is counted in user already).
    pub total_ticks: u64,
    /// CPUs online.
    pub cpus: u32,
}

/// Parses `/proc/stat`. None if its `cpu` line is missing or malformed.
pub fn parse_proc_stat(text: &str) -> Option<HostTimes> {
    let mut lines = text.lines();
    let first = lines.next()?;
    let mut fields = first.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields
        .take(8)
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    if ticks.len() < 5 {
        return None; // idle and iowait are the fourth and fifth
    }
    let cpus = lines
        .filter(|line| {
            line.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(HostTimes {
        idle_ticks: ticks[3] + ticks[4],
        total_ticks: ticks.iter().sum(),
        cpus: u32::try_from(cpus).ok().filter(|&n| n > 0)?,
    })
}

/// The cores the host had idle between two readings (0 if no time passed).
pub fn host_spare_cores(before: HostTimes, after: HostTimes) -> f64 {
    let total = after.total_ticks.saturating_sub(before.total_ticks);
    if total == 0 {
        return 0.0;
    }
    let idle = after.idle_ticks.saturating_sub(before.idle_ticks);
    f64::from(after.cpus) * idle as f64 / total as f64
}

/// A cgroup v2 `cpu.max`: the cores the limit allows, None if unlimited (`max`).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next()?.parse().ok()?;
    (period > 0.0).then(|| quota / period)
}

/// A cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: the cores the limit allows,
/// None if unlimited (a quota of -1).
pub fn parse_cfs_quota(quota_us: &str, period_us: &str) -> Option<f64> {
    let quota: f64 = quota_us.trim().parse().ok()?;
    let period: f64 = period_us.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

/// This process's CPU time so far (user and system) from `/proc/self/stat`, in clock
/// ticks. None if malformed.
pub fn parse_self_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces: count fields after its closing paren.
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // Fields 3.. follow; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU limits (cores) of this process's cgroups and their ancestors, from
/// `/proc/self/cgroup`: cgroup v2 (`0::/path`, `cpu.max`) and v1 (a hierarchy with the
/// `cpu` controller, `cpu.cfs_quota_us`).
fn cgroup_limits() -> Vec<f64> {
    let Ok(membership) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let mut limits = Vec::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim().trim_start_matches('/');
        if controllers.is_empty() {
            let root = Path::new("/sys/fs/cgroup");
            for dir in dir_and_ancestors(root, path) {
                let cpu_max = std::fs::read_to_string(dir.join("cpu.max"));
                limits.extend(cpu_max.ok().and_then(|text| parse_cpu_max(&text)));
            }
        } else if controllers.split(',').any(|controller| controller == "cpu") {
            let root = Path::new("/sys/fs/cgroup/cpu");
            for dir in dir_and_ancestors(root, path) {
                let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us"));
                let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us"));
                if let (Ok(quota), Ok(period)) = (quota, period) {
                    limits.extend(parse_cfs_quota(&quota, &period));
                }
            }
        }
    }
    limits
}

/// `root/path` and each of its ancestors up to `root`, deepest first.
fn dir_and_ancestors(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut dir = root.to_path_buf();
    let mut dirs = vec![dir.clone()];
    for part in path
        .split('/')
        .filter(|part| !part.is_empty() && *part != "..")
    {
        dir.push(part);
        dirs.push(dir.clone());
    }
    dirs.reverse();
    dirs
}

/// One reading of everything the figure comes from.
struct Reading {
    at: Instant,
    host: HostTimes,
    /// This process's CPU time so far, in clock ticks (None: unreadable).
    own_ticks: Option<u64>,
}

/// Clock ticks per second of `/proc`'s counters.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Samples the host's spare CPU into a window and gives its figure.
pub struct SpareCpu {
    last: Option<Reading>,
    window: VecDeque<f64>,
    /// The cores this process may run on (its CPU affinity).
    usable_cores: f64,
    ticks_per_second: f64,
}

impl SpareCpu {
    /// An empty window.
    pub fn new() -> SpareCpu {
        SpareCpu {
            last: None,
            window: VecDeque::with_capacity(WINDOW_SAMPLES),
            usable_cores: std::thread::available_parallelism()
                .map_or(f64::INFINITY, |cores| cores.get() as f64),
            ticks_per_second: ticks_per_second(),
        }
    }

    fn read() -> Option<Reading> {
        let host = parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)?;
        Some(Reading {
            at: Instant::now(),
            host,
            own_ticks: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|text| parse_self_stat_ticks(&text)),
        })
    }

    /// Takes a reading; from the second on, adds the cores spare since the reading
    /// before to the window. Returns the figure, None before two readings or where
    /// `/proc/stat` cannot be read (the window is then emptied: an old figure would
    /// stand for a host no longer measured).
    pub fn sample(&mut self) -> Option<f64> {
        let Some(now) = SpareCpu::read() else {
            self.window.clear();
            self.last = None;
            return None;
        };
        if let Some(before) = self.last.take() {
            let spare = self.spare_between(&before, &now, &cgroup_limits());
            self.record(spare);
        }
        self.last = Some(now);
        self.figure()
    }

    /// The cores spare between two readings: the host's idle cores (at most the cores
    /// this process may use), and under each cgroup limit what this process's use
    /// leaves of it.
    fn spare_between(&self, before: &Reading, after: &Reading, limits: &[f64]) -> f64 {
        let mut spare = host_spare_cores(before.host, after.host).min(self.usable_cores);
        let elapsed_seconds = after.at.duration_since(before.at).as_secs_f64();
        if let (Some(used_before), Some(used_after)) = (before.own_ticks, after.own_ticks) {
            if elapsed_seconds > 0.0 {
                let used_ticks = used_after.saturating_sub(used_before) as f64;
                let used_cores = used_ticks / self.ticks_per_second / elapsed_seconds;
                for &limit_cores in limits {
                    spare = spare.min((limit_cores - used_cores).max(0.0));
                }
            }
        }
        spare
    }

    /// Adds one second's figure to the window, dropping the oldest past its length.
    fn record(&mut self, spare_cores: f64) {
        if self.window.len() == WINDOW_SAMPLES {
            self.window.pop_front();
        }
        self.window.push_back(spare_cores);
    }

    /// The smaller of the window's mean and its last `RECENT_SAMPLES`' mean; None while
    /// the window is empty.
    pub fn figure(&self) -> Option<f64> {
        let mean = |samples: &mut dyn Iterator<Item = &f64>, count: usize| {
            samples.sum::<f64>() / count as f64
        };
        let all = self.window.len();
        if all == 0 {
            return None;
        }
        let recent = all.min(RECENT_SAMPLES);
        let whole = mean(&mut self.window.iter(), all);
        let lately = mean(&mut self.window.iter().skip(all - recent), recent);
        Some(whole.min(lately))
    }
}

impl Default for SpareCpu {
    fn default() -> Self {
        SpareCpu::new()
    }
}

/// Measures the host's spare CPU every second into `loads` (which sends it to the
/// peers) until `stopped` says the node stopped, as the node's other tasks end. One
/// task per node.
pub(crate) async fn run(loads: Arc<NodeLoads>, stopped: impl Fn() -> bool) {
    if let Some(fixed) = std::env::var(FIXED_SPARE_CORES_ENV)
        .ok()
        .and_then(|value| value.parse::<f64>().ok())
    {
        loads.set_spare_cores(fixed);
        return;
    }
    let mut spare = SpareCpu::new();
    let mut warned = false;
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every_second.tick().await;
        if stopped() {
            return;
        }
        match spare.sample() {
            Some(cores) => loads.set_spare_cores(cores),
            None if spare.last.is_none() => {
                loads.clear_spare_cores();
                if !warned {
                    warned = true;
                    tracing::warn!(
                        "cannot read /proc/stat: this member tells its peers no CPU to \
                         spare, and their splits by load wait for another member"
                    );
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 800 40 3 2 0 0 0\n\
                        cpu0 50 2 25 400 20 1 1 0 0 0\n\
                        cpu1 50 3 25 400 20 2 1 0 0 0\n\
                        intr 12345\n\
                        cpufreq 1\n";

    #[test]
    fn proc_stat_gives_idle_and_total_time_over_every_cpu() {
        let times = parse_proc_stat(STAT).unwrap();
        assert_eq!(
            times,
            HostTimes {
                idle_ticks: 840,
                total_ticks: 1000,
                cpus: 2
            }
        );
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2 3\ncpu0 1 2 3\n"), None);
        assert_eq!(parse_proc_stat("cpu 1 2 3 4 5\n"), None, "no CPU listed");
    }

    #[test]
    fn spare_cores_are_the_idle_share_of_every_cpu_between_two_readings() {
        let before = HostTimes {
            idle_ticks: 840,
            total_ticks: 1000,
            cpus: 2,
        };
        // 200 ticks over 2 CPUs, 50 of them idle: a quarter of 2 cores.
        let after = HostTimes {
            idle_ticks: 890,
            total_ticks: 1200,
            cpus: 2,
        };
        assert_eq!(host_spare_cores(before, after), 0.5);
        assert_eq!(host_spare_cores(before, before), 0.0, "no time passed");
    }

    #[test]
    fn cgroup_limits_and_own_cpu_time_are_read_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs_quota("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), None, "unlimited");
        // utime 7 and stime 3, after a command name with a space and a paren.
        let stat = "42 (ostra kon)) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 9 0";
        assert_eq!(parse_self_stat_ticks(stat), Some(10));
        assert_eq!(parse_self_stat_ticks("42 (x) S 1"), None);
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            dir_and_ancestors(root, "a/b"),
            vec![root.join("a/b"), root.join("a"), root.to_path_buf()]
        );
        assert_eq!(dir_and_ancestors(root, ""), vec![root.to_path_buf()]);
        assert_eq!(
            dir_and_ancestors(root, "../x"),
            vec![root.join("x"), root.to_path_buf()]
        );
    }

    fn reading(at: Instant, idle_ticks: u64, total_ticks: u64, own_ticks: u64) -> Reading {
        Reading {
            at,
            host: HostTimes {
                idle_ticks,
                total_ticks,
                cpus: 4,
            },
            own_ticks: Some(own_ticks),
        }
    }

    fn empty_window(usable_cores: f64) -> SpareCpu {
        SpareCpu {
            last: None,
            window: VecDeque::new(),
            usable_cores,
            ticks_per_second: 100.0,
        }
    }

    #[test]
    fn a_cgroup_limit_and_the_usable_cores_bound_the_host_idle_cores() {
        let start = Instant::now();
        // Over 1 s: 400 ticks over 4 CPUs, 300 idle (3 cores), 50 of this process's.
        let before = reading(start, 0, 0, 0);
        let after = reading(start + Duration::from_secs(1), 300, 400, 50);
        let spare = empty_window(8.0);
        assert_eq!(spare.spare_between(&before, &after, &[]), 3.0);
        // A limit of 2 cores, half a core used: 1.5 left.
        assert_eq!(spare.spare_between(&before, &after, &[2.0, 4.0]), 1.5);
        // A limit below this process's use leaves none.
        assert_eq!(spare.spare_between(&before, &after, &[0.25]), 0.0);
        // Pinned to 2 cores: at most 2.
        assert_eq!(empty_window(2.0).spare_between(&before, &after, &[]), 2.0);
    }

    #[test]
    fn the_figure_is_the_lower_of_the_window_mean_and_the_recent_mean() {
        let mut spare = empty_window(8.0);
        assert_eq!(spare.figure(), None);
        for cores in 0..WINDOW_SAMPLES + 5 {
            spare.record(cores as f64);
        }
        // The last WINDOW_SAMPLES values, 5 ..= WINDOW_SAMPLES + 4, rising: the whole
        // window's mean is the lower.
        let expected = (5..WINDOW_SAMPLES + 5).sum::<usize>() as f64 / WINDOW_SAMPLES as f64;
        assert_eq!(spare.figure(), Some(expected));
        // A quiet window, then a busy burst: the burst's seconds decide.
        let mut burst = empty_window(8.0);
        for _ in 0..WINDOW_SAMPLES - RECENT_SAMPLES {
            burst.record(2.0);
        }
        for _ in 0..RECENT_SAMPLES {
            burst.record(0.1);
        }
        let figure = burst.figure().unwrap();
        assert!((figure - 0.1).abs() < 1e-9, "{figure}");
    }

    #[test]
    fn this_host_reads_as_some_spare_cpu_within_its_cores() {
        let mut spare = SpareCpu::new();
        assert_eq!(spare.sample(), None, "one reading gives no figure");
        std::thread::sleep(Duration::from_millis(50));
        let cores = spare.sample().expect("a Linux host has /proc/stat");
        let cpus = parse_proc_stat(&std::fs::read_to_string("/proc/stat").unwrap())
            .unwrap()
            .cpus;
        assert!(
            (0.0..=f64::from(cpus)).contains(&cores),
            "{cores} spare of {cpus}"
        );
    }
}
