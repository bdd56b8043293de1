//! Harnesses of the coverage-guided fuzz targets (`fuzz/`), one function a target. The fuzz
//! targets and the corpus replay test (`tests/fuzz_corpus.rs`) call the same functions, so the
//! stable test suite runs every corpus input through exactly what was fuzzed.
//!
//! Each harness feeds arbitrary bytes to a real entry point of the service and panics only when
//! an invariant of that entry point breaks (a round trip that does not come back, two paths
//! that disagree); an `Err` is the expected answer to most inputs.

use std::io::Cursor;
use std::sync::OnceLock;

use lapin::BasicProperties;
use prost::Message;

use crate::domain::ModelCatalog;
use crate::intake::amqp::config::DEFAULT_MAX_MESSAGE_BYTES;
use crate::intake::amqp::consumer::{CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, decode_body};
use crate::pb;
use crate::upstream::ApiKey;
use crate::upstream::client::{parse_created, parse_video};

/// The targets, by the name of their corpus directory under `fuzz/corpus/`.
pub const TARGETS: [&str; 6] = [
    "amqp_body",
    "create_request",
    "page_token",
    "upstream_json",
    "mp4_probe",
    "last_frame",
];

/// Runs `data` through the harness of `target` (one of [`TARGETS`]).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "amqp_body" => amqp_body(data),
        "create_request" => create_request(data),
        "page_token" => page_token(data),
        "upstream_json" => upstream_json(data),
        "mp4_probe" => mp4_probe(data),
        "last_frame" => last_frame(data),
        other => panic!("no fuzz target named {other:?}"),
    }
}

fn catalog() -> &'static ModelCatalog {
    static CATALOG: OnceLock<ModelCatalog> = OnceLock::new();
    CATALOG.get_or_init(ModelCatalog::default)
}

/// Content types the first byte chooses among: none (proto3 JSON), both named formats with
/// parameters and case, and one the intake refuses.
const AMQP_CONTENT_TYPES: [Option<&str>; 5] = [
    None,
    Some(CONTENT_TYPE_JSON),
    Some(CONTENT_TYPE_PROTOBUF),
    Some("Application/JSON; charset=utf-8"),
    Some("text/plain"),
];

/// An AMQP job message: the first byte picks the content type, the rest is the body, decoded
/// as the intake does; a decoded request goes on to the create checks, as at accept.
pub fn amqp_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = AMQP_CONTENT_TYPES[usize::from(selector) % AMQP_CONTENT_TYPES.len()];
    let mut properties = BasicProperties::default();
    if let Some(content_type) = content_type {
        properties = properties.with_content_type(content_type.into());
    }
    if let Ok(request) = decode_body(&properties, body, DEFAULT_MAX_MESSAGE_BYTES) {
        validate(&request);
    }
}

/// A binary `CreateVideoRequest` through the create checks (envelope, wire -> domain, catalog).
pub fn create_request(data: &[u8]) {
    if let Ok(request) = pb::CreateVideoRequest::decode(data) {
        validate(&request);
    }
}

/// The create checks; an accepted spec must survive its stored form unchanged, since the
/// dispatcher sends what was stored.
fn validate(request: &pb::CreateVideoRequest) {
    let catalog = catalog();
    let Ok(spec) = crate::jobs::validate_create(request, catalog) else {
        return;
    };
    let stored = crate::submission::encode(&spec, catalog).expect("an accepted spec is stored");
    let read =
        crate::submission::Submission::decode(&stored, catalog).expect("a stored spec reads back");
    assert_eq!(
        read.spec(),
        Some(&spec),
        "the stored spec reads back unchanged"
    );
    let confirmed = read.confirm(catalog).expect("the same catalog confirms it");
    assert_eq!(confirmed, spec);
}

/// A caller's ListVideos page token: refused, or read back to the same position.
pub fn page_token(data: &[u8]) {
    use crate::jobs::{decode_page_token, encode_page_token, filter_hash};
    let filters = filter_hash(&pb::ListVideosRequest::default());
    let token = String::from_utf8_lossy(data);
    if let Ok((time, id)) = decode_page_token(&token, &filters) {
        let again = encode_page_token(time, &id, &filters).expect("a token is written");
        assert_eq!(
            decode_page_token(&again, &filters).expect("an issued token is read"),
            (time, id)
        );
    }
}

