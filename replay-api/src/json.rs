//! Replay's request bodies: a JSON object (an array or any other value is
//! `invalid_json`), read with ingest's capped reader, each field kept raw until a
//! handler takes it, so a number out of range (`1e400`) gets the code of its
//! field (`invalid_color` for a color, `invalid_offset` for an offset...) rather
//! than failing the whole body as `invalid_json`.

use axum::body::Body;
use axum::http::HeaderMap;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_ingest::read_json;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The fields of a JSON object body, not decoded yet.
pub(crate) struct Fields(HashMap<String, Box<RawValue>>);

impl Fields {
    /// Reads the body (at most `limit` bytes; an empty body is `{}`).
    pub(crate) async fn read(
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<Self, ApiError> {
        read_json::<HashMap<String, Box<RawValue>>>(headers, body, limit)
            .await
            .map(Fields)
    }

    /// Field `name`, decoded; `code` when it holds a number out of range.
    pub(crate) fn take(&mut self, name: &str, code: ErrorCode) -> Result<Option<Value>, ApiError> {
        self.0
            .remove(name)
            .map(|raw| decode(name, &raw, code))
            .transpose()
    }

    /// The fields not taken yet, decoded (`invalid_json` for a number out of
    /// range: they have no code of their own).
    pub(crate) fn rest(self) -> Result<Map<String, Value>, ApiError> {
        self.0
            .into_iter()
            .map(|(k, raw)| {
                let v = decode(&k, &raw, ErrorCode::InvalidJson)?;
                Ok((k, v))
            })
            .collect()
    }
}

fn decode(name: &str, raw: &RawValue, code: ErrorCode) -> Result<Value, ApiError> {
    // The body parsed already, so only a number too large for a float fails here.
    serde_json::from_str(raw.get())
        .map_err(|_| ApiError::new(code, format!("{name} holds a number out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(body: &str) -> Result<Fields, ApiError> {
        Fields::read(&HeaderMap::new(), Body::from(body.to_string()), 4096).await
    }

    #[tokio::test]
    async fn objects_only() {
        for bad in ["[1]", "[]", "1", "\"x\"", "null", "{", "{\"a\":1e400"] {
            let e = read(bad).await.err().unwrap_or_else(|| panic!("{bad}"));
            assert_eq!(e.code, ErrorCode::InvalidJson, "{bad}");
        }
        assert!(read("").await.unwrap().0.is_empty());
        assert!(read("  {} ").await.unwrap().0.is_empty());
    }

    #[tokio::test]
    async fn numbers_out_of_range_get_their_fields_code() {
        let mut f =
            read(r#"{"color": 1e400, "time": -1e999, "text": "x", "n": 5, "big": [1e400]}"#)
                .await
                .unwrap();
        assert_eq!(
            f.take("color", ErrorCode::InvalidColor).unwrap_err().code,
            ErrorCode::InvalidColor
        );
        assert_eq!(
            f.take("time", ErrorCode::InvalidOffset).unwrap_err().code,
            ErrorCode::InvalidOffset
        );
        assert_eq!(
            f.take("text", ErrorCode::InvalidText).unwrap(),
            Some(Value::from("x"))
        );
        assert_eq!(f.take("absent", ErrorCode::InvalidText).unwrap(), None);
        assert_eq!(f.rest().unwrap_err().code, ErrorCode::InvalidJson);
        let mut f = read(r#"{"n": 18446744073709551616, "m": 7}"#)
            .await
            .unwrap();
        assert_eq!(
            f.take("n", ErrorCode::InvalidColor).unwrap(),
            Some(serde_json::json!(18446744073709551616.0)),
            "an integer past u64 is still a float in range"
        );
        assert_eq!(f.rest().unwrap()["m"], 7);
    }
}
