//! Scenario 3: 10 000 jobs in flight at once against the simulator at compressed timings.
//!
//! The simulator runs in a child process ([`crate::extsim`]) so that the figures are the
//! gateway's: its peak RSS (VmHWM of the harness process: gateway, gRPC client, no simulator),
//! its CPU seconds per 1 000 status polls (measured over the window in which polling is the
//! only thing happening: from the simulator's 10 000th create to its first content request),
//! and the upstream calls per job as the simulator counted them, next to the minimum the poll
//! schedule needs.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::task::JoinSet;

use crate::extsim::{ExtSim, SimSettings, SimSummary};
use crate::{Row, authed, connect, cpu_seconds, create_request, ext_config, peak_rss_mib};

const JOBS: usize = 10_000;
const CALLERS: usize = 100;
/// Simulator: queued, then processing; a task is done 20 s after its create.
const QUEUED_MS: u64 = 4_000;
const PROCESSING_MS: u64 = 16_000;
/// Dispatcher: first poll 12 s after the create, then every 5 s (no jitter), so the polls fall
/// at 12 s (processing), 17 s (processing) and 22 s (completed): 3 status calls, 2 s or more
/// away from any state change.
const FIRST_POLL_MS: u64 = 12_000;
const POLL_INTERVAL_MS: u64 = 5_000;
/// Longest the whole scenario may take.
const DEADLINE: Duration = Duration::from_secs(300);
/// How often the harness asks the simulator (its answer costs the child, not the gateway).
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Target: peak RSS at most this many MB (10^6 bytes).
const RSS_TARGET_MB: f64 = 150.0;

/// Status calls the schedule needs: the first poll at `FIRST_POLL_MS`, then one every
/// `POLL_INTERVAL_MS` until one falls at or after the task's end.
fn schedule_gets() -> u64 {
    let done = QUEUED_MS + PROCESSING_MS;
    1 + done
        .saturating_sub(FIRST_POLL_MS)
        .div_ceil(POLL_INTERVAL_MS)
}

