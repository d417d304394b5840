//! Issue 13's attacks on the replay API, one test each, asserting the bound
//! (rows read, store loads, permits), not timings:
//!
//! - range pages on a 100,000-comment segment read O(page) rows, and paging
//!   through it with `after=` returns every comment once, in order, from one
//!   store read;
//! - distinct DPlayer `max` values share one read of the recording;
//! - cold loads past `replay.max_cold_loads` get `503 unavailable` + `Retry-After`;
//! - segment numbers are canonical only;
//! - an ended VOD's segments are `immutable` only once its slices are archived;
//! - DPlayer's POST checks a header token before reading the body;
//! - numbers out of range get their field's code, arrays are not objects.

mod common;

use axum::body::Body;
use axum::http::Request;
use bytes::Bytes;
use common::*;
use danmaku_core::auth::Role;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::{ArchivedComment, SliceItem, SliceStore};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const SEGMENT_COMMENTS: u64 = 100_000;

/// `n` comments of `vod` at offsets `first_offset + i * step`, ids from `first_id`.
fn rows(vod: &str, first_id: u64, n: u64, first_offset: i64, step: i64) -> Vec<ArchivedComment> {
    (0..n)
        .map(|i| {
            let id = first_id + i;
            let offset = first_offset + i as i64 * step;
            ArchivedComment {
                vod: vod.into(),
                offset_ms: offset,
                item: Danmaku {
                    id,
                    room: "r".into(),
                    user: format!("u{}", id % 97),
                    ts_ms: 1_764_000_000_000 + offset,
                    kind: if id.is_multiple_of(50) {
                        Kind::Gift
                    } else {
                        Kind::Comment
                    } as i32,
                    mode: Mode::Scroll as i32,
                    color: 0xFFFFFF,
                    text: format!("comment {id}"),
                    vod: Some(vod.into()),
                    offset_ms: Some(offset),
                    ..Default::default()
                },
            }
        })
        .collect()
}

