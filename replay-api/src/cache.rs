//! How the replay API uses the [`danmaku_core::ports::ReplayCache`]:
//!
//! - [`VodMeta`]: a node's view of a VOD (its session and version: archived
//!   count and deleted count, [`VodVersion`]), cached in-process for
//!   `replay.meta_ttl_ms` so a cache hit costs no ArchiveStore read;
//! - cache keys that carry the VOD's version, so a new archived row or a
//!   deletion gives every body of the VOD a new key (never a stale body), plus
//!   explicit invalidation when a comment is posted on the recording or deleted
//!   ([`Keys`], [`forget_meta`]);
//! - [`segment_version`]: the `version` of a segment's versioned URL (API.md,
//!   Segment versions), derived from the VOD's version;
//! - [`SingleFlight`]: one ArchiveStore read per key under a stampede;
//! - [`Hot`]: the segment bodies served under each fresh view, so a repeated
//!   segment request costs one map lookup (no key formatting, no second cache);
//! - [`encode`]: body, gzip form and ETag computed once, off the async workers;
//! - [`respond`]: ETag / `If-None-Match` → 304, gzip negotiation, Cache-Control.

use crate::Replay;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use danmaku_core::error::ApiError;
use danmaku_core::ports::{CachedBody, VodVersion};
use danmaku_core::vod::Session;
use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A node's view of one VOD.
#[derive(Clone, Debug)]
pub struct VodMeta {
    pub session: Session,
    /// The VOD's rows when the view was taken (archived and deleted counts).
    pub version: VodVersion,
    /// When the view was taken.
    pub taken: Instant,
    /// Whether the VOD ended and everything of it the SliceStore held at the end
    /// is archived ([`crate::settle`]): only then are its segments `immutable`.
    pub settled: bool,
    /// The highest segment holding a comment, read from the ArchiveStore the first
    /// time a request of this view needs it.
    last_segment: tokio::sync::OnceCell<Option<u32>>,
}

impl VodMeta {
    /// A view taken now.
    pub fn new(session: Session, version: VodVersion, settled: bool) -> Self {
        Self {
            session,
            version,
            taken: Instant::now(),
            settled,
            last_segment: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether the VOD had ended when the view was taken.
    pub fn ended(&self) -> bool {
        self.session.ended_at.is_some()
    }

    /// The highest segment holding a comment (`None`: no comment), once per view.
    pub async fn last_segment(&self, r: &Replay) -> Result<Option<u32>, ApiError> {
        self.last_segment
            .get_or_try_init(|| async {
                r.ctx
                    .archive
                    .last_segment(&self.session.vod)
                    .await
                    .map_err(crate::store_error)
            })
            .await
            .copied()
    }

    fn state(&self) -> char {
        if self.session.ended_at.is_some() {
            'E'
        } else {
            'L'
        }
    }
}

/// The cache keys of a VOD's bodies for one view of it. The format version
/// (`v1`) changes whenever an encoding changes, so old bodies in a shared Redis
/// are never served by a new build.
pub struct Keys<'a> {
    pub meta: &'a VodMeta,
    pub density_cap: usize,
}

impl Keys<'_> {
    /// Segment `n` (native JSON).
    pub fn segment(&self, n: u32) -> String {
        let m = self.meta;
        format!(
            "seg:v1:{}:{}:{}:{}:{}",
            m.session.vod,
            n,
            m.version.token(),
            m.state(),
            self.density_cap
        )
    }

    /// The Bilibili XML document of the whole VOD, holding at most `max` comments.
    pub fn bilibili(&self, max: usize) -> String {
        let m = self.meta;
        format!(
            "xml:v1:{}:{}:{}:{}:{}",
            m.session.vod,
            m.version.token(),
            m.state(),
            self.density_cap,
            max
        )
    }

    /// DPlayer's answer for the whole VOD, holding at most `max` comments.
    pub fn dplayer(&self, max: usize) -> String {
        let m = self.meta;
        format!(
            "dp:v1:{}:{}:{}:{}:{}",
            m.session.vod,
            m.version.token(),
            m.state(),
            self.density_cap,
            max
        )
    }
}

