//! Whether a new schema may join a topic's versions: Pulsar's compatibility strategies over
//! Avro's reader/writer resolution rules (JSON schemas are Avro definitions too), KEY_VALUE
//! half by half, protobuf schemas by their root message (Pulsar's rule); other types are
//! compatible with their own type only, as their data carries no structure the broker
//! checks. Pure: definitions in, a verdict out.

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

/// Parses an AVRO or JSON definition (and a KEY_VALUE's two halves); other types have none to
/// parse.
pub fn parse(info: &SchemaInfo) -> Result<Option<Avro>, String> {
    if info.kind == SchemaType::KeyValue {
        let (k, v) = key_value_parts(info)?;
        parse(&k)?;
        parse(&v)?;
        return Ok(None);
    }
    if !matches!(info.kind, SchemaType::Avro | SchemaType::Json) {
        return Ok(None);
    }
    let text = std::str::from_utf8(&info.data).map_err(|_| "the definition is not UTF-8")?;
    Avro::parse_str(text)
        .map(Some)
        .map_err(|e| format!("invalid {} schema definition: {e}", info.kind.name()))
}

/// The key and value schemas of a KEY_VALUE schema, as Pulsar lays it out: the data is the
/// key's definition then the value's, each after its length (4 bytes, big-endian); the
/// properties `key.schema.type` and `value.schema.type` name their types (BYTES if absent).
pub fn key_value_parts(info: &SchemaInfo) -> Result<(SchemaInfo, SchemaInfo), String> {
    let d = &info.data;
    let take = |at: usize| -> Result<(&[u8], usize), String> {
        let len: [u8; 4] = d
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or("KEY_VALUE schema data ends inside a length")?;
        let end = at + 4 + u32::from_be_bytes(len) as usize;
        let part = d
            .get(at + 4..end)
            .ok_or("KEY_VALUE schema data is shorter than its lengths say")?;
        Ok((part, end))
    };
    let (key, next) = take(0)?;
    let (value, end) = take(next)?;
    if end != d.len() {
        return Err("KEY_VALUE schema data runs past its two parts".into());
    }
    let half = |data: &[u8], prefix: &str| -> Result<SchemaInfo, String> {
        let kind = match info.properties.get(&format!("{prefix}.schema.type")) {
            None => SchemaType::None,
            Some(t) => SchemaType::parse(t).ok_or(format!("unknown {prefix} schema type {t:?}"))?,
        };
        Ok(SchemaInfo {
            kind,
            data: data.to_vec(),
            properties: Default::default(),
        })
    };
    Ok((half(key, "key")?, half(value, "value")?))
}

/// The root message names of two PROTOBUF schemas (their definitions are Avro records named
/// after it) or two PROTOBUF_NATIVE ones (`rootMessageTypeName`); None when either is not
/// such a schema or names none.
fn root_messages(old: &SchemaInfo, new: &SchemaInfo) -> Option<(String, String)> {
    let name = |info: &SchemaInfo| -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(&info.data).ok()?;
        match info.kind {
            SchemaType::Protobuf => {
                let ns = v.get("namespace").and_then(|n| n.as_str());
                let name = v.get("name")?.as_str()?;
                Some(ns.map_or(name.to_string(), |ns| format!("{ns}.{name}")))
            }
            SchemaType::ProtobufNative => Some(v.get("rootMessageTypeName")?.as_str()?.to_string()),
            _ => None,
        }
    };
    Some((name(old)?, name(new)?))
}

/// The data of a KEY_VALUE schema with these halves' definitions (the reverse of
/// [`key_value_parts`]).
pub fn key_value_data(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + key.len() + value.len());
    for part in [key, value] {
        data.extend_from_slice(&(part.len() as u32).to_be_bytes());
        data.extend_from_slice(part);
    }
    data
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
    against.iter().try_for_each(|old| pair(old, new, strategy))
}

