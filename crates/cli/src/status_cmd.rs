//! `ostrakon status`: one line per member, as `etcdctl endpoint status -w table` prints it.

use std::time::Duration;

use clap::Args;
use ostrakon_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use ostrakon_proto::etcdserverpb::StatusRequest;

use crate::client_conn::ClientTlsArgs;

/// Which members to ask.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Client endpoints (host:port or URLs), comma-separated.
    #[arg(long, default_value = "127.0.0.1:2379,127.0.0.1:2479,127.0.0.1:2579")]
    pub endpoints: String,
    /// TLS to the members.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

const HEADERS: [&str; 10] = [
    "ENDPOINT",
    "ID",
    "VERSION",
    "DB SIZE",
    "IS LEADER",
    "IS LEARNER",
    "RAFT TERM",
    "RAFT INDEX",
    "RAFT APPLIED INDEX",
    "ERRORS",
];

/// Bytes as etcdctl prints them (humanize.Bytes: SI units).
fn human_bytes(bytes: i64) -> String {
    let mut value = bytes.max(0) as f64;
    for unit in ["B", "kB", "MB", "GB", "TB"] {
        if value < 1000.0 || unit == "TB" {
            return if unit == "B" {
                format!("{value:.0} {unit}")
            } else if value < 10.0 {
                format!("{value:.1} {unit}")
            } else {
                format!("{value:.0} {unit}")
            };
        }
        value /= 1000.0;
    }
    unreachable!("the loop returns at TB")
}

async fn row(tls: &ClientTlsArgs, endpoint: &str) -> Result<Vec<String>, String> {
    let channel = tls
        .endpoint(endpoint)
        .map_err(|e| format!("{e:#}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let status = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let id = status.header.map(|h| h.member_id).unwrap_or(0);
    Ok(vec![
        endpoint.to_string(),
        format!("{id:x}"),
        status.version,
        human_bytes(status.db_size),
        (status.leader == id).to_string(),
        status.is_learner.to_string(),
        status.raft_term.to_string(),
        status.raft_index.to_string(),
        status.raft_applied_index.to_string(),
        status.errors.join(", "),
    ])
}

/// Renders rows as etcdctl's tables: centred headers, cells padded, ASCII borders.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([headers[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let border = format!(
        "+{}+",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+")
    );
    let line = |cells: Vec<String>| format!("| {} |", cells.join(" | "));
    let mut out = vec![border.clone()];
    out.push(line(
        headers
            .iter()
            .zip(&widths)
            .map(|(h, w)| format!("{h:^w$}"))
            .collect(),
    ));
    out.push(border.clone());
    for row in rows {
        out.push(line(
            row.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:>w$}"))
                .collect(),
        ));
    }
    out.push(border);
    out.join("\n")
}

/// Prints the table; members that do not answer are reported on stderr, and the command
/// fails if none answered.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> = args
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| args.tls.url(e))
        .collect();
    anyhow::ensure!(!endpoints.is_empty(), "--endpoints is empty");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for endpoint in &endpoints {
        let shown = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string();
        match runtime.block_on(row(&args.tls, endpoint)) {
            Ok(mut cells) => {
                cells[0] = shown;
                rows.push(cells);
            }
            Err(error) => eprintln!("Failed to get the status of endpoint {shown} ({error})"),
        }
    }
    anyhow::ensure!(!rows.is_empty(), "no member answered");
    println!("{}", table(&HEADERS, &rows));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_etcdctl_prints_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(20_480), "20 kB");
        assert_eq!(human_bytes(2_500_000), "2.5 MB");
    }

    #[test]
    fn the_table_pads_cells_under_centred_headers() {
        let row: Vec<String> = [
            "127.0.0.1:2379",
            "8e9e05c52164694d",
            "3.5.0",
            "20 kB",
            "true",
            "false",
            "2",
            "4",
            "4",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let text = table(&HEADERS, &[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[1].starts_with("|    ENDPOINT    |        ID        | VERSION |"));
        assert!(lines[3].starts_with("| 127.0.0.1:2379 | 8e9e05c52164694d |   3.5.0 |"));
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    }
}
