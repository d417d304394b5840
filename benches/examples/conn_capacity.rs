//! Issue 17, item 4: connection capacity of one live node
//! (docs/benchmarks/connections.md). Not a test: run it through
//! `infra/bench/conn_capacity.sh`, which starts the server and passes its pid.
//!
//! ```text
//! conn_capacity --url ws://127.0.0.1:8095 --room cc --viewers 19000 \
//!     --sources 10 --server-pid PID --token SERVICE_TOKEN \
//!     [--rate 10] [--window-secs 20] [--rounds 3] [--connect-conc 2048] [--settle-secs 10]
//! ```
//!
//! What it does, in order:
//!
//! 1. Opens `--viewers` WebSockets to `/v1/rooms/{room}/ws`, each from a
//!    socket bound before connecting to one of `--sources` loopback addresses
//!    (127.0.0.2, 127.0.0.3, ...; each gives its own ~28k ephemeral ports), at
//!    most `--connect-conc` handshakes at once; prints the time and rate.
//! 2. After `--settle-secs`, prints the server's `VmRSS` growth per connection
//!    and, separately, the kernel's: `/proc/net/sockstat` TCP `mem` pages and
//!    `/proc/meminfo` `Slab` before and after (loopback: both ends of every
//!    connection live in this kernel, so that is per client + server pair).
//! 3. `--rounds` times: a steady window of `--window-secs` of broadcast (a
//!    publisher WebSocket with a service token sends `--rate` comments/s; the
//!    delivered share and the latency percentiles of that window are printed),
//!    then a reconnect storm while the broadcast goes on: every viewer drops
//!    its socket at once and reconnects with the last cursor it received
//!    (retrying a `503` after 50-250 ms); prints how long until all had their
//!    `hello` again and the accepted connections/s.
//! 4. Checks every viewer's sequence of comments over the whole run: each
//!    comment carries its number, so a viewer that misses one or sees one
//!    twice (across any reconnect) is counted, and so is every `gap`.
//!
//! Latency is the viewer's receive time minus the send time written in the
//! comment (same machine, same clock).

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig, Message};

