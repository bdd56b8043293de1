//! vidgate's model catalog (`VideoSpec::parse` with `ModelCatalog::default()`) against the
//! simulator's own rule table (`upstream::sim::rules`), rule by rule and value by value.
//!
//! Each row is one value of one rule, written as a domain `VideoRequest`. The catalog judges it;
//! then the simulator judges the same request on the wire: the body vidgate would send
//! (`create_body`) when the catalog accepts it, an equivalent body built by hand when the catalog
//! refuses it (vidgate itself would never send that one). Both go through vidgate's client.
//!
//! The two rule sets were written apart (the simulator does not use `vidgate::domain`), so
//! agreement here means something. Where they legitimately differ, the row says so and why
//! (`differs`), and asserts each side's actual verdict, so that a change on either side shows up.

use bytes::Bytes;
use serde_json::{Map, Value, json};
use vidgate::domain::{
    ContentItem, ContentKind, Expectation, InputImage, MediaRef, MediaSource, ModelCatalog, Params,
    SeedanceParams, VeoParams, VideoRequest, VideoSpec, rule,
};
use vidgate::upstream::request::create_body;
use vidgate::upstream::sim::SimConfig;
use vidgate::upstream::wire::{CreateBody, UploadFile};
use vidgate::upstream::{CreateFailure, UpstreamClient, UpstreamError};

use crate::support::upstream::{client, png_image, start_sim};
use crate::support::{SEEDANCE, VEO};

const PROMPT: &str = "a cat playing piano";
const TEN_MIB: usize = 10 * 1024 * 1024;
/// The start of a JFIF JPEG.
const JPEG: &[u8] = &[
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01,
];
/// The start of an MP4 (`ftyp` box).
const MP4: &[u8] = &[
    0x00, 0x00, 0x00, 0x18, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm', 0x00, 0x00, 0x02, 0x00,
];
/// The start of an MP3 with an ID3 tag.
const MP3: &[u8] = &[b'I', b'D', b'3', 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x21];
/// An 8-byte PNG signature plus the IHDR length, base64.
const PNG_B64: &str = "iVBORw0KGgoAAAAN";

// ---- the verdicts --------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Refused,
}
use Verdict::{Accepted, Refused};

/// One rule value, judged by both sides.
struct Row {
    /// The CONTRACT.md (or `VG-`) rule the row is about.
    rule: &'static str,
    /// What the row tries.
    case: String,
    /// The request as a vidgate caller writes it.
    request: VideoRequest,
    /// The wire body for a request the catalog refuses (vidgate would never send it).
    wire: Option<CreateBody>,
    /// What the catalog must say.
    catalog: Verdict,
    /// What the simulator must say.
    simulator: Verdict,
    /// The rule id the catalog's violation must carry when it refuses.
    catalog_rule: &'static str,
    /// The wire field the simulator's message must name when it refuses.
    sim_field: &'static str,
    /// Why the two legitimately disagree (only on rows where they do).
    why: Option<&'static str>,
}

/// Both accept.
fn ok(rule: &'static str, case: impl Into<String>, request: VideoRequest) -> Row {
    Row {
        rule,
        case: case.into(),
        request,
        wire: None,
        catalog: Accepted,
        simulator: Accepted,
        catalog_rule: rule,
        sim_field: "",
        why: None,
    }
}

/// Both refuse; the catalog names `rule`, the simulator names `sim_field`.
fn refused(
    rule: &'static str,
    case: impl Into<String>,
    request: VideoRequest,
    wire: CreateBody,
    sim_field: &'static str,
) -> Row {
    Row {
        rule,
        case: case.into(),
        request,
        wire: Some(wire),
        catalog: Refused,
        simulator: Refused,
        catalog_rule: rule,
        sim_field,
        why: None,
    }
}

impl Row {
    /// The catalog refuses under another rule id than the row's.
    fn catalog_rule(mut self, id: &'static str) -> Row {
        self.catalog_rule = id;
        self
    }

    /// The two sides legitimately disagree: the catalog says `catalog`, the simulator the
    /// other.
    fn differs(mut self, catalog: Verdict, why: &'static str) -> Row {
        self.catalog = catalog;
        self.simulator = match catalog {
            Accepted => Refused,
            Refused => Accepted,
        };
        self.why = Some(why);
        self
    }
}

/// A row whose two sides disagree, built from its parts.
fn differs(
    rule: &'static str,
    case: impl Into<String>,
    request: VideoRequest,
    wire: Option<CreateBody>,
    catalog: Verdict,
    sim_field: &'static str,
    why: &'static str,
) -> Row {
    Row {
        rule,
        case: case.into(),
        request,
        wire,
        catalog,
        simulator: Accepted,
        catalog_rule: rule,
        sim_field,
        why: None,
    }
    .differs(catalog, why)
}

