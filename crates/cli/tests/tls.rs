//! TLS with rustls on both links of a 3-process cluster: client TLS with client
//! certificates required (`--client-cert-auth`) and peer TLS with peer certificates
//! required (`--peer-client-cert-auth`). The certificates are made here (rcgen).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::etcdctl::{etcdctls, Etcdctl};
use common::{TestCluster, TlsSetup};

/// A CA, a certificate for the members (server and client use, for 127.0.0.1 and
/// localhost) and one for a client, as PEM files in `dir`.
struct Certificates {
    ca: PathBuf,
    member_cert: PathBuf,
    member_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// Another certificate for the members, to rotate to.
    member_cert_next: PathBuf,
    member_key_next: PathBuf,
}

fn make_certificates(dir: &Path) -> Certificates {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ostrakon test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>, common_name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (member_cert, member_key) = issue(
        vec!["localhost".to_string(), "127.0.0.1".to_string()],
        "member",
    );
    let (client_cert, client_key) = issue(vec!["client".to_string()], "client");
    let (member_cert_next, member_key_next) = issue(
        vec!["localhost".to_string(), "127.0.0.1".to_string()],
        "member, rotated",
    );
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Certificates {
        ca: write("ca.pem", &ca.pem()),
        member_cert: write("member.pem", &member_cert),
        member_key: write("member-key.pem", &member_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
        member_cert_next: write("member-next.pem", &member_cert_next),
        member_key_next: write("member-next-key.pem", &member_key_next),
    }
}

fn tls_options(certs: &Certificates, with_identity: bool) -> etcd_client::TlsOptions {
    let read = |p: &PathBuf| std::fs::read(p).unwrap();
    let options = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&certs.ca)));
    if with_identity {
        options.identity(etcd_client::Identity::from_pem(
            read(&certs.client_cert),
            read(&certs.client_key),
        ))
    } else {
        options
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_on_client_and_peer_links() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certificates(dir.path());
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let args = [
        "--cert-file".to_string(),
        path(&certs.member_cert),
        "--key-file".to_string(),
        path(&certs.member_key),
        "--trusted-ca-file".to_string(),
        path(&certs.ca),
        "--client-cert-auth".to_string(),
        "--peer-cert-file".to_string(),
        path(&certs.member_cert),
        "--peer-key-file".to_string(),
        path(&certs.member_key),
        "--peer-trusted-ca-file".to_string(),
        path(&certs.ca),
        "--peer-client-cert-auth".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A leader is elected and members publish themselves: the peer links work over TLS.
    let cluster = TestCluster::start_with_tls(
        3,
        &args,
        TlsSetup {
            client_https: true,
            peer_https: true,
            client_tls: Some(tls_options(&certs, true)),
        },
    )
    .await;
    let mut client = cluster.client(0).await;
    client.put("secure", "yes", None).await.unwrap();
    // A write through a follower is forwarded to the leader over a peer TLS link.
    let mut follower = cluster
        .client((cluster.wait_for_leader().await + 1) % 3)
        .await;
    follower.put("forwarded", "yes", None).await.unwrap();
    let got = follower.get("secure", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"yes");

    // Without a client certificate the handshake is refused.
    let refused = etcd_client::Client::connect(
        [cluster.endpoint(0)],
        Some(
            etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(2))
                .with_tls(tls_options(&certs, false)),
        ),
    )
    .await;
    let refused = match refused {
        Ok(mut client) => client.get("secure", None).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    // Plain HTTP/2 on the TLS port is not served either.
    let plain = etcd_client::Client::connect(
        [format!(
            "http://127.0.0.1:{}",
            cluster.members[0].client_port
        )],
        Some(
            etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(2)),
        ),
    )
    .await;
    let plain = match plain {
        Ok(mut client) => client.get("secure", None).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(plain.is_err(), "plain text was served on the TLS port");

    for binary in &etcdctls() {
        let etcdctl = Etcdctl {
            binary,
            endpoints: format!("https://{}", cluster.host_port(1)),
        };
        let tls_args = [
            format!("--cacert={}", path(&certs.ca)),
            format!("--cert={}", path(&certs.client_cert)),
            format!("--key={}", path(&certs.client_key)),
        ];
        let with = |args: &[&'static str]| -> Vec<String> {
            tls_args
                .iter()
                .cloned()
                .chain(args.iter().map(|a| a.to_string()))
                .collect()
        };
        let put = with(&["put", "from-etcdctl", "v"]);
        etcdctl.ok(&put.iter().map(String::as_str).collect::<Vec<_>>());
        let get = with(&["get", "secure", "--print-value-only"]);
        let got = etcdctl.ok(&get.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(got.trim(), "yes");
        let (ok, _, stderr) = etcdctl.run(
            &[
                &format!("--cacert={}", path(&certs.ca)),
                "--dial-timeout=2s",
                "get",
                "secure",
            ],
            None,
        );
        assert!(
            !ok,
            "etcdctl without a client certificate was served: {stderr}"
        );
    }

    // ostrakon's own client commands take etcdctl's TLS flags; an endpoint without a
    // scheme then uses TLS.
    let endpoints = cluster.host_ports();
    let tls_flags = [
        format!("--cacert={}", path(&certs.ca)),
        format!("--cert={}", path(&certs.client_cert)),
        format!("--key={}", path(&certs.client_key)),
    ];
    let run = |command: &[&str]| {
        let args: Vec<&str> = command
            .iter()
            .copied()
            .chain(tls_flags.iter().map(String::as_str))
            .collect();
        let (ok, stdout, stderr) = cluster.ostrakon(&args);
        assert!(ok, "ostrakon {args:?}: {stderr}");
        stdout
    };
    let table = run(&["status", "--endpoints", &endpoints]);
    assert_eq!(table.matches(" true |").count(), 1, "one leader: {table}");
    assert_eq!(
        table.lines().filter(|l| l.contains("127.0.0.1:")).count(),
        3,
        "{table}"
    );
    let backup = dir.path().join("backup.db");
    let first = format!("https://{}", cluster.host_port(0));
    run(&[
        "snapshot",
        "save",
        backup.to_str().unwrap(),
        "--endpoints",
        &first,
    ]);
    assert!(std::fs::metadata(&backup).unwrap().len() > 0);
    let report = run(&[
        "bench",
        "--endpoints",
        &endpoints,
        "--total",
        "200",
        "--clients",
        "4",
        "--json",
    ]);
    assert!(report.contains("\"ok\":200,\"errors\":0"), "{report}");
    // Without the CA an https endpoint is refused with a hint, not a handshake error.
    let (ok, _, stderr) = cluster.ostrakon(&["status", "--endpoints", &first]);
    assert!(!ok && stderr.contains("--cacert"), "{stderr}");
}

/// The certificate a member presents in a fresh TLS handshake on `port`, as DER.
async fn presented_certificate(port: u16, ca: &Path) -> Vec<u8> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(server_name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The first certificate of a PEM file, as DER.
fn der(pem_file: &Path) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    CertificateDer::from_pem_file(pem_file).unwrap().to_vec()
}

/// A member's certificate is rotated by replacing its files, as etcd allows: fresh
/// handshakes present the new one within about a second, with no restart. Files that do
/// not parse (a rotation caught half-way) leave the previous certificate in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certificates(dir.path());
    let (cert_file, key_file) = (
        dir.path().join("serving.pem"),
        dir.path().join("serving-key.pem"),
    );
    std::fs::copy(&certs.member_cert, &cert_file).unwrap();
    std::fs::copy(&certs.member_key, &key_file).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "--cert-file".to_string(),
        path(&cert_file),
        "--key-file".to_string(),
        path(&key_file),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = TestCluster::start_with_tls(
        1,
        &args,
        TlsSetup {
            client_https: true,
            peer_https: false,
            client_tls: Some(tls_options(&certs, false)),
        },
    )
    .await;
    let port = cluster.members[0].client_port;
    cluster
        .client(0)
        .await
        .put("before", "v", None)
        .await
        .unwrap();
    assert_eq!(
        presented_certificate(port, &certs.ca).await,
        der(&certs.member_cert)
    );

    std::fs::copy(&certs.member_key_next, &key_file).unwrap();
    std::fs::copy(&certs.member_cert_next, &cert_file).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while presented_certificate(port, &certs.ca).await != der(&certs.member_cert_next) {
        assert!(
            std::time::Instant::now() < deadline,
            "the replaced certificate was not served within 10 s: {}",
            cluster.log(0)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // New connections work with it.
    cluster
        .client(0)
        .await
        .put("after", "v", None)
        .await
        .unwrap();

    std::fs::write(&cert_file, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        presented_certificate(port, &certs.ca).await,
        der(&certs.member_cert_next),
        "a broken file replaced the certificate in use"
    );
    assert!(
        cluster.log(0).contains("TLS certificate not reloaded"),
        "{}",
        cluster.log(0)
    );
}

/// A port on loopback that nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A member also presents a replaced certificate as a *client*, on its next connection to
/// a peer. The peer here is the test's: it requires client certificates, records each
/// connection's, and drops the connection, so the member keeps reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_presented_to_peers_too() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir().unwrap();
    let certs = make_certificates(dir.path());
    let (cert_file, key_file) = (dir.path().join("peer.pem"), dir.path().join("peer-key.pem"));
    std::fs::copy(&certs.member_cert, &cert_file).unwrap();
    std::fs::copy(&certs.member_key, &key_file).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&certs.ca).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_file(&certs.member_cert).unwrap()],
            PrivateKeyDer::from_pem_file(&certs.member_key).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let fake_peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_port = fake_peer.local_addr().unwrap().port();
    let presented = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let recorder = presented.clone();
    let fake = tokio::spawn(async move {
        loop {
            let (tcp, _) = fake_peer.accept().await.unwrap();
            if let Ok(tls) = acceptor.accept(tcp).await {
                if let Some(chain) = tls.get_ref().1.peer_certificates() {
                    recorder.lock().unwrap().push(chain[0].to_vec());
                }
            }
        }
    });

    let (client_port, peer_port) = (free_port(), free_port());
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let mut member = std::process::Command::new(env!("CARGO_BIN_EXE_ostrakon"))
        .args([
            "server",
            "--name=m1",
            &format!("--data-dir={}", path(&dir.path().join("m1"))),
            &format!("--listen-client-urls=http://127.0.0.1:{client_port}"),
            &format!("--advertise-client-urls=http://127.0.0.1:{client_port}"),
            &format!("--listen-peer-urls=https://127.0.0.1:{peer_port}"),
            &format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer_port}"),
            &format!(
                "--initial-cluster=m1=https://127.0.0.1:{peer_port},m2=https://127.0.0.1:{fake_port}"
            ),
            &format!("--peer-cert-file={}", path(&cert_file)),
            &format!("--peer-key-file={}", path(&key_file)),
            &format!("--peer-trusted-ca-file={}", path(&certs.ca)),
            "--peer-client-cert-auth",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seen = |der: Vec<u8>| {
        let presented = presented.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if presented.lock().unwrap().contains(&der) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    let first = seen(der(&certs.member_cert)).await;
    std::fs::copy(&certs.member_key_next, &key_file).unwrap();
    std::fs::copy(&certs.member_cert_next, &cert_file).unwrap();
    let rotated = first && seen(der(&certs.member_cert_next)).await;
    member.kill().unwrap();
    member.wait().unwrap();
    fake.abort();
    assert!(
        first,
        "the member never connected to its peer with its certificate"
    );
    assert!(
        rotated,
        "the member went on presenting its old certificate to its peer"
    );
}
