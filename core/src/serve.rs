//! The HTTP server loop: HTTP/1.1 with upgrades on plain TCP connections, so a
//! WebSocket handler gets the raw `TcpStream` back after the upgrade ([`into_tcp`];
//! hyper's automatic HTTP/1+2 detection would wrap it in a private type), with
//! graceful shutdown: stop accepting, let requests in flight finish.
//!
//! It is also the edge every anonymous client meets first, so it bounds what one
//! can hold:
//!
//! - Connections: at most `server.max_connections` HTTP connections, and
//!   `server.max_connections_per_ip` from one address (IPv6: one /64). Past a
//!   cap a small reserve ([`RESERVE`]) reads one request: `/healthz`, `/readyz`
//!   and `/metrics` are answered, anything else gets `503 unavailable`. A full
//!   reserve makes room by closing its oldest connection that is not serving
//!   one of those paths (one that has not sent its request yet is the one a
//!   slow client holds); only when all are serving is the new one closed unread. Refusals are counted in
//!   `danmaku_http_connections_refused_total{reason}`. A WebSocket leaves this
//!   budget once upgraded (`live.max_connections` counts it). `RLIMIT_NOFILE` is
//!   raised at start to what the caps need ([`raise_nofile`]). Accept errors
//!   (out of descriptors) back off up to a second instead of spinning.
//! - Request bodies: each goes through a [`GuardedBody`] (one buffer, at most
//!   `limits.max_body_bytes`, a deadline and a minimum rate). A refused body is
//!   answered with the JSON error, 413 or 408, and `Connection: close`, whatever
//!   the handler made of the error.
//! - Request heads: at most `server.max_header_bytes` (else 431), read within
//!   [`HEADER_TIMEOUT`] (also the idle keep-alive timeout). hyper answers a bad
//!   or oversized head itself with an empty body; [`ConnIo`] rewrites that answer
//!   into the JSON error of API.md.
//! - Closing: when the server closes a connection whose client may still be
//!   sending (a 413 before the body was read, a 431), closing at once would make
//!   the kernel send a reset, and the client would read "connection reset"
//!   instead of the answer. So the connection lingers as nginx's does: write
//!   side shut, whatever arrives read and discarded, for at most
//!   [`LINGER_TIME`] (and [`LINGER_IDLE`] without data, [`LINGER_BYTES`] in all),
//!   at most [`MAX_LINGERING`] connections at once.

use crate::body::{BodyError, BodyLimits, GuardedBody, Verdict};
use crate::error::{ApiError, ErrorCode};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Longest wait for a request head, including between two requests of a
/// keep-alive connection (hyper closes an idle connection after it).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections past a cap that are still read for one request (health checks).
pub const RESERVE: usize = 256;
/// Reserve connections one address may hold at once: past it, a new one from
/// that address takes the place of the address's own oldest, so one client
/// past its cap never takes the reserve from the health checks of others.
pub const RESERVE_PER_IP: usize = 128;
/// A reserve connection's request head must arrive within this.
pub const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// A reserve connection is closed after this, answered or not.
pub const RESERVE_LIFETIME: Duration = Duration::from_secs(10);
/// Longest a closed connection lingers (see the module documentation).
pub const LINGER_TIME: Duration = Duration::from_secs(3);
/// A lingering connection is closed once nothing arrived for this long.
pub const LINGER_IDLE: Duration = Duration::from_secs(1);
/// A lingering connection is closed once it has discarded this many bytes.
pub const LINGER_BYTES: usize = 1 << 20;
/// Most connections lingering at once; past it a connection closes at once.
pub const MAX_LINGERING: usize = 1024;
/// Descriptors kept beside the connections for the stores, logs, Redis and
/// Kafka clients and the like.
pub const FD_HEADROOM: u64 = 1024;
/// The paths a reserve connection answers.
const OPS_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// What the server loop enforces; [`ServeOptions::from_settings`] reads them
/// from the configuration.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Most HTTP connections at once (`server.max_connections`).
    pub max_connections: usize,
    /// Most HTTP connections from one address; 0 = no cap
    /// (`server.max_connections_per_ip`).
    pub max_connections_per_ip: usize,
    /// Largest request head, bytes (`server.max_header_bytes`).
    pub max_header_bytes: usize,
    /// Request body bounds (`limits.max_body_bytes`, `limits.body_*`).
    pub body: BodyLimits,
    /// Bounds of an import's body (`POST /v1/vods/{vod}/import`:
    /// `import.max_bytes`, `import.body_timeout_secs`), streamed to its handler.
    pub import_body: BodyLimits,
    /// Descriptors other connections of this process may hold (the upgraded
    /// WebSockets: `live.max_connections`), for [`raise_nofile`].
    pub other_fds: u64,
}

