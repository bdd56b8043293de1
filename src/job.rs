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
    /// (`JobError::retryable` is false), or without a recorded reason (`None`).
    NotRetryable(Option<FailureReason>),
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
}

/// One job. The store persists it whole (with `version` for optimistic concurrency); every
/// change that users can see appends an event carrying a snapshot of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// vidgate's id, `vid_` + a time-ordered UUID.
    pub id: String,
    /// The tenant of the credential that created it. Tenants are walls.
    pub tenant: String,
    /// The caller's idempotency key (gRPC `request_id`, AMQP `message_id`), if any.
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
    #[serde(with = "b64")]
    pub request: Bytes,
    /// Public status.
    pub status: JobStatus,
    /// Dispatcher phase.
    pub phase: Phase,
    /// Upstream's last status word, verbatim.
    pub upstream_status: String,
    /// Upstream's task id, stored the moment the create answered.
    pub upstream_id: Option<String>,
    /// 0-100 when upstream gives it.
    pub progress: Option<u32>,
    /// Unix milliseconds.
    pub create_time_ms: i64,
    /// Unix milliseconds of the last change.
    pub update_time_ms: i64,
    /// Unix milliseconds of the terminal change.
    pub complete_time_ms: Option<i64>,
    /// Why it failed.
    pub error: Option<JobError>,
    /// The stored video's facts.
    pub content: Option<ContentFacts>,
    /// Bumped by every update; an update with a stale version is refused.
    pub version: i64,
    /// The sequence of this job's latest event.
    pub last_sequence: i64,
    /// When the dispatcher should look at the job next (unix ms); `None` = nothing to do.
    pub next_action_ms: Option<i64>,
    /// Consecutive transient failures of the current step (drives backoff).
    pub attempts: u32,
    /// Status polls made so far.
    pub polls: u32,
    /// Where upstream said the last frame image is (S10), kept for the download step.
    #[serde(default)]
    pub last_frame_url: Option<String>,
    /// AMQP `reply_to` of the message that created the job: its events go there too.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// AMQP `correlation_id` to put on those replies.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// W3C trace context of the request that created it, so later steps link to its trace.
    pub trace_context: Option<String>,
    /// Deleted by the caller: hidden from every read, kept only until pruned.
    pub deleted: bool,
    /// Earlier attempts, oldest first; empty unless the job was retried. `default` because
    /// jobs stored before retries existed have no such field.
    #[serde(default)]
    pub previous_attempts: Vec<Attempt>,
}

impl Job {
    /// Why this job may not be sent again, or `None` when it may: only a failed job whose
    /// failure says the same request could succeed.
    pub fn retry_refusal(&self) -> Option<RetryRefusal> {
        if self.status != JobStatus::Failed {
            return Some(RetryRefusal::NotFailed(self.status));
        }
        match &self.error {
            Some(e) if e.retryable => None,
            other => Some(RetryRefusal::NotRetryable(other.as_ref().map(|e| e.reason))),
        }
    }

    /// Puts a retryable failed job back to the start (queued, `Pending`, due at `now`), as if
    /// just accepted, keeping its id, request and history. The ended attempt moves into
    /// [`Job::previous_attempts`]; its upstream id must leave `upstream_id`, or the
    /// dispatcher would poll the old task instead of submitting a new one.
    pub fn reopen_for_retry(&mut self, now: i64) -> Result<(), RetryRefusal> {
        if let Some(refusal) = self.retry_refusal() {
            return Err(refusal);
        }
        self.previous_attempts.push(Attempt {
            upstream_id: self.upstream_id.take(),
            error: self.error.take(),
            complete_time_ms: self.complete_time_ms.take(),
            retry_time_ms: now,
        });
        self.status = JobStatus::Queued;
        self.phase = Phase::Pending;
        // Everything the dispatcher learnt from the old task goes, so nothing of it leaks into
        // the new attempt's view or steps.
        self.upstream_status.clear();
        self.progress = None;
        self.content = None;
        self.last_frame_url = None;
        self.attempts = 0;
        self.polls = 0;
        self.next_action_ms = Some(now);
        self.update_time_ms = now;
        Ok(())
    }
}

/// A job to insert, with the full request the dispatcher will submit.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The record (version 0, last_sequence 0; the store sets both).
    pub job: Job,
    /// The whole accepted `CreateVideoRequest`, input bytes included, protobuf-encoded.
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

    fn failed_job(reason: FailureReason, retryable: bool) -> Job {
        Job {
            id: new_job_id(),
            tenant: "acme".into(),
            request_id: None,
            fingerprint: "f".into(),
            model: "turing/veo-3.1-generate".into(),
            labels: BTreeMap::new(),
            request: Bytes::from_static(b"\x0a\x01m"),
            status: JobStatus::Failed,
            phase: Phase::Finished,
            upstream_status: "failed".into(),
            upstream_id: Some("task_1".into()),
            progress: Some(40),
            create_time_ms: 1_000,
            update_time_ms: 2_000,
            complete_time_ms: Some(2_000),
            error: Some(JobError {
                reason,
                message: "m".into(),
                retryable,
                upstream_message: String::new(),
                upstream_http_status: None,
            }),
            content: None,
            version: 3,
            last_sequence: 7,
            next_action_ms: None,
            attempts: 2,
            polls: 5,
            last_frame_url: Some("https://example.com/f.png".into()),
            reply_to: None,
            correlation_id: None,
            trace_context: None,
            deleted: false,
            previous_attempts: Vec::new(),
        }
    }

    #[test]
    fn reopening_for_retry_moves_the_attempt_aside_and_starts_the_job_over() {
        let mut job = failed_job(FailureReason::UpstreamFailed, true);
        job.reopen_for_retry(3_000).unwrap();
        assert_eq!(
            (job.status, job.phase, job.next_action_ms),
            (JobStatus::Queued, Phase::Pending, Some(3_000))
        );
        // Without this the dispatcher would poll the old task instead of submitting again.
        assert_eq!(job.upstream_id, None);
        assert_eq!((job.error.as_ref(), job.complete_time_ms), (None, None));
        assert_eq!((job.attempts, job.polls, job.progress), (0, 0, None));
        assert!(job.upstream_status.is_empty() && job.last_frame_url.is_none());
        assert_eq!((job.create_time_ms, job.update_time_ms), (1_000, 3_000));
        let [earlier] = job.previous_attempts.as_slice() else {
            panic!("one earlier attempt: {:?}", job.previous_attempts)
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
        let mut done = failed_job(FailureReason::UpstreamFailed, true);
        done.status = JobStatus::Completed;
        done.error = None;
        assert_eq!(
            done.clone().reopen_for_retry(3_000),
            Err(RetryRefusal::NotFailed(JobStatus::Completed))
        );
        let mut missing = failed_job(FailureReason::ContentMissing, false);
        assert_eq!(
            missing.reopen_for_retry(3_000),
            Err(RetryRefusal::NotRetryable(Some(
                FailureReason::ContentMissing
            )))
        );
        assert_eq!(
            missing,
            failed_job_like(&missing),
            "a refusal changes nothing"
        );
        let unknown = failed_job(FailureReason::UpstreamOutcomeUnknown, true);
        assert_eq!(unknown.retry_refusal(), None);
    }

    fn failed_job_like(job: &Job) -> Job {
        Job {
            id: job.id.clone(),
            ..failed_job(FailureReason::ContentMissing, false)
        }
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
