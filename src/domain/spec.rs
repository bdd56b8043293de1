//! [`VideoSpec`]: a create request that passed every rule that can be checked locally.
//!
//! [`VideoSpec::parse`] is the one place where a [`VideoRequest`] is checked against the
//! [`ModelCatalog`] (parse, don't validate): past it, no code re-checks. It collects every
//! violation instead of stopping at the first, so a caller fixes a request in one round.
//!
//! What is enforced, beyond the numbered rules of CONTRACT.md (V1-V5, S2-S6) and the `VG-` rules
//! listed in [`crate::domain::rule`]:
//!
//! - Ark content modes (`VG-MODE`), as far as they are certain: frame roles (`first_frame`,
//!   `last_frame`) never mix with reference roles, videos or audios; at most one first and one
//!   last frame; `last_frame` needs `first_frame`; frame mode takes at most 2 images, each with a
//!   frame role once any image has one; at most 9 images, 3 videos, 3 audios; audio never alone.
//! - Not enforced, because the page does not make them certain: that reference mode has at least
//!   one image (video continuation sends only a `video_url`), that un-roled images in a
//!   multi-image request carry `reference_image`, Ark's accepted image/video/audio formats and
//!   durations of media behind URLs (vidgate fetches nothing on a caller's behalf), and the range
//!   of `seed`.
//! - Uploaded images (V4) and Seedance inline images are sniffed: a known format (JPEG, PNG, GIF,
//!   WebP, BMP, TIFF) must match its magic bytes, and bytes that are recognisably video or audio
//!   are refused. Other bytes pass: the upstream may know formats this check does not.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::catalog::{
    ModelCatalog, ModelFamily, ModelRules, PixelSize, SeedanceRules, VeoRules, check_model_id,
};
use crate::domain::echo::echo;
use crate::domain::request::{
    ContentItem, ContentKind, GenericParams, InputImage, MediaRef, MediaSource, Params,
    SeedanceParams, VeoParams, VideoRequest,
};
use crate::domain::violation::{FieldViolation, ValidationError, rule};

/// Longest prompt (and Seedance text item) accepted, in characters. vidgate's own bound, not the
/// upstream's (the page states none): generous for any real description, and it keeps a
/// runaway client from storing and forwarding megabytes of text.
pub const MAX_PROMPT_CHARS: usize = 16_384;

/// Most Seedance `content` items accepted. Ark's largest mode takes 9 images, 3 videos and 3
/// audios; this leaves room for text items and stays small enough to check every item.
pub const MAX_CONTENT_ITEMS: usize = 32;

/// Longest `https://` media URL accepted. Signed object-store URLs are 1-2 KiB; 16 KiB is far
/// beyond any real one. `data:` URIs are bounded by [`ARK_MAX_IMAGE_BYTES`] instead.
pub const MAX_URL_CHARS: usize = 16 * 1024;

/// Longest upload file name, in bytes: the common file-system limit; it goes into a header.
pub const MAX_FILENAME_BYTES: usize = 255;

/// Longest generic `seconds` string: a number, so a handful of characters.
pub const MAX_GENERIC_SECONDS_CHARS: usize = 16;

/// Ark: an image is at most 30 MB. Read as MiB, the larger reading, so that vidgate only refuses
/// what Ark certainly refuses.
pub const ARK_MAX_IMAGE_BYTES: u64 = 30 * 1024 * 1024;

/// Ark: a request body is at most 64 MB (read as MiB, as above).
pub const ARK_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Ark reference mode: at most 9 images.
pub const ARK_MAX_IMAGES: usize = 9;
/// Ark reference mode: at most 3 videos.
pub const ARK_MAX_VIDEOS: usize = 3;
/// Ark reference mode: at most 3 audios.
pub const ARK_MAX_AUDIOS: usize = 3;

/// A validated, provider-neutral create request.
///
/// It has a stored form (serde; bytes as base64), which is what vidgate keeps of an accepted
/// job and reads back to send it (`crate::submission`). Reading it back does not run
/// [`VideoSpec::parse`]: the stored form is trusted because only vidgate writes it, into its
/// own store, from a spec that passed. Deserialising checks only that the family and the
/// params agree; the rules themselves are guarded by [`VideoSpec::recheck`], which runs
/// whenever the catalog's rules for the model differ from those the spec passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredSpecFields")]
pub struct VideoSpec {
    model: String,
    family: ModelFamily,
    prompt: String,
    params: SpecParams,
}

/// [`VideoSpec`]'s fields as stored, before the family is checked against the params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSpecFields {
    model: String,
    family: ModelFamily,
    prompt: String,
    params: SpecParams,
}

impl TryFrom<StoredSpecFields> for VideoSpec {
    type Error = String;

    fn try_from(s: StoredSpecFields) -> Result<Self, Self::Error> {
        let params_family = match &s.params {
            SpecParams::Veo(_) => ModelFamily::Veo,
            SpecParams::Seedance(_) => ModelFamily::Seedance,
            SpecParams::Generic(_) => ModelFamily::Generic,
        };
        if params_family != s.family {
            return Err(format!(
                "stored spec of model {:?} is of family {} but holds {params_family} params",
                s.model, s.family
            ));
        }
        Ok(VideoSpec {
            model: s.model,
            family: s.family,
            prompt: s.prompt,
            params: s.params,
        })
    }
}

