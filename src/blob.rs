//! Finished videos and last frames: put once, read any range as a stream, many times.
//!
//! Backed by `object_store`: a local directory (the default, `<data_dir>/blobs`) or a bucket
//! every instance reads: S3 or S3-compatible (`[blob] url = "s3://bucket/prefix"`), Google
//! Cloud Storage (`gs://`) or Azure Blob Storage (`az://container/prefix`).
//! Downloads are written to a partial file under the local staging directory (so a broken
//! download resumes with `Range`, and the MP4 is probed before anyone sees it), then put in
//! place once verified: renamed on a local directory; with an object store, a multipart upload
//! fed while the download runs ([`StreamingUpload`]) is completed, or the staged file is sent
//! (one `PUT`, or a multipart upload with a few parts in flight). S3 makes an object visible
//! only once its upload is complete: a reader never sees half a video. Every upload of the
//! instance together holds at most `[blob] upload_memory_bytes`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetResultPayload, ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

/// Where partial downloads live, inside the staging directory.
const PARTIAL_DIR: &str = "partial";
/// Default size of one part of a multipart upload (S3's minimum is 5 MiB but for the last).
pub const DEFAULT_PART_BYTES: usize = 8 * 1024 * 1024;
/// Default parts of one upload in flight at once: an upload holds at most
/// `(upload_concurrency + 1) x part_bytes` in memory.
pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;
/// Default memory every upload of an instance may hold at once (parts read or in flight): an
/// upload waits for room rather than grow the process.
pub const DEFAULT_UPLOAD_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// How long starting a multipart upload alongside a download may take before the download
/// goes on without it (and the staged file is uploaded once whole).
const STREAM_START_WAIT: Duration = Duration::from_secs(5);
/// How long the object store may take to make room for the next part of an upload fed while
/// downloading before that upload is given up (the download goes on; the staged file is
/// uploaded once whole).
const STREAM_PART_WAIT: Duration = Duration::from_secs(10);
/// How long aborting a given-up multipart upload may take (it runs in the background).
const ABORT_WAIT: Duration = Duration::from_secs(30);
/// The key readiness asks for (absent is fine: the store answered).
const HEALTH_KEY: &str = ".vidgate-health";
/// How long a request to the object store may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request to the object store may take (a read that takes longer is resumed
/// from where it stopped by `object_store`'s retry).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of one request to the object store, and how long they may take together: a read
/// for a waiting client fails with `UNAVAILABLE` after this, instead of hanging.
const MAX_RETRIES: usize = 3;
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// Section `[blob]`: where finished videos and last frames are kept. Credentials are never
/// read from here: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) from
/// the environment, or the instance's role.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// Unset: `<storage.data_dir>/blobs`. A directory path (or `file:///path`): that
    /// directory. `s3://bucket/prefix`: an S3 or S3-compatible bucket, under `prefix`.
    pub url: Option<String>,
    /// An S3-compatible server's endpoint, e.g. `http://minio:9000` (plain `http` is allowed
    /// only here, for a local server); unset: AWS (or `AWS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The bucket's region; unset: `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// `bucket.host/key` addressing (AWS's own) when true; `host/bucket/key` (path style,
    /// what MinIO and most S3-compatible servers expect) when false, the default.
    pub virtual_hosted_style: bool,
    /// Size of one part of a multipart upload; see [`DEFAULT_PART_BYTES`].
    pub part_bytes: usize,
    /// Parts of one upload in flight at once; see [`DEFAULT_UPLOAD_CONCURRENCY`].
    pub upload_concurrency: usize,
    /// Memory all uploads of the instance may hold at once; see
    /// [`DEFAULT_UPLOAD_MEMORY_BYTES`]. At least `part_bytes`.
    pub upload_memory_bytes: usize,
    /// How long a finished video (and its last frame) is kept after completion, e.g. `30d`
    /// or `12h`; unset: kept until its video is deleted. Past it the sweeper removes the
    /// objects and `DownloadVideo` answers `NOT_FOUND` / `CONTENT_EXPIRED`; the job stays.
    pub retention: Option<String>,
    /// How often the orphan sweeper runs on each instance (0 = never); see
    /// [`crate::sweeper::DEFAULT_SWEEP_INTERVAL_MS`].
    pub sweep_interval_ms: u64,
    /// Objects and staged files younger than this are never swept; see
    /// [`crate::sweeper::DEFAULT_ORPHAN_GRACE_MS`].
    pub orphan_grace_ms: u64,
    /// Credentials given by code (an embedding program, the tests), never by the config
    /// file; unset: the `AWS_*` environment or the instance's role.
    #[serde(skip)]
    pub credentials: Option<StaticCredentials>,
}

/// An access key and its secret, given by code.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key (never printed).
    pub secret_access_key: String,
}

impl std::fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[REDACTED]")
            .finish()
    }
}

impl Default for BlobConfig {
    fn default() -> Self {
        Self {
            url: None,
            endpoint: None,
            region: None,
            virtual_hosted_style: false,
            part_bytes: DEFAULT_PART_BYTES,
            upload_concurrency: DEFAULT_UPLOAD_CONCURRENCY,
            upload_memory_bytes: DEFAULT_UPLOAD_MEMORY_BYTES,
            retention: None,
            sweep_interval_ms: crate::sweeper::DEFAULT_SWEEP_INTERVAL_MS,
            orphan_grace_ms: crate::sweeper::DEFAULT_ORPHAN_GRACE_MS,
            credentials: None,
        }
    }
}

impl std::fmt::Debug for BlobConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A URL could carry credentials (`s3://key:secret@bucket`): only its scheme and bucket.
        f.debug_struct("BlobConfig")
            .field("url", &self.url.as_deref().map(redacted_url))
            .field("endpoint", &self.endpoint.as_deref().map(redacted_url))
            .field("region", &self.region)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("part_bytes", &self.part_bytes)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("upload_memory_bytes", &self.upload_memory_bytes)
            .field("retention", &self.retention)
            .field("sweep_interval_ms", &self.sweep_interval_ms)
            .field("orphan_grace_ms", &self.orphan_grace_ms)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// A URL without its user information, for messages.
fn redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Where `[blob] url` puts the blobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// A local directory.
    Local(PathBuf),
    /// An S3 bucket and a key prefix (no leading or trailing `/`; may be empty).
    S3 {
        /// The bucket.
        bucket: String,
        /// Keys are put under it.
        prefix: String,
    },
    /// A Google Cloud Storage bucket and a key prefix.
    Gcs {
        /// The bucket.
        bucket: String,
        /// Keys are put under it.
        prefix: String,
    },
    /// An Azure Blob Storage container and a key prefix.
    Azure {
        /// The container.
        container: String,
        /// Keys are put under it.
        prefix: String,
    },
}

impl BlobLocation {
    /// The remote store's scheme, bucket (or container) and prefix; `None` for a directory.
    fn remote(&self) -> Option<(&'static str, &str, &str)> {
        match self {
            BlobLocation::Local(_) => None,
            BlobLocation::S3 { bucket, prefix } => Some(("s3", bucket, prefix)),
            BlobLocation::Gcs { bucket, prefix } => Some(("gs", bucket, prefix)),
            BlobLocation::Azure { container, prefix } => Some(("az", container, prefix)),
        }
    }
}

