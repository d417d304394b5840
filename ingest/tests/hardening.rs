//! Issue 13's abuse cases on the intake, in process (the router driven with
//! `oneshot`, the client address given the way the server loop gives it: axum's
//! `ConnectInfo` in the request's extensions). One test per attack, each
//! asserting the bound.

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use danmaku_core::auth::Role;
use danmaku_core::config::{Secret, Settings};
use danmaku_ingest::{Ingest, SendRequest, Target, MAX_BAN_SECS};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tower::ServiceExt;

struct App {
    ingest: Arc<Ingest>,
    router: Router,
    _dir: tempfile::TempDir,
}

struct Resp {
    status: StatusCode,
    retry_after: Option<String>,
    json: Value,
}

impl Resp {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

fn app(tweak: impl FnOnce(&mut Settings)) -> App {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::default();
    s.server.data_dir = dir.path().to_path_buf();
    s.server.demo = false;
    s.auth.secret = Secret("test-secret".into());
    s.limits.user_per_sec = 1000;
    s.limits.user_burst = 1000;
    tweak(&mut s);
    let ctx = danmaku_embedded::testkit::context(s);
    let ingest = Ingest::new(ctx).unwrap();
    App {
        router: danmaku_ingest::router(ingest.clone()),
        ingest,
        _dir: dir,
    }
}

impl App {
    fn token(&self, user: &str, role: Role) -> String {
        self.ingest
            .context()
            .signer
            .issue(user, None, role, danmaku_core::now_ms() / 1000, 3600)
    }

