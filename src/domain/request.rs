//! The raw create request, exactly as a caller sent it and before any rule was checked.
//!
//! These types mirror `CreateVideoRequest` of `API.md` field for field, so that the protobuf and
//! AMQP edges map into them mechanically. Empty strings and zeros keep the proto3 meaning "not
//! given"; `Option` stands where API.md says `optional`. Nothing here is trusted: it becomes a
//! [`crate::domain::VideoSpec`] only through [`crate::domain::VideoSpec::parse`].
//!
//! `request_id` and `labels` are not here on purpose: they belong to the service (idempotency,
//! listing), not to what is asked of the upstream.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A request to generate one video: API.md `CreateVideoRequest` without `request_id`/`labels`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VideoRequest {
    /// Model id, looked up in the [`crate::domain::ModelCatalog`].
    pub model: String,
    /// The text description (required for every family).
    pub prompt: String,
    /// The `oneof params`; `None` means the model family's defaults.
    pub params: Option<Params>,
}

/// API.md `oneof params`: which family's parameters the caller sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Params {
    /// `veo`: for Veo models (V1-V5).
    Veo(VeoParams),
    /// `seedance`: for Seedance models (S1-S10).
    Seedance(SeedanceParams),
    /// `generic`: for models the catalog knows only by name.
    Generic(GenericParams),
}

impl Params {
    /// The API.md field name of this `oneof` case (`veo`, `seedance`, `generic`), used in
    /// violation paths.
    pub fn field_name(&self) -> &'static str {
        match self {
            Params::Veo(_) => "veo",
            Params::Seedance(_) => "seedance",
            Params::Generic(_) => "generic",
        }
    }
}

/// API.md `VeoParams`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct VeoParams {
    /// Duration in seconds (V1: 4, 6, 8); 0 = the upstream default.
    pub seconds: u32,
    /// `WxH` (V2: `1280x720`, `720x1280`); empty = the upstream default.
    pub size: String,
    /// The image for image to video (V3, V4); `None` = text to video.
    pub input_reference: Option<InputImage>,
    /// `personGeneration` (V5: `allow_all`); empty = not sent.
    pub person_generation: String,
}

/// API.md `SeedanceParams`: the native Seedance fields of the upstream page.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SeedanceParams {
    /// S3: mixed text / image / video / audio items.
    pub content: Vec<ContentItem>,
    /// S4; empty = not sent.
    pub resolution: String,
    /// S5; empty = not sent.
    pub ratio: String,
    /// S6, seconds.
    pub duration: Option<u32>,
    /// S7.
    pub seed: Option<i64>,
    /// S8 (upstream default false).
    pub watermark: Option<bool>,
    /// S9 (upstream default true).
    pub generate_audio: Option<bool>,
    /// S10 (upstream default false).
    pub return_last_frame: Option<bool>,
    /// `WxH`, mapped onto resolution + ratio by the pixel table; empty = not given.
    pub size: String,
}

/// API.md `ContentItem`: one entry of Seedance `content`.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentItem {
    /// `oneof kind`.
    pub kind: ContentKind,
    /// `first_frame`, `last_frame`, `reference_image`, `reference_video`, `reference_audio`;
    /// empty = none.
    pub role: String,
}

/// API.md `ContentItem.kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum ContentKind {
    /// A `text` item.
    Text(String),
    /// An `image_url` item.
    Image(MediaRef),
    /// A `video_url` item.
    Video(MediaRef),
    /// An `audio_url` item.
    Audio(MediaRef),
}

impl ContentKind {
    /// The API.md field name of this `oneof` case, used in violation paths.
    pub fn field_name(&self) -> &'static str {
        match self {
            ContentKind::Text(_) => "text",
            ContentKind::Image(_) => "image",
            ContentKind::Video(_) => "video",
            ContentKind::Audio(_) => "audio",
        }
    }
}

/// API.md `MediaRef`: where a content item's media is.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRef {
    /// `oneof source`.
    pub source: MediaSource,
    /// MIME type; required with `data`, optional with `url`.
    pub mime_type: String,
}

/// API.md `MediaRef.source`.
#[derive(Clone, PartialEq)]
pub enum MediaSource {
    /// An `https://` URL, or (images only) a `data:image/<fmt>;base64,` URI.
    Url(String),
    /// Inline bytes; images only, sent upstream as a `data:` URI.
    Data(Bytes),
}

impl std::fmt::Debug for MediaSource {
    // A data: URI or inline bytes can be megabytes: log their length, never their content.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaSource::Url(url) if url.len() > DEBUG_URL_CHARS => f
                .debug_struct("Url")
                .field(
                    "prefix",
                    &url.chars().take(DEBUG_URL_CHARS).collect::<String>(),
                )
                .field("len", &url.len())
                .finish(),
            MediaSource::Url(url) => f.debug_tuple("Url").field(url).finish(),
            MediaSource::Data(data) => f.debug_struct("Data").field("len", &data.len()).finish(),
        }
    }
}

/// How much of a long URL (usually a `data:` URI) `Debug` shows before giving only its length.
const DEBUG_URL_CHARS: usize = 96;

/// API.md `InputImage`: an uploaded image (Veo and generic `input_reference`). Also part of
/// a validated [`crate::domain::VideoSpec`], so it has a stored form (the bytes as base64).
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputImage {
    /// The file's bytes (V3: at most the catalog's `max_upload_bytes`).
    #[serde(with = "super::base64_bytes")]
    pub data: Bytes,
    /// File name sent in the multipart part (V3: required).
    pub filename: String,
    /// MIME type sent as the part's `Content-Type` (V3: required; V4: `image/*`).
    pub mime_type: String,
}

impl std::fmt::Debug for InputImage {
    // Never dump megabytes of image into a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputImage")
            .field("filename", &self.filename)
            .field("mime_type", &self.mime_type)
            .field("len", &self.data.len())
            .finish()
    }
}

/// API.md `GenericParams`: OpenAI-style parameters, passed through as strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GenericParams {
    /// `WxH`; empty = not sent.
    pub size: String,
    /// Seconds as a string; empty = not sent.
    pub seconds: String,
    /// Image for image to video, uploaded as multipart like Veo's.
    pub input_reference: Option<InputImage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_input_image_prints_length_not_bytes() {
        let image = InputImage {
            data: Bytes::from(vec![0xAB; 4096]),
            filename: "a.png".into(),
            mime_type: "image/png".into(),
        };
        let shown = format!("{image:?}");
        assert!(shown.contains("len: 4096"), "{shown}");
        assert!(!shown.contains("171"), "bytes leaked: {shown}");
    }

    #[test]
    fn debug_of_media_source_prints_length_not_bytes() {
        let data = MediaSource::Data(Bytes::from(vec![0xAB; 10]));
        assert_eq!(format!("{data:?}"), "Data { len: 10 }");
        let long = MediaSource::Url(format!("data:image/png;base64,{}", "A".repeat(10_000)));
        let shown = format!("{long:?}");
        assert!(shown.len() < 300, "{shown}");
        assert!(shown.contains("len: 10022"), "{shown}");
    }
}
