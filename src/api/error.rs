//! The gRPC adapter's errors (its own, and the application layer's and the event feed's as
//! they reach it) and their one mapping to gRPC `Status` with `google.rpc` details.

use crate::webhooks::endpoints::WebhookError;
use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation as RpcViolation, StatusExt};

use crate::domain::{FieldViolation, shorten};
use crate::events::FeedError;
use crate::jobs::JobsError;
use crate::store::StoreError;

/// `ErrorInfo.domain` of every vidgate error.
pub const ERROR_DOMAIN: &str = "vidgate";
/// How long a caller should wait before retrying after `STORE_UNAVAILABLE`.
pub const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The retry delay `UNAVAILABLE` carries when the object store holding the videos is down.
pub const OBJECTS_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long a caller should wait before reconnecting after `SERVER_SHUTTING_DOWN`: long enough
/// for a load balancer to have another instance (or a restarted one) ready, short enough that a
/// resumed stream misses little time.
pub const SHUTDOWN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Longest status message sent, in bytes. It travels twice (percent-encoded in `grpc-message`,
/// up to 3x, and inside `grpc-status-details-bin`, base64): 1 KiB keeps both, with the details
/// below, under 8 KiB, inside the 16 KiB header-list limit common to gRPC clients. Echoed values
/// are already cut (`domain::echo`); this bounds a message that lists many of them.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;
/// Most bytes of `BadRequest` field violations (paths and descriptions) in one status; the rest
/// are counted in a last violation. Same reason as [`MAX_STATUS_MESSAGE_BYTES`].
pub const MAX_VIOLATION_BYTES: usize = 3 * 1024;

/// Everything an RPC can refuse with. Messages name the field or the cause; none carries a
/// secret or a raw internal error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Refused by the application layer (accept, get, list, cancel, delete, retry).
    #[error(transparent)]
    Jobs(#[from] JobsError),
    /// A plain argument of a stream or download is wrong (offsets, cursor, variant).
    #[error("{field}: {description}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is allowed.
        description: String,
    },
    /// No `authorization` metadata.
    #[error("missing credentials: send metadata `authorization: Bearer <token>`")]
    MissingCredentials,
    /// A token that maps to no tenant.
    #[error("invalid credentials: the bearer token is not known")]
    InvalidCredentials,
    /// More than one `authorization` value: which one counts would be a guess.
    #[error(
        "ambiguous credentials: {0} `authorization` values were sent; send exactly one (`authorization: Bearer <token>`)"
    )]
    AmbiguousCredentials(usize),
    /// Download of a video that is not completed.
    #[error("video {id} is {status}, not completed: there is no content to download yet")]
    VideoNotCompleted {
        /// The video.
        id: String,
        /// Its status.
        status: &'static str,
    },
    /// `read_offset` past the end.
    #[error("read_offset {offset} is past the end of the content ({size} bytes)")]
    OffsetOutOfRange {
        /// Asked-for offset.
        offset: u64,
        /// Content size.
        size: u64,
    },
    /// The stored content is gone: past `[blob] retention`, or removed from the store.
    #[error("{0}")]
    ContentExpired(String),
    /// The object store holding the videos did not answer: the content exists, try again.
    #[error(
        "the stored video cannot be read right now: the object store is unavailable ({0}); retry after the delay in RetryInfo"
    )]
    ContentUnavailable(String),
    /// The last frame was not asked for, or upstream gave none.
    #[error("video {0} has no last frame: ask for one with seedance.return_last_frame = true")]
    LastFrameNotAvailable(String),
    /// The last frame was asked for, and vidgate dropped what upstream gave.
    #[error("video {id} has no last frame: it was asked for, and dropped: {why}")]
    LastFrameDropped {
        /// The video.
        id: String,
        /// Why it was dropped.
        why: String,
    },
    /// A cursor older than the event retention.
    #[error(
        "after_sequence {cursor} is older than the retained events (kept from {first_kept}); read the current state with GetVideo and watch from 0"
    )]
    CursorExpired {
        /// The cursor.
        cursor: i64,
        /// The first sequence still kept.
        first_kept: i64,
    },
    /// A cursor beyond the latest committed sequence.
    #[error(
        "after_sequence {cursor} is beyond the latest sequence {latest}: resume from a sequence a stream sent, or watch from 0"
    )]
    CursorAhead {
        /// The cursor.
        cursor: i64,
        /// The latest committed sequence.
        latest: i64,
    },
    /// The subscriber fell behind its bounded buffer.
    #[error("the stream fell behind and was ended; resume with after_sequence = {last_sequence}")]
    SubscriberLagged {
        /// The last sequence delivered on this stream.
        last_sequence: i64,
    },
    /// A download's client took nothing for [`super::service::DOWNLOAD_STALL`]: the stream ends
    /// (its open file is closed), naming the offset to resume from.
    #[error(
        "the download was not read for {} s and was ended; resume with read_offset = {next_offset}",
        super::service::DOWNLOAD_STALL.as_secs()
    )]
    DownloadStalled {
        /// The offset of the first byte not sent.
        next_offset: i64,
    },
    /// The server is stopping: new calls are refused and open streams end, naming where to
    /// resume (`last_sequence` for event streams, `next_offset` for downloads).
    #[error("the server is shutting down; reconnect and {}", resume_hint(*.last_sequence, *.next_offset))]
    ShuttingDown {
        /// Event streams: the last sequence delivered on this stream.
        last_sequence: Option<i64>,
        /// `DownloadVideo`: the offset of the first byte not sent.
        next_offset: Option<i64>,
    },
    /// The request's bytes are not a protobuf message of the RPC's type (malformed, or a string
    /// field that is not UTF-8); the cause is prost's, naming the message and field.
    #[error("the request is not a valid protobuf message: {0}")]
    MalformedMessage(String),
    /// The tenant already holds its cap of concurrent server streams.
    #[error(
        "this tenant already has {limit} streams open (Subscribe, WatchVideo and DownloadVideo together; server.max_streams_per_tenant): end one before opening another"
    )]
    TooManyStreams {
        /// The cap.
        limit: usize,
    },
    /// A message too large for its field (e.g. the request as a whole).
    #[error("{0}")]
    MessageTooLarge(String),
    /// Refused or failed by the webhooks layer (`WebhookService`).
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::endpoints::WebhookError),
    /// Something vidgate did not expect; details are in the server log, not here.
    #[error("internal error; see the server log (ref {0})")]
    Internal(String),
}

