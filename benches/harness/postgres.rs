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
