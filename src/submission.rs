//! The stored form of an accepted create: what [`crate::jobs::Jobs::accept`] writes as a job's
//! submission and the dispatcher reads back to send it. The store keeps it as opaque bytes.
//!
//! The form is the validated [`VideoSpec`] itself, so nothing after accept parses wire types
//! again: [`STORED_SPEC_MAGIC`] (`vidgate-spec/1` and a newline), then JSON
//! `{"validated_against": {"rules_sha256": ..}, "spec": {..}}`, input bytes as base64 strings.
//! The magic names the version: a later form gets a new one, and a form this build does not
//! know is refused as unreadable rather than guessed at.
//!
//! `validated_against` is [`ModelCatalog::rules_digest`] of the spec's model at accept. When the
//! catalog the dispatcher runs with gives the same digest, the spec is sent as stored; when it
//! differs (the model's rules were changed by the operator, or the model removed), the spec is
//! re-checked once ([`VideoSpec::recheck`]) and a job whose request no longer passes fails
//! saying so ([`CatalogChanged`]).
//!
//! Rows written before this form hold the `CreateVideoRequest` protobuf. They have no magic,
//! and are read the old way, once: protobuf, [`convert::to_domain`], [`VideoSpec::parse`]
//! against the current catalog (which is their re-check). This is the only place that still
//! knows that form.

use bytes::Bytes;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::convert;
use crate::domain::{ModelCatalog, ValidationError, VideoSpec};
use crate::pb;

/// The first bytes of the stored form, version 1. A protobuf `CreateVideoRequest` never starts
/// with them: its first byte is a field key, and `v` (0x76) would be wire type 6, which does
/// not exist.
pub const STORED_SPEC_MAGIC: &[u8] = b"vidgate-spec/1\n";

/// The stored form's JSON, after the magic.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredForm<S> {
    validated_against: ValidatedAgainst,
    spec: S,
}

/// What the spec passed at accept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidatedAgainst {
    /// [`ModelCatalog::rules_digest`] of the spec's model; `None` forces a re-check.
    rules_sha256: Option<String>,
}

/// A stored submission could not be read (or written).
#[derive(Debug, thiserror::Error)]
#[error("stored request: {0}")]
pub struct SubmissionError(String);

/// The catalog the job is dispatched with no longer accepts its request: the operator changed
/// the model's rules (or removed the model) after the job was accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the model catalog changed since the job was accepted and its request no longer passes it: {0}"
)]
pub struct CatalogChanged(pub ValidationError);

/// A job's submission, read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission(Read);

#[derive(Debug, Clone, PartialEq)]
enum Read {
    /// The stored form, with the digest of the rules it passed.
    Stored {
        spec: VideoSpec,
        rules_sha256: Option<String>,
    },
    /// A protobuf row from before the stored form, parsed against the catalog it was read with.
    Legacy(Result<VideoSpec, ValidationError>),
}

/// The stored form of `spec`, which just passed `catalog`.
pub fn encode(spec: &VideoSpec, catalog: &ModelCatalog) -> Result<Bytes, SubmissionError> {
    let form = StoredForm {
        validated_against: ValidatedAgainst {
            rules_sha256: catalog.rules_digest(spec.model()),
        },
        spec,
    };
    let mut out = STORED_SPEC_MAGIC.to_vec();
    serde_json::to_writer(&mut out, &form)
        .map_err(|e| SubmissionError(format!("cannot be written: {e}")))?;
    Ok(out.into())
}

impl Submission {
    /// Reads a stored submission. `catalog` is used only for a row from before the stored form
    /// (see the module docs).
    pub fn decode(bytes: &[u8], catalog: &ModelCatalog) -> Result<Submission, SubmissionError> {
        let Some(json) = bytes.strip_prefix(STORED_SPEC_MAGIC) else {
            return Self::decode_legacy(bytes, catalog);
        };
        let form: StoredForm<VideoSpec> = serde_json::from_slice(json)
            .map_err(|e| SubmissionError(format!("unreadable stored spec: {e}")))?;
        Ok(Submission(Read::Stored {
            spec: form.spec,
            rules_sha256: form.validated_against.rules_sha256,
        }))
    }

