//! The writer: consumer group `live-writer` on the Bus → SliceStore (one append per
//! room per batch, the rooms of a batch concurrently) → the Notifier (to the live
//! nodes' room hubs). Offsets are committed only after every append of the batch
//! succeeded; failed appends are retried with backoff (Redis down: nothing is
//! committed, and when it is back every record arrives, once, by its seq).
//!
//! Per room the writer also watches slice sizes: a slice over the big-key
//! threshold is reported ([`crate::bigkeys`]), and [`SliceLengths`] adapts the
//! room's slice length to its rate (shorter for hot rooms, longer for quiet ones,
//! within `live.slice_min_ms ..= live.slice_max_ms`). Readers and the archiver are
//! unaffected: they follow the slice index, whatever the lengths.
//!
//! Metrics (no per-room labels): `danmaku_writer_batch_size`,
//! `danmaku_writer_batch_seconds`, `danmaku_writer_records_total`,
//! `danmaku_writer_store_errors_total`, `danmaku_writer_commit_errors_total`,
//! `danmaku_writer_notify_errors_total`, `danmaku_writer_decode_errors_total`,
//! `danmaku_slice_members` and `danmaku_slice_bytes` (histograms of closed slices),
//! `danmaku_slice_length_changes_total{direction}`, `danmaku_writer_rooms` (gauge).
//!
//! May import: [`crate::bigkeys`]; nothing of the connection layer (it reaches
//! the rooms through the Notifier).

use crate::bigkeys::{self, BigKeys, Thresholds};
use danmaku_core::config::LiveSettings;
use danmaku_core::context::Context;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{
    AppendOutcome, BusConsumer, BusRecord, RecordPosition, SliceItem, SliceStat,
};
use danmaku_core::slice::{MAX_SLICE_MS, MIN_SLICE_MS};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The consumer group of the writers.
pub const GROUP: &str = "live-writer";

/// Commit attempts per batch before moving on (the records are then redelivered
/// after a restart or rebalance, and stored idempotently).
const COMMIT_ATTEMPTS: u32 = 5;

/// Runs until `stop` is cancelled, then keeps going until the Bus is drained (so
/// every acknowledged comment reaches the SliceStore before shutdown) or `grace`
/// passes. Also runs the big-key scanner ([`bigkeys::scan`]); both report to
/// `registry`, the server's.
pub async fn run(ctx: Context, registry: Arc<BigKeys>, stop: CancellationToken, grace: Duration) {
    let scanner_stop = CancellationToken::new();
    let scanner = tokio::spawn(bigkeys::scan(
        ctx.clone(),
        registry.clone(),
        scanner_stop.clone(),
    ));
    run_writer(&ctx, &registry, &stop, grace).await;
    scanner_stop.cancel();
    let _ = scanner.await;
}

