//! Request bodies at the edge: read into one buffer, bounded in size and time.
//!
//! - [`GuardedBody`]: what the server loop ([`crate::serve`]) puts in front of
//!   every request body. It copies each frame into one buffer as it arrives and
//!   drops the frame at once, so a body sent in tiny TCP segments pins nothing
//!   of hyper's read buffer (keeping the frames would keep each segment's whole
//!   buffer allocation alive: ~16 MB per connection for a body sent byte by
//!   byte). It hands the handler the whole body as one frame, or an error past
//!   [`BodyLimits::max_bytes`] or once the body arrives too slowly.
//! - [`read_limited`]: what handlers call to get the body as bytes (the same
//!   bounds when the body did not come through the server loop, as in tests).
//! - [`Verdict`]: how the server loop learns that a body was refused, so the
//!   answer is the JSON error with the right status (413 or 408) and
//!   `Connection: close` whatever the handler made of the error.

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The time a body gets before the minimum rate applies: a client's first
/// segment may be delayed by its own connection setup, TLS at a proxy, etc.
pub const RATE_GRACE: Duration = Duration::from_secs(5);

/// Bounds on one request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Largest body, bytes (`limits.max_body_bytes`).
    pub max_bytes: usize,
    /// Longest time the whole body may take, from the end of the headers
    /// (`limits.body_timeout_ms`).
    pub timeout: Duration,
    /// Slowest average rate after [`RATE_GRACE`], bytes per second; 0 = none
    /// (`limits.body_min_bytes_per_sec`).
    pub min_bytes_per_sec: u64,
}

impl BodyLimits {
    /// The limits the settings name.
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            max_bytes: s.limits.max_body_bytes,
            timeout: Duration::from_millis(s.limits.body_timeout_ms.max(1)),
            min_bytes_per_sec: s.limits.body_min_bytes_per_sec,
        }
    }

    /// When a body that started at `start` and has `received` bytes so far
    /// must be complete (or have received more).
    fn deadline(&self, start: Instant, received: usize) -> Instant {
        let total = start + self.timeout;
        if self.min_bytes_per_sec == 0 {
            return total;
        }
        let allowed_ms = (received as u64).saturating_mul(1000) / self.min_bytes_per_sec;
        let by_rate = start + RATE_GRACE + Duration::from_millis(allowed_ms);
        by_rate.min(total)
    }
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self::from_settings(&crate::config::Settings::default())
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit (declared or received); `413 payload_too_large`.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Not complete by its deadline or below the minimum rate; `408`.
    #[error("the body did not arrive in time")]
    TimedOut,
    /// The connection failed while the body was read (reset, bad chunking).
    #[error("the body could not be read: {0}")]
    Failed(String),
}

/// What became of a request's body, shared between its [`GuardedBody`] and
/// the server loop that answers the request.
#[derive(Debug, Default)]
pub struct Verdict(AtomicU8);

const TOO_LARGE: u8 = 1;
const TIMED_OUT: u8 = 2;