impl BlobConfig {
    /// `retention` parsed, or why it does not parse.
    pub fn retention(&self) -> Result<Option<Duration>, String> {
        match self.retention.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(text) => match humantime::parse_duration(text) {
                Ok(d) if d >= Duration::from_secs(1) => Ok(Some(d)),
                Ok(_) => Err(format!(
                    "blob.retention {text:?} is shorter than a second; use e.g. \"30d\" or \"12h\", or leave it unset to keep videos"
                )),
                Err(e) => Err(format!(
                    "blob.retention {text:?} is not a duration ({e}); use e.g. \"30d\" or \"12h\""
                )),
            },
        }
    }

    /// Where the blobs go, or why `url` (or another field) cannot work, naming the field.
    pub fn location(&self, data_dir: &Path) -> Result<BlobLocation, String> {
        self.retention()?;
        if self.part_bytes < 5 * 1024 * 1024 || self.part_bytes > 512 * 1024 * 1024 {
            return Err(format!(
                "blob.part_bytes must be 5 MiB to 512 MiB (S3's smallest part is 5 MiB), got {}",
                self.part_bytes
            ));
        }
        if self.upload_concurrency == 0 || self.upload_concurrency > 64 {
            return Err(format!(
                "blob.upload_concurrency must be 1 to 64, got {}",
                self.upload_concurrency
            ));
        }
        if self.upload_memory_bytes < self.part_bytes
            || self.upload_memory_bytes > u32::MAX as usize
        {
            return Err(format!(
                "blob.upload_memory_bytes must be at least blob.part_bytes ({}) and at most 4 GiB, got {}",
                self.part_bytes, self.upload_memory_bytes
            ));
        }
        let url = match self.url.as_deref().map(str::trim) {
            None | Some("") => return Ok(BlobLocation::Local(data_dir.join("blobs"))),
            Some(url) => url,
        };
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(BlobLocation::Local(PathBuf::from(path)));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Ok(BlobLocation::Local(PathBuf::from(url)));
        };
        let (scheme, what, credentials) = match scheme {
            "s3" | "s3a" => (
                "s3",
                "bucket",
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or use the instance's role)",
            ),
            "gs" => (
                "gs",
                "bucket",
                "GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS (or use the instance's service account)",
            ),
            "az" | "azure" => (
                "az",
                "container",
                "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or a managed identity)",
            ),
            other => {
                return Err(format!(
                    "blob.url scheme {other:?} is not supported: a local directory, file:///path, s3://bucket/prefix (S3 and S3-compatible servers such as MinIO), gs://bucket/prefix (Google Cloud Storage) or az://container/prefix (Azure Blob Storage)"
                ));
            }
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.contains('@') {
            return Err(format!(
                "blob.url must not carry credentials: give them as {credentials}"
            ));
        }
        if bucket.is_empty() {
            return Err(format!(
                "blob.url {:?} names no {what}: {scheme}://{what} or {scheme}://{what}/prefix",
                redacted_url(url)
            ));
        }
        let (bucket, prefix) = (bucket.to_owned(), prefix.trim_matches('/').to_owned());
        Ok(match scheme {
            "s3" => BlobLocation::S3 { bucket, prefix },
            "gs" => BlobLocation::Gcs { bucket, prefix },
            _ => BlobLocation::Azure {
                container: bucket,
                prefix,
            },
        })
    }
}

/// Bytes free for an unprivileged writer on the file system holding `path` (`statvfs`).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    #[cfg(target_os = "linux")]
    {
        let stat = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No floor where the platform call is not wired in.
        let _ = path;
        Ok(u64::MAX)
    }
}

/// `Some(why)` when the file system under `root` has less than `floor` bytes free (or cannot
/// say: then downloads go on, and the warning names the cause).
pub fn disk_below_floor(root: &std::path::Path, floor: u64) -> Option<String> {
    if floor == 0 {
        return None;
    }
    match free_bytes(root) {
        Ok(free) if free < floor => Some(format!(
            "{} MiB free under {}, below dispatcher.min_free_disk_bytes ({} MiB): downloads wait until space is freed",
            free / (1024 * 1024),
            root.display(),
            floor / (1024 * 1024)
        )),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e, "could not read the free disk space; downloads go on");
            None
        }
    }
}

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No such blob.
    #[error("blob {0} does not exist")]
    NotFound(String),
    /// The range starts past the end.
    #[error("offset {offset} is past the end of blob {key} ({size} bytes)")]
    OutOfRange {
        /// The blob.
        key: String,
        /// Asked-for start.
        offset: u64,
        /// The blob's size.
        size: u64,
    },
    /// The object store did not answer (or answered with a server error): try again later.
    #[error("the object store is unavailable ({op} of {key}): {detail}")]
    Unavailable {
        /// What was being done.
        op: &'static str,
        /// The blob.
        key: String,
        /// The underlying error.
        detail: String,
    },
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// Storage failed.
    #[error("blob storage failed on {op} of {key}: {detail}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The blob.
        key: String,
        /// The underlying error.
        detail: String,
    },
}

/// Videos and images by key (`videos/<job id>.mp4`).
#[derive(Clone, Debug)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// The local directory: the blobs themselves, or (with a remote store) the staging
    /// directory of partial downloads.
    root: PathBuf,
    /// Set when the blobs are in an object store.
    remote: Option<Arc<Remote>>,
    /// `[blob] retention`.
    retention: Option<Duration>,
}

/// A remote object store's settings.
#[derive(Debug)]
struct Remote {
    /// `s3://bucket/prefix`, for messages.
    location: String,
    part_bytes: usize,
    concurrency: usize,
    /// `upload_memory_bytes`, in bytes: what an upload holds is taken from here first.
    memory: Arc<tokio::sync::Semaphore>,
    /// Its size, the most one upload may take.
    memory_bytes: usize,
    /// With S3: the bucket's own client (keys with the prefix), for what `ObjectStore` does not
    /// offer: listing and aborting unfinished multipart uploads.
    s3: Option<S3Uploads>,
}

/// Unfinished multipart uploads of an S3 bucket under vidgate's prefix.
#[derive(Debug)]
struct S3Uploads {
    client: Arc<object_store::aws::AmazonS3>,
    /// `prefix/` (empty without a prefix).
    prefix: String,
    /// For the listing's signed URL (bounded timeouts, as every store request).
    http: reqwest::Client,
}

/// A multipart upload that was started and neither completed nor aborted (a process killed
/// mid-upload leaves one; S3 keeps, and bills, its parts until it is aborted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteUpload {
    /// The object key it was for, relative to the prefix (`videos/<id>.mp4`).
    pub key: String,
    /// S3's upload id.
    pub upload_id: String,
    /// When it was started (ms since the epoch; 0 when S3 did not say).
    pub initiated_ms: i64,
}

