//! The operation-5 commands of `/sub`, built from what the room keeps: each
//! item's client JSON ([`RingItem::json`]) becomes `DANMU_MSG` (a comment),
//! `SEND_GIFT` (a gift) or `SYS_MSG` (a system line); `WATCHED_CHANGE`
//! carries the online count and `RECALL_DANMU_MSG` a deletion.
//!
//! `DANMU_MSG`'s `info` array fills every index the common clients (blivedm,
//! bilibili-live-ws, blivechat, BililiveRecorder) read, in the layout of
//! docs/API.md. Bilibili's numeric uid is the user id when it is a number
//! below 2^53, else a 53-bit hash of it (JavaScript clients keep it exact);
//! the user id itself is in `info[0][15].extra` (`"user"`), beside `id_str`.
//!
//! Every command carries our one extension, `"cursor"`: the cursor of its
//! item, which a client passes back in its auth body to resume after it.
//! Stock clients ignore the key.
//!
//! May import: [`crate::messages`] (the items) and `danmaku_core`.

use crate::messages::RingItem;
use danmaku_core::cursor::Cursor;
use serde::Deserialize;
use serde_json::{json, Value};

/// An item's client JSON as these builders read it back.
#[derive(Debug, Deserialize)]
struct Item {
    id: String,
    user: String,
    #[serde(default)]
    name: Option<String>,
    ts: i64,
    kind: String,
    mode: String,
    color: u32,
    text: String,
    #[serde(default)]
    vod: Option<String>,
}

