//! Turning one claimed batch into what gets written: decoding each comment,
//! aligning it to its VOD session, and encoding the Parquet files. Pure (no I/O),
//! so it runs on the blocking pool and is unit-tested here.
//!
//! Deletion records ([`Danmaku::is_deletion`]) are never archived as comments:
//! each becomes a row of the batch's deletion files and, when it names a VOD
//! (or its target is a comment of this batch under one), an ArchiveStore
//! deletion; comments they delete in the same batch are left out. Hidden
//! (shadow-banned) comments go to Parquet with their flag, never to the
//! ArchiveStore, so replay never has them.

use crate::parquet_file::{self, DeletionRow, EncodeError};
use bytes::Bytes;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{ArchivedComment, ArchivedDeletion, SliceItem};
use danmaku_core::vod::{session_for, Session};
use std::collections::{HashMap, HashSet};

/// A batch's comments, decoded and aligned: each is one Parquet row as it stands
/// (its `room`, `vod` and `offset_ms` set to what the file gets).
#[derive(Debug, Default)]
pub struct Aligned {
    /// Comments that belong to a VOD (for the ArchiveStore and Parquet).
    pub archived: Vec<ArchivedComment>,
    /// Comments outside any VOD, and hidden comments with or without one
    /// (Parquet only).
    pub others: Vec<Danmaku>,
    /// The batch's deletion records, as rows of its deletion files.
    pub deletions: Vec<DeletionRow>,
    /// The deletions to apply to the ArchiveStore (those with a VOD).
    pub store_deletions: Vec<ArchivedDeletion>,
    /// Records that did not decode and were skipped.
    pub decode_errors: usize,
}

impl Aligned {
    /// Comments written to Parquet.
    pub fn rows(&self) -> usize {
        self.archived.len() + self.others.len()
    }

    /// Leaves out the comments the batch's own deletion records delete, and
    /// gives a deletion without a VOD the one its target was aligned to here.
    fn apply_own_deletions(&mut self) {
        if self.deletions.is_empty() {
            return;
        }
        let deleted: HashSet<u64> = self.deletions.iter().map(|d| d.id).collect();
        let named: HashSet<u64> = self.store_deletions.iter().map(|d| d.id).collect();
        for a in &self.archived {
            if deleted.contains(&a.item.id) && !named.contains(&a.item.id) {
                self.store_deletions.push(ArchivedDeletion {
                    vod: a.vod.clone(),
                    offset_ms: a.offset_ms,
                    id: a.item.id,
                });
            }
        }
        self.archived.retain(|a| !deleted.contains(&a.item.id));
        self.others.retain(|d| !deleted.contains(&d.id));
    }
}

