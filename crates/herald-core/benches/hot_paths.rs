//! Micro-benchmarks of the fan-out's hot paths: pattern matching, the
//! pattern index with many subscriptions, and dispatching one event to
//! many subscribers, and one delivery's trip through an outbox
//! (`cargo bench -p herald-core`). Whole-system figures
//! come from `herald bench`.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use herald_core::{
    Event, FanOut, FrameFormat, NewEvent, Outbox, Pattern, PatternIndex, Principal, Registration, Start, SubSpec,
};
use serde_json::value::RawValue;
use std::hint::black_box;
use std::sync::Arc;

fn event(id: u64, rk: &str) -> Arc<Event> {
    Arc::new(Event::commit(
        id,
        id,
        NewEvent {
            exchange: "exchanges/taskcluster-queue/v1/task-completed".into(),
            routing_key: rk.into(),
            payload: RawValue::from_string(r#"{"status":{"state":"completed"},"runId":0}"#.into()).expect("raw"),
            acl: None,
            headers: None,
            origin: None,
            idempotency_key: None,
        },
    ))
}

fn patterns(c: &mut Criterion) {
    let key = "primary.fSVtH5ZiQIqOhzAa5p9J1w.0.aws.i-0123.gecko-3.b-linux.tc";
    let literal = Pattern::parse("primary.fSVtH5ZiQIqOhzAa5p9J1w.0.aws.i-0123.gecko-3.b-linux.tc").expect("p");
    let star = Pattern::parse("primary.*.*.*.*.gecko-3.*.*").expect("p");
    let hash = Pattern::parse("primary.#.gecko-3.#").expect("p");
    c.bench_function("pattern/literal", |b| b.iter(|| literal.matches(black_box(key))));
    c.bench_function("pattern/stars", |b| b.iter(|| star.matches(black_box(key))));
    c.bench_function("pattern/hashes", |b| b.iter(|| hash.matches(black_box(key))));
}

fn index(c: &mut Criterion) {
    // 10,000 subscriptions, each on its own task group: a key matches a few.
    let mut idx = PatternIndex::new();
    for i in 0..10_000u32 {
        let p = Pattern::parse(&format!("primary.*.*.*.*.group-{i}.#")).expect("p");
        idx.insert("x", &p, i);
    }
    idx.insert("x", &Pattern::parse("#").expect("p"), 10_000);
    let key = "primary.task.0.aws.worker.group-4242.linux.tc";
    c.bench_function("index/10k-subscriptions", |b| {
        b.iter(|| {
            let mut n = 0;
            idx.for_each_match("x", black_box(key), |_| n += 1);
            n
        })
    });
}

/// A live subscriber of `pattern` on the task-completed exchange, with an outbox of its own.
fn register(fan: &FanOut, pattern: &str) -> Arc<Outbox> {
    let o = Arc::new(Outbox::new(1 << 30, Bytes::new(), (4408, "")));
    let reg = Registration {
        sub: "s".into(),
        spec: Arc::new(SubSpec {
            bindings: vec![(
                "exchanges/taskcluster-queue/v1/task-completed".into(),
                Pattern::parse(pattern).expect("p"),
            )],
            filters: vec![],
        }),
        principal: Arc::new(Principal::open()),
        outbox: o.clone(),
        format: FrameFormat::WebSocket,
        replay: herald_core::ReplayPermits::unlimited(),
    };
    fan.register(reg, Start::Live, |_| {});
    o
}

/// Dispatch one event and drain what it queued.
fn dispatch_once(fan: &FanOut, id: &mut u64, outboxes: &[Arc<Outbox>], drained: &mut Vec<herald_core::Frame>) {
    *id += 1;
    fan.dispatch(&[event(*id, "primary.a.b")]);
    for o in outboxes {
        drained.clear();
        o.take(drained);
        o.written(drained);
    }
}

fn dispatch(c: &mut Criterion) {
    // One event to 1,000 live subscribers with the same subscription id:
    // encoded once, shared by all.
    let fan = FanOut::new(0);
    let outboxes: Vec<Arc<Outbox>> = (0..1000).map(|_| register(&fan, "#")).collect();
    let (mut id, mut drained) = (0, Vec::new());
    c.bench_function("dispatch/1-event-to-1000-subscribers", |b| {
        b.iter(|| dispatch_once(&fan, &mut id, &outboxes, &mut drained))
    });
    // Subscriptions that cannot match must cost nothing: the same event to
    // 100 subscribers, beside none or 100,000 others on distinct patterns
    // that do not match it (issue 14: within 1.2 x).
    for others in [0u32, 100_000] {
        let fan = FanOut::new(0);
        let outboxes: Vec<Arc<Outbox>> = (0..100).map(|_| register(&fan, "primary.#")).collect();
        let idle: Vec<Arc<Outbox>> = (0..others).map(|i| register(&fan, &format!("secondary.{i}.*.#"))).collect();
        let (mut id, mut drained) = (0, Vec::new());
        c.bench_function(&format!("dispatch/1-event-to-100-of-{}-subscriptions", 100 + others), |b| {
            b.iter(|| dispatch_once(&fan, &mut id, &outboxes, &mut drained))
        });
        drop(idle);
    }
}

/// One delivery's trip through an outbox, as the shared bench's S4 makes
/// it (one event at a time to an idle writer): the fan-out's offer, the
/// writer's take, and after the write its report and look for more,
/// as two locked steps or as one (`written_and_take`, what the writer does).
/// All on one thread: the cache-line traffic between the fan-out's core
/// and the writer's is not in these figures.
fn outbox(c: &mut Criterion) {
    use herald_core::Frame;
    use std::collections::VecDeque;
    let o = Outbox::new(1 << 20, Bytes::new(), (4408, ""));
    let frame = Frame::Event(Bytes::from(vec![b'x'; 330]), 0);
    let now = tokio::time::Instant::now();
    let mut q: VecDeque<Frame> = VecDeque::new();
    // Offer, take, and hand the written bytes to `finish` (which looks for more).
    let mut deliver = |finish: &dyn Fn(&Outbox, usize, &mut VecDeque<Frame>)| {
        o.offer_deferred(black_box(frame.clone()), now).unwrap();
        o.take_all(&mut q);
        let n: usize = q.iter().map(Frame::cost).sum();
        q.clear();
        finish(&o, n, &mut q);
        black_box(q.len())
    };
    c.bench_function("outbox/deliver-one (take, written, take)", |b| {
        b.iter(|| {
            deliver(&|o, n, q| {
                o.written_bytes(n);
                o.take_all(q);
            })
        })
    });
    c.bench_function("outbox/deliver-one (take, written_and_take)", |b| {
        b.iter(|| deliver(&|o, n, q| o.written_and_take(n, q)))
    });
    assert_eq!(o.queued_bytes(), 0, "every byte reported written");
}

/// Building an event's frame tail (id, names, RFC 3339 time, payload), as
/// every live delivery and every replayed event does once per event.
fn frame_tail(c: &mut Criterion) {
    let mut id = 1_790_000_000_000_000u64;
    c.bench_function("event/frame-tail", |b| {
        b.iter(|| {
            id += 1;
            let e = event(id, "primary.fSVtH5ZiQIqOhzAa5p9J1w.0.aws.i-0123.gecko-3.b-linux.tc");
            black_box(e.frame_tail().len())
        })
    });
    c.bench_function("event/format-time", |b| {
        b.iter(|| {
            id += 1;
            black_box(herald_core::event::format_time_us(black_box(id)))
        })
    });
}

/// One rendezvous round trip through the broker: request, hand-over to one
/// of 8 responders in rotation, answer, with 1,000 other requests in flight.
fn rendezvous(c: &mut Criterion) {
    use herald_core::rendezvous::{Broker, BrokerLimits, Incoming, Sink};
    use parking_lot::Mutex;
    let broker = Broker::new(BrokerLimits { max_concurrency: 1000, ..BrokerLimits::default() });
    let handed: Arc<Mutex<Vec<Incoming>>> = Arc::default();
    for _ in 0..8 {
        let h = handed.clone();
        broker.serve(
            "svc",
            1000,
            Sink::Stream(Arc::new(move |i| {
                h.lock().push(i);
                Ok(())
            })),
        );
    }
    let body = RawValue::from_string(r#"{"offer":"v=0 o=- 4611731400430051336 2 IN IP4 127.0.0.1"}"#.into()).unwrap();
    let _busy: Vec<_> = (0..1000).map(|_| broker.request("svc", body.clone(), None)).collect();
    handed.lock().clear();
    c.bench_function("rendezvous round trip (8 responders, 1k in flight)", |b| {
        b.iter(|| {
            let pending = broker.request("svc", body.clone(), None);
            let incoming = handed.lock().pop().unwrap();
            broker.answer(&incoming.request, incoming.body, |_| true).unwrap();
            black_box(pending);
        })
    });
}

criterion_group!(benches, patterns, index, dispatch, outbox, frame_tail, rendezvous);
criterion_main!(benches);
