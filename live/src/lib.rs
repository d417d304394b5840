//! `danmaku-live`: the live path. The writer stores what ingest put on the
//! Bus; each room's hub turns it into frames; WebSocket and poll clients get
//! them.
//!
//! The connection layer, lowest first; each module imports only the ones
//! above it in this list, never one below:
//!
//! - [`messages`]: every JSON a client receives (`hello`, `batch`, `gap`, `ack`,
//!   `error`, the poll page) and [`messages::RingItem`], an item encoded once.
//!   A new message type goes here.
//! - [`frames`]: the RFC 6455 codec and permessage-deflate, and
//!   [`frames::Frame`], one batch encoded once for the whole room.
//! - [`socket`]: one connection's socket as the room sees it
//!   ([`socket::Subscriber`]): who may write (the room loop or the connection's
//!   task), the hand-off between them, the room loop's non-blocking writes.
//! - [`room`]: per-room hubs ([`room::Hub`], [`room::Hubs`]): the ring of recent
//!   items, frame building, the display budget, the adaptive flush interval,
//!   and the room's write loop that writes each frame to every caught-up socket.
//! - `upgrade`: `GET /v1/rooms/{room}/ws`: the handshake and the task of each
//!   connection (hello, backlog after `?cursor=`, catch-up, `gap`, pings,
//!   `send` through [`danmaku_ingest::Ingest`]).
//!
//! Beside it:
//!
//! - [`bili`]: Bilibili's live protocol: `GET /sub` (its packet codec and
//!   commands sit beside [`messages`], its connection task beside `upgrade`)
//!   and `GET /xlive/web-room/v1/index/getDanmuInfo`.
//! - `poll`: `GET /v1/rooms/{room}/danmaku` (cursor, limit, long poll,
//!   next_poll_ms); imports [`room`] and [`messages`].
//! - [`writer`]: Bus consumer group → SliceStore → the Notifier (offsets
//!   committed after the store write), adaptive slice lengths; imports
//!   [`bigkeys`].
//! - [`bigkeys`]: big-key thresholds, the per-server registry, the scanner and
//!   `GET /v1/admin/bigkeys`.
//! - this file: [`Live`] (the role's state: hubs, ingest, big-key registry,
//!   counters, its background tasks and the notices → hubs hand-off) and
//!   [`router`]. The HTTP handlers (`upgrade`, `poll`, `bigkeys`) take
//!   `Arc<Live>` as their state; nothing below the handlers knows [`Live`].

pub mod bigkeys;
pub mod bili;
pub mod frames;
pub mod messages;
mod poll;
pub mod room;
pub mod socket;
mod upgrade;
pub mod writer;

use axum::routing::get;
use axum::Router;
use bigkeys::BigKeys;
use danmaku_core::context::Context;
use danmaku_core::cursor::Cursor;
use danmaku_core::error::ApiError;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::NotifierEvent;
use danmaku_core::ports::SliceItem;
use danmaku_ingest::Ingest;
use messages::RingItem;
use room::{Hub, HubConfig, Hubs, RingRead};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The live role's shared state.
pub struct Live {
    pub ctx: Context,
    pub hubs: Arc<Hubs>,
    pub ingest: Arc<Ingest>,
    /// Cancelled when the server shuts down: open WebSockets close cleanly.
    pub shutdown: CancellationToken,
    /// Open WebSocket connections.
    pub connections: AtomicUsize,
    /// This server's big-key registry: filled by its writer and scanner, read
    /// by its `/v1/admin/bigkeys` (per server, not per process).
    pub bigkeys: Arc<BigKeys>,
    /// Resumes (`?cursor=`) sending their backlog now: `live.max_concurrent_resumes`.
    pub(crate) resumes: Arc<Semaphore>,
    /// Long polls waiting now: `live.max_long_polls`.
    pub(crate) long_polls: Arc<Semaphore>,
    /// Bytes of backlog pages the resumes in progress hold in memory now.
    resume_bytes: AtomicUsize,
    /// Poll requests in the current second, and the rate of the last one.
    polls_this_second: AtomicU64,
    polls_per_sec: AtomicU64,
}

/// How long a live node's Presence report counts (it reports every second):
/// a crashed node's viewers leave the counts within this.
const PRESENCE_TTL_SECS: u64 = 4;
/// Whether a hub that delivered up to `last` missed items before a notice
/// whose writer stored `prev` last before it and whose first item is `first`:
/// when the writer's `prev` is past `last`, or unknown (the writer just took
/// the room over). Nothing to check for a hub that delivered nothing yet (it
/// settles its floor from the store) or a notice it already has.
fn missed_a_notice(last: u64, prev: Option<u64>, first: Option<u64>) -> bool {
    let Some(first) = first else {
        return false;
    };
    last != 0 && first > last && prev.is_none_or(|p| p > last)
}

