//! `POST /v1/vods/{vod}/import` (issue 16, item 4): the round trip through
//! `bilibili.xml`, idempotency, a BililiveRecorder file with gifts and super
//! chats, errors with line and column, and a large document streamed through
//! the real HTTP edge within `import.max_bytes`.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::*;
use danmaku_core::auth::Role;
use danmaku_core::model::{Kind, Mode};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

impl Node {
    async fn import(&self, vod: &str, token: Option<&str>, doc: &str) -> Resp {
        let mut req = Request::post(format!("/v1/vods/{vod}/import"))
            .header("content-type", "application/xml");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        self.call(req.body(Body::from(doc.to_string())).unwrap())
            .await
    }
}

/// The `(p without its user hash and id, text)` of each `<d>` of a document,
/// sorted: what "the same comments" means across VODs (ids are the VOD's own,
/// user hashes are hashes of the users, which were the hashes).
fn comments_of(xml: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = xml
        .split("<d p=\"")
        .skip(1)
        .map(|d| {
            let (p, rest) = d.split_once("\">").unwrap();
            let text = rest.split_once("</d>").unwrap().0;
            let f: Vec<&str> = p.split(',').collect();
            (f[..6].join(","), text.to_string())
        })
        .collect();
    out.sort();
    out
}

const HOSTILE: [&str; 6] = [
    "<script>alert(1)</script>",
    "\"double\" 'single'",
    "a & b &amp; &lt; &#x41;",
    "]]> <!-- --> <![CDATA[",
    "emoji 🎉👨‍👩‍👧 好耶",
    "</d><d p=\"0,1,25,0,0,0,x,1\">x",
];

#[tokio::test]
async fn bilibili_xml_round_trips_through_an_import_and_a_second_import_adds_nothing() {
    let node = node().await;
    node.session("src", "room-src", 900_000, true).await;
    node.session("dst", "room-dst", 900_000, true).await;
    let rows: Vec<(u64, i64, &str, Kind, Mode)> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mode = [Mode::Scroll, Mode::Top, Mode::Bottom][i % 3];
            (i as u64 + 1, i as i64 * 91_234 + 7, *t, Kind::Comment, mode)
        })
        .collect();
    node.archive("src", &rows).await;
    let src = node.get("/v1/vods/src/bilibili.xml", &[]).await;
    assert_eq!(src.status, 200);
    let admin = node.token("ops", Role::Admin);
    let r = node.import("dst", Some(&admin), &src.text).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, serde_json::json!({"imported": 6, "skipped": 0}));
    let dst = node.get("/v1/vods/dst/bilibili.xml", &[]).await;
    assert_eq!(comments_of(&dst.text), comments_of(&src.text));
    assert_eq!(comments_of(&dst.text).len(), 6);
    // Again: nothing added, everything counted as skipped.
    let r = node.import("dst", Some(&admin), &src.text).await;
    assert_eq!(r.json, serde_json::json!({"imported": 0, "skipped": 6}));
    let again = node.get("/v1/vods/dst/bilibili.xml", &[]).await;
    assert_eq!(comments_of(&again.text), comments_of(&src.text));
    // The imported comments are the VOD's, in the range API too, with the
    // users they had (the hashes) and the send times.
    let range = node.get("/v1/vods/dst/danmaku?limit=100", &[]).await;
    let items = range.json["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    assert!(items.iter().all(|i| i["vod"] == "dst"));
    assert_eq!(items[0]["ts"], 1_764_000_000_000i64);
}

