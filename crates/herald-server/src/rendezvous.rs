//! Checks shared by every rendezvous transport (WebSocket, HTTP, SQS).

use crate::error::ClientError;
use crate::state::Inner;
use herald_core::Principal;
use herald_protocol::ErrorCode;

/// Longest service name, in bytes.
pub(crate) const MAX_SERVICE_BYTES: usize = 255;

/// A service name is 1 to 255 bytes without control characters.
pub(crate) fn check_service(service: &str) -> Result<(), ClientError> {
    if service.is_empty() || service.len() > MAX_SERVICE_BYTES {
        return Err(ClientError::new(
            ErrorCode::BadRequest,
            format!("`service` must be 1 to {MAX_SERVICE_BYTES} bytes"),
        ));
    }
    if service.chars().any(char::is_control) {
        return Err(ClientError::new(ErrorCode::BadRequest, "`service` must not contain control characters"));
    }
    Ok(())
}

/// May `principal` send this request: a valid service it may request,
/// a body within the limit?
pub(crate) fn check_request(principal: &Principal, service: &str, body: &str, s: &Inner) -> Result<(), ClientError> {
    check_service(service)?;
    if !principal.may_request(service) {
        return Err(ClientError::new(
            ErrorCode::Forbidden,
            format!("your token does not grant requests of `{service}`"),
        ));
    }
    check_body(body, s)
}

/// A request or answer body within `rendezvous.max_body_bytes`.
pub(crate) fn check_body(body: &str, s: &Inner) -> Result<(), ClientError> {
    let max = s.config.rendezvous.max_body_bytes;
    if body.len() > max {
        return Err(ClientError::new(
            ErrorCode::LimitExceeded,
            format!("body of {} bytes exceeds rendezvous.max_body_bytes ({max})", body.len()),
        ));
    }
    Ok(())
}
