//! vidgate's metrics, as OpenTelemetry instruments on a meter of the application's own meter
//! provider (so two applications in one process, as in tests, never mix their figures).
//!
//! Names follow OpenTelemetry conventions (dots, units as UCUM); the Prometheus exporter turns
//! `vidgate.jobs.accepted` into `vidgate_jobs_accepted_total` and a histogram in seconds into
//! `..._seconds_bucket/_sum/_count`.
//!
//! | instrument | kind | attributes |
//! |---|---|---|
//! | `vidgate.jobs.accepted` | counter | `vidgate.intake` (grpc, amqp), `vidgate.model` |
//! | `vidgate.jobs` | gauge | `vidgate.job.status` |
//! | `vidgate.jobs.finished` | counter | `vidgate.model`, `vidgate.job.outcome`, `vidgate.job.reason` |
//! | `vidgate.job.duration` (s) | histogram | `vidgate.model`, `vidgate.job.outcome` |
//! | `vidgate.upstream.request.duration` (s) | histogram | `vidgate.upstream.endpoint`, `http.response.status_code` (0 = no answer) |
//! | `vidgate.upstream.rate_limited` | counter | `vidgate.upstream.endpoint` (each HTTP 429) |
//! | `vidgate.upstream.rate_limit.wait` (s) | histogram | time spent waiting at the rate limit before a request |
//! | `vidgate.dispatcher.retries` | counter | `vidgate.step` (create, poll, download) |
//! | `vidgate.amqp.deliveries` | counter | `vidgate.amqp.outcome` (stored, duplicate, dead_lettered, requeued) |
//! | `vidgate.amqp.outbox.lag` | gauge | events committed but not yet confirmed by the broker |
//! | `vidgate.store.slow_operations` | counter | store operations past the slow threshold (PostgreSQL only) |
//! | `vidgate.subscribers` | up-down counter | `rpc.method` (live server streams) |
//! | `vidgate.stream.sent` (By) | counter | `rpc.method` (video bytes sent to clients) |
//! | `vidgate.stream.lagged` | counter | `rpc.method` (streams ended past their byte budget) |

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, MeterProvider as _, UpDownCounter};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::job::{Job, JobStatus};

/// Distinct model names kept as metric labels; more become `other`, so a caller sending
/// arbitrary model names cannot blow up the number of series.
pub const MAX_MODEL_LABELS: usize = 64;

/// Bucket bounds (seconds) of a whole job: generation takes minutes.
const JOB_SECONDS: [f64; 14] = [
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
];
/// Bucket bounds (seconds) of one upstream request or wait.
const REQUEST_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every label value of `vidgate.job.status`.
pub const STATUSES: [JobStatus; 5] = [
    JobStatus::Queued,
    JobStatus::Processing,
    JobStatus::Completed,
    JobStatus::Failed,
    JobStatus::Cancelled,
];

/// The instruments. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    jobs_accepted: Counter<u64>,
    jobs_finished: Counter<u64>,
    job_duration: Histogram<f64>,
    upstream_duration: Histogram<f64>,
    rate_limited: Counter<u64>,
    rate_limit_wait: Histogram<f64>,
    retries: Counter<u64>,
    subscribers: UpDownCounter<i64>,
    stream_bytes: Counter<u64>,
    stream_lagged: Counter<u64>,
    blobs_removed: Counter<u64>,
    blobs_uploaded: Counter<u64>,
    models: Mutex<HashSet<String>>,
    /// Keeps a private provider alive for [`Metrics::disabled`].
    _provider: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::disabled()
    }
}

impl Metrics {
    /// Instruments on `meter`.
    pub fn new(meter: &Meter) -> Self {
        Self::build(meter, None)
    }

    /// Instruments that record into nothing (a provider without readers), one shared set: for
    /// parts built outside an [`crate::app::Application`].
    pub fn disabled() -> Self {
        static DISABLED: LazyLock<Metrics> = LazyLock::new(|| {
            let provider = SdkMeterProvider::builder().build();
            let meter = provider.meter(super::SCOPE);
            Metrics::build(&meter, Some(provider))
        });
        DISABLED.clone()
    }

