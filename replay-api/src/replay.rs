//! Replay reads: the range API and 6-minute segments.
//!
//! The range API reads only what it returns: each segment it touches comes from
//! the [`decoded`] rows of the VOD's current version (one ArchiveStore read per
//! segment and version, under a cold-load permit), and a page is two binary
//! searches and a copy of at most `limit + 1` encoded items. So a page costs
//! O(log n + page) whatever the segment's size, and paging through a segment
//! with `after=` costs O(n) in all.

use crate::cache::{self, cached, respond, respond_parts, Keys, VodMeta};
use crate::decoded::{self, Data, Rows};
use crate::density::cap_segment;
use crate::{check_vod, formats, store_error, Replay, IMMUTABLE};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use danmaku_core::auth::check_read_access;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{ArchivedComment, CachedBody};
use danmaku_core::vod::{segment_of, segment_range, Session};
use serde::Deserialize;
use std::sync::Arc;

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

/// Segment `n`'s rows at the version of `meta`: cached, or read once.
async fn segment_rows(r: &Replay, meta: &VodMeta, n: u32) -> Result<Arc<decoded::Entry>, ApiError> {
    let vod = &meta.session.vod;
    decoded::get_or_load(r, format!("rows:{vod}:{n}"), meta, || async {
        let items = r
            .ctx
            .archive
            .read_segment(vod, n)
            .await
            .map_err(store_error)?;
        // Encoding 100,000 items takes a while: off the async workers.
        tokio::task::spawn_blocking(move || Rows::new(items))
            .await
            .map(Data::Rows)
            .map_err(|_| ApiError::unavailable())
    })
    .await
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
    let meta = cache::meta(&r, &vod).await?;
    let Some(last) = meta.last_segment(&r).await? else {
        return Ok(json_response(r#"{"items":[],"next":null}"#.to_string()));
    };
    let first_seg = segment_of(after.map_or(from, |(o, _)| o.max(from)));
    let last_seg = segment_of(to.saturating_sub(1)).min(last);
    let mut body = String::from("{\"items\":[");
    let (mut written, mut more, mut last_key) = (0, false, None);
    'segments: for seg in first_seg..=last_seg {
        let entry = segment_rows(&r, &meta, seg).await?;
        let rows = entry.rows().ok_or_else(ApiError::unavailable)?;
        for i in rows.window(from, to, after) {
            // One more than the page tells whether a next page exists.
            if written == limit {
                more = true;
                break 'segments;
            }
            if written > 0 {
                body.push(',');
            }
            body.push_str(rows.item(i));
            last_key = Some(rows.key(i));
            written += 1;
        }
    }
    r.count_range_rows(written + usize::from(more));
    let next = match (more, last_key) {
        (true, Some((offset_ms, id))) => Some(encode_after(offset_ms, id)),
        _ => None,
    };
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
    cache::encode_now(formats::segment_json(vod, n, items))
}

/// Segment `n` of the VOD in `meta`, density-capped, from the cache or (once per
/// key under a stampede) from the ArchiveStore.
async fn load_segment(r: &Replay, meta: &VodMeta, n: u32) -> Result<CachedBody, ApiError> {
    let cap = r.ctx.settings.replay.density_cap;
    let key = Keys {
        meta,
        density_cap: cap,
    }
    .segment(n);
    let ended = meta.session.ended_at.is_some();
    cached(r, key, r.cache_ttl(ended), || async {
        let _permit = decoded::cold_permit(r).await?;
        let vod = &meta.session.vod;
        let rows = r
            .ctx
            .archive
            .read_segment(vod, n)
            .await
            .map_err(store_error)?;
        let capped = cap_segment(rows, cap, n);
        let (start, end) = segment_range(n);
        debug_assert!(capped
            .iter()
            .all(|c| c.offset_ms >= start && c.offset_ms < end));
        cache::encode(formats::segment_json(vod, n, &capped)).await
    })
    .await
}

/// Whether segment `n` lies beyond anything the VOD can hold yet (its length so
/// far, plus the window within which a sender's stream position may run ahead):
/// then it is empty without asking the store, and nothing is cached for it.
fn beyond_recording(r: &Replay, session: &Session, n: u32) -> bool {
    let ahead = r.ctx.settings.archive.plausible_window_ms.max(0);
    let last = segment_of(
        session
            .length_at(danmaku_core::now_ms())
            .saturating_add(ahead),
    );
    n > last
}

/// `Cache-Control` of a segment: immutable once the VOD ended and everything the
/// SliceStore held of it is archived ([`crate::settle`]), and `replay.settle_secs`
/// passed since the end; else the live `max-age`.
fn segment_cache_control(r: &Replay, meta: &VodMeta) -> HeaderValue {
    let settle_ms = r.ctx.settings.replay.settle_secs.saturating_mul(1000) as i64;
    match meta.session.ended_at {
        Some(_) if meta.settled && settle_ms == 0 => HeaderValue::from_static(IMMUTABLE),
        Some(end) if meta.settled && danmaku_core::now_ms() >= end.saturating_add(settle_ms) => {
            HeaderValue::from_static(IMMUTABLE)
        }
        _ => r.live_cache_control.clone(),
    }
}

/// Segment number `n` of a path: decimal digits without sign, spaces or leading
/// zeros (so one segment has one URL, for caches), at most `u32::MAX`; anything
/// else is `400 invalid_offset`, like any malformed number of the replay API.
pub(crate) fn segment_number(n: &str) -> Result<u32, ApiError> {
    let canonical =
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && (n == "0" || !n.starts_with('0'));
    canonical.then(|| n.parse::<u32>().ok()).flatten().ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidOffset,
            "the segment number is an integer 0..=4294967295 in decimal, without sign or leading zeros",
        )
    })
}

