//! A virtual host: a namespace of exchanges, queues and bindings.
//!
//! Lock order (never take an earlier one while holding a later one):
//! `definitions` → `exchanges` / `queues` → an exchange's routes.
//! `definitions` serializes every change of topology so that multi-step changes (declare
//! and bind, delete and unbind, auto-delete) are atomic with respect to each other; the
//! publish path never takes it, only read locks on the maps and on one exchange's routes.

mod bindings;
mod declare;
mod equivalence;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use ferrymq_wire::{FieldTable, ShortStr};
use parking_lot::{Mutex, MutexGuard, RwLock};
use smallvec::SmallVec;

use crate::definitions::{BindingDefinition, Definition};
use crate::error::{BrokerError, Result};
use crate::exchange::{Destination, Exchange, ExchangeConfig, ExchangeType};
use crate::queue::QueueHandle;
use crate::storage::BrokerStorage;

use bindings::Definitions;
pub use bindings::DestinationName;

/// Exchanges one publish may traverse through exchange-to-exchange bindings and alternate
/// exchanges; a bound on the work a topology (even a cyclic one) can cause per message.
pub const ROUTE_EXCHANGES_VISITED_MAX: usize = 64;

pub struct VHost {
    name: Arc<str>,
    exchanges: RwLock<HashMap<ShortStr, Arc<Exchange>>>,
    queues: RwLock<HashMap<ShortStr, Arc<QueueHandle>>>,
    /// Taken through [`VHost::lock_definitions`], which bumps `topology_generation`.
    definitions: Mutex<Definitions>,
    /// Bumped as every holder of the `definitions` lock lets it go, after any change of
    /// exchanges, queues or bindings. A publisher may reuse a routing result for as long as
    /// this stays the same (see [`VHost::route`]).
    topology_generation: AtomicU64,
    /// Where durable definitions and queues are kept; `None`: everything in memory.
    storage: Option<Arc<BrokerStorage>>,
    /// Direct reply-to consumers of this vhost, by the address handed out for them.
    pub direct_replies: crate::direct_reply::DirectReplies,
    /// For queue tasks, which need to remove themselves when they are deleted.
    this: Weak<VHost>,
    /// This vhost's policies, in the order configured (see [`crate::policy`]).
    policies: Vec<crate::policy::Policy>,
}

impl std::fmt::Debug for VHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VHost")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The exchanges every vhost has, as in RabbitMQ.
const PREDECLARED_EXCHANGES: [(&str, ExchangeType, bool); 7] = [
    ("", ExchangeType::Direct, false),
    ("amq.direct", ExchangeType::Direct, false),
    ("amq.fanout", ExchangeType::Fanout, false),
    ("amq.topic", ExchangeType::Topic, false),
    ("amq.headers", ExchangeType::Headers, false),
    ("amq.match", ExchangeType::Headers, false),
    ("amq.rabbitmq.trace", ExchangeType::Topic, true),
];

impl VHost {
    pub fn new(name: &str) -> Arc<VHost> {
        Self::with_storage(name, None)
    }

    /// A vhost whose durable definitions and queues are kept in `storage`.
    pub fn with_storage(name: &str, storage: Option<Arc<BrokerStorage>>) -> Arc<VHost> {
        Self::with_policies(name, storage, Vec::new())
    }

    /// A vhost whose queues and exchanges get their effective arguments from `policies`.
    pub fn with_policies(
        name: &str,
        storage: Option<Arc<BrokerStorage>>,
        policies: Vec<crate::policy::Policy>,
    ) -> Arc<VHost> {
        let vhost = Arc::new_cyclic(|this| VHost {
            name: Arc::from(name),
            storage,
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            definitions: Mutex::new(Definitions::default()),
            topology_generation: AtomicU64::new(0),
            direct_replies: Default::default(),
            this: this.clone(),
            policies,
        });
        {
            let mut exchanges = vhost.exchanges.write();
            for (name, kind, internal) in PREDECLARED_EXCHANGES {
                let config = ExchangeConfig {
                    kind,
                    durable: true,
                    auto_delete: false,
                    internal,
                    arguments: FieldTable::new(),
                };
                let name = ShortStr::from(name);
                let arguments = vhost.effective_exchange_arguments(&name, &config.arguments);
                let exchange = Exchange::with_arguments(name.clone(), config, arguments);
                exchanges.insert(name, Arc::new(exchange));
            }
        }
        vhost
    }

