//! Cursor polling under concurrent load: 1,000 comments from several users, all
//! read back by following the cursor, none missing, none repeated.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_comments_are_read_back_by_cursor_polling() {
    // Viewers get room for 100 each; service users are exempt anyway.
    let app = spawn_app(&[
        ("DANMAKU_LIMITS__USER_PER_SEC", "1000"),
        ("DANMAKU_LIMITS__USER_BURST", "1000"),
    ])
    .await;
    let room = "poll-1000";
    const TOTAL: usize = 1000;
    const LIMIT: u32 = 200;

    // The cursor of the empty room, taken before anything is sent.
    let first = app.poll(room, None, None, None).await;
    assert_eq!(
        first["items"].as_array().unwrap().len(),
        0,
        "a new room has no recent items: {first}"
    );
    let start = first["cursor"].as_str().unwrap().to_string();

    let mut senders = Vec::new();
    for u in 0..10 {
        let role = if u < 5 { "service" } else { "viewer" };
        let user = format!("poller-{u}");
        senders.push((user.clone(), app.token(&user, role).await));
    }

    let app_ref = &app;
    let senders_ref = &senders;
    let began = Instant::now();
    let results: Vec<(String, String, String)> = futures::stream::iter(0..TOTAL)
        .map(|i| async move {
            let (user, token) = &senders_ref[i % senders_ref.len()];
            let text = format!("poll-{i}");
            let id = app_ref.send_ok(token, room, json!({ "text": text })).await;
            (id, user.clone(), text)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    eprintln!("1000 sends took {:?}", began.elapsed());

    let mut sent: HashMap<String, (String, String)> = HashMap::new();
    for (id, user, text) in results {
        assert!(
            sent.insert(id.clone(), (user, text)).is_none(),
            "two 202 answers carried the same id {id}"
        );
    }
    let expected: HashSet<String> = sent.keys().cloned().collect();

    let (items, cursor) = app
        .poll_until(room, &start, LIMIT, &expected, Duration::from_secs(20))
        .await;
    let ids = ids_of(&items);
    let got: HashSet<String> = ids.iter().cloned().collect();
    let missing: Vec<&String> = expected.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of {TOTAL} accepted comments never came back by polling within 20 s, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_no_duplicates(&ids, "polling");
    let extra: Vec<&String> = got.difference(&expected).collect();
    assert!(
        extra.is_empty(),
        "polling returned ids never sent: {extra:?}"
    );

    for item in &items {
        assert_item_shape(item, room);
        let (user, text) = &sent[item["id"].as_str().unwrap()];
        assert_eq!(item["user"], user.as_str(), "{item}");
        assert_eq!(item["text"], text.as_str(), "{item}");
    }

    // Reading again from the same cursor gives the same sequence; a full page with
    // more behind it asks for the next poll at once (next_poll_ms 0).
    let mut again: Vec<serde_json::Value> = Vec::new();
    let mut c = start.clone();
    for _ in 0..100 {
        let page = app.poll(room, Some(&c), Some(LIMIT), Some(0)).await;
        let page_items = page["items"].as_array().unwrap().clone();
        c = page["cursor"].as_str().unwrap().to_string();
        if page_items.is_empty() {
            break;
        }
        again.extend(page_items);
        if again.len() < TOTAL {
            assert_eq!(
                page["next_poll_ms"],
                0,
                "API.md: if more remain, next_poll_ms is 0 (after {} of {TOTAL} items)",
                again.len()
            );
        }
    }
    assert_eq!(
        ids_of(&again),
        ids,
        "two reads from the same cursor must return the same items in the same order"
    );

    // Without a cursor: the most recent items, i.e. a tail of the room's sequence,
    // and a cursor at the end.
    let recent = app.poll(room, None, None, None).await;
    let recent_ids = ids_of(recent["items"].as_array().unwrap());
    assert!(
        recent_ids.len() <= ids.len() && ids.ends_with(&recent_ids),
        "polling without a cursor must return the most recent items (a tail of the room, \
         in order); got {} items, first {:?}",
        recent_ids.len(),
        recent_ids.first()
    );
    let recent_cursor = recent["cursor"].as_str().unwrap();
    let behind = app
        .poll(room, Some(recent_cursor), Some(LIMIT), Some(0))
        .await;
    assert_eq!(
        behind["items"].as_array().unwrap().len(),
        0,
        "items after the cursor of a cursor-less poll: {behind}"
    );

    // Nothing else behind the last cursor.
    let after = app.poll(room, Some(&cursor), Some(LIMIT), Some(0)).await;
    assert_eq!(
        after["items"].as_array().unwrap().len(),
        0,
        "items after the final cursor: {after}"
    );

    // Operations endpoints answer, and metrics carry no per-room or per-user labels.
    app.get("/readyz").await.expect_status(200, "GET /readyz");
    let metrics = app.get("/metrics").await;
    metrics.expect_status(200, "GET /metrics");
    assert!(
        metrics.text.contains("# TYPE"),
        "GET /metrics must be Prometheus text: {}",
        truncate(&metrics.text, 300)
    );
    assert!(
        !metrics.text.contains(room) && !metrics.text.contains("poller-"),
        "metrics must not be labelled per room or user"
    );

    // Long poll: held while nothing comes, answered as soon as an item arrives.
    let began = Instant::now();
    let idle = app.poll(room, Some(&cursor), Some(LIMIT), Some(1000)).await;
    let held = began.elapsed();
    assert!(
        idle["items"].as_array().unwrap().is_empty() && held >= Duration::from_millis(900),
        "wait_ms=1000 with nothing new must hold ~1 s and return no items; held {held:?}: {idle}"
    );
    let began = Instant::now();
    let (woken, late_id) = tokio::join!(
        app.poll(room, Some(&cursor), Some(LIMIT), Some(10_000)),
        async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            app.send_text(&senders[0].1, room, "wake up").await
        }
    );
    let waited = began.elapsed();
    assert_eq!(
        ids_of(woken["items"].as_array().unwrap()),
        vec![late_id],
        "the long poll must return the new item: {woken}"
    );
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_millis(3000),
        "a long poll must return soon after an item arrives (sent at ~400 ms), returned after {waited:?}"
    );
}
