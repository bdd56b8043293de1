//! `webhooks ...`: the tenant's webhook endpoints over `vidgate.v1.WebhookService`, one call per
//! command (`list --all` one per page).
//!
//! | command | call |
//! |---|---|
//! | `create URL` | `CreateWebhookEndpoint`; prints the signing secret, which is shown this once |
//! | `list`, `get ID`, `delete ID` | `ListWebhookEndpoints`, `GetWebhookEndpoint`, `DeleteWebhookEndpoint` |
//! | `update ID` | `UpdateWebhookEndpoint` with an AIP-134 `update_mask` naming exactly the flags given |
//! | `rotate ID` | `RotateWebhookSecret`; the new secret (shown once) and until when the old one signs |
//! | `test ID` | `SendTestWebhook`; the delivery and its attempts |
//! | `deliveries ID` | `ListWebhookDeliveries`, one line per delivery |
//! | `replay ID` | `ReplayWebhooks`, one delivery by `--webhook-id` or every event after `--after-sequence` |
//! | `callback-secret` | `GetCallbackSecret`: the secret that signs per-job callbacks |
//!
//! Output follows [`super::render`]: a readable summary, or the response as proto3 JSON with
//! `--json`. Failed calls are [`super::RpcError`]s.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;

use anyhow::bail;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::query::Pages;
use super::render::{time, write_json, write_text};
use super::rpc::{BearerAuth, MAX_DECODING_MESSAGE_BYTES, rpc_err};
use super::{ClientOpts, parse_key_value};
use crate::pb::replay_webhooks_request::What;
use crate::pb::webhook_service_client::WebhookServiceClient;
use crate::pb::{
    CreateWebhookEndpointRequest, DeleteWebhookEndpointRequest, GetCallbackSecretRequest,
    GetWebhookEndpointRequest, ListWebhookDeliveriesRequest, ListWebhookEndpointsRequest,
    ListWebhookEndpointsResponse, ReplayWebhooksRequest, RotateWebhookSecretRequest,
    SendTestWebhookRequest, UpdateWebhookEndpointRequest, WebhookAttempt, WebhookDelivery,
    WebhookDeliveryState, WebhookEndpoint,
};

/// Arguments of `webhooks`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhooksArgs {
    /// What to do with the webhook endpoints.
    #[command(subcommand)]
    pub command: WebhooksCommand,
}

/// The `webhooks` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WebhooksCommand {
    /// Add an HTTPS endpoint that receives this tenant's job events; prints its signing secret once
    Create(WebhookCreateArgs),
    /// List the webhook endpoints
    List(WebhookListArgs),
    /// Show one webhook endpoint
    Get(WebhookIdArgs),
    /// Change the fields given (and only those) of a webhook endpoint
    Update(WebhookUpdateArgs),
    /// Delete a webhook endpoint and its deliveries
    Delete(WebhookIdArgs),
    /// Give an endpoint a new signing secret (printed once); the old one keeps signing for a while
    Rotate(WebhookRotateArgs),
    /// Send a "webhook.test" event to an endpoint and show how its first attempt went
    Test(WebhookIdArgs),
    /// List an endpoint's deliveries, newest first
    Deliveries(WebhookDeliveriesArgs),
    /// Send events to an endpoint again, with the same webhook-id as before
    Replay(WebhookReplayArgs),
    /// Show the secret that signs this tenant's per-job callbacks (create --callback-url)
    CallbackSecret,
}

/// Arguments of `webhooks create`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookCreateArgs {
    /// The HTTPS URL events are POSTed to
    pub url: String,
    /// What the endpoint is for
    #[arg(long)]
    pub description: Option<String>,
    /// Send only events of this type (repeatable), e.g. video.completed; none = every type
    #[arg(long = "event-type", value_name = "TYPE")]
    pub event_types: Vec<String>,
    /// Send only events of jobs of this model
    #[arg(long)]
    pub model: Option<String>,
    /// Send only events of jobs carrying this label (repeatable; all must match)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
}

