//! `vidgate.v1.VideoService`: the gRPC adapter. It authenticates, hands each call to the
//! application layer ([`Jobs`]) or to the event feed, and maps every error once
//! (`ApiError` -> `Status`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::error::ApiError;
use super::streams::{DEFAULT_MAX_STREAMS_PER_TENANT, Guarded, StreamLimiter};
use crate::blob::{BlobError, BlobStore};
use crate::budget;
use crate::convert;
use crate::domain::Tenant;
use crate::events::{DEFAULT_STREAM_BUDGET_BYTES, Feed, FeedFilter, FeedItem, FeedRequest};
use crate::jobs::{IntakeOrigin, Jobs, parse_statuses};
use crate::pb;
use crate::pb::video_service_server::VideoService;
use crate::store::JobStore;
use crate::telemetry::Metrics;

/// Messages buffered per stream that carries video bytes (`DownloadVideo`, watch and subscribe
/// with `include_content`): 2 chunks (128 KiB at the default chunk size) per stream. With 32,
/// 100 watchers of one video held ~350 MB while their clients were slower than the disk; with
/// 4, ~95 MB; with 2, ~70 MB at the same throughput, since chunks in the page cache are read
/// without a thread hop (the benchmark harness's `watch` scenario, BENCHMARKS.md).
pub const CONTENT_STREAM_BUFFER: usize = 2;
/// A `DownloadVideo` whose client takes nothing for this long is ended `ABORTED` /
/// `DOWNLOAD_STALLED` with the offset to resume from, and its file is closed then: a thousand
/// never-read downloads must not pin a thousand file descriptors until their clients go away.
pub const DOWNLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// The service.
#[derive(Clone)]
pub struct VideoApi {
    jobs: Jobs,
    blobs: BlobStore,
    auth: Arc<Authenticator>,
    feed: Feed,
    chunk_bytes: usize,
    stream_budget: usize,
    metrics: Metrics,
    draining: CancellationToken,
    streams: StreamLimiter,
}

impl VideoApi {
    /// Wires the service over the application layer, and the store's event log and the blobs
    /// for the streams.
    pub fn new(
        jobs: Jobs,
        store: Arc<dyn JobStore>,
        blobs: BlobStore,
        auth: Arc<Authenticator>,
        chunk_bytes: usize,
    ) -> Self {
        let feed = Feed::new(store, blobs.clone(), chunk_bytes);
        Self {
            jobs,
            blobs,
            auth,
            feed,
            chunk_bytes,
            stream_budget: DEFAULT_STREAM_BUDGET_BYTES,
            metrics: Metrics::disabled(),
            draining: CancellationToken::new(),
            streams: StreamLimiter::new(DEFAULT_MAX_STREAMS_PER_TENANT),
        }
    }

    /// What one event stream may hold for its client ([`DEFAULT_STREAM_BUDGET_BYTES`]); a
    /// stream that carries content holds its chunks on top.
    pub fn with_stream_budget(mut self, bytes: usize) -> Self {
        self.stream_budget = bytes.max(1);
        self
    }

    /// At most `max` concurrent server streams per tenant (see [`super::streams`]).
    pub fn with_max_streams_per_tenant(mut self, max: usize) -> Self {
        self.streams = StreamLimiter::new(max);
        self
    }

    /// Once `draining` is cancelled, new calls are refused and open streams end, all with
    /// `UNAVAILABLE` / `SERVER_SHUTTING_DOWN` (streams naming where to resume).
    pub fn with_draining(mut self, draining: CancellationToken) -> Self {
        self.feed = self.feed.with_draining(draining.clone());
        self.draining = draining;
        self
    }

    /// Refuses a new call while the server stops. Calls already running finish.
    fn admit(&self) -> Result<(), ApiError> {
        if self.draining.is_cancelled() {
            return Err(ApiError::ShuttingDown {
                last_sequence: None,
                next_offset: None,
            });
        }
        Ok(())
    }

    /// Records live streams and streamed bytes into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.feed = self.feed.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    fn tenant<T>(&self, request: &Request<T>) -> Result<Tenant, ApiError> {
        self.auth.authenticate(request.metadata())
    }
}

/// A stream of one RPC's answers, each error already a `Status`; it holds its tenant's
/// stream slot.
type ApiStream<T> = Guarded<ReceiverStream<Result<T, Status>>>;
/// A stream of the event feed, its errors mapped to `Status` as they pass; it holds its
/// tenant's stream slot.
type EventStream = Guarded<
    futures::stream::Map<
        budget::Receiver<FeedItem>,
        fn(FeedItem) -> Result<pb::VideoEvent, Status>,
    >,
>;

