//! Scenario 6: how long a completion takes to reach 1 000 live `Subscribe` streams.
//!
//! 1 000 subscribers (50 streams on each of 20 connections, filter `statuses = [COMPLETED]`)
//! stay open while jobs complete one at a time (created by gRPC, the dispatcher stepped by the
//! harness against the in-process simulator). A job's completion instant is when the store
//! publishes its `completed` event (an in-process subscriber of the store notes it); each
//! subscriber notes when the event reaches it; the latency is the difference.
//!
//! Baseline, same run: the p99 of no-op unary `GetVideo` calls on the bare server as scenario 1
//! makes them (64 callers, one connection), which the target compares with. Also shown: 1 000
//! no-op calls fired at once over the same 20 connections (one message to each of 1 000
//! clients at one instant, as a completion is), each latency taken from the common start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vidgate::app::Application;
use vidgate::job::JobStatus;
use vidgate::pb;

use crate::{
    NoopServer, Row, authed, bench_config, channels, complete, create_request, median, percentile,
};

const SUBSCRIBERS: usize = 1_000;
const CONNECTIONS: usize = 20;
const ROUNDS: usize = 5;
/// Completions measured per round.
const COMPLETIONS: usize = 4;
/// Warm-up completions at most, until every subscriber has seen one.
const WARMUPS: usize = 5;
/// Longest wait for every subscriber to get one event.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);
/// Target: p99 at most this many times the no-op p99.
const TARGET_TIMES: f64 = 10.0;

type Seen = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

pub async fn scenario() -> anyhow::Result<Vec<Row>> {
    println!(
        "fanout: {SUBSCRIBERS} Subscribe streams over {CONNECTIONS} connections; {COMPLETIONS} completions per round, {ROUNDS} rounds; baseline: {SUBSCRIBERS} no-op GetVideo fired at once"
    );
    let data = tempfile::Builder::new()
        .prefix("vidgate-bench-")
        .tempdir()?;
    let mut config = bench_config(data.path());
    config.dispatcher.enabled = false;
    // One tenant holds every subscriber: past the default cap of 256 streams per tenant.
    config.server.max_streams_per_tenant = SUBSCRIBERS + 16;
    let app = Application::build(config).await?;
    let ours = channels(app.grpc_addr(), CONNECTIONS).await?;
    let bare = NoopServer::start(Bytes::new()).await?;
    let theirs = channels(bare.addr, CONNECTIONS).await?;

    // When the store published each completion.
    let stop = CancellationToken::new();
    let mut background = JoinSet::new();
    let published = completions(&app, &stop, &mut background);

    // The subscribers. Each ends with the stop token, its stream's end, or after as many
    // events as the scenario can produce.
    let seen: Seen = Arc::default();
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
                        .push(now);
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
            .create_video(authed(create_request(format!("fanout-{tag}-{job_number}"))))
            .await?
            .into_inner();
        complete(&app, &mut driver, &video.id).await?;
        Ok(video.id)
    };

    // Warm-up until every subscriber is live (a stream opened while a completion committed
    // may start just after it).
    for _ in 0..WARMUPS {
        let id = complete_one("warmup").await?;
        let deadline = Instant::now() + DELIVERY_LIMIT;
        while Instant::now() < deadline && delivered(&seen, &id) < SUBSCRIBERS {
            if ready.load(Ordering::Relaxed) >= SUBSCRIBERS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if ready.load(Ordering::Relaxed) >= SUBSCRIBERS {
            break;
        }
    }
    anyhow::ensure!(
        ready.load(Ordering::Relaxed) >= SUBSCRIBERS,
        "only {} of {SUBSCRIBERS} subscribers got an event",
        ready.load(Ordering::Relaxed)
    );

    let (mut ours_p50, mut ours_p99, mut noop_p50, mut noop_p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut steady_p99 = Vec::new();
    for round in 0..ROUNDS {
        let mut noop = None;
        if round % 2 == 1 {
            noop = Some(burst(&theirs).await?);
        }
        let mut latencies = Vec::with_capacity(COMPLETIONS * SUBSCRIBERS);
        for _ in 0..COMPLETIONS {
            let id = complete_one("measured").await?;
            let deadline = Instant::now() + DELIVERY_LIMIT;
            while delivered(&seen, &id) < SUBSCRIBERS {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} of {SUBSCRIBERS} subscribers got the completion of {id}",
                    delivered(&seen, &id)
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let t0 = published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)
                .copied()
                .ok_or_else(|| anyhow::anyhow!("the store never published {id}'s completion"))?;
            let arrivals = seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id)
                .unwrap_or_default();
            latencies.extend(
                arrivals
                    .into_iter()
                    .map(|t| t.saturating_duration_since(t0)),
            );
        }
        let noop = match noop {
            Some(n) => n,
            None => burst(&theirs).await?,
        };
        let steady = steady_noop_p99(&theirs[0]).await?;
        latencies.sort_unstable();
        let (p50, p99) = (
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.99)),
        );
        println!(
            "  round {}/{ROUNDS}: completed event at {SUBSCRIBERS} subscribers p50 {p50:.2} ms, p99 {p99:.2} ms, max {:.2} ms | no-op unary p99 {steady:.2} ms ({} callers) | {SUBSCRIBERS} no-op calls at once p50 {:.2} ms, p99 {:.2} ms | p99 {:.1}x the no-op p99",
            round + 1,
            ms(latencies.last().copied().unwrap_or_default()),
            crate::CALLERS,
            noop.0,
            noop.1,
            p99 / steady
        );
        steady_p99.push(steady);
        ours_p50.push(p50);
        ours_p99.push(p99);
        noop_p50.push(noop.0);
        noop_p99.push(noop.1);
    }

    stop.cancel();
    while background.join_next().await.is_some() {}
    bare.stop().await;
    app.shutdown().await;

    let (p50, p99, n50, n99) = (
        median(ours_p50),
        median(ours_p99),
        median(noop_p50),
        median(noop_p99),
    );
    let steady = median(steady_p99);
    Ok(vec![
        Row::custom(
            "Completion -> `completed` event at 1 000 subscribers: p99 (vs no-op unary p99, 64 callers)",
            format!("{p99:.2} ms"),
            format!("{steady:.2} ms"),
            format!("{:.1}x", p99 / steady),
            format!("<= {TARGET_TIMES:.0}x"),
            p99 <= TARGET_TIMES * steady,
        ),
        Row::custom(
            "Completion -> `completed` event: p99 (vs 1 000 no-op calls fired at once)",
            format!("{p99:.2} ms"),
            format!("{n99:.2} ms"),
            format!("{:.1}x", p99 / n99),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::custom(
            "Completion -> `completed` event: p50",
            format!("{p50:.2} ms"),
            format!("{n50:.2} ms"),
            format!("{:.1}x", p50 / n50),
            "-".into(),
            true,
        )
        .no_verdict(),
    ])
}

