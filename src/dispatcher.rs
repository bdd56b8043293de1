//! The dispatcher owns job progress: it submits each accepted job once, polls it on a polite
//! schedule, downloads and verifies the result once, and records every outcome in the store.
//!
//! Everything is driven from the store: a job's `next_action_ms` says when to look at it next,
//! so a restart resumes exactly where the last process stopped. Tests drive it with
//! [`Dispatcher::step`]; production runs [`Dispatcher::run`].

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::blob::BlobStore;
use crate::convert;
use crate::domain::{ModelCatalog, VideoSpec};
use crate::job::{
    ContentFacts, FailureReason, Job, JobError, Phase, Record, TransitionError, now_ms,
};
use crate::media;
use crate::pb;
use crate::store::{JobStore, StoreError};
use crate::telemetry::Metrics;
use crate::telemetry::propagation::set_parent_traceparent;
use crate::upstream::request::create_body;
use crate::upstream::{ContentStart, CreateFailure, UpstreamClient, UpstreamError, UpstreamState};

/// ARCHITECTURE.md: the first poll comes after an expected minimum generation time.
pub const DEFAULT_FIRST_POLL_AFTER_MS: u64 = 15_000;
/// CONTRACT.md recommends one status call every 20-30 s per task.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 20_000;
/// +-20% jitter, so jobs created together do not poll together.
pub const DEFAULT_POLL_JITTER: f64 = 0.2;
/// ARCHITECTURE.md: 5xx and timeouts back off exponentially from 2 s ...
pub const DEFAULT_BACKOFF_MIN_MS: u64 = 2_000;
/// ... to 60 s, with jitter.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;
/// ARCHITECTURE.md: a job older than 6 h fails with `JOB_MAX_AGE`, never earlier for polling.
pub const DEFAULT_MAX_AGE_MS: u64 = 6 * 3600 * 1000;
/// Jobs advanced at once; the upstream limiter caps the HTTP calls underneath separately.
pub const DEFAULT_MAX_CONCURRENT_JOBS: usize = 64;
/// Most due jobs read from the store per turn (never more than the free slots).
pub const DEFAULT_BATCH: u32 = 256;
/// Longest sleep of the run loop when nothing is due, so a job inserted by another instance
/// (or by hand) is noticed without a wake-up.
pub const DEFAULT_IDLE_WAKE_MS: u64 = 1_000;
/// A job in `Submitting` whose create has not answered within this is treated as crashed
/// mid-create (unknown outcome). Longer than the upstream request timeout (60 s).
pub const DEFAULT_SUBMIT_LEASE_MS: u64 = 120_000;
/// The largest last-frame image copied (S10); a PNG frame is well under this.
pub const MAX_LAST_FRAME_BYTES: u64 = 50 * 1024 * 1024;

/// What to do when a create's outcome is unknown (ARCHITECTURE.md, "No double spend").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCreatePolicy {
    /// Fail the job with `UPSTREAM_OUTCOME_UNKNOWN`; never send it again (the default).
    #[default]
    Fail,
    /// Send it again, accepting that upstream may generate (and bill) it twice.
    Resubmit,
}

