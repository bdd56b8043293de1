//! The simulator's HTTP surface and lifecycle.
//!
//! Endpoints (under [`API_PREFIX`]):
//! - `POST /videos`: JSON or multipart; rules in [`super::rules`]; 200 with the task.
//! - `GET /videos/{id}`: the OpenAI-style video object; status from time since create.
//! - `GET /videos/{id}/content`: the MP4, with `Range` (206/416).
//! - `GET /videos/{id}/last_frame`: the PNG, only for tasks created with `return_last_frame`.
//!
//! Choices the page leaves open, made the way an OpenAI-compatible gateway would:
//! - content or last frame before completion: **409** `video_not_ready` (a gateway that knows
//!   the task and can tell "not yet" from "never"); of a failed task, or after a moderation
//!   refusal ([`Fault::CompletedWithoutContent`](super::Fault::CompletedWithoutContent)): **404**;
//! - the last frame URL needs no bearer token: Ark hands out pre-signed result URLs, and the
//!   page does not say the gateway wraps them. A token that is sent is ignored there;
//! - a create request whose body is refused early (bad key, oversize file, wrong type) is still
//!   read to its end, up to the body limit, before the answer: otherwise closing the socket with
//!   unread bytes makes the kernel send a reset that can destroy the answer in flight (nginx
//!   calls this lingering close). Nothing read that way is kept.
//!
//! Test backdoor, no auth, bind to loopback: `GET /_sim/stats`, `GET|POST /_sim/faults`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, Multipart, Path, Request, State,
    multipart::MultipartError,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_range_header::RangeUnsatisfiableError;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{SimConfig, SimConfigError};
use super::conn::{ConnKill, SimListener};
use super::faults::{FaultEndpoint, FaultRule, RequestFaults, Terminal};
use super::mp4gen::{GeneratedMp4, Mp4Params};
use super::rules::{
    self, FormInput, TaskSpec, UPLOAD_FIELD, UploadInfo, Violation, check_upload_part,
};
use super::state::{Phase, SimState, SimStats, Task};

/// Path prefix of the API, as on the upstream (its base URL ends in `/api/v1`).
pub const API_PREFIX: &str = "/api/v1";
/// Room for the text fields and part headers of a multipart create beside the largest accepted
/// file: the overall body limit is `max_upload_bytes` plus this.
pub const MULTIPART_OVERHEAD_BYTES: u64 = 1024 * 1024;
/// Largest text field of a multipart create (a prompt is a few KB at most).
pub const MAX_FORM_TEXT_FIELD_BYTES: usize = 64 * 1024;
/// How long a refused create's remaining body is read and discarded before closing.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Chunk size of served videos: large enough for throughput, small enough to stay bounded.
pub const CONTENT_CHUNK_BYTES: usize = 64 * 1024;
/// Pause between the last bytes of a truncated body and the error that ends it, so hyper puts
/// exactly `after_bytes` on the wire before it aborts the connection.
pub const TRUNCATE_FLUSH_PAUSE: Duration = Duration::from_millis(20);
/// How long [`SimHandle::shutdown`] waits for open connections before stopping the server.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the simulator did not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] SimConfigError),
    /// The address could not be bound.
    #[error("simulator: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The bound socket has no local address (should not happen).
    #[error("simulator: bound socket has no local address: {0}")]
    LocalAddr(io::Error),
}

/// What every handler shares.
struct Shared {
    config: SimConfig,
    state: SimState,
    addr: SocketAddr,
}

impl Shared {
    /// The most a refused request body is read before closing.
    fn drain_limit(&self) -> u64 {
        self.config
            .max_json_body_bytes
            .max(self.config.max_upload_bytes + MULTIPART_OVERHEAD_BYTES)
    }
}

/// The simulator's entry point.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Bind `bind` (port 0 for any free port), start serving in the background and return the
    /// handle. Tests use `127.0.0.1:0`.
    pub async fn start(config: SimConfig, bind: SocketAddr) -> Result<SimHandle, SimError> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(bind)
            .await
            .map_err(|source| SimError::Bind { addr: bind, source })?;
        let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
        let shared = Arc::new(Shared {
            state: SimState::new(&config),
            config,
            addr,
        });
        let app = router(Arc::clone(&shared));
        let cancel = CancellationToken::new();
        let stop = cancel.clone().cancelled_owned();
        let server = tokio::spawn(async move {
            let serve = axum::serve(
                SimListener::new(listener),
                app.into_make_service_with_connect_info::<ConnKill>(),
            )
            .with_graceful_shutdown(stop);
            if let Err(err) = serve.await {
                tracing::warn!("simulator stopped with an error: {err}");
            }
        });
        tracing::info!(%addr, "upstream simulator listening");
        Ok(SimHandle {
            inner: Arc::new(HandleInner {
                shared,
                addr,
                cancel,
                server: Mutex::new(Some(server)),
            }),
        })
    }
}

