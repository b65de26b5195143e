//! Exchanges: where publishes are routed to queues and other exchanges.
//!
//! The truth about bindings lives in the vhost's definitions (see [`crate::vhost`]); each
//! exchange keeps a routing index derived from it behind a read-mostly lock, so publishers on
//! many connections route in parallel and only bind/unbind take the write side.

pub mod delayed;
mod delayed_store;
pub mod direct;
pub mod fanout;
pub mod headers;
pub mod topic;
pub mod topic_trie;

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ferrymq_wire::{FieldTable, FieldValue, ShortStr};
use parking_lot::RwLock;

use crate::error::{BrokerError, Result};
use crate::queue::QueueHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-message-deduplication` (the rabbitmq-message-deduplication plugin): fanout
    /// routing behind a cache of the keys already seen (see [`crate::dedup`]).
    Deduplication,
    /// `x-delayed-message` (RabbitMQ's delayed-message plugin): holds messages with an
    /// `x-delay` header, then routes them like its `x-delayed-type` (see [`delayed`]).
    Delayed,
}

impl ExchangeType {
    /// Parses a declared type; RabbitMQ closes the connection (503) for an unknown one.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "direct" => Ok(ExchangeType::Direct),
            "fanout" => Ok(ExchangeType::Fanout),
            "topic" => Ok(ExchangeType::Topic),
            "headers" => Ok(ExchangeType::Headers),
            crate::dedup::EXCHANGE_TYPE => Ok(ExchangeType::Deduplication),
            delayed::EXCHANGE_TYPE => Ok(ExchangeType::Delayed),
            other => Err(BrokerError::command_invalid(format!(
                "unknown exchange type '{other}'"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            ExchangeType::Headers => "headers",
            ExchangeType::Deduplication => crate::dedup::EXCHANGE_TYPE,
            ExchangeType::Delayed => delayed::EXCHANGE_TYPE,
        }
    }
}

/// The properties an exchange is declared with; compared for equivalence on redeclare.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeConfig {
    pub kind: ExchangeType,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

/// Where a binding leads. Identity is the object, not the name: a queue deleted and
/// redeclared under the same name is a different destination (its bindings went with it).
#[derive(Debug, Clone)]
pub enum Destination {
    Queue(Arc<QueueHandle>),
    Exchange(Arc<Exchange>),
}

impl Destination {
    fn address(&self) -> usize {
        match self {
            Destination::Queue(q) => Arc::as_ptr(q) as usize,
            Destination::Exchange(x) => Arc::as_ptr(x) as usize,
        }
    }
}

impl PartialEq for Destination {
    fn eq(&self, other: &Self) -> bool {
        self.address() == other.address()
    }
}
impl Eq for Destination {}
impl Hash for Destination {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.address().hash(state);
    }
}

/// The per-type routing index of one exchange.
#[derive(Debug)]
pub enum Routes {
    Direct(direct::DirectRoutes),
    Fanout(fanout::FanoutRoutes),
    Topic(topic::TopicRoutes),
    Headers(headers::HeadersRoutes),
}

impl Routes {
    fn new(kind: ExchangeType) -> Self {
        match kind {
            ExchangeType::Direct => Routes::Direct(Default::default()),
            ExchangeType::Fanout | ExchangeType::Deduplication => {
                Routes::Fanout(Default::default())
            }
            ExchangeType::Topic => Routes::Topic(Default::default()),
            ExchangeType::Headers => Routes::Headers(Default::default()),
            // Never asked for: `Exchange::new` builds a delayed exchange's routes from its
            // `x-delayed-type`; routing like direct keeps this total.
            ExchangeType::Delayed => Routes::Direct(Default::default()),
        }
    }

    /// Adds one binding. The vhost has already checked that it is new.
    pub fn bind(
        &mut self,
        destination: Destination,
        routing_key: &ShortStr,
        arguments: &FieldTable,
    ) {
        match self {
            Routes::Direct(r) => r.bind(destination, routing_key),
            Routes::Fanout(r) => r.bind(destination),
            Routes::Topic(r) => r.bind(destination, routing_key),
            Routes::Headers(r) => r.bind(destination, arguments),
        }
    }

    pub fn unbind(
        &mut self,
        destination: &Destination,
        routing_key: &ShortStr,
        arguments: &FieldTable,
    ) {
        match self {
            Routes::Direct(r) => r.unbind(destination, routing_key),
            Routes::Fanout(r) => r.unbind(destination),
            Routes::Topic(r) => r.unbind(destination, routing_key),
            Routes::Headers(r) => r.unbind(destination, arguments),
        }
    }

    /// Calls `out` for each destination matching; may repeat a destination.
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut impl FnMut(&Destination),
    ) {
        match self {
            Routes::Direct(r) => r.route(routing_key, out),
            Routes::Fanout(r) => r.route(out),
            Routes::Topic(r) => r.route(routing_key, out),
            Routes::Headers(r) => r.route(headers, out),
        }
    }
}

#[derive(Debug)]
pub struct Exchange {
    pub name: ShortStr,
    /// As declared: what redeclare equivalence compares.
    pub config: ExchangeConfig,
    /// The arguments in force: the declared ones merged with any matching policy.
    pub arguments: FieldTable,
    /// The `alternate-exchange` argument: where messages go that this exchange cannot route.
    pub alternate: Option<ShortStr>,
    routes: RwLock<Routes>,
    deleted: AtomicBool,
    /// The cache of a deduplication exchange.
    pub dedup: Option<Arc<crate::dedup::ExchangeDedup>>,
    /// The scheduler of an `x-delayed-message` exchange, set once right after creation.
    delayed: std::sync::OnceLock<delayed::DelayedHandle>,
}

impl Exchange {
    pub fn new(name: ShortStr, config: ExchangeConfig) -> Self {
        let arguments = config.arguments.clone();
        Self::with_arguments(name, config, arguments)
    }

    /// An exchange running with `arguments` (declared merged with policy, see
    /// [`crate::policy`]) rather than its declared ones.
    pub fn with_arguments(name: ShortStr, config: ExchangeConfig, arguments: FieldTable) -> Self {
        let alternate = arguments
            .get("alternate-exchange")
            .and_then(|v| v.as_str())
            .map(ShortStr::from);
        Exchange {
            name,
            routes: RwLock::new(Routes::new(delayed::routing_kind(&config))),
            config,
            arguments,
            alternate,
            deleted: AtomicBool::new(false),
            dedup: None,
            delayed: std::sync::OnceLock::new(),
        }
    }

    /// Gives a deduplication exchange its cache (opened by the vhost, which knows where).
    pub fn with_dedup(mut self, dedup: Option<crate::dedup::ExchangeDedup>) -> Self {
        self.dedup = dedup.map(Arc::new);
        self
    }

    /// Checks a new binding's arguments against the exchange type's rules, before anything
    /// changes (RabbitMQ's `validate_binding` callback).
    pub fn validate_binding(&self, arguments: &FieldTable) -> Result<()> {
        match delayed::routing_kind(&self.config) {
            ExchangeType::Headers => headers::validate_binding(arguments),
            ExchangeType::Direct
            | ExchangeType::Fanout
            | ExchangeType::Topic
            | ExchangeType::Deduplication => Ok(()),
            ExchangeType::Delayed => Ok(()),
        }
    }

    pub fn kind(&self) -> ExchangeType {
        self.config.kind
    }

    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
        if let Some(delayed) = self.delayed.get() {
            delayed.exchange_deleted();
        }
    }

    /// The scheduler of an `x-delayed-message` exchange (`None` for other types).
    pub fn delayed(&self) -> Option<&delayed::DelayedHandle> {
        self.delayed.get()
    }

    /// Messages held by this `x-delayed-message` exchange until their time (0 for other
    /// types); one atomic load, for management and metrics.
    pub fn delayed_messages(&self) -> u64 {
        self.delayed
            .get()
            .map_or(0, delayed::DelayedHandle::pending)
    }

    pub(crate) fn routes(&self) -> &RwLock<Routes> {
        &self.routes
    }
}

/// RabbitMQ's names for field types, as its error messages print them.
pub(crate) fn field_type_name(value: &FieldValue) -> &'static str {
    match value {
        FieldValue::Bool(_) => "bool",
        FieldValue::I8(_) => "byte",
        FieldValue::U8(_) => "unsignedbyte",
        FieldValue::I16(_) => "short",
        FieldValue::U16(_) => "unsignedshort",
        FieldValue::I32(_) => "signedint",
        FieldValue::U32(_) => "unsignedint",
        FieldValue::I64(_) => "long",
        FieldValue::F32(_) => "float",
        FieldValue::F64(_) => "double",
        FieldValue::Decimal { .. } => "decimal",
        FieldValue::LongStr(_) => "longstr",
        FieldValue::Bytes(_) => "binary",
        FieldValue::Array(_) => "array",
        FieldValue::Timestamp(_) => "timestamp",
        FieldValue::Table(_) => "table",
        FieldValue::Void => "void",
    }
}
