//! Submitting a job exactly once: the durable `submitting` mark before the request leaves, and
//! what an unknown outcome means (ARCHITECTURE.md, "No double spend").

use super::{Dispatcher, Owned, StepError, UnknownCreatePolicy};
use crate::job::{FailureReason, Job, NotTaken, Record, now_ms};
use crate::store::LeaseEnd;
use crate::upstream::request::create_body;
use crate::upstream::{CreateFailure, UpstreamError, UpstreamState};

impl Dispatcher {
    pub(super) async fn submit(&self, job: Job, owned: &Owned) -> Result<(), StepError> {
        let submission = self.submission_of(&job).await?;
        let spec = match submission.confirm(&self.catalog) {
            Ok(spec) => spec,
            Err(changed) => {
                // API.md's reason for a request refused as it stands (as a 4xx would be);
                // sending it again cannot cure it.
                let msg = format!("the request was not sent: {changed}");
                self.fail(
                    owned,
                    job,
                    FailureReason::UpstreamRejected,
                    msg,
                    false,
                    None,
                )
                .await?;
                return Ok(());
            }
        };
        let body = create_body(&spec);
        // The submit window is the request on the wire, nothing more: the job waits at the
        // shared gate (a 429 pause, the in-flight cap, the rate) while still `Pending`, so a
        // crash during that wait loses nothing; only once it holds its slot is it marked.
        let reserved = tokio::select! {
            reserved = self.client.reserve_create() => Some(reserved),
            // A cancel or delete was recorded while the job waited: the write below applies it.
            _ = owned.stop.cancelled() => None,
        };
        let slot = match reserved {
            Some(Ok(slot)) => slot,
            other => {
                if let Some(Err(e)) = other {
                    // The gate closes only at shutdown: the job stays pending and due.
                    tracing::debug!(job_id = %job.id, error = %e, "create not sent");
                }
                self.save(owned, job, Record::Quiet, LeaseEnd::Release)
                    .await?;
                return Ok(());
            }
        };
        // Durable before the request leaves: a crash from here on is an unknown outcome.
        let mut submitting = job;
        let now = now_ms();
        let lease_until = now + self.config.submit_lease_ms as i64;
        let record = submitting.begin_submit(now, lease_until)?;
        let saved = self
            .save(owned, submitting, record, LeaseEnd::Extend(lease_until))
            .await?;
        if saved.applied.is_some() {
            // Cancelled or deleted before a byte was sent: nothing to send.
            return Ok(());
        }
        let submitting = saved.job;
        // A 429 that arrived while the mark was being written pauses everyone: do not send
        // into it, and do not wait for it marked either.
        if let Some(until) = self.client.limiter().paused_until() {
            drop(slot);
            let mut job = submitting;
            let wait = until.saturating_duration_since(tokio::time::Instant::now());
            let now = now_ms();
            let record =
                job.submit_not_taken(now, now + wait.as_millis() as i64, NotTaken::NeverSent)?;
            self.save(owned, job, record, LeaseEnd::Release).await?;
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
                // A cancel recorded while the create was on the wire is applied by this write,
                // after the upstream id is in: an operator can still find the (possibly
                // billed) task.
                self.save(owned, job, record, LeaseEnd::Release).await?;
                Ok(())
            }
            Err(e) => match e.create_failure() {
                CreateFailure::NotTakenRetryable => {
                    let mut job = submitting;
                    let now = now_ms();
                    let delay = self.retry_delay(job.attempts() + 1, &e) as i64;
                    let record = job.submit_not_taken(now, now + delay, NotTaken::Failed)?;
                    tracing::info!(job_id = %job.id, error = %e, "create not taken by upstream; will send it again");
                    self.metrics.retry("create");
                    self.save(owned, job, record, LeaseEnd::Release).await?;
                    Ok(())
                }
                CreateFailure::NotTakenPermanent => {
                    let reason = if matches!(e, UpstreamError::Auth { .. }) {
                        FailureReason::UpstreamAuth
                    } else {
                        FailureReason::UpstreamRejected
                    };
                    let msg = format!("upstream refused the request: {e}");
                    self.fail(owned, submitting, reason, msg, false, Some(&e))
                        .await?;
                    Ok(())
                }
                CreateFailure::OutcomeUnknown => {
                    self.unknown_create(owned, submitting, e.to_string(), Some(&e))
                        .await
                }
            },
        }
    }

    pub(super) async fn unknown_create(
        &self,
        owned: &Owned,
        job: Job,
        why: String,
        err: Option<&UpstreamError>,
    ) -> Result<(), StepError> {
        match self.config.on_unknown_create {
            UnknownCreatePolicy::Resubmit => {
                let mut job = job;
                let now = now_ms();
                let delay = self.backoff(job.attempts() + 1) as i64;
                let record = job.submit_not_taken(now, now + delay, NotTaken::Failed)?;
                tracing::warn!(job_id = %job.id, why = %why, "create outcome unknown; resubmitting as configured (on_unknown_create = resubmit): upstream may generate and bill it twice");
                self.metrics.retry("create");
                self.save(owned, job, record, LeaseEnd::Release).await?;
                Ok(())
            }
            UnknownCreatePolicy::Fail => {
                let msg = format!(
                    "the create request was sent but no usable answer came back ({why}); a generation may exist upstream and may be billed. vidgate did not send it again (dispatcher.on_unknown_create = \"resubmit\" would, at the risk of paying twice)"
                );
                self.fail(
                    owned,
                    job,
                    FailureReason::UpstreamOutcomeUnknown,
                    msg,
                    true,
                    err,
                )
                .await?;
                Ok(())
            }
        }
    }
}
