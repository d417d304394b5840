//! The admin API of API.md, Moderation: bans (per room and global), room
//! settings and the word list. Admin tokens only. Every action is an audit
//! event (tracing target `audit`: who, what, room, when) and counted
//! (`danmaku_admin_actions_total{action}`).

use crate::http::{check_room, read_json};
use crate::json::JsonObject;
use crate::{Ingest, MAX_BAN_SECS};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use danmaku_core::auth::{authenticate, Claims, Role};
use danmaku_core::config::FilterPolicy;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{Ban, RoomSettings, RoomSettingsPatch, WordList};
use serde_json::{json, Value};
use std::sync::Arc;

/// Longest user id a ban names, bytes.
const MAX_USER_BYTES: usize = 128;
/// Longest slow mode, seconds (a day).
pub const MAX_SLOW_MODE_SECS: u64 = 86_400;
/// Largest display budget, comments per second.
pub const MAX_DISPLAY_BUDGET: u64 = 100_000;
/// Most words in the list.
pub const MAX_WORDS: usize = 10_000;
/// Longest word, characters.
pub const MAX_WORD_CHARS: usize = 64;
/// Largest word list body, bytes.
const MAX_FILTER_BODY: usize = 1 << 20;

/// The admin routes.
pub(crate) fn routes() -> Router<Arc<Ingest>> {
    Router::new()
        .route(
            "/v1/admin/rooms/{room}/bans",
            post(ban_in_room).get(room_bans),
        )
        .route("/v1/admin/bans", post(ban_everywhere).get(global_bans))
        .route("/v1/admin/rooms/{room}/settings", put(settings))
        .route("/v1/admin/filter", put(set_filter).get(show_filter))
}

/// The admin's claims: `unauthorized` without a valid token, `forbidden` for
/// any other role.
fn admin(ingest: &Ingest, headers: &HeaderMap, what: &str) -> Result<Claims, ApiError> {
    let claims = authenticate(&ingest.context().signer, headers, None)?;
    if claims.role != Role::Admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{what} need an admin token"),
        ));
    }
    Ok(claims)
}

/// Logs and counts an admin action.
fn audit(action: &'static str, who: &str, room: Option<&str>, detail: Value) {
    metrics::counter!("danmaku_admin_actions_total", "action" => action).increment(1);
    tracing::info!(
        target: "audit",
        action,
        who,
        room = room.unwrap_or("*"),
        at_ms = danmaku_core::now_ms(),
        detail = %detail,
        "admin action"
    );
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidJson, message)
}

/// A whole number in `0..=max` from `value`, else `invalid_json` naming `field`.
fn bounded(field: &str, value: &Value, max: u64) -> Result<u64, ApiError> {
    value
        .as_u64()
        .filter(|v| *v <= max)
        .ok_or_else(|| invalid(format!("{field} is a whole number from 0 to {max}")))
}

/// `{"user", "seconds", "shadow"}`.
struct BanRequest {
    user: String,
    seconds: u64,
    shadow: bool,
}

fn ban_request(mut obj: JsonObject) -> Result<BanRequest, ApiError> {
    let user = match obj.take("user", ErrorCode::InvalidJson)? {
        Some(Value::String(u)) if !u.is_empty() && u.len() <= MAX_USER_BYTES => u,
        _ => return Err(invalid("user is a non-empty string of at most 128 bytes")),
    };
    let seconds = match obj.take("seconds", ErrorCode::InvalidJson)? {
        Some(v) => v
            .as_u64()
            .filter(|s| *s <= MAX_BAN_SECS)
            .ok_or_else(|| invalid(format!("seconds is at most {MAX_BAN_SECS} (10 years)")))?,
        None => return Err(invalid("seconds is required (0 lifts the ban)")),
    };
    let shadow = match obj.take("shadow", ErrorCode::InvalidJson)? {
        None => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(invalid("shadow is true or false")),
    };
    Ok(BanRequest {
        user,
        seconds,
        shadow,
    })
}

fn ban_json(b: &Ban) -> Value {
    json!({"user": b.user, "until": b.until_ms, "shadow": b.shadow, "by": b.by, "at": b.at_ms})
}

