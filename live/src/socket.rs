//! The hand-off of one connection's socket between the room's write loop
//! ([`crate::room`]) and the connection's own task (`upgrade`):
//! [`Subscriber`] (the socket, where the client is in the room's frames, who
//! may write), [`Take`] (how a connection takes a frame), and the room loop's
//! non-blocking `send(2)`/`sendmsg(2)` of a connection's frames.
//!
//! Who writes: each connection's [`WriteState`] says whether its task owns the
//! socket (`task_owns`). The room loop writes only to connections whose task
//! does not; it never waits. A write that would block (or only partly goes
//! through) hands the socket to the connection's task with what is left
//! (`pending`), and the task writes it with the write timeout, catches up from
//! the room's frame ring (or sends `gap` if the ring moved past it), then gives
//! the socket back. Both sides change `task_owns` only under the state's lock,
//! and the task gives the socket back only when the ring holds no frame it has
//! not written, so no frame is written twice, skipped, or interleaved.
//!
//! May import: [`crate::frames`] (and through it [`crate::messages`]); never
//! the room or the upgrade (the room calls in here, not the other way round).

use crate::bili::packet::Protover;
use crate::frames::Frame;
use bytes::Bytes;
use danmaku_core::auth::Claims;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Frames one write of the room loop may carry (a connection further behind is
/// caught up by its own task).
pub(crate) const MAX_FRAMES_PER_WRITE: usize = 16;

/// Where a connection is in the room's frames, and who may write to its socket.
#[derive(Debug, Default)]
pub struct WriteState {
    /// Index of the next frame of the room this connection needs.
    pub next: u64,
    /// Seq of the last item this connection was sent (its cursor).
    pub last_sent: u64,
    /// The connection's task owns the socket: the room loop leaves it alone.
    pub task_owns: bool,
    /// Bytes the room loop could not write; the task writes them first.
    pub pending: Option<Bytes>,
}

/// How a connection takes a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// It has every item of the frame already (right after a resume).
    Skip,
    /// The room's shared bytes.
    Shared,
    /// Bytes of its own: the part it does not have yet, re-encoded, and its own
    /// comments the display budget withheld (the connection's task writes them).
    Own,
}

/// One connection as the room loop sees it.
pub struct Subscriber {
    /// The connection's socket (the task reads from it; both sides write).
    pub stream: TcpStream,
    /// permessage-deflate was negotiated: write the deflated frames.
    pub deflate: bool,
    /// The signed-in client's claims (its own withheld comments go to it).
    pub claims: Option<Arc<Claims>>,
    /// A `/sub` connection: it takes the frames' Bilibili packets of this
    /// protocol version ([`Frame::sub_wire`]) instead of their JSON.
    pub sub: Option<Protover>,
    state: Mutex<WriteState>,
    /// The room loop asks the connection's task to take over (or to end).
    pub wake: Notify,
    /// When the client was last heard from (`now_secs`, coarse seconds).
    pub last_heard: AtomicU32,
    /// Found dead by the ping check: the task ends the connection.
    pub dead: AtomicBool,
    /// Items after what it was sent expired from the store before its room's
    /// hub had them (a node cut off for longer than the hot retention): the
    /// room loop leaves it alone and its task sends `gap` at its cursor and
    /// ends the connection ([`crate::room::Hub::skip_expired`]).
    pub expired: AtomicBool,
    /// Position in the room's subscriber list (for O(1) removal).
    pub(crate) slot: AtomicUsize,
}

impl Subscriber {
    /// A connection that starts at frame `next`, its task owning the socket
    /// (it sends hello and the backlog first).
    pub fn new(
        stream: TcpStream,
        deflate: bool,
        claims: Option<Arc<Claims>>,
        next: u64,
        now: u32,
    ) -> Self {
        Self {
            stream,
            deflate,
            claims,
            sub: None,
            state: Mutex::new(WriteState {
                next,
                last_sent: 0,
                task_owns: true,
                pending: None,
            }),
            wake: Notify::new(),
            last_heard: AtomicU32::new(now),
            dead: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            slot: AtomicUsize::new(usize::MAX),
        }
    }

    /// The write state (short critical sections only; never held across an await).
    pub fn state(&self) -> MutexGuard<'_, WriteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `f` may hold this (signed-in) client's own comments that the
    /// display budget withheld from the shared bytes.
    pub fn may_hold_own(&self, f: &Frame) -> bool {
        self.claims.is_some() && !f.withheld.is_empty()
    }

    /// How this connection, having been sent everything up to `last_sent`, takes `f`.
    pub fn take(&self, f: &Frame, last_sent: u64) -> Take {
        if self.may_hold_own(f) {
            Take::Own
        } else if f.last_seq <= last_sent || (self.sub.is_some() && self.bytes_of(f).is_empty()) {
            Take::Skip
        } else if f.first_seq > last_sent {
            Take::Shared
        } else {
            Take::Own
        }
    }

