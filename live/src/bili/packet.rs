//! Bilibili's (and goim's) live packet format as pure functions: the 16-byte
//! header, several packets per WebSocket message, and the compressed batches
//! of protocol versions 2 (zlib) and 3 (brotli).
//!
//! A packet is a big-endian header — packet length u32 (header included),
//! header length u16 (always 16), protocol version u16, operation u32,
//! sequence u32 — and a body. Versions 0 and 1 carry their body as is
//! (JSON, or a u32 for the heartbeat reply); a version 2 or 3 packet of
//! operation 5 carries a compressed run of version-0 packets.
//!
//! Everything here is bounded: a packet longer than the caller's maximum, a
//! header length other than 16, a compressed batch that inflates past the
//! maximum, or a compressed batch inside a compressed batch is an error, never
//! a panic or an allocation of what the client claims. Unknown operations are
//! returned as they are ([`Op::Other`]); what to do with them is the caller's
//! business.
//!
//! Imports nothing of this crate.

use std::io::{Read, Write};

/// Length of every packet header.
pub const HEADER_LEN: usize = 16;

/// The operations of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// 2: the client's heartbeat (every 30 s).
    Heartbeat,
    /// 3: the answer to a heartbeat; its body is the online count as a u32.
    HeartbeatReply,
    /// 5: commands (`{"cmd": ...}` JSON), or a compressed batch of packets.
    Message,
    /// 7: the client's authentication (JSON), its first packet.
    Auth,
    /// 8: the answer to the authentication (`{"code": 0}`).
    AuthReply,
    /// Any other operation number, reported as it came.
    Other(u32),
}

impl Op {
    /// The operation number on the wire.
    pub fn code(self) -> u32 {
        match self {
            Op::Heartbeat => 2,
            Op::HeartbeatReply => 3,
            Op::Message => 5,
            Op::Auth => 7,
            Op::AuthReply => 8,
            Op::Other(n) => n,
        }
    }

    /// The operation of a wire number.
    pub fn from_code(n: u32) -> Self {
        match n {
            2 => Op::Heartbeat,
            3 => Op::HeartbeatReply,
            5 => Op::Message,
            7 => Op::Auth,
            8 => Op::AuthReply,
            n => Op::Other(n),
        }
    }
}

/// How a batch of commands is sent: the `protover` of the auth body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protover {
    /// 0 (or absent): plain version-0 packets, several per message.
    Plain,
    /// 2: one version-2 packet holding the zlib-compressed packets.
    Zlib,
    /// 3: one version-3 packet holding the brotli-compressed packets.
    Brotli,
}

impl Protover {
    /// The `protover` number a client asks for; `None` for one we do not speak
    /// (1 counts as 0: it is the version of heartbeats, never compressed).
    pub fn from_number(n: u64) -> Option<Self> {
        match n {
            0 | 1 => Some(Protover::Plain),
            2 => Some(Protover::Zlib),
            3 => Some(Protover::Brotli),
            _ => None,
        }
    }

    /// Index of this protover among the three (for per-version caches).
    pub fn index(self) -> usize {
        match self {
            Protover::Plain => 0,
            Protover::Zlib => 1,
            Protover::Brotli => 2,
        }
    }
}

/// One decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Protocol version of the header (0 or 1 once decompressed).
    pub version: u16,
    /// The operation.
    pub op: Op,
    /// The header's sequence number.
    pub seq: u32,
    /// The body.
    pub body: Vec<u8>,
}

/// Why bytes are not packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The header's length field is not 16.
    #[error("packet header length is not 16")]
    HeaderLength,
    /// The packet length is shorter than its header.
    #[error("packet shorter than its header")]
    Short,
    /// A packet (or a batch once decompressed) is over the maximum.
    #[error("packet over the size limit")]
    TooBig,
    /// The message ends inside a packet.
    #[error("message ends inside a packet")]
    Truncated,
    /// A compressed body that does not decompress.
    #[error("compressed body does not decompress")]
    Corrupt,
    /// A compressed batch inside a compressed batch, or a protocol version
    /// other than 0-3.
    #[error("unsupported protocol version")]
    Version,
}

