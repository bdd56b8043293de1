//! What every store test stands on: a store of one backend with its own storage (a temporary
//! directory for SQLite, a schema of its own for PostgreSQL), and the helpers that build jobs
//! in any stage.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use vidgate::job::{ContentFacts, Job, JobRecord, JobStatus, NewJob, Phase, new_job_id};
use vidgate::store::postgres::PostgresStore;
use vidgate::store::sqlite::{SqliteConfig, SqliteStore};
use vidgate::store::{CreateOutcome, EventQuery, JobStore, Lease, StoreError, StoredEvent};

use crate::support::postgres::{Database, TestSchema, database};

/// How long a test waits for something that should happen promptly (a live event) before it
/// fails. Generous: the machine is shared.
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// A directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "vidgate-store-sqlite-{}",
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("data").join("vidgate.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One test's store, and what it needs to close, reopen and clean up.
pub struct Fixture {
    open: Open,
}

enum Open {
    Sqlite {
        dir: TempDir,
        store: Option<Arc<SqliteStore>>,
    },
    Postgres {
        _db: Box<Database>,
        schema: TestSchema,
        store: Option<Arc<PostgresStore>>,
    },
}

impl Fixture {
    /// A fresh, empty store of `backend` for the test `name`.
    pub async fn open(backend: Backend, name: &str) -> Fixture {
        let open = match backend {
            Backend::Sqlite => Open::Sqlite {
                dir: TempDir::new(),
                store: None,
            },
            Backend::Postgres => {
                let db = database().await;
                let schema = db.schema(name);
                Open::Postgres {
                    _db: Box::new(db),
                    schema,
                    store: None,
                }
            }
        };
        let mut fixture = Fixture { open };
        fixture.open_again(None).await;
        fixture
    }

    pub fn backend(&self) -> Backend {
        match self.open {
            Open::Sqlite { .. } => Backend::Sqlite,
            Open::Postgres { .. } => Backend::Postgres,
        }
    }

    /// The store under test, behind the trait.
    pub fn store(&self) -> Arc<dyn JobStore> {
        match &self.open {
            Open::Sqlite { store, .. } => store.clone().expect("a store is open"),
            Open::Postgres { store, .. } => store.clone().expect("a store is open"),
        }
    }

    /// The same store's webhook endpoints and deliveries.
    pub fn webhooks(&self) -> Arc<dyn vidgate::store::webhooks::WebhookStore> {
        match &self.open {
            Open::Sqlite { store, .. } => store.clone().expect("a store is open"),
            Open::Postgres { store, .. } => store.clone().expect("a store is open"),
        }
    }

    /// Write transactions the store committed since it was opened.
    pub fn batches_committed(&self) -> u64 {
        match &self.open {
            Open::Sqlite { store, .. } => store.as_ref().map_or(0, |s| s.batches_committed()),
            Open::Postgres { store, .. } => store.as_ref().map_or(0, |s| s.batches_committed()),
        }
    }

    /// Closes the store (it answers `Unavailable` from then on); the data stays.
    pub async fn close(&self) {
        match &self.open {
            Open::Sqlite {
                store: Some(store), ..
            } => store.close().await,
            Open::Postgres {
                store: Some(store), ..
            } => store.close().await,
            _ => {}
        }
    }

    /// Closes the store and opens another on the same file or schema.
    pub async fn reopen(&mut self) {
        self.close().await;
        self.open_again(None).await;
    }

    /// Drops the store without closing it (as a crash of the caller would leave it), then
    /// opens another on the same file or schema. The test must have dropped its own handles.
    pub async fn drop_and_reopen(&mut self) {
        let last = match &mut self.open {
            Open::Sqlite { store, .. } => store.take().map(|s| Arc::strong_count(&s)),
            Open::Postgres { store, .. } => store.take().map(|s| Arc::strong_count(&s)),
        };
        assert_eq!(
            last,
            Some(1),
            "the fixture held the last handle on the store"
        );
        self.open_again(None).await;
    }

    /// Closes the store and opens another that commits at most `max_batch` commands at once.
    pub async fn reopen_with_max_batch(&mut self, max_batch: usize) {
        self.close().await;
        self.open_again(Some(max_batch)).await;
    }

    async fn open_again(&mut self, max_batch: Option<usize>) {
        match &mut self.open {
            Open::Sqlite { dir, store } => {
                *store = None;
                let mut config = SqliteConfig::new(dir.db());
                if let Some(max_batch) = max_batch {
                    config.max_batch = max_batch;
                }
                *store = Some(Arc::new(
                    SqliteStore::open(config).await.expect("open store"),
                ));
            }
            Open::Postgres { schema, store, .. } => {
                *store = None;
                let mut config = schema.config();
                if let Some(max_batch) = max_batch {
                    config.max_batch = max_batch;
                }
                *store = Some(Arc::new(PostgresStore::open(config).await.unwrap_or_else(
                    |e| panic!("opening the PostgreSQL store on {}: {e}", schema.name),
                )));
            }
        }
    }

    /// Closes the store and removes its storage (the directory, the schema).
    pub async fn cleanup(self) {
        self.close().await;
        match self.open {
            Open::Sqlite { store, dir } => {
                drop(store);
                drop(dir);
            }
            Open::Postgres { store, schema, .. } => {
                drop(store);
                schema.drop().await;
            }
        }
    }

    /// Every row of the event log as stored: sequence and the job's JSON, in sequence order.
    pub async fn event_rows(&self) -> Vec<(i64, String)> {
        const SQL: &str = "SELECT sequence, job FROM events ORDER BY sequence";
        match &self.open {
            Open::Sqlite { dir, .. } => {
                use sqlx::{ConnectOptions, Connection};
                let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.db())
                    .connect()
                    .await
                    .expect("side connection");
                let rows = sqlx::query_as(SQL)
                    .fetch_all(&mut conn)
                    .await
                    .expect("event rows");
                conn.close().await.expect("close side connection");
                rows
            }
            Open::Postgres { schema, .. } => {
                use sqlx::Connection;
                let mut conn = schema.connect().await;
                let rows = sqlx::query_as(SQL)
                    .fetch_all(&mut conn)
                    .await
                    .expect("event rows");
                let _ = conn.close().await;
                rows
            }
        }
    }

    /// Appends an event row as given, outside the store (a row written by an earlier version).
    pub async fn insert_event_row(&self, sequence: i64, job: &Job, time_ms: i64, json: &str) {
        match &self.open {
            Open::Sqlite { dir, .. } => {
                use sqlx::{ConnectOptions, Connection};
                let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.db())
                    .connect()
                    .await
                    .expect("side connection");
                sqlx::query(
                    "INSERT INTO events (sequence, job_id, tenant, time_ms, job)
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(sequence)
                .bind(&job.id)
                .bind(&job.tenant)
                .bind(time_ms)
                .bind(json)
                .execute(&mut conn)
                .await
                .expect("insert event row");
                conn.close().await.expect("close side connection");
            }
            Open::Postgres { schema, .. } => {
                use sqlx::Connection;
                let mut conn = schema.connect().await;
                sqlx::query(
                    "INSERT INTO events (sequence, job_id, tenant, time_ms, job)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(sequence)
                .bind(&job.id)
                .bind(&job.tenant)
                .bind(time_ms)
                .bind(json)
                .execute(&mut conn)
                .await
                .expect("insert event row");
                let _ = conn.close().await;
            }
        }
    }

    /// The live events of `receiver` once `count` of them were published, and asserts that no
    /// other follows.
    ///
    /// Backend-specific: SQLite's writer publishes a batch's events before its callers run
    /// again, so they are all in the channel when the writes return (nothing is awaited). The
    /// PostgreSQL store publishes through its tail task (the same path that carries other
    /// instances' events), a moment after its callers were answered, so they are awaited (and
    /// a short wait follows before "nothing else").
    pub async fn live_events(
        &self,
        receiver: &mut broadcast::Receiver<Arc<StoredEvent>>,
        count: usize,
    ) -> Vec<Arc<StoredEvent>> {
        let mut received = Vec::new();
        match self.backend() {
            Backend::Sqlite => {
                while let Ok(event) = receiver.try_recv() {
                    received.push(event);
                }
            }
            Backend::Postgres => {
                while received.len() < count {
                    match tokio::time::timeout(PROMPTLY, receiver.recv()).await {
                        Ok(Ok(event)) => received.push(event),
                        Ok(Err(e)) => panic!("live events: {e}"),
                        Err(_) => panic!(
                            "only {} of {count} live events within {PROMPTLY:?}",
                            received.len()
                        ),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                while let Ok(event) = receiver.try_recv() {
                    received.push(event);
                }
            }
        }
        received
    }
}

pub fn new_job(
    tenant: &str,
    request_id: Option<&str>,
    fingerprint: &str,
    create_time_ms: i64,
) -> NewJob {
    NewJob {
        job: job_of(JobRecord {
            id: new_job_id(),
            tenant: tenant.to_owned(),
            request_id: request_id.map(str::to_owned),
            fingerprint: fingerprint.to_owned(),
            model: "turing/veo-3.1-generate".to_owned(),
            labels: BTreeMap::new(),
            request: Bytes::from_static(b"\x0a\x05hello"),
            status: JobStatus::Queued,
            phase: Phase::Pending,
            upstream_status: String::new(),
            upstream_id: None,
            progress: None,
            create_time_ms,
            update_time_ms: create_time_ms,
            complete_time_ms: None,
            error: None,
            content: None,
            version: 0,
            last_sequence: 0,
            next_action_ms: None,
            attempts: 0,
            polls: 0,
            last_frame_url: None,
            reply_to: None,
            correlation_id: None,
            trace_context: None,
            deleted: false,
            previous_attempts: Vec::new(),
        }),
        submission: Bytes::from_static(b"\x0a\x05hello\x12\x03img"),
    }
}

/// A job from its stored form: tests put jobs in any stage without driving them there.
pub fn job_of(record: JobRecord) -> Job {
    Job::try_from(record).expect("a consistent job record")
}

/// Upstream has it and is generating.
pub fn processing(r: &mut JobRecord) {
    r.status = JobStatus::Processing;
    r.phase = Phase::Polling;
    r.upstream_id = Some("task".into());
}

/// Done, with a stored video.
pub fn completed(r: &mut JobRecord) {
    r.status = JobStatus::Completed;
    r.phase = Phase::Finished;
    r.upstream_id = Some("task".into());
    r.content = Some(ContentFacts {
        size_bytes: 1,
        sha256: "00".repeat(32),
        mime_type: "video/mp4".into(),
        duration_seconds: 4.0,
        width: 1280,
        height: 720,
        has_audio: false,
        has_last_frame: false,
        matches_request: true,
        mismatch: String::new(),
        blob_key: "videos/x.mp4".into(),
        last_frame_key: None,
        last_frame_size: None,
        last_frame_dropped: None,
    });
}

/// `job` with its stored form changed by `change`.
pub fn edit(job: &Job, change: impl FnOnce(&mut JobRecord)) -> Job {
    let mut record = JobRecord::of(job);
    change(&mut record);
    job_of(record)
}

pub fn created(outcome: Result<CreateOutcome, StoreError>) -> Job {
    match outcome {
        Ok(CreateOutcome::Created(job)) => job,
        other => panic!("expected Created, got {other:?}"),
    }
}

pub async fn all_events(store: &dyn JobStore) -> Vec<StoredEvent> {
    store
        .events_after(&EventQuery {
            limit: 100_000,
            ..EventQuery::default()
        })
        .await
        .expect("events_after")
}

pub fn ids(jobs: &[Job]) -> Vec<String> {
    jobs.iter().map(|j| j.id.clone()).collect()
}

/// A job created due at `due`, then claimed with a lease ending at `until`.
pub async fn claimed(store: &dyn JobStore, due: i64, until: i64) -> (Lease, Job) {
    let mut new = new_job("acme", None, "fp", 1_000);
    new.job = edit(&new.job, |r| r.next_action_ms = Some(due));
    let job = created(store.create(new).await);
    let (lease, jobs) = store.claim_due(due, until, 1).await.expect("claim");
    let [claimed] = jobs.as_slice() else {
        panic!("one job claimed, got {jobs:?}")
    };
    assert_eq!(claimed.id, job.id);
    (lease, claimed.clone())
}

/// Waits until the wall clock has passed `ms`, so later commits carry later times.
pub async fn wait_past(ms: i64) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        if now > ms {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}
