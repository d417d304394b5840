//! Sessions' `video_url` (POST, `PATCH /v1/vods/{vod}`, returned with the
//! session everywhere) and `GET /v1/vods` (live and recent sessions of every
//! room) and its cache (`replay.list_ttl_ms`), through the real router and the
//! embedded ArchiveStore.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use danmaku_core::auth::Role;
use serde_json::{json, Value};
use std::sync::Arc;

impl Node {
    /// A PATCH of `body` as it is.
    async fn patch_raw(&self, path: &str, token: Option<&str>, body: &str) -> Resp {
        let mut req = Request::patch(path).header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req.body(Body::from(body.to_string())).unwrap())
            .await
    }
}

fn code(r: &Resp) -> (u16, Option<&str>) {
    (r.status.as_u16(), r.json["error"]["code"].as_str())
}

/// A URL of exactly `len` bytes.
fn url_of(len: usize) -> String {
    let base = "https://cdn.example/";
    format!("{base}{}", "a".repeat(len - base.len()))
}

#[tokio::test]
async fn a_session_starts_with_a_video_url_and_returns_it_everywhere() {
    let node = node().await;
    let svc = node.token("site", Role::Service);
    let url = "https://cdn.example/live/r1.m3u8?sig=a&b=c";
    let r = node
        .post(
            "/v1/rooms/vu-r1/sessions",
            Some(&svc),
            json!({"vod": "vu-v1", "video_url": url}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["video_url"], url);
    let got = node.get("/v1/vods/vu-v1", &[]).await;
    assert_eq!(got.json["video_url"], url, "{}", got.text);
    let list = node.get("/v1/rooms/vu-r1/vods", &[]).await;
    assert_eq!(list.json["vods"][0]["video_url"], url, "{}", list.text);
    let ended = node.post("/v1/vods/vu-v1/end", Some(&svc), json!({})).await;
    assert_eq!(ended.json["video_url"], url, "{}", ended.text);

    // Without one (or with null), the session says so: "video_url": null.
    for (vod, body) in [
        ("vu-v2", json!({"vod": "vu-v2"})),
        ("vu-v3", json!({"vod": "vu-v3", "video_url": null})),
    ] {
        let r = node
            .post("/v1/rooms/vu-r2/sessions", Some(&svc), body)
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        assert_eq!(r.json.get("video_url"), Some(&Value::Null), "{}", r.text);
        let got = node.get(&format!("/v1/vods/{vod}"), &[]).await;
        assert_eq!(
            got.json.get("video_url"),
            Some(&Value::Null),
            "{}",
            got.text
        );
    }
}

#[tokio::test]
async fn a_bad_video_url_is_refused_when_starting() {
    let node = node().await;
    let svc = node.token("site", Role::Service);
    let long = url_of(2049);
    for bad in [
        json!("javascript:alert(1)"),
        json!("data:video/mp4;base64,AAAA"),
        json!("/relative.mp4"),
        json!("https://a.example/\"><script>"),
        json!(long),
        json!(5),
        json!(["https://a.example/v.mp4"]),
    ] {
        let r = node
            .post(
                "/v1/rooms/vu-bad/sessions",
                Some(&svc),
                json!({"video_url": bad}),
            )
            .await;
        assert_eq!(code(&r), (400, Some("invalid_json")), "{bad}: {}", r.text);
    }
    // Nothing was started.
    let list = node.get("/v1/rooms/vu-bad/vods", &[]).await;
    assert_eq!(list.json["vods"], json!([]), "{}", list.text);
}

#[tokio::test]
async fn patch_sets_changes_and_clears_the_video_url() {
    let node = node().await;
    let svc = node.token("site", Role::Service);
    let admin = node.token("root", Role::Admin);
    let viewer = node.token("alice", Role::Viewer);
    node.session("vu-p1", "vu-pr", 60_000, false).await;
    let body = r#"{"video_url": "https://cdn.example/p1.m3u8"}"#;

    // Service or admin only.
    let r = node.patch_raw("/v1/vods/vu-p1", None, body).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = node.patch_raw("/v1/vods/vu-p1", Some(&viewer), body).await;
    assert_eq!(code(&r), (403, Some("forbidden")), "{}", r.text);
    assert_eq!(
        node.get("/v1/vods/vu-p1", &[]).await.json["video_url"],
        Value::Null
    );

    let r = node.patch_raw("/v1/vods/vu-p1", Some(&svc), body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["vod"], "vu-p1");
    assert_eq!(r.json["video_url"], "https://cdn.example/p1.m3u8");
    assert_eq!(r.json["ended_at"], Value::Null);
    let got = node.get("/v1/vods/vu-p1", &[]).await;
    assert_eq!(got.json["video_url"], "https://cdn.example/p1.m3u8");

    // After the end: the recording's URL (exactly 2,048 bytes is allowed).
    node.post("/v1/vods/vu-p1/end", Some(&svc), json!({})).await;
    let max = url_of(2048);
    let r = node
        .patch_raw(
            "/v1/vods/vu-p1",
            Some(&admin),
            &json!({ "video_url": max }).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["ended_at"].is_i64(), "{}", r.text);
    let got = node.get("/v1/vods/vu-p1", &[]).await;
    assert_eq!(got.json["video_url"], max.as_str());

    // null clears it.
    let r = node
        .patch_raw("/v1/vods/vu-p1", Some(&svc), r#"{"video_url": null}"#)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json.get("video_url"), Some(&Value::Null));
    let list = node.get("/v1/rooms/vu-pr/vods", &[]).await;
    assert_eq!(list.json["vods"][0]["video_url"], Value::Null);
}

#[tokio::test]
async fn patch_refuses_bad_bodies_and_unknown_vods() {
    let node = node().await;
    let svc = node.token("site", Role::Service);
    node.session("vu-q1", "vu-qr", 60_000, false).await;
    let long = json!({ "video_url": url_of(2049) }).to_string();
    for body in [
        "",
        "{",
        "[]",
        "{}",
        r#"{"other": "https://a.example/"}"#,
        r#"{"video_url": 1}"#,
        r#"{"video_url": "ftp://a.example/v.mp4"}"#,
        r#"{"video_url": "javascript:alert(1)"}"#,
        r#"{"video_url": "https://user:pw@a.example/v.mp4"}"#,
        r#"{"video_url": "https://a.example/a b"}"#,
        long.as_str(),
    ] {
        let r = node.patch_raw("/v1/vods/vu-q1", Some(&svc), body).await;
        assert_eq!(code(&r), (400, Some("invalid_json")), "{body}: {}", r.text);
    }
    assert_eq!(
        node.get("/v1/vods/vu-q1", &[]).await.json["video_url"],
        Value::Null
    );
    let r = node
        .patch_raw(
            "/v1/vods/vu-none",
            Some(&svc),
            r#"{"video_url": "https://a.example/v.mp4"}"#,
        )
        .await;
    assert_eq!(code(&r), (404, Some("not_found")), "{}", r.text);
    let r = node
        .patch_raw(
            "/v1/vods/bad%20id",
            Some(&svc),
            r#"{"video_url": "https://a.example/v.mp4"}"#,
        )
        .await;
    assert_eq!(code(&r), (400, Some("invalid_vod")), "{}", r.text);
}

#[tokio::test]
async fn the_listing_has_live_rooms_and_recent_recordings() {
    // Sessions are made in the store directly here: no snapshot, so every
    // answer reads it (the cache has its own tests below).
    let node = node_with(None, None, None, |s| s.replay.list_ttl_ms = 0).await;
    let svc = node.token("site", Role::Service);
    let empty = node.get("/v1/vods", &[]).await;
    assert_eq!(empty.status, 200, "{}", empty.text);
    assert_eq!(empty.json, json!({"live": [], "recent": []}));

    node.session("vu-old", "vu-la", 300_000, true).await;
    node.session("vu-mid", "vu-lb", 200_000, true).await;
    node.session("vu-live-a", "vu-la", 100_000, false).await;
    node.session("vu-live-c", "vu-lc", 50_000, false).await;
    node.patch_raw(
        "/v1/vods/vu-live-c",
        Some(&svc),
        r#"{"video_url": "https://cdn.example/c.m3u8"}"#,
    )
    .await;

    let r = node.get("/v1/vods", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let vods = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| s["vod"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        vods(&r.json["live"]),
        ["vu-live-c", "vu-live-a"],
        "{}",
        r.text
    );
    assert_eq!(vods(&r.json["recent"]), ["vu-mid", "vu-old"], "{}", r.text);
    assert_eq!(r.json["live"][0]["room"], "vu-lc");
    assert_eq!(r.json["live"][0]["video_url"], "https://cdn.example/c.m3u8");
    assert_eq!(r.json["live"][1]["video_url"], Value::Null);
    assert!(r.json["recent"][0]["ended_at"].is_i64());

    // limit bounds each list; nonsense falls back to the default.
    let r = node.get("/v1/vods?limit=1", &[]).await;
    assert_eq!(vods(&r.json["live"]), ["vu-live-c"]);
    assert_eq!(vods(&r.json["recent"]), ["vu-mid"]);
    for q in [
        "limit=0",
        "limit=-1",
        "limit=x",
        "limit=99999999999999999999",
    ] {
        let r = node.get(&format!("/v1/vods?{q}"), &[]).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert!(!r.json["live"].as_array().unwrap().is_empty(), "{q}");
    }

    // A session that ends moves from live to recent.
    node.post("/v1/vods/vu-live-a/end", Some(&svc), json!({}))
        .await;
    let r = node.get("/v1/vods", &[]).await;
    assert_eq!(vods(&r.json["live"]), ["vu-live-c"]);
    assert_eq!(vods(&r.json["recent"]), ["vu-live-a", "vu-mid", "vu-old"]);
}

#[tokio::test]
async fn the_listing_needs_a_token_when_reading_does() {
    let node = node_with(None, None, None, |s| s.auth.require_token_to_read = true).await;
    let r = node.get("/v1/vods", &[]).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let t = node.token("alice", Role::Viewer);
    let r = node.get(&format!("/v1/vods?token={t}"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

fn listed(r: &Resp, list: &str) -> Vec<String> {
    r.json[list]
        .as_array()
        .unwrap_or_else(|| panic!("{}", r.text))
        .iter()
        .map(|s| s["vod"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_listing_reads_the_store_once_per_interval_for_every_limit() {
    // A TTL no test run reaches: every read below is one the cache could not save.
    let node = node_with(None, None, None, |s| s.replay.list_ttl_ms = 3_600_000).await;
    let svc = node.token("site", Role::Service);
    node.session("lc-old", "lc-a", 300_000, true).await;
    node.session("lc-live", "lc-b", 100_000, false).await;
    assert_eq!(node.replay.listing_loads(), 0);

    let first = node.get("/v1/vods", &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(listed(&first, "live"), ["lc-live"]);
    assert_eq!(listed(&first, "recent"), ["lc-old"]);
    assert_eq!(node.replay.listing_loads(), 1);

    // Any limit (and any nonsense) is answered from the same snapshot.
    for q in [
        "",
        "?limit=1",
        "?limit=100",
        "?limit=7",
        "?limit=x",
        "?limit=0",
    ] {
        let r = node.get(&format!("/v1/vods{q}"), &[]).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(listed(&r, "live"), ["lc-live"], "{q}");
    }
    assert_eq!(node.replay.listing_loads(), 1);

    // A session made behind this node's back (another node) waits for the TTL…
    node.session("lc-elsewhere", "lc-c", 50_000, false).await;
    let r = node.get("/v1/vods", &[]).await;
    assert_eq!(listed(&r, "live"), ["lc-live"]);
    assert_eq!(node.replay.listing_loads(), 1);

    // …but one started through this node shows at once (and the other with it).
    let started = node
        .post(
            "/v1/rooms/lc-d/sessions",
            Some(&svc),
            json!({"vod": "lc-here"}),
        )
        .await;
    assert_eq!(started.status, 201, "{}", started.text);
    let r = node.get("/v1/vods", &[]).await;
    assert_eq!(listed(&r, "live"), ["lc-here", "lc-elsewhere", "lc-live"]);
    assert_eq!(node.replay.listing_loads(), 2);

    // A video_url set and a session ended through this node show at once too.
    let patched = node
        .patch_raw(
            "/v1/vods/lc-here",
            Some(&svc),
            r#"{"video_url": "https://cdn.example/d.m3u8"}"#,
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    let r = node.get("/v1/vods?limit=1", &[]).await;
    assert_eq!(r.json["live"][0]["video_url"], "https://cdn.example/d.m3u8");
    assert_eq!(node.replay.listing_loads(), 3);
    let ended = node
        .post("/v1/vods/lc-live/end", Some(&svc), json!({}))
        .await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    let r = node.get("/v1/vods", &[]).await;
    assert_eq!(listed(&r, "live"), ["lc-here", "lc-elsewhere"]);
    assert_eq!(listed(&r, "recent"), ["lc-live", "lc-old"]);
    assert_eq!(node.replay.listing_loads(), 4);

    // A stampede on a stale snapshot: one read, every answer the same.
    node.post("/v1/vods/lc-elsewhere/end", Some(&svc), json!({}))
        .await;
    let answers = futures::future::join_all((0..64).map(|i| {
        let node = &node;
        async move {
            node.get(&format!("/v1/vods?limit={}", 1 + i % 3), &[])
                .await
        }
    }))
    .await;
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(listed(r, "live"), ["lc-here"]);
        assert_eq!(listed(r, "recent")[0], "lc-elsewhere");
    }
    assert_eq!(node.replay.listing_loads(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stampede_from_many_threads_reads_the_store_once() {
    let node = Arc::new(node_with(None, None, None, |s| s.replay.list_ttl_ms = 3_600_000).await);
    node.session("ls-live", "ls-a", 1_000, false).await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let node = node.clone();
            tokio::spawn(async move { node.get("/v1/vods", &[]).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(listed(&r, "live"), ["ls-live"]);
    }
    assert_eq!(node.replay.listing_loads(), 1);
}

#[tokio::test]
async fn the_listing_reads_again_once_its_ttl_passed_and_always_with_zero() {
    let node = node_with(None, None, None, |s| s.replay.list_ttl_ms = 50).await;
    node.session("lt-a", "lt-a", 1_000, false).await;
    assert_eq!(listed(&node.get("/v1/vods", &[]).await, "live"), ["lt-a"]);
    node.session("lt-b", "lt-b", 500, false).await;
    tokio::time::sleep(std::time::Duration::from_millis(120)).await;
    let r = node.get("/v1/vods", &[]).await;
    assert_eq!(listed(&r, "live"), ["lt-b", "lt-a"]);
    assert_eq!(node.replay.listing_loads(), 2);

    let off = node_with(None, None, None, |s| s.replay.list_ttl_ms = 0).await;
    for _ in 0..3 {
        off.get("/v1/vods", &[]).await;
    }
    assert_eq!(off.replay.listing_loads(), 3);
}
