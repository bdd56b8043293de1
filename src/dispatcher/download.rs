//! Downloading a finished video once: streamed into the blob store while hashing, resumed with
//! `Range` after a break, checked to be a usable MP4; and the last frame's copy (S10).

use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Dispatcher, Owned, StepError, job_refused};
use crate::blob::StreamingUpload;
use crate::job::{ContentFacts, FailureReason, Job, JobError, Record, now_ms};
use crate::media;
use crate::store::LeaseEnd;
use crate::upstream::{ContentStart, UpstreamError};

/// The largest last-frame image copied (S10): a 1080p PNG frame is 2-6 MB; anything past this
/// is not a frame of the video and is dropped with the reason.
pub const MAX_LAST_FRAME_BYTES: u64 = 16 * 1024 * 1024;
/// How often (in bytes written) a running download looks at the free disk space again.
const DISK_CHECK_EVERY_BYTES: u64 = 16 * 1024 * 1024;

/// What a last frame must start with: PNG or JPEG.
fn image_kind(head: &[u8]) -> Option<(&'static str, &'static str)> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("png", "image/png"))
    } else if head.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(("jpg", "image/jpeg"))
    } else {
        None
    }
}

/// The first bytes of a last frame, gathered across the chunks of its body until they tell
/// its kind, so a body that is not an image is refused after 8 bytes.
#[derive(Debug, Default)]
pub(crate) struct FrameHead {
    head: Vec<u8>,
    kind: Option<(&'static str, &'static str)>,
}

impl FrameHead {
    /// Looks at the body's next chunk; `Err` says why the body is not a PNG or JPEG.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.kind.is_none() {
            let head = &mut self.head;
            head.extend_from_slice(&chunk[..chunk.len().min(8 - head.len())]);
            if head.len() >= 8 {
                self.kind = Some(image_kind(head).ok_or_else(|| {
                    format!(
                        "the last frame is not a PNG or JPEG image (it starts with {})",
                        hex::encode(&*head)
                    )
                })?);
            }
        }
        Ok(())
    }

    /// The kind (extension, MIME type) once the whole body of `size` bytes was pushed.
    pub(crate) fn finish(self, size: u64) -> Result<(&'static str, &'static str), String> {
        match self.kind {
            Some(k) => Ok(k),
            None => image_kind(&self.head)
                .ok_or_else(|| format!("the last frame is not a PNG or JPEG image ({size} bytes)")),
        }
    }
}

