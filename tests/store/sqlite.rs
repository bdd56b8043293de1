//! What only the SQLite store has: its durability pragmas, its refusal of a memory database,
//! and failures injected with SQL on the file (triggers), which exercise its writer's
//! savepoints and its recovery from a failed commit.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use sqlx::{ConnectOptions, Connection};
use vidgate::store::sqlite::{SqliteConfig, SqliteStore, Synchronous};
use vidgate::store::{JobStore, ListQuery, StoreError};

use crate::fixture::{TempDir, created, new_job};

async fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path))
        .await
        .expect("open store")
}

#[tokio::test]
async fn a_command_that_fails_midway_is_rolled_back_alone() {
    let dir = TempDir::new();
    let store = Arc::new(open(&dir.db()).await);
    let poisoned = new_job("acme", Some("poisoned"), "fp", 1_000);
    let poisoned_id = poisoned.job.id.clone();
    // The job row, its submission and its labels are written before the event, which this
    // trigger refuses: everything of that command must disappear, nothing of the others.
    let mut poisoned = poisoned;
    poisoned.job.labels.insert("k".into(), "v".into());
    side_sql(
        &dir.db(),
        &format!(
            "CREATE TRIGGER refuse_event BEFORE INSERT ON events WHEN NEW.job_id = '{poisoned_id}'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        ),
    )
    .await;

    let a = tokio::spawn({
        let store = store.clone();
        async move { store.create(new_job("acme", Some("a"), "fp", 1_000)).await }
    });
    let bad = tokio::spawn({
        let store = store.clone();
        async move { store.create(poisoned).await }
    });
    let c = tokio::spawn({
        let store = store.clone();
        async move { store.create(new_job("acme", Some("c"), "fp", 1_000)).await }
    });
    let a = created(a.await.expect("task"));
    let bad = bad.await.expect("task");
    let c = created(c.await.expect("task"));

    match bad {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("create"), "{message}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(store.get(&poisoned_id).await.expect("get"), None);
    assert_eq!(
        store.submission(&poisoned_id).await.expect("submission"),
        None
    );
    assert_eq!(
        c.last_sequence,
        a.last_sequence + 1,
        "the failed command's sequence is reused"
    );
    let labelled = store
        .list(&ListQuery {
            tenant: "acme".into(),
            labels: BTreeMap::from([("k".to_owned(), "v".to_owned())]),
            limit: 10,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert!(labelled.is_empty(), "the rolled back labels are gone");
}

#[tokio::test]
async fn a_failed_commit_fails_every_caller_of_the_batch_and_publishes_nothing() {
    let dir = TempDir::new();
    let store = Arc::new(open(&dir.db()).await);
    let mut events = store.subscribe();
    let poison = new_job("acme", Some("poison"), "fp", 1_000);
    let poison_id = poison.job.id.clone();
    // A deferred foreign key is only checked at COMMIT: the statements succeed, the commit
    // of the batch holding the poisoned create fails.
    side_sql(
        &dir.db(),
        &format!(
            "CREATE TABLE trap_parent (id TEXT PRIMARY KEY);
             CREATE TABLE trap (id TEXT REFERENCES trap_parent (id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER poison AFTER INSERT ON events WHEN NEW.job_id = '{poison_id}'
             BEGIN INSERT INTO trap (id) VALUES ('missing'); END"
        ),
    )
    .await;
    let batches_before = store.batches_committed();

    let tasks: Vec<_> = [
        new_job("acme", Some("x"), "fp", 1_000),
        poison,
        new_job("acme", Some("y"), "fp", 1_000),
    ]
    .into_iter()
    .map(|new| {
        let store = store.clone();
        let id = new.job.id.clone();
        tokio::spawn(async move { (id, store.create(new).await) })
    })
    .collect();
    let mut ids = Vec::new();
    for task in tasks {
        let (id, outcome) = task.await.expect("task");
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "every caller of the failed batch is told: {outcome:?}"
        );
        ids.push(id);
    }

    assert_eq!(store.batches_committed(), batches_before);
    assert!(events.try_recv().is_err(), "nothing was published");
    for id in &ids {
        assert_eq!(store.get(id).await.expect("get"), None);
    }
    assert_eq!(store.latest_sequence().await.expect("latest"), 0);
    // The writer recovers: the next batch commits.
    let job = created(store.create(new_job("acme", Some("x"), "fp", 1_000)).await);
    assert_eq!(job.last_sequence, 1);
    let event = events.recv().await.expect("event");
    assert_eq!(event.sequence, 1);
}

#[tokio::test]
async fn the_synchronous_setting_is_applied_to_the_writer() {
    let dir = TempDir::new();
    let store = open(&dir.db()).await;
    let settings = store.writer_settings().await.expect("settings");
    assert_eq!(settings.synchronous, Synchronous::Full.pragma_level());
    assert_eq!(settings.journal_mode, "wal");
    assert!(settings.foreign_keys);
    assert_eq!(settings.busy_timeout_ms, 5_000);
    store.close().await;

    let mut config = SqliteConfig::new(dir.db());
    config.synchronous = Synchronous::Normal;
    let store = SqliteStore::open(config).await.expect("open");
    let settings = store.writer_settings().await.expect("settings");
    assert_eq!(settings.synchronous, Synchronous::Normal.pragma_level());
    assert_eq!(settings.journal_mode, "wal");
}

#[tokio::test]
async fn open_refuses_memory_databases_and_empty_limits() {
    let dir = TempDir::new();
    assert!(matches!(
        SqliteStore::open(SqliteConfig::new(":memory:")).await,
        Err(StoreError::Unavailable(_))
    ));
    let mut config = SqliteConfig::new(dir.db());
    config.max_batch = 0;
    assert!(SqliteStore::open(config).await.is_err());
    let mut config = SqliteConfig::new(dir.db());
    config.event_buffer = 0;
    assert!(SqliteStore::open(config).await.is_err());
    let mut config = SqliteConfig::new(dir.db());
    config.read_connections = 0;
    assert!(SqliteStore::open(config).await.is_err());
    assert!(
        !dir.db().exists(),
        "nothing is created for a refused configuration"
    );
}

/// Runs `sql` on a connection of its own, as an operator's tool would.
async fn side_sql(path: &Path, sql: &str) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .expect("side connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .expect("side sql");
    conn.close().await.expect("close side connection");
}