/// The family's parameters after validation and normalisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpecParams {
    /// For a Veo model.
    Veo(VeoSpec),
    /// For a Seedance model.
    Seedance(SeedanceSpec),
    /// For a generic model.
    Generic(GenericSpec),
}

/// Validated Veo parameters. `None` = not sent (upstream default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeoSpec {
    seconds: Option<u32>,
    size: Option<PixelSize>,
    input_reference: Option<InputImage>,
    person_generation: Option<String>,
}

impl VeoSpec {
    /// V1 seconds.
    pub fn seconds(&self) -> Option<u32> {
        self.seconds
    }
    /// V2 size.
    pub fn size(&self) -> Option<PixelSize> {
        self.size
    }
    /// V3/V4 image (MIME type lower-cased); `Some` = image to video (multipart).
    pub fn input_reference(&self) -> Option<&InputImage> {
        self.input_reference.as_ref()
    }
    /// V5 `personGeneration`.
    pub fn person_generation(&self) -> Option<&str> {
        self.person_generation.as_deref()
    }
}

/// Validated Seedance parameters. `None` = not sent; `size` is already mapped onto
/// `resolution` + `ratio`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedanceSpec {
    content: Vec<SeedanceItem>,
    resolution: Option<String>,
    ratio: Option<String>,
    duration: Option<u32>,
    seed: Option<i64>,
    watermark: Option<bool>,
    generate_audio: Option<bool>,
    return_last_frame: Option<bool>,
    /// The pixel table's cell for resolution x ratio, when both are known and the table has it.
    pixels: Option<PixelSize>,
}

impl SeedanceSpec {
    /// S3 content items, in order.
    pub fn content(&self) -> &[SeedanceItem] {
        &self.content
    }
    /// S4 (possibly from `size`).
    pub fn resolution(&self) -> Option<&str> {
        self.resolution.as_deref()
    }
    /// S5 (possibly from `size`).
    pub fn ratio(&self) -> Option<&str> {
        self.ratio.as_deref()
    }
    /// S6, seconds.
    pub fn duration(&self) -> Option<u32> {
        self.duration
    }
    /// S7.
    pub fn seed(&self) -> Option<i64> {
        self.seed
    }
    /// S8.
    pub fn watermark(&self) -> Option<bool> {
        self.watermark
    }
    /// S9.
    pub fn generate_audio(&self) -> Option<bool> {
        self.generate_audio
    }
    /// S10.
    pub fn return_last_frame(&self) -> Option<bool> {
        self.return_last_frame
    }
    /// Output pixels from the catalog's table, when resolution and ratio are known and the
    /// table has that cell.
    pub fn pixels(&self) -> Option<PixelSize> {
        self.pixels
    }
}

/// One validated Seedance content item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedanceItem {
    kind: SeedanceItemKind,
    role: Option<ContentRole>,
}

impl SeedanceItem {
    /// The raw item this is the validated form of.
    fn to_request(&self) -> ContentItem {
        let url = |url: &String| MediaRef {
            source: MediaSource::Url(url.clone()),
            mime_type: String::new(),
        };
        let kind = match &self.kind {
            SeedanceItemKind::Text(text) => ContentKind::Text(text.clone()),
            SeedanceItemKind::Image(ImageSource::Url(u)) => ContentKind::Image(url(u)),
            SeedanceItemKind::Image(ImageSource::Data { mime_type, data }) => {
                ContentKind::Image(MediaRef {
                    source: MediaSource::Data(data.clone()),
                    mime_type: mime_type.clone(),
                })
            }
            SeedanceItemKind::Video(u) => ContentKind::Video(url(u)),
            SeedanceItemKind::Audio(u) => ContentKind::Audio(url(u)),
        };
        ContentItem {
            kind,
            role: self
                .role
                .map(ContentRole::as_str)
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// What the item is.
    pub fn kind(&self) -> &SeedanceItemKind {
        &self.kind
    }
    /// Its Ark role, if any (always one that fits the kind).
    pub fn role(&self) -> Option<ContentRole> {
        self.role
    }
}

/// A validated content item's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeedanceItemKind {
    /// Non-empty text.
    Text(String),
    /// An image by `https://` URL, `data:` URI, or inline bytes.
    Image(ImageSource),
    /// An `https://` video URL.
    Video(String),
    /// An `https://` audio URL.
    Audio(String),
}

/// Where a validated Seedance image is.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageSource {
    /// `https://` URL or `data:image/<fmt>;base64,` URI, sent as given.
    Url(String),
    /// Inline bytes, sent as a `data:` URI built from the (lower-cased, `image/*`) MIME type.
    Data {
        /// `image/<fmt>`.
        mime_type: String,
        /// The image.
        #[serde(with = "super::base64_bytes")]
        data: Bytes,
    },
}

impl ImageSource {
    /// The URL to send upstream: as given, or a `data:` URI for inline bytes.
    pub fn to_url(&self) -> String {
        match self {
            ImageSource::Url(url) => url.clone(),
            ImageSource::Data { mime_type, data } => format!(
                "data:{mime_type};base64,{}",
                base64::engine::general_purpose::STANDARD.encode(data)
            ),
        }
    }

    /// Length of [`ImageSource::to_url`] without building it.
    fn url_len(&self) -> u64 {
        match self {
            ImageSource::Url(url) => url.len() as u64,
            ImageSource::Data { mime_type, data } => {
                let encoded = (data.len() as u64).div_ceil(3) * 4;
                ("data:;base64,".len() + mime_type.len()) as u64 + encoded
            }
        }
    }
}