async fn run_writer(
    ctx: &Context,
    registry: &Arc<BigKeys>,
    stop: &CancellationToken,
    grace: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    let mut consumer = loop {
        match ctx.bus.consumer(GROUP).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "writer cannot join the bus; retrying");
                if stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let batch = ctx.settings.live.writer_batch.max(1);
    let thresholds = Thresholds::from_settings(&ctx.settings.live);
    let mut lengths = SliceLengths::new(&ctx.settings.live);
    let give_up = GiveUp::default();
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    let mut last_sweep = Instant::now();
    // Batches being stored, in poll order; offsets are committed in that order.
    let mut queue: VecDeque<InFlight> = VecDeque::new();
    let mut chains = Chains::default();
    let mut prevs = PrevSeqs::default();
    let mut batch_no = 0u64;
    loop {
        if drain_deadline.is_none() && stop.is_cancelled() {
            let d = tokio::time::Instant::now() + grace;
            drain_deadline = Some(d);
            give_up.set(d);
        }
        if let Some(d) = drain_deadline {
            let caught_up = matches!(consumer.lag().await, Ok(0));
            if caught_up || tokio::time::Instant::now() >= d {
                while let Some(f) = queue.pop_front() {
                    if !retire(f, &mut *consumer, registry, thresholds, &mut lengths).await {
                        abort_all(&mut queue);
                        break;
                    }
                }
                if !caught_up {
                    tracing::warn!("writer stopped before the bus was drained; the rest is redelivered on restart");
                }
                return;
            }
        }
        // Bounded: at most MAX_INFLIGHT batches are being stored.
        while queue.len() >= MAX_INFLIGHT {
            let f = queue.pop_front().expect("non-empty");
            if !retire(f, &mut *consumer, registry, thresholds, &mut lengths).await {
                abort_all(&mut queue);
                tracing::warn!("writer gave up a batch at the end of the grace period; it is redelivered on restart");
                return;
            }
        }
        let records = tokio::select! {
            r = consumer.poll(batch, Duration::from_millis(200)) => r,
            _ = stop.cancelled(), if drain_deadline.is_none() => continue,
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "bus poll failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if last_sweep.elapsed() > Duration::from_secs(60) {
            lengths.sweep(Instant::now(), Duration::from_secs(600));
            prevs.sweep(Instant::now(), Duration::from_secs(600));
            metrics::gauge!("danmaku_writer_rooms").set(lengths.rooms() as f64);
            last_sweep = Instant::now();
        }
        if !records.is_empty() {
            batch_no += 1;
            let p = prepare(&records);
            let now = Instant::now();
            let partitions = prevs.observe(&records);
            let jobs: Vec<Job> = p
                .rooms
                .into_iter()
                .map(|(room, items, deletes)| {
                    let len_ms = lengths.len_for(&room, now);
                    let (append, notice) = chains.link(&room, batch_no);
                    let prev = match partitions.get(room.as_str()) {
                        Some(&partition) => {
                            prevs.take(&room, partition, items.last().map(|i| i.seq), now)
                        }
                        None => None,
                    };
                    Job {
                        room,
                        len_ms,
                        items,
                        deletes,
                        append,
                        notice,
                        prev,
                    }
                })
                .collect();
            let task = tokio::spawn(store_all(ctx.clone(), jobs, give_up.clone()));
            queue.push_back(InFlight {
                task,
                upto: p.upto,
                records: p.records,
                batch_no,
                started: Instant::now(),
            });
        }
        // Retire the batches already stored, in order, without waiting.
        while queue.front().is_some_and(|f| f.task.is_finished()) {
            let f = queue.pop_front().expect("non-empty");
            if !retire(f, &mut *consumer, registry, thresholds, &mut lengths).await {
                abort_all(&mut queue);
                tracing::warn!("writer gave up a batch at the end of the grace period; it is redelivered on restart");
                return;
            }
        }
        chains.prune(queue.front().map_or(batch_no + 1, |f| f.batch_no));
    }
}

/// Batches stored concurrently at most. A room's appends still run one after
/// the other, in seq order ([`Chains`]); only different rooms overlap.
const MAX_INFLIGHT: usize = 4;

/// Resolves when a room's previous append finished: true if it succeeded.
type Tail = Shared<BoxFuture<'static, bool>>;

/// Per room, the last append handed to a store task, so the next one of the same
/// room starts only after it (the SliceStore drops items at or below the room's
/// high-water mark: a later batch stored first would make the earlier one vanish).
///
/// Notices have a chain of their own: a room's notice for batch k+1 goes out after
/// the one for batch k (hubs drop seqs at or below the last they delivered), but
/// the next append does not wait for a notice.
#[derive(Default)]
struct Chains {
    appends: HashMap<String, (u64, Tail)>,
    notices: HashMap<String, (u64, Tail)>,
}

/// One link of a room's chain: what to wait for, and what to resolve.
struct Link {
    after: Option<Tail>,
    done: oneshot::Sender<bool>,
}

