//! Durable jobs, idempotency keys and the event log, behind one trait.
//!
//! SQLite ([`sqlite::SqliteStore`]) is the embedded default. The trait is shaped so that a
//! PostgreSQL implementation is a second file: plain async calls, no SQLite types, and the
//! rules that matter (idempotency per tenant, optimistic versions, one global event sequence in
//! commit order) stated here, not left to one backend.

pub mod sqlite;

use std::collections::{BTreeMap, HashSet};
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

    /// Jobs whose `next_action_ms` is at or before `now_ms`, soonest first, at most `limit`,
    /// leaving out those in `skip` (the ones being worked on) without letting them crowd out
    /// other due jobs. A store may leave the skipped jobs' rows unread.
    async fn due(
        &self,
        now_ms: i64,
        limit: u32,
        skip: &HashSet<String>,
    ) -> Result<Vec<Job>, StoreError>;

    /// The earliest `next_action_ms` of any job, if one has something to do.
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
}