impl ServeOptions {
    /// The options the settings name.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            max_connections: s.server.max_connections.max(1),
            max_connections_per_ip: s.server.max_connections_per_ip,
            max_header_bytes: s.server.max_header_bytes,
            body: BodyLimits::from_settings(s),
            import_body: BodyLimits {
                max_bytes: usize::try_from(s.import.max_bytes).unwrap_or(usize::MAX),
                timeout: std::time::Duration::from_secs(s.import.body_timeout_secs.max(1)),
                min_bytes_per_sec: s.limits.body_min_bytes_per_sec,
            },
            other_fds: if s.runs("live") {
                s.live.max_connections as u64
            } else {
                0
            },
        }
    }

    /// Descriptors this server may need at once.
    fn wanted_fds(&self) -> u64 {
        (self.max_connections as u64)
            .saturating_add((RESERVE + MAX_LINGERING) as u64)
            .saturating_add(self.other_fds)
            .saturating_add(FD_HEADROOM)
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self::from_settings(&crate::config::Settings::default())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to `wanted` (at most the hard limit) and
/// returns the limit now in force.
pub fn raise_nofile(wanted: u64) -> u64 {
    match rlimit::increase_nofile_limit(wanted) {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %e, "could not read or raise RLIMIT_NOFILE");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(u64::MAX)
        }
    }
}

/// Serves `app` on `listener` with the default [`ServeOptions`] until
/// `shutdown` is cancelled, then waits up to `grace` for open connections.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
) {
    serve_with(listener, app, shutdown, grace, ServeOptions::default()).await
}

