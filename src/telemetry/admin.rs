//! The admin HTTP port: `/healthz` (the process is alive), `/readyz` (it can do its work:
//! [`super::readiness`]) and `/metrics` (Prometheus text format). Plain HTTP on its own port,
//! meant for the orchestrator and the scraper, not for clients.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::StateGauges;
use super::readiness::Readiness;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// Readiness checks.
    pub readiness: Readiness,
    /// The registry the Prometheus exporter fills.
    pub registry: prometheus::Registry,
    /// Refreshed before each scrape.
    pub gauges: StateGauges,
}

/// The routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let addr = listener.local_addr().ok();
    if let Err(e) = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, addr = ?addr, "admin HTTP server stopped with an error");
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let report = state.readiness.refresh().await;
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report)).into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    state.gauges.refresh().await;
    let families = state.registry.gather();
    let mut body = Vec::with_capacity(16 * 1024);
    match TextEncoder::new().encode(&families, &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics could not be encoded: {e}\n"),
        )
            .into_response(),
    }
}