async fn ban(
    ingest: &Ingest,
    headers: &HeaderMap,
    body: Body,
    room: Option<&str>,
) -> Result<Response, ApiError> {
    let claims = admin(ingest, headers, "bans")?;
    let obj: JsonObject = read_json(
        headers,
        body,
        ingest.context().settings.limits.max_body_bytes,
    )
    .await?;
    let req = ban_request(obj)?;
    let until = ingest
        .ban(room, &req.user, req.seconds, req.shadow, &claims.sub)
        .await?;
    audit(
        if req.seconds == 0 { "unban" } else { "ban" },
        &claims.sub,
        room,
        json!({"user": req.user, "seconds": req.seconds, "shadow": req.shadow}),
    );
    let mut out = json!({"user": req.user, "until": until, "shadow": req.shadow});
    if let Some(room) = room {
        out["room"] = json!(room);
    }
    Ok(Json(out).into_response())
}

async fn ban_in_room(
    State(ingest): State<Arc<Ingest>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    ban(&ingest, &headers, body, Some(&room)).await
}

async fn ban_everywhere(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    ban(&ingest, &headers, body, None).await
}

async fn list(
    ingest: &Ingest,
    headers: &HeaderMap,
    room: Option<&str>,
) -> Result<Response, ApiError> {
    admin(ingest, headers, "bans")?;
    let bans = ingest.bans(room).await?;
    let mut out = json!({"bans": bans.iter().map(ban_json).collect::<Vec<_>>()});
    if let Some(room) = room {
        out["room"] = json!(room);
    }
    Ok(Json(out).into_response())
}

async fn room_bans(
    State(ingest): State<Arc<Ingest>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    list(&ingest, &headers, Some(&room)).await
}

async fn global_bans(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    list(&ingest, &headers, None).await
}

/// `{"slow_mode_secs", "muted", "display_budget_per_sec"}`, any of them;
/// `display_budget_per_sec: null` goes back to the configured budget.
fn settings_patch(mut obj: JsonObject) -> Result<RoomSettingsPatch, ApiError> {
    let mut patch = RoomSettingsPatch::default();
    if let Some(v) = obj.take("slow_mode_secs", ErrorCode::InvalidJson)? {
        patch.slow_mode_secs = Some(bounded("slow_mode_secs", &v, MAX_SLOW_MODE_SECS)? as u32);
    }
    if let Some(v) = obj.take("muted", ErrorCode::InvalidJson)? {
        patch.muted = Some(
            v.as_bool()
                .ok_or_else(|| invalid("muted is true or false"))?,
        );
    }
    if let Some(v) = obj.take("display_budget_per_sec", ErrorCode::InvalidJson)? {
        patch.display_budget_per_sec = Some(match v {
            Value::Null => None,
            v => {
                let n = bounded("display_budget_per_sec", &v, MAX_DISPLAY_BUDGET)?;
                if n == 0 {
                    return Err(invalid(
                        "display_budget_per_sec is from 1 to 100000, or null for the default",
                    ));
                }
                Some(n as u32)
            }
        });
    }
    if patch == RoomSettingsPatch::default() {
        return Err(invalid(
            "give any of slow_mode_secs, muted, display_budget_per_sec",
        ));
    }
    Ok(patch)
}

/// The settings as API.md shows them (`GET /v1/rooms/{room}` too).
pub fn settings_json(s: &RoomSettings, default_budget: u32) -> Value {
    json!({
        "slow_mode_secs": s.slow_mode_secs,
        "muted": s.muted,
        "display_budget_per_sec": s.display_budget_per_sec.unwrap_or(default_budget),
    })
}

async fn settings(
    State(ingest): State<Arc<Ingest>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_room(&room)?;
    let claims = admin(&ingest, &headers, "room settings")?;
    let obj: JsonObject = read_json(
        &headers,
        body,
        ingest.context().settings.limits.max_body_bytes,
    )
    .await?;
    let patch = settings_patch(obj)?;
    let after = ingest.update_room_settings(&room, &patch).await?;
    let default_budget = ingest.context().settings.live.display_budget_per_sec;
    let shown = settings_json(&after, default_budget);
    audit("room_settings", &claims.sub, Some(&room), shown.clone());
    Ok(Json(json!({"room": room, "settings": shown})).into_response())
}

