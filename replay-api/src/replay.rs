//! Replay reads: the range API and 6-minute segments.

use crate::density::cap_segment;
use crate::{check_vod, store_error, Replay};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use danmaku_core::auth::check_read_access;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{ArchivedComment, CachedBody};
use danmaku_core::vod::{segment_of, segment_range, Session};
use serde::Deserialize;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

#[derive(Deserialize)]
pub(crate) struct RangeQuery {
    from_ms: Option<String>,
    to_ms: Option<String>,
    limit: Option<String>,
    after: Option<String>,
    token: Option<String>,
}

fn offset_param(raw: &Option<String>, name: &str) -> Result<Option<i64>, ApiError> {
    match raw.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidOffset,
                    format!("{name} is a non-negative integer of milliseconds"),
                )
            }),
    }
}

/// The `after` / `next` token: the (offset_ms, id) of the last item returned.
pub fn encode_after(offset_ms: i64, id: u64) -> String {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&offset_ms.to_be_bytes());
    b[8..].copy_from_slice(&id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(b)
}

fn decode_after(s: &str) -> Option<(i64, u64)> {
    let b = URL_SAFE_NO_PAD.decode(s).ok()?;
    if b.len() != 16 {
        return None;
    }
    Some((
        i64::from_be_bytes(b[..8].try_into().ok()?),
        u64::from_be_bytes(b[8..].try_into().ok()?),
    ))
}

async fn session_of(r: &Replay, vod: &str) -> Result<Session, ApiError> {
    r.ctx
        .archive
        .get_session(vod)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::not_found("vod"))
}

pub(crate) async fn range(
    State(r): State<Arc<Replay>>,
    Path(vod): Path<String>,
    Query(q): Query<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    check_read_access(
        r.ctx.settings.auth.require_token_to_read,
        &r.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    let from = offset_param(&q.from_ms, "from_ms")?.unwrap_or(0);
    let to = offset_param(&q.to_ms, "to_ms")?.unwrap_or(i64::MAX);
    if from > to {
        return Err(ApiError::new(
            ErrorCode::InvalidOffset,
            "from_ms must not exceed to_ms",
        ));
    }
    let after = match q.after.as_deref() {
        None | Some("") => None,
        Some(s) => Some(decode_after(s).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidCursor,
                "after is a next token from a previous answer",
            )
        })?),
    };
    let max = r.ctx.settings.replay.max_range_limit.max(1);
    let limit = q
        .limit
        .as_deref()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1000)
        .clamp(1, max);
    session_of(&r, &vod).await?;
    let Some(last) = r
        .ctx
        .archive
        .last_segment(&vod)
        .await
        .map_err(store_error)?
    else {
        return Ok(json_response(r#"{"items":[],"next":null}"#.to_string()));
    };
    let first_seg = segment_of(after.map_or(from, |(o, _)| o.max(from)));
    let last_seg = segment_of(to.saturating_sub(1)).min(last);
    let mut picked: Vec<ArchivedComment> = Vec::new();
    for seg in first_seg..=last_seg {
        let rows = r
            .ctx
            .archive
            .read_segment(&vod, seg)
            .await
            .map_err(store_error)?;
        picked.extend(
            rows.into_iter()
                .filter(|c| c.offset_ms >= from && c.offset_ms < to)
                .filter(|c| after.is_none_or(|a| (c.offset_ms, c.item.id) > a)),
        );
        if picked.len() > limit {
            break;
        }
    }
    let more = picked.len() > limit;
    picked.truncate(limit);
    let next = if more {
        picked.last().map(|c| encode_after(c.offset_ms, c.item.id))
    } else {
        None
    };
    let mut body = String::from("{\"items\":[");
    for (n, c) in picked.iter().enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&c.item.to_json());
    }
    body.push_str("],\"next\":");
    body.push_str(&serde_json::to_string(&next).expect("serializes"));
    body.push('}');
    Ok(json_response(body))
}

fn json_response(body: String) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Encodes a segment body and its gzip form, with its ETag.
pub fn encode_segment(vod: &str, n: u32, items: &[ArchivedComment]) -> CachedBody {
    let mut body = String::with_capacity(64 + items.len() * 160);
    body.push_str("{\"vod\":");
    body.push_str(&serde_json::to_string(vod).expect("serializes"));
    body.push_str(",\"segment\":");
    body.push_str(&n.to_string());
    body.push_str(",\"items\":[");
    for (i, c) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&c.item.to_json());
    }
    body.push_str("]}");
    let etag = format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body.as_bytes()));
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::new(6),
    );
    gz.write_all(body.as_bytes()).expect("in-memory gzip");
    let gzip = gz.finish().expect("in-memory gzip");
    CachedBody {
        body: Bytes::from(body),
        gzip: Bytes::from(gzip),
        etag,
    }
}

