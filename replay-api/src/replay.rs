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
use crate::{check_vod, formats, Replay, IMMUTABLE};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
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
        let items = crate::read_segment(r, vod, n).await?;
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
        let rows = crate::read_segment(r, vod, n).await?;
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

/// Whether the VOD's segments may be cached for long: it ended, everything the
/// SliceStore held of it is archived ([`crate::settle`]), and
/// `replay.settle_secs` passed since the end.
fn settled_for_caches(r: &Replay, meta: &VodMeta) -> bool {
    let settle_ms = r.ctx.settings.replay.settle_secs.saturating_mul(1000) as i64;
    match meta.session.ended_at {
        Some(end) if meta.settled => {
            settle_ms == 0 || danmaku_core::now_ms() >= end.saturating_add(settle_ms)
        }
        _ => false,
    }
}

/// `Cache-Control` of a segment (API.md, Segment versions): a settled VOD's
/// versioned URL is immutable, its plain URL gets
/// `replay.document_max_age_secs` (clients revalidate with the ETag); a VOD
/// still live or settling keeps the live `max-age` everywhere.
fn segment_cache_control(r: &Replay, meta: &VodMeta, versioned: bool) -> HeaderValue {
    match (settled_for_caches(r, meta), versioned) {
        (true, true) => HeaderValue::from_static(IMMUTABLE),
        (true, false) => r.document_cache_control.clone(),
        (false, _) => r.live_cache_control.clone(),
    }
}

/// The current `version` of the VOD's segments in `meta` (API.md, Segment versions).
pub(crate) fn current_version(r: &Replay, meta: &VodMeta) -> String {
    cache::segment_version(&meta.version, r.ctx.settings.replay.density_cap)
}

/// `301` to segment `n`'s URL at `version`, keeping a `token` the request had.
/// Kept by caches for the live `max-age` only: the target moves on with the
/// next version (a version never comes back, so the redirect is never wrong,
/// only one step behind).
fn moved(r: &Replay, vod: &str, n: u32, version: &str, token: Option<&str>) -> Response {
    let mut location = format!("/v1/vods/{vod}/segments/{n}?v={version}");
    if let Some(t) = token {
        location.push_str("&token=");
        location.push_str(&percent_encode(t));
    }
    let mut resp = StatusCode::MOVED_PERMANENTLY.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("percent-encoded ascii"),
    );
    h.insert(header::CACHE_CONTROL, r.live_cache_control.clone());
    resp
}

/// `s` with every byte outside RFC 3986's unreserved set percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

/// The query of a segment request: `?v=` (a version) and `?token=`.
#[derive(Deserialize, Default)]
struct SegmentQuery {
    v: Option<String>,
    token: Option<String>,
}

/// The segment query of a request; a malformed query counts as none (the
/// version and the token are then absent).
fn segment_query(uri: &Uri) -> SegmentQuery {
    Query::<SegmentQuery>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

pub(crate) async fn segment(
    State(r): State<Arc<Replay>>,
    Path((vod, n)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_vod(&vod)?;
    let q = segment_query(&uri);
    if r.ctx.settings.auth.require_token_to_read {
        check_read_access(true, &r.ctx.signer, &headers, q.token.as_deref())?;
    }
    let n = segment_number(&n)?;
    let wanted = q.v.as_deref().filter(|v| !v.is_empty());
    // The hot path: this segment was served under the VOD's current view.
    if let Some((meta, hot)) = r.hot.get(&vod, n) {
        let current = wanted.is_none_or(|v| v == current_version(&r, &meta));
        if current {
            r.hits.increment(1);
            return Ok(respond_parts(
                &hot.body,
                &hot.gzip,
                hot.etag,
                "application/json",
                segment_cache_control(&r, &meta, wanted.is_some()),
                &headers,
            ));
        }
    }
    let mut meta = cache::meta(&r, &vod).await?;
    if let Some(v) = wanted {
        if v != current_version(&r, &meta) {
            // A version newer than this node's view (listed by a node that saw
            // the change first, or after a change on another node): if the
            // store moved on, take a new view. A made-up version costs one
            // read and evicts nothing.
            let ahead = cache::parse_segment_version(v)
                .is_some_and(|asked| cache::newer(&asked, &meta.version));
            if ahead {
                let fresh = r
                    .ctx
                    .archive
                    .version(&vod)
                    .await
                    .map_err(crate::store_error)?;
                if fresh != meta.version {
                    cache::forget_meta(&r, &vod).await;
                    meta = cache::meta(&r, &vod).await?;
                }
            }
            let current = current_version(&r, &meta);
            if v != current {
                return Ok(moved(&r, &vod, n, &current, q.token.as_deref()));
            }
        }
    }
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
        segment_cache_control(&r, &meta, wanted.is_some()),
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
