//! The embedded log held against a simple in-memory model, plus crash and
//! retention scenarios.

use herald_core::NewEvent;
use herald_log::{EmbeddedLog, EventLog, LogConfig, ReadQuery};
use proptest::prelude::*;
use serde_json::value::RawValue;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

fn ev(exchange: &str, rk: &str, n: u64) -> NewEvent {
    NewEvent {
        exchange: exchange.into(),
        routing_key: rk.into(),
        payload: RawValue::from_string(format!("{{\"n\":{n}}}")).expect("raw"),
        acl: None,
        headers: None,
        origin: None,
        idempotency_key: None,
    }
}

fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_path_buf(),
        segment_bytes: 4096,
        fsync: false,
        max_age: None,
        max_events: None,
        max_bytes: None,
        ..LogConfig::default()
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn all(log: &EmbeddedLog, exchanges: Option<Vec<String>>) -> Vec<(u64, String, u64)> {
    let rt = rt();
    let events = rt
        .block_on(log.read(ReadQuery {
            exchanges,
            after: 0,
            upto: u64::MAX,
            limit: usize::MAX,
            newest_first: false,
            max_bytes: usize::MAX,
        }))
        .expect("read");
    events.iter().map(|e| (e.id, e.exchange.clone(), e.payload_value()["n"].as_u64().unwrap_or(0))).collect()
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(u8, u64)>),
    Reopen,
    Read { after: u64, len: u64, exchange: Option<u8>, newest_first: bool, max_bytes: Option<usize> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::collection::vec((0u8..3, 0u64..1000), 1..20).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        3 => (0u64..120, 0u64..60, proptest::option::of(0u8..3), any::<bool>(), proptest::option::of(0usize..400))
            .prop_map(|(after, len, exchange, newest_first, max_bytes)| Op::Read { after, len, exchange, newest_first, max_bytes }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    // Ids are dense and increasing, reads agree with the model, and nothing
    // is lost or changed across reopen (segments roll every 4 KiB here).
    #[test]
    fn log_agrees_with_model(ops in proptest::collection::vec(op(), 1..25)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = rt();
        let (mut log, _rx) = EmbeddedLog::open(config(dir.path())).expect("open");
        let mut model: Vec<(u64, String, u64)> = Vec::new();
        for op in ops {
            match op {
                Op::Append(items) => {
                    let events: Vec<NewEvent> = items.iter().map(|(x, n)| ev(&format!("x{x}"), "a.b", *n)).collect();
                    let got = rt.block_on(log.append(events)).expect("append");
                    for (e, (x, n)) in got.iter().zip(items) {
                        prop_assert_eq!(e.id, model.len() as u64 + 1);
                        model.push((e.id, format!("x{x}"), n));
                    }
                }
                Op::Reopen => {
                    rt.block_on(log.close());
                    drop(log);
                    let (l, _rx2) = EmbeddedLog::open(config(dir.path())).expect("reopen");
                    log = l;
                }
                Op::Read { after, len, exchange, newest_first, max_bytes } => {
                    let upto = after + len;
                    let exchanges = exchange.map(|x| vec![format!("x{x}")]);
                    let got = rt.block_on(log.read(ReadQuery { exchanges: exchanges.clone(), after, upto, limit: 7, newest_first, max_bytes: max_bytes.unwrap_or(usize::MAX) })).expect("read");
                    let got: Vec<u64> = got.iter().map(|e| e.id).collect();
                    let mut want: Vec<u64> = model
                        .iter()
                        .filter(|(id, x, _)| *id > after && *id <= upto && exchanges.as_ref().is_none_or(|xs| xs.contains(x)))
                        .map(|(id, _, _)| *id)
                        .collect();
                    if newest_first {
                        want.reverse();
                    }
                    want.truncate(7);
                    if max_bytes.is_some() {
                        // A byte budget cuts a prefix, never to nothing.
                        prop_assert!(want.starts_with(&got), "{:?} is not a prefix of {:?}", got, want);
                        prop_assert_eq!(got.is_empty(), want.is_empty());
                    } else {
                        prop_assert_eq!(got, want);
                    }
                }
            }
            prop_assert_eq!(log.bounds().head, model.len() as u64);
        }
        prop_assert_eq!(all(&log, None), model);
        rt.block_on(log.close());
    }
}

#[test]
fn torn_tail_is_cut_and_ids_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let cfg = LogConfig { segment_bytes: 1 << 20, ..config(dir.path()) };
    let (log, _rx) = EmbeddedLog::open(cfg.clone()).expect("open");
    rt.block_on(log.append((0..10).map(|n| ev("x", "k", n)).collect())).expect("append");
    rt.block_on(log.close());
    drop(log);
    let seg = dir.path().join(format!("{:020}.seg", 1));
    let len = std::fs::metadata(&seg).expect("meta").len();
    // A crash in the middle of writing the 11th record: half a record at the end.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).expect("open seg");
    f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6]).expect("write");
    drop(f);
    let (log, _rx) = EmbeddedLog::open(cfg.clone()).expect("reopen after torn tail");
    assert_eq!(log.bounds().head, 10);
    assert_eq!(std::fs::metadata(&seg).expect("meta").len(), len, "tail cut back");
    let got = rt.block_on(log.append(vec![ev("x", "k", 10)])).expect("append");
    assert_eq!(got[0].id, 11);
    rt.block_on(log.close());
    drop(log);
    // A flipped byte inside the last record: that record is cut, earlier ones stay.
    let mut data = std::fs::read(&seg).expect("read");
    let n = data.len();
    data[n - 3] ^= 0xff;
    std::fs::write(&seg, &data).expect("write");
    let (log, _rx) = EmbeddedLog::open(cfg).expect("reopen after bit flip");
    assert_eq!(log.bounds().head, 10);
    assert_eq!(all(&log, None).len(), 10);
}

