//! Output formats for existing players (API.md, Replay), pure and unit-tested:
//!
//! - native JSON: a segment `{"vod","segment","items"}` ([`segment_json`]);
//! - Bilibili XML, read by ArtPlayer and danmaku2ass ([`bilibili_xml`]);
//! - DPlayer's v3 `{"code":0,"data":[[time, type, color, author, text]...]}`
//!   ([`dplayer_json`]), with author and text HTML-escaped because DPlayer
//!   inserts them with `innerHTML`.
//!
//! Every text goes through the escaping of its format; characters XML 1.0 cannot
//! carry at all are replaced by U+FFFD (ingest already rejects control
//! characters, so this is a second line of defence).

use danmaku_core::model::Mode;
use danmaku_core::ports::ArchivedComment;
use std::fmt::Write;

/// The native segment body: `{"vod":..,"segment":n,"items":[...]}`.
pub fn segment_json(vod: &str, n: u32, items: &[ArchivedComment]) -> String {
    let mut body = String::with_capacity(64 + items.len() * 180);
    body.push_str("{\"vod\":");
    body.push_str(&serde_json::to_string(vod).expect("serializes"));
    body.push_str(",\"segment\":");
    body.push_str(&n.to_string());
    body.push_str(",\"items\":[");
    for (i, c) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&c.item.to_json());
    }
    body.push_str("]}");
    body
}

/// Exactly what a Bilibili XML document begins with (API.md).
pub const BILIBILI_HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><i>";

/// Bilibili's mode numbers: 1 scroll, 4 bottom, 5 top.
pub fn bilibili_mode(mode: Mode) -> u8 {
    match mode {
        Mode::Scroll => 1,
        Mode::Bottom => 4,
        Mode::Top => 5,
    }
}

/// DPlayer's type numbers: 0 scroll ("right"), 1 top, 2 bottom.
pub fn dplayer_type(mode: Mode) -> u8 {
    match mode {
        Mode::Scroll => 0,
        Mode::Top => 1,
        Mode::Bottom => 2,
    }
}

/// Seconds with three decimals, from milliseconds (`1234` → `1.234`).
pub fn seconds(offset_ms: i64) -> String {
    let ms = offset_ms.max(0);
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A stable, non-reversible hash of a user id for Bilibili's `userhash` field
/// (8 hex digits, like Bilibili's crc32 of the uid): xxh3 truncated to 32 bits.
pub fn user_hash(user: &str) -> String {
    format!("{:08x}", xxhash_rust::xxh3::xxh3_64(user.as_bytes()) as u32)
}

/// Whether XML 1.0 can carry `c` at all (its `Char` production).
fn xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Appends `s` XML-escaped (text content and attribute values alike): the five
/// markup characters as entities, other control characters as character
/// references, characters XML 1.0 forbids as U+FFFD.
pub fn xml_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if !xml_char(c) => out.push('\u{FFFD}'),
            c if c.is_control() => {
                let _ = write!(out, "&#x{:x};", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `s` HTML-escaped the way DPlayer escapes what it draws itself: `& < > " ' /`.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            '/' => out.push_str("&#x2f;"),
            c => out.push(c),
        }
    }
    out
}

/// A Bilibili XML document: the exact header, then one
/// `<d p="time,mode,size,color,sendtime,pool,userhash,id">text</d>` per comment,
/// then `</i>`.
pub fn bilibili_xml(items: &[ArchivedComment]) -> String {
    let mut out = String::with_capacity(64 + items.len() * 120);
    out.push_str(BILIBILI_HEADER);
    for c in items {
        let d = &c.item;
        let _ = write!(
            out,
            "<d p=\"{},{},25,{},{},0,{},{}\">",
            seconds(c.offset_ms),
            bilibili_mode(d.mode()),
            d.color,
            d.ts_ms.max(0) / 1000,
            user_hash(&d.user),
            d.id
        );
        xml_escape_into(&mut out, &d.text);
        out.push_str("</d>");
    }
    out.push_str("</i>");
    out
}

