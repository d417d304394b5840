//! The room: per-room hubs and the room's write loop.
//!
//! A [`Hub`] keeps a ring of recent items (for resume and polling), turns
//! incoming items into frames (the first item after a quiet period at once,
//! then at most one frame per flush interval carrying everything pending),
//! applies the room's display budget, and builds each frame once
//! ([`Frame`]: complete WebSocket bytes, deflated once on first use), shared by
//! every connection of the room. Long polls watch the room's last seq.
//! [`Hubs`] is every hub of this node.
//!
//! The flush interval adapts to the room's audience: a frame costs one write per
//! viewer, so a small room flushes often (low latency) and a big one less often
//! (fewer, fuller frames): `clamp(viewers × per_viewer, min, max)`
//! ([`HubConfig::flush_interval`]).
//!
//! Frames go into the room's frame ring (the last `queue` frames). The room's
//! write loop (one task per room with viewers) writes each new frame straight
//! to every caught-up connection's socket, a bounded number of writes between
//! yields, instead of waking one task per connection per frame; a connection
//! that fell behind catches up from the ring (or gets `gap`) in its own task.
//!
//! Why: a frame to 5,000 viewers is 5,000 `send(2)` calls. With one task per
//! connection, every frame put 5,000 tasks on the runtime's queue, and every
//! other task (the publisher's socket, ingest, the Bus, the writer, the notifier:
//! the path of the *next* comments) waited behind all of them, once per hop.
//! Here the run queue stays short: the room's loop yields every
//! [`WRITES_PER_YIELD`] writes, so the pipeline runs between slices of the
//! round, and a connection's own task only wakes when it has to (a socket that
//! is full, a frame it must see re-encoded, a ping it must answer, shutdown).
//!
//! A round takes the frames published since the last one and writes, to each
//! connection in turn, all those it has not had, as one `send(2)`/`sendmsg(2)`
//! ([`Subscriber`]'s side of the hand-off, in [`crate::socket`]). At every
//! yield the round picks up frames published meanwhile, so a connection late in
//! a long round (5,000 viewers) gets them in this round, not the next.
//!
//! May import: [`crate::socket`], [`crate::frames`], [`crate::messages`];
//! never `upgrade` (connections come to the room, not the reverse).

use crate::frames::{self, Frame};
use crate::messages::{self, RingItem};
use crate::socket::{now_secs, Subscriber, MAX_FRAMES_PER_WRITE};
use bytes::Bytes;
use danmaku_core::model::{Danmaku, Kind};
use danmaku_core::ports::Notifier;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Settings a hub needs.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Most recent items kept for resume and polling.
    pub ring_size: usize,
    /// Frames a connection may fall behind before it gets `gap`.
    pub queue: usize,
    /// Longest flush interval (`live.flush_ms`): the interval of a big room.
    pub flush_max: Duration,
    /// Shortest flush interval (`live.flush_min_ms`): the interval of a small room.
    pub flush_min: Duration,
    /// Flush interval per viewer (`live.flush_per_viewer_us`), between the two bounds.
    pub flush_per_viewer: Duration,
    /// Plain comments per second shown live.
    pub budget_per_sec: u32,
    /// Ping interval, seconds: a connection silent for two is dead.
    pub ping_every_secs: u64,
}

impl HubConfig {
    /// The flush interval of a room with `viewers` connections:
    /// `clamp(viewers × flush_per_viewer, flush_min, flush_max)` (a `flush_min`
    /// above `flush_max` counts as `flush_max`).
    pub fn flush_interval(&self, viewers: usize) -> Duration {
        let max = self.flush_max;
        let min = self.flush_min.min(max);
        let n = u32::try_from(viewers).unwrap_or(u32::MAX);
        self.flush_per_viewer.saturating_mul(n).clamp(min, max)
    }
}

struct State {
    ring: VecDeque<RingItem>,
    /// The ring holds every item of the room with seq > floor; `None` until the
    /// first delivery (a hub opened by a viewer knows nothing yet).
    floor: Option<u64>,
    last_seq: u64,
    /// Items not yet sent in a frame.
    pending: Vec<RingItem>,
    flush_scheduled: bool,
    /// When the last frame went out (tokio's clock, so paused-time tests drive it).
    last_flush: Option<tokio::time::Instant>,
    /// Display budget tokens (plain comments).
    tokens: f64,
    tokens_at: Instant,
    /// Items per second, exponentially averaged.
    rate: f64,
    rate_at: Instant,
}

/// The room's last frames: frame index `base` is `ring[0]`.
struct FrameRing {
    base: u64,
    ring: VecDeque<Arc<Frame>>,
}

/// The room's connections, and whether its write loop is running.
struct Subs {
    list: Vec<Arc<Subscriber>>,
    loop_running: bool,
}

