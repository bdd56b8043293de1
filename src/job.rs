//! A video job as vidgate keeps it: the durable record the store persists, the dispatcher
//! advances and the API turns into a `Video`. No I/O here.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The public status of a job (`vidgate.v1.VideoStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted by vidgate, or queued upstream.
    Queued,
    /// Upstream is generating.
    Processing,
    /// The video is stored and can be downloaded.
    Completed,
    /// Ended without a video; `Job::error` says why.
    Failed,
    /// Cancelled by the caller.
    Cancelled,
}

impl JobStatus {
    /// Whether the job will never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Lower-case name, as in AMQP routing keys (`acme.video.completed`) and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Reads [`JobStatus::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "processing" => Self::Processing,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

/// Where the dispatcher is with a job. Internal; the public view is [`JobStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepted and durable; nothing sent upstream yet.
    Pending,
    /// Written before the create is sent (ARCHITECTURE.md, "No double spend"). Found on start
    /// without an upstream id, the create's outcome is unknown.
    Submitting,
    /// Upstream has the task (`upstream_id` is set); the dispatcher polls it.
    Polling,
    /// Upstream said completed; the content is being copied into the blob store.
    Downloading,
    /// Nothing more to do.
    Finished,
}

/// Stable reasons of a job's failure (`VideoError.reason`, API.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureReason {
    /// Upstream refused the request (4xx).
    UpstreamRejected,
    /// Upstream said the task failed.
    UpstreamFailed,
    /// A create was sent and no usable answer came: a generation may exist upstream.
    UpstreamOutcomeUnknown,
    /// Upstream completed without a video (moderation, or content 404 after completion).
    ContentMissing,
    /// The downloaded file is not a usable MP4.
    ContentInvalid,
    /// The job outlived the configured maximum age.
    JobMaxAge,
    /// Upstream refused the API key (401/403).
    UpstreamAuth,
}

impl FailureReason {
    /// The reason as API.md spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamRejected => "UPSTREAM_REJECTED",
            Self::UpstreamFailed => "UPSTREAM_FAILED",
            Self::UpstreamOutcomeUnknown => "UPSTREAM_OUTCOME_UNKNOWN",
            Self::ContentMissing => "CONTENT_MISSING",
            Self::ContentInvalid => "CONTENT_INVALID",
            Self::JobMaxAge => "JOB_MAX_AGE",
            Self::UpstreamAuth => "UPSTREAM_AUTH",
        }
    }
}

/// Why a job failed (`vidgate.v1.VideoError`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// Stable reason.
    pub reason: FailureReason,
    /// For people: what happened and what it means.
    pub message: String,
    /// Whether creating the same request again could succeed.
    pub retryable: bool,
    /// The upstream's own words, when it gave any.
    pub upstream_message: String,
    /// The upstream's HTTP status, when there was one.
    pub upstream_http_status: Option<u16>,
}

/// An earlier attempt of a job that `RetryVideo` sent again (`vidgate.v1.VideoAttempt`): kept
/// so an operator can still find, and be billed for, the task it may have left upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Upstream's task id of that attempt; `None` when its create got no answer (the task may
    /// still exist upstream).
    pub upstream_id: Option<String>,
    /// Why that attempt ended.
    pub error: Option<JobError>,
    /// Unix milliseconds of that attempt's end.
    pub complete_time_ms: Option<i64>,
    /// Unix milliseconds of the retry that ended its life as the current attempt.
    pub retry_time_ms: i64,
}

/// Why a job may not be sent again ([`Job::reopen_for_retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryRefusal {
    /// The job did not fail: it is still running, completed or cancelled.
    NotFailed(JobStatus),
    /// It failed for a reason that the same request sent again cannot cure
    /// (`JobError::retryable` is false).
    NotRetryable(FailureReason),
}

/// Facts about the stored video (`vidgate.v1.VideoContent`) and where its bytes are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentFacts {
    /// Size of the stored MP4.
    pub size_bytes: u64,
    /// SHA-256 of the stored MP4, hex.
    pub sha256: String,
    /// `video/mp4`.
    pub mime_type: String,
    /// From the MP4's own header.
    pub duration_seconds: f64,
    /// From the MP4's own header.
    pub width: u32,
    /// From the MP4's own header.
    pub height: u32,
    /// Whether the MP4 has an audio track.
    pub has_audio: bool,
    /// Whether a last frame image is stored too (S10).
    pub has_last_frame: bool,
    /// False when the video differs from what the request asked for.
    pub matches_request: bool,
    /// What differed; empty when nothing did or when the catalog cannot say what to expect.
    pub mismatch: String,
    /// The blob store key of the video.
    pub blob_key: String,
    /// The blob store key of the last frame image, if any.
    pub last_frame_key: Option<String>,
    /// Size of the last frame image, if any.
    pub last_frame_size: Option<u64>,
    /// Why a last frame that was asked for is not stored (not an image, too large, an
    /// internal address, none given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_frame_dropped: Option<String>,
}

