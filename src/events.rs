//! Fan-out of the event log to live subscribers (`WatchVideo`, `Subscribe`).
//!
//! Each stream is a spawned producer feeding a channel bounded in bytes ([`crate::budget`]). It
//! subscribes to the store's live broadcast first, then reads the durable log after the
//! caller's cursor (waiting for the client between pages), then forwards live events, skipping
//! what the log already gave: no gap, no repeat. A client that does not keep up with live events
//! ends with `SUBSCRIBER_LAGGED`, carrying the last sequence queued for it (it reads those first)
//! so it can resume, as soon as the next event would take its stream past its byte budget (or it
//! falls behind the bounded broadcast ring): a never-read stream holds at most its budget. When the
//! server stops, every stream ends the same way with `SERVER_SHUTTING_DOWN` (`UNAVAILABLE`).
//! Those endings are [`FeedError`]s; the transport (the gRPC adapter) maps them to its terms.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::blob::{BlobError, BlobStore};
use crate::budget::{self, SendError};
use crate::convert;
use crate::job::{Job, JobStatus, now_ms};
use crate::pb;
use crate::store::{EventQuery, JobStore, StoreError, StoredEvent};
use crate::telemetry::Metrics;

/// Events read from the log per query while catching up.
pub const BACKLOG_PAGE: u32 = 500;
/// Content chunk size: 64 KiB (API.md default), far under gRPC's 4 MB message limit.
pub const DEFAULT_CHUNK_BYTES: usize = 64 * 1024;
/// The largest chunk size an operator may configure: each message stays well under 4 MB.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;
/// What one stream may hold for its client, in encoded bytes: a few hundred ordinary events, or
/// six of the fattest (a 16,000-character prompt and 64 labels of 256 characters, ~40 KB). A
/// subscriber past it is lagging: 2,000 streams that never read hold at most ~0.5 GB, and then
/// only until the next event ends them.
pub const DEFAULT_STREAM_BUDGET_BYTES: usize = 256 * 1024;

/// The sending half of a stream's channel.
pub type FeedSender = budget::Sender<FeedItem>;

/// How a stream's item is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Wait for room: the source can wait (the log, a download).
    Wait,
    /// Live events: no room means the client is lagging; it resumes after `delivered`.
    OrLag { delivered: i64 },
}

/// What a stream wants to see.
#[derive(Debug, Clone, Default)]
pub struct FeedFilter {
    /// Only this tenant (always set).
    pub tenant: String,
    /// Only this job (`WatchVideo`).
    pub job_id: Option<String>,
    /// Any of these models; empty = all.
    pub models: Vec<String>,
    /// All of these labels.
    pub labels: BTreeMap<String, String>,
    /// Any of these statuses; empty = all.
    pub statuses: Vec<JobStatus>,
}

impl FeedFilter {
    fn matches(&self, job: &Job) -> bool {
        job.tenant == self.tenant
            && !job.is_deleted()
            && self.job_id.as_ref().is_none_or(|id| *id == job.id)
            && (self.models.is_empty() || self.models.contains(&job.model))
            && self
                .labels
                .iter()
                .all(|(k, v)| job.labels.get(k) == Some(v))
            && (self.statuses.is_empty() || self.statuses.contains(&job.status()))
    }
}

/// One stream's settings.
#[derive(Debug, Clone)]
pub struct FeedRequest {
    /// Which events.
    pub filter: FeedFilter,
    /// Resume after this sequence; 0 = from now (`WatchVideo`: the current state first).
    pub after_sequence: i64,
    /// Send the video in chunks after a `COMPLETED` event.
    pub include_content: bool,
    /// `WatchVideo`: end after the job's terminal event.
    pub until_terminal: bool,
    /// `Subscribe` from now: the highest sequence when the call arrived, read by the handler
    /// before it answered, so events committed between the answer and the stream's start are
    /// not lost. `None`: read when the stream starts.
    pub now_sequence: Option<i64>,
}

/// Item type of a stream: an event, or the error that ends the stream (its last item). The
/// transport maps the error to its own terms (gRPC: a `Status`).
pub type FeedItem = Result<pb::VideoEvent, FeedError>;

/// Content chunks a watch stream queues ahead of its client.
pub const CONTENT_WINDOW_CHUNKS: usize = 2;