    /// The one compatibility path: a `CreateVideoRequest` protobuf, parsed the old way.
    fn decode_legacy(bytes: &[u8], catalog: &ModelCatalog) -> Result<Submission, SubmissionError> {
        if bytes.starts_with(b"vidgate-spec/") {
            return Err(SubmissionError(format!(
                "a stored form this build does not know ({:?}); a newer vidgate wrote it",
                String::from_utf8_lossy(&bytes[..bytes.len().min(32)])
                    .lines()
                    .next()
                    .unwrap_or_default()
            )));
        }
        let request = pb::CreateVideoRequest::decode(bytes)
            .map_err(|e| SubmissionError(format!("neither a stored spec nor protobuf: {e}")))?;
        let spec = convert::to_domain(&request).and_then(|r| VideoSpec::parse(r, catalog));
        Ok(Submission(Read::Legacy(spec)))
    }

    /// The spec as accepted, without a look at the catalog: for steps after the create was
    /// sent, which only read what was asked. `None` for an older row that no longer parses.
    pub fn spec(&self) -> Option<&VideoSpec> {
        match &self.0 {
            Read::Stored { spec, .. } | Read::Legacy(Ok(spec)) => Some(spec),
            Read::Legacy(Err(_)) => None,
        }
    }

    /// The spec to send under `catalog`: as stored when its model's rules are those it passed
    /// at accept (no parse), re-checked once when they changed.
    pub fn confirm(self, catalog: &ModelCatalog) -> Result<VideoSpec, CatalogChanged> {
        match self.0 {
            Read::Stored { spec, rules_sha256 } => {
                let now = catalog.rules_digest(spec.model());
                if rules_sha256.is_some() && rules_sha256 == now {
                    return Ok(spec);
                }
                tracing::info!(
                    model = spec.model(),
                    "the model's rules in the catalog changed since the job was accepted; checking its request again"
                );
                spec.recheck(catalog).map_err(CatalogChanged)?;
                Ok(spec)
            }
            Read::Legacy(spec) => spec.map_err(CatalogChanged),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        ContentItem, ContentKind, GenericParams, InputImage, MediaRef, MediaSource, Params,
        SeedanceParams, VeoParams, VideoRequest,
    };

    const VEO: &str = "turing/veo-3.1-generate";
    const SEEDANCE: &str = "doubao-seedance-2-0-260128";
    /// The 8-byte PNG signature and a little more: passes the V4 sniff.
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    fn catalog() -> ModelCatalog {
        ModelCatalog::from_toml_str(r#"unknown_models = "generic""#).expect("catalog")
    }

    fn image(bytes: &[u8]) -> InputImage {
        InputImage {
            data: Bytes::from(bytes.to_vec()),
            filename: "first.png".into(),
            mime_type: "IMAGE/PNG".into(),
        }
    }

    fn veo_with_image() -> VideoRequest {
        VideoRequest {
            model: VEO.into(),
            prompt: "a cat playing piano".into(),
            params: Some(Params::Veo(VeoParams {
                seconds: 8,
                size: "720x1280".into(),
                input_reference: Some(image(PNG)),
                person_generation: "allow_all".into(),
            })),
        }
    }

    fn seedance_with_image_and_urls() -> VideoRequest {
        let item = |kind, role: &str| ContentItem {
            kind,
            role: role.into(),
        };
        let url = |u: &str| MediaRef {
            source: MediaSource::Url(u.into()),
            mime_type: String::new(),
        };
        VideoRequest {
            model: SEEDANCE.into(),
            prompt: "一只猫在弹钢琴".into(),
            params: Some(Params::Seedance(SeedanceParams {
                content: vec![
                    item(ContentKind::Text("slowly".into()), ""),
                    item(
                        ContentKind::Image(MediaRef {
                            source: MediaSource::Data(Bytes::from_static(PNG)),
                            mime_type: "image/png".into(),
                        }),
                        "reference_image",
                    ),
                    item(
                        ContentKind::Image(url("https://example.com/cat.jpg")),
                        "reference_image",
                    ),
                    item(
                        ContentKind::Video(url("https://example.com/ref.mp4")),
                        "reference_video",
                    ),
                    item(
                        ContentKind::Audio(url("https://example.com/ref.mp3")),
                        "reference_audio",
                    ),
                ],
                size: "1280x720".into(),
                duration: Some(5),
                seed: Some(-7),
                watermark: Some(false),
                generate_audio: Some(true),
                return_last_frame: Some(true),
                ..SeedanceParams::default()
            })),
        }
    }

    fn generic_with_image() -> VideoRequest {
        VideoRequest {
            model: "acme/unlisted-model".into(),
            prompt: "a generic video".into(),
            params: Some(Params::Generic(GenericParams {
                size: "640x480".into(),
                seconds: "2.5".into(),
                input_reference: Some(image(PNG)),
            })),
        }
    }

    fn every_family() -> Vec<VideoSpec> {
        let catalog = catalog();
        [
            veo_with_image(),
            seedance_with_image_and_urls(),
            generic_with_image(),
            VideoRequest {
                model: VEO.into(),
                prompt: "no params".into(),
                params: None,
            },
        ]
        .into_iter()
        .map(|r| VideoSpec::parse(r, &catalog).expect("valid"))
        .collect()
    }

    #[test]
    fn every_spec_family_round_trips_through_the_stored_form_byte_exactly() {
        let catalog = catalog();
        for spec in every_family() {
            let stored = encode(&spec, &catalog).expect("encoded");
            assert!(stored.starts_with(STORED_SPEC_MAGIC));
            let read = Submission::decode(&stored, &catalog).expect("decoded");
            let back = read.spec().expect("a spec").clone();
            assert_eq!(back, spec, "{}", spec.model());
            assert_eq!(encode(&back, &catalog).expect("encoded"), stored);
            assert_eq!(read.confirm(&catalog), Ok(spec));
        }
    }

    #[test]
    fn stored_form_holds_image_bytes_as_base64_strings() {
        let catalog = catalog();
        let spec = VideoSpec::parse(veo_with_image(), &catalog).expect("valid");
        let stored = encode(&spec, &catalog).expect("encoded");
        let json: serde_json::Value =
            serde_json::from_slice(&stored[STORED_SPEC_MAGIC.len()..]).expect("JSON");
        let data = &json["spec"]["params"]["veo"]["input_reference"]["data"];
        assert_eq!(data.as_str(), Some("iVBORw0KGgoAAAANSUhEUg=="), "{json}");
        assert!(
            json["validated_against"]["rules_sha256"].is_string(),
            "{json}"
        );
    }

    #[test]
    fn a_spec_parsed_again_from_its_request_is_the_same_spec() {
        let catalog = catalog();
        for spec in every_family() {
            let again = VideoSpec::parse(spec.to_request(), &catalog).expect("still valid");
            assert_eq!(again, spec);
            assert_eq!(spec.recheck(&catalog), Ok(()));
        }
    }

    #[test]
    fn a_legacy_protobuf_submission_is_read_the_old_way() {
        let catalog = catalog();
        let request = pb::CreateVideoRequest {
            model: VEO.into(),
            prompt: "from before the stored form".into(),
            params: Some(pb::create_video_request::Params::Veo(pb::VeoParams {
                seconds: 4,
                size: "1280x720".into(),
                input_reference: Some(pb::InputImage {
                    data: Bytes::from_static(PNG),
                    filename: "a.png".into(),
                    mime_type: "image/png".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            request_id: "r-1".into(),
            ..Default::default()
        };
        let want = convert::to_domain(&request)
            .and_then(|r| VideoSpec::parse(r, &catalog))
            .expect("valid");

        let read = Submission::decode(&request.encode_to_vec(), &catalog).expect("decoded");

        assert_eq!(read.spec(), Some(&want));
        assert_eq!(read.confirm(&catalog), Ok(want));
    }

    #[test]
    fn a_legacy_submission_that_no_longer_passes_the_catalog_says_the_catalog_changed() {
        let request = pb::CreateVideoRequest {
            model: VEO.into(),
            prompt: "p".into(),
            params: Some(pb::create_video_request::Params::Veo(pb::VeoParams {
                seconds: 4,
                ..Default::default()
            })),
            ..Default::default()
        };
        let stricter =
            ModelCatalog::from_toml_str("[families.veo]\nseconds = [6, 8]").expect("catalog");
        let read = Submission::decode(&request.encode_to_vec(), &stricter).expect("decoded");
        assert_eq!(read.spec(), None);
        let why = read.confirm(&stricter).expect_err("refused").to_string();
        assert!(
            why.contains("model catalog changed since the job was accepted"),
            "{why}"
        );
        assert!(why.contains("veo.seconds (V1)"), "{why}");
    }

    #[test]
    fn a_stored_spec_is_rechecked_only_when_its_models_rules_changed() {
        let accepted_under = catalog();
        let spec = VideoSpec::parse(veo_with_image(), &accepted_under).expect("valid");
        let stored = encode(&spec, &accepted_under).expect("encoded");
        // (catalog now, whether the model's digest is unchanged (no re-check), whether the
        // spec passes: None = the model is gone)
        let cases = [
            // Another model's rules changed.
            ("[families.seedance]\ndurations = [4]", true, Some(true)),
            // This model's rules changed, and the spec (8 s, 720x1280) still passes.
            ("[families.veo]\nseconds = [8]", false, Some(true)),
            // This model's rules changed, and the spec no longer passes.
            ("[families.veo]\nseconds = [4, 6]", false, Some(false)),
            // The upload limit shrank under the stored image.
            ("max_upload_bytes = 4", false, Some(false)),
            // The model left the catalog.
            (
                "include_default_models = false\n[models.\"other\"]\nfamily = \"generic\"",
                false,
                None,
            ),
        ];
        for (toml, unchanged, passes) in cases {
            let now = ModelCatalog::from_toml_str(toml).expect("catalog");
            let same_rules = accepted_under.rules_digest(VEO) == now.rules_digest(VEO);
            assert_eq!(same_rules, unchanged, "{toml}");
            let result = Submission::decode(&stored, &now)
                .expect("decoded")
                .confirm(&now);
            match passes {
                Some(true) => assert_eq!(result, Ok(spec.clone()), "{toml}"),
                Some(false) => {
                    let why = result.expect_err(toml).to_string();
                    assert!(
                        why.contains("model catalog changed since the job was accepted"),
                        "{why}"
                    );
                }
                None => assert!(
                    matches!(
                        result,
                        Err(CatalogChanged(ValidationError::UnknownModel { .. }))
                    ),
                    "{toml}: {result:?}"
                ),
            }
        }
    }

    #[test]
    fn a_stored_form_of_an_unknown_version_or_shape_is_unreadable_not_guessed() {
        let catalog = catalog();
        for bytes in [
            &b"vidgate-spec/2\n{}"[..],
            &b"vidgate-spec/1\n{\"spec\": 1}"[..],
            &b"vidgate-spec/1\nnot json"[..],
        ] {
            assert!(Submission::decode(bytes, &catalog).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn a_stored_spec_whose_family_and_params_disagree_is_unreadable() {
        let catalog = catalog();
        let spec = VideoSpec::parse(veo_with_image(), &catalog).expect("valid");
        let stored = encode(&spec, &catalog).expect("encoded");
        let text = String::from_utf8(stored.to_vec()).expect("UTF-8");
        let tampered = text.replace("\"family\":\"veo\"", "\"family\":\"seedance\"");
        assert_ne!(tampered, text);
        assert!(Submission::decode(tampered.as_bytes(), &catalog).is_err());
    }
}
