//! The orphan sweeper: removes stored videos and last frames that no job references (a crash
//! between an upload and the job's save, a delete whose object removal failed), and staged
//! downloads of jobs that are gone or finished.
//!
//! A key is `videos/<job id>.mp4` or `frames/<job id>.<ext>`, so the job is looked up by the
//! key itself. An object is an orphan when its job does not exist, is deleted, or has ended
//! without referencing it; a job still running keeps its objects (its upload may have finished
//! and its save be on the way; a later upload overwrites the same key). Only objects older than
//! the grace period are considered, so a sweep never races an upload that is being recorded.
//! Every instance sweeps its own staged files. A shared object store is swept by one instance
//! per interval, whichever takes the role [`OBJECTS_ROLE`] first ([`takes_objects`]); if two
//! ever overlap, no harm is done: deleting is idempotent.
//!
//! With `[blob] retention`, the same pass removes videos and last frames older than the
//! retention (an object's age is its completion's: it is written just before the job
//! completes); the jobs stay, and `DownloadVideo` answers `CONTENT_EXPIRED` from the moment
//! `complete_time + retention` has passed, whether or not a sweep has run yet.

use std::time::Duration;

use futures::StreamExt;

use crate::blob::{BlobError, BlobStore};
use crate::job::{Job, now_ms};
use crate::store::JobStore;
use crate::telemetry::Metrics;

/// How often each instance sweeps by default (`[blob] sweep_interval_ms`; 0 = never).
pub const DEFAULT_SWEEP_INTERVAL_MS: u64 = 60 * 60 * 1000;
/// Objects and staged files younger than this are left alone by default
/// (`[blob] orphan_grace_ms`).
pub const DEFAULT_ORPHAN_GRACE_MS: u64 = 60 * 60 * 1000;
/// At most this many removals per sweep: a sweep that finds more leaves them to the next one.
pub const MAX_REMOVALS_PER_SWEEP: usize = 10_000;

/// The role ([`JobStore::hold_role`]) whose holder sweeps a shared object store: listing a
/// bucket once per interval is enough, not once per instance.
pub const OBJECTS_ROLE: &str = "blob-sweeper";

