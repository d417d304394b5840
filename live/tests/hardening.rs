//! Issue 13, the live role: one test per attack or bad input, each asserting
//! its bound, in-process over real sockets.
//!
//! - 50 resumes that never read, 20,000 items back, hold one backlog page each
//!   (not the backlog), and the process's RSS stays within 64 MB of before; a
//!   reading resume still gets all 20,000 in order.
//! - A backlog over `live.resume_max_bytes` ends in `gap` at the cursor reached
//!   and close 1008; polling from that cursor returns the rest.
//! - Polls of rooms without data create no hub; unused hubs go after
//!   `live.room_idle_secs`.
//! - Past `live.max_long_polls`, `live.max_rooms` and
//!   `live.max_concurrent_resumes`: `503 unavailable` with `Retry-After`.
//! - A cursor older than anything the node holds gets `gap` (WebSocket) and
//!   `"gap": true` (polling), never an answer that looks complete.
//! - Every protocol violation gets its close code (RFC 6455 / 7692).

mod support;

use danmaku_core::cursor::Cursor;
use support::*;

/// A masked client frame with first byte `b0` (FIN, RSV, opcode) and any length.
fn raw_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x0f, 0x1e, 0x2d, 0x3c];
    let mut f = vec![b0];
    if payload.len() < 126 {
        f.push(0x80 | payload.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// Opens a WebSocket, reads its hello, writes `bytes`; the close code the server
/// answers with (`Some(0)` for a close without a code, `None` for no close).
async fn close_code_after(srv: &Server, bytes: &[u8], deflate: bool) -> Option<u16> {
    let mut c = RawClient::connect(srv.addr, "/v1/rooms/pv/ws", deflate, None).await;
    assert_eq!(c.next_json().await.expect("hello")["type"], "hello");
    c.stream.write_all(bytes).await.unwrap();
    loop {
        let (op, p) = c.next().await?;
        if op == 8 {
            return Some(if p.len() >= 2 {
                u16::from_be_bytes([p[0], p[1]])
            } else {
                0
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_violation_gets_its_close_code() {
    let srv = start(|_| {}).await;
    let text = |fin: bool, p: &[u8]| raw_frame(if fin { 0x81 } else { 0x01 }, p);
    let cont = |fin: bool, p: &[u8]| raw_frame(if fin { 0x80 } else { 0x00 }, p);
    let close = |p: &[u8]| raw_frame(0x88, p);
    let mut cases: Vec<(String, Vec<u8>, bool, u16)> = vec![
        (
            "continuation without a start".into(),
            cont(true, b"x"),
            false,
            1002,
        ),
        (
            "a text frame inside a fragmented message".into(),
            [text(false, b"{\"type\""), text(true, b"x")].concat(),
            false,
            1002,
        ),
        (
            "a binary frame inside a fragmented message".into(),
            [text(false, b"{"), raw_frame(0x82, b"x")].concat(),
            false,
            1002,
        ),
        (
            "a binary message".into(),
            raw_frame(0x82, &[1, 2, 3]),
            false,
            1003,
        ),
        (
            "a fragmented binary message".into(),
            raw_frame(0x02, &[1]),
            false,
            1003,
        ),
        (
            "a reserved opcode".into(),
            raw_frame(0x83, b""),
            false,
            1002,
        ),
        ("a one-byte close payload".into(), close(&[3]), false, 1002),
        (
            "a close reason that is not UTF-8".into(),
            close(&close_payload(1000, &[0xce, 0xba, 0xe1, 0xbd, 0xff])),
            false,
            1007,
        ),
        (
            "a corrupt deflate payload".into(),
            raw_frame(0xC1, &[0xff, 0xff, 0xff, 0xff, 0x00]),
            true,
            1007,
        ),
        (
            "text that is not UTF-8".into(),
            text(true, &[0xff]),
            false,
            1007,
        ),
        (
            "RSV1 without permessage-deflate".into(),
            raw_frame(0xC1, b"{}"),
            false,
            1002,
        ),
        (
            "a valid close code is echoed".into(),
            close(&close_payload(3000, b"bye")),
            false,
            3000,
        ),
        ("a close without a code".into(), close(b""), false, 1000),
    ];
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000] {
        cases.push((
            format!("close code {code}"),
            close(&close_payload(code, b"")),
            false,
            1002,
        ));
    }
    for (what, bytes, deflate, want) in cases {
        let got = close_code_after(&srv, &bytes, deflate).await;
        assert_eq!(got, Some(want), "{what}");
    }
}

/// The process's resident memory, bytes (Linux).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Every item of `room` after `cursor`, by polling; and the last cursor.
async fn poll_all(srv: &Server, room: &str, cursor: &str) -> (Vec<String>, String) {
    let mut ids = Vec::new();
    let mut at = cursor.to_string();
    loop {
        let v = poll(
            srv,
            &format!("/v1/rooms/{room}/danmaku?cursor={at}&limit=1000"),
        )
        .await;
        assert!(v.get("gap").is_none(), "{v}");
        let items = v["items"].as_array().unwrap();
        if items.is_empty() {
            return (ids, at);
        }
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        at = v["cursor"].as_str().unwrap().to_string();
    }
}

/// A poll's JSON answer (panics unless 200).
async fn poll(srv: &Server, uri: &str) -> Value {
    let resp = danmaku_live::router(srv.live.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{uri}");
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A poll's status, `Retry-After` and error code.
async fn poll_status(srv: &Server, uri: &str) -> (u16, Option<String>, Value) {
    let resp = danmaku_live::router(srv.live.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    (
        status,
        retry,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// The room's current cursor (a poll without one).
async fn head_cursor(srv: &Server, room: &str) -> String {
    poll(srv, &format!("/v1/rooms/{room}/danmaku")).await["cursor"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_that_never_read_hold_one_page_not_the_backlog() {
    const ITEMS: usize = 20_000;
    const RESUMES: usize = 50;
    // Small kernel buffers so the resumes stall at once, and a long write
    // timeout so none is dropped while the test looks.
    let srv = start(|s| {
        s.live.ws_send_buffer_bytes = 16 * 1024;
        s.live.write_timeout_ms = 60_000;
    })
    .await;
    let room = "rb";
    let before = head_cursor(&srv, room).await;
    srv.send_many(room, ITEMS, 90).await;
    let (want, _) = poll_all(&srv, room, &before).await;
    assert_eq!(want.len(), ITEMS);

    let rss0 = rss_bytes();
    let path = format!("/v1/rooms/{room}/ws?cursor={before}");
    let mut stalled = Vec::new();
    for _ in 0..RESUMES {
        stalled.push(RawClient::connect(srv.addr, &path, false, Some(4096)).await);
    }
    // They stall at their first pages: the kernel buffers fill, each task waits
    // with the page it is writing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut held = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = srv.live.resume_bytes();
        if now > 0 && now == held {
            break;
        }
        held = now;
    }
    let rss1 = rss_bytes();
    assert_eq!(
        srv.live.connections.load(Ordering::Relaxed),
        RESUMES,
        "every resume is still open"
    );
    assert!(held > 0, "the resumes are writing their backlog");
    assert!(
        held <= RESUMES * 256 * 1024,
        "{held} bytes of backlog held by {RESUMES} resumes: more than a page each"
    );
    let grown = rss1.saturating_sub(rss0);
    assert!(
        grown < 64 << 20,
        "RSS grew by {} MB with {RESUMES} stalled resumes {ITEMS} items back",
        grown >> 20
    );

    // A resume that reads gets the whole backlog, once, in order.
    let (mut ws, hello) = connect(&srv.url(room, &format!("?cursor={before}"))).await;
    assert_eq!(hello["cursor"], before.as_str());
    let (got, _) = collect(&mut ws, ITEMS).await;
    assert_eq!(got.len(), ITEMS);
    assert!(
        got == want,
        "the backlog page by page is the room's items in order"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_over_the_budget_ends_in_gap_at_the_cursor_reached() {
    let srv = start(|s| {
        s.live.ring_size = 16;
        s.live.resume_max_bytes = 64 * 1024;
    })
    .await;
    let room = "budget";
    let before = head_cursor(&srv, room).await;
    srv.send_many(room, 2_000, 90).await;
    let (all, _) = poll_all(&srv, room, &before).await;
    assert_eq!(all.len(), 2_000);

    let mut c = RawClient::connect(
        srv.addr,
        &format!("/v1/rooms/{room}/ws?cursor={before}"),
        false,
        None,
    )
    .await;
    let mut got = Vec::new();
    let mut last_batch = String::new();
    let gap = loop {
        let (op, p) = c.next().await.expect("a gap before the close");
        assert_eq!(op, 1, "text until the gap");
        let m: Value = serde_json::from_slice(&p).unwrap();
        match m["type"].as_str().unwrap() {
            "hello" => {}
            "batch" => {
                got.extend(item_ids(&m));
                last_batch = m["cursor"].as_str().unwrap().to_string();
            }
            "gap" => break m["cursor"].as_str().unwrap().to_string(),
            other => panic!("unexpected {other}"),
        }
    };
    let (op, p) = c.next().await.expect("close");
    assert_eq!((op, u16::from_be_bytes([p[0], p[1]])), (8, 1008));
    assert!(
        !got.is_empty() && got.len() < all.len(),
        "{} sent",
        got.len()
    );
    assert_eq!(gap, last_batch, "the gap cursor is where the client got to");
    let (rest, _) = poll_all(&srv, room, &gap).await;
    let both: Vec<String> = got.into_iter().chain(rest).collect();
    assert!(
        both == all,
        "what came plus polling from the gap is every item once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_rooms_without_data_create_no_hub_and_unused_hubs_go() {
    let srv = start(|s| s.live.room_idle_secs = 1).await;
    let forged = Cursor(5).encode();
    for i in 0..500 {
        poll(&srv, &format!("/v1/rooms/nohub-{i}/danmaku")).await;
        let v = poll(
            &srv,
            &format!("/v1/rooms/nohub-c{i}/danmaku?cursor={forged}"),
        )
        .await;
        assert!(v["items"].as_array().unwrap().is_empty());
        assert!(v.get("gap").is_none(), "an empty room has no gap: {v}");
    }
    assert_eq!(srv.live.hubs.len(), 0, "no hub for rooms without data");

    // A room with data gets one when polled (its ring serves the next polls).
    srv.send("u", Role::Viewer, "with-data", json!({"text": "hi"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while poll(&srv, "/v1/rooms/with-data/danmaku").await["cursor"] == Cursor(0).encode()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(srv.live.hubs.len(), 1);
    let (ws, _) = connect(&srv.url("viewed", "")).await;
    assert_eq!(srv.live.hubs.len(), 2);
    // Held while the viewer stays, gone once nobody used it for the idle time.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(srv.live.hubs.len(), 1, "the viewed room's hub stays");
    drop(ws);
    let deadline = Instant::now() + Duration::from_secs(6);
    while !srv.live.hubs.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(srv.live.hubs.len(), 0, "unused hubs are dropped");
}

/// A WebSocket handshake's status line code and head.
async fn handshake(addr: SocketAddr, path: &str) -> (u16, String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut tmp = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut tmp))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        buf.extend_from_slice(&tmp[..n]);
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head, s)
}

#[track_caller]
fn assert_refused(status: u16, retry: Option<String>, body: &Value, what: &str) {
    assert_eq!(status, 503, "{what}");
    assert!(retry.is_some(), "{what}: Retry-After");
    assert_eq!(body["error"]["code"], "unavailable", "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_past_the_bound_get_503() {
    let srv = start(|s| s.live.max_long_polls = 1).await;
    let c = head_cursor(&srv, "lp").await;
    let waiting = {
        let live = srv.live.clone();
        let uri = format!("/v1/rooms/lp/danmaku?cursor={c}&wait_ms=3000");
        tokio::spawn(async move {
            danmaku_live::router(live)
                .oneshot(Request::get(uri).body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, retry, body) = poll_status(
        &srv,
        &format!("/v1/rooms/lp2/danmaku?cursor={c}&wait_ms=3000"),
    )
    .await;
    assert_refused(status, retry, &body, "a second long poll");
    let (status, _, _) = poll_status(&srv, &format!("/v1/rooms/lp2/danmaku?cursor={c}")).await;
    assert_eq!(status, 200, "a short poll still answers");
    assert_eq!(waiting.await.unwrap(), 200);
    let (status, _, _) = poll_status(
        &srv,
        &format!("/v1/rooms/lp2/danmaku?cursor={c}&wait_ms=100"),
    )
    .await;
    assert_eq!(status, 200, "the bound frees with the poll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_past_the_cap_get_503_while_viewed_rooms_stay() {
    let srv = start(|s| s.live.max_rooms = 1).await;
    let (_viewer, _) = connect(&srv.url("a", "")).await;
    let (status, head, _) = handshake(srv.addr, "/v1/rooms/b/ws").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    let c = Cursor(0).encode();
    let (status, retry, body) =
        poll_status(&srv, &format!("/v1/rooms/b/danmaku?cursor={c}&wait_ms=200")).await;
    assert_refused(status, retry, &body, "a long poll of a new room at the cap");
    let (status, _, _) = poll_status(&srv, &format!("/v1/rooms/b/danmaku?cursor={c}")).await;
    assert_eq!(status, 200, "a short poll needs no hub");
    // The viewed room's hub is never the one dropped.
    let (status, _, _) = handshake(srv.addr, "/v1/rooms/a/ws").await;
    assert_eq!(status, 101);
    assert_eq!(srv.live.hubs.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_past_the_bound_get_503() {
    let srv = start(|s| {
        s.live.max_concurrent_resumes = 1;
        s.live.ws_send_buffer_bytes = 4096;
        s.live.flush_ms = 0;
    })
    .await;
    let before = head_cursor(&srv, "rs").await;
    srv.send_many("rs", 1_000, 90).await;
    poll_all(&srv, "rs", &before).await;
    // A resume that does not read holds the one slot while its backlog is stuck.
    let path = format!("/v1/rooms/rs/ws?cursor={before}");
    let _stuck = RawClient::connect(srv.addr, &path, false, Some(4096)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, head, _) = handshake(srv.addr, &path).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(head.contains("\"unavailable\""), "{head}");
    let (status, _, _) = handshake(srv.addr, "/v1/rooms/rs/ws").await;
    assert_eq!(status, 101, "a connection without a cursor is no resume");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_anything_held_gets_gap() {
    let lossy = start_lossy_with(|s| s.live.ring_size = 8).await;
    let (srv, through) = (&lossy.srv, &lossy.through);
    let room = "old";
    let before = head_cursor(srv, room).await;
    srv.send_many(room, 30, 20).await;
    // Stored, read from the store itself: no poll, so no hub yet.
    lossy.stored(room, 30).await;
    let store = srv.live.ctx.slices.clone();
    let last = store.last_seq(room).await.unwrap();
    let head = Cursor(last).encode();
    assert_eq!(srv.live.hubs.len(), 0);
    // The store drops everything so far; the hub the next poll makes starts
    // after it all, so its ring holds none of it either.
    through.store(last, Ordering::SeqCst);
    let v = poll(srv, &format!("/v1/rooms/{room}/danmaku?cursor={before}")).await;
    assert_eq!(v["gap"], true, "{v}");
    assert_eq!(v["cursor"], head.as_str(), "continue from the oldest held");
    assert!(v["items"].as_array().unwrap().is_empty());
    // From the head: an ordinary, complete answer.
    let v = poll(srv, &format!("/v1/rooms/{room}/danmaku?cursor={head}")).await;
    assert!(v.get("gap").is_none(), "{v}");

    // A WebSocket resume: hello, gap at the oldest held, then what follows.
    let (mut ws, hello) = connect(&srv.url(room, &format!("?cursor={before}"))).await;
    assert_eq!(hello["cursor"], before.as_str());
    let gap = next_json(&mut ws).await.unwrap();
    assert_eq!(
        (gap["type"].as_str(), gap["cursor"].as_str()),
        (Some("gap"), Some(head.as_str()))
    );
    let later = srv.send_many(room, 5, 20).await;
    let (ids, now) = collect(&mut ws, 5).await;
    assert_eq!(ids, strs(&later));

    // The store drops those too, but the ring holds them: the answer starts at
    // the ring's floor, with the ring's items, and says gap.
    through.store(Cursor::decode(&now).unwrap().0, Ordering::SeqCst);
    let v = poll(srv, &format!("/v1/rooms/{room}/danmaku?cursor={before}")).await;
    assert_eq!(v["gap"], true, "{v}");
    let items = item_ids(&v);
    assert_eq!(items, strs(&later), "the ring's items after its floor");
    assert_eq!(v["cursor"], now.as_str());
}

/// Only the oldest items expired: a read after an old cursor still returns
/// the later ones, and the answer says `gap` at the last seq expired (the
/// store's watermark) instead of looking complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_behind_expired_items_gets_gap_though_later_ones_are_held() {
    let lossy = start_lossy_with(|s| s.live.ring_size = 8).await;
    let (srv, through) = (&lossy.srv, &lossy.through);
    let room = "half";
    let before = head_cursor(srv, room).await;
    srv.send_many(room, 30, 20).await;
    let stored = lossy.stored(room, 30).await;
    let ids: Vec<String> = stored.iter().map(stored_id).collect();
    // The oldest ten expire; twenty are still held.
    let tenth = stored[9].seq;
    through.store(tenth, Ordering::SeqCst);
    let v = poll(srv, &format!("/v1/rooms/{room}/danmaku?cursor={before}")).await;
    assert_eq!(v["gap"], true, "{v}");
    let items = item_ids(&v);
    assert_eq!(items, ids[10..], "what is still held, after the gap");
    // From the watermark on: an ordinary, complete answer.
    let at = Cursor(tenth).encode();
    let v = poll(srv, &format!("/v1/rooms/{room}/danmaku?cursor={at}")).await;
    assert!(v.get("gap").is_none(), "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 20);

    // A WebSocket resume: gap at the watermark, then the twenty held items.
    let (mut ws, hello) = connect(&srv.url(room, &format!("?cursor={before}"))).await;
    assert_eq!(hello["cursor"], before.as_str());
    let gap = next_json(&mut ws).await.unwrap();
    assert_eq!(
        (gap["type"].as_str(), gap["cursor"].as_str()),
        (Some("gap"), Some(at.as_str()))
    );
    let (got, _) = collect(&mut ws, 20).await;
    assert_eq!(got, ids[10..]);
}

/// A node whose hub missed items (their notices lost) that expired from the
/// store before it caught up: its connected viewers get `gap` at their own
/// cursors, never the later items as if nothing was missing, and a resume from
/// that cursor gets `gap` at the store's watermark with what is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_a_hub_that_missed_expired_items_get_gap_at_their_cursor() {
    let lossy = start_lossy().await;
    let srv = &lossy.srv;
    let room = "cut";
    let (mut ws, _) = connect(&srv.url(room, "")).await;
    lossy.settled(room).await;
    let first = srv.send_many(room, 5, 20).await;
    let (got, seen) = collect(&mut ws, 5).await;
    assert_eq!(got.len(), 5, "{got:?} of {first:?}");
    // Ten more are stored with their notices lost; the first five of them
    // expire before the node catches up.
    let held = lossy.miss_and_expire(room, 10, 5).await;
    // The viewer: gap at its own cursor (none of the later five), then close.
    let gap = next_json(&mut ws).await.expect("gap");
    assert_eq!(
        (gap["type"].as_str(), gap["cursor"].as_str()),
        (Some("gap"), Some(seen.as_str())),
        "{gap}"
    );
    assert!(next_json(&mut ws).await.is_none(), "closed after gap");
    // Its resume: gap at the watermark, then the five still held.
    let v = poll(srv, &format!("/v1/rooms/{room}/danmaku?cursor={seen}")).await;
    assert_eq!(v["gap"], true, "{v}");
    let items = item_ids(&v);
    assert_eq!(items, held);
    // A viewer that joins now gets live items as usual.
    let (mut ws2, _) = connect(&srv.url(room, "")).await;
    let more = srv.send_many(room, 3, 20).await;
    let (got2, _) = collect(&mut ws2, 8).await;
    assert!(
        strs(&more).iter().all(|id| got2.contains(id)),
        "{got2:?} lacks some of {more:?}"
    );
}
