//! The embedded [`JobStore`]: one SQLite file in WAL mode, written by a single task with group
//! commit, read through a small pool.
//!
//! # Writes: one writer, group commit
//!
//! `create`, `update`, pruning and `save_cursor` send a command over a bounded channel to the writer task,
//! which owns the only writing connection. It takes the first command, drains whatever else is
//! already queued (up to [`SqliteConfig::max_batch`]), applies them all in one `BEGIN IMMEDIATE`
//! transaction, commits, and only then answers each caller and publishes the batch's events. A
//! durable commit therefore costs one fsync per batch, not per request, and nothing waits for a
//! batch to fill: an idle store commits a lone command at once.
//!
//! Each command's refusal (a reused request id, a stale version) or failure (a constraint)
//! answers that caller alone; the others of the batch still commit. A run of consecutive
//! creates, what a busy batch mostly holds, is written in bulk: one idempotency `SELECT` for
//! the run (per tenant), refusals and repeats decided in memory, then one multi-row `INSERT` per
//! table, all sent to SQLite in a single round trip inside one savepoint. Every statement is a
//! hand-off to sqlx's connection thread, so this is a handful per batch instead of five or six
//! per create. If any statement of the run fails, the savepoint is rolled back and the run is
//! applied again one command at a time, each in its own savepoint, so the failure still hits
//! only its own caller. Other commands always take that one-at-a-time path. If the batch itself cannot commit, every caller of the batch gets
//! [`StoreError::Unavailable`], no event is published, and the writer opens a fresh connection
//! for the next batch so no half-finished transaction state can leak into it.
//!
//! A caller that stops waiting does not withdraw its command: once sent, it is applied (and
//! its event published) like any other. Events carry the time their batch began, a few
//! milliseconds before its commit.
//!
//! # Sequences
//!
//! The writer assigns event sequences itself, inside the transaction that holds SQLite's write
//! lock: at the start of a batch it reads the highest sequence ever handed out (`events` is
//! `AUTOINCREMENT`, so `sqlite_sequence` remembers it even after pruning) and counts up from
//! there. Knowing the sequence before writing lets a job row and its event carry the same
//! snapshot (`last_sequence == sequence`) in one write each. A command rolled back to its
//! savepoint gives its number back; since one writer assigns them in commit order, committed
//! sequences are strictly increasing and gap-free.
//!
//! # Reads
//!
//! Reads use a separate pool of `query_only` connections. In WAL mode readers never block the
//! writer and see every committed batch, so a caller that got its answer from `create` can read
//! the job back at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Sqlite};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::shared::{
    CreateDecision, KnownKey, attach_immutable_parts, decide_creates, decode_job, detached_job_ids,
    encode_event_job, encode_job, immutable_parts,
};
use super::{
    CreateOutcome, EventQuery, JobStore, Lease, LeaseEnd, ListQuery, OwnerRequest, RequestOutcome,
    Saved, StoreError, StoredEvent,
};
use crate::job::{Job, NewJob, Record, now_ms};

/// Most commands committed in one transaction by default. Large enough that a burst of
/// concurrent creates shares one fsync; small enough that one transaction (and the callers
/// waiting on it) stays in the low milliseconds even with labels and event rows per command.
pub const DEFAULT_MAX_BATCH: usize = 256;

/// Events buffered for live subscribers by default. A subscriber further behind than this gets
/// `Lagged` and resumes from the durable log, so this bounds memory, not correctness; 1024
/// covers a few full batches of bursty traffic for a subscriber that is merely slow.
pub const DEFAULT_EVENT_BUFFER: usize = 1024;

/// Read connections by default. Reads are short indexed lookups and WAL readers run in
/// parallel, so a handful is enough on the small machines vidgate targets; more mostly costs
/// page-cache memory per connection.
pub const DEFAULT_READ_CONNECTIONS: u32 = 4;

/// `synchronous = FULL` by default: with WAL, each commit fsyncs the log, so a job that was
/// answered "accepted" survives even a power cut. [`Synchronous::Normal`] skips that fsync: it
/// survives a crash of the process but may lose the last commits on power loss or an OS crash.
pub const DEFAULT_SYNCHRONOUS: Synchronous = Synchronous::Full;

/// How long a statement waits for a lock held by someone else before failing. Inside vidgate
/// only the writer writes, so this only matters when another process (a backup, the `sqlite3`
/// shell) holds the lock; five seconds rides out such short holds without hanging callers.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// WAL pages after which a commit copies the log back into the database file (SQLite's
/// default is 1 000). The busiest pages (the right edge of every index) are rewritten by nearly
/// every batch; a longer log copies each of them once per checkpoint instead of once per 1 000
/// pages, and the checkpoint's fsync comes 4 times less often. The log is then up to ~16 MiB.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 4_000;

/// How many full batches may wait in the writer's queue. Two lets the next batch gather while
/// one commits; beyond that callers wait at the channel (back-pressure) instead of the queue
/// growing without bound.
const QUEUE_BATCHES: usize = 2;

/// Most event sequences one pruning step covers. Pruning runs as a series of these steps, each
/// an ordinary writer command, so deleting a week of events never holds the write lock (and the
/// creates queued behind it) for more than one small delete.
pub const PRUNE_STEP: i64 = 10_000;

mod webhooks;

/// The migrations of the SQLite schema, embedded at compile time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Every commit is on stable storage before it is answered (survives power loss).
    #[default]
    Full,
    /// Commits survive a crash of the process, not of the machine.
    Normal,
}

impl Synchronous {
    /// The number `PRAGMA synchronous` reports for this setting.
    pub fn pragma_level(self) -> i64 {
        match self {
            Self::Full => 2,
            Self::Normal => 1,
        }
    }

    fn to_sqlx(self) -> SqliteSynchronous {
        match self {
            Self::Full => SqliteSynchronous::Full,
            Self::Normal => SqliteSynchronous::Normal,
        }
    }
}

/// Where and how the SQLite store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// The database file, e.g. `./data/vidgate.db`; its directory is created if missing.
    /// `:memory:` is refused: durability is the point of the store.
    pub path: PathBuf,
    /// Durability of each commit; see [`DEFAULT_SYNCHRONOUS`].
    pub synchronous: Synchronous,
    /// Most commands per transaction; see [`DEFAULT_MAX_BATCH`].
    pub max_batch: usize,
    /// Capacity of the live event channel; see [`DEFAULT_EVENT_BUFFER`].
    pub event_buffer: usize,
    /// Size of the read pool; see [`DEFAULT_READ_CONNECTIONS`].
    pub read_connections: u32,
}

impl SqliteConfig {
    /// The defaults, at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: DEFAULT_SYNCHRONOUS,
            max_batch: DEFAULT_MAX_BATCH,
            event_buffer: DEFAULT_EVENT_BUFFER,
            read_connections: DEFAULT_READ_CONNECTIONS,
        }
    }

    fn validate(&self) -> Result<(), StoreError> {
        let path = self.path.to_string_lossy();
        if path.is_empty() || path == ":memory:" || path.starts_with("file::memory:") {
            return Err(invalid_config(
                "path must name a file: an in-memory database would not be durable",
            ));
        }
        if self.max_batch == 0 {
            return Err(invalid_config("max_batch must be at least 1"));
        }
        // tokio's broadcast channel panics outside 1..=usize::MAX / 2.
        if self.event_buffer == 0 || self.event_buffer > usize::MAX / 2 {
            return Err(invalid_config("event_buffer must be at least 1"));
        }
        if self.read_connections == 0 {
            return Err(invalid_config("read_connections must be at least 1"));
        }
        Ok(())
    }
}

fn invalid_config(what: &str) -> StoreError {
    StoreError::Unavailable(format!("invalid SQLite store configuration: {what}"))
}

/// The pragmas in force on the writing connection, as SQLite reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSettings {
    /// `PRAGMA journal_mode` (`wal`).
    pub journal_mode: String,
    /// `PRAGMA synchronous` (2 = FULL, 1 = NORMAL; see [`Synchronous::pragma_level`]).
    pub synchronous: i64,
    /// `PRAGMA foreign_keys`.
    pub foreign_keys: bool,
    /// `PRAGMA busy_timeout`, in milliseconds.
    pub busy_timeout_ms: i64,
}

