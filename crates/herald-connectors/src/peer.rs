//! `[[peer]]` configuration shared by every connector, and per-peer counters.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How message bodies become event payloads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// The body is JSON and becomes the payload as is.
    #[default]
    Json,
    /// The body becomes a JSON string (UTF-8, invalid bytes replaced).
    String,
    /// The body becomes a base64 JSON string.
    Base64,
}

/// Processing applied to each incoming body before the codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Interceptor {
    /// Bodies larger than `max_bytes` are rejected (counted as `err`).
    SizeGuard {
        /// Largest body accepted.
        max_bytes: usize,
    },
    /// One event per non-empty line of the body.
    LineSplitter,
}

/// One `[[peer]]` table: `id`, `type`, `codec`, `interceptors` and the
/// connector's own `[peer.config]`, parsed once into a [`PeerKind`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPeer", into = "RawPeer")]
pub struct PeerConfig {
    /// Unique peer id; events carry it as their origin.
    pub id: String,
    /// Body codec.
    pub codec: Codec,
    /// Interceptors, applied in order.
    pub interceptors: Vec<Interceptor>,
    /// The connector and its settings.
    pub kind: PeerKind,
}

/// The connector of a peer, with its `[peer.config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerKind {
    /// `type = "amqp"`: the RabbitMQ source.
    Amqp(crate::amqp::AmqpConfig),
    /// `type = "postgres"`: the PostgreSQL source.
    Postgres(crate::postgres::PostgresConfig),
    /// `type = "sqs"`: the SQS rendezvous peer.
    Sqs(crate::sqs::SqsConfig),
}

impl PeerKind {
    /// The `type` name.
    pub fn name(&self) -> &'static str {
        match self {
            PeerKind::Amqp(_) => "amqp",
            PeerKind::Postgres(_) => "postgres",
            PeerKind::Sqs(_) => "sqs",
        }
    }

    /// Problems with the connector's settings (no I/O), each naming its field.
    pub fn validate(&self) -> Vec<String> {
        match self {
            PeerKind::Amqp(c) => c.validate(),
            PeerKind::Postgres(c) => c.validate(),
            PeerKind::Sqs(c) => c.validate(),
        }
    }
}

/// `[[peer]]` as written, before its `config` is parsed for its `type`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    /// Unique peer id; events carry it as their origin.
    id: String,
    /// The connector: `amqp`, `postgres` or `sqs`.
    #[serde(rename = "type")]
    kind: String,
    /// How message bodies become event payloads: `json`, `string` or `base64`.
    #[serde(default)]
    codec: Codec,
    /// Processing applied to each body before the codec, in order.
    #[serde(default)]
    interceptors: Vec<Interceptor>,
    /// The connector's own settings (`[peer.config]`; see docs/connectors.md).
    #[serde(default)]
    config: toml_like::Table,
}

impl TryFrom<RawPeer> for PeerConfig {
    type Error = String;

    fn try_from(raw: RawPeer) -> Result<Self, String> {
        fn parse<T: serde::de::DeserializeOwned>(id: &str, config: toml_like::Table) -> Result<T, String> {
            serde_json::from_value(serde_json::Value::Object(config)).map_err(|e| format!("peer {id}: config: {e}"))
        }
        let kind = match raw.kind.as_str() {
            "amqp" => PeerKind::Amqp(parse(&raw.id, raw.config)?),
            "postgres" => PeerKind::Postgres(parse(&raw.id, raw.config)?),
            "sqs" => PeerKind::Sqs(parse(&raw.id, raw.config)?),
            other => return Err(format!("peer {}: unknown type `{other}` (known: amqp, postgres, sqs)", raw.id)),
        };
        Ok(PeerConfig { id: raw.id, codec: raw.codec, interceptors: raw.interceptors, kind })
    }
}