// ---- domain requests -----------------------------------------------------------------------

fn request(model: &str, prompt: &str, params: Option<Params>) -> VideoRequest {
    VideoRequest {
        model: model.into(),
        prompt: prompt.into(),
        params,
    }
}

fn veo(params: VeoParams) -> VideoRequest {
    request(VEO, PROMPT, Some(Params::Veo(params)))
}

fn veo_seconds(seconds: u32) -> VideoRequest {
    veo(VeoParams {
        seconds,
        ..VeoParams::default()
    })
}

fn veo_size(size: &str) -> VideoRequest {
    veo(VeoParams {
        size: size.into(),
        ..VeoParams::default()
    })
}

fn veo_person(value: &str) -> VideoRequest {
    veo(VeoParams {
        person_generation: value.into(),
        ..VeoParams::default()
    })
}

fn upload(data: Bytes, filename: &str, mime_type: &str) -> InputImage {
    InputImage {
        data,
        filename: filename.into(),
        mime_type: mime_type.into(),
    }
}

fn veo_image(image: InputImage, person_generation: &str) -> VideoRequest {
    veo(VeoParams {
        input_reference: Some(image),
        person_generation: person_generation.into(),
        ..VeoParams::default()
    })
}

fn seedance(params: SeedanceParams) -> VideoRequest {
    request(SEEDANCE, PROMPT, Some(Params::Seedance(params)))
}

fn seedance_resolution(resolution: &str) -> VideoRequest {
    seedance(SeedanceParams {
        resolution: resolution.into(),
        ..SeedanceParams::default()
    })
}

fn seedance_ratio(ratio: &str) -> VideoRequest {
    seedance(SeedanceParams {
        ratio: ratio.into(),
        ..SeedanceParams::default()
    })
}

fn seedance_duration(duration: u32) -> VideoRequest {
    seedance(SeedanceParams {
        duration: Some(duration),
        ..SeedanceParams::default()
    })
}

fn seedance_size(size: &str, resolution: &str, ratio: &str) -> VideoRequest {
    seedance(SeedanceParams {
        size: size.into(),
        resolution: resolution.into(),
        ratio: ratio.into(),
        ..SeedanceParams::default()
    })
}

fn seedance_content(items: Vec<ContentItem>) -> VideoRequest {
    seedance(SeedanceParams {
        content: items,
        ..SeedanceParams::default()
    })
}

fn url_ref(url: &str) -> MediaRef {
    MediaRef {
        source: MediaSource::Url(url.into()),
        mime_type: String::new(),
    }
}

fn image_item(url: &str, role: &str) -> ContentItem {
    ContentItem {
        kind: ContentKind::Image(url_ref(url)),
        role: role.into(),
    }
}

fn video_item(url: &str, role: &str) -> ContentItem {
    ContentItem {
        kind: ContentKind::Video(url_ref(url)),
        role: role.into(),
    }
}

fn audio_item(url: &str, role: &str) -> ContentItem {
    ContentItem {
        kind: ContentKind::Audio(url_ref(url)),
        role: role.into(),
    }
}

fn text_item(text: &str, role: &str) -> ContentItem {
    ContentItem {
        kind: ContentKind::Text(text.into()),
        role: role.into(),
    }
}

const IMG: &str = "https://example.com/cat.jpg";
const VID: &str = "https://example.com/clip.mp4";
const AUD: &str = "https://example.com/voice.mp3";

// ---- hand-built wire bodies ----------------------------------------------------------------

fn json_body(model: &str, prompt: &str, extra: Value) -> CreateBody {
    let mut body = Map::new();
    body.insert("prompt".into(), prompt.into());
    body.insert("model".into(), model.into());
    if let Value::Object(extra) = extra {
        body.extend(extra);
    }
    CreateBody::Json(Value::Object(body))
}

fn veo_json(extra: Value) -> CreateBody {
    json_body(VEO, PROMPT, extra)
}

fn seedance_json(extra: Value) -> CreateBody {
    json_body(SEEDANCE, PROMPT, extra)
}

/// `content` items on the wire: `(type, url or text, role)`.
fn seedance_items(items: &[(&str, &str, &str)]) -> CreateBody {
    let items: Vec<Value> = items
        .iter()
        .map(|(kind, value, role)| {
            let mut item = match *kind {
                "text" => json!({"type": "text", "text": value}),
                kind => json!({"type": kind, kind: {"url": value}}),
            };
            if !role.is_empty() {
                item["role"] = (*role).into();
            }
            item
        })
        .collect();
    seedance_json(json!({ "content": items }))
}