fn link(tails: &mut HashMap<String, (u64, Tail)>, room: &str, batch_no: u64) -> Link {
    let (tx, rx) = oneshot::channel::<bool>();
    let tail: Tail = rx.map(|r| r.unwrap_or(false)).boxed().shared();
    let after = tails
        .insert(room.to_string(), (batch_no, tail))
        .map(|(_, t)| t);
    Link { after, done: tx }
}

impl Chains {
    /// The append and the notice of `room` in batch `batch_no`.
    fn link(&mut self, room: &str, batch_no: u64) -> (Link, Link) {
        (
            link(&mut self.appends, room, batch_no),
            link(&mut self.notices, room, batch_no),
        )
    }

    /// Forgets links of batches before `oldest` (all done by now).
    fn prune(&mut self, oldest: u64) {
        self.appends.retain(|_, (b, _)| *b >= oldest);
        self.notices.retain(|_, (b, _)| *b >= oldest);
    }
}

/// One room's share of a batch.
struct Job {
    room: String,
    len_ms: i64,
    items: Vec<SliceItem>,
    /// Comments the batch's deletion records take back: the SliceStore stops
    /// serving them before the records are stored (so a reader that sees a
    /// deletion never sees its comment afterwards).
    deletes: Vec<u64>,
    /// After the room's previous append (which must have succeeded).
    append: Link,
    /// After the room's previous notice.
    notice: Link,
    /// The room's last seq before these items, if this writer knows it
    /// ([`danmaku_core::ports::Notice::prev`]).
    prev: Option<u64>,
}

/// What this writer knows of each room's last seq, for [`Job::prev`]: known
/// only while the writer has read the room's partition without a break since
/// it last stored the room (a partition handed to another writer and back, or
/// redelivered, breaks the offsets: its rooms' next notices say `None`, which
/// makes live nodes check the SliceStore; a wrong `Some` would hide a hole).
#[derive(Default)]
struct PrevSeqs {
    /// Per partition: the next offset expected, and how many breaks so far.
    partitions: HashMap<u32, (u64, u64)>,
    /// Per room: its last seq, the partition's break count then, when.
    rooms: HashMap<String, (u64, u64, Instant)>,
}

impl PrevSeqs {
    /// Follows the offsets of a polled batch; the partition of each room in it.
    fn observe<'a>(&mut self, records: &'a [BusRecord]) -> HashMap<&'a str, u32> {
        let mut rooms = HashMap::new();
        for r in records {
            let p = r.position.partition;
            let e = self.partitions.entry(p).or_insert((u64::MAX, 0));
            if e.0 != r.position.offset {
                e.1 += 1;
            }
            e.0 = r.position.offset.saturating_add(1);
            rooms.entry(r.room.as_str()).or_insert(p);
        }
        rooms
    }

    /// The room's previous last seq (if still valid) and records `last` as
    /// the new one.
    fn take(&mut self, room: &str, partition: u32, last: Option<u64>, now: Instant) -> Option<u64> {
        let epoch = self.partitions.get(&partition).map_or(0, |e| e.1);
        let prev = self
            .rooms
            .get(room)
            .filter(|(_, e, _)| *e == epoch)
            .map(|(seq, _, _)| *seq);
        if let Some(last) = last {
            self.rooms.insert(room.to_string(), (last, epoch, now));
        }
        prev
    }

    /// Forgets rooms not stored for `idle` (their next notice says `None`).
    fn sweep(&mut self, now: Instant, idle: Duration) {
        self.rooms
            .retain(|_, (_, _, at)| now.duration_since(*at) < idle);
    }
}

fn abort_all(queue: &mut VecDeque<InFlight>) {
    for f in queue.drain(..) {
        f.task.abort();
    }
}

/// Waits for a stored batch, accounts for it and commits it. False if its store
/// was given up.
async fn retire(
    f: InFlight,
    consumer: &mut dyn BusConsumer,
    registry: &BigKeys,
    thresholds: Thresholds,
    lengths: &mut SliceLengths,
) -> bool {
    match f.finish().await {
        Some(done) => {
            done.account(registry, thresholds, lengths);
            commit(consumer, &done.upto).await;
            true
        }
        None => false,
    }
}

