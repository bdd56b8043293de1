//! The dispatcher's settings (section `[dispatcher]`) and their named defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const DEFAULT_FIRST_POLL_AFTER_MS: u64 = 15_000;
/// CONTRACT.md recommends one status call every 20-30 s per task.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 20_000;
/// +-20% jitter, so jobs created together do not poll together.
pub const DEFAULT_POLL_JITTER: f64 = 0.2;
/// ARCHITECTURE.md: 5xx and timeouts back off exponentially from 2 s ...
pub const DEFAULT_BACKOFF_MIN_MS: u64 = 2_000;
/// ... to 60 s, with jitter.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 60_000;
/// ARCHITECTURE.md: a job older than 6 h fails with `JOB_MAX_AGE`, never earlier for polling.
pub const DEFAULT_MAX_AGE_MS: u64 = 6 * 3600 * 1000;
/// Jobs advanced at once; the upstream limiter caps the HTTP calls underneath separately.
pub const DEFAULT_MAX_CONCURRENT_JOBS: usize = 64;
/// Most due jobs read from the store per turn (never more than the free slots).
pub const DEFAULT_BATCH: u32 = 256;
/// Longest sleep of the run loop when nothing is due, so a job inserted by another instance
/// (or by hand) is noticed without a wake-up.
pub const DEFAULT_IDLE_WAKE_MS: u64 = 1_000;
/// A job in `Submitting` whose create has not answered within this is treated as crashed
/// mid-create (unknown outcome). Longer than the upstream request timeout (60 s).
pub const DEFAULT_SUBMIT_LEASE_MS: u64 = 120_000;
/// How long a claim on a job lasts unless renewed: longer than one upstream request (60 s), so
/// a step that waits for a slow answer does not lose its job; a dead owner's jobs are taken
/// over within this. Long steps (downloads, waits at the rate limit) renew it.
pub const DEFAULT_LEASE_MS: u64 = 120_000;
/// The longest time between renewals of a running step's lease; also how soon a step learns
/// of a cancel or delete recorded for its job.
pub const MAX_RENEW_INTERVAL_MS: u64 = 5_000;

/// Free space the data directory keeps: below it downloads wait (and readiness says why)
/// instead of filling the disk the database lives on. 1 GiB: a few real videos, and room for
/// the database to keep writing while an operator frees space.
pub const DEFAULT_MIN_FREE_DISK_BYTES: u64 = 1024 * 1024 * 1024;
/// How long a download waits before it looks at the free space again.
pub const DISK_WAIT_MS: u64 = 30_000;

/// What to do when a create's outcome is unknown (ARCHITECTURE.md, "No double spend").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownCreatePolicy {
    /// Fail the job with `UPSTREAM_OUTCOME_UNKNOWN`; never send it again (the default).
    #[default]
    Fail,
    /// Send it again, accepting that upstream may generate (and bill) it twice.
    Resubmit,
}

/// Dispatcher settings (section `[dispatcher]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Whether the dispatcher runs at all (off: jobs are accepted and wait; benchmarks of
    /// intake alone use this).
    pub enabled: bool,
    /// See [`DEFAULT_FIRST_POLL_AFTER_MS`].
    pub first_poll_after_ms: u64,
    /// Per-model overrides of `first_poll_after_ms`.
    pub first_poll_after_ms_by_model: BTreeMap<String, u64>,
    /// See [`DEFAULT_POLL_INTERVAL_MS`].
    pub poll_interval_ms: u64,
    /// See [`DEFAULT_POLL_JITTER`].
    pub poll_jitter: f64,
    /// See [`DEFAULT_BACKOFF_MIN_MS`].
    pub backoff_min_ms: u64,
    /// See [`DEFAULT_BACKOFF_MAX_MS`].
    pub backoff_max_ms: u64,
    /// See [`DEFAULT_MAX_AGE_MS`].
    pub max_age_ms: u64,
    /// See [`UnknownCreatePolicy`].
    pub on_unknown_create: UnknownCreatePolicy,
    /// See [`DEFAULT_MAX_CONCURRENT_JOBS`].
    pub max_concurrent_jobs: usize,
    /// See [`DEFAULT_BATCH`].
    pub batch: u32,
    /// See [`DEFAULT_IDLE_WAKE_MS`].
    pub idle_wake_ms: u64,
    /// See [`DEFAULT_SUBMIT_LEASE_MS`].
    pub submit_lease_ms: u64,
    /// See [`DEFAULT_LEASE_MS`].
    pub lease_ms: u64,
    /// See [`DEFAULT_MIN_FREE_DISK_BYTES`]; 0 = no floor.
    pub min_free_disk_bytes: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            first_poll_after_ms: DEFAULT_FIRST_POLL_AFTER_MS,
            first_poll_after_ms_by_model: BTreeMap::new(),
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            poll_jitter: DEFAULT_POLL_JITTER,
            backoff_min_ms: DEFAULT_BACKOFF_MIN_MS,
            backoff_max_ms: DEFAULT_BACKOFF_MAX_MS,
            max_age_ms: DEFAULT_MAX_AGE_MS,
            on_unknown_create: UnknownCreatePolicy::Fail,
            max_concurrent_jobs: DEFAULT_MAX_CONCURRENT_JOBS,
            batch: DEFAULT_BATCH,
            idle_wake_ms: DEFAULT_IDLE_WAKE_MS,
            submit_lease_ms: DEFAULT_SUBMIT_LEASE_MS,
            lease_ms: DEFAULT_LEASE_MS,
            min_free_disk_bytes: DEFAULT_MIN_FREE_DISK_BYTES,
        }
    }
}