#[tonic::async_trait]
impl VideoService for VideoApi {
    async fn create_video(
        &self,
        request: Request<pb::CreateVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let (job, _) = self
            .jobs
            .accept(&tenant, request.into_inner(), IntakeOrigin::default())
            .await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn get_video(
        &self,
        request: Request<pb::GetVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let job = self.jobs.get(&tenant, &request.get_ref().id).await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn list_videos(
        &self,
        request: Request<pb::ListVideosRequest>,
    ) -> Result<Response<pb::ListVideosResponse>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let page = self.jobs.list(&tenant, request.get_ref()).await?;
        Ok(Response::new(pb::ListVideosResponse {
            videos: page.videos,
            next_page_token: page.next_page_token,
        }))
    }

    async fn cancel_video(
        &self,
        request: Request<pb::CancelVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let job = self.jobs.cancel(&tenant, &request.get_ref().id).await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn retry_video(
        &self,
        request: Request<pb::RetryVideoRequest>,
    ) -> Result<Response<pb::Video>, Status> {
        let tenant = self.tenant(&request)?;
        let req = request.get_ref();
        let job = self
            .jobs
            .retry(&tenant, &req.id, req.accept_possible_duplicate_charge)
            .await?;
        Ok(Response::new(convert::video(&job)))
    }

    async fn delete_video(
        &self,
        request: Request<pb::DeleteVideoRequest>,
    ) -> Result<Response<pb::DeleteVideoResponse>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        self.jobs.delete(&tenant, &request.get_ref().id).await?;
        Ok(Response::new(pb::DeleteVideoResponse {}))
    }

    type DownloadVideoStream = ApiStream<pb::ContentChunk>;

    async fn download_video(
        &self,
        request: Request<pb::DownloadVideoRequest>,
    ) -> Result<Response<Self::DownloadVideoStream>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let req = request.into_inner();
        let job = self.jobs.get(&tenant, &req.id).await?;
        if req.read_offset < 0 || req.read_limit < 0 {
            return Err(ApiError::InvalidArgument {
                field: if req.read_offset < 0 {
                    "read_offset"
                } else {
                    "read_limit"
                },
                description: "read_offset and read_limit must be 0 or positive".into(),
            }
            .into());
        }
        let content = match job.content() {
            Some(c) => c.clone(),
            _ => {
                return Err(ApiError::VideoNotCompleted {
                    id: job.id.clone(),
                    status: job.status().as_str(),
                }
                .into());
            }
        };
        if let Some(at) = job
            .complete_time_ms()
            .and_then(|done| self.blobs.expires_at_ms(done))
            && crate::job::now_ms() >= at
        {
            return Err(ApiError::ContentExpired(format!(
                "video {}'s stored content expired at {} ([blob] retention): the job and its content facts remain (GetVideo)",
                job.id,
                httpdate::fmt_http_date(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(at.max(0) as u64)
                )
            ))
            .into());
        }
        let (key, size) = match pb::ContentVariant::try_from(req.variant) {
            Ok(pb::ContentVariant::Video) => (content.blob_key.clone(), content.size_bytes),
            Ok(pb::ContentVariant::LastFrame) => {
                match (&content.last_frame_key, content.last_frame_size) {
                    (Some(k), Some(s)) => (k.clone(), s),
                    _ => {
                        return Err(match &content.last_frame_dropped {
                            Some(why) => ApiError::LastFrameDropped {
                                id: job.id.clone(),
                                why: why.clone(),
                            },
                            None => ApiError::LastFrameNotAvailable(job.id.clone()),
                        }
                        .into());
                    }
                }
            }
            Err(_) => {
                return Err(ApiError::InvalidArgument {
                    field: "variant",
                    description: format!(
                        "variant {} is not VIDEO (0) or LAST_FRAME (1)",
                        req.variant
                    ),
                }
                .into());
            }
        };
        let offset = req.read_offset as u64;
        if offset > size {
            return Err(ApiError::OffsetOutOfRange { offset, size }.into());
        }
        let end = if req.read_limit == 0 {
            size
        } else {
            offset.saturating_add(req.read_limit as u64).min(size)
        };
        let slot = self.streams.admit(&tenant)?;
        let (tx, rx) = mpsc::channel(CONTENT_STREAM_BUFFER);
        if offset < end {
            let mut chunks = self
                .blobs
                .read_range(&key, offset..end, self.chunk_bytes)
                .await
                .map_err(|e| blob_status(&job.id, e))?;
            let job_id = job.id.clone();
            let metrics = self.metrics.clone();
            let draining = self.draining.clone();
            tokio::spawn(async move {
                let _live = metrics.subscriber("DownloadVideo");
                let mut at = offset as i64;
                // A stop ends the download where it stands (reading, or waiting for a slow
                // client), naming the offset to resume from: an open stream must not hold the
                // server's shutdown.
                let mut stopped = false;
                let mut stalled = false;
                loop {
                    let chunk = tokio::select! {
                        biased;
                        _ = draining.cancelled() => {
                            stopped = true;
                            break;
                        }
                        chunk = chunks.next() => chunk,
                    };
                    let Some(chunk) = chunk else {
                        break;
                    };
                    let (item, len) = match chunk {
                        Ok(data) => {
                            let len = data.len();
                            (Ok(pb::ContentChunk { offset: at, data }), len)
                        }
                        Err(e) => (Err(blob_status(&job_id, e)), 0),
                    };
                    let failed = item.is_err();
                    let sent = tokio::select! {
                        biased;
                        _ = draining.cancelled() => {
                            stopped = true;
                            break;
                        }
                        sent = tokio::time::timeout(DOWNLOAD_STALL, tx.send(item)) => sent,
                    };
                    let sent = match sent {
                        Ok(sent) => sent.is_ok(),
                        Err(_) => {
                            stalled = true;
                            break;
                        }
                    };
                    if !sent || failed {
                        break;
                    }
                    at += len as i64;
                    metrics.stream_bytes("DownloadVideo", len as u64);
                }
                // The file is closed before waiting for the client to take the last word.
                drop(chunks);
                if stalled {
                    let stall = ApiError::DownloadStalled { next_offset: at };
                    let _ = tx.send(Err(stall.into())).await;
                }
                if stopped {
                    let stop = ApiError::ShuttingDown {
                        last_sequence: None,
                        next_offset: Some(at),
                    };
                    let _ = tx.send(Err(stop.into())).await;
                }
            });
        }
        Ok(Response::new(Guarded::new(ReceiverStream::new(rx), slot)))
    }

