//! `VideoSpec::parse` against the rules of CONTRACT.md, one table row per rule and value.

use bytes::Bytes;
use vidgate::domain::{
    ContentItem, ContentKind, Expectation, GenericParams, InputImage, MediaRef, MediaSource,
    ModelCatalog, ModelFamily, Params, SeedanceParams, SpecParams, ValidationError, VeoParams,
    VideoRequest, VideoSpec,
};

const VEO: &str = "turing/veo-3.1-generate";
const SEEDANCE: &str = "doubao-seedance-2-0-260128";
const GENERIC: &str = "sora-2";

const JPEG: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00,
];
const PNG: &[u8] = &[
    0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D,
];
/// The start of an MP4 (`ftyp` box).
const MP4: &[u8] = &[
    0x00, 0x00, 0x00, 0x18, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm', 0x00, 0x00, 0x02, 0x00,
];
/// `PNG` as base64 (12 bytes -> 16 characters).
const PNG_B64: &str = "iVBORw0KGgoAAAAN";
/// `JPEG` as base64.
const JPEG_B64: &str = "/9j/4AAQSkZJRgA=";

// ---------------------------------------------------------------------------------------------
// Builders

fn request(model: &str, prompt: &str, params: Option<Params>) -> VideoRequest {
    VideoRequest {
        model: model.into(),
        prompt: prompt.into(),
        params,
    }
}

fn veo(params: VeoParams) -> VideoRequest {
    request(VEO, "a cat playing piano", Some(Params::Veo(params)))
}

fn seedance(params: SeedanceParams) -> VideoRequest {
    request(
        SEEDANCE,
        "a cat playing piano",
        Some(Params::Seedance(params)),
    )
}

fn content(items: Vec<ContentItem>) -> VideoRequest {
    seedance(SeedanceParams {
        content: items,
        ..SeedanceParams::default()
    })
}

fn generic(params: GenericParams) -> VideoRequest {
    request(
        GENERIC,
        "a cat playing piano",
        Some(Params::Generic(params)),
    )
}

fn image(data: &[u8], filename: &str, mime_type: &str) -> InputImage {
    InputImage {
        data: Bytes::copy_from_slice(data),
        filename: filename.into(),
        mime_type: mime_type.into(),
    }
}

fn jpeg() -> InputImage {
    image(JPEG, "photo.jpg", "image/jpeg")
}

fn veo_image(input: InputImage) -> VideoRequest {
    veo(VeoParams {
        input_reference: Some(input),
        ..VeoParams::default()
    })
}

fn item(kind: ContentKind, role: &str) -> ContentItem {
    ContentItem {
        kind,
        role: role.into(),
    }
}

fn url(url: &str) -> MediaRef {
    MediaRef {
        source: MediaSource::Url(url.into()),
        mime_type: String::new(),
    }
}

fn image_url(role: &str) -> ContentItem {
    item(ContentKind::Image(url("https://example.com/cat.jpg")), role)
}

fn video_url(role: &str) -> ContentItem {
    item(ContentKind::Video(url("https://example.com/v.mp4")), role)
}

fn audio_url(role: &str) -> ContentItem {
    item(ContentKind::Audio(url("https://example.com/a.mp3")), role)
}

fn text(text: &str) -> ContentItem {
    item(ContentKind::Text(text.into()), "")
}

fn inline(data: &[u8], mime_type: &str) -> ContentItem {
    item(
        ContentKind::Image(MediaRef {
            source: MediaSource::Data(Bytes::copy_from_slice(data)),
            mime_type: mime_type.into(),
        }),
        "",
    )
}

fn generic_catalog() -> ModelCatalog {
    ModelCatalog::from_toml_str("unknown_models = \"generic\"").expect("valid catalog")
}

fn parse(req: VideoRequest) -> Result<VideoSpec, ValidationError> {
    let catalog = if req.model == GENERIC {
        generic_catalog()
    } else {
        ModelCatalog::default()
    };
    VideoSpec::parse(req, &catalog)
}

// ---------------------------------------------------------------------------------------------
// Table runners

/// A request that must be refused with (at least) a violation of `rule` at `field` whose
/// description contains `says`.
struct Refused {
    name: &'static str,
    request: VideoRequest,
    field: &'static str,
    rule: &'static str,
    says: &'static str,
}

fn refused(
    name: &'static str,
    request: VideoRequest,
    field: &'static str,
    rule: &'static str,
    says: &'static str,
) -> Refused {
    Refused {
        name,
        request,
        field,
        rule,
        says,
    }
}

fn assert_refused(cases: Vec<Refused>) {
    for case in cases {
        let violations = match parse(case.request) {
            Err(ValidationError::Invalid { violations, .. }) => violations,
            other => panic!("{}: expected Invalid, got {other:?}", case.name),
        };
        assert!(
            violations.iter().any(|v| v.field == case.field
                && v.rule == case.rule
                && v.description.contains(case.says)),
            "{}: no {} violation at {} saying {:?} in {violations:#?}",
            case.name,
            case.rule,
            case.field,
            case.says
        );
    }
}

fn assert_accepted(cases: Vec<(&str, VideoRequest)>) {
    for (name, request) in cases {
        if let Err(error) = parse(request) {
            panic!("{name}: refused: {error}");
        }
    }
}

