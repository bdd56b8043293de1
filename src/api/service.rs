//! `vidgate.v1.VideoService`: parse at the edge, hand work to the store and the dispatcher,
//! map every error once (`ApiError` -> `Status`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{Authenticator, Tenant};
use super::error::ApiError;
use crate::blob::{BlobError, BlobStore};
use crate::convert;
use crate::dispatcher::{DEFAULT_MAX_AGE_MS, Dispatcher};
use crate::domain::{FieldViolation, ModelCatalog, ValidationError, VideoSpec};
use crate::events::{Feed, FeedFilter, FeedItem, FeedRequest};
use crate::job::{Accepted, Job, JobStatus, NewJob, RetryRefusal, new_job_id, now_ms};
use crate::pb;
use crate::pb::video_service_server::VideoService;
use crate::store::{CreateOutcome, JobStore, ListQuery, OwnerRequest, RequestOutcome, StoreError};
use crate::telemetry::Metrics;
use crate::telemetry::propagation::traceparent_of;
use tracing::Instrument;

/// AIP-158: page size when the caller gives 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// AIP-158: larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Longest `request_id` accepted (AIP-155 suggests UUIDs; this leaves room for other schemes).
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Most labels on one video.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY_CHARS: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_CHARS: usize = 256;
/// Messages buffered per server stream; past this the producer waits for the client.
pub const STREAM_BUFFER: usize = 32;
/// Messages buffered per stream that carries video bytes (`DownloadVideo`, watch and subscribe
/// with `include_content`): 2 chunks (128 KiB at the default chunk size) per stream. With 32,
/// 100 watchers of one video held ~350 MB while their clients were slower than the disk; with
/// 4, ~95 MB; with 2, ~70 MB at the same throughput, since chunks in the page cache are read
/// without a thread hop (the benchmark harness's `watch` scenario, BENCHMARKS.md).
pub const CONTENT_STREAM_BUFFER: usize = 2;
/// Longest wait of `CancelVideo`/`DeleteVideo` for a job's owner to apply the request. The
/// owner learns of it within [`crate::dispatcher::MAX_RENEW_INTERVAL_MS`]; past this the request stays recorded and
/// the caller gets `UNAVAILABLE` with a retry delay.
pub const REQUEST_WAIT: Duration = Duration::from_secs(30);
/// Reads of a job by one `RetryVideo`: the first, and one more after a concurrent change. A
/// failed job has no owner racing it, so a conflict means another caller retried or deleted it;
/// judging it once more answers that caller's change (refused, or NOT_FOUND) instead of looping.
const RETRY_VIDEO_READS: u32 = 2;

/// The service.
#[derive(Clone)]
pub struct VideoApi {
    store: Arc<dyn JobStore>,
    blobs: BlobStore,
    catalog: Arc<ModelCatalog>,
    dispatcher: Arc<Dispatcher>,
    auth: Arc<Authenticator>,
    feed: Feed,
    chunk_bytes: usize,
    metrics: Metrics,
    draining: CancellationToken,
    job_max_age_ms: u64,
}

impl VideoApi {
    /// Wires the service.
    pub fn new(
        store: Arc<dyn JobStore>,
        blobs: BlobStore,
        catalog: Arc<ModelCatalog>,
        dispatcher: Arc<Dispatcher>,
        auth: Arc<Authenticator>,
        chunk_bytes: usize,
    ) -> Self {
        let feed = Feed::new(store.clone(), blobs.clone(), chunk_bytes);
        Self {
            store,
            blobs,
            catalog,
            dispatcher,
            auth,
            feed,
            chunk_bytes,
            metrics: Metrics::disabled(),
            job_max_age_ms: DEFAULT_MAX_AGE_MS,
            draining: CancellationToken::new(),
        }
    }

    /// Once `draining` is cancelled, new calls are refused and open streams end, all with
    /// `UNAVAILABLE` / `SERVER_SHUTTING_DOWN` (streams naming where to resume).
    pub fn with_draining(mut self, draining: CancellationToken) -> Self {
        self.feed = self.feed.with_draining(draining.clone());
        self.draining = draining;
        self
    }