/// A running simulator. Clones share it; it stops on [`SimHandle::shutdown`] or when the last
/// clone is dropped.
#[derive(Clone)]
pub struct SimHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: CancellationToken,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The base URL a client is configured with, e.g. `http://127.0.0.1:PORT/api/v1`
    /// (an unspecified bind address is given as loopback).
    pub fn base_url(&self) -> String {
        let addr = self.inner.addr;
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}{API_PREFIX}", SocketAddr::new(ip, addr.port()))
    }

    /// The bearer token the simulator accepts.
    pub fn api_key(&self) -> &str {
        &self.inner.shared.config.api_key
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.inner.shared.state.stats()
    }

    /// Replace the armed fault rules. Rules are not validated here (see
    /// [`FaultRule::validate`]); one that cannot apply to its endpoint never fires.
    pub fn set_faults(&self, faults: Vec<FaultRule>) {
        self.inner.shared.state.set_faults(faults);
    }

    /// Arm one more fault rule, after the others.
    pub fn push_fault(&self, rule: FaultRule) {
        self.inner.shared.state.push_fault(rule);
    }

    /// The rules still armed, `times` showing what is left.
    pub fn faults(&self) -> Vec<FaultRule> {
        self.inner.shared.state.faults()
    }

    /// The parameters the task's video is (or will be) generated from, so a test can
    /// regenerate the exact bytes; none for an unknown id.
    pub fn mp4_params(&self, id: &str) -> Option<Mp4Params> {
        self.inner
            .shared
            .state
            .peek(id)
            .map(|task| task.mp4_params())
    }

    /// Stop accepting, let open connections finish (at most [`SHUTDOWN_GRACE`]), stop.
    pub async fn shutdown(self) {
        self.inner.cancel.cancel();
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut server) = server
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
        {
            server.abort();
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let create_limit = usize::try_from(
        shared
            .config
            .max_upload_bytes
            .saturating_add(MULTIPART_OVERHEAD_BYTES),
    )
    .unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/api/v1/videos",
            post(create).layer(DefaultBodyLimit::max(create_limit)),
        )
        .route("/api/v1/videos/{id}", get(status))
        .route("/api/v1/videos/{id}/content", get(content))
        .route("/api/v1/videos/{id}/last_frame", get(last_frame))
        .route("/_sim/stats", get(sim_stats))
        .route("/_sim/faults", get(sim_faults).post(sim_set_faults))
        .fallback(unknown_route)
        .with_state(shared)
}

// ---- answers -------------------------------------------------------------------------------

fn error_response(
    status: StatusCode,
    kind: &str,
    code: &str,
    message: &str,
    param: Option<&str>,
) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
    });
    (status, Json(body)).into_response()
}

fn violation_response(v: &Violation) -> Response {
    error_response(
        StatusCode::from_u16(v.status).unwrap_or(StatusCode::BAD_REQUEST),
        v.kind,
        v.code,
        &v.message,
        v.param.as_deref(),
    )
}

fn unauthorized() -> Response {
    // Never echo what was sent: it may be a real key pointed at the wrong server.
    error_response(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "invalid_api_key",
        "Incorrect or missing API key. Send `Authorization: Bearer <API_KEY>`.",
        None,
    )
}

fn task_not_found(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "video_not_found",
        &format!("No video found with id '{id}'."),
        None,
    )
}

fn http_fault_response(status: u16, retry_after_s: Option<u64>) -> Response {
    let Ok(code) = StatusCode::from_u16(status) else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "invalid_fault",
            &format!("simulator fault rule names an invalid HTTP status {status}"),
            None,
        );
    };
    let (kind, err_code, message) = match status {
        429 => (
            "rate_limit_error",
            "rate_limit_exceeded",
            "Rate limit reached for requests. Please retry later.",
        ),
        500..=599 => (
            "server_error",
            "upstream_error",
            "The upstream service is temporarily unavailable. Please retry later.",
        ),
        _ => (
            "invalid_request_error",
            "simulated_fault",
            "The request was refused by a simulated fault.",
        ),
    };
    let mut response = error_response(code, kind, err_code, message, None);
    if let Some(secs) = retry_after_s {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && token.trim() == key)
}

