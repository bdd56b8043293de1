//! Durable jobs, idempotency keys and the event log, behind one trait.
//!
//! SQLite ([`sqlite::SqliteStore`]) is the embedded default. The trait is shaped so that a
//! PostgreSQL implementation is a second file: plain async calls, no SQLite types, and the
//! rules that matter (idempotency per tenant, optimistic versions, one global event sequence in
//! commit order) stated here, not left to one backend.

pub mod postgres;
mod shared;
pub mod sqlite;
pub mod webhooks;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::job::{Job, JobStatus, NewJob, Record};

/// One entry of the event log: a job's state as of one committed change.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global, strictly increasing in commit order.
    pub sequence: i64,
    /// The job it is about.
    pub job_id: String,
    /// The job's tenant (events are filtered by it).
    pub tenant: String,
    /// Unix milliseconds of the commit.
    pub time_ms: i64,
    /// The job as of this event (its `last_sequence` equals `sequence`).
    pub job: Job,
}

impl StoredEvent {
    /// The event of `job` as of its `last_sequence`, committed at `time_ms`.
    pub fn of(job: &Job, time_ms: i64) -> Self {
        Self {
            sequence: job.last_sequence,
            job_id: job.id.clone(),
            tenant: job.tenant.clone(),
            time_ms,
            job: job.clone(),
        }
    }
}

/// What [`JobStore::create`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// A new job was inserted, with its first event.
    Created(Job),
    /// The tenant already has a job under this `request_id` with the same fingerprint: this is
    /// that job (an idempotent retry). Nothing was written.
    Existing(Job),
}

/// Which jobs a listing wants. Newest first; `after` continues a previous page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only this tenant's jobs (always set by the API).
    pub tenant: String,
    /// Any of these statuses; empty = all.
    pub statuses: Vec<JobStatus>,
    /// Only this model; `None` = all.
    pub model: Option<String>,
    /// Every one of these labels must match exactly.
    pub labels: BTreeMap<String, String>,
    /// The position after which to continue: the last job of the previous page
    /// (`create_time_ms`, `id`), exclusive.
    pub after: Option<(i64, String)>,
    /// At most this many jobs.
    pub limit: u32,
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    /// Events with a sequence greater than this.
    pub after_sequence: i64,
    /// Only this tenant's events.
    pub tenant: Option<String>,
    /// Only this job's events.
    pub job_id: Option<String>,
    /// At most this many.
    pub limit: u32,
}

/// A claim on a job's progress: whoever holds it is the job's one writer until it ends. Every
/// write of the holder is fenced by the token, so a holder that paused past its lease (GC,
/// SIGSTOP, a partition) and lost the job to a new claim cannot write over the new owner's
/// work. Ownership is a property of the stored job, not of a process's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Unique per claim (not per process): a second claim by the same process is another owner.
    pub token: String,
    /// Unix milliseconds after which the job may be claimed by someone else.
    pub until_ms: i64,
}

/// What an owner's write does to its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// The step goes on; the lease keeps its expiry.
    Keep,
    /// The step goes on for longer (a create on the wire): the lease now ends at this time.
    Extend(i64),
    /// The step is over: the job is free for the next claim when it is due.
    Release,
}

/// What the job's owner, or the API for a job nobody owns, is asked to do on the owner's
/// behalf. Recorded in the store while the job is owned, applied by the owner's next write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRequest {
    /// `CancelVideo`.
    Cancel,
    /// `DeleteVideo` (a running job is cancelled first).
    Delete,
}

impl OwnerRequest {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Delete => "delete",
        }
    }

    /// Reads [`OwnerRequest::as_str`] back.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "cancel" => Some(Self::Cancel),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }

    /// Applies the request to `job` at `now`: the transition and whether it took. A cancel of a
    /// finished job does not take (the caller is told how it finished); a delete always does.
    pub fn apply(self, job: &mut Job, now: i64) -> bool {
        match self {
            Self::Cancel => job.cancel(now).is_ok(),
            Self::Delete => {
                job.delete(now);
                true
            }
        }
    }
}

/// What [`JobStore::request`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    /// Nobody owned the job: the request was applied at once, with its event. The job as
    /// stored.
    Applied(Job),
    /// The job is owned: the request is recorded and its owner applies it with its next
    /// write, at the latest before `lease_until_ms`. The job as it was.
    Recorded {
        /// The job as it was when the request was recorded.
        job: Job,
        /// When the owner's lease ends (after which the request can be applied without it).
        lease_until_ms: i64,
    },
    /// The request cannot apply (a cancel of a finished job): the job as it is.
    Refused(Job),
}

/// What an owner's write stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// The job as stored, after any request recorded for it was applied.
    pub job: Job,
    /// The request this write applied (recorded while the owner worked), if any.
    pub applied: Option<OwnerRequest>,
}

/// Store failures. Messages never contain request bodies or secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The same tenant used this `request_id` for a different request.
    #[error(
        "request_id {request_id:?} was already used for a different request (job {existing_id})"
    )]
    RequestIdReused {
        /// The key.
        request_id: String,
        /// The job it names.
        existing_id: String,
    },
    /// An update carried a stale version: someone else changed the job first.
    #[error("job {id} changed concurrently (expected version {expected}); read it again")]
    VersionConflict {
        /// The job.
        id: String,
        /// The version the update was based on.
        expected: i64,
    },
    /// The job does not exist.
    #[error("job {0} does not exist")]
    NotFound(String),
    /// The writer's lease on the job ended and someone else claimed it (or it was released):
    /// the write is refused so it cannot overwrite the new owner's work.
    #[error("job {0} is no longer owned by this writer (its lease ended); nothing was written")]
    LeaseLost(String),
    /// The database cannot be reached or failed; the operation may be retried.
    #[error("the job store is unavailable: {0}")]
    Unavailable(String),
    /// Stored data could not be read back (corruption or an incompatible schema).
    #[error("the job store holds data vidgate cannot read: {0}")]
    Corrupt(String),
}

