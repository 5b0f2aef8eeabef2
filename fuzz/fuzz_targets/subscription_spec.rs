//! Any JSON as patterns, filters and routing keys: compiling and matching
//! must never panic.
#![no_main]

use herald_core::{Filter, Pattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (pattern, key) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(p) = Pattern::parse(pattern) {
        let _ = p.matches(key);
        if let Ok(q) = Pattern::parse(key) {
            assert_eq!(p.overlaps(&q), q.overlaps(&p));
        }
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        if let Some(list) = value.as_array() {
            let _ = Filter::compile_all(list);
        }
    }
});
