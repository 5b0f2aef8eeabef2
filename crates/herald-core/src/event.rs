//! Events: what publishers submit ([`NewEvent`]) and what the log stores and
//! delivers ([`Event`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest exchange name and routing key, in bytes (AMQP's short-string limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Where an event came from: the peer (connector) id, the stream (connection)
/// within it, and the sequence number within that stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The peer (connector) id, e.g. `http` or `ws`.
    pub peer: String,
    /// The stream id within the peer (a connection id; 0 for stateless requests).
    pub stream: u64,
    /// Sequence number within the stream.
    pub seq: u64,
}

/// An event as submitted by a publisher, before the log assigns its id and time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewEvent {
    /// Exchange name (1 to 255 bytes).
    pub exchange: String,
    /// Routing key (up to 255 bytes; dot-separated words).
    pub routing_key: String,
    /// JSON payload, kept as its original text.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub payload: Box<RawValue>,
    /// Principals allowed to see it (`user:NAME`, `group:NAME`); absent means
    /// any client whose grants cover it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    /// Optional headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub headers: Option<serde_json::Map<String, Value>>,
    /// Origin, filled in by the server, never trusted from a client.
    #[serde(default, skip)]
    #[cfg_attr(feature = "openapi", schema(ignore))]
    pub origin: Option<Origin>,
    /// Publisher-chosen key (1 to 128 bytes): a second publish with the same
    /// key and exchange within the idempotency window is not stored again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Why a [`NewEvent`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The exchange name is empty.
    #[error("exchange must not be empty")]
    EmptyExchange,
    /// A name is longer than 255 bytes.
    #[error("{0} is longer than 255 bytes")]
    NameTooLong(&'static str),
    /// The payload is larger than allowed.
    #[error("payload is {size} bytes, more than the limit of {limit}")]
    PayloadTooLarge {
        /// Actual size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// An ACL entry is not `user:<name>` or `group:<name>`.
    #[error("acl entry `{0}` must be `user:<name>` or `group:<name>`")]
    BadAcl(String),
    /// The idempotency key is empty or longer than 128 bytes.
    #[error("idempotency_key must be 1 to 128 bytes")]
    BadIdempotencyKey,
}

impl NewEvent {
    /// Check names, sizes and ACL entries.
    pub fn validate(&self, max_payload_bytes: usize) -> Result<(), EventError> {
        if self.exchange.is_empty() {
            return Err(EventError::EmptyExchange);
        }
        if self.exchange.len() > MAX_NAME_BYTES {
            return Err(EventError::NameTooLong("exchange"));
        }
        if self.routing_key.len() > MAX_NAME_BYTES {
            return Err(EventError::NameTooLong("routing_key"));
        }
        if self.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > crate::idempotency::MAX_KEY_BYTES) {
            return Err(EventError::BadIdempotencyKey);
        }
        let size = self.payload.get().len();
        if size > max_payload_bytes {
            return Err(EventError::PayloadTooLarge { size, limit: max_payload_bytes });
        }
        if let Some(acl) = &self.acl {
            for entry in acl {
                let ok = entry
                    .split_once(':')
                    .is_some_and(|(kind, name)| (kind == "user" || kind == "group") && !name.is_empty());
                if !ok {
                    return Err(EventError::BadAcl(entry.chars().take(64).collect()));
                }
            }
        }
        Ok(())
    }
}

/// A committed event: durable in the log, with its id and time.
#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing id assigned by the log.
    pub id: u64,
    /// Commit time, microseconds since the Unix epoch (never decreases with id).
    pub time_us: u64,
    /// Exchange name.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// JSON payload text.
    pub payload: Box<RawValue>,
    /// ACL, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl: Option<Vec<String>>,
    /// Headers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Map<String, Value>>,
    /// Origin, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// The publisher's idempotency key, if any (kept so the window can be
    /// rebuilt from the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The payload parsed, computed on first use by a payload filter.
    #[serde(skip)]
    parsed: OnceLock<Value>,
    /// The subscription-independent tail of the `event` frame (UTF-8 JSON
    /// text), computed once.
    #[serde(skip)]
    frame_tail: OnceLock<Box<[u8]>>,
}

impl Event {
    /// Build a committed event from a submitted one.
    pub fn commit(id: u64, time_us: u64, e: NewEvent) -> Event {
        Event {
            id,
            time_us,
            exchange: e.exchange,
            routing_key: e.routing_key,
            payload: e.payload,
            acl: e.acl,
            headers: e.headers,
            origin: e.origin,
            idempotency_key: e.idempotency_key,
            parsed: OnceLock::new(),
            frame_tail: OnceLock::new(),
        }
    }

    /// The routing key and any CC routing keys (AMQP's `CC` header, a list
    /// of strings): the event matches a binding if any of them does, as in
    /// RabbitMQ.
    pub fn routing_keys(&self) -> impl Iterator<Item = &str> {
        let cc = self.headers.as_ref().and_then(|h| h.get("CC")).and_then(Value::as_array);
        std::iter::once(self.routing_key.as_str()).chain(cc.into_iter().flatten().filter_map(Value::as_str))
    }

