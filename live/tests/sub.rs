//! `GET /sub` (Bilibili's live protocol) in-process over real sockets, with a
//! raw client: auth, heartbeats, commands in every protocol version, several
//! packets per message, resume by cursor, and the error paths (issue 16).
//! The real npm client is in `sub_npm_client_*` (needs node).

mod support;

use danmaku_live::bili::packet::{self, Op, Packet};
use support::*;

/// A masked client frame of any length.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn auth(body: Value) -> Vec<u8> {
    frame(
        2,
        &packet::packet(1, Op::Auth, 1, body.to_string().as_bytes()),
    )
}

fn heartbeat() -> Vec<u8> {
    packet::packet(1, Op::Heartbeat, 1, b"[object Object]")
}

/// What the server sent, message by message.
enum Got {
    Packets(Vec<Packet>),
    Closed(Option<u16>),
}

async fn next(c: &mut RawClient) -> Got {
    loop {
        let Some((op, p)) = c.next().await else {
            return Got::Closed(None);
        };
        match op {
            2 => return Got::Packets(packet::decode_message(&p, 1 << 24).expect("packets")),
            8 => return Got::Closed(p.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]))),
            9 | 0xA => continue,
            op => panic!("unexpected opcode {op}"),
        }
    }
}

async fn next_packets(c: &mut RawClient) -> Vec<Packet> {
    match next(c).await {
        Got::Packets(p) => p,
        Got::Closed(code) => panic!("closed ({code:?}) where packets were expected"),
    }
}

/// Connects to `/sub` and authenticates with `body`; returns the client and
/// the op-8 reply.
async fn open(srv: &Server, body: Value) -> (RawClient, Value) {
    let mut c = RawClient::connect_with(srv.addr, "/sub", false, None, &auth(body)).await;
    let ps = next_packets(&mut c).await;
    assert_eq!(ps[0].op, Op::AuthReply);
    let reply: Value = serde_json::from_slice(&ps[0].body).unwrap();
    (c, reply)
}

/// Commands received until `want` `DANMU_MSG`s came (or 30 s passed: CI
/// machines are slow), with the number of packets of each message that
/// carried any.
async fn danmu(c: &mut RawClient, want: usize) -> (Vec<Value>, Vec<usize>) {
    danmu_within(c, want, Duration::from_secs(30)).await
}

/// [`danmu`], waiting at most `wait`.
async fn danmu_within(c: &mut RawClient, want: usize, wait: Duration) -> (Vec<Value>, Vec<usize>) {
    let mut out = Vec::new();
    let mut sizes = Vec::new();
    let deadline = Instant::now() + wait;
    while out.len() < want && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let ps = match tokio::time::timeout(left, next(c)).await {
            Ok(Got::Packets(ps)) => ps,
            Ok(Got::Closed(_)) | Err(_) => break,
        };
        let cmds: Vec<Value> = ps
            .iter()
            .filter(|p| p.op == Op::Message)
            .map(|p| serde_json::from_slice::<Value>(&p.body).unwrap())
            .filter(|v| v["cmd"] == "DANMU_MSG")
            .collect();
        if !cmds.is_empty() {
            sizes.push(cmds.len());
        }
        out.extend(cmds);
    }
    (out, sizes)
}

fn id_of(cmd: &Value) -> String {
    let extra: Value = serde_json::from_str(cmd["info"][0][15]["extra"].as_str().unwrap()).unwrap();
    extra["id_str"].as_str().unwrap().to_string()
}

