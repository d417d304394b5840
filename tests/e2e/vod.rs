//! VOD sessions: start, comments, end; within 10 s the replay range API and
//! segment 0 serve every comment at offset_ms = ts - started_at - latency_ms
//! (clamped to the recording), with ETag/304 and immutable caching once ended.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// The whole range `[0, 360000]` through the range API, following `next` with
/// pages of `limit` (or no limit).
async fn read_range(app: &TestApp, vod: &str, limit: Option<u32>) -> Vec<Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let mut path = format!("/v1/vods/{vod}/danmaku?from_ms=0&to_ms=360000");
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let resp = app.get(&path).await;
        resp.expect_status(200, &format!("GET {path}"));
        let page = &resp.json;
        let page_items = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: no items array: {page}"));
        assert!(
            page.get("next").is_some(),
            "GET {path}: the answer must have `next` (token or null): {page}"
        );
        if let Some(l) = limit {
            assert!(page_items.len() <= l as usize, "GET {path}: over limit");
        }
        items.extend(page_items.iter().cloned());
        match &page["next"] {
            Value::Null => return items,
            Value::String(next) => after = Some(next.clone()),
            other => panic!("GET {path}: next must be a string or null, got {other}"),
        }
    }
    panic!("range API never ended its `next` chain");
}

fn id_set(items: &[Value]) -> HashSet<String> {
    ids_of(items).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vod_session_replays_every_comment_at_its_offset() {
    let app = spawn_app(&[]).await;
    let room = "vod-room";
    let svc = app.token("vod-svc", "service").await;
    let latency: i64 = 1500;

    let cursor0 = app.room_cursor(room).await;
    let outside_before = app.send_text(&svc, room, "before the session").await;

    // Start.
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({ "latency_ms": latency }),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let session = resp.json.clone();
    let vod = session["vod"]
        .as_str()
        .unwrap_or_else(|| panic!("session.vod must be a string: {session}"))
        .to_string();
    assert_eq!(session["room"], room, "{session}");
    assert_eq!(session["ended_at"], Value::Null, "{session}");
    assert_eq!(session["latency_ms"], latency, "{session}");
    let started_at = session["started_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("started_at must be ms: {session}"));
    assert!(
        (started_at - now_ms()).abs() < 10_000,
        "started_at must be the server time in ms: {session}"
    );

    // Comments: some within the latency (offset clamps to 0), some after.
    let modes = ["scroll", "top", "bottom"];
    let mut sent: HashMap<String, Value> = HashMap::new();
    for i in 0..4 {
        let body =
            json!({"text": format!("early-{i}"), "mode": modes[i % 3], "color": 0x00ff00 + i});
        let id = app.send_ok(&svc, room, body.clone()).await;
        sent.insert(id, body);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for i in 0..8 {
        let body =
            json!({"text": format!("late-{i} 好耶"), "mode": modes[i % 3], "color": 0xff0000 + i});
        let id = app.send_ok(&svc, room, body.clone()).await;
        sent.insert(id, body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let vod_ids: HashSet<String> = sent.keys().cloned().collect();

    // While the VOD is live its segment is served, but not as immutable.
    let live_segment = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
    live_segment.expect_status(200, "segment 0 of a live VOD");
    let live_cache_control = live_segment.header("cache-control").unwrap_or_default();
    assert!(
        !live_cache_control.contains("immutable"),
        "a live VOD's segment must not be immutable, got Cache-Control {live_cache_control:?}"
    );
    let live_etag = live_segment.header("etag");
    let live_count = live_segment.json["items"].as_array().map(Vec::len);

    // End.
    let resp = app
        .post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await;
    resp.expect_status(200, "POST end");
    let ended_at_instant = Instant::now();
    let ended = resp.json.clone();
    assert_eq!(ended["vod"], vod.as_str(), "{ended}");
    assert_eq!(ended["started_at"], started_at, "{ended}");
    let ended_at = ended["ended_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("ended_at must be set after end: {ended}"));
    assert!(ended_at >= started_at, "{ended}");
    let outside_after = app.send_text(&svc, room, "after the session").await;

    // Each comment's ts, from the live API.
    let mut all_live: HashSet<String> = vod_ids.clone();
    all_live.insert(outside_before.clone());
    all_live.insert(outside_after.clone());
    let (live_items, _) = app
        .poll_until(room, &cursor0, 1000, &all_live, Duration::from_secs(10))
        .await;
    let ts_of: HashMap<String, i64> = live_items
        .iter()
        .map(|it| {
            (
                it["id"].as_str().unwrap().to_string(),
                it["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    for id in &all_live {
        assert!(ts_of.contains_key(id), "comment {id} never showed up live");
    }
    let duration = ended_at - started_at;
    let expected_offset =
        |id: &str| -> i64 { (ts_of[id] - started_at - latency).clamp(0, duration) };

    // Within 10 s of the end, the range API and segment 0 hold every comment.
    let deadline = ended_at_instant + Duration::from_secs(10);
    let (range, segment) = loop {
        let range = read_range(&app, &vod, None).await;
        let segment = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
        let seg_items = segment.json["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if segment.status == 200 && id_set(&range) == vod_ids && id_set(&seg_items) == vod_ids {
            break (range, segment);
        }
        if Instant::now() >= deadline {
            panic!(
                "10 s after ending the VOD: range API has {} of {} comments ({:?}), segment 0 \
                 answered {} with {} items; body: {}",
                id_set(&range).intersection(&vod_ids).count(),
                vod_ids.len(),
                ids_of(&range),
                segment.status,
                seg_items.len(),
                truncate(&segment.text, 400)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Range API: exactly the VOD's comments, ordered by (offset_ms, id), aligned.
    assert_no_duplicates(&ids_of(&range), "range API");
    let mut last: Option<(i64, u64)> = None;
    for item in &range {
        assert_item_shape(item, room);
        let id = item["id"].as_str().unwrap();
        assert_eq!(item["vod"], vod.as_str(), "replay items carry vod: {item}");
        let offset = item["offset_ms"]
            .as_i64()
            .unwrap_or_else(|| panic!("replay items carry offset_ms: {item}"));
        assert_eq!(
            offset,
            expected_offset(id),
            "offset_ms of {item}: ts {} - started_at {started_at} - latency {latency}, clamped to [0, {duration}]",
            ts_of[id]
        );
        assert_eq!(item["ts"], ts_of[id], "{item}");
        let body = &sent[id];
        assert_eq!(item["text"], body["text"], "{item}");
        assert_eq!(item["mode"], body["mode"], "{item}");
        assert_eq!(item["color"], body["color"], "{item}");
        assert_eq!(item["user"], "vod-svc", "{item}");
        let key = (offset, id.parse::<u64>().unwrap());
        if let Some(prev) = last {
            assert!(
                prev < key,
                "range API must be ordered by (offset_ms, id): {prev:?} then {key:?}"
            );
        }
        last = Some(key);
    }
    assert!(
        range.iter().any(|it| it["offset_ms"] == 0)
            && range.iter().any(|it| it["offset_ms"].as_i64() > Some(0)),
        "expected both clamped (0) and positive offsets: {range:?}"
    );
    // Paging with a small limit gives the same sequence.
    let paged = read_range(&app, &vod, Some(5)).await;
    assert_eq!(
        ids_of(&paged),
        ids_of(&range),
        "range API paged by limit=5 via `after`"
    );

    // A sub-range returns exactly the comments whose offset lies in it (bounds
    // chosen between offsets, so inclusive or exclusive ends do not matter).
    let mut offsets: Vec<i64> = range
        .iter()
        .map(|it| it["offset_ms"].as_i64().unwrap())
        .collect();
    offsets.dedup();
    if offsets.len() >= 3 {
        let from = offsets[0] + 1;
        let to = (offsets[offsets.len() - 2] + offsets[offsets.len() - 1]) / 2;
        let resp = app
            .get(&format!("/v1/vods/{vod}/danmaku?from_ms={from}&to_ms={to}"))
            .await;
        resp.expect_status(200, "sub-range");
        let want: Vec<String> = range
            .iter()
            .filter(|it| (from..=to).contains(&it["offset_ms"].as_i64().unwrap()))
            .map(|it| it["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            ids_of(resp.json["items"].as_array().unwrap()),
            want,
            "range from_ms={from}&to_ms={to} (offsets {offsets:?})"
        );
    }

    // Segment 0.
    assert_eq!(segment.json["vod"], vod.as_str(), "{}", segment.text);
    assert_eq!(segment.json["segment"], 0, "{}", segment.text);
    let seg_items = segment.json["items"].as_array().unwrap();
    assert_no_duplicates(&ids_of(seg_items), "segment 0");
    for item in seg_items {
        let id = item["id"].as_str().unwrap();
        assert_eq!(
            item["offset_ms"],
            expected_offset(id),
            "segment item {item}"
        );
        assert_eq!(item["text"], sent[id]["text"], "{item}");
    }
    let etag = segment
        .header("etag")
        .unwrap_or_else(|| panic!("segment 0 has no ETag; headers {:?}", segment.headers));
    assert_eq!(
        segment.header("cache-control").as_deref(),
        Some("public, max-age=10"),
        "Cache-Control of a plain segment URL of an ended VOD (API.md, Segment versions)"
    );
    let again = app
        .get_with(
            &format!("/v1/vods/{vod}/segments/0"),
            &[("if-none-match", &etag)],
        )
        .await;
    assert_eq!(
        again.status, 304,
        "If-None-Match with the ETag: {}",
        again.text
    );
    if let Some(live_etag) = &live_etag {
        if live_count != Some(seg_items.len()) {
            assert_ne!(
                live_etag,
                &etag,
                "segment 0 changed ({live_count:?} -> {} items) but kept its ETag",
                seg_items.len()
            );
            let stale = app
                .get_with(
                    &format!("/v1/vods/{vod}/segments/0"),
                    &[("if-none-match", live_etag.as_str())],
                )
                .await;
            assert_eq!(
                stale.status, 200,
                "If-None-Match with the ETag of the live segment, whose content has changed since"
            );
        }
    }
    let other = app
        .get_with(
            &format!("/v1/vods/{vod}/segments/0"),
            &[("if-none-match", "\"not-the-etag\"")],
        )
        .await;
    assert_eq!(other.status, 200, "If-None-Match with another ETag");

    // The session with its count.
    let info = app.get(&format!("/v1/vods/{vod}")).await;
    info.expect_status(200, "GET vod");
    assert_eq!(info.json["vod"], vod.as_str(), "{}", info.text);
    assert_eq!(info.json["room"], room, "{}", info.text);
    assert_eq!(info.json["started_at"], started_at, "{}", info.text);
    assert_eq!(info.json["ended_at"], ended_at, "{}", info.text);
    assert_eq!(info.json["latency_ms"], latency, "{}", info.text);
    assert_eq!(
        info.json["count"],
        vod_ids.len(),
        "GET /v1/vods/{{vod}} count: {}",
        info.text
    );

    // A second session; the room lists both, newest first.
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({ "vod": "vod-custom-2", "latency_ms": 0 }),
        )
        .await;
    resp.expect_status(201, "second session");
    let vod2 = resp.json["vod"].as_str().unwrap().to_string();
    assert_eq!(
        vod2, "vod-custom-2",
        "a session started with a vod id keeps it"
    );
    assert_ne!(vod2, vod, "a new session gets a new vod id");
    app.post(&format!("/v1/vods/{vod2}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "end second session");
    let list = app.get(&format!("/v1/rooms/{room}/vods")).await;
    list.expect_status(200, "GET room vods");
    let vods = list.json["vods"]
        .as_array()
        .unwrap_or_else(|| panic!("{{\"vods\": [...]}} expected: {}", list.text));
    let order: Vec<&str> = vods.iter().filter_map(|v| v["vod"].as_str()).collect();
    assert_eq!(
        order,
        vec![vod2.as_str(), vod.as_str()],
        "room's vods, newest first"
    );
    assert_eq!(vods[1]["started_at"], started_at, "{}", list.text);
    assert_eq!(vods[1]["ended_at"], ended_at, "{}", list.text);
    assert_eq!(vods[1]["room"], room, "{}", list.text);
}

/// A segment holds at most the density cap, and gifts are always kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_density_cap_keeps_every_gift() {
    let app = spawn_app(&[("DANMAKU_REPLAY__DENSITY_CAP", "10")]).await;
    let room = "dense";
    let svc = app.token("dense-svc", "service").await;
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({ "latency_ms": 0 }),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();

    let mut gifts = HashSet::new();
    let mut all = HashSet::new();
    for i in 0..45 {
        let kind = if i % 9 == 4 { "gift" } else { "comment" };
        let id = app
            .send_ok(
                &svc,
                room,
                json!({"text": format!("dense-{i}"), "kind": kind}),
            )
            .await;
        if kind == "gift" {
            gifts.insert(id.clone());
        }
        all.insert(id);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "POST end");
    let ended = Instant::now();

    let deadline = ended + Duration::from_secs(10);
    loop {
        let resp = app.get(&format!("/v1/vods/{vod}")).await;
        if resp.json["count"] == all.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "count never reached {} within 10 s of the end: {}",
            all.len(),
            resp.text
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let segment = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
    segment.expect_status(200, "segment 0");
    let items = segment.json["items"].as_array().unwrap();
    let ids: HashSet<String> = ids_of(items).into_iter().collect();
    assert!(
        items.len() <= 10,
        "density cap 10: segment 0 holds {} items",
        items.len()
    );
    assert!(
        gifts.is_subset(&ids),
        "every gift must be kept under the density cap; missing {:?}",
        gifts.difference(&ids).collect::<Vec<_>>()
    );
    assert!(ids.is_subset(&all), "segment items that were never sent");
}