/// The SQLite [`JobStore`]. See the module documentation for the design.
pub struct SqliteStore {
    commands: mpsc::Sender<Command>,
    reads: SqlitePool,
    events: broadcast::Sender<Arc<StoredEvent>>,
    batches_committed: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `config.path`, brings its schema up to date
    /// and starts the writer task. Must be called inside a tokio runtime.
    pub async fn open(config: SqliteConfig) -> Result<SqliteStore, StoreError> {
        config.validate()?;
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::datadir::private_dir(parent).map_err(|e| {
                StoreError::Unavailable(format!(
                    "open: cannot create the directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
        private_files(&config.path).await?;

        let writer_options = writer_options(&config);
        let mut conn = writer_options
            .connect()
            .await
            .map_err(|e| open_error(&config.path, e))?;
        MIGRATOR.run(&mut conn).await.map_err(|e| {
            let message = format!("open: migrating {}: {e}", config.path.display());
            match e {
                // A database written by a newer (or modified) vidgate: not ours to touch.
                sqlx::migrate::MigrateError::VersionMissing(_)
                | sqlx::migrate::MigrateError::VersionMismatch(_) => StoreError::Corrupt(message),
                _ => StoreError::Unavailable(message),
            }
        })?;
        // The embedded store serves one process: leases left by a previous one (a crash, a
        // kill -9) end now rather than at their expiry, so its jobs resume at once. A job that
        // was `submitting` then is still an unknown outcome when it is next claimed.
        sqlx::query(
            "UPDATE jobs SET lease_token = NULL, lease_until = NULL WHERE lease_token IS NOT NULL",
        )
        .execute(&mut conn)
        .await
        .map_err(|e| open_error(&config.path, e))?;
        // WAL is what lets readers run beside the writer; some file systems (network shares)
        // cannot do it, and SQLite then silently keeps the old mode. Refuse rather than run
        // with readers and writer blocking each other.
        let settings = read_settings(&mut conn)
            .await
            .map_err(|e| open_error(&config.path, e))?;
        if !settings.journal_mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "open: {} could not be switched to WAL mode (it is in {:?} mode)",
                config.path.display(),
                settings.journal_mode
            )));
        }

        let reads = SqlitePoolOptions::new()
            .max_connections(config.read_connections)
            .connect_with(reader_options(&config))
            .await
            .map_err(|e| open_error(&config.path, e))?;

        let (events, _) = broadcast::channel(config.event_buffer);
        let (commands, receiver) =
            mpsc::channel(config.max_batch.saturating_mul(QUEUE_BATCHES).max(1));
        let batches_committed = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn: Some(conn),
            options: writer_options,
            commands: receiver,
            events: events.clone(),
            batches_committed: batches_committed.clone(),
            max_batch: config.max_batch,
        };
        tokio::spawn(writer.run());
        tracing::info!(
            path = %config.path.display(),
            synchronous = ?config.synchronous,
            max_batch = config.max_batch,
            "sqlite store open"
        );
        Ok(SqliteStore {
            commands,
            reads,
            events,
            batches_committed,
        })
    }

    /// Finishes the writes queued so far, then stops the writer and closes every connection.
    /// Calls made afterwards fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close(reply)).await.is_ok() {
            // An error only means the writer already stopped: closed either way.
            let _ = done.await;
        }
        self.reads.close().await;
    }

    /// How many write transactions have committed since open. Commands answered from one
    /// commit share it, so under concurrency this grows slower than the number of writes.
    pub fn batches_committed(&self) -> u64 {
        self.batches_committed.load(Ordering::Relaxed)
    }

    /// The pragmas in force on the writing connection (the one whose durability matters).
    pub async fn writer_settings(&self) -> Result<WriterSettings, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Settings(reply), "writer_settings")
            .await?;
        answer
            .await
            .unwrap_or_else(|_| Err(writer_gone("writer_settings")))
    }

    async fn send(&self, command: Command, op: &'static str) -> Result<(), StoreError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| writer_gone(op))
    }

    async fn write<T>(
        &self,
        op: &'static str,
        make: impl FnOnce(Reply<T>) -> Write,
    ) -> Result<T, StoreError> {
        let (tx, answer) = oneshot::channel();
        let reply = Reply { tx, result: None };
        self.send(Command::Write(Box::new(make(reply))), op).await?;
        answer.await.unwrap_or_else(|_| Err(writer_gone(op)))
    }
}

fn writer_gone(op: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "{op}: the store is closed (its writer has stopped)"
    ))
}

fn open_error(path: &Path, error: sqlx::Error) -> StoreError {
    db_error(&format!("open {}", path.display()), error)
}

fn base_options(config: &SqliteConfig) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(&config.path)
        .synchronous(config.synchronous.to_sqlx())
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
}

/// The database and its WAL files readable by vidgate's user only: the file is created 0600
/// before SQLite opens it (SQLite gives its `-wal` and `-shm` files the database's mode), and
/// files left wider by an older vidgate are tightened.
async fn private_files(path: &std::path::Path) -> Result<(), StoreError> {
    let failed = |e: std::io::Error| {
        StoreError::Unavailable(format!(
            "open: cannot make {} private (0600): {e}",
            path.display()
        ))
    };
    crate::datadir::private_open_options()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(failed)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        crate::datadir::private_file(std::path::Path::new(&file)).map_err(failed)?;
    }
    Ok(())
}

fn writer_options(config: &SqliteConfig) -> SqliteConnectOptions {
    // Only the writer sets WAL: switching modes needs an exclusive lock, and it is a property
    // of the file that readers pick up by themselves.
    base_options(config)
        .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
        // The savepoint around a run of creates journals every page it changes; past 64 KiB
        // SQLite spills that sub-journal to a temporary file (a `pwrite` per page). In memory
        // it is a copy; it holds at most one batch's pages and is gone at the commit.
        .pragma("temp_store", "MEMORY")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
}

fn reader_options(config: &SqliteConfig) -> SqliteConnectOptions {
    // `query_only` rather than a read-only open: a read-only connection cannot recreate the
    // WAL index files, while this one simply refuses to write.
    base_options(config).pragma("query_only", "ON")
}

async fn read_settings(conn: &mut SqliteConnection) -> Result<WriterSettings, sqlx::Error> {
    let journal_mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await?;
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await?;
    let busy_timeout_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await?;
    Ok(WriterSettings {
        journal_mode,
        synchronous,
        foreign_keys: foreign_keys != 0,
        busy_timeout_ms,
    })
}

/// The condition of a due job, up to the bound `now_ms` that follows it: the agenda index's
/// own condition, so that reading due ids needs the index alone. A macro so that the queries
/// built from it stay `&'static str`.
macro_rules! due_up_to {
    () => {
        "next_action_ms IS NOT NULL AND deleted = 0 AND next_action_ms <= "
    };
}

/// A caller's answer slot: filled while the batch runs, sent once the batch is decided.
struct Reply<T> {
    tx: oneshot::Sender<Result<T, StoreError>>,
    result: Option<Result<T, StoreError>>,
}

impl<T> Reply<T> {
    /// Answers with what the command did (its batch committed); true if that was a success.
    fn committed(self, op: &str) -> bool {
        let result = self.result.unwrap_or_else(|| {
            Err(StoreError::Unavailable(format!(
                "{op}: the command was not applied"
            )))
        });
        let succeeded = result.is_ok();
        // A caller that stopped waiting still had its command committed; nothing to tell.
        let _ = self.tx.send(result);
        succeeded
    }

    /// Answers that nothing of the batch was written.
    fn failed(self, op: &str, why: &str) {
        let _ = self.tx.send(Err(StoreError::Unavailable(format!(
            "{op}: the write was not committed: {why}"
        ))));
    }
}

