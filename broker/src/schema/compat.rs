//! Whether a new schema may join a topic's versions: Pulsar's compatibility strategies over
//! Avro's reader/writer resolution rules (JSON schemas are Avro definitions too). Types other
//! than AVRO and JSON are compatible with their own type only, as their data carries no
//! structure the broker checks. Pure: definitions in, a verdict out.

use apache_avro::Schema as Avro;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::{Deserialize, Serialize};

use super::info::{SchemaInfo, SchemaType};

/// Pulsar's schema compatibility strategies (`schemaCompatibilityStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Strategy {
    /// Not set: the broker's default, FULL (Pulsar's).
    #[default]
    Undefined,
    AlwaysIncompatible,
    AlwaysCompatible,
    /// Readers of the new schema read data of the latest one.
    Backward,
    /// Readers of the latest schema read data of the new one.
    Forward,
    Full,
    BackwardTransitive,
    ForwardTransitive,
    FullTransitive,
}

impl Strategy {
    pub const NAMES: &'static [&'static str] = &[
        "UNDEFINED",
        "ALWAYS_INCOMPATIBLE",
        "ALWAYS_COMPATIBLE",
        "BACKWARD",
        "FORWARD",
        "FULL",
        "BACKWARD_TRANSITIVE",
        "FORWARD_TRANSITIVE",
        "FULL_TRANSITIVE",
    ];

    /// UNDEFINED as the broker applies it.
    pub fn effective(self) -> Strategy {
        match self {
            Strategy::Undefined => Strategy::Full,
            s => s,
        }
    }

    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Parses an AVRO or JSON definition; other types have none to parse.
pub fn parse(info: &SchemaInfo) -> Result<Option<Avro>, String> {
    if !matches!(info.kind, SchemaType::Avro | SchemaType::Json) {
        return Ok(None);
    }
    let text = std::str::from_utf8(&info.data).map_err(|_| "the definition is not UTF-8")?;
    Avro::parse_str(text)
        .map(Some)
        .map_err(|e| format!("invalid {} schema definition: {e}", info.kind.name()))
}

/// Whether `new` may follow `existing` (oldest first, not empty) under `strategy`; Err says
/// why not.
pub fn check(existing: &[SchemaInfo], new: &SchemaInfo, strategy: Strategy) -> Result<(), String> {
    let strategy = strategy.effective();
    match strategy {
        Strategy::AlwaysCompatible => return Ok(()),
        Strategy::AlwaysIncompatible => {
            return Err("the namespace's strategy is ALWAYS_INCOMPATIBLE".into());
        }
        _ => {}
    }
    let Some(latest) = existing.last() else {
        return Ok(());
    };
    let transitive = matches!(
        strategy,
        Strategy::BackwardTransitive | Strategy::ForwardTransitive | Strategy::FullTransitive
    );
    let against: &[SchemaInfo] = if transitive {
        existing
    } else {
        std::slice::from_ref(latest)
    };
    let new_avro = parse(new)?;
    for old in against {
        if old.kind != new.kind {
            return Err(format!(
                "a {} schema cannot follow a {} one",
                new.kind.name(),
                old.kind.name()
            ));
        }
        let (Some(n), Some(o)) = (&new_avro, parse(old)?) else {
            continue; // same type, no structure to compare
        };
        let backward = || {
            SchemaCompatibility::can_read(&o, n)
                .map_err(|e| format!("readers of the new schema cannot read old data: {e}"))
        };
        let forward = || {
            SchemaCompatibility::can_read(n, &o)
                .map_err(|e| format!("readers of the old schema cannot read new data: {e}"))
        };
        match strategy {
            Strategy::Backward | Strategy::BackwardTransitive => backward()?,
            Strategy::Forward | Strategy::ForwardTransitive => forward()?,
            _ => {
                backward()?;
                forward()?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn avro(fields: &str) -> SchemaInfo {
        super::super::info::record(SchemaType::Avro, fields)
    }

    #[test]
    fn strategies_follow_avro_resolution() {
        let v1 = avro(r#"{"name":"name","type":"string"}"#);
        // a field with a default: new readers fill it in for old data
        let v2 = avro(r#"{"name":"name","type":"string"},{"name":"age","type":"int","default":0}"#);
        // a field without one: they cannot
        let v3 = avro(r#"{"name":"name","type":"string"},{"name":"email","type":"string"}"#);
        let old = [v1.clone()];
        assert!(check(&old, &v2, Strategy::Backward).is_ok());
        assert!(check(&old, &v2, Strategy::Full).is_ok());
        assert!(check(&old, &v3, Strategy::Backward).is_err());
        // old readers ignore a new field: forward compatible
        assert!(check(&old, &v3, Strategy::Forward).is_ok());
        assert!(
            check(&old, &v3, Strategy::Undefined).is_err(),
            "UNDEFINED is FULL"
        );
        assert!(check(&old, &v3, Strategy::AlwaysCompatible).is_ok());
        assert!(check(&old, &v1, Strategy::AlwaysIncompatible).is_err());
        // transitive: against every version, not only the latest
        let v4 = avro(r#"{"name":"email","type":"string","default":""}"#);
        let both = [v1.clone(), v3.clone()];
        assert!(check(&both, &v4, Strategy::Backward).is_ok());
        let drops_name = avro(r#"{"name":"age","type":"int","default":0}"#);
        assert!(check(std::slice::from_ref(&v2), &drops_name, Strategy::Backward).is_ok());
        let string = SchemaInfo {
            kind: SchemaType::String,
            data: vec![],
            properties: Default::default(),
        };
        assert!(check(&old, &string, Strategy::AlwaysCompatible).is_ok());
        assert!(
            check(&old, &string, Strategy::Full).is_err(),
            "another type"
        );
        assert!(check(std::slice::from_ref(&string), &string, Strategy::Full).is_ok());
    }

    #[test]
    fn bad_definitions_are_refused_with_the_reason() {
        let bad = SchemaInfo {
            kind: SchemaType::Json,
            data: b"{not json".to_vec(),
            properties: Default::default(),
        };
        let e = parse(&bad).unwrap_err();
        assert!(e.contains("invalid JSON schema definition"), "{e}");
        assert!(parse(&avro(r#"{"name":"x","type":"nope"}"#)).is_err());
    }
}
