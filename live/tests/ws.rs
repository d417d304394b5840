//! The live role in-process over real sockets: WebSocket fan-out, resume, gaps,
//! deflate, load shedding and long polls (issue 5's tests).

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_receive_every_item_once_in_room_order() {
    let srv = start(|_| {}).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(&srv.url("fan", "")).await.0);
    }
    let sent = srv.send_many("fan", 300, 20).await;
    let mut all = Vec::new();
    for ws in &mut clients {
        let (ids, _) = collect(ws, sent.len()).await;
        all.push(ids);
    }
    let mut want = strs(&sent);
    // Room order is seq order; ids were assigned concurrently, so compare as sets
    // and require every client to see the same order.
    let first = all[0].clone();
    for ids in &all {
        assert_eq!(ids, &first, "every client sees the same order");
    }
    let mut got = first.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "every item exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_resumes_from_the_ring_and_from_the_store() {
    let srv = start(|s| s.live.ring_size = 8).await;
    let (mut ws, _) = connect(&srv.url("res", "")).await;
    let first = srv.send_many("res", 3, 10).await;
    let (ids, cursor) = collect(&mut ws, 3).await;
    assert_eq!(ids, strs(&first));
    drop(ws);

    // Missed while away, within the ring.
    let missed = srv.send_many("res", 4, 10).await;
    let (mut ws, hello) = connect(&srv.url("res", &format!("?cursor={cursor}"))).await;
    assert_eq!(hello["cursor"], cursor.as_str());
    let (ids, cursor) = collect(&mut ws, 4).await;
    let mut want = strs(&missed);
    let mut got = ids.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "exactly what was missed (ring)");
    drop(ws);

    // Missed while away, more than the ring holds: served from the SliceStore.
    let missed = srv.send_many("res", 30, 10).await;
    let (mut ws, _) = connect(&srv.url("res", &format!("?cursor={cursor}"))).await;
    let (ids, _) = collect(&mut ws, 30).await;
    let mut want = strs(&missed);
    let mut got = ids.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "exactly what was missed (store)");
    // And then live, nothing repeated.
    let live = srv.send_many("res", 2, 10).await;
    let (ids, _) = collect(&mut ws, 2).await;
    let mut got = ids;
    got.sort();
    let mut want = strs(&live);
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_sends_pipelined_behind_the_handshake_are_answered() {
    let srv = start(|_| {}).await;
    let send = json!({"type": "send", "ref": 1, "text": "pipelined hello"}).to_string();
    let (a, b) = send.as_bytes().split_at(10);
    let mut frames = client_frame(0x9, true, b"p1");
    frames.extend(client_frame(0x1, false, a));
    frames.extend(client_frame(0x9, true, b"p2")); // a control frame between fragments
    frames.extend(client_frame(0x0, true, b));
    let path = format!("/v1/rooms/pp/ws?token={}", srv.token("pat"));
    let mut c = RawClient::connect_with(srv.addr, &path, false, None, &frames).await;
    let mut pongs = Vec::new();
    let mut acked = false;
    let mut shown = false;
    let mut hello = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(pongs.len() == 2 && acked && shown) && Instant::now() < deadline {
        let (op, p) = c.next().await.expect("open");
        match op {
            0xA => {
                assert!(hello, "hello comes first");
                pongs.push(String::from_utf8(p).unwrap());
            }
            0x1 => {
                let v: Value = serde_json::from_slice(&p).unwrap();
                match v["type"].as_str().unwrap() {
                    "hello" => hello = true,
                    "ack" => acked = v["ref"] == 1,
                    "batch" => {
                        shown |= v["items"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|i| i["text"] == "pipelined hello")
                    }
                    "online" => {}
                    other => panic!("unexpected {other}: {v}"),
                }
            }
            op => panic!("unexpected opcode {op}"),
        }
    }
    assert_eq!(pongs, vec!["p1", "p2"], "every ping answered, in order");
    assert!(acked && shown, "the fragmented send was acked and shown");
    // Later pings too, after the connection went idle.
    c.stream
        .write_all(&client_frame(0x9, true, b"p3"))
        .await
        .unwrap();
    let (op, p) = c.next().await.expect("pong");
    assert_eq!((op, p.as_slice()), (0xA, &b"p3"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_and_plain_clients_decode_the_same_frames() {
    let srv = start(|_| {}).await;
    let mut zipped = RawClient::connect(srv.addr, "/v1/rooms/z/ws", true, None).await;
    let mut plain = RawClient::connect(srv.addr, "/v1/rooms/z/ws", false, None).await;
    assert_eq!(zipped.next_json().await.unwrap()["type"], "hello");
    assert_eq!(plain.next_json().await.unwrap()["type"], "hello");
    let sent = srv.send_many("z", 60, 80).await;
    let mut got = [Vec::new(), Vec::new()];
    for (i, c) in [&mut zipped, &mut plain].into_iter().enumerate() {
        while got[i].len() < sent.len() {
            let m = c.next_json().await.expect("batch");
            if m["type"] == "batch" {
                got[i].extend(m["items"].as_array().unwrap().iter().cloned());
            }
        }
    }
    assert_eq!(
        got[0], got[1],
        "the same items, byte for byte after inflating"
    );
    assert_eq!(got[0].len(), sent.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_gap_and_the_server_stays_bounded() {
    let srv = start_small_buffers(4).await;
    let mut slow = RawClient::connect(srv.addr, "/v1/rooms/st/ws", false, Some(4096)).await;
    let hello = slow.next_json().await.unwrap();
    assert_eq!(hello["type"], "hello");
    // The client stops reading while far more than its buffers hold is sent.
    // Many separate frames: small bursts, one after another.
    let sent = srv.send_bursts("st", 60).await;
    // Resume reading: a prefix of the items in order, then gap, then close.
    let mut ids = Vec::new();
    let mut gap = None;
    while let Some(m) = slow.next_json().await {
        match m["type"].as_str() {
            Some("batch") => ids.extend(item_ids(&m)),
            Some("gap") => {
                gap = Some(m);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let gap = gap.expect("a stalled client is told it missed frames");
    assert!(ids.len() < sent.len(), "it did miss some");
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), ids.len(), "nothing repeated");
    // The gap cursor resumes exactly after what it got: polling from it returns the rest.
    let cursor = gap["cursor"].as_str().unwrap().to_string();
    let mut rest = Vec::new();
    let mut at = cursor;
    loop {
        let uri = format!("/v1/rooms/st/danmaku?cursor={at}&limit=1000");
        let resp = danmaku_live::router(srv.live.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let items = v["items"].as_array().unwrap();
        if items.is_empty() {
            break;
        }
        rest.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        at = v["cursor"].as_str().unwrap().to_string();
    }
    let mut all: Vec<String> = ids.into_iter().chain(rest).collect();
    all.sort();
    let mut want = strs(&sent);
    want.sort();
    assert_eq!(
        all, want,
        "what it got plus what polling from the gap cursor returns is everything, once"
    );
    // The server let go of the connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv
        .live
        .connections
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        srv.live
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_within_the_queue_catches_up_in_order_without_gap() {
    // Small socket buffers on both sides: the room loop's writes to the paused
    // client go through in part or not at all, and its task takes over with the
    // remainder, then catches up from the room's frame ring.
    let srv = start_small_buffers(4096).await;
    let mut paused = RawClient::connect(srv.addr, "/v1/rooms/pz/ws", false, Some(4096)).await;
    let (mut steady, _) = connect(&srv.url("pz", "")).await;
    assert_eq!(paused.next_json().await.unwrap()["type"], "hello");
    // Many separate frames while the client does not read.
    let sent = srv.send_bursts("pz", 40).await;
    // A client that keeps reading got everything meanwhile.
    let (steady_ids, _) = collect(&mut steady, sent.len()).await;
    assert_eq!(steady_ids, strs(&sent), "the other viewer is not held up");
    // The paused client reads again: everything, in order, once, and no gap.
    let mut ids = Vec::new();
    while ids.len() < sent.len() {
        let m = paused.next_json().await.expect("more batches");
        assert_eq!(m["type"], "batch", "no gap within the queue: {m}");
        ids.extend(item_ids(&m));
    }
    assert_eq!(ids, strs(&sent));
    // And it is live again: the next comment arrives through the room loop.
    let more = srv.send_many("pz", 1, 10).await;
    let m = paused.next_json().await.expect("live again");
    assert_eq!(m["items"][0]["id"], more[0].to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shedding_keeps_gifts_and_each_senders_own_comment() {
    let srv = start(|s| {
        s.live.display_budget_per_sec = 1;
        s.live.flush_ms = 300;
        s.live.flush_min_ms = 300;
    })
    .await;
    let (mut viewer, _) = connect(&srv.url("shed", "")).await;
    let (mut alice, _) = connect(&srv.url("shed", &format!("?token={}", srv.token("alice")))).await;
    // Prime the room so the next items wait for one flush together.
    srv.send("warm", Role::Viewer, "shed", json!({"text": "warm-up"}))
        .await;
    let mut sent = 1;
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let futs = users.iter().enumerate().map(|(i, u)| {
        srv.send(
            u,
            Role::Viewer,
            "shed",
            json!({"text": format!("plain {i}")}),
        )
    });
    futures::future::join_all(futs).await;
    sent += 20;
    let gift = srv
        .send(
            "shop",
            Role::Service,
            "shed",
            json!({"text": "a rocket", "kind": "gift"}),
        )
        .await;
    sent += 1;
    alice
        .send(Message::Text(
            json!({"type": "send", "ref": 7, "text": "alice here"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    sent += 1;
    let _ = sent;
    let mut seen_viewer = Vec::new();
    let mut seen_alice = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::select! {
            Some(m) = next_json(&mut viewer) => if m["type"] == "batch" {
                seen_viewer.extend(m["items"].as_array().unwrap().iter().cloned());
            },
            Some(m) = next_json(&mut alice) => if m["type"] == "batch" {
                seen_alice.extend(m["items"].as_array().unwrap().iter().cloned());
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let gift_id = gift.to_string();
    let has = |v: &Vec<Value>, pred: &dyn Fn(&Value) -> bool| v.iter().any(pred);
    assert!(
        has(&seen_viewer, &|i| i["id"].as_str()
            == Some(gift_id.as_str())),
        "gifts are never dropped"
    );
    assert!(has(&seen_alice, &|i| i["id"].as_str() == Some(gift_id.as_str())));
    assert!(
        has(&seen_alice, &|i| i["text"] == "alice here"),
        "the sender sees its own comment"
    );
    let plain_shown = seen_viewer
        .iter()
        .filter(|i| i["kind"] == "comment")
        .count();
    assert!(
        plain_shown < 10,
        "plain comments were shed to the budget, {plain_shown} shown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_arrival_and_times_out_on_silence() {
    let srv = start(|_| {}).await;
    let app = || danmaku_live::router(srv.live.clone());
    let get = |uri: String| Request::get(uri).body(Body::empty()).unwrap();
    let resp = app()
        .oneshot(get("/v1/rooms/lp/danmaku".into()))
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    let cursor = v["cursor"].as_str().unwrap().to_string();

    // Silence: returns empty after about wait_ms.
    let t = Instant::now();
    let resp = app()
        .oneshot(get(format!(
            "/v1/rooms/lp/danmaku?cursor={cursor}&wait_ms=400"
        )))
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(380),
        "held for wait_ms"
    );
    assert!(v["items"].as_array().unwrap().is_empty());
    assert_eq!(v["cursor"], cursor.as_str());

    // Arrival: wakes well before wait_ms.
    let poll = tokio::spawn(app().oneshot(get(format!(
        "/v1/rooms/lp/danmaku?cursor={cursor}&wait_ms=20000"
    ))));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let id = srv
        .send("bob", Role::Viewer, "lp", json!({"text": "wake up"}))
        .await;
    let resp = poll.await.unwrap().unwrap();
    assert!(t.elapsed() < Duration::from_secs(5), "woke on arrival");
    let v: Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["items"][0]["id"], id.to_string());
    assert_eq!(
        v["next_poll_ms"], 0,
        "after a long poll, poll again at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_keep_their_own_big_key_registries() {
    // Every slice is big on `a`; nothing is on `b`.
    let a = start(|s| s.live.bigkey_members = 1).await;
    let b = start(|_| {}).await;
    let events = |srv: &Server| {
        let token = srv.live.ctx.signer.issue(
            "ops",
            None,
            Role::Admin,
            danmaku_core::now_ms() / 1000,
            3600,
        );
        let req = Request::get("/v1/admin/bigkeys")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        let app = danmaku_live::router(srv.live.clone());
        async move {
            let resp = app.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            v["events"].as_array().unwrap().clone()
        }
    };
    a.send("pub", Role::Service, "big", json!({"text": "one"}))
        .await;
    b.send("pub", Role::Service, "big", json!({"text": "one"}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let ev = events(&a).await;
        if !ev.is_empty() || Instant::now() > deadline {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(seen.len(), 1, "a's writer reported its big slice: {seen:?}");
    assert_eq!(seen[0]["room"], "big");
    // b stored the same comment (so its writer ran) and saw nothing big; a's
    // report is not in b's registry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.live.ctx.slices.last_seq("big").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "b's writer stored the comment");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(events(&b).await, Vec::<Value>::new());
}

/// A WebSocket `send` is read member by member like the HTTP body: a bad field
/// gets the code of its field, with the message's `ref`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_send_fields_get_their_own_codes() {
    let srv = start(|_| {}).await;
    let token = srv.token("sender");
    let (mut ws, _) = connect(&srv.url("codes", &format!("?token={token}"))).await;
    let cases = [
        (
            r#"{"type":"send","ref":1,"text":"x","color":1e400}"#,
            "invalid_color",
        ),
        (
            r#"{"type":"send","ref":2,"text":"x","mode":1e400}"#,
            "invalid_mode",
        ),
        (
            r#"{"type":"send","ref":3,"text":"x","color":-1}"#,
            "invalid_color",
        ),
        (
            r#"{"type":"send","ref":4,"text":"x","kind":"nope"}"#,
            "invalid_kind",
        ),
        (r#"[{"type":"send","ref":5,"text":"x"}]"#, "invalid_json"),
        (r#"{"type":"nope","ref":6}"#, "invalid_json"),
    ];
    for (n, (raw, code)) in cases.into_iter().enumerate() {
        ws.send(Message::Text(raw.into())).await.unwrap();
        let v = next_json(&mut ws).await.expect("a reply");
        assert_eq!(v["type"], "error", "{raw}: {v}");
        assert_eq!(v["error"]["code"], code, "{raw}: {v}");
        // The ref is read even when another member is out of range; an array
        // is no message, so it has none.
        if raw.starts_with('[') {
            assert_eq!(v["ref"], Value::Null, "{raw}: {v}");
        } else {
            assert_eq!(v["ref"], n as u64 + 1, "{raw}: {v}");
        }
    }
}
