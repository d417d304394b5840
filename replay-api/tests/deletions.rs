//! Deletions, shadow bans and segment versions in replay (issue 14; API.md,
//! Moderation and Segment versions). Comments and deletion records go through
//! the real pipeline pieces: appended to the SliceStore (as the live writer and
//! the DELETE handler append them), archived by the archiver, then read by
//! every replay format; `danmaku_replay_api::forget` is what the DELETE handler
//! calls on its node.

mod common;

use common::*;
use danmaku_core::auth::Role;
use danmaku_core::model::{Danmaku, Kind, Mode};
use danmaku_core::ports::{ArchivedComment, SliceItem};
use serde_json::{json, Value};
use std::time::Duration;

/// Appends `items` to `room`'s slices after its last seq.
async fn append(node: &Node, room: &str, items: &[Danmaku]) {
    let last = node.ctx.slices.last_seq(room).await.unwrap();
    let items: Vec<SliceItem> = items
        .iter()
        .enumerate()
        .map(|(i, d)| SliceItem {
            seq: last + 1 + i as u64,
            ts_ms: d.ts_ms,
            data: d.encode_bytes(),
        })
        .collect();
    node.ctx
        .slices
        .append(room, 10_000, 300_000, &items)
        .await
        .unwrap();
}

fn comment(node: &Node, room: &str, ts_ms: i64, text: &str) -> Danmaku {
    Danmaku {
        id: node.ctx.ids.next_id(ts_ms),
        room: room.into(),
        user: "alice".into(),
        ts_ms,
        kind: Kind::Comment as i32,
        mode: Mode::Scroll as i32,
        color: 0xFFFFFF,
        text: text.into(),
        ..Default::default()
    }
}

