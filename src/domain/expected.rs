//! What a finished video should look like, as far as the request and the catalog can say.
//!
//! CONTRACT.md: where the page gives no expected output (1080p pixels, a Veo request without
//! `size`/`seconds`), vidgate does not guess: it records "cannot check" instead of a mismatch.

use crate::domain::spec::{SpecParams, VideoSpec};

/// How far a stored video's duration may be from the requested one and still match: container
/// durations are rounded to frames and audio packets, so an 8 s request yields e.g. 8.04 s.
pub const DURATION_TOLERANCE_SECONDS: f64 = 0.5;

/// One expected property of the output.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation<T> {
    /// The request and the catalog determine it.
    Known(T),
    /// Nothing documented says what it will be; the text says why.
    CannotCheck(String),
}

impl<T> Expectation<T> {
    /// The expected value, if known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Expectation::Known(value) => Some(value),
            Expectation::CannotCheck(_) => None,
        }
    }
}

/// What the finished video of a [`VideoSpec`] should be.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedOutput {
    /// Width x height in pixels.
    pub dimensions: Expectation<(u32, u32)>,
    /// Duration in seconds (compared within [`DURATION_TOLERANCE_SECONDS`]).
    pub duration_seconds: Expectation<f64>,
}

impl ExpectedOutput {
    /// Describes how the actual video differs from what was expected; `None` when it matches or
    /// when nothing can be checked. Feeds `VideoContent.mismatch`.
    pub fn compare(
        &self,
        actual_width: u32,
        actual_height: u32,
        actual_duration_s: f64,
    ) -> Option<String> {
        let mut mismatches = Vec::new();
        if let Expectation::Known((width, height)) = self.dimensions
            && (actual_width, actual_height) != (width, height)
        {
            mismatches.push(format!(
                "size is {actual_width}x{actual_height}, expected {width}x{height}"
            ));
        }
        if let Expectation::Known(seconds) = self.duration_seconds {
            if !actual_duration_s.is_finite() {
                mismatches.push(format!("duration could not be read, expected {seconds} s"));
            } else if (actual_duration_s - seconds).abs() > DURATION_TOLERANCE_SECONDS {
                mismatches.push(format!(
                    "duration is {actual_duration_s:.2} s, expected {seconds} s \
                     (+-{DURATION_TOLERANCE_SECONDS} s)"
                ));
            }
        }
        (!mismatches.is_empty()).then(|| mismatches.join("; "))
    }
}

/// The reason recorded when a request left a value to an undocumented upstream default.
fn upstream_default(what: &str) -> String {
    format!("{what} not given: the upstream default is not documented")
}

impl VideoSpec {
    /// What the output should be: pixels and duration where the request and the catalog fix
    /// them, "cannot check" with a reason elsewhere.
    pub fn expected_output(&self) -> ExpectedOutput {
        match self.params() {
            SpecParams::Veo(p) => ExpectedOutput {
                dimensions: match p.size() {
                    Some(size) => Expectation::Known((size.width, size.height)),
                    None => Expectation::CannotCheck(upstream_default("size")),
                },
                duration_seconds: match p.seconds() {
                    Some(seconds) => Expectation::Known(f64::from(seconds)),
                    None => Expectation::CannotCheck(upstream_default("seconds")),
                },
            },
            SpecParams::Seedance(p) => ExpectedOutput {
                dimensions: match (p.pixels(), p.resolution(), p.ratio()) {
                    (Some(size), _, _) => Expectation::Known((size.width, size.height)),
                    (None, Some(resolution), Some(ratio)) => Expectation::CannotCheck(format!(
                        "the pixel table has no {resolution} {ratio} cell (the page gives none)"
                    )),
                    (None, _, _) => {
                        Expectation::CannotCheck(upstream_default("resolution and ratio"))
                    }
                },
                duration_seconds: match p.duration() {
                    Some(seconds) => Expectation::Known(f64::from(seconds)),
                    None => Expectation::CannotCheck(upstream_default("duration")),
                },
            },
            SpecParams::Generic(_) => {
                let why = "a generic model: the catalog does not say what it produces";
                ExpectedOutput {
                    dimensions: Expectation::CannotCheck(why.to_owned()),
                    duration_seconds: Expectation::CannotCheck(why.to_owned()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(width: u32, height: u32, seconds: f64) -> ExpectedOutput {
        ExpectedOutput {
            dimensions: Expectation::Known((width, height)),
            duration_seconds: Expectation::Known(seconds),
        }
    }

    #[test]
    fn compare_accepts_duration_within_half_a_second() {
        let expected = known(1280, 720, 8.0);
        for actual in [8.0, 7.5, 8.5, 8.04, 7.96] {
            assert_eq!(expected.compare(1280, 720, actual), None, "{actual}");
        }
    }

    #[test]
    fn compare_reports_duration_outside_half_a_second() {
        let expected = known(1280, 720, 8.0);
        for actual in [7.49, 8.51, 4.0, 0.0, f64::NAN, f64::INFINITY] {
            let mismatch = expected.compare(1280, 720, actual);
            assert!(
                mismatch.as_deref().is_some_and(|m| m.contains("duration")),
                "{actual}: {mismatch:?}"
            );
        }
    }

    #[test]
    fn compare_reports_other_pixels_including_swapped_sides() {
        let expected = known(1280, 720, 6.0);
        let mismatch = expected.compare(720, 1280, 6.0);
        assert_eq!(
            mismatch.as_deref(),
            Some("size is 720x1280, expected 1280x720")
        );
    }

    #[test]
    fn compare_reports_both_mismatches_at_once() {
        let mismatch = known(864, 496, 4.0).compare(1280, 720, 8.0);
        assert_eq!(
            mismatch.as_deref(),
            Some("size is 1280x720, expected 864x496; duration is 8.00 s, expected 4 s (+-0.5 s)")
        );
    }

    #[test]
    fn compare_never_reports_what_cannot_be_checked() {
        let expected = ExpectedOutput {
            dimensions: Expectation::CannotCheck("why".into()),
            duration_seconds: Expectation::CannotCheck("why".into()),
        };
        assert_eq!(expected.compare(1, 1, f64::NAN), None);
    }
}
