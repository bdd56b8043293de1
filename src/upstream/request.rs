//! A validated [`VideoSpec`] as the body of `POST /videos`.
//!
//! Only what the caller set is sent, so the upstream applies its own defaults for the rest.
//! Veo and generic models take the OpenAI-style form: JSON for text to video, `multipart/form-data`
//! with the file part `input_reference` for image to video, and `seconds` as a **string** (V1).
//! Seedance takes its native fields in JSON, `duration` as an **int** (S6).

use serde_json::{Map, Value, json};

use crate::domain::{SeedanceItemKind, SeedanceSpec, SpecParams, VideoSpec};
use crate::upstream::wire::{CreateBody, UploadFile};

/// The multipart field of the uploaded image (V3).
pub const INPUT_REFERENCE_FIELD: &str = "input_reference";

/// The body of `POST /videos` for `spec`. Infallible: everything it needs was checked when the
/// spec was parsed.
pub fn create_body(spec: &VideoSpec) -> CreateBody {
    match spec.params() {
        SpecParams::Veo(p) => form_or_json(
            spec,
            [
                ("size", p.size().map(|s| s.to_string())),
                ("seconds", p.seconds().map(|s| s.to_string())),
                ("personGeneration", p.person_generation().map(str::to_owned)),
            ],
        ),
        SpecParams::Generic(p) => form_or_json(
            spec,
            [
                ("size", p.size().map(str::to_owned)),
                ("seconds", p.seconds().map(str::to_owned)),
            ],
        ),
        SpecParams::Seedance(p) => CreateBody::Json(seedance_json(spec, p)),
    }
}

/// Veo and generic: the same text fields, in the page's order (`prompt`, `model`, then the
/// optional ones), as a form with the image when there is one, as JSON otherwise.
fn form_or_json<const N: usize>(
    spec: &VideoSpec,
    optional: [(&str, Option<String>); N],
) -> CreateBody {
    let fields: Vec<(String, String)> = [
        ("prompt", Some(spec.prompt().to_owned())),
        ("model", Some(spec.model().to_owned())),
    ]
    .into_iter()
    .chain(optional)
    .filter_map(|(name, value)| Some((name.to_owned(), value?)))
    .collect();
    match spec.input_image() {
        Some(image) => CreateBody::Multipart {
            fields,
            file: UploadFile {
                field: INPUT_REFERENCE_FIELD.to_owned(),
                filename: image.filename.clone(),
                mime_type: image.mime_type.clone(),
                data: image.data.clone(),
            },
        },
        None => CreateBody::Json(Value::Object(
            fields
                .into_iter()
                .map(|(name, value)| (name, Value::String(value)))
                .collect(),
        )),
    }
}

