//! Segment append: encoding a record into the log's write buffer, and a batch of 256
//! appends followed by one write (what a queue does per mailbox batch), without fdatasync.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferrymq_store::{QueueLog, Record, RecordKind};

fn record(seq: u64, body: &Bytes) -> Record {
    Record {
        kind: RecordKind::Persistent,
        priority: 0,
        seq,
        expiry_ms: 0,
        exchange: Bytes::from_static(b"amq.direct"),
        routing_key: Bytes::from_static(b"orders.eu"),
        properties: Bytes::from_static(&[0x10, 0x00, 0x02]),
        body: body.clone(),
    }
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let body = Bytes::from(vec![7u8; 1024]);
    let mut group = c.benchmark_group("segment_append");
    group.throughput(Throughput::Elements(256));
    group.bench_function("256 x 1 KiB records + write", |b| {
        let (mut log, _) = QueueLog::open(dir.path(), 64 * 1024 * 1024).unwrap();
        let mut seq = 0;
        b.iter_batched(
            || (),
            |()| {
                for _ in 0..256 {
                    log.append(&record(seq, &body)).unwrap();
                    seq += 1;
                }
                log.flush().unwrap();
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