/// One job: what was accepted (public, never changed after acceptance but for the caller's
/// delete) and its progress (private: changed only through the transition methods below,
/// which say whether the change is one subscribers see). The store persists it whole (with
/// `version` for optimistic concurrency) as a [`JobRecord`]; every change users can see
/// appends an event carrying a snapshot of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "JobRecord", into = "JobRecord")]
pub struct Job {
    /// vidgate's id, `vid_` + a time-ordered UUID.
    pub id: String,
    /// The tenant of the credential that created it. Tenants are walls.
    pub tenant: String,
    /// The caller's idempotency key (gRPC `request_id`, AMQP `message_id`), if any. Cleared
    /// when the job is deleted (API.md: keys live as long as their job).
    pub request_id: Option<String>,
    /// SHA-256 (hex) of the accepted request, to tell "same key, same request" from
    /// "same key, different request" (`REQUEST_ID_REUSED`).
    pub fingerprint: String,
    /// The model id.
    pub model: String,
    /// The caller's own metadata.
    pub labels: BTreeMap<String, String>,
    /// The `CreateVideoRequest` as accepted, protobuf-encoded, with input bytes dropped
    /// (what `Video.request` shows). The full request is kept apart: [`NewJob::submission`].
    pub request: Bytes,
    /// Unix milliseconds.
    pub create_time_ms: i64,
    /// AMQP `reply_to` of the message that created the job: its events go there too.
    pub reply_to: Option<String>,
    /// AMQP `correlation_id` to put on those replies.
    pub correlation_id: Option<String>,
    /// W3C trace context of the request that created it, so later steps link to its trace.
    pub trace_context: Option<String>,
    /// Bumped by every update; an update with a stale version is refused. Kept by the store.
    pub version: i64,
    /// The sequence of this job's latest event. Kept by the store.
    pub last_sequence: i64,
    stage: Stage,
    progress: Progress,
    deleted: bool,
    previous_attempts: Vec<Attempt>,
}

/// Where a job is. Each variant carries what that stage needs, so "polling without an upstream
/// id" cannot be represented.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    /// Accepted and durable; nothing sent upstream (or a create certainly not taken).
    Pending,
    /// The create request is on the wire (ARCHITECTURE.md, "No double spend"). Found so after
    /// a crash, the create's outcome is unknown.
    Submitting,
    /// Upstream has the task; the dispatcher polls it. `started`: upstream has said it is
    /// processing at least once (the public status then stays PROCESSING).
    Polling { upstream_id: String, started: bool },
    /// Upstream said completed; the content is being copied into the blob store.
    Downloading {
        upstream_id: String,
        last_frame_url: Option<String>,
    },
    /// The video is stored.
    Completed {
        upstream_id: String,
        content: ContentFacts,
    },
    /// Ended without a video.
    Failed {
        upstream_id: Option<String>,
        error: JobError,
    },
    /// Cancelled by its owner (the upstream task, if any, may still run).
    Cancelled { upstream_id: Option<String> },
}

/// What changes on every step without changing the stage.
#[derive(Debug, Clone, PartialEq, Default)]
struct Progress {
    upstream_status: String,
    percent: Option<u32>,
    update_time_ms: i64,
    complete_time_ms: Option<i64>,
    next_action_ms: Option<i64>,
    attempts: u32,
    polls: u32,
}

/// Whether a change is one that subscribers see (an event is appended in the same commit) or
/// bookkeeping only (a schedule, a retry count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Record {
    /// Append an event with the job as of this change.
    Event,
    /// Write the job without an event.
    Quiet,
}

impl Record {
    /// `Event` when `visible`.
    pub fn event_if(visible: bool) -> Self {
        if visible { Self::Event } else { Self::Quiet }
    }
}

/// Why a create went back to pending ([`Job::submit_not_taken`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTaken {
    /// It was never sent (a 429 pause began while it was being marked): no attempt spent.
    NeverSent,
    /// It was sent and failed (a 429, a refused connection, an unknown outcome resent by
    /// policy): one more attempt, which lengthens the backoff.
    Failed,
}

/// A transition the job's stage does not allow (a bug in the caller, or a stale copy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {id}: cannot {action} while it is {stage}")]
pub struct TransitionError {
    /// The job.
    pub id: String,
    /// What was asked.
    pub action: &'static str,
    /// Where the job was.
    pub stage: &'static str,
}

/// What the caller gives when a job is accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// See [`Job::id`].
    pub id: String,
    /// See [`Job::tenant`].
    pub tenant: String,
    /// See [`Job::request_id`].
    pub request_id: Option<String>,
    /// See [`Job::fingerprint`].
    pub fingerprint: String,
    /// See [`Job::model`].
    pub model: String,
    /// See [`Job::labels`].
    pub labels: BTreeMap<String, String>,
    /// See [`Job::request`].
    pub request: Bytes,
    /// See [`Job::reply_to`].
    pub reply_to: Option<String>,
    /// See [`Job::correlation_id`].
    pub correlation_id: Option<String>,
    /// See [`Job::trace_context`].
    pub trace_context: Option<String>,
}