    fn build(meter: &Meter, provider: Option<SdkMeterProvider>) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs_accepted: meter
                    .u64_counter("vidgate.jobs.accepted")
                    .with_description("Jobs newly accepted (durably stored), by intake and model")
                    .build(),
                jobs_finished: meter
                    .u64_counter("vidgate.jobs.finished")
                    .with_description(
                        "Jobs that reached an end state, by model, outcome and failure reason",
                    )
                    .build(),
                job_duration: meter
                    .f64_histogram("vidgate.job.duration")
                    .with_unit("s")
                    .with_description("From acceptance to the end state")
                    .with_boundaries(JOB_SECONDS.to_vec())
                    .build(),
                upstream_duration: meter
                    .f64_histogram("vidgate.upstream.request.duration")
                    .with_unit("s")
                    .with_description(
                        "Upstream HTTP requests until their answer's headers, by endpoint and status code (0 = no answer)",
                    )
                    .with_boundaries(REQUEST_SECONDS.to_vec())
                    .build(),
                rate_limited: meter
                    .u64_counter("vidgate.upstream.rate_limited")
                    .with_description("HTTP 429 answers from upstream")
                    .build(),
                rate_limit_wait: meter
                    .f64_histogram("vidgate.upstream.rate_limit.wait")
                    .with_unit("s")
                    .with_description(
                        "Time a request waited at vidgate's own rate limit and in-flight cap",
                    )
                    .with_boundaries(REQUEST_SECONDS.to_vec())
                    .build(),
                retries: meter
                    .u64_counter("vidgate.dispatcher.retries")
                    .with_description("Steps retried after a transient failure, by step")
                    .build(),
                subscribers: meter
                    .i64_up_down_counter("vidgate.subscribers")
                    .with_description("Live server streams (watch, subscribe, download)")
                    .build(),
                stream_bytes: meter
                    .u64_counter("vidgate.stream.sent")
                    .with_unit("By")
                    .with_description("Video bytes streamed to clients")
                    .build(),
                stream_lagged: meter
                    .u64_counter("vidgate.stream.lagged")
                    .with_description(
                        "Streams ended SUBSCRIBER_LAGGED: the next event would have taken them past their byte budget",
                    )
                    .build(),
                blobs_removed: meter
                    .u64_counter("vidgate.blob.removed")
                    .with_description(
                        "Stored videos, last frames and staged downloads removed, by reason: expired (past [blob] retention), orphan (no job references it), staged (its job is gone or finished), deleted (DeleteVideo), upload (an unfinished S3 multipart upload aborted)",
                    )
                    .build(),
                blobs_uploaded: meter
                    .u64_counter("vidgate.blob.uploaded")
                    .with_description(
                        "Videos put in a remote object store, by mode: streamed (uploaded while downloading, completed once verified) or staged (uploaded from the staged file once whole)",
                    )
                    .build(),
                models: Mutex::new(HashSet::new()),
                _provider: provider,
            }),
        }
    }

    /// The model as a label value, bounded by [`MAX_MODEL_LABELS`].
    fn model_label(&self, model: &str) -> String {
        let mut models = self.inner.models.lock().unwrap_or_else(|p| p.into_inner());
        if models.contains(model) {
            return model.to_owned();
        }
        if models.len() < MAX_MODEL_LABELS {
            models.insert(model.to_owned());
            return model.to_owned();
        }
        "other".to_owned()
    }

    /// A new job was durably stored.
    pub fn job_accepted(&self, intake: &'static str, model: &str) {
        self.inner.jobs_accepted.add(
            1,
            &[
                KeyValue::new("vidgate.intake", intake),
                KeyValue::new("vidgate.model", self.model_label(model)),
            ],
        );
    }

    /// `job` was just committed in an end state.
    pub fn job_finished(&self, job: &Job) {
        let model = self.model_label(&job.model);
        let outcome = job.status().as_str();
        let reason = job.error().map(|e| e.reason.as_str()).unwrap_or("none");
        self.inner.jobs_finished.add(
            1,
            &[
                KeyValue::new("vidgate.model", model.clone()),
                KeyValue::new("vidgate.job.outcome", outcome),
                KeyValue::new("vidgate.job.reason", reason),
            ],
        );
        let end = job.complete_time_ms().unwrap_or(job.update_time_ms());
        let seconds = (end - job.create_time_ms).max(0) as f64 / 1000.0;
        self.inner.job_duration.record(
            seconds,
            &[
                KeyValue::new("vidgate.model", model),
                KeyValue::new("vidgate.job.outcome", outcome),
            ],
        );
    }

    /// One upstream request ended (`status` 0: no HTTP answer).
    pub fn upstream_request(&self, endpoint: &'static str, status: u16, elapsed: Duration) {
        let attributes = [
            KeyValue::new("vidgate.upstream.endpoint", endpoint),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ];
        self.inner
            .upstream_duration
            .record(elapsed.as_secs_f64(), &attributes);
        if status == 429 {
            self.inner.rate_limited.add(1, &attributes[..1]);
        }
    }

    /// A request waited `waited` at the rate limit before being sent.
    pub fn rate_limit_wait(&self, endpoint: &'static str, waited: Duration) {
        self.inner.rate_limit_wait.record(
            waited.as_secs_f64(),
            &[KeyValue::new("vidgate.upstream.endpoint", endpoint)],
        );
    }

    /// A dispatcher step will be tried again.
    pub fn retry(&self, step: &'static str) {
        self.inner
            .retries
            .add(1, &[KeyValue::new("vidgate.step", step)]);
    }

    /// A stored object or staged file was removed, for `reason`.
    pub fn blob_removed(&self, reason: &'static str) {
        self.inner
            .blobs_removed
            .add(1, &[KeyValue::new("vidgate.reason", reason)]);
    }

    /// A video was put in a remote object store, `streamed` or `staged`.
    pub fn blob_uploaded(&self, mode: &'static str) {
        self.inner
            .blobs_uploaded
            .add(1, &[KeyValue::new("vidgate.mode", mode)]);
    }

    /// A `method` stream was ended past its byte budget.
    pub fn stream_lagged(&self, method: &'static str) {
        self.inner
            .stream_lagged
            .add(1, &[KeyValue::new("rpc.method", method)]);
    }

    /// `bytes` of video were sent on a `method` stream.
    pub fn stream_bytes(&self, method: &'static str, bytes: u64) {
        self.inner
            .stream_bytes
            .add(bytes, &[KeyValue::new("rpc.method", method)]);
    }

    /// Counts a live stream until the guard is dropped.
    pub fn subscriber(&self, method: &'static str) -> SubscriberGuard {
        self.inner
            .subscribers
            .add(1, &[KeyValue::new("rpc.method", method)]);
        SubscriberGuard {
            metrics: self.clone(),
            method,
        }
    }
}