impl std::fmt::Debug for ImageSource {
    // Images can be megabytes (a data: URI too): show their length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Url(url) if is_data_uri(url) => {
                f.debug_struct("DataUri").field("len", &url.len()).finish()
            }
            ImageSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
            ImageSource::Data { mime_type, data } => f
                .debug_struct("Data")
                .field("mime_type", mime_type)
                .field("len", &data.len())
                .finish(),
        }
    }
}

/// Ark content roles; stored by their wire spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentRole {
    /// Image: the first frame.
    FirstFrame,
    /// Image: the last frame (with a first frame).
    LastFrame,
    /// Image: a reference image.
    ReferenceImage,
    /// Video: a reference video.
    ReferenceVideo,
    /// Audio: a reference audio.
    ReferenceAudio,
}

impl ContentRole {
    const ALL: [ContentRole; 5] = [
        ContentRole::FirstFrame,
        ContentRole::LastFrame,
        ContentRole::ReferenceImage,
        ContentRole::ReferenceVideo,
        ContentRole::ReferenceAudio,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ContentRole::FirstFrame => "first_frame",
            ContentRole::LastFrame => "last_frame",
            ContentRole::ReferenceImage => "reference_image",
            ContentRole::ReferenceVideo => "reference_video",
            ContentRole::ReferenceAudio => "reference_audio",
        }
    }

    fn parse(text: &str) -> Option<ContentRole> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// The content kind (API.md field name) this role belongs on.
    fn kind(self) -> &'static str {
        match self {
            ContentRole::FirstFrame | ContentRole::LastFrame | ContentRole::ReferenceImage => {
                "image"
            }
            ContentRole::ReferenceVideo => "video",
            ContentRole::ReferenceAudio => "audio",
        }
    }

    fn is_frame(self) -> bool {
        matches!(self, ContentRole::FirstFrame | ContentRole::LastFrame)
    }
}

/// Validated generic parameters, passed through as strings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericSpec {
    size: Option<String>,
    seconds: Option<String>,
    input_reference: Option<InputImage>,
}

impl GenericSpec {
    /// `WxH`.
    pub fn size(&self) -> Option<&str> {
        self.size.as_deref()
    }
    /// A positive number, as given.
    pub fn seconds(&self) -> Option<&str> {
        self.seconds.as_deref()
    }
    /// The uploaded image (V3/V4 checked; MIME type lower-cased).
    pub fn input_reference(&self) -> Option<&InputImage> {
        self.input_reference.as_ref()
    }
}

impl VideoSpec {
    /// Checks `req` against `catalog`, reporting every violation at once.
    pub fn parse(req: VideoRequest, catalog: &ModelCatalog) -> Result<VideoSpec, ValidationError> {
        let VideoRequest {
            model,
            prompt,
            params,
        } = req;
        let mut found = Violations::default();

        let Some(rules) = catalog.resolve(&model) else {
            if !model.is_empty() {
                return Err(ValidationError::UnknownModel {
                    model,
                    known: catalog.model_ids().map(str::to_owned).collect(),
                });
            }
            // Without a model there is no family to check params against; the prompt is still
            // checked so the caller learns of both at once.
            found.push("model", rule::VG_MODEL, "model is required");
            check_prompt(&prompt, rule::VG_PROMPT, &mut found);
            return Err(found.into_error(model));
        };
        // Listed ids were checked when the catalog loaded; this guards passed-through ones.
        if let Err(problem) = check_model_id(&model) {
            found.push("model", rule::VG_MODEL, problem);
        }

        let family = rules.family();
        let prompt_rule = match family {
            ModelFamily::Seedance => rule::S2,
            ModelFamily::Veo | ModelFamily::Generic => rule::VG_PROMPT,
        };
        check_prompt(&prompt, prompt_rule, &mut found);

        let params = match (rules, params) {
            (ModelRules::Veo(_), None) => SpecParams::Veo(VeoSpec::default()),
            (ModelRules::Seedance(_), None) => SpecParams::Seedance(SeedanceSpec::default()),
            (ModelRules::Generic, None) => SpecParams::Generic(GenericSpec::default()),
            (ModelRules::Veo(r), Some(Params::Veo(p))) => {
                SpecParams::Veo(veo(p, r, catalog.max_upload_bytes(), &mut found))
            }
            (ModelRules::Seedance(r), Some(Params::Seedance(p))) => {
                SpecParams::Seedance(seedance(p, r, prompt.len(), &mut found))
            }
            (ModelRules::Generic, Some(Params::Generic(p))) => {
                SpecParams::Generic(generic(p, catalog.max_upload_bytes(), &mut found))
            }
            (_, Some(other)) => {
                found.push(
                    other.field_name(),
                    rule::VG_FAMILY,
                    format!(
                        "model {} is a {family} model: send `{family}` params (or none), not \
                         `{}`",
                        echo(&model).quoted(),
                        other.field_name()
                    ),
                );
                return Err(found.into_error(model));
            }
        };

        if found.0.is_empty() {
            Ok(VideoSpec {
                model,
                family,
                prompt,
                params,
            })
        } else {
            Err(found.into_error(model))
        }
    }

