//! The durable topology a definitions log describes: what is declared now, folded from the
//! log's commands, in the order to restore it (exchanges, then queues, then bindings, each in
//! the order it was last declared).
//!
//! The log is folded at start and at every compaction while running (see `storage`), so a
//! command must not cost a scan of everything declared: each kind is an ordered index, and a
//! declare, redeclare or delete costs O(log n). Deleting a queue or an exchange scans the
//! bindings once, to drop those that name it.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use bytes::Bytes;
use ferrymq_wire::ShortStr;

use crate::definitions::{BindingDefinition, Definition};
use crate::vhost::DestinationName;

/// (vhost, name)
type Name = (ShortStr, ShortStr);

#[derive(Debug, Default)]
pub struct Topology {
    exchanges: Declared<Name>,
    queues: Declared<Name>,
    /// Keyed by their encoding: a binding is all of its fields.
    bindings: Declared<Bytes>,
}

impl Topology {
    pub fn apply(&mut self, definition: Definition) {
        match definition {
            Definition::Exchange {
                ref vhost,
                ref name,
                ..
            } => self
                .exchanges
                .put((vhost.clone(), name.clone()), definition),
            Definition::ExchangeDeleted { vhost, name } => {
                self.exchanges.remove(&(vhost.clone(), name.clone()));
                let gone = DestinationName::Exchange(name.clone());
                self.bindings.retain(|d| {
                    !matches!(d, Definition::Binding(b)
                        if b.vhost == vhost && (b.source == name || b.destination == gone))
                });
            }
            Definition::Queue {
                ref vhost,
                ref name,
                ..
            } => self.queues.put((vhost.clone(), name.clone()), definition),
            Definition::QueueDeleted { vhost, name } => {
                self.queues.remove(&(vhost.clone(), name.clone()));
                let gone = DestinationName::Queue(name);
                self.bindings.retain(|d| {
                    !matches!(d, Definition::Binding(b) if b.vhost == vhost && b.destination == gone)
                });
            }
            Definition::Binding(binding) => {
                let key = binding_key(&binding);
                self.bindings
                    .put_if_absent(key, Definition::Binding(binding));
            }
            Definition::Unbinding(binding) => self.bindings.remove(&binding_key(&binding)),
        }
    }

    /// Every definition, exchanges first, then queues, then bindings.
    pub fn definitions(&self) -> Vec<Definition> {
        (self.exchanges.iter().map(|(_, d)| d.clone()))
            .chain(self.queues.iter().map(|(_, d)| d.clone()))
            .chain(self.bindings.iter().map(|(_, d)| d.clone()))
            .collect()
    }

    pub fn exchanges(&self) -> impl Iterator<Item = &(Name, Definition)> {
        self.exchanges.iter()
    }

    pub fn queues(&self) -> impl Iterator<Item = &(Name, Definition)> {
        self.queues.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty() && self.queues.is_empty() && self.bindings.is_empty()
    }
}

fn binding_key(binding: &BindingDefinition) -> Bytes {
    Definition::Binding(binding.clone()).encode()
}

/// Definitions of one kind by key, in the order they were last declared.
#[derive(Debug)]
struct Declared<K> {
    by_order: BTreeMap<u64, (K, Definition)>,
    order_of: HashMap<K, u64>,
    next: u64,
}

impl<K> Default for Declared<K> {
    fn default() -> Self {
        Declared {
            by_order: BTreeMap::new(),
            order_of: HashMap::new(),
            next: 0,
        }
    }
}

impl<K: Hash + Eq + Clone> Declared<K> {
    /// A redeclared key moves to the end with its latest definition.
    fn put(&mut self, key: K, definition: Definition) {
        self.remove(&key);
        self.order_of.insert(key.clone(), self.next);
        self.by_order.insert(self.next, (key, definition));
        self.next += 1;
    }

    /// A key declared already keeps its place.
    fn put_if_absent(&mut self, key: K, definition: Definition) {
        if !self.order_of.contains_key(&key) {
            self.put(key, definition);
        }
    }

    fn remove(&mut self, key: &K) {
        if let Some(at) = self.order_of.remove(key) {
            self.by_order.remove(&at);
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(&Definition) -> bool) {
        let gone: Vec<u64> = (self.by_order.iter())
            .filter(|(_, (_, definition))| !keep(definition))
            .map(|(at, _)| *at)
            .collect();
        for at in gone {
            if let Some((key, _)) = self.by_order.remove(&at) {
                self.order_of.remove(&key);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = &(K, Definition)> {
        self.by_order.values()
    }

    fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::ExchangeType;
    use ferrymq_wire::FieldTable;

    fn exchange(name: &str) -> Definition {
        Definition::Exchange {
            vhost: "/".into(),
            name: name.into(),
            kind: ExchangeType::Direct,
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        }
    }

    fn queue(name: &str) -> Definition {
        Definition::Queue {
            vhost: "/".into(),
            name: name.into(),
            auto_delete: false,
            arguments: FieldTable::new(),
        }
    }

    fn binding(source: &str, queue: &str) -> BindingDefinition {
        BindingDefinition {
            vhost: "/".into(),
            source: source.into(),
            destination: DestinationName::Queue(queue.into()),
            routing_key: "k".into(),
            arguments: FieldTable::new(),
        }
    }

    #[test]
    fn deleting_a_queue_or_exchange_drops_its_bindings_from_the_fold() {
        let mut t = Topology::default();
        for d in [exchange("x"), exchange("y"), queue("q1"), queue("q2")] {
            t.apply(d);
        }
        t.apply(Definition::Binding(binding("x", "q1")));
        t.apply(Definition::Binding(binding("y", "q2")));
        t.apply(Definition::Binding(binding("x", "q2")));
        t.apply(Definition::QueueDeleted {
            vhost: "/".into(),
            name: "q1".into(),
        });
        t.apply(Definition::ExchangeDeleted {
            vhost: "/".into(),
            name: "y".into(),
        });
        let left = t.definitions();
        assert_eq!(
            left,
            vec![
                exchange("x"),
                queue("q2"),
                Definition::Binding(binding("x", "q2"))
            ]
        );
    }

    #[test]
    fn redeclared_names_move_to_the_end_and_repeated_bindings_keep_their_place() {
        let mut t = Topology::default();
        for name in ["a", "b", "c"] {
            t.apply(queue(name));
        }
        t.apply(Definition::Binding(binding("x", "a")));
        t.apply(Definition::Binding(binding("x", "c")));
        t.apply(queue("a"));
        t.apply(Definition::Binding(binding("x", "a")));
        t.apply(Definition::QueueDeleted {
            vhost: "/".into(),
            name: "b".into(),
        });
        assert_eq!(
            t.definitions(),
            vec![
                queue("c"),
                queue("a"),
                Definition::Binding(binding("x", "a")),
                Definition::Binding(binding("x", "c")),
            ]
        );
    }

    #[test]
    fn unbinding_and_redeclaring_fold_to_the_last_state() {
        let mut t = Topology::default();
        t.apply(queue("q"));
        t.apply(exchange("x"));
        t.apply(Definition::Binding(binding("x", "q")));
        t.apply(Definition::Unbinding(binding("x", "q")));
        t.apply(queue("q"));
        assert_eq!(t.definitions(), vec![exchange("x"), queue("q")]);
    }
}
