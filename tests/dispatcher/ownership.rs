//! One writer per job, recorded in the store: dispatchers claim due jobs with a lease, so two of
//! them on one store never advance a job twice; a cancel for a job whose step is running is
//! recorded and applied by that step's owner, and the caller is told the one outcome.

use std::sync::Arc;
use std::time::Duration;

use vidgate::blob::BlobStore;
use vidgate::dispatcher::Dispatcher;
use vidgate::domain::ModelCatalog;
use vidgate::pb;
use vidgate::upstream::UpstreamClient;
use vidgate::upstream::client::UpstreamConfig;
use vidgate::upstream::sim::{Fault, FaultEndpoint, FaultRule};
use vidgate::upstream::{ApiKey, LimitConfig};

use crate::support::*;

/// A second dispatcher on the app's store, as another process would run one.
fn second_dispatcher(t: &TestApp) -> Arc<Dispatcher> {
    let config = test_config(&t.data_dir, &t.sim);
    let client = UpstreamClient::new(UpstreamConfig {
        limits: LimitConfig {
            requests_per_second: 10_000,
            max_in_flight: 64,
            max_downloads: 64,
            rate_limited_pause_ms: 50,
        },
        ..UpstreamConfig::new(
            url::Url::parse(&t.sim.base_url()).unwrap(),
            ApiKey::new(t.sim.api_key()).unwrap(),
        )
    })
    .expect("client");
    let blobs = BlobStore::local(t.data_dir.join("blobs")).expect("blobs");
    Arc::new(Dispatcher::new(
        t.app().store(),
        client,
        blobs,
        Arc::new(ModelCatalog::default()),
        config.dispatcher.clone(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_on_one_store_advance_each_job_once() {
    let mut t = spawn_app().await;
    let prefix = unique("two owners");
    let mut ids = Vec::new();
    for i in 0..30 {
        let v = t
            .client
            .create_video(req(ACME, veo(&format!("{prefix} #{i}"))))
            .await
            .expect("create")
            .into_inner();
        ids.push(v.id);
    }
    let other = second_dispatcher(&t);
    let mine = t.app().dispatcher().clone();
    let deadline = tokio::time::Instant::now() + DRIVE_DEADLINE;
    loop {
        let (a, b) = tokio::join!(mine.step(), other.step());
        a.expect("step");
        b.expect("step");
        let mut done = 0;
        for id in &ids {
            let v = t
                .client
                .get_video(req(ACME, pb::GetVideoRequest { id: id.clone() }))
                .await
                .expect("get")
                .into_inner();
            if v.status() == pb::VideoStatus::Completed {
                done += 1;
            } else {
                assert_ne!(v.status(), pb::VideoStatus::Failed, "{v:?}");
            }
        }
        if done == ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} of {} done",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = t.sim.stats();
    for i in 0..30 {
        assert_eq!(
            stats.creates_by_prompt.get(&format!("{prefix} #{i}")),
            Some(&1),
            "job #{i} was created upstream once"
        );
    }
    for (id, task) in stats
        .tasks
        .iter()
        .filter(|(_, task)| task.prompt.starts_with(&prefix))
    {
        assert_eq!(task.content_requests, 1, "task {id} downloaded once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_of_a_job_waiting_at_the_rate_limit_is_applied_by_its_owner_and_nothing_is_sent() {
    // A short lease: the running step renews (and learns of requests) every 100 ms.
    let mut t = spawn_app_with(|c| c.dispatcher.lease_ms = 300).await;
    let first = unique("gate first");
    t.sim.set_faults(vec![
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::Http {
                status: 429,
                retry_after_s: Some(5),
            },
        )
        .prompt_contains(first.clone())
        .times(1),
    ]);
    let a = t
        .client
        .create_video(req(ACME, veo(&first)))
        .await
        .expect("create")
        .into_inner();
    t.app().dispatcher().step().await.expect("step");
    assert_eq!(t.sim.stats().creates_rejected.get(&429), Some(&1));

    // Every caller now waits 5 s at the gate: the next job's step holds it, waiting.
    let waiting = unique("gate waiting");
    let b = t
        .client
        .create_video(req(ACME, veo(&waiting)))
        .await
        .expect("create")
        .into_inner();
    let dispatcher = t.app().dispatcher().clone();
    let step = tokio::spawn(async move { dispatcher.step().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!step.is_finished(), "the step waits at the gate");

    let started = tokio::time::Instant::now();
    let cancelled = t
        .client
        .cancel_video(req(ACME, pb::CancelVideoRequest { id: b.id.clone() }))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(cancelled.status(), pb::VideoStatus::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the owner applied the cancel before the pause ended"
    );
    step.await.expect("step task").expect("step");
    assert_eq!(
        t.sim.stats().creates_by_prompt.get(&waiting),
        None,
        "the cancelled job was never sent"
    );
    let stored = t
        .client
        .get_video(req(ACME, pb::GetVideoRequest { id: b.id.clone() }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(stored.status(), pb::VideoStatus::Cancelled);
    // The job refused with 429 is untouched by any of this.
    let a = t
        .client
        .get_video(req(ACME, pb::GetVideoRequest { id: a.id }))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(a.status(), pb::VideoStatus::Queued);
}

/// The app's store, with owners' writes failing `Unavailable` while `down` is set (a database
/// restarting); everything else passes through.
struct FlakyStore {
    inner: Arc<dyn vidgate::store::JobStore>,
    down: std::sync::atomic::AtomicBool,
    /// Set: the next successful save takes the store down behind it.
    armed: std::sync::atomic::AtomicBool,
    refused: std::sync::atomic::AtomicU32,
}

#[async_trait::async_trait]
impl vidgate::store::JobStore for FlakyStore {
    async fn create(
        &self,
        new: vidgate::job::NewJob,
    ) -> Result<vidgate::store::CreateOutcome, vidgate::store::StoreError> {
        self.inner.create(new).await
    }
    async fn update(
        &self,
        job: vidgate::job::Job,
        record: vidgate::job::Record,
    ) -> Result<vidgate::job::Job, vidgate::store::StoreError> {
        self.inner.update(job, record).await
    }
    async fn get(&self, id: &str) -> Result<Option<vidgate::job::Job>, vidgate::store::StoreError> {
        self.inner.get(id).await
    }
    async fn submission(
        &self,
        id: &str,
    ) -> Result<Option<bytes::Bytes>, vidgate::store::StoreError> {
        self.inner.submission(id).await
    }
    async fn list(
        &self,
        query: &vidgate::store::ListQuery,
    ) -> Result<Vec<vidgate::job::Job>, vidgate::store::StoreError> {
        self.inner.list(query).await
    }
    async fn claim_due(
        &self,
        now_ms: i64,
        until_ms: i64,
        limit: u32,
    ) -> Result<(vidgate::store::Lease, Vec<vidgate::job::Job>), vidgate::store::StoreError> {
        self.inner.claim_due(now_ms, until_ms, limit).await
    }
    async fn save(
        &self,
        lease: &vidgate::store::Lease,
        job: vidgate::job::Job,
        record: vidgate::job::Record,
        end: vidgate::store::LeaseEnd,
    ) -> Result<vidgate::store::Saved, vidgate::store::StoreError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(vidgate::store::StoreError::Unavailable(
                "test: the database is away".into(),
            ));
        }
        let saved = self.inner.save(lease, job, record, end).await;
        if saved.is_ok() && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        saved
    }
    async fn renew(
        &self,
        id: &str,
        lease: &vidgate::store::Lease,
        until_ms: i64,
    ) -> Result<Option<vidgate::store::OwnerRequest>, vidgate::store::StoreError> {
        self.inner.renew(id, lease, until_ms).await
    }
    async fn request(
        &self,
        id: &str,
        tenant: &str,
        request: vidgate::store::OwnerRequest,
        now_ms: i64,
    ) -> Result<vidgate::store::RequestOutcome, vidgate::store::StoreError> {
        self.inner.request(id, tenant, request, now_ms).await
    }
    async fn next_due_ms(&self) -> Result<Option<i64>, vidgate::store::StoreError> {
        self.inner.next_due_ms().await
    }
    async fn events_after(
        &self,
        query: &vidgate::store::EventQuery,
    ) -> Result<Vec<vidgate::store::StoredEvent>, vidgate::store::StoreError> {
        self.inner.events_after(query).await
    }
    async fn pruned_through(&self) -> Result<i64, vidgate::store::StoreError> {
        self.inner.pruned_through().await
    }
    async fn latest_sequence(&self) -> Result<i64, vidgate::store::StoreError> {
        self.inner.latest_sequence().await
    }
    async fn prune_events(&self, before_ms: i64) -> Result<u64, vidgate::store::StoreError> {
        self.inner.prune_events(before_ms).await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<vidgate::store::StoredEvent>> {
        self.inner.subscribe()
    }
    async fn health(&self) -> Result<(), vidgate::store::StoreError> {
        self.inner.health().await
    }
    async fn count_by_status(&self) -> Result<Vec<(String, u64)>, vidgate::store::StoreError> {
        self.inner.count_by_status().await
    }
    async fn load_cursor(&self, name: &str) -> Result<Option<i64>, vidgate::store::StoreError> {
        self.inner.load_cursor(name).await
    }
    async fn save_cursor(
        &self,
        name: &str,
        sequence: i64,
    ) -> Result<(), vidgate::store::StoreError> {
        self.inner.save_cursor(name, sequence).await
    }
    async fn hold_role(
        &self,
        name: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, vidgate::store::StoreError> {
        self.inner.hold_role(name, holder, now_ms, until_ms).await
    }
    async fn release_role(
        &self,
        name: &str,
        holder: &str,
    ) -> Result<(), vidgate::store::StoreError> {
        self.inner.release_role(name, holder).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_result_cannot_be_written_records_it_once_the_store_is_back() {
    let t = spawn_app().await;
    let prompt = unique("store away");
    let video = t
        .client
        .clone()
        .create_video(req(ACME, veo(&prompt)))
        .await
        .expect("create")
        .into_inner();
    let flaky = Arc::new(FlakyStore {
        inner: t.app().store(),
        down: std::sync::atomic::AtomicBool::new(false),
        armed: std::sync::atomic::AtomicBool::new(true),
        refused: std::sync::atomic::AtomicU32::new(0),
    });
    let config = test_config(&t.data_dir, &t.sim);
    let client = UpstreamClient::new(UpstreamConfig::new(
        url::Url::parse(&t.sim.base_url()).unwrap(),
        ApiKey::new(t.sim.api_key()).unwrap(),
    ))
    .expect("client");
    let dispatcher = Arc::new(Dispatcher::new(
        flaky.clone(),
        client,
        BlobStore::local(t.data_dir.join("blobs")).expect("blobs"),
        Arc::new(ModelCatalog::default()),
        config.dispatcher.clone(),
    ));
    // The submit step: its mark goes in, then the store goes away before the upstream's
    // answer is recorded (the save after the mark), and comes back a little later.
    let back = {
        let flaky = flaky.clone();
        tokio::spawn(async move {
            while flaky.refused.load(std::sync::atomic::Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            flaky.down.store(false, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let deadline = tokio::time::Instant::now() + DRIVE_DEADLINE;
    let done = loop {
        dispatcher.step().await.expect("step");
        let v = t
            .client
            .clone()
            .get_video(req(
                ACME,
                pb::GetVideoRequest {
                    id: video.id.clone(),
                },
            ))
            .await
            .expect("get")
            .into_inner();
        if v.status() == pb::VideoStatus::Completed || v.status() == pb::VideoStatus::Failed {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    back.await.expect("store back");
    assert!(flaky.refused.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    // Without the retry the answer is lost and, when the lease ends, the job is failed as an
    // unknown outcome: it completes instead, created once.
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    assert_eq!(
        t.sim.stats().creates_by_prompt.get(&prompt).copied(),
        Some(1),
        "created upstream once"
    );
}