async fn load_segment(r: &Replay, session: &Session, n: u32) -> Result<CachedBody, ApiError> {
    let count = r
        .ctx
        .archive
        .count(&session.vod)
        .await
        .map_err(store_error)?;
    // The key changes whenever rows are added to the VOD, so a cached segment is
    // never stale; ended VODs' segments are then immutable.
    let key = format!(
        "seg:{}:{}:{}:{}",
        session.vod,
        n,
        count,
        session.ended_at.is_some()
    );
    if let Some(hit) = r.ctx.cache.get(&key).await {
        metrics::counter!("danmaku_replay_cache_hits_total").increment(1);
        return Ok(hit);
    }
    // Single flight: one ArchiveStore read per key under a stampede.
    let gate = r
        .loads
        .get_with(key.clone(), async { Arc::new(tokio::sync::Mutex::new(())) })
        .await;
    let _guard = gate.lock().await;
    if let Some(hit) = r.ctx.cache.get(&key).await {
        metrics::counter!("danmaku_replay_cache_hits_total").increment(1);
        return Ok(hit);
    }
    metrics::counter!("danmaku_replay_cache_misses_total").increment(1);
    let rows = r
        .ctx
        .archive
        .read_segment(&session.vod, n)
        .await
        .map_err(store_error)?;
    let capped = cap_segment(rows, r.ctx.settings.replay.density_cap);
    let (start, end) = segment_range(n);
    debug_assert!(capped
        .iter()
        .all(|c| c.offset_ms >= start && c.offset_ms < end));
    let vod = session.vod.clone();
    let value = tokio::task::spawn_blocking(move || encode_segment(&vod, n, &capped))
        .await
        .map_err(|_| ApiError::unavailable())?;
    let ttl = if session.ended_at.is_some() {
        Duration::from_secs(24 * 3600)
    } else {
        Duration::from_secs(r.ctx.settings.replay.live_max_age_secs.max(1))
    };
    r.ctx.cache.put(&key, value.clone(), ttl).await;
    Ok(value)
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.trim().split(';');
            let name = parts.next().unwrap_or("").trim();
            let q0 = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (name == "gzip" || name == "*") && !q0
        })
}

pub(crate) async fn segment(
    State(r): State<Arc<Replay>>,
    Path((vod, n)): Path<(String, String)>,
    Query(q): Query<RangeQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    check_read_access(
        r.ctx.settings.auth.require_token_to_read,
        &r.ctx.signer,
        &headers,
        q.token.as_deref(),
    )?;
    let n: u32 = n.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidOffset,
            "the segment number is an integer n >= 0",
        )
    })?;
    let session = session_of(&r, &vod).await?;
    let cached = load_segment(&r, &session, n).await?;
    let cache_control = if session.ended_at.is_some() {
        "public, max-age=31536000, immutable".to_string()
    } else {
        format!(
            "public, max-age={}",
            r.ctx.settings.replay.live_max_age_secs
        )
    };
    let etag = HeaderValue::from_str(&cached.etag).expect("etag is ascii");
    let cc = HeaderValue::from_str(&cache_control).expect("ascii");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',').any(|t| {
                t.trim() == cached.etag
                    || t.trim() == "*"
                    || t.trim().trim_start_matches("W/") == cached.etag
            })
        });
    if matches {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag);
        resp.headers_mut().insert(header::CACHE_CONTROL, cc);
        return Ok(resp);
    }
    let gzip = accepts_gzip(&headers);
    let mut resp = if gzip {
        cached.gzip.clone()
    } else {
        cached.body.clone()
    }
    .into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, cc);
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_tokens_roundtrip() {
        let t = encode_after(123_456, 987);
        assert_eq!(decode_after(&t), Some((123_456, 987)));
        assert_eq!(decode_after("zz"), None);
    }

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0"),
        );
        assert!(!accepts_gzip(&h));
    }

    #[test]
    fn segment_body_and_etag_are_stable() {
        let a = encode_segment("v1", 0, &[]);
        let b = encode_segment("v1", 0, &[]);
        assert_eq!(a, b);
        assert_eq!(&a.body[..], br#"{"vod":"v1","segment":0,"items":[]}"#);
    }
}
