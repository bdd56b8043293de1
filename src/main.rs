//! The `vidgate` binary: a thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vidgate::upstream::sim::{SimConfig, Simulator};

/// The address `vidgate sim` listens on unless told otherwise.
const DEFAULT_SIM_LISTEN: &str = "127.0.0.1:8089";

#[derive(Parser)]
#[command(
    name = "vidgate",
    version,
    about = "A durable gateway for the Turing /videos API"
)]
struct Cli {
    /// Where client commands connect, with which token, in which output format.
    #[command(flatten)]
    client: vidgate::cli::ClientOpts,
    /// Log lines as JSON objects instead of text.
    #[arg(long, value_enum, env = "VIDGATE_LOG_FORMAT", default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

use vidgate::telemetry::LogFormat;

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only make matching clumsier"
)]
enum Command {
    /// Run the gateway: gRPC API, durable jobs, the dispatcher. Without TURING_API_KEY the
    /// built-in upstream simulator stands in for the real API.
    Serve {
        /// A TOML configuration file (see README); environment variables override it.
        #[arg(long, env = "VIDGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Turn authentication off: every caller is one tenant. Local use and demos only.
        #[arg(long)]
        no_auth: bool,
    },
    /// Run everything on embedded defaults (SQLite in a temp dir, the built-in simulator, no
    /// auth), make one text-to-video and one image-to-video job through the gRPC API, and leave
    /// both playable MP4s in OUTPUT_DIR.
    Demo {
        /// Where the MP4s go.
        #[arg(long, default_value = "demo-output")]
        output_dir: PathBuf,
    },
    /// Client commands against a running `vidgate serve`.
    #[command(flatten)]
    Client(vidgate::cli::ClientCommand),
    /// Run the upstream simulator: the /videos API (rules V1-V5, S1-S10), playable MP4s, faults.
    Sim {
        /// Address to listen on.
        #[arg(long, env = "VIDGATE_SIM_LISTEN", default_value = DEFAULT_SIM_LISTEN)]
        listen: SocketAddr,
        /// A TOML file with the simulator's settings (timings, faults, key); flags override it.
        #[arg(long, env = "VIDGATE_SIM_CONFIG")]
        config: Option<PathBuf>,
        /// The bearer key the simulator accepts.
        #[arg(long, env = "VIDGATE_SIM_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// How long a task stays queued, in milliseconds.
        #[arg(long)]
        queued_ms: Option<u64>,
        /// How long a task processes, in milliseconds.
        #[arg(long)]
        processing_ms: Option<u64>,
    },
    /// Exit 0 when the admin port answers its readiness check with 2xx, else print why and exit
    /// 1: the container HEALTHCHECK (slim images have no curl). Sends `VIDGATE_ADMIN_TOKEN` as
    /// the bearer token when it is set.
    Healthcheck {
        /// The URL to GET.
        #[arg(long, env = vidgate::healthcheck::URL_ENV, default_value = vidgate::healthcheck::DEFAULT_URL)]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = vidgate::healthcheck::DEFAULT_TIMEOUT_MS)]
        timeout_ms: u64,
    },
}

async fn serve(config: Option<PathBuf>, no_auth: bool) -> anyhow::Result<()> {
    let mut config = vidgate::config::Config::load(config.as_deref())?;
    if no_auth {
        config.auth.mode = vidgate::api::auth::AuthMode::None;
    }
    let app = vidgate::app::Application::build(config).await?;
    tracing::info!(grpc = %app.grpc_addr(), "ready; stop with Ctrl-C or SIGTERM");
    shutdown_signal().await;
    let grace = app.shutdown_grace();
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: refusing new calls, ending streams, finishing in-flight work"
    );
    watchdog(grace);
    match app.shutdown().await {
        vidgate::app::Stopped::Cleanly => Ok(()),
        vidgate::app::Stopped::Abandoned(n) => Err(anyhow::anyhow!(
            "stopped at the end of the shutdown grace ({} ms), abandoning {n} unfinished task(s)",
            grace.as_millis()
        )),
    }
}