fn seedance_spec(req: VideoRequest) -> vidgate::domain::SeedanceSpec {
    match parse(req).map(|spec| spec.params().clone()) {
        Ok(SpecParams::Seedance(p)) => p,
        other => panic!("expected Seedance params, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Model, prompt, family

#[test]
fn unknown_model_is_refused_listing_the_known_ids() {
    let error = parse(request("turing/veo-9", "a cat", None)).expect_err("unknown");
    assert_eq!(
        error,
        ValidationError::UnknownModel {
            model: "turing/veo-9".into(),
            known: vec![SEEDANCE.into(), VEO.into()],
        }
    );
    let violations = error.field_violations();
    assert_eq!(violations.len(), 1);
    assert_eq!(
        (violations[0].field.as_str(), violations[0].rule.as_str()),
        ("model", "VG-MODEL")
    );
    assert!(
        violations[0].description.contains(VEO),
        "{:?}",
        violations[0]
    );
}

#[test]
fn unknown_model_passes_through_as_generic_when_the_catalog_says_so() {
    let spec = VideoSpec::parse(request("sora-2", "a cat", None), &generic_catalog()).expect("ok");
    assert_eq!(spec.family(), ModelFamily::Generic);
    assert_eq!(spec.model(), "sora-2");
    assert_eq!(spec.prompt(), "a cat");
}

#[test]
fn model_and_prompt_violations_are_rejected() {
    let long_prompt = "猫".repeat(vidgate::domain::MAX_PROMPT_CHARS + 1);
    assert_refused(vec![
        refused(
            "empty model",
            request("", "a cat", None),
            "model",
            "VG-MODEL",
            "required",
        ),
        refused(
            "empty model, empty prompt",
            request("", "", None),
            "prompt",
            "VG-PROMPT",
            "required",
        ),
        refused(
            "veo empty prompt",
            request(VEO, "", None),
            "prompt",
            "VG-PROMPT",
            "required",
        ),
        refused(
            "veo blank prompt",
            request(VEO, " \n\t", None),
            "prompt",
            "VG-PROMPT",
            "blank",
        ),
        refused(
            "seedance empty prompt s2",
            request(SEEDANCE, "", None),
            "prompt",
            "S2",
            "required",
        ),
        refused(
            "generic empty prompt",
            request(GENERIC, "", None),
            "prompt",
            "VG-PROMPT",
            "required",
        ),
        refused(
            "prompt too long",
            request(VEO, &long_prompt, None),
            "prompt",
            "VG-LIMIT",
            "at most 16384",
        ),
    ]);
}

#[test]
fn passthrough_model_id_with_a_space_is_refused_even_as_generic() {
    let error = VideoSpec::parse(request("my model", "a cat", None), &generic_catalog());
    assert!(
        matches!(&error, Err(ValidationError::Invalid { violations, .. }) if violations[0].rule == "VG-MODEL"),
        "{error:?}"
    );
}

#[test]
fn prompt_at_the_length_bound_is_accepted() {
    let prompt = "猫".repeat(vidgate::domain::MAX_PROMPT_CHARS);
    assert_accepted(vec![("max prompt", request(VEO, &prompt, None))]);
}

#[test]
fn params_of_another_family_are_refused_naming_the_field() {
    assert_refused(vec![
        refused(
            "seedance params to veo",
            request(
                VEO,
                "a cat",
                Some(Params::Seedance(SeedanceParams::default())),
            ),
            "seedance",
            "VG-FAMILY",
            "is a veo model",
        ),
        refused(
            "veo params to seedance",
            request(SEEDANCE, "a cat", Some(Params::Veo(VeoParams::default()))),
            "veo",
            "VG-FAMILY",
            "is a seedance model",
        ),
        refused(
            "generic params to veo",
            request(
                VEO,
                "a cat",
                Some(Params::Generic(GenericParams::default())),
            ),
            "generic",
            "VG-FAMILY",
            "send `veo` params",
        ),
        refused(
            "veo params to a generic model",
            request(GENERIC, "a cat", Some(Params::Veo(VeoParams::default()))),
            "veo",
            "VG-FAMILY",
            "is a generic model",
        ),
    ]);
}

#[test]
fn no_params_means_the_family_defaults() {
    for (model, family) in [
        (VEO, ModelFamily::Veo),
        (SEEDANCE, ModelFamily::Seedance),
        (GENERIC, ModelFamily::Generic),
    ] {
        let spec = parse(request(model, "a cat", None)).expect("valid");
        assert_eq!(spec.family(), family, "{model}");
    }
}

// ---------------------------------------------------------------------------------------------
// Veo: V1-V5

#[test]
fn veo_rejects_seconds_outside_4_6_8_v1() {
    let cases = [1, 2, 3, 5, 7, 9, 10, 16, u32::MAX]
        .into_iter()
        .map(|seconds| {
            refused(
                "seconds",
                veo(VeoParams {
                    seconds,
                    ..VeoParams::default()
                }),
                "veo.seconds",
                "V1",
                "seconds must be one of 4, 6, 8",
            )
        })
        .collect();
    assert_refused(cases);
}

#[test]
fn veo_accepts_seconds_4_6_8_and_0_for_the_default_v1() {
    for seconds in [0, 4, 6, 8] {
        let spec = parse(veo(VeoParams {
            seconds,
            ..VeoParams::default()
        }))
        .expect("valid");
        let SpecParams::Veo(p) = spec.params() else {
            panic!("veo")
        };
        assert_eq!(p.seconds(), (seconds != 0).then_some(seconds), "{seconds}");
    }
}

#[test]
fn veo_rejects_sizes_other_than_1280x720_and_720x1280_v2() {
    let cases = [
        "1920x1080",
        "1280X720",
        "720p",
        " 1280x720",
        "1280x720 ",
        "1280*720",
        "720x720",
        "16:9",
    ]
    .into_iter()
    .map(|size| {
        refused(
            "size",
            veo(VeoParams {
                size: size.into(),
                ..VeoParams::default()
            }),
            "veo.size",
            "V2",
            "size must be one of 1280x720, 720x1280",
        )
    })
    .collect();
    assert_refused(cases);
}

#[test]
fn veo_accepts_the_two_sizes_and_empty_v2() {
    assert_accepted(
        ["", "1280x720", "720x1280"]
            .into_iter()
            .map(|size| {
                (
                    "size",
                    veo(VeoParams {
                        size: size.into(),
                        ..VeoParams::default()
                    }),
                )
            })
            .collect(),
    );
}

#[test]
fn veo_input_reference_needs_data_name_and_type_within_10_mib_v3() {
    let over = vec![0xFFu8; 10 * 1024 * 1024 + 1];
    assert_refused(vec![
        refused(
            "empty data",
            veo_image(image(b"", "a.jpg", "image/jpeg")),
            "veo.input_reference.data",
            "V3",
            "must not be empty",
        ),
        refused(
            "no filename",
            veo_image(image(JPEG, "", "image/jpeg")),
            "veo.input_reference.filename",
            "V3",
            "file name is required",
        ),
        refused(
            "no mime type",
            veo_image(image(JPEG, "a.jpg", "")),
            "veo.input_reference.mime_type",
            "V3",
            "MIME type is required",
        ),
        refused(
            "one byte over 10 MiB",
            veo_image(image(&over, "a.jpg", "image/jpeg")),
            "veo.input_reference.data",
            "V3",
            "at most 10485760 bytes (got 10485761)",
        ),
    ]);
}

#[test]
fn veo_input_reference_of_exactly_10_mib_is_accepted_v3() {
    let mut data = vec![0u8; 10 * 1024 * 1024];
    data[..JPEG.len()].copy_from_slice(JPEG);
    assert_accepted(vec![(
        "10 MiB",
        veo_image(image(&data, "a.jpg", "image/jpeg")),
    )]);
}

#[test]
fn upload_limit_follows_the_catalog_v3() {
    let catalog = ModelCatalog::from_toml_str("max_upload_bytes = 8").expect("valid");
    let error = VideoSpec::parse(veo_image(jpeg()), &catalog).expect_err("over 8 bytes");
    assert!(error.to_string().contains("at most 8 bytes"), "{error}");
}

#[test]
fn veo_input_reference_must_be_an_image_v4() {
    assert_refused(vec![
        refused(
            "video mime",
            veo_image(image(MP4, "a.mp4", "video/mp4")),
            "veo.input_reference.mime_type",
            "V4",
            "images only",
        ),
        refused(
            "text mime",
            veo_image(image(b"hello", "a.txt", "text/plain")),
            "veo.input_reference.mime_type",
            "V4",
            "images only",
        ),
        refused(
            "no subtype",
            veo_image(image(JPEG, "a.jpg", "image")),
            "veo.input_reference.mime_type",
            "V4",
            "image/*",
        ),
        refused(
            "mime with parameters",
            veo_image(image(JPEG, "a.jpg", "image/jpeg; q=1")),
            "veo.input_reference.mime_type",
            "V4",
            "image/*",
        ),
        refused(
            "mp4 bytes as jpeg",
            veo_image(image(MP4, "a.jpg", "image/jpeg")),
            "veo.input_reference.data",
            "V4",
            "the data is video/mp4",
        ),
        refused(
            "png bytes as jpeg",
            veo_image(image(PNG, "a.jpg", "image/jpeg")),
            "veo.input_reference.data",
            "V4",
            "says image/jpeg but the data is not JPEG (it looks like image/png)",
        ),
        refused(
            "text bytes as png",
            veo_image(image(b"hello world", "a.png", "image/png")),
            "veo.input_reference.data",
            "V4",
            "not PNG",
        ),
    ]);
}

#[test]
fn veo_input_reference_accepts_known_and_unknown_image_types_v4() {
    assert_accepted(vec![
        ("jpeg", veo_image(jpeg())),
        ("jpg alias", veo_image(image(JPEG, "a.jpg", "image/jpg"))),
        (
            "upper case mime",
            veo_image(image(PNG, "a.png", "IMAGE/PNG")),
        ),
        (
            "heic not sniffed",
            veo_image(image(b"\x00\x01\x02\x03", "a.heic", "image/heic")),
        ),
    ]);
}

#[test]
fn veo_input_reference_mime_type_is_normalised_to_lower_case() {
    let spec = parse(veo_image(image(PNG, "a.png", "Image/PNG"))).expect("valid");
    assert_eq!(
        spec.input_image().map(|i| i.mime_type.as_str()),
        Some("image/png")
    );
}

#[test]
fn upload_file_name_must_be_plain() {
    let long = format!("{}.jpg", "a".repeat(vidgate::domain::MAX_FILENAME_BYTES));
    assert_refused(vec![
        refused(
            "newline",
            veo_image(image(JPEG, "a\nb.jpg", "image/jpeg")),
            "veo.input_reference.filename",
            "VG-FILENAME",
            "control characters",
        ),
        refused(
            "quote",
            veo_image(image(JPEG, "a\"b.jpg", "image/jpeg")),
            "veo.input_reference.filename",
            "VG-FILENAME",
            "quotes",
        ),
        refused(
            "too long",
            veo_image(image(JPEG, &long, "image/jpeg")),
            "veo.input_reference.filename",
            "VG-FILENAME",
            "at most 255 bytes",
        ),
    ]);
}

#[test]
fn veo_person_generation_accepts_only_allow_all_v5() {
    let cases = ["ALLOW_ALL", "allow_adult", "dont_allow", " allow_all"]
        .into_iter()
        .map(|value| {
            refused(
                "person_generation",
                veo(VeoParams {
                    person_generation: value.into(),
                    ..VeoParams::default()
                }),
                "veo.person_generation",
                "V5",
                "must be one of allow_all",
            )
        })
        .collect();
    assert_refused(cases);
    assert_accepted(vec![
        ("empty", veo(VeoParams::default())),
        (
            "allow_all",
            veo(VeoParams {
                person_generation: "allow_all".into(),
                ..VeoParams::default()
            }),
        ),
    ]);
}

#[test]
fn veo_collects_every_violation_at_once() {
    let error = parse(request(
        VEO,
        "",
        Some(Params::Veo(VeoParams {
            seconds: 5,
            size: "1920x1080".into(),
            input_reference: Some(image(b"", "", "video/mp4")),
            person_generation: "yes".into(),
        })),
    ))
    .expect_err("invalid");
    let mut rules: Vec<(String, String)> = error
        .field_violations()
        .into_iter()
        .map(|v| (v.field, v.rule))
        .collect();
    rules.sort();
    let expected: Vec<(String, String)> = [
        ("prompt", "VG-PROMPT"),
        ("veo.input_reference.data", "V3"),
        ("veo.input_reference.filename", "V3"),
        ("veo.input_reference.mime_type", "V4"),
        ("veo.person_generation", "V5"),
        ("veo.seconds", "V1"),
        ("veo.size", "V2"),
    ]
    .into_iter()
    .map(|(f, r)| (f.to_owned(), r.to_owned()))
    .collect();
    assert_eq!(rules, expected);
    assert_eq!(error.model(), VEO);
}

// ---------------------------------------------------------------------------------------------
// Seedance: S4-S6, size, content

#[test]
fn seedance_rejects_resolutions_outside_480p_720p_1080p_s4() {
    let cases = ["1080P", "360p", "4k", "720", " 720p"]
        .into_iter()
        .map(|resolution| {
            refused(
                "resolution",
                seedance(SeedanceParams {
                    resolution: resolution.into(),
                    ..SeedanceParams::default()
                }),
                "seedance.resolution",
                "S4",
                "resolution must be one of 480p, 720p, 1080p",
            )
        })
        .collect();
    assert_refused(cases);
}

#[test]
fn seedance_accepts_480p_720p_and_1080p_from_the_example_s4_u2() {
    assert_accepted(
        ["", "480p", "720p", "1080p"]
            .into_iter()
            .map(|r| {
                (
                    "resolution",
                    seedance(SeedanceParams {
                        resolution: r.into(),
                        ..SeedanceParams::default()
                    }),
                )
            })
            .collect(),
    );
}

#[test]
fn seedance_rejects_ratios_outside_the_five_and_21_9_s5() {
    let cases = ["2:1", "16x9", "adaptive", "16:10", "9:21"]
        .into_iter()
        .map(|ratio| {
            refused(
                "ratio",
                seedance(SeedanceParams {
                    ratio: ratio.into(),
                    ..SeedanceParams::default()
                }),
                "seedance.ratio",
                "S5",
                "ratio must be one of 16:9, 9:16, 1:1, 4:3, 3:4, 21:9",
            )
        })
        .collect();
    assert_refused(cases);
}

#[test]
fn seedance_accepts_the_five_ratios_and_21_9_from_the_table_s5_u3() {
    assert_accepted(
        ["16:9", "9:16", "1:1", "4:3", "3:4", "21:9"]
            .into_iter()
            .map(|r| {
                (
                    "ratio",
                    seedance(SeedanceParams {
                        ratio: r.into(),
                        ..SeedanceParams::default()
                    }),
                )
            })
            .collect(),
    );
}

#[test]
fn seedance_rejects_durations_outside_4_5_6_8_s6() {
    let cases = [0, 1, 3, 7, 9, 10, 15]
        .into_iter()
        .map(|d| {
            refused(
                "duration",
                seedance(SeedanceParams {
                    duration: Some(d),
                    ..SeedanceParams::default()
                }),
                "seedance.duration",
                "S6",
                "duration must be one of 4, 5, 6, 8 seconds",
            )
        })
        .collect();
    assert_refused(cases);
}

#[test]
fn seedance_accepts_durations_4_5_6_8_s6() {
    for d in [4, 5, 6, 8] {
        let p = seedance_spec(seedance(SeedanceParams {
            duration: Some(d),
            ..SeedanceParams::default()
        }));
        assert_eq!(p.duration(), Some(d));
    }
}

#[test]
fn seedance_size_maps_onto_resolution_and_ratio_by_the_table() {
    let cases = [
        ("1280x720", "720p", "16:9"),
        ("864x496", "480p", "16:9"),
        ("496x864", "480p", "9:16"),
        ("1470x630", "720p", "21:9"),
        ("960x960", "720p", "1:1"),
    ];
    for (size, resolution, ratio) in cases {
        let p = seedance_spec(seedance(SeedanceParams {
            size: size.into(),
            ..SeedanceParams::default()
        }));
        assert_eq!(
            (p.resolution(), p.ratio()),
            (Some(resolution), Some(ratio)),
            "{size}"
        );
    }
}

#[test]
fn seedance_size_agreeing_with_resolution_and_ratio_is_accepted() {
    let p = seedance_spec(seedance(SeedanceParams {
        size: "1280x720".into(),
        resolution: "720p".into(),
        ratio: "16:9".into(),
        ..SeedanceParams::default()
    }));
    assert_eq!((p.resolution(), p.ratio()), (Some("720p"), Some("16:9")));
}

#[test]
fn seedance_size_outside_the_table_or_conflicting_is_rejected() {
    assert_refused(vec![
        refused(
            "not in table",
            seedance(SeedanceParams {
                size: "1920x1080".into(),
                ..SeedanceParams::default()
            }),
            "seedance.size",
            "VG-SIZE",
            "864x496 (480p 16:9)",
        ),
        refused(
            "not WxH",
            seedance(SeedanceParams {
                size: "720p".into(),
                ..SeedanceParams::default()
            }),
            "seedance.size",
            "VG-SIZE",
            "pixel table",
        ),
        refused(
            "conflicting resolution",
            seedance(SeedanceParams {
                size: "1280x720".into(),
                resolution: "480p".into(),
                ..SeedanceParams::default()
            }),
            "seedance.size",
            "VG-SIZE",
            "size 1280x720 is 720p 16:9, which conflicts with resolution \"480p\"",
        ),
        refused(
            "conflicting ratio",
            seedance(SeedanceParams {
                size: "1280x720".into(),
                ratio: "9:16".into(),
                ..SeedanceParams::default()
            }),
            "seedance.size",
            "VG-SIZE",
            "conflicts with ratio \"9:16\"",
        ),
    ]);
}

#[test]
fn seedance_passes_seed_watermark_audio_and_last_frame_through() {
    let p = seedance_spec(seedance(SeedanceParams {
        seed: Some(-1),
        watermark: Some(false),
        generate_audio: Some(false),
        return_last_frame: Some(true),
        ..SeedanceParams::default()
    }));
    assert_eq!(
        (
            p.seed(),
            p.watermark(),
            p.generate_audio(),
            p.return_last_frame()
        ),
        (Some(-1), Some(false), Some(false), Some(true))
    );
}

#[test]
fn seedance_content_urls_and_media_are_checked_s3() {
    let with_mime = |kind: fn(MediaRef) -> ContentKind, url_text: &str, mime: &str| {
        item(
            kind(MediaRef {
                source: MediaSource::Url(url_text.into()),
                mime_type: mime.into(),
            }),
            "",
        )
    };
    let long_url = format!(
        "https://example.com/{}",
        "a".repeat(vidgate::domain::MAX_URL_CHARS)
    );
    assert_refused(vec![
        refused(
            "http image",
            content(vec![item(
                ContentKind::Image(url("http://example.com/a.jpg")),
                "",
            )]),
            "seedance.content[0].image.url",
            "S3",
            "https:// URL",
        ),
        refused(
            "ftp image",
            content(vec![item(
                ContentKind::Image(url("ftp://example.com/a.jpg")),
                "",
            )]),
            "seedance.content[0].image.url",
            "S3",
            "https:// URL",
        ),
        refused(
            "no host",
            content(vec![item(ContentKind::Image(url("https://")), "")]),
            "seedance.content[0].image.url",
            "S3",
            "https:// URL",
        ),
        refused(
            "relative",
            content(vec![item(ContentKind::Image(url("/a.jpg")), "")]),
            "seedance.content[0].image.url",
            "S3",
            "https:// URL",
        ),
        refused(
            "space in url",
            content(vec![item(
                ContentKind::Image(url(" https://example.com/a.jpg")),
                "",
            )]),
            "seedance.content[0].image.url",
            "S3",
            "https:// URL",
        ),
        refused(
            "empty url",
            content(vec![item(ContentKind::Image(url("")), "")]),
            "seedance.content[0].image.url",
            "S3",
            "https:// URL",
        ),
        refused(
            "url too long",
            content(vec![item(ContentKind::Image(url(&long_url)), "")]),
            "seedance.content[0].image.url",
            "VG-LIMIT",
            "at most 16384",
        ),
        refused(
            "http video",
            content(vec![item(
                ContentKind::Video(url("http://example.com/v.mp4")),
                "",
            )]),
            "seedance.content[0].video.url",
            "S3",
            "video must be given as an https:// URL",
        ),
        refused(
            "data uri video",
            content(vec![item(
                ContentKind::Video(url("data:video/mp4;base64,AAAA")),
                "",
            )]),
            "seedance.content[0].video.url",
            "S3",
            "https:// URL",
        ),
        refused(
            "http audio",
            content(vec![
                image_url(""),
                item(ContentKind::Audio(url("http://example.com/a.mp3")), ""),
            ]),
            "seedance.content[1].audio.url",
            "S3",
            "audio must be given",
        ),
        refused(
            "inline video",
            content(vec![item(
                ContentKind::Video(MediaRef {
                    source: MediaSource::Data(Bytes::from_static(MP4)),
                    mime_type: "video/mp4".into(),
                }),
                "",
            )]),
            "seedance.content[0].video.data",
            "S3",
            "images only",
        ),
        refused(
            "inline audio",
            content(vec![
                image_url(""),
                item(
                    ContentKind::Audio(MediaRef {
                        source: MediaSource::Data(Bytes::from_static(b"ID3")),
                        mime_type: "audio/mpeg".into(),
                    }),
                    "",
                ),
            ]),
            "seedance.content[1].audio.data",
            "S3",
            "images only",
        ),
        refused(
            "video with audio mime",
            content(vec![with_mime(
                ContentKind::Video,
                "https://example.com/v.mp4",
                "audio/mpeg",
            )]),
            "seedance.content[0].video.mime_type",
            "S3",
            "video/*",
        ),
        refused(
            "image url with video mime",
            content(vec![with_mime(
                ContentKind::Image,
                "https://example.com/a.jpg",
                "video/mp4",
            )]),
            "seedance.content[0].image.mime_type",
            "S3",
            "image/*",
        ),
        refused(
            "empty text",
            content(vec![text("")]),
            "seedance.content[0].text",
            "S3",
            "must not be blank",
        ),
        refused(
            "blank text",
            content(vec![text("  \n")]),
            "seedance.content[0].text",
            "S3",
            "must not be blank",
        ),
    ]);
}

#[test]
fn seedance_image_data_uris_are_checked_s3() {
    let data_uri = |uri: String| content(vec![item(ContentKind::Image(url(&uri)), "")]);
    assert_refused(vec![
        refused(
            "text data uri",
            data_uri("data:text/plain;base64,aGVsbG8=".into()),
            "seedance.content[0].image.url",
            "S3",
            "data:image/<format>;base64,",
        ),
        refused(
            "not base64",
            data_uri("data:image/png,hello".into()),
            "seedance.content[0].image.url",
            "S3",
            "data:image/<format>;base64,",
        ),
        refused(
            "no comma",
            data_uri("data:image/png;base64".into()),
            "seedance.content[0].image.url",
            "S3",
            "data:image/<format>;base64,",
        ),
        refused(
            "empty payload",
            data_uri("data:image/png;base64,".into()),
            "seedance.content[0].image.url",
            "S3",
            "data:image/<format>;base64,",
        ),
        refused(
            "bad alphabet",
            data_uri("data:image/png;base64,iVBO Rw0K".into()),
            "seedance.content[0].image.url",
            "S3",
            "data:image/<format>;base64,",
        ),
        refused(
            "padding in the middle",
            data_uri("data:image/png;base64,iV==BORw".into()),
            "seedance.content[0].image.url",
            "S3",
            "data:image/<format>;base64,",
        ),
        refused(
            "jpeg bytes labelled png",
            data_uri(format!("data:image/png;base64,{JPEG_B64}")),
            "seedance.content[0].image.url",
            "S3",
            "not PNG",
        ),
    ]);
    assert_accepted(vec![
        (
            "png data uri",
            data_uri(format!("data:image/png;base64,{PNG_B64}")),
        ),
        (
            "jpeg data uri",
            data_uri(format!("data:image/jpeg;base64,{JPEG_B64}")),
        ),
        (
            "upper-case scheme",
            data_uri(format!("DATA:image/png;base64,{PNG_B64}")),
        ),
    ]);
}

#[test]
fn seedance_inline_image_bytes_need_an_image_mime_type_s3() {
    assert_refused(vec![
        refused(
            "no mime",
            content(vec![inline(PNG, "")]),
            "seedance.content[0].image.mime_type",
            "S3",
            "required",
        ),
        refused(
            "video mime",
            content(vec![inline(PNG, "video/mp4")]),
            "seedance.content[0].image.mime_type",
            "S3",
            "images only",
        ),
        refused(
            "empty bytes",
            content(vec![inline(b"", "image/png")]),
            "seedance.content[0].image.data",
            "S3",
            "must not be empty",
        ),
        refused(
            "mp4 bytes",
            content(vec![inline(MP4, "image/png")]),
            "seedance.content[0].image.data",
            "S3",
            "video/mp4",
        ),
    ]);
    assert_accepted(vec![("png bytes", content(vec![inline(PNG, "image/png")]))]);
}

#[test]
fn seedance_inline_image_over_ark_30_mib_is_rejected() {
    let big = vec![0u8; 30 * 1024 * 1024 + 1];
    assert_refused(vec![refused(
        "31 MiB image",
        content(vec![inline(&big, "image/heic")]),
        "seedance.content[0].image.data",
        "VG-ARK-LIMIT",
        "at most 31457280 bytes",
    )]);
}

#[test]
fn seedance_body_over_ark_64_mib_is_rejected() {
    let mut image = vec![0u8; 25 * 1024 * 1024];
    image[..PNG.len()].copy_from_slice(PNG);
    let items = (0..3)
        .map(|_| item(inline(&image, "image/png").kind, "reference_image"))
        .collect();
    assert_refused(vec![refused(
        "3 x 25 MiB",
        content(items),
        "seedance.content",
        "VG-ARK-LIMIT",
        "at most 67108864",
    )]);
}

#[test]
fn seedance_content_roles_fit_their_kind() {
    assert_refused(vec![
        refused(
            "first_frame on video",
            content(vec![video_url("first_frame")]),
            "seedance.content[0].role",
            "VG-ROLE",
            "video item must be reference_video",
        ),
        refused(
            "reference_video on image",
            content(vec![image_url("reference_video")]),
            "seedance.content[0].role",
            "VG-ROLE",
            "first_frame or last_frame or reference_image",
        ),
        refused(
            "reference_image on audio",
            content(vec![image_url(""), audio_url("reference_image")]),
            "seedance.content[1].role",
            "VG-ROLE",
            "reference_audio",
        ),
        refused(
            "unknown role",
            content(vec![image_url("hero")]),
            "seedance.content[0].role",
            "VG-ROLE",
            "(got \"hero\")",
        ),
        refused(
            "upper-case role",
            content(vec![image_url("FIRST_FRAME")]),
            "seedance.content[0].role",
            "VG-ROLE",
            "first_frame",
        ),
        refused(
            "role on text",
            content(vec![item(ContentKind::Text("hi".into()), "first_frame")]),
            "seedance.content[0].role",
            "VG-ROLE",
            "a text item takes no role",
        ),
    ]);
}

#[test]
fn seedance_ark_modes_do_not_mix_and_respect_counts() {
    let many = |n: usize, f: fn(&str) -> ContentItem, role: &str| {
        (0..n).map(|_| f(role)).collect::<Vec<_>>()
    };
    assert_refused(vec![
        refused(
            "first frame with reference image",
            content(vec![image_url("first_frame"), image_url("reference_image")]),
            "seedance.content",
            "VG-MODE",
            "cannot be mixed",
        ),
        refused(
            "first frame with video",
            content(vec![image_url("first_frame"), video_url("")]),
            "seedance.content",
            "VG-MODE",
            "cannot be mixed",
        ),
        refused(
            "first frame with audio",
            content(vec![image_url("first_frame"), audio_url("")]),
            "seedance.content",
            "VG-MODE",
            "cannot be mixed",
        ),
        refused(
            "two first frames",
            content(vec![image_url("first_frame"), image_url("first_frame")]),
            "seedance.content[1].role",
            "VG-MODE",
            "at most one image may have role first_frame",
        ),
        refused(
            "two last frames",
            content(vec![
                image_url("first_frame"),
                image_url("last_frame"),
                image_url("last_frame"),
            ]),
            "seedance.content[2].role",
            "VG-MODE",
            "role last_frame",
        ),
        refused(
            "last frame alone",
            content(vec![image_url("last_frame")]),
            "seedance.content",
            "VG-MODE",
            "needs another with role first_frame",
        ),
        refused(
            "three images in frame mode",
            content(vec![
                image_url("first_frame"),
                image_url("last_frame"),
                image_url(""),
            ]),
            "seedance.content",
            "VG-MODE",
            "1 or 2 images (got 3)",
        ),
        refused(
            "unroled second image in frame mode",
            content(vec![image_url("first_frame"), image_url("")]),
            "seedance.content[1].role",
            "VG-MODE",
            "every image needs role",
        ),
        refused(
            "ten images",
            content(many(10, image_url, "reference_image")),
            "seedance.content",
            "VG-MODE",
            "at most 9 images (got 10)",
        ),
        refused(
            "four videos",
            content(many(4, video_url, "reference_video")),
            "seedance.content",
            "VG-MODE",
            "at most 3 videos (got 4)",
        ),
        refused(
            "four audios",
            content(
                [
                    many(1, image_url, "reference_image"),
                    many(4, audio_url, "reference_audio"),
                ]
                .concat(),
            ),
            "seedance.content",
            "VG-MODE",
            "at most 3 audios (got 4)",
        ),
        refused(
            "audio alone",
            content(vec![audio_url("reference_audio")]),
            "seedance.content",
            "VG-MODE",
            "never alone",
        ),
        refused(
            "audio with text only",
            content(vec![text("hi"), audio_url("")]),
            "seedance.content",
            "VG-MODE",
            "never alone",
        ),
    ]);
}

#[test]
fn seedance_ark_modes_that_are_allowed_pass() {
    let many = |n: usize, f: fn(&str) -> ContentItem, role: &str| {
        (0..n).map(|_| f(role)).collect::<Vec<_>>()
    };
    assert_accepted(vec![
        ("one image without role", content(vec![image_url("")])),
        ("first frame", content(vec![image_url("first_frame")])),
        (
            "first and last frame",
            content(vec![image_url("last_frame"), image_url("first_frame")]),
        ),
        (
            "text and image (page example)",
            content(vec![text("a cat"), image_url("")]),
        ),
        (
            "9 images, 3 videos, 3 audios",
            content(
                [
                    many(9, image_url, "reference_image"),
                    many(3, video_url, "reference_video"),
                    many(3, audio_url, "reference_audio"),
                ]
                .concat(),
            ),
        ),
        ("video continuation", content(vec![video_url("")])),
        (
            "audio with video",
            content(vec![
                video_url("reference_video"),
                audio_url("reference_audio"),
            ]),
        ),
        (
            "https audio with mime",
            content(vec![
                image_url(""),
                item(
                    ContentKind::Audio(MediaRef {
                        source: MediaSource::Url("https://example.com/a.wav".into()),
                        mime_type: "audio/wav".into(),
                    }),
                    "",
                ),
            ]),
        ),
    ]);
}

#[test]
fn seedance_content_over_the_item_bound_is_rejected_without_item_checks() {
    let items = (0..=vidgate::domain::MAX_CONTENT_ITEMS)
        .map(|_| text(""))
        .collect();
    let error = parse(content(items)).expect_err("too many");
    let violations = error.field_violations();
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert_eq!(violations[0].rule, "VG-LIMIT");
    assert_eq!(violations[0].field, "seedance.content");
}

// ---------------------------------------------------------------------------------------------
// Generic

#[test]
fn generic_size_must_be_w_x_h_and_seconds_a_positive_number() {
    assert_refused(vec![
        refused(
            "size word",
            generic(GenericParams {
                size: "large".into(),
                ..GenericParams::default()
            }),
            "generic.size",
            "VG-SIZE",
            "WxH",
        ),
        refused(
            "size with star",
            generic(GenericParams {
                size: "1280*720".into(),
                ..GenericParams::default()
            }),
            "generic.size",
            "VG-SIZE",
            "WxH",
        ),
        refused(
            "seconds word",
            generic(GenericParams {
                seconds: "eight".into(),
                ..GenericParams::default()
            }),
            "generic.seconds",
            "VG-SECONDS",
            "positive number",
        ),
        refused(
            "seconds zero",
            generic(GenericParams {
                seconds: "0".into(),
                ..GenericParams::default()
            }),
            "generic.seconds",
            "VG-SECONDS",
            "positive number",
        ),
        refused(
            "seconds negative",
            generic(GenericParams {
                seconds: "-4".into(),
                ..GenericParams::default()
            }),
            "generic.seconds",
            "VG-SECONDS",
            "positive number",
        ),
        refused(
            "seconds exponent",
            generic(GenericParams {
                seconds: "1e3".into(),
                ..GenericParams::default()
            }),
            "generic.seconds",
            "VG-SECONDS",
            "positive number",
        ),
        refused(
            "seconds trailing point",
            generic(GenericParams {
                seconds: "4.".into(),
                ..GenericParams::default()
            }),
            "generic.seconds",
            "VG-SECONDS",
            "positive number",
        ),
        refused(
            "seconds huge",
            generic(GenericParams {
                seconds: "1".repeat(17),
                ..GenericParams::default()
            }),
            "generic.seconds",
            "VG-SECONDS",
            "positive number",
        ),
        refused(
            "input reference video",
            generic(GenericParams {
                input_reference: Some(image(MP4, "a.mp4", "video/mp4")),
                ..GenericParams::default()
            }),
            "generic.input_reference.mime_type",
            "V4",
            "images only",
        ),
        refused(
            "input reference without name",
            generic(GenericParams {
                input_reference: Some(image(JPEG, "", "image/jpeg")),
                ..GenericParams::default()
            }),
            "generic.input_reference.filename",
            "V3",
            "required",
        ),
    ]);
}

#[test]
fn generic_passes_size_and_seconds_through() {
    for (size, seconds) in [("1920x1080", "12"), ("", "2.5"), ("1x1", ""), ("", "0.5")] {
        let spec = parse(generic(GenericParams {
            size: size.into(),
            seconds: seconds.into(),
            input_reference: None,
        }))
        .expect("valid");
        let SpecParams::Generic(p) = spec.params() else {
            panic!("generic")
        };
        assert_eq!(p.size(), (!size.is_empty()).then_some(size));
        assert_eq!(p.seconds(), (!seconds.is_empty()).then_some(seconds));
    }
}

// ---------------------------------------------------------------------------------------------
// Expected output

#[test]
fn veo_expected_output_is_known_when_size_and_seconds_are_given() {
    let spec = parse(veo(VeoParams {
        seconds: 6,
        size: "720x1280".into(),
        ..VeoParams::default()
    }))
    .expect("valid");
    let expected = spec.expected_output();
    assert_eq!(expected.dimensions, Expectation::Known((720, 1280)));
    assert_eq!(expected.duration_seconds, Expectation::Known(6.0));
    assert_eq!(expected.compare(720, 1280, 6.04), None);
    assert!(expected.compare(1280, 720, 6.0).is_some());
}

#[test]
fn veo_expected_output_cannot_be_checked_without_size_or_seconds() {
    let expected = parse(veo(VeoParams::default()))
        .expect("valid")
        .expected_output();
    assert!(
        matches!(&expected.dimensions, Expectation::CannotCheck(why) if why.contains("not documented"))
    );
    assert!(
        matches!(&expected.duration_seconds, Expectation::CannotCheck(why) if why.contains("not documented"))
    );
    assert_eq!(expected.compare(1, 1, 1.0), None);
}

#[test]
fn seedance_expected_pixels_come_from_the_table() {
    let cases = [
        ("480p", "16:9", "", Expectation::Known((864, 496))),
        ("720p", "3:4", "", Expectation::Known((834, 1112))),
        ("", "", "1470x630", Expectation::Known((1470, 630))),
    ];
    for (resolution, ratio, size, want) in cases {
        let spec = parse(seedance(SeedanceParams {
            resolution: resolution.into(),
            ratio: ratio.into(),
            size: size.into(),
            duration: Some(5),
            ..SeedanceParams::default()
        }))
        .expect("valid");
        let expected = spec.expected_output();
        assert_eq!(expected.dimensions, want, "{resolution} {ratio} {size}");
        assert_eq!(expected.duration_seconds, Expectation::Known(5.0));
    }
}

#[test]
fn seedance_expected_output_cannot_be_checked_for_1080p_or_missing_values_u2() {
    let cases = [
        ("1080p", "16:9", "no 1080p 16:9 cell"),
        ("720p", "", "not documented"),
        ("", "16:9", "not documented"),
    ];
    for (resolution, ratio, why_contains) in cases {
        let expected = parse(seedance(SeedanceParams {
            resolution: resolution.into(),
            ratio: ratio.into(),
            ..SeedanceParams::default()
        }))
        .expect("valid")
        .expected_output();
        assert!(
            matches!(&expected.dimensions, Expectation::CannotCheck(why) if why.contains(why_contains)),
            "{resolution} {ratio}: {expected:?}"
        );
        assert!(matches!(
            expected.duration_seconds,
            Expectation::CannotCheck(_)
        ));
    }
}

#[test]
fn seedance_1080p_pixels_become_checkable_when_the_operator_adds_them() {
    let catalog = ModelCatalog::from_toml_str(
        r#"
        [models."doubao-seedance-2-0-260128"]
        family = "seedance"
        [models."doubao-seedance-2-0-260128".pixels."1080p"]
        "16:9" = "1920x1080"
        "#,
    )
    .expect("valid");
    let spec = VideoSpec::parse(
        seedance(SeedanceParams {
            resolution: "1080p".into(),
            ratio: "16:9".into(),
            ..SeedanceParams::default()
        }),
        &catalog,
    )
    .expect("valid");
    assert_eq!(
        spec.expected_output().dimensions,
        Expectation::Known((1920, 1080))
    );
}

#[test]
fn generic_expected_output_cannot_be_checked() {
    let expected = parse(generic(GenericParams {
        size: "1280x720".into(),
        seconds: "8".into(),
        input_reference: None,
    }))
    .expect("valid")
    .expected_output();
    assert!(matches!(expected.dimensions, Expectation::CannotCheck(_)));
    assert!(matches!(
        expected.duration_seconds,
        Expectation::CannotCheck(_)
    ));
}

#[test]
fn last_frame_and_audio_wishes_are_reported_s9_s10() {
    let spec = parse(seedance(SeedanceParams {
        return_last_frame: Some(true),
        generate_audio: Some(false),
        ..SeedanceParams::default()
    }))
    .expect("valid");
    assert!(spec.has_last_frame_requested());
    assert_eq!(spec.wants_audio(), Some(false));
    let spec = parse(seedance(SeedanceParams::default())).expect("valid");
    assert!(!spec.has_last_frame_requested());
    assert_eq!(spec.wants_audio(), None);
    let spec = parse(veo(VeoParams::default())).expect("valid");
    assert!(!spec.has_last_frame_requested());
    assert_eq!(spec.wants_audio(), None);
}
