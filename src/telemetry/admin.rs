//! The admin HTTP port: `/healthz` (the process is alive), `/readyz` (it can do its work:
//! [`super::readiness`]) and `/metrics` (Prometheus text format). Plain HTTP/1.1 on its own
//! port, meant for the orchestrator and the scraper, not for clients: do not expose it beyond
//! them.
//!
//! Bounded against idle and slow clients: every connection must send a whole request head
//! within `header_read_timeout_ms` (also between keep-alive requests), and at most
//! `max_connections` are served at once (more are closed as soon as they are accepted).
//! `axum::serve` has neither knob (and sets no timer, so not even hyper's 30 s default header
//! timeout applied), hence the accept loop here over hyper's HTTP/1 connection builder.
//!
//! With `[admin] token` (or `VIDGATE_ADMIN_TOKEN`) set, `/readyz` and `/metrics` need
//! `authorization: Bearer <token>` (401 otherwise). `/healthz` stays open: a liveness probe
//! learns only that the process answers, and probes are the one caller that cannot always
//! carry a secret.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::{Encoder, TextEncoder};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::StateGauges;
use super::readiness::Readiness;

/// How long a connection may take to send a whole request head, and may sit idle between
/// requests: a scraper or probe sends its request at once, so 5 s tolerates a loaded host and
/// still frees an idle or trickling connection quickly.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Connections served at once: a scraper, a probe or two and an operator's curl need a few;
/// 64 leaves room for bursts while a flood of idle connections cannot take descriptors and
/// memory from the gRPC port.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How long open connections get to finish their request when the server stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Readiness checks.
    pub readiness: Readiness,
    /// The registry the Prometheus exporter fills.
    pub registry: prometheus::Registry,
    /// Refreshed before each scrape.
    pub gauges: StateGauges,
}

/// How the admin port bounds its connections and who may read it.
#[derive(Clone)]
pub struct AdminLimits {
    /// See [`DEFAULT_HEADER_READ_TIMEOUT_MS`].
    pub header_read_timeout: Duration,
    /// See [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// The bearer token `/readyz` and `/metrics` require, if any.
    pub token: Option<AdminToken>,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            token: None,
        }
    }
}

/// The admin token, kept only as its SHA-256 (so it is never printed, and a comparison takes
/// the same time whatever the guess).
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    /// The token as configured.
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `given` is the token, in time independent of where they differ.
    fn matches(&self, given: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let differ = digest
            .iter()
            .zip(self.0.iter())
            .fold(0_u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(differ) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([REDACTED])")
    }
}

/// The routes; `/readyz` and `/metrics` behind `token` when one is set.
pub fn router(state: AdminState, token: Option<AdminToken>) -> Router {
    let guarded = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    let guarded = match token {
        Some(token) => guarded.route_layer(middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        )),
        None => guarded,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .merge(guarded)
        .with_state(Arc::new(state))
}

/// Serves the routes on `listener` until `shutdown`, within `limits`.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    limits: AdminLimits,
    shutdown: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    let service = TowerToHyperService::new(router(state, limits.token.clone()));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, addr = ?addr, "admin port: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        // Over the cap the connection is closed at once: it costs nothing while it waits.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(addr = ?addr, max = limits.max_connections, "admin port: connection refused, at the connection cap");
            continue;
        };
        let service = service.clone();
        let header_read_timeout = limits.header_read_timeout;
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut())
                        .await
                        .unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                // Timeouts and resets of idle or slow clients are their business.
                tracing::debug!(error = %e, "admin port: connection ended");
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// 401 unless the request carries exactly one `authorization: Bearer <token>` with the token.
async fn require_token(
    State(token): State<Arc<AdminToken>>,
    request: Request,
    next: Next,
) -> Response {
    if bearer(request.headers()).is_some_and(|given| token.matches(given)) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"vidgate-admin\"")],
        "this endpoint needs `authorization: Bearer <admin token>` ([admin] token / VIDGATE_ADMIN_TOKEN)\n",
    )
        .into_response()
}

/// The token of the one `authorization: Bearer ...` value (scheme case-insensitive, RFC 7235);
/// none when absent, repeated or of another scheme.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next()?.to_str().ok()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let report = state.readiness.refresh().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    state.gauges.refresh().await;
    let families = state.registry.gather();
    let mut body = Vec::with_capacity(16 * 1024);
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics could not be encoded: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_matches_only_itself_and_never_prints() {
        let token = AdminToken::new("s3cret-admin");
        assert!(token.matches("s3cret-admin"));
        assert!(!token.matches("s3cret-admiN"));
        assert!(!token.matches(""));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn bearer_takes_one_value_of_the_bearer_scheme_in_any_case() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "BEARER abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.append(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), None, "two values are ambiguous");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