/// Delay, then the terminal fault if any: `Some` is the answer instead of the normal one.
async fn apply_request_faults(faults: &RequestFaults, conn: &ConnKill) -> Option<Response> {
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    match faults.terminal {
        None => None,
        Some(Terminal::Http {
            status,
            retry_after_s,
        }) => Some(http_fault_response(status, retry_after_s)),
        Some(Terminal::Reset) => Some(reset(conn)),
    }
}

/// Cut the connection; the returned response is never delivered.
fn reset(conn: &ConnKill) -> Response {
    conn.kill();
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// `http://<host>/api/v1` as the client reached us (the `Host` header), for absolute URLs.
fn public_base(headers: &HeaderMap, addr: SocketAddr) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<http::uri::Authority>().is_ok());
    match host {
        Some(host) => format!("http://{host}{API_PREFIX}"),
        None => format!("http://{addr}{API_PREFIX}"),
    }
}

/// Read and discard what is left of a refused body (bounded in bytes and time), see the module
/// doc for why.
async fn drain_body(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let drained = async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > limit {
                break;
            }
        }
    };
    // Timing out only means the client is slow; the answer goes out either way.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}

async fn drain_multipart(multipart: &mut Multipart) {
    let drained = async {
        while let Ok(Some(mut field)) = multipart.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drained).await;
}

// ---- create --------------------------------------------------------------------------------

enum CreateInput {
    Json(Value),
    Form(FormInput),
}

impl CreateInput {
    fn prompt(&self) -> Option<String> {
        match self {
            CreateInput::Json(v) => rules::prompt_of_json(v),
            CreateInput::Form(f) => rules::prompt_of_form(f),
        }
    }

    fn validate(&self) -> Result<TaskSpec, Violation> {
        match self {
            CreateInput::Json(v) => rules::validate_json(v),
            CreateInput::Form(f) => rules::validate_form(f),
        }
    }
}

async fn create(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    req: Request,
) -> Response {
    sh.state.count_request(FaultEndpoint::Create);
    if !authorized(req.headers(), &sh.config.api_key) {
        drain_body(req.into_body(), sh.drain_limit()).await;
        sh.state.reject_create(401);
        return unauthorized();
    }
    let input = match read_create(&sh, req).await {
        Ok(input) => input,
        Err(v) => {
            sh.state.reject_create(v.status);
            return violation_response(&v);
        }
    };
    let prompt = input.prompt();
    let faults = sh
        .state
        .request_faults(FaultEndpoint::Create, prompt.as_deref());
    if let Some(Terminal::Http {
        status,
        retry_after_s,
    }) = faults.terminal
    {
        if let Some(delay) = faults.delay {
            tokio::time::sleep(delay).await;
        }
        sh.state.reject_create(status);
        return http_fault_response(status, retry_after_s);
    }
    let spec = match input.validate() {
        Ok(spec) => spec,
        Err(v) => {
            if let Some(delay) = faults.delay {
                tokio::time::sleep(delay).await;
            }
            sh.state.reject_create(v.status);
            if faults.terminal == Some(Terminal::Reset) {
                return reset(&conn);
            }
            return violation_response(&v);
        }
    };
    // The task exists before any delay or reset: the client may never learn of it, but it was
    // started (and, upstream, paid for).
    let task = sh.state.create_task(spec);
    tracing::debug!(id = %task.id, model = %task.spec.model, "simulator: task created");
    if let Some(delay) = faults.delay {
        tokio::time::sleep(delay).await;
    }
    if faults.terminal == Some(Terminal::Reset) {
        return reset(&conn);
    }
    let status = if sh.config.in_progress_spelling {
        "in_progress"
    } else {
        "queued"
    };
    Json(json!({
        "id": task.id,
        "object": "video",
        "status": status,
        "model": task.spec.model,
        "created_at": task.created_unix,
    }))
    .into_response()
}