/// `{"words": [...], "policy": "mask" | "reject"}` (policy defaults to mask).
fn word_list(mut obj: JsonObject) -> Result<WordList, ApiError> {
    let words = match obj.take("words", ErrorCode::InvalidJson)? {
        Some(Value::Array(items)) => items,
        _ => return Err(invalid("words is a list of strings")),
    };
    if words.len() > MAX_WORDS {
        return Err(invalid(format!("words holds at most {MAX_WORDS} entries")));
    }
    let mut list = Vec::with_capacity(words.len());
    for w in words {
        let Value::String(w) = w else {
            return Err(invalid("words is a list of strings"));
        };
        let w = w.trim();
        if w.chars().count() > MAX_WORD_CHARS {
            return Err(invalid(format!(
                "each word is at most {MAX_WORD_CHARS} characters"
            )));
        }
        if !w.is_empty() {
            list.push(w.to_string());
        }
    }
    let policy = match obj.take("policy", ErrorCode::InvalidJson)? {
        None => FilterPolicy::Mask,
        Some(Value::String(p)) if p == "mask" => FilterPolicy::Mask,
        Some(Value::String(p)) if p == "reject" => FilterPolicy::Reject,
        Some(_) => return Err(invalid("policy is \"mask\" or \"reject\"")),
    };
    Ok(WordList {
        words: list,
        policy,
    })
}

fn policy_str(p: FilterPolicy) -> &'static str {
    match p {
        FilterPolicy::Mask => "mask",
        FilterPolicy::Reject => "reject",
    }
}

async fn set_filter(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let claims = admin(&ingest, &headers, "word lists")?;
    let obj: JsonObject = read_json(&headers, body, MAX_FILTER_BODY).await?;
    let words = word_list(obj)?;
    ingest.set_word_list(&words).await?;
    audit(
        "filter",
        &claims.sub,
        None,
        json!({"words": words.words.len(), "policy": policy_str(words.policy)}),
    );
    Ok(
        Json(json!({"words": words.words.len(), "policy": policy_str(words.policy)}))
            .into_response(),
    )
}

async fn show_filter(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admin(&ingest, &headers, "word lists")?;
    let words = ingest.moderation().words();
    Ok(Json(json!({"words": words.words, "policy": policy_str(words.policy)})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(raw: &str) -> JsonObject {
        JsonObject::parse(raw).unwrap()
    }

    #[test]
    fn ban_bodies_are_checked() {
        let b = ban_request(obj(r#"{"user": "u", "seconds": 60, "shadow": true}"#)).unwrap();
        assert_eq!((b.user.as_str(), b.seconds, b.shadow), ("u", 60, true));
        assert!(
            !ban_request(obj(r#"{"user": "u", "seconds": 0}"#))
                .unwrap()
                .shadow
        );
        for raw in [
            r#"{"user": "", "seconds": 1}"#,
            r#"{"user": 5, "seconds": 1}"#,
            r#"{"seconds": 1}"#,
            r#"{"user": "u"}"#,
            r#"{"user": "u", "seconds": -1}"#,
            r#"{"user": "u", "seconds": 315576001}"#,
            r#"{"user": "u", "seconds": 1e400}"#,
            r#"{"user": "u", "seconds": 1, "shadow": "yes"}"#,
        ] {
            assert_eq!(
                ban_request(obj(raw)).err().map(|e| e.code),
                Some(ErrorCode::InvalidJson),
                "{raw}"
            );
        }
    }

    #[test]
    fn settings_are_validated() {
        let p = settings_patch(obj(
            r#"{"slow_mode_secs": 30, "display_budget_per_sec": null}"#,
        ))
        .unwrap();
        assert_eq!(p.slow_mode_secs, Some(30));
        assert_eq!(p.display_budget_per_sec, Some(None));
        assert_eq!(p.muted, None);
        for raw in [
            r#"{}"#,
            r#"{"slow_mode_secs": 86401}"#,
            r#"{"slow_mode_secs": 1.5}"#,
            r#"{"muted": 1}"#,
            r#"{"display_budget_per_sec": 0}"#,
            r#"{"display_budget_per_sec": 100001}"#,
        ] {
            let e = settings_patch(obj(raw)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidJson, "{raw}");
        }
        let e = settings_patch(obj(r#"{"slow_mode_secs": -5}"#)).unwrap_err();
        assert!(e.message.contains("slow_mode_secs"), "{}", e.message);
    }

    #[test]
    fn word_lists_are_bounded() {
        let w = word_list(obj(r#"{"words": [" bad ", "", "坏"], "policy": "reject"}"#)).unwrap();
        assert_eq!(w.words, vec!["bad".to_string(), "坏".to_string()]);
        assert_eq!(w.policy, FilterPolicy::Reject);
        for raw in [
            r#"{"words": "bad"}"#,
            r#"{"words": [1]}"#,
            r#"{"words": [], "policy": "drop"}"#,
        ] {
            assert!(word_list(obj(raw)).is_err(), "{raw}");
        }
        let long = format!(r#"{{"words": ["{}"]}}"#, "a".repeat(65));
        assert!(word_list(obj(&long)).is_err());
    }
}