/// Serves `app` on `listener` within `opts` until `shutdown` is cancelled, then
/// waits up to `grace` for open connections to finish.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    grace: Duration,
    mut opts: ServeOptions,
) {
    let wanted = opts.wanted_fds();
    let nofile = raise_nofile(wanted);
    if nofile < wanted {
        // Keep the HTTP cap (and the reserve behind it) within the descriptors
        // there are, so health checks still get a socket; WebSockets may not.
        let room = nofile.saturating_sub(FD_HEADROOM + (RESERVE + MAX_LINGERING) as u64);
        let fit = (room as usize).clamp(16, opts.max_connections);
        tracing::warn!(
            nofile,
            wanted,
            max_connections = fit,
            "RLIMIT_NOFILE is below what the connection caps need; raise the hard limit (ulimit -Hn, LimitNOFILE=)"
        );
        opts.max_connections = fit;
    }
    let budget = Arc::new(Budget::new(&opts));
    let mut normal = hyper::server::conn::http1::Builder::new();
    normal
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_header_size(opts.max_header_bytes);
    let mut reserve = normal.clone();
    reserve
        .header_read_timeout(RESERVE_HEADER_TIMEOUT)
        .keep_alive(false);
    let tracker = TaskTracker::new();
    let mut backoff = Duration::ZERO;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => {
                    backoff = Duration::ZERO;
                    c
                }
                Err(e) => {
                    metrics::counter!("danmaku_http_accept_errors_total").increment(1);
                    if per_connection_error(&e) {
                        continue;
                    }
                    // Out of descriptors or memory: the pending connection stays
                    // queued and accept would fail again at once.
                    backoff = (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1));
                    if backoff >= Duration::from_millis(200) {
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let ip = ip_key(peer.ip());
        let (permit, over) = match budget.admit(ip) {
            Ok(p) => (p, None),
            Err(reason) => match budget.admit_reserve(ip) {
                Some((p, slot)) => (p, Some((reason, slot))),
                None => {
                    metrics::counter!("danmaku_http_connections_refused_total", "reason" => "reserve_full")
                        .increment(1);
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(ConnIo::new(tcp, permit));
        let edge = Edge {
            app: app.clone(),
            peer,
            body: opts.body,
            import_body: opts.import_body,
            reserve: over.as_ref().map(|(_, slot)| slot.clone()),
        };
        let builder = if over.is_some() { &reserve } else { &normal };
        let conn = builder.serve_connection(io, edge).with_upgrades();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let run = async {
                tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.as_mut().await
                    }
                }
            };
            let result = match &over {
                None => run.await,
                Some((_, slot)) => tokio::select! {
                    r = tokio::time::timeout(RESERVE_LIFETIME, run) => r.unwrap_or(Ok(())),
                    // A newer connection took this one's place.
                    _ = slot.evict.cancelled() => Ok(()),
                },
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            if let Some((reason, slot)) = over {
                if !slot.serving.load(Ordering::Relaxed) {
                    metrics::counter!("danmaku_http_connections_refused_total", "reason" => reason)
                        .increment(1);
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("connections still open after the grace period");
    }
}

/// Errors of one connection that was already gone when accepted: retry at once.
fn per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The address a per-client cap counts: IPv4 as is (also when mapped into
/// IPv6), IPv6 by its /64, the smallest block one subscriber usually gets.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

// ---- the connection budget ---------------------------------------------------

struct Budget {
    max: usize,
    per_ip: usize,
    max_header_bytes: usize,
    counts: Mutex<Counts>,
    lingering: AtomicUsize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
    reserve: usize,
    reserve_by_ip: HashMap<IpAddr, usize>,
    /// The reserve's connections, oldest first.
    reserve_queue: VecDeque<Arc<ReserveSlot>>,
}

/// A reserve connection's place.
struct ReserveSlot {
    ip: IpAddr,
    /// Cancelled when a newer connection takes the place.
    evict: CancellationToken,
    /// Set once an operations path is being served: never evicted from then on.
    serving: AtomicBool,
    /// Set (under the counts' lock) once the place was given back, by eviction
    /// or by the connection's end, so that it is given back once.
    released: AtomicBool,
}

impl Counts {
    /// Gives a reserve place back (once).
    fn release_reserve(&mut self, slot: &Arc<ReserveSlot>) -> bool {
        if slot.released.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.reserve = self.reserve.saturating_sub(1);
        if let Some(n) = self.reserve_by_ip.get_mut(&slot.ip) {
            *n -= 1;
            if *n == 0 {
                self.reserve_by_ip.remove(&slot.ip);
            }
        }
        if let Some(i) = self.reserve_queue.iter().position(|s| Arc::ptr_eq(s, slot)) {
            self.reserve_queue.remove(i);
        }
        true
    }
}

impl Budget {
    fn new(opts: &ServeOptions) -> Self {
        Self {
            max: opts.max_connections,
            per_ip: opts.max_connections_per_ip,
            max_header_bytes: opts.max_header_bytes,
            counts: Mutex::new(Counts::default()),
            lingering: AtomicUsize::new(0),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic elsewhere never leaves the counts half-updated.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A normal connection, or the cap it would cross.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, &'static str> {
        let mut c = self.counts();
        if c.total >= self.max {
            return Err("max_connections");
        }
        let n = c.by_ip.entry(ip).or_insert(0);
        if self.per_ip > 0 && *n >= self.per_ip {
            return Err("max_connections_per_ip");
        }
        *n += 1;
        c.total += 1;
        drop(c);
        metrics::gauge!("danmaku_http_connections").increment(1.0);
        Ok(Permit {
            budget: self.clone(),
            ip,
            reserve: None,
        })
    }

    /// A reserve connection for `ip`: a free place, else the place of the
    /// oldest reserve connection not serving an operations path (of `ip`'s own
    /// when it holds its share), which is closed; `None` when every candidate
    /// is serving.
    fn admit_reserve(self: &Arc<Self>, ip: IpAddr) -> Option<(Permit, Arc<ReserveSlot>)> {
        let mut c = self.counts();
        let own_full = c
            .reserve_by_ip
            .get(&ip)
            .is_some_and(|n| *n >= RESERVE_PER_IP);
        if own_full || c.reserve >= RESERVE {
            let oldest = c
                .reserve_queue
                .iter()
                .position(|s| !s.serving.load(Ordering::Relaxed) && (!own_full || s.ip == ip))?;
            let old = c.reserve_queue[oldest].clone();
            if c.release_reserve(&old) {
                metrics::gauge!("danmaku_http_connections").decrement(1.0);
            }
            old.evict.cancel();
        }
        *c.reserve_by_ip.entry(ip).or_insert(0) += 1;
        c.reserve += 1;
        let slot = Arc::new(ReserveSlot {
            ip,
            evict: CancellationToken::new(),
            serving: AtomicBool::new(false),
            released: AtomicBool::new(false),
        });
        c.reserve_queue.push_back(slot.clone());
        drop(c);
        metrics::gauge!("danmaku_http_connections").increment(1.0);
        Some((
            Permit {
                budget: self.clone(),
                ip,
                reserve: Some(slot.clone()),
            },
            slot,
        ))
    }

    fn try_linger(&self) -> bool {
        self.lingering
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_LINGERING).then_some(n + 1)
            })
            .is_ok()
    }
}

/// One connection's place in the budget, given back when dropped.
struct Permit {
    budget: Arc<Budget>,
    ip: IpAddr,
    /// A reserve connection's place; `None` for a normal connection.
    reserve: Option<Arc<ReserveSlot>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.budget.counts();
        if let Some(slot) = &self.reserve {
            // An evicted connection's place went to the newer one already.
            if !c.release_reserve(slot) {
                return;
            }
        } else {
            c.total = c.total.saturating_sub(1);
            if let Some(n) = c.by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    c.by_ip.remove(&self.ip);
                }
            }
        }
        drop(c);
        metrics::gauge!("danmaku_http_connections").decrement(1.0);
    }
}