async fn read_create(sh: &Shared, req: Request) -> Result<CreateInput, Violation> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => {
            let limit = sh.config.max_json_body_bytes;
            let bytes = axum::body::to_bytes(
                req.into_body(),
                usize::try_from(limit).unwrap_or(usize::MAX),
            )
            .await
            .map_err(|_| Violation::too_large(limit))?;
            serde_json::from_slice(&bytes)
                .map(CreateInput::Json)
                .map_err(|e| {
                    Violation::body(
                        "invalid_json",
                        format!("the request body is not valid JSON: {e}"),
                    )
                })
        }
        "multipart/form-data" => {
            let mut multipart = Multipart::from_request(req, &())
                .await
                .map_err(|r| Violation::body("invalid_multipart", r.body_text()))?;
            let result = read_form(&mut multipart, &sh.config).await;
            if result.is_err() {
                drain_multipart(&mut multipart).await;
            }
            result.map(CreateInput::Form)
        }
        _ => {
            drain_body(req.into_body(), sh.drain_limit()).await;
            Err(Violation::unsupported_media_type())
        }
    }
}

fn multipart_violation(err: MultipartError) -> Violation {
    if err.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Violation {
            status: 413,
            ..Violation::body("request_too_large", err.body_text())
        }
    } else {
        Violation::body("invalid_multipart", err.body_text())
    }
}

/// Stream the form: text fields kept (bounded), the file only measured; V3-V5 on the file are
/// checked as soon as its headers, and then its size, allow.
async fn read_form(multipart: &mut Multipart, config: &SimConfig) -> Result<FormInput, Violation> {
    let mut form = FormInput::default();
    while let Some(mut field) = multipart.next_field().await.map_err(multipart_violation)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name == UPLOAD_FIELD {
            if form.file.is_some() {
                return Err(Violation::param(
                    UPLOAD_FIELD,
                    "input_reference: only one image file may be uploaded",
                ));
            }
            check_upload_part(
                field.file_name(),
                field.content_type(),
                &config.refuse_image_marker,
            )?;
            let file_name = field.file_name().unwrap_or_default().to_owned();
            let content_type = field.content_type().unwrap_or_default().to_owned();
            let mut len = 0u64;
            while let Some(chunk) = field.chunk().await.map_err(multipart_violation)? {
                len += chunk.len() as u64;
                // Stop at the first byte over the limit, not at the end of the file.
                if len > config.max_upload_bytes {
                    break;
                }
            }
            rules::check_upload_len(len, config.max_upload_bytes)?;
            form.file = Some(UploadInfo {
                file_name,
                content_type,
                len,
            });
        } else {
            if field.file_name().is_some() {
                return Err(Violation::param(
                    name.clone(),
                    format!("{name}: unexpected file part; the image goes in input_reference"),
                ));
            }
            let mut text = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(multipart_violation)? {
                if text.len() + chunk.len() > MAX_FORM_TEXT_FIELD_BYTES {
                    return Err(Violation::param(
                        name.clone(),
                        format!("{name}: longer than {MAX_FORM_TEXT_FIELD_BYTES} bytes"),
                    ));
                }
                text.extend_from_slice(&chunk);
            }
            let value = String::from_utf8(text).map_err(|_| {
                Violation::param(name.clone(), format!("{name}: must be UTF-8 text"))
            })?;
            form.fields.push((name, value));
        }
    }
    Ok(form)
}

// ---- status --------------------------------------------------------------------------------

async fn status(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    sh.state.count_request(FaultEndpoint::Get);
    if !authorized(&headers, &sh.config.api_key) {
        return unauthorized();
    }
    let task = sh.state.lookup(&id, FaultEndpoint::Get);
    let faults = sh.state.request_faults(
        FaultEndpoint::Get,
        task.as_ref().map(|t| t.spec.prompt.as_str()),
    );
    if let Some(answer) = apply_request_faults(&faults, &conn).await {
        return answer;
    }
    let Some(task) = task else {
        return task_not_found(&id);
    };
    Json(status_body(&sh, &task, &headers)).into_response()
}