/// One live stream; dropping it counts the stream as ended.
#[derive(Debug)]
pub struct SubscriberGuard {
    metrics: Metrics,
    method: &'static str,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.metrics
            .inner
            .subscribers
            .add(-1, &[KeyValue::new("rpc.method", self.method)]);
    }
}

/// The AMQP side's counters as the state gauges read them. The intake implements this, so
/// metrics know nothing of its types.
pub trait AmqpCounters: Send + Sync {
    /// The counters now.
    fn amqp_counts(&self) -> AmqpCounts;
}

/// A reading of [`AmqpCounters`]. Counts only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AmqpCounts {
    /// Deliveries that created a new job and were acked.
    pub stored: u64,
    /// Deliveries that named an existing job and were acked.
    pub duplicates: u64,
    /// Deliveries dead-lettered (confirmed) and acked.
    pub dead_lettered: u64,
    /// Deliveries returned to the queue for a later try.
    pub requeued: u64,
    /// Highest event sequence below which the broker confirmed every event.
    pub relay_confirmed: i64,
}

/// Figures that are states rather than events (jobs per status, the relay's lag), read from
/// the store by [`StateGauges::refresh`] before each scrape and periodically, and reported by
/// observable instruments from the last reading (their callbacks cannot wait for the store).
#[derive(Clone)]
pub struct StateGauges {
    snapshot: Arc<Mutex<Snapshot>>,
    store: Arc<dyn crate::store::JobStore>,
    amqp: Option<Arc<dyn AmqpCounters>>,
}

