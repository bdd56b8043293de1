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

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::blob::BlobStore;
use crate::domain::ModelCatalog;
use crate::job::{FailureReason, Job, JobError, Phase, Record, TransitionError, now_ms};
use crate::store::{JobStore, Lease, LeaseEnd, OwnerRequest, Saved, StoreError};
use crate::submission::Submission;
use crate::telemetry::Metrics;
use crate::telemetry::propagation::set_parent_traceparent;
use crate::telemetry::readiness::Heartbeat;
use crate::upstream::{UpstreamClient, UpstreamError};

pub use config::{
    DEFAULT_BACKOFF_MAX_MS, DEFAULT_BACKOFF_MIN_MS, DEFAULT_BATCH, DEFAULT_FIRST_POLL_AFTER_MS,
    DEFAULT_IDLE_WAKE_MS, DEFAULT_LEASE_MS, DEFAULT_MAX_AGE_MS, DEFAULT_MAX_CONCURRENT_JOBS,
    DEFAULT_MIN_FREE_DISK_BYTES, DEFAULT_POLL_INTERVAL_MS, DEFAULT_POLL_JITTER,
    DEFAULT_SUBMIT_LEASE_MS, DISK_WAIT_MS, DispatcherConfig, MAX_RENEW_INTERVAL_MS,
    UnknownCreatePolicy,
};
pub(crate) use download::FrameHead;
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

/// Readiness watches the run loop through this.
impl Heartbeat for Dispatcher {
    fn last_beat_ms(&self) -> i64 {
        self.last_turn_ms()
    }
}

/// A step's hold on its job: the lease that fences its writes, and a signal that a cancel or
/// delete was recorded for the job (or the lease was lost): the step stops where it safely
/// can, and its next write applies the request.
struct Owned {
    lease: Lease,
    stop: CancellationToken,
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
            // A finished step keeps its whole task (the size of its future, kilobytes) until it
            // is joined: join every finished one each turn, not one per turn, or with thousands
            // of jobs in flight they pile up faster than turns take them (scenario 3 held
            // ~200 MB of finished steps when a turn's claim waited for a commit).
            while tasks.try_join_next().is_some() {}
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

