//! Readiness: is this process able to do its work right now? One answer for `/readyz` and for
//! the gRPC health service.
//!
//! - **store**: answers a query (and its writer task is alive);
//! - **broker** (only with `[amqp]`): the intake consumer is registered and the event relay is
//!   connected with confirms on;
//! - **dispatcher** (only when enabled): its loop has turned recently. A disabled dispatcher
//!   (`dispatcher.enabled = false`) is reported as such and does not make vidgate unready: jobs
//!   are accepted and wait, as configured.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::dispatcher::Dispatcher;
use crate::intake::amqp::AmqpHandle;
use crate::job::now_ms;
use crate::store::JobStore;

/// How long a store check may take before it counts as failed.
pub const STORE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The dispatcher loop counts as stalled after this long without a turn (it turns at least
/// every `dispatcher.idle_wake_ms`).
pub const MIN_DISPATCHER_STALL: Duration = Duration::from_secs(30);

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
    /// Every enabled check is `Ok`.
    pub ready: bool,
    /// The job store.
    pub store: Check,
    /// RabbitMQ (intake and relay).
    pub broker: Check,
    /// The dispatcher loop.
    pub dispatcher: Check,
}

/// What readiness looks at.
#[derive(Clone)]
pub struct Readiness {
    store: Arc<dyn JobStore>,
    amqp: Option<AmqpHandle>,
    dispatcher: Option<(Arc<Dispatcher>, Duration)>,
}

impl Readiness {
    /// `dispatcher` only when it runs; `idle_wake` is its configured idle turn.
    pub fn new(
        store: Arc<dyn JobStore>,
        amqp: Option<AmqpHandle>,
        dispatcher: Option<Arc<Dispatcher>>,
        idle_wake: Duration,
    ) -> Self {
        let stall = (idle_wake * 10).max(MIN_DISPATCHER_STALL);
        Self {
            store,
            amqp,
            dispatcher: dispatcher.map(|d| (d, stall)),
        }
    }

    /// Runs every check now.
    pub async fn check(&self) -> ReadinessReport {
        let store = match tokio::time::timeout(STORE_CHECK_TIMEOUT, self.store.health()).await {
            Ok(Ok(())) => Check::Ok,
            Ok(Err(e)) => Check::Failing(e.to_string()),
            Err(_) => Check::Failing(format!(
                "the store did not answer within {} ms",
                STORE_CHECK_TIMEOUT.as_millis()
            )),
        };
        let broker = match &self.amqp {
            None => Check::Disabled,
            Some(amqp) => {
                let s = amqp.status();
                match (s.consuming, s.relay_connected) {
                    (true, true) => Check::Ok,
                    (false, _) => Check::Failing(format!(
                        "the AMQP intake is not consuming{}",
                        reason(&s.intake_error)
                    )),
                    (true, false) => Check::Failing(format!(
                        "the AMQP event relay is not connected{}",
                        reason(&s.relay_error)
                    )),
                }
            }
        };
        let dispatcher = match &self.dispatcher {
            None => Check::Disabled,
            Some((d, stall)) => {
                let since = now_ms() - d.last_turn_ms();
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
        let ready = [&store, &broker, &dispatcher]
            .iter()
            .all(|c| !matches!(c, Check::Failing(_)));
        ReadinessReport {
            ready,
            store,
            broker,
            dispatcher,
        }
    }
}

fn reason(error: &str) -> String {
    if error.is_empty() {
        String::new()
    } else {
        format!(": {error}")
    }
}