    /// Refuses a new call while the server stops. Calls already running finish.
    fn admit(&self) -> Result<(), ApiError> {
        if self.draining.is_cancelled() {
            return Err(ApiError::ShuttingDown {
                last_sequence: None,
                next_offset: None,
            });
        }
        Ok(())
    }

    /// The dispatcher's maximum job age (0 = none). A job past it is not retried: the
    /// dispatcher measures age from creation and would fail it again at once (`JOB_MAX_AGE`).
    pub fn with_job_max_age_ms(mut self, max_age_ms: u64) -> Self {
        self.job_max_age_ms = max_age_ms;
        self
    }

    /// Records accepted and cancelled jobs, live streams and streamed bytes into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.feed = self.feed.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    fn tenant<T>(&self, request: &Request<T>) -> Result<Tenant, ApiError> {
        self.auth.authenticate(request.metadata())
    }

    /// A job of this tenant, or NOT_FOUND (also for another tenant's job: never confirm it exists).
    async fn job_of(&self, tenant: &Tenant, id: &str) -> Result<Job, ApiError> {
        match self.store.get(id).await? {
            Some(job) if job.tenant == tenant.0 && !job.is_deleted() => Ok(job),
            _ => Err(ApiError::VideoNotFound(id.to_owned())),
        }
    }

    /// Validates and stores a create; shared by gRPC and AMQP intake. Returns the job and
    /// whether it is new (false: an idempotent repeat of an existing job).
    pub async fn accept(
        &self,
        tenant: &Tenant,
        request: pb::CreateVideoRequest,
        origin: IntakeOrigin,
    ) -> Result<(Job, bool), ApiError> {
        let mut extra = envelope_violations(&request);
        let spec = convert::to_domain(&request).and_then(|r| VideoSpec::parse(r, &self.catalog));
        match spec {
            Ok(_) if extra.is_empty() => {}
            Ok(_) => {
                return Err(ValidationError::Invalid {
                    model: request.model.clone(),
                    violations: extra,
                }
                .into());
            }
            Err(ValidationError::Invalid { model, violations }) => {
                extra.extend(violations);
                return Err(ValidationError::Invalid {
                    model,
                    violations: extra,
                }
                .into());
            }
            Err(unknown) if extra.is_empty() => return Err(unknown.into()),
            Err(unknown) => {
                extra.extend(unknown.field_violations());
                return Err(ValidationError::Invalid {
                    model: request.model.clone(),
                    violations: extra,
                }
                .into());
            }
        }
        let job = Job::accepted(
            Accepted {
                id: new_job_id(),
                tenant: tenant.0.clone(),
                request_id: (!request.request_id.is_empty()).then(|| request.request_id.clone()),
                fingerprint: convert::fingerprint(&request),
                model: request.model.clone(),
                labels: request.labels.clone(),
                request: convert::strip_inputs(&request).encode_to_vec().into(),
                reply_to: origin.reply_to,
                correlation_id: origin.correlation_id,
                // The intake span's own context (a child of the caller's), so every later step
                // of the job joins this trace; the caller's when no spans are recorded.
                trace_context: traceparent_of(&tracing::Span::current()).or(origin.trace_context),
            },
            now_ms(),
        );
        // The durable insert (database client span, OpenTelemetry conventions).
        let insert = tracing::info_span!(
            "job insert",
            otel.name = "INSERT jobs",
            otel.kind = "client",
            db.system.name = "sqlite",
            db.operation.name = "INSERT",
            db.collection.name = "jobs",
            vidgate.job.id = %job.id,
        );
        let outcome = self
            .store
            .create(NewJob {
                job,
                submission: request.encode_to_vec().into(),
            })
            .instrument(insert)
            .await?;
        match outcome {
            CreateOutcome::Created(job) => {
                tracing::info!(job_id = %job.id, tenant = %job.tenant, model = %job.model, "video accepted");
                self.metrics
                    .job_accepted(origin.intake.as_str(), &job.model);
                self.dispatcher.wake();
                Ok((job, true))
            }
            CreateOutcome::Existing(job) => Ok((job, false)),
        }
    }

    /// `CancelVideo`: one outcome, and the caller is told which: the job cancelled, or
    /// `VIDEO_ALREADY_FINISHED` naming how it ended first.
    async fn cancel(&self, tenant: &Tenant, id: &str) -> Result<Job, ApiError> {
        let (job, applied) = self.request(tenant, id, OwnerRequest::Cancel).await?;
        if !applied {
            return Err(ApiError::VideoAlreadyFinished {
                id: id.to_owned(),
                status: job.status().as_str(),
            });
        }
        Ok(job)
    }

    /// `DeleteVideo`: the job (cancelled first if it runs) leaves every listing, its key is
    /// freed, and its stored content is removed.
    async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), ApiError> {
        let (job, _) = self.request(tenant, id, OwnerRequest::Delete).await?;
        if let Some(c) = job.content() {
            for key in std::iter::once(c.blob_key.as_str()).chain(c.last_frame_key.as_deref()) {
                if let Err(e) = self.blobs.delete(key).await {
                    tracing::warn!(job_id = %id, error = %e, "stored content not removed");
                }
            }
        }
        Ok(())
    }

    /// Records `request` for the job's owner in one write, or applies it at once when nobody
    /// owns the job, and returns the job as the request left it (or as it ended first) with
    /// whether the request took. While
    /// the job is owned, waits for the owner to apply it (it does at its next write, at most
    /// [`crate::dispatcher::MAX_RENEW_INTERVAL_MS`] away) or for its lease to end (then applies it itself); at
    /// most [`REQUEST_WAIT`], after which the request stays recorded and the caller is told to
    /// retry (asking again is harmless).
    async fn request(
        &self,
        tenant: &Tenant,
        id: &str,
        request: OwnerRequest,
    ) -> Result<(Job, bool), ApiError> {
        // Subscribed before the request, so the owner's event cannot be missed.
        let mut events = self.store.subscribe();
        let deadline = tokio::time::Instant::now() + REQUEST_WAIT;
        loop {
            let lease_until_ms = match self.store.request(id, &tenant.0, request, now_ms()).await? {
                RequestOutcome::Applied(job) => {
                    tracing::info!(job_id = %job.id, request = request.as_str(), "request applied; the upstream task, if any, may still run");
                    if job.is_terminal() {
                        self.metrics.job_finished(&job);
                    }
                    return Ok((job, true));
                }
                RequestOutcome::Refused(job) => return Ok((job, false)),
                RequestOutcome::Recorded { lease_until_ms, .. } => lease_until_ms,
            };
            // Until the owner applies it (its event), or its lease ends.
            let lease_end = tokio::time::Instant::now()
                + Duration::from_millis(u64::try_from(lease_until_ms - now_ms()).unwrap_or(0));
            let wait_until = lease_end.min(deadline);
            loop {
                let settled = tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) if event.job_id == id => resolves(&event.job, request),
                        Ok(_) => false,
                        // Fell behind the broadcast: read the job itself below.
                        Err(_) => {
                            events = self.store.subscribe();
                            true
                        }
                    },
                    _ = tokio::time::sleep_until(wait_until) => true,
                };
                if !settled {
                    continue;
                }
                let job = match self.store.get(id).await? {
                    Some(job) if job.tenant == tenant.0 => job,
                    _ => return Err(ApiError::VideoNotFound(id.to_owned())),
                };
                if resolves(&job, request) {
                    // Applied by the owner, unless the job ended some other way first.
                    let applied = match request {
                        OwnerRequest::Cancel => job.status() == JobStatus::Cancelled,
                        OwnerRequest::Delete => true,
                    };
                    return Ok((job, applied));
                }
                if tokio::time::Instant::now() >= wait_until {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::RequestPending {
                    id: id.to_owned(),
                    request: request.as_str(),
                });
            }
        }
    }

    /// `RetryVideo`: puts a retryable failed job back to pending on its id and stored request,
    /// in one conditional write (with one event) on the version read.
    async fn retry(
        &self,
        tenant: &Tenant,
        id: &str,
        accept_possible_duplicate_charge: bool,
    ) -> Result<Job, ApiError> {
        for _ in 0..RETRY_VIDEO_READS {
            let mut job = self.job_of(tenant, id).await?;
            let now = now_ms();
            self.check_retry(&job, accept_possible_duplicate_charge, now)?;
            let status = job.status().as_str();
            let record = job
                .reopen_for_retry(now)
                .map_err(|refusal| not_retryable(id, status, refusal))?;
            // The new attempt's steps join the trace of the call that asked for it; the
            // creating call's trace ended with the failure.
            if let Some(context) = traceparent_of(&tracing::Span::current()) {
                job.trace_context = Some(context);
            }
            match self.store.update(job, record).await {
                Ok(job) => {
                    let earlier = job.previous_attempts().last();
                    tracing::warn!(
                        job_id = %job.id,
                        attempt = job.previous_attempts().len() + 1,
                        earlier_upstream_id = earlier.and_then(|a| a.upstream_id.as_deref()).unwrap_or(""),
                        earlier_reason = earlier.and_then(|a| a.error.as_ref()).map_or("", |e| e.reason.as_str()),
                        "video sent again at the caller's request; the earlier attempt may also be billed"
                    );
                    self.dispatcher.wake();
                    return Ok(job);
                }
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::VideoChanged(id.to_owned()))
    }

    /// Everything that stands between `job` and a retry: its state and reason, its age, then
    /// the caller's consent (asked last, so it is asked only when it is the one thing missing).
    fn check_retry(
        &self,
        job: &Job,
        accept_possible_duplicate_charge: bool,
        now: i64,
    ) -> Result<(), ApiError> {
        let status = job.status().as_str();
        if let Some(refusal) = job.retry_refusal() {
            return Err(not_retryable(&job.id, status, refusal));
        }
        let video_reason = job.error().map(|e| e.reason.as_str());
        let age_ms = now.saturating_sub(job.create_time_ms);
        if self.job_max_age_ms > 0 && age_ms > self.job_max_age_ms as i64 {
            return Err(ApiError::VideoNotRetryable {
                id: job.id.clone(),
                status,
                video_reason,
                why: format!(
                    "it failed with {} but is {} min old, past the maximum job age ({} min), so the dispatcher would fail it again at once with JOB_MAX_AGE; create a new video with the same request instead",
                    video_reason.unwrap_or("no recorded reason"),
                    age_ms / 60_000,
                    self.job_max_age_ms / 60_000
                ),
            });
        }
        if !accept_possible_duplicate_charge {
            return Err(ApiError::DuplicateChargeNotAccepted {
                id: job.id.clone(),
                video_reason: video_reason.unwrap_or("no recorded reason"),
            });
        }
        Ok(())
    }
}

