//! The typed HTTP client of the upstream `/videos` API (CONTRACT.md).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use url::Url;

use super::error::{Endpoint, UpstreamError, parse_retry_after, upstream_message_from_body};
use super::limiter::{InFlight, LimitConfig, LimitConfigError, Pool, UpstreamLimiter};
use super::secret::ApiKey;
use super::status::{NormalisedStatus, UpstreamState, normalise};
use super::wire::CreateBody;
use crate::netguard::{AddressGuard, GuardError, GuardedResolver};
use crate::telemetry::Metrics;
use ipnet::IpNet;
use tracing::Instrument;

/// CONTRACT.md: the upstream's base URL.
pub const DEFAULT_BASE_URL: &str = "https://live-turing.cn.llm.tcljd.com/api/v1";
/// Connecting takes longer than this only when something is wrong.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A create (which may carry a 10 MiB upload) or a status call must answer within this.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A content download may take minutes; it fails only when no byte arrives for this long.
pub const DEFAULT_READ_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest JSON answer read from the upstream; a status object is a few hundred bytes.
pub const MAX_JSON_BODY_BYTES: usize = 1024 * 1024;
/// The largest video accepted: far above real ones (an 8 s 1080p video is 5-30 MB), far below
/// what fills a disk. An upstream that streams without end is cut here, not at a full disk.
pub const DEFAULT_MAX_CONTENT_BYTES: u64 = 1024 * 1024 * 1024;
/// The slowest download kept going, in bytes per second over [`DEFAULT_TRANSFER_RATE_WINDOW`]:
/// a transfer slower than this is broken off and resumed later with `Range` (what arrived is
/// kept), so one trickling connection cannot hold a download slot for hours. 32 KiB/s is a
/// tenth of a poor mobile link; a CDN serves megabytes per second.
pub const DEFAULT_MIN_TRANSFER_RATE: u64 = 32 * 1024;
/// The window over which [`DEFAULT_MIN_TRANSFER_RATE`] is measured: long enough for a stall of
/// a few seconds, short enough that a 1 byte/s trickle ends within half a minute.
pub const DEFAULT_TRANSFER_RATE_WINDOW: Duration = Duration::from_secs(30);
/// Redirects followed for one request (a CDN hop or two); more is a loop or an attack.
pub const MAX_REDIRECTS: usize = 3;

/// How to reach the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL including the API prefix, e.g. `https://host/api/v1`.
    pub base_url: Url,
    /// The bearer key.
    pub api_key: ApiKey,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// See [`DEFAULT_REQUEST_TIMEOUT`].
    pub request_timeout: Duration,
    /// See [`DEFAULT_READ_IDLE_TIMEOUT`].
    pub read_idle_timeout: Duration,
    /// The shared rate limit and concurrency caps.
    pub limits: LimitConfig,
    /// See [`DEFAULT_MAX_CONTENT_BYTES`].
    pub max_content_bytes: u64,
    /// See [`DEFAULT_MIN_TRANSFER_RATE`]; 0 = no minimum.
    pub min_transfer_rate: u64,
    /// See [`DEFAULT_TRANSFER_RATE_WINDOW`].
    pub transfer_rate_window: Duration,
    /// Internal networks that URLs upstream hands back may lead to anyway ([`crate::netguard`]).
    pub allowed_networks: Vec<IpNet>,
}

