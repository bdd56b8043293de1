//! One rate limit and one concurrency cap for every upstream call of the process.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// ARCHITECTURE.md default: at most 10 upstream requests per second across the process.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 10;
/// ARCHITECTURE.md default: at most 32 creates and status calls in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;
/// Content and last-frame downloads in flight, in their own pool (a download counts for as
/// long as it streams): slow downloads wait for each other, never for creates and polls, and
/// creates and polls never wait for them. 8 keeps a 1 Gbit/s link busy with CDN-speed
/// transfers and bounds the partial files open at once.
pub const DEFAULT_MAX_DOWNLOADS: usize = 8;
/// ARCHITECTURE.md default: a 429 without `Retry-After` pauses every caller for 30 s.
pub const DEFAULT_RATE_LIMITED_PAUSE: Duration = Duration::from_secs(30);
/// A `Retry-After` longer than this is capped: a misconfigured gateway answering "one day" must
/// not freeze every job for a day.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Limits of the shared gate.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitConfig {
    /// Requests per second across the process.
    pub requests_per_second: u32,
    /// Creates and status calls in flight at once.
    pub max_in_flight: usize,
    /// Downloads (content, last frames) in flight at once, in a pool of their own.
    pub max_downloads: usize,
    /// Pause for everyone after a 429 that had no `Retry-After`, in milliseconds.
    pub rate_limited_pause_ms: u64,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_downloads: DEFAULT_MAX_DOWNLOADS,
            rate_limited_pause_ms: DEFAULT_RATE_LIMITED_PAUSE.as_millis() as u64,
        }
    }
}

/// Why a limit configuration was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitConfigError {
    /// Zero would block every call forever.
    #[error("upstream.limits.requests_per_second must be at least 1 (got 0)")]
    ZeroRate,
    /// Zero would block every call forever.
    #[error("upstream.limits.max_in_flight must be at least 1 (got 0)")]
    ZeroInFlight,
    /// Zero would block every download forever.
    #[error("upstream.limits.max_downloads must be at least 1 (got 0)")]
    ZeroDownloads,
}

/// Which in-flight cap a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Creates and status calls: short, and what keeps every job moving.
    Calls,
    /// Content and last-frame downloads: long, held while they stream.
    Transfers,
}

/// The gate every upstream request passes: waits out a 429 pause, takes an in-flight slot of
/// its [`Pool`], then a rate token (one rate for both pools: upstream counts requests). Shared
/// (`Arc`) by every caller in the process.
pub struct UpstreamLimiter {
    rate: DefaultDirectRateLimiter,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    downloads: Arc<Semaphore>,
    max_downloads: usize,
    paused_until: Mutex<Option<Instant>>,
    default_pause: Duration,
}

/// An in-flight slot; the request holds it until it is dropped (for content: until the stream
/// is dropped).
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    /// How long this caller waited at the gate (pause, slot and rate token together).
    pub waited: Duration,
}

impl UpstreamLimiter {
    /// Builds the gate.
    pub fn new(config: &LimitConfig) -> Result<Self, LimitConfigError> {
        let rate = NonZeroU32::new(config.requests_per_second).ok_or(LimitConfigError::ZeroRate)?;
        if config.max_in_flight == 0 {
            return Err(LimitConfigError::ZeroInFlight);
        }
        if config.max_downloads == 0 {
            return Err(LimitConfigError::ZeroDownloads);
        }
        Ok(Self {
            rate: RateLimiter::direct(Quota::per_second(rate)),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            downloads: Arc::new(Semaphore::new(config.max_downloads)),
            max_downloads: config.max_downloads,
            paused_until: Mutex::new(None),
            default_pause: Duration::from_millis(config.rate_limited_pause_ms),
        })
    }

