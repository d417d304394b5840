//! Issue 13, the edge (items 1, 2, 8): one test per attack, each asserting its
//! bound on the embedded defaults, over raw TCP where a client library would
//! hide what the server did (a reset instead of an answer, an empty body).
//!
//! - Bodies sent byte by byte by 100 connections grow the server's RSS by less
//!   than 64 MB (each frame used to pin hyper's read buffer: ~16 MB apiece).
//! - A body sent slowly gets `408` with the JSON error within its deadline.
//! - An oversized body (declared or chunked) gets a readable `413` JSON while
//!   the client is still sending, never a reset.
//! - A request head past `server.max_header_bytes` gets `431` JSON; a malformed
//!   request gets `400` JSON, also on a keep-alive connection.
//! - Past `server.max_connections_per_ip` a new connection gets `503
//!   unavailable`, while `/healthz` from a new connection still answers.
//! - Pages carry CSP (with `frame-ancestors`) and `nosniff`.
//! - `/metrics` with `server.metrics_token` refuses requests without it; with
//!   `server.metrics_listen` it moves to its own address.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// What a raw exchange got: the answer as far as it came, and how reading ended.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The read error that ended the exchange (a reset), if any.
    error: Option<String>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// Panics unless this is API.md's error: `status`, JSON `{"error": {"code",
    /// "message"}}`, read whole (no reset).
    #[track_caller]
    fn expect_error(&self, status: u16, code: &str, what: &str) {
        let json = self.json();
        assert!(
            self.status == status
                && json.pointer("/error/code").and_then(Value::as_str) == Some(code)
                && json.pointer("/error/message").is_some_and(Value::is_string)
                && self
                    .header("content-type")
                    .is_some_and(|c| c.starts_with("application/json")),
            "{what}: want {status} {code} as JSON; got {self:?} (body {})",
            String::from_utf8_lossy(&self.body)
        );
    }
}

fn addr(app: &TestApp) -> String {
    app.base_url.trim_start_matches("http://").to_string()
}

