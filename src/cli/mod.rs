//! The client half of the `vidgate` binary: `create`, `get`, `list`, `watch`, `download`,
//! `cancel`, `retry`, `delete` and `webhooks ...`, each one or a few gRPC calls to a running
//! `vidgate serve`.
//!
//! Results go to stdout (a readable summary, or proto3 JSON with `--json`); progress goes to
//! stderr, animated on a terminal and as plain lines otherwise. Every failure is an
//! [`anyhow::Error`] whose text says what failed and what to do; a failed RPC carries its
//! `google.rpc` details ([`RpcError`]). `main` prints it and exits non-zero.
//!
//! | module | owns |
//! |---|---|
//! | [`rpc`] | connecting with the bearer token, retry/backoff decisions, rendering a `Status` |
//! | [`tls`] | `--tls`, `--ca-cert`, `--cert`/`--key`: TLS and client certificates towards the server |
//! | `create` | flags (or a JSON file) to a `CreateVideoRequest`, then optionally wait and download |
//! | `query` | `get`, `list`, `cancel`, `retry`, `delete` |
//! | `watch` | following one job's events, optionally saving its content from the stream |
//! | `webhooks` | `webhooks create`, `list`, `get`, `update` (AIP-134 mask), `delete`, `rotate`, `test`, `deliveries`, `replay`, `callback-secret` over `WebhookService` |
//! | `download` | resumable `DownloadVideo` into `FILE.part`, verified, then renamed |
//! | `content` | the file a download or watch writes: offsets, hashing, verification |
//! | `render` | text summaries and JSON of the results |
//! | `progress` | the live status line and byte bar on stderr |

mod content;
mod create;
mod download;
mod progress;
mod query;
mod render;
pub mod rpc;
pub mod tls;
mod watch;
mod webhooks;

use std::io::Write;

pub use create::CreateArgs;
pub use download::DownloadArgs;
pub use query::{GetArgs, IdArgs, ListArgs, RetryArgs};
pub use rpc::RpcError;
pub use tls::TlsOpts;
pub use watch::WatchArgs;
pub use webhooks::{
    WebhookCreateArgs, WebhookDeliveriesArgs, WebhookIdArgs, WebhookListArgs, WebhookReplayArgs,
    WebhookRotateArgs, WebhookUpdateArgs, WebhooksArgs, WebhooksCommand,
};

/// Where and how to reach `vidgate serve`, shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// gRPC address of `vidgate serve`
    #[arg(long, env = "VIDGATE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Bearer token (sent as `authorization: Bearer <token>`)
    #[arg(long, env = "VIDGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print results as proto3 JSON instead of text
    #[arg(long)]
    pub json: bool,
    /// TLS towards the server.
    #[command(flatten)]
    pub tls: TlsOpts,
}

/// The client commands.
#[derive(Debug, Clone, clap::Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only make matching clumsier"
)]
pub enum ClientCommand {
    /// Create a video job (idempotent by --request-id), optionally wait for it and download it
    Create(CreateArgs),
    /// Show one video job
    Get(GetArgs),
    /// List video jobs, newest first
    List(ListArgs),
    /// Follow a job live until it ends, optionally saving its content
    Watch(WatchArgs),
    /// Download a completed video (resumes an interrupted download)
    Download(DownloadArgs),
    /// Cancel a job (vidgate stops polling; the upstream task may still run)
    Cancel(IdArgs),
    /// Send a failed job again (e.g. after UPSTREAM_OUTCOME_UNKNOWN), accepting a possible second charge
    Retry(RetryArgs),
    /// Delete a job and its stored content
    Delete(IdArgs),
    /// Manage the webhook endpoints that receive this tenant's job events
    Webhooks(WebhooksArgs),
}

/// Runs one client command, printing its result to stdout.
pub async fn run(opts: ClientOpts, cmd: ClientCommand) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout();
    run_with_output(opts, cmd, &mut stdout).await
}

/// [`run`] with the results written to `out` instead of stdout (tests read them back).
pub async fn run_with_output(
    opts: ClientOpts,
    cmd: ClientCommand,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Create(args) => create::run(&opts, args, out).await,
        ClientCommand::Get(args) => query::get(&opts, args, out).await,
        ClientCommand::List(args) => query::list(&opts, args, out).await,
        ClientCommand::Watch(args) => watch::run(&opts, args, out).await,
        ClientCommand::Download(args) => download::run(&opts, args, out).await,
        ClientCommand::Cancel(args) => query::cancel(&opts, args, out).await,
        ClientCommand::Retry(args) => query::retry(&opts, args, out).await,
        ClientCommand::Delete(args) => query::delete(&opts, args, out).await,
        ClientCommand::Webhooks(args) => webhooks::run(&opts, args, out).await,
    }
}

/// Parses a `key=value` flag (labels). The key must be non-empty; the value may be.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}
