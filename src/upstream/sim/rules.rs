//! The simulator's own rule table for `POST /videos`, written from `CONTRACT.md`.
//!
//! Deliberately independent of `vidgate::domain` (the gateway's catalog): tests that hold the
//! two against each other only prove something if they were written apart.
//!
//! Where the page gives no value, the simulator chooses one and says so here:
//! - a Veo request without `size` / `seconds` renders 1280x720 for 8 s;
//! - a Seedance request without `resolution` / `ratio` / `duration` renders 720p 16:9 for 5 s;
//! - Seedance `1080p` (U2, accepted because the page's own example sends it) renders the 720p row
//!   scaled by 1.5 and rounded to even pixels (1920x1080 for 16:9);
//! - Veo videos carry an audio track (Veo 3.x generates sound); Seedance ones unless
//!   `generate_audio` is false (S9).
//!
//! Beyond the page, the simulator is strict about mixing families (a Seedance field on a Veo
//! model, `seconds` on Seedance): a client that passes here sends each family only its own
//! fields. Unknown fields that belong to neither family are ignored, as a pass-through gateway
//! would.

use base64::Engine as _;
use serde_json::{Map, Value};

/// V1: Veo `seconds`, a string.
pub const VEO_SECONDS: &[&str] = &["4", "6", "8"];
/// V2: Veo `size`.
pub const VEO_SIZES: &[&str] = &["1280x720", "720x1280"];
/// Simulator's choice for a Veo request without `size`: the page does not say.
pub const VEO_DEFAULT_SIZE: (u32, u32) = (1280, 720);
/// Simulator's choice for a Veo request without `seconds`: the page does not say.
pub const VEO_DEFAULT_SECONDS: u32 = 8;
/// V5: accepted `personGeneration` values.
pub const PERSON_GENERATION_VALUES: &[&str] = &["allow_all"];
/// S4 plus `1080p` from the page's own example (U2).
pub const SEEDANCE_RESOLUTIONS: &[&str] = &["480p", "720p", "1080p"];
/// S5 plus `21:9` from the page's pixel table (U3).
pub const SEEDANCE_RATIOS: &[&str] = &["16:9", "4:3", "1:1", "3:4", "9:16", "21:9"];
/// S6: Seedance `duration`, an integer.
pub const SEEDANCE_DURATIONS: &[i64] = &[4, 5, 6, 8];
/// Simulator's choice when `resolution` is absent: the page gives no default.
pub const SEEDANCE_DEFAULT_RESOLUTION: &str = "720p";
/// Simulator's choice when `ratio` is absent: the page gives no default.
pub const SEEDANCE_DEFAULT_RATIO: &str = "16:9";
/// Simulator's choice when `duration` is absent: the page gives no default.
pub const SEEDANCE_DEFAULT_DURATION: u32 = 5;
/// Image formats of a `data:image/<fmt>;base64,` URI (Ark's list).
pub const DATA_IMAGE_FORMATS: &[&str] = &["jpeg", "jpg", "png", "webp", "bmp", "tiff", "gif"];
/// Ark's multimodal reference limits: images, videos, audios per request.
pub const MAX_REFERENCE_IMAGES: usize = 9;
/// See [`MAX_REFERENCE_IMAGES`].
pub const MAX_REFERENCE_VIDEOS: usize = 3;
/// See [`MAX_REFERENCE_IMAGES`].
pub const MAX_REFERENCE_AUDIOS: usize = 3;

/// Output pixels per `(resolution, ratio)`: the page's table, then the simulator's 1080p row.
const SEEDANCE_PIXELS: &[(&str, &str, u32, u32)] = &[
    ("480p", "16:9", 864, 496),
    ("480p", "4:3", 752, 560),
    ("480p", "1:1", 640, 640),
    ("480p", "3:4", 560, 752),
    ("480p", "9:16", 496, 864),
    ("480p", "21:9", 992, 432),
    ("720p", "16:9", 1280, 720),
    ("720p", "4:3", 1112, 834),
    ("720p", "1:1", 960, 960),
    ("720p", "3:4", 834, 1112),
    ("720p", "9:16", 720, 1280),
    ("720p", "21:9", 1470, 630),
    // Simulator's choice (U2): the 720p row x 1.5, rounded to even.
    ("1080p", "16:9", 1920, 1080),
    ("1080p", "4:3", 1668, 1252),
    ("1080p", "1:1", 1440, 1440),
    ("1080p", "3:4", 1252, 1668),
    ("1080p", "9:16", 1080, 1920),
    ("1080p", "21:9", 2206, 946),
];

