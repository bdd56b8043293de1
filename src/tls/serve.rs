//! Serving TLS: an accept loop that runs each handshake in its own task (bounded in time and in
//! number) and hands finished TLS streams to tonic, and a reload task that re-reads the files
//! and swaps the configuration new handshakes use.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::load::{FileDigests, LoadError, TlsFiles, TlsMaterial};
use super::{MAX_PENDING_HANDSHAKES, TlsConfig};

/// Pause after an accept error that is not about one connection (out of file descriptors, say),
/// so the loop does not spin while the condition lasts.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// TLS for the gRPC port, loaded and checked at start.
pub struct TlsServer {
    config: TlsConfig,
    material: TlsMaterial,
}

impl TlsServer {
    /// Reads and checks the files; an error names the setting, the file and the cause.
    pub fn load(config: &TlsConfig) -> Result<Self, LoadError> {
        let material = TlsMaterial::load(config)?;
        Ok(Self {
            config: config.clone(),
            material,
        })
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.material.mutual
    }

    /// Starts accepting on `listener` and, unless reloading is off, re-reading the files; both
    /// end on `stop`. Returns the connections for tonic, a handle on what is served, and the
    /// tasks.
    pub fn start(
        self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> (TlsIncoming, TlsHandle, Vec<JoinHandle<()>>) {
        let fingerprint = self.material.fingerprint.clone();
        let mutual = self.material.mutual;
        let (current_tx, current) = watch::channel(self.material);
        let stats = Arc::new(ReloadStats::default());
        // tonic takes each connection as soon as it is offered; a handshake task that finds
        // the channel full waits (holding its slot), it is not dropped.
        let (tx, rx) = mpsc::channel(64);
        let mut tasks = vec![tokio::spawn(accept_loop(
            listener,
            current.clone(),
            self.config.handshake_timeout(),
            tx,
            stop.clone(),
        ))];
        if let Some(interval) = self.config.reload_interval() {
            tasks.push(tokio::spawn(reload_loop(
                self.config.clone(),
                interval,
                current_tx,
                stats.clone(),
                stop,
            )));
        }
        tracing::info!(
            cert = %self.config.cert_path.display(),
            fingerprint_sha256 = %fingerprint,
            mutual,
            reload_interval_ms = self.config.reload_interval_ms,
            "gRPC port speaks TLS"
        );
        (TlsIncoming { rx }, TlsHandle { current, stats }, tasks)
    }
}

/// Established TLS connections, as tonic's `serve_with_incoming_shutdown` takes them.
pub struct TlsIncoming {
    rx: mpsc::Receiver<TlsStream<TcpStream>>,
}

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|next| next.map(Ok))
    }
}

#[derive(Debug, Default)]
struct ReloadStats {
    reloads: AtomicU64,
    failed_reloads: AtomicU64,
}

/// What the gRPC port is serving, for logs and tests.
#[derive(Clone)]
pub struct TlsHandle {
    current: watch::Receiver<TlsMaterial>,
    stats: Arc<ReloadStats>,
}

impl TlsHandle {
    /// SHA-256 (hex) of the certificate new connections get.
    pub fn fingerprint(&self) -> String {
        self.current.borrow().fingerprint.clone()
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.current.borrow().mutual
    }

    /// Changed files taken into use since the start.
    pub fn reloads(&self) -> u64 {
        self.stats.reloads.load(Ordering::Relaxed)
    }

    /// Changed files refused (each distinct broken state once; the previous configuration
    /// stayed in use).
    pub fn failed_reloads(&self) -> u64 {
        self.stats.failed_reloads.load(Ordering::Relaxed)
    }
}