/// Why a stream ended early. Each carries what a client needs to resume or to understand.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The server is stopping; resume after `last_sequence`.
    #[error("the server is shutting down; resume after sequence {last_sequence}")]
    ShuttingDown {
        /// The last sequence delivered on this stream.
        last_sequence: i64,
    },
    /// The cursor is older than the retained events.
    #[error("after_sequence {cursor} is older than the retained events (kept from {first_kept})")]
    CursorExpired {
        /// The cursor.
        cursor: i64,
        /// The first sequence still kept.
        first_kept: i64,
    },
    /// The cursor is beyond the latest committed sequence: no stream sent it, and waiting
    /// for it would silently skip every event until then.
    #[error("after_sequence {cursor} is beyond the latest sequence {latest}")]
    CursorAhead {
        /// The cursor.
        cursor: i64,
        /// The latest committed sequence.
        latest: i64,
    },
    /// The watched video does not exist for this tenant (or was deleted).
    #[error("video {} not found", crate::domain::echo(.0))]
    VideoNotFound(String),
    /// The subscriber fell behind its bounded buffer; resume after `last_sequence`.
    #[error("the stream fell behind; resume after sequence {last_sequence}")]
    Lagged {
        /// The last sequence delivered on this stream.
        last_sequence: i64,
    },
    /// The store failed while the stream read it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored content could not be read; logged here under `reference`.
    #[error("stored content unreadable (ref {reference})")]
    ContentUnreadable {
        /// The log reference.
        reference: String,
    },
    /// The stored content is gone (past `[blob] retention`, or removed from the store).
    #[error("{0}")]
    ContentExpired(String),
    /// The object store holding the content is unavailable (the stream can be resumed).
    #[error("stored content unavailable: {0}")]
    ContentUnavailable(String),
}

/// What a read of content that is no longer stored says.
pub fn content_gone(job_id: &str) -> String {
    format!(
        "video {job_id}'s stored content is gone: past [blob] retention, or removed from the store; the job and its content facts remain (GetVideo)"
    )
}

/// A content read failure as the stream's last error: unavailable (try again) or unreadable.
fn content_failure(job_id: &str, e: &BlobError) -> FeedError {
    if let BlobError::NotFound(_) = e {
        return FeedError::ContentExpired(content_gone(job_id));
    }
    if let BlobError::Unavailable { detail, .. } = e {
        tracing::warn!(job_id = %job_id, error = %e, "stored content unreadable: the object store is unavailable");
        return FeedError::ContentUnavailable(crate::domain::shorten(detail, 300).into_owned());
    }
    let reference = uuid::Uuid::now_v7().simple().to_string();
    tracing::error!(job_id = %job_id, error = %e, reference = %reference, "stored content unreadable");
    FeedError::ContentUnreadable { reference }
}

/// Runs streams for the API.
#[derive(Clone)]
pub struct Feed {
    store: Arc<dyn JobStore>,
    blobs: BlobStore,
    chunk_bytes: usize,
    metrics: Metrics,
    draining: CancellationToken,
}

enum Stop {
    /// The client went away, or the stream ended normally.
    Done,
    /// End the stream with this error.
    Error(FeedError),
}

impl Feed {
    /// What stored content may hold of a stream's queue: [`CONTENT_WINDOW_CHUNKS`] chunks. The
    /// rest of the byte budget stays free for live events, so a reader of a video is never
    /// ended as lagging because the video's own chunks filled its queue.
    fn content_window(&self) -> usize {
        CONTENT_WINDOW_CHUNKS * self.chunk_bytes
    }

    /// A feed over a store's log and its blobs.
    pub fn new(store: Arc<dyn JobStore>, blobs: BlobStore, chunk_bytes: usize) -> Self {
        Self {
            store,
            blobs,
            chunk_bytes: chunk_bytes.clamp(1, MAX_CHUNK_BYTES),
            metrics: Metrics::disabled(),
            draining: CancellationToken::new(),
        }
    }

    /// Ends every stream, at once, with `SERVER_SHUTTING_DOWN` when `draining` is cancelled.
    pub fn with_draining(mut self, draining: CancellationToken) -> Self {
        self.draining = draining;
        self
    }

    /// Counts live streams and streamed bytes into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The highest sequence now: where a `Subscribe` "from now" starts.
    pub async fn latest_sequence(&self) -> Result<i64, FeedError> {
        Ok(self.store.latest_sequence().await?)
    }

