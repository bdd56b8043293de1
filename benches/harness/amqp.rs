//! Scenario 2: AMQP intake into durable jobs next to a bare lapin consume+ack, same broker,
//! same quorum queue, same prefetch, same run.
//!
//! Each round, for each side, N persistent job messages (proto3 JSON `CreateVideoRequest`,
//! distinct `message_id`s) are queued first, then consumed:
//!
//! - bare: a lapin consumer with `basic.qos(PREFETCH)` that acks every delivery;
//! - intake: vidgate started with `Application::build` (SQLite, `synchronous = FULL`, the
//!   dispatcher and the relay off), each message validated and stored durably before its ack.
//!
//! The clock runs from the moment the consumer is registered until the N-th message is acked
//! (bare) or stored (intake: the ack follows the commit at once). Rounds alternate which side
//! is queued and drained first; the table shows the median round of each. A third figure,
//! `Jobs::accept` alone without a broker, is the store-bound ceiling of the intake.
//!
//! The broker is `VIDGATE_TEST_AMQP_URL` (else `VIDGATE_AMQP_URL`, else
//! `amqp://guest:guest@127.0.0.1:5672/%2f`); the queue and exchanges get unique names and are
//! deleted at the end. `VIDGATE_BENCH_AMQP=MESSAGES[,PREFETCH[,ROUNDS]]` changes the sizes.

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use vidgate::api::auth::{AuthConfig, AuthMode, Tenant};
use vidgate::app::Application;
use vidgate::config::{Config, UpstreamMode};
use vidgate::intake::amqp::config::DEFAULT_PREFETCH;
use vidgate::intake::amqp::{AmqpConfig, topology};
use vidgate::jobs::IntakeOrigin;
use vidgate::pb;

use crate::Row;

/// Messages per side per round unless given.
const DEFAULT_MESSAGES: usize = 5_000;
/// Rounds unless given.
const DEFAULT_ROUNDS: usize = 3;
/// Longest a side may take to drain one round before the benchmark gives up.
const ROUND_LIMIT: Duration = Duration::from_secs(300);
/// The target of the issue: the intake at least at this fraction of the bare rate.
const TARGET_FRACTION: f64 = 0.60;

fn arg(position: usize, default: usize) -> usize {
    std::env::var("VIDGATE_BENCH_AMQP")
        .unwrap_or_default()
        .split(',')
        .nth(position)
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(default)
}

fn short(s: &str) -> ShortString {
    ShortString::try_new(s).unwrap_or_default()
}

