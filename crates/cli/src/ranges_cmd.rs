//! `ostrakon ranges`: the keyspace's ranges (as CockroachDB's SHOW RANGES lists them), and
//! `ostrakon ranges split KEY`.

use std::time::Duration;

use clap::{Args, Subcommand};
use ostrakon_proto::ostrakonpb::ranges_client::RangesClient;
use ostrakon_proto::ostrakonpb::{ListRangesRequest, RangeInfo, SplitRangeRequest};

use crate::client_conn::ClientTlsArgs;

/// `ostrakon ranges [list|split KEY]`.
#[derive(Args, Debug)]
pub struct RangesArgs {
    #[command(subcommand)]
    pub command: Option<RangesCommand>,
    /// A client endpoint (host:port or URL) of any member.
    #[arg(long, global = true, default_value = "127.0.0.1:2379")]
    pub endpoint: String,
    /// TLS to the member.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

#[derive(Subcommand, Debug)]
pub enum RangesCommand {
    /// One line per range: id, span, leader, replicas, keys, size (bytes of the live keys
    /// and values), revision (the default).
    List,
    /// Split the range holding KEY at KEY: the keys from KEY on go to a new range with
    /// its own raft group on every replica.
    Split {
        /// The first key of the new range.
        key: String,
    },
}

const HEADERS: [&str; 8] = [
    "RANGE", "START", "END", "LEADER", "REPLICAS", "KEYS", "SIZE", "REVISION",
];

/// A key as it is printed: the text if it is printable, else hex.
fn printable(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => format!(
            "0x{}",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}

fn row(range: &RangeInfo) -> Vec<String> {
    let start = if range.start.is_empty() {
        "-inf".to_string()
    } else {
        printable(&range.start)
    };
    let end = if range.unbounded_end {
        "+inf".to_string()
    } else {
        printable(&range.end)
    };
    let replicas: Vec<String> = range.replicas.iter().map(|id| format!("{id:x}")).collect();
    vec![
        range.range_id.to_string(),
        start,
        end,
        format!("{:x}", range.leader),
        replicas.join(","),
        range.keys.to_string(),
        range.live_bytes.to_string(),
        range.revision.to_string(),
    ]
}

pub fn run(args: RangesArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let endpoint = args.tls.url(&args.endpoint);
    runtime.block_on(async {
        let channel = args
            .tls
            .endpoint(&endpoint)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        let mut client = RangesClient::new(channel);
        match args.command.unwrap_or(RangesCommand::List) {
            RangesCommand::List => {
                let ranges = client
                    .list(ListRangesRequest {})
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message()))?
                    .into_inner()
                    .ranges;
                let rows: Vec<Vec<String>> = ranges.iter().map(row).collect();
                println!("{}", crate::status_cmd::table(&HEADERS, &rows));
            }
            RangesCommand::Split { key } => {
                let split = client
                    .split(SplitRangeRequest {
                        key: key.clone().into_bytes().into(),
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message()))?
                    .into_inner();
                println!(
                    "split range {} at {}: the keys from there on are range {}",
                    split.left_range_id,
                    printable(key.as_bytes()),
                    split.right_range_id
                );
            }
        }
        Ok(())
    })
}