    /// Checks this spec, once, against `catalog` as it is now: for a spec accepted under
    /// other rules of its model (the catalog changed since). The spec is rebuilt as the request
    /// it normalises ([`VideoSpec::to_request`]) and parsed again, so every rule applies as at
    /// accept, and the error names each field and rule that no longer holds.
    pub fn recheck(&self, catalog: &ModelCatalog) -> Result<(), ValidationError> {
        VideoSpec::parse(self.to_request(), catalog).map(|_| ())
    }

    /// The request this spec is the validated form of: parsed against the catalog it passed,
    /// it gives this spec again. What validation normalised stays normalised (a Seedance
    /// `size` is its resolution and ratio; a MIME type is lower-cased; a URL item's optional
    /// MIME type, checked then dropped, is not sent again).
    pub fn to_request(&self) -> VideoRequest {
        let params = match &self.params {
            SpecParams::Veo(p) => Params::Veo(VeoParams {
                seconds: p.seconds.unwrap_or(0),
                size: p.size.map(|s| s.to_string()).unwrap_or_default(),
                input_reference: p.input_reference.clone(),
                person_generation: p.person_generation.clone().unwrap_or_default(),
            }),
            SpecParams::Seedance(p) => Params::Seedance(SeedanceParams {
                content: p.content.iter().map(SeedanceItem::to_request).collect(),
                resolution: p.resolution.clone().unwrap_or_default(),
                ratio: p.ratio.clone().unwrap_or_default(),
                duration: p.duration,
                seed: p.seed,
                watermark: p.watermark,
                generate_audio: p.generate_audio,
                return_last_frame: p.return_last_frame,
                size: String::new(),
            }),
            SpecParams::Generic(p) => Params::Generic(GenericParams {
                size: p.size.clone().unwrap_or_default(),
                seconds: p.seconds.clone().unwrap_or_default(),
                input_reference: p.input_reference.clone(),
            }),
        };
        VideoRequest {
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            params: Some(params),
        }
    }

    /// The model id.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model's family.
    pub fn family(&self) -> ModelFamily {
        self.family
    }

    /// The prompt, as given.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// The family's validated parameters.
    pub fn params(&self) -> &SpecParams {
        &self.params
    }

    /// The uploaded image (Veo or generic image to video), if any.
    pub fn input_image(&self) -> Option<&InputImage> {
        match &self.params {
            SpecParams::Veo(p) => p.input_reference(),
            SpecParams::Generic(p) => p.input_reference(),
            SpecParams::Seedance(_) => None,
        }
    }

    /// S10: the caller asked for the last frame too.
    pub fn has_last_frame_requested(&self) -> bool {
        matches!(&self.params, SpecParams::Seedance(p) if p.return_last_frame == Some(true))
    }

    /// S9 as asked: `Some(false)` = no audio wanted, `None` = not said (for Seedance the upstream
    /// default is true; for other families the page says nothing about audio).
    pub fn wants_audio(&self) -> Option<bool> {
        match &self.params {
            SpecParams::Seedance(p) => p.generate_audio,
            SpecParams::Veo(_) | SpecParams::Generic(_) => None,
        }
    }
}

/// Violations collected so far.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn push(&mut self, field: impl Into<String>, rule: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, rule, description));
    }

    fn into_error(self, model: String) -> ValidationError {
        ValidationError::Invalid {
            model,
            violations: self.0,
        }
    }
}

