//! The dispatcher sends the spec validated at accept, as stored: re-checked once when the
//! operator changed the model's rules in the catalog since (a job that no longer passes fails
//! saying so, and nothing is sent), and read the old way from rows written before the stored
//! form (protobuf).

use prost::Message;
use vidgate::convert;
use vidgate::job::{Accepted, Job, NewJob, new_job_id, now_ms};
use vidgate::pb;

use crate::support::*;

/// Accepts a Veo job (4 s, 1280x720) under the built-in catalog, then restarts vidgate on the
/// same store with `catalog` merged over the built-in one, and drives the job there.
async fn accept_then_dispatch_under(catalog: &str, prompt: &str) -> (TestApp, pb::Video) {
    let mut t = spawn_app().await;
    let created = t
        .client
        .create_video(req(ACME, veo(prompt)))
        .await
        .expect("create")
        .into_inner();
    let file = t.data_dir.with_extension("catalog.toml");
    std::fs::write(&file, catalog).expect("catalog written");
    let mut t = t.restart(|c| c.catalog.file = Some(file)).await;
    let done = t.drive(ACME, &created.id).await;
    (t, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_models_rules_changed_since_accept_fails_naming_the_rule_and_is_not_sent() {
    let prompt = unique("rules tightened");
    let (t, done) = accept_then_dispatch_under("[families.veo]\nseconds = [6, 8]\n", &prompt).await;

    assert_eq!(done.status(), pb::VideoStatus::Failed, "{done:?}");
    let error = done.error.expect("an error");
    assert_eq!(error.reason, "UPSTREAM_REJECTED");
    assert!(!error.retryable);
    assert!(
        error
            .message
            .contains("the model catalog changed since the job was accepted"),
        "{}",
        error.message
    );
    assert!(
        error.message.contains("veo.seconds (V1)"),
        "{}",
        error.message
    );
    assert_eq!(t.sim.stats().creates_by_prompt.get(&prompt), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_models_rules_changed_but_still_allow_it_completes() {
    let prompt = unique("rules loosened");
    let (t, done) = accept_then_dispatch_under(
        "[families.veo]\nseconds = [4, 8]\nsizes = [\"1280x720\"]\n",
        &prompt,
    )
    .await;

    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    assert_eq!(t.sim.stats().creates_by_prompt.get(&prompt), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stored_as_protobuf_before_the_stored_spec_still_dispatches() {
    let mut t = spawn_app().await;
    let prompt = unique("legacy row");
    let request = pb::CreateVideoRequest {
        request_id: unique("legacy"),
        ..seedance(&prompt)
    };
    // A row as vidgate wrote it before the stored spec: the submission is the protobuf.
    let job = Job::accepted(
        Accepted {
            id: new_job_id(),
            tenant: "acme".into(),
            request_id: Some(request.request_id.clone()),
            fingerprint: convert::fingerprint(&request),
            model: request.model.clone(),
            labels: request.labels.clone(),
            request: convert::strip_inputs(&request).encode_to_vec().into(),
            reply_to: None,
            correlation_id: None,
            trace_context: None,
        },
        now_ms(),
    );
    let id = job.id.clone();
    t.app()
        .store()
        .create(NewJob {
            job,
            submission: request.encode_to_vec().into(),
        })
        .await
        .expect("legacy row stored");

    let done = t.drive(ACME, &id).await;

    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    assert_eq!(t.sim.stats().creates_by_prompt.get(&prompt), Some(&1));
    let content = done.content.expect("content");
    // Read from the legacy row: the requested 480p 16:9 is checked, and the last frame kept.
    assert!(content.matches_request, "{content:?}");
    assert!(content.has_last_frame, "{content:?}");
}
