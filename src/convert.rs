//! The one edge between wire types (`vidgate.v1` protobuf, also the AMQP body) and domain types.

use bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::domain::{
    ContentItem, ContentKind, FieldViolation, GenericParams, InputImage, MediaRef, MediaSource,
    Params, SeedanceParams, ValidationError, VeoParams, VideoRequest,
};
use crate::job::{Job, JobError, JobStatus};
use crate::pb;

/// Rule id for a message whose shape is wrong before any contract rule applies (a `oneof` left
/// empty): protobuf cannot express "required" in proto3.
pub const RULE_SHAPE: &str = "VG-SHAPE";

/// Turns the wire request into the domain's raw request. Only shape problems are found here
/// (an empty `oneof`); every contract rule is checked by [`crate::domain::VideoSpec::parse`].
pub fn to_domain(req: &pb::CreateVideoRequest) -> Result<VideoRequest, ValidationError> {
    use pb::create_video_request::Params as P;
    let mut violations = Vec::new();
    let params = match &req.params {
        None => None,
        Some(P::Veo(v)) => Some(Params::Veo(VeoParams {
            seconds: v.seconds,
            size: v.size.clone(),
            input_reference: v.input_reference.as_ref().map(input_image),
            person_generation: v.person_generation.clone(),
        })),
        Some(P::Generic(g)) => Some(Params::Generic(GenericParams {
            size: g.size.clone(),
            seconds: g.seconds.clone(),
            input_reference: g.input_reference.as_ref().map(input_image),
        })),
        Some(P::Seedance(s)) => {
            let mut content = Vec::with_capacity(s.content.len());
            for (i, item) in s.content.iter().enumerate() {
                match content_item(item, i) {
                    Ok(item) => content.push(item),
                    Err(v) => violations.push(v),
                }
            }
            Some(Params::Seedance(SeedanceParams {
                content,
                resolution: s.resolution.clone(),
                ratio: s.ratio.clone(),
                duration: s.duration,
                seed: s.seed,
                watermark: s.watermark,
                generate_audio: s.generate_audio,
                return_last_frame: s.return_last_frame,
                size: s.size.clone(),
            }))
        }
    };
    if !violations.is_empty() {
        return Err(ValidationError::Invalid {
            model: req.model.clone(),
            violations,
        });
    }
    Ok(VideoRequest {
        model: req.model.clone(),
        prompt: req.prompt.clone(),
        params,
    })
}

fn input_image(img: &pb::InputImage) -> InputImage {
    InputImage {
        data: img.data.clone(),
        filename: img.filename.clone(),
        mime_type: img.mime_type.clone(),
    }
}

fn content_item(item: &pb::ContentItem, i: usize) -> Result<ContentItem, FieldViolation> {
    use pb::content_item::Kind;
    let media = |m: &pb::MediaRef, name: &str| -> Result<MediaRef, FieldViolation> {
        let source = match &m.source {
            Some(pb::media_ref::Source::Url(u)) => MediaSource::Url(u.clone()),
            Some(pb::media_ref::Source::Data(d)) => MediaSource::Data(d.clone()),
            None => {
                return Err(FieldViolation::new(
                    format!("seedance.content[{i}].{name}"),
                    RULE_SHAPE,
                    format!("content[{i}].{name} must set `url` or `data`"),
                ));
            }
        };
        Ok(MediaRef {
            source,
            mime_type: m.mime_type.clone(),
        })
    };
    let kind = match &item.kind {
        Some(Kind::Text(t)) => ContentKind::Text(t.clone()),
        Some(Kind::Image(m)) => ContentKind::Image(media(m, "image")?),
        Some(Kind::Video(m)) => ContentKind::Video(media(m, "video")?),
        Some(Kind::Audio(m)) => ContentKind::Audio(media(m, "audio")?),
        None => {
            return Err(FieldViolation::new(
                format!("seedance.content[{i}]"),
                RULE_SHAPE,
                "each content item must set one of `text`, `image`, `video`, `audio`",
            ));
        }
    };
    Ok(ContentItem {
        kind,
        role: item.role.clone(),
    })
}

/// The request as `Video.request` shows it: inline input dropped (`InputImage.data`,
/// `MediaRef.data`, the payload of a `data:` URI, which is cut to its header such as
/// `data:image/png;base64,`), each with its size and SHA-256 kept in the message's output-only
/// fields. The full request is the job's submission, stored once.
pub fn strip_inputs(req: &pb::CreateVideoRequest) -> pb::CreateVideoRequest {
    let mut out = req.clone();
    strip_inputs_in_place(&mut out);
    out
}

