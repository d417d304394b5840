//! Request bodies as JSON objects whose members are parsed one at a time.
//!
//! serde_json refuses a whole document when one number does not fit a `f64`
//! (`1e400`), and accepts a JSON array where a struct is expected (its
//! elements taken as the fields in order). A [`JsonObject`] is only ever an
//! object, and keeps each member's text until [`JsonObject::take`] parses it,
//! so a number out of range is answered with the code of its field
//! (`invalid_color` for a color) rather than `invalid_json`.

use danmaku_core::error::{ApiError, ErrorCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::HashMap;

/// A JSON object, its member values not parsed yet. Deserializing anything
/// but an object fails; a repeated member keeps its last value, as
/// `serde_json::Value` does.
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct JsonObject(HashMap<String, Box<RawValue>>);

impl JsonObject {
    /// Parses `raw`: `invalid_json` unless it is one JSON object.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        serde_json::from_str(raw).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body is not a JSON object: {e}"),
            )
        })
    }

    /// Removes member `name` and parses it: `None` when absent; `code` (with
    /// a message naming the field) when its value cannot be represented, as a
    /// number out of range.
    pub fn take(&mut self, name: &str, code: ErrorCode) -> Result<Option<Value>, ApiError> {
        let Some(raw) = self.0.remove(name) else {
            return Ok(None);
        };
        serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| ApiError::new(code, format!("{name} holds a value out of range: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_objects() {
        assert!(JsonObject::parse(r#"{"a": 1}"#).is_ok());
        for raw in [r#"["hi"]"#, "1", "\"s\"", "null", "{", ""] {
            assert_eq!(
                JsonObject::parse(raw).unwrap_err().code,
                ErrorCode::InvalidJson,
                "{raw}"
            );
        }
    }

    #[test]
    fn out_of_range_gets_the_field_code() {
        let mut o = JsonObject::parse(r#"{"color": 1e400, "text": "a", "x": -1e999}"#).unwrap();
        assert_eq!(
            o.take("color", ErrorCode::InvalidColor).unwrap_err().code,
            ErrorCode::InvalidColor
        );
        assert_eq!(
            o.take("text", ErrorCode::InvalidText).unwrap(),
            Some(Value::from("a"))
        );
        assert_eq!(o.take("missing", ErrorCode::InvalidMode).unwrap(), None);
        // Members nobody takes are never parsed.
    }

    #[test]
    fn the_last_duplicate_wins() {
        let mut o = JsonObject::parse(r#"{"a": 1, "a": 2}"#).unwrap();
        assert_eq!(
            o.take("a", ErrorCode::InvalidJson).unwrap(),
            Some(Value::from(2))
        );
    }
}
