//! File helpers of the qemu runtime: errors with context, lock files, atomic writes and sparse
//! copies.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// Wraps an I/O error with what was being done.
pub fn io_error(context: String, source: io::Error) -> RuntimeError {
    RuntimeError::Io { context, source }
}

/// An exclusive `flock` on a lock file, released on drop. Serialises work on one cache entry
/// between processes as well as tasks.
pub struct FileLock {
    _file: File,
}

impl FileLock {
    /// Waits for the lock on `path`, creating the file when needed.
    pub async fn acquire(path: &Path) -> Result<Self, RuntimeError> {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || -> io::Result<File> {
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&owned)?;
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(file)
        })
        .await
        .expect("lock task panicked")
        .map(|file| Self { _file: file })
        .map_err(|source| io_error(format!("locking {}", path.display()), source))
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// readers see the old contents or the new, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let temp = temp_path(path);
    let result = std::fs::write(&temp, bytes)
        .and_then(|()| File::open(&temp)?.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(source) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(format!("writing {}", path.display()), source));
    }
    Ok(())
}

/// Returns a temporary name next to `path`, unique to this process and call.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Copies `source` to `target` keeping holes, through a temporary file and a rename.
pub async fn copy_sparse(source: &Path, target: &Path) -> Result<(), RuntimeError> {
    let temp = temp_path(target);
    let output = tokio::process::Command::new("cp")
        .arg("--sparse=always")
        .arg("--reflink=auto")
        .arg(source)
        .arg(&temp)
        .output()
        .await
        .map_err(|source_error| io_error("running cp".to_owned(), source_error))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&temp);
        return Err(io_error(
            format!("copying {} to {}", source.display(), target.display()),
            io::Error::other(String::from_utf8_lossy(&output.stderr).trim().to_owned()),
        ));
    }
    std::fs::rename(&temp, target)
        .map_err(|error| io_error(format!("moving {} into place", target.display()), error))
}

/// Returns the bytes a file or directory tree takes on disk (allocated blocks, so holes of
/// sparse files are not counted).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return metadata.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| disk_usage(&entry.path()))
                .sum()
        })
        .unwrap_or(0)
}