    /// Produces the stream's events into `tx` until the client leaves, the watch ends, or an
    /// error ends it (sent as the last item).
    pub async fn pump(&self, request: FeedRequest, tx: FeedSender) {
        let _live = self.metrics.subscriber(rpc_method(&request));
        // Subscribe before reading anything, so nothing committed meanwhile is missed.
        let rx = self.store.subscribe();
        // "From now" is already fixed for Subscribe: a stream stopped before its first event
        // must not hand back 0, which would mean "from now" again on the next server.
        let mut delivered = request.now_sequence.unwrap_or(request.after_sequence);
        // Whatever the stream is doing (catching up, waiting for a slow client, sending
        // content), a stop ends it: an open stream must not hold the server's shutdown.
        let stop = tokio::select! {
            biased;
            _ = self.draining.cancelled() => None,
            stop = self.run(&request, rx, &tx, &mut delivered) => Some(stop),
        };
        let stop = stop.unwrap_or(Stop::Error(FeedError::ShuttingDown {
            last_sequence: delivered,
        }));
        match stop {
            Stop::Done => {}
            // After what is queued (the resume point counts it), past the budget: a client
            // that never reads still finds why its stream ended, and nothing more is held.
            Stop::Error(e) => tx.end(Err(e)),
        }
    }

