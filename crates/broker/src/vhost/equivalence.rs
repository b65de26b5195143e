//! Redeclaring an exchange or queue must match what exists, or RabbitMQ answers 406 with
//! "inequivalent arg '<field>' for <resource>: received <new> but current is <old>".

use ferrymq_wire::{FieldTable, FieldValue};

use crate::client::ClientId;
use crate::error::{BrokerError, Result};
use crate::exchange::{Exchange, ExchangeConfig};
use crate::queue::{QueueConfig, QueueHandle};

/// Queue arguments RabbitMQ compares on redeclare; any other argument may differ.
const QUEUE_ARGUMENTS_COMPARED: [&str; 12] = [
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-single-active-consumer",
    "x-delivery-limit",
];

/// Exchange arguments RabbitMQ compares on redeclare.
const EXCHANGE_ARGUMENTS_COMPARED: [&str; 1] = ["alternate-exchange"];

pub(super) fn check_exchange_equivalence(
    existing: &Exchange,
    declared: &ExchangeConfig,
    vhost: &str,
) -> Result<()> {
    let resource = format!("exchange '{}' in vhost '{vhost}'", existing.name);
    let current = &existing.config;
    if current.kind != declared.kind {
        return Err(inequivalent(
            "type",
            &resource,
            &format!("'{}'", declared.kind.as_str()),
            &format!("'{}'", current.kind.as_str()),
        ));
    }
    check_flag("durable", &resource, declared.durable, current.durable)?;
    check_flag(
        "auto_delete",
        &resource,
        declared.auto_delete,
        current.auto_delete,
    )?;
    check_flag("internal", &resource, declared.internal, current.internal)?;
    check_arguments(
        &resource,
        &EXCHANGE_ARGUMENTS_COMPARED,
        &declared.arguments,
        &current.arguments,
    )
}

pub(super) fn check_queue_equivalence(
    existing: &QueueHandle,
    declared: &QueueConfig,
    owner: ClientId,
) -> Result<()> {
    existing.check_access(owner)?;
    if declared.exclusive_owner.is_some() != existing.is_exclusive() {
        // "strict" exclusivity: redeclaring with a different exclusive flag is locked too.
        return Err(BrokerError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally \
             declared on another connection or the exclusive property value does not match that of \
             the original declaration.",
            existing.name, existing.vhost
        )));
    }
    let resource = format!("queue '{}' in vhost '{}'", existing.name, existing.vhost);
    let current = &existing.config;
    check_flag("durable", &resource, declared.durable, current.durable)?;
    check_flag(
        "auto_delete",
        &resource,
        declared.auto_delete,
        current.auto_delete,
    )?;
    check_arguments(
        &resource,
        &QUEUE_ARGUMENTS_COMPARED,
        &declared.arguments,
        &current.arguments,
    )
}

fn check_flag(field: &str, resource: &str, declared: bool, current: bool) -> Result<()> {
    if declared == current {
        return Ok(());
    }
    Err(inequivalent(
        field,
        resource,
        &format!("'{declared}'"),
        &format!("'{current}'"),
    ))
}

fn check_arguments(
    resource: &str,
    keys: &[&str],
    declared: &FieldTable,
    current: &FieldTable,
) -> Result<()> {
    for key in keys {
        let (new, old) = (declared.get(key), current.get(key));
        let same = match (new, old) {
            (None, None) => true,
            (Some(a), Some(b)) => same_value(a, b),
            _ => false,
        };
        if !same {
            return Err(inequivalent(key, resource, &describe(new), &describe(old)));
        }
    }
    Ok(())
}

/// RabbitMQ compares argument values by type class (all integers alike) and value.
fn same_value(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn describe(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".to_string(),
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => format!("the value '{n}'"),
            (_, Some(s)) => format!("the value '{s}'"),
            _ => format!("the value '{v:?}'"),
        },
    }
}

fn inequivalent(field: &str, resource: &str, received: &str, current: &str) -> BrokerError {
    BrokerError::precondition_failed(format!(
        "inequivalent arg '{field}' for {resource}: received {received} but current is {current}"
    ))
}
