//! Formats for existing players (API.md, Replay):
//!
//! - `GET /v1/vods/{vod}/bilibili.xml`: Bilibili's XML (ArtPlayer, danmaku2ass);
//! - `GET /dplayer/v3/?id={vod}[&max=N]` and `POST /dplayer/v3/`: DPlayer's API
//!   (its `danmaku.api` option points at `/dplayer/`).
//!
//! Both are whole-recording documents: every segment's density-capped set, in
//! (offset_ms, id) order, at most `replay.document_max_items` (DPlayer's `max`
//! lowers that), cached like segments (body + gzip + ETag, keys that change with
//! the VOD's version: archived and deleted counts), with ETag / 304 and a short
//! `max-age` (they change when someone posts on the recording or a comment is
//! deleted).
//!
//! The whole recording is read once per version of the VOD: Bilibili's document
//! has one body per version; DPlayer's is kept decoded ([`DocBase`]) and every
//! `max` is cut from it (the strict cap, no store read), each cut under a
//! cold-load permit like every load, so distinct `max` values cost CPU, bounded
//! in number, never another read of the recording.
//!
//! DPlayer's POST checks a token sent in `Authorization` before reading the
//! body; DPlayer's own client sends it in the JSON body (`token`), which is then
//! read first, with the capped reader (`limits.max_body_bytes`).
//!
//! DPlayer's client treats any non-2xx answer as a transport failure and only
//! shows `msg` of a `{"code": 1, "msg"}` answer, so DPlayer's endpoints answer
//! errors with HTTP 200 and `{"code": 1, "msg": ..., "error": <API.md code>}`
//! (plus `Retry-After` when there is one).

use crate::cache::{self, cached, respond, Keys, VodMeta};
use crate::decoded::{self, Data, DocBase};
use crate::density::{cap_segment, cap_strict};
use crate::post::post_on_recording;
use crate::{check_vod, formats, Replay};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use danmaku_core::auth::{authenticate, bearer, check_read_access};
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{ArchivedComment, CachedBody};
use danmaku_core::vod::Session;
use danmaku_ingest::json::JsonObject;
use danmaku_ingest::{read_json, SendRequest};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// Every segment of the VOD, density-capped, then at most `max` in all (callers
/// hold a cold-load permit).
async fn whole_recording(
    r: &Replay,
    meta: &VodMeta,
    max: usize,
) -> Result<Vec<ArchivedComment>, ApiError> {
    let vod = &meta.session.vod;
    let Some(last) = meta.last_segment(r).await? else {
        return Ok(Vec::new());
    };
    let cap = r.ctx.settings.replay.density_cap;
    let segments: Vec<Vec<ArchivedComment>> = futures::stream::iter(0..=last)
        .map(|n| async move {
            let rows = crate::read_segment(r, vod, n).await?;
            Ok::<_, ApiError>(cap_segment(rows, cap, n))
        })
        .buffered(4)
        .try_collect()
        .await?;
    Ok(cap_strict(segments.concat(), max))
}

/// `Cache-Control` of a whole-recording document.
fn document_cache_control(r: &Replay, session: &Session) -> HeaderValue {
    if session.ended_at.is_some() {
        r.document_cache_control.clone()
    } else {
        r.live_cache_control.clone()
    }
}

async fn bilibili_body(r: &Replay, meta: &VodMeta) -> Result<CachedBody, ApiError> {
    let max = r.ctx.settings.replay.document_max_items;
    let key = Keys {
        meta,
        density_cap: r.ctx.settings.replay.density_cap,
    }
    .bilibili(max);
    let ended = meta.session.ended_at.is_some();
    cached(r, key, r.cache_ttl(ended), || async {
        let _permit = decoded::cold_permit(r).await?;
        let items = whole_recording(r, meta, max).await?;
        cache::encode(formats::bilibili_xml(&items)).await
    })
    .await
}

