//! The upstream simulator in a child process: this same executable run again with
//! `VIDGATE_BENCH_ROLE=sim`. The scenarios that measure the gateway's CPU and memory per job
//! (inflight, e2e) use it, so that the simulator's own work (answering thousands of polls,
//! generating 5 MB MP4s) is not counted as the gateway's; its CPU is reported apart.
//!
//! Protocol on the child's stdin/stdout, one line each: the child prints `listening <base_url>`
//! once started; to each `stats` line it answers one JSON line ([`SimSummary`]); when its stdin
//! closes (the harness stops it or dies) it shuts down and exits.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use vidgate::upstream::sim::{SimConfig, Simulator};

/// Set to `sim` in the child's environment.
pub const ROLE_ENV: &str = "VIDGATE_BENCH_ROLE";
const QUEUED_ENV: &str = "VIDGATE_BENCH_SIM_QUEUED_MS";
const PROCESSING_ENV: &str = "VIDGATE_BENCH_SIM_PROCESSING_MS";
const CONTENT_ENV: &str = "VIDGATE_BENCH_SIM_CONTENT_MIN_SIZE";
/// Longest wait for the child to start or to answer a `stats` line.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// The simulator's timings and video size.
#[derive(Debug, Clone, Copy)]
pub struct SimSettings {
    pub queued_ms: u64,
    pub processing_ms: u64,
    pub content_min_size: u64,
}

/// What the child counted: requests per endpoint, and per task the extremes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimSummary {
    pub creates: u64,
    pub gets: u64,
    pub contents: u64,
    pub last_frames: u64,
    pub tasks: u64,
    pub tasks_evicted: u64,
    pub max_gets_per_task: u64,
    pub min_gets_per_task: u64,
    pub max_contents_per_task: u64,
    pub max_creates_per_prompt: u64,
}

/// A running child simulator.
pub struct ExtSim {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    pub base_url: String,
    pub pid: u32,
}

impl ExtSim {
    pub async fn start(settings: SimSettings) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the harness executable")?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, "sim")
            .env(QUEUED_ENV, settings.queued_ms.to_string())
            .env(PROCESSING_ENV, settings.processing_ms.to_string())
            .env(CONTENT_ENV, settings.content_min_size.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the simulator child process")?;
        let pid = child.id().context("the simulator child has no pid")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(ANSWER_LIMIT, lines.next_line())
            .await
            .context("the simulator child did not start in time")??
            .context("the simulator child exited before listening")?;
        let base_url = first
            .strip_prefix("listening ")
            .with_context(|| format!("unexpected first line from the simulator: {first:?}"))?
            .to_owned();
        Ok(Self {
            child,
            stdin: Some(stdin),
            lines,
            base_url,
            pid,
        })
    }

    pub async fn stats(&mut self) -> anyhow::Result<SimSummary> {
        let stdin = self.stdin.as_mut().context("simulator stopped")?;
        stdin.write_all(b"stats\n").await?;
        stdin.flush().await?;
        let line = tokio::time::timeout(ANSWER_LIMIT, self.lines.next_line())
            .await
            .context("the simulator did not answer `stats` in time")??
            .context("the simulator child exited")?;
        Ok(serde_json::from_str(&line)?)
    }

    /// User + system CPU seconds of the child so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::cpu_seconds_of(&format!("/proc/{}/stat", self.pid))
    }

    /// The child's peak RSS (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::status_kib(&format!("/proc/{}/status", self.pid), "VmHWM:")
    }

    /// Closes the child's stdin (it shuts down), waits a little, then kills it.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The child's whole life: start the simulator, answer `stats`, stop at EOF.
pub async fn child_main() -> anyhow::Result<()> {
    let number = |name: &str| -> anyhow::Result<u64> {
        std::env::var(name)
            .with_context(|| format!("{name} not set"))?
            .parse()
            .with_context(|| format!("{name} is not a number"))
    };
    let config = SimConfig {
        queued_ms: number(QUEUED_ENV)?,
        processing_ms: number(PROCESSING_ENV)?,
        content_min_size: number(CONTENT_ENV)?,
        jitter: 0.0,
        ..SimConfig::default()
    };
    let sim = Simulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let mut out = tokio::io::stdout();
    out.write_all(format!("listening {}\n", sim.base_url()).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Ends at EOF: every iteration consumes one line of a finite stdin.
    while let Some(line) = lines.next_line().await? {
        if line.trim() != "stats" {
            continue;
        }
        let stats = sim.stats();
        let gets = stats.tasks.values().map(|t| t.gets);
        let summary = SimSummary {
            creates: stats.requests.create,
            gets: stats.requests.get,
            contents: stats.requests.content,
            last_frames: stats.requests.last_frame,
            tasks: stats.tasks.len() as u64,
            tasks_evicted: stats.tasks_evicted,
            max_gets_per_task: gets.clone().max().unwrap_or(0),
            min_gets_per_task: gets.min().unwrap_or(0),
            max_contents_per_task: stats
                .tasks
                .values()
                .map(|t| t.content_requests)
                .max()
                .unwrap_or(0),
            max_creates_per_prompt: stats
                .creates_by_prompt
                .values()
                .copied()
                .max()
                .map_or(0, u64::from),
        };
        out.write_all(format!("{}\n", serde_json::to_string(&summary)?).as_bytes())
            .await?;
        out.flush().await?;
    }
    sim.shutdown().await;
    Ok(())
}