impl Verdict {
    fn set(&self, e: &BodyError) {
        let v = match e {
            BodyError::TooLarge { .. } => TOO_LARGE,
            BodyError::TimedOut => TIMED_OUT,
            // Not the client's pace or size: the handler's own answer stands.
            BodyError::Failed(_) => return,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    /// The refusal, if the body was refused for its size or its slowness.
    pub fn get(&self, limit: usize) -> Option<BodyError> {
        match self.0.load(Ordering::Relaxed) {
            TOO_LARGE => Some(BodyError::TooLarge { limit }),
            TIMED_OUT => Some(BodyError::TimedOut),
            _ => None,
        }
    }
}

/// A request body read whole into one buffer within [`BodyLimits`] (see the
/// module documentation). The deadline runs from its creation, i.e. the end of
/// the request's headers.
pub struct GuardedBody<B> {
    inner: B,
    limits: BodyLimits,
    verdict: Arc<Verdict>,
    start: Instant,
    /// Created at the first poll that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    buf: Vec<u8>,
    received: usize,
    trailers: Option<hyper::HeaderMap>,
    state: State,
    /// Hand each frame on as it arrives (a copy, so hyper's buffer goes)
    /// instead of one buffer: a body the handler streams ([`GuardedBody::streaming`]).
    streaming: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    /// The data went out; the trailers (if any) are next.
    Trailers,
    Done,
}

impl<B> GuardedBody<B> {
    /// Wraps `inner`, reporting a refusal through `verdict`.
    pub fn new(inner: B, limits: BodyLimits, verdict: Arc<Verdict>) -> Self {
        Self {
            inner,
            limits,
            verdict,
            start: Instant::now(),
            sleep: None,
            buf: Vec::new(),
            received: 0,
            trailers: None,
            state: State::Reading,
            streaming: false,
        }
    }

    /// [`GuardedBody::new`] for a handler that reads the body as a stream
    /// (imports): the same bounds, but each frame is handed on as it arrives,
    /// so the body is never held whole.
    pub fn streaming(inner: B, limits: BodyLimits, verdict: Arc<Verdict>) -> Self {
        Self {
            streaming: true,
            ..Self::new(inner, limits, verdict)
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.verdict.set(&e);
        self.state = State::Done;
        self.buf = Vec::new();
        Poll::Ready(Some(Err(e)))
    }
}

impl<B> HttpBody for GuardedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let limit = this.limits.max_bytes;
        match this.state {
            State::Done => return Poll::Ready(None),
            State::Trailers => {
                this.state = State::Done;
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            State::Reading => {}
        }
        if this.received == 0 && this.buf.capacity() == 0 {
            // The declared length is known before a byte is read.
            let hint = this.inner.size_hint();
            if hint.lower() > limit as u64 {
                return this.fail(BodyError::TooLarge { limit });
            }
            if let Some(n) = hint.exact() {
                this.buf.reserve_exact(n as usize);
            }
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.received = this.received.saturating_add(data.len());
                        if this.received > limit {
                            return this.fail(BodyError::TooLarge { limit });
                        }
                        // Copy and let the frame go: it is a view of hyper's
                        // read buffer and would keep all of it alive.
                        let copy = this.streaming.then(|| Bytes::copy_from_slice(&data));
                        if !this.streaming {
                            this.buf.extend_from_slice(&data);
                        }
                        drop(data);
                        if let Some(sleep) = this.sleep.as_mut() {
                            let next = this.limits.deadline(this.start, this.received);
                            if next != sleep.deadline() {
                                sleep.as_mut().reset(next);
                            }
                        }
                        if let Some(copy) = copy {
                            return Poll::Ready(Some(Ok(Frame::data(copy))));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            this.trailers = Some(t);
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => return this.fail(BodyError::Failed(e.to_string())),
                Poll::Ready(None) => {
                    this.sleep = None;
                    let data = std::mem::take(&mut this.buf);
                    if data.is_empty() {
                        this.state = State::Done;
                        return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
                    }
                    this.state = if this.trailers.is_some() {
                        State::Trailers
                    } else {
                        State::Done
                    };
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))));
                }
                Poll::Pending => {
                    let deadline = this.limits.deadline(this.start, this.received);
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    return match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => this.fail(BodyError::TimedOut),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Reading => self.inner.size_hint(),
            _ => SizeHint::with_exact(0),
        }
    }
}

