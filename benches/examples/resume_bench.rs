//! Issue 13, item 10's resume target: 50 WebSocket resumes that never read,
//! 20,000 items back, must grow the server's RSS by less than 64 MB
//! (docs/BENCHMARKS.md, "Resumes that never read"). Not a test: run it.
//!
//! ```bash
//! cargo build --release -p danmaku
//! cargo run --release -p danmaku-benches --example resume_bench -- \
//!     [--bin target/release/danmaku] [--items 20000] [--resumes 50] [--watch-secs 8]
//! ```
//!
//! Starts the server binary with the embedded defaults on a fresh data dir
//! (rate limits do not apply: the sender has a service token), sends `--items`
//! comments of 90 characters into one room over 4 WebSockets, reads them back
//! by polling (so all are stored), then opens `--resumes` WebSockets with the
//! cursor from before the first comment, each with a 4 KiB receive buffer and
//! never reading. It samples the server's `VmRSS` every 100 ms for
//! `--watch-secs` (under `live.write_timeout_ms`, 10 s, after which the server
//! drops them), prints RSS before, the peak, and again 20 s after the server
//! dropped them, and checks that a resume that reads still gets every item.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

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

/// `VmRSS` of process `pid`, MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Sends `n` comments to the WebSocket `url` (a service token in it) over
/// `conns` connections, 64 in flight on each, and waits for every ack.
async fn send(url: &str, n: usize, conns: usize) {
    let per = n.div_ceil(conns);
    futures::future::join_all((0..conns).map(|c| async move {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
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
            let Some(Ok(msg)) = rx.next().await else {
                panic!("the sender's WebSocket closed")
            };
            if let Message::Text(t) = msg {
                if t.len() < 200 && t.contains("\"type\":\"ack\"") {
                    acked += 1;
                    window.add_permits(1);
                } else {
                    assert!(!t.contains("\"type\":\"error\""), "{t}");
                }
            }
        }
        let _ = writer.await.unwrap().close().await;
    }))
    .await;
}

/// Every item id of `room` after `cursor`, by polling.
async fn poll_all(http: &reqwest::Client, base: &str, room: &str, cursor: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut at = cursor.to_string();
    loop {
        let v: Value = http
            .get(format!(
                "{base}/v1/rooms/{room}/danmaku?cursor={at}&limit=1000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = v["items"].as_array().unwrap();
        if items.is_empty() {
            return ids;
        }
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        at = v["cursor"].as_str().unwrap().to_string();
    }
}

/// A WebSocket handshake with a 4 KiB receive buffer that never reads after it.
async fn never_reading(addr: &str, path: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr.parse().unwrap()).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[9..12], b"101", "{}", String::from_utf8_lossy(&head));
    s
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = arg(&args, "--bin").unwrap_or_else(|| "target/release/danmaku".into());
    let items = num(&args, "--items", 20_000);
    let resumes = num(&args, "--resumes", 50);
    let watch = Duration::from_secs(num(&args, "--watch-secs", 8) as u64);
    let data = tempfile::tempdir().unwrap();
    let secret = "resume-bench-secret";
    let token = std::process::Command::new(&bin)
        .args([
            "token", "--user", "bench", "--role", "service", "--ttl", "1d",
        ])
        .env("DANMAKU_AUTH__SECRET", secret)
        .output()
        .expect("run danmaku token");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let mut server = tokio::process::Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path().join("d"))
        .env("DANMAKU_AUTH__SECRET", secret)
        .env("DANMAKU_SERVER__DEMO", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server");
    let pid = server.id().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next_line().await.unwrap().expect("listening line");
        if let Some(url) = line.trim().strip_prefix("listening on ") {
            break url.trim().to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = base.trim_start_matches("http://").to_string();
    let ws_base = base.replace("http://", "ws://");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let room = "resume-bench";

    let before: Value = http
        .get(format!("{base}/v1/rooms/{room}/danmaku"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let before = before["cursor"].as_str().unwrap().to_string();
    let t = Instant::now();
    send(
        &format!("{ws_base}/v1/rooms/{room}/ws?token={token}"),
        items,
        4,
    )
    .await;
    let stored = poll_all(&http, &base, room, &before).await;
    assert_eq!(stored.len(), items, "every comment stored");
    println!(
        "sent and stored {items} comments in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss0 = rss_mb(pid);

    let path = format!("/v1/rooms/{room}/ws?cursor={before}");
    let t = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..resumes {
        stalled.push(never_reading(&addr, &path).await);
    }
    let opened = t.elapsed();
    let mut peak = rss0;
    while t.elapsed() < watch {
        peak = peak.max(rss_mb(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the write timeout the server drops them; then 20 s more.
    tokio::time::sleep(
        Duration::from_secs(12).saturating_sub(t.elapsed()) + Duration::from_secs(20),
    )
    .await;
    let after = rss_mb(pid);
    drop(stalled);

    // A resume that reads still gets every item, in order.
    let t = Instant::now();
    let (ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}{path}"))
        .await
        .unwrap();
    let (_, mut rx) = ws.split();
    let mut got = Vec::new();
    while got.len() < items {
        let Some(Ok(Message::Text(m))) = rx.next().await else {
            break;
        };
        let v: Value = serde_json::from_str(m.as_str()).unwrap();
        if v["type"] == "batch" {
            got.extend(
                v["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["id"].as_str().unwrap().to_string()),
            );
        }
    }
    let read = t.elapsed();
    assert!(got == stored, "a reading resume gets every item in order");

    println!("resumes,items,rss_before_mb,rss_peak_mb,growth_mb,rss_20s_after_mb,open_all_ms,reading_resume_ms");
    println!(
        "{resumes},{items},{rss0:.1},{peak:.1},{:.1},{after:.1},{},{}",
        peak - rss0,
        opened.as_millis(),
        read.as_millis()
    );
    println!(
        "target: growth < 64 MB: {}",
        if peak - rss0 < 64.0 { "met" } else { "NOT met" }
    );
    let _ = server.kill().await;
}
