//! Webhooks from the outside: endpoints made over `WebhookService`, jobs driven to their end,
//! and a receiver (`support::receiver`) that verifies every signature with the Standard
//! Webhooks library. Signatures and bodies, a receiver down for a while, refused targets,
//! secret rotation, `410 Gone`, replays, per-job callbacks and the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tonic::transport::Channel;
use vidgate::pb;
use vidgate::pb::webhook_service_client::WebhookServiceClient;
use vidgate::store::EventQuery;

use crate::support::receiver::{Mode, Receiver};
use crate::support::{ACME, TestApp, error_reason, req, spawn_app_with, veo};

/// Long enough on a shared machine for deliveries that are due at once.
const PROMPTLY: Duration = Duration::from_secs(20);

/// The app with webhooks to the test's own receiver (plain http on 127.0.0.1 allowed), fast
/// retries, and the dispatcher driven by the test.
async fn app_with_webhooks() -> TestApp {
    spawn_app_with(|c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_targets = true;
        c.webhooks.poll_interval_ms = 50;
        c.webhooks.retry_delays = [
            "100ms", "200ms", "300ms", "400ms", "500ms", "500ms", "500ms",
        ]
        .iter()
        .map(|d| (*d).to_owned())
        .collect();
    })
    .await
}

async fn webhooks_client(app: &TestApp) -> WebhookServiceClient<Channel> {
    WebhookServiceClient::connect(format!("http://{}", app.app().grpc_addr()))
        .await
        .expect("client connects")
}

async fn endpoint(
    client: &mut WebhookServiceClient<Channel>,
    url: &str,
    event_types: &[&str],
) -> (pb::WebhookEndpoint, String) {
    let made = client
        .create_webhook_endpoint(req(
            ACME,
            pb::CreateWebhookEndpointRequest {
                url: url.to_owned(),
                description: "test receiver".into(),
                event_types: event_types.iter().map(|t| (*t).to_owned()).collect(),
                ..Default::default()
            },
        ))
        .await
        .expect("endpoint created")
        .into_inner();
    (made.endpoint.expect("an endpoint"), made.signing_secret)
}

