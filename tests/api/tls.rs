//! TLS on the gRPC port, with certificates made by the test (rcgen): who is served and who is
//! refused, client certificates (mutual TLS), rotation without a restart, a broken rotation,
//! the handshake's bounds, startup errors and the CLI's TLS flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::io::AsyncReadExt as _;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use vidgate::app::Application;
use vidgate::cli::{ClientCommand, ClientOpts, run_with_output};
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::tls::TlsConfig;
use vidgate::upstream::sim::{SimHandle, Simulator};

use crate::support::{ACME, req, sim_config, temp_dir, test_config};

/// How long anything the test waits for may take (generous: the machine is shared).
const DEADLINE: Duration = Duration::from_secs(15);
/// How often the test app re-reads its TLS files.
const RELOAD_INTERVAL_MS: u64 = 100;

/// A certificate authority made for the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for 127.0.0.1 and localhost.
    fn server(&self) -> Leaf {
        self.leaf(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Leaf {
        self.leaf(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf signed");
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// Where the server's files live.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new() -> Self {
        let dir = temp_dir("tls");
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }

    /// Writes the server's certificate and key (two plain writes, as a rotation tool that does
    /// not swap atomically would).
    fn server(&self, leaf: &Leaf) -> TlsConfig {
        let mut tls = TlsConfig::new(
            self.write("server.pem", &leaf.cert),
            self.write("server.key", &leaf.key),
        );
        tls.reload_interval_ms = RELOAD_INTERVAL_MS;
        tls
    }
}

/// The real startup with `[server.tls]`, and the upstream simulator it talks to.
async fn start(tls: TlsConfig) -> (Application, SimHandle) {
    let sim = Simulator::start(sim_config(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator starts");
    let mut config = test_config(&temp_dir("tls-app"), &sim);
    config.server.tls = Some(tls);
    let app = Application::build(config).await.expect("vidgate starts");
    (app, sim)
}

/// What a client got.
#[derive(Debug)]
#[allow(
    dead_code,
    reason = "the messages are read through Debug, in failure messages"
)]
enum Outcome {
    Served,
    /// The server answered the call with a status of its own: the connection was up.
    Answered(String),
    /// The connection failed: at the handshake, or underneath the call.
    Refused(String),
    TimedOut,
}

/// A TLS client trusting `ca` (PEM), with a client certificate when given.
fn tls_client(ca: &str, identity: Option<&Leaf>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    tls
}

async fn connect(app: &Application, tls: Option<ClientTlsConfig>) -> Result<Channel, String> {
    let port = app.grpc_addr().port();
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| format!("{e:?}"))?,
        None => Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map_err(|e| format!("{e:?}"))?,
    };
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// `ListVideos` on a channel: an authenticated RPC of the API itself.
async fn list(channel: Channel) -> Result<(), tonic::Status> {
    VideoServiceClient::new(channel)
        .list_videos(req(ACME, pb::ListVideosRequest::default()))
        .await
        .map(|_| ())
}

/// A new connection and one RPC on it.
async fn call(app: &Application, tls: Option<ClientTlsConfig>) -> Outcome {
    let attempt = async {
        let channel = match connect(app, tls).await {
            Ok(channel) => channel,
            Err(e) => return Outcome::Refused(e),
        };
        match list(channel).await {
            Ok(()) => Outcome::Served,
            // A status made on the client from a broken connection carries its cause.
            Err(status) if std::error::Error::source(&status).is_some() => {
                Outcome::Refused(format!("{status:?}"))
            }
            Err(status) => Outcome::Answered(format!("{status:?}")),
        }
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .unwrap_or(Outcome::TimedOut)
}

/// Asserts the connection failed (not a status from the server, not a hang), naming `cause`
/// when given. Only the client's own verdicts have a fixed cause: when the server refuses, the
/// client sees its TLS alert or only the closed connection, depending on timing.
fn assert_refused(outcome: Outcome, cause: Option<&str>) {
    match outcome {
        Outcome::Refused(e) if cause.is_none_or(|cause| e.contains(cause)) => {}
        other => panic!("expected a refused connection naming {cause:?}, got {other:?}"),
    }
}

/// New connections until one is served, within [`DEADLINE`].
async fn served_within_deadline(app: &Application, tls: impl Fn() -> ClientTlsConfig) -> Outcome {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let outcome = call(app, Some(tls())).await;
        if matches!(outcome, Outcome::Served) || Instant::now() >= deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(RELOAD_INTERVAL_MS / 2)).await;
    }
}