impl ApiError {
    /// The stable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Jobs(e) => e.reason(),
            Self::InvalidArgument { .. } => "INVALID_VIDEO_REQUEST",
            Self::MissingCredentials => "MISSING_CREDENTIALS",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::AmbiguousCredentials(_) => "AMBIGUOUS_CREDENTIALS",
            Self::VideoNotCompleted { .. } => "VIDEO_NOT_COMPLETED",
            Self::OffsetOutOfRange { .. } => "OFFSET_OUT_OF_RANGE",
            Self::LastFrameNotAvailable(_) | Self::LastFrameDropped { .. } => {
                "LAST_FRAME_NOT_AVAILABLE"
            }
            Self::CursorExpired { .. } => "CURSOR_EXPIRED",
            Self::CursorAhead { .. } => "CURSOR_AHEAD",
            Self::SubscriberLagged { .. } => "SUBSCRIBER_LAGGED",
            Self::DownloadStalled { .. } => "DOWNLOAD_STALLED",
            Self::ShuttingDown { .. } => "SERVER_SHUTTING_DOWN",
            Self::ContentUnavailable(_) => "CONTENT_UNAVAILABLE",
            Self::ContentExpired(_) => "CONTENT_EXPIRED",
            Self::MalformedMessage(_) => "MALFORMED_MESSAGE",
            Self::TooManyStreams { .. } => "TOO_MANY_STREAMS",
            Self::MessageTooLarge(_) => "MESSAGE_TOO_LARGE",
            Self::Webhooks(e) => e.reason(),
            Self::Internal(_) => "INTERNAL",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::Jobs(e) => jobs_code(e),
            Self::InvalidArgument { .. } | Self::MalformedMessage(_) => Code::InvalidArgument,
            Self::MissingCredentials | Self::InvalidCredentials | Self::AmbiguousCredentials(_) => {
                Code::Unauthenticated
            }
            Self::LastFrameNotAvailable(_)
            | Self::LastFrameDropped { .. }
            | Self::ContentExpired(_) => Code::NotFound,
            Self::VideoNotCompleted { .. } => Code::FailedPrecondition,
            Self::OffsetOutOfRange { .. }
            | Self::CursorExpired { .. }
            | Self::CursorAhead { .. } => Code::OutOfRange,
            Self::SubscriberLagged { .. } | Self::DownloadStalled { .. } => Code::Aborted,
            Self::ShuttingDown { .. } | Self::ContentUnavailable(_) => Code::Unavailable,
            Self::MessageTooLarge(_) | Self::TooManyStreams { .. } => Code::ResourceExhausted,
            Self::Webhooks(e) => webhooks_code(e),
            Self::Internal(_) => Code::Internal,
        }
    }

    /// Field violations of an input error, for `BadRequest`.
    pub fn violations(&self) -> Vec<FieldViolation> {
        match self {
            Self::Jobs(e) => e.violations(),
            _ => Vec::new(),
        }
    }
}

