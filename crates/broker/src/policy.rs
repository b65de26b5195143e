//! Policies, as RabbitMQ has them: a name, a vhost, a regular expression over queue or
//! exchange names, what they apply to (`queues`, `exchanges`, `all`), a priority and a
//! definition of RabbitMQ's policy keys (`max-length`, `message-ttl`, ...).
//!
//! Of the policies that match a queue or exchange only the one with the highest priority
//! applies (RabbitMQ); among equal priorities, the one listed first (RabbitMQ leaves that
//! order unspecified). Its definition is merged into the declared arguments under their
//! `x-` names, giving the *effective* arguments the queue or exchange runs with
//! ([`crate::queue::QueueHandle::arguments`], [`crate::exchange::Exchange::arguments`]);
//! the declared ones stay what redeclare equivalence compares.
//!
//! Conflicts are resolved as RabbitMQ's classic queues resolve them: for `max-length`,
//! `max-length-bytes`, `message-ttl`, `expires` and `delivery-limit` the lower value wins;
//! for every other key the declared argument wins over the policy.
//!
//! Policies come from the configuration and apply when a queue or exchange is declared or
//! restored: a changed policy takes effect at the next start (RabbitMQ applies changes live).

use ferrymq_wire::{FieldTable, FieldValue};

/// What a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyTo {
    Queues,
    Exchanges,
    #[default]
    All,
}

impl ApplyTo {
    pub fn parse(value: &str) -> Result<ApplyTo, String> {
        match value {
            "queues" => Ok(ApplyTo::Queues),
            "exchanges" => Ok(ApplyTo::Exchanges),
            "all" => Ok(ApplyTo::All),
            other => Err(format!(
                "apply-to '{other}' is not one of 'queues', 'exchanges', 'all'"
            )),
        }
    }

    fn covers(self, target: Target) -> bool {
        matches!(
            (self, target),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Target::Queue)
                | (ApplyTo::Exchanges, Target::Exchange)
        )
    }
}

/// What a policy is being matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Queue,
    Exchange,
}

/// How a key's policy value and declared argument are reconciled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolve {
    /// The lower of the two (RabbitMQ's `res_min`).
    Min,
    /// The declared argument if there is one (RabbitMQ's `res_arg`).
    Argument,
    /// Accepted, but ferrymq has nothing to apply (every queue pages: `queue-mode`).
    Ignored,
}

/// The value a key takes, checked when the configuration is loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An integer at least this.
    Integer(i64),
    String,
    OneOf(&'static [&'static str]),
    Bool,
}

/// The policy keys ferrymq applies: (key, the argument it becomes, applies to, resolution,
/// value).
const KEYS: &[(&str, &str, Target, Resolve, Kind)] = &[
    (
        "message-ttl",
        "x-message-ttl",
        Target::Queue,
        Resolve::Min,
        Kind::Integer(0),
    ),
    (
        "expires",
        "x-expires",
        Target::Queue,
        Resolve::Min,
        Kind::Integer(1),
    ),
    (
        "max-length",
        "x-max-length",
        Target::Queue,
        Resolve::Min,
        Kind::Integer(0),
    ),
    (
        "max-length-bytes",
        "x-max-length-bytes",
        Target::Queue,
        Resolve::Min,
        Kind::Integer(0),
    ),
    (
        "delivery-limit",
        "x-delivery-limit",
        Target::Queue,
        Resolve::Min,
        Kind::Integer(0),
    ),
    (
        "overflow",
        "x-overflow",
        Target::Queue,
        Resolve::Argument,
        Kind::OneOf(&["drop-head", "reject-publish", "reject-publish-dlx"]),
    ),
    (
        "dead-letter-exchange",
        "x-dead-letter-exchange",
        Target::Queue,
        Resolve::Argument,
        Kind::String,
    ),
    (
        "dead-letter-routing-key",
        "x-dead-letter-routing-key",
        Target::Queue,
        Resolve::Argument,
        Kind::String,
    ),
    (
        "consumer-timeout",
        "x-consumer-timeout",
        Target::Queue,
        Resolve::Argument,
        Kind::Integer(0),
    ),
    (
        "queue-mode",
        "x-queue-mode",
        Target::Queue,
        Resolve::Ignored,
        Kind::OneOf(&["default", "lazy"]),
    ),
    // The rabbitmq-message-deduplication plugin's queue key, `x-` named already.
    (
        "x-message-deduplication",
        "x-message-deduplication",
        Target::Queue,
        Resolve::Argument,
        Kind::Bool,
    ),
    // Exchanges take it without the `x-` (RabbitMQ's exchange argument has none).
    (
        "alternate-exchange",
        "alternate-exchange",
        Target::Exchange,
        Resolve::Argument,
        Kind::String,
    ),
];