impl UpstreamConfig {
    /// A configuration with every default but the base URL and key.
    pub fn new(base_url: Url, api_key: ApiKey) -> Self {
        Self {
            base_url,
            api_key,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            read_idle_timeout: DEFAULT_READ_IDLE_TIMEOUT,
            limits: LimitConfig::default(),
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
            min_transfer_rate: DEFAULT_MIN_TRANSFER_RATE,
            transfer_rate_window: DEFAULT_TRANSFER_RATE_WINDOW,
            allowed_networks: Vec::new(),
        }
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    /// Only http and https make sense.
    #[error("upstream.base_url must be an http:// or https:// URL (got scheme {0:?})")]
    BaseUrlScheme(String),
    /// See [`LimitConfigError`].
    #[error(transparent)]
    Limits(#[from] LimitConfigError),
    /// The HTTP stack could not start (TLS roots, for instance).
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// The answer to a create: upstream took the request and named the task.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedTask {
    /// The upstream's task id (`video-...`). Store it the moment it arrives.
    pub id: String,
    /// The status it answered with (U1: often `in_progress`).
    pub status: NormalisedStatus,
    /// The model it echoed, if any.
    pub model: Option<String>,
}

/// The error object of a failed task.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskError {
    /// The upstream's code, e.g. `content_policy_violation`.
    pub code: Option<String>,
    /// The upstream's words.
    pub message: Option<String>,
}

/// A task as `GET /videos/{id}` describes it. Only `status` is required; everything else is
/// read when present and unknown fields are ignored (CONTRACT.md, "Assumed").
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamVideo {
    /// The id, when echoed.
    pub id: Option<String>,
    /// The status, normalised (U1, U4).
    pub status: NormalisedStatus,
    /// The model, when echoed.
    pub model: Option<String>,
    /// 0-100, when given.
    pub progress: Option<u32>,
    /// Unix seconds.
    pub created_at: Option<i64>,
    /// Unix seconds.
    pub completed_at: Option<i64>,
    /// Unix seconds after which upstream may delete the result.
    pub expires_at: Option<i64>,
    /// `WxH`, when given.
    pub size: Option<String>,
    /// Seconds as text, when given.
    pub seconds: Option<String>,
    /// The failure, for failed tasks.
    pub error: Option<TaskError>,
    /// Where the last frame image is (S10), top level or under `content` (Ark's place).
    pub last_frame_url: Option<String>,
    /// A direct video URL, when upstream gives one (the client still uses `/content`).
    pub video_url: Option<String>,
}

/// One create's place at the shared gate: its rate token is spent and it holds an in-flight
/// slot until the create's answer is read (or the slot is dropped unused).
#[derive(Debug)]
pub struct CreateSlot {
    _in_flight: InFlight,
}

/// Where a content stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentStart {
    /// HTTP 200: the whole file from byte 0 (also when a `Range` was asked for and ignored:
    /// the caller must discard what it had and start over).
    Full,
    /// HTTP 206: from this offset, as asked.
    Resumed(u64),
}

/// A streamed body: never a whole video in memory.
pub struct ContentStream {
    /// Where the bytes start.
    pub start: ContentStart,
    /// The full size of the resource, when the server said (Content-Length on 200, the total of
    /// Content-Range on 206).
    pub total_len: Option<u64>,
    /// The server's content type.
    pub content_type: Option<String>,
    /// The bytes. An `Err` item means the transfer broke (for instance a truncated body).
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl std::fmt::Debug for ContentStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentStream")
            .field("start", &self.start)
            .field("total_len", &self.total_len)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// The upstream client. Cheap to clone; every clone shares its connection pools and one
/// [`UpstreamLimiter`].
///
/// Two pools: `http` for creates and status calls, `transfer` for content and last frames, each
/// with its own in-flight cap ([`LimitConfig::max_in_flight`], [`LimitConfig::max_downloads`]),
/// so a slow download slows only itself and never takes the slot a create or a poll needs.
/// Both resolve names through [`GuardedResolver`] and check every redirect: whatever URL
/// upstream hands back, nothing internal is fetched.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    http: reqwest::Client,
    transfer: reqwest::Client,
    base_url: Url,
    api_key: ApiKey,
    request_timeout: Duration,
    limiter: Arc<UpstreamLimiter>,
    metrics: Metrics,
    guard: Arc<AddressGuard>,
    max_content_bytes: u64,
    min_transfer_rate: u64,
    transfer_rate_window: Duration,
}

