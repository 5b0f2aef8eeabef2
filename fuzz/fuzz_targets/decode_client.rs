//! Any bytes as a client frame: decoding must answer Ok or a bad_request
//! error, never panic, and a decoded message's reference must survive.
#![no_main]

use herald_protocol::{decode_client, ErrorCode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 by the time they reach the decoder.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match decode_client(text) {
        Ok(msg) => {
            let _ = msg.reference();
        }
        Err(e) => assert_eq!(e.code, ErrorCode::BadRequest),
    }
});
