//! `vidgate healthcheck`: one GET against the admin port's readiness endpoint, for container
//! health checks. Slim runtime images have no curl, so the binary checks itself.

use std::time::Duration;

/// What `vidgate healthcheck` asks unless told otherwise: the admin port's readiness endpoint
/// (store, broker when configured, dispatcher), on the container's admin port 9464.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9464/readyz";
/// The environment variable that overrides [`DEFAULT_URL`] (`--url` overrides both).
pub const URL_ENV: &str = "VIDGATE_HEALTHCHECK_URL";
/// Milliseconds for the whole request. Short, so a hung process counts as unhealthy well
/// within Docker's own check timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 3_000;
/// How much of an unhealthy answer's body the error quotes: enough for `/readyz` to say which
/// part is not ready, bounded so a large body cannot flood the health log.
pub const BODY_PREVIEW_BYTES: usize = 200;

/// Why the check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthcheckError {
    /// The HTTP client could not be built.
    #[error("could not build an HTTP client: {0}")]
    Client(String),
    /// No answer: refused, unresolvable, timed out, not HTTP.
    #[error("no answer from {url}: {message}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// Why, with the causes joined.
        message: String,
    },
    /// An answer that is not 2xx.
    #[error("{url} answered {status}: {body}")]
    Unhealthy {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The first [`BODY_PREVIEW_BYTES`] of the body, lossily decoded.
        body: String,
    },
}

/// GETs `url` within `timeout`; `Ok` on any 2xx answer.
pub async fn check(url: &str, timeout: Duration) -> Result<(), HealthcheckError> {
    check_with_token(url, timeout, None).await
}

/// [`check`] with `authorization: Bearer <token>` when the admin port requires its token
/// (`[admin] token`).
pub async fn check_with_token(
    url: &str,
    timeout: Duration,
    token: Option<&str>,
) -> Result<(), HealthcheckError> {
    // The target is the container itself: a proxy from the environment must not be asked.
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| HealthcheckError::Client(error_chain(&e)))?;
    let unreachable = |e: reqwest::Error| HealthcheckError::Unreachable {
        url: url.to_owned(),
        message: error_chain(&e),
    };
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.map_err(unreachable)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let mut body = Vec::with_capacity(BODY_PREVIEW_BYTES);
    // A body that breaks off still leaves a status worth reporting, so read errors only end
    // the preview.
    while body.len() < BODY_PREVIEW_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(BODY_PREVIEW_BYTES);
    Err(HealthcheckError::Unhealthy {
        url: url.to_owned(),
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body).trim().to_owned(),
    })
}

/// An error and its causes on one line: reqwest's own message alone does not say "connection
/// refused" or "timed out".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
