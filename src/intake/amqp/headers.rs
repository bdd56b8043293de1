//! Header names of vidgate's AMQP messages and small helpers over lapin's `FieldTable`.
//!
//! Trace context travels as W3C `traceparent` (and `tracestate`) headers with long-string
//! values, the same keys an OpenTelemetry `Injector`/`Extractor` over `FieldTable` uses: the
//! intake keeps an incoming `traceparent` on the job, and the relay puts it on the job's events.

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Dead letters: the stable reason (e.g. `INVALID_VIDEO_REQUEST`, `MISSING_MESSAGE_ID`).
pub const REASON: &str = "x-vidgate-reason";
/// Dead letters: the reason for people.
pub const MESSAGE: &str = "x-vidgate-message";
/// Dead letters: the exchange the message was first published to.
pub const ORIGINAL_EXCHANGE: &str = "x-vidgate-original-exchange";
/// Dead letters: the routing key it was first published with.
pub const ORIGINAL_ROUTING_KEY: &str = "x-vidgate-original-routing-key";
/// Dead letters: the `user_id` property of the original (RabbitMQ refuses a republished
/// `user_id` that is not vidgate's own user, so it moves to a header).
pub const ORIGINAL_USER_ID: &str = "x-vidgate-original-user-id";
/// Events: the job's tenant (also the first word of the routing key).
pub const TENANT: &str = "x-vidgate-tenant";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// Longest trace header value kept (W3C `traceparent` is 55 characters; `tracestate` at most
/// 512): anything longer is not trace context.
pub const MAX_TRACE_HEADER_BYTES: usize = 1024;

/// A header's value as text, when it is a string.
pub fn get_str(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    match headers?.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Sets a long-string header.
pub fn set_str(headers: &mut FieldTable, key: &str, value: &str) {
    if let Ok(key) = ShortString::try_new(key) {
        headers.insert(key, AMQPValue::LongString(LongString::from(value)));
    }
}

/// Reads W3C trace context (`traceparent`, `tracestate`) the way an OpenTelemetry extractor
/// over `FieldTable` would.
pub struct Extractor<'a>(pub Option<&'a FieldTable>);

impl Extractor<'_> {
    /// The value of one key, when it is a sane-length string.
    pub fn get(&self, key: &str) -> Option<String> {
        get_str(self.0, key).filter(|v| !v.is_empty() && v.len() <= MAX_TRACE_HEADER_BYTES)
    }

    /// The keys present.
    pub fn keys(&self) -> Vec<&str> {
        self.0
            .map(|h| h.inner().keys().map(ShortString::as_str).collect())
            .unwrap_or_default()
    }
}

/// Writes W3C trace context into a `FieldTable` (long-string values).
pub struct Injector<'a>(pub &'a mut FieldTable);

impl Injector<'_> {
    /// Sets one key.
    pub fn set(&mut self, key: &str, value: &str) {
        set_str(self.0, key, value);
    }
}

impl opentelemetry::propagation::Extractor for Extractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match self.0?.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?,
            AMQPValue::ShortString(s) => s.as_str(),
            _ => return None,
        };
        (!value.is_empty() && value.len() <= MAX_TRACE_HEADER_BYTES).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        Extractor::keys(self)
    }
}

impl opentelemetry::propagation::Injector for Injector<'_> {
    fn set(&mut self, key: &str, value: String) {
        set_str(self.0, key, &value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_headers_round_trip_and_other_types_are_ignored() {
        let mut h = FieldTable::default();
        Injector(&mut h).set(TRACEPARENT, "00-abc-def-01");
        h.insert("n".into(), AMQPValue::LongLongInt(5));
        let e = Extractor(Some(&h));
        assert_eq!(e.get(TRACEPARENT).as_deref(), Some("00-abc-def-01"));
        assert_eq!(e.get("n"), None);
        assert_eq!(e.get("missing"), None);
        assert_eq!(e.keys(), vec!["n", TRACEPARENT]);
        assert_eq!(Extractor(None).get(TRACEPARENT), None);
        Injector(&mut h).set(TRACESTATE, &"x".repeat(MAX_TRACE_HEADER_BYTES + 1));
        assert_eq!(Extractor(Some(&h)).get(TRACESTATE), None);
    }
}