#[test]
fn corruption_in_a_sealed_segment_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (log, _rx) = EmbeddedLog::open(config(dir.path())).expect("open");
    for i in 0..50 {
        rt.block_on(log.append((0..10).map(|n| ev("x", "k", i * 10 + n)).collect())).expect("append");
    }
    assert!(log.stats().segments > 2);
    rt.block_on(log.close());
    drop(log);
    let first = dir.path().join(format!("{:020}.seg", 1));
    let mut data = std::fs::read(&first).expect("read");
    data[20] ^= 0xff;
    std::fs::write(&first, &data).expect("write");
    let err = EmbeddedLog::open(config(dir.path())).expect_err("must refuse");
    assert!(err.to_string().contains("corrupt"), "{err}");
}

#[test]
fn retention_by_count_and_bytes_keeps_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let cfg = LogConfig { max_events: Some(50), ..config(dir.path()) };
    let (log, _rx) = EmbeddedLog::open(cfg).expect("open");
    for i in 0..40 {
        rt.block_on(
            log.append((0..10).map(|n| ev(if n % 2 == 0 { "even" } else { "odd" }, "k", i * 10 + n)).collect()),
        )
        .expect("append");
    }
    let b = log.bounds();
    assert_eq!(b.head, 400);
    assert!(b.first > 1, "old segments removed");
    assert!(b.head - b.first + 1 >= 50, "at least max_events kept: {b:?}");
    let events = all(&log, None);
    assert_eq!(events.first().map(|e| e.0), Some(b.first));
    let evens = all(&log, Some(vec!["even".into()]));
    assert!(evens.iter().all(|e| e.0 >= b.first && e.1 == "even"));
    rt.block_on(log.close());
    drop(log);
    let cfg = LogConfig { max_bytes: Some(10_000), ..config(dir.path()) };
    let (log, _rx) = EmbeddedLog::open(cfg).expect("open");
    rt.block_on(log.append(vec![ev("x", "k", 1)])).expect("append");
    assert!(log.stats().bytes <= 10_000 + 4096, "{:?}", log.stats());
    assert_eq!(log.bounds().head, 401);
}

#[test]
fn time_lookup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let (log, _rx) = EmbeddedLog::open(config(dir.path())).expect("open");
    let mut times = Vec::new();
    for i in 0..30 {
        let got = rt.block_on(log.append(vec![ev("x", "k", i)])).expect("append");
        times.push(got[0].time_us);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    for (i, t) in times.iter().enumerate() {
        let first = rt.block_on(log.first_at_or_after(*t)).expect("lookup");
        // The first id with that time (ties are possible only within a batch).
        assert_eq!(first, times.iter().position(|x| x == t).expect("pos") as u64 + 1, "i={i}");
    }
    assert_eq!(rt.block_on(log.first_at_or_after(times[29] + 1)).expect("lookup"), 31);
    assert_eq!(rt.block_on(log.first_at_or_after(0)).expect("lookup"), 1);
}

#[test]
fn concurrent_publishers_share_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let cfg = LogConfig { fsync: true, segment_bytes: 1 << 20, ..config(dir.path()) };
    let (log, mut rx) = EmbeddedLog::open(cfg).expect("open");
    let log: Arc<EmbeddedLog> = log;
    rt.block_on(async {
        let drain = tokio::spawn(async move {
            let mut n = 0;
            let mut last = 0;
            while let Some(batch) = rx.recv().await {
                for e in batch.iter() {
                    assert_eq!(e.id, last + 1, "committed batches arrive in id order");
                    last = e.id;
                    n += 1;
                }
                if n == 400 {
                    break;
                }
            }
            n
        });
        let mut tasks = Vec::new();
        for p in 0..40 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    log.append(vec![ev("x", "k", p * 10 + i)]).await.expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(drain.await.expect("drain"), 400);
    });
    let stats = log.stats();
    assert_eq!(stats.appended, 400);
    assert!(stats.commits < 400, "group commit shares fsyncs: {stats:?}");
}

