//! The CPU this node's host has to spare, for splits by load (`load_split`): a split by
//! load helps only if another member can take half of the range's work, and a member
//! can only if its host has idle CPU. Three members sharing one host's cores (as on a
//! developer's machine, or the benchmark's) gain nothing from a split and pay for it:
//! two groups batch writes apart and every write of a split keyspace takes its
//! revision from the oracle (docs/RANGES.md, "Splits by load").
//!
//! Measured every second from `/proc/stat` (idle and iowait time of the CPUs this
//! process may run on), and where the node runs in a cgroup with a CPU limit (cgroup v2
//! `cpu.max` or v1 `cpu.cfs_quota_us`, as containers and the benchmarks' `MEMBER_CPU`
//! set them, on the node's cgroup or an ancestor), from what the limit leaves once that
//! cgroup's CPU time is taken (its `cpu.stat` or `cpuacct.usage`; this process's own
//! where the cgroup's cannot be read): the smallest of these. The cgroups are read
//! again every second (a benchmark moves a running member into one).
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

/// A reading of the host's CPU time counters (`/proc/stat`'s per-CPU lines, in clock
/// ticks), summed over the CPUs this process may run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTimes {
    /// Idle and iowait time (a CPU waiting on a disk could run).
    pub idle_ticks: u64,
    /// All time (user, nice, system, idle, iowait, irq, softirq, steal: guest time is
    /// counted in user already).
    pub total_ticks: u64,
    /// CPUs summed.
    pub cpus: u32,
}

/// A CPU list as the kernel writes one (`0-3,8,10-11`), None if malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
                cpus.extend(first..=last);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The CPUs this process may run on (`/proc/self/status`'s `Cpus_allowed_list`), None
/// if unknown (every CPU then counts).
fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpu_list(list)
}

/// Parses `/proc/stat`, summing the `cpuN` lines of the CPUs in `allowed` (every CPU
/// if None). None if no such line is well formed.
pub fn parse_proc_stat(text: &str, allowed: Option<&[usize]>) -> Option<HostTimes> {
    let mut times = HostTimes {
        idle_ticks: 0,
        total_ticks: 0,
        cpus: 0,
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|name| name.strip_prefix("cpu"))
            .and_then(|number| number.parse::<usize>().ok())
        else {
            continue; // the `cpu` total line, and every other line
        };
        if allowed.is_some_and(|allowed| !allowed.contains(&cpu)) {
            continue;
        }
        let ticks: Option<Vec<u64>> = fields.take(8).map(|field| field.parse().ok()).collect();
        // Idle and iowait are the fourth and fifth.
        let Some(ticks) = ticks.filter(|ticks| ticks.len() >= 5) else {
            continue;
        };
        times.idle_ticks += ticks[3] + ticks[4];
        times.total_ticks += ticks.iter().sum::<u64>();
        times.cpus += 1;
    }
    (times.cpus > 0).then_some(times)
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
    (period > 0.0).then_some(quota / period)
}

/// A cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us`: the cores the limit allows,
/// None if unlimited (a quota of -1).
pub fn parse_cfs_quota(quota_us: &str, period_us: &str) -> Option<f64> {
    let quota: f64 = quota_us.trim().parse().ok()?;
    let period: f64 = period_us.trim().parse().ok()?;
    (quota > 0.0 && period > 0.0).then_some(quota / period)
}

/// A cgroup v2 `cpu.stat`'s `usage_usec`.
pub fn parse_usage_usec(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|value| value.trim().parse().ok())
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

/// A cgroup with a CPU limit, as one reading found it.
#[derive(Debug, Clone, PartialEq)]
struct Limit {
    dir: PathBuf,
    cores: f64,
    /// The cgroup's CPU time so far, in microseconds, where it can be read.
    usage_usec: Option<u64>,
}