impl Job {
    /// A job just accepted at `now`: queued, due at once.
    pub fn accepted(a: Accepted, now: i64) -> Job {
        Job {
            id: a.id,
            tenant: a.tenant,
            request_id: a.request_id,
            fingerprint: a.fingerprint,
            model: a.model,
            labels: a.labels,
            request: a.request,
            create_time_ms: now,
            reply_to: a.reply_to,
            correlation_id: a.correlation_id,
            trace_context: a.trace_context,
            version: 0,
            last_sequence: 0,
            stage: Stage::Pending,
            progress: Progress {
                update_time_ms: now,
                next_action_ms: Some(now),
                ..Progress::default()
            },
            deleted: false,
            previous_attempts: Vec::new(),
        }
    }

    /// The public status, derived from the stage: never backwards while the job runs.
    pub fn status(&self) -> JobStatus {
        match &self.stage {
            Stage::Pending | Stage::Submitting => JobStatus::Queued,
            Stage::Polling { started: false, .. } => JobStatus::Queued,
            Stage::Polling { started: true, .. } | Stage::Downloading { .. } => {
                JobStatus::Processing
            }
            Stage::Completed { .. } => JobStatus::Completed,
            Stage::Failed { .. } => JobStatus::Failed,
            Stage::Cancelled { .. } => JobStatus::Cancelled,
        }
    }

    /// The dispatcher's view of the stage.
    pub fn phase(&self) -> Phase {
        match &self.stage {
            Stage::Pending => Phase::Pending,
            Stage::Submitting => Phase::Submitting,
            Stage::Polling { .. } => Phase::Polling,
            Stage::Downloading { .. } => Phase::Downloading,
            Stage::Completed { .. } | Stage::Failed { .. } | Stage::Cancelled { .. } => {
                Phase::Finished
            }
        }
    }

    /// Whether the job will never change again (but for a delete).
    pub fn is_terminal(&self) -> bool {
        self.status().is_terminal()
    }

    /// Upstream's task id, once the create answered (kept after the job ends, for operators).
    pub fn upstream_id(&self) -> Option<&str> {
        match &self.stage {
            Stage::Polling { upstream_id, .. }
            | Stage::Downloading { upstream_id, .. }
            | Stage::Completed { upstream_id, .. } => Some(upstream_id),
            Stage::Failed { upstream_id, .. } | Stage::Cancelled { upstream_id } => {
                upstream_id.as_deref()
            }
            Stage::Pending | Stage::Submitting => None,
        }
    }

    /// Why it failed.
    pub fn error(&self) -> Option<&JobError> {
        match &self.stage {
            Stage::Failed { error, .. } => Some(error),
            _ => None,
        }
    }

    /// The stored video's facts, once completed.
    pub fn content(&self) -> Option<&ContentFacts> {
        match &self.stage {
            Stage::Completed { content, .. } => Some(content),
            _ => None,
        }
    }

    /// Where upstream said the last frame image is (S10), while downloading.
    pub fn last_frame_url(&self) -> Option<&str> {
        match &self.stage {
            Stage::Downloading { last_frame_url, .. } => last_frame_url.as_deref(),
            _ => None,
        }
    }

    /// Upstream's last status word, verbatim.
    pub fn upstream_status(&self) -> &str {
        &self.progress.upstream_status
    }

    /// 0-100 when upstream gives it.
    pub fn progress(&self) -> Option<u32> {
        self.progress.percent
    }

    /// Unix milliseconds of the last change.
    pub fn update_time_ms(&self) -> i64 {
        self.progress.update_time_ms
    }

    /// Unix milliseconds of the terminal change.
    pub fn complete_time_ms(&self) -> Option<i64> {
        self.progress.complete_time_ms
    }

    /// When the dispatcher should look at the job next (unix ms); `None` = nothing to do.
    pub fn next_action_ms(&self) -> Option<i64> {
        self.progress.next_action_ms
    }

    /// Consecutive transient failures of the current step (drives backoff).
    pub fn attempts(&self) -> u32 {
        self.progress.attempts
    }

    /// Status polls made so far.
    pub fn polls(&self) -> u32 {
        self.progress.polls
    }

    /// Deleted by the caller: hidden from every read, kept only until pruned.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    /// Earlier attempts, oldest first; empty unless the job was retried.
    pub fn previous_attempts(&self) -> &[Attempt] {
        &self.previous_attempts
    }