fn veo_form(data: Bytes, filename: &str, mime_type: &str, person_generation: &str) -> CreateBody {
    let mut fields = vec![
        ("prompt".to_owned(), PROMPT.to_owned()),
        ("model".to_owned(), VEO.to_owned()),
    ];
    if !person_generation.is_empty() {
        fields.push(("personGeneration".to_owned(), person_generation.to_owned()));
    }
    CreateBody::Multipart {
        fields,
        file: UploadFile {
            field: "input_reference".into(),
            filename: filename.into(),
            mime_type: mime_type.into(),
            data,
        },
    }
}

/// PNG signature, then zeros up to `len` bytes: a PNG as far as any header check can tell.
fn png_of_len(len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    data[..8].copy_from_slice(b"\x89PNG\r\n\x1a\n");
    Bytes::from(data)
}

// ---- the table -----------------------------------------------------------------------------

fn veo_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    // V1: seconds, a string of 4, 6 or 8; 0 means "not given", so nothing is sent.
    for s in [4, 6, 8] {
        rows.push(ok(rule::V1, format!("seconds {s}"), veo_seconds(s)));
    }
    rows.push(ok(rule::V1, "seconds 0 (not sent)", veo_seconds(0)));
    for s in [1u32, 5, 7, 10, 16] {
        rows.push(refused(
            rule::V1,
            format!("seconds {s}"),
            veo_seconds(s),
            veo_json(json!({"seconds": s.to_string()})),
            "seconds",
        ));
    }
    // V2: size.
    for size in ["1280x720", "720x1280"] {
        rows.push(ok(rule::V2, format!("size {size}"), veo_size(size)));
    }
    for size in [
        "1920x1080",
        "1024x1024",
        "1280x721",
        "1280X720",
        "720 x 1280",
        "big",
    ] {
        rows.push(refused(
            rule::V2,
            format!("size {size:?}"),
            veo_size(size),
            veo_json(json!({ "size": size })),
            "size",
        ));
    }
    // V3: one image file with a name and a MIME type, at most 10 MiB.
    rows.push(ok(
        rule::V3,
        "a small PNG with name and type",
        veo_image(upload(png_image(4, 4), "facade.png", "image/png"), ""),
    ));
    rows.push(ok(
        rule::V3,
        "exactly 10 MiB",
        veo_image(upload(png_of_len(TEN_MIB), "exact.png", "image/png"), ""),
    ));
    rows.push(refused(
        rule::V3,
        "10 MiB + 1 byte",
        veo_image(upload(png_of_len(TEN_MIB + 1), "over.png", "image/png"), ""),
        veo_form(png_of_len(TEN_MIB + 1), "over.png", "image/png", ""),
        "input_reference",
    ));
    rows.push(refused(
        rule::V3,
        "an empty file",
        veo_image(upload(Bytes::new(), "empty.png", "image/png"), ""),
        veo_form(Bytes::new(), "empty.png", "image/png", ""),
        "input_reference",
    ));
    rows.push(refused(
        rule::V3,
        "no file name",
        veo_image(upload(png_image(4, 4), "", "image/png"), ""),
        veo_form(png_image(4, 4), "", "image/png", ""),
        "input_reference",
    ));
    // V4: images only.
    rows.push(ok(
        rule::V4,
        "image/jpeg",
        veo_image(
            upload(Bytes::from_static(JPEG), "photo.jpg", "image/jpeg"),
            "",
        ),
    ));
    for (data, name, mime) in [
        (MP4, "clip.mp4", "video/mp4"),
        (MP3, "voice.mp3", "audio/mpeg"),
        (
            &b"\x89PNG\r\n\x1a\n\0\0\0\x0d"[..],
            "photo.png",
            "application/octet-stream",
        ),
        (&b"just some text"[..], "notes.txt", "text/plain"),
    ] {
        rows.push(refused(
            rule::V4,
            format!("{mime} upload"),
            veo_image(upload(Bytes::from_static(data), name, mime), ""),
            veo_form(Bytes::from_static(data), name, mime, ""),
            "input_reference",
        ));
    }
    rows.push(
        refused(
            rule::V4,
            "MP4 bytes labelled image/png",
            veo_image(upload(Bytes::from_static(MP4), "fake.png", "image/png"), ""),
            veo_form(Bytes::from_static(MP4), "fake.png", "image/png", ""),
            "",
        )
        .differs(
            Refused,
            "the catalog sniffs the bytes (V4 'no video or audio'); the simulator trusts the \
             part's Content-Type",
        ),
    );
    // V5: personGeneration, Veo only, allow_all.
    rows.push(ok(
        rule::V5,
        "allow_all, text to video",
        veo_person("allow_all"),
    ));
    rows.push(ok(
        rule::V5,
        "allow_all, image to video",
        veo_image(
            upload(png_image(4, 4), "person.png", "image/png"),
            "allow_all",
        ),
    ));
    for value in ["dont_allow", "allow_adult", "ALLOW_ALL", "yes"] {
        rows.push(refused(
            rule::V5,
            format!("personGeneration {value:?}"),
            veo_person(value),
            veo_json(json!({ "personGeneration": value })),
            "personGeneration",
        ));
    }
    rows.push(
        refused(
            rule::V5,
            "allow_all on a Seedance model",
            request(
                SEEDANCE,
                PROMPT,
                Some(Params::Veo(VeoParams {
                    person_generation: "allow_all".into(),
                    ..VeoParams::default()
                })),
            ),
            seedance_json(json!({"personGeneration": "allow_all"})),
            "personGeneration",
        )
        // SeedanceParams has no person_generation: the only way to ask is Veo params on a
        // Seedance model, which the family rule refuses first.
        .catalog_rule(rule::VG_FAMILY),
    );
    rows.push(differs(
        rule::V5,
        "allow_all with an image of children",
        veo_image(
            upload(png_image(4, 4), "child.png", "image/png"),
            "allow_all",
        ),
        None,
        Accepted,
        "input_reference",
        "what an image shows is for the upstream to judge (V5: refused 'at upload or at \
         generation'); the simulator stands in for it by the file name",
    ));
    // Model ids and families.
    rows.push(refused(
        rule::VG_MODEL,
        "a model no one routes",
        request("gpt-4o", PROMPT, None),
        json_body("gpt-4o", PROMPT, json!({})),
        "model",
    ));
    rows.push(differs(
        rule::VG_MODEL,
        "a Veo model the default catalog does not list",
        request("turing/veo-2.0-generate", PROMPT, None),
        Some(json_body("turing/veo-2.0-generate", PROMPT, json!({}))),
        Refused,
        "",
        "the default catalog lists only the page's model ids (operators add others); the \
         simulator routes any id containing `veo`",
    ));
    rows.push(refused(
        rule::VG_FAMILY,
        "Seedance params on a Veo model",
        request(
            VEO,
            PROMPT,
            Some(Params::Seedance(SeedanceParams {
                resolution: "720p".into(),
                ..SeedanceParams::default()
            })),
        ),
        veo_json(json!({"resolution": "720p"})),
        "resolution",
    ));
    rows.push(refused(
        rule::VG_FAMILY,
        "Veo params on a Seedance model",
        request(
            SEEDANCE,
            PROMPT,
            Some(Params::Veo(VeoParams {
                seconds: 6,
                ..VeoParams::default()
            })),
        ),
        seedance_json(json!({"seconds": "6"})),
        "seconds",
    ));
    rows.push(refused(
        rule::VG_PROMPT,
        "Veo without a prompt",
        request(VEO, "", None),
        json_body(VEO, "", json!({})),
        "prompt",
    ));
    rows
}