/// A command that writes. Its result is filled in by [`apply_batch`].
enum Write {
    Create {
        new: NewJob,
        reply: Reply<CreateOutcome>,
    },
    /// An update; with a fence, an owner's save (fenced by its lease, applying a recorded
    /// request in the same commit).
    Update {
        job: Job,
        record: Record,
        fence: Option<(Lease, LeaseEnd)>,
        reply: Reply<Saved>,
    },
    /// Claims due, unowned jobs with one new lease.
    Claim {
        now_ms: i64,
        lease: Lease,
        limit: u32,
        reply: Reply<Vec<Job>>,
    },
    /// Moves a lease's end; answers a recorded request.
    Renew {
        id: String,
        lease: Lease,
        reply: Reply<Option<OwnerRequest>>,
    },
    /// A cancel or delete: applied when the job is unowned, recorded otherwise.
    Request {
        id: String,
        tenant: String,
        request: OwnerRequest,
        now_ms: i64,
        reply: Reply<RequestOutcome>,
    },
    /// One step of pruning: deletes events below `below`, at most [`PRUNE_STEP`] sequences.
    PruneStep {
        below: i64,
        reply: Reply<PruneProgress>,
    },
    /// Records a named reader position in the event log.
    SaveCursor {
        name: String,
        sequence: i64,
        reply: Reply<()>,
    },
    /// A webhook endpoint or delivery write ([`webhooks`]).
    Webhook {
        write: webhooks::WebhookWrite,
        reply: Reply<webhooks::WebhookAnswer>,
    },
}

impl Write {
    fn op(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Update { fence: None, .. } => "update",
            Self::Update { fence: Some(_), .. } => "save",
            Self::Claim { .. } => "claim_due",
            Self::Renew { .. } => "renew",
            Self::Request { .. } => "request",
            Self::PruneStep { .. } => "prune_events",
            Self::SaveCursor { .. } => "save_cursor",
            Self::Webhook { .. } => "webhook",
        }
    }

    /// Answers after a commit; true if the command's own outcome was a success.
    fn committed(self) -> bool {
        let op = self.op();
        match self {
            Self::Create { reply, .. } => reply.committed(op),
            Self::Update { reply, .. } => reply.committed(op),
            Self::Claim { reply, .. } => reply.committed(op),
            Self::Renew { reply, .. } => reply.committed(op),
            Self::Request { reply, .. } => reply.committed(op),
            Self::PruneStep { reply, .. } => reply.committed(op),
            Self::SaveCursor { reply, .. } => reply.committed(op),
            Self::Webhook { reply, .. } => reply.committed(op),
        }
    }

    fn failed(self, why: &str) {
        let op = self.op();
        match self {
            Self::Create { reply, .. } => reply.failed(op, why),
            Self::Update { reply, .. } => reply.failed(op, why),
            Self::Claim { reply, .. } => reply.failed(op, why),
            Self::Renew { reply, .. } => reply.failed(op, why),
            Self::Request { reply, .. } => reply.failed(op, why),
            Self::PruneStep { reply, .. } => reply.failed(op, why),
            Self::SaveCursor { reply, .. } => reply.failed(op, why),
            Self::Webhook { reply, .. } => reply.failed(op, why),
        }
    }
}

/// What one pruning step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PruneProgress {
    deleted: u64,
    /// No event below the bound is left.
    done: bool,
}

enum Command {
    /// Boxed: a write carries a whole job and its answer slot, the other commands a pointer.
    Write(Box<Write>),
    Settings(oneshot::Sender<Result<WriterSettings, StoreError>>),
    Close(oneshot::Sender<()>),
}

/// The task that owns the writing connection.
struct Writer {
    /// `None` after a failed batch: the next batch opens a fresh connection.
    conn: Option<SqliteConnection>,
    options: SqliteConnectOptions,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    batches_committed: Arc<AtomicU64>,
    max_batch: usize,
}

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.commands.recv().await {
            let mut writes = Vec::new();
            let mut control = None;
            match first {
                Command::Write(write) => writes.push(*write),
                other => control = Some(other),
            }
            // Group commit: take what is already queued, never wait for more. A control
            // command ends the batch so commands stay in the order they were sent.
            while control.is_none() && !writes.is_empty() && writes.len() < self.max_batch {
                match self.commands.try_recv() {
                    Ok(Command::Write(write)) => writes.push(*write),
                    Ok(other) => control = Some(other),
                    Err(_) => break,
                }
            }
            if !writes.is_empty() {
                self.commit(writes).await;
            }
            match control {
                Some(Command::Settings(reply)) => {
                    let settings = match self.connection().await {
                        Ok(conn) => read_settings(conn).await,
                        Err(e) => Err(e),
                    };
                    let settings = settings.map_err(|e| db_error("writer_settings", e));
                    let _ = reply.send(settings);
                }
                Some(Command::Close(reply)) => {
                    self.shutdown().await;
                    let _ = reply.send(());
                    return;
                }
                Some(Command::Write(_)) | None => {}
            }
        }
        // Every handle was dropped without `close`.
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        self.commands.close();
        if let Some(conn) = self.conn.take()
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "closing the sqlite writer connection failed");
        }
    }

    /// The writing connection, reopened if a failed batch dropped it.
    async fn connection(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.options.connect().await?,
        };
        Ok(self.conn.insert(conn))
    }

    async fn commit(&mut self, mut writes: Vec<Write>) {
        let conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => {
                let why = format!("reopening the writer connection: {e}");
                tracing::error!(commands = writes.len(), error = %why, "sqlite batch failed");
                writes.into_iter().for_each(|w| w.failed(&why));
                return;
            }
        };
        match apply_batch(conn, &mut writes, now_ms()).await {
            Ok(events) => {
                self.batches_committed.fetch_add(1, Ordering::Relaxed);
                let count = writes.len();
                let refused = writes
                    .into_iter()
                    .map(Write::committed)
                    .filter(|ok| !ok)
                    .count();
                tracing::debug!(
                    commands = count,
                    refused,
                    events = events.len(),
                    "batch committed"
                );
                for event in events {
                    // An error only means nobody is listening right now.
                    let _ = self.events.send(Arc::new(event));
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(commands = writes.len(), error = %why, "sqlite batch failed");
                // The connection may be inside a transaction SQLite half-abandoned; a fresh
                // one is the only state we can be sure of.
                self.conn = None;
                writes.into_iter().for_each(|w| w.failed(&why));
            }
        }
    }
}

