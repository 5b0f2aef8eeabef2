//! Messages a client sends to the server.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// A client-chosen request reference, echoed in the reply: a string or an integer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    /// An integer reference.
    Num(i64),
    /// A string reference.
    Str(String),
}

/// One `{exchange, pattern}` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Binding {
    /// The exact exchange name.
    pub exchange: String,
    /// An AMQP topic pattern: `*` is one word, `#` is zero or more words.
    pub pattern: String,
}

/// Credentials of an existing session, used to resume it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCredentials {
    /// The session id from `welcome`.
    pub id: String,
    /// The session secret from `welcome`.
    pub secret: String,
}

/// `hello`: opens the conversation, optionally resuming a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Optional request reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// A bearer token (JWT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A session to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionCredentials>,
    /// Free-form client identification (name and version), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Value>,
    /// The client reads several messages from one text frame, one per line
    /// (`\n`-separated JSON objects): the server may then batch what it has
    /// to send. Without it, one message per frame.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
}

/// The starting point of a subscription. Exactly one field is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "SinceFields")]
pub enum Since {
    /// Every matching event with an id greater than `id`.
    Id {
        /// The last id the client already has.
        id: u64,
    },
    /// The `last` most recent matching events.
    Last {
        /// How many events.
        last: u64,
    },
    /// Events at or after `time` (RFC 3339).
    Time {
        /// An RFC 3339 timestamp.
        time: String,
    },
}

/// `subscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Request reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The client-chosen subscription id, unique on the connection.
    pub sub: String,
    /// One or more bindings.
    pub bindings: Vec<Binding>,
    /// Filters `[field, op, value]`, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Value>,
    /// Starting point; absent means live only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Since>,
}

/// A message that names only a subscription: `unsubscribe`, `pause`, `resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubOnly {
    /// Request reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The subscription id.
    pub sub: String,
}

/// `ack`: everything up to and including `id` on `sub` is processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The subscription id.
    pub sub: String,
    /// The highest id processed.
    pub id: u64,
}

/// `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Request reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
}

/// `publish`: one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// Request reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// Exchange name.
    pub exchange: String,
    /// Routing key (dot-separated words, may be empty).
    pub routing_key: String,
    /// Any JSON value.
    pub payload: Box<RawValue>,
    /// Principals allowed to see the event (`user:<name>`, `group:<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    /// Optional string headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Map<String, Value>>,
    /// 1 to 128 bytes: a repeat with the same key and exchange within the
    /// idempotency window is answered with the first id and not stored again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `request`: ask one responder of `service` and wait for its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Request reference; the `response` echoes it.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The rendezvous service.
    pub service: String,
    /// Opaque body (any JSON, often a string), handed to the responder as is.
    pub body: Box<RawValue>,
    /// Wait at most this long for the answer (capped by the server's setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `serve`: take requests for `service` on this connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serve {
    /// Request reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The rendezvous service.
    pub service: String,
    /// How many requests this responder handles at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// `unserve`: stop taking requests for `service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unserve {
    /// Request reference.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The rendezvous service.
    pub service: String,
}

/// `answer`: the responder's answer to an `incoming` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    /// Request reference (of this answer message).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Ref>,
    /// The `request` id from `incoming`.
    pub request: String,
    /// Opaque body, handed to the requester as is.
    pub body: Box<RawValue>,
}

/// Every message a client may send (encoded by [`encode_client`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// `hello`
    Hello(Hello),
    /// `subscribe`
    Subscribe(Subscribe),
    /// `unsubscribe`
    Unsubscribe(SubOnly),
    /// `pause`
    Pause(SubOnly),
    /// `resume`
    Resume(SubOnly),
    /// `ack`
    Ack(Ack),
    /// `ping`
    Ping(Ping),
    /// `publish`
    Publish(Publish),
    /// `request` (rendezvous requester)
    Request(Request),
    /// `serve` (rendezvous responder)
    Serve(Serve),
    /// `unserve`
    Unserve(Unserve),
    /// `answer`
    Answer(Answer),
}

impl ClientMessage {
    /// The `ref` of the message, if it carries one.
    pub fn reference(&self) -> Option<&Ref> {
        match self {
            ClientMessage::Hello(m) => m.reference.as_ref(),
            ClientMessage::Subscribe(m) => m.reference.as_ref(),
            ClientMessage::Unsubscribe(m) | ClientMessage::Pause(m) | ClientMessage::Resume(m) => m.reference.as_ref(),
            ClientMessage::Ack(_) => None,
            ClientMessage::Ping(m) => m.reference.as_ref(),
            ClientMessage::Publish(m) => m.reference.as_ref(),
            ClientMessage::Request(m) => m.reference.as_ref(),
            ClientMessage::Serve(m) => m.reference.as_ref(),
            ClientMessage::Unserve(m) => m.reference.as_ref(),
            ClientMessage::Answer(m) => m.reference.as_ref(),
        }
    }
}

/// Encode a client message as one JSON text frame.
pub fn encode_client(msg: &ClientMessage) -> String {
    // Plain structs with string keys: serializing cannot fail.
    serde_json::to_string(msg).unwrap_or_default()
}

/// The wire shape of `since`, checked to carry exactly one field.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinceFields {
    id: Option<u64>,
    last: Option<u64>,
    time: Option<String>,
}

impl TryFrom<SinceFields> for Since {
    type Error = String;

    fn try_from(f: SinceFields) -> Result<Self, Self::Error> {
        match (f.id, f.last, f.time) {
            (Some(id), None, None) => Ok(Since::Id { id }),
            (None, Some(last), None) => Ok(Since::Last { last }),
            (None, None, Some(time)) => Ok(Since::Time { time }),
            _ => Err("`since` takes exactly one of `id`, `last` or `time`".to_string()),
        }
    }
}
