//! The Redis SliceStore (see the module docs of [`super`] for the key layout and the
//! claim protocol).

use super::{count_error, room_prefix, scripts, stable_hash, Conn};
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{RedisError, Script, Value};
use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::config::RedisSettings;
use danmaku_core::ports::{
    AppendOutcome, ArchiveBatch, KeyScanPage, KeyStat, SliceError, SliceItem, SliceStat, SliceStore,
};
use danmaku_core::slice::SliceRef;
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Redis calls in flight at once for work spanning many keys (they are pipelined
/// on the multiplexed connection).
const FANOUT: usize = 64;

/// The compiled scripts (each holds its SHA1; `EVALSHA` falls back to `EVAL` once
/// per server after a restart).
struct Scripts {
    append: Script,
    read_after: Script,
    expedite: Script,
    claim_room: Script,
    room_state: Script,
    confirm: Script,
    queue_update: Script,
    batch_new: Script,
    batch_expired: Script,
    batch_set: Script,
    batch_drop: Script,
    batch_complete: Script,
    batch_renew: Script,
    batch_keep: Script,
    batch_forget: Script,
    room_archived: Script,
    room_expire: Script,
    archived_through: Script,
    room_sizes: Script,
    inspect: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            append: Script::new(scripts::APPEND),
            read_after: Script::new(scripts::READ_AFTER),
            expedite: Script::new(scripts::EXPEDITE),
            claim_room: Script::new(scripts::CLAIM_ROOM),
            room_state: Script::new(scripts::ROOM_STATE),
            confirm: Script::new(scripts::CONFIRM),
            queue_update: Script::new(scripts::QUEUE_UPDATE),
            batch_new: Script::new(scripts::BATCH_NEW),
            batch_expired: Script::new(scripts::BATCH_EXPIRED),
            batch_set: Script::new(scripts::BATCH_SET),
            batch_drop: Script::new(scripts::BATCH_DROP),
            batch_complete: Script::new(scripts::BATCH_COMPLETE),
            batch_renew: Script::new(scripts::BATCH_RENEW),
            batch_keep: Script::new(scripts::BATCH_KEEP),
            batch_forget: Script::new(scripts::BATCH_FORGET),
            room_archived: Script::new(scripts::ROOM_ARCHIVED),
            room_expire: Script::new(scripts::ROOM_EXPIRE),
            archived_through: Script::new(scripts::ARCHIVED_THROUGH),
            room_sizes: Script::new(scripts::ROOM_SIZES),
            inspect: Script::new(scripts::INSPECT),
        }
    }
}

/// The keys of one room.
struct RoomKeys {
    prefix: String,
}

/// Whether a comment's data is one of `deleted` (the id is read without
/// decoding: see [`danmaku_core::model::peek_id`]).
fn is_deleted(deleted: &HashSet<u64>, data: &[u8]) -> bool {
    !deleted.is_empty()
        && danmaku_core::model::peek_id(data).is_some_and(|id| deleted.contains(&id))
}

impl RoomKeys {
    fn new(room: &str) -> Self {
        Self {
            prefix: room_prefix(room),
        }
    }
    fn k(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }
}

/// A room's queue state as the room's slot has it.
#[derive(Clone, Copy, Debug)]
struct QueueState {
    /// Earliest due time of the room's slices, or -1 without slices.
    min_due: i64,
    /// Version of that state, and the version its queue shard holds.
    version: i64,
    confirmed: i64,
}

/// What a batch record says (JSON in `dm:{<ns>b}:batch:<id>`).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "lowercase")]
enum Record {
    /// Rooms are being claimed; a redo claims from the same rooms.
    Claiming { rooms: Vec<String> },
    /// Claimed: exactly these slices. `until`: the earliest end of their hot
    /// retention (when, once archived, the first of them may expire; 0 in records
    /// written before it was kept).
    Ready {
        slices: Vec<SliceRef>,
        #[serde(default)]
        until: i64,
    },
}

/// The SliceStore on Redis or Redis Cluster.
pub struct RedisSliceStore {
    pub(super) conn: Conn,
    cluster: bool,
    scripts: Arc<Scripts>,
    /// `dm:{<ns>`: the start of the shared keys.
    pub(super) ns: String,
    shards: u32,
    last_ttl_secs: u64,
    /// Rotates the shard a claim starts with, so no shard starves.
    next_shard: AtomicUsize,
    ready: Mutex<Option<(Instant, bool)>>,
    /// What this process last wrote to each room (the append fast path).
    heads: Mutex<HashMap<String, RoomHead>>,
}

/// Rooms whose head this process remembers (forgotten wholesale past it: a
/// forgotten room costs one extra round trip on its next append).
const HEADS_KEPT: usize = 100_000;

/// What this process last wrote to a room: its high-water mark and newest slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoomHead {
    pub(crate) last: u64,
    pub(crate) newest: Option<SliceRef>,
}

/// Items of one slice, in seq order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Group<'a> {
    pub(crate) slice: SliceRef,
    pub(crate) items: Vec<&'a SliceItem>,
}