fn status_body(sh: &Shared, task: &Task, headers: &HeaderMap) -> Value {
    let phase = task.phase(tokio::time::Instant::now());
    let spelling = task.faults.spelling.as_ref();
    let processing = match spelling {
        Some((p, _)) => p.as_str(),
        None if sh.config.in_progress_spelling => "in_progress",
        None => "processing",
    };
    let completed = spelling.map_or("completed", |(_, c)| c.as_str());
    let (status, progress) = match phase {
        Phase::Queued => ("queued", 0),
        Phase::Processing { progress } => (processing, progress),
        Phase::Completed => (completed, 100),
        Phase::Failed => ("failed", 100),
    };
    let finished = matches!(phase, Phase::Completed | Phase::Failed);
    let error = match (&phase, &task.faults.fail) {
        (Phase::Failed, Some((code, message))) => json!({ "code": code, "message": message }),
        _ => Value::Null,
    };
    let mut body = json!({
        "id": task.id,
        "object": "video",
        "model": task.spec.model,
        "status": status,
        "progress": progress,
        "created_at": task.created_unix,
        "completed_at": if finished { json!(task.finished_unix()) } else { Value::Null },
        "size": task.spec.size_label(),
        "seconds": task.spec.seconds.to_string(),
        "error": error,
    });
    if task.spec.return_last_frame && phase == Phase::Completed && !task.faults.without_content {
        let base = public_base(headers, sh.addr);
        body["content"] = json!({
            "video_url": format!("{base}/videos/{}/content", task.id),
            "last_frame_url": format!("{base}/videos/{}/last_frame", task.id),
        });
    }
    body
}

// ---- content and last frame ------------------------------------------------------------------

/// The answer for a task whose media cannot be served (yet), if so.
fn unservable(task: &Task) -> Option<Response> {
    match task.phase(tokio::time::Instant::now()) {
        Phase::Queued | Phase::Processing { .. } => Some(error_response(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "video_not_ready",
            &format!(
                "Video '{}' is not completed yet; poll GET /videos/{} until its status is completed.",
                task.id, task.id
            ),
            None,
        )),
        Phase::Failed => Some(error_response(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "video_failed",
            &format!("Video '{}' failed and has no content.", task.id),
            None,
        )),
        Phase::Completed if task.faults.without_content => Some(error_response(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "content_not_available",
            &format!(
                "Video '{}' has no content: the output was blocked by the safety filter.",
                task.id
            ),
            None,
        )),
        Phase::Completed => None,
    }
}

fn generation_failed(err: &dyn std::fmt::Display) -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "generation_failed",
        &format!("the simulator could not produce the media: {err}"),
        None,
    )
}

/// The body of a stream, cut after `truncate_after` bytes with an error when asked.
fn media_body<S>(stream: S, truncate_after: Option<u64>) -> Body
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    match truncate_after {
        None => Body::from_stream(stream.map(Ok::<Bytes, io::Error>)),
        Some(limit) => Body::from_stream(truncated(stream, limit)),
    }
}

fn truncated<S>(stream: S, limit: u64) -> impl Stream<Item = Result<Bytes, io::Error>> + Send
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    async_stream::stream! {
        let mut sent = 0u64;
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            let room = limit - sent;
            let len = chunk.len() as u64;
            if len <= room {
                sent += len;
                yield Ok(chunk);
                continue;
            }
            if room > 0 {
                yield Ok(chunk.slice(..usize::try_from(room).unwrap_or(usize::MAX)));
            }
            tokio::time::sleep(TRUNCATE_FLUSH_PAUSE).await;
            yield Err(io::Error::new(io::ErrorKind::ConnectionAborted, "simulated truncated body"));
            return;
        }
    }
}

/// Which bytes a `Range` header selects.
enum Selection {
    Full,
    Partial { start: u64, end_inclusive: u64 },
    Unsatisfiable,
}

fn select_range(range: Option<&str>, len: u64) -> Selection {
    let Some(range) = range else {
        return Selection::Full;
    };
    let parsed = match http_range_header::parse_range_header(range) {
        Ok(parsed) => parsed,
        // RFC 9110 14.2: a syntactically invalid Range is ignored.
        Err(RangeUnsatisfiableError::Invalid(_)) => return Selection::Full,
        Err(_) => return Selection::Unsatisfiable,
    };
    match parsed.validate(len) {
        Ok(ranges) => match ranges.as_slice() {
            [one] => Selection::Partial {
                start: *one.start(),
                end_inclusive: *one.end(),
            },
            // Several ranges: a server may send the whole representation instead of multipart.
            _ => Selection::Full,
        },
        Err(RangeUnsatisfiableError::Invalid(_)) => Selection::Full,
        Err(_) => Selection::Unsatisfiable,
    }
}

