//! Admission of published events: the checks every publish path shares
//! (HTTP `POST /v1/publish` and the WebSocket `publish`), so that the same
//! event gets the same answer whichever way it comes.

use crate::config::LimitsConfig;
use crate::error::ClientError;
use herald_core::{EventError, NewEvent, Principal};
use herald_protocol::ErrorCode;

/// Check an event before it is appended: names, payload size and ACL
/// entries (`bad_request`, or `limit_exceeded` for the payload), then the
/// principal's publish grants (`forbidden`).
pub(crate) fn admit(principal: &Principal, event: &NewEvent, limits: &LimitsConfig) -> Result<(), ClientError> {
    if let Err(e) = event.validate(limits.max_payload_bytes) {
        let code = if matches!(e, EventError::PayloadTooLarge { .. }) {
            ErrorCode::LimitExceeded
        } else {
            ErrorCode::BadRequest
        };
        return Err(ClientError::new(code, e.to_string()));
    }
    if !principal.may_publish(&event.exchange, &event.routing_key) {
        let msg = format!("publishing to {} {} is outside your publish grants", event.exchange, event.routing_key);
        return Err(ClientError::new(ErrorCode::Forbidden, msg));
    }
    Ok(())
}
