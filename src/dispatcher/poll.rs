//! Following a submitted job: one status call per turn, on the polite schedule.

use super::{Dispatcher, StepError, job_refused};
use crate::job::{FailureReason, Job, JobError, now_ms};
use crate::upstream::{UpstreamError, UpstreamState};

impl Dispatcher {
    pub(super) async fn poll(&self, job: Job) -> Result<(), StepError> {
        let upstream_id = job
            .upstream_id()
            .ok_or_else(|| job_refused(&job, "poll"))?
            .to_owned();
        match self.client.get(&upstream_id).await {
            Ok(v) => {
                let mut job = job;
                let now = now_ms();
                match v.status.state {
                    UpstreamState::Queued | UpstreamState::Processing => {
                        let record = job.polled(
                            now,
                            v.status.raw.clone(),
                            v.status.state == UpstreamState::Processing,
                            v.progress,
                            now + self.poll_interval() as i64,
                        )?;
                        self.save(job, record).await?;
                        Ok(())
                    }
                    UpstreamState::Completed => {
                        let record = job.upstream_completed(
                            now,
                            v.status.raw.clone(),
                            v.progress,
                            v.last_frame_url.clone(),
                        )?;
                        let job = self.save(job, record).await?;
                        self.download(job).await
                    }
                    UpstreamState::Failed | UpstreamState::Cancelled | UpstreamState::Expired => {
                        let upstream_words = v
                            .error
                            .as_ref()
                            .map(|e| match (&e.code, &e.message) {
                                (Some(c), Some(m)) => format!("{c}: {m}"),
                                (None, Some(m)) => m.clone(),
                                (Some(c), None) => c.clone(),
                                (None, None) => String::new(),
                            })
                            .unwrap_or_default();
                        let msg = if upstream_words.is_empty() {
                            format!(
                                "upstream reports the task {upstream_id} as {} without saying why",
                                v.status.raw
                            )
                        } else {
                            format!(
                                "upstream reports the task {upstream_id} as {}: {upstream_words}",
                                v.status.raw
                            )
                        };
                        self.fail_with(
                            job,
                            JobError {
                                reason: FailureReason::UpstreamFailed,
                                message: msg,
                                retryable: true,
                                upstream_message: upstream_words,
                                upstream_http_status: None,
                            },
                        )
                        .await?;
                        Ok(())
                    }
                }
            }
            Err(UpstreamError::NotFound { message, .. }) => {
                let msg = format!("upstream no longer knows the task {upstream_id} (HTTP 404)");
                self.fail_with(
                    job,
                    JobError {
                        reason: FailureReason::UpstreamFailed,
                        message: msg,
                        retryable: true,
                        upstream_message: message,
                        upstream_http_status: Some(404),
                    },
                )
                .await?;
                Ok(())
            }
            Err(e) => {
                // 429, 5xx, timeouts, and also a refused key: the task may still finish upstream,
                // so keep following it (until the maximum age) instead of failing it.
                let mut job = job;
                let now = now_ms();
                let delay = self.retry_delay(job.attempts() + 1, &e) as i64;
                let record = job.retry_later(now, now + delay)?;
                if matches!(e, UpstreamError::Auth { .. }) {
                    tracing::error!(job_id = %job.id, error = %e, "status poll refused: check the upstream API key");
                } else {
                    tracing::info!(job_id = %job.id, error = %e, attempts = job.attempts(), "status poll failed; backing off");
                }
                self.metrics.retry("poll");
                self.save(job, record).await?;
                Ok(())
            }
        }
    }
}