#[derive(Debug, Default, Clone)]
struct Snapshot {
    by_status: Vec<(String, u64)>,
    outbox_lag: Option<u64>,
}

impl StateGauges {
    /// Registers `vidgate.jobs`, and with AMQP `vidgate.amqp.deliveries` and
    /// `vidgate.amqp.outbox.lag`, on `meter`.
    pub fn register(
        meter: &Meter,
        store: Arc<dyn crate::store::JobStore>,
        amqp: Option<Arc<dyn AmqpCounters>>,
    ) -> Self {
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let read = snapshot.clone();
        meter
            .u64_observable_gauge("vidgate.jobs")
            .with_description("Live (not deleted) jobs in each status")
            .with_callback(move |observer| {
                let s = read.lock().unwrap_or_else(|p| p.into_inner()).clone();
                for status in STATUSES {
                    let n = s
                        .by_status
                        .iter()
                        .find(|(name, _)| name == status.as_str())
                        .map_or(0, |(_, n)| *n);
                    observer.observe(n, &[KeyValue::new("vidgate.job.status", status.as_str())]);
                }
            })
            .build();
        let slow_store = store.clone();
        meter
            .u64_observable_counter("vidgate.store.slow_operations")
            .with_description(
                "Store operations slower than 500 ms (PostgreSQL store only; absent with SQLite)",
            )
            .with_callback(move |observer| {
                if let Some(n) = slow_store.slow_operations() {
                    observer.observe(n, &[]);
                }
            })
            .build();
        if let Some(handle) = amqp.clone() {
            meter
                .u64_observable_counter("vidgate.amqp.deliveries")
                .with_description("AMQP intake deliveries by outcome")
                .with_callback(move |observer| {
                    let s = handle.amqp_counts();
                    for (outcome, n) in [
                        ("stored", s.stored),
                        ("duplicate", s.duplicates),
                        ("dead_lettered", s.dead_lettered),
                        ("requeued", s.requeued),
                    ] {
                        observer.observe(n, &[KeyValue::new("vidgate.amqp.outcome", outcome)]);
                    }
                })
                .build();
            let read = snapshot.clone();
            meter
                .u64_observable_gauge("vidgate.amqp.outbox.lag")
                .with_description(
                    "Events committed to the store but not yet confirmed by the broker",
                )
                .with_callback(move |observer| {
                    let lag = read.lock().unwrap_or_else(|p| p.into_inner()).outbox_lag;
                    if let Some(lag) = lag {
                        observer.observe(lag, &[]);
                    }
                })
                .build();
        }
        Self {
            snapshot,
            store,
            amqp,
        }
    }

    /// Reads the store now. A failing store leaves the last reading in place (readiness
    /// reports the failure).
    pub async fn refresh(&self) {
        let by_status = match self.store.count_by_status().await {
            Ok(rows) => Some(rows),
            Err(e) => {
                tracing::debug!(error = %e, "metrics: jobs per status not read");
                None
            }
        };
        let outbox_lag = match &self.amqp {
            Some(amqp) => match self.store.latest_sequence().await {
                Ok(latest) => {
                    let confirmed = amqp.amqp_counts().relay_confirmed;
                    Some(u64::try_from(latest.saturating_sub(confirmed)).unwrap_or(0))
                }
                Err(_) => None,
            },
            None => None,
        };
        let mut s = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rows) = by_status {
            s.by_status = rows;
        }
        if outbox_lag.is_some() {
            s.outbox_lag = outbox_lag;
        }
    }
}
