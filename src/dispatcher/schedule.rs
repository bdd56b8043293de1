//! When a job is looked at next: poll intervals with jitter, exponential backoff, and the
//! delay after a retryable upstream error.

use super::Dispatcher;
use crate::upstream::UpstreamError;

impl Dispatcher {
    pub(super) fn first_poll_after(&self, model: &str) -> u64 {
        self.config
            .first_poll_after_ms_by_model
            .get(model)
            .copied()
            .unwrap_or(self.config.first_poll_after_ms)
    }

    pub(super) fn poll_interval(&self) -> u64 {
        jitter(self.config.poll_interval_ms, self.config.poll_jitter)
    }

    /// Exponential backoff from `backoff_min_ms` to `backoff_max_ms`, with jitter in the upper
    /// half so retries of many jobs spread out.
    pub(super) fn backoff(&self, attempts: u32) -> u64 {
        backoff_ms(
            attempts,
            self.config.backoff_min_ms,
            self.config.backoff_max_ms,
        )
    }

    /// After a 429 the upstream limiter already pauses every caller; the job itself waits at
    /// least the server's `Retry-After`.
    pub(super) fn retry_delay(&self, attempts: u32, e: &UpstreamError) -> u64 {
        let backoff = self.backoff(attempts);
        match e.retry_after() {
            Some(after) => backoff.max(after.as_millis() as u64),
            None => backoff,
        }
    }
}

/// `base` +- `fraction`.
pub fn jitter(base: u64, fraction: f64) -> u64 {
    let fraction = fraction.clamp(0.0, 1.0);
    if fraction == 0.0 || base == 0 {
        return base;
    }
    let factor = 1.0 + rand::random_range(-fraction..=fraction);
    (base as f64 * factor).round() as u64
}

/// Exponential backoff: `min * 2^(attempts-1)` capped at `max`, then a random point in its
/// upper half.
pub fn backoff_ms(attempts: u32, min: u64, max: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(32);
    let ceiling = min.saturating_mul(1u64 << exp).min(max.max(min));
    if ceiling == 0 {
        return 0;
    }
    let half = ceiling / 2;
    half + rand::random_range(0..=ceiling - half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        for _ in 0..100 {
            let first = backoff_ms(1, 2_000, 60_000);
            assert!((1_000..=2_000).contains(&first), "{first}");
            let fourth = backoff_ms(4, 2_000, 60_000);
            assert!((8_000..=16_000).contains(&fourth), "{fourth}");
            let capped = backoff_ms(30, 2_000, 60_000);
            assert!((30_000..=60_000).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn jitter_stays_within_the_fraction() {
        for _ in 0..1000 {
            let v = jitter(20_000, 0.2);
            assert!((16_000..=24_000).contains(&v), "{v}");
        }
        assert_eq!(jitter(20_000, 0.0), 20_000);
    }
}