/// One room's hub.
pub struct Hub {
    state: Mutex<State>,
    frames: Mutex<FrameRing>,
    subs: Mutex<Subs>,
    /// Wakes the room's write loop: a new frame, or a ping is due.
    fanout_wake: Notify,
    ping_due: AtomicBool,
    /// The room's viewers over every node, as last read from the Presence.
    online: AtomicU64,
    /// The room's display budget (comments/s): `live.display_budget_per_sec`
    /// unless the room's settings say otherwise ([`Hub::set_budget`]).
    budget: AtomicU32,
    /// The `online` message the write loop sends next, if one is due.
    online_due: Mutex<Option<Bytes>>,
    /// The count last sent to viewers, and when (`now_secs`; 0 = never).
    online_sent: Mutex<(u64, u32)>,
    closing: AtomicBool,
    seq: watch::Sender<u64>,
    /// Connections and long polls holding the hub ([`HubPin`]): a pinned hub is
    /// never dropped.
    pins: AtomicUsize,
    /// When a client last used the hub (`now_secs`); data arriving does not count.
    last_used: AtomicU32,
    cfg: HubConfig,
}

/// A hub held by a connection or a long poll: while any exists the hub stays
/// in [`Hubs`] (so the room's notices keep reaching it). One pointer, like the
/// `Arc<Hub>` it wraps.
pub struct HubPin(Arc<Hub>);

impl HubPin {
    /// The pinned hub.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.0
    }
}

impl std::ops::Deref for HubPin {
    type Target = Hub;
    fn deref(&self) -> &Hub {
        &self.0
    }
}

