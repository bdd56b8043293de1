//! Connecting to `vidgate serve` with the bearer token, deciding which failures are worth a
//! reconnect, and telling the user what a failed call means (with its `google.rpc` details).

use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use super::ClientOpts;
use crate::pb::video_service_client::VideoServiceClient;

/// How long to wait for the TCP + HTTP/2 handshake before saying the server is not there.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message the client accepts. The server keeps chunks under 4 MB, but a `Video` or a
/// page of them may carry large labels; 16 MiB leaves room without being unbounded.
pub const MAX_DECODING_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Reconnects in a row without progress before `watch` or `download` gives up.
pub const MAX_RECONNECTS: u32 = 5;
/// First backoff delay; doubled on each further attempt without progress.
pub const RETRY_BASE_DELAY: Duration = Duration::from_millis(250);
/// Cap on any single wait, including a server's `RetryInfo`, so a bad hint cannot hang the CLI.
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(8);

/// The generated client with the bearer token added to every call.
pub type Client = VideoServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Adds `authorization: Bearer <token>` to every request, when a token was given.
#[derive(Debug, Clone)]
pub struct BearerAuth(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects eagerly, so a wrong address fails here with a clear message rather than on the
/// first call. The channel reconnects by itself afterwards, which `watch` and `download` rely on.
pub async fn connect(opts: &ClientOpts) -> anyhow::Result<Client> {
    let (channel, auth) = channel(opts).await?;
    Ok(VideoServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES))
}

/// The connected channel (TLS as asked) and the interceptor adding the token: what every
/// service's client is built on.
pub async fn channel(opts: &ClientOpts) -> anyhow::Result<(Channel, BearerAuth)> {
    let auth = match opts.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => {
            let value = MetadataValue::try_from(format!("Bearer {token}")).context(
                "the token has characters that cannot go in a gRPC header; check --token / VIDGATE_TOKEN",
            )?;
            BearerAuth(Some(value))
        }
        // No token: the server answers UNAUTHENTICATED, and the error hint says how to pass one.
        None => BearerAuth(None),
    };
    let (addr, tls) = opts.tls.configure(&opts.addr)?;
    let mut endpoint = Endpoint::from_shared(addr.clone())
        .with_context(|| {
            format!(
                "--addr {:?} is not a valid URL; expected e.g. http://127.0.0.1:50051",
                opts.addr
            )
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    let hint = match tls {
        Some(tls) => {
            endpoint = endpoint
                .tls_config(tls)
                .context("cannot set up TLS; check --ca-cert, --cert and --key")?;
            "is `vidgate serve` running there with TLS, does --ca-cert (or the system's roots) \
             trust its certificate, does the certificate name this host (else --tls-server-name), \
             and does the server require a client certificate (--cert/--key)?"
        }
        None => {
            "is `vidgate serve` running there (over TLS? then add --tls)? Set --addr or VIDGATE_ADDR"
        }
    };
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}: {hint}"))?;
    Ok((channel, auth))
}

/// A failed RPC, rendered with its `google.rpc` details: the status message, every
/// `BadRequest` field violation (field, rule, description), the `ErrorInfo` reason, and a hint.
#[derive(Debug)]
pub struct RpcError {
    call: &'static str,
    status: Status,
}

impl RpcError {
    /// Wraps `status` as the failure of `call` (e.g. `"CreateVideo"`).
    pub fn new(call: &'static str, status: Status) -> Self {
        Self { call, status }
    }

