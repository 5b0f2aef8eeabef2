//! Messages the server sends to a client, and their encoding.

use crate::client::Ref;
use crate::codes::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

/// Session credentials handed out in `welcome`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// Session secret: needed, with the id, to resume.
    pub secret: String,
}

/// The limits in force for this connection, advertised in `welcome`.
/// (Read by clients with defaults for what an older server leaves out.)
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest accepted text frame, in bytes.
    pub max_frame_bytes: usize,
    /// Most subscriptions on one connection.
    pub max_subscriptions: usize,
    /// Most bindings in one subscription.
    pub max_bindings: usize,
    /// Most filters in one subscription.
    pub max_filters: usize,
    /// Most bytes of events queued for a client; past it, delivery continues
    /// from the log at the client's pace.
    pub max_outbound_bytes: usize,
    /// Milliseconds a client may leave queued bytes unread before it is
    /// closed as a slow consumer.
    pub slow_consumer_timeout_ms: u64,
    /// Most events replayed for one `subscribe` (`since`) request.
    pub max_replay: u64,
    /// Largest event payload, in bytes.
    pub max_payload_bytes: usize,
    /// Most connections of one user (0: no limit).
    pub max_connections_per_user: usize,
    /// Commands per second, with bursts of twice that (0: no limit).
    pub commands_per_second: u32,
    /// HTTP publish requests per second per user (0: unlimited).
    pub http_publishes_per_second: u32,
    /// Seconds a session outlives an abrupt disconnect.
    pub session_ttl_s: u64,
    /// Most sessions of one user, attached and detached (0: no limit).
    pub max_sessions_per_user: usize,
    /// Most subscriptions of one user across its sessions (0: no limit).
    pub max_subscriptions_per_user: usize,
    /// Most bindings of one user across its sessions (0: no limit).
    pub max_bindings_per_user: usize,
    /// Most bytes of binding and filter text on this node (0: no limit).
    pub max_subscription_bytes_per_node: usize,
    /// Chunks of history one connection reads at once.
    pub max_replays_per_connection: usize,
    /// Chunks of history one user reads at once.
    pub max_replays_per_user: usize,
    /// Chunks of history this node reads at once.
    pub max_replays_per_node: usize,
}

/// Server identification.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerInfo {
    /// Always `herald`.
    pub name: Cow<'static, str>,
    /// Server version.
    pub version: Cow<'static, str>,
}

/// `state` of a `status` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    /// The source delivers.
    Up,
    /// The source is unavailable; events from it are delayed, not lost.
    Down,
}

/// Every message the server sends except `event` (see [`EventBody`];
/// clients read events as [`ServerEvent`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`.
    Welcome {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// Session credentials.
        session: SessionInfo,
        /// Whether an existing session was resumed.
        resumed: bool,
        /// The server pings a connection silent for this long and closes one
        /// silent for three times as long.
        heartbeat_ms: u64,
        /// Limits in force.
        limits: Limits,
        /// Server identification.
        server: ServerInfo,
        /// The server batches messages in frames, one per line (the
        /// client asked with `hello.batch`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        batch: bool,
    },
    /// Answer to `subscribe`; also sent without `ref` for each subscription
    /// restored by a session resume.
    Subscribed {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// Subscription id.
        sub: String,
        /// The log head when the subscription went into place.
        head: u64,
        /// False when the requested history is no longer (or not) in the log.
        recovered: bool,
        /// `"from_now"` when an upstream binding was created for this
        /// subscription just now, so no history exists before it.
        #[serde(skip_serializing_if = "Option::is_none")]
        history: Option<Cow<'static, str>>,
    },
    /// Answer to `unsubscribe`.
    Unsubscribed {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// Subscription id.
        sub: String,
    },
    /// Answer to `pause`.
    Paused {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// Subscription id.
        sub: String,
    },
    /// Answer to `resume`.
    Resumed {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// Subscription id.
        sub: String,
    },
    /// Answer to `ping`.
    Pong {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
    },
    /// Answer to `publish`, once the event is durable.
    Published {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// The id the log assigned.
        id: u64,
    },
    /// Answer to `request`: the responder's answer.
    Response {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// The answer body, as the responder sent it.
        body: Box<RawValue>,
    },
    /// Answer to `serve`: requests for `service` now come to this connection.
    Serving {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// The service.
        service: String,
    },
    /// Answer to `unserve`.
    Unserved {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// The service.
        service: String,
    },
    /// A request for a service this connection serves; answer it with `answer`.
    Incoming {
        /// The request id, to put in the `answer`.
        request: String,
        /// The service.
        service: String,
        /// The request body, as the requester sent it.
        body: Box<RawValue>,
        /// Milliseconds left before the requester stops waiting.
        deadline_ms: u64,
    },
    /// Answer to `answer`: the requester has it.
    Answered {
        /// Request reference.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// The request id.
        request: String,
    },
    /// Health of an upstream source feeding the client's subscriptions.
    Status {
        /// The source (peer id).
        source: String,
        /// `up` or `down`.
        state: StatusState,
        /// Human-readable detail.
        detail: String,
        /// In a cluster, the node whose view this is (a peer runs on
        /// several nodes, or on one at a time); absent on one node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// Something went wrong.
    Error {
        /// The reference of the request that failed, if any.
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<Ref>,
        /// The subscription concerned, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        sub: Option<String>,
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable message.
        message: String,
    },
    /// The server is about to close the connection.
    Closing {
        /// Why.
        reason: String,
        /// How long to wait before reconnecting.
        retry_after_ms: u64,
    },
}

