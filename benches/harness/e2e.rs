//! Scenario 7: 1 000 jobs end to end, 100 at a time, against a simulator (in a child process,
//! so its MP4 generation is not counted) that serves 5 MB MP4s. In each of 5 rounds, each of
//! 100 workers twice: `CreateVideo`, then `WatchVideo(include_content)` until the stream ends,
//! checking that the whole video came. The dispatcher runs on its own at compressed timings.
//!
//! Figures: CPU milliseconds per job of the harness process (gateway and its gRPC client),
//! median of the rounds, and its peak RSS. Baseline, same run, same process, in rounds
//! interleaved with vidgate's: the bytes' own cost per job, that is SHA-256 over 5 MB, writing
//! 5 MB to a file that is kept (as a stored video is), and streaming 5 MB through a bare tonic
//! server to a client (both ends in this process, as vidgate's watch and its client are).

use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;

use crate::extsim::{ExtSim, SimSettings};
use crate::{
    NoopServer, Row, authed, channels, connect, cpu_seconds, create_request, download_one,
    ext_config, peak_rss_mib, reset_peak_rss,
};

const JOBS: usize = 1_000;
/// Rounds of vidgate and of the baseline, interleaved.
const ROUNDS: usize = 5;
const JOBS_PER_ROUND: usize = JOBS / ROUNDS;
const WORKERS: usize = 100;
const VIDEO_BYTES: u64 = 5_000_000;
/// Connections the workers share.
const CONNECTIONS: usize = 10;
/// Simulator: a task is done 1 s after its create.
const QUEUED_MS: u64 = 200;
const PROCESSING_MS: u64 = 800;
/// Dispatcher: first poll after 1 s, then every 250 ms.
const FIRST_POLL_MS: u64 = 1_000;
const POLL_INTERVAL_MS: u64 = 250;
/// Baseline: repetitions of the bytes' cost per round and variant, this many at a time.
const BASELINE_JOBS: usize = 40;
const BASELINE_CONCURRENCY: usize = 10;
/// Longest a round of jobs may take.
const DEADLINE: Duration = Duration::from_secs(600);
const CPU_TARGET_TIMES: f64 = 1.5;
const RSS_TARGET_MB: f64 = 160.0;

