//! The model catalog: which model ids exist, their family, and the allowed values of each field.
//!
//! All allowed values live here (CONTRACT.md: "keep the allowed values in one model catalog that
//! an operator can extend by configuration"). The defaults are `catalog/default.toml`, embedded
//! in the binary. An operator file is merged **over** the defaults, never instead of them:
//!
//! - top-level keys (`unknown_models`, `max_upload_bytes`) replace the default value;
//! - `[families.veo]` / `[families.seedance]`: each key given replaces that key of the family's
//!   rule set (a list or the whole `pixels` table is replaced whole, not merged);
//! - `[models."id"]`: an entry replaces the default entry of the same id whole, or adds a model;
//!   `include_default_models = false` drops the default models first (the family rule sets stay:
//!   they are the upstream contract);
//! - a model entry names its `family` and may override any key of that family's rule set, the
//!   same way (e.g. `resolutions` with `1080p` and a `pixels` table that has a 1080p row).
//!
//! The merged catalog is checked as a whole when it is loaded; errors name the file, the model or
//! family, and the key.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The default catalog, `catalog/default.toml`.
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../../catalog/default.toml");

/// V3: the upstream refuses uploads over "10 MB"; read as 10 MiB. Overridden by the catalog key
/// `max_upload_bytes`.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024;

/// An operator catalog larger than this is refused before parsing: a catalog is a page of
/// settings, and a bound keeps a wrong path (a video, a log) from being read into memory.
pub const MAX_CATALOG_FILE_BYTES: u64 = 1024 * 1024;

/// Model ids longer than this are refused, in the catalog and in requests: real ids are a few
/// dozen characters, and an id is echoed into logs, events and the upstream body.
pub const MAX_MODEL_ID_CHARS: usize = 256;

/// Where the embedded defaults are said to come from in errors.
const DEFAULT_ORIGIN: &str = "<embedded catalog/default.toml>";

/// The three kinds of model the upstream serves, each with its own parameters and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    /// Google Veo (V1-V5): JSON for text to video, multipart for image to video.
    Veo,
    /// ByteDance Seedance (S1-S10): native fields in a JSON body.
    Seedance,
    /// OpenAI-style models known only by name: `size`/`seconds` passed through.
    Generic,
}

impl ModelFamily {
    /// The family's name, which is also the API.md field name of its `params` case.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFamily::Veo => "veo",
            ModelFamily::Seedance => "seedance",
            ModelFamily::Generic => "generic",
        }
    }
}

impl std::fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a model id the catalog does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownModels {
    /// Refuse it (`UNKNOWN_MODEL`). The default: a typo must not become a paid request.
    #[default]
    Reject,
    /// Pass it through as a [`ModelFamily::Generic`] model.
    Generic,
}

/// Width x height in pixels, written `WxH` (`1280x720`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PixelSize {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl PixelSize {
    /// Most digits a side may have: 5 (up to 99999 px) is far beyond any video and keeps the
    /// parse free of overflow.
    const MAX_DIGITS: usize = 5;

    /// Parses `WxH` strictly: ASCII digits, a lower-case `x`, no sign, spaces or leading zeros,
    /// both sides at least 1. `None` for anything else.
    pub fn parse(text: &str) -> Option<PixelSize> {
        let (w, h) = text.split_once('x')?;
        Some(PixelSize {
            width: Self::side(w)?,
            height: Self::side(h)?,
        })
    }

    fn side(digits: &str) -> Option<u32> {
        let plain = !digits.is_empty()
            && digits.len() <= Self::MAX_DIGITS
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if plain { digits.parse().ok() } else { None }
    }
}

impl std::fmt::Display for PixelSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Stored as its `WxH` text, read back through [`PixelSize::parse`].
impl Serialize for PixelSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PixelSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        PixelSize::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a size like 1280x720"))
        })
    }
}

/// One cell of a Seedance pixel table: `resolution` x `ratio` gives `size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PixelEntry {
    /// E.g. `720p`.
    pub resolution: String,
    /// E.g. `16:9`.
    pub ratio: String,
    /// E.g. `1280x720`.
    pub size: PixelSize,
}

