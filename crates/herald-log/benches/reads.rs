//! Micro-benchmarks of the embedded log's read paths (`cargo bench -p
//! herald-log`): a replay chunk of every exchange, a chunk of one exchange
//! among ten (records of the others skipped inside one read), and the scan
//! that rebuilds the idempotency window; and the decoding of one record in
//! each body encoding (compact, as written now, and JSON, as written before
//! and as a clustered log stores messages). Whole-system figures come from
//! `herald bench`.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use herald_core::NewEvent;
use herald_log::{EmbeddedLog, EventLog, LogConfig, ReadQuery};
use serde_json::value::RawValue;
use std::hint::black_box;

const EVENTS: u64 = 100_000;

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { dir: dir.path().to_path_buf(), fsync: false, max_age: None, ..LogConfig::default() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (log, _committed) = EmbeddedLog::open(config).unwrap();
    let pad = "x".repeat(70);
    for start in (0..EVENTS).step_by(10_000) {
        let batch = (start..start + 10_000)
            .map(|i| NewEvent {
                exchange: format!("x{}", i % 10),
                routing_key: format!("orders.eu.{}", i % 97),
                payload: RawValue::from_string(format!(r#"{{"n":{i},"pad":"{pad}"}}"#)).unwrap(),
                acl: None,
                headers: None,
                origin: None,
                idempotency_key: None,
            })
            .collect();
        // Kept alive by `_committed` being unread: the channel holds 256 batches.
        rt.block_on(log.append(batch)).unwrap();
    }
    let chunk = |exchanges: Option<Vec<String>>, after: u64| ReadQuery {
        exchanges,
        after,
        upto: EVENTS,
        limit: 512,
        newest_first: false,
        max_bytes: 1 << 20,
    };
    let mut after = 0;
    c.bench_function("log/read-512-of-all", |b| {
        b.iter(|| {
            after = (after + 512) % (EVENTS - 512);
            black_box(rt.block_on(log.read(chunk(None, after))).unwrap().len())
        })
    });
    c.bench_function("log/read-512-of-one-exchange-in-ten", |b| {
        b.iter(|| {
            after = (after + 5120) % (EVENTS - 5120);
            black_box(rt.block_on(log.read(chunk(Some(vec!["x3".into()]), after))).unwrap().len())
        })
    });
    c.bench_function("log/key-scan-10000-unkeyed", |b| {
        b.iter(|| {
            after = (after + 10_000) % (EVENTS - 10_000);
            black_box(rt.block_on(log.idempotency_keys(after, EVENTS, 10_000)).unwrap().1)
        })
    });
}

/// One record of a 100-byte payload published over WebSocket (so with an
/// origin), as the log writes it (compact) and with the same event in a
/// JSON body, built from the documented format.
fn decode(c: &mut Criterion) {
    let event = herald_core::Event::commit(
        7,
        1_700_000_000_000_000,
        NewEvent {
            exchange: "x3".into(),
            routing_key: "orders.eu.42".into(),
            payload: RawValue::from_string(format!(r#"{{"n":42,"pad":"{}"}}"#, "x".repeat(84))).unwrap(),
            acl: None,
            headers: None,
            origin: Some(herald_core::event::Origin { peer: "ws".into(), stream: 17, seq: 4242 }),
            idempotency_key: None,
        },
    );
    let compact = herald_log::encode_record(&event);
    let mut body = compact[8..8 + 18 + 2].to_vec();
    let rest = serde_json::json!({"routing_key": event.routing_key, "payload": event.payload, "origin": event.origin});
    serde_json::to_writer(&mut body, &rest).unwrap();
    let mut json = (body.len() as u32).to_le_bytes().to_vec();
    json.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    json.extend_from_slice(&body);
    let (_, e) = herald_log::decode_record(&json).unwrap().unwrap();
    assert_eq!((e.payload.get(), e.origin.map(|o| o.seq)), (event.payload.get(), Some(4242)));
    c.bench_function("record/decode-compact-100B", |b| {
        b.iter(|| black_box(herald_log::decode_record(black_box(&compact)).unwrap().unwrap().0))
    });
    c.bench_function("record/decode-json-100B", |b| {
        b.iter(|| black_box(herald_log::decode_record(black_box(&json)).unwrap().unwrap().0))
    });
}

criterion_group!(benches, reads, decode);
criterion_main!(benches);
