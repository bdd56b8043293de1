//! `download ID --output FILE`: `DownloadVideo` into `FILE.part`, resuming from its length with
//! `read_offset`, reconnecting from the current offset on transient failures, then verifying
//! size and SHA-256 against `GetVideo`'s `content` before renaming to `FILE`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};

use super::ClientOpts;
use super::content::PartFile;
use super::progress::ByteBar;
use super::render::{status_name, write_json, write_text};
use super::rpc::{
    Client, MAX_RECONNECTS, RpcError, StreamError, connect, is_transient, retry_delay, rpc_err,
};
use tonic::Status;

use crate::pb::{ContentVariant, DownloadVideoRequest, GetVideoRequest};

/// Arguments of `download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// Video id
    pub id: String,
    /// File to write; bytes go to FILE.part first, and an existing FILE.part is resumed
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Download the last frame image (asked for with --return-last-frame) instead of the video
    #[arg(long)]
    pub last_frame: bool,
}

/// A finished, verified download.
pub struct Downloaded {
    /// Where the bytes are.
    pub path: PathBuf,
    /// Their size.
    pub size_bytes: u64,
    /// Their SHA-256 (hex).
    pub sha256: String,
    /// Whether the size and SHA-256 were checked against what the server published (the
    /// server publishes them for the video, not for the last frame).
    pub verified: bool,
}

pub async fn run(
    opts: &ClientOpts,
    args: DownloadArgs,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let mut client = connect(opts).await?;
    let variant = if args.last_frame {
        ContentVariant::LastFrame
    } else {
        ContentVariant::Video
    };
    let done = download(&mut client, &args.id, &args.output, variant).await?;
    write_downloaded(out, opts.json, &args.id, &done)
}

/// Prints a finished download: JSON, or the file, its size and the checksum verdict.
pub fn write_downloaded(
    out: &mut (dyn Write + Send),
    json: bool,
    id: &str,
    done: &Downloaded,
) -> anyhow::Result<()> {
    if json {
        return write_json(
            out,
            &serde_json::json!({
                "id": id,
                "output": done.path.display().to_string(),
                // u64 as a string, like proto3 JSON does for 64-bit integers.
                "sizeBytes": done.size_bytes.to_string(),
                "sha256": done.sha256,
                "verified": done.verified,
            }),
        );
    }
    let verdict = if done.verified {
        format!("sha256 ok {}", done.sha256)
    } else {
        format!(
            "sha256 {} (the server publishes no checksum for it)",
            done.sha256
        )
    };
    write_text(
        out,
        &format!(
            "wrote {}: {} bytes\n{verdict}",
            done.path.display(),
            done.size_bytes
        ),
    )
}

/// Downloads `variant` of video `id` to `output`, resuming `output.part` if present.
pub async fn download(
    client: &mut Client,
    id: &str,
    output: &Path,
    variant: ContentVariant,
) -> anyhow::Result<Downloaded> {
    // What to verify against comes from GetVideo; the stream itself carries no checksum.
    let video = client
        .get_video(GetVideoRequest { id: id.to_owned() })
        .await
        .map_err(rpc_err("GetVideo"))?
        .into_inner();
    let (expected_size, expected_sha256) = match variant {
        ContentVariant::Video => {
            let content = video.content.ok_or_else(|| {
                anyhow!(
                    "video {id} is {} and has no content to download; wait for it with `vidgate watch {id}`",
                    status_name(video.status)
                )
            })?;
            let sha = Some(content.sha256).filter(|s| !s.is_empty());
            (Some(content.size_bytes), sha)
        }
        ContentVariant::LastFrame => (None, None),
    };

    let mut file = PartFile::resume(output).await?;
    if let Some(size) = expected_size
        && file.written() > size
    {
        bail!(
            "{} has {} bytes but video {id} has only {size}: it is not part of this video; delete it and run again",
            file.part().display(),
            file.written()
        );
    }
    let label = output.display().to_string();
    let mut bar = ByteBar::new(&label, expected_size, file.written());
    let mut attempts = 0u32;
    // A resumed file that is already whole needs no call (and asking at the end would be
    // OUT_OF_RANGE).
    while expected_size != Some(file.written()) {
        let started_at = file.written();
        let status = match read_stream(client, id, variant, &mut file, &mut bar).await {
            Ok(()) if expected_size.is_none_or(|size| file.written() >= size) => break,
            // A stream that ends early is an interruption, not the end of the video.
            Ok(()) => Status::unavailable(format!(
                "the stream ended at byte {} before the end",
                file.written()
            )),
            Err(StreamError::Local(e)) => return Err(e),
            Err(StreamError::Rpc(status)) => status,
        };
        // Bounded retries count attempts in a row that made no progress.
        if file.written() > started_at {
            attempts = 0;
        }
        attempts += 1;
        if !is_transient(&status) || attempts > MAX_RECONNECTS {
            let stopped_at = file.written();
            return Err(anyhow::Error::new(RpcError::new("DownloadVideo", status)).context(
                format!(
                    "download of {id} stopped at byte {stopped_at}; {} is kept: run the same command again to resume",
                    file.part().display()
                ),
            ));
        }
        let delay = retry_delay(&status, attempts);
        bar.note(&format!(
            "download interrupted at byte {} ({:?}: {}); reconnecting in {delay:?} (attempt {attempts} of {MAX_RECONNECTS})",
            file.written(),
            status.code(),
            status.message()
        ));
        tokio::time::sleep(delay).await;
    }
    let size_bytes = file.written();
    let verified = expected_size.is_some() && expected_sha256.is_some();
    let sha256 = file
        .finish(expected_size, expected_sha256.as_deref())
        .await
        .with_context(|| format!("verifying the download of {id}"))?;
    bar.finish();
    Ok(Downloaded {
        path: output.to_owned(),
        size_bytes,
        sha256,
        verified,
    })
}

/// One `DownloadVideo` call from the file's current length to the end.
async fn read_stream(
    client: &mut Client,
    id: &str,
    variant: ContentVariant,
    file: &mut PartFile,
    bar: &mut ByteBar,
) -> Result<(), StreamError> {
    let offset = i64::try_from(file.written())
        .map_err(|_| anyhow!("{} is too large to resume", file.part().display()))?;
    let mut stream = client
        .download_video(DownloadVideoRequest {
            id: id.to_owned(),
            read_offset: offset,
            read_limit: 0,
            variant: variant as i32,
        })
        .await
        .map_err(StreamError::Rpc)?
        .into_inner();
    while let Some(chunk) = stream.message().await.map_err(StreamError::Rpc)? {
        file.write_at(chunk.offset, &chunk.data).await?;
        bar.set_position(file.written());
    }
    Ok(())
}