/// Appends one packet to `out`.
pub fn put_packet(out: &mut Vec<u8>, version: u16, op: Op, seq: u32, body: &[u8]) {
    let len = u32::try_from(HEADER_LEN + body.len()).expect("packet under 4 GiB");
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&op.code().to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
}

/// One packet as bytes.
pub fn packet(version: u16, op: Op, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    put_packet(&mut out, version, op, seq, body);
    out
}

/// The operation-3 packet answering a heartbeat with the online count.
pub fn heartbeat_reply(online: u32) -> Vec<u8> {
    packet(1, Op::HeartbeatReply, 1, &online.to_be_bytes())
}

/// The operation-8 packet answering an authentication with `body` (JSON).
pub fn auth_reply(body: &str) -> Vec<u8> {
    packet(1, Op::AuthReply, 1, body.as_bytes())
}

/// The header of the packet at the front of `buf`, checked: its version,
/// operation, sequence and total length. `Ok(None)` when `buf` holds less than
/// a header.
fn header(buf: &[u8], max_packet: usize) -> Result<Option<(u16, Op, u32, usize)>, PacketError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let be32 = |at: usize| u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    let len = be32(0) as usize;
    let header_len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    let version = u16::from_be_bytes([buf[6], buf[7]]);
    if header_len != HEADER_LEN {
        return Err(PacketError::HeaderLength);
    }
    if len < HEADER_LEN {
        return Err(PacketError::Short);
    }
    if len > max_packet {
        return Err(PacketError::TooBig);
    }
    if version > 3 {
        return Err(PacketError::Version);
    }
    Ok(Some((version, Op::from_code(be32(8)), be32(12), len)))
}

/// Splits one WebSocket message into its packets, each at most `max_packet`
/// bytes; compressed batches (version 2 or 3, operation 5) are decompressed
/// (to at most `max_packet` bytes) and their packets returned in their place.
pub fn decode_message(buf: &[u8], max_packet: usize) -> Result<Vec<Packet>, PacketError> {
    let mut out = Vec::new();
    split(buf, max_packet, true, &mut out)?;
    Ok(out)
}

fn split(
    mut buf: &[u8],
    max_packet: usize,
    outer: bool,
    out: &mut Vec<Packet>,
) -> Result<(), PacketError> {
    while !buf.is_empty() {
        let Some((version, op, seq, len)) = header(buf, max_packet)? else {
            return Err(PacketError::Truncated);
        };
        if buf.len() < len {
            return Err(PacketError::Truncated);
        }
        let body = &buf[HEADER_LEN..len];
        match (version, op) {
            (2 | 3, Op::Message) if outer => {
                let inner = if version == 2 {
                    inflate_zlib(body, max_packet)?
                } else {
                    inflate_brotli(body, max_packet)?
                };
                split(&inner, max_packet, false, out)?;
            }
            (2 | 3, _) if !outer => return Err(PacketError::Version),
            _ => out.push(Packet {
                version,
                op,
                seq,
                body: body.to_vec(),
            }),
        }
        buf = &buf[len..];
    }
    Ok(())
}

/// Reads at most `max` bytes of a decompressor: [`PacketError::TooBig`] past it.
fn read_bounded(mut r: impl Read, max: usize) -> Result<Vec<u8>, PacketError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    (&mut r)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| PacketError::Corrupt)?;
    if out.len() > max {
        return Err(PacketError::TooBig);
    }
    Ok(out)
}

/// Inflates a zlib stream to at most `max` bytes.
pub fn inflate_zlib(body: &[u8], max: usize) -> Result<Vec<u8>, PacketError> {
    read_bounded(flate2::read::ZlibDecoder::new(body), max)
}