/// Allowed values for a Veo model (V1, V2, V5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VeoRules {
    seconds: Vec<u32>,
    sizes: Vec<PixelSize>,
    person_generation: Vec<String>,
}

impl VeoRules {
    /// V1: allowed `seconds` (0 is never in it: it means "upstream default").
    pub fn seconds(&self) -> &[u32] {
        &self.seconds
    }

    /// V2: allowed `size` values.
    pub fn sizes(&self) -> &[PixelSize] {
        &self.sizes
    }

    /// V5: allowed `personGeneration` values (may be empty: then none is accepted).
    pub fn person_generation(&self) -> &[String] {
        &self.person_generation
    }
}

/// Allowed values for a Seedance model (S4-S6) and its pixel table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedanceRules {
    resolutions: Vec<String>,
    ratios: Vec<String>,
    durations: Vec<u32>,
    pixels: Vec<PixelEntry>,
}

impl SeedanceRules {
    /// S4: allowed `resolution` values.
    pub fn resolutions(&self) -> &[String] {
        &self.resolutions
    }

    /// S5: allowed `ratio` values.
    pub fn ratios(&self) -> &[String] {
        &self.ratios
    }

    /// S6: allowed `duration` values in seconds.
    pub fn durations(&self) -> &[u32] {
        &self.durations
    }

    /// The whole pixel table, in catalog order.
    pub fn pixel_table(&self) -> &[PixelEntry] {
        &self.pixels
    }

    /// Output pixels for `resolution` x `ratio`; `None` where the table has no cell (1080p).
    pub fn pixels(&self, resolution: &str, ratio: &str) -> Option<PixelSize> {
        self.pixels
            .iter()
            .find(|e| e.resolution == resolution && e.ratio == ratio)
            .map(|e| e.size)
    }

    /// The cell whose pixels are `size` (cells are unique: checked on load).
    pub fn cell_for_size(&self, size: PixelSize) -> Option<&PixelEntry> {
        self.pixels.iter().find(|e| e.size == size)
    }
}

/// One model's family and allowed values. Serialised only for [`ModelCatalog::rules_digest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRules {
    /// A Veo model.
    Veo(VeoRules),
    /// A Seedance model.
    Seedance(SeedanceRules),
    /// A model known by name only (or an unknown one passed through).
    Generic,
}

impl ModelRules {
    /// The model's family.
    pub fn family(&self) -> ModelFamily {
        match self {
            ModelRules::Veo(_) => ModelFamily::Veo,
            ModelRules::Seedance(_) => ModelFamily::Seedance,
            ModelRules::Generic => ModelFamily::Generic,
        }
    }
}

/// What an unknown model resolves to under `unknown_models = "generic"`.
static GENERIC_RULES: ModelRules = ModelRules::Generic;

/// The loaded, checked model catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCatalog {
    models: BTreeMap<String, ModelRules>,
    unknown_models: UnknownModels,
    max_upload_bytes: u64,
}

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The operator file could not be read.
    #[error("model catalog {}: cannot read it: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The operator file is larger than [`MAX_CATALOG_FILE_BYTES`].
    #[error("model catalog {}: larger than {max} bytes; is it the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// [`MAX_CATALOG_FILE_BYTES`].
        max: u64,
    },
    /// Not TOML, a key of the wrong type, or a key the catalog does not know (the message
    /// names the key and line).
    #[error("model catalog {origin}: {source}")]
    Parse {
        /// The file (or `<string>`).
        origin: String,
        /// The parser's error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// Well-formed TOML whose values break a rule of the catalog.
    #[error("model catalog {origin}: {scope}, key `{key}`: {problem}")]
    Invalid {
        /// The file (or `<string>`).
        origin: String,
        /// `model "id"`, `families.seedance`, or `catalog`.
        scope: String,
        /// The offending key, e.g. `pixels.480p.21:9`.
        key: String,
        /// What is wrong and what is allowed.
        problem: String,
    },
}