fn resume_hint(last_sequence: Option<i64>, next_offset: Option<i64>) -> String {
    match (last_sequence, next_offset) {
        (Some(seq), _) => format!("resume with after_sequence = {seq}"),
        (None, Some(offset)) => format!("resume with read_offset = {offset}"),
        (None, None) => "retry".to_owned(),
    }
}

/// The application layer's refusals in gRPC's terms: the code of each.
fn jobs_code(e: &JobsError) -> Code {
    match e {
        JobsError::InvalidVideoRequest(_) | JobsError::InvalidArgument { .. } => {
            Code::InvalidArgument
        }
        JobsError::VideoNotFound(_) => Code::NotFound,
        JobsError::RequestIdReused { .. } => Code::AlreadyExists,
        JobsError::VideoAlreadyFinished { .. }
        | JobsError::VideoNotRetryable { .. }
        | JobsError::DuplicateChargeNotAccepted { .. } => Code::FailedPrecondition,
        JobsError::VideoChanged(_) => Code::Aborted,
        JobsError::StoreUnavailable | JobsError::RequestPending { .. } => Code::Unavailable,
        JobsError::Internal(_) => Code::Internal,
    }
}

/// The webhooks layer's refusals in gRPC's terms.
fn webhooks_code(e: &WebhookError) -> Code {
    match e {
        WebhookError::InvalidArgument { .. } | WebhookError::TargetNotAllowed(_) => {
            Code::InvalidArgument
        }
        WebhookError::EndpointNotFound(_) | WebhookError::DeliveryNotFound(_) => Code::NotFound,
        WebhookError::TooManyEndpoints { .. } => Code::ResourceExhausted,
        WebhookError::EndpointDisabled { .. } => Code::FailedPrecondition,
        WebhookError::Changed(_) => Code::Aborted,
        WebhookError::EventsPruned { .. } => Code::OutOfRange,
        WebhookError::StoreUnavailable => Code::Unavailable,
        WebhookError::Internal(_) => Code::Internal,
    }
}

/// Store errors met by the adapter itself (stream cursors) read as the application layer
/// reads them: one classification of store failures.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Jobs(e.into())
    }
}

/// So a handler can `?` an application-layer result straight into its `Status`.
impl From<JobsError> for Status {
    fn from(e: JobsError) -> Self {
        ApiError::from(e).into()
    }
}