    /// Claims due jobs nobody owns (at most the free slots) and starts a step for each. The
    /// claim is in the store, so the same job is never advanced twice at once, by this process
    /// or another.
    async fn spawn_due(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> Result<usize, StoreError> {
        let free = u32::try_from(self.slots.available_permits()).unwrap_or(u32::MAX);
        if free == 0 {
            return Ok(0);
        }
        let now = now_ms();
        let (lease, due) = self
            .store
            .claim_due(
                now,
                now + self.config.lease_ms as i64,
                free.min(self.config.batch),
            )
            .await?;
        let mut spawned = 0;
        for job in due {
            // Only this loop takes slots, and it claimed no more than were free.
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                tracing::warn!(job_id = %job.id, "no free slot for a claimed job; it is taken again when its lease ends");
                continue;
            };
            spawned += 1;
            let this = Arc::clone(self);
            let owned = Owned {
                lease: lease.clone(),
                stop: CancellationToken::new(),
            };
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
                    let step = this.advance(job, &owned);
                    let renewal = this.renew_while_running(&id, &owned);
                    let result = tokio::select! {
                        result = step => result,
                        never = renewal => match never {},
                    };
                    if let Err(e) = result {
                        this.after_failed_step(&id, &owned, e).await;
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        Ok(spawned)
    }

    /// Keeps a running step's lease alive, and signals the step when a cancel or delete is
    /// recorded for its job or the lease is lost. Runs until the step ends (it is dropped then).
    async fn renew_while_running(&self, id: &str, owned: &Owned) -> std::convert::Infallible {
        let every =
            Duration::from_millis((self.config.lease_ms / 3).clamp(1, MAX_RENEW_INTERVAL_MS));
        loop {
            tokio::time::sleep(every).await;
            let until = now_ms() + self.config.lease_ms as i64;
            match self.store.renew(id, &owned.lease, until).await {
                Ok(None) => {}
                Ok(Some(request)) => {
                    tracing::debug!(job_id = %id, request = request.as_str(), "a request was recorded for a running step");
                    owned.stop.cancel();
                }
                Err(StoreError::LeaseLost(_)) => owned.stop.cancel(),
                Err(e) => {
                    tracing::warn!(job_id = %id, error = %e, "could not renew the lease of a running step");
                }
            }
        }
    }

    /// A step stopped early. A local failure (a file that cannot be opened, descriptors used
    /// up, a stored record that cannot be read) backs off like an upstream error: the job is
    /// looked at again after the exponential backoff, with one log line per try, never in a
    /// loop. A lost lease or a store that cannot record the backoff leaves the job to the end
    /// of its lease, which is then its backoff.
    async fn after_failed_step(&self, id: &str, owned: &Owned, error: StepError) {
        if let StepError::Store(StoreError::LeaseLost(_) | StoreError::VersionConflict { .. }) =
            error
        {
            tracing::info!(job_id = %id, error = %error, "dispatcher step stopped: another owner holds the job now");
            return;
        }
        let backed_off = async {
            let mut job = self
                .store
                .get(id)
                .await?
                .ok_or_else(|| StepError::Local(format!("job {id} is gone")))?;
            if job.is_terminal() {
                return Ok(None);
            }
            let attempts = job.attempts() + 1;
            let delay = self.backoff(attempts);
            let now = now_ms();
            let record = job.retry_later(now, now + delay as i64)?;
            self.save(owned, job, record, LeaseEnd::Release).await?;
            Ok::<_, StepError>(Some((attempts, delay)))
        }
        .await;
        match backed_off {
            Ok(Some((attempts, delay_ms))) => {
                self.metrics.retry("local");
                tracing::warn!(job_id = %id, error = %error, attempts, delay_ms, "dispatcher step failed here (not upstream); trying again after the backoff");
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(job_id = %id, error = %error, backoff_error = %e, "dispatcher step failed and its backoff could not be recorded; the job is taken again when its lease ends");
            }
        }
    }

    async fn advance(&self, job: Job, owned: &Owned) -> Result<(), StepError> {
        if job.is_deleted() || job.is_terminal() {
            let mut job = job;
            job.settle();
            self.save(owned, job, Record::Quiet, LeaseEnd::Release)
                .await?;
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
            self.fail(owned, job, FailureReason::JobMaxAge, msg, true, None)
                .await?;
            return Ok(());
        }
        match job.phase() {
            Phase::Pending => self.submit(job, owned).await,
            Phase::Submitting => {
                self.unknown_create(
                    owned,
                    job,
                    "vidgate stopped while the create request was in flight (crash or restart)"
                        .into(),
                    None,
                )
                .await
            }
            Phase::Polling => self.poll(job, owned).await,
            Phase::Downloading => self.download(job, owned).await,
            Phase::Finished => Ok(()),
        }
    }

    /// The job's accepted request, read from the store and decoded (once per step).
    async fn submission_of(&self, job: &Job) -> Result<Submission, StepError> {
        let stored = self
            .store
            .submission(&job.id)
            .await?
            .ok_or_else(|| StepError::Local(format!("job {} has no stored request", job.id)))?;
        Submission::decode(&stored, &self.catalog)
            .map_err(|e| StepError::Local(format!("job {}: {e}", job.id)))
    }

    async fn fail(
        &self,
        owned: &Owned,
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
        self.fail_with(owned, job, error).await
    }

    async fn fail_with(&self, owned: &Owned, job: Job, error: JobError) -> Result<Job, StepError> {
        let mut job = job;
        tracing::info!(job_id = %job.id, reason = error.reason.as_str(), message = %error.message, "job failed");
        let record = job.fail(now_ms(), error)?;
        Ok(self.save(owned, job, record, LeaseEnd::Release).await?.job)
    }

    /// The owner's write of `job`, fenced by its lease. A cancel or delete recorded while the
    /// step ran is applied in the same commit: the returned job says how it ended.
    async fn save(
        &self,
        owned: &Owned,
        job: Job,
        record: Record,
        end: LeaseEnd,
    ) -> Result<Saved, StoreError> {
        let ends = record == Record::Event && job.is_terminal();
        // The end of the job: its own span, and the finished-job metrics once committed.
        let span = if ends {
            tracing::info_span!(
                "vidgate.complete",
                otel.kind = "internal",
                vidgate.job.id = %job.id,
                vidgate.job.outcome = job.status().as_str(),
                vidgate.job.reason = job.error().map_or("none", |e| e.reason.as_str()),
            )
        } else {
            tracing::Span::none()
        };
        let saved = self
            .save_while_owned(owned, job, record, end)
            .instrument(span)
            .await?;
        if let Some(request) = saved.applied {
            tracing::info!(job_id = %saved.job.id, request = request.as_str(), status = saved.job.status().as_str(), "request applied by the job's owner");
            if request == OwnerRequest::Delete {
                for _ in 0..self.blobs.delete_content(&saved.job).await {
                    self.metrics.blob_removed("deleted");
                }
            }
        }
        if ends || (saved.applied.is_some() && saved.job.is_terminal()) {
            self.metrics.job_finished(&saved.job);
        }
        Ok(saved)
    }
}

impl Dispatcher {
    /// An owner's write, tried again while the store is unavailable (a database restarting, a
    /// dropped connection), for at most `lease_ms`: the step's result (an upstream id, a
    /// finished download) is recorded when the store is back instead of being dropped and
    /// redone after the lease. Safe to repeat: the write is fenced by the lease and the job's
    /// version, so a write that did commit before its answer was lost makes the repeat fail
    /// (`VersionConflict`, `LeaseLost`) and the step stop, as any lost write does.
    async fn save_while_owned(
        &self,
        owned: &Owned,
        job: Job,
        record: Record,
        end: LeaseEnd,
    ) -> Result<Saved, StoreError> {
        let give_up = tokio::time::Instant::now() + Duration::from_millis(self.config.lease_ms);
        let mut delay = SAVE_RETRY_MIN;
        let mut warned = false;
        loop {
            match self
                .store
                .save(&owned.lease, job.clone(), record, end)
                .await
            {
                Err(StoreError::Unavailable(why))
                    if tokio::time::Instant::now() + delay < give_up
                        && !owned.stop.is_cancelled() =>
                {
                    if !warned {
                        tracing::warn!(job_id = %job.id, error = %why, "the store is unavailable; recording this step's result again until it is back");
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(SAVE_RETRY_MAX);
                }
                other => return other,
            }
        }
    }
}

/// First wait before an owner's write is tried again on an unavailable store.
const SAVE_RETRY_MIN: Duration = Duration::from_millis(50);
/// Longest wait between those tries.
const SAVE_RETRY_MAX: Duration = Duration::from_secs(2);

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
