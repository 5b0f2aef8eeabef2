//! Subscription filters: `[field, op, value]` triples, all of which must hold.
//!
//! Fields: `routing_key`, `exchange`, `id`, `time` (compared as instants;
//! the value is RFC 3339), and `payload` or `payload/<JSON pointer>` (for
//! example `payload/task/state` reads `{"task": {"state": ..}}`).
//! Ops: `=`, `!=`, `<`, `<=`, `>`, `>=`, `in`, `not in`, `exists`.
//!
//! Numbers compare as numbers, strings as strings (byte order), booleans and
//! null only with `=`/`!=`; values of different types are never ordered, so an
//! ordering comparison between them is false. A missing payload field makes
//! every op false except `!=`, `not in` and `exists false`.
//! Unknown fields and ops are errors, never ignored.

use crate::event::{parse_time_us, Event};
use serde_json::Value;
use std::cmp::Ordering;

/// Most filters in one subscription, a hard ceiling above any configured limit.
pub const MAX_FILTER_VALUES: usize = 1024;

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Not an array of 2 or 3 elements.
    #[error("filter #{0} must be an array [field, op, value]")]
    Shape(usize),
    /// Unknown field.
    #[error("filter #{index}: unknown field `{field}` (use routing_key, exchange, id, time or payload/<pointer>)")]
    UnknownField {
        /// Position of the filter.
        index: usize,
        /// The field given.
        field: String,
    },
    /// Unknown operator.
    #[error("filter #{index}: unknown operator `{op}` (use =, !=, <, <=, >, >=, in, not in, exists)")]
    UnknownOp {
        /// Position of the filter.
        index: usize,
        /// The operator given.
        op: String,
    },
    /// The value does not suit the operator or field.
    #[error("filter #{index}: {reason}")]
    BadValue {
        /// Position of the filter.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    RoutingKey,
    Exchange,
    Id,
    Time,
    Payload(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Exists,
}

/// One compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    field: Field,
    op: Op,
    value: Value,
}

impl Filter {
    /// Compile the `filters` array of a subscription.
    pub fn compile_all(specs: &[Value]) -> Result<Vec<Filter>, FilterError> {
        specs.iter().enumerate().map(|(i, v)| Filter::compile(i, v)).collect()
    }

    /// Compile one `[field, op, value]` triple; `index` is used in errors.
    pub fn compile(index: usize, spec: &Value) -> Result<Filter, FilterError> {
        let Value::Array(parts) = spec else {
            return Err(FilterError::Shape(index));
        };
        if parts.len() < 2 || parts.len() > 3 {
            return Err(FilterError::Shape(index));
        }
        let (Value::String(field), Value::String(op)) = (&parts[0], &parts[1]) else {
            return Err(FilterError::Shape(index));
        };
        let field = match field.as_str() {
            "routing_key" => Field::RoutingKey,
            "exchange" => Field::Exchange,
            "id" => Field::Id,
            "time" => Field::Time,
            "payload" => Field::Payload(String::new()),
            f if f.starts_with("payload/") => Field::Payload(f["payload".len()..].to_string()),
            other => return Err(FilterError::UnknownField { index, field: other.chars().take(64).collect() }),
        };
        let op = match op.as_str() {
            "=" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "in" => Op::In,
            "not in" => Op::NotIn,
            "exists" => Op::Exists,
            other => return Err(FilterError::UnknownOp { index, op: other.chars().take(64).collect() }),
        };
        let bad = |reason: &str| FilterError::BadValue { index, reason: reason.to_string() };
        let mut value = match (op, parts.get(2)) {
            (Op::Exists, None) => Value::Bool(true),
            (Op::Exists, Some(Value::Bool(b))) => Value::Bool(*b),
            (Op::Exists, Some(_)) => return Err(bad("`exists` takes true, false or nothing")),
            (_, None) => return Err(bad("a value is required")),
            (Op::In | Op::NotIn, Some(Value::Array(a))) => {
                if a.len() > MAX_FILTER_VALUES {
                    return Err(bad("too many values for `in`"));
                }
                Value::Array(a.clone())
            }
            (Op::In | Op::NotIn, Some(_)) => return Err(bad("`in` and `not in` take an array")),
            (_, Some(v)) => v.clone(),
        };
        if op == Op::Exists && !matches!(field, Field::Payload(_)) {
            return Err(bad("`exists` applies to payload fields only"));
        }
        if field == Field::Time {
            // Compare times as microseconds, so that any RFC 3339 spelling works.
            let to_us = |v: &Value| match v {
                Value::String(s) => {
                    parse_time_us(s).map(Value::from).ok_or_else(|| bad("time values must be RFC 3339"))
                }
                _ => Err(bad("time values must be RFC 3339 strings")),
            };
            value = match value {
                Value::Array(a) => Value::Array(a.iter().map(to_us).collect::<Result<_, _>>()?),
                v => to_us(&v)?,
            };
        }
        Ok(Filter { field, op, value })
    }

