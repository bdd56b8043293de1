//! The application layer: what a caller may ask of its videos (accept, get, list, cancel,
//! delete, retry), whatever the transport. The gRPC service and the AMQP intake are thin
//! adapters over [`Jobs`], each mapping [`JobsError`] once to its own words (a `Status`, a
//! dead-letter reason).
//!
//! It records requests durably and wakes the dispatcher; the dispatcher, which owns a job's
//! progress, does the work.

mod envelope;
mod error;
mod list;

use crate::webhooks::target::TargetPolicy;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tracing::Instrument;

use crate::blob::BlobStore;
use crate::convert;
use crate::dispatcher::{DEFAULT_MAX_AGE_MS, Dispatcher};
use crate::domain::{ModelCatalog, Tenant, ValidationError, VideoSpec};
use crate::job::{Accepted, Job, JobStatus, NewJob, RetryRefusal, new_job_id, now_ms};
use crate::pb;
use crate::store::{CreateOutcome, JobStore, OwnerRequest, RequestOutcome, StoreError};
use crate::submission;
use crate::telemetry::Metrics;
use crate::telemetry::propagation::traceparent_of;

pub use envelope::{
    MAX_LABEL_KEY_CHARS, MAX_LABEL_VALUE_CHARS, MAX_LABELS, MAX_REQUEST_ID_CHARS, RULE_ENVELOPE,
};
pub use error::JobsError;
pub use list::{DEFAULT_PAGE_SIZE, MAX_PAGE_BYTES, MAX_PAGE_SIZE, Page, parse_statuses};
pub(crate) use list::{decode_page_token, encode_page_token, filter_hash};

/// Longest wait of `CancelVideo`/`DeleteVideo` for a job's owner to apply the request. The
/// owner learns of it within [`crate::dispatcher::MAX_RENEW_INTERVAL_MS`]; past this the
/// request stays recorded and the caller is told to ask again.
pub const REQUEST_WAIT: Duration = Duration::from_secs(30);
/// Reads of a job by one `RetryVideo`: the first, and one more after a concurrent change. A
/// failed job has no owner racing it, so a conflict means another caller retried or deleted it;
/// judging it once more answers that caller's change (refused, or NOT_FOUND) instead of looping.
const RETRY_VIDEO_READS: u32 = 2;

/// The application layer. Cheap to clone (shared parts behind `Arc`).
#[derive(Clone)]
pub struct Jobs {
    store: Arc<dyn JobStore>,
    blobs: BlobStore,
    catalog: Arc<ModelCatalog>,
    dispatcher: Arc<Dispatcher>,
    metrics: Metrics,
    job_max_age_ms: u64,
    /// Where a job's `callback_url` may point (`[webhooks]`).
    callback_policy: TargetPolicy,
}

/// The checks of a create, all at once: the envelope (request_id, labels) and the spec against
/// `catalog`, every violation collected.
pub(crate) fn validate_create(
    request: &pb::CreateVideoRequest,
    catalog: &ModelCatalog,
) -> Result<VideoSpec, ValidationError> {
    let mut extra = envelope::envelope_violations(request);
    let spec = convert::to_domain(request).and_then(|r| VideoSpec::parse(r, catalog));
    match spec {
        Ok(spec) if extra.is_empty() => Ok(spec),
        Ok(_) => Err(ValidationError::Invalid {
            model: request.model.clone(),
            violations: extra,
        }),
        Err(ValidationError::Invalid { model, violations }) => {
            extra.extend(violations);
            Err(ValidationError::Invalid {
                model,
                violations: extra,
            })
        }
        Err(unknown) if extra.is_empty() => Err(unknown),
        Err(unknown) => {
            extra.extend(unknown.field_violations());
            Err(ValidationError::Invalid {
                model: request.model.clone(),
                violations: extra,
            })
        }
    }
}

