//! Operability and edge semantics of the service: health, reflection, cursor expiry, download
//! once, maximum age, the resubmit policy, and the stop: readiness and health at once, streams
//! ended with their cursor, the process gone within its grace, resumed without gap or repeat.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::upstream::sim::{Fault, FaultEndpoint, FaultRule, SimConfig, SimHandle, Simulator};

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
async fn a_cursor_beyond_the_latest_sequence_is_out_of_range_cursor_ahead() {
    let mut t = spawn_app().await;
    let v = t
        .client
        .create_video(req(ACME, veo(&unique("ahead"))))
        .await
        .unwrap()
        .into_inner();
    let latest = v.last_sequence;
    let mut s = t
        .client
        .subscribe(req(
            ACME,
            pb::SubscribeRequest {
                after_sequence: latest + 1_000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let status = s.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(error_reason(&status), "CURSOR_AHEAD");
    assert!(status.message().contains("beyond the latest"), "{status:?}");
    // WatchVideo too, however far: no stream that silently never ends.
    let mut w = t
        .client
        .watch_video(req(
            ACME,
            pb::WatchVideoRequest {
                id: v.id.clone(),
                after_sequence: i64::MAX,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let status = w.next().await.unwrap().unwrap_err();
    assert_eq!(error_reason(&status), "CURSOR_AHEAD", "{status:?}");
    // The latest itself is a valid cursor (a stream that saw everything resumes there).
    let mut ok = t
        .client
        .subscribe(req(
            ACME,
            pb::SubscribeRequest {
                after_sequence: latest,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), ok.next())
            .await
            .is_err(),
        "no error and no event: waiting for the next one"
    );
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
    let pruned = vidgate::app::prune_events(store.as_ref(), everything, &["test-relay"])
        .await
        .unwrap();
    assert_eq!(pruned, 2, "only the confirmed events are old enough to go");
    assert_eq!(store.pruned_through().await.unwrap(), 2);
    // Once the relay has them all, they may go.
    store.save_cursor("test-relay", 4).await.unwrap();
    let pruned = vidgate::app::prune_events(store.as_ref(), everything, &["test-relay"])
        .await
        .unwrap();
    assert_eq!(pruned, 2);
    // Without AMQP there is no relay to wait for.
    t.client
        .create_video(req(ACME, veo(&unique("no relay"))))
        .await
        .unwrap();
    let pruned = vidgate::app::prune_events(store.as_ref(), vidgate::job::now_ms() + 1_000, &[])
        .await
        .unwrap();
    assert_eq!(pruned, 1);
}

async fn health_status(channel: &tonic::transport::Channel, service: &str) -> ServingStatus {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check answers")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("a serving status")
}

async fn readyz(admin: SocketAddr) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .expect("GET /readyz");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz is JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_and_grpc_health_read_one_state_and_both_turn_not_serving_when_stopping() {
    let mut t = spawn_app().await;
    let admin = t.app().admin_addr().expect("admin port is on");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", t.app().grpc_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let service = "vidgate.v1.VideoService";

    // What `/readyz` answered is what health answers next: no refresh loop in between.
    let (status, report) = readyz(admin).await;
    assert_eq!((status, &report["ready"]), (200, &serde_json::json!(true)));
    assert_eq!(
        health_status(&channel, service).await,
        ServingStatus::Serving
    );
    assert_eq!(health_status(&channel, "").await, ServingStatus::Serving);

    t.app().begin_shutdown();

    assert_eq!(
        health_status(&channel, service).await,
        ServingStatus::NotServing
    );
    assert_eq!(health_status(&channel, "").await, ServingStatus::NotServing);
    let (status, report) = readyz(admin).await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["shutting_down"], true, "{report}");
    // New calls are refused with a reason and a retry hint.
    let refused = t
        .client
        .create_video(req(ACME, veo(&unique("too late"))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert_eq!(error_reason(&refused), "SERVER_SHUTTING_DOWN");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");

    let app = t.app.take().expect("app running");
    assert_eq!(app.shutdown().await, vidgate::app::Stopped::Cleanly);
}

/// The stop bound the test configures, and what it allows on top for a loaded machine.
const TEST_GRACE: Duration = Duration::from_secs(10);
const EXIT_MARGIN: Duration = Duration::from_secs(5);
/// Longest wait for anything a stream or a child process should do (a hang guard, not a
/// measure of speed).
const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// `vidgate serve --no-auth` as a child process on `data_dir`, against `sim`.
async fn serve_child(
    config: &Path,
    data_dir: &Path,
    sim: &SimHandle,
) -> (
    tokio::process::Child,
    VideoServiceClient<tonic::transport::Channel>,
) {
    let grpc = free_port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vidgate"))
        .args(["serve", "--no-auth", "--config"])
        .arg(config)
        .env_remove("VIDGATE_AMQP_URL")
        .env("TURING_API_KEY", sim.api_key())
        .env("TURING_BASE_URL", sim.base_url())
        .env("VIDGATE_GRPC_LISTEN", grpc.to_string())
        .env("VIDGATE_ADMIN_LISTEN", free_port().to_string())
        .env("VIDGATE_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("vidgate serve starts");
    let deadline = tokio::time::Instant::now() + WAIT;
    let client = loop {
        match VideoServiceClient::connect(format!("http://{grpc}")).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "vidgate did not listen: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    (child, client)
}

type Events = tonic::Streaming<pb::VideoEvent>;

/// The next state event (content never comes on these streams): `Ok(None)` at the end.
async fn next_state(stream: &mut Events) -> Result<Option<(i64, pb::Video)>, tonic::Status> {
    loop {
        let event = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("the stream moves on")?;
        match event {
            None => return Ok(None),
            Some(pb::VideoEvent {
                sequence,
                kind: Some(pb::video_event::Kind::Video(video)),
                ..
            }) => return Ok(Some((sequence, video))),
            Some(_) => {}
        }
    }
}

/// Every sequence until the stream ends, and how it ended.
async fn read_to_end(mut stream: Events) -> (Vec<i64>, Result<(), tonic::Status>) {
    let mut seen = Vec::new();
    loop {
        match next_state(&mut stream).await {
            Ok(Some((sequence, _))) => seen.push(sequence),
            Ok(None) => return (seen, Ok(())),
            Err(status) => return (seen, Err(status)),
        }
    }
}

/// Sequences until (and with) the event that creates `marker`.
async fn read_until_created(stream: &mut Events, marker: &str, seen: &mut Vec<i64>) {
    while let Some((sequence, video)) = next_state(stream).await.expect("the stream goes on") {
        seen.push(sequence);
        if video.id == marker && video.status() == pb::VideoStatus::Queued {
            return;
        }
    }
    panic!("the stream ended before {marker} was created");
}

/// The cursor a stream ended by the stop carries, after checking how it ended.
fn shutdown_cursor(ended: Result<(), tonic::Status>, seen: &[i64], which: &str) -> i64 {
    let status = ended.expect_err("the stop ends the stream with an error");
    assert_eq!(status.code(), Code::Unavailable, "{which}: {status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "SERVER_SHUTTING_DOWN", "{which}");
    assert!(
        status.get_details_retry_info().is_some(),
        "{which}: RetryInfo"
    );
    let cursor: i64 = info.metadata["last_sequence"].parse().expect("a sequence");
    assert_eq!(
        Some(&cursor),
        seen.last(),
        "{which}: the cursor is the last sequence delivered"
    );
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_with_their_cursor_exits_within_the_grace_and_they_resume_without_gap_or_repeat()
 {
    // The upstream lives in the test, so jobs go on across the restart; long enough processing
    // that the watched job is still running when the stop comes.
    let sim = Simulator::start(
        SimConfig {
            queued_ms: 10,
            processing_ms: 4_000,
            jitter: 0.0,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts");
    let dir = temp_dir("shutdown");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let config = dir.join("vidgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshutdown_grace_ms = {}\n\n[dispatcher]\nfirst_poll_after_ms = 50\npoll_interval_ms = 100\npoll_jitter = 0.0\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n",
            TEST_GRACE.as_millis()
        ),
    )
    .unwrap();

    // Arrange: a subscription and a watch, with events flowing. One job first, so the
    // subscription's first sequence is past 1 and "just before it" is a cursor, not "from now".
    let (mut child, mut client) = serve_child(&config, &data_dir, &sim).await;
    client
        .create_video(veo(&unique("before")))
        .await
        .expect("create");
    let mut subscription = client
        .subscribe(pb::SubscribeRequest::default())
        .await
        .expect("subscribe")
        .into_inner();
    let watched = client
        .create_video(veo(&unique("watched")))
        .await
        .expect("create")
        .into_inner();
    let mut watch = client
        .watch_video(pb::WatchVideoRequest {
            id: watched.id.clone(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut watched_seen = Vec::new();
    let (first, _) = next_state(&mut watch)
        .await
        .unwrap()
        .expect("current state");
    watched_seen.push(first);
    let mut last = String::new();
    for _ in 0..4 {
        last = client
            .create_video(veo(&unique("flowing")))
            .await
            .expect("create")
            .into_inner()
            .id;
    }
    let mut subscribed_seen = Vec::new();
    read_until_created(&mut subscription, &last, &mut subscribed_seen).await;

    // Act: SIGTERM while both streams are open.
    let readers = (
        tokio::spawn(read_to_end(subscription)),
        tokio::spawn(read_to_end(watch)),
    );
    let pid = child.id().expect("pid").to_string();
    let stopping = tokio::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let exit = tokio::time::timeout(TEST_GRACE + EXIT_MARGIN, child.wait())
        .await
        .expect("vidgate exits within its shutdown grace")
        .expect("exit status");
    let took = stopping.elapsed();
    eprintln!("vidgate exited {took:?} after SIGTERM with two streams open");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert!(
        exit.success(),
        "a clean stop, nothing abandoned: {exit:?}: {stderr}"
    );

    // Assert: both streams ended with UNAVAILABLE and the last sequence they delivered.
    let (more, ended) = readers.0.await.unwrap();
    subscribed_seen.extend(more);
    let subscribed_cursor = shutdown_cursor(ended, &subscribed_seen, "Subscribe");
    let (more, ended) = readers.1.await.unwrap();
    watched_seen.extend(more);
    let watched_cursor = shutdown_cursor(ended, &watched_seen, "WatchVideo");

    // A new process on the same data: both resume from their cursors.
    let (mut child, mut client) = serve_child(&config, &data_dir, &sim).await;
    let mut subscription = client
        .subscribe(pb::SubscribeRequest {
            after_sequence: subscribed_cursor,
            ..Default::default()
        })
        .await
        .expect("subscribe again")
        .into_inner();
    let watch = client
        .watch_video(pb::WatchVideoRequest {
            id: watched.id.clone(),
            after_sequence: watched_cursor,
            ..Default::default()
        })
        .await
        .expect("watch again")
        .into_inner();
    let marker = client
        .create_video(veo(&unique("after the restart")))
        .await
        .expect("create")
        .into_inner()
        .id;
    read_until_created(&mut subscription, &marker, &mut subscribed_seen).await;
    let (more, ended) = read_to_end(watch).await;
    ended.expect("the watch ends with the job");
    watched_seen.extend(more);

    // The log, read whole from the first sequence each stream saw, is exactly what the
    // two halves delivered together.
    let mut everything = client
        .subscribe(pb::SubscribeRequest {
            after_sequence: subscribed_seen[0] - 1,
            ..Default::default()
        })
        .await
        .expect("subscribe from the start")
        .into_inner();
    let mut expected = Vec::new();
    read_until_created(&mut everything, &marker, &mut expected).await;
    assert_eq!(subscribed_seen, expected, "Subscribe: no gap, no repeat");
    let whole_watch = client
        .watch_video(pb::WatchVideoRequest {
            id: watched.id.clone(),
            after_sequence: watched_seen[0],
            ..Default::default()
        })
        .await
        .expect("watch from the start")
        .into_inner();
    let (expected, ended) = read_to_end(whole_watch).await;
    ended.expect("the replayed watch ends with the job");
    assert_eq!(
        watched_seen[1..],
        expected[..],
        "WatchVideo: no gap, no repeat"
    );
    assert!(
        subscribed_seen.iter().any(|s| *s > subscribed_cursor)
            && watched_seen.iter().any(|s| *s > watched_cursor),
        "both streams went on after the restart"
    );

    let pid = child.id().expect("pid").to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let _ = tokio::time::timeout(WAIT, child.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_open_when_stopping_ends_unavailable_naming_the_offset_to_resume_from() {
    // A 1 MiB video in small chunks through a small receive window: the server cannot have
    // sent all of it before the stop, whatever the machine's speed.
    let sim = Simulator::start(
        SimConfig {
            content_min_size: 1024 * 1024,
            ..sim_config()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts");
    let data_dir = temp_dir("download-stop");
    let mut config = test_config(&data_dir, &sim);
    config.events.chunk_bytes = 1024;
    let mut t = start(config, data_dir, sim).await;
    let v = t
        .client
        .create_video(req(ACME, veo(&unique("download when stopping"))))
        .await
        .unwrap()
        .into_inner();
    let done = t.drive(ACME, &v.id).await;
    let size = done.content.expect("content").size_bytes;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", t.app().grpc_addr()))
            .unwrap()
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024)
            .connect()
            .await
            .unwrap();
    assert!(
        size > 256 * 1024,
        "the video ({size} bytes) outgrows the buffers"
    );
    let mut download = VideoServiceClient::new(channel)
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
    let first = download.message().await.unwrap().expect("a first chunk");
    let mut received = first.data.len() as i64;

    t.app().begin_shutdown();

    let status = loop {
        match download.message().await {
            Ok(Some(chunk)) => {
                assert_eq!(chunk.offset, received, "chunks in order, none skipped");
                received += chunk.data.len() as i64;
            }
            Ok(None) => panic!("the download ended normally after {received} of {size} bytes"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "SERVER_SHUTTING_DOWN");
    assert_eq!(info.metadata["next_offset"], received.to_string());
    assert!((received as u64) < size);
    let app = t.app.take().expect("app running");
    assert_eq!(app.shutdown().await, vidgate::app::Stopped::Cleanly);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_what_is_left_is_abandoned_and_the_process_exits_anyway() {
    // An upstream create that answers only after a minute: the dispatcher's step is in flight
    // and nothing but the grace ends it.
    let grace = Duration::from_millis(1_000);
    let sim = Simulator::start(sim_config(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts");
    sim.set_faults(vec![
        FaultRule::new(FaultEndpoint::Create, Fault::Delay { ms: 60_000 })
            .prompt_contains("held upstream"),
    ]);
    let dir = temp_dir("abandon");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let config = dir.join("vidgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nshutdown_grace_ms = {}\n\n[dispatcher]\nfirst_poll_after_ms = 10\npoll_interval_ms = 20\npoll_jitter = 0.0\n",
            grace.as_millis()
        ),
    )
    .unwrap();
    let (mut child, mut client) = serve_child(&config, &data_dir, &sim).await;
    client
        .create_video(veo(&unique("held upstream")))
        .await
        .expect("create");
    let deadline = tokio::time::Instant::now() + WAIT;
    while sim.stats().requests.create == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the create never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let pid = child.id().expect("pid").to_string();
    let stopping = tokio::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let exit = tokio::time::timeout(grace + EXIT_MARGIN, child.wait())
        .await
        .expect("vidgate exits within its shutdown grace")
        .expect("exit status");
    let took = stopping.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    eprintln!("vidgate exited {took:?} after SIGTERM with an upstream call in flight");
    assert!(
        !exit.success(),
        "an abandoning stop says so: {exit:?}: {stderr}"
    );
    assert!(stderr.contains("abandon"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