async fn archive_everything(node: &Node) {
    danmaku_archive::drain(&node.ctx, Duration::from_secs(20))
        .await
        .unwrap();
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

/// What every format serves of `vod`, as (format, whether `needle` is in it).
async fn formats_holding(
    node: &Node,
    vod: &str,
    id: &str,
    text: &str,
) -> Vec<(&'static str, bool)> {
    let range = node.get(&format!("/v1/vods/{vod}/danmaku"), &[]).await;
    let plain = node.get(&format!("/v1/vods/{vod}/segments/0"), &[]).await;
    let versioned = node.get(&node.versioned(vod, 0).await, &[]).await;
    let xml = node.get(&format!("/v1/vods/{vod}/bilibili.xml"), &[]).await;
    let dp = node.get(&format!("/dplayer/v3/?id={vod}"), &[]).await;
    for r in [&range, &plain, &versioned, &xml, &dp] {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    vec![
        ("range", ids(&range.json["items"]).contains(&id.to_string())),
        (
            "segment",
            ids(&plain.json["items"]).contains(&id.to_string()),
        ),
        (
            "versioned segment",
            ids(&versioned.json["items"]).contains(&id.to_string()),
        ),
        ("bilibili", xml.text.contains(&format!(",{id}\">"))),
        ("dplayer", dp.text.contains(text)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_stops_serving_a_deleted_comment_and_never_a_hidden_one() {
    let node = node().await;
    let session = node.session("dv", "room-d", 600_000, false).await;
    let start = session.started_at;
    let keep = comment(&node, "room-d", start + 10_000, "keep me");
    let doomed = comment(&node, "room-d", start + 20_000, "delete me");
    let shadow = Danmaku {
        hidden: true,
        ..comment(&node, "room-d", start + 30_000, "shadow banned")
    };
    append(
        &node,
        "room-d",
        &[keep.clone(), doomed.clone(), shadow.clone()],
    )
    .await;
    let svc = node.token("svc", Role::Service);
    let ended = node.post("/v1/vods/dv/end", Some(&svc), json!({})).await;
    assert_eq!(ended.status, 200, "{}", ended.text);
    archive_everything(&node).await;

    let (did, kid) = (doomed.id.to_string(), keep.id.to_string());
    let before = formats_holding(&node, "dv", &did, "delete me").await;
    assert!(before.iter().all(|(_, held)| *held), "{before:?}");
    assert!(formats_holding(&node, "dv", &kid, "keep me")
        .await
        .iter()
        .all(|(_, held)| *held));
    let shadow_id = shadow.id.to_string();
    let hidden = formats_holding(&node, "dv", &shadow_id, "shadow banned").await;
    assert!(hidden.iter().all(|(_, held)| !*held), "{hidden:?}");
    let old_plain = node.get("/v1/vods/dv/segments/0", &[]).await;
    let old_etag = header(&old_plain, "etag");
    let old_url = node.versioned("dv", 0).await;
    let old_xml = header(&node.get("/v1/vods/dv/bilibili.xml", &[]).await, "etag");
    let info = node.get("/v1/vods/dv", &[]).await;
    assert_eq!(info.json["count"], 2, "hidden comments are not replay's");

    // The deletion record, as the DELETE handler appends it, archived.
    let offset = (doomed.ts_ms - start) as i64;
    let deletion = Danmaku {
        deletes: Some(doomed.id),
        user: "svc".into(),
        text: "spam".into(),
        kind: Kind::System as i32,
        vod: Some("dv".into()),
        offset_ms: Some(offset),
        ..comment(&node, "room-d", danmaku_core::now_ms(), "")
    };
    append(&node, "room-d", &[deletion]).await;
    archive_everything(&node).await;
    danmaku_replay_api::forget(&node.replay, "dv").await;

    let after = formats_holding(&node, "dv", &did, "delete me").await;
    assert!(after.iter().all(|(_, held)| !*held), "{after:?}");
    assert!(formats_holding(&node, "dv", &kid, "keep me")
        .await
        .iter()
        .all(|(_, held)| *held));
    // New ETags: a revalidation gets the new body, not 304.
    let plain = node
        .get("/v1/vods/dv/segments/0", &[("if-none-match", &old_etag)])
        .await;
    assert_eq!(plain.status, 200);
    assert_ne!(header(&plain, "etag"), old_etag);
    let xml = node
        .get("/v1/vods/dv/bilibili.xml", &[("if-none-match", &old_xml)])
        .await;
    assert_eq!(xml.status, 200);
    // The page's versioned URL moved: the old one redirects to the new one,
    // so a reload never shows the deleted comment from the browser's cache.
    let new_url = node.versioned("dv", 0).await;
    assert_ne!(new_url, old_url);
    let moved = node.get(&old_url, &[]).await;
    assert_eq!(moved.status, 301);
    assert_eq!(header(&moved, "location"), new_url);
    assert_eq!(node.get("/v1/vods/dv", &[]).await.json["count"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_row_in_the_store_is_never_served() {
    // Whatever put it there (an older archiver, a VOD post), replay leaves it out.
    let node = node().await;
    node.session("hv", "r", 600_000, true).await;
    node.archive("hv", &[(1, 1_000, "visible", Kind::Comment, Mode::Scroll)])
        .await;
    let hidden = ArchivedComment {
        vod: "hv".into(),
        offset_ms: 2_000,
        item: Danmaku {
            id: 2,
            room: "r".into(),
            user: "shadow".into(),
            text: "hidden text".into(),
            hidden: true,
            vod: Some("hv".into()),
            offset_ms: Some(2_000),
            ..Default::default()
        },
    };
    node.ctx.archive.upsert_comments(&[hidden]).await.unwrap();
    let held = formats_holding(&node, "hv", "2", "hidden text").await;
    assert!(held.iter().all(|(_, h)| !*h), "{held:?}");
    assert!(formats_holding(&node, "hv", "1", "visible")
        .await
        .iter()
        .all(|(_, h)| *h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_versions_are_listed_immutable_revalidated_and_redirected() {
    let node = node_with(None, None, None, |s| s.replay.meta_ttl_ms = 60_000).await;
    node.session("sv", "r", 1_200_000, false).await;
    node.archive(
        "sv",
        &[
            (1, 1_000, "a", Kind::Comment, Mode::Scroll),
            (2, 800_000, "b", Kind::Comment, Mode::Scroll),
        ],
    )
    .await;
    // Segments holding comments only: 0 and 2, one version each.
    let listed = node.segment_versions("sv").await;
    assert_eq!(
        listed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        vec![0, 2]
    );
    // Live: the live max-age everywhere, versioned or not.
    let url = node.versioned("sv", 0).await;
    let live = node.get(&url, &[]).await;
    assert_eq!(live.status, 200);
    assert_eq!(header(&live, "cache-control"), "public, max-age=5");
    assert_eq!(
        header(
            &node.get("/v1/vods/sv/segments/0", &[]).await,
            "cache-control"
        ),
        "public, max-age=5"
    );

    let svc = node.token("svc", Role::Service);
    node.post("/v1/vods/sv/end", Some(&svc), json!({})).await;
    let url = node.versioned("sv", 0).await;
    let current = node.get(&url, &[]).await;
    assert_eq!(current.status, 200);
    assert_eq!(
        header(&current, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    let etag = header(&current, "etag");
    let again = node.get(&url, &[("if-none-match", &etag)]).await;
    assert_eq!(again.status, 304);
    let plain = node.get("/v1/vods/sv/segments/0", &[]).await;
    assert_eq!(header(&plain, "cache-control"), "public, max-age=10");
    assert_eq!(header(&plain, "etag"), etag, "the same body");
    assert_eq!(
        node.get("/v1/vods/sv/segments/0", &[("if-none-match", &etag)])
            .await
            .status,
        304
    );

    // A change this node's cached view has not seen yet (made through another
    // node): GET /v1/vods/{vod} reads fresh, and the new version it lists is
    // served at once, not redirected back to the old one.
    node.archive("sv", &[(3, 2_000, "c", Kind::Comment, Mode::Scroll)])
        .await;
    let newer = node.versioned("sv", 0).await;
    assert_ne!(newer, url);
    let r = node.get(&newer, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["items"].as_array().unwrap().len(), 2);
    // A made-up version "ahead" of the store costs a read but evicts nothing.
    let reads = node.reads();
    let forged = node.get("/v1/vods/sv/segments/0?v=zz.zz.4mo", &[]).await;
    assert_eq!(forged.status, 301);
    assert_eq!(header(&forged, "location"), newer);
    assert_eq!(node.get(&newer, &[]).await.status, 200);
    assert_eq!(node.reads(), reads, "the segment body stayed cached");
    // The old version and made-up ones redirect to the current one; the token
    // of a reader who needs one is kept.
    for stale in [
        url.clone(),
        "/v1/vods/sv/segments/0?v=zz.0.0".into(),
        "/v1/vods/sv/segments/0?v=nonsense".into(),
    ] {
        let r = node.get(&stale, &[]).await;
        assert_eq!(r.status, 301, "{stale}");
        assert_eq!(header(&r, "location"), newer, "{stale}");
    }
    let r = node.get(&format!("{url}&token=a.b%2Bc"), &[]).await;
    assert_eq!(header(&r, "location"), format!("{newer}&token=a.b%2Bc"));
    // Other segments share the VOD's version.
    let two = node.versioned("sv", 2).await;
    assert!(two.ends_with(newer.rsplit_once("?v=").unwrap().1));
    assert_eq!(node.get(&two, &[]).await.status, 200);
}