/// Whether this instance (`holder`) sweeps the objects now: always for a local directory (it
/// is this instance's own); for a remote store only when it takes [`OBJECTS_ROLE`], which it
/// then holds for `interval`, so that the other instances skip the bucket until the next
/// round (whoever asks first after that sweeps it; a holder that died is replaced then). A
/// store that cannot answer: not this round.
pub async fn takes_objects(
    blobs: &BlobStore,
    store: &dyn JobStore,
    holder: &str,
    interval: Duration,
) -> bool {
    if !blobs.is_remote() {
        return true;
    }
    let now = now_ms();
    let until = now.saturating_add(i64::try_from(interval.as_millis()).unwrap_or(i64::MAX));
    match store.hold_role(OBJECTS_ROLE, holder, now, until).await {
        Ok(held) => held,
        Err(e) => {
            tracing::warn!(error = %e, "the sweeper role could not be asked for; the objects wait for the next round");
            false
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Objects listed.
    pub examined: u64,
    /// Objects removed: no job references them.
    pub removed_objects: u64,
    /// Objects removed: older than `[blob] retention`.
    pub expired_objects: u64,
    /// Staged downloads removed: their job is gone or finished.
    pub removed_staged: u64,
    /// Unfinished multipart uploads aborted (S3): their job is gone or finished.
    pub aborted_uploads: u64,
}

/// The job a key or staged file name belongs to: `videos/<id>.mp4`, `frames/<id>.<ext>`,
/// `<id>.mp4.part`, `<id>.mp4.ready`, `<id>.last_frame.part`.
pub fn job_of(key: &str) -> Option<&str> {
    let id = if let Some(rest) = key.strip_prefix("videos/") {
        rest.strip_suffix(".mp4")?
    } else if let Some(rest) = key.strip_prefix("frames/") {
        rest.rsplit_once('.')?.0
    } else {
        key.split_once('.')?.0
    };
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The job that `name` (an object key or a staged file) belongs to: `None` when the name is
/// not one vidgate writes (then it is not vidgate's to remove), else the job if it exists.
async fn owner(store: &dyn JobStore, name: &str) -> Result<Option<Option<Job>>, BlobError> {
    let Some(id) = job_of(name) else {
        return Ok(None);
    };
    let job = store.get(id).await.map_err(|e| BlobError::Io {
        op: "sweep",
        key: name.to_owned(),
        detail: format!("looking up job {id}: {e}"),
    })?;
    Ok(Some(job))
}

/// Whether `key` (an object) is still referenced by its job, or may yet be.
async fn object_wanted(store: &dyn JobStore, key: &str) -> Result<bool, BlobError> {
    Ok(match owner(store, key).await? {
        None => true,
        Some(None) => false,
        Some(Some(job)) if job.is_deleted() => false,
        Some(Some(job)) => match job.content() {
            Some(c) => c.blob_key == key || c.last_frame_key.as_deref() == Some(key),
            None => !job.is_terminal(),
        },
    })
}

/// Whether a staged download (or an unfinished upload) may still be needed: its job exists
/// and is still running.
async fn staged_wanted(store: &dyn JobStore, name: &str) -> Result<bool, BlobError> {
    Ok(match owner(store, name).await? {
        None => true,
        Some(job) => job.is_some_and(|job| !job.is_deleted() && !job.is_terminal()),
    })
}

/// One sweep over `blobs`: objects under `videos/` and `frames/`, unfinished multipart uploads
/// (S3) and staged downloads, older than `grace`, that no job needs are removed; the objects
/// and uploads only when `objects` (see [`takes_objects`]).
pub async fn sweep(
    blobs: &BlobStore,
    store: &dyn JobStore,
    grace: Duration,
    metrics: &Metrics,
    objects: bool,
) -> Result<SweepReport, BlobError> {
    let now = now_ms();
    let before_ms = now - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let expired_before_ms = blobs
        .retention()
        .map(|r| now - i64::try_from(r.as_millis()).unwrap_or(i64::MAX));
    let mut report = SweepReport::default();
    let mut removals = 0usize;
    let prefixes: &[&str] = if objects { &["videos", "frames"] } else { &[] };
    for prefix in prefixes {
        let mut listed = blobs.list(prefix);
        while let Some(item) = listed.next().await {
            let (key, modified_ms) = item?;
            report.examined += 1;
            if job_of(&key).is_some() && expired_before_ms.is_some_and(|t| modified_ms < t) {
                if removals >= MAX_REMOVALS_PER_SWEEP {
                    return Ok(report);
                }
                blobs.delete(&key).await?;
                removals += 1;
                report.expired_objects += 1;
                metrics.blob_removed("expired");
                tracing::info!(key = %key, "stored content removed: past [blob] retention");
                continue;
            }
            if modified_ms > before_ms || object_wanted(store, &key).await? {
                continue;
            }
            if removals >= MAX_REMOVALS_PER_SWEEP {
                return Ok(report);
            }
            blobs.delete(&key).await?;
            removals += 1;
            report.removed_objects += 1;
            metrics.blob_removed("orphan");
            tracing::info!(key = %key, "orphan object removed: no job references it");
        }
    }
    if objects {
        for upload in blobs.incomplete_uploads().await? {
            // A running job's upload may be under way (a long download feeds it).
            if upload.initiated_ms > before_ms || staged_wanted(store, &upload.key).await? {
                continue;
            }
            if removals >= MAX_REMOVALS_PER_SWEEP {
                return Ok(report);
            }
            blobs.abort_upload(&upload).await?;
            removals += 1;
            report.aborted_uploads += 1;
            metrics.blob_removed("upload");
            tracing::info!(key = %upload.key, "unfinished multipart upload aborted: its job is gone or finished");
        }
    }
    for (name, modified_ms) in blobs.staged().await? {
        if modified_ms > before_ms || staged_wanted(store, &name).await? {
            continue;
        }
        if removals >= MAX_REMOVALS_PER_SWEEP {
            break;
        }
        blobs.remove_staged(&name).await?;
        removals += 1;
        report.removed_staged += 1;
        metrics.blob_removed("staged");
        tracing::info!(file = %name, "staged download removed: its job is gone or finished");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::job_of;

    #[test]
    fn keys_and_staged_names_name_their_job() {
        assert_eq!(job_of("videos/abc.mp4"), Some("abc"));
        assert_eq!(job_of("frames/abc.png"), Some("abc"));
        assert_eq!(job_of("abc.mp4.part"), Some("abc"));
        assert_eq!(job_of("abc.mp4.ready"), Some("abc"));
        assert_eq!(job_of("abc.last_frame.part"), Some("abc"));
        assert_eq!(job_of("videos/abc.mov"), None);
        assert_eq!(job_of("videos/a/b.mp4"), None);
        assert_eq!(job_of("videos/.mp4"), None);
        assert_eq!(job_of("noext"), None);
    }
}
