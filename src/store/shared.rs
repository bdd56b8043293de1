//! What both stores do the same way, apart from SQL: a job's stored JSON, and how a run of
//! creates is decided (idempotency keys, sequences) before it is written in bulk.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use super::{CreateOutcome, StoreError, StoredEvent};
use crate::job::{Job, NewJob};

/// A stored (or earlier in the run) job under an idempotency key: its id, its fingerprint, and
/// the job or why it cannot be read.
pub(super) type KnownKey = (String, String, Result<Job, String>);

/// What one create of a run will do, decided before anything is written.
pub(super) enum CreateDecision {
    /// A new job, with its row's JSON and its first event's ([`encode_event_job`]).
    New {
        job: Job,
        json: String,
        event_json: String,
    },
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
        let (json, event_json) =
            match encode_job(OP, &job).and_then(|json| Ok((json, encode_event_job(OP, &job)?))) {
                Ok(both) => both,
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
        decisions.push(CreateDecision::New {
            job,
            json,
            event_json,
        });
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

/// The JSON of an event row: the job as of the event without the parts that never change after
/// acceptance and can be large (`request`, up to a 16,000-character prompt and the request's own
/// labels; `labels`, up to 64 of 320 bytes): those are stored once, in the job's row, and put
/// back on read ([`attach_immutable_parts`]). An event row is then a few hundred bytes instead
/// of a copy of the whole job. The shape is still a job's (an empty `request`, no labels), so
/// an older vidgate reads these rows too.
pub(super) fn encode_event_job(op: &str, job: &Job) -> Result<String, StoreError> {
    let mut slim = job.clone();
    slim.request = Bytes::new();
    slim.labels = BTreeMap::new();
    encode_job(op, &slim)
}

/// Whether an event read back lacks the parts [`encode_event_job`] leaves out. Every accepted
/// job's request is non-empty (model and prompt are required), so an empty one means "in the
/// job's row". Rows written before carry their request and are used as they are.
pub(super) fn is_detached(job: &Job) -> bool {
    job.request.is_empty()
}

/// The distinct job ids of `events` whose immutable parts must be read from their jobs' rows.
pub(super) fn detached_job_ids<'a>(
    events: impl IntoIterator<Item = &'a StoredEvent>,
) -> Vec<String> {
    let mut ids: Vec<String> = events
        .into_iter()
        .filter(|e| is_detached(&e.job))
        .map(|e| e.job_id.clone())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What [`encode_event_job`] leaves out of an event row, as the job's row holds it.
#[derive(Debug, Clone)]
pub(super) struct ImmutableParts {
    request: Bytes,
    labels: BTreeMap<String, String>,
}

/// Reads the immutable parts of the jobs in `rows` (id and the job's JSON, as `jobs.job`).
pub(super) fn immutable_parts(
    op: &str,
    rows: Vec<(String, String)>,
) -> Result<HashMap<String, ImmutableParts>, StoreError> {
    rows.into_iter()
        .map(|(id, json)| {
            let job = decode_job(op, &id, &json)?;
            Ok((
                id,
                ImmutableParts {
                    request: job.request,
                    labels: job.labels,
                },
            ))
        })
        .collect()
}

/// Puts back into one event the parts its row left out. An event whose job row is gone cannot
/// be shown as the API promises (with its request): it is refused as corrupt, naming it.
pub(super) fn attach_immutable_parts(
    op: &str,
    event: &mut StoredEvent,
    parts: &HashMap<String, ImmutableParts>,
) -> Result<(), StoreError> {
    if !is_detached(&event.job) {
        return Ok(());
    }
    let Some(parts) = parts.get(&event.job_id) else {
        return Err(StoreError::Corrupt(format!(
            "{op}: event {} of job {} keeps its request in the job's row, which does not exist",
            event.sequence, event.job_id
        )));
    };
    event.job.request = parts.request.clone();
    event.job.labels = parts.labels.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Accepted, new_job_id};

    fn fat_job() -> Job {
        let labels = (0..64)
            .map(|i| (format!("key-{i:02}"), "v".repeat(256)))
            .collect::<BTreeMap<_, _>>();
        Job::accepted(
            Accepted {
                id: new_job_id(),
                tenant: "acme".into(),
                request_id: Some("key".into()),
                fingerprint: "fp".into(),
                model: "m".into(),
                labels,
                request: Bytes::from(vec![b'p'; 16_000]),
                reply_to: None,
                correlation_id: None,
                trace_context: None,
            },
            1_000,
        )
    }

    fn event(job: &Job) -> StoredEvent {
        StoredEvent::of(job, 2_000)
    }

    #[test]
    fn an_event_row_leaves_out_the_request_and_labels_and_reading_puts_them_back() {
        let job = fat_job();
        let row = encode_event_job("t", &job).expect("encodes");
        let whole = encode_job("t", &job).expect("encodes");
        assert!(row.len() < 1_024, "event row is {} bytes", row.len());
        assert!(whole.len() > 30_000);

        let mut read = event(&decode_job("t", &job.id, &row).expect("decodes"));
        assert_eq!(detached_job_ids([&read]), vec![job.id.clone()]);
        let parts = immutable_parts("t", vec![(job.id.clone(), whole)]).expect("parts");
        attach_immutable_parts("t", &mut read, &parts).expect("attached");
        assert_eq!(read, event(&job));
    }

    #[test]
    fn an_event_row_written_before_with_its_request_is_used_as_it_is() {
        // The shape of rows written by earlier versions: the whole job, request included.
        let old = r#"{"id":"vid_old","tenant":"acme","request_id":null,"fingerprint":"fp",
            "model":"m","labels":{"team":"x"},"request":"CgVoZWxsbw==","status":"queued",
            "phase":"pending","upstream_status":"","upstream_id":null,"progress":null,
            "create_time_ms":1000,"update_time_ms":1000,"complete_time_ms":null,"error":null,
            "content":null,"version":1,"last_sequence":7,"next_action_ms":1000,"attempts":0,
            "polls":0,"trace_context":null,"deleted":false}"#;
        let mut read = event(&decode_job("t", "vid_old", old).expect("an old row decodes"));
        assert!(detached_job_ids([&read]).is_empty());
        attach_immutable_parts("t", &mut read, &HashMap::new()).expect("nothing to attach");
        assert_eq!(&read.job.request[..], b"\x0a\x05hello");
        assert_eq!(read.job.labels.get("team").map(String::as_str), Some("x"));
    }

    #[test]
    fn a_detached_event_without_its_job_row_is_refused_naming_the_event() {
        let job = fat_job();
        let row = encode_event_job("t", &job).expect("encodes");
        let mut read = event(&decode_job("t", &job.id, &row).expect("decodes"));
        let e = attach_immutable_parts("events_after", &mut read, &HashMap::new())
            .expect_err("no job row");
        assert!(matches!(e, StoreError::Corrupt(_)));
        assert!(e.to_string().contains(&job.id), "{e}");
    }
}
