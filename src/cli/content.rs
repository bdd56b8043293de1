//! The file a download or a watch writes: bytes go to `FILE.part` at the offsets the server
//! names, hashed as they are written, and only a verified file is renamed to `FILE`. Nothing
//! holds more than one chunk in memory.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest as _, Sha256};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, BufWriter};

/// Buffer for hashing an existing partial file on resume.
const HASH_READ_BUFFER_BYTES: usize = 64 * 1024;

/// `FILE.part`: where content goes until it is verified.
pub fn part_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Content being written to `FILE.part`.
pub struct PartFile {
    output: PathBuf,
    part: PathBuf,
    file: BufWriter<File>,
    hasher: Sha256,
    len: u64,
}

impl PartFile {
    /// Starts `FILE.part` afresh (truncating any old one).
    pub async fn create(output: &Path) -> anyhow::Result<Self> {
        let part = part_path(output);
        let file = File::create(&part)
            .await
            .with_context(|| format!("cannot create {}", part.display()))?;
        Ok(Self {
            output: output.to_owned(),
            part,
            file: BufWriter::new(file),
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Continues `FILE.part` if it exists (its bytes are hashed again, streaming, so the final
    /// SHA-256 covers the whole file), or starts it.
    pub async fn resume(output: &Path) -> anyhow::Result<Self> {
        let part = part_path(output);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(&part)
            .await
            .with_context(|| format!("cannot open {}", part.display()))?;
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; HASH_READ_BUFFER_BYTES];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .with_context(|| format!("cannot read {} to resume it", part.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Self {
            output: output.to_owned(),
            part,
            file: BufWriter::new(file),
            hasher,
            len,
        })
    }

    /// Bytes in the file so far: the offset to ask the server for next.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// The final path, once verified.
    pub fn output(&self) -> &Path {
        &self.output
    }

    /// The partial file's path (for messages).
    pub fn part(&self) -> &Path {
        &self.part
    }

    /// Writes a chunk that starts at `offset`. Bytes already in the file (a chunk replayed
    /// after a reconnect) are skipped; a gap means lost data and is an error.
    pub async fn write_at(&mut self, offset: i64, data: &[u8]) -> anyhow::Result<()> {
        let offset = u64::try_from(offset)
            .with_context(|| format!("the server sent a chunk at negative offset {offset}"))?;
        if offset > self.len {
            bail!(
                "the server sent a chunk at offset {offset} but {} holds only {} bytes: data is missing; run the command again",
                self.part.display(),
                self.len
            );
        }
        let skip = usize::try_from(self.len - offset).unwrap_or(usize::MAX);
        let Some(new) = data.get(skip..) else {
            return Ok(());
        };
        self.file
            .write_all(new)
            .await
            .with_context(|| format!("cannot write to {}", self.part.display()))?;
        self.hasher.update(new);
        self.len += new.len() as u64;
        Ok(())
    }

    /// Flushes, checks size and SHA-256 (when expected values are given), and renames
    /// `FILE.part` to `FILE`. Returns the SHA-256 (hex). A mismatch removes the partial file,
    /// since resuming from corrupt bytes could never verify.
    pub async fn finish(
        mut self,
        expected_size: Option<u64>,
        expected_sha256: Option<&str>,
    ) -> anyhow::Result<String> {
        self.file
            .flush()
            .await
            .with_context(|| format!("cannot write to {}", self.part.display()))?;
        self.file
            .get_ref()
            .sync_all()
            .await
            .with_context(|| format!("cannot sync {} to disk", self.part.display()))?;
        let sha256 = hex::encode(self.hasher.finalize());
        let problem = match (expected_size, expected_sha256) {
            (Some(size), _) if size != self.len => Some(format!(
                "size mismatch: got {} bytes, the server says {size}",
                self.len
            )),
            (_, Some(want)) if !want.eq_ignore_ascii_case(&sha256) => Some(format!(
                "sha256 mismatch: got {sha256}, the server says {want}"
            )),
            _ => None,
        };
        if let Some(problem) = problem {
            let removed = match tokio::fs::remove_file(&self.part).await {
                Ok(()) => format!("removed {}", self.part.display()),
                Err(e) => format!("could not remove {}: {e}", self.part.display()),
            };
            bail!(
                "{} is corrupt: {problem}; {removed}; run the command again to fetch it afresh",
                self.output.display()
            );
        }
        tokio::fs::rename(&self.part, &self.output)
            .await
            .with_context(|| {
                format!(
                    "cannot rename {} to {}",
                    self.part.display(),
                    self.output.display()
                )
            })?;
        Ok(sha256)
    }
}