/// Pages of `ListMultipartUploads` read per sweep (1 000 uploads each).
const MAX_UPLOAD_PAGES: usize = 10;
/// The largest `ListMultipartUploads` answer read (1 000 uploads are about 400 KB).
const MAX_LISTING_BYTES: usize = 4 * 1024 * 1024;

/// `ListMultipartUploadsResult`, the parts read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UploadListing {
    #[serde(rename = "Upload")]
    uploads: Vec<UploadEntry>,
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UploadEntry {
    key: String,
    upload_id: String,
    initiated: String,
}

impl Remote {
    /// The memory an upload of `size` bytes holds at most: the whole body for a single `PUT`,
    /// else `concurrency` parts in flight and one being filled; never more than the budget.
    fn upload_need(&self, size: u64) -> u32 {
        let need = if size <= self.part_bytes as u64 {
            size as usize
        } else {
            (self.concurrency + 1).saturating_mul(self.part_bytes)
        };
        u32::try_from(need.clamp(1, self.memory_bytes)).unwrap_or(u32::MAX)
    }
}

impl BlobStore {
    /// The store `config` names; partial downloads are staged under `<data_dir>/blobs`.
    pub fn open(config: &BlobConfig, data_dir: &Path) -> Result<Self, BlobError> {
        let retention = config.retention().map_err(BlobError::Config)?;
        let store = Self::open_location(config, data_dir)?;
        Ok(Self { retention, ..store })
    }