struct LingerSlot(Arc<Budget>);

impl Drop for LingerSlot {
    fn drop(&mut self) {
        self.0.lingering.fetch_sub(1, Ordering::AcqRel);
    }
}

// ---- the connection's transport ------------------------------------------------

/// The transport hyper serves a connection on: the `TcpStream` with its place
/// in the connection budget. It rewrites hyper's own error answers (empty-body
/// 400, 414 and 431) into API.md's JSON errors, and lingers on close (see the
/// module documentation). After an upgrade, [`into_tcp`] takes the stream out.
pub struct ConnIo {
    /// `None` only once taken (upgrade) or dropped.
    tcp: Option<TcpStream>,
    permit: Option<Permit>,
    rewrite: Option<Box<Rewrite>>,
}

/// A replacement answer being written in place of hyper's.
struct Rewrite {
    bytes: Vec<u8>,
    written: usize,
    /// What hyper is told was written (the length of its own answer).
    reported: usize,
}

impl ConnIo {
    fn new(tcp: TcpStream, permit: Permit) -> Self {
        Self {
            tcp: Some(tcp),
            permit: Some(permit),
            rewrite: None,
        }
    }

    fn tcp(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.tcp
                .as_mut()
                .expect("ConnIo holds its stream until dropped"),
        )
    }

    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Self { tcp, rewrite, .. } = self;
        let tcp = tcp.as_mut().expect("ConnIo holds its stream until dropped");
        let Some(rw) = rewrite.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while rw.written < rw.bytes.len() {
            let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &rw.bytes[rw.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            rw.written += n;
        }
        let reported = rw.reported;
        *rewrite = None;
        Poll::Ready(Ok(reported))
    }

    fn start_rewrite(&mut self, buf: &[u8]) -> bool {
        let Some((len, status)) = hyper_error_head(buf) else {
            return false;
        };
        let max_header = self
            .permit
            .as_ref()
            .map(|p| p.budget.max_header_bytes)
            .unwrap_or(0);
        self.rewrite = Some(Box::new(Rewrite {
            bytes: raw_error(status, max_header),
            written: 0,
            reported: len,
        }));
        true
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().tcp().poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_some() || this.start_rewrite(buf) {
            return this.poll_rewrite(cx);
        }
        this.tcp().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewrite.is_some() {
            return this.poll_rewrite(cx);
        }
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if this.start_rewrite(first) {
                return this.poll_rewrite(cx);
            }
        }
        this.tcp().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.as_ref().is_some_and(|t| t.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rewrite.is_some() {
            ready!(this.poll_rewrite(cx))?;
        }
        this.tcp().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp().poll_shutdown(cx)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        let Some(tcp) = self.tcp.take() else {
            return;
        };
        let Some(permit) = self.permit.take() else {
            return;
        };
        let budget = permit.budget.clone();
        drop(permit);
        // The client closed first (the usual end of a keep-alive connection):
        // nothing can reset the answer.
        let mut probe = [0u8; 512];
        match tcp.try_read(&mut probe) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !budget.try_linger() {
            return;
        }
        rt.spawn(linger(tcp, LingerSlot(budget)));
    }
}