/// The durable heart of vidgate.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Inserts a job and its first event in one commit, unless `(tenant, request_id)` already
    /// names a job: then the existing job is returned when its fingerprint matches, and
    /// [`StoreError::RequestIdReused`] when it does not. Returns only after the commit is
    /// durable. Concurrent creates may be committed together (group commit); a duplicate key
    /// inside a batch answers its caller without failing the others.
    async fn create(&self, new: NewJob) -> Result<CreateOutcome, StoreError>;

    /// Writes `job` if the stored version still equals `job.version`; the stored version
    /// becomes `job.version + 1` and `update_time_ms` is kept as given. With
    /// [`Record::Event`], appends an event in the same commit and sets `last_sequence` to its
    /// sequence. Returns the job as stored.
    async fn update(&self, job: Job, record: Record) -> Result<Job, StoreError>;

    /// A job by id, deleted or not (callers decide what a deleted job means to them).
    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;

    /// The full accepted request (input bytes included) of a job.
    async fn submission(&self, id: &str) -> Result<Option<Bytes>, StoreError>;

    /// A page of a tenant's jobs, newest first, deleted ones left out.
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError>;

    /// Claims jobs that are due (`next_action_ms` at or before `now_ms`, not deleted) and that
    /// nobody owns (no lease, or one that ended before `now_ms`), soonest first, at most
    /// `limit`, with one new lease ending at `until_ms`, in one write. A job is claimed by one
    /// caller at a time, also across processes sharing the store.
    async fn claim_due(
        &self,
        now_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<(Lease, Vec<Job>), StoreError>;

    /// An owner's write: like [`JobStore::update`], and also refused with
    /// [`StoreError::LeaseLost`] unless `lease` still holds the job. A request recorded while
    /// the owner worked ([`JobStore::request`]) is applied in the same commit, after the
    /// owner's change, with its own event. `end` says what becomes of the lease.
    async fn save(
        &self,
        lease: &Lease,
        job: Job,
        record: Record,
        end: LeaseEnd,
    ) -> Result<Saved, StoreError>;

    /// Moves the end of `lease` on `id` to `until_ms` while a long step runs (a download, a
    /// wait at the rate limit). Returns a request recorded for the job, so the owner can stop
    /// early; [`StoreError::LeaseLost`] when the lease no longer holds the job.
    async fn renew(
        &self,
        id: &str,
        lease: &Lease,
        until_ms: i64,
    ) -> Result<Option<OwnerRequest>, StoreError>;

    /// Cancel or delete `id` for `tenant`, in one write: applied at once when nobody owns the
    /// job, recorded for the owner otherwise. Another tenant's job, or a deleted one, is
    /// [`StoreError::NotFound`].
    async fn request(
        &self,
        id: &str,
        tenant: &str,
        request: OwnerRequest,
        now_ms: i64,
    ) -> Result<RequestOutcome, StoreError>;

    /// The earliest time at which a job will be due and unowned, if one has something to do.
    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError>;

    /// Logged events after a cursor, in sequence order.
    async fn events_after(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError>;

    /// The highest sequence ever pruned (0 if none): a cursor below it may have missed events.
    async fn pruned_through(&self) -> Result<i64, StoreError>;

    /// The highest sequence committed so far (0 if none).
    async fn latest_sequence(&self) -> Result<i64, StoreError>;

    /// Deletes events older than `before_ms`; returns how many.
    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// Every event from now on, right after its commit, in sequence order. The channel is
    /// bounded: a receiver that falls behind gets `Lagged` and must resume from the log.
    fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>>;

    /// Whether the store answers.
    async fn health(&self) -> Result<(), StoreError>;

    /// How many live (not deleted) jobs are in each status, by the status's wire name
    /// (`queued`, `running`, ...). A full scan: meant for a metrics scrape, not a hot path.
    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError>;

    /// A named reader position in the event log (e.g. the AMQP relay's highest sequence below
    /// which every event is confirmed), or `None` if it was never saved.
    async fn load_cursor(&self, name: &str) -> Result<Option<i64>, StoreError>;

    /// Durably records a named reader position (replacing the previous one). Returns after the
    /// commit, like every write.
    async fn save_cursor(&self, name: &str, sequence: i64) -> Result<(), StoreError>;

    /// Takes or keeps the role `name` (e.g. the AMQP relay) for `holder` until `until_ms`, in
    /// one write: true when `holder` holds it afterwards (it was free, the previous hold ended
    /// before `now_ms`, or `holder` already held it). One holder at a time among all the
    /// instances sharing the store; a holder that stops renewing loses the role when its hold
    /// ends.
    async fn hold_role(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Operations slower than the backend's threshold so far (a metric), or `None` where the
    /// backend does not measure them.
    fn slow_operations(&self) -> Option<u64> {
        None
    }

    /// Gives up `name` if `holder` holds it (a clean shutdown: another instance takes over at
    /// once instead of when the hold ends).
    async fn release_role(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}