#[tokio::test]
async fn a_bililive_recorder_file_with_gifts_and_super_chats() {
    let node = node().await;
    node.session("rec", "room-rec", 900_000, true).await;
    let doc = r##"<?xml version="1.0" encoding="utf-8"?>
<?xml-stylesheet type="text/xsl" href="#s"?>
<i>
<chatserver>chat.bilibili.com</chatserver><chatid>0</chatid><mission>0</mission><maxlimit>1000</maxlimit><state>0</state><real_name>0</real_name><source>0</source>
<BililiveRecorder version="2.6.0"><![CDATA[recorder]]></BililiveRecorder>
<BililiveRecorderRecordInfo roomid="23058" shortid="3" name="streamer" title="t" areanameparent="a" areanamechild="b" start_time="2024-03-01T20:00:00.0000000+08:00" />
<BililiveRecorderXmlStyle><z:stylesheet version="1.0" id="s" xml:id="s" xmlns:z="http://www.w3.org/1999/XSL/Transform"><z:output method="html"/></z:stylesheet></BililiveRecorderXmlStyle>
<d p="1.234,1,25,16777215,1709294401234,0,1001,0" user="观众A" uid="1001">第一条 &lt;b&gt;</d>
<d p="2.5,5,25,16711680,1709294402500,0,1002,0" user="观众B" uid="1002">顶部</d>
<gift ts="3.0" user="观众C" uid="1003" giftname="辣条" giftcount="10" />
<sc ts="4.5" user="观众D" uid="1004" price="30" time="60">醒目留言 SC</sc>
<guard ts="5" user="观众E" uid="1005" level="3" count="1" />
<unknown_thing a="1"><d p="1,1,25,0,0,0,u,1">not a comment</d></unknown_thing>
</i>"##;
    let service = node.token("importer", Role::Service);
    let r = node.import("rec", Some(&service), doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, serde_json::json!({"imported": 5, "skipped": 1}));
    let range = node.get("/v1/vods/rec/danmaku?limit=100", &[]).await;
    let items = range.json["items"].as_array().unwrap();
    let seen: Vec<(&str, &str, i64)> = items
        .iter()
        .map(|i| {
            (
                i["kind"].as_str().unwrap(),
                i["text"].as_str().unwrap(),
                i["offset_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("comment", "第一条 <b>", 1234),
            ("comment", "顶部", 2500),
            ("gift", "辣条 ×10", 3000),
            ("gift", "SC ¥30 醒目留言 SC", 4500),
            ("gift", "舰长 ×1", 5000),
        ]
    );
    assert_eq!(items[0]["user"], "1001");
    assert_eq!(items[0]["name"], "观众A");
    assert_eq!(items[1]["mode"], "top");
    assert_eq!(items[1]["color"], 0xff0000);
    // start_time + ts: 2024-03-01T12:00:03Z.
    assert_eq!(items[2]["ts"], 1_709_294_403_000i64);
}

/// A document whose UTF-8 byte order mark arrives split over the body's first
/// chunks is read as if it came whole (the `xml_import` fuzz target found it
/// refused as malformed); a gift whose text, made of its attributes, is over
/// `limits.max_text_bytes` is skipped like a comment over it.
#[tokio::test]
async fn a_byte_order_mark_split_over_body_chunks_and_an_oversized_gift() {
    let node = node().await;
    node.session("bom", "room-bom", 900_000, true).await;
    let doc = format!(
        "\u{feff}<i>\n<d p=\"1,1,25,0,0,0,u,1\">ok</d>\n<gift ts=\"2\" uid=\"9\" giftname=\"{}\" />\n<d p=\"3\">x</e>\n</i>",
        "g".repeat(node.ctx.settings.limits.max_text_bytes)
    )
    .into_bytes();
    let admin = node.token("ops", Role::Admin);
    let send = |doc: Vec<u8>| {
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(doc[..1].to_vec().into()),
            Ok(doc[1..2].to_vec().into()),
            Ok(doc[2..].to_vec().into()),
        ];
        Request::post("/v1/vods/bom/import")
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", "application/xml")
            .body(Body::from_stream(futures::stream::iter(pieces)))
            .unwrap()
    };
    // Malformed on line 4: lines count from after the mark.
    let r = node.call(send(doc.clone())).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        r.json["error"]["message"],
        "malformed XML at line 4, column 11"
    );
    let end = doc.len() - "<d p=\"3\">x</e>\n</i>".len();
    let mut good = doc[..end].to_vec();
    good.extend_from_slice(b"</i>");
    let r = node.call(send(good)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, serde_json::json!({"imported": 0, "skipped": 2}));
    let range = node.get("/v1/vods/bom/danmaku?limit=10", &[]).await;
    assert_eq!(range.json["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn refusals_say_why() {
    let node = node().await;
    node.session("v", "room-v", 900_000, true).await;
    let doc = "<i><d p=\"1,1,25,0,0,0,u,1\">x</d></i>";
    assert_eq!(node.import("v", None, doc).await.status, 401);
    let viewer = node.token("v", Role::Viewer);
    assert_eq!(node.import("v", Some(&viewer), doc).await.status, 403);
    let admin = node.token("a", Role::Admin);
    assert_eq!(node.import("nope", Some(&admin), doc).await.status, 404);
    assert_eq!(node.import("a%20b", Some(&admin), doc).await.status, 400);
    let bad = "<i>\n<d p=\"1,1,25,0,0,0,u,1\">ok</d>\n<d p=\"2\">x</x>\n</i>";
    let r = node.import("v", Some(&admin), bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["error"]["code"], "invalid_json");
    let message = r.json["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("malformed XML at line 3, column "),
        "{message}"
    );
    // What came before the error is in.
    let range = node.get("/v1/vods/v/danmaku?limit=10", &[]).await;
    let texts: Vec<&str> = range.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["ok"]);
}

/// Sends `body` to `path` through the real server loop; returns status and body.
async fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before the body is all sent.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_document_streams_through_the_edge_and_max_bytes_holds() {
    let node = node_with(None, None, None, |s| s.import.max_bytes = 1 << 20).await;
    node.session("big", "room-big", 3_600_000, true).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let opts = danmaku_core::serve::ServeOptions::from_settings(&node.ctx.settings);
    tokio::spawn(danmaku_core::serve::serve_with(
        listener,
        node.app.clone(),
        stop.clone(),
        Duration::from_secs(1),
        opts,
    ));
    // 5,000 comments (~400 KB): far past limits.max_body_bytes, within import.max_bytes.
    let mut doc = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?><i>\n");
    for i in 0..5_000 {
        doc.push_str(&format!(
            "<d p=\"{}.{:03},1,25,16777215,1700000000,0,u{},{i}\">comment number {i} 好耶</d>\n",
            i / 2,
            i % 1000,
            i % 50
        ));
    }
    doc.push_str("</i>");
    assert!(doc.len() > node.ctx.settings.limits.max_body_bytes * 10);
    let token = node.token("ops", Role::Admin);
    let (status, body) = http_post(addr, "/v1/vods/big/import", &token, doc.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["imported"], 5_000);
    // Over import.max_bytes: 413.
    let huge = "<i>".to_string() + &"<d p=\"1,1,25,0,0,0,u,1\">x</d>".repeat(40_000) + "</i>";
    assert!(huge.len() > 1 << 20);
    let (status, body) = http_post(addr, "/v1/vods/big/import", &token, huge.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("payload_too_large"), "{body}");
    // Other bodies keep their own small limit.
    let (status, _) = http_post(addr, "/v1/vods/big/danmaku", &token, doc.as_bytes()).await;
    assert_eq!(status, 413);
    stop.cancel();
}