    type WatchVideoStream = EventStream;

    async fn watch_video(
        &self,
        request: Request<pb::WatchVideoRequest>,
    ) -> Result<Response<Self::WatchVideoStream>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let req = request.into_inner();
        // Fail fast (before the stream starts) for an unknown or foreign id.
        self.jobs.get(&tenant, &req.id).await?;
        if req.after_sequence < 0 {
            return Err(ApiError::InvalidArgument {
                field: "after_sequence",
                description: "after_sequence must be 0 (from now) or a sequence this stream sent"
                    .into(),
            }
            .into());
        }
        let slot = self.streams.admit(&tenant)?;
        let feed_req = FeedRequest {
            filter: FeedFilter {
                tenant: tenant.0,
                job_id: Some(req.id),
                ..FeedFilter::default()
            },
            after_sequence: req.after_sequence,
            include_content: req.include_content,
            until_terminal: true,
            now_sequence: None,
        };
        Ok(Response::new(self.spawn_feed(feed_req, slot)))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.admit()?;
        let tenant = self.tenant(&request)?;
        let req = request.into_inner();
        if req.after_sequence < 0 {
            return Err(ApiError::InvalidArgument {
                field: "after_sequence",
                description: "after_sequence must be 0 (from now) or a sequence this stream sent"
                    .into(),
            }
            .into());
        }
        let statuses = parse_statuses(&req.statuses)?;
        let slot = self.streams.admit(&tenant)?;
        // "From now" is when the call arrived, not when the stream's task first runs: a create
        // committed in between must not be skipped.
        let now_sequence = if req.after_sequence == 0 {
            Some(self.feed.latest_sequence().await.map_err(ApiError::from)?)
        } else {
            None
        };

        let feed_req = FeedRequest {
            filter: FeedFilter {
                tenant: tenant.0,
                job_id: None,
                models: req.models,
                labels: req.labels.into_iter().collect::<BTreeMap<_, _>>(),
                statuses,
            },
            after_sequence: req.after_sequence,
            include_content: req.include_content,
            until_terminal: false,
            now_sequence,
        };
        Ok(Response::new(self.spawn_feed(feed_req, slot)))
    }
}

impl VideoApi {
    fn spawn_feed(&self, request: FeedRequest, slot: super::streams::StreamGuard) -> EventStream {
        // With content: the events' budget, plus the window stored content may fill (it never
        // takes more, see `Feed::content_window`).
        let budget = if request.include_content {
            self.stream_budget + crate::events::CONTENT_WINDOW_CHUNKS * self.chunk_bytes
        } else {
            self.stream_budget
        };
        let (tx, rx) = budget::channel(budget);
        let feed = self.feed.clone();
        tokio::spawn(async move { feed.pump(request, tx).await });
        Guarded::new(rx.map(event_or_status as fn(FeedItem) -> _), slot)
    }
}

/// The feed's own error becomes the stream's last `Status`.
fn event_or_status(item: FeedItem) -> Result<pb::VideoEvent, Status> {
    item.map_err(|e| ApiError::from(e).into())
}

fn blob_status(job_id: &str, e: BlobError) -> Status {
    match e {
        BlobError::NotFound(_) => {
            ApiError::ContentExpired(crate::events::content_gone(job_id)).into()
        }
        BlobError::OutOfRange { offset, size, .. } => {
            ApiError::OffsetOutOfRange { offset, size }.into()
        }
        BlobError::Unavailable { detail, .. } => {
            tracing::warn!(error = %detail, "stored content unreadable: the object store is unavailable");
            ApiError::ContentUnavailable(crate::domain::shorten(&detail, 300).into_owned()).into()
        }
        other => {
            let reference = uuid::Uuid::now_v7().simple().to_string();
            tracing::error!(error = %other, reference = %reference, "stored content unreadable");
            ApiError::Internal(reference).into()
        }
    }
}
