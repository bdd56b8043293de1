//! Readiness: is this process able to do its work right now? One shared state, read by
//! `/readyz` and by the gRPC health service, and updated where it changes.
//!
//! - **store**: answers a query (and its writer task is alive);
//! - **broker** (only with `[amqp]`): the intake consumer is registered and the event relay is
//!   connected with confirms on. The AMQP side pushes its state here ([`Readiness::set_broker`])
//!   when it changes, so this module knows nothing of the intake's types;
//! - **dispatcher** (only when enabled): its loop has turned recently, as its [`Heartbeat`]
//!   says (this module knows nothing of the dispatcher's type either). A disabled dispatcher
//!   (`dispatcher.enabled = false`) is reported as such and does not make vidgate unready: jobs
//!   are accepted and wait, as configured;
//! - **disk** (only when a free-space floor is set for downloads): the data directory's file
//!   system has at least `dispatcher.min_free_disk_bytes` free; below it downloads wait, and
//!   this says so (a nearly full disk also threatens the embedded database's writes);
//! - **objects** (only with a remote object store, `[blob] url = "s3://..."`): the store
//!   answers a request. Shown, but it does not make vidgate unready: an outage of the shared
//!   store hits every instance alike, and taking them all out of rotation would also stop
//!   creates, status reads and lists, which do not need it. Downloads wait with backoff while
//!   it is down, and reads of videos answer `UNAVAILABLE` with a retry delay;
//! - **shutting down**: once [`Readiness::shut_down`] is called, never ready again.
//!
//! Checks that must be asked (store, dispatcher) run in [`Readiness::refresh`] (every `/readyz`
//! and a periodic loop); every change is published at once on a [`watch`] channel that the
//! gRPC health service follows, so the two can never disagree.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Mutex, watch};

use crate::job::now_ms;
use crate::store::JobStore;

/// How long a store check may take before it counts as failed.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The dispatcher loop counts as stalled after this long without a turn (it turns at least
/// every `dispatcher.idle_wake_ms`).
pub const MIN_DISPATCHER_STALL: Duration = Duration::from_secs(30);

/// A loop that says when it last turned: the dispatcher implements it, so readiness can
/// watch the loop without importing it.
pub trait Heartbeat: Send + Sync {
    /// When the loop last turned (ms since the epoch; 0 if it never ran).
    fn last_beat_ms(&self) -> i64;
}

/// One check's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum Check {
    /// Working.
    Ok,
    /// Not configured: not part of readiness.
    Disabled,
    /// Not working, and why.
    Failing(String),
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReadinessReport {
    /// Every enabled check is `Ok` and the process is not shutting down.
    pub ready: bool,
    /// The process is stopping (SIGTERM): it finishes what it has and takes nothing new.
    pub shutting_down: bool,
    /// The job store.
    pub store: Check,
    /// RabbitMQ (intake and relay).
    pub broker: Check,
    /// The dispatcher loop.
    pub dispatcher: Check,
    /// Free disk space for downloads.
    pub disk: Check,
    /// The remote object store holding the videos (not part of `ready`, see the module).
    pub objects: Check,
}

impl ReadinessReport {
    fn settle(&mut self) {
        self.ready = !self.shutting_down
            && [&self.store, &self.broker, &self.dispatcher, &self.disk]
                .iter()
                .all(|c| !matches!(c, Check::Failing(_)));
    }
}

/// The shared readiness state and what it looks at. Clones share the state.
#[derive(Clone)]
pub struct Readiness {
    store: Arc<dyn JobStore>,
    dispatcher: Option<(Arc<dyn Heartbeat>, Duration)>,
    /// The directory downloads go to, and the free space it must keep.
    disk: Option<(std::path::PathBuf, u64)>,
    /// The remote object store, when the videos are in one.
    objects: Option<crate::blob::BlobStore>,
    state: Arc<watch::Sender<ReadinessReport>>,
    /// One refresh at a time, so an older result is never published over a newer one.
    refreshing: Arc<Mutex<()>>,
}

