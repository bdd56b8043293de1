//! Webhooks (issue #16): what a delivery looks like on the wire.
//!
//! - [`signing`]: the Standard Webhooks headers and `whsec_` secrets (rotation signs with two);
//! - [`target`]: which URLs a webhook may go to (https, public addresses; no SSRF);
//! - [`config`]: `[webhooks]`: the URL policy, the retry schedule, timeouts and bounds;
//! - [`engine`]: fan-out from the event log and delivery (claims, attempts, outcomes);
//! - here: the message of one event for one endpoint, its stable id and its body.
//!
//! A body is `{"type": "video.<status>", "timestamp": "<the event's time, RFC 3339>", "data":
//! <the Video in proto3 JSON>}`, the job's state as of the event, never its bytes (those come
//! by `DownloadVideo`). Its `webhook-id` is the same for every attempt of one event at one
//! endpoint, so a receiver that drops ids it has seen gets each event once.

pub mod config;
pub mod endpoints;
pub mod engine;
pub mod signing;
pub mod target;

use serde::Serialize;

use crate::convert;
use crate::pb;
use crate::store::StoredEvent;

/// The `type` of an event, as the AMQP relay names it: `video.<status>`.
pub fn event_type(event: &StoredEvent) -> String {
    format!("video.{}", event.job.status().as_str())
}

/// The `webhook-id` of `sequence` for `endpoint_id`: stable across attempts, restarts and
/// instances, distinct per endpoint.
pub fn webhook_id(endpoint_id: &str, sequence: i64) -> String {
    format!("msg_{endpoint_id}_{sequence}")
}

/// The body of one event, in the Standard Webhooks payload shape.
#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: pbjson_types::Timestamp,
    data: &'a pb::Video,
}

/// The JSON body sent for `event` (the job's state as of it; no bytes).
pub fn body(event: &StoredEvent) -> Vec<u8> {
    let video = convert::video(&event.job);
    body_of(&event_type(event), event.time_ms, &video)
}

/// The JSON body of an event of `kind` at `time_ms` about `video`.
pub fn body_of(kind: &str, time_ms: i64, video: &pb::Video) -> Vec<u8> {
    let body = Body {
        kind,
        timestamp: convert::timestamp(time_ms),
        data: video,
    };
    // A Video always serializes: its fields are strings, numbers and nested messages.
    serde_json::to_vec(&body).unwrap_or_else(|_| unreachable!("a Video serializes to JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_the_standard_webhooks_shape_with_the_video_in_proto3_json() {
        let video = pb::Video {
            id: "vid_1".into(),
            model: "veo-3.1".into(),
            status: pb::VideoStatus::Completed as i32,
            ..Default::default()
        };
        let body = body_of("video.completed", 1_796_000_000_123, &video);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "video.completed");
        // RFC 3339, as every timestamp of the proto3 JSON that vidgate writes (AMQP events too).
        assert_eq!(json["timestamp"], "2026-11-30T00:53:20.123+00:00");
        assert_eq!(json["data"]["id"], "vid_1");
        // proto3 JSON: enum names, camelCase fields.
        assert_eq!(json["data"]["status"], "COMPLETED");
        assert_eq!(webhook_id("whe_1", 42), "msg_whe_1_42");
    }
}