/// The cgroups with a CPU limit among this process's and their ancestors, from
/// `/proc/self/cgroup`: cgroup v2 (`0::/path`: `cpu.max`, `cpu.stat`) and v1 (a
/// hierarchy with the `cpu` controller: `cpu.cfs_quota_us`, and `cpuacct.usage` where
/// `cpuacct` is mounted with it).
fn cgroup_limits() -> Vec<Limit> {
    let Ok(membership) = std::fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let mut limits = Vec::new();
    for line in membership.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim().trim_start_matches('/');
        if controllers.is_empty() {
            for dir in dir_and_ancestors(Path::new("/sys/fs/cgroup"), path) {
                if let Some(cores) = read(&dir, "cpu.max").and_then(|text| parse_cpu_max(&text)) {
                    let usage_usec =
                        read(&dir, "cpu.stat").and_then(|text| parse_usage_usec(&text));
                    limits.push(Limit {
                        dir,
                        cores,
                        usage_usec,
                    });
                }
            }
        } else if controllers.split(',').any(|controller| controller == "cpu") {
            for dir in dir_and_ancestors(Path::new("/sys/fs/cgroup/cpu"), path) {
                let quota = read(&dir, "cpu.cfs_quota_us");
                let period = read(&dir, "cpu.cfs_period_us");
                if let Some(cores) = quota.zip(period).and_then(|(q, p)| parse_cfs_quota(&q, &p)) {
                    let usage_usec = read(&dir, "cpuacct.usage")
                        .and_then(|text| text.trim().parse::<u64>().ok())
                        .map(|nanoseconds| nanoseconds / 1_000);
                    limits.push(Limit {
                        dir,
                        cores,
                        usage_usec,
                    });
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
    limits: Vec<Limit>,
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
    ticks_per_second: f64,
}

impl SpareCpu {
    /// An empty window.
    pub fn new() -> SpareCpu {
        SpareCpu {
            last: None,
            window: VecDeque::with_capacity(WINDOW_SAMPLES),
            ticks_per_second: ticks_per_second(),
        }
    }

    fn read() -> Option<Reading> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let host = parse_proc_stat(&stat, allowed_cpus().as_deref())?;
        Some(Reading {
            at: Instant::now(),
            host,
            own_ticks: std::fs::read_to_string("/proc/self/stat")
                .ok()
                .and_then(|text| parse_self_stat_ticks(&text)),
            limits: cgroup_limits(),
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
            let spare = self.spare_between(&before, &now);
            self.record(spare);
        }
        self.last = Some(now);
        self.figure()
    }

    /// The cores spare between two readings: the idle cores of the CPUs this process
    /// may run on, and under each cgroup limit what the cgroup's use leaves of it (its
    /// own count where both readings have it, else this process's; a limit with
    /// neither bounds the figure by itself).
    fn spare_between(&self, before: &Reading, after: &Reading) -> f64 {
        let mut spare = host_spare_cores(before.host, after.host);
        let elapsed_usec = after.at.duration_since(before.at).as_micros() as f64;
        if elapsed_usec <= 0.0 {
            return spare;
        }
        let own_usec = before.own_ticks.zip(after.own_ticks).map(|(then, now)| {
            now.saturating_sub(then) as f64 / self.ticks_per_second * 1_000_000.0
        });
        for limit in &after.limits {
            let cgroup_usec = before
                .limits
                .iter()
                .find(|earlier| earlier.dir == limit.dir)
                .and_then(|earlier| earlier.usage_usec.zip(limit.usage_usec))
                .map(|(then, now)| now.saturating_sub(then) as f64);
            let used_cores = cgroup_usec.or(own_usec).unwrap_or(0.0) / elapsed_usec;
            spare = spare.min((limit.cores - used_cores).max(0.0));
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
        let all = self.window.len();
        if all == 0 {
            return None;
        }
        let recent = all.min(RECENT_SAMPLES);
        let whole = self.window.iter().sum::<f64>() / all as f64;
        let lately = self.window.iter().skip(all - recent).sum::<f64>() / recent as f64;
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
                        cpu1 50 3 25 400 20 2 1 1 0 0\n\
                        intr 12345\n\
                        cpufreq 1\n";

    #[test]
    fn proc_stat_gives_idle_and_total_time_over_the_allowed_cpus() {
        let every = HostTimes {
            idle_ticks: 840,
            total_ticks: 1001,
            cpus: 2,
        };
        assert_eq!(parse_proc_stat(STAT, None), Some(every));
        let second = HostTimes {
            idle_ticks: 420,
            total_ticks: 502,
            cpus: 1,
        };
        assert_eq!(parse_proc_stat(STAT, Some(&[1, 5])), Some(second));
        assert_eq!(
            parse_proc_stat(STAT, Some(&[7])),
            None,
            "no allowed CPU listed"
        );
        assert_eq!(parse_proc_stat("intr 1\n", None), None);
        assert_eq!(
            parse_proc_stat("cpu0 1 2 3\n", None),
            None,
            "too few fields"
        );
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-x"), None);
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
    fn cgroup_limits_and_cpu_times_are_read_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_cfs_quota("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs_quota("-1\n", "100000\n"), None, "unlimited");
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(parse_usage_usec(stat), Some(123_456));
        assert_eq!(parse_usage_usec("user_usec 1\n"), None);
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
        let escaping = dir_and_ancestors(root, "../x");
        assert_eq!(escaping, vec![root.join("x"), root.to_path_buf()]);
    }

    fn limit(dir: &str, cores: f64, usage_usec: Option<u64>) -> Limit {
        let dir = PathBuf::from(dir);
        Limit {
            dir,
            cores,
            usage_usec,
        }
    }

    fn empty_window() -> SpareCpu {
        SpareCpu {
            last: None,
            window: VecDeque::new(),
            ticks_per_second: 100.0,
        }
    }

    #[test]
    fn a_cgroup_limit_leaves_what_the_cgroup_does_not_use() {
        let start = Instant::now();
        let second = start + Duration::from_secs(1);
        let spare = empty_window();
        // Over 1 s: 400 ticks over 4 CPUs, 300 idle (3 cores); this process used 50
        // ticks (half a core).
        let spare_with = |limits_before: Vec<Limit>, limits_after: Vec<Limit>| {
            let before = Reading {
                at: start,
                host: HostTimes {
                    idle_ticks: 0,
                    total_ticks: 0,
                    cpus: 4,
                },
                own_ticks: Some(0),
                limits: limits_before,
            };
            let after = Reading {
                at: second,
                host: HostTimes {
                    idle_ticks: 300,
                    total_ticks: 400,
                    cpus: 4,
                },
                own_ticks: Some(50),
                limits: limits_after,
            };
            spare.spare_between(&before, &after)
        };
        assert_eq!(spare_with(vec![], vec![]), 3.0);
        // A limit of 2 cores whose cgroup used 1.25 (shared with others): 0.75 left.
        let shared = |usage| vec![limit("/a", 2.0, usage), limit("/a/b", 4.0, None)];
        assert_eq!(spare_with(shared(Some(0)), shared(Some(1_250_000))), 0.75);
        // Without the cgroup's count, this process's half core is taken: 1.5 left.
        assert_eq!(spare_with(shared(None), shared(None)), 1.5);
        // A limit below the use leaves none; a limit met in the second reading only
        // counts this process's use.
        assert_eq!(spare_with(vec![], vec![limit("/c", 0.25, Some(9))]), 0.0);
        assert_eq!(spare_with(vec![], vec![limit("/c", 1.0, Some(9))]), 0.5);
    }

    #[test]
    fn the_figure_is_the_lower_of_the_window_mean_and_the_recent_mean() {
        let mut spare = empty_window();
        assert_eq!(spare.figure(), None);
        for cores in 0..WINDOW_SAMPLES + 5 {
            spare.record(cores as f64);
        }
        // The last WINDOW_SAMPLES values, 5 ..= WINDOW_SAMPLES + 4, rising: the whole
        // window's mean is the lower.
        let expected = (5..WINDOW_SAMPLES + 5).sum::<usize>() as f64 / WINDOW_SAMPLES as f64;
        assert_eq!(spare.figure(), Some(expected));
        // A quiet window, then a busy burst: the burst's seconds decide.
        let mut burst = empty_window();
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
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let cpus = parse_proc_stat(&stat, allowed_cpus().as_deref())
            .unwrap()
            .cpus;
        assert!(
            (0.0..=f64::from(cpus)).contains(&cores),
            "{cores} spare of {cpus}"
        );
        assert!(allowed_cpus().is_some_and(|cpus| !cpus.is_empty()));
    }
}
