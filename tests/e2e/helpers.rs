//! The end-to-end harness: every test starts its own `danmaku serve` process on
//! port 0 with a fresh data dir, talks to it only over HTTP/WebSocket (black box),
//! and may stop it (SIGTERM), kill it (SIGKILL), restart it on the same data dir
//! and read back the Parquet it left.
//!
//! Every await that could hang has a timeout; when a test panics, the tail of the
//! server's log (stderr, kept in the test's temp dir) is printed.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, Int64Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use futures::{SinkExt, StreamExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_danmaku");

/// How long the server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful stop (SIGTERM, archive everything, exit 0) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Per HTTP request (long polls in these tests wait at most a few seconds).
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);

/// The default color of API.md (white).
pub const WHITE: u64 = 16_777_215;

/// A running (or stopped) server with its own temp dir.
pub struct TestApp {
    /// `http://127.0.0.1:<port>` as printed by the server.
    pub base_url: String,
    /// The `--data-dir` (a fresh temp dir, kept across restarts).
    pub data_dir: PathBuf,
    /// The server's stderr, appended to across restarts.
    pub log_path: PathBuf,
    /// `DANMAKU_AUTH__SECRET` of this server.
    pub secret: String,
    /// Every `DANMAKU_*` variable the server (and `danmaku token`) gets.
    pub env: Vec<(String, String)>,
    pub http: reqwest::Client,
    child: Option<Child>,
    tokens: Mutex<HashMap<(String, String), String>>,
    tmp: tempfile::TempDir,
}

/// An HTTP answer, body parsed as JSON when it is JSON (else `Value::Null`).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn error_code(&self) -> Option<&str> {
        self.json.pointer("/error/code").and_then(Value::as_str)
    }

    /// Panics unless the status is `status`.
    #[track_caller]
    pub fn expect_status(&self, status: u16, what: &str) -> &Self {
        assert_eq!(
            self.status, status,
            "{what}: expected HTTP {status}, got {} with body {}",
            self.status, self.text
        );
        self
    }

    /// `None` when this is the API.md error `status` + `{"error": {"code": code,
    /// "message": <string>}}`, else a description of how it differs.
    pub fn error_mismatch(&self, status: u16, code: &str) -> Option<String> {
        let mut problems = Vec::new();
        if self.status != status {
            problems.push(format!("status {} (want {status})", self.status));
        }
        match self.error_code() {
            Some(c) if c == code => {}
            Some(c) => problems.push(format!("code {c:?} (want {code:?})")),
            None => problems.push(format!("no error.code in body (want {code:?})")),
        }
        if self.error_code().is_some()
            && !self
                .json
                .pointer("/error/message")
                .map(Value::is_string)
                .unwrap_or(false)
        {
            problems.push("error.message missing or not a string".into());
        }
        let content_type = self.header("content-type").unwrap_or_default();
        if !content_type.starts_with("application/json") {
            problems.push(format!(
                "content-type {content_type:?} (want application/json)"
            ));
        }
        if problems.is_empty() {
            None
        } else {
            Some(format!(
                "{}; body: {}",
                problems.join(", "),
                truncate(&self.text, 300)
            ))
        }
    }

    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str, what: &str) {
        if let Some(problem) = self.error_mismatch(status, code) {
            panic!("{what}: {problem}");
        }
    }
}

/// A request body.
pub enum Body {
    None,
    Json(Value),
    /// Raw bytes with an optional Content-Type.
    Raw(Option<&'static str>, Vec<u8>),
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Milliseconds since the Unix epoch by this machine's clock (same as the server's).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Starts a server with the test defaults plus `overrides` (each a full
/// `DANMAKU_<SECTION>__<KEY>` name and its value; an override replaces a default).
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    let tmp = tempfile::Builder::new()
        .prefix("danmaku-e2e-")
        .tempdir()
        .expect("create temp dir");
    let data_dir = tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).expect("create data dir");
    let log_path = tmp.path().join("server.log");
    let secret = format!("e2e-secret-{}", unique_suffix());