/// An upstream JSON answer, read as the client does: parsed, an echoed key scrubbed, then as a
/// status object and as a create answer.
pub fn upstream_json(data: &[u8]) {
    static KEY: OnceLock<ApiKey> = OnceLock::new();
    let key = KEY.get_or_init(|| ApiKey::new("sk-fuzz").expect("a valid key"));
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    key.scrub_json(&mut json);
    if let Some(video) = parse_video(&json) {
        assert!(
            video.progress.is_none_or(|p| p <= 100),
            "progress is a percentage"
        );
    }
    if let Some(created) = parse_created(&json) {
        assert!(!created.id.is_empty(), "a created task has an id");
    }
}

/// Downloaded bytes probed as an MP4, both as a stream (every byte read) and as a file
/// (skipped by seeking), which must agree.
pub fn mp4_probe(data: &[u8]) {
    let streamed = crate::media::probe_mp4(&mut Cursor::new(data));
    let seeked = crate::media::probe_mp4_seekable(&mut Cursor::new(data), data.len() as u64);
    match (&streamed, &seeked) {
        (Ok(a), Ok(b)) => assert!(
            a == b || (a.duration_seconds.is_nan() && b.duration_seconds.is_nan()),
            "{a:?} != {b:?}"
        ),
        (Err(_), Err(_)) => {}
        _ => panic!("the stream and file probes disagree: {streamed:?} vs {seeked:?}"),
    }
}

/// A last frame's body: the first byte sets the chunk size it arrives in, the rest is the body,
/// judged as the download does; the verdict cannot depend on how the body was cut.
pub fn last_frame(data: &[u8]) {
    use crate::dispatcher::FrameHead;
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let judge = |chunk_size: usize| {
        let mut head = FrameHead::default();
        for piece in body.chunks(chunk_size) {
            head.push(piece)?;
        }
        head.finish(body.len() as u64)
    };
    let chunked = judge(usize::from(chunk).max(1));
    let whole = judge(body.len().max(1));
    assert_eq!(chunked.is_ok(), whole.is_ok(), "{chunked:?} vs {whole:?}");
    assert_eq!(chunked.ok(), whole.ok());
}

/// Create requests in proto3 JSON: the README's examples (the upstream page's), and a few that
/// break rules, as seeds of the request targets.
const SAMPLE_REQUESTS: [&str; 7] = [
    r#"{"model": "turing/veo-3.1-generate", "prompt": "please generate a video of a cat playing piano", "veo": {"size": "1280x720", "seconds": 6}}"#,
    r#"{"model": "turing/veo-3.1-generate", "prompt": "the Pompidou Center", "requestId": "cat-1", "labels": {"team": "a", "run/id": "7"},
        "veo": {"size": "1280x720", "seconds": 6, "personGeneration": "allow_all",
                "inputReference": {"filename": "pompidou.jpg", "mimeType": "image/jpeg",
                                   "data": "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQH/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AKp//2Q=="}}}"#,
    r#"{"model": "doubao-seedance-2-0-260128", "prompt": "一只猫在弹钢琴",
        "seedance": {"content": [{"text": "一只猫在弹钢琴,背景是温暖的客厅,阳光洒进来"},
                                 {"image": {"url": "https://example.com/cat_reference.jpg"}},
                                 {"video": {"url": "https://example.com/clip.mp4"}},
                                 {"image": {"data": "iVBORw0KGgo="}}],
                     "resolution": "1080p", "ratio": "16:9", "duration": 6, "seed": 42,
                     "generateAudio": true, "returnLastFrame": true}}"#,
    r#"{"model": "doubao-seedance-2-0-260128", "prompt": "p", "seedance": {"resolution": "480p", "ratio": "adaptive", "duration": 5}}"#,
    r#"{"model": "turing/veo-3.1-generate", "prompt": "", "veo": {"size": "12x7", "seconds": 5}, "labels": {"": "\u0001"}}"#,
    r#"{"model": "some/unknown-model", "prompt": "a cat", "generic": {"size": "1280x720", "seconds": "8"}}"#,
    r#"{"model": "turing/veo-3.1-generate", "prompt": "a cat"}"#,
];

