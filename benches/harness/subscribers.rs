//! Many subscribers of one tenant while fat jobs complete, with `vidgate serve` in a child
//! process so that its memory is read from `/proc/<pid>/status` alone (the driver's own memory,
//! its clients' buffers and the upstream simulator do not count).
//!
//! Shared by the benchmark harness (scenario `subscribers`: never-read against reading
//! subscribers, same run) and by the test of issue #14's first row (`tests/ops`), which include
//! this file with `#[path]`; it depends only on vidgate's public API, tonic, tokio and anyhow.
//!
//! The run: start the child on an empty data directory against an in-process simulator, open
//! `streams` `Subscribe` streams (100 per connection, under the server's 128 per connection),
//! read them all or none, create `jobs` jobs with a 16,000-character prompt and 64 labels of
//! 256 characters, wait until every job is `COMPLETED`, then close every stream and connection
//! and watch the child's resident memory for `settle`. The peak is the kernel's `VmHWM`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use vidgate::pb;
use vidgate::pb::video_service_client::VideoServiceClient;
use vidgate::upstream::sim::{SimConfig, SimHandle, Simulator};

/// Streams per connection (the server allows 128 by default).
const STREAMS_PER_CONNECTION: usize = 100;
/// Longest wait for the child to listen, for streams to open or for jobs to complete: a hang
/// guard, not a measure.
const WAIT: Duration = Duration::from_secs(300);
/// How often the child's `VmRSS` is sampled while it settles.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// One run's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `Subscribe` streams opened before the jobs are created.
    pub streams: usize,
    /// Fat jobs created once every stream is open.
    pub jobs: usize,
    /// Whether the subscribers read their streams (to the end) or never read at all.
    pub read: bool,
    /// How long the child's memory is watched after every stream is closed.
    pub settle: Duration,
    /// Extra environment for the child (for example `MALLOC_CONF`), and `RUST_LOG`.
    pub env: Vec<(String, String)>,
    /// Where the child's data directory and config go (removed at the end).
    pub work_dir: PathBuf,
}

/// What one run measured, memory in KiB from the child's `/proc/<pid>/status`.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// `VmRSS` once the child answers, before any stream.
    pub idle_kib: u64,
    /// `VmRSS` with every stream open, before the first job.
    pub open_kib: u64,
    /// `VmHWM` once every job completed (the peak of the whole run so far).
    pub peak_kib: u64,
    /// `VmRSS` at the end of `settle`, every stream and connection closed.
    pub settled_kib: u64,
    /// Events the subscribers read (0 when they do not read).
    pub events_read: u64,
    /// Streams that ended `SUBSCRIBER_LAGGED` (seen only by reading subscribers).
    pub lagged: usize,
    /// Streams that ended with another error, and the first such error.
    pub failed: usize,
    pub first_failure: Option<String>,
    /// Wall time from the first create to the last job completed.
    pub jobs_took: Duration,
}

/// A prompt of 16,000 characters, different per job.
fn fat_prompt(job: usize) -> String {
    let head = format!("job {job}: a long, slow pan over a harbour at dawn; ");
    let mut prompt = head.repeat(16_000 / head.len() + 1);
    prompt.truncate(16_000);
    prompt
}

/// 64 labels, keys of 40 characters and values of 256.
fn fat_labels(job: usize) -> std::collections::BTreeMap<String, String> {
    (0..64)
        .map(|i| {
            let key = format!("label-{i:02}-{}", "k".repeat(31));
            let value = format!("{job:06}-{i:02}-{}", "v".repeat(246));
            (key, value)
        })
        .collect()
}

