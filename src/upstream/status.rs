//! The one place where upstream status spellings become states (U1, U4).

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// A task's state as vidgate understands it, whatever the upstream called it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamState {
    /// Accepted, not started.
    Queued,
    /// Generating. Also every spelling we do not know (U1): never a failure.
    Processing,
    /// Finished with (supposedly) a video.
    Completed,
    /// Upstream says it failed.
    Failed,
    /// Upstream cancelled it (Ark's `cancelled`).
    Cancelled,
    /// Upstream let it expire (Ark's `expired`).
    Expired,
}

impl UpstreamState {
    /// Whether upstream will never change this state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Expired
        )
    }
}

/// A status as upstream wrote it, with the state it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalisedStatus {
    /// The verbatim spelling, kept for `Video.upstream_status`.
    pub raw: String,
    /// What it means.
    pub state: UpstreamState,
    /// False when the spelling was not one we know and was read as "still running".
    pub recognised: bool,
}

/// How many distinct unknown spellings are remembered for the log-once rule; past that they are
/// still read as running, only no longer logged (an upstream inventing spellings cannot grow
/// our memory).
pub const MAX_REMEMBERED_UNKNOWN_STATUSES: usize = 64;

/// Reads an upstream status. Case and surrounding whitespace are ignored. Unknown spellings mean
/// "still running" (U1) and are logged once per spelling per process.
pub fn normalise(raw: &str) -> NormalisedStatus {
    let key = raw.trim().to_ascii_lowercase();
    let state = match key.as_str() {
        "queued" | "pending" | "submitted" => Some(UpstreamState::Queued),
        // U1: the create example answers `in_progress`; U4: Ark says `running`.
        "processing" | "in_progress" | "running" => Some(UpstreamState::Processing),
        // U4: Ark says `succeeded`.
        "completed" | "succeeded" => Some(UpstreamState::Completed),
        "failed" => Some(UpstreamState::Failed),
        "cancelled" | "canceled" => Some(UpstreamState::Cancelled),
        "expired" => Some(UpstreamState::Expired),
        _ => None,
    };
    match state {
        Some(state) => NormalisedStatus {
            raw: raw.to_owned(),
            state,
            recognised: true,
        },
        None => {
            log_unknown_once(&key);
            NormalisedStatus {
                raw: raw.to_owned(),
                state: UpstreamState::Processing,
                recognised: false,
            }
        }
    }
}

fn log_unknown_once(key: &str) {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
    // A poisoned lock only means another thread panicked while logging; the set is still usable.
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if seen.contains(key) || seen.len() >= MAX_REMEMBERED_UNKNOWN_STATUSES {
        return;
    }
    seen.insert(key.to_owned());
    tracing::warn!(
        upstream_status = %key,
        "upstream sent a status spelling vidgate does not know; treating it as still running (U1)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u1_u4_every_known_spelling_maps_to_one_state() {
        let table = [
            ("queued", UpstreamState::Queued),
            ("processing", UpstreamState::Processing),
            ("in_progress", UpstreamState::Processing),
            ("running", UpstreamState::Processing),
            ("completed", UpstreamState::Completed),
            ("succeeded", UpstreamState::Completed),
            ("failed", UpstreamState::Failed),
            ("cancelled", UpstreamState::Cancelled),
            ("canceled", UpstreamState::Cancelled),
            ("expired", UpstreamState::Expired),
            (" Completed ", UpstreamState::Completed),
        ];
        for (raw, want) in table {
            let got = normalise(raw);
            assert_eq!(got.state, want, "{raw}");
            assert!(got.recognised, "{raw}");
            assert_eq!(got.raw, raw);
        }
    }

    #[test]
    fn u1_unknown_spelling_is_still_running_never_failure() {
        for raw in ["rendering", "", "FAILED_SOMEHOW", "done?"] {
            let got = normalise(raw);
            assert_eq!(got.state, UpstreamState::Processing, "{raw}");
            assert!(!got.recognised);
            assert!(!got.state.is_terminal());
        }
    }

    #[test]
    fn terminal_states_are_exactly_the_four_final_ones() {
        assert!(UpstreamState::Completed.is_terminal());
        assert!(UpstreamState::Failed.is_terminal());
        assert!(UpstreamState::Cancelled.is_terminal());
        assert!(UpstreamState::Expired.is_terminal());
        assert!(!UpstreamState::Queued.is_terminal());
        assert!(!UpstreamState::Processing.is_terminal());
    }
}
