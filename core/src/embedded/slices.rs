//! The embedded SliceStore: slices, expiry queue and leased archive batches in redb,
//! each call one transaction.

use super::EmbeddedDb;
use crate::ports::{
    AppendOutcome, ArchiveBatch, KeyScanPage, KeyStat, SliceError, SliceItem, SliceStat, SliceStore,
};
use crate::slice::SliceRef;
use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::BTreeMap;
use std::time::Duration;

/// (room, slice start, seq) -> (ts, data)
const ITEMS: TableDefinition<(&str, i64, u64), (i64, &[u8])> = TableDefinition::new("sl_items");
/// (room, slice start) -> (len, due, members, bytes)
const SLICES: TableDefinition<(&str, i64), (i64, i64, u64, u64)> =
    TableDefinition::new("sl_slices");
/// (due, room, slice start) -> ()
const EXPIRY: TableDefinition<(i64, &str, i64), ()> = TableDefinition::new("sl_expiry");
/// room -> slices starting at or before this are due at once
const MARKS: TableDefinition<&str, i64> = TableDefinition::new("sl_marks");
/// room -> highest seq appended
const LAST: TableDefinition<&str, u64> = TableDefinition::new("sl_last");
/// batch id -> (lease until, slices as JSON)
const BATCHES: TableDefinition<u64, (i64, &[u8])> = TableDefinition::new("sl_batches");
/// (batch id, room, seq) -> (ts, data)
const BATCH_ITEMS: TableDefinition<(u64, &str, u64), (i64, &[u8])> =
    TableDefinition::new("sl_batch_items");
/// name -> counter
const META: TableDefinition<&str, u64> = TableDefinition::new("sl_meta");

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(ITEMS)?;
    txn.open_table(SLICES)?;
    txn.open_table(EXPIRY)?;
    txn.open_table(MARKS)?;
    txn.open_table(LAST)?;
    txn.open_table(BATCHES)?;
    txn.open_table(BATCH_ITEMS)?;
    txn.open_table(META)?;
    Ok(())
}

/// The embedded SliceStore.
#[derive(Clone, Debug)]
pub struct EmbeddedSliceStore {
    db: EmbeddedDb,
}

impl EmbeddedSliceStore {
    pub fn new(db: EmbeddedDb) -> Self {
        Self { db }
    }
}

fn err(e: redb::Error) -> SliceError {
    SliceError::Other(e.to_string())
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
        let (len, due, members, bytes) = v.value();
        if start <= up_to && due != 0 {
            changes.push((room.to_string(), start, len, due, members, bytes));
        }
    }
    for (room, start, len, due, members, bytes) in changes {
        expiry.remove((due, room.as_str(), start))?;
        expiry.insert((0, room.as_str(), start), ())?;
        slices.insert((room.as_str(), start), (len, 0, members, bytes))?;
    }
    Ok(())
}

fn read_batch(
    txn: &redb::WriteTransaction,
    id: u64,
    slices_json: &[u8],
) -> Result<ArchiveBatch, redb::Error> {
    let slices: Vec<SliceRef> = serde_json::from_slice(slices_json).unwrap_or_default();
    let t = txn.open_table(BATCH_ITEMS)?;
    let mut items = Vec::new();
    for e in t.range((id, "", 0)..(id + 1, "", 0))? {
        let (k, v) = e?;
        let (_, room, seq) = k.value();
        let (ts, data) = v.value();
        items.push((
            room.to_string(),
            SliceItem {
                seq,
                ts_ms: ts,
                data: Bytes::copy_from_slice(data),
            },
        ));
    }
    Ok(ArchiveBatch { id, slices, items })
}