/// The node's view of `vod`: from the in-process meta cache when fresh (one
/// ArchiveStore read per VOD under a stampede), else from the ArchiveStore.
pub async fn meta(r: &Replay, vod: &str) -> Result<Arc<VodMeta>, ApiError> {
    let load = async {
        let session = r
            .ctx
            .archive
            .get_session(vod)
            .await
            .map_err(crate::store_error)?
            .ok_or_else(|| ApiError::not_found("vod"))?;
        // Settled before counting: the count then covers at least what was
        // archived when the SliceStore was seen without the VOD's comments.
        let settled = crate::settle::settled(r, &session).await;
        let version = r
            .ctx
            .archive
            .version(vod)
            .await
            .map_err(crate::store_error)?;
        Ok::<_, ApiError>(Arc::new(VodMeta::new(session, version, settled)))
    };
    match &r.meta {
        None => load.await,
        Some(cache) => cache
            .try_get_with(vod.to_string(), load)
            .await
            .map_err(|e| (*e).clone()),
    }
}

/// Drops this node's view of `vod` (it ended, a comment was posted on it or
/// deleted from it), with the segment bodies served under it.
pub async fn forget_meta(r: &Replay, vod: &str) {
    r.hot.forget(vod);
    if let Some(cache) = &r.meta {
        cache.invalidate(vod).await;
    }
}

/// The `version` of every segment's versioned URL under `version` and the
/// density cap `cap` (a segment's body depends on both): the VOD's version
/// token, then the cap in base 36. Any change of the VOD's rows gives every
/// segment a new version (after the end that is a post or a deletion: rare).
pub fn segment_version(version: &VodVersion, cap: usize) -> String {
    format!("{}.{}", version.token(), radix36(cap as u64))
}

/// The VOD version a [`segment_version`] string was made from, if it is one.
pub fn parse_segment_version(v: &str) -> Option<VodVersion> {
    let mut parts = v.split('.');
    let count = u64::from_str_radix(parts.next()?, 36).ok()?;
    let deleted = u64::from_str_radix(parts.next()?, 36).ok()?;
    parts.next()?;
    parts
        .next()
        .is_none()
        .then_some(VodVersion { count, deleted })
}

/// Whether `a` is a later state of a VOD's rows than `b` (deletions only grow;
/// with the same deletions, the count only grows).
pub fn newer(a: &VodVersion, b: &VodVersion) -> bool {
    (a.deleted, a.count) > (b.deleted, b.count)
}

fn radix36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// A segment body ready to serve: both encodings and the ETag header.
#[derive(Clone)]
pub struct HotBody {
    pub body: Bytes,
    pub gzip: Bytes,
    pub etag: HeaderValue,
}

struct HotVod {
    meta: Arc<VodMeta>,
    until: Instant,
    segments: HashMap<u32, HotBody>,
}

/// The segment bodies served under each VOD's current view, valid as long as
/// the view (`replay.meta_ttl_ms` from when it was taken): a repeated segment
/// request is one read-locked map lookup. Entries share their bytes with the
/// ReplayCache's; bounded by `cap` VODs and `max_bytes` of bodies (so bodies
/// the ReplayCache evicted in the last view's lifetime add at most that much).
pub struct Hot {
    map: std::sync::RwLock<HotMap>,
    ttl: Duration,
    cap: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct HotMap {
    vods: HashMap<String, HotVod>,
    bytes: usize,
}

impl HotMap {
    fn bytes_of(v: &HotVod) -> usize {
        v.segments
            .values()
            .map(|b| b.body.len() + b.gzip.len())
            .sum()
    }

    fn remove(&mut self, vod: &str) {
        if let Some(v) = self.vods.remove(vod) {
            self.bytes -= Self::bytes_of(&v);
        }
    }

    /// Whether `need` more bytes (and, if `new_vod`, one more VOD) fit, after
    /// dropping expired views if they do not. Live views are never dropped to
    /// make room: under pressure the hot set stops growing instead of churning.
    fn make_room(
        &mut self,
        need: usize,
        new_vod: bool,
        cap: usize,
        max_bytes: usize,
        now: Instant,
    ) -> bool {
        let fits = |m: &Self| m.bytes + need <= max_bytes && (!new_vod || m.vods.len() < cap);
        if fits(self) {
            return true;
        }
        self.vods.retain(|_, v| v.until > now);
        self.bytes = self.vods.values().map(Self::bytes_of).sum();
        fits(self)
    }
}

impl Hot {
    /// `ttl` zero disables it.
    pub fn new(ttl: Duration, cap: usize, max_bytes: usize) -> Self {
        Self {
            map: std::sync::RwLock::new(HotMap::default()),
            ttl,
            cap: cap.max(1),
            max_bytes,
        }
    }

