//! Topic exchange: binding keys are patterns of dot-separated words, `*` for exactly one
//! word and `#` for zero or more; matching is done by [`TopicTrie`] so its cost follows
//! the routing key, not the number of bindings.

use std::collections::HashMap;

use ferrymq_wire::ShortStr;

use super::topic_trie::TopicTrie;
use super::Destination;

#[derive(Debug, Default)]
pub struct TopicRoutes {
    trie: TopicTrie<Destination>,
    /// Bindings per (pattern, destination): the trie holds a pair once, but a destination
    /// may be bound with the same pattern under several argument tables.
    counts: HashMap<(ShortStr, Destination), u32>,
}

impl TopicRoutes {
    pub fn bind(&mut self, destination: Destination, pattern: &ShortStr) {
        let count = self
            .counts
            .entry((pattern.clone(), destination.clone()))
            .or_insert(0);
        *count += 1;
        if *count == 1 {
            self.trie.insert(pattern, destination);
        }
    }

    pub fn unbind(&mut self, destination: &Destination, pattern: &ShortStr) {
        let key = (pattern.clone(), destination.clone());
        let Some(count) = self.counts.get_mut(&key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.counts.remove(&key);
            self.trie.remove(pattern, destination);
        }
    }

    pub fn route(&self, routing_key: &str, out: &mut impl FnMut(&Destination)) {
        self.trie.for_each_match(routing_key, out);
    }
}
