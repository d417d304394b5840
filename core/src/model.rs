//! The comment model, its binary encoding (protobuf via prost derive) and the
//! client JSON of API.md.

use bytes::Bytes;
use prost::Message;
use serde::Serialize;

/// What a comment is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Kind {
    Comment = 0,
    Gift = 1,
    Like = 2,
    System = 3,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Comment => "comment",
            Kind::Gift => "gift",
            Kind::Like => "like",
            Kind::System => "system",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "comment" => Kind::Comment,
            "gift" => Kind::Gift,
            "like" => Kind::Like,
            "system" => Kind::System,
            _ => return None,
        })
    }
}

/// How a comment is shown on the video.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Mode {
    Scroll = 0,
    Top = 1,
    Bottom = 2,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Scroll => "scroll",
            Mode::Top => "top",
            Mode::Bottom => "bottom",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "scroll" => Mode::Scroll,
            "top" => Mode::Top,
            "bottom" => Mode::Bottom,
            _ => return None,
        })
    }
}

/// Largest valid color (0xRRGGBB).
pub const MAX_COLOR: u32 = 0xFF_FF_FF;
/// Default color: white.
pub const DEFAULT_COLOR: u32 = 0xFF_FF_FF;

/// One comment. This struct is the wire format on the Bus (the Kafka topic's value)
/// and the member stored in the SliceStore; field tags are stable.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Danmaku {
    /// Time-ordered, cluster-wide unique id (see [`crate::id`]).
    #[prost(fixed64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub room: String,
    #[prost(string, tag = "3")]
    pub user: String,
    /// Display name, empty when the token carried none.
    #[prost(string, tag = "4")]
    pub name: String,
    /// Server time at ingest, ms since the epoch.
    #[prost(int64, tag = "5")]
    pub ts_ms: i64,
    #[prost(enumeration = "Kind", tag = "6")]
    pub kind: i32,
    #[prost(enumeration = "Mode", tag = "7")]
    pub mode: i32,
    #[prost(uint32, tag = "8")]
    pub color: u32,
    #[prost(string, tag = "9")]
    pub text: String,
    /// Player position in the live stream when the viewer typed, if sent.
    #[prost(int64, optional, tag = "10")]
    pub stream_pos_ms: Option<i64>,
    /// Set for comments posted on a recording, and once archived.
    #[prost(string, optional, tag = "11")]
    pub vod: Option<String>,
    /// Offset in the VOD, with `vod`.
    #[prost(int64, optional, tag = "12")]
    pub offset_ms: Option<i64>,
    /// Sent by a shadow-banned user: shown only to that user (their own
    /// connections and polls), never to others, archived with this flag.
    /// Absent on the wire (and in client JSON) when false.
    #[prost(bool, tag = "13")]
    pub hidden: bool,
    /// Set on a deletion record: this record takes back comment `deletes` of
    /// the room (API.md, Moderation). A deletion travels the room's stream like
    /// a comment (through the Bus, stored in the SliceStore in seq order) so it
    /// is ordered with the comments and survives crashes like them; it is never
    /// shown as an item. Its `user` is who deleted, `text` the reason, `ts_ms`
    /// when, and `vod` / `offset_ms` the deleted comment's when known.
    #[prost(fixed64, optional, tag = "20")]
    pub deletes: Option<u64>,
}

impl Danmaku {
    /// Whether this record is a deletion ([`Danmaku::deletes`]), not a comment.
    pub fn is_deletion(&self) -> bool {
        self.deletes.is_some()
    }
    /// Protobuf bytes.
    pub fn encode_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }
    /// Decodes protobuf bytes.
    pub fn decode_bytes(buf: &[u8]) -> Result<Self, prost::DecodeError> {
        Danmaku::decode(buf)
    }
    /// The client view of API.md (ids as strings).
    pub fn to_client(&self) -> ClientItem<'_> {
        ClientItem {
            id: self.id.to_string(),
            room: &self.room,
            user: &self.user,
            name: if self.name.is_empty() {
                None
            } else {
                Some(&self.name)
            },
            ts: self.ts_ms,
            kind: self.kind().as_str(),
            mode: self.mode().as_str(),
            color: self.color,
            text: &self.text,
            vod: self.vod.as_deref(),
            offset_ms: self.offset_ms,
            hidden: self.hidden,
        }
    }
    /// The client JSON as a string.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_client()).expect("item serializes")
    }
}

/// The id of an encoded comment without decoding the rest: prost writes field
/// 1 (`fixed64`, key byte `0x09`) first. `None` when the bytes do not start
/// that way (decode them instead).
pub fn peek_id(data: &[u8]) -> Option<u64> {
    match data {
        [0x09, rest @ ..] if rest.len() >= 8 => {
            Some(u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")))
        }
        _ => None,
    }
}

/// A comment as clients see it (API.md, Items).
#[derive(Debug, Serialize)]
pub struct ClientItem<'a> {
    pub id: String,
    pub room: &'a str,
    pub user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub ts: i64,
    pub kind: &'static str,
    pub mode: &'static str,
    pub color: u32,
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset_ms: Option<i64>,
    /// Only on a shadow-banned user's own comments (what only they see).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

/// Room and VOD ids: `[A-Za-z0-9_-]{1,64}`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Danmaku {
        Danmaku {
            id: 7263549816238080001,
            room: "r1".into(),
            user: "alice".into(),
            name: "Alice".into(),
            ts_ms: 1764000000123,
            kind: Kind::Gift as i32,
            mode: Mode::Top as i32,
            color: 0x00FF00,
            text: "好耶 <b>\"x\"</b> 🎉".into(),
            stream_pos_ms: Some(5),
            vod: None,
            offset_ms: None,
            hidden: false,
            deletes: None,
        }
    }

    #[test]
    fn the_id_is_read_without_decoding() {
        let d = sample();
        assert_eq!(peek_id(&d.encode_bytes()), Some(d.id));
        let del = Danmaku {
            deletes: Some(d.id),
            hidden: true,
            ..sample()
        };
        let back = Danmaku::decode_bytes(&del.encode_bytes()).unwrap();
        assert!(back.is_deletion() && back.hidden);
        assert_eq!(peek_id(&del.encode_bytes()), Some(d.id));
        assert_eq!(peek_id(&[0x09, 1, 2]), None);
        assert_eq!(peek_id(&[]), None);
    }

    #[test]
    fn protobuf_roundtrip_is_exact_and_deterministic() {
        let d = sample();
        let a = d.encode_bytes();
        let b = d.clone().encode_bytes();
        assert_eq!(a, b);
        assert_eq!(Danmaku::decode_bytes(&a).unwrap(), d);
    }

    #[test]
    fn client_json_has_string_ids_and_names() {
        let v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        assert_eq!(v["id"], "7263549816238080001");
        assert_eq!(v["kind"], "gift");
        assert_eq!(v["mode"], "top");
        assert_eq!(v["color"], 0x00FF00);
        assert_eq!(v["text"], "好耶 <b>\"x\"</b> 🎉");
        assert!(v.get("vod").is_none());
    }

    #[test]
    fn ids_are_validated() {
        assert!(valid_id("r1"));
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id("é"));
    }

    #[test]
    fn kinds_and_modes_parse() {
        for k in [Kind::Comment, Kind::Gift, Kind::Like, Kind::System] {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
        for m in [Mode::Scroll, Mode::Top, Mode::Bottom] {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Kind::parse("x"), None);
        assert_eq!(Mode::parse("Scroll"), None);
    }
}