    /// Segment `n` of `vod` and the view it was served under, while that view is fresh.
    pub fn get(&self, vod: &str, n: u32) -> Option<(Arc<VodMeta>, HotBody)> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.read().expect("hot lock");
        let v = map.vods.get(vod)?;
        if Instant::now() >= v.until {
            return None;
        }
        Some((v.meta.clone(), v.segments.get(&n)?.clone()))
    }

    /// Remembers `body` as segment `n` under view `meta`.
    pub fn put(&self, meta: &Arc<VodMeta>, n: u32, body: &CachedBody) {
        if self.ttl.is_zero() {
            return;
        }
        let until = meta.taken + self.ttl;
        let now = Instant::now();
        if now >= until {
            return;
        }
        let Ok(etag) = HeaderValue::from_str(&body.etag) else {
            return;
        };
        let hot = HotBody {
            body: body.body.clone(),
            gzip: body.gzip.clone(),
            etag,
        };
        let size = hot.body.len() + hot.gzip.len();
        if size > self.max_bytes {
            return;
        }
        let vod = &meta.session.vod;
        let mut map = self.map.write().expect("hot lock");
        if let Some(v) = map.vods.get(vod.as_str()) {
            if v.meta.taken > meta.taken {
                return; // a newer view is already there
            }
            if !Arc::ptr_eq(&v.meta, meta) {
                map.remove(vod);
            }
        }
        // A body replaced under the same view frees its bytes first.
        let replaced = map
            .vods
            .get_mut(vod.as_str())
            .and_then(|v| v.segments.remove(&n))
            .map_or(0, |old| old.body.len() + old.gzip.len());
        map.bytes -= replaced;
        let new_vod = !map.vods.contains_key(vod.as_str());
        if !map.make_room(size, new_vod, self.cap, self.max_bytes, now) {
            return;
        }
        map.bytes += size;
        let v = map.vods.entry(vod.clone()).or_insert_with(|| HotVod {
            meta: meta.clone(),
            until,
            segments: HashMap::new(),
        });
        v.segments.insert(n, hot);
    }

    /// Forgets everything served for `vod`.
    pub fn forget(&self, vod: &str) {
        self.map.write().expect("hot lock").remove(vod);
    }

    /// Bytes of bodies held.
    pub fn bytes(&self) -> usize {
        self.map.read().expect("hot lock").bytes
    }
}

/// A cached body, or `build` it once (per key, per node, however many ask at
/// once), store it for `ttl`, and return it.
pub async fn cached<F, Fut>(
    r: &Replay,
    key: String,
    ttl: Duration,
    build: F,
) -> Result<CachedBody, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<CachedBody, ApiError>>,
{
    if let Some(hit) = r.ctx.cache.get(&key).await {
        r.hits.increment(1);
        return Ok(hit);
    }
    let ran = std::sync::atomic::AtomicBool::new(false);
    let out = r
        .flights
        .run(&key, async {
            ran.store(true, std::sync::atomic::Ordering::Relaxed);
            // Someone may have finished the same load between our miss and here.
            if let Some(hit) = r.ctx.cache.get(&key).await {
                r.hits.increment(1);
                return Ok(hit);
            }
            r.misses.increment(1);
            let value = build().await?;
            r.ctx.cache.put(&key, value.clone(), ttl).await;
            Ok(value)
        })
        .await;
    if !ran.load(std::sync::atomic::Ordering::Relaxed) {
        // Served by another request's load: no store read of its own.
        r.coalesced.increment(1);
    }
    out
}

type Flight<T> = Arc<tokio::sync::OnceCell<Result<T, ApiError>>>;

/// Coalesces concurrent loads of one key: the first caller runs its future, the
/// others wait for its result. If the first caller is cancelled (its client went
/// away), a waiter takes over. Only keys being loaded are held.
pub struct SingleFlight<T = CachedBody> {
    inflight: Mutex<HashMap<String, Flight<T>>>,
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        Self {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

/// Removes a finished (or abandoned) flight from the map.
struct Landing<'a, T> {
    flights: &'a SingleFlight<T>,
    key: &'a str,
    flight: Flight<T>,
}

impl<T> Drop for Landing<'_, T> {
    fn drop(&mut self) {
        let mut map = self.flights.inflight.lock().expect("single-flight lock");
        if map
            .get(self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(self.key);
        }
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `load` unless a load of `key` is already in flight, whose result is
    /// then shared.
    pub async fn run<Fut>(&self, key: &str, load: Fut) -> Result<T, ApiError>
    where
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let flight = self
            .inflight
            .lock()
            .expect("single-flight lock")
            .entry(key.to_string())
            .or_default()
            .clone();
        let landing = Landing {
            flights: self,
            key,
            flight: flight.clone(),
        };
        let out = flight.get_or_init(|| load).await.clone();
        drop(landing);
        out
    }