/// How long a resync of a room retries a failing store before giving up.
const RESYNC_GIVE_UP: Duration = Duration::from_secs(60);
/// Viewers get `{"type":"online"}` when the count changes, at most this often.
pub const ONLINE_EVERY_SECS: u32 = 5;

/// One page of a room's items after a cursor, as this node can answer it.
#[derive(Debug, Default)]
pub struct Page {
    /// Items after the cursor (after [`Page::gap`] when there is one), in seq order.
    pub items: Vec<RingItem>,
    /// The items right after the cursor are no longer held by this node (neither
    /// its ring nor the SliceStore has them): the page continues from this seq
    /// instead, and the client is told (`gap`).
    pub gap: Option<u64>,
    /// The room has had items (some came back, or the store knows a last seq):
    /// a poll of a room without a hub creates one only then.
    pub has_data: bool,
}

impl Live {
    pub fn new(ctx: Context, ingest: Arc<Ingest>, shutdown: CancellationToken) -> Arc<Self> {
        let l = &ctx.settings.live;
        let cfg = HubConfig {
            ring_size: l.ring_size,
            queue: l.ws_queue,
            flush_max: Duration::from_millis(l.flush_ms),
            flush_min: Duration::from_millis(l.flush_min_ms),
            flush_per_viewer: Duration::from_micros(l.flush_per_viewer_us),
            budget_per_sec: l.display_budget_per_sec,
            ping_every_secs: l.ping_interval_secs,
        };
        let hubs = Arc::new(Hubs::new(cfg, Some(ctx.notifier.clone()), l.max_rooms));
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        let (resumes, long_polls) = (permits(l.max_concurrent_resumes), permits(l.max_long_polls));
        Arc::new(Self {
            ctx,
            hubs,
            ingest,
            shutdown,
            connections: AtomicUsize::new(0),
            bigkeys: Arc::new(BigKeys::default()),
            resumes,
            long_polls,
            resume_bytes: AtomicUsize::new(0),
            polls_this_second: AtomicU64::new(0),
            polls_per_sec: AtomicU64::new(0),
        })
    }

    /// Counts a poll request; returns how much slower than normal clients should
    /// poll (1.0 = normal), from this node's poll rate against its capacity.
    pub(crate) fn poll_load_factor(&self) -> f64 {
        self.polls_this_second.fetch_add(1, Ordering::Relaxed);
        let rate = self.polls_per_sec.load(Ordering::Relaxed) as f64;
        let capacity = self.ctx.settings.live.poll_capacity_per_sec.max(1) as f64;
        (rate / capacity).max(1.0)
    }

    /// Bytes of backlog the resumes in progress hold in memory now (one page
    /// each at most, while it is being written).
    pub fn resume_bytes(&self) -> usize {
        self.resume_bytes.load(Ordering::Relaxed)
    }

    /// Counts `n` bytes of backlog held (negative: released).
    pub(crate) fn hold_resume_bytes(&self, n: isize) {
        let now = if n >= 0 {
            self.resume_bytes.fetch_add(n as usize, Ordering::Relaxed) + n as usize
        } else {
            self.resume_bytes
                .fetch_sub(n.unsigned_abs(), Ordering::Relaxed)
                .saturating_sub(n.unsigned_abs())
        };
        metrics::gauge!("danmaku_ws_resume_bytes").set(now as f64);
    }