impl Readiness {
    /// `broker`: whether a broker is part of readiness (it starts failing until the AMQP side
    /// reports in); `dispatcher` only when it runs, `idle_wake` its configured idle turn.
    /// Not ready until the first [`Readiness::refresh`].
    pub fn new(
        store: Arc<dyn JobStore>,
        broker: bool,
        dispatcher: Option<Arc<dyn Heartbeat>>,
        idle_wake: Duration,
    ) -> Self {
        let stall = (idle_wake * 10).max(MIN_DISPATCHER_STALL);
        let unchecked = || Check::Failing("not checked yet".into());
        let initial = ReadinessReport {
            ready: false,
            shutting_down: false,
            store: unchecked(),
            broker: if broker { unchecked() } else { Check::Disabled },
            dispatcher: if dispatcher.is_some() {
                unchecked()
            } else {
                Check::Disabled
            },
            disk: Check::Disabled,
            objects: Check::Disabled,
        };
        Self {
            store,
            dispatcher: dispatcher.map(|d| (d, stall)),
            disk: None,
            objects: None,
            state: Arc::new(watch::Sender::new(initial)),
            refreshing: Arc::new(Mutex::new(())),
        }
    }

    /// Checks that `dir` keeps `min_free` bytes free (0 = no check).
    pub fn with_disk_floor(mut self, dir: std::path::PathBuf, min_free: u64) -> Self {
        if min_free > 0 {
            self.disk = Some((dir, min_free));
        }
        self
    }

    /// Shows whether `blobs` answers, when it is a remote object store.
    pub fn with_objects(mut self, blobs: crate::blob::BlobStore) -> Self {
        if blobs.is_remote() {
            self.objects = Some(blobs);
        }
        self
    }

    /// The state as last published (no check runs).
    pub fn current(&self) -> ReadinessReport {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of the state.
    pub fn subscribe(&self) -> watch::Receiver<ReadinessReport> {
        self.state.subscribe()
    }

    /// Runs the store and dispatcher checks now, publishes the result and returns it.
    pub async fn refresh(&self) -> ReadinessReport {
        let _one = self.refreshing.lock().await;
        let store = match tokio::time::timeout(STORE_CHECK_TIMEOUT, self.store.health()).await {
            Ok(Ok(())) => Check::Ok,
            Ok(Err(e)) => Check::Failing(e.to_string()),
            Err(_) => Check::Failing(format!(
                "the store did not answer within {} ms",
                STORE_CHECK_TIMEOUT.as_millis()
            )),
        };
        let dispatcher = match &self.dispatcher {
            None => Check::Disabled,
            Some((d, stall)) => {
                let since = now_ms() - d.last_beat_ms();
                if since <= stall.as_millis() as i64 {
                    Check::Ok
                } else {
                    Check::Failing(format!(
                        "the dispatcher loop has not turned for {since} ms (limit {} ms)",
                        stall.as_millis()
                    ))
                }
            }
        };
        let disk = match &self.disk {
            None => Check::Disabled,
            Some((dir, floor)) => match crate::blob::disk_below_floor(dir, *floor) {
                Some(why) => Check::Failing(why),
                None => Check::Ok,
            },
        };
        let objects = match &self.objects {
            None => Check::Disabled,
            Some(blobs) => match tokio::time::timeout(STORE_CHECK_TIMEOUT, blobs.check()).await {
                Ok(Ok(())) => Check::Ok,
                Ok(Err(e)) => Check::Failing(e.to_string()),
                Err(_) => Check::Failing(format!(
                    "the object store {} did not answer within {} ms",
                    blobs.describe(),
                    STORE_CHECK_TIMEOUT.as_millis()
                )),
            },
        };
        self.update(|r| {
            r.store = store;
            r.dispatcher = dispatcher;
            r.disk = disk;
            r.objects = objects;
        })
    }

    /// The broker's state, pushed by the AMQP side whenever it changes.
    pub fn set_broker(&self, broker: Check) {
        self.update(|r| r.broker = broker);
    }

    /// From now on not ready (idempotent): the process is stopping.
    pub fn shut_down(&self) {
        self.update(|r| r.shutting_down = true);
    }

    fn update(&self, change: impl FnOnce(&mut ReadinessReport)) -> ReadinessReport {
        let mut out = None;
        self.state.send_if_modified(|r| {
            let before = r.clone();
            change(r);
            r.settle();
            out = Some(r.clone());
            *r != before
        });
        out.unwrap_or_else(|| self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(store: Check, broker: Check) -> ReadinessReport {
        let mut r = ReadinessReport {
            ready: false,
            shutting_down: false,
            store,
            broker,
            dispatcher: Check::Disabled,
            disk: Check::Disabled,
            objects: Check::Disabled,
        };
        r.settle();
        r
    }

    #[test]
    fn ready_means_nothing_failing_and_not_shutting_down() {
        assert!(report(Check::Ok, Check::Disabled).ready);
        assert!(!report(Check::Ok, Check::Failing("down".into())).ready);
        let mut r = report(Check::Ok, Check::Ok);
        r.shutting_down = true;
        r.settle();
        assert!(!r.ready);
    }
}