/// An `event` message as a client reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct ServerEvent {
    /// The subscription it is delivered for.
    pub sub: String,
    /// Event id: ascending within a subscription, never reused.
    pub id: u64,
    /// Exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// RFC 3339 time the log stored it.
    pub time: String,
    /// The JSON payload, as published.
    pub payload: Box<RawValue>,
    /// Optional headers.
    #[serde(default)]
    pub headers: Option<serde_json::Map<String, Value>>,
}

/// One message from the server, as a client reads it.
#[derive(Debug, Clone)]
pub enum ServerFrame {
    /// An `event`.
    Event(ServerEvent),
    /// Any other message.
    Message(ServerMessage),
}

/// Decode one server message (one line of a batched frame). Events, the
/// common case, are recognised by their leading `{"type":"event"` (the
/// server writes `type` first) and parsed once.
pub fn decode_server(text: &str) -> Result<ServerFrame, serde_json::Error> {
    use serde::de::Error as _;
    // serde cannot read a `RawValue` inside an internally tagged enum (it
    // buffers the fields first), so the two messages with a raw body are
    // read through a plain struct.
    #[derive(Deserialize)]
    struct Bodied {
        #[serde(rename = "ref", default)]
        reference: Option<Ref>,
        #[serde(default)]
        request: Option<String>,
        #[serde(default)]
        service: Option<String>,
        body: Box<RawValue>,
        #[serde(default)]
        deadline_ms: Option<u64>,
    }
    if text.starts_with(r#"{"type":"event""#) {
        serde_json::from_str(text).map(ServerFrame::Event)
    } else if text.starts_with(r#"{"type":"response""#) {
        let b: Bodied = serde_json::from_str(text)?;
        Ok(ServerFrame::Message(ServerMessage::Response { reference: b.reference, body: b.body }))
    } else if text.starts_with(r#"{"type":"incoming""#) {
        let b: Bodied = serde_json::from_str(text)?;
        let missing = |f: &str| serde_json::Error::custom(format!("incoming without `{f}`"));
        Ok(ServerFrame::Message(ServerMessage::Incoming {
            request: b.request.ok_or_else(|| missing("request"))?,
            service: b.service.ok_or_else(|| missing("service"))?,
            body: b.body,
            deadline_ms: b.deadline_ms.ok_or_else(|| missing("deadline_ms"))?,
        }))
    } else {
        serde_json::from_str(text).map(ServerFrame::Message)
    }
}

