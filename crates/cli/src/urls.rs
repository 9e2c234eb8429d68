//! etcd-style URL lists (`http://host:port,...`) to socket addresses.

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};

/// The address of one `http://host:port` or `https://host:port` URL.
pub fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        bail!("{url}: expected http://host:port or https://host:port");
    };
    let host_port = rest.trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .with_context(|| format!("{url}: cannot resolve"))?
        .next()
        .with_context(|| format!("{url}: no address"))
}

/// Every address of a comma-separated URL list.
pub fn socket_addrs(urls: &str) -> anyhow::Result<Vec<SocketAddr>> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(socket_addr)
        .collect()
}

/// Whether any URL of a comma-separated list is `https://`.
pub fn any_https(urls: &str) -> bool {
    urls.split(',').any(|u| u.trim().starts_with("https://"))
}