/// Fields only Seedance models take; sent to a Veo model they are a client bug.
const SEEDANCE_ONLY_FIELDS: &[&str] = &[
    "content",
    "resolution",
    "ratio",
    "duration",
    "seed",
    "watermark",
    "generate_audio",
    "return_last_frame",
];

/// Model family, decided by the model id like a gateway's routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `veo` in the id.
    Veo,
    /// `seedance` in the id.
    Seedance,
}

impl Family {
    /// The family of a model id, or none when the gateway would not know the model.
    pub fn of(model: &str) -> Option<Family> {
        let id = model.to_ascii_lowercase();
        if id.contains("veo") {
            Some(Family::Veo)
        } else if id.contains("seedance") {
            Some(Family::Seedance)
        } else {
            None
        }
    }
}

/// A create request that passed every rule: what the task will render.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec {
    /// The model family.
    pub family: Family,
    /// The model id as sent.
    pub model: String,
    /// The prompt as sent.
    pub prompt: String,
    /// Output width in pixels.
    pub width: u32,
    /// Output height in pixels.
    pub height: u32,
    /// Output length in whole seconds.
    pub seconds: u32,
    /// Whether the video has an audio track.
    pub audio: bool,
    /// S10: whether a last frame image is offered.
    pub return_last_frame: bool,
}

impl TaskSpec {
    /// `"WxH"`, as the status object reports it.
    pub fn size_label(&self) -> String {
        format!("{}x{}", self.width, self.height)
    }
}

