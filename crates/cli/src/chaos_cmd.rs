//! `ostrakon chaos`: a cluster of this binary's servers under the workloads and a nemesis,
//! with everything recorded checked; prints the JSON verdict, writes it to `--out` and
//! the HTML report to `--report`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ostrakon_chaos::{Nemesis, Network, RunConfig};

/// The run's settings.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Members in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How long the workloads and the faults run (Go duration: 30s, 10m).
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse_go_duration)]
    pub duration: Duration,
    /// The faults, taken in turn, comma-separated: kill-leader, kill-random,
    /// kill-minority, pause-leader, partition-leader, partition-halves,
    /// partition-one-way, partition-bridge, partition-ring, delay, loss, blackhole,
    /// clock-skew, fsync-error, torn-tail, membership, transfer-leader; or none,
    /// partitions (every partition), all. Faults joined with + are injected together
    /// (partition-halves+delay).
    #[arg(long, default_value = "kill-leader")]
    pub nemesis: Nemesis,
    /// Where the hosts live: namespaces (one network namespace per member; needs root)
    /// or loopback (no partitions). Default: namespaces as root, else loopback.
    #[arg(long)]
    pub network: Option<String>,
    /// Concurrent register clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Registers the clients share.
    #[arg(long, default_value_t = 10)]
    pub keys: u64,
    /// Split the keyspace at this key before the workloads start (repeatable). The Txn
    /// workload's groups are chaos/txn/<n>/<0..3>: a split at chaos/txn/0/1 puts group
    /// 0's keys in two ranges, so its Txns commit across ranges.
    #[arg(long = "split-at")]
    pub split_at: Vec<String>,
    /// Where to write the JSON verdict as well.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Where to write the HTML report.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Runs; fails (exit 1) when the verdict is not valid.
pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if !(1..=7).contains(&args.nodes) {
        bail!("--nodes must be 1 to 7");
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let network = match args.network.as_deref() {
        None if root => Network::Namespaces,
        None => Network::Loopback,
        Some("namespaces") => Network::Namespaces,
        Some("loopback") => Network::Loopback,
        Some(other) => bail!("--network must be namespaces or loopback, not {other:?}"),
    };
    let config = RunConfig {
        binary: std::env::current_exe().context("finding this binary")?,
        nodes: args.nodes,
        duration: args.duration,
        nemesis: args.nemesis,
        network,
        clients: args.clients.max(1),
        keys: args.keys.max(1),
        split_at: args.split_at,
    };
    ostrakon_chaos::preflight(&config)?;
    let progress = indicatif::ProgressBar::new(config.duration.as_secs());
    progress.set_style(
        indicatif::ProgressStyle::with_template("chaos {msg} [{bar:30}] {pos}/{len} s")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    progress.set_message(config.nemesis.to_string());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let verdict = runtime.block_on(async {
        let ticker = {
            let progress = progress.clone();
            let total = config.duration.as_secs();
            tokio::spawn(async move {
                for _ in 0..total {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    progress.inc(1);
                }
                progress.set_message("checking");
            })
        };
        let verdict = ostrakon_chaos::run(&config).await;
        ticker.abort();
        verdict
    })?;
    progress.finish_and_clear();
    let json = serde_json::to_string_pretty(&verdict.json)?;
    println!("{json}");
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(report) = &args.report {
        std::fs::write(report, ostrakon_chaos::html_report(&verdict))
            .with_context(|| format!("writing {}", report.display()))?;
    }
    if let Some(logs) = &verdict.logs {
        eprintln!("the members' logs and data are kept in {}", logs.display());
    }
    if !verdict.valid {
        bail!(
            "the verdict is not valid: {}",
            verdict.json["failing_checks"]
        );
    }
    Ok(())
}
