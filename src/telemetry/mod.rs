//! What operators see: structured logs, OpenTelemetry traces and metrics, and the admin HTTP
//! port (`/healthz`, `/readyz`, `/metrics`).
//!
//! - Logs: one line per event, text or JSON, level from `RUST_LOG` ([`init`]).
//! - Traces: `tracing` spans exported through `tracing-opentelemetry` and the OTLP/gRPC exporter
//!   when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set; nothing is built and
//!   nothing is paid when it is not. Context crosses processes as W3C `traceparent`
//!   ([`propagation`]); each job keeps its intake span's context, so later steps (after a restart
//!   too) join the job's trace.
//! - Metrics: one meter provider per [`crate::app::Application`], read by the Prometheus
//!   exporter behind `/metrics` and, when an OTLP endpoint is set, by a periodic OTLP reader
//!   ([`metrics`]).

pub mod admin;
pub mod grpc;
pub mod metrics;
pub mod propagation;
pub mod readiness;

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use metrics::Metrics;

/// `service.name` when `OTEL_SERVICE_NAME` does not say otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "vidgate";
/// The instrumentation scope of vidgate's tracer and meter.
pub const SCOPE: &str = "vidgate";
/// How long shutdown waits for the last spans to be exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which OpenTelemetry signals are exported over OTLP, decided by the standard variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtlpSettings {
    /// Export spans.
    pub traces: bool,
    /// Export metrics.
    pub metrics: bool,
}

impl OtlpSettings {
    /// Reads `OTEL_SDK_DISABLED`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` through
    /// `get` (the exporter itself reads the endpoint, headers and timeout from them).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| get(name).is_some_and(|v| !v.trim().is_empty());
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Self::default();
        }
        let any = set("OTEL_EXPORTER_OTLP_ENDPOINT");
        Self {
            traces: any || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            metrics: any || set("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
        }
    }

    /// From the process environment.
    pub fn from_process_env() -> Self {
        Self::from_env(|name| std::env::var(name).ok())
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built (e.g. a malformed endpoint).
    #[error(
        "OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT; write it with its scheme, e.g. http://collector:4317): {0}"
    )]
    Exporter(String),
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    Subscriber(String),
}

/// The resource describing this process: `service.name` (`OTEL_SERVICE_NAME`, else
/// `vidgate`), `service.version`, and `OTEL_RESOURCE_ATTRIBUTES`.
pub fn resource() -> Resource {
    let mut builder = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        builder = builder.with_service_name(DEFAULT_SERVICE_NAME);
    }
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Keeps the tracer provider alive; [`TelemetryGuard::shutdown`] flushes the last spans.
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is buffered and stops the exporter. Call it last, after the application
    /// has shut down, or the last spans are lost.
    pub fn shutdown(self) {
        if let Some(provider) = self.tracer_provider
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            eprintln!("vidgate: exporting the last spans failed: {e}");
        }
    }
}

/// Installs the process's logging and tracing: log lines in `format` filtered by `RUST_LOG`
/// (default `info`), and, when [`OtlpSettings`] says so, spans exported over OTLP/gRPC. Must be
/// called inside the tokio runtime (the exporter's channel lives there).
pub fn init(format: LogFormat) -> Result<TelemetryGuard, TelemetryError> {
    let settings = OtlpSettings::from_process_env();
    let provider = if settings.traces {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build(),
        )
    } else {
        None
    };
    let tracer = provider.as_ref().map(|p| p.tracer(SCOPE));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    install(format, filter, tracer, std::io::stderr)?;
    Ok(TelemetryGuard {
        tracer_provider: provider,
    })
}

/// Installs the global subscriber: log lines passing `filter` written to `writer`, and
/// vidgate's spans (target `vidgate`, INFO and above, whatever the log filter says) sent to
/// `tracer` when there is one. Tests pass an in-memory tracer and a buffer.
pub fn install<W>(
    format: LogFormat,
    filter: EnvFilter,
    tracer: Option<SdkTracer>,
    writer: W,
) -> Result<(), TelemetryError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    }
    .with_filter(filter);
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(Targets::new().with_target("vidgate", tracing::Level::INFO))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_is_off_unless_an_endpoint_is_set_and_the_sdk_is_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(OtlpSettings::from_env(env(&[])), OtlpSettings::default());
        let both = OtlpSettings::from_env(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4317",
        )]));
        assert!(both.traces && both.metrics);
        let traces = OtlpSettings::from_env(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4317",
        )]));
        assert!(traces.traces && !traces.metrics);
        let off = OtlpSettings::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ]));
        assert_eq!(off, OtlpSettings::default());
        let blank = OtlpSettings::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]));
        assert_eq!(blank, OtlpSettings::default());
    }
}