const HOSTILE: &str = "好耶 </d><script>alert(1)</script> \"'\\ \u{202e}\u{1F600} ]]> &amp; &#0;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protover_gets_every_comment_once_in_order_with_text_intact() {
    let srv = start(|_| {}).await;
    let mut clients = Vec::new();
    for pv in [0, 2, 3] {
        let (c, reply) = open(&srv, json!({"roomid": "bili", "protover": pv, "uid": 0})).await;
        assert_eq!(reply["code"], 0);
        assert!(reply["cursor"].is_string());
        clients.push(c);
    }
    let mut sent = Vec::new();
    for i in 0..120 {
        let text = format!("{i:03} {HOSTILE}");
        sent.push(
            srv.send("pub", Role::Service, "bili", json!({ "text": text }))
                .await,
        );
    }
    let gift = srv
        .send(
            "pub",
            Role::Service,
            "bili",
            json!({"text": "rocket", "kind": "gift"}),
        )
        .await;
    let mut orders = Vec::new();
    for c in &mut clients {
        // How many packets share a message depends on how fast the sends come
        // (one at a time here); the resume test checks several per message,
        // where a backlog goes out at once.
        let (cmds, _) = danmu(c, sent.len()).await;
        assert_eq!(cmds.len(), sent.len());
        let ids: Vec<String> = cmds.iter().map(id_of).collect();
        assert_eq!(ids, strs(&sent), "every comment once, in order");
        for (i, cmd) in cmds.iter().enumerate() {
            assert_eq!(cmd["info"][1], format!("{i:03} {HOSTILE}"), "text intact");
        }
        orders.push(ids);
    }
    // The gift comes after the comments, as SEND_GIFT.
    for c in &mut clients {
        let mut found = false;
        while !found {
            for p in next_packets(c).await {
                let v: Value = serde_json::from_slice(&p.body).unwrap_or_default();
                if v["cmd"] == "SEND_GIFT" {
                    assert_eq!(v["data"]["giftName"], "rocket");
                    assert_eq!(
                        danmaku_core::cursor::Cursor::decode(v["cursor"].as_str().unwrap())
                            .map(|_| ()),
                        Some(())
                    );
                    found = true;
                }
            }
        }
    }
    let _ = gift;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_show_the_count_and_several_packets_share_a_message() {
    let srv = start(|_| {}).await;
    let (mut a, _) = open(&srv, json!({"roomid": 7, "protover": 3})).await;
    let (mut b, _) = open(&srv, json!({"roomid": "7"})).await;
    // Two heartbeats and an unknown operation in one message: two replies,
    // the unknown one ignored.
    let mut m = heartbeat();
    packet::put_packet(&mut m, 1, Op::Other(42), 1, b"?");
    m.extend(heartbeat());
    a.stream.write_all(&frame(2, &m)).await.unwrap();
    let ps = next_packets(&mut a).await;
    let counts: Vec<u32> = ps
        .iter()
        .filter(|p| p.op == Op::HeartbeatReply)
        .map(|p| u32::from_be_bytes(p.body[..4].try_into().unwrap()))
        .collect();
    assert_eq!(
        counts,
        [2, 2],
        "two viewers of room 7 (number and string ids)"
    );
    assert!(ps.iter().any(|p| {
        serde_json::from_slice::<Value>(&p.body).is_ok_and(|v| v["cmd"] == "WATCHED_CHANGE")
    }));
    drop(b.stream.shutdown().await);
    drop(b);
    // The connection still works after the unknown operation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.stream.write_all(&frame(2, &heartbeat())).await.unwrap();
    let ps = next_packets(&mut a).await;
    assert_eq!(ps[0].op, Op::HeartbeatReply);
    assert_eq!(ps[0].body, 1u32.to_be_bytes(), "one viewer left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_cursor_loses_and_repeats_nothing() {
    // A small ring: the second resume is served from the SliceStore.
    let srv = start(|s| s.live.ring_size = 8).await;
    let (mut c, reply) = open(&srv, json!({"roomid": "res", "protover": 2})).await;
    assert!(reply.get("gap").is_none());
    let first = srv.send_many("res", 10, 10).await;
    let (cmds, _) = danmu(&mut c, 10).await;
    assert_eq!(cmds.iter().map(id_of).collect::<Vec<_>>(), strs(&first));
    // The client dies after handling the 4th comment.
    let cursor = cmds[3]["cursor"].as_str().unwrap().to_string();
    drop(c);
    let missed = srv.send_many("res", 30, 10).await;
    let (mut c, reply) = open(
        &srv,
        json!({"roomid": "res", "protover": 3, "cursor": cursor}),
    )
    .await;
    assert_eq!(reply["code"], 0);
    assert_eq!(reply["cursor"], cursor.as_str());
    assert!(reply.get("gap").is_none());
    let live = srv.send_many("res", 5, 10).await;
    let (cmds, sizes) = danmu(&mut c, 6 + 30 + 5).await;
    assert!(
        sizes.iter().any(|n| *n > 1),
        "several packets per message (the backlog): {sizes:?}"
    );
    let mut want = strs(&first[4..]);
    want.extend(strs(&missed));
    want.extend(strs(&live));
    assert_eq!(
        cmds.iter().map(id_of).collect::<Vec<_>>(),
        want,
        "the rest of the first burst, what was missed, then live: once each, in order"
    );
    // A cursor that is not ours: -400, close.
    let (mut c, reply) = open(&srv, json!({"roomid": "res", "cursor": "nope"})).await;
    assert_eq!(reply["code"], -400);
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1008))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_and_required_tokens_get_minus_101_then_close() {
    let srv = start(|s| s.auth.require_token_to_read = true).await;
    for body in [
        json!({"roomid": "t", "key": "not-a-token"}),
        json!({"roomid": "t"}),
        json!({"roomid": "t", "key": ""}),
    ] {
        let (mut c, reply) = open(&srv, body).await;
        assert_eq!(reply["code"], -101);
        assert!(matches!(next(&mut c).await, Got::Closed(Some(1008))));
    }
    let (_c, reply) = open(&srv, json!({"roomid": "t", "key": srv.token("v")})).await;
    assert_eq!(reply["code"], 0);
    // Bad rooms and protovers.
    for body in [
        json!({"roomid": "a b"}),
        json!({"roomid": -1}),
        json!({"roomid": "t", "protover": 9, "key": srv.token("v")}),
        json!({"room": "t"}),
    ] {
        let (_, reply) = open(&srv, body).await;
        assert_eq!(reply["code"], -400);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths_close_the_connection() {
    let srv = start(|_| {}).await;
    // No auth within 5 s.
    let mut c = RawClient::connect(srv.addr, "/sub", false, None).await;
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1008))));
    // A heartbeat before auth.
    let mut c =
        RawClient::connect_with(srv.addr, "/sub", false, None, &frame(2, &heartbeat())).await;
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1008))));
    // An oversized packet (over limits.max_body_bytes) after auth.
    let (mut c, _) = open(&srv, json!({"roomid": "e"})).await;
    let big = packet::packet(1, Op::Heartbeat, 1, &vec![b'x'; 10_000]);
    c.stream.write_all(&frame(2, &big)).await.unwrap();
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1009))));
    // A packet claiming more than it holds, and a header length of 17.
    let (mut c, _) = open(&srv, json!({"roomid": "e"})).await;
    let mut bad = heartbeat();
    bad[5] = 17;
    c.stream.write_all(&frame(2, &bad)).await.unwrap();
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1002))));
    let (mut c, _) = open(&srv, json!({"roomid": "e"})).await;
    let mut short = heartbeat();
    short[3] += 4;
    c.stream.write_all(&frame(2, &short)).await.unwrap();
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1002))));
    // Not a WebSocket.
    let resp = danmaku_live::router(srv.live.clone())
        .oneshot(Request::get("/sub").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 426);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_count_against_the_json_websocket_limit() {
    let srv = start(|s| s.live.max_connections = 2).await;
    let (_a, _) = connect(&srv.url("lim", "")).await;
    let (_b, reply) = open(&srv, json!({"roomid": "lim"})).await;
    assert_eq!(reply["code"], 0);
    let mut c = RawClient::connect(srv.addr, "/sub", false, None).await;
    assert!(matches!(next(&mut c).await, Got::Closed(Some(1013))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_danmu_info_names_this_server() {
    let srv = start(|_| {}).await;
    let resp = danmaku_live::router(srv.live.clone())
        .oneshot(
            Request::get("/xlive/web-room/v1/index/getDanmuInfo?id=123")
                .header("host", "danmaku.example:8443")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], 0);
    assert_eq!(v["data"]["token"], "");
    assert_eq!(
        v["data"]["host_list"][0],
        json!({"host": "danmaku.example", "port": 8443, "wss_port": 8443, "ws_port": 8443})
    );
    // A configured public host wins over the Host header.
    let srv = start(|s| s.live.sub_public_host = "live.example.org:443".into()).await;
    let resp = danmaku_live::router(srv.live.clone())
        .oneshot(
            Request::get("/xlive/web-room/v1/index/getDanmuInfo?id=1")
                .header("host", "10.0.0.5:8080")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["data"]["host_list"][0]["host"], "live.example.org");
    assert_eq!(v["data"]["host_list"][0]["port"], 443);
}

/// The display budget applies as on the JSON WebSocket: a flood is cut to the
/// budget, gifts always pass, and a signed-in sender sees its own comments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_display_budget_applies_and_senders_see_their_own() {
    let srv = start(|s| {
        s.live.display_budget_per_sec = 5;
        s.live.flush_ms = 50;
        s.live.flush_min_ms = 50;
    })
    .await;
    let (mut viewer, _) = open(&srv, json!({"roomid": "bud", "protover": 2})).await;
    let (mut me, _) = open(&srv, json!({"roomid": "bud", "key": srv.token("me")})).await;
    let flood = srv.send_many("bud", 50, 10).await;
    let mine = srv
        .send("me", Role::Viewer, "bud", json!({"text": "my own"}))
        .await;
    let _gift = srv
        .send(
            "pub",
            Role::Service,
            "bud",
            json!({"text": "g", "kind": "gift"}),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cmds, _) = danmu_within(&mut viewer, 51, Duration::from_secs(1)).await;
    assert!(
        cmds.len() < flood.len(),
        "the flood was cut: {}",
        cmds.len()
    );
    let (mine_seen, _) = danmu_within(&mut me, 51, Duration::from_secs(1)).await;
    assert!(
        mine_seen.iter().any(|c| id_of(c) == mine.to_string()),
        "the sender sees its own comment"
    );
}

/// The npm client `bilibili-live-ws` (tests/clients, installed by `npm ci`).
struct NodeClient {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl NodeClient {
    fn spawn(srv: &Server, roomid: u32, protover: u8, want: usize) -> Self {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients");
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("sub_client.js"))
            .arg(format!("ws://{}/sub", srv.addr))
            .arg(roomid.to_string())
            .arg(protover.to_string())
            .arg(want.to_string())
            .current_dir(&dir)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node (tests/clients: npm ci)");
        let stdout = child.stdout.take().unwrap();
        Self {
            child,
            lines: tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
        }
    }

    /// The next event line (30 s at most).
    async fn event(&mut self) -> Option<Value> {
        let line = tokio::time::timeout(Duration::from_secs(30), self.lines.next_line())
            .await
            .ok()?
            .ok()??;
        Some(serde_json::from_str(&line).unwrap())
    }

    /// Events until one of kind `kind`.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let e = self
                .event()
                .await
                .unwrap_or_else(|| panic!("no {kind} event"));
            if e["event"] == kind {
                return e;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node"]
async fn sub_npm_client_bilibili_live_ws_gets_every_comment_of_a_burst_with_protover_2_and_3() {
    let srv = start(|_| {}).await;
    const N: usize = 300;
    let mut zlib = NodeClient::spawn(&srv, 4242, 2, N);
    zlib.until("live").await;
    assert_eq!(zlib.until("heartbeat").await["online"], 1);
    let mut brotli = NodeClient::spawn(&srv, 4242, 3, N);
    brotli.until("live").await;
    assert_eq!(
        brotli.until("heartbeat").await["online"],
        2,
        "heartbeats show the room's count"
    );
    // Room order as the JSON WebSocket shows it.
    let (mut json_ws, _) = connect(&srv.url("4242", "")).await;
    let mut sent = Vec::new();
    let mut texts = Vec::new();
    let srv = &srv;
    for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
        let futs = chunk.iter().map(|i| {
            let text = format!("{i:03} {HOSTILE}");
            async move {
                let id = srv
                    .send(
                        "12345",
                        Role::Service,
                        "4242",
                        json!({ "text": text, "mode": "top", "color": 0xff0000 }),
                    )
                    .await;
                (id, text)
            }
        });
        let mut got = futures::future::join_all(futs).await;
        got.sort();
        for (id, text) in got {
            sent.push(id);
            texts.push(text);
        }
    }
    let (room_order, _) = collect(&mut json_ws, N).await;
    for client in [&mut zlib, &mut brotli] {
        let mut ids = Vec::new();
        let mut wire = Vec::new();
        let mut by_id = std::collections::HashMap::new();
        while ids.len() < N {
            let e = client.event().await.expect("every comment");
            if e["event"] == "wire" {
                wire.extend(
                    e["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string()),
                );
            }
            if e["event"] != "danmu" {
                continue;
            }
            assert_eq!(
                (e["mode"].as_u64(), e["color"].as_u64()),
                (Some(5), Some(0xff0000))
            );
            assert_eq!(
                (e["uid"].as_u64(), e["name"].as_str()),
                (Some(12345), Some("12345"))
            );
            let id = e["id"].as_str().unwrap().to_string();
            by_id.insert(id.clone(), e["text"].as_str().unwrap().to_string());
            ids.push(id);
        }
        while wire.len() < N {
            let e = client.event().await.expect("wire order");
            if e["event"] == "wire" {
                wire.extend(
                    e["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string()),
                );
            }
        }
        let mut sorted = ids.clone();
        sorted.sort_by_key(|s| s.parse::<u64>().unwrap());
        sorted.dedup();
        assert_eq!(sorted, strs(&sent), "every comment once");
        for (id, text) in sent.iter().zip(&texts) {
            assert_eq!(&by_id[&id.to_string()], text, "text intact");
        }
        // In room order on the wire. (bilibili-live-ws 6.3.1 decompresses each
        // message asynchronously, so its own events may swap two messages when
        // the later one inflates first: docs/BILIBILI.md.)
        if let Some(at) = wire.iter().zip(&room_order).position(|(a, b)| a != b) {
            let end = (at + 6).min(N);
            panic!(
                "not in room order from {at}: {:?} vs {:?}",
                &wire[at..end],
                &room_order[at..end]
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(10), client.child.wait())
            .await
            .expect("the client exits once it has them all")
            .unwrap();
        assert!(status.success());
    }
}

/// A `/sub` viewer of a node whose hub missed items that expired from the
/// store before it caught up is closed (1008, as a client too slow for the
/// queue) before any later item reaches it; resuming by cursor then says gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_viewer_of_a_hub_that_missed_expired_items_is_closed_before_later_ones() {
    let lossy = start_lossy().await;
    let srv = &lossy.srv;
    let room = "subcut";
    let (mut c, reply) = open(srv, json!({"roomid": room, "protover": 2})).await;
    assert_eq!(reply["code"], 0);
    lossy.settled(room).await;
    srv.send_many(room, 5, 20).await;
    let (cmds, _) = danmu(&mut c, 5).await;
    assert_eq!(cmds.len(), 5);
    let held = lossy.miss_and_expire(room, 10, 5).await;
    assert_eq!(held.len(), 5);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), next(&mut c))
            .await
            .expect("closed within 10 s")
        {
            Got::Packets(ps) => assert!(
                !ps.iter().any(|p| p.op == Op::Message
                    && serde_json::from_slice::<Value>(&p.body).unwrap()["cmd"] == "DANMU_MSG"),
                "no item after the expired ones reaches the viewer"
            ),
            Got::Closed(code) => {
                assert_eq!(code, Some(1008));
                break;
            }
        }
    }
    // Resuming from the cursor of its auth reply: `"gap":true` (the /sub
    // resume sends nothing of the past then), and live items follow.
    let cursor = reply["cursor"].as_str().unwrap();
    let (mut c2, reply2) = open(
        srv,
        json!({"roomid": room, "protover": 2, "cursor": cursor}),
    )
    .await;
    assert_eq!(reply2["gap"], true, "{reply2}");
    let more = srv.send_many(room, 2, 20).await;
    let (live, _) = danmu(&mut c2, 2).await;
    assert_eq!(live.len(), 2, "{more:?}");
}