/// The refusal of a retry, in the API's words.
fn not_retryable(id: &str, status: &'static str, refusal: RetryRefusal) -> ApiError {
    let (video_reason, why) = match refusal {
        RetryRefusal::NotFailed(s @ (JobStatus::Completed | JobStatus::Cancelled)) => {
            (None, format!("it is {}", s.as_str()))
        }
        RetryRefusal::NotFailed(s) => (None, format!("it is {}, not failed", s.as_str())),
        RetryRefusal::NotRetryable(reason) => (
            Some(reason.as_str()),
            format!(
                "it failed with {}, which is not retryable (its error.retryable is false)",
                reason.as_str()
            ),
        ),
    };
    ApiError::VideoNotRetryable {
        id: id.to_owned(),
        status,
        video_reason,
        why,
    }
}

/// Whether `job` shows `request` settled: a cancel by any end of the job (cancelled, or
/// finished first), a delete by the job's deletion.
fn resolves(job: &Job, request: OwnerRequest) -> bool {
    match request {
        OwnerRequest::Cancel => job.is_terminal(),
        OwnerRequest::Delete => job.is_deleted(),
    }
}

/// Which intake took a create.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Intake {
    /// `CreateVideo` over gRPC.
    #[default]
    Grpc,
    /// A message on the AMQP jobs queue.
    Amqp,
}

