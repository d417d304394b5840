//! Live fan-out: every connected viewer receives each comment exactly once, and
//! all viewers see the same room order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    // A late viewer joins (without a cursor) in the middle of this burst.
    let app_ref = &app;
    let tokens_ref = &tokens;
    let acked = AtomicUsize::new(0);
    let acked_ref = &acked;
    let sends = futures::stream::iter(0..CONCURRENT)
        .map(|i| async move {
            let (user, token) = &tokens_ref[i % tokens_ref.len()];
            let text = format!("conc-{i}");
            tokio::time::sleep(Duration::from_millis(15)).await;
            let id = app_ref
                .send_ok(
                    token,
                    room,
                    json!({"text": text, "mode": "top", "color": 255}),
                )
                .await;
            acked_ref.fetch_add(1, Ordering::SeqCst);
            (id, user.clone(), text)
        })
        .buffer_unordered(3)
        .collect::<Vec<(String, String, String)>>();
    let late_join = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::SeqCst) < CONCURRENT / 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        app_ref.ws(room, None, None).await
    };
    let (concurrent, mut late) = tokio::join!(sends, late_join);
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

    // Polling from a viewer's hello cursor gives the same items in the same order.
    let hello0 = viewers[0].hello["cursor"].as_str().unwrap().to_string();
    let page = app.poll(room, Some(&hello0), Some(1000), Some(0)).await;
    assert_eq!(
        ids_of(page["items"].as_array().unwrap()),
        reference,
        "polling from viewer 0's hello cursor vs what its WebSocket delivered"
    );

    // The late viewer: what it got (recent items, then live) is a hole-free tail
    // of the room's order, and exactly what polling from its hello cursor gives.
    assert!(
        late.wait_items(1, Duration::from_secs(5)).await,
        "the late viewer got nothing"
    );
    late.settle(Duration::from_millis(500)).await;
    let late_ids = late.item_ids();
    assert_no_duplicates(&late_ids, "late viewer");
    assert!(
        reference.ends_with(&late_ids),
        "a viewer joining mid-burst must get a contiguous tail of the room's order \
         (no holes, no repeats); got {} items: {:?}\nroom order: {:?}",
        late_ids.len(),
        late_ids,
        reference
    );
    let hello_cursor = late.hello["cursor"].as_str().unwrap().to_string();
    let page = app
        .poll(room, Some(&hello_cursor), Some(1000), Some(0))
        .await;
    assert_eq!(
        ids_of(page["items"].as_array().unwrap()),
        late_ids,
        "polling from the late viewer's hello cursor must give what its batches carried"
    );
    late.close().await;

    for viewer in viewers {
        viewer.close().await;
    }
}
