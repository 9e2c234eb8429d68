//! TLS material for the peer and client links, from etcd's flags (`--cert-file`,
//! `--key-file`, `--trusted-ca-file`, `--client-cert-auth` and their `--peer-` twins).
//! rustls does the work. Listeners do their own handshakes (not tonic's), so that a
//! member's certificate can be rotated by replacing its files, as etcd allows.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream as TlsClientStream;
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;
use tonic::codegen::Service;
use tonic::transport::Endpoint;

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

/// `TlsFiles`, read. The certificate and key are read again when their files change, for
/// the handshakes of listeners and of connections to peers (see `ReloadingCertificate`).
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    server_config: Arc<rustls::ServerConfig>,
    client_config: Arc<rustls::ClientConfig>,
}

/// A TLS file that could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable certificate, key or CA.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn invalid(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl TlsMaterial {
    /// Reads the files.
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
        let certificate = Arc::new(ReloadingCertificate::load(&files.cert, &files.key)?);
        let roots = match &files.trusted_ca {
            Some(path) => Some(root_store(path)?),
            None => None,
        };
        let server_config = server_config(
            certificate.clone(),
            roots.clone().filter(|_| files.client_cert_auth),
        )?;
        let client_config = client_config(
            certificate,
            roots.unwrap_or_else(rustls::RootCertStore::empty),
        );
        Ok(TlsMaterial {
            server_config,
            client_config,
        })
    }

    /// A connector for channels to `Self::endpoint`s: TLS checked against the trusted CA,
    /// presenting this member's current certificate (which the other side checks if it
    /// requires one).
    pub fn connector(&self) -> TlsConnector {
        TlsConnector {
            config: self.client_config.clone(),
        }
    }

    /// An endpoint for `url` to use with `Self::connector`, which does the TLS: tonic
    /// refuses a connector of its own on an `https` URL, so the scheme becomes `http`.
    pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
        let url = match url.strip_prefix("https://") {
            Some(rest) => format!("http://{rest}"),
            None => url.to_string(),
        };
        Endpoint::from_shared(url)
    }

    /// The connections `listener` accepts, each through a TLS handshake with this
    /// member's current certificate. Handshakes run on their own tasks (a slow client
    /// holds up no other) for at most `HANDSHAKE_TIMEOUT`; failed ones are dropped.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let (accepted_tx, accepted_rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(self.server_config.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    // The server stopped.
                    _ = accepted_tx.closed() => return,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, accepted_tx) = (acceptor.clone(), accepted_tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = accepted_tx.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(accepted_rx)
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The certificates of a trusted-CA file.
fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(path)?) {
        let cert = cert.map_err(|e| invalid(path, e))?;
        roots.add(cert).map_err(|e| invalid(path, e))?;
    }
    Ok(roots)
}

/// A listener's TLS: the member's certificate (reloaded as its files change), client
/// certificates required and checked against `client_roots` if given; HTTP/2 and
/// HTTP/1.1 (the JSON gateway) offered.
fn server_config(
    certificate: Arc<ReloadingCertificate>,
    client_roots: Option<rustls::RootCertStore>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder();
    let builder = match client_roots {
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| invalid(Path::new("trusted CA"), e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's TLS: servers checked against `roots` (empty without a trusted CA: every
/// server refused, as no system roots are read), the member's certificate presented;
/// HTTP/2 offered.
fn client_config(
    certificate: Arc<ReloadingCertificate>,
    roots: rustls::RootCertStore,
) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session keeps the identity of the handshake it resumes, so a rotated
    // certificate would never be presented. Connections to peers are long-lived: a full
    // handshake on each is cheap.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Opens TLS connections for tonic channels (see `TlsMaterial::connector`).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsClientStream<TcpStream>>>> + Send>>;

impl Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsClientStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            let host = uri.host().ok_or_else(|| bad("no host in the URL"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().ok_or_else(|| bad("no port in the URL"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name =
                ServerName::try_from(host).map_err(|_| bad("not a valid TLS server name"))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// How often, at most, a handshake looks at the certificate files' modification times.
const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A certificate and key from files, read again on a handshake once either file has
/// changed, so that certificates are rotated without a restart, as etcd's are. A change
/// that does not parse (a half-written file, a key that does not match) keeps the
/// previous certificate, and is logged.
#[derive(Debug)]
pub struct ReloadingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// The files' modification times when `key` was read.
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked_at: Instant,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_path, e))?;
    if chain.is_empty() {
        return Err(invalid(cert_path, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|e| invalid(key_path, e))?;
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| invalid(key_path, e))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| invalid(key_path, format!("does not match the certificate: {e}")))?;
    Ok(certified)
}

impl ReloadingCertificate {
    /// Reads the files; they must hold a certificate and its key.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ReloadingCertificate, TlsError> {
        let modified_before = (modified(cert_path), modified(key_path));
        let key = certified_key(cert_path, key_path)?;
        Ok(ReloadingCertificate {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            state: Mutex::new(Loaded {
                key: Arc::new(key),
                modified: modified_before,
                checked_at: Instant::now(),
            }),
        })
    }

    /// The certificate to present now.
    fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap();
        if state.checked_at.elapsed() < RELOAD_CHECK_INTERVAL {
            return state.key.clone();
        }
        state.checked_at = Instant::now();
        let now_modified = (modified(&self.cert_path), modified(&self.key_path));
        if now_modified != state.modified {
            match certified_key(&self.cert_path, &self.key_path) {
                Ok(key) => {
                    tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                    state.key = Arc::new(key);
                    state.modified = now_modified;
                }
                Err(error) => {
                    // Retried at the next check: the files may be mid-rotation.
                    tracing::warn!(%error, "TLS certificate not reloaded; the previous one stays in use");
                }
            }
        }
        state.key.clone()
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}
