//! Live fan-out: every connected viewer receives each comment exactly once, and
//! all viewers see the same room order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_viewer_receives_every_comment_once_in_the_same_order() {
    let app = spawn_app(&[]).await;
    let room = "fanout";
    const VIEWERS: usize = 5;
    const SEQUENTIAL: usize = 30;
    const CONCURRENT: usize = 30;
    const TOTAL: usize = SEQUENTIAL + CONCURRENT;

    // Viewers join an empty room before anything is sent, so every item they get
    // comes after their hello cursor.
    let mut viewers = Vec::new();
    for _ in 0..VIEWERS {
        viewers.push(app.ws(room, None, None).await);
    }
    let started = now_ms();

    // Part 1: one sender, one comment after the other: room order = send order.
    let svc = app.token("fanout-svc", "service").await;
    let mut sent: HashMap<String, (String, String)> = HashMap::new(); // id -> (user, text)
    let mut sequential_ids = Vec::new();
    for i in 0..SEQUENTIAL {
        let text = format!("seq-{i}");
        let id = app.send_text(&svc, room, &text).await;
        sequential_ids.push(id.clone());
        sent.insert(id, ("fanout-svc".into(), text));
    }

    // Part 2: three senders at once (viewer role: 10 each is within their burst).
    let mut tokens = Vec::new();
    for u in 0..3 {
        let user = format!("fanout-v{u}");
        tokens.push((user.clone(), app.token(&user, "viewer").await));
    }
    let app_ref = &app;
    let tokens_ref = &tokens;
    let concurrent: Vec<(String, String, String)> = futures::stream::iter(0..CONCURRENT)
        .map(|i| async move {
            let (user, token) = &tokens_ref[i % tokens_ref.len()];
            let text = format!("conc-{i}");
            let id = app_ref
                .send_ok(
                    token,
                    room,
                    json!({"text": text, "mode": "top", "color": 255}),
                )
                .await;
            (id, user.clone(), text)
        })
        .buffer_unordered(10)
        .collect()
        .await;
    for (id, user, text) in concurrent {
        sent.insert(id, (user, text));
    }
    assert_eq!(sent.len(), TOTAL, "the 202 answers must carry distinct ids");
    let sent_ids: HashSet<String> = sent.keys().cloned().collect();

    for (n, viewer) in viewers.iter_mut().enumerate() {
        let complete = viewer.wait_items(TOTAL, Duration::from_secs(10)).await;
        assert!(
            complete,
            "viewer {n} got {} of {TOTAL} items within 10 s (closed: {}, gaps: {:?})",
            viewer.items.len(),
            viewer.closed,
            viewer.gaps
        );
    }
    // Anything repeated or extra would arrive right behind.
    viewers[0].settle(Duration::from_millis(700)).await;
    for viewer in viewers.iter_mut().skip(1) {
        viewer.settle(Duration::from_millis(200)).await;
    }

    let reference = viewers[0].item_ids();
    for (n, viewer) in viewers.iter().enumerate() {
        assert!(
            viewer.gaps.is_empty(),
            "viewer {n} got gaps: {:?}",
            viewer.gaps
        );
        let ids = viewer.item_ids();
        assert_no_duplicates(&ids, &format!("viewer {n}"));
        assert_eq!(
            ids.len(),
            TOTAL,
            "viewer {n} must get exactly the {TOTAL} comments sent"
        );
        let got: HashSet<String> = ids.iter().cloned().collect();
        assert_eq!(got, sent_ids, "viewer {n}: ids differ from the 202 ids");
        assert_eq!(
            ids, reference,
            "viewer {n} saw a different order than viewer 0"
        );

        let sequential_seen: Vec<&String> = ids
            .iter()
            .filter(|id| sequential_ids.contains(id))
            .collect();
        assert_eq!(
            sequential_seen,
            sequential_ids.iter().collect::<Vec<_>>(),
            "viewer {n}: comments sent one after the other must arrive in send order"
        );

        for item in &viewer.items {
            assert_item_shape(item, room);
            let id = item["id"].as_str().unwrap();
            let (user, text) = &sent[id];
            assert_eq!(item["user"], user.as_str(), "item user: {item}");
            assert_eq!(item["text"], text.as_str(), "item text: {item}");
            assert_eq!(item["kind"], "comment", "default kind: {item}");
            let ts = item["ts"].as_i64().unwrap();
            assert!(
                ts >= started - 5_000 && ts <= now_ms() + 5_000,
                "ts {ts} must be the server time of sending (ms since epoch): {item}"
            );
            if text.starts_with("seq-") {
                assert_eq!(item["mode"], "scroll", "default mode: {item}");
                assert_eq!(item["color"], WHITE, "default color: {item}");
            } else {
                assert_eq!(item["mode"], "top", "{item}");
                assert_eq!(item["color"], 255, "{item}");
            }
        }
    }

    for viewer in viewers {
        viewer.close().await;
    }
}
