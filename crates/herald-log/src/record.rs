//! Record encoding and decoding (format in the crate docs).

use herald_core::event::Origin;
use herald_core::{Event, NewEvent};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Magic at the start of every segment file.
pub(crate) const MAGIC: &[u8; 8] = b"HRLDSEG1";
/// Record header: length and CRC.
pub(crate) const HEADER: usize = 8;
/// Fixed part of the body before the exchange.
pub(crate) const FIXED: usize = 18;
/// Largest body accepted when scanning (anything larger is damage).
pub(crate) const MAX_BODY: usize = 64 << 20;

#[derive(Serialize)]
struct RestOut<'a> {
    routing_key: &'a str,
    payload: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    acl: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<&'a serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

#[derive(Deserialize)]
struct RestIn {
    routing_key: String,
    payload: Box<RawValue>,
    #[serde(default)]
    acl: Option<Vec<String>>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    origin: Option<Origin>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Append the body of a record to `buf` (without the length and CRC header).
fn encode_body(id: u64, time_us: u64, exchange: &str, rest: &RestOut<'_>, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&time_us.to_le_bytes());
    // Exchange names are validated to at most 255 bytes before they get here.
    buf.extend_from_slice(&(exchange.len() as u16).to_le_bytes());
    buf.extend_from_slice(exchange.as_bytes());
    // Writing JSON into a Vec cannot fail for these types.
    let _ = serde_json::to_writer(&mut *buf, rest);
}

/// The body of a record for an event not yet given an id (id 0): what a
/// clustered log stores as a message, the message's sequence being its id.
pub(crate) fn encode_message(time_us: u64, e: &NewEvent) -> Vec<u8> {
    let rest = RestOut {
        routing_key: &e.routing_key,
        payload: &e.payload,
        acl: e.acl.as_ref(),
        headers: e.headers.as_ref(),
        origin: e.origin.as_ref(),
        idempotency_key: e.idempotency_key.as_deref(),
    };
    let mut buf = Vec::with_capacity(FIXED + e.exchange.len() + e.payload.get().len() + 64);
    encode_body(0, time_us, &e.exchange, &rest, &mut buf);
    buf
}

/// Decode a message made by [`encode_message`], giving it its id.
pub(crate) fn decode_message(id: u64, body: &[u8]) -> Result<Event, String> {
    let mut event = decode(body)?;
    event.id = id;
    Ok(event)
}

/// Append the record for `event` to `buf`.
pub(crate) fn encode(event: &Event, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    let rest = RestOut {
        routing_key: &event.routing_key,
        payload: &event.payload,
        acl: event.acl.as_ref(),
        headers: event.headers.as_ref(),
        origin: event.origin.as_ref(),
        idempotency_key: event.idempotency_key.as_deref(),
    };
    encode_body(event.id, event.time_us, &event.exchange, &rest, buf);
    let body_len = (buf.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The indexable fields of a record body.
#[derive(Debug)]
pub(crate) struct Meta<'a> {
    pub(crate) id: u64,
    pub(crate) time_us: u64,
    pub(crate) exchange: &'a str,
}

/// Outcome of reading one record from a buffer.
pub(crate) enum Scan<'a> {
    /// A valid record of `len` bytes (header included).
    Ok { len: usize, meta: Meta<'a>, body: &'a [u8] },
    /// Not enough bytes for a whole record.
    Incomplete,
    /// The bytes are not a valid record.
    Invalid(String),
}

/// Read the record at the start of `buf`.
pub(crate) fn scan(buf: &[u8]) -> Scan<'_> {
    if buf.len() < HEADER {
        return Scan::Incomplete;
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if !(FIXED..=MAX_BODY).contains(&len) {
        return Scan::Invalid(format!("impossible record length {len}"));
    }
    if buf.len() < HEADER + len {
        return Scan::Incomplete;
    }
    let body = &buf[HEADER..HEADER + len];
    if crc32fast::hash(body) != crc {
        return Scan::Invalid("checksum mismatch".to_string());
    }
    match meta(body) {
        Some(meta) => Scan::Ok { len: HEADER + len, meta, body },
        None => Scan::Invalid("malformed record body".to_string()),
    }
}

fn meta(body: &[u8]) -> Option<Meta<'_>> {
    let id = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let time_us = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    let xlen = u16::from_le_bytes(body.get(16..18)?.try_into().ok()?) as usize;
    let exchange = std::str::from_utf8(body.get(FIXED..FIXED + xlen)?).ok()?;
    Some(Meta { id, time_us, exchange })
}

/// Whether a record body may carry an idempotency key: its bytes name the
/// field. A payload that mentions it too only costs a decode that finds
/// none; a record with a key always names it.
pub(crate) fn may_have_key(body: &[u8]) -> bool {
    // Built once: building a searcher costs more than searching a record.
    static FIELD: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"idempotency_key\""));
    FIELD.find(body).is_some()
}

/// Decode a verified body into an event.
pub(crate) fn decode(body: &[u8]) -> Result<Event, String> {
    let m = meta(body).ok_or("malformed record body")?;
    let rest: RestIn = serde_json::from_slice(&body[FIXED + m.exchange.len()..]).map_err(|e| e.to_string())?;
    Ok(Event::commit(
        m.id,
        m.time_us,
        NewEvent {
            exchange: m.exchange.to_string(),
            routing_key: rest.routing_key,
            payload: rest.payload,
            acl: rest.acl,
            headers: rest.headers,
            origin: rest.origin,
            idempotency_key: rest.idempotency_key,
        },
    ))
}

#[cfg(test)]
mod tests {
    use herald_core::{Event, NewEvent};

    #[test]
    fn records_round_trip_and_damage_is_reported_not_panicked_on() {
        let new: NewEvent = serde_json::from_value(serde_json::json!({
            "exchange": "x", "routing_key": "a.b", "payload": {"n": 1}, "idempotency_key": "k-1"
        }))
        .expect("event");
        let bytes = crate::encode_record(&Event::commit(7, 1_700_000_000_000_000, new));
        let (len, e) = crate::decode_record(&bytes).expect("valid").expect("whole");
        assert_eq!((len, e.id, e.idempotency_key.as_deref()), (bytes.len(), 7, Some("k-1")));
        assert!(matches!(crate::decode_record(&bytes[..bytes.len() - 1]), Ok(None)), "torn");
        let mut bad = bytes.clone();
        bad[20] ^= 0xff;
        assert!(crate::decode_record(&bad).is_err(), "checksum");
        // The fuzz seeds are written from the documented format by hand: they decode.
        let seed: &[u8] = include_bytes!("../../../fuzz/seeds/log_record/two-records");
        let (first, e) = crate::decode_record(seed).expect("seed").expect("whole");
        assert_eq!((e.id, e.exchange.as_str(), e.origin.map(|o| o.stream)), (8, "orders", Some(3)));
        let (_, e) = crate::decode_record(&seed[first..]).expect("second").expect("whole");
        assert_eq!(e.idempotency_key.as_deref(), Some("k-1"));
    }
}