    fn stage_name(&self) -> &'static str {
        match &self.stage {
            Stage::Pending => "pending",
            Stage::Submitting => "submitting",
            Stage::Polling { .. } => "polling",
            Stage::Downloading { .. } => "downloading",
            Stage::Completed { .. } => "completed",
            Stage::Failed { .. } => "failed",
            Stage::Cancelled { .. } => "cancelled",
        }
    }

    fn refuse(&self, action: &'static str) -> TransitionError {
        TransitionError {
            id: self.id.clone(),
            action,
            stage: self.stage_name(),
        }
    }

    fn touch(&mut self, now: i64) {
        self.progress.update_time_ms = now;
    }

    /// Pending -> submitting: the create is about to be written to the connection. Due again
    /// at `lease_until`, when a create still unanswered is taken for crashed.
    pub fn begin_submit(&mut self, now: i64, lease_until: i64) -> Result<Record, TransitionError> {
        if self.stage != Stage::Pending {
            return Err(self.refuse("begin a submit"));
        }
        self.stage = Stage::Submitting;
        self.progress.next_action_ms = Some(lease_until);
        self.touch(now);
        Ok(Record::Quiet)
    }

    /// Submitting -> pending: nothing was sent, or upstream certainly did not take it (or the
    /// policy resends unknown outcomes); due again at `retry_at`.
    pub fn submit_not_taken(
        &mut self,
        now: i64,
        retry_at: i64,
        why: NotTaken,
    ) -> Result<Record, TransitionError> {
        if self.stage != Stage::Submitting {
            return Err(self.refuse("take back a submit"));
        }
        self.stage = Stage::Pending;
        if why == NotTaken::Failed {
            self.progress.attempts += 1;
        }
        self.progress.next_action_ms = Some(retry_at);
        self.touch(now);
        Ok(Record::Quiet)
    }

    /// Submitting -> polling: upstream answered the create with its task id and status word;
    /// the first poll is due at `first_poll_at`.
    pub fn submitted(
        &mut self,
        now: i64,
        upstream_id: String,
        word: String,
        started: bool,
        first_poll_at: i64,
    ) -> Result<Record, TransitionError> {
        if self.stage != Stage::Submitting {
            return Err(self.refuse("record a submitted create"));
        }
        self.stage = Stage::Polling {
            upstream_id,
            started,
        };
        self.progress.upstream_status = word;
        self.progress.attempts = 0;
        self.progress.next_action_ms = Some(first_poll_at);
        self.touch(now);
        Ok(Record::Event)
    }

    /// A poll's answer while upstream still works: the status word, whether it said
    /// processing, and its progress. An event only when something a subscriber sees changed.
    pub fn polled(
        &mut self,
        now: i64,
        word: String,
        processing: bool,
        percent: Option<u32>,
        next_poll_at: i64,
    ) -> Result<Record, TransitionError> {
        let Stage::Polling { started, .. } = &mut self.stage else {
            return Err(self.refuse("record a poll"));
        };
        let visible_before = (*started, self.progress.percent);
        let word_changed = word != self.progress.upstream_status;
        *started |= processing;
        let after = (*started, percent.or(self.progress.percent));
        self.progress.percent = after.1;
        self.progress.upstream_status = word;
        self.progress.polls += 1;
        self.progress.attempts = 0;
        self.progress.next_action_ms = Some(next_poll_at);
        self.touch(now);
        Ok(Record::event_if(word_changed || visible_before != after))
    }

    /// Polling -> downloading: upstream said completed; the download is due at once.
    pub fn upstream_completed(
        &mut self,
        now: i64,
        word: String,
        percent: Option<u32>,
        last_frame_url: Option<String>,
    ) -> Result<Record, TransitionError> {
        let Stage::Polling { upstream_id, .. } = &self.stage else {
            return Err(self.refuse("start a download"));
        };
        let before = (
            self.status(),
            self.progress.upstream_status.clone(),
            self.progress.percent,
        );
        self.stage = Stage::Downloading {
            upstream_id: upstream_id.clone(),
            last_frame_url,
        };
        self.progress.upstream_status = word;
        self.progress.percent = percent.or(self.progress.percent);
        self.progress.polls += 1;
        self.progress.attempts = 0;
        self.progress.next_action_ms = Some(now);
        self.touch(now);
        let after = (
            self.status(),
            self.progress.upstream_status.clone(),
            self.progress.percent,
        );
        Ok(Record::event_if(before != after))
    }

    /// A transient failure of the current step: one more attempt, due again at `retry_at`
    /// (computed by the caller from `attempts() + 1`).
    pub fn retry_later(&mut self, now: i64, retry_at: i64) -> Result<Record, TransitionError> {
        if self.is_terminal() {
            return Err(self.refuse("schedule a retry"));
        }
        self.progress.attempts += 1;
        self.progress.next_action_ms = Some(retry_at);
        self.touch(now);
        Ok(Record::Quiet)
    }

    /// The same step again at `at`, without counting a failed attempt: the job waits for
    /// something outside it (disk space), not for a fault of its own.
    pub fn wait_until(&mut self, now: i64, at: i64) -> Result<Record, TransitionError> {
        if self.is_terminal() {
            return Err(self.refuse("wait"));
        }
        self.progress.next_action_ms = Some(at);
        self.touch(now);
        Ok(Record::Quiet)
    }

    /// Downloading -> completed, with the stored video's facts.
    pub fn complete(&mut self, now: i64, content: ContentFacts) -> Result<Record, TransitionError> {
        let Stage::Downloading { upstream_id, .. } = &self.stage else {
            return Err(self.refuse("complete"));
        };
        self.stage = Stage::Completed {
            upstream_id: upstream_id.clone(),
            content,
        };
        self.progress.percent = Some(100);
        self.finish(now);
        Ok(Record::Event)
    }

    /// Any running stage -> failed. The upstream id, if any, is kept for operators.
    pub fn fail(&mut self, now: i64, error: JobError) -> Result<Record, TransitionError> {
        if self.is_terminal() {
            return Err(self.refuse("fail"));
        }
        self.stage = Stage::Failed {
            upstream_id: self.upstream_id().map(str::to_owned),
            error,
        };
        self.finish(now);
        Ok(Record::Event)
    }

    /// Any running stage -> cancelled. The upstream id, if any, is kept: the upstream task may
    /// still run (and be billed).
    pub fn cancel(&mut self, now: i64) -> Result<Record, TransitionError> {
        if self.is_terminal() {
            return Err(self.refuse("cancel"));
        }
        self.stage = Stage::Cancelled {
            upstream_id: self.upstream_id().map(str::to_owned),
        };
        self.finish(now);
        Ok(Record::Event)
    }

    /// Deleted by its owner: a running job is cancelled first; the idempotency key is freed.
    /// Returns whether the job was still running.
    pub fn delete(&mut self, now: i64) -> bool {
        let was_running = !self.is_terminal();
        if was_running {
            self.stage = Stage::Cancelled {
                upstream_id: self.upstream_id().map(str::to_owned),
            };
            self.finish(now);
        }
        self.deleted = true;
        self.request_id = None;
        self.progress.next_action_ms = None;
        self.touch(now);
        was_running
    }

    /// Why this job may not be sent again, or `None` when it may: only a failed job whose
    /// failure says the same request could succeed.
    pub fn retry_refusal(&self) -> Option<RetryRefusal> {
        match &self.stage {
            Stage::Failed { error, .. } if error.retryable => None,
            Stage::Failed { error, .. } => Some(RetryRefusal::NotRetryable(error.reason)),
            _ => Some(RetryRefusal::NotFailed(self.status())),
        }
    }

    /// Failed (retryable) -> pending, as if just accepted, keeping its id, request and history:
    /// the ended attempt moves into [`Job::previous_attempts`], and everything learnt from the
    /// old task goes, so the dispatcher submits a new one instead of polling the old.
    pub fn reopen_for_retry(&mut self, now: i64) -> Result<Record, RetryRefusal> {
        if let Some(refusal) = self.retry_refusal() {
            return Err(refusal);
        }
        let ended = std::mem::replace(&mut self.stage, Stage::Pending);
        let Stage::Failed { upstream_id, error } = ended else {
            return Err(RetryRefusal::NotFailed(self.status()));
        };
        self.previous_attempts.push(Attempt {
            upstream_id,
            error: Some(error),
            complete_time_ms: self.progress.complete_time_ms,
            retry_time_ms: now,
        });
        self.progress = Progress {
            update_time_ms: now,
            next_action_ms: Some(now),
            ..Progress::default()
        };
        Ok(Record::Event)
    }

    /// A finished or deleted job found due: nothing more to do, ever.
    pub fn settle(&mut self) {
        self.progress.next_action_ms = None;
    }

    fn finish(&mut self, now: i64) {
        self.progress.attempts = 0;
        self.progress.complete_time_ms = Some(now);
        self.progress.next_action_ms = None;
        self.touch(now);
    }
}