impl UpstreamClient {
    /// Builds the client (rustls; no system OpenSSL).
    pub fn new(config: UpstreamConfig) -> Result<Self, ClientBuildError> {
        let scheme = config.base_url.scheme();
        if scheme != "http" && scheme != "https" {
            return Err(ClientBuildError::BaseUrlScheme(scheme.to_owned()));
        }
        let limiter = Arc::new(UpstreamLimiter::new(&config.limits)?);
        let guard = Arc::new(AddressGuard::new(
            Some(&config.base_url),
            config.allowed_networks.clone(),
        ));
        let build = || {
            let redirect_guard = Arc::clone(&guard);
            reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .read_timeout(config.read_idle_timeout)
                .user_agent(concat!("vidgate/", env!("CARGO_PKG_VERSION")))
                .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&guard))))
                // reqwest drops `Authorization` on a redirect to another origin; this checks
                // where the redirect leads (a name is checked again when it resolves).
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() > MAX_REDIRECTS {
                        return attempt.error(RedirectRefused(format!(
                            "more than {MAX_REDIRECTS} redirects"
                        )));
                    }
                    match redirect_guard.check_redirect(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(e) => attempt.error(RedirectRefused(e.to_string())),
                    }
                }))
                .build()
                .map_err(|e| ClientBuildError::Http(e.to_string()))
        };
        Ok(Self {
            http: build()?,
            transfer: build()?,
            base_url: config.base_url,
            api_key: config.api_key,
            request_timeout: config.request_timeout,
            limiter,
            metrics: Metrics::disabled(),
            guard,
            max_content_bytes: config.max_content_bytes,
            min_transfer_rate: config.min_transfer_rate,
            transfer_rate_window: config.transfer_rate_window,
        })
    }

    /// Records requests, their latency and rate-limit waits into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The shared gate (for metrics and tests).
    pub fn limiter(&self) -> &Arc<UpstreamLimiter> {
        &self.limiter
    }

    /// `POST /videos`: [`UpstreamClient::reserve_create`] then [`UpstreamClient::create_in`].
    pub async fn create(&self, body: &CreateBody) -> Result<CreatedTask, UpstreamError> {
        let slot = self.reserve_create().await?;
        self.create_in(slot, body).await
    }

    /// Waits at the shared gate (a 429 pause, an in-flight slot, a rate token) for one create,
    /// without sending anything. The dispatcher records "submitting" only once it holds this,
    /// so that a crash while jobs queue at the gate loses none of them (nothing was sent).
    pub async fn reserve_create(&self) -> Result<CreateSlot, UpstreamError> {
        self.enter(Endpoint::Create)
            .await
            .map(|slot| CreateSlot { _in_flight: slot })
    }

    /// Sends a create through a slot taken with [`UpstreamClient::reserve_create`]. Sends
    /// exactly once: this method never retries, because whether a retry is safe depends on
    /// [`UpstreamError::create_failure`], which the caller must decide on.
    pub async fn create_in(
        &self,
        slot: CreateSlot,
        body: &CreateBody,
    ) -> Result<CreatedTask, UpstreamError> {
        let endpoint = Endpoint::Create;
        let url = self.videos_url(&[]);
        let request = self
            .http
            .post(url)
            .bearer_auth(self.api_key.expose())
            .timeout(self.request_timeout);
        let request = match body {
            CreateBody::Json(json) => request.json(json),
            CreateBody::Multipart { fields, file } => {
                let mut form = reqwest::multipart::Form::new();
                for (name, value) in fields {
                    form = form.text(name.clone(), value.clone());
                }
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::from(file.data.clone()),
                    file.data.len() as u64,
                )
                .file_name(file.filename.clone())
                .mime_str(&file.mime_type)
                .map_err(|e| UpstreamError::InvalidRequest {
                    endpoint,
                    detail: format!(
                        "input_reference MIME type {:?} is not valid: {e}",
                        file.mime_type
                    ),
                })?;
                request.multipart(form.part(file.field.clone(), part))
            }
        };
        let _slot = slot;
        let response = self.send(endpoint, request).await?;
        let json = self.read_json(endpoint, response).await?;
        let created = parse_created(&json).ok_or_else(|| UpstreamError::Protocol {
            endpoint,
            detail: "the create answer has no \"id\"; a task may have been created upstream".into(),
        })?;
        tracing::debug!(upstream_id = %created.id, status = %created.status.raw, "upstream accepted create");
        Ok(created)
    }

    /// `GET /videos/{id}`.
    pub async fn get(&self, id: &str) -> Result<UpstreamVideo, UpstreamError> {
        let endpoint = Endpoint::Get;
        let url = self.task_url(endpoint, id, None)?;
        let request = self
            .http
            .get(url)
            .bearer_auth(self.api_key.expose())
            .timeout(self.request_timeout);
        let _slot = self.enter(endpoint).await?;
        let response = self.send(endpoint, request).await?;
        let json = self.read_json(endpoint, response).await?;
        parse_video(&json).ok_or_else(|| UpstreamError::Protocol {
            endpoint,
            detail: "the status answer has no \"status\" string".into(),
        })
    }

    /// `GET /videos/{id}/content`, from `offset` when it is not zero (`Range: bytes=offset-`).
    /// Upstream may ignore the range: check [`ContentStream::start`].
    pub async fn content(&self, id: &str, offset: u64) -> Result<ContentStream, UpstreamError> {
        let endpoint = Endpoint::Content;
        let url = self.task_url(endpoint, id, Some("content"))?;
        let request = self.transfer.get(url).bearer_auth(self.api_key.expose());
        self.stream(endpoint, request, offset, self.max_content_bytes)
            .await
    }

    /// Downloads the last frame from the URL upstream gave (S10), at most `max_bytes` of it.
    /// The API key is sent only when the URL is on the upstream's own origin: a presigned
    /// storage URL elsewhere must never receive our key. The URL must lead to a public address
    /// ([`crate::netguard`]), checked here and again at each redirect and connection.
    pub async fn last_frame(
        &self,
        url: &str,
        max_bytes: u64,
    ) -> Result<ContentStream, UpstreamError> {
        let endpoint = Endpoint::LastFrame;
        let parsed = Url::parse(url).map_err(|e| UpstreamError::Blocked {
            endpoint,
            detail: format!("last_frame_url is not a URL: {e}"),
        })?;
        self.guard
            .check_url("last_frame_url", &parsed)
            .await
            .map_err(|e| UpstreamError::Blocked {
                endpoint,
                detail: self.api_key.scrub(&e.to_string()),
            })?;
        let same_origin = self.guard.is_trusted(&parsed);
        let mut request = self.transfer.get(parsed);
        if same_origin {
            request = request.bearer_auth(self.api_key.expose());
        }
        self.stream(endpoint, request, 0, max_bytes).await
    }

    async fn stream(
        &self,
        endpoint: Endpoint,
        mut request: reqwest::RequestBuilder,
        offset: u64,
        max_bytes: u64,
    ) -> Result<ContentStream, UpstreamError> {
        if offset > 0 {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let slot = self.enter_transfer(endpoint).await?;
        let response = self.send(endpoint, request).await?;
        let status = response.status();
        let headers = response.headers();
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_length = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (start, total_len) = if status == StatusCode::PARTIAL_CONTENT {
            let range = headers
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_content_range)
                .ok_or_else(|| UpstreamError::Protocol {
                    endpoint,
                    detail: "HTTP 206 without a readable Content-Range".into(),
                })?;
            if range.0 != offset {
                return Err(UpstreamError::Protocol {
                    endpoint,
                    detail: format!(
                        "asked for bytes from {offset}, got a range from {}",
                        range.0
                    ),
                });
            }
            (ContentStart::Resumed(range.0), range.1)
        } else {
            (ContentStart::Full, content_length)
        };
        if let Some(total) = total_len
            && total > max_bytes
        {
            return Err(UpstreamError::TooLarge {
                endpoint,
                limit: max_bytes,
                announced: Some(total),
            });
        }
        let first_byte = match start {
            ContentStart::Resumed(from) => from,
            ContentStart::Full => 0,
        };
        let body = bounded_body(
            response,
            BodyLimits {
                endpoint,
                // What may still come after the bytes this response starts at.
                room: max_bytes.saturating_sub(first_byte),
                limit: max_bytes,
                min_rate: self.min_transfer_rate,
                window: self.transfer_rate_window,
            },
            // The slot is held for as long as the body streams: a download is in flight.
            slot,
            self.api_key.clone(),
        );
        Ok(ContentStream {
            start,
            total_len,
            content_type,
            body,
        })
    }

    async fn enter(&self, endpoint: Endpoint) -> Result<InFlight, UpstreamError> {
        self.enter_pool(endpoint, Pool::Calls).await
    }

    async fn enter_transfer(&self, endpoint: Endpoint) -> Result<InFlight, UpstreamError> {
        self.enter_pool(endpoint, Pool::Transfers).await
    }

    async fn enter_pool(&self, endpoint: Endpoint, pool: Pool) -> Result<InFlight, UpstreamError> {
        let slot = self
            .limiter
            .acquire(pool)
            .await
            .ok_or_else(|| UpstreamError::Connect {
                endpoint,
                detail: "vidgate is shutting down; the request was not sent".into(),
            })?;
        self.metrics.rate_limit_wait(endpoint.as_str(), slot.waited);
        if slot.waited > Duration::from_secs(1) {
            tracing::debug!(
                endpoint = endpoint.as_str(),
                waited_ms = slot.waited.as_millis() as u64,
                "waited at the upstream rate limit"
            );
        }
        Ok(slot)
    }

    /// Sends and turns every non-success status into a classified error (after reading the
    /// bounded error body for the upstream's message).
    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, UpstreamError> {
        let (method, template, name) = endpoint.http_route();
        // An HTTP client span (OpenTelemetry semantic conventions). No URL: a presigned
        // last-frame URL carries credentials in its query.
        let span = tracing::info_span!(
            "upstream request",
            otel.name = name,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            url.template = template,
            server.address = self.base_url.host_str().unwrap_or(""),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let sent = request.send().instrument(span.clone()).await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                self.metrics
                    .upstream_request(endpoint.as_str(), 0, started.elapsed());
                span.record("otel.status_code", "ERROR");
                span.record(
                    "error.type",
                    if e.is_timeout() {
                        "timeout"
                    } else if e.is_connect() {
                        "connect"
                    } else {
                        "transport"
                    },
                );
                return Err(classify_reqwest(endpoint, &e, &self.api_key));
            }
        };
        let status = response.status();
        self.metrics
            .upstream_request(endpoint.as_str(), status.as_u16(), started.elapsed());
        span.record("http.response.status_code", status.as_u16());
        if !status.is_success() {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", status.as_str());
        }
        tracing::debug!(
            endpoint = endpoint.as_str(),
            status = status.as_u16(),
            "upstream answered"
        );
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_bounded(response, MAX_JSON_BODY_BYTES)
            .await
            .unwrap_or_default();
        // Scrubbed before the message is cut to length (a cut must not leave half a key), and
        // again after the JSON is read (a key written with escapes).
        let body = self.api_key.scrub(&String::from_utf8_lossy(&body));
        let message = self
            .api_key
            .scrub(&upstream_message_from_body(body.as_bytes()));
        let code = status.as_u16();
        let err = match code {
            429 => {
                // One 429 slows every caller of the process down (ARCHITECTURE.md, "Polite polling").
                self.limiter.pause_after_rate_limit(retry_after);
                UpstreamError::RateLimited {
                    endpoint,
                    retry_after,
                    message,
                }
            }
            401 | 403 => UpstreamError::Auth {
                endpoint,
                status: code,
                message,
            },
            404 => UpstreamError::NotFound { endpoint, message },
            416 => UpstreamError::RangeNotSatisfiable { endpoint },
            408 => UpstreamError::Server {
                endpoint,
                status: code,
                message,
            },
            400..=499 => UpstreamError::Rejected {
                endpoint,
                status: code,
                message,
            },
            _ => UpstreamError::Server {
                endpoint,
                status: code,
                message,
            },
        };
        Err(err)
    }

    async fn read_json(
        &self,
        endpoint: Endpoint,
        response: Response,
    ) -> Result<serde_json::Value, UpstreamError> {
        let body = read_bounded(response, MAX_JSON_BODY_BYTES)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => UpstreamError::Protocol {
                    endpoint,
                    detail: format!("answer larger than {MAX_JSON_BODY_BYTES} bytes"),
                },
                ReadError::Http(e) => classify_reqwest(endpoint, &e, &self.api_key),
            })?;
        let mut json = serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol {
            endpoint,
            detail: format!("answer is not JSON ({e})"),
        })?;
        // Whatever upstream says is stored, logged or returned somewhere: an echoed key is
        // redacted before any of it is read.
        self.api_key.scrub_json(&mut json);
        Ok(json)
    }

    fn videos_url(&self, segments: &[&str]) -> Url {
        let mut url = self.base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            // Both `.../api/v1` and `.../api/v1/` work as base URLs.
            path.pop_if_empty().push("videos");
            for s in segments {
                path.push(s);
            }
        }
        url
    }

    fn task_url(
        &self,
        endpoint: Endpoint,
        id: &str,
        tail: Option<&str>,
    ) -> Result<Url, UpstreamError> {
        if id.is_empty() || id.len() > MAX_TASK_ID_LEN {
            return Err(UpstreamError::InvalidRequest {
                endpoint,
                detail: format!("upstream task id must be 1 to {MAX_TASK_ID_LEN} characters"),
            });
        }
        // `push` percent-encodes, so an id with `/` or `..` cannot reach another path.
        Ok(match tail {
            Some(t) => self.videos_url(&[id, t]),
            None => self.videos_url(&[id]),
        })
    }
}