    let mut env: Vec<(String, String)> = vec![
        ("DANMAKU_AUTH__SECRET".into(), secret.clone()),
        ("DANMAKU_SERVER__DEMO".into(), "false".into()),
        ("DANMAKU_LIVE__SLICE_MS".into(), "1000".into()),
        ("DANMAKU_ARCHIVE__POLL_MS".into(), "200".into()),
    ];
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }
    let secret = env
        .iter()
        .find(|(k, _)| k == "DANMAKU_AUTH__SECRET")
        .map(|(_, v)| v.clone())
        .unwrap_or(secret);

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("http client");

    let mut app = TestApp {
        base_url: String::new(),
        data_dir,
        log_path,
        secret,
        env,
        http,
        child: None,
        tokens: Mutex::new(HashMap::new()),
        tmp,
    };
    app.launch().await;
    app
}

impl TestApp {
    /// Spawns `danmaku serve` on the data dir, waits for `listening on ...` and a
    /// 200 from `/healthz`.
    async fn launch(&mut self) {
        assert!(self.child.is_none(), "launch while a server is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        self.apply_env(&mut cmd, None);
        let mut child = cmd.spawn().expect("spawn danmaku serve");
        let stdout = child.stdout.take().expect("child stdout");
        let mut lines = BufReader::new(stdout).lines();

        let mut other_lines = Vec::new();
        let found = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => {
                        if let Some(url) = line.trim().strip_prefix("listening on ") {
                            return Some(url.trim().to_string());
                        }
                        other_lines.push(line);
                    }
                    _ => return None,
                }
            }
        })
        .await;
        let url = match found {
            Ok(Some(url)) => url,
            Ok(None) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "server exited ({status:?}) without printing `listening on http://...`; \
                     stdout: {other_lines:?}\nlog tail:\n{}",
                    self.log_tail(60)
                );
            }
            Err(_) => panic!(
                "server did not print `listening on http://...` within {START_TIMEOUT:?}; \
                 stdout: {other_lines:?}\nlog tail:\n{}",
                self.log_tail(60)
            ),
        };
        assert!(
            url.starts_with("http://127.0.0.1:") && url[17..].parse::<u16>().is_ok(),
            "listening line must be `listening on http://127.0.0.1:<port>`, got {url:?}"
        );
        assert!(
            other_lines.is_empty(),
            "server printed other lines on stdout before the listening line: {other_lines:?}"
        );
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        self.base_url = url;
        self.child = Some(child);

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ok = self
                .http
                .get(self.url("/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().as_u16() == 200)
                .unwrap_or(false);
            if ok {
                break;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "server exited ({status}) before /healthz answered 200\nlog tail:\n{}",
                        self.log_tail(60)
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "GET /healthz did not answer 200 within 15 s\nlog tail:\n{}",
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's environment: no inherited `DANMAKU_*`, then ours (with the
    /// secret replaced by `secret` if given).
    fn apply_env(&self, cmd: &mut Command, secret: Option<&str>) {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DANMAKU_") {
                cmd.env_remove(&key);
            }
        }
        for (key, value) in &self.env {
            if key == "DANMAKU_AUTH__SECRET" {
                cmd.env(key, secret.unwrap_or(value));
            } else {
                cmd.env(key, value);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!(
            "ws://{}{}",
            self.base_url.trim_start_matches("http://"),
            path
        )
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("server is running")
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    // ---- tokens -------------------------------------------------------------

    /// A token for `user` with `role` (viewer, service, admin), minted by
    /// `danmaku token` with this server's secret. Cached per (user, role).
    pub async fn token(&self, user: &str, role: &str) -> String {
        let key = (user.to_string(), role.to_string());
        if let Some(t) = self.tokens.lock().unwrap().get(&key) {
            return t.clone();
        }
        let token = self.cli_token(user, role, None).await;
        self.tokens.lock().unwrap().insert(key, token.clone());
        token
    }

    /// A well-formed token signed with another secret.
    pub async fn forged_token(&self, user: &str, role: &str) -> String {
        self.cli_token(user, role, Some("not-the-server-secret-at-all"))
            .await
    }

    async fn cli_token(&self, user: &str, role: &str, secret: Option<&str>) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["token", "--user", user, "--role", role, "--ttl", "1h"])
            .current_dir(self.tmp.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        self.apply_env(&mut cmd, secret);
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .expect("`danmaku token` did not finish within 30 s")
            .expect("run `danmaku token`");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "`danmaku token --user {user} --role {role}` failed ({}): stdout {stdout:?} stderr {:?}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let token = stdout.trim().to_string();
        assert!(
            token.split('.').count() == 3 && !token.contains(char::is_whitespace),
            "`danmaku token` must print just the JWT, got {stdout:?}"
        );
        token
    }

    // ---- HTTP ---------------------------------------------------------------

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(content_type, bytes) => {
                let req = match content_type {
                    Some(ct) => req.header("content-type", ct),
                    None => req,
                };
                req.body(bytes)
            }
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: reading body failed: {e}"));
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, None, Body::None, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::GET, path, None, Body::None, headers)
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(Method::POST, path, token, Body::Json(body), &[])
            .await
    }

    /// `POST /v1/rooms/{room}/danmaku`.
    pub async fn send(&self, token: Option<&str>, room: &str, body: Value) -> Resp {
        self.post(&format!("/v1/rooms/{room}/danmaku"), token, body)
            .await
    }

    /// Sends `text`, asserts 202 `{"id": "<u64>"}` and returns the id.
    pub async fn send_text(&self, token: &str, room: &str, text: &str) -> String {
        self.send_ok(token, room, json!({ "text": text })).await
    }

    /// Sends `body`, asserts 202 `{"id": "<u64>"}` and returns the id.
    pub async fn send_ok(&self, token: &str, room: &str, body: Value) -> String {
        let resp = self.send(Some(token), room, body.clone()).await;
        accepted_id(&resp, &format!("send {body} to {room}"))
    }

    /// `GET /v1/rooms/{room}/danmaku` with the given query; asserts 200 and the
    /// shape `{"items": [...], "cursor": "...", "next_poll_ms": n}`.
    pub async fn poll(
        &self,
        room: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
        wait_ms: Option<u64>,
    ) -> Value {
        let mut query = Vec::new();
        if let Some(c) = cursor {
            query.push(format!("cursor={c}"));
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(w) = wait_ms {
            query.push(format!("wait_ms={w}"));
        }
        let path = if query.is_empty() {
            format!("/v1/rooms/{room}/danmaku")
        } else {
            format!("/v1/rooms/{room}/danmaku?{}", query.join("&"))
        };
        let resp = self.get(&path).await;
        resp.expect_status(200, &format!("GET {path}"));
        let body = resp.json;
        assert!(
            body["items"].is_array(),
            "GET {path}: no items array: {body}"
        );
        assert!(
            body["cursor"].is_string(),
            "GET {path}: no cursor string: {body}"
        );
        assert!(
            body["next_poll_ms"].is_u64(),
            "GET {path}: next_poll_ms must be a non-negative integer: {body}"
        );
        body
    }

    /// The room's current cursor (polling without a cursor).
    pub async fn room_cursor(&self, room: &str) -> String {
        let body = self.poll(room, None, None, None).await;
        body["cursor"].as_str().unwrap().to_string()
    }

    /// Follows the room's cursor from `start` with pages of `limit` until every id
    /// of `expected` was seen or `within` passed; returns every item seen, in
    /// order, and the last cursor.
    pub async fn poll_until(
        &self,
        room: &str,
        start: &str,
        limit: u32,
        expected: &HashSet<String>,
        within: Duration,
    ) -> (Vec<Value>, String) {
        let deadline = Instant::now() + within;
        let mut cursor = start.to_string();
        let mut items: Vec<Value> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut wait_ms = 0;
        loop {
            let page = self
                .poll(room, Some(&cursor), Some(limit), Some(wait_ms))
                .await;
            let page_items = page["items"].as_array().unwrap();
            assert!(
                page_items.len() <= limit as usize,
                "poll returned {} items with limit={limit}",
                page_items.len()
            );
            for item in page_items {
                if let Some(id) = item["id"].as_str() {
                    seen.insert(id.to_string());
                }
                items.push(item.clone());
            }
            cursor = page["cursor"].as_str().unwrap().to_string();
            if expected.iter().all(|id| seen.contains(id)) {
                return (items, cursor);
            }
            if Instant::now() >= deadline {
                return (items, cursor);
            }
            wait_ms = if page_items.is_empty() { 1000 } else { 0 };
        }
    }

    // ---- WebSocket ----------------------------------------------------------

    fn ws_path(room: &str, cursor: Option<&str>, token: Option<&str>) -> String {
        let mut query = Vec::new();
        if let Some(c) = cursor {
            query.push(format!("cursor={c}"));
        }
        if let Some(t) = token {
            query.push(format!("token={t}"));
        }
        if query.is_empty() {
            format!("/v1/rooms/{room}/ws")
        } else {
            format!("/v1/rooms/{room}/ws?{}", query.join("&"))
        }
    }

    /// Opens the room's WebSocket and waits for its hello; panics if refused.
    pub async fn ws(&self, room: &str, cursor: Option<&str>, token: Option<&str>) -> WsClient {
        match self.ws_try(room, cursor, token).await {
            Ok(ws) => ws,
            Err((status, body)) => panic!(
                "WebSocket {} refused: HTTP {status} {body}",
                Self::ws_path(room, cursor, token)
            ),
        }
    }

    /// Opens the room's WebSocket; a refused upgrade gives its status and JSON body.
    pub async fn ws_try(
        &self,
        room: &str,
        cursor: Option<&str>,
        token: Option<&str>,
    ) -> Result<WsClient, (u16, Value)> {
        let url = self.ws_url(&Self::ws_path(room, cursor, token));
        let Ok(connected) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        else {
            panic!("WebSocket {url}: no handshake within 10 s")
        };
        let stream = match connected {
            Ok((stream, _)) => stream,
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                return Err((resp.status().as_u16(), body));
            }
            Err(e) => panic!("WebSocket {url}: {e}"),
        };
        let mut ws = WsClient {
            stream,
            room: room.to_string(),
            hello: Value::Null,
            cursor: String::new(),
            items: Vec::new(),
            replies: VecDeque::new(),
            gaps: Vec::new(),
            frames: Vec::new(),
            closed: false,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let first = ws.next_frame(deadline).await;
        let hello = first.unwrap_or_else(|| {
            if ws.closed {
                panic!("WebSocket {url}: the server closed the connection before sending hello")
            }
            panic!("WebSocket {url}: no hello within 10 s")
        });
        assert_eq!(
            hello["type"], "hello",
            "WebSocket {url}: first message must be hello, got {hello}"
        );
        assert_eq!(hello["room"], room, "hello.room: {hello}");
        let cursor = hello["cursor"]
            .as_str()
            .unwrap_or_else(|| panic!("hello without a cursor string: {hello}"));
        ws.cursor = cursor.to_string();
        ws.hello = hello;
        Ok(ws)
    }

    // ---- process control ----------------------------------------------------

    /// SIGTERM, then waits (60 s) for the process to exit; asserts exit code 0.
    pub async fn stop(&mut self) {
        let pid = self.pid();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
        let mut child = self.child.take().unwrap();
        let exit = tokio::time::timeout(STOP_TIMEOUT, child.wait()).await;
        match exit {
            Ok(Ok(status)) => assert!(
                status.success(),
                "after SIGTERM the server must exit 0, got {status}\nlog tail:\n{}",
                self.log_tail(40)
            ),
            Ok(Err(e)) => panic!("waiting for the server: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "server did not exit within {STOP_TIMEOUT:?} of SIGTERM\nlog tail:\n{}",
                    self.log_tail(40)
                );
            }
        }
    }

    /// SIGKILL (if still alive) and reap.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("server is running");
        let _ = child.start_kill();
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("killed server did not go away within 10 s")
            .expect("wait for killed server");
    }

    /// Starts the server again on the same data dir and environment (new port).
    pub async fn restart(&mut self) {
        self.launch().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- danmaku server log ({}), last 80 lines ----\n{}\n---- end of log ----",
                self.log_path.display(),
                self.log_tail(80)
            );
            if std::env::var_os("DANMAKU_E2E_KEEP").is_some() {
                let path = self.tmp.path().to_path_buf();
                eprintln!("keeping {}", path.display());
                let tmp = std::mem::replace(&mut self.tmp, tempfile::tempdir().unwrap());
                let _ = tmp.keep();
            }
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// Asserts a 202 `{"id": "<u64 as string>"}` and returns the id.
#[track_caller]
pub fn accepted_id(resp: &Resp, what: &str) -> String {
    resp.expect_status(202, what);
    let id = resp.json["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: 202 without a string id: {}", resp.text));
    assert!(
        id.parse::<u64>().is_ok(),
        "{what}: id must be a u64 in a string, got {id:?}"
    );
    id.to_string()
}

