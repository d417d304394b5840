//! `danmaku-replay-api`: VOD sessions and replay.
//!
//! - `sessions`: start, end, get and list VOD sessions (API.md, VODs); ending one
//!   makes its room's slices due for archiving at once.
//! - `replay`: the range API (pages cut from [`decoded`] rows) and 6-minute
//!   segments, with ETag / 304 / Cache-Control, served from the
//!   [`danmaku_core::ports::ReplayCache`].
//! - `players`: Bilibili XML and DPlayer's v3 API (read and post).
//! - [`import`]: `POST /v1/vods/{vod}/import`: Bilibili and BililiveRecorder
//!   XML documents, streamed, idempotent, the durable path of VOD posts.
//! - `post`: comments posted on a recording (`POST /v1/vods/{vod}/danmaku`), with
//!   read-your-writes and cache invalidation.
//! - [`cache`]: keys, the per-VOD view, single-flight loads, encoding and the
//!   conditional response.
//! - [`decoded`]: segment rows and DPlayer documents kept decoded in process,
//!   and the bound on loads running at once.
//! - [`listing`]: the snapshot behind `GET /v1/vods` (`replay.list_ttl_ms`,
//!   single flight).
//! - [`settle`]: when an ended VOD's segments may be `immutable`.
//! - [`density`]: the density cap (pure, unit-tested).
//! - [`formats`]: native JSON, Bilibili XML and DPlayer encodings (pure, unit-tested).
//!
//! Deletions and shadow bans: every body comes from [`read_segment`], which
//! never hands out a hidden comment, and every cache key carries the VOD's
//! version (archived and deleted counts), so once a deletion is applied to the
//! ArchiveStore no format serves the comment under a fresh view. [`forget`]
//! drops this node's view at once (the DELETE handler calls it); other nodes
//! take a new view within `replay.meta_ttl_ms`.

pub mod cache;
pub mod decoded;
pub mod density;
pub mod formats;
pub mod import;
pub mod listing;
mod players;
mod post;
mod replay;
mod sessions;
pub mod settle;

use axum::http::HeaderValue;
use axum::routing::{get, post};
use axum::Router;
use danmaku_core::context::Context;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::valid_id;
use danmaku_ingest::Ingest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The replay role's shared state.
pub struct Replay {
    pub ctx: Context,
    pub ingest: Arc<Ingest>,
    /// Each VOD's session and version, for `replay.meta_ttl_ms` (None = off).
    meta: Option<moka::future::Cache<String, Arc<cache::VodMeta>>>,
    /// Loads in flight, one per cache key.
    flights: cache::SingleFlight,
    /// Segment bodies served under each fresh view of a VOD.
    hot: cache::Hot,
    /// `danmaku_replay_cache_hits_total` / `_misses_total` (handles, so a hit
    /// does not look the metric up).
    hits: metrics::Counter,
    misses: metrics::Counter,
    /// `danmaku_replay_cache_coalesced_total`: misses that waited for another
    /// request's load of the same key (single flight) instead of reading the store.
    coalesced: metrics::Counter,
    /// `Cache-Control` of a live VOD's bodies (and of a segment still settling).
    live_cache_control: HeaderValue,
    /// `Cache-Control` of an ended VOD's whole-recording documents.
    document_cache_control: HeaderValue,
    /// Segment rows and DPlayer documents, decoded (`replay.rows_cache_bytes`).
    decoded: decoded::Decoded,
    /// `replay.max_cold_loads`: ArchiveStore loads and document cuts running now.
    cold: tokio::sync::Semaphore,
    /// `replay.cold_load_wait_ms`.
    cold_wait: Duration,
    /// `danmaku_replay_cold_loads_refused_total`: requests answered 503 because
    /// every cold-load permit was taken.
    cold_refused: metrics::Counter,
    /// Ended VODs known to be archived ([`settle`]); bounded, losing one only
    /// costs a SliceStore read.
    settled: moka::sync::Cache<String, ()>,
    /// Range API rows copied into answers, in all (for tests and
    /// `danmaku_replay_range_rows_total`).
    range_rows: AtomicU64,
    range_rows_metric: metrics::Counter,
    /// `GET /v1/vods`'s snapshot of live and recent sessions.
    listing: listing::Listing,
}

/// `Cache-Control` of a segment of an ended VOD (API.md).
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

