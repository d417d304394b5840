//! Issue 13, the live role (items 3, 4, 7) from the outside, on the embedded
//! defaults: each test asserts its bound on the server process.
//!
//! - 50 WebSocket resumes that never read, 20,000 items back, grow the server's
//!   RSS by less than 64 MB (they used to hold the whole backlog each: 51 ->
//!   607 MB), and one that reads still gets every item.
//! - Polls of 1,000 rooms nobody sent to leave `danmaku_live_rooms` at 0.
//! - A cursor taken before a restart (SIGTERM, then kill -9) gets its items or
//!   a `gap`, on polling and on the WebSocket: never an empty answer that looks
//!   complete.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// The server's resident memory, bytes.
fn rss(app: &TestApp) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Sends `n` comments of about 90 characters to `room`, `par` at a time.
async fn send_many(app: &TestApp, token: &str, room: &str, n: usize, par: usize) -> Vec<String> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let text = format!("{i:05}-{}", "x".repeat(84));
            app.send_ok(token, room, json!({ "text": text })).await
        })
        .buffered(par)
        .collect()
        .await
}

/// Sends `n` comments of about 90 characters to `room` over `conns`
/// WebSockets, up to 64 in flight on each (the token is checked once per
/// connection, not per comment: the quickest way in); waits for every ack.
async fn send_over_websockets(app: &TestApp, token: &str, room: &str, n: usize, conns: usize) {
    let per = n.div_ceil(conns);
    let url = app.ws_url(&format!("/v1/rooms/{room}/ws?token={token}"));
    futures::future::join_all((0..conns).map(|c| {
        let url = url.clone();
        async move {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap();
            let (mut tx, mut rx) = ws.split();
            let mine = (c * per)..((c + 1) * per).min(n);
            let total = mine.len();
            let window = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
            let w = window.clone();
            let writer = tokio::spawn(async move {
                for i in mine {
                    w.acquire().await.unwrap().forget();
                    let text = format!("{i:05}-{}", "x".repeat(84));
                    let msg = json!({"type": "send", "ref": i, "text": text}).to_string();
                    tx.send(Message::text(msg)).await.unwrap();
                }
                tx
            });
            let mut acked = 0;
            while acked < total {
                let msg = tokio::time::timeout(Duration::from_secs(20), rx.next())
                    .await
                    .expect("acks keep coming")
                    .expect("open")
                    .unwrap();
                if let Message::Text(t) = msg {
                    // Acks are short; the room's batches (these comments) are not.
                    if t.len() < 200 && t.contains("\"type\":\"ack\"") {
                        acked += 1;
                        window.add_permits(1);
                    } else {
                        assert!(!t.contains("\"type\":\"error\""), "{t}");
                    }
                }
            }
            let _ = writer.await.unwrap().close().await;
        }
    }))
    .await;
}

/// Every item of `room` after `cursor`, by polling.
async fn poll_all(app: &TestApp, room: &str, cursor: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut at = cursor.to_string();
    loop {
        let page = app.poll(room, Some(&at), Some(1000), Some(0)).await;
        let got = page["items"].as_array().unwrap();
        if got.is_empty() {
            return items;
        }
        items.extend(got.iter().cloned());
        at = page["cursor"].as_str().unwrap().to_string();
    }
}

