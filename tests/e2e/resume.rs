//! Resume: a viewer that reconnects with the last cursor it received gets exactly
//! what was sent while it was away, then live items, nothing repeated.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;

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

    b2.close().await;

    // Reconnecting in the middle of a concurrent burst: the replay of what was
    // missed and the live batches must join without a hole or a repeat.
    a2.settle(Duration::from_millis(100)).await;
    let cursor_d = a2.cursor.clone();
    a2.close().await;
    let mut tokens = Vec::new();
    for u in 0..4 {
        tokens.push(app.token(&format!("resume-burst-{u}"), "service").await);
    }
    const BURST: usize = 60;
    let acked = AtomicUsize::new(0);
    let (acked_ref, tokens_ref, app_ref) = (&acked, &tokens, &app);
    let sends = futures::stream::iter(0..BURST)
        .map(|i| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let id = app_ref
                .send_text(
                    &tokens_ref[i % tokens_ref.len()],
                    room,
                    &format!("burst-{i}"),
                )
                .await;
            acked_ref.fetch_add(1, Ordering::SeqCst);
            id
        })
        .buffer_unordered(4)
        .collect::<Vec<String>>();
    let reconnect = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::SeqCst) < BURST / 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        app_ref.ws(room, Some(&cursor_d), None).await
    };
    let (burst_ids, mut d) = tokio::join!(sends, reconnect);
    let burst_set: HashSet<String> = burst_ids.iter().cloned().collect();
    let (reference, _) = app
        .poll_until(room, &cursor_d, 1000, &burst_set, Duration::from_secs(10))
        .await;
    let reference = ids_of(&reference);
    assert!(
        d.wait_items(reference.len(), Duration::from_secs(10)).await,
        "reconnected mid-burst: got {} of {} items",
        d.items.len(),
        reference.len()
    );
    d.settle(Duration::from_millis(500)).await;
    assert_eq!(
        d.item_ids(),
        reference,
        "reconnected mid-burst with a cursor: must get exactly the room's items after it, in order"
    );
    assert_eq!(
        reference.iter().cloned().collect::<HashSet<_>>(),
        burst_set,
        "after the cursor: exactly the burst"
    );
    d.close().await;
}
