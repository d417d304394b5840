//! The ArchiveStore suite: what [`ArchiveStore`] promises, one function per
//! guarantee, run by [`crate::archive_store_suite!`].

use super::unique;
use crate::model::{Danmaku, Kind};
use crate::ports::{ArchiveError, ArchiveStore, ArchivedComment, ArchivedDeletion, VodVersion};
use crate::vod::Session;

/// Expands to one `#[tokio::test]` per ArchiveStore guarantee; see
/// [`crate::conformance`].
#[macro_export]
macro_rules! archive_store_suite {
    ($(#[$attr:meta])* $name:ident $(($($rt:tt)*))?, $make:expr $(,)?) => {
        $crate::__conformance_cases!(one archive_store [$(#[$attr])*] $name ($($($rt)*)?) ($make) [
            a_created_session_reads_back
            creating_a_taken_vod_fails
            sessions_by_room_come_newest_first_up_to_the_limit
            a_session_ends_once
            the_video_url_is_set_and_cleared_and_read_everywhere
            recent_sessions_span_rooms_newest_first
            open_sessions_are_those_not_ended
            upserts_are_idempotent
            a_segment_reads_in_offset_then_id_order
            last_segment_is_the_highest_holding_a_comment
            segments_are_those_holding_comments
            a_segment_whose_comments_were_all_deleted_is_neither_listed_nor_last
            deleted_comments_are_neither_read_nor_counted
            deletions_are_idempotent_and_outlast_a_redone_upsert
            a_deletion_applied_first_keeps_a_later_upsert_out
            a_deletion_found_at_another_offset
            the_version_changes_with_every_change_and_never_repeats
            reports_ready
        ]);
    };
}

fn session(vod: &str, room: &str, started_at: i64, latency_ms: i64) -> Session {
    Session {
        vod: vod.to_string(),
        room: room.to_string(),
        started_at,
        ended_at: None,
        latency_ms,
        video_url: None,
    }
}

/// Server time now, ms: listings across rooms may look back only so far.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether `list` is newest first by (started_at, vod).
fn newest_first(list: &[Session]) -> bool {
    list.windows(2)
        .all(|w| (w[0].started_at, &w[0].vod) >= (w[1].started_at, &w[1].vod))
}

/// The sessions of `list` whose vod is one of `vods`, in the order of `list`.
fn only<'a>(list: &'a [Session], vods: &[&str]) -> Vec<&'a Session> {
    list.iter()
        .filter(|s| vods.contains(&s.vod.as_str()))
        .collect()
}

fn comment(id: u64, vod: &str, offset: i64, kind: Kind) -> ArchivedComment {
    ArchivedComment {
        vod: vod.to_string(),
        offset_ms: offset,
        item: Danmaku {
            id,
            room: "r".into(),
            user: "u".into(),
            ts_ms: 1_700_000_000_000 + offset,
            kind: kind as i32,
            text: format!("c{id}"),
            vod: Some(vod.to_string()),
            offset_ms: Some(offset),
            ..Default::default()
        },
    }
}

/// Rows over two segments of `v1` and one of `v2`, out of order.
fn rows(v1: &str, v2: &str) -> Vec<ArchivedComment> {
    vec![
        comment(30, v1, 400_000, Kind::Comment),
        comment(20, v1, 1_000, Kind::Gift),
        comment(10, v1, 1_000, Kind::Comment),
        comment(40, v1, 0, Kind::Comment),
        comment(50, v2, 10, Kind::Comment),
    ]
}

/// A created session reads back as created; an unknown vod reads as none.
pub async fn a_created_session_reads_back(store: &dyn ArchiveStore) {
    let s = session(&unique("v"), &unique("ar"), 1000, 250);
    store.create_session(&s).await.unwrap();
    assert_eq!(store.get_session(&s.vod).await.unwrap(), Some(s));
    assert_eq!(store.get_session(&unique("nope")).await.unwrap(), None);
}

/// Creating a session under a vod id that is taken fails with `AlreadyExists`
/// and changes nothing.
pub async fn creating_a_taken_vod_fails(store: &dyn ArchiveStore) {
    let s = session(&unique("v"), &unique("ar"), 1000, 0);
    store.create_session(&s).await.unwrap();
    let again = session(&s.vod, &unique("other"), 2000, 5);
    assert!(matches!(
        store.create_session(&again).await,
        Err(ArchiveError::AlreadyExists)
    ));
    assert_eq!(store.get_session(&s.vod).await.unwrap(), Some(s));
}