/// A job as the store keeps it (JSON) and as old data directories hold it: flat fields. Every
/// stored job is read back through [`Job`]'s checks (`TryFrom`), so a record whose fields
/// contradict each other (polling without an upstream id) is refused as corrupt instead of
/// driving the dispatcher. Tests use it to build jobs in any stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// See [`Job::id`].
    pub id: String,
    /// See [`Job::tenant`].
    pub tenant: String,
    /// See [`Job::request_id`].
    pub request_id: Option<String>,
    /// See [`Job::fingerprint`].
    pub fingerprint: String,
    /// See [`Job::model`].
    pub model: String,
    /// See [`Job::labels`].
    pub labels: BTreeMap<String, String>,
    /// See [`Job::request`].
    #[serde(with = "b64")]
    pub request: Bytes,
    /// See [`Job::status`].
    pub status: JobStatus,
    /// See [`Job::phase`].
    pub phase: Phase,
    /// See [`Job::upstream_status`].
    pub upstream_status: String,
    /// See [`Job::upstream_id`].
    pub upstream_id: Option<String>,
    /// See [`Job::progress`].
    pub progress: Option<u32>,
    /// See [`Job::create_time_ms`].
    pub create_time_ms: i64,
    /// See [`Job::update_time_ms`].
    pub update_time_ms: i64,
    /// See [`Job::complete_time_ms`].
    pub complete_time_ms: Option<i64>,
    /// See [`Job::error`].
    pub error: Option<JobError>,
    /// See [`Job::content`].
    pub content: Option<ContentFacts>,
    /// See [`Job::version`].
    pub version: i64,
    /// See [`Job::last_sequence`].
    pub last_sequence: i64,
    /// See [`Job::next_action_ms`].
    pub next_action_ms: Option<i64>,
    /// See [`Job::attempts`].
    pub attempts: u32,
    /// See [`Job::polls`].
    pub polls: u32,
    /// See [`Job::last_frame_url`].
    #[serde(default)]
    pub last_frame_url: Option<String>,
    /// See [`Job::reply_to`].
    #[serde(default)]
    pub reply_to: Option<String>,
    /// See [`Job::correlation_id`].
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// See [`Job::trace_context`].
    pub trace_context: Option<String>,
    /// See [`Job::is_deleted`].
    pub deleted: bool,
    /// See [`Job::previous_attempts`]; absent in jobs stored before retries existed.
    #[serde(default)]
    pub previous_attempts: Vec<Attempt>,
}

