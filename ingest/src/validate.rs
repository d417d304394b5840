//! Pure checks on a send request: text length in characters and bytes, control
//! characters, mode, color, kind, idempotency key and stream position.

use crate::SendRequest;
use danmaku_core::config::LimitSettings;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::{Kind, Mode, DEFAULT_COLOR, MAX_COLOR};

/// A request that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub text: String,
    pub mode: Mode,
    pub color: u32,
    pub kind: Kind,
    pub idempotency_key: Option<String>,
    pub stream_pos_ms: Option<i64>,
}

fn bad(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

/// Validates `req` against `limits`.
pub fn check(req: &SendRequest, limits: &LimitSettings) -> Result<Checked, ApiError> {
    let text = match &req.text {
        None | Some(serde_json::Value::Null) => {
            return Err(bad(ErrorCode::TextEmpty, "text is required"))
        }
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Err(bad(ErrorCode::InvalidText, "text must be a string")),
    };
    if text.trim().is_empty() {
        return Err(bad(ErrorCode::TextEmpty, "text is empty"));
    }
    let chars = text.chars().count();
    if chars > limits.max_text_chars || text.len() > limits.max_text_bytes {
        return Err(bad(
            ErrorCode::TextTooLong,
            format!(
                "text is limited to {} characters and {} bytes",
                limits.max_text_chars, limits.max_text_bytes
            ),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(bad(
            ErrorCode::InvalidText,
            "text must not contain control characters",
        ));
    }
    let mode = match &req.mode {
        None | Some(serde_json::Value::Null) => Mode::Scroll,
        Some(serde_json::Value::String(s)) => Mode::parse(s)
            .ok_or_else(|| bad(ErrorCode::InvalidMode, "mode is scroll, top or bottom"))?,
        Some(_) => return Err(bad(ErrorCode::InvalidMode, "mode is scroll, top or bottom")),
    };
    let color = match &req.color {
        None | Some(serde_json::Value::Null) => DEFAULT_COLOR,
        Some(v) => v
            .as_u64()
            .filter(|c| *c <= MAX_COLOR as u64)
            .map(|c| c as u32)
            .ok_or_else(|| {
                bad(
                    ErrorCode::InvalidColor,
                    "color is an integer 0..=16777215 (0xRRGGBB)",
                )
            })?,
    };
    let kind = match &req.kind {
        None | Some(serde_json::Value::Null) => Kind::Comment,
        Some(serde_json::Value::String(s)) => Kind::parse(s).ok_or_else(|| {
            bad(
                ErrorCode::InvalidKind,
                "kind is comment, gift, like or system",
            )
        })?,
        Some(_) => {
            return Err(bad(
                ErrorCode::InvalidKind,
                "kind is comment, gift, like or system",
            ))
        }
    };
    let idempotency_key = match &req.idempotency_key {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.chars().count() <= 64 => {
            Some(s.clone())
        }
        Some(_) => {
            return Err(bad(
                ErrorCode::InvalidJson,
                "idempotency_key is a string of 1 to 64 characters",
            ))
        }
    };
    let stream_pos_ms = match &req.stream_pos_ms {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.as_i64().filter(|p| *p >= 0).ok_or_else(|| {
            bad(
                ErrorCode::InvalidOffset,
                "stream_pos_ms is a non-negative integer",
            )
        })?),
    };
    Ok(Checked {
        text,
        mode,
        color,
        kind,
        idempotency_key,
        stream_pos_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> SendRequest {
        serde_json::from_value(v).unwrap()
    }

    fn code(v: serde_json::Value) -> ErrorCode {
        check(&req(v), &LimitSettings::default()).unwrap_err().code
    }

    #[test]
    fn defaults() {
        let c = check(&req(json!({"text": "好耶"})), &LimitSettings::default()).unwrap();
        assert_eq!(
            (c.mode, c.color, c.kind),
            (Mode::Scroll, DEFAULT_COLOR, Kind::Comment)
        );
    }

    #[test]
    fn every_field_has_its_code() {
        assert_eq!(code(json!({})), ErrorCode::TextEmpty);
        assert_eq!(code(json!({"text": "  "})), ErrorCode::TextEmpty);
        assert_eq!(
            code(json!({"text": "x".repeat(101)})),
            ErrorCode::TextTooLong
        );
        assert_eq!(code(json!({"text": "a\u{0}b"})), ErrorCode::InvalidText);
        assert_eq!(code(json!({"text": "a\nb"})), ErrorCode::InvalidText);
        assert_eq!(code(json!({"text": "a\u{85}b"})), ErrorCode::InvalidText);
        assert_eq!(code(json!({"text": 5})), ErrorCode::InvalidText);
        assert_eq!(
            code(json!({"text": "a", "mode": "diagonal"})),
            ErrorCode::InvalidMode
        );
        assert_eq!(
            code(json!({"text": "a", "color": 16777216})),
            ErrorCode::InvalidColor
        );
        assert_eq!(
            code(json!({"text": "a", "color": -1})),
            ErrorCode::InvalidColor
        );
        assert_eq!(
            code(json!({"text": "a", "color": "red"})),
            ErrorCode::InvalidColor
        );
        assert_eq!(
            code(json!({"text": "a", "kind": "spam"})),
            ErrorCode::InvalidKind
        );
        assert_eq!(
            code(json!({"text": "a", "idempotency_key": "k".repeat(65)})),
            ErrorCode::InvalidJson
        );
    }

    #[test]
    fn length_counts_characters_and_bytes() {
        let limits = LimitSettings::default();
        // 100 CJK characters are 300 bytes: within both limits.
        assert!(check(&req(json!({"text": "好".repeat(100)})), &limits).is_ok());
        // 100 emoji are 400 bytes: at the byte limit.
        assert!(check(&req(json!({"text": "🎉".repeat(100)})), &limits).is_ok());
        let tight = LimitSettings {
            max_text_bytes: 10,
            ..LimitSettings::default()
        };
        assert_eq!(
            check(&req(json!({"text": "好好好好"})), &tight)
                .unwrap_err()
                .code,
            ErrorCode::TextTooLong
        );
    }

    #[test]
    fn hostile_but_printable_text_passes_verbatim() {
        let t = "<script>alert(\"x\")</script> & ' 🎉";
        assert_eq!(
            check(&req(json!({"text": t})), &LimitSettings::default())
                .unwrap()
                .text,
            t
        );
    }
}
