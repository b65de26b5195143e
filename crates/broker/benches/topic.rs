//! Topic matching with 100k bindings: the cost must follow the key's words and the matching
//! branches, not the number of bindings.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ferrymq_broker::exchange::topic_trie::TopicTrie;

/// Bindings in the benchmarked exchange.
const BINDINGS: u32 = 100_000;

/// A mix of realistic shapes (prefix `#`, leading `*`, trailing `*`) plus some `#`-heavy patterns
/// that keep several states alive on every word.
fn build_trie() -> TopicTrie<u32> {
    let mut trie = TopicTrie::new();
    let mut value = 0u32;
    let mut bind = |trie: &mut TopicTrie<u32>, pattern: String| {
        trie.insert(&pattern, value);
        value += 1;
    };
    let per_shape = (BINDINGS - 1_000) / 3;
    for n in 0..per_shape {
        bind(&mut trie, format!("stock.s{n}.#"));
        bind(&mut trie, format!("*.s{n}.trades"));
        bind(&mut trie, format!("region.{n}.*"));
    }
    for n in 0..1_000 - 4 {
        bind(&mut trie, format!("#.audit{n}.#"));
    }
    for pattern in ["#", "#.#", "#.*.#", "#.#.#.#.#.#.#.#.#"] {
        bind(&mut trie, pattern.to_string());
    }
    assert_eq!(trie.len(), BINDINGS as usize);
    trie
}

fn bench_match(c: &mut Criterion) {
    let trie = build_trie();
    let long_key = vec!["w"; 64].join(".");
    let keys = [
        ("stock_prefix_hash", "stock.s4242.nyse.trade"),
        ("leading_star", "fx.s777.trades"),
        ("trailing_star", "region.31337.eu"),
        ("only_catch_alls", "nothing.matches.here"),
        ("audit_in_middle", "a.audit500.b.c"),
        ("64_words", long_key.as_str()),
    ];
    let mut group = c.benchmark_group("topic_match_100k");
    for (name, key) in keys {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut count = 0usize;
                trie.for_each_match(black_box(key), |v| {
                    black_box(v);
                    count += 1;
                });
                count
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_match);
criterion_main!(benches);
