//! The shared [`JobStore`]: PostgreSQL, for several vidgate instances on one database.
//!
//! # Writes: one batch at a time, cluster-wide
//!
//! Each instance has one writer task. `create`, `update`, `save` and `request` (everything that
//! may append an event) are sent to it over a bounded channel; it takes the first command,
//! drains whatever else is already queued (up to [`PostgresConfig::max_batch`]), and applies
//! them in one transaction (group commit: one WAL flush per batch, not per request). Each
//! command runs inside its own savepoint, so a refusal or a failing statement answers its own
//! caller and the others of the batch still commit. A run of consecutive creates is written
//! with one idempotency lookup and one multi-row `INSERT ... SELECT FROM UNNEST` per table.
//!
//! # Sequences: serialised appends
//!
//! The event log needs sequences that are strictly increasing **in commit order**, so that a
//! reader that has seen sequence N can never later find an event below N committed after it
//! looked. A `BIGSERIAL` does not give that: values are taken when a row is inserted, and a
//! transaction holding 10 can commit after one holding 11 (a reader at 11 would skip 10
//! forever). vidgate serialises appends instead: every write batch starts by locking the one
//! row of `event_counter` (`SELECT ... FOR UPDATE`), numbers its events from there, writes the
//! new highest value back, and commits, which releases the lock. The next batch, from this
//! instance or another, cannot read the counter before that commit is visible, so sequences
//! are gap-free and committed in order; a reader never needs to look below its cursor.
//!
//! This was chosen over the alternative (sequence values from a `SEQUENCE`, and readers that
//! read only below the oldest transaction still open) because it keeps the reader trivial
//! (`sequence > cursor`, as on SQLite), needs no `xid8` bookkeeping, and costs little here:
//! group commit puts many commands under one lock hold, and write batches are short (a few
//! round trips on a local network). The price is that write batches of all instances are
//! applied one after the other; the database's write throughput is shared, not multiplied.
//! Taking the counter lock first in every batch also gives all batches one lock order, so two
//! instances' batches cannot deadlock on job rows.
//!
//! Claims (`claim_due`), lease renewals, cursors and pruning append no event and do not go
//! through the writer: each is one short statement (or transaction) on the pool. Claims use
//! `FOR UPDATE SKIP LOCKED`, so instances claiming at once take different jobs without waiting.
//!
//! # Live events across instances
//!
//! [`JobStore::subscribe`] delivers every event of the cluster, in sequence order. One task per
//! instance (the tail) keeps the highest sequence it has published and publishes what comes
//! next: its own writer's batches directly (when they follow on), everything else by reading
//! the log. It is woken by `LISTEN`/`NOTIFY` (each batch notifies on [`NOTIFY_CHANNEL`] in its
//! transaction, delivered at commit), and also reads the log every
//! [`PostgresConfig::tail_interval`], so a lost notification (a dropped listening connection)
//! delays events, never loses them. The log is the truth; notifications are only wake-ups.
//!
//! # Failures
//!
//! The pool is bounded ([`PostgresConfig::pool_size`]), connections wait at most
//! [`PostgresConfig::acquire_timeout`] for a slot, and every statement is cut at
//! [`PostgresConfig::statement_timeout`] by the server. The server cannot cut anything when
//! the network is what stalls (a partition: no reply, no reset), so every operation also has a
//! deadline of its own ([`PostgresConfig::deadline`]) after which its caller is answered
//! `Unavailable` instead of waiting for TCP to give up (many minutes). A database that is down
//! or restarting answers [`StoreError::Unavailable`]; the pool reconnects by itself when it
//! returns. A batch
//! whose commit fails answers every caller `Unavailable` (a create may then in fact be
//! committed: the caller's retry with its `request_id` finds it).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Postgres, QueryBuilder, Transaction};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod webhooks;

use super::shared::{
    CreateDecision, ImmutableParts, KnownKey, attach_immutable_parts, decide_creates, decode_job,
    detached_job_ids, encode_event_job, encode_job, immutable_parts,
};
use super::{
    CreateOutcome, EventQuery, JobStore, Lease, LeaseEnd, ListQuery, OwnerRequest, RequestOutcome,
    Saved, StoreError, StoredEvent,
};
use crate::job::{Job, NewJob, Record, now_ms};

/// Connections in the pool by default: the writer, the listening connection, and reads.
pub const DEFAULT_POOL_SIZE: u32 = 10;
/// The fewest connections that work: the writer, the listener and one for reads.
pub const MIN_POOL_SIZE: u32 = 3;
/// How long a statement may run before the server cancels it, by default.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a pooled connection, by default.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the tail reads the log when no notification woke it, by default.
pub const DEFAULT_TAIL_INTERVAL: Duration = Duration::from_secs(1);
/// Most commands committed in one transaction by default.
pub const DEFAULT_MAX_BATCH: usize = 256;
/// Live events buffered for subscribers by default.
pub const DEFAULT_EVENT_BUFFER: usize = 1024;
/// A store operation slower than this is counted (and logged at WARN) as slow, by default.
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_millis(500);
/// The `LISTEN`/`NOTIFY` channel that wakes other instances' tails. Shared by every schema of
/// a database: a notification is only a hint to read the log, so a spurious one costs a read.
pub const NOTIFY_CHANNEL: &str = "vidgate_events";
/// Events read from the log per query by the tail.
const TAIL_PAGE: u32 = 512;
/// Sequences deleted per pruning transaction.
const PRUNE_STEP: i64 = 10_000;
/// Commands queued for the writer per batch allowed in one (two batches' worth).
const QUEUE_BATCHES: usize = 2;

/// How to reach the database and how hard to use it.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database?...`. Never logged: it may hold a password.
    pub url: String,
    /// The schema that holds vidgate's tables (created if missing); `None`: the connection's
    /// default `search_path` (normally `public`). Lets several deployments (or tests) share one
    /// database.
    pub schema: Option<String>,
    /// Most connections this instance opens.
    pub pool_size: u32,
    /// Server-side cut-off for any one statement.
    pub statement_timeout: Duration,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// How often the tail reads the log without a notification.
    pub tail_interval: Duration,
    /// Most commands per write transaction.
    pub max_batch: usize,
    /// Live events buffered for subscribers.
    pub event_buffer: usize,
    /// An operation at least this slow is counted in [`PostgresStore::slow_operations`].
    pub slow_threshold: Duration,
}