/// A room's sessions come newest first, at most `limit`.
pub async fn sessions_by_room_come_newest_first_up_to_the_limit(store: &dyn ArchiveStore) {
    let room = unique("ar");
    let s1 = session(&unique("v"), &room, 1000, 0);
    let s2 = session(&unique("w"), &room, 5000, 250);
    store.create_session(&s1).await.unwrap();
    store.create_session(&s2).await.unwrap();
    store
        .create_session(&session(&unique("x"), &unique("other"), 9000, 0))
        .await
        .unwrap();
    let list = store.sessions_by_room(&room, 10).await.unwrap();
    assert_eq!(list, vec![s2.clone(), s1], "newest first");
    assert_eq!(store.sessions_by_room(&room, 1).await.unwrap(), vec![s2]);
    assert!(store
        .sessions_by_room(&unique("none"), 10)
        .await
        .unwrap()
        .is_empty());
}

/// `end_session` sets `ended_at` once: `AlreadyEnded` afterwards, `NotFound` for
/// an unknown vod.
pub async fn a_session_ends_once(store: &dyn ArchiveStore) {
    let s = session(&unique("v"), &unique("ar"), 1000, 0);
    store.create_session(&s).await.unwrap();
    let ended = store.end_session(&s.vod, 4000).await.unwrap();
    assert_eq!(ended.ended_at, Some(4000));
    assert_eq!(
        store.get_session(&s.vod).await.unwrap(),
        Some(ended.clone())
    );
    assert!(matches!(
        store.end_session(&s.vod, 4001).await,
        Err(ArchiveError::AlreadyEnded)
    ));
    assert_eq!(store.get_session(&s.vod).await.unwrap(), Some(ended));
    assert!(matches!(
        store.end_session(&unique("nope"), 1).await,
        Err(ArchiveError::NotFound)
    ));
}

/// `set_video_url` sets and clears the URL, changes nothing else, works on an
/// ended session, and every read of the session returns it; `NotFound` for an
/// unknown vod.
pub async fn the_video_url_is_set_and_cleared_and_read_everywhere(store: &dyn ArchiveStore) {
    let room = unique("ar");
    let s = session(&unique("v"), &room, now_ms() - 5_000, 100);
    store.create_session(&s).await.unwrap();
    assert_eq!(
        store.get_session(&s.vod).await.unwrap().unwrap().video_url,
        None
    );
    let url = "https://cdn.example/live/a.m3u8?x=1&y=\u{e9}";
    let set = store.set_video_url(&s.vod, Some(url)).await.unwrap();
    let want = Session {
        video_url: Some(url.to_string()),
        ..s.clone()
    };
    assert_eq!(set, want);
    assert_eq!(store.get_session(&s.vod).await.unwrap(), Some(want.clone()));
    assert_eq!(
        store.sessions_by_room(&room, 10).await.unwrap(),
        vec![want.clone()]
    );
    let recent = store.recent_sessions(10_000).await.unwrap();
    assert_eq!(only(&recent, &[&s.vod]), vec![&want]);
    let open = store.open_sessions(10_000).await.unwrap();
    assert_eq!(only(&open, &[&s.vod]), vec![&want]);
    // Ending keeps it; it can still be changed afterwards (the recording).
    let ended = store
        .end_session(&s.vod, s.started_at + 4_000)
        .await
        .unwrap();
    assert_eq!(ended.video_url.as_deref(), Some(url));
    let other = "http://vod.example/a.mp4";
    let changed = store.set_video_url(&s.vod, Some(other)).await.unwrap();
    assert_eq!(changed.ended_at, ended.ended_at);
    assert_eq!(changed.video_url.as_deref(), Some(other));
    let recent = store.recent_sessions(10_000).await.unwrap();
    assert_eq!(only(&recent, &[&s.vod]), vec![&changed]);
    let cleared = store.set_video_url(&s.vod, None).await.unwrap();
    assert_eq!(
        cleared,
        Session {
            video_url: None,
            ..changed
        }
    );
    assert_eq!(
        store.get_session(&s.vod).await.unwrap(),
        Some(cleared.clone())
    );
    assert_eq!(
        store.sessions_by_room(&room, 10).await.unwrap(),
        vec![cleared]
    );
    assert!(matches!(
        store.set_video_url(&unique("nope"), Some(url)).await,
        Err(ArchiveError::NotFound)
    ));
}

