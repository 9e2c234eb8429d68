//! `ostrakon bench`: a load generator over the etcd v3 API, for ostrakon and etcd alike.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use ostrakon_proto::etcdserverpb::kv_client::KvClient;
use ostrakon_proto::etcdserverpb::{
    compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use tonic::transport::Channel;

use crate::client_conn::ClientTlsArgs;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Put a random key of the key space.
    Put,
    /// Linearizable get of a random existing key.
    Get,
    /// Serializable (local, possibly stale) get of a random existing key.
    GetSerializable,
    /// A Txn: compare the key's mod revision, then put it.
    Txn,
    /// A Txn that puts two keys: the key and its pair (`--pair-prefix`, the key's digits,
    /// then "p"); with the keyspace split between them, a Txn across two ranges.
    TxnPair,
    /// Linearizable range over 100 keys.
    Range,
}

/// Options of the load.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Client endpoints (host:port or URLs), comma-separated; connections are spread
    /// over them.
    #[arg(long, default_value = "127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579")]
    pub endpoints: String,
    /// TLS to the members.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// The kind of request.
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Concurrent clients, each with one request outstanding.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// gRPC connections shared by the clients.
    #[arg(long, default_value_t = 8)]
    pub conns: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 20_000)]
    pub total: usize,
    /// Stop after this many seconds even if `total` is not reached.
    #[arg(long, default_value_t = 60)]
    pub duration_max_secs: u64,
    /// Bytes per key.
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub key_space: usize,
    /// What every key starts with, before its number ("r" with `--key-size 8` gives
    /// r0000123, the keys scripts/bench-many-ranges.sh splits at).
    #[arg(long, default_value = "b")]
    pub key_prefix: String,
    /// The first byte of each pair key of the txn-pair workload ("b": beside the key;
    /// "c" with a split at "c": in the next range).
    #[arg(long, default_value = "b")]
    pub pair_prefix: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Processes (the servers' pids, comma-separated) whose CPU time (user + system, from
    /// /proc) over the measured requests is reported, per 1,000 requests: what a request
    /// costs the whole cluster. Loading the keys a read workload needs is not counted.
    #[arg(long, value_delimiter = ',')]
    pub cpu_of_pids: Vec<u32>,
    /// The keys a read workload reads are there already (an earlier run wrote them): do
    /// not write them first, so counts taken around the run see only its reads.
    #[arg(long)]
    pub keys_loaded: bool,
}

/// CPU time (user + system) the processes have used so far, in seconds.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading the CPU time of process {pid}"))?;
        // After the command name's closing parenthesis: state is the first field, utime
        // the 12th and stime the 13th (fields 14 and 15 of proc(5)).
        let after_name = stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest)
            .context("a /proc stat line without a command name")?;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        for index in [11, 12] {
            ticks += fields
                .get(index)
                .and_then(|f| f.parse::<u64>().ok())
                .context("a /proc stat line without CPU times")?;
        }
    }
    Ok(ticks as f64 / ticks_per_second)
}

/// Runs the load and prints throughput and latency percentiles.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))
}

fn key(args: &BenchArgs, n: usize) -> Bytes {
    let mut key = format!(
        "{}{:0width$}",
        args.key_prefix,
        n % args.key_space,
        width = args.key_size.saturating_sub(args.key_prefix.len())
    );
    key.truncate(args.key_size.max(1));
    Bytes::from(key)
}

async fn connect(args: &BenchArgs) -> anyhow::Result<Vec<KvClient<Channel>>> {
    let endpoints: Vec<&str> = args
        .endpoints
        .split(',')
        .filter(|e| !e.is_empty())
        .collect();
    anyhow::ensure!(!endpoints.is_empty(), "--endpoints is empty");
    let mut clients = Vec::new();
    for i in 0..args.conns.max(1) {
        let address = endpoints[i % endpoints.len()];
        let url = args.tls.url(address);
        let channel = args
            .tls
            .endpoint(address)?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        clients.push(KvClient::new(channel));
    }
    Ok(clients)
}