fn serve_mp4(mp4: &GeneratedMp4, headers: &HeaderMap, faults: &RequestFaults) -> Response {
    let len = mp4.len();
    let range = if faults.ignore_range {
        None
    } else {
        headers.get(header::RANGE).and_then(|v| v.to_str().ok())
    };
    let (status, start, end) = match select_range(range, len) {
        Selection::Full => (StatusCode::OK, 0, len),
        Selection::Partial {
            start,
            end_inclusive,
        } => (StatusCode::PARTIAL_CONTENT, start, end_inclusive + 1),
        Selection::Unsatisfiable => {
            let mut response = error_response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "invalid_request_error",
                "range_not_satisfiable",
                &format!("The requested range is not satisfiable; the video is {len} bytes."),
                None,
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return response;
        }
    };
    let body = media_body(
        mp4.range_stream(start, end, CONTENT_CHUNK_BYTES),
        faults.truncate_after,
    );
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if !faults.ignore_range {
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    response
}

async fn content(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    sh.state.count_request(FaultEndpoint::Content);
    if !authorized(&headers, &sh.config.api_key) {
        return unauthorized();
    }
    let task = sh.state.lookup(&id, FaultEndpoint::Content);
    let faults = sh.state.request_faults(
        FaultEndpoint::Content,
        task.as_ref().map(|t| t.spec.prompt.as_str()),
    );
    if let Some(answer) = apply_request_faults(&faults, &conn).await {
        return answer;
    }
    let Some(task) = task else {
        return task_not_found(&id);
    };
    if let Some(answer) = unservable(&task) {
        return answer;
    }
    match task.mp4().await {
        Ok(mp4) => serve_mp4(&mp4, &headers, &faults),
        Err(err) => generation_failed(&err),
    }
}

async fn last_frame(
    State(sh): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnKill>,
    Path(id): Path<String>,
) -> Response {
    sh.state.count_request(FaultEndpoint::LastFrame);
    let task = sh.state.lookup(&id, FaultEndpoint::LastFrame);
    let faults = sh.state.request_faults(
        FaultEndpoint::LastFrame,
        task.as_ref().map(|t| t.spec.prompt.as_str()),
    );
    if let Some(answer) = apply_request_faults(&faults, &conn).await {
        return answer;
    }
    let Some(task) = task else {
        return task_not_found(&id);
    };
    if !task.spec.return_last_frame {
        return error_response(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "last_frame_not_requested",
            &format!("Video '{id}' was not created with return_last_frame: true."),
            None,
        );
    }
    if let Some(answer) = unservable(&task) {
        return answer;
    }
    let png = match task.last_frame().await {
        Ok(png) => png,
        Err(err) => return generation_failed(&err),
    };
    let len = png.len() as u64;
    let body = media_body(futures::stream::iter([png]), faults.truncate_after);
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

// ---- backdoor and fallback -----------------------------------------------------------------

async fn sim_stats(State(sh): State<Arc<Shared>>) -> Json<SimStats> {
    Json(sh.state.stats())
}

async fn sim_faults(State(sh): State<Arc<Shared>>) -> Json<Vec<FaultRule>> {
    Json(sh.state.faults())
}

async fn sim_set_faults(
    State(sh): State<Arc<Shared>>,
    Json(rules): Json<Vec<FaultRule>>,
) -> Response {
    for (i, rule) in rules.iter().enumerate() {
        if let Err(err) = rule.validate() {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_fault",
                &format!("faults[{i}]: {err}"),
                None,
            );
        }
    }
    let armed = rules.len();
    sh.state.set_faults(rules);
    Json(json!({ "armed": armed })).into_response()
}

async fn unknown_route(req: Request) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        &format!("Invalid URL ({} {})", req.method(), req.uri().path()),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_selection_follows_rfc_9110() {
        let cases: [(Option<&str>, &str); 8] = [
            (None, "full"),
            (Some("bytes=0-9"), "0-9"),
            (Some("bytes=90-"), "90-99"),
            (Some("bytes=-10"), "90-99"),
            (Some("bytes=50-500"), "50-99"),
            (Some("bytes=100-"), "416"),
            (Some("lines=1-2"), "full"),
            (Some("bytes=0-1, 5-6"), "full"),
        ];
        for (range, want) in cases {
            let got = match select_range(range, 100) {
                Selection::Full => "full".to_owned(),
                Selection::Partial {
                    start,
                    end_inclusive,
                } => format!("{start}-{end_inclusive}"),
                Selection::Unsatisfiable => "416".to_owned(),
            };
            assert_eq!(got, want, "{range:?}");
        }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_key_exact() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            authorized(&h, "k1")
        };
        assert!(with("Bearer k1"));
        assert!(with("bearer k1"));
        assert!(!with("Bearer k2"));
        assert!(!with("Basic k1"));
        assert!(!with("k1"));
        assert!(!authorized(&HeaderMap::new(), "k1"));
    }
}