/// Arguments of `webhooks get`, `delete` and `test`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookIdArgs {
    /// Webhook endpoint id (whe_...)
    pub id: String,
}

/// Arguments of `webhooks list`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookListArgs {
    /// Endpoints per page (server default 50, at most 100)
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Continue from a previous page's next_page_token
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Follow next_page_token to the end
    #[arg(long)]
    pub all: bool,
}

/// Arguments of `webhooks update`: each flag given is one path of the `update_mask`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookUpdateArgs {
    /// Webhook endpoint id (whe_...)
    pub id: String,
    /// The new HTTPS URL events are POSTed to
    #[arg(long)]
    pub url: Option<String>,
    /// The new description ("" clears it)
    #[arg(long)]
    pub description: Option<String>,
    /// Send only events of this type (repeatable; replaces the current types)
    #[arg(
        long = "event-type",
        value_name = "TYPE",
        conflicts_with = "clear_event_types"
    )]
    pub event_types: Vec<String>,
    /// Send events of every type again
    #[arg(long)]
    pub clear_event_types: bool,
    /// Send only events of jobs of this model ("" = every model)
    #[arg(long)]
    pub model: Option<String>,
    /// Send only events of jobs carrying this label (repeatable; replaces the current labels)
    #[arg(
        long = "label",
        value_name = "KEY=VALUE",
        value_parser = parse_key_value,
        conflicts_with = "clear_labels"
    )]
    pub labels: Vec<(String, String)>,
    /// Remove every label filter
    #[arg(long)]
    pub clear_labels: bool,
    /// Enable the endpoint (also one that vidgate disabled after failures or a 410 Gone)
    #[arg(long, conflicts_with = "disable")]
    pub enable: bool,
    /// Disable the endpoint: it receives nothing until enabled again
    #[arg(long)]
    pub disable: bool,
}

/// Arguments of `webhooks rotate`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookRotateArgs {
    /// Webhook endpoint id (whe_...)
    pub id: String,
    /// How long the previous secret keeps signing alongside the new one, e.g. 24h or 30m
    /// (whole seconds; server default 24h, at most 7d)
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    pub grace: Option<u32>,
}

/// Arguments of `webhooks deliveries`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookDeliveriesArgs {
    /// Webhook endpoint id (whe_...)
    pub id: String,
    /// Deliveries per page (server default when omitted)
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Continue from a previous page's next_page_token
    #[arg(long)]
    pub page_token: Option<String>,
}

/// Arguments of `webhooks replay`: one delivery, or every event after a sequence.
#[derive(Debug, Clone, clap::Args)]
#[command(group(
    clap::ArgGroup::new("what")
        .required(true)
        .args(["webhook_id", "after_sequence"])
))]
pub struct WebhookReplayArgs {
    /// Webhook endpoint id (whe_...)
    pub id: String,
    /// Send this one delivery again (its webhook-id, from `webhooks deliveries`)
    #[arg(long)]
    pub webhook_id: Option<String>,
    /// Send every matching event after this sequence again (at most 10000 per call; continue
    /// from the printed last sequence)
    #[arg(long, value_parser = clap::value_parser!(i64).range(0..))]
    pub after_sequence: Option<i64>,
}

/// Parses `--grace`: a humantime duration of whole seconds, at least one, that fits the
/// request's `uint32` (the server enforces its own maximum).
fn parse_grace(s: &str) -> Result<u32, String> {
    let grace = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; expected a duration such as 24h, 30m or 90s"))?;
    if grace.subsec_nanos() != 0 {
        return Err(format!("{s:?} is not a whole number of seconds"));
    }
    if grace.is_zero() {
        return Err("must be at least 1s; omit --grace for the server's default (24h)".to_owned());
    }
    u32::try_from(grace.as_secs())
        .map_err(|_| format!("{s:?} is too long; the server allows at most 7d"))
}

