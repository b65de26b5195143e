//! Storage errors.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A record failed its checks (size, checksum, fields); recovery skips it.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("data directory {path} is locked by another process")]
    Locked { path: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
