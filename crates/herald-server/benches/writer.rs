//! Micro-benchmarks of the WebSocket writer's encoder (`cargo bench -p
//! herald-server`): framing a writer's queue of event messages and handing
//! it to the socket, here a sink that discards it, so what is measured is
//! the framing and copying a delivery costs in Herald, not the kernel's.
//! Each iteration includes a `block_on` of the write (most of the one
//! message case), and it all runs on one thread, so the cross-core traffic
//! on a shared payload's reference count is not in these figures.
//! S1-sized messages (a 200-byte body in an `event` of about 330 bytes):
//! one alone, 64 batched into one frame (`hello.batch`), 64 in a frame
//! each; and 16 of 8 KiB, which are written from the shared bytes instead
//! of copied. Whole-system figures come from `../shared/bench`.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herald_server::Encoder;
use std::hint::black_box;

fn message(id: u64, body: usize) -> Bytes {
    let pad = "x".repeat(body.saturating_sub(30));
    Bytes::from(format!(
        r#"{{"type":"event","sub":"s","id":{id},"exchange":"bench","routing_key":"x.y","time":"2026-12-04T20:00:00.000000Z","payload":{{"t":1764878400000000,"pad":"{pad}"}}}}"#
    ))
}

fn writer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let small: Vec<Bytes> = (0..64).map(|i| message(1_000_000 + i, 200)).collect();
    let large: Vec<Bytes> = (0..16).map(|i| message(1_000_000 + i, 8192)).collect();
    let mut sink = tokio::io::sink();
    let mut enc = Encoder::default();
    // What is benched writes the right bytes: one unmasked text frame,
    // a 16-bit length, then the message.
    let mut out: Vec<u8> = Vec::new();
    enc.text(&small[0]);
    rt.block_on(enc.write_to(&mut out)).unwrap();
    let len = small[0].len();
    assert_eq!(out[..4], [0x81, 126, (len >> 8) as u8, len as u8]);
    assert_eq!(&out[4..], &small[0][..]);

    let mut g = c.benchmark_group("writer");
    g.throughput(Throughput::Elements(1));
    g.bench_function("1-event", |b| {
        b.iter(|| {
            enc.text(black_box(&small[0]));
            rt.block_on(enc.write_to(&mut sink)).unwrap();
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("64-events-batched", |b| {
        b.iter(|| {
            enc.reserve(64 * 350);
            enc.text_lines(black_box(&small).iter());
            rt.block_on(enc.write_to(&mut sink)).unwrap();
        })
    });
    g.bench_function("64-events-a-frame-each", |b| {
        b.iter(|| {
            enc.reserve(64 * 350);
            for m in black_box(&small) {
                enc.text(m);
            }
            rt.block_on(enc.write_to(&mut sink)).unwrap();
        })
    });
    g.throughput(Throughput::Elements(16));
    g.bench_function("16-events-of-8KiB-shared", |b| {
        b.iter(|| {
            for m in black_box(&large) {
                enc.text(m);
            }
            rt.block_on(enc.write_to(&mut sink)).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, writer);
criterion_main!(benches);
