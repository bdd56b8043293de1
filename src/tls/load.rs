//! PEM files to a rustls `ServerConfig`. Every error names the config key, the file and the
//! cause; none quotes the private key's content.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use secrecy::{ExposeSecret as _, SecretSlice};
use sha2::{Digest as _, Sha256};

use super::TlsConfig;

/// Largest certificate, key or CA file read. A chain or a CA bundle is kilobytes (the whole
/// Mozilla root bundle is about 220 KB); the bound keeps a path that names the wrong thing
/// (a log, `/dev/zero`) from being read without end.
pub const MAX_PEM_FILE_BYTES: u64 = 1024 * 1024;

/// The ALPN protocol gRPC speaks (tonic's client and grpcurl offer it).
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider of every TLS config vidgate builds: aws-lc-rs, the one reqwest already
/// brings, named explicitly so nothing depends on a process-wide default.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which of the files went wrong, by the setting that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// `server.tls.cert_path`.
    Cert,
    /// `server.tls.key_path`.
    Key,
    /// `server.tls.client_ca_path`.
    ClientCa,
}

impl std::fmt::Display for TlsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cert => "server.tls.cert_path (VIDGATE_TLS_CERT)",
            Self::Key => "server.tls.key_path (VIDGATE_TLS_KEY)",
            Self::ClientCa => "server.tls.client_ca_path (VIDGATE_TLS_CLIENT_CA)",
        })
    }
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read.
    #[error("{file} {path}: cannot read it: {source}")]
    Read {
        /// Which setting.
        file: TlsFile,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file was read but is not what the setting needs.
    #[error("{file} {path}: {message}")]
    Invalid {
        /// Which setting.
        file: TlsFile,
        /// The file.
        path: PathBuf,
        /// What is wrong (never the key's content).
        message: String,
    },
    /// The key is not the certificate's.
    #[error(
        "{key_file} {key} is not the private key of the certificate in {cert_file} {cert} (a rotation that replaced only one of them?)"
    )]
    KeyMismatch {
        /// `server.tls.cert_path`.
        cert_file: TlsFile,
        /// The certificate file.
        cert: PathBuf,
        /// `server.tls.key_path`.
        key_file: TlsFile,
        /// The key file.
        key: PathBuf,
    },
}

impl LoadError {
    /// The file the error is about (the key's, for a mismatch).
    pub fn path(&self) -> &Path {
        match self {
            Self::Read { path, .. } | Self::Invalid { path, .. } => path,
            Self::KeyMismatch { key, .. } => key,
        }
    }
}

/// The SHA-256 of each file as read; equal digests mean nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    cert: [u8; 32],
    key: [u8; 32],
    client_ca: Option<[u8; 32]>,
}

/// The files' bytes, read together.
pub struct TlsFiles {
    cert: Vec<u8>,
    key: SecretSlice<u8>,
    client_ca: Option<Vec<u8>>,
    digests: FileDigests,
}

impl TlsFiles {
    /// Reads the certificate, the key and the client CA (when set).
    pub fn read(tls: &TlsConfig) -> Result<Self, LoadError> {
        let cert = read_file(TlsFile::Cert, &tls.cert_path)?;
        let key = SecretSlice::from(read_file(TlsFile::Key, &tls.key_path)?);
        let client_ca = tls
            .client_ca_path
            .as_deref()
            .map(|path| read_file(TlsFile::ClientCa, path))
            .transpose()?;
        let digests = FileDigests {
            cert: Sha256::digest(&cert).into(),
            key: Sha256::digest(key.expose_secret()).into(),
            client_ca: client_ca.as_deref().map(|ca| Sha256::digest(ca).into()),
        };
        Ok(Self {
            cert,
            key,
            client_ca,
            digests,
        })
    }

    /// What was read, to compare with the next read.
    pub fn digests(&self) -> &FileDigests {
        &self.digests
    }
}

/// A usable server TLS configuration and what it was built from.
#[derive(Clone)]
pub struct TlsMaterial {
    /// What each new connection's handshake uses.
    pub config: Arc<ServerConfig>,
    /// SHA-256 of the server certificate (DER), hex: the same figure `openssl x509
    /// -fingerprint -sha256` prints, for logs.
    pub fingerprint: String,
    /// Whether clients must present a certificate from `client_ca_path`.
    pub mutual: bool,
    /// The files' digests this was built from.
    pub digests: FileDigests,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("fingerprint", &self.fingerprint)
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads and checks the files of `tls` (blocking file I/O: call it off the runtime's
    /// worker threads once serving).
    pub fn load(tls: &TlsConfig) -> Result<Self, LoadError> {
        Self::build(tls, TlsFiles::read(tls)?)
    }

    /// Builds the configuration from files already read.
    pub fn build(tls: &TlsConfig, files: TlsFiles) -> Result<Self, LoadError> {
        let invalid = |file, path: &Path, message: String| LoadError::Invalid {
            file,
            path: path.to_owned(),
            message,
        };
        let chain = certificates(&files.cert)
            .map_err(|message| invalid(TlsFile::Cert, &tls.cert_path, message))?;
        let key = private_key(files.key.expose_secret())
            .map_err(|message| invalid(TlsFile::Key, &tls.key_path, message))?;
        let fingerprint = chain
            .first()
            .map(|leaf| hex::encode(Sha256::digest(leaf.as_ref())))
            .unwrap_or_default();

        let provider = crypto_provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(TlsFile::Cert, &tls.cert_path, e.to_string()))?;
        let builder = match (&tls.client_ca_path, &files.client_ca) {
            (Some(path), Some(pem)) => {
                let roots = client_roots(pem)
                    .map_err(|message| invalid(TlsFile::ClientCa, path, message))?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| invalid(TlsFile::ClientCa, path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => LoadError::KeyMismatch {
                cert_file: TlsFile::Cert,
                cert: tls.cert_path.clone(),
                key_file: TlsFile::Key,
                key: tls.key_path.clone(),
            },
            // rustls's messages say which kind of key it could not use, not the key itself.
            other => invalid(TlsFile::Key, &tls.key_path, other.to_string()),
        })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            config: Arc::new(config),
            fingerprint,
            mutual: files.client_ca.is_some(),
            digests: files.digests,
        })
    }
}

