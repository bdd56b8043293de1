//! Properties of validation and wire conversion over generated requests: nothing panics, every
//! refusal says why, every accepted request becomes a wire body, and requests built only from
//! allowed values are always accepted.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::select;
use vidgate::domain::{
    ContentItem, ContentKind, GenericParams, InputImage, MediaRef, MediaSource, ModelCatalog,
    Params, SeedanceParams, ValidationError, VeoParams, VideoRequest, VideoSpec,
};
use vidgate::upstream::request::create_body;
use vidgate::upstream::wire::CreateBody;

const VEO: &str = "turing/veo-3.1-generate";
const SEEDANCE: &str = "doubao-seedance-2-0-260128";
const JPEG: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
];
const PNG: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D,
];
const MP4: &[u8] = &[
    0, 0, 0, 0x18, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm',
];

/// A value from `known` most of the time, an arbitrary string otherwise.
fn text_or(known: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(known).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
    .boxed()
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        Just(Bytes::from_static(JPEG)),
        Just(Bytes::from_static(PNG)),
        Just(Bytes::from_static(MP4)),
        Just(Bytes::new()),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(Bytes::from),
    ]
}

fn input_image() -> impl Strategy<Value = InputImage> {
    (
        bytes(),
        text_or(&["photo.jpg", "a.png", "", "a\"b.jpg"]),
        text_or(&[
            "image/jpeg",
            "image/png",
            "IMAGE/PNG",
            "",
            "video/mp4",
            "image",
        ]),
    )
        .prop_map(|(data, filename, mime_type)| InputImage {
            data,
            filename,
            mime_type,
        })
}

fn veo_params() -> impl Strategy<Value = VeoParams> {
    (
        prop_oneof![select(&[0u32, 4, 6, 8][..]), any::<u32>()],
        text_or(&["", "1280x720", "720x1280", "1920x1080"]),
        proptest::option::of(input_image()),
        text_or(&["", "allow_all", "ALLOW_ALL"]),
    )
        .prop_map(
            |(seconds, size, input_reference, person_generation)| VeoParams {
                seconds,
                size,
                input_reference,
                person_generation,
            },
        )
}

fn media() -> impl Strategy<Value = MediaRef> {
    let source = prop_oneof![
        text_or(&[
            "https://example.com/a.jpg",
            "http://example.com/a.jpg",
            "https://",
            "data:image/png;base64,iVBORw0KGgoAAAAN",
            "data:image/png;base64,/9j/4AAQSkZJRgA=",
            "data:image/png;base64,",
            "data:",
            "DATA:x",
            "",
        ])
        .prop_map(MediaSource::Url),
        bytes().prop_map(MediaSource::Data),
    ];
    (
        source,
        text_or(&["", "image/png", "video/mp4", "audio/mpeg", "image"]),
    )
        .prop_map(|(source, mime_type)| MediaRef { source, mime_type })
}

fn content_item() -> impl Strategy<Value = ContentItem> {
    let kind = prop_oneof![
        text_or(&["a cat", "", "  "]).prop_map(ContentKind::Text),
        media().prop_map(ContentKind::Image),
        media().prop_map(ContentKind::Video),
        media().prop_map(ContentKind::Audio),
    ];
    let role = text_or(&[
        "",
        "first_frame",
        "last_frame",
        "reference_image",
        "reference_video",
        "reference_audio",
    ]);
    (kind, role).prop_map(|(kind, role)| ContentItem { kind, role })
}

fn seedance_params() -> impl Strategy<Value = SeedanceParams> {
    (
        proptest::collection::vec(content_item(), 0..14),
        text_or(&["", "480p", "720p", "1080p", "4k"]),
        text_or(&["", "16:9", "9:16", "1:1", "4:3", "3:4", "21:9", "2:1"]),
        proptest::option::of(prop_oneof![select(&[4u32, 5, 6, 8][..]), any::<u32>()]),
        proptest::option::of(any::<i64>()),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<bool>()),
        ),
        text_or(&["", "1280x720", "864x496", "1470x630", "1920x1080"]),
    )
        .prop_map(
            |(content, resolution, ratio, duration, seed, (watermark, audio, last), size)| {
                SeedanceParams {
                    content,
                    resolution,
                    ratio,
                    duration,
                    seed,
                    watermark,
                    generate_audio: audio,
                    return_last_frame: last,
                    size,
                }
            },
        )
}

fn generic_params() -> impl Strategy<Value = GenericParams> {
    (
        text_or(&["", "1280x720", "1x1", "big"]),
        text_or(&["", "8", "2.5", "0", "1e3"]),
        proptest::option::of(input_image()),
    )
        .prop_map(|(size, seconds, input_reference)| GenericParams {
            size,
            seconds,
            input_reference,
        })
}

fn params() -> impl Strategy<Value = Option<Params>> {
    proptest::option::of(prop_oneof![
        veo_params().prop_map(Params::Veo),
        seedance_params().prop_map(Params::Seedance),
        generic_params().prop_map(Params::Generic),
    ])
}

fn request() -> impl Strategy<Value = VideoRequest> {
    (
        text_or(&[VEO, SEEDANCE, "sora-2", ""]),
        text_or(&["a cat playing piano", "", " "]),
        params(),
    )
        .prop_map(|(model, prompt, params)| VideoRequest {
            model,
            prompt,
            params,
        })
}

