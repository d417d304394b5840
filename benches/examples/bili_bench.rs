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
//!     [bytes|import|all] [--bin target/release/danmaku] [--comments 10000] \
//!     [--rate 1000] [--import 1000000]
//! ```
//!
//! `bytes`: one viewer of each kind in one room (raw sockets counting every
//! byte after the handshake), `--comments` comments of 20 characters (mixed
//! CJK and ASCII, like real danmaku) sent at `--rate` per second over HTTP with
//! a service token; bytes per delivered comment = bytes received / comments.
//! The batching (and so the ratio) follows the rate, as on a real room.
//!
//! `import`: writes the document (offsets over 3 hours, 50,000 users) to a
//! temporary file, starts a session, and times `POST /v1/vods/{vod}/import`
//! from the first byte sent to the answer; prints comments/s and the server's
//! `VmHWM` (peak RSS) before and after.

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

/// A masked binary frame holding one `/sub` auth packet.
fn sub_auth(protover: u8) -> Vec<u8> {
    let body = format!(r#"{{"roomid":"bench","protover":{protover}}}"#);
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

async fn import_throughput(bin: &str, n: usize) {
    let data = tempfile::tempdir().unwrap();
    let doc_path = data.path().join("import.xml");
    {
        let mut doc = String::with_capacity(n * 72 + 64);
        doc.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i><chatserver>chat.bilibili.com</chatserver>\n");
        for i in 0..n {
            let offset_ms = (i as u64 * 10_800_000) / n as u64;
            doc.push_str(&format!(
                "<d p=\"{}.{:03},1,25,16777215,1700000000,0,{:08x},{i}\">弹幕 {i} 好耶</d>\n",
                offset_ms / 1000,
                offset_ms % 1000,
                i % 50_000
            ));
        }
        doc.push_str("</i>\n");
        std::fs::write(&doc_path, doc).unwrap();
    }
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
    if matches!(what.as_str(), "import" | "all") {
        import_throughput(&bin, num(&args, "--import", 1_000_000)).await;
    }
}
