//! [`ClientError`]: the one error type that reaches clients.
//!
//! It carries a documented [`ErrorCode`] and a message, and converts into an
//! HTTP response (status from the code, body
//! `{"error": {"code": ..., "message": ...}}`) as well as into a protocol
//! `error` message; [`ClientError::fatal`] adds the close code class for
//! errors that end a WebSocket connection.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocol::{CloseCode, ErrorCode, Ref, ServerMessage};

/// An error for a client: code, message, and the close code when it ends
/// the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    /// Set when the error ends a WebSocket connection.
    pub(crate) close: Option<CloseCode>,
}

impl ClientError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError { code, message: message.into(), close: None }
    }

    /// The same error, ending the connection with `close`.
    pub(crate) fn fatal(mut self, close: CloseCode) -> ClientError {
        self.close = Some(close);
        self
    }

    /// The protocol `error` message, answering `reference` and naming `sub`.
    pub(crate) fn to_message(&self, reference: Option<Ref>, sub: Option<String>) -> ServerMessage {
        ServerMessage::Error { reference, sub, code: self.code, message: self.message.clone() }
    }
}

impl IntoResponse for ClientError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = crate::http::api::ErrorBody {
            error: crate::http::api::ErrorDetail { code: self.code, message: self.message },
        };
        (status, Json(body)).into_response()
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