/// The admin port's `/metrics` text.
async fn metrics(app: &TestApp) -> String {
    let admin = app.app().admin_addr().expect("admin port on");
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

async fn create_video(app: &mut TestApp, prompt: &str) -> pb::Video {
    app.client
        .create_video(req(ACME, veo(prompt)))
        .await
        .expect("created")
        .into_inner()
}

/// The events of `video_id` in the log, as a webhook body each (what a receiver must get).
async fn logged_bodies(app: &TestApp, video_id: &str) -> BTreeMap<i64, serde_json::Value> {
    let events = app
        .app()
        .store()
        .events_after(&EventQuery {
            after_sequence: 0,
            tenant: None,
            job_id: Some(video_id.to_owned()),
            limit: 1_000,
        })
        .await
        .unwrap();
    events
        .iter()
        .map(|e| {
            let body: serde_json::Value =
                serde_json::from_slice(&vidgate::webhooks::body(e)).unwrap();
            (e.sequence, body)
        })
        .collect()
}

#[tokio::test]
async fn a_completed_video_reaches_its_endpoint_signed_and_a_tampered_body_fails_verification() {
    let mut app = app_with_webhooks().await;
    let receiver = Receiver::start().await;
    let mut hooks = webhooks_client(&app).await;
    let (ep, secret) = endpoint(&mut hooks, &receiver.url(), &["video.completed"]).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    receiver.set_secrets(&[&secret]);
    // Another tenant's endpoint must not see acme's jobs.
    let other = Receiver::start().await;
    hooks
        .create_webhook_endpoint(req(
            crate::support::GLOBEX,
            pb::CreateWebhookEndpointRequest {
                url: other.url(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();

    let video = create_video(&mut app, "a lighthouse at dusk").await;
    let done = app.drive(ACME, &video.id).await;
    assert_eq!(done.status(), pb::VideoStatus::Completed);

    let got = receiver
        .wait_for(PROMPTLY, "the completion", |got| !got.is_empty())
        .await;
    let first = &got[0];
    assert_eq!(
        first.verified_by,
        [0],
        "the signature verifies with the endpoint's secret"
    );
    assert_eq!(
        first.id,
        vidgate::webhooks::webhook_id(&ep.id, done.last_sequence)
    );
    let body: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(body["type"], "video.completed");
    assert_eq!(body["data"]["id"], video.id.as_str());
    assert_eq!(body["data"]["status"], "COMPLETED");
    assert!(body["timestamp"].as_str().unwrap().starts_with("20"));
    // The official library refuses the same headers over a changed body.
    let mut tampered = first.body.to_vec();
    tampered.extend_from_slice(b" ");
    let mut headers = http::HeaderMap::new();
    headers.insert("webhook-id", first.id.parse().unwrap());
    headers.insert("webhook-timestamp", first.timestamp.parse().unwrap());
    headers.insert("webhook-signature", first.signature.parse().unwrap());
    let verifier = standardwebhooks::Webhook::new(&secret).unwrap();
    assert!(verifier.verify(&first.body, &headers).is_ok());
    assert!(verifier.verify(&tampered, &headers).is_err());
    // Only the completion (the filter), once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1);
    assert!(
        other.received().is_empty(),
        "another tenant's endpoint got acme's event"
    );

    let deliveries = hooks
        .list_webhook_deliveries(req(
            ACME,
            pb::ListWebhookDeliveriesRequest {
                endpoint_id: ep.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].state(), pb::WebhookDeliveryState::Delivered);
    assert_eq!(deliveries[0].recent_attempts[0].http_status, 204);
    assert_eq!(deliveries[0].video_id, video.id);
}

#[tokio::test]
async fn a_receiver_failing_then_down_then_up_gets_every_event_as_logged_with_stable_ids() {
    let mut app = app_with_webhooks().await;
    let receiver = Receiver::start().await;
    let mut hooks = webhooks_client(&app).await;
    let (ep, secret) = endpoint(&mut hooks, &receiver.url(), &[]).await;
    receiver.set_secrets(&[&secret]);
    receiver.set_mode(Mode::Unavailable);

    let mut ids = Vec::new();
    for i in 0..3 {
        let video = create_video(&mut app, &format!("a failing receiver {i}")).await;
        ids.push(video.id);
    }
    app.drive_all(ACME, &ids).await;
    // Attempts are refused with 503, then the receiver goes away altogether.
    receiver
        .wait_for(PROMPTLY, "some refused attempts", |got| got.len() >= 6)
        .await;
    receiver.down();
    tokio::time::sleep(Duration::from_millis(700)).await;
    receiver.set_mode(Mode::Accept);
    receiver.up().await;

    let mut expected: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for id in &ids {
        for (sequence, body) in logged_bodies(&app, id).await {
            expected.insert(vidgate::webhooks::webhook_id(&ep.id, sequence), body);
        }
    }
    assert!(
        expected.len() >= 9,
        "queued, processing, completed x 3: {expected:?}"
    );
    let got = receiver
        .wait_for(PROMPTLY, "every event accepted", |got| {
            let accepted: BTreeSet<&str> = got
                .iter()
                .filter(|r| r.answered == 204)
                .map(|r| r.id.as_str())
                .collect();
            expected.keys().all(|id| accepted.contains(id.as_str()))
        })
        .await;
    for r in &got {
        assert_eq!(r.verified_by, [0], "{}", r.id);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        // Every attempt of an event carries its id, and the body the log has for it.
        assert_eq!(expected.get(&r.id), Some(&body), "{}", r.id);
    }
    let retried = got.iter().filter(|r| r.answered == 503).count();
    assert!(retried >= 6, "{retried}");
}

#[tokio::test]
async fn internal_and_plain_http_targets_are_refused_naming_the_rule() {
    // The defaults: https only, public addresses only.
    let mut app = spawn_app_with(|_| {}).await;
    let mut hooks = webhooks_client(&app).await;
    for (url, words) in [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]/hook", "loopback"),
        ("http://hooks.example.com/hook", "allow_http"),
        ("https://user:pw@hooks.example.com/hook", "credentials"),
    ] {
        let status = hooks
            .create_webhook_endpoint(req(
                ACME,
                pb::CreateWebhookEndpointRequest {
                    url: url.to_owned(),
                    ..Default::default()
                },
            ))
            .await
            .expect_err(url);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{url}");
        assert_eq!(error_reason(&status), "WEBHOOK_TARGET_NOT_ALLOWED", "{url}");
        assert!(
            status.message().contains(words) && status.message().contains("url"),
            "{url}: {}",
            status.message()
        );
        assert!(!status.message().contains("pw@"), "{}", status.message());
    }
    // A job's callback_url is held to the same rules.
    let mut request = veo("a callback inside");
    request.callback_url = "https://169.254.169.254/".into();
    let status = app
        .client
        .create_video(req(ACME, request))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("callback_url"),
        "{}",
        status.message()
    );
    // Filters are checked too.
    let status = hooks
        .create_webhook_endpoint(req(
            ACME,
            pb::CreateWebhookEndpointRequest {
                url: "https://hooks.example.com/x".into(),
                event_types: vec!["video.exploded".into()],
                ..Default::default()
            },
        ))
        .await
        .expect_err("unknown type");
    assert!(
        status.message().contains("event_types"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn during_a_rotation_both_signatures_are_present_and_each_verifies() {
    let app = app_with_webhooks().await;
    let receiver = Receiver::start().await;
    let mut hooks = webhooks_client(&app).await;
    let (ep, old) = endpoint(&mut hooks, &receiver.url(), &[]).await;
    let rotated = hooks
        .rotate_webhook_secret(req(
            ACME,
            pb::RotateWebhookSecretRequest {
                id: ep.id.clone(),
                grace_seconds: 3_600,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let new = rotated.signing_secret;
    assert_ne!(new, old);
    assert!(
        rotated
            .endpoint
            .unwrap()
            .previous_secret_expire_time
            .is_some()
    );
    receiver.set_secrets(&[&old, &new]);
    let delivery = hooks
        .send_test_webhook(req(ACME, pb::SendTestWebhookRequest { id: ep.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(delivery.state(), pb::WebhookDeliveryState::Delivered);
    assert_eq!(delivery.event_type, "webhook.test");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    assert_eq!(
        got[0].verified_by,
        [0, 1],
        "both the old and the new secret verify"
    );

    // A rotation without grace: only the newest secret signs.
    let newest = hooks
        .rotate_webhook_secret(req(
            ACME,
            pb::RotateWebhookSecretRequest {
                id: ep.id.clone(),
                grace_seconds: 1,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    receiver.set_secrets(&[&old, &new, &newest]);
    hooks
        .send_test_webhook(req(ACME, pb::SendTestWebhookRequest { id: ep.id.clone() }))
        .await
        .unwrap();
    let got = receiver.received();
    assert_eq!(got[1].verified_by, [2], "{}", got[1].signature);
}

#[tokio::test]
async fn a_gone_receiver_disables_its_endpoint_and_a_replay_after_enabling_sends_again() {
    let mut app = app_with_webhooks().await;
    let receiver = Receiver::start().await;
    let mut hooks = webhooks_client(&app).await;
    let (ep, secret) = endpoint(&mut hooks, &receiver.url(), &["video.completed"]).await;
    receiver.set_secrets(&[&secret]);
    receiver.set_mode(Mode::Gone);
    let video = create_video(&mut app, "gone").await;
    app.drive(ACME, &video.id).await;
    receiver
        .wait_for(PROMPTLY, "the 410", |got| !got.is_empty())
        .await;
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let disabled = loop {
        let got = hooks
            .get_webhook_endpoint(req(
                ACME,
                pb::GetWebhookEndpointRequest { id: ep.id.clone() },
            ))
            .await
            .unwrap()
            .into_inner();
        if got.disabled || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(disabled.disabled);
    assert!(
        disabled.disabled_reason.contains("410"),
        "{}",
        disabled.disabled_reason
    );
    // Seen on /metrics: the attempt by outcome and status, the disabling and its reason.
    let text = metrics(&app).await;
    for expected in [
        "vidgate_webhook_attempts_total{",
        "http_response_status_code=\"410\"",
        "vidgate_webhook_outcome=\"failed\"",
        "vidgate_webhook_endpoint_disablings_total{",
        "vidgate_webhook_reason=\"gone\"",
        "vidgate_webhook_attempt_duration_seconds_bucket",
        "vidgate_webhook_backlog ",
        "vidgate_webhook_backlog_age_seconds",
        "vidgate_webhook_endpoints_disabled",
    ] {
        let ours: Vec<&str> = text.lines().filter(|l| l.contains("webhook")).collect();
        assert!(
            text.contains(expected),
            "{expected} not in /metrics:\n{}",
            ours.join("\n")
        );
    }
    // Disabled: a replay is refused, naming what to do.
    let status = hooks
        .replay_webhooks(req(
            ACME,
            pb::ReplayWebhooksRequest {
                endpoint_id: ep.id.clone(),
                what: Some(pb::replay_webhooks_request::What::AfterSequence(0)),
            },
        ))
        .await
        .expect_err("disabled");
    assert_eq!(error_reason(&status), "WEBHOOK_ENDPOINT_DISABLED");
    // Enabled again, the receiver back: replaying everything after 0 sends the completion.
    receiver.set_mode(Mode::Accept);
    hooks
        .update_webhook_endpoint(req(
            ACME,
            pb::UpdateWebhookEndpointRequest {
                endpoint: Some(pb::WebhookEndpoint {
                    id: ep.id.clone(),
                    disabled: false,
                    ..Default::default()
                }),
                update_mask: Some(pbjson_types::FieldMask {
                    paths: vec!["disabled".into()],
                }),
            },
        ))
        .await
        .unwrap();
    let replay = hooks
        .replay_webhooks(req(
            ACME,
            pb::ReplayWebhooksRequest {
                endpoint_id: ep.id.clone(),
                what: Some(pb::replay_webhooks_request::What::AfterSequence(0)),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay.queued, 1, "{replay:?}");
    let got = receiver
        .wait_for(PROMPTLY, "the replayed completion", |got| {
            got.iter().any(|r| r.answered == 204)
        })
        .await;
    assert_eq!(
        got[0].id,
        got.last().unwrap().id,
        "a replay keeps the webhook-id"
    );
    // One delivery again, by its webhook-id (delivered: its body comes back from the log).
    let before = receiver.received().len();
    let one = hooks
        .replay_webhooks(req(
            ACME,
            pb::ReplayWebhooksRequest {
                endpoint_id: ep.id.clone(),
                what: Some(pb::replay_webhooks_request::What::WebhookId(
                    got[0].id.clone(),
                )),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.queued, 1);
    let again = receiver
        .wait_for(PROMPTLY, "the replayed delivery", |all| all.len() > before)
        .await;
    let last = again.last().unwrap();
    assert_eq!(last.id, got[0].id);
    assert_eq!(
        last.body,
        got.last().unwrap().body,
        "the same body as logged"
    );
    // An id of no delivery of this endpoint names what is missing.
    let status = hooks
        .replay_webhooks(req(
            ACME,
            pb::ReplayWebhooksRequest {
                endpoint_id: ep.id.clone(),
                what: Some(pb::replay_webhooks_request::What::WebhookId(
                    "msg_nobody_1".into(),
                )),
            },
        ))
        .await
        .expect_err("unknown");
    assert_eq!(error_reason(&status), "WEBHOOK_DELIVERY_NOT_FOUND");
}

#[tokio::test]
async fn endpoints_and_deliveries_page_without_gaps_or_repeats_and_tenants_stay_apart() {
    let mut app = app_with_webhooks().await;
    let receiver = Receiver::start().await;
    let mut hooks = webhooks_client(&app).await;
    let mut made = BTreeSet::new();
    for _ in 0..5 {
        made.insert(
            endpoint(&mut hooks, &receiver.url(), &["video.completed"])
                .await
                .0
                .id,
        );
    }
    let mut listed = BTreeSet::new();
    let mut token = String::new();
    loop {
        let page = hooks
            .list_webhook_endpoints(req(
                ACME,
                pb::ListWebhookEndpointsRequest {
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.endpoints.len() <= 2);
        for e in page.endpoints {
            assert!(listed.insert(e.id), "listed twice");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, made);
    // Another tenant sees none of them, and cannot read one.
    let other = hooks
        .list_webhook_endpoints(req(
            crate::support::GLOBEX,
            pb::ListWebhookEndpointsRequest::default(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(other.endpoints.is_empty());
    let first = made.iter().next().unwrap().clone();
    let status = hooks
        .get_webhook_endpoint(req(
            crate::support::GLOBEX,
            pb::GetWebhookEndpointRequest { id: first.clone() },
        ))
        .await
        .expect_err("another tenant's");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // Five completions: five deliveries of one endpoint, paged two at a time, newest first.
    for i in 0..5 {
        let video = create_video(&mut app, &format!("paged {i}")).await;
        app.drive(ACME, &video.id).await;
    }
    receiver
        .wait_for(PROMPTLY, "25 deliveries", |got| got.len() >= 25)
        .await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = hooks
            .list_webhook_deliveries(req(
                ACME,
                pb::ListWebhookDeliveriesRequest {
                    endpoint_id: first.clone(),
                    page_size: 2,
                    page_token: token.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.deliveries.into_iter().map(|d| d.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    let status = hooks
        .list_webhook_deliveries(req(
            ACME,
            pb::ListWebhookDeliveriesRequest {
                endpoint_id: first,
                page_size: 2,
                page_token: "not-a-token".into(),
            },
        ))
        .await
        .expect_err("a forged token");
    assert!(
        status.message().contains("page_token"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_video_callback_url_gets_its_events_signed_with_the_tenant_callback_secret() {
    let mut app = app_with_webhooks().await;
    let receiver = Receiver::start().await;
    let mut hooks = webhooks_client(&app).await;
    let secret = hooks
        .get_callback_secret(req(ACME, pb::GetCallbackSecretRequest {}))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    receiver.set_secrets(&[&secret]);
    let mut request = veo("a callback");
    request.callback_url = receiver.url();
    let video = app
        .client
        .create_video(req(ACME, request))
        .await
        .unwrap()
        .into_inner();
    app.drive(ACME, &video.id).await;
    let got = receiver
        .wait_for(PROMPTLY, "the completion", |got| {
            got.iter()
                .any(|r| r.body.windows(9).any(|w| w == b"COMPLETED"))
        })
        .await;
    for r in &got {
        assert_eq!(r.verified_by, [0]);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["data"]["id"], video.id.as_str());
    }
    // The same secret on every call; another tenant has its own.
    let again = hooks
        .get_callback_secret(req(ACME, pb::GetCallbackSecretRequest {}))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    assert_eq!(again, secret);
    let other = hooks
        .get_callback_secret(req(crate::support::GLOBEX, pb::GetCallbackSecretRequest {}))
        .await
        .unwrap()
        .into_inner()
        .signing_secret;
    assert_ne!(other, secret);
}

/// The client commands as the binary exposes them.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    opts: vidgate::cli::ClientOpts,
    #[command(subcommand)]
    cmd: vidgate::cli::ClientCommand,
}

/// Runs `vidgate <args>` against `app` as tenant acme; the result and what it printed.
async fn vidgate(app: &TestApp, args: &[&str]) -> (anyhow::Result<()>, String) {
    use clap::Parser as _;
    let addr = format!("http://{}", app.app().grpc_addr());
    let argv = ["vidgate", "--addr", &addr, "--token", ACME];
    let cli = Cli::try_parse_from(argv.iter().chain(args)).expect("arguments parse");
    let mut out = Vec::new();
    let result = vidgate::cli::run_with_output(cli.opts, cli.cmd, &mut out).await;
    (result, String::from_utf8(out).expect("utf-8"))
}

#[tokio::test]
async fn the_cli_creates_tests_lists_rotates_and_deletes_an_endpoint() {
    let app = app_with_webhooks().await;
    let receiver = Receiver::start().await;
    let url = receiver.url();
    let (result, out) = vidgate(
        &app,
        &[
            "webhooks",
            "create",
            &url,
            "--event-type",
            "video.completed",
        ],
    )
    .await;
    result.expect("create");
    let secret = out
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .unwrap_or_else(|| panic!("no secret shown: {out}"))
        .to_owned();
    assert!(out.contains("shown once"), "{out}");
    let id = out
        .split(|c: char| c.is_whitespace() || c == ',')
        .find(|w| w.starts_with("whe_"))
        .unwrap_or_else(|| panic!("no endpoint id: {out}"))
        .to_owned();
    receiver.set_secrets(&[&secret]);

    let (result, out) = vidgate(&app, &["webhooks", "test", &id]).await;
    result.expect("test");
    assert!(out.contains("204"), "{out}");
    assert_eq!(receiver.received()[0].verified_by, [0]);

    let (result, out) = vidgate(&app, &["webhooks", "list"]).await;
    result.expect("list");
    assert!(out.contains(&id) && out.contains(&url), "{out}");

    let (result, out) = vidgate(&app, &["webhooks", "rotate", &id, "--grace", "1h"]).await;
    result.expect("rotate");
    let rotated = out
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .unwrap_or_else(|| panic!("no new secret: {out}"));
    assert_ne!(rotated, secret);

    let (result, out) = vidgate(&app, &["webhooks", "deliveries", &id]).await;
    result.expect("deliveries");
    assert!(out.contains("webhook.test"), "{out}");

    vidgate(&app, &["webhooks", "delete", &id])
        .await
        .0
        .expect("delete");
    let (result, _) = vidgate(&app, &["webhooks", "get", &id]).await;
    let error = format!("{:#}", result.expect_err("gone"));
    assert!(
        error.contains("WEBHOOK_ENDPOINT_NOT_FOUND") || error.contains("does not exist"),
        "{error}"
    );
}

/// A receiver that misbehaves by path: `/silent` reads the request and never answers,
/// `/endless` answers 500 with a body that never ends, `/redirect` answers 302 to another
/// address.
async fn hostile_receiver() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let Ok(n) = socket.read(&mut head).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&head[..n]).into_owned();
                if text.contains("POST /silent") {
                    tokio::time::sleep(Duration::from_secs(120)).await;
                } else if text.contains("POST /endless") {
                    let _ = socket
                        .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 1000000000\r\n\r\n")
                        .await;
                    let chunk = vec![b'x'; 64 * 1024];
                    while socket.write_all(&chunk).await.is_ok() {}
                } else {
                    let _ = socket
                        .write_all(b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn silent_endless_and_redirecting_receivers_are_bounded_and_recorded_as_failures() {
    let app = spawn_app_with(|c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_targets = true;
        c.webhooks.poll_interval_ms = 50;
        c.webhooks.timeout_ms = 1_000;
    })
    .await;
    let addr = hostile_receiver().await;
    let mut hooks = webhooks_client(&app).await;
    let mut first_attempt = async |path: &str| {
        let (ep, _) = endpoint(&mut hooks, &format!("http://{addr}/{path}"), &[]).await;
        let started = std::time::Instant::now();
        let delivery = hooks
            .send_test_webhook(req(ACME, pb::SendTestWebhookRequest { id: ep.id }))
            .await
            .unwrap()
            .into_inner();
        let attempt = delivery
            .recent_attempts
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("{path}: no attempt recorded: {delivery:?}"));
        // Failed, and due again (a retry), not delivered.
        assert_eq!(
            delivery.state(),
            pb::WebhookDeliveryState::Pending,
            "{path}"
        );
        assert!(delivery.next_attempt_time.is_some(), "{path}");
        (attempt, started.elapsed())
    };
    let (silent, took) = first_attempt("silent").await;
    assert_eq!(silent.http_status, 0);
    assert!(silent.error.contains("timed out"), "{}", silent.error);
    assert!(took < Duration::from_secs(10), "{took:?}");

    let (endless, took) = first_attempt("endless").await;
    assert_eq!(endless.http_status, 500);
    assert!(endless.error.contains("500"), "{}", endless.error);
    // Only an excerpt of the body is kept, however long it claims to be.
    assert!(endless.error.len() < 400, "{}", endless.error.len());
    assert!(took < Duration::from_secs(10), "{took:?}");

    let (redirect, _) = first_attempt("redirect").await;
    assert_eq!(redirect.http_status, 302);
    assert!(redirect.error.contains("redirect"), "{}", redirect.error);
}

#[tokio::test]
async fn a_slow_endpoint_holds_only_its_own_slots_and_never_slows_another() {
    let mut app = spawn_app_with(|c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_targets = true;
        c.webhooks.poll_interval_ms = 50;
        c.webhooks.max_in_flight = 8;
        c.webhooks.max_in_flight_per_endpoint = 2;
    })
    .await;
    let slow = Receiver::start().await;
    slow.set_delay(Duration::from_secs(2));
    let fast = Receiver::start().await;
    let mut hooks = webhooks_client(&app).await;
    endpoint(&mut hooks, &slow.url(), &[]).await;
    endpoint(&mut hooks, &fast.url(), &[]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            create_video(&mut app, &format!("slow and fast {i}"))
                .await
                .id,
        );
    }
    app.drive_all(ACME, &ids).await;
    let mut events = 0;
    for id in &ids {
        events += logged_bodies(&app, id).await.len();
    }
    // The fast receiver gets every event while the slow one, two at a time and 2 s each, has
    // had only a few.
    fast.wait_for(PROMPTLY, "every event at the fast endpoint", |got| {
        got.len() >= events
    })
    .await;
    let slow_so_far = slow.received().len();
    assert!(
        slow_so_far < events / 2,
        "the slow endpoint got {slow_so_far} of {events} as fast as the fast one"
    );
    slow.set_delay(Duration::ZERO);
    slow.wait_for(
        Duration::from_secs(60),
        "every event at the slow endpoint",
        |got| got.len() >= events,
    )
    .await;
}

#[tokio::test]
async fn after_its_last_retry_a_delivery_is_undeliverable_and_an_endpoint_failing_too_long_is_disabled()
 {
    let mut app = spawn_app_with(|c| {
        c.webhooks.allow_http = true;
        c.webhooks.allow_private_targets = true;
        c.webhooks.poll_interval_ms = 50;
        c.webhooks.retry_delays = vec!["100ms".into(), "100ms".into()];
        c.webhooks.disable_after = "2s".into();
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set_mode(Mode::Unavailable);
    let mut hooks = webhooks_client(&app).await;
    let (ep, _) = endpoint(&mut hooks, &receiver.url(), &["video.completed"]).await;
    let video = create_video(&mut app, "always refused").await;
    app.drive(ACME, &video.id).await;
    // The first attempt and two retries, then no more.
    receiver
        .wait_for(PROMPTLY, "three attempts", |got| got.len() >= 3)
        .await;
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    let delivery = loop {
        let deliveries = hooks
            .list_webhook_deliveries(req(
                ACME,
                pb::ListWebhookDeliveriesRequest {
                    endpoint_id: ep.id.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if let Some(d) = deliveries
            .into_iter()
            .find(|d| d.state() == pb::WebhookDeliveryState::Undeliverable)
        {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never undeliverable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivery.attempts, 3);
    assert!(
        delivery
            .recent_attempts
            .iter()
            .all(|a| a.http_status == 503 && a.error.contains("503")),
        "{delivery:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received().len(),
        3,
        "no attempt after the last retry"
    );

    // Still failing 2 s after its first failure: the next failed attempt disables it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    hooks
        .send_test_webhook(req(ACME, pb::SendTestWebhookRequest { id: ep.id.clone() }))
        .await
        .unwrap();
    let got = hooks
        .get_webhook_endpoint(req(
            ACME,
            pb::GetWebhookEndpointRequest { id: ep.id.clone() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.disabled, "{got:?}");
    assert!(
        got.disabled_reason.contains("every attempt failed"),
        "{}",
        got.disabled_reason
    );
    assert!(got.failing_since.is_some());
}
