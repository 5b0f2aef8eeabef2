//! Decoding client frames.
//!
//! Decoding is two-step so that errors are precise: first the frame must be
//! a JSON object with a string `type`; then the fields of that type are
//! checked. The `ref` is recovered whenever the frame is an object, so that
//! even a rejected request can be answered against its reference.

use crate::client::{ClientMessage, Ref};
use crate::codes::ErrorCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The largest integer accepted in numeric fields (2^53 - 1), so that every id
/// round-trips through JavaScript numbers without loss.
pub const MAX_NUMBER: u64 = (1 << 53) - 1;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// Always `bad_request` for a frame that is not a valid message.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
    /// The frame's `ref`, when it could be read.
    pub reference: Option<Ref>,
}

impl DecodeError {
    fn bad(message: impl Into<String>, reference: Option<Ref>) -> Self {
        DecodeError { code: ErrorCode::BadRequest, message: message.into(), reference }
    }
}

/// Decode one text frame from a client.
pub fn decode_client(text: &str) -> Result<ClientMessage, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::bad(format!("malformed JSON: {e}"), None))?;
    let Value::Object(map) = value else {
        return Err(DecodeError::bad("a message must be a JSON object", None));
    };
    let reference = match map.get("ref") {
        None | Some(Value::Null) => None,
        Some(v) => match serde_json::from_value::<Ref>(v.clone()) {
            Ok(r) => Some(r),
            Err(_) => return Err(DecodeError::bad("`ref` must be a string or an integer", None)),
        },
    };
    let kind = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(DecodeError::bad("`type` must be a string", reference)),
        None => return Err(DecodeError::bad("missing field `type`", reference)),
    };
    let value = Value::Object(map);
    let r = reference.clone();
    let msg = match kind.as_str() {
        "hello" => ClientMessage::Hello(fields(value, &kind, r)?),
        "subscribe" => ClientMessage::Subscribe(fields(value, &kind, r)?),
        "unsubscribe" => ClientMessage::Unsubscribe(fields(value, &kind, r)?),
        "pause" => ClientMessage::Pause(fields(value, &kind, r)?),
        "resume" => ClientMessage::Resume(fields(value, &kind, r)?),
        "ack" => ClientMessage::Ack(fields(value, &kind, r)?),
        "ping" => ClientMessage::Ping(fields(value, &kind, r)?),
        "publish" => ClientMessage::Publish(fields(value, &kind, r)?),
        "request" => ClientMessage::Request(fields(value, &kind, r)?),
        "serve" => ClientMessage::Serve(fields(value, &kind, r)?),
        "unserve" => ClientMessage::Unserve(fields(value, &kind, r)?),
        "answer" => ClientMessage::Answer(fields(value, &kind, r)?),
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(DecodeError::bad(format!("unknown message type `{shown}`"), reference));
        }
    };
    check_numbers(&msg).map_err(|m| DecodeError::bad(m, msg.reference().cloned()))?;
    Ok(msg)
}

fn fields<T: DeserializeOwned>(value: Value, kind: &str, reference: Option<Ref>) -> Result<T, DecodeError> {
    serde_json::from_value(value).map_err(|e| DecodeError::bad(format!("invalid `{kind}`: {e}"), reference))
}

fn check_numbers(msg: &ClientMessage) -> Result<(), String> {
    use crate::client::Since;
    let too_big = |n: u64, what: &str| {
        if n > MAX_NUMBER {
            Err(format!("`{what}` is larger than 2^53-1"))
        } else {
            Ok(())
        }
    };
    match msg {
        ClientMessage::Ack(a) => too_big(a.id, "id"),
        ClientMessage::Request(r) => r.timeout_ms.map_or(Ok(()), |t| too_big(t, "timeout_ms")),
        ClientMessage::Subscribe(s) => match &s.since {
            Some(Since::Id { id }) => too_big(*id, "since.id"),
            Some(Since::Last { last }) => too_big(*last, "since.last"),
            _ => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Since;

    #[test]
    fn decodes_subscribe_with_since() {
        let m = decode_client(
            r##"{"type":"subscribe","ref":1,"sub":"s","bindings":[{"exchange":"e","pattern":"#"}],"since":{"last":5}}"##,
        )
        .expect("valid");
        match m {
            ClientMessage::Subscribe(s) => {
                assert_eq!(s.since, Some(Since::Last { last: 5 }));
                assert_eq!(s.reference, Some(Ref::Num(1)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn keeps_ref_on_bad_fields() {
        let e = decode_client(r#"{"type":"subscribe","ref":"r7"}"#).expect_err("missing fields");
        assert_eq!(e.reference, Some(Ref::Str("r7".into())));
        assert!(e.message.contains("sub"), "{}", e.message);
    }

    #[test]
    fn decodes_rendezvous_messages() {
        match decode_client(r#"{"type":"request","ref":2,"service":"s","body":{"offer":"x"},"timeout_ms":500}"#) {
            Ok(ClientMessage::Request(r)) => {
                assert_eq!(r.service, "s");
                assert_eq!(r.body.get(), r#"{"offer":"x"}"#);
                assert_eq!(r.timeout_ms, Some(500));
            }
            other => panic!("unexpected {other:?}"),
        }
        match decode_client(r#"{"type":"serve","service":"s","concurrency":4}"#) {
            Ok(ClientMessage::Serve(s)) => assert_eq!(s.concurrency, Some(4)),
            other => panic!("unexpected {other:?}"),
        }
        match decode_client(r#"{"type":"answer","ref":"a","request":"r1","body":"text"}"#) {
            Ok(ClientMessage::Answer(a)) => assert_eq!((a.request.as_str(), a.body.get()), ("r1", r#""text""#)),
            other => panic!("unexpected {other:?}"),
        }
        assert!(decode_client(r#"{"type":"request","service":"s"}"#).is_err(), "body is required");
        assert!(decode_client(r#"{"type":"serve","service":"s","concurrency":-1}"#).is_err());
        let e = decode_client(r#"{"type":"answer","ref":9,"body":1}"#).expect_err("no request id");
        assert_eq!(e.reference, Some(Ref::Num(9)));
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_client("{").is_err());
        assert!(decode_client("[]").is_err());
        assert!(decode_client(r#"{"type":7}"#).is_err());
        let e = decode_client(r#"{"type":"nope"}"#).expect_err("unknown");
        assert!(e.message.contains("unknown message type"));
        assert!(decode_client(r#"{"type":"ack","sub":"s","id":-1}"#).is_err());
        assert!(decode_client(r#"{"type":"ack","sub":"s","id":9007199254740992}"#).is_err());
        assert!(decode_client(r#"{"type":"subscribe","sub":"s","bindings":[],"since":{"foo":1}}"#).is_err());
    }
}
