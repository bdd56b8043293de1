//! The `vidgate` binary: a thin shell over the library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use vidgate::upstream::sim::{SimConfig, Simulator};

/// The address `vidgate sim` listens on unless told otherwise.
const DEFAULT_SIM_LISTEN: &str = "127.0.0.1:8089";

#[derive(Parser)]
#[command(name = "vidgate", version, about = "A durable gateway for the Turing /videos API")]
struct Cli {
    /// Log lines as JSON objects instead of text.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
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
