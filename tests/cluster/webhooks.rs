//! Webhooks across instances on one PostgreSQL database: the instance that delivers is
//! `SIGKILL`ed with requests in flight; after a restart nothing is missing (its claimed
//! deliveries go out again when their leases end, the fan-out role passes on when its hold
//! ends), and every event reaches the receiver as the log has it, under one `webhook-id`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use vidgate::pb;
use vidgate::pb::webhook_service_client::WebhookServiceClient;
use vidgate::store::EventQuery;

use super::{WAIT, connect, instance_config, sim, wait_all_terminal};
use crate::support::child;
use crate::support::postgres::database;
use crate::support::receiver::Receiver;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_during_deliveries_loses_none_and_every_event_arrives_as_logged() {
    const JOBS: usize = 8;
    let db = database().await;
    let schema = db.schema("webhooks_killed");
    let sim = sim(sim_config()).await;
    let dir = temp_dir("webhooks-killed");
    let receiver = Receiver::start().await;
    // Slow enough that the child has deliveries in flight when it dies.
    receiver.set_delay(Duration::from_millis(150));

    let mut config = instance_config(&schema, &dir, &sim);
    // A serves the API and runs jobs; the child alone delivers webhooks, so killing it kills
    // deliveries in flight.
    config.webhooks.enabled = false;
    config.webhooks.allow_http = true;
    config.webhooks.allow_private_targets = true;
    config.webhooks.poll_interval_ms = 50;
    config.webhooks.timeout_ms = 2_000;
    config.webhooks.retry_delays = vec!["200ms".into(); 8];
    let app = vidgate::app::Application::build(config)
        .await
        .expect("instance A starts");
    let mut videos = connect(&app).await;
    let mut hooks = WebhookServiceClient::connect(format!("http://{}", app.grpc_addr()))
        .await
        .expect("connects");
    let made = hooks
        .create_webhook_endpoint(req(
            ACME,
            pb::CreateWebhookEndpointRequest {
                url: receiver.url(),
                ..Default::default()
            },
        ))
        .await
        .expect("endpoint")
        .into_inner();
    let endpoint = made.endpoint.expect("endpoint").id;
    receiver.set_secrets(&[&made.signing_secret]);

    let child_toml = format!(
        r#"
[storage]
data_dir = "{data}"
url = "{url}"
schema = "{schema}"
pool_size = 5

[upstream]
mode = "real"
base_url = "{base}"

[upstream.limits]
requests_per_second = 1000

[dispatcher]
first_poll_after_ms = 0
poll_interval_ms = 20
poll_jitter = 0.0
min_free_disk_bytes = 0

[webhooks]
allow_http = true
allow_private_targets = true
poll_interval_ms = 50
timeout_ms = 2000
retry_delays = ["200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms", "200ms"]
"#,
        data = dir.display(),
        url = schema.url,
        schema = schema.name,
        base = sim.base_url(),
    );
    let env = [("TURING_API_KEY", sim.api_key())];
    let doomed = child::serve(&dir.join("child-1"), &child_toml, &env).await;

    let mut ids = Vec::new();
    for i in 0..JOBS {
        let video = videos
            .create_video(req(ACME, veo(&format!("webhooks: killed instance {i}"))))
            .await
            .expect("create")
            .into_inner();
        ids.push(video.id);
    }
    // Deliveries answered and others under way: kill the child in the middle of them.
    let deadline = tokio::time::Instant::now() + WAIT;
    while receiver.received().len() < 4 || receiver.in_flight() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the child never had deliveries in flight ({} answered)",
            receiver.received().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logs = doomed.kill().await;
    assert!(
        !logs.contains(&made.signing_secret),
        "a signing secret reached the logs"
    );
    // Restarted, as an operator would.
    let _again = child::serve(&dir.join("child-2"), &child_toml, &env).await;

    wait_all_terminal(&mut videos, JOBS, "the webhook jobs").await;
    let mut expected: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for id in &ids {
        let events = app
            .store()
            .events_after(&EventQuery {
                after_sequence: 0,
                tenant: None,
                job_id: Some(id.clone()),
                limit: 1_000,
            })
            .await
            .expect("events");
        for e in events {
            let body = serde_json::from_slice(&vidgate::webhooks::body(&e)).expect("json");
            expected.insert(vidgate::webhooks::webhook_id(&endpoint, e.sequence), body);
        }
    }
    assert!(expected.len() >= 3 * JOBS, "{}", expected.len());
    let got = receiver
        .wait_for(WAIT, "every event of every job", |got| {
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
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(
            expected.get(&r.id),
            Some(&body),
            "{} is not as logged",
            r.id
        );
    }
    let duplicates = got.len() - expected.len();
    eprintln!(
        "{} events, {} requests received ({duplicates} repeats of an id after the kill)",
        expected.len(),
        got.len()
    );
    app.shutdown().await;
}