/// [`strip_inputs`] without a copy. Idempotent (a stripped request has nothing left to strip),
/// so it is applied again on every read: jobs stored before `data:` URIs were stripped show
/// their requests in the same small form.
pub fn strip_inputs_in_place(req: &mut pb::CreateVideoRequest) {
    use pb::create_video_request::Params as P;
    let strip_image = |img: &mut pb::InputImage| {
        if !img.data.is_empty() {
            img.size_bytes = img.data.len() as u64;
            img.sha256 = hex::encode(Sha256::digest(&img.data));
            img.data = Bytes::new();
        }
    };
    match &mut req.params {
        Some(P::Veo(v)) => {
            if let Some(img) = v.input_reference.as_mut() {
                strip_image(img);
            }
        }
        Some(P::Generic(g)) => {
            if let Some(img) = g.input_reference.as_mut() {
                strip_image(img);
            }
        }
        Some(P::Seedance(s)) => {
            for item in &mut s.content {
                use pb::content_item::Kind;
                if let Some(Kind::Image(m) | Kind::Video(m) | Kind::Audio(m)) = item.kind.as_mut() {
                    strip_media(m);
                }
            }
        }
        None => {}
    }
}

/// Drops a media reference's inline bytes or `data:` URI payload, keeping their size and
/// SHA-256. An `https://` URL is kept as given.
fn strip_media(m: &mut pb::MediaRef) {
    use pb::media_ref::Source;
    match m.source.as_mut() {
        Some(Source::Data(data)) if !data.is_empty() => {
            m.size_bytes = data.len() as u64;
            m.sha256 = hex::encode(Sha256::digest(&data[..]));
            *data = Bytes::new();
        }
        Some(Source::Url(url)) => {
            let Some(comma) = data_uri_payload_start(url) else {
                return;
            };
            if comma == url.len() {
                return;
            }
            let header = &url[..comma];
            let payload = &url[comma..];
            let base64 = header
                .strip_suffix(',')
                .is_some_and(|h| h.to_ascii_lowercase().ends_with(";base64"));
            let digest = if base64 {
                decoded_digest(payload)
            } else {
                // Not base64 (refused at accept; only an older row can hold one): the payload
                // as written is the data.
                Some((payload.len() as u64, hex::encode(Sha256::digest(payload))))
            };
            // A payload that does not decode is still dropped; its size and digest stay unset.
            if let Some((size, sha256)) = digest {
                m.size_bytes = size;
                m.sha256 = sha256;
            }
            url.truncate(comma);
        }
        _ => {}
    }
}

/// Where the payload of a `data:` URI starts (just after its first comma), or `None` when
/// `url` is not a `data:` URI.
fn data_uri_payload_start(url: &str) -> Option<usize> {
    let scheme = url.get(..5)?;
    if !scheme.eq_ignore_ascii_case("data:") {
        return None;
    }
    url.find(',').map(|i| i + 1)
}

/// Base64 characters decoded per step while hashing a `data:` URI payload: a multiple of 4 (so
/// every step but the last is whole quanta), 64 KiB of text, so an 11 MiB URI is hashed through
/// a small buffer instead of a second full copy.
const DATA_URI_STEP_CHARS: usize = 64 * 1024;

/// Size and SHA-256 (hex) of a base64 payload's decoded bytes, padded or not; `None` when it
/// is not base64.
fn decoded_digest(payload: &str) -> Option<(u64, String)> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; DATA_URI_STEP_CHARS / 4 * 3];
    for step in payload.as_bytes().chunks(DATA_URI_STEP_CHARS) {
        let n = ENGINE.decode_slice(step, &mut buf).ok()?;
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Some((size, hex::encode(hasher.finalize())))
}

/// SHA-256 (hex) of the request without its `request_id`: equal for a retry of the same
/// request, different for anything else (maps are BTreeMaps, so the encoding is stable).
pub fn fingerprint(req: &pb::CreateVideoRequest) -> String {
    let mut keyless = req.clone();
    keyless.request_id.clear();
    hex::encode(Sha256::digest(keyless.encode_to_vec()))
}

