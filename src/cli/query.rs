//! `get`, `list`, `cancel`, `retry` and `delete`: one call each (`list --all` one per page).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;

use anyhow::bail;

use super::render::{video_row, write_json, write_text, write_video};
use super::rpc::{connect, rpc_err};
use super::{ClientOpts, parse_key_value};
use crate::pb::{
    CancelVideoRequest, DeleteVideoRequest, DeleteVideoResponse, GetVideoRequest,
    ListVideosRequest, ListVideosResponse, RetryVideoRequest, VideoStatus,
};

/// Pages `list --all` follows at most, so a server that keeps handing out tokens cannot keep
/// the CLI busy forever (at the largest page size this is five million videos).
pub const MAX_LIST_PAGES: usize = 10_000;

/// Arguments of `get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// Video id
    pub id: String,
}

/// Arguments of `cancel` and `delete`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdArgs {
    /// Video id
    pub id: String,
}

/// Arguments of `retry`.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// Video id
    pub id: String,
    /// Accept that a second generation may be billed: the failed attempt may exist upstream
    /// (and be billed) although vidgate never heard back from it
    #[arg(long)]
    pub accept_possible_duplicate_charge: bool,
}

/// Arguments of `list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only jobs in this status (repeatable): queued, processing, completed, failed, cancelled
    #[arg(long = "status", value_name = "STATUS", value_parser = parse_status)]
    pub statuses: Vec<VideoStatus>,
    /// Only jobs of this model
    #[arg(long)]
    pub model: Option<String>,
    /// Only jobs with this label (repeatable; all must match)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub labels: Vec<(String, String)>,
    /// Videos per page (server default 50, at most 500)
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub page_size: Option<i32>,
    /// Continue from a previous page's next_page_token
    #[arg(long, conflicts_with = "all")]
    pub page_token: Option<String>,
    /// Follow next_page_token to the end
    #[arg(long)]
    pub all: bool,
}

/// Parses a status name in any case (`completed`, `COMPLETED`).
pub fn parse_status(s: &str) -> Result<VideoStatus, String> {
    match VideoStatus::from_str_name(&s.to_ascii_uppercase()) {
        Some(status) if status != VideoStatus::Unspecified => Ok(status),
        _ => Err(format!(
            "unknown status {s:?}; expected queued, processing, completed, failed or cancelled"
        )),
    }
}

pub async fn get(
    opts: &ClientOpts,
    args: GetArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let video = client
        .get_video(GetVideoRequest { id: args.id })
        .await
        .map_err(rpc_err("GetVideo"))?
        .into_inner();
    write_video(out, opts.json, &video)
}

pub async fn cancel(
    opts: &ClientOpts,
    args: IdArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let video = client
        .cancel_video(CancelVideoRequest { id: args.id })
        .await
        .map_err(rpc_err("CancelVideo"))?
        .into_inner();
    write_video(out, opts.json, &video)
}

pub async fn retry(
    opts: &ClientOpts,
    args: RetryArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    // Consent is asked for before any call: the server would refuse without it anyway, and
    // here the reason can be said in the terms of this command.
    if !args.accept_possible_duplicate_charge {
        bail!(
            "retry sends video {} to the upstream again. Its failed attempt may exist upstream \
             (UPSTREAM_OUTCOME_UNKNOWN means vidgate never heard back from it) and may be billed, \
             so a retry may bill a second generation. Run again with \
             --accept-possible-duplicate-charge to accept that",
            args.id
        );
    }
    let mut client = connect(opts).await?;
    let video = client
        .retry_video(RetryVideoRequest {
            id: args.id,
            accept_possible_duplicate_charge: true,
        })
        .await
        .map_err(rpc_err("RetryVideo"))?
        .into_inner();
    write_video(out, opts.json, &video)
}

pub async fn delete(
    opts: &ClientOpts,
    args: IdArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let response: DeleteVideoResponse = client
        .delete_video(DeleteVideoRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(rpc_err("DeleteVideo"))?
        .into_inner();
    if opts.json {
        write_json(out, &response)
    } else {
        write_text(out, &format!("deleted {}", args.id))
    }
}

pub async fn list(
    opts: &ClientOpts,
    args: ListArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let client = connect(opts).await?;
    let mut request = ListVideosRequest {
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
        statuses: args.statuses.iter().map(|s| *s as i32).collect(),
        model: args.model.unwrap_or_default(),
        labels: args.labels.into_iter().collect::<BTreeMap<_, _>>(),
    };
    let pages = Pages {
        json: opts.json,
        all: args.all,
        what: "videos",
        narrow: "narrow the list with --status, --model or --label",
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
                        .list_videos(request)
                        .await
                        .map_err(rpc_err("ListVideos"))?
                        .into_inner())
                }
            },
            |page: &mut ListVideosResponse| {
                (
                    std::mem::take(&mut page.videos),
                    page.next_page_token.clone(),
                )
            },
            |all, videos| all.videos.extend(videos),
            video_row,
        )
        .await
}

/// How a listing command pages: one page, or with `--all` every page (text rows as pages
/// arrive; JSON as one response holding every page, so it stays one document), stopping on a
/// repeated page token or after [`MAX_LIST_PAGES`].
pub(super) struct Pages {
    /// `--json`.
    pub json: bool,
    /// `--all`.
    pub all: bool,
    /// What is listed, for the "more" hint (`videos`).
    pub what: &'static str,
    /// What to do past [`MAX_LIST_PAGES`].
    pub narrow: &'static str,
}

impl Pages {
    /// Lists with `fetch` (a page token -> that page), `split` (a page -> its items and the
    /// next token), `gather` (items into the all-pages response) and `row` (an item's line).
    pub(super) async fn list<R, T, Fut>(
        &self,
        out: &mut (dyn Write + Send),
        start: String,
        mut fetch: impl FnMut(String) -> Fut,
        split: impl Fn(&mut R) -> (Vec<T>, String),
        gather: impl Fn(&mut R, Vec<T>),
        row: impl Fn(&T) -> String,
    ) -> anyhow::Result<()>
    where
        R: Default + serde::Serialize,
        Fut: Future<Output = anyhow::Result<R>>,
    {
        let mut all = R::default();
        let mut seen_tokens = HashSet::new();
        let mut token = start;
        for _ in 0..MAX_LIST_PAGES {
            let mut page = fetch(std::mem::take(&mut token)).await?;
            if !self.all && self.json {
                return write_json(out, &page);
            }
            let (items, next) = split(&mut page);
            if !self.json {
                for item in &items {
                    write_text(out, &row(item))?;
                }
            }
            if !self.all {
                if !next.is_empty() {
                    eprintln!("more {}: --page-token {next} (or --all)", self.what);
                }
                return Ok(());
            }
            if self.json {
                gather(&mut all, items);
            }
            if next.is_empty() {
                if self.json {
                    write_json(out, &all)?;
                }
                return Ok(());
            }
            if !seen_tokens.insert(next.clone()) {
                bail!(
                    "the server returned page token {next:?} twice; stopping rather than looping"
                );
            }
            token = next;
        }
        bail!("stopped after {MAX_LIST_PAGES} pages; {}", self.narrow)
    }
}