/// Why a [`JobRecord`] is not a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {id} is stored {phase:?}/{status:?}, which {why}")]
pub struct RecordError {
    /// The job.
    pub id: String,
    /// Its stored phase.
    pub phase: Phase,
    /// Its stored status.
    pub status: JobStatus,
    /// What does not fit.
    pub why: &'static str,
}

impl TryFrom<JobRecord> for Job {
    type Error = RecordError;

    fn try_from(r: JobRecord) -> Result<Self, Self::Error> {
        let refuse = |why| RecordError {
            id: r.id.clone(),
            phase: r.phase,
            status: r.status,
            why,
        };
        let stage = match (r.phase, r.status) {
            (Phase::Pending, JobStatus::Queued | JobStatus::Processing) => Stage::Pending,
            (Phase::Submitting, JobStatus::Queued | JobStatus::Processing) => Stage::Submitting,
            (Phase::Polling, JobStatus::Queued | JobStatus::Processing) => Stage::Polling {
                upstream_id: r
                    .upstream_id
                    .clone()
                    .ok_or_else(|| refuse("needs an upstream id"))?,
                started: r.status == JobStatus::Processing,
            },
            (Phase::Downloading, JobStatus::Queued | JobStatus::Processing) => Stage::Downloading {
                upstream_id: r
                    .upstream_id
                    .clone()
                    .ok_or_else(|| refuse("needs an upstream id"))?,
                last_frame_url: r.last_frame_url.clone(),
            },
            (Phase::Finished, JobStatus::Completed) => Stage::Completed {
                upstream_id: r
                    .upstream_id
                    .clone()
                    .ok_or_else(|| refuse("needs an upstream id"))?,
                content: r
                    .content
                    .clone()
                    .ok_or_else(|| refuse("needs its content facts"))?,
            },
            (Phase::Finished, JobStatus::Failed) => Stage::Failed {
                upstream_id: r.upstream_id.clone(),
                error: r.error.clone().ok_or_else(|| refuse("needs an error"))?,
            },
            (Phase::Finished, JobStatus::Cancelled) => Stage::Cancelled {
                upstream_id: r.upstream_id.clone(),
            },
            _ => return Err(refuse("is not a stage a job can be in")),
        };
        Ok(Job {
            id: r.id,
            tenant: r.tenant,
            request_id: r.request_id,
            fingerprint: r.fingerprint,
            model: r.model,
            labels: r.labels,
            request: r.request,
            create_time_ms: r.create_time_ms,
            reply_to: r.reply_to,
            correlation_id: r.correlation_id,
            trace_context: r.trace_context,
            version: r.version,
            last_sequence: r.last_sequence,
            stage,
            progress: Progress {
                upstream_status: r.upstream_status,
                percent: r.progress,
                update_time_ms: r.update_time_ms,
                complete_time_ms: r.complete_time_ms,
                next_action_ms: r.next_action_ms,
                attempts: r.attempts,
                polls: r.polls,
            },
            deleted: r.deleted,
            previous_attempts: r.previous_attempts,
        })
    }
}