/// Upstream answers: status objects of both shapes (top level and Seedance's `content`), create
/// answers, and a few odd ones.
const SAMPLE_UPSTREAM_JSON: [&str; 9] = [
    r#"{"id": "video-1", "object": "video", "status": "queued", "model": "turing/veo-3.1-generate", "progress": 0, "created_at": 1700000000, "size": "1280x720", "seconds": "6"}"#,
    r#"{"id": "video-1", "status": "in_progress", "progress": 42.5, "created_at": "1700000000"}"#,
    r#"{"id": "video-1", "status": "completed", "progress": 100, "completed_at": 1700000100, "expires_at": 1700086500, "video_url": "https://a/v.mp4", "last_frame_url": "https://a/x.png"}"#,
    r#"{"id": "cgt-1", "status": "succeeded", "content": {"video_url": "https://v", "last_frame_url": "https://b/y.png"}, "seconds": 5}"#,
    r#"{"status": "failed", "error": {"code": "content_policy_violation", "message": "refused"}}"#,
    r#"{"status": "failed", "error": {"code": 400, "message": "sk-fuzz leaked"}}"#,
    r#"{"status": "failed", "error": "boom"}"#,
    r#"{"id": "video-2", "status": "in_progress", "model": "turing/veo-3.1-generate"}"#,
    r#"{"id": "", "status": 3, "progress": "1e400", "created_at": -1.5e300}"#,
];

/// Seed inputs of `target`, built from the service's own samples: what the corpus started
/// from (`cargo test --test fuzz_corpus -- --ignored` writes them).
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    use crate::upstream::sim::mp4gen::{GeneratedMp4, Mp4Params, last_frame_png};
    let requests = || {
        SAMPLE_REQUESTS.iter().map(|json| {
            serde_json::from_str::<pb::CreateVideoRequest>(json).expect("a sample request")
        })
    };
    let prefixed = |selector: u8, body: &[u8]| [&[selector][..], body].concat();
    match target {
        "amqp_body" => {
            let mut out: Vec<Vec<u8>> = SAMPLE_REQUESTS
                .iter()
                .map(|json| prefixed(0, json.as_bytes()))
                .collect();
            out.extend(requests().map(|r| prefixed(2, &r.encode_to_vec())));
            out.push(prefixed(3, SAMPLE_REQUESTS[0].as_bytes()));
            out.push(prefixed(4, b"hello"));
            out
        }
        "create_request" => requests().map(|r| r.encode_to_vec()).collect(),
        "page_token" => {
            let filters = filter_hash_of_default();
            vec![
                crate::jobs::encode_page_token(1_700_000_000_000, "vid_0192", &filters)
                    .expect("a token")
                    .into_bytes(),
                crate::jobs::encode_page_token(-1, "", "0000000000000000")
                    .expect("a token")
                    .into_bytes(),
                b"not-a-token".to_vec(),
            ]
        }
        "upstream_json" => SAMPLE_UPSTREAM_JSON
            .iter()
            .map(|json| json.as_bytes().to_vec())
            .collect(),
        "mp4_probe" => {
            let mut audio = Mp4Params::new(32, 16, 1000);
            audio.audio = true;
            audio.fps = 4;
            let mut plain = Mp4Params::new(16, 16, 500);
            plain.fps = 2;
            plain.seed = 3;
            let mut padded = Mp4Params::new(16, 32, 250);
            padded.fps = 4;
            padded.min_size = 4096;
            [audio, plain, padded]
                .iter()
                .map(|p| GeneratedMp4::generate(p).expect("an MP4").to_vec())
                .collect()
        }
        "last_frame" => {
            let png = last_frame_png(4, 4, 7).expect("a PNG");
            vec![
                prefixed(3, &png),
                prefixed(200, &png),
                prefixed(
                    1,
                    &[0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F'],
                ),
                prefixed(5, b"<html>not found</html>"),
                prefixed(2, b"\x89PN"),
            ]
        }
        other => panic!("no fuzz target named {other:?}"),
    }
}

fn filter_hash_of_default() -> String {
    crate::jobs::filter_hash(&pb::ListVideosRequest::default())
}
