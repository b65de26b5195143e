//! Hot-path micro-benchmarks: decoding a publish (method + header + body
//! frames) and encoding a basic.deliver.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use ferrymq_wire::{
    decode_frame, encode_body, encode_header, encode_method, BasicDeliver, BasicProperties,
    BasicPublish, ContentHeader, Method, ShortStr,
};
use std::hint::black_box;

fn publish_frames() -> BytesMut {
    let mut dst = BytesMut::new();
    let publish = Method::BasicPublish(BasicPublish {
        exchange: ShortStr::from_static("amq.direct"),
        routing_key: ShortStr::from_static("orders.created"),
        ..Default::default()
    });
    encode_method(&mut dst, 1, &publish);
    let properties = BasicProperties {
        content_type: Some(ShortStr::from_static("application/json")),
        delivery_mode: Some(2),
        ..Default::default()
    }
    .encode();
    let header = ContentHeader {
        class_id: 60,
        weight: 0,
        body_size: 64,
        properties,
    };
    encode_header(&mut dst, 1, &header);
    encode_body(&mut dst, 1, &[b'x'; 64]);
    dst
}

fn decode_publish(c: &mut Criterion) {
    let frames = publish_frames();
    // One large buffer of many publishes, refilled when drained, so the
    // measurement is the decoder and not buffer setup.
    let copies = 4096;
    let mut template = BytesMut::with_capacity(frames.len() * copies);
    for _ in 0..copies {
        template.extend_from_slice(&frames);
    }
    let mut src = template.clone();
    c.bench_function("decode basic.publish method+header+body", |b| {
        b.iter(|| {
            if src.is_empty() {
                src = template.clone();
            }
            for _ in 0..3 {
                black_box(decode_frame(&mut src, 131_072).unwrap());
            }
        })
    });
}

fn encode_deliver(c: &mut Criterion) {
    let deliver = Method::BasicDeliver(BasicDeliver {
        consumer_tag: ShortStr::from_static("amq.ctag-0123456789abcdef"),
        delivery_tag: 42,
        redelivered: false,
        exchange: ShortStr::from_static("amq.direct"),
        routing_key: ShortStr::from_static("orders.created"),
    });
    let mut dst = BytesMut::with_capacity(1 << 16);
    c.bench_function("encode basic.deliver", |b| {
        b.iter(|| {
            dst.clear();
            encode_method(&mut dst, 1, black_box(&deliver));
            black_box(dst.len())
        })
    });
}

criterion_group!(benches, decode_publish, encode_deliver);
criterion_main!(benches);
