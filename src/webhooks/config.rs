//! `[webhooks]`: where webhooks may go, how hard and how long vidgate tries.

use std::time::Duration;

use serde::Deserialize;

use super::target::TargetPolicy;

/// The retry schedule by default: the delay before each attempt after the first. About a day
/// in all (22 h 42 min 35 s), growing from seconds to hours, so a receiver that is down for a
/// deploy gets its events within seconds of coming back and one down for the night still gets
/// them in the morning.
pub const DEFAULT_RETRY_DELAYS: [&str; 9] =
    ["5s", "30s", "2m", "10m", "30m", "1h", "3h", "6h", "12h"];

/// Section `[webhooks]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Whether this instance delivers (fan-out and sending). Endpoints can be managed either way.
    pub enabled: bool,
    /// Plain `http://` URLs are accepted (tests, the demo, a receiver behind TLS termination
    /// on the same private network).
    pub allow_http: bool,
    /// Hosts that are, or resolve to, loopback, private, link-local (cloud metadata) or other
    /// internal addresses are accepted. Off by default: a webhook URL is a request vidgate
    /// makes on a user's behalf from inside the network.
    pub allow_private_targets: bool,
    /// Delays before the 2nd, 3rd, ... attempt (humantime, e.g. `"30s"`, `"2h"`); ±10 % jitter.
    /// After the last one fails the delivery is recorded as failed.
    pub retry_delays: Vec<String>,
    /// An endpoint whose every attempt has failed for this long is disabled (humantime).
    pub disable_after: String,
    /// Finished deliveries (and their attempts) are kept this long for `ListWebhookDeliveries`
    /// and replays (humantime).
    pub retention: String,
    /// Longest wait for a receiver to accept the connection (and TLS), in ms.
    pub connect_timeout_ms: u64,
    /// Longest wait for one attempt in all (connect, send, response headers, bounded body), ms.
    pub timeout_ms: u64,
    /// Response body bytes read at most (the rest is dropped): enough for an error message.
    pub max_response_bytes: usize,
    /// Attempts in flight at once on this instance.
    pub max_in_flight: u32,
    /// Attempts in flight at once per endpoint, across all instances: one slow endpoint holds
    /// at most this many of the slots above.
    pub max_in_flight_per_endpoint: u32,
    /// Endpoints one tenant may have.
    pub max_endpoints_per_tenant: u32,
    /// How often the delivery queue is looked at when nothing wakes it (deliveries of other
    /// instances, retries coming due), in ms.
    pub poll_interval_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow_http: false,
            allow_private_targets: false,
            retry_delays: DEFAULT_RETRY_DELAYS
                .iter()
                .map(|d| (*d).to_owned())
                .collect(),
            disable_after: "5d".to_owned(),
            retention: "7d".to_owned(),
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            max_response_bytes: 4_096,
            max_in_flight: 128,
            max_in_flight_per_endpoint: 4,
            max_endpoints_per_tenant: 100,
            poll_interval_ms: 1_000,
        }
    }
}

/// `[webhooks]` with its durations parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// See [`WebhooksConfig::enabled`].
    pub enabled: bool,
    /// Which URLs are accepted.
    pub policy: TargetPolicy,
    /// See [`WebhooksConfig::retry_delays`].
    pub retry_delays: Vec<Duration>,
    /// See [`WebhooksConfig::disable_after`].
    pub disable_after: Duration,
    /// See [`WebhooksConfig::retention`].
    pub retention: Duration,
    /// See [`WebhooksConfig::connect_timeout_ms`].
    pub connect_timeout: Duration,
    /// See [`WebhooksConfig::timeout_ms`].
    pub timeout: Duration,
    /// See [`WebhooksConfig::max_response_bytes`].
    pub max_response_bytes: usize,
    /// See [`WebhooksConfig::max_in_flight`].
    pub max_in_flight: u32,
    /// See [`WebhooksConfig::max_in_flight_per_endpoint`].
    pub max_in_flight_per_endpoint: u32,
    /// See [`WebhooksConfig::max_endpoints_per_tenant`].
    pub max_endpoints_per_tenant: u32,
    /// See [`WebhooksConfig::poll_interval_ms`].
    pub poll_interval: Duration,
}