    /// The payload as a parsed JSON value (parsed once, then cached).
    pub fn payload_value(&self) -> &Value {
        self.parsed.get_or_init(|| serde_json::from_str(self.payload.get()).unwrap_or(Value::Null))
    }

    /// The time as RFC 3339 with microseconds, UTC.
    pub fn time_rfc3339(&self) -> String {
        format_time_us(self.time_us)
    }

    /// The `event` frame tail shared by every subscription (see
    /// [`herald_protocol::EventBody`]), encoded on first use. UTF-8 JSON
    /// text, kept as bytes: frames are built from bytes and written as they
    /// are, so nothing checks them again.
    pub fn frame_tail(&self) -> &[u8] {
        self.frame_tail.get_or_init(|| {
            let mut time_buf = [0u8; RFC3339_MICROS_LEN];
            let formatted;
            let time = match rfc3339_micros(self.time_us, &mut time_buf) {
                Some(t) => t,
                None => {
                    formatted = self.time_rfc3339();
                    &formatted
                }
            };
            let mut out = Vec::with_capacity(
                self.payload.get().len() + self.exchange.len() + self.routing_key.len() + time.len() + 64,
            );
            herald_protocol::EventBody {
                id: self.id,
                exchange: &self.exchange,
                routing_key: &self.routing_key,
                time,
                payload: &self.payload,
                headers: self.headers.as_ref(),
            }
            .write_tail(&mut out);
            out.into_boxed_slice()
        })
    }
}

/// Microseconds since the epoch, now.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Format microseconds since the epoch as RFC 3339 UTC
/// (`2026-12-01T22:23:00.821088Z`).
pub fn format_time_us(us: u64) -> String {
    let mut buf = [0u8; RFC3339_MICROS_LEN];
    match rfc3339_micros(us, &mut buf) {
        Some(s) => s.to_string(),
        None => humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string(),
    }
}

/// Length of `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const RFC3339_MICROS_LEN: usize = 27;

/// Last second of year 9999: later times do not fit four year digits.
const MAX_FOUR_DIGIT_SECS: u64 = 253_402_300_799;

/// `us` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` in `buf`, or `None` after year
/// 9999. Every event frame carries its time, and this runs once per event
/// in a replay: by hand it costs a few divisions, where the `Display`
/// route through `humantime` was a third of a replaying worker's time.
/// The same text as `humantime::format_rfc3339_micros` (tested).
fn rfc3339_micros(us: u64, buf: &mut [u8; RFC3339_MICROS_LEN]) -> Option<&str> {
    let secs = us / 1_000_000;
    if secs > MAX_FOUR_DIGIT_SECS {
        return None;
    }
    let micros = us % 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm,
    // eras of 400 years from 0000-03-01; all quantities non-negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, rem / 3_600);
    put(14, 2, rem / 60 % 60);
    put(17, 2, rem % 60);
    put(20, 6, micros);
    for (at, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z')] {
        buf[at] = c;
    }
    std::str::from_utf8(buf).ok()
}

/// Parse an RFC 3339 timestamp into microseconds since the epoch.
pub fn parse_time_us(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_roundtrip() {
        let us = 1_790_000_000_123_456;
        let s = format_time_us(us);
        assert!(s.ends_with('Z'));
        assert_eq!(parse_time_us(&s), Some(us));
        assert_eq!(parse_time_us("not a time"), None);
    }

    proptest::proptest! {
        /// The hand-written formatter writes what humantime does, from the
        /// epoch to the end of year 9999, and gives way after it.
        #[test]
        fn times_format_as_humantime_does(us in 0u64..=(MAX_FOUR_DIGIT_SECS + 1) * 1_000_000 - 1) {
            let expected = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string();
            proptest::prop_assert_eq!(format_time_us(us), expected);
        }
    }

    #[test]
    fn time_formatting_edges() {
        for us in [0, 951_782_400_000_000, 4_107_542_400_000_000, 1_790_000_000_123_456, 253_402_300_799_999_999] {
            let expected = humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string();
            assert_eq!(format_time_us(us), expected, "{us}");
        }
        assert_eq!(format_time_us(0), "1970-01-01T00:00:00.000000Z");
        // Past year 9999: humantime's text, whatever it is, and no panic.
        let far = (MAX_FOUR_DIGIT_SECS + 1) * 1_000_000;
        let mut buf = [0u8; RFC3339_MICROS_LEN];
        assert!(rfc3339_micros(far, &mut buf).is_none());
    }

    #[test]
    fn validation() {
        let mut e = NewEvent {
            exchange: "x".into(),
            routing_key: "a.b".into(),
            payload: RawValue::from_string("1".into()).expect("raw"),
            acl: Some(vec!["user:a".into(), "group:g".into()]),
            headers: None,
            origin: None,
            idempotency_key: None,
        };
        assert_eq!(e.validate(10), Ok(()));
        e.acl = Some(vec!["alice".into()]);
        assert!(matches!(e.validate(10), Err(EventError::BadAcl(_))));
        e.acl = None;
        e.exchange = String::new();
        assert_eq!(e.validate(10), Err(EventError::EmptyExchange));
    }
}