/// Encode a server message as one JSON text frame.
pub fn encode(msg: &ServerMessage) -> String {
    // Serialising these plain structs cannot fail: every map key is a string.
    serde_json::to_string(msg)
        .unwrap_or_else(|_| String::from(r#"{"type":"error","code":"internal","message":"encoding failed"}"#))
}

/// The subscription-independent part of an `event` frame.
///
/// Serialized once per event; the frame for a subscription is
/// [`event_frame_prefix`] followed by these bytes.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Event))]
pub struct EventBody<'a> {
    /// Event id: ascending in the log, never reused.
    pub id: u64,
    /// Exchange.
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// RFC 3339 time the log stored it, with microseconds, UTC.
    pub time: &'a str,
    /// JSON payload, as published.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub payload: &'a RawValue,
    /// Optional headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub headers: Option<&'a serde_json::Map<String, Value>>,
}

impl EventBody<'_> {
    /// Append the body as the tail of an object, `"id":..,...}` (the opening
    /// brace left out), to `out`: the same bytes as the serialized struct
    /// without its first byte, written in place with no intermediate string.
    pub fn write_tail(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing into a Vec cannot fail, nor can serializing strings or a
        // map with string keys.
        let _ = write!(out, "\"id\":{}", self.id);
        out.extend_from_slice(b",\"exchange\":");
        let _ = serde_json::to_writer(&mut *out, self.exchange);
        out.extend_from_slice(b",\"routing_key\":");
        let _ = serde_json::to_writer(&mut *out, self.routing_key);
        out.extend_from_slice(b",\"time\":");
        let _ = serde_json::to_writer(&mut *out, self.time);
        out.extend_from_slice(b",\"payload\":");
        out.extend_from_slice(self.payload.get().as_bytes());
        if let Some(headers) = self.headers {
            out.extend_from_slice(b",\"headers\":");
            let _ = serde_json::to_writer(&mut *out, headers);
        }
        out.push(b'}');
    }
}

/// `{"type":"event","sub":<sub>,` — to be followed by [`EventBody::encode_tail`].
pub fn event_frame_prefix(sub: &str) -> String {
    let quoted = serde_json::to_string(sub).unwrap_or_else(|_| String::from("\"\""));
    format!(r#"{{"type":"event","sub":{quoted},"#)
}

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn every_server_message_reads_back() {
        let body = RawValue::from_string(r#"{"a":[1,2]}"#.into()).expect("raw");
        let cases = [
            ServerMessage::Response { reference: Some(Ref::Num(3)), body: body.clone() },
            ServerMessage::Incoming { request: "r1".into(), service: "echo".into(), body, deadline_ms: 9 },
            ServerMessage::Published { reference: Some(Ref::Str("p".into())), id: 7 },
            ServerMessage::Error {
                reference: None,
                sub: Some("s".into()),
                code: ErrorCode::Forbidden,
                message: "no".into(),
            },
        ];
        for msg in cases {
            let text = encode(&msg);
            match decode_server(&text).expect("decodes") {
                ServerFrame::Message(back) => assert_eq!(encode(&back), text),
                ServerFrame::Event(_) => panic!("not an event: {text}"),
            }
        }
        let event = r#"{"type":"event","sub":"s","id":4,"exchange":"x","routing_key":"k","time":"t","payload":[1]}"#;
        match decode_server(event).expect("decodes") {
            ServerFrame::Event(e) => assert_eq!((e.id, e.payload.get()), (4, "[1]")),
            ServerFrame::Message(m) => panic!("an event, not {m:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frame_is_valid_json() {
        let payload = RawValue::from_string("{\"a\":1}".into()).expect("raw");
        let body = EventBody {
            id: 7,
            exchange: "x",
            routing_key: "a.b",
            time: "2026-01-01T00:00:00Z",
            payload: &payload,
            headers: None,
        };
        let mut frame = event_frame_prefix("s\"1").into_bytes();
        body.write_tail(&mut frame);
        let v: Value = serde_json::from_slice(&frame).expect("json");
        assert_eq!(v["type"], "event");
        assert_eq!(v["sub"], "s\"1");
        assert_eq!(v["id"], 7);
        assert_eq!(v["payload"]["a"], 1);
    }

    #[test]
    fn the_tail_is_the_serialized_body_without_its_brace() {
        let payload = RawValue::from_string("[1, \"\\u00e9\"]".into()).expect("raw");
        let mut headers = serde_json::Map::new();
        headers.insert("CC".into(), serde_json::json!(["a.\"b"]));
        for headers in [None, Some(&headers)] {
            let body = EventBody {
                id: 9_007_199_254_740_991,
                exchange: "x\u{1F600}\"",
                routing_key: "a\\b",
                time: "2026-01-01T00:00:00.000001Z",
                payload: &payload,
                headers,
            };
            let mut tail = Vec::new();
            body.write_tail(&mut tail);
            let whole = serde_json::to_vec(&body).expect("serialize");
            assert_eq!(tail, whole[1..], "{}", String::from_utf8_lossy(&tail));
        }
    }

    #[test]
    fn error_encoding() {
        let s = encode(&ServerMessage::Error {
            reference: Some(Ref::Num(3)),
            sub: None,
            code: ErrorCode::BadRequest,
            message: "x".into(),
        });
        assert_eq!(s, r#"{"type":"error","ref":3,"code":"bad_request","message":"x"}"#);
    }
}