/// Public status of a job status.
pub fn status_to_pb(status: JobStatus) -> pb::VideoStatus {
    match status {
        JobStatus::Queued => pb::VideoStatus::Queued,
        JobStatus::Processing => pb::VideoStatus::Processing,
        JobStatus::Completed => pb::VideoStatus::Completed,
        JobStatus::Failed => pb::VideoStatus::Failed,
        JobStatus::Cancelled => pb::VideoStatus::Cancelled,
    }
}

/// Job status of a public status (`None` for UNSPECIFIED).
pub fn status_from_pb(status: pb::VideoStatus) -> Option<JobStatus> {
    Some(match status {
        pb::VideoStatus::Unspecified => return None,
        pb::VideoStatus::Queued => JobStatus::Queued,
        pb::VideoStatus::Processing => JobStatus::Processing,
        pb::VideoStatus::Completed => JobStatus::Completed,
        pb::VideoStatus::Failed => JobStatus::Failed,
        pb::VideoStatus::Cancelled => JobStatus::Cancelled,
    })
}

/// A protobuf timestamp of unix milliseconds.
pub fn timestamp(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The public view of a job.
pub fn video(job: &Job) -> pb::Video {
    let request = pb::CreateVideoRequest::decode(job.request.as_ref())
        .ok()
        .map(|mut request| {
            strip_inputs_in_place(&mut request);
            request
        });
    pb::Video {
        id: job.id.clone(),
        request_id: job.request_id.clone().unwrap_or_default(),
        model: job.model.clone(),
        labels: job.labels.clone(),
        status: status_to_pb(job.status()) as i32,
        upstream_status: job.upstream_status().to_owned(),
        progress: job.progress(),
        create_time: Some(timestamp(job.create_time_ms)),
        update_time: Some(timestamp(job.update_time_ms())),
        complete_time: job.complete_time_ms().map(timestamp),
        upstream_id: job.upstream_id().unwrap_or_default().to_owned(),
        request,
        error: job.error().map(video_error),
        content: job.content().map(|c| pb::VideoContent {
            size_bytes: c.size_bytes,
            sha256: c.sha256.clone(),
            mime_type: c.mime_type.clone(),
            duration_seconds: c.duration_seconds,
            width: c.width,
            height: c.height,
            has_audio: c.has_audio,
            has_last_frame: c.has_last_frame,
            matches_request: c.matches_request,
            mismatch: c.mismatch.clone(),
        }),
        last_sequence: job.last_sequence,
        previous_attempts: job
            .previous_attempts()
            .iter()
            .map(|a| pb::VideoAttempt {
                upstream_id: a.upstream_id.clone().unwrap_or_default(),
                error: a.error.as_ref().map(video_error),
                complete_time: a.complete_time_ms.map(timestamp),
                retry_time: Some(timestamp(a.retry_time_ms)),
            })
            .collect(),
    }
}

fn video_error(e: &JobError) -> pb::VideoError {
    pb::VideoError {
        reason: e.reason.as_str().to_owned(),
        message: e.message.clone(),
        retryable: e.retryable,
        upstream_message: e.upstream_message.clone(),
        upstream_http_status: e.upstream_http_status.map(u32::from).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::create_video_request::Params as P;

    fn seedance_with(items: Vec<pb::ContentItem>) -> pb::CreateVideoRequest {
        pb::CreateVideoRequest {
            model: "doubao-seedance-2-0-260128".into(),
            prompt: "cat".into(),
            params: Some(P::Seedance(pb::SeedanceParams {
                content: items,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn empty_oneofs_are_named_with_their_index() {
        let req = seedance_with(vec![
            pb::ContentItem {
                kind: Some(pb::content_item::Kind::Text("hi".into())),
                role: String::new(),
            },
            pb::ContentItem::default(),
            pb::ContentItem {
                kind: Some(pb::content_item::Kind::Image(pb::MediaRef::default())),
                role: String::new(),
            },
        ]);
        let err = to_domain(&req).unwrap_err();
        let fields: Vec<String> = err
            .field_violations()
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            vec!["seedance.content[1]", "seedance.content[2].image"]
        );
    }

    #[test]
    fn fingerprint_ignores_request_id_and_sees_every_other_change() {
        let mut a = seedance_with(vec![]);
        a.labels.insert("team".into(), "x".into());
        a.labels.insert("env".into(), "prod".into());
        let mut b = a.clone();
        b.request_id = "key-1".into();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.prompt = "dog".into();
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn stripped_request_keeps_size_and_sha_of_the_image_but_not_its_bytes() {
        let req = pb::CreateVideoRequest {
            model: "turing/veo-3.1-generate".into(),
            prompt: "p".into(),
            params: Some(P::Veo(pb::VeoParams {
                input_reference: Some(pb::InputImage {
                    data: Bytes::from_static(b"abc"),
                    filename: "a.png".into(),
                    mime_type: "image/png".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let out = strip_inputs(&req);
        let Some(P::Veo(v)) = out.params else {
            panic!("veo")
        };
        let img = v.input_reference.unwrap();
        assert!(img.data.is_empty());
        assert_eq!(img.size_bytes, 3);
        assert_eq!(img.sha256, hex::encode(Sha256::digest(b"abc")));
    }

    fn media(source: pb::media_ref::Source) -> pb::ContentItem {
        pb::ContentItem {
            kind: Some(pb::content_item::Kind::Image(pb::MediaRef {
                source: Some(source),
                ..Default::default()
            })),
            role: String::new(),
        }
    }

    fn stripped_media(req: &pb::CreateVideoRequest) -> Vec<pb::MediaRef> {
        let Some(P::Seedance(s)) = strip_inputs(req).params else {
            panic!("seedance")
        };
        s.content
            .into_iter()
            .filter_map(|item| match item.kind {
                Some(pb::content_item::Kind::Image(m)) => Some(m),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn stripped_request_cuts_data_uris_to_their_header_and_keeps_size_and_sha_of_the_decoded_bytes()
    {
        use base64::Engine as _;
        use pb::media_ref::Source;
        let image = vec![7u8; 200_000];
        let padded = base64::engine::general_purpose::STANDARD.encode(&image[..199_999]);
        let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&image);
        let req = seedance_with(vec![
            media(Source::Url(format!("data:image/png;base64,{padded}"))),
            media(Source::Url(format!("DATA:image/jpeg;BASE64,{unpadded}"))),
            media(Source::Data(Bytes::from(image.clone()))),
            media(Source::Url("https://example.com/cat.png".into())),
        ]);
        let out = stripped_media(&req);
        let url = |m: &pb::MediaRef| match &m.source {
            Some(Source::Url(u)) => u.clone(),
            other => panic!("url expected, got {other:?}"),
        };
        assert_eq!(url(&out[0]), "data:image/png;base64,");
        assert_eq!(out[0].size_bytes, 199_999);
        assert_eq!(
            out[0].sha256,
            hex::encode(Sha256::digest(&image[..199_999]))
        );
        assert_eq!(url(&out[1]), "DATA:image/jpeg;BASE64,");
        assert_eq!(out[1].size_bytes, 200_000);
        assert_eq!(out[1].sha256, hex::encode(Sha256::digest(&image)));
        assert_eq!(out[2].source, Some(Source::Data(Bytes::new())));
        assert_eq!(out[2].size_bytes, 200_000);
        assert_eq!(out[2].sha256, out[1].sha256);
        assert_eq!(url(&out[3]), "https://example.com/cat.png");
        assert_eq!((out[3].size_bytes, out[3].sha256.as_str()), (0, ""));
    }

    #[test]
    fn stripping_is_idempotent_so_rows_stored_before_it_read_back_the_same() {
        use pb::media_ref::Source;
        let req = seedance_with(vec![
            media(Source::Url("data:image/png;base64,AAEC".into())),
            media(Source::Data(Bytes::from_static(b"abc"))),
        ]);
        let once = strip_inputs(&req);
        assert_eq!(strip_inputs(&once), once);
        let mut in_place = req.clone();
        strip_inputs_in_place(&mut in_place);
        assert_eq!(in_place, once);
    }

    #[test]
    fn a_data_uri_payload_that_is_not_base64_is_dropped_without_a_digest() {
        use pb::media_ref::Source;
        let req = seedance_with(vec![media(Source::Url(
            "data:image/png;base64,not base64!".into(),
        ))]);
        let out = stripped_media(&req);
        assert_eq!(
            out[0].source,
            Some(Source::Url("data:image/png;base64,".into()))
        );
        assert_eq!((out[0].size_bytes, out[0].sha256.as_str()), (0, ""));
    }

    #[test]
    fn timestamps_split_milliseconds_correctly_even_before_1970() {
        assert_eq!(
            timestamp(1_500),
            pbjson_types::Timestamp {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            timestamp(-1),
            pbjson_types::Timestamp {
                seconds: -1,
                nanos: 999_000_000
            }
        );
    }
}