    /// Waits until a request may go out. Returns `None` only if the gate was closed, which
    /// happens when the process shuts down.
    pub async fn acquire(&self, pool: Pool) -> Option<InFlight> {
        let started = Instant::now();
        let slots = match pool {
            Pool::Calls => &self.in_flight,
            Pool::Transfers => &self.downloads,
        };
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
            }
            let permit = slots.clone().acquire_owned().await.ok()?;
            self.rate.until_ready().await;
            // A 429 may have arrived while this caller waited for its slot: honour it too.
            if self.paused_until().is_none() {
                return Some(InFlight {
                    _permit: permit,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// Pauses every caller after a 429: for `retry_after` when upstream gave one (capped at
    /// [`MAX_RETRY_AFTER`]), else for the configured default. A shorter pause never shortens
    /// a longer one already in force.
    pub fn pause_after_rate_limit(&self, retry_after: Option<Duration>) {
        let pause = retry_after
            .unwrap_or(self.default_pause)
            .min(MAX_RETRY_AFTER);
        let until = Instant::now() + pause;
        let mut guard = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none_or(|current| current < until) {
            *guard = Some(until);
        }
    }

    /// The end of the pause in force, if any.
    pub fn paused_until(&self) -> Option<Instant> {
        let mut guard = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        match *guard {
            Some(until) if until > Instant::now() => Some(until),
            Some(_) => {
                *guard = None;
                None
            }
            None => None,
        }
    }

    /// Creates and status calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.in_flight.available_permits()
    }

    /// Downloads in flight now.
    pub fn downloads_in_flight(&self) -> usize {
        self.max_downloads - self.downloads.available_permits()
    }

    /// The configured cap.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// Stops handing out slots (shutdown): waiting callers get `None`.
    pub fn close(&self) {
        self.in_flight.close();
        self.downloads.close();
    }
}

impl std::fmt::Debug for UpstreamLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamLimiter")
            .field("max_in_flight", &self.max_in_flight)
            .field("in_flight", &self.in_flight())
            .field("max_downloads", &self.max_downloads)
            .field("downloads_in_flight", &self.downloads_in_flight())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_in_flight: usize) -> UpstreamLimiter {
        UpstreamLimiter::new(&LimitConfig {
            requests_per_second: 1000,
            max_in_flight,
            max_downloads: 1,
            rate_limited_pause_ms: 30_000,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn in_flight_is_capped_and_released_on_drop() {
        let gate = limiter(2);
        let a = gate.acquire(Pool::Calls).await.unwrap();
        let _b = gate.acquire(Pool::Calls).await.unwrap();
        assert_eq!(gate.in_flight(), 2);
        let third =
            tokio::time::timeout(Duration::from_millis(50), gate.acquire(Pool::Calls)).await;
        assert!(
            third.is_err(),
            "a third caller must wait while two are in flight"
        );
        drop(a);
        assert_eq!(gate.in_flight(), 1);
        assert!(gate.acquire(Pool::Calls).await.is_some());
    }

    #[tokio::test]
    async fn downloads_have_their_own_slots_and_never_take_those_of_calls() {
        let gate = limiter(1);
        let download = gate.acquire(Pool::Transfers).await.unwrap();
        assert_eq!(gate.downloads_in_flight(), 1);
        // The one download slot is taken: another download waits ...
        let second =
            tokio::time::timeout(Duration::from_millis(50), gate.acquire(Pool::Transfers)).await;
        assert!(second.is_err(), "a second download must wait for the first");
        // ... but a call does not.
        let call = tokio::time::timeout(Duration::from_secs(5), gate.acquire(Pool::Calls))
            .await
            .expect("a call must not wait for a download's slot");
        assert!(call.is_some());
        drop(download);
        assert_eq!(gate.downloads_in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_retry_after_pauses_everyone_for_the_default() {
        let gate = limiter(4);
        gate.pause_after_rate_limit(None);
        let until = gate.paused_until().unwrap();
        let pause = until - Instant::now();
        assert!(pause > Duration::from_secs(29) && pause <= Duration::from_secs(30));
        let before = Instant::now();
        let slot = gate.acquire(Pool::Calls).await.unwrap();
        assert!(Instant::now() >= until);
        assert!(
            slot.waited >= Duration::from_secs(29),
            "{:?}",
            before.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_capped_and_never_shortens_a_longer_pause() {
        let gate = limiter(4);
        gate.pause_after_rate_limit(Some(Duration::from_secs(5)));
        let first = gate.paused_until().unwrap();
        gate.pause_after_rate_limit(Some(Duration::from_secs(1)));
        assert_eq!(gate.paused_until().unwrap(), first);
        gate.pause_after_rate_limit(Some(Duration::from_secs(86_400)));
        let capped = gate.paused_until().unwrap() - Instant::now();
        assert!(capped <= MAX_RETRY_AFTER);
    }

    #[test]
    fn zero_limits_are_refused_with_the_field_named() {
        let err = UpstreamLimiter::new(&LimitConfig {
            requests_per_second: 0,
            ..LimitConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("requests_per_second"));
        let err = UpstreamLimiter::new(&LimitConfig {
            max_in_flight: 0,
            ..LimitConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_in_flight"));
        let err = UpstreamLimiter::new(&LimitConfig {
            max_downloads: 0,
            ..LimitConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_downloads"));
    }

    #[tokio::test]
    async fn closed_gate_answers_none() {
        let gate = limiter(1);
        gate.close();
        assert!(gate.acquire(Pool::Calls).await.is_none());
    }
}
