//! `ostrakon playground`: a local cluster of separate processes to try things on.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use tokio::process::{Child, Command};

/// Options of the playground.
#[derive(Args, Debug)]
pub struct PlaygroundArgs {
    /// Members to start (client ports 2379, 2479, ...; peer ports 2380, 2480, ...).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    pub nodes: u16,
    /// Keep the data here instead of in a temporary directory removed on exit.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Log level of the members.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
}

fn members(count: u16) -> Vec<Member> {
    (0..count)
        .map(|i| Member {
            name: format!("node{}", i + 1),
            client_url: format!("http://127.0.0.1:{}", 2379 + 100 * i),
            peer_url: format!("http://127.0.0.1:{}", 2380 + 100 * i),
        })
        .collect()
}

/// Starts the members, prints how to reach them, and stops them all on Ctrl-C.
pub fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(playground(args))
}

async fn playground(args: PlaygroundArgs) -> anyhow::Result<()> {
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => {
            Some(std::env::temp_dir().join(format!("ostrakon-playground-{}", std::process::id())))
        }
    };
    let root = args
        .data_dir
        .clone()
        .or(temporary.clone())
        .expect("one is set");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let members = members(args.nodes);
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe().context("finding the ostrakon binary")?;
    let mut children: Vec<(String, Child)> = Vec::new();
    for member in &members {
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(root.join(&member.name))
            .args(["--listen-client-urls", &member.client_url])
            .args(["--advertise-client-urls", &member.client_url])
            .args(["--listen-peer-urls", &member.peer_url])
            .args(["--initial-advertise-peer-urls", &member.peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-token", "ostrakon-playground"])
            .args(["--log-level", &args.log_level])
            .kill_on_drop(true);
        // If the playground dies without stopping its members (kill -9), they stop too.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", member.name))?;
        children.push((member.name.clone(), child));
    }
    let endpoints = members
        .iter()
        .map(|m| m.client_url.trim_start_matches("http://"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "ostrakon playground: {} members, data in {}",
        members.len(),
        root.display()
    );
    for member in &members {
        println!(
            "  {:<6} client {}  peer {}",
            member.name, member.client_url, member.peer_url
        );
    }
    println!();
    println!("Try (etcdctl from the etcd-client package, ETCDCTL_API=3):");
    println!("  export ETCDCTL_API=3 ENDPOINTS={endpoints}");
    println!("  etcdctl --endpoints=$ENDPOINTS put greeting hello");
    println!("  etcdctl --endpoints=$ENDPOINTS get greeting -w json");
    println!(
        "  etcdctl --endpoints=$ENDPOINTS txn -i   # then: value(\"greeting\") = \"hello\" ... "
    );
    println!("  etcdctl --endpoints=$ENDPOINTS del greeting");
    println!("  curl -s http://127.0.0.1:2379/health");
    println!();
    println!("Ctrl-C stops every member.");

    let exited = wait_any(&mut children);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("\nstopping..."),
        _ = terminate.recv() => println!("stopping..."),
        (name, status) = exited => eprintln!("{name} exited ({status}); stopping the others"),
    }
    for (name, child) in &mut children {
        if let Some(pid) = child.id() {
            // SIGTERM: a clean stop (the WAL is synced, clients are answered).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        match tokio::time::timeout(std::time::Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{name} did not stop in 10 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    println!("stopped");
    Ok(())
}

async fn wait_any(children: &mut [(String, Child)]) -> (String, String) {
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return (name.clone(), status.to_string());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