/// The generated webhook client with the bearer token added to every call.
type WebhookClient = WebhookServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Connects eagerly to `WebhookService`, with the token and TLS of [`super::rpc::connect`],
/// so a wrong address fails here with the same advice.
async fn connect(opts: &ClientOpts) -> anyhow::Result<WebhookClient> {
    let (channel, auth) = super::rpc::channel(opts).await?;
    Ok(WebhookServiceClient::with_interceptor(channel, auth)
        .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES))
}

/// Runs one `webhooks` subcommand, writing its result to `out`.
pub async fn run(
    opts: &ClientOpts,
    args: WebhooksArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    match args.command {
        WebhooksCommand::Create(args) => create(opts, args, out).await,
        WebhooksCommand::List(args) => list(opts, args, out).await,
        WebhooksCommand::Get(args) => get(opts, args, out).await,
        WebhooksCommand::Update(args) => update(opts, args, out).await,
        WebhooksCommand::Delete(args) => delete(opts, args, out).await,
        WebhooksCommand::Rotate(args) => rotate(opts, args, out).await,
        WebhooksCommand::Test(args) => test(opts, args, out).await,
        WebhooksCommand::Deliveries(args) => deliveries(opts, args, out).await,
        WebhooksCommand::Replay(args) => replay(opts, args, out).await,
        WebhooksCommand::CallbackSecret => callback_secret(opts, out).await,
    }
}