/// Upstream ids look like `video-xxx`; anything far longer is not one.
pub const MAX_TASK_ID_LEN: usize = 256;

enum ReadError {
    TooLarge,
    Http(reqwest::Error),
}

async fn read_bounded(response: Response, limit: usize) -> Result<Bytes, ReadError> {
    let mut stream = response.bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadError::Http)?;
        if buf.len() + chunk.len() > limit {
            return Err(ReadError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// What a streamed body may do.
struct BodyLimits {
    endpoint: Endpoint,
    /// Bytes this response may still deliver.
    room: u64,
    /// The whole limit, for the message.
    limit: u64,
    /// Bytes per second over `window`; 0 = no minimum.
    min_rate: u64,
    window: Duration,
}

/// The body of a content or last-frame response, bounded: it ends with
/// [`UpstreamError::TooLarge`] at the size limit (nothing beyond is handed on) and with
/// [`UpstreamError::Timeout`] when a whole window brings fewer bytes than the minimum rate
/// (the caller keeps what arrived and resumes with `Range`). `held` (the in-flight slot) is
/// released when the body is dropped.
fn bounded_body(
    response: Response,
    limits: BodyLimits,
    held: InFlight,
    key: ApiKey,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    let BodyLimits {
        endpoint,
        room,
        limit,
        min_rate,
        window,
    } = limits;
    let window = window.max(Duration::from_millis(1));
    let needed = (min_rate as u128 * window.as_millis() / 1000) as u64;
    async_stream::stream! {
        let _held = held;
        let mut body = response.bytes_stream();
        let mut received = 0u64;
        let mut window_end = tokio::time::Instant::now() + window;
        let mut in_window = 0u64;
        loop {
            let next = if min_rate > 0 {
                match tokio::time::timeout_at(window_end, body.next()).await {
                    Ok(next) => next,
                    Err(_) if in_window >= needed => {
                        window_end = tokio::time::Instant::now() + window;
                        in_window = 0;
                        continue;
                    }
                    Err(_) => {
                        yield Err(too_slow(endpoint, in_window, window, min_rate));
                        break;
                    }
                }
            } else {
                body.next().await
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    yield Err(classify_reqwest(endpoint, &e, &key));
                    break;
                }
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    if received > room {
                        yield Err(UpstreamError::TooLarge { endpoint, limit, announced: None });
                        break;
                    }
                    in_window += chunk.len() as u64;
                    let now = tokio::time::Instant::now();
                    if min_rate > 0 && now >= window_end {
                        if in_window < needed {
                            yield Err(too_slow(endpoint, in_window, window, min_rate));
                            break;
                        }
                        window_end = now + window;
                        in_window = 0;
                    }
                    yield Ok(chunk);
                }
            }
        }
    }
    .boxed()
}

