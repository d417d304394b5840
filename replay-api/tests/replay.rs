//! The replay API in-process (embedded stores, the router called with `oneshot`):
//! segments with ETag / 304 / Cache-Control, the single-flight cold load, VOD
//! comments and the invalidation they cause in both cache tiers, the Redis tier
//! shared by two nodes (and a dead Redis), and every player format with hostile
//! text. Fixtures in `common`.

mod common;

use common::*;
use danmaku_core::auth::Role;
use danmaku_core::memory::MemoryReplayCache;
use danmaku_core::model::{Kind, Mode};
use danmaku_core::ports::ReplayCache;
use danmaku_redis::testkit::RedisServer;
use danmaku_redis::{RedisReplayCache, TieredReplayCache};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stampede_reads_the_store_once_and_hits_cost_nothing() {
    let node = node().await;
    node.session("stampede", "r", 600_000, true).await;
    let rows: Vec<_> = (1..=200).map(|i| plain(i, i as i64 * 1000)).collect();
    node.archive("stampede", &rows).await;
    let node = Arc::new(node);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.get("/v1/vods/stampede/segments/0", &[]).await
        }));
    }
    let mut etags = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["items"].as_array().unwrap().len(), 200);
        etags.insert(header(&r, "etag"));
    }
    assert_eq!(etags.len(), 1, "one body, one ETag");
    assert_eq!(node.reads(), 1, "one ArchiveStore read under the stampede");
    for _ in 0..20 {
        node.get(
            "/v1/vods/stampede/segments/0",
            &[("accept-encoding", "gzip")],
        )
        .await;
    }
    assert_eq!(node.reads(), 1, "hits do not read the store");
    // Segments beyond the recording are empty without a store read.
    let far = node.get("/v1/vods/stampede/segments/99", &[]).await;
    assert_eq!(far.status, 200);
    assert_eq!(far.json["items"], json!([]));
    assert_eq!(node.reads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_are_conditional_and_immutable_once_ended() {
    let node = node().await;
    node.session("seg", "r", 60_000, false).await;
    node.archive("seg", &[plain(1, 1_000), plain(2, 2_000)])
        .await;
    let live = node.get("/v1/vods/seg/segments/0", &[]).await;
    assert_eq!(live.status, 200);
    assert_eq!(header(&live, "cache-control"), "public, max-age=5");
    let etag = header(&live, "etag");
    assert!(etag.starts_with('"') && etag.len() == 18, "{etag}");
    let again = node
        .get("/v1/vods/seg/segments/0", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert_eq!(header(&again, "etag"), etag);
    assert!(again.text.is_empty());

    node.post(
        "/v1/vods/seg/end",
        Some(&node.token("svc", Role::Service)),
        json!({}),
    )
    .await;
    // Ended: the plain URL revalidates (API.md, Segment versions); the
    // versioned one is immutable.
    let ended = node.get("/v1/vods/seg/segments/0", &[]).await;
    assert_eq!(header(&ended, "cache-control"), "public, max-age=10");
    assert_eq!(header(&ended, "etag"), etag, "same items, same ETag");
    let versioned = node.get(&node.versioned("seg", 0).await, &[]).await;
    assert_eq!(
        header(&versioned, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&versioned, "etag"), etag);
    let gz = node
        .get("/v1/vods/seg/segments/0", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(header(&gz, "content-encoding"), "gzip");
    assert_eq!(header(&gz, "vary"), "Accept-Encoding");
    assert_eq!(header(&gz, "etag"), etag);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_period_delays_immutable() {
    let node = node_with(None, None, None, |s| s.replay.settle_secs = 3600).await;
    node.session("settle", "r", 60_000, true).await;
    let r = node.get("/v1/vods/settle/segments/0", &[]).await;
    assert_eq!(header(&r, "cache-control"), "public, max-age=5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vod_comment_invalidates_its_segment_and_changes_the_etag() {
    let node = node().await;
    node.session("post", "room-p", 600_000, true).await;
    node.archive("post", &[plain(1, 1_000), plain(2, 400_000)])
        .await;
    let before = node.get("/v1/vods/post/segments/0", &[]).await;
    let old_etag = header(&before, "etag");
    assert_eq!(before.json["items"].as_array().unwrap().len(), 1);
    let seg1 = node.get("/v1/vods/post/segments/1", &[]).await;
    let reads = node.reads();
    let old_key = "seg:v1:post:0:2.0:E:6000".to_string();
    assert!(node.ctx.cache.get(&old_key).await.is_some(), "key layout");

    let viewer = node.token("vera", Role::Viewer);
    let posted = node
        .post(
            "/v1/vods/post/danmaku",
            Some(&viewer),
            json!({"text": "<b>late</b> & 'fun' 🎉", "offset_ms": 5_000, "mode": "top"}),
        )
        .await;
    assert_eq!(posted.status, 202, "{}", posted.text);
    let id = posted.json["id"].as_str().unwrap().to_string();

    // Both tiers lost the old key; the very next request serves the comment.
    assert!(node.ctx.cache.get(&old_key).await.is_none());
    let after = node.get("/v1/vods/post/segments/0", &[]).await;
    let items = after.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", after.text);
    let mine = items.iter().find(|i| i["id"] == id.as_str()).unwrap();
    assert_eq!(mine["offset_ms"], 5_000);
    assert_eq!(mine["vod"], "post");
    assert_eq!(mine["user"], "vera");
    assert_eq!(mine["mode"], "top");
    assert_eq!(mine["text"], "<b>late</b> & 'fun' 🎉");
    let new_etag = header(&after, "etag");
    assert_ne!(new_etag, old_etag);
    assert_eq!(header(&after, "cache-control"), "public, max-age=10");
    let stale = node
        .get("/v1/vods/post/segments/0", &[("if-none-match", &old_etag)])
        .await;
    assert_eq!(stale.status, 200, "the old ETag no longer matches");
    assert!(node.reads() > reads);
    // Another segment's bytes (and ETag) are unchanged.
    let seg1_after = node.get("/v1/vods/post/segments/1", &[]).await;
    assert_eq!(header(&seg1_after, "etag"), header(&seg1, "etag"));
    // The VOD's count and the other formats see it too.
    let info = node.get("/v1/vods/post", &[]).await;
    assert_eq!(info.json["count"], 3);
    let xml = node.get("/v1/vods/post/bilibili.xml", &[]).await;
    assert!(xml.text.contains(&format!(",{id}\">")), "{}", xml.text);
    // The archiver's later upsert of the same comment changes nothing.
    let row = node.ctx.archive.read_segment("post", 0).await.unwrap();
    node.ctx.archive.upsert_comments(&row).await.unwrap();
    assert_eq!(node.ctx.archive.count("post").await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vod_comments_are_validated_like_live_ones() {
    let node = node().await;
    node.session("val", "room-v", 60_000, true).await;
    node.session("open", "room-o", 60_000, false).await;
    let viewer = node.token("vic", Role::Viewer);
    let cases: Vec<(Option<&str>, &str, Value, u16, &str)> = vec![
        (
            None,
            "val",
            json!({"text": "x", "offset_ms": 1}),
            401,
            "unauthorized",
        ),
        (
            Some("forged"),
            "val",
            json!({"text": "x", "offset_ms": 1}),
            401,
            "unauthorized",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x"}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": -1}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": "5"}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": 120_000}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "open",
            json!({"text": "x", "offset_ms": 3_600_000}),
            400,
            "invalid_offset",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "a\u{1}b", "offset_ms": 1}),
            400,
            "invalid_text",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "", "offset_ms": 1}),
            400,
            "text_empty",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "字".repeat(101), "offset_ms": 1}),
            400,
            "text_too_long",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": 1, "mode": "sideways"}),
            400,
            "invalid_mode",
        ),
        (
            Some(&viewer),
            "val",
            json!({"text": "x", "offset_ms": 1, "kind": "gift"}),
            403,
            "forbidden",
        ),
        (
            Some(&viewer),
            "nope",
            json!({"text": "x", "offset_ms": 1}),
            404,
            "not_found",
        ),
        (
            Some(&viewer),
            "bad.vod",
            json!({"text": "x", "offset_ms": 1}),
            400,
            "invalid_vod",
        ),
        (Some(&viewer), "val", json!([1]), 400, "invalid_json"),
    ];
    for (token, vod, body, status, code) in cases {
        let r = node
            .post(&format!("/v1/vods/{vod}/danmaku"), token, body.clone())
            .await;
        assert_eq!(
            (r.status.as_u16(), r.json["error"]["code"].as_str()),
            (status, Some(code)),
            "{vod} {body}: {}",
            r.text
        );
    }
    // The longest allowed text, and an offset at the very end of the recording.
    let ok = node
        .post(
            "/v1/vods/val/danmaku",
            Some(&viewer),
            json!({"text": "字".repeat(100), "offset_ms": 60_000}),
        )
        .await;
    assert_eq!(ok.status, 202, "{}", ok.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_read_hostile_text_safely() {
    let node = node().await;
    node.session("fmt", "room-f", 900_000, true).await;
    let hostile = [
        "<script>alert(1)</script>",
        "\"double\" 'single'",
        "a & b &amp; &lt; &#x41;",
        "]]> <!-- --> <![CDATA[",
        "emoji 🎉👨‍👩‍👧 好耶",
        "</d><d p=\"0,1,25,0,0,0,x,1\">x",
    ];
    let longest = "字".repeat(100);
    let mut rows: Vec<(u64, i64, &str, Kind, Mode)> = hostile
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mode = [Mode::Scroll, Mode::Top, Mode::Bottom][i % 3];
            (i as u64 + 1, i as i64 * 1_234 + 7, *t, Kind::Comment, mode)
        })
        .collect();
    rows.push((100, 400_001, longest.as_str(), Kind::Gift, Mode::Bottom));
    node.archive("fmt", &rows).await;

    // Bilibili XML.
    let xml = node.get("/v1/vods/fmt/bilibili.xml", &[]).await;
    assert_eq!(xml.status, 200);
    assert!(header(&xml, "content-type").starts_with("text/xml"));
    assert!(xml
        .text
        .starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i><d p=\""));
    assert!(xml.text.ends_with("</d></i>"));
    assert_eq!(xml.text.matches("<d p=\"").count(), rows.len());
    assert!(!xml.text.contains("<script"));
    assert!(xml.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(xml.text.contains("&amp;amp;"));
    assert!(xml.text.contains("<d p=\"400.001,4,25,1193046,"));
    assert!(xml.text.contains(&longest));
    let etag = header(&xml, "etag");
    let again = node
        .get("/v1/vods/fmt/bilibili.xml", &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);

    // DPlayer.
    let dp = node.get("/dplayer/v3/?id=fmt", &[]).await;
    assert_eq!(dp.json["code"], 0, "{}", dp.text);
    let data = dp.json["data"].as_array().unwrap();
    assert_eq!(data.len(), rows.len());
    for e in data {
        for field in [&e[3], &e[4]] {
            let s = field.as_str().unwrap();
            assert!(!s.contains(['<', '>', '"', '\'']), "{s}");
        }
    }
    assert_eq!(data[0][1], 0);
    assert_eq!(data[1][1], 1);
    assert_eq!(data[2][1], 2);
    assert_eq!(data[0][4], "&lt;script&gt;alert(1)&lt;&#x2f;script&gt;");
    assert_eq!(
        data[1][3], "&lt;Name &amp; &quot;Co&quot;&gt;",
        "names are escaped"
    );
    assert_eq!(data[0][3], "user1", "no name: the user id");
    let capped = node.get("/dplayer/v3/?id=fmt&max=2", &[]).await;
    let capped = capped.json["data"].as_array().unwrap();
    assert_eq!(capped.len(), 2);
    assert!(
        capped.iter().any(|e| e[4] == longest.as_str()),
        "gifts first under max"
    );
    let missing = node.get("/dplayer/v3/?id=nope", &[]).await;
    assert_eq!(missing.status, 200);
    assert_eq!(missing.json["code"], 1);
    assert_eq!(missing.json["error"], "not_found");
    let bad = node.get("/dplayer/v3/?id=fmt&max=lots", &[]).await;
    assert_eq!(bad.json["code"], 1);

    // Native JSON keeps the text verbatim.
    let seg = node.get("/v1/vods/fmt/segments/0", &[]).await;
    let texts: Vec<&str> = seg.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, hostile.to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dplayer_posts() {
    let node = node().await;
    node.session("dpp", "room-d", 30_000, true).await;
    let token = node.token("dora", Role::Viewer);
    let r = node
        .post(
            "/dplayer/v3/",
            None,
            json!({"token": token, "id": "dpp", "author": "someone else", "time": 12.3456,
                   "text": "<i>hi</i>", "color": "#ff0000", "type": 1}),
        )
        .await;
    assert_eq!(r.json["code"], 0, "{}", r.text);
    assert_eq!(r.json["data"]["author"], "dora");
    assert_eq!(r.json["data"]["time"], 12.346);
    // Past the end of the recording (the video file may be longer): clamped.
    let r = node
        .post(
            "/dplayer/v3",
            Some(&token),
            json!({"id": "dpp", "time": 99_999, "text": "late", "color": 255, "type": "bottom"}),
        )
        .await;
    assert_eq!(r.json["code"], 0, "{}", r.text);
    assert_eq!(r.json["data"]["time"], 30.0);
    let data = node.get("/dplayer/v3/?id=dpp", &[]).await;
    let data = data.json["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(
        data[0],
        json!([12.346, 1, 0xFF0000, "dora", "&lt;i&gt;hi&lt;&#x2f;i&gt;"])
    );
    assert_eq!(data[1], json!([30.0, 2, 255, "dora", "late"]));
    for (body, code) in [
        (
            json!({"token": "forged", "id": "dpp", "time": 1, "text": "x"}),
            "unauthorized",
        ),
        (
            json!({"token": token, "id": "dpp", "time": -1, "text": "x"}),
            "invalid_offset",
        ),
        (
            json!({"token": token, "id": "dpp", "time": 1, "text": "x\u{7}"}),
            "invalid_text",
        ),
        (
            json!({"token": token, "id": "dpp", "time": 1, "text": "x", "color": "#zzz"}),
            "invalid_color",
        ),
        (
            json!({"token": token, "id": "dpp", "time": 1, "text": "x", "type": 9}),
            "invalid_mode",
        ),
        (
            json!({"token": token, "id": "none", "time": 1, "text": "x"}),
            "not_found",
        ),
        (
            json!({"token": token, "time": 1, "text": "x"}),
            "invalid_vod",
        ),
    ] {
        let r = node.post("/dplayer/v3/", None, body.clone()).await;
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(r.json["code"], 1, "{body}: {}", r.text);
        assert!(r.json["msg"].is_string());
        assert_eq!(r.json["error"], code, "{body}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn the_redis_tier_is_shared_by_nodes_and_optional() {
    let mut redis = RedisServer::start();
    let prefix = format!("it{}:", rand_suffix());
    let remote = RedisReplayCache::connect(&redis.url(), &prefix, Duration::from_millis(300))
        .await
        .unwrap();
    let tier = |remote: RedisReplayCache| -> Arc<dyn ReplayCache> {
        Arc::new(TieredReplayCache::new(
            MemoryReplayCache::new(1 << 20),
            remote,
        ))
    };
    let a = node_with(None, None, Some(tier(remote.clone())), |s| {
        s.replay.meta_ttl_ms = 200
    })
    .await;
    // Node b shares a's stores and the Redis, with its own in-process tier.
    let b = node_with(None, Some(&a.ctx), Some(tier(remote.clone())), |_| {}).await;
    a.session("shared", "room-s", 600_000, true).await;
    a.archive("shared", &[plain(1, 1_000), plain(2, 2_000)])
        .await;
    let first = a.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(a.reads(), 1);
    let from_redis = b.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(b.reads(), 0, "b's local miss was a Redis hit");
    assert_eq!(from_redis.text, first.text);
    assert_eq!(header(&from_redis, "etag"), header(&first, "etag"));

    // A comment posted through a is served by b once b's view expires.
    let t = a.token("pat", Role::Viewer);
    let posted = a
        .post(
            "/v1/vods/shared/danmaku",
            Some(&t),
            json!({"text": "via a", "offset_ms": 3_000}),
        )
        .await;
    assert_eq!(posted.status, 202, "{}", posted.text);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let seen = b.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(
        seen.json["items"].as_array().unwrap().len(),
        3,
        "{}",
        seen.text
    );

    // Redis dies: requests still succeed, from the store.
    redis.kill();
    a.archive("shared", &[plain(9, 9_000)]).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let without = b.get("/v1/vods/shared/segments/0", &[]).await;
    assert_eq!(without.status, 200);
    assert_eq!(without.json["items"].as_array().unwrap().len(), 4);
}

fn rand_suffix() -> u64 {
    (danmaku_core::now_ms() as u64) ^ ((std::process::id() as u64) << 20)
}
