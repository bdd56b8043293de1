//! `watch ID`: follows one job's events with a live status line until it ends; with `--output`
//! the content comes on the same stream (`include_content`) and is checked against
//! `content_end`. Broken, lagged or shut-down streams are resumed from the last sequence seen.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use tonic::Status;

use super::ClientOpts;
use super::content::PartFile;
use super::download::{Downloaded, write_downloaded};
use super::progress::{ByteBar, StatusLine};
use super::render::{is_terminal, status_name, write_video};
use super::rpc::{
    Client, MAX_RECONNECTS, RpcError, StreamError, connect, is_transient, resume_sequence,
    retry_delay,
};
use crate::pb::video_event::Kind;
use crate::pb::{ContentEnd, Video, VideoStatus, WatchVideoRequest};

/// Arguments of `watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Video id
    pub id: String,
    /// Replay the job's events after this sequence (0 = start from its current state)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub after_sequence: i64,
    /// Save the content to FILE when the job completes (verified against the stream's
    /// size and SHA-256)
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub async fn run(
    opts: &ClientOpts,
    args: WatchArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let followed = follow(
        &mut client,
        &args.id,
        args.after_sequence,
        args.output.as_deref(),
    )
    .await?;
    write_video(out, opts.json, &followed.video)?;
    if let Some(saved) = &followed.saved {
        if opts.json {
            // stdout holds exactly one JSON document; the verdict goes with the progress.
            eprintln!("wrote {}: sha256 ok {}", saved.path.display(), saved.sha256);
        } else {
            write_downloaded(out, false, &args.id, saved)?;
        }
    }
    ensure_completed(&followed.video)
}

/// A job that ended other than COMPLETED makes the command fail (non-zero exit), so scripts
/// can chain on `watch` and `create --wait`.
pub fn ensure_completed(video: &Video) -> anyhow::Result<()> {
    if video.status == VideoStatus::Completed as i32 {
        return Ok(());
    }
    let status = status_name(video.status);
    Err(match &video.error {
        Some(e) => anyhow!(
            "video {} ended {status}: {}: {}",
            video.id,
            e.reason,
            e.message
        ),
        None => anyhow!("video {} ended {status}", video.id),
    })
}

/// How a followed job ended.
pub struct Followed {
    /// The terminal state.
    pub video: Video,
    /// The saved content, when `--output` was given and the job completed.
    pub saved: Option<Downloaded>,
}

/// Where following stands across reconnects.
struct Progress {
    /// Resume after this sequence.
    cursor: i64,
    /// The latest state seen.
    latest: Option<Video>,
    /// The sequence of the COMPLETED event, once content is expected after it.
    completed_sequence: Option<i64>,
    file: Option<PartFile>,
    bar: Option<ByteBar>,
    saved: Option<Downloaded>,
    /// Events and bytes received; a reconnect that moved these on resets the retry count.
    received: u64,
}

/// Follows job `id` until it ends (and, with `output`, until its content is saved and
/// verified). Returns the terminal state.
pub async fn follow(
    client: &mut Client,
    id: &str,
    after_sequence: i64,
    output: Option<&Path>,
) -> anyhow::Result<Followed> {
    let mut line = StatusLine::new();
    let mut p = Progress {
        cursor: after_sequence,
        latest: None,
        completed_sequence: None,
        file: None,
        bar: None,
        saved: None,
        received: 0,
    };
    let mut attempts = 0u32;
    loop {
        let received_before = p.received;
        let status = match follow_once(client, id, output, &mut p, &mut line).await {
            Ok(true) => break,
            // The stream ends only after the terminal event (and content): ending sooner
            // means the connection or the server went away.
            Ok(false) => Status::unavailable("the event stream ended before the job did"),
            Err(StreamError::Local(e)) => return Err(e),
            Err(StreamError::Rpc(status)) => status,
        };
        if p.received > received_before {
            attempts = 0;
        }
        attempts += 1;
        if !is_transient(&status) || attempts > MAX_RECONNECTS {
            return Err(RpcError::new("WatchVideo", status).into());
        }
        p.cursor = resume_cursor(&p, &status);
        let delay = retry_delay(&status, attempts);
        let message = format!(
            "watch interrupted ({:?}: {}); resuming after sequence {} in {delay:?} (attempt {attempts} of {MAX_RECONNECTS})",
            status.code(),
            status.message(),
            p.cursor
        );
        match &p.bar {
            Some(bar) => bar.note(&message),
            None => line.note(&message),
        }
        tokio::time::sleep(delay).await;
    }
    line.finish();
    if let Some(bar) = &p.bar {
        bar.finish();
    }
    let video = p
        .latest
        .ok_or_else(|| anyhow!("the watch of {id} ended without any state"))?;
    Ok(Followed {
        video,
        saved: p.saved,
    })
}

