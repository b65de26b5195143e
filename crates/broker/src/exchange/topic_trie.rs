//! Topic-exchange bindings: a trie of binding-key words, matched against routing keys.
//!
//! # Semantics (RabbitMQ's, checked against `rabbit_db_topic_exchange.erl` and its topic-matching tests)
//!
//! - Keys and patterns are split on every `.`; the empty string is *zero* words, not one empty word.
//!   So `"a."` is `["a", ""]`, `"."` is `["", ""]`, and no key consists of one empty word.
//! - A pattern word that is exactly `*` matches one word (an empty one too); exactly `#` matches zero
//!   or more words. `a*` or `#x` are plain words. Routing-key words are always literal.
//! - Hence `#` matches every key including `""`; `""` matches only `""`; `*` does not match `""`;
//!   `a.#` matches `a`; `a.*.#` does not match `a` but does match `a.` (one empty word after `a`).
//!
//! # Layout
//!
//! Nodes live in an arena (`Vec<Node>`) and refer to each other by index, so a match can keep its
//! state set in a plain `Vec<usize>` scratch that is reused across calls (thread-local) instead of
//! allocating per message. Freed nodes go on a free list, so bind/unbind churn reuses slots: the
//! arena never grows beyond the peak number of live nodes.
//!
//! # Cost of one match
//!
//! The matcher is an NFA simulation over the trie: after each routing-key word it holds the set of
//! nodes whose pattern prefix matches the key prefix, each node at most once. Work per match is
//! O(W × S × (L + log S)) where W is the number of key words (at most 256 for an AMQP routing key,
//! a shortstr of at most 255 bytes), S the number of live states after a word (bounded by the
//! number of trie nodes whose prefix matches, independent of unrelated bindings), and L the word
//! length hashed for the child lookup. Consecutive `#` words (`#.#.#.#`) add one state each instead
//! of multiplying the paths, which is what makes a naive backtracking matcher exponential.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Index of the root node in the arena; the root is never freed.
const ROOT: usize = 0;

/// States kept allocated in the per-thread scratch between matches. A trie with a pathological
/// pattern set can need many states once; we do not want every thread to hold that forever.
const SCRATCH_RETAINED_STATES_MAX: usize = 1024;

/// A literal-child map shrinks when less than 1/`LITERAL_SHRINK_RATIO` of its capacity is used,
/// so unbinding 100k symbols under one prefix gives the memory back.
const LITERAL_SHRINK_RATIO: usize = 4;
/// Below this capacity a map is cheap enough that shrinking it would be churn for nothing.
const LITERAL_SHRINK_CAPACITY_MIN: usize = 16;

/// Bindings of a topic exchange: pattern -> set of destinations.
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    nodes: Vec<Node<T>>,
    /// Arena slots of pruned nodes, reused before the arena grows.
    free: Vec<usize>,
    /// Number of (pattern, value) pairs.
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    literal: HashMap<Box<str>, usize>,
    /// Child for a `*` word. Kept out of `literal` so a match never hashes it.
    star: Option<usize>,
    /// Child for a `#` word.
    hash: Option<usize>,
    /// This node was reached through a `#` edge, so it may swallow any number of further words.
    absorbs_words: bool,
    values: HashSet<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node {
            literal: HashMap::new(),
            star: None,
            hash: None,
            absorbs_words: false,
            values: HashSet::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_prunable(&self) -> bool {
        self.values.is_empty()
            && self.literal.is_empty()
            && self.star.is_none()
            && self.hash.is_none()
    }
}

/// Which slot of the parent a pattern word lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Edge<'a> {
    Star,
    Hash,
    Literal(&'a str),
}

impl<'a> Edge<'a> {
    fn of(word: &'a str) -> Self {
        match word {
            "*" => Edge::Star,
            "#" => Edge::Hash,
            _ => Edge::Literal(word),
        }
    }
}

/// Splits a key or pattern the way RabbitMQ does: `""` is zero words, otherwise every `.` splits.
fn words(key: &str) -> impl Iterator<Item = &str> {
    (!key.is_empty())
        .then(|| key.split('.'))
        .into_iter()
        .flatten()
}

/// Reused state sets of the matcher; see `for_each_match`.
struct Scratch {
    current: Vec<usize>,
    next: Vec<usize>,
}

impl Scratch {
    const fn new() -> Self {
        Scratch {
            current: Vec::new(),
            next: Vec::new(),
        }
    }

