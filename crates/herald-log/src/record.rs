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

/// The byte after the exchange that marks a *compact* body: routing key and
/// payload length-prefixed, then the origin, then the rare fields as JSON.
/// A JSON body (the first encoding, still read, and still what a clustered
/// log stores) starts with `{` there instead.
pub(crate) const COMPACT: u8 = 0x01;

/// The fields of a JSON body. (Flattening is fine when serializing; it is
/// reading a flattened struct beside a `RawValue` that serde cannot do.)
#[derive(Serialize)]
struct RestOut<'a> {
    routing_key: &'a str,
    payload: &'a RawValue,
    #[serde(flatten)]
    rare: RareOut<'a>,
}

/// The fields most events lack: JSON in both encodings, so a compact body
/// with none of them ends after its origin, and the idempotency-key scan
/// ([`may_have_key`]) finds the key's field name in either. (The origin is
/// here only for a JSON body, or a peer name a compact one cannot hold.)
#[derive(Serialize)]
struct RareOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    acl: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<&'a serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<&'a str>,
}

impl RareOut<'_> {
    /// Whether there is none: a compact body then ends after its origin.
    fn is_empty(&self) -> bool {
        self.acl.is_none() && self.headers.is_none() && self.origin.is_none() && self.idempotency_key.is_none()
    }
}

