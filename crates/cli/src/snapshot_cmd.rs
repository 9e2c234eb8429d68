//! `ostrakon snapshot save|status|restore`: backups of a running cluster and new clusters
//! made from them, as `etcdctl snapshot save` and `etcdutl snapshot status|restore` do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ostrakon_node::config::cluster_id;
use ostrakon_node::NodeConfig;
use ostrakon_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ostrakon_proto::etcdserverpb::SnapshotRequest;
use tokio::io::AsyncWriteExt;

use crate::client_conn::ClientTlsArgs;
use crate::server_args::FoundingMembership;

/// What to do with snapshots.
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stream a consistent backup from a member to a file.
    Save(SaveArgs),
    /// Check a backup file and print its hash, revision, keys and size.
    Status(StatusArgs),
    /// Make a new member's data directory from a backup (run once per new member).
    Restore(RestoreArgs),
}

/// `snapshot save`.
#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the backup.
    pub file: PathBuf,
    /// The member to back up (host:port or a URL; the first of a list is used).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// TLS to the members.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// Output formats of `snapshot status`, as etcdutl's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WriteOut {
    /// `hash, revision, total keys, total size`.
    Simple,
    /// A table with a header.
    Table,
    /// One JSON object.
    Json,
}

/// `snapshot status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The backup file.
    pub file: PathBuf,
    /// Output format.
    #[arg(long = "write-out", short = 'w', value_enum, default_value = "simple")]
    pub write_out: WriteOut,
}

/// `snapshot restore`, with etcdutl's flags.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// This member's name in the new cluster.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// The new member's data directory (default: "<name>.etcd"); must not exist.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The new cluster's members: name=peer-url,...
    #[arg(long, default_value = "default=http://localhost:2380")]
    pub initial_cluster: String,
    /// The new cluster's token.
    #[arg(long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Start this many revisions past the backup's (as etcdutl's flag), so that clients
    /// never see revisions go backwards; needs --mark-compacted.
    #[arg(long, default_value_t = 0)]
    pub bump_revision: u64,
    /// Mark the restored revision as compacted (as etcdutl's flag): watchers of older
    /// revisions are told to relist. Required with --bump-revision, refused without.
    #[arg(long)]
    pub mark_compacted: bool,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380")]
    pub initial_advertise_peer_urls: String,
    /// How the new member's storage engine writes its blocks (as `server
    /// --store-compression`; fixed here, where its data directory is made).
    #[arg(long, value_enum, default_value_t = crate::server_args::StoreCompression::None)]
    pub store_compression: crate::server_args::StoreCompression,
}

/// Runs a snapshot command.
pub fn run(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Save(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(save(args)),
        SnapshotCommand::Status(args) => status(args),
        SnapshotCommand::Restore(args) => restore(args),
    }
}

async fn save(args: SaveArgs) -> anyhow::Result<()> {
    let endpoint = args
        .endpoints
        .split(',')
        .next()
        .filter(|e| !e.is_empty())
        .context("--endpoints is empty")?;
    let url = args.tls.url(endpoint);
    let channel = args
        .tls
        .endpoint(endpoint)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut stream = MaintenanceClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .snapshot(SnapshotRequest {})
        .await
        .with_context(|| format!("asking {url} for a snapshot"))?
        .into_inner();
    let partial = args.file.with_extension("part");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let progress = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .expect("a valid template"),
    );
    let mut received = 0u64;
    let mut revision = 0;
    while let Some(chunk) = stream.message().await.context("receiving the snapshot")? {
        if let Some(header) = &chunk.header {
            revision = header.revision;
        }
        received += chunk.blob.len() as u64;
        progress.set_length(received + chunk.remaining_bytes);
        progress.set_position(received);
        file.write_all(&chunk.blob).await?;
        if chunk.remaining_bytes == 0 {
            break;
        }
    }
    progress.finish_and_clear();
    file.sync_all().await?;
    drop(file);
    // The whole file is checked (its checksum) before it takes the final name.
    ostrakon_storage::backup::read(&partial)
        .with_context(|| format!("the snapshot received from {url} is incomplete"))?;
    tokio::fs::rename(&partial, &args.file).await?;
    eprintln!(
        "Snapshot of revision {revision} ({received} bytes) saved at {}",
        args.file.display()
    );
    println!("Snapshot saved at {}", args.file.display());
    Ok(())
}

