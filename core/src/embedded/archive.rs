//! The embedded ArchiveStore: sessions and comments by (vod, segment, offset, id) in redb.

use super::EmbeddedDb;
use crate::model::Danmaku;
use crate::ports::{ArchiveError, ArchiveStore, ArchivedComment};
use crate::vod::{segment_of, Session};
use async_trait::async_trait;
use redb::{ReadableTable, TableDefinition};

/// vod -> session JSON
const VODS: TableDefinition<&str, &[u8]> = TableDefinition::new("ar_vods");
/// (room, started_at, vod) -> ()
const BY_ROOM: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("ar_vods_by_room");
/// (vod, segment, offset, id) -> comment protobuf
const COMMENTS: TableDefinition<(&str, u32, i64, u64), &[u8]> = TableDefinition::new("ar_comments");
/// (vod, id) -> ()
const IDS: TableDefinition<(&str, u64), ()> = TableDefinition::new("ar_ids");
/// vod -> comments archived
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("ar_counts");

pub(super) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    txn.open_table(VODS)?;
    txn.open_table(BY_ROOM)?;
    txn.open_table(COMMENTS)?;
    txn.open_table(IDS)?;
    txn.open_table(COUNTS)?;
    Ok(())
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
    ArchiveError::Other(e.to_string())
}

fn decode_session(b: &[u8]) -> Result<Session, redb::Error> {
    serde_json::from_slice(b).map_err(|e| redb::Error::Corrupted(format!("session: {e}")))
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

    async fn upsert_comments(&self, rows: &[ArchivedComment]) -> Result<(), ArchiveError> {
        if rows.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, u32, i64, u64, Vec<u8>)> = rows
            .iter()
            .map(|r| {
                let mut item = r.item.clone();
                item.vod = Some(r.vod.clone());
                item.offset_ms = Some(r.offset_ms);
                (
                    r.vod.clone(),
                    segment_of(r.offset_ms),
                    r.offset_ms,
                    item.id,
                    prost::Message::encode_to_vec(&item),
                )
            })
            .collect();
        self.db
            .run(move |db| {
                let txn = db.begin_write()?;
                {
                    let mut ids = txn.open_table(IDS)?;
                    let mut comments = txn.open_table(COMMENTS)?;
                    let mut counts = txn.open_table(COUNTS)?;
                    for (vod, seg, off, id, data) in &rows {
                        if ids.insert((vod.as_str(), *id), ())?.is_some() {
                            continue;
                        }
                        comments.insert((vod.as_str(), *seg, *off, *id), data.as_slice())?;
                        let c = counts.get(vod.as_str())?.map(|v| v.value()).unwrap_or(0);
                        counts.insert(vod.as_str(), c + 1)?;
                    }
                }
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
                let t = r.open_table(COMMENTS)?;
                let mut out = Vec::new();
                for e in t.range(
                    (vod.as_str(), segment, i64::MIN, 0)
                        ..=(vod.as_str(), segment, i64::MAX, u64::MAX),
                )? {
                    let (k, v) = e?;
                    let item = Danmaku::decode_bytes(v.value())
                        .map_err(|e| redb::Error::Corrupted(format!("comment: {e}")))?;
                    out.push(ArchivedComment {
                        vod: vod.clone(),
                        offset_ms: k.value().2,
                        item,
                    });
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

    async fn last_segment(&self, vod: &str) -> Result<Option<u32>, ArchiveError> {
        let vod = vod.to_string();
        self.db
            .run(move |db| {
                let r = db.begin_read()?;
                let t = r.open_table(COMMENTS)?;
                let last = t
                    .range(
                        (vod.as_str(), 0, i64::MIN, 0)
                            ..=(vod.as_str(), u32::MAX, i64::MAX, u64::MAX),
                    )?
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

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedArchiveStore::new(EmbeddedDb::open(dir.path()).unwrap());
        crate::conformance::archive_store_suite(&store).await;
    }
}
