//! The embedded SliceStore: slices, expiry queue and leased archive batches in redb,
//! each call one transaction.
//!
//! Layout (chosen for the archiver's throughput; every redb insert or remove costs
//! microseconds, so nothing here is done once per comment):
//! - Items are stored in chunks, one per append and slice: `(room, slice start,
//!   first seq)` → the packed items (seq, ts, data) of that append in seq order.
//! - Each live slice has a meta row with its length, due time, size and `floor`: the
//!   room's high-water mark when the slice was created. Chunks of the slice's name
//!   whose first seq is at or below the floor belong to an earlier, already claimed
//!   slice of the same name (seqs of a room only grow, so the two never mix).
//! - Claiming a batch moves no item: it removes the slices' meta and expiry rows,
//!   writes one lease record listing each slice with its seq range `(floor, top]`
//!   (`top`: the room's high-water mark at the claim), and a *kept* row per slice
//!   (room, start, floor → length, top, end of its hot retention, batch, archived?,
//!   size). The batch's items are read straight from the chunks in those ranges, on
//!   the claim and on every redo, so a redo returns the same contents.
//! - Reads by cursor walk a room's live slices and kept slices together, in seq
//!   order (by floor), so claimed and archived items stay readable.
//! - Completing a batch deletes its lease and marks its kept rows archived, each
//!   entered in an expiry index by the end of its hot retention (its end plus the
//!   room's retention at the claim); `expire_archived` deletes the chunks and rows
//!   of a room's oldest slices while they are archived and past it.
//! - Leases: a lease record holds its end; [`EmbeddedDb::open`] sets every lease
//!   found to "expired" (only one process opens the database, so a lease found
//!   there was its dead predecessor's), so the batch is handed out again at once.
//!
//! Appends commit with `Durability::None` when the store was built with
//! [`EmbeddedSliceStore::with_unsynced_appends`] (the embedded pipeline, see
//! `super`'s module doc for why that is safe there); every other write is fsynced.

use super::EmbeddedDb;
use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::ports::{
    AppendOutcome, ArchiveBatch, KeyScanPage, KeyStat, SliceError, SliceItem, SliceStat, SliceStore,
};
use danmaku_core::slice::SliceRef;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use std::collections::HashMap;
use std::time::Duration;

/// (room, slice start, first seq) -> packed items of one append (see [`pack_items`])
const CHUNKS: TableDefinition<(&str, i64, u64), &[u8]> = TableDefinition::new("sl_chunks");
/// A live slice's (len, due, members, bytes, floor).
type SliceMeta = (i64, i64, u64, u64, u64);
/// (room, slice start) -> [`SliceMeta`]
const SLICES: TableDefinition<(&str, i64), SliceMeta> = TableDefinition::new("sl_slice_meta");
/// (due, room, slice start) -> ()
const EXPIRY: TableDefinition<(i64, &str, i64), ()> = TableDefinition::new("sl_expiry");
/// room -> slices starting at or before this are due at once
const MARKS: TableDefinition<&str, i64> = TableDefinition::new("sl_marks");
/// room -> highest seq appended
const LAST: TableDefinition<&str, u64> = TableDefinition::new("sl_last");
/// room -> the room's newest slice (start, len), kept after the slice is claimed:
/// the slice rule ([`SliceRef::assign`]) places new items against it. A room
/// without a row (a database written before this table) falls back to its newest
/// live slice, or has none.
const HEADS: TableDefinition<&str, (i64, i64)> = TableDefinition::new("sl_heads");
/// batch id -> (lease until, leased slices as JSON: [`Leased`])
const LEASES: TableDefinition<u64, (i64, &[u8])> = TableDefinition::new("sl_leases");
/// A claimed slice's (len, top, hot until, batch, archived, members, bytes): its
/// items are the chunks of its (room, start) with a first seq in `(floor, top]`.
type KeptMeta = (i64, u64, i64, u64, bool, u64, u64);
/// (room, slice start, floor) -> [`KeptMeta`]: claimed slices, readable until they
/// expire.
const KEPT: TableDefinition<(&str, i64, u64), KeptMeta> = TableDefinition::new("sl_kept");
/// (hot until, room, slice start, floor) -> (): archived slices, by the end of
/// their hot retention.
const KEPT_EXPIRY: TableDefinition<(i64, &str, i64, u64), ()> =
    TableDefinition::new("sl_kept_expiry");
/// room -> hot retention of its latest append, ms (when a claimed slice expires).
const RETENTION: TableDefinition<&str, i64> = TableDefinition::new("sl_retention");
/// Kept slices `expire_archived` looks at per transaction.
const EXPIRE_SCAN: usize = 4096;
/// name -> counter
const META: TableDefinition<&str, u64> = TableDefinition::new("sl_meta");
/// room -> highest seq `expire_archived` removed ([`SliceStore::expired_through`]).
const GONE: TableDefinition<&str, u64> = TableDefinition::new("sl_gone");
/// (room, comment id) -> kept until (ms): deleted comments, left out of reads
/// and batches ([`SliceStore::delete_items`]).
const DELETED: TableDefinition<(&str, u64), i64> = TableDefinition::new("sl_deleted");

/// The ids of `room` deleted (and still kept as such).
fn deleted_of<T>(table: &T, room: &str) -> Result<std::collections::HashSet<u64>, redb::Error>
where
    T: ReadableTable<(&'static str, u64), i64>,
{
    let mut out = std::collections::HashSet::new();
    for e in table.range((room, 0)..=(room, u64::MAX))? {
        out.insert(e?.0.value().1);
    }
    Ok(out)
}

/// Whether an item's data is one of `deleted` (an id that cannot be read is kept).
fn is_deleted(deleted: &std::collections::HashSet<u64>, data: &[u8]) -> bool {
    !deleted.is_empty()
        && danmaku_core::model::peek_id(data).is_some_and(|id| deleted.contains(&id))
}

/// The tables of the first layout (an item per row, moved into a batch table when
/// claimed); [`migrate_v1`] converts a database that still has them.
mod v1 {
    use redb::TableDefinition;
    pub const ITEMS: TableDefinition<(&str, i64, u64), (i64, &[u8])> =
        TableDefinition::new("sl_items");
    pub const SLICES: TableDefinition<(&str, i64), (i64, i64, u64, u64)> =
        TableDefinition::new("sl_slices");
    pub const BATCHES: TableDefinition<u64, (i64, &[u8])> = TableDefinition::new("sl_batches");
    pub const BATCH_ITEMS: TableDefinition<(u64, &str, u64), (i64, &[u8])> =
        TableDefinition::new("sl_batch_items");
}

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(CHUNKS)?;
    txn.open_table(SLICES)?;
    txn.open_table(EXPIRY)?;
    txn.open_table(MARKS)?;
    txn.open_table(LAST)?;
    txn.open_table(HEADS)?;
    txn.open_table(LEASES)?;
    txn.open_table(META)?;
    txn.open_table(KEPT)?;
    txn.open_table(KEPT_EXPIRY)?;
    txn.open_table(RETENTION)?;
    txn.open_table(DELETED)?;
    txn.open_table(GONE)?;
    migrate_v1(txn)?;
    keep_leased(txn)?;
    release_leases(txn)
}