impl Drop for HubPin {
    fn drop(&mut self) {
        self.0.touch();
        self.0.pins.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the ring can answer for "items after cursor c".
pub enum RingRead {
    /// The ring covers the cursor: these are all the items after it.
    Covered(Vec<RingItem>),
    /// Items at or below the ring's floor may be missing: ask the SliceStore.
    NotCovered,
}

impl Hub {
    pub fn new(cfg: HubConfig) -> Self {
        let (seq, _) = watch::channel(0);
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                floor: None,
                last_seq: 0,
                pending: Vec::new(),
                flush_scheduled: false,
                last_flush: None,
                tokens: cfg.budget_per_sec as f64,
                tokens_at: now,
                rate: 0.0,
                rate_at: now,
            }),
            frames: Mutex::new(FrameRing {
                base: 1,
                ring: VecDeque::new(),
            }),
            subs: Mutex::new(Subs {
                list: Vec::new(),
                loop_running: false,
            }),
            fanout_wake: Notify::new(),
            ping_due: AtomicBool::new(false),
            online: AtomicU64::new(0),
            budget: AtomicU32::new(cfg.budget_per_sec),
            online_due: Mutex::new(None),
            online_sent: Mutex::new((0, 0)),
            closing: AtomicBool::new(false),
            seq,
            pins: AtomicUsize::new(0),
            last_used: AtomicU32::new(now_secs()),
            cfg,
        }
    }

    /// Marks the hub as used by a client now (a poll that read it): an unused
    /// hub is dropped after the idle time.
    pub fn touch(&self) {
        let now = now_secs();
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// Whether nothing holds the hub and nobody used it for `idle`: dropping it
    /// loses only a cache (the SliceStore has every item).
    fn unused_for(&self, idle: Duration) -> bool {
        let idle_secs = now_secs().saturating_sub(self.last_used.load(Ordering::Relaxed));
        self.pins.load(Ordering::Relaxed) == 0
            && self.seq.receiver_count() == 0
            && self.viewers() == 0
            && u64::from(idle_secs) >= idle.as_secs()
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, Subs> {
        self.subs.lock().expect("hub subs lock")
    }

    fn frames(&self) -> std::sync::MutexGuard<'_, FrameRing> {
        self.frames.lock().expect("hub frames lock")
    }

    /// Adds a connection (call before reading any backlog: it gets every frame
    /// from the next one on) and starts the room's write loop if it is not running.
    pub fn subscribe(self: &Arc<Self>, sub: Arc<Subscriber>) {
        let mut subs = self.subs();
        sub.slot.store(subs.list.len(), Ordering::Relaxed);
        subs.list.push(sub);
        if !subs.loop_running {
            subs.loop_running = true;
            tokio::spawn(write_loop(self.clone()));
        }
    }

    /// Removes a connection.
    pub fn unsubscribe(&self, sub: &Arc<Subscriber>) {
        let mut subs = self.subs();
        let at = sub.slot.load(Ordering::Relaxed);
        if at < subs.list.len() && Arc::ptr_eq(&subs.list[at], sub) {
            subs.list.swap_remove(at);
            if let Some(moved) = subs.list.get(at) {
                moved.slot.store(at, Ordering::Relaxed);
            }
        }
    }

    /// The room's connections now.
    fn subscribers(&self) -> Vec<Arc<Subscriber>> {
        self.subs().list.clone()
    }

    /// Called by the write loop when it found no connection: stops it unless one
    /// arrived meanwhile.
    fn stop_fanout_if_empty(&self) -> bool {
        let mut subs = self.subs();
        if subs.list.is_empty() {
            subs.loop_running = false;
            true
        } else {
            false
        }
    }

    /// Index of the next frame to be published (a new connection starts there).
    pub fn next_frame_index(&self) -> u64 {
        let f = self.frames();
        f.base + f.ring.len() as u64
    }

    /// The last (at most) `max` frames and the index of the first of them.
    fn recent_frames(&self, max: usize) -> (u64, Vec<Arc<Frame>>) {
        let f = self.frames();
        let skip = f.ring.len().saturating_sub(max);
        (
            f.base + skip as u64,
            f.ring.iter().skip(skip).cloned().collect(),
        )
    }

    /// The frames from index `next` on; `None` if the ring no longer holds
    /// `next` (the connection fell a whole queue behind: `gap`).
    pub fn frames_from(&self, next: u64) -> Option<Vec<Arc<Frame>>> {
        let f = self.frames();
        if next < f.base {
            return None;
        }
        Some(
            f.ring
                .iter()
                .skip((next - f.base) as usize)
                .cloned()
                .collect(),
        )
    }

    fn publish(&self, frame: Arc<Frame>) {
        {
            let mut f = self.frames();
            if f.ring.len() >= self.cfg.queue.max(2) {
                f.ring.pop_front();
                f.base += 1;
            }
            f.ring.push_back(frame);
        }
        self.fanout_wake.notify_one();
    }

    /// Connections watching this room.
    pub fn viewers(&self) -> usize {
        self.subs().list.len()
    }

    /// Whether the server is shutting down (connections close with 1001).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// The room's viewers over every node (this node's own until the first
    /// Presence read).
    pub fn online(&self) -> u64 {
        self.online
            .load(Ordering::Relaxed)
            .max(self.viewers() as u64)
    }

    /// Takes the room's count over every node: when it differs from what the
    /// viewers were last told and that was at least `every_secs` ago, an
    /// `online` message goes to every JSON viewer (change-driven, rate-bounded).
    pub fn set_online(&self, count: u64, every_secs: u32) {
        self.online.store(count, Ordering::Relaxed);
        let now = now_secs();
        let mut sent = self.online_sent.lock().expect("online lock");
        if sent.0 == count || (sent.1 != 0 && now.saturating_sub(sent.1) < every_secs) {
            return;
        }
        *sent = (count, now);
        drop(sent);
        let msg = frames::text_frame(&messages::online(count));
        *self.online_due.lock().expect("online lock") = Some(msg);
        if !self.subs().list.is_empty() {
            self.fanout_wake.notify_one();
        }
    }

    /// The room's display budget from its settings (`None`: the configured one).
    pub fn set_budget(&self, per_sec: Option<u32>) {
        self.budget.store(
            per_sec.unwrap_or(self.cfg.budget_per_sec),
            Ordering::Relaxed,
        );
    }

    fn take_online_due(&self) -> Option<Bytes> {
        self.online_due.lock().expect("online lock").take()
    }

    fn take_ping_due(&self) -> bool {
        self.ping_due.swap(false, Ordering::Relaxed)
    }

    fn ping_every_secs(&self) -> u64 {
        self.cfg.ping_every_secs.max(1)
    }

    /// Watches the room's last seq (for long polls).
    pub fn watch_seq(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }

    /// Adds items (seq order) from the writer. Items already seen are ignored. The
    /// first items after a quiet flush interval go out at once; later ones wait for
    /// the next flush (the interval is the room's, from its current viewers).
    pub fn deliver(self: &Arc<Self>, items: &[(u64, Danmaku)]) {
        let mut st = self.state.lock().expect("hub lock");
        let fresh: Vec<RingItem> = items
            .iter()
            .filter(|(seq, _)| *seq > st.last_seq)
            .map(|(seq, d)| RingItem::from_danmaku(*seq, d))
            .collect();
        // A deletion takes its comment out of the ring (nobody who arrives
        // later gets it) and out of what is still pending (not sent yet).
        let deleted = messages::deleted_ids(&fresh);
        if !deleted.is_empty() {
            st.ring
                .retain(|i| !deleted.contains(&i.id) || !i.is_shown());
            st.pending
                .retain(|i| !deleted.contains(&i.id) || !i.is_shown());
        }
        let fresh: Vec<RingItem> = if deleted.is_empty() {
            fresh
        } else {
            fresh
                .into_iter()
                .filter(|i| !i.is_shown() || !deleted.contains(&i.id))
                .collect()
        };
        let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
            return;
        };
        let (first_seq, last_seq) = (first.seq, last.seq);
        if st.floor.is_none() {
            st.floor = Some(first_seq - 1);
        }
        for it in &fresh {
            if st.ring.len() >= self.cfg.ring_size.max(1) {
                if let Some(old) = st.ring.pop_front() {
                    st.floor = Some(old.seq);
                }
            }
            st.ring.push_back(it.clone());
        }
        st.last_seq = last_seq;
        let now = Instant::now();
        let dt = now.duration_since(st.rate_at).as_secs_f64().max(0.001);
        let alpha = (dt / 5.0).min(1.0);
        st.rate = st.rate * (1.0 - alpha) + (fresh.len() as f64 / dt.max(0.2)) * alpha;
        st.rate_at = now;
        st.pending.extend(fresh);
        self.seq.send_replace(last_seq);
        if st.flush_scheduled {
            return;
        }
        let interval = self.cfg.flush_interval(self.viewers());
        let tnow = tokio::time::Instant::now();
        let due = st.last_flush.map_or(tnow, |t| t + interval);
        if tnow >= due {
            let frame = self.take_frame(&mut st, now);
            drop(st);
            if let Some(f) = frame {
                self.publish(f);
            }
        } else {
            st.flush_scheduled = true;
            drop(st);
            let hub = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(due).await;
                hub.flush();
            });
        }
    }

    /// Sends whatever is pending.
    pub fn flush(&self) {
        let mut st = self.state.lock().expect("hub lock");
        st.flush_scheduled = false;
        let frame = self.take_frame(&mut st, Instant::now());
        drop(st);
        if let Some(f) = frame {
            self.publish(f);
        }
    }

    fn take_frame(&self, st: &mut State, now: Instant) -> Option<Arc<Frame>> {
        if st.pending.is_empty() {
            return None;
        }
        st.last_flush = Some(tokio::time::Instant::now());
        let pending = std::mem::take(&mut st.pending);
        let budget = self.budget.load(Ordering::Relaxed) as f64;
        st.tokens = (st.tokens + now.duration_since(st.tokens_at).as_secs_f64() * budget)
            .min(budget.max(1.0));
        st.tokens_at = now;
        let first_seq = pending[0].seq;
        let last_seq = pending[pending.len() - 1].seq;
        let mut items = Vec::with_capacity(pending.len());
        let mut withheld = Vec::new();
        let mut likes = 0u64;
        for it in pending {
            if it.hidden {
                // A shadow-banned sender's comment goes to that sender only.
                withheld.push(it);
                continue;
            }
            if !it.is_shown() {
                items.push(it);
                continue;
            }
            match it.kind {
                Kind::Like => likes += 1,
                Kind::Gift | Kind::System => items.push(it),
                Kind::Comment => {
                    if st.tokens >= 1.0 {
                        st.tokens -= 1.0;
                        items.push(it);
                    } else {
                        withheld.push(it);
                    }
                }
            }
        }
        if !withheld.is_empty() {
            metrics::counter!("danmaku_live_dropped_total").increment(withheld.len() as u64);
        }
        // Never an empty batch for deletions alone: then the frame is the
        // `delete` message (the cursor moves with the next batch).
        let deletes = messages::deletes_of(&items).map(Bytes::from);
        let (json, after) = match deletes {
            Some(d) if likes == 0 && !items.iter().any(RingItem::is_shown) => (d, None),
            d => (Bytes::from(messages::batch(&items, last_seq, likes)), d),
        };
        let frame = Frame::with_after(first_seq, last_seq, items, withheld, json, after);
        metrics::counter!("danmaku_live_frames_total").increment(1);
        Some(Arc::new(frame))
    }

    /// A ping tick: the write loop pings every connection and drops dead ones.
    pub fn ping(&self) {
        if !self.subs().list.is_empty() {
            self.ping_due.store(true, Ordering::Relaxed);
            self.fanout_wake.notify_one();
        }
    }

    /// Tells every connection to close (server shutdown).
    pub fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        for s in self.subscribers() {
            s.wake.notify_one();
        }
    }

    /// The store expired items of the room up to `gone` that this hub never
    /// had (its node was cut off for longer than the hot retention): from here
    /// on the ring covers only cursors at or after `gone` (older ones are
    /// answered from the store, with `gap`), and every current connection is
    /// told to end with `gap` at its own cursor before any later item reaches
    /// it. Call before delivering the items that follow the hole.
    pub fn skip_expired(&self, gone: u64) {
        {
            let mut st = self.state.lock().expect("hub lock");
            st.ring.clear();
            st.floor = Some(st.floor.unwrap_or(0).max(gone));
        }
        for s in self.subscribers() {
            s.expired.store(true, Ordering::Release);
            s.wake.notify_one();
        }
    }

    /// Items after `cursor`, if the ring covers it.
    pub fn read_after(&self, cursor: u64, limit: usize) -> RingRead {
        let st = self.state.lock().expect("hub lock");
        match st.floor {
            Some(floor) if cursor >= floor => {
                let start = st.ring.partition_point(|i| i.seq <= cursor);
                RingRead::Covered(st.ring.iter().skip(start).take(limit).cloned().collect())
            }
            _ => RingRead::NotCovered,
        }
    }

    /// Items of the last `window_ms` (for clients without a cursor), at most `limit`.
    pub fn recent(&self, now_ms: i64, window_ms: i64, limit: usize) -> Vec<RingItem> {
        let st = self.state.lock().expect("hub lock");
        let start = st.ring.partition_point(|i| i.ts_ms < now_ms - window_ms);
        let skip = (st.ring.len() - start).saturating_sub(limit);
        st.ring.iter().skip(start + skip).cloned().collect()
    }

    /// After a (re)subscription: a hub that knows nothing yet starts at the
    /// store's head `store_last` (older items are read from the store).
    pub fn settle_floor(&self, store_last: u64) {
        let mut st = self.state.lock().expect("hub lock");
        if st.floor.is_none() {
            st.floor = Some(store_last);
            st.last_seq = st.last_seq.max(store_last);
            // A long poll that began before the room was known here looks again
            // (items stored before the subscription reach it from the store).
            if st.last_seq > 0 {
                self.seq.send_replace(st.last_seq);
            }
        }
    }

    /// The highest seq delivered (0 if none yet).
    pub fn last_seq(&self) -> u64 {
        self.state.lock().expect("hub lock").last_seq
    }

    /// Items per second lately.
    pub fn rate(&self) -> f64 {
        let st = self.state.lock().expect("hub lock");
        let idle = st.rate_at.elapsed().as_secs_f64();
        st.rate * (-idle / 10.0).exp()
    }

    /// The ring holds every item of the room after this seq (`None` until the
    /// hub knows where the room is).
    pub fn floor(&self) -> Option<u64> {
        self.state.lock().expect("hub lock").floor
    }
}