fn too_slow(endpoint: Endpoint, got: u64, window: Duration, min_rate: u64) -> UpstreamError {
    UpstreamError::Timeout {
        endpoint,
        detail: format!(
            "the transfer brought {got} bytes in {} ms, below the minimum of {min_rate} bytes/s (upstream.min_transfer_rate); it is resumed later from where it stopped",
            window.as_millis()
        ),
    }
}

/// The error a refused redirect carries through reqwest, recognised by [`classify_reqwest`].
#[derive(Debug)]
struct RedirectRefused(String);

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RedirectRefused {}

/// The guard's refusal, if `e` is one (a refused redirect, or a name that resolved to an
/// internal address).
fn refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<RedirectRefused>() {
            return Some(r.0.clone());
        }
        if let Some(g) = err.downcast_ref::<GuardError>() {
            return Some(g.to_string());
        }
        current = err.source();
    }
    None
}

fn classify_reqwest(endpoint: Endpoint, e: &reqwest::Error, key: &ApiKey) -> UpstreamError {
    if let Some(why) = refusal(e) {
        return UpstreamError::Blocked {
            endpoint,
            detail: key.scrub(&why),
        };
    }
    // reqwest's message names the URL, never headers; scrub anyway in case a URL carries a key.
    let detail = key.scrub(&error_chain(e));
    if e.is_connect() {
        UpstreamError::Connect { endpoint, detail }
    } else if e.is_timeout() {
        UpstreamError::Timeout { endpoint, detail }
    } else if e.is_builder() {
        UpstreamError::InvalidRequest { endpoint, detail }
    } else {
        UpstreamError::Transport { endpoint, detail }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `bytes 100-199/1000` -> (100, Some(1000)); `bytes 100-199/*` -> (100, None).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Int(i64),
    Float(f64),
    Text(String),
}

impl NumOrText {
    fn as_text(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Text(t) => t.clone(),
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Int(i) => Some(*i as f64),
            Self::Float(f) => Some(*f),
            Self::Text(t) => t.trim().parse().ok(),
        }
    }
}