fn list<T: std::fmt::Display>(values: &[T]) -> String {
    values
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_prompt(prompt: &str, required_rule: &str, found: &mut Violations) {
    if prompt.trim().is_empty() {
        found.push(
            "prompt",
            required_rule,
            "prompt is required and must not be blank",
        );
    }
    check_text_length("prompt", prompt, found);
}

fn check_text_length(field: &str, text: &str, found: &mut Violations) {
    // Bytes bound chars from above: count only when it could matter.
    if text.len() > MAX_PROMPT_CHARS {
        let count = text.chars().count();
        if count > MAX_PROMPT_CHARS {
            found.push(
                field,
                rule::VG_LIMIT,
                format!("{field} has at most {MAX_PROMPT_CHARS} characters (got {count})"),
            );
        }
    }
}

fn veo(p: VeoParams, rules: &VeoRules, max_upload: u64, found: &mut Violations) -> VeoSpec {
    let seconds = match p.seconds {
        0 => None,
        s if rules.seconds().contains(&s) => Some(s),
        s => {
            found.push(
                "veo.seconds",
                rule::V1,
                format!(
                    "seconds must be one of {}, or 0 for the upstream default (got {s})",
                    list(rules.seconds())
                ),
            );
            None
        }
    };
    let size = if p.size.is_empty() {
        None
    } else {
        match PixelSize::parse(&p.size).filter(|s| rules.sizes().contains(s)) {
            Some(size) => Some(size),
            None => {
                found.push(
                    "veo.size",
                    rule::V2,
                    format!(
                        "size must be one of {}, or empty for the upstream default (got {})",
                        list(rules.sizes()),
                        echo(&p.size).quoted()
                    ),
                );
                None
            }
        }
    };
    let input_reference = p
        .input_reference
        .and_then(|image| upload("veo.input_reference", image, max_upload, found));
    let person_generation = if p.person_generation.is_empty() {
        None
    } else if rules.person_generation().contains(&p.person_generation) {
        Some(p.person_generation)
    } else {
        let allowed = if rules.person_generation().is_empty() {
            "this model accepts no person_generation: leave it empty".to_owned()
        } else {
            format!(
                "person_generation must be one of {}, or empty to not send it",
                list(rules.person_generation())
            )
        };
        found.push(
            "veo.person_generation",
            rule::V5,
            format!("{allowed} (got {})", echo(&p.person_generation).quoted()),
        );
        None
    };
    VeoSpec {
        seconds,
        size,
        input_reference,
        person_generation,
    }
}

/// V3 and V4 for an uploaded image; returns it with its MIME type lower-cased.
fn upload(
    field: &str,
    image: InputImage,
    max_upload: u64,
    found: &mut Violations,
) -> Option<InputImage> {
    let before = found.0.len();
    let data_field = format!("{field}.data");
    if image.data.is_empty() {
        found.push(&data_field, rule::V3, "the image must not be empty");
    } else if image.data.len() as u64 > max_upload {
        found.push(
            &data_field,
            rule::V3,
            format!(
                "the image must be at most {max_upload} bytes (got {})",
                image.data.len()
            ),
        );
    }
    let filename_field = format!("{field}.filename");
    if image.filename.is_empty() {
        found.push(
            &filename_field,
            rule::V3,
            "a file name is required with the image (e.g. photo.jpg)",
        );
    } else if image.filename.len() > MAX_FILENAME_BYTES
        || image
            .filename
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        found.push(
            &filename_field,
            rule::VG_FILENAME,
            format!(
                "the file name must be at most {MAX_FILENAME_BYTES} bytes without control \
                 characters, quotes or backslashes (got {})",
                echo(&image.filename).quoted()
            ),
        );
    }
    let mime_field = format!("{field}.mime_type");
    let mime_type = image.mime_type.to_ascii_lowercase();
    if image.mime_type.is_empty() {
        found.push(
            &mime_field,
            rule::V3,
            "a MIME type is required with the image (e.g. image/jpeg)",
        );
    } else {
        match parse_mime(&mime_type) {
            Some(("image", subtype)) => {
                if !image.data.is_empty()
                    && let Some(problem) = sniff_image(subtype, &image.data)
                {
                    found.push(&data_field, rule::V4, problem);
                }
            }
            _ => found.push(
                &mime_field,
                rule::V4,
                format!(
                    "images only: the MIME type must be image/* such as image/jpeg or image/png \
                     (got {})",
                    echo(&image.mime_type).quoted()
                ),
            ),
        }
    }
    (found.0.len() == before).then(|| InputImage { mime_type, ..image })
}

/// Splits `type/subtype` made of RFC 9110 token characters; no parameters.
fn parse_mime(mime: &str) -> Option<(&str, &str)> {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let (top, sub) = mime.split_once('/')?;
    (is_token(top) && is_token(sub)).then_some((top, sub))
}

/// An image format whose magic bytes are certain.
struct ImageFormat {
    /// The MIME subtypes (`image/<subtype>`) that name it.
    subtypes: &'static [&'static str],
    /// Whether bytes start like this format.
    matches: fn(&[u8]) -> bool,
    /// Its name in messages.
    label: &'static str,
}

const KNOWN_IMAGE_FORMATS: [ImageFormat; 6] = [
    ImageFormat {
        subtypes: &["jpeg", "jpg", "pjpeg"],
        matches: infer::image::is_jpeg,
        label: "JPEG",
    },
    ImageFormat {
        subtypes: &["png", "apng"],
        matches: infer::image::is_png,
        label: "PNG",
    },
    ImageFormat {
        subtypes: &["gif"],
        matches: infer::image::is_gif,
        label: "GIF",
    },
    ImageFormat {
        subtypes: &["webp"],
        matches: infer::image::is_webp,
        label: "WebP",
    },
    ImageFormat {
        subtypes: &["bmp", "x-bmp", "x-ms-bmp"],
        matches: infer::image::is_bmp,
        label: "BMP",
    },
    ImageFormat {
        subtypes: &["tiff", "tif"],
        matches: infer::image::is_tiff,
        label: "TIFF",
    },
];

/// Checks that `data` can be the image `image/<subtype>` claims; a description of the mismatch
/// otherwise. Only certain mismatches are reported (see the module docs).
fn sniff_image(subtype: &str, data: &[u8]) -> Option<String> {
    let detected = infer::get(data);
    // Only video and audio are certain: text-like matchers would flag an SVG (XML) image.
    if let Some(kind) = detected
        && matches!(
            kind.matcher_type(),
            infer::MatcherType::Video | infer::MatcherType::Audio
        )
    {
        return Some(format!(
            "images only: the data is {}, not an image",
            kind.mime_type()
        ));
    }
    let format = KNOWN_IMAGE_FORMATS
        .iter()
        .find(|f| f.subtypes.contains(&subtype))?;
    if (format.matches)(data) {
        return None;
    }
    let looks = detected
        .map(|kind| format!(" (it looks like {})", kind.mime_type()))
        .unwrap_or_default();
    Some(format!(
        "the MIME type says image/{subtype} but the data is not {}{looks}",
        format.label
    ))
}

