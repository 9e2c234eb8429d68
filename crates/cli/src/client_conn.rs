//! How the client commands (`bench`, `status`, `snapshot save`) reach members: an
//! endpoint is `host:port` or a URL, and TLS takes etcdctl's flags. As with etcdctl, an
//! endpoint without a scheme uses TLS when a TLS flag is given.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// etcdctl's TLS flags.
#[derive(Args, Clone, Debug, Default)]
pub struct ClientTlsArgs {
    /// Verify the members' certificates with this CA bundle (PEM).
    #[arg(long)]
    pub cacert: Option<PathBuf>,
    /// Present this client certificate (PEM), for members run with `--client-cert-auth`.
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

impl ClientTlsArgs {
    fn any(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some()
    }

    /// The URL for an endpoint: its own scheme if it has one, else https when a TLS flag
    /// is given and http otherwise.
    pub fn url(&self, address: &str) -> String {
        if address.contains("://") {
            address.to_string()
        } else if self.any() {
            format!("https://{address}")
        } else {
            format!("http://{address}")
        }
    }

    /// An endpoint for `address`, with TLS if its URL is https. The members' CA must be
    /// given: system roots are not consulted.
    pub fn endpoint(&self, address: &str) -> anyhow::Result<Endpoint> {
        let url = self.url(address);
        let endpoint = Endpoint::from_shared(url.clone())
            .with_context(|| format!("{address} is not a valid endpoint"))?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let ca = self
            .cacert
            .as_deref()
            .with_context(|| format!("{url} uses TLS: give the members' CA with --cacert"))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint
            .tls_config(tls)
            .with_context(|| format!("TLS for {url}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_without_a_scheme_uses_tls_when_a_tls_flag_is_given() {
        let plain = ClientTlsArgs::default();
        assert_eq!(plain.url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(plain.url("https://h:1"), "https://h:1");
        let tls = ClientTlsArgs {
            cacert: Some("ca.pem".into()),
            ..ClientTlsArgs::default()
        };
        assert_eq!(tls.url("127.0.0.1:2379"), "https://127.0.0.1:2379");
        assert_eq!(tls.url("http://h:1"), "http://h:1");
    }

    #[test]
    fn an_https_endpoint_without_a_ca_is_refused_clearly() {
        let error = ClientTlsArgs::default()
            .endpoint("https://127.0.0.1:2379")
            .unwrap_err();
        assert!(error.to_string().contains("--cacert"), "{error}");
        let missing = ClientTlsArgs {
            cacert: Some("/nonexistent/ca.pem".into()),
            ..ClientTlsArgs::default()
        };
        let error = missing.endpoint("127.0.0.1:2379").unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent/ca.pem"),
            "{error:#}"
        );
    }
}
