//! What a schema is: its type (Pulsar's, with their protocol numbers and admin names) and
//! its definition. Shared by the registry and the compatibility rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Pulsar's schema types; their protocol numbers are their positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SchemaType {
    None,
    String,
    Json,
    Protobuf,
    Avro,
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    Float,
    Double,
    Date,
    Time,
    Timestamp,
    KeyValue,
    Instant,
    LocalDate,
    LocalTime,
    LocalDateTime,
    ProtobufNative,
    AutoConsume,
}

impl SchemaType {
    const ALL: [SchemaType; 22] = [
        SchemaType::None,
        SchemaType::String,
        SchemaType::Json,
        SchemaType::Protobuf,
        SchemaType::Avro,
        SchemaType::Boolean,
        SchemaType::Int8,
        SchemaType::Int16,
        SchemaType::Int32,
        SchemaType::Int64,
        SchemaType::Float,
        SchemaType::Double,
        SchemaType::Date,
        SchemaType::Time,
        SchemaType::Timestamp,
        SchemaType::KeyValue,
        SchemaType::Instant,
        SchemaType::LocalDate,
        SchemaType::LocalTime,
        SchemaType::LocalDateTime,
        SchemaType::ProtobufNative,
        SchemaType::AutoConsume,
    ];

    pub fn from_proto(n: i32) -> Option<SchemaType> {
        usize::try_from(n)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    pub fn to_proto(self) -> i32 {
        self as i32
    }

    /// The admin API's name (`AVRO`, `KEY_VALUE`, ...).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn parse(name: &str) -> Option<SchemaType> {
        serde_json::from_value(serde_json::Value::String(name.to_ascii_uppercase())).ok()
    }
}

/// A schema as clients and the admin API give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaInfo {
    pub kind: SchemaType,
    pub data: Vec<u8>,
    pub properties: BTreeMap<String, String>,
}

/// A record schema of `kind` (AVRO or JSON) with `fields` (JSON field objects), for tests.
#[cfg(test)]
pub(crate) fn record(kind: SchemaType, fields: &str) -> SchemaInfo {
    SchemaInfo {
        kind,
        data: format!(r#"{{"type":"record","name":"R","fields":[{fields}]}}"#).into_bytes(),
        properties: Default::default(),
    }
}