/// Decodes and aligns `items` (batch `batch_id`) against the sessions of each room
/// (`sessions`, keyed by room; a room missing here has none).
///
/// - A comment that already carries a VOD and an offset (posted on a recording)
///   keeps both.
/// - Otherwise it belongs to the session of its room covering its `ts_ms`, at the
///   offset [`Session::align`] gives; or to none, and then goes to Parquet only
///   (without an offset).
/// - A comment without a room gets the SliceStore's room.
/// - A record that does not decode is logged and skipped.
/// - A deletion record is not a comment (see the module documentation); a
///   comment it deletes in this batch is left out.
/// - A hidden comment is aligned like any other but goes to `others`.
pub fn align(
    batch_id: u64,
    items: Vec<(String, SliceItem)>,
    sessions: &HashMap<String, Vec<Session>>,
    plausible_window_ms: i64,
) -> Aligned {
    let mut out = Aligned {
        archived: Vec::with_capacity(items.len()),
        ..Aligned::default()
    };
    // A batch comes grouped by room: look each room's sessions up once.
    let mut room_sessions: (&str, &[Session]) = ("", &[]);
    for (room, item) in &items {
        let mut comment = match Danmaku::decode_bytes(&item.data) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(batch_id, room = %room, seq = item.seq, error = %e, "skipping a slice record that does not decode");
                out.decode_errors += 1;
                continue;
            }
        };
        if comment.room.is_empty() {
            comment.room.clone_from(room);
        }
        if comment.is_deletion() {
            if let (Some(vod), Some(offset_ms), Some(id)) =
                (&comment.vod, comment.offset_ms, comment.deletes)
            {
                out.store_deletions.push(ArchivedDeletion {
                    vod: vod.clone(),
                    offset_ms,
                    id,
                });
            }
            out.deletions
                .extend(DeletionRow::from_record(&comment, room));
            continue;
        }
        let placement = match (&comment.vod, comment.offset_ms) {
            (Some(_), Some(_)) => None,
            (Some(vod), None) => {
                // Malformed: a recording comment must carry its offset. Parquet keeps it.
                tracing::warn!(batch_id, room = %room, id = comment.id, vod = %vod, "recording comment without an offset; Parquet only");
                out.others.push(comment);
                continue;
            }
            (None, _) => {
                if room_sessions.0 != room.as_str() {
                    room_sessions = (
                        room.as_str(),
                        sessions.get(room).map(Vec::as_slice).unwrap_or_default(),
                    );
                }
                match session_for(room_sessions.1, comment.ts_ms) {
                    Some(s) => Some((
                        s.vod.clone(),
                        s.align(comment.ts_ms, comment.stream_pos_ms, plausible_window_ms),
                    )),
                    None => {
                        comment.offset_ms = None;
                        out.others.push(comment);
                        continue;
                    }
                }
            }
        };
        let (vod, offset_ms) = match placement {
            Some((vod, offset_ms)) => {
                comment.vod = Some(vod.clone());
                comment.offset_ms = Some(offset_ms);
                (vod, offset_ms)
            }
            // Posted on a recording: both set already.
            None => (
                comment.vod.clone().unwrap_or_default(),
                comment.offset_ms.unwrap_or_default(),
            ),
        };
        if comment.hidden {
            // Archived for analysts, never replayed.
            out.others.push(comment);
            continue;
        }
        out.archived.push(ArchivedComment {
            vod,
            offset_ms,
            item: comment,
        });
    }
    out.apply_own_deletions();
    out
}

/// The deletion files of an aligned batch: `(object name, bytes)`, one per day.
pub fn encode_deletions(
    batch_id: u64,
    aligned: &Aligned,
) -> Result<Vec<(String, Bytes)>, EncodeError> {
    parquet_file::encode_deletions(batch_id, &aligned.deletions)
}