/// A JSON body, decoded.
#[derive(Deserialize)]
struct RestIn {
    routing_key: String,
    payload: Box<RawValue>,
    // Not a flattened `RareIn`: serde cannot flatten next to a `RawValue`.
    #[serde(default)]
    acl: Option<Vec<String>>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    origin: Option<Origin>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// The rare fields of a compact body, decoded (and, moved in, a JSON body's).
#[derive(Deserialize, Default)]
struct RareIn {
    #[serde(default)]
    acl: Option<Vec<String>>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    origin: Option<Origin>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// Append the fixed part of a body: id, time and exchange.
fn encode_fixed(id: u64, time_us: u64, exchange: &str, buf: &mut Vec<u8>) {
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&time_us.to_le_bytes());
    // Exchange names are validated to at most 255 bytes before they get here.
    buf.extend_from_slice(&(exchange.len() as u16).to_le_bytes());
    buf.extend_from_slice(exchange.as_bytes());
}

/// The body of a record for an event not yet given an id (id 0): what a
/// clustered log stores as a message, the message's sequence being its id.
///
/// Messages keep the JSON body: nodes of a cluster read each other's
/// messages, and one not yet upgraded could not read a compact body.
#[cfg(feature = "nats")]
pub(crate) fn encode_message(time_us: u64, e: &NewEvent) -> Vec<u8> {
    let rare = RareOut {
        acl: e.acl.as_ref(),
        headers: e.headers.as_ref(),
        origin: e.origin.as_ref(),
        idempotency_key: e.idempotency_key.as_deref(),
    };
    let rest = RestOut { routing_key: &e.routing_key, payload: &e.payload, rare };
    let mut buf = Vec::with_capacity(FIXED + e.exchange.len() + e.payload.get().len() + 64);
    encode_fixed(0, time_us, &e.exchange, &mut buf);
    // Writing JSON into a Vec cannot fail for these types.
    let _ = serde_json::to_writer(&mut buf, &rest);
    buf
}

/// Decode a message made by [`encode_message`], giving it its id.
#[cfg(feature = "nats")]
pub(crate) fn decode_message(id: u64, body: &[u8]) -> Result<Event, String> {
    let mut event = decode(body)?;
    event.id = id;
    Ok(event)
}

/// Append the record for `event` to `buf`, with a compact body.
pub(crate) fn encode(event: &Event, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    encode_fixed(event.id, event.time_us, &event.exchange, buf);
    // Every published event has an origin: it is compact too, unless its
    // peer name is empty or longer than a length byte holds (then JSON).
    let origin = event.origin.as_ref();
    let compact_origin = origin.filter(|o| (1..=255).contains(&o.peer.len()));
    let rare = RareOut {
        acl: event.acl.as_ref(),
        headers: event.headers.as_ref(),
        origin: origin.filter(|_| compact_origin.is_none()),
        idempotency_key: event.idempotency_key.as_deref(),
    };
    let (key, payload) = (event.routing_key.as_bytes(), event.payload.get().as_bytes());
    match (u16::try_from(key.len()), u32::try_from(payload.len())) {
        (Ok(key_len), Ok(payload_len)) => {
            buf.push(COMPACT);
            buf.extend_from_slice(&key_len.to_le_bytes());
            buf.extend_from_slice(key);
            buf.extend_from_slice(&payload_len.to_le_bytes());
            buf.extend_from_slice(payload);
            match compact_origin {
                Some(o) => {
                    buf.push(o.peer.len() as u8);
                    buf.extend_from_slice(o.peer.as_bytes());
                    buf.extend_from_slice(&o.stream.to_le_bytes());
                    buf.extend_from_slice(&o.seq.to_le_bytes());
                }
                None => buf.push(0),
            }
            if !rare.is_empty() {
                // Writing JSON into a Vec cannot fail for these types.
                let _ = serde_json::to_writer(&mut *buf, &rare);
            }
        }
        // Validation keeps both far below these bounds; a JSON body has none.
        _ => {
            let rare = RareOut { origin, ..rare };
            let rest = RestOut { routing_key: &event.routing_key, payload: &event.payload, rare };
            // Writing JSON into a Vec cannot fail for these types.
            let _ = serde_json::to_writer(&mut *buf, &rest);
        }
    }
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
    let rest = &body[FIXED + m.exchange.len()..];
    let (routing_key, payload, rare) = match rest.split_first() {
        Some((&COMPACT, compact)) => decode_compact(compact)?,
        _ => {
            let r: RestIn = serde_json::from_slice(rest).map_err(|e| e.to_string())?;
            let rare = RareIn { acl: r.acl, headers: r.headers, origin: r.origin, idempotency_key: r.idempotency_key };
            (r.routing_key, r.payload, rare)
        }
    };
    Ok(Event::commit(
        m.id,
        m.time_us,
        NewEvent {
            exchange: m.exchange.to_string(),
            routing_key,
            payload,
            acl: rare.acl,
            headers: rare.headers,
            origin: rare.origin,
            idempotency_key: rare.idempotency_key,
        },
    ))
}

/// Decode what follows the [`COMPACT`] mark: a copy of the routing key and
/// payload (the payload checked to be JSON, as the type promises: the CRC
/// proves the bytes are those written, not who wrote them), the origin, then
/// the rare fields if any bytes are left.
fn decode_compact(b: &[u8]) -> Result<(String, Box<RawValue>, RareIn), String> {
    let mut b = Bytes(b);
    let key = b.take_u16_prefixed()?;
    let payload = b.take_u32_prefixed()?;
    let peer_len = b.take(1)?[0] as usize;
    let origin = match peer_len {
        0 => None,
        n => {
            let peer = std::str::from_utf8(b.take(n)?).map_err(|_| "origin peer is not UTF-8")?.to_owned();
            Some(Origin { peer, stream: b.take_u64()?, seq: b.take_u64()? })
        }
    };
    let routing_key = std::str::from_utf8(key).map_err(|_| "routing key is not UTF-8")?.to_owned();
    let payload = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8")?;
    let payload = RawValue::from_string(payload.to_owned()).map_err(|e| format!("payload: {e}"))?;
    let mut rare =
        if b.0.is_empty() { RareIn::default() } else { serde_json::from_slice(b.0).map_err(|e| e.to_string())? };
    if origin.is_some() {
        if rare.origin.is_some() {
            return Err("two origins in a compact record body".into());
        }
        rare.origin = origin;
    }
    Ok((routing_key, payload, rare))
}

/// The unread part of a compact body.
struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    /// The next `n` bytes, or an error if fewer are left.
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("malformed compact record body".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// Bytes after a u16 LE length.
    fn take_u16_prefixed(&mut self) -> Result<&'a [u8], String> {
        let n = self.take(2)?;
        self.take(u16::from_le_bytes([n[0], n[1]]) as usize)
    }