impl Jobs {
    /// Wires the layer over the store (jobs), the blobs (deleted with their video), the
    /// catalog (validation) and the dispatcher (woken on new work).
    pub fn new(
        store: Arc<dyn JobStore>,
        blobs: BlobStore,
        catalog: Arc<ModelCatalog>,
        dispatcher: Arc<Dispatcher>,
    ) -> Self {
        Self {
            store,
            blobs,
            catalog,
            dispatcher,
            metrics: Metrics::disabled(),
            job_max_age_ms: DEFAULT_MAX_AGE_MS,
            callback_policy: TargetPolicy::default(),
        }
    }

    /// Where a job's `callback_url` may point (by default: https, public addresses only).
    pub fn with_callback_policy(mut self, policy: TargetPolicy) -> Self {
        self.callback_policy = policy;
        self
    }

    /// The dispatcher's maximum job age (0 = none). A job past it is not retried: the
    /// dispatcher measures age from creation and would fail it again at once (`JOB_MAX_AGE`).
    pub fn with_job_max_age_ms(mut self, max_age_ms: u64) -> Self {
        self.job_max_age_ms = max_age_ms;
        self
    }

    /// Records accepted, cancelled and deleted running jobs into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// A job of this tenant, or NOT_FOUND (also for another tenant's job: never confirm it exists).
    pub async fn get(&self, tenant: &Tenant, id: &str) -> Result<Job, JobsError> {
        match self.store.get(id).await? {
            Some(job) if job.tenant == tenant.0 && !job.is_deleted() => Ok(job),
            _ => Err(JobsError::VideoNotFound(id.to_owned())),
        }
    }