/// Reads `body` into one buffer of at most `limit` bytes: a declared length
/// past the limit is refused before a byte is read; each frame is copied and
/// dropped as it arrives. Bodies that came through the server loop are also
/// bounded in time ([`GuardedBody`]); their errors come back as they were.
pub async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, BodyError> {
    let too_large = BodyError::TooLarge { limit };
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large);
    }
    let mut body = body;
    let mut buf: Vec<u8> = Vec::new();
    if let Some(n) = body.size_hint().exact() {
        buf.reserve_exact(n as usize);
    }
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| match e.into_inner().downcast::<BodyError>() {
            Ok(e) => *e,
            Err(e) => BodyError::Failed(e.to_string()),
        })?;
        if let Ok(data) = frame.into_data() {
            // A single frame is the usual case (the server loop hands the body
            // over whole): keep it rather than copy it.
            if buf.is_empty() && data.len() <= limit && body.is_end_stream() {
                return Ok(data);
            }
            if buf.len() + data.len() > limit {
                return Err(too_large);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    /// A streaming body: frames from a channel, as a client's segments arrive.
    struct StreamBody(futures::channel::mpsc::Receiver<Bytes>);

    impl HttpBody for StreamBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_next_unpin(cx)
                .map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    fn limits(max: usize, timeout_ms: u64, rate: u64) -> BodyLimits {
        BodyLimits {
            max_bytes: max,
            timeout: Duration::from_millis(timeout_ms),
            min_bytes_per_sec: rate,
        }
    }

    async fn read(body: GuardedBody<StreamBody>) -> Result<Bytes, BodyError> {
        read_limited(axum::body::Body::new(body), usize::MAX).await
    }

    #[tokio::test]
    async fn byte_frames_come_out_as_one_buffer() {
        let (mut tx, rx) = futures::channel::mpsc::channel(16);
        let verdict = Arc::new(Verdict::default());
        let body = GuardedBody::new(StreamBody(rx), limits(100, 5000, 0), verdict.clone());
        let writer = tokio::spawn(async move {
            for b in b"{\"text\":\"hi\"}" {
                futures::SinkExt::send(&mut tx, Bytes::copy_from_slice(&[*b]))
                    .await
                    .unwrap();
            }
        });
        let got = read(body).await.unwrap();
        writer.await.unwrap();
        assert_eq!(&got[..], b"{\"text\":\"hi\"}");
        assert_eq!(verdict.get(100), None);
    }

    #[tokio::test]
    async fn past_the_limit_is_too_large() {
        let (mut tx, rx) = futures::channel::mpsc::channel(16);
        let verdict = Arc::new(Verdict::default());
        let body = GuardedBody::new(StreamBody(rx), limits(10, 5000, 0), verdict.clone());
        tokio::spawn(async move {
            for _ in 0..20 {
                let _ = futures::SinkExt::send(&mut tx, Bytes::from_static(b"x")).await;
            }
        });
        assert_eq!(read(body).await, Err(BodyError::TooLarge { limit: 10 }));
        assert_eq!(verdict.get(10), Some(BodyError::TooLarge { limit: 10 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_at_the_minimum_rate() {
        let (mut tx, rx) = futures::channel::mpsc::channel(16);
        let verdict = Arc::new(Verdict::default());
        // 100 B/s after the grace: 10 bytes buy 100 ms more.
        let body = GuardedBody::new(StreamBody(rx), limits(1000, 60_000, 100), verdict.clone());
        futures::SinkExt::send(&mut tx, Bytes::from_static(b"0123456789"))
            .await
            .unwrap();
        let t0 = Instant::now();
        assert_eq!(read(body).await, Err(BodyError::TimedOut));
        let took = t0.elapsed();
        assert!(
            took >= RATE_GRACE + Duration::from_millis(100)
                && took < RATE_GRACE + Duration::from_millis(200),
            "{took:?}"
        );
        assert_eq!(verdict.get(1000), Some(BodyError::TimedOut));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_body_has_a_deadline() {
        let (mut tx, rx) = futures::channel::mpsc::channel(16);
        let verdict = Arc::new(Verdict::default());
        let body = GuardedBody::new(StreamBody(rx), limits(100_000, 3000, 1), verdict.clone());
        // Fast enough for the rate, never done.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if futures::SinkExt::send(&mut tx, Bytes::from_static(b"xx"))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        let t0 = Instant::now();
        assert_eq!(read(body).await, Err(BodyError::TimedOut));
        assert!(
            t0.elapsed() <= Duration::from_millis(3001),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test]
    async fn a_declared_length_past_the_limit_is_refused_unread() {
        let body = axum::body::Body::from(vec![b'x'; 50]);
        assert_eq!(
            read_limited(body, 10).await,
            Err(BodyError::TooLarge { limit: 10 })
        );
        let body = axum::body::Body::from(vec![b'x'; 10]);
        assert_eq!(read_limited(body, 10).await.unwrap().len(), 10);
    }

    #[tokio::test]
    async fn streaming_hands_each_frame_on_within_the_bounds() {
        let (mut tx, rx) = futures::channel::mpsc::channel(8);
        let verdict = Arc::new(Verdict::default());
        let mut body =
            GuardedBody::streaming(StreamBody(rx), limits(10, 10_000, 0), verdict.clone());
        tx.try_send(Bytes::from_static(b"abc")).unwrap();
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(first, "abc", "handed on before the body ends");
        tx.try_send(Bytes::from_static(b"0123456789")).unwrap();
        assert_eq!(
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .unwrap()
                .unwrap_err(),
            BodyError::TooLarge { limit: 10 }
        );
        assert_eq!(verdict.get(10), Some(BodyError::TooLarge { limit: 10 }));
    }
}