impl Replay {
    /// The role's state; within a Tokio runtime, also the task that drops
    /// decoded rows unused for `replay.rows_idle_secs`.
    pub fn new(ctx: Context, ingest: Arc<Ingest>) -> Arc<Self> {
        let idle = ctx.settings.replay.rows_idle_secs.clamp(1, 5);
        let replay = Self::build(ctx, ingest);
        // Expired decoded rows leave even when no request comes to notice; the
        // task ends with the role.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&replay);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(idle));
                loop {
                    tick.tick().await;
                    let Some(r) = weak.upgrade() else { break };
                    r.decoded.sweep().await;
                }
            });
        }
        replay
    }

    fn build(ctx: Context, ingest: Arc<Ingest>) -> Arc<Self> {
        let s = &ctx.settings.replay;
        let meta = (s.meta_ttl_ms > 0).then(|| {
            moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_millis(s.meta_ttl_ms))
                .build()
        });
        let live_cache_control =
            HeaderValue::from_str(&format!("public, max-age={}", s.live_max_age_secs))
                .expect("ascii");
        let document_cache_control =
            HeaderValue::from_str(&format!("public, max-age={}", s.document_max_age_secs))
                .expect("ascii");
        Arc::new(Self {
            meta,
            flights: cache::SingleFlight::default(),
            // At most a quarter of the in-process cache's bound on top of it.
            hot: cache::Hot::new(
                Duration::from_millis(s.meta_ttl_ms),
                10_000,
                (s.cache_bytes / 4).min(usize::MAX as u64) as usize,
            ),
            hits: metrics::counter!("danmaku_replay_cache_hits_total"),
            misses: metrics::counter!("danmaku_replay_cache_misses_total"),
            coalesced: metrics::counter!("danmaku_replay_cache_coalesced_total"),
            live_cache_control,
            document_cache_control,
            decoded: decoded::Decoded::new(
                s.rows_cache_bytes,
                Duration::from_secs(s.rows_idle_secs.max(1)),
            ),
            cold: tokio::sync::Semaphore::new(
                s.max_cold_loads
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            ),
            cold_wait: Duration::from_millis(s.cold_load_wait_ms),
            cold_refused: metrics::counter!("danmaku_replay_cold_loads_refused_total"),
            settled: moka::sync::Cache::new(100_000),
            range_rows: AtomicU64::new(0),
            range_rows_metric: metrics::counter!("danmaku_replay_range_rows_total"),
            listing: listing::Listing::new(Duration::from_millis(s.list_ttl_ms)),
            ctx,
            ingest,
        })
    }

    /// Bytes of decoded rows and documents held (`replay.rows_cache_bytes`).
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded.bytes()
    }

    /// Rows the range API has copied into answers since start: what its pages
    /// cost, whatever the segments' sizes (tests assert on it).
    pub fn range_rows_read(&self) -> u64 {
        self.range_rows.load(Ordering::Relaxed)
    }

    /// ArchiveStore reads made for `GET /v1/vods` since start (tests assert
    /// on it: a cached listing costs none).
    pub fn listing_loads(&self) -> u64 {
        self.listing.loads()
    }

    fn count_range_rows(&self, n: usize) {
        self.range_rows.fetch_add(n as u64, Ordering::Relaxed);
        self.range_rows_metric.increment(n as u64);
    }

    /// How long cached bodies of a VOD live in the cache tiers.
    fn cache_ttl(&self, ended: bool) -> Duration {
        let s = &self.ctx.settings.replay;
        if ended {
            Duration::from_secs(s.ended_ttl_secs.max(1))
        } else {
            Duration::from_secs(s.live_max_age_secs.max(1))
        }
    }
}

/// The replay-api routes.
pub fn router(replay: Arc<Replay>) -> Router {
    Router::new()
        .route("/v1/rooms/{room}/sessions", post(sessions::start))
        .route("/v1/rooms/{room}/vods", get(sessions::list))
        .route("/v1/vods", get(sessions::list_all))
        .route("/v1/vods/{vod}", get(sessions::get).patch(sessions::patch))
        .route("/v1/vods/{vod}/end", post(sessions::end))
        .route(
            "/v1/vods/{vod}/danmaku",
            get(replay::range).post(post::post_vod),
        )
        .route("/v1/vods/{vod}/import", post(import::import))
        .route("/v1/vods/{vod}/segments/{n}", get(replay::segment))
        .route("/v1/vods/{vod}/bilibili.xml", get(players::bilibili))
        .route(
            "/dplayer/v3/",
            get(players::dplayer_get).post(players::dplayer_post),
        )
        .route(
            "/dplayer/v3",
            get(players::dplayer_get).post(players::dplayer_post),
        )
        .with_state(replay)
}

pub(crate) fn check_vod(vod: &str) -> Result<(), ApiError> {
    if valid_id(vod) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidVod,
            "vod ids match [A-Za-z0-9_-]{1,64}",
        ))
    }
}

/// Drops this node's cached view of `vod` (session, version, the segment
/// bodies served under it), so the next request reads the ArchiveStore's
/// current version: call it after changing the VOD's rows on this node (a
/// deletion applied, a post). Bodies cached under the old version are never
/// served again (every key carries the version); other nodes notice within
/// `replay.meta_ttl_ms`.
pub async fn forget(replay: &Replay, vod: &str) {
    cache::forget_meta(replay, vod).await;
}

/// Segment `n` of `vod` from the ArchiveStore, without hidden (shadow-banned)
/// comments: every replay body is built from this.
pub(crate) async fn read_segment(
    r: &Replay,
    vod: &str,
    n: u32,
) -> Result<Vec<danmaku_core::ports::ArchivedComment>, ApiError> {
    let mut rows = r
        .ctx
        .archive
        .read_segment(vod, n)
        .await
        .map_err(store_error)?;
    rows.retain(|c| !c.item.hidden && !c.item.is_deletion());
    Ok(rows)
}

pub(crate) fn store_error(e: danmaku_core::ports::ArchiveError) -> ApiError {
    tracing::warn!(error = %e, "archive store failed");
    ApiError::unavailable()
}