    /// Validates and stores a create; shared by gRPC and AMQP intake. Returns the job and
    /// whether it is new (false: an idempotent repeat of an existing job).
    pub async fn accept(
        &self,
        tenant: &Tenant,
        request: pb::CreateVideoRequest,
        origin: IntakeOrigin,
    ) -> Result<(Job, bool), JobsError> {
        let spec = validate_create(&request, &self.catalog)?;
        if !request.callback_url.is_empty() {
            // Checked now (and again before each delivery: DNS can change).
            self.callback_policy
                .check("callback_url", &request.callback_url)
                .await
                .map_err(|e| JobsError::InvalidArgument {
                    field: "callback_url",
                    description: e.to_string(),
                })?;
        }
        // What the dispatcher sends: the spec just validated, not the wire request.
        let submission = submission::encode(&spec, &self.catalog)
            .map_err(|e| JobsError::internal("submission not encoded", &e))?;
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
            .create(NewJob { job, submission })
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

    /// `CancelVideo`: one outcome, and the caller is told which: the job cancelled (the
    /// upstream task, if any, may still run), or `VIDEO_ALREADY_FINISHED` naming how it ended
    /// first.
    pub async fn cancel(&self, tenant: &Tenant, id: &str) -> Result<Job, JobsError> {
        match self.request(tenant, id, OwnerRequest::Cancel).await? {
            Settled::Here(job) | Settled::ByOwner(job) => Ok(job),
            Settled::NotApplied(job) => Err(JobsError::VideoAlreadyFinished {
                id: id.to_owned(),
                status: job.status().as_str(),
            }),
        }
    }

    /// `DeleteVideo`: the job (cancelled first if it runs) leaves every listing, its
    /// request_id is free again (API.md: keys live as long as their job), and its stored
    /// content is removed.
    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<(), JobsError> {
        // An owner that applied the delete removed the content itself.
        if let Settled::Here(job) = self.request(tenant, id, OwnerRequest::Delete).await? {
            for _ in 0..self.blobs.delete_content(&job).await {
                self.metrics.blob_removed("deleted");
            }
        }
        Ok(())
    }

    /// Records `request` for the job's owner in one write, or applies it at once when nobody
    /// owns the job, and returns the job as the request left it (or as it ended first) and
    /// who applied it. While the job is owned, waits for the owner to apply it (it
    /// does at its next write, at most [`crate::dispatcher::MAX_RENEW_INTERVAL_MS`] away) or
    /// for its lease to end (then applies it itself); at most [`REQUEST_WAIT`], after which
    /// the request stays recorded and the caller is told to ask again (which is harmless).
    async fn request(
        &self,
        tenant: &Tenant,
        id: &str,
        request: OwnerRequest,
    ) -> Result<Settled, JobsError> {
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
                    return Ok(Settled::Here(job));
                }
                RequestOutcome::Refused(job) => return Ok(Settled::NotApplied(job)),
                RequestOutcome::Recorded { lease_until_ms, .. } => lease_until_ms,
            };
            // Until the owner applies it (its event shows it), or its lease ends.
            let lease_end = tokio::time::Instant::now()
                + Duration::from_millis(u64::try_from(lease_until_ms - now_ms()).unwrap_or(0));
            let wait_until = lease_end.min(deadline);
            loop {
                let look = tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => event.job_id == id && resolves(&event.job, request),
                        // Fell behind the broadcast: read the job itself below.
                        Err(_) => {
                            events = self.store.subscribe();
                            true
                        }
                    },
                    _ = tokio::time::sleep_until(wait_until) => true,
                };
                if !look {
                    continue;
                }
                let job = match self.store.get(id).await? {
                    Some(job) if job.tenant == tenant.0 => job,
                    _ => return Err(JobsError::VideoNotFound(id.to_owned())),
                };
                if resolves(&job, request) {
                    // Applied by the owner, unless the job ended some other way first.
                    let applied = match request {
                        OwnerRequest::Cancel => job.status() == JobStatus::Cancelled,
                        OwnerRequest::Delete => true,
                    };
                    return Ok(if applied {
                        Settled::ByOwner(job)
                    } else {
                        Settled::NotApplied(job)
                    });
                }
                if tokio::time::Instant::now() >= wait_until {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(JobsError::RequestPending {
                    id: id.to_owned(),
                    request: request.as_str(),
                });
            }
        }
    }

    /// `RetryVideo`: puts a retryable failed job back to pending on its id and stored request,
    /// in one conditional write (with one event) on the version read.
    pub async fn retry(
        &self,
        tenant: &Tenant,
        id: &str,
        accept_possible_duplicate_charge: bool,
    ) -> Result<Job, JobsError> {
        for _ in 0..RETRY_VIDEO_READS {
            let mut job = self.get(tenant, id).await?;
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
        Err(JobsError::VideoChanged(id.to_owned()))
    }

    /// Everything that stands between `job` and a retry: its state and reason, its age, then
    /// the caller's consent (asked last, so it is asked only when it is the one thing missing).
    fn check_retry(
        &self,
        job: &Job,
        accept_possible_duplicate_charge: bool,
        now: i64,
    ) -> Result<(), JobsError> {
        let status = job.status().as_str();
        if let Some(refusal) = job.retry_refusal() {
            return Err(not_retryable(&job.id, status, refusal));
        }
        let video_reason = job.error().map(|e| e.reason.as_str());
        let age_ms = now.saturating_sub(job.create_time_ms);
        if self.job_max_age_ms > 0 && age_ms > self.job_max_age_ms as i64 {
            return Err(JobsError::VideoNotRetryable {
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
            return Err(JobsError::DuplicateChargeNotAccepted {
                id: job.id.clone(),
                video_reason: video_reason.unwrap_or("no recorded reason"),
            });
        }
        Ok(())
    }
}

/// The refusal of a retry, in the caller's words.
fn not_retryable(id: &str, status: &'static str, refusal: RetryRefusal) -> JobsError {
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
    JobsError::VideoNotRetryable {
        id: id.to_owned(),
        status,
        video_reason,
        why,
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

/// How a cancel or delete ended, with the job as it left it.
enum Settled {
    /// Applied by this call (nobody owned the job).
    Here(Job),
    /// Applied by the job's owner, with its next write.
    ByOwner(Job),
    /// Not applied: the job had ended some other way first (a cancel of a finished job).
    NotApplied(Job),
}

/// Whether `job` shows `request` settled: a cancel by any end of the job (cancelled, or
/// finished first), a delete by the job's deletion.
fn resolves(job: &Job, request: OwnerRequest) -> bool {
    match request {
        OwnerRequest::Cancel => job.is_terminal(),
        OwnerRequest::Delete => job.is_deleted(),
    }
}