    fn trim(&mut self) {
        for states in [&mut self.current, &mut self.next] {
            states.clear();
            states.shrink_to(SCRATCH_RETAINED_STATES_MAX);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch::new()) };
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        TopicTrie {
            nodes: vec![Node::default()],
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone + Eq + Hash> TopicTrie<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (pattern, value) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns false if this (pattern, value) pair was already present.
    pub fn insert(&mut self, pattern: &str, value: T) -> bool {
        let mut id = ROOT;
        for word in words(pattern) {
            id = self.child_or_create(id, Edge::of(word));
        }
        let added = self.nodes[id].values.insert(value);
        if added {
            self.len += 1;
        }
        added
    }

    /// Returns false if it was not present. Prunes empty trie nodes so memory does not leak
    /// across bind/unbind churn.
    pub fn remove(&mut self, pattern: &str, value: &T) -> bool {
        // (parent, edge) for every word, so pruning can walk back up without parent pointers.
        let mut path: Vec<(usize, Edge<'_>)> = Vec::new();
        let mut id = ROOT;
        for word in words(pattern) {
            let edge = Edge::of(word);
            match self.child(id, edge) {
                Some(child) => {
                    path.push((id, edge));
                    id = child;
                }
                None => return false,
            }
        }
        if !self.nodes[id].values.remove(value) {
            return false;
        }
        self.len -= 1;
        self.prune(id, &path);
        true
    }

    /// Calls `out` once for every value bound with a pattern matching `routing_key`. A value bound
    /// through several matching patterns is reported once per pattern: the caller deduplicates.
    pub fn for_each_match(&self, routing_key: &str, mut out: impl FnMut(&T)) {
        let used = SCRATCH.try_with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                self.match_into(routing_key, &mut scratch, &mut out);
                scratch.trim();
                true
            }
            // `out` itself matched against a trie on this thread: fall back to a fresh scratch.
            Err(_) => false,
        });
        if !matches!(used, Ok(true)) {
            self.match_into(routing_key, &mut Scratch::new(), &mut out);
        }
    }

    /// The NFA simulation: `current` holds each node whose pattern prefix matches the words seen
    /// so far, exactly once, closed over `#` children (a `#` may match zero words).
    fn match_into(&self, routing_key: &str, scratch: &mut Scratch, out: &mut impl FnMut(&T)) {
        let Scratch { current, next } = scratch;
        current.clear();
        current.push(ROOT);
        self.close_over_hash(current);
        for word in words(routing_key) {
            next.clear();
            for &id in current.iter() {
                self.step(id, word, next);
            }
            if next.is_empty() {
                return;
            }
            self.close_over_hash(next);
            std::mem::swap(current, next);
        }
        for &id in current.iter() {
            self.nodes[id].values.iter().for_each(&mut *out);
        }
    }

    /// Pushes the states `id` moves to on consuming `word`. Each target has `id` as its only
    /// predecessor (it is `id`'s child, or `id` itself), so a duplicate-free `current` yields a
    /// duplicate-free result: no node is visited twice for one word.
    fn step(&self, id: usize, word: &str, next: &mut Vec<usize>) {
        let node = &self.nodes[id];
        if let Some(&child) = node.literal.get(word) {
            next.push(child);
        }
        if let Some(child) = node.star {
            next.push(child);
        }
        if node.absorbs_words {
            next.push(id);
        }
    }

    /// Adds the `#` children (and their `#` children, ...) of every state, without duplicates.
    ///
    /// A `#` chain from state A can only meet another state B if B lies further down the same
    /// chain (each node has one parent). Stopping the walk at the first node already in the set
    /// therefore never adds a node twice, and keeps `#.#.#.#...` linear instead of quadratic.
    fn close_over_hash(&self, states: &mut Vec<usize>) {
        states.sort_unstable();
        let base = states.len();
        for i in 0..base {
            let mut at = states[i];
            while let Some(child) = self.nodes[at].hash {
                if states[..base].binary_search(&child).is_ok() {
                    break;
                }
                states.push(child);
                at = child;
            }
        }
    }

    fn child(&self, id: usize, edge: Edge<'_>) -> Option<usize> {
        let node = &self.nodes[id];
        match edge {
            Edge::Star => node.star,
            Edge::Hash => node.hash,
            Edge::Literal(word) => node.literal.get(word).copied(),
        }
    }

    fn child_or_create(&mut self, id: usize, edge: Edge<'_>) -> usize {
        if let Some(child) = self.child(id, edge) {
            return child;
        }
        let child = self.alloc_node(edge == Edge::Hash);
        let node = &mut self.nodes[id];
        match edge {
            Edge::Star => node.star = Some(child),
            Edge::Hash => node.hash = Some(child),
            Edge::Literal(word) => {
                node.literal.insert(word.into(), child);
            }
        }
        child
    }

    fn alloc_node(&mut self, absorbs_words: bool) -> usize {
        let node = Node {
            absorbs_words,
            ..Node::default()
        };
        match self.free.pop() {
            Some(id) => {
                self.nodes[id] = node;
                id
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        }
    }

    /// Frees `id` and its ancestors while they hold no values and no children.
    fn prune(&mut self, mut id: usize, path: &[(usize, Edge<'_>)]) {
        for &(parent, edge) in path.iter().rev() {
            if !self.nodes[id].is_prunable() {
                return;
            }
            // Drop the node's maps now rather than when the slot is reused.
            self.nodes[id] = Node::default();
            self.free.push(id);
            let node = &mut self.nodes[parent];
            match edge {
                Edge::Star => node.star = None,
                Edge::Hash => node.hash = None,
                Edge::Literal(word) => {
                    node.literal.remove(word);
                    let capacity = node.literal.capacity();
                    if capacity > LITERAL_SHRINK_CAPACITY_MIN
                        && node.literal.len() * LITERAL_SHRINK_RATIO < capacity
                    {
                        node.literal.shrink_to_fit();
                    }
                }
            }
            id = parent;
        }
        if self.is_empty() && self.nodes.len() > 1 {
            // Last binding gone: hand the whole arena back instead of keeping a free list of it.
            *self = Self::default();
        }
    }

    /// Nodes in use, root included; the pruning tests check this returns to 1.
    #[cfg(test)]
    fn live_nodes(&self) -> usize {
        self.nodes.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn matches(trie: &TopicTrie<u32>, key: &str) -> BTreeSet<u32> {
        let mut found = BTreeSet::new();
        trie.for_each_match(key, |&v| {
            found.insert(v);
        });
        found
    }

    fn trie_of(patterns: &[&str]) -> TopicTrie<u32> {
        let mut trie = TopicTrie::new();
        for (i, pattern) in patterns.iter().enumerate() {
            assert!(trie.insert(pattern, i as u32));
        }
        trie
    }

    /// Does `pattern` alone match `key`?
    fn single(pattern: &str, key: &str) -> bool {
        !matches(&trie_of(&[pattern]), key).is_empty()
    }

    /// Reference matcher: plain backtracking over RabbitMQ's word split, written independently.
    fn naive(pattern: &[&str], key: &[&str]) -> bool {
        match pattern.split_first() {
            None => key.is_empty(),
            Some((&"#", rest)) => (0..=key.len()).any(|skip| naive(rest, &key[skip..])),
            Some((&"*", rest)) => !key.is_empty() && naive(rest, &key[1..]),
            Some((word, rest)) => key.first() == Some(word) && naive(rest, &key[1..]),
        }
    }

    fn split(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }

    #[test]
    fn rabbitmq_topic_matching_table_is_reproduced() {
        // The binding set and expectations of RabbitMQ's topic exchange matching test.
        let patterns = [
            "a.b.c",
            "a.*.c",
            "a.#.b",
            "a.b.b.c",
            "#",
            "#.#",
            "#.b",
            "*.*",
            "a.*",
            "*.b.c",
            "a.#",
            "a.#.#",
            "b.b.c",
            "a.b.b",
            "a.b",
            "b.c",
            "",
            "*.*.*",
            "vodka.martini",
            "a.b.c",
            "*.#",
            "#.*.#",
            "*.#.#",
            "#.#.#",
            "*",
            "#.b.#",
        ];
        let trie = trie_of(&patterns);
        let expect: [(&str, &[u32]); 11] = [
            (
                "a.b.c",
                &[1, 2, 5, 6, 10, 11, 12, 18, 20, 21, 22, 23, 24, 26],
            ),
            ("a.b", &[3, 5, 6, 7, 8, 9, 11, 12, 15, 21, 22, 23, 24, 26]),
            ("a.b.b", &[3, 5, 6, 7, 11, 12, 14, 18, 21, 22, 23, 24, 26]),
            ("", &[5, 6, 17, 24]),
            ("b.c.c", &[5, 6, 18, 21, 22, 23, 24, 26]),
            ("a.a.a.a.a", &[5, 6, 11, 12, 21, 22, 23, 24]),
            ("vodka.gin", &[5, 6, 8, 21, 22, 23, 24]),
            ("vodka.martini", &[5, 6, 8, 19, 21, 22, 23, 24]),
            ("b.b.c", &[5, 6, 10, 13, 18, 21, 22, 23, 24, 26]),
            ("nothing.here.at.all", &[5, 6, 21, 22, 23, 24]),
            ("oneword", &[5, 6, 21, 22, 23, 24, 25]),
        ];
        for (key, tags) in expect {
            // The RabbitMQ table names bindings t1..t26; our values are 0-based.
            let want: BTreeSet<u32> = tags.iter().map(|t| t - 1).collect();
            assert_eq!(matches(&trie, key), want, "key {key:?}");
        }
    }

    #[test]
    fn hash_matches_zero_words() {
        assert!(single("#", ""));
        assert!(single("a.#", "a"));
        assert!(single("#.a", "a"));
        assert!(single("a.#.b", "a.b"));
        assert!(single("#.#.#", ""));
    }

    #[test]
    fn hash_matches_many_words() {
        assert!(single("#", "a.b.c"));
        assert!(single("a.#", "a.b.c"));
        assert!(single("#.a", "x.y.a"));
        assert!(!single("#.a", "a.x"));
        assert!(single("a.#.b.#.c", "a.x.b.y.z.c"));
        assert!(!single("a.#", "b.a"));
    }

    #[test]
    fn star_needs_exactly_one_word() {
        assert!(single("*", "a"));
        assert!(!single("*", "a.b"));
        assert!(!single("a.*", "a"));
        assert!(single("a.*.#", "a.b"));
        assert!(single("a.*.#", "a.b.c.d"));
        assert!(!single("a.*.#", "a"));
        assert!(single("*.#", "a"));
        assert!(!single("*.#", ""));
    }

    #[test]
    fn empty_key_is_zero_words() {
        assert!(!single("*", ""));
        assert!(single("", ""));
        assert!(!single("", "a"));
        assert!(!single("a", ""));
        assert!(!single("#.*", ""));
    }

    #[test]
    fn empty_words_are_words() {
        assert!(single("a..b", "a..b"));
        assert!(single("a.*.b", "a..b"));
        assert!(!single("a.b", "a..b"));
        assert!(single("*.*", "."));
        assert!(!single("*", "."));
        assert!(single(".", "."));
        assert!(!single(".", ""));
        assert!(single("a.*.#", "a."));
        assert!(single("a.#", "a."));
        assert!(single("#.a", ".a"));
        assert!(!single("a", "a."));
    }

    #[test]
    fn wildcards_are_whole_words_only() {
        assert!(!single("a*", "ab"));
        assert!(single("a*", "a*"));
        assert!(!single("#a", "xa"));
        // A `*` or `#` in a routing key is an ordinary word.
        assert!(single("*", "#"));
        assert!(!single("a", "*"));
        assert!(single("#", "*.#"));
    }

    #[test]
    fn value_bound_via_several_patterns_is_reported_per_pattern() {
        let mut trie = TopicTrie::new();
        assert!(trie.insert("a.*", 7u32));
        assert!(trie.insert("#", 7u32));
        let mut seen = Vec::new();
        trie.for_each_match("a.b", |&v| seen.push(v));
        assert_eq!(seen, vec![7, 7]);
    }

    #[test]
    fn insert_is_idempotent() {
        let mut trie = TopicTrie::new();
        assert!(trie.insert("a.#", 1u32));
        assert!(!trie.insert("a.#", 1u32));
        assert!(trie.insert("a.#", 2u32));
        assert!(trie.insert("a.*", 1u32));
        assert_eq!(trie.len(), 3);
        assert_eq!(matches(&trie, "a.b"), BTreeSet::from([1, 2]));
    }

    #[test]
    fn remove_is_idempotent() {
        let mut trie = trie_of(&["a.#", "a.*"]);
        assert!(trie.remove("a.#", &0));
        assert!(!trie.remove("a.#", &0));
        assert!(!trie.remove("a.*", &0));
        assert!(!trie.remove("nope.x", &1));
        assert!(!trie.remove("", &1));
        assert_eq!(trie.len(), 1);
        assert_eq!(matches(&trie, "a.b"), BTreeSet::from([1]));
        assert_eq!(matches(&trie, "a"), BTreeSet::new());
    }

    #[test]
    fn remove_prunes_nodes() {
        let mut trie = TopicTrie::new();
        trie.insert("a.b.c", 1u32);
        trie.insert("a.b", 2u32);
        trie.insert("a.*.#.#", 3u32);
        let full = trie.live_nodes();
        assert!(trie.remove("a.b.c", &1));
        assert_eq!(
            trie.live_nodes(),
            full - 1,
            "only c goes; a.b still holds a value"
        );
        assert!(trie.remove("a.*.#.#", &3));
        assert_eq!(trie.live_nodes(), 3, "root, a, a.b");
        assert!(trie.remove("a.b", &2));
        assert_eq!(trie.live_nodes(), 1);
        assert!(trie.is_empty());
    }

    #[test]
    fn bind_unbind_churn_does_not_grow_the_arena() {
        let mut trie = TopicTrie::new();
        trie.insert("keep.#", 0u32);
        for round in 0..100u32 {
            for i in 0..50u32 {
                trie.insert(&format!("r{round}.{i}.*.#"), i);
            }
            for i in 0..50u32 {
                assert!(trie.remove(&format!("r{round}.{i}.*.#"), &i));
            }
        }
        assert_eq!(trie.live_nodes(), 3);
        assert!(
            trie.nodes.len() <= 3 + 50 * 4,
            "arena bounded by peak live nodes"
        );
        let root_capacity = trie.nodes[ROOT].literal.capacity();
        assert!(
            root_capacity <= LITERAL_SHRINK_CAPACITY_MIN * LITERAL_SHRINK_RATIO,
            "{root_capacity}"
        );
    }

    #[test]
    fn pathological_hash_patterns_finish() {
        // Backtracking would take exponential time here: every `#` can split 255 words many ways.
        let mut trie = TopicTrie::new();
        let mut pattern = String::from("#");
        for depth in 0..100u32 {
            trie.insert(&pattern, depth);
            trie.insert(&format!("{pattern}.x"), 1000 + depth);
            trie.insert(&format!("{pattern}.*.a"), 2000 + depth);
            pattern.push_str(".#");
        }
        let key = vec!["a"; 255].join(".");
        for _ in 0..20 {
            let found = matches(&trie, &key);
            assert!(found.contains(&99) && found.contains(&2099) && !found.contains(&1000));
        }
        let dots = ".".repeat(254);
        assert!(matches(&trie, &dots).contains(&0));
    }

    #[test]
    fn reentrant_match_from_callback_works() {
        let outer = trie_of(&["a.#", "#"]);
        let inner = trie_of(&["*"]);
        let mut inner_hits = 0;
        outer.for_each_match("a", |_| inner.for_each_match("x", |_| inner_hits += 1));
        assert_eq!(inner_hits, 2);
    }

    fn word() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "", "*", "#"])
    }

    fn dotted(max_words: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(word(), 0..max_words).prop_map(|w| w.join("."))
    }

    proptest! {
        #[test]
        fn matches_agree_with_naive_matcher(
            bindings in prop::collection::vec((dotted(6), 0u32..8), 0..24),
            removals in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            keys in prop::collection::vec(dotted(7), 1..8),
        ) {
            let mut trie = TopicTrie::new();
            let mut model: HashSet<(String, u32)> = HashSet::new();
            for (pattern, value) in &bindings {
                let fresh = model.insert((pattern.clone(), *value));
                prop_assert_eq!(trie.insert(pattern, *value), fresh);
            }
            for index in removals {
                if bindings.is_empty() { break; }
                let (pattern, value) = index.get(&bindings);
                let present = model.remove(&(pattern.clone(), *value));
                prop_assert_eq!(trie.remove(pattern, value), present);
            }
            prop_assert_eq!(trie.len(), model.len());
            for key in &keys {
                let want: BTreeSet<u32> = model
                    .iter()
                    .filter(|(p, _)| naive(&split(p), &split(key)))
                    .map(|(_, v)| *v)
                    .collect();
                prop_assert_eq!(matches(&trie, key), want, "key {:?}", key);
            }
            for (pattern, value) in &model {
                prop_assert!(trie.remove(pattern, value));
            }
            prop_assert_eq!(trie.live_nodes(), 1);
        }
    }
}