/// `recent_sessions` lists every room's sessions, live and ended, newest first
/// by (started_at, vod), at most `limit`.
pub async fn recent_sessions_span_rooms_newest_first(store: &dyn ArchiveStore) {
    let now = now_ms();
    let a = session(&unique("v"), &unique("ar"), now - 30_000, 0);
    let b = session(&unique("v"), &unique("ar"), now - 20_000, 0);
    let c = session(&unique("v"), &unique("ar"), now - 10_000, 0);
    // Created out of order; b ends.
    store.create_session(&c).await.unwrap();
    store.create_session(&a).await.unwrap();
    store.create_session(&b).await.unwrap();
    let b = store.end_session(&b.vod, now - 15_000).await.unwrap();
    let list = store.recent_sessions(10_000).await.unwrap();
    assert!(newest_first(&list), "newest first: {list:?}");
    assert_eq!(only(&list, &[&a.vod, &b.vod, &c.vod]), vec![&c, &b, &a]);
    for limit in [0, 1, 2] {
        let short = store.recent_sessions(limit).await.unwrap();
        assert!(short.len() <= limit);
        assert!(newest_first(&short));
    }
    // A session started a minute ago is among the newest unless as many others
    // started since.
    let one = store.recent_sessions(1).await.unwrap();
    assert_eq!(one.len(), 1);
    assert!(one[0].started_at >= c.started_at, "{one:?}");
}

/// `open_sessions` lists the sessions not ended, of every room, newest first;
/// an ended session leaves the list at once.
pub async fn open_sessions_are_those_not_ended(store: &dyn ArchiveStore) {
    let now = now_ms();
    let a = session(&unique("v"), &unique("ar"), now - 30_000, 0);
    let b = session(&unique("v"), &unique("ar"), now - 20_000, 0);
    let c = session(&unique("v"), &unique("ar"), now - 10_000, 0);
    for s in [&a, &b, &c] {
        store.create_session(s).await.unwrap();
    }
    let list = store.open_sessions(10_000).await.unwrap();
    assert!(newest_first(&list), "newest first: {list:?}");
    assert!(list.iter().all(|s| s.ended_at.is_none()));
    assert_eq!(only(&list, &[&a.vod, &b.vod, &c.vod]), vec![&c, &b, &a]);
    store.end_session(&b.vod, now - 15_000).await.unwrap();
    let list = store.open_sessions(10_000).await.unwrap();
    assert_eq!(only(&list, &[&a.vod, &b.vod, &c.vod]), vec![&c, &a]);
    assert!(store.open_sessions(0).await.unwrap().is_empty());
    assert!(store.open_sessions(1).await.unwrap().len() <= 1);
}

/// Upserting the same comments again (a redone batch) stores nothing twice.
pub async fn upserts_are_idempotent(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    let rows = rows(&v1, &v2);
    store.upsert_comments(&rows).await.unwrap();
    store.upsert_comments(&rows[1..3]).await.unwrap();
    store.upsert_comments(&rows).await.unwrap();
    assert_eq!(store.count(&v1).await.unwrap(), 4, "upserts are idempotent");
    assert_eq!(store.count(&v2).await.unwrap(), 1);
    assert_eq!(store.count(&unique("none")).await.unwrap(), 0);
    assert_eq!(store.read_segment(&v1, 0).await.unwrap().len(), 3);
}

/// A segment's comments come ordered by (offset, id), whole (kind, vod, offset
/// kept); a segment without comments is empty.
pub async fn a_segment_reads_in_offset_then_id_order(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    store.upsert_comments(&rows(&v1, &v2)).await.unwrap();
    let seg0 = store.read_segment(&v1, 0).await.unwrap();
    let order: Vec<(i64, u64)> = seg0.iter().map(|c| (c.offset_ms, c.item.id)).collect();
    assert_eq!(
        order,
        vec![(0, 40), (1_000, 10), (1_000, 20)],
        "ordered by (offset, id)"
    );
    assert_eq!(seg0[2].item.kind(), Kind::Gift);
    assert_eq!(seg0[0].item.vod.as_deref(), Some(v1.as_str()));
    assert_eq!(seg0[0].item.offset_ms, Some(0));
    assert!(seg0.iter().all(|c| c.vod == v1));
    let seg1 = store.read_segment(&v1, 1).await.unwrap();
    assert_eq!(seg1.len(), 1);
    assert_eq!(seg1[0].item.text, "c30");
    assert!(store.read_segment(&v1, 7).await.unwrap().is_empty());
    let other = store.read_segment(&v2, 0).await.unwrap();
    assert_eq!(other.len(), 1, "vods do not mix");
    assert_eq!(other[0].item.id, 50);
}