impl From<Job> for JobRecord {
    fn from(job: Job) -> Self {
        let status = job.status();
        let phase = job.phase();
        let (upstream_id, error, content, last_frame_url) = match job.stage {
            Stage::Pending | Stage::Submitting => (None, None, None, None),
            Stage::Polling { upstream_id, .. } => (Some(upstream_id), None, None, None),
            Stage::Downloading {
                upstream_id,
                last_frame_url,
            } => (Some(upstream_id), None, None, last_frame_url),
            Stage::Completed {
                upstream_id,
                content,
            } => (Some(upstream_id), None, Some(content), None),
            Stage::Failed { upstream_id, error } => (upstream_id, Some(error), None, None),
            Stage::Cancelled { upstream_id } => (upstream_id, None, None, None),
        };
        JobRecord {
            id: job.id,
            tenant: job.tenant,
            request_id: job.request_id,
            fingerprint: job.fingerprint,
            model: job.model,
            labels: job.labels,
            request: job.request,
            status,
            phase,
            upstream_status: job.progress.upstream_status,
            upstream_id,
            progress: job.progress.percent,
            create_time_ms: job.create_time_ms,
            update_time_ms: job.progress.update_time_ms,
            complete_time_ms: job.progress.complete_time_ms,
            error,
            content,
            version: job.version,
            last_sequence: job.last_sequence,
            next_action_ms: job.progress.next_action_ms,
            attempts: job.progress.attempts,
            polls: job.progress.polls,
            last_frame_url,
            reply_to: job.reply_to,
            correlation_id: job.correlation_id,
            trace_context: job.trace_context,
            deleted: job.deleted,
            previous_attempts: job.previous_attempts,
        }
    }
}

impl JobRecord {
    /// The record of `job`, to change in ways no transition allows (tests, migrations).
    pub fn of(job: &Job) -> JobRecord {
        JobRecord::from(job.clone())
    }
}

/// A job to insert, with the full request the dispatcher will submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The record (version 0, last_sequence 0; the store sets both).
    pub job: Job,
    /// What the dispatcher sends: the validated request, input bytes included, in the stored
    /// form of [`crate::submission`] (opaque to the store).
    pub submission: Bytes,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// A new job id: `vid_` + a UUIDv7 in simple hex (time-ordered, so ids sort by creation).
pub fn new_job_id() -> String {
    format!("vid_{}", uuid::Uuid::now_v7().simple())
}