async fn one(
    client: &mut KvClient<Channel>,
    args: &BenchArgs,
    n: usize,
    value: &Bytes,
) -> Result<(), tonic::Status> {
    let key = key(args, n.wrapping_mul(2_654_435_761));
    match args.workload {
        Workload::Put => {
            client
                .put(PutRequest {
                    key,
                    value: value.clone(),
                    ..Default::default()
                })
                .await?;
        }
        Workload::Get | Workload::GetSerializable => {
            let serializable = args.workload == Workload::GetSerializable;
            client
                .range(RangeRequest {
                    key,
                    serializable,
                    ..Default::default()
                })
                .await?;
        }
        Workload::Range => {
            client
                .range(RangeRequest {
                    key: Bytes::from_static(b"b"),
                    range_end: Bytes::from_static(b"c"),
                    limit: 100,
                    ..Default::default()
                })
                .await?;
        }
        Workload::Txn => {
            let compare = Compare {
                key: key.clone(),
                target: compare::CompareTarget::Mod as i32,
                result: compare::CompareResult::Greater as i32,
                target_union: Some(compare::TargetUnion::ModRevision(-1)),
                range_end: Bytes::new(),
            };
            let put = RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key,
                    value: value.clone(),
                    ..Default::default()
                })),
            };
            client
                .txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: vec![],
                })
                .await?;
        }
        Workload::TxnPair => {
            let pair = format!(
                "{}{}p",
                args.pair_prefix,
                String::from_utf8_lossy(&key[1..])
            );
            let put = |key: Bytes| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key,
                    value: value.clone(),
                    ..Default::default()
                })),
            };
            client
                .txn(TxnRequest {
                    compare: vec![],
                    success: vec![put(key), put(Bytes::from(pair))],
                    failure: vec![],
                })
                .await?;
        }
    }
    Ok(())
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let connections = connect(&args).await?;
    let value = Bytes::from(vec![b'v'; args.val_size]);
    if !args.keys_loaded
        && matches!(
            args.workload,
            Workload::Get | Workload::GetSerializable | Workload::Range
        )
    {
        // Reads need the keys to exist; writing them is not measured (so it may as well
        // be quick: as many writers as the workload has clients).
        let keys: std::sync::Arc<Vec<Bytes>> = std::sync::Arc::new(
            (0..args.key_space.min(args.total))
                .map(|n| key(&args, n))
                .collect(),
        );
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for c in 0..args.clients.max(1) {
            let mut client = connections[c % connections.len()].clone();
            let (next, value, keys) = (next.clone(), value.clone(), keys.clone());
            writers.spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(key) = keys.get(n) else {
                        return Ok::<(), tonic::Status>(());
                    };
                    let put = PutRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    };
                    client.put(put).await?;
                }
            });
        }
        while let Some(written) = writers.join_next().await {
            written??;
        }
    }
    let args = std::sync::Arc::new(args);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_max_secs);
    let cpu_before = cpu_seconds(&args.cpu_of_pids)?;
    let started = Instant::now();
    // Progress on stderr (drawn only on a terminal), so the report on stdout stays clean.
    let progress = indicatif::ProgressBar::new(args.total as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} requests, {per_sec}, eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    progress.set_message(format!("{:?}", args.workload).to_lowercase());
    let ticker = {
        let (progress, next, total) = (progress.clone(), next.clone(), args.total);
        tokio::spawn(async move {
            loop {
                let done = next.load(std::sync::atomic::Ordering::Relaxed).min(total);
                progress.set_position(done as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let mut client = connections[c % connections.len()].clone();
        let (args, next, value) = (args.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::new();
            let mut errors = 0usize;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= args.total || Instant::now() > deadline {
                    break;
                }
                let begin = Instant::now();
                match one(&mut client, &args, n, &value).await {
                    Ok(()) => {
                        latencies_us.push(begin.elapsed().as_micros().min(u32::MAX as u128) as u32)
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies_us, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies_us.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed();
    let cpu_used = cpu_seconds(&args.cpu_of_pids)? - cpu_before;
    ticker.abort();
    progress.finish_and_clear();
    latencies_us.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies_us.is_empty() {
            return 0.0;
        }
        let at = ((latencies_us.len() as f64 - 1.0) * p).round() as usize;
        latencies_us[at] as f64 / 1000.0
    };
    let ok = latencies_us.len();
    let throughput = ok as f64 / elapsed.as_secs_f64();
    let cpu_ms_per_1k = cpu_used * 1000.0 / ok.max(1) as f64 * 1000.0;
    let name = format!("{:?}", args.workload).to_lowercase();
    if args.json {
        println!(
            "{{\"workload\":\"{name}\",\"clients\":{},\"conns\":{},\"ok\":{ok},\"errors\":{errors},\"seconds\":{:.3},\"throughput\":{throughput:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"servers_cpu_s\":{cpu_used:.3},\"servers_cpu_ms_per_1k\":{cpu_ms_per_1k:.1}}}",
            args.clients, args.conns, elapsed.as_secs_f64(), percentile(0.5), percentile(0.9), percentile(0.99)
        );
    } else {
        println!(
            "{name}: {ok} ok, {errors} errors in {:.2} s: {throughput:.0} req/s; latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
            elapsed.as_secs_f64(), percentile(0.5), percentile(0.9), percentile(0.99)
        );
        if !args.cpu_of_pids.is_empty() {
            println!("servers' CPU: {cpu_used:.2} s, {cpu_ms_per_1k:.0} ms per 1,000 requests");
        }
    }
    Ok(())
}