impl From<PeerConfig> for RawPeer {
    fn from(p: PeerConfig) -> RawPeer {
        let config = match &p.kind {
            PeerKind::Amqp(c) => serde_json::to_value(c),
            PeerKind::Postgres(c) => serde_json::to_value(c),
            PeerKind::Sqs(c) => serde_json::to_value(c),
        };
        let config = match config {
            // Unset options are left out, as they would be written (TOML has no null).
            Ok(serde_json::Value::Object(mut m)) => {
                m.retain(|_, v| !v.is_null());
                m
            }
            _ => toml_like::Table::new(),
        };
        RawPeer { id: p.id, kind: p.kind.name().to_string(), codec: p.codec, interceptors: p.interceptors, config }
    }
}

// A `[[peer]]` table is described by the form it is written in.
impl schemars::JsonSchema for PeerConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "PeerConfig".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RawPeer::json_schema(generator)
    }
}

/// The connector-specific table, kept as JSON values until its `type` says
/// which settings struct it is.
pub mod toml_like {
    /// A table of settings.
    pub type Table = serde_json::Map<String, serde_json::Value>;
}

/// Per-peer counters, as in tremor: `in` (upstream messages received),
/// `out` (events appended), `err` (messages rejected), `send`/`recv`
/// (upstream protocol operations).
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Messages received from upstream.
    pub r#in: AtomicU64,
    /// Events appended to the log.
    pub out: AtomicU64,
    /// Messages rejected (codec, interceptor, log failure).
    pub err: AtomicU64,
    /// Upstream operations sent (acks, declarations).
    pub send: AtomicU64,
    /// Upstream deliveries received.
    pub recv: AtomicU64,
    /// Whether the upstream is connected.
    pub up: AtomicBool,
}

impl PeerStats {
    /// Add to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Apply interceptors and the codec to one body: zero or more payloads
/// (JSON text), or why the body was rejected.
pub fn decode_body(codec: Codec, interceptors: &[Interceptor], body: &[u8]) -> Result<Vec<String>, String> {
    let mut parts: Vec<&[u8]> = vec![body];
    for i in interceptors {
        match i {
            Interceptor::SizeGuard { max_bytes } => {
                if body.len() > *max_bytes {
                    return Err(format!("body of {} bytes exceeds the size guard of {max_bytes}", body.len()));
                }
            }
            Interceptor::LineSplitter => {
                parts = parts
                    .into_iter()
                    .flat_map(|p| p.split(|b| *b == b'\n'))
                    .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                    .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                    .collect();
            }
        }
    }
    parts
        .into_iter()
        .map(|p| match codec {
            Codec::Json => {
                let text = std::str::from_utf8(p).map_err(|_| "body is not UTF-8 JSON".to_string())?;
                serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| format!("body is not JSON: {e}"))?;
                Ok(text.to_string())
            }
            Codec::String => Ok(serde_json::Value::String(String::from_utf8_lossy(p).into_owned()).to_string()),
            Codec::Base64 => Ok(serde_json::Value::String(base64(p)).to_string()),
        })
        .collect()
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_and_interceptors() {
        assert_eq!(decode_body(Codec::Json, &[], br#"{"a":1}"#), Ok(vec![r#"{"a":1}"#.to_string()]));
        assert!(decode_body(Codec::Json, &[], b"nope").is_err());
        assert_eq!(decode_body(Codec::String, &[], b"hi\""), Ok(vec![r#""hi\"""#.to_string()]));
        assert_eq!(decode_body(Codec::Base64, &[], b"hello"), Ok(vec![r#""aGVsbG8=""#.to_string()]));
        let split = [Interceptor::LineSplitter];
        assert_eq!(decode_body(Codec::Json, &split, b"1\n\n2\r\n"), Ok(vec!["1".to_string(), "2".to_string()]));
        let guard = [Interceptor::SizeGuard { max_bytes: 3 }];
        assert!(decode_body(Codec::Json, &guard, b"1234").is_err());
    }
}