pub async fn scenario() -> anyhow::Result<Vec<Row>> {
    println!(
        "e2e: {JOBS} jobs in {ROUNDS} rounds of {JOBS_PER_ROUND}, {WORKERS} at a time (create, then watch with content), {} MB MP4s from a simulator child process ({QUEUED_MS}+{PROCESSING_MS} ms), dispatcher running; each round also measures the bytes' cost ({BASELINE_JOBS} repetitions per variant), alternating which side goes first",
        VIDEO_BYTES / 1_000_000
    );
    let mut sim = ExtSim::start(SimSettings {
        queued_ms: QUEUED_MS,
        processing_ms: PROCESSING_MS,
        content_min_size: VIDEO_BYTES,
    })
    .await?;
    let data = tempfile::Builder::new()
        .prefix("vidgate-bench-")
        .tempdir()?;
    let app = vidgate::app::Application::build(config_of(data.path(), &sim)).await?;
    let clients = channels(app.grpc_addr(), CONNECTIONS).await?;

    // The baseline's kept files stay until the scenario ends, as vidgate's stored videos do.
    let kept = tempfile::Builder::new()
        .prefix("vidgate-bench-bytes-")
        .tempdir()?;
    let mut peak_mb: f64 = 0.0;
    let sim_cpu0 = sim.cpu_seconds();
    let (mut bytes, mut gateway) = (Vec::new(), Vec::new());
    let mut seconds = 0.0;
    // Rounds interleave the two sides, so that both meet the same state of the machine: on
    // this VM fresh memory (e.g. new page-cache pages for a stored file) costs several times
    // what recently used memory does (BENCHMARKS.md, "Fourth session").
    for round in 0..ROUNDS {
        let baseline_first = round % 2 == 0;
        if baseline_first {
            bytes.push(baselines(kept.path(), round).await?);
        }
        // The peak RSS of vidgate's rounds only (the baseline's own buffers are not the gateway's).
        reset_peak_rss();
        let cpu0 = cpu_seconds();
        let started = Instant::now();
        run_jobs(&clients, round).await?;
        seconds += started.elapsed().as_secs_f64();
        peak_mb = peak_mb.max(peak_rss_mib().map_or(f64::NAN, |m| m * 1.048_576));
        gateway.push((cpu_seconds() - cpu0) * 1e3 / JOBS_PER_ROUND as f64);
        if !baseline_first {
            bytes.push(baselines(kept.path(), round).await?);
        }
        let (g, [o, d, p]) = (gateway[round], bytes[round]);
        println!(
            "  round {}/{ROUNDS} ({} first): vidgate {g:.2} CPU ms per job | bytes' own cost {o:.2} ms (files kept), {d:.2} ms (files deleted at once), whole path {p:.2} ms | {:.2}x",
            round + 1,
            if baseline_first {
                "baseline"
            } else {
                "vidgate"
            },
            g / o
        );
    }
    let sim_cpu = sim.cpu_seconds() - sim_cpu0;
    let stats = sim.stats().await?;
    app.shutdown().await;
    sim.stop().await;
    let median_of = |i: usize| crate::median(bytes.iter().map(|b: &[f64; 3]| b[i]));
    let (cpu_ms, bytes_ms, deleted_ms, path_ms) = (
        crate::median(gateway),
        median_of(0),
        median_of(1),
        median_of(2),
    );
    println!(
        "  {JOBS} jobs in {seconds:.1} s of vidgate rounds ({:.0} jobs/s); gateway process {cpu_ms:.2} CPU ms per job (median round), peak RSS {peak_mb:.1} MB (in vidgate's rounds); simulator child {:.2} CPU ms per job; upstream calls per job: {:.2} create, {:.2} status, {:.2} content",
        JOBS as f64 / seconds,
        sim_cpu * 1e3 / JOBS as f64,
        stats.creates as f64 / JOBS as f64,
        stats.gets as f64 / JOBS as f64,
        stats.contents as f64 / JOBS as f64
    );
    Ok(vec![
        Row::custom(
            "1 000 jobs end to end (5 MB, 100 at a time): CPU ms per job (vs the bytes' own cost)",
            format!("{cpu_ms:.2} ms"),
            format!("{bytes_ms:.2} ms"),
            format!("{:.2}x", cpu_ms / bytes_ms),
            format!("<= {CPU_TARGET_TIMES}x"),
            cpu_ms <= CPU_TARGET_TIMES * bytes_ms,
        ),
        Row::custom(
            "1 000 jobs end to end: CPU ms per job (vs the bytes' own cost, each file deleted at once)",
            format!("{cpu_ms:.2} ms"),
            format!("{deleted_ms:.2} ms"),
            format!("{:.2}x", cpu_ms / deleted_ms),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::custom(
            "1 000 jobs end to end: CPU ms per job (vs the bytes' whole path: + HTTP receive + file read)",
            format!("{cpu_ms:.2} ms"),
            format!("{path_ms:.2} ms"),
            format!("{:.2}x", cpu_ms / path_ms),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::custom(
            "1 000 jobs end to end: peak RSS (gateway + client; simulator apart)",
            format!("{peak_mb:.1} MB"),
            "-".into(),
            "-".into(),
            format!("<= {RSS_TARGET_MB:.0} MB"),
            peak_mb <= RSS_TARGET_MB,
        ),
    ])
}

/// Scenario 12 (issue #15): the same 1 000 jobs with videos kept in an S3-compatible server
/// (`VIDGATE_TEST_S3_ENDPOINT`, else a moto server started here) against the same jobs with
/// videos in a local directory, same run, same simulator child: two gateways in this process,
/// their rounds interleaved (each round's peak RSS is that round's gateway's, with the other
/// idle). Figures: CPU ms per job of this process and peak RSS, each side's median round and
/// worst peak. The S3 server's own CPU and memory are not counted (another process), as the
/// simulator's are not.
pub async fn s3_scenario(server: &crate::s3::S3) -> anyhow::Result<Vec<Row>> {
    println!(
        "s3e2e: {JOBS} jobs per side in {ROUNDS} rounds of {JOBS_PER_ROUND}, {WORKERS} at a time, {} MB MP4s, videos in {} against a local directory, rounds interleaved",
        VIDEO_BYTES / 1_000_000,
        server.endpoint
    );
    let mut sim = ExtSim::start(SimSettings {
        queued_ms: QUEUED_MS,
        processing_ms: PROCESSING_MS,
        content_min_size: VIDEO_BYTES,
    })
    .await?;
    let prefix = server.prefix("bench-e2e");
    let mut apps = Vec::new();
    let mut dirs = Vec::new();
    for remote in [false, true] {
        let data = tempfile::Builder::new()
            .prefix("vidgate-bench-")
            .tempdir()?;
        let mut config = config_of(data.path(), &sim);
        if remote {
            config.blob = server.blob_config(&prefix);
        }
        let app = vidgate::app::Application::build(config).await?;
        let clients = channels(app.grpc_addr(), CONNECTIONS).await?;
        apps.push((app, clients));
        dirs.push(data);
    }
    let (mut cpu, mut peak) = ([Vec::new(), Vec::new()], [0.0_f64, 0.0_f64]);
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            reset_peak_rss();
            let cpu0 = cpu_seconds();
            // Distinct job numbers per side and round (request ids are per gateway anyway).
            run_jobs(&apps[side].1, round * 2 + side).await?;
            peak[side] = peak[side].max(peak_rss_mib().map_or(f64::NAN, |m| m * 1.048_576));
            cpu[side].push((cpu_seconds() - cpu0) * 1e3 / JOBS_PER_ROUND as f64);
        }
        println!(
            "  round {}/{ROUNDS}: local {:.2} CPU ms per job | S3 {:.2} CPU ms per job | {:.2}x",
            round + 1,
            cpu[0][round],
            cpu[1][round],
            cpu[1][round] / cpu[0][round]
        );
    }
    let stats = sim.stats().await?;
    for (app, _) in apps {
        app.shutdown().await;
    }
    sim.stop().await;
    drop(dirs);
    let [local, remote] = cpu.map(crate::median);
    println!(
        "  peak RSS: local {:.1} MB | S3 {:.1} MB; upstream content downloads per job: {:.2}",
        peak[0],
        peak[1],
        stats.contents as f64 / (2 * JOBS) as f64
    );
    Ok(vec![
        Row::custom(
            "1 000 jobs end to end, videos in S3: CPU ms per job (vs local directory, same run)",
            format!("{remote:.2} ms"),
            format!("{local:.2} ms"),
            format!("{:.2}x", remote / local),
            "-".into(),
            true,
        )
        .no_verdict(),
        Row::custom(
            "1 000 jobs end to end, videos in S3: peak RSS (vs local directory, same run)",
            format!("{:.1} MB", peak[1]),
            format!("{:.1} MB", peak[0]),
            format!("{:.2}x", peak[1] / peak[0]),
            "-".into(),
            true,
        )
        .no_verdict(),
    ])
}