impl Default for ModelCatalog {
    /// The embedded `catalog/default.toml`.
    fn default() -> Self {
        // The embedded text is a compile-time constant, not input; the test
        // `default_catalog_lists_the_two_contract_models` proves it loads.
        parse_raw(DEFAULT_CATALOG_TOML, DEFAULT_ORIGIN)
            .and_then(|raw| build(raw, DEFAULT_ORIGIN))
            .expect("the embedded catalog/default.toml is valid")
    }
}

impl ModelCatalog {
    /// The operator's catalog in `text`, merged over the defaults (see the module docs).
    pub fn from_toml_str(text: &str) -> Result<ModelCatalog, CatalogError> {
        Self::merged_over_defaults(text, "<string>")
    }

    /// The operator's catalog file at `path`, merged over the defaults (see the module docs).
    /// Errors name the file.
    pub fn load(path: impl AsRef<Path>) -> Result<ModelCatalog, CatalogError> {
        let path = path.as_ref();
        let read_error = |source| CatalogError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut text = String::new();
        file.take(MAX_CATALOG_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_CATALOG_FILE_BYTES {
            return Err(CatalogError::TooLarge {
                path: path.to_owned(),
                max: MAX_CATALOG_FILE_BYTES,
            });
        }
        Self::merged_over_defaults(&text, &path.display().to_string())
    }

    fn merged_over_defaults(text: &str, origin: &str) -> Result<ModelCatalog, CatalogError> {
        let mut merged = parse_raw(DEFAULT_CATALOG_TOML, DEFAULT_ORIGIN)?;
        merged.overlay(parse_raw(text, origin)?);
        build(merged, origin)
    }

    /// The rules of `model` as listed; `None` if the catalog does not list it.
    pub fn model(&self, model: &str) -> Option<&ModelRules> {
        self.models.get(model)
    }

    /// The rules a request for `model` is checked against: the listed ones, or generic rules
    /// for an unknown model when `unknown_models = "generic"`; `None` means "unknown model".
    pub fn resolve(&self, model: &str) -> Option<&ModelRules> {
        match (self.models.get(model), self.unknown_models) {
            (Some(rules), _) => Some(rules),
            (None, UnknownModels::Generic) => Some(&GENERIC_RULES),
            (None, UnknownModels::Reject) => None,
        }
    }

    /// The family a request for `model` gets (see [`ModelCatalog::resolve`]).
    pub fn family_of(&self, model: &str) -> Option<ModelFamily> {
        self.resolve(model).map(ModelRules::family)
    }

    /// Listed model ids, sorted.
    pub fn model_ids(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// V3: the largest uploaded image accepted, in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.max_upload_bytes
    }

    /// What happens to unlisted models.
    pub fn unknown_models(&self) -> UnknownModels {
        self.unknown_models
    }

    /// A digest (SHA-256, hex) of everything [`crate::domain::VideoSpec::parse`] reads from
    /// this catalog for a request for `model`: the rules it resolves to (or that it resolves to
    /// none) and the upload limit. Equal digests mean a spec that passed one catalog passes the
    /// other unchanged, so a stored spec is re-checked only when its model's digest differs.
    /// `None` if the rules could not be serialised (never expected): then it is re-checked.
    pub fn rules_digest(&self, model: &str) -> Option<String> {
        /// What is hashed; a new rule field is part of it by derivation.
        #[derive(Serialize)]
        struct Hashed<'a> {
            rules: Option<&'a ModelRules>,
            max_upload_bytes: u64,
        }
        let text = serde_json::to_vec(&Hashed {
            rules: self.resolve(model),
            max_upload_bytes: self.max_upload_bytes,
        })
        .ok()?;
        Some(hex::encode(Sha256::digest(&text)))
    }
}

/// The catalog file as written: every key optional, so that an operator file can say only what
/// it changes. Unknown keys are errors (a misspelt key must not be silently ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    include_default_models: Option<bool>,
    unknown_models: Option<UnknownModels>,
    max_upload_bytes: Option<u64>,
    #[serde(default)]
    families: RawFamilies,
    #[serde(default)]
    models: BTreeMap<String, RawRules>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFamilies {
    veo: Option<RawRules>,
    seedance: Option<RawRules>,
}

