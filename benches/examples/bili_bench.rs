//! Issue 16, item 6: bytes on the wire per delivered comment for the JSON
//! WebSocket, the JSON WebSocket with permessage-deflate, `/sub` with zlib
//! (protover 2) and `/sub` with brotli (protover 3), in one run; and import
//! throughput: a 1,000,000-comment Bilibili XML document into the embedded
//! store, end to end, with the server's peak RSS (docs/BENCHMARKS.md,
//! "Bilibili's protocol and imports"). Not a test: run it.
//!
//! ```bash
//! cargo build --release -p danmaku
//! cargo run --release -p danmaku-benches --example bili_bench -- \
//!     [bytes|parse|import|fanout|all] [--bin target/release/danmaku] [--comments 10000] \
//!     [--rate 1000] [--import 1000000] [--spread] [--viewers 5000] [--secs 20] [--sample 50]
//! ```
//!
//! `fanout`: `--viewers` JSON WebSocket viewers of one room, then (a fresh
//! server) as many `/sub` viewers with protover 3, each run receiving `--rate`
//! comments/s for `--secs` from one publisher WebSocket. Every viewer reads
//! everything; one in `--sample` decodes (JSON, or packets and brotli) and
//! measures each comment's latency from the time in its text. Prints
//! deliveries/s (the sampled viewers' comments scaled to all viewers, and the
//! share of viewers that received as many bytes as the sampled median), p50
//! and p99 latency, and the server's CPU (user + system) per second.
//!
//! `bytes`: one viewer of each kind in one room (raw sockets counting every
//! byte after the handshake), `--comments` comments of 20 characters (mixed
//! CJK and ASCII, like real danmaku) sent at `--rate` per second over HTTP with
//! a service token; bytes per delivered comment = bytes received / comments.
//! The batching (and so the ratio) follows the rate, as on a real room.
//!
//! `parse`: the import's stages in this process (no server, no HTTP): the XML
//! parser alone, the parser plus ids and protobufs, the embedded Bus's
//! publishes alone, the ArchiveStore's upserts alone, and the import handler
//! on an embedded Context without writer and archiver.
//!
//! `import`: writes the document (offsets over 3 hours, 50,000 users) to a
//! temporary file, starts a session, and times `POST /v1/vods/{vod}/import`
//! from the first byte sent to the answer; prints comments/s and the server's
//! `VmHWM` (peak RSS) before and after.

use danmaku_core::model::Danmaku;
use danmaku_core::ports::ArchivedComment;
use danmaku_core::vod::Session;
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name)
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// A field of `/proc/{pid}/status` in MB (`VmRSS`, `VmHWM`).
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| {
            v.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0)
        / 1024.0
}

struct Server {
    child: tokio::process::Child,
    addr: String,
    token: String,
}

