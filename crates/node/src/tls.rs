//! TLS material for the peer and client links, loaded once from etcd's flags
//! (`--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth` and their
//! `--peer-` twins). rustls does the work, through tonic.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// One side's TLS flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This member's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs the other side's certificates (PEM), if any.
    pub trusted_ca: Option<PathBuf>,
    /// Require the other side to present a certificate signed by `trusted_ca`.
    pub client_cert_auth: bool,
}

/// `TlsFiles`, read.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Option<Vec<u8>>,
    client_cert_auth: bool,
}

/// A TLS file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct TlsError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError {
        path: path.to_path_buf(),
        source,
    })
}

impl TlsMaterial {
    /// Reads the files.
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
        Ok(TlsMaterial {
            cert_pem: read(&files.cert)?,
            key_pem: read(&files.key)?,
            ca_pem: files.trusted_ca.as_deref().map(read).transpose()?,
            client_cert_auth: files.client_cert_auth,
        })
    }

    /// For a listener: this member's identity, and client certificates required (and
    /// checked against the trusted CA) when `client_cert_auth` is set.
    pub fn server_config(&self) -> ServerTlsConfig {
        let config =
            ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match (&self.ca_pem, self.client_cert_auth) {
            (Some(ca), true) => config.client_ca_root(Certificate::from_pem(ca)),
            _ => config,
        }
    }

    /// For connecting to a peer: the peer's certificate is checked against the trusted CA,
    /// and this member presents its own (which the peer checks if it requires it).
    pub fn client_config(&self) -> ClientTlsConfig {
        let config =
            ClientTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config,
        }
    }
}
