//! Scenario 14 (issue #16): how long a completion takes to reach 100 webhook endpoints, against
//! how long it takes to reach 100 live `Subscribe` streams in the same run.
//!
//! 100 endpoints (made over `WebhookService`, `event_types = ["video.completed"]`, plain http
//! to one in-process axum receiver on 127.0.0.1 at `/hook/{n}`, which notes when each request
//! arrives and answers 204) and 100 subscribers (20 streams on each of 5 connections, filter
//! `statuses = [COMPLETED]`) stay open while jobs complete one at a time (created by gRPC, the
//! dispatcher stepped by the harness against the in-process simulator). `[webhooks]` is left at
//! its defaults (what is measured) but for `allow_http` and `allow_private_targets`, which the
//! receiver on 127.0.0.1 needs. A job's completion instant is when the store publishes its
//! `completed` event (an in-process subscriber of the store notes it); each webhook's latency
//! is from then to its request's arrival at the receiver (the fan-out's commit, the sender's
//! claim, the signed POST), each stream's to the event's arrival at its subscriber. Signatures
//! are not checked while measuring; at the end the last request each endpoint got must verify
//! with its secret (the Standard Webhooks library), so what is timed is what a receiver accepts.
//!
//! Baseline, same run and same completions: the completion -> `Subscribe` p99 at 100 streams.
//! Target: the webhook p99 at most 3x that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vidgate::app::Application;
use vidgate::pb;
use vidgate::pb::webhook_service_client::WebhookServiceClient;

use crate::{Row, authed, bench_config, channels, complete, create_request, median, percentile};

const ENDPOINTS: usize = 100;
const SUBSCRIBERS: usize = 100;
const CONNECTIONS: usize = 5;
const ROUNDS: usize = 5;
/// Completions measured per round.
const COMPLETIONS: usize = 4;
/// Warm-up completions at most, until every endpoint and every subscriber has seen one.
const WARMUPS: usize = 5;
/// Longest wait for every endpoint and every subscriber to get one completion.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);
/// Target: the webhook p99 at most this many times the `Subscribe` p99.
const TARGET_TIMES: f64 = 3.0;

/// Per video id, when its completion reached each endpoint (by path number: the first request
/// only, so a redelivery does not count twice) or each subscriber.
type Arrivals = Arc<Mutex<HashMap<String, HashMap<usize, Instant>>>>;

/// What the receiver keeps: the arrivals, and the last request of each path (headers and
/// body), verified once at the end.
#[derive(Default)]
struct Received {
    arrivals: Arrivals,
    last: Mutex<HashMap<usize, (HeaderMap, Bytes)>>,
}

/// The receiver's one handler: notes the arrival, answers 204. No signature check here.
async fn hook(
    State(received): State<Arc<Received>>,
    Path(n): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = Instant::now();
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["data"]["id"].as_str().map(str::to_owned));
    if let Some(id) = id {
        received
            .arrivals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_default()
            .entry(n)
            .or_insert(now);
    }
    received
        .last
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(n, (headers, body));
    StatusCode::NO_CONTENT
}