fn seedance_json(spec: &VideoSpec, p: &SeedanceSpec) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), spec.model().into());
    body.insert("prompt".into(), spec.prompt().into());
    if !p.content().is_empty() {
        let items = p
            .content()
            .iter()
            .map(|item| {
                let mut entry = match item.kind() {
                    SeedanceItemKind::Text(text) => json!({"type": "text", "text": text}),
                    SeedanceItemKind::Image(image) => {
                        json!({"type": "image_url", "image_url": {"url": image.to_url()}})
                    }
                    SeedanceItemKind::Video(url) => {
                        json!({"type": "video_url", "video_url": {"url": url}})
                    }
                    SeedanceItemKind::Audio(url) => {
                        json!({"type": "audio_url", "audio_url": {"url": url}})
                    }
                };
                if let (Some(role), Value::Object(fields)) = (item.role(), &mut entry) {
                    fields.insert("role".into(), role.as_str().into());
                }
                entry
            })
            .collect();
        body.insert("content".into(), Value::Array(items));
    }
    let optional: [(&str, Option<Value>); 7] = [
        ("resolution", p.resolution().map(Value::from)),
        ("ratio", p.ratio().map(Value::from)),
        ("duration", p.duration().map(Value::from)),
        ("seed", p.seed().map(Value::from)),
        ("watermark", p.watermark().map(Value::from)),
        ("generate_audio", p.generate_audio().map(Value::from)),
        ("return_last_frame", p.return_last_frame().map(Value::from)),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body.insert(name.into(), value);
        }
    }
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::domain::{
        ContentItem, ContentKind, GenericParams, InputImage, MediaRef, MediaSource, ModelCatalog,
        Params, SeedanceParams, VeoParams, VideoRequest,
    };

    const VEO: &str = "turing/veo-3.1-generate";
    const SEEDANCE: &str = "doubao-seedance-2-0-260128";
    /// The first bytes of a JFIF JPEG: enough for the V4 sniff.
    const JPEG: &[u8] = &[
        0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
    ];
    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0x00];

    fn body(model: &str, prompt: &str, params: Option<Params>) -> CreateBody {
        body_with(&ModelCatalog::default(), model, prompt, params)
    }

    fn body_with(
        catalog: &ModelCatalog,
        model: &str,
        prompt: &str,
        params: Option<Params>,
    ) -> CreateBody {
        let request = VideoRequest {
            model: model.into(),
            prompt: prompt.into(),
            params,
        };
        let spec = VideoSpec::parse(request, catalog).expect("valid request");
        create_body(&spec)
    }

    fn json_of(body: CreateBody) -> Value {
        match body {
            CreateBody::Json(value) => value,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    #[test]
    fn veo_text_to_video_matches_the_page_curl_example_with_seconds_as_string() {
        let params = Params::Veo(VeoParams {
            seconds: 6,
            size: "1280x720".into(),
            ..VeoParams::default()
        });
        let got = json_of(body(
            VEO,
            "please generate a video of a cat playing piano",
            Some(params),
        ));
        assert_eq!(
            got,
            json!({
                "prompt": "please generate a video of a cat playing piano",
                "model": "turing/veo-3.1-generate",
                "size": "1280x720",
                "seconds": "6"
            })
        );
    }

    #[test]
    fn veo_image_to_video_matches_the_page_multipart_example() {
        let prompt = "Generate a video that from the facade of the picture showing in the file to \
                      the real Pompidou Center";
        let params = Params::Veo(VeoParams {
            seconds: 6,
            size: "1280x720".into(),
            input_reference: Some(InputImage {
                data: Bytes::from_static(JPEG),
                filename: "pompidou.jpg".into(),
                mime_type: "image/jpeg".into(),
            }),
            person_generation: "allow_all".into(),
        });
        let got = body(VEO, prompt, Some(params));
        let expected_fields: Vec<(String, String)> = [
            ("prompt", prompt),
            ("model", VEO),
            ("size", "1280x720"),
            ("seconds", "6"),
            ("personGeneration", "allow_all"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(
            got,
            CreateBody::Multipart {
                fields: expected_fields,
                file: UploadFile {
                    field: "input_reference".into(),
                    filename: "pompidou.jpg".into(),
                    mime_type: "image/jpeg".into(),
                    data: Bytes::from_static(JPEG),
                },
            }
        );
    }

    #[test]
    fn seedance_matches_the_page_example_with_duration_as_int() {
        let params = Params::Seedance(SeedanceParams {
            content: vec![
                ContentItem {
                    kind: ContentKind::Text("一只猫在弹钢琴,背景是温暖的客厅,阳光洒进来".into()),
                    role: String::new(),
                },
                ContentItem {
                    kind: ContentKind::Image(MediaRef {
                        source: MediaSource::Url("https://example.com/cat_reference.jpg".into()),
                        mime_type: String::new(),
                    }),
                    role: String::new(),
                },
            ],
            resolution: "1080p".into(),
            ratio: "16:9".into(),
            duration: Some(6),
            seed: Some(42),
            generate_audio: Some(true),
            return_last_frame: Some(false),
            ..SeedanceParams::default()
        });
        let got = json_of(body(SEEDANCE, "一只猫在弹钢琴", Some(params)));
        assert_eq!(
            got,
            json!({
                "prompt": "一只猫在弹钢琴",
                "model": "doubao-seedance-2-0-260128",
                "content": [
                    {"type": "text", "text": "一只猫在弹钢琴,背景是温暖的客厅,阳光洒进来"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat_reference.jpg"}}
                ],
                "resolution": "1080p",
                "ratio": "16:9",
                "duration": 6,
                "seed": 42,
                "generate_audio": true,
                "return_last_frame": false
            })
        );
    }

    #[test]
    fn veo_without_params_sends_only_model_and_prompt() {
        let got = json_of(body(VEO, "a cat", None));
        assert_eq!(
            got,
            json!({"model": "turing/veo-3.1-generate", "prompt": "a cat"})
        );
    }

    #[test]
    fn seedance_without_params_sends_only_model_and_prompt() {
        let got = json_of(body(SEEDANCE, "a cat", None));
        assert_eq!(
            got,
            json!({"model": "doubao-seedance-2-0-260128", "prompt": "a cat"})
        );
    }

    #[test]
    fn seedance_size_is_sent_as_resolution_and_ratio() {
        let params = Params::Seedance(SeedanceParams {
            size: "864x496".into(),
            watermark: Some(true),
            ..SeedanceParams::default()
        });
        let got = json_of(body(SEEDANCE, "a cat", Some(params)));
        assert_eq!(
            got,
            json!({
                "model": SEEDANCE, "prompt": "a cat",
                "resolution": "480p", "ratio": "16:9", "watermark": true
            })
        );
    }

    #[test]
    fn seedance_roles_and_media_kinds_map_to_native_items() {
        let media = |url: &str| MediaRef {
            source: MediaSource::Url(url.into()),
            mime_type: String::new(),
        };
        let params = Params::Seedance(SeedanceParams {
            content: vec![
                ContentItem {
                    kind: ContentKind::Image(MediaRef {
                        source: MediaSource::Data(Bytes::from_static(PNG)),
                        mime_type: "image/PNG".into(),
                    }),
                    role: "reference_image".into(),
                },
                ContentItem {
                    kind: ContentKind::Video(media("https://example.com/v.mp4")),
                    role: "reference_video".into(),
                },
                ContentItem {
                    kind: ContentKind::Audio(media("https://example.com/a.mp3")),
                    role: "reference_audio".into(),
                },
            ],
            return_last_frame: Some(true),
            ..SeedanceParams::default()
        });
        let got = json_of(body(SEEDANCE, "a cat", Some(params)));
        assert_eq!(
            got,
            json!({
                "model": SEEDANCE, "prompt": "a cat",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoA"},
                     "role": "reference_image"},
                    {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"},
                     "role": "reference_video"},
                    {"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"},
                     "role": "reference_audio"}
                ],
                "return_last_frame": true
            })
        );
    }

    #[test]
    fn generic_text_to_video_passes_size_and_seconds_as_strings() {
        let catalog =
            ModelCatalog::from_toml_str("unknown_models = \"generic\"").expect("valid catalog");
        let params = Params::Generic(GenericParams {
            size: "1920x1080".into(),
            seconds: "12".into(),
            input_reference: None,
        });
        let got = json_of(body_with(&catalog, "sora-2", "a cat", Some(params)));
        assert_eq!(
            got,
            json!({"model": "sora-2", "prompt": "a cat", "size": "1920x1080", "seconds": "12"})
        );
    }

    #[test]
    fn generic_image_to_video_is_multipart_with_input_reference() {
        let catalog =
            ModelCatalog::from_toml_str("unknown_models = \"generic\"").expect("valid catalog");
        let params = Params::Generic(GenericParams {
            size: String::new(),
            seconds: "8".into(),
            input_reference: Some(InputImage {
                data: Bytes::from_static(PNG),
                filename: "a.png".into(),
                mime_type: "image/png".into(),
            }),
        });
        let got = body_with(&catalog, "sora-2", "a cat", Some(params));
        let CreateBody::Multipart { fields, file } = got else {
            panic!("expected multipart, got {got:?}");
        };
        assert_eq!(
            fields,
            vec![
                ("prompt".to_owned(), "a cat".to_owned()),
                ("model".to_owned(), "sora-2".to_owned()),
                ("seconds".to_owned(), "8".to_owned()),
            ]
        );
        assert_eq!(file.field, INPUT_REFERENCE_FIELD);
        assert_eq!(file.filename, "a.png");
        assert_eq!(file.mime_type, "image/png");
        assert_eq!(file.data, Bytes::from_static(PNG));
    }
}