/// Reference-mode content: `images` images, `videos` videos and `audios` audios, by HTTPS URL.
fn references(images: usize, videos: usize, audios: usize) -> Vec<ContentItem> {
    let item = |kind: fn(MediaRef) -> ContentKind, url: &str, role: &str| ContentItem {
        kind: kind(MediaRef {
            source: MediaSource::Url(url.into()),
            mime_type: String::new(),
        }),
        role: role.into(),
    };
    let images =
        (0..images).map(|_| item(ContentKind::Image, "https://e.com/i.png", "reference_image"));
    let videos =
        (0..videos).map(|_| item(ContentKind::Video, "https://e.com/v.mp4", "reference_video"));
    let audios =
        (0..audios).map(|_| item(ContentKind::Audio, "https://e.com/a.mp3", "reference_audio"));
    images.chain(videos).chain(audios).collect()
}

fn catalog(passthrough: bool) -> ModelCatalog {
    if passthrough {
        ModelCatalog::from_toml_str("unknown_models = \"generic\"").expect("valid catalog")
    } else {
        ModelCatalog::default()
    }
}

/// The body names the spec's model and prompt, as JSON keys or form fields.
fn assert_body_carries(spec: &VideoSpec, body: &CreateBody) {
    match body {
        CreateBody::Json(value) => {
            assert_eq!(value["model"], spec.model());
            assert_eq!(value["prompt"], spec.prompt());
        }
        CreateBody::Multipart { fields, file } => {
            assert!(fields.contains(&("model".to_owned(), spec.model().to_owned())));
            assert!(fields.contains(&("prompt".to_owned(), spec.prompt().to_owned())));
            assert_eq!(file.field, "input_reference");
            assert!(!file.data.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validation_never_panics_and_accepted_specs_convert_to_a_body(
        req in request(),
        passthrough in any::<bool>(),
        actual in (any::<u32>(), any::<u32>(), any::<f64>()),
    ) {
        let catalog = catalog(passthrough);
        match VideoSpec::parse(req.clone(), &catalog) {
            Ok(spec) => {
                prop_assert_eq!(spec.model(), req.model.as_str());
                prop_assert_eq!(Some(spec.family()), catalog.family_of(&req.model));
                let body = create_body(&spec);
                assert_body_carries(&spec, &body);
                let _ = spec.expected_output().compare(actual.0, actual.1, actual.2);
            }
            Err(ValidationError::Invalid { model, violations }) => {
                prop_assert_eq!(model, req.model);
                prop_assert!(!violations.is_empty());
                for v in &violations {
                    prop_assert!(!v.field.is_empty(), "{:?}", v);
                    prop_assert!(!v.rule.is_empty(), "{:?}", v);
                    prop_assert!(!v.description.is_empty(), "{:?}", v);
                }
            }
            Err(ValidationError::UnknownModel { model, known }) => {
                prop_assert!(!passthrough);
                prop_assert!(!known.contains(&model));
            }
        }
    }

    #[test]
    fn veo_requests_of_allowed_values_are_accepted(
        seconds in select(&[0u32, 4, 6, 8][..]),
        size in select(&["", "1280x720", "720x1280"][..]),
        with_image in any::<bool>(),
        person in select(&["", "allow_all"][..]),
    ) {
        let req = VideoRequest {
            model: VEO.into(),
            prompt: "a cat".into(),
            params: Some(Params::Veo(VeoParams {
                seconds,
                size: size.into(),
                input_reference: with_image.then(|| InputImage {
                    data: Bytes::from_static(JPEG),
                    filename: "a.jpg".into(),
                    mime_type: "image/jpeg".into(),
                }),
                person_generation: person.into(),
            })),
        };
        let spec = VideoSpec::parse(req, &ModelCatalog::default());
        prop_assert!(spec.is_ok(), "{:?}", spec);
        if let Ok(spec) = spec {
            let body = create_body(&spec);
            prop_assert_eq!(matches!(body, CreateBody::Multipart { .. }), with_image);
        }
    }

    #[test]
    fn seedance_requests_of_allowed_values_are_accepted(
        resolution in select(&["", "480p", "720p", "1080p"][..]),
        ratio in select(&["", "16:9", "9:16", "1:1", "4:3", "3:4", "21:9"][..]),
        duration in proptest::option::of(select(&[4u32, 5, 6, 8][..])),
        seed in proptest::option::of(any::<i64>()),
        images in 0usize..=9,
        videos in 0usize..=3,
        audios in 0usize..=3,
    ) {
        // Audio is never alone (Ark): only add it beside an image or a video.
        let audios = if images + videos == 0 { 0 } else { audios };
        let content = references(images, videos, audios);
        let req = VideoRequest {
            model: SEEDANCE.into(),
            prompt: "a cat".into(),
            params: Some(Params::Seedance(SeedanceParams {
                content,
                resolution: resolution.into(),
                ratio: ratio.into(),
                duration,
                seed,
                ..SeedanceParams::default()
            })),
        };
        let spec = VideoSpec::parse(req, &ModelCatalog::default());
        prop_assert!(spec.is_ok(), "{:?}", spec);
        if let Ok(spec) = spec {
            let CreateBody::Json(body) = create_body(&spec) else {
                return Err(TestCaseError::fail("Seedance bodies are JSON"));
            };
            let items = body["content"].as_array().map_or(0, Vec::len);
            prop_assert_eq!(items, images + videos + audios);
            let sent_duration = body.get("duration").and_then(|d| d.as_u64());
            prop_assert_eq!(sent_duration, duration.map(u64::from));
        }
    }
}