/// Most retries a schedule may have (each is a row of attempts kept per delivery).
pub const MAX_RETRIES: usize = 30;

fn duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "webhooks.{key} {text:?} is not a duration ({e}); use e.g. \"30s\", \"2h\" or \"5d\""
        )
    })
}

impl WebhooksConfig {
    /// The settings, or why they cannot work (naming the key and what is allowed).
    pub fn settings(&self) -> Result<WebhookSettings, String> {
        let retry_delays = self
            .retry_delays
            .iter()
            .map(|d| duration("retry_delays", d))
            .collect::<Result<Vec<_>, _>>()?;
        if retry_delays.len() > MAX_RETRIES {
            return Err(format!(
                "webhooks.retry_delays has {} entries; at most {MAX_RETRIES} are accepted",
                retry_delays.len()
            ));
        }
        if retry_delays.iter().any(|d| *d < Duration::from_millis(100)) {
            return Err("webhooks.retry_delays must each be at least 100ms".to_owned());
        }
        let disable_after = duration("disable_after", &self.disable_after)?;
        let retention = duration("retention", &self.retention)?;
        if retention < Duration::from_secs(60) {
            return Err("webhooks.retention must be at least 1m".to_owned());
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("timeout_ms", self.timeout_ms),
            ("poll_interval_ms", self.poll_interval_ms),
        ] {
            if value == 0 {
                return Err(format!("webhooks.{key} must be at least 1 (milliseconds)"));
            }
        }
        if self.timeout_ms > 300_000 {
            return Err("webhooks.timeout_ms must be at most 300000 (5 minutes)".to_owned());
        }
        for (key, value) in [
            ("max_in_flight", self.max_in_flight),
            (
                "max_in_flight_per_endpoint",
                self.max_in_flight_per_endpoint,
            ),
            ("max_endpoints_per_tenant", self.max_endpoints_per_tenant),
        ] {
            if value == 0 {
                return Err(format!("webhooks.{key} must be at least 1"));
            }
        }
        if self.max_response_bytes > 1024 * 1024 {
            return Err("webhooks.max_response_bytes must be at most 1048576".to_owned());
        }
        Ok(WebhookSettings {
            enabled: self.enabled,
            policy: TargetPolicy {
                allow_http: self.allow_http,
                allow_private_targets: self.allow_private_targets,
            },
            retry_delays,
            disable_after,
            retention,
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            timeout: Duration::from_millis(self.timeout_ms),
            max_response_bytes: self.max_response_bytes,
            max_in_flight: self.max_in_flight,
            max_in_flight_per_endpoint: self.max_in_flight_per_endpoint,
            max_endpoints_per_tenant: self.max_endpoints_per_tenant,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_schedule_lasts_about_a_day_and_bad_values_name_their_key() {
        let settings = WebhooksConfig::default().settings().unwrap();
        let total: Duration = settings.retry_delays.iter().sum();
        assert!(
            (Duration::from_secs(20 * 3600)..Duration::from_secs(26 * 3600)).contains(&total),
            "{total:?}"
        );
        let bad = WebhooksConfig {
            retry_delays: vec!["soon".into()],
            ..WebhooksConfig::default()
        };
        assert!(
            bad.settings()
                .unwrap_err()
                .contains("webhooks.retry_delays")
        );
        let bad = WebhooksConfig {
            max_in_flight_per_endpoint: 0,
            ..WebhooksConfig::default()
        };
        assert!(
            bad.settings()
                .unwrap_err()
                .contains("webhooks.max_in_flight_per_endpoint")
        );
    }
}