    /// Timers of the role: the poll-rate window every second, hub pings every
    /// ping interval, the hub sweep (a quarter of `live.room_idle_secs`, at
    /// most every 30 s), and closing every connection when the server shuts down.
    async fn ticker(self: Arc<Self>, stop: CancellationToken) {
        let ping_every = Duration::from_secs(self.ctx.settings.live.ping_interval_secs.max(1));
        let idle = Duration::from_secs(self.ctx.settings.live.room_idle_secs);
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let mut sweep = tokio::time::interval(
            (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        );
        loop {
            tokio::select! {
                _ = second.tick() => {
                    let n = self.polls_this_second.swap(0, Ordering::Relaxed);
                    self.polls_per_sec.store(n, Ordering::Relaxed);
                }
                _ = ping.tick() => self.hubs.ping_all(),
                _ = sweep.tick() => self.hubs.sweep(idle),
                _ = self.shutdown.cancelled() => {
                    self.hubs.close_all();
                    return;
                }
                _ = stop.cancelled() => return,
            }
        }
    }

    /// The background tasks of the role: the writer (until `writer_stop`, then it
    /// drains the Bus) and the hub sweeper.
    pub async fn run_background(self: Arc<Self>, writer_stop: CancellationToken, grace: Duration) {
        let sweeper = tokio::spawn(self.clone().ticker(writer_stop.clone()));
        let notices = self
            .ctx
            .notifier
            .take_receiver()
            .map(|rx| tokio::spawn(self.clone().deliver_notices(rx)));
        let presence = tokio::spawn(self.clone().presence_loop(writer_stop.clone()));
        writer::run(self.ctx.clone(), self.bigkeys.clone(), writer_stop, grace).await;
        sweeper.abort();
        presence.abort();
        if let Some(n) = notices {
            // The writer has drained; let the last notices reach the hubs.
            let _ = tokio::time::timeout(Duration::from_millis(200), n).await;
        }
    }

    /// Every second: reports this node's viewers per room to the Presence
    /// (the rooms whose count changed; everything at start), reads each room's
    /// count over every node for its hub (viewers get `online` on a change, at
    /// most every [`ONLINE_EVERY_SECS`]), and applies the rooms' display budgets
    /// from their settings.
    async fn presence_loop(self: Arc<Self>, stop: CancellationToken) {
        let node = format!("{:016x}", rand::random::<u64>());
        let ttl = Duration::from_secs(PRESENCE_TTL_SECS);
        let mut reported: HashMap<Arc<str>, u64> = HashMap::new();
        let mut full = true;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => {
                    // Leave at once rather than after the TTL.
                    let gone: Vec<(String, u64)> =
                        reported.keys().map(|r| (r.to_string(), 0)).collect();
                    let _ = self.ctx.presence.report(&node, &gone, true, ttl).await;
                    return;
                }
            }
            let rooms = self.hubs.rooms();
            let mut changes: Vec<(String, u64)> = Vec::new();
            let mut now: HashMap<Arc<str>, u64> = HashMap::with_capacity(rooms.len());
            for (room, hub) in &rooms {
                let n = hub.viewers() as u64;
                if n > 0 {
                    now.insert(room.clone(), n);
                }
                if full || reported.get(room).copied().unwrap_or(0) != n {
                    changes.push((room.to_string(), n));
                }
                hub.set_budget(self.ingest.room_settings(room).display_budget_per_sec);
            }
            for room in reported.keys().filter(|r| !now.contains_key(*r)) {
                if !rooms.iter().any(|(r, _)| r == room) {
                    changes.push((room.to_string(), 0));
                }
            }
            match self.ctx.presence.report(&node, &changes, full, ttl).await {
                Ok(()) => {
                    reported = now;
                    full = false;
                }
                Err(e) => {
                    metrics::counter!("danmaku_presence_errors_total").increment(1);
                    tracing::warn!(error = %e, "presence report failed");
                    full = true;
                    continue;
                }
            }
            let watched: Vec<(Arc<str>, Arc<Hub>)> =
                rooms.into_iter().filter(|(_, h)| h.viewers() > 0).collect();
            for chunk in watched.chunks(1000) {
                let names: Vec<String> = chunk.iter().map(|(r, _)| r.to_string()).collect();
                match self.ctx.presence.online(&names).await {
                    Ok(counts) => {
                        for ((_, hub), n) in chunk.iter().zip(counts) {
                            hub.set_online(n, ONLINE_EVERY_SECS);
                        }
                    }
                    Err(e) => {
                        metrics::counter!("danmaku_presence_errors_total").increment(1);
                        tracing::warn!(error = %e, "presence read failed");
                        break;
                    }
                }
            }
        }
    }

    /// The room's viewers over every node (`GET /v1/rooms/{room}`): this
    /// node's hub when it has one, else the Presence.
    pub async fn online(&self, room: &str) -> u64 {
        match self.ctx.presence.online(&[room.to_string()]).await {
            Ok(v) => v.first().copied().unwrap_or(0),
            Err(e) => {
                tracing::warn!(error = %e, room, "presence read failed");
                self.hubs.find(room).map_or(0, |h| h.online())
            }
        }
    }

    /// Hands the notifier's notices to the room hubs; after a (re)subscription
    /// catches the room up from the SliceStore.
    async fn deliver_notices(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<NotifierEvent>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                NotifierEvent::Notice(n) => {
                    let items: Vec<(u64, Danmaku)> = n
                        .items
                        .iter()
                        .filter_map(|s| Danmaku::decode_bytes(&s.data).ok().map(|d| (s.seq, d)))
                        .collect();
                    // A room whose hub was dropped is no longer wanted here (its
                    // unsubscription may still be on the way).
                    let Some(hub) = self.hubs.find(&n.room) else {
                        continue;
                    };
                    tracing::debug!(
                        target: "danmaku_live::notices",
                        room = &*n.room,
                        prev = ?n.prev,
                        first = ?n.items.first().map(|i| i.seq),
                        last = ?n.items.last().map(|i| i.seq),
                        hub_last = hub.last_seq(),
                        "notice"
                    );
                    if missed_a_notice(hub.last_seq(), n.prev, n.items.first().map(|i| i.seq)) {
                        // Items stored before these never reached this hub (a
                        // notice lost or given up): the store has them.
                        metrics::counter!("danmaku_live_notice_holes_total").increment(1);
                        tracing::info!(
                            room = &*n.room,
                            last = hub.last_seq(),
                            prev = ?n.prev,
                            "notice after a hole; catching up from the slice store"
                        );
                        self.resync(&n.room).await;
                    }
                    hub.deliver(&items);
                }
                NotifierEvent::Resync(room) => self.resync(&room).await,
            }
        }
    }

    /// Catches the room's hub up from the SliceStore (after its last seq).
    ///
    /// A resync follows a notifier outage, so the store may be failing too: a
    /// failed read is retried with backoff (100 ms doubling to 2 s) for as long
    /// as the hub exists, up to `RESYNC_GIVE_UP`: giving up at the first
    /// error left the hub's viewers without the items whose notices were lost
    /// (found by the chaos suite). Items that expired from the store before
    /// they got here (the SliceStore's watermark is past the hub's last seq)
    /// cannot be caught up: the hub's viewers get `gap` ([`Hub::skip_expired`]).
    /// Run on a notifier's `Resync` and after a notice that follows a hole
    /// (public so that a test can stand in for a notifier outage).
    pub async fn resync(&self, room: &str) {
        let Some(hub) = self.hubs.find(room) else {
            return;
        };
        let started = std::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut at = hub.last_seq();
        if at == 0 {
            loop {
                match self.ctx.slices.last_seq(room).await {
                    Ok(last) => return hub.settle_floor(last),
                    Err(e) => tracing::warn!(error = %e, room, "resync failed; retrying"),
                }
                if !self.resync_may_retry(room, started, &mut backoff).await {
                    return;
                }
            }
        }
        let mut watermark_checked = false;
        loop {
            let read = async {
                if !watermark_checked {
                    // Items after `at` that expired before they got here cannot
                    // be caught up: this hub's viewers are told (`gap` at their
                    // cursors) before any later item reaches them.
                    let gone = self.ctx.slices.expired_through(room).await?;
                    watermark_checked = true;
                    if gone > at {
                        metrics::counter!("danmaku_live_expired_catch_ups_total").increment(1);
                        tracing::warn!(
                            room,
                            last = at,
                            expired_through = gone,
                            "catching up past items that expired before this node had them; viewers get gap"
                        );
                        hub.skip_expired(gone);
                    }
                }
                self.ctx.slices.read_after(room, at, 1000).await
            };
            let page = match read.await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, room, "resync failed; retrying");
                    metrics::counter!("danmaku_live_resync_retries_total").increment(1);
                    if !self.resync_may_retry(room, started, &mut backoff).await {
                        tracing::error!(room, "resync given up; viewers resume by cursor");
                        return;
                    }
                    continue;
                }
            };
            let Some(last) = page.last().map(|s| s.seq) else {
                return;
            };
            let items: Vec<(u64, Danmaku)> = page
                .iter()
                .filter_map(|s| Danmaku::decode_bytes(&s.data).ok().map(|d| (s.seq, d)))
                .collect();
            tracing::debug!(target: "danmaku_live::resync", room, after = at, upto = last, items = items.len(), "resync page");
            hub.deliver(&items);
            at = last;
        }
    }

    /// Waits out `backoff` (then doubles it, at most 2 s); whether a resync of
    /// `room` begun at `started` should try again (its hub still exists, the
    /// server is not shutting down, [`RESYNC_GIVE_UP`] not reached).
    async fn resync_may_retry(
        &self,
        room: &str,
        started: std::time::Instant,
        backoff: &mut Duration,
    ) -> bool {
        if started.elapsed() > RESYNC_GIVE_UP || self.shutdown.is_cancelled() {
            return false;
        }
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        self.hubs.find(room).is_some()
    }

    /// Up to `limit` items of `room` after `cursor`: from the hub's ring when it
    /// covers the cursor, else from the SliceStore; a [`Page::gap`] when what
    /// followed the cursor is no longer held.
    ///
    /// How a gap is known with the SliceStore's `read_after` and `last_seq`
    /// alone: a read after the cursor that returns nothing (or only items past
    /// the room's last seq read before it) while that last seq is past the
    /// cursor means the items in between were dropped (archived and expired).
    /// Seqs of a room are not contiguous (they count a Bus partition shared by
    /// rooms), so a page whose first seq is far after the cursor proves nothing,
    /// and neither would the lowest seq the store holds (a room's first seq is
    /// rarely 1). A page that begins after dropped items but still returns
    /// later ones is told by the store's watermark
    /// ([`SliceStore::expired_through`], read after the items so that an expiry
    /// between the two reads is seen): `cursor < watermark` is a gap at the
    /// watermark (or at the ring's floor when the ring reaches further back).
    ///
    /// [`SliceStore::expired_through`]: danmaku_core::ports::SliceStore::expired_through
    pub async fn page(
        &self,
        hub: Option<&Hub>,
        room: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<Page, ApiError> {
        if let Some(RingRead::Covered(items)) = hub.map(|h| h.read_after(cursor, limit)) {
            return Ok(Page {
                items,
                gap: None,
                has_data: true,
            });
        }
        let stored = self.stored_after(room, cursor, limit).await?;
        let gone = self.store_gone(room).await?;
        if gone > cursor {
            // Items after the cursor were dropped, whatever the read returned.
            return self.gap_page(hub, room, cursor, gone, limit).await;
        }
        if !stored.is_empty() {
            return Ok(Page {
                items: decode(stored),
                gap: None,
                has_data: true,
            });
        }
        // Nothing after the cursor: caught up, or what followed it is gone.
        let head = self.store_last(room).await?;
        if head <= cursor {
            return Ok(Page {
                items: Vec::new(),
                gap: None,
                has_data: head > 0,
            });
        }
        // Every item up to `head` was stored before this read: if it returns
        // none of them, they are gone.
        let again = self.stored_after(room, cursor, limit).await?;
        if again.first().is_some_and(|i| i.seq <= head) {
            return Ok(Page {
                items: decode(again),
                gap: None,
                has_data: true,
            });
        }
        // Everything up to `head` is gone: continue after it (the items of
        // `again`, read once more), or from the ring if it reaches further back.
        self.gap_page(hub, room, cursor, head, limit).await
    }

    async fn stored_after(
        &self,
        room: &str,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<SliceItem>, ApiError> {
        self.ctx
            .slices
            .read_after(room, cursor, limit)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, room, "slice read failed");
                ApiError::unavailable()
            })
    }

    /// The answer to a cursor that missed dropped items: `gap` at `from` (every
    /// item of the room up to it is gone from the store) with what the store
    /// holds after it, or at the ring's floor with the ring's items when the
    /// ring reaches further back.
    async fn gap_page(
        &self,
        hub: Option<&Hub>,
        room: &str,
        cursor: u64,
        from: u64,
        limit: usize,
    ) -> Result<Page, ApiError> {
        metrics::counter!("danmaku_live_stale_cursors_total").increment(1);
        let floor = hub
            .and_then(Hub::floor)
            .filter(|f| *f > cursor && *f < from);
        if let (Some(f), Some(h)) = (floor, hub) {
            if let RingRead::Covered(items) = h.read_after(f, limit) {
                tracing::debug!(
                    room,
                    cursor,
                    from = f,
                    "cursor older than the store holds: gap at the ring"
                );
                return Ok(Page {
                    items,
                    gap: Some(f),
                    has_data: true,
                });
            }
        }
        tracing::debug!(room, cursor, from, "cursor older than the store holds: gap");
        let items = decode(self.stored_after(room, from, limit).await?);
        Ok(Page {
            items,
            gap: Some(from),
            has_data: true,
        })
    }

    async fn store_gone(&self, room: &str) -> Result<u64, ApiError> {
        self.ctx.slices.expired_through(room).await.map_err(|e| {
            tracing::warn!(error = %e, room, "slice read failed");
            ApiError::unavailable()
        })
    }

    async fn store_last(&self, room: &str) -> Result<u64, ApiError> {
        self.ctx.slices.last_seq(room).await.map_err(|e| {
            tracing::warn!(error = %e, room, "slice read failed");
            ApiError::unavailable()
        })
    }

    /// The room's current position: the highest seq known to the hub or the store.
    pub async fn head(&self, hub: Option<&Hub>, room: &str) -> Result<u64, ApiError> {
        let stored = self.store_last(room).await?;
        Ok(stored.max(hub.map_or(0, Hub::last_seq)))
    }
}

