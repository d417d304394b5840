//! Resume: a viewer that reconnects with the last cursor it received gets exactly
//! what was sent while it was away, then live items, nothing repeated.

use std::time::Duration;

use crate::helpers::*;

async fn send_batch(app: &TestApp, token: &str, room: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(app.send_text(token, room, &format!("{prefix}-{i}")).await);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_with_the_last_cursor_gets_exactly_what_was_missed() {
    let app = spawn_app(&[]).await;
    let room = "resume";
    let svc = app.token("resume-svc", "service").await;

    // Viewer A stays for batch 1. Viewer B leaves right after its hello, having
    // received no batch: it resumes from the hello's cursor.
    let mut a = app.ws(room, None, None).await;
    let b = app.ws(room, None, None).await;
    let b_cursor = b.cursor.clone();
    b.close().await;

    let batch1 = send_batch(&app, &svc, room, "before", 10).await;
    assert!(
        a.wait_items(batch1.len(), Duration::from_secs(10)).await,
        "viewer A got {} of {} live items",
        a.items.len(),
        batch1.len()
    );
    a.settle(Duration::from_millis(300)).await;
    assert_eq!(a.item_ids(), batch1, "viewer A, live part");
    let last_cursor = a.cursor.clone();
    a.close().await;

    // Sent while A is away.
    let batch2 = send_batch(&app, &svc, room, "away", 15).await;

    let mut a2 = app.ws(room, Some(&last_cursor), None).await;
    assert!(
        a2.wait_items(batch2.len(), Duration::from_secs(10)).await,
        "after reconnecting with its cursor, A got {} of the {} items it missed: {:?}",
        a2.items.len(),
        batch2.len(),
        a2.frames
    );
    // Then live again.
    let batch3 = send_batch(&app, &svc, room, "after", 5).await;
    let want = batch2.len() + batch3.len();
    assert!(
        a2.wait_items(want, Duration::from_secs(10)).await,
        "A got {} of {want} items after reconnecting",
        a2.items.len()
    );
    a2.settle(Duration::from_millis(700)).await;
    let expected_a: Vec<String> = batch2.iter().chain(&batch3).cloned().collect();
    assert_no_duplicates(&a2.item_ids(), "viewer A after reconnect");
    assert_eq!(
        a2.item_ids(),
        expected_a,
        "viewer A after reconnect must get exactly the missed items, then the live ones, in order"
    );
    assert!(a2.gaps.is_empty(), "gaps: {:?}", a2.gaps);
    for item in &a2.items {
        assert_item_shape(item, room);
    }

    // B reconnects with the cursor of its hello: everything since.
    let mut b2 = app.ws(room, Some(&b_cursor), None).await;
    let expected_b: Vec<String> = batch1
        .iter()
        .chain(&batch2)
        .chain(&batch3)
        .cloned()
        .collect();
    assert!(
        b2.wait_items(expected_b.len(), Duration::from_secs(10))
            .await,
        "viewer B got {} of {} items after resuming from its hello cursor",
        b2.items.len(),
        expected_b.len()
    );
    b2.settle(Duration::from_millis(500)).await;
    assert_eq!(
        b2.item_ids(),
        expected_b,
        "viewer B resumed from its hello cursor"
    );

    // The WebSocket cursor is also a polling cursor (API.md, `gap`).
    let page = app
        .poll(room, Some(&last_cursor), Some(1000), Some(0))
        .await;
    assert_eq!(
        ids_of(page["items"].as_array().unwrap()),
        expected_a,
        "polling from A's last WebSocket cursor"
    );

    a2.close().await;
    b2.close().await;
}
