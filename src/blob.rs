//! Finished videos and last frames: put once, read any range as a stream, many times.
//!
//! Backed by `object_store` (a local directory by default; S3/GCS/Azure are the same trait).
//! Downloads are written to a partial file under the store's root first and renamed into
//! place once verified, so a reader never sees half a video.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetResultPayload, ObjectStore, ObjectStoreExt};

/// Where partial downloads live, inside the store's root.
const PARTIAL_DIR: &str = "partial";

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
    root: PathBuf,
}

impl BlobStore {
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
            .map_err(|e| map_err("commit", key, e))
    }

    /// The size of a blob.
    pub async fn size(&self, key: &str) -> Result<u64, BlobError> {
        let meta = self
            .store
            .head(&ObjectPath::from(key))
            .await
            .map_err(|e| map_err("head", key, e))?;
        Ok(meta.size)
    }

    /// Removes a deleted job's stored video and last frame, if it has any. A failure is logged,
    /// not returned: the job is deleted either way, and a leftover blob only costs space.
    pub async fn delete_content(&self, job: &crate::job::Job) {
        let Some(c) = job.content() else { return };
        for key in std::iter::once(c.blob_key.as_str()).chain(c.last_frame_key.as_deref()) {
            if let Err(e) = self.delete(key).await {
                tracing::warn!(job_id = %job.id, error = %e, "stored content not removed");
            }
        }
    }

    /// Deletes a blob; a missing one is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete", key, e)),
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
            .map_err(|e| map_err("read", key, e))?;
        let key_owned = key.to_owned();
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
                    .map(move |r| r.map_err(|e| map_err("read", &key_owned, e)))
                    .boxed(),
                chunk,
            )),
        }
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

fn rechunk(
    stream: BoxStream<'static, Result<Bytes, BlobError>>,
    chunk: usize,
) -> BoxStream<'static, Result<Bytes, BlobError>> {
    futures::stream::try_unfold(
        (stream, BytesMut::new(), false),
        move |(mut stream, mut buf, mut done)| async move {
            while !done && buf.len() < chunk {
                match stream.next().await {
                    Some(item) => buf.extend_from_slice(&item?),
                    None => done = true,
                }
            }
            if buf.is_empty() {
                return Ok(None);
            }
            let take = buf.len().min(chunk);
            let out = buf.split_to(take).freeze();
            Ok(Some((out, (stream, buf, done))))
        },
    )
    .boxed()
}

fn map_err(op: &'static str, key: &str, e: object_store::Error) -> BlobError {
    match e {
        object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_owned()),
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
    async fn rechunk_joins_small_pieces_into_full_chunks() {
        let pieces: Vec<Result<Bytes, BlobError>> =
            (0..10).map(|i| Ok(Bytes::from(vec![i as u8; 3]))).collect();
        let out = collect(rechunk(futures::stream::iter(pieces).boxed(), 7)).await;
        let sizes: Vec<usize> = out.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![7, 7, 7, 7, 2]);
    }
}