async fn create(
    opts: &ClientOpts,
    args: WebhookCreateArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let request = CreateWebhookEndpointRequest {
        url: args.url,
        description: args.description.unwrap_or_default(),
        event_types: args.event_types,
        model: args.model.unwrap_or_default(),
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let mut client = connect(opts).await?;
    let response = client
        .create_webhook_endpoint(request)
        .await
        .map_err(rpc_err("CreateWebhookEndpoint"))?
        .into_inner();
    if opts.json {
        write_json(out, &response)?;
        eprintln!("signing_secret is shown only this once: keep it");
        return Ok(());
    }
    if let Some(endpoint) = &response.endpoint {
        write_text(out, &endpoint_summary(endpoint))?;
    }
    write_text(
        out,
        &secret_line("signing secret", &response.signing_secret),
    )
}

async fn list(
    opts: &ClientOpts,
    args: WebhookListArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let mut request = ListWebhookEndpointsRequest {
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
    };
    let pages = Pages {
        json: opts.json,
        all: args.all,
        what: "endpoints",
        narrow: "page by hand with --page-size and --page-token",
    };
    let start = std::mem::take(&mut request.page_token);
    pages
        .list(
            out,
            start,
            |token| {
                let (mut client, mut request) = (client.clone(), request.clone());
                request.page_token = token;
                async move {
                    Ok(client
                        .list_webhook_endpoints(request)
                        .await
                        .map_err(rpc_err("ListWebhookEndpoints"))?
                        .into_inner())
                }
            },
            |page: &mut ListWebhookEndpointsResponse| {
                (
                    std::mem::take(&mut page.endpoints),
                    page.next_page_token.clone(),
                )
            },
            |all, endpoints| all.endpoints.extend(endpoints),
            endpoint_row,
        )
        .await
}

async fn get(
    opts: &ClientOpts,
    args: WebhookIdArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let endpoint = client
        .get_webhook_endpoint(GetWebhookEndpointRequest { id: args.id })
        .await
        .map_err(rpc_err("GetWebhookEndpoint"))?
        .into_inner();
    write_endpoint(out, opts.json, &endpoint)
}

async fn update(
    opts: &ClientOpts,
    args: WebhookUpdateArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // Refused before connecting: an empty mask is a mistake on this side.
    let request = update_request(args)?;
    let mut client = connect(opts).await?;
    let endpoint = client
        .update_webhook_endpoint(request)
        .await
        .map_err(rpc_err("UpdateWebhookEndpoint"))?
        .into_inner();
    write_endpoint(out, opts.json, &endpoint)
}

/// The `UpdateWebhookEndpoint` request of `webhooks update`: the endpoint carrying the values
/// given, and an `update_mask` naming exactly those fields, in proto field order. Refuses a
/// request that would change nothing.
fn update_request(args: WebhookUpdateArgs) -> anyhow::Result<UpdateWebhookEndpointRequest> {
    let mut endpoint = WebhookEndpoint {
        id: args.id,
        ..WebhookEndpoint::default()
    };
    let mut paths = Vec::new();
    if let Some(url) = args.url {
        endpoint.url = url;
        paths.push("url");
    }
    if let Some(description) = args.description {
        endpoint.description = description;
        paths.push("description");
    }
    if !args.event_types.is_empty() || args.clear_event_types {
        endpoint.event_types = args.event_types;
        paths.push("event_types");
    }
    if let Some(model) = args.model {
        endpoint.model = model;
        paths.push("model");
    }
    if !args.labels.is_empty() || args.clear_labels {
        endpoint.labels = args.labels.into_iter().collect();
        paths.push("labels");
    }
    if args.enable || args.disable {
        endpoint.disabled = args.disable;
        paths.push("disabled");
    }
    if paths.is_empty() {
        bail!(
            "nothing to update for webhook endpoint {}: give at least one of --url, \
             --description, --event-type, --clear-event-types, --model, --label, \
             --clear-labels, --enable or --disable",
            endpoint.id
        );
    }
    Ok(UpdateWebhookEndpointRequest {
        endpoint: Some(endpoint),
        update_mask: Some(pbjson_types::FieldMask {
            paths: paths.into_iter().map(str::to_owned).collect(),
        }),
    })
}

async fn delete(
    opts: &ClientOpts,
    args: WebhookIdArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let response = client
        .delete_webhook_endpoint(DeleteWebhookEndpointRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(rpc_err("DeleteWebhookEndpoint"))?
        .into_inner();
    if opts.json {
        write_json(out, &response)
    } else {
        write_text(
            out,
            &format!("deleted webhook endpoint {} and its deliveries", args.id),
        )
    }
}

async fn rotate(
    opts: &ClientOpts,
    args: WebhookRotateArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let response = client
        .rotate_webhook_secret(RotateWebhookSecretRequest {
            id: args.id,
            grace_seconds: args.grace.unwrap_or(0),
        })
        .await
        .map_err(rpc_err("RotateWebhookSecret"))?
        .into_inner();
    if opts.json {
        write_json(out, &response)?;
        eprintln!("signing_secret is shown only this once: keep it");
        return Ok(());
    }
    let mut text = secret_line("new signing secret", &response.signing_secret);
    let until = response
        .endpoint
        .as_ref()
        .and_then(|e| e.previous_secret_expire_time.as_ref());
    match until {
        Some(until) => {
            let _ = write!(
                text,
                "\nthe previous secret keeps signing alongside it until {}",
                time(Some(until))
            );
        }
        None => text.push_str("\nthe previous secret no longer signs"),
    }
    write_text(out, &text)
}

async fn test(
    opts: &ClientOpts,
    args: WebhookIdArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let delivery = client
        .send_test_webhook(SendTestWebhookRequest { id: args.id })
        .await
        .map_err(rpc_err("SendTestWebhook"))?
        .into_inner();
    if opts.json {
        write_json(out, &delivery)
    } else {
        write_text(out, &delivery_summary(&delivery))
    }
}

async fn deliveries(
    opts: &ClientOpts,
    args: WebhookDeliveriesArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let page = client
        .list_webhook_deliveries(ListWebhookDeliveriesRequest {
            endpoint_id: args.id,
            page_size: args.page_size.unwrap_or(0),
            page_token: args.page_token.unwrap_or_default(),
        })
        .await
        .map_err(rpc_err("ListWebhookDeliveries"))?
        .into_inner();
    if opts.json {
        return write_json(out, &page);
    }
    for delivery in &page.deliveries {
        write_text(out, &delivery_row(delivery))?;
    }
    if !page.next_page_token.is_empty() {
        eprintln!("more deliveries: --page-token {}", page.next_page_token);
    }
    Ok(())
}

async fn replay(
    opts: &ClientOpts,
    args: WebhookReplayArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // clap's required group holds exactly one of the two.
    let what = match (args.webhook_id, args.after_sequence) {
        (Some(webhook_id), _) => What::WebhookId(webhook_id),
        (None, Some(after)) => What::AfterSequence(after),
        (None, None) => bail!("say what to replay: --webhook-id W or --after-sequence N"),
    };
    let mut client = connect(opts).await?;
    let response = client
        .replay_webhooks(ReplayWebhooksRequest {
            endpoint_id: args.id.clone(),
            what: Some(what),
        })
        .await
        .map_err(rpc_err("ReplayWebhooks"))?
        .into_inner();
    if opts.json {
        return write_json(out, &response);
    }
    let mut text = format!(
        "queued {} deliveries to {}; last sequence {}",
        response.queued, args.id, response.last_sequence
    );
    if response.more {
        let _ = write!(
            text,
            "\nmore events follow: run again with --after-sequence {}",
            response.last_sequence
        );
    }
    write_text(out, &text)
}

async fn callback_secret(opts: &ClientOpts, out: &mut (dyn Write + Send)) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let secret = client
        .get_callback_secret(GetCallbackSecretRequest {})
        .await
        .map_err(rpc_err("GetCallbackSecret"))?
        .into_inner();
    if opts.json {
        write_json(out, &secret)
    } else {
        write_text(
            out,
            &format!("callback signing secret: {}", secret.signing_secret),
        )
    }
}

/// The line that hands out a new secret, saying it will not be shown again.
fn secret_line(what: &str, secret: &str) -> String {
    format!("{what} (shown once, keep it): {secret}")
}

/// The proto name of a delivery state (`DELIVERED`), or the raw number when it is not one we know.
fn state_name(state: i32) -> String {
    WebhookDeliveryState::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("STATE_{state}"))
}

