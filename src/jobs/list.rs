//! Listing a tenant's videos a page at a time (AIP-158), with opaque page tokens bound to the
//! filters they were issued for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use sha2::{Digest, Sha256};

use super::{Jobs, JobsError};
use crate::convert;
use crate::domain::Tenant;
use crate::job::{Job, JobStatus};
use crate::pb;
use crate::store::ListQuery;

/// AIP-158: page size when the caller gives 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// AIP-158: larger page sizes are lowered to this.
pub const MAX_PAGE_SIZE: u32 = 500;
/// Most bytes of videos on one page, default 3 MiB: a page stays inside the 4 MiB message that
/// gRPC clients accept by default (tonic, grpc-go, grpcurl), with room for the rest of the
/// answer, whatever `page_size` asked for. 500 videos with 16,000-character prompts and 64
/// labels of 256 characters (about 57 KB each) would be 28 MB. A page ends before the video
/// that would cross it, with a `next_page_token` from there, and always holds one video.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// One page of a tenant's videos.
#[derive(Debug, Clone)]
pub struct Page {
    /// The videos, newest first, as `Video` messages.
    pub videos: Vec<pb::Video>,
    /// Where the next page starts; empty on the last page.
    pub next_page_token: String,
}

impl Jobs {
    /// A page of the tenant's videos that match `req`'s filters.
    pub async fn list(
        &self,
        tenant: &Tenant,
        req: &pb::ListVideosRequest,
    ) -> Result<Page, JobsError> {
        let page_size = match req.page_size {
            n if n < 0 => {
                return Err(JobsError::InvalidArgument {
                    field: "page_size",
                    description: format!(
                        "page_size must be 0 (= {DEFAULT_PAGE_SIZE}) or positive (got {n})"
                    ),
                });
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let statuses = parse_statuses(&req.statuses)?;
        // The label filter follows the rules of labels at create: a filter no job can match
        // is the caller's mistake, and thousands of filters are not a store outage.
        if let Some(bad) = super::envelope::label_violations(&req.labels)
            .into_iter()
            .next()
        {
            return Err(JobsError::InvalidArgument {
                field: "labels",
                description: format!("{}: {}", bad.field, bad.description),
            });
        }

        let filters = filter_hash(req);
        let after = if req.page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(&req.page_token, &filters)?)
        };
        let mut jobs = self
            .store
            .list(&ListQuery {
                tenant: tenant.0.clone(),
                statuses,
                model: (!req.model.is_empty()).then(|| req.model.clone()),
                labels: req.labels.clone(),
                after,
                limit: page_size + 1,
            })
            .await?;
        let more = jobs.len() > page_size as usize;
        jobs.truncate(page_size as usize);
        let (videos, cut) = fill_page(&jobs, MAX_PAGE_BYTES);
        let next_page_token = if more || cut {
            let last = jobs
                .get(videos.len().wrapping_sub(1))
                .ok_or_else(|| JobsError::Internal("empty page".into()))?;
            encode_page_token(last.create_time_ms, &last.id, &filters)?
        } else {
            String::new()
        };
        Ok(Page {
            videos,
            next_page_token,
        })
    }
}

/// The videos of `jobs`, in order, up to `max_bytes` of encoded `ListVideosResponse.videos`
/// (each with its field tag and length), but at least one; and whether jobs were left out.
fn fill_page(jobs: &[Job], max_bytes: usize) -> (Vec<pb::Video>, bool) {
    let mut videos = Vec::with_capacity(jobs.len());
    let mut bytes = 0usize;
    for job in jobs {
        let video = convert::video(job);
        let len = video.encoded_len();
        let size = 1 + prost::length_delimiter_len(len) + len;
        if !videos.is_empty() && bytes + size > max_bytes {
            return (videos, true);
        }
        bytes += size;
        videos.push(video);
    }
    (videos, false)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PageToken {
    t: i64,
    i: String,
    f: String,
}

/// The token of the page after the job created at `create_time_ms` with `id`, bound to
/// `filters` (a [`filter_hash`]).
pub(crate) fn encode_page_token(
    create_time_ms: i64,
    id: &str,
    filters: &str,
) -> Result<String, JobsError> {
    let token = PageToken {
        t: create_time_ms,
        i: id.to_owned(),
        f: filters.to_owned(),
    };
    let json = serde_json::to_vec(&token).map_err(|e| JobsError::Internal(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// Where a caller's page token says the page starts, `(create_time_ms, id)`; refused unless
/// it is a token this server issued for the same `filters`.
pub(crate) fn decode_page_token(token: &str, filters: &str) -> Result<(i64, String), JobsError> {
    let raw = URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|_| bad_token())?;
    let token: PageToken = serde_json::from_slice(&raw).map_err(|_| bad_token())?;
    if token.f != filters {
        return Err(bad_token());
    }
    Ok((token.t, token.i))
}

pub(crate) fn filter_hash(req: &pb::ListVideosRequest) -> String {
    let mut h = Sha256::new();
    for s in &req.statuses {
        h.update(s.to_le_bytes());
    }
    h.update(b"|");
    h.update(req.model.as_bytes());
    for (k, v) in &req.labels {
        h.update(b"|");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

fn bad_token() -> JobsError {
    JobsError::InvalidArgument {
        field: "page_token",
        description:
            "page_token must be a next_page_token this server returned for the same filters".into(),
    }
}

/// Wire statuses to job statuses; UNSPECIFIED or unknown numbers are refused by position.
pub fn parse_statuses(statuses: &[i32]) -> Result<Vec<JobStatus>, JobsError> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, s)| {
            pb::VideoStatus::try_from(*s)
                .ok()
                .and_then(convert::status_from_pb)
                .ok_or_else(|| JobsError::InvalidArgument {
                    field: "statuses",
                    description: format!(
                        "statuses[{i}] = {s} is not a video status (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)"
                    ),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::job::{Accepted, new_job_id};

    fn job_with_prompt(prompt_len: usize) -> Job {
        let request = pb::CreateVideoRequest {
            model: "m".into(),
            prompt: "p".repeat(prompt_len),
            ..Default::default()
        };
        Job::accepted(
            Accepted {
                id: new_job_id(),
                tenant: "acme".into(),
                request_id: None,
                fingerprint: "fp".into(),
                model: "m".into(),
                labels: BTreeMap::new(),
                request: Bytes::from(request.encode_to_vec()),
                reply_to: None,
                correlation_id: None,
                trace_context: None,
            },
            1_000,
        )
    }

    #[test]
    fn a_page_stops_before_the_video_that_would_cross_the_byte_bound() {
        let jobs: Vec<Job> = (0..10).map(|_| job_with_prompt(10_000)).collect();
        let (videos, cut) = fill_page(&jobs, 35_000);
        assert_eq!(videos.len(), 3);
        assert!(cut);
        let response = pb::ListVideosResponse {
            videos,
            next_page_token: String::new(),
        };
        assert!(response.encoded_len() <= 35_000);
    }

    #[test]
    fn a_page_holds_one_video_even_when_it_alone_crosses_the_bound() {
        let jobs = vec![job_with_prompt(10_000), job_with_prompt(10)];
        let (videos, cut) = fill_page(&jobs, 1_000);
        assert_eq!((videos.len(), cut), (1, true));
        let (videos, cut) = fill_page(&jobs[1..], 1_000);
        assert_eq!((videos.len(), cut), (1, false));
    }
}