    /// Bytes after a u32 LE length.
    fn take_u32_prefixed(&mut self) -> Result<&'a [u8], String> {
        let n = self.take(4)?;
        self.take(u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize)
    }

    /// A u64 LE.
    fn take_u64(&mut self) -> Result<u64, String> {
        let n = self.take(8)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(n);
        Ok(u64::from_le_bytes(v))
    }
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

    fn event(extra: serde_json::Value) -> Event {
        let mut v = serde_json::json!({"exchange": "orders", "routing_key": "orders.eu", "payload": {"n": [1, "two"]}});
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        // The origin is the server's to fill in: a submitted event cannot carry one.
        let origin = v.as_object_mut().and_then(|v| v.remove("origin"));
        let mut new = serde_json::from_str::<NewEvent>(&v.to_string()).expect("event");
        new.origin = origin.map(|o| serde_json::from_value(o).expect("origin"));
        Event::commit(42, 1_700_000_000_000_042, new)
    }

    #[test]
    fn records_are_written_compact_and_every_field_survives_with_or_without_the_rare_ones() {
        let plain = crate::encode_record(&event(serde_json::json!({})));
        let body = &plain[super::HEADER..];
        assert_eq!(body[super::FIXED + "orders".len()], super::COMPACT, "compact mark after the exchange");
        assert!(body.ends_with(b"{\"n\":[1,\"two\"]}\x00"), "no origin or rare fields: the body ends at the payload");
        assert!(!super::may_have_key(body));
        let (_, e) = crate::decode_record(&plain).expect("valid").expect("whole");
        assert_eq!((e.routing_key.as_str(), e.payload.get()), ("orders.eu", r#"{"n":[1,"two"]}"#));
        assert!(e.acl.is_none() && e.headers.is_none() && e.origin.is_none() && e.idempotency_key.is_none());

        let rare = serde_json::json!({"acl": ["user:a"], "headers": {"CC": ["x.y"]},
            "origin": {"peer": "ws", "stream": 3, "seq": 9}, "idempotency_key": "k-9"});
        let full = crate::encode_record(&event(rare));
        assert!(super::may_have_key(&full[super::HEADER..]), "the key scan finds a compact record's key");
        let text = String::from_utf8_lossy(&full);
        assert!(text.contains("\x02ws") && !text.contains("origin"), "the origin is compact: {text}");
        let (len, e) = crate::decode_record(&full).expect("valid").expect("whole");
        assert_eq!((len, e.id, e.time_us, e.exchange.as_str()), (full.len(), 42, 1_700_000_000_000_042, "orders"));
        assert_eq!(e.acl, Some(vec!["user:a".to_string()]));
        assert_eq!(e.routing_keys().collect::<Vec<_>>(), ["orders.eu", "x.y"]);
        assert_eq!(e.origin.map(|o| (o.peer, o.stream, o.seq)), Some(("ws".to_string(), 3, 9)));
        assert_eq!(e.idempotency_key.as_deref(), Some("k-9"));

        // Peer names a length byte holds are compact; an empty one, or one
        // too long for it, goes with the rare fields (here beside others).
        for peer_len in [0, 1, 255, 256, 300] {
            let odd = serde_json::json!({"acl": ["user:b"], "idempotency_key": "k",
                "origin": {"peer": "p".repeat(peer_len), "stream": 1, "seq": 2}});
            let bytes = crate::encode_record(&event(odd));
            let compact = (1..=255).contains(&peer_len);
            assert_eq!(String::from_utf8_lossy(&bytes).contains("\"origin\""), !compact, "peer of {peer_len}");
            let (_, e) = crate::decode_record(&bytes).expect("valid").expect("whole");
            assert_eq!(e.origin.map(|o| (o.peer.len(), o.stream, o.seq)), Some((peer_len, 1, 2)));
            assert_eq!((e.acl.map(|a| a.len()), e.idempotency_key.as_deref()), (Some(1), Some("k")));
        }
        // A routing key longer than its u16 length holds (validation stops
        // them at 255 bytes) gets a whole JSON body instead.
        let mut huge = event(serde_json::json!({"origin": {"peer": "ws", "stream": 1, "seq": 2}}));
        huge.routing_key = "k".repeat(70_000);
        let bytes = crate::encode_record(&huge);
        assert_eq!(bytes[super::HEADER + super::FIXED + "orders".len()], b'{');
        let (_, e) = crate::decode_record(&bytes).expect("valid").expect("whole");
        assert_eq!((e.routing_key.len(), e.origin.map(|o| o.seq)), (70_000, Some(2)));

        // The hand-written compact seed decodes too.
        let seed: &[u8] = include_bytes!("../../../fuzz/seeds/log_record/two-compact-records");
        let (first, e) = crate::decode_record(seed).expect("seed").expect("whole");
        assert_eq!((e.id, e.routing_key.as_str(), e.payload.get(), e.acl), (9, "orders.eu.1", r#"{"n":1}"#, None));
        let (_, e) = crate::decode_record(&seed[first..]).expect("second").expect("whole");
        assert_eq!((e.id, e.payload.get(), e.idempotency_key.as_deref()), (10, r#"[1,"two"]"#, Some("k-2")));
        assert_eq!(e.origin.map(|o| (o.peer, o.stream, o.seq)), Some(("ws".to_string(), 3, 12)));
    }

    #[test]
    #[cfg(feature = "nats")]
    fn cluster_messages_keep_the_json_body_and_round_trip() {
        let rare = serde_json::json!({"acl": ["user:a"], "headers": {"CC": ["x.y"]},
            "origin": {"peer": "ws", "stream": 3, "seq": 9}, "idempotency_key": "k-9"});
        let e = event(rare);
        let new = NewEvent {
            exchange: e.exchange.clone(),
            routing_key: e.routing_key.clone(),
            payload: e.payload.clone(),
            acl: e.acl.clone(),
            headers: e.headers.clone(),
            origin: e.origin.clone(),
            idempotency_key: e.idempotency_key.clone(),
        };
        let body = super::encode_message(e.time_us, &new);
        let rest = &body[super::FIXED + e.exchange.len()..];
        let expected = r#"{"routing_key":"orders.eu","payload":{"n":[1,"two"]},"acl":["user:a"],"headers":{"CC":["x.y"]},"origin":{"peer":"ws","stream":3,"seq":9},"idempotency_key":"k-9"}"#;
        assert_eq!(std::str::from_utf8(rest), Ok(expected), "what nodes of earlier versions read");
        let back = super::decode_message(77, &body).expect("decodes");
        assert_eq!(
            (back.id, back.time_us, back.routing_key.as_str(), back.payload.get()),
            (77, e.time_us, "orders.eu", e.payload.get())
        );
        assert_eq!(
            (back.acl, back.headers, back.origin, back.idempotency_key),
            (e.acl, e.headers, e.origin, e.idempotency_key)
        );
    }

    /// A body whose CRC matches but whose compact part does not hold
    /// together: a record length, checksum and all, with `rest` after the
    /// exchange.
    fn forged(rest: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        super::encode_fixed(5, 6, "x", &mut body);
        body.extend_from_slice(rest);
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn a_compact_body_that_does_not_hold_together_is_an_error_naming_why() {
        let cases: [(&[u8], &str); 9] = [
            (b"\x01\x05", "malformed compact"),                          // key length cut short
            (b"\x01\x09\x00a.b", "malformed compact"),                   // key longer than the body
            (b"\x01\x03\x00a.b\x10\x00\x00\x00{}", "malformed compact"), // payload longer than the body
            (b"\x01\x01\x00a\x02\x00\x00\x00{}", "malformed compact"),    // no origin byte
            (b"\x01\x01\x00a\x02\x00\x00\x00{}\x02ws\x01\x00", "malformed compact"), // origin cut short
            (b"\x01\x02\x00\xff\xfe\x02\x00\x00\x00{}\x00", "routing key is not UTF-8"),
            (b"\x01\x01\x00a\x03\x00\x00\x00{x}\x00", "payload:"), // not JSON
            (b"\x01\x01\x00a\x02\x00\x00\x00{}\x00{\"acl\":7}", "invalid type"), // rare fields of the wrong type
            (
                b"\x01\x01\x00a\x02\x00\x00\x00{}\x02ws\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00{\"origin\":{\"peer\":\"x\",\"stream\":1,\"seq\":2}}",
                "two origins",
            ),
        ];
        for (rest, why) in cases {
            let err = crate::decode_record(&forged(rest)).err().unwrap_or_default();
            assert!(err.contains(why), "{rest:?}: {err:?} should say {why:?}");
        }
        let (_, e) =
            crate::decode_record(&forged(b"\x01\x01\x00a\x02\x00\x00\x00{}\x00")).expect("valid").expect("whole");
        assert_eq!((e.routing_key.as_str(), e.payload.get(), e.origin), ("a", "{}", None));
        let with_origin =
            b"\x01\x01\x00a\x02\x00\x00\x00{}\x02ws\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00";
        let (_, e) = crate::decode_record(&forged(with_origin)).expect("valid").expect("whole");
        assert_eq!(e.origin.map(|o| (o.peer, o.stream, o.seq)), Some(("ws".to_string(), 1, 2)));
    }
}