/// Items as clients see them (an item that does not decode is skipped).
fn decode(stored: Vec<SliceItem>) -> Vec<RingItem> {
    stored
        .into_iter()
        .filter_map(|s| {
            let d = Danmaku::decode_bytes(&s.data).ok()?;
            Some(RingItem::from_danmaku(s.seq, &d))
        })
        .collect()
}

/// `503 unavailable` with `Retry-After` for a request past one of the node's
/// bounds: `rooms` (`live.max_rooms`), `long_polls` (`live.max_long_polls`) or
/// `resumes` (`live.max_concurrent_resumes`), also the metric's label.
pub(crate) fn refused(bound: &'static str) -> ApiError {
    metrics::counter!("danmaku_live_refused_total", "bound" => bound).increment(1);
    let what = match bound {
        "rooms" => "rooms",
        "long_polls" => "long polls",
        _ => "resumes",
    };
    ApiError::new(
        danmaku_core::error::ErrorCode::Unavailable,
        format!("this node serves as many {what} as it may; retry later"),
    )
    .retry_after(1)
}

/// The live routes.
pub fn router(live: Arc<Live>) -> Router {
    let polling = Router::new()
        .route("/v1/rooms/{room}/danmaku", get(poll::poll))
        .layer(tower_http::compression::CompressionLayer::new())
        .with_state(live.clone());
    Router::new()
        .route("/v1/rooms/{room}/ws", get(upgrade::upgrade))
        .route("/v1/rooms/{room}", get(room_info))
        .route("/v1/admin/bigkeys", get(bigkeys::handler))
        .route("/sub", get(bili::sub))
        .route(
            "/xlive/web-room/v1/index/getDanmuInfo",
            get(bili::danmu_info),
        )
        .with_state(live)
        .merge(polling)
}