    /// The bytes of `f` this connection takes.
    pub fn bytes_of<'a>(&self, f: &'a Frame) -> &'a Bytes {
        if let Some(protover) = self.sub {
            f.sub_wire(protover)
        } else if self.deflate {
            f.deflated()
        } else {
            &f.wire
        }
    }

    /// Gives the socket to the task and wakes it.
    fn hand_off(&self, mut st: MutexGuard<'_, WriteState>) {
        st.task_owns = true;
        drop(st);
        self.wake.notify_one();
    }

    /// The room loop's write of `frames` (the ring from index `base`, newest
    /// last) to this connection, if its task does not own the socket. Returns
    /// whether a write was attempted.
    // `inline`: the room loop calls this once per connection per round from
    // another module; it stays inlinable there, as when both lived in one.
    #[inline]
    pub(crate) fn serve(&self, base: u64, frames: &[Arc<Frame>]) -> bool {
        let mut st = self.state();
        let newest = base + frames.len() as u64; // one past the newest
        if st.task_owns
            || st.next >= newest
            || self.dead.load(Ordering::Relaxed)
            || self.expired.load(Ordering::Acquire)
        {
            return false;
        }
        if st.next < base {
            // Behind the snapshot: the task catches up (or sends gap).
            self.hand_off(st);
            return false;
        }
        let todo = &frames[(st.next - base) as usize..];
        if todo.len() > MAX_FRAMES_PER_WRITE {
            self.hand_off(st);
            return false;
        }
        let mut slices: [IoSlice<'_>; MAX_FRAMES_PER_WRITE] =
            [IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
        let mut n = 0;
        let mut total = 0;
        let mut last = st.last_sent;
        for f in todo {
            match self.take(f, last) {
                Take::Skip => continue,
                Take::Shared => {}
                Take::Own => {
                    // Needs bytes of its own: the task writes them.
                    self.hand_off(st);
                    return false;
                }
            }
            let b = self.bytes_of(f);
            slices[n] = IoSlice::new(b);
            n += 1;
            total += b.len();
            last = f.last_seq;
        }
        if n == 0 {
            st.next = newest;
            return false;
        }
        // send(2)/sendmsg(2) rather than write(2)/writev(2): the socket calls skip
        // the VFS layer, a few percent of a round's CPU at thousands of viewers.
        let sock = socket2::SockRef::from(&self.stream);
        let sent = self
            .stream
            .try_io(tokio::io::Interest::WRITABLE, || match &slices[..n] {
                [one] => sock.send(one),
                many => sock.send_vectored(many),
            });
        let written = match sent {
            Ok(w) => w,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                // The task finds the socket broken on its next write or read.
                self.dead.store(true, Ordering::Relaxed);
                self.hand_off(st);
                return true;
            }
        };
        if written == 0 {
            // Nothing went: the task writes these frames itself once it can.
            self.hand_off(st);
            return true;
        }
        st.next = newest;
        st.last_sent = last;
        if written < total {
            st.pending = Some(rest_of(&slices[..n], written));
            self.hand_off(st);
        }
        true
    }

    /// Writes a ping frame if the room loop owns the socket; hands a partial
    /// write over like a frame's.
    #[inline]
    pub(crate) fn ping(&self, ping: &Bytes) -> bool {
        let mut st = self.state();
        if st.task_owns {
            return false;
        }
        match self.stream.try_write(ping) {
            Ok(w) if w == ping.len() => {}
            Ok(w) => {
                st.pending = Some(ping.slice(w..));
                self.hand_off(st);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                self.dead.store(true, Ordering::Relaxed);
                self.hand_off(st);
            }
        }
        true
    }
}

/// The bytes of `slices` after the first `written`.
fn rest_of(slices: &[IoSlice<'_>], mut written: usize) -> Bytes {
    let mut out = Vec::new();
    for s in slices {
        if written >= s.len() {
            written -= s.len();
            continue;
        }
        out.extend_from_slice(&s[written..]);
        written = 0;
    }
    Bytes::from(out)
}

/// Seconds since the first call: a coarse clock for the dead-peer check (4 bytes
/// per connection instead of an `Instant`'s 16).
pub(crate) fn now_secs() -> u32 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_of_skips_what_was_written_across_slices() {
        let (a, b, c) = (b"abc".to_vec(), b"de".to_vec(), b"fgh".to_vec());
        let s = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        assert_eq!(&rest_of(&s, 0)[..], b"abcdefgh");
        assert_eq!(&rest_of(&s, 2)[..], b"cdefgh");
        assert_eq!(&rest_of(&s, 3)[..], b"defgh");
        assert_eq!(&rest_of(&s, 4)[..], b"efgh");
        assert_eq!(&rest_of(&s, 7)[..], b"h");
    }
}