/// Every lease in the database belongs to a process that is gone: the database is
/// open in one process at a time, and this runs when it opens. Expired now, its
/// batch goes to the next claim at once (same id, same contents) instead of after
/// the rest of its lease.
fn release_leases(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut leases = txn.open_table(LEASES)?;
    let held: Vec<(u64, Vec<u8>)> = leases
        .iter()?
        .filter_map(|e| match e {
            Ok((k, v)) => {
                let (until, json) = v.value();
                (until != i64::MIN).then(|| Ok((k.value(), json.to_vec())))
            }
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    if !held.is_empty() {
        tracing::info!(
            batches = held.len(),
            "releasing the archive leases of the previous process"
        );
    }
    for (id, json) in held {
        leases.insert(id, (i64::MIN, json.as_slice()))?;
    }
    Ok(())
}

/// A batch leased by a version of this store without kept rows gets them, so its
/// items are readable and expire like any other.
fn keep_leased(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let leases = txn.open_table(LEASES)?;
    let mut kept = txn.open_table(KEPT)?;
    let retention = txn.open_table(RETENTION)?;
    for e in leases.iter()? {
        let (k, v) = e?;
        for l in decode_leased(v.value().1)? {
            let key = (l.room.as_str(), l.start_ms, l.floor);
            if kept.get(key)?.is_none() {
                let ret = retention.get(l.room.as_str())?.map_or(0, |v| v.value());
                let until = hot_until(l.start_ms, l.len_ms, ret);
                kept.insert(key, (l.len_ms, l.top, until, k.value(), false, 0, 0))?;
            }
        }
    }
    Ok(())
}

/// When a slice's hot retention ends: its end plus the retention.
fn hot_until(start_ms: i64, len_ms: i64, retention_ms: i64) -> i64 {
    start_ms
        .saturating_add(len_ms)
        .saturating_add(retention_ms.max(0))
}

/// Where a key walk ([`SliceStore::scan_keys`]) resumes.
enum ScanAt {
    Start,
    /// After this live slice (room, start).
    Live(String, i64),
    /// After this kept slice (room, start, floor).
    Kept(String, i64, u64),
}

/// One slice of a leased batch: its items are the chunks of `(room, start_ms)` whose
/// first seq lies in `(floor, top]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Leased {
    room: String,
    start_ms: i64,
    len_ms: i64,
    floor: u64,
    top: u64,
}

/// The embedded SliceStore.
#[derive(Clone, Debug)]
pub struct EmbeddedSliceStore {
    db: EmbeddedDb,
    /// Appends commit with `Durability::None` (see [`Self::with_unsynced_appends`]).
    unsynced_appends: bool,
}

impl EmbeddedSliceStore {
    /// A store whose every write, appends included, is one fsynced transaction.
    pub fn new(db: EmbeddedDb) -> Self {
        Self {
            db,
            unsynced_appends: false,
        }
    }

    /// Appends commit with `redb::Durability::None`: visible to readers at once, on
    /// disk with the next durable commit of the same database. Only for the
    /// embedded pipeline, where the live writer reads the embedded Bus of the same
    /// [`EmbeddedDb`] and commits its offsets in the same database right after
    /// the append; the next durable commit (a publish) persists both, and a crash
    /// before it loses the append together with the offsets (and the room's
    /// high-water mark), so the Bus redelivers the records and they are stored
    /// again under the same seqs.
    /// Never with a Bus outside this database (Kafka): its offsets would be
    /// committed while the items are not yet on disk.
    pub fn with_unsynced_appends(mut self) -> Self {
        self.unsynced_appends = true;
        self
    }
}

fn err(e: redb::Error) -> SliceError {
    match e {
        redb::Error::Corrupted(_) => SliceError::corrupt("redb").with_source(e),
        e => SliceError::other("redb").with_source(e),
    }
}

fn corrupted(what: &str) -> redb::Error {
    redb::Error::Corrupted(format!("slice store: {what}"))
}

/// Bytes of one packed item besides its data: seq, ts and data length.
const ITEM_HEADER: usize = 8 + 8 + 4;

/// Packs items: for each, seq (u64 LE), ts (i64 LE), data length (u32 LE), data.
fn pack_items<'a>(items: impl Iterator<Item = &'a SliceItem>, bytes: usize, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + n * ITEM_HEADER);
    for it in items {
        out.extend_from_slice(&it.seq.to_le_bytes());
        out.extend_from_slice(&it.ts_ms.to_le_bytes());
        out.extend_from_slice(&(it.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&it.data);
    }
    out
}

/// Calls `f(seq, ts, data range)` for every item of a packed chunk, in order.
fn walk_items(
    chunk: &[u8],
    mut f: impl FnMut(u64, i64, std::ops::Range<usize>),
) -> Result<(), redb::Error> {
    let mut at = 0;
    while at < chunk.len() {
        let header = chunk
            .get(at..at + ITEM_HEADER)
            .ok_or_else(|| corrupted("truncated item header"))?;
        let seq = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
        let ts_ms = i64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
        let start = at + ITEM_HEADER;
        if chunk.len() - start < len {
            return Err(corrupted("truncated item"));
        }
        f(seq, ts_ms, start..start + len);
        at = start + len;
    }
    Ok(())
}

/// Calls `f` with every item of a packed chunk, in order. The items' data share
/// `chunk`'s allocation.
fn unpack_items(chunk: &Bytes, mut f: impl FnMut(SliceItem)) -> Result<(), redb::Error> {
    walk_items(chunk, |seq, ts_ms, data| {
        f(SliceItem {
            seq,
            ts_ms,
            data: chunk.slice(data),
        })
    })
}

/// Every item of the chunks of `(room, start)` with a first seq in `first_seqs`, in
/// seq order, each passed to `f`.
fn read_chunks<T>(
    chunks: &T,
    room: &str,
    start: i64,
    first_seqs: std::ops::RangeInclusive<u64>,
    mut f: impl FnMut(SliceItem),
) -> Result<(), redb::Error>
where
    T: ReadableTable<(&'static str, i64, u64), &'static [u8]>,
{
    if first_seqs.is_empty() {
        return Ok(());
    }
    let (lo, hi) = first_seqs.into_inner();
    for e in chunks.range((room, start, lo)..=(room, start, hi))? {
        let (_, v) = e?;
        unpack_items(&Bytes::copy_from_slice(v.value()), &mut f)?;
    }
    Ok(())
}

fn due_now(
    txn: &redb::WriteTransaction,
    room: Option<&str>,
    up_to: i64,
) -> Result<(), redb::Error> {
    let mut slices = txn.open_table(SLICES)?;
    let mut expiry = txn.open_table(EXPIRY)?;
    let mut changes = Vec::new();
    let range = match room {
        Some(r) => slices.range((r, i64::MIN)..=(r, up_to))?,
        None => slices.range::<(&str, i64)>(..)?,
    };
    for e in range {
        let (k, v) = e?;
        let (room, start) = k.value();
        let meta = v.value();
        if start <= up_to && meta.1 != 0 {
            changes.push((room.to_string(), start, meta));
        }
    }
    for (room, start, (len, due, members, bytes, floor)) in changes {
        expiry.remove((due, room.as_str(), start))?;
        expiry.insert((0, room.as_str(), start), ())?;
        slices.insert((room.as_str(), start), (len, 0, members, bytes, floor))?;
    }
    Ok(())
}

/// The batch `id` leasing `leased`: its slices and every item of them, in (room, seq)
/// order.
fn read_batch(
    txn: &redb::WriteTransaction,
    id: u64,
    leased: &[Leased],
) -> Result<ArchiveBatch, redb::Error> {
    let chunks = txn.open_table(CHUNKS)?;
    let deleted_table = txn.open_table(DELETED)?;
    // Read room by room (then by slice start), so items come grouped by room.
    let mut order: Vec<&Leased> = leased.iter().collect();
    order.sort_by(|a, b| (a.room.as_str(), a.start_ms).cmp(&(b.room.as_str(), b.start_ms)));
    let mut items: Vec<(String, SliceItem)> = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let room = order[i].room.as_str();
        let deleted = deleted_of(&deleted_table, room)?;
        let mut room_items = Vec::new();
        while i < order.len() && order[i].room == room {
            let l = order[i];
            read_chunks(
                &chunks,
                room,
                l.start_ms,
                l.floor.saturating_add(1)..=l.top,
                |it| {
                    if !is_deleted(&deleted, &it.data) {
                        room_items.push(it)
                    }
                },
            )?;
            i += 1;
        }
        // Slices of a room hold disjoint seqs, usually already in order.
        if !room_items.is_sorted_by_key(|it| it.seq) {
            room_items.sort_by_key(|it| it.seq);
        }
        items.reserve(room_items.len());
        let owned = room.to_string();
        items.extend(room_items.into_iter().map(|it| (owned.clone(), it)));
    }
    Ok(ArchiveBatch {
        id,
        slices: leased
            .iter()
            .map(|l| SliceRef {
                room: l.room.clone(),
                start_ms: l.start_ms,
                len_ms: l.len_ms,
            })
            .collect(),
        items,
    })
}

