//! The bindings of a vhost: the source of truth from which exchanges' routing indexes are
//! derived, indexed both ways so that deleting a queue or an exchange removes its bindings
//! without scanning the others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ferrymq_wire::{FieldTable, ShortStr};

use super::VHost;
use crate::error::{BrokerError, Result};
use crate::exchange::{Destination, Exchange};

/// A destination by name, for the indexes (a `Destination` holds the object itself).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DestinationName {
    Queue(ShortStr),
    Exchange(ShortStr),
}

/// All bindings from one source to one destination with one routing key; they differ by
/// their argument tables.
#[derive(Debug)]
struct BindingGroup {
    destination: Destination,
    arguments: Vec<FieldTable>,
}

#[derive(Debug, Default)]
pub(super) struct Definitions {
    /// source exchange → (destination, routing key) → bindings
    by_source: HashMap<ShortStr, HashMap<(DestinationName, ShortStr), BindingGroup>>,
    /// destination → (source exchange, routing key) pairs that bind to it
    by_destination: HashMap<DestinationName, HashSet<(ShortStr, ShortStr)>>,
}

impl Definitions {
    pub(super) fn has_bindings_from(&self, source: &str) -> bool {
        self.by_source
            .get(source)
            .is_some_and(|groups| !groups.is_empty())
    }

    pub(super) fn binding_count(&self) -> usize {
        self.by_source
            .values()
            .flat_map(|groups| groups.values())
            .map(|g| g.arguments.len())
            .sum()
    }
}

impl VHost {
    /// Binds `destination` to `source`; binding twice is not an error (RabbitMQ).
    pub fn bind(
        &self,
        source: &Arc<Exchange>,
        destination: Destination,
        routing_key: ShortStr,
        arguments: FieldTable,
    ) -> Result<()> {
        check_not_default(source, &destination)?;
        source.validate_binding(&arguments)?;
        // Kept while the binding lives: copies, not slices of a client's read buffer.
        let (routing_key, arguments) = (routing_key.detached(), arguments.detached());
        let mut defs = self.lock_definitions();
        if source.is_deleted() {
            return Err(BrokerError::no_exchange(&source.name, &self.name));
        }
        let name = destination_name(&destination);
        let group = defs
            .by_source
            .entry(source.name.clone())
            .or_default()
            .entry((name.clone(), routing_key.clone()))
            .or_insert_with(|| BindingGroup {
                destination: destination.clone(),
                arguments: Vec::new(),
            });
        if group.arguments.contains(&arguments) {
            return Ok(());
        }
        self.record_binding(true, source, &destination, &routing_key, &arguments);
        source
            .routes()
            .write()
            .bind(destination, &routing_key, &arguments);
        group.arguments.push(arguments);
        defs.by_destination
            .entry(name)
            .or_default()
            .insert((source.name.clone(), routing_key));
        Ok(())
    }

    /// Removes one binding; a binding that does not exist is not an error (RabbitMQ).
    pub fn unbind(
        &self,
        source: &Arc<Exchange>,
        destination: &Destination,
        routing_key: &ShortStr,
        arguments: &FieldTable,
    ) -> Result<()> {
        check_not_default(source, destination)?;
        let mut defs = self.lock_definitions();
        let name = destination_name(destination);
        let key = (name.clone(), routing_key.clone());
        let Some(group) = defs
            .by_source
            .get_mut(source.name.as_str())
            .and_then(|groups| groups.get_mut(&key))
        else {
            return Ok(());
        };
        let Some(at) = group.arguments.iter().position(|a| a == arguments) else {
            return Ok(());
        };
        group.arguments.swap_remove(at);
        self.record_binding(false, source, destination, routing_key, arguments);
        source
            .routes()
            .write()
            .unbind(destination, routing_key, arguments);
        if group.arguments.is_empty() {
            self.forget_group(&mut defs, source, &key);
        }
        Ok(())
    }

    /// Drops the now-empty group `key` of `source` from both indexes, then auto-deletes the
    /// source if that was its last binding.
    fn forget_group(
        &self,
        defs: &mut Definitions,
        source: &Arc<Exchange>,
        key: &(DestinationName, ShortStr),
    ) {
        if let Some(groups) = defs.by_source.get_mut(source.name.as_str()) {
            groups.remove(key);
        }
        let (name, routing_key) = key;
        if let Some(sources) = defs.by_destination.get_mut(name) {
            sources.remove(&(source.name.clone(), routing_key.clone()));
            if sources.is_empty() {
                defs.by_destination.remove(name);
            }
        }
        if source.config.auto_delete && !defs.has_bindings_from(&source.name) {
            self.remove_exchange_locked(defs, source);
        }
    }

    /// Removes every binding that leads to `name` (a queue or exchange being deleted).
    pub(super) fn unbind_destination_locked(&self, defs: &mut Definitions, name: &DestinationName) {
        let Some(sources) = defs.by_destination.remove(name) else {
            return;
        };
        for (source_name, routing_key) in sources {
            let Some(source) = self.exchange(&source_name) else {
                continue;
            };
            let key = (name.clone(), routing_key);
            let removed = defs
                .by_source
                .get_mut(source_name.as_str())
                .and_then(|groups| groups.remove(&key));
            if let Some(group) = removed {
                let mut routes = source.routes().write();
                for arguments in &group.arguments {
                    routes.unbind(&group.destination, &key.1, arguments);
                }
            }
            if source.config.auto_delete && !defs.has_bindings_from(&source.name) {
                self.remove_exchange_locked(defs, &source);
            }
        }
    }

    /// Removes the bindings whose source is `source` (an exchange being deleted).
    pub(super) fn unbind_source_locked(&self, defs: &mut Definitions, source: &str) {
        let Some(groups) = defs.by_source.remove(source) else {
            return;
        };
        for (name, routing_key) in groups.into_keys() {
            if let Some(sources) = defs.by_destination.get_mut(&name) {
                sources.remove(&(ShortStr::from(source), routing_key));
                if sources.is_empty() {
                    defs.by_destination.remove(&name);
                }
            }
        }
    }

    /// Total bindings in this vhost (excluding the default exchange's implicit ones).
    pub fn binding_count(&self) -> usize {
        self.definitions.lock().binding_count()
    }
}

pub(super) fn destination_name(destination: &Destination) -> DestinationName {
    match destination {
        Destination::Queue(q) => DestinationName::Queue(q.name.clone()),
        Destination::Exchange(x) => DestinationName::Exchange(x.name.clone()),
    }
}

/// The default exchange's bindings are implicit: it can be neither the source nor the
/// destination of one (rabbit_channel:binding_action_with_checks checks both ends).
fn check_not_default(source: &Exchange, destination: &Destination) -> Result<()> {
    let destination_is_default = matches!(destination, Destination::Exchange(x) if x.is_default());
    if source.is_default() || destination_is_default {
        return Err(BrokerError::access_refused(
            "operation not permitted on the default exchange",
        ));
    }
    Ok(())
}
