//! Deletion and recall (API.md, Moderation), on one node with the embedded
//! defaults: a deletion reaches a WebSocket viewer as `{"type":"delete"}`,
//! polls after it carry `deleted` and never the comment, viewers who connect
//! or resume later never get it; who may delete; and a comment of an ended VOD
//! deleted after it was archived leaves every replay format and, once its hour
//! is compacted, Parquet (while `deletions/` records it).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

async fn delete(app: &TestApp, path: &str, token: &str, body: Body) -> Resp {
    app.request(Method::DELETE, path, Some(token), body, &[])
        .await
}

fn item_ids(v: &Value) -> HashSet<String> {
    v["items"]
        .as_array()
        .map(|a| ids_of(a).into_iter().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_comment_is_taken_back_everywhere_live() {
    let app = spawn_app(&[]).await;
    let room = "del-live";
    let admin = app.token("del-admin", "admin").await;
    let alice = app.token("alice", "viewer").await;
    let bob = app.token("bob", "viewer").await;
    let start = app.room_cursor(room).await;
    let mut viewer = app.ws(room, Some(&start), None).await;

    let a = app.send_text(&alice, room, "keep me").await;
    let b = app.send_text(&alice, room, "take me back").await;
    let c = app.send_text(&bob, room, "bob's").await;
    assert!(viewer.wait_items(3, Duration::from_secs(5)).await);

    // Who may delete: not another viewer; unknown ids are 404.
    delete(
        &app,
        &format!("/v1/rooms/{room}/danmaku/{c}"),
        &alice,
        Body::None,
    )
    .await
    .expect_error(403, "forbidden", "a viewer deleting another's comment");
    delete(
        &app,
        &format!("/v1/rooms/{room}/danmaku/123"),
        &admin,
        Body::None,
    )
    .await
    .expect_error(404, "not_found", "an id the room does not hold");
    // A viewer naming an id older than the recall window: refused unlooked.
    delete(
        &app,
        &format!("/v1/rooms/{room}/danmaku/123"),
        &alice,
        Body::None,
    )
    .await
    .expect_error(403, "forbidden", "a viewer naming an old id");
    delete(
        &app,
        &format!("/v1/rooms/other-room/danmaku/{b}"),
        &admin,
        Body::None,
    )
    .await
    .expect_error(404, "not_found", "another room's comment");

    // Alice recalls her own (within moderation.recall_secs), an admin deletes Bob's.
    let r = delete(
        &app,
        &format!("/v1/rooms/{room}/danmaku/{b}"),
        &alice,
        Body::Json(json!({"reason": "typo"})),
    )
    .await;
    r.expect_status(200, "recall");
    assert_eq!(r.json, json!({"id": b, "deleted": true}));
    let r = delete(
        &app,
        &format!("/v1/rooms/{room}/danmaku/{c}"),
        &admin,
        Body::None,
    )
    .await;
    r.expect_status(200, "admin delete");
    // Again: still 200.
    delete(
        &app,
        &format!("/v1/rooms/{room}/danmaku/{c}"),
        &admin,
        Body::None,
    )
    .await
    .expect_status(200, "deleting again");

    // The viewer gets the deletions in stream order.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut deleted: Vec<String> = Vec::new();
    while deleted.len() < 2 && Instant::now() < deadline {
        if viewer.next_frame(deadline).await.is_none() {
            break;
        }
        deleted = viewer
            .frames
            .iter()
            .filter(|f| f["type"] == "delete")
            .flat_map(|f| f["ids"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
    }
    assert_eq!(deleted, vec![b.clone(), c.clone()], "{:?}", viewer.frames);

    // A poll from before: the comments without the deleted ones, and `deleted`.
    let page = app.poll(room, Some(&start), Some(100), None).await;
    let ids = item_ids(&page);
    assert!(ids.contains(&a), "{page}");
    assert!(!ids.contains(&b) && !ids.contains(&c), "{page}");
    let listed: HashSet<String> = page["deleted"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(listed, HashSet::from([b.clone(), c.clone()]), "{page}");
    // Limit 1 from before: never stuck behind a deleted item.
    let mut cursor = start.clone();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let p = app.poll(room, Some(&cursor), Some(1), None).await;
        seen.extend(ids_of(p["items"].as_array().unwrap()));
        let next = p["cursor"].as_str().unwrap().to_string();
        if next == cursor {
            break;
        }
        cursor = next;
    }
    assert_eq!(seen, vec![a.clone()]);

    // A viewer resuming from before, and one arriving now, never get them.
    let mut late = app.ws(room, Some(&start), None).await;
    late.settle(Duration::from_millis(500)).await;
    let got: HashSet<String> = late.item_ids().into_iter().collect();
    assert_eq!(got, HashSet::from([a.clone()]), "{:?}", late.frames);
    let fresh = app.ws(room, None, None).await;
    let mut fresh = fresh;
    fresh.settle(Duration::from_millis(300)).await;
    for id in fresh.item_ids() {
        assert!(id != b && id != c, "a new viewer got a deleted comment");
    }
    let recent = app.poll(room, None, None, None).await;
    let ids = item_ids(&recent);
    assert!(!ids.contains(&b) && !ids.contains(&c), "{recent}");

    // After the recall window a viewer may no longer recall.
    drop(viewer);
    let app2 = spawn_app(&[("DANMAKU_MODERATION__RECALL_SECS", "0")]).await;
    let carol = app2.token("carol", "viewer").await;
    let d = app2.send_text(&carol, "del-late", "too late").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    delete(
        &app2,
        &format!("/v1/rooms/del-late/danmaku/{d}"),
        &carol,
        Body::None,
    )
    .await
    .expect_error(403, "forbidden", "a recall after the window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_archived_comment_leaves_every_replay_format() {
    // A short hot retention, so that the deletion's own slice is archived (and
    // `deletions/` written) within seconds rather than the default 5 minutes.
    let app = spawn_app(&[("DANMAKU_LIVE__HOT_RETENTION_MS", "5000")]).await;
    let room = "del-vod";
    let svc = app.token("del-svc", "service").await;
    let resp = app
        .post(&format!("/v1/rooms/{room}/sessions"), Some(&svc), json!({}))
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();
    let keep = app.send_text(&svc, room, "stays in the replay").await;
    let gone = app.send_text(&svc, room, "deleted after the end").await;
    app.post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "POST end");
    // Archived within 10 s of the end.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seg = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
        if item_ids(&seg.json).len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "not archived: {}", seg.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
    let etag_before = before.header("etag");

    let admin = app.token("del-admin", "admin").await;
    delete(
        &app,
        &format!("/v1/vods/{vod}/danmaku/{gone}"),
        &admin,
        Body::None,
    )
    .await
    .expect_status(200, "DELETE on the VOD");
    delete(
        &app,
        &format!("/v1/vods/{vod}/danmaku/999"),
        &admin,
        Body::None,
    )
    .await
    .expect_error(404, "not_found", "an id the VOD does not hold");

    // Within the replay nodes' view renewal (replay.meta_ttl_ms, 1 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seg = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
        let ids = item_ids(&seg.json);
        if !ids.contains(&gone) {
            assert!(ids.contains(&keep), "{}", seg.text);
            assert_ne!(seg.header("etag"), etag_before, "a new ETag");
            break;
        }
        assert!(Instant::now() < deadline, "still served: {}", seg.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let range = app
        .get(&format!("/v1/vods/{vod}/danmaku?from_ms=0&to_ms=3600000"))
        .await;
    let ids = item_ids(&range.json);
    assert!(
        ids.contains(&keep) && !ids.contains(&gone),
        "{}",
        range.text
    );
    let xml = app.get(&format!("/v1/vods/{vod}/bilibili.xml")).await;
    assert!(xml.text.contains("stays in the replay"), "{}", xml.text);
    assert!(!xml.text.contains("deleted after the end"), "{}", xml.text);
    let dp = app.get(&format!("/dplayer/v3/?id={vod}")).await;
    assert!(dp.text.contains("stays in the replay"), "{}", dp.text);
    assert!(!dp.text.contains("deleted after the end"), "{}", dp.text);

    // Parquet: the part file written before the deletion still holds the
    // comment; `deletions/` records it once the deletion's batch is archived;
    // compacting the comment's hour leaves it out and keeps the other.
    let gone_id: u64 = gone.parse().unwrap();
    let keep_id: u64 = keep.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !deletion_ids(&app.data_dir).contains(&gone_id) {
        assert!(
            Instant::now() < deadline,
            "no deletion record: {:?}",
            archive_listing(&app.data_dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        deletion_ids(&app.data_dir)
            .iter()
            .filter(|&&id| id == gone_id)
            .count(),
        1,
        "recorded once: {:?}",
        archive_listing(&app.data_dir)
    );
    let rows = read_parquet(&app.data_dir);
    let hours: HashSet<String> = rows
        .iter()
        .filter(|r| r.id == gone_id || r.id == keep_id)
        .map(|r| {
            let (date, hour) = utc_date_hour(r.ts);
            format!("{date}T{hour}")
        })
        .collect();
    assert!(
        rows.iter().any(|r| r.id == gone_id),
        "archived before its deletion, so in a part file: {rows:?}"
    );
    for hour in &hours {
        compact_cli(&app, hour).await;
    }
    let rows = read_parquet(&app.data_dir);
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    assert!(
        !ids.contains(&gone_id),
        "a deleted comment in Parquet after compaction: {rows:?}"
    );
    assert_eq!(
        ids.iter().filter(|&&id| id == keep_id).count(),
        1,
        "the other comment once after compaction: {rows:?}"
    );
    assert!(
        rows.iter().filter(|r| r.id == keep_id).all(|r| r
            .file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("compacted-")),
        "{rows:?}"
    );
}

/// `GET /v1/rooms/{room}` counts the room's WebSocket viewers and shows its
/// settings; viewers get `{"type":"online"}` when the count changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_are_counted_and_told_the_online_count() {
    let app = spawn_app(&[]).await;
    let room = "online-1";
    let info = app.get(&format!("/v1/rooms/{room}")).await;
    info.expect_status(200, "GET room");
    assert_eq!(info.json["room"], room);
    assert_eq!(info.json["online"], 0, "{}", info.text);
    assert_eq!(info.json["settings"]["muted"], false, "{}", info.text);
    assert!(info.json["settings"]["display_budget_per_sec"].is_u64());
    let mut a = app.ws(room, None, None).await;
    let mut b = app.ws(room, None, None).await;
    // Reported every second; read back within a few.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let info = app.get(&format!("/v1/rooms/{room}")).await;
        if info.json["online"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never 2: {}", info.text);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for (name, ws) in [("a", &mut a), ("b", &mut b)] {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            if ws
                .frames
                .iter()
                .any(|f| f["type"] == "online" && f["count"] == 2)
            {
                break;
            }
            assert!(
                ws.next_frame(deadline).await.is_some(),
                "viewer {name} was never told 2: {:?}",
                ws.frames
            );
        }
    }
    app.get("/v1/rooms/bad%20room")
        .await
        .expect_error(400, "invalid_room", "a bad room id");
}