fn seedance(
    p: SeedanceParams,
    rules: &SeedanceRules,
    prompt_bytes: usize,
    found: &mut Violations,
) -> SeedanceSpec {
    let mut resolution = allowed_value(
        &p.resolution,
        rules.resolutions(),
        "seedance.resolution",
        "resolution",
        rule::S4,
        found,
    );
    let mut ratio = allowed_value(
        &p.ratio,
        rules.ratios(),
        "seedance.ratio",
        "ratio",
        rule::S5,
        found,
    );
    let duration = match p.duration {
        Some(d) if !rules.durations().contains(&d) => {
            found.push(
                "seedance.duration",
                rule::S6,
                format!(
                    "duration must be one of {} seconds (got {d})",
                    list(rules.durations())
                ),
            );
            None
        }
        other => other,
    };

    if !p.size.is_empty() {
        match PixelSize::parse(&p.size).and_then(|s| rules.cell_for_size(s)) {
            None => {
                let cells = rules
                    .pixel_table()
                    .iter()
                    .map(|c| format!("{} ({} {})", c.size, c.resolution, c.ratio))
                    .collect::<Vec<_>>();
                found.push(
                    "seedance.size",
                    rule::VG_SIZE,
                    format!(
                        "size must be one of the pixel table's sizes: {} (got {})",
                        cells.join(", "),
                        echo(&p.size).quoted()
                    ),
                );
            }
            Some(cell) => {
                // A size is another spelling of resolution + ratio; both given must agree.
                for (field, given, from_size) in [
                    ("resolution", &p.resolution, &cell.resolution),
                    ("ratio", &p.ratio, &cell.ratio),
                ] {
                    if !given.is_empty() && given != from_size {
                        found.push(
                            "seedance.size",
                            rule::VG_SIZE,
                            format!(
                                "size {} is {} {}, which conflicts with {field} {}",
                                cell.size,
                                cell.resolution,
                                cell.ratio,
                                echo(given).quoted()
                            ),
                        );
                    }
                }
                resolution = Some(cell.resolution.clone());
                ratio = Some(cell.ratio.clone());
            }
        }
    }

    let content = content_items(p.content, prompt_bytes, found);
    let pixels = match (&resolution, &ratio) {
        (Some(res), Some(ratio)) => rules.pixels(res, ratio),
        _ => None,
    };
    SeedanceSpec {
        content,
        resolution,
        ratio,
        duration,
        seed: p.seed,
        watermark: p.watermark,
        generate_audio: p.generate_audio,
        return_last_frame: p.return_last_frame,
        pixels,
    }
}

/// An optional string field that must be one of `allowed` when given.
fn allowed_value(
    given: &str,
    allowed: &[String],
    field: &str,
    name: &str,
    rule: &str,
    found: &mut Violations,
) -> Option<String> {
    if given.is_empty() {
        None
    } else if allowed.iter().any(|a| a == given) {
        Some(given.to_owned())
    } else {
        found.push(
            field,
            rule,
            format!(
                "{name} must be one of {}, or empty to not send it (got {})",
                list(allowed),
                echo(given).quoted()
            ),
        );
        None
    }
}

fn content_items(
    items: Vec<crate::domain::request::ContentItem>,
    prompt_bytes: usize,
    found: &mut Violations,
) -> Vec<SeedanceItem> {
    if items.len() > MAX_CONTENT_ITEMS {
        // Checking each of an unbounded list would report an unbounded list of violations.
        found.push(
            "seedance.content",
            rule::VG_LIMIT,
            format!(
                "content has at most {MAX_CONTENT_ITEMS} items (got {})",
                items.len()
            ),
        );
        return Vec::new();
    }

    let mut valid = Vec::with_capacity(items.len());
    // (index, kind field name, role) of every item, valid or not, for the mode rules.
    let mut shape = Vec::with_capacity(items.len());
    let mut body_bytes = prompt_bytes as u64;
    for (index, item) in items.into_iter().enumerate() {
        let path = format!("seedance.content[{index}]");
        let kind_name = item.kind.field_name();
        let role = content_role(&path, kind_name, &item.role, found);
        shape.push((index, kind_name, role));
        if let Some(kind) = content_kind(&path, item.kind, found) {
            body_bytes += match &kind {
                SeedanceItemKind::Text(text) => text.len() as u64,
                SeedanceItemKind::Image(image) => image.url_len(),
                SeedanceItemKind::Video(url) | SeedanceItemKind::Audio(url) => url.len() as u64,
            };
            valid.push(SeedanceItem { kind, role });
        }
    }
    check_modes(&shape, found);
    if body_bytes > ARK_MAX_BODY_BYTES {
        found.push(
            "seedance.content",
            rule::VG_ARK_LIMIT,
            format!(
                "the request body would be over {body_bytes} bytes; Ark accepts at most \
                 {ARK_MAX_BODY_BYTES}"
            ),
        );
    }
    valid
}

fn content_role(
    path: &str,
    kind_name: &str,
    role: &str,
    found: &mut Violations,
) -> Option<ContentRole> {
    if role.is_empty() {
        return None;
    }
    let fits: Vec<&str> = ContentRole::ALL
        .into_iter()
        .filter(|r| r.kind() == kind_name)
        .map(ContentRole::as_str)
        .collect();
    match ContentRole::parse(role) {
        Some(parsed) if parsed.kind() == kind_name => Some(parsed),
        _ => {
            let allowed = if fits.is_empty() {
                format!("a {kind_name} item takes no role")
            } else {
                format!(
                    "the role of a {kind_name} item must be {}, or empty",
                    fits.join(" or ")
                )
            };
            found.push(
                format!("{path}.role"),
                rule::VG_ROLE,
                format!("{allowed} (got {})", echo(role).quoted()),
            );
            None
        }
    }
}