/// A WebSocket that completes its handshake and then never reads, with a small
/// receive buffer (what an attacker keeps open).
async fn never_reading(app: &TestApp, path: &str) -> TcpStream {
    let addr = app.base_url.trim_start_matches("http://").to_string();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr.parse().unwrap()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("a handshake answer")
        .unwrap();
    assert_eq!(&head[9..12], b"101", "{}", String::from_utf8_lossy(&head));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_resumes_20000_items_back_grow_rss_by_less_than_64_mb() {
    const ITEMS: usize = 20_000;
    const RESUMES: usize = 50;
    // A write timeout longer than the test, so the resumes stay stalled while
    // we look, and small kernel send buffers, so they stall at once (kernel
    // buffers are not the server's RSS either way).
    let app = spawn_app(&[
        ("DANMAKU_LIVE__WRITE_TIMEOUT_MS", "60000"),
        ("DANMAKU_LIVE__WS_SEND_BUFFER_BYTES", "16384"),
    ])
    .await;
    let room = "stalled";
    let svc = app.token("stall-svc", "service").await;
    let before = app.room_cursor(room).await;
    send_over_websockets(&app, &svc, room, ITEMS, 4).await;
    let stored = poll_all(&app, room, &before).await;
    assert_eq!(stored.len(), ITEMS);

    let rss0 = rss(&app);
    let path = format!("/v1/rooms/{room}/ws?cursor={before}");
    let mut stalled = Vec::new();
    for _ in 0..RESUMES {
        stalled.push(never_reading(&app, &path).await);
    }
    // Let them fill their buffers and stall; watch the peak meanwhile.
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        peak = peak.max(rss(&app));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = peak.saturating_sub(rss0);
    assert!(
        grown < 64 << 20,
        "RSS {} MB -> peak {} MB with {RESUMES} stalled resumes {ITEMS} items back",
        rss0 >> 20,
        peak >> 20
    );
    // The server still serves a resume that reads: every item, in order.
    let mut ws = app.ws(room, Some(&before), None).await;
    assert!(
        ws.wait_items(ITEMS, Duration::from_secs(30)).await,
        "a reading resume got {} of {ITEMS}",
        ws.items.len()
    );
    assert_eq!(ws.item_ids(), ids_of(&stored), "the backlog, in room order");
    assert!(ws.gaps.is_empty(), "{:?}", ws.gaps);
    drop(stalled);
}

/// The value of an unlabelled metric on `/metrics` (0 when absent).
async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_rooms_nobody_sent_to_create_no_hub() {
    let app = spawn_app(&[]).await;
    let forged = "AQAAAAAAAAAF"; // Cursor(5): well-formed, of no room
    let app_ref = &app;
    futures::stream::iter(0..1_000)
        .map(|i| async move {
            if i % 2 == 0 {
                app_ref.poll(&format!("nobody-{i}"), None, None, None).await
            } else {
                app_ref
                    .poll(&format!("nobody-{i}"), Some(forged), None, None)
                    .await
            }
        })
        .buffer_unordered(16)
        .for_each(|page| async move {
            assert!(page["items"].as_array().unwrap().is_empty());
            assert!(page.get("gap").is_none(), "{page}");
        })
        .await;
    assert_eq!(metric(&app, "danmaku_live_rooms").await, 0.0);
    // A room with a viewer has one.
    let ws = app.ws("watched", None, None).await;
    assert_eq!(metric(&app, "danmaku_live_rooms").await, 1.0);
    ws.close().await;
}

/// What a resume from `cursor` gets within a few seconds: its item ids and
/// whether a gap came first.
async fn resume(app: &TestApp, room: &str, cursor: &str, want: usize) -> (Vec<String>, bool) {
    let mut ws = app.ws(room, Some(cursor), None).await;
    ws.wait_items(want, Duration::from_secs(5)).await;
    ws.settle(Duration::from_millis(300)).await;
    let gap = !ws.gaps.is_empty();
    let ids = ws.item_ids();
    ws.close().await;
    (ids, gap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_before_a_restart_gets_its_items_or_gap() {
    let mut app = spawn_app(&[]).await;
    let room = "restarted";
    let svc = app.token("restart-svc", "service").await;
    for how in ["SIGTERM", "kill -9"] {
        let before = app.room_cursor(room).await;
        let sent = send_many(&app, &svc, room, 20, 4).await;
        let want: HashSet<String> = sent.iter().cloned().collect();
        let (got, _) = app
            .poll_until(room, &before, 100, &want, Duration::from_secs(10))
            .await;
        // Room order (concurrent sends are not accepted in the order sent).
        let sent = ids_of(&got);
        assert_eq!(
            sent.iter().cloned().collect::<HashSet<_>>(),
            want,
            "{how}: stored before the restart"
        );
        if how == "SIGTERM" {
            app.stop().await;
        } else {
            app.kill9().await;
        }
        app.restart().await;

        // Following the cursor (after kill -9 the writer may still be storing
        // the Bus's redelivered tail): every item in order, or a gap.
        let (mut items, mut gap) = (Vec::new(), false);
        let mut at = before.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while items.len() < sent.len() && !gap && Instant::now() < deadline {
            let page: Value = app.poll(room, Some(&at), Some(100), Some(1000)).await;
            gap = page["gap"] == true;
            items.extend(ids_of(page["items"].as_array().unwrap()));
            at = page["cursor"].as_str().unwrap().to_string();
        }
        assert!(
            items == sent || gap,
            "{how}: polling from a cursor of before the restart gets its items or gap: {items:?}"
        );
        let (ids, gap) = resume(&app, room, &before, sent.len()).await;
        assert!(
            ids == sent || gap,
            "{how}: a resume from a cursor of before the restart gets its items or gap: {ids:?}"
        );
    }
}