/// One transaction of `expire_archived`: for each room with an archived slice
/// whose retention ended by `now_ms`, deletes the room's held slices from the
/// oldest on while they are archived and past their retention (never one behind a
/// slice still held, so a cursor read never skips a middle). Returns the slices
/// deleted and whether more candidates may remain.
fn expire_pass(db: &redb::Database, now_ms: i64) -> Result<(u64, bool), redb::Error> {
    // Nothing due is the usual answer: found without taking the write lock (the
    // live writer's appends need it).
    let first_due = db
        .begin_read()?
        .open_table(KEPT_EXPIRY)?
        .first()?
        .map(|(k, _)| k.value().0);
    if first_due.is_none_or(|until| until > now_ms) {
        return Ok((0, false));
    }
    let txn = db.begin_write()?;
    let mut removed = 0;
    let mut rooms: Vec<String> = Vec::new();
    let more;
    {
        let kept_expiry = txn.open_table(KEPT_EXPIRY)?;
        let mut seen = 0;
        for e in kept_expiry.range(..(now_ms.saturating_add(1), "", i64::MIN, 0))? {
            let (k, _) = e?;
            seen += 1;
            let room = k.value().1;
            if !rooms.iter().any(|r| r == room) {
                rooms.push(room.to_string());
            }
            if seen >= EXPIRE_SCAN {
                break;
            }
        }
        more = seen >= EXPIRE_SCAN;
    }
    {
        let slices = txn.open_table(SLICES)?;
        let mut kept = txn.open_table(KEPT)?;
        let mut kept_expiry = txn.open_table(KEPT_EXPIRY)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut gone = txn.open_table(GONE)?;
        for room in &rooms {
            let room = room.as_str();
            let mut gone_through = gone.get(room)?.map_or(0, |v| v.value());
            let was = gone_through;
            // (floor, start, Some(kept meta) | None for a live slice), oldest first.
            let mut parts: Vec<(u64, i64, Option<KeptMeta>)> = Vec::new();
            for e in slices.range((room, i64::MIN)..=(room, i64::MAX))? {
                let (k, v) = e?;
                parts.push((v.value().4, k.value().1, None));
            }
            for e in kept.range((room, i64::MIN, 0)..=(room, i64::MAX, u64::MAX))? {
                let (k, v) = e?;
                let (_, start, floor) = k.value();
                parts.push((floor, start, Some(v.value())));
            }
            parts.sort_unstable_by_key(|p| (p.0, p.1));
            for (floor, start, meta) in parts {
                let Some((_, top, until, _, archived, _, _)) = meta else {
                    break;
                };
                if !archived || until > now_ms {
                    break;
                }
                if floor < top {
                    let firsts: Vec<u64> = chunks
                        .range((room, start, floor + 1)..=(room, start, top))?
                        .map(|e| e.map(|(k, _)| k.value().2))
                        .collect::<Result<_, _>>()?;
                    for first in firsts {
                        // `top` is the room's high-water mark at the claim, not
                        // the slice's: the seqs removed come from the chunks.
                        if let Some(chunk) = chunks.remove((room, start, first))? {
                            walk_items(chunk.value(), |seq, _, _| {
                                gone_through = gone_through.max(seq);
                            })?;
                        }
                    }
                }
                kept.remove((room, start, floor))?;
                kept_expiry.remove((until, room, start, floor))?;
                removed += 1;
            }
            if gone_through != was {
                gone.insert(room, gone_through)?;
            }
        }
    }
    if removed > 0 {
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok((removed, more))
}

fn decode_leased(json: &[u8]) -> Result<Vec<Leased>, redb::Error> {
    serde_json::from_slice(json).map_err(|e| corrupted(&format!("lease record: {e}")))
}

/// Converts the first layout (an item per row; claimed items moved into a batch
/// table) into chunks and lease records, in the transaction that opens the database.
fn migrate_v1(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let old: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    if !old.iter().any(|n| n == v1::SLICES.name()) {
        return Ok(());
    }
    let mut chunks = txn.open_table(CHUNKS)?;
    // Leased batches: each item goes to the batch's slice of its room covering its
    // time (the first one of the room if none does), one chunk per slice.
    let old_batches: Vec<(u64, i64, Vec<SliceRef>)> = {
        let t = txn.open_table(v1::BATCHES)?;
        let mut v = Vec::new();
        for e in t.iter()? {
            let (k, val) = e?;
            let (until, json) = val.value();
            let refs: Vec<SliceRef> = serde_json::from_slice(json).unwrap_or_default();
            v.push((k.value(), until, refs));
        }
        v
    };
    {
        let batch_items = txn.open_table(v1::BATCH_ITEMS)?;
        let mut leases = txn.open_table(LEASES)?;
        for (id, until, refs) in old_batches {
            let mut per_slice: Vec<Vec<SliceItem>> = vec![Vec::new(); refs.len()];
            for e in batch_items.range((id, "", 0)..(id + 1, "", 0))? {
                let (k, v) = e?;
                let (_, room, seq) = k.value();
                let (ts_ms, data) = v.value();
                let of_room = |r: &&SliceRef| r.room == room;
                let slot = refs
                    .iter()
                    .position(|r| of_room(&r) && r.start_ms <= ts_ms && ts_ms < r.end_ms())
                    .or_else(|| refs.iter().position(|r| of_room(&r)));
                if let Some(slot) = slot {
                    per_slice[slot].push(SliceItem {
                        seq,
                        ts_ms,
                        data: Bytes::copy_from_slice(data),
                    });
                }
            }
            let mut leased = Vec::with_capacity(refs.len());
            for (r, items) in refs.iter().zip(per_slice) {
                let (floor, top) = match (items.first(), items.last()) {
                    (Some(first), Some(last)) => (first.seq - 1, last.seq),
                    _ => (0, 0),
                };
                if let Some(first) = items.first() {
                    let bytes = items.iter().map(|i| i.data.len()).sum();
                    let packed = pack_items(items.iter(), bytes, items.len());
                    chunks.insert((r.room.as_str(), r.start_ms, first.seq), packed.as_slice())?;
                }
                leased.push(Leased {
                    room: r.room.clone(),
                    start_ms: r.start_ms,
                    len_ms: r.len_ms,
                    floor,
                    top,
                });
            }
            let json = serde_json::to_vec(&leased).expect("lease record serializes");
            leases.insert(id, (until, json.as_slice()))?;
        }
    }
    // Live slices: one chunk each; the floor sits just below their first item (older
    // seqs of the same name belong to the leased batches above).
    {
        let old_slices = txn.open_table(v1::SLICES)?;
        let old_items = txn.open_table(v1::ITEMS)?;
        let last = txn.open_table(LAST)?;
        let mut slices = txn.open_table(SLICES)?;
        for e in old_slices.iter()? {
            let (k, v) = e?;
            let (room, start) = k.value();
            let (len, due, members, bytes) = v.value();
            let mut items = Vec::new();
            for e in old_items.range((room, start, 0)..=(room, start, u64::MAX))? {
                let (k, v) = e?;
                let (ts_ms, data) = v.value();
                items.push(SliceItem {
                    seq: k.value().2,
                    ts_ms,
                    data: Bytes::copy_from_slice(data),
                });
            }
            let floor = match items.first() {
                Some(first) => first.seq - 1,
                None => last.get(room)?.map(|v| v.value()).unwrap_or(0),
            };
            if let Some(first) = items.first() {
                let total = items.iter().map(|i| i.data.len()).sum();
                let packed = pack_items(items.iter(), total, items.len());
                chunks.insert((room, start, first.seq), packed.as_slice())?;
            }
            slices.insert((room, start), (len, due, members, bytes, floor))?;
        }
    }
    drop(chunks);
    txn.delete_table(v1::ITEMS)?;
    txn.delete_table(v1::SLICES)?;
    txn.delete_table(v1::BATCHES)?;
    txn.delete_table(v1::BATCH_ITEMS)?;
    Ok(())
}

#[async_trait]
impl SliceStore for EmbeddedSliceStore {
    async fn append_at(
        &self,
        room: &str,
        slice_len_ms: i64,
        hot_retention_ms: i64,
        items: &[SliceItem],
        now_ms: Option<i64>,
    ) -> Result<AppendOutcome, SliceError> {
        let room = room.to_string();
        let mut items = items.to_vec();
        items.sort_by_key(|i| i.seq);
        let unsynced = self.unsynced_appends;
        self.db
            .run(move |db| {
                let mut txn = db.begin_write()?;
                if unsynced {
                    txn.set_durability(redb::Durability::None);
                }
                let mut outcome = AppendOutcome::default();
                {
                    let mut last_t = txn.open_table(LAST)?;
                    let before = last_t.get(room.as_str())?.map(|v| v.value()).unwrap_or(0);
                    // Seqs of a room only grow on the Bus: anything at or below the
                    // high-water mark was stored before (a redelivery); a seq twice in
                    // one call is stored once.
                    let mut last = before;
                    let mut heads = txn.open_table(HEADS)?;
                    let mut slices = txn.open_table(SLICES)?;
                    let stored = heads.get(room.as_str())?.map(|v| v.value());
                    let head = match stored {
                        Some(h) => Some(h),
                        None => slices
                            .range((room.as_str(), i64::MIN)..=(room.as_str(), i64::MAX))?
                            .next_back()
                            .transpose()?
                            .map(|(k, v)| (k.value().1, v.value().0)),
                    };
                    let head = head.map(|(start_ms, len_ms)| SliceRef {
                        room: room.clone(),
                        start_ms,
                        len_ms,
                    });
                    // Items in seq order, grouped by the slice the rule picks for
                    // each: the groups come out in seq and time order.
                    let mut newest = head.clone();
                    let mut groups: Vec<(SliceRef, Vec<&SliceItem>)> = Vec::new();
                    for it in &items {
                        if it.seq <= last {
                            continue;
                        }
                        last = it.seq;
                        let slice =
                            SliceRef::assign(&room, newest.as_ref(), it.ts_ms, slice_len_ms);
                        match groups.last_mut() {
                            Some((s, its)) if *s == slice => its.push(it),
                            _ => groups.push((slice.clone(), vec![it])),
                        }
                        newest = Some(slice);
                    }
                    if groups.is_empty() {
                        drop((last_t, heads, slices));
                        txn.abort()?;
                        return Ok(outcome);
                    }
                    let mark = txn
                        .open_table(MARKS)?
                        .get(room.as_str())?
                        .map(|v| v.value());
                    let mut expiry = txn.open_table(EXPIRY)?;
                    let mut chunks = txn.open_table(CHUNKS)?;
                    for (mut slice, its) in groups {
                        let start = slice.start_ms;
                        let meta = slices.get((room.as_str(), start))?.map(|v| v.value());
                        let (len, due, members, bytes, floor) = match meta {
                            Some((len, due, members, bytes, floor)) => {
                                // A late item keeps its slice for the retention
                                // after it (an expedited slice, due 0, stays due).
                                let at = SliceRef {
                                    room: room.clone(),
                                    start_ms: start,
                                    len_ms: len,
                                }
                                .due_for(hot_retention_ms, now_ms);
                                if due > 0 && at > due {
                                    expiry.remove((due, room.as_str(), start))?;
                                    expiry.insert((at, room.as_str(), start), ())?;
                                    (len, at, members, bytes, floor)
                                } else {
                                    (len, due, members, bytes, floor)
                                }
                            }
                            // A new slice, or the newest one again after it was
                            // claimed: a fresh slice above everything stored so far.
                            None => {
                                let due = if mark.is_some_and(|m| start <= m) {
                                    0
                                } else {
                                    slice.due_for(hot_retention_ms, now_ms)
                                };
                                expiry.insert((due, room.as_str(), start), ())?;
                                (slice.len_ms, due, 0, 0, before)
                            }
                        };
                        slice.len_ms = len;
                        let added_bytes: usize = its.iter().map(|i| i.data.len()).sum();
                        let packed = pack_items(its.iter().copied(), added_bytes, its.len());
                        chunks.insert((room.as_str(), start, its[0].seq), packed.as_slice())?;
                        let members = members + its.len() as u64;
                        let bytes = bytes + added_bytes as u64;
                        slices.insert((room.as_str(), start), (len, due, members, bytes, floor))?;
                        outcome.added += its.len();
                        outcome.slices.push(SliceStat {
                            slice,
                            members,
                            bytes,
                        });
                    }
                    if let Some(n) = newest {
                        if stored != Some((n.start_ms, n.len_ms)) {
                            heads.insert(room.as_str(), (n.start_ms, n.len_ms))?;
                        }
                    }
                    last_t.insert(room.as_str(), last)?;
                    let mut retention = txn.open_table(RETENTION)?;
                    let ret = hot_retention_ms.max(0);
                    if retention.get(room.as_str())?.map(|v| v.value()) != Some(ret) {
                        retention.insert(room.as_str(), ret)?;
                    }
                }
                txn.commit()?;
                Ok(outcome)
            })
            .await
            .map_err(err)
    }

    async fn delete_items(&self, room: &str, ids: &[u64], keep_ms: i64) -> Result<(), SliceError> {
        if ids.is_empty() {
            return Ok(());
        }
        let room = room.to_string();
        let ids = ids.to_vec();
        let now = danmaku_core::now_ms();
        let until = now.saturating_add(keep_ms.max(0));
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut t = txn.open_table(DELETED)?;
                    for id in ids {
                        let keep = t
                            .get((room.as_str(), id))?
                            .map_or(until, |v| v.value().max(until));
                        t.insert((room.as_str(), id), keep)?;
                    }
                    // Forget the room's deletions whose items are gone by now.
                    let old: Vec<u64> = t
                        .range((room.as_str(), 0)..=(room.as_str(), u64::MAX))?
                        .filter_map(|e| e.ok())
                        .filter(|(_, v)| v.value() < now)
                        .map(|(k, _)| k.value().1)
                        .collect();
                    for id in old {
                        t.remove((room.as_str(), id))?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(err)
    }

    async fn is_deleted(&self, room: &str, id: u64) -> Result<bool, SliceError> {
        let room = room.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(DELETED)?;
                Ok(t.get((room.as_str(), id))?.is_some())
            })
            .await
            .map_err(err)
    }

    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SliceItem>, SliceError> {
        let room = room.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let slices = r.open_table(SLICES)?;
                let kept = r.open_table(KEPT)?;
                let chunks = r.open_table(CHUNKS)?;
                let deleted = deleted_of(&r.open_table(DELETED)?, &room)?;
                // Every part of the room still held, as (floor, start, top): its
                // items are the chunks of (room, start) first-seq'd in (floor, top].
                // Parts hold disjoint seq ranges, so by floor is seq order.
                let mut parts: Vec<(u64, i64, u64)> = Vec::new();
                for e in slices.range((room.as_str(), i64::MIN)..=(room.as_str(), i64::MAX))? {
                    let (k, v) = e?;
                    parts.push((v.value().4, k.value().1, u64::MAX));
                }
                let all = (room.as_str(), i64::MIN, 0)..=(room.as_str(), i64::MAX, u64::MAX);
                for e in kept.range(all)? {
                    let (k, v) = e?;
                    let (_, start, floor) = k.value();
                    parts.push((floor, start, v.value().1));
                }
                parts.sort_unstable();
                let mut out = Vec::new();
                for (floor, start, top) in parts {
                    if out.len() >= limit {
                        break;
                    }
                    if top <= after {
                        continue;
                    }
                    // The chunk starting at or before `after` may still hold later items.
                    let mut from = floor.saturating_add(1);
                    if after >= from {
                        let holder = chunks
                            .range((room.as_str(), start, from)..=(room.as_str(), start, after))?
                            .next_back()
                            .transpose()?;
                        from = match holder {
                            Some((k, _)) => k.value().2,
                            None => after.saturating_add(1),
                        };
                    }
                    if from > top {
                        continue;
                    }
                    for c in
                        chunks.range((room.as_str(), start, from)..=(room.as_str(), start, top))?
                    {
                        let (_, v) = c?;
                        // Copies only the items returned (a chunk may hold a
                        // large append).
                        let chunk = v.value();
                        walk_items(chunk, |seq, ts_ms, data| {
                            if seq > after
                                && out.len() < limit
                                && !is_deleted(&deleted, &chunk[data.clone()])
                            {
                                out.push(SliceItem {
                                    seq,
                                    ts_ms,
                                    data: Bytes::copy_from_slice(&chunk[data]),
                                });
                            }
                        })?;
                        if out.len() >= limit {
                            break;
                        }
                    }
                }
                if !out.is_sorted_by_key(|i| i.seq) {
                    out.sort_by_key(|i| i.seq);
                }
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn last_seq(&self, room: &str) -> Result<u64, SliceError> {
        let room = room.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(LAST)?;
                Ok(t.get(room.as_str())?.map(|v| v.value()).unwrap_or(0))
            })
            .await
            .map_err(err)
    }

    async fn expedite(&self, room: &str, up_to_ms: i64) -> Result<(), SliceError> {
        let room = room.to_string();
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut marks = txn.open_table(MARKS)?;
                    let old = marks
                        .get(room.as_str())?
                        .map(|v| v.value())
                        .unwrap_or(i64::MIN);
                    marks.insert(room.as_str(), old.max(up_to_ms))?;
                }
                due_now(&txn, Some(&room), up_to_ms)?;
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(err)
    }

    async fn expedite_all(&self) -> Result<(), SliceError> {
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                due_now(&txn, None, i64::MAX)?;
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(err)
    }

    async fn claim_batch(
        &self,
        now_ms: i64,
        max_slices: usize,
        lease: Duration,
    ) -> Result<Option<ArchiveBatch>, SliceError> {
        let lease_ms = lease.as_millis() as i64;
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                // A batch whose archiver died: hand it out again, unchanged.
                let expired = {
                    let leases = txn.open_table(LEASES)?;
                    let mut found = None;
                    for e in leases.iter()? {
                        let (k, v) = e?;
                        let (until, json) = v.value();
                        if until <= now_ms {
                            found = Some((k.value(), json.to_vec()));
                            break;
                        }
                    }
                    found
                };
                if let Some((id, json)) = expired {
                    txn.open_table(LEASES)?
                        .insert(id, (now_ms.saturating_add(lease_ms), json.as_slice()))?;
                    let batch = read_batch(&txn, id, &decode_leased(&json)?)?;
                    txn.commit()?;
                    return Ok(Some(batch));
                }
                let due: Vec<(i64, String, i64)> = {
                    let expiry = txn.open_table(EXPIRY)?;
                    let mut v = Vec::new();
                    for e in expiry
                        .range((i64::MIN, "", i64::MIN)..(now_ms.saturating_add(1), "", i64::MIN))?
                        .take(max_slices.max(1))
                    {
                        let (k, _) = e?;
                        let (d, room, start) = k.value();
                        v.push((d, room.to_string(), start));
                    }
                    v
                };
                if due.is_empty() {
                    return Ok(None);
                }
                let id = {
                    let mut meta = txn.open_table(META)?;
                    let id = meta.get("next_batch")?.map(|v| v.value()).unwrap_or(1);
                    meta.insert("next_batch", id + 1)?;
                    id
                };
                let mut leased = Vec::with_capacity(due.len());
                {
                    let mut expiry = txn.open_table(EXPIRY)?;
                    let mut slices = txn.open_table(SLICES)?;
                    let mut kept = txn.open_table(KEPT)?;
                    let retention = txn.open_table(RETENTION)?;
                    let last = txn.open_table(LAST)?;
                    let mut tops: HashMap<&str, u64> = HashMap::new();
                    for (d, room, start) in &due {
                        expiry.remove((*d, room.as_str(), *start))?;
                        let (len, floor, members, bytes) = slices
                            .remove((room.as_str(), *start))?
                            .map(|v| {
                                let m = v.value();
                                (m.0, m.4, m.2, m.3)
                            })
                            .unwrap_or((0, u64::MAX, 0, 0));
                        // Every item of the slice is at or below the room's high-water
                        // mark; later appends to its name start a new slice above it.
                        let top = match tops.get(room.as_str()) {
                            Some(t) => *t,
                            None => {
                                let t = last.get(room.as_str())?.map(|v| v.value()).unwrap_or(0);
                                tops.insert(room.as_str(), t);
                                t
                            }
                        };
                        let floor = floor.min(top);
                        // Readable until its hot retention ends, archived or not.
                        let ret = retention.get(room.as_str())?.map_or(0, |v| v.value());
                        let until = hot_until(*start, len, ret);
                        kept.insert(
                            (room.as_str(), *start, floor),
                            (len, top, until, id, false, members, bytes),
                        )?;
                        leased.push(Leased {
                            room: room.clone(),
                            start_ms: *start,
                            len_ms: len,
                            floor,
                            top,
                        });
                    }
                }
                let json = serde_json::to_vec(&leased).expect("lease record serializes");
                txn.open_table(LEASES)?
                    .insert(id, (now_ms.saturating_add(lease_ms), json.as_slice()))?;
                let batch = read_batch(&txn, id, &leased)?;
                txn.commit()?;
                Ok(Some(batch))
            })
            .await
            .map_err(err)
    }

    async fn complete_batch(&self, batch_id: u64) -> Result<(), SliceError> {
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut leases = txn.open_table(LEASES)?;
                    let Some(leased) = leases
                        .remove(batch_id)?
                        .map(|v| decode_leased(v.value().1))
                        .transpose()?
                    else {
                        // Completed already.
                        drop(leases);
                        txn.abort()?;
                        return Ok(());
                    };
                    let mut kept = txn.open_table(KEPT)?;
                    let mut kept_expiry = txn.open_table(KEPT_EXPIRY)?;
                    for l in &leased {
                        let key = (l.room.as_str(), l.start_ms, l.floor);
                        let meta = kept.get(key)?.map(|v| v.value());
                        // (A kept row is written with every claim; a missing one is
                        // rebuilt with the slice's retention ending at once.)
                        let (len, top, until, _, _, members, bytes) =
                            meta.unwrap_or((l.len_ms, l.top, i64::MIN, batch_id, false, 0, 0));
                        kept.insert(key, (len, top, until, batch_id, true, members, bytes))?;
                        kept_expiry.insert((until, l.room.as_str(), l.start_ms, l.floor), ())?;
                    }
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(err)
    }

    async fn renew_lease(
        &self,
        batch_id: u64,
        now_ms: i64,
        lease: Duration,
    ) -> Result<bool, SliceError> {
        let until = now_ms.saturating_add(lease.as_millis().min(i64::MAX as u128) as i64);
        self.db
            .run(move |db| {
                let mut txn = db.begin_write()?;
                // A renewal lost to a crash changes nothing: leases are released
                // when the database opens.
                txn.set_durability(redb::Durability::None);
                let renewed = {
                    let mut leases = txn.open_table(LEASES)?;
                    let json = leases.get(batch_id)?.map(|v| v.value().1.to_vec());
                    match json {
                        Some(json) => {
                            leases.insert(batch_id, (until, json.as_slice()))?;
                            true
                        }
                        None => false,
                    }
                };
                if renewed {
                    txn.commit()?;
                } else {
                    txn.abort()?;
                }
                Ok(renewed)
            })
            .await
            .map_err(err)
    }

    async fn expire_archived(&self, now_ms: i64) -> Result<u64, SliceError> {
        let mut removed = 0;
        loop {
            let (n, more) = self
                .db
                .run(move |db| expire_pass(db, now_ms))
                .await
                .map_err(err)?;
            removed += n;
            if n == 0 || !more {
                return Ok(removed);
            }
        }
    }

    async fn expired_through(&self, room: &str) -> Result<u64, SliceError> {
        let room = room.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(GONE)?;
                Ok(t.get(room.as_str())?.map(|v| v.value()).unwrap_or(0))
            })
            .await
            .map_err(err)
    }

    async fn archived_through(&self, room: &str) -> Result<u64, SliceError> {
        let room = room.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                // The oldest item not archived: the first of a live slice, or of a
                // kept one whose batch is not complete (a floor may lie lower than
                // the slice's first item: slices opened by one append share it).
                let chunks = r.open_table(CHUNKS)?;
                let mut oldest: Option<u64> = None;
                let mut consider = |start: i64, floor: u64, top: u64| -> Result<(), redb::Error> {
                    if floor >= top {
                        return Ok(());
                    }
                    let first = chunks
                        .range((room.as_str(), start, floor + 1)..=(room.as_str(), start, top))?
                        .next()
                        .transpose()?
                        .map(|(k, _)| k.value().2);
                    if let Some(first) = first {
                        oldest = Some(oldest.map_or(first, |o| o.min(first)));
                    }
                    Ok(())
                };
                let slices = r.open_table(SLICES)?;
                for e in slices.range((room.as_str(), i64::MIN)..=(room.as_str(), i64::MAX))? {
                    let (k, v) = e?;
                    consider(k.value().1, v.value().4, u64::MAX)?;
                }
                let kept = r.open_table(KEPT)?;
                let all = (room.as_str(), i64::MIN, 0)..=(room.as_str(), i64::MAX, u64::MAX);
                for e in kept.range(all)? {
                    let (k, v) = e?;
                    let (_, start, floor) = k.value();
                    let (_, top, _, _, archived, _, _) = v.value();
                    if !archived {
                        consider(start, floor, top)?;
                    }
                }
                match oldest {
                    Some(first) => Ok(first - 1),
                    None => Ok(r
                        .open_table(LAST)?
                        .get(room.as_str())?
                        .map_or(0, |v| v.value())),
                }
            })
            .await
            .map_err(err)
    }

    async fn pending(&self) -> Result<u64, SliceError> {
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                Ok(r.open_table(SLICES)?.len()? + r.open_table(LEASES)?.len()?)
            })
            .await
            .map_err(err)
    }

    async fn largest_slices(&self, limit: usize) -> Result<Vec<SliceStat>, SliceError> {
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let mut v = Vec::new();
                for e in r.open_table(SLICES)?.iter()? {
                    let (k, m) = e?;
                    let (room, start) = k.value();
                    let (len, _, members, bytes, _) = m.value();
                    v.push(SliceStat {
                        slice: SliceRef {
                            room: room.to_string(),
                            start_ms: start,
                            len_ms: len,
                        },
                        members,
                        bytes,
                    });
                }
                v.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.members.cmp(&a.members)));
                v.truncate(limit);
                Ok(v)
            })
            .await
            .map_err(err)
    }

    async fn scan_keys(&self, cursor: &str, count: usize) -> Result<KeyScanPage, SliceError> {
        // Live slices first, then kept (claimed or archived) ones. The cursor is the
        // last one returned: `<start>:<room>` for a live slice, `k:<start>:<floor>:<room>`
        // for a kept one.
        let bad = || SliceError::other(format!("bad scan cursor {cursor:?}"));
        let after: ScanAt = if cursor.is_empty() {
            ScanAt::Start
        } else if let Some(rest) = cursor.strip_prefix("k:") {
            let mut parts = rest.splitn(3, ':');
            let start = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let floor = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            let room = parts.next().ok_or_else(bad)?.to_string();
            ScanAt::Kept(room, start, floor)
        } else {
            let (start, room) = cursor.split_once(':').ok_or_else(bad)?;
            let start = start.parse().map_err(|_| bad())?;
            ScanAt::Live(room.to_string(), start)
        };
        let count = count.max(1);
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let mut keys = Vec::new();
                let mut last = None;
                if !matches!(after, ScanAt::Kept(..)) {
                    let t = r.open_table(SLICES)?;
                    let range = match &after {
                        ScanAt::Live(room, start) => t.range((room.as_str(), *start)..)?,
                        _ => t.range::<(&str, i64)>(..)?,
                    };
                    for e in range {
                        let (k, m) = e?;
                        let (room, start) = k.value();
                        if matches!(&after, ScanAt::Live(r, s) if r == room && *s == start) {
                            continue;
                        }
                        if keys.len() == count {
                            break;
                        }
                        let (len, _, members, bytes, _) = m.value();
                        let slice = SliceRef {
                            room: room.to_string(),
                            start_ms: start,
                            len_ms: len,
                        };
                        keys.push(KeyStat {
                            key: slice.key(),
                            members,
                            bytes,
                        });
                        last = Some(format!("{start}:{room}"));
                    }
                }
                if keys.len() < count {
                    let t = r.open_table(KEPT)?;
                    let range = match &after {
                        ScanAt::Kept(room, start, floor) => {
                            t.range((room.as_str(), *start, *floor)..)?
                        }
                        _ => t.range::<(&str, i64, u64)>(..)?,
                    };
                    for e in range {
                        let (k, m) = e?;
                        let (room, start, floor) = k.value();
                        if matches!(&after, ScanAt::Kept(r, s, f) if r == room && *s == start && *f == floor)
                        {
                            continue;
                        }
                        if keys.len() == count {
                            break;
                        }
                        let (len, _, _, batch, _, members, bytes) = m.value();
                        // Named like the Redis store's batch-owned slice keys.
                        keys.push(KeyStat {
                            key: format!("dm:{{{room}}}:b:{batch}:{start}:{len}"),
                            members,
                            bytes,
                        });
                        last = Some(format!("k:{start}:{floor}:{room}"));
                    }
                }
                let next = if keys.len() == count { last } else { None };
                Ok(KeyScanPage { keys, next })
            })
            .await
            .map_err(err)
    }

    async fn ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, ts_ms: i64) -> SliceItem {
        SliceItem {
            seq,
            ts_ms,
            data: Bytes::from(format!("item-{seq}")),
        }
    }

    danmaku_core::slice_store_suite!(slice_store_conformance, async {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        (dir, store)
    });

    danmaku_core::slice_store_suite!(slice_store_conformance_with_unsynced_appends, async {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap()).with_unsynced_appends();
        (dir, store)
    });

    #[test]
    fn items_pack_and_unpack() {
        let items = vec![
            item(1, -5),
            SliceItem {
                seq: u64::MAX,
                ts_ms: i64::MAX,
                data: Bytes::new(),
            },
            item(7, 1_764_000_000_000),
        ];
        let bytes = items.iter().map(|i| i.data.len()).sum();
        let packed = Bytes::from(pack_items(items.iter(), bytes, items.len()));
        let mut back = Vec::new();
        unpack_items(&packed, |it| back.push(it)).unwrap();
        assert_eq!(back, items);
        let cut = packed.slice(..packed.len() - 1);
        assert!(unpack_items(&cut, |_| {}).is_err());
        let cut = packed.slice(..5);
        assert!(unpack_items(&cut, |_| {}).is_err());
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
            let items: Vec<_> = (1..=5)
                .map(|s| SliceItem {
                    seq: s,
                    ts_ms: 1000 * s as i64,
                    data: Bytes::from(vec![s as u8]),
                })
                .collect();
            store.append("r", 2000, 60_000, &items).await.unwrap();
        }
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        assert_eq!(store.read_after("r", 2, 10).await.unwrap().len(), 3);
        assert_eq!(store.last_seq("r").await.unwrap(), 5);
    }

    /// Many appends to one slice, reads from every cursor, then a claim while the
    /// slice keeps growing under the same name: the batch holds exactly what was there
    /// at the claim, the new slice exactly the rest, and a redo returns the same batch.
    #[tokio::test]
    async fn chunks_claims_and_namesakes() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let base = 1_700_000_000_000i64;
        let all: Vec<_> = (1..=40).map(|s| item(s, base + s as i64)).collect();
        for chunk in all[..30].chunks(7) {
            store.append("r", 10_000, 0, chunk).await.unwrap();
        }
        for after in 0..=31 {
            for limit in [1, 3, 100] {
                let got = store.read_after("r", after, limit).await.unwrap();
                let want: Vec<_> = all[..30]
                    .iter()
                    .filter(|i| i.seq > after)
                    .take(limit)
                    .cloned()
                    .collect();
                assert_eq!(got, want, "after {after}, limit {limit}");
            }
        }
        store.expedite_all().await.unwrap();
        let lease = Duration::from_secs(30);
        let b = store.claim_batch(base, 10, lease).await.unwrap().unwrap();
        assert_eq!(
            b.items.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>(),
            all[..30]
        );
        // The same slice name grows again: a new slice, above the claimed one, read
        // after it (claimed items stay readable), from every cursor.
        for chunk in all[30..].chunks(4) {
            store.append("r", 10_000, 0, chunk).await.unwrap();
        }
        for after in 0..=41 {
            for limit in [1, 3, 100] {
                let got = store.read_after("r", after, limit).await.unwrap();
                let want: Vec<_> = all
                    .iter()
                    .filter(|i| i.seq > after)
                    .take(limit)
                    .cloned()
                    .collect();
                assert_eq!(got, want, "after {after}, limit {limit}");
            }
        }
        assert_eq!(store.pending().await.unwrap(), 2);
        let redo = store
            .claim_batch(base + 31_000, 10, lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(redo, b, "an expired lease comes back unchanged");
        store.complete_batch(b.id).await.unwrap();
        store.complete_batch(b.id).await.unwrap();
        assert_eq!(store.read_after("r", 0, 100).await.unwrap(), all);
        // Retention 0: the archived slice expires at its end.
        assert_eq!(store.expire_archived(base + 9_999).await.unwrap(), 0);
        assert_eq!(store.expire_archived(base + 10_000).await.unwrap(), 1);
        assert_eq!(store.read_after("r", 0, 100).await.unwrap(), all[30..]);
        store.expedite_all().await.unwrap();
        let b2 = store
            .claim_batch(base + 31_000, 10, lease)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(b2.id, b.id);
        assert_eq!(
            b2.items.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>(),
            all[30..]
        );
        store.complete_batch(b2.id).await.unwrap();
        assert_eq!(store.pending().await.unwrap(), 0);
        assert_eq!(store.read_after("r", 0, 100).await.unwrap(), all[30..]);
        assert_eq!(store.expire_archived(base + 10_000).await.unwrap(), 1);
        assert!(store.read_after("r", 0, 100).await.unwrap().is_empty());
        let r = store.db.db.begin_read().unwrap();
        assert_eq!(r.open_table(CHUNKS).unwrap().len().unwrap(), 0);
        assert_eq!(r.open_table(KEPT).unwrap().len().unwrap(), 0);
        assert_eq!(r.open_table(KEPT_EXPIRY).unwrap().len().unwrap(), 0);
    }

    /// Only one process opens the database, so a lease found when it opens is a
    /// dead process's: a fresh store on the same data hands that batch out again at
    /// once (same id, same contents), not after the rest of its lease; a batch
    /// completed before is never handed out again.
    #[tokio::test]
    async fn a_reopened_store_releases_the_leases_of_its_previous_process() {
        let dir = tempfile::tempdir().unwrap();
        let base = 1_700_000_000_000i64;
        let lease = Duration::from_secs(30);
        let (held, done) = {
            let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
            let items: Vec<_> = (1..=29).map(|s| item(s, base + s as i64 * 1_000)).collect();
            store.append("r", 10_000, 60_000, &items).await.unwrap();
            store.expedite_all().await.unwrap();
            let held = store.claim_batch(base, 1, lease).await.unwrap().unwrap();
            let done = store.claim_batch(base, 1, lease).await.unwrap().unwrap();
            store.complete_batch(done.id).await.unwrap();
            // Renewed far ahead just before the "crash": released all the same.
            assert!(store
                .renew_lease(held.id, base, Duration::from_secs(3_600))
                .await
                .unwrap());
            // Within the lease, in this process: nobody else gets it.
            let third = store
                .claim_batch(base + 1, 1, lease)
                .await
                .unwrap()
                .unwrap();
            assert_ne!(third.id, held.id);
            store.complete_batch(third.id).await.unwrap();
            assert!(store
                .claim_batch(base + 2, 1, lease)
                .await
                .unwrap()
                .is_none());
            (held, done)
        };
        // The process is gone (its database handle dropped); a new one opens it.
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let redo = store
            .claim_batch(base + 3, 1, lease)
            .await
            .unwrap()
            .expect("the dead process's batch, at once");
        assert_eq!(redo, held, "same id, same contents");
        assert_ne!(redo.id, done.id);
        // Leased again, by this process now.
        assert!(store
            .claim_batch(base + 4, 1, lease)
            .await
            .unwrap()
            .is_none());
        store.complete_batch(redo.id).await.unwrap();
        assert_eq!(store.pending().await.unwrap(), 0);
        drop(store);
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        assert!(store
            .claim_batch(base + 5, 1, lease)
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.read_after("r", 0, 100).await.unwrap().len(), 29);
    }

    /// A batch holds several rooms: items come grouped by room, in seq order; a
    /// late item of a room joins the room's newest slice (the slice rule), so a
    /// room's slices stay in seq order.
    #[tokio::test]
    async fn batch_items_in_room_then_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let base = 1_700_000_000_000i64;
        // Room b: seq 2 is stamped before seq 1's slice: it joins that slice.
        store
            .append("b", 1_000, 0, &[item(1, base + 5_000), item(2, base)])
            .await
            .unwrap();
        store.append("a", 1_000, 0, &[item(9, base)]).await.unwrap();
        store.expedite_all().await.unwrap();
        let b = store
            .claim_batch(base, 100, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        let got: Vec<(&str, u64)> = b.items.iter().map(|(r, i)| (r.as_str(), i.seq)).collect();
        assert_eq!(got, vec![("a", 9), ("b", 1), ("b", 2)]);
        let mut slices = b.slices.clone();
        slices.sort();
        assert_eq!(
            slices,
            vec![
                SliceRef {
                    room: "a".into(),
                    start_ms: base,
                    len_ms: 1_000
                },
                SliceRef {
                    room: "b".into(),
                    start_ms: base + 5_000,
                    len_ms: 1_000
                },
            ]
        );
    }

    /// A database written before the newest slice was remembered (no `sl_heads`
    /// row): the room's newest live slice stands in, so a late item still does not
    /// open an older slice.
    #[tokio::test]
    async fn a_room_without_a_head_row_uses_its_newest_live_slice() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let base = 1_700_000_000_000i64;
        store
            .append("r", 10_000, 60_000, &[item(1, base + 15_000)])
            .await
            .unwrap();
        {
            let txn = store.db.db.begin_write().unwrap();
            txn.open_table(HEADS).unwrap().remove("r").unwrap();
            txn.commit().unwrap();
        }
        let out = store
            .append("r", 3_000, 60_000, &[item(2, base + 1_000)])
            .await
            .unwrap();
        assert_eq!(out.slices.len(), 1);
        assert_eq!(
            (out.slices[0].slice.start_ms, out.slices[0].slice.len_ms),
            (base + 10_000, 10_000)
        );
        // The row is written back; after a claim it still holds the newest slice.
        store.expedite_all().await.unwrap();
        let b = store
            .claim_batch(base, 10, Duration::from_secs(30))
            .await
            .unwrap()
            .unwrap();
        store.complete_batch(b.id).await.unwrap();
        let out = store
            .append("r", 3_000, 60_000, &[item(3, base)])
            .await
            .unwrap();
        assert_eq!(out.slices[0].slice.start_ms, base + 10_000);
    }

    /// A database written by the first layout (an item per row, claimed items in a
    /// batch table) opens with its live slices and leased batches intact.
    #[tokio::test]
    async fn migrates_the_first_layout() {
        let dir = tempfile::tempdir().unwrap();
        let base = 1_700_000_000_000i64;
        let refs = vec![SliceRef {
            room: "r".into(),
            start_ms: base,
            len_ms: 10_000,
        }];
        {
            let db = redb::Database::create(dir.path().join("danmaku.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                // Seqs 1-2 leased in batch 7; 3-4 live in the slice of the same name.
                let mut items = txn.open_table(v1::ITEMS).unwrap();
                let mut slices = txn.open_table(v1::SLICES).unwrap();
                let mut batches = txn.open_table(v1::BATCHES).unwrap();
                let mut bitems = txn.open_table(v1::BATCH_ITEMS).unwrap();
                let mut expiry = txn.open_table(EXPIRY).unwrap();
                let mut last = txn.open_table(LAST).unwrap();
                for s in 1..=2u64 {
                    let it = item(s, base + s as i64);
                    bitems
                        .insert((7, "r", s), (it.ts_ms, it.data.as_ref()))
                        .unwrap();
                }
                let json = serde_json::to_vec(&refs).unwrap();
                batches.insert(7, (0, json.as_slice())).unwrap();
                for s in 3..=4u64 {
                    let it = item(s, base + s as i64);
                    items
                        .insert(("r", base, s), (it.ts_ms, it.data.as_ref()))
                        .unwrap();
                }
                slices
                    .insert(("r", base), (10_000, base + 20_000, 2, 12))
                    .unwrap();
                expiry.insert((base + 20_000, "r", base), ()).unwrap();
                last.insert("r", 4).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let live: Vec<u64> = store
            .read_after("r", 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect();
        // The leased batch's items are readable too (it gets kept rows).
        assert_eq!(live, vec![1, 2, 3, 4]);
        assert_eq!(store.pending().await.unwrap(), 2);
        let lease = Duration::from_secs(30);
        let b = store.claim_batch(base, 1, lease).await.unwrap().unwrap();
        assert_eq!(b.id, 7);
        assert_eq!(b.slices, refs);
        assert_eq!(
            b.items.iter().map(|(_, i)| i.clone()).collect::<Vec<_>>(),
            vec![item(1, base + 1), item(2, base + 2)]
        );
        store.complete_batch(7).await.unwrap();
        let b = store
            .claim_batch(base + 20_000, 1, lease)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(b.items.len(), 2);
        assert_eq!(b.items[0].1, item(3, base + 3));
        store.complete_batch(b.id).await.unwrap();
        assert_eq!(store.pending().await.unwrap(), 0);
        let r = store.db.db.begin_read().unwrap();
        let names: Vec<String> = r
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "sl_items" || n == "sl_batches"));
    }
}