/// Every hub of this node. Creating a hub subscribes this node to the room's
/// notices; dropping it unsubscribes.
///
/// Hubs exist for rooms with viewers (a WebSocket, a long poll: they pin it)
/// and, as a cache, for rooms with data that pollers read; a poll of a room
/// without a hub and without data is answered from the SliceStore and creates
/// none. A hub nothing pins is dropped once unused for the idle time
/// ([`Hubs::sweep`]); at most `max_rooms` exist: at the cap every unpinned hub
/// is dropped first (at most once a second), and only a cap of pinned ones
/// refuses a new room ([`RoomsFull`]).
pub struct Hubs {
    /// Keyed by the room's name, shared with the room's connections.
    map: Arc<Mutex<HashMap<Arc<str>, Arc<Hub>>>>,
    cfg: HubConfig,
    notifier: Option<Arc<dyn Notifier>>,
    max_rooms: usize,
    /// When the cap last made every unpinned hub go (`now_secs` + 1; 0 = never).
    pressure_at: AtomicU32,
}

/// This node holds `live.max_rooms` hubs, each pinned by a viewer.
#[derive(Debug, thiserror::Error)]
#[error("this node holds as many rooms as it may")]
pub struct RoomsFull;

impl Hubs {
    /// No hubs yet; at most `max_rooms` at once.
    pub fn new(cfg: HubConfig, notifier: Option<Arc<dyn Notifier>>, max_rooms: usize) -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
            cfg,
            notifier,
            max_rooms: max_rooms.max(1),
            pressure_at: AtomicU32::new(0),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<Hub>>> {
        self.map.lock().expect("hubs lock")
    }

