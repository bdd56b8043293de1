//! The data directory is private: directories 0700, files 0600 (on Unix), whatever the umask.
//!
//! It holds every tenant's prompts, input images and videos, and the database of who asked
//! for what: nobody but vidgate's own user has a reason to read it. A directory that already
//! exists with wider permissions is **tightened**, with a warning naming what it was, rather
//! than only warned about: a warning alone leaves the data readable until someone acts, and an
//! operator who wants others to read it can still grant that on a copy. When tightening is not
//! possible (the directory belongs to another user), vidgate warns and goes on; the files it
//! creates are still 0600.

use std::io;
use std::path::Path;

/// Mode of vidgate's directories.
pub const DIR_MODE: u32 = 0o700;
/// Mode of vidgate's files (the SQLite database and its journal, blobs, partial downloads).
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) with [`DIR_MODE`]; an existing `dir` that others may
/// read, write or enter is tightened to it, with a warning.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            match std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)) {
                Ok(()) => tracing::warn!(
                    dir = %dir.display(),
                    was = %format!("{mode:o}"),
                    now = %format!("{DIR_MODE:o}"),
                    "data directory was readable by others; tightened"
                ),
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    mode = %format!("{mode:o}"),
                    error = %e,
                    "data directory is readable by others and could not be tightened; make it 0700"
                ),
            }
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Sets an existing file to [`FILE_MODE`] (a missing one is not an error: SQLite creates its
/// journal files only when needed).
pub fn private_file(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Options that create a file with [`FILE_MODE`] (tokio; for writers of partial downloads).
pub fn private_open_options() -> tokio::fs::OpenOptions {
    #[allow(unused_mut)]
    let mut options = tokio::fs::OpenOptions::new();
    #[cfg(unix)]
    options.mode(FILE_MODE);
    options
}