fn seedance_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    // S2: prompt required.
    rows.push(refused(
        rule::S2,
        "empty prompt",
        request(SEEDANCE, "", None),
        json_body(SEEDANCE, "", json!({})),
        "prompt",
    ));
    rows.push(differs(
        rule::S2,
        "a prompt of spaces",
        request(SEEDANCE, "   ", None),
        Some(json_body(SEEDANCE, "   ", json!({}))),
        Refused,
        "",
        "the catalog refuses a blank prompt; the simulator only refuses an empty one",
    ));
    // S4: resolution, plus 1080p from the page's own example (U2).
    for res in ["480p", "720p", "1080p"] {
        rows.push(ok(
            rule::S4,
            format!("resolution {res}"),
            seedance_resolution(res),
        ));
    }
    for res in ["360p", "720P", "4k", "2160p"] {
        rows.push(refused(
            rule::S4,
            format!("resolution {res}"),
            seedance_resolution(res),
            seedance_json(json!({ "resolution": res })),
            "resolution",
        ));
    }
    // S5: ratio, plus 21:9 from the page's pixel table (U3).
    for ratio in ["16:9", "9:16", "1:1", "4:3", "3:4", "21:9"] {
        rows.push(ok(
            rule::S5,
            format!("ratio {ratio}"),
            seedance_ratio(ratio),
        ));
    }
    for ratio in ["2:1", "16:10", "1:2", "9:21"] {
        rows.push(refused(
            rule::S5,
            format!("ratio {ratio}"),
            seedance_ratio(ratio),
            seedance_json(json!({ "ratio": ratio })),
            "ratio",
        ));
    }
    // S6: duration, an integer of 4, 5, 6 or 8.
    for d in [4, 5, 6, 8] {
        rows.push(ok(rule::S6, format!("duration {d}"), seedance_duration(d)));
    }
    for d in [0u32, 3, 7, 10] {
        rows.push(refused(
            rule::S6,
            format!("duration {d}"),
            seedance_duration(d),
            seedance_json(json!({ "duration": d })),
            "duration",
        ));
    }
    // A size is another spelling of a pixel-table cell.
    rows.push(ok(
        rule::VG_SIZE,
        "size 864x496",
        seedance_size("864x496", "", ""),
    ));
    rows.push(ok(
        rule::VG_SIZE,
        "size 1470x630 with ratio 21:9",
        seedance_size("1470x630", "", "21:9"),
    ));
    for (size, res, ratio) in [
        ("1920x1080", "", ""),
        ("1280x720", "480p", ""),
        ("1280x720", "", "9:16"),
        ("big", "", ""),
    ] {
        let mut extra = json!({ "size": size });
        if !res.is_empty() {
            extra["resolution"] = res.into();
        }
        if !ratio.is_empty() {
            extra["ratio"] = ratio.into();
        }
        rows.push(refused(
            rule::VG_SIZE,
            format!("size {size} resolution {res:?} ratio {ratio:?}"),
            seedance_size(size, res, ratio),
            seedance_json(extra),
            "size",
        ));
    }
    rows.extend(content_rows());
    rows
}

