//! CORS (API.md "Additions of 2026-12"): a preflight on a POST route is 204 with
//! the allow headers; a GET and an error answer carry `Access-Control-Allow-Origin`,
//! `Vary: Origin` and expose `ETag` and `Retry-After`; with `http.cors_origins`
//! set, another origin gets no allow header.

use crate::helpers::{spawn_app, Body};
use reqwest::Method;
use serde_json::json;

const SITE: &str = "https://player.example";

fn lower(value: Option<String>) -> String {
    value.unwrap_or_default().to_ascii_lowercase()
}

/// Every `Vary` value (compression adds its own header line).
fn vary(resp: &crate::helpers::Resp) -> String {
    resp.headers
        .get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ")
        .to_ascii_lowercase()
}

#[tokio::test]
async fn preflight_on_a_post_route_is_204_with_the_allow_headers() {
    let app = spawn_app(&[]).await;
    let resp = app
        .request(
            Method::OPTIONS,
            "/v1/rooms/r1/danmaku",
            None,
            Body::None,
            &[
                ("Origin", SITE),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
        )
        .await;
    assert_eq!(resp.status, 204, "preflight: {:?}", resp.headers);
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let methods = lower(resp.header("access-control-allow-methods"));
    for m in ["get", "post", "put", "patch", "delete"] {
        assert!(methods.contains(m), "allow-methods {methods:?} lacks {m}");
    }
    let headers = lower(resp.header("access-control-allow-headers"));
    for h in ["authorization", "content-type", "if-none-match"] {
        assert!(headers.contains(h), "allow-headers {headers:?} lacks {h}");
    }
    let max_age: u64 = resp
        .header("access-control-max-age")
        .expect("max-age")
        .parse()
        .expect("max-age is seconds");
    assert!(max_age >= 600, "max-age {max_age}");
    assert!(vary(&resp).contains("origin"));

    // The WebSocket and replay routes answer preflights too (a GET route).
    let resp = app
        .request(
            Method::OPTIONS,
            "/v1/vods/v1/segments/0",
            None,
            Body::None,
            &[
                ("Origin", SITE),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "if-none-match"),
            ],
        )
        .await;
    assert_eq!(resp.status, 204);
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[tokio::test]
async fn answers_with_an_origin_carry_allow_origin_vary_and_exposed_headers() {
    let app = spawn_app(&[
        ("DANMAKU_LIMITS__USER_BURST", "1"),
        ("DANMAKU_LIMITS__USER_PER_SEC", "1"),
    ])
    .await;
    let origin = [("Origin", SITE)];

    let ok = app.get_with("/v1/rooms/r1/danmaku", &origin).await;
    ok.expect_status(200, "poll");
    check_simple(&ok, "GET poll");

    let missing = app.get_with("/v1/vods/no-such-vod", &origin).await;
    missing.expect_error(404, "not_found", "unknown vod");
    check_simple(&missing, "404");

    let unknown_route = app.get_with("/no/such/route", &origin).await;
    assert_eq!(unknown_route.status, 404);
    check_simple(&unknown_route, "unknown route");

    let token = app.token("cors-user", "viewer").await;
    let mut limited = None;
    for i in 0..5 {
        let resp = app
            .request(
                Method::POST,
                "/v1/rooms/r1/danmaku",
                Some(&token),
                Body::Json(json!({"text": format!("hi {i}")})),
                &origin,
            )
            .await;
        check_simple(&resp, "POST");
        if resp.status == 429 {
            limited = Some(resp);
            break;
        }
    }
    let limited = limited.expect("a 429 within 5 sends at 1/s with burst 1");
    limited.expect_error(429, "rate_limited", "rate limited");
    assert!(limited.header("retry-after").is_some());
}

fn check_simple(resp: &crate::helpers::Resp, what: &str) {
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("*"),
        "{what}: allow-origin in {:?}",
        resp.headers
    );
    assert!(vary(resp).contains("origin"), "{what}: vary");
    let exposed = lower(resp.header("access-control-expose-headers"));
    for h in ["etag", "retry-after"] {
        assert!(
            exposed.contains(h),
            "{what}: expose-headers {exposed:?} lacks {h}"
        );
    }
}

#[tokio::test]
async fn a_configured_list_allows_its_origins_only() {
    let app = spawn_app(&[(
        "DANMAKU_HTTP__CORS_ORIGINS",
        "[\"https://player.example\", \"http://127.0.0.1:9\"]",
    )])
    .await;
    let allowed = app
        .get_with("/v1/rooms/r1/danmaku", &[("Origin", SITE)])
        .await;
    assert_eq!(
        allowed.header("access-control-allow-origin").as_deref(),
        Some(SITE)
    );
    assert!(vary(&allowed).contains("origin"));

    let other = app
        .get_with(
            "/v1/rooms/r1/danmaku",
            &[("Origin", "https://evil.example")],
        )
        .await;
    assert_eq!(other.status, 200, "the answer itself is unchanged");
    assert_eq!(other.header("access-control-allow-origin"), None);

    let preflight = app
        .request(
            Method::OPTIONS,
            "/v1/rooms/r1/danmaku",
            None,
            Body::None,
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
        )
        .await;
    assert_eq!(preflight.header("access-control-allow-origin"), None);
}
