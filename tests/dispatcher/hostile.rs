//! A hostile upstream (#14): content without end, a trickle, redirects and last frames that
//! point at internal addresses, a failed task that echoes the key. One test per misbehaviour,
//! each asserting the bound that holds now.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use vidgate::config::Config;
use vidgate::pb;
use vidgate::upstream::sim::Simulator;

use crate::support::hostile::{Act, Hostile};
use crate::support::*;

/// The app on the hostile upstream (the simulator is started only because `TestApp` owns one).
async fn app_on(h: &Hostile, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let sim = Simulator::start(sim_config(), "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator starts");
    let data_dir = temp_dir("hostile");
    let mut config = test_config(&data_dir, &sim);
    config.upstream.base_url = h.base_url();
    config.api_key = Some(h.key.clone());
    tweak(&mut config);
    start(config, data_dir, sim).await
}

async fn create(t: &mut TestApp, token: &str, request: pb::CreateVideoRequest) -> String {
    t.client
        .create_video(req(token, request))
        .await
        .expect("create")
        .into_inner()
        .id
}

fn partial_files(t: &TestApp) -> Vec<(String, u64)> {
    let dir = t.data_dir.join("blobs").join("partial");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().map(|m| m.len()).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn get(t: &mut TestApp, token: &str, id: &str) -> pb::Video {
    t.client
        .get_video(req(token, pb::GetVideoRequest { id: id.into() }))
        .await
        .expect("get")
        .into_inner()
}

/// Upstream says completed and vidgate has not stored it yet: the download stage.
fn is_downloading(v: &pb::Video) -> bool {
    v.status() == pb::VideoStatus::Processing && v.upstream_status == "completed"
}

fn error_of(v: &pb::Video) -> pb::VideoError {
    v.error.clone().expect("a failed video has an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_content_is_cut_at_the_size_limit_and_the_job_fails_saying_why() {
    let h = Hostile::start(vec![("endless", Act::Endless)]).await;
    let mut t = app_on(&h, |c| {
        c.upstream.max_content_bytes = 2 * 1024 * 1024;
    })
    .await;
    let id = create(&mut t, ACME, veo(&unique("endless zeros"))).await;
    let v = t.drive(ACME, &id).await;
    assert_eq!(v.status(), pb::VideoStatus::Failed, "{v:?}");
    let e = error_of(&v);
    assert_eq!(e.reason, "CONTENT_INVALID", "{e:?}");
    assert!(!e.retryable, "{e:?}");
    assert!(
        e.message
            .contains("larger than the limit of 2097152 bytes; raise upstream.max_content_bytes"),
        "{}",
        e.message
    );
    // Nothing of it is left on disk (and at most the limit was ever written).
    assert_eq!(partial_files(&t), vec![], "the partial download is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_announced_larger_than_the_limit_is_refused_before_a_byte_is_written() {
    let h = Hostile::start(vec![("huge", Act::Announces(5 * 1024 * 1024 * 1024))]).await;
    let mut t = app_on(&h, |_| {}).await;
    let id = create(&mut t, ACME, veo(&unique("huge file"))).await;
    let v = t.drive(ACME, &id).await;
    let e = error_of(&v);
    assert_eq!(e.reason, "CONTENT_INVALID", "{e:?}");
    assert!(
        e.message.contains("it announced 5368709120 bytes")
            && e.message.contains("limit of 1073741824 bytes"),
        "{}",
        e.message
    );
    assert_eq!(partial_files(&t), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_echoed_by_upstream_is_redacted_in_errors_and_events() {
    let h = Hostile::start(vec![("echo", Act::FailEchoingAuth)]).await;
    let mut t = app_on(&h, |_| {}).await;
    let id = create(&mut t, ACME, veo(&unique("echo my headers"))).await;
    let mut watch = t
        .client
        .watch_video(req(
            ACME,
            pb::WatchVideoRequest {
                id: id.clone(),
                after_sequence: 0,
                include_content: false,
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    let v = t.drive(ACME, &id).await;
    assert_eq!(v.status(), pb::VideoStatus::Failed, "{v:?}");
    let e = error_of(&v);
    // The upstream did echo it: the request carried the key.
    assert!(
        h.seen()
            .iter()
            .any(|s| s.authorization.as_deref() == Some(&format!("Bearer {}", h.key))),
        "the upstream saw the key"
    );
    let text = format!("{v:?}");
    assert!(
        !text.contains(&h.key),
        "the key leaked into GetVideo: {text}"
    );
    assert!(
        e.message.contains("Bearer [REDACTED]") || e.upstream_message.contains("Bearer [REDACTED]"),
        "{e:?}"
    );
    let listed = t
        .client
        .list_videos(req(ACME, pb::ListVideosRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert!(!format!("{listed:?}").contains(&h.key));
    let deadline = Instant::now() + DRIVE_DEADLINE;
    let mut events = Vec::new();
    while Instant::now() < deadline {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await else {
            break;
        };
        let ev = ev.expect("event");
        let failed = matches!(&ev.kind, Some(pb::video_event::Kind::Video(v)) if v.status() == pb::VideoStatus::Failed);
        events.push(format!("{ev:?}"));
        if failed {
            break;
        }
    }
    assert!(
        events.iter().any(|e| e.contains("[REDACTED]")),
        "the failed event arrived: {events:?}"
    );
    assert!(events.iter().all(|e| !e.contains(&h.key)), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_frame_url_on_the_admin_port_is_not_fetched_and_the_video_is_kept_without_it() {
    // The upstream points the last frame at vidgate's own admin port.
    let h = Hostile::start(vec![]).await;
    let mut t = app_on(&h, |_| {}).await;
    let admin = t.app().admin_addr().expect("admin port");
    h.set("admin", Act::LastFrame(format!("http://{admin}/metrics")));
    let id = create(&mut t, ACME, seedance(&unique("admin frame"))).await;
    let v = t.drive(ACME, &id).await;
    assert_eq!(v.status(), pb::VideoStatus::Completed, "{v:?}");
    let content = v.content.clone().expect("content");
    assert!(!content.has_last_frame);
    assert!(!content.matches_request);
    assert!(
        content
            .mismatch
            .contains("last frame asked for but dropped")
            && content.mismatch.contains("127.0.0.1, a loopback address"),
        "{}",
        content.mismatch
    );
    let err = t
        .client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: id.clone(),
                variant: pb::ContentVariant::LastFrame as i32,
                ..Default::default()
            },
        ))
        .await
        .expect_err("no last frame to download");
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(
        err.message().contains("dropped") && err.message().contains("loopback"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_frame_that_is_not_an_image_is_dropped_and_one_on_upstreams_origin_is_kept() {
    let h = Hostile::start(vec![
        (
            "mp4frame",
            Act::LastFrame("http://{self}/api/v1/videos/video-x/content".into()),
        ),
        ("pngframe", Act::LastFrame("http://{self}/frame.png".into())),
    ])
    .await;
    let mut t = app_on(&h, |_| {}).await;
    let bad = create(&mut t, ACME, seedance(&unique("mp4frame"))).await;
    let good = create(&mut t, ACME, seedance(&unique("pngframe"))).await;
    let bad = t.drive(ACME, &bad).await;
    let good = t.drive(ACME, &good).await;
    let content = bad.content.clone().expect("content");
    assert!(!content.has_last_frame);
    assert!(
        content
            .mismatch
            .contains("the last frame is not a PNG or JPEG image"),
        "{}",
        content.mismatch
    );
    let content = good.content.clone().expect("content");
    assert!(content.has_last_frame, "{}", content.mismatch);
    // On upstream's own origin the key goes along (it may need it).
    let frame_requests: Vec<_> = h
        .seen()
        .into_iter()
        .filter(|s| s.path == "/frame.png")
        .collect();
    assert_eq!(frame_requests.len(), 1);
    assert_eq!(
        frame_requests[0].authorization.as_deref(),
        Some(format!("Bearer {}", h.key).as_str())
    );
    let frame = download_all(&mut t, &good.id, pb::ContentVariant::LastFrame).await;
    assert!(frame.starts_with(b"\x89PNG\r\n\x1a\n"));
}

async fn download_all(t: &mut TestApp, id: &str, variant: pb::ContentVariant) -> Vec<u8> {
    let mut stream = t
        .client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: id.into(),
                variant: variant as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("download")
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk").data);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_loopback_is_not_followed() {
    let h = Hostile::start(vec![]).await;
    let mut t = app_on(&h, |_| {}).await;
    let admin = t.app().admin_addr().expect("admin port");
    h.set("redirect", Act::Redirect(format!("http://{admin}/metrics")));
    let id = create(&mut t, ACME, veo(&unique("redirect me"))).await;
    let v = t.drive(ACME, &id).await;
    assert_eq!(v.status(), pb::VideoStatus::Failed, "{v:?}");
    let e = error_of(&v);
    assert_eq!(e.reason, "CONTENT_MISSING", "{e:?}");
    assert!(
        e.message.contains("refused to follow") && e.message.contains("a loopback address"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_is_followed_without_the_key() {
    // The other origin is internal too (both are loopback here): it is allowed by name.
    let cdn = Hostile::start(vec![]).await;
    let h = Hostile::start(vec![(
        "cdn",
        Act::Redirect(format!("http://{}/api/v1/videos/video-1/content", cdn.addr)),
    )])
    .await;
    let mut t = app_on(&h, |c| {
        c.upstream.allowed_networks = vec!["127.0.0.1/32".into()];
    })
    .await;
    let id = create(&mut t, ACME, veo(&unique("via cdn"))).await;
    let v = t.drive(ACME, &id).await;
    assert_eq!(v.status(), pb::VideoStatus::Completed, "{v:?}");
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn.len(), 1, "{at_cdn:?}");
    assert_eq!(
        at_cdn[0].authorization, None,
        "the key went to another origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_redirects_are_not_followed() {
    let h = Hostile::start(vec![(
        "loop",
        Act::Redirect("http://{self}/api/v1/videos/video-1/content".into()),
    )])
    .await;
    // video-1 is this job itself: its content redirects to itself without end.
    let mut t = app_on(&h, |_| {}).await;
    let id = create(&mut t, ACME, veo(&unique("loop"))).await;
    let v = t.drive(ACME, &id).await;
    let e = error_of(&v);
    assert!(e.message.contains("more than 3 redirects"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_downloads_never_hold_up_another_tenants_create() {
    // Two downloads at a few bytes per second, and as many call slots as downloads: before the
    // pools were split, they held every slot and nothing else was sent.
    let h = Hostile::start(vec![("trickle", Act::Trickle(10))]).await;
    let mut t = app_on(&h, |c| {
        c.dispatcher.enabled = true;
        c.upstream.limits.max_in_flight = 2;
        c.upstream.limits.max_downloads = 2;
        c.upstream.min_transfer_rate = 0;
    })
    .await;
    for n in 0..2 {
        create(&mut t, ACME, veo(&unique(&format!("trickle {n}")))).await;
    }
    let deadline = Instant::now() + DRIVE_DEADLINE;
    while h
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/content"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the two downloads did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let other = create(&mut t, GLOBEX, veo(&unique("another tenant"))).await;
    loop {
        let v = get(&mut t, GLOBEX, &other).await;
        // Submitted and polled to completion upstream: its download then waits for a download
        // slot, which is the downloads' own business.
        if !v.upstream_id.is_empty() && v.upstream_status == "completed" {
            break;
        }
        assert!(
            started.elapsed() < DRIVE_DEADLINE,
            "another tenant's job was not submitted and polled while two downloads trickled: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The trickles are still on (no minimum rate in this test): they never took a call slot.
    assert_eq!(
        t.app()
            .dispatcher()
            .client()
            .limiter()
            .downloads_in_flight(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_below_the_minimum_rate_is_broken_off_and_resumed_with_range() {
    let h = Hostile::start(vec![("trickle", Act::Trickle(100))]).await;
    let mut t = app_on(&h, |c| {
        c.upstream.min_transfer_rate = 10_000;
        c.upstream.transfer_rate_window_ms = 300;
    })
    .await;
    let id = create(&mut t, ACME, veo(&unique("trickle slowly"))).await;
    // One step: submit; one: poll (completed); the third downloads and is cut.
    let deadline = Instant::now() + DRIVE_DEADLINE;
    while h
        .seen()
        .iter()
        .filter(|s| s.path.ends_with("/content"))
        .count()
        < 2
    {
        t.app().dispatcher().step().await.expect("step");
        assert!(
            Instant::now() < deadline,
            "the download was not cut and resumed"
        );
    }
    let v = get(&mut t, ACME, &id).await;
    assert!(is_downloading(&v), "{v:?}");
    // What arrived is kept for the resume.
    let kept: u64 = partial_files(&t).iter().map(|(_, n)| n).sum();
    assert!(kept > 0, "{:?}", partial_files(&t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_disk_floor_downloads_wait_and_readiness_says_why() {
    let h = Hostile::start(vec![]).await;
    let mut t = app_on(&h, |c| {
        c.dispatcher.min_free_disk_bytes = u64::MAX;
        c.dispatcher.enabled = false;
    })
    .await;
    let id = create(&mut t, ACME, veo(&unique("no room"))).await;
    let deadline = Instant::now() + DRIVE_DEADLINE;
    loop {
        t.app().dispatcher().step().await.expect("step");
        let v = get(&mut t, ACME, &id).await;
        if is_downloading(&v) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reached the download: {v:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The download step itself, twice over: it waits (30 s) and does not start.
    for _ in 0..2 {
        t.app().dispatcher().step().await.expect("step");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v = get(&mut t, ACME, &id).await;
    assert!(is_downloading(&v), "{v:?}");
    assert!(
        !h.seen().iter().any(|s| s.path.ends_with("/content")),
        "no download starts below the floor"
    );
    // With room again (a restart with the normal floor), it completes.
    let mut t = t
        .restart(|c| {
            c.upstream.base_url = h.base_url();
            c.api_key = Some(h.key.clone());
        })
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let v = t.drive(ACME, &id).await;
    assert_eq!(v.status(), pb::VideoStatus::Completed, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_reports_a_disk_below_the_floor() {
    let h = Hostile::start(vec![]).await;
    let t = app_on(&h, |c| {
        c.dispatcher.min_free_disk_bytes = u64::MAX;
        c.dispatcher.enabled = true;
    })
    .await;
    let report = t.app().readiness().refresh().await;
    assert!(!report.ready);
    match &report.disk {
        vidgate::telemetry::readiness::Check::Failing(why) => assert!(
            why.contains("below dispatcher.min_free_disk_bytes") && why.contains("downloads wait"),
            "{why}"
        ),
        other => panic!("disk check: {other:?}"),
    }
}

/// `vidgate_dispatcher_retries_total` for `step`, read from the admin port.
async fn retries(t: &TestApp, step: &str) -> u64 {
    let admin = t.app().admin_addr().expect("admin port");
    let body = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("body");
    body.lines()
        .filter(|l| l.starts_with("vidgate_dispatcher_retries"))
        .filter(|l| l.contains(&format!("vidgate_step=\"{step}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_fails_here_backs_off_and_resumes_once_the_cause_is_gone() {
    let h = Hostile::start(vec![]).await;
    let mut t = app_on(&h, |c| {
        c.dispatcher.backoff_min_ms = 200;
        c.dispatcher.backoff_max_ms = 400;
    })
    .await;
    let id = create(&mut t, ACME, veo(&unique("unwritable"))).await;
    // A directory where the partial download goes: the step fails here, not upstream.
    let blocker = t
        .data_dir
        .join("blobs")
        .join("partial")
        .join(format!("{id}.mp4.part"));
    std::fs::create_dir_all(&blocker).expect("make the blocker");
    let stepping = Instant::now();
    while stepping.elapsed() < Duration::from_millis(1_500) {
        t.app().dispatcher().step().await.expect("step");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tries = retries(&t, "local").await;
    // ~300 steps ran in that time: a hot loop would retry at every one; the backoff (200-400
    // ms, doubling) allows a handful.
    assert!((1..=8).contains(&tries), "{tries} local retries in 1.5 s");
    let v = get(&mut t, ACME, &id).await;
    assert!(is_downloading(&v), "{v:?}");
    // The cause is gone: the job goes on after its backoff, not after its lease (120 s).
    std::fs::remove_dir(&blocker).expect("remove the blocker");
    let v = t.drive(ACME, &id).await;
    assert_eq!(v.status(), pb::VideoStatus::Completed, "{v:?}");
}