impl Intake {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Amqp => "amqp",
        }
    }
}

/// Where a create came from, kept on the job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntakeOrigin {
    /// Which intake.
    pub intake: Intake,
    /// W3C trace context of the request.
    pub trace_context: Option<String>,
    /// AMQP `reply_to`: the job's events are also published there.
    pub reply_to: Option<String>,
    /// AMQP `correlation_id` for those replies.
    pub correlation_id: Option<String>,
}

/// Rules of the envelope (not of the upstream contract): request_id and labels.
fn envelope_violations(request: &pb::CreateVideoRequest) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let rid = &request.request_id;
    if rid.chars().count() > MAX_REQUEST_ID_CHARS || rid.chars().any(char::is_control) {
        out.push(violation(
            "request_id",
            format!("request_id must be at most {MAX_REQUEST_ID_CHARS} characters without control characters (a UUID is a good choice)"),
        ));
    }
    if request.labels.len() > MAX_LABELS {
        out.push(violation(
            "labels",
            format!("at most {MAX_LABELS} labels (got {})", request.labels.len()),
        ));
    }
    for (k, v) in &request.labels {
        let key_ok = !k.is_empty()
            && k.chars().count() <= MAX_LABEL_KEY_CHARS
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !key_ok {
            out.push(violation(
                format!("labels[{k}]"),
                format!("label keys must be 1-{MAX_LABEL_KEY_CHARS} characters of a-z, A-Z, 0-9, '-', '_', '.', '/'"),
            ));
        }
        if v.chars().count() > MAX_LABEL_VALUE_CHARS || v.chars().any(char::is_control) {
            out.push(violation(
                format!("labels[{k}]"),
                format!("label values must be at most {MAX_LABEL_VALUE_CHARS} characters without control characters"),
            ));
        }
    }
    out
}

