//! Upstream failures, classified once (ARCHITECTURE.md, "No double spend").

use std::time::Duration;

/// Which upstream call failed; part of every error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /videos`.
    Create,
    /// `GET /videos/{id}`.
    Get,
    /// `GET /videos/{id}/content`.
    Content,
    /// The last frame image (S10), wherever upstream put it.
    LastFrame,
}

impl Endpoint {
    /// The HTTP method, the route template and their span name (`"GET /videos/{id}"`); the last
    /// frame's URL is wherever upstream put it.
    pub fn http_route(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::Create => ("POST", "/videos", "POST /videos"),
            Self::Get => ("GET", "/videos/{id}", "GET /videos/{id}"),
            Self::Content => ("GET", "/videos/{id}/content", "GET /videos/{id}/content"),
            Self::LastFrame => ("GET", "last_frame_url", "GET last_frame_url"),
        }
    }

    /// A stable lower-case name (also used as a metric label later).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Get => "get",
            Self::Content => "content",
            Self::LastFrame => "last_frame",
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Create => "POST /videos",
            Self::Get => "GET /videos/{id}",
            Self::Content => "GET /videos/{id}/content",
            Self::LastFrame => "GET last_frame_url",
        })
    }
}

/// Everything that can go wrong talking to the upstream. Messages never contain the API key
/// (the client scrubs upstream bodies before they get here).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum UpstreamError {
    /// The TCP/TLS connection was never established: the request did not leave this process.
    #[error("could not connect to the upstream for {endpoint}: {detail}")]
    Connect { endpoint: Endpoint, detail: String },
    /// HTTP 429. `retry_after` is the server's `Retry-After`, when it sent one.
    #[error("the upstream rate-limited {endpoint} (HTTP 429{}): {message}", retry_after_text(.retry_after))]
    RateLimited {
        endpoint: Endpoint,
        retry_after: Option<Duration>,
        message: String,
    },
    /// HTTP 5xx (and 408): the server had a problem; it may or may not have acted on the request.
    #[error("the upstream failed on {endpoint} (HTTP {status}): {message}")]
    Server {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },
    /// No complete answer within the configured time.
    #[error("the upstream did not answer {endpoint} in time: {detail}")]
    Timeout { endpoint: Endpoint, detail: String },
    /// The connection broke after the request was sent (reset, truncated body, protocol error).
    #[error("the connection to the upstream broke during {endpoint}: {detail}")]
    Transport { endpoint: Endpoint, detail: String },
    /// HTTP 401/403: the key is missing, wrong or not allowed.
    #[error(
        "the upstream refused the API key on {endpoint} (HTTP {status}): {message}; check TURING_API_KEY"
    )]
    Auth {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },
    /// HTTP 404: no such task, or no content for it.
    #[error("the upstream has no such resource for {endpoint} (HTTP 404): {message}")]
    NotFound { endpoint: Endpoint, message: String },
    /// Any other 4xx: the upstream looked at the request and will not do it.
    #[error("the upstream rejected {endpoint} (HTTP {status}): {message}")]
    Rejected {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },
    /// HTTP 416 on a ranged content request.
    #[error("the upstream says the requested range is past the end of the content (HTTP 416)")]
    RangeNotSatisfiable { endpoint: Endpoint },
    /// A success status with a body that is not what the contract says (no `id`, not JSON, too big).
    #[error("the upstream answered {endpoint} with a body vidgate cannot read: {detail}")]
    Protocol { endpoint: Endpoint, detail: String },
    /// vidgate could not build the request (nothing was sent).
    #[error("vidgate could not build the {endpoint} request (nothing was sent): {detail}")]
    InvalidRequest { endpoint: Endpoint, detail: String },
    /// vidgate refused to follow where upstream pointed it (an internal address, too many
    /// redirects): see [`crate::netguard`]. Trying again leads to the same place.
    #[error("vidgate refused to follow {endpoint} there: {detail}")]
    Blocked { endpoint: Endpoint, detail: String },
    /// The content is larger than the configured maximum (`Content-Length`, or counted while
    /// streaming): nothing beyond the limit is written.
    #[error(
        "the upstream's {endpoint} answer is larger than the limit of {limit} bytes{}; raise upstream.max_content_bytes if such files are real",
        announced_text(.announced)
    )]
    TooLarge {
        endpoint: Endpoint,
        limit: u64,
        announced: Option<u64>,
    },
}