/// When a failing store stops being retried (the end of the shutdown grace).
#[derive(Clone, Default)]
struct GiveUp(Arc<std::sync::Mutex<Option<tokio::time::Instant>>>);

impl GiveUp {
    fn set(&self, at: tokio::time::Instant) {
        *self.0.lock().expect("give-up lock") = Some(at);
    }
    fn now(&self) -> bool {
        self.0
            .lock()
            .expect("give-up lock")
            .is_some_and(|d| tokio::time::Instant::now() >= d)
    }
}

/// A batch decoded and grouped by room.
struct Prepared {
    /// Per room: its items, and the comments its deletion records take back.
    rooms: Vec<(String, Vec<SliceItem>, Vec<u64>)>,
    upto: Vec<RecordPosition>,
    records: usize,
}

/// A batch being stored.
struct InFlight {
    task: tokio::task::JoinHandle<Option<Vec<(String, usize, AppendOutcome)>>>,
    upto: Vec<RecordPosition>,
    records: usize,
    batch_no: u64,
    started: Instant,
}

/// A batch stored.
struct Stored {
    outcomes: Vec<(String, usize, AppendOutcome)>,
    upto: Vec<RecordPosition>,
}

impl InFlight {
    /// Waits for the batch; `None` if the store was given up.
    async fn finish(self) -> Option<Stored> {
        let outcomes = match self.task.await {
            Ok(Some(o)) => o,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(error = %e, "writer task failed");
                return None;
            }
        };
        metrics::histogram!("danmaku_writer_batch_size").record(self.records as f64);
        metrics::histogram!("danmaku_writer_batch_seconds")
            .record(self.started.elapsed().as_secs_f64());
        metrics::counter!("danmaku_writer_records_total").increment(self.records as u64);
        Some(Stored {
            outcomes,
            upto: self.upto,
        })
    }
}

impl Stored {
    /// Big keys and slice lengths from what the appends reported.
    fn account(&self, registry: &BigKeys, thresholds: Thresholds, lengths: &mut SliceLengths) {
        let now = Instant::now();
        for (room, n, out) in &self.outcomes {
            for s in &out.slices {
                registry.observe_slice(s, thresholds);
            }
            lengths.observe(room, *n, &out.slices, now);
        }
    }
}

