//! The WebSocket wire format (RFC 6455) and permessage-deflate (RFC 7692), as
//! pure functions: the handshake accept key and extension negotiation, server
//! frames encoded once as complete bytes (server frames are unmasked, so one
//! encoding serves every connection), and a parser for masked client frames.
//! Also [`Frame`]: one batch of a room, encoded once (and deflated once, on
//! first use) and shared by every connection of the room.
//!
//! A [`Frame`] also holds the batch as `/sub` sends it ([`Frame::sub_wire`]:
//! Bilibili packets in a binary frame, one encoding per protocol version),
//! built on first use, so a room without `/sub` viewers never builds them.
//!
//! May import: [`crate::messages`] (the items a frame carries) and the pure
//! `/sub` codec ([`crate::bili::packet`], [`crate::bili::commands`]); nothing
//! that knows about sockets, rooms or connections.

use crate::bili::commands;
use crate::bili::packet::{self, Protover};
use crate::messages::RingItem;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use std::sync::OnceLock;

/// Frame opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// The `Sec-WebSocket-Extensions` answer when the client offered
/// permessage-deflate: no context takeover either way, so one compressed frame
/// can be shared by every connection.
pub const DEFLATE_RESPONSE: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Whether the client's `Sec-WebSocket-Extensions` offers permessage-deflate in a
/// form we can accept (we need no parameters from it; a `server_max_window_bits`
/// below 15 cannot be honoured by a shared 15-bit stream, so such offers are declined).
pub fn offers_deflate(header: &str) -> bool {
    header.split(',').any(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        if parts.next() != Some("permessage-deflate") {
            return false;
        }
        parts.all(|p| {
            let name = p.split('=').next().unwrap_or("").trim();
            match name {
                "server_no_context_takeover"
                | "client_no_context_takeover"
                | "client_max_window_bits"
                | "" => true,
                "server_max_window_bits" => {
                    p.split('=').nth(1).map(|v| v.trim().trim_matches('"')) == Some("15")
                }
                _ => false,
            }
        })
    })
}

/// A complete unmasked server frame.
pub fn encode_frame(op: u8, payload: &[u8], compressed: bool) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    let rsv1 = if compressed { 0x40 } else { 0 };
    out.put_u8(0x80 | rsv1 | op);
    let len = payload.len();
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame.
pub fn text_frame(payload: &str) -> Bytes {
    encode_frame(opcode::TEXT, payload.as_bytes(), false)
}

/// A close frame with a status code and reason.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut p = Vec::with_capacity(2 + reason.len());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
    encode_frame(opcode::CLOSE, &p, false)
}

/// A text message compressed per RFC 7692 (raw deflate, sync flush, the final
/// `00 00 ff ff` removed) in one frame with RSV1 set.
pub fn deflate_text_frame(payload: &[u8]) -> Bytes {
    let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let consumed = c.total_in() as usize;
        out.reserve(payload.len().max(64));
        let status = c
            .compress_vec(&payload[consumed..], &mut out, flate2::FlushCompress::Sync)
            .expect("in-memory deflate");
        if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
            let _ = status;
            break;
        }
    }
    if out.ends_with(&[0, 0, 0xff, 0xff]) {
        out.truncate(out.len() - 4);
    }
    encode_frame(opcode::TEXT, &out, true)
}

/// Inflates a compressed client message: [`ProtocolError::TooBig`] past `max`
/// bytes of output (an inflate bomb), [`ProtocolError::InvalidData`] when the
/// payload is not a deflate stream.
pub fn inflate_message(payload: &[u8], max: usize) -> Result<Vec<u8>, ProtocolError> {
    let mut d = flate2::Decompress::new(false);
    let mut input = Vec::with_capacity(payload.len() + 4);
    input.extend_from_slice(payload);
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(payload.len() * 3 + 64);
    loop {
        let (before_in, before_out) = (d.total_in(), d.total_out());
        out.reserve(4096);
        d.decompress_vec(
            &input[d.total_in() as usize..],
            &mut out,
            flate2::FlushDecompress::Sync,
        )
        .map_err(|_| ProtocolError::InvalidData)?;
        if out.len() > max {
            return Err(ProtocolError::TooBig);
        }
        let all_in = d.total_in() as usize >= input.len();
        let room_left = out.len() < out.capacity();
        let stuck = d.total_in() == before_in && d.total_out() == before_out;
        if (all_in && room_left) || stuck {
            break;
        }
    }
    Ok(out)
}