const RELAXED: Ordering = Ordering::Relaxed;
/// Most comments one run can number (a viewer keeps a bit per comment).
const MAX_SEQ: usize = 1 << 13;
/// Latency buckets of 100 µs: up to 30 s, then one overflow bucket.
const BUCKETS: usize = 300_000;
/// Phases: 0 = none, then for each round a steady window and a storm.
const PHASES: usize = 64;
/// `epoch` value that tells every viewer to stop.
const STOP: u32 = u32::MAX;

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

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A `kB` field of a `/proc` file such as `/proc/PID/status` or `/proc/meminfo`.
fn proc_kb(path: &str, field: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The kernel's view: TCP `mem` (pages), `inuse`, `tw` of `/proc/net/sockstat`,
/// and `Slab` / `SUnreclaim` of `/proc/meminfo` (kB).
#[derive(Clone, Copy, Debug, Default)]
struct Kernel {
    tcp_mem_pages: u64,
    tcp_inuse: u64,
    tcp_tw: u64,
    slab_kb: u64,
    sunreclaim_kb: u64,
}

fn kernel() -> Kernel {
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let mut k = Kernel::default();
    if let Some(line) = sockstat.lines().find(|l| l.starts_with("TCP:")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        for w in f.windows(2) {
            let v = w[1].parse().unwrap_or(0);
            match w[0] {
                "inuse" => k.tcp_inuse = v,
                "tw" => k.tcp_tw = v,
                "mem" => k.tcp_mem_pages = v,
                _ => {}
            }
        }
    }
    k.slab_kb = proc_kb("/proc/meminfo", "Slab:");
    k.sunreclaim_kb = proc_kb("/proc/meminfo", "SUnreclaim:");
    k
}

/// `(ListenOverflows, TCPSynRetrans)` of `/proc/net/netstat`: connections the
/// listener's accept queue had no room for, and SYNs sent again (a client
/// whose SYN was dropped waits 1 s, then 3 s, before it tries again).
fn listen_overflows() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    if lines.len() < 2 {
        return (0, 0);
    }
    let names = lines[0].split_whitespace();
    let values = lines[1].split_whitespace();
    let mut out = (0, 0);
    for (n, v) in names.zip(values) {
        match n {
            "ListenOverflows" => out.0 = v.parse().unwrap_or(0),
            "TCPSynRetrans" => out.1 = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    out
}

/// CPU time of process `pid` (user + system), seconds.
fn cpu_secs(pid: usize) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counters shared by the viewers, the publisher and the report.
struct Shared {
    /// Phase each comment was sent in (by its number).
    phase_of_seq: Vec<AtomicU8>,
    /// Latency histogram per phase (100 µs buckets).
    hist: Vec<Vec<AtomicU32>>,
    /// Comments delivered per phase (all viewers).
    delivered: Vec<AtomicU64>,
    /// Comments sent per phase.
    sent: Vec<AtomicU64>,
    /// Viewers with an open WebSocket (their `hello` received).
    open: AtomicUsize,
    /// Viewers back after the current storm.
    back: AtomicUsize,
    /// Milliseconds after the storm's start at which each viewer was back.
    back_ms: Mutex<Vec<u32>>,
    /// Start of the current storm, µs since the epoch.
    storm_start_us: AtomicU64,
    refused_503: AtomicU64,
    connect_errors: AtomicU64,
    closed_by_server: AtomicU64,
    gaps: AtomicU64,
    reordered: AtomicU64,
    duplicates: AtomicU64,
    last_seq_sent: AtomicU32,
    phase: AtomicU8,
    stop_publisher: AtomicBool,
    acks: AtomicU64,
    send_errors: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Self {
            phase_of_seq: (0..MAX_SEQ).map(|_| AtomicU8::new(0)).collect(),
            hist: (0..PHASES)
                .map(|_| (0..=BUCKETS).map(|_| AtomicU32::new(0)).collect())
                .collect(),
            delivered: (0..PHASES).map(|_| AtomicU64::new(0)).collect(),
            sent: (0..PHASES).map(|_| AtomicU64::new(0)).collect(),
            open: AtomicUsize::new(0),
            back: AtomicUsize::new(0),
            back_ms: Mutex::new(Vec::new()),
            storm_start_us: AtomicU64::new(0),
            refused_503: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            closed_by_server: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            last_seq_sent: AtomicU32::new(0),
            phase: AtomicU8::new(0),
            stop_publisher: AtomicBool::new(false),
            acks: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        }
    }

    /// Percentile `p` (0..=100) of phase `ph`'s latencies, ms.
    fn percentile(&self, ph: usize, p: f64) -> f64 {
        let h = &self.hist[ph];
        let total: u64 = h.iter().map(|b| b.load(RELAXED) as u64).sum();
        if total == 0 {
            return f64::NAN;
        }
        let want = ((total as f64) * p / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, b) in h.iter().enumerate() {
            seen += b.load(RELAXED) as u64;
            if seen >= want {
                return (i as f64 + 1.0) / 10.0;
            }
        }
        f64::INFINITY
    }
}

/// Why a connection attempt failed.
enum OpenError {
    /// `503` (e.g. `live.max_concurrent_resumes`): retry soon.
    Busy,
    Other(String),
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens one WebSocket from `src` (bound before connecting) to `server`.
async fn open(src: Ipv4Addr, server: SocketAddr, url: &str) -> Result<Ws, OpenError> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| OpenError::Other(e.to_string()))?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(|e| OpenError::Other(format!("bind {src}: {e}")))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| OpenError::Other(format!("connect: {e}")))?;
    // Small buffers: 100,000 viewers in one process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(r)) if r.status().as_u16() == 503 => Err(OpenError::Busy),
        Err(e) => Err(OpenError::Other(e.to_string())),
    }
}

/// What one viewer received: a bit per comment number, how many, and a hash
/// of their order (every viewer of the room must get the same sequence).
struct Seen {
    bits: Vec<u64>,
    count: u32,
    order: u64,
    max: u32,
}

impl Seen {
    fn new() -> Self {
        Self {
            bits: vec![0; MAX_SEQ / 64],
            count: 0,
            order: 0xcbf2_9ce4_8422_2325,
            max: 0,
        }
    }
}