    fn open_location(config: &BlobConfig, data_dir: &Path) -> Result<Self, BlobError> {
        let location = config.location(data_dir).map_err(BlobError::Config)?;
        match location.remote() {
            None => match location {
                BlobLocation::Local(root) => Self::local(root),
                _ => Err(BlobError::Config("blob: not a local directory".into())),
            },
            Some((scheme, bucket, prefix)) => {
                let staging = data_dir.join("blobs");
                let io = |detail: std::io::Error| BlobError::Io {
                    op: "create directory",
                    key: staging.display().to_string(),
                    detail: detail.to_string(),
                };
                crate::datadir::private_dir(&staging).map_err(io)?;
                crate::datadir::private_dir(&staging.join(PARTIAL_DIR)).map_err(io)?;
                let mut s3 = None;
                let store: Arc<dyn ObjectStore> = match scheme {
                    "s3" => {
                        let client = Arc::new(s3_store(config, bucket)?);
                        let http = reqwest::Client::builder()
                            .connect_timeout(CONNECT_TIMEOUT)
                            .timeout(REQUEST_TIMEOUT)
                            .redirect(reqwest::redirect::Policy::none())
                            .build()
                            .map_err(|e| BlobError::Config(format!("blob: an HTTP client: {e}")))?;
                        s3 = Some(S3Uploads {
                            client: client.clone(),
                            prefix: if prefix.is_empty() {
                                String::new()
                            } else {
                                format!("{prefix}/")
                            },
                            http,
                        });
                        client
                    }
                    "gs" => Arc::new(gcs_store(config, bucket)?),
                    _ => Arc::new(azure_store(config, bucket)?),
                };
                let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                    store
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        store,
                        ObjectPath::from(prefix),
                    ))
                };
                let location = if prefix.is_empty() {
                    format!("{scheme}://{bucket}")
                } else {
                    format!("{scheme}://{bucket}/{prefix}")
                };
                Ok(Self {
                    store,
                    root: staging,
                    retention: None,
                    remote: Some(Arc::new(Remote {
                        location,
                        part_bytes: config.part_bytes,
                        concurrency: config.upload_concurrency,
                        memory: Arc::new(tokio::sync::Semaphore::new(config.upload_memory_bytes)),
                        memory_bytes: config.upload_memory_bytes,
                        s3,
                    })),
                })
            }
        }
    }

    /// `[blob] retention`: how long a finished video is kept after completion.
    pub fn retention(&self) -> Option<Duration> {
        self.retention
    }

    /// When a video completed at `complete_ms` expires (ms since the epoch), if it does.
    pub fn expires_at_ms(&self, complete_ms: i64) -> Option<i64> {
        self.retention
            .map(|r| complete_ms.saturating_add(i64::try_from(r.as_millis()).unwrap_or(i64::MAX)))
    }

    /// Where the blobs are, for logs and readiness: a directory or `s3://bucket/prefix`
    /// (never credentials).
    pub fn describe(&self) -> String {
        match &self.remote {
            Some(r) => r.location.clone(),
            None => self.root.display().to_string(),
        }
    }

    /// Whether the blobs are in a remote object store (shared by every instance).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Whether the store answers: a remote store is asked for a key (absent is an answer);
    /// a local directory must exist.
    pub async fn check(&self) -> Result<(), BlobError> {
        if self.remote.is_none() {
            return match tokio::fs::metadata(&self.root).await {
                Ok(m) if m.is_dir() => Ok(()),
                Ok(_) => Err(BlobError::Io {
                    op: "check",
                    key: self.root.display().to_string(),
                    detail: "not a directory".into(),
                }),
                Err(e) => Err(BlobError::Io {
                    op: "check",
                    key: self.root.display().to_string(),
                    detail: e.to_string(),
                }),
            };
        }
        match self.store.head(&ObjectPath::from(HEALTH_KEY)).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("check", HEALTH_KEY, e)),
        }
    }

    /// A blob store in a local directory (created if missing, 0700 like the data directory).
    pub fn local(root: impl AsRef<Path>) -> Result<Self, BlobError> {
        let root = root.as_ref().to_path_buf();
        let io = |detail: std::io::Error| BlobError::Io {
            op: "create directory",
            key: root.display().to_string(),
            detail: detail.to_string(),
        };
        crate::datadir::private_dir(&root).map_err(io)?;
        crate::datadir::private_dir(&root.join(PARTIAL_DIR)).map_err(io)?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| BlobError::Io {
            op: "open",
            key: root.display().to_string(),
            detail: e.to_string(),
        })?;
        Ok(Self {
            store: Arc::new(store),
            root,
            remote: None,
            retention: None,
        })
    }

    /// The directory downloads are written under (the free-space floor is measured here).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The local file a partial download of `name` is written to.
    pub fn partial_path(&self, name: &str) -> PathBuf {
        self.root.join(PARTIAL_DIR).join(name)
    }

    /// Creates (or truncates) the partial file of `name`, readable by vidgate's user only.
    pub async fn create_partial(&self, name: &str) -> std::io::Result<tokio::fs::File> {
        crate::datadir::private_open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.partial_path(name))
            .await
    }

    /// Moves a finished partial file into place under `key` (atomic on a local directory),
    /// 0600 whoever created it, in directories 0700.
    pub async fn commit_partial(&self, name: &str, key: &str) -> Result<(), BlobError> {
        if let Some(remote) = &self.remote {
            return self.upload_partial(remote, name, key).await;
        }
        let private = |e: std::io::Error| BlobError::Io {
            op: "commit",
            key: key.to_owned(),
            detail: e.to_string(),
        };
        crate::datadir::private_file(&self.partial_path(name)).map_err(private)?;
        // The rename would create missing directories 0755: make them first, 0700.
        if let Some(parent) = self.root.join(key).parent() {
            crate::datadir::private_dir(parent).map_err(private)?;
        }
        let from = ObjectPath::from(format!("{PARTIAL_DIR}/{name}"));
        self.store
            .rename(&from, &ObjectPath::from(key))
            .await
            .map_err(|e| self.map_err("commit", key, e))
    }

    /// Sends a finished partial file to the object store under `key`: one `PUT` when it fits
    /// in a part, else a multipart upload with at most `upload_concurrency` parts in flight
    /// (aborted on failure, so no part is left billed); then checks the object's size, and
    /// removes the partial file. Until the upload completes, the object does not exist.
    async fn upload_partial(
        &self,
        remote: &Remote,
        name: &str,
        key: &str,
    ) -> Result<(), BlobError> {
        let path = self.partial_path(name);
        let io = |op: &'static str, e: std::io::Error| BlobError::Io {
            op,
            key: path.display().to_string(),
            detail: e.to_string(),
        };
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io("open partial", e))?;
        let size = file
            .metadata()
            .await
            .map_err(|e| io("open partial", e))?
            .len();
        let location = ObjectPath::from(key);
        let part = remote.part_bytes;
        // Waits for room in the instance's upload memory (never closed: it lives as long as
        // `remote`).
        let _memory = remote
            .memory
            .clone()
            .acquire_many_owned(remote.upload_need(size))
            .await
            .map_err(|_| BlobError::Io {
                op: "upload",
                key: key.to_owned(),
                detail: "the upload memory budget is closed".into(),
            })?;
        if size <= part as u64 {
            let mut buf = Vec::with_capacity(size as usize);
            file.read_to_end(&mut buf)
                .await
                .map_err(|e| io("read partial", e))?;
            self.store
                .put(&location, Bytes::from(buf).into())
                .await
                .map_err(|e| self.map_err("upload", key, e))?;
        } else {
            let upload = self
                .store
                .put_multipart(&location)
                .await
                .map_err(|e| self.map_err("upload", key, e))?;
            let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, part);
            let sent = async {
                let mut left = size;
                while left > 0 {
                    writer
                        .wait_for_capacity(remote.concurrency)
                        .await
                        .map_err(|e| self.map_err("upload", key, e))?;
                    let want = left.min(part as u64) as usize;
                    let mut buf = BytesMut::zeroed(want);
                    file.read_exact(&mut buf)
                        .await
                        .map_err(|e| io("read partial", e))?;
                    writer.put(buf.freeze());
                    left -= want as u64;
                }
                Ok::<_, BlobError>(())
            }
            .await;
            match sent {
                Ok(()) => {
                    writer
                        .finish()
                        .await
                        .map_err(|e| self.map_err("upload", key, e))?;
                }
                Err(e) => {
                    if let Err(abort) = writer.abort().await {
                        tracing::warn!(key = %key, error = %abort, "an interrupted multipart upload was not aborted; the orphan sweeper or the bucket's lifecycle rule removes it");
                    }
                    return Err(e);
                }
            }
        }
        let stored = self.size(key).await?;
        if stored != size {
            return Err(BlobError::Io {
                op: "verify upload",
                key: key.to_owned(),
                detail: format!("the object holds {stored} bytes, the download {size}"),
            });
        }
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| io("remove partial", e))?;
        Ok(())
    }

    /// Starts the multipart upload of `key` that a download of `size` bytes feeds as it
    /// arrives ([`StreamingUpload`]), so that the object is complete soon after the last
    /// byte. `None` when there is nothing to gain or no room: a local directory, a video that
    /// fits in one part (one `PUT` of the staged file is cheaper), no room in the upload
    /// memory now, or a store that does not answer at once; the staged file is uploaded
    /// once whole instead ([`BlobStore::commit_partial`]).
    pub async fn begin_upload(&self, key: &str, size: u64) -> Option<StreamingUpload> {
        let remote = self.remote.as_ref()?;
        if size <= remote.part_bytes as u64 {
            return None;
        }
        let memory = remote
            .memory
            .clone()
            .try_acquire_many_owned(remote.upload_need(size))
            .ok()?;
        let started = tokio::time::timeout(
            STREAM_START_WAIT,
            self.store.put_multipart(&ObjectPath::from(key)),
        )
        .await;
        let upload = match started {
            Ok(Ok(upload)) => upload,
            Ok(Err(e)) => {
                tracing::info!(key = %key, error = %self.map_err("start upload", key, e), "the video is uploaded once downloaded whole");
                return None;
            }
            Err(_) => {
                tracing::info!(key = %key, wait_ms = STREAM_START_WAIT.as_millis() as u64, "the object store did not start an upload in time; the video is uploaded once downloaded whole");
                return None;
            }
        };
        Some(StreamingUpload {
            key: key.to_owned(),
            writer: Some(object_store::WriteMultipart::new_with_chunk_size(
                upload,
                remote.part_bytes,
            )),
            concurrency: remote.concurrency,
            sent: 0,
            store: self.clone(),
            _memory: memory,
        })
    }

    /// The unfinished multipart uploads under vidgate's prefix (S3 only: elsewhere an empty
    /// list; Azure drops uncommitted blocks by itself after 7 days). At most
    /// [`MAX_UPLOAD_PAGES`] pages of 1 000.
    pub async fn incomplete_uploads(&self) -> Result<Vec<IncompleteUpload>, BlobError> {
        let Some(s3) = self.remote.as_ref().and_then(|r| r.s3.as_ref()) else {
            return Ok(Vec::new());
        };
        use object_store::signer::{SignedUrlOptions, Signer};
        let unavailable = |detail: String| BlobError::Unavailable {
            op: "list uploads",
            key: s3.prefix.clone(),
            detail,
        };
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        for _ in 0..MAX_UPLOAD_PAGES {
            let mut query = vec![
                ("uploads".to_owned(), String::new()),
                ("prefix".to_owned(), s3.prefix.clone()),
            ];
            if let Some((key, id)) = &markers {
                query.push(("key-marker".to_owned(), key.clone()));
                query.push(("upload-id-marker".to_owned(), id.clone()));
            }
            let url = s3
                .client
                .signed_url_opts(
                    http::Method::GET,
                    &ObjectPath::from(""),
                    Duration::from_secs(300),
                    &SignedUrlOptions::new().with_query(query),
                )
                .await
                .map_err(|e| self.map_err("list uploads", &s3.prefix, e))?;
            let mut response = s3
                .http
                .get(url)
                .send()
                .await
                .map_err(|e| unavailable(e.without_url().to_string()))?;
            let status = response.status();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| unavailable(e.without_url().to_string()))?
            {
                if body.len() + chunk.len() > MAX_LISTING_BYTES {
                    return Err(unavailable(format!(
                        "the upload listing is longer than {MAX_LISTING_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            if !status.is_success() {
                return Err(unavailable(format!(
                    "ListMultipartUploads answered HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                )));
            }
            let page: UploadListing = quick_xml::de::from_reader(body.as_slice())
                .map_err(|e| unavailable(format!("an unreadable upload listing: {e}")))?;
            for upload in page.uploads {
                let Some(key) = upload.key.strip_prefix(&s3.prefix) else {
                    continue;
                };
                let initiated_ms = humantime::parse_rfc3339_weak(&upload.initiated)
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                out.push(IncompleteUpload {
                    key: key.to_owned(),
                    upload_id: upload.upload_id,
                    initiated_ms,
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id)) => markers = Some((key, id)),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Aborts an unfinished multipart upload (its parts are deleted); one already gone is not
    /// an error.
    pub async fn abort_upload(&self, upload: &IncompleteUpload) -> Result<(), BlobError> {
        let Some(s3) = self.remote.as_ref().and_then(|r| r.s3.as_ref()) else {
            return Ok(());
        };
        use object_store::multipart::MultipartStore;
        let path = ObjectPath::from(format!("{}{}", s3.prefix, upload.key));
        match s3
            .client
            .abort_multipart(&path, &upload.upload_id.clone())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("abort upload", &upload.key, e)),
        }
    }

    /// Every object under `prefix` (`videos`, `frames`): its key and when it was last
    /// written (ms since the epoch), streamed as the store lists them.
    pub fn list(&self, prefix: &str) -> BoxStream<'static, Result<(String, i64), BlobError>> {
        let remote = self.remote.is_some();
        let prefix_owned = prefix.to_owned();
        self.store
            .list(Some(&ObjectPath::from(prefix)))
            .map(move |item| match item {
                Ok(meta) => Ok((
                    meta.location.to_string(),
                    meta.last_modified.timestamp_millis(),
                )),
                Err(e) => Err(classify(remote, "list", &prefix_owned, e)),
            })
            .boxed()
    }

    /// The staged downloads (partial or whole, not yet stored): file name and modification
    /// time (ms since the epoch).
    pub async fn staged(&self) -> Result<Vec<(String, i64)>, BlobError> {
        let dir = self.root.join(PARTIAL_DIR);
        let io = |e: std::io::Error| BlobError::Io {
            op: "list staged",
            key: dir.display().to_string(),
            detail: e.to_string(),
        };
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(io)?;
        let mut out = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let modified = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .map_err(io)?;
            let ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            out.push((name, ms));
        }
        Ok(out)
    }

    /// Removes a staged download; a missing one is not an error.
    pub async fn remove_staged(&self, name: &str) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.partial_path(name)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::Io {
                op: "remove staged",
                key: name.to_owned(),
                detail: e.to_string(),
            }),
        }
    }

    /// The size of a blob.
    pub async fn size(&self, key: &str) -> Result<u64, BlobError> {
        let meta = self
            .store
            .head(&ObjectPath::from(key))
            .await
            .map_err(|e| self.map_err("head", key, e))?;
        Ok(meta.size)
    }

    /// Removes a deleted job's stored video and last frame, if it has any; how many were
    /// removed (an object already gone counts). A failure is logged, not returned: the job
    /// is deleted either way, and the orphan sweeper removes a leftover blob later.
    pub async fn delete_content(&self, job: &crate::job::Job) -> usize {
        let Some(c) = job.content() else { return 0 };
        let mut removed = 0;
        for key in std::iter::once(c.blob_key.as_str()).chain(c.last_frame_key.as_deref()) {
            match self.delete(key).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "stored content not removed; the orphan sweeper removes it later")
                }
            }
        }
        removed
    }

    /// Deletes a blob; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", key, e)),
        }
    }

    /// Bytes `[range.start, range.end)` of a blob (`end` clamped to its size) in chunks of
    /// `chunk` bytes (the last may be shorter). Each reader has its own file handle, so a
    /// thousand readers of one video share the page cache, not a thousand copies.
    pub async fn read_range(
        &self,
        key: &str,
        range: Range<u64>,
        chunk: usize,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let size = self.size(key).await?;
        if range.start > size || (range.start == size && size > 0) {
            return Err(BlobError::OutOfRange {
                key: key.to_owned(),
                offset: range.start,
                size,
            });
        }
        let end = range.end.min(size);
        if range.start >= end {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions::new().with_range(Some(range.start..end));
        let result = self
            .store
            .get_opts(&ObjectPath::from(key), options)
            .await
            .map_err(|e| self.map_err("read", key, e))?;
        let key_owned = key.to_owned();
        let remote = self.remote.is_some();
        let chunk = chunk.max(1);
        match result.payload {
            // object_store's own file stream reads 8 KiB per blocking call; read the file
            // ourselves in chunk-sized reads instead.
            GetResultPayload::File(file, _path) => Ok(file_chunks(
                file,
                range.start,
                end - range.start,
                chunk,
                key_owned,
            )),
            GetResultPayload::Stream(stream) => Ok(rechunk(
                stream
                    .map(move |r| r.map_err(|e| classify(remote, "read", &key_owned, e)))
                    .boxed(),
                chunk,
            )),
        }
    }

    /// An `object_store` error as a [`BlobError`]: with a remote store, anything but a
    /// missing key means the store is unavailable for now.
    fn map_err(&self, op: &'static str, key: &str, e: object_store::Error) -> BlobError {
        classify(self.remote.is_some(), op, key, e)
    }
}

