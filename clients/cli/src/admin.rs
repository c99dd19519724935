//! Output for `magnetar-admin`: answers as a table or JSON. The REST client itself lives in
//! `magnetar_client::admin`.

pub use magnetar_client::admin::*;
use serde_json::Value;

/// Renders an answer: JSON as is (pretty), or a table: lists one item per line, objects as
/// `key  value` rows (nested values as compact JSON).
pub fn render(v: &Value, json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(v).unwrap_or_default();
    }
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match v {
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join("\n"),
        Value::Object(m) => {
            let width = m.keys().map(String::len).max().unwrap_or(0);
            m.iter()
                .map(|(k, v)| format!("{k:width$}  {}", cell(v)))
                .collect::<Vec<_>>()
                .join("\n")
        }
        other => cell(other),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tables() {
        let v = serde_json::json!({"a": 1, "long-key": "x", "n": {"k": 2}});
        assert_eq!(
            render(&v, false),
            "a         1\nlong-key  x\nn         {\"k\":2}"
        );
        assert_eq!(render(&serde_json::json!(["p", "q"]), false), "p\nq");
        assert!(render(&v, true).contains("\"long-key\": \"x\""));
    }
}
