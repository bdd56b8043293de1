//! A job's public status never moves backwards in its event stream, whatever upstream's words
//! do: the simulator answers a create with `in_progress` and the first poll with `queued` (U1).

use vidgate::job::JobStatus;
use vidgate::store::EventQuery;
use vidgate::upstream::sim::Simulator;

use crate::support::*;

fn rank(status: JobStatus) -> u8 {
    match status {
        JobStatus::Queued => 0,
        JobStatus::Processing => 1,
        JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled => 2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_never_regresses_in_the_event_log_when_upstream_says_queued_after_in_progress() {
    let sim = Simulator::start(
        vidgate::upstream::sim::SimConfig {
            // Long enough that the first polls land in upstream's `queued` phase.
            queued_ms: 150,
            processing_ms: 50,
            in_progress_spelling: true,
            ..sim_config()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts");
    let data_dir = temp_dir("status-order");
    let config = test_config(&data_dir, &sim);
    let mut t = start(config, data_dir, sim).await;

    let created = t
        .client
        .create_video(req(ACME, veo(&unique("status order"))))
        .await
        .expect("create")
        .into_inner();
    let done = t.drive(ACME, &created.id).await;
    assert_eq!(done.status(), vidgate::pb::VideoStatus::Completed);

    let events = t
        .app()
        .store()
        .events_after(&EventQuery {
            after_sequence: 0,
            job_id: Some(created.id.clone()),
            limit: 1_000,
            ..EventQuery::default()
        })
        .await
        .expect("events");
    let words: Vec<(JobStatus, String)> = events
        .iter()
        .map(|e| (e.job.status(), e.job.upstream_status().to_owned()))
        .collect();
    assert!(
        words.iter().any(|(_, w)| w == "queued"),
        "the test must see upstream say queued after in_progress: {words:?}"
    );
    assert!(
        words.iter().any(|(s, _)| *s == JobStatus::Processing),
        "{words:?}"
    );
    for pair in events.windows(2) {
        assert!(
            rank(pair[0].job.status()) <= rank(pair[1].job.status()),
            "status went backwards from {:?} to {:?}: {words:?}",
            pair[0].job.status(),
            pair[1].job.status()
        );
    }
}
