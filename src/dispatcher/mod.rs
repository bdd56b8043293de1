//! The dispatcher owns job progress: it submits each accepted job once, polls it on a polite
//! schedule, downloads and verifies the result once, and records every outcome in the store.
//!
//! Everything is driven from the store: a job's `next_action_ms` says when to look at it next,
//! so a restart resumes exactly where the last process stopped. Tests drive it with
//! [`Dispatcher::step`]; production runs [`Dispatcher::run`].

mod config;
mod download;
mod poll;
mod schedule;
mod submit;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::blob::BlobStore;
use crate::convert;
use crate::domain::{ModelCatalog, VideoSpec};
use crate::job::{FailureReason, Job, JobError, Phase, Record, TransitionError, now_ms};
use crate::pb;
use crate::store::{JobStore, StoreError};
use crate::telemetry::Metrics;
use crate::telemetry::propagation::set_parent_traceparent;
use crate::upstream::{UpstreamClient, UpstreamError};

pub use config::{
    DEFAULT_BACKOFF_MAX_MS, DEFAULT_BACKOFF_MIN_MS, DEFAULT_BATCH, DEFAULT_FIRST_POLL_AFTER_MS,
    DEFAULT_IDLE_WAKE_MS, DEFAULT_MAX_AGE_MS, DEFAULT_MAX_CONCURRENT_JOBS,
    DEFAULT_POLL_INTERVAL_MS, DEFAULT_POLL_JITTER, DEFAULT_SUBMIT_LEASE_MS, DispatcherConfig,
    UnknownCreatePolicy,
};
pub use download::MAX_LAST_FRAME_BYTES;
pub use schedule::{backoff_ms, jitter};

/// What one [`Dispatcher::step`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Jobs advanced.
    pub advanced: usize,
}

/// The dispatcher. Cheap to share (`Arc`).
pub struct Dispatcher {
    store: Arc<dyn JobStore>,
    client: UpstreamClient,
    blobs: BlobStore,
    catalog: Arc<ModelCatalog>,
    config: DispatcherConfig,
    in_flight: Mutex<Flight>,
    slots: Arc<Semaphore>,
    wake: Notify,
    metrics: Metrics,
    /// When the run loop last turned (ms since the epoch; 0 = never): readiness.
    last_turn_ms: AtomicI64,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Which jobs are being advanced, and which finished a step while a read of the due list was
/// under way (that read may hold their previous row).
#[derive(Debug, Default)]
struct Flight {
    running: HashSet<String>,
    released: HashSet<String>,
    /// Reads of the due list under way.
    reads: usize,
}

/// Why a step of one job stopped early; the job stays due and is tried again.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error("{0}")]
    Local(String),
}

