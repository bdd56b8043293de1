//! The gRPC service end to end against the simulator: ARCHITECTURE.md's "Semantics users rely
//! on", one test each.

use std::collections::BTreeMap;

use crate::support::*;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic_types::StatusExt;
use vidgate::pb;
use vidgate::upstream::sim::{Fault, FaultEndpoint, FaultRule};

async fn create(t: &mut TestApp, token: &str, r: pb::CreateVideoRequest) -> pb::Video {
    t.client
        .create_video(req(token, r))
        .await
        .expect("create")
        .into_inner()
}

async fn download_all(t: &mut TestApp, token: &str, id: &str, offset: i64) -> Vec<u8> {
    let mut s = t
        .client
        .download_video(req(
            token,
            pb::DownloadVideoRequest {
                id: id.into(),
                read_offset: offset,
                ..Default::default()
            },
        ))
        .await
        .expect("download")
        .into_inner();
    let mut out = Vec::new();
    let mut expect = offset;
    while let Some(c) = s.next().await {
        let c = c.expect("chunk");
        assert_eq!(c.offset, expect, "chunks are contiguous");
        assert!(c.data.len() <= 64 * 1024);
        expect += c.data.len() as i64;
        out.extend_from_slice(&c.data);
    }
    out
}

#[tokio::test]
async fn create_watch_complete_then_chunks_match_download_and_sha256() {
    let mut t = spawn_app().await;
    let prompt = unique("cat at a piano");
    let v = create(&mut t, ACME, veo(&prompt)).await;
    assert_eq!(v.status(), pb::VideoStatus::Queued);
    assert!(v.id.starts_with("vid_"));

    let mut watch = t
        .client
        .watch_video(req(
            ACME,
            pb::WatchVideoRequest {
                id: v.id.clone(),
                after_sequence: 0,
                include_content: true,
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    let content = done.content.clone().expect("content facts");
    assert_eq!((content.width, content.height), (1280, 720));
    assert!((content.duration_seconds - 4.0).abs() < 0.5);
    assert!(content.matches_request, "{}", content.mismatch);

    let mut statuses = Vec::new();
    let mut bytes = Vec::new();
    let mut end = None;
    let mut last_seq = 0;
    while let Some(ev) = watch.next().await {
        let ev = ev.expect("event");
        match ev.kind.expect("kind") {
            pb::video_event::Kind::Video(video) => {
                assert!(
                    ev.sequence > last_seq || (last_seq == 0 && ev.sequence >= 0),
                    "sequences increase"
                );
                last_seq = ev.sequence;
                statuses.push(video.status());
            }
            pb::video_event::Kind::Chunk(c) => {
                assert_eq!(c.offset as usize, bytes.len());
                bytes.extend_from_slice(&c.data);
            }
            pb::video_event::Kind::ContentEnd(e) => end = Some(e),
            pb::video_event::Kind::Rejection(_) => panic!("no rejections over gRPC"),
        }
    }
    assert_eq!(
        statuses.first(),
        Some(&pb::VideoStatus::Queued),
        "current state first: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&pb::VideoStatus::Completed));
    let end = end.expect("content_end");
    assert_eq!(end.size_bytes as usize, bytes.len());
    assert_eq!(end.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(end.sha256, content.sha256);
    let downloaded = download_all(&mut t, ACME, &v.id, 0).await;
    assert!(
        downloaded == bytes,
        "DownloadVideo and WatchVideo give the same bytes"
    );
    assert_eq!(t.sim.stats().creates_by_prompt.get(&prompt), Some(&1));
}

#[tokio::test]
async fn same_request_id_is_one_job_and_one_upstream_create_and_a_different_request_is_refused() {
    let mut t = spawn_app().await;
    let prompt = unique("idempotent");
    let mut r = veo(&prompt);
    r.request_id = "order-42".into();
    let a = create(&mut t, ACME, r.clone()).await;
    let b = create(&mut t, ACME, r.clone()).await;
    assert_eq!(a.id, b.id);
    // Another tenant may use the same key for its own job.
    let c = create(&mut t, GLOBEX, r.clone()).await;
    assert_ne!(a.id, c.id);
    t.drive(ACME, &a.id).await;
    let again = create(&mut t, ACME, r.clone()).await;
    assert_eq!(again.id, a.id);
    assert_eq!(again.status(), pb::VideoStatus::Completed);
    // Two jobs (acme's and globex's), each created upstream exactly once.
    assert_eq!(t.sim.stats().creates_by_prompt.get(&prompt), Some(&2));

    let mut other = r.clone();
    other.prompt = unique("something else");
    let err = t.client.create_video(req(ACME, other)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(error_reason(&err), "REQUEST_ID_REUSED");
}

#[tokio::test]
async fn every_invalid_request_is_invalid_argument_with_field_violations_and_no_upstream_call() {
    let mut t = spawn_app().await;
    let with_veo = |seconds: u32, size: &str| {
        let mut r = veo(&unique("bad"));
        r.params = Some(pb::create_video_request::Params::Veo(pb::VeoParams {
            seconds,
            size: size.into(),
            ..Default::default()
        }));
        r
    };
    let with_seedance = |f: &dyn Fn(&mut pb::SeedanceParams)| {
        let mut r = seedance(&unique("bad"));
        if let Some(pb::create_video_request::Params::Seedance(s)) = r.params.as_mut() {
            f(s);
        }
        r
    };
    let big_image = pb::InputImage {
        data: vec![0xFF; 10 * 1024 * 1024 + 1].into(),
        filename: "a.jpg".into(),
        mime_type: "image/jpeg".into(),
        ..Default::default()
    };
    let mut too_big = veo(&unique("big"));
    too_big.params = Some(pb::create_video_request::Params::Veo(pb::VeoParams {
        input_reference: Some(big_image),
        ..Default::default()
    }));
    let mut no_prompt = veo("");
    no_prompt.prompt.clear();
    let mut unknown_model = veo(&unique("m"));
    unknown_model.model = "no-such-model".into();
    let mut bad_label = veo(&unique("l"));
    bad_label.labels = BTreeMap::from([("bad key!".to_owned(), "v".to_owned())]);
    let cases: Vec<(&str, pb::CreateVideoRequest, &str, &str)> = vec![
        ("V1", with_veo(5, "1280x720"), "veo.seconds", "V1"),
        ("V2", with_veo(4, "1920x1080"), "veo.size", "V2"),
        ("V3", too_big, "veo.input_reference", "V3"),
        (
            "S4",
            with_seedance(&|s| s.resolution = "360p".into()),
            "seedance.resolution",
            "S4",
        ),
        (
            "S5",
            with_seedance(&|s| s.ratio = "2:1".into()),
            "seedance.ratio",
            "S5",
        ),
        (
            "S6",
            with_seedance(&|s| s.duration = Some(7)),
            "seedance.duration",
            "S6",
        ),
        ("prompt", no_prompt, "prompt", ""),
        ("model", unknown_model, "model", "VG-MODEL"),
        ("labels", bad_label, "labels[bad key!]", "VG-ENVELOPE"),
    ];
    for (name, request, field, rule) in cases {
        let err = t.client.create_video(req(ACME, request)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        let details = err.get_error_details();
        let violations = details
            .bad_request()
            .expect("BadRequest")
            .field_violations
            .clone();
        assert!(
            violations
                .iter()
                .any(|v| v.field.starts_with(field) && (rule.is_empty() || v.reason == rule)),
            "{name}: want {field} ({rule}), got {violations:?}"
        );
        assert!(!err.message().is_empty());
        assert_eq!(
            details.error_info().map(|i| i.domain.as_str()),
            Some("vidgate")
        );
    }
    let stats = t.sim.stats();
    assert_eq!(
        stats.requests.create, 0,
        "no invalid request reached the upstream"
    );
}

#[tokio::test]
async fn tenants_are_walls_on_every_rpc() {
    let mut t = spawn_app().await;
    let v = create(&mut t, ACME, veo(&unique("private"))).await;
    t.drive(ACME, &v.id).await;
    let id = v.id.clone();
    let not_found = |r: Result<(), tonic::Status>| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    };
    not_found(
        t.client
            .get_video(req(GLOBEX, pb::GetVideoRequest { id: id.clone() }))
            .await
            .map(|_| ()),
    );
    not_found(
        t.client
            .cancel_video(req(GLOBEX, pb::CancelVideoRequest { id: id.clone() }))
            .await
            .map(|_| ()),
    );
    not_found(
        t.client
            .delete_video(req(GLOBEX, pb::DeleteVideoRequest { id: id.clone() }))
            .await
            .map(|_| ()),
    );
    not_found(
        t.client
            .download_video(req(
                GLOBEX,
                pb::DownloadVideoRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
    );
    not_found(
        t.client
            .watch_video(req(
                GLOBEX,
                pb::WatchVideoRequest {
                    id: id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
    );
    let list = t
        .client
        .list_videos(req(GLOBEX, pb::ListVideosRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(list.videos.iter().all(|v| v.id != id));
    // Still there for its owner.
    assert_eq!(
        t.client
            .get_video(req(ACME, pb::GetVideoRequest { id: id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .id,
        id
    );

    let e = t
        .client
        .get_video(tonic::Request::new(pb::GetVideoRequest { id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(error_reason(&e), "MISSING_CREDENTIALS");
    let e = t
        .client
        .get_video(req("wrong-token", pb::GetVideoRequest { id }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(error_reason(&e), "INVALID_CREDENTIALS");
}

#[tokio::test]
async fn restart_mid_flight_finishes_every_job_without_a_second_upstream_create() {
    let mut t = spawn_app().await;
    let prompt = unique("restart");
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = create(&mut t, ACME, veo(&format!("{prompt} {i}"))).await;
        ids.push(v.id);
    }
    // One step: every job is submitted upstream (has an upstream id), none finished.
    t.app().dispatcher().step().await.unwrap();
    let mut t = t.restart(|_| {}).await;
    let done = t.drive_all(ACME, &ids).await;
    for v in &done {
        assert_eq!(v.status(), pb::VideoStatus::Completed, "{v:?}");
    }
    let stats = t.sim.stats();
    for i in 0..5 {
        assert_eq!(
            stats.creates_by_prompt.get(&format!("{prompt} {i}")),
            Some(&1),
            "job {i} created once"
        );
    }
}

#[tokio::test]
async fn a_job_found_submitting_after_a_crash_fails_as_outcome_unknown_and_is_never_sent_again() {
    let mut t = spawn_app().await;
    let prompt = unique("crash while submitting");
    let v = create(&mut t, ACME, veo(&prompt)).await;
    // Simulate "crashed after writing submitting": mark it so directly in the store.
    let store = t.app().store();
    let job = store.get(&v.id).await.unwrap().unwrap();
    let mut record = vidgate::job::JobRecord::of(&job);
    record.phase = vidgate::job::Phase::Submitting;
    record.next_action_ms = Some(0);
    let job = vidgate::job::Job::try_from(record).unwrap();
    store
        .update(job, vidgate::job::Record::Quiet)
        .await
        .unwrap();
    let mut t = t.restart(|_| {}).await;
    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Failed);
    let err = done.error.unwrap();
    assert_eq!(err.reason, "UPSTREAM_OUTCOME_UNKNOWN");
    assert!(
        err.message.contains("may exist upstream"),
        "{}",
        err.message
    );
    assert_eq!(
        t.sim.stats().creates_by_prompt.get(&prompt),
        None,
        "never sent"
    );
}

#[tokio::test]
async fn cancel_marks_cancelled_stops_polling_and_refuses_a_second_cancel() {
    let mut t = spawn_app().await;
    let prompt = unique("cancel me");
    let v = create(&mut t, ACME, veo(&prompt)).await;
    let c = t
        .client
        .cancel_video(req(ACME, pb::CancelVideoRequest { id: v.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.status(), pb::VideoStatus::Cancelled);
    for _ in 0..3 {
        t.app().dispatcher().step().await.unwrap();
    }
    assert_eq!(
        t.sim.stats().creates_by_prompt.get(&prompt),
        None,
        "a cancelled job is not submitted"
    );
    let e = t
        .client
        .cancel_video(req(ACME, pb::CancelVideoRequest { id: v.id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&e), "VIDEO_ALREADY_FINISHED");
    let e = t
        .client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: v.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&e), "VIDEO_NOT_COMPLETED");
}

#[tokio::test]
async fn list_pages_newest_first_with_filters_and_rejects_bad_page_args() {
    let mut t = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let mut r = veo(&unique("page"));
        r.labels.insert(
            "batch".into(),
            if i % 2 == 0 { "even" } else { "odd" }.into(),
        );
        ids.push(create(&mut t, ACME, r).await.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = t
            .client
            .list_videos(req(
                ACME,
                pb::ListVideosRequest {
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.videos.len() <= 3);
        seen.extend(page.videos.into_iter().map(|v| v.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);

    let even = t
        .client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                labels: BTreeMap::from([("batch".to_owned(), "even".to_owned())]),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(even.videos.len(), 4);
    let queued = t
        .client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                statuses: vec![pb::VideoStatus::Completed as i32],
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(queued.videos.is_empty());

    let e = t
        .client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                page_size: -1,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = t
        .client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn download_resumes_from_an_offset_and_refuses_offsets_past_the_end() {
    let mut t = spawn_app().await;
    let v = create(&mut t, ACME, seedance(&unique("resume"))).await;
    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    let all = download_all(&mut t, ACME, &v.id, 0).await;
    let tail = download_all(&mut t, ACME, &v.id, 1000).await;
    assert!(tail == all[1000..]);
    let e = t
        .client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: v.id.clone(),
                read_offset: all.len() as i64 + 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange);
    // S10: the last frame was asked for and is served as its own variant.
    assert!(done.content.as_ref().unwrap().has_last_frame);
    let mut s = t
        .client
        .download_video(req(
            ACME,
            pb::DownloadVideoRequest {
                id: v.id.clone(),
                variant: pb::ContentVariant::LastFrame as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut png = Vec::new();
    while let Some(c) = s.next().await {
        png.extend_from_slice(&c.unwrap().data);
    }
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_ended_as_lagging_with_its_cursor() {
    // A tiny live buffer makes "falling behind" cheap to provoke.
    let mut t = spawn_app_with(|c| c.storage.event_buffer = 4).await;
    let mut sub = t
        .client
        .subscribe(req(ACME, pb::SubscribeRequest::default()))
        .await
        .unwrap()
        .into_inner();
    // Not reading: create far more event bytes (~16 KiB of labels each) than every buffer on
    // the way (channel, HTTP/2 windows, socket buffers) can hold.
    let labels: BTreeMap<String, String> = (0..60)
        .map(|i| (format!("k{i}"), "v".repeat(250)))
        .collect();
    const FLOOD: usize = 400;
    for _ in 0..FLOOD {
        let mut r = veo(&unique("flood"));
        r.labels = labels.clone();
        create(&mut t, ACME, r).await;
    }
    let mut delivered = Vec::new();
    let read = async {
        loop {
            match sub.next().await {
                Some(Ok(ev)) => delivered.push(ev.sequence),
                Some(Err(status)) => break status,
                None => panic!(
                    "stream ended without an error after {} events",
                    delivered.len()
                ),
            }
        }
    };
    // A deadline only so a regression fails instead of hanging; nothing is timed.
    let status = tokio::time::timeout(DRIVE_DEADLINE, read)
        .await
        .expect("the lagging subscriber was never ended");
    assert_eq!(status.code(), Code::Aborted);
    assert_eq!(error_reason(&status), "SUBSCRIBER_LAGGED");
    let cursor: i64 = status.get_details_error_info().unwrap().metadata["last_sequence"]
        .parse()
        .unwrap();
    assert_eq!(
        Some(&cursor),
        delivered.last(),
        "the cursor is the last event delivered"
    );
    assert!(
        delivered.len() < FLOOD,
        "the server did not buffer everything: {}",
        delivered.len()
    );
}

#[tokio::test]
async fn resuming_by_cursor_after_a_disconnect_misses_nothing_and_repeats_nothing() {
    let mut t = spawn_app().await;
    let mut first = t
        .client
        .subscribe(req(ACME, pb::SubscribeRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&mut t, ACME, veo(&unique("cursor"))).await.id);
    }
    let mut cursor = 0;
    for _ in 0..3 {
        cursor = tokio::time::timeout(DRIVE_DEADLINE, first.next())
            .await
            .expect("the subscription from before the creates sees all three")
            .unwrap()
            .unwrap()
            .sequence;
    }
    drop(first);
    // While disconnected: more events (the jobs progress, a new job arrives).
    ids.push(create(&mut t, ACME, veo(&unique("cursor"))).await.id);
    t.drive_all(ACME, &ids).await;
    let expected: Vec<i64> = t
        .app()
        .store()
        .events_after(&vidgate::store::EventQuery {
            after_sequence: cursor,
            tenant: Some("acme".into()),
            job_id: None,
            limit: 10_000,
        })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.sequence)
        .collect();
    assert!(!expected.is_empty());
    let mut resumed = t
        .client
        .subscribe(req(
            ACME,
            pb::SubscribeRequest {
                after_sequence: cursor,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let next = tokio::time::timeout(DRIVE_DEADLINE, resumed.next())
            .await
            .unwrap_or_else(|_| {
                panic!("resumed stream stalled after {got:?}; expected {expected:?}")
            });
        got.push(next.unwrap().unwrap().sequence);
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn upstream_faults_end_in_correct_results() {
    let mut t = spawn_app().await;
    let rules = [
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::Http {
                status: 429,
                retry_after_s: None,
            },
        )
        .prompt_contains("f429")
        .times(2),
        FaultRule::new(
            FaultEndpoint::Get,
            Fault::Http {
                status: 503,
                retry_after_s: None,
            },
        )
        .prompt_contains("f503")
        .times(2),
        FaultRule::new(
            FaultEndpoint::Content,
            Fault::TruncateContent { after_bytes: 500 },
        )
        .prompt_contains("ftrunc")
        .times(1),
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::StatusSpelling {
                processing: "rendering".into(),
                completed: "succeeded".into(),
            },
        )
        .prompt_contains("fspell"),
        FaultRule::new(FaultEndpoint::Create, Fault::CompletedWithoutContent)
            .prompt_contains("fnocontent"),
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::FailTask {
                code: "content_policy_violation".into(),
                message: "refused by policy".into(),
            },
        )
        .prompt_contains("ffail"),
        FaultRule::new(FaultEndpoint::Create, Fault::Reset).prompt_contains("freset"),
    ];
    t.sim.set_faults(rules.to_vec());
    let mut cases = Vec::new();
    for tag in [
        "f429",
        "f503",
        "ftrunc",
        "fspell",
        "fnocontent",
        "ffail",
        "freset",
    ] {
        let prompt = unique(tag);
        let v = create(&mut t, ACME, veo(&prompt)).await;
        cases.push((tag, prompt, v.id));
    }
    for (tag, prompt, id) in cases {
        let v = t.drive(ACME, &id).await;
        let creates = t
            .sim
            .stats()
            .creates_by_prompt
            .get(&prompt)
            .copied()
            .unwrap_or(0);
        match tag {
            "f429" | "f503" | "ftrunc" | "fspell" => {
                assert_eq!(v.status(), pb::VideoStatus::Completed, "{tag}: {v:?}");
                assert_eq!(creates, 1, "{tag}");
                if tag == "fspell" {
                    assert_eq!(v.upstream_status, "succeeded");
                }
            }
            "fnocontent" => {
                assert_eq!(v.status(), pb::VideoStatus::Failed);
                assert_eq!(v.error.unwrap().reason, "CONTENT_MISSING");
            }
            "ffail" => {
                let e = v.error.unwrap();
                assert_eq!(e.reason, "UPSTREAM_FAILED");
                assert!(e.upstream_message.contains("refused by policy"), "{e:?}");
            }
            "freset" => {
                assert_eq!(v.status(), pb::VideoStatus::Failed);
                assert_eq!(v.error.unwrap().reason, "UPSTREAM_OUTCOME_UNKNOWN");
                assert_eq!(
                    creates, 1,
                    "the reset create was taken upstream and never sent again"
                );
            }
            _ => unreachable!(),
        }
    }
}

async fn retry(
    t: &mut TestApp,
    token: &str,
    id: &str,
    accept_possible_duplicate_charge: bool,
) -> Result<pb::Video, tonic::Status> {
    t.client
        .retry_video(req(
            token,
            pb::RetryVideoRequest {
                id: id.into(),
                accept_possible_duplicate_charge,
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// Statuses of one job's events after `after_sequence`, up to the first terminal one.
async fn watched_statuses(
    t: &mut TestApp,
    id: &str,
    after_sequence: i64,
) -> Vec<(pb::VideoStatus, usize)> {
    let mut watch = t
        .client
        .watch_video(req(
            ACME,
            pb::WatchVideoRequest {
                id: id.into(),
                after_sequence,
                include_content: false,
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    let read = async {
        while let Some(ev) = watch.next().await {
            let ev = ev.expect("event");
            assert_eq!(ev.video_id, id);
            if let Some(pb::video_event::Kind::Video(v)) = ev.kind {
                out.push((v.status(), v.previous_attempts.len()));
            }
        }
    };
    tokio::time::timeout(DRIVE_DEADLINE, read)
        .await
        .expect("the watch ends after its terminal event");
    out
}

fn creates_of(t: &TestApp, prompt: &str) -> u32 {
    t.sim
        .stats()
        .creates_by_prompt
        .get(prompt)
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn retry_after_an_unknown_outcome_needs_consent_then_sends_once_more_on_the_same_id() {
    let mut t = spawn_app().await;
    let prompt = unique("retry after reset");
    // The first create is taken upstream, then the connection is reset: outcome unknown.
    t.sim.set_faults(vec![
        FaultRule::new(FaultEndpoint::Create, Fault::Reset)
            .prompt_contains(prompt.clone())
            .times(1),
    ]);
    let v = create(&mut t, ACME, veo(&prompt)).await;
    let failed = t.drive(ACME, &v.id).await;
    assert_eq!(failed.status(), pb::VideoStatus::Failed, "{failed:?}");
    assert_eq!(
        failed.error.as_ref().map(|e| e.reason.as_str()),
        Some("UPSTREAM_OUTCOME_UNKNOWN")
    );
    assert!(failed.upstream_id.is_empty(), "the reset create got no id");
    let creates_before = creates_of(&t, &prompt);

    let e = retry(&mut t, ACME, &v.id, false).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(error_reason(&e), "DUPLICATE_CHARGE_NOT_ACCEPTED");
    for needle in [
        "accept_possible_duplicate_charge",
        "UPSTREAM_OUTCOME_UNKNOWN",
    ] {
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    }
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "vidgate");
    assert_eq!(info.metadata["video_reason"], "UPSTREAM_OUTCOME_UNKNOWN");
    t.app().dispatcher().step().await.unwrap();
    assert_eq!(creates_of(&t, &prompt), creates_before, "refused: not sent");

    let queued = retry(&mut t, ACME, &v.id, true).await.expect("retry");
    assert_eq!(queued.id, v.id);
    assert_eq!(queued.status(), pb::VideoStatus::Queued);
    assert_eq!((queued.error, queued.complete_time), (None, None));
    assert_eq!(
        queued.create_time, v.create_time,
        "the same job, not a new one"
    );
    assert!(
        queued.last_sequence > failed.last_sequence,
        "one event appended"
    );
    let [earlier] = queued.previous_attempts.as_slice() else {
        panic!("one earlier attempt: {:?}", queued.previous_attempts)
    };
    assert_eq!(earlier.upstream_id, "");
    assert_eq!(
        earlier.error.as_ref().map(|e| e.reason.as_str()),
        Some("UPSTREAM_OUTCOME_UNKNOWN")
    );
    assert_eq!(earlier.complete_time, failed.complete_time);

    // Queued again, it is no longer a failed job: a second retry is refused, not applied twice.
    let again = retry(&mut t, ACME, &v.id, true).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert_eq!(error_reason(&again), "VIDEO_NOT_RETRYABLE");

    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    assert!(!done.upstream_id.is_empty());
    assert_eq!(done.previous_attempts.len(), 1);
    assert_eq!(
        creates_of(&t, &prompt),
        creates_before + 1,
        "exactly one more create"
    );
    assert_eq!(download_all(&mut t, ACME, &v.id, 0).await.len() as u64, {
        done.content.as_ref().map_or(0, |c| c.size_bytes)
    });

    // The event log of the one id: ... FAILED, then QUEUED (the retry) ... COMPLETED.
    let first = watched_statuses(&mut t, &v.id, v.last_sequence).await;
    assert_eq!(
        first.last(),
        Some(&(pb::VideoStatus::Failed, 0)),
        "{first:?}"
    );
    let second = watched_statuses(&mut t, &v.id, failed.last_sequence).await;
    assert_eq!(
        second.first(),
        Some(&(pb::VideoStatus::Queued, 1)),
        "{second:?}"
    );
    assert_eq!(
        second.last(),
        Some(&(pb::VideoStatus::Completed, 1)),
        "{second:?}"
    );
}

#[tokio::test]
async fn retry_of_an_upstream_failure_keeps_the_earlier_upstream_id_and_submits_a_new_task() {
    let mut t = spawn_app().await;
    let prompt = unique("retry after upstream failure");
    t.sim.set_faults(vec![
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::FailTask {
                code: "internal_error".into(),
                message: "generation crashed".into(),
            },
        )
        .prompt_contains(prompt.clone())
        .times(1),
    ]);
    let v = create(&mut t, ACME, veo(&prompt)).await;
    let failed = t.drive(ACME, &v.id).await;
    let error = failed.error.clone().expect("error");
    assert_eq!(
        (error.reason.as_str(), error.retryable),
        ("UPSTREAM_FAILED", true)
    );
    assert!(!failed.upstream_id.is_empty());

    let queued = retry(&mut t, ACME, &v.id, true).await.expect("retry");
    assert_eq!(
        queued.upstream_id, "",
        "cleared, or the old task would be polled"
    );
    assert_eq!(queued.upstream_status, "");
    let done = t.drive(ACME, &v.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed, "{done:?}");
    assert_ne!(done.upstream_id, failed.upstream_id, "a new upstream task");
    let [earlier] = done.previous_attempts.as_slice() else {
        panic!("one earlier attempt: {:?}", done.previous_attempts)
    };
    assert_eq!(earlier.upstream_id, failed.upstream_id);
    assert_eq!(earlier.error.as_ref(), Some(&error));
    assert_eq!(creates_of(&t, &prompt), 2);
}

#[tokio::test]
async fn retry_is_refused_for_completed_cancelled_unretryable_too_old_and_foreign_videos() {
    let mut t = spawn_app().await;
    let no_content = unique("retry refused no content");
    let reset = unique("retry refused reset");
    t.sim.set_faults(vec![
        FaultRule::new(FaultEndpoint::Create, Fault::CompletedWithoutContent)
            .prompt_contains(no_content.clone()),
        FaultRule::new(FaultEndpoint::Create, Fault::Reset).prompt_contains(reset.clone()),
    ]);
    let completed = create(&mut t, ACME, veo(&unique("retry refused done"))).await;
    let completed = t.drive(ACME, &completed.id).await;
    assert_eq!(completed.status(), pb::VideoStatus::Completed);
    let cancelled = create(&mut t, ACME, veo(&unique("retry refused cancel"))).await;
    t.client
        .cancel_video(req(
            ACME,
            pb::CancelVideoRequest {
                id: cancelled.id.clone(),
            },
        ))
        .await
        .expect("cancel");
    let missing = create(&mut t, ACME, veo(&no_content)).await;
    let missing = t.drive(ACME, &missing.id).await;
    assert_eq!(
        missing
            .error
            .as_ref()
            .map(|e| (e.reason.as_str(), e.retryable)),
        Some(("CONTENT_MISSING", false))
    );
    let unknown = create(&mut t, ACME, veo(&reset)).await;
    let unknown = t.drive(ACME, &unknown.id).await;
    assert_eq!(
        unknown.error.as_ref().map(|e| e.reason.as_str()),
        Some("UPSTREAM_OUTCOME_UNKNOWN")
    );

    for (id, names) in [
        (&completed.id, "completed"),
        (&cancelled.id, "cancelled"),
        (&missing.id, "CONTENT_MISSING"),
    ] {
        // With the flag or without: the state decides first.
        for accept in [true, false] {
            let e = retry(&mut t, ACME, id, accept).await.unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{names}: {e:?}");
            assert_eq!(error_reason(&e), "VIDEO_NOT_RETRYABLE", "{names}");
            for needle in [names, "accept_possible_duplicate_charge"] {
                assert!(e.message().contains(needle), "{needle}: {}", e.message());
            }
        }
    }

    // Another tenant's retryable video, with consent, and an unknown id: NOT_FOUND.
    for (token, id) in [(GLOBEX, unknown.id.as_str()), (ACME, "vid_missing")] {
        let e = retry(&mut t, token, id, true).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert_eq!(error_reason(&e), "VIDEO_NOT_FOUND");
    }

    // Past the maximum age the dispatcher would fail it again at once: refused, saying so.
    let mut t = t.restart(|c| c.dispatcher.max_age_ms = 1).await;
    let e = retry(&mut t, ACME, &unknown.id, true).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(error_reason(&e), "VIDEO_NOT_RETRYABLE");
    assert!(e.message().contains("JOB_MAX_AGE"), "{}", e.message());

    let unchanged = t
        .client
        .get_video(req(
            ACME,
            pb::GetVideoRequest {
                id: unknown.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, unknown, "every refusal left the video as it was");
    assert_eq!(creates_of(&t, &no_content), 1);
    assert_eq!(creates_of(&t, &reset), 1);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_two_authorization_values_are_refused() {
    let mut t = spawn_app().await;
    for scheme in ["BEARER", "bearer", "Bearer"] {
        let mut request = tonic::Request::new(pb::ListVideosRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("{scheme} {ACME}").parse().expect("ascii"),
        );
        t.client
            .list_videos(request)
            .await
            .unwrap_or_else(|e| panic!("{scheme}: {e:?}"));
    }
    let mut request = tonic::Request::new(pb::ListVideosRequest::default());
    request.metadata_mut().append(
        "authorization",
        format!("Bearer {ACME}").parse().expect("ascii"),
    );
    request.metadata_mut().append(
        "authorization",
        format!("Bearer {GLOBEX}").parse().expect("ascii"),
    );
    let refused = t
        .client
        .list_videos(request)
        .await
        .expect_err("two authorization values");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(
        error_reason(&refused),
        "AMBIGUOUS_CREDENTIALS",
        "{refused:?}"
    );
    assert!(
        !refused.message().contains(ACME) && !refused.message().contains(GLOBEX),
        "tokens are not echoed: {refused:?}"
    );
}

#[tokio::test]
async fn list_label_filters_follow_the_label_rules_and_long_keys_are_not_echoed_whole() {
    let mut t = spawn_app().await;
    let many: BTreeMap<String, String> = (0..1_000)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let refused = t
        .client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                labels: many,
                ..Default::default()
            },
        ))
        .await
        .expect_err("1 000 label filters");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("labels"), "{refused:?}");
    assert!(refused.message().contains("at most 64"), "{refused:?}");

    let long_key = "k".repeat(1_000_000);
    let refused = t
        .client
        .list_videos(req(
            ACME,
            pb::ListVideosRequest {
                labels: BTreeMap::from([(long_key.clone(), "v".to_owned())]),
                ..Default::default()
            },
        ))
        .await
        .expect_err("a key longer than allowed");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().len() < 1_000,
        "the key is not echoed whole ({} bytes)",
        refused.message().len()
    );
    let mut create = veo(&unique("long label"));
    create.labels.insert(long_key, "v".into());
    let refused = t
        .client
        .create_video(req(ACME, create))
        .await
        .expect_err("a key longer than allowed");
    let violations = refused.get_error_details();
    let field = violations
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default();
    assert!(
        field.starts_with("labels[") && field.len() < 100,
        "the field path names the key, elided: {} bytes",
        field.len()
    );
}

#[tokio::test]
async fn a_subscriber_past_its_byte_budget_is_ended_as_lagging_however_few_its_events() {
    // A broadcast ring far larger than the flood: only the byte budget can end this stream.
    let mut t = spawn_app_with(|c| {
        c.storage.event_buffer = 100_000;
        c.events.stream_budget_bytes = 64 * 1024;
    })
    .await;
    // A client whose HTTP/2 window is small (64 KiB), so what it does not read stays on the
    // server (hyper's client default, 2 MB per stream, would hold the whole flood itself).
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", t.app().grpc_addr()))
            .unwrap()
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535))
            .connect()
            .await
            .unwrap();
    let mut sub = pb::video_service_client::VideoServiceClient::new(channel)
        .subscribe(req(ACME, pb::SubscribeRequest::default()))
        .await
        .unwrap()
        .into_inner();
    // Fat jobs: a 16,000-character prompt and 64 labels of 256 characters, ~37 KB per event.
    let labels: BTreeMap<String, String> = (0..64)
        .map(|i| (format!("k{i}"), "v".repeat(256)))
        .collect();
    const FAT: usize = 40;
    for n in 0..FAT {
        let mut r = veo(&format!("{n} {}", "p".repeat(15_990)));
        r.labels = labels.clone();
        create(&mut t, ACME, r).await;
    }
    let mut delivered = Vec::new();
    let read = async {
        loop {
            match sub.next().await {
                Some(Ok(ev)) => delivered.push(ev.sequence),
                Some(Err(status)) => break status,
                None => panic!("stream ended without an error after {}", delivered.len()),
            }
        }
    };
    let status = tokio::time::timeout(DRIVE_DEADLINE, read)
        .await
        .expect("the subscriber past its budget was never ended");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert_eq!(error_reason(&status), "SUBSCRIBER_LAGGED");
    let cursor: i64 = status.get_details_error_info().unwrap().metadata["last_sequence"]
        .parse()
        .unwrap();
    assert_eq!(Some(&cursor), delivered.last());
    // The budget (64 KiB) and the HTTP/2 window on the way hold a handful of these, not 40.
    assert!(
        delivered.len() < FAT / 2,
        "{} of {FAT} fat events were held for a client that did not read",
        delivered.len()
    );
}