/// RabbitMQ keys for features ferrymq does not have (mirroring, federation, streams, ...):
/// accepted with a warning so that exported RabbitMQ policies load.
const UNSUPPORTED_KEYS: &[&str] = &[
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "queue-master-locator",
    "queue-leader-locator",
    "queue-version",
    "federation-upstream",
    "federation-upstream-set",
    "max-age",
    "stream-max-segment-size-bytes",
    "initial-cluster-size",
    "dead-letter-strategy",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "single-active-consumer",
];

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub vhost: String,
    pub pattern: regex::Regex,
    pub apply_to: ApplyTo,
    pub priority: i64,
    /// RabbitMQ's keys (no `x-` prefix), checked.
    pub definition: FieldTable,
}

impl Policy {
    /// Checks the pattern and the definition as RabbitMQ's policy validation would, so a bad
    /// policy stops the broker at start instead of being half applied.
    pub fn new(
        name: &str,
        vhost: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        definition: FieldTable,
    ) -> Result<Policy, String> {
        let pattern = regex::Regex::new(pattern)
            .map_err(|e| format!("policy '{name}': invalid pattern: {e}"))?;
        if definition.is_empty() {
            return Err(format!("policy '{name}': the definition is empty"));
        }
        for (key, value) in definition.iter() {
            check_key(key.as_str(), value).map_err(|e| format!("policy '{name}': {e}"))?;
        }
        Ok(Policy {
            name: name.to_string(),
            vhost: vhost.to_string(),
            pattern,
            apply_to,
            priority,
            definition,
        })
    }

    fn matches(&self, vhost: &str, target: Target, name: &str) -> bool {
        self.vhost == vhost && self.apply_to.covers(target) && self.pattern.is_match(name)
    }
}

fn check_key(key: &str, value: &FieldValue) -> Result<(), String> {
    let Some(&(.., kind)) = KEYS.iter().find(|(k, ..)| *k == key) else {
        if UNSUPPORTED_KEYS.contains(&key) {
            tracing::warn!(key, "policy key not supported by ferrymq; ignored");
            return Ok(());
        }
        return Err(format!("unrecognised policy key '{key}'"));
    };
    let ok = match kind {
        Kind::Integer(min) => value.as_i64().is_some_and(|n| n >= min),
        Kind::String => value.as_str().is_some(),
        Kind::OneOf(allowed) => value.as_str().is_some_and(|s| allowed.contains(&s)),
        Kind::Bool => value.as_bool().is_some(),
    };
    if ok {
        return Ok(());
    }
    Err(match kind {
        Kind::Integer(min) => format!("'{key}' must be an integer of at least {min}"),
        Kind::String => format!("'{key}' must be a string"),
        Kind::OneOf(allowed) => format!("'{key}' must be one of {allowed:?}"),
        Kind::Bool => format!("'{key}' must be a boolean"),
    })
}

/// The policy that applies to `name`: the highest priority among those matching; the first
/// listed among equals.
pub fn applicable<'p>(
    policies: &'p [Policy],
    vhost: &str,
    target: Target,
    name: &str,
) -> Option<&'p Policy> {
    // The default exchange takes no policies in RabbitMQ either.
    if target == Target::Exchange && name.is_empty() {
        return None;
    }
    policies
        .iter()
        .filter(|p| p.matches(vhost, target, name))
        .fold(None, |best: Option<&Policy>, p| match best {
            Some(b) if b.priority >= p.priority => Some(b),
            _ => Some(p),
        })
}

