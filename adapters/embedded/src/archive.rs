//! The embedded ArchiveStore: sessions, and comments by (vod, segment) in redb.
//!
//! Layout (every redb insert costs microseconds, so nothing is done per comment):
//! - Comments are stored in chunks: `(vod, segment, chunk no)` → the packed rows of
//!   one upsert for that segment (offset, id, protobuf), sorted by (offset, id). A
//!   segment read merges its chunks; a segment that has gathered
//!   [`MAX_SEGMENT_CHUNKS`] chunks is rewritten as one on the next upsert.
//! - Idempotence by (vod, id): `(vod, id block)` → the sorted ids of the vod stored
//!   so far in that block (ids are time-ordered; a block is [`ID_BLOCK_SHIFT`] bits
//!   of id, about 4 s of comments). An upsert reads and rewrites each block it
//!   touches once and skips the ids already there, wherever their segment.
//! - `count` is kept per vod and updated once per vod and upsert.
//! - Deletions remove the row from its chunk (rewritten without it; an emptied
//!   chunk goes), take one off `count` and add one to the vod's `deleted`
//!   counter. The id stays in its id block, so a redone upsert skips it; a
//!   deletion of an id not stored yet puts the id there first (a tombstone), so
//!   the comment is never stored afterwards. Applied deletions are kept by
//!   (vod, id), so applying one again (a redone batch) is one lookup.

use super::EmbeddedDb;
use async_trait::async_trait;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{
    ArchiveError, ArchiveStore, ArchivedComment, ArchivedDeletion, VodVersion,
};
use danmaku_core::vod::{segment_of, Session};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use std::collections::HashMap;

/// vod -> session JSON
const VODS: TableDefinition<&str, &[u8]> = TableDefinition::new("ar_vods");
/// (room, started_at, vod) -> ()
const BY_ROOM: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("ar_vods_by_room");
/// (started_at, vod) -> () for every session (the listing across rooms)
const BY_START: TableDefinition<(i64, &str), ()> = TableDefinition::new("ar_vods_by_start");
/// (started_at, vod) -> () for every session not ended yet
const OPEN: TableDefinition<(i64, &str), ()> = TableDefinition::new("ar_vods_open");
/// (vod, segment, chunk no) -> packed rows sorted by (offset, id) (see [`pack_row`])
const CHUNKS: TableDefinition<(&str, u32, u64), &[u8]> = TableDefinition::new("ar_comment_chunks");
/// (vod, id >> ID_BLOCK_SHIFT) -> the block's stored ids, sorted, u64 LE each
const ID_BLOCKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("ar_id_blocks");
/// vod -> comments archived and not deleted
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("ar_counts");
/// vod -> archived comments deleted so far (never decreases)
const DELETED: TableDefinition<&str, u64> = TableDefinition::new("ar_deleted");
/// (vod, id) -> () for every deletion applied
const DELETED_IDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("ar_deleted_ids");

/// Ids per dedup block: `id >> ID_BLOCK_SHIFT`. Comment ids carry their millisecond
/// above bit 22, so a block holds about 4 s of a VOD's comments.
pub const ID_BLOCK_SHIFT: u32 = 34;
/// A segment with this many chunks is rewritten as one chunk on its next upsert.
pub const MAX_SEGMENT_CHUNKS: usize = 16;

/// The tables of the first layout (a row per comment and per id); [`migrate_v1`]
/// converts a database that still has them.
mod v1 {
    use redb::TableDefinition;
    pub const COMMENTS: TableDefinition<(&str, u32, i64, u64), &[u8]> =
        TableDefinition::new("ar_comments");
    pub const IDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("ar_ids");
}

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(VODS)?;
    txn.open_table(BY_ROOM)?;
    txn.open_table(CHUNKS)?;
    txn.open_table(ID_BLOCKS)?;
    txn.open_table(COUNTS)?;
    txn.open_table(DELETED)?;
    txn.open_table(DELETED_IDS)?;
    index_sessions(txn)?;
    migrate_v1(txn)
}

/// Fills [`BY_START`] and [`OPEN`] from [`VODS`] in a database written before
/// they existed (they are empty while sessions are not); otherwise nothing.
fn index_sessions(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let vods = txn.open_table(VODS)?;
    let mut by_start = txn.open_table(BY_START)?;
    let mut open = txn.open_table(OPEN)?;
    if !by_start.is_empty()? || vods.is_empty()? {
        return Ok(());
    }
    for e in vods.iter()? {
        let (_, v) = e?;
        let s = decode_session(v.value())?;
        by_start.insert((s.started_at, s.vod.as_str()), ())?;
        if s.ended_at.is_none() {
            open.insert((s.started_at, s.vod.as_str()), ())?;
        }
    }
    Ok(())
}