/// The `?token=` of a request (read only when reading needs a token).
fn query_token(uri: &Uri) -> Option<String> {
    Query::<RangeQuery>::try_from_uri(uri)
        .ok()
        .and_then(|q| q.0.token)
}

pub(crate) async fn segment(
    State(r): State<Arc<Replay>>,
    Path((vod, n)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    if r.ctx.settings.auth.require_token_to_read {
        let token = query_token(&uri);
        check_read_access(true, &r.ctx.signer, &headers, token.as_deref())?;
    }
    let n = segment_number(&n)?;
    // The hot path: this segment was served under the VOD's current view.
    if let Some((meta, hot)) = r.hot.get(&vod, n) {
        r.hits.increment(1);
        return Ok(respond_parts(
            &hot.body,
            &hot.gzip,
            hot.etag,
            "application/json",
            segment_cache_control(&r, &meta),
            &headers,
        ));
    }
    let meta = cache::meta(&r, &vod).await?;
    let body = if beyond_recording(&r, &meta.session, n) {
        encode_segment(&vod, n, &[])
    } else {
        let body = load_segment(&r, &meta, n).await?;
        r.hot.put(&meta, n, &body);
        body
    };
    Ok(respond(
        &body,
        "application/json",
        segment_cache_control(&r, &meta),
        &headers,
    ))
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
    fn segment_numbers_are_canonical() {
        assert_eq!(segment_number("0").unwrap(), 0);
        assert_eq!(segment_number("1").unwrap(), 1);
        assert_eq!(segment_number("4294967295").unwrap(), u32::MAX);
        for bad in [
            "",
            "+1",
            "01",
            "00",
            " 1",
            "1 ",
            "-0",
            "-1",
            "1e3",
            "0x1",
            "4294967296",
            "99999999999999999999",
            "١",
        ] {
            let e = segment_number(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidOffset, "{bad:?}");
        }
    }

    #[test]
    fn segment_body_and_etag_are_stable() {
        let a = encode_segment("v1", 0, &[]);
        let b = encode_segment("v1", 0, &[]);
        assert_eq!(a, b);
        assert_eq!(&a.body[..], br#"{"vod":"v1","segment":0,"items":[]}"#);
    }
}