/// One batch frame of a room, shared by every connection of the room.
#[derive(Debug)]
pub struct Frame {
    /// First seq covered (shown, withheld and likes).
    pub first_seq: u64,
    /// Last seq covered: the batch's cursor.
    pub last_seq: u64,
    /// Items shown, for re-encoding when a resuming client already has some.
    pub items: Vec<RingItem>,
    /// Comments held back by the display budget; each goes to its own sender only.
    pub withheld: Vec<RingItem>,
    /// The JSON message.
    pub json: Bytes,
    /// A second message sent right after `json` (the `delete` message of the
    /// deletion records among the items), if any.
    pub after: Option<Bytes>,
    /// The complete WebSocket frame (two frames when there is `after`).
    pub wire: Bytes,
    deflated: OnceLock<Bytes>,
    /// The `/sub` binary frames of [`Frame::items`], by [`Protover::index`].
    sub: [OnceLock<Bytes>; 3],
}

impl Frame {
    /// The frame of the batch message `json` covering `first_seq..=last_seq`:
    /// its WebSocket bytes are encoded here, once; the deflated ones on first use.
    pub fn new(
        first_seq: u64,
        last_seq: u64,
        items: Vec<RingItem>,
        withheld: Vec<RingItem>,
        json: Bytes,
    ) -> Self {
        Self::with_after(first_seq, last_seq, items, withheld, json, None)
    }

    /// [`Frame::new`] with a second message `after` sent right after the batch.
    pub fn with_after(
        first_seq: u64,
        last_seq: u64,
        items: Vec<RingItem>,
        withheld: Vec<RingItem>,
        json: Bytes,
        after: Option<Bytes>,
    ) -> Self {
        let mut wire = encode_frame(opcode::TEXT, &json, false);
        if let Some(a) = &after {
            let mut both = Vec::with_capacity(wire.len() + a.len() + 10);
            both.extend_from_slice(&wire);
            both.extend_from_slice(&encode_frame(opcode::TEXT, a, false));
            wire = Bytes::from(both);
        }
        Self {
            first_seq,
            last_seq,
            items,
            withheld,
            json,
            after,
            wire,
            deflated: OnceLock::new(),
            sub: Default::default(),
        }
    }

    /// The batch as a `/sub` viewer of `protover` takes it: the items' commands
    /// as Bilibili packets in one binary WebSocket frame, encoded (and
    /// compressed) once per frame and protocol version, on first use. Empty
    /// when no item of the frame has a `/sub` command (likes only, or every
    /// comment withheld by the display budget).
    pub fn sub_wire(&self, protover: Protover) -> &Bytes {
        self.sub[protover.index()].get_or_init(|| sub_frame(protover, &self.items))
    }

    /// The frame compressed with permessage-deflate, computed once per frame.
    pub fn deflated(&self) -> &Bytes {
        self.deflated.get_or_init(|| match &self.after {
            None => deflate_text_frame(&self.json),
            Some(a) => {
                let mut both = deflate_text_frame(&self.json).to_vec();
                both.extend_from_slice(&deflate_text_frame(a));
                Bytes::from(both)
            }
        })
    }
}

/// The `/sub` binary frame of `items` (empty when none has a command).
pub fn sub_frame(protover: Protover, items: &[RingItem]) -> Bytes {
    let cmds = commands::commands(items);
    if cmds.is_empty() {
        return Bytes::new();
    }
    let batch = packet::encode_batch(protover, cmds.iter().map(|c| c.as_bytes()));
    encode_frame(opcode::BINARY, &batch, false)
}