/// Up to `limit` sessions of `index` (keyed by (started_at, vod)), newest first.
fn list_sessions(
    db: &redb::Database,
    index: TableDefinition<(i64, &str), ()>,
    limit: usize,
) -> Result<Vec<Session>, redb::Error> {
    let r = db.begin_read()?;
    let index = r.open_table(index)?;
    let vods = r.open_table(VODS)?;
    let mut out = Vec::new();
    for e in index.iter()?.rev().take(limit) {
        let (k, _) = e?;
        if let Some(v) = vods.get(k.value().1)? {
            out.push(decode_session(v.value())?);
        }
    }
    Ok(out)
}

/// The embedded ArchiveStore.
#[derive(Clone, Debug)]
pub struct EmbeddedArchiveStore {
    db: EmbeddedDb,
}

impl EmbeddedArchiveStore {
    pub fn new(db: EmbeddedDb) -> Self {
        Self { db }
    }
}

enum Outcome<T> {
    Ok(T),
    Err(ArchiveError),
}

fn err(e: redb::Error) -> ArchiveError {
    match e {
        redb::Error::Corrupted(_) => ArchiveError::corrupt("redb").with_source(e),
        e => ArchiveError::other("redb").with_source(e),
    }
}

fn decode_session(b: &[u8]) -> Result<Session, redb::Error> {
    serde_json::from_slice(b).map_err(|e| redb::Error::Corrupted(format!("session: {e}")))
}

fn corrupted(what: &str) -> redb::Error {
    redb::Error::Corrupted(format!("archive store: {what}"))
}

/// Bytes of one packed row besides its protobuf: offset, id and length.
const ROW_HEADER: usize = 8 + 8 + 4;