/// The ids of `items`, in order.
pub fn ids_of(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|item| {
            item["id"]
                .as_str()
                .unwrap_or_else(|| panic!("item without a string id: {item}"))
                .to_string()
        })
        .collect()
}

/// Panics on any id that occurs twice.
#[track_caller]
pub fn assert_no_duplicates(ids: &[String], what: &str) {
    let mut seen = HashSet::new();
    let dups: Vec<&String> = ids.iter().filter(|id| !seen.insert(*id)).collect();
    assert!(
        dups.is_empty(),
        "{what}: {} duplicate ids, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
}

/// Asserts the API.md item shape.
#[track_caller]
pub fn assert_item_shape(item: &Value, room: &str) {
    assert!(
        item["id"]
            .as_str()
            .map(|s| s.parse::<u64>().is_ok())
            .unwrap_or(false),
        "item id must be a u64 string: {item}"
    );
    assert_eq!(item["room"], room, "item room: {item}");
    assert!(item["user"].is_string(), "item user: {item}");
    assert!(item["ts"].is_i64(), "item ts must be an integer: {item}");
    assert!(
        matches!(
            item["kind"].as_str(),
            Some("comment" | "gift" | "like" | "system")
        ),
        "item kind: {item}"
    );
    assert!(
        matches!(item["mode"].as_str(), Some("scroll" | "top" | "bottom")),
        "item mode: {item}"
    );
    assert!(
        item["color"].as_u64().map(|c| c <= WHITE).unwrap_or(false),
        "item color: {item}"
    );
    assert!(item["text"].is_string(), "item text: {item}");
}

// ---- WebSocket client ---------------------------------------------------------

/// A viewer's WebSocket: accumulates the items of every batch, the last cursor,
/// gaps, and acks/errors (replies) as it reads.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub room: String,
    pub hello: Value,
    /// The last cursor received (hello, batch or gap).
    pub cursor: String,
    /// Every item of every batch, in arrival order.
    pub items: Vec<Value>,
    /// `ack` and `error` messages not yet taken.
    pub replies: VecDeque<Value>,
    pub gaps: Vec<Value>,
    /// Every message received, for diagnostics.
    pub frames: Vec<Value>,
    pub closed: bool,
}

