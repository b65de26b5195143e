//! The data directory, created on first start and locked so two brokers cannot share it.
//!
//! ```text
//!  <data_dir>/.lock        held with an exclusive advisory lock (flock) while the broker runs
//! ```
//!
//! The lock is released by the kernel when the process ends, however it ends, so a crashed
//! broker never leaves a stale lock behind.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

const LOCK_FILE_NAME: &str = ".lock";

#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    /// Held for the lock; closing it releases the lock.
    _lock: File,
}

impl DataDir {
    /// Creates `path` if needed and takes its lock, or fails if another process has it.
    pub fn open(path: &Path) -> Result<DataDir> {
        fs::create_dir_all(path)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE_NAME))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    path: path.display().to_string(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(e.into()),
        }
        lock.set_len(0)?;
        std::io::Write::write_all(&mut &lock, format!("{}\n", std::process::id()).as_bytes())?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_a_locked_dir_fails_until_the_first_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let first = DataDir::open(&path).unwrap();
        assert!(matches!(
            DataDir::open(&path),
            Err(StoreError::Locked { .. })
        ));
        drop(first);
        DataDir::open(&path).unwrap();
    }
}
