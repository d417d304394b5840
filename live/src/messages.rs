//! The JSON the live role writes to its clients, and nothing else: every
//! message a WebSocket client receives (`hello`, `batch`, `gap`, `ack`,
//! `error`), the long-poll page, the refusal of a plain HTTP request to the
//! WebSocket endpoint, and [`RingItem`], an item with its client JSON encoded
//! once. The shapes are the contract of docs/API.md; a new message type (such
//! as `delete` or `online`) gets its builder here, beside its peers, and the
//! module that sends it calls that builder.
//!
//! Ping, pong and close are WebSocket control frames, not JSON: they live in
//! [`crate::frames`].
//!
//! May import: `danmaku_core` only (no other module of this crate).
//!
//! The `json!` builders keep serde_json's key order (sorted, no
//! `preserve_order`); the hand-written ones (`batch`, the poll page) are the
//! hot ones and keep their fixed key order. Either way the bytes are what
//! clients have always received.

use danmaku_core::cursor::Cursor;
use danmaku_core::error::ApiError;
use danmaku_core::model::{Danmaku, Kind};
use serde_json::{json, Value};
use std::sync::Arc;

/// One item as the room keeps it: seq, server time, sender, kind and its client
/// JSON, encoded once and shared by every message that carries it.
#[derive(Clone, Debug)]
pub struct RingItem {
    /// The item's seq in its room (what cursors count).
    pub seq: u64,
    /// Server time, ms since the epoch.
    pub ts_ms: i64,
    /// The sender (its own comments withheld by the display budget go to it).
    pub user: Arc<str>,
    /// Comment, gift, like or system: what the display budget looks at.
    pub kind: Kind,
    /// The item as clients see it (one element of a batch's `items`); for a
    /// deletion record, its `delete` message.
    pub json: Arc<str>,
    /// The comment's id.
    pub id: u64,
    /// A deletion record: the id of the comment it takes back. Never shown as
    /// an item: clients get `{"type":"delete"}` (WebSocket) or `deleted` (polls).
    pub deletes: Option<u64>,
    /// A shadow-banned sender's comment: shown only to its sender.
    pub hidden: bool,
}

impl RingItem {
    /// The item of `d`, stored under `seq`.
    pub fn from_danmaku(seq: u64, d: &Danmaku) -> Self {
        let json = match d.deletes {
            Some(target) => delete(&[target]),
            None => d.to_json(),
        };
        Self {
            seq,
            ts_ms: d.ts_ms,
            user: Arc::from(d.user.as_str()),
            kind: if d.deletes.is_some() {
                Kind::System
            } else {
                d.kind()
            },
            json: Arc::from(json),
            id: d.id,
            deletes: d.deletes,
            hidden: d.hidden,
        }
    }

    /// Whether clients see this as an item (not a deletion record).
    pub fn is_shown(&self) -> bool {
        self.deletes.is_none()
    }
}

/// The comments that the deletion records among `items` take back.
pub fn deleted_ids(items: &[RingItem]) -> Vec<u64> {
    items.iter().filter_map(|i| i.deletes).collect()
}

// ---- WebSocket: what the server sends on its own ----

/// `{"type":"hello","room":...,"cursor":...}`: the first message of a
/// connection; its cursor is where the backlog and live frames continue from.
pub fn hello(room: &str, cursor: u64) -> String {
    json!({"type": "hello", "room": room, "cursor": Cursor(cursor).encode()}).to_string()
}

/// `{"type":"batch","cursor":...,"items":[...]}` from pre-encoded items, with
/// `"likes": n` when likes were aggregated.
pub fn batch(items: &[RingItem], cursor: u64, likes: u64) -> String {
    let mut s = String::with_capacity(80 + items.iter().map(|i| i.json.len() + 1).sum::<usize>());
    s.push_str("{\"type\":\"batch\",\"cursor\":\"");
    s.push_str(&Cursor(cursor).encode());
    s.push_str("\",\"items\":[");
    for (n, i) in items.iter().filter(|i| i.is_shown()).enumerate() {
        if n > 0 {
            s.push(',');
        }
        s.push_str(&i.json);
    }
    s.push(']');
    if likes > 0 {
        s.push_str(",\"likes\":");
        s.push_str(&likes.to_string());
    }
    s.push('}');
    s
}

/// A batch of `items` whose cursor is the last item's seq (the backlog).
pub fn batch_of(items: &[RingItem]) -> String {
    batch(items, items.last().map_or(0, |i| i.seq), 0)
}

/// `{"type":"gap","cursor":...}`: the client fell too far behind; it resumes
/// from this cursor (the last item it was sent).
pub fn gap(cursor: u64) -> String {
    json!({"type": "gap", "cursor": Cursor(cursor).encode()}).to_string()
}

// ---- WebSocket: replies to a client's `send` ----

/// `{"type":"ack","ref":...,"id":...}`: the send was accepted as item `id`.
pub fn ack(reference: Option<Value>, id: u64) -> Value {
    json!({"type": "ack", "ref": reference, "id": id.to_string()})
}

/// `{"type":"error","ref":...,"error":{"code","message"}}`: the send (or the
/// message) was refused.
pub fn error(reference: Option<Value>, e: &ApiError) -> Value {
    json!({"type": "error", "ref": reference, "error": {"code": e.code.as_str(), "message": e.message}})
}