async fn connect(app: &TestApp) -> TcpStream {
    let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr(app)))
        .await
        .expect("connect timed out")
        .expect("connect");
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one answer: the head, then `content-length` bytes of body (or up to
/// the close), within `within`.
async fn read_answer(s: &mut TcpStream, within: Duration) -> Raw {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut error = None;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if len.is_some_and(|n| buf.len() >= end + 4 + n) {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => {
                error = Some("timed out".into());
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match end {
        Some(end) => (
            String::from_utf8_lossy(&buf[..end]).to_string(),
            buf[end + 4..].to_vec(),
        ),
        None => (String::from_utf8_lossy(&buf).to_string(), Vec::new()),
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut raw = Raw {
        status,
        head,
        body,
        error,
    };
    if let Some(n) = raw
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        raw.body.truncate(n);
    }
    raw
}

/// Sends `request` on a new connection and reads the answer.
async fn exchange(app: &TestApp, request: &[u8]) -> Raw {
    let mut s = connect(app).await;
    // The server may answer and close before all of it is written.
    let _ = s.write_all(request).await;
    read_answer(&mut s, Duration::from_secs(5)).await
}

/// `VmRSS` of `pid`, bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS in /proc status")
        * 1024
}

fn post_head(path: &str, token: &str, extra: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_sent_byte_by_byte_do_not_grow_rss() {
    const CONNECTIONS: usize = 100;
    const BODY: usize = 2000;
    let app = spawn_app(&[]).await;
    let token = app.token("edge-rss", "service").await;
    let pid = app.pid();
    // Warm up the path once, so lazily built state is not counted.
    app.send_ok(&token, "edge-rss", serde_json::json!({"text": "warm"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_bytes(pid);

    let mut body = br#"{"text":"byte by byte"}"#.to_vec();
    body.resize(BODY, b' ');
    let head = post_head(
        "/v1/rooms/edge-rss/danmaku",
        &token,
        &format!("Content-Length: {BODY}\r\n"),
    );
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut s = connect(&app).await;
        let head = head.clone();
        let body = body.clone();
        clients.push(tokio::spawn(async move {
            s.write_all(&head).await.unwrap();
            for b in &body {
                // One byte per segment (no Nagle), each its own frame.
                if s.write_all(std::slice::from_ref(b)).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            read_answer(&mut s, Duration::from_secs(10)).await
        }));
    }
    let mut peak = before;
    while !clients.iter().all(|c| c.is_finished()) {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak = peak.max(rss_bytes(pid));
    let mut statuses = std::collections::BTreeMap::new();
    for c in clients {
        let raw = c.await.unwrap();
        *statuses.entry(raw.status).or_insert(0) += 1;
    }
    let grew = peak.saturating_sub(before);
    eprintln!(
        "RSS before {} MB, peak {} MB (+{} MB) for {CONNECTIONS} byte-by-byte bodies; answers {statuses:?}",
        before >> 20,
        peak >> 20,
        grew >> 20
    );
    assert_eq!(
        statuses.get(&202),
        Some(&CONNECTIONS),
        "every byte-by-byte body is read and accepted: {statuses:?}"
    );
    assert!(
        grew < 64 << 20,
        "RSS grew by {} MB (bound 64 MB) for {CONNECTIONS} byte-by-byte bodies",
        grew >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_json_within_its_deadline() {
    let app = spawn_app(&[]).await;
    let token = app.token("edge-slow", "service").await;
    let mut s = connect(&app).await;
    s.write_all(&post_head(
        "/v1/rooms/edge-slow/danmaku",
        &token,
        "Content-Length: 200\r\n",
    ))
    .await
    .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let t0 = Instant::now();
    // A byte every half second: far below the minimum rate (256 B/s after 5 s).
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if wr.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(12), async {
        let mut chunk = [0u8; 4096];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let took = t0.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.1 408 ")
            && head.to_ascii_lowercase().contains("connection: close"),
        "want 408 + close, got {text:?}"
    );
    let json: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert_eq!(
        json.pointer("/error/code").and_then(Value::as_str),
        Some("invalid_json"),
        "{text}"
    );
    // Due at 5 s (the rate's grace) + 10 bytes / 256 B/s; never past the
    // 10 s body timeout.
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(10),
        "408 after {took:?}"
    );
}

/// Sends `first`, waits for the server to have answered it, then sends `rest`
/// like a client that uploads its whole body before reading: those writes must
/// not fail (a server that closes at once makes them fail with a broken pipe
/// or a reset, and such a client never reads the answer); then reads.
async fn upload_then_read(app: &TestApp, first: &[u8], rest: &[u8]) -> (Raw, Option<String>) {
    let mut s = connect(app).await;
    s.write_all(first)
        .await
        .expect("write the head and a first part");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut write_error = None;
    for part in rest.chunks(64 * 1024) {
        if let Err(e) = s.write_all(part).await {
            write_error = Some(e.to_string());
            break;
        }
    }
    (
        read_answer(&mut s, Duration::from_secs(5)).await,
        write_error,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_a_readable_413_not_a_reset() {
    let app = spawn_app(&[]).await;
    let token = app.token("edge-big", "service").await;
    let rest = vec![b' '; 512 * 1024];
    for round in 0..5 {
        // Declared too large: answered before the body is read.
        let mut first = post_head(
            "/v1/rooms/edge-big/danmaku",
            &token,
            "Content-Length: 10000000\r\n",
        );
        first.extend_from_slice(&[b' '; 64 * 1024]);
        let (raw, write_error) = upload_then_read(&app, &first, &rest).await;
        raw.expect_error(
            413,
            "payload_too_large",
            &format!("declared, round {round}"),
        );
        assert_eq!(raw.error, None, "declared, round {round}: {raw:?}");
        assert_eq!(
            write_error, None,
            "declared, round {round}: the upload was cut"
        );

        // Chunked: found too large while reading.
        let chunk = |n: usize| {
            let mut out = Vec::new();
            for _ in 0..n {
                out.extend_from_slice(b"400\r\n");
                out.extend_from_slice(&[b' '; 1024]);
                out.extend_from_slice(b"\r\n");
            }
            out
        };
        let mut first = post_head(
            "/v1/rooms/edge-big/danmaku",
            &token,
            "Transfer-Encoding: chunked\r\n",
        );
        first.extend_from_slice(&chunk(8));
        let (raw, write_error) = upload_then_read(&app, &first, &chunk(256)).await;
        raw.expect_error(413, "payload_too_large", &format!("chunked, round {round}"));
        assert_eq!(raw.error, None, "chunked, round {round}: {raw:?}");
        assert_eq!(
            write_error, None,
            "chunked, round {round}: the upload was cut"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hypers_own_refusals_are_json() {
    let app = spawn_app(&[]).await;
    // A head past server.max_header_bytes (16 KiB), still being sent.
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Big: ".to_vec();
    req.extend_from_slice(&[b'a'; 64 * 1024]);
    req.extend_from_slice(b"\r\n\r\n");
    exchange(&app, &req)
        .await
        .expect_error(431, "payload_too_large", "oversized head");

    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: edge\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\nBad Header\r\n\r\n",
    ] {
        exchange(&app, bad).await.expect_error(
            400,
            "invalid_json",
            &format!("malformed {:?}", String::from_utf8_lossy(bad)),
        );
    }

    // Mid keep-alive: a good request, then a bad one on the same connection.
    let mut s = connect(&app).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut s, Duration::from_secs(5)).await;
    assert_eq!(first.status, 200, "{first:?}");
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    read_answer(&mut s, Duration::from_secs(5))
        .await
        .expect_error(400, "invalid_json", "malformed after a good request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_per_ip_cap_new_connections_get_503_but_healthz_answers() {
    // The default cap: 1,024 connections from one address.
    const CAP: usize = 1024;
    let app = spawn_app(&[]).await;
    let mut held = Vec::with_capacity(CAP);
    for _ in 0..CAP {
        held.push(connect(&app).await);
    }
    // Connections are admitted in the order they were accepted, so the next
    // one is past the cap (the harness's own pooled connection counts too).
    let refused = exchange(
        &app,
        b"GET /v1/rooms/edge-cap/danmaku HTTP/1.1\r\nHost: edge\r\n\r\n",
    )
    .await;
    refused.expect_error(503, "unavailable", "past the per-address cap");
    assert!(refused.header("retry-after").is_some(), "{refused:?}");

    let t0 = Instant::now();
    let health = exchange(&app, b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    assert_eq!(health.status, 200, "/healthz at the cap: {health:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let ready = exchange(&app, b"GET /readyz HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    assert_eq!(ready.status, 200, "/readyz at the cap: {ready:?}");

    let metrics = exchange(&app, b"GET /metrics HTTP/1.1\r\nHost: edge\r\n\r\n").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines().any(|l| l.starts_with(
            "danmaku_http_connections_refused_total{reason=\"max_connections_per_ip\"}"
        )),
        "refusals are counted: {}",
        truncate(&text, 2000)
    );

    // Below the cap again, everything answers.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = exchange(
            &app,
            b"GET /v1/rooms/edge-cap/danmaku HTTP/1.1\r\nHost: edge\r\n\r\n",
        )
        .await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused after closing: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_the_security_headers() {
    let app = spawn_app(&[]).await;
    let page = app.get("/").await;
    page.expect_status(200, "GET /");
    let csp = page.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(
        page.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(page.header("x-frame-options").as_deref(), Some("DENY"));
    // What the page loads under that policy.
    // The page's script and style are hashed files under /assets/ (web/build.mjs).
    let asset = |ext: &str| {
        let end = page.text.find(ext).expect("the page loads an asset") + ext.len();
        let start = page.text[..end]
            .rfind("/assets/")
            .expect("assets live under /assets/");
        page.text[start..end].to_string()
    };
    for (path, ty) in [
        (asset(".js"), "text/javascript"),
        (asset(".css"), "text/css"),
    ] {
        let path = path.as_str();
        let r = app.get(path).await;
        r.expect_status(200, path);
        assert!(
            r.header("content-type").is_some_and(|c| c.starts_with(ty)),
            "{path}: {:?}",
            r.header("content-type")
        );
        assert!(page.text.contains(path), "the page loads {path}");
    }
    assert!(!page.text.contains("<script>"), "no inline script");
    // API answers are never sniffed either.
    let api = app.get("/v1/rooms/edge-page/danmaku").await;
    assert_eq!(
        api.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_with_a_token_refuses_without_it() {
    let app = spawn_app(&[("DANMAKU_SERVER__METRICS_TOKEN", "edge-metrics-token")]).await;
    app.get("/metrics")
        .await
        .expect_error(401, "unauthorized", "/metrics without the token");
    app.get_with("/metrics", &[("authorization", "Bearer not-it")])
        .await
        .expect_error(401, "unauthorized", "/metrics with another token");
    let ok = app
        .get_with(
            "/metrics",
            &[("authorization", "Bearer edge-metrics-token")],
        )
        .await;
    ok.expect_status(200, "/metrics with the token");
    assert!(ok.text.contains("danmaku_"), "{}", truncate(&ok.text, 300));
    // The probes stay open.
    app.get("/healthz").await.expect_status(200, "/healthz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_listener_of_its_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let app = spawn_app(&[("DANMAKU_SERVER__METRICS_LISTEN", &listen)]).await;
    app.get("/metrics")
        .await
        .expect_error(404, "not_found", "/metrics on the public listener");
    let r = app
        .http
        .get(format!("http://{listen}/metrics"))
        .send()
        .await
        .expect("GET /metrics on server.metrics_listen");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().await.unwrap().contains("danmaku_"));
}