fn content_kind(path: &str, kind: ContentKind, found: &mut Violations) -> Option<SeedanceItemKind> {
    match kind {
        ContentKind::Text(text) => {
            let field = format!("{path}.text");
            let before = found.0.len();
            if text.trim().is_empty() {
                found.push(&field, rule::S3, "a text item must not be blank");
            }
            check_text_length(&field, &text, found);
            (found.0.len() == before).then_some(SeedanceItemKind::Text(text))
        }
        ContentKind::Image(media) => {
            content_image(&format!("{path}.image"), media, found).map(SeedanceItemKind::Image)
        }
        ContentKind::Video(media) => content_url(&format!("{path}.video"), "video", media, found)
            .map(SeedanceItemKind::Video),
        ContentKind::Audio(media) => content_url(&format!("{path}.audio"), "audio", media, found)
            .map(SeedanceItemKind::Audio),
    }
}

/// A video or audio item: an `https://` URL only; a MIME type, if given, of that kind.
fn content_url(path: &str, kind: &str, media: MediaRef, found: &mut Violations) -> Option<String> {
    let before = found.0.len();
    check_optional_mime(path, kind, &media.mime_type, found);
    let url = match media.source {
        MediaSource::Url(url) => {
            check_https(&format!("{path}.url"), kind, &url, found);
            url
        }
        MediaSource::Data(_) => {
            found.push(
                format!("{path}.data"),
                rule::S3,
                format!("inline data is for images only: give the {kind} as an https:// URL"),
            );
            String::new()
        }
    };
    (found.0.len() == before).then_some(url)
}

fn check_optional_mime(path: &str, kind: &str, mime: &str, found: &mut Violations) {
    if mime.is_empty() {
        return;
    }
    let lower = mime.to_ascii_lowercase();
    if !matches!(parse_mime(&lower), Some((top, _)) if top == kind) {
        found.push(
            format!("{path}.mime_type"),
            rule::S3,
            format!(
                "a {kind} item's MIME type must be {kind}/*, or empty (got {})",
                echo(mime).quoted()
            ),
        );
    }
}

fn check_https(field: &str, kind: &str, url: &str, found: &mut Violations) {
    if url.chars().count() > MAX_URL_CHARS {
        found.push(
            field,
            rule::VG_LIMIT,
            format!("a {kind} URL has at most {MAX_URL_CHARS} characters"),
        );
        return;
    }
    // The URL is sent as given, so it must already be exactly what a parser would accept:
    // url::Url::parse silently strips surrounding spaces and inner tabs/newlines.
    let plain = !url.chars().any(|c| c.is_whitespace() || c.is_control());
    let https = plain
        && url::Url::parse(url)
            .is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty()));
    if !https {
        found.push(
            field,
            rule::S3,
            format!(
                "a {kind} must be given as an https:// URL (got {})",
                echo(url).quoted()
            ),
        );
    }
}

fn content_image(path: &str, media: MediaRef, found: &mut Violations) -> Option<ImageSource> {
    let before = found.0.len();
    let source = match media.source {
        MediaSource::Url(url) => {
            check_optional_mime(path, "image", &media.mime_type, found);
            if is_data_uri(&url) {
                check_data_uri(&format!("{path}.url"), &url, found);
            } else {
                check_https(&format!("{path}.url"), "image", &url, found);
            }
            ImageSource::Url(url)
        }
        MediaSource::Data(data) => {
            let mime_type = media.mime_type.to_ascii_lowercase();
            let mime_field = format!("{path}.mime_type");
            let data_field = format!("{path}.data");
            match parse_mime(&mime_type) {
                _ if media.mime_type.is_empty() => found.push(
                    &mime_field,
                    rule::S3,
                    "a MIME type (image/*) is required with inline data",
                ),
                Some(("image", subtype)) => {
                    if let Some(problem) = sniff_image(subtype, &data) {
                        found.push(&data_field, rule::S3, problem);
                    }
                }
                _ => found.push(
                    &mime_field,
                    rule::S3,
                    format!(
                        "inline data is for images only: the MIME type must be image/* \
                         (got {})",
                        echo(&media.mime_type).quoted()
                    ),
                ),
            }
            if data.is_empty() {
                found.push(&data_field, rule::S3, "the image must not be empty");
            } else if data.len() as u64 > ARK_MAX_IMAGE_BYTES {
                found.push(
                    &data_field,
                    rule::VG_ARK_LIMIT,
                    format!(
                        "an image must be at most {ARK_MAX_IMAGE_BYTES} bytes (got {})",
                        data.len()
                    ),
                );
            }
            ImageSource::Data { mime_type, data }
        }
    };
    (found.0.len() == before).then_some(source)
}

/// Whether `url` has the `data:` scheme (any case).
fn is_data_uri(url: &str) -> bool {
    url.get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("data:"))
}