/// A multipart upload fed while its video downloads ([`BlobStore::begin_upload`]): at most
/// `upload_concurrency` parts in flight and one being filled, so a slow store slows the
/// download rather than grow memory. Nothing is visible in the bucket until
/// [`StreamingUpload::finish`] completes it, which the dispatcher calls only once the whole
/// download is hashed and probed. Dropped unfinished (the download broke, was stopped, or the
/// video was refused), it is aborted in the background, so no part stays billed.
pub struct StreamingUpload {
    key: String,
    /// `None` once finished or aborted.
    writer: Option<object_store::WriteMultipart>,
    concurrency: usize,
    sent: u64,
    store: BlobStore,
    /// This upload's share of the instance's upload memory, given back when it ends.
    _memory: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for StreamingUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingUpload")
            .field("key", &self.key)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl StreamingUpload {
    /// Adds the next bytes of the video, waiting (at most [`STREAM_PART_WAIT`]) for room
    /// among the parts in flight. An error means the upload is of no more use: drop it (it is
    /// aborted) and upload the staged file once whole.
    pub async fn put(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(self.ended());
        };
        match tokio::time::timeout(STREAM_PART_WAIT, writer.wait_for_capacity(self.concurrency))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.store.map_err("upload part", &self.key, e)),
            Err(_) => {
                return Err(BlobError::Unavailable {
                    op: "upload part",
                    key: self.key.clone(),
                    detail: format!(
                        "no part of the upload finished within {} s",
                        STREAM_PART_WAIT.as_secs()
                    ),
                });
            }
        }
        self.sent += bytes.len() as u64;
        writer.put(bytes);
        Ok(())
    }

    /// Completes the upload (the object appears whole, at once) and checks that the object
    /// holds `size` bytes, all that was put.
    pub async fn finish(mut self, size: u64) -> Result<(), BlobError> {
        let Some(writer) = self.writer.take() else {
            return Err(self.ended());
        };
        if self.sent != size {
            let _ = writer.abort().await;
            return Err(BlobError::Io {
                op: "upload",
                key: self.key.clone(),
                detail: format!("{} bytes were put, the download holds {size}", self.sent),
            });
        }
        writer
            .finish()
            .await
            .map_err(|e| self.store.map_err("upload", &self.key, e))?;
        let stored = self.store.size(&self.key).await?;
        if stored != size {
            return Err(BlobError::Io {
                op: "verify upload",
                key: self.key.clone(),
                detail: format!("the object holds {stored} bytes, the download {size}"),
            });
        }
        Ok(())
    }

    fn ended(&self) -> BlobError {
        BlobError::Io {
            op: "upload",
            key: self.key.clone(),
            detail: "the upload was already finished or aborted".into(),
        }
    }
}