/// Applies `writes` in one transaction and commits it, filling each command's result. Returns
/// the events written, in sequence order. An `Err` means nothing was committed.
async fn apply_batch(
    conn: &mut SqliteConnection,
    writes: &mut [Write],
    now_ms: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    // IMMEDIATE takes the write lock now, so the sequence read with it cannot go stale. One
    // round trip to sqlx's connection thread for both.
    let highest: i64 = sqlx::query_scalar(BEGIN_AND_HIGHEST_SEQUENCE)
        .fetch_one(&mut *conn)
        .await?;
    match apply_in_transaction(conn, writes, highest + 1, now_ms).await {
        Ok(events) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(events)
        }
        Err(e) => {
            // Best effort: the caller drops this connection anyway.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

async fn apply_in_transaction(
    conn: &mut SqliteConnection,
    writes: &mut [Write],
    first_sequence: i64,
    now_ms: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let mut next_sequence = first_sequence;
    let mut events = Vec::new();
    let mut start = 0;
    while start < writes.len() {
        // A run of creates (the bulk of any busy batch) is written with a handful of
        // multi-row statements; everything else, one command at a time.
        let creates = writes[start..]
            .iter()
            .take_while(|w| matches!(w, Write::Create { .. }))
            .count();
        if creates == 0 {
            apply_one(
                conn,
                &mut writes[start],
                &mut next_sequence,
                &mut events,
                now_ms,
            )
            .await?;
            start += 1;
            continue;
        }
        let run = &mut writes[start..start + creates];
        match apply_creates(conn, run, next_sequence, now_ms).await? {
            Some(written) => {
                if let Some(last) = written.last() {
                    next_sequence = last.sequence + 1;
                }
                events.extend(written);
            }
            None => {
                // Some statement of the run failed and the run was rolled back: redo it one
                // command at a time, so the failure answers its own caller alone.
                for write in run.iter_mut() {
                    apply_one(conn, write, &mut next_sequence, &mut events, now_ms).await?;
                }
            }
        }
        start += creates;
    }
    Ok(events)
}

/// Applies one command inside its own savepoint, filling its result. An `Err` means the
/// transaction itself is broken (the batch fails).
async fn apply_one(
    conn: &mut SqliteConnection,
    write: &mut Write,
    next_sequence: &mut i64,
    events: &mut Vec<StoredEvent>,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("SAVEPOINT command").execute(&mut *conn).await?;
    let outcome = match write {
        Write::Create { new, .. } => apply_create(conn, new, *next_sequence, now_ms)
            .await
            .map(|(outcome, event)| (Answer::Create(outcome), event.into_iter().collect())),
        Write::Update {
            job, record, fence, ..
        } => apply_save(conn, job, *record, fence.as_ref(), *next_sequence, now_ms)
            .await
            .map(|(saved, events)| (Answer::Update(saved), events)),
        Write::Claim {
            now_ms: at,
            lease,
            limit,
            ..
        } => apply_claim(conn, *at, lease, *limit)
            .await
            .map(|jobs| (Answer::Claim(jobs), Vec::new())),
        Write::Renew { id, lease, .. } => apply_renew(conn, id, lease)
            .await
            .map(|request| (Answer::Renew(request), Vec::new())),
        Write::Request {
            id,
            tenant,
            request,
            now_ms: at,
            ..
        } => apply_request(conn, id, tenant, *request, *at, *next_sequence, now_ms)
            .await
            .map(|(outcome, events)| (Answer::Request(outcome), events)),
        Write::PruneStep { below, .. } => apply_prune_step(conn, *below)
            .await
            .map(|progress| (Answer::Prune(progress), Vec::new())),
        Write::SaveCursor { name, sequence, .. } => apply_save_cursor(conn, name, *sequence)
            .await
            .map(|()| (Answer::Cursor, Vec::new())),
        Write::Webhook { write, .. } => webhooks::apply(conn, write)
            .await
            .map(|answer| (Answer::Webhook(answer), Vec::new())),
    };
    match outcome {
        Ok((answer, written)) => {
            sqlx::query("RELEASE command").execute(&mut *conn).await?;
            if let Some(last) = written.last() {
                *next_sequence = last.sequence + 1;
            }
            events.extend(written);
            answer.fill(write);
        }
        Err(CommandError::Refused(e)) => {
            // Refusals are decided before anything is written; the release is a no-op.
            sqlx::query("RELEASE command").execute(&mut *conn).await?;
            fill_error(write, e);
        }
        Err(CommandError::Db(op, e)) => {
            // Undo this command alone. If SQLite already abandoned the whole transaction
            // the savepoint is gone, this fails, and so does the batch.
            sqlx::query("ROLLBACK TO command")
                .execute(&mut *conn)
                .await?;
            sqlx::query("RELEASE command").execute(&mut *conn).await?;
            fill_error(write, db_error(op, e));
        }
    }
    Ok(())
}

/// Most rows per multi-row `INSERT` (12 bound values a job row: 768, under even the oldest
/// SQLite limit of 999 variables per statement).
const ROWS_PER_INSERT: usize = 64;
/// Most request ids looked up by one `SELECT`.
const KEYS_PER_LOOKUP: usize = 500;

/// Applies a run of creates with one idempotency lookup per tenant and one multi-row `INSERT`
/// per table, all inserts in a single round trip to SQLite inside one savepoint: the same rows,
/// sequences and answers as applying them one by one, for a handful of statements instead of
/// five or six per create. Fills the replies and returns the events on success. `Ok(None)`:
/// a statement failed, the savepoint was rolled back, nothing of the run is written and no
/// reply is filled (the caller applies the run one command at a time). `Err`: the transaction
/// is broken.
async fn apply_creates(
    conn: &mut SqliteConnection,
    run: &mut [Write],
    first_sequence: i64,
    now_ms: i64,
) -> Result<Option<Vec<StoredEvent>>, sqlx::Error> {
    const OP: &str = "create";
    let news: Vec<&NewJob> = run
        .iter()
        .filter_map(|w| match w {
            Write::Create { new, .. } => Some(new),
            _ => None,
        })
        .collect();

    // Idempotency keys already stored, one lookup per tenant (per KEYS_PER_LOOKUP keys).
    let mut by_tenant: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for new in &news {
        if let Some(request_id) = &new.job.request_id {
            by_tenant
                .entry(new.job.tenant.as_str())
                .or_default()
                .push(request_id.as_str());
        }
    }
    let mut known: HashMap<(String, String), KnownKey> = HashMap::new();
    for (tenant, keys) in &by_tenant {
        for chunk in keys.chunks(KEYS_PER_LOOKUP) {
            let mut sql = QueryBuilder::<Sqlite>::new(
                "SELECT request_id, id, fingerprint, job FROM jobs WHERE tenant = ",
            );
            sql.push_bind(*tenant).push(" AND request_id IN (");
            let mut list = sql.separated(", ");
            for key in chunk {
                list.push_bind(*key);
            }
            sql.push(")");
            let rows: Vec<(String, String, String, String)> = match sql
                .build_query_as()
                .persistent(chunk.len() == 1)
                .fetch_all(&mut *conn)
                .await
            {
                Ok(rows) => rows,
                // Nothing was written yet: let the one-by-one path report it per caller.
                Err(_) => return Ok(None),
            };
            for (request_id, id, fingerprint, json) in rows {
                let job = decode_job(OP, &id, &json).map_err(|e| e.to_string());
                known.insert(((*tenant).to_owned(), request_id), (id, fingerprint, job));
            }
        }
    }

    // Decide every create in order; a create earlier in the run counts as stored.
    let decisions = decide_creates(&news, &mut known, first_sequence);

    let fresh: Vec<(&Job, &str, &str, &NewJob)> = decisions
        .iter()
        .zip(&news)
        .filter_map(|(d, new)| match d {
            CreateDecision::New {
                job,
                json,
                event_json,
            } => Some((job, json.as_str(), event_json.as_str(), *new)),
            _ => None,
        })
        .collect();
    if !fresh.is_empty() {
        let mut sql = QueryBuilder::<Sqlite>::new("SAVEPOINT bulk");
        for rows in fresh.chunks(ROWS_PER_INSERT) {
            sql.push(
                "; INSERT INTO jobs (id, tenant, request_id, fingerprint, status, model,
                   create_time_ms, next_action_ms, deleted, version, last_sequence, job) ",
            );
            sql.push_values(rows, |mut row, (job, json, _, _)| {
                row.push_bind(job.id.as_str())
                    .push_bind(job.tenant.as_str())
                    .push_bind(job.request_id.as_deref())
                    .push_bind(job.fingerprint.as_str())
                    .push_bind(job.status().as_str())
                    .push_bind(job.model.as_str())
                    .push_bind(job.create_time_ms)
                    .push_bind(job.next_action_ms())
                    .push_bind(job.is_deleted())
                    .push_bind(job.version)
                    .push_bind(job.last_sequence)
                    .push_bind(*json);
            });
            sql.push("; INSERT INTO job_submissions (job_id, submission) ");
            sql.push_values(rows, |mut row, (job, _, _, new)| {
                row.push_bind(job.id.as_str())
                    .push_bind(&new.submission[..]);
            });
            let labels: Vec<(&str, &str, &str)> = rows
                .iter()
                .flat_map(|(job, _, _, _)| {
                    job.labels
                        .iter()
                        .map(|(k, v)| (job.id.as_str(), k.as_str(), v.as_str()))
                })
                .collect();
            for labels in labels.chunks(ROWS_PER_INSERT * 4) {
                sql.push("; INSERT INTO job_labels (job_id, key, value) ");
                sql.push_values(labels, |mut row, (id, key, value)| {
                    row.push_bind(*id).push_bind(*key).push_bind(*value);
                });
            }
            sql.push("; INSERT INTO events (sequence, job_id, tenant, time_ms, job) ");
            sql.push_values(rows, |mut row, (job, _, event_json, _)| {
                row.push_bind(job.last_sequence)
                    .push_bind(job.id.as_str())
                    .push_bind(job.tenant.as_str())
                    .push_bind(now_ms)
                    .push_bind(*event_json);
            });
        }
        sql.push("; RELEASE bulk");
        // One round trip for all of it; the text changes with the run's size, so it is not
        // kept in the statement cache (a lone create's is).
        let written = sql
            .build()
            .persistent(fresh.len() == 1)
            .execute(&mut *conn)
            .await;
        if let Err(e) = written {
            tracing::debug!(creates = fresh.len(), error = %e, "bulk insert failed; applying the creates one by one");
            // Execution stopped at the failing statement, inside the savepoint.
            sqlx::query("ROLLBACK TO bulk; RELEASE bulk")
                .execute(&mut *conn)
                .await?;
            return Ok(None);
        }
    }

    let mut events = Vec::with_capacity(fresh.len());
    for (write, decision) in run.iter_mut().zip(decisions) {
        let Write::Create { reply, .. } = write else {
            continue;
        };
        reply.result = Some(decision.settle(now_ms, &mut events));
    }
    Ok(Some(events))
}

/// A successful command's answer, to put in its reply slot.
enum Answer {
    Create(CreateOutcome),
    Update(Saved),
    Claim(Vec<Job>),
    Renew(Option<OwnerRequest>),
    Request(RequestOutcome),
    Prune(PruneProgress),
    Cursor,
    Webhook(webhooks::WebhookAnswer),
}

impl Answer {
    fn fill(self, write: &mut Write) {
        match (self, write) {
            (Self::Create(value), Write::Create { reply, .. }) => reply.result = Some(Ok(value)),
            (Self::Update(value), Write::Update { reply, .. }) => reply.result = Some(Ok(value)),
            (Self::Claim(value), Write::Claim { reply, .. }) => reply.result = Some(Ok(value)),
            (Self::Renew(value), Write::Renew { reply, .. }) => reply.result = Some(Ok(value)),
            (Self::Request(value), Write::Request { reply, .. }) => reply.result = Some(Ok(value)),
            (Self::Prune(value), Write::PruneStep { reply, .. }) => reply.result = Some(Ok(value)),
            (Self::Cursor, Write::SaveCursor { reply, .. }) => reply.result = Some(Ok(())),
            (Self::Webhook(value), Write::Webhook { reply, .. }) => reply.result = Some(Ok(value)),
            // Each arm of `apply_in_transaction` builds the answer of its own command, so a
            // mismatch cannot happen; the slot stays empty and `Reply::committed` reports it.
            (_, write) => tracing::error!(op = write.op(), "answer of another kind of command"),
        }
    }
}

fn fill_error(write: &mut Write, error: StoreError) {
    match write {
        Write::Create { reply, .. } => reply.result = Some(Err(error)),
        Write::Update { reply, .. } => reply.result = Some(Err(error)),
        Write::Claim { reply, .. } => reply.result = Some(Err(error)),
        Write::Renew { reply, .. } => reply.result = Some(Err(error)),
        Write::Request { reply, .. } => reply.result = Some(Err(error)),
        Write::PruneStep { reply, .. } => reply.result = Some(Err(error)),
        Write::SaveCursor { reply, .. } => reply.result = Some(Err(error)),
        Write::Webhook { reply, .. } => reply.result = Some(Err(error)),
    }
}

/// Why one command of a batch did not apply.
enum CommandError {
    /// The store's rules said no (reused key, stale version, unknown job); nothing was written.
    Refused(StoreError),
    /// A statement failed; the command's savepoint must be rolled back.
    Db(&'static str, sqlx::Error),
}

/// Opens the batch's transaction and reads the highest event sequence ever handed out:
/// `sqlite_sequence` remembers it across pruning; the `MAX` covers a table whose counter row
/// was never written.
const BEGIN_AND_HIGHEST_SEQUENCE: &str = "BEGIN IMMEDIATE;
    SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
               COALESCE((SELECT MAX(sequence) FROM events), 0))";

async fn apply_create(
    conn: &mut SqliteConnection,
    new: &NewJob,
    sequence: i64,
    now_ms: i64,
) -> Result<(CreateOutcome, Option<StoredEvent>), CommandError> {
    const OP: &str = "create";
    let db = |e| CommandError::Db(OP, e);
    if let Some(request_id) = &new.job.request_id {
        // Inside the batch's transaction, so a create earlier in the same batch is seen too.
        let existing: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, fingerprint, job FROM jobs WHERE tenant = ? AND request_id = ?",
        )
        .bind(&new.job.tenant)
        .bind(request_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
        if let Some((existing_id, fingerprint, json)) = existing {
            if fingerprint == new.job.fingerprint {
                let job = decode_job(OP, &existing_id, &json).map_err(CommandError::Refused)?;
                return Ok((CreateOutcome::Existing(job), None));
            }
            return Err(CommandError::Refused(StoreError::RequestIdReused {
                request_id: request_id.clone(),
                existing_id,
            }));
        }
    }

    let mut job = new.job.clone();
    job.version = 1;
    job.last_sequence = sequence;
    let json = encode_job(OP, &job).map_err(CommandError::Refused)?;
    sqlx::query(
        "INSERT INTO jobs (id, tenant, request_id, fingerprint, status, model, create_time_ms,
                           next_action_ms, deleted, version, last_sequence, job)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&job.id)
    .bind(&job.tenant)
    .bind(&job.request_id)
    .bind(&job.fingerprint)
    .bind(job.status().as_str())
    .bind(&job.model)
    .bind(job.create_time_ms)
    .bind(job.next_action_ms())
    .bind(job.is_deleted())
    .bind(job.version)
    .bind(job.last_sequence)
    .bind(&json)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    sqlx::query("INSERT INTO job_submissions (job_id, submission) VALUES (?, ?)")
        .bind(&job.id)
        .bind(&new.submission[..])
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    insert_labels(conn, &job.id, &job.labels)
        .await
        .map_err(db)?;
    let event = insert_event(conn, OP, &job, now_ms).await?;
    Ok((CreateOutcome::Created(job), Some(event)))
}