/// S3 item shapes and URL schemes, roles, and Ark's modes.
fn content_rows() -> Vec<Row> {
    let mut rows = Vec::new();
    let png_data_uri = format!("data:image/png;base64,{PNG_B64}");
    // S3: URL schemes.
    rows.push(ok(
        rule::S3,
        "image https URL",
        seedance_content(vec![image_item(IMG, "")]),
    ));
    rows.push(ok(
        rule::S3,
        "image data:image/png;base64 URI",
        seedance_content(vec![image_item(&png_data_uri, "")]),
    ));
    rows.push(ok(
        rule::S3,
        "video https URL",
        seedance_content(vec![video_item(VID, "")]),
    ));
    rows.push(ok(
        rule::S3,
        "audio https URL beside an image, with roles",
        seedance_content(vec![
            image_item(IMG, "reference_image"),
            audio_item(AUD, "reference_audio"),
        ]),
    ));
    rows.push(ok(
        rule::S3,
        "a text item",
        seedance_content(vec![text_item("warm light", "")]),
    ));
    for url in [
        "http://example.com/cat.jpg",
        "ftp://example.com/cat.jpg",
        "file:///etc/passwd",
        "data:text/plain;base64,aGVsbG8=",
        "data:image/png,not-base64",
        "cat.jpg",
    ] {
        rows.push(refused(
            rule::S3,
            format!("image URL {url:?}"),
            seedance_content(vec![image_item(url, "")]),
            seedance_items(&[("image_url", url, "")]),
            "content[0].image_url.url",
        ));
    }
    for url in ["http://example.com/clip.mp4", &png_data_uri] {
        rows.push(refused(
            rule::S3,
            format!("video URL {:.40}", url),
            seedance_content(vec![video_item(url, "")]),
            seedance_items(&[("video_url", url, "")]),
            "content[0].video_url.url",
        ));
    }
    rows.push(refused(
        rule::S3,
        "audio URL http://",
        seedance_content(vec![
            image_item(IMG, "reference_image"),
            audio_item("http://example.com/voice.mp3", "reference_audio"),
        ]),
        seedance_items(&[
            ("image_url", IMG, "reference_image"),
            (
                "audio_url",
                "http://example.com/voice.mp3",
                "reference_audio",
            ),
        ]),
        "content[1].audio_url.url",
    ));
    rows.push(differs(
        rule::S3,
        "a blank text item",
        seedance_content(vec![text_item("   ", "")]),
        Some(seedance_items(&[("text", "   ", "")])),
        Refused,
        "",
        "the catalog refuses a blank text item; the simulator only needs a string",
    ));
    // Roles: the five Ark roles, each only on its kind.
    rows.push(ok(
        rule::VG_ROLE,
        "image first_frame",
        seedance_content(vec![image_item(IMG, "first_frame")]),
    ));
    rows.push(ok(
        rule::VG_ROLE,
        "first_frame + last_frame",
        seedance_content(vec![
            image_item(IMG, "first_frame"),
            image_item(IMG, "last_frame"),
        ]),
    ));
    rows.push(ok(
        rule::VG_ROLE,
        "reference image + video + audio",
        seedance_content(vec![
            image_item(IMG, "reference_image"),
            video_item(VID, "reference_video"),
            audio_item(AUD, "reference_audio"),
        ]),
    ));
    for (kind, url, role) in [
        ("image_url", IMG, "reference_video"),
        ("image_url", IMG, "hero"),
        ("video_url", VID, "reference_image"),
        ("video_url", VID, "first_frame"),
        ("audio_url", AUD, "reference_video"),
    ] {
        let item = match kind {
            "image_url" => image_item(url, role),
            "video_url" => video_item(url, role),
            _ => audio_item(url, role),
        };
        // An audio item needs company (never alone): give it a video.
        let (items, wire) = if kind == "audio_url" {
            (
                vec![video_item(VID, "reference_video"), item],
                seedance_items(&[("video_url", VID, "reference_video"), (kind, url, role)]),
            )
        } else {
            (vec![item], seedance_items(&[(kind, url, role)]))
        };
        let field = if kind == "audio_url" {
            "content[1].role"
        } else {
            "content[0].role"
        };
        rows.push(refused(
            rule::VG_ROLE,
            format!("{kind} with role {role}"),
            seedance_content(items),
            wire,
            field,
        ));
    }
    rows.push(differs(
        rule::VG_ROLE,
        "a text item with a role",
        seedance_content(vec![text_item("warm light", "first_frame")]),
        Some(seedance_items(&[("text", "warm light", "first_frame")])),
        Refused,
        "",
        "the catalog says a text item takes no role; the simulator ignores a text item's role",
    ));
    // Modes: frame roles never mix with references; audio never alone; counts.
    for (case, items, wire, field) in [
        (
            "last_frame without first_frame",
            vec![image_item(IMG, "last_frame")],
            vec![("image_url", IMG, "last_frame")],
            "content",
        ),
        (
            "first_frame + reference_image",
            vec![
                image_item(IMG, "first_frame"),
                image_item(IMG, "reference_image"),
            ],
            vec![
                ("image_url", IMG, "first_frame"),
                ("image_url", IMG, "reference_image"),
            ],
            "content",
        ),
        (
            "first_frame + a reference video",
            vec![
                image_item(IMG, "first_frame"),
                video_item(VID, "reference_video"),
            ],
            vec![
                ("image_url", IMG, "first_frame"),
                ("video_url", VID, "reference_video"),
            ],
            "content",
        ),
        (
            "first_frame + an image without a role",
            vec![image_item(IMG, "first_frame"), image_item(IMG, "")],
            vec![("image_url", IMG, "first_frame"), ("image_url", IMG, "")],
            "content[1].role",
        ),
        (
            "audio alone",
            vec![audio_item(AUD, "reference_audio")],
            vec![("audio_url", AUD, "reference_audio")],
            "content",
        ),
    ] {
        rows.push(refused(
            rule::VG_MODE,
            case,
            seedance_content(items),
            seedance_items(&wire),
            field,
        ));
    }
    rows.push(refused(
        rule::VG_MODE,
        "10 reference images",
        seedance_content(vec![image_item(IMG, "reference_image"); 10]),
        seedance_items(&[("image_url", IMG, "reference_image"); 10]),
        "content",
    ));
    rows.push(refused(
        rule::VG_MODE,
        "4 reference videos",
        seedance_content(vec![video_item(VID, "reference_video"); 4]),
        seedance_items(&[("video_url", VID, "reference_video"); 4]),
        "content",
    ));
    rows.push(differs(
        rule::VG_MODE,
        "two images without roles",
        seedance_content(vec![image_item(IMG, ""), image_item(IMG, "")]),
        None,
        Accepted,
        "content[0].role",
        "the page does not make roles certain, so the catalog does not require them; the \
         simulator (after Ark) requires reference_image once there are several images",
    ));
    rows.push(differs(
        rule::VG_MODE,
        "an image and an audio without roles",
        seedance_content(vec![image_item(IMG, ""), audio_item(AUD, "")]),
        None,
        Accepted,
        "content[0].role",
        "as above: the simulator requires roles once videos or audios join an image",
    ));
    rows
}