/// Commits, retrying a little. Not committing is safe (the records come again and
/// are idempotent); the retries only keep progress from being lost.
async fn commit(consumer: &mut dyn BusConsumer, upto: &[RecordPosition]) {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=COMMIT_ATTEMPTS {
        match consumer.commit(upto).await {
            Ok(()) => return,
            Err(e) => {
                metrics::counter!("danmaku_writer_commit_errors_total").increment(1);
                tracing::warn!(error = %e, attempt, "offset commit failed");
                if attempt < COMMIT_ATTEMPTS {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// The least time the SliceStore keeps a deletion (see [`store_room`]).
const DELETION_KEEP_MIN_MS: i64 = 24 * 3600 * 1000;

/// Decodes a polled batch (the comment's time picks its slice) and groups it by
/// room, in seq order; the positions to commit once it is stored.
fn prepare(records: &[BusRecord]) -> Prepared {
    let mut by_room: BTreeMap<&str, (Vec<SliceItem>, Vec<u64>)> = BTreeMap::new();
    let mut upto: BTreeMap<u32, u64> = BTreeMap::new();
    for r in records {
        let e = upto.entry(r.position.partition).or_insert(0);
        *e = (*e).max(r.position.offset);
        match Danmaku::decode_bytes(&r.payload) {
            Ok(d) => {
                let room = by_room.entry(r.room.as_str()).or_default();
                if let Some(target) = d.deletes {
                    room.1.push(target);
                }
                room.0.push(SliceItem {
                    seq: r.position.seq(),
                    ts_ms: d.ts_ms,
                    data: r.payload.clone(),
                })
            }
            Err(e) => {
                metrics::counter!("danmaku_writer_decode_errors_total").increment(1);
                tracing::error!(error = %e, partition = r.position.partition, offset = r.position.offset, "undecodable record skipped");
            }
        }
    }
    Prepared {
        rooms: by_room
            .into_iter()
            .map(|(room, (items, deletes))| (room.to_string(), items, deletes))
            .collect(),
        upto: upto
            .into_iter()
            .map(|(partition, offset)| RecordPosition { partition, offset })
            .collect(),
        records: records.len(),
    }
}

/// Stores one batch: one append per room (the rooms concurrently, each after the
/// room's previous append), each retried until it succeeds and followed by the
/// room's notice. `None` if a store was given up (or a room's previous one was).
async fn store_all(
    ctx: Context,
    jobs: Vec<Job>,
    give_up: GiveUp,
) -> Option<Vec<(String, usize, AppendOutcome)>> {
    let ctx = &ctx;
    let give_up = &give_up;
    let concurrency = ctx.settings.live.writer_concurrency.max(1);
    // Owned inputs: the futures must not borrow from the closure's argument.
    let appends = jobs.into_iter().map(|job| async move {
        let Job {
            room,
            len_ms,
            items,
            deletes,
            append,
            notice,
            prev,
        } = job;
        let ok = match append.after {
            Some(prev) => prev.await,
            None => true,
        };
        let out = if ok {
            store_room(ctx, &room, len_ms, &items, &deletes, give_up).await
        } else {
            None
        };
        let _ = append.done.send(out.is_some());
        // The notice waits for the room's previous notice only.
        if let Some(prev) = notice.after {
            prev.await;
        }
        if out.is_some() {
            // A notice that cannot be sent is retried a few times; past that,
            // live nodes catch up from the SliceStore when the room's next
            // notice arrives (its `prev` is past what they delivered) or their
            // subscription comes back (a resync), so nothing stored is lost.
            let mut wait = Duration::from_millis(100);
            for attempt in 0..4 {
                match ctx.notifier.publish(&room, prev, &items).await {
                    Ok(()) => break,
                    Err(e) => {
                        metrics::counter!("danmaku_writer_notify_errors_total").increment(1);
                        tracing::warn!(error = %e, room, attempt, "notify failed");
                        if attempt < 3 {
                            tokio::time::sleep(wait).await;
                            wait *= 2;
                        }
                    }
                }
            }
        }
        let _ = notice.done.send(true);
        Some((room, items.len(), out?))
    });
    stream::iter(appends)
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// One room's append, retried with backoff until it succeeds (or `give_up`).
async fn store_room(
    ctx: &Context,
    room: &str,
    len_ms: i64,
    items: &[SliceItem],
    deletes: &[u64],
    give_up: &GiveUp,
) -> Option<AppendOutcome> {
    let mut backoff = Duration::from_millis(50);
    let retention = ctx.settings.live.hot_retention_ms;
    loop {
        let stored = async {
            if !deletes.is_empty() {
                // Kept well past the items' own retention (slices outlive their
                // end by a slice length, and by any time the archiver is late),
                // at least a day.
                let keep = retention
                    .saturating_add(len_ms)
                    .saturating_mul(2)
                    .max(DELETION_KEEP_MIN_MS);
                ctx.slices.delete_items(room, deletes, keep).await?;
            }
            // At the writer's clock: items appended late (this writer was cut
            // off or behind) stay readable for the whole retention after now.
            ctx.slices
                .append_at(room, len_ms, retention, items, Some(danmaku_core::now_ms()))
                .await
        };
        match stored.await {
            Ok(out) => return Some(out),
            Err(e) => {
                metrics::counter!("danmaku_writer_store_errors_total").increment(1);
                tracing::warn!(error = %e, room, retry_in_ms = backoff.as_millis() as u64, "slice append failed; retrying");
                if give_up.now() {
                    return None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Slice lengths the adaptive policy moves between (snapped to these, so a room's
/// slices keep readable, aligned boundaries).
const LADDER_MS: [i64; 13] = [
    1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
    1_800_000, 3_600_000,
];

/// The rate window: a room's rate is measured over at least this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The adaptive slice-length policy's settings.
#[derive(Clone, Copy, Debug)]
pub struct LengthPolicy {
    pub adaptive: bool,
    pub initial_ms: i64,
    pub min_ms: i64,
    pub max_ms: i64,
    /// Members a slice should hold (at most half the big-key member threshold).
    pub target_members: u64,
    pub thresholds: Thresholds,
}

impl LengthPolicy {
    pub fn from_settings(s: &LiveSettings) -> Self {
        let thresholds = Thresholds::from_settings(s);
        let min_ms = s.slice_min_ms.clamp(MIN_SLICE_MS, MAX_SLICE_MS);
        let max_ms = s.slice_max_ms.clamp(min_ms, MAX_SLICE_MS);
        Self {
            adaptive: s.adaptive_slices,
            initial_ms: s.slice_ms.clamp(min_ms, max_ms),
            min_ms,
            max_ms,
            target_members: s.slice_target_members.min(thresholds.members / 2).max(1),
            thresholds,
        }
    }

    /// The ladder step at or below `ms`, within bounds.
    fn at_or_below(&self, ms: f64) -> i64 {
        let step = LADDER_MS
            .iter()
            .rev()
            .find(|&&l| (l as f64) <= ms)
            .copied()
            .unwrap_or(LADDER_MS[0]);
        step.clamp(self.min_ms, self.max_ms)
    }

    /// The next ladder step above `ms`, within bounds.
    fn above(&self, ms: i64) -> i64 {
        LADDER_MS
            .iter()
            .find(|&&l| l > ms)
            .copied()
            .unwrap_or(LADDER_MS[LADDER_MS.len() - 1])
            .clamp(self.min_ms, self.max_ms)
    }

    /// The next length for a room now at `len_ms`, with rate `rate` (items/s; 0 =
    /// unknown yet) and whether a slice of it just crossed the big-key threshold.
    /// Shorter at once; longer one step at a time, and only when the rate leaves
    /// room for twice the next step (hysteresis, so rooms do not flap).
    pub fn next_len(&self, len_ms: i64, rate: f64, big: bool) -> i64 {
        if !self.adaptive {
            return self.initial_ms;
        }
        let target = if rate > 0.0 {
            self.target_members as f64 / rate * 1000.0
        } else {
            f64::INFINITY
        };
        if big {
            let shorter = self.at_or_below(((len_ms / 2) as f64).min(target));
            return shorter.min(len_ms);
        }
        if target < len_ms as f64 {
            return self.at_or_below(target).min(len_ms);
        }
        if rate > 0.0 {
            let up = self.above(len_ms);
            if up > len_ms && target >= 2.0 * up as f64 {
                return up;
            }
        }
        len_ms
    }
}

struct RoomSlicing {
    len_ms: i64,
    rate: f64,
    window_start: Instant,
    window_items: u64,
    seen: Instant,
    /// The newest slice seen, to measure slices when they close.
    current: Option<SliceStat>,
}

/// Per-room slice lengths and rates, owned by the writer loop.
pub struct SliceLengths {
    policy: LengthPolicy,
    rooms: HashMap<String, RoomSlicing>,
}

impl SliceLengths {
    pub fn new(settings: &LiveSettings) -> Self {
        Self::with_policy(LengthPolicy::from_settings(settings))
    }

    pub fn with_policy(policy: LengthPolicy) -> Self {
        Self {
            policy,
            rooms: HashMap::new(),
        }
    }

    /// The slice length to write `room` with now.
    pub fn len_for(&mut self, room: &str, now: Instant) -> i64 {
        let initial = self.policy.initial_ms;
        self.rooms
            .entry(room.to_string())
            .or_insert_with(|| RoomSlicing {
                len_ms: initial,
                rate: 0.0,
                window_start: now,
                window_items: 0,
                seen: now,
                current: None,
            })
            .len_ms
    }

    /// After an append of `n` items to `room` touching `slices`: updates the rate,
    /// measures the slices that closed, adapts the length. Returns the new length.
    pub fn observe(&mut self, room: &str, n: usize, slices: &[SliceStat], now: Instant) -> i64 {
        let policy = self.policy;
        self.len_for(room, now);
        let st = self.rooms.get_mut(room).expect("room state");
        st.seen = now;
        st.window_items += n as u64;
        let elapsed = now.duration_since(st.window_start);
        if elapsed >= RATE_WINDOW {
            let inst = st.window_items as f64 / elapsed.as_secs_f64();
            st.rate = if st.rate > 0.0 {
                0.5 * st.rate + 0.5 * inst
            } else {
                inst
            };
            st.window_start = now;
            st.window_items = 0;
        }
        let mut big = false;
        for s in slices {
            big |= policy.thresholds.is_big(s.members, s.bytes);
            match &st.current {
                Some(cur) if cur.slice == s.slice => {}
                Some(cur) if cur.slice.start_ms > s.slice.start_ms => continue,
                Some(cur) => {
                    metrics::histogram!("danmaku_slice_members").record(cur.members as f64);
                    metrics::histogram!("danmaku_slice_bytes").record(cur.bytes as f64);
                }
                None => {}
            }
            st.current = Some(s.clone());
        }
        let next = policy.next_len(st.len_ms, st.rate, big);
        if next != st.len_ms {
            let direction = if next < st.len_ms {
                "shorter"
            } else {
                "longer"
            };
            metrics::counter!("danmaku_slice_length_changes_total", "direction" => direction)
                .increment(1);
            tracing::info!(
                room,
                from_ms = st.len_ms,
                to_ms = next,
                rate = st.rate,
                big,
                "slice length adapted"
            );
            st.len_ms = next;
        }
        next
    }

    /// Forgets rooms not seen for `idle`.
    pub fn sweep(&mut self, now: Instant, idle: Duration) {
        self.rooms.retain(|_, r| now.duration_since(r.seen) < idle);
    }

    /// Rooms tracked.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::slice::SliceRef;

    fn rec(partition: u32, offset: u64, room: &str) -> BusRecord {
        BusRecord {
            position: RecordPosition { partition, offset },
            room: room.into(),
            payload: bytes::Bytes::new(),
        }
    }

    #[test]
    fn a_room_knows_its_previous_seq_only_while_its_partition_is_read_without_a_break() {
        let mut p = PrevSeqs::default();
        let now = Instant::now();
        // First batch: nothing known yet.
        let b1 = [rec(0, 10, "a"), rec(1, 5, "b"), rec(0, 11, "a")];
        let parts = p.observe(&b1);
        assert_eq!((parts["a"], parts["b"]), (0, 1));
        assert_eq!(p.take("a", 0, Some(12), now), None);
        assert_eq!(p.take("b", 1, Some(6), now), None);
        // Contiguous: the last seqs of the previous batch.
        let b2 = [rec(0, 12, "a"), rec(1, 6, "b")];
        p.observe(&b2);
        assert_eq!(p.take("a", 0, Some(13), now), Some(12));
        assert_eq!(p.take("b", 1, Some(7), now), Some(6));
        // Partition 0 jumps (another writer had it meanwhile): unknown for
        // its rooms, still known for partition 1's.
        let b3 = [rec(0, 40, "a"), rec(1, 7, "b")];
        p.observe(&b3);
        assert_eq!(p.take("a", 0, Some(41), now), None);
        assert_eq!(p.take("b", 1, Some(8), now), Some(7));
        let b4 = [rec(0, 41, "a")];
        p.observe(&b4);
        assert_eq!(p.take("a", 0, Some(42), now), Some(41));
        // Redelivered from an earlier offset: a break too.
        let b5 = [rec(0, 30, "a")];
        p.observe(&b5);
        assert_eq!(p.take("a", 0, Some(31), now), None);
        // Forgotten after the idle time.
        p.sweep(now + Duration::from_secs(601), Duration::from_secs(600));
        let b6 = [rec(0, 31, "a")];
        p.observe(&b6);
        assert_eq!(p.take("a", 0, Some(32), now), None);
    }

    fn policy() -> LengthPolicy {
        LengthPolicy {
            adaptive: true,
            initial_ms: 10_000,
            min_ms: 1_000,
            max_ms: 3_600_000,
            target_members: 1000,
            thresholds: Thresholds {
                members: 5000,
                bytes: 1 << 20,
            },
        }
    }

    fn stat(start: i64, len: i64, members: u64) -> SliceStat {
        SliceStat {
            slice: SliceRef {
                room: "r".into(),
                start_ms: start,
                len_ms: len,
            },
            members,
            bytes: members * 100,
        }
    }

    #[test]
    fn hot_rooms_get_short_slices_at_once() {
        let p = policy();
        // 1000 items/s with a target of 1000 members: 1 s slices.
        assert_eq!(p.next_len(10_000, 1000.0, false), 1_000);
        // 150/s: 6.7 s → the 5 s step.
        assert_eq!(p.next_len(10_000, 150.0, false), 5_000);
        // A big slice at least halves, even before the rate is known.
        assert_eq!(p.next_len(10_000, 0.0, true), 5_000);
        assert_eq!(
            p.next_len(1_000, 0.0, true),
            1_000,
            "never below the minimum"
        );
    }

    #[test]
    fn quiet_rooms_get_longer_slices_one_step_at_a_time() {
        let p = policy();
        // 1 item/s: target 1000 s; one step up per decision.
        assert_eq!(p.next_len(10_000, 1.0, false), 15_000);
        assert_eq!(p.next_len(15_000, 1.0, false), 30_000);
        // Unknown rate: stay.
        assert_eq!(p.next_len(10_000, 0.0, false), 10_000);
        // Hysteresis: 60/s → target 16.7 s; 15 s is not doubled by it, so stay at 10 s.
        assert_eq!(p.next_len(10_000, 60.0, false), 10_000);
        // The top of the range.
        assert_eq!(p.next_len(3_600_000, 0.001, false), 3_600_000);
        let bounded = LengthPolicy {
            max_ms: 30_000,
            ..p
        };
        assert_eq!(bounded.next_len(30_000, 0.01, false), 30_000);
    }

    #[test]
    fn fixed_lengths_when_not_adaptive() {
        let p = LengthPolicy {
            adaptive: false,
            ..policy()
        };
        assert_eq!(p.next_len(1_000, 5000.0, true), 10_000);
    }

    #[test]
    fn a_flood_shortens_the_room_and_measures_closed_slices() {
        let mut l = SliceLengths::with_policy(policy());
        let t0 = Instant::now();
        assert_eq!(l.len_for("r", t0), 10_000);
        // 6000 items within a second in one slice: big at once.
        let len = l.observe(
            "r",
            6000,
            &[stat(0, 10_000, 6000)],
            t0 + Duration::from_millis(10),
        );
        assert_eq!(len, 5_000);
        // The rate window closes: 6000+2000 items in 1.1 s → 1 s slices.
        let len = l.observe(
            "r",
            2000,
            &[stat(10_000, 5_000, 2000)],
            t0 + Duration::from_millis(1100),
        );
        assert_eq!(len, 1_000);
        assert_eq!(l.len_for("r", t0), 1_000);
        assert_eq!(l.len_for("other", t0), 10_000, "rooms are independent");
        l.sweep(t0 + Duration::from_secs(3600), Duration::from_secs(60));
        assert_eq!(l.rooms(), 0);
    }
}