    /// Whether the event passes this filter.
    pub fn accepts(&self, event: &Event) -> bool {
        let owned;
        let actual: Option<&Value> = match &self.field {
            Field::RoutingKey => {
                owned = Value::String(event.routing_key.clone());
                Some(&owned)
            }
            Field::Exchange => {
                owned = Value::String(event.exchange.clone());
                Some(&owned)
            }
            Field::Id => {
                owned = Value::from(event.id);
                Some(&owned)
            }
            Field::Time => {
                owned = Value::from(event.time_us);
                Some(&owned)
            }
            Field::Payload(ptr) => event.payload_value().pointer(ptr),
        };
        let Some(actual) = actual else {
            return matches!(self.op, Op::Ne | Op::NotIn) || self.value == Value::Bool(false) && self.op == Op::Exists;
        };
        match self.op {
            Op::Exists => self.value == Value::Bool(true),
            Op::Eq => equal(actual, &self.value),
            Op::Ne => !equal(actual, &self.value),
            Op::In => self.value.as_array().is_some_and(|a| a.iter().any(|v| equal(actual, v))),
            Op::NotIn => !self.value.as_array().is_some_and(|a| a.iter().any(|v| equal(actual, v))),
            Op::Lt => order(actual, &self.value) == Some(Ordering::Less),
            Op::Le => matches!(order(actual, &self.value), Some(Ordering::Less | Ordering::Equal)),
            Op::Gt => order(actual, &self.value) == Some(Ordering::Greater),
            Op::Ge => matches!(order(actual, &self.value), Some(Ordering::Greater | Ordering::Equal)),
        }
    }
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;
    use serde_json::json;
    use serde_json::value::RawValue;

    fn ev(rk: &str, payload: &str) -> Event {
        Event::commit(
            5,
            1_000_000,
            NewEvent {
                exchange: "x".into(),
                routing_key: rk.into(),
                payload: RawValue::from_string(payload.into()).expect("raw"),
                acl: None,
                headers: None,
                origin: None,
                idempotency_key: None,
            },
        )
    }

    fn f(v: Value) -> Filter {
        Filter::compile(0, &v).expect("compiles")
    }

    #[test]
    fn ops() {
        let e = ev("a.b", r#"{"n": 3, "s": "x", "t": {"state": "done"}}"#);
        assert!(f(json!(["payload/n", ">", 2])).accepts(&e));
        assert!(!f(json!(["payload/n", "<", 2.5])).accepts(&e));
        assert!(f(json!(["payload/n", "=", 3.0])).accepts(&e));
        assert!(f(json!(["payload/t/state", "in", ["done", "failed"]])).accepts(&e));
        assert!(f(json!(["payload/t/state", "not in", ["failed"]])).accepts(&e));
        assert!(f(json!(["payload/missing", "exists", false])).accepts(&e));
        assert!(!f(json!(["payload/missing", "=", " x"])).accepts(&e));
        assert!(f(json!(["payload/missing", "!=", "x"])).accepts(&e));
        assert!(f(json!(["routing_key", "=", "a.b"])).accepts(&e));
        assert!(f(json!(["id", ">=", 5])).accepts(&e));
        assert!(f(json!(["time", "<", "2000-01-01T00:00:00Z"])).accepts(&e));
        assert!(!f(json!(["payload/s", ">", 1])).accepts(&e), "mixed types never order");
    }

    #[test]
    fn errors() {
        assert!(matches!(Filter::compile(0, &json!(["nope", "=", 1])), Err(FilterError::UnknownField { .. })));
        assert!(matches!(Filter::compile(0, &json!(["id", "~", 1])), Err(FilterError::UnknownOp { .. })));
        assert!(matches!(Filter::compile(0, &json!(["id", "in", 1])), Err(FilterError::BadValue { .. })));
        assert!(matches!(Filter::compile(0, &json!(["time", ">", "yesterday"])), Err(FilterError::BadValue { .. })));
        assert!(matches!(Filter::compile(0, &json!("id")), Err(FilterError::Shape(0))));
        assert!(matches!(Filter::compile(0, &json!(["id", "="])), Err(FilterError::BadValue { .. })));
    }
}