/// Groups items (in seq order) into slices by the one slice rule,
/// [`SliceRef::assign`]: items at or below the high-water mark `last` are skipped
/// (redeliveries); each other item goes to the slice the rule picks given the
/// newest slice so far. Returns the groups, in seq order, and the room's head after
/// them.
pub(crate) fn assign_slices<'a>(
    room: &str,
    last: u64,
    newest: Option<&SliceRef>,
    len_ms: i64,
    items: &[&'a SliceItem],
) -> (Vec<Group<'a>>, RoomHead) {
    let mut groups: Vec<Group<'a>> = Vec::new();
    let mut cur = newest.cloned();
    let mut hi = last;
    for &it in items {
        if it.seq <= hi {
            continue;
        }
        hi = it.seq;
        let slice = SliceRef::assign(room, cur.as_ref(), it.ts_ms, len_ms);
        match groups.last_mut() {
            Some(g) if g.slice == slice => g.items.push(it),
            _ => groups.push(Group {
                slice: slice.clone(),
                items: vec![it],
            }),
        }
        cur = Some(slice);
    }
    (
        groups,
        RoomHead {
            last: hi,
            newest: cur,
        },
    )
}

/// The 16 bytes before a comment in a slice member: seq and ts, big-endian.
const HEADER: usize = 16;

/// A slice member: seq · ts · data (unique per seq, and a read needs no decoding of
/// the comment to know its seq and time).
pub(crate) fn encode_member(item: &SliceItem) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + item.data.len());
    m.extend_from_slice(&item.seq.to_be_bytes());
    m.extend_from_slice(&item.ts_ms.to_be_bytes());
    m.extend_from_slice(&item.data);
    m
}

pub(crate) fn decode_member(m: &[u8]) -> Option<SliceItem> {
    if m.len() < HEADER {
        return None;
    }
    let seq = u64::from_be_bytes(m[..8].try_into().ok()?);
    let ts_ms = i64::from_be_bytes(m[8..16].try_into().ok()?);
    Some(SliceItem {
        seq,
        ts_ms,
        data: Bytes::copy_from_slice(&m[HEADER..]),
    })
}

/// `<start>:<len>` → the slice of `room`.
fn slice_of(room: &str, id: &str) -> Option<SliceRef> {
    let (start, len) = id.split_once(':')?;
    Some(SliceRef {
        room: room.to_string(),
        start_ms: start.parse().ok()?,
        len_ms: len.parse().ok()?,
    })
}

fn slice_id(s: &SliceRef) -> String {
    format!("{}:{}", s.start_ms, s.len_ms)
}

fn fail(op: &'static str) -> impl Fn(RedisError) -> SliceError {
    move |e| {
        count_error(op);
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_cluster_error() {
            SliceError::unavailable(op).with_source(e)
        } else {
            SliceError::other(op).with_source(e)
        }
    }
}