impl PostgresConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            pool_size: DEFAULT_POOL_SIZE,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            tail_interval: DEFAULT_TAIL_INTERVAL,
            max_batch: DEFAULT_MAX_BATCH,
            event_buffer: DEFAULT_EVENT_BUFFER,
            slow_threshold: DEFAULT_SLOW_THRESHOLD,
        }
    }

    /// The longest any one operation (a read, a claim, a write batch) waits for the database
    /// before its caller is answered `Unavailable`: a connection, then a lock wait and the
    /// statements, each bounded by the server only while the network carries its answer.
    pub fn deadline(&self) -> Duration {
        self.acquire_timeout
            .saturating_add(self.statement_timeout.saturating_mul(2))
    }

    fn validate(&self) -> Result<(), StoreError> {
        if self.pool_size < MIN_POOL_SIZE {
            return Err(invalid(format!(
                "storage.pool_size must be at least {MIN_POOL_SIZE} (the writer, the event \
                 listener and reads each need a connection); got {}",
                self.pool_size
            )));
        }
        if self.max_batch == 0 || self.event_buffer == 0 {
            return Err(invalid(
                "storage.max_batch and storage.event_buffer must be at least 1".to_owned(),
            ));
        }
        if self.statement_timeout.is_zero() || self.acquire_timeout.is_zero() {
            return Err(invalid(
                "the statement and acquire timeouts must be longer than zero".to_owned(),
            ));
        }
        if self.tail_interval.is_zero() {
            return Err(invalid(
                "the tail interval must be longer than zero".to_owned(),
            ));
        }
        if let Some(schema) = &self.schema {
            check_schema_name(schema)?;
        }
        Ok(())
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redacted_url(&self.url))
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout", &self.statement_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("tail_interval", &self.tail_interval)
            .field("max_batch", &self.max_batch)
            .field("event_buffer", &self.event_buffer)
            .field("slow_threshold", &self.slow_threshold)
            .finish()
    }
}

/// `url` with any password replaced, for logs and errors.
pub fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("REDACTED"));
            }
            parsed.to_string()
        }
        Err(_) => "(not a URL)".to_owned(),
    }
}

fn invalid(message: String) -> StoreError {
    StoreError::Unavailable(format!("invalid PostgreSQL store configuration: {message}"))
}

/// A schema name vidgate creates and puts on the `search_path`: a plain lower-case identifier,
/// so it needs no quoting anywhere.
fn check_schema_name(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && schema.len() <= 63 {
        Ok(())
    } else {
        Err(invalid(format!(
            "storage.schema must be 1 to 63 characters of a-z, 0-9 and _, not starting with a \
             digit; got {:?}",
            schema.chars().take(80).collect::<String>()
        )))
    }
}

/// The shared store. Cheap to share behind an `Arc`; [`PostgresStore::close`] ends its tasks.
pub struct PostgresStore {
    pool: PgPool,
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    batches_committed: Arc<AtomicU64>,
    slow: Arc<SlowCounter>,
    /// [`PostgresConfig::deadline`].
    deadline: Duration,
    stop: CancellationToken,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// Operations slower than a threshold.
struct SlowCounter {
    threshold: Duration,
    count: AtomicU64,
}

impl SlowCounter {
    fn observe(&self, op: &'static str, started: Instant) {
        let took = started.elapsed();
        if took >= self.threshold {
            self.count.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                op,
                took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                "slow PostgreSQL store operation"
            );
        }
    }
}

impl PostgresStore {
    /// Connects, creates the schema if asked, applies the migrations (safe when several
    /// instances start at once: the migrator holds an advisory lock), and starts the writer and
    /// the tail.
    pub async fn open(config: PostgresConfig) -> Result<PostgresStore, StoreError> {
        config.validate()?;
        let base = PgConnectOptions::from_str(&config.url).map_err(|e| {
            invalid(format!(
                "storage.url is not a PostgreSQL URL ({}): {}",
                redacted_url(&config.url),
                scrub(&e.to_string(), &config.url)
            ))
        })?;
        let base = base.application_name("vidgate");
        if let Some(schema) = &config.schema {
            // The schema must exist before connections put it on their search_path.
            let mut conn = base
                .connect()
                .await
                .map_err(|e| connect_error(&config, e))?;
            // The name is a checked plain identifier (`check_schema_name`): no quoting needed.
            let created = sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {schema}"
            )))
            .execute(&mut conn)
            .await;
            match created {
                Ok(_) => {}
                // Two instances creating it at once: one wins, the other sees it exist.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23505") => {}
                Err(e) => return Err(db_error("create schema", e)),
            }
            let _ = conn.close().await;
        }
        let statement_timeout = format!("{}ms", config.statement_timeout.as_millis());
        // A session whose client went silent inside a transaction (a partition in the middle
        // of a write batch) would hold the event counter's lock, and with it every instance's
        // writes, until the server's TCP keepalive notices (hours by default): the server ends
        // such a session instead. vidgate's transactions never wait on their client between
        // statements for longer than a round trip.
        let mut options: Vec<(&str, String)> = vec![
            ("statement_timeout", statement_timeout.clone()),
            ("idle_in_transaction_session_timeout", statement_timeout),
        ];
        if let Some(schema) = &config.schema {
            options.push(("search_path", schema.clone()));
        }
        let options = base.options(options);
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| connect_error(&config, e))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("applying the PostgreSQL migrations: {e}"))
            })?;

        let (events, _) = broadcast::channel(config.event_buffer);
        let (commands, receiver) = mpsc::channel(config.max_batch * QUEUE_BATCHES);
        let (committed_tx, committed_rx) = mpsc::channel(64);
        let batches_committed = Arc::new(AtomicU64::new(0));
        let slow = Arc::new(SlowCounter {
            threshold: config.slow_threshold,
            count: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let wake = Arc::new(Notify::new());
        let high: i64 = sqlx::query_scalar("SELECT value FROM event_counter")
            .fetch_one(&pool)
            .await
            .map_err(|e| db_error("open", e))?;
        let writer = Writer {
            pool: pool.clone(),
            commands: receiver,
            committed: committed_tx,
            wake: wake.clone(),
            batches_committed: batches_committed.clone(),
            max_batch: config.max_batch,
            slow: slow.clone(),
            deadline: config.deadline(),
        };
        let tail = Tail {
            pool: pool.clone(),
            own: committed_rx,
            wake,
            events: events.clone(),
            high,
            interval: config.tail_interval,
            deadline: config.deadline(),
            stop: stop.clone(),
        };
        let tasks = vec![tokio::spawn(writer.run()), tokio::spawn(tail.run())];
        Ok(PostgresStore {
            pool,
            commands,
            events,
            batches_committed,
            slow,
            deadline: config.deadline(),
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// Lets queued writes finish, stops the tail and closes the pool.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.stop.cancel();
        let tasks = match self.tasks.lock() {
            Ok(mut tasks) => std::mem::take(&mut *tasks),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for task in tasks {
            let _ = task.await;
        }
        self.pool.close().await;
    }

    /// Write transactions committed so far by this instance.
    pub fn batches_committed(&self) -> u64 {
        self.batches_committed.load(Ordering::Relaxed)
    }

    /// Store operations at least [`PostgresConfig::slow_threshold`] long so far.
    pub fn slow_operations(&self) -> u64 {
        self.slow.count.load(Ordering::Relaxed)
    }

    /// The pool, for tests and benchmarks that compare against plain statements.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn write<T>(
        &self,
        op: &'static str,
        make: impl FnOnce(Reply<T>) -> Write,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let (tx, rx) = oneshot::channel();
        let write = make(Reply { tx, result: None });
        self.commands
            .send(Command::Write(Box::new(write)))
            .await
            .map_err(|_| writer_gone(op))?;
        let result = rx.await.map_err(|_| writer_gone(op))?;
        self.slow.observe(op, started);
        result
    }

    /// Runs one read (or single-statement write) on the pool, counting it if slow.
    async fn timed<T>(
        &self,
        op: &'static str,
        run: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.deadline, run).await {
            Ok(result) => result.map_err(|e| db_error(op, e)),
            Err(_) => Err(no_answer(op, self.deadline)),
        };
        self.slow.observe(op, started);
        result
    }
}

/// An operation cut by its deadline (see [`PostgresConfig::deadline`]).
fn no_answer(op: &str, deadline: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "{op}: no answer from PostgreSQL within {} ms",
        deadline.as_millis()
    ))
}