    async fn call(
        &self,
        path: &str,
        from: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut req = Request::post(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let mut req = req.body(body.into()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(from.parse().unwrap()));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        Resp {
            status,
            retry_after,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn guest(&self, from: &str) -> Resp {
        self.call("/v1/auth/guest", from, &[], Body::empty()).await
    }

    async fn send(&self, token: &str, room: &str, from: &str, body: &str) -> Resp {
        let auth = format!("Bearer {token}");
        self.call(
            &format!("/v1/rooms/{room}/danmaku"),
            from,
            &[("authorization", &auth)],
            body.to_string(),
        )
        .await
    }
}

const A: &str = "192.0.2.1:40000";
const B: &str = "198.51.100.2:40000";

#[tokio::test]
async fn guest_tokens_are_limited_per_client_address() {
    let app = app(|s| s.limits.guest_tokens_per_ip_per_min = 3);
    for i in 0..3 {
        let r = app.guest(A).await;
        assert_eq!(r.status, StatusCode::OK, "token {i}: {}", r.json);
        assert!(r.json["user"].as_str().unwrap().starts_with("guest-"));
    }
    let r = app.guest(A).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let wait: u64 = r.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    // Another address has its own budget; IPv6 counts by /64.
    assert_eq!(app.guest(B).await.status, StatusCode::OK);
    for i in 0..3 {
        let from = format!("[2001:db8:1:2::{i}]:1");
        assert_eq!(app.guest(&from).await.status, StatusCode::OK);
    }
    assert_eq!(
        app.guest("[2001:db8:1:2:ffff::9]:1").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        app.guest("[2001:db8:1:3::1]:1").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn guest_sends_are_limited_per_client_address_across_tokens() {
    let app = app(|s| {
        s.limits.guest_sends_per_ip_per_sec = 1;
        s.limits.guest_sends_per_ip_burst = 3;
    });
    // Fresh guests, each well within its own per-user budget: the address's
    // bucket still runs out after 3 sends, whatever the path.
    let mut guests = Vec::new();
    for _ in 0..5 {
        guests.push(
            app.guest(A).await.json["token"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    for (i, t) in guests[..3].iter().enumerate() {
        let r = app.send(t, "r1", A, r#"{"text": "hi"}"#).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "send {i}: {}", r.json);
    }
    let r = app.send(&guests[3], "r1", A, r#"{"text": "hi"}"#).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    // The WebSocket path (no request address): the token's minting address counts.
    let claims = app.ingest.context().signer.verify(&guests[4]).unwrap();
    let req: SendRequest = serde_json::from_value(json!({"text": "hi"})).unwrap();
    let e = app
        .ingest
        .submit(&claims, Target::Live { room: "r2".into() }, req)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "rate_limited");
    // Signed-in users are not guests: no per-address bucket.
    let user = app.token("alice", Role::Viewer);
    for _ in 0..5 {
        assert_eq!(
            app.send(&user, "r1", A, r#"{"text": "hi"}"#).await.status,
            StatusCode::ACCEPTED
        );
    }
    // A guest minted at A sending from B over HTTP counts against B.
    let r = app.send(&guests[4], "r1", B, r#"{"text": "hi"}"#).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
}

#[tokio::test]
async fn a_trusted_proxy_header_counts_only_when_configured() {
    // Unset: a client-sent X-Forwarded-For changes nothing.
    let direct = app(|s| s.limits.guest_tokens_per_ip_per_min = 1);
    assert_eq!(
        direct
            .call(
                "/v1/auth/guest",
                A,
                &[("x-forwarded-for", "203.0.113.1")],
                Body::empty()
            )
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        direct
            .call(
                "/v1/auth/guest",
                A,
                &[("x-forwarded-for", "203.0.113.2")],
                Body::empty()
            )
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Set: the right-most address (the proxy's) counts, whatever the client
    // put left of it and whatever the peer (the proxy itself) is.
    let proxied = app(|s| {
        s.limits.guest_tokens_per_ip_per_min = 1;
        s.limits.trusted_proxy_header = "x-forwarded-for".into();
    });
    let via = |chain: &'static str| [("x-forwarded-for", chain)];
    assert_eq!(
        proxied
            .call("/v1/auth/guest", A, &via("203.0.113.1"), Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        proxied
            .call(
                "/v1/auth/guest",
                A,
                &via("10.9.9.9, 203.0.113.1"),
                Body::empty()
            )
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        proxied
            .call(
                "/v1/auth/guest",
                A,
                &via("203.0.113.1, 203.0.113.2"),
                Body::empty()
            )
            .await
            .status,
        StatusCode::OK
    );
    // No header on a request (a direct connection): the peer counts.
    assert_eq!(
        proxied
            .call("/v1/auth/guest", A, &[], Body::empty())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        proxied
            .call("/v1/auth/guest", A, &[], Body::empty())
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_user_and_room_and_bound_to_their_body() {
    let app = app(|_| {});
    let alice = app.token("alice", Role::Viewer);
    let bob = app.token("bob", Role::Viewer);
    let body = r#"{"text": "first", "idempotency_key": "k1"}"#;
    let first = app.send(&alice, "r1", A, body).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.json);
    let id = first.json["id"].as_str().unwrap().to_string();
    // A retry: the same id. The same comment spelled with its defaults: too.
    let retry = app.send(&alice, "r1", A, body).await;
    assert_eq!(retry.json["id"], id.as_str());
    let spelled = app
        .send(
            &alice,
            "r1",
            A,
            r#"{"text": "first", "mode": "scroll", "kind": "comment", "idempotency_key": "k1"}"#,
        )
        .await;
    assert_eq!(spelled.json["id"], id.as_str(), "{}", spelled.json);
    // The same key in another room is another comment (stored, its own id),
    // and so is another user's.
    for (token, room) in [(&alice, "r2"), (&bob, "r1")] {
        let other = app.send(token, room, A, body).await;
        assert_eq!(other.status, StatusCode::ACCEPTED, "{}", other.json);
        assert_ne!(other.json["id"], id.as_str(), "{room}");
    }
    // The same key with another body: 409, never the first id.
    for changed in [
        r#"{"text": "second", "idempotency_key": "k1"}"#,
        r#"{"text": "first", "color": 255, "idempotency_key": "k1"}"#,
        r#"{"text": "first", "mode": "top", "idempotency_key": "k1"}"#,
    ] {
        let r = app.send(&alice, "r1", A, changed).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::CONFLICT, "idempotency_conflict"),
            "{changed}: {}",
            r.json
        );
    }
    // A VOD is a scope of its own, and its offset is part of the body.
    let claims = app.ingest.context().signer.verify(&alice).unwrap();
    let vod = |offset_ms| Target::Vod {
        room: "r1".into(),
        vod: "v1".into(),
        offset_ms,
    };
    let req = || -> SendRequest {
        serde_json::from_value(json!({"text": "first", "idempotency_key": "k1"})).unwrap()
    };
    let on_vod = app.ingest.submit(&claims, vod(1000), req()).await.unwrap();
    assert_ne!(on_vod.to_string(), id);
    assert_eq!(
        app.ingest.submit(&claims, vod(1000), req()).await,
        Ok(on_vod)
    );
    let moved = app
        .ingest
        .submit(&claims, vod(2000), req())
        .await
        .unwrap_err();
    assert_eq!(moved.code.as_str(), "idempotency_conflict");
}

#[tokio::test]
async fn ban_durations_are_bounded_and_never_lift_a_ban() {
    let app = app(|_| {});
    let admin = app.token("root", Role::Admin);
    let mallory = app.token("mallory", Role::Viewer);
    let auth = format!("Bearer {admin}");
    let ban = |seconds: &str| {
        let body = format!(r#"{{"user": "mallory", "seconds": {seconds}}}"#);
        let auth = auth.clone();
        let app = &app;
        async move {
            app.call(
                "/v1/admin/rooms/r1/bans",
                A,
                &[("authorization", &auth)],
                body,
            )
            .await
        }
    };
    let r = ban("3600").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        app.send(&mallory, "r1", A, r#"{"text": "hi"}"#)
            .await
            .code(),
        "banned"
    );
    // Past 10 years (u64::MAX wrapped to a past end before): 400, and the
    // existing ban holds.
    for seconds in [
        (MAX_BAN_SECS + 1).to_string(),
        u64::MAX.to_string(),
        "18446744073709551616".into(),
        "1e400".into(),
        "-1".into(),
    ] {
        let r = ban(&seconds).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_json"),
            "{seconds}: {}",
            r.json
        );
        assert_eq!(
            app.send(&mallory, "r1", A, r#"{"text": "hi"}"#)
                .await
                .code(),
            "banned",
            "after seconds = {seconds}"
        );
    }
    // Exactly 10 years is a ban that ends in 10 years.
    let r = ban(&MAX_BAN_SECS.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let until = r.json["until"].as_i64().unwrap();
    let want = danmaku_core::now_ms() + MAX_BAN_SECS as i64 * 1000;
    assert!((until - want).abs() < 60_000, "until {until}, want ~{want}");
    // The intake itself saturates instead of wrapping.
    let until = app
        .ingest
        .ban(Some("r1"), "mallory", u64::MAX, false, "admin")
        .await
        .unwrap();
    assert!(until.unwrap() > danmaku_core::now_ms());
    assert_eq!(
        app.send(&mallory, "r1", A, r#"{"text": "hi"}"#)
            .await
            .code(),
        "banned"
    );
}

#[tokio::test]
async fn arrays_are_not_objects_and_out_of_range_numbers_keep_their_field_code() {
    let app = app(|_| {});
    let t = app.token("alice", Role::Viewer);
    let admin = format!("Bearer {}", app.token("root", Role::Admin));
    // serde takes `["hi"]` for a struct whose first field is text.
    for body in [
        r#"["hi"]"#,
        r#"["hi", "top", 255]"#,
        "[]",
        "5",
        "\"hi\"",
        "null",
    ] {
        let r = app.send(&t, "r1", A, body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_json"),
            "{body}"
        );
    }
    let r = app
        .call(
            "/v1/admin/rooms/r1/bans",
            A,
            &[("authorization", &admin)],
            r#"["mallory", 60]"#,
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    for (field, value, code) in [
        ("color", "1e400", "invalid_color"),
        ("color", "-1e400", "invalid_color"),
        ("color", "4294967296", "invalid_color"),
        ("color", "18446744073709551616", "invalid_color"),
        ("color", "16777215.5", "invalid_color"),
        ("mode", "1e400", "invalid_mode"),
        ("mode", "4294967296", "invalid_mode"),
        ("kind", "1e400", "invalid_kind"),
        ("kind", "4294967296", "invalid_kind"),
        ("stream_pos_ms", "1e400", "invalid_offset"),
        ("stream_pos_ms", "9223372036854775808", "invalid_offset"),
        ("stream_pos_ms", "-1", "invalid_offset"),
        ("idempotency_key", "1e400", "invalid_json"),
    ] {
        let body = format!(r#"{{"text": "hi", "{field}": {value}}}"#);
        let r = app.send(&t, "r1", A, &body).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, code),
            "{body}: {}",
            r.json
        );
    }
    let r = app.send(&t, "r1", A, r#"{"text": 1e400}"#).await;
    assert_eq!(r.code(), "invalid_text");
    // Unknown members are ignored, out of range or not, as before.
    let r = app
        .send(&t, "r1", A, r#"{"text": "hi", "extra": 1e400}"#)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
}

#[tokio::test]
async fn jwt_nbf_is_honoured_and_the_scheme_is_case_insensitive() {
    let app = app(|_| {});
    let signer = &app.ingest.context().signer;
    let now = danmaku_core::now_ms() / 1000;
    let with = |exp: i64, nbf: Option<i64>| {
        signer.sign(&danmaku_core::auth::Claims {
            sub: "alice".into(),
            exp,
            nbf,
            name: None,
            role: Role::Viewer,
            guest: None,
        })
    };
    let send = |token: String, scheme: &'static str| {
        let app = &app;
        async move {
            let auth = format!("{scheme} {token}");
            app.call(
                "/v1/rooms/r1/danmaku",
                A,
                &[("authorization", &auth)],
                r#"{"text": "hi"}"#,
            )
            .await
        }
    };
    let r = send(with(now + 600, Some(now + 600)), "Bearer").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert_eq!(
        send(with(now + 600, Some(now - 1)), "Bearer").await.status,
        StatusCode::ACCEPTED
    );
    // Expired a moment ago: within the leeway every path allows.
    assert_eq!(
        send(with(now - 2, None), "Bearer").await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send(with(now - 60, None), "Bearer").await.status,
        StatusCode::UNAUTHORIZED
    );
    for scheme in ["bearer", "BEARER", "Bearer", "bEaReR"] {
        let r = send(with(now + 600, None), scheme).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{scheme}: {}", r.json);
    }
}