/// An update, or an owner's save (`fence`): the owner's change, then a request recorded while
/// it worked, each with its event when it has one.
async fn apply_save(
    conn: &mut SqliteConnection,
    job: &Job,
    record: Record,
    fence: Option<&(Lease, LeaseEnd)>,
    sequence: i64,
    now_ms: i64,
) -> Result<(Saved, Vec<StoredEvent>), CommandError> {
    let (job, event, requested) = apply_update(conn, job, record, fence, sequence, now_ms).await?;
    let mut events: Vec<StoredEvent> = event.into_iter().collect();
    let Some(request) = requested.as_deref().and_then(OwnerRequest::parse) else {
        return Ok((Saved { job, applied: None }, events));
    };
    // The owner's write is in; the request it carried is applied on top, in the same commit.
    let next = events.last().map_or(sequence, |e| e.sequence + 1);
    let mut changed = job.clone();
    let took = request.apply(&mut changed, now_ms);
    let job = if took {
        let (job, event, _) =
            apply_update(conn, &changed, Record::Event, None, next, now_ms).await?;
        events.extend(event);
        job
    } else {
        job
    };
    // A finished job needs no owner: its lease ends with the request.
    let release = job.is_terminal() || job.is_deleted();
    sqlx::query(
        "UPDATE jobs SET requested = NULL,
                lease_token = CASE WHEN ?2 THEN NULL ELSE lease_token END,
                lease_until = CASE WHEN ?2 THEN NULL ELSE lease_until END
         WHERE id = ?1",
    )
    .bind(&job.id)
    .bind(release)
    .execute(&mut *conn)
    .await
    .map_err(|e| CommandError::Db("save", e))?;
    Ok((
        Saved {
            job,
            applied: took.then_some(request),
        },
        events,
    ))
}