/// Now, in unix milliseconds (the unit every stored time uses).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip_and_terminal_states_are_the_three_final_ones() {
        for s in [
            JobStatus::Queued,
            JobStatus::Processing,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert!(JobStatus::Completed.is_terminal());
        assert!(JobStatus::Failed.is_terminal());
        assert!(JobStatus::Cancelled.is_terminal());
        assert!(!JobStatus::Queued.is_terminal());
        assert!(!JobStatus::Processing.is_terminal());
        assert_eq!(JobStatus::parse("done"), None);
    }

    fn accepted_job() -> Job {
        Job::accepted(
            Accepted {
                id: new_job_id(),
                tenant: "acme".into(),
                request_id: None,
                fingerprint: "fp".into(),
                model: "m".into(),
                labels: BTreeMap::new(),
                request: Bytes::new(),
                reply_to: None,
                correlation_id: None,
                trace_context: None,
            },
            1_000,
        )
    }

    fn error() -> JobError {
        JobError {
            reason: FailureReason::UpstreamFailed,
            message: "m".into(),
            retryable: true,
            upstream_message: String::new(),
            upstream_http_status: None,
        }
    }

    #[test]
    fn status_is_derived_and_never_moves_back_from_processing_to_queued() {
        let mut job = accepted_job();
        assert_eq!(job.status(), JobStatus::Queued);
        assert_eq!(job.begin_submit(1_001, 5_000), Ok(Record::Quiet));
        assert_eq!(job.status(), JobStatus::Queued);
        // U1: the create answers in_progress ...
        let r = job.submitted(1_002, "task".into(), "in_progress".into(), true, 1_100);
        assert_eq!(r, Ok(Record::Event));
        assert_eq!(job.status(), JobStatus::Processing);
        // ... and the first poll says queued: the word changes, the status does not.
        let r = job.polled(1_100, "queued".into(), false, None, 1_200);
        assert_eq!(r, Ok(Record::Event), "the new word is worth an event");
        assert_eq!(job.status(), JobStatus::Processing);
        assert_eq!(job.upstream_status(), "queued");
        let r = job.polled(1_200, "queued".into(), false, None, 1_300);
        assert_eq!(r, Ok(Record::Quiet), "nothing a subscriber sees changed");
        assert_eq!(job.polls(), 2);
    }

    #[test]
    fn transitions_are_refused_from_stages_that_do_not_allow_them() {
        let mut job = accepted_job();
        assert!(job.polled(1, "x".into(), true, None, 2).is_err());
        assert!(
            job.complete(
                1,
                ContentFacts {
                    size_bytes: 1,
                    sha256: String::new(),
                    mime_type: String::new(),
                    duration_seconds: 0.0,
                    width: 0,
                    height: 0,
                    has_audio: false,
                    has_last_frame: false,
                    matches_request: true,
                    mismatch: String::new(),
                    blob_key: String::new(),
                    last_frame_key: None,
                    last_frame_size: None,
                    last_frame_dropped: None,
                }
            )
            .is_err()
        );
        assert!(
            job.submitted(1, "t".into(), "queued".into(), false, 2)
                .is_err()
        );
        let _ = job.fail(5, error()).expect("a pending job can fail");
        let err = job.cancel(6).expect_err("a failed job cannot be cancelled");
        assert_eq!(err.stage, "failed");
        assert!(job.fail(7, error()).is_err());
        assert_eq!(job.complete_time_ms(), Some(5));
    }

    #[test]
    fn cancel_and_fail_keep_the_upstream_id_for_operators() {
        let mut job = accepted_job();
        let _ = job.begin_submit(1, 2).unwrap();
        let _ = job.submitted(1, "task_7".into(), "queued".into(), false, 2);
        assert_eq!(job.cancel(3), Ok(Record::Event));
        assert_eq!(job.status(), JobStatus::Cancelled);
        assert_eq!(job.upstream_id(), Some("task_7"));
        assert_eq!(job.next_action_ms(), None);
    }

    #[test]
    fn stored_records_round_trip_and_contradictions_are_refused() {
        let mut job = accepted_job();
        let _ = job.begin_submit(1, 2).unwrap();
        let _ = job.submitted(1, "task_7".into(), "in_progress".into(), true, 2);
        let json = serde_json::to_string(&job).unwrap();
        let back: Job = serde_json::from_str(&json).unwrap();
        assert_eq!(back, job);

        let mut record = JobRecord::of(&job);
        record.upstream_id = None;
        let err = Job::try_from(record).unwrap_err();
        assert!(err.to_string().contains("needs an upstream id"), "{err}");

        let mut record = JobRecord::of(&job);
        record.status = JobStatus::Completed;
        assert!(
            Job::try_from(record).is_err(),
            "completed needs phase finished"
        );
    }

    fn failed_job(reason: FailureReason, retryable: bool) -> Job {
        let mut job = accepted_job();
        let _ = job.begin_submit(1_000, 2_000).unwrap();
        let _ = job
            .submitted(1_000, "task_1".into(), "queued".into(), false, 1_500)
            .unwrap();
        let _ = job
            .polled(1_500, "in_progress".into(), true, Some(40), 1_800)
            .unwrap();
        let _ = job
            .fail(
                2_000,
                JobError {
                    reason,
                    retryable,
                    ..error()
                },
            )
            .unwrap();
        job
    }

    #[test]
    fn reopening_for_retry_moves_the_attempt_aside_and_starts_the_job_over() {
        let mut job = failed_job(FailureReason::UpstreamFailed, true);
        assert_eq!(job.reopen_for_retry(3_000), Ok(Record::Event));
        assert_eq!(
            (job.status(), job.phase(), job.next_action_ms()),
            (JobStatus::Queued, Phase::Pending, Some(3_000))
        );
        // Without this the dispatcher would poll the old task instead of submitting again.
        assert_eq!(job.upstream_id(), None);
        assert_eq!((job.error(), job.complete_time_ms()), (None, None));
        assert_eq!((job.attempts(), job.polls(), job.progress()), (0, 0, None));
        assert!(job.upstream_status().is_empty());
        assert_eq!((job.create_time_ms, job.update_time_ms()), (1_000, 3_000));
        let [earlier] = job.previous_attempts() else {
            panic!("one earlier attempt: {:?}", job.previous_attempts())
        };
        assert_eq!(earlier.upstream_id.as_deref(), Some("task_1"));
        assert_eq!(
            earlier.error.as_ref().map(|e| e.reason),
            Some(FailureReason::UpstreamFailed)
        );
        assert_eq!(
            (earlier.complete_time_ms, earlier.retry_time_ms),
            (Some(2_000), 3_000)
        );
    }

    #[test]
    fn only_a_failed_job_with_a_retryable_error_can_be_reopened() {
        let mut running = accepted_job();
        assert_eq!(
            running.reopen_for_retry(3_000),
            Err(RetryRefusal::NotFailed(JobStatus::Queued))
        );
        let mut missing = failed_job(FailureReason::ContentMissing, false);
        let before = missing.clone();
        assert_eq!(
            missing.reopen_for_retry(3_000),
            Err(RetryRefusal::NotRetryable(FailureReason::ContentMissing))
        );
        assert_eq!(missing, before, "a refusal changes nothing");
        let unknown = failed_job(FailureReason::UpstreamOutcomeUnknown, true);
        assert_eq!(unknown.retry_refusal(), None);
    }

    #[test]
    fn a_job_stored_before_retries_existed_reads_with_no_earlier_attempts() {
        let job = failed_job(FailureReason::UpstreamOutcomeUnknown, true);
        let mut json = serde_json::to_value(&job).unwrap();
        json.as_object_mut().unwrap().remove("previous_attempts");
        let read: Job = serde_json::from_value(json).unwrap();
        assert_eq!(read, job);
    }

    #[test]
    fn job_ids_are_prefixed_unique_and_time_ordered() {
        let a = new_job_id();
        let b = new_job_id();
        assert!(a.starts_with("vid_") && a.len() == 36, "{a}");
        assert_ne!(a, b);
        assert!(a < b, "UUIDv7 ids sort by creation: {a} {b}");
    }
}