impl Drop for StreamingUpload {
    fn drop(&mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let key = std::mem::take(&mut self.key);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %key, "an unfinished multipart upload was not aborted (no runtime); the bucket's lifecycle rule removes it");
            return;
        };
        runtime.spawn(async move {
            match tokio::time::timeout(ABORT_WAIT, writer.abort()).await {
                Ok(Ok(())) => tracing::debug!(key = %key, "unfinished multipart upload aborted"),
                Ok(Err(e)) => tracing::warn!(key = %key, error = %e, "an unfinished multipart upload was not aborted; the bucket's lifecycle rule removes it"),
                Err(_) => tracing::warn!(key = %key, "aborting an unfinished multipart upload took too long; the bucket's lifecycle rule removes it"),
            }
        });
    }
}

/// An S3 client for `bucket`: credentials and defaults from the `AWS_*` environment (or the
/// instance's role), `[blob]`'s endpoint, region and addressing over them; bounded timeouts
/// and retries.
fn s3_store(config: &BlobConfig, bucket: &str) -> Result<object_store::aws::AmazonS3, BlobError> {
    use object_store::aws::AmazonS3Builder;
    let (options, endpoint) = client_options(config);
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(config.virtual_hosted_style)
        .with_retry(retry_config());
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = config.region.as_deref().filter(|r| !r.is_empty()) {
        builder = builder.with_region(region);
    }
    if let Some(credentials) = &config.credentials {
        builder = builder
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key);
    }
    builder
        .with_client_options(options)
        .build()
        .map_err(|e| BlobError::Config(format!("blob: the S3 client cannot be built: {e}")))
}

/// A Google Cloud Storage client for `bucket`: credentials from `GOOGLE_SERVICE_ACCOUNT` /
/// `GOOGLE_APPLICATION_CREDENTIALS` or the instance's service account; `[blob] endpoint` as
/// the base URL (an emulator); bounded timeouts and retries. Built, not tried against a server
/// (README).
fn gcs_store(
    config: &BlobConfig,
    bucket: &str,
) -> Result<object_store::gcp::GoogleCloudStorage, BlobError> {
    use object_store::gcp::GoogleCloudStorageBuilder;
    if config.credentials.is_some() {
        return Err(BlobError::Config(
            "blob: credentials given by code are an access key and secret (S3, Azure); Google Cloud Storage takes GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS".into(),
        ));
    }
    let (options, endpoint) = client_options(config);
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry_config());
    if let Some(endpoint) = endpoint {
        builder = builder.with_base_url(endpoint);
    }
    builder.with_client_options(options).build().map_err(|e| {
        BlobError::Config(format!(
            "blob: the Google Cloud Storage client cannot be built: {e}"
        ))
    })
}

/// An Azure Blob Storage client for `container`: the account and its key (or another
/// credential) from the `AZURE_*` environment or a managed identity, or the account name and
/// key given by code (`credentials`: access key id = account name, secret = account key);
/// `[blob] endpoint` for a non-default endpoint (e.g. Azurite's
/// `http://127.0.0.1:10000/devstoreaccount1`); bounded timeouts and retries.
fn azure_store(
    config: &BlobConfig,
    container: &str,
) -> Result<object_store::azure::MicrosoftAzure, BlobError> {
    use object_store::azure::MicrosoftAzureBuilder;
    let (options, endpoint) = client_options(config);
    let mut builder = MicrosoftAzureBuilder::from_env()
        .with_container_name(container)
        .with_retry(retry_config());
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint.to_owned());
    }
    if let Some(credentials) = &config.credentials {
        builder = builder
            .with_account(&credentials.access_key_id)
            .with_access_key(&credentials.secret_access_key);
    }
    builder.with_client_options(options).build().map_err(|e| {
        BlobError::Config(format!(
            "blob: the Azure Blob Storage client cannot be built: {e}"
        ))
    })
}

/// The HTTP client settings every remote store gets (bounded connect and request times;
/// plain `http` only for an explicitly configured endpoint), and that endpoint.
fn client_options(config: &BlobConfig) -> (object_store::ClientOptions, Option<&str>) {
    let mut options = object_store::ClientOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    let endpoint = config.endpoint.as_deref().filter(|e| !e.is_empty());
    if endpoint.is_some_and(|e| e.starts_with("http://")) {
        options = options.with_allow_http(true);
    }
    (options, endpoint)
}

/// Retries of one request to a remote store, and how long they may take together.
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
        ..Default::default()
    }
}

/// Reads `len` bytes from `offset` in `chunk`-sized pieces, each with one positioned read on a
/// blocking thread straight into the piece's buffer (`tokio::fs` would read into its own buffer
/// and copy).
fn file_chunks(
    file: std::fs::File,
    offset: u64,
    len: u64,
    chunk: usize,
    key: String,
) -> BoxStream<'static, Result<Bytes, BlobError>> {
    let file = Arc::new(file);
    futures::stream::try_unfold((offset, len), move |(at, remaining)| {
        let (file, key) = (file.clone(), key.clone());
        async move {
            if remaining == 0 {
                return Ok(None);
            }
            let want = remaining.min(chunk as u64) as usize;
            let mut buf = BytesMut::zeroed(want);
            // What the page cache holds is read right here: a blocking-pool hop per chunk
            // (a futex wake each way) costs more than the copy itself.
            let cached = read_cached(&file, at, &mut buf);
            let buf = if cached == want {
                Ok(Ok(buf.freeze()))
            } else {
                tokio::task::spawn_blocking(move || read_at(&file, at, buf, cached)).await
            };
            let buf = match buf {
                Ok(Ok(buf)) => buf,
                Ok(Err(e)) => {
                    return Err(BlobError::Io {
                        op: "read",
                        key,
                        detail: e.to_string(),
                    });
                }
                Err(e) => {
                    return Err(BlobError::Io {
                        op: "read",
                        key,
                        detail: format!("the reading thread failed: {e}"),
                    });
                }
            };
            let got = buf.len() as u64;
            Ok(Some((buf, (at + got, remaining - got))))
        }
    })
    .boxed()
}

