//! [`Error`]: what the client's calls fail with.

use herald_protocol::ErrorCode;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The server answered with an `error` (see docs/protocol.md, "Errors").
    #[error("{code}: {message}")]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's message, for people.
        message: String,
    },
    /// The connection was lost after the command was sent and before its
    /// answer: it may or may not have been carried out (publish with an
    /// idempotency key to retry safely).
    #[error("the connection closed before the answer came; the command may or may not have been carried out")]
    Disconnected,
    /// The server closed the connection with a code after which
    /// reconnecting unchanged cannot help (4400, 4401, 4403, 4409, ...).
    #[error("the server closed the connection with {code} ({reason}); not reconnecting")]
    Refused {
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The client was closed (or gave up after [`Error::Refused`]).
    #[error("the client is closed")]
    Closed,
    /// More commands wait for a connection than the client holds.
    #[error("more than {0} commands wait for a connection")]
    Backlog(usize),
    /// A value could not be encoded or decoded as JSON.
    #[error("JSON: {0}")]
    Json(String),
}

impl Error {
    /// The protocol error code, for [`Error::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e.to_string())
    }
}
