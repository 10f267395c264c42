//! Schema compatibility as the Confluent Schema Registry defines it, on top
//! of apache-avro's reader/writer schema resolution rules.

use std::fmt;
use std::str::FromStr;

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;
use serde::{Deserialize, Serialize};

/// Which earlier versions a new schema must stay compatible with, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompatibilityLevel {
    /// Anything goes.
    None,
    /// The new schema reads data written with the latest version.
    Backward,
    /// ... with every earlier version.
    BackwardTransitive,
    /// The latest version reads data written with the new schema.
    Forward,
    /// ... and so does every earlier version.
    ForwardTransitive,
    /// Both backward and forward, against the latest version.
    Full,
    /// Both, against every earlier version.
    FullTransitive,
}

impl CompatibilityLevel {
    pub const ALL: [CompatibilityLevel; 7] = [
        Self::None,
        Self::Backward,
        Self::BackwardTransitive,
        Self::Forward,
        Self::ForwardTransitive,
        Self::Full,
        Self::FullTransitive,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CompatibilityLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "unknown compatibility level {s:?}; expected one of {}",
                    Self::ALL.map(|l| l.as_str()).join(", ")
                )
            })
    }
}

/// Why a schema is not compatible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Index into the earlier versions passed to [`check_compatibility`].
    pub against: usize,
    /// A sentence naming the field at fault.
    pub reason: String,
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Explains a compatibility error with the path of the field at fault.
fn explain(error: &apache_avro::error::CompatibilityError) -> String {
    use apache_avro::error::CompatibilityError as E;
    let mut path = Vec::new();
    let mut current = error;
    while let E::FieldTypeMismatch(field, inner) = current {
        path.push(field.clone());
        current = inner;
    }
    let at = |field: Option<&str>| {
        let mut full = path.clone();
        full.extend(field.map(str::to_owned));
        full.join(".")
    };
    match current {
        E::MissingDefaultValue(field) => {
            format!("field '{}' has no default value", at(Some(field)))
        }
        other if path.is_empty() => other.to_string(),
        other => format!("field '{}' changed type: {other}", at(None)),
    }
}

/// Checks `new` against `earlier` (oldest first) under `level`.
pub fn check_compatibility(
    level: CompatibilityLevel,
    new: &Schema,
    earlier: &[Schema],
) -> Result<(), Incompatibility> {
    if level == CompatibilityLevel::None || earlier.is_empty() {
        return Ok(());
    }
    let first = if level.transitive() {
        0
    } else {
        earlier.len() - 1
    };
    for (index, old) in earlier.iter().enumerate().skip(first) {
        if level.backward() {
            if let Err(e) = SchemaCompatibility::can_read(old, new) {
                return Err(Incompatibility {
                    against: index,
                    reason: format!(
                        "the new schema cannot read data written with the earlier one: {}",
                        explain(&e)
                    ),
                });
            }
        }
        if level.forward() {
            if let Err(e) = SchemaCompatibility::can_read(new, old) {
                return Err(Incompatibility {
                    against: index,
                    reason: format!(
                        "the earlier schema cannot read data written with the new one: {}",
                        explain(&e)
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    #[test]
    fn levels_parse_and_print() {
        for level in CompatibilityLevel::ALL {
            assert_eq!(level.as_str().parse::<CompatibilityLevel>().unwrap(), level);
        }
        assert!("SIDEWAYS".parse::<CompatibilityLevel>().is_err());
    }

    #[test]
    fn a_new_field_without_default_breaks_backward_and_names_the_field() {
        let v1 = record(r#"{"name":"a","type":"string"}"#);
        let v2 = record(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#);
        let err = check_compatibility(CompatibilityLevel::Backward, &v2, std::slice::from_ref(&v1))
            .unwrap_err();
        assert!(err.reason.contains("'b'"), "{err}");
        // Forward only needs old readers to ignore the new field.
        assert!(check_compatibility(CompatibilityLevel::Forward, &v2, &[v1]).is_ok());
    }

    #[test]
    fn a_nested_type_change_names_the_path() {
        let inner = |t: &str| {
            format!(
                r#"{{"name":"data","type":{{"type":"record","name":"D","fields":[{{"name":"n","type":"{t}"}}]}}}}"#
            )
        };
        let v1 = record(&inner("int"));
        let v2 = record(&inner("string"));
        let err = check_compatibility(CompatibilityLevel::Backward, &v2, &[v1]).unwrap_err();
        assert!(
            err.reason.contains("data.n") || err.reason.contains("'data"),
            "{err}"
        );
    }

    #[test]
    fn transitive_levels_check_every_earlier_version() {
        // v2 drops `a`; v3 brings it back as an int: fine against v2,
        // but it cannot read v1's string `a`.
        let v1 = record(r#"{"name":"a","type":"string"}"#);
        let v2 = record(r#"{"name":"b","type":"string","default":"x"}"#);
        let v3 = record(
            r#"{"name":"b","type":"string","default":"x"},{"name":"a","type":"int","default":0}"#,
        );
        let earlier = [v1, v2];
        assert!(check_compatibility(CompatibilityLevel::Backward, &v3, &earlier).is_ok());
        let err =
            check_compatibility(CompatibilityLevel::BackwardTransitive, &v3, &earlier).unwrap_err();
        assert_eq!(err.against, 0);
    }
}
