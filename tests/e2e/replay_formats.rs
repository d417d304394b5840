//! Replay beyond the native JSON (API.md, Replay): `stream_pos_ms` alignment,
//! comments posted on a recording, Bilibili XML and DPlayer's v3 API, with
//! hostile text escaped for each format. All violations are reported together.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::*;

/// Undoes XML/HTML character references (named ones of XML and HTML's usual
/// five, decimal and hex).
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let end = after
            .find(';')
            .ok_or_else(|| format!("bare '&' in {s:?}"))?;
        let entity = &after[..end];
        let ch = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad reference &{e}; in {s:?}"))?,
            e if e.starts_with('#') => e[1..]
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| format!("bad reference &{e}; in {s:?}"))?,
            e => return Err(format!("unknown entity &{e}; in {s:?}")),
        };
        out.push(ch);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `<d p="...">text</d>` elements of a Bilibili XML document.
fn bilibili_entries(xml: &str) -> Result<Vec<(Vec<String>, String)>, String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(pos) = rest.find("<d p=\"") {
        rest = &rest[pos + 6..];
        let close = rest.find("\">").ok_or("unterminated p attribute")?;
        let p: Vec<String> = rest[..close].split(',').map(str::to_string).collect();
        rest = &rest[close + 2..];
        let end = rest.find("</d>").ok_or("unterminated <d>")?;
        out.push((p, rest[..end].to_string()));
        rest = &rest[end + 4..];
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_formats_vod_posts_and_stream_positions() {
    let app = spawn_app(&[]).await;
    let room = "formats";
    let svc = app.token("fmt-svc", "service").await;
    let viewer = app.token("fmt-viewer", "viewer").await;
    let mut v: Vec<String> = Vec::new();

    let cursor0 = app.room_cursor(room).await;
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();
    let started_at = resp.json["started_at"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // Comments: plain ones in every mode (with hostile text), one with a plausible
    // player position, one with an absurd one.
    let hostile = "<b>&\"'</b> 好耶 🎉";
    let mut bodies: HashMap<String, Value> = HashMap::new();
    for (mode, color) in [("scroll", 16_777_215), ("top", 255), ("bottom", 65_280)] {
        let body = json!({"text": format!("{mode}: {hostile}"), "mode": mode, "color": color});
        let id = app.send_ok(&svc, room, body.clone()).await;
        bodies.insert(id, body);
    }
    let plausible = json!({"text": "with stream position", "stream_pos_ms": 700});
    let plausible_id = app.send_ok(&svc, room, plausible.clone()).await;
    bodies.insert(plausible_id.clone(), plausible);
    let absurd = json!({"text": "absurd stream position", "stream_pos_ms": 86_400_000_000i64});
    // Its offset must be the server's estimate (checked with the others below).
    let absurd_id = app.send_ok(&svc, room, absurd.clone()).await;
    bodies.insert(absurd_id, absurd);

    let resp = app
        .post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await;
    resp.expect_status(200, "POST end");
    let ended_at = resp.json["ended_at"].as_i64().unwrap();
    let duration = ended_at - started_at;

    let mut live_ids: std::collections::HashSet<String> = bodies.keys().cloned().collect();
    let (live, _) = app
        .poll_until(room, &cursor0, 1000, &live_ids, Duration::from_secs(10))
        .await;
    let ts_of: HashMap<String, i64> = live
        .iter()
        .map(|it| {
            (
                it["id"].as_str().unwrap().to_string(),
                it["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    live_ids.retain(|id| !ts_of.contains_key(id));
    assert!(live_ids.is_empty(), "never seen live: {live_ids:?}");

    // A comment posted on the recording, at an offset.
    let resp = app
        .post(
            &format!("/v1/vods/{vod}/danmaku"),
            Some(&viewer),
            json!({"text": "posted while watching <i>", "offset_ms": 1000, "mode": "top"}),
        )
        .await;
    let posted_id = if resp.status == 202 && resp.json["id"].is_string() {
        Some(resp.json["id"].as_str().unwrap().to_string())
    } else {
        v.push(format!(
            "POST /v1/vods/{{vod}}/danmaku: want 202 {{id}}, got {} {}",
            resp.status,
            truncate(&resp.text, 200)
        ));
        None
    };

    let mut expected_offset: HashMap<String, i64> = HashMap::new();
    for (id, ts) in &ts_of {
        expected_offset.insert(id.clone(), (ts - started_at).clamp(0, duration));
    }
    expected_offset.insert(plausible_id.clone(), 700);
    if let Some(id) = &posted_id {
        expected_offset.insert(id.clone(), 1000);
    }

    // Wait for the range API to hold all of them (the live ones within 10 s of the
    // end; the posted one is given 15 s).
    let began = Instant::now();
    let range = loop {
        let resp = app
            .get(&format!("/v1/vods/{vod}/danmaku?from_ms=0&to_ms=360000"))
            .await;
        let items = resp.json["items"].as_array().cloned().unwrap_or_default();
        let have: std::collections::HashSet<String> = items
            .iter()
            .filter_map(|it| it["id"].as_str().map(str::to_string))
            .collect();
        if expected_offset.keys().all(|id| have.contains(id))
            || began.elapsed() > Duration::from_secs(15)
        {
            break items;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let range_by_id: HashMap<String, Value> = range
        .iter()
        .map(|it| (it["id"].as_str().unwrap().to_string(), it.clone()))
        .collect();
    for (id, offset) in &expected_offset {
        match range_by_id.get(id) {
            None => v.push(format!(
                "comment {id} ({:?}) not in the range API after 15 s",
                bodies.get(id).map(|b| &b["text"])
            )),
            Some(item) if item["offset_ms"] != *offset => v.push(format!(
                "offset_ms of {item}: want {offset}{}",
                if *id == plausible_id {
                    " (the sender's plausible stream_pos_ms)"
                } else {
                    ""
                }
            )),
            Some(_) => {}
        }
    }
    if let Some(id) = &posted_id {
        if let Some(item) = range_by_id.get(id) {
            if item["user"] != "fmt-viewer"
                || item["text"] != "posted while watching <i>"
                || item["vod"] != vod.as_str()
            {
                v.push(format!("posted comment comes back as {item}"));
            }
        }
    }

    // ---- Bilibili XML
    let resp = app.get(&format!("/v1/vods/{vod}/bilibili.xml")).await;
    if resp.status != 200 {
        v.push(format!(
            "GET bilibili.xml: {} {}",
            resp.status,
            truncate(&resp.text, 200)
        ));
    } else {
        let prefix = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><i>";
        if !resp.text.starts_with(prefix) {
            v.push(format!(
                "bilibili.xml must begin with exactly {prefix:?}, begins {:?}",
                truncate(&resp.text, 60)
            ));
        }
        if !resp.text.trim_end().ends_with("</i>") {
            v.push("bilibili.xml must end with </i>".into());
        }
        match bilibili_entries(&resp.text) {
            Err(e) => v.push(format!("bilibili.xml: {e}")),
            Ok(entries) => {
                if entries.len() != range.len() {
                    v.push(format!(
                        "bilibili.xml has {} <d>, the range API {} comments",
                        entries.len(),
                        range.len()
                    ));
                }
                for (p, text) in entries {
                    if p.len() != 8 {
                        v.push(format!("<d p> must have 8 fields: {p:?}"));
                        continue;
                    }
                    let Some(item) = range_by_id.get(&p[7]) else {
                        v.push(format!(
                            "<d p> id field {:?} is no comment of the VOD",
                            p[7]
                        ));
                        continue;
                    };
                    let want_time = item["offset_ms"].as_i64().unwrap_or(0) as f64 / 1000.0;
                    if p[0]
                        .parse::<f64>()
                        .map(|t| (t - want_time).abs() > 0.0015)
                        .unwrap_or(true)
                    {
                        v.push(format!(
                            "<d> time {:?} for offset_ms {} (seconds with decimals)",
                            p[0], item["offset_ms"]
                        ));
                    }
                    let want_mode = match item["mode"].as_str() {
                        Some("top") => "5",
                        Some("bottom") => "4",
                        _ => "1",
                    };
                    if p[1] != want_mode {
                        v.push(format!(
                            "<d> mode {:?} for {} (want {want_mode})",
                            p[1], item["mode"]
                        ));
                    }
                    if p[2] != "25" {
                        v.push(format!("<d> size {:?} (want 25)", p[2]));
                    }
                    if p[3].parse::<u64>().ok() != item["color"].as_u64() {
                        v.push(format!("<d> color {:?} (want {})", p[3], item["color"]));
                    }
                    if p[4].parse::<i64>().is_err() {
                        v.push(format!("<d> send time {:?} must be an integer", p[4]));
                    }
                    match unescape(&text) {
                        Err(e) => v.push(format!("bilibili.xml text not XML-escaped: {e}")),
                        Ok(t) if t != item["text"].as_str().unwrap_or_default() => v.push(format!(
                            "bilibili.xml text {text:?} unescapes to {t:?}, want {}",
                            item["text"]
                        )),
                        Ok(_) => {}
                    }
                    if text.contains('<') {
                        v.push(format!("bilibili.xml text with a raw '<': {text:?}"));
                    }
                }
            }
        }
    }

    // ---- DPlayer v3
    let resp = app.get(&format!("/dplayer/v3/?id={vod}")).await;
    if resp.status != 200 || resp.json["code"] != 0 || !resp.json["data"].is_array() {
        v.push(format!(
            "GET /dplayer/v3/?id=vod: {} {}",
            resp.status,
            truncate(&resp.text, 200)
        ));
    } else {
        let data = resp.json["data"].as_array().unwrap();
        if data.len() != range.len() {
            v.push(format!(
                "DPlayer data has {} entries, the range API {}",
                data.len(),
                range.len()
            ));
        }
        for entry in data {
            let Some(e) = entry.as_array().filter(|e| e.len() == 5) else {
                v.push(format!(
                    "DPlayer entry must be [time, type, color, author, text]: {entry}"
                ));
                continue;
            };
            let text = e[4].as_str().unwrap_or_default();
            if text.contains(['<', '>', '"', '\'']) {
                v.push(format!("DPlayer text must be HTML-escaped: {text:?}"));
            }
            let raw = match unescape(text) {
                Ok(t) => t,
                Err(err) => {
                    v.push(format!("DPlayer text: {err}"));
                    continue;
                }
            };
            let Some(item) = range.iter().find(|it| it["text"] == raw.as_str()) else {
                v.push(format!(
                    "DPlayer text {text:?} (unescaped {raw:?}) matches no comment"
                ));
                continue;
            };
            let want_type = match item["mode"].as_str() {
                Some("top") => 1,
                Some("bottom") => 2,
                _ => 0,
            };
            if e[1] != want_type {
                v.push(format!(
                    "DPlayer type {} for mode {} (want {want_type})",
                    e[1], item["mode"]
                ));
            }
            if e[2] != item["color"] {
                v.push(format!("DPlayer color {} (want {})", e[2], item["color"]));
            }
            let want_time = item["offset_ms"].as_i64().unwrap_or(0) as f64 / 1000.0;
            if e[0]
                .as_f64()
                .map(|t| (t - want_time).abs() > 0.0015)
                .unwrap_or(true)
            {
                v.push(format!(
                    "DPlayer time {} for offset_ms {}",
                    e[0], item["offset_ms"]
                ));
            }
            if !e[3].is_string() {
                v.push(format!("DPlayer author must be a string: {}", e[3]));
            }
        }
        let resp = app.get(&format!("/dplayer/v3/?id={vod}&max=2")).await;
        if resp.json["data"]
            .as_array()
            .map(|d| d.len() > 2)
            .unwrap_or(true)
        {
            v.push(format!("DPlayer max=2: {}", truncate(&resp.text, 200)));
        }
    }
    let resp = app
        .post(
            "/dplayer/v3/",
            None,
            json!({"token": viewer, "id": vod, "author": "fmt-viewer", "time": 2.5,
                   "text": "from DPlayer", "color": 16_777_215, "type": 0}),
        )
        .await;
    if resp.json["code"] != 0 || !resp.json["data"].is_object() {
        v.push(format!(
            "POST /dplayer/v3/ with a valid token: {} {}",
            resp.status,
            truncate(&resp.text, 200)
        ));
    }
    let forged = app.forged_token("fmt-viewer", "viewer").await;
    let resp = app
        .post(
            "/dplayer/v3/",
            None,
            json!({"token": forged, "id": vod, "author": "x", "time": 1.0,
                   "text": "forged", "color": 0, "type": 0}),
        )
        .await;
    if resp.json["code"] != 1 || !resp.json["msg"].is_string() {
        v.push(format!(
            "POST /dplayer/v3/ with a forged token: want {{\"code\": 1, \"msg\"}}, got {} {}",
            resp.status,
            truncate(&resp.text, 200)
        ));
    }

    assert!(
        v.is_empty(),
        "{} replay-format violations:\n  - {}",
        v.len(),
        v.join("\n  - ")
    );
}

// ---- Hostile text in every format, and VOD comments on an ended recording ----

/// Texts that try to break out of each format, plus the longest allowed ones (100
/// characters; 100 emoji are exactly the 400-byte limit).
fn hostile_texts() -> Vec<String> {
    vec![
        "<script>alert('x')</script>".into(),
        "\"double\" 'single' `back` \\ backslash".into(),
        "a & b &amp; &lt;b&gt; &#x41; &#0; & ;".into(),
        "]]> <![CDATA[ x ]]> <!-- c --> <?pi?>".into(),
        "</d><d p=\"0,1,25,0,0,0,x,1\">forged</d>".into(),
        "emoji 🎉👨‍👩‍👧‍👦 好耶 ｗｗｗ \u{202e}rtl \u{200b}zw".into(),
        "字".repeat(100),
        "🎉".repeat(100),
    ]
}

/// Waits until the range API of `vod` holds every id of `ids`; returns its items.
async fn wait_replayed(
    app: &TestApp,
    vod: &str,
    ids: &std::collections::HashSet<String>,
    within: Duration,
) -> Vec<Value> {
    let began = Instant::now();
    loop {
        let resp = app
            .get(&format!(
                "/v1/vods/{vod}/danmaku?from_ms=0&to_ms=360000&limit=5000"
            ))
            .await;
        let items = resp.json["items"].as_array().cloned().unwrap_or_default();
        let have: std::collections::HashSet<String> = items
            .iter()
            .filter_map(|it| it["id"].as_str().map(str::to_string))
            .collect();
        if ids.iter().all(|id| have.contains(id)) {
            return items;
        }
        assert!(
            began.elapsed() < within,
            "after {within:?} the range API of {vod} lacks {:?}",
            ids.difference(&have).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_formats_hostile_text_in_every_format() {
    let app = spawn_app(&[]).await;
    let room = "hostile-fmt";
    let svc = app.token("hf-svc", "service").await;
    let resp = app
        .post(&format!("/v1/rooms/{room}/sessions"), Some(&svc), json!({}))
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();

    // Control characters never get in, on any sending path.
    for text in [
        "nul\u{0}",
        "bell\u{7}",
        "line\nbreak",
        "esc\u{1b}[31m",
        "del\u{7f}",
    ] {
        app.send(Some(&svc), room, json!({ "text": text }))
            .await
            .expect_error(400, "invalid_text", &format!("live send of {text:?}"));
        app.post(
            &format!("/v1/vods/{vod}/danmaku"),
            Some(&svc),
            json!({"text": text, "offset_ms": 0}),
        )
        .await
        .expect_error(400, "invalid_text", &format!("VOD post of {text:?}"));
        let dp = app
            .post(
                "/dplayer/v3/",
                None,
                json!({"token": svc, "id": vod, "time": 0, "text": text, "color": 0, "type": 0}),
            )
            .await;
        assert_eq!(
            (dp.json["code"].as_i64(), dp.json["error"].as_str()),
            (Some(1), Some("invalid_text")),
            "DPlayer post of {text:?}: {}",
            dp.text
        );
    }

    let modes = ["scroll", "top", "bottom"];
    let mut sent: HashMap<String, String> = HashMap::new();
    for (i, text) in hostile_texts().into_iter().enumerate() {
        let id = app
            .send_ok(
                &svc,
                room,
                json!({"text": text, "mode": modes[i % 3], "color": 0x10_20_30 + i}),
            )
            .await;
        sent.insert(id, text);
    }
    app.post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "POST end");
    let ids: std::collections::HashSet<String> = sent.keys().cloned().collect();
    let range = wait_replayed(&app, &vod, &ids, Duration::from_secs(15)).await;
    let by_id: HashMap<String, Value> = range
        .iter()
        .map(|it| (it["id"].as_str().unwrap().to_string(), it.clone()))
        .collect();
    let mut v: Vec<String> = Vec::new();

    // Native JSON: the segment carries every text verbatim.
    let seg = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
    seg.expect_status(200, "segment 0");
    for it in seg.json["items"].as_array().unwrap() {
        let id = it["id"].as_str().unwrap();
        if it["text"].as_str() != sent.get(id).map(String::as_str) {
            v.push(format!("segment text of {id}: {}", it["text"]));
        }
    }

    // Bilibili XML: escaped, and unescaping gives the text back.
    let xml = app.get(&format!("/v1/vods/{vod}/bilibili.xml")).await;
    xml.expect_status(200, "bilibili.xml");
    match bilibili_entries(&xml.text) {
        Err(e) => v.push(format!("bilibili.xml: {e}")),
        Ok(entries) => {
            if entries.len() != sent.len() {
                v.push(format!("bilibili.xml has {} entries", entries.len()));
            }
            for (p, text) in entries {
                if text.contains(['<', '>', '"']) {
                    v.push(format!("raw markup in bilibili.xml text {text:?}"));
                }
                match unescape(&text) {
                    Ok(t) if Some(&t) == sent.get(&p[7]) => {}
                    other => v.push(format!("bilibili.xml text of {}: {other:?}", p[7])),
                }
                if p[6] == "hf-svc" || p[6].len() != 8 {
                    v.push(format!("userhash must be a hash, got {:?}", p[6]));
                }
                if let Some(item) = by_id.get(&p[7]) {
                    if p[3].parse::<u64>().ok() != item["color"].as_u64() {
                        v.push(format!("color {} for {}", p[3], item["color"]));
                    }
                }
            }
        }
    }

    // DPlayer: HTML-escaped (DPlayer uses innerHTML), unescaping gives the text.
    let dp = app.get(&format!("/dplayer/v3/?id={vod}")).await;
    let data = dp.json["data"].as_array().cloned().unwrap_or_default();
    if dp.json["code"] != 0 || data.len() != sent.len() {
        v.push(format!("DPlayer: {}", truncate(&dp.text, 300)));
    }
    let texts: std::collections::HashSet<&String> = sent.values().collect();
    for e in &data {
        let text = e[4].as_str().unwrap_or_default();
        if text.contains(['<', '>', '"', '\'']) {
            v.push(format!("DPlayer text not HTML-escaped: {text:?}"));
        }
        match unescape(text) {
            Ok(t) if texts.contains(&t) => {}
            other => v.push(format!("DPlayer text {text:?} unescapes to {other:?}")),
        }
    }

    assert!(
        v.is_empty(),
        "{} hostile-text violations:\n  - {}",
        v.len(),
        v.join("\n  - ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
async fn replay_formats_a_vod_comment_on_an_ended_vod_changes_its_segment() {
    let redis = danmaku_redis::testkit::RedisServer::start();
    let app = spawn_app(&[("DANMAKU_REPLAY__REDIS_URL", &redis.url())]).await;
    let room = "ended-post";
    let svc = app.token("ep-svc", "service").await;
    let viewer = app.token("ep-viewer", "viewer").await;
    let resp = app
        .post(&format!("/v1/rooms/{room}/sessions"), Some(&svc), json!({}))
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let live_id = app.send_text(&svc, room, "live one").await;
    app.post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await
        .expect_status(200, "POST end");
    let live: std::collections::HashSet<String> = [live_id.clone()].into();
    wait_replayed(&app, &vod, &live, Duration::from_secs(10)).await;

    let before = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
    before.expect_status(200, "segment 0");
    let old_etag = before.header("etag").expect("ETag");
    // The plain URL revalidates (API.md, Segment versions).
    assert_eq!(
        before.header("cache-control").as_deref(),
        Some("public, max-age=10")
    );
    // The segment is in the replay Redis (the second tier), under the VOD's
    // version (archived count, deleted count).
    let remote =
        danmaku_redis::RedisReplayCache::connect(&redis.url(), "dmr:", Duration::from_secs(1))
            .await
            .expect("replay redis");
    use danmaku_core::ports::ReplayCache;
    let key = format!("seg:v1:{vod}:0:1.0:E:6000");
    assert!(
        remote.get(&key).await.is_some(),
        "segment 0 not in Redis under {key}"
    );

    // Beyond the recording: refused.
    app.post(
        &format!("/v1/vods/{vod}/danmaku"),
        Some(&viewer),
        json!({"text": "too late", "offset_ms": 3_600_000}),
    )
    .await
    .expect_error(400, "invalid_offset", "VOD post past the end");

    let posted = app
        .post(
            &format!("/v1/vods/{vod}/danmaku"),
            Some(&viewer),
            json!({"text": "posted <after> the end", "offset_ms": 1000}),
        )
        .await;
    let id = accepted_id(&posted, "VOD post on an ended VOD");
    assert!(
        remote.get(&key).await.is_none(),
        "the old key is invalidated in Redis"
    );
    // The very next request serves it, with a new ETag (and a new segment
    // version: API.md, Segment versions).
    let after = app.get(&format!("/v1/vods/{vod}/segments/0")).await;
    let ids: Vec<String> = ids_of(after.json["items"].as_array().unwrap());
    assert!(
        ids.contains(&id) && ids.contains(&live_id),
        "{}",
        after.text
    );
    let new_etag = after.header("etag").expect("ETag");
    assert_ne!(new_etag, old_etag);
    let stale = app
        .get_with(
            &format!("/v1/vods/{vod}/segments/0"),
            &[("if-none-match", old_etag.as_str())],
        )
        .await;
    assert_eq!(stale.status, 200, "the old ETag must not give 304");
    let fresh = app
        .get_with(
            &format!("/v1/vods/{vod}/segments/0"),
            &[("if-none-match", new_etag.as_str())],
        )
        .await;
    assert_eq!(fresh.status, 304);
    let info = app.get(&format!("/v1/vods/{vod}")).await;
    assert_eq!(info.json["count"], 2, "{}", info.text);
}