/// Decompresses a brotli stream to at most `max` bytes.
pub fn inflate_brotli(body: &[u8], max: usize) -> Result<Vec<u8>, PacketError> {
    read_bounded(brotli::Decompressor::new(body, 4096), max)
}

/// zlib of `data` (a batch is compressed once for a whole room: favour speed).
pub fn deflate_zlib(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::ZlibEncoder::new(
        Vec::with_capacity(data.len() / 2 + 64),
        flate2::Compression::fast(),
    );
    e.write_all(data).expect("in-memory zlib");
    e.finish().expect("in-memory zlib")
}

/// brotli of `data`: quality 5 and a 256 KiB window (batches are small; a
/// larger window costs memory, not ratio).
pub fn compress_brotli(data: &[u8]) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: 5,
        lgwin: 18,
        size_hint: data.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    brotli::BrotliCompress(&mut &data[..], &mut out, &params).expect("in-memory brotli");
    out
}

/// The bytes of a batch of commands (each a JSON body) as `protover` sends
/// them: the version-0 packets themselves, or one version-2/3 packet holding
/// them compressed.
pub fn encode_batch<'a>(protover: Protover, bodies: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut plain = Vec::new();
    for b in bodies {
        put_packet(&mut plain, 0, Op::Message, 0, b);
    }
    match protover {
        Protover::Plain => plain,
        Protover::Zlib => packet(2, Op::Message, 0, &deflate_zlib(&plain)),
        Protover::Brotli => packet(3, Op::Message, 0, &compress_brotli(&plain)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn the_header_is_sixteen_big_endian_bytes() {
        let p = packet(1, Op::Auth, 9, b"{}");
        assert_eq!(
            p,
            [0, 0, 0, 18, 0, 16, 0, 1, 0, 0, 0, 7, 0, 0, 0, 9, b'{', b'}']
        );
        assert_eq!(heartbeat_reply(258)[16..], [0, 0, 1, 2]);
        assert_eq!(&heartbeat_reply(1)[8..12], &[0, 0, 0, 3]);
        let back = decode_message(&auth_reply(r#"{"code":0}"#), MAX).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].op, Op::AuthReply);
        assert_eq!(back[0].body, br#"{"code":0}"#);
    }

    #[test]
    fn several_packets_share_a_message() {
        let mut m = packet(1, Op::Heartbeat, 1, b"[object Object]");
        put_packet(&mut m, 1, Op::Auth, 2, br#"{"roomid":1}"#);
        put_packet(&mut m, 0, Op::Other(99), 3, b"");
        let ps = decode_message(&m, MAX).unwrap();
        let ops: Vec<Op> = ps.iter().map(|p| p.op).collect();
        assert_eq!(ops, [Op::Heartbeat, Op::Auth, Op::Other(99)]);
        assert_eq!(ps[2].seq, 3);
        assert!(ps[2].body.is_empty());
        assert_eq!(Op::from_code(99).code(), 99, "unknown ops are reported");
    }

    #[test]
    fn every_version_roundtrips_a_batch() {
        let bodies: Vec<Vec<u8>> = (0..50)
            .map(|i| {
                format!(r#"{{"cmd":"DANMU_MSG","info":[[],"好耶 {i} \u0000 </d>"]}}"#).into_bytes()
            })
            .collect();
        for pv in [Protover::Plain, Protover::Zlib, Protover::Brotli] {
            let wire = encode_batch(pv, bodies.iter().map(Vec::as_slice));
            let version = u16::from_be_bytes([wire[6], wire[7]]);
            assert_eq!(version as usize, [0, 2, 3][pv.index()]);
            let back = decode_message(&wire, MAX).unwrap();
            assert_eq!(back.len(), 50, "{pv:?}");
            for (p, b) in back.iter().zip(&bodies) {
                assert_eq!((p.version, p.op), (0, Op::Message));
                assert_eq!(&p.body, b);
            }
            if pv != Protover::Plain {
                assert!(wire.len() < bodies.iter().map(Vec::len).sum::<usize>() / 2);
            }
        }
        assert!(encode_batch(Protover::Plain, []).is_empty());
        assert_eq!(Protover::from_number(1), Some(Protover::Plain));
        assert_eq!(Protover::from_number(4), None);
    }

    #[test]
    fn bad_headers_and_truncation_are_errors() {
        let mut p = packet(1, Op::Auth, 1, b"{}");
        p[5] = 17;
        assert_eq!(decode_message(&p, MAX), Err(PacketError::HeaderLength));
        let mut p = packet(1, Op::Auth, 1, b"{}");
        p[3] = 10;
        assert_eq!(decode_message(&p, MAX), Err(PacketError::Short));
        let p = packet(1, Op::Auth, 1, &[b'x'; 100]);
        assert_eq!(decode_message(&p, 50), Err(PacketError::TooBig));
        for cut in 1..p.len() {
            assert_eq!(
                decode_message(&p[..cut], MAX),
                Err(PacketError::Truncated),
                "cut at {cut}"
            );
        }
        let mut p = packet(1, Op::Auth, 1, b"");
        p[7] = 4;
        assert_eq!(decode_message(&p, MAX), Err(PacketError::Version));
        // A packet claiming 4 GiB allocates nothing.
        let mut p = packet(1, Op::Auth, 1, b"");
        p[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode_message(&p, MAX), Err(PacketError::TooBig));
    }

    #[test]
    fn compressed_bodies_are_bounded() {
        let bodies = vec![vec![b'a'; 10_000]; 20];
        for pv in [Protover::Zlib, Protover::Brotli] {
            let wire = encode_batch(pv, bodies.iter().map(Vec::as_slice));
            assert!(wire.len() < 2_000, "a bomb: small on the wire");
            assert_eq!(decode_message(&wire, 100_000), Err(PacketError::TooBig));
            // Garbage in a compressed packet.
            let junk = packet(
                [0, 0, 2, 3][pv.index() + 1],
                Op::Message,
                0,
                b"\xff\x00junk",
            );
            assert_eq!(decode_message(&junk, MAX), Err(PacketError::Corrupt));
            // A compressed batch inside a compressed batch.
            let mut raw_nested = Vec::new();
            let inner = match pv {
                Protover::Zlib => deflate_zlib(&wire),
                _ => compress_brotli(&wire),
            };
            put_packet(
                &mut raw_nested,
                [0, 0, 2, 3][pv.index() + 1],
                Op::Message,
                0,
                &inner,
            );
            assert_eq!(
                decode_message(&raw_nested, 1 << 22),
                Err(PacketError::Version)
            );
        }
    }

    /// Hostile bytes never panic and never allocate what they claim; what
    /// the encoder writes always decodes back.
    #[test]
    fn random_bytes_are_errors_or_packets_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..64);
            let mut buf: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            // Often a plausible header, so the body paths run too.
            if n >= HEADER_LEN && rng.gen_bool(0.7) {
                buf[..4].copy_from_slice(&(n as u32).to_be_bytes());
                buf[4..6].copy_from_slice(&16u16.to_be_bytes());
                buf[6..8].copy_from_slice(&rng.gen_range(0u16..4).to_be_bytes());
            }
            if let Ok(packets) = decode_message(&buf, 1024) {
                assert!(packets.iter().all(|p| p.body.len() <= 1024));
            }
        }
        for _ in 0..200 {
            let bodies: Vec<Vec<u8>> = (0..rng.gen_range(0..20))
                .map(|_| (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect())
                .collect();
            for pv in [Protover::Plain, Protover::Zlib, Protover::Brotli] {
                let wire = encode_batch(pv, bodies.iter().map(Vec::as_slice));
                let back = decode_message(&wire, 1 << 20).unwrap();
                assert_eq!(
                    back.iter().map(|p| &p.body).collect::<Vec<_>>(),
                    bodies.iter().collect::<Vec<_>>()
                );
            }
        }
    }
}
