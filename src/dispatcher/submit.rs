//! Submitting a job exactly once: the durable `submitting` mark before the request leaves, and
//! what an unknown outcome means (ARCHITECTURE.md, "No double spend").

use super::{Dispatcher, StepError, UnknownCreatePolicy};
use crate::job::{FailureReason, Job, now_ms};
use crate::store::StoreError;
use crate::upstream::request::create_body;
use crate::upstream::{CreateFailure, UpstreamError, UpstreamState};

impl Dispatcher {
    pub(super) async fn submit(&self, job: Job) -> Result<(), StepError> {
        let spec = match self.spec_of(&job).await? {
            Ok(spec) => spec,
            Err(why) => {
                let msg = format!(
                    "the stored request no longer passes validation with the current model catalog, so it was not sent: {why}"
                );
                self.fail(job, FailureReason::UpstreamRejected, msg, false, None)
                    .await?;
                return Ok(());
            }
        };
        let body = create_body(&spec);
        // The submit window is the request on the wire, nothing more: the job waits at the
        // shared gate (a 429 pause, the in-flight cap, the rate) while still `Pending`, so a
        // crash during that wait loses nothing; only once it holds its slot is it marked.
        let slot = match self.client.reserve_create().await {
            Ok(slot) => slot,
            // The gate closes only at shutdown: the job stays pending and due, untouched.
            Err(e) => {
                tracing::debug!(job_id = %job.id, error = %e, "create not sent");
                return Ok(());
            }
        };
        // Durable before the request leaves: a crash from here on is an unknown outcome.
        let mut submitting = job;
        let now = now_ms();
        let record = submitting.begin_submit(now, now + self.config.submit_lease_ms as i64)?;
        let submitting = self.save(submitting, record).await?;
        // A 429 that arrived while the mark was being written pauses everyone: do not send
        // into it, and do not wait for it marked either.
        if let Some(until) = self.client.limiter().paused_until() {
            drop(slot);
            let mut job = submitting;
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            let now = now_ms();
            let record = job.submit_not_taken(now, now + wait.as_millis() as i64, false)?;
            self.save(job, record).await?;
            return Ok(());
        }
        let result = self.client.create_in(slot, &body).await;
        match result {
            Ok(task) => {
                let mut job = submitting;
                let now = now_ms();
                let record = job.submitted(
                    now,
                    task.id.clone(),
                    task.status.raw.clone(),
                    task.status.state != UpstreamState::Queued,
                    now + self.first_poll_after(&job.model) as i64,
                )?;
                match self.save(job, record).await {
                    Ok(_) => Ok(()),
                    Err(StoreError::VersionConflict { id, .. }) => {
                        // Cancelled while the create was in flight: the upstream id is what an
                        // operator needs to find the (possibly billed) task; say it loudly.
                        tracing::warn!(job_id = %id, upstream_id = %task.id, "job was cancelled while its create was in flight; the upstream task exists and may be billed");
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => match e.create_failure() {
                CreateFailure::NotTakenRetryable => {
                    let mut job = submitting;
                    let now = now_ms();
                    let delay = self.retry_delay(job.attempts() + 1, &e) as i64;
                    let record = job.submit_not_taken(now, now + delay, true)?;
                    tracing::info!(job_id = %job.id, error = %e, "create not taken by upstream; will send it again");
                    self.metrics.retry("create");
                    self.save(job, record).await?;
                    Ok(())
                }
                CreateFailure::NotTakenPermanent => {
                    let reason = if matches!(e, UpstreamError::Auth { .. }) {
                        FailureReason::UpstreamAuth
                    } else {
                        FailureReason::UpstreamRejected
                    };
                    let msg = format!("upstream refused the request: {e}");
                    self.fail(submitting, reason, msg, false, Some(&e)).await?;
                    Ok(())
                }
                CreateFailure::OutcomeUnknown => {
                    self.unknown_create(submitting, e.to_string(), Some(&e))
                        .await
                }
            },
        }
    }

    pub(super) async fn unknown_create(
        &self,
        job: Job,
        why: String,
        err: Option<&UpstreamError>,
    ) -> Result<(), StepError> {
        match self.config.on_unknown_create {
            UnknownCreatePolicy::Resubmit => {
                let mut job = job;
                let now = now_ms();
                let delay = self.backoff(job.attempts() + 1) as i64;
                let record = job.submit_not_taken(now, now + delay, true)?;
                tracing::warn!(job_id = %job.id, why = %why, "create outcome unknown; resubmitting as configured (on_unknown_create = resubmit): upstream may generate and bill it twice");
                self.metrics.retry("create");
                self.save(job, record).await?;
                Ok(())
            }
            UnknownCreatePolicy::Fail => {
                let msg = format!(
                    "the create request was sent but no usable answer came back ({why}); a generation may exist upstream and may be billed. vidgate did not send it again (dispatcher.on_unknown_create = \"resubmit\" would, at the risk of paying twice)"
                );
                self.fail(job, FailureReason::UpstreamOutcomeUnknown, msg, true, err)
                    .await?;
                Ok(())
            }
        }
    }
}