/// A rule set as written: a family's, or a model entry's (which also names its `family`). The
/// keys of both families share one struct so that a key of the wrong family gets an error that
/// says so, instead of "unknown field".
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    family: Option<ModelFamily>,
    seconds: Option<Vec<u32>>,
    sizes: Option<Vec<String>>,
    person_generation: Option<Vec<String>>,
    resolutions: Option<Vec<String>>,
    ratios: Option<Vec<String>>,
    durations: Option<Vec<u32>>,
    pixels: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl RawCatalog {
    fn overlay(&mut self, over: RawCatalog) {
        if over.include_default_models == Some(false) {
            self.models.clear();
        }
        self.unknown_models = over.unknown_models.or(self.unknown_models);
        self.max_upload_bytes = over.max_upload_bytes.or(self.max_upload_bytes);
        for (mine, theirs) in [
            (&mut self.families.veo, over.families.veo),
            (&mut self.families.seedance, over.families.seedance),
        ] {
            match (mine.as_mut(), theirs) {
                (Some(mine), Some(theirs)) => mine.overlay(theirs),
                (None, theirs @ Some(_)) => *mine = theirs,
                (_, None) => {}
            }
        }
        self.models.extend(over.models);
    }
}

impl RawRules {
    /// Every key `over` gives replaces this one's, whole.
    fn overlay(&mut self, over: RawRules) {
        self.family = over.family.or(self.family);
        self.seconds = over.seconds.or(self.seconds.take());
        self.sizes = over.sizes.or(self.sizes.take());
        self.person_generation = over.person_generation.or(self.person_generation.take());
        self.resolutions = over.resolutions.or(self.resolutions.take());
        self.ratios = over.ratios.or(self.ratios.take());
        self.durations = over.durations.or(self.durations.take());
        self.pixels = over.pixels.or(self.pixels.take());
    }

    /// The keys that are set, by name, with the family each belongs to.
    fn keys_given(&self) -> Vec<(&'static str, ModelFamily)> {
        [
            ("seconds", self.seconds.is_some(), ModelFamily::Veo),
            ("sizes", self.sizes.is_some(), ModelFamily::Veo),
            (
                "person_generation",
                self.person_generation.is_some(),
                ModelFamily::Veo,
            ),
            (
                "resolutions",
                self.resolutions.is_some(),
                ModelFamily::Seedance,
            ),
            ("ratios", self.ratios.is_some(), ModelFamily::Seedance),
            ("durations", self.durations.is_some(), ModelFamily::Seedance),
            ("pixels", self.pixels.is_some(), ModelFamily::Seedance),
        ]
        .into_iter()
        .filter(|(_, given, _)| *given)
        .map(|(key, _, family)| (key, family))
        .collect()
    }
}

fn parse_raw(text: &str, origin: &str) -> Result<RawCatalog, CatalogError> {
    toml::from_str(text).map_err(|source| CatalogError::Parse {
        origin: origin.to_owned(),
        source: Box::new(source),
    })
}

