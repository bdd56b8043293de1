//! vidgate's upstream client against the upstream simulator over real HTTP: every endpoint
//! (create as JSON and multipart, status, content with resume, last frame) and every fault kind
//! the simulator can inject, with the classification a caller decides retries on.

use std::io::{Cursor, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;
use vidgate::domain::{ModelCatalog, Params, SeedanceParams, VeoParams, VideoRequest, VideoSpec};
use vidgate::media::probe_mp4;
use vidgate::upstream::request::create_body;
use vidgate::upstream::sim::mp4gen::GeneratedMp4;
use vidgate::upstream::sim::{Fault, FaultEndpoint, FaultRule, SimConfig, SimHandle};
use vidgate::upstream::wire::CreateBody;
use vidgate::upstream::{
    ApiKey, ContentStart, CreateFailure, Endpoint, UpstreamClient, UpstreamConfig, UpstreamError,
    UpstreamState,
};

use crate::support::upstream::{
    WAIT_LIMIT, client, client_config, client_config_for, client_from, drain, fast_sim_config,
    png_dimensions, png_image, poll_until_terminal, start_sim,
};
use crate::support::{SEEDANCE, VEO};

fn spec(model: &str, prompt: &str, params: Params) -> VideoSpec {
    let request = VideoRequest {
        model: model.into(),
        prompt: prompt.into(),
        params: Some(params),
    };
    VideoSpec::parse(request, &ModelCatalog::default()).expect("a valid request")
}

/// A Veo text to video body as vidgate builds it (JSON, V1 `seconds` as a string).
fn veo_body(prompt: &str, seconds: u32, size: &str) -> CreateBody {
    create_body(&spec(
        VEO,
        prompt,
        Params::Veo(VeoParams {
            seconds,
            size: size.into(),
            ..VeoParams::default()
        }),
    ))
}

fn http_fault(status: u16, retry_after_s: Option<u64>) -> Fault {
    Fault::Http {
        status,
        retry_after_s,
    }
}

/// Creates a task from a valid Veo body and returns its id.
async fn created(client: &UpstreamClient, prompt: &str) -> String {
    client
        .create(&veo_body(prompt, 4, "1280x720"))
        .await
        .expect("create accepted")
        .id
}

/// Waits until the simulator has counted `n` accepted creates (a create whose client gave up
/// may still be in the simulator's hands for a moment).
async fn wait_for_accepted_creates(sim: &SimHandle, n: u64) {
    let deadline = Instant::now() + WAIT_LIMIT;
    while sim.stats().creates_accepted < n {
        assert!(
            Instant::now() < deadline,
            "the simulator never counted {n} accepted creates: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- the happy paths -------------------------------------------------------------------------

#[tokio::test]
async fn text_to_video_json_create_poll_and_download_yields_the_requested_mp4() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    let prompt = "a cat playing piano, portrait";
    let spec = spec(
        VEO,
        prompt,
        Params::Veo(VeoParams {
            seconds: 4,
            size: "720x1280".into(),
            ..VeoParams::default()
        }),
    );
    let body = create_body(&spec);
    assert!(matches!(body, CreateBody::Json(_)), "{body:?}");

    let task = client.create(&body).await.expect("create accepted");
    assert!(task.id.starts_with("video-"), "{task:?}");
    // U1: the create answer says `in_progress`, which is processing.
    assert_eq!(task.status.raw, "in_progress");
    assert_eq!(task.status.state, UpstreamState::Processing);
    assert!(task.status.recognised);
    assert_eq!(task.model.as_deref(), Some(VEO));

    let seen = poll_until_terminal(&client, &task.id).await;
    let last = seen.last().expect("at least one status");
    assert_eq!(last.status.state, UpstreamState::Completed, "{last:?}");
    assert_eq!(last.status.raw, "completed");
    assert_eq!(last.id.as_deref(), Some(task.id.as_str()));
    assert_eq!(last.model.as_deref(), Some(VEO));
    assert_eq!(last.size.as_deref(), Some("720x1280"));
    assert_eq!(last.seconds.as_deref(), Some("4"));
    assert_eq!(last.progress, Some(100));
    assert!(
        last.created_at.is_some() && last.completed_at.is_some(),
        "{last:?}"
    );
    assert_eq!(last.error, None);
    let order = |s: UpstreamState| match s {
        UpstreamState::Queued => 0,
        UpstreamState::Processing => 1,
        _ => 2,
    };
    for pair in seen.windows(2) {
        assert!(
            order(pair[0].status.state) <= order(pair[1].status.state),
            "states went backwards: {:?} then {:?}",
            pair[0].status,
            pair[1].status
        );
        let (a, b) = (pair[0].progress, pair[1].progress);
        assert!(
            a.is_some() && b.is_some() && a <= b,
            "progress {a:?} then {b:?}"
        );
    }
    for video in &seen {
        assert!(video.status.recognised, "{:?}", video.status);
    }

    let stream = client.content(&task.id, 0).await.expect("content");
    assert_eq!(stream.start, ContentStart::Full);
    assert_eq!(stream.content_type.as_deref(), Some("video/mp4"));
    let total_len = stream.total_len.expect("Content-Length");
    let (bytes, err) = drain(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(bytes.len() as u64, total_len);
    let expected = GeneratedMp4::generate(&sim.mp4_params(&task.id).expect("task params"))
        .expect("regenerate")
        .to_vec();
    assert!(
        bytes == expected,
        "the body differs from the simulator's video"
    );
    let facts = probe_mp4(&mut Cursor::new(&bytes)).expect("an MP4");
    assert_eq!((facts.width, facts.height), (720, 1280));
    assert!((facts.duration_seconds - 4.0).abs() < 0.5, "{facts:?}");
    assert_eq!(
        spec.expected_output()
            .compare(facts.width, facts.height, facts.duration_seconds),
        None
    );

    let stats = sim.stats();
    assert_eq!(stats.creates_by_prompt.get(prompt), Some(&1), "{stats:?}");
    assert_eq!(stats.creates_accepted, 1);
    assert_eq!(stats.requests.create, 1);
    assert_eq!(client.limiter().in_flight(), 0);
}

#[tokio::test]
async fn veo_image_to_video_is_sent_as_multipart_with_name_and_type_v3() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    let prompt = "the facade in the picture, filmed from a drone";
    let image = png_image(8, 8);
    let body = create_body(&spec(
        VEO,
        prompt,
        Params::Veo(VeoParams {
            seconds: 6,
            size: "720x1280".into(),
            input_reference: Some(vidgate::domain::InputImage {
                data: image.clone(),
                filename: "facade.png".into(),
                mime_type: "image/png".into(),
            }),
            person_generation: "allow_all".into(),
        }),
    ));
    let CreateBody::Multipart { file, .. } = &body else {
        panic!("image to video must be multipart: {body:?}");
    };
    assert_eq!(
        (
            file.field.as_str(),
            file.filename.as_str(),
            file.mime_type.as_str()
        ),
        ("input_reference", "facade.png", "image/png")
    );
    assert_eq!(file.data, image);

    let task = client
        .create(&body)
        .await
        .expect("multipart create accepted");
    let stats = sim.stats();
    assert_eq!(stats.creates_accepted, 1, "{stats:?}");
    assert_eq!(stats.creates_by_prompt.get(prompt), Some(&1));
    assert_eq!(stats.tasks[&task.id].model, VEO);
    // The simulator read the text fields of the form too.
    let video = client.get(&task.id).await.expect("status");
    assert_eq!(video.size.as_deref(), Some("720x1280"));
    assert_eq!(video.seconds.as_deref(), Some("6"));
}

#[tokio::test]
async fn seedance_last_frame_is_offered_and_downloads_as_png_s10() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    let seedance = |prompt: &str, last_frame: Option<bool>| {
        create_body(&spec(
            SEEDANCE,
            prompt,
            Params::Seedance(SeedanceParams {
                resolution: "480p".into(),
                ratio: "1:1".into(),
                duration: Some(4),
                return_last_frame: last_frame,
                ..SeedanceParams::default()
            }),
        ))
    };
    let asked = client
        .create(&seedance("a chained shot", Some(true)))
        .await
        .expect("create");
    let not_asked = client
        .create(&seedance("a single shot", None))
        .await
        .expect("create");

    let done = poll_until_terminal(&client, &asked.id)
        .await
        .pop()
        .expect("status");
    assert_eq!(done.status.state, UpstreamState::Completed);
    assert_eq!(done.size.as_deref(), Some("640x640"));
    let url = done
        .last_frame_url
        .expect("S10: a last_frame_url once completed");
    assert!(done.video_url.is_some());
    let stream = client
        .last_frame(&url, vidgate::dispatcher::MAX_LAST_FRAME_BYTES)
        .await
        .expect("last frame");
    assert_eq!(stream.content_type.as_deref(), Some("image/png"));
    assert_eq!(stream.start, ContentStart::Full);
    let (png, err) = drain(stream).await;
    assert!(err.is_none(), "{err:?}");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(png_dimensions(&png), (640, 640));
    assert_eq!(sim.stats().tasks[&asked.id].last_frame_requests, 1);

    let done = poll_until_terminal(&client, &not_asked.id)
        .await
        .pop()
        .expect("status");
    assert_eq!(done.status.state, UpstreamState::Completed);
    assert_eq!(done.last_frame_url, None, "no last frame was asked for");
}

#[tokio::test]
async fn content_resumes_from_an_offset_and_restarts_when_range_is_ignored() {
    let sim = start_sim(SimConfig {
        // Several 64 KiB chunks, so the cut falls inside the stream.
        content_min_size: 300_000,
        ..fast_sim_config()
    })
    .await;
    let client = client(&sim);
    let id = created(&client, "a long take").await;
    poll_until_terminal(&client, &id).await;
    let (full, err) = drain(client.content(&id, 0).await.expect("content")).await;
    assert!(err.is_none(), "{err:?}");
    assert!(full.len() >= 300_000, "{}", full.len());

    // Read the first N bytes, then drop the stream mid-body.
    const N: usize = 100_000;
    let mut first = client.content(&id, 0).await.expect("content");
    let mut head = Vec::new();
    while head.len() < N {
        let chunk = first
            .body
            .next()
            .await
            .expect("more bytes")
            .expect("no error");
        head.extend_from_slice(&chunk);
    }
    head.truncate(N);
    drop(first);
    assert_eq!(
        client.limiter().in_flight(),
        0,
        "a dropped stream frees its slot"
    );

    let rest = client.content(&id, N as u64).await.expect("ranged content");
    assert_eq!(rest.start, ContentStart::Resumed(N as u64));
    assert_eq!(rest.total_len, Some(full.len() as u64));
    let (tail, err) = drain(rest).await;
    assert!(err.is_none(), "{err:?}");
    head.extend_from_slice(&tail);
    assert!(head == full, "head + resumed tail must equal the full body");

    // A server that ignores Range answers the whole file: the caller must start over.
    sim.push_fault(FaultRule::new(FaultEndpoint::Content, Fault::IgnoreRange).times(1));
    let again = client.content(&id, N as u64).await.expect("content");
    assert_eq!(again.start, ContentStart::Full);
    assert_eq!(again.total_len, Some(full.len() as u64));
    let (whole, err) = drain(again).await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        whole == full,
        "an ignored Range must deliver the whole body from byte 0"
    );

    // Asking from the very end is refused, not answered with an empty body.
    let err = client
        .content(&id, full.len() as u64)
        .await
        .expect_err("a range past the end");
    assert!(
        matches!(
            err,
            UpstreamError::RangeNotSatisfiable {
                endpoint: Endpoint::Content
            }
        ),
        "{err:?}"
    );
}

// ---- rate limits -----------------------------------------------------------------------------

#[tokio::test]
async fn rate_limited_create_with_retry_after_is_not_taken_and_pauses_every_caller() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    sim.push_fault(FaultRule::new(FaultEndpoint::Create, http_fault(429, Some(30))).times(1));

    let err = client
        .create(&veo_body("slow down", 4, "1280x720"))
        .await
        .expect_err("429");
    let before = Instant::now();
    assert!(
        matches!(
            &err,
            UpstreamError::RateLimited { endpoint: Endpoint::Create, retry_after: Some(d), .. }
                if *d == Duration::from_secs(30)
        ),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(err.create_failure(), CreateFailure::NotTakenRetryable);
    assert!(err.is_retryable());
    assert_eq!(err.http_status(), Some(429));
    let until = client.limiter().paused_until().expect("the limiter pauses");
    assert!(
        until > before + Duration::from_secs(20) && until <= before + Duration::from_secs(30),
        "paused for Retry-After, not the 50 ms default: {:?}",
        until - before
    );
    let stats = sim.stats();
    assert_eq!(stats.creates_accepted, 0);
    assert_eq!(stats.creates_rejected.get(&429), Some(&1));

    // Every call through this client now waits; none reaches the upstream meanwhile.
    let held = tokio::time::timeout(Duration::from_millis(200), client.get("video-any")).await;
    assert!(held.is_err(), "a call went out during the pause: {held:?}");
    assert_eq!(sim.stats().requests.get, 0);
}

#[tokio::test]
async fn rate_limited_create_without_retry_after_pauses_for_the_configured_default() {
    let sim = start_sim(fast_sim_config()).await;
    let mut config = client_config(&sim);
    config.limits.rate_limited_pause_ms = 60_000;
    let client = client_from(config);
    sim.push_fault(FaultRule::new(FaultEndpoint::Create, http_fault(429, None)).times(1));

    let err = client
        .create(&veo_body("slow down", 4, "1280x720"))
        .await
        .expect_err("429");
    let before = Instant::now();
    assert!(
        matches!(
            &err,
            UpstreamError::RateLimited {
                endpoint: Endpoint::Create,
                retry_after: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.create_failure(), CreateFailure::NotTakenRetryable);
    let until = client.limiter().paused_until().expect("the limiter pauses");
    assert!(
        until > before + Duration::from_secs(50) && until <= before + Duration::from_secs(60),
        "paused for the configured 60 s: {:?}",
        until - before
    );
    assert_eq!(sim.stats().creates_accepted, 0);
}

// ---- server errors, resets, refusals, timeouts -----------------------------------------------

#[tokio::test]
async fn server_errors_are_retryable_reads_and_unknown_outcome_creates() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    let id = created(&client, "five hundred").await;
    for status in [500u16, 502, 503] {
        sim.push_fault(FaultRule::new(FaultEndpoint::Get, http_fault(status, None)).times(1));
        let err = client.get(&id).await.expect_err("5xx on get");
        assert!(
            matches!(&err, UpstreamError::Server { endpoint: Endpoint::Get, status: s, .. } if *s == status),
            "{err:?}"
        );
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.upstream_message()
                .is_some_and(|m| m.contains("temporarily unavailable")),
            "the upstream's words are kept: {err}"
        );
        client.get(&id).await.expect("the next poll succeeds");

        sim.push_fault(FaultRule::new(FaultEndpoint::Create, http_fault(status, None)).times(1));
        let err = client
            .create(&veo_body("five hundred", 4, "1280x720"))
            .await
            .expect_err("5xx on create");
        assert!(
            matches!(&err, UpstreamError::Server { endpoint: Endpoint::Create, status: s, .. } if *s == status),
            "{err:?}"
        );
        assert_eq!(err.create_failure(), CreateFailure::OutcomeUnknown, "{err}");
    }
    let stats = sim.stats();
    assert_eq!(stats.creates_accepted, 1);
    for status in [500u16, 502, 503] {
        assert_eq!(stats.creates_rejected.get(&status), Some(&1), "{stats:?}");
    }
}

#[tokio::test]
async fn reset_on_create_is_outcome_unknown_and_the_task_exists_upstream() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    let prompt = "a reset after the upstream took it";
    sim.push_fault(
        FaultRule::new(FaultEndpoint::Create, Fault::Reset)
            .prompt_contains("reset after")
            .times(1),
    );

    let err = client
        .create(&veo_body(prompt, 4, "1280x720"))
        .await
        .expect_err("the connection is reset");
    assert!(
        matches!(
            err,
            UpstreamError::Transport {
                endpoint: Endpoint::Create,
                ..
            } | UpstreamError::Timeout {
                endpoint: Endpoint::Create,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.create_failure(), CreateFailure::OutcomeUnknown);

    // This is why it must not be sent again blindly: the generation was started (and paid).
    let stats = sim.stats();
    assert_eq!(stats.requests.create, 1, "the client sent it exactly once");
    assert_eq!(stats.creates_accepted, 1);
    assert_eq!(stats.creates_by_prompt.get(prompt), Some(&1));
    let (id, task) = stats.tasks.iter().next().expect("the task exists");
    assert_eq!(task.prompt, prompt);
    let video = client.get(id).await.expect("the task is real");
    assert_eq!(video.id.as_deref(), Some(id.as_str()));

    // A reset on a read is a retryable transport failure.
    sim.push_fault(FaultRule::new(FaultEndpoint::Get, Fault::Reset).times(1));
    let err = client.get(id).await.expect_err("reset");
    assert!(
        matches!(
            err,
            UpstreamError::Transport {
                endpoint: Endpoint::Get,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    client.get(id).await.expect("the next poll succeeds");
}

#[tokio::test]
async fn refused_connection_is_connect_and_safe_to_send_again() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let client = client_from(client_config_for(
        &format!("http://127.0.0.1:{port}/api/v1"),
        ApiKey::new("sk-nobody-listens").expect("key"),
    ));

    let err = client
        .create(&veo_body("nobody listens", 4, "1280x720"))
        .await
        .expect_err("connection refused");
    assert!(
        matches!(
            err,
            UpstreamError::Connect {
                endpoint: Endpoint::Create,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.create_failure(), CreateFailure::NotTakenRetryable);
    let err = client.get("video-1").await.expect_err("connection refused");
    assert!(
        matches!(
            err,
            UpstreamError::Connect {
                endpoint: Endpoint::Get,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn create_slower_than_the_request_timeout_is_timeout_and_outcome_unknown() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client_from(UpstreamConfig {
        request_timeout: Duration::from_millis(300),
        ..client_config(&sim)
    });
    let prompt = "a slow gateway";
    sim.push_fault(
        FaultRule::new(FaultEndpoint::Create, Fault::Delay { ms: 5_000 })
            .prompt_contains("slow gateway")
            .times(1),
    );

    let err = client
        .create(&veo_body(prompt, 4, "1280x720"))
        .await
        .expect_err("timeout");
    assert!(
        matches!(
            err,
            UpstreamError::Timeout {
                endpoint: Endpoint::Create,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.create_failure(), CreateFailure::OutcomeUnknown);

    // The simulator started the generation before it stalled: exactly the case a retry pays twice.
    wait_for_accepted_creates(&sim, 1).await;
    let stats = sim.stats();
    assert_eq!(stats.requests.create, 1);
    assert_eq!(stats.creates_by_prompt.get(prompt), Some(&1));
}

#[tokio::test]
async fn truncated_content_ends_the_stream_with_a_transport_error() {
    let sim = start_sim(SimConfig {
        content_min_size: 200_000,
        ..fast_sim_config()
    })
    .await;
    let client = client(&sim);
    let id = created(&client, "a cut download").await;
    poll_until_terminal(&client, &id).await;
    sim.push_fault(
        FaultRule::new(
            FaultEndpoint::Content,
            Fault::TruncateContent { after_bytes: 1_000 },
        )
        .times(1),
    );

    let stream = client.content(&id, 0).await.expect("the answer starts");
    let announced = stream
        .total_len
        .expect("Content-Length announces the full body");
    let (bytes, err) = drain(stream).await;
    let err = err.expect("the stream must end with an error, not quietly");
    assert!(
        matches!(
            err,
            UpstreamError::Transport {
                endpoint: Endpoint::Content,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(bytes.len() <= 1_000, "{} bytes", bytes.len());
    assert!((bytes.len() as u64) < announced);

    let (bytes, err) = drain(client.content(&id, 0).await.expect("content")).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(bytes.len() as u64, announced);
}

#[tokio::test]
async fn completed_without_content_is_completed_then_not_found() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    sim.push_fault(
        FaultRule::new(FaultEndpoint::Create, Fault::CompletedWithoutContent)
            .prompt_contains("filtered")
            .times(1),
    );
    let id = created(&client, "a filtered scene").await;
    let done = poll_until_terminal(&client, &id)
        .await
        .pop()
        .expect("status");
    assert_eq!(done.status.state, UpstreamState::Completed);

    let err = client.content(&id, 0).await.expect_err("no content");
    assert!(
        matches!(
            err,
            UpstreamError::NotFound {
                endpoint: Endpoint::Content,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        !err.is_retryable(),
        "a refusal after the fact is not retried"
    );
    assert!(
        err.upstream_message()
            .is_some_and(|m| m.contains("safety filter")),
        "the reason is kept: {err}"
    );
}

#[tokio::test]
async fn status_spellings_are_normalised_u1_u4() {
    // Queued for 0 ms, so the first poll after create sees the processing spelling.
    let sim = start_sim(SimConfig {
        queued_ms: 0,
        processing_ms: 600,
        jitter: 0.0,
        ..SimConfig::default()
    })
    .await;
    let client = client(&sim);
    let spelling = |processing: &str, completed: &str| Fault::StatusSpelling {
        processing: processing.into(),
        completed: completed.into(),
    };
    sim.push_fault(
        FaultRule::new(FaultEndpoint::Create, spelling("running", "succeeded"))
            .prompt_contains("ark")
            .times(1),
    );
    sim.push_fault(
        FaultRule::new(FaultEndpoint::Create, spelling("rendering", "succeeded"))
            .prompt_contains("unknown")
            .times(1),
    );
    let ark = created(&client, "ark spellings").await;
    let unknown = created(&client, "unknown spellings").await;
    let (ark_seen, unknown_seen) = tokio::join!(
        poll_until_terminal(&client, &ark),
        poll_until_terminal(&client, &unknown)
    );

    for (seen, processing, recognised) in [
        (&ark_seen, "running", true),
        (&unknown_seen, "rendering", false),
    ] {
        let while_running: Vec<_> = seen.iter().filter(|v| v.status.raw == processing).collect();
        assert!(
            !while_running.is_empty(),
            "never saw {processing}: {:?}",
            seen.iter().map(|v| &v.status.raw).collect::<Vec<_>>()
        );
        for video in while_running {
            assert_eq!(
                video.status.state,
                UpstreamState::Processing,
                "{:?}",
                video.status
            );
            assert_eq!(video.status.recognised, recognised, "{:?}", video.status);
            assert!(!video.status.state.is_terminal());
        }
        let last = seen.last().expect("status");
        assert_eq!(last.status.raw, "succeeded");
        assert_eq!(last.status.state, UpstreamState::Completed);
        assert!(last.status.recognised);
    }
}

#[tokio::test]
async fn failed_task_keeps_the_upstream_code_and_message() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    sim.push_fault(
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::FailTask {
                code: "content_policy_violation".into(),
                message: "the prompt was refused by the safety system".into(),
            },
        )
        .prompt_contains("refused")
        .times(1),
    );
    let id = created(&client, "a refused scene").await;
    let done = poll_until_terminal(&client, &id)
        .await
        .pop()
        .expect("status");
    assert_eq!(done.status.state, UpstreamState::Failed);
    assert_eq!(done.status.raw, "failed");
    let error = done.error.expect("the failure is described");
    assert_eq!(error.code.as_deref(), Some("content_policy_violation"));
    assert_eq!(
        error.message.as_deref(),
        Some("the prompt was refused by the safety system")
    );
    let err = client.content(&id, 0).await.expect_err("no content");
    assert!(matches!(err, UpstreamError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn wrong_key_is_auth_and_never_appears_in_the_error() {
    let sim = start_sim(fast_sim_config()).await;
    let wrong = "sk-wrong-5f2c9e1d-DISTINCTIVE";
    let client = client_from(client_config_for(
        &sim.base_url(),
        ApiKey::new(wrong).expect("key"),
    ));

    let err = client
        .create(&veo_body("with the wrong key", 4, "1280x720"))
        .await
        .expect_err("401");
    assert!(
        matches!(
            err,
            UpstreamError::Auth {
                endpoint: Endpoint::Create,
                status: 401,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.create_failure(), CreateFailure::NotTakenPermanent);
    assert!(!err.is_retryable());
    for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
        assert!(!text.contains(wrong), "the key leaked: {text}");
    }
    for err in [
        client.get("video-1").await.expect_err("401"),
        client.content("video-1", 0).await.expect_err("401"),
    ] {
        assert!(
            matches!(err, UpstreamError::Auth { status: 401, .. }),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains(wrong));
    }
    let stats = sim.stats();
    assert_eq!(stats.creates_accepted, 0);
    assert_eq!(stats.creates_rejected.get(&401), Some(&1));
}

#[tokio::test]
async fn invalid_body_is_rejected_with_the_upstream_message_and_unknown_ids_are_not_found() {
    let sim = start_sim(fast_sim_config()).await;
    let client = client(&sim);
    // V1 broken on purpose: vidgate's catalog would never build this body.
    let body = CreateBody::Json(json!({"model": VEO, "prompt": "five seconds", "seconds": "5"}));
    let err = client.create(&body).await.expect_err("400");
    assert!(
        matches!(
            err,
            UpstreamError::Rejected {
                endpoint: Endpoint::Create,
                status: 400,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.create_failure(), CreateFailure::NotTakenPermanent);
    let message = err.upstream_message().expect("the upstream's words");
    assert!(message.contains("seconds"), "{message}");
    assert!(message.contains(r#""4", "6", "8""#), "{message}");
    assert_eq!(sim.stats().creates_rejected.get(&400), Some(&1));

    let unknown = "video-does-not-exist";
    for err in [
        client.get(unknown).await.expect_err("404"),
        client.content(unknown, 0).await.expect_err("404"),
    ] {
        assert!(matches!(err, UpstreamError::NotFound { .. }), "{err:?}");
        assert!(!err.is_retryable());
        assert!(
            err.upstream_message().is_some_and(|m| m.contains(unknown)),
            "{err}"
        );
    }
}

// ---- secrets ---------------------------------------------------------------------------------

/// Everything the test's subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

/// Installs, once for this test binary, a global TRACE subscriber that writes every event of
/// every thread into one buffer.
///
/// Global, not `set_default`: with one scoped dispatcher, tracing-core caches "never" for a
/// callsite that another test's thread reaches first, and this thread then loses its events.
fn capture_all_logs() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        captured
    })
}

#[tokio::test]
async fn the_api_key_appears_in_no_log_line_error_or_debug_output() {
    let captured = capture_all_logs();

    let key = "sk-live-7Qw3-SECRET-a9f1e2c4";
    let wrong_key = "sk-live-WRONG-SECRET-0b8d3f";
    let sim = start_sim(SimConfig {
        api_key: key.into(),
        ..fast_sim_config()
    })
    .await;
    let client = client(&sim);
    let wrong = client_from(client_config_for(
        &sim.base_url(),
        ApiKey::new(wrong_key).expect("key"),
    ));

    let id = created(&client, "a secret-keeping cat").await;
    poll_until_terminal(&client, &id).await;
    let (bytes, err) = drain(client.content(&id, 0).await.expect("content")).await;
    assert!(err.is_none() && !bytes.is_empty());

    sim.push_fault(FaultRule::new(FaultEndpoint::Get, http_fault(503, None)).times(1));
    sim.push_fault(FaultRule::new(FaultEndpoint::Content, Fault::Reset).times(1));
    let errors = vec![
        client.get(&id).await.expect_err("503"),
        client.get("video-missing").await.expect_err("404"),
        client.content(&id, 0).await.expect_err("reset"),
        client
            .create(&CreateBody::Json(
                json!({"model": VEO, "prompt": "p", "size": "1x1"}),
            ))
            .await
            .expect_err("400"),
        wrong
            .create(&veo_body("p", 4, "1280x720"))
            .await
            .expect_err("401"),
        wrong.get(&id).await.expect_err("401"),
    ];

    // A failed task whose message echoes the request's header (#14): read, stored and logged
    // without the key.
    sim.push_fault(
        FaultRule::new(
            FaultEndpoint::Create,
            Fault::FailTask {
                code: "bad_request".into(),
                message: format!("rejected; headers were Authorization: Bearer {key}"),
            },
        )
        .prompt_contains("echoing")
        .times(1),
    );
    let echoed = created(&client, "an echoing cat").await;
    let seen = poll_until_terminal(&client, &echoed).await;
    let failed = seen.last().expect("a terminal status");
    let message = failed
        .error
        .as_ref()
        .and_then(|e| e.message.clone())
        .expect("the failed task's message");
    assert_eq!(
        message,
        "rejected; headers were Authorization: Bearer [REDACTED]"
    );
    tracing::info!(message = %message, "the failed task's message, logged as the dispatcher does");

    let logs = captured.text();
    assert!(
        logs.contains("upstream answered") && logs.contains(&format!("upstream_id={id}")),
        "the subscriber must have captured this test's client events:\n{logs}"
    );
    let mut outputs = vec![
        logs,
        format!("{client:?}"),
        format!("{wrong:?}"),
        format!("{:?}", client_config(&sim)),
    ];
    for err in &errors {
        outputs.push(err.to_string());
        outputs.push(format!("{err:?}"));
    }
    for text in &outputs {
        for secret in [key, wrong_key] {
            assert!(!text.contains(secret), "a key leaked into: {text}");
        }
    }
}