    /// Hubs on this node now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether this node has no hub.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hub of `room` if this node has one (nothing is created).
    pub fn find(&self, room: &str) -> Option<Arc<Hub>> {
        self.map().get(room).cloned()
    }

    /// The hub of `room`, created if needed, pinned for a viewer (a connection
    /// or a long poll), with the room's name as the map keeps it (a connection
    /// shares it instead of keeping its own copy). [`RoomsFull`] at the cap.
    pub fn pin(&self, room: &str) -> Result<(Arc<str>, HubPin), RoomsFull> {
        let (name, hub) = self.get_or_create(room)?;
        Ok((name, HubPin(hub)))
    }

    /// The hub of `room`, created if the cap allows (a room with data that
    /// pollers read: its ring saves them the SliceStore); not pinned.
    pub fn open(&self, room: &str) -> Option<Arc<Hub>> {
        let (_, hub) = self.get_or_create(room).ok()?;
        // Unpinned at once: the sweep may drop it when unused.
        drop(HubPin(hub.clone()));
        Some(hub)
    }

    /// Finds or creates the hub, pinned once (under the map's lock, so no sweep
    /// can drop it between the two).
    fn get_or_create(&self, room: &str) -> Result<(Arc<str>, Arc<Hub>), RoomsFull> {
        let mut map = self.map();
        if let Some((name, h)) = map.get_key_value(room) {
            h.pins.fetch_add(1, Ordering::Relaxed);
            h.touch();
            return Ok((name.clone(), h.clone()));
        }
        if map.len() >= self.max_rooms {
            let now = now_secs() + 1;
            if self.pressure_at.swap(now, Ordering::Relaxed) == now {
                return Err(RoomsFull);
            }
            let gone = Self::drop_unused(&mut map, Duration::ZERO);
            metrics::gauge!("danmaku_live_rooms").set(map.len() as f64);
            tracing::info!(
                dropped = gone.len(),
                "at live.max_rooms: dropped every unused room hub"
            );
            self.unsubscribe(gone);
            if map.len() >= self.max_rooms {
                return Err(RoomsFull);
            }
        }
        let name: Arc<str> = Arc::from(room);
        let h = Arc::new(Hub::new(self.cfg.clone()));
        h.pins.fetch_add(1, Ordering::Relaxed);
        map.insert(name.clone(), h.clone());
        metrics::gauge!("danmaku_live_rooms").set(map.len() as f64);
        drop(map);
        if let Some(n) = &self.notifier {
            let (n, room) = (n.clone(), room.to_string());
            tokio::spawn(async move {
                if let Err(e) = n.subscribe(&room).await {
                    tracing::warn!(error = %e, room, "subscribe failed; the notifier retries on reconnect");
                }
            });
        }
        Ok((name, h))
    }

    /// Removes the hubs unused for `idle` from `map`; returns their rooms.
    fn drop_unused(map: &mut HashMap<Arc<str>, Arc<Hub>>, idle: Duration) -> Vec<Arc<str>> {
        let mut gone = Vec::new();
        map.retain(|room, h| {
            let keep = !h.unused_for(idle);
            if !keep {
                gone.push(room.clone());
            }
            keep
        });
        gone
    }