/// How many bytes of `buf`, from `at`, could be read without waiting for the disk: `preadv2`
/// with `RWF_NOWAIT` copies what the page cache holds and stops where a read would block. 0
/// when nothing is cached, or the kernel or file system does not support the flag.
#[cfg(target_os = "linux")]
fn read_cached(file: &std::fs::File, at: u64, buf: &mut [u8]) -> usize {
    use rustix::io::{Errno, ReadWriteFlags, preadv2};
    let mut got = 0;
    while got < buf.len() {
        let mut slices = [std::io::IoSliceMut::new(&mut buf[got..])];
        match preadv2(file, &mut slices, at + got as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::INTR) => {}
            // EAGAIN (not cached), EOPNOTSUPP (not supported): the blocking read takes over.
            Err(_) => break,
        }
    }
    got
}

#[cfg(not(target_os = "linux"))]
fn read_cached(_file: &std::fs::File, _at: u64, _buf: &mut [u8]) -> usize {
    0
}

/// Fills `buf` from `at` (its first `filled` bytes are already read), or an error (a file
/// shorter than its recorded size is one).
fn read_at(
    file: &std::fs::File,
    at: u64,
    mut buf: BytesMut,
    filled: usize,
) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(&mut buf[filled..], at + filled as u64)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::other("file ended before its recorded size")
            } else {
                e
            }
        })?;
    Ok(buf.freeze())
}

/// Re-cuts a body into pieces of exactly `chunk` bytes (the last may be shorter). A piece
/// that a body frame holds whole is a slice of that frame (no copy); only pieces that span
/// frames are copied together.
fn rechunk(
    stream: BoxStream<'static, Result<Bytes, BlobError>>,
    chunk: usize,
) -> BoxStream<'static, Result<Bytes, BlobError>> {
    struct State {
        stream: BoxStream<'static, Result<Bytes, BlobError>>,
        /// The unread rest of the last frame.
        pending: Bytes,
        /// A piece being gathered across frames.
        joined: BytesMut,
        done: bool,
    }
    let state = State {
        stream,
        pending: Bytes::new(),
        joined: BytesMut::new(),
        done: false,
    };
    futures::stream::try_unfold(state, move |mut st| async move {
        loop {
            // A whole piece in what is pending, and nothing gathered: a slice, no copy.
            if st.joined.is_empty() && st.pending.len() >= chunk {
                let out = st.pending.split_to(chunk);
                return Ok(Some((out, st)));
            }
            // Gather from what is pending.
            if !st.pending.is_empty() {
                let take = (chunk - st.joined.len()).min(st.pending.len());
                if st.joined.is_empty() {
                    st.joined.reserve(chunk);
                }
                st.joined.extend_from_slice(&st.pending.split_to(take));
                if st.joined.len() == chunk {
                    let out = st.joined.split().freeze();
                    return Ok(Some((out, st)));
                }
            }
            if st.done {
                if st.joined.is_empty() {
                    return Ok(None);
                }
                let out = st.joined.split().freeze();
                return Ok(Some((out, st)));
            }
            match st.stream.next().await {
                Some(item) => st.pending = item?,
                None => st.done = true,
            }
        }
    })
    .boxed()
}