fn bad(op: &'static str, what: impl std::fmt::Display) -> SliceError {
    count_error(op);
    SliceError::corrupt(format!("{op}: unexpected reply: {what}"))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Double(d) => Some(*d as i64),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

fn queue_state(v: &[Value]) -> Option<QueueState> {
    Some(QueueState {
        min_due: int(v.first()?)?,
        version: int(v.get(1)?)?,
        confirmed: int(v.get(2)?)?,
    })
}

impl RedisSliceStore {
    pub(crate) fn new(conn: Conn, settings: &RedisSettings, cluster: bool) -> Self {
        Self {
            conn,
            cluster,
            scripts: Arc::new(Scripts::new()),
            ns: format!("dm:{{{}", settings.namespace),
            shards: settings.queue_shards.max(1),
            last_ttl_secs: settings.last_seq_ttl_secs,
            next_shard: AtomicUsize::new(0),
            ready: Mutex::new(None),
            heads: Mutex::new(HashMap::new()),
        }
    }

    fn shard_of(&self, room: &str) -> u32 {
        (stable_hash(room) % self.shards as u64) as u32
    }
    fn queue_key(&self, shard: u32) -> String {
        format!("{}q{shard}}}:expiry", self.ns)
    }
    fn ver_key(&self, shard: u32) -> String {
        format!("{}q{shard}}}:ver", self.ns)
    }
    fn batch_key(&self, suffix: &str) -> String {
        format!("{}b}}:{suffix}", self.ns)
    }
    fn record_prefix(&self) -> String {
        self.batch_key("batch:")
    }

    pub(crate) async fn ping(&self) -> Result<(), SliceError> {
        let mut c = self.conn.clone();
        ::redis::cmd("PING")
            .query_async::<()>(&mut c)
            .await
            .map_err(fail("ping"))
    }

    /// Copies the room's queue state into its shard when the shard does not have
    /// this version yet (or always, with `force`), then records that it has.
    async fn sync_queue(&self, room: &str, st: QueueState, force: bool) -> Result<(), SliceError> {
        if !force && st.version == st.confirmed {
            return Ok(());
        }
        let shard = self.shard_of(room);
        let mut c = self.conn.clone();
        self.scripts
            .queue_update
            .key(self.queue_key(shard))
            .key(self.ver_key(shard))
            .arg(room)
            .arg(st.min_due)
            .arg(st.version)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(fail("queue_update"))?;
        if st.version > st.confirmed {
            let keys = RoomKeys::new(room);
            self.scripts
                .confirm
                .key(keys.k("meta"))
                .arg(st.version)
                .invoke_async::<i64>(&mut c)
                .await
                .map_err(fail("queue_confirm"))?;
        }
        Ok(())
    }

    /// Rooms whose earliest slice is due at `now`, at most `max`, shards in rotation.
    async fn due_rooms(&self, now_ms: i64, max: usize) -> Result<Vec<String>, SliceError> {
        let first = self.next_shard.fetch_add(1, Ordering::Relaxed) as u32;
        let order: Vec<u32> = (0..self.shards)
            .map(|i| (first + i) % self.shards)
            .collect();
        let per_shard: Vec<Vec<String>> = stream::iter(order)
            .map(|shard| {
                let mut c = self.conn.clone();
                let key = self.queue_key(shard);
                async move {
                    ::redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg("-inf")
                        .arg(now_ms)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(max)
                        .query_async::<Vec<String>>(&mut c)
                        .await
                        .map_err(fail("due_rooms"))
                }
            })
            .buffered(FANOUT)
            .try_collect()
            .await?;
        let mut seen = HashSet::new();
        let mut rooms = Vec::new();
        for r in per_shard.into_iter().flatten() {
            if rooms.len() >= max {
                break;
            }
            if seen.insert(r.clone()) {
                rooms.push(r);
            }
        }
        Ok(rooms)
    }

    /// Every room listed in the queue shards (rooms with live slices).
    async fn all_rooms(&self) -> Result<Vec<String>, SliceError> {
        let per_shard: Vec<Vec<String>> = stream::iter(0..self.shards)
            .map(|shard| {
                let mut c = self.conn.clone();
                let key = self.queue_key(shard);
                async move {
                    ::redis::cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .query_async::<Vec<String>>(&mut c)
                        .await
                        .map_err(fail("all_rooms"))
                }
            })
            .buffered(FANOUT)
            .try_collect()
            .await?;
        let mut rooms: Vec<String> = per_shard.into_iter().flatten().collect();
        rooms.sort();
        rooms.dedup();
        Ok(rooms)
    }

    async fn get_record(&self, id: u64) -> Result<Option<Record>, SliceError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = ::redis::cmd("GET")
            .arg(format!("{}{id}", self.record_prefix()))
            .query_async(&mut c)
            .await
            .map_err(fail("batch_get"))?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Claims from `rooms` for batch `id` (idempotent per room), then makes the batch
    /// ready. `None` (and the batch dropped) if nothing was due after all.
    async fn claim_rooms(
        &self,
        id: u64,
        rooms: &[String],
        now_ms: i64,
        max: usize,
    ) -> Result<Option<ArchiveBatch>, SliceError> {
        let mut slices = Vec::new();
        let mut until: Option<i64> = None;
        for room in rooms {
            let keys = RoomKeys::new(room);
            let budget = max.saturating_sub(slices.len());
            let mut c = self.conn.clone();
            let v: Vec<Value> = self
                .scripts
                .claim_room
                .key(keys.k("exp"))
                .key(keys.k("idx"))
                .key(keys.k("bytes"))
                .key(keys.k("meta"))
                .arg(&keys.prefix)
                .arg(id)
                .arg(now_ms)
                .arg(budget)
                .invoke_async(&mut c)
                .await
                .map_err(fail("claim_room"))?;
            let st = queue_state(&v).ok_or_else(|| bad("claim_room", format!("{v:?}")))?;
            let moved = v.get(3).and_then(array).unwrap_or_default();
            for m in moved {
                let s = text(m)
                    .and_then(|id| slice_of(room, &id))
                    .ok_or_else(|| bad("claim_room", format!("{m:?}")))?;
                slices.push(s);
            }
            if let Some(hot) = v.get(4).and_then(int).filter(|h| *h >= 0) {
                until = Some(until.map_or(hot, |u| u.min(hot)));
            }
            self.sync_queue(room, st, true).await?;
        }
        let mut c = self.conn.clone();
        if slices.is_empty() {
            self.scripts
                .batch_drop
                .key(self.batch_key("leases"))
                .arg(self.record_prefix())
                .arg(id)
                .invoke_async::<i64>(&mut c)
                .await
                .map_err(fail("batch_drop"))?;
            return Ok(None);
        }
        let record = serde_json::to_string(&Record::Ready {
            slices: slices.clone(),
            until: until.unwrap_or(0),
        })
        .map_err(|e| SliceError::other("batch record").with_source(e))?;
        let set: i64 = self
            .scripts
            .batch_set
            .key(self.batch_key("leases"))
            .arg(self.record_prefix())
            .arg(id)
            .arg(record)
            .invoke_async(&mut c)
            .await
            .map_err(fail("batch_set"))?;
        if set == 0 {
            return Err(SliceError::other(format!(
                "batch {id} vanished while claiming"
            )));
        }
        self.read_batch(id, slices).await.map(Some)
    }

    /// The contents of a claimed batch, in (room, seq) order.
    async fn read_batch(&self, id: u64, slices: Vec<SliceRef>) -> Result<ArchiveBatch, SliceError> {
        let parts: Vec<Vec<(String, SliceItem)>> = stream::iter(slices.iter().cloned())
            .map(|s| {
                let mut c = self.conn.clone();
                let key = format!("{}b:{id}:{}", room_prefix(&s.room), slice_id(&s));
                let del = RoomKeys::new(&s.room).k("del");
                async move {
                    // The slice and the room's deleted ids (same slot: one trip).
                    let (members, dels): (Vec<Vec<u8>>, Vec<u64>) = ::redis::pipe()
                        .cmd("ZRANGE")
                        .arg(key)
                        .arg(0)
                        .arg(-1)
                        .cmd("ZRANGE")
                        .arg(del)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut c)
                        .await
                        .map_err(fail("batch_read"))?;
                    let dels: HashSet<u64> = dels.into_iter().collect();
                    Ok::<_, SliceError>(
                        members
                            .iter()
                            .filter_map(|m| decode_member(m))
                            .filter(|i| !is_deleted(&dels, &i.data))
                            .map(|i| (s.room.clone(), i))
                            .collect(),
                    )
                }
            })
            .buffered(FANOUT)
            .try_collect()
            .await?;
        let mut items: Vec<(String, SliceItem)> = parts.into_iter().flatten().collect();
        items.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.seq.cmp(&b.1.seq)));
        Ok(ArchiveBatch { id, slices, items })
    }

    /// Finishes completions a crash interrupted (the rest of `complete_batch`).
    async fn collect_garbage(&self) -> Result<(), SliceError> {
        let mut c = self.conn.clone();
        let ids: Vec<u64> = ::redis::cmd("SMEMBERS")
            .arg(self.batch_key("gc"))
            .query_async(&mut c)
            .await
            .map_err(fail("batch_gc"))?;
        for id in ids {
            let record = self.get_record(id).await?;
            self.finish_completion(id, record).await?;
        }
        Ok(())
    }

    /// Second half of `complete_batch`, after `BATCH_COMPLETE`: marks the batch's
    /// slices archived in each of its rooms, then keeps the batch (its record names
    /// the slices) until their retention ends.
    async fn finish_completion(&self, id: u64, record: Option<Record>) -> Result<(), SliceError> {
        let (slices, until) = match record {
            Some(Record::Ready { slices, until }) => (slices, until),
            _ => (Vec::new(), 0),
        };
        let rooms: HashSet<String> = slices.iter().map(|s| s.room.clone()).collect();
        stream::iter(rooms)
            .map(|room| {
                let mut c = self.conn.clone();
                let scripts = self.scripts.clone();
                async move {
                    let keys = RoomKeys::new(&room);
                    scripts
                        .room_archived
                        .key(keys.k(&format!("c:{id}")))
                        .key(keys.k(&format!("a:{id}")))
                        .invoke_async::<i64>(&mut c)
                        .await
                        .map_err(fail("batch_complete"))
                }
            })
            .buffer_unordered(FANOUT)
            .try_collect::<Vec<_>>()
            .await?;
        let mut c = self.conn.clone();
        if slices.is_empty() {
            // Nothing to keep (no record, or one that claimed nothing).
            return ::redis::pipe()
                .cmd("DEL")
                .arg(format!("{}{id}", self.record_prefix()))
                .ignore()
                .cmd("SREM")
                .arg(self.batch_key("gc"))
                .arg(id)
                .ignore()
                .query_async::<()>(&mut c)
                .await
                .map_err(fail("batch_complete"));
        }
        self.scripts
            .batch_keep
            .key(self.batch_key("gc"))
            .key(self.batch_key("kept"))
            .arg(id)
            .arg(until)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(fail("batch_complete"))?;
        Ok(())
    }

    /// Expires what it can of kept batch `id` at `now_ms` (see [`scripts::ROOM_EXPIRE`]);
    /// forgets the batch once none of its slices is left, else waits for the
    /// earliest retention end left (or, if that passed, for the slices holding it
    /// back to go). Returns the slices deleted.
    async fn expire_batch(&self, id: u64, now_ms: i64) -> Result<u64, SliceError> {
        let slices = match self.get_record(id).await? {
            Some(Record::Ready { slices, .. }) => slices,
            _ => Vec::new(),
        };
        let rooms: HashSet<String> = slices.iter().map(|s| s.room.clone()).collect();
        let per_room: Vec<(u64, i64)> = stream::iter(rooms)
            .map(|room| {
                let mut c = self.conn.clone();
                let scripts = self.scripts.clone();
                async move {
                    let keys = RoomKeys::new(&room);
                    let v: Vec<i64> = scripts
                        .room_expire
                        .key(keys.k("idx"))
                        .key(keys.k("meta"))
                        .arg(&keys.prefix)
                        .arg(now_ms)
                        .arg(id)
                        .invoke_async(&mut c)
                        .await
                        .map_err(fail("expire"))?;
                    match v.as_slice() {
                        [removed, left] => Ok((*removed.max(&0) as u64, *left)),
                        _ => Err(bad("expire", format!("{v:?}"))),
                    }
                }
            })
            .buffer_unordered(FANOUT)
            .try_collect()
            .await?;
        let removed = per_room.iter().map(|(r, _)| r).sum();
        let left = per_room.iter().map(|(_, l)| *l).filter(|l| *l >= 0).min();
        let mut c = self.conn.clone();
        match left {
            None => {
                self.scripts
                    .batch_forget
                    .key(self.batch_key("kept"))
                    .arg(self.record_prefix())
                    .arg(id)
                    .invoke_async::<i64>(&mut c)
                    .await
                    .map_err(fail("expire"))?;
            }
            Some(left) if left > now_ms => {
                ::redis::cmd("ZADD")
                    .arg(self.batch_key("kept"))
                    .arg("XX")
                    .arg(left)
                    .arg(id)
                    .query_async::<i64>(&mut c)
                    .await
                    .map_err(fail("expire"))?;
            }
            // Held back by an older slice not archived yet: looked at again next time.
            Some(_) => {}
        }
        Ok(removed)
    }

    /// The masters of the cluster, as (host, port), sorted (stable cursors).
    async fn masters(&self) -> Result<Vec<(String, u16)>, SliceError> {
        let Conn::Cluster(c) = &self.conn else {
            return Ok(Vec::new());
        };
        let mut c = c.clone();
        let v: Value = c
            .route_command(
                ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(fail("cluster_slots"))?;
        let mut out = Vec::new();
        for range in array(&v).unwrap_or_default() {
            let Some(r) = array(range) else { continue };
            let Some(master) = r.get(2).and_then(array) else {
                continue;
            };
            let host = master.first().and_then(text);
            let port = master.get(1).and_then(int);
            if let (Some(h), Some(p)) = (host, port) {
                out.push((h, p as u16));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn inspect(&self, keys: Vec<String>) -> Result<Vec<KeyStat>, SliceError> {
        let stats: Vec<Option<KeyStat>> = stream::iter(keys)
            .map(|key| {
                let mut c = self.conn.clone();
                let script = self.scripts.clone();
                async move {
                    let v: Vec<Value> = script
                        .inspect
                        .key(&key)
                        .invoke_async(&mut c)
                        .await
                        .map_err(fail("inspect"))?;
                    let kind = v.first().and_then(text).unwrap_or_default();
                    if kind == "none" {
                        return Ok::<_, SliceError>(None);
                    }
                    Ok(Some(KeyStat {
                        key,
                        members: v.get(1).and_then(int).unwrap_or(0).max(0) as u64,
                        bytes: v.get(2).and_then(int).unwrap_or(0).max(0) as u64,
                    }))
                }
            })
            .buffered(FANOUT)
            .try_collect()
            .await?;
        Ok(stats.into_iter().flatten().collect())
    }
}

#[async_trait]
impl SliceStore for RedisSliceStore {
    async fn append_at(
        &self,
        room: &str,
        slice_len_ms: i64,
        hot_retention_ms: i64,
        items: &[SliceItem],
        now_ms: Option<i64>,
    ) -> Result<AppendOutcome, SliceError> {
        if items.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let mut sorted: Vec<&SliceItem> = items.iter().collect();
        sorted.sort_by_key(|i| i.seq);
        let keys = RoomKeys::new(room);
        // What this process last saw of the room; unknown at first (the script then
        // answers with the room's state, and the items are grouped again).
        let mut seen = self.heads.lock().expect("heads lock").get(room).cloned();
        for _ in 0..4 {
            let (last, cur) = match &seen {
                Some(h) => (h.last, h.newest.clone()),
                None => (u64::MAX, None),
            };
            let (groups, head) = assign_slices(room, last, cur.as_ref(), slice_len_ms, &sorted);
            let mut inv = self.scripts.append.prepare_invoke();
            for k in ["meta", "idx", "exp", "bytes"] {
                inv.key(keys.k(k));
            }
            inv.arg(&keys.prefix)
                .arg(if seen.is_some() {
                    last.to_string()
                } else {
                    "?".into()
                })
                .arg(cur.as_ref().map(slice_id).unwrap_or_default())
                .arg(hot_retention_ms.max(0))
                .arg(self.last_ttl_secs)
                .arg(now_ms.map(|t| t.to_string()).unwrap_or_default());
            for g in &groups {
                inv.arg(slice_id(&g.slice))
                    .arg(g.items.last().map_or(0, |i| i.seq))
                    .arg(g.items.len())
                    .arg(g.items.iter().map(|i| i.data.len() + 16).sum::<usize>());
                for it in &g.items {
                    inv.arg(it.seq).arg(encode_member(it));
                }
            }
            let mut c = self.conn.clone();
            let v: Vec<Value> = inv.invoke_async(&mut c).await.map_err(fail("append"))?;
            if v.first().and_then(text).as_deref() == Some("stale") {
                let last = v.get(1).and_then(int).unwrap_or(0).max(0) as u64;
                let newest = v
                    .get(2)
                    .and_then(text)
                    .filter(|id| !id.is_empty())
                    .and_then(|id| slice_of(room, &id));
                seen = Some(RoomHead { last, newest });
                continue;
            }
            let added = v
                .first()
                .and_then(int)
                .ok_or_else(|| bad("append", format!("{v:?}")))?;
            let st = queue_state(&v[1..]).ok_or_else(|| bad("append", format!("{v:?}")))?;
            let mut slices = Vec::new();
            if let Some(stats) = v.get(4).and_then(array) {
                for chunk in stats.chunks(3) {
                    let (Some(id), Some(members), Some(bytes)) = (
                        chunk.first().and_then(text),
                        chunk.get(1).and_then(int),
                        chunk.get(2).and_then(int),
                    ) else {
                        return Err(bad("append", format!("{chunk:?}")));
                    };
                    let slice = slice_of(room, &id).ok_or_else(|| bad("append", &id))?;
                    slices.push(SliceStat {
                        slice,
                        members: members.max(0) as u64,
                        bytes: bytes.max(0) as u64,
                    });
                }
            }
            {
                let mut heads = self.heads.lock().expect("heads lock");
                if heads.len() >= HEADS_KEPT {
                    heads.clear();
                }
                heads.insert(room.to_string(), head);
            }
            self.sync_queue(room, st, false).await?;
            return Ok(AppendOutcome {
                added: added.max(0) as usize,
                slices,
            });
        }
        self.heads.lock().expect("heads lock").remove(room);
        Err(SliceError::unavailable(format!(
            "append to {room}: the room kept changing under this writer"
        )))
    }

    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SliceItem>, SliceError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = RoomKeys::new(room);
        let mut c = self.conn.clone();
        let mut out: Vec<SliceItem> = Vec::new();
        let mut after = after;
        // Deleted items are left out; a page short of `limit` because of them
        // reads on, so a short page always means "nothing more".
        loop {
            let want = limit - out.len();
            let (members, dels): (Vec<Vec<u8>>, Vec<u64>) = self
                .scripts
                .read_after
                .key(keys.k("idx"))
                .key(keys.k("del"))
                .arg(&keys.prefix)
                .arg(after)
                .arg(want)
                .invoke_async(&mut c)
                .await
                .map_err(fail("read_after"))?;
            let mut items: Vec<SliceItem> =
                members.iter().filter_map(|m| decode_member(m)).collect();
            items.sort_by_key(|i| i.seq);
            items.dedup_by_key(|i| i.seq);
            let raw = items.len();
            let Some(last) = items.last().map(|i| i.seq) else {
                break;
            };
            let dels: HashSet<u64> = dels.into_iter().collect();
            out.extend(items.into_iter().filter(|i| !is_deleted(&dels, &i.data)));
            // Fewer than asked: the store has no more.
            if raw < want || out.len() >= limit {
                break;
            }
            after = last;
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn is_deleted(&self, room: &str, id: u64) -> Result<bool, SliceError> {
        let mut c = self.conn.clone();
        let score: Option<f64> = ::redis::cmd("ZSCORE")
            .arg(RoomKeys::new(room).k("del"))
            .arg(id)
            .query_async(&mut c)
            .await
            .map_err(fail("is_deleted"))?;
        Ok(score.is_some())
    }

    async fn delete_items(&self, room: &str, ids: &[u64], keep_ms: i64) -> Result<(), SliceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = RoomKeys::new(room).k("del");
        let now = danmaku_core::now_ms();
        let until = now.saturating_add(keep_ms.max(0));
        let mut p = ::redis::pipe();
        p.atomic();
        // GT: a deletion seen again never shortens how long it is kept.
        p.cmd("ZADD").arg(&key).arg("GT");
        for id in ids {
            p.arg(until).arg(*id);
        }
        p.ignore();
        // The room's deletions whose items are gone by now.
        p.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({now}"))
            .ignore();
        p.cmd("PEXPIRE").arg(&key).arg(keep_ms.max(1)).ignore();
        let mut c = self.conn.clone();
        p.query_async::<()>(&mut c)
            .await
            .map_err(fail("delete_items"))
    }

    async fn last_seq(&self, room: &str) -> Result<u64, SliceError> {
        let mut c = self.conn.clone();
        let v: Option<u64> = ::redis::cmd("HGET")
            .arg(RoomKeys::new(room).k("meta"))
            .arg("last")
            .query_async(&mut c)
            .await
            .map_err(fail("last_seq"))?;
        Ok(v.unwrap_or(0))
    }

    async fn expedite(&self, room: &str, up_to_ms: i64) -> Result<(), SliceError> {
        let keys = RoomKeys::new(room);
        let mut c = self.conn.clone();
        let v: Vec<Value> = self
            .scripts
            .expedite
            .key(keys.k("meta"))
            .key(keys.k("exp"))
            .arg(up_to_ms)
            .arg("1")
            .arg(self.last_ttl_secs)
            .invoke_async(&mut c)
            .await
            .map_err(fail("expedite"))?;
        let st = queue_state(&v).ok_or_else(|| bad("expedite", format!("{v:?}")))?;
        self.sync_queue(room, st, true).await
    }

    async fn expedite_all(&self) -> Result<(), SliceError> {
        let rooms = self.all_rooms().await?;
        stream::iter(rooms)
            .map(|room| async move {
                let keys = RoomKeys::new(&room);
                let mut c = self.conn.clone();
                let v: Vec<Value> = self
                    .scripts
                    .expedite
                    .key(keys.k("meta"))
                    .key(keys.k("exp"))
                    .arg("inf")
                    .arg("0")
                    .arg(0)
                    .invoke_async(&mut c)
                    .await
                    .map_err(fail("expedite"))?;
                let st = queue_state(&v).ok_or_else(|| bad("expedite", format!("{v:?}")))?;
                self.sync_queue(&room, st, true).await
            })
            .buffer_unordered(FANOUT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn claim_batch(
        &self,
        now_ms: i64,
        max_slices: usize,
        lease: Duration,
    ) -> Result<Option<ArchiveBatch>, SliceError> {
        let max = max_slices.max(1);
        let until = now_ms.saturating_add(lease.as_millis() as i64);
        self.collect_garbage().await?;
        let mut c = self.conn.clone();

        // 1. A batch whose lease expired is handed out again, unchanged.
        let expired: Option<(u64, String)> = self
            .scripts
            .batch_expired
            .key(self.batch_key("leases"))
            .arg(self.record_prefix())
            .arg(now_ms)
            .arg(until)
            .invoke_async(&mut c)
            .await
            .map_err(fail("batch_expired"))?;
        if let Some((id, raw)) = expired {
            match serde_json::from_str::<Record>(&raw) {
                Ok(Record::Ready { slices, .. }) => {
                    // Its rooms' queue entries may not have been updated by the archiver
                    // that died; doing it again is harmless.
                    let rooms: HashSet<&str> = slices.iter().map(|s| s.room.as_str()).collect();
                    for room in rooms {
                        let keys = RoomKeys::new(room);
                        let v: Vec<Value> = self
                            .scripts
                            .room_state
                            .key(keys.k("exp"))
                            .key(keys.k("meta"))
                            .invoke_async(&mut c)
                            .await
                            .map_err(fail("room_state"))?;
                        let st =
                            queue_state(&v).ok_or_else(|| bad("room_state", format!("{v:?}")))?;
                        self.sync_queue(room, st, true).await?;
                    }
                    return self.read_batch(id, slices).await.map(Some);
                }
                Ok(Record::Claiming { rooms }) => {
                    if let Some(b) = self.claim_rooms(id, &rooms, now_ms, max).await? {
                        return Ok(Some(b));
                    }
                }
                Err(_) => {
                    // No record (or garbage): nothing to redo.
                    tracing::warn!(batch = id, "archive batch without a record dropped");
                    self.scripts
                        .batch_drop
                        .key(self.batch_key("leases"))
                        .arg(self.record_prefix())
                        .arg(id)
                        .invoke_async::<i64>(&mut c)
                        .await
                        .map_err(fail("batch_drop"))?;
                }
            }
        }

        // 2-4. A new batch from the due rooms (a room in the queue may turn out to have
        // nothing due, after a concurrent claim: look again a few times).
        for _ in 0..3 {
            let rooms = self.due_rooms(now_ms, max).await?;
            if rooms.is_empty() {
                return Ok(None);
            }
            let record = serde_json::to_string(&Record::Claiming {
                rooms: rooms.clone(),
            })
            .map_err(|e| SliceError::other("batch record").with_source(e))?;
            let id: u64 = self
                .scripts
                .batch_new
                .key(self.batch_key("next"))
                .key(self.batch_key("leases"))
                .arg(self.record_prefix())
                .arg(until)
                .arg(record)
                .invoke_async(&mut c)
                .await
                .map_err(fail("batch_new"))?;
            if let Some(b) = self.claim_rooms(id, &rooms, now_ms, max).await? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    async fn complete_batch(&self, batch_id: u64) -> Result<(), SliceError> {
        let mut c = self.conn.clone();
        let raw: Option<String> = self
            .scripts
            .batch_complete
            .key(self.batch_key("leases"))
            .key(self.batch_key("gc"))
            .arg(self.record_prefix())
            .arg(batch_id)
            .invoke_async(&mut c)
            .await
            .map_err(fail("batch_complete"))?;
        let Some(raw) = raw else {
            return Ok(());
        };
        self.finish_completion(batch_id, serde_json::from_str::<Record>(&raw).ok())
            .await
    }

    async fn renew_lease(
        &self,
        batch_id: u64,
        now_ms: i64,
        lease: Duration,
    ) -> Result<bool, SliceError> {
        let until = now_ms.saturating_add(lease.as_millis().min(i64::MAX as u128) as i64);
        let mut c = self.conn.clone();
        let renewed: i64 = self
            .scripts
            .batch_renew
            .key(self.batch_key("leases"))
            .arg(batch_id)
            .arg(until)
            .invoke_async(&mut c)
            .await
            .map_err(fail("batch_renew"))?;
        Ok(renewed == 1)
    }

    async fn expire_archived(&self, now_ms: i64) -> Result<u64, SliceError> {
        const PAGE: usize = 64;
        let mut removed = 0;
        let mut seen: HashSet<u64> = HashSet::new();
        loop {
            let mut c = self.conn.clone();
            // A batch held back stays due; skip the ones looked at in this call.
            let want = seen.len() + PAGE;
            let ids: Vec<u64> = ::redis::cmd("ZRANGEBYSCORE")
                .arg(self.batch_key("kept"))
                .arg("-inf")
                .arg(now_ms)
                .arg("LIMIT")
                .arg(0)
                .arg(want)
                .query_async(&mut c)
                .await
                .map_err(fail("expire"))?;
            let complete = ids.len() < want;
            let fresh: Vec<u64> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
            let none = fresh.is_empty();
            for id in fresh {
                removed += self.expire_batch(id, now_ms).await?;
            }
            if complete || none {
                return Ok(removed);
            }
        }
    }

    async fn expired_through(&self, room: &str) -> Result<u64, SliceError> {
        let mut c = self.conn.clone();
        let gone: Option<u64> = ::redis::cmd("HGET")
            .arg(RoomKeys::new(room).k("meta"))
            .arg("gone")
            .query_async(&mut c)
            .await
            .map_err(fail("expired_through"))?;
        Ok(gone.unwrap_or(0))
    }

    async fn archived_through(&self, room: &str) -> Result<u64, SliceError> {
        let keys = RoomKeys::new(room);
        let mut c = self.conn.clone();
        let at: i64 = self
            .scripts
            .archived_through
            .key(keys.k("idx"))
            .key(keys.k("meta"))
            .arg(&keys.prefix)
            .invoke_async(&mut c)
            .await
            .map_err(fail("archived_through"))?;
        Ok(at.max(0) as u64)
    }

    async fn pending(&self) -> Result<u64, SliceError> {
        let rooms = self.all_rooms().await?;
        let counts: Vec<u64> = stream::iter(rooms)
            .map(|room| {
                let mut c = self.conn.clone();
                async move {
                    ::redis::cmd("ZCARD")
                        .arg(RoomKeys::new(&room).k("exp"))
                        .query_async::<u64>(&mut c)
                        .await
                        .map_err(fail("pending"))
                }
            })
            .buffer_unordered(FANOUT)
            .try_collect()
            .await?;
        let mut c = self.conn.clone();
        let batches: u64 = ::redis::cmd("ZCARD")
            .arg(self.batch_key("leases"))
            .query_async(&mut c)
            .await
            .map_err(fail("pending"))?;
        Ok(counts.iter().sum::<u64>() + batches)
    }

    async fn largest_slices(&self, limit: usize) -> Result<Vec<SliceStat>, SliceError> {
        let rooms = self.all_rooms().await?;
        let per_room: Vec<Vec<SliceStat>> = stream::iter(rooms)
            .map(|room| {
                let mut c = self.conn.clone();
                let scripts = self.scripts.clone();
                async move {
                    let keys = RoomKeys::new(&room);
                    let v: Vec<Value> = scripts
                        .room_sizes
                        .key(keys.k("idx"))
                        .key(keys.k("bytes"))
                        .arg(&keys.prefix)
                        .invoke_async(&mut c)
                        .await
                        .map_err(fail("largest_slices"))?;
                    let mut out = Vec::new();
                    for chunk in v.chunks(3) {
                        let (Some(id), Some(members), Some(bytes)) = (
                            chunk.first().and_then(text),
                            chunk.get(1).and_then(int),
                            chunk.get(2).and_then(int),
                        ) else {
                            continue;
                        };
                        if let Some(slice) = slice_of(&room, &id) {
                            out.push(SliceStat {
                                slice,
                                members: members.max(0) as u64,
                                bytes: bytes.max(0) as u64,
                            });
                        }
                    }
                    Ok::<_, SliceError>(out)
                }
            })
            .buffer_unordered(FANOUT)
            .try_collect()
            .await?;
        let mut all: Vec<SliceStat> = per_room.into_iter().flatten().collect();
        all.sort_by(|a, b| {
            b.bytes
                .cmp(&a.bytes)
                .then(b.members.cmp(&a.members))
                .then(a.slice.cmp(&b.slice))
        });
        all.truncate(limit);
        Ok(all)
    }

    async fn scan_keys(&self, cursor: &str, count: usize) -> Result<KeyScanPage, SliceError> {
        let count = count.max(1);
        // Cursor: `<master index>:<SCAN cursor>` (the index is 0 on a standalone Redis).
        let (mut node, mut scan) = match cursor.split_once(':') {
            None if cursor.is_empty() => (0usize, 0u64),
            Some((n, s)) => (
                n.parse()
                    .map_err(|_| SliceError::other(format!("bad scan cursor {cursor:?}")))?,
                s.parse()
                    .map_err(|_| SliceError::other(format!("bad scan cursor {cursor:?}")))?,
            ),
            None => return Err(SliceError::other(format!("bad scan cursor {cursor:?}"))),
        };
        let masters = self.masters().await?;
        let nodes = if self.cluster { masters.len() } else { 1 };
        if node >= nodes {
            return Ok(KeyScanPage::default());
        }
        let mut scan_cmd = ::redis::cmd("SCAN");
        scan_cmd.arg(scan).arg("COUNT").arg(count);
        let (next_scan, keys): (u64, Vec<String>) = match &self.conn {
            Conn::Single(c) => {
                let mut c = c.clone();
                scan_cmd.query_async(&mut c).await.map_err(fail("scan"))?
            }
            Conn::Cluster(c) => {
                let mut c = c.clone();
                let (host, port) = masters[node].clone();
                let v = c
                    .route_command(
                        scan_cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    )
                    .await
                    .map_err(fail("scan"))?;
                ::redis::from_redis_value(v).map_err(|e| bad("scan", e))?
            }
        };
        scan = next_scan;
        if scan == 0 {
            node += 1;
        }
        let next = (node < nodes).then(|| format!("{node}:{scan}"));
        let keys = self.inspect(keys).await?;
        Ok(KeyScanPage { keys, next })
    }

    async fn ready(&self) -> bool {
        if let Some((at, ok)) = *self.ready.lock().expect("ready lock") {
            if at.elapsed() < Duration::from_millis(500) {
                return ok;
            }
        }
        let ok = matches!(
            tokio::time::timeout(Duration::from_millis(800), self.ping()).await,
            Ok(Ok(()))
        );
        *self.ready.lock().expect("ready lock") = Some((Instant::now(), ok));
        ok
    }
}