/// `enabled`, `failing` (enabled, but its last attempts failed) or `disabled`.
fn endpoint_state(endpoint: &WebhookEndpoint) -> &'static str {
    if endpoint.disabled {
        "disabled"
    } else if endpoint.failing_since.is_some() {
        "failing"
    } else {
        "enabled"
    }
}

/// The event types an endpoint receives, comma-separated.
fn event_types(endpoint: &WebhookEndpoint) -> String {
    if endpoint.event_types.is_empty() {
        "every type".to_owned()
    } else {
        endpoint.event_types.join(", ")
    }
}

/// The multi-line summary `get`, `update` and `create` print.
fn endpoint_summary(endpoint: &WebhookEndpoint) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "id:          {}", endpoint.id);
    let _ = writeln!(s, "url:         {}", endpoint.url);
    if !endpoint.description.is_empty() {
        let _ = writeln!(s, "description: {}", endpoint.description);
    }
    let _ = writeln!(s, "events:      {}", event_types(endpoint));
    if !endpoint.model.is_empty() {
        let _ = writeln!(s, "model:       {}", endpoint.model);
    }
    if !endpoint.labels.is_empty() {
        let labels: Vec<String> = endpoint
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "labels:      {}", labels.join(", "));
    }
    let _ = write!(s, "state:       {}", endpoint_state(endpoint));
    if endpoint.disabled && !endpoint.disabled_reason.is_empty() {
        let _ = write!(s, " ({})", endpoint.disabled_reason);
    }
    s.push('\n');
    if endpoint.failing_since.is_some() {
        let _ = writeln!(
            s,
            "failing:     since {}",
            time(endpoint.failing_since.as_ref())
        );
    }
    let _ = writeln!(s, "created:     {}", time(endpoint.create_time.as_ref()));
    let _ = writeln!(s, "updated:     {}", time(endpoint.update_time.as_ref()));
    if endpoint.previous_secret_expire_time.is_some() {
        let _ = writeln!(
            s,
            "old secret:  signs until {}",
            time(endpoint.previous_secret_expire_time.as_ref())
        );
    }
    s
}