/// `last_segment` is the highest segment holding a comment of the vod.
pub async fn last_segment_is_the_highest_holding_a_comment(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    store.upsert_comments(&rows(&v1, &v2)).await.unwrap();
    assert_eq!(store.last_segment(&v1).await.unwrap(), Some(1));
    assert_eq!(store.last_segment(&v2).await.unwrap(), Some(0));
    assert_eq!(store.last_segment(&unique("none")).await.unwrap(), None);
}

fn deletion(c: &ArchivedComment) -> ArchivedDeletion {
    ArchivedDeletion {
        vod: c.vod.clone(),
        offset_ms: c.offset_ms,
        id: c.item.id,
    }
}

fn ids(rows: &[ArchivedComment]) -> Vec<u64> {
    rows.iter().map(|c| c.item.id).collect()
}

/// A deleted comment is not read by `read_segment`, leaves `count`, and counts
/// in `version().deleted`; other comments and VODs are untouched.
pub async fn deleted_comments_are_neither_read_nor_counted(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    let rows = rows(&v1, &v2);
    store.upsert_comments(&rows).await.unwrap();
    // 10 (segment 0) and 30 (segment 1) of v1.
    let n = store
        .delete_comments(&[deletion(&rows[2]), deletion(&rows[0])])
        .await
        .unwrap();
    assert_eq!(n, 2, "two stored comments deleted");
    assert_eq!(
        ids(&store.read_segment(&v1, 0).await.unwrap()),
        vec![40, 20]
    );
    assert!(store.read_segment(&v1, 1).await.unwrap().is_empty());
    assert_eq!(store.count(&v1).await.unwrap(), 2);
    assert_eq!(
        store.version(&v1).await.unwrap(),
        VodVersion {
            count: 2,
            deleted: 2
        }
    );
    assert_eq!(store.count(&v2).await.unwrap(), 1, "other vods untouched");
    assert_eq!(
        store.version(&v2).await.unwrap(),
        VodVersion {
            count: 1,
            deleted: 0
        }
    );
    assert_eq!(
        store.version(&unique("none")).await.unwrap(),
        VodVersion::default()
    );
}

/// Deleting again (a redone batch) changes nothing, and upserting a deleted
/// comment again (a redo of the batch that archived it) does not bring it back.
pub async fn deletions_are_idempotent_and_outlast_a_redone_upsert(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    let rows = rows(&v1, &v2);
    store.upsert_comments(&rows).await.unwrap();
    assert_eq!(
        store.delete_comments(&[deletion(&rows[1])]).await.unwrap(),
        1
    );
    let after = store.version(&v1).await.unwrap();
    assert_eq!(
        store.delete_comments(&[deletion(&rows[1])]).await.unwrap(),
        0
    );
    store.upsert_comments(&rows).await.unwrap();
    assert_eq!(store.delete_comments(&[]).await.unwrap(), 0);
    assert_eq!(store.version(&v1).await.unwrap(), after, "nothing changed");
    assert_eq!(
        after,
        VodVersion {
            count: 3,
            deleted: 1
        }
    );
    assert_eq!(
        ids(&store.read_segment(&v1, 0).await.unwrap()),
        vec![40, 10]
    );
}

/// A deletion applied before its comment was upserted keeps the comment out:
/// not read, not counted, and the version does not move for it.
pub async fn a_deletion_applied_first_keeps_a_later_upsert_out(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    let rows = rows(&v1, &v2);
    assert_eq!(
        store.delete_comments(&[deletion(&rows[3])]).await.unwrap(),
        0
    );
    assert_eq!(store.version(&v1).await.unwrap(), VodVersion::default());
    store.upsert_comments(&rows).await.unwrap();
    assert_eq!(
        ids(&store.read_segment(&v1, 0).await.unwrap()),
        vec![10, 20]
    );
    assert_eq!(
        store.version(&v1).await.unwrap(),
        VodVersion {
            count: 3,
            deleted: 0
        }
    );
}

