//! Starting and stopping a member: the event loop, the peer listener, the client listener.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::middleware::from_fn;
use axum::routing::{any, get};

use crate::etcd_http;
use crate::grpc_calls::GrpcCalls;
use ostrakon_node::coalesced_io::CoalescedIo;
use ostrakon_node::event_loop::{self, StartError};
use ostrakon_node::transport::PeerService;
use ostrakon_node::NodeConfig;
use ostrakon_proto::etcdserverpb::auth_server::AuthServer;
use ostrakon_proto::etcdserverpb::cluster_server::ClusterServer;
use ostrakon_proto::etcdserverpb::kv_server::KvServer;
use ostrakon_proto::etcdserverpb::lease_server::LeaseServer;
use ostrakon_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use ostrakon_proto::etcdserverpb::watch_server::WatchServer;
use ostrakon_proto::ostrakonpb::oracle_server::OracleServer;
use ostrakon_proto::ostrakonpb::ranges_server::RangesServer;
use ostrakon_proto::peer::peer_server::PeerServer;
use ostrakon_proto::v3electionpb::election_server::ElectionServer;
use ostrakon_proto::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;

use crate::auth::AuthService;
use crate::cluster::ClusterService;
use crate::election::ElectionService;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::lock::LockService;
use crate::maintenance::MaintenanceService;
use crate::validate::Limits;
use crate::watch::WatchService;

/// etcd lets a gRPC message exceed `--max-request-bytes` by this much, so that the size
/// check (and its clear error) happens in the server rather than in the transport.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How long a removed member keeps running before it stops.
const REMOVED_LINGER: Duration = Duration::from_secs(1);
/// Peer messages carry batches and snapshot chunks.
const PEER_MESSAGE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// A member's full configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The runtime's configuration.
    pub node: NodeConfig,
    /// Where clients connect (gRPC and HTTP on the same port).
    pub client_addrs: Vec<SocketAddr>,
    /// Where peers connect.
    pub peer_addr: SocketAddr,
    /// Limits on client requests.
    pub limits: Limits,
    /// How often watchers that asked for it hear how far they are.
    pub watch_progress_notify_interval: Duration,
    /// TLS on the client listeners (`--cert-file` ...), if configured.
    pub client_tls: Option<ostrakon_node::tls::TlsMaterial>,
    /// bcrypt's cost for user passwords (`--bcrypt-cost`).
    pub bcrypt_cost: u32,
    /// The playground's control URL, for the dashboard's member buttons.
    pub dashboard_control_url: Option<String>,
    /// Where to export spans (`--experimental-enable-distributed-tracing`); none: off.
    pub tracing: Option<ostrakon_node::spans::export::ExportConfig>,
}