/// Every certificate in a PEM file, in order; at least one.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not valid PEM: {}", pem_error(&e)))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        pem::Error::NoItemsFound => "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)".into(),
        other => format!("is not a valid PEM private key: {}", pem_error(&other)),
    })
}

/// A PEM error without the bytes some variants carry (they could be a key's).
fn pem_error(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::NoItemsFound => "nothing found",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    }
}

/// The client CA certificates as trust anchors.
fn client_roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (n, cert) in certificates(pem)?.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate #{} is not a usable CA: {e}", n + 1))?;
    }
    Ok(roots)
}

/// Reads at most [`MAX_PEM_FILE_BYTES`] of `path`; a larger file is an `InvalidData` error.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PEM_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_PEM_FILE_BYTES} bytes: not a PEM file"),
        ));
    }
    Ok(bytes)
}

/// [`read_bounded`] for one of the server's files.
fn read_file(file: TlsFile, path: &Path) -> Result<Vec<u8>, LoadError> {
    read_bounded(path).map_err(|source| LoadError::Read {
        file,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "vidgate-tls-load-{}",
                uuid::Uuid::now_v7().simple()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn write(&self, name: &str, content: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn self_signed() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (certified.cert.pem(), certified.signing_key.serialize_pem())
    }

    #[test]
    fn a_certificate_and_its_key_load_with_h2_alpn_and_a_fingerprint() {
        let dir = Dir::new();
        let (cert, key) = self_signed();
        let tls = TlsConfig::new(
            dir.write("c.pem", cert.as_bytes()),
            dir.write("k.pem", key.as_bytes()),
        );
        let material = TlsMaterial::load(&tls).unwrap();
        assert_eq!(material.config.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(material.fingerprint.len(), 64);
        assert!(!material.mutual);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = Dir::new();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let tls = TlsConfig::new(
            dir.write("c.pem", cert.as_bytes()),
            dir.write("k.pem", other_key.as_bytes()),
        );
        let e = TlsMaterial::load(&tls).unwrap_err().to_string();
        assert!(
            e.contains("server.tls.key_path")
                && e.contains("server.tls.cert_path")
                && e.contains(&tls.key_path.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn files_of_the_wrong_kind_are_named_without_quoting_the_key() {
        let dir = Dir::new();
        let (cert, key) = self_signed();
        let key_body: String = key.lines().nth(1).unwrap().to_owned();
        let cases = [
            // The key where the certificate belongs.
            (
                key.clone(),
                key.clone(),
                "server.tls.cert_path",
                "no PEM certificate",
            ),
            // The certificate where the key belongs.
            (
                cert.clone(),
                cert.clone(),
                "server.tls.key_path",
                "no PEM private key",
            ),
            // A key cut short.
            (
                cert.clone(),
                key[..key.len() / 2].to_owned(),
                "server.tls.key_path",
                "not a valid PEM private key",
            ),
        ];
        for (cert_pem, key_pem, setting, expected) in cases {
            let tls = TlsConfig::new(
                dir.write("c.pem", cert_pem.as_bytes()),
                dir.write("k.pem", key_pem.as_bytes()),
            );
            let e = TlsMaterial::load(&tls).unwrap_err().to_string();
            assert!(e.contains(setting) && e.contains(expected), "{e}");
            assert!(!e.contains(&key_body), "the key's content leaked: {e}");
        }
    }

    #[test]
    fn a_missing_client_ca_is_named_and_one_without_certificates_is_refused() {
        let dir = Dir::new();
        let (cert, key) = self_signed();
        let mut tls = TlsConfig::new(
            dir.write("c.pem", cert.as_bytes()),
            dir.write("k.pem", key.as_bytes()),
        );
        tls.client_ca_path = Some(dir.0.join("absent.pem"));
        let e = TlsMaterial::load(&tls).unwrap_err().to_string();
        assert!(
            e.contains("server.tls.client_ca_path") && e.contains("absent.pem"),
            "{e}"
        );
        tls.client_ca_path = Some(dir.write("ca.pem", b"not pem at all\n"));
        let e = TlsMaterial::load(&tls).unwrap_err().to_string();
        assert!(e.contains("server.tls.client_ca_path"), "{e}");
        tls.client_ca_path = Some(dir.write("ca.pem", cert.as_bytes()));
        assert!(TlsMaterial::load(&tls).unwrap().mutual);
    }
}