/// Appends one packed row: offset (i64 LE), id (u64 LE), length (u32 LE), protobuf.
fn pack_row(out: &mut Vec<u8>, offset_ms: i64, id: u64, data: &[u8]) {
    out.extend_from_slice(&offset_ms.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// Calls `f(offset, id, protobuf)` for every row of a packed chunk, in order.
fn unpack_rows<'a>(
    chunk: &'a [u8],
    mut f: impl FnMut(i64, u64, &'a [u8]) -> Result<(), redb::Error>,
) -> Result<(), redb::Error> {
    let mut at = 0;
    while at < chunk.len() {
        let header = chunk
            .get(at..at + ROW_HEADER)
            .ok_or_else(|| corrupted("truncated row header"))?;
        let offset_ms = i64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
        let id = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[16..20].try_into().expect("4 bytes")) as usize;
        let start = at + ROW_HEADER;
        let data = chunk
            .get(start..start + len)
            .ok_or_else(|| corrupted("truncated row"))?;
        f(offset_ms, id, data)?;
        at = start + len;
    }
    Ok(())
}

/// The ids of a packed id block.
fn unpack_ids(block: &[u8]) -> Result<Vec<u64>, redb::Error> {
    if !block.len().is_multiple_of(8) {
        return Err(corrupted("id block length"));
    }
    Ok(block
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect())
}

fn pack_ids(ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 8);
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The rows of one upsert, encoded once: vods interned, protobufs in one buffer.
struct Encoded {
    vods: Vec<String>,
    /// (vod index, segment, offset, id, protobuf range in `buf`), in input order.
    rows: Vec<(u32, u32, i64, u64, std::ops::Range<usize>)>,
    buf: Vec<u8>,
}

impl Encoded {
    fn new(rows: &[ArchivedComment]) -> Self {
        let mut vods: Vec<String> = Vec::new();
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut out = Vec::with_capacity(rows.len());
        let mut buf = Vec::with_capacity(rows.len() * 96);
        let mut last: Option<(&str, u32)> = None;
        for r in rows {
            let v = match last {
                Some((name, i)) if name == r.vod => i,
                _ => {
                    let i = *index.entry(r.vod.as_str()).or_insert_with(|| {
                        vods.push(r.vod.clone());
                        (vods.len() - 1) as u32
                    });
                    last = Some((r.vod.as_str(), i));
                    i
                }
            };
            let start = buf.len();
            // Stored with its vod and offset set; the archiver hands them over set.
            if r.item.vod.as_deref() == Some(r.vod.as_str())
                && r.item.offset_ms == Some(r.offset_ms)
            {
                prost::Message::encode(&r.item, &mut buf).expect("a Vec grows");
            } else {
                let mut item = r.item.clone();
                item.vod = Some(r.vod.clone());
                item.offset_ms = Some(r.offset_ms);
                prost::Message::encode(&item, &mut buf).expect("a Vec grows");
            }
            out.push((
                v,
                segment_of(r.offset_ms),
                r.offset_ms,
                r.item.id,
                start..buf.len(),
            ));
        }
        Self {
            vods,
            rows: out,
            buf,
        }
    }
}

/// Stores `enc` in one write transaction: skips (vod, id) pairs stored before or
/// earlier in `enc`, writes one chunk per (vod, segment), updates each vod's count.
fn store(txn: &redb::WriteTransaction, enc: &Encoded) -> Result<(), redb::Error> {
    // Rows by (vod, id), first occurrence first: dedup against the id blocks.
    let mut by_id: Vec<u32> = (0..enc.rows.len() as u32).collect();
    by_id.sort_by_key(|&i| {
        let r = &enc.rows[i as usize];
        (r.0, r.3, i)
    });
    let mut keep = vec![false; enc.rows.len()];
    {
        let mut blocks = txn.open_table(ID_BLOCKS)?;
        let mut i = 0;
        while i < by_id.len() {
            let (vod, id0) = {
                let r = &enc.rows[by_id[i] as usize];
                (r.0, r.3)
            };
            let block = id0 >> ID_BLOCK_SHIFT;
            let name = enc.vods[vod as usize].as_str();
            let stored = match blocks.get((name, block))? {
                Some(v) => unpack_ids(v.value())?,
                None => Vec::new(),
            };
            let mut merged = Vec::with_capacity(stored.len() + 16);
            let mut s = 0;
            let mut added = 0;
            let mut prev: Option<u64> = None;
            while i < by_id.len() {
                let row = by_id[i] as usize;
                let r = &enc.rows[row];
                if r.0 != vod || r.3 >> ID_BLOCK_SHIFT != block {
                    break;
                }
                i += 1;
                if prev == Some(r.3) {
                    continue; // the same (vod, id) twice in this upsert
                }
                prev = Some(r.3);
                while s < stored.len() && stored[s] < r.3 {
                    merged.push(stored[s]);
                    s += 1;
                }
                if s < stored.len() && stored[s] == r.3 {
                    continue; // stored before
                }
                merged.push(r.3);
                keep[row] = true;
                added += 1;
            }
            if added > 0 {
                merged.extend_from_slice(&stored[s..]);
                blocks.insert((name, block), pack_ids(&merged).as_slice())?;
            }
        }
    }
    // New rows by (vod, segment), each segment's sorted by (offset, id).
    let mut fresh: Vec<u32> = (0..enc.rows.len() as u32)
        .filter(|&i| keep[i as usize])
        .collect();
    if fresh.is_empty() {
        return Ok(());
    }
    fresh.sort_unstable_by_key(|&i| {
        let r = &enc.rows[i as usize];
        (r.0, r.1, r.2, r.3)
    });
    let mut chunks = txn.open_table(CHUNKS)?;
    let mut counts = txn.open_table(COUNTS)?;
    let mut i = 0;
    let mut per_vod: Vec<u64> = vec![0; enc.vods.len()];
    while i < fresh.len() {
        let (vod, seg) = {
            let r = &enc.rows[fresh[i] as usize];
            (r.0, r.1)
        };
        let name = enc.vods[vod as usize].as_str();
        let mut j = i;
        while j < fresh.len() && {
            let r = &enc.rows[fresh[j] as usize];
            (r.0, r.1) == (vod, seg)
        } {
            j += 1;
        }
        let group = &fresh[i..j];
        per_vod[vod as usize] += group.len() as u64;
        let existing: Vec<u64> = chunks
            .range((name, seg, 0)..=(name, seg, u64::MAX))?
            .map(|e| e.map(|(k, _)| k.value().2))
            .collect::<Result<_, _>>()?;
        let next = existing.last().map_or(0, |n| n + 1);
        let bytes: usize = group
            .iter()
            .map(|&g| enc.rows[g as usize].4.len() + ROW_HEADER)
            .sum();
        let mut packed = Vec::with_capacity(bytes);
        if existing.len() + 1 >= MAX_SEGMENT_CHUNKS {
            // Too many chunks: this one takes the segment's rows so far.
            let mut rows: Vec<(i64, u64, Vec<u8>)> = Vec::new();
            for n in &existing {
                if let Some(v) = chunks.remove((name, seg, *n))? {
                    unpack_rows(v.value(), |off, id, data| {
                        rows.push((off, id, data.to_vec()));
                        Ok(())
                    })?;
                }
            }
            for &g in group {
                let r = &enc.rows[g as usize];
                rows.push((r.2, r.3, enc.buf[r.4.clone()].to_vec()));
            }
            rows.sort_unstable_by_key(|r| (r.0, r.1));
            for (off, id, data) in &rows {
                pack_row(&mut packed, *off, *id, data);
            }
        } else {
            for &g in group {
                let r = &enc.rows[g as usize];
                pack_row(&mut packed, r.2, r.3, &enc.buf[r.4.clone()]);
            }
        }
        chunks.insert((name, seg, next), packed.as_slice())?;
        i = j;
    }
    for (vod, added) in per_vod.into_iter().enumerate() {
        if added > 0 {
            let name = enc.vods[vod].as_str();
            let c = counts.get(name)?.map(|v| v.value()).unwrap_or(0);
            counts.insert(name, c + added)?;
        }
    }
    Ok(())
}

/// Removes comment `id` from the chunks of segment `seg` of `vod` (every
/// segment when `seg` is `None`); whether it was there.
fn remove_row(
    chunks: &mut redb::Table<(&str, u32, u64), &[u8]>,
    vod: &str,
    seg: Option<u32>,
    id: u64,
) -> Result<bool, redb::Error> {
    let (lo, hi) = match seg {
        Some(s) => ((vod, s, 0), (vod, s, u64::MAX)),
        None => ((vod, 0, 0), (vod, u32::MAX, u64::MAX)),
    };
    let mut found: Option<((u32, u64), Vec<u8>)> = None;
    for e in chunks.range(lo..=hi)? {
        let (k, v) = e?;
        let mut hit = false;
        unpack_rows(v.value(), |_, row_id, _| {
            hit |= row_id == id;
            Ok(())
        })?;
        if !hit {
            continue;
        }
        let mut rest = Vec::with_capacity(v.value().len());
        unpack_rows(v.value(), |off, row_id, data| {
            if row_id != id {
                pack_row(&mut rest, off, row_id, data);
            }
            Ok(())
        })?;
        let (_, s, n) = k.value();
        found = Some(((s, n), rest));
        break;
    }
    let Some(((s, n), rest)) = found else {
        return Ok(false);
    };
    if rest.is_empty() {
        chunks.remove((vod, s, n))?;
    } else {
        chunks.insert((vod, s, n), rest.as_slice())?;
    }
    Ok(true)
}

/// Applies `deletions` in one write transaction; returns the rows removed.
fn delete(
    txn: &redb::WriteTransaction,
    deletions: &[ArchivedDeletion],
) -> Result<u64, redb::Error> {
    let mut blocks = txn.open_table(ID_BLOCKS)?;
    let mut chunks = txn.open_table(CHUNKS)?;
    let mut counts = txn.open_table(COUNTS)?;
    let mut deleted = txn.open_table(DELETED)?;
    let mut applied = txn.open_table(DELETED_IDS)?;
    let mut removed = 0;
    for d in deletions {
        let vod = d.vod.as_str();
        if applied.insert((vod, d.id), ())?.is_some() {
            continue; // applied before
        }
        let block = d.id >> ID_BLOCK_SHIFT;
        let mut ids = match blocks.get((vod, block))? {
            Some(v) => unpack_ids(v.value())?,
            None => Vec::new(),
        };
        if let Err(at) = ids.binary_search(&d.id) {
            // Not stored yet: a tombstone keeps a later upsert out.
            ids.insert(at, d.id);
            blocks.insert((vod, block), pack_ids(&ids).as_slice())?;
            continue;
        }
        let here = remove_row(&mut chunks, vod, Some(segment_of(d.offset_ms)), d.id)?;
        if !here && !remove_row(&mut chunks, vod, None, d.id)? {
            continue; // not stored (only its id was): nothing to remove
        }
        removed += 1;
        let c = counts.get(vod)?.map(|v| v.value()).unwrap_or(0);
        counts.insert(vod, c.saturating_sub(1))?;
        let n = deleted.get(vod)?.map(|v| v.value()).unwrap_or(0);
        deleted.insert(vod, n + 1)?;
    }
    Ok(removed)
}

/// Converts the first layout (a row per comment, a row per id) into chunks and id
/// blocks, in the transaction that opens the database. Counts keep their table.
fn migrate_v1(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let names: Vec<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
    if !names.iter().any(|n| n == v1::COMMENTS.name()) {
        return Ok(());
    }
    {
        let old = txn.open_table(v1::COMMENTS)?;
        let mut chunks = txn.open_table(CHUNKS)?;
        let mut current: Option<(String, u32)> = None;
        let mut packed = Vec::new();
        // Keys come in (vod, segment, offset, id) order: one chunk per segment.
        for e in old.iter()? {
            let (k, v) = e?;
            let (vod, seg, off, id) = k.value();
            if current
                .as_ref()
                .is_some_and(|(cv, cs)| (cv.as_str(), *cs) != (vod, seg))
            {
                let (cv, cs) = current.take().expect("checked");
                chunks.insert((cv.as_str(), cs, 0), packed.as_slice())?;
                packed.clear();
            }
            if current.is_none() {
                current = Some((vod.to_string(), seg));
            }
            pack_row(&mut packed, off, id, v.value());
        }
        if let Some((cv, cs)) = current {
            chunks.insert((cv.as_str(), cs, 0), packed.as_slice())?;
        }
    }
    {
        let old = txn.open_table(v1::IDS)?;
        let mut blocks = txn.open_table(ID_BLOCKS)?;
        let mut current: Option<(String, u64)> = None;
        let mut ids = Vec::new();
        for e in old.iter()? {
            let (k, _) = e?;
            let (vod, id) = k.value();
            let block = id >> ID_BLOCK_SHIFT;
            if current
                .as_ref()
                .is_some_and(|(cv, cb)| (cv.as_str(), *cb) != (vod, block))
            {
                let (cv, cb) = current.take().expect("checked");
                blocks.insert((cv.as_str(), cb), pack_ids(&ids).as_slice())?;
                ids.clear();
            }
            if current.is_none() {
                current = Some((vod.to_string(), block));
            }
            ids.push(id);
        }
        if let Some((cv, cb)) = current {
            blocks.insert((cv.as_str(), cb), pack_ids(&ids).as_slice())?;
        }
    }
    txn.delete_table(v1::COMMENTS)?;
    txn.delete_table(v1::IDS)?;
    Ok(())
}

#[async_trait]
impl ArchiveStore for EmbeddedArchiveStore {
    async fn create_session(&self, session: &Session) -> Result<(), ArchiveError> {
        let s = session.clone();
        let out = self
            .db
            .run(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut vods = txn.open_table(VODS)?;
                    if vods.get(s.vod.as_str())?.is_some() {
                        return Ok(Outcome::Err(ArchiveError::AlreadyExists));
                    }
                    let json = serde_json::to_vec(&s).expect("session serializes");
                    vods.insert(s.vod.as_str(), json.as_slice())?;
                    txn.open_table(BY_ROOM)?
                        .insert((s.room.as_str(), s.started_at, s.vod.as_str()), ())?;
                    txn.open_table(BY_START)?
                        .insert((s.started_at, s.vod.as_str()), ())?;
                    if s.ended_at.is_none() {
                        txn.open_table(OPEN)?
                            .insert((s.started_at, s.vod.as_str()), ())?;
                    }
                }
                txn.commit()?;
                Ok(Outcome::Ok(()))
            })
            .await
            .map_err(err)?;
        match out {
            Outcome::Ok(()) => Ok(()),
            Outcome::Err(e) => Err(e),
        }
    }

    async fn end_session(&self, vod: &str, ended_at: i64) -> Result<Session, ArchiveError> {
        let vod = vod.to_string();
        let out = self
            .db
            .run(move |db| {
                let txn = db.begin_write()?;
                let session = {
                    let mut vods = txn.open_table(VODS)?;
                    let Some(mut s) = vods
                        .get(vod.as_str())?
                        .map(|v| decode_session(v.value()))
                        .transpose()?
                    else {
                        return Ok(Outcome::Err(ArchiveError::NotFound));
                    };
                    if s.ended_at.is_some() {
                        return Ok(Outcome::Err(ArchiveError::AlreadyEnded));
                    }
                    s.ended_at = Some(ended_at.max(s.started_at));
                    let json = serde_json::to_vec(&s).expect("session serializes");
                    vods.insert(vod.as_str(), json.as_slice())?;
                    txn.open_table(OPEN)?
                        .remove((s.started_at, s.vod.as_str()))?;
                    s
                };
                txn.commit()?;
                Ok(Outcome::Ok(session))
            })
            .await
            .map_err(err)?;
        match out {
            Outcome::Ok(s) => Ok(s),
            Outcome::Err(e) => Err(e),
        }
    }

    async fn get_session(&self, vod: &str) -> Result<Option<Session>, ArchiveError> {
        let vod = vod.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(VODS)?;
                t.get(vod.as_str())?
                    .map(|v| decode_session(v.value()))
                    .transpose()
            })
            .await
            .map_err(err)
    }

    async fn sessions_by_room(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Vec<Session>, ArchiveError> {
        let room = room.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let by_room = r.open_table(BY_ROOM)?;
                let vods = r.open_table(VODS)?;
                let mut out = Vec::new();
                for e in by_room
                    .range((room.as_str(), i64::MIN, "")..=(room.as_str(), i64::MAX, "\u{10FFFF}"))?
                    .rev()
                    .take(limit)
                {
                    let (k, _) = e?;
                    let vod = k.value().2;
                    if let Some(v) = vods.get(vod)? {
                        out.push(decode_session(v.value())?);
                    }
                }
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn set_video_url(
        &self,
        vod: &str,
        video_url: Option<&str>,
    ) -> Result<Session, ArchiveError> {
        let vod = vod.to_string();
        let url = video_url.map(str::to_string);
        let out = self
            .db
            .run(move |db| {
                let txn = db.begin_write()?;
                let session = {
                    let mut vods = txn.open_table(VODS)?;
                    let Some(mut s) = vods
                        .get(vod.as_str())?
                        .map(|v| decode_session(v.value()))
                        .transpose()?
                    else {
                        return Ok(Outcome::Err(ArchiveError::NotFound));
                    };
                    s.video_url = url;
                    let json = serde_json::to_vec(&s).expect("session serializes");
                    vods.insert(vod.as_str(), json.as_slice())?;
                    s
                };
                txn.commit()?;
                Ok(Outcome::Ok(session))
            })
            .await
            .map_err(err)?;
        match out {
            Outcome::Ok(s) => Ok(s),
            Outcome::Err(e) => Err(e),
        }
    }

    async fn recent_sessions(&self, limit: usize) -> Result<Vec<Session>, ArchiveError> {
        self.db
            .run(move |db| list_sessions(db, BY_START, limit))
            .await
            .map_err(err)
    }

    async fn open_sessions(&self, limit: usize) -> Result<Vec<Session>, ArchiveError> {
        self.db
            .run(move |db| list_sessions(db, OPEN, limit))
            .await
            .map_err(err)
    }

    async fn upsert_comments(&self, rows: &[ArchivedComment]) -> Result<(), ArchiveError> {
        if rows.is_empty() {
            return Ok(());
        }
        // Encoded here (it copies what the closure needs anyway), stored on the
        // blocking pool.
        let enc = Encoded::new(rows);
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                store(&txn, &enc)?;
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(err)
    }

    async fn read_segment(
        &self,
        vod: &str,
        segment: u32,
    ) -> Result<Vec<ArchivedComment>, ArchiveError> {
        let vod = vod.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(CHUNKS)?;
                let mut out = Vec::new();
                let mut chunks = 0;
                for e in t.range((vod.as_str(), segment, 0)..=(vod.as_str(), segment, u64::MAX))? {
                    let (_, v) = e?;
                    chunks += 1;
                    unpack_rows(v.value(), |offset_ms, _, data| {
                        let item = Danmaku::decode_bytes(data)
                            .map_err(|e| corrupted(&format!("comment: {e}")))?;
                        out.push(ArchivedComment {
                            vod: vod.clone(),
                            offset_ms,
                            item,
                        });
                        Ok(())
                    })?;
                }
                if chunks > 1 {
                    out.sort_by_key(|c| (c.offset_ms, c.item.id));
                }
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn count(&self, vod: &str) -> Result<u64, ArchiveError> {
        let vod = vod.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                Ok(r.open_table(COUNTS)?
                    .get(vod.as_str())?
                    .map(|v| v.value())
                    .unwrap_or(0))
            })
            .await
            .map_err(err)
    }

    async fn delete_comments(&self, deletions: &[ArchivedDeletion]) -> Result<u64, ArchiveError> {
        if deletions.is_empty() {
            return Ok(0);
        }
        let deletions = deletions.to_vec();
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                let removed = delete(&txn, &deletions)?;
                txn.commit()?;
                Ok(removed)
            })
            .await
            .map_err(err)
    }

    async fn version(&self, vod: &str) -> Result<VodVersion, ArchiveError> {
        let vod = vod.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let count = r
                    .open_table(COUNTS)?
                    .get(vod.as_str())?
                    .map(|v| v.value())
                    .unwrap_or(0);
                let deleted = r
                    .open_table(DELETED)?
                    .get(vod.as_str())?
                    .map(|v| v.value())
                    .unwrap_or(0);
                Ok(VodVersion { count, deleted })
            })
            .await
            .map_err(err)
    }

    async fn segments(&self, vod: &str) -> Result<Vec<u32>, ArchiveError> {
        let vod = vod.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(CHUNKS)?;
                let mut out = Vec::new();
                let mut from = 0u32;
                // One lookup per segment: jump past each one found.
                loop {
                    let next = t
                        .range((vod.as_str(), from, 0)..=(vod.as_str(), u32::MAX, u64::MAX))?
                        .next();
                    let Some(e) = next.transpose()? else { break };
                    let seg = e.0.value().1;
                    out.push(seg);
                    match seg.checked_add(1) {
                        Some(n) => from = n,
                        None => break,
                    }
                }
                Ok(out)
            })
            .await
            .map_err(err)
    }

    async fn last_segment(&self, vod: &str) -> Result<Option<u32>, ArchiveError> {
        let vod = vod.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(CHUNKS)?;
                let last = t
                    .range((vod.as_str(), 0, 0)..=(vod.as_str(), u32::MAX, u64::MAX))?
                    .next_back();
                Ok(last.transpose()?.map(|(k, _)| k.value().1))
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
    use danmaku_core::vod::SEGMENT_MS;

    danmaku_core::archive_store_suite!(archive_store_conformance, async {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        (dir, store)
    });

    fn row(vod: &str, id: u64, offset_ms: i64) -> ArchivedComment {
        ArchivedComment {
            vod: vod.into(),
            offset_ms,
            item: Danmaku {
                id,
                room: "r".into(),
                user: "u".into(),
                text: format!("c{id}"),
                vod: Some(vod.into()),
                offset_ms: Some(offset_ms),
                ..Default::default()
            },
        }
    }

    /// A database written before the listing indexes existed (sessions, no
    /// `BY_START`/`OPEN` rows) gets them when opened: every session listed,
    /// the open ones live.
    #[tokio::test]
    async fn sessions_of_an_older_database_are_indexed_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let session = |vod: &str, started_at: i64| Session {
            vod: vod.into(),
            room: "r".into(),
            started_at,
            ended_at: None,
            latency_ms: 0,
            video_url: None,
        };
        {
            let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
            store.create_session(&session("a", 1_000)).await.unwrap();
            store.create_session(&session("b", 2_000)).await.unwrap();
            store.end_session("a", 1_500).await.unwrap();
            // As an older version left it: no index tables.
            store
                .db
                .run(|db| {
                    let txn = db.begin_write()?;
                    txn.delete_table(BY_START)?;
                    txn.delete_table(OPEN)?;
                    txn.commit()?;
                    Ok(())
                })
                .await
                .unwrap();
        }
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let recent: Vec<_> = store.recent_sessions(10).await.unwrap();
        let vods: Vec<_> = recent.iter().map(|s| s.vod.as_str()).collect();
        assert_eq!(vods, ["b", "a"]);
        let open = store.open_sessions(10).await.unwrap();
        assert_eq!(open, vec![session("b", 2_000)]);
        // Opening again changes nothing.
        drop(store);
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        assert_eq!(store.recent_sessions(10).await.unwrap(), recent);
    }

    fn keys(rows: &[ArchivedComment]) -> Vec<(i64, u64)> {
        rows.iter().map(|c| (c.offset_ms, c.item.id)).collect()
    }

    /// Many small upserts into one segment (more than a segment keeps chunks), in
    /// random order and with repeats: the segment reads back sorted, each row once,
    /// and `count` stays exact.
    #[tokio::test]
    async fn many_upserts_merge_and_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let mut want = Vec::new();
        let mut x = 7u64;
        for round in 0..(3 * MAX_SEGMENT_CHUNKS as u64) {
            let mut rows = Vec::new();
            for k in 0..3 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let id = (round * 3 + k) << 30 | (x >> 50);
                let off = (x >> 20) as i64 % SEGMENT_MS;
                rows.push(row("v", id, off));
                want.push((off, id));
            }
            store.upsert_comments(&rows).await.unwrap();
            // A redo of the previous round and of this one adds nothing.
            store.upsert_comments(&rows).await.unwrap();
        }
        want.sort();
        let got = store.read_segment("v", 0).await.unwrap();
        assert_eq!(keys(&got), want);
        assert_eq!(store.count("v").await.unwrap(), want.len() as u64);
        let r = store.db.db.begin_read().unwrap();
        let chunks = r
            .open_table(CHUNKS)
            .unwrap()
            .range(("v", 0, 0)..=("v", 0, u64::MAX))
            .unwrap()
            .count();
        assert!(chunks < MAX_SEGMENT_CHUNKS, "{chunks} chunks");
    }

    /// Idempotence is by (vod, id), whatever the segment a redo computes, and holds
    /// within one call; the same id under another vod is another row.
    #[tokio::test]
    async fn dedup_by_vod_and_id_across_segments_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let far = 5u64 << ID_BLOCK_SHIFT;
        store
            .upsert_comments(&[row("v", 1, 10), row("v", 1, 20), row("v", far, 30)])
            .await
            .unwrap();
        assert_eq!(store.count("v").await.unwrap(), 2);
        // Seen again at another offset (another segment): not stored twice.
        store
            .upsert_comments(&[row("v", 1, SEGMENT_MS + 5), row("w", 1, 0)])
            .await
            .unwrap();
        assert_eq!(store.count("v").await.unwrap(), 2);
        assert_eq!(store.count("w").await.unwrap(), 1);
        assert_eq!(
            keys(&store.read_segment("v", 0).await.unwrap()),
            vec![(10, 1), (30, far)]
        );
        assert!(store.read_segment("v", 1).await.unwrap().is_empty());
        assert_eq!(store.last_segment("v").await.unwrap(), Some(0));
        // A row handed over without its vod and offset set is stored with them.
        let mut bare = row("v", 2, 40);
        bare.item.vod = None;
        bare.item.offset_ms = None;
        store.upsert_comments(&[bare]).await.unwrap();
        let seg = store.read_segment("v", 0).await.unwrap();
        let two = seg.iter().find(|c| c.item.id == 2).unwrap();
        assert_eq!(two.item.vod.as_deref(), Some("v"));
        assert_eq!(two.item.offset_ms, Some(40));
    }

    #[test]
    fn rows_and_ids_pack_and_unpack() {
        let mut packed = Vec::new();
        pack_row(&mut packed, -3, u64::MAX, b"abc");
        pack_row(&mut packed, 7, 1, b"");
        let mut back = Vec::new();
        unpack_rows(&packed, |o, i, d| {
            back.push((o, i, d.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            back,
            vec![(-3, u64::MAX, b"abc".to_vec()), (7, 1, Vec::new())]
        );
        assert!(unpack_rows(&packed[..packed.len() - 1], |_, _, _| Ok(())).is_err());
        assert_eq!(
            unpack_ids(&pack_ids(&[1, 5, u64::MAX])).unwrap(),
            vec![1, 5, u64::MAX]
        );
        assert!(unpack_ids(&[0; 9]).is_err());
    }

    /// A database written by the first layout (a row per comment and per id) opens
    /// with its comments, counts and dedup intact.
    #[tokio::test]
    async fn migrates_the_first_layout() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = redb::Database::create(dir.path().join("danmaku.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut comments = txn.open_table(v1::COMMENTS).unwrap();
                let mut ids = txn.open_table(v1::IDS).unwrap();
                let mut counts = txn.open_table(COUNTS).unwrap();
                for (vod, id, off) in [("v", 1u64, 5i64), ("v", 2, SEGMENT_MS), ("w", 3, 0)] {
                    let r = row(vod, id, off);
                    comments
                        .insert(
                            (vod, segment_of(off), off, id),
                            r.item.encode_bytes().as_ref(),
                        )
                        .unwrap();
                    ids.insert((vod, id), ()).unwrap();
                }
                counts.insert("v", 2).unwrap();
                counts.insert("w", 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        assert_eq!(
            keys(&store.read_segment("v", 0).await.unwrap()),
            vec![(5, 1)]
        );
        assert_eq!(
            keys(&store.read_segment("v", 1).await.unwrap()),
            vec![(SEGMENT_MS, 2)]
        );
        assert_eq!(store.last_segment("v").await.unwrap(), Some(1));
        store
            .upsert_comments(&[row("v", 1, 5), row("v", 4, 6)])
            .await
            .unwrap();
        assert_eq!(store.count("v").await.unwrap(), 3);
        assert_eq!(store.read_segment("w", 0).await.unwrap()[0].item.text, "c3");
        drop(store);
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        assert_eq!(store.count("v").await.unwrap(), 3);
    }
}
