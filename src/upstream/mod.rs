//! The upstream `/videos` API: wire types, the client, status normalising, error
//! classification, the shared rate limit, and the simulator.

pub mod client;
pub mod error;
pub mod limiter;
pub mod request;
pub mod secret;
pub mod sim;
pub mod status;
pub mod wire;

pub use client::{
    ContentStart, ContentStream, CreateSlot, CreatedTask, TaskError, UpstreamClient,
    UpstreamConfig, UpstreamVideo,
};
pub use error::{CreateFailure, Endpoint, UpstreamError};
pub use limiter::{LimitConfig, Pool, UpstreamLimiter};
pub use secret::ApiKey;
pub use status::{NormalisedStatus, UpstreamState};