/// One old schema against the new one.
fn pair(old: &SchemaInfo, new: &SchemaInfo, strategy: Strategy) -> Result<(), String> {
    if old.kind != new.kind {
        return Err(format!(
            "a {} schema cannot follow a {} one",
            new.kind.name(),
            old.kind.name()
        ));
    }
    if new.kind == SchemaType::KeyValue {
        // each half by its own type's rules
        let (ok, ov) = key_value_parts(old)?;
        let (nk, nv) = key_value_parts(new)?;
        pair(&ok, &nk, strategy).map_err(|e| format!("key: {e}"))?;
        return pair(&ov, &nv, strategy).map_err(|e| format!("value: {e}"));
    }
    if let Some(names) = root_messages(old, new)
        && names.0 != names.1
    {
        // Pulsar's rule for protobuf schemas: the root message stays the same
        return Err(format!(
            "the root message changed from {} to {}",
            names.0, names.1
        ));
    }
    let (Some(n), Some(o)) = (parse(new)?, parse(old)?) else {
        return Ok(()); // same type, no structure to compare
    };
    let backward = || {
        SchemaCompatibility::can_read(&o, &n)
            .map_err(|e| format!("readers of the new schema cannot read old data: {e}"))
    };
    let forward = || {
        SchemaCompatibility::can_read(&n, &o)
            .map_err(|e| format!("readers of the old schema cannot read new data: {e}"))
    };
    match strategy {
        Strategy::Backward | Strategy::BackwardTransitive => backward(),
        Strategy::Forward | Strategy::ForwardTransitive => forward(),
        _ => backward().and_then(|()| forward()),
    }
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

    fn key_value(key: &SchemaInfo, value: &SchemaInfo) -> SchemaInfo {
        let data = key_value_data(&key.data, &value.data);
        let properties = [
            ("key.schema.type".to_string(), key.kind.name()),
            ("value.schema.type".to_string(), value.kind.name()),
        ]
        .into_iter()
        .collect();
        SchemaInfo {
            kind: SchemaType::KeyValue,
            data,
            properties,
        }
    }

    #[test]
    fn key_value_schemas_are_checked_half_by_half() {
        let string = SchemaInfo {
            kind: SchemaType::String,
            data: vec![],
            properties: Default::default(),
        };
        let v1 = avro(r#"{"name":"a","type":"string"}"#);
        let v2 = avro(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#);
        let bad = avro(r#"{"name":"a","type":"int"}"#);
        let old = [key_value(&string, &v1)];
        assert!(check(&old, &key_value(&string, &v2), Strategy::Full).is_ok());
        let e = check(&old, &key_value(&string, &bad), Strategy::Full).unwrap_err();
        assert!(e.starts_with("value: "), "{e}");
        let e = check(&old, &key_value(&v1, &v1), Strategy::Full).unwrap_err();
        assert!(e.starts_with("key: "), "{e}");
        // malformed layouts are refused, never read past
        let mut short = key_value(&string, &v1);
        short.data.truncate(short.data.len() - 1);
        assert!(parse(&short).is_err());
        let mut long = key_value(&string, &v1);
        long.data.push(0);
        assert!(parse(&long).is_err());
        let mut huge = key_value(&string, &v1);
        huge.data[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse(&huge).is_err());
        assert!(parse(&key_value(&string, &bad)).is_ok());
    }

    #[test]
    fn protobuf_schemas_keep_their_root_message() {
        let proto = |kind: SchemaType, data: &str| SchemaInfo {
            kind,
            data: data.as_bytes().to_vec(),
            properties: Default::default(),
        };
        let a = proto(
            SchemaType::Protobuf,
            r#"{"type":"record","name":"Order","namespace":"shop","fields":[]}"#,
        );
        let b = proto(
            SchemaType::Protobuf,
            r#"{"type":"record","name":"Invoice","namespace":"shop","fields":[]}"#,
        );
        assert!(check(std::slice::from_ref(&a), &a, Strategy::Full).is_ok());
        let e = check(std::slice::from_ref(&a), &b, Strategy::Full).unwrap_err();
        assert!(e.contains("shop.Order to shop.Invoice"), "{e}");
        let n = |root: &str| {
            proto(
                SchemaType::ProtobufNative,
                &format!(r#"{{"fileDescriptorSet":"","rootMessageTypeName":"{root}"}}"#),
            )
        };
        assert!(check(&[n("a.B")], &n("a.B"), Strategy::Backward).is_ok());
        assert!(check(&[n("a.B")], &n("a.C"), Strategy::Backward).is_err());
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
