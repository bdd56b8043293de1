//! The API layer's errors and their one mapping to gRPC `Status` with `google.rpc` details.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation as RpcViolation, StatusExt};

use crate::domain::{FieldViolation, ValidationError};
use crate::store::StoreError;

/// `ErrorInfo.domain` of every vidgate error.
pub const ERROR_DOMAIN: &str = "vidgate";
/// How long a caller should wait before retrying after `STORE_UNAVAILABLE`.
pub const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a caller should wait before reconnecting after `SERVER_SHUTTING_DOWN`: long enough
/// for a load balancer to have another instance (or a restarted one) ready, short enough that a
/// resumed stream misses little time.
pub const SHUTDOWN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Everything an RPC can refuse with. Messages name the field or the cause; none carries a
/// secret or a raw internal error.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request breaks contract rules (every violation listed).
    #[error("{0}")]
    InvalidVideoRequest(ValidationError),
    /// A plain argument is wrong (page size, page token, offsets).
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
    /// No such video for this tenant (also another tenant's video).
    #[error("video {0} not found")]
    VideoNotFound(String),
    /// Same `request_id`, different request.
    #[error(
        "request_id {request_id:?} was already used for a different request (video {existing_id}); use a new request_id for a new request"
    )]
    RequestIdReused {
        /// The key.
        request_id: String,
        /// The video it names.
        existing_id: String,
    },
    /// Download of a video that is not completed.
    #[error("video {id} is {status}, not completed: there is no content to download yet")]
    VideoNotCompleted {
        /// The video.
        id: String,
        /// Its status.
        status: &'static str,
    },
    /// Cancel of a finished video.
    #[error("video {id} is already {status} and cannot be cancelled")]
    VideoAlreadyFinished {
        /// The video.
        id: String,
        /// Its status.
        status: &'static str,
    },
    /// Retry of a video that did not fail, or failed for a reason that sending the same request
    /// again cannot cure.
    #[error(
        "video {id} cannot be retried: {why}. RetryVideo sends again only a FAILED video whose error is retryable (such as UPSTREAM_OUTCOME_UNKNOWN), with accept_possible_duplicate_charge = true"
    )]
    VideoNotRetryable {
        /// The video.
        id: String,
        /// Its status.
        status: &'static str,
        /// Its failure reason, if it failed.
        video_reason: Option<&'static str>,
        /// What stands in the way, for people.
        why: String,
    },
    /// Retry without the caller's consent to a possible second charge.
    #[error(
        "video {id} failed with {video_reason}: its earlier attempt may exist upstream and be billed, so sending it again may bill a second generation; set accept_possible_duplicate_charge = true to accept that and retry"
    )]
    DuplicateChargeNotAccepted {
        /// The video.
        id: String,
        /// Its failure reason.
        video_reason: &'static str,
    },
    /// The video changed under a write twice in a row (a bounded re-check, not a loop).
    #[error("video {0} changed while this request was applied; read it again and decide anew")]
    VideoChanged(String),
    /// `read_offset` past the end.
    #[error("read_offset {offset} is past the end of the content ({size} bytes)")]
    OffsetOutOfRange {
        /// Asked-for offset.
        offset: u64,
        /// Content size.
        size: u64,
    },
    /// The last frame was not asked for, or upstream gave none.
    #[error("video {0} has no last frame: ask for one with seedance.return_last_frame = true")]
    LastFrameNotAvailable(String),
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
    /// The subscriber fell behind its bounded buffer.
    #[error("the stream fell behind and was ended; resume with after_sequence = {last_sequence}")]
    SubscriberLagged {
        /// The last sequence delivered on this stream.
        last_sequence: i64,
    },
    /// The store cannot be reached.
    #[error("the job store is unavailable; retry shortly")]
    StoreUnavailable,
    /// The server is stopping: new calls are refused and open streams end, naming where to
    /// resume (`last_sequence` for event streams, `next_offset` for downloads).
    #[error("the server is shutting down; reconnect and {}", resume_hint(*.last_sequence, *.next_offset))]
    ShuttingDown {
        /// Event streams: the last sequence delivered on this stream.
        last_sequence: Option<i64>,
        /// `DownloadVideo`: the offset of the first byte not sent.
        next_offset: Option<i64>,
    },
    /// A cancel or delete is recorded, but the job's owner did not apply it in time (it will):
    /// asking again is harmless.
    #[error(
        "the {request} of video {id} is recorded and will be applied by the dispatcher step that holds the video; call again to learn the outcome"
    )]
    RequestPending {
        /// The video.
        id: String,
        /// `cancel` or `delete`.
        request: &'static str,
    },
    /// A message too large for its field (e.g. the request as a whole).
    #[error("{0}")]
    MessageTooLarge(String),
    /// Something vidgate did not expect; details are in the server log, not here.
    #[error("internal error; see the server log (ref {0})")]
    Internal(String),
}

