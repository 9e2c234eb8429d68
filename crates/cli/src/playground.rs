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
    /// Port (on 127.0.0.1) of the control endpoint the dashboard's buttons call to stop,
    /// restart, pause and resume members.
    #[arg(long, default_value_t = 2378)]
    pub control_port: u16,
}

struct Member {
    name: String,
    client_url: String,
    /// What the member advertises: its fault proxy, which the dashboard can cut.
    peer_url: String,
    /// Where the member itself listens for peers, behind the proxy.
    peer_listen: std::net::SocketAddr,
}

/// A member's process, as the playground runs it.
struct Slot {
    command: std::sync::Arc<dyn Fn() -> Command + Send + Sync>,
    child: Option<Child>,
    paused: bool,
    /// The faults on the peer links into the member: an isolated member hears nothing.
    link: std::sync::Arc<ostrakon_chaos::LinkFaults>,
    _proxy: ostrakon_chaos::Proxy,
}

type Slots = std::sync::Arc<tokio::sync::Mutex<std::collections::BTreeMap<String, Slot>>>;

fn members(count: u16) -> Vec<Member> {
    (0..count)
        .map(|i| Member {
            name: format!("node{}", i + 1),
            client_url: format!("http://127.0.0.1:{}", 2379 + 100 * i),
            peer_url: format!("http://127.0.0.1:{}", 2380 + 100 * i),
            peer_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 2381 + 100 * i)),
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
    let control_url = format!("http://127.0.0.1:{}", args.control_port);
    let slots: Slots = Default::default();
    for member in &members {
        let proxy_addr = member
            .peer_url
            .trim_start_matches("http://")
            .parse()
            .expect("a socket address");
        let proxy = ostrakon_chaos::Proxy::start(proxy_addr, member.peer_listen, None)
            .with_context(|| format!("starting {}'s peer proxy", member.name))?;
        let (exe, root, initial_cluster, control_url) = (
            exe.clone(),
            root.clone(),
            initial_cluster.clone(),
            control_url.clone(),
        );
        let (name, client_url, peer_url, log_level) = (
            member.name.clone(),
            member.client_url.clone(),
            member.peer_url.clone(),
            args.log_level.clone(),
        );
        let peer_listen = format!("http://{}", member.peer_listen);
        let command = std::sync::Arc::new(move || {
            let mut command = Command::new(&exe);
            command
                .arg("server")
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(root.join(&name))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_listen])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-token", "ostrakon-playground"])
                .args(["--log-level", &log_level])
                .args(["--dashboard-control-url", &control_url])
                .kill_on_drop(true);
            // If the playground dies without stopping its members (kill -9), they stop too.
            // SAFETY: prctl only, between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            command
        });
        let child = command()
            .spawn()
            .with_context(|| format!("starting {}", member.name))?;
        slots.lock().await.insert(
            member.name.clone(),
            Slot {
                command,
                child: Some(child),
                paused: false,
                link: proxy.faults.clone(),
                _proxy: proxy,
            },
        );
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.control_port))
        .await
        .with_context(|| format!("binding the control port {}", args.control_port))?;
    let control = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        control_routes(slots.clone()),
    )));
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
            "  {:<6} client {}  peer {} (through a proxy to {})",
            member.name, member.client_url, member.peer_url, member.peer_listen
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
    println!("  curl -s http://127.0.0.1:2379/metrics");
    println!();
    println!("Dashboard (stop, restart, pause, resume, isolate and heal members from it):");
    println!("  {}/dashboard", members[0].client_url);
    println!();
    println!("Ctrl-C stops every member.");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("\nstopping..."),
        _ = terminate.recv() => println!("stopping..."),
    }
    control.abort();
    for (name, slot) in slots.lock().await.iter_mut() {
        if let Some(child) = &mut slot.child {
            stop(name, child, slot.paused).await;
        }
    }
    if let Some(dir) = temporary {
        let _ = std::fs::remove_dir_all(dir);
    }
    println!("stopped");
    Ok(())
}

/// SIGTERM (a clean stop: the WAL is synced, clients are answered); kill after 10 s.
async fn stop(name: &str, child: &mut Child, paused: bool) {
    if let Some(pid) = child.id() {
        // SAFETY: signals to a child this playground started and has not reaped.
        unsafe {
            if paused {
                libc::kill(pid as i32, libc::SIGCONT);
            }
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        eprintln!("{name} did not stop in 10 s; killing it");
        let _ = child.kill().await;
    }
}

/// `POST /members/{name}/{stop|restart|pause|resume|isolate|heal}`: what the dashboard's
/// buttons call.
/// Any page may call it (the dashboard is served from the members' ports), and only on
/// 127.0.0.1.
fn control_routes(slots: Slots) -> axum::Router {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    axum::Router::new()
        .route(
            "/members/:name/:action",
            axum::routing::post(
                |State(slots): State<Slots>, Path((name, action)): Path<(String, String)>| async move {
                    let (status, text) = control(&slots, &name, &action).await;
                    (status, [("access-control-allow-origin", "*")], text)
                },
            ),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "POST /members/{name}/{stop|restart|pause|resume|isolate|heal}\n",
            )
        })
        .with_state(slots)
}

async fn control(slots: &Slots, name: &str, action: &str) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    let mut slots = slots.lock().await;
    let Some(slot) = slots.get_mut(name) else {
        return (StatusCode::NOT_FOUND, format!("no member {name}\n"));
    };
    // A member that exited by itself is stopped.
    if let Some(child) = &mut slot.child {
        if let Ok(Some(_)) = child.try_wait() {
            slot.child = None;
        }
    }
    let pid = slot.child.as_ref().and_then(|c| c.id());
    match (action, pid) {
        ("stop", Some(_)) => {
            let mut child = slot.child.take().expect("running");
            stop(name, &mut child, slot.paused).await;
            slot.paused = false;
        }
        ("restart", pid) => {
            if let (Some(_), Some(mut child)) = (pid, slot.child.take()) {
                stop(name, &mut child, slot.paused).await;
            }
            match (slot.command)().spawn() {
                Ok(child) => slot.child = Some(child),
                Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
            }
            slot.paused = false;
        }
        ("pause", Some(pid)) | ("resume", Some(pid)) => {
            let pause = action == "pause";
            // SAFETY: a signal to a child this playground started and has not reaped.
            unsafe {
                libc::kill(
                    pid as i32,
                    if pause { libc::SIGSTOP } else { libc::SIGCONT },
                )
            };
            slot.paused = pause;
        }
        // Nothing reaches the member over the peer links (its own connections out still
        // carry what it sends); heal lifts it and resets the stalled connections.
        ("isolate", _) => slot.link.set_blackhole(),
        ("heal", _) => slot.link.heal(),
        ("stop" | "pause" | "resume", None) => {
            return (StatusCode::CONFLICT, format!("{name} is not running\n"))
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown action {action:?}: stop, restart, pause, resume, isolate or heal\n"
                ),
            )
        }
    }
    tracing::info!(member = name, action, "playground control");
    (StatusCode::OK, format!("{name}: {action} done\n"))
}