/// A rule a create request broke: the HTTP answer it gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// HTTP status (400 unless said otherwise).
    pub status: u16,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.param`: the offending field.
    pub param: Option<String>,
    /// `error.code`.
    pub code: &'static str,
    /// `error.message`: names the field and what is allowed.
    pub message: String,
}

impl Violation {
    /// A field outside the rules.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            status: 400,
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: "invalid_parameter",
            message: message.into(),
        }
    }

    /// A body that is not what the endpoint reads at all.
    pub fn body(code: &'static str, message: impl Into<String>) -> Self {
        Violation {
            status: 400,
            kind: "invalid_request_error",
            param: None,
            code,
            message: message.into(),
        }
    }

    /// A model the gateway does not route.
    pub fn model_not_found(model: &str) -> Self {
        Violation {
            status: 400,
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: "model_not_found",
            message: format!(
                "model: the model `{model}` does not exist or you do not have access to it"
            ),
        }
    }

    /// V5: a safety refusal of the uploaded image.
    pub fn policy(param: impl Into<String>, message: impl Into<String>) -> Self {
        Violation {
            status: 400,
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: "content_policy_violation",
            message: message.into(),
        }
    }

    /// A body larger than the simulator reads.
    pub fn too_large(limit: u64) -> Self {
        Violation {
            status: 413,
            kind: "invalid_request_error",
            param: None,
            code: "request_too_large",
            message: format!("request body exceeds {limit} bytes"),
        }
    }

    /// A content type the endpoint does not read.
    pub fn unsupported_media_type() -> Self {
        Violation {
            status: 415,
            kind: "invalid_request_error",
            param: None,
            code: "unsupported_media_type",
            message: "Content-Type must be application/json or multipart/form-data".into(),
        }
    }
}

/// What a multipart create carried, the file reduced to its description (its bytes are
/// counted while streaming and never kept).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormInput {
    /// Text fields in order.
    pub fields: Vec<(String, String)>,
    /// The `input_reference` part, if one was sent.
    pub file: Option<UploadInfo>,
}

/// The uploaded `input_reference` part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadInfo {
    /// Its file name.
    pub file_name: String,
    /// Its `Content-Type`.
    pub content_type: String,
    /// Its length in bytes.
    pub len: u64,
}

/// The multipart field name of the uploaded image (V3).
pub const UPLOAD_FIELD: &str = "input_reference";

/// V3/V4/V5 checks on a file part's headers, before any of its bytes are read.
pub fn check_upload_part(
    file_name: Option<&str>,
    content_type: Option<&str>,
    refuse_marker: &str,
) -> Result<(), Violation> {
    let Some(file_name) = file_name.filter(|n| !n.is_empty()) else {
        return Err(Violation::param(
            UPLOAD_FIELD,
            "input_reference: a file name is required on the file part",
        ));
    };
    let Some(content_type) = content_type.filter(|t| !t.is_empty()) else {
        return Err(Violation::param(
            UPLOAD_FIELD,
            "input_reference: a MIME type (Content-Type) is required on the file part",
        ));
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !essence.starts_with("image/") || essence.len() == "image/".len() {
        return Err(Violation::param(
            UPLOAD_FIELD,
            format!(
                "input_reference: only images are supported (image/jpeg, image/png, ...), got `{content_type}`"
            ),
        ));
    }
    if !refuse_marker.is_empty()
        && file_name
            .to_lowercase()
            .contains(&refuse_marker.to_lowercase())
    {
        return Err(Violation::policy(
            UPLOAD_FIELD,
            "input_reference: the image contains children and was refused by the safety policy \
             (personGeneration does not allow it)",
        ));
    }
    Ok(())
}

/// V3: the uploaded file's size so far against the limit.
pub fn check_upload_len(len: u64, max: u64) -> Result<(), Violation> {
    if len > max {
        Err(Violation::param(
            UPLOAD_FIELD,
            format!("input_reference: the file exceeds the limit of {max} bytes"),
        ))
    } else if len == 0 {
        Err(Violation::param(
            UPLOAD_FIELD,
            "input_reference: the file is empty",
        ))
    } else {
        Ok(())
    }
}

/// The prompt of a JSON body, for fault matching (before validation).
pub fn prompt_of_json(body: &Value) -> Option<String> {
    body.get("prompt")?.as_str().map(str::to_owned)
}

/// The prompt of a form, for fault matching (before validation).
pub fn prompt_of_form(form: &FormInput) -> Option<String> {
    form.fields
        .iter()
        .find(|(k, _)| k == "prompt")
        .map(|(_, v)| v.clone())
}

/// Every rule for a JSON create body.
pub fn validate_json(body: &Value) -> Result<TaskSpec, Violation> {
    let Some(obj) = body.as_object() else {
        return Err(Violation::body(
            "invalid_json",
            "the request body must be a JSON object",
        ));
    };
    let model = required_str(obj, "model")?;
    match Family::of(model) {
        Some(Family::Veo) => veo_from_json(model, obj),
        Some(Family::Seedance) => seedance_from_json(model, obj),
        None => Err(Violation::model_not_found(model)),
    }
}

/// Every rule for a multipart create (Veo image to video).
pub fn validate_form(form: &FormInput) -> Result<TaskSpec, Violation> {
    let mut seen: Vec<&str> = Vec::new();
    for (name, _) in &form.fields {
        if seen.contains(&name.as_str()) {
            return Err(Violation::param(
                name.clone(),
                format!("{name}: the field is given more than once"),
            ));
        }
        seen.push(name);
    }
    let get = |name: &str| {
        form.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(model) = get("model").filter(|m| !m.is_empty()) else {
        return Err(Violation::param("model", "model: a model id is required"));
    };
    match Family::of(model) {
        Some(Family::Veo) => {}
        Some(Family::Seedance) => {
            return Err(Violation::param(
                "model",
                "model: Seedance models take a JSON body (application/json); send images as \
                 content[].image_url instead of a multipart input_reference",
            ));
        }
        None => return Err(Violation::model_not_found(model)),
    }
    if let Some(field) = SEEDANCE_ONLY_FIELDS.iter().find(|f| get(f).is_some()) {
        return Err(seedance_field_on_veo(field));
    }
    let prompt = get("prompt").unwrap_or_default();
    veo_spec(
        model,
        prompt,
        get("size"),
        get("seconds"),
        get("personGeneration"),
    )
}

fn seedance_field_on_veo(field: &str) -> Violation {
    Violation::param(
        field,
        format!(
            "{field}: is a Seedance parameter; Veo models accept prompt, model, size, seconds, \
             personGeneration and input_reference"
        ),
    )
}

/// A present, non-null field: JSON `null` counts as absent, as a Go or serde gateway reads it.
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn required_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, Violation> {
    match field(obj, name) {
        None => Err(Violation::param(name, format!("{name}: is required"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(Violation::param(name, format!("{name}: must not be empty"))),
        Some(_) => Err(Violation::param(name, format!("{name}: must be a string"))),
    }
}

fn optional_str<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Violation> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Violation::param(name, format!("{name}: must be a string"))),
    }
}

fn optional_bool(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, Violation> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Violation::param(
            name,
            format!("{name}: must be a boolean (true or false)"),
        )),
    }
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn one_of<'a>(
    name: &str,
    value: &'a str,
    allowed: &[&str],
    family: &str,
) -> Result<&'a str, Violation> {
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(Violation::param(
            name,
            format!(
                "{name}: \"{value}\" is not supported for {family} models; allowed: {}",
                quoted(allowed)
            ),
        ))
    }
}

fn veo_from_json(model: &str, obj: &Map<String, Value>) -> Result<TaskSpec, Violation> {
    if let Some(field) = SEEDANCE_ONLY_FIELDS.iter().find(|f| obj.contains_key(**f)) {
        return Err(seedance_field_on_veo(field));
    }
    if obj.contains_key(UPLOAD_FIELD) {
        return Err(Violation::param(
            UPLOAD_FIELD,
            "input_reference: must be uploaded as a file part of a multipart/form-data request",
        ));
    }
    let prompt = required_str(obj, "prompt")?;
    let size = optional_str(obj, "size")?;
    let seconds = match field(obj, "seconds") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            return Err(Violation::param(
                "seconds",
                format!(
                    "seconds: must be a string for Veo models: {}",
                    quoted(VEO_SECONDS)
                ),
            ));
        }
    };
    let person = optional_str(obj, "personGeneration")?;
    veo_spec(model, prompt, size, seconds, person)
}

fn veo_spec(
    model: &str,
    prompt: &str,
    size: Option<&str>,
    seconds: Option<&str>,
    person: Option<&str>,
) -> Result<TaskSpec, Violation> {
    if prompt.is_empty() {
        return Err(Violation::param("prompt", "prompt: is required"));
    }
    let (width, height) = match size {
        None => VEO_DEFAULT_SIZE,
        Some(s) => parse_size(one_of("size", s, VEO_SIZES, "Veo")?).unwrap_or(VEO_DEFAULT_SIZE),
    };
    let seconds = match seconds {
        None => VEO_DEFAULT_SECONDS,
        Some(s) => one_of("seconds", s, VEO_SECONDS, "Veo")?
            .parse()
            .unwrap_or(VEO_DEFAULT_SECONDS),
    };
    if let Some(p) = person {
        one_of("personGeneration", p, PERSON_GENERATION_VALUES, "Veo")?;
    }
    Ok(TaskSpec {
        family: Family::Veo,
        model: model.to_owned(),
        prompt: prompt.to_owned(),
        width,
        height,
        seconds,
        audio: true,
        return_last_frame: false,
    })
}

fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

fn seedance_from_json(model: &str, obj: &Map<String, Value>) -> Result<TaskSpec, Violation> {
    if obj.contains_key("personGeneration") {
        return Err(Violation::param(
            "personGeneration",
            "personGeneration: is only supported by Gemini Veo models",
        ));
    }
    if obj.contains_key("seconds") {
        return Err(Violation::param(
            "seconds",
            "seconds: is a Veo parameter; Seedance models take duration, an integer: 4, 5, 6 or 8",
        ));
    }
    if obj.contains_key(UPLOAD_FIELD) {
        return Err(Violation::param(
            UPLOAD_FIELD,
            "input_reference: Seedance models take images as content[].image_url",
        ));
    }
    let prompt = required_str(obj, "prompt")?;
    match field(obj, "content") {
        None => {}
        Some(Value::Array(items)) => check_content(items)?,
        Some(_) => {
            return Err(Violation::param(
                "content",
                "content: must be an array of text, image_url, video_url or audio_url items",
            ));
        }
    }
    let resolution = optional_str(obj, "resolution")?
        .map(|r| one_of("resolution", r, SEEDANCE_RESOLUTIONS, "Seedance"))
        .transpose()?;
    let ratio = optional_str(obj, "ratio")?
        .map(|r| one_of("ratio", r, SEEDANCE_RATIOS, "Seedance"))
        .transpose()?;
    let seconds = match field(obj, "duration") {
        None => SEEDANCE_DEFAULT_DURATION,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
            let d = n.as_i64().unwrap_or(i64::MAX);
            if !SEEDANCE_DURATIONS.contains(&d) {
                return Err(Violation::param(
                    "duration",
                    format!(
                        "duration: {d} is not supported for Seedance models; allowed: 4, 5, 6, 8"
                    ),
                ));
            }
            u32::try_from(d).unwrap_or(SEEDANCE_DEFAULT_DURATION)
        }
        Some(_) => {
            return Err(Violation::param(
                "duration",
                "duration: must be an integer number of seconds (4, 5, 6 or 8), not a string or \
                 a fraction",
            ));
        }
    };
    match field(obj, "seed") {
        None => {}
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        Some(_) => return Err(Violation::param("seed", "seed: must be an integer")),
    }
    optional_bool(obj, "watermark")?;
    let audio = optional_bool(obj, "generate_audio")?.unwrap_or(true);
    let return_last_frame = optional_bool(obj, "return_last_frame")?.unwrap_or(false);
    let (width, height) = match optional_str(obj, "size")? {
        Some(size) => seedance_size(size, resolution, ratio)?,
        None => seedance_pixels(
            resolution.unwrap_or(SEEDANCE_DEFAULT_RESOLUTION),
            ratio.unwrap_or(SEEDANCE_DEFAULT_RATIO),
        )
        // Every accepted resolution x ratio has a row, so this only guards the table itself.
        .unwrap_or((1280, 720)),
    };
    Ok(TaskSpec {
        family: Family::Seedance,
        model: model.to_owned(),
        prompt: prompt.to_owned(),
        width,
        height,
        seconds,
        audio,
        return_last_frame,
    })
}

/// Pixels of a resolution x ratio, from the table.
pub fn seedance_pixels(resolution: &str, ratio: &str) -> Option<(u32, u32)> {
    SEEDANCE_PIXELS
        .iter()
        .find(|(r, q, _, _)| *r == resolution && *q == ratio)
        .map(|(_, _, w, h)| (*w, *h))
}

/// A Seedance `size` mapped onto the page's table (480p and 720p rows only: the page's table
/// has no 1080p), checked against a given resolution / ratio.
fn seedance_size(
    size: &str,
    resolution: Option<&str>,
    ratio: Option<&str>,
) -> Result<(u32, u32), Violation> {
    let page_rows = SEEDANCE_PIXELS.iter().filter(|(r, ..)| *r != "1080p");
    let found = parse_size(size).and_then(|(w, h)| {
        page_rows
            .clone()
            .find(|(_, _, pw, ph)| *pw == w && *ph == h)
    });
    let Some((row_res, row_ratio, w, h)) = found else {
        let allowed: Vec<String> = page_rows.map(|(_, _, w, h)| format!("{w}x{h}")).collect();
        return Err(Violation::param(
            "size",
            format!(
                "size: \"{size}\" is not a Seedance output size; allowed: {}",
                allowed.join(", ")
            ),
        ));
    };
    if let Some(res) = resolution.filter(|r| r != row_res) {
        return Err(Violation::param(
            "size",
            format!("size: \"{size}\" is {row_res}, which conflicts with resolution \"{res}\""),
        ));
    }
    if let Some(q) = ratio.filter(|q| q != row_ratio) {
        return Err(Violation::param(
            "size",
            format!("size: \"{size}\" is {row_ratio}, which conflicts with ratio \"{q}\""),
        ));
    }
    Ok((*w, *h))
}

#[derive(Default)]
struct ContentCount {
    /// The role of each image (none = no role given), with its index.
    images: Vec<(usize, Option<String>)>,
    videos: usize,
    audios: usize,
}

/// S3: the `content` items, their URLs and roles, and Ark's rules on mixing them.
fn check_content(items: &[Value]) -> Result<(), Violation> {
    let mut count = ContentCount::default();
    for (i, item) in items.iter().enumerate() {
        let at = |suffix: &str| format!("content[{i}]{suffix}");
        let Some(obj) = item.as_object() else {
            return Err(Violation::param(
                at(""),
                format!("{}: must be an object with a type", at("")),
            ));
        };
        let kind = match field(obj, "type") {
            Some(Value::String(t)) => t.as_str(),
            _ => {
                return Err(Violation::param(
                    at(".type"),
                    format!(
                        "{}: is required: text, image_url, video_url or audio_url",
                        at(".type")
                    ),
                ));
            }
        };
        let role = match field(obj, "role") {
            None => None,
            Some(Value::String(r)) => Some(r.as_str()),
            Some(_) => {
                return Err(Violation::param(
                    at(".role"),
                    format!("{}: must be a string", at(".role")),
                ));
            }
        };
        let check_role = |allowed: &[&str]| match role {
            Some(r) if !allowed.contains(&r) => Err(Violation::param(
                at(".role"),
                format!(
                    "{}: \"{r}\" is not allowed for {kind}; allowed: {}",
                    at(".role"),
                    quoted(allowed)
                ),
            )),
            _ => Ok(()),
        };
        match kind {
            "text" => {
                if !matches!(field(obj, "text"), Some(Value::String(_))) {
                    return Err(Violation::param(
                        at(".text"),
                        format!("{}: a text item needs a string `text`", at(".text")),
                    ));
                }
            }
            "image_url" => {
                check_role(&["first_frame", "last_frame", "reference_image"])?;
                let url = item_url(obj, kind, &at)?;
                check_image_url(url, &at(".image_url.url"))?;
                count.images.push((i, role.map(str::to_owned)));
            }
            "video_url" | "audio_url" => {
                if kind == "video_url" {
                    check_role(&["reference_video"])?;
                    count.videos += 1;
                } else {
                    check_role(&["reference_audio"])?;
                    count.audios += 1;
                }
                let url = item_url(obj, kind, &at)?;
                let param = at(&format!(".{kind}.url"));
                if !is_https_url(url) {
                    return Err(Violation::param(
                        param.clone(),
                        format!("{param}: must be an HTTPS URL"),
                    ));
                }
            }
            other => {
                return Err(Violation::param(
                    at(".type"),
                    format!(
                        "{}: \"{other}\" is not supported; allowed: \"text\", \"image_url\", \
                         \"video_url\", \"audio_url\"",
                        at(".type")
                    ),
                ));
            }
        }
    }
    check_modes(&count)
}

fn item_url<'a>(
    obj: &'a Map<String, Value>,
    kind: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<&'a str, Violation> {
    let url = field(obj, kind)
        .and_then(Value::as_object)
        .and_then(|inner| field(inner, "url"))
        .and_then(Value::as_str);
    url.ok_or_else(|| {
        let param = at(&format!(".{kind}.url"));
        Violation::param(
            param.clone(),
            format!("{param}: a {kind} item needs {{\"{kind}\": {{\"url\": \"...\"}}}}"),
        )
    })
}

fn is_https_url(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host().is_some())
}

fn check_image_url(url: &str, param: &str) -> Result<(), Violation> {
    if is_https_url(url) {
        return Ok(());
    }
    let bad = || {
        Violation::param(
            param,
            format!(
                "{param}: must be an HTTPS URL or a data:image/<format>;base64,<data> URI with \
                 format one of {}",
                quoted(DATA_IMAGE_FORMATS)
            ),
        )
    };
    let Some(rest) = url.strip_prefix("data:image/") else {
        return Err(bad());
    };
    let Some((format, payload)) = rest.split_once(";base64,") else {
        return Err(bad());
    };
    if !DATA_IMAGE_FORMATS.contains(&format.to_ascii_lowercase().as_str())
        || payload.is_empty()
        || base64::engine::general_purpose::STANDARD
            .decode(payload)
            .is_err()
    {
        return Err(bad());
    }
    Ok(())
}

/// Ark's modes do not mix: first frame (1 image), first + last frame (roles required), or
/// multimodal reference (1-9 images, 0-3 videos, 0-3 audios; audio never alone).
fn check_modes(count: &ContentCount) -> Result<(), Violation> {
    let role_is = |r: &Option<String>, want: &str| r.as_deref() == Some(want);
    let firsts = count
        .images
        .iter()
        .filter(|(_, r)| role_is(r, "first_frame"))
        .count();
    let lasts = count
        .images
        .iter()
        .filter(|(_, r)| role_is(r, "last_frame"))
        .count();
    let unroled = count.images.iter().find(|(_, r)| r.is_none());
    if firsts + lasts > 0 {
        let mixed = count.videos > 0
            || count.audios > 0
            || count
                .images
                .iter()
                .any(|(_, r)| role_is(r, "reference_image"));
        if mixed {
            return Err(Violation::param(
                "content",
                "content: first_frame / last_frame images cannot be mixed with reference images, \
                 videos or audios",
            ));
        }
        if let Some((i, _)) = unroled {
            return Err(Violation::param(
                format!("content[{i}].role"),
                format!(
                    "content[{i}].role: is required when first_frame / last_frame is used; \
                     allowed: \"first_frame\", \"last_frame\""
                ),
            ));
        }
        if firsts != 1 || lasts > 1 {
            return Err(Violation::param(
                "content",
                "content: first/last frame mode takes exactly one first_frame image and at most \
                 one last_frame image",
            ));
        }
        return Ok(());
    }
    let needs_roles = count.images.len() > 1 || count.videos > 0 || count.audios > 0;
    if needs_roles && let Some((i, _)) = unroled {
        return Err(Violation::param(
            format!("content[{i}].role"),
            format!(
                "content[{i}].role: is required with several images or with videos/audios; \
                 allowed: \"reference_image\""
            ),
        ));
    }
    if count.images.len() > MAX_REFERENCE_IMAGES {
        return Err(Violation::param(
            "content",
            format!("content: at most {MAX_REFERENCE_IMAGES} images are allowed"),
        ));
    }
    if count.videos > MAX_REFERENCE_VIDEOS {
        return Err(Violation::param(
            "content",
            format!("content: at most {MAX_REFERENCE_VIDEOS} videos are allowed"),
        ));
    }
    if count.audios > MAX_REFERENCE_AUDIOS {
        return Err(Violation::param(
            "content",
            format!("content: at most {MAX_REFERENCE_AUDIOS} audios are allowed"),
        ));
    }
    if count.audios > 0 && count.images.is_empty() && count.videos == 0 {
        return Err(Violation::param(
            "content",
            "content: audio_url needs at least one image or video (audio is never alone)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seedance_table_matches_the_page_for_every_480p_and_720p_cell() {
        let page = [
            ("480p", "16:9", (864, 496)),
            ("480p", "21:9", (992, 432)),
            ("720p", "4:3", (1112, 834)),
            ("720p", "21:9", (1470, 630)),
            ("720p", "9:16", (720, 1280)),
        ];
        for (res, ratio, px) in page {
            assert_eq!(seedance_pixels(res, ratio), Some(px), "{res} {ratio}");
        }
        for res in SEEDANCE_RESOLUTIONS {
            for ratio in SEEDANCE_RATIOS {
                let (w, h) = seedance_pixels(res, ratio).expect("every accepted cell has pixels");
                assert!(w % 2 == 0 && h % 2 == 0, "{res} {ratio}");
            }
        }
    }

    #[test]
    fn seedance_size_maps_onto_the_table_and_conflicts_are_errors() {
        let spec = |body: Value| validate_json(&body);
        let base = |extra: Value| {
            let mut b = json!({"model": "doubao-seedance-2-0-260128", "prompt": "p"});
            if let (Some(b), Some(e)) = (b.as_object_mut(), extra.as_object()) {
                b.extend(e.clone());
            }
            b
        };
        let ok = spec(base(json!({"size": "992x432"}))).expect("table size");
        assert_eq!((ok.width, ok.height), (992, 432));
        for bad in [
            json!({"size": "1280x720", "resolution": "480p"}),
            json!({"size": "1280x720", "ratio": "9:16"}),
            json!({"size": "1920x1080"}),
            json!({"size": "big"}),
        ] {
            let v = spec(base(bad.clone())).expect_err("must be refused");
            assert_eq!(v.param.as_deref(), Some("size"), "{bad}");
        }
    }

    #[test]
    fn family_is_decided_by_the_model_id() {
        assert_eq!(Family::of("turing/veo-3.1-generate"), Some(Family::Veo));
        assert_eq!(
            Family::of("doubao-seedance-2-0-260128"),
            Some(Family::Seedance)
        );
        assert_eq!(Family::of("gpt-4o"), None);
    }
}
