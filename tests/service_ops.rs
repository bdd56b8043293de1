//! Operability and edge semantics of the service: health, reflection, cursor expiry, download
//! once, maximum age, the resubmit policy.

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;
use tonic::Code;
use vidgate::pb;
use vidgate::upstream::sim::{Fault, FaultEndpoint, FaultRule};

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_service() {
    let t = spawn_app().await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", t.app().grpc_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let deadline = tokio::time::Instant::now() + DRIVE_DEADLINE;
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "vidgate.v1.VideoService".into(),
            })
            .await;
        if let Ok(r) = r
            && r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let first = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("not a service list: {first:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"vidgate.v1.VideoService".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_cursor_older_than_retention_is_out_of_range_cursor_expired() {
    let mut t = spawn_app().await;
    for _ in 0..3 {
        t.client
            .create_video(req(ACME, veo(&unique("old"))))
            .await
            .unwrap();
    }
    let store = t.app().store();
    let pruned = store
        .prune_events(vidgate::job::now_ms() + 1_000)
        .await
        .unwrap();
    assert!(pruned >= 3);
    let mut s = t
        .client
        .subscribe(req(
            ACME,
            pb::SubscribeRequest {
                after_sequence: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let status = s.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(error_reason(&status), "CURSOR_EXPIRED");
}

#[tokio::test]
async fn the_video_is_downloaded_from_upstream_once_however_many_read_it() {
    let mut t = spawn_app().await;
    let v = t
        .client
        .create_video(req(ACME, veo(&unique("once"))))
        .await
        .unwrap()
        .into_inner();
    let done = t.drive(ACME, &v.id).await;
    for _ in 0..3 {
        let mut s = t
            .client
            .download_video(req(
                ACME,
                pb::DownloadVideoRequest {
                    id: v.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        while let Some(c) = s.next().await {
            c.unwrap();
        }
    }
    let stats = t.sim.stats();
    let task = &stats.tasks[&done.upstream_id];
    assert_eq!(
        task.content_requests, 1,
        "one upstream download for three readers"
    );
}

#[tokio::test]
async fn a_job_past_the_maximum_age_fails_with_its_own_reason() {
    let mut t = spawn_app_with(|c| c.dispatcher.max_age_ms = 1).await;
    let v = t
        .client
        .create_video(req(ACME, veo(&unique("old job"))))
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Failed);
    assert_eq!(done.error.unwrap().reason, "JOB_MAX_AGE");
}

#[tokio::test]
async fn unknown_outcome_is_resubmitted_only_when_configured() {
    let mut t = spawn_app_with(|c| {
        c.dispatcher.on_unknown_create = vidgate::dispatcher::UnknownCreatePolicy::Resubmit;
    })
    .await;
    let prompt = unique("fresubmit");
    t.sim.set_faults(vec![
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::Http {
                status: 502,
                retry_after_s: None,
            },
        )
        .prompt_contains("fresubmit")
        .times(1),
    ]);
    let v = t
        .client
        .create_video(req(ACME, veo(&prompt)))
        .await
        .unwrap()
        .into_inner();
    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
}

#[tokio::test]
async fn a_rejected_create_fails_with_the_upstream_message_and_is_not_retried() {
    let mut t = spawn_app().await;
    let prompt = unique("frejected");
    t.sim.set_faults(vec![
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::Http {
                status: 400,
                retry_after_s: None,
            },
        )
        .prompt_contains("frejected"),
    ]);
    let v = t
        .client
        .create_video(req(ACME, veo(&prompt)))
        .await
        .unwrap()
        .into_inner();
    let done = t.drive(ACME, &v.id).await;
    let e = done.error.unwrap();
    assert_eq!(e.reason, "UPSTREAM_REJECTED");
    assert_eq!(e.upstream_http_status, 400);
    assert!(!e.retryable);
    assert_eq!(t.sim.stats().requests.create, 1);
}

#[tokio::test]
async fn delete_removes_content_and_listing_and_frees_the_request_id() {
    let mut t = spawn_app().await;
    let mut r = veo(&unique("delete me"));
    r.request_id = "key-to-reuse".into();
    let v = t
        .client
        .create_video(req(ACME, r.clone()))
        .await
        .unwrap()
        .into_inner();
    let done = t.drive(ACME, &v.id).await;
    let blob = t
        .data_dir
        .join("blobs")
        .join(format!("videos/{}.mp4", v.id));
    assert!(blob.exists(), "stored at {}", blob.display());
    assert_eq!(done.status(), pb::VideoStatus::Completed);
    t.client
        .delete_video(req(ACME, pb::DeleteVideoRequest { id: v.id.clone() }))
        .await
        .unwrap();
    assert!(!blob.exists(), "content removed");
    let e = t
        .client
        .get_video(req(ACME, pb::GetVideoRequest { id: v.id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let list = t
        .client
        .list_videos(req(ACME, pb::ListVideosRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(list.videos.iter().all(|x| x.id != v.id));
    let again = t
        .client
        .create_video(req(ACME, r))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        again.id, v.id,
        "the key names a new job once the old one is deleted"
    );
}

#[tokio::test]
async fn pruning_never_deletes_an_event_the_relay_has_not_had_confirmed() {
    let mut t = spawn_app().await;
    for _ in 0..4 {
        t.client
            .create_video(req(ACME, veo(&unique("unpublished"))))
            .await
            .unwrap();
        // Distinct milliseconds: pruning bounds by time (a tie keeps more, never less).
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let store = t.app().store();
    // The relay's durable cursor says events up to 2 are confirmed by the broker.
    store.save_cursor("test-relay", 2).await.unwrap();
    let everything = vidgate::job::now_ms() + 1_000;
    let pruned = vidgate::app::prune_events(store.as_ref(), everything, Some("test-relay"))
        .await
        .unwrap();
    assert_eq!(pruned, 2, "only the confirmed events are old enough to go");
    assert_eq!(store.pruned_through().await.unwrap(), 2);
    // Once the relay has them all, they may go.
    store.save_cursor("test-relay", 4).await.unwrap();
    let pruned = vidgate::app::prune_events(store.as_ref(), everything, Some("test-relay"))
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    // Without AMQP there is no relay to wait for.
    t.client
        .create_video(req(ACME, veo(&unique("no relay"))))
        .await
        .unwrap();
    let pruned = vidgate::app::prune_events(store.as_ref(), vidgate::job::now_ms() + 1_000, None)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
}