/// The gateway's configuration in these scenarios: the simulator child as the upstream, the
/// dispatcher at compressed timings (first poll after 1 s, then every 250 ms, no jitter).
fn config_of(data_dir: &std::path::Path, sim: &ExtSim) -> vidgate::config::Config {
    let mut config = ext_config(data_dir, &sim.base_url);
    config.dispatcher.first_poll_after_ms = FIRST_POLL_MS;
    config.dispatcher.poll_interval_ms = POLL_INTERVAL_MS;
    config.dispatcher.poll_jitter = 0.0;
    config
}

/// One round: `JOBS_PER_ROUND` jobs, `WORKERS` at a time.
async fn run_jobs(clients: &[VideoServiceClient<Channel>], round: usize) -> anyhow::Result<()> {
    let mut workers = JoinSet::new();
    for w in 0..WORKERS {
        let client = clients[w % clients.len()].clone();
        workers.spawn(async move {
            for i in (w..JOBS_PER_ROUND).step_by(WORKERS) {
                one_job(client.clone(), round * JOBS_PER_ROUND + i).await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    let all = async {
        while let Some(done) = workers.join_next().await {
            done??;
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(DEADLINE, all)
        .await
        .map_err(|_| anyhow::anyhow!("the jobs were not done within {DEADLINE:?}"))?
}

/// Create, then watch with content to the end; the whole video must come.
async fn one_job(mut client: VideoServiceClient<Channel>, i: usize) -> anyhow::Result<()> {
    let mut request = create_request(format!("e2e-{i}"));
    request.prompt = format!("e2e benchmark job {i}: waves on a pebble beach");
    let video = client.create_video(authed(request)).await?.into_inner();
    let mut stream = client
        .watch_video(authed(pb::WatchVideoRequest {
            id: video.id.clone(),
            after_sequence: 0,
            include_content: true,
        }))
        .await?
        .into_inner();
    let mut received = 0_u64;
    let mut end = None;
    let mut status = pb::VideoStatus::Unspecified;
    while let Some(event) = stream.message().await? {
        match event.kind {
            Some(pb::video_event::Kind::Video(v)) => status = v.status(),
            Some(pb::video_event::Kind::Chunk(chunk)) => received += chunk.data.len() as u64,
            Some(pb::video_event::Kind::ContentEnd(e)) => end = Some(e.size_bytes),
            _ => {}
        }
    }
    anyhow::ensure!(
        status == pb::VideoStatus::Completed,
        "job {} ended {status:?}",
        video.id
    );
    anyhow::ensure!(
        end == Some(received) && received >= VIDEO_BYTES,
        "job {}: {received} content bytes, content end {end:?}",
        video.id
    );
    Ok(())
}

/// One round of the three baselines, CPU ms per job: the bytes' own cost with the files kept,
/// the same with each file deleted at once, and the bytes' whole path (files kept).
async fn baselines(kept: &std::path::Path, round: usize) -> anyhow::Result<[f64; 3]> {
    let dir = kept.join(format!("round-{round}"));
    Ok([
        bytes_cost(false, Files::Kept, dir.clone()).await?,
        bytes_cost(false, Files::Deleted, dir.clone()).await?,
        bytes_cost(true, Files::Kept, dir).await?,
    ])
}

/// What becomes of the baseline's files.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Files {
    /// Kept until the scenario ends, as vidgate keeps every video it stores.
    Kept,
    /// Deleted right after the write (the method before the fourth session).
    Deleted,
}

/// CPU ms per repetition of: SHA-256 of 5 MB, writing 5 MB to a new file (kept or deleted, see
/// [`Files`]), and a bare 5 MB gRPC stream in 64 KiB chunks to a client in this process. With
/// `whole_path`, the bytes are first received over HTTP from a local server (hashed and written
/// chunk by chunk as they come, as the dispatcher does), and the file is read back in 64 KiB
/// chunks before the stream: what the gateway's path does to the bytes beyond the issue's
/// definition of their own cost.
async fn bytes_cost(
    whole_path: bool,
    files: Files,
    dir: std::path::PathBuf,
) -> anyhow::Result<f64> {
    let dir = dir.join(match (whole_path, files) {
        (false, Files::Kept) => "own",
        (false, Files::Deleted) => "deleted",
        (true, _) => "path",
    });
    tokio::fs::create_dir_all(&dir).await?;
    let video = Bytes::from(
        (0..VIDEO_BYTES)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    );
    let bare = NoopServer::start(Bytes::from(vec![0x5a_u8; crate::chunk_bytes()])).await?;
    let client = connect(bare.addr).await?;
    // A local HTTP server with the video, for `whole_path`.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let url = format!("http://{}/video.mp4", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/video.mp4",
        axum::routing::get({
            let video = video.clone();
            move || {
                let video = video.clone();
                async move { video }
            }
        }),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let http = reqwest::Client::new();
    let one = |n: usize| {
        let (video, mut client, http, url, path) = (
            video.clone(),
            client.clone(),
            http.clone(),
            url.clone(),
            dir.join(format!("bytes-{n}.mp4")),
        );
        async move {
            if whole_path {
                use futures::StreamExt;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut body = http.get(&url).send().await?.bytes_stream();
                let mut file = tokio::fs::File::create(&path).await?;
                let mut hasher = Sha256::new();
                let mut got = 0_u64;
                while let Some(chunk) = body.next().await {
                    let chunk = chunk?;
                    hasher.update(&chunk);
                    file.write_all(&chunk).await?;
                    got += chunk.len() as u64;
                }
                file.flush().await?;
                drop(file);
                anyhow::ensure!(got == VIDEO_BYTES && !hasher.finalize().is_empty());
                let mut file = tokio::fs::File::open(&path).await?;
                let mut buffer = vec![0_u8; crate::chunk_bytes()];
                let mut read = 0_u64;
                // Ends at the end of the 5 MB file.
                loop {
                    let n = file.read(&mut buffer).await?;
                    if n == 0 {
                        break;
                    }
                    read += n as u64;
                }
                anyhow::ensure!(read == VIDEO_BYTES);
            } else {
                let hash = tokio::task::spawn_blocking({
                    let video = video.clone();
                    move || Sha256::digest(&video)
                })
                .await?;
                tokio::fs::write(&path, &video).await?;
                anyhow::ensure!(!hash.is_empty());
            }
            if files == Files::Deleted {
                tokio::fs::remove_file(&path).await?;
            }
            let received = download_one(&mut client, "bare", VIDEO_BYTES).await?;
            anyhow::ensure!(received == VIDEO_BYTES);
            Ok::<_, anyhow::Error>(())
        }
    };
    // Warm-up.
    one(usize::MAX).await?;
    let cpu0 = cpu_seconds();
    let mut tasks = JoinSet::new();
    for n in 0..BASELINE_JOBS {
        if tasks.len() >= BASELINE_CONCURRENCY
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        tasks.spawn(one(n));
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let ms = (cpu_seconds() - cpu0) * 1e3 / BASELINE_JOBS as f64;
    stop.cancel();
    let _ = server.await;
    bare.stop().await;
    Ok(ms)
}
