//! What only the PostgreSQL store has: several instances (several `PostgresStore`s, each with
//! its own pool, writer and tail) on one database, as several vidgate processes would be; the
//! database connection cut and restored under a live store; failures injected with SQL
//! (triggers), which exercise the writer's savepoints and its failed commits.
//!
//! Every test works in a schema of its own and drops it at the end, also when it fails
//! ([`guarded`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use sqlx::Connection;
use vidgate::job::{Job, Record, now_ms};
use vidgate::store::postgres::{PostgresConfig, PostgresStore};
use vidgate::store::{
    CreateOutcome, EventQuery, JobStore, LeaseEnd, ListQuery, StoreError, StoredEvent,
};

use crate::fixture::{PROMPTLY, all_events, created, edit, new_job, processing};
use crate::support::amqp::Proxy;
use crate::support::postgres::{TestSchema, database};

/// Runs `body`, then drops `schema` whether the body passed or panicked.
async fn guarded(schema: &TestSchema, body: impl Future<Output = ()>) {
    let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    schema.clone().drop().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Runs `sql` (any statements) on the schema outside every store.
async fn side_sql(schema: &TestSchema, sql: &str) {
    let mut conn = schema.connect().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// Receives live events until one with `sequence` arrived; returns them all in arrival order.
async fn receive_through(
    receiver: &mut tokio::sync::broadcast::Receiver<Arc<StoredEvent>>,
    sequence: i64,
    what: &str,
) -> Vec<StoredEvent> {
    let mut received = Vec::new();
    while received
        .last()
        .is_none_or(|e: &StoredEvent| e.sequence < sequence)
    {
        match tokio::time::timeout(PROMPTLY, receiver.recv()).await {
            Ok(Ok(event)) => received.push((*event).clone()),
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!(
                "{what}: no event through {sequence} within {PROMPTLY:?} (got {} events, last {:?})",
                received.len(),
                received.last().map(|e| e.sequence)
            ),
        }
    }
    received
}

/// Opens a store whose statement timeout is short. Its migrator waits for sqlx's migration
/// lock, which is one per database (not per schema): while other tests open their stores, the
/// wait can exceed a one-second statement timeout, so the open is retried.
async fn open_retrying(config: PostgresConfig) -> PostgresStore {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match PostgresStore::open(config.clone()).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                eprintln!("opening with a short statement timeout: {e}; again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn sequences(events: &[StoredEvent]) -> Vec<i64> {
    events.iter().map(|e| e.sequence).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_with_one_key_on_two_instances_make_one_job() {
    const ROUNDS: usize = 50;
    let db = database().await;
    let schema = db.schema("one_key_two_instances");
    guarded(&schema, async {
        let a = schema.open().await;
        let b = schema.open().await;
        for round in 0..ROUNDS {
            let key = format!("key-{round}");
            let (from_a, from_b) = tokio::join!(
                a.create(new_job("acme", Some(&key), "fp", 1_000)),
                b.create(new_job("acme", Some(&key), "fp", 1_000)),
            );
            let (from_a, from_b) = (from_a.expect("create on A"), from_b.expect("create on B"));
            let (job_a, job_b) = match (&from_a, &from_b) {
                (CreateOutcome::Created(x), CreateOutcome::Existing(y))
                | (CreateOutcome::Existing(x), CreateOutcome::Created(y)) => (x, y),
                _ => panic!(
                    "round {round}: one create and one repeat, got {from_a:?} and {from_b:?}"
                ),
            };
            assert_eq!(
                job_a.id, job_b.id,
                "round {round}: both callers get the one job"
            );
        }
        let listed = a
            .list(&ListQuery {
                tenant: "acme".into(),
                limit: 1_000,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), ROUNDS, "one job per key");
        assert_eq!(all_events(&b).await.len(), ROUNDS, "one event per key");
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_on_two_instances_never_take_one_job_twice() {
    const JOBS: usize = 200;
    const CLAIMERS_PER_INSTANCE: usize = 4;
    let db = database().await;
    let schema = db.schema("claims_two_instances");
    guarded(&schema, async {
        let a = Arc::new(schema.open().await);
        let b = Arc::new(schema.open().await);
        let mut all = BTreeSet::new();
        for i in 0..JOBS {
            let mut new = new_job("acme", None, "fp", 1_000);
            new.job = edit(&new.job, |r| r.next_action_ms = Some(100 + (i % 17) as i64));
            all.insert(created(a.create(new).await).id);
        }

        let mut claimers = Vec::new();
        for store in [&a, &b] {
            for _ in 0..CLAIMERS_PER_INSTANCE {
                let store = store.clone();
                claimers.push(tokio::spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let (lease, jobs) = store.claim_due(1_000, 60_000, 7).await.expect("claim");
                        if jobs.is_empty() {
                            return mine;
                        }
                        assert!(jobs.len() <= 7, "a claim takes at most its limit");
                        mine.extend(jobs.into_iter().map(|j| (j.id, lease.token.clone())));
                    }
                }));
            }
        }
        let mut claimed: HashMap<String, String> = HashMap::new();
        for claimer in claimers {
            for (id, token) in claimer.await.expect("claimer") {
                if let Some(other) = claimed.insert(id.clone(), token) {
                    panic!("job {id} was claimed twice (the first claim's lease {other})");
                }
            }
        }
        let claimed_ids: BTreeSet<String> = claimed.keys().cloned().collect();
        assert_eq!(claimed_ids, all, "every due job was claimed");
        // The store agrees: each job is held by the claim that returned it.
        let mut conn = schema.connect().await;
        let held: Vec<(String, Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT id, lease_token, lease_until FROM jobs")
                .fetch_all(&mut conn)
                .await
                .expect("leases");
        let _ = conn.close().await;
        for (id, token, until) in held {
            assert_eq!(token.as_ref(), claimed.get(&id), "job {id}");
            assert_eq!(until, Some(60_000), "job {id}");
        }
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_paused_owner_on_one_instance_cannot_write_over_the_owner_on_another() {
    let db = database().await;
    let schema = db.schema("paused_owner_two_instances");
    guarded(&schema, async {
        let a = schema.open().await;
        let b = schema.open().await;
        let start = now_ms();
        let mut new = new_job("acme", None, "fp", start);
        new.job = edit(&new.job, |r| r.next_action_ms = Some(start - 1));
        let job = created(a.create(new).await);

        // A claims with a short lease, then "pauses" past its end.
        let (paused, jobs) = a
            .claim_due(now_ms(), now_ms() + 200, 1)
            .await
            .expect("A claims");
        assert_eq!(jobs.len(), 1);
        assert!(
            b.claim_due(now_ms(), now_ms() + 60_000, 1)
                .await
                .expect("B claims")
                .1
                .is_empty(),
            "held while A's lease lasts"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (owner, taken) = b
            .claim_due(now_ms(), now_ms() + 60_000, 1)
            .await
            .expect("B takes over");
        assert_eq!(taken.len(), 1, "the lease ended: B takes the job over");
        let mut theirs = taken[0].clone();
        let _ = theirs
            .retry_later(now_ms(), now_ms() + 5_000)
            .expect("a retry");
        let theirs = b
            .save(&owner, theirs, Record::Event, LeaseEnd::Keep)
            .await
            .expect("B writes")
            .job;

        // A wakes up and writes with its old lease, from the job as it claimed it.
        let mut stale = jobs[0].clone();
        stale = edit(&stale, processing);
        for end in [
            LeaseEnd::Keep,
            LeaseEnd::Release,
            LeaseEnd::Extend(now_ms() + 1),
        ] {
            assert!(
                matches!(
                    a.save(&paused, stale.clone(), Record::Event, end).await,
                    Err(StoreError::LeaseLost(id)) if id == job.id
                ),
                "A's save with its old lease ({end:?}) is refused"
            );
        }
        // Even with the current version: the lease fences the write, not only the version.
        let mut current = theirs.clone();
        current = edit(&current, processing);
        assert!(matches!(
            a.save(&paused, current, Record::Event, LeaseEnd::Release)
                .await,
            Err(StoreError::LeaseLost(_))
        ));
        assert!(matches!(
            a.renew(&job.id, &paused, now_ms() + 60_000).await,
            Err(StoreError::LeaseLost(_))
        ));
        assert_eq!(a.get(&job.id).await.expect("get"), Some(theirs.clone()));
        assert_eq!(b.get(&job.id).await.expect("get"), Some(theirs.clone()));
        assert_eq!(
            all_events(&a).await.last().map(|e| e.job.clone()),
            Some(theirs),
            "the last event is B's"
        );
        // B still owns it.
        b.renew(&job.id, &owner, now_ms() + 60_000)
            .await
            .expect("B renews");
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_delivers_every_instances_events_in_order_without_gaps() {
    const JOBS: usize = 40;
    let db = database().await;
    let schema = db.schema("events_across_instances");
    guarded(&schema, async {
        let a = schema.open().await;
        let b = schema.open().await;
        let mut live_a = a.subscribe();
        let mut live_b = b.subscribe();
        let stores = [&a, &b];

        // Creates alternate between the instances; each job is then updated on the other
        // instance than the one that created it, interleaved with the next creates.
        let mut jobs: Vec<Job> = Vec::new();
        for i in 0..JOBS {
            let job = created(
                stores[i % 2]
                    .create(new_job(
                        if i % 3 == 0 { "globex" } else { "acme" },
                        None,
                        "fp",
                        1_000,
                    ))
                    .await,
            );
            jobs.push(job);
            if i > 0 {
                let previous = edit(&jobs[i - 1], processing);
                jobs[i - 1] = stores[i % 2]
                    .update(previous, Record::Event)
                    .await
                    .expect("update on the other instance");
            }
        }
        let latest = a.latest_sequence().await.expect("latest");
        assert_eq!(latest, b.latest_sequence().await.expect("latest"));
        assert_eq!(latest, 2 * JOBS as i64 - 1);

        let log_a = all_events(&a).await;
        let log_b = all_events(&b).await;
        assert_eq!(log_a, log_b, "both instances read one log");
        assert_eq!(
            sequences(&log_a),
            (1..=latest).collect::<Vec<_>>(),
            "contiguous"
        );
        for (name, live) in [("A", &mut live_a), ("B", &mut live_b)] {
            let received = receive_through(live, latest, name).await;
            assert_eq!(
                sequences(&received),
                (1..=latest).collect::<Vec<_>>(),
                "{name} delivers every event of both instances, in order, once"
            );
            assert_eq!(received, log_a, "{name}'s live events are the logged ones");
        }
        a.close().await;
        b.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_never_finds_an_event_below_its_cursor() {
    const INSTANCES: usize = 3;
    const WRITERS_PER_INSTANCE: usize = 3;
    const JOBS_PER_WRITER: usize = 25;
    let db = database().await;
    let schema = db.schema("reader_cursor");
    guarded(&schema, async {
        let mut instances = Vec::new();
        for _ in 0..INSTANCES {
            instances.push(Arc::new(schema.open().await));
        }
        let reader_store = schema.open().await;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

        let mut writers = Vec::new();
        for store in &instances {
            for w in 0..WRITERS_PER_INSTANCE {
                let store = store.clone();
                writers.push(tokio::spawn(async move {
                    for i in 0..JOBS_PER_WRITER {
                        let job = created(
                            store
                                .create(new_job("acme", None, &format!("w{w}-{i}"), 1_000))
                                .await,
                        );
                        store
                            .update(edit(&job, processing), Record::Event)
                            .await
                            .expect("update");
                    }
                }));
            }
        }
        let reader = {
            let done = done.clone();
            async move {
                let mut cursor = 0;
                let mut seen: Vec<StoredEvent> = Vec::new();
                let mut reads = 0u32;
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let page = reader_store
                        .events_after(&EventQuery {
                            after_sequence: cursor,
                            limit: 37,
                            ..EventQuery::default()
                        })
                        .await
                        .expect("events_after");
                    reads += 1;
                    // What a reader may find after its cursor is the next sequences, in order:
                    // a gap would be an event that commits later below a cursor already passed.
                    for (offset, event) in page.iter().enumerate() {
                        assert_eq!(
                            event.sequence,
                            cursor + 1 + offset as i64,
                            "read {reads}: after cursor {cursor} the log continues without a gap"
                        );
                    }
                    if let Some(last) = page.last() {
                        cursor = last.sequence;
                    }
                    let empty = page.is_empty();
                    seen.extend(page);
                    if finished && empty {
                        // The writers were done before this read, and it found nothing more.
                        return (seen, reads, reader_store);
                    }
                    tokio::task::yield_now().await;
                }
            }
        };
        let reader = tokio::spawn(reader);
        for writer in writers {
            writer.await.expect("writer");
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let (seen, reads, reader_store) = reader.await.expect("reader");

        let total = (INSTANCES * WRITERS_PER_INSTANCE * JOBS_PER_WRITER * 2) as i64;
        let log = all_events(&*instances[0]).await;
        assert_eq!(log.len() as i64, total);
        assert_eq!(
            seen, log,
            "the reader saw the whole log, each event once ({reads} reads)"
        );
        assert!(
            reads > 2,
            "the reader read while the writers wrote ({reads} reads)"
        );
        for store in &instances {
            store.close().await;
        }
        reader_store.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_opening_one_fresh_schema_at_once_all_apply_the_migrations() {
    const ROUNDS: usize = 3;
    const INSTANCES: usize = 4;
    let db = database().await;
    for round in 0..ROUNDS {
        let schema = db.schema("concurrent_migrations");
        guarded(&schema, async {
            let opened = futures::future::join_all(
                (0..INSTANCES).map(|_| PostgresStore::open(schema.config())),
            )
            .await;
            let stores: Vec<PostgresStore> = opened
                .into_iter()
                .enumerate()
                .map(|(i, s)| s.unwrap_or_else(|e| panic!("round {round}: instance {i}: {e}")))
                .collect();
            let job = created(stores[0].create(new_job("acme", Some("k"), "fp", 1)).await);
            for store in &stores {
                assert_eq!(store.get(&job.id).await.expect("get"), Some(job.clone()));
            }
            let mut conn = schema.connect().await;
            let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
                .fetch_one(&mut conn)
                .await
                .expect("migrations table");
            let _ = conn.close().await;
            let files =
                std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
                    .expect("migrations dir")
                    .count() as i64;
            assert_eq!(applied, files, "round {round}: each migration applied once");
            for store in &stores {
                store.close().await;
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_answers_unavailable_and_the_store_recovers_without_reopening() {
    let db = database().await;
    let schema = db.schema("cut_connection");
    guarded(&schema, async {
        let proxy = Proxy::start(db.addr().await).await;
        let mut config = schema.config();
        config.url = proxy.url(&db.url);
        config.acquire_timeout = Duration::from_secs(1);
        config.statement_timeout = Duration::from_secs(2);
        config.tail_interval = Duration::from_millis(200);
        // The longest a call may take while the database is unreachable: a connection
        // attempt bounded by the acquire timeout, plus slack for a shared machine.
        let bound = Duration::from_secs(8);
        let store = Arc::new(open_retrying(config).await);
        let direct = schema.open().await;
        let mut live = store.subscribe();

        let mut accepted: Vec<Job> = Vec::new();
        for i in 0..5 {
            accepted.push(created(
                store
                    .create(new_job("acme", Some(&format!("before-{i}")), "fp", 1))
                    .await,
            ));
        }

        proxy.cut().await;
        let started = Instant::now();
        let during = futures::future::join_all((0..5).map(|i| {
            let store = store.clone();
            async move {
                let key = format!("during-{i}");
                let outcome =
                    tokio::time::timeout(bound, store.create(new_job("acme", Some(&key), "fp", 1)))
                        .await
                        .unwrap_or_else(|_| panic!("create {key} hung past {bound:?} while cut"));
                (key, outcome)
            }
        }))
        .await;
        let mut unanswered = Vec::new();
        for (key, outcome) in during {
            match outcome {
                Err(StoreError::Unavailable(_)) => unanswered.push(key),
                other => panic!("create {key} while cut: expected Unavailable, got {other:?}"),
            }
        }
        for (what, outcome) in [
            (
                "get",
                tokio::time::timeout(bound, store.get(&accepted[0].id))
                    .await
                    .map(|r| r.map(|_| ())),
            ),
            ("health", tokio::time::timeout(bound, store.health()).await),
            (
                "claim_due",
                tokio::time::timeout(bound, store.claim_due(1, 2, 1))
                    .await
                    .map(|r| r.map(|_| ())),
            ),
        ] {
            match outcome {
                Ok(Err(StoreError::Unavailable(_))) => {}
                Ok(other) => panic!("{what} while cut: expected Unavailable, got {other:?}"),
                Err(_) => panic!("{what} hung past {bound:?} while cut"),
            }
        }
        assert!(started.elapsed() < 3 * bound);

        proxy.restore();
        // The same store, not reopened: the next create succeeds.
        let after =
            tokio::time::timeout(bound, store.create(new_job("acme", Some("after"), "fp", 1)))
                .await
                .expect("create after the restore hung");
        accepted.push(created(after));
        // The callers told Unavailable retry with their keys: one job each.
        for key in &unanswered {
            match store.create(new_job("acme", Some(key), "fp", 1)).await {
                Ok(CreateOutcome::Created(job) | CreateOutcome::Existing(job)) => {
                    accepted.push(job)
                }
                other => panic!("retry of {key}: {other:?}"),
            }
        }
        // An event of another instance reaches this one's subscribers again.
        let other = created(direct.create(new_job("globex", None, "fp", 1)).await);
        let received = receive_through(&mut live, other.last_sequence, "after the restore").await;
        assert!(received.iter().any(|e| e.job_id == other.id));

        // Nothing accepted was lost, nothing was created twice.
        for job in &accepted {
            assert_eq!(
                direct.get(&job.id).await.expect("get").map(|j| j.id),
                Some(job.id.clone())
            );
        }
        let listed = direct
            .list(&ListQuery {
                tenant: "acme".into(),
                limit: 100,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        let keys: BTreeMap<String, usize> = listed.iter().fold(BTreeMap::new(), |mut keys, job| {
            *keys
                .entry(job.request_id.clone().unwrap_or_default())
                .or_default() += 1;
            keys
        });
        assert!(keys.values().all(|n| *n == 1), "one job per key: {keys:?}");
        assert_eq!(listed.len(), 5 + 1 + unanswered.len());
        store.health().await.expect("healthy again");
        store.close().await;
        direct.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_command_that_fails_midway_is_rolled_back_alone() {
    let db = database().await;
    let schema = db.schema("fails_midway");
    guarded(&schema, async {
        let store = Arc::new(schema.open().await);
        let mut poisoned = new_job("acme", Some("poisoned"), "fp", 1_000);
        let poisoned_id = poisoned.job.id.clone();
        // The job row, its submission and its labels are written before the event, which this
        // trigger refuses: everything of that command must disappear, nothing of the others.
        poisoned.job.labels.insert("k".into(), "v".into());
        side_sql(
            &schema,
            &format!(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$;
                 CREATE TRIGGER refuse_event BEFORE INSERT ON events FOR EACH ROW
                 WHEN (NEW.job_id = '{poisoned_id}') EXECUTE FUNCTION refuse();"
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
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("create"), "{message}")
            }
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
        assert_eq!(
            store.latest_sequence().await.expect("latest"),
            c.last_sequence
        );
        store.close().await;
    })
    .await;
}

#[tokio::test]
async fn a_failed_commit_fails_every_caller_of_the_batch_and_publishes_nothing() {
    let db = database().await;
    let schema = db.schema("failed_commit");
    guarded(&schema, async {
        let store = Arc::new(schema.open().await);
        let mut events = store.subscribe();
        let poison = new_job("acme", Some("poison"), "fp", 1_000);
        let poison_id = poison.job.id.clone();
        // A deferred foreign key is only checked at COMMIT: the statements succeed, the
        // commit of the batch holding the poisoned create fails.
        side_sql(
            &schema,
            &format!(
                "CREATE TABLE trap_parent (id TEXT PRIMARY KEY);
                 CREATE TABLE trap (id TEXT REFERENCES trap_parent (id)
                                    DEFERRABLE INITIALLY DEFERRED);
                 CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO trap (id) VALUES ('missing'); RETURN NEW; END $$;
                 CREATE TRIGGER poison AFTER INSERT ON events FOR EACH ROW
                 WHEN (NEW.job_id = '{poison_id}') EXECUTE FUNCTION poison();"
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
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(events.try_recv().is_err(), "nothing was published");
        for id in &ids {
            assert_eq!(store.get(id).await.expect("get"), None);
        }
        assert_eq!(store.latest_sequence().await.expect("latest"), 0);
        // The writer recovers: the next batch commits.
        let job = created(store.create(new_job("acme", Some("x"), "fp", 1_000)).await);
        assert_eq!(job.last_sequence, 1);
        let event = tokio::time::timeout(PROMPTLY, events.recv())
            .await
            .expect("an event in time")
            .expect("event");
        assert_eq!(event.sequence, 1);
        store.close().await;
    })
    .await;
}

/// A TCP proxy whose links can be frozen: bytes stop flowing but no connection is closed, as
/// in a network partition (nothing tells either side).
struct FreezingProxy {
    addr: std::net::SocketAddr,
    frozen: Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FreezingProxy {
    async fn start(target: std::net::SocketAddr) -> FreezingProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        let accept = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let flag = flag.clone();
                links.spawn(async move {
                    while flag.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let pump =
                        |flag: Arc<std::sync::atomic::AtomicBool>,
                         mut from: tokio::net::tcp::OwnedReadHalf,
                         mut to: tokio::net::tcp::OwnedWriteHalf| async move {
                            let mut buf = vec![0u8; 16 * 1024];
                            loop {
                                let n = match from.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                while flag.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                if to.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        };
                    tokio::join!(
                        pump(flag.clone(), in_read, out_write),
                        pump(flag.clone(), out_read, in_write)
                    );
                });
            }
        });
        FreezingProxy {
            addr,
            frozen,
            accept,
        }
    }

    fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("URL parses");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.addr.port())).expect("port");
        u.to_string()
    }

    fn freeze(&self, frozen: bool) {
        self.frozen
            .store(frozen, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FreezingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_instance_neither_hangs_its_callers_nor_blocks_the_other_instances() {
    let db = database().await;
    let schema = db.schema("partition");
    guarded(&schema, async {
        let proxy = FreezingProxy::start(db.addr().await).await;
        let mut config = schema.config();
        config.url = proxy.url(&db.url);
        config.acquire_timeout = Duration::from_secs(1);
        config.statement_timeout = Duration::from_secs(1);
        // The store's own deadline, plus slack for a shared machine.
        let bound = config.deadline() + Duration::from_secs(3);
        let partitioned = Arc::new(open_retrying(config).await);
        // The other instance waits on the counter at most its own statement timeout.
        let mut config = schema.config();
        config.statement_timeout = Duration::from_secs(8);
        let other = PostgresStore::open(config).await.expect("open");
        let mut accepted = vec![created(
            partitioned
                .create(new_job("acme", Some("a"), "fp", 1))
                .await,
        )];

        // A batch of the partitioned instance is in the middle of its transaction when the
        // network stops carrying anything: it holds the event counter (taken as soon as the
        // side connection lets go), and its answer never arrives.
        let mut side = schema.connect().await;
        sqlx::raw_sql("BEGIN; SELECT value FROM event_counter FOR UPDATE")
            .execute(&mut side)
            .await
            .expect("hold the counter");
        let in_flight = tokio::spawn({
            let store = partitioned.clone();
            async move {
                let started = Instant::now();
                let outcome = store.create(new_job("acme", Some("b"), "fp", 1)).await;
                (outcome, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.freeze(true);
        sqlx::raw_sql("COMMIT")
            .execute(&mut side)
            .await
            .expect("let go of the counter");
        let _ = side.close().await;

        let (outcome, took) = tokio::time::timeout(bound, in_flight)
            .await
            .unwrap_or_else(|_| panic!("the in-flight create hung past {bound:?}"))
            .expect("task");
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "the in-flight create: {outcome:?} after {took:?}"
        );
        for (what, outcome) in [
            (
                "create",
                tokio::time::timeout(
                    bound,
                    partitioned.create(new_job("acme", Some("c"), "fp", 1)),
                )
                .await
                .map(|r| r.map(|_| ())),
            ),
            (
                "get",
                tokio::time::timeout(bound, partitioned.get(&accepted[0].id))
                    .await
                    .map(|r| r.map(|_| ())),
            ),
        ] {
            match outcome {
                Ok(Err(StoreError::Unavailable(_))) => {}
                Ok(other) => {
                    panic!("{what} while partitioned: expected Unavailable, got {other:?}")
                }
                Err(_) => panic!("{what} while partitioned hung past {bound:?}"),
            }
        }
        // Meanwhile the other instance writes: the partitioned session's hold on the counter
        // was ended by the server.
        accepted.push(created(
            other.create(new_job("acme", Some("d"), "fp", 1)).await,
        ));

        proxy.freeze(false);
        // Back: the same store, not reopened, writes again (the first attempt may still meet
        // a connection the server ended meanwhile).
        let deadline = Instant::now() + Duration::from_secs(30);
        let again = loop {
            match partitioned
                .create(new_job("acme", Some("e"), "fp", 1))
                .await
            {
                Ok(outcome) => break outcome,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("after the partition: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the store did not recover: {e}"),
            }
        };
        accepted.push(match again {
            CreateOutcome::Created(job) | CreateOutcome::Existing(job) => job,
        });
        // The callers told Unavailable retry: one job per key, whatever happened to theirs.
        for key in ["b", "c"] {
            match partitioned
                .create(new_job("acme", Some(key), "fp", 1))
                .await
            {
                Ok(CreateOutcome::Created(job) | CreateOutcome::Existing(job)) => {
                    accepted.push(job)
                }
                other => panic!("retry of {key}: {other:?}"),
            }
        }
        for job in &accepted {
            assert!(
                other.get(&job.id).await.expect("get").is_some(),
                "{}",
                job.id
            );
        }
        let listed = other
            .list(&ListQuery {
                tenant: "acme".into(),
                limit: 100,
                ..ListQuery::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), 5, "one job per key a..e");
        partitioned.close().await;
        other.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instances_events_arrive_with_the_request_their_rows_leave_out() {
    let db = database().await;
    let schema = db.schema("events_reattached_across_instances");
    guarded(&schema, async {
        let a = schema.open().await;
        let b = schema.open().await;
        let mut live_b = b.subscribe();
        let mut new = new_job("acme", None, "fp", 1_000);
        new.job = edit(&new.job, |r| {
            r.request = bytes::Bytes::from(vec![0x5a; 256 * 1024]);
            r.labels = BTreeMap::from([("team".to_owned(), "v".repeat(256))]);
        });
        let job = created(a.create(new).await);
        let job = a
            .update(edit(&job, processing), Record::Event)
            .await
            .expect("update");

        // B learns of A's events only through the log (its tail), whose rows hold no request.
        let received = receive_through(&mut live_b, job.last_sequence, "B").await;
        let of_job: Vec<&StoredEvent> = received.iter().filter(|e| e.job_id == job.id).collect();
        assert_eq!(of_job.len(), 2);
        for event in of_job {
            assert_eq!(event.job.request, job.request, "event {}", event.sequence);
            assert_eq!(event.job.labels, job.labels, "event {}", event.sequence);
        }
        assert_eq!(received.last().map(|e| &e.job), Some(&job));
        a.close().await;
        b.close().await;
    })
    .await;
}

/// Two instances fanning out from the same cursor position at once: exactly one writes, and
/// each delivery exists once; claims racing on two instances never exceed an endpoint's bound
/// together, nor take one delivery twice (repeated, so the claims do overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_fan_out_once_and_claim_within_each_endpoints_bound_together() {
    use vidgate::store::webhooks::{
        Endpoint, EndpointFilter, EndpointKind, NewDelivery, WebhookStore,
    };
    use vidgate::webhooks::signing::SigningSecret;
    const BOUND: u32 = 3;
    let db = database().await;
    let schema = db.schema("webhooks_two");
    guarded(&schema, async {
        let one = open_retrying(schema.config()).await;
        let two = open_retrying(schema.config()).await;
        for round in 0..10 {
            let endpoints = [format!("whe_{round}_a"), format!("whe_{round}_b")];
            for id in &endpoints {
                one.create_endpoint(&Endpoint {
                    id: id.clone(),
                    tenant: "acme".into(),
                    kind: EndpointKind::Endpoint,
                    url: "https://hooks.example.com/x".into(),
                    description: String::new(),
                    filter: EndpointFilter::default(),
                    secret: SigningSecret::generate(),
                    previous_secret: None,
                    disabled: None,
                    failing_since_ms: None,
                    create_time_ms: 1,
                    update_time_ms: 1,
                    version: 1,
                })
                .await
                .unwrap();
            }
            let rows: Vec<NewDelivery> = (1..=40)
                .map(|s| {
                    let endpoint = &endpoints[usize::from(s % 2 == 0)];
                    NewDelivery {
                        id: vidgate::webhooks::webhook_id(endpoint, s),
                        endpoint_id: endpoint.clone(),
                        sequence: s,
                        event_type: "video.completed".into(),
                        job_id: format!("vid_{s}"),
                        event_time_ms: 1,
                        body: "{}".into(),
                        due_ms: 1,
                    }
                })
                .collect();
            let cursor = format!("webhooks-{round}");
            let (a, b) = tokio::join!(
                one.fan_out(&cursor, 0, 40, &[], &rows),
                two.fan_out(&cursor, 0, 40, &[], &rows)
            );
            assert_eq!(
                [a.unwrap(), b.unwrap()]
                    .iter()
                    .filter(|moved| **moved)
                    .count(),
                1,
                "exactly one fan-out moves the cursor"
            );
            // Earlier rounds' deliveries stay leased (their leases end long after `now`).
            let now = 1_000;
            let tokens: Vec<String> = (0..6).map(|i| format!("{round}-{i}")).collect();
            let claims = futures::future::join_all(tokens.iter().enumerate().map(|(i, t)| {
                let store = if i % 2 == 0 { &one } else { &two };
                store.claim_deliveries(now, now + 600_000, t, 100, BOUND)
            }))
            .await;
            let claimed: Vec<_> = claims.into_iter().flat_map(Result::unwrap).collect();
            let ids: BTreeSet<&str> = claimed.iter().map(|d| d.id.as_str()).collect();
            assert_eq!(ids.len(), claimed.len(), "a delivery claimed twice");
            for endpoint in &endpoints {
                let n = claimed
                    .iter()
                    .filter(|d| &d.endpoint_id == endpoint)
                    .count();
                assert_eq!(
                    n, BOUND as usize,
                    "{endpoint}: {n} in flight with a bound of {BOUND}"
                );
            }
        }
        one.close().await;
        two.close().await;
    })
    .await;
}
