//! What validation reports: every violated rule, by field, rule id and what is allowed.

use super::echo::echo;

/// Rule ids used in [`FieldViolation::rule`].
///
/// Rules the upstream contract numbers keep their `CONTRACT.md` id (`V1`-`V5`, `S2`-`S6`). Where
/// the contract states a limit without a number, or vidgate adds a bound of its own, the id
/// starts with `VG-`:
///
/// | id | what |
/// |---|---|
/// | `VG-MODEL` | model id required, known to the catalog (or passed through as generic), bounded |
/// | `VG-PROMPT` | prompt required for Veo and generic models (S2 covers Seedance) |
/// | `VG-FAMILY` | the `params` case must be the model family's (`veo` params to a Veo model) |
/// | `VG-LIMIT` | vidgate's own bounds (prompt length, content item count, URL length) |
/// | `VG-SIZE` | `size` is `WxH`; a Seedance size is a pixel-table cell agreeing with resolution/ratio |
/// | `VG-SECONDS` | a generic model's `seconds` must be a positive number |
/// | `VG-FILENAME` | an upload's file name must be a plain, bounded name (it goes into a header) |
/// | `VG-ROLE` | Seedance content roles: the five Ark roles, each only on its kind |
/// | `VG-MODE` | Ark modes: first/last frame vs reference, item counts, audio never alone |
/// | `VG-ARK-LIMIT` | Ark's stated media limits (30 MB per inline image, 64 MB per body) |
pub mod rule {
    /// V1: Veo `seconds` in 4, 6, 8.
    pub const V1: &str = "V1";
    /// V2: Veo `size` in the two Veo sizes.
    pub const V2: &str = "V2";
    /// V3: uploaded image: one file, name and MIME type required, at most 10 MiB.
    pub const V3: &str = "V3";
    /// V4: uploaded image: images only.
    pub const V4: &str = "V4";
    /// V5: `personGeneration`: Veo only, `allow_all`.
    pub const V5: &str = "V5";
    /// S2: Seedance `prompt` required.
    pub const S2: &str = "S2";
    /// S3: Seedance `content` item shapes (text non-empty; image HTTPS or `data:`; video and
    /// audio HTTPS).
    pub const S3: &str = "S3";
    /// S4: Seedance `resolution`.
    pub const S4: &str = "S4";
    /// S5: Seedance `ratio`.
    pub const S5: &str = "S5";
    /// S6: Seedance `duration`.
    pub const S6: &str = "S6";
    /// See the module table.
    pub const VG_MODEL: &str = "VG-MODEL";
    /// See the module table.
    pub const VG_PROMPT: &str = "VG-PROMPT";
    /// See the module table.
    pub const VG_FAMILY: &str = "VG-FAMILY";
    /// See the module table.
    pub const VG_LIMIT: &str = "VG-LIMIT";
    /// See the module table.
    pub const VG_SIZE: &str = "VG-SIZE";
    /// See the module table.
    pub const VG_SECONDS: &str = "VG-SECONDS";
    /// See the module table.
    pub const VG_FILENAME: &str = "VG-FILENAME";
    /// See the module table.
    pub const VG_ROLE: &str = "VG-ROLE";
    /// See the module table.
    pub const VG_MODE: &str = "VG-MODE";
    /// See the module table.
    pub const VG_ARK_LIMIT: &str = "VG-ARK-LIMIT";
}

/// One violated rule: maps onto `google.rpc.BadRequest.FieldViolation` and the AMQP
/// `Rejection.violations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path with API.md field names, e.g. `veo.seconds` or `seedance.content[2].image.url`.
    pub field: String,
    /// Rule id: a `CONTRACT.md` number or a `VG-` id (see [`rule`]).
    pub rule: String,
    /// What is allowed and what was given, e.g. `seconds must be one of 4, 6, 8 (got 5)`.
    pub description: String,
}

impl FieldViolation {
    pub(crate) fn new(
        field: impl Into<String>,
        rule: &str,
        description: impl Into<String>,
    ) -> Self {
        FieldViolation {
            field: field.into(),
            rule: rule.to_owned(),
            description: description.into(),
        }
    }
}

impl std::fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.field, self.rule, self.description)
    }
}

/// Why a [`crate::domain::VideoRequest`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The request breaks one or more rules; every violation is listed, not only the first.
    #[error("invalid request for model `{}`: {}", echo(.model), join(.violations))]
    Invalid {
        /// The model id as given (may be empty).
        model: String,
        /// Never empty.
        violations: Vec<FieldViolation>,
    },
    /// The model is not in the catalog and the catalog rejects unknown models.
    #[error("unknown model `{}`; known models: {}", echo(.model), .known.join(", "))]
    UnknownModel {
        /// The model id as given.
        model: String,
        /// The catalog's model ids, sorted.
        known: Vec<String>,
    },
}

impl ValidationError {
    /// The model id the request named.
    pub fn model(&self) -> &str {
        match self {
            ValidationError::Invalid { model, .. }
            | ValidationError::UnknownModel { model, .. } => model,
        }
    }

    /// Every violation as a field violation, including an unknown model (field `model`,
    /// rule `VG-MODEL`, listing the known ids), so an edge can put any refusal into
    /// `BadRequest` or an AMQP `Rejection` the same way.
    pub fn field_violations(&self) -> Vec<FieldViolation> {
        match self {
            ValidationError::Invalid { violations, .. } => violations.clone(),
            ValidationError::UnknownModel { model, known } => vec![FieldViolation::new(
                "model",
                rule::VG_MODEL,
                format!(
                    "model must be one of {} (got `{}`)",
                    if known.is_empty() {
                        "the catalog's models (it lists none)".to_owned()
                    } else {
                        known.join(", ")
                    },
                    echo(model)
                ),
            )],
        }
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