pub async fn scenario() -> anyhow::Result<Vec<Row>> {
    let defaults = vidgate::webhooks::config::WebhooksConfig::default();
    println!(
        "webhooks: {ENDPOINTS} endpoints (\"video.completed\", one in-process receiver, 204) and {SUBSCRIBERS} Subscribe streams over {CONNECTIONS} connections; {COMPLETIONS} completions per round, {ROUNDS} rounds; [webhooks] at its defaults (poll_interval_ms {}, max_in_flight {}, max_in_flight_per_endpoint {}) but allow_http and allow_private_targets; baseline: completion -> Subscribe, same completions",
        defaults.poll_interval_ms, defaults.max_in_flight, defaults.max_in_flight_per_endpoint
    );
    let data = tempfile::Builder::new()
        .prefix("vidgate-bench-")
        .tempdir()?;
    let mut config = bench_config(data.path());
    config.dispatcher.enabled = false;
    config.webhooks.allow_http = true;
    config.webhooks.allow_private_targets = true;
    config.webhooks.max_endpoints_per_tenant = config
        .webhooks
        .max_endpoints_per_tenant
        .max(u32::try_from(ENDPOINTS)?);
    config.server.max_streams_per_tenant =
        config.server.max_streams_per_tenant.max(SUBSCRIBERS + 16);
    let app = Application::build(config).await?;
    let ours = channels(app.grpc_addr(), CONNECTIONS).await?;

    // The receiver.
    let received = Arc::new(Received::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let router = axum::Router::new()
        .route("/hook/{n}", axum::routing::post(hook))
        .with_state(received.clone());
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    // The endpoints, and each one's secret by path number.
    let mut hooks = WebhookServiceClient::connect(format!("http://{}", app.grpc_addr())).await?;
    let mut secrets = Vec::with_capacity(ENDPOINTS);
    for n in 0..ENDPOINTS {
        let made = hooks
            .create_webhook_endpoint(authed(pb::CreateWebhookEndpointRequest {
                url: format!("http://127.0.0.1:{port}/hook/{n}"),
                description: format!("bench receiver {n}"),
                event_types: vec!["video.completed".into()],
                ..Default::default()
            }))
            .await?
            .into_inner();
        secrets.push(made.signing_secret);
    }

    // When the store published each completion.
    let stop = CancellationToken::new();
    let mut background = JoinSet::new();
    let published = crate::fanout::completions(&app, &stop, &mut background);

    // The subscribers, by number. Each ends with the stop token, its stream's end, or after as
    // many events as the scenario can produce.
    let seen: Arrivals = Arc::default();
    let ready = Arc::new(AtomicUsize::new(0));
    let most_events = WARMUPS + ROUNDS * COMPLETIONS;
    for i in 0..SUBSCRIBERS {
        let mut client = ours[i % ours.len()].clone();
        let mut stream = client
            .subscribe(authed(pb::SubscribeRequest {
                statuses: vec![pb::VideoStatus::Completed as i32],
                ..Default::default()
            }))
            .await?
            .into_inner();
        let (seen, ready, stop) = (seen.clone(), ready.clone(), stop.clone());
        background.spawn(async move {
            let mut first = true;
            for _ in 0..most_events {
                let message = tokio::select! {
                    _ = stop.cancelled() => break,
                    message = stream.message() => message,
                };
                let Ok(Some(event)) = message else { break };
                let now = Instant::now();
                if let Some(pb::video_event::Kind::Video(video)) = event.kind {
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(video.id)
                        .or_default()
                        .entry(i)
                        .or_insert(now);
                    if first {
                        first = false;
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }

    let mut driver = ours[0].clone();
    let mut job_number = 0;
    let mut complete_one = async |tag: &str| -> anyhow::Result<String> {
        job_number += 1;
        let video = driver
            .create_video(authed(create_request(format!(
                "webhooks-{tag}-{job_number}"
            ))))
            .await?
            .into_inner();
        complete(&app, &mut driver, &video.id).await?;
        Ok(video.id)
    };
    let hooked = |id: &str| count(&received.arrivals, id);
    let streamed = |id: &str| count(&seen, id);

    // Warm-up until every endpoint has had a request (its connection made) and every
    // subscriber is live (a stream opened while a completion committed may start just after).
    let endpoints_reached = || {
        received
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    };
    let warmed =
        || ready.load(Ordering::Relaxed) >= SUBSCRIBERS && endpoints_reached() >= ENDPOINTS;
    for _ in 0..WARMUPS {
        let id = complete_one("warmup").await?;
        let deadline = Instant::now() + DELIVERY_LIMIT;
        while Instant::now() < deadline
            && (hooked(&id) < ENDPOINTS || streamed(&id) < SUBSCRIBERS)
            && !warmed()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if warmed() {
            break;
        }
    }
    anyhow::ensure!(
        warmed(),
        "after the warm-up, {} of {SUBSCRIBERS} subscribers and {} of {ENDPOINTS} endpoints had got a completion",
        ready.load(Ordering::Relaxed),
        endpoints_reached()
    );

    let (mut hook_p50, mut hook_p99, mut stream_p50, mut stream_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let mut webhooks = Vec::with_capacity(COMPLETIONS * ENDPOINTS);
        let mut streams = Vec::with_capacity(COMPLETIONS * SUBSCRIBERS);
        let mut firsts = Vec::with_capacity(COMPLETIONS);
        for _ in 0..COMPLETIONS {
            let id = complete_one("measured").await?;
            let deadline = Instant::now() + DELIVERY_LIMIT;
            while hooked(&id) < ENDPOINTS || streamed(&id) < SUBSCRIBERS {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "within {DELIVERY_LIMIT:?}, {} of {ENDPOINTS} webhooks and {} of {SUBSCRIBERS} Subscribe events of {id}'s completion arrived",
                    hooked(&id),
                    streamed(&id)
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let t0 = published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("the store never published {id}'s completion"))?;
            let since = |arrivals: &Arrivals| -> Vec<Duration> {
                arrivals
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id)
                    .unwrap_or_default()
                    .into_values()
                    .map(|t| t.saturating_duration_since(t0))
                    .collect()
            };
            let these = since(&received.arrivals);
            firsts.push(ms(these.iter().min().copied().unwrap_or_default()));
            webhooks.extend(these);
            streams.extend(since(&seen));
        }
        webhooks.sort_unstable();
        streams.sort_unstable();
        let (w50, w99) = (
            ms(percentile(&webhooks, 0.50)),
            ms(percentile(&webhooks, 0.99)),
        );
        let (s50, s99) = (
            ms(percentile(&streams, 0.50)),
            ms(percentile(&streams, 0.99)),
        );
        println!(
            "  round {}/{ROUNDS}: webhook at {ENDPOINTS} endpoints first {:.2} ms (median), p50 {w50:.2} ms, p99 {w99:.2} ms, max {:.2} ms | Subscribe at {SUBSCRIBERS} streams p50 {s50:.2} ms, p99 {s99:.2} ms, max {:.2} ms | webhook p99 {:.1}x the Subscribe p99",
            round + 1,
            median(firsts),
            ms(webhooks.last().copied().unwrap_or_default()),
            ms(streams.last().copied().unwrap_or_default()),
            w99 / s99
        );
        hook_p50.push(w50);
        hook_p99.push(w99);
        stream_p50.push(s50);
        stream_p99.push(s99);
    }

    // What was timed is what a receiver accepts: the last request of every endpoint verifies
    // with its secret.
    let last = std::mem::take(&mut *received.last.lock().unwrap_or_else(PoisonError::into_inner));
    anyhow::ensure!(
        last.len() == ENDPOINTS,
        "{} of {ENDPOINTS} endpoints received a request",
        last.len()
    );
    for (n, (headers, body)) in &last {
        let secret = secrets
            .get(*n)
            .ok_or_else(|| anyhow::anyhow!("a request came to /hook/{n}, which has no endpoint"))?;
        standardwebhooks::Webhook::new(secret)
            .and_then(|w| w.verify(body, headers))
            .map_err(|e| {
                anyhow::anyhow!(
                    "the last request to /hook/{n} does not verify with its secret: {e}"
                )
            })?;
    }
    println!("  the last request of each of the {ENDPOINTS} endpoints verifies with its secret");

    stop.cancel();
    while background.join_next().await.is_some() {}
    app.shutdown().await;
    server.abort();
    let _ = server.await;

    let (w50, w99, s50, s99) = (
        median(hook_p50),
        median(hook_p99),
        median(stream_p50),
        median(stream_p99),
    );
    Ok(vec![
        Row::custom(
            "Completion -> webhook at 100 endpoints: p99 (vs completion -> Subscribe p99, 100 streams, same run)",
            format!("{w99:.2} ms"),
            format!("{s99:.2} ms"),
            format!("{:.1}x", w99 / s99),
            format!("<= {TARGET_TIMES:.0}x"),
            w99 <= TARGET_TIMES * s99,
        ),
        Row::custom(
            "Completion -> webhook at 100 endpoints: p50 (vs completion -> Subscribe p50)",
            format!("{w50:.2} ms"),
            format!("{s50:.2} ms"),
            format!("{:.1}x", w50 / s50),
            "-".into(),
            true,
        )
        .no_verdict(),
    ])
}

/// How many of the endpoints (or subscribers) got `id`'s completion so far.
fn count(arrivals: &Arrivals, id: &str) -> usize {
    arrivals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(id)
        .map_or(0, HashMap::len)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