/// The p99 of no-op unary `GetVideo` calls as scenario 1 makes them: 64 callers, 50 calls
/// each, one connection.
async fn steady_noop_p99(
    client: &vidgate::pb::video_service_client::VideoServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<f64> {
    let client = client.clone();
    let round = crate::unary_round(50, move |_caller: usize, _i: usize| {
        let mut client = client.clone();
        async move {
            client
                .get_video(authed(pb::GetVideoRequest { id: "noop".into() }))
                .await
                .map(drop)
        }
    })
    .await?;
    Ok(round.p99_ms)
}

/// When the store publishes each job's `completed` event, by job id: an in-process subscriber
/// of the store, in `background`, until `stop`. The instant a completion counts from.
pub fn completions(
    app: &Application,
    stop: &CancellationToken,
    background: &mut JoinSet<()>,
) -> Arc<Mutex<HashMap<String, Instant>>> {
    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut rx = app.store().subscribe();
    let (noted, stop) = (published.clone(), stop.clone());
    background.spawn(async move {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = rx.recv() => event,
            };
            match event {
                Ok(event) if event.job.status() == JobStatus::Completed => {
                    let now = Instant::now();
                    noted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(event.job_id.clone(), now);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    });
    published
}

fn delivered(seen: &Seen, id: &str) -> usize {
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(id)
        .map_or(0, Vec::len)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// [`SUBSCRIBERS`] no-op `GetVideo` calls started together; (p50, p99) in ms, each from the
/// common start.
async fn burst(
    clients: &[vidgate::pb::video_service_client::VideoServiceClient<tonic::transport::Channel>],
) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..SUBSCRIBERS {
        let mut client = clients[i % clients.len()].clone();
        calls.spawn(async move {
            client
                .get_video(authed(pb::GetVideoRequest { id: "noop".into() }))
                .await
                .map(|_| start.elapsed())
        });
    }
    let mut latencies = Vec::with_capacity(SUBSCRIBERS);
    while let Some(done) = calls.join_next().await {
        latencies.push(done??);
    }
    latencies.sort_unstable();
    Ok((
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
    ))
}
