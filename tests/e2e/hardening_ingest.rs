//! Issue 13's intake and token cases through the real server (the in-process
//! ones are in ingest/tests/hardening.rs): guest limits count the TCP peer the
//! server loop records (and a client-sent `X-Forwarded-For` changes nothing by
//! default); a guest's WebSocket sends count against the address its token was
//! minted for; the WebSocket and HTTP check a token's times alike (`exp` with
//! the same leeway on every path, `nbf`); the auth scheme in any case.

use crate::helpers::{now_ms, spawn_app, Body, TestApp};
use danmaku_core::auth::{Claims, Role, TokenSigner, LEEWAY_SECS};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

async fn mint_guest(app: &TestApp, headers: &[(&str, &str)]) -> crate::helpers::Resp {
    app.request(Method::POST, "/v1/auth/guest", None, Body::None, headers)
        .await
}

#[tokio::test]
async fn guest_tokens_are_limited_per_client_address() {
    let app = spawn_app(&[("DANMAKU_LIMITS__GUEST_TOKENS_PER_IP_PER_MIN", "2")]).await;
    for i in 0..2 {
        mint_guest(&app, &[])
            .await
            .expect_status(200, &format!("guest token {i}"));
    }
    let r = mint_guest(&app, &[]).await;
    r.expect_error(429, "rate_limited", "the third guest token in a minute");
    assert!(r.header("retry-after").is_some(), "429 without Retry-After");
    // No trusted proxy header is configured: a client's own X-Forwarded-For
    // does not make it another client.
    mint_guest(&app, &[("x-forwarded-for", "203.0.113.77")])
        .await
        .expect_error(429, "rate_limited", "a spoofed X-Forwarded-For");
}

#[tokio::test]
async fn a_configured_proxy_header_names_the_client() {
    let app = spawn_app(&[
        ("DANMAKU_LIMITS__GUEST_TOKENS_PER_IP_PER_MIN", "1"),
        ("DANMAKU_LIMITS__TRUSTED_PROXY_HEADER", "x-forwarded-for"),
    ])
    .await;
    let via = |chain| [("x-forwarded-for", chain)];
    mint_guest(&app, &via("203.0.113.1"))
        .await
        .expect_status(200, "client 203.0.113.1");
    // Whatever a client writes left of the proxy's entry, the right-most counts.
    mint_guest(&app, &via("198.51.100.9, 203.0.113.1"))
        .await
        .expect_error(429, "rate_limited", "client 203.0.113.1 again");
    mint_guest(&app, &via("203.0.113.1, 203.0.113.2"))
        .await
        .expect_status(200, "client 203.0.113.2");
}

#[tokio::test]
async fn guest_websocket_sends_count_against_the_minting_address() {
    let app = spawn_app(&[
        ("DANMAKU_LIMITS__GUEST_SENDS_PER_IP_PER_SEC", "1"),
        ("DANMAKU_LIMITS__GUEST_SENDS_PER_IP_BURST", "2"),
    ])
    .await;
    // Three fresh guests from one address, one WebSocket send each: each is
    // far within its own per-user budget, the address's bucket holds 2.
    let mut replies = Vec::new();
    for i in 0..3 {
        let token = mint_guest(&app, &[]).await.json["token"]
            .as_str()
            .expect("a guest token")
            .to_string();
        let mut ws = app.ws("hard-guests", None, Some(&token)).await;
        replies.push(
            ws.send_comment(json!(i), json!({"text": format!("guest {i}")}))
                .await,
        );
        ws.close().await;
    }
    assert_eq!(replies[0]["type"], "ack", "{replies:?}");
    assert_eq!(replies[1]["type"], "ack", "{replies:?}");
    assert_eq!(replies[2]["type"], "error", "{replies:?}");
    assert_eq!(replies[2]["error"]["code"], "rate_limited", "{replies:?}");
}

fn token(app: &TestApp, exp: i64, nbf: Option<i64>) -> String {
    TokenSigner::new(app.secret.as_bytes()).sign(&Claims {
        sub: "timely".into(),
        exp,
        nbf,
        name: None,
        role: Role::Viewer,
        guest: None,
    })
}

async fn wait_until_secs(t: i64) {
    let ms = t * 1000 - now_ms();
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms as u64)).await;
    }
}

#[tokio::test]
async fn websocket_and_http_check_token_times_alike() {
    let app = spawn_app(&[]).await;
    let now = now_ms() / 1000;
    // Not valid yet: refused on both paths.
    let early = token(&app, now + 600, Some(now + 600));
    app.send(Some(&early), "hard-times", json!({"text": "early"}))
        .await
        .expect_error(401, "unauthorized", "a token with nbf in 10 minutes");
    match app.ws_try("hard-times", None, Some(&early)).await {
        Err((status, _)) => assert_eq!(status, 401, "WebSocket with nbf in 10 minutes"),
        Ok(_) => panic!("WebSocket opened with a token whose nbf is 10 minutes away"),
    }
    // Expires in a second; used on a WebSocket opened before.
    let exp = now + 1;
    let short = token(&app, exp, None);
    let mut ws = app.ws("hard-times", None, Some(&short)).await;
    // Past exp, within the leeway: both paths accept.
    wait_until_secs(exp + 2).await;
    let ack = ws
        .send_comment(json!("in-leeway"), json!({"text": "late"}))
        .await;
    assert_eq!(ack["type"], "ack", "WebSocket send 2 s after exp: {ack}");
    app.send(Some(&short), "hard-times", json!({"text": "late"}))
        .await
        .expect_status(202, "HTTP send 2 s after exp");
    // Past the leeway: both refuse.
    wait_until_secs(exp + LEEWAY_SECS + 1).await;
    let err = ws
        .send_comment(json!("expired"), json!({"text": "late"}))
        .await;
    assert_eq!(err["error"]["code"], "unauthorized", "{err}");
    app.send(Some(&short), "hard-times", json!({"text": "late"}))
        .await
        .expect_error(401, "unauthorized", "HTTP send past the leeway");
    ws.close().await;
}

#[tokio::test]
async fn the_auth_scheme_is_case_insensitive() {
    let app = spawn_app(&[]).await;
    let t = app.token("schemer", "viewer").await;
    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let auth = format!("{scheme} {t}");
        app.request(
            Method::POST,
            "/v1/rooms/hard-scheme/danmaku",
            None,
            Body::Json(json!({"text": "hi"})),
            &[("authorization", &auth)],
        )
        .await
        .expect_status(202, scheme);
    }
}
