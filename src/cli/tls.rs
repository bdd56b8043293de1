//! TLS towards `vidgate serve`: which roots verify the server, and the client certificate for a
//! server that requires one (mutual TLS). Files are checked here, so a wrong path or a file of
//! the wrong kind is named before any connection is tried.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::tls::load::{certificates, private_key, read_bounded};

/// How the client commands use TLS. On with `--tls`, `--ca-cert`, `--cert` or an `https://`
/// address; off (plaintext) otherwise.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsOpts {
    /// Connect over TLS (also implied by an https:// --addr or by --ca-cert/--cert), verifying
    /// the server against the system's trusted roots, or against --ca-cert when given
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CA certificate(s) that signed the server's certificate; trusted instead
    /// of the system's roots
    #[arg(long, env = "VIDGATE_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate (chain) for a server that requires one (mutual TLS); with --key
    #[arg(
        long = "cert",
        env = "VIDGATE_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --cert
    #[arg(
        long = "key",
        env = "VIDGATE_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry, when it is not the host in --addr (e.g.
    /// connecting by IP address to a certificate issued for a DNS name)
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl TlsOpts {
    /// Whether TLS is on for `addr`.
    pub fn enabled(&self, addr: &str) -> bool {
        self.tls
            || self.ca_cert.is_some()
            || self.client_cert.is_some()
            || addr.starts_with("https://")
    }

    /// The address to dial and, when TLS is on, its configuration (an `http://` address is
    /// dialled as `https://` then, which is what makes tonic use TLS).
    pub fn configure(&self, addr: &str) -> anyhow::Result<(String, Option<ClientTlsConfig>)> {
        if !self.enabled(addr) {
            return Ok((addr.to_owned(), None));
        }
        let addr = match addr.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => addr.to_owned(),
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_cert {
            Some(path) => {
                let pem = read_pem("--ca-cert", path)?;
                certificates(&pem)
                    .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", path.display()))?;
                config.ca_certificate(Certificate::from_pem(pem))
            }
            None => config.with_native_roots(),
        };
        if let (Some(cert_path), Some(key_path)) = (&self.client_cert, &self.client_key) {
            let cert = read_pem("--cert", cert_path)?;
            certificates(&cert)
                .map_err(|e| anyhow::anyhow!("--cert {}: {e}", cert_path.display()))?;
            let key = read_pem("--key", key_path)?;
            private_key(&key).map_err(|e| anyhow::anyhow!("--key {}: {e}", key_path.display()))?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.tls_server_name {
            config = config.domain_name(name.clone());
        }
        Ok((addr, Some(config)))
    }
}

/// Reads a PEM file the CLI was given, naming the flag when it cannot.
fn read_pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    read_bounded(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
}