/// The author DPlayer shows: the display name, else the user id.
fn author(c: &ArchivedComment) -> &str {
    if c.item.name.is_empty() {
        &c.item.user
    } else {
        &c.item.name
    }
}

/// What a DPlayer v3 answer begins with, before its first item.
pub const DPLAYER_HEAD: &str = "{\"code\":0,\"data\":[";
/// What it ends with, after its last item.
pub const DPLAYER_TAIL: &str = "]}";

/// One item of DPlayer's answer: `[time_s, type, color, author, text]`.
pub fn dplayer_item(out: &mut String, c: &ArchivedComment) {
    let _ = write!(
        out,
        "[{},{},{},{},{}]",
        seconds(c.offset_ms),
        dplayer_type(c.item.mode()),
        c.item.color,
        serde_json::to_string(&html_escape(author(c))).expect("serializes"),
        serde_json::to_string(&html_escape(&c.item.text)).expect("serializes"),
    );
}

/// DPlayer's v3 answer: `{"code":0,"data":[[time_s, type, color, author, text],...]}`.
pub fn dplayer_json(items: &[ArchivedComment]) -> String {
    let mut out = String::with_capacity(32 + items.len() * 100);
    out.push_str(DPLAYER_HEAD);
    for (i, c) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        dplayer_item(&mut out, c);
    }
    out.push_str(DPLAYER_TAIL);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::model::{Danmaku, Kind};

    /// The hostile texts every format is tested with.
    pub(crate) fn hostile() -> Vec<String> {
        vec![
            "<script>alert(1)</script>".into(),
            "\"quoted\" 'single' `back`".into(),
            "a & b &amp; &lt; &#x41; &".into(),
            "]]> <![CDATA[ x ]]> <!-- c -->".into(),
            "tab\there\nnewline\rcr \u{0} nul \u{1b}[31m \u{7f} \u{85} \u{FFFE}".into(),
            "emoji 🎉👨‍👩‍👧 好耶 ｗｗｗ".into(),
            "/ </d> <d p=\"1\"> \u{202e}rtl".into(),
            "字".repeat(100),
            "🎉".repeat(100),
        ]
    }

    fn item(id: u64, offset: i64, mode: Mode, text: &str) -> ArchivedComment {
        ArchivedComment {
            vod: "v".into(),
            offset_ms: offset,
            item: Danmaku {
                id,
                room: "r".into(),
                user: "alice".into(),
                name: String::new(),
                ts_ms: 1_764_000_000_123,
                kind: Kind::Comment as i32,
                mode: mode as i32,
                color: 0x00FF00,
                text: text.into(),
                stream_pos_ms: None,
                vod: Some("v".into()),
                offset_ms: Some(offset),
                hidden: false,
                deletes: None,
            },
        }
    }

    /// Undoes the XML/HTML escapes used here.
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(p) = rest.find('&') {
            out.push_str(&rest[..p]);
            let end = rest[p..].find(';').expect("terminated reference") + p;
            let ent = &rest[p + 1..end];
            out.push(match ent {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                e => char::from_u32(u32::from_str_radix(e.trim_start_matches("#x"), 16).unwrap())
                    .unwrap(),
            });
            rest = &rest[end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// What survives XML: forbidden characters become U+FFFD.
    fn xml_safe(s: &str) -> String {
        s.chars()
            .map(|c| if xml_char(c) { c } else { '\u{FFFD}' })
            .collect()
    }

    #[test]
    fn bilibili_xml_shape_and_escaping() {
        let items: Vec<_> = hostile()
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mode = [Mode::Scroll, Mode::Top, Mode::Bottom][i % 3];
                item(i as u64 + 1, 1234 + i as i64 * 1000, mode, t)
            })
            .collect();
        let xml = bilibili_xml(&items);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i><d p=\""));
        assert!(xml.ends_with("</d></i>"));
        let body = &xml[BILIBILI_HEADER.len()..xml.len() - "</i>".len()];
        let docs: Vec<&str> = body.split("</d>").filter(|s| !s.is_empty()).collect();
        assert_eq!(docs.len(), items.len());
        for (d, c) in docs.iter().zip(&items) {
            let d = d.strip_prefix("<d p=\"").unwrap();
            let (p, text) = d.split_once("\">").unwrap();
            let p: Vec<&str> = p.split(',').collect();
            assert_eq!(p.len(), 8);
            assert_eq!(p[0], seconds(c.offset_ms));
            assert_eq!(p[1], bilibili_mode(c.item.mode()).to_string());
            assert_eq!(p[2], "25");
            assert_eq!(p[3], "65280");
            assert_eq!(p[4], "1764000000");
            assert_eq!(p[5], "0");
            assert_eq!(p[6], user_hash("alice"));
            assert_ne!(p[6], "alice");
            assert_eq!(p[7], c.item.id.to_string());
            assert!(!text.contains(['<', '>', '"', '\'']), "{text:?}");
            assert!(
                text.chars().all(|ch| xml_char(ch) && !ch.is_control()),
                "{text:?}"
            );
            assert_eq!(unescape(text), xml_safe(&c.item.text));
        }
        assert_eq!(bilibili_xml(&[]), format!("{BILIBILI_HEADER}</i>"));
    }

    #[test]
    fn modes_and_types() {
        assert_eq!(
            [Mode::Scroll, Mode::Bottom, Mode::Top].map(bilibili_mode),
            [1, 4, 5]
        );
        assert_eq!(
            [Mode::Scroll, Mode::Top, Mode::Bottom].map(dplayer_type),
            [0, 1, 2]
        );
        assert_eq!(seconds(0), "0.000");
        assert_eq!(seconds(1_234), "1.234");
        assert_eq!(seconds(360_000_007), "360000.007");
    }

    #[test]
    fn dplayer_shape_and_escaping() {
        let mut items: Vec<_> = hostile()
            .iter()
            .enumerate()
            .map(|(i, t)| item(i as u64 + 1, i as i64 * 1500, Mode::Top, t))
            .collect();
        items[0].item.name = "<img src=x onerror=alert(1)> & \"Bob\"".into();
        let v: serde_json::Value = serde_json::from_str(&dplayer_json(&items)).unwrap();
        assert_eq!(v["code"], 0);
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), items.len());
        for (e, c) in data.iter().zip(&items) {
            let e = e.as_array().unwrap();
            assert_eq!(e.len(), 5);
            assert_eq!(e[0].as_f64().unwrap(), c.offset_ms as f64 / 1000.0);
            assert_eq!(e[1], 1);
            assert_eq!(e[2], 0x00FF00);
            for (field, raw) in [(&e[3], author(c)), (&e[4], c.item.text.as_str())] {
                let s = field.as_str().unwrap();
                assert!(!s.contains(['<', '>', '"', '\'']), "{s:?}");
                assert_eq!(unescape(s), raw);
            }
        }
        assert_eq!(data[1][3], "alice");
        assert_eq!(dplayer_json(&[]), r#"{"code":0,"data":[]}"#);
    }

    #[test]
    fn segment_json_is_native_items() {
        let items = vec![item(7, 5, Mode::Bottom, "<b>\"hi\"</b>\u{1}")];
        let v: serde_json::Value = serde_json::from_str(&segment_json("v\"1", 3, &items)).unwrap();
        assert_eq!(v["vod"], "v\"1");
        assert_eq!(v["segment"], 3);
        assert_eq!(v["items"][0]["text"], "<b>\"hi\"</b>\u{1}");
        assert_eq!(v["items"][0]["id"], "7");
        assert_eq!(v["items"][0]["offset_ms"], 5);
    }

    #[test]
    fn user_hash_is_stable_and_short() {
        assert_eq!(user_hash("alice"), user_hash("alice"));
        assert_ne!(user_hash("alice"), user_hash("bob"));
        assert_eq!(user_hash("").len(), 8);
    }
}