#[tokio::test]
async fn tls_port_serves_clients_trusting_its_ca_and_refuses_plaintext_and_other_cas() {
    let ca = Ca::new("vidgate test CA");
    let files = Files::new();
    let (app, _sim) = start(files.server(&ca.server())).await;

    assert!(
        matches!(
            call(&app, Some(tls_client(&ca.pem(), None))).await,
            Outcome::Served
        ),
        "a client trusting the CA is served"
    );
    // The server ends a connection whose first bytes are not a TLS hello.
    assert_refused(call(&app, None).await, None);
    assert_refused(
        call(&app, Some(tls_client(&Ca::new("other CA").pem(), None))).await,
        Some("UnknownIssuer"),
    );

    // Health and reflection stay on the same, now TLS, port.
    let channel = connect(&app, Some(tls_client(&ca.pem(), None)))
        .await
        .expect("TLS connect");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "{health:?}");
    let tls = app.grpc_tls().expect("TLS is on");
    assert!(!tls.mutual());
    app.shutdown().await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_it_signed_are_served() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let mut tls = files.server(&server_ca.server());
    tls.client_ca_path = Some(files.write("clients-ca.pem", &client_ca.pem()));
    let (app, _sim) = start(tls).await;
    assert!(app.grpc_tls().expect("TLS is on").mutual());

    assert_refused(
        call(&app, Some(tls_client(&server_ca.pem(), None))).await,
        None,
    );
    let rogue = Ca::new("rogue CA").client("mallory");
    assert_refused(
        call(&app, Some(tls_client(&server_ca.pem(), Some(&rogue)))).await,
        None,
    );
    let alice = client_ca.client("alice");
    let with = call(&app, Some(tls_client(&server_ca.pem(), Some(&alice)))).await;
    assert!(matches!(with, Outcome::Served), "{with:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn rotated_certificate_files_are_used_by_new_connections_without_a_restart() {
    let old_ca = Ca::new("old CA");
    let files = Files::new();
    let tls = files.server(&old_ca.server());
    let (app, _sim) = start(tls.clone()).await;
    let handle = app.grpc_tls().expect("TLS is on").clone();
    let before = handle.fingerprint();
    let open = connect(&app, Some(tls_client(&old_ca.pem(), None)))
        .await
        .expect("connects with the old CA");
    list(open.clone())
        .await
        .expect("served before the rotation");

    // Act: a new certificate from a new CA replaces both files.
    let new_ca = Ca::new("new CA");
    files.server(&new_ca.server());

    let outcome = served_within_deadline(&app, || tls_client(&new_ca.pem(), None)).await;
    assert!(
        matches!(outcome, Outcome::Served),
        "a client trusting only the new CA was not served within {DEADLINE:?}: {outcome:?}"
    );
    assert_ne!(handle.fingerprint(), before);
    assert_eq!(handle.reloads(), 1);
    // New connections no longer get the old certificate.
    assert_refused(
        call(&app, Some(tls_client(&old_ca.pem(), None))).await,
        Some("UnknownIssuer"),
    );
    // A connection made before the rotation goes on.
    list(open).await.expect("an open connection is kept");
    app.shutdown().await;
}