/// Dispatcher settings (section `[dispatcher]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Whether the dispatcher runs at all (off: jobs are accepted and wait; benchmarks of
    /// intake alone use this).
    pub enabled: bool,
    /// See [`DEFAULT_FIRST_POLL_AFTER_MS`].
    pub first_poll_after_ms: u64,
    /// Per-model overrides of `first_poll_after_ms`.
    pub first_poll_after_ms_by_model: BTreeMap<String, u64>,
    /// See [`DEFAULT_POLL_INTERVAL_MS`].
    pub poll_interval_ms: u64,
    /// See [`DEFAULT_POLL_JITTER`].
    pub poll_jitter: f64,
    /// See [`DEFAULT_BACKOFF_MIN_MS`].
    pub backoff_min_ms: u64,
    /// See [`DEFAULT_BACKOFF_MAX_MS`].
    pub backoff_max_ms: u64,
    /// See [`DEFAULT_MAX_AGE_MS`].
    pub max_age_ms: u64,
    /// See [`UnknownCreatePolicy`].
    pub on_unknown_create: UnknownCreatePolicy,
    /// See [`DEFAULT_MAX_CONCURRENT_JOBS`].
    pub max_concurrent_jobs: usize,
    /// See [`DEFAULT_BATCH`].
    pub batch: u32,
    /// See [`DEFAULT_IDLE_WAKE_MS`].
    pub idle_wake_ms: u64,
    /// See [`DEFAULT_SUBMIT_LEASE_MS`].
    pub submit_lease_ms: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            first_poll_after_ms: DEFAULT_FIRST_POLL_AFTER_MS,
            first_poll_after_ms_by_model: BTreeMap::new(),
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            poll_jitter: DEFAULT_POLL_JITTER,
            backoff_min_ms: DEFAULT_BACKOFF_MIN_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            max_age_ms: DEFAULT_MAX_AGE_MS,
            on_unknown_create: UnknownCreatePolicy::Fail,
            max_concurrent_jobs: DEFAULT_MAX_CONCURRENT_JOBS,
            batch: DEFAULT_BATCH,
            idle_wake_ms: DEFAULT_IDLE_WAKE_MS,
            submit_lease_ms: DEFAULT_SUBMIT_LEASE_MS,
        }
    }
}

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

    async fn submit(&self, job: Job) -> Result<(), StepError> {
        let spec = match self.spec_of(&job).await? {
            Ok(spec) => spec,
            Err(why) => {
                let msg = format!(
                    "the stored request no longer passes validation with the current model catalog, so it was not sent: {why}"
                );
                self.fail(job, FailureReason::UpstreamRejected, msg, false, None)
                    .await?;
                return Ok(());
            }
        };
        let body = create_body(&spec);
        // The submit window is the request on the wire, nothing more: the job waits at the
        // shared gate (a 429 pause, the in-flight cap, the rate) while still `Pending`, so a
        // crash during that wait loses nothing; only once it holds its slot is it marked.
        let slot = match self.client.reserve_create().await {
            Ok(slot) => slot,
            // The gate closes only at shutdown: the job stays pending and due, untouched.
            Err(e) => {
                tracing::debug!(job_id = %job.id, error = %e, "create not sent");
                return Ok(());
            }
        };
        // Durable before the request leaves: a crash from here on is an unknown outcome.
        let mut submitting = job;
        let now = now_ms();
        let record = submitting.begin_submit(now, now + self.config.submit_lease_ms as i64)?;
        let submitting = self.save(submitting, record).await?;
        // A 429 that arrived while the mark was being written pauses everyone: do not send
        // into it, and do not wait for it marked either.
        if let Some(until) = self.client.limiter().paused_until() {
            drop(slot);
            let mut job = submitting;
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            let now = now_ms();
            let record = job.submit_not_taken(now, now + wait.as_millis() as i64, false)?;
            self.save(job, record).await?;
            return Ok(());
        }
        let result = self.client.create_in(slot, &body).await;
        match result {
            Ok(task) => {
                let mut job = submitting;
                let now = now_ms();
                let record = job.submitted(
                    now,
                    task.id.clone(),
                    task.status.raw.clone(),
                    task.status.state != UpstreamState::Queued,
                    now + self.first_poll_after(&job.model) as i64,
                )?;
                match self.save(job, record).await {
                    Ok(_) => Ok(()),
                    Err(StoreError::VersionConflict { id, .. }) => {
                        // Cancelled while the create was in flight: the upstream id is what an
                        // operator needs to find the (possibly billed) task; say it loudly.
                        tracing::warn!(job_id = %id, upstream_id = %task.id, "job was cancelled while its create was in flight; the upstream task exists and may be billed");
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => match e.create_failure() {
                CreateFailure::NotTakenRetryable => {
                    let mut job = submitting;
                    let now = now_ms();
                    let delay = self.retry_delay(job.attempts() + 1, &e) as i64;
                    let record = job.submit_not_taken(now, now + delay, true)?;
                    tracing::info!(job_id = %job.id, error = %e, "create not taken by upstream; will send it again");
                    self.metrics.retry("create");
                    self.save(job, record).await?;
                    Ok(())
                }
                CreateFailure::NotTakenPermanent => {
                    let reason = if matches!(e, UpstreamError::Auth { .. }) {
                        FailureReason::UpstreamAuth
                    } else {
                        FailureReason::UpstreamRejected
                    };
                    let msg = format!("upstream refused the request: {e}");
                    self.fail(submitting, reason, msg, false, Some(&e)).await?;
                    Ok(())
                }
                CreateFailure::OutcomeUnknown => {
                    self.unknown_create(submitting, e.to_string(), Some(&e))
                        .await
                }
            },
        }
    }

    async fn unknown_create(
        &self,
        job: Job,
        why: String,
        err: Option<&UpstreamError>,
    ) -> Result<(), StepError> {
        match self.config.on_unknown_create {
            UnknownCreatePolicy::Resubmit => {
                let mut job = job;
                let now = now_ms();
                let delay = self.backoff(job.attempts() + 1) as i64;
                let record = job.submit_not_taken(now, now + delay, true)?;
                tracing::warn!(job_id = %job.id, why = %why, "create outcome unknown; resubmitting as configured (on_unknown_create = resubmit): upstream may generate and bill it twice");
                self.metrics.retry("create");
                self.save(job, record).await?;
                Ok(())
            }
            UnknownCreatePolicy::Fail => {
                let msg = format!(
                    "the create request was sent but no usable answer came back ({why}); a generation may exist upstream and may be billed. vidgate did not send it again (dispatcher.on_unknown_create = \"resubmit\" would, at the risk of paying twice)"
                );
                self.fail(job, FailureReason::UpstreamOutcomeUnknown, msg, true, err)
                    .await?;
                Ok(())
            }
        }
    }

    async fn poll(&self, job: Job) -> Result<(), StepError> {
        let upstream_id = job
            .upstream_id()
            .ok_or_else(|| job_refused(&job, "poll"))?
            .to_owned();
        match self.client.get(&upstream_id).await {
            Ok(v) => {
                let mut job = job;
                let now = now_ms();
                match v.status.state {
                    UpstreamState::Queued | UpstreamState::Processing => {
                        let record = job.polled(
                            now,
                            v.status.raw.clone(),
                            v.status.state == UpstreamState::Processing,
                            v.progress,
                            now + self.poll_interval() as i64,
                        )?;
                        self.save(job, record).await?;
                        Ok(())
                    }
                    UpstreamState::Completed => {
                        let record = job.upstream_completed(
                            now,
                            v.status.raw.clone(),
                            v.progress,
                            v.last_frame_url.clone(),
                        )?;
                        let job = self.save(job, record).await?;
                        self.download(job).await
                    }
                    UpstreamState::Failed | UpstreamState::Cancelled | UpstreamState::Expired => {
                        let upstream_words = v
                            .error
                            .as_ref()
                            .map(|e| match (&e.code, &e.message) {
                                (Some(c), Some(m)) => format!("{c}: {m}"),
                                (None, Some(m)) => m.clone(),
                                (Some(c), None) => c.clone(),
                                (None, None) => String::new(),
                            })
                            .unwrap_or_default();
                        let msg = if upstream_words.is_empty() {
                            format!(
                                "upstream reports the task {upstream_id} as {} without saying why",
                                v.status.raw
                            )
                        } else {
                            format!(
                                "upstream reports the task {upstream_id} as {}: {upstream_words}",
                                v.status.raw
                            )
                        };
                        self.fail_with(
                            job,
                            JobError {
                                reason: FailureReason::UpstreamFailed,
                                message: msg,
                                retryable: true,
                                upstream_message: upstream_words,
                                upstream_http_status: None,
                            },
                        )
                        .await?;
                        Ok(())
                    }
                }
            }
            Err(UpstreamError::NotFound { message, .. }) => {
                let msg = format!("upstream no longer knows the task {upstream_id} (HTTP 404)");
                self.fail_with(
                    job,
                    JobError {
                        reason: FailureReason::UpstreamFailed,
                        message: msg,
                        retryable: true,
                        upstream_message: message,
                        upstream_http_status: Some(404),
                    },
                )
                .await?;
                Ok(())
            }
            Err(e) => {
                // 429, 5xx, timeouts, and also a refused key: the task may still finish upstream,
                // so keep following it (until the maximum age) instead of failing it.
                let mut job = job;
                let now = now_ms();
                let delay = self.retry_delay(job.attempts() + 1, &e) as i64;
                let record = job.retry_later(now, now + delay)?;
                if matches!(e, UpstreamError::Auth { .. }) {
                    tracing::error!(job_id = %job.id, error = %e, "status poll refused: check the upstream API key");
                } else {
                    tracing::info!(job_id = %job.id, error = %e, attempts = job.attempts(), "status poll failed; backing off");
                }
                self.metrics.retry("poll");
                self.save(job, record).await?;
                Ok(())
            }
        }
    }

    async fn download(&self, job: Job) -> Result<(), StepError> {
        let upstream_id = job
            .upstream_id()
            .ok_or_else(|| job_refused(&job, "download"))?
            .to_owned();
        let name = format!("{}.mp4.part", job.id);
        let path = self.blobs.partial_path(&name);
        let (have, mut hasher) = resume_state(&path).await.map_err(|e| {
            StepError::Local(format!("reading partial download {}: {e}", path.display()))
        })?;
        let stream = match self.client.content(&upstream_id, have).await {
            Ok(s) => s,
            Err(UpstreamError::NotFound { message, .. }) => {
                let msg = format!(
                    "upstream reported task {upstream_id} completed but has no content for it (HTTP 404): this is how a moderation refusal looks, and upstream may still bill it"
                );
                self.fail_with(
                    job,
                    JobError {
                        reason: FailureReason::ContentMissing,
                        message: msg,
                        retryable: false,
                        upstream_message: message,
                        upstream_http_status: Some(404),
                    },
                )
                .await?;
                return Ok(());
            }
            Err(UpstreamError::RangeNotSatisfiable { .. }) => {
                // Our partial file is longer than the content: start over.
                let _ = tokio::fs::remove_file(&path).await;
                return self
                    .retry_download(
                        job,
                        "the partial download was longer than the content; restarting from zero"
                            .into(),
                        None,
                    )
                    .await;
            }
            Err(e) => return self.retry_download(job, e.to_string(), Some(&e)).await,
        };
        let file = match stream.start {
            ContentStart::Resumed(_) => {
                tokio::fs::OpenOptions::new().append(true).open(&path).await
            }
            ContentStart::Full => {
                hasher = Sha256::new();
                tokio::fs::File::create(&path).await
            }
        }
        .map_err(|e| StepError::Local(format!("opening {}: {e}", path.display())))?;
        let start = match stream.start {
            ContentStart::Resumed(from) => from,
            ContentStart::Full => 0,
        };
        let total = stream.total_len;
        let mut body = stream.body;
        let writing_error =
            |e: std::io::Error| StepError::Local(format!("writing {}: {e}", path.display()));
        let mut writer = PartWriter::start(file.into_std().await, hasher, start);
        let mut broke = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    if let Err(e) = writer.write(bytes).await {
                        // The writer thread stopped: its own error says why.
                        return Err(writing_error(writer.finish().await.err().unwrap_or(e)));
                    }
                }
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            }
        }
        // What arrived is written (and kept for a resume) either way.
        let (hasher, written) = writer.finish().await.map_err(writing_error)?;
        if let Some(e) = broke {
            return self
                .retry_download(
                    job,
                    format!("download broke after {written} bytes: {e}"),
                    Some(&e),
                )
                .await;
        }
        if let Some(total) = total
            && written != total
        {
            return self
                .retry_download(
                    job,
                    format!("download ended at {written} of {total} bytes"),
                    None,
                )
                .await;
        }
        if written == 0 {
            let _ = tokio::fs::remove_file(&path).await;
            let msg =
                format!("upstream reported task {upstream_id} completed but its content is empty");
            self.fail(job, FailureReason::ContentMissing, msg, false, None)
                .await?;
            return Ok(());
        }
        let sha256 = hex::encode(hasher.finalize());
        let probe_path = path.clone();
        let facts = tokio::task::spawn_blocking(move || media::probe_mp4_file(&probe_path))
            .await
            .map_err(|e| StepError::Local(format!("probe task failed: {e}")))?;
        let facts = match facts {
            Ok(f) => f,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                let msg = format!(
                    "upstream's content for task {upstream_id} ({written} bytes) is not a usable MP4: {e}"
                );
                self.fail(job, FailureReason::ContentInvalid, msg, true, None)
                    .await?;
                return Ok(());
            }
        };
        let spec = self.spec_of(&job).await?.ok();
        let mismatch = spec
            .as_ref()
            .and_then(|s| {
                s.expected_output()
                    .compare(facts.width, facts.height, facts.duration_seconds)
            })
            .unwrap_or_default();
        let (last_frame_key, last_frame_size) = match (
            job.last_frame_url(),
            spec.as_ref().map(|s| s.has_last_frame_requested()),
        ) {
            (Some(url), Some(true)) => match self.copy_last_frame(&job.id, url).await {
                Ok((key, size)) => (Some(key), Some(size)),
                Err(why) => {
                    tracing::warn!(job_id = %job.id, why = %why, "last frame could not be copied; the video is kept without it");
                    (None, None)
                }
            },
            _ => (None, None),
        };
        let key = format!("videos/{}.mp4", job.id);
        self.blobs
            .commit_partial(&name, &key)
            .await
            .map_err(|e| StepError::Local(e.to_string()))?;
        let content = ContentFacts {
            size_bytes: written,
            sha256,
            mime_type: "video/mp4".into(),
            duration_seconds: facts.duration_seconds,
            width: facts.width,
            height: facts.height,
            has_audio: facts.has_audio,
            has_last_frame: last_frame_key.is_some(),
            matches_request: mismatch.is_empty(),
            mismatch,
            blob_key: key,
            last_frame_key,
            last_frame_size,
        };
        if !content.matches_request {
            tracing::warn!(job_id = %job.id, mismatch = %content.mismatch, "stored video differs from the request");
        }
        let mut done = job;
        let record = done.complete(now_ms(), content)?;
        self.save(done, record).await?;
        Ok(())
    }

    async fn copy_last_frame(&self, job_id: &str, url: &str) -> Result<(String, u64), String> {
        let stream = self
            .client
            .last_frame(url)
            .await
            .map_err(|e| e.to_string())?;
        let name = format!("{job_id}.last_frame.part");
        let path = self.blobs.partial_path(&name);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| e.to_string())?;
        let mut size = 0u64;
        let mut body = stream.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            size += chunk.len() as u64;
            if size > MAX_LAST_FRAME_BYTES {
                return Err(format!(
                    "last frame is larger than {MAX_LAST_FRAME_BYTES} bytes"
                ));
            }
            file.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        file.sync_all().await.map_err(|e| e.to_string())?;
        let key = format!("frames/{job_id}.png");
        self.blobs
            .commit_partial(&name, &key)
            .await
            .map_err(|e| e.to_string())?;
        Ok((key, size))
    }

    async fn retry_download(
        &self,
        job: Job,
        why: String,
        err: Option<&UpstreamError>,
    ) -> Result<(), StepError> {
        let mut job = job;
        let attempts = job.attempts() + 1;
        let delay = match err {
            Some(e) => self.retry_delay(attempts, e),
            None => self.backoff(attempts),
        };
        let now = now_ms();
        let record = job.retry_later(now, now + delay as i64)?;
        tracing::info!(job_id = %job.id, why = %why, attempts, "download will be resumed");
        self.metrics.retry("download");
        self.save(job, record).await?;
        Ok(())
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

    fn first_poll_after(&self, model: &str) -> u64 {
        self.config
            .first_poll_after_ms_by_model
            .get(model)
            .copied()
            .unwrap_or(self.config.first_poll_after_ms)
    }

    fn poll_interval(&self) -> u64 {
        jitter(self.config.poll_interval_ms, self.config.poll_jitter)
    }

    /// Exponential backoff from `backoff_min_ms` to `backoff_max_ms`, with jitter in the upper
    /// half so retries of many jobs spread out.
    fn backoff(&self, attempts: u32) -> u64 {
        backoff_ms(
            attempts,
            self.config.backoff_min_ms,
            self.config.backoff_max_ms,
        )
    }

    /// After a 429 the upstream limiter already pauses every caller; the job itself waits at
    /// least the server's `Retry-After`.
    fn retry_delay(&self, attempts: u32, e: &UpstreamError) -> u64 {
        let backoff = self.backoff(attempts);
        match e.retry_after() {
            Some(after) => backoff.max(after.as_millis() as u64),
            None => backoff,
        }
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

/// `base` +- `fraction`.
pub fn jitter(base: u64, fraction: f64) -> u64 {
    let fraction = fraction.clamp(0.0, 1.0);
    if fraction == 0.0 || base == 0 {
        return base;
    }
    let factor = 1.0 + rand::random_range(-fraction..=fraction);
    (base as f64 * factor).round() as u64
}

/// Exponential backoff: `min * 2^(attempts-1)` capped at `max`, then a random point in its
/// upper half.
pub fn backoff_ms(attempts: u32, min: u64, max: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(32);
    let ceiling = min.saturating_mul(1u64 << exp).min(max.max(min));
    if ceiling == 0 {
        return 0;
    }
    let half = ceiling / 2;
    half + rand::random_range(0..=ceiling - half)
}

/// How much of a partial download exists, with the hash of those bytes, so a broken download
/// resumes with `Range` instead of starting over (also after a restart).
/// Bytes handed to the writer thread at once: fewer thread wake-ups than one per network chunk,
/// no copy (the chunks are kept as they came).
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Batches queued for the writer thread: bounds the memory of a download to ~1 MiB.
const WRITE_QUEUE: usize = 4;

/// Hashes and writes a download on one blocking thread fed through a bounded channel, and
/// syncs the file at the end. `tokio::fs` would start a blocking task (and copy the bytes) for
/// every network chunk, and hashing 5 MB on the async workers holds them ~15 ms.
struct PartWriter {
    batch: Vec<Bytes>,
    batch_bytes: usize,
    tx: tokio::sync::mpsc::Sender<Vec<Bytes>>,
    task: tokio::task::JoinHandle<std::io::Result<(Sha256, u64)>>,
}

impl PartWriter {
    fn start(mut file: std::fs::File, mut hasher: Sha256, mut written: u64) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE);
        let task = tokio::task::spawn_blocking(move || {
            while let Some(batch) = rx.blocking_recv() {
                for chunk in &batch {
                    hasher.update(chunk);
                    written += chunk.len() as u64;
                }
                write_all_vectored(&mut file, &batch)?;
            }
            file.sync_all()?;
            Ok((hasher, written))
        });
        Self {
            batch: Vec::new(),
            batch_bytes: 0,
            tx,
            task,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        if self.batch_bytes >= WRITE_BATCH_BYTES {
            self.batch_bytes = 0;
            let batch = std::mem::take(&mut self.batch);
            if self.tx.send(batch).await.is_err() {
                // The writer stopped: its error is what `finish` returns.
                return Err(std::io::Error::other(
                    "the download's writer thread stopped",
                ));
            }
        }
        Ok(())
    }

    /// Writes what is left, syncs, and returns the hash state and the file's length.
    async fn finish(self) -> std::io::Result<(Sha256, u64)> {
        if !self.batch.is_empty() {
            // A failed send means the writer stopped; its own error follows below.
            let _ = self.tx.send(self.batch).await;
        }
        drop(self.tx);
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("the writer thread failed: {e}")))?
    }
}

/// Writes every chunk of `batch`, in order, with as few `writev` calls as the kernel allows:
/// one system call per batch instead of one per network chunk.
fn write_all_vectored(file: &mut std::fs::File, batch: &[Bytes]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the file accepted no more bytes",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn resume_state(path: &std::path::Path) -> std::io::Result<(u64, Sha256)> {
    let mut hasher = Sha256::new();
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, hasher)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hasher))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        for _ in 0..100 {
            let first = backoff_ms(1, 2_000, 60_000);
            assert!((1_000..=2_000).contains(&first), "{first}");
            let fourth = backoff_ms(4, 2_000, 60_000);
            assert!((8_000..=16_000).contains(&fourth), "{fourth}");
            let capped = backoff_ms(30, 2_000, 60_000);
            assert!((30_000..=60_000).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn jitter_stays_within_the_fraction() {
        for _ in 0..1000 {
            let v = jitter(20_000, 0.2);
            assert!((16_000..=24_000).contains(&v), "{v}");
        }
        assert_eq!(jitter(20_000, 0.0), 20_000);
    }
}
