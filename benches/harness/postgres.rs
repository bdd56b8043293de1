//! Scenario `pgcreate` (issue #13): durable `CreateVideo` on the PostgreSQL store, 64 callers,
//! against the same number of bare single-row `INSERT ... RETURNING` commits, 64 at a time, from
//! a pool of the same size on the same database. Target: >= 60 %.
//!
//! The database is `VIDGATE_BENCH_DATABASE_URL`, else `VIDGATE_TEST_DATABASE_URL`; the scenario
//! works in a schema of its own and drops it at the end.

use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, Executor};
use tonic::Status;
use vidgate::store::postgres::DEFAULT_POOL_SIZE;

use super::{
    CALLERS, CALLS_PER_CALLER, ROUNDS, Row, WARMUP_CALLS_PER_CALLER, authed, bench_config, connect,
    create_request, median, unary_round,
};

/// Target: durable creates at >= 60 % of bare INSERT commits.
const PG_CREATE_TARGET: f64 = 0.60;

fn database_url() -> anyhow::Result<String> {
    ["VIDGATE_BENCH_DATABASE_URL", "VIDGATE_TEST_DATABASE_URL"]
        .iter()
        .find_map(|key| std::env::var(key).ok().filter(|v| !v.is_empty()))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "pgcreate needs PostgreSQL: set VIDGATE_BENCH_DATABASE_URL (or VIDGATE_TEST_DATABASE_URL), e.g. postgres://postgres@127.0.0.1:5432/test"
            )
        })
}

pub async fn scenario() -> anyhow::Result<Vec<Row>> {
    let url = database_url()?;
    let schema = format!(
        "vgbench_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    println!(
        "pgcreate: {CALLERS} callers x {CALLS_PER_CALLER} calls per round, PostgreSQL schema {schema}, pool {DEFAULT_POOL_SIZE}, dispatcher paused"
    );
    let data = tempfile::Builder::new()
        .prefix("vidgate-bench-")
        .tempdir()?;
    let mut config = bench_config(data.path());
    config.dispatcher.enabled = false;
    config.storage.url = Some(url.clone());
    config.storage.schema = Some(schema.clone());
    let app = vidgate::app::Application::build(config).await?;
    let vidgate = connect(app.grpc_addr()).await?;

    // The baseline: the same pool size, on the same database, one row per commit.
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(DEFAULT_POOL_SIZE)
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await?;
    pool.execute(
        "CREATE TABLE bench_baseline (id BIGSERIAL PRIMARY KEY, request_id TEXT NOT NULL, body TEXT NOT NULL)",
    )
    .await?;

    let create = |client: vidgate::pb::video_service_client::VideoServiceClient<
        tonic::transport::Channel,
    >,
                  tag: String| {
        move |caller: usize, i: usize| {
            let mut client = client.clone();
            let request_id = format!("{tag}-{caller}-{i}");
            async move {
                client
                    .create_video(authed(create_request(request_id)))
                    .await
                    .map(drop)
            }
        }
    };
    let insert = |pool: sqlx::PgPool, tag: String| {
        move |caller: usize, i: usize| {
            let pool = pool.clone();
            let request_id = format!("{tag}-{caller}-{i}");
            async move {
                sqlx::query_scalar::<_, i64>(
                    "INSERT INTO bench_baseline (request_id, body) VALUES ($1, $2) RETURNING id",
                )
                .bind(request_id)
                .bind("a cat playing piano")
                .fetch_one(&pool)
                .await
                .map(drop)
                .map_err(|e| Status::unavailable(e.to_string()))
            }
        }
    };

    unary_round(
        WARMUP_CALLS_PER_CALLER,
        create(vidgate.clone(), "warmup".into()),
    )
    .await?;
    unary_round(
        WARMUP_CALLS_PER_CALLER,
        insert(pool.clone(), "warmup".into()),
    )
    .await?;

    let (mut ours, mut theirs, mut per_commits) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let tag = format!("r{round}-{}", uuid::Uuid::now_v7().simple());
        let commits_before = app.batches_committed();
        let (v, b) = if round % 2 == 0 {
            let v = unary_round(CALLS_PER_CALLER, create(vidgate.clone(), tag.clone())).await?;
            let b = unary_round(CALLS_PER_CALLER, insert(pool.clone(), tag)).await?;
            (v, b)
        } else {
            let b = unary_round(CALLS_PER_CALLER, insert(pool.clone(), tag.clone())).await?;
            let v = unary_round(CALLS_PER_CALLER, create(vidgate.clone(), tag)).await?;
            (v, b)
        };
        let commits = app.batches_committed() - commits_before;
        let per_commit = (CALLERS * CALLS_PER_CALLER) as f64 / commits.max(1) as f64;
        println!(
            "  round {}/{ROUNDS}: vidgate {:.0} creates/s (p50 {:.2} ms, p99 {:.2} ms, {commits} commits, {per_commit:.1} creates each) | INSERT {:.0} commits/s (p50 {:.2} ms, p99 {:.2} ms) | {:.1}%",
            round + 1,
            v.rate,
            v.p50_ms,
            v.p99_ms,
            b.rate,
            b.p50_ms,
            b.p99_ms,
            v.rate / b.rate * 100.0
        );
        per_commits.push(per_commit);
        ours.push(v);
        theirs.push(b);
    }

    app.shutdown().await;
    pool.execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await?;
    pool.close().await;
    let rate = (
        median(ours.iter().map(|r| r.rate)),
        median(theirs.iter().map(|r| r.rate)),
    );
    let p99 = (
        median(ours.iter().map(|r| r.p99_ms)),
        median(theirs.iter().map(|r| r.p99_ms)),
    );
    Ok(vec![
        Row::rate(
            "CreateVideo durable on PostgreSQL, 64 callers: creates/s (vs bare INSERT commits)",
            rate,
            "/s",
            PG_CREATE_TARGET,
        ),
        Row::latency("CreateVideo on PostgreSQL p99 latency", p99),
        Row::custom(
            "CreateVideo on PostgreSQL: creates per commit (group commit)",
            format!("{:.1}", median(per_commits)),
            "1".into(),
            "-".into(),
            "-".into(),
            true,
        )
        .no_verdict(),
    ])
}