/// A deletion whose offset is not where the comment is archived (an offset
/// clamped differently) still deletes it.
pub async fn a_deletion_found_at_another_offset(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    let rows = rows(&v1, &v2);
    store.upsert_comments(&rows).await.unwrap();
    let mut elsewhere = deletion(&rows[0]);
    elsewhere.offset_ms = 5;
    assert_eq!(store.delete_comments(&[elsewhere]).await.unwrap(), 1);
    assert!(store.read_segment(&v1, 1).await.unwrap().is_empty());
    assert_eq!(store.count(&v1).await.unwrap(), 3);
}

/// Every upsert that adds a row and every deletion that removes one gives a
/// version never seen before for the VOD.
pub async fn the_version_changes_with_every_change_and_never_repeats(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    let rows = rows(&v1, &v2);
    let mut seen = vec![store.version(&v1).await.unwrap()];
    let mut step = |v: VodVersion| {
        assert!(!seen.contains(&v), "{v:?} seen before: {seen:?}");
        seen.push(v);
    };
    store.upsert_comments(&rows[0..1]).await.unwrap();
    step(store.version(&v1).await.unwrap());
    store.delete_comments(&[deletion(&rows[0])]).await.unwrap();
    step(store.version(&v1).await.unwrap());
    store.upsert_comments(&rows[1..2]).await.unwrap();
    step(store.version(&v1).await.unwrap());
    store.upsert_comments(&rows[2..4]).await.unwrap();
    step(store.version(&v1).await.unwrap());
    store.delete_comments(&[deletion(&rows[2])]).await.unwrap();
    step(store.version(&v1).await.unwrap());
    assert_eq!(seen.last().unwrap().count, store.count(&v1).await.unwrap());
    assert_ne!(
        VodVersion {
            count: 1,
            deleted: 12
        }
        .token(),
        VodVersion {
            count: 11,
            deleted: 2
        }
        .token()
    );
}

/// `segments` lists the segments holding comments, ascending, gaps left out.
pub async fn segments_are_those_holding_comments(store: &dyn ArchiveStore) {
    let (v1, v2) = (unique("v"), unique("w"));
    let mut rows = rows(&v1, &v2);
    rows.push(comment(60, &v1, 5 * 360_000 + 1, Kind::Comment));
    store.upsert_comments(&rows).await.unwrap();
    assert_eq!(store.segments(&v1).await.unwrap(), vec![0, 1, 5]);
    assert_eq!(store.segments(&v2).await.unwrap(), vec![0]);
    assert!(store.segments(&unique("none")).await.unwrap().is_empty());
}

/// A segment whose every comment was deleted is left out of `segments` and is
/// not `last_segment`; once every comment of the VOD is deleted it has none.
pub async fn a_segment_whose_comments_were_all_deleted_is_neither_listed_nor_last(
    store: &dyn ArchiveStore,
) {
    let (v1, v2) = (unique("v"), unique("w"));
    let rows = rows(&v1, &v2);
    store.upsert_comments(&rows).await.unwrap();
    // Segment 1 of v1 holds only comment 30.
    assert_eq!(
        store.delete_comments(&[deletion(&rows[0])]).await.unwrap(),
        1
    );
    assert_eq!(store.segments(&v1).await.unwrap(), vec![0]);
    assert_eq!(store.last_segment(&v1).await.unwrap(), Some(0));
    // Two of segment 0's three comments: it still holds one.
    let two = [deletion(&rows[1]), deletion(&rows[2])];
    assert_eq!(store.delete_comments(&two).await.unwrap(), 2);
    assert_eq!(store.last_segment(&v1).await.unwrap(), Some(0));
    assert_eq!(
        store.delete_comments(&[deletion(&rows[3])]).await.unwrap(),
        1
    );
    assert!(store.segments(&v1).await.unwrap().is_empty());
    assert_eq!(store.last_segment(&v1).await.unwrap(), None);
    // The other VOD keeps its segment.
    assert_eq!(store.segments(&v2).await.unwrap(), vec![0]);
    assert_eq!(store.last_segment(&v2).await.unwrap(), Some(0));
}

/// A reachable store says so.
pub async fn reports_ready(store: &dyn ArchiveStore) {
    assert!(store.ready().await);
}
