//! The gRPC API: `vidgate.v1.VideoService`, auth, and the one mapping of errors to `Status`.

pub mod auth;
pub mod error;
pub mod service;