/// What a viewer does with one message; `Err` = reconnect (with the cursor).
fn on_message(
    text: &str,
    sh: &Shared,
    cursor: &mut Option<String>,
    seen: &mut Seen,
) -> Result<(), ()> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Ok(());
    };
    match v["type"].as_str() {
        Some("batch") => {
            let now = now_us();
            if let Some(items) = v["items"].as_array() {
                for it in items {
                    let Some(t) = it["text"].as_str() else {
                        continue;
                    };
                    let mut parts = t.split(' ');
                    if parts.next() != Some("cc") {
                        continue;
                    }
                    let seq: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                    let sent: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(now);
                    if seq == 0 || seq as usize >= MAX_SEQ {
                        continue;
                    }
                    let (w, b) = (seq as usize / 64, 1u64 << (seq % 64));
                    if seen.bits[w] & b != 0 {
                        sh.duplicates.fetch_add(1, RELAXED);
                        continue;
                    }
                    seen.bits[w] |= b;
                    seen.count += 1;
                    seen.order = (seen.order ^ seq as u64).wrapping_mul(0x100_0000_01b3);
                    if seq < seen.max {
                        // Room order is the order the intake accepted, which
                        // need not be the order the publisher sent in.
                        sh.reordered.fetch_add(1, RELAXED);
                    }
                    seen.max = seen.max.max(seq);
                    let ph = sh.phase_of_seq[seq as usize].load(RELAXED) as usize;
                    let b = ((now.saturating_sub(sent)) / 100).min(BUCKETS as u64) as usize;
                    sh.hist[ph][b].fetch_add(1, RELAXED);
                    sh.delivered[ph].fetch_add(1, RELAXED);
                }
            }
            if let Some(c) = v["cursor"].as_str() {
                *cursor = Some(c.to_string());
            }
            Ok(())
        }
        Some("gap") => {
            sh.gaps.fetch_add(1, RELAXED);
            if let Some(c) = v["cursor"].as_str() {
                *cursor = Some(c.to_string());
            }
            Err(())
        }
        _ => Ok(()),
    }
}