// ---- judging -------------------------------------------------------------------------------

/// What the simulator answered, through vidgate's client.
enum SimAnswer {
    Accepted { id: String },
    Refused { message: String },
}

async fn send(client: &UpstreamClient, body: &CreateBody) -> Result<SimAnswer, UpstreamError> {
    match client.create(body).await {
        Ok(task) => Ok(SimAnswer::Accepted { id: task.id }),
        Err(UpstreamError::Rejected {
            status: 400,
            message,
            ..
        }) => Ok(SimAnswer::Refused { message }),
        Err(other) => Err(other),
    }
}

#[tokio::test]
async fn catalog_and_simulator_agree_rule_by_rule() {
    let catalog = ModelCatalog::default();
    let sim = start_sim(SimConfig {
        queued_ms: 0,
        processing_ms: 0,
        jitter: 0.0,
        ..SimConfig::default()
    })
    .await;
    let client = client(&sim);

    let rows: Vec<Row> = veo_rows().into_iter().chain(seedance_rows()).collect();
    let mut problems: Vec<String> = Vec::new();
    let mut differences: Vec<String> = Vec::new();
    let (mut sim_accepted, mut sim_refused, mut outputs_compared) = (0u64, 0u64, 0u32);

    for row in &rows {
        let label = format!("{} {}", row.rule, row.case);
        let mut problem = |text: String| problems.push(format!("[{label}] {text}"));

        // (a) the catalog
        let parsed = VideoSpec::parse(row.request.clone(), &catalog);
        let catalog_verdict = if parsed.is_ok() { Accepted } else { Refused };
        if catalog_verdict != row.catalog {
            problem(format!(
                "catalog says {catalog_verdict:?}, row expects {:?}: {:?}",
                row.catalog,
                parsed.as_ref().err()
            ));
        }
        if let Err(err) = &parsed {
            let violations = err.field_violations();
            if !violations.iter().any(|v| v.rule == row.catalog_rule) {
                problem(format!(
                    "catalog refused without naming rule {}: {violations:?}",
                    row.catalog_rule
                ));
            }
        }

        // (b) the simulator, on the body vidgate sends, or else the hand-built equivalent
        let body = match (&parsed, &row.wire) {
            (Ok(spec), None) => create_body(spec),
            (_, Some(wire)) => wire.clone(),
            (Err(_), None) => {
                problem("the catalog refuses it and the row has no wire body".into());
                continue;
            }
        };
        let answer = match send(&client, &body).await {
            Ok(answer) => answer,
            Err(err) => {
                problem(format!("the create failed other than with 400: {err:?}"));
                continue;
            }
        };
        let sim_verdict = match &answer {
            SimAnswer::Accepted { .. } => Accepted,
            SimAnswer::Refused { .. } => Refused,
        };
        match sim_verdict {
            Accepted => sim_accepted += 1,
            Refused => sim_refused += 1,
        }
        if sim_verdict != row.simulator {
            let said = match &answer {
                SimAnswer::Refused { message } => message.clone(),
                SimAnswer::Accepted { id } => format!("created {id}"),
            };
            problem(format!(
                "simulator says {sim_verdict:?}, row expects {:?}: {said}",
                row.simulator
            ));
        }
        if let SimAnswer::Refused { message } = &answer
            && !row.sim_field.is_empty()
            && !message.contains(row.sim_field)
        {
            problem(format!(
                "the simulator's message does not name `{}`: {message}",
                row.sim_field
            ));
        }

        // Accepted by both: the catalog's expected output is what the simulator renders.
        if let (Ok(spec), SimAnswer::Accepted { id }) = (&parsed, &answer) {
            let video = client.get(id).await.expect("status of a created task");
            let expected = spec.expected_output();
            if let Expectation::Known((w, h)) = expected.dimensions {
                outputs_compared += 1;
                if video.size.as_deref() != Some(format!("{w}x{h}").as_str()) {
                    problem(format!(
                        "catalog expects {w}x{h}, simulator renders {:?}",
                        video.size
                    ));
                }
            }
            if let Expectation::Known(seconds) = expected.duration_seconds {
                outputs_compared += 1;
                if video.seconds.as_deref() != Some(seconds.to_string().as_str()) {
                    problem(format!(
                        "catalog expects {seconds} s, simulator renders {:?} s",
                        video.seconds
                    ));
                }
            }
        }

        if let Some(why) = row.why {
            differences.push(format!(
                "{label}: catalog {:?}, simulator {:?}: {why}",
                row.catalog, row.simulator
            ));
        }
    }

    for line in &differences {
        println!("documented difference: {line}");
    }
    assert!(
        problems.is_empty(),
        "{} of {} rows disagree with the table:\n{}",
        problems.len(),
        rows.len(),
        problems.join("\n")
    );
    // Every row reached the simulator exactly once, and nothing else did.
    let stats = sim.stats();
    assert_eq!(stats.requests.create, rows.len() as u64);
    assert_eq!(stats.creates_accepted, sim_accepted);
    assert_eq!(
        stats.creates_rejected.get(&400).copied().unwrap_or(0),
        sim_refused
    );
    assert!(
        outputs_compared >= 10,
        "only {outputs_compared} outputs compared"
    );
}