/// Checks a merged catalog and turns it into rules.
fn build(raw: RawCatalog, origin: &str) -> Result<ModelCatalog, CatalogError> {
    let invalid = |scope: &str, key: &str, problem: String| CatalogError::Invalid {
        origin: origin.to_owned(),
        scope: scope.to_owned(),
        key: key.to_owned(),
        problem,
    };

    let max_upload_bytes = raw.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD_BYTES);
    if max_upload_bytes == 0 {
        return Err(invalid(
            "catalog",
            "max_upload_bytes",
            "must be at least 1 (V3 allows one image file)".into(),
        ));
    }
    let unknown_models = raw.unknown_models.unwrap_or_default();
    if raw.models.is_empty() && unknown_models == UnknownModels::Reject {
        return Err(invalid(
            "catalog",
            "models",
            "no models are listed and unknown_models = \"reject\": every request would be refused"
                .into(),
        ));
    }

    // Each family's own rule set is checked once, so an error in it is reported at the family,
    // not at every model that inherits it.
    let veo_family = raw.families.veo.unwrap_or_default();
    let seedance_family = raw.families.seedance.unwrap_or_default();
    for (family, rules) in [
        (ModelFamily::Veo, &veo_family),
        (ModelFamily::Seedance, &seedance_family),
    ] {
        let scope = format!("families.{family}");
        if rules.family.is_some() {
            return Err(invalid(
                &scope,
                "family",
                "`family` belongs in a [models.\"id\"] entry, not in a family's rule set".into(),
            ));
        }
        check_keys_belong(rules, family, &scope, &invalid)?;
        rule_set(family, rules.clone(), &scope, &invalid)?;
    }

    let mut models = BTreeMap::new();
    for (id, entry) in raw.models {
        let scope = format!("model \"{id}\"");
        check_model_id(&id).map_err(|problem| invalid(&scope, "(model id)", problem))?;
        let Some(family) = entry.family else {
            return Err(invalid(
                &scope,
                "family",
                "required: one of \"veo\", \"seedance\", \"generic\"".into(),
            ));
        };
        check_keys_belong(&entry, family, &scope, &invalid)?;
        let mut rules = match family {
            ModelFamily::Veo => veo_family.clone(),
            ModelFamily::Seedance => seedance_family.clone(),
            ModelFamily::Generic => RawRules::default(),
        };
        rules.overlay(entry);
        models.insert(id, rule_set(family, rules, &scope, &invalid)?);
    }

    Ok(ModelCatalog {
        models,
        unknown_models,
        max_upload_bytes,
    })
}

/// A model id must be usable as-is in a request, a log line and an upstream body.
pub(crate) fn check_model_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        Err("a model id must not be empty".into())
    } else if id.chars().count() > MAX_MODEL_ID_CHARS {
        Err(format!(
            "a model id has at most {MAX_MODEL_ID_CHARS} characters"
        ))
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("a model id has no spaces or control characters".into())
    } else {
        Ok(())
    }
}

fn check_keys_belong(
    rules: &RawRules,
    family: ModelFamily,
    scope: &str,
    invalid: &impl Fn(&str, &str, String) -> CatalogError,
) -> Result<(), CatalogError> {
    match rules.keys_given().into_iter().find(|(_, f)| *f != family) {
        Some((key, owner)) => Err(invalid(
            scope,
            key,
            format!("is a {owner} key; this rule set is for family {family}"),
        )),
        None => Ok(()),
    }
}

