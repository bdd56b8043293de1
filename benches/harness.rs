//! vidgate's benchmark harness: `cargo bench --bench harness [-- SCENARIO...]`, one table for
//! every scenario of issue #5. Scenario names: `create` (1), `amqp` (2), `inflight` (3),
//! `download` (4), `watch` (5), `fanout` (6), `e2e` (7), `pgcreate` (8), `pgevents` (9),
//! `subscribers` (10, issue #14: peak RSS of never-read against reading subscribers),
//! `s3download` (11, issue #15: `DownloadVideo` from an S3-compatible store), `s3e2e` (12,
//! issue #15: scenario 7 with videos in S3 against a local directory), `s3upload` (13, issue
//! #15: a 100 MB job's completion with S3 at several part sizes and concurrencies), `webhooks`
//! (14, issue #16: completion -> webhook at 100 endpoints against completion -> `Subscribe`);
//! none = all. With more than one, each scenario runs in a fresh child process (this executable again), so its peak RSS is its own.
//!
//! Each scenario starts the real service with [`Application::build`] (port 0, a temp data dir,
//! the in-process upstream simulator, or one in a child process where the gateway's CPU and
//! memory per job are measured; see `harness/extsim.rs`) and, in the same process and runtime,
//! its baseline: mostly a bare tonic server of the same `VideoService` that does no work,
//! called through the same client setup (one `VideoServiceClient` per `Channel`, the same
//! token), in interleaved rounds so that machine noise hits both sides; the table shows the
//! median round of each side. Nothing here passes or fails on a figure: the table only says
//! whether a target is met. BENCHMARKS.md describes every scenario and its baseline.
//!
//! Every loop is bounded by a count or a deadline, every channel is bounded, and every server
//! listens on 127.0.0.1.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use vidgate::api::auth::{AuthConfig, AuthMode, Tenant, TokenEntry, token_hash};
use vidgate::app::Application;
use vidgate::config::{Config, SyncMode, UpstreamMode};
use vidgate::jobs::IntakeOrigin;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::pb::video_service_server::{VideoService, VideoServiceServer};
use vidgate::upstream::sim::SimConfig;

#[path = "harness/amqp.rs"]
mod amqp;
#[path = "harness/e2e.rs"]
mod e2e;
#[path = "harness/extsim.rs"]
mod extsim;
#[path = "harness/fanout.rs"]
mod fanout;
#[path = "harness/inflight.rs"]
mod inflight;
#[path = "harness/postgres.rs"]
mod postgres;
#[path = "../tests/support/s3.rs"]
#[allow(dead_code)]
mod s3;
#[path = "harness/subscribers.rs"]
mod subscribers;
#[path = "harness/watch.rs"]
mod watch;
#[path = "harness/webhooks.rs"]
mod webhooks;