/// V1 and S6 are also about types: Veo `seconds` is a string, Seedance `duration` an integer.
/// `create_body` writes the type the simulator enforces; the other type is refused.
#[tokio::test]
async fn wire_types_v1_seconds_string_and_s6_duration_integer() {
    let catalog = ModelCatalog::default();
    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);

    let veo_spec = VideoSpec::parse(veo_seconds(6), &catalog).expect("valid");
    let CreateBody::Json(veo_body) = create_body(&veo_spec) else {
        panic!("text to video is JSON");
    };
    assert_eq!(veo_body["seconds"], json!("6"));
    let seedance_spec = VideoSpec::parse(seedance_duration(6), &catalog).expect("valid");
    let CreateBody::Json(seedance_body) = create_body(&seedance_spec) else {
        panic!("Seedance is JSON");
    };
    assert_eq!(seedance_body["duration"], json!(6));
    client
        .create(&CreateBody::Json(veo_body))
        .await
        .expect("seconds as vidgate sends it");
    client
        .create(&CreateBody::Json(seedance_body))
        .await
        .expect("duration as vidgate sends it");

    for (body, field) in [
        (veo_json(json!({"seconds": 6})), "seconds"),
        (veo_json(json!({"seconds": "0"})), "seconds"),
        (seedance_json(json!({"duration": "6"})), "duration"),
        (seedance_json(json!({"duration": 6.5})), "duration"),
    ] {
        let err = client.create(&body).await.expect_err("wrong type refused");
        assert!(
            matches!(&err, UpstreamError::Rejected { status: 400, message, .. } if message.contains(field)),
            "{body:?}: {err:?}"
        );
        assert_eq!(err.create_failure(), CreateFailure::NotTakenPermanent);
    }
    // seconds 0 is "not given": nothing is sent, and the simulator applies its default.
    let spec = VideoSpec::parse(veo_seconds(0), &catalog).expect("valid");
    let CreateBody::Json(body) = create_body(&spec) else {
        panic!("JSON");
    };
    assert!(body.get("seconds").is_none(), "{body}");
}

