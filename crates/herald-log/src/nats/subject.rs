//! How an event's exchange and routing key become a NATS subject, and back.
//!
//! A subject is `<prefix>.<exchange>.<word>…<word>._E`: the exchange is one
//! token, each word of the routing key one token, and a fixed end token
//! closes the key. NATS subjects allow only some bytes in a token and no
//! empty tokens, while exchange names and routing-key words may hold any
//! UTF-8 and words may be empty, so every token is escaped:
//!
//! - `A`–`Z`, `a`–`z`, `0`–`9` and `-` stand for themselves;
//! - every other byte (of the UTF-8 text) is `_` and two upper-case hex
//!   digits (`.` cannot occur inside a word; `_` itself is `_5F`);
//! - an empty exchange or word is the token `_`.
//!
//! The end token `_E` cannot be an escaped token (an escape needs two hex
//! digits after `_`), and a token can always be decoded back, so the
//! encoding is injective (property-tested). The end token lets a topic
//! pattern become a subject filter: `a.*` is `<p>.<x>.a.*._E`, and a
//! trailing `#` is `>` (which needs at least one token, and the end token
//! is always there), so reading one exchange, or one routing-key prefix, is
//! a filtered read of the stream, never a scan of everything.

use std::fmt::Write;

/// The token that ends every routing key.
pub const END: &str = "_E";

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

/// Escape one exchange name or routing-key word as a subject token.
pub fn encode_token(s: &str, out: &mut String) {
    if s.is_empty() {
        out.push('_');
        return;
    }
    for &b in s.as_bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "_{b:02X}");
        }
    }
}

/// Decode one token; `None` when it is not an escaped token.
pub fn decode_token(t: &str) -> Option<String> {
    if t == "_" {
        return Some(String::new());
    }
    let b = t.as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = t.get(i + 1..i + 3)?;
            if !hex.bytes().all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)) {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if plain(v) {
                return None; // plain bytes are never escaped: one spelling per text
            }
            out.push(v);
            i += 3;
        } else if plain(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// The subject of an event.
pub fn encode(prefix: &str, exchange: &str, routing_key: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + exchange.len() + routing_key.len() + 8);
    s.push_str(prefix);
    s.push('.');
    encode_token(exchange, &mut s);
    if !routing_key.is_empty() {
        for w in routing_key.split('.') {
            s.push('.');
            encode_token(w, &mut s);
        }
    }
    s.push('.');
    s.push_str(END);
    s
}

/// The exchange and routing key of a subject made by [`encode`].
pub fn decode(prefix: &str, subject: &str) -> Option<(String, String)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let mut tokens: Vec<&str> = rest.split('.').collect();
    if tokens.pop()? != END || tokens.is_empty() {
        return None;
    }
    let exchange = decode_token(tokens[0])?;
    let words: Option<Vec<String>> = tokens[1..].iter().map(|t| decode_token(t)).collect();
    Some((exchange, words?.join(".")))
}

/// The subject filter of every event of one exchange.
pub fn exchange_filter(prefix: &str, exchange: &str) -> String {
    let mut s = format!("{prefix}.");
    encode_token(exchange, &mut s);
    s.push_str(".>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        // Plain letters, the bytes that must be escaped, `_`, spaces, `*`,
        // `>`, non-ASCII, and long runs.
        prop_oneof![
            "[a-zA-Z0-9_*> #$\u{e9}\u{4e2d}\u{1f600}-]{0,12}",
            Just(String::new()),
            Just("_".to_string()),
            Just("_E".to_string()),
            Just("x".repeat(255)),
            Just("\u{e9}".repeat(127)),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(text(), 0..6).prop_map(|w| w.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        // Decoding gives back exactly what was encoded, so no two (exchange,
        // key) pairs share a subject; and every token is a valid NATS token.
        #[test]
        fn encoding_is_injective_and_valid(x in text(), k in key()) {
            let s = encode("herald", &x, &k);
            prop_assert_eq!(decode("herald", &s), Some((x.clone(), k.clone())));
            for t in s.split('.') {
                prop_assert!(!t.is_empty(), "empty token in {}", s);
                prop_assert!(t.bytes().all(|b| plain(b) || b == b'_'), "bad byte in {}", s);
            }
        }

        #[test]
        fn distinct_inputs_have_distinct_subjects(a in (text(), key()), b in (text(), key())) {
            prop_assume!(a != b);
            prop_assert_ne!(encode("h", &a.0, &a.1), encode("h", &b.0, &b.1));
        }
    }

    #[test]
    fn edge_cases() {
        assert_eq!(encode("h", "x", ""), "h.x._E");
        assert_eq!(encode("h", "x", "."), "h.x._._._E");
        assert_eq!(encode("h", "a b", "*.>"), "h.a_20b._2A._3E._E");
        assert_eq!(encode("h", "x", "_E"), "h.x._5FE._E");
        assert_ne!(encode("h", "x", ""), encode("h", "x", "_E"));
        assert_eq!(decode_token("_41"), None, "a plain byte written escaped is not ours");
        assert_eq!(exchange_filter("h", "orders.v1"), "h.orders_2Ev1.>");
    }
}