/// `data:image/<fmt>;base64,<payload>`, the only `data:` form Ark documents.
fn check_data_uri(field: &str, uri: &str, found: &mut Violations) {
    let shape_error = |found: &mut Violations| {
        found.push(
            field,
            rule::S3,
            format!(
                "an image data: URI must be data:image/<format>;base64,<data> (got {})",
                echo(uri).quoted()
            ),
        )
    };
    // `uri` starts with the 5 ASCII bytes of "data:" (`is_data_uri`, checked by the caller).
    let Some((header, payload)) = uri[5..].split_once(',') else {
        return shape_error(found);
    };
    let header = header.to_ascii_lowercase();
    let Some(mime) = header.strip_suffix(";base64") else {
        return shape_error(found);
    };
    let Some(("image", subtype)) = parse_mime(mime) else {
        return shape_error(found);
    };
    let body = payload.trim_end_matches('=');
    let padded = payload.len() - body.len() <= 2;
    let alphabet = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if body.is_empty() || !padded || !alphabet {
        return shape_error(found);
    }
    let decoded_len = (body.len() as u64) * 3 / 4;
    if decoded_len > ARK_MAX_IMAGE_BYTES {
        found.push(
            field,
            rule::VG_ARK_LIMIT,
            format!(
                "an image must be at most {ARK_MAX_IMAGE_BYTES} bytes (this one is about \
                 {decoded_len})"
            ),
        );
        return;
    }
    // The first 16 characters decode to 12 bytes: enough for every magic number sniffed.
    let head = &body[..body.len().min(16) / 4 * 4];
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(head)
        && !bytes.is_empty()
        && let Some(problem) = sniff_image(subtype, &bytes)
    {
        found.push(field, rule::S3, problem);
    }
}

/// Ark's content modes, on every item's kind and (valid) role; see the module docs.
fn check_modes(shape: &[(usize, &str, Option<ContentRole>)], found: &mut Violations) {
    let count = |kind: &str| shape.iter().filter(|(_, k, _)| *k == kind).count();
    let (images, videos, audios) = (count("image"), count("video"), count("audio"));
    let with_role = |role: ContentRole| {
        shape
            .iter()
            .filter(move |(_, _, r)| *r == Some(role))
            .map(|(i, _, _)| *i)
    };
    let frame_roles = shape
        .iter()
        .filter(|(_, _, r)| r.is_some_and(ContentRole::is_frame))
        .count();
    let reference_roles = shape
        .iter()
        .filter(|(_, _, r)| r.is_some_and(|r| !r.is_frame()))
        .count();

    if frame_roles > 0 {
        if reference_roles > 0 || videos > 0 || audios > 0 {
            found.push(
                "seedance.content",
                rule::VG_MODE,
                "first/last frame mode (roles first_frame, last_frame) cannot be mixed with \
                 reference roles, videos or audios",
            );
        }
        for role in [ContentRole::FirstFrame, ContentRole::LastFrame] {
            for index in with_role(role).skip(1) {
                found.push(
                    format!("seedance.content[{index}].role"),
                    rule::VG_MODE,
                    format!("at most one image may have role {}", role.as_str()),
                );
            }
        }
        if with_role(ContentRole::LastFrame).next().is_some()
            && with_role(ContentRole::FirstFrame).next().is_none()
        {
            found.push(
                "seedance.content",
                rule::VG_MODE,
                "an image with role last_frame needs another with role first_frame",
            );
        }
        if images > 2 {
            found.push(
                "seedance.content",
                rule::VG_MODE,
                format!("first/last frame mode takes 1 or 2 images (got {images})"),
            );
        } else {
            for (index, _, _) in shape
                .iter()
                .filter(|(_, k, r)| *k == "image" && r.is_none())
            {
                found.push(
                    format!("seedance.content[{index}].role"),
                    rule::VG_MODE,
                    "in first/last frame mode every image needs role first_frame or last_frame",
                );
            }
        }
    }
    for (kind, got, max) in [
        ("images", images, ARK_MAX_IMAGES),
        ("videos", videos, ARK_MAX_VIDEOS),
        ("audios", audios, ARK_MAX_AUDIOS),
    ] {
        if got > max {
            found.push(
                "seedance.content",
                rule::VG_MODE,
                format!("content has at most {max} {kind} (got {got})"),
            );
        }
    }
    if audios > 0 && images == 0 && videos == 0 {
        found.push(
            "seedance.content",
            rule::VG_MODE,
            "audio is never alone: add an image or a video item",
        );
    }
}

fn generic(p: GenericParams, max_upload: u64, found: &mut Violations) -> GenericSpec {
    let size = if p.size.is_empty() {
        None
    } else if PixelSize::parse(&p.size).is_some() {
        Some(p.size)
    } else {
        found.push(
            "generic.size",
            rule::VG_SIZE,
            format!(
                "size must be WxH like 1280x720 (got {})",
                echo(&p.size).quoted()
            ),
        );
        None
    };
    let seconds = if p.seconds.is_empty() {
        None
    } else if is_positive_number(&p.seconds) {
        Some(p.seconds)
    } else {
        found.push(
            "generic.seconds",
            rule::VG_SECONDS,
            format!(
                "seconds must be a positive number like \"8\" (got {})",
                echo(&p.seconds).quoted()
            ),
        );
        None
    };
    let input_reference = p
        .input_reference
        .and_then(|image| upload("generic.input_reference", image, max_upload, found));
    GenericSpec {
        size,
        seconds,
        input_reference,
    }
}

/// `8` or `2.5`: plain decimal digits, at most one point, bounded, above zero.
fn is_positive_number(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let shaped = match text.split_once('.') {
        None => digits(text),
        Some((whole, fraction)) => digits(whole) && digits(fraction),
    };
    shaped
        && text.len() <= MAX_GENERIC_SECONDS_CHARS
        && text.bytes().any(|b| (b'1'..=b'9').contains(&b))
}