/// Builds and checks one family's rule set (a family's own, or a model's after its overrides).
fn rule_set(
    family: ModelFamily,
    raw: RawRules,
    scope: &str,
    invalid: &impl Fn(&str, &str, String) -> CatalogError,
) -> Result<ModelRules, CatalogError> {
    match family {
        ModelFamily::Generic => Ok(ModelRules::Generic),
        ModelFamily::Veo => {
            let seconds = non_empty_unique(raw.seconds, "seconds", scope, invalid)?;
            if seconds.contains(&0) {
                return Err(invalid(
                    scope,
                    "seconds",
                    "0 is not a duration (it means \"upstream default\" in requests)".into(),
                ));
            }
            let sizes = non_empty_unique(raw.sizes, "sizes", scope, invalid)?
                .iter()
                .map(|s| {
                    PixelSize::parse(s).ok_or_else(|| {
                        invalid(scope, "sizes", format!("`{s}` is not a size like 1280x720"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let person_generation = raw.person_generation.unwrap_or_default();
            if let Some(bad) = person_generation.iter().find(|v| !is_plain_token(v)) {
                return Err(invalid(
                    scope,
                    "person_generation",
                    format!("`{bad}` is not a plain value like allow_all"),
                ));
            }
            Ok(ModelRules::Veo(VeoRules {
                seconds,
                sizes,
                person_generation,
            }))
        }
        ModelFamily::Seedance => {
            let resolutions = non_empty_unique(raw.resolutions, "resolutions", scope, invalid)?;
            let ratios = non_empty_unique(raw.ratios, "ratios", scope, invalid)?;
            let durations = non_empty_unique(raw.durations, "durations", scope, invalid)?;
            for (key, values) in [("resolutions", &resolutions), ("ratios", &ratios)] {
                if let Some(bad) = values.iter().find(|v| !is_plain_token(v)) {
                    return Err(invalid(scope, key, format!("`{bad}` is not a plain value")));
                }
            }
            if durations.contains(&0) {
                return Err(invalid(scope, "durations", "0 is not a duration".into()));
            }
            let pixels = pixel_table(
                raw.pixels.unwrap_or_default(),
                &resolutions,
                &ratios,
                scope,
                invalid,
            )?;
            Ok(ModelRules::Seedance(SeedanceRules {
                resolutions,
                ratios,
                durations,
                pixels,
            }))
        }
    }
}

fn pixel_table(
    raw: BTreeMap<String, BTreeMap<String, String>>,
    resolutions: &[String],
    ratios: &[String],
    scope: &str,
    invalid: &impl Fn(&str, &str, String) -> CatalogError,
) -> Result<Vec<PixelEntry>, CatalogError> {
    let mut entries: Vec<PixelEntry> = Vec::new();
    for (resolution, row) in raw {
        if !resolutions.contains(&resolution) {
            return Err(invalid(
                scope,
                &format!("pixels.{resolution}"),
                format!(
                    "resolution `{resolution}` is not in resolutions ({}); add it there or give \
                     `pixels` without this row",
                    resolutions.join(", ")
                ),
            ));
        }
        for (ratio, size) in row {
            let key = format!("pixels.{resolution}.{ratio}");
            if !ratios.contains(&ratio) {
                return Err(invalid(
                    scope,
                    &key,
                    format!(
                        "ratio `{ratio}` is not in ratios ({}); add it there or give `pixels` \
                         without this cell",
                        ratios.join(", ")
                    ),
                ));
            }
            let Some(size) = PixelSize::parse(&size) else {
                return Err(invalid(
                    scope,
                    &key,
                    format!("`{size}` is not a size like 1280x720"),
                ));
            };
            // A Seedance `size` is mapped back onto this table, so each size names one cell.
            if let Some(other) = entries.iter().find(|e| e.size == size) {
                return Err(invalid(
                    scope,
                    &key,
                    format!(
                        "{size} is also the size of {} {}: a size must name one cell",
                        other.resolution, other.ratio
                    ),
                ));
            }
            entries.push(PixelEntry {
                resolution: resolution.clone(),
                ratio,
                size,
            });
        }
    }
    Ok(entries)
}

fn non_empty_unique<T: Ord + Clone + std::fmt::Display>(
    values: Option<Vec<T>>,
    key: &str,
    scope: &str,
    invalid: &impl Fn(&str, &str, String) -> CatalogError,
) -> Result<Vec<T>, CatalogError> {
    let values = values.unwrap_or_default();
    if values.is_empty() {
        return Err(invalid(
            scope,
            key,
            "required and must list at least one value".into(),
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = values.iter().find(|v| !seen.insert(*v)) {
        return Err(invalid(scope, key, format!("`{dup}` is listed twice")));
    }
    Ok(values)
}

/// Values that are compared verbatim with request fields: no spaces or control characters.
fn is_plain_token(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_size_parses_only_plain_w_x_h() {
        let cases = [
            ("1280x720", Some((1280, 720))),
            ("1x1", Some((1, 1))),
            ("99999x99999", Some((99999, 99999))),
            ("", None),
            ("1280", None),
            ("1280X720", None),
            ("1280x", None),
            ("x720", None),
            ("0x720", None),
            ("01280x720", None),
            ("+1280x720", None),
            (" 1280x720", None),
            ("1280x720x1", None),
            ("100000x1", None),
            ("１２８０x720", None),
        ];
        for (text, want) in cases {
            let got = PixelSize::parse(text).map(|p| (p.width, p.height));
            assert_eq!(got, want, "{text:?}");
        }
    }
}