/// Accepts connections and runs each handshake in its own task, so a client that handshakes
/// slowly (or never) delays nobody else; at most [`MAX_PENDING_HANDSHAKES`] at once, each
/// within `handshake_timeout`.
async fn accept_loop(
    listener: TcpListener,
    current: watch::Receiver<TlsMaterial>,
    handshake_timeout: Duration,
    tx: mpsc::Sender<TlsStream<TcpStream>>,
    stop: CancellationToken,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tx.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept(), if handshakes.len() < MAX_PENDING_HANDSHAKES => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) if is_per_connection(&e) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a gRPC connection failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        }
                    }
                };
                // Nagle's algorithm on accepted sockets plus the client's delayed ACK held
                // every unary answer ~40 ms (measured by the benchmark harness).
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
                }
                // Each handshake takes the configuration current when it starts.
                let acceptor = TlsAcceptor::from(current.borrow().config.clone());
                let tx = tx.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            // Fails only when the server is stopping.
                            let _ = tx.send(stream).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(
                            %peer,
                            timeout_ms = handshake_timeout.as_millis() as u64,
                            "TLS handshake timed out"
                        ),
                    }
                });
            }
        }
    }
    // Dropping the set aborts handshakes still running; the listener closes with this task.
}

/// Accept errors about one connection (gone before it was accepted), not the listener.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

/// A failed reload, remembered so it is reported once.
struct Failure {
    digests: Option<FileDigests>,
    message: String,
    reported: bool,
}

/// What one look at the files found.
enum Look {
    Unchanged,
    Changed(Box<TlsMaterial>),
    Failed(Option<FileDigests>, LoadError),
}

/// Re-reads the files every `interval`; when their content changed, builds a new configuration
/// and makes new handshakes use it. Connections already open keep theirs.
///
/// Contents are compared (SHA-256), not modification times, so a copy that keeps the mtime, a
/// Kubernetes secret's symlink swap and two writes within one mtime tick are all seen. A
/// rotation caught half-done (the new certificate beside the old key) fails to build; that
/// failure is reported (WARN, naming the file) only if the files are still the same one look
/// later, and meanwhile and after it the previous configuration stays in use.
async fn reload_loop(
    tls: TlsConfig,
    interval: Duration,
    current: watch::Sender<TlsMaterial>,
    stats: Arc<ReloadStats>,
    stop: CancellationToken,
) {
    let mut failure: Option<Failure> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        let served = current.borrow().digests.clone();
        let config = tls.clone();
        let look = tokio::task::spawn_blocking(move || {
            let files = match TlsFiles::read(&config) {
                Ok(files) => files,
                Err(e) => return Look::Failed(None, e),
            };
            if *files.digests() == served {
                return Look::Unchanged;
            }
            let digests = files.digests().clone();
            match TlsMaterial::build(&config, files) {
                Ok(material) => Look::Changed(Box::new(material)),
                Err(e) => Look::Failed(Some(digests), e),
            }
        })
        .await;
        match look {
            Ok(Look::Unchanged) => {
                if failure.take().is_some_and(|f| f.reported) {
                    tracing::info!(
                        "TLS files are back to the certificate being served; reloading resumes"
                    );
                }
            }
            Ok(Look::Changed(material)) => {
                failure = None;
                let material = *material;
                let previous = current.borrow().fingerprint.clone();
                tracing::info!(
                    cert = %tls.cert_path.display(),
                    fingerprint_sha256 = %material.fingerprint,
                    previous_fingerprint_sha256 = %previous,
                    mutual = material.mutual,
                    "TLS certificate reloaded: new connections use it"
                );
                current.send_replace(material);
                stats.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Look::Failed(digests, error)) => {
                let message = error.to_string();
                match &mut failure {
                    Some(seen) if seen.digests == digests && seen.message == message => {
                        if !seen.reported {
                            seen.reported = true;
                            stats.failed_reloads.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(
                                file = %error.path().display(),
                                error = %message,
                                fingerprint_sha256 = %current.borrow().fingerprint,
                                "TLS files changed but cannot be used: new connections keep the previous certificate"
                            );
                        }
                    }
                    _ => {
                        tracing::debug!(error = %message, "TLS files changed but cannot be used yet; looking again");
                        failure = Some(Failure {
                            digests,
                            message,
                            reported: false,
                        });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "TLS reload task failed; trying again"),
        }
    }
}
