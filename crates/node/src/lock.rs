//! Exclusive lock of a data directory, so that two nodes never share one store and one set of
//! containers: the second node's reconcile would otherwise remove the first node's sandboxes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "gitvm.lock";

/// Failure to take the data directory lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "data directory {} is in use by another gitvm server (pid {}); stop it or pass another --data-dir",
        .data_dir.display(),
        .pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
    )]
    InUse {
        /// The data directory.
        data_dir: PathBuf,
        /// Pid that the holder wrote into the lock file, when it could be read.
        pid: Option<u32>,
    },

    /// The lock file could not be created, locked or written.
    #[error("cannot lock {}: {source}; check that the data directory is writable", .path.display())]
    Io {
        /// Path of the lock file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// An exclusive `flock` on `<data_dir>/gitvm.lock`, held until the value is dropped. The
/// kernel releases it when the process exits, so a crashed node leaves no stale lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock without waiting, creating the data directory when missing, and writes
    /// this process's pid into the lock file.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let path = data_dir.join(LOCK_FILE);
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };

        std::fs::create_dir_all(data_dir).map_err(io_error)?;
        // Opened without truncation: the holder's pid stays readable for the error message.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;

        // SAFETY: flock takes a file descriptor that `file` keeps open, and touches no memory.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked == -1 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::InUse {
                    data_dir: data_dir.to_path_buf(),
                    pid,
                });
            }
            return Err(io_error(error));
        }

        file.set_len(0).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        writeln!(file, "{}", std::process::id()).map_err(io_error)?;
        file.flush().map_err(io_error)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_dir_fails_with_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _held = DataDirLock::acquire(dir.path()).unwrap();

        // flock locks belong to the open file description, so a second open in the same
        // process conflicts just as another process would.
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let expected = format!(
            "data directory {} is in use by another gitvm server (pid {}); stop it or pass another --data-dir",
            dir.path().display(),
            std::process::id()
        );
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn lock_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        drop(DataDirLock::acquire(dir.path()).unwrap());
        assert!(DataDirLock::acquire(dir.path()).is_ok());
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }
}
