//! The configuration's JSON Schema, derived from the structs (their doc
//! comments become descriptions), and the walks over it that the loader,
//! the masking and `herald config default` share.

use serde_json::Value;

/// The JSON Schema of [`super::Config`].
pub fn config_schema() -> Value {
    schemars::schema_for!(super::Config).to_value()
}

/// What a setting holds, as far as reading it from one string goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A table of settings.
    Object,
    /// A list of strings.
    StringList,
    /// A list of tables (or of lists).
    List,
    /// Text (also durations, paths and enums).
    String,
    /// A whole number.
    Integer,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// Anything (a free-form table such as `[peer.config]`).
    Any,
}

/// Follow `$ref`s and step over `Option`'s `null` alternative.
pub(crate) fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            match r.strip_prefix("#/$defs/").and_then(|name| root.get("$defs")?.get(name)) {
                Some(target) => {
                    schema = target;
                    continue;
                }
                None => return schema,
            }
        }
        let alternatives = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Value::as_array);
        if let Some(alts) = alternatives {
            let non_null: Vec<&Value> =
                alts.iter().filter(|a| a.get("type").and_then(Value::as_str) != Some("null")).collect();
            if non_null.len() == 1 {
                schema = non_null[0];
                continue;
            }
        }
        return schema;
    }
    schema
}

/// The `type` of a schema other than `null`.
fn type_name(schema: &Value) -> Option<&str> {
    match schema.get("type")? {
        Value::String(s) => Some(s.as_str()),
        Value::Array(types) => types.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    }
}

/// The shape of a (resolved) schema.
pub(crate) fn shape(root: &Value, schema: &Value) -> Shape {
    let schema = resolve(root, schema);
    if schema.get("properties").is_some() {
        return Shape::Object;
    }
    // A unit-only enum (`session.store`): alternatives that are all text.
    if let Some(alts) = schema.get("oneOf").or_else(|| schema.get("anyOf")).and_then(Value::as_array) {
        if !alts.is_empty() && alts.iter().all(|a| shape(root, a) == Shape::String) {
            return Shape::String;
        }
    }
    match type_name(schema) {
        Some("object") => Shape::Any,
        Some("array") => {
            let items = schema.get("items").map(|i| resolve(root, i));
            match items.and_then(type_name) {
                Some("string") => Shape::StringList,
                _ => Shape::List,
            }
        }
        Some("string") => Shape::String,
        Some("integer") => Shape::Integer,
        Some("number") => Shape::Number,
        Some("boolean") => Shape::Boolean,
        // An enum of strings (`session.store`) or an internally tagged enum.
        _ if schema.get("enum").is_some() || schema.get("const").is_some() => Shape::String,
        _ => Shape::Any,
    }
}

/// The properties of an object schema, if it is one.
pub(crate) fn properties<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a serde_json::Map<String, Value>> {
    resolve(root, schema).get("properties")?.as_object()
}

/// The schema of the setting at `path` (`["limits", "max_subscriptions"]`).
pub(crate) fn lookup<'a>(root: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut schema = root;
    for key in path {
        schema = properties(root, schema)?.get(*key)?;
    }
    Some(schema)
}

/// Whether the setting is marked secret (`x-secret`), so never printed.
pub(crate) fn is_secret(root: &Value, schema: &Value) -> bool {
    schema.get("x-secret").and_then(Value::as_bool) == Some(true)
        || resolve(root, schema).get("x-secret").and_then(Value::as_bool) == Some(true)
}

/// The description (doc comment) of a setting.
pub(crate) fn description<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a str> {
    schema.get("description").or_else(|| resolve(root, schema).get("description")).and_then(Value::as_str)
}