/// The allocator of the `vidgate` binary (src/main.rs), so that in-process scenarios measure
/// what production runs; `--no-default-features` measures the system allocator instead.
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Interleaved rounds per side; the median is reported, so one noisy round does not decide.
const ROUNDS: usize = 5;
/// Concurrent `CreateVideo` callers (the brief's figure).
const CALLERS: usize = 64;
/// Measured calls per caller and round: 12 800 calls a round, enough for a stable p99.
const CALLS_PER_CALLER: usize = 200;
/// Unmeasured calls per caller before the first round: connections open, SQLite's cache and the
/// allocator warm.
const WARMUP_CALLS_PER_CALLER: usize = 5;
/// Size of the stored video downloaded in the download scenario.
const VIDEO_BYTES: u64 = 100_000_000;
/// Whole-video downloads per round (one after another).
const DOWNLOADS_PER_ROUND: usize = 10;
/// vidgate's chunk size (`events.chunk_bytes`; default 64 KiB, or `VIDGATE_BENCH_CHUNK_BYTES`
/// to compare sizes); the baseline sends the same.
fn chunk_bytes() -> usize {
    std::env::var("VIDGATE_BENCH_CHUNK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0 && n <= vidgate::events::MAX_CHUNK_BYTES)
        .unwrap_or(vidgate::events::DEFAULT_CHUNK_BYTES)
}
/// Target: durable creates at >= 20 % of a no-op RPC's rate.
const CREATE_TARGET: f64 = 0.20;
/// Target: downloads at >= 65 % of a bare server stream's throughput.
const DOWNLOAD_TARGET: f64 = 0.65;
/// The one tenant's token (auth mode "tokens", so the token check is part of the measurement).
const TOKEN: &str = "tok-bench-0123456789";
/// How long the 100 MB job may take to complete before the scenario gives up.
const JOB_DEADLINE: Duration = Duration::from_secs(300);

/// The scenarios, in the order they run, with the numbers.
const SCENARIOS: [(&str, u8); 14] = [
    ("create", 1),
    ("amqp", 2),
    ("inflight", 3),
    ("download", 4),
    ("watch", 5),
    ("fanout", 6),
    ("e2e", 7),
    ("pgcreate", 8),
    ("pgevents", 9),
    ("subscribers", 10),
    ("s3download", 11),
    ("s3e2e", 12),
    ("s3upload", 13),
    ("webhooks", 14),
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The simulator child of `inflight` and `e2e` is this executable again.
    if std::env::var(extsim::ROLE_ENV).as_deref() == Ok("sim") {
        return extsim::child_main().await;
    }
    // `cargo bench` passes `--bench`; flags are ignored, words pick scenarios.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let known: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
    if let Some(bad) = picked.iter().find(|p| !known.contains(&p.as_str())) {
        eprintln!(
            "unknown scenario {bad:?}; known: {} (none = all)",
            known.join(", ")
        );
        std::process::exit(2);
    }
    let chosen: Vec<(&str, u8)> = SCENARIOS
        .into_iter()
        .filter(|(name, _)| picked.is_empty() || picked.iter().any(|p| p == name))
        .collect();

    // A scenario child: run the one scenario, hand its rows and note to the parent.
    if std::env::var(SCENARIO_CHILD_ENV).is_ok() {
        for (name, number) in chosen {
            let (rows, note) = run_scenario(name, number).await;
            for row in rows {
                println!("{ROW_PREFIX}{}", serde_json::to_string(&row)?);
            }
            println!("{NOTE_PREFIX}{note}");
        }
        return Ok(());
    }

    println!(
        "vidgate benchmark harness: {} CPUs, load average {} at the start; allocator: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        if cfg!(all(target_os = "linux", feature = "jemalloc")) {
            "jemalloc"
        } else {
            "system"
        }
    );
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if let [(name, number)] = chosen[..] {
        let (found, note) = run_scenario(name, number).await;
        rows.extend(found);
        notes.push(note);
    } else {
        // Several scenarios: each in a fresh process, so that memory one scenario's heap kept
        // (the allocator rarely gives it back) does not count in the next one's peak RSS.
        for (name, number) in chosen {
            let (found, note) = run_in_child(name, number).await;
            rows.extend(found);
            notes.push(note);
        }
    }

    println!();
    println!(
        "vidgate benchmark harness: {} CPUs, load average {} at the end; medians of interleaved rounds",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!();
    print_table(&rows);
    println!();
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

/// Set in a scenario child's environment.
const SCENARIO_CHILD_ENV: &str = "VIDGATE_BENCH_SCENARIO_CHILD";
/// A scenario child's lines that carry a table row (JSON) or the RSS note to the parent.
const ROW_PREFIX: &str = "@@row ";
const NOTE_PREFIX: &str = "@@note ";

/// Runs one scenario in this process: its rows (a failure becomes a FAILED row, so one
/// scenario failing, with no broker say, does not hide the others' figures) and a note with
/// its peak RSS, time and CPU.
async fn run_scenario(name: &str, number: u8) -> (Vec<Row>, String) {
    println!();
    let peak_reset = reset_peak_rss();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let result = match name {
        "create" => create_scenario().await,
        "amqp" => amqp::scenario().await,
        "inflight" => inflight::scenario().await,
        "download" => download_scenario().await,
        "watch" => watch::scenario().await,
        "fanout" => fanout::scenario().await,
        "pgcreate" => postgres::scenario().await,
        "pgevents" => postgres::events_scenario().await,
        "subscribers" => subscribers_scenario().await,
        "s3download" => s3_download_scenario().await,
        "s3e2e" => e2e::s3_scenario(&s3::s3()).await,
        "s3upload" => s3_upload_scenario().await,
        "webhooks" => webhooks::scenario().await,
        _ => e2e::scenario().await,
    };
    let rows = match result {
        Ok(found) => found.into_iter().map(|r| r.numbered(number)).collect(),
        Err(e) => {
            eprintln!("scenario {name} failed: {e:#}");
            vec![failed_row(name, number)]
        }
    };
    let note = format!(
        "{}; {:.1} s, {:.1} CPU s (this process)",
        rss_note(name, peak_reset),
        started.elapsed().as_secs_f64(),
        cpu_seconds() - cpu
    );
    (rows, note)
}

/// Subscribers of one tenant while fat jobs complete: 2,000 that never read against 2,000 that
/// read, each run a fresh `vidgate serve` child (issue #14). Rows: the child's peak RSS
/// (`VmHWM`) per side, target <= 2x; and what stays resident once every stream closed.
async fn subscribers_scenario() -> anyhow::Result<Vec<Row>> {
    const STREAMS: usize = 2_000;
    const JOBS: usize = 40;
    let runs: usize = std::env::var("VIDGATE_BENCH_SUBSCRIBER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    const TARGET: f64 = 2.0;
    println!(
        "subscribers: {STREAMS} Subscribe streams that never read vs {STREAMS} that read, {JOBS} jobs with a 16,000-character prompt and 64 labels of 256 characters, {runs} runs per side interleaved, vidgate in a child process"
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_vidgate"));
    let settings = |read: bool, run: usize| subscribers::Settings {
        streams: STREAMS,
        jobs: JOBS,
        read,
        settle: Duration::from_secs(12),
        env: Vec::new(),
        work_dir: std::env::temp_dir().join(format!(
            "vidgate-bench-subscribers-{}-{run}-{}",
            std::process::id(),
            if read { "reading" } else { "never-read" }
        )),
    };
    let (mut never, mut reading) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for read in if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let figures = subscribers::run(binary, &settings(read, run)).await?;
            println!(
                "  run {run} {}: idle {} MiB, streams open {} MiB, peak {} MiB, after close {} MiB; {} events read, {} lagged, {} failed; jobs done in {:.1} s",
                if read { "reading" } else { "never-read" },
                figures.idle_kib / 1024,
                figures.open_kib / 1024,
                figures.peak_kib / 1024,
                figures.settled_kib / 1024,
                figures.events_read,
                figures.lagged,
                figures.failed,
                figures.jobs_took.as_secs_f64()
            );
            if let Some(failure) = &figures.first_failure {
                println!("  first failure: {failure}");
            }
            if read { &mut reading } else { &mut never }.push(figures);
        }
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let peak = |runs: &[subscribers::Figures]| median(runs.iter().map(|f| mib(f.peak_kib)));
    let (never_peak, reading_peak) = (peak(&never), peak(&reading));
    let ratio = never_peak / reading_peak;
    let kept = |runs: &[subscribers::Figures]| {
        median(
            runs.iter()
                .map(|f| mib(f.settled_kib.saturating_sub(f.open_kib))),
        )
    };
    Ok(vec![
        Row::custom(
            &format!("subscribers: peak RSS, {STREAMS} never-read (vidgate) vs reading (baseline)"),
            format!("{never_peak:.0} MiB"),
            format!("{reading_peak:.0} MiB"),
            format!("{ratio:.2}x"),
            format!("<= {TARGET:.0}x"),
            ratio <= TARGET,
        ),
        Row::custom(
            "subscribers: RSS kept after every stream closed, never-read (vidgate) vs reading",
            format!("{:.0} MiB", kept(&never)),
            format!("{:.0} MiB", kept(&reading)),
            "-".into(),
            "-".into(),
            true,
        )
        .no_verdict(),
    ])
}

fn failed_row(name: &str, number: u8) -> Row {
    Row::unavailable(&format!("{number}. {name}"), "FAILED (see above)")
}

/// Runs one scenario in a child process (this executable again), passing its progress lines
/// through and collecting its rows and note.
async fn run_in_child(name: &str, number: u8) -> (Vec<Row>, String) {
    use tokio::io::AsyncBufReadExt;
    let spawned = std::env::current_exe().and_then(|exe| {
        tokio::process::Command::new(exe)
            .arg(name)
            .env(SCENARIO_CHILD_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("scenario {name}: cannot start a child process: {e}");
            return (vec![failed_row(name, number)], format!("{name}: not run"));
        }
    };
    let (mut rows, mut note) = (Vec::new(), format!("{name}: no note"));
    if let Some(stdout) = child.stdout.take() {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        // Ends when the child closes its stdout (it exits).
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(json) = line.strip_prefix(ROW_PREFIX) {
                match serde_json::from_str::<Row>(json) {
                    Ok(row) => rows.push(row),
                    Err(e) => eprintln!("scenario {name}: unreadable row {json:?}: {e}"),
                }
            } else if let Some(text) = line.strip_prefix(NOTE_PREFIX) {
                note = text.to_owned();
            } else {
                println!("{line}");
            }
        }
    }
    match child.wait().await {
        Ok(status) if status.success() && !rows.is_empty() => {}
        other => {
            eprintln!("scenario {name}: the child process ended with {other:?}");
            if rows.is_empty() {
                rows.push(failed_row(name, number));
            }
        }
    }
    (rows, note)
}

async fn create_scenario() -> anyhow::Result<Vec<Row>> {
    println!(
        "create: {CALLERS} callers x {CALLS_PER_CALLER} calls per round, SQLite synchronous = {:?}, dispatcher paused",
        sync_mode()
    );
    let data = tempfile::Builder::new()
        .prefix("vidgate-bench-")
        .tempdir()?;
    let mut config = bench_config(data.path());
    config.dispatcher.enabled = false;
    let app = Application::build(config).await?;
    let vidgate = connect(app.grpc_addr()).await?;
    let noop = NoopServer::start(Bytes::new()).await?;
    let baseline = connect(noop.addr).await?;

    let create = |client: VideoServiceClient<Channel>, tag: String| {
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
    let get = |client: VideoServiceClient<Channel>| {
        move |_caller: usize, _i: usize| {
            let mut client = client.clone();
            async move {
                client
                    .get_video(authed(pb::GetVideoRequest { id: "noop".into() }))
                    .await
                    .map(drop)
            }
        }
    };

    unary_round(
        WARMUP_CALLS_PER_CALLER,
        create(vidgate.clone(), "warmup".into()),
    )
    .await?;
    unary_round(WARMUP_CALLS_PER_CALLER, get(baseline.clone())).await?;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut per_commits = Vec::new();
    for round in 0..ROUNDS {
        // Alternate who goes first, so neither side always runs on a warmer (or hotter) machine.
        let tag = format!("r{round}-{}", uuid::Uuid::now_v7().simple());
        let commits_before = app.batches_committed();
        let (v, b) = if round % 2 == 0 {
            let v = unary_round(CALLS_PER_CALLER, create(vidgate.clone(), tag)).await?;
            let b = unary_round(CALLS_PER_CALLER, get(baseline.clone())).await?;
            (v, b)
        } else {
            let b = unary_round(CALLS_PER_CALLER, get(baseline.clone())).await?;
            let v = unary_round(CALLS_PER_CALLER, create(vidgate.clone(), tag)).await?;
            (v, b)
        };
        let commits = app.batches_committed() - commits_before;
        let per_commit = (CALLERS * CALLS_PER_CALLER) as f64 / commits.max(1) as f64;
        println!(
            "  round {}/{ROUNDS}: vidgate {:.0} creates/s (p50 {:.2} ms, p99 {:.2} ms, {:.0} CPU us each, {commits} commits, {per_commit:.1} creates each) | no-op {:.0} calls/s (p50 {:.2} ms, p99 {:.2} ms, {:.0} CPU us each) | {:.1}%",
            round + 1,
            v.rate,
            v.p50_ms,
            v.p99_ms,
            v.cpu_us,
            b.rate,
            b.p50_ms,
            b.p99_ms,
            b.cpu_us,
            v.rate / b.rate * 100.0
        );
        per_commits.push(per_commit);
        ours.push(v);
        theirs.push(b);
    }

    // The same creates without gRPC: `Jobs::accept` (validation and the store), at the
    // same concurrency, so the table shows which side of the API the time is spent on.
    let (mut alone, mut alone_cpu) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let api = app.jobs().clone();
        let tag = format!("a{round}-{}", uuid::Uuid::now_v7().simple());
        let accept = move |caller: usize, i: usize| {
            let api = api.clone();
            let request = create_request(format!("{tag}-{caller}-{i}"));
            async move {
                api.accept(&Tenant("bench".into()), request, IntakeOrigin::default())
                    .await
                    .map(drop)
                    .map_err(|e| Status::internal(e.to_string()))
            }
        };
        let round = unary_round(CALLS_PER_CALLER, accept).await?;
        alone.push(round.rate);
        alone_cpu.push(round.cpu_us);
    }
    println!(
        "  Jobs::accept alone (no gRPC), {CALLERS} at a time: {} creates/s; {} CPU us each",
        alone
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        alone_cpu
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    noop.stop().await;
    app.shutdown().await;
    let rate = (
        median(ours.iter().map(|r| r.rate)),
        median(theirs.iter().map(|r| r.rate)),
    );
    let p50 = (
        median(ours.iter().map(|r| r.p50_ms)),
        median(theirs.iter().map(|r| r.p50_ms)),
    );
    let p99 = (
        median(ours.iter().map(|r| r.p99_ms)),
        median(theirs.iter().map(|r| r.p99_ms)),
    );
    Ok(vec![
        Row::rate(
            "CreateVideo durable, 64 callers: creates/s (vs no-op GetVideo)",
            rate,
            "/s",
            CREATE_TARGET,
        ),
        Row::custom(
            "CreateVideo without gRPC: `Jobs::accept` alone, 64 at a time (vs no-op GetVideo)",
            format!("{:.0}/s", median(alone.iter().copied())),
            format!("{:.0}/s", rate.1),
            format!("{:.1}%", median(alone.iter().copied()) / rate.1 * 100.0),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::custom(
            "CreateVideo: CPU us per call, whole process (client + server + store)",
            format!("{:.0} us", median(ours.iter().map(|r| r.cpu_us))),
            format!("{:.0} us", median(theirs.iter().map(|r| r.cpu_us))),
            format!(
                "{:.1}x",
                median(ours.iter().map(|r| r.cpu_us)) / median(theirs.iter().map(|r| r.cpu_us))
            ),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::latency("CreateVideo p50 latency", p50),
        Row::latency("CreateVideo p99 latency", p99),
        Row::custom(
            "CreateVideo: creates per SQLite commit (group commit)",
            format!("{:.1}", median(per_commits)),
            "-".into(),
            "-".into(),
            "-".into(),
            true,
        )
        .no_verdict(),
    ])
}

fn create_request(request_id: String) -> pb::CreateVideoRequest {
    pb::CreateVideoRequest {
        request_id,
        model: "turing/veo-3.1-generate".into(),
        prompt: "a cat playing the piano in a sunlit room, benchmark".into(),
        params: Some(pb::create_video_request::Params::Veo(pb::VeoParams {
            seconds: 4,
            size: "1280x720".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// One round's figures.
struct UnaryRound {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU microseconds of this process (server, client and all) per call.
    cpu_us: f64,
}

/// `CALLERS` tasks each make `per_caller` calls one after another; every call must succeed.
async fn unary_round<F, Fut>(per_caller: usize, call: F) -> anyhow::Result<UnaryRound>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let started = Instant::now();
    let cpu = cpu_seconds();
    let mut callers = JoinSet::new();
    for caller in 0..CALLERS {
        let call = call.clone();
        callers.spawn(async move {
            let mut latencies = Vec::with_capacity(per_caller);
            for i in 0..per_caller {
                let t = Instant::now();
                call(caller, i).await?;
                latencies.push(t.elapsed());
            }
            Ok::<_, Status>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(CALLERS * per_caller);
    while let Some(done) = callers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(UnaryRound {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        p99_ms: percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        cpu_us: (cpu_seconds() - cpu) * 1e6 / latencies.len().max(1) as f64,
    })
}

async fn download_scenario() -> anyhow::Result<Vec<Row>> {
    println!(
        "download: {} MB video, {DOWNLOADS_PER_ROUND} whole downloads per round, {} KiB chunks",
        VIDEO_BYTES / 1_000_000,
        chunk_bytes() / 1024
    );
    let stored = StoredVideo::prepare(VIDEO_BYTES).await?;
    let (vidgate, size) = (&stored.client, stored.size);

    let chunk = Bytes::from(vec![0x5a_u8; chunk_bytes()]);
    let bare = NoopServer::start(chunk).await?;
    let baseline = connect(bare.addr).await?;

    download_round(vidgate, &stored.id, size, 1).await?;
    download_round(&baseline, "bare", size, 1).await?;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..ROUNDS {
        let (v, b) = if round % 2 == 0 {
            let v = download_round(vidgate, &stored.id, size, DOWNLOADS_PER_ROUND).await?;
            let b = download_round(&baseline, "bare", size, DOWNLOADS_PER_ROUND).await?;
            (v, b)
        } else {
            let b = download_round(&baseline, "bare", size, DOWNLOADS_PER_ROUND).await?;
            let v = download_round(vidgate, &stored.id, size, DOWNLOADS_PER_ROUND).await?;
            (v, b)
        };
        println!(
            "  round {}/{ROUNDS}: vidgate {v:.0} MB/s | bare stream {b:.0} MB/s | {:.1}%",
            round + 1,
            v / b * 100.0
        );
        ours.push(v);
        theirs.push(b);
    }

    bare.stop().await;
    stored.stop().await;
    Ok(vec![Row::rate(
        "DownloadVideo 100 MB: MB/s (vs bare 64 KiB server stream)",
        (median(ours), median(theirs)),
        " MB/s",
        DOWNLOAD_TARGET,
    )])
}

/// Scenario 11 (issue #15): whole `DownloadVideo`s of a 100 MB video kept in an S3-compatible
/// server (`VIDGATE_TEST_S3_ENDPOINT`, else a moto server started here, as in the tests)
/// against bare ranged GETs of the same object from the same server with `object_store`'s S3
/// client (the one vidgate uses), read to the end; interleaved rounds, medians.
async fn s3_download_scenario() -> anyhow::Result<Vec<Row>> {
    const DOWNLOADS: usize = 3;
    const S3_ROUNDS: usize = 3;
    const TARGET: f64 = 0.80;
    use object_store::ObjectStore as _;
    let server = s3::s3();
    let prefix = server.prefix("bench-download");
    println!(
        "s3download: {} MB video in {} ({}), {DOWNLOADS} whole downloads per round, {S3_ROUNDS} rounds, {} KiB chunks",
        VIDEO_BYTES / 1_000_000,
        server.endpoint,
        if std::env::var(s3::TEST_ENDPOINT_ENV).is_ok() {
            "given"
        } else {
            "moto, started here"
        },
        chunk_bytes() / 1024
    );
    let blob = server.blob_config(&prefix);
    let stored = StoredVideo::prepare_with(VIDEO_BYTES, |c| c.blob = blob).await?;
    let (vidgate, size) = (&stored.client, stored.size);
    let bucket = server.client();
    let key = object_store::path::Path::from(format!("{prefix}/videos/{}.mp4", stored.id));
    let bare = |n: usize| {
        let (bucket, key) = (bucket.clone(), key.clone());
        async move {
            let started = Instant::now();
            for _ in 0..n {
                let got = bucket
                    .get_opts(
                        &key,
                        object_store::GetOptions::new().with_range(Some(0..size)),
                    )
                    .await?;
                let mut body = got.into_stream();
                let mut read = 0u64;
                while let Some(chunk) = futures::StreamExt::next(&mut body).await {
                    read += chunk?.len() as u64;
                }
                anyhow::ensure!(read == size, "read {read} of {size} bytes");
            }
            Ok::<f64, anyhow::Error>(
                (size * n as u64) as f64 / 1e6 / started.elapsed().as_secs_f64(),
            )
        }
    };
    download_round(vidgate, &stored.id, size, 1).await?;
    bare(1).await?;
    // Where the CPU goes, per MB: this process (vidgate and its gRPC client, or the bare GET's
    // client) and the rest of the machine (mostly the S3 server): on 2 cores, the S3 server and
    // vidgate's extra gRPC leg share the same CPUs, which caps the ratio.
    let mb = (size * DOWNLOADS as u64) as f64 / 1e6;
    let measured = |rate: f64, own0: f64, all0: f64| {
        let (own, all) = (cpu_seconds() - own0, machine_busy_seconds() - all0);
        (rate, own * 1e3 / mb, (all - own) * 1e3 / mb)
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let (mut ours_cpu, mut theirs_cpu) = (Vec::new(), Vec::new());
    for round in 0..S3_ROUNDS {
        let vidgate_round = || async {
            let (own0, all0) = (cpu_seconds(), machine_busy_seconds());
            let rate = download_round(vidgate, &stored.id, size, DOWNLOADS).await?;
            Ok::<_, anyhow::Error>(measured(rate, own0, all0))
        };
        let bare_round = || async {
            let (own0, all0) = (cpu_seconds(), machine_busy_seconds());
            let rate = bare(DOWNLOADS).await?;
            Ok::<_, anyhow::Error>(measured(rate, own0, all0))
        };
        let (v, b) = if round % 2 == 0 {
            let v = vidgate_round().await?;
            (v, bare_round().await?)
        } else {
            let b = bare_round().await?;
            (vidgate_round().await?, b)
        };
        println!(
            "  round {}/{S3_ROUNDS}: vidgate {:.0} MB/s (CPU ms per MB: {:.2} this process, {:.2} the rest) | bare ranged GET {:.0} MB/s ({:.2}, {:.2}) | {:.1}%",
            round + 1,
            v.0,
            v.1,
            v.2,
            b.0,
            b.1,
            b.2,
            v.0 / b.0 * 100.0
        );
        ours.push(v.0);
        theirs.push(b.0);
        ours_cpu.push((v.1, v.2));
        theirs_cpu.push((b.1, b.2));
    }
    let (o, t) = (
        (
            median(ours_cpu.iter().map(|c| c.0)),
            median(ours_cpu.iter().map(|c| c.1)),
        ),
        (
            median(theirs_cpu.iter().map(|c| c.0)),
            median(theirs_cpu.iter().map(|c| c.1)),
        ),
    );
    println!(
        "  CPU ms per MB (medians): vidgate {:.2} in this process + {:.2} elsewhere = {:.2}; bare GET {:.2} + {:.2} = {:.2}; 2 cores fully busy would carry {:.0} and {:.0} MB/s",
        o.0,
        o.1,
        o.0 + o.1,
        t.0,
        t.1,
        t.0 + t.1,
        2e3 / (o.0 + o.1),
        2e3 / (t.0 + t.1)
    );
    stored.stop().await;
    Ok(vec![Row::rate(
        "DownloadVideo 100 MB from S3: MB/s (vs bare ranged GET, same server)",
        (median(ours), median(theirs)),
        " MB/s",
        TARGET,
    )])
}

/// Scenario 13 (issue #15): how long a 100 MB job takes from create to `COMPLETED` with its
/// video uploaded to an S3-compatible server (`VIDGATE_TEST_S3_ENDPOINT`, else moto) while it
/// downloads, for several `part_bytes` x `upload_concurrency`, against the same job with a
/// local directory; each variant twice, interleaved; the process's peak RSS per variant. What
/// the defaults were chosen by.
async fn s3_upload_scenario() -> anyhow::Result<Vec<Row>> {
    const REPS: usize = 2;
    const MIB: usize = 1024 * 1024;
    let settings: [(usize, usize); 5] = [
        (5 * MIB, 2),
        (8 * MIB, 2),
        (8 * MIB, 4),
        (16 * MIB, 4),
        (32 * MIB, 2),
    ];
    let server = s3::s3();
    println!(
        "s3upload: a {} MB job from create to COMPLETED, videos in {} (uploaded while downloading) at part size x concurrency {:?} MiB, against a local directory; {REPS} runs each, interleaved",
        VIDEO_BYTES / 1_000_000,
        server.endpoint,
        settings.map(|(p, c)| (p / MIB, c))
    );
    // None = the local directory.
    let variants: Vec<Option<(usize, usize)>> = std::iter::once(None)
        .chain(settings.iter().copied().map(Some))
        .collect();
    let mut seconds = vec![Vec::new(); variants.len()];
    let mut peaks = vec![0.0_f64; variants.len()];
    for _ in 0..REPS {
        for (i, variant) in variants.iter().enumerate() {
            let prefix = server.prefix("bench-upload");
            reset_peak_rss();
            let started = Instant::now();
            let stored = StoredVideo::prepare_with(VIDEO_BYTES, |c| {
                if let Some((part, concurrency)) = *variant {
                    c.blob = server.blob_config(&prefix);
                    c.blob.part_bytes = part;
                    c.blob.upload_concurrency = concurrency;
                    c.blob.upload_memory_bytes =
                        c.blob.upload_memory_bytes.max(part * (concurrency + 1));
                }
            })
            .await?;
            seconds[i].push(started.elapsed().as_secs_f64());
            peaks[i] = peaks[i].max(peak_rss_mib().map_or(f64::NAN, |m| m * 1.048_576));
            stored.stop().await;
        }
    }
    let local = median(seconds[0].iter().copied());
    let mut rows = Vec::new();
    for (i, variant) in variants.iter().enumerate().skip(1) {
        let Some((part, concurrency)) = *variant else {
            continue;
        };
        let s = median(seconds[i].iter().copied());
        println!(
            "  part {} MiB x {concurrency} in flight: {s:.2} s to COMPLETED (local directory {local:.2} s), peak RSS {:.1} MB (local {:.1} MB)",
            part / MIB,
            peaks[i],
            peaks[0]
        );
        rows.push(
            Row::custom(
                &format!(
                    "100 MB job to COMPLETED with S3, part {} MiB x {concurrency}: s (vs local directory); peak RSS",
                    part / MIB
                ),
                format!("{s:.2} s; {:.0} MB", peaks[i]),
                format!("{local:.2} s; {:.0} MB", peaks[0]),
                format!("{:.2}x", s / local),
                "-".into(),
                true,
            )
            .no_verdict(),
        );
    }
    Ok(rows)
}

/// Steps the dispatcher until the job is terminal; it must complete.
async fn complete(
    app: &Application,
    client: &mut VideoServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<pb::Video> {
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        app.dispatcher().step().await?;
        let video = client
            .get_video(authed(pb::GetVideoRequest { id: id.into() }))
            .await?
            .into_inner();
        match video.status() {
            pb::VideoStatus::Completed => return Ok(video),
            pb::VideoStatus::Failed | pb::VideoStatus::Cancelled => {
                anyhow::bail!("the 100 MB job did not complete: {:?}", video.error)
            }
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the 100 MB job was not done within {JOB_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One `DownloadVideo` of `size` bytes (vidgate's or the bare server's); the bytes received.
async fn download_one(
    client: &mut VideoServiceClient<Channel>,
    id: &str,
    size: u64,
) -> anyhow::Result<u64> {
    let mut stream = client
        .download_video(authed(pb::DownloadVideoRequest {
            id: id.into(),
            read_limit: size as i64,
            ..Default::default()
        }))
        .await?
        .into_inner();
    let mut received = 0_u64;
    while let Some(chunk) = stream.message().await? {
        received += chunk.data.len() as u64;
    }
    Ok(received)
}

/// `count` whole downloads one after another; returns MB/s (10^6 bytes). Every download must
/// deliver exactly `size` bytes.
async fn download_round(
    client: &VideoServiceClient<Channel>,
    id: &str,
    size: u64,
    count: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..count {
        let received = download_one(&mut client.clone(), id, size).await?;
        anyhow::ensure!(
            received == size,
            "download of {id} gave {received} bytes, expected {size}"
        );
    }
    let bytes = size as f64 * count as f64;
    Ok(bytes / 1e6 / started.elapsed().as_secs_f64())
}

/// `get_video` answers a default `Video` at once; `download_video` streams `read_limit` bytes
/// as clones of one preallocated chunk (so no per-chunk copy and no 100 MB buffer).
struct Noop {
    chunk: Bytes,
}

#[tonic::async_trait]
impl VideoService for Noop {
    async fn create_video(
        &self,
        _: Request<pb::CreateVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        Ok(Response::new(pb::Video::default()))
    }

    async fn get_video(
        &self,
        _: Request<pb::GetVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        Ok(Response::new(pb::Video::default()))
    }

    async fn list_videos(
        &self,
        _: Request<pb::ListVideosRequest>,
    ) -> Result<Response<pb::ListVideosResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn cancel_video(
        &self,
        _: Request<pb::CancelVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn retry_video(
        &self,
        _: Request<pb::RetryVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    async fn delete_video(
        &self,
        _: Request<pb::DeleteVideoRequest>,
    ) -> Result<Response<pb::DeleteVideoResponse>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type DownloadVideoStream = futures::stream::Iter<ChunkIter>;

    async fn download_video(
        &self,
        request: Request<pb::DownloadVideoRequest>,
    ) -> Result<Response<Self::DownloadVideoStream>, Status> {
        let total = u64::try_from(request.into_inner().read_limit).unwrap_or(0);
        Ok(Response::new(futures::stream::iter(ChunkIter {
            chunk: self.chunk.clone(),
            sent: 0,
            total,
        })))
    }

    type WatchVideoStream = futures::stream::Empty<Result<pb::VideoEvent, Status>>;

    async fn watch_video(
        &self,
        _: Request<pb::WatchVideoRequest>,
    ) -> Result<Response<Self::WatchVideoStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }

    type SubscribeStream = futures::stream::Empty<Result<pb::VideoEvent, Status>>;

    async fn subscribe(
        &self,
        _: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("baseline"))
    }
}

/// `total` bytes as `ContentChunk`s of `chunk` (the last one shorter).
struct ChunkIter {
    chunk: Bytes,
    sent: u64,
    total: u64,
}

impl Iterator for ChunkIter {
    type Item = Result<pb::ContentChunk, Status>;

    fn next(&mut self) -> Option<Self::Item> {
        let left = self.total - self.sent;
        if left == 0 || self.chunk.is_empty() {
            return None;
        }
        let len = left.min(self.chunk.len() as u64) as usize;
        let item = pb::ContentChunk {
            offset: self.sent as i64,
            data: self.chunk.slice(..len),
        };
        self.sent += len as u64;
        Some(Ok(item))
    }
}

/// A bare tonic server of [`Noop`] on 127.0.0.1, port 0, with tonic's defaults.
struct NoopServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl NoopServer {
    async fn start(chunk: Bytes) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        // What `Server::serve` would accept on: tonic's default TCP_NODELAY, which
        // `serve_with_incoming` does not apply to a listener it is handed.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(VideoServiceServer::new(Noop { chunk }))
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        let task = tokio::spawn(server);
        Ok(Self { addr, stop, task })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// `synchronous = full` (the default and what the figures use), or `normal` with
/// `VIDGATE_BENCH_SYNC=normal`, to see what the fsync per commit costs.
fn sync_mode() -> SyncMode {
    match std::env::var("VIDGATE_BENCH_SYNC").as_deref() {
        Ok("normal") => SyncMode::Normal,
        _ => SyncMode::Full,
    }
}

/// The real startup's config: port 0, the given data dir, the in-process simulator at
/// millisecond timings, one token, durable SQLite.
fn bench_config(data_dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.grpc_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.storage.data_dir = data_dir.to_path_buf();
    c.storage.synchronous = sync_mode();
    c.upstream.mode = UpstreamMode::Simulator;
    c.upstream.limits.requests_per_second = 1_000;
    c.simulator = SimConfig {
        queued_ms: 10,
        processing_ms: 30,
        jitter: 0.0,
        ..SimConfig::default()
    };
    c.auth = AuthConfig {
        mode: AuthMode::Tokens,
        tokens: vec![TokenEntry {
            tenant: "bench".into(),
            sha256: token_hash(TOKEN),
        }],
        ..AuthConfig::default()
    };
    c.dispatcher.first_poll_after_ms = 0;
    c.dispatcher.poll_interval_ms = 10;
    c.dispatcher.poll_jitter = 0.0;
    c.dispatcher.backoff_min_ms = 10;
    c.dispatcher.backoff_max_ms = 50;
    c
}

/// A vidgate with one completed job whose stored video has at least `bytes` bytes (downloaded,
/// hashed, probed and stored through the in-process simulator, the dispatcher stepped by hand
/// so the job runs exactly once and nothing else competes).
struct StoredVideo {
    app: Application,
    client: VideoServiceClient<Channel>,
    id: String,
    size: u64,
    _data: tempfile::TempDir,
}

impl StoredVideo {
    async fn prepare(bytes: u64) -> anyhow::Result<Self> {
        Self::prepare_with(bytes, |_| {}).await
    }

    /// [`StoredVideo::prepare`] with the config changed by `tweak` first.
    async fn prepare_with(bytes: u64, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("vidgate-bench-")
            .tempdir()?;
        let mut config = bench_config(data.path());
        config.simulator.content_min_size = bytes;
        config.events.chunk_bytes = chunk_bytes();
        config.dispatcher.enabled = false;
        tweak(&mut config);
        let app = Application::build(config).await?;
        let mut client = connect(app.grpc_addr()).await?;
        let prepared = Instant::now();
        let video = client
            .create_video(authed(create_request(format!("stored-{bytes}"))))
            .await?
            .into_inner();
        let video = complete(&app, &mut client, &video.id).await?;
        let size = video.content.as_ref().map_or(0, |c| c.size_bytes);
        anyhow::ensure!(
            size >= bytes,
            "the stored video has {size} bytes, expected at least {bytes}"
        );
        println!(
            "  stored {} ({size} bytes) through the simulator in {:.1} s",
            video.id,
            prepared.elapsed().as_secs_f64()
        );
        Ok(Self {
            app,
            client,
            id: video.id,
            size,
            _data: data,
        })
    }

    async fn stop(self) {
        self.app.shutdown().await;
    }
}

/// `n` clients, each over its own channel (its own HTTP/2 connection) to `addr`.
async fn channels(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<VideoServiceClient<Channel>>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(connect(addr).await?);
    }
    Ok(clients)
}

/// [`bench_config`] with the upstream simulator in a child process at `base_url` (see
/// `extsim`): the gateway talks to it as to the real API.
fn ext_config(data_dir: &Path, base_url: &str) -> Config {
    let mut c = bench_config(data_dir);
    c.upstream.mode = UpstreamMode::Real;
    c.upstream.base_url = base_url.to_owned();
    c.api_key = Some(vidgate::upstream::sim::config::DEFAULT_API_KEY.to_owned());
    c
}

/// User + system CPU seconds of this process so far (all threads, live and exited).
fn cpu_seconds() -> f64 {
    cpu_seconds_of("/proc/self/stat")
}

/// CPU seconds the whole machine spent busy (every process, `/proc/stat`: all but idle and
/// iowait), in clock ticks of 1/100 s. NaN where there is no such file.
fn machine_busy_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let Some(line) = stat.lines().next() else {
        return f64::NAN;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    if ticks.len() < 8 {
        return f64::NAN;
    }
    (ticks[..8].iter().sum::<u64>() - ticks[3] - ticks[4]) as f64 / 100.0
}

/// `utime + stime` of a `/proc/<pid>/stat` file, in seconds (clock ticks of 1/100 s, Linux's
/// USER_HZ). NaN where there is no such file.
fn cpu_seconds_of(path: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // The command name (field 2) may hold spaces; the fields after its ')' start at field 3.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    match (tick(11), tick(12)) {
        (Some(user), Some(system)) => (user + system) as f64 / 100.0,
        _ => f64::NAN,
    }
}

/// A `kB` field of a `/proc/<pid>/status` file (`VmHWM:`, `VmRSS:`).
fn status_kib(path: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// This process's peak RSS since the last [`reset_peak_rss`], in MiB.
fn peak_rss_mib() -> Option<f64> {
    status_kib("/proc/self/status", "VmHWM:").map(|k| k as f64 / 1024.0)
}

/// This process's current RSS, in MiB.
fn rss_mib() -> Option<f64> {
    status_kib("/proc/self/status", "VmRSS:").map(|k| k as f64 / 1024.0)
}

/// The 1-minute load average, as `/proc/loadavg` says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The one client setup both sides get: one channel (one HTTP/2 connection), default limits.
async fn connect(addr: SocketAddr) -> anyhow::Result<VideoServiceClient<Channel>> {
    Ok(VideoServiceClient::connect(format!("http://{addr}")).await?)
}

/// `authorization: Bearer TOKEN`, parsed once.
static BEARER: LazyLock<MetadataValue<Ascii>> = LazyLock::new(|| {
    format!("Bearer {TOKEN}")
        .parse()
        .expect("the token is ASCII")
});

fn authed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", BEARER.clone());
    request
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Row {
    number: Option<u8>,
    scenario: String,
    vidgate: String,
    baseline: String,
    ratio: String,
    target: String,
    met: String,
}

impl Row {
    /// Higher is better; the target is a fraction of the baseline.
    fn rate(scenario: &str, (ours, theirs): (f64, f64), unit: &str, target: f64) -> Self {
        let ratio = ours / theirs;
        Row {
            number: None,
            scenario: scenario.into(),
            vidgate: format!("{ours:.0}{unit}"),
            baseline: format!("{theirs:.0}{unit}"),
            ratio: format!("{:.1}%", ratio * 100.0),
            target: format!(">= {:.0}%", target * 100.0),
            met: if ratio >= target { "yes" } else { "NO" }.into(),
        }
    }

    /// Lower is better; no target, the ratio says how many times the baseline's.
    fn latency(scenario: &str, (ours, theirs): (f64, f64)) -> Self {
        Row {
            number: None,
            scenario: scenario.into(),
            vidgate: format!("{ours:.2} ms"),
            baseline: format!("{theirs:.2} ms"),
            ratio: format!("{:.1}x", ours / theirs),
            target: "-".into(),
            met: "-".into(),
        }
    }

    /// Any figures; `met` says whether the target holds.
    fn custom(
        scenario: &str,
        vidgate: String,
        baseline: String,
        ratio: String,
        target: String,
        met: bool,
    ) -> Self {
        Row {
            number: None,
            scenario: scenario.into(),
            vidgate,
            baseline,
            ratio,
            target,
            met: if met { "yes" } else { "NO" }.into(),
        }
    }

    /// A figure with no target of its own.
    fn no_verdict(mut self) -> Self {
        self.met = "-".into();
        self
    }

    /// Prefixes the scenario with the number.
    fn numbered(mut self, number: u8) -> Self {
        if self.number.is_none() && !self.scenario.starts_with(&format!("{number}.")) {
            self.scenario = format!("{number}. {}", self.scenario);
        }
        self.number = Some(number);
        self
    }

    fn unavailable(scenario: &str, why: &str) -> Self {
        Row {
            number: None,
            scenario: scenario.into(),
            vidgate: why.into(),
            baseline: "-".into(),
            ratio: "-".into(),
            target: "-".into(),
            met: "-".into(),
        }
    }
}

/// A Markdown table, so it can be pasted into BENCHMARKS.md as printed.
fn print_table(rows: &[Row]) {
    let header = ["scenario", "vidgate", "baseline", "ratio", "target", "met?"];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.as_str(),
                r.vidgate.as_str(),
                r.baseline.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
                r.met.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[&str; 6]| {
        let padded: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("| {} |", padded.join(" | "));
    };
    line(&header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for row in &cells {
        line(row);
    }
}

/// Resets the kernel's peak-RSS mark (`VmHWM`) so the next reading is this scenario's own
/// (Linux: writing 5 to `clear_refs`). Returns whether it worked.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn rss_note(scenario: &str, peak_reset: bool) -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned())
    };
    let scope = if peak_reset {
        "during this scenario"
    } else {
        "since process start (peak could not be reset)"
    };
    format!(
        "peak RSS after {scenario}: {} {scope} (VmHWM; current VmRSS {})",
        field("VmHWM:"),
        field("VmRSS:")
    )
}