fn ids(items: &Value) -> Vec<u64> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pages_on_a_huge_segment_read_only_what_they_return() {
    let node = Arc::new(node().await);
    node.store.slow_ms.store(0, Ordering::SeqCst);
    node.session("big", "r", 600_000, true).await;
    // Segment 0 holds 100,000 comments, 3 ms apart.
    node.ctx
        .archive
        .upsert_comments(&rows("big", 1, SEGMENT_COMMENTS, 0, 3))
        .await
        .unwrap();
    let rows_served = || node.replay.range_rows_read();

    // limit=1: one comment and a next token. The first page loads the segment once.
    let first = node.get("/v1/vods/big/danmaku?limit=1", &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(ids(&first.json["items"]), vec![1]);
    assert_eq!(node.reads(), 1);
    assert_eq!(
        node.store.rows_read.load(Ordering::SeqCst),
        SEGMENT_COMMENTS as usize
    );
    assert!(rows_served() <= 2, "{} rows for a page of 1", rows_served());

    // 64 more limit=1 pages, 16 of them at once: no store read, O(1) rows each.
    let before = rows_served();
    let mut next = first.json["next"].as_str().unwrap().to_string();
    for expect in 2..=49u64 {
        let page = node
            .get(&format!("/v1/vods/big/danmaku?limit=1&after={next}"), &[])
            .await;
        assert_eq!(ids(&page.json["items"]), vec![expect]);
        next = page.json["next"].as_str().unwrap().to_string();
    }
    let tasks: Vec<_> = (0..16)
        .map(|k| {
            let node = node.clone();
            tokio::spawn(async move {
                let from = 150_000 + k * 3;
                let page = node
                    .get(&format!("/v1/vods/big/danmaku?from_ms={from}&limit=1"), &[])
                    .await;
                (k, ids(&page.json["items"]))
            })
        })
        .collect();
    for t in tasks {
        let (k, got) = t.await.unwrap();
        assert_eq!(got, vec![50_001 + k as u64]);
    }
    let pages = 48 + 16;
    assert!(
        rows_served() - before <= 2 * pages,
        "{} rows for {pages} pages of 1",
        rows_served() - before
    );
    assert_eq!(node.reads(), 1, "pages never read the store again");

    // Paging through the whole segment with after=: every comment once, in
    // order, O(n) rows in all.
    let before = rows_served();
    let mut all = Vec::with_capacity(SEGMENT_COMMENTS as usize);
    let mut after = String::new();
    let mut pages = 0u64;
    loop {
        let page = node
            .get(
                &format!("/v1/vods/big/danmaku?from_ms=0&to_ms=360000&limit=5000&after={after}"),
                &[],
            )
            .await;
        assert_eq!(page.status, 200);
        all.extend(ids(&page.json["items"]));
        pages += 1;
        match page.json["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    assert_eq!(all, (1..=SEGMENT_COMMENTS).collect::<Vec<_>>());
    assert_eq!(pages, 20);
    assert!(rows_served() - before <= SEGMENT_COMMENTS + pages);
    assert_eq!(node.reads(), 1);
    // A sub-range in the middle: only its rows.
    let before = rows_served();
    let mid = node
        .get("/v1/vods/big/danmaku?from_ms=200001&to_ms=200010", &[])
        .await;
    assert_eq!(ids(&mid.json["items"]), vec![66_668, 66_669, 66_670]);
    assert_eq!(rows_served() - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_rows_leave_once_unused() {
    let node = node_with(None, None, None, |s| s.replay.rows_idle_secs = 1).await;
    node.session("idle", "r", 600_000, true).await;
    node.ctx
        .archive
        .upsert_comments(&rows("idle", 1, 1_000, 0, 300))
        .await
        .unwrap();
    let page = node.get("/v1/vods/idle/danmaku?limit=1", &[]).await;
    assert_eq!(ids(&page.json["items"]), vec![1]);
    // The cache accounts for them at its next maintenance (the sweeper's, each
    // second here)...
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while node.replay.decoded_bytes() < 100_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rows are not kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and, nobody asking again, drops them within seconds all the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while node.replay.decoded_bytes() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rows are still held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_dplayer_maxima_share_one_read_of_the_recording() {
    let node = Arc::new(node().await);
    node.store.slow_ms.store(50, Ordering::SeqCst);
    node.session("dpm", "r", 1_200_000, true).await;
    // Three segments of 400 comments (every 50th a gift).
    for seg in 0..3 {
        node.ctx
            .archive
            .upsert_comments(&rows("dpm", 1 + seg * 400, 400, seg as i64 * 360_000, 900))
            .await
            .unwrap();
    }
    let whole = node.get("/dplayer/v3/?id=dpm", &[]).await;
    assert_eq!(whole.json["data"].as_array().unwrap().len(), 1200);
    assert_eq!(node.reads(), 3, "one read per segment");
    // 40 distinct maxima, 20 of them at once: no further store read.
    for max in 1..=20 {
        let r = node
            .get(&format!("/dplayer/v3/?id=dpm&max={max}"), &[])
            .await;
        let data = r.json["data"].as_array().unwrap();
        assert_eq!(data.len(), max, "{}", r.text);
        // Gifts first (every 50th id: 24 in all), so small maxima hold gifts only.
        let gift = |e: &Value| {
            let id: u64 = e[4].as_str().unwrap()["comment ".len()..].parse().unwrap();
            id.is_multiple_of(50)
        };
        assert!(data.iter().all(gift), "{}", r.text);
    }
    let tasks: Vec<_> = (21..=40)
        .map(|max| {
            let node = node.clone();
            tokio::spawn(async move {
                let r = node
                    .get(&format!("/dplayer/v3/?id=dpm&max={max}"), &[])
                    .await;
                (max, r.json["data"].as_array().map_or(0, Vec::len))
            })
        })
        .collect();
    for t in tasks {
        let (max, len) = t.await.unwrap();
        assert_eq!(len, max);
    }
    assert_eq!(node.reads(), 3, "every max is cut from the one read");
    assert_eq!(
        node.store.rows_read.load(Ordering::SeqCst),
        1200,
        "the recording was read once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_loads_past_the_bound_get_503_with_retry_after() {
    let node = node_with(None, None, None, |s| {
        s.replay.max_cold_loads = 1;
        s.replay.cold_load_wait_ms = 0;
    })
    .await;
    for vod in ["a", "b"] {
        node.session(vod, "r", 600_000, true).await;
        node.archive(vod, &[plain(1, 1_000), plain(2, 2_000)]).await;
    }
    // One slow load holds the only permit...
    node.store.slow_ms.store(1_000, Ordering::SeqCst);
    let node = Arc::new(node);
    let holder = {
        let node = node.clone();
        tokio::spawn(async move { node.get("/v1/vods/a/segments/0", &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so every other load is refused at once, with Retry-After.
    for path in [
        "/v1/vods/b/segments/0",
        "/v1/vods/b/danmaku?limit=1",
        "/v1/vods/b/bilibili.xml",
    ] {
        let r = node.get(path, &[]).await;
        assert_eq!(r.status, 503, "{path}: {}", r.text);
        assert_eq!(r.json["error"]["code"], "unavailable", "{path}");
        assert_eq!(header(&r, "retry-after"), "1", "{path}");
    }
    let dp = node.get("/dplayer/v3/?id=b", &[]).await;
    assert_eq!(dp.status, 200, "DPlayer errors are HTTP 200");
    assert_eq!(dp.json["error"], "unavailable", "{}", dp.text);
    assert_eq!(header(&dp, "retry-after"), "1");
    // Requests coalesced onto the load in flight need no permit of their own.
    let same = node.get("/v1/vods/a/segments/0", &[]).await;
    assert_eq!(same.status, 200);
    let held = holder.await.unwrap();
    assert_eq!(held.status, 200);
    assert_eq!(node.reads(), 1, "refused requests read nothing");
    // Once the permit is back, the refused load goes through.
    node.store.slow_ms.store(0, Ordering::SeqCst);
    let b = node.get("/v1/vods/b/segments/0", &[]).await;
    assert_eq!(b.status, 200);
    assert_eq!(b.json["items"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_cold_load_gets_the_next_permit() {
    let node = node_with(None, None, None, |s| {
        s.replay.max_cold_loads = 1;
        s.replay.cold_load_wait_ms = 5_000;
    })
    .await;
    for vod in ["a", "b"] {
        node.session(vod, "r", 600_000, true).await;
        node.archive(vod, &[plain(1, 1_000)]).await;
    }
    node.store.slow_ms.store(300, Ordering::SeqCst);
    let node = Arc::new(node);
    let tasks: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|vod| {
            let node = node.clone();
            tokio::spawn(async move { node.get(&format!("/v1/vods/{vod}/segments/0"), &[]).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(node.reads(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_numbers_are_canonical_only() {
    let node = node().await;
    node.session("canon", "r", 900_000, true).await;
    node.archive("canon", &[plain(1, 400_000)]).await;
    let one = node.get("/v1/vods/canon/segments/1", &[]).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json["segment"], 1);
    assert_eq!(one.json["items"].as_array().unwrap().len(), 1);
    for alias in [
        "+1",
        "01",
        "001",
        "%201",
        "1%20",
        "1.0",
        "1e0",
        "0x1",
        "-0",
        "4294967296",
        "18446744073709551617",
    ] {
        let r = node
            .get(&format!("/v1/vods/canon/segments/{alias}"), &[])
            .await;
        assert_eq!(r.status, 400, "{alias}: {}", r.text);
        assert_eq!(r.json["error"]["code"], "invalid_offset", "{alias}");
    }
    assert_eq!(node.reads(), 1, "aliases never reach the store");
}

/// Comments of `room` as the live writer stores them: `(seq, ts_ms)`.
async fn hold(node: &Node, room: &str, items: &[(u64, i64)]) {
    let items: Vec<SliceItem> = items
        .iter()
        .map(|(seq, ts)| SliceItem {
            seq: *seq,
            ts_ms: *ts,
            data: Danmaku {
                id: *seq,
                room: room.into(),
                user: "u".into(),
                ts_ms: *ts,
                text: format!("held {seq}"),
                ..Default::default()
            }
            .encode_bytes(),
        })
        .collect();
    node.ctx
        .slices
        .append(room, 10_000, 300_000, &items)
        .await
        .unwrap();
}

/// What the archiver does up to completing its batches, for the comments of
/// `vod` (started at `start`): claims the due slices and stores the comments in
/// the ArchiveStore. Returns the batches to complete.
async fn claim_and_store(node: &Node, vod: &str, start: i64, end: i64) -> Vec<u64> {
    let slices: &dyn SliceStore = node.ctx.slices.as_ref();
    let mut batches = Vec::new();
    while let Some(batch) = slices
        .claim_batch(danmaku_core::now_ms(), 64, Duration::from_secs(30))
        .await
        .unwrap()
    {
        let rows: Vec<ArchivedComment> = batch
            .items
            .iter()
            .filter(|(_, i)| (start..=end).contains(&i.ts_ms))
            .map(|(_, i)| {
                let mut item = Danmaku::decode_bytes(&i.data).unwrap();
                item.vod = Some(vod.into());
                item.offset_ms = Some(i.ts_ms - start);
                ArchivedComment {
                    vod: vod.into(),
                    offset_ms: i.ts_ms - start,
                    item,
                }
            })
            .collect();
        node.ctx.archive.upsert_comments(&rows).await.unwrap();
        batches.push(batch.id);
    }
    batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_vod_is_immutable_only_once_its_slices_are_archived() {
    let node = node_with(None, None, None, |s| s.replay.meta_ttl_ms = 0).await;
    let session = node.session("st", "room-st", 60_000, false).await;
    let start = session.started_at;
    // Three comments of the session, still hot (no archiver runs here).
    hold(
        &node,
        "room-st",
        &[
            (1, start + 30_000),
            (2, start + 40_000),
            (3, start + 50_000),
        ],
    )
    .await;
    let live = node.get("/v1/vods/st/segments/0", &[]).await;
    assert_eq!(header(&live, "cache-control"), "public, max-age=5");

    let svc = node.token("svc", Role::Service);
    let ended = node.post("/v1/vods/st/end", Some(&svc), json!({})).await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    let end = ended.json["ended_at"].as_i64().unwrap();
    // Ended, but its comments are not archived yet: not immutable (its body is
    // still empty, which a CDN must not keep for a year).
    for _ in 0..3 {
        let r = node.get("/v1/vods/st/segments/0", &[]).await;
        assert_eq!(r.json["items"], json!([]));
        assert_eq!(header(&r, "cache-control"), "public, max-age=5");
    }
    // Claimed and stored, but the batch not completed (an archiver between its
    // ArchiveStore write and completing, or one that crashed there): not yet.
    let batches = claim_and_store(&node, "st", start, end).await;
    assert!(!batches.is_empty());
    let r = node.get("/v1/vods/st/segments/0", &[]).await;
    assert_eq!(header(&r, "cache-control"), "public, max-age=5");
    for id in batches {
        node.ctx.slices.complete_batch(id).await.unwrap();
    }
    let r = node.get(&node.versioned("st", 0).await, &[]).await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 3, "{}", r.text);
    assert_eq!(
        header(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let plain = node.get("/v1/vods/st/segments/0", &[]).await;
    assert_eq!(header(&plain, "cache-control"), "public, max-age=10");

    // Comments of the room outside the session (before its start, or after its
    // end: the next session's) do not hold it back.
    let s2 = node.session("st2", "room-b", 60_000, true).await;
    let end2 = s2.ended_at.unwrap();
    hold(
        &node,
        "room-b",
        &[(1, s2.started_at - 5_000), (2, end2 + 1), (3, end2 + 500)],
    )
    .await;
    let r = node.get("/v1/vods/st2/segments/0?v=0.0.4mo", &[]).await;
    assert_eq!(
        header(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    // One of the session's own comments held, even behind others: not yet.
    let s3 = node.session("st3", "room-c", 60_000, true).await;
    hold(
        &node,
        "room-c",
        &[(1, s3.started_at - 5_000), (2, s3.started_at + 1_000)],
    )
    .await;
    let r = node.get("/v1/vods/st3/segments/0", &[]).await;
    assert_eq!(header(&r, "cache-control"), "public, max-age=5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dplayer_post_checks_a_header_token_before_the_body() {
    let node = node().await;
    node.session("dpt", "room-t", 30_000, true).await;
    // A body that never arrives: only a check before reading it can answer.
    let never = futures::stream::pending::<Result<Bytes, std::io::Error>>();
    let req = Request::post("/dplayer/v3/")
        .header("content-type", "application/json")
        .header("authorization", "Bearer forged")
        .body(Body::from_stream(never))
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), node.call(req))
        .await
        .expect("answered without reading the body");
    assert_eq!(r.status, 200);
    assert_eq!(r.json["code"], 1);
    assert_eq!(r.json["error"], "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_out_of_range_get_their_fields_code_and_arrays_are_not_objects() {
    let node = node().await;
    node.session("num", "room-n", 30_000, true).await;
    let t = node.token("nina", Role::Viewer);
    let svc = node.token("svc", Role::Service);
    let dp =
        |extra: &str| format!(r#"{{"token": "{t}", "id": "num", "time": 1, "text": "x"{extra}}}"#);
    for (body, code) in [
        (dp(r#", "color": 1e400"#), "invalid_color"),
        (dp(r#", "color": -1e999"#), "invalid_color"),
        (dp(r#", "type": 1e400"#), "invalid_mode"),
        (
            format!(r#"{{"token": "{t}", "id": "num", "time": 1e400, "text": "x"}}"#),
            "invalid_offset",
        ),
        (
            format!(r#"[{{"token": "{t}", "id": "num", "time": 1}}]"#),
            "invalid_json",
        ),
    ] {
        let r = node.post_raw("/dplayer/v3/", None, &body).await;
        assert_eq!(r.json["error"], code, "{body}: {}", r.text);
    }
    for (body, code) in [
        (
            r#"{"text": "x", "offset_ms": 1, "color": 1e400}"#,
            "invalid_color",
        ),
        (r#"{"text": "x", "offset_ms": 1e400}"#, "invalid_offset"),
        (
            r#"{"text": "x", "offset_ms": 1, "mode": 1e400}"#,
            "invalid_mode",
        ),
        (r#"[{"text": "x", "offset_ms": 1}]"#, "invalid_json"),
        (r#"["x", 1]"#, "invalid_json"),
    ] {
        let r = node.post_raw("/v1/vods/num/danmaku", Some(&t), body).await;
        assert_eq!(
            (r.status.as_u16(), r.json["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {}",
            r.text
        );
    }
    for (body, code) in [
        (r#"{"latency_ms": 1e400}"#, "invalid_offset"),
        (r#"{"latency_ms": 1e30}"#, "invalid_offset"),
        (r#"["v-array", 5]"#, "invalid_json"),
    ] {
        let r = node
            .post_raw("/v1/rooms/room-n/sessions", Some(&svc), body)
            .await;
        assert_eq!(
            (r.status.as_u16(), r.json["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {}",
            r.text
        );
    }
}
