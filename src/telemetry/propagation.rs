//! W3C trace context across process boundaries: gRPC metadata (HTTP/2 headers), AMQP headers
//! (see [`crate::intake::amqp::headers`]), and the `traceparent` a job keeps in the store.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C `traceparent` key.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` key.
pub const TRACESTATE: &str = "tracestate";

/// Reads trace context from HTTP (and so gRPC) headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes trace context into HTTP (and so gRPC) headers.
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Context extracted by the W3C propagator from any carrier.
pub fn extract(carrier: &dyn Extractor) -> Context {
    TraceContextPropagator::new().extract(carrier)
}

/// Injects `cx` with the W3C propagator into any carrier.
pub fn inject(cx: &Context, carrier: &mut dyn Injector) {
    TraceContextPropagator::new().inject_context(cx, carrier);
}

/// The context named by a stored `traceparent` (an invalid one gives an empty context).
pub fn context_from_traceparent(traceparent: &str) -> Context {
    let mut map = HashMap::with_capacity(1);
    map.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    extract(&map)
}

/// The `traceparent` of a span, when it is part of a trace (spans are only recorded when an
/// OpenTelemetry layer is installed; otherwise there is nothing to carry).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map = HashMap::with_capacity(2);
    inject(&cx, &mut map);
    map.remove(TRACEPARENT)
}

/// Makes `span` a child of the remote context `cx` when `cx` names a valid span. Must be called
/// before the span is first entered.
pub fn set_remote_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        // Fails only when the span is disabled or already started: nothing to link then.
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` a child of a stored `traceparent`, if there is a valid one.
pub fn set_parent_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        set_remote_parent(span, context_from_traceparent(tp));
    }
}

/// The server span of one gRPC call (OpenTelemetry RPC conventions), a child of the caller's
/// `traceparent` when the call carries one. Used as tonic's `trace_fn`; request metadata other
/// than the trace context (tokens in particular) never reaches the span.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let span = tracing::info_span!(
        "grpc request",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    set_remote_parent(&span, extract(&HeaderExtractor(request.headers())));
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_traceparent_round_trips_through_http_headers() {
        let cx = context_from_traceparent(TP);
        assert!(cx.span().span_context().is_valid());
        let mut headers = http::HeaderMap::new();
        inject(&cx, &mut HeaderInjector(&mut headers));
        assert_eq!(
            headers.get(TRACEPARENT).and_then(|v| v.to_str().ok()),
            Some(TP)
        );
        let back = extract(&HeaderExtractor(&headers));
        assert_eq!(
            back.span().span_context().trace_id(),
            cx.span().span_context().trace_id()
        );
    }

    #[test]
    fn garbage_is_no_context() {
        assert!(
            !context_from_traceparent("not-a-traceparent")
                .span()
                .span_context()
                .is_valid()
        );
        // No OpenTelemetry layer here: a span has no trace to carry.
        assert_eq!(traceparent_of(&tracing::info_span!("x")), None);
    }
}