async fn start(bin: &str, data: &std::path::Path) -> Server {
    let secret = "bench-secret";
    let token = std::process::Command::new(bin)
        .args([
            "token", "--user", "bench", "--role", "service", "--ttl", "1d",
        ])
        .env("DANMAKU_AUTH__SECRET", secret)
        .output()
        .expect("danmaku token");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("DANMAKU_AUTH__SECRET", secret)
        .env("DANMAKU_SERVER__DEMO", "false")
        .env("DANMAKU_LIVE__DISPLAY_BUDGET_PER_SEC", "1000000")
        .env("DANMAKU_IMPORT__MAX_BYTES", (1u64 << 30).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next_line().await.unwrap().expect("listening line");
        if let Some(url) = line.trim().strip_prefix("listening on http://") {
            break url.to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { child, addr, token }
}

/// A raw WebSocket client: the handshake, then every byte counted.
async fn raw_ws(addr: &str, path: &str, deflate: bool, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ext = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    if !first.is_empty() {
        s.write_all(first).await.unwrap();
    }
    s
}

/// A masked binary frame holding one `/sub` auth packet for room `bench`.
fn sub_auth(protover: u8) -> Vec<u8> {
    sub_auth_room(protover, "bench")
}

/// A masked binary frame holding one `/sub` auth packet.
fn sub_auth_room(protover: u8, room: &str) -> Vec<u8> {
    let body = format!(r#"{{"roomid":"{room}","protover":{protover}}}"#);
    let mut packet = Vec::new();
    packet.extend_from_slice(&((16 + body.len()) as u32).to_be_bytes());
    packet.extend_from_slice(&[0, 16, 0, 1, 0, 0, 0, 7, 0, 0, 0, 1]);
    packet.extend_from_slice(body.as_bytes());
    let mut f = vec![0x82, 0x80 | packet.len() as u8, 1, 2, 3, 4];
    f.extend(
        packet
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
    );
    f
}

/// Reads until the socket has been quiet for `quiet`; returns the bytes read.
async fn drain(mut s: TcpStream, quiet: Duration) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

async fn bytes_per_comment(bin: &str, comments: usize, rate: usize) {
    let data = tempfile::tempdir().unwrap();
    let srv = start(bin, data.path()).await;
    let viewers = [
        (
            "JSON",
            raw_ws(&srv.addr, "/v1/rooms/bench/ws", false, b"").await,
        ),
        (
            "JSON + permessage-deflate",
            raw_ws(&srv.addr, "/v1/rooms/bench/ws", true, b"").await,
        ),
        (
            "/sub zlib (protover 2)",
            raw_ws(&srv.addr, "/sub", false, &sub_auth(2)).await,
        ),
        (
            "/sub brotli (protover 3)",
            raw_ws(&srv.addr, "/sub", false, &sub_auth(3)).await,
        ),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let readers: Vec<_> = viewers
        .into_iter()
        .map(|(name, s)| (name, tokio::spawn(drain(s, Duration::from_secs(3)))))
        .collect();
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/rooms/bench/danmaku", srv.addr);
    let start = Instant::now();
    let tick = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut sends = Vec::with_capacity(comments);
    for i in 0..comments {
        let due = start + tick * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let text = format!(
            "弹幕{:04} 好耶 nice {}",
            i % 10_000,
            ["草", "awsl", "hhh", "233"][i % 4]
        );
        let req = client
            .post(&url)
            .bearer_auth(&srv.token)
            .json(&serde_json::json!({ "text": text }))
            .send();
        sends.push(tokio::spawn(async move {
            req.await.map(|r| r.status().as_u16())
        }));
    }
    let mut accepted = 0;
    for s in sends {
        if matches!(s.await.unwrap(), Ok(202) | Ok(200)) {
            accepted += 1;
        }
    }
    println!(
        "bytes on the wire per delivered comment ({accepted} comments at {rate}/s, one room):"
    );
    for (name, r) in readers {
        let bytes = r.await.unwrap();
        println!(
            "  {name:28} {:8.1} B/comment  ({bytes} bytes)",
            bytes as f64 / accepted as f64
        );
    }
    drop(srv);
}

/// The benchmark's Bilibili XML document of `n` comments: offsets spread
/// over 3 hours, 50,000 user hashes, about 72 bytes a comment. The send
/// times are all `1700000000` (one slice of the room holds everything), or
/// with `spread` `1700000000` plus the offset, as in a real recording.
fn import_document(n: usize, spread: bool) -> String {
    let mut doc = String::with_capacity(n * 72 + 64);
    doc.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><i><chatserver>chat.bilibili.com</chatserver>\n",
    );
    for i in 0..n {
        let offset_ms = (i as u64 * 10_800_000) / n as u64;
        let sent = 1_700_000_000 + if spread { offset_ms / 1000 } else { 0 };
        doc.push_str(&format!(
            "<d p=\"{}.{:03},1,25,16777215,{sent},0,{:08x},{i}\">弹幕 {i} 好耶</d>\n",
            offset_ms / 1000,
            offset_ms % 1000,
            i % 50_000
        ));
    }
    doc.push_str("</i>\n");
    doc
}

/// Prints one stage's rate.
fn stage(what: &str, n: usize, started: Instant) -> f64 {
    let secs = started.elapsed().as_secs_f64();
    println!("  {what:<58} {n} in {secs:.2} s: {:.0}/s", n as f64 / secs);
    secs
}

/// A Context of embedded adapters under `dir` (as `danmaku serve` builds it,
/// without its writer and archiver), a session of room `imp` started 4 hours
/// ago, and that session.
async fn embedded_vod(dir: &std::path::Path) -> (danmaku_core::context::Context, Session) {
    let mut s = danmaku_core::config::Settings::default();
    s.server.data_dir = dir.to_path_buf();
    s.server.demo = false;
    s.auth.secret.0 = "bench-secret".into();
    s.import.max_bytes = 1 << 30;
    let ctx = danmaku_embedded::testkit::context(s);
    let session = Session {
        vod: "imp-vod".into(),
        room: "imp".into(),
        started_at: danmaku_core::now_ms() - 4 * 3_600_000,
        ended_at: None,
        latency_ms: 0,
        video_url: None,
    };
    ctx.archive.create_session(&session).await.unwrap();
    (ctx, session)
}

/// Publishes `payloads` to room `imp` in batches of 4,096, as the import does.
async fn publish_batches(bus: &dyn danmaku_core::ports::Bus, payloads: &[bytes::Bytes]) {
    for part in payloads.chunks(4096) {
        let batch = part
            .iter()
            .map(|b| ("imp".to_string(), b.clone()))
            .collect();
        bus.publish_batch(batch).await.unwrap();
    }
}

/// `parse`: where an import's time goes, stage by stage, in this process (no
/// HTTP, no server): the XML parser alone over the document in memory; the
/// parser plus what the import makes of each entry (its id, the comment and
/// its protobuf); the embedded Bus's publishes alone and the ArchiveStore's
/// upserts alone (4,096-comment chunks, as the import sends them); and the
/// import handler itself on an embedded Context whose writer and archiver do
/// not run (so the difference to `import` is theirs and HTTP's).
async fn import_stages(n: usize, spread: bool) {
    use danmaku_replay_api::import::{entry_id, Parser};
    let doc = import_document(n, spread);
    println!(
        "import stages, {n} comments ({:.1} MB of XML), in process:",
        doc.len() as f64 / 1e6
    );
    let read = || tokio::io::BufReader::with_capacity(64 << 10, doc.as_bytes());
    let t = Instant::now();
    let mut p = Parser::new(read(), 400);
    let mut count = 0;
    while p.next().await.unwrap().is_some() {
        count += 1;
    }
    stage("parse (quick-xml -> entries)", count, t);
    let dir = tempfile::tempdir().unwrap();
    let (ctx, session) = embedded_vod(&dir.path().join("stages")).await;
    let t = Instant::now();
    let mut p = Parser::new(read(), 400);
    let mut rows = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    while let Some(e) = p.next().await.unwrap() {
        let item = Danmaku {
            id: entry_id(&session.vod, session.started_at, &e),
            room: session.room.clone(),
            user: e.user,
            name: e.name,
            ts_ms: e.sent_ms.unwrap_or(session.started_at + e.offset_ms),
            kind: e.kind as i32,
            mode: e.mode as i32,
            color: e.color,
            text: e.text,
            vod: Some(session.vod.clone()),
            offset_ms: Some(e.offset_ms),
            ..Default::default()
        };
        payloads.push(item.encode_bytes());
        rows.push(ArchivedComment {
            vod: session.vod.clone(),
            offset_ms: e.offset_ms,
            item,
        });
    }
    stage("parse + id + comment + protobuf", rows.len(), t);
    let t = Instant::now();
    for part in payloads.chunks(4096) {
        let publishes = part.iter().map(|b| ctx.bus.publish("imp", b.clone()));
        for r in futures::future::join_all(publishes).await {
            r.unwrap();
        }
    }
    stage(
        "embedded Bus publish (4,096 single publishes at once)",
        n,
        t,
    );
    let t = Instant::now();
    publish_batches(&*ctx.bus, &payloads).await;
    stage(
        "embedded Bus publish_batch (4,096 per batch, as the import)",
        n,
        t,
    );
    // The same with a consumer group draining and committing meanwhile, as the
    // writer of a server does (8,192 records a poll); timed until it caught up.
    let mut consumer = ctx.bus.consumer("bench-drain").await.unwrap();
    while !consumer
        .poll(8192, Duration::from_millis(200))
        .await
        .unwrap()
        .is_empty()
    {}
    let t = Instant::now();
    let drain = tokio::spawn(async move {
        let (mut got, mut commits) = (0usize, 0usize);
        while got < n {
            let recs = consumer.poll(8192, Duration::from_secs(5)).await.unwrap();
            if recs.is_empty() {
                break;
            }
            got += recs.len();
            let last = recs
                .iter()
                .map(|r| r.position)
                .max_by_key(|p| p.offset)
                .unwrap();
            consumer.commit(&[last]).await.unwrap();
            commits += 1;
        }
        (got, commits)
    });
    publish_batches(&*ctx.bus, &payloads).await;
    let published = t.elapsed();
    let (got, commits) = drain.await.unwrap();
    println!(
        "    (published in {:.2} s; the consumer got {got} in {commits} polls + commits)",
        published.as_secs_f64()
    );
    stage(
        "  ... with a consumer draining and committing meanwhile",
        got,
        t,
    );
    let t = Instant::now();
    for part in rows.chunks(4096) {
        ctx.archive.upsert_comments(part).await.unwrap();
    }
    stage("ArchiveStore upsert (one transaction per 4,096)", n, t);
    let t = Instant::now();
    for part in rows.chunks(4096) {
        ctx.archive.upsert_comments(part).await.unwrap();
    }
    stage("ArchiveStore upsert again (all duplicates)", n, t);
    drop((rows, payloads, ctx));
    // The handler, through the replay router, on a fresh Context.
    let (ctx, session) = embedded_vod(&dir.path().join("handler")).await;
    let token = ctx.signer.issue(
        "bench",
        None,
        danmaku_core::auth::Role::Service,
        danmaku_core::now_ms() / 1000,
        3600,
    );
    let ingest = danmaku_ingest::Ingest::new(ctx.clone()).unwrap();
    let app = danmaku_replay_api::router(danmaku_replay_api::Replay::new(ctx, ingest));
    for round in [
        "import handler (no writer, no archiver)",
        "the same document again (all skipped)",
    ] {
        let req = axum::http::Request::post(format!("/v1/vods/{}/import", session.vod))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/xml")
            .body(axum::body::Body::from(doc.clone()))
            .unwrap();
        let t = Instant::now();
        let resp = tower::ServiceExt::oneshot(app.clone(), req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        stage(round, n, t);
        println!("    -> {status} {}", String::from_utf8_lossy(&body));
    }
}

async fn import_throughput(bin: &str, n: usize, spread: bool) {
    let data = tempfile::tempdir().unwrap();
    let doc_path = data.path().join("import.xml");
    std::fs::write(&doc_path, import_document(n, spread)).unwrap();
    let size = std::fs::metadata(&doc_path).unwrap().len();
    let srv = start(bin, &data.path().join("d")).await;
    let pid = srv.child.id().unwrap();
    let client = reqwest::Client::new();
    let session: Value = client
        .post(format!("http://{}/v1/rooms/imp/sessions", srv.addr))
        .bearer_auth(&srv.token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let vod = session["vod"].as_str().expect("a session").to_string();
    let body = std::fs::read(&doc_path).unwrap();
    let (rss0, hwm0) = (status_mb(pid, "VmRSS"), status_mb(pid, "VmHWM"));
    let started = Instant::now();
    let resp = client
        .post(format!("http://{}/v1/vods/{vod}/import", srv.addr))
        .bearer_auth(&srv.token)
        .header("content-type", "application/xml")
        .body(body)
        .timeout(Duration::from_secs(1800))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let answer: Value = resp.json().await.unwrap_or_default();
    let secs = started.elapsed().as_secs_f64();
    let imported = answer["imported"].as_u64().unwrap_or(0);
    println!(
        "import of {n} comments ({:.1} MB): HTTP {status} {answer} in {secs:.2} s: {:.0} comments/s",
        size as f64 / 1e6,
        imported as f64 / secs
    );
    println!(
        "  server RSS before {rss0:.1} MB (peak so far {hwm0:.1} MB), peak after {:.1} MB, now {:.1} MB",
        status_mb(pid, "VmHWM"),
        status_mb(pid, "VmRSS")
    );
    // The same comments through the rest of the durable path: the writer
    // takes the Bus's copies into the SliceStore (`danmaku_writer_records_total`).
    let writer_total = || async {
        let text = client
            .get(format!("http://{}/metrics", srv.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("danmaku_writer_records_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    loop {
        let stored = writer_total().await;
        if stored >= imported {
            println!(
                "  the writer had stored all {stored} Bus records in the SliceStore {:.2} s after the first byte",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            println!("  the writer had stored {stored} of {imported} after 600 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(srv);
}

/// One viewer's reading: bytes, and for a sampled viewer, the comments
/// decoded and their latencies (µs).
#[derive(Default)]
struct Reading {
    bytes: u64,
    comments: u64,
    latencies: Vec<u64>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The send time in a comment's text (`t=<µs> ...`).
/// The send times of the comments in a JSON body: each JSON string that starts
/// with `t=<µs>` (not one inside another string, whose quote is escaped, as in
/// `DANMU_MSG`'s `extra`).
fn send_times(body: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = body[i..].windows(3).position(|w| w == b"\"t=") {
        let start = i + at;
        i = start + 3;
        if start > 0 && body[start - 1] == b'\\' {
            continue;
        }
        let digits = body[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        if let Some(t) = std::str::from_utf8(&body[i..i + digits])
            .ok()
            .and_then(|d| d.parse().ok())
        {
            out.push(t);
        }
    }
    out
}

#[test]
fn send_times_skip_escaped_strings() {
    let body = br#"{"info":[[0,{"extra":"{\"content\":\"t=5 x\"}"}],"t=17 a",["t=x"]],"t":"t=18"}"#;
    assert_eq!(send_times(body), vec![17, 18]);
}

/// Reads a viewer's socket until `stop`, decoding when `sample`.
async fn view(
    mut s: TcpStream,
    sub: bool,
    sample: bool,
    stop: tokio_util::sync::CancellationToken,
) -> Reading {
    let mut r = Reading::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = vec![0u8; 1 << 16];
    loop {
        let n = tokio::select! {
            n = s.read(&mut tmp) => match n { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = stop.cancelled() => break,
        };
        r.bytes += n as u64;
        if !sample {
            continue;
        }
        buf.extend_from_slice(&tmp[..n]);
        // Whole WebSocket frames (server frames are unmasked).
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, hdr) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                n if n < 126 => (n as usize, 2),
                _ => break,
            };
            if buf.len() < hdr + len {
                break;
            }
            let op = buf[0] & 0x0f;
            let payload = &buf[hdr..hdr + len];
            let now = now_us();
            // The send times in the message, found the same cheap way in both
            // protocols (a scan for the texts' `"t=` prefix, not a JSON parse
            // into values, which for `DANMU_MSG`'s larger bodies made the
            // harness, not the server, the slower reader).
            let mut sent: Vec<u64> = Vec::new();
            if sub && op == 2 {
                if let Ok(packets) = danmaku_live::bili::packet::decode_message(payload, 1 << 24) {
                    for p in packets {
                        // Only the comments' `DANMU_MSG` carry a `"t=` string.
                        sent.extend(send_times(&p.body));
                    }
                }
            } else if !sub && op == 1 && payload.starts_with(b"{\"type\":\"batch\"") {
                sent.extend(send_times(payload));
            }
            for t in sent {
                r.comments += 1;
                r.latencies.push(now.saturating_sub(t));
            }
            buf.drain(..hdr + len);
        }
    }
    r
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command: state is field 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

async fn fanout_run(bin: &str, sub: bool, viewers: usize, rate: usize, secs: u64, sample: usize) {
    let data = tempfile::tempdir().unwrap();
    let srv = start(bin, data.path()).await;
    let pid = srv.child.id().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::with_capacity(viewers);
    for i in 0..viewers {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let (addr, stop) = (srv.addr.clone(), stop.clone());
        let sample = i % sample.max(1) == 0;
        tasks.push(tokio::spawn(async move {
            let s = if sub {
                raw_ws(&addr, "/sub", false, &sub_auth_room(3, "fan")).await
            } else {
                raw_ws(&addr, "/v1/rooms/fan/ws", false, b"").await
            };
            drop(permit);
            view(s, sub, sample, stop).await
        }));
    }
    // Every viewer connected (the permits all returned).
    let _ = sem.acquire_many(200).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let url = format!("ws://{}/v1/rooms/fan/ws?token={}", srv.addr, srv.token);
    let (publisher, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut tx, mut rx) = futures::StreamExt::split(publisher);
    tokio::spawn(async move { while let Some(Ok(_)) = futures::StreamExt::next(&mut rx).await {} });
    let cpu0 = cpu_secs(pid);
    let started = Instant::now();
    let total = rate * secs as usize;
    let tick = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    for i in 0..total {
        tokio::time::sleep_until((started + tick * i as u32).into()).await;
        let text = format!("t={} 弹幕 {i}", now_us());
        let msg = serde_json::json!({"type": "send", "ref": i, "text": text}).to_string();
        futures::SinkExt::send(&mut tx, tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
    }
    let sending = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_secs(pid) - cpu0;
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    let mut readings = Vec::with_capacity(viewers);
    for t in tasks {
        readings.push(t.await.unwrap());
    }
    let sampled: Vec<&Reading> = readings.iter().step_by(sample.max(1)).collect();
    let mut bytes: Vec<u64> = sampled.iter().map(|r| r.bytes).collect();
    bytes.sort();
    let median = bytes[bytes.len() / 2];
    let complete = readings
        .iter()
        .filter(|r| r.bytes * 100 >= median * 99)
        .count();
    let per_viewer = sampled.iter().map(|r| r.comments).sum::<u64>() as f64 / sampled.len() as f64;
    let mut lat: Vec<u64> = sampled
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "{:18} {viewers} viewers x {rate}/s for {sending:.1} s: {:.2} M deliveries/s ({:.1} % of offered; {complete}/{viewers} viewers got the median bytes), p50 {:.1} ms, p99 {:.1} ms, server CPU {:.2} s/s",
        if sub { "/sub brotli" } else { "JSON WebSocket" },
        per_viewer * viewers as f64 / sending / 1e6,
        per_viewer / total as f64 * 100.0,
        pct(0.5),
        pct(0.99),
        cpu / elapsed,
    );
    drop(srv);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args
        .first()
        .map(String::as_str)
        .unwrap_or("all")
        .to_string();
    let bin = arg(&args, "--bin").unwrap_or_else(|| "target/release/danmaku".into());
    if matches!(what.as_str(), "bytes" | "all") {
        bytes_per_comment(
            &bin,
            num(&args, "--comments", 10_000),
            num(&args, "--rate", 1000),
        )
        .await;
    }
    // `--spread`: send times follow the offsets (see `import_document`).
    let spread = args.iter().any(|a| a == "--spread");
    if matches!(what.as_str(), "parse" | "all") {
        import_stages(num(&args, "--import", 1_000_000), spread).await;
    }
    if matches!(what.as_str(), "import" | "all") {
        import_throughput(&bin, num(&args, "--import", 1_000_000), spread).await;
    }
    if matches!(what.as_str(), "fanout" | "all") {
        let (viewers, rate) = (num(&args, "--viewers", 5000), num(&args, "--rate", 1000));
        let (secs, sample) = (num(&args, "--secs", 20) as u64, num(&args, "--sample", 50));
        fanout_run(&bin, false, viewers, rate, secs, sample).await;
        fanout_run(&bin, true, viewers, rate, secs, sample).await;
    }
}