/// V3 requires a MIME type. The catalog refuses an upload without one; the client cannot even
/// put one on the wire (reqwest will not build a part with an empty type), so nothing is sent.
#[tokio::test]
async fn upload_without_a_mime_type_is_refused_before_anything_is_sent_v3() {
    let parsed = VideoSpec::parse(
        veo_image(upload(png_image(4, 4), "photo.png", ""), ""),
        &ModelCatalog::default(),
    );
    let violations = parsed.expect_err("V3").field_violations();
    assert!(
        violations
            .iter()
            .any(|v| v.rule == rule::V3 && v.field == "veo.input_reference.mime_type"),
        "{violations:?}"
    );

    let sim = start_sim(SimConfig::default()).await;
    let client = client(&sim);
    let err = client
        .create(&veo_form(png_image(4, 4), "photo.png", "", ""))
        .await
        .expect_err("no MIME type");
    assert!(
        matches!(err, UpstreamError::InvalidRequest { .. }),
        "{err:?}"
    );
    assert_eq!(err.create_failure(), CreateFailure::NotTakenPermanent);
    assert_eq!(
        sim.stats().requests.create,
        0,
        "nothing reached the upstream"
    );
}

/// Every size and duration the catalog accepts renders, in the simulator, as the catalog expects:
/// the two Veo sizes x three durations, and every Seedance resolution x ratio cell. Cells the
/// catalog cannot check (1080p: the page gives no pixels) are counted, not compared.
#[tokio::test]
async fn catalog_expected_output_matches_what_the_simulator_renders() {
    let catalog = ModelCatalog::default();
    let sim = start_sim(SimConfig {
        queued_ms: 0,
        processing_ms: 0,
        jitter: 0.0,
        ..SimConfig::default()
    })
    .await;
    let client = client(&sim);

    let mut requests = Vec::new();
    for size in ["1280x720", "720x1280"] {
        for seconds in [4, 6, 8] {
            requests.push(veo(VeoParams {
                seconds,
                size: size.into(),
                ..VeoParams::default()
            }));
        }
    }
    for resolution in ["480p", "720p", "1080p"] {
        for ratio in ["16:9", "9:16", "1:1", "4:3", "3:4", "21:9"] {
            requests.push(seedance(SeedanceParams {
                resolution: resolution.into(),
                ratio: ratio.into(),
                duration: Some(5),
                ..SeedanceParams::default()
            }));
        }
    }

    let (mut compared, mut cannot_check) = (0, 0);
    let mut mismatches = Vec::new();
    for request in requests {
        let spec = VideoSpec::parse(request.clone(), &catalog).expect("a valid request");
        let task = client.create(&create_body(&spec)).await.expect("accepted");
        let video = client.get(&task.id).await.expect("status");
        let expected = spec.expected_output();
        match expected.dimensions {
            Expectation::Known((w, h)) => {
                compared += 1;
                if video.size.as_deref() != Some(format!("{w}x{h}").as_str()) {
                    mismatches.push(format!(
                        "{request:?}: expected {w}x{h}, got {:?}",
                        video.size
                    ));
                }
            }
            Expectation::CannotCheck(_) => cannot_check += 1,
        }
        match expected.duration_seconds {
            Expectation::Known(seconds) => {
                if video.seconds.as_deref() != Some(seconds.to_string().as_str()) {
                    mismatches.push(format!(
                        "{request:?}: expected {seconds} s, got {:?}",
                        video.seconds
                    ));
                }
            }
            Expectation::CannotCheck(why) => mismatches.push(format!("{request:?}: {why}")),
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    assert_eq!(
        (compared, cannot_check),
        (6 + 12, 6),
        "1080p is the only row without pixels"
    );
}