fn connect_error(config: &PostgresConfig, error: sqlx::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "connecting to PostgreSQL at {}: {}",
        redacted_url(&config.url),
        scrub(&error.to_string(), &config.url)
    ))
}

/// `text` with the password of `url` (if any, and if it appears) replaced.
fn scrub(text: &str, url: &str) -> String {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_owned))
    {
        Some(password) if !password.is_empty() => text.replace(&password, "REDACTED"),
        _ => text.to_owned(),
    }
}

fn writer_gone(op: &str) -> StoreError {
    StoreError::Unavailable(format!("{op}: the store is closed"))
}

/// A caller's answer slot.
struct Reply<T> {
    tx: oneshot::Sender<Result<T, StoreError>>,
    result: Option<Result<T, StoreError>>,
}

impl<T> Reply<T> {
    fn committed(self, op: &str) {
        let result = self.result.unwrap_or_else(|| {
            Err(StoreError::Unavailable(format!(
                "{op}: the command was not applied"
            )))
        });
        let _ = self.tx.send(result);
    }

    fn failed(self, op: &str, why: &str) {
        let _ = self.tx.send(Err(StoreError::Unavailable(format!(
            "{op}: the write was not committed: {why}"
        ))));
    }
}

/// A command for the writer: everything that may append an event.
enum Write {
    Create {
        new: NewJob,
        reply: Reply<CreateOutcome>,
    },
    /// An update; with a fence, an owner's save.
    Update {
        job: Job,
        record: Record,
        fence: Option<(Lease, LeaseEnd)>,
        reply: Reply<Saved>,
    },
    Request {
        id: String,
        tenant: String,
        request: OwnerRequest,
        now_ms: i64,
        reply: Reply<RequestOutcome>,
    },
}

impl Write {
    fn op(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::Update { fence: None, .. } => "update",
            Self::Update { fence: Some(_), .. } => "save",
            Self::Request { .. } => "request",
        }
    }

    fn committed(self) {
        let op = self.op();
        match self {
            Self::Create { reply, .. } => reply.committed(op),
            Self::Update { reply, .. } => reply.committed(op),
            Self::Request { reply, .. } => reply.committed(op),
        }
    }

    fn failed(self, why: &str) {
        let op = self.op();
        match self {
            Self::Create { reply, .. } => reply.failed(op, why),
            Self::Update { reply, .. } => reply.failed(op, why),
            Self::Request { reply, .. } => reply.failed(op, why),
        }
    }

    fn answer(&mut self, answer: Answer) {
        match (self, answer) {
            (Self::Create { reply, .. }, Answer::Create(outcome)) => {
                reply.result = Some(Ok(outcome))
            }
            (Self::Update { reply, .. }, Answer::Update(saved)) => reply.result = Some(Ok(saved)),
            (Self::Request { reply, .. }, Answer::Request(outcome)) => {
                reply.result = Some(Ok(outcome))
            }
            // Each command is answered by its own apply function; nothing else reaches here.
            (write, _) => write.refuse(StoreError::Unavailable(
                "internal: mismatched answer".to_owned(),
            )),
        }
    }

    fn refuse(&mut self, error: StoreError) {
        match self {
            Self::Create { reply, .. } => reply.result = Some(Err(error)),
            Self::Update { reply, .. } => reply.result = Some(Err(error)),
            Self::Request { reply, .. } => reply.result = Some(Err(error)),
        }
    }
}

enum Answer {
    Create(CreateOutcome),
    Update(Saved),
    Request(RequestOutcome),
}

enum Command {
    Write(Box<Write>),
    Close(oneshot::Sender<()>),
}

/// Why one command did not apply: refused by the rules (the caller's answer), or a failing
/// statement (rolled back to the command's savepoint).
enum CommandError {
    Refused(StoreError),
    Db(&'static str, sqlx::Error),
}

/// The task that applies write batches.
struct Writer {
    pool: PgPool,
    commands: mpsc::Receiver<Command>,
    /// Each committed batch's events, to the tail (which publishes them in order).
    committed: mpsc::Sender<Vec<StoredEvent>>,
    /// Pokes the tail when `committed` was full (it then reads the log).
    wake: Arc<Notify>,
    batches_committed: Arc<AtomicU64>,
    max_batch: usize,
    slow: Arc<SlowCounter>,
    /// [`PostgresConfig::deadline`]: a batch not committed by then is answered as failed.
    deadline: Duration,
}

impl Writer {
    async fn run(mut self) {
        while let Some(first) = self.commands.recv().await {
            let mut writes = Vec::new();
            let mut close = None;
            match first {
                Command::Write(write) => writes.push(*write),
                Command::Close(reply) => close = Some(reply),
            }
            while close.is_none() && !writes.is_empty() && writes.len() < self.max_batch {
                match self.commands.try_recv() {
                    Ok(Command::Write(write)) => writes.push(*write),
                    Ok(Command::Close(reply)) => close = Some(reply),
                    Err(_) => break,
                }
            }
            if !writes.is_empty() {
                self.commit(writes).await;
            }
            if let Some(reply) = close {
                self.commands.close();
                let _ = reply.send(());
                return;
            }
        }
    }

    async fn commit(&mut self, mut writes: Vec<Write>) {
        let started = Instant::now();
        // A batch cut by its deadline is dropped mid-way: its transaction is rolled back by the
        // server when the connection's rollback or close reaches it, or it committed just
        // before and only the answer was lost. Either way its callers are told Unavailable, as
        // for any failed commit (a create's retry with its request_id finds a committed job).
        let result = tokio::time::timeout(
            self.deadline,
            apply_batch(&self.pool, &mut writes, now_ms()),
        )
        .await;
        self.slow.observe("write batch", started);
        let result = match result {
            Ok(result) => result.map_err(|e| db_error("write batch", e).to_string()),
            Err(_) => Err(no_answer("write batch", self.deadline).to_string()),
        };
        match result {
            Ok(events) => {
                self.batches_committed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    commands = writes.len(),
                    events = events.len(),
                    "batch committed"
                );
                writes.into_iter().for_each(Write::committed);
                if !events.is_empty()
                    && let Err(mpsc::error::TrySendError::Full(_)) = self.committed.try_send(events)
                {
                    // The tail is behind: it reads these from the log instead.
                    self.wake.notify_one();
                }
            }
            Err(why) => {
                tracing::error!(commands = writes.len(), error = %why, "PostgreSQL batch failed");
                writes.into_iter().for_each(|w| w.failed(&why));
            }
        }
    }
}

