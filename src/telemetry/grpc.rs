//! The gRPC server span's outcome: a tower layer that records `rpc.grpc.status_code` (and the
//! span status, per the OpenTelemetry RPC conventions) on the span tonic's `trace_fn` made.
//!
//! The code is read from the response headers: an error answered before any message is a
//! trailers-only response with `grpc-status` in its headers. A response without it started
//! normally and is recorded as 0 (OK); a stream that fails after its first message keeps that
//! 0 (its status travels in trailers, after the span's request phase).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

/// Codes that are the server's fault (span status ERROR); the others are the caller's.
const SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// Adds [`RecordStatus`] around every service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordStatusLayer;

impl<S> Layer<S> for RecordStatusLayer {
    type Service = RecordStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecordStatus { inner }
    }
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RecordStatus<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for RecordStatus<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            if let Ok(response) = &result {
                // Polled inside the server span (tonic enters it around each poll).
                let span = tracing::Span::current();
                let code = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i64>().ok())
                    .unwrap_or(0);
                span.record("rpc.grpc.status_code", code);
                if SERVER_ERRORS.contains(&code) {
                    span.record("otel.status_code", "ERROR");
                }
            }
            result
        })
    }
}