fn fat_request(job: usize) -> pb::CreateVideoRequest {
    pb::CreateVideoRequest {
        model: "turing/veo-3.1-generate".into(),
        prompt: fat_prompt(job),
        labels: fat_labels(job),
        params: Some(pb::create_video_request::Params::Veo(pb::VeoParams {
            seconds: 4,
            size: "1280x720".into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// One field of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?)
}

async fn connect(grpc: SocketAddr) -> anyhow::Result<VideoServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{grpc}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {grpc}"))?;
    Ok(VideoServiceClient::new(channel))
}

/// The child's config: no auth (one tenant), room for every stream, a fast dispatcher.
fn write_config(
    dir: &Path,
    grpc: SocketAddr,
    sim: &SimHandle,
    streams: usize,
) -> anyhow::Result<PathBuf> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let path = dir.join("vidgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
grpc_listen = "{grpc}"
max_streams_per_tenant = {streams}

[admin]
enabled = false

[storage]
data_dir = "{data}"

[upstream]
mode = "real"
base_url = "{base}"

[upstream.limits]
requests_per_second = 1000
max_in_flight = 16

[dispatcher]
first_poll_after_ms = 0
poll_interval_ms = 50
poll_jitter = 0.0
idle_wake_ms = 50
"#,
            streams = streams.max(1),
            data = data.display(),
            base = sim.base_url(),
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs the scenario once with `binary` (`vidgate`) as the child.
pub async fn run(binary: &Path, settings: &Settings) -> anyhow::Result<Figures> {
    std::fs::create_dir_all(&settings.work_dir)
        .with_context(|| format!("creating {}", settings.work_dir.display()))?;
    let sim = Simulator::start(
        SimConfig {
            queued_ms: 50,
            processing_ms: 200,
            jitter: 0.5,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let grpc = free_port()?;
    let config = write_config(&settings.work_dir, grpc, &sim, settings.streams)?;
    let mut command = tokio::process::Command::new(binary);
    command
        .args(["serve", "--no-auth", "--config"])
        .arg(&config)
        .env_remove("VIDGATE_AMQP_URL")
        .env_remove("VIDGATE_CONFIG")
        .env_remove("VIDGATE_GRPC_LISTEN")
        .env_remove("VIDGATE_ADMIN_LISTEN")
        .env_remove("VIDGATE_DATA_DIR")
        .env_remove("VIDGATE_DATABASE_URL")
        .env_remove("TURING_BASE_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("TURING_API_KEY", sim.api_key())
        .env("RUST_LOG", "error")
        .envs(settings.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id().context("the child has no pid")?;
    let result = drive(pid, grpc, settings).await;
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&settings.work_dir);
    result
}

async fn drive(pid: u32, grpc: SocketAddr, settings: &Settings) -> anyhow::Result<Figures> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut control = loop {
        match connect(grpc).await {
            Ok(client) => break client,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.context("vidgate did not listen")),
        }
    };
    // Let the child finish starting (recovery, the first idle wake) before the first figure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut figures = Figures {
        idle_kib: status_kib(pid, "VmRSS:")?,
        ..Figures::default()
    };

    // Open every stream: one connection per hundred.
    let events_read = Arc::new(AtomicU64::new(0));
    let lagged = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_failure = Arc::new(std::sync::Mutex::new(None));
    let mut held = Vec::new();
    let mut readers = JoinSet::new();
    let mut connections = Vec::new();
    let mut opened = 0;
    while opened < settings.streams {
        let mut client = connect(grpc).await?;
        let here = STREAMS_PER_CONNECTION.min(settings.streams - opened);
        for _ in 0..here {
            let stream =
                tokio::time::timeout(WAIT, client.subscribe(pb::SubscribeRequest::default()))
                    .await
                    .context("Subscribe did not answer")?
                    .context("Subscribe")?
                    .into_inner();
            if settings.read {
                readers.spawn(read_all(
                    stream,
                    events_read.clone(),
                    lagged.clone(),
                    failed.clone(),
                    first_failure.clone(),
                ));
            } else {
                held.push(stream);
            }
        }
        connections.push(client);
        opened += here;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    figures.open_kib = status_kib(pid, "VmRSS:")?;

    // Create the fat jobs and wait until every one completed.
    let started = tokio::time::Instant::now();
    let mut ids = Vec::with_capacity(settings.jobs);
    for job in 0..settings.jobs {
        let video = control
            .create_video(fat_request(job))
            .await
            .with_context(|| format!("creating job {job}"))?
            .into_inner();
        ids.push(video.id);
    }
    for id in &ids {
        loop {
            let video = control
                .get_video(pb::GetVideoRequest { id: id.clone() })
                .await
                .with_context(|| format!("reading {id}"))?
                .into_inner();
            match video.status() {
                pb::VideoStatus::Completed => break,
                pb::VideoStatus::Failed | pb::VideoStatus::Cancelled => {
                    bail!("job {id} ended {:?}: {:?}", video.status(), video.error)
                }
                _ if tokio::time::Instant::now() > deadline + WAIT => {
                    bail!("job {id} did not complete in time")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    figures.jobs_took = started.elapsed();

    // Readers: let them take what was sent (each ends when the idle stream has nothing more
    // for a while, or at its error).
    if settings.read {
        let quiet = Duration::from_secs(3);
        let mut last = u64::MAX;
        while events_read.load(Ordering::Relaxed) != last {
            last = events_read.load(Ordering::Relaxed);
            tokio::time::sleep(quiet).await;
        }
    }
    figures.peak_kib = status_kib(pid, "VmHWM:")?;

    // Close everything, then watch the memory settle.
    readers.abort_all();
    while readers.join_next().await.is_some() {}
    drop(held);
    drop(connections);
    let settle_until = tokio::time::Instant::now() + settings.settle;
    while tokio::time::Instant::now() < settle_until {
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    figures.settled_kib = status_kib(pid, "VmRSS:")?;
    figures.events_read = events_read.load(Ordering::Relaxed);
    figures.lagged = lagged.load(Ordering::Relaxed);
    figures.failed = failed.load(Ordering::Relaxed);
    figures.first_failure = first_failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    Ok(figures)
}

async fn read_all(
    mut stream: tonic::Streaming<pb::VideoEvent>,
    events_read: Arc<AtomicU64>,
    lagged: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    first_failure: Arc<std::sync::Mutex<Option<String>>>,
) {
    loop {
        match stream.message().await {
            Ok(Some(_)) => {
                events_read.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => return,
            Err(status) => {
                use tonic_types::StatusExt;
                let reason = status.get_details_error_info().map(|info| info.reason);
                if reason.as_deref() == Some("SUBSCRIBER_LAGGED") {
                    lagged.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let mut first = first_failure.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| format!("{status:?}"));
                }
                return;
            }
        }
    }
}