/// The idempotency-key scan finds every key (across segments, in steps of
/// any size), skips unkeyed events, and is not fooled by a payload that
/// names the field.
#[test]
fn idempotency_keys_are_found_in_steps_and_only_where_they_are() {
    let dir = tempfile::tempdir().expect("dir");
    let (log, _rx) = EmbeddedLog::open(config(dir.path())).expect("open");
    let rt = rt();
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for n in 1..=300u64 {
        let mut e = ev(if n % 2 == 0 { "a" } else { "b" }, "k", n);
        if n % 7 == 0 {
            e.idempotency_key = Some(format!("key-{n}"));
            expected.push((n, e.exchange.clone(), format!("key-{n}")));
        } else if n % 5 == 0 {
            // Mentions the field in its payload, but carries no key.
            e.payload = RawValue::from_string(format!(r#"{{"n":{n},"idempotency_key":"no"}}"#)).expect("raw");
        }
        batch.push(e);
        if batch.len() == 10 {
            // Segments roll between writes: several writes, several segments.
            rt.block_on(log.append(std::mem::take(&mut batch))).expect("append");
        }
    }
    assert!(log.stats().segments > 1, "the keys span segments");
    for step in [1usize, 13, 64, 1000] {
        let (mut after, mut found) = (0u64, Vec::new());
        while after < 300 {
            let (keys, last) = rt.block_on(log.idempotency_keys(after, 300, step)).expect("scan");
            assert!(last > after && last <= after + step as u64, "step {step}: progress {after} -> {last}");
            after = last;
            found.extend(keys.into_iter().map(|k| (k.id, k.exchange, k.key)));
        }
        assert_eq!(found, expected, "step {step}");
    }
    // Past the head: nothing, and done.
    let (keys, last) = rt.block_on(log.idempotency_keys(300, 400, 10)).expect("scan");
    assert!(keys.is_empty() && last >= 300);
}

/// A record with a JSON body, as the log wrote them before the compact
/// encoding (and as the crate docs describe): `rest` is the JSON object.
fn json_record(id: u64, exchange: &str, rest: &str) -> Vec<u8> {
    let mut body = id.to_le_bytes().to_vec();
    body.extend_from_slice(&(1_700_000_000_000_000 + id).to_le_bytes());
    body.extend_from_slice(&(exchange.len() as u16).to_le_bytes());
    body.extend_from_slice(exchange.as_bytes());
    body.extend_from_slice(rest.as_bytes());
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn a_log_written_with_json_bodies_is_read_and_continued_with_compact_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut seg = b"HRLDSEG1".to_vec();
    seg.extend(json_record(1, "x", r#"{"routing_key":"k","payload":{"n":0}}"#));
    seg.extend(json_record(2, "y", r#"{"routing_key":"k","payload":{"n":1},"idempotency_key":"old"}"#));
    std::fs::write(dir.path().join(format!("{:020}.seg", 1)), &seg).expect("write segment");
    let cfg = LogConfig { segment_bytes: 1 << 20, ..config(dir.path()) };
    let (log, _rx) = EmbeddedLog::open(cfg.clone()).expect("open a JSON-bodied segment");
    assert_eq!(log.bounds().head, 2);
    let mut keyed = ev("y", "k", 3);
    keyed.idempotency_key = Some("new".into());
    rt.block_on(log.append(vec![ev("x", "k", 2), keyed])).expect("append compact records to it");
    let expected = vec![(1, "x".to_string(), 0), (2, "y".into(), 1), (3, "x".into(), 2), (4, "y".into(), 3)];
    assert_eq!(all(&log, None), expected);
    assert_eq!(all(&log, Some(vec!["y".into()])), vec![expected[1].clone(), expected[3].clone()]);
    rt.block_on(log.close());
    drop(log);
    let (log, _rx) = EmbeddedLog::open(cfg).expect("reopen the mixed segment");
    assert_eq!(all(&log, None), expected);
    let (keys, _) = rt.block_on(log.idempotency_keys(0, 4, 100)).expect("key scan");
    let keys: Vec<_> = keys.iter().map(|k| (k.id, k.key.as_str())).collect();
    assert_eq!(keys, [(2, "old"), (4, "new")], "keys of both encodings are found");
}
