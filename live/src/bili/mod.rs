//! Bilibili's live broadcast protocol (also goim's), so that bots, recorders,
//! overlays and client libraries written for Bilibili live rooms connect by
//! changing only the host (docs/API.md, "Bilibili's live protocol";
//! docs/BILIBILI.md for what this server chose where Bilibili says nothing).
//!
//! - [`packet`]: the packet codec, pure: the 16-byte header, several packets
//!   per message, versions 0/1 (plain), 2 (zlib) and 3 (brotli), bounded.
//! - [`commands`]: the operation-5 commands (`DANMU_MSG`, `SEND_GIFT`,
//!   `WATCHED_CHANGE`, `RECALL_DANMU_MSG`), built from the room's items.
//! - `conn`: `GET /sub`, the WebSocket and the task of each connection (auth,
//!   heartbeats, resume by cursor). Its live frames are the room's: each batch
//!   is encoded once per protocol version, on first use by a `/sub` viewer
//!   ([`crate::frames::Frame::sub_wire`]), and written by the room's write loop
//!   like the JSON frames.
//! - this file: [`online_count`] and `GET /xlive/web-room/v1/index/getDanmuInfo`.
//!
//! [`packet`] and [`commands`] sit beside [`crate::messages`] (the frames
//! import them); `conn` sits beside `upgrade` (nothing imports it but the
//! router).

pub mod commands;
mod conn;
pub mod packet;

pub(crate) use conn::sub;

use crate::room::Hub;
use crate::Live;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// The online count of a room as `/sub` reports it (heartbeat replies,
/// `WATCHED_CHANGE`): the room's viewers over every live node (the Presence,
/// read every second; this node's own until the first read).
pub fn online_count(hub: &Hub) -> u32 {
    u32::try_from(hub.online()).unwrap_or(u32::MAX)
}

#[derive(Deserialize)]
pub(crate) struct InfoQuery {
    #[serde(default)]
    id: Option<String>,
}

/// The host and port clients reach this server at, from the request's `Host`
/// header (port 80 when it names none); `None` when it is missing or not a
/// plausible host.
pub fn host_and_port(host_header: Option<&str>) -> Option<(String, u16)> {
    let h = host_header?.trim();
    if h.is_empty() || h.len() > 255 {
        return None;
    }
    let (host, port) = match h.rsplit_once(':') {
        // `[v6]:port`, `name:port`; a bare IPv6 literal has no port.
        Some((host, port))
            if !host.ends_with(':') && (host.starts_with('[') || !host.contains(':')) =>
        {
            (host, port.parse::<u16>().ok()?)
        }
        _ => (h, 80),
    };
    let plausible = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b));
    (plausible && !host.is_empty()).then(|| (host.to_string(), port))
}

/// `GET /xlive/web-room/v1/index/getDanmuInfo?id={room}`: Bilibili's lookup of
/// the broadcast hosts, answered with this server (`live.sub_public_host`, else
/// the host the client reached), so clients that look the host up first find
/// `/sub` here.
pub(crate) async fn danmu_info(
    State(live): State<Arc<Live>>,
    Query(q): Query<InfoQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = q.id.as_deref() {
        if !danmaku_core::model::valid_id(id) {
            return danmaku_core::error::ApiError::new(
                danmaku_core::error::ErrorCode::InvalidRoom,
                "room ids match [A-Za-z0-9_-]{1,64}",
            )
            .into_response();
        }
    }
    let configured = &live.ctx.settings.live.sub_public_host;
    let host = if configured.is_empty() {
        headers.get(header::HOST).and_then(|v| v.to_str().ok())
    } else {
        Some(configured.as_str())
    };
    let Some((host, port)) = host_and_port(host) else {
        return danmaku_core::error::ApiError::new(
            danmaku_core::error::ErrorCode::InvalidJson,
            "a Host header naming this server is required",
        )
        .into_response();
    };
    axum::Json(json!({
        "code": 0,
        "message": "0",
        "ttl": 1,
        "data": {
            "group": "live",
            "business_id": 0,
            "refresh_row_factor": 0.125,
            "refresh_rate": 100,
            "max_delay": 5000,
            "token": "",
            "host_list": [{"host": host, "port": port, "wss_port": port, "ws_port": port}],
        },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_from_the_host_header() {
        let hp = |h| host_and_port(Some(h));
        assert_eq!(hp("example.com"), Some(("example.com".into(), 80)));
        assert_eq!(hp("127.0.0.1:8080"), Some(("127.0.0.1".into(), 8080)));
        assert_eq!(hp("[::1]:9"), Some(("[::1]".into(), 9)));
        assert_eq!(hp("a.b:99999"), None);
        assert_eq!(hp("evil\"host"), None);
        assert_eq!(hp(""), None);
        assert_eq!(host_and_port(None), None);
    }

    /// A room's batch as `/sub` takes it: one binary frame per protocol
    /// version, built once; empty when nothing in it has a command.
    #[test]
    fn frames_carry_sub_bytes_built_once_per_version() {
        use crate::frames::Frame;
        use crate::messages::RingItem;
        use danmaku_core::model::{Danmaku, Kind};
        let item = |seq: u64, kind: Kind| {
            let d = Danmaku {
                id: seq,
                user: "u".into(),
                kind: kind as i32,
                text: format!("t{seq}"),
                ..Default::default()
            };
            RingItem::from_danmaku(seq, &d)
        };
        let f = Frame::new(
            1,
            3,
            vec![item(1, Kind::Comment), item(3, Kind::Gift)],
            Vec::new(),
            bytes::Bytes::from_static(b"{}"),
        );
        for pv in [
            packet::Protover::Plain,
            packet::Protover::Zlib,
            packet::Protover::Brotli,
        ] {
            let wire = f.sub_wire(pv);
            assert_eq!(wire[0], 0x82, "one final binary frame");
            assert!(std::ptr::eq(wire, f.sub_wire(pv)), "built once");
            let hdr = match wire[1] {
                126 => 4,
                127 => 10,
                _ => 2,
            };
            let packets = packet::decode_message(&wire[hdr..], 1 << 20).unwrap();
            let cmds: Vec<String> = packets
                .iter()
                .map(|p| {
                    serde_json::from_slice::<serde_json::Value>(&p.body).unwrap()["cmd"].to_string()
                })
                .collect();
            assert_eq!(cmds, ["\"DANMU_MSG\"", "\"SEND_GIFT\""]);
        }
        let likes_only = Frame::new(
            4,
            4,
            vec![item(4, Kind::Like)],
            Vec::new(),
            bytes::Bytes::from_static(b"{}"),
        );
        assert!(likes_only.sub_wire(packet::Protover::Brotli).is_empty());
    }
}
