//! Turning one claimed batch into what gets written: decoding each comment,
//! aligning it to its VOD session, and encoding the Parquet files. Pure (no I/O),
//! so it runs on the blocking pool and is unit-tested here.

use crate::parquet_file::{self, EncodeError};
use bytes::Bytes;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{ArchivedComment, SliceItem};
use danmaku_core::vod::{session_for, Session};
use std::collections::HashMap;

/// A batch's comments, decoded and aligned: each is one Parquet row as it stands
/// (its `room`, `vod` and `offset_ms` set to what the file gets).
#[derive(Debug, Default)]
pub struct Aligned {
    /// Comments that belong to a VOD (for the ArchiveStore and Parquet).
    pub archived: Vec<ArchivedComment>,
    /// Comments outside any VOD (Parquet only).
    pub others: Vec<Danmaku>,
    /// Records that did not decode and were skipped.
    pub decode_errors: usize,
}

impl Aligned {
    /// Comments written to Parquet.
    pub fn rows(&self) -> usize {
        self.archived.len() + self.others.len()
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
        out.archived.push(ArchivedComment {
            vod,
            offset_ms,
            item: comment,
        });
    }
    out
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
}