/// Writes `job` on its version (and, with `fence`, on the owner's lease). Returns the job as
/// stored, its event, and the request recorded for it (only read when fenced).
async fn apply_update(
    conn: &mut SqliteConnection,
    job: &Job,
    record: Record,
    fence: Option<&(Lease, LeaseEnd)>,
    sequence: i64,
    now_ms: i64,
) -> Result<(Job, Option<StoredEvent>, Option<String>), CommandError> {
    const OP: &str = "update";
    let db = |e| CommandError::Db(OP, e);
    let expected = job.version;
    let mut job = job.clone();
    job.version = expected.checked_add(1).ok_or_else(|| {
        CommandError::Refused(StoreError::Corrupt(format!(
            "{OP}: job {} has an exhausted version counter",
            job.id
        )))
    })?;
    // Without an event the job keeps its stored `last_sequence`, whatever the caller's copy
    // says: the SQL patches it into the JSON from the row.
    let new_sequence = (record == Record::Event).then_some(sequence);
    if let Some(sequence) = new_sequence {
        job.last_sequence = sequence;
    }
    let json = encode_job(OP, &job).map_err(CommandError::Refused)?;
    // Unfenced writes (`update`) leave the lease alone; an owner's save must still hold it and
    // says what becomes of it.
    let (token, lease_sql) = match fence {
        None => (None, 0),
        Some((lease, LeaseEnd::Keep)) => (Some(lease.token.as_str()), 0),
        Some((lease, LeaseEnd::Extend(_))) => (Some(lease.token.as_str()), 1),
        Some((lease, LeaseEnd::Release)) => (Some(lease.token.as_str()), 2),
    };
    let extend_to = match fence {
        Some((_, LeaseEnd::Extend(until))) => Some(*until),
        _ => None,
    };
    let stored: Option<(i64, Option<String>)> = sqlx::query_as(
        "UPDATE jobs SET tenant = ?1, request_id = ?2, fingerprint = ?3, status = ?4, model = ?5,
                create_time_ms = ?6, next_action_ms = ?7, deleted = ?8, version = ?9,
                last_sequence = COALESCE(?10, last_sequence),
                job = CASE WHEN ?10 IS NULL THEN json_set(?11, '$.last_sequence', last_sequence)
                           ELSE ?11 END,
                lease_token = CASE ?15 WHEN 2 THEN NULL ELSE lease_token END,
                lease_until = CASE ?15 WHEN 2 THEN NULL WHEN 1 THEN ?16 ELSE lease_until END
         WHERE id = ?12 AND version = ?13 AND (?14 IS NULL OR lease_token = ?14)
         RETURNING last_sequence, CASE WHEN ?14 IS NULL THEN NULL ELSE requested END",
    )
    .bind(&job.tenant)
    .bind(&job.request_id)
    .bind(&job.fingerprint)
    .bind(job.status().as_str())
    .bind(&job.model)
    .bind(job.create_time_ms)
    .bind(job.next_action_ms())
    .bind(job.is_deleted())
    .bind(job.version)
    .bind(new_sequence)
    .bind(&json)
    .bind(&job.id)
    .bind(expected)
    .bind(token)
    .bind(lease_sql)
    .bind(extend_to)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    let Some((last_sequence, requested)) = stored else {
        let found: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT version, lease_token FROM jobs WHERE id = ?")
                .bind(&job.id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        return Err(CommandError::Refused(match found {
            None => StoreError::NotFound(job.id),
            Some((_, holder)) if token.is_some() && holder.as_deref() != token => {
                StoreError::LeaseLost(job.id)
            }
            Some(_) => StoreError::VersionConflict {
                id: job.id,
                expected,
            },
        }));
    };
    job.last_sequence = last_sequence;

    // Labels are set at create and not expected to change, but the filter table must never
    // disagree with the job: rewrite it when they differ.
    let stored_labels: Vec<(String, String)> =
        sqlx::query_as("SELECT key, value FROM job_labels WHERE job_id = ?")
            .bind(&job.id)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    if stored_labels.into_iter().collect::<BTreeMap<_, _>>() != job.labels {
        sqlx::query("DELETE FROM job_labels WHERE job_id = ?")
            .bind(&job.id)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
        insert_labels(conn, &job.id, &job.labels)
            .await
            .map_err(db)?;
    }

    let event = match new_sequence {
        Some(_) => Some(insert_event(conn, OP, &job, now_ms).await?),
        None => None,
    };
    Ok((job, event, requested))
}

/// Claims up to `limit` due jobs nobody owns (no lease, or an ended one) with `lease`.
async fn apply_claim(
    conn: &mut SqliteConnection,
    now_ms: i64,
    lease: &Lease,
    limit_to: u32,
) -> Result<Vec<Job>, CommandError> {
    const OP: &str = "claim_due";
    let rows: Vec<(String, String)> = sqlx::query_as(concat!(
        "UPDATE jobs SET lease_token = ?1, lease_until = ?2 WHERE id IN (
             SELECT id FROM jobs WHERE ",
        due_up_to!(),
        "?3 AND (lease_until IS NULL OR lease_until < ?3)
             ORDER BY next_action_ms, id LIMIT ?4)
         RETURNING id, job"
    ))
    .bind(&lease.token)
    .bind(lease.until_ms)
    .bind(now_ms)
    .bind(limit(limit_to))
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| CommandError::Db(OP, e))?;
    let mut jobs = rows
        .iter()
        .map(|(id, json)| decode_job(OP, id, json))
        .collect::<Result<Vec<Job>, _>>()
        .map_err(CommandError::Refused)?;
    jobs.sort_by(|a, b| (a.next_action_ms(), &a.id).cmp(&(b.next_action_ms(), &b.id)));
    Ok(jobs)
}

/// Moves the end of `lease` on `id`; answers the request recorded for the job, if any.
async fn apply_renew(
    conn: &mut SqliteConnection,
    id: &str,
    lease: &Lease,
) -> Result<Option<OwnerRequest>, CommandError> {
    let renewed: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE jobs SET lease_until = ?1 WHERE id = ?2 AND lease_token = ?3 RETURNING requested",
    )
    .bind(lease.until_ms)
    .bind(id)
    .bind(&lease.token)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| CommandError::Db("renew", e))?;
    match renewed {
        Some(requested) => Ok(requested.as_deref().and_then(OwnerRequest::parse)),
        None => Err(CommandError::Refused(StoreError::LeaseLost(id.to_owned()))),
    }
}