fn field<'a>(json: &'a serde_json::Value, name: &str) -> Option<NumOrText> {
    let v: &'a serde_json::Value = json.get(name)?;
    serde_json::from_value(v.clone()).ok()
}

fn text(json: &serde_json::Value, name: &str) -> Option<String> {
    json.get(name)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Reads a create answer; `None` only when there is no non-empty `id` string. A missing
/// `status` counts as queued.
pub fn parse_created(json: &serde_json::Value) -> Option<CreatedTask> {
    let id = json
        .get("id")
        .and_then(|v| v.as_str())
        .filter(|id| !id.is_empty())?
        .to_owned();
    let status = json
        .get("status")
        .and_then(|v| v.as_str())
        .map(normalise)
        .unwrap_or(NormalisedStatus {
            raw: String::new(),
            state: UpstreamState::Queued,
            recognised: true,
        });
    let model = json
        .get("model")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Some(CreatedTask { id, status, model })
}

/// Reads a status object tolerantly; `None` only when there is no `status` string.
pub fn parse_video(json: &serde_json::Value) -> Option<UpstreamVideo> {
    let status = normalise(json.get("status")?.as_str()?);
    let content = json.get("content");
    let error = match json.get("error") {
        Some(serde_json::Value::Object(_)) => {
            let e = json.get("error")?;
            Some(TaskError {
                code: e.get("code").and_then(field_text),
                message: text(e, "message"),
            })
        }
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(TaskError {
            code: None,
            message: Some(s.clone()),
        }),
        _ => None,
    };
    Some(UpstreamVideo {
        id: text(json, "id"),
        status,
        model: text(json, "model"),
        progress: field(json, "progress")
            .and_then(|p| p.as_f64())
            .filter(|p| p.is_finite())
            .map(|p| p.clamp(0.0, 100.0).round() as u32),
        created_at: field(json, "created_at")
            .and_then(|v| v.as_f64())
            .map(|v| v as i64),
        completed_at: field(json, "completed_at")
            .and_then(|v| v.as_f64())
            .map(|v| v as i64),
        expires_at: field(json, "expires_at")
            .and_then(|v| v.as_f64())
            .map(|v| v as i64),
        size: text(json, "size"),
        seconds: field(json, "seconds").map(|s| s.as_text()),
        error,
        last_frame_url: text(json, "last_frame_url")
            .or_else(|| content.and_then(|c| text(c, "last_frame_url"))),
        video_url: text(json, "video_url").or_else(|| content.and_then(|c| text(c, "video_url"))),
    })
}

fn field_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_range_is_parsed_with_and_without_total() {
        assert_eq!(
            parse_content_range("bytes 100-199/1000"),
            Some((100, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes x-9/10"), None);
    }

    #[test]
    fn status_object_is_read_tolerantly_with_unknown_fields_ignored() {
        let v = parse_video(&json!({
            "id": "video-1", "object": "video", "model": "m", "status": "in_progress",
            "progress": 41.6, "created_at": 1700000000, "seconds": 8, "size": "1280x720",
            "brand_new_field": {"x": 1}
        }))
        .unwrap();
        assert_eq!(v.status.state, UpstreamState::Processing);
        assert_eq!(v.progress, Some(42));
        assert_eq!(v.seconds.as_deref(), Some("8"));
        assert_eq!(v.created_at, Some(1_700_000_000));
        assert_eq!(v.size.as_deref(), Some("1280x720"));
    }

    #[test]
    fn only_status_is_required() {
        assert!(parse_video(&json!({"id": "x"})).is_none());
        let v = parse_video(&json!({"status": "queued"})).unwrap();
        assert_eq!(v.status.state, UpstreamState::Queued);
        assert_eq!(v.id, None);
    }

    #[test]
    fn s10_last_frame_url_is_found_top_level_or_under_content() {
        let top = parse_video(&json!({"status": "completed", "last_frame_url": "https://a/x.png"}))
            .unwrap();
        assert_eq!(top.last_frame_url.as_deref(), Some("https://a/x.png"));
        let ark = parse_video(&json!({"status": "succeeded", "content": {"video_url": "https://v", "last_frame_url": "https://b/y.png"}})).unwrap();
        assert_eq!(ark.last_frame_url.as_deref(), Some("https://b/y.png"));
        assert_eq!(ark.video_url.as_deref(), Some("https://v"));
        assert_eq!(ark.status.state, UpstreamState::Completed);
    }

    #[test]
    fn failed_task_error_is_kept_in_either_shape() {
        let v = parse_video(&json!({"status": "failed", "error": {"code": "content_policy_violation", "message": "refused"}})).unwrap();
        let e = v.error.unwrap();
        assert_eq!(e.code.as_deref(), Some("content_policy_violation"));
        assert_eq!(e.message.as_deref(), Some("refused"));
        let v = parse_video(&json!({"status": "failed", "error": "boom"})).unwrap();
        assert_eq!(v.error.unwrap().message.as_deref(), Some("boom"));
    }

    #[test]
    fn task_urls_percent_encode_the_id_and_respect_the_base_path() {
        let client = UpstreamClient::new(UpstreamConfig::new(
            Url::parse("http://127.0.0.1:9/api/v1").unwrap(),
            ApiKey::new("k").unwrap(),
        ))
        .unwrap();
        assert_eq!(
            client.videos_url(&[]).as_str(),
            "http://127.0.0.1:9/api/v1/videos"
        );
        let url = client
            .task_url(Endpoint::Get, "../../admin", Some("content"))
            .unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/api/v1/videos/..%2F..%2Fadmin/content"
        );
        assert!(client.task_url(Endpoint::Get, "", None).is_err());
    }
}
