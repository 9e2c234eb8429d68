//! The `ostrakon` binary: argument parsing only; the work is in the library crates.

mod bench;
mod chaos_cmd;
mod client_conn;
mod duration;
mod heap;
mod playground;
mod ranges_cmd;
mod server_args;
mod snapshot_cmd;
mod status_cmd;
mod urls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ostrakon",
    version,
    about = "A distributed key-value database that speaks the etcd v3 API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a member (etcd's flag names and defaults).
    Server(Box<server_args::ServerArgs>),
    /// Start a local cluster of separate processes and print how to use it.
    Playground(playground::PlaygroundArgs),
    /// Load an etcd-API cluster (ostrakon or etcd) and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Run a local cluster under faults and check what clients saw (linearizability).
    Chaos(chaos_cmd::ChaosArgs),
    /// One line per member: id, leader, term, indexes (etcdctl endpoint status -w table).
    Status(status_cmd::StatusArgs),
    /// The keyspace's ranges (each with its own raft group); `ranges split KEY` splits one.
    Ranges(ranges_cmd::RangesArgs),
    /// Back up a running cluster, check a backup, or make a new cluster from one.
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Server(args) => server_args::run(*args),
        Command::Playground(args) => playground::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Snapshot(command) => snapshot_cmd::run(command),
        Command::Chaos(args) => chaos_cmd::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Ranges(args) => ranges_cmd::run(args),
    }
}
