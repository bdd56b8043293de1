//! Rules of the envelope around a video request (not of the upstream contract): request_id
//! and labels. Checked with the request, so every violation is reported at once.

use crate::domain::{FieldViolation, echo};
use crate::pb;

/// Longest `request_id` accepted (AIP-155 suggests UUIDs; this leaves room for other schemes).
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// Most labels on one video.
pub const MAX_LABELS: usize = 64;
/// Longest label key.
pub const MAX_LABEL_KEY_CHARS: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_CHARS: usize = 256;

/// Rule id of envelope checks (request_id, labels, paging): vidgate's own.
pub const RULE_ENVELOPE: &str = "VG-ENVELOPE";

/// Rules of the envelope (not of the upstream contract): request_id and labels.
pub(super) fn envelope_violations(request: &pb::CreateVideoRequest) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    let rid = &request.request_id;
    if rid.chars().count() > MAX_REQUEST_ID_CHARS || rid.chars().any(char::is_control) {
        out.push(violation(
            "request_id",
            format!("request_id must be at most {MAX_REQUEST_ID_CHARS} characters without control characters (a UUID is a good choice)"),
        ));
    }
    out.extend(label_violations(&request.labels));
    out
}

/// Longest part of a caller's key echoed in a field path (the rest is elided): a 5 MiB key
/// must not come back as 5 MiB of error, and a path stays readable (keys are at most 63).
const ECHO_KEY_CHARS: usize = 64;

/// The rules of labels, at create and in a listing's label filter alike.
pub(super) fn label_violations(
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<FieldViolation> {
    let mut out = Vec::new();
    if labels.len() > MAX_LABELS {
        out.push(violation(
            "labels",
            format!("at most {MAX_LABELS} labels (got {})", labels.len()),
        ));
        // Each of thousands of keys would add its own violation: the count says enough.
        return out;
    }
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.chars().count() <= MAX_LABEL_KEY_CHARS
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        let shown = echo(k).within(ECHO_KEY_CHARS);
        if !key_ok {
            out.push(violation(
                format!("labels[{shown}]"),
                format!("label keys must be 1-{MAX_LABEL_KEY_CHARS} characters of a-z, A-Z, 0-9, '-', '_', '.', '/'"),
            ));
        }
        if v.chars().count() > MAX_LABEL_VALUE_CHARS || v.chars().any(char::is_control) {
            out.push(violation(
                format!("labels[{shown}]"),
                format!("label values must be at most {MAX_LABEL_VALUE_CHARS} characters without control characters"),
            ));
        }
    }
    out
}

fn violation(field: impl Into<String>, description: String) -> FieldViolation {
    FieldViolation {
        field: field.into(),
        rule: RULE_ENVELOPE.to_owned(),
        description,
    }
}