/// Where to resume after `status` ended the stream.
fn resume_cursor(p: &Progress, status: &Status) -> i64 {
    // Content in flight carries no sequence: replay from just before COMPLETED, so the
    // chunks come again; the part file skips the bytes it already has.
    if let Some(seq) = p.completed_sequence
        && p.saved.is_none()
    {
        return (seq - 1).max(0);
    }
    // A lagged stream, or one ended by the server's shutdown, names the last sequence it
    // delivered. Never resume past what we saw
    // ourselves: replaying an event is harmless (each carries the whole state), skipping one
    // is not.
    match resume_sequence(status) {
        Some(delivered) => delivered.min(p.cursor),
        None => p.cursor,
    }
}

/// One `WatchVideo` call. `Ok(true)` when the job ended and nothing more is wanted.
async fn follow_once(
    client: &mut Client,
    id: &str,
    output: Option<&Path>,
    p: &mut Progress,
    line: &mut StatusLine,
) -> Result<bool, StreamError> {
    let mut stream = client
        .watch_video(WatchVideoRequest {
            id: id.to_owned(),
            after_sequence: p.cursor,
            include_content: output.is_some(),
        })
        .await
        .map_err(StreamError::Rpc)?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(StreamError::Rpc)? {
        p.received += 1;
        match event.kind {
            Some(Kind::Video(video)) => {
                if event.sequence > 0 {
                    p.cursor = event.sequence;
                }
                if p.bar.is_none() {
                    line.update(&video);
                }
                let terminal = is_terminal(&video);
                let completed = video.status == VideoStatus::Completed as i32;
                if let Some(path) = output.filter(|_| completed && p.saved.is_none()) {
                    p.completed_sequence = Some(event.sequence);
                    // Made only now, so a job that fails leaves no empty file behind. The
                    // stream sends the content from its first byte, so a fresh file is right;
                    // after a reconnect the same file goes on (replayed bytes are skipped).
                    if p.file.is_none() {
                        p.file = Some(PartFile::create(path).await?);
                    }
                    if p.bar.is_none() {
                        // The status line gives way to the byte bar: one live line at a time.
                        line.finish();
                        let total = video.content.as_ref().map(|c| c.size_bytes);
                        let label = path.display().to_string();
                        p.bar = Some(ByteBar::new(&label, total, 0));
                    }
                }
                p.latest = Some(video);
                if terminal && (!completed || output.is_none() || p.saved.is_some()) {
                    return Ok(true);
                }
            }
            Some(Kind::Chunk(chunk)) => {
                let Some(file) = p.file.as_mut() else {
                    continue;
                };
                file.write_at(chunk.offset, &chunk.data).await?;
                if let Some(bar) = p.bar.as_mut() {
                    bar.set_position(file.written());
                }
            }
            Some(Kind::ContentEnd(end)) => {
                if let Some(file) = p.file.take() {
                    p.saved = Some(finish_content(file, &end, p.bar.as_ref()).await?);
                    return Ok(true);
                }
            }
            // Rejections belong to AMQP intake and never come on a watch; nothing to show.
            Some(Kind::Rejection(_)) | None => {}
        }
    }
    Ok(false)
}

/// Verifies the streamed content against `content_end` and moves it into place.
async fn finish_content(
    file: PartFile,
    end: &ContentEnd,
    bar: Option<&ByteBar>,
) -> anyhow::Result<Downloaded> {
    let size_bytes = file.written();
    let path = file.output().to_owned();
    if let Some(bar) = bar {
        bar.set_total(end.size_bytes);
    }
    let sha256 = file.finish(Some(end.size_bytes), Some(&end.sha256)).await?;
    Ok(Downloaded {
        path,
        size_bytes,
        sha256,
        verified: true,
    })
}
