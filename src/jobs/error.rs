//! What the application layer refuses with, in transport-neutral words: each adapter maps it
//! once (gRPC: to `ApiError` and a `Status`; AMQP: to a dead-letter reason).

use crate::domain::{FieldViolation, ValidationError, echo};
use crate::store::StoreError;

/// Everything [`super::Jobs`] can refuse with. Messages name the field or the cause; none
/// carries a secret or a raw internal error.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    /// The request breaks contract rules (every violation listed), or names an unknown model.
    #[error("{0}")]
    InvalidVideoRequest(ValidationError),
    /// A plain argument is wrong (page size, page token, statuses).
    #[error("{field}: {description}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is allowed.
        description: String,
    },
    /// No such video for this tenant (also another tenant's video).
    #[error("video {} not found", echo(.0))]
    VideoNotFound(String),
    /// Same `request_id`, different request.
    #[error(
        "request_id {:?} was already used for a different request (video {existing_id}); use a new request_id for a new request", echo(.request_id)
    )]
    RequestIdReused {
        /// The key.
        request_id: String,
        /// The video it names.
        existing_id: String,
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
    /// The store cannot be reached.
    #[error("the job store is unavailable; retry shortly")]
    StoreUnavailable,
    /// Something vidgate did not expect; details are in the server log under this reference.
    #[error("internal error; see the server log (ref {0})")]
    Internal(String),
}

impl JobsError {
    /// The stable reason, the same over every transport (`ErrorInfo.reason`, AMQP
    /// `x-vidgate-reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidVideoRequest(ValidationError::UnknownModel { .. }) => "UNKNOWN_MODEL",
            Self::InvalidVideoRequest(_) | Self::InvalidArgument { .. } => "INVALID_VIDEO_REQUEST",
            Self::VideoNotFound(_) => "VIDEO_NOT_FOUND",
            Self::RequestIdReused { .. } => "REQUEST_ID_REUSED",
            Self::VideoAlreadyFinished { .. } => "VIDEO_ALREADY_FINISHED",
            Self::VideoNotRetryable { .. } => "VIDEO_NOT_RETRYABLE",
            Self::DuplicateChargeNotAccepted { .. } => "DUPLICATE_CHARGE_NOT_ACCEPTED",
            Self::VideoChanged(_) => "VIDEO_CHANGED",
            Self::RequestPending { .. } => "REQUEST_PENDING",
            Self::StoreUnavailable => "STORE_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// Field violations of an invalid video request (empty for every other error).
    pub fn violations(&self) -> Vec<FieldViolation> {
        match self {
            Self::InvalidVideoRequest(e) => e.field_violations(),
            _ => Vec::new(),
        }
    }
}

impl JobsError {
    /// [`JobsError::Internal`]: `error` is logged here (as `what`) under a fresh reference,
    /// and only the reference reaches the caller.
    pub(crate) fn internal(what: &'static str, error: &dyn std::fmt::Display) -> Self {
        let reference = uuid::Uuid::now_v7().simple().to_string();
        tracing::error!(error = %error, reference = %reference, "{what}");
        Self::Internal(reference)
    }
}

impl From<ValidationError> for JobsError {
    fn from(e: ValidationError) -> Self {
        Self::InvalidVideoRequest(e)
    }
}

/// The one reading of a store failure for callers: what they can act on keeps its meaning,
/// the rest is logged here with a reference and surfaces only as that reference.
impl From<StoreError> for JobsError {
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
            other => Self::internal("store error", &other),
        }
    }
}