/// Half-closes `tcp` and discards what the client still sends, within bounds,
/// so that it reads the answer before the close.
async fn linger(mut tcp: TcpStream, _slot: LingerSlot) {
    let _ = tcp.shutdown().await;
    let end = tokio::time::Instant::now() + LINGER_TIME;
    let mut left = LINGER_BYTES;
    let mut buf = [0u8; 2048];
    loop {
        let idle = (tokio::time::Instant::now() + LINGER_IDLE).min(end);
        match tokio::time::timeout_at(idle, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && n < left => left -= n,
            _ => return,
        }
    }
}

/// The length and status of hyper's own answer to a request it could not
/// parse, when `buf` starts with one: a bodiless 400, 414 or 431 head, which no
/// handler writes (every error of the app has a JSON body).
fn hyper_error_head(buf: &[u8]) -> Option<(usize, u16)> {
    if buf.len() < 16 || !buf.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let status = match &buf[9..13] {
        b"400 " => 400,
        b"414 " => 414,
        b"431 " => 431,
        _ => return None,
    };
    let window = &buf[..buf.len().min(512)];
    let end = window.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = window[..end].to_ascii_lowercase();
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if !has(b"\r\ncontent-length: 0\r\n") || has(b"\r\ncontent-type:") {
        return None;
    }
    Some((end, status))
}

/// API.md's error for a request hyper refused, as raw HTTP.
fn raw_error(status: u16, max_header_bytes: usize) -> Vec<u8> {
    let (reason, error) = match status {
        431 => (
            "Request Header Fields Too Large",
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request line and headers are limited to {max_header_bytes} bytes"),
            ),
        ),
        414 => (
            "URI Too Long",
            ApiError::new(ErrorCode::PayloadTooLarge, "the request target is too long"),
        ),
        _ => (
            "Bad Request",
            ApiError::new(ErrorCode::InvalidJson, "the request is not valid HTTP/1.1"),
        ),
    };
    metrics::counter!("danmaku_api_errors_total", "code" => error.code.as_str()).increment(1);
    let body = error.body().to_string();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nx-content-type-options: nosniff\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The stream and the bytes hyper had read past the request of an upgraded
