//! What both stores do the same way, apart from SQL: a job's stored JSON, and how a run of
//! creates is decided (idempotency keys, sequences) before it is written in bulk.

use std::collections::HashMap;

use super::{CreateOutcome, StoreError, StoredEvent};
use crate::job::{Job, NewJob};

/// A stored (or earlier in the run) job under an idempotency key: its id, its fingerprint, and
/// the job or why it cannot be read.
pub(super) type KnownKey = (String, String, Result<Job, String>);

/// What one create of a run will do, decided before anything is written.
pub(super) enum CreateDecision {
    /// A new job, with its JSON (row and event share it).
    New { job: Job, json: String },
    /// An idempotent repeat: this job (stored before, or earlier in the same run).
    Existing(Job),
    /// Refused (a reused key, an undecodable stored job).
    Refused(StoreError),
}

impl CreateDecision {
    /// The caller's answer once the run is written; a new job's first event joins `events`.
    pub(super) fn settle(
        self,
        time_ms: i64,
        events: &mut Vec<StoredEvent>,
    ) -> Result<CreateOutcome, StoreError> {
        match self {
            Self::New { job, .. } => {
                events.push(StoredEvent::of(&job, time_ms));
                Ok(CreateOutcome::Created(job))
            }
            Self::Existing(job) => Ok(CreateOutcome::Existing(job)),
            Self::Refused(e) => Err(e),
        }
    }
}

/// Decides every create of a run in order, numbering new jobs' events from `first_sequence`.
/// `known` holds the keys already stored, by (tenant, request_id); a create earlier in the run
/// counts as stored (it is added to `known`).
pub(super) fn decide_creates(
    news: &[&NewJob],
    known: &mut HashMap<(String, String), KnownKey>,
    first_sequence: i64,
) -> Vec<CreateDecision> {
    const OP: &str = "create";
    let mut sequence = first_sequence;
    let mut decisions = Vec::with_capacity(news.len());
    for new in news {
        let key = new
            .job
            .request_id
            .as_ref()
            .map(|r| (new.job.tenant.clone(), r.clone()));
        if let Some(key) = &key
            && let Some((existing_id, fingerprint, job)) = known.get(key)
        {
            decisions.push(if *fingerprint != new.job.fingerprint {
                CreateDecision::Refused(StoreError::RequestIdReused {
                    request_id: key.1.clone(),
                    existing_id: existing_id.clone(),
                })
            } else {
                match job {
                    Ok(job) => CreateDecision::Existing(job.clone()),
                    Err(why) => CreateDecision::Refused(StoreError::Corrupt(why.clone())),
                }
            });
            continue;
        }
        let mut job = new.job.clone();
        job.version = 1;
        job.last_sequence = sequence;
        let json = match encode_job(OP, &job) {
            Ok(json) => json,
            Err(e) => {
                decisions.push(CreateDecision::Refused(e));
                continue;
            }
        };
        sequence += 1;
        if let Some(key) = key {
            known.insert(
                key,
                (job.id.clone(), job.fingerprint.clone(), Ok(job.clone())),
            );
        }
        decisions.push(CreateDecision::New { job, json });
    }
    decisions
}

pub(super) fn encode_job(op: &str, job: &Job) -> Result<String, StoreError> {
    serde_json::to_string(job).map_err(|e| {
        StoreError::Unavailable(format!("{op}: job {} cannot be encoded: {e}", job.id))
    })
}

/// Decodes a stored job. The error names where the JSON broke, never what it contained.
pub(super) fn decode_job(op: &str, id: &str, json: &str) -> Result<Job, StoreError> {
    serde_json::from_str(json).map_err(|e| {
        StoreError::Corrupt(format!(
            "{op}: job {id} is stored in a shape this vidgate cannot read \
             ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })
}
