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