impl Dispatcher {
    /// Builds a dispatcher; nothing runs until [`Dispatcher::run`] or [`Dispatcher::step`].
    pub fn new(
        store: Arc<dyn JobStore>,
        client: UpstreamClient,
        blobs: BlobStore,
        catalog: Arc<ModelCatalog>,
        config: DispatcherConfig,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_concurrent_jobs.max(1)));
        Self {
            store,
            client,
            blobs,
            catalog,
            config,
            in_flight: Mutex::new(Flight::default()),
            slots,
            wake: Notify::new(),
            metrics: Metrics::disabled(),
            last_turn_ms: AtomicI64::new(0),
        }
    }

    /// Records into `metrics` (finished jobs, retries).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// When [`Dispatcher::run`]'s loop last turned (ms since the epoch; 0 if it never ran).
    pub fn last_turn_ms(&self) -> i64 {
        self.last_turn_ms.load(Ordering::Relaxed)
    }

    /// The upstream client (tests read its limiter).
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Tells the run loop there is new work (a job was accepted or cancelled).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Advances every job that is due now, once, and waits for all of them. Deterministic for
    /// tests: no timers, no background work.
    pub async fn step(self: &Arc<Self>) -> Result<StepReport, StoreError> {
        let mut tasks = JoinSet::new();
        let advanced = self.spawn_due(&mut tasks).await?;
        while tasks.join_next().await.is_some() {}
        Ok(StepReport { advanced })
    }

    /// Runs until `shutdown` is cancelled; in-flight steps finish first.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        loop {
            self.last_turn_ms.store(now_ms(), Ordering::Relaxed);
            let spawned = match self.spawn_due(&mut tasks).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher could not read due jobs; retrying");
                    0
                }
            };
            let now = now_ms();
            let idle = Duration::from_millis(self.config.idle_wake_ms.max(1));
            let sleep = match self.store.next_due_ms().await {
                Ok(Some(due)) if due > now => idle.min(Duration::from_millis((due - now) as u64)),
                // Something is due but every due job is already being worked on (or no slot
                // is free): wait for a task to finish rather than spin.
                Ok(Some(_)) if spawned == 0 => idle,
                Ok(Some(_)) => Duration::ZERO,
                Ok(None) | Err(_) => idle,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn spawn_due(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<usize, StoreError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(0);
        }
        // From before the read until every row of it is handled, the jobs whose step ends are
        // noted: the read may hold their previous row.
        self.flight().reads += 1;
        let spawned = self.spawn_from_due_read(tasks).await;
        {
            let mut flight = self.flight();
            flight.reads -= 1;
            if flight.reads == 0 {
                flight.released.clear();
            }
        }
        spawned
    }

    async fn spawn_from_due_read(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
    ) -> Result<usize, StoreError> {
        // Only as many as there are free slots, and none of those already being worked on.
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        let skip: HashSet<String> = {
            let flight = self.flight();
            flight.running.union(&flight.released).cloned().collect()
        };
        let due = self
            .store
            .due(now_ms(), free.min(self.config.batch), &skip)
            .await?;
        let mut spawned = 0;
        for job in due {
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            {
                let mut flight = self.flight();
                // A job whose step ended since the read began may be a stale row here:
                // advancing it again would call upstream once more before its save failed on
                // the version. It is read afresh on the next turn.
                if flight.released.contains(&job.id) || !flight.running.insert(job.id.clone()) {
                    continue;
                }
            }
            spawned += 1;
            let this = Arc::clone(self);
            // One span per step, a child of the job's intake span: the job's whole life is one
            // trace, also across restarts (the context is stored with the job).
            let span = tracing::info_span!(
                "vidgate.step",
                otel.name = step_name(job.phase()),
                otel.kind = "internal",
                vidgate.job.id = %job.id,
                vidgate.model = %job.model,
                vidgate.job.attempts = job.attempts(),
            );
            set_parent_traceparent(&span, job.trace_context.as_deref());
            tasks.spawn(
                async move {
                    let id = job.id.clone();
                    if let Err(e) = this.advance(job).await {
                        tracing::warn!(job_id = %id, error = %e, "dispatcher step stopped; the job stays due");
                    }
                    {
                        let mut flight = this.flight();
                        flight.running.remove(&id);
                        if flight.reads > 0 {
                            flight.released.insert(id);
                        }
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        Ok(spawned)
    }

    fn flight(&self) -> std::sync::MutexGuard<'_, Flight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn advance(&self, job: Job) -> Result<(), StepError> {
        if job.is_deleted() || job.is_terminal() {
            let mut job = job;
            job.settle();
            self.save(job, Record::Quiet).await?;
            return Ok(());
        }
        let now = now_ms();
        if self.config.max_age_ms > 0 && now - job.create_time_ms > self.config.max_age_ms as i64 {
            let age_min = (now - job.create_time_ms) / 60_000;
            let msg = format!(
                "the job is {age_min} min old, past the configured maximum age ({} min); vidgate stopped following it{}",
                self.config.max_age_ms / 60_000,
                if job.upstream_id().is_some() {
                    ". The upstream task may still finish and be billed"
                } else {
                    ""
                }
            );
            self.fail(job, FailureReason::JobMaxAge, msg, true, None)
                .await?;
            return Ok(());
        }
        match job.phase() {
            Phase::Pending => self.submit(job).await,
            Phase::Submitting => {
                self.unknown_create(
                    job,
                    "vidgate stopped while the create request was in flight (crash or restart)"
                        .into(),
                    None,
                )
                .await
            }
            Phase::Polling => self.poll(job).await,
            Phase::Downloading => self.download(job).await,
            Phase::Finished => Ok(()),
        }
    }

    async fn spec_of(&self, job: &Job) -> Result<Result<VideoSpec, String>, StepError> {
        let submission = self
            .store
            .submission(&job.id)
            .await?
            .ok_or_else(|| StepError::Local(format!("job {} has no stored request", job.id)))?;
        let request = pb::CreateVideoRequest::decode(submission.as_ref()).map_err(|e| {
            StepError::Local(format!("stored request of {} is unreadable: {e}", job.id))
        })?;
        Ok(convert::to_domain(&request)
            .and_then(|r| VideoSpec::parse(r, &self.catalog))
            .map_err(|e| e.to_string()))
    }

    async fn fail(
        &self,
        job: Job,
        reason: FailureReason,
        message: String,
        retryable: bool,
        err: Option<&UpstreamError>,
    ) -> Result<Job, StepError> {
        let error = JobError {
            reason,
            message,
            retryable,
            upstream_message: err
                .and_then(|e| e.upstream_message())
                .unwrap_or_default()
                .to_owned(),
            upstream_http_status: err.and_then(|e| e.http_status()),
        };
        self.fail_with(job, error).await
    }

    async fn fail_with(&self, job: Job, error: JobError) -> Result<Job, StepError> {
        let mut job = job;
        tracing::info!(job_id = %job.id, reason = error.reason.as_str(), message = %error.message, "job failed");
        let record = job.fail(now_ms(), error)?;
        Ok(self.save(job, record).await?)
    }

    async fn save(&self, job: Job, record: Record) -> Result<Job, StoreError> {
        if !(record == Record::Event && job.is_terminal()) {
            return self.store.update(job, record).await;
        }
        // The end of the job: its own span, and the finished-job metrics once committed.
        let span = tracing::info_span!(
            "vidgate.complete",
            otel.kind = "internal",
            vidgate.job.id = %job.id,
            vidgate.job.outcome = job.status().as_str(),
            vidgate.job.reason = job.error().map_or("none", |e| e.reason.as_str()),
        );
        let saved = self.store.update(job, record).instrument(span).await?;
        self.metrics.job_finished(&saved);
        Ok(saved)
    }
}

/// A step asked of a job whose stage cannot do it (a stored record the checks let through).
fn job_refused(job: &Job, action: &'static str) -> StepError {
    StepError::Local(format!(
        "job {} cannot {action} in phase {:?}",
        job.id,
        job.phase()
    ))
}

/// The span name of a step in `phase`.
fn step_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "vidgate.submit",
        Phase::Submitting => "vidgate.resolve_unknown_create",
        Phase::Polling => "vidgate.poll",
        Phase::Downloading => "vidgate.download",
        Phase::Finished => "vidgate.finish",
    }
}
