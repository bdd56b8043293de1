//! The dispatcher never advances a job from a stale read of the due list: a job whose step ended
//! while another read of the due list was under way is not advanced again from that read (it
//! would call upstream once more, then fail its save on the version).
//!
//! The race is made deterministic by a store wrapper whose second `due()` read returns its rows
//! only after the job has moved on (its version grew), i.e. after the first step committed.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::*;
use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;
use vidgate::blob::BlobStore;
use vidgate::dispatcher::Dispatcher;
use vidgate::domain::ModelCatalog;
use vidgate::job::{Job, NewJob, Record};
use vidgate::pb;
use vidgate::store::{CreateOutcome, EventQuery, JobStore, ListQuery, StoreError, StoredEvent};
use vidgate::upstream::UpstreamClient;
use vidgate::upstream::client::UpstreamConfig;
use vidgate::upstream::{ApiKey, LimitConfig};

/// Delegates to the real store; the second `due()` call holds its (by then stale) rows until the
/// job they name has a newer version in the store.
struct StaleSecondRead {
    inner: Arc<dyn JobStore>,
    due_calls: AtomicUsize,
}

#[async_trait]
impl JobStore for StaleSecondRead {
    async fn create(&self, new: NewJob) -> Result<CreateOutcome, StoreError> {
        self.inner.create(new).await
    }
    async fn update(&self, job: Job, record: Record) -> Result<Job, StoreError> {
        self.inner.update(job, record).await
    }
    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.inner.get(id).await
    }
    async fn submission(&self, id: &str) -> Result<Option<Bytes>, StoreError> {
        self.inner.submission(id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        self.inner.list(query).await
    }
    async fn due(
        &self,
        now_ms: i64,
        limit: u32,
        skip: &HashSet<String>,
    ) -> Result<Vec<Job>, StoreError> {
        let call = self.due_calls.fetch_add(1, Ordering::SeqCst);
        let rows = self.inner.due(now_ms, limit, skip).await?;
        if call == 1 {
            for row in &rows {
                let deadline = tokio::time::Instant::now() + DRIVE_DEADLINE;
                loop {
                    let now = self.inner.get(&row.id).await?.expect("job exists");
                    if now.version > row.version {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the first step never committed"
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
        Ok(rows)
    }
    async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.inner.next_due_ms().await
    }
    async fn events_after(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.events_after(query).await
    }
    async fn pruned_through(&self) -> Result<i64, StoreError> {
        self.inner.pruned_through().await
    }
    async fn latest_sequence(&self) -> Result<i64, StoreError> {
        self.inner.latest_sequence().await
    }
    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.prune_events(before_ms).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Arc<StoredEvent>> {
        self.inner.subscribe()
    }
    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }
    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.inner.count_by_status().await
    }
    async fn load_cursor(&self, name: &str) -> Result<Option<i64>, StoreError> {
        self.inner.load_cursor(name).await
    }
    async fn save_cursor(&self, name: &str, sequence: i64) -> Result<(), StoreError> {
        self.inner.save_cursor(name, sequence).await
    }
}

const POLL_INTERVAL_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_moved_on_during_a_due_read_is_not_advanced_again_from_it() {
    // After a poll the job is not due again for a minute: a fresh read of the due list does
    // not name it, only a stale one does.
    let mut t = spawn_app_with(|c| c.dispatcher.poll_interval_ms = POLL_INTERVAL_MS).await;
    let v = t
        .client
        .create_video(req(ACME, veo(&unique("race"))))
        .await
        .expect("create")
        .into_inner();
    // The create is sent by the app's own (stepped) dispatcher.
    t.app().dispatcher().step().await.expect("submit");
    let polls_before = t.sim.stats().requests.get;

    let mut config = test_config(&t.data_dir, &t.sim);
    config.dispatcher.poll_interval_ms = POLL_INTERVAL_MS;
    let store: Arc<dyn JobStore> = Arc::new(StaleSecondRead {
        inner: t.app().store(),
        due_calls: AtomicUsize::new(0),
    });
    let client = UpstreamClient::new(UpstreamConfig {
        limits: LimitConfig {
            requests_per_second: 10_000,
            max_in_flight: 64,
            rate_limited_pause_ms: 50,
        },
        ..UpstreamConfig::new(
            url::Url::parse(&t.sim.base_url()).unwrap(),
            ApiKey::new(t.sim.api_key()).unwrap(),
        )
    })
    .expect("client");
    let blobs = BlobStore::local(t.data_dir.join("blobs")).expect("blobs");
    let dispatcher = Arc::new(Dispatcher::new(
        store,
        client,
        blobs,
        Arc::new(ModelCatalog::default()),
        config.dispatcher.clone(),
    ));
    // Two concurrent turns: the first advances the job (one poll); the second read the due
    // list at the same moment and gets its rows only after that poll's save committed.
    let (a, b) = tokio::join!(dispatcher.step(), dispatcher.step());
    let advanced = a.expect("step").advanced + b.expect("step").advanced;

    let polls = t.sim.stats().requests.get - polls_before;
    assert_eq!(advanced, 1, "the job is advanced once");
    assert_eq!(
        polls, 1,
        "one status call, not one per read of the due list"
    );
    let job = t
        .client
        .get_video(req(ACME, pb::GetVideoRequest { id: v.id.clone() }))
        .await
        .expect("get")
        .into_inner();
    assert_ne!(job.status(), pb::VideoStatus::Failed, "{job:?}");
}