/// How a stream of the event feed ends, in gRPC's terms.
impl From<FeedError> for ApiError {
    fn from(e: FeedError) -> Self {
        match e {
            FeedError::ShuttingDown { last_sequence } => Self::ShuttingDown {
                last_sequence: Some(last_sequence),
                next_offset: None,
            },
            FeedError::CursorExpired { cursor, first_kept } => {
                Self::CursorExpired { cursor, first_kept }
            }
            FeedError::CursorAhead { cursor, latest } => Self::CursorAhead { cursor, latest },
            FeedError::VideoNotFound(id) => Self::Jobs(JobsError::VideoNotFound(id)),
            FeedError::Lagged { last_sequence } => Self::SubscriberLagged { last_sequence },
            FeedError::Store(e) => e.into(),
            FeedError::ContentUnreadable { reference } => Self::Internal(reference),
            FeedError::ContentUnavailable(why) => Self::ContentUnavailable(why),
            FeedError::ContentExpired(why) => Self::ContentExpired(why),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let mut details = ErrorDetails::new();
        let mut metadata = HashMap::new();
        match &e {
            ApiError::SubscriberLagged { last_sequence }
            | ApiError::ShuttingDown {
                last_sequence: Some(last_sequence),
                ..
            } => {
                metadata.insert("last_sequence".to_owned(), last_sequence.to_string());
            }
            ApiError::ShuttingDown {
                next_offset: Some(offset),
                ..
            }
            | ApiError::DownloadStalled {
                next_offset: offset,
            } => {
                metadata.insert("next_offset".to_owned(), offset.to_string());
            }
            ApiError::Jobs(JobsError::RequestIdReused { existing_id, .. }) => {
                metadata.insert("existing_video_id".to_owned(), existing_id.clone());
            }
            ApiError::CursorExpired { first_kept, .. }
            | ApiError::Webhooks(WebhookError::EventsPruned { first_kept, .. }) => {
                metadata.insert("first_kept_sequence".to_owned(), first_kept.to_string());
            }
            ApiError::TooManyStreams { limit } => {
                metadata.insert("max_streams".to_owned(), limit.to_string());
            }
            ApiError::Webhooks(WebhookError::TooManyEndpoints { limit }) => {
                metadata.insert("max_endpoints".to_owned(), limit.to_string());
            }
            ApiError::CursorAhead { latest, .. } => {
                metadata.insert("latest_sequence".to_owned(), latest.to_string());
            }
            ApiError::Jobs(JobsError::VideoNotRetryable {
                status,
                video_reason,
                ..
            }) => {
                metadata.insert("video_status".to_owned(), (*status).to_owned());
                if let Some(reason) = video_reason {
                    metadata.insert("video_reason".to_owned(), (*reason).to_owned());
                }
            }
            ApiError::Jobs(JobsError::DuplicateChargeNotAccepted { video_reason, .. }) => {
                metadata.insert("video_reason".to_owned(), (*video_reason).to_owned());
                metadata.insert(
                    "required_field".to_owned(),
                    "accept_possible_duplicate_charge".to_owned(),
                );
            }
            _ => {}
        }
        details.set_error_info(e.reason(), ERROR_DOMAIN, metadata);
        let violations = bounded_violations(match &e {
            ApiError::InvalidArgument { field, description }
            | ApiError::Jobs(JobsError::InvalidArgument { field, description }) => {
                vec![RpcViolation::new(*field, description.clone())]
            }
            ApiError::Webhooks(w) => w
                .violation()
                .map(|(field, rule, description)| {
                    let mut rv = RpcViolation::new(field, description);
                    rv.reason = rule.to_owned();
                    rv
                })
                .into_iter()
                .collect(),
            _ => e
                .violations()
                .into_iter()
                .map(|v| {
                    let mut rv = RpcViolation::new(v.field, v.description);
                    rv.reason = v.rule;
                    rv
                })
                .collect(),
        });
        if !violations.is_empty() {
            details.set_bad_request(violations);
        }
        match &e {
            ApiError::Jobs(JobsError::StoreUnavailable | JobsError::RequestPending { .. })
            | ApiError::Webhooks(WebhookError::StoreUnavailable) => {
                details.set_retry_info(Some(STORE_RETRY_AFTER));
            }
            ApiError::ContentUnavailable(_) => {
                details.set_retry_info(Some(OBJECTS_RETRY_AFTER));
            }
            ApiError::ShuttingDown { .. } => {
                details.set_retry_info(Some(SHUTDOWN_RETRY_AFTER));
            }
            _ => {}
        }
        let message = e.to_string();
        Status::with_error_details(
            e.code(),
            shorten(&message, MAX_STATUS_MESSAGE_BYTES),
            details,
        )
    }
}

/// The violations that fit in [`MAX_VIOLATION_BYTES`], in order; when some do not, a last one
/// (field `*`) says how many were left out, so the caller knows the list is not whole.
fn bounded_violations(all: Vec<RpcViolation>) -> Vec<RpcViolation> {
    let total = all.len();
    let mut used = 0;
    let mut kept = Vec::new();
    for mut v in all {
        // A single violation never takes more than half the budget.
        v.field = shorten(&v.field, MAX_VIOLATION_BYTES / 8).into_owned();
        v.description = shorten(&v.description, MAX_VIOLATION_BYTES / 4).into_owned();
        let size = v.field.len() + v.description.len() + v.reason.len();
        if used + size > MAX_VIOLATION_BYTES {
            let left_out = total - kept.len();
            kept.push(RpcViolation::new(
                "*",
                format!(
                    "{left_out} more violations not shown (at most {MAX_VIOLATION_BYTES} bytes of them are sent); fix those above and send again"
                ),
            ));
            break;
        }
        used += size;
        kept.push(v);
    }
    kept
}