/// Rule id of envelope checks (request_id, labels, paging): vidgate's own.
pub const RULE_ENVELOPE: &str = "VG-ENVELOPE";

fn violation(field: impl Into<String>, description: String) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        rule: RULE_ENVELOPE.to_owned(),
        description,
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PageToken {
    t: i64,
    i: String,
    f: String,
}

fn filter_hash(req: &pb::ListVideosRequest) -> String {
    let mut h = Sha256::new();
    for s in &req.statuses {
        h.update(s.to_le_bytes());
    }
    h.update(b"|");
    h.update(req.model.as_bytes());
    for (k, v) in &req.labels {
        h.update(b"|");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

fn bad_token() -> ApiError {
    ApiError::InvalidArgument {
        field: "page_token",
        description:
            "page_token must be a next_page_token this server returned for the same filters".into(),
    }
}

type ApiStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl VideoService for VideoApi {
    async fn create_video(
        &self,
        request: Request<pb::CreateVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let (job, _) = self
            .accept(&tenant, request.into_inner(), IntakeOrigin::default())
            .await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn get_video(
        &self,
        request: Request<pb::GetVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let job = self.job_of(&tenant, &request.get_ref().id).await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn list_videos(
        &self,
        request: Request<pb::ListVideosRequest>,
    ) -> Result<Response<pb::ListVideosResponse>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let req = request.into_inner();
        let page_size = match req.page_size {
            n if n < 0 => {
                return Err(ApiError::InvalidArgument {
                    field: "page_size",
                    description: format!(
                        "page_size must be 0 (= {DEFAULT_PAGE_SIZE}) or positive (got {n})"
                    ),
                }
                .into());
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let statuses = parse_statuses(&req.statuses)?;

        let filters = filter_hash(&req);
        let after = if req.page_token.is_empty() {
            None
        } else {
            let raw = URL_SAFE_NO_PAD
                .decode(req.page_token.as_bytes())
                .map_err(|_| bad_token())?;
            let token: PageToken = serde_json::from_slice(&raw).map_err(|_| bad_token())?;
            if token.f != filters {
                return Err(bad_token().into());
            }
            Some((token.t, token.i))
        };
        let mut jobs = self
            .store
            .list(&ListQuery {
                tenant: tenant.0,
                statuses,
                model: (!req.model.is_empty()).then(|| req.model.clone()),
                labels: req.labels.clone(),
                after,
                limit: page_size + 1,
            })
            .await
            .map_err(ApiError::from)?;
        let next_page_token = if jobs.len() > page_size as usize {
            jobs.truncate(page_size as usize);
            let last = jobs
                .last()
                .ok_or_else(|| ApiError::Internal("empty page".into()))?;
            let token = PageToken {
                t: last.create_time_ms,
                i: last.id.clone(),
                f: filters,
            };
            let json = serde_json::to_vec(&token).map_err(|e| ApiError::Internal(e.to_string()))?;
            URL_SAFE_NO_PAD.encode(json)
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListVideosResponse {
            videos: jobs.iter().map(convert::video).collect(),
            next_page_token,
        }))
    }

    async fn cancel_video(
        &self,
        request: Request<pb::CancelVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let job = self.cancel(&tenant, &request.get_ref().id).await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn retry_video(
        &self,
        request: Request<pb::RetryVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        let tenant = self.tenant(&request)?;
        let req = request.get_ref();
        let job = self
            .retry(&tenant, &req.id, req.accept_possible_duplicate_charge)
            .await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn delete_video(
        &self,
        request: Request<pb::DeleteVideoRequest>,
    ) -> Result<Response<pb::DeleteVideoResponse>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        self.delete(&tenant, &request.get_ref().id).await?;
        Ok(Response::new(pb::DeleteVideoResponse {}))
    }

    type DownloadVideoStream = ApiStream<pb::ContentChunk>;

    async fn download_video(
        &self,
        request: Request<pb::DownloadVideoRequest>,
    ) -> Result<Response<Self::DownloadVideoStream>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let req = request.into_inner();
        let job = self.job_of(&tenant, &req.id).await?;
        if req.read_offset < 0 || req.read_limit < 0 {
            return Err(ApiError::InvalidArgument {
                field: if req.read_offset < 0 {
                    "read_offset"
                } else {
                    "read_limit"
                },
                description: "read_offset and read_limit must be 0 or positive".into(),
            }
            .into());
        }
        let content = match job.content() {
            Some(c) => c.clone(),
            _ => {
                return Err(ApiError::VideoNotCompleted {
                    id: job.id.clone(),
                    status: job.status().as_str(),
                }
                .into());
            }
        };
        let (key, size) = match pb::ContentVariant::try_from(req.variant) {
            Ok(pb::ContentVariant::Video) => (content.blob_key.clone(), content.size_bytes),
            Ok(pb::ContentVariant::LastFrame) => {
                match (&content.last_frame_key, content.last_frame_size) {
                    (Some(k), Some(s)) => (k.clone(), s),
                    _ => return Err(ApiError::LastFrameNotAvailable(job.id.clone()).into()),
                }
            }
            Err(_) => {
                return Err(ApiError::InvalidArgument {
                    field: "variant",
                    description: format!(
                        "variant {} is not VIDEO (0) or LAST_FRAME (1)",
                        req.variant
                    ),
                }
                .into());
            }
        };
        let offset = req.read_offset as u64;
        if offset > size {
            return Err(ApiError::OffsetOutOfRange { offset, size }.into());
        }
        let end = if req.read_limit == 0 {
            size
        } else {
            offset.saturating_add(req.read_limit as u64).min(size)
        };
        let (tx, rx) = mpsc::channel(CONTENT_STREAM_BUFFER);
        if offset < end {
            let mut chunks = self
                .blobs
                .read_range(&key, offset..end, self.chunk_bytes)
                .await
                .map_err(blob_status)?;
            let metrics = self.metrics.clone();
            let draining = self.draining.clone();
            tokio::spawn(async move {
                let _live = metrics.subscriber("DownloadVideo");
                let mut at = offset as i64;
                // A stop ends the download where it stands (reading, or waiting for a slow
                // client), naming the offset to resume from: an open stream must not hold the
                // server's shutdown.
                let mut stopped = false;
                loop {
                    let chunk = tokio::select! {
                        biased;
                        _ = draining.cancelled() => {
                            stopped = true;
                            break;
                        }
                        chunk = chunks.next() => chunk,
                    };
                    let Some(chunk) = chunk else {
                        break;
                    };
                    let (item, len) = match chunk {
                        Ok(data) => {
                            let len = data.len();
                            (Ok(pb::ContentChunk { offset: at, data }), len)
                        }
                        Err(e) => (Err(blob_status(e)), 0),
                    };
                    let failed = item.is_err();
                    let sent = tokio::select! {
                        biased;
                        _ = draining.cancelled() => {
                            stopped = true;
                            break;
                        }
                        sent = tx.send(item) => sent.is_ok(),
                    };
                    if !sent || failed {
                        break;
                    }
                    at += len as i64;
                    metrics.stream_bytes("DownloadVideo", len as u64);
                }
                if stopped {
                    let stop = ApiError::ShuttingDown {
                        last_sequence: None,
                        next_offset: Some(at),
                    };
                    let _ = tx.send(Err(stop.into())).await;
                }
            });
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchVideoStream = ApiStream<pb::VideoEvent>;

    async fn watch_video(
        &self,
        request: Request<pb::WatchVideoRequest>,
    ) -> Result<Response<Self::WatchVideoStream>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let req = request.into_inner();
        // Fail fast (before the stream starts) for an unknown or foreign id.
        self.job_of(&tenant, &req.id).await?;
        if req.after_sequence < 0 {
            return Err(ApiError::InvalidArgument {
                field: "after_sequence",
                description: "after_sequence must be 0 (from now) or a sequence this stream sent"
                    .into(),
            }
            .into());
        }
        let feed_req = FeedRequest {
            filter: FeedFilter {
                tenant: tenant.0,
                job_id: Some(req.id),
                ..FeedFilter::default()
            },
            after_sequence: req.after_sequence,
            include_content: req.include_content,
            until_terminal: true,
            now_sequence: None,
        };
        Ok(Response::new(self.spawn_feed(feed_req)))
    }

    type SubscribeStream = ApiStream<pb::VideoEvent>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let req = request.into_inner();
        if req.after_sequence < 0 {
            return Err(ApiError::InvalidArgument {
                field: "after_sequence",
                description: "after_sequence must be 0 (from now) or a sequence this stream sent"
                    .into(),
            }
            .into());
        }
        let statuses = parse_statuses(&req.statuses)?;
        // "From now" is when the call arrived, not when the stream's task first runs: a create
        // committed in between must not be skipped.
        let now_sequence = if req.after_sequence == 0 {
            Some(self.store.latest_sequence().await.map_err(ApiError::from)?)
        } else {
            None
        };

        let feed_req = FeedRequest {
            filter: FeedFilter {
                tenant: tenant.0,
                job_id: None,
                models: req.models,
                labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
                statuses,
            },
            after_sequence: req.after_sequence,
            include_content: req.include_content,
            until_terminal: false,
            now_sequence,
        };
        Ok(Response::new(self.spawn_feed(feed_req)))
    }
}

impl VideoApi {
    fn spawn_feed(&self, request: FeedRequest) -> ReceiverStream<FeedItem> {
        let buffer = if request.include_content {
            CONTENT_STREAM_BUFFER
        } else {
            STREAM_BUFFER
        };
        let (tx, rx) = mpsc::channel(buffer);
        let feed = self.feed.clone();
        tokio::spawn(async move { feed.pump(request, tx).await });
        ReceiverStream::new(rx)
    }
}

/// Wire statuses to job statuses; UNSPECIFIED or unknown numbers are refused by position.
fn parse_statuses(statuses: &[i32]) -> Result<Vec<JobStatus>, ApiError> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, s)| {
            pb::VideoStatus::try_from(*s)
                .ok()
                .and_then(convert::status_from_pb)
                .ok_or_else(|| ApiError::InvalidArgument {
                    field: "statuses",
                    description: format!(
                        "statuses[{i}] = {s} is not a video status (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)"
                    ),
                })
        })
        .collect()
}

fn blob_status(e: BlobError) -> Status {
    match e {
        BlobError::OutOfRange { offset, size, .. } => {
            ApiError::OffsetOutOfRange { offset, size }.into()
        }
        other => {
            let reference = uuid::Uuid::now_v7().simple().to_string();
            tracing::error!(error = %other, reference = %reference, "stored content unreadable");
            ApiError::Internal(reference).into()
        }
    }
}
