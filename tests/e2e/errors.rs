//! Every error code of API.md (except `unavailable`) with its HTTP status and
//! the `{"error": {"code", "message"}}` body. All violations are collected and
//! reported together.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::*;

#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn check(&mut self, what: &str, resp: &Resp, status: u16, code: &str) {
        if let Some(problem) = resp.error_mismatch(status, code) {
            self.0.push(format!("{what}: {problem}"));
        }
    }
    fn check_ws_refusal(
        &mut self,
        what: &str,
        result: Result<WsClient, (u16, Value)>,
        status: u16,
        code: &str,
    ) {
        match result {
            Ok(_) => self.0.push(format!(
                "{what}: the upgrade was accepted (want HTTP {status} {code})"
            )),
            Err((got_status, body)) => {
                let got_code = body.pointer("/error/code").and_then(Value::as_str);
                if got_status != status || got_code != Some(code) {
                    self.0.push(format!(
                        "{what}: HTTP {got_status} {body} (want {status} {code})"
                    ));
                }
            }
        }
    }
    fn push(&mut self, s: String) {
        self.0.push(s);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_has_its_status_and_json_body() {
    let app = spawn_app(&[
        ("DANMAKU_FILTER__WORDS", r#"["badword"]"#),
        ("DANMAKU_FILTER__POLICY", "reject"),
        ("DANMAKU_LIMITS__MAX_TEXT_CHARS", "20"),
        ("DANMAKU_LIMITS__MAX_TEXT_BYTES", "40"),
        ("DANMAKU_LIMITS__ROOM_PER_SEC", "5"),
        ("DANMAKU_LIMITS__ROOM_BURST", "30"),
    ])
    .await;
    let room = "errs";
    let send_path = format!("/v1/rooms/{room}/danmaku");
    let svc = app.token("err-svc", "service").await;
    let admin = app.token("err-admin", "admin").await;
    let mut v = Violations::default();

    // A VOD to test replay ranges and double ends on.
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();

    // ---- 400 invalid_json
    for (what, body) in [
        ("not JSON", "this is not json"),
        ("truncated JSON", r#"{"text": "unterminated"#),
    ] {
        let resp = app
            .request(
                Method::POST,
                &send_path,
                Some(&svc),
                Body::Raw(Some("application/json"), body.as_bytes().to_vec()),
                &[],
            )
            .await;
        v.check(&format!("send {what}"), &resp, 400, "invalid_json");
    }

    // ---- 400 invalid_room
    let long_room = "r".repeat(65);
    for bad in ["bad.room", "r%20x", long_room.as_str()] {
        let resp = app.send(Some(&svc), bad, json!({"text": "hi"})).await;
        v.check(&format!("send to room {bad:?}"), &resp, 400, "invalid_room");
        let resp = app.get(&format!("/v1/rooms/{bad}/danmaku")).await;
        v.check(&format!("poll room {bad:?}"), &resp, 400, "invalid_room");
    }
    let resp = app
        .post(
            "/v1/rooms/bad.room/sessions",
            Some(&svc),
            json!({"latency_ms": 0}),
        )
        .await;
    v.check("session in room bad.room", &resp, 400, "invalid_room");
    let resp = app.get("/v1/rooms/bad.room/vods").await;
    v.check("vods of room bad.room", &resp, 400, "invalid_room");
    v.check_ws_refusal(
        "WebSocket to room bad.room",
        app.ws_try("bad.room", None, None).await,
        400,
        "invalid_room",
    );
    // 64 characters is still a valid room.
    let resp = app
        .send(Some(&svc), &"r".repeat(64), json!({"text": "hi"}))
        .await;
    if resp.status != 202 {
        v.push(format!(
            "a 64-character room id must be valid: {} {}",
            resp.status, resp.text
        ));
    }

    // ---- 400 invalid_vod
    let long_vod = "v".repeat(65);
    for bad in ["bad.vod", long_vod.as_str()] {
        for path in [
            format!("/v1/vods/{bad}"),
            format!("/v1/vods/{bad}/segments/0"),
            format!("/v1/vods/{bad}/danmaku?from_ms=0&to_ms=1000"),
        ] {
            let resp = app.get(&path).await;
            v.check(&format!("GET {path}"), &resp, 400, "invalid_vod");
        }
        let resp = app
            .post(&format!("/v1/vods/{bad}/end"), Some(&svc), json!({}))
            .await;
        v.check(&format!("end vod {bad:?}"), &resp, 400, "invalid_vod");
    }

    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&svc),
            json!({"vod": "bad.vod", "latency_ms": 0}),
        )
        .await;
    v.check(
        "start a session with vod id bad.vod",
        &resp,
        400,
        "invalid_vod",
    );

    // ---- 400 text_empty
    for body in [
        json!({"text": ""}),
        json!({"text": "   "}),
        json!({}),
        json!({"mode": "top"}),
    ] {
        let resp = app.send(Some(&svc), room, body.clone()).await;
        v.check(&format!("send {body}"), &resp, 400, "text_empty");
    }

    // ---- 400 text_too_long (max 20 chars, 40 bytes here)
    let resp = app
        .send(Some(&svc), room, json!({"text": "a".repeat(21)}))
        .await;
    v.check("send 21 chars (max 20)", &resp, 400, "text_too_long");
    let resp = app
        .send(Some(&svc), room, json!({"text": "好".repeat(14)}))
        .await;
    v.check(
        "send 14 CJK chars = 42 bytes (max 40 bytes)",
        &resp,
        400,
        "text_too_long",
    );
    for (what, text) in [
        ("20 chars", "a".repeat(20)),
        ("13 CJK chars = 39 bytes", "好".repeat(13)),
    ] {
        let resp = app.send(Some(&svc), room, json!({ "text": text })).await;
        if resp.status != 202 {
            v.push(format!(
                "send {what} must be accepted (limits 20 chars / 40 bytes): {} {}",
                resp.status, resp.text
            ));
        }
    }

    // ---- 400 invalid_text
    for text in [
        "a\nb",
        "nul\u{0}",
        "esc\u{1b}[31m",
        "del\u{7f}",
        "c1\u{85}",
        "c1\u{9f}",
        "tab\t",
    ] {
        let resp = app.send(Some(&svc), room, json!({ "text": text })).await;
        v.check(&format!("send {text:?}"), &resp, 400, "invalid_text");
    }

    // ---- 400 invalid_mode / invalid_color / invalid_kind
    for mode in ["sideways", ""] {
        let resp = app
            .send(Some(&svc), room, json!({"text": "hi", "mode": mode}))
            .await;
        v.check(&format!("send mode {mode:?}"), &resp, 400, "invalid_mode");
    }
    for color in [json!(16_777_216), json!(-1), json!(4_294_967_296u64)] {
        let resp = app
            .send(Some(&svc), room, json!({"text": "hi", "color": color}))
            .await;
        v.check(&format!("send color {color}"), &resp, 400, "invalid_color");
    }
    for color in [0, 16_777_215] {
        let resp = app
            .send(Some(&svc), room, json!({"text": "hi", "color": color}))
            .await;
        if resp.status != 202 {
            v.push(format!(
                "color {color} is valid: {} {}",
                resp.status, resp.text
            ));
        }
    }
    let resp = app
        .send(Some(&svc), room, json!({"text": "hi", "kind": "poke"}))
        .await;
    v.check("send kind poke", &resp, 400, "invalid_kind");

    // ---- 400 invalid_cursor
    let resp = app
        .get(&format!("/v1/rooms/{room}/danmaku?cursor=garbage"))
        .await;
    v.check("poll with cursor=garbage", &resp, 400, "invalid_cursor");
    v.check_ws_refusal(
        "WebSocket with cursor=garbage",
        app.ws_try(room, Some("garbage"), None).await,
        400,
        "invalid_cursor",
    );

    // ---- 400 invalid_offset
    for query in [
        "from_ms=-1&to_ms=1000",
        "from_ms=0&to_ms=-5",
        "from_ms=abc&to_ms=1000",
        "from_ms=1.5&to_ms=1000",
        "from_ms=2000&to_ms=1000",
    ] {
        let resp = app.get(&format!("/v1/vods/{vod}/danmaku?{query}")).await;
        v.check(
            &format!("replay range {query}"),
            &resp,
            400,
            "invalid_offset",
        );
    }

    // ---- 400 blocked_word (policy reject)
    let resp = app
        .send(Some(&svc), room, json!({"text": "a badword here"}))
        .await;
    v.check("send a listed word", &resp, 400, "blocked_word");

    // ---- 401 unauthorized
    let resp = app.send(None, room, json!({"text": "hi"})).await;
    v.check("send without a token", &resp, 401, "unauthorized");
    let forged = app.forged_token("err-svc", "service").await;
    let resp = app.send(Some(&forged), room, json!({"text": "hi"})).await;
    v.check(
        "send with a token signed by another secret",
        &resp,
        401,
        "unauthorized",
    );
    let resp = app
        .send(Some("not-a-jwt"), room, json!({"text": "hi"}))
        .await;
    v.check("send with a malformed token", &resp, 401, "unauthorized");
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            None,
            json!({"latency_ms": 0}),
        )
        .await;
    v.check("session without a token", &resp, 401, "unauthorized");
    let forged_admin = app.forged_token("err-admin", "admin").await;
    let resp = app
        .request(
            Method::GET,
            "/v1/admin/bigkeys",
            Some(&forged_admin),
            Body::None,
            &[],
        )
        .await;
    v.check(
        "admin endpoint with a forged admin token",
        &resp,
        401,
        "unauthorized",
    );
    let resp = app.get("/v1/admin/bigkeys").await;
    v.check("admin endpoint without a token", &resp, 401, "unauthorized");
    {
        let mut ws = app.ws(room, None, None).await;
        let reply = ws.send_comment(json!(7), json!({"text": "hi"})).await;
        if reply["type"] != "error" || reply.pointer("/error/code") != Some(&json!("unauthorized"))
        {
            v.push(format!(
                "WebSocket send without a token: want error unauthorized, got {reply}"
            ));
        }
        ws.close().await;
    }

    // ---- 403 forbidden
    let viewer = app.token("err-viewer", "viewer").await;
    for kind in ["gift", "system"] {
        let resp = app
            .send(Some(&viewer), room, json!({"text": "hi", "kind": kind}))
            .await;
        v.check(
            &format!("viewer sends kind {kind}"),
            &resp,
            403,
            "forbidden",
        );
    }
    let resp = app
        .post(
            &format!("/v1/rooms/{room}/sessions"),
            Some(&viewer),
            json!({"latency_ms": 0}),
        )
        .await;
    v.check("viewer starts a session", &resp, 403, "forbidden");
    let resp = app
        .post(&format!("/v1/vods/{vod}/end"), Some(&viewer), json!({}))
        .await;
    v.check("viewer ends a session", &resp, 403, "forbidden");
    for (who, token) in [("viewer", &viewer), ("service", &svc)] {
        let resp = app
            .request(
                Method::GET,
                "/v1/admin/bigkeys",
                Some(token),
                Body::None,
                &[],
            )
            .await;
        v.check(
            &format!("{who} reads /v1/admin/bigkeys"),
            &resp,
            403,
            "forbidden",
        );
        let resp = app
            .post(
                &format!("/v1/admin/rooms/{room}/bans"),
                Some(token),
                json!({"user": "someone", "seconds": 60}),
            )
            .await;
        v.check(&format!("{who} bans a user"), &resp, 403, "forbidden");
    }
    let resp = app
        .request(
            Method::GET,
            "/v1/admin/bigkeys",
            Some(&admin),
            Body::None,
            &[],
        )
        .await;
    if resp.status != 200 || !resp.json["keys"].is_array() {
        v.push(format!(
            "admin reads /v1/admin/bigkeys: {} {}",
            resp.status,
            truncate(&resp.text, 200)
        ));
    }

    // ---- 403 banned
    let troll = app.token("troll", "viewer").await;
    let before = app
        .send(Some(&troll), room, json!({"text": "still allowed"}))
        .await;
    if before.status != 202 {
        v.push(format!(
            "troll before the ban: {} {}",
            before.status, before.text
        ));
    }
    let resp = app
        .post(
            &format!("/v1/admin/rooms/{room}/bans"),
            Some(&admin),
            json!({"user": "troll", "seconds": 60}),
        )
        .await;
    if resp.status != 200 && resp.status != 204 {
        v.push(format!(
            "admin bans troll: want 200/204, got {} {}",
            resp.status, resp.text
        ));
    }
    let resp = app
        .send(Some(&troll), room, json!({"text": "after the ban"}))
        .await;
    v.check("banned user sends", &resp, 403, "banned");
    let resp = app
        .send(Some(&troll), "another-room", json!({"text": "elsewhere"}))
        .await;
    if resp.status != 202 {
        v.push(format!(
            "a ban is per room; troll in another room: {} {}",
            resp.status, resp.text
        ));
    }

    // ---- 404 not_found
    for path in [
        "/v1/vods/no-such-vod".to_string(),
        "/v1/vods/no-such-vod/segments/0".to_string(),
        "/v1/vods/no-such-vod/danmaku?from_ms=0&to_ms=1000".to_string(),
        "/v1/no/such/route".to_string(),
    ] {
        let resp = app.get(&path).await;
        v.check(&format!("GET {path}"), &resp, 404, "not_found");
    }
    let resp = app
        .post("/v1/vods/no-such-vod/end", Some(&svc), json!({}))
        .await;
    v.check("end an unknown vod", &resp, 404, "not_found");

    // ---- 409 vod_ended
    let resp = app
        .post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await;
    if resp.status != 200 {
        v.push(format!(
            "first end: want 200, got {} {}",
            resp.status, resp.text
        ));
    }
    let resp = app
        .post(&format!("/v1/vods/{vod}/end"), Some(&svc), json!({}))
        .await;
    v.check("end an ended vod", &resp, 409, "vod_ended");

    // ---- 413 payload_too_large (max_body_bytes 4096)
    let resp = app
        .send(Some(&svc), room, json!({"text": "a".repeat(5000)}))
        .await;
    v.check("send a 5 KB body", &resp, 413, "payload_too_large");

    // ---- 429 rate_limited (viewer: 5/s, burst 10)
    let flooder = app.token("err-flooder", "viewer").await;
    let began = Instant::now();
    let mut accepted = 0;
    let mut limited: Option<Resp> = None;
    for i in 0..40 {
        let resp = app
            .send(
                Some(&flooder),
                "errs-flood",
                json!({"text": format!("flood {i}")}),
            )
            .await;
        match resp.status {
            202 => accepted += 1,
            _ => {
                limited = Some(resp);
                break;
            }
        }
    }
    let elapsed = began.elapsed();
    match limited {
        None => v.push(format!(
            "40 quick sends by one viewer in {elapsed:?}: none was rate limited"
        )),
        Some(resp) => {
            v.check("viewer over its burst", &resp, 429, "rate_limited");
            let retry_after = resp.header("retry-after");
            if !retry_after
                .as_deref()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(|s| s >= 1)
                .unwrap_or(false)
            {
                v.push(format!(
                    "429 must carry Retry-After in whole seconds >= 1, got {retry_after:?}"
                ));
            }
            let allowed = 10.0 + 5.0 * elapsed.as_secs_f64() + 1.0;
            if accepted < 10 || accepted as f64 > allowed {
                v.push(format!(
                    "burst 10 + 5/s: {accepted} accepted in {elapsed:?} before the first 429 (want 10..={allowed:.0})"
                ));
            }
        }
    }
    // Service tokens are exempt from the per-user limit.
    let mut svc_limited = None;
    for i in 0..30 {
        let resp = app
            .send(Some(&svc), room, json!({"text": format!("svc {i}")}))
            .await;
        if resp.status != 202 {
            svc_limited = Some(format!("{} {}", resp.status, resp.text));
            break;
        }
    }
    if let Some(s) = svc_limited {
        v.push(format!(
            "service token must be exempt from send limits, got {s}"
        ));
    }

    // Over the WebSocket the same per-user limit answers with an error frame.
    let ws_flooder = app.token("err-ws-flooder", "viewer").await;
    let mut ws = app.ws("errs-wsflood", None, Some(&ws_flooder)).await;
    let mut ws_limited = None;
    for i in 0..30 {
        let reply = ws
            .send_comment(json!(i), json!({"text": format!("ws flood {i}")}))
            .await;
        if reply["type"] != "ack" {
            ws_limited = Some(reply);
            break;
        }
    }
    match ws_limited {
        None => v.push("30 quick WebSocket sends by one viewer: none was rate limited".into()),
        Some(reply) if reply.pointer("/error/code") != Some(&json!("rate_limited")) => v.push(
            format!("WebSocket send over the burst: want error rate_limited, got {reply}"),
        ),
        Some(_) => {}
    }
    ws.close().await;

    // The per-room limit (burst 30, 5/s here): many viewers, each within its own
    // burst, fill the room; service tokens are exempt.
    let mut crowd = Vec::new();
    for u in 0..10 {
        crowd.push(app.token(&format!("crowd-{u}"), "viewer").await);
    }
    let began = Instant::now();
    let mut crowd_accepted = 0;
    let mut crowd_limited: Option<Resp> = None;
    'crowd: for round in 0..5 {
        for token in &crowd {
            let resp = app
                .send(
                    Some(token),
                    "errs-crowd",
                    json!({"text": format!("crowd {round}")}),
                )
                .await;
            if resp.status == 202 {
                crowd_accepted += 1;
            } else {
                crowd_limited = Some(resp);
                break 'crowd;
            }
        }
    }
    let elapsed = began.elapsed();
    match crowd_limited {
        None => v.push(format!(
            "50 sends to one room (room burst 30) in {elapsed:?}: none was rate limited"
        )),
        Some(resp) => {
            v.check("room over its burst", &resp, 429, "rate_limited");
            if resp.header("retry-after").is_none() {
                v.push("room-limit 429 without Retry-After".into());
            }
            let allowed = 30.0 + 5.0 * elapsed.as_secs_f64() + 1.0;
            if crowd_accepted < 30 || crowd_accepted as f64 > allowed {
                v.push(format!(
                    "room burst 30 + 5/s: {crowd_accepted} accepted in {elapsed:?} (want 30..={allowed:.0})"
                ));
            }
        }
    }
    let resp = app
        .send(
            Some(&svc),
            "errs-crowd",
            json!({"text": "svc in a full room"}),
        )
        .await;
    if resp.status != 202 {
        v.push(format!(
            "service token must be exempt from the per-room limit: {} {}",
            resp.status, resp.text
        ));
    }

    // A ban ends after its seconds.
    let brief = app.token("brief-troll", "viewer").await;
    let resp = app
        .post(
            "/v1/admin/rooms/errs-ban/bans",
            Some(&admin),
            json!({"user": "brief-troll", "seconds": 1}),
        )
        .await;
    if resp.status != 200 && resp.status != 204 {
        v.push(format!("1 s ban: {} {}", resp.status, resp.text));
    }
    let resp = app
        .send(Some(&brief), "errs-ban", json!({"text": "banned"}))
        .await;
    v.check("send during a 1 s ban", &resp, 403, "banned");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = app
        .send(Some(&brief), "errs-ban", json!({"text": "free again"}))
        .await;
    if resp.status != 202 {
        v.push(format!(
            "2 s after a 1 s ban: want 202, got {} {}",
            resp.status, resp.text
        ));
    }

    // Expired and unsigned ("alg": "none") tokens.
    let now_secs = now_ms() / 1000;
    let expired = danmaku_core::auth::TokenSigner::new(app.secret.as_bytes()).issue(
        "err-expired",
        None,
        danmaku_core::auth::Role::Service,
        now_secs - 3600,
        60,
    );
    let resp = app.send(Some(&expired), room, json!({"text": "hi"})).await;
    v.check("send with an expired token", &resp, 401, "unauthorized");
    let unsigned = format!(
        "{}.{}.",
        base64url(br#"{"alg":"none","typ":"JWT"}"#),
        base64url(
            format!(
                r#"{{"sub":"mallory","exp":{},"role":"admin"}}"#,
                now_secs + 3600
            )
            .as_bytes()
        )
    );
    let resp = app.send(Some(&unsigned), room, json!({"text": "hi"})).await;
    v.check("send with an alg=none token", &resp, 401, "unauthorized");

    // Guest tokens (on by default) can send.
    let resp = app.post("/v1/auth/guest", None, json!({})).await;
    let guest = resp.json["token"].as_str().map(str::to_string);
    let guest_user = resp.json["user"].as_str().unwrap_or_default().to_string();
    if !(resp.status == 200 || resp.status == 201)
        || guest.is_none()
        || !guest_user.starts_with("guest-")
    {
        v.push(format!(
            "POST /v1/auth/guest: want {{\"token\", \"user\": \"guest-...\"}}, got {} {}",
            resp.status, resp.text
        ));
    } else {
        let resp = app
            .send(
                guest.as_deref(),
                "errs-guest",
                json!({"text": "hello from a guest"}),
            )
            .await;
        if resp.status != 202 {
            v.push(format!("guest sends: {} {}", resp.status, resp.text));
        }
    }

    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(
        v.0.is_empty(),
        "{} error-contract violations:\n  - {}",
        v.0.len(),
        v.0.join("\n  - ")
    );
}

/// Base64url without padding (for hand-made tokens).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn base64url_matches_rfc4648() {
    assert_eq!(base64url(b""), "");
    assert_eq!(base64url(b"f"), "Zg");
    assert_eq!(base64url(b"fo"), "Zm8");
    assert_eq!(base64url(b"foo"), "Zm9v");
    assert_eq!(base64url(b"foob"), "Zm9vYg");
    assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
}