/// The Parquet files of an aligned batch: `(object name, bytes)`, one per hour.
/// The rows are read in place, not copied.
pub fn encode(batch_id: u64, aligned: &Aligned) -> Result<Vec<(String, Bytes)>, EncodeError> {
    let rows: Vec<&Danmaku> = aligned
        .archived
        .iter()
        .map(|a| &a.item)
        .chain(aligned.others.iter())
        .collect();
    parquet_file::encode_batch(batch_id, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_764_000_000_000;

    fn comment(id: u64, room: &str, ts_ms: i64) -> Danmaku {
        Danmaku {
            id,
            room: room.into(),
            user: "u".into(),
            name: String::new(),
            ts_ms,
            kind: 0,
            mode: 0,
            color: 0xFFFFFF,
            text: format!("c{id}"),
            stream_pos_ms: None,
            vod: None,
            offset_ms: None,
            hidden: false,
            deletes: None,
        }
    }

    fn item(seq: u64, d: &Danmaku) -> SliceItem {
        SliceItem {
            seq,
            ts_ms: d.ts_ms,
            data: d.encode_bytes(),
        }
    }

    fn session(
        vod: &str,
        room: &str,
        started_at: i64,
        ended_at: Option<i64>,
        latency_ms: i64,
    ) -> Session {
        Session {
            vod: vod.into(),
            room: room.into(),
            started_at,
            ended_at,
            latency_ms,
            video_url: None,
        }
    }

    #[test]
    fn aligns_keeps_recording_comments_and_skips_garbage() {
        let sessions = HashMap::from([(
            "r1".to_string(),
            vec![session("v1", "r1", T, Some(T + 60_000), 500)],
        )]);
        let in_session = comment(1, "r1", T + 10_000);
        let before = comment(2, "r1", T - 1);
        let other_room = comment(3, "r2", T + 10_000);
        let mut posted_on_vod = comment(4, "r1", T + 900_000);
        posted_on_vod.vod = Some("v0".into());
        posted_on_vod.offset_ms = Some(42);
        let mut with_pos = comment(5, "r1", T + 20_000);
        with_pos.stream_pos_ms = Some(18_000);
        let items = vec![
            ("r1".to_string(), item(1, &in_session)),
            ("r1".to_string(), item(2, &before)),
            (
                "r1".to_string(),
                SliceItem {
                    seq: 3,
                    ts_ms: T,
                    data: Bytes::from_static(b"\xff\xff\xff not protobuf"),
                },
            ),
            ("r1".to_string(), item(4, &posted_on_vod)),
            ("r1".to_string(), item(5, &with_pos)),
            ("r2".to_string(), item(1, &other_room)),
        ];
        let p = align(7, items, &sessions, 30_000);
        assert_eq!((p.rows(), p.decode_errors), (5, 1));
        let files = encode(7, &p).unwrap();
        let got: Vec<(u64, &str, i64)> = p
            .archived
            .iter()
            .map(|a| (a.item.id, a.vod.as_str(), a.offset_ms))
            .collect();
        assert_eq!(
            got,
            vec![(1, "v1", 9_500), (4, "v0", 42), (5, "v1", 18_000)]
        );
        for a in &p.archived {
            assert_eq!(
                (a.item.vod.as_deref(), a.item.offset_ms),
                (Some(a.vod.as_str()), Some(a.offset_ms))
            );
        }
        assert_eq!(files.len(), 2, "hours 15 and 16");
        assert!(files
            .iter()
            .all(|(name, _)| name.ends_with("part-00000000000000000007.parquet")));
    }

    #[test]
    fn empty_batch_writes_nothing() {
        let p = align(1, Vec::new(), &HashMap::new(), 0);
        assert!(p.archived.is_empty() && p.rows() == 0);
        assert!(encode(1, &p).unwrap().is_empty());
    }

    #[test]
    fn deletions_are_not_comments_and_take_their_targets_out() {
        let sessions = HashMap::from([("r1".to_string(), vec![session("v1", "r1", T, None, 0)])]);
        let kept = comment(1, "r1", T + 1_000);
        let doomed = comment(2, "r1", T + 2_000);
        let hidden = Danmaku {
            hidden: true,
            ..comment(3, "r1", T + 3_000)
        };
        // Deletes 2 (this batch) without naming its VOD, and 99 (archived before).
        let del_here = Danmaku {
            deletes: Some(2),
            user: "mod".into(),
            text: "spam".into(),
            kind: 3,
            ..comment(10, "r1", T + 4_000)
        };
        let del_old = Danmaku {
            deletes: Some(99),
            vod: Some("v1".into()),
            offset_ms: Some(500),
            ..comment(11, "r1", T + 5_000)
        };
        let items = [&kept, &doomed, &hidden, &del_here, &del_old]
            .iter()
            .enumerate()
            .map(|(i, d)| ("r1".to_string(), item(i as u64 + 1, d)))
            .collect();
        let p = align(3, items, &sessions, 0);
        let archived: Vec<u64> = p.archived.iter().map(|a| a.item.id).collect();
        assert_eq!(
            archived,
            vec![1],
            "deleted, hidden and deletion records are not stored"
        );
        let others: Vec<(u64, bool, Option<&str>)> = p
            .others
            .iter()
            .map(|d| (d.id, d.hidden, d.vod.as_deref()))
            .collect();
        assert_eq!(
            others,
            vec![(3, true, Some("v1"))],
            "hidden: Parquet only, aligned"
        );
        let ids: Vec<u64> = p.deletions.iter().map(|d| d.id).collect();
        assert_eq!(ids, vec![2, 99]);
        assert_eq!(p.deletions[0].reason.as_deref(), Some("spam"));
        assert_eq!(p.deletions[0].by, "mod");
        let mut store: Vec<(u64, &str, i64)> = p
            .store_deletions
            .iter()
            .map(|d| (d.id, d.vod.as_str(), d.offset_ms))
            .collect();
        store.sort();
        assert_eq!(store, vec![(2, "v1", 2_000), (99, "v1", 500)]);
        let files = encode_deletions(3, &p).unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].0.starts_with("deletions/date=2025-11-24/"));
    }
}