/// `{"type":"delete","ids":[...]}`: comments taken back (API.md, Moderation).
pub fn delete(ids: &[u64]) -> String {
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    json!({"type": "delete", "ids": ids}).to_string()
}

/// The `delete` message of the deletion records among `items`, if any.
pub fn deletes_of(items: &[RingItem]) -> Option<String> {
    let ids = deleted_ids(items);
    (!ids.is_empty()).then(|| delete(&ids))
}

/// `{"type":"online","count":n}`: the room's viewers over every node.
pub fn online(count: u64) -> String {
    json!({"type": "online", "count": count}).to_string()
}

// ---- HTTP ----

/// The body of the 426 answer to a request to the WebSocket endpoint that is
/// not a WebSocket (version 13) handshake.
pub fn upgrade_required() -> Value {
    json!({"error": {"code": "invalid_json", "message": "this endpoint speaks WebSocket (version 13)"}})
}

/// `{"items":[...],"cursor":...,"next_poll_ms":n}`: one long-poll page, with
/// `"gap":true` when the items right after the request's cursor are no longer
/// held (the page continues from the oldest position the server still has; the
/// client goes on from `cursor` as always).
pub fn poll_page(items: &[RingItem], cursor: u64, next_poll_ms: u64, gap: bool) -> String {
    let mut body =
        String::with_capacity(64 + items.iter().map(|i| i.json.len() + 1).sum::<usize>());
    body.push_str("{\"items\":[");
    for (n, i) in items.iter().filter(|i| i.is_shown()).enumerate() {
        if n > 0 {
            body.push(',');
        }
        body.push_str(&i.json);
    }
    body.push_str("],\"cursor\":\"");
    body.push_str(&Cursor(cursor).encode());
    body.push_str("\",\"next_poll_ms\":");
    body.push_str(&next_poll_ms.to_string());
    if gap {
        body.push_str(",\"gap\":true");
    }
    let deleted = deleted_ids(items);
    if !deleted.is_empty() {
        body.push_str(",\"deleted\":");
        let ids: Vec<String> = deleted.iter().map(u64::to_string).collect();
        body.push_str(&serde_json::to_string(&ids).expect("strings serialize"));
    }
    body.push('}');
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, json: &str) -> RingItem {
        RingItem {
            seq,
            ts_ms: 0,
            user: Arc::from("u"),
            kind: Kind::Comment,
            json: Arc::from(json),
            id: seq,
            deletes: None,
            hidden: false,
        }
    }

    #[test]
    fn deletion_records_are_delete_messages_never_items() {
        let c = |n| Cursor(n).encode();
        let d = Danmaku {
            id: 9,
            deletes: Some(3),
            ..Default::default()
        };
        let del = RingItem::from_danmaku(6, &d);
        assert!(!del.is_shown());
        let items = [item(3, r#"{"a":1}"#), del];
        assert_eq!(
            batch(&items, 6, 0),
            format!(
                r#"{{"type":"batch","cursor":"{}","items":[{{"a":1}}]}}"#,
                c(6)
            )
        );
        assert_eq!(
            deletes_of(&items).as_deref(),
            Some(r#"{"ids":["3"],"type":"delete"}"#)
        );
        assert_eq!(deletes_of(&items[..1]), None);
        assert_eq!(
            poll_page(&items, 6, 0, false),
            format!(
                r#"{{"items":[{{"a":1}}],"cursor":"{}","next_poll_ms":0,"deleted":["3"]}}"#,
                c(6)
            )
        );
        assert_eq!(online(2), r#"{"count":2,"type":"online"}"#);
    }

    #[test]
    fn the_shapes_clients_parse() {
        let c = |n| Cursor(n).encode();
        assert_eq!(
            hello("r1", 7),
            format!(r#"{{"cursor":"{}","room":"r1","type":"hello"}}"#, c(7))
        );
        let items = [item(3, r#"{"a":1}"#), item(5, r#"{"b":2}"#)];
        assert_eq!(
            batch(&items, 9, 2),
            format!(
                r#"{{"type":"batch","cursor":"{}","items":[{{"a":1}},{{"b":2}}],"likes":2}}"#,
                c(9)
            )
        );
        assert_eq!(batch_of(&items), batch(&items, 5, 0));
        assert_eq!(batch_of(&[]), batch(&[], 0, 0));
        assert_eq!(gap(4), format!(r#"{{"cursor":"{}","type":"gap"}}"#, c(4)));
        assert_eq!(
            ack(Some(json!(1)), 42).to_string(),
            r#"{"id":"42","ref":1,"type":"ack"}"#
        );
        assert_eq!(
            poll_page(&items, 5, 500, false),
            format!(
                r#"{{"items":[{{"a":1}},{{"b":2}}],"cursor":"{}","next_poll_ms":500}}"#,
                c(5)
            )
        );
        assert_eq!(
            poll_page(&[], 9, 0, true),
            format!(
                r#"{{"items":[],"cursor":"{}","next_poll_ms":0,"gap":true}}"#,
                c(9)
            )
        );
        for s in [
            hello("r", 1),
            batch(&items, 1, 0),
            gap(1),
            poll_page(&[], 1, 0, false),
            poll_page(&items, 1, 0, true),
        ] {
            serde_json::from_str::<Value>(&s).expect("valid JSON");
        }
    }
}