impl ApiError {
    /// The stable `ErrorInfo.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidVideoRequest(ValidationError::UnknownModel { .. }) => "UNKNOWN_MODEL",
            Self::InvalidVideoRequest(_) | Self::InvalidArgument { .. } => "INVALID_VIDEO_REQUEST",
            Self::MissingCredentials => "MISSING_CREDENTIALS",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::VideoNotFound(_) => "VIDEO_NOT_FOUND",
            Self::RequestIdReused { .. } => "REQUEST_ID_REUSED",
            Self::VideoNotCompleted { .. } => "VIDEO_NOT_COMPLETED",
            Self::VideoAlreadyFinished { .. } => "VIDEO_ALREADY_FINISHED",
            Self::VideoNotRetryable { .. } => "VIDEO_NOT_RETRYABLE",
            Self::DuplicateChargeNotAccepted { .. } => "DUPLICATE_CHARGE_NOT_ACCEPTED",
            Self::VideoChanged(_) => "VIDEO_CHANGED",
            Self::OffsetOutOfRange { .. } => "OFFSET_OUT_OF_RANGE",
            Self::LastFrameNotAvailable(_) => "LAST_FRAME_NOT_AVAILABLE",
            Self::CursorExpired { .. } => "CURSOR_EXPIRED",
            Self::SubscriberLagged { .. } => "SUBSCRIBER_LAGGED",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::ShuttingDown { .. } => "SERVER_SHUTTING_DOWN",
            Self::RequestPending { .. } => "REQUEST_PENDING",
            Self::MessageTooLarge(_) => "MESSAGE_TOO_LARGE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidVideoRequest(_) | Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::MissingCredentials | Self::InvalidCredentials => Code::Unauthenticated,
            Self::VideoNotFound(_) | Self::LastFrameNotAvailable(_) => Code::NotFound,
            Self::RequestIdReused { .. } => Code::AlreadyExists,
            Self::VideoNotCompleted { .. }
            | Self::VideoAlreadyFinished { .. }
            | Self::VideoNotRetryable { .. }
            | Self::DuplicateChargeNotAccepted { .. } => Code::FailedPrecondition,
            Self::OffsetOutOfRange { .. } | Self::CursorExpired { .. } => Code::OutOfRange,
            Self::SubscriberLagged { .. } | Self::VideoChanged(_) => Code::Aborted,
            Self::StoreUnavailable | Self::ShuttingDown { .. } | Self::RequestPending { .. } => {
                Code::Unavailable
            }
            Self::MessageTooLarge(_) => Code::ResourceExhausted,
            Self::Internal(_) => Code::Internal,
        }
    }

    /// Field violations of an input error, for `BadRequest` (and AMQP rejections).
    pub fn violations(&self) -> Vec<FieldViolation> {
        match self {
            Self::InvalidVideoRequest(e) => e.field_violations(),
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

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::InvalidVideoRequest(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::RequestIdReused {
                request_id,
                existing_id,
            } => Self::RequestIdReused {
                request_id,
                existing_id,
            },
            StoreError::NotFound(id) => Self::VideoNotFound(id),
            StoreError::Unavailable(detail) => {
                tracing::error!(error = %detail, "job store unavailable");
                Self::StoreUnavailable
            }
            other => {
                let reference = uuid::Uuid::now_v7().simple().to_string();
                tracing::error!(error = %other, reference = %reference, "store error");
                Self::Internal(reference)
            }
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
            } => {
                metadata.insert("next_offset".to_owned(), offset.to_string());
            }
            ApiError::RequestIdReused { existing_id, .. } => {
                metadata.insert("existing_video_id".to_owned(), existing_id.clone());
            }
            ApiError::CursorExpired { first_kept, .. } => {
                metadata.insert("first_kept_sequence".to_owned(), first_kept.to_string());
            }
            ApiError::VideoNotRetryable {
                status,
                video_reason,
                ..
            } => {
                metadata.insert("video_status".to_owned(), (*status).to_owned());
                if let Some(reason) = video_reason {
                    metadata.insert("video_reason".to_owned(), (*reason).to_owned());
                }
            }
            ApiError::DuplicateChargeNotAccepted { video_reason, .. } => {
                metadata.insert("video_reason".to_owned(), (*video_reason).to_owned());
                metadata.insert(
                    "required_field".to_owned(),
                    "accept_possible_duplicate_charge".to_owned(),
                );
            }
            _ => {}
        }
        details.set_error_info(e.reason(), ERROR_DOMAIN, metadata);
        let violations: Vec<RpcViolation> = match &e {
            ApiError::InvalidArgument { field, description } => {
                vec![RpcViolation::new(*field, description.clone())]
            }
            _ => e
                .violations()
                .into_iter()
                .map(|v| {
                    let mut rv = RpcViolation::new(v.field, v.description);
                    rv.reason = v.rule;
                    rv
                })
                .collect(),
        };
        if !violations.is_empty() {
            details.set_bad_request(violations);
        }
        match &e {
            ApiError::StoreUnavailable | ApiError::RequestPending { .. } => {
                details.set_retry_info(Some(STORE_RETRY_AFTER));
            }
            ApiError::ShuttingDown { .. } => {
                details.set_retry_info(Some(SHUTDOWN_RETRY_AFTER));
            }
            _ => {}
        }
        Status::with_error_details(e.code(), e.to_string(), details)
    }
}
