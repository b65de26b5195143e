//! Declaring and deleting exchanges and queues, with RabbitMQ's checks and wording.

use std::sync::Arc;

use base64::Engine;
use ferrymq_wire::{FieldValue, ShortStr};

use super::bindings::{Definitions, DestinationName};
use super::equivalence::{check_exchange_equivalence, check_queue_equivalence};
use super::VHost;
use crate::client::ClientId;
use crate::definitions::Definition;
use crate::error::{BrokerError, Result};
use crate::exchange::{field_type_name, Exchange, ExchangeConfig};
use crate::queue::{QueueConfig, QueueCounts, QueueHandle};

/// Names starting with this are the broker's own (RabbitMQ reserves them too).
const RESERVED_PREFIX: &str = "amq.";

/// The outcome of queue.declare.
#[derive(Debug)]
pub struct QueueDeclared {
    pub queue: Arc<QueueHandle>,
    pub counts: QueueCounts,
    pub created: bool,
}

impl VHost {
    /// exchange.declare. `passive` only checks existence.
    pub fn declare_exchange(
        &self,
        name: &ShortStr,
        config: ExchangeConfig,
        passive: bool,
    ) -> Result<Arc<Exchange>> {
        if name.is_empty() {
            return Err(BrokerError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if passive {
            return self.exchange_or_404(name);
        }
        let _defs = self.lock_definitions();
        if let Some(existing) = self.exchange(name) {
            check_exchange_equivalence(&existing, &config, &self.name)?;
            return Ok(existing);
        }
        check_name("exchange", name)?;
        // Kept for the exchange's life: copies, not slices of a client's read buffer.
        let name = &name.detached();
        let config = ExchangeConfig {
            arguments: config.arguments.detached(),
            ..config
        };
        self.check_alternate_type(name, &config)?;
        crate::exchange::delayed::validate(&config)?;
        let dedup = self.open_dedup_cache(name, &config)?;
        let arguments = self.effective_exchange_arguments(name, &config.arguments);
        let exchange =
            Arc::new(Exchange::with_arguments(name.clone(), config, arguments).with_dedup(dedup));
        if exchange.config.durable {
            let c = &exchange.config;
            self.record(|vhost| Definition::Exchange {
                vhost,
                name: name.clone(),
                kind: c.kind,
                auto_delete: c.auto_delete,
                internal: c.internal,
                arguments: c.arguments.clone(),
            });
        }
        self.exchanges
            .write()
            .insert(name.clone(), Arc::clone(&exchange));
        if exchange.kind() == crate::exchange::ExchangeType::Delayed {
            if let Some(vhost) = self.this.upgrade() {
                crate::exchange::delayed::start(&vhost, &exchange);
            }
        }
        Ok(exchange)
    }

    /// An `alternate-exchange` argument must name an exchange (a longstr); RabbitMQ checks it
    /// on creation only (rabbit_misc:r_arg), and ignoring a mistyped one would silently drop
    /// the unroutable messages it was meant to catch.
    fn check_alternate_type(&self, name: &str, config: &ExchangeConfig) -> Result<()> {
        match config.arguments.get("alternate-exchange") {
            Some(value) if !matches!(value, FieldValue::LongStr(_)) => {
                Err(BrokerError::precondition_failed(format!(
                    "invalid type '{}' for arg 'alternate-exchange' in exchange '{name}' in vhost '{}'",
                    field_type_name(value),
                    self.name
                )))
            }
            _ => Ok(()),
        }
    }

    /// A deduplication exchange's cache: its arguments checked (406 as the plugin), kept on
    /// disk only for a durable exchange with `x-cache-persistence: disk`.
    fn open_dedup_cache(
        &self,
        name: &str,
        config: &ExchangeConfig,
    ) -> Result<Option<crate::dedup::ExchangeDedup>> {
        if config.kind != crate::exchange::ExchangeType::Deduplication {
            return Ok(None);
        }
        let settings = crate::dedup::ExchangeSettings::parse(&config.arguments)?;
        let storage = self
            .storage
            .as_ref()
            .filter(|_| settings.on_disk && config.durable);
        Ok(Some(crate::dedup::ExchangeDedup::open(
            settings,
            storage.map(|s| s.dedup_cache_path(&self.name, name)),
            storage.map(|s| s.syncer.clone()),
        )))
    }

    /// exchange.delete. Deleting an exchange that does not exist is not an error (RabbitMQ).
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<()> {
        // rabbit_channel: check_not_default_exchange, then check_exchange_deletion.
        if name.is_empty() {
            return Err(BrokerError::access_refused(
                "operation not permitted on the default exchange",
            ));
        }
        if name.starts_with(RESERVED_PREFIX) {
            return Err(BrokerError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let mut defs = self.lock_definitions();
        let Some(exchange) = self.exchange(name) else {
            return Ok(());
        };
        if if_unused && defs.has_bindings_from(name) {
            return Err(BrokerError::precondition_failed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange_locked(&mut defs, &exchange);
        Ok(())
    }

    pub(super) fn remove_exchange_locked(&self, defs: &mut Definitions, exchange: &Arc<Exchange>) {
        {
            let mut exchanges = self.exchanges.write();
            match exchanges.get(exchange.name.as_str()) {
                Some(current) if Arc::ptr_eq(current, exchange) => {
                    exchanges.remove(exchange.name.as_str());
                }
                _ => return,
            }
        }
        exchange.mark_deleted();
        if let Some(dedup) = &exchange.dedup {
            dedup.destroy();
        }
        if exchange.config.durable {
            self.record(|vhost| Definition::ExchangeDeleted {
                vhost,
                name: exchange.name.clone(),
            });
        }
        self.unbind_source_locked(defs, &exchange.name);
        self.unbind_destination_locked(defs, &DestinationName::Exchange(exchange.name.clone()));
    }

    /// queue.declare. An empty name asks for a server-named queue; `owner` is the declaring
    /// client, which matters for exclusive queues.
    pub async fn declare_queue(
        &self,
        name: &ShortStr,
        config: QueueConfig,
        passive: bool,
        owner: ClientId,
    ) -> Result<QueueDeclared> {
        if passive {
            let queue = self.queue_or_404(name)?;
            queue.check_access(owner)?;
            let counts = queue.counts().await?;
            return Ok(QueueDeclared {
                queue,
                counts,
                created: false,
            });
        }
        let name = if name.is_empty() {
            generate_queue_name()
        } else {
            // Kept for the queue's life: a copy, not a slice of a client's read buffer.
            check_name("queue", name).map(|()| name.detached())?
        };
        crate::queue::arguments::QueueArgs::validate(&config.arguments, &name, &self.name)?;
        let existing = {
            let _defs = self.lock_definitions();
            match self.queue(&name) {
                Some(existing) => existing,
                None => {
                    let vhost = self
                        .this
                        .upgrade()
                        .ok_or_else(|| BrokerError::internal("vhost is shutting down"))?;
                    let config = QueueConfig {
                        arguments: config.arguments.detached(),
                        ..config
                    };
                    if config.durable {
                        self.record(|vhost| Definition::Queue {
                            vhost,
                            name: name.clone(),
                            auto_delete: config.auto_delete,
                            arguments: config.arguments.clone(),
                        });
                    }
                    let arguments = self.effective_queue_arguments(&name, &config.arguments);
                    let queue = QueueHandle::spawn(name.clone(), &vhost, config, arguments);
                    self.queues.write().insert(name, Arc::clone(&queue));
                    return Ok(QueueDeclared {
                        queue,
                        counts: QueueCounts::default(),
                        created: true,
                    });
                }
            }
        };
        check_queue_equivalence(&existing, &config, owner)?;
        let counts = existing.counts().await?;
        Ok(QueueDeclared {
            queue: existing,
            counts,
            created: false,
        })
    }

    /// queue.delete. A queue that does not exist counts as deleted with 0 messages (RabbitMQ).
    pub async fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        client: ClientId,
    ) -> Result<u32> {
        let Some(queue) = self.queue(name) else {
            return Ok(0);
        };
        queue.check_access(client)?;
        match queue.delete(if_unused, if_empty).await {
            // It went away on its own meanwhile: nothing left to delete.
            Err(e) if e.code == crate::error::code::NOT_FOUND => Ok(0),
            other => other,
        }
    }

    /// Called by a queue's own task as it ends: removes the queue and its bindings.
    pub(crate) fn forget_queue(&self, queue: &Arc<QueueHandle>) {
        let mut defs = self.lock_definitions();
        {
            let mut queues = self.queues.write();
            match queues.get(queue.name.as_str()) {
                Some(current) if Arc::ptr_eq(current, queue) => {
                    queues.remove(queue.name.as_str());
                }
                _ => return,
            }
        }
        if queue.config.durable {
            self.record(|vhost| Definition::QueueDeleted {
                vhost,
                name: queue.name.clone(),
            });
        }
        self.unbind_destination_locked(&mut defs, &DestinationName::Queue(queue.name.clone()));
    }
}

/// RabbitMQ refuses to create exchanges and queues in the `amq.` namespace.
fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.starts_with(RESERVED_PREFIX) {
        return Err(BrokerError::access_refused(format!(
            "{kind} name '{name}' contains reserved prefix '{RESERVED_PREFIX}*'"
        )));
    }
    Ok(())
}

/// `amq.gen-` followed by 128 random bits in URL-safe base64, like RabbitMQ's names.
fn generate_queue_name() -> ShortStr {
    let bytes: [u8; 16] = rand::random();
    let suffix = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    ShortStr::from(format!("amq.gen-{suffix}"))
}