    /// Unsubscribes from the rooms of dropped hubs, in one task, skipping a room
    /// that got a hub again meanwhile (its new hub's subscription stands).
    fn unsubscribe(&self, gone: Vec<Arc<str>>) {
        let Some(n) = self.notifier.clone() else {
            return;
        };
        if gone.is_empty() {
            return;
        }
        let map = self.map.clone();
        tokio::spawn(async move {
            for room in gone {
                if map.lock().expect("hubs lock").contains_key(&room) {
                    continue;
                }
                let _ = n.unsubscribe(&room).await;
            }
        });
    }

    /// Every room of this node with its hub.
    pub fn rooms(&self) -> Vec<(Arc<str>, Arc<Hub>)> {
        self.map()
            .iter()
            .map(|(r, h)| (r.clone(), h.clone()))
            .collect()
    }

    fn all(&self) -> Vec<Arc<Hub>> {
        self.map().values().cloned().collect()
    }

    /// Ping tick for every room with viewers.
    pub fn ping_all(&self) {
        for h in self.all() {
            h.ping();
        }
    }

    /// Closes every connection (server shutdown).
    pub fn close_all(&self) {
        for h in self.all() {
            h.close();
        }
    }

    /// Drops the hubs nothing pins that no client used for `idle`.
    pub fn sweep(&self, idle: Duration) {
        let mut map = self.map();
        let gone = Self::drop_unused(&mut map, idle);
        metrics::gauge!("danmaku_live_rooms").set(map.len() as f64);
        drop(map);
        self.unsubscribe(gone);
    }
}

/// Socket writes of the room loop between two yields to the runtime.
pub const WRITES_PER_YIELD: usize = 64;

/// The room loop: runs while the room has viewers. Each round writes every frame
/// published since the last round to every connection the loop owns.
async fn write_loop(hub: Arc<Hub>) {
    loop {
        // Registered before looking, so a frame published during the round
        // starts another one.
        let work = hub.fanout_wake.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        let subs = hub.subscribers();
        if subs.is_empty() && hub.stop_fanout_if_empty() {
            return;
        }
        if hub.take_ping_due() {
            ping_round(&hub, &subs).await;
        }
        if let Some(msg) = hub.take_online_due() {
            online_round(&subs, &msg).await;
        }
        let (mut base, mut frames) = hub.recent_frames(MAX_FRAMES_PER_WRITE);
        let mut end = base + frames.len() as u64;
        if !frames.is_empty() {
            let mut writes = 0usize;
            for s in &subs {
                if s.serve(base, &frames) {
                    writes += 1;
                    if writes.is_multiple_of(WRITES_PER_YIELD) {
                        tokio::task::yield_now().await;
                        // Frames published meanwhile go to the rest of this round
                        // too: a connection late in a long round gets them now,
                        // not a whole round later.
                        if hub.next_frame_index() != end {
                            (base, frames) = hub.recent_frames(MAX_FRAMES_PER_WRITE);
                            end = base + frames.len() as u64;
                        }
                    }
                }
            }
        }
        drop(frames);
        drop(subs);
        if hub.next_frame_index() == end {
            work.await;
        }
    }
}