#[async_trait]
impl SliceStore for EmbeddedSliceStore {
    async fn append(
        &self,
        room: &str,
        slice_len_ms: i64,
        hot_retention_ms: i64,
        items: &[SliceItem],
    ) -> Result<AppendOutcome, SliceError> {
        let room = room.to_string();
        let mut items = items.to_vec();
        items.sort_by_key(|i| i.seq);
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                let mut outcome = AppendOutcome::default();
                {
                    let mut last_t = txn.open_table(LAST)?;
                    let mark = txn
                        .open_table(MARKS)?
                        .get(room.as_str())?
                        .map(|v| v.value());
                    let mut slices = txn.open_table(SLICES)?;
                    let mut expiry = txn.open_table(EXPIRY)?;
                    let mut store = txn.open_table(ITEMS)?;
                    let mut last = last_t.get(room.as_str())?.map(|v| v.value()).unwrap_or(0);
                    let mut touched: BTreeMap<i64, SliceStat> = BTreeMap::new();
                    for it in &items {
                        // Seqs of a room only grow on the Bus: anything at or below the
                        // high-water mark was stored before (a redelivery).
                        if it.seq <= last {
                            continue;
                        }
                        let mut slice = SliceRef::containing(&room, it.ts_ms, slice_len_ms);
                        let meta = slices
                            .get((room.as_str(), slice.start_ms))?
                            .map(|v| v.value());
                        let (len, due, members, bytes) = match meta {
                            Some(m) => m,
                            None => {
                                let due = if mark.is_some_and(|m| slice.start_ms <= m) {
                                    0
                                } else {
                                    slice.due_ms(hot_retention_ms)
                                };
                                expiry.insert((due, room.as_str(), slice.start_ms), ())?;
                                (slice.len_ms, due, 0, 0)
                            }
                        };
                        slice.len_ms = len;
                        store.insert(
                            (room.as_str(), slice.start_ms, it.seq),
                            (it.ts_ms, it.data.as_ref()),
                        )?;
                        let (members, bytes) = (members + 1, bytes + it.data.len() as u64);
                        slices
                            .insert((room.as_str(), slice.start_ms), (len, due, members, bytes))?;
                        touched.insert(
                            slice.start_ms,
                            SliceStat {
                                slice,
                                members,
                                bytes,
                            },
                        );
                        last = it.seq;
                        outcome.added += 1;
                    }
                    last_t.insert(room.as_str(), last)?;
                    outcome.slices = touched.into_values().collect();
                }
                txn.commit()?;
                Ok(outcome)
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
                let items = r.open_table(ITEMS)?;
                let mut out = Vec::new();
                for e in slices.range((room.as_str(), i64::MIN)..=(room.as_str(), i64::MAX))? {
                    let start = e?.0.value().1;
                    let from = after.saturating_add(1);
                    for it in items
                        .range((room.as_str(), start, from)..=(room.as_str(), start, u64::MAX))?
                        .take(limit)
                    {
                        let (k, v) = it?;
                        let (ts, data) = v.value();
                        out.push(SliceItem {
                            seq: k.value().2,
                            ts_ms: ts,
                            data: Bytes::copy_from_slice(data),
                        });
                    }
                }
                out.sort_by_key(|i| i.seq);
                out.truncate(limit);
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
                    let batches = txn.open_table(BATCHES)?;
                    let mut found = None;
                    for e in batches.iter()? {
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
                    txn.open_table(BATCHES)?
                        .insert(id, (now_ms + lease_ms, json.as_slice()))?;
                    let batch = read_batch(&txn, id, &json)?;
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
                let mut refs = Vec::with_capacity(due.len());
                {
                    let mut expiry = txn.open_table(EXPIRY)?;
                    let mut slices = txn.open_table(SLICES)?;
                    let mut items = txn.open_table(ITEMS)?;
                    let mut bitems = txn.open_table(BATCH_ITEMS)?;
                    for (d, room, start) in &due {
                        expiry.remove((*d, room.as_str(), *start))?;
                        let len = slices
                            .remove((room.as_str(), *start))?
                            .map(|v| v.value().0)
                            .unwrap_or(0);
                        refs.push(SliceRef {
                            room: room.clone(),
                            start_ms: *start,
                            len_ms: len,
                        });
                        let moved = items.extract_from_if(
                            (room.as_str(), *start, 0)..=(room.as_str(), *start, u64::MAX),
                            |_, _| true,
                        )?;
                        for e in moved {
                            let (k, v) = e?;
                            let (ts, data) = v.value();
                            bitems.insert((id, room.as_str(), k.value().2), (ts, data))?;
                        }
                    }
                }
                let json = serde_json::to_vec(&refs).unwrap_or_default();
                txn.open_table(BATCHES)?
                    .insert(id, (now_ms + lease_ms, json.as_slice()))?;
                let batch = read_batch(&txn, id, &json)?;
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
                    let mut bitems = txn.open_table(BATCH_ITEMS)?;
                    bitems.retain_in((batch_id, "", 0)..(batch_id + 1, "", 0), |_, _| false)?;
                    txn.open_table(BATCHES)?.remove(batch_id)?;
                }
                txn.commit()?;
                Ok(())
            })
            .await
            .map_err(err)
    }

    async fn pending(&self) -> Result<u64, SliceError> {
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                Ok(r.open_table(SLICES)?.len()? + r.open_table(BATCHES)?.len()?)
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
                    let (len, _, members, bytes) = m.value();
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
        // The cursor is the last (room, start) returned, as `<start>:<room>`.
        let after: Option<(String, i64)> = if cursor.is_empty() {
            None
        } else {
            let (start, room) = cursor
                .split_once(':')
                .ok_or_else(|| SliceError::Other(format!("bad scan cursor {cursor:?}")))?;
            let start = start
                .parse()
                .map_err(|_| SliceError::Other(format!("bad scan cursor {cursor:?}")))?;
            Some((room.to_string(), start))
        };
        let count = count.max(1);
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(SLICES)?;
                let mut keys = Vec::new();
                let mut last = None;
                let range = match &after {
                    Some((room, start)) => t.range((room.as_str(), *start)..)?,
                    None => t.range::<(&str, i64)>(..)?,
                };
                for e in range {
                    let (k, m) = e?;
                    let (room, start) = k.value();
                    if after
                        .as_ref()
                        .is_some_and(|(r, s)| r == room && *s == start)
                    {
                        continue;
                    }
                    if keys.len() == count {
                        break;
                    }
                    let (len, _, members, bytes) = m.value();
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

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        crate::conformance::slice_store_suite(&store).await;
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
}
