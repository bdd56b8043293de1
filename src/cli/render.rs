//! How results look on stdout: a readable summary of a `Video`, one line per video for lists,
//! or canonical proto3 JSON (pbjson) with `--json`.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::Context as _;
use serde::Serialize;

use crate::pb::{Video, VideoStatus};

/// The proto name of a status (`COMPLETED`), or the raw number when it is not one we know.
pub fn status_name(status: i32) -> String {
    VideoStatus::try_from(status)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("STATUS_{status}"))
}

/// Whether the job will change no more.
pub fn is_terminal(video: &Video) -> bool {
    matches!(
        VideoStatus::try_from(video.status),
        Ok(VideoStatus::Completed | VideoStatus::Failed | VideoStatus::Cancelled)
    )
}

/// One short line of where a job is: the live status line and list rows use it.
pub fn progress_line(video: &Video) -> String {
    let mut line = format!("{} {}", video.id, status_name(video.status));
    if !video.upstream_status.is_empty() {
        let _ = write!(line, " (upstream: {})", video.upstream_status);
    }
    if let Some(p) = video.progress {
        let _ = write!(line, " {p}%");
    }
    line
}

/// An RFC 3339 time, or `-` when absent.
pub(crate) fn time(ts: Option<&pbjson_types::Timestamp>) -> String {
    ts.and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".to_owned())
}

/// The multi-line summary `get`, `cancel`, `create` and `watch` print.
pub fn video_summary(video: &Video) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "id:          {}", video.id);
    if !video.request_id.is_empty() {
        let _ = writeln!(s, "request id:  {}", video.request_id);
    }
    let _ = writeln!(s, "model:       {}", video.model);
    let mut status = status_name(video.status);
    if !video.upstream_status.is_empty() {
        let _ = write!(status, " (upstream: {})", video.upstream_status);
    }
    let _ = writeln!(s, "status:      {status}");
    if let Some(p) = video.progress {
        let _ = writeln!(s, "progress:    {p}%");
    }
    if !video.labels.is_empty() {
        let labels: Vec<String> = video
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "labels:      {}", labels.join(", "));
    }
    if !video.upstream_id.is_empty() {
        let _ = writeln!(s, "upstream id: {}", video.upstream_id);
    }
    let _ = writeln!(s, "created:     {}", time(video.create_time.as_ref()));
    let _ = writeln!(s, "updated:     {}", time(video.update_time.as_ref()));
    if video.complete_time.is_some() {
        let _ = writeln!(s, "completed:   {}", time(video.complete_time.as_ref()));
    }
    if let Some(e) = &video.error {
        let _ = write!(s, "error:       {}: {}", e.reason, e.message);
        if e.retryable {
            s.push_str(" (retryable)");
        }
        s.push('\n');
        if !e.upstream_message.is_empty() || e.upstream_http_status != 0 {
            let _ = writeln!(
                s,
                "upstream:    HTTP {}: {}",
                e.upstream_http_status, e.upstream_message
            );
        }
    }
    for (n, a) in video.previous_attempts.iter().enumerate() {
        let upstream = if a.upstream_id.is_empty() {
            "no upstream id"
        } else {
            a.upstream_id.as_str()
        };
        let reason = a.error.as_ref().map_or("-", |e| e.reason.as_str());
        let _ = writeln!(s, "attempt {}:   {upstream}, {reason}", n + 1);
    }
    if let Some(c) = &video.content {
        let _ = write!(s, "content:     {} bytes", c.size_bytes);
        if !c.mime_type.is_empty() {
            let _ = write!(s, ", {}", c.mime_type);
        }
        if c.width != 0 || c.height != 0 {
            let _ = write!(s, ", {}x{}", c.width, c.height);
        }
        if c.duration_seconds > 0.0 {
            let _ = write!(s, ", {:.2} s", c.duration_seconds);
        }
        s.push_str(if c.has_audio { ", audio" } else { ", no audio" });
        if c.has_last_frame {
            s.push_str(", last frame");
        }
        s.push('\n');
        let _ = writeln!(s, "sha256:      {}", c.sha256);
        if !c.matches_request && !c.mismatch.is_empty() {
            let _ = writeln!(s, "mismatch:    {}", c.mismatch);
        }
    }
    s
}

/// One row of `list`: id, status, model, progress, creation time.
pub fn video_row(video: &Video) -> String {
    let progress = video.progress.map(|p| format!("{p}%")).unwrap_or_default();
    format!(
        "{:<28} {:<10} {:<5} {:<32} {}",
        video.id,
        status_name(video.status),
        progress,
        video.model,
        time(video.create_time.as_ref())
    )
}

/// Writes `value` as pretty proto3 JSON and a newline.
pub fn write_json<T: Serialize>(out: &mut (dyn Write + Send), value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding the result as JSON")?;
    writeln!(out, "{text}").context("writing to stdout")
}

/// Writes text and a newline (the summary already ends in one: no blank line).
pub fn write_text(out: &mut (dyn Write + Send), text: &str) -> anyhow::Result<()> {
    if text.ends_with('\n') {
        write!(out, "{text}")
    } else {
        writeln!(out, "{text}")
    }
    .context("writing to stdout")
}

/// Writes a video as JSON or as its summary, per `--json`.
pub fn write_video(out: &mut (dyn Write + Send), json: bool, video: &Video) -> anyhow::Result<()> {
    if json {
        write_json(out, video)
    } else {
        write_text(out, &video_summary(video))
    }
}
