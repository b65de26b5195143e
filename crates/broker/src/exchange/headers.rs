//! Headers exchange: routes on the message's `headers` table instead of its routing key.
//!
//! Matching follows RabbitMQ's `rabbit_exchange_type_headers`: the binding's `x-match`
//! argument is `all` (default), `any`, `all-with-x` or `any-with-x`; binding arguments whose
//! key starts with `x-` take no part unless the mode ends in `-with-x`; a binding argument of
//! type void matches any value as long as the header is present; values compare by value,
//! not by type tag (an `I` 5 equals an `l` 5), as Erlang's `==` does.

use ferrymq_wire::{FieldTable, FieldValue};

use super::{field_type_name, Destination};
use crate::error::{BrokerError, Result};

/// Refuses a binding whose `x-match` is not one of the four modes, as RabbitMQ's
/// `validate_binding` does (binding_invalid → 406 PRECONDITION_FAILED); otherwise a typo
/// such as `x-match: "al"` would silently route as `all`.
pub fn validate_binding(arguments: &FieldTable) -> Result<()> {
    match arguments.get("x-match") {
        None => Ok(()),
        Some(v) => match v.as_str() {
            Some("all" | "any" | "all-with-x" | "any-with-x") => Ok(()),
            Some(other) => Err(BrokerError::precondition_failed(format!(
                "Invalid x-match field value <<\"{other}\">>; expected all, any, all-with-x, or any-with-x"
            ))),
            None => {
                let shown = v.as_i64().map_or_else(|| format!("{v:?}"), |n| n.to_string());
                Err(BrokerError::precondition_failed(format!(
                    "Invalid x-match field type {} (value {shown}); expected longstr",
                    field_type_name(v)
                )))
            }
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchMode {
    All,
    Any,
}

#[derive(Debug)]
struct HeadersBinding {
    destination: Destination,
    arguments: FieldTable,
    mode: MatchMode,
    with_x: bool,
}

#[derive(Debug, Default)]
pub struct HeadersRoutes {
    bindings: Vec<HeadersBinding>,
}

impl HeadersRoutes {
    pub fn bind(&mut self, destination: Destination, arguments: &FieldTable) {
        let (mode, with_x) = match arguments.get("x-match").and_then(FieldValue::as_str) {
            Some("any") => (MatchMode::Any, false),
            Some("any-with-x") => (MatchMode::Any, true),
            Some("all-with-x") => (MatchMode::All, true),
            _ => (MatchMode::All, false),
        };
        self.bindings.push(HeadersBinding {
            destination,
            arguments: arguments.clone(),
            mode,
            with_x,
        });
    }

    pub fn unbind(&mut self, destination: &Destination, arguments: &FieldTable) {
        if let Some(at) = self
            .bindings
            .iter()
            .position(|b| b.destination == *destination && b.arguments == *arguments)
        {
            self.bindings.swap_remove(at);
        }
    }

    pub fn route(&self, headers: Option<&FieldTable>, out: &mut impl FnMut(&Destination)) {
        for binding in &self.bindings {
            if headers_match(binding, headers) {
                out(&binding.destination);
            }
        }
    }
}

fn headers_match(binding: &HeadersBinding, headers: Option<&FieldTable>) -> bool {
    let mut all = true;
    let mut any = false;
    for (key, expected) in binding.arguments.iter() {
        if key.starts_with("x-") && (!binding.with_x || key.as_str() == "x-match") {
            continue;
        }
        let matched = match headers.and_then(|h| h.get(key)) {
            None => false,
            Some(_) if matches!(expected, FieldValue::Void) => true,
            Some(actual) => values_equal(expected, actual),
        };
        all &= matched;
        any |= matched;
    }
    match binding.mode {
        MatchMode::All => all,
        MatchMode::Any => any,
    }
}

/// Equality by value across integer widths, as Erlang's `==` compares them.
fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrymq_wire::ShortStr;

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        let mut t = FieldTable::new();
        for (k, v) in pairs {
            t.insert(ShortStr::from(*k), v.clone());
        }
        t
    }

    fn matches(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
        let mut routes = HeadersRoutes::default();
        let exchange = std::sync::Arc::new(super::super::Exchange::new(
            ShortStr::from("x"),
            super::super::ExchangeConfig {
                kind: super::super::ExchangeType::Headers,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments: FieldTable::new(),
            },
        ));
        routes.bind(Destination::Exchange(exchange), binding_args);
        let mut hit = false;
        routes.route(headers, &mut |_| hit = true);
        hit
    }

    fn s(v: &str) -> FieldValue {
        FieldValue::LongStr(bytes::Bytes::copy_from_slice(v.as_bytes()))
    }

    #[test]
    fn all_needs_every_binding_header() {
        let args = table(&[("a", s("1")), ("b", s("2"))]);
        assert!(matches(
            &args,
            Some(&table(&[("a", s("1")), ("b", s("2")), ("c", s("3"))]))
        ));
        assert!(!matches(&args, Some(&table(&[("a", s("1"))]))));
        assert!(!matches(&args, None));
    }

    #[test]
    fn any_needs_one_binding_header() {
        let args = table(&[("x-match", s("any")), ("a", s("1")), ("b", s("2"))]);
        assert!(matches(&args, Some(&table(&[("b", s("2"))]))));
        assert!(!matches(&args, Some(&table(&[("b", s("3"))]))));
    }

    #[test]
    fn x_arguments_are_ignored_unless_with_x() {
        let plain = table(&[("x-match", s("all")), ("x-tenant", s("t1"))]);
        assert!(matches(&plain, Some(&table(&[]))));
        let with_x = table(&[("x-match", s("all-with-x")), ("x-tenant", s("t1"))]);
        assert!(!matches(&with_x, Some(&table(&[]))));
        assert!(matches(&with_x, Some(&table(&[("x-tenant", s("t1"))]))));
        let any_with_x = table(&[("x-match", s("any-with-x")), ("x-tenant", s("t1"))]);
        assert!(matches(&any_with_x, Some(&table(&[("x-tenant", s("t1"))]))));
    }

    #[test]
    fn void_binding_value_matches_presence() {
        let args = table(&[("a", FieldValue::Void)]);
        assert!(matches(&args, Some(&table(&[("a", s("anything"))]))));
        assert!(!matches(&args, Some(&table(&[("b", s("1"))]))));
    }

    #[test]
    fn integers_compare_by_value_across_widths() {
        let args = table(&[("n", FieldValue::I32(5))]);
        assert!(matches(&args, Some(&table(&[("n", FieldValue::I64(5))]))));
        assert!(!matches(&args, Some(&table(&[("n", FieldValue::I64(6))]))));
    }

    #[test]
    fn only_the_four_x_match_modes_are_valid() {
        for mode in ["all", "any", "all-with-x", "any-with-x"] {
            assert!(validate_binding(&table(&[("x-match", s(mode))])).is_ok());
        }
        assert!(validate_binding(&table(&[("a", s("1"))])).is_ok());
        let typo = validate_binding(&table(&[("x-match", s("al"))])).unwrap_err();
        assert_eq!(typo.code, crate::error::code::PRECONDITION_FAILED);
        assert!(typo.text.starts_with("Invalid x-match field value"));
        let typed = validate_binding(&table(&[("x-match", FieldValue::I32(1))])).unwrap_err();
        assert_eq!(
            typed.text,
            "Invalid x-match field type signedint (value 1); expected longstr"
        );
    }

    #[test]
    fn any_with_no_binding_headers_matches_nothing() {
        let args = table(&[("x-match", s("any"))]);
        assert!(!matches(&args, Some(&table(&[("a", s("1"))]))));
    }
}