impl Dispatcher {
    pub(super) async fn download(&self, job: Job, owned: &Owned) -> Result<(), StepError> {
        let upstream_id = job
            .upstream_id()
            .ok_or_else(|| job_refused(&job, "download"))?
            .to_owned();
        if let Some(low) = self.disk_below_floor() {
            return self.wait_for_disk(owned, job, low).await;
        }
        let ready = format!("{}.mp4.ready", job.id);
        let ready_path = self.blobs.partial_path(&ready);
        if tokio::fs::try_exists(&ready_path).await.unwrap_or(false) {
            // Fetched whole before; what failed was storing it (or the process stopped).
            let (written, hasher) = resume_state(&ready_path).await.map_err(|e| {
                StepError::Local(format!(
                    "reading staged download {}: {e}",
                    ready_path.display()
                ))
            })?;
            return self
                .store_download(job, owned, &upstream_id, &ready, written, hasher, None)
                .await;
        }
        let name = format!("{}.mp4.part", job.id);
        let path = self.blobs.partial_path(&name);
        let (have, mut hasher) = resume_state(&path).await.map_err(|e| {
            StepError::Local(format!("reading partial download {}: {e}", path.display()))
        })?;
        let stream = match self.client.content(&upstream_id, have).await {
            Ok(s) => s,
            Err(e @ (UpstreamError::TooLarge { .. } | UpstreamError::Blocked { .. })) => {
                let _ = tokio::fs::remove_file(&path).await;
                return self.refuse_content(owned, job, &upstream_id, &e).await;
            }
            Err(UpstreamError::NotFound { message, .. }) => {
                let msg = format!(
                    "upstream reported task {upstream_id} completed but has no content for it (HTTP 404): this is how a moderation refusal looks, and upstream may still bill it"
                );
                self.fail_with(
                    owned,
                    job,
                    JobError {
                        reason: FailureReason::ContentMissing,
                        message: msg,
                        retryable: false,
                        upstream_message: message,
                        upstream_http_status: Some(404),
                    },
                )
                .await?;
                return Ok(());
            }
            Err(UpstreamError::RangeNotSatisfiable { .. }) => {
                // Our partial file is longer than the content: start over.
                let _ = tokio::fs::remove_file(&path).await;
                return self
                    .retry_download(
                        owned,
                        job,
                        "the partial download was longer than the content; restarting from zero"
                            .into(),
                        None,
                    )
                    .await;
            }
            Err(e) => {
                return self
                    .retry_download(owned, job, e.to_string(), Some(&e))
                    .await;
            }
        };
        let file = match stream.start {
            ContentStart::Resumed(_) => {
                tokio::fs::OpenOptions::new().append(true).open(&path).await
            }
            ContentStart::Full => {
                hasher = Sha256::new();
                // 0600 from the first byte, like everything under the data directory.
                self.blobs.create_partial(&name).await
            }
        }
        .map_err(|e| StepError::Local(format!("opening {}: {e}", path.display())))?;
        let start = match stream.start {
            ContentStart::Resumed(from) => from,
            ContentStart::Full => 0,
        };
        let total = stream.total_len;
        // With an object store, a download from the first byte of a known size is uploaded
        // as it arrives (a multipart upload, completed only once the whole is verified).
        let mut upload = match (start, total) {
            (0, Some(size)) => {
                self.blobs
                    .begin_upload(&format!("videos/{}.mp4", job.id), size)
                    .await
            }
            _ => None,
        };
        let mut body = stream.body;
        let writing_error =
            |e: std::io::Error| StepError::Local(format!("writing {}: {e}", path.display()));
        let mut writer = PartWriter::start(file.into_std().await, hasher, start);
        let mut broke = None;
        let mut stopped = false;
        let mut disk_low = None;
        let mut next_disk_check = start + DISK_CHECK_EVERY_BYTES;
        let mut received = start;
        loop {
            let chunk = tokio::select! {
                chunk = body.next() => chunk,
                // A cancel or delete was recorded (or the lease was lost): stop here; what
                // arrived is kept for a resume, and the write below applies the request.
                _ = owned.stop.cancelled() => {
                    stopped = true;
                    break;
                }
            };
            let Some(chunk) = chunk else { break };
            match chunk {
                Ok(bytes) => {
                    received += bytes.len() as u64;
                    if received >= next_disk_check {
                        next_disk_check = received + DISK_CHECK_EVERY_BYTES;
                        if let Some(low) = self.disk_below_floor() {
                            disk_low = Some(low);
                            break;
                        }
                    }
                    if let Err(e) = writer.write(bytes.clone()).await {
                        // The writer thread stopped: its own error says why.
                        return Err(writing_error(writer.finish().await.err().unwrap_or(e)));
                    }
                    if let Some(streaming) = upload.as_mut()
                        && let Err(e) = streaming.put(bytes).await
                    {
                        // Given up (and aborted): the staged file is uploaded once whole.
                        tracing::warn!(job_id = %job.id, error = %e, "the upload alongside the download was given up; the video is uploaded once downloaded whole");
                        upload = None;
                    }
                }
                Err(e) => {
                    broke = Some(e);
                    break;
                }
            }
        }
        // What arrived is written (and kept for a resume) either way.
        let (hasher, written) = writer.finish().await.map_err(writing_error)?;
        if stopped {
            drop(body);
            let saved = self
                .save(owned, job, Record::Quiet, LeaseEnd::Release)
                .await?;
            if saved.job.is_terminal() || saved.job.is_deleted() {
                let _ = tokio::fs::remove_file(&path).await;
            }
            return Ok(());
        }
        if let Some(low) = disk_low {
            drop(body);
            return self.wait_for_disk(owned, job, low).await;
        }
        if let Some(e @ (UpstreamError::TooLarge { .. } | UpstreamError::Blocked { .. })) = broke {
            drop(body);
            let _ = tokio::fs::remove_file(&path).await;
            return self.refuse_content(owned, job, &upstream_id, &e).await;
        }
        if let Some(e) = broke {
            return self
                .retry_download(
                    owned,
                    job,
                    format!("download broke after {written} bytes: {e}"),
                    Some(&e),
                )
                .await;
        }
        if let Some(total) = total
            && written != total
        {
            return self
                .retry_download(
                    owned,
                    job,
                    format!("download ended at {written} of {total} bytes"),
                    None,
                )
                .await;
        }
        if written == 0 {
            let _ = tokio::fs::remove_file(&path).await;
            let msg =
                format!("upstream reported task {upstream_id} completed but its content is empty");
            self.fail(owned, job, FailureReason::ContentMissing, msg, false, None)
                .await?;
            return Ok(());
        }
        // Downloaded whole: staged as ready, so that a failed upload (the object store down)
        // or a crash from here on does not fetch the bytes again.
        let ready = format!("{}.mp4.ready", job.id);
        tokio::fs::rename(&path, self.blobs.partial_path(&ready))
            .await
            .map_err(|e| StepError::Local(format!("staging {}: {e}", path.display())))?;
        self.store_download(job, owned, &upstream_id, &ready, written, hasher, upload)
            .await
    }