    async fn run(
        &self,
        request: &FeedRequest,
        mut rx: broadcast::Receiver<Arc<StoredEvent>>,
        tx: &FeedSender,
        delivered: &mut i64,
    ) -> Stop {
        let filter = &request.filter;
        let mut seen = request.after_sequence;
        if request.after_sequence > 0 {
            match self.store.pruned_through().await {
                Ok(pruned) if request.after_sequence < pruned => {
                    return Stop::Error(FeedError::CursorExpired {
                        cursor: request.after_sequence,
                        first_kept: pruned + 1,
                    });
                }
                Ok(_) => {}
                Err(e) => return Stop::Error(e.into()),
            }
            match self.store.latest_sequence().await {
                Ok(latest) if request.after_sequence > latest => {
                    return Stop::Error(FeedError::CursorAhead {
                        cursor: request.after_sequence,
                        latest,
                    });
                }
                Ok(_) => {}
                Err(e) => return Stop::Error(e.into()),
            }
        } else if let Some(id) = &filter.job_id {
            // WatchVideo from now: the current state first.
            let job = match self.store.get(id).await {
                Ok(Some(job)) if job.tenant == filter.tenant && !job.is_deleted() => job,
                Ok(_) => return Stop::Error(FeedError::VideoNotFound(id.clone())),
                Err(e) => return Stop::Error(e.into()),
            };
            seen = job.last_sequence;
            let terminal = job.is_terminal();
            if let Some(stop) = self
                .send_state(
                    &job,
                    job.last_sequence,
                    job.update_time_ms(),
                    request,
                    tx,
                    Pace::Wait,
                )
                .await
            {
                return stop;
            }
            // Only once sent: a stream stopped before this resumes with the state again.
            *delivered = job.last_sequence;
            if terminal && request.until_terminal {
                return Stop::Done;
            }
        } else {
            // Subscribe from now: only what happens from here on.
            seen = match request.now_sequence {
                Some(now) => now,
                None => match self.store.latest_sequence().await {
                    Ok(latest) => latest,
                    Err(e) => return Stop::Error(e.into()),
                },
            };
            *delivered = seen;
        }

        // Catch up from the durable log.
        loop {
            let page = match self
                .store
                .events_after(&EventQuery {
                    after_sequence: seen,
                    tenant: Some(filter.tenant.clone()),
                    job_id: filter.job_id.clone(),
                    limit: BACKLOG_PAGE,
                })
                .await
            {
                Ok(page) => page,
                Err(e) => return Stop::Error(e.into()),
            };
            let full = page.len() as u32 == BACKLOG_PAGE;
            for event in page {
                seen = event.sequence;
                if let Some(stop) = self
                    .deliver(&event, request, tx, delivered, Pace::Wait)
                    .await
                {
                    return stop;
                }
            }
            if !full {
                break;
            }
        }

        // Live. A client that left is noticed at once, not at the next matching event, so a
        // quiet stream does not hold its task (and the subscriber count) for ever. A stream that
        // carries content waits for its client (a download is paced by its reader, and the
        // broadcast ring still bounds how far behind it may fall).
        let lag = !request.include_content;
        loop {
            let received = tokio::select! {
                biased;
                _ = tx.closed() => return Stop::Done,
                received = rx.recv() => received,
            };
            match received {
                Ok(event) => {
                    if event.sequence <= seen {
                        continue;
                    }
                    seen = event.sequence;
                    let pace = if lag {
                        Pace::OrLag {
                            delivered: *delivered,
                        }
                    } else {
                        Pace::Wait
                    };
                    if let Some(stop) = self.deliver(&event, request, tx, delivered, pace).await {
                        return stop;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Stop::Error(FeedError::Lagged {
                        last_sequence: *delivered,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return Stop::Done,
            }
        }
    }

    /// Sends one logged event if it passes the filter; `Some` ends the stream.
    async fn deliver(
        &self,
        event: &StoredEvent,
        request: &FeedRequest,
        tx: &FeedSender,
        delivered: &mut i64,
        pace: Pace,
    ) -> Option<Stop> {
        if !request.filter.matches(&event.job) {
            return None;
        }
        if let Some(stop) = self
            .send_state(&event.job, event.sequence, event.time_ms, request, tx, pace)
            .await
        {
            return Some(stop);
        }
        *delivered = event.sequence;
        if request.until_terminal && event.job.is_terminal() {
            return Some(Stop::Done);
        }
        None
    }

    /// Sends a state event, then the content when it is a completion and content was asked for.
    async fn send_state(
        &self,
        job: &Job,
        sequence: i64,
        time_ms: i64,
        request: &FeedRequest,
        tx: &FeedSender,
        pace: Pace,
    ) -> Option<Stop> {
        let event = pb::VideoEvent {
            sequence,
            video_id: job.id.clone(),
            time: Some(convert::timestamp(time_ms)),
            kind: Some(pb::video_event::Kind::Video(convert::video(job))),
        };
        let bytes = event.encoded_len();
        match pace {
            Pace::Wait => {
                if tx.send(Ok(event), bytes).await.is_err() {
                    return Some(Stop::Done);
                }
            }
            Pace::OrLag { delivered } => match tx.try_send(Ok(event), bytes) {
                Ok(()) => {}
                Err(SendError::Closed(_)) => return Some(Stop::Done),
                Err(SendError::Full(_)) => {
                    self.metrics.stream_lagged(rpc_method(request));
                    return Some(Stop::Error(FeedError::Lagged {
                        last_sequence: delivered,
                    }));
                }
            },
        }
        if request.include_content && job.status() == JobStatus::Completed {
            return self
                .send_content(job, time_ms, tx, rpc_method(request))
                .await;
        }
        None
    }

    async fn send_content(
        &self,
        job: &Job,
        time_ms: i64,
        tx: &FeedSender,
        method: &'static str,
    ) -> Option<Stop> {
        use futures::StreamExt;
        let content = job.content()?;
        if let Some(at) = job
            .complete_time_ms()
            .and_then(|done| self.blobs.expires_at_ms(done))
            && now_ms() >= at
        {
            return Some(Stop::Error(FeedError::ContentExpired(content_gone(
                &job.id,
            ))));
        }
        let mut chunks = match self
            .blobs
            .read_range(&content.blob_key, 0..content.size_bytes, self.chunk_bytes)
            .await
        {
            Ok(s) => s,
            Err(e) => return Some(Stop::Error(content_failure(&job.id, &e))),
        };
        let mut offset = 0i64;
        while let Some(chunk) = chunks.next().await {
            let data = match chunk {
                Ok(d) => d,
                Err(e) => return Some(Stop::Error(content_failure(&job.id, &e))),
            };
            let len = data.len() as i64;
            let event = pb::VideoEvent {
                sequence: 0,
                video_id: job.id.clone(),
                time: Some(convert::timestamp(time_ms)),
                kind: Some(pb::video_event::Kind::Chunk(pb::ContentChunk {
                    offset,
                    data,
                })),
            };
            let bytes = event.encoded_len();
            if tx
                .send_within(Ok(event), bytes, self.content_window())
                .await
                .is_err()
            {
                return Some(Stop::Done);
            }
            self.metrics
                .stream_bytes(method, u64::try_from(len).unwrap_or(0));
            offset += len;
        }
        let end = pb::VideoEvent {
            sequence: 0,
            video_id: job.id.clone(),
            time: Some(convert::timestamp(time_ms)),
            kind: Some(pb::video_event::Kind::ContentEnd(pb::ContentEnd {
                size_bytes: content.size_bytes,
                sha256: content.sha256.clone(),
            })),
        };
        let bytes = end.encoded_len();
        if tx.send(Ok(end), bytes).await.is_err() {
            return Some(Stop::Done);
        }
        None
    }
}

/// The RPC a feed serves, as a metric label.
fn rpc_method(request: &FeedRequest) -> &'static str {
    if request.until_terminal {
        "WatchVideo"
    } else {
        "Subscribe"
    }
}