fn broker_url() -> String {
    ["VIDGATE_TEST_AMQP_URL", "VIDGATE_AMQP_URL"]
        .iter()
        .filter_map(|k| std::env::var(k).ok())
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

fn body(i: usize) -> Vec<u8> {
    let request = pb::CreateVideoRequest {
        model: "turing/veo-3.1-generate".into(),
        prompt: format!("please generate a video of a cat playing piano, take {i}"),
        params: Some(pb::create_video_request::Params::Veo(pb::VeoParams {
            seconds: 6,
            size: "1280x720".into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    serde_json::to_vec(&request).unwrap_or_default()
}

/// Queues `n` persistent messages (publisher confirms) with ids `<round>-<i>`.
async fn queue_messages(
    channel: &Channel,
    exchange: &str,
    tag: &str,
    n: usize,
) -> Result<(), String> {
    for i in 0..n {
        let properties = BasicProperties::default()
            .with_content_type(short("application/json"))
            .with_delivery_mode(2)
            .with_message_id(short(&format!("{tag}-{i}")));
        channel
            .basic_publish(
                short(exchange),
                short("bench"),
                BasicPublishOptions::default(),
                &body(i),
                properties,
            )
            .await
            .map_err(|e| format!("publish: {e}"))?;
    }
    channel
        .wait_for_confirms()
        .await
        .map_err(|e| format!("confirms: {e}"))?;
    Ok(())
}

/// Bare lapin: consume and ack `n` messages; the seconds from `basic.consume` to the last ack.
async fn bare(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
    n: usize,
) -> Result<f64, String> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut consumer = channel
        .basic_consume(
            short(queue),
            short("bench-bare"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut acked = 0;
    while acked < n {
        let next = tokio::time::timeout(ROUND_LIMIT, consumer.next())
            .await
            .map_err(|_| "bare consumer stalled".to_owned())?;
        match next {
            Some(Ok(delivery)) => {
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| e.to_string())?;
                acked += 1;
            }
            other => return Err(format!("bare consumer ended: {other:?}")),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = channel.close(200, short("done")).await;
    Ok(seconds)
}

/// vidgate's intake: start the app on the queued messages; the seconds from the consumer's
/// registration until `n` jobs are stored.
async fn intake(amqp: &AmqpConfig, n: usize, round: usize) -> Result<f64, String> {
    let data_dir = std::env::temp_dir().join(format!(
        "vidgate-bench-amqp-{}-{round}",
        uuid::Uuid::now_v7().simple()
    ));
    let mut config = app_config(&data_dir)?;
    config.amqp = amqp.clone();
    let app = Application::build(config)
        .await
        .map_err(|e| format!("vidgate did not start: {e}"))?;
    let handle = app
        .amqp()
        .cloned()
        .ok_or_else(|| "AMQP not started".to_owned())?;
    let mut status = handle.watch();
    let measured = async {
        status
            .wait_for(|s| s.consuming)
            .await
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        status
            .wait_for(|s| s.created as usize >= n)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(started.elapsed().as_secs_f64())
    };
    let result = tokio::time::timeout(ROUND_LIMIT, measured)
        .await
        .map_err(|_| format!("intake stalled: {:?}", handle.status()))
        .and_then(|r| r);
    let s = handle.status();
    if s.dead_lettered > 0 || s.requeued > 0 {
        eprintln!(
            "warning: {} dead-lettered, {} requeued",
            s.dead_lettered, s.requeued
        );
    }
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result
}

/// The store path alone: `Jobs::accept` (the one intake path, as gRPC and AMQP use it) for
/// `n` requests, `concurrency` at a time, on a fresh app without AMQP; the seconds taken. This
/// is the ceiling of the intake: what is left once the broker is out of the picture.
async fn accept_only(n: usize, concurrency: usize, round: usize) -> Result<f64, String> {
    let data_dir = std::env::temp_dir().join(format!(
        "vidgate-bench-accept-{}-{round}",
        uuid::Uuid::now_v7().simple()
    ));
    let app = Application::build(app_config(&data_dir)?)
        .await
        .map_err(|e| format!("vidgate did not start: {e}"))?;
    let api = app.jobs().clone();
    let tenant = Tenant("bench".into());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut failed = 0usize;
    for i in 0..n {
        if tasks.len() >= concurrency
            && let Some(Ok(Err(_))) = tasks.join_next().await
        {
            failed += 1;
        }
        let (api, tenant) = (api.clone(), tenant.clone());
        let mut request: pb::CreateVideoRequest =
            serde_json::from_slice(&body(i)).map_err(|e| e.to_string())?;
        request.request_id = format!("accept-{round}-{i}");
        tasks.spawn(async move { api.accept(&tenant, request, IntakeOrigin::default()).await });
    }
    while let Some(result) = tasks.join_next().await {
        if !matches!(result, Ok(Ok(_))) {
            failed += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if failed > 0 {
        return Err(format!("{failed} accepts failed"));
    }
    Ok(seconds)
}

fn app_config(data_dir: &std::path::Path) -> Result<Config, String> {
    let mut config = Config::default();
    config.server.grpc_listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    config.admin.listen = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    config.storage.data_dir = data_dir.to_path_buf();
    config.upstream.mode = UpstreamMode::Simulator;
    config.dispatcher.enabled = false;
    config.auth = AuthConfig {
        mode: AuthMode::None,
        ..AuthConfig::default()
    };
    Ok(config)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run() -> Result<Vec<Row>, String> {
    let messages = arg(0, DEFAULT_MESSAGES).max(1);
    let prefetch = u16::try_from(arg(1, usize::from(DEFAULT_PREFETCH)))
        .unwrap_or(DEFAULT_PREFETCH)
        .max(1);
    let rounds = arg(2, DEFAULT_ROUNDS).max(1);
    let url = broker_url();
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("vgbench.{}", &id[id.len() - 12..]);
    let amqp = AmqpConfig {
        url: Some(url.clone()),
        connection_name: prefix.clone(),
        jobs_exchange: format!("{prefix}.jobs"),
        jobs_queue: format!("{prefix}.jobs"),
        dead_exchange: format!("{prefix}.dead"),
        dead_queue: format!("{prefix}.jobs.dead"),
        events_exchange: format!("{prefix}.events"),
        tenant: Some("bench".into()),
        prefetch,
        relay: false,
        ..AmqpConfig::default()
    };
    let connection = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name(format!("{prefix}-bench").into()),
    )
    .await
    .map_err(|e| {
        format!(
            "cannot reach RabbitMQ at {} ({e}); set VIDGATE_TEST_AMQP_URL",
            vidgate::intake::amqp::config::redact_url(&url)
        )
    })?;
    let publisher = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    topology::declare_all(&publisher, &amqp)
        .await
        .map_err(|e| e.to_string())?;

    println!(
        "amqp: AMQP intake vs bare lapin: {messages} persistent messages per side and round, quorum queue, prefetch {prefetch}, {rounds} rounds"
    );
    let (mut bare_s, mut intake_s, mut accept_s) = (Vec::new(), Vec::new(), Vec::new());
    let mut outcome = Ok(());
    for round in 0..rounds {
        let step = async {
            queue_messages(
                &publisher,
                &amqp.jobs_exchange,
                &format!("bare-{round}"),
                messages,
            )
            .await?;
            let b = bare(&connection, &amqp.jobs_queue, prefetch, messages).await?;
            queue_messages(
                &publisher,
                &amqp.jobs_exchange,
                &format!("intake-{round}"),
                messages,
            )
            .await?;
            let i = intake(&amqp, messages, round).await?;
            let a = accept_only(messages, usize::from(prefetch), round).await?;
            Ok::<_, String>((b, i, a))
        };
        match step.await {
            Ok((b, i, a)) => {
                println!(
                    "  round {}/{rounds}: bare {:.0} msg/s | intake {:.0} msg/s | accept() alone {:.0} req/s | {:.1}%",
                    round + 1,
                    messages as f64 / b,
                    messages as f64 / i,
                    messages as f64 / a,
                    b / i * 100.0
                );
                bare_s.push(b);
                intake_s.push(i);
                accept_s.push(a);
            }
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let mut rows = Vec::new();
    if outcome.is_ok() {
        let bare_rate = messages as f64 / median(&mut bare_s);
        let intake_rate = messages as f64 / median(&mut intake_s);
        let accept_rate = messages as f64 / median(&mut accept_s);
        println!(
            "  medians: bare {bare_rate:.0} msg/s, intake {intake_rate:.0} msg/s, accept() alone {accept_rate:.0} req/s (intake = {:.0}% of accept() alone)",
            intake_rate / accept_rate * 100.0
        );
        rows.push(Row::rate(
            &format!("AMQP intake, durable + acked, prefetch {prefetch}: msg/s (vs bare lapin consume+ack)"),
            (intake_rate, bare_rate),
            "/s",
            TARGET_FRACTION,
        ));
        rows.push(
            Row::custom(
                "AMQP: `Jobs::accept` alone, no broker (the store's ceiling)",
                format!("{accept_rate:.0}/s"),
                format!("{bare_rate:.0}/s"),
                format!("{:.1}%", accept_rate / bare_rate * 100.0),
                "-".into(),
                true,
            )
            .no_verdict(),
        );
    }
    for q in [&amqp.jobs_queue, &amqp.dead_queue] {
        let _ = publisher
            .queue_delete(short(q), QueueDeleteOptions::default())
            .await;
    }
    for e in [
        &amqp.jobs_exchange,
        &amqp.dead_exchange,
        &amqp.events_exchange,
    ] {
        let _ = publisher
            .exchange_delete(short(e), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, short("bench done")).await;
    outcome.map(|()| rows)
}

pub async fn scenario() -> anyhow::Result<Vec<Row>> {
    run()
        .await
        .map_err(|e| anyhow::anyhow!("AMQP scenario: {e}"))
}