/// Applies `writes` in one transaction that holds the event counter, and commits. Returns the
/// events written, in sequence order; an `Err` means nothing was committed.
async fn apply_batch(
    pool: &PgPool,
    writes: &mut [Write],
    now_ms: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The serialisation point of the cluster's writes (see the module's documentation).
    let highest: i64 = sqlx::query_scalar("SELECT value FROM event_counter FOR UPDATE")
        .fetch_one(&mut *tx)
        .await?;
    let mut next = highest + 1;
    let mut events = Vec::new();
    let mut start = 0;
    while start < writes.len() {
        let creates = writes[start..]
            .iter()
            .take_while(|w| matches!(w, Write::Create { .. }))
            .count();
        if creates > 1 {
            let run = &mut writes[start..start + creates];
            if let Some(written) = apply_creates(&mut tx, run, next, now_ms).await? {
                if let Some(last) = written.last() {
                    next = last.sequence + 1;
                }
                events.extend(written);
                start += creates;
                continue;
            }
            // A statement of the run failed and was rolled back: one at a time instead.
            for write in run.iter_mut() {
                apply_one(&mut tx, write, &mut next, &mut events, now_ms).await?;
            }
            start += creates;
            continue;
        }
        apply_one(&mut tx, &mut writes[start], &mut next, &mut events, now_ms).await?;
        start += 1;
    }
    if let Some(last) = events.last() {
        sqlx::query("UPDATE event_counter SET value = $1")
            .bind(last.sequence)
            .execute(&mut *tx)
            .await?;
        // Delivered to every listener when (and only if) the batch commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(last.sequence.to_string())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(events)
}

/// Applies one command in its own savepoint, filling its answer. An `Err` means the
/// transaction itself is broken.
async fn apply_one(
    tx: &mut Transaction<'static, Postgres>,
    write: &mut Write,
    next: &mut i64,
    events: &mut Vec<StoredEvent>,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("SAVEPOINT command").execute(&mut **tx).await?;
    let outcome = match write {
        Write::Create { new, .. } => apply_create(tx, new, *next, now_ms)
            .await
            .map(|(outcome, event)| (Answer::Create(outcome), event.into_iter().collect())),
        Write::Update {
            job, record, fence, ..
        } => apply_save(tx, job, *record, fence.as_ref(), *next, now_ms)
            .await
            .map(|(saved, events)| (Answer::Update(saved), events)),
        Write::Request {
            id,
            tenant,
            request,
            now_ms: at,
            ..
        } => apply_request(tx, id, tenant, *request, *at, *next, now_ms)
            .await
            .map(|(outcome, events)| (Answer::Request(outcome), events)),
    };
    match outcome {
        Ok((answer, written)) => {
            sqlx::query("RELEASE SAVEPOINT command")
                .execute(&mut **tx)
                .await?;
            if let Some(last) = written.last() {
                *next = last.sequence + 1;
            }
            events.extend(written);
            write.answer(answer);
        }
        Err(error) => {
            // Undo whatever this command wrote; the rest of the batch stands.
            sqlx::query("ROLLBACK TO SAVEPOINT command")
                .execute(&mut **tx)
                .await?;
            sqlx::query("RELEASE SAVEPOINT command")
                .execute(&mut **tx)
                .await?;
            write.refuse(match error {
                CommandError::Refused(e) => e,
                CommandError::Db(op, e) => db_error(op, e),
            });
        }
    }
    Ok(())
}

/// A run of creates: one idempotency lookup, then one `INSERT ... SELECT FROM UNNEST` per
/// table, in one savepoint. `Ok(None)`: a statement failed and the run was rolled back (the
/// caller applies it one create at a time, so the failure answers its own caller).
async fn apply_creates(
    tx: &mut Transaction<'static, Postgres>,
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
    sqlx::query("SAVEPOINT bulk").execute(&mut **tx).await?;

    let (tenants, keys): (Vec<&str>, Vec<&str>) = news
        .iter()
        .filter_map(|n| {
            n.job
                .request_id
                .as_deref()
                .map(|r| (n.job.tenant.as_str(), r))
        })
        .unzip();
    let mut known: HashMap<(String, String), KnownKey> = HashMap::new();
    if !keys.is_empty() {
        let rows: Result<Vec<KeyRow>, _> = sqlx::query_as(
            "SELECT j.tenant, j.request_id, j.id, j.fingerprint, j.job
               FROM jobs j
               JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, request_id)
                 ON j.tenant = k.tenant AND j.request_id = k.request_id",
        )
        .bind(&tenants)
        .bind(&keys)
        .fetch_all(&mut **tx)
        .await;
        match rows {
            Ok(rows) => {
                for (tenant, request_id, id, fingerprint, json) in rows {
                    let job = decode_job(OP, &id, &json).map_err(|e| e.to_string());
                    known.insert((tenant, request_id), (id, fingerprint, job));
                }
            }
            Err(_) => return rolled_back(tx).await,
        }
    }

    let decisions = decide_creates(&news, &mut known, first_sequence);

    let fresh: Vec<Fresh> = decisions
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
    if !fresh.is_empty() && insert_jobs(tx, &fresh, now_ms).await.is_err() {
        return rolled_back(tx).await;
    }
    sqlx::query("RELEASE SAVEPOINT bulk")
        .execute(&mut **tx)
        .await?;

    let mut events = Vec::with_capacity(fresh.len());
    for (write, decision) in run.iter_mut().zip(decisions) {
        let Write::Create { reply, .. } = write else {
            continue;
        };
        reply.result = Some(decision.settle(now_ms, &mut events));
    }
    Ok(Some(events))
}

async fn rolled_back(
    tx: &mut Transaction<'static, Postgres>,
) -> Result<Option<Vec<StoredEvent>>, sqlx::Error> {
    sqlx::query("ROLLBACK TO SAVEPOINT bulk")
        .execute(&mut **tx)
        .await?;
    sqlx::query("RELEASE SAVEPOINT bulk")
        .execute(&mut **tx)
        .await?;
    Ok(None)
}

/// A stored job found by its idempotency key: tenant, request id, id, fingerprint, JSON.
type KeyRow = (String, String, String, String, String);

/// A new job to insert: the job, its row's JSON, its first event's JSON, and the create.
type Fresh<'a> = (&'a Job, &'a str, &'a str, &'a NewJob);