/// Why a member stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The node could not start from its data directory.
    #[error(transparent)]
    Start(#[from] StartError),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// A listener failed.
    #[error("serving: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Distributed tracing could not start.
    #[error(transparent)]
    Tracing(#[from] ostrakon_node::spans::export::ExportError),
}

/// Runs a member until `shutdown` resolves, then stops cleanly: listeners close, the
/// event loop syncs its WAL and answers everyone still waiting.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let exporter = match &config.tracing {
        Some(tracing) => Some(ostrakon_node::spans::export::install(tracing.clone())?),
        None => None,
    };
    let peer_listener = bind(config.peer_addr).await?;
    let mut client_listeners = Vec::new();
    for addr in &config.client_addrs {
        client_listeners.push(bind(*addr).await?);
    }
    let mut node_config = config.node.clone();
    ostrakon_node::identity::settle(&mut node_config).await?;
    let (node, loop_thread) =
        event_loop::start(node_config.clone(), tokio::runtime::Handle::current())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let peer = PeerServer::new(PeerService::new(node.clone(), &config.node.data_dir))
        .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let peer_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(peer);
    let peer_stop = stopped(stop_rx.clone());
    let peer_server = match &config.node.peer_tls {
        Some(tls) => tokio::spawn(
            peer_router
                .serve_with_incoming_shutdown(coalesced(tls.incoming(peer_listener)), peer_stop),
        ),
        None => tokio::spawn(
            peer_router.serve_with_incoming_shutdown(incoming(peer_listener), peer_stop),
        ),
    };
    let mut servers = vec![peer_server];

    for listener in client_listeners {
        let listener_addr = listener
            .local_addr()
            .map_err(|e| ServerError::Bind(config.client_addrs[0], e))?;
        let kv = KvServer::new(KvService::new(node.clone(), config.limits))
            .max_decoding_message_size(config.limits.request_bytes_max + GRPC_OVERHEAD_BYTES);
        let maintenance = MaintenanceServer::new(MaintenanceService::new(node.clone()));
        let watch = WatchServer::new(WatchService::new(
            node.clone(),
            config.limits.request_bytes_max,
            config.watch_progress_notify_interval,
        ));
        let election_timeout_ms =
            (config.node.tick_interval * config.node.election_ticks).as_millis() as u64;
        let lease = LeaseServer::new(LeaseService::new(node.clone(), election_timeout_ms));
        // What is not gRPC: etcd's HTTP endpoints, the dashboard and the JSON gateway.
        let http = axum::Router::new()
            .route(
                "/health",
                any(etcd_http::health)
                    .layer(from_fn(etcd_http::get_only))
                    .with_state(node.clone()),
            )
            .route(
                "/version",
                any(etcd_http::version).layer(from_fn(etcd_http::get_only)),
            )
            .route(
                "/debug/vars",
                any(etcd_http::debug_vars)
                    .layer(from_fn(etcd_http::get_only))
                    .with_state(node.clone()),
            )
            // etcd serves its metrics whatever the method.
            .route(
                "/metrics",
                any(crate::observe::metrics_text).with_state(node.clone()),
            )
            .route(
                "/readyz",
                get(crate::observe::readyz).with_state(node.clone()),
            )
            .route("/livez", get(crate::observe::livez))
            .merge(crate::dashboard::routes(
                node.clone(),
                config.dashboard_control_url.clone(),
            ))
            .merge(crate::gateway::routes(gateway_channel(
                listener_addr,
                config.client_tls.as_ref(),
            )?))
            .fallback(etcd_http::not_found);
        // Around the routing, not inside each route: a preflight is answered before any
        // route's own method handling, and every HTTP response carries the headers.
        let http = axum::Router::new()
            .fallback_service(http)
            .layer(from_fn(etcd_http::cors));
        // The gRPC services, each observed (`grpc_calls`), routed by tonic by service
        // name; any other path goes to the HTTP routes.
        let router = Routes::new(GrpcCalls::new(kv, http.clone()))
            .add_service(GrpcCalls::new(maintenance, http.clone()))
            .add_service(GrpcCalls::new(lease, http.clone()))
            .add_service(GrpcCalls::new(
                LockServer::new(LockService::new(node.clone())),
                http.clone(),
            ))
            .add_service(GrpcCalls::new(
                ClusterServer::new(ClusterService::new(node.clone())),
                http.clone(),
            ))
            .add_service(GrpcCalls::new(
                AuthServer::new(AuthService::new(node.clone(), config.bcrypt_cost)),
                http.clone(),
            ))
            .add_service(GrpcCalls::new(
                ElectionServer::new(ElectionService::new(node.clone())),
                http.clone(),
            ))
            .add_service(GrpcCalls::new(watch, http.clone()))
            .add_service(GrpcCalls::new(
                OracleServer::new(crate::oracle::OracleService::new(node.clone())),
                http.clone(),
            ))
            .add_service(GrpcCalls::new(
                RangesServer::new(crate::ranges::RangesService::new(node.clone())),
                http.clone(),
            ))
            .into_axum_router()
            .fallback_service(http);
        let client_router = tonic::transport::Server::builder()
            .accept_http1(true)
            .tcp_nodelay(true)
            .add_routes(Routes::from(router));
        let client_stop = stopped(stop_rx.clone());
        servers.push(match &config.client_tls {
            Some(tls) => tokio::spawn(
                client_router
                    .serve_with_incoming_shutdown(coalesced(tls.incoming(listener)), client_stop),
            ),
            None => tokio::spawn(
                client_router.serve_with_incoming_shutdown(incoming(listener), client_stop),
            ),
        });
    }
    tracing::info!(member = %format!("{:x}", node.id().0), "serving");

    tokio::select! {
        _ = shutdown => {}
        _ = node.removed() => {
            // Linger a moment so the others hear, from this member's last messages, that
            // the change that removed it is committed.
            tokio::time::sleep(REMOVED_LINGER).await;
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for server in servers {
        // Long-lived streams (peer links) would hold a graceful stop forever; bound it.
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
    node.shutdown();
    let _ = tokio::task::spawn_blocking(move || loop_thread.join()).await;
    if let Some(exporter) = exporter {
        exporter.flush(Duration::from_secs(2)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The JSON gateway's channel to this member's own gRPC listener (as etcd's gateway
/// dials its own port): loopback for a wildcard address, TLS if the listener has it.
fn gateway_channel(
    addr: SocketAddr,
    tls: Option<&ostrakon_node::tls::TlsMaterial>,
) -> Result<tonic::transport::Channel, ServerError> {
    let ip = if addr.ip().is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        addr.ip()
    };
    // The TLS, if any, is the connector's (`TlsMaterial::endpoint`): plain http here.
    let endpoint = tonic::transport::Endpoint::from_shared(format!(
        "http://{}",
        SocketAddr::new(ip, addr.port())
    ))?
    .tcp_nodelay(true);
    Ok(match tls {
        Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
        None => endpoint.connect_lazy(),
    })
}

/// Accepted connections with Nagle's algorithm off. The server builder's `tcp_nodelay`
/// applies only to listeners it binds itself; without this, small responses wait for the
/// peer's delayed ACK (about 40 ms).
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<CoalescedIo<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|stream| {
        let stream = stream?;
        stream.set_nodelay(true)?;
        Ok(CoalescedIo::new(stream))
    })
}

/// The connections of `accepted`, their responses leaving together (`CoalescedIo`).
fn coalesced<T>(
    accepted: impl tokio_stream::Stream<Item = std::io::Result<T>>,
) -> impl tokio_stream::Stream<Item = std::io::Result<CoalescedIo<T>>> {
    use tokio_stream::StreamExt as _;
    accepted.map(|connection| connection.map(CoalescedIo::new))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| ServerError::Bind(addr, e))
}