#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_previous_certificate_stays_in_use() {
    let ca = Ca::new("vidgate test CA");
    let files = Files::new();
    let tls = files.server(&ca.server());
    let (app, _sim) = start(tls.clone()).await;
    let handle = app.grpc_tls().expect("TLS is on").clone();
    let before = handle.fingerprint();

    // A key that belongs to another certificate.
    std::fs::write(&tls.key_path, Ca::new("x").server().key).expect("write key");
    let deadline = Instant::now() + DEADLINE;
    while handle.failed_reloads() == 0 {
        assert!(
            Instant::now() < deadline,
            "the broken key was never reported"
        );
        tokio::time::sleep(Duration::from_millis(RELOAD_INTERVAL_MS / 2)).await;
    }

    assert_eq!(handle.fingerprint(), before);
    assert_eq!(handle.reloads(), 0);
    let outcome = call(&app, Some(tls_client(&ca.pem(), None))).await;
    assert!(matches!(outcome, Outcome::Served), "{outcome:?}");
    app.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_delays_no_one_and_is_cut_at_the_timeout() {
    // Long enough that serving another client cannot take as long, even on a busy machine.
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
    let ca = Ca::new("vidgate test CA");
    let files = Files::new();
    let mut tls = files.server(&ca.server());
    tls.handshake_timeout_ms = HANDSHAKE_TIMEOUT.as_millis() as u64;
    let (app, _sim) = start(tls).await;
    let started = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(app.grpc_addr())
        .await
        .expect("TCP connect");
    let mut buf = [0u8; 1];

    // While the stalled client holds its handshake open, another is served.
    let outcome = call(&app, Some(tls_client(&ca.pem(), None))).await;
    assert!(matches!(outcome, Outcome::Served), "{outcome:?}");
    let still_open = tokio::time::timeout(Duration::from_millis(10), stalled.read(&mut buf))
        .await
        .is_err();
    assert!(
        still_open,
        "another client was served only after the stalled handshake ended ({:?}): handshakes are not concurrent",
        started.elapsed()
    );

    // The server closes the stalled connection at the timeout, not before.
    let read = tokio::time::timeout(DEADLINE, stalled.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the stalled connection was not closed: {read:?}"
    );
    assert!(
        started.elapsed() >= HANDSHAKE_TIMEOUT,
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
    app.shutdown().await;
}

#[tokio::test]
async fn unusable_tls_files_stop_startup_naming_the_setting_and_the_file() {
    let ca = Ca::new("vidgate test CA");
    let files = Files::new();
    let sim = Simulator::start(sim_config(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator starts");
    let missing = files.path("missing.pem");
    let mut tls = files.server(&ca.server());
    tls.cert_path = missing.clone();
    let cases: [(TlsConfig, &str, &Path); 2] = [
        (tls, "server.tls.cert_path", &missing),
        (
            {
                let mut tls = files.server(&ca.server());
                tls.key_path = files.write("other.key", &ca.server().key);
                tls
            },
            "server.tls.key_path",
            &files.path("other.key"),
        ),
    ];
    for (tls, key, path) in cases {
        let mut config = test_config(&temp_dir("tls-app"), &sim);
        config.server.tls = Some(tls);
        let error = match Application::build(config).await {
            Ok(app) => {
                app.shutdown().await;
                panic!("started with {key} unusable");
            }
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains(key) && error.contains(&path.display().to_string()),
            "{error}"
        );
    }
}

/// The client commands as the binary parses them.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: ClientOpts,
    #[command(subcommand)]
    cmd: ClientCommand,
}

async fn vidgate(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(["vidgate"].iter().chain(args))?;
    let mut out = Vec::new();
    run_with_output(cli.opts, cli.cmd, &mut out).await?;
    Ok(String::from_utf8(out)?)
}

#[tokio::test]
async fn cli_tls_flags_reach_a_server_that_requires_a_client_certificate() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = Files::new();
    let mut tls = files.server(&server_ca.server());
    tls.client_ca_path = Some(files.write("clients-ca.pem", &client_ca.pem()));
    let (app, _sim) = start(tls).await;
    let addr = format!("http://127.0.0.1:{}", app.grpc_addr().port());
    let ca = files.write("ca.pem", &server_ca.pem());
    let alice = client_ca.client("alice");
    let cert = files.write("alice.pem", &alice.cert);
    let key = files.write("alice.key", &alice.key);
    let s = |p: &Path| p.display().to_string();

    let listed = vidgate(&[
        "--addr",
        &addr,
        "--token",
        ACME,
        "--tls",
        "--ca-cert",
        &s(&ca),
        "--cert",
        &s(&cert),
        "--key",
        &s(&key),
        "list",
    ])
    .await;
    assert!(listed.is_ok(), "{listed:?}");
    // --ca-cert alone implies TLS; without the client certificate the server refuses.
    let refused = vidgate(&[
        "--addr",
        &addr,
        "--token",
        ACME,
        "--ca-cert",
        &s(&ca),
        "list",
    ])
    .await
    .expect_err("served without a client certificate");
    // Refused by the connection (with its cause), not answered by the server.
    let refused = format!("{refused:#}");
    assert!(
        refused.contains("cause:") || refused.contains("cannot connect"),
        "{refused}"
    );
    let missing = files.path("nope.pem");
    let error = vidgate(&["--addr", &addr, "--ca-cert", &s(&missing), "list"])
        .await
        .expect_err("a missing CA file is an error");
    let error = format!("{error:#}");
    assert!(
        error.contains("--ca-cert") && error.contains(&s(&missing)),
        "{error}"
    );
    let key_alone = Cli::try_parse_from(["vidgate", "--addr", &addr, "--key", &s(&key), "list"]);
    assert!(key_alone.is_err(), "--key without --cert is refused");
    app.shutdown().await;
}