/// One row of `webhooks list`: id, state, URL, event types.
fn endpoint_row(endpoint: &WebhookEndpoint) -> String {
    format!(
        "{:<28} {:<8} {} [{}]",
        endpoint.id,
        endpoint_state(endpoint),
        endpoint.url,
        event_types(endpoint)
    )
}

/// Writes an endpoint as JSON or as its summary, per `--json`.
fn write_endpoint(
    out: &mut (dyn Write + Send),
    json: bool,
    endpoint: &WebhookEndpoint,
) -> anyhow::Result<()> {
    if json {
        write_json(out, endpoint)
    } else {
        write_text(out, &endpoint_summary(endpoint))
    }
}

/// What one attempt got back: `HTTP 200`, `HTTP 500: <error>`, or `no response: <error>`.
fn attempt_outcome(attempt: &WebhookAttempt) -> String {
    match (attempt.http_status, attempt.error.as_str()) {
        (0, "") => "no response".to_owned(),
        (0, error) => format!("no response: {error}"),
        (status, "") => format!("HTTP {status}"),
        (status, error) => format!("HTTP {status}: {error}"),
    }
}

/// The multi-line summary `webhooks test` prints: the delivery and its recent attempts.
fn delivery_summary(delivery: &WebhookDelivery) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "webhook id:  {}", delivery.webhook_id);
    let _ = writeln!(s, "endpoint:    {}", delivery.endpoint_id);
    let _ = write!(s, "event:       {}", delivery.event_type);
    if delivery.sequence != 0 {
        let _ = write!(s, " (sequence {})", delivery.sequence);
    }
    s.push('\n');
    if !delivery.video_id.is_empty() {
        let _ = writeln!(s, "video:       {}", delivery.video_id);
    }
    let _ = writeln!(s, "state:       {}", state_name(delivery.state));
    let _ = writeln!(s, "attempts:    {}", delivery.attempts);
    if delivery.next_attempt_time.is_some() {
        let _ = writeln!(
            s,
            "next try:    {}",
            time(delivery.next_attempt_time.as_ref())
        );
    }
    let _ = writeln!(s, "created:     {}", time(delivery.create_time.as_ref()));
    for attempt in &delivery.recent_attempts {
        let _ = writeln!(
            s,
            "attempt {:<4} {}, {}, {} ms",
            format!("{}:", attempt.number),
            time(attempt.time.as_ref()),
            attempt_outcome(attempt),
            attempt.duration_ms
        );
    }
    s
}