/// Dead-peer check and pings for every connection of the room.
/// The `online` message to every JSON viewer that is not behind (best effort,
/// like a ping: a viewer whose socket is busy gets the next change).
async fn online_round(subs: &[Arc<Subscriber>], msg: &Bytes) {
    let mut writes = 0usize;
    for s in subs.iter().filter(|s| s.sub.is_none()) {
        if s.ping(msg) {
            writes += 1;
            if writes.is_multiple_of(WRITES_PER_YIELD) {
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn ping_round(hub: &Hub, subs: &[Arc<Subscriber>]) {
    let every = hub.ping_every_secs();
    let now = now_secs();
    let ping = frames::encode_frame(frames::opcode::PING, b"", false);
    let mut writes = 0usize;
    for s in subs {
        if u64::from(now.saturating_sub(s.last_heard.load(Ordering::Relaxed))) > every * 2 {
            if !s.dead.swap(true, Ordering::Relaxed) {
                metrics::counter!("danmaku_ws_dead_peers_total").increment(1);
                s.wake.notify_one();
            }
            continue;
        }
        if s.ping(&ping) {
            writes += 1;
            if writes.is_multiple_of(WRITES_PER_YIELD) {
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: u64, kind: Kind, user: &str) -> Danmaku {
        Danmaku {
            id,
            room: "r".into(),
            user: user.into(),
            ts_ms: 1000 + id as i64,
            kind: kind as i32,
            text: format!("t{id}"),
            ..Default::default()
        }
    }

    /// Reads the room's frames the way a connection does.
    struct Tap {
        hub: Arc<Hub>,
        next: u64,
    }

    impl Tap {
        fn try_recv(&mut self) -> Result<Arc<Frame>, ()> {
            let f = self.hub.frames_from(self.next).expect("in the ring");
            let f = f.first().cloned().ok_or(())?;
            self.next += 1;
            Ok(f)
        }
    }

    fn tap(hub: &Arc<Hub>) -> Tap {
        Tap {
            hub: hub.clone(),
            next: hub.next_frame_index(),
        }
    }

    /// Real connections of the room, so that it counts `n` viewers: loopback
    /// sockets whose (absent) tasks own them, so the room loop writes nothing.
    /// Connected without awaiting, so paused time does not move.
    #[derive(Default)]
    struct Viewers {
        subs: Vec<Arc<Subscriber>>,
        peers: Vec<std::net::TcpStream>,
    }

    impl Viewers {
        fn set(&mut self, hub: &Arc<Hub>, n: usize) {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            while self.subs.len() < n {
                let ours = std::net::TcpStream::connect(addr).unwrap();
                self.peers.push(listener.accept().unwrap().0);
                ours.set_nonblocking(true).unwrap();
                let stream = tokio::net::TcpStream::from_std(ours).unwrap();
                let sub = Arc::new(Subscriber::new(
                    stream,
                    false,
                    None,
                    hub.next_frame_index(),
                    0,
                ));
                hub.subscribe(sub.clone());
                self.subs.push(sub);
            }
            while self.subs.len() > n {
                let sub = self.subs.pop().unwrap();
                hub.unsubscribe(&sub);
            }
            assert_eq!(hub.viewers(), n);
        }
    }

    fn c(id: u64) -> (u64, Danmaku) {
        (id, d(id, Kind::Comment, "u"))
    }

    fn cfg(flush_ms: u64, budget: u32) -> HubConfig {
        HubConfig {
            ring_size: 3,
            queue: 64,
            flush_max: Duration::from_millis(flush_ms),
            flush_min: Duration::from_millis(flush_ms),
            flush_per_viewer: Duration::ZERO,
            budget_per_sec: budget,
            ping_every_secs: 30,
        }
    }

    fn adaptive(min_ms: u64, per_viewer_us: u64, max_ms: u64) -> HubConfig {
        HubConfig {
            ring_size: 100,
            flush_min: Duration::from_millis(min_ms),
            flush_per_viewer: Duration::from_micros(per_viewer_us),
            ..cfg(max_ms, 1000)
        }
    }

    #[test]
    fn flush_interval_scales_with_viewers_between_the_bounds() {
        let c = adaptive(2, 5, 50);
        let ms = |v| c.flush_interval(v).as_secs_f64() * 1000.0;
        assert_eq!(ms(0), 2.0, "an empty room flushes at the minimum");
        assert_eq!(ms(100), 2.0);
        assert_eq!(ms(1_000), 5.0);
        assert_eq!(ms(5_000), 25.0);
        assert_eq!(ms(10_000), 50.0);
        assert_eq!(ms(1_000_000), 50.0, "capped at flush_ms");
        assert_eq!(ms(usize::MAX), 50.0, "no overflow");
        // A minimum above the maximum counts as the maximum; 0 turns batching off.
        assert_eq!(
            adaptive(80, 5, 50).flush_interval(1),
            Duration::from_millis(50)
        );
        assert_eq!(adaptive(2, 5, 0).flush_interval(10_000), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_interval_follows_the_audience_and_quiet_rooms_send_at_once() {
        // 1 ms per viewer between 2 and 50 ms.
        let hub = Arc::new(Hub::new(adaptive(2, 1000, 50)));
        let mut rxs: Vec<_> = (0..10).map(|_| tap(&hub)).collect();
        let mut viewers = Viewers::default();
        viewers.set(&hub, 10);
        // 10 viewers: 10 ms.
        hub.deliver(&[c(1)]);
        assert_eq!(rxs[0].try_recv().expect("at once").last_seq, 1);
        hub.deliver(&[c(2)]);
        tokio::time::sleep(Duration::from_millis(9)).await;
        assert!(rxs[0].try_recv().is_err(), "waits for the 10 ms interval");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(rxs[0].try_recv().expect("flushed at 10 ms").last_seq, 2);
        // A quiet interval later the next item goes out at once again.
        tokio::time::sleep(Duration::from_millis(11)).await;
        hub.deliver(&[c(3)]);
        assert_eq!(rxs[0].try_recv().expect("at once").last_seq, 3);
        // 50 viewers more: 60 ms, capped at 50 ms.
        rxs.extend((0..50).map(|_| tap(&hub)));
        viewers.set(&hub, 60);
        tokio::time::sleep(Duration::from_millis(20)).await;
        hub.deliver(&[c(4)]);
        hub.deliver(&[c(5)]);
        tokio::time::sleep(Duration::from_millis(29)).await;
        assert!(rxs[0].try_recv().is_err(), "a bigger room waits longer");
        tokio::time::sleep(Duration::from_millis(2)).await;
        let f = rxs[0]
            .try_recv()
            .expect("flushed 50 ms after the last frame");
        assert_eq!((f.first_seq, f.last_seq), (4, 5));
        assert_eq!(rxs[59].try_recv().unwrap().last_seq, 5);
        // The viewers leave: back to the 2 ms minimum.
        rxs.truncate(1);
        viewers.set(&hub, 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        hub.deliver(&[c(6)]);
        assert_eq!(rxs[0].try_recv().expect("at once").last_seq, 6);
        hub.deliver(&[c(7)]);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(rxs[0].try_recv().is_err());
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(rxs[0].try_recv().expect("flushed at 2 ms").last_seq, 7);
    }

    #[test]
    fn pinned_hubs_stay_unused_ones_go_and_the_cap_holds() {
        let hubs = Hubs::new(cfg(0, 1000), None, 2);
        assert!(hubs.find("a").is_none(), "finding creates nothing");
        let (name, a) = hubs.pin("a").unwrap();
        assert_eq!(&*name, "a");
        let (_, b) = hubs.pin("b").unwrap();
        assert!(Arc::ptr_eq(hubs.pin("a").unwrap().1.hub(), a.hub()));
        // At the cap with every hub pinned: refused.
        assert!(hubs.pin("c").is_err());
        assert!(hubs.open("c").is_none());
        // An unpinned hub is a cache: a sweep with no idle time drops it...
        drop(b);
        hubs.sweep(Duration::ZERO);
        assert_eq!(hubs.len(), 1);
        assert!(hubs.find("b").is_none() && hubs.find("a").is_some());
        // ...and so does the cap (at most once a second), for a new room.
        let opened = hubs.open("b").unwrap();
        assert_eq!(hubs.len(), 2);
        drop(opened);
        let now = now_secs() + 1;
        hubs.pressure_at.store(0, Ordering::Relaxed);
        let c = hubs.pin("c");
        assert!(c.is_ok(), "the unpinned hub of b made room");
        assert!(hubs.find("b").is_none());
        assert!(hubs.pressure_at.load(Ordering::Relaxed) >= now);
        // A pinned hub survives any sweep.
        hubs.sweep(Duration::ZERO);
        assert!(hubs.find("a").is_some() && hubs.find("c").is_some());
        drop((a, c));
    }

    #[tokio::test]
    async fn ring_covers_after_first_delivery_and_evicts() {
        let hub = Arc::new(Hub::new(cfg(0, 1000)));
        assert!(matches!(hub.read_after(0, 10), RingRead::NotCovered));
        hub.deliver(&[c(5), c(7)]);
        let RingRead::Covered(v) = hub.read_after(4, 10) else {
            panic!()
        };
        assert_eq!(v.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![5, 7]);
        assert!(matches!(hub.read_after(3, 10), RingRead::NotCovered));
        hub.deliver(&[c(9), c(11)]);
        assert!(matches!(hub.read_after(4, 10), RingRead::NotCovered));
        let RingRead::Covered(v) = hub.read_after(5, 10) else {
            panic!()
        };
        assert_eq!(v.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![7, 9, 11]);
        assert_eq!(hub.last_seq(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn first_item_goes_at_once_then_one_frame_per_interval() {
        let hub = Arc::new(Hub::new(cfg(50, 1000)));
        let mut rx = tap(&hub);
        hub.deliver(&[c(1)]);
        let f = rx.try_recv().expect("first item is not delayed");
        assert_eq!((f.first_seq, f.last_seq), (1, 1));
        hub.deliver(&[c(2)]);
        hub.deliver(&[c(3), c(4)]);
        assert!(rx.try_recv().is_err(), "later items wait for the flush");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let f = rx.try_recv().expect("flushed");
        assert_eq!((f.first_seq, f.last_seq, f.items.len()), (2, 4, 3));
        assert!(rx.try_recv().is_err());
        // Redelivered items are not broadcast twice.
        tokio::time::sleep(Duration::from_millis(60)).await;
        hub.deliver(&[c(4)]);
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn budget_keeps_gifts_counts_likes_and_withholds_the_rest() {
        let hub = Arc::new(Hub::new(HubConfig {
            ring_size: 100,
            ..cfg(0, 2)
        }));
        let mut rx = tap(&hub);
        let mut batch = vec![];
        for i in 1..=5 {
            batch.push((i, d(i, Kind::Comment, &format!("u{i}"))));
        }
        batch.push((6, d(6, Kind::Gift, "g")));
        batch.push((7, d(7, Kind::Like, "l")));
        batch.push((8, d(8, Kind::Like, "l")));
        hub.deliver(&batch);
        let f = rx.try_recv().unwrap();
        let shown: Vec<u64> = f.items.iter().map(|i| i.seq).collect();
        assert_eq!(
            shown,
            vec![1, 2, 6],
            "two comments fit the budget, the gift always does"
        );
        assert_eq!(
            f.withheld.iter().map(|i| i.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(f.last_seq, 8);
        let v: serde_json::Value = serde_json::from_slice(&f.json).unwrap();
        assert_eq!(v["likes"], 2);
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
        assert_eq!(
            danmaku_core::cursor::Cursor::decode(v["cursor"].as_str().unwrap())
                .unwrap()
                .0,
            8
        );
    }

    #[tokio::test]
    async fn frames_are_complete_websocket_bytes_and_deflate_once() {
        let hub = Arc::new(Hub::new(cfg(0, 1000)));
        let mut rx = tap(&hub);
        hub.deliver(&[c(1)]);
        let f = rx.try_recv().unwrap();
        assert_eq!(f.wire[0], 0x81);
        assert!(f.wire.ends_with(&f.json) && f.wire.len() <= f.json.len() + 4);
        let a = f.deflated().clone();
        assert_eq!(a[0], 0xC1);
        assert!(std::ptr::eq(f.deflated(), f.deflated()));
    }

    #[tokio::test]
    async fn recent_is_by_time() {
        let hub = Arc::new(Hub::new(HubConfig {
            ring_size: 10,
            ..cfg(0, 1000)
        }));
        hub.deliver(&[c(1), c(2), c(3)]);
        let r = hub.recent(1003, 1, 10);
        assert_eq!(r.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(hub.recent(1003, 100, 1).len(), 1);
    }
}