/// Ends the process once `grace` has passed, whatever is still running. The application's own
/// shutdown keeps within the grace, but what follows it (the runtime waiting for blocking
/// threads, exporters flushing to an unreachable collector) has no bound of its own, and an
/// orchestrator's SIGKILL would come anyway.
fn watchdog(grace: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-watchdog".into())
        .spawn(move || {
            std::thread::sleep(grace);
            // Straight to stderr: the log pipeline may be part of what is stuck.
            eprintln!(
                "vidgate: still running {} ms after the stop signal (server.shutdown_grace_ms); exiting, abandoning the rest",
                grace.as_millis()
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no shutdown watchdog thread; the stop is bounded by the application alone");
    }
}

/// The demo's simulator and dispatcher timings: seconds, so a person can watch it happen.
const DEMO_QUEUED_MS: u64 = 1_000;
const DEMO_PROCESSING_MS: u64 = 4_000;
const DEMO_POLL_MS: u64 = 1_000;

async fn demo(output_dir: PathBuf) -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("vidgate-demo-{}", std::process::id()));
    let mut config = vidgate::config::Config::default();
    config.server.grpc_listen = "127.0.0.1:0".parse()?;
    config.admin.listen = "127.0.0.1:0".parse()?;
    config.storage.data_dir = data_dir.clone();
    config.upstream.mode = vidgate::config::UpstreamMode::Simulator;
    config.simulator.queued_ms = DEMO_QUEUED_MS;
    config.simulator.processing_ms = DEMO_PROCESSING_MS;
    config.auth.mode = vidgate::api::auth::AuthMode::None;
    config.dispatcher.first_poll_after_ms = DEMO_POLL_MS;
    config.dispatcher.poll_interval_ms = DEMO_POLL_MS;
    // The demo's webhook receiver is on this machine, over plain http.
    config.webhooks.allow_http = true;
    config.webhooks.allow_private_targets = true;
    let app = vidgate::app::Application::build(config).await?;
    let addr = format!("http://{}", app.grpc_addr());
    let opts = vidgate::cli::ClientOpts {
        addr: addr.clone(),
        token: None,
        json: false,
        tls: vidgate::cli::TlsOpts::default(),
    };
    let receiver = DemoReceiver::start().await?;
    let secret = demo_webhook(&opts, &receiver.url).await?;
    std::fs::create_dir_all(&output_dir)
        .with_context(|| format!("creating {}", output_dir.display()))?;
    let image = output_dir.join("demo-input.png");
    let png = vidgate::upstream::sim::mp4gen::last_frame_png(640, 360, 7)?;
    std::fs::write(&image, &png).with_context(|| format!("writing {}", image.display()))?;
    let text_out = output_dir.join("text-to-video.mp4");
    let image_out = output_dir.join("image-to-video.mp4");
    let jobs: [Vec<String>; 2] = [
        vec![
            "create".into(),
            "--model".into(),
            "turing/veo-3.1-generate".into(),
            "--prompt".into(),
            "please generate a video of a cat playing piano".into(),
            "--size".into(),
            "1280x720".into(),
            "--seconds".into(),
            "6".into(),
            "--output".into(),
            text_out.display().to_string(),
        ],
        vec![
            "create".into(),
            "--model".into(),
            "turing/veo-3.1-generate".into(),
            "--prompt".into(),
            "the picture comes to life".into(),
            "--size".into(),
            "720x1280".into(),
            "--seconds".into(),
            "4".into(),
            "--image".into(),
            image.display().to_string(),
            "--output".into(),
            image_out.display().to_string(),
        ],
    ];
    let mut result = Ok(());
    for args in jobs {
        eprintln!("\n$ vidgate --addr {addr} {}", args.join(" "));
        let parsed = DemoClient::try_parse_from(std::iter::once("vidgate".to_owned()).chain(args))?;
        if let Err(e) = vidgate::cli::run(opts.clone(), parsed.command).await {
            result = Err(e);
            break;
        }
    }
    if result.is_ok() {
        result = receiver.show(&secret, 2).await;
    }
    app.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    result?;
    eprintln!(
        "\nDone: {} and {} are playable MP4s.",
        text_out.display(),
        image_out.display()
    );
    Ok(())
}