    /// Loads in flight (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inflight.lock().expect("single-flight lock").len()
    }

    /// Whether no load is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ETag of a body: a quoted 64-bit xxh3 of its bytes.
pub fn etag_of(body: &[u8]) -> String {
    format!("\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body))
}

/// Body, gzip form and ETag of `body` (blocking work: call through [`encode`]).
pub fn encode_now(body: String) -> CachedBody {
    let etag = etag_of(body.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
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

/// [`encode_now`] on the blocking pool (compressing a large body takes
/// milliseconds).
pub async fn encode(body: String) -> Result<CachedBody, ApiError> {
    if body.len() < 16 * 1024 {
        return Ok(encode_now(body));
    }
    tokio::task::spawn_blocking(move || encode_now(body))
        .await
        .map_err(|_| ApiError::unavailable())
}

/// Whether the client accepts gzip (`Accept-Encoding`, honouring `q=0`).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.trim().split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

/// Whether `If-None-Match` names `etag` (weak comparison, `*` matches).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// The response for a cached body: 304 when `If-None-Match` matches, else the
/// body (gzip when accepted) with its ETag, `cache_control` and `Vary`.
pub fn respond(
    cached: &CachedBody,
    content_type: &'static str,
    cache_control: HeaderValue,
    req: &HeaderMap,
) -> Response {
    let etag = HeaderValue::from_str(&cached.etag).expect("etags are ascii");
    respond_parts(
        &cached.body,
        &cached.gzip,
        etag,
        content_type,
        cache_control,
        req,
    )
}

/// [`respond`] from the parts of a body.
pub fn respond_parts(
    body: &Bytes,
    gzip: &Bytes,
    etag: HeaderValue,
    content_type: &'static str,
    cache_control: HeaderValue,
    req: &HeaderMap,
) -> Response {
    if not_modified(req, etag.to_str().unwrap_or_default()) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        let h = resp.headers_mut();
        h.insert(header::ETAG, etag);
        h.insert(header::CACHE_CONTROL, cache_control);
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        return resp;
    }
    let gzipped = accepts_gzip(req);
    let body = if gzipped { gzip.clone() } else { body.clone() };
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, cache_control);
    h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn gzip_negotiation() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&h));
        for refused in ["gzip;q=0", "gzip; q=0.0", "identity", "br"] {
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(refused));
            assert!(!accepts_gzip(&h), "{refused}");
        }
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("*"));
        assert!(accepts_gzip(&h));
    }

    #[test]
    fn if_none_match() {
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, "\"a\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"a\""),
        );
        assert!(not_modified(&h, "\"a\""));
        assert!(!not_modified(&h, "\"b\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(not_modified(&h, "\"b\""));
    }

    #[test]
    fn encoding_is_stable_and_gunzips() {
        let a = encode_now("{\"items\":[]}".repeat(100));
        let b = encode_now("{\"items\":[]}".repeat(100));
        assert_eq!(a, b);
        let mut out = String::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&a.gzip[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out.as_bytes(), &a.body[..]);
        assert_eq!(a.etag.len(), 18);
    }

    fn view(vod: &str, count: u64) -> Arc<VodMeta> {
        Arc::new(VodMeta::new(
            Session {
                vod: vod.into(),
                room: "r".into(),
                started_at: 0,
                ended_at: Some(1),
                latency_ms: 0,
                video_url: None,
            },
            VodVersion { count, deleted: 0 },
            true,
        ))
    }

    #[test]
    fn segment_versions_name_the_vod_version_and_the_cap() {
        let v = VodVersion {
            count: 1_000,
            deleted: 37,
        };
        let s = segment_version(&v, 6000);
        assert_eq!(s, "rs.11.4mo");
        assert_eq!(parse_segment_version(&s), Some(v));
        assert_ne!(s, segment_version(&v, 100), "the cap changes the body");
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "-1.0.0",
            "z!.0.0",
            "zzzzzzzzzzzzzzzzz.0.0",
        ] {
            assert_eq!(parse_segment_version(bad), None, "{bad:?}");
        }
        let later = VodVersion {
            count: 999,
            deleted: 38,
        };
        assert!(newer(&later, &v) && !newer(&v, &later) && !newer(&v, &v));
        assert!(newer(
            &VodVersion {
                count: 1_001,
                deleted: 37
            },
            &v
        ));
    }

    #[test]
    fn hot_bodies_live_as_long_as_their_view() {
        let hot = Hot::new(Duration::from_millis(200), 2, 1 << 20);
        let old = view("v", 1);
        let new = view("v", 2);
        let body = encode_now("{}".into());
        hot.put(&old, 0, &body);
        let (m, b) = hot.get("v", 0).expect("hit");
        assert!(Arc::ptr_eq(&m, &old));
        assert_eq!(b.gzip, body.gzip);
        assert_eq!(b.etag, body.etag.as_str());
        assert!(hot.get("v", 1).is_none());
        // A newer view replaces the older one's bodies; the older cannot come back.
        hot.put(&new, 1, &body);
        assert!(hot.get("v", 0).is_none());
        hot.put(&old, 0, &body);
        assert!(hot.get("v", 0).is_none());
        assert!(Arc::ptr_eq(&hot.get("v", 1).unwrap().0, &new));
        hot.forget("v");
        assert!(hot.get("v", 1).is_none());
        // Bounded in VODs, and gone once the view expires.
        for vod in ["a", "b", "c"] {
            hot.put(&view(vod, 0), 0, &body);
        }
        assert!(hot.get("b", 0).is_some());
        assert!(hot.get("c", 0).is_none(), "a third VOD does not fit");
        assert_eq!(hot.map.read().unwrap().vods.len(), 2);
        std::thread::sleep(Duration::from_millis(250));
        assert!(hot.get("b", 0).is_none());
        hot.put(&view("c", 0), 0, &body);
        assert!(hot.get("c", 0).is_some(), "expired views make room");
        let off = Hot::new(Duration::ZERO, 10, 1 << 20);
        off.put(&view("v", 0), 0, &body);
        assert!(off.get("v", 0).is_none());
    }

    #[test]
    fn hot_bodies_are_bounded_in_bytes() {
        let body = encode_now("x".repeat(1000));
        let each = body.body.len() + body.gzip.len();
        let hot = Hot::new(Duration::from_secs(60), 1000, each * 3);
        let v = view("v", 0);
        for n in 0..3 {
            hot.put(&v, n, &body);
        }
        assert_eq!(hot.bytes(), each * 3);
        hot.put(&v, 1, &body);
        assert_eq!(hot.bytes(), each * 3, "replacing a body does not grow");
        // Full of live views: a new one is not kept (no churn), until they expire.
        hot.put(&view("w", 0), 0, &body);
        assert!(hot.get("w", 0).is_none());
        assert_eq!(hot.bytes(), each * 3);
        hot.forget("v");
        assert_eq!(hot.bytes(), 0);
        hot.put(&view("w", 0), 0, &body);
        assert!(hot.get("w", 0).is_some());
        let tiny = Hot::new(Duration::from_secs(60), 10, 10);
        tiny.put(&v, 0, &body);
        assert!(
            tiny.get("v", 0).is_none(),
            "bigger than the bound: not kept"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn single_flight_runs_one_load_per_key() {
        let flights = Arc::new(SingleFlight::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (flights, loads) = (flights.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                flights
                    .run("k", async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(encode_now("x".into()))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().body, Bytes::from_static(b"x"));
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert!(flights.is_empty(), "finished flights are forgotten");
    }

    #[tokio::test]
    async fn a_cancelled_loader_hands_over() {
        let flights = Arc::new(SingleFlight::default());
        let f = flights.clone();
        let first = tokio::spawn(async move {
            f.run("k", async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(encode_now("never".into()))
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let f = flights.clone();
        let second =
            tokio::spawn(
                async move { f.run("k", async { Ok(encode_now("second".into())) }).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiter takes over")
            .unwrap()
            .unwrap();
        assert_eq!(got.body, Bytes::from_static(b"second"));
        assert!(flights.is_empty());
    }
}
