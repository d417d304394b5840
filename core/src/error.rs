//! API error codes (API.md) and the one place that turns them into HTTP responses:
//! `{"error": {"code", "message"}}` with the status of the code, `Retry-After` on
//! 429 and 503. Internal causes are logged by the caller, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Every stable error code of API.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidRoom,
    InvalidVod,
    TextEmpty,
    TextTooLong,
    InvalidText,
    InvalidMode,
    InvalidColor,
    InvalidKind,
    InvalidCursor,
    InvalidOffset,
    BlockedWord,
    Unauthorized,
    Forbidden,
    Banned,
    /// A muted room refuses viewers' sends (403; service and admin may send).
    Muted,
    NotFound,
    VodEnded,
    /// An idempotency key reused with a different body (409).
    IdempotencyConflict,
    PayloadTooLarge,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidJson => "invalid_json",
            InvalidRoom => "invalid_room",
            InvalidVod => "invalid_vod",
            TextEmpty => "text_empty",
            TextTooLong => "text_too_long",
            InvalidText => "invalid_text",
            InvalidMode => "invalid_mode",
            InvalidColor => "invalid_color",
            InvalidKind => "invalid_kind",
            InvalidCursor => "invalid_cursor",
            InvalidOffset => "invalid_offset",
            BlockedWord => "blocked_word",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            Banned => "banned",
            Muted => "muted",
            NotFound => "not_found",
            VodEnded => "vod_ended",
            IdempotencyConflict => "idempotency_conflict",
            PayloadTooLarge => "payload_too_large",
            RateLimited => "rate_limited",
            Unavailable => "unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            Unauthorized => StatusCode::UNAUTHORIZED,
            Forbidden | Banned | Muted => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            VodEnded | IdempotencyConflict => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error as a client sees it: a code, a safe human message, and for 429/503 a
/// retry delay in seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let retry_after_secs = match code {
            ErrorCode::RateLimited | ErrorCode::Unavailable => Some(1),
            _ => None,
        };
        Self {
            code,
            message: message.into(),
            retry_after_secs,
        }
    }
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }
    /// The JSON body `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "a backend is unavailable; nothing was accepted, retry later",
        )
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("danmaku_api_errors_total", "code" => self.code.as_str()).increment(1);
        let mut resp = (self.code.status(), axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_api_md() {
        assert_eq!(ErrorCode::BlockedWord.status(), 400);
        assert_eq!(ErrorCode::Banned.status(), 403);
        assert_eq!(ErrorCode::Muted.status(), 403);
        assert_eq!(ErrorCode::Muted.as_str(), "muted");
        assert_eq!(ErrorCode::VodEnded.status(), 409);
        assert_eq!(ErrorCode::IdempotencyConflict.status(), 409);
        assert_eq!(
            ErrorCode::IdempotencyConflict.as_str(),
            "idempotency_conflict"
        );
        assert_eq!(ErrorCode::PayloadTooLarge.status(), 413);
        let r = ApiError::new(ErrorCode::RateLimited, "slow down").into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }
}