impl WsClient {
    /// Reads one message (handling it) and returns it; `None` on timeout or close.
    pub async fn next_frame(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            if self.closed {
                return None;
            }
            let next = tokio::time::timeout_at(deadline.into(), self.stream.next()).await;
            let msg = match next {
                Err(_) => return None,
                Ok(None) => {
                    self.closed = true;
                    return None;
                }
                Ok(Some(Err(e))) => {
                    self.closed = true;
                    eprintln!("WebSocket read error: {e}");
                    return None;
                }
                Ok(Some(Ok(msg))) => msg,
            };
            let text = match msg {
                Message::Text(t) => t.as_str().to_string(),
                Message::Binary(b) => {
                    panic!(
                        "API.md says text frames; got a binary frame of {} bytes",
                        b.len()
                    )
                }
                Message::Close(_) => {
                    self.closed = true;
                    return None;
                }
                _ => continue,
            };
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("WebSocket frame is not JSON ({e}): {text}"));
            self.handle(&value);
            return Some(value);
        }
    }

    fn handle(&mut self, value: &Value) {
        self.frames.push(value.clone());
        match value["type"].as_str() {
            Some("hello") => {}
            Some("batch") => {
                let items = value["items"]
                    .as_array()
                    .unwrap_or_else(|| panic!("batch without items array: {value}"));
                assert!(
                    !items.is_empty(),
                    "API.md: a batch carries one or more items: {value}"
                );
                let cursor = value["cursor"]
                    .as_str()
                    .unwrap_or_else(|| panic!("batch without cursor: {value}"));
                self.items.extend(items.iter().cloned());
                self.cursor = cursor.to_string();
            }
            Some("gap") => {
                if let Some(c) = value["cursor"].as_str() {
                    self.cursor = c.to_string();
                }
                self.gaps.push(value.clone());
            }
            Some("ack") | Some("error") => self.replies.push_back(value.clone()),
            // Moderation (API.md additions): kept in `frames`.
            Some("delete") | Some("online") => {}
            _ => panic!("unexpected WebSocket message: {value}"),
        }
    }

    /// Reads until at least `n` items arrived in total; false on timeout.
    pub async fn wait_items(&mut self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.items.len() < n {
            if self.next_frame(deadline).await.is_none() {
                return self.items.len() >= n;
            }
        }
        true
    }

    /// Reads whatever arrives during `d` (to catch extra or repeated items).
    pub async fn settle(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while self.next_frame(deadline).await.is_some() {}
    }

    pub async fn send_json(&mut self, value: &Value) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.stream.send(Message::text(value.to_string())),
        )
        .await
        .expect("WebSocket send timed out")
        .expect("WebSocket send failed");
    }

    /// Sends `{"type": "send", "ref": ref_, ...body}` and waits for the ack or
    /// error carrying the same ref.
    pub async fn send_comment(&mut self, ref_: Value, body: Value) -> Value {
        let mut msg = json!({"type": "send", "ref": ref_.clone()});
        for (k, v) in body.as_object().expect("body is an object") {
            msg[k] = v.clone();
        }
        self.send_json(&msg).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(pos) = self.replies.iter().position(|r| r["ref"] == ref_) {
                return self.replies.remove(pos).unwrap();
            }
            if self.next_frame(deadline).await.is_none() {
                panic!(
                    "no ack/error with ref {ref_} within 10 s (closed: {}); frames: {:?}",
                    self.closed,
                    self.frames.iter().rev().take(5).collect::<Vec<_>>()
                );
            }
        }
    }

    pub fn item_ids(&self) -> Vec<String> {
        ids_of(&self.items)
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.close(None)).await;
    }
}