/// A cancel or delete for `tenant`'s job `id` at `at`: applied when nobody owns the job,
/// recorded for its owner otherwise.
async fn apply_request(
    conn: &mut SqliteConnection,
    id: &str,
    tenant: &str,
    request: OwnerRequest,
    at: i64,
    sequence: i64,
    now_ms: i64,
) -> Result<(RequestOutcome, Vec<StoredEvent>), CommandError> {
    const OP: &str = "request";
    let db = |e| CommandError::Db(OP, e);
    let row: Option<(String, Option<i64>)> = sqlx::query_as(
        "SELECT job, CASE WHEN lease_token IS NOT NULL THEN lease_until END FROM jobs WHERE id = ?1",
    )
    .bind(id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
    let Some((json, lease_until)) = row else {
        return Err(CommandError::Refused(StoreError::NotFound(id.to_owned())));
    };
    let job = decode_job(OP, id, &json).map_err(CommandError::Refused)?;
    // Another tenant's job does not exist for this caller, nor does a deleted one.
    if job.tenant != tenant || job.is_deleted() {
        return Err(CommandError::Refused(StoreError::NotFound(id.to_owned())));
    }
    match lease_until.filter(|until| *until >= at) {
        Some(lease_until_ms) => {
            if request == OwnerRequest::Cancel && job.is_terminal() {
                return Ok((RequestOutcome::Refused(job), Vec::new()));
            }
            sqlx::query("UPDATE jobs SET requested = ?1 WHERE id = ?2")
                .bind(request.as_str())
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            Ok((
                RequestOutcome::Recorded {
                    job,
                    lease_until_ms,
                },
                Vec::new(),
            ))
        }
        None => {
            let mut changed = job.clone();
            if !request.apply(&mut changed, at) {
                return Ok((RequestOutcome::Refused(job), Vec::new()));
            }
            let (job, event, _) =
                apply_update(conn, &changed, Record::Event, None, sequence, now_ms).await?;
            // An ended lease and any request recorded under it are settled by this write.
            sqlx::query(
                "UPDATE jobs SET requested = NULL, lease_token = NULL, lease_until = NULL
                 WHERE id = ?1",
            )
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
            Ok((RequestOutcome::Applied(job), event.into_iter().collect()))
        }
    }
}

async fn insert_labels(
    conn: &mut SqliteConnection,
    job_id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), sqlx::Error> {
    for (key, value) in labels {
        sqlx::query("INSERT INTO job_labels (job_id, key, value) VALUES (?, ?, ?)")
            .bind(job_id)
            .bind(key)
            .bind(value)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Appends the event of `job` under `job.last_sequence`: a snapshot without its immutable parts
/// ([`encode_event_job`]), which its row in `jobs` holds.
async fn insert_event(
    conn: &mut SqliteConnection,
    op: &'static str,
    job: &Job,
    now_ms: i64,
) -> Result<StoredEvent, CommandError> {
    let json = encode_event_job(op, job).map_err(CommandError::Refused)?;
    sqlx::query(
        "INSERT INTO events (sequence, job_id, tenant, time_ms, job) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(job.last_sequence)
    .bind(&job.id)
    .bind(&job.tenant)
    .bind(now_ms)
    .bind(&json)
    .execute(&mut *conn)
    .await
    .map_err(|e| CommandError::Db(op, e))?;
    Ok(StoredEvent::of(job, now_ms))
}

async fn apply_prune_step(
    conn: &mut SqliteConnection,
    below: i64,
) -> Result<PruneProgress, CommandError> {
    let db = |e| CommandError::Db("prune_events", e);
    let first: Option<i64> = sqlx::query_scalar("SELECT MIN(sequence) FROM events")
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
    let Some(first) = first.filter(|first| *first < below) else {
        return Ok(PruneProgress {
            deleted: 0,
            done: true,
        });
    };
    let upper = below.min(first.saturating_add(PRUNE_STEP));
    let pruned_through: i64 =
        sqlx::query_scalar("SELECT MAX(sequence) FROM events WHERE sequence < ?")
            .bind(upper)
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?;
    let deleted = sqlx::query("DELETE FROM events WHERE sequence < ?")
        .bind(upper)
        .execute(&mut *conn)
        .await
        .map_err(db)?
        .rows_affected();
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('pruned_through', ?)
         ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
    )
    .bind(pruned_through)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(PruneProgress {
        deleted,
        done: upper >= below,
    })
}

async fn apply_save_cursor(
    conn: &mut SqliteConnection,
    name: &str,
    sequence: i64,
) -> Result<(), CommandError> {
    if sequence < 0 {
        return Err(CommandError::Refused(StoreError::Unavailable(format!(
            "save_cursor: cursor {name:?} cannot be negative (got {sequence})"
        ))));
    }
    sqlx::query(
        "INSERT INTO cursors (name, sequence) VALUES (?, ?)
         ON CONFLICT (name) DO UPDATE SET sequence = excluded.sequence",
    )
    .bind(name)
    .bind(sequence)
    .execute(&mut *conn)
    .await
    .map_err(|e| CommandError::Db("save_cursor", e))?;
    Ok(())
}

/// Maps a database error to the store's: damaged files and undecodable rows are `Corrupt`,
/// everything else (locks, I/O, closed pools) `Unavailable`. sqlx's messages carry SQLite's
/// text and codes, never bound values.
fn db_error(op: &str, error: sqlx::Error) -> StoreError {
    /// SQLITE_CORRUPT and SQLITE_NOTADB, as primary result codes.
    const CORRUPT_CODES: [i64; 2] = [11, 26];
    let corrupt = match &error {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i64>().ok())
            .is_some_and(|code| CORRUPT_CODES.contains(&(code & 0xff))),
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    };
    let message = format!("{op}: {error}");
    if corrupt {
        StoreError::Corrupt(message)
    } else {
        StoreError::Unavailable(message)
    }
}

/// Converts a caller's limit for SQLite, whose `LIMIT` takes a signed integer.
fn limit(value: u32) -> i64 {
    i64::from(value)
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn create(&self, new: NewJob) -> Result<CreateOutcome, StoreError> {
        self.write("create", |reply| Write::Create { new, reply })
            .await
    }

    async fn update(&self, job: Job, record: Record) -> Result<Job, StoreError> {
        self.write("update", |reply| Write::Update {
            job,
            record,
            fence: None,
            reply,
        })
        .await
        .map(|saved| saved.job)
    }

    async fn save(
        &self,
        lease: &Lease,
        job: Job,
        record: Record,
        end: LeaseEnd,
    ) -> Result<Saved, StoreError> {
        let fence = Some((lease.clone(), end));
        self.write("save", |reply| Write::Update {
            job,
            record,
            fence,
            reply,
        })
        .await
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<(Lease, Vec<Job>), StoreError> {
        let lease = Lease {
            token: uuid::Uuid::now_v7().simple().to_string(),
            until_ms,
        };
        let claimed = lease.clone();
        let jobs = self
            .write("claim_due", |reply| Write::Claim {
                now_ms,
                lease: claimed,
                limit,
                reply,
            })
            .await?;
        Ok((lease, jobs))
    }

    async fn renew(
        &self,
        id: &str,
        lease: &Lease,
        until_ms: i64,
    ) -> Result<Option<OwnerRequest>, StoreError> {
        let lease = Lease {
            token: lease.token.clone(),
            until_ms,
        };
        let id = id.to_owned();
        self.write("renew", |reply| Write::Renew { id, lease, reply })
            .await
    }

    async fn request(
        &self,
        id: &str,
        tenant: &str,
        request: OwnerRequest,
        now_ms: i64,
    ) -> Result<RequestOutcome, StoreError> {
        let (id, tenant) = (id.to_owned(), tenant.to_owned());
        self.write("request", |reply| Write::Request {
            id,
            tenant,
            request,
            now_ms,
            reply,
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let json: Option<String> = sqlx::query_scalar("SELECT job FROM jobs WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reads)
            .await
            .map_err(|e| db_error("get", e))?;
        json.map(|json| decode_job("get", id, &json)).transpose()
    }

    async fn submission(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT submission FROM job_submissions WHERE job_id = ?")
                .bind(id)
                .fetch_optional(&self.reads)
                .await
                .map_err(|e| db_error("submission", e))?;
        Ok(bytes.map(Bytes::from))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        // `deleted = 0` and the ORDER BY match the partial index `jobs_tenant_created`, so
        // pages come straight off the index without a sort.
        let mut sql =
            QueryBuilder::<Sqlite>::new("SELECT id, job FROM jobs WHERE deleted = 0 AND tenant = ");
        sql.push_bind(query.tenant.as_str());
        if !query.statuses.is_empty() {
            sql.push(" AND status IN (");
            let mut statuses = sql.separated(", ");
            for status in &query.statuses {
                statuses.push_bind(status.as_str());
            }
            sql.push(")");
        }
        if let Some(model) = &query.model {
            sql.push(" AND model = ").push_bind(model.as_str());
        }
        for (key, value) in &query.labels {
            sql.push(
                " AND EXISTS (SELECT 1 FROM job_labels l WHERE l.job_id = jobs.id AND l.key = ",
            )
            .push_bind(key.as_str())
            .push(" AND l.value = ")
            .push_bind(value.as_str())
            .push(")");
        }
        if let Some((create_time_ms, id)) = &query.after {
            sql.push(" AND (create_time_ms, id) < (")
                .push_bind(*create_time_ms)
                .push(", ")
                .push_bind(id.as_str())
                .push(")");
        }
        sql.push(" ORDER BY create_time_ms DESC, id DESC LIMIT ")
            .push_bind(limit(query.limit));
        let rows: Vec<(String, String)> = sql
            .build_query_as()
            .fetch_all(&self.reads)
            .await
            .map_err(|e| db_error("list", e))?;
        rows.iter()
            .map(|(id, json)| decode_job("list", id, json))
            .collect()
    }

    /// The due ids first, from the agenda index alone (no row read), then the rows of the
    /// ones not skipped: the dispatcher skips the jobs it is working on, up to
    /// `dispatcher.max_concurrent_jobs` of them on every turn, and decoding their JSON each
    /// time would cost more than the rest of the read.
    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        // The soonest due job nobody owns (the agenda index, stopping at the first unowned
        // row), or the soonest end of a lease, after which its job may be claimed again.
        let now = now_ms();
        let (unowned, lease_end): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT next_action_ms FROM jobs
                      WHERE next_action_ms IS NOT NULL AND deleted = 0
                        AND (lease_until IS NULL OR lease_until < ?1)
                      ORDER BY next_action_ms LIMIT 1),
                    (SELECT MIN(lease_until) FROM jobs WHERE lease_until IS NOT NULL
                        AND next_action_ms IS NOT NULL AND deleted = 0)",
        )
        .bind(now)
        .fetch_one(&self.reads)
        .await
        .map_err(|e| db_error("next_due_ms", e))?;
        Ok(match (unowned, lease_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn events_after(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new(
            "SELECT sequence, job_id, tenant, time_ms, job FROM events WHERE sequence > ",
        );
        sql.push_bind(query.after_sequence);
        if let Some(tenant) = &query.tenant {
            sql.push(" AND tenant = ").push_bind(tenant.as_str());
        }
        if let Some(job_id) = &query.job_id {
            sql.push(" AND job_id = ").push_bind(job_id.as_str());
        }
        sql.push(" ORDER BY sequence LIMIT ")
            .push_bind(limit(query.limit));
        let rows: Vec<(i64, String, String, i64, String)> = sql
            .build_query_as()
            .fetch_all(&self.reads)
            .await
            .map_err(|e| db_error("events_after", e))?;
        let mut events = rows
            .into_iter()
            .map(|(sequence, job_id, tenant, time_ms, json)| {
                let job = decode_job("events_after", &job_id, &json)?;
                Ok(StoredEvent {
                    sequence,
                    job_id,
                    tenant,
                    time_ms,
                    job,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // One more query per page: the requests and labels the event rows leave out.
        let ids = detached_job_ids(&events);
        if !ids.is_empty() {
            let mut rows = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(KEYS_PER_LOOKUP) {
                let mut sql = QueryBuilder::<Sqlite>::new("SELECT id, job FROM jobs WHERE id IN (");
                let mut list = sql.separated(", ");
                for id in chunk {
                    list.push_bind(id.as_str());
                }
                sql.push(")");
                let found: Vec<(String, String)> = sql
                    .build_query_as()
                    .fetch_all(&self.reads)
                    .await
                    .map_err(|e| db_error("events_after", e))?;
                rows.extend(found);
            }
            let parts = immutable_parts("events_after", rows)?;
            for event in &mut events {
                attach_immutable_parts("events_after", event, &parts)?;
            }
        }
        Ok(events)
    }

    async fn pruned_through(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE((SELECT value FROM meta WHERE key = 'pruned_through'), 0)",
        )
        .fetch_one(&self.reads)
        .await
        .map_err(|e| db_error("pruned_through", e))
    }

    async fn latest_sequence(&self) -> Result<i64, StoreError> {
        // `sqlite_sequence`, not MAX(sequence): pruning may have deleted the newest events.
        sqlx::query_scalar(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
                        COALESCE((SELECT MAX(sequence) FROM events), 0))",
        )
        .fetch_one(&self.reads)
        .await
        .map_err(|e| db_error("latest_sequence", e))
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        // Prune a prefix of the log: everything before the first event that is not old
        // enough. The log then has no holes above `pruned_through`, which is what a resuming
        // reader relies on; an older event behind a newer one (a clock step back) waits for
        // the next pruning instead of punching a hole. One statement, one snapshot: events
        // committed afterwards are above the bound.
        let below: i64 = sqlx::query_scalar(
            "SELECT COALESCE(
                 (SELECT sequence FROM events WHERE time_ms >= ? ORDER BY sequence LIMIT 1),
                 (SELECT COALESCE(MAX(sequence), 0) FROM events) + 1)",
        )
        .bind(before_ms)
        .fetch_one(&self.reads)
        .await
        .map_err(|e| db_error("prune_events", e))?;
        let mut deleted = 0;
        loop {
            let step = self
                .write("prune_events", |reply| Write::PruneStep { below, reply })
                .await?;
            deleted += step.deleted;
            if step.done {
                return Ok(deleted);
            }
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.events.subscribe()
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT sequence FROM cursors WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.reads)
            .await
            .map_err(|e| db_error("load_cursor", e))
    }

    async fn save_cursor(&self, name: &str, sequence: i64) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write("save_cursor", |reply| Write::SaveCursor {
            name,
            sequence,
            reply,
        })
        .await
    }

    /// The embedded store belongs to one process (it clears every lease when it opens), so
    /// that process holds every role.
    async fn hold_role(
        &self,
        _name: &str,
        _holder: &str,
        _now_ms: i64,
        _until_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn release_role(&self, _name: &str, _holder: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn health(&self) -> Result<(), StoreError> {
        if self.commands.is_closed() {
            return Err(writer_gone("health"));
        }
        sqlx::query("SELECT 1")
            .execute(&self.reads)
            .await
            .map(|_| ())
            .map_err(|e| db_error("health", e))
    }

    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM jobs WHERE deleted = 0 GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.reads)
        .await
        .map_err(|e| db_error("count_by_status", e))?;
        Ok(rows
            .into_iter()
            .map(|(status, n)| (status, u64::try_from(n).unwrap_or(0)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_that_cannot_be_durable_or_bounded_are_refused() {
        assert!(SqliteConfig::new("./data/vidgate.db").validate().is_ok());
        for path in ["", ":memory:", "file::memory:?cache=shared"] {
            assert!(SqliteConfig::new(path).validate().is_err(), "{path:?}");
        }
        let zero_batch = SqliteConfig {
            max_batch: 0,
            ..SqliteConfig::new("x.db")
        };
        assert!(zero_batch.validate().is_err());
        let zero_buffer = SqliteConfig {
            event_buffer: 0,
            ..SqliteConfig::new("x.db")
        };
        assert!(zero_buffer.validate().is_err());
        let huge_buffer = SqliteConfig {
            event_buffer: usize::MAX,
            ..SqliteConfig::new("x.db")
        };
        assert!(huge_buffer.validate().is_err());
        let no_readers = SqliteConfig {
            read_connections: 0,
            ..SqliteConfig::new("x.db")
        };
        assert!(no_readers.validate().is_err());
    }

    #[tokio::test]
    async fn cursors_are_saved_replaced_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cursors.db");
        let store = SqliteStore::open(SqliteConfig::new(&path))
            .await
            .expect("open");
        assert_eq!(store.load_cursor("relay").await.expect("load"), None);
        store.save_cursor("relay", 7).await.expect("save");
        store.save_cursor("other", 3).await.expect("save");
        store.save_cursor("relay", 42).await.expect("save again");
        assert!(store.save_cursor("relay", -1).await.is_err());
        store.close().await;

        let store = SqliteStore::open(SqliteConfig::new(&path))
            .await
            .expect("reopen");
        assert_eq!(store.load_cursor("relay").await.expect("load"), Some(42));
        assert_eq!(store.load_cursor("other").await.expect("load"), Some(3));
        store.close().await;
    }

    #[test]
    fn full_is_the_default_and_levels_match_sqlite() {
        assert_eq!(SqliteConfig::new("x.db").synchronous, Synchronous::Full);
        assert_eq!(Synchronous::Full.pragma_level(), 2);
        assert_eq!(Synchronous::Normal.pragma_level(), 1);
    }

    #[test]
    fn undecodable_jobs_are_corrupt_and_the_message_does_not_repeat_the_data() {
        let error =
            decode_job("get", "vid_1", r#"{"id": "secret-prompt-text"}"#).expect_err("not a job");
        match error {
            StoreError::Corrupt(message) => {
                assert!(
                    message.contains("get") && message.contains("vid_1"),
                    "{message}"
                );
                assert!(!message.contains("secret-prompt-text"), "{message}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn decode_failures_map_to_corrupt_and_the_rest_to_unavailable() {
        assert!(matches!(
            db_error("get", sqlx::Error::ColumnNotFound("job".into())),
            StoreError::Corrupt(_)
        ));
        match db_error("health", sqlx::Error::PoolClosed) {
            StoreError::Unavailable(message) => assert!(message.starts_with("health: ")),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