/// One parsed client frame.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFrame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Why a client's bytes are not acceptable, each with its close code
/// (RFC 6455 §7.4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// Over the message size limit (close 1009).
    TooBig,
    /// Unmasked, reserved bits or opcodes, a bad control frame, fragments out
    /// of order, a bad close payload (close 1002).
    Invalid,
    /// A binary message: this endpoint speaks JSON text (close 1003).
    Unsupported,
    /// Text that is not UTF-8 (a message or a close reason), or a compressed
    /// payload that does not inflate (close 1007).
    InvalidData,
}

impl ProtocolError {
    /// The close code this violation is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            Self::TooBig => 1009,
            Self::Invalid => 1002,
            Self::Unsupported => 1003,
            Self::InvalidData => 1007,
        }
    }

    /// The close frame's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooBig => "message too big",
            Self::Invalid => "protocol error",
            Self::Unsupported => "binary messages are not accepted; send JSON text",
            Self::InvalidData => "invalid message data",
        }
    }
}

/// Whether a client may send `code` in a close frame (RFC 6455 §7.4, and
/// IANA's registry): 1000-1003 and 1007-1014 of the protocol's range, and
/// 3000-4999 (libraries and applications). 1004-1006 and 1015 are reserved
/// (never on the wire), the rest of 1000-2999 is unassigned.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The status code of a client's close frame payload (`None` when it has
/// none): 1002 for a one-byte payload or a code not allowed on the wire, 1007
/// for a reason that is not UTF-8.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::Invalid),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(ProtocolError::Invalid);
            }
            std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidData)?;
            Ok(Some(code))
        }
    }
}

/// Where a client is in its current message (RFC 6455 §5.4): a data frame
/// either starts a message (text only) or continues the one in progress, never
/// both; permessage-deflate marks the first frame only (RFC 7692 §6.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reassembly {
    open: bool,
    compressed: bool,
}

impl Reassembly {
    /// Checks the data frame `f` against the message in progress and moves on:
    /// a continuation without a start, or a new message inside a fragmented one,
    /// is [`ProtocolError::Invalid`]; a binary message is
    /// [`ProtocolError::Unsupported`]; RSV1 is allowed only on a message's first
    /// frame and only with permessage-deflate negotiated (`deflate`).
    pub fn accept(&mut self, f: &ClientFrame, deflate: bool) -> Result<(), ProtocolError> {
        match f.opcode {
            opcode::TEXT | opcode::BINARY if self.open => Err(ProtocolError::Invalid),
            opcode::BINARY => Err(ProtocolError::Unsupported),
            opcode::TEXT => {
                if f.rsv1 && !deflate {
                    return Err(ProtocolError::Invalid);
                }
                self.open = !f.fin;
                self.compressed = f.rsv1;
                Ok(())
            }
            opcode::CONTINUATION => {
                if !self.open || f.rsv1 {
                    return Err(ProtocolError::Invalid);
                }
                self.open = !f.fin;
                Ok(())
            }
            _ => Err(ProtocolError::Invalid),
        }
    }

    /// A fragmented message is in progress (its last frame has not come).
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The current (or just completed) message is compressed.
    pub fn compressed(&self) -> bool {
        self.compressed
    }
}