/// connection served by this loop (or by any server on a plain
/// `TokioIo<TcpStream>`); the connection leaves the HTTP budget here.
pub fn into_tcp(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, Bytes), hyper::upgrade::Upgraded> {
    match upgraded.downcast::<TokioIo<ConnIo>>() {
        Ok(parts) => {
            let mut io = parts.io.into_inner();
            let tcp = io
                .tcp
                .take()
                .expect("ConnIo holds its stream until dropped");
            drop(io);
            Ok((tcp, parts.read_buf))
        }
        Err(upgraded) => upgraded
            .downcast::<TokioIo<TcpStream>>()
            .map(|parts| (parts.io.into_inner(), parts.read_buf)),
    }
}

// ---- requests ------------------------------------------------------------------

/// The service of one connection: guards the request body, answers refused
/// bodies, and on a reserve connection answers only the operations paths.
#[derive(Clone)]
struct Edge {
    app: Router,
    /// The client's address, for handlers that key limits on it.
    peer: SocketAddr,
    body: BodyLimits,
    /// Bounds of an import's body, streamed to its handler.
    import_body: BodyLimits,
    /// On a reserve connection: its place (marked once an operations path is
    /// served).
    reserve: Option<Arc<ReserveSlot>>,
}

/// `POST /v1/vods/{vod}/import`: the one body streamed to its handler, within
/// its own bounds ([`ServeOptions::import_body`]).
fn is_import<B>(req: &Request<B>) -> bool {
    req.method() == axum::http::Method::POST
        && req
            .uri()
            .path()
            .strip_prefix("/v1/vods/")
            .and_then(|rest| rest.strip_suffix("/import"))
            .is_some_and(|vod| !vod.is_empty() && !vod.contains('/'))
}

impl hyper::service::Service<Request<Incoming>> for Edge {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if let Some(slot) = &self.reserve {
            if !OPS_PATHS.contains(&req.uri().path()) {
                return Box::pin(std::future::ready(Ok(at_capacity())));
            }
            slot.serving.store(true, Ordering::Relaxed);
        }
        let import = is_import(&req);
        let limits = if import { self.import_body } else { self.body };
        let (req, verdict) = if req.body().is_end_stream() {
            (req.map(axum::body::Body::new), None)
        } else {
            let verdict = Arc::new(Verdict::default());
            let v = verdict.clone();
            let req = req.map(|b| {
                axum::body::Body::new(if import {
                    GuardedBody::streaming(b, limits, v)
                } else {
                    GuardedBody::new(b, limits, v)
                })
            });
            (req, Some(verdict))
        };
        let mut req = req;
        // axum's `ConnectInfo` extractor reads the peer address from here.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let fut = self.app.clone().oneshot(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(e) = verdict.and_then(|v| v.get(limits.max_bytes)) {
                resp = body_refused(&e);
            }
            let status = resp.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE || status == StatusCode::REQUEST_TIMEOUT {
                resp.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                // The rest of the body is not read: the connection cannot go on.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        })
    }
}

/// The answer to a request whose body was refused.
pub fn body_refused(e: &BodyError) -> Response {
    match e {
        BodyError::TooLarge { limit } => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is limited to {limit} bytes"),
        )
        .into_response(),
        BodyError::TimedOut => {
            metrics::counter!("danmaku_http_body_timeouts_total").increment(1);
            // API.md has no code of its own for this; the body that arrived is
            // not a JSON document, and 408 says why.
            let mut resp = ApiError::new(
                ErrorCode::InvalidJson,
                "the body did not arrive in time; send it at once",
            )
            .into_response();
            *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
            resp
        }
        BodyError::Failed(m) => ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body could not be read: {m}"),
        )
        .into_response(),
    }
}