    /// The `definitions` lock, for any change of topology (see `topology_generation`).
    fn lock_definitions(&self) -> DefinitionsGuard<'_> {
        DefinitionsGuard {
            definitions: self.definitions.lock(),
            generation: &self.topology_generation,
        }
    }

    /// Changes whenever the topology may have changed: a routing result computed after
    /// reading this stays right while it reads the same.
    pub fn topology_generation(&self) -> u64 {
        self.topology_generation.load(Ordering::Acquire)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn storage(&self) -> Option<&Arc<BrokerStorage>> {
        self.storage.as_ref()
    }

    /// Appends a durable change to the definitions log (callers hold `definitions`, so
    /// the log sees changes in the order they happened).
    fn record(&self, definition: impl FnOnce(ShortStr) -> Definition) {
        if let Some(storage) = &self.storage {
            storage.record(&definition(ShortStr::from(&*self.name)));
        }
    }

    fn record_binding(
        &self,
        bound: bool,
        source: &Exchange,
        destination: &Destination,
        routing_key: &ShortStr,
        arguments: &FieldTable,
    ) {
        let durable_destination = match destination {
            Destination::Queue(q) => q.config.durable,
            Destination::Exchange(x) => x.config.durable,
        };
        if !(source.config.durable && durable_destination) {
            return;
        }
        self.record(|vhost| {
            let binding = BindingDefinition {
                vhost,
                source: source.name.clone(),
                destination: bindings::destination_name(destination),
                routing_key: routing_key.clone(),
                arguments: arguments.clone(),
            };
            if bound {
                Definition::Binding(binding)
            } else {
                Definition::Unbinding(binding)
            }
        });
    }

    /// A queue's declared arguments merged with the policy that applies to it.
    pub(crate) fn effective_queue_arguments(
        &self,
        queue: &str,
        declared: &FieldTable,
    ) -> FieldTable {
        use crate::policy::{applicable, effective_arguments, Target};
        let policy = applicable(&self.policies, &self.name, Target::Queue, queue);
        effective_arguments(policy, Target::Queue, declared)
    }

    /// An exchange's declared arguments merged with the policy that applies to it.
    pub(crate) fn effective_exchange_arguments(
        &self,
        exchange: &str,
        declared: &FieldTable,
    ) -> FieldTable {
        use crate::policy::{applicable, effective_arguments, Target};
        let policy = applicable(&self.policies, &self.name, Target::Exchange, exchange);
        effective_arguments(policy, Target::Exchange, declared)
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    /// Looks up an exchange by name; `amq.default` is RabbitMQ's alias for the default one.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        let name = if name == "amq.default" { "" } else { name };
        self.exchanges.read().get(name).cloned()
    }

    pub fn exchange_or_404(&self, name: &str) -> Result<Arc<Exchange>> {
        self.exchange(name)
            .ok_or_else(|| BrokerError::no_exchange(name, &self.name))
    }

    pub fn queue(&self, name: &str) -> Option<Arc<QueueHandle>> {
        self.queues.read().get(name).cloned()
    }

    pub fn queue_or_404(&self, name: &str) -> Result<Arc<QueueHandle>> {
        self.queue(name)
            .ok_or_else(|| BrokerError::no_queue(name, &self.name))
    }

    pub fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    pub fn exchange_names(&self) -> Vec<ShortStr> {
        self.exchanges.read().keys().cloned().collect()
    }

    /// Finds every queue a message published to `exchange` reaches, following
    /// exchange-to-exchange bindings and alternate exchanges. `keys` holds the routing key
    /// first, then any CC/BCC keys. Each queue appears once in `out`. A deduplication
    /// exchange on the way asks `dedup` whether the message passes; one it drops is neither
    /// routed further nor sent to an alternate exchange (see [`crate::dedup`]).
    ///
    /// Returns whether the result depends on nothing but `exchange`, `keys`, `headers` and
    /// the topology: false once a deduplication exchange was asked about this message.
    pub fn route(
        &self,
        exchange: &Arc<Exchange>,
        keys: &[&str],
        headers: Option<&FieldTable>,
        out: &mut Vec<Arc<QueueHandle>>,
        dedup: &mut crate::dedup::DedupProbe<'_>,
    ) -> bool {
        let mut pure = true;
        let mut pending: SmallVec<[Arc<Exchange>; 4]> = SmallVec::new();
        let mut visited: SmallVec<[usize; 8]> = SmallVec::new();
        pending.push(Arc::clone(exchange));
        while let Some(x) = pending.pop() {
            let address = Arc::as_ptr(&x) as usize;
            if visited.contains(&address) || visited.len() >= ROUTE_EXCHANGES_VISITED_MAX {
                continue;
            }
            visited.push(address);
            if let Some(cache) = &x.dedup {
                pure = false;
                if dedup.drops(cache) {
                    continue;
                }
            }
            let found_before = out.len() + pending.len();
            if x.is_default() {
                let queues = self.queues.read();
                out.extend(keys.iter().filter_map(|key| queues.get(*key).cloned()));
            } else {
                let routes = x.routes().read();
                for key in keys {
                    routes.route(key, headers, &mut |destination| match destination {
                        Destination::Queue(q) => out.push(Arc::clone(q)),
                        Destination::Exchange(next) => pending.push(Arc::clone(next)),
                    });
                }
            }
            if out.len() + pending.len() == found_before {
                if let Some(alternate) = x.alternate.as_deref().and_then(|name| self.exchange(name))
                {
                    pending.push(alternate);
                }
            }
        }
        dedup_by_address(out);
        pure
    }
}

/// The `definitions` lock; letting it go bumps the topology generation, after whatever
/// its holder changed (a holder that changed nothing costs routing caches one miss).
struct DefinitionsGuard<'a> {
    definitions: MutexGuard<'a, Definitions>,
    generation: &'a AtomicU64,
}

impl std::ops::Deref for DefinitionsGuard<'_> {
    type Target = Definitions;
    fn deref(&self) -> &Definitions {
        &self.definitions
    }
}

impl std::ops::DerefMut for DefinitionsGuard<'_> {
    fn deref_mut(&mut self) -> &mut Definitions {
        &mut self.definitions
    }
}

impl Drop for DefinitionsGuard<'_> {
    fn drop(&mut self) {
        // Release: whoever reads the new generation also sees the changes made under it.
        self.generation.fetch_add(1, Ordering::Release);
    }
}

fn dedup_by_address(queues: &mut Vec<Arc<QueueHandle>>) {
    if queues.len() > 1 {
        queues.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}