/// Inserts new jobs with their submissions, labels and first events: one statement per table.
async fn insert_jobs(
    tx: &mut Transaction<'static, Postgres>,
    fresh: &[Fresh<'_>],
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let ids: Vec<&str> = fresh.iter().map(|(j, _, _, _)| j.id.as_str()).collect();
    let tenants: Vec<&str> = fresh.iter().map(|(j, _, _, _)| j.tenant.as_str()).collect();
    let request_ids: Vec<Option<&str>> = fresh
        .iter()
        .map(|(j, _, _, _)| j.request_id.as_deref())
        .collect();
    let fingerprints: Vec<&str> = fresh
        .iter()
        .map(|(j, _, _, _)| j.fingerprint.as_str())
        .collect();
    let statuses: Vec<&str> = fresh
        .iter()
        .map(|(j, _, _, _)| j.status().as_str())
        .collect();
    let models: Vec<&str> = fresh.iter().map(|(j, _, _, _)| j.model.as_str()).collect();
    let created: Vec<i64> = fresh.iter().map(|(j, _, _, _)| j.create_time_ms).collect();
    let next_actions: Vec<Option<i64>> = fresh
        .iter()
        .map(|(j, _, _, _)| j.next_action_ms())
        .collect();
    let deleted: Vec<bool> = fresh.iter().map(|(j, _, _, _)| j.is_deleted()).collect();
    let versions: Vec<i64> = fresh.iter().map(|(j, _, _, _)| j.version).collect();
    let sequences: Vec<i64> = fresh.iter().map(|(j, _, _, _)| j.last_sequence).collect();
    let jsons: Vec<&str> = fresh.iter().map(|(_, json, _, _)| *json).collect();
    let event_jsons: Vec<&str> = fresh.iter().map(|(_, _, json, _)| *json).collect();
    let submissions: Vec<&[u8]> = fresh
        .iter()
        .map(|(_, _, _, new)| new.submission.as_ref())
        .collect();
    sqlx::query(
        "INSERT INTO jobs (id, tenant, request_id, fingerprint, status, model, create_time_ms,
                           next_action_ms, deleted, version, last_sequence, job)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::bigint[], $8::bigint[], $9::boolean[],
                              $10::bigint[], $11::bigint[], $12::text[])",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&request_ids)
    .bind(&fingerprints)
    .bind(&statuses)
    .bind(&models)
    .bind(&created)
    .bind(&next_actions)
    .bind(&deleted)
    .bind(&versions)
    .bind(&sequences)
    .bind(&jsons)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO job_submissions (job_id, submission)
         SELECT * FROM UNNEST($1::text[], $2::bytea[])",
    )
    .bind(&ids)
    .bind(&submissions)
    .execute(&mut **tx)
    .await?;
    let mut label_ids = Vec::new();
    let mut label_keys = Vec::new();
    let mut label_values = Vec::new();
    for (job, _, _, _) in fresh {
        for (key, value) in &job.labels {
            label_ids.push(job.id.as_str());
            label_keys.push(key.as_str());
            label_values.push(value.as_str());
        }
    }
    if !label_ids.is_empty() {
        sqlx::query(
            "INSERT INTO job_labels (job_id, key, value)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
        )
        .bind(&label_ids)
        .bind(&label_keys)
        .bind(&label_values)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO events (sequence, job_id, tenant, time_ms, job)
         SELECT s, i, t, $4, j FROM UNNEST($1::bigint[], $2::text[], $3::text[], $5::text[])
             AS u(s, i, t, j)",
    )
    .bind(&sequences)
    .bind(&ids)
    .bind(&tenants)
    .bind(now_ms)
    .bind(&event_jsons)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn apply_create(
    tx: &mut Transaction<'static, Postgres>,
    new: &NewJob,
    sequence: i64,
    now_ms: i64,
) -> Result<(CreateOutcome, Option<StoredEvent>), CommandError> {
    const OP: &str = "create";
    let db = |e| CommandError::Db(OP, e);
    if let Some(request_id) = &new.job.request_id {
        let existing: Option<(String, String, String)> = sqlx::query_as(
            "SELECT id, fingerprint, job FROM jobs WHERE tenant = $1 AND request_id = $2",
        )
        .bind(&new.job.tenant)
        .bind(request_id)
        .fetch_optional(&mut **tx)
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
    let event_json = encode_event_job(OP, &job).map_err(CommandError::Refused)?;
    insert_jobs(
        tx,
        &[(&job, json.as_str(), event_json.as_str(), new)],
        now_ms,
    )
    .await
    .map_err(db)?;
    let event = StoredEvent::of(&job, now_ms);
    Ok((CreateOutcome::Created(job), Some(event)))
}

/// An update, or an owner's save (`fence`): the owner's change, then a request recorded while
/// it worked, each with its event when it has one.
async fn apply_save(
    tx: &mut Transaction<'static, Postgres>,
    job: &Job,
    record: Record,
    fence: Option<&(Lease, LeaseEnd)>,
    sequence: i64,
    now_ms: i64,
) -> Result<(Saved, Vec<StoredEvent>), CommandError> {
    let (job, event, requested) = apply_update(tx, job, record, fence, sequence, now_ms).await?;
    let mut events: Vec<StoredEvent> = event.into_iter().collect();
    let Some(request) = requested.as_deref().and_then(OwnerRequest::parse) else {
        return Ok((Saved { job, applied: None }, events));
    };
    let next = events.last().map_or(sequence, |e| e.sequence + 1);
    let mut changed = job.clone();
    let took = request.apply(&mut changed, now_ms);
    let job = if took {
        let (job, event, _) = apply_update(tx, &changed, Record::Event, None, next, now_ms).await?;
        events.extend(event);
        job
    } else {
        job
    };
    let release = job.is_terminal() || job.is_deleted();
    sqlx::query(
        "UPDATE jobs SET requested = NULL,
                lease_token = CASE WHEN $2 THEN NULL ELSE lease_token END,
                lease_until = CASE WHEN $2 THEN NULL ELSE lease_until END
         WHERE id = $1",
    )
    .bind(&job.id)
    .bind(release)
    .execute(&mut **tx)
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
    tx: &mut Transaction<'static, Postgres>,
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
    let new_sequence = (record == Record::Event).then_some(sequence);
    if let Some(sequence) = new_sequence {
        job.last_sequence = sequence;
    }
    let json = encode_job(OP, &job).map_err(CommandError::Refused)?;
    let (token, lease_change): (Option<&str>, i32) = match fence {
        None => (None, 0),
        Some((lease, LeaseEnd::Keep)) => (Some(lease.token.as_str()), 0),
        Some((lease, LeaseEnd::Extend(_))) => (Some(lease.token.as_str()), 1),
        Some((lease, LeaseEnd::Release)) => (Some(lease.token.as_str()), 2),
    };
    let extend_to = match fence {
        Some((_, LeaseEnd::Extend(until))) => Some(*until),
        _ => None,
    };
    // Without an event the job keeps its stored `last_sequence`, whatever the caller's copy
    // says. The labels as stored come back too, to keep the filter table equal to the job.
    let stored: Option<(i64, Option<String>, String)> = sqlx::query_as(
        "UPDATE jobs SET tenant = $1, request_id = $2, fingerprint = $3, status = $4, model = $5,
                create_time_ms = $6, next_action_ms = $7, deleted = $8, version = $9,
                last_sequence = COALESCE($10, last_sequence),
                job = CASE WHEN $10::bigint IS NULL
                           THEN jsonb_set($11::jsonb, '{last_sequence}', to_jsonb(last_sequence))::text
                           ELSE $11 END,
                lease_token = CASE $15::integer WHEN 2 THEN NULL ELSE lease_token END,
                lease_until = CASE $15::integer WHEN 2 THEN NULL WHEN 1 THEN $16 ELSE lease_until END
         WHERE id = $12 AND version = $13 AND ($14::text IS NULL OR lease_token = $14)
         RETURNING last_sequence,
                   CASE WHEN $14::text IS NULL THEN NULL ELSE requested END,
                   (SELECT COALESCE(json_object_agg(l.key, l.value), '{}')::text
                      FROM job_labels l WHERE l.job_id = $12)",
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
    .bind(lease_change)
    .bind(extend_to)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    let Some((last_sequence, requested, labels)) = stored else {
        let found: Option<(i64, Option<String>)> =
            sqlx::query_as("SELECT version, lease_token FROM jobs WHERE id = $1")
                .bind(&job.id)
                .fetch_optional(&mut **tx)
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
    let stored_labels: BTreeMap<String, String> = serde_json::from_str(&labels).map_err(|e| {
        CommandError::Refused(StoreError::Corrupt(format!(
            "{OP}: the labels of job {} cannot be read back: {e}",
            job.id
        )))
    })?;
    if stored_labels != job.labels {
        sqlx::query("DELETE FROM job_labels WHERE job_id = $1")
            .bind(&job.id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        for (key, value) in &job.labels {
            sqlx::query("INSERT INTO job_labels (job_id, key, value) VALUES ($1, $2, $3)")
                .bind(&job.id)
                .bind(key)
                .bind(value)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
        }
    }
    let event = match new_sequence {
        Some(sequence) => {
            let event_json = encode_event_job(OP, &job).map_err(CommandError::Refused)?;
            sqlx::query(
                "INSERT INTO events (sequence, job_id, tenant, time_ms, job)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(sequence)
            .bind(&job.id)
            .bind(&job.tenant)
            .bind(now_ms)
            .bind(&event_json)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Some(StoredEvent::of(&job, now_ms))
        }
        None => None,
    };
    Ok((job, event, requested))
}

/// A cancel or delete for `tenant`'s job `id` at `at`: applied when nobody owns the job,
/// recorded for its owner otherwise.
async fn apply_request(
    tx: &mut Transaction<'static, Postgres>,
    id: &str,
    tenant: &str,
    request: OwnerRequest,
    at: i64,
    sequence: i64,
    now_ms: i64,
) -> Result<(RequestOutcome, Vec<StoredEvent>), CommandError> {
    const OP: &str = "request";
    let db = |e| CommandError::Db(OP, e);
    // FOR UPDATE: a claim by another instance waits for this decision (or skips the row).
    let row: Option<(String, Option<i64>)> = sqlx::query_as(
        "SELECT job, CASE WHEN lease_token IS NOT NULL THEN lease_until END
           FROM jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?;
    let Some((json, lease_until)) = row else {
        return Err(CommandError::Refused(StoreError::NotFound(id.to_owned())));
    };
    let job = decode_job(OP, id, &json).map_err(CommandError::Refused)?;
    if job.tenant != tenant || job.is_deleted() {
        return Err(CommandError::Refused(StoreError::NotFound(id.to_owned())));
    }
    match lease_until.filter(|until| *until >= at) {
        Some(lease_until_ms) => {
            if request == OwnerRequest::Cancel && job.is_terminal() {
                return Ok((RequestOutcome::Refused(job), Vec::new()));
            }
            sqlx::query("UPDATE jobs SET requested = $1 WHERE id = $2")
                .bind(request.as_str())
                .bind(id)
                .execute(&mut **tx)
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
                apply_update(tx, &changed, Record::Event, None, sequence, now_ms).await?;
            sqlx::query(
                "UPDATE jobs SET requested = NULL, lease_token = NULL, lease_until = NULL
                 WHERE id = $1",
            )
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
            Ok((RequestOutcome::Applied(job), event.into_iter().collect()))
        }
    }
}

/// Publishes every committed event of the cluster to this instance's subscribers, in order.
struct Tail {
    pool: PgPool,
    own: mpsc::Receiver<Vec<StoredEvent>>,
    wake: Arc<Notify>,
    events: broadcast::Sender<Arc<StoredEvent>>,
    /// The highest sequence published (or known to exist when the store opened).
    high: i64,
    interval: Duration,
    /// [`PostgresConfig::deadline`], for each catch-up.
    deadline: Duration,
    stop: CancellationToken,
}

impl Tail {
    async fn run(mut self) {
        let mut listener: Option<PgListener> = None;
        let mut failures: u32 = 0;
        loop {
            if listener.is_none() {
                listener = self.listen().await;
            }
            let woke = tokio::select! {
                () = self.stop.cancelled() => return,
                batch = self.own.recv() => match batch {
                    Some(batch) => Wake::Own(batch),
                    None => return,
                },
                notified = next_notification(&mut listener) => notified,
                () = self.wake.notified() => Wake::Read,
                () = tokio::time::sleep(self.interval) => Wake::Read,
            };
            let read = match woke {
                Wake::Own(batch) => match (batch.first(), batch.last()) {
                    (Some(first), Some(_)) if first.sequence == self.high + 1 => {
                        for event in batch {
                            self.publish(event);
                        }
                        continue;
                    }
                    (_, Some(last)) if last.sequence <= self.high => continue,
                    _ => true,
                },
                Wake::Notified(sequence) => sequence.is_none_or(|s| s > self.high),
                Wake::ListenerLost => {
                    listener = None;
                    true
                }
                Wake::Read => true,
            };
            if read {
                let deadline = self.deadline;
                let caught_up = match tokio::time::timeout(deadline, self.catch_up()).await {
                    Ok(result) => result.map_err(|e| e.to_string()),
                    Err(_) => Err(no_answer("tail", deadline).to_string()),
                };
                match caught_up {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        // One line when reading starts failing, then one every minute or so.
                        if failures == 1 || failures.is_multiple_of(60) {
                            tracing::warn!(error = %e, failures, "reading the event log failed; retrying");
                        }
                    }
                }
            }
        }
    }

    async fn listen(&self) -> Option<PgListener> {
        let mut listener = PgListener::connect_with(&self.pool).await.ok()?;
        listener.listen(NOTIFY_CHANNEL).await.ok()?;
        Some(listener)
    }

    async fn catch_up(&mut self) -> Result<(), sqlx::Error> {
        loop {
            let rows: Vec<(i64, String, String, i64, String)> = sqlx::query_as(
                "SELECT sequence, job_id, tenant, time_ms, job FROM events
                  WHERE sequence > $1 ORDER BY sequence LIMIT $2",
            )
            .bind(self.high)
            .bind(i64::from(TAIL_PAGE))
            .fetch_all(&self.pool)
            .await?;
            let full = rows.len() == TAIL_PAGE as usize;
            let events: Vec<Result<StoredEvent, (i64, StoreError)>> = rows
                .into_iter()
                .map(|(sequence, job_id, tenant, time_ms, json)| {
                    decode_job("tail", &job_id, &json)
                        .map(|job| StoredEvent {
                            sequence,
                            job_id,
                            tenant,
                            time_ms,
                            job,
                        })
                        .map_err(|e| (sequence, e))
                })
                .collect();
            let ids = detached_job_ids(events.iter().filter_map(|e| e.as_ref().ok()));
            let parts = read_immutable_parts(&self.pool, "tail", ids)
                .await?
                .map_err(|e| e.to_string());
            for event in events {
                let event = event.and_then(|mut event| {
                    let sequence = event.sequence;
                    match &parts {
                        Ok(parts) => attach_immutable_parts("tail", &mut event, parts)
                            .map(|()| event)
                            .map_err(|e| (sequence, e)),
                        Err(why) => Err((sequence, StoreError::Corrupt(why.clone()))),
                    }
                });
                match event {
                    Ok(event) => self.publish(event),
                    Err((sequence, e)) => {
                        // Skipping it live is all the tail can do; readers of the log see the
                        // same error.
                        tracing::error!(sequence, error = %e, "an event cannot be read");
                        self.high = sequence;
                    }
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn publish(&mut self, event: StoredEvent) {
        self.high = event.sequence;
        // An error only means nobody is listening right now.
        let _ = self.events.send(Arc::new(event));
    }
}

enum Wake {
    Own(Vec<StoredEvent>),
    /// A notification, with the highest sequence it announced when readable.
    Notified(Option<i64>),
    ListenerLost,
    Read,
}

async fn next_notification(listener: &mut Option<PgListener>) -> Wake {
    match listener {
        Some(l) => match l.try_recv().await {
            Ok(Some(n)) => Wake::Notified(n.payload().parse().ok()),
            // Reconnected: notifications may have been missed meanwhile.
            Ok(None) => Wake::Read,
            Err(_) => Wake::ListenerLost,
        },
        None => std::future::pending().await,
    }
}

/// The requests and labels that event rows leave out, from the rows of the jobs `ids` (see
/// [`detached_job_ids`]): one query, none when no event needs it. The inner `Err` is a job row
/// that cannot be read.
async fn read_immutable_parts(
    pool: &PgPool,
    op: &str,
    ids: Vec<String>,
) -> Result<Result<HashMap<String, ImmutableParts>, StoreError>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Ok(HashMap::new()));
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, job FROM jobs WHERE id = ANY($1::text[])")
            .bind(&ids)
            .fetch_all(pool)
            .await?;
    Ok(immutable_parts(op, rows))
}

/// Maps a database error: undecodable rows are `Corrupt`, everything else (connections,
/// timeouts, a server restarting) `Unavailable`. sqlx's messages carry PostgreSQL's text and
/// codes, never bound values.
fn db_error(op: &str, error: sqlx::Error) -> StoreError {
    let corrupt = matches!(
        error,
        sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::ColumnIndexOutOfBounds { .. }
            | sqlx::Error::TypeNotFound { .. }
    );
    let message = format!("{op}: {error}");
    if corrupt {
        StoreError::Corrupt(message)
    } else {
        StoreError::Unavailable(message)
    }
}

#[async_trait]
impl JobStore for PostgresStore {
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

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let json: Option<String> = self
            .timed(
                "get",
                sqlx::query_scalar("SELECT job FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?;
        json.map(|json| decode_job("get", id, &json)).transpose()
    }

    async fn submission(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        let bytes: Option<Vec<u8>> = self
            .timed(
                "submission",
                sqlx::query_scalar("SELECT submission FROM job_submissions WHERE job_id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool),
            )
            .await?;
        Ok(bytes.map(Bytes::from))
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new(
            "SELECT id, job FROM jobs WHERE NOT deleted AND tenant = ",
        );
        sql.push_bind(query.tenant.as_str());
        if !query.statuses.is_empty() {
            let statuses: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
            sql.push(" AND status = ANY(")
                .push_bind(statuses)
                .push("::text[])");
        }
        if let Some(model) = &query.model {
            sql.push(" AND model = ").push_bind(model.as_str());
        }
        if !query.labels.is_empty() {
            // Every label must match: as many matching rows as labels asked for.
            let keys: Vec<&str> = query.labels.keys().map(String::as_str).collect();
            let values: Vec<&str> = query.labels.values().map(String::as_str).collect();
            sql.push(" AND (SELECT COUNT(*) FROM job_labels l JOIN UNNEST(")
                .push_bind(keys)
                .push("::text[], ")
                .push_bind(values)
                .push(
                    "::text[]) AS w(key, value) ON l.key = w.key AND l.value = w.value \
                     WHERE l.job_id = jobs.id) = ",
                )
                .push_bind(i64::try_from(query.labels.len()).unwrap_or(i64::MAX));
        }
        if let Some((create_time_ms, id)) = &query.after {
            sql.push(" AND (create_time_ms, id) < (")
                .push_bind(*create_time_ms)
                .push(", ")
                .push_bind(id.as_str())
                .push(")");
        }
        sql.push(" ORDER BY create_time_ms DESC, id DESC LIMIT ")
            .push_bind(i64::from(query.limit));
        let rows: Vec<(String, String)> = self
            .timed("list", sql.build_query_as().fetch_all(&self.pool))
            .await?;
        rows.iter()
            .map(|(id, json)| decode_job("list", id, json))
            .collect()
    }

    async fn claim_due(
        &self,
        now_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<(Lease, Vec<Job>), StoreError> {
        const OP: &str = "claim_due";
        let lease = Lease {
            token: uuid::Uuid::now_v7().simple().to_string(),
            until_ms,
        };
        // One statement: rows another instance is claiming (or writing) right now are skipped,
        // not waited for; the claimed rows are exactly the ones this UPDATE changed.
        let rows: Vec<(String, String)> = self
            .timed(
                OP,
                sqlx::query_as(
                    "UPDATE jobs SET lease_token = $1, lease_until = $2 WHERE id IN (
                         SELECT id FROM jobs
                          WHERE next_action_ms IS NOT NULL AND NOT deleted
                            AND next_action_ms <= $3
                            AND (lease_until IS NULL OR lease_until < $3)
                          ORDER BY next_action_ms, id LIMIT $4
                          FOR UPDATE SKIP LOCKED)
                     RETURNING id, job",
                )
                .bind(&lease.token)
                .bind(lease.until_ms)
                .bind(now_ms)
                .bind(i64::from(limit))
                .fetch_all(&self.pool),
            )
            .await?;
        let mut jobs = rows
            .iter()
            .map(|(id, json)| decode_job(OP, id, json))
            .collect::<Result<Vec<Job>, _>>()?;
        jobs.sort_by(|a, b| (a.next_action_ms(), &a.id).cmp(&(b.next_action_ms(), &b.id)));
        Ok((lease, jobs))
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

    async fn renew(
        &self,
        id: &str,
        lease: &Lease,
        until_ms: i64,
    ) -> Result<Option<OwnerRequest>, StoreError> {
        let renewed: Option<Option<String>> = self
            .timed(
                "renew",
                sqlx::query_scalar(
                    "UPDATE jobs SET lease_until = $1 WHERE id = $2 AND lease_token = $3
                     RETURNING requested",
                )
                .bind(until_ms)
                .bind(id)
                .bind(&lease.token)
                .fetch_optional(&self.pool),
            )
            .await?;
        match renewed {
            Some(requested) => Ok(requested.as_deref().and_then(OwnerRequest::parse)),
            None => Err(StoreError::LeaseLost(id.to_owned())),
        }
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

    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let now = now_ms();
        let (unowned, lease_end): (Option<i64>, Option<i64>) = self
            .timed(
                "next_due_ms",
                sqlx::query_as(
                    "SELECT (SELECT next_action_ms FROM jobs
                              WHERE next_action_ms IS NOT NULL AND NOT deleted
                                AND (lease_until IS NULL OR lease_until < $1)
                              ORDER BY next_action_ms LIMIT 1),
                            (SELECT MIN(lease_until) FROM jobs WHERE lease_until IS NOT NULL
                                AND next_action_ms IS NOT NULL AND NOT deleted)",
                )
                .bind(now)
                .fetch_one(&self.pool),
            )
            .await?;
        Ok(match (unowned, lease_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    async fn events_after(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = QueryBuilder::<Postgres>::new(
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
            .push_bind(i64::from(query.limit));
        let rows: Vec<(i64, String, String, i64, String)> = self
            .timed("events_after", sql.build_query_as().fetch_all(&self.pool))
            .await?;
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
        let parts = self
            .timed(
                "events_after",
                read_immutable_parts(&self.pool, "events_after", detached_job_ids(&events)),
            )
            .await??;
        for event in &mut events {
            attach_immutable_parts("events_after", event, &parts)?;
        }
        Ok(events)
    }

    async fn pruned_through(&self) -> Result<i64, StoreError> {
        self.timed(
            "pruned_through",
            sqlx::query_scalar(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'pruned_through'), 0)",
            )
            .fetch_one(&self.pool),
        )
        .await
    }

    async fn latest_sequence(&self) -> Result<i64, StoreError> {
        // The counter, not MAX(sequence): pruning may have deleted the newest events, and the
        // counter only holds committed values.
        self.timed(
            "latest_sequence",
            sqlx::query_scalar("SELECT value FROM event_counter").fetch_one(&self.pool),
        )
        .await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        const OP: &str = "prune_events";
        // A prefix of the log: everything before the first event that is not old enough (see
        // the SQLite store: no holes above `pruned_through`).
        let below: i64 = self
            .timed(
                OP,
                sqlx::query_scalar(
                    "SELECT COALESCE(
                         (SELECT sequence FROM events WHERE time_ms >= $1
                           ORDER BY sequence LIMIT 1),
                         (SELECT COALESCE(MAX(sequence), 0) FROM events) + 1)",
                )
                .bind(before_ms)
                .fetch_one(&self.pool),
            )
            .await?;
        let mut deleted = 0;
        loop {
            let step = async {
                let mut tx = self.pool.begin().await?;
                let first: Option<i64> = sqlx::query_scalar("SELECT MIN(sequence) FROM events")
                    .fetch_one(&mut *tx)
                    .await?;
                let Some(first) = first.filter(|first| *first < below) else {
                    return Ok::<_, sqlx::Error>(None);
                };
                let upper = below.min(first.saturating_add(PRUNE_STEP));
                let removed: Vec<i64> =
                    sqlx::query_scalar("DELETE FROM events WHERE sequence < $1 RETURNING sequence")
                        .bind(upper)
                        .fetch_all(&mut *tx)
                        .await?;
                if let Some(through) = removed.iter().max() {
                    sqlx::query(
                        "INSERT INTO meta (key, value) VALUES ('pruned_through', $1)
                         ON CONFLICT (key) DO UPDATE
                            SET value = GREATEST(meta.value, excluded.value)",
                    )
                    .bind(through)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Some((removed.len() as u64, upper >= below)))
            };
            let step = tokio::time::timeout(self.deadline, step)
                .await
                .map_err(|_| no_answer(OP, self.deadline))?;
            match step.map_err(|e| db_error(OP, e))? {
                None => return Ok(deleted),
                Some((n, done)) => {
                    deleted += n;
                    if done {
                        return Ok(deleted);
                    }
                }
            }
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.events.subscribe()
    }

    fn slow_operations(&self) -> Option<u64> {
        Some(PostgresStore::slow_operations(self))
    }

    async fn hold_role(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        // One statement: insert, or take over an ended hold, or extend one's own; a row comes
        // back only when `holder` holds the role afterwards.
        let held: Option<String> = self
            .timed(
                "hold_role",
                sqlx::query_scalar(
                    "INSERT INTO roles (name, holder, until_ms) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE
                        SET holder = excluded.holder, until_ms = excluded.until_ms
                      WHERE roles.holder = excluded.holder OR roles.until_ms < $4
                     RETURNING holder",
                )
                .bind(name)
                .bind(holder)
                .bind(until_ms)
                .bind(now_ms)
                .fetch_optional(&self.pool),
            )
            .await?;
        Ok(held.is_some())
    }

    async fn release_role(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.timed(
            "release_role",
            sqlx::query("DELETE FROM roles WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
                .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }

    async fn health(&self) -> Result<(), StoreError> {
        if self.commands.is_closed() {
            return Err(writer_gone("health"));
        }
        self.timed("health", sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .map(|_| ())
    }

    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .timed(
                "count_by_status",
                sqlx::query_as(
                    "SELECT status, COUNT(*) FROM jobs WHERE NOT deleted
                      GROUP BY status ORDER BY status",
                )
                .fetch_all(&self.pool),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(status, n)| (status, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    async fn load_cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.timed(
            "load_cursor",
            sqlx::query_scalar("SELECT sequence FROM cursors WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool),
        )
        .await
    }

    async fn save_cursor(&self, name: &str, sequence: i64) -> Result<(), StoreError> {
        if sequence < 0 {
            return Err(StoreError::Unavailable(format!(
                "save_cursor: cursor {name:?} cannot be negative (got {sequence})"
            )));
        }
        self.timed(
            "save_cursor",
            sqlx::query(
                "INSERT INTO cursors (name, sequence) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET sequence = excluded.sequence",
            )
            .bind(name)
            .bind(sequence)
            .execute(&self.pool),
        )
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_the_redacted_url_or_scrubbed_errors() {
        let url = "postgres://vidgate:s3cret-pw@db.internal:5432/jobs?sslmode=require";
        let shown = redacted_url(url);
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
        assert_eq!(
            scrub("password authentication failed: s3cret-pw", url),
            "password authentication failed: REDACTED"
        );
        let debug = format!("{:?}", PostgresConfig::new(url));
        assert!(!debug.contains("s3cret-pw"), "{debug}");
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["vidgate", "_t1", "test_0123456789abcdef"] {
            assert!(check_schema_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "Upper",
            "a-b",
            "a;drop table jobs",
            &"x".repeat(64),
        ] {
            let error = check_schema_name(bad).expect_err(bad).to_string();
            assert!(error.contains("storage.schema"), "{error}");
        }
    }

    #[test]
    fn small_pools_and_empty_limits_are_refused_naming_the_setting() {
        let mut config = PostgresConfig::new("postgres://localhost/test");
        config.pool_size = 2;
        let error = config.validate().expect_err("pool of 2").to_string();
        assert!(error.contains("storage.pool_size"), "{error}");
        let mut config = PostgresConfig::new("postgres://localhost/test");
        config.max_batch = 0;
        assert!(config.validate().is_err());
    }
}