fn at_capacity() -> Response {
    let mut resp = ApiError::new(
        ErrorCode::Unavailable,
        "this server is at its connection limit; retry later",
    )
    .retry_after(1)
    .into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let m: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(m), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn only_hypers_bodiless_error_heads_are_rewritten() {
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\n\r\n";
        assert_eq!(hyper_error_head(hyper_431), Some((hyper_431.len(), 431)));
        let app_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(hyper_error_head(app_400), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n{\"error\":{}}";
        assert_eq!(hyper_error_head(with_body), None);
        assert_eq!(
            hyper_error_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        let raw = raw_error(431, 16384);
        let text = String::from_utf8(raw).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        assert!(text.contains("\"code\":\"payload_too_large\""), "{text}");
    }

    fn budget(max: usize, per_ip: usize) -> Arc<Budget> {
        Arc::new(Budget::new(&ServeOptions {
            max_connections: max,
            max_connections_per_ip: per_ip,
            ..ServeOptions::default()
        }))
    }

    #[test]
    fn caps_and_the_reserve() {
        let b = budget(3, 2);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = b.admit(x).unwrap();
        let _p2 = b.admit(x).unwrap();
        assert_eq!(b.admit(x).err(), Some("max_connections_per_ip"));
        let _p3 = b.admit(y).unwrap();
        assert_eq!(b.admit(y).err(), Some("max_connections"));
        drop(p1);
        let _p4 = b.admit(x).unwrap();

        // An address holds at most its share: past it, its own oldest goes.
        let mut from_x: Vec<_> = (0..RESERVE_PER_IP)
            .map(|_| b.admit_reserve(x).unwrap())
            .collect();
        let (_newest, _) = b.admit_reserve(x).unwrap();
        assert!(from_x[0].1.evict.is_cancelled(), "x's oldest made room");
        assert!(from_x[1..].iter().all(|(_, s)| !s.evict.is_cancelled()));
        assert_eq!(b.counts().reserve_by_ip[&x], RESERVE_PER_IP);
        // The evicted connection ending gives nothing back twice.
        drop(from_x.remove(0));
        assert_eq!(b.counts().reserve, RESERVE_PER_IP);

        // A full reserve closes its oldest connection that is not serving.
        from_x[0].1.serving.store(true, Ordering::Relaxed);
        let others: Vec<_> = (0..RESERVE - RESERVE_PER_IP)
            .map(|i| b.admit_reserve(IpAddr::from([10, 1, 0, i as u8])).unwrap())
            .collect();
        assert_eq!(b.counts().reserve, RESERVE);
        let (_late, _) = b.admit_reserve(y).unwrap();
        assert!(!from_x[0].1.evict.is_cancelled(), "a serving one stays");
        assert!(
            from_x[1].1.evict.is_cancelled(),
            "the oldest idle one made room"
        );
        assert_eq!(b.counts().reserve, RESERVE);
        drop((from_x, others, _late, _newest));
        let c = b.counts();
        assert_eq!(c.reserve, 0);
        assert!(c.reserve_by_ip.is_empty() && c.reserve_queue.is_empty());
        assert_eq!(c.total, 3);
    }

    #[test]
    fn a_reserve_of_serving_connections_refuses() {
        let b = budget(1, 0);
        let all: Vec<_> = (0..RESERVE)
            .map(|i| {
                let (p, s) = b
                    .admit_reserve(IpAddr::from([10, 2, (i / 200) as u8, (i % 200) as u8]))
                    .unwrap();
                s.serving.store(true, Ordering::Relaxed);
                (p, s)
            })
            .collect();
        assert!(b.admit_reserve("10.3.0.1".parse().unwrap()).is_none());
        drop(all);
        assert!(b.admit_reserve("10.3.0.1".parse().unwrap()).is_some());
    }

    #[test]
    fn nofile_is_raised_to_what_is_wanted_or_the_hard_limit() {
        let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
        let now = raise_nofile(4096);
        assert!(now >= 4096.min(hard), "{now}");
    }
}