/// Creates whose events are timed in `pgevents`.
const EVENT_SAMPLES: usize = 400;
/// Pause between those creates: events are timed one at a time, not as a burst.
const EVENT_GAP: std::time::Duration = std::time::Duration::from_millis(5);
/// Target: an event reaches a subscriber on another instance within 3x the p99 of one on the
/// instance that committed it.
const CROSS_EVENT_TARGET: f64 = 3.0;

/// Scenario `pgevents` (issue #13): two instances on one PostgreSQL schema, a `Subscribe` stream
/// on each; jobs are created on A one at a time and each event's arrival is timed from the
/// start of its create, on A's stream (the committing instance hands its events to its own
/// streams) and on B's (woken by `NOTIFY`, then reading the log). Same mechanism as a
/// completion event: a committed change, then the tail. Then creates/s with 64 callers on one
/// instance, against the same callers spread over both.
pub async fn events_scenario() -> anyhow::Result<Vec<Row>> {
    use std::collections::HashMap;
    use std::time::Instant;
    use tokio::sync::mpsc;
    use vidgate::pb;

    let url = database_url()?;
    let schema = format!(
        "vgbench_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    println!(
        "pgevents: {EVENT_SAMPLES} creates on A, {EVENT_GAP:?} apart, timed to Subscribe streams on A and on B; schema {schema}"
    );
    let data = tempfile::Builder::new()
        .prefix("vidgate-bench-")
        .tempdir()?;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let mut config = bench_config(data.path());
        config.dispatcher.enabled = false;
        config.storage.url = Some(url.clone());
        config.storage.schema = Some(schema.clone());
        apps.push(vidgate::app::Application::build(config).await?);
    }
    let a = connect(apps[0].grpc_addr()).await?;
    let b = connect(apps[1].grpc_addr()).await?;

    // Each stream reports (video id, arrival) on a bounded channel.
    let mut arrivals = Vec::new();
    for client in [a.clone(), b.clone()] {
        let (tx, rx) = mpsc::channel::<(String, Instant)>(EVENT_SAMPLES * 2);
        let mut client = client.clone();
        let mut stream = client
            .subscribe(authed(pb::SubscribeRequest::default()))
            .await?
            .into_inner();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                if tx.send((event.video_id, Instant::now())).await.is_err() {
                    return;
                }
            }
        });
        arrivals.push(rx);
    }
    let mut started: HashMap<String, Instant> = HashMap::new();
    let mut creator = a.clone();
    for i in 0..EVENT_SAMPLES {
        let t0 = Instant::now();
        let video = creator
            .create_video(authed(create_request(format!("ev-{schema}-{i}"))))
            .await?
            .into_inner();
        started.insert(video.id, t0);
        tokio::time::sleep(EVENT_GAP).await;
    }
    let mut latencies: Vec<Vec<std::time::Duration>> = vec![Vec::new(), Vec::new()];
    for (side, rx) in arrivals.iter_mut().enumerate() {
        while latencies[side].len() < EVENT_SAMPLES {
            let (id, at) = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
                .await
                .map_err(|_| anyhow::anyhow!("stream {side} stopped delivering"))?
                .ok_or_else(|| anyhow::anyhow!("stream {side} ended"))?;
            if let Some(t0) = started.get(&id) {
                latencies[side].push(at.duration_since(*t0));
            }
        }
        latencies[side].sort_unstable();
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let same = (
        ms(super::percentile(&latencies[0], 0.50)),
        ms(super::percentile(&latencies[0], 0.99)),
    );
    let across = (
        ms(super::percentile(&latencies[1], 0.50)),
        ms(super::percentile(&latencies[1], 0.99)),
    );
    println!(
        "  create -> event: same instance p50 {:.2} ms p99 {:.2} ms | other instance p50 {:.2} ms p99 {:.2} ms",
        same.0, same.1, across.0, across.1
    );

    // Throughput: 64 callers on A alone, then the same 64 split over A and B, alternating.
    let create = |clients: Vec<
        vidgate::pb::video_service_client::VideoServiceClient<tonic::transport::Channel>,
    >,
                  tag: String| {
        move |caller: usize, i: usize| {
            let mut client = clients[caller % clients.len()].clone();
            let request_id = format!("{tag}-{caller}-{i}");
            async move {
                client
                    .create_video(authed(create_request(request_id)))
                    .await
                    .map(drop)
            }
        }
    };
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let tag = format!("s{round}-{}", uuid::Uuid::now_v7().simple());
        let first = round % 2 == 0;
        for solo in [first, !first] {
            let clients = if solo {
                vec![a.clone()]
            } else {
                vec![a.clone(), b.clone()]
            };
            let r = unary_round(CALLS_PER_CALLER, create(clients, format!("{tag}-{solo}"))).await?;
            if solo {
                one.push(r.rate)
            } else {
                two.push(r.rate)
            }
        }
        println!(
            "  round {}/{ROUNDS}: one instance {:.0} creates/s | two instances {:.0} creates/s",
            round + 1,
            one[round],
            two[round]
        );
    }

    for app in apps {
        app.shutdown().await;
    }
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    pool.execute(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .await?;
    pool.close().await;

    let ratio = across.1 / same.1;
    Ok(vec![
        Row::custom(
            "Create -> event p99 at a Subscribe on another instance (vs on the committing one)",
            format!("{:.2} ms", across.1),
            format!("{:.2} ms", same.1),
            format!("{ratio:.2}x"),
            format!("<= {CROSS_EVENT_TARGET:.0}x"),
            ratio <= CROSS_EVENT_TARGET,
        ),
        Row::custom(
            "CreateVideo on PostgreSQL, 64 callers over two instances (vs one instance)",
            format!("{:.0}/s", median(two.iter().copied())),
            format!("{:.0}/s", median(one.iter().copied())),
            format!(
                "{:.1}%",
                median(two.iter().copied()) / median(one.iter().copied()) * 100.0
            ),
            "-".into(),
            true,
        )
        .no_verdict(),
    ])
}