    /// Probes a whole staged download, copies the last frame, puts the video in the blob
    /// store (completing `upload` when the download fed one, else from the staged file) and
    /// completes the job.
    #[allow(clippy::too_many_arguments)]
    async fn store_download(
        &self,
        job: Job,
        owned: &Owned,
        upstream_id: &str,
        name: &str,
        written: u64,
        hasher: Sha256,
        upload: Option<StreamingUpload>,
    ) -> Result<(), StepError> {
        let path = self.blobs.partial_path(name);
        let sha256 = hex::encode(hasher.finalize());
        let probe_path = path.clone();
        let facts = tokio::task::spawn_blocking(move || media::probe_mp4_file(&probe_path))
            .await
            .map_err(|e| StepError::Local(format!("probe task failed: {e}")))?;
        let facts = match facts {
            Ok(f) => f,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                let msg = format!(
                    "upstream's content for task {upstream_id} ({written} bytes) is not a usable MP4: {e}"
                );
                self.fail(owned, job, FailureReason::ContentInvalid, msg, true, None)
                    .await?;
                return Ok(());
            }
        };
        let submission = self.submission_of(&job).await?;
        let spec = submission.spec();
        let mismatch = spec
            .and_then(|s| {
                s.expected_output()
                    .compare(facts.width, facts.height, facts.duration_seconds)
            })
            .unwrap_or_default();
        let mut mismatch = mismatch;
        let asked_frame = spec.is_some_and(|s| s.has_last_frame_requested());
        let (last_frame_key, last_frame_size, last_frame_dropped) = match (
            job.last_frame_url(),
            asked_frame,
        ) {
            (Some(url), true) => match self.copy_last_frame(&job.id, url).await {
                Ok((key, size)) => (Some(key), Some(size), None),
                Err(why) => {
                    tracing::warn!(job_id = %job.id, why = %why, "last frame dropped; the video is kept without it");
                    (None, None, Some(why))
                }
            },
            (None, true) => (
                None,
                None,
                Some("upstream gave no last_frame_url".to_owned()),
            ),
            _ => (None, None, None),
        };
        if let Some(why) = &last_frame_dropped {
            if !mismatch.is_empty() {
                mismatch.push_str("; ");
            }
            mismatch.push_str("last frame asked for but dropped: ");
            mismatch.push_str(why);
        }
        let key = format!("videos/{}.mp4", job.id);
        let streamed = match upload {
            Some(upload) => match upload.finish(written).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "completing the upload fed while downloading failed; uploading the staged file");
                    false
                }
            },
            None => false,
        };
        if streamed {
            self.blobs
                .remove_staged(name)
                .await
                .map_err(|e| StepError::Local(e.to_string()))?;
        } else {
            self.blobs
                .commit_partial(name, &key)
                .await
                .map_err(|e| StepError::Local(e.to_string()))?;
        }
        if self.blobs.is_remote() {
            self.metrics
                .blob_uploaded(if streamed { "streamed" } else { "staged" });
        }
        let content = ContentFacts {
            size_bytes: written,
            sha256,
            mime_type: "video/mp4".into(),
            duration_seconds: facts.duration_seconds,
            width: facts.width,
            height: facts.height,
            has_audio: facts.has_audio,
            has_last_frame: last_frame_key.is_some(),
            matches_request: mismatch.is_empty(),
            mismatch,
            blob_key: key,
            last_frame_key,
            last_frame_size,
            last_frame_dropped,
        };
        if !content.matches_request {
            tracing::warn!(job_id = %job.id, mismatch = %content.mismatch, "stored video differs from the request");
        }
        let mut done = job;
        let record = done.complete(now_ms(), content)?;
        self.save(owned, done, record, LeaseEnd::Release).await?;
        Ok(())
    }

    /// Copies the last frame (S10): at most [`MAX_LAST_FRAME_BYTES`], and only a PNG or JPEG
    /// (by its first bytes). `Err` says why it was dropped.
    async fn copy_last_frame(&self, job_id: &str, url: &str) -> Result<(String, u64), String> {
        let stream = self
            .client
            .last_frame(url, MAX_LAST_FRAME_BYTES)
            .await
            .map_err(|e| e.to_string())?;
        let name = format!("{job_id}.last_frame.part");
        let path = self.blobs.partial_path(&name);
        let copied = async {
            let mut file = self
                .blobs
                .create_partial(&name)
                .await
                .map_err(|e| e.to_string())?;
            let mut size = 0u64;
            let mut head = FrameHead::default();
            let mut body = stream.body;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                size += chunk.len() as u64;
                head.push(&chunk)?;
                file.write_all(&chunk).await.map_err(|e| e.to_string())?;
            }
            let (ext, _mime) = head.finish(size)?;
            file.sync_all().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((ext, size))
        }
        .await;
        let (ext, size) = match copied {
            Ok(c) => c,
            Err(why) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(why);
            }
        };
        let key = format!("frames/{job_id}.{ext}");
        self.blobs
            .commit_partial(&name, &key)
            .await
            .map_err(|e| e.to_string())?;
        Ok((key, size))
    }

    /// Below the free-space floor: why, for the log and readiness.
    fn disk_below_floor(&self) -> Option<String> {
        crate::blob::disk_below_floor(self.blobs.root(), self.config.min_free_disk_bytes)
    }

    /// The disk is nearly full: the download waits (what arrived is kept), without counting as
    /// a failed attempt, and looks again after [`super::DISK_WAIT_MS`].
    async fn wait_for_disk(&self, owned: &Owned, job: Job, why: String) -> Result<(), StepError> {
        let mut job = job;
        let now = now_ms();
        let record = job.wait_until(now, now + super::DISK_WAIT_MS as i64)?;
        tracing::warn!(job_id = %job.id, why = %why, wait_ms = super::DISK_WAIT_MS, "download waits for disk space");
        self.metrics.retry("download_disk_wait");
        self.save(owned, job, record, LeaseEnd::Release).await?;
        Ok(())
    }

    /// Content vidgate will not take (larger than the limit, or behind a redirect to an
    /// internal address): the job fails with the reason; trying again would meet the same.
    async fn refuse_content(
        &self,
        owned: &Owned,
        job: Job,
        upstream_id: &str,
        e: &UpstreamError,
    ) -> Result<(), StepError> {
        let (reason, what) = match e {
            UpstreamError::TooLarge { .. } => (FailureReason::ContentInvalid, "was refused"),
            _ => (FailureReason::ContentMissing, "could not be fetched"),
        };
        let msg = format!("upstream's content for task {upstream_id} {what}: {e}");
        self.fail(owned, job, reason, msg, false, Some(e)).await?;
        Ok(())
    }

    async fn retry_download(
        &self,
        owned: &Owned,
        job: Job,
        why: String,
        err: Option<&UpstreamError>,
    ) -> Result<(), StepError> {
        let mut job = job;
        let attempts = job.attempts() + 1;
        let delay = match err {
            Some(e) => self.retry_delay(attempts, e),
            None => self.backoff(attempts),
        };
        let now = now_ms();
        let record = job.retry_later(now, now + delay as i64)?;
        tracing::info!(job_id = %job.id, why = %why, attempts, "download will be resumed");
        self.metrics.retry("download");
        self.save(owned, job, record, LeaseEnd::Release).await?;
        Ok(())
    }
}