    /// The status as received.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The `ErrorInfo.reason`, when the server sent one.
    pub fn reason(&self) -> Option<String> {
        self.status.get_details_error_info().map(|info| info.reason)
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = &self.status;
        write!(
            f,
            "{} failed: {:?}: {}",
            self.call,
            status.code(),
            status.message()
        )?;
        let details = status.get_error_details();
        if let Some(bad) = details.bad_request() {
            for v in &bad.field_violations {
                write!(f, "\n  - {}: {}", v.field, v.description)?;
                if !v.reason.is_empty() {
                    write!(f, " (rule {})", v.reason)?;
                }
            }
        }
        let reason = details.error_info().map(|info| info.reason.as_str());
        if let Some(reason) = reason {
            write!(f, "\n  reason: {reason}")?;
        }
        // A status made on this side from a broken connection (not sent by the server) says
        // only "transport error"; its innermost cause says why (e.g. a TLS alert).
        if let Some(cause) = innermost_cause(status) {
            write!(f, "\n  cause: {cause}")?;
        }
        if let Some(hint) = hint(status.code(), reason) {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// The last error in `status`'s source chain, when it has one.
fn innermost_cause(status: &Status) -> Option<String> {
    let mut cause = std::error::Error::source(status)?;
    while let Some(next) = cause.source() {
        cause = next;
    }
    Some(cause.to_string())
}

/// What the user can do about a failure, when there is something specific to say.
fn hint(code: Code, reason: Option<&str>) -> Option<&'static str> {
    Some(match (code, reason) {
        (Code::Unauthenticated, _) => "pass a valid token with --token or VIDGATE_TOKEN",
        (_, Some("VIDEO_NOT_FOUND")) => "check the id with `vidgate list`",
        (_, Some("UNKNOWN_MODEL")) => "use a model name the server's catalog knows",
        (_, Some("REQUEST_ID_REUSED")) => {
            "that --request-id belongs to a different request; omit it to get a fresh one"
        }
        (_, Some("VIDEO_NOT_COMPLETED")) => "wait for it to complete: `vidgate watch ID`",
        (_, Some("LAST_FRAME_NOT_AVAILABLE")) => {
            "a last frame exists only when the job asked for one (--return-last-frame)"
        }
        (_, Some("OFFSET_OUT_OF_RANGE")) => {
            "the partial file is longer than the content: delete FILE.part and download again"
        }
        (_, Some("CURSOR_EXPIRED")) => "that --after-sequence is too old; watch without it",
        (Code::Unavailable, _) => "the server is unreachable or busy; try again shortly",
        _ => return None,
    })
}

/// Maps a status to an `anyhow::Error` naming the call; for `.map_err(rpc_err("GetVideo"))`.
pub fn rpc_err(call: &'static str) -> impl FnOnce(Status) -> anyhow::Error {
    move |status| RpcError::new(call, status).into()
}

/// Whether a failure is worth reconnecting for: the server said try again (`UNAVAILABLE`, e.g.
/// SERVER_SHUTTING_DOWN; `ABORTED` = SUBSCRIBER_LAGGED), or the connection broke underneath the call. A status the
/// server itself sent has no source; one made from an h2/hyper error does.
pub fn is_transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Aborted => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// How long to wait before reconnect `attempt` (1-based): the server's `RetryInfo` when it
/// gave one, else exponential backoff; both capped at [`RETRY_MAX_DELAY`].
pub fn retry_delay(status: &Status, attempt: u32) -> Duration {
    let hinted = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay);
    let backoff = RETRY_BASE_DELAY.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    hinted.unwrap_or(backoff).min(RETRY_MAX_DELAY)
}

/// The `last_sequence` an ended event stream should resume after (`ErrorInfo.metadata`): sent
/// with `SUBSCRIBER_LAGGED` (the client fell behind) and `SERVER_SHUTTING_DOWN` (the server
/// stopped; `UNAVAILABLE`, so the reconnect finds another instance or the restarted one).
pub fn resume_sequence(status: &Status) -> Option<i64> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get("last_sequence")?.parse().ok())
}

/// Why one streaming attempt stopped: the call failed (maybe worth a reconnect), or something
/// local failed (a file, a checksum), which no reconnect fixes.
#[derive(Debug)]
pub enum StreamError {
    /// The RPC failed with this status.
    Rpc(Status),
    /// A local failure.
    Local(anyhow::Error),
}

impl From<anyhow::Error> for StreamError {
    fn from(e: anyhow::Error) -> Self {
        Self::Local(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::{ApiError, SHUTDOWN_RETRY_AFTER};

    #[test]
    fn a_stream_ended_by_shutdown_is_resumed_from_its_cursor_after_the_servers_hint() {
        let status: Status = ApiError::ShuttingDown {
            last_sequence: Some(41),
            next_offset: None,
        }
        .into();
        assert!(is_transient(&status));
        assert_eq!(resume_sequence(&status), Some(41));
        assert_eq!(retry_delay(&status, 1), SHUTDOWN_RETRY_AFTER);
    }
}