fn classify(remote: bool, op: &'static str, key: &str, e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
        other if remote => BlobError::Unavailable {
            op,
            key: key.to_owned(),
            detail: other.to_string(),
        },
        other => BlobError::Io {
            op,
            key: key.to_owned(),
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_urls_and_retention_parse_or_say_which_field_is_wrong() {
        let data = Path::new("/var/lib/vidgate");
        let with = |url: &str| BlobConfig {
            url: Some(url.into()),
            ..BlobConfig::default()
        };
        assert_eq!(
            BlobConfig::default().location(data),
            Ok(BlobLocation::Local(data.join("blobs")))
        );
        assert_eq!(
            with("s3://bucket/a/b/").location(data),
            Ok(BlobLocation::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            with("file:///srv/videos").location(data),
            Ok(BlobLocation::Local(PathBuf::from("/srv/videos")))
        );
        let e = with("s3://key:secret@bucket").location(data).unwrap_err();
        assert!(e.contains("credentials") && !e.contains("secret@"), "{e}");
        assert_eq!(
            with("gs://b/videos").location(data),
            Ok(BlobLocation::Gcs {
                bucket: "b".into(),
                prefix: "videos".into()
            })
        );
        assert_eq!(
            with("az://media").location(data),
            Ok(BlobLocation::Azure {
                container: "media".into(),
                prefix: String::new()
            })
        );
        let e = with("az://").location(data).unwrap_err();
        assert!(
            e.contains("no container") && e.contains("az://container"),
            "{e}"
        );
        let e = with("az://name:key@media").location(data).unwrap_err();
        assert!(
            e.contains("AZURE_STORAGE_ACCOUNT_KEY") && !e.contains("key@"),
            "{e}"
        );
        let e = with("ftp://host/dir").location(data).unwrap_err();
        assert!(
            e.contains("\"ftp\" is not supported") && e.contains("gs://"),
            "{e}"
        );
        assert!(
            with("s3://")
                .location(data)
                .unwrap_err()
                .contains("no bucket")
        );
        let mut c = BlobConfig {
            retention: Some("30d".into()),
            ..BlobConfig::default()
        };
        assert_eq!(c.retention(), Ok(Some(Duration::from_secs(30 * 86_400))));
        c.retention = Some("soon".into());
        assert!(c.location(data).unwrap_err().contains("blob.retention"));
        c.retention = None;
        c.part_bytes = 1024;
        assert!(c.location(data).unwrap_err().contains("blob.part_bytes"));
        c.part_bytes = DEFAULT_PART_BYTES;
        c.upload_memory_bytes = DEFAULT_PART_BYTES - 1;
        let e = c.location(data).unwrap_err();
        assert!(
            e.contains("blob.upload_memory_bytes") && e.contains("blob.part_bytes"),
            "{e}"
        );
        c.upload_memory_bytes = DEFAULT_UPLOAD_MEMORY_BYTES;
        assert!(c.location(data).is_ok());
        let printed = format!(
            "{:?}",
            BlobConfig {
                credentials: Some(StaticCredentials {
                    access_key_id: "AKIA".into(),
                    secret_access_key: "hush".into()
                }),
                ..with("s3://u:p@b")
            }
        );
        assert!(
            !printed.contains("hush") && !printed.contains("u:p@"),
            "{printed}"
        );
    }

    #[test]
    fn an_upload_holds_its_body_or_its_parts_in_flight_never_more_than_the_budget() {
        let remote = Remote {
            location: "s3://b".into(),
            part_bytes: 8 << 20,
            concurrency: 4,
            memory: Arc::new(tokio::sync::Semaphore::new(64 << 20)),
            memory_bytes: 64 << 20,
            s3: None,
        };
        // One PUT of the whole body.
        assert_eq!(remote.upload_need(0), 1);
        assert_eq!(remote.upload_need(5_000_000), 5_000_000);
        assert_eq!(remote.upload_need(8 << 20), 8 << 20);
        // Multipart: 4 parts in flight and one being filled.
        assert_eq!(remote.upload_need((8 << 20) + 1), 40 << 20);
        assert_eq!(remote.upload_need(10 << 30), 40 << 20);
        let small = Remote {
            memory_bytes: 16 << 20,
            ..remote
        };
        assert_eq!(small.upload_need(10 << 30), 16 << 20);
    }

    #[tokio::test]
    async fn gcs_and_azure_stores_are_built_from_the_same_config_and_say_what_is_missing() {
        let data = tempfile::tempdir().unwrap();
        // Built without asking anything of the store (nothing listens on port 1).
        let gcs = BlobStore::open(
            &BlobConfig {
                url: Some("gs://bucket/videos".into()),
                endpoint: Some("http://127.0.0.1:1".into()),
                ..BlobConfig::default()
            },
            data.path(),
        )
        .unwrap();
        assert!(gcs.is_remote());
        assert_eq!(gcs.describe(), "gs://bucket/videos");
        let azure = BlobStore::open(
            &BlobConfig {
                url: Some("az://media".into()),
                endpoint: Some("http://127.0.0.1:1/acct".into()),
                credentials: Some(StaticCredentials {
                    access_key_id: "acct".into(),
                    secret_access_key: "a2V5".into(),
                }),
                ..BlobConfig::default()
            },
            data.path(),
        )
        .unwrap();
        assert_eq!(azure.describe(), "az://media");
        // Code-given credentials are a key pair: GCS takes a service account instead.
        let e = BlobStore::open(
            &BlobConfig {
                url: Some("gs://bucket".into()),
                credentials: Some(StaticCredentials {
                    access_key_id: "a".into(),
                    secret_access_key: "b".into(),
                }),
                ..BlobConfig::default()
            },
            data.path(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("GOOGLE_SERVICE_ACCOUNT"), "{e}");
    }

    async fn store_with(name: &str, data: &[u8]) -> (BlobStore, PathBuf) {
        let root = std::env::temp_dir().join(format!("vidgate-blob-{}", uuid::Uuid::now_v7()));
        let blobs = BlobStore::local(&root).unwrap();
        tokio::fs::write(blobs.partial_path(name), data)
            .await
            .unwrap();
        blobs.commit_partial(name, "videos/a.mp4").await.unwrap();
        (blobs, root)
    }

    async fn collect(s: BoxStream<'static, Result<Bytes, BlobError>>) -> Vec<Bytes> {
        s.map(|r| r.unwrap()).collect().await
    }

    #[tokio::test]
    async fn ranges_come_back_exactly_in_chunks_of_the_asked_size() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (blobs, root) = store_with("a.part", &data).await;
        assert_eq!(blobs.size("videos/a.mp4").await.unwrap(), 100_000);
        for (range, chunk) in [
            (0..100_000, 65_536),
            (10..99_999, 4096),
            (99_000..200_000, 333),
        ] {
            let chunks = collect(
                blobs
                    .read_range("videos/a.mp4", range.clone(), chunk)
                    .await
                    .unwrap(),
            )
            .await;
            let end = range.end.min(100_000) as usize;
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert!(
                joined == data[range.start as usize..end],
                "range {range:?} differs"
            );
            assert!(chunks.iter().all(|c| c.len() <= chunk));
            assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == chunk));
        }
        std::fs::remove_dir_all(root).ok();
    }

    #[tokio::test]
    async fn offset_past_the_end_is_out_of_range_and_missing_blob_is_not_found() {
        let (blobs, root) = store_with("b.part", b"hello").await;
        assert!(matches!(
            blobs.read_range("videos/a.mp4", 6..10, 10).await,
            Err(BlobError::OutOfRange { size: 5, .. })
        ));
        assert!(matches!(
            blobs.read_range("videos/none.mp4", 0..10, 10).await,
            Err(BlobError::NotFound(_))
        ));
        blobs.delete("videos/a.mp4").await.unwrap();
        blobs.delete("videos/a.mp4").await.unwrap();
        assert!(matches!(
            blobs.size("videos/a.mp4").await,
            Err(BlobError::NotFound(_))
        ));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_read_started_from_the_page_cache_is_finished_by_the_blocking_read() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let path = std::env::temp_dir().join(format!("vidgate-blob-{}", uuid::Uuid::now_v7()));
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // As if the cached read had stopped after 1 000 bytes of a 4 000-byte chunk at 3 000.
        let mut buf = BytesMut::zeroed(4_000);
        buf[..1_000].copy_from_slice(&data[3_000..4_000]);
        let chunk = read_at(&file, 3_000, buf, 1_000).unwrap();
        assert!(chunk[..] == data[3_000..7_000]);
        // The cached read of a whole chunk of a file just written.
        let mut buf = vec![0_u8; 4_000];
        let cached = read_cached(&file, 6_000, &mut buf);
        assert!(cached <= 4_000);
        assert!(buf[..cached] == data[6_000..6_000 + cached]);
        std::fs::remove_file(path).ok();
    }

    #[tokio::test]
    async fn a_stored_file_shorter_than_its_size_is_an_error_not_a_short_stream() {
        let data = vec![7_u8; 50_000];
        let (blobs, root) = store_with("c.part", &data).await;
        let path = root.join("videos").join("a.mp4");
        let mut s = blobs
            .read_range("videos/a.mp4", 0..50_000, 16_384)
            .await
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(20_000)
            .unwrap();
        let mut read = 0;
        let error = loop {
            match s.next().await {
                Some(Ok(chunk)) => read += chunk.len(),
                Some(Err(e)) => break e.to_string(),
                None => panic!("the stream ended after {read} bytes without an error"),
            }
        };
        assert_eq!(read, 16_384);
        assert!(error.contains("ended before its recorded size"), "{error}");
        std::fs::remove_dir_all(root).ok();
    }

    #[tokio::test]
    async fn rechunk_cuts_any_frames_into_exact_chunks_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for frames in [
            vec![10_000],
            vec![1; 0],
            vec![3, 5000, 7, 4990],
            vec![4096; 2],
        ] {
            let mut at = 0;
            let mut pieces: Vec<Result<Bytes, BlobError>> = Vec::new();
            for len in frames {
                let end = (at + len).min(data.len());
                pieces.push(Ok(Bytes::copy_from_slice(&data[at..end])));
                at = end;
            }
            if at < data.len() {
                pieces.push(Ok(Bytes::copy_from_slice(&data[at..])));
            }
            let out = collect(rechunk(futures::stream::iter(pieces).boxed(), 1_000)).await;
            let joined: Vec<u8> = out.iter().flat_map(|c| c.iter().copied()).collect();
            assert!(joined == data);
            assert!(
                out.iter().all(|c| c.len() == 1_000),
                "{:?}",
                out.iter().map(|c| c.len()).collect::<Vec<_>>()
            );
        }
    }

    #[tokio::test]
    async fn rechunk_joins_small_pieces_into_full_chunks() {
        let pieces: Vec<Result<Bytes, BlobError>> =
            (0..10).map(|i| Ok(Bytes::from(vec![i as u8; 3]))).collect();
        let out = collect(rechunk(futures::stream::iter(pieces).boxed(), 7)).await;
        let sizes: Vec<usize> = out.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![7, 7, 7, 7, 2]);
    }
}