fn announced_text(announced: &Option<u64>) -> String {
    match announced {
        Some(n) => format!(" (it announced {n} bytes)"),
        None => String::new(),
    }
}

fn retry_after_text(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", Retry-After {} s", d.as_secs()),
        None => String::new(),
    }
}

/// What a failed `create` means for the money (ARCHITECTURE.md, "No double spend").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateFailure {
    /// Upstream certainly did not take the request (never connected, or 429): safe to send again.
    NotTakenRetryable,
    /// Upstream certainly did not take it and sending it again will not help (4xx, bad key,
    /// a request vidgate could not build).
    NotTakenPermanent,
    /// The request left and no usable answer came back (timeout, reset, 5xx, unreadable 200):
    /// a generation may exist upstream, and sending again may pay twice.
    OutcomeUnknown,
}

impl UpstreamError {
    /// The endpoint the error came from.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Connect { endpoint, .. }
            | Self::RateLimited { endpoint, .. }
            | Self::Server { endpoint, .. }
            | Self::Timeout { endpoint, .. }
            | Self::Transport { endpoint, .. }
            | Self::Auth { endpoint, .. }
            | Self::NotFound { endpoint, .. }
            | Self::Rejected { endpoint, .. }
            | Self::RangeNotSatisfiable { endpoint }
            | Self::Protocol { endpoint, .. }
            | Self::InvalidRequest { endpoint, .. }
            | Self::Blocked { endpoint, .. }
            | Self::TooLarge { endpoint, .. } => *endpoint,
        }
    }

    /// Whether the same read (status poll, content download) may succeed if tried again later.
    /// Never use this for `create`: see [`UpstreamError::create_failure`].
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Transport { .. }
                | Self::Protocol { .. }
        )
    }

    /// The strict classification for `create`: only "never connected" and 429 mean upstream
    /// certainly did not take it.
    pub fn create_failure(&self) -> CreateFailure {
        match self {
            Self::Connect { .. } | Self::RateLimited { .. } => CreateFailure::NotTakenRetryable,
            Self::Auth { .. }
            | Self::NotFound { .. }
            | Self::Rejected { .. }
            | Self::RangeNotSatisfiable { .. }
            | Self::InvalidRequest { .. } => CreateFailure::NotTakenPermanent,
            // A create is sent to the configured origin; a refused redirect or an oversized
            // answer means the request did leave.
            Self::Server { .. }
            | Self::Timeout { .. }
            | Self::Transport { .. }
            | Self::Protocol { .. }
            | Self::Blocked { .. }
            | Self::TooLarge { .. } => CreateFailure::OutcomeUnknown,
        }
    }

    /// The server's `Retry-After`, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The HTTP status upstream answered with, when there was one.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::RateLimited { .. } => Some(429),
            Self::Server { status, .. }
            | Self::Auth { status, .. }
            | Self::Rejected { status, .. } => Some(*status),
            Self::NotFound { .. } => Some(404),
            Self::RangeNotSatisfiable { .. } => Some(416),
            _ => None,
        }
    }

    /// The upstream's own words, kept verbatim (scrubbed of the key), when it sent any.
    pub fn upstream_message(&self) -> Option<&str> {
        match self {
            Self::RateLimited { message, .. }
            | Self::Server { message, .. }
            | Self::Auth { message, .. }
            | Self::NotFound { message, .. }
            | Self::Rejected { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// How much of an error body is kept as the upstream's message; an HTML error page of a proxy
/// can be large and says nothing more after its first kilobytes.
pub const MAX_UPSTREAM_MESSAGE_CHARS: usize = 2048;

/// Extracts the upstream's message from an error body: `{"error":{"message"}}`,
/// `{"error":"..."}`, `{"message"}` or `{"detail"}`, else the raw text (truncated).
pub fn upstream_message_from_body(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let err = v.get("error");
            err.and_then(|e| e.get("message"))
                .and_then(|m| m.as_str())
                .or_else(|| err.and_then(|e| e.as_str()))
                .or_else(|| v.get("message").and_then(|m| m.as_str()))
                .or_else(|| v.get("detail").and_then(|m| m.as_str()))
                .map(str::to_owned)
        });
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    let text = if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text
    };
    truncate_chars(&text, MAX_UPSTREAM_MESSAGE_CHARS)
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Reads `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(status: u16) -> UpstreamError {
        match status {
            429 => UpstreamError::RateLimited {
                endpoint: Endpoint::Create,
                retry_after: None,
                message: "slow down".into(),
            },
            401 | 403 => UpstreamError::Auth {
                endpoint: Endpoint::Create,
                status,
                message: "bad key".into(),
            },
            404 => UpstreamError::NotFound {
                endpoint: Endpoint::Create,
                message: "no".into(),
            },
            s if s >= 500 => UpstreamError::Server {
                endpoint: Endpoint::Create,
                status,
                message: "boom".into(),
            },
            _ => UpstreamError::Rejected {
                endpoint: Endpoint::Create,
                status,
                message: "invalid".into(),
            },
        }
    }

    #[test]
    fn create_is_retried_only_when_upstream_certainly_did_not_take_it() {
        let connect = UpstreamError::Connect {
            endpoint: Endpoint::Create,
            detail: "refused".into(),
        };
        assert_eq!(connect.create_failure(), CreateFailure::NotTakenRetryable);
        assert_eq!(e(429).create_failure(), CreateFailure::NotTakenRetryable);
        for s in [400, 401, 403, 404, 409, 422] {
            assert_eq!(
                e(s).create_failure(),
                CreateFailure::NotTakenPermanent,
                "{s}"
            );
        }
        for s in [500, 502, 503, 504] {
            assert_eq!(e(s).create_failure(), CreateFailure::OutcomeUnknown, "{s}");
        }
        for err in [
            UpstreamError::Timeout {
                endpoint: Endpoint::Create,
                detail: "t".into(),
            },
            UpstreamError::Transport {
                endpoint: Endpoint::Create,
                detail: "reset".into(),
            },
            UpstreamError::Protocol {
                endpoint: Endpoint::Create,
                detail: "no id".into(),
            },
        ] {
            assert_eq!(err.create_failure(), CreateFailure::OutcomeUnknown, "{err}");
        }
    }

    #[test]
    fn reads_are_retryable_on_429_5xx_and_transport_but_not_on_4xx() {
        assert!(e(429).is_retryable());
        assert!(e(503).is_retryable());
        for s in [400, 401, 403, 404, 422] {
            assert!(!e(s).is_retryable(), "{s}");
        }
    }

    #[test]
    fn upstream_message_is_kept_from_every_common_shape() {
        let table: [(&[u8], &str); 6] = [
            (br#"{"error":{"message":"seconds must be 4, 6 or 8","type":"invalid_request_error"}}"#, "seconds must be 4, 6 or 8"),
            (br#"{"error":"bad model"}"#, "bad model"),
            (br#"{"message":"nope"}"#, "nope"),
            (br#"{"detail":"not found"}"#, "not found"),
            (b"<html>502 Bad Gateway</html>", "<html>502 Bad Gateway</html>"),
            (b"", "(empty body)"),
        ];
        for (body, want) in table {
            assert_eq!(upstream_message_from_body(body), want);
        }
        let long = vec![b'x'; MAX_UPSTREAM_MESSAGE_CHARS + 100];
        assert_eq!(
            upstream_message_from_body(&long).chars().count(),
            MAX_UPSTREAM_MESSAGE_CHARS + 1
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