/// Parses one client frame from the front of `buf`: `Ok(None)` if more bytes are
/// needed, else the frame and how many bytes it used.
pub fn parse_client_frame(
    buf: &[u8],
    max_payload: usize,
) -> Result<Option<(ClientFrame, usize)>, ProtocolError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let rsv1 = buf[0] & 0x40 != 0;
    if buf[0] & 0x30 != 0 {
        return Err(ProtocolError::Invalid);
    }
    let op = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    if !masked {
        return Err(ProtocolError::Invalid);
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
                10,
            )
        }
        n => (n as u64, 2),
    };
    let known = matches!(
        op,
        opcode::CONTINUATION
            | opcode::TEXT
            | opcode::BINARY
            | opcode::CLOSE
            | opcode::PING
            | opcode::PONG
    );
    // Control frames: short, unfragmented, never compressed (RFC 7692 §6.1).
    if !known || (op >= 0x8 && (len > 125 || !fin || rsv1)) {
        return Err(ProtocolError::Invalid);
    }
    if len > max_payload as u64 {
        return Err(ProtocolError::TooBig);
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload: Vec<u8> = buf[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i & 3])
        .collect();
    Ok(Some((
        ClientFrame {
            fin,
            rsv1,
            opcode: op,
            payload,
        },
        at + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(op: u8, payload: &[u8], fin: bool) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![(if fin { 0x80 } else { 0 }) | op];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_frames_have_the_right_length_forms() {
        assert_eq!(&text_frame("hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text_frame(&"x".repeat(300));
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        let f = text_frame(&"x".repeat(70_000));
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_000 + 10);
        assert_eq!(
            &close_frame(1001, "bye")[..],
            &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']
        );
    }

    #[test]
    fn parses_masked_client_frames_incrementally() {
        let bytes = client_frame(opcode::TEXT, "héllo".as_bytes(), true);
        for cut in 0..bytes.len() {
            assert_eq!(parse_client_frame(&bytes[..cut], 1000), Ok(None));
        }
        let (f, used) = parse_client_frame(&bytes, 1000).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(f.payload, "héllo".as_bytes());
        assert!(f.fin && !f.rsv1);
        let big = client_frame(opcode::TEXT, &[b'a'; 300], true);
        assert_eq!(parse_client_frame(&big, 100), Err(ProtocolError::TooBig));
        let mut unmasked = big.clone();
        unmasked[1] &= 0x7f;
        assert_eq!(
            parse_client_frame(&unmasked, 1000),
            Err(ProtocolError::Invalid)
        );
        let long_ping = client_frame(opcode::PING, &[0; 126], true);
        assert_eq!(
            parse_client_frame(&long_ping, 1000),
            Err(ProtocolError::Invalid)
        );
    }

    #[test]
    fn deflate_roundtrips_and_marks_rsv1() {
        let msg = "{\"type\":\"batch\",\"items\":[".to_string()
            + &"{\"text\":\"好耶 hello\"},".repeat(200)
            + "]}";
        let f = deflate_text_frame(msg.as_bytes());
        assert_eq!(f[0], 0x80 | 0x40 | opcode::TEXT);
        let (hdr, len) = match f[1] {
            126 => (4, u16::from_be_bytes([f[2], f[3]]) as usize),
            127 => (
                10,
                u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
            ),
            n => (2, n as usize),
        };
        assert!(len < msg.len() / 4, "repetitive JSON compresses well");
        let back = inflate_message(&f[hdr..hdr + len], 1 << 20).unwrap();
        assert!(
            back == msg.as_bytes(),
            "roundtrip: {} bytes back of {}",
            back.len(),
            msg.len()
        );
        assert_eq!(
            inflate_message(&f[hdr..hdr + len], 100),
            Err(ProtocolError::TooBig),
            "inflate bombs are refused"
        );
        let tiny = deflate_text_frame(b"x");
        assert_eq!(inflate_message(&tiny[2..], 100).unwrap(), b"x");
    }

    fn data(op: u8, fin: bool, rsv1: bool) -> ClientFrame {
        ClientFrame {
            fin,
            rsv1,
            opcode: op,
            payload: Vec::new(),
        }
    }

    #[test]
    fn fragments_must_start_and_continue_in_order() {
        use opcode::*;
        let mut r = Reassembly::default();
        assert_eq!(
            r.accept(&data(CONTINUATION, true, false), false),
            Err(ProtocolError::Invalid),
            "a continuation without a start"
        );
        assert_eq!(r.accept(&data(TEXT, false, false), false), Ok(()));
        assert!(r.is_open());
        assert_eq!(
            r.accept(&data(TEXT, true, false), false),
            Err(ProtocolError::Invalid),
            "a new message inside a fragmented one"
        );
        assert_eq!(
            r.clone().accept(&data(BINARY, true, false), false),
            Err(ProtocolError::Invalid),
            "a binary start inside a fragmented message is out of order first"
        );
        assert_eq!(r.accept(&data(CONTINUATION, false, false), false), Ok(()));
        assert_eq!(r.accept(&data(CONTINUATION, true, false), false), Ok(()));
        assert!(!r.is_open());
        assert_eq!(
            r.accept(&data(CONTINUATION, true, false), false),
            Err(ProtocolError::Invalid),
            "nothing to continue once the message ended"
        );
        let mut r = Reassembly::default();
        assert_eq!(
            r.accept(&data(BINARY, true, false), false),
            Err(ProtocolError::Unsupported)
        );
        assert_eq!(
            r.accept(&data(BINARY, false, false), true),
            Err(ProtocolError::Unsupported)
        );
    }

    #[test]
    fn rsv1_only_on_a_first_frame_and_only_with_deflate() {
        use opcode::*;
        let mut r = Reassembly::default();
        assert_eq!(
            r.accept(&data(TEXT, true, true), false),
            Err(ProtocolError::Invalid)
        );
        assert_eq!(r.accept(&data(TEXT, false, true), true), Ok(()));
        assert!(r.compressed());
        assert_eq!(
            r.clone().accept(&data(CONTINUATION, true, true), true),
            Err(ProtocolError::Invalid)
        );
        assert_eq!(r.accept(&data(CONTINUATION, true, false), true), Ok(()));
        assert!(r.compressed(), "the completed message was compressed");
        assert_eq!(r.accept(&data(TEXT, true, false), true), Ok(()));
        assert!(!r.compressed());
    }

    #[test]
    fn control_frames_and_opcodes_are_checked_by_the_parser() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(
                parse_client_frame(&client_frame(op, b"x", true), 1000),
                Err(ProtocolError::Invalid),
                "reserved opcode {op:#x}"
            );
        }
        let mut ping = client_frame(opcode::PING, b"p", true);
        ping[0] |= 0x40;
        assert_eq!(
            parse_client_frame(&ping, 1000),
            Err(ProtocolError::Invalid),
            "a compressed control frame"
        );
        assert_eq!(
            parse_client_frame(&client_frame(opcode::CLOSE, b"", false), 1000),
            Err(ProtocolError::Invalid),
            "a fragmented control frame"
        );
    }

    #[test]
    fn close_payloads() {
        let close = |code: u16, reason: &[u8]| {
            let mut p = code.to_be_bytes().to_vec();
            p.extend_from_slice(reason);
            parse_close(&p)
        };
        assert_eq!(parse_close(b""), Ok(None));
        assert_eq!(parse_close(&[3]), Err(ProtocolError::Invalid));
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1008, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            assert_eq!(close(ok, "bye 好".as_bytes()), Ok(Some(ok)), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert_eq!(close(bad, b""), Err(ProtocolError::Invalid), "{bad}");
        }
        assert_eq!(
            close(1000, &[0xce, 0xba, 0xe1, 0xbd]),
            Err(ProtocolError::InvalidData),
            "a reason that is not UTF-8"
        );
        assert_eq!(ProtocolError::Invalid.close_code(), 1002);
        assert_eq!(ProtocolError::Unsupported.close_code(), 1003);
        assert_eq!(ProtocolError::InvalidData.close_code(), 1007);
        assert_eq!(ProtocolError::TooBig.close_code(), 1009);
    }

    #[test]
    fn corrupt_deflate_is_invalid_data() {
        assert_eq!(
            inflate_message(&[0xff, 0xff, 0xff, 0xff, 0x00], 1 << 20),
            Err(ProtocolError::InvalidData)
        );
        // A stored block announcing 5 bytes whose length check fails.
        assert_eq!(
            inflate_message(&[0x00, 0x05, 0x00, 0x00, 0x00], 1 << 20),
            Err(ProtocolError::InvalidData)
        );
    }

    #[test]
    fn deflate_offers() {
        assert!(offers_deflate("permessage-deflate; client_max_window_bits"));
        assert!(offers_deflate("x-webkit-deflate-frame, permessage-deflate"));
        assert!(!offers_deflate(
            "permessage-deflate; server_max_window_bits=10"
        ));
        assert!(!offers_deflate("x-webkit-deflate-frame"));
    }
}