/// Bilibili's numeric uid for one of our user ids: the id itself when it is a
/// number JavaScript holds exactly, else a 53-bit FNV-1a hash of it.
pub fn numeric_uid(user: &str) -> u64 {
    const SAFE: u64 = (1 << 53) - 1;
    if let Ok(n) = user.parse::<u64>() {
        if n <= SAFE {
            return n;
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h & SAFE
}

/// Bilibili's mode number: 1 scroll, 4 bottom, 5 top.
pub fn bili_mode(mode: &str) -> u8 {
    match mode {
        "bottom" => 4,
        "top" => 5,
        _ => 1,
    }
}

/// The command of one item, with its cursor; `None` for an item that is not
/// shown on `/sub` (likes: the batch's like count has no Bilibili command; a
/// comment posted on a recording, which travels on its room's log but was not
/// said live) or whose JSON does not parse.
pub fn command(item: &RingItem) -> Option<String> {
    // A deletion record: the comment it takes back, as Bilibili recalls one.
    if let Some(id) = item.deletes {
        return Some(recall_danmu_msg(id));
    }
    let it: Item = serde_json::from_str(&item.json).ok()?;
    if it.vod.is_some() {
        return None;
    }
    let cursor = Cursor(item.seq).encode();
    let v = match it.kind.as_str() {
        "comment" => danmu_msg(&it, &cursor),
        "gift" => send_gift(&it, &cursor),
        "system" => json!({"cmd": "SYS_MSG", "msg": it.text, "cursor": cursor}),
        _ => return None,
    };
    Some(v.to_string())
}

/// The commands of a batch of items, in order.
pub fn commands(items: &[RingItem]) -> Vec<String> {
    items.iter().filter_map(command).collect()
}

fn danmu_msg(it: &Item, cursor: &str) -> Value {
    let uid = numeric_uid(&it.user);
    let name = it.name.as_deref().unwrap_or(&it.user);
    let extra = json!({
        "id_str": it.id,
        "user": it.user,
        "mode": 0,
        "color": it.color,
        "font_size": 25,
        "content": it.text,
        "send_from_me": false,
    })
    .to_string();
    let user_hash = format!("{:08x}", uid as u32);
    json!({
        "cmd": "DANMU_MSG",
        "info": [
            [
                0,
                bili_mode(&it.mode),
                25,
                it.color,
                it.ts,
                it.ts / 1000,
                0,
                user_hash,
                0,
                0,
                0,
                "",
                0,
                "{}",
                "{}",
                {"extra": extra, "mode": 0, "show_player_type": 0},
            ],
            it.text,
            [uid, name, 0, 0, 0, 10000, 1, ""],
            [],
            [0, 0, 9_868_950, ">50000", 0],
            [],
            0,
            0,
            null,
            {"ts": it.ts / 1000, "ct": ""},
            0,
            0,
            null,
            null,
            0,
            0,
            [0],
        ],
        "cursor": cursor,
    })
}

fn send_gift(it: &Item, cursor: &str) -> Value {
    let uid = numeric_uid(&it.user);
    let name = it.name.as_deref().unwrap_or(&it.user);
    json!({
        "cmd": "SEND_GIFT",
        "data": {
            "giftName": it.text,
            "giftId": 0,
            "giftType": 0,
            "num": 1,
            "uid": uid,
            "uname": name,
            "face": "",
            "guard_level": 0,
            "timestamp": it.ts / 1000,
            "action": "投喂",
            "price": 0,
            "rnd": it.id,
            "tid": it.id,
            "coin_type": "silver",
            "total_coin": 0,
            "medal_info": {"medal_name": "", "medal_level": 0, "target_id": 0},
        },
        "cursor": cursor,
    })
}

/// `WATCHED_CHANGE` with the room's online count.
pub fn watched_change(online: u64) -> String {
    json!({
        "cmd": "WATCHED_CHANGE",
        "data": {"num": online, "text_small": online.to_string(), "text_large": format!("{online}人看过")},
    })
    .to_string()
}

/// `RECALL_DANMU_MSG` for the deleted comment `id` (a number, as Bilibili
/// sends it, and exactly as `target_id_str`).
pub fn recall_danmu_msg(id: u64) -> String {
    json!({"cmd": "RECALL_DANMU_MSG", "data": {"target_id": id, "target_id_str": id.to_string()}})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::model::{Danmaku, Kind, Mode};

    fn item(kind: Kind, mode: Mode, user: &str, text: &str) -> RingItem {
        let d = Danmaku {
            id: 7263549816238080001,
            room: "r1".into(),
            user: user.into(),
            name: "Alice".into(),
            ts_ms: 1_764_000_000_123,
            kind: kind as i32,
            mode: mode as i32,
            color: 0x00ff00,
            text: text.into(),
            ..Default::default()
        };
        RingItem::from_danmaku(42, &d)
    }

    #[test]
    fn danmu_msg_fills_the_info_indexes_clients_read() {
        let text = "好耶 \"</d>\" \u{0}\n<script>";
        let v: Value =
            serde_json::from_str(&command(&item(Kind::Comment, Mode::Top, "12345", text)).unwrap())
                .unwrap();
        assert_eq!(v["cmd"], "DANMU_MSG");
        let info = v["info"].as_array().unwrap();
        assert!(info.len() >= 17);
        let i0 = info[0].as_array().unwrap();
        assert_eq!(i0.len(), 16);
        assert_eq!(i0[1], 5, "top");
        assert_eq!(i0[2], 25);
        assert_eq!(i0[3], 0x00ff00);
        assert_eq!(i0[4], 1_764_000_000_123i64);
        let extra: Value = serde_json::from_str(i0[15]["extra"].as_str().unwrap()).unwrap();
        assert_eq!(extra["id_str"], "7263549816238080001");
        assert_eq!(extra["user"], "12345");
        assert_eq!(info[1], text, "text intact");
        let i2 = info[2].as_array().unwrap();
        assert_eq!(i2.len(), 8);
        assert_eq!(
            (i2[0].as_u64(), i2[1].as_str()),
            (Some(12345), Some("Alice"))
        );
        assert!(info[3].as_array().unwrap().is_empty());
        assert_eq!(info[4].as_array().unwrap().len(), 5);
        assert!(info[5].is_array());
        assert_eq!(info[7], 0);
        assert_eq!(info[9]["ts"], 1_764_000_000);
        assert_eq!(info[16][0], 0);
        assert_eq!(
            Cursor::decode(v["cursor"].as_str().unwrap()),
            Some(Cursor(42))
        );
        for (mode, n) in [(Mode::Scroll, 1), (Mode::Bottom, 4), (Mode::Top, 5)] {
            let v: Value =
                serde_json::from_str(&command(&item(Kind::Comment, mode, "u", "x")).unwrap())
                    .unwrap();
            assert_eq!(v["info"][0][1], n);
        }
    }

    #[test]
    fn gifts_system_lines_and_likes() {
        let v: Value = serde_json::from_str(
            &command(&item(Kind::Gift, Mode::Scroll, "alice", "rocket")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["cmd"], "SEND_GIFT");
        assert_eq!(v["data"]["giftName"], "rocket");
        assert_eq!(v["data"]["uname"], "Alice");
        assert_eq!(v["data"]["uid"], numeric_uid("alice"));
        let v: Value =
            serde_json::from_str(&command(&item(Kind::System, Mode::Scroll, "s", "hi")).unwrap())
                .unwrap();
        assert_eq!(
            (v["cmd"].as_str(), v["msg"].as_str()),
            (Some("SYS_MSG"), Some("hi"))
        );
        assert!(command(&item(Kind::Like, Mode::Scroll, "l", "")).is_none());
        let items = [
            item(Kind::Like, Mode::Scroll, "l", ""),
            item(Kind::Comment, Mode::Scroll, "u", "a"),
        ];
        assert_eq!(commands(&items).len(), 1);
        let on_vod = Danmaku {
            vod: Some("v1".into()),
            offset_ms: Some(5),
            ..Default::default()
        };
        assert!(
            command(&RingItem::from_danmaku(1, &on_vod)).is_none(),
            "a comment posted on a recording is not live"
        );
    }

    #[test]
    fn uids_stay_exact_in_javascript() {
        assert_eq!(numeric_uid("0"), 0);
        assert_eq!(numeric_uid("9007199254740991"), 9_007_199_254_740_991);
        assert!(numeric_uid("9007199254740992") < 1 << 53);
        assert!(numeric_uid("alice") < 1 << 53);
        assert_ne!(numeric_uid("alice"), numeric_uid("bob"));
        assert_eq!(numeric_uid("alice"), numeric_uid("alice"));
    }

    #[test]
    fn a_deletion_record_is_a_recall() {
        let d = Danmaku {
            id: 9,
            deletes: Some(7263549816238080001),
            ..Default::default()
        };
        let v: Value =
            serde_json::from_str(&command(&RingItem::from_danmaku(5, &d)).unwrap()).unwrap();
        assert_eq!(v["cmd"], "RECALL_DANMU_MSG");
        assert_eq!(v["data"]["target_id_str"], "7263549816238080001");
    }

    #[test]
    fn watched_and_recall() {
        let v: Value = serde_json::from_str(&watched_change(7)).unwrap();
        assert_eq!(
            (v["cmd"].as_str(), v["data"]["num"].as_u64()),
            (Some("WATCHED_CHANGE"), Some(7))
        );
        let v: Value = serde_json::from_str(&recall_danmu_msg(u64::MAX)).unwrap();
        assert_eq!(v["data"]["target_id_str"], u64::MAX.to_string());
        assert_eq!(v["cmd"], "RECALL_DANMU_MSG");
    }
}
