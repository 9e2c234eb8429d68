//! `ostrakon chaos`: a cluster of this binary's servers on loopback under a workload and a
//! nemesis, with the history checked; prints a JSON verdict (and writes it to `--out`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use ostrakon_chaos::{Nemesis, RunConfig};

/// The run's settings.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Members in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// How long the workload and the faults run (Go duration: 30s, 10m).
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse_go_duration)]
    pub duration: Duration,
    /// The fault: none, kill-leader, kill-random, pause-leader.
    #[arg(long, default_value = "kill-leader")]
    pub nemesis: Nemesis,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Registers the clients share.
    #[arg(long, default_value_t = 10)]
    pub keys: u64,
    /// Where to write the JSON verdict as well.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs; fails (exit 1) when the verdict is not valid.
pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if !(1..=7).contains(&args.nodes) {
        bail!("--nodes must be 1 to 7");
    }
    let config = RunConfig {
        binary: std::env::current_exe().context("finding this binary")?,
        nodes: args.nodes,
        duration: args.duration,
        nemesis: args.nemesis,
        clients: args.clients.max(1),
        keys: args.keys.max(1),
    };
    let verdict = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(ostrakon_chaos::run(&config))?;
    let json = serde_json::to_string_pretty(&verdict.to_json())?;
    println!("{json}");
    if let Some(out) = &args.out {
        std::fs::write(out, &json).with_context(|| format!("writing {}", out.display()))?;
    }
    if !verdict.valid {
        bail!("the history is {}", verdict.checker);
    }
    Ok(())
}