/// `GET /v1/rooms/{room}`: `{"room", "online", "settings"}` (API.md,
/// Moderation): the viewers over every node and the room's settings as this
/// node knows them (the display budget resolved to its value).
async fn room_info(
    axum::extract::State(live): axum::extract::State<Arc<Live>>,
    axum::extract::Path(room): axum::extract::Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    danmaku_ingest::check_room(&room)?;
    let s = live.ingest.room_settings(&room);
    let online = live.online(&room).await;
    Ok(axum::Json(serde_json::json!({
        "room": room,
        "online": online,
        "settings": {
            "slow_mode_secs": s.slow_mode_secs,
            "muted": s.muted,
            "display_budget_per_sec": s
                .display_budget_per_sec
                .unwrap_or(live.ctx.settings.live.display_budget_per_sec),
        },
    })))
}

/// Parses an optional `?cursor=`: `invalid_cursor` if present and not ours.
pub(crate) fn parse_cursor(raw: Option<&str>) -> Result<Option<u64>, ApiError> {
    match raw {
        None => Ok(None),
        Some(s) => Cursor::decode(s).map(|c| Some(c.0)).ok_or_else(|| {
            ApiError::new(
                danmaku_core::error::ErrorCode::InvalidCursor,
                "the cursor is not one this server handed out",
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::missed_a_notice;

    #[test]
    fn a_hub_behind_the_writers_previous_seq_missed_a_notice() {
        // In step: the writer's previous seq is what the hub delivered last.
        assert!(!missed_a_notice(10, Some(10), Some(11)));
        // A notice in between was lost.
        assert!(missed_a_notice(10, Some(15), Some(16)));
        // The writer does not know (it just took the room over): check.
        assert!(missed_a_notice(10, None, Some(16)));
        // A repeat of what the hub has, an empty notice, a hub that delivered
        // nothing yet: nothing to catch up.
        assert!(!missed_a_notice(20, Some(15), Some(16)));
        assert!(!missed_a_notice(20, None, Some(16)));
        assert!(!missed_a_notice(10, Some(15), None));
        assert!(!missed_a_notice(0, Some(15), Some(16)));
    }
}
