//! Error codes carried in `error` messages and WebSocket close codes.
//!
//! Both are part of the public contract: a code is never renamed, and a
//! retired code is never reused for another meaning.

use serde::{Deserialize, Serialize};

/// The `code` of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message is malformed or a field is invalid. The connection state is unchanged.
    BadRequest,
    /// No valid credentials, or credentials that do not identify the session's owner.
    Unauthorized,
    /// The credentials are valid but do not grant what was asked.
    Forbidden,
    /// The subscription, session or service named does not exist.
    NotFound,
    /// The request conflicts with current state (for example a subscription id already in use).
    Conflict,
    /// A configured limit was reached.
    LimitExceeded,
    /// The client did not read fast enough and its outbound queue overflowed.
    SlowConsumer,
    /// The requested starting point is older than the log keeps.
    HistoryTruncated,
    /// The server or an upstream it needs is unavailable; retry later.
    Unavailable,
    /// A deadline passed.
    Timeout,
    /// A bug or an unexpected failure inside the server.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::HistoryTruncated => "history_truncated",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that carries this code on the HTTP endpoints.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::LimitExceeded => 429,
            ErrorCode::SlowConsumer => 429,
            ErrorCode::HistoryTruncated => 410,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WebSocket close codes Herald uses.
///
/// They fall in three classes that tell a client what to do next:
/// do not reconnect (4400, 4401, 4403), back off (4408, 4429, 1013) and
/// reconnect now (1000 after an orderly close the client asked for, 1001, 1012).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// 1000: orderly close.
    Normal,
    /// 1001: the server is draining (restart or shutdown); reconnect, resuming the session.
    Draining,
    /// 1002: the WebSocket framing itself was broken.
    WebSocketProtocol,
    /// 1007: a text frame was not valid UTF-8.
    InvalidUtf8,
    /// 1009: a frame larger than the WebSocket layer accepts.
    TooBig,
    /// 1011: the server hit an internal error (for example, the log could not be read).
    InternalError,
    /// 1013: the server is at capacity; retry later.
    TryAgainLater,
    /// 4400: protocol violation (for example a message before `hello`, or a binary frame).
    ProtocolViolation,
    /// 4401: unauthorized.
    Unauthorized,
    /// 4403: forbidden.
    Forbidden,
    /// 4408: slow consumer: the outbound queue overflowed.
    SlowConsumer,
    /// 4409: the session was resumed on another connection.
    SessionTakenOver,
    /// 4429: a limit was exceeded.
    Limits,
}

impl CloseCode {
    /// The numeric close code.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::Draining => 1001,
            CloseCode::WebSocketProtocol => 1002,
            CloseCode::InvalidUtf8 => 1007,
            CloseCode::TooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TryAgainLater => 1013,
            CloseCode::ProtocolViolation => 4400,
            CloseCode::Unauthorized => 4401,
            CloseCode::Forbidden => 4403,
            CloseCode::SlowConsumer => 4408,
            CloseCode::SessionTakenOver => 4409,
            CloseCode::Limits => 4429,
        }
    }
}
