//! Avro names, checked before a schema reaches apache-avro's parser.
//!
//! apache-avro 0.21 unwraps the result of its own name validation for the
//! `name` and `aliases` of records, enums and fixed types, so a schema
//! naming a type `bad-name` panics inside the parser instead of failing.
//! Checking every such name first turns that into the 422 (error code
//! 42201) a client can act on; [`parse_schema`] also contains any other
//! panic of the parser, as the same error.

use std::panic::AssertUnwindSafe;

use serde_json::Value;
use taskstream_avro::Schema;

use crate::RegistryApiError;

/// The types the Avro specification names (`error` is a record in a protocol).
const NAMED_TYPES: [&str; 4] = ["record", "error", "enum", "fixed"];

/// Parses a schema's JSON after checking its names, without letting the
/// parser panic through.
pub(crate) fn parse_schema(json: &Value) -> Result<Schema, RegistryApiError> {
    check_names(json).map_err(RegistryApiError::InvalidSchema)?;
    match std::panic::catch_unwind(AssertUnwindSafe(|| Schema::parse(json))) {
        Ok(parsed) => parsed.map_err(|e| RegistryApiError::InvalidSchema(e.to_string())),
        Err(_) => Err(RegistryApiError::InvalidSchema(
            "the schema could not be parsed".to_owned(),
        )),
    }
}

/// Every named type's `name` and `aliases`, anywhere in `schema`, must be
/// Avro full names: dot-separated parts of `[A-Za-z_][A-Za-z0-9_]*`.
fn check_names(schema: &Value) -> Result<(), String> {
    match schema {
        Value::Array(items) => items.iter().try_for_each(check_names),
        Value::Object(object) => {
            let named = object
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| NAMED_TYPES.contains(&t));
            if named {
                if let Some(name) = object.get("name").and_then(Value::as_str) {
                    check_full_name("name", name)?;
                }
                if let Some(aliases) = object.get("aliases").and_then(Value::as_array) {
                    for alias in aliases.iter().filter_map(Value::as_str) {
                        check_full_name("alias", alias)?;
                    }
                }
            }
            object.values().try_for_each(check_names)
        }
        _ => Ok(()),
    }
}

/// A full name as apache-avro's validator accepts it: an optional
/// namespace, then a simple name; a leading dot means the null namespace.
fn check_full_name(what: &str, full: &str) -> Result<(), String> {
    let parts = full.strip_prefix('.').unwrap_or(full);
    if !parts.split('.').all(is_simple_name) {
        return Err(format!(
            "invalid {what} {full:?}: Avro names are dot-separated parts of letters, digits and \
             underscores, each starting with a letter or an underscore"
        ));
    }
    Ok(())
}

fn is_simple_name(part: &str) -> bool {
    let mut chars = part.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_checked_wherever_a_named_type_appears() {
        let nested = json!({
            "type": "record", "name": "ok.Outer",
            "fields": [{"name": "f", "type": {"type": "enum", "name": "bad-name", "symbols": ["A"]}}]
        });
        assert!(check_names(&nested).unwrap_err().contains("bad-name"));
        let alias = json!({"type": "fixed", "name": "F", "size": 2, "aliases": ["ok", "no way"]});
        assert!(check_names(&alias).unwrap_err().contains("no way"));
        let fine = json!({"type": "record", "name": ".x_1.Y", "aliases": ["_z"], "fields": []});
        assert_eq!(check_names(&fine), Ok(()));
        for bad in ["", "1abc", "a..b", "a.", "a-b", "é"] {
            assert!(check_full_name("name", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_bad_name_is_an_invalid_schema_not_a_panic() {
        for schema in [
            json!({"type": "record", "name": "bad-name", "fields": []}),
            json!({"type": "record", "name": "R", "aliases": ["bad-alias"], "fields": []}),
            json!({"type": "enum", "name": "E", "symbols": ["bad-symbol"]}),
        ] {
            let error = parse_schema(&schema).unwrap_err();
            assert!(
                matches!(error, RegistryApiError::InvalidSchema(_)),
                "{schema}: {error:?}"
            );
        }
    }
}