pub async fn scenario() -> anyhow::Result<Vec<Row>> {
    let gets = schedule_gets();
    println!(
        "inflight: {JOBS} jobs, simulator in a child process ({QUEUED_MS} ms queued + {PROCESSING_MS} ms processing), first poll {FIRST_POLL_MS} ms, then every {POLL_INTERVAL_MS} ms: schedule = 1 create + {gets} status + 1 content call per job"
    );
    let mut sim = ExtSim::start(SimSettings {
        queued_ms: QUEUED_MS,
        processing_ms: PROCESSING_MS,
        content_min_size: 0,
    })
    .await?;
    let data = tempfile::Builder::new()
        .prefix("vidgate-bench-")
        .tempdir()?;
    let mut config = ext_config(data.path(), &sim.base_url);
    config.dispatcher.first_poll_after_ms = FIRST_POLL_MS;
    config.dispatcher.poll_interval_ms = POLL_INTERVAL_MS;
    config.dispatcher.poll_jitter = 0.0;
    config.upstream.limits.requests_per_second = 10_000;
    let app = vidgate::app::Application::build(config).await?;
    let client = connect(app.grpc_addr()).await?;
    crate::reset_peak_rss();
    let started = Instant::now();
    let cpu_start = cpu_seconds();

    // 10 000 creates, CALLERS at a time, each with its own prompt (so a double create would
    // show in the simulator's per-prompt count).
    let mut callers = JoinSet::new();
    for caller in 0..CALLERS {
        let client = client.clone();
        callers.spawn(async move {
            for i in (caller..JOBS).step_by(CALLERS) {
                let mut request = create_request(format!("inflight-{i}"));
                request.prompt = format!("inflight benchmark job {i}: a lighthouse at dusk");
                client.clone().create_video(authed(request)).await?;
            }
            Ok::<_, tonic::Status>(())
        });
    }
    while let Some(done) = callers.join_next().await {
        done??;
    }
    let created_in = started.elapsed();
    println!(
        "  {JOBS} jobs accepted in {:.1} s",
        created_in.as_secs_f64()
    );

    let at_creates = wait_for(&mut sim, started, |s| s.creates >= JOBS as u64).await?;
    let cpu_polls_from = cpu_seconds();
    println!(
        "  all {JOBS} submitted upstream after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let at_content = wait_for(&mut sim, started, |s| s.contents > 0).await?;
    let cpu_polls_to = cpu_seconds();
    let window_polls = at_content.gets.saturating_sub(at_creates.gets);
    println!(
        "  polling window: {window_polls} status calls, {:.2} CPU s (gateway process)",
        cpu_polls_to - cpu_polls_from
    );

    let store = app.store();
    loop {
        let completed = store
            .count_by_status()
            .await?
            .into_iter()
            .find(|(s, _)| s == "completed")
            .map_or(0, |(_, n)| n);
        if completed >= JOBS as u64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < DEADLINE,
            "only {completed} of {JOBS} jobs completed within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total_s = started.elapsed().as_secs_f64();
    let cpu_total = cpu_seconds() - cpu_start;
    let peak = peak_rss_mib();
    let end = sim.stats().await?;
    let sim_cpu = sim.cpu_seconds();
    let sim_rss = sim.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
    app.shutdown().await;
    sim.stop().await;

    let per_job = |n: u64| n as f64 / JOBS as f64;
    println!(
        "  all completed after {total_s:.1} s; gateway CPU {cpu_total:.2} s in all ({:.2} ms per job); simulator child: CPU {sim_cpu:.2} s, peak RSS {sim_rss:.1} MiB",
        cpu_total * 1e3 / JOBS as f64
    );
    println!(
        "  upstream calls: {} creates, {} status, {} content, {} last-frame; per task: status {}..={}, content <= {}; creates per prompt <= {}; tasks evicted {}",
        end.creates,
        end.gets,
        end.contents,
        end.last_frames,
        end.min_gets_per_task,
        end.max_gets_per_task,
        end.max_contents_per_task,
        end.max_creates_per_prompt,
        end.tasks_evicted
    );
    let schedule_total = 2 + gets;
    let calls = per_job(end.creates + end.gets + end.contents + end.last_frames);
    let within = end.creates == JOBS as u64
        && end.max_creates_per_prompt <= 1
        && end.max_gets_per_task <= gets
        && end.max_contents_per_task <= 1
        && end.last_frames == 0
        && end.tasks_evicted == 0;
    let peak_mb = peak.map_or(f64::NAN, |m| m * 1.048_576);
    Ok(vec![
        Row::custom(
            "In flight, 10 000 jobs: peak RSS (gateway + client; simulator apart)",
            format!("{peak_mb:.1} MB"),
            "-".into(),
            "-".into(),
            format!("<= {RSS_TARGET_MB:.0} MB"),
            peak_mb <= RSS_TARGET_MB,
        ),
        Row::custom(
            "In flight: gateway CPU s per 1 000 status polls",
            format!(
                "{:.3} s",
                (cpu_polls_to - cpu_polls_from) / (window_polls.max(1) as f64 / 1e3)
            ),
            "-".into(),
            "-".into(),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::custom(
            "In flight: upstream calls per job (create + status + content)",
            format!(
                "{calls:.2} ({:.2} + {:.2} + {:.2}; status <= {} per job)",
                per_job(end.creates),
                per_job(end.gets),
                per_job(end.contents),
                end.max_gets_per_task
            ),
            format!("{schedule_total} (1 + {gets} + 1)"),
            format!("{:.2}x", calls / schedule_total as f64),
            "none beyond schedule".into(),
            within,
        ),
    ])
}

/// Asks the simulator every [`WATCH_EVERY`] until `done` holds.
async fn wait_for(
    sim: &mut ExtSim,
    started: Instant,
    done: impl Fn(&SimSummary) -> bool,
) -> anyhow::Result<SimSummary> {
    loop {
        let stats = sim.stats().await.context("asking the simulator")?;
        if done(&stats) {
            return Ok(stats);
        }
        anyhow::ensure!(
            started.elapsed() < DEADLINE,
            "the simulator did not get there within {DEADLINE:?}: {stats:?}"
        );
        tokio::time::sleep(WATCH_EVERY).await;
    }
}
