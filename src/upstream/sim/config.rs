//! The simulator's configuration: a TOML table (or `Default`) for the CLI, a struct for tests.

use serde::Deserialize;

use super::faults::{FaultRule, FaultRuleError};

/// The bearer token accepted by default: a demo value, deliberately not a secret.
pub const DEFAULT_API_KEY: &str = "sim-key";
/// Demo time in `queued`: long enough for a newcomer to see the state in a progress display.
pub const DEFAULT_QUEUED_MS: u64 = 2_000;
/// Demo time in `processing`: a few polls' worth, far below the real 11 s - 6 min so a first run
/// finishes quickly.
pub const DEFAULT_PROCESSING_MS: u64 = 6_000;
/// Demo timing spread (+-10 %), so concurrent demo jobs do not finish in lockstep.
pub const DEFAULT_JITTER: f64 = 0.1;
/// Seed of ids, jitter and video bytes: any fixed value makes runs reproducible.
pub const DEFAULT_SEED: u64 = 42;
/// V3: "at most 10 MB", read as 10 MiB like vidgate's catalog.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024;
/// No padding by default: demo videos stay a few KB; benchmarks raise it.
pub const DEFAULT_CONTENT_MIN_SIZE: u64 = 0;
/// Frame rate of generated videos.
pub const DEFAULT_FPS: u32 = super::mp4gen::DEFAULT_FPS;
/// An uploaded file whose name contains this is refused as "contains children" (V5).
pub const DEFAULT_REFUSE_IMAGE_MARKER: &str = "child";
/// The page's create example answers `in_progress` (U1), so the simulator does too by default.
pub const DEFAULT_IN_PROGRESS_SPELLING: bool = true;
/// Ark's stated cap on a whole request body (64 MB); JSON bodies carry base64 images.
pub const DEFAULT_MAX_JSON_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// Everything the simulator can be told. Every field has a default, so a TOML file names only
/// what it changes.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// The bearer token accepted; default [`DEFAULT_API_KEY`].
    pub api_key: String,
    /// Time a task spends `queued`, in ms; default [`DEFAULT_QUEUED_MS`].
    pub queued_ms: u64,
    /// Time a task spends processing, in ms; default [`DEFAULT_PROCESSING_MS`].
    pub processing_ms: u64,
    /// Each phase lasts its time times `1 +- jitter` (0 to 1), drawn from the seed; default
    /// [`DEFAULT_JITTER`].
    pub jitter: f64,
    /// Seed of ids, jitter and video bytes; default [`DEFAULT_SEED`].
    pub seed: u64,
    /// Largest accepted `input_reference` file (V3); default [`DEFAULT_MAX_UPLOAD_BYTES`].
    pub max_upload_bytes: u64,
    /// Largest accepted JSON create body; default [`DEFAULT_MAX_JSON_BODY_BYTES`].
    pub max_json_body_bytes: u64,
    /// Pad every served MP4 to at least this many bytes (0 = off); default
    /// [`DEFAULT_CONTENT_MIN_SIZE`].
    pub content_min_size: u64,
    /// Frame rate of served MP4s; default [`DEFAULT_FPS`].
    pub fps: u32,
    /// Upload file names containing this are refused (V5); empty = never; default
    /// [`DEFAULT_REFUSE_IMAGE_MARKER`].
    pub refuse_image_marker: String,
    /// Create answers `in_progress` (and status says `in_progress` while processing) when true,
    /// `queued` / `processing` when false; default [`DEFAULT_IN_PROGRESS_SPELLING`].
    pub in_progress_spelling: bool,
    /// Fault rules armed at start.
    pub faults: Vec<FaultRule>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: DEFAULT_API_KEY.to_owned(),
            queued_ms: DEFAULT_QUEUED_MS,
            processing_ms: DEFAULT_PROCESSING_MS,
            jitter: DEFAULT_JITTER,
            seed: DEFAULT_SEED,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_json_body_bytes: DEFAULT_MAX_JSON_BODY_BYTES,
            content_min_size: DEFAULT_CONTENT_MIN_SIZE,
            fps: DEFAULT_FPS,
            refuse_image_marker: DEFAULT_REFUSE_IMAGE_MARKER.to_owned(),
            in_progress_spelling: DEFAULT_IN_PROGRESS_SPELLING,
            faults: Vec::new(),
        }
    }
}