/// One viewer: connect, read, and on each new `epoch` drop the socket and
/// reconnect with the last cursor, until `STOP`; returns what it received.
async fn viewer(
    src: Ipv4Addr,
    server: SocketAddr,
    base: Arc<String>,
    sh: Arc<Shared>,
    mut epoch: watch::Receiver<u32>,
    handshakes: Arc<Semaphore>,
) -> Seen {
    let mut cursor: Option<String> = None;
    let mut seen = Seen::new();
    let mut storm = false;
    loop {
        let url = match &cursor {
            Some(c) => format!("{base}?cursor={c}"),
            None => base.to_string(),
        };
        let mut ws = loop {
            let permit = handshakes.acquire().await.ok();
            let r = open(src, server, &url).await;
            drop(permit);
            match r {
                Ok(ws) => break ws,
                Err(OpenError::Busy) => {
                    sh.refused_503.fetch_add(1, RELAXED);
                    let ms = 50 + rand::random::<u64>() % 200;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(OpenError::Other(e)) => {
                    if sh.connect_errors.fetch_add(1, RELAXED) < 5 {
                        eprintln!("connect error: {e}");
                    }
                    let ms = 200 + rand::random::<u64>() % 800;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            if *epoch.borrow() == STOP {
                return seen;
            }
        };
        // The hello first.
        let mut hello = false;
        loop {
            let msg = tokio::select! {
                biased;
                r = epoch.changed() => {
                    if r.is_err() || *epoch.borrow_and_update() == STOP {
                        if hello { sh.open.fetch_sub(1, RELAXED); }
                        return seen;
                    }
                    // A storm: drop this socket at once and come back.
                    if hello { sh.open.fetch_sub(1, RELAXED); }
                    storm = true;
                    drop(ws);
                    break;
                }
                m = ws.next() => m,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    sh.closed_by_server.fetch_add(1, RELAXED);
                    if hello {
                        sh.open.fetch_sub(1, RELAXED);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                Some(Ok(_)) => continue,
            };
            if !hello {
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                if v["type"] == "hello" {
                    hello = true;
                    if let Some(c) = v["cursor"].as_str() {
                        cursor = Some(c.to_string());
                    }
                    sh.open.fetch_add(1, RELAXED);
                    if storm {
                        storm = false;
                        let start = sh.storm_start_us.load(RELAXED);
                        let ms = (now_us().saturating_sub(start) / 1000) as u32;
                        sh.back_ms.lock().map(|mut v| v.push(ms)).ok();
                        sh.back.fetch_add(1, RELAXED);
                    }
                    continue;
                }
            }
            if on_message(&text, &sh, &mut cursor, &mut seen).is_err() {
                if hello {
                    sh.open.fetch_sub(1, RELAXED);
                }
                break;
            }
        }
        if *epoch.borrow() == STOP {
            return seen;
        }
    }
}

/// Sends `rate` comments/s numbered from 1 until told to stop.
async fn publisher(url: String, rate: u64, sh: Arc<Shared>) {
    let (ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("the publisher's WebSocket");
    let (mut tx, mut rx) = ws.split();
    let sh2 = sh.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(t) = m {
                if t.contains("\"type\":\"ack\"") {
                    sh2.acks.fetch_add(1, RELAXED);
                } else if t.contains("\"type\":\"error\"")
                    && sh2.send_errors.fetch_add(1, RELAXED) < 3
                {
                    eprintln!("send error: {t}");
                }
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u32;
    while !sh.stop_publisher.load(RELAXED) && (seq as usize) < MAX_SEQ - 1 {
        tick.tick().await;
        seq += 1;
        let ph = sh.phase.load(RELAXED);
        sh.phase_of_seq[seq as usize].store(ph, RELAXED);
        sh.sent[ph as usize].fetch_add(1, RELAXED);
        sh.last_seq_sent.store(seq, RELAXED);
        let msg = json!({"type": "send", "ref": seq, "text": format!("cc {seq} {}", now_us())});
        if tx.send(Message::text(msg.to_string())).await.is_err() {
            eprintln!("the publisher's WebSocket closed");
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = arg(&args, "--url").unwrap_or_else(|| "ws://127.0.0.1:8095".into());
    let room = arg(&args, "--room").unwrap_or_else(|| "cc".into());
    let n = num(&args, "--viewers", 1000);
    let nsrc = num(&args, "--sources", 10).clamp(1, 250);
    let server_pid = num(&args, "--server-pid", 0);
    let token = arg(&args, "--token").expect("--token SERVICE_TOKEN (the publisher's)");
    let rate = num(&args, "--rate", 10) as u64;
    let window = num(&args, "--window-secs", 20) as u64;
    let rounds = num(&args, "--rounds", 3).clamp(1, (PHASES - 2) / 2);
    let conc = num(&args, "--connect-conc", 2048);
    let settle = num(&args, "--settle-secs", 10) as u64;
    let storm_timeout = num(&args, "--storm-timeout-secs", 180) as u64;

    let hostport = url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_string();
    let server: SocketAddr = tokio::net::lookup_host(&hostport)
        .await
        .expect("--url host:port")
        .next()
        .expect("an address");
    let base = Arc::new(format!("ws://{hostport}/v1/rooms/{room}/ws"));
    let rss = |pid: usize| proc_kb(&format!("/proc/{pid}/status"), "VmRSS:");
    let sh = Arc::new(Shared::new());
    let (epoch_tx, epoch_rx) = watch::channel(0u32);
    let handshakes = Arc::new(Semaphore::new(conc.max(1)));

    println!(
        "conn_capacity: viewers={n} sources=127.0.0.2..127.0.0.{} connect_conc={conc} rate={rate}/s window={window}s rounds={rounds} loadavg={}",
        1 + nsrc,
        loadavg()
    );
    let rss0 = rss(server_pid);
    let k0 = kernel();
    let tool0 = proc_kb("/proc/self/status", "VmRSS:");
    let lo0 = listen_overflows();
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % nsrc) as u8);
        tasks.push(tokio::spawn(viewer(
            src,
            server,
            base.clone(),
            sh.clone(),
            epoch_rx.clone(),
            handshakes.clone(),
        )));
    }
    let mut last_print = Instant::now();
    while sh.open.load(RELAXED) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "  connecting: {} open after {:.1} s (503: {}, errors: {})",
                sh.open.load(RELAXED),
                t0.elapsed().as_secs_f64(),
                sh.refused_503.load(RELAXED),
                sh.connect_errors.load(RELAXED)
            );
        }
        if t0.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let opened = sh.open.load(RELAXED);
    let lo1 = listen_overflows();
    println!(
        "connect: {opened}/{n} open in {connect_secs:.2} s = {:.0} connections/s (503 retries {}, connect errors {}, listen overflows {}, SYN retransmits {})",
        opened as f64 / connect_secs,
        sh.refused_503.load(RELAXED),
        sh.connect_errors.load(RELAXED),
        lo1.0 - lo0.0,
        lo1.1 - lo0.1
    );
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let rss1 = rss(server_pid);
    let k1 = kernel();
    let tool1 = proc_kb("/proc/self/status", "VmRSS:");
    let open_now = sh.open.load(RELAXED).max(1);
    let per = |a: u64, b: u64| (b as f64 - a as f64) * 1024.0 / open_now as f64;
    println!(
        "memory: {open_now} open; server VmRSS {:.1} -> {:.1} MB = {:.0} B per connection",
        rss0 as f64 / 1024.0,
        rss1 as f64 / 1024.0,
        per(rss0, rss1)
    );
    println!(
        "kernel (client and server ends together): sockstat TCP inuse {} -> {}, tw {} -> {}, mem {} -> {} pages = {:.0} B per connection; Slab {:.1} -> {:.1} MB = {:.0} B per connection (SUnreclaim {:.0} B)",
        k0.tcp_inuse,
        k1.tcp_inuse,
        k0.tcp_tw,
        k1.tcp_tw,
        k0.tcp_mem_pages,
        k1.tcp_mem_pages,
        (k1.tcp_mem_pages as f64 - k0.tcp_mem_pages as f64) * 4096.0 / open_now as f64,
        k0.slab_kb as f64 / 1024.0,
        k1.slab_kb as f64 / 1024.0,
        per(k0.slab_kb, k1.slab_kb),
        per(k0.sunreclaim_kb, k1.sunreclaim_kb)
    );
    println!(
        "load tool VmRSS {:.1} -> {:.1} MB ({:.0} B per viewer); loadavg {}",
        tool0 as f64 / 1024.0,
        tool1 as f64 / 1024.0,
        per(tool0, tool1),
        loadavg()
    );

    // Broadcast, with a storm after each steady window.
    let pub_url = format!("{base}?token={token}");
    let publisher = tokio::spawn(publisher(pub_url, rate, sh.clone()));
    let mut storms = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut delivered_pcts = Vec::new();
    for r in 0..rounds {
        let steady = 1 + 2 * r;
        sh.phase.store(steady as u8, RELAXED);
        let open_at_start = sh.open.load(RELAXED);
        let (cs0, ct0, tw0) = (
            cpu_secs(server_pid),
            cpu_secs(std::process::id() as usize),
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs(window)).await;
        let w = tw0.elapsed().as_secs_f64();
        let cpu_server = 100.0 * (cpu_secs(server_pid) - cs0) / w;
        let cpu_tool = 100.0 * (cpu_secs(std::process::id() as usize) - ct0) / w;
        // Comments of the window's last second may still be on their way.
        let storm_ph = steady + 1;
        sh.phase.store(storm_ph as u8, RELAXED);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let sent = sh.sent[steady].load(RELAXED);
        let got = sh.delivered[steady].load(RELAXED);
        let pct = 100.0 * got as f64 / (sent as f64 * open_at_start as f64).max(1.0);
        let (p50, p99, max) = (
            sh.percentile(steady, 50.0),
            sh.percentile(steady, 99.0),
            sh.percentile(steady, 100.0),
        );
        println!(
            "round {}: broadcast {sent} comments to {open_at_start} viewers: delivered {got} ({pct:.2} %), latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; CPU server {cpu_server:.0} %, load tool {cpu_tool:.0} %; loadavg {}",
            r + 1,
            loadavg()
        );
        p50s.push(p50);
        p99s.push(p99);
        delivered_pcts.push(pct);

        // The storm.
        sh.back.store(0, RELAXED);
        sh.back_ms.lock().map(|mut v| v.clear()).ok();
        let r503 = sh.refused_503.load(RELAXED);
        let errs = sh.connect_errors.load(RELAXED);
        let k_before = kernel();
        let lo_before = listen_overflows();
        sh.storm_start_us.store(now_us(), RELAXED);
        let ts = Instant::now();
        let target = sh.open.load(RELAXED);
        epoch_tx.send_replace(r as u32 + 1);
        while sh.back.load(RELAXED) < target && ts.elapsed() < Duration::from_secs(storm_timeout) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = ts.elapsed().as_secs_f64();
        let back = sh.back.load(RELAXED);
        let mut ms = sh.back_ms.lock().map(|v| v.clone()).unwrap_or_default();
        ms.sort_unstable();
        let q = |p: f64| {
            ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        let k_after = kernel();
        let lo_after = listen_overflows();
        println!(
            "round {}: storm: {back}/{target} back by cursor in {secs:.2} s = {:.0} connections/s (first back at {} ms, 10 % at {} ms, half at {} ms, 90 % at {} ms); 503 retries {}, connect errors {}, listen overflows {}, SYN retransmits {}; TCP tw {} -> {}; loadavg {}",
            r + 1,
            back as f64 / secs,
            q(0.0),
            q(0.1),
            q(0.5),
            q(0.9),
            sh.refused_503.load(RELAXED) - r503,
            sh.connect_errors.load(RELAXED) - errs,
            lo_after.0 - lo_before.0,
            lo_after.1 - lo_before.1,
            k_before.tcp_tw,
            k_after.tcp_tw,
            loadavg()
        );
        storms.push(back as f64 / secs);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    sh.phase.store((2 * rounds + 1) as u8, RELAXED);
    tokio::time::sleep(Duration::from_secs(2)).await;
    sh.stop_publisher.store(true, RELAXED);
    let _ = publisher.await;
    // Let the last comments arrive.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let last = sh.last_seq_sent.load(RELAXED);
    let total_delivered: u64 = sh.delivered.iter().map(|d| d.load(RELAXED)).sum();
    epoch_tx.send_replace(STOP);
    let (mut missing, mut complete) = (0u64, 0usize);
    let mut orders: std::collections::HashMap<u64, usize> = Default::default();
    for t in tasks {
        let Ok(seen) = t.await else { continue };
        missing += (last - seen.count.min(last)) as u64;
        if seen.count == last {
            complete += 1;
        }
        *orders.entry(seen.order).or_default() += 1;
    }
    println!(
        "whole run: {last} comments sent ({} acked, {} errors), {total_delivered} deliveries = {:.3} % of {last} x {n}; viewers with every comment {complete}/{n}, missing {missing}, duplicates {}, gaps {}, closed by the server {}; distinct orders among viewers {} (1 = every viewer got the same sequence); comments a viewer got after a later-numbered one (the intake's order, not a loss) {}",
        sh.acks.load(RELAXED),
        sh.send_errors.load(RELAXED),
        100.0 * total_delivered as f64 / (last as f64 * n as f64).max(1.0),
        sh.duplicates.load(RELAXED),
        sh.gaps.load(RELAXED),
        sh.closed_by_server.load(RELAXED),
        orders.len(),
        sh.reordered.load(RELAXED)
    );
    println!(
        "RESULT viewers={n} open={open_now} connect_per_s={:.0} server_b_per_conn={:.0} kernel_tcp_mem_b_per_conn={:.0} kernel_slab_b_per_conn={:.0} delivered_pct_median={:.2} p50_ms_median={:.1} p99_ms_median={:.1} storm_per_s_median={:.0} storms={:?} missing={} duplicates={} gaps={} complete={complete} orders={} loadavg={}",
        opened as f64 / connect_secs,
        per(rss0, rss1),
        (k1.tcp_mem_pages as f64 - k0.tcp_mem_pages as f64) * 4096.0 / open_now as f64,
        per(k0.slab_kb, k1.slab_kb),
        median(delivered_pcts),
        median(p50s),
        median(p99s),
        median(storms.clone()),
        storms.iter().map(|s| s.round() as u64).collect::<Vec<_>>(),
        missing,
        sh.duplicates.load(RELAXED),
        sh.gaps.load(RELAXED),
        orders.len(),
        loadavg()
    );
}