/// One row of `webhooks deliveries`: webhook-id, event type, video, state, attempts, and what
/// the newest attempt got back.
fn delivery_row(delivery: &WebhookDelivery) -> String {
    let video = if delivery.video_id.is_empty() {
        "-"
    } else {
        delivery.video_id.as_str()
    };
    let last = delivery
        .recent_attempts
        .first()
        .map_or_else(|| "-".to_owned(), attempt_outcome);
    format!(
        "{:<36} {:<18} {:<28} {:<13} {:>3} {}",
        delivery.webhook_id,
        delivery.event_type,
        video,
        state_name(delivery.state),
        delivery.attempts,
        last
    )
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::{CommandFactory as _, Parser};

    use super::super::ClientCommand;
    use super::*;

    /// The client commands as the binary exposes them.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<WebhooksCommand, clap::Error> {
        let cli = Cli::try_parse_from(["vidgate", "webhooks"].iter().chain(args))?;
        match cli.cmd {
            ClientCommand::Webhooks(webhooks) => Ok(webhooks.command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn parse_update(args: &[&str]) -> WebhookUpdateArgs {
        match parse(&[&["update"], args].concat()) {
            Ok(WebhooksCommand::Update(args)) => args,
            other => panic!("not an update: {other:?}"),
        }
    }

    fn paths(request: &UpdateWebhookEndpointRequest) -> Vec<&str> {
        request
            .update_mask
            .as_ref()
            .map(|mask| mask.paths.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    #[test]
    fn the_webhooks_commands_are_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn update_masks_exactly_the_fields_given() {
        let request = update_request(parse_update(&["whe_1", "--description", "x", "--disable"]))
            .expect("a valid update");
        assert_eq!(paths(&request), ["description", "disabled"]);
        let endpoint = request.endpoint.expect("the endpoint");
        assert_eq!(endpoint.id, "whe_1");
        assert_eq!(endpoint.description, "x");
        assert!(endpoint.disabled);
        assert_eq!(endpoint.url, "");
    }

    #[test]
    fn update_with_every_flag_masks_every_field_in_proto_order() {
        let request = update_request(parse_update(&[
            "whe_1",
            "--enable",
            "--label",
            "team=a",
            "--model",
            "veo-3",
            "--event-type",
            "video.completed",
            "--event-type",
            "video.failed",
            "--description",
            "",
            "--url",
            "https://example.com/hook",
        ]))
        .expect("a valid update");
        assert_eq!(
            paths(&request),
            [
                "url",
                "description",
                "event_types",
                "model",
                "labels",
                "disabled"
            ]
        );
        let endpoint = request.endpoint.expect("the endpoint");
        assert_eq!(endpoint.url, "https://example.com/hook");
        assert_eq!(endpoint.event_types, ["video.completed", "video.failed"]);
        assert_eq!(endpoint.model, "veo-3");
        assert_eq!(
            endpoint.labels,
            BTreeMap::from([("team".to_owned(), "a".to_owned())])
        );
        assert!(!endpoint.disabled, "--enable sends disabled = false");
    }

    #[test]
    fn clearing_flags_mask_the_field_with_an_empty_value() {
        let request = update_request(parse_update(&[
            "whe_1",
            "--clear-event-types",
            "--clear-labels",
        ]))
        .expect("a valid update");
        assert_eq!(paths(&request), ["event_types", "labels"]);
        let endpoint = request.endpoint.expect("the endpoint");
        assert!(endpoint.event_types.is_empty());
        assert!(endpoint.labels.is_empty());
    }

    #[test]
    fn update_without_changes_is_refused_naming_the_flags() {
        let err = update_request(parse_update(&["whe_1"])).expect_err("nothing to update");
        let text = err.to_string();
        assert!(text.contains("nothing to update"), "{text}");
        assert!(text.contains("whe_1"), "{text}");
        assert!(text.contains("--disable"), "{text}");
    }

    #[test]
    fn enable_and_disable_together_are_a_clap_error() {
        let err = parse(&["update", "whe_1", "--enable", "--disable"]).expect_err("conflict");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn a_list_and_its_clearing_flag_together_are_a_clap_error() {
        for args in [
            [
                "update",
                "whe_1",
                "--event-type",
                "video.completed",
                "--clear-event-types",
            ],
            ["update", "whe_1", "--label", "team=a", "--clear-labels"],
        ] {
            let err = parse(&args).expect_err("conflict");
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}");
        }
    }

    #[test]
    fn a_bad_label_is_a_clap_error_naming_the_flag() {
        for args in [
            ["create", "https://example.com/hook", "--label", "team"],
            ["update", "whe_1", "--label", "=a"],
        ] {
            let err = parse(&args).expect_err("bad label");
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{args:?}");
            assert!(err.to_string().contains("--label"), "{err}");
        }
    }

    #[test]
    fn create_collects_filters_and_labels() {
        let Ok(WebhooksCommand::Create(args)) = parse(&[
            "create",
            "https://example.com/hook",
            "--description",
            "ops",
            "--event-type",
            "video.completed",
            "--model",
            "veo-3",
            "--label",
            "team=a=b",
        ]) else {
            panic!("not a create");
        };
        assert_eq!(args.url, "https://example.com/hook");
        assert_eq!(args.description.as_deref(), Some("ops"));
        assert_eq!(args.event_types, ["video.completed"]);
        assert_eq!(args.model.as_deref(), Some("veo-3"));
        assert_eq!(args.labels, [("team".to_owned(), "a=b".to_owned())]);
    }

    #[test]
    fn rotate_grace_is_a_humantime_duration_in_whole_seconds() {
        let grace = |args: &[&str]| match parse(&[&["rotate", "whe_1"], args].concat()) {
            Ok(WebhooksCommand::Rotate(args)) => Ok(args.grace),
            Ok(other) => panic!("not a rotate: {other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(grace(&[]).expect("no grace"), None);
        assert_eq!(grace(&["--grace", "24h"]).expect("24h"), Some(86_400));
        assert_eq!(grace(&["--grace", "30m"]).expect("30m"), Some(1_800));
        for bad in ["soon", "500ms", "0s", "200years"] {
            let err = grace(&["--grace", bad]).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::ValueValidation, "{bad}");
            assert!(err.to_string().contains("--grace"), "{err}");
        }
    }

    #[test]
    fn replay_takes_exactly_one_of_webhook_id_and_after_sequence() {
        let Ok(WebhooksCommand::Replay(args)) =
            parse(&["replay", "whe_1", "--after-sequence", "42"])
        else {
            panic!("not a replay");
        };
        assert_eq!(args.after_sequence, Some(42));
        assert_eq!(args.webhook_id, None);
        let missing = parse(&["replay", "whe_1"]).expect_err("neither");
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);
        let both = parse(&[
            "replay",
            "whe_1",
            "--webhook-id",
            "msg_1",
            "--after-sequence",
            "1",
        ])
        .expect_err("both");
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
        // clap reads "-1" as an unknown flag rather than a number: refused either way.
        assert!(parse(&["replay", "whe_1", "--after-sequence", "-1"]).is_err());
    }

    #[test]
    fn list_page_token_and_all_conflict() {
        let err = parse(&["list", "--page-token", "t", "--all"]).expect_err("conflict");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        assert!(matches!(
            parse(&["callback-secret"]),
            Ok(WebhooksCommand::CallbackSecret)
        ));
    }

    #[test]
    fn a_secret_is_printed_as_shown_once() {
        assert_eq!(
            secret_line("signing secret", "whsec_abc"),
            "signing secret (shown once, keep it): whsec_abc"
        );
    }

    #[test]
    fn attempts_and_deliveries_read_as_one_line_each() {
        let failed = WebhookAttempt {
            number: 2,
            time: Some(pbjson_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            http_status: 0,
            error: "connection refused".to_owned(),
            duration_ms: 12,
        };
        assert_eq!(attempt_outcome(&failed), "no response: connection refused");
        let ok = WebhookAttempt {
            http_status: 204,
            error: String::new(),
            ..failed.clone()
        };
        assert_eq!(attempt_outcome(&ok), "HTTP 204");
        let delivery = WebhookDelivery {
            webhook_id: "msg_1".to_owned(),
            endpoint_id: "whe_1".to_owned(),
            event_type: "webhook.test".to_owned(),
            state: WebhookDeliveryState::Pending as i32,
            attempts: 2,
            recent_attempts: vec![failed],
            ..WebhookDelivery::default()
        };
        let row = delivery_row(&delivery);
        assert!(row.starts_with("msg_1 "), "{row}");
        assert!(row.contains(" - "), "no video: {row}");
        assert!(row.contains("PENDING"), "{row}");
        assert!(
            row.ends_with("  2 no response: connection refused"),
            "{row}"
        );
        let summary = delivery_summary(&delivery);
        assert!(
            summary.contains(
                "attempt 2:   2023-11-14T22:13:20+00:00, no response: connection refused, 12 ms"
            ),
            "{summary}"
        );
    }
}