// By hand so that the key never reaches a log line, even the demo one.
impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("api_key", &"<redacted>")
            .field("queued_ms", &self.queued_ms)
            .field("processing_ms", &self.processing_ms)
            .field("jitter", &self.jitter)
            .field("seed", &self.seed)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("max_json_body_bytes", &self.max_json_body_bytes)
            .field("content_min_size", &self.content_min_size)
            .field("fps", &self.fps)
            .field("refuse_image_marker", &self.refuse_image_marker)
            .field("in_progress_spelling", &self.in_progress_spelling)
            .field("faults", &self.faults)
            .finish()
    }
}

/// A configuration the simulator cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum SimConfigError {
    /// The TOML text does not parse into a [`SimConfig`].
    #[error("simulator config: {0}")]
    Toml(#[from] toml::de::Error),
    /// A field is out of range.
    #[error("simulator config: {field} {reason}")]
    Invalid {
        /// The field's name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A fault rule can never fire.
    #[error("simulator config: faults[{index}]: {source}")]
    Fault {
        /// Position of the rule in `faults`.
        index: usize,
        /// Why it cannot fire.
        source: FaultRuleError,
    },
}

impl SimConfig {
    /// Parse a TOML table (all fields optional) and check it.
    pub fn from_toml(text: &str) -> Result<SimConfig, SimConfigError> {
        let config: SimConfig = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Check ranges a running simulator relies on.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if self.api_key.is_empty() {
            return Err(SimConfigError::Invalid {
                field: "api_key",
                reason: "must not be empty",
            });
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(SimConfigError::Invalid {
                field: "jitter",
                reason: "must be between 0 and 1",
            });
        }
        if self.fps == 0 || self.fps > super::mp4gen::MAX_FPS {
            return Err(SimConfigError::Invalid {
                field: "fps",
                reason: "must be between 1 and mp4gen::MAX_FPS",
            });
        }
        if self.max_upload_bytes == 0 {
            return Err(SimConfigError::Invalid {
                field: "max_upload_bytes",
                reason: "must be at least 1",
            });
        }
        if self.max_json_body_bytes == 0 {
            return Err(SimConfigError::Invalid {
                field: "max_json_body_bytes",
                reason: "must be at least 1",
            });
        }
        for (index, rule) in self.faults.iter().enumerate() {
            rule.validate()
                .map_err(|source| SimConfigError::Fault { index, source })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_gives_the_documented_defaults() {
        let c = SimConfig::from_toml("").expect("empty config");
        assert_eq!(c.api_key, DEFAULT_API_KEY);
        assert_eq!(c.max_upload_bytes, 10_485_760);
        assert_eq!(c.queued_ms, DEFAULT_QUEUED_MS);
        assert!(c.in_progress_spelling);
    }

    #[test]
    fn toml_with_faults_and_bad_values() {
        let ok = "queued_ms = 5\nprocessing_ms = 7\n[[faults]]\nendpoint = \"get\"\n\
                  fault = { kind = \"http\", status = 503 }\n";
        let c = SimConfig::from_toml(ok).expect("valid");
        assert_eq!((c.queued_ms, c.processing_ms, c.faults.len()), (5, 7, 1));
        for bad in [
            "jitter = 1.5",
            "fps = 0",
            "api_key = \"\"",
            "no_such_field = 1",
            "[[faults]]\nendpoint = \"get\"\nfault = { kind = \"ignore_range\" }",
        ] {
            assert!(SimConfig::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = SimConfig {
            api_key: "very-secret".into(),
            ..SimConfig::default()
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