/// The VOD's DPlayer document at the version of `meta`, decoded: read once.
async fn dplayer_base(r: &Replay, meta: &VodMeta) -> Result<Arc<decoded::Entry>, ApiError> {
    let max = r.ctx.settings.replay.document_max_items;
    let key = format!("dp:{}", meta.session.vod);
    decoded::get_or_load(r, key, meta, || async {
        let items = whole_recording(r, meta, max).await?;
        tokio::task::spawn_blocking(move || DocBase::dplayer(items))
            .await
            .map(Data::Doc)
            .map_err(|_| ApiError::unavailable())
    })
    .await
}

/// DPlayer's `max` parameter: a positive integer, lowered to `limit`; none, empty
/// or 0 = `limit`. Digits too many for a number are a very large maximum.
fn dplayer_max(raw: Option<&str>, limit: usize) -> Result<usize, ApiError> {
    let Some(s) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(limit);
    };
    let digits = s.strip_prefix('+').unwrap_or(s);
    match s.parse::<u64>() {
        Ok(0) => Ok(limit),
        Ok(m) => Ok(m.min(limit as u64) as usize),
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => Ok(limit),
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            "max is a positive integer",
        )),
    }
}

/// `GET /v1/vods/{vod}/bilibili.xml`.
pub(crate) async fn bilibili(
    State(r): State<Arc<Replay>>,
    Path(vod): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    check_read_access(
        r.ctx.settings.auth.require_token_to_read,
        &r.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    let meta = cache::meta(&r, &vod).await?;
    let body = bilibili_body(&r, &meta).await?;
    Ok(respond(
        &body,
        "text/xml; charset=utf-8",
        document_cache_control(&r, &meta.session),
        &headers,
    ))
}

/// An error the DPlayer way: HTTP 200, `{"code": 1, "msg", "error"}`.
fn dplayer_error(e: ApiError) -> Response {
    metrics::counter!("danmaku_api_errors_total", "code" => e.code.as_str()).increment(1);
    let mut resp =
        Json(json!({"code": 1, "msg": e.message, "error": e.code.as_str()})).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = e.retry_after_secs {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

#[derive(Deserialize)]
pub(crate) struct DplayerQuery {
    id: Option<String>,
    max: Option<String>,
    token: Option<String>,
}

/// `GET /dplayer/v3/?id={vod}[&max=N]`.
pub(crate) async fn dplayer_get(
    State(r): State<Arc<Replay>>,
    Query(q): Query<DplayerQuery>,
    headers: HeaderMap,
) -> Response {
    dplayer_read(&r, q, &headers)
        .await
        .unwrap_or_else(dplayer_error)
}

async fn dplayer_read(
    r: &Replay,
    q: DplayerQuery,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let vod = q.id.unwrap_or_default();
    check_vod(&vod)?;
    check_read_access(
        r.ctx.settings.auth.require_token_to_read,
        &r.ctx.signer,
        headers,
        q.token.as_deref(),
    )?;
    // DPlayer's `maximum`: a positive integer; 0 or none = no maximum of its own.
    let max = dplayer_max(q.max.as_deref(), r.ctx.settings.replay.document_max_items)?;
    let meta = cache::meta(r, &vod).await?;
    let key = Keys {
        meta: &meta,
        density_cap: r.ctx.settings.replay.density_cap,
    }
    .dplayer(max);
    let ended = meta.session.ended_at.is_some();
    let body = cached(r, key, r.cache_ttl(ended), || async {
        let base = dplayer_base(r, &meta).await?;
        // The cut and its gzip hold a document's worth of memory: bounded too.
        let _permit = decoded::cold_permit(r).await?;
        tokio::task::spawn_blocking(move || {
            let doc = base.doc().ok_or_else(ApiError::unavailable)?;
            Ok(cache::encode_now(doc.dplayer_body(max)))
        })
        .await
        .map_err(|_| ApiError::unavailable())?
    })
    .await?;
    Ok(respond(
        &body,
        "application/json",
        document_cache_control(r, &meta.session),
        headers,
    ))
}

/// `POST /dplayer/v3/` with DPlayer's body `{"token", "id", "author", "time",
/// "text", "color", "type"}`.
pub(crate) async fn dplayer_post(
    State(r): State<Arc<Replay>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    dplayer_send(&r, &headers, body)
        .await
        .unwrap_or_else(dplayer_error)
}

/// DPlayer's color: a number, or a CSS hex color (`#rrggbb`, `#rgb`, with or
/// without `#`), or a decimal string. Anything else is passed on unchanged so
/// that validation answers `invalid_color`.
pub(crate) fn dplayer_color(v: &Value) -> Value {
    let Some(s) = v.as_str().map(str::trim) else {
        return v.clone();
    };
    if let Ok(n) = s.parse::<u64>() {
        return json!(n);
    }
    let hex = s.strip_prefix('#').unwrap_or(s);
    let expanded: String = match hex.len() {
        3 => hex.chars().flat_map(|c| [c, c]).collect(),
        6 => hex.to_string(),
        _ => return v.clone(),
    };
    match u32::from_str_radix(&expanded, 16) {
        Ok(n) => json!(n),
        Err(_) => v.clone(),
    }
}

/// DPlayer's type (0 or "right"/"scroll", 1 or "top", 2 or "bottom") as our mode.
/// Anything else is passed on unchanged so that validation answers `invalid_mode`.
pub(crate) fn dplayer_mode(v: &Value) -> Value {
    let known = match v {
        Value::Number(n) => match n.as_u64() {
            Some(0) => Some("scroll"),
            Some(1) => Some("top"),
            Some(2) => Some("bottom"),
            _ => None,
        },
        Value::String(s) => match s.trim() {
            "0" | "right" | "scroll" => Some("scroll"),
            "1" | "top" => Some("top"),
            "2" | "bottom" => Some("bottom"),
            _ => None,
        },
        _ => None,
    };
    known.map_or_else(|| v.clone(), |m| json!(m))
}

/// DPlayer's `time` (seconds, a number or a numeric string) in ms.
pub(crate) fn dplayer_time_ms(v: Option<&Value>) -> Result<i64, ApiError> {
    let secs = match v {
        None | Some(Value::Null) => 0.0,
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(Value::String(s)) => s.trim().parse::<f64>().unwrap_or(f64::NAN),
        Some(_) => f64::NAN,
    };
    if !secs.is_finite() || !(0.0..=1e12).contains(&secs) {
        return Err(ApiError::new(
            ErrorCode::InvalidOffset,
            "time is a non-negative number of seconds",
        ));
    }
    Ok((secs * 1000.0).round() as i64)
}

async fn dplayer_send(r: &Replay, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    // A token in `Authorization` is checked before a byte of the body is read.
    let header_claims = match bearer(headers, None) {
        Some(_) => Some(authenticate(&r.ctx.signer, headers, None)?),
        None => None,
    };
    let mut fields: JsonObject =
        read_json(headers, body, r.ctx.settings.limits.max_body_bytes).await?;
    let claims = match header_claims {
        Some(c) => c,
        None => {
            let token = fields.take("token", ErrorCode::Unauthorized)?;
            authenticate(
                &r.ctx.signer,
                headers,
                token.as_ref().and_then(Value::as_str),
            )?
        }
    };
    let vod = fields
        .take("id", ErrorCode::InvalidVod)?
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    check_vod(&vod)?;
    let wanted_ms = dplayer_time_ms(fields.take("time", ErrorCode::InvalidOffset)?.as_ref())?;
    let req = SendRequest {
        text: fields.take("text", ErrorCode::InvalidText)?,
        mode: fields
            .take("type", ErrorCode::InvalidMode)?
            .as_ref()
            .map(dplayer_mode),
        color: fields
            .take("color", ErrorCode::InvalidColor)?
            .as_ref()
            .map(dplayer_color),
        ..SendRequest::default()
    };
    let meta = cache::meta(r, &vod).await?;
    // DPlayer's clock is the video file's, which may run a little past the
    // session (encoder tail): clamp into the recording rather than refuse.
    let offset_ms = wanted_ms.clamp(0, meta.session.length_at(danmaku_core::now_ms()));
    let id = post_on_recording(r, &claims, &meta, offset_ms, req.clone()).await?;
    let mode = danmaku_core::model::Mode::parse(
        req.mode
            .as_ref()
            .and_then(Value::as_str)
            .unwrap_or("scroll"),
    )
    .unwrap_or(danmaku_core::model::Mode::Scroll);
    let color = req
        .color
        .as_ref()
        .and_then(Value::as_u64)
        .unwrap_or(danmaku_core::model::DEFAULT_COLOR as u64);
    // The author is the token's user (a client cannot post under another name).
    let author = claims.name.clone().unwrap_or_else(|| claims.sub.clone());
    Ok(Json(json!({
        "code": 0,
        "data": {
            "id": id.to_string(),
            "vod": vod,
            "time": offset_ms as f64 / 1000.0,
            "type": formats::dplayer_type(mode),
            "color": color,
            "author": author,
            "text": req.text,
        }
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dplayer_colors() {
        assert_eq!(dplayer_color(&json!(16777215)), json!(16777215));
        assert_eq!(dplayer_color(&json!("#ff0000")), json!(0xFF0000));
        assert_eq!(dplayer_color(&json!("#fff")), json!(0xFFFFFF));
        assert_eq!(dplayer_color(&json!("00ff00")), json!(0x00FF00));
        assert_eq!(dplayer_color(&json!("255")), json!(255));
        // Left for validation to refuse.
        assert_eq!(dplayer_color(&json!("#ggg")), json!("#ggg"));
        assert_eq!(dplayer_color(&json!("red")), json!("red"));
        assert_eq!(dplayer_color(&json!(-1)), json!(-1));
    }

    #[test]
    fn dplayer_types() {
        assert_eq!(dplayer_mode(&json!(0)), json!("scroll"));
        assert_eq!(dplayer_mode(&json!(1)), json!("top"));
        assert_eq!(dplayer_mode(&json!(2)), json!("bottom"));
        assert_eq!(dplayer_mode(&json!("right")), json!("scroll"));
        assert_eq!(dplayer_mode(&json!("2")), json!("bottom"));
        assert_eq!(dplayer_mode(&json!(7)), json!(7));
    }

    #[test]
    fn dplayer_maxima() {
        assert_eq!(dplayer_max(None, 100).unwrap(), 100);
        assert_eq!(dplayer_max(Some(""), 100).unwrap(), 100);
        assert_eq!(dplayer_max(Some("0"), 100).unwrap(), 100);
        assert_eq!(dplayer_max(Some("7"), 100).unwrap(), 7);
        assert_eq!(dplayer_max(Some("1000"), 100).unwrap(), 100);
        assert_eq!(
            dplayer_max(Some("99999999999999999999999"), 100).unwrap(),
            100
        );
        assert_eq!(dplayer_max(Some("+3"), 100).unwrap(), 3);
        for bad in ["-1", "lots", "1.5", "+", "1e3"] {
            assert_eq!(
                dplayer_max(Some(bad), 100).unwrap_err().code,
                ErrorCode::InvalidJson,
                "{bad}"
            );
        }
    }

    #[test]
    fn dplayer_times() {
        assert_eq!(dplayer_time_ms(Some(&json!(2.5))).unwrap(), 2500);
        assert_eq!(dplayer_time_ms(Some(&json!("1.0004"))).unwrap(), 1000);
        assert_eq!(dplayer_time_ms(None).unwrap(), 0);
        assert!(dplayer_time_ms(Some(&json!(-1))).is_err());
        assert!(dplayer_time_ms(Some(&json!("NaN"))).is_err());
        assert!(dplayer_time_ms(Some(&json!([1]))).is_err());
    }
}