// ---- Parquet ----------------------------------------------------------------

/// One row of the archive.
#[derive(Clone, Debug)]
pub struct ParquetRow {
    pub file: PathBuf,
    pub id: u64,
    pub room: String,
    pub vod: Option<String>,
    pub offset_ms: Option<i64>,
    pub ts: i64,
    pub user: String,
    pub name: Option<String>,
    pub kind: String,
    pub mode: String,
    pub color: u32,
    pub text: String,
}

/// Every `*.parquet` file under `<data_dir>/archive`, sorted.
pub fn parquet_files(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().map(|e| e == "parquet").unwrap_or(false) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join("archive"), &mut out);
    out.sort();
    out
}

/// Every file under `<data_dir>/archive` (for diagnostics).
pub fn archive_listing(data_dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(
                    path.strip_prefix(root)
                        .unwrap_or(&path)
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    let root = data_dir.join("archive");
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// The Arrow schema of one Parquet file.
pub fn parquet_schema(file: &Path) -> SchemaRef {
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap_or_else(|e| panic!("{} is not readable Parquet: {e}", file.display()))
        .schema()
        .clone()
}

/// `rows` (read back from the archive) are exactly `sent` (id -> text), each once.
#[track_caller]
pub fn assert_rows_once(rows: &[ParquetRow], sent: &HashMap<String, String>, what: &str) {
    let mut seen = HashSet::new();
    for r in rows {
        assert!(
            seen.insert(r.id.to_string()),
            "{what}: id {} twice in the archive",
            r.id
        );
        let text = sent
            .get(&r.id.to_string())
            .unwrap_or_else(|| panic!("{what}: unexpected id {} in the archive", r.id));
        assert_eq!(&r.text, text, "{what}: text of {}", r.id);
    }
    assert_eq!(rows.len(), sent.len(), "{what}: rows in the archive");
}

/// The record batches of one Parquet file (panics naming the file when it is
/// not readable).
fn record_batches(file: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(file).unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap_or_else(|e| panic!("{} is not readable Parquet: {e}", file.display()))
        .build()
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        .map(|batch| batch.unwrap_or_else(|e| panic!("{}: {e}", file.display())))
        .collect()
}

/// Every comment row of every Parquet file under `<data_dir>/archive` (the
/// deletion records under `archive/deletions/` are read by [`deletion_ids`]).
pub fn read_parquet(data_dir: &Path) -> Vec<ParquetRow> {
    let deletions = data_dir.join("archive").join("deletions");
    let mut rows = Vec::new();
    for file in parquet_files(data_dir) {
        if file.starts_with(&deletions) {
            continue;
        }
        for batch in record_batches(&file) {
            rows.extend(rows_of(&file, &batch));
        }
    }
    rows
}

fn column(file: &Path, batch: &RecordBatch, name: &str, to: &DataType) -> ArrayRef {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("{}: no column {name:?}", file.display()));
    let col = if let (DataType::Int64, DataType::Timestamp(_, _)) = (to, col.data_type()) {
        arrow::compute::cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
            .unwrap_or_else(|e| panic!("{}: column {name}: {e}", file.display()))
    } else {
        col.clone()
    };
    arrow::compute::cast(&col, to)
        .unwrap_or_else(|e| panic!("{}: column {name} as {to}: {e}", file.display()))
}

fn strings(file: &Path, batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
    let col = column(file, batch, name, &DataType::Utf8);
    let arr = col.as_any().downcast_ref::<StringArray>().unwrap();
    (0..arr.len())
        .map(|i| (!arr.is_null(i)).then(|| arr.value(i).to_string()))
        .collect()
}

fn required(file: &Path, name: &str, v: Option<String>) -> String {
    v.unwrap_or_else(|| panic!("{}: null in non-null column {name}", file.display()))
}

fn rows_of(file: &Path, batch: &RecordBatch) -> Vec<ParquetRow> {
    let ids = column(file, batch, "id", &DataType::UInt64);
    let ids = ids.as_any().downcast_ref::<UInt64Array>().unwrap();
    let offsets = column(file, batch, "offset_ms", &DataType::Int64);
    let offsets = offsets.as_any().downcast_ref::<Int64Array>().unwrap();
    let ts = column(file, batch, "ts", &DataType::Int64);
    let ts = ts.as_any().downcast_ref::<Int64Array>().unwrap();
    let colors = column(file, batch, "color", &DataType::UInt32);
    let colors = colors.as_any().downcast_ref::<UInt32Array>().unwrap();
    let room = strings(file, batch, "room");
    let vod = strings(file, batch, "vod");
    let user = strings(file, batch, "user");
    let name = strings(file, batch, "name");
    let kind = strings(file, batch, "kind");
    let mode = strings(file, batch, "mode");
    let text = strings(file, batch, "text");
    (0..batch.num_rows())
        .map(|i| ParquetRow {
            file: file.to_path_buf(),
            id: ids.value(i),
            room: required(file, "room", room[i].clone()),
            vod: vod[i].clone(),
            offset_ms: (!offsets.is_null(i)).then(|| offsets.value(i)),
            ts: ts.value(i),
            user: required(file, "user", user[i].clone()),
            name: name[i].clone(),
            kind: required(file, "kind", kind[i].clone()),
            mode: required(file, "mode", mode[i].clone()),
            color: colors.value(i),
            text: required(file, "text", text[i].clone()),
        })
        .collect()
}

/// The ids recorded in the deletion files (`<data_dir>/archive/deletions/`).
pub fn deletion_ids(data_dir: &Path) -> Vec<u64> {
    let deletions = data_dir.join("archive").join("deletions");
    let mut ids = Vec::new();
    for file in parquet_files(data_dir) {
        if !file.starts_with(&deletions) {
            continue;
        }
        for batch in record_batches(&file) {
            let col = column(&file, &batch, "id", &DataType::UInt64);
            let col = col.as_any().downcast_ref::<UInt64Array>().unwrap();
            ids.extend(col.iter().flatten());
        }
    }
    ids
}

/// Runs `danmaku archive compact --hour <hour>` with the server's environment
/// (and its data dir, where the embedded Parquet files are); returns stdout.
pub async fn compact_cli(app: &TestApp, hour: &str) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["archive", "compact", "--hour", hour])
        .current_dir(app.data_dir.parent().unwrap_or(&app.data_dir))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DANMAKU_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("DANMAKU_SERVER__DATA_DIR", &app.data_dir);
    cmd.envs(app.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("`danmaku archive compact` did not finish within 60 s")
        .expect("run `danmaku archive compact`");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "`danmaku archive compact --hour {hour}` failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `(YYYY-MM-DD, HH)` of a UTC millisecond timestamp.
pub fn utc_date_hour(ts_ms: i64) -> (String, String) {
    let secs = ts_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{hour:02}"),
    )
}

#[test]
fn utc_date_hour_is_right() {
    assert_eq!(
        utc_date_hour(0),
        ("1970-01-01".to_string(), "00".to_string())
    );
    // 2025-11-24T16:00:00.123Z
    assert_eq!(
        utc_date_hour(1_764_000_000_123),
        ("2025-11-24".to_string(), "16".to_string())
    );
    // 2024-02-29T23:59:59Z
    assert_eq!(
        utc_date_hour(1_709_251_199_000),
        ("2024-02-29".to_string(), "23".to_string())
    );
}

// ---- archive crash tests (issue 6) ----------------------------------------------

impl TestApp {
    /// Waits at most `within` for the server to exit on its own (a deliberate
    /// crash), reaps it and returns its exit status.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("server is running");
        let status = match tokio::time::timeout(within, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the server: {e}"),
            Err(_) => panic!(
                "server did not exit within {within:?}\nlog tail:\n{}",
                self.log_tail(40)
            ),
        };
        self.child = None;
        status
    }
}
