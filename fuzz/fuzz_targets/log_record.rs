//! Any bytes as a log segment's next record: the decoder answers a record,
//! "incomplete" or "invalid", never panics; a record it accepts (in either
//! body encoding) encodes back, compact, to a record that decodes to the same
//! event (so the start-up scan, the reader and the writer agree).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((len, event))) = herald_log::decode_record(data) {
        assert!(len <= data.len());
        let again = herald_log::encode_record(&event);
        let (len2, event2) = herald_log::decode_record(&again).expect("re-encoded").expect("whole");
        assert_eq!(len2, again.len());
        assert_eq!((event2.id, event2.time_us, &event2.exchange), (event.id, event.time_us, &event.exchange));
        assert_eq!(event2.payload.get(), event.payload.get());
        assert_eq!((&event2.routing_key, &event2.acl, &event2.headers), (&event.routing_key, &event.acl, &event.headers));
        assert_eq!((&event2.origin, &event2.idempotency_key), (&event.origin, &event.idempotency_key));
    }
});