fn status(args: StatusArgs) -> anyhow::Result<()> {
    let status = ostrakon_storage::backup::status(&args.file)?;
    let size = human_bytes(status.file_bytes);
    match args.write_out {
        WriteOut::Simple => println!(
            "{:x}, {}, {}, {}",
            status.hash, status.revision, status.total_keys, size
        ),
        WriteOut::Table => {
            let row = [
                format!("{:x}", status.hash),
                status.revision.to_string(),
                status.total_keys.to_string(),
                size,
            ];
            let titles = ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"];
            let widths: Vec<usize> = titles
                .iter()
                .zip(&row)
                .map(|(t, r)| t.len().max(r.len()) + 2)
                .collect();
            let rule = widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("+");
            println!("+{rule}+");
            let line = |cells: Vec<String>| {
                let cells: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:^w$}"))
                    .collect();
                println!("|{}|", cells.join("|"));
            };
            line(titles.iter().map(|t| t.to_string()).collect());
            println!("+{rule}+");
            line(row.to_vec());
            println!("+{rule}+");
        }
        WriteOut::Json => println!(
            "{{\"hash\":{},\"revision\":{},\"totalKey\":{},\"totalSize\":{}}}",
            status.hash, status.revision, status.total_keys, status.file_bytes
        ),
    }
    Ok(())
}

/// Sizes as etcdutl prints them (decimal units, as Go's humanize.Bytes).
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let membership = FoundingMembership::parse(
        &args.initial_cluster,
        &args.initial_cluster_token,
        &args.name,
        &args.initial_advertise_peer_urls,
    )?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", args.name)));
    if !Path::new(&args.file).is_file() {
        bail!("{}: no such file", args.file.display());
    }
    // etcdutl's rule, with its words.
    if args.bump_revision > 0 && !args.mark_compacted {
        bail!("--mark-compacted required if --bump-revision > 0");
    }
    if args.bump_revision == 0 && args.mark_compacted {
        bail!("--mark-compacted must be used with --bump-revision");
    }
    let bump = ostrakon_storage::backup::RevisionBump {
        revisions: args.bump_revision,
        mark_compacted: args.mark_compacted,
    };
    let config = NodeConfig {
        id: membership.id,
        name: args.name.clone(),
        cluster_id: cluster_id(membership.peers.keys().copied()),
        peers: membership.peers,
        member_names: membership.member_names,
        client_urls: Vec::new(),
        data_dir: data_dir.clone(),
        tick_interval: Duration::from_millis(100),
        heartbeat_ticks: 1,
        election_ticks: 10,
        strict_reconfig_check: true,
        quiesce: true,
        snapshot_entries: 100_000,
        raft_log_memory_bytes: 4 << 20,
        store_settings: ostrakon_node::config::StoreSettings {
            compression: args.store_compression.into(),
            ..Default::default()
        },
        request_timeout: Duration::from_secs(7),
        lease_checkpoint_interval: Some(Duration::from_secs(300)),
        quota_backend_bytes: 0,
        range_max_bytes: 0,
        range_split_qps: 0,
        range_split_spare_cores: 0.0,
        peer_tls: None,
        join: false,
    };
    let spinner = ProgressBar::new_spinner().with_message(format!(
        "restoring {} into {}",
        args.file.display(),
        data_dir.display()
    ));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let info = ostrakon_node::restore::restore_backup(&config, &args.file, bump)?;
    spinner.finish_and_clear();
    println!(
        "restored snapshot of revision {} into {} as member {:x} of cluster {:x}",
        info.revision.0,
        data_dir.display(),
        config.id.0,
        config.cluster_id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_print_as_etcdutl_prints_them() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(2_100_000), "2.1 MB");
        assert_eq!(human_bytes(20_480), "20.5 kB");
    }
}
