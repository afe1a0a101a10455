//! Criterion benchmarks of the storage engine: append (async and sync flush) and queue reads.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_broker::store::{AppendBatch, AppendMessage, FlushMode, MessageStore, StoreConfig};

fn message(i: u64, body: &Bytes) -> AppendMessage {
    AppendMessage {
        message_id: format!("m-{i}"),
        body: body.clone(),
        tag: "bench".into(),
        born_timestamp_ms: 1,
        ..Default::default()
    }
}

fn open(rt: &tokio::runtime::Runtime, dir: &std::path::Path, flush: FlushMode) -> MessageStore {
    let mut cfg = StoreConfig::new(dir);
    cfg.flush = flush;
    cfg.segment_size = 256 << 20;
    rt.block_on(MessageStore::open(cfg)).unwrap()
}

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("append");
    group.measurement_time(Duration::from_secs(5));
    for (flush, size, batch) in [
        (FlushMode::Async, 1024usize, 1usize),
        (FlushMode::Async, 1024, 32),
        (FlushMode::Sync, 1024, 32),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&rt, dir.path(), flush);
        let body = Bytes::from(vec![7u8; size]);
        let mut i = 0u64;
        group.throughput(Throughput::Bytes((size * batch) as u64));
        group.bench_function(format!("{flush:?}/{size}B/batch{batch}"), |b| {
            b.to_async(&rt).iter_batched(
                || {
                    let messages = (0..batch as u64)
                        .map(|j| message(i * 1000 + j, &body))
                        .collect();
                    i += 1;
                    AppendBatch {
                        topic: "bench".into(),
                        queue_id: (i % 8) as u32,
                        messages,
                    }
                },
                |batch| {
                    let store = store.clone();
                    async move { store.append(batch).await.unwrap() }
                },
                BatchSize::SmallInput,
            );
        });
        rt.block_on(store.shutdown()).unwrap();
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = open(&rt, dir.path(), FlushMode::Async);
    let body = Bytes::from(vec![7u8; 1024]);
    let total = 64 * 1024u64;
    rt.block_on(async {
        for i in 0..total / 64 {
            let messages = (0..64).map(|j| message(i * 64 + j, &body)).collect();
            store
                .append(AppendBatch {
                    topic: "bench".into(),
                    queue_id: 0,
                    messages,
                })
                .await
                .unwrap();
        }
        let mut rx = store.subscribe_dispatched();
        while store.queue_offsets("bench", 0).1 < total {
            rx.changed().await.unwrap();
        }
    });
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Bytes(32 * 1024));
    let mut offset = 0u64;
    group.bench_function("read_queue/32x1KiB", |b| {
        b.iter(|| {
            let r = store
                .read_queue("bench", 0, offset, 32, usize::MAX)
                .unwrap();
            offset = r.next_offset % (total - 32);
            r
        })
    });
    group.finish();
    rt.block_on(store.shutdown()).unwrap();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