/// The arguments a queue or exchange runs with: `declared` merged with `policy`.
pub fn effective_arguments(
    policy: Option<&Policy>,
    target: Target,
    declared: &FieldTable,
) -> FieldTable {
    let mut effective = declared.clone();
    let Some(policy) = policy else {
        return effective;
    };
    for (key, value) in policy.definition.iter() {
        let Some(&(_, argument, applies_to, resolve, _)) =
            KEYS.iter().find(|(k, ..)| *k == key.as_str())
        else {
            continue;
        };
        if applies_to != target || resolve == Resolve::Ignored {
            continue;
        }
        let merged = match (effective.get(argument), resolve) {
            (None, _) => value.clone(),
            // Both integers: the lower. A declared value of another type stays, for the
            // queue's own validation to refuse.
            (Some(declared), Resolve::Min) => match (declared.as_i64(), value.as_i64()) {
                (Some(d), Some(p)) if p < d => value.clone(),
                _ => continue,
            },
            (Some(_), _) => continue,
        };
        effective.insert(argument, merged);
    }
    effective
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in entries {
            t.insert(*k, v.clone());
        }
        t
    }

    fn string(s: &str) -> FieldValue {
        FieldValue::LongStr(Bytes::from(s.to_string()))
    }

    fn policy(
        name: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        def: FieldTable,
    ) -> Policy {
        Policy::new(name, "/", pattern, apply_to, priority, def).unwrap()
    }

    #[test]
    fn the_highest_priority_match_applies_and_the_first_listed_among_equals() {
        let policies = vec![
            policy(
                "low",
                "^orders",
                ApplyTo::Queues,
                1,
                table(&[("max-length", FieldValue::I64(1))]),
            ),
            policy(
                "high",
                "^orders\\.",
                ApplyTo::Queues,
                5,
                table(&[("max-length", FieldValue::I64(5))]),
            ),
            policy(
                "tie",
                "orders",
                ApplyTo::Queues,
                5,
                table(&[("max-length", FieldValue::I64(7))]),
            ),
        ];
        let pick = |name| applicable(&policies, "/", Target::Queue, name).map(|p| p.name.as_str());
        assert_eq!(pick("orders.eu"), Some("high"));
        assert_eq!(pick("orders"), Some("tie"));
        assert_eq!(pick("my-orders"), Some("tie"));
        assert_eq!(pick("payments"), None);
    }

    #[test]
    fn apply_to_and_vhost_limit_what_a_policy_matches() {
        let def = || table(&[("max-length", FieldValue::I64(1))]);
        let policies = vec![
            policy("q", ".*", ApplyTo::Queues, 0, def()),
            Policy::new("other-vhost", "prod", ".*", ApplyTo::All, 9, def()).unwrap(),
        ];
        assert!(applicable(&policies, "/", Target::Exchange, "x").is_none());
        assert_eq!(
            applicable(&policies, "/", Target::Queue, "x").unwrap().name,
            "q"
        );
        assert_eq!(
            applicable(&policies, "prod", Target::Exchange, "x")
                .unwrap()
                .name,
            "other-vhost"
        );
        // Never the default exchange.
        assert!(applicable(&policies, "prod", Target::Exchange, "").is_none());
    }

    #[test]
    fn limits_take_the_lower_value_and_other_keys_yield_to_the_argument() {
        let p = policy(
            "p",
            ".*",
            ApplyTo::All,
            0,
            table(&[
                ("max-length", FieldValue::I64(10)),
                ("max-length-bytes", FieldValue::I64(1000)),
                ("message-ttl", FieldValue::I64(5000)),
                ("expires", FieldValue::I64(60_000)),
                ("delivery-limit", FieldValue::I64(3)),
                ("dead-letter-exchange", string("policy-dlx")),
                ("dead-letter-routing-key", string("policy-key")),
                ("overflow", string("reject-publish")),
                ("consumer-timeout", FieldValue::I64(1000)),
                ("alternate-exchange", string("policy-ae")),
                ("queue-mode", string("lazy")),
            ]),
        );
        let declared = table(&[
            ("x-max-length", FieldValue::I32(5)),
            ("x-max-length-bytes", FieldValue::I64(5000)),
            ("x-message-ttl", FieldValue::U32(100)),
            ("x-dead-letter-exchange", string("arg-dlx")),
            ("x-overflow", string("drop-head")),
            ("x-custom", string("kept")),
        ]);
        let queue = effective_arguments(Some(&p), Target::Queue, &declared);
        assert_eq!(queue.get("x-max-length"), Some(&FieldValue::I32(5)));
        assert_eq!(
            queue.get("x-max-length-bytes"),
            Some(&FieldValue::I64(1000))
        );
        assert_eq!(queue.get("x-message-ttl"), Some(&FieldValue::U32(100)));
        assert_eq!(queue.get("x-expires"), Some(&FieldValue::I64(60_000)));
        assert_eq!(queue.get("x-delivery-limit"), Some(&FieldValue::I64(3)));
        assert_eq!(
            queue.get("x-dead-letter-exchange"),
            Some(&string("arg-dlx"))
        );
        assert_eq!(
            queue.get("x-dead-letter-routing-key"),
            Some(&string("policy-key"))
        );
        assert_eq!(queue.get("x-overflow"), Some(&string("drop-head")));
        assert_eq!(
            queue.get("x-consumer-timeout"),
            Some(&FieldValue::I64(1000))
        );
        assert_eq!(queue.get("x-custom"), Some(&string("kept")));
        // Exchange keys stay off queues, queue keys off exchanges; queue-mode goes nowhere.
        assert_eq!(queue.get("x-alternate-exchange"), None);
        assert_eq!(queue.get("x-queue-mode"), None);
        let exchange = effective_arguments(Some(&p), Target::Exchange, &FieldTable::new());
        assert_eq!(exchange.len(), 1);
        assert_eq!(
            exchange.get("alternate-exchange"),
            Some(&string("policy-ae"))
        );
    }

    #[test]
    fn the_alternate_exchange_policy_fills_in_the_exchange_argument() {
        let p = policy(
            "ae",
            ".*",
            ApplyTo::Exchanges,
            0,
            table(&[("alternate-exchange", string("ae"))]),
        );
        let effective = effective_arguments(Some(&p), Target::Exchange, &FieldTable::new());
        assert_eq!(effective.get("alternate-exchange"), Some(&string("ae")));
        let declared = table(&[("alternate-exchange", string("mine"))]);
        let effective = effective_arguments(Some(&p), Target::Exchange, &declared);
        assert_eq!(effective.get("alternate-exchange"), Some(&string("mine")));
    }

    #[test]
    fn a_declared_limit_of_the_wrong_type_is_left_for_the_queue_to_refuse() {
        let p = policy(
            "p",
            ".*",
            ApplyTo::Queues,
            0,
            table(&[("max-length", FieldValue::I64(10))]),
        );
        let declared = table(&[("x-max-length", string("ten"))]);
        let effective = effective_arguments(Some(&p), Target::Queue, &declared);
        assert_eq!(effective.get("x-max-length"), Some(&string("ten")));
    }

    #[test]
    fn without_a_policy_the_declared_arguments_are_the_effective_ones() {
        let declared = table(&[("x-max-length", FieldValue::I32(5))]);
        assert_eq!(
            effective_arguments(None, Target::Queue, &declared),
            declared
        );
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let bad = |def: FieldTable| Policy::new("p", "/", ".*", ApplyTo::All, 0, def).unwrap_err();
        assert!(bad(table(&[("max-length", FieldValue::I64(-1))])).contains("'max-length'"));
        assert!(bad(table(&[("max-length", string("10"))])).contains("integer"));
        assert!(bad(table(&[("expires", FieldValue::I64(0))])).contains("at least 1"));
        assert!(bad(table(&[("overflow", string("explode"))])).contains("'overflow'"));
        assert!(bad(table(&[("dead-letter-exchange", FieldValue::I64(1))])).contains("string"));
        assert!(bad(table(&[("no-such-key", FieldValue::I64(1))])).contains("unrecognised"));
        assert!(bad(FieldTable::new()).contains("empty"));
        assert!(Policy::new(
            "p",
            "/",
            "(",
            ApplyTo::All,
            0,
            table(&[("max-length", FieldValue::I64(1))])
        )
        .unwrap_err()
        .contains("invalid pattern"));
        // Keys of features ferrymq lacks load (with a warning) and change nothing.
        let p = policy(
            "ha",
            ".*",
            ApplyTo::All,
            0,
            table(&[("ha-mode", string("all"))]),
        );
        assert!(effective_arguments(Some(&p), Target::Queue, &FieldTable::new()).is_empty());
    }

    #[test]
    fn the_deduplication_key_keeps_its_name() {
        let p = policy(
            "d",
            ".*",
            ApplyTo::Queues,
            0,
            table(&[("x-message-deduplication", FieldValue::Bool(true))]),
        );
        let effective = effective_arguments(Some(&p), Target::Queue, &FieldTable::new());
        assert_eq!(
            effective.get("x-message-deduplication"),
            Some(&FieldValue::Bool(true))
        );
    }
}
