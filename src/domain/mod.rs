//! Domain types: the model catalog and the validated request. No I/O lives here, except reading
//! an operator's catalog file once at start ([`ModelCatalog::load`]).
//!
//! | file | owns |
//! |---|---|
//! | `request.rs` | [`VideoRequest`]: the raw create request, mirroring API.md, untrusted |
//! | `catalog.rs` | [`ModelCatalog`]: model ids, families, allowed values, pixel tables |
//! | `spec.rs` | [`VideoSpec::parse`]: every local rule, collected; the validated request |
//! | `echo.rs` | [`echo()`]: the one way a caller's value is quoted back in an error, cut short |
//! | `violation.rs` | [`ValidationError`], [`FieldViolation`], the rule ids ([`rule`]) |
//! | `expected.rs` | [`ExpectedOutput`]: what the finished video should be, or "cannot check" |

mod base64_bytes;
mod catalog;
mod echo;
mod expected;
mod request;
mod spec;
mod tenant;
mod violation;

pub use catalog::{
    CatalogError, DEFAULT_CATALOG_TOML, DEFAULT_MAX_UPLOAD_BYTES, MAX_CATALOG_FILE_BYTES,
    MAX_MODEL_ID_CHARS, ModelCatalog, ModelFamily, ModelRules, PixelEntry, PixelSize,
    SeedanceRules, UnknownModels, VeoRules,
};
pub use echo::{ECHO_CHARS, Echo, echo, shorten};
pub use expected::{DURATION_TOLERANCE_SECONDS, Expectation, ExpectedOutput};
pub use request::{
    ContentItem, ContentKind, GenericParams, InputImage, MediaRef, MediaSource, Params,
    SeedanceParams, VeoParams, VideoRequest,
};
pub use spec::{
    ARK_MAX_AUDIOS, ARK_MAX_BODY_BYTES, ARK_MAX_IMAGE_BYTES, ARK_MAX_IMAGES, ARK_MAX_VIDEOS,
    ContentRole, GenericSpec, ImageSource, MAX_CONTENT_ITEMS, MAX_FILENAME_BYTES,
    MAX_GENERIC_SECONDS_CHARS, MAX_PROMPT_CHARS, MAX_URL_CHARS, SeedanceItem, SeedanceItemKind,
    SeedanceSpec, SpecParams, VeoSpec, VideoSpec,
};
pub use tenant::{Tenant, valid_tenant};
pub use violation::{FieldViolation, ValidationError, rule};