/// Makes the demo's webhook endpoint (as `vidgate webhooks create` would, printing it) and
/// returns its signing secret.
async fn demo_webhook(opts: &vidgate::cli::ClientOpts, url: &str) -> anyhow::Result<String> {
    let args = [
        "webhooks",
        "create",
        url,
        "--event-type",
        "video.completed",
        "--description",
        "the demo's receiver",
    ];
    eprintln!("\n$ vidgate --addr {} {}", opts.addr, args.join(" "));
    let parsed = DemoClient::try_parse_from(std::iter::once("vidgate").chain(args))?;
    let mut out = Vec::new();
    vidgate::cli::run_with_output(opts.clone(), parsed.command, &mut out).await?;
    let text = String::from_utf8_lossy(&out).into_owned();
    eprint!("{text}");
    text.split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .map(str::to_owned)
        .context("`vidgate webhooks create` printed no signing secret")
}

/// The demo's webhook receiver: records what it is sent, answers 204.
struct DemoReceiver {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>,
}

impl DemoReceiver {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let record = record.clone();
                async move {
                    record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((headers, body));
                    http::StatusCode::NO_CONTENT
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, got })
    }

    /// Waits (up to 10 s) for `count` webhooks, checks each signature with the Standard
    /// Webhooks library, and prints them.
    async fn show(&self, secret: &str, count: usize) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.got.lock().unwrap_or_else(|p| p.into_inner()).len() < count {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the demo's webhook receiver did not get {count} webhooks within 10 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let verifier = standardwebhooks::Webhook::new(secret)
            .map_err(|e| anyhow::anyhow!("the signing secret does not parse: {e}"))?;
        let got = self.got.lock().unwrap_or_else(|p| p.into_inner()).clone();
        eprintln!();
        for (headers, body) in got {
            verifier
                .verify(&body, &headers)
                .map_err(|e| anyhow::anyhow!("a webhook's signature does not verify: {e}"))?;
            let event: serde_json::Value = serde_json::from_slice(&body)?;
            eprintln!(
                "webhook received: {} for {} (webhook-id {}), signature verified",
                event["type"].as_str().unwrap_or("?"),
                event["data"]["id"].as_str().unwrap_or("?"),
                headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?"),
            );
        }
        Ok(())
    }
}

/// Parses the demo's client command lines exactly as the CLI would.
#[derive(Parser)]
struct DemoClient {
    #[command(subcommand)]
    command: vidgate::cli::ClientCommand,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// jemalloc, with background threads that purge freed pages (`dirty_decay_ms` 10 s by default):
/// memory held by streams that closed goes back to the system instead of staying resident, as
/// it did with glibc's allocator. Options: `_RJEM_MALLOC_CONF` (the prefixed `MALLOC_CONF`).
#[cfg(all(target_os = "linux", feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs, and spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let telemetry = vidgate::telemetry::init(cli.log_format)?;
    let result = run(cli).await;
    // After the application has stopped: the last spans are exported.
    telemetry.shutdown();
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, no_auth } => serve(config, no_auth).await?,
        Command::Demo { output_dir } => demo(output_dir).await?,
        Command::Healthcheck { url, timeout_ms } => {
            let timeout = std::time::Duration::from_millis(timeout_ms);
            // The admin token, when the port requires one, comes from the environment only (an
            // argument would show in the process list).
            let token = std::env::var(vidgate::config::ADMIN_TOKEN_ENV)
                .ok()
                .filter(|t| !t.is_empty());
            if let Err(e) =
                vidgate::healthcheck::check_with_token(&url, timeout, token.as_deref()).await
            {
                eprintln!("unhealthy: {e}");
                std::process::exit(1);
            }
        }
        Command::Client(cmd) => vidgate::cli::run(cli.client, cmd).await?,
        Command::Sim {
            listen,
            config,
            api_key,
            queued_ms,
            processing_ms,
        } => {
            let mut sim_config = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading simulator config {}", path.display()))?;
                    toml::from_str::<SimConfig>(&text)
                        .with_context(|| format!("parsing simulator config {}", path.display()))?
                }
                None => SimConfig::default(),
            };
            if let Some(key) = api_key {
                sim_config.api_key = key;
            }
            if let Some(ms) = queued_ms {
                sim_config.queued_ms = ms;
            }
            if let Some(ms) = processing_ms {
                sim_config.processing_ms = ms;
            }
            let handle = Simulator::start(sim_config, listen)
                .await
                .with_context(|| format!("starting the simulator on {listen}"))?;
            tracing::info!(base_url = %handle.base_url(), "simulator listening; stop with Ctrl-C");
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            handle.shutdown().await;
        }
    }
    Ok(())
}