/// Bytes handed to the writer thread at once: fewer thread wake-ups than one per network chunk,
/// no copy (the chunks are kept as they came).
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Batches queued for the writer thread: bounds the memory of a download to ~1 MiB.
const WRITE_QUEUE: usize = 4;

/// Hashes and writes a download on one blocking thread fed through a bounded channel, and
/// syncs the file at the end. `tokio::fs` would start a blocking task (and copy the bytes) for
/// every network chunk, and hashing 5 MB on the async workers holds them ~15 ms.
struct PartWriter {
    batch: Vec<Bytes>,
    batch_bytes: usize,
    tx: tokio::sync::mpsc::Sender<Vec<Bytes>>,
    task: tokio::task::JoinHandle<std::io::Result<(Sha256, u64)>>,
}

impl PartWriter {
    fn start(mut file: std::fs::File, mut hasher: Sha256, mut written: u64) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(WRITE_QUEUE);
        let task = tokio::task::spawn_blocking(move || {
            while let Some(batch) = rx.blocking_recv() {
                for chunk in &batch {
                    hasher.update(chunk);
                    written += chunk.len() as u64;
                }
                write_all_vectored(&mut file, &batch)?;
            }
            file.sync_all()?;
            Ok((hasher, written))
        });
        Self {
            batch: Vec::new(),
            batch_bytes: 0,
            tx,
            task,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        if self.batch_bytes >= WRITE_BATCH_BYTES {
            self.batch_bytes = 0;
            let batch = std::mem::take(&mut self.batch);
            if self.tx.send(batch).await.is_err() {
                // The writer stopped: its error is what `finish` returns.
                return Err(std::io::Error::other(
                    "the download's writer thread stopped",
                ));
            }
        }
        Ok(())
    }

    /// Writes what is left, syncs, and returns the hash state and the file's length.
    async fn finish(self) -> std::io::Result<(Sha256, u64)> {
        if !self.batch.is_empty() {
            // A failed send means the writer stopped; its own error follows below.
            let _ = self.tx.send(self.batch).await;
        }
        drop(self.tx);
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("the writer thread failed: {e}")))?
    }
}

/// Writes every chunk of `batch`, in order, with as few `writev` calls as the kernel allows:
/// one system call per batch instead of one per network chunk.
fn write_all_vectored(file: &mut std::fs::File, batch: &[Bytes]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the file accepted no more bytes",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How much of a partial download exists, with the hash of those bytes, so a broken download
/// resumes with `Range` instead of starting over (also after a restart).
async fn resume_state(path: &std::path::Path) -> std::io::Result<(u64, Sha256)> {
    let mut hasher = Sha256::new();
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, hasher)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hasher))
}
