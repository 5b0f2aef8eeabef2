//! Log errors.

use std::path::PathBuf;

/// What can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("log I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Acknowledged data is damaged.
    #[error("log corrupt in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// The log was closed, or its writer stopped after an unrecoverable error.
    #[error("the log is closed")]
    Closed,
    /// A sync failed (or a failed write could not be undone): the log does
    /// not know what is durable and refuses writes until it is opened again.
    #[error("the log refuses writes until the gateway is restarted: {0}")]
    Failed(String),
    /// The cluster log (NATS JetStream) cannot be reached or refused the request.
    #[error("the cluster log is unavailable: {0}")]
    Unavailable(String),
    /// The filesystem holding the log is full; nothing was stored. Writes
    /// succeed again once there is space.
    #[error("the disk holding the log is full ({0}); nothing was stored, and publishing resumes when space is freed")]
    Full(String),
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LogError {
        LogError::Io { path: path.into(), source }
    }
}
