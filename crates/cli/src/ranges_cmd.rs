//! `ostrakon ranges`: the keyspace's ranges (as CockroachDB's SHOW RANGES lists them), and
//! `ostrakon ranges split KEY` and `ostrakon ranges merge KEY`.

use std::time::Duration;

use clap::{Args, Subcommand};
use ostrakon_proto::ostrakonpb::ranges_client::RangesClient;
use ostrakon_proto::ostrakonpb::{
    ListRangesRequest, MergeRangesRequest, RangeInfo, SplitRangeRequest,
};

use crate::client_conn::ClientTlsArgs;

/// `ostrakon ranges [list|split KEY|merge KEY]`.
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
    /// and values), requests per second (over the last 10 s, summed over the members),
    /// revision (the default).
    List,
    /// Split the range holding KEY at KEY: the keys from KEY on go to a new range with
    /// its own raft group on every replica. Given several keys, splits at each over one
    /// connection (one split per key, as if the command ran once per key), up to
    /// `--concurrency` at once (splits of different ranges then share their rounds'
    /// fsyncs; splits of one range take their turns).
    Split {
        /// The first key of each new range.
        #[arg(required = true)]
        keys: Vec<String>,
        /// How many splits are in flight at once.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        concurrency: u16,
    },
    /// Merge the range that starts at KEY into the range before it, undoing `split KEY`:
    /// one range, with one raft group, then holds both spans' keys. Every replica must be
    /// up. A range split off by hand is merged only so.
    Merge {
        /// The first key of the range to merge into the one before it.
        key: String,
    },
}

/// The largest list of ranges taken (gRPC's default of 4 MiB is about 60,000 ranges).
const LIST_BYTES_MAX: usize = 1 << 30;

const HEADERS: [&str; 9] = [
    "RANGE",
    "START",
    "END",
    "LEADER",
    "REPLICAS",
    "KEYS",
    "SIZE",
    "REQUESTS/S",
    "REVISION",
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

/// `range`'s row, with its requests per second summed over the members (None: not
/// known from every member).
fn row(range: &RangeInfo, requests_per_second: Option<f64>) -> Vec<String> {
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
        requests_per_second.map_or("?".to_string(), |rate| format!("{rate:.1}")),
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
        let mut client =
            RangesClient::new(channel.clone()).max_decoding_message_size(LIST_BYTES_MAX);
        match args.command.unwrap_or(RangesCommand::List) {
            RangesCommand::List => {
                let ranges = client
                    .list(ListRangesRequest {})
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message()))?
                    .into_inner()
                    .ranges;
                let load = load_over_members(&args.tls, channel.clone()).await;
                let rows: Vec<Vec<String>> = ranges
                    .iter()
                    .map(|range| {
                        let rate = load.as_ref().and_then(|load| load.get(&range.range_id));
                        row(range, rate.copied())
                    })
                    .collect();
                println!("{}", crate::status_cmd::table(&HEADERS, &rows));
                if load.is_none() {
                    eprintln!("requests/s unknown: not every member answered");
                }
            }
            RangesCommand::Split { keys, concurrency } => {
                let mut keys = keys.into_iter();
                let mut in_flight = tokio::task::JoinSet::new();
                loop {
                    while in_flight.len() < usize::from(concurrency) {
                        let Some(key) = keys.next() else {
                            break;
                        };
                        let mut client = client.clone();
                        in_flight.spawn(async move {
                            let request = SplitRangeRequest {
                                key: key.clone().into_bytes().into(),
                            };
                            let answer = client.split(request).await;
                            (key, answer)
                        });
                    }
                    let Some(done) = in_flight.join_next().await else {
                        break;
                    };
                    let (key, answer) = done?;
                    let split = answer
                        .map_err(|e| anyhow::anyhow!("split at {key:?}: {}", e.message()))?
                        .into_inner();
                    println!(
                        "split range {} at {}: the keys from there on are range {}",
                        split.left_range_id,
                        printable(key.as_bytes()),
                        split.right_range_id
                    );
                }
            }
            RangesCommand::Merge { key } => {
                let merged = client
                    .merge(MergeRangesRequest {
                        key: key.clone().into_bytes().into(),
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.message()))?
                    .into_inner();
                println!(
                    "merged range {} into range {}, which holds both spans' keys now",
                    merged.right_range_id, merged.left_range_id
                );
            }
        }
        Ok(())
    })
}

/// Each range's requests per second summed over every member (each counts what it
/// serves), or None if a member cannot be asked.
async fn load_over_members(
    tls: &ClientTlsArgs,
    channel: tonic::transport::Channel,
) -> Option<std::collections::HashMap<u64, f64>> {
    use ostrakon_proto::etcdserverpb::{cluster_client::ClusterClient, MemberListRequest};
    let members = ClusterClient::new(channel)
        .member_list(MemberListRequest::default())
        .await
        .ok()?
        .into_inner()
        .members;
    let mut load = std::collections::HashMap::new();
    for member in members {
        let url = member.client_ur_ls.first()?;
        let channel = tls
            .endpoint(url)
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .ok()?;
        let ranges = RangesClient::new(channel)
            .max_decoding_message_size(LIST_BYTES_MAX)
            .list(ListRangesRequest {})
            .await
            .ok()?
            .into_inner()
            .ranges;
        for range in ranges {
            *load.entry(range.range_id).or_insert(0.0) += range.requests_per_second;
        }
    }
    Some(load)
}
