//! Issue 14's moderation on the intake, in process: the router driven with
//! `oneshot` over an all-embedded context, two intakes ("nodes") sharing one
//! ModerationStore where the case is about sharing. One test per rule.

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use danmaku_core::auth::Role;
use danmaku_core::config::{Secret, Settings};
use danmaku_core::context::Context;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{
    Admission, Admit, Ban, ChangePage, Claim, IdempotencyKey, MemoryModerationStore,
    ModerationError, ModerationSnapshot, ModerationStore, Rate, RoomSettings, RoomSettingsPatch,
    WordList,
};
use danmaku_ingest::Ingest;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

struct Node {
    ingest: Arc<Ingest>,
    router: Router,
    ctx: Context,
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

fn settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.server.data_dir = dir.to_path_buf();
    s.server.demo = false;
    s.auth.secret = Secret("test-secret".into());
    s.limits.user_per_sec = 1000;
    s.limits.user_burst = 1000;
    s
}

/// A node over its own embedded context (Bus etc.) and the shared `store`.
fn node(
    dir: &std::path::Path,
    store: Arc<dyn ModerationStore>,
    tweak: impl FnOnce(&mut Settings),
) -> Node {
    let mut s = settings(dir);
    tweak(&mut s);
    let ctx = danmaku_embedded::testkit::context(s);
    let ingest = Ingest::with_moderation(ctx.clone(), store).unwrap();
    Node {
        router: danmaku_ingest::router(ingest.clone()),
        ingest,
        ctx,
    }
}

impl Node {
    fn token(&self, user: &str, role: Role) -> String {
        self.ctx
            .signer
            .issue(user, None, role, danmaku_core::now_ms() / 1000, 3600)
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Value) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if !token.is_empty() {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = if body.is_null() {
            Body::empty()
        } else {
            Body::from(body.to_string())
        };
        let mut req = req.body(body).unwrap();
        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(
            "192.0.2.1:40000".parse().unwrap(),
        ));
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

    async fn send(&self, token: &str, room: &str, body: Value) -> Resp {
        self.call(
            Method::POST,
            &format!("/v1/rooms/{room}/danmaku"),
            token,
            body,
        )
        .await
    }

    /// Every comment published on this node's Bus so far.
    async fn published(&self) -> Vec<Danmaku> {
        let mut consumer = self
            .ctx
            .bus
            .consumer(&format!("t{}", rand::random::<u32>()))
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            let page = consumer
                .poll(1000, Duration::from_millis(200))
                .await
                .unwrap();
            if page.is_empty() {
                return out;
            }
            out.extend(
                page.iter()
                    .map(|r| Danmaku::decode_bytes(&r.payload).unwrap()),
            );
        }
    }
}

/// Two nodes on one store (each its own data dir and Bus).
fn two_nodes() -> (Node, Node, Vec<tempfile::TempDir>) {
    let store: Arc<dyn ModerationStore> = Arc::new(MemoryModerationStore::new());
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(d1.path(), store.clone(), |_| {});
    let b = node(d2.path(), store, |_| {});
    (a, b, vec![d1, d2])
}

#[tokio::test]
async fn a_ban_on_one_node_holds_on_the_other_and_lifts() {
    let (a, b, _dirs) = two_nodes();
    let admin = a.token("root", Role::Admin);
    let mallory = b.token("mallory", Role::Viewer);
    let r = a
        .call(
            Method::POST,
            "/v1/admin/rooms/r1/bans",
            &admin,
            json!({"user": "mallory", "seconds": 600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["room"], "r1");
    assert!(r.json["until"].as_i64().unwrap() > danmaku_core::now_ms());
    // B learns within its sync interval (250 ms by default).
    let mut code = String::new();
    for _ in 0..40 {
        code = b
            .send(&mallory, "r1", json!({"text": "hi"}))
            .await
            .code()
            .to_string();
        if code == "banned" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code, "banned");
    // Another room is fine; the listing names the ban.
    assert_eq!(
        b.send(&mallory, "r2", json!({"text": "hi"})).await.status,
        StatusCode::ACCEPTED
    );
    let list = b
        .call(Method::GET, "/v1/admin/rooms/r1/bans", &admin, Value::Null)
        .await;
    assert_eq!(list.json["bans"][0]["user"], "mallory", "{}", list.json);
    assert_eq!(list.json["bans"][0]["by"], "root");
    // Lifted through B: in force on B at once.
    let r = b
        .call(
            Method::POST,
            "/v1/admin/rooms/r1/bans",
            &admin,
            json!({"user": "mallory", "seconds": 0}),
        )
        .await;
    assert_eq!(r.json["until"], Value::Null);
    assert_eq!(
        b.send(&mallory, "r1", json!({"text": "back"})).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn global_and_shadow_bans() {
    let (a, _b, _dirs) = two_nodes();
    let admin = a.token("root", Role::Admin);
    let r = a
        .call(
            Method::POST,
            "/v1/admin/bans",
            &admin,
            json!({"user": "spammer", "seconds": 60}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let spammer = a.token("spammer", Role::Viewer);
    for room in ["r1", "r2"] {
        assert_eq!(
            a.send(&spammer, room, json!({"text": "x"})).await.code(),
            "banned"
        );
    }
    let global = a
        .call(Method::GET, "/v1/admin/bans", &admin, Value::Null)
        .await;
    assert_eq!(global.json["bans"][0]["user"], "spammer");

    // A shadow ban: 202, the comment is published marked hidden.
    a.call(
        Method::POST,
        "/v1/admin/rooms/r1/bans",
        &admin,
        json!({"user": "shade", "seconds": 60, "shadow": true}),
    )
    .await;
    let shade = a.token("shade", Role::Viewer);
    let r = a
        .send(&shade, "r1", json!({"text": "can you see me"}))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let alice = a.token("alice", Role::Viewer);
    assert_eq!(
        a.send(&alice, "r1", json!({"text": "normal"})).await.status,
        StatusCode::ACCEPTED
    );
    let items = a.published().await;
    let hidden: Vec<_> = items.iter().filter(|d| d.hidden).collect();
    assert_eq!(hidden.len(), 1);
    assert_eq!(hidden[0].user, "shade");
    assert!(hidden[0].to_json().contains("\"hidden\":true"));
    let normal = items.iter().find(|d| d.user == "alice").unwrap();
    assert!(!normal.to_json().contains("hidden"), "absent when false");
    // A plain ban beats the shadow ban in a room.
    a.call(
        Method::POST,
        "/v1/admin/bans",
        &admin,
        json!({"user": "shade", "seconds": 60}),
    )
    .await;
    assert_eq!(
        a.send(&shade, "r1", json!({"text": "x"})).await.code(),
        "banned"
    );
}

#[tokio::test]
async fn only_admins_moderate_and_bodies_are_checked() {
    let (a, _b, _dirs) = two_nodes();
    let viewer = a.token("v", Role::Viewer);
    let service = a.token("svc", Role::Service);
    let admin = a.token("root", Role::Admin);
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/admin/rooms/r1/bans",
            json!({"user": "x", "seconds": 1}),
        ),
        (
            Method::POST,
            "/v1/admin/bans",
            json!({"user": "x", "seconds": 1}),
        ),
        (Method::GET, "/v1/admin/rooms/r1/bans", Value::Null),
        (
            Method::PUT,
            "/v1/admin/rooms/r1/settings",
            json!({"muted": true}),
        ),
        (Method::PUT, "/v1/admin/filter", json!({"words": []})),
        (Method::GET, "/v1/admin/filter", Value::Null),
    ] {
        for token in [&viewer, &service] {
            let r = a.call(method.clone(), path, token, body.clone()).await;
            assert_eq!(
                (r.status, r.code()),
                (StatusCode::FORBIDDEN, "forbidden"),
                "{path}"
            );
        }
        let r = a.call(method.clone(), path, "", body.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    for body in [
        json!({"user": "x", "seconds": 315_576_001u64}),
        json!({"user": "", "seconds": 1}),
        json!({"user": "x"}),
    ] {
        let r = a
            .call(Method::POST, "/v1/admin/rooms/r1/bans", &admin, body)
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
    }
    let r = a
        .call(
            Method::POST,
            "/v1/admin/rooms/bad%20room/bans",
            &admin,
            json!({"user": "x", "seconds": 1}),
        )
        .await;
    assert_eq!(r.code(), "invalid_room");
    let r = a
        .call(
            Method::PUT,
            "/v1/admin/rooms/r1/settings",
            &admin,
            json!({"slow_mode_secs": 100000}),
        )
        .await;
    assert_eq!(r.code(), "invalid_json");
    assert!(r.json["error"]["message"]
        .as_str()
        .unwrap()
        .contains("slow_mode_secs"));
}

#[tokio::test]
async fn mute_and_slow_mode_hold_on_every_node() {
    let (a, b, _dirs) = two_nodes();
    let admin = a.token("root", Role::Admin);
    let r = a
        .call(
            Method::PUT,
            "/v1/admin/rooms/r1/settings",
            &admin,
            json!({"muted": true, "display_budget_per_sec": 40}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        r.json["settings"],
        json!({"slow_mode_secs": 0, "muted": true, "display_budget_per_sec": 40})
    );
    b.ingest.moderation().sync().await.unwrap();
    let viewer = b.token("v", Role::Viewer);
    let r = b.send(&viewer, "r1", json!({"text": "hi"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "muted"));
    let service = b.token("svc", Role::Service);
    assert_eq!(
        b.send(&service, "r1", json!({"text": "announcement"}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    // Room modes hold the live chat, not comments on the room's recordings.
    let claims = b.ctx.signer.verify(&viewer).unwrap();
    let on_vod = b
        .ingest
        .submit(
            &claims,
            danmaku_ingest::Target::Vod {
                room: "r1".into(),
                vod: "v1".into(),
                offset_ms: 5_000,
            },
            danmaku_ingest::SendRequest {
                text: Some("on the recording".into()),
                ..Default::default()
            },
        )
        .await;
    assert!(on_vod.is_ok(), "{on_vod:?}");
    assert_eq!(
        b.ingest.room_settings("r1"),
        RoomSettings {
            slow_mode_secs: 0,
            muted: true,
            display_budget_per_sec: Some(40)
        }
    );

    // Unmute, slow mode 30 s: one send, then 429 with Retry-After on the other node.
    a.call(
        Method::PUT,
        "/v1/admin/rooms/r1/settings",
        &admin,
        json!({"muted": false, "slow_mode_secs": 30}),
    )
    .await;
    b.ingest.moderation().sync().await.unwrap();
    assert_eq!(
        a.send(&viewer, "r1", json!({"text": "one"})).await.status,
        StatusCode::ACCEPTED
    );
    let r = b.send(&viewer, "r1", json!({"text": "two"})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let wait: u64 = r.retry_after.expect("Retry-After").parse().unwrap();
    assert!((25..=30).contains(&wait), "Retry-After {wait}");
    // Another viewer is not held back by the first one's wait; service is exempt.
    let other = b.token("w", Role::Viewer);
    assert_eq!(
        b.send(&other, "r1", json!({"text": "hi"})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        b.send(&service, "r1", json!({"text": "x"})).await.status,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn the_word_list_is_replaced_at_run_time() {
    let (a, b, _dirs) = two_nodes();
    let admin = a.token("root", Role::Admin);
    let viewer = b.token("v", Role::Viewer);
    let r = a
        .call(Method::GET, "/v1/admin/filter", &admin, Value::Null)
        .await;
    assert_eq!(r.json, json!({"words": [], "policy": "mask"}));
    let r = a
        .call(
            Method::PUT,
            "/v1/admin/filter",
            &admin,
            json!({"words": ["darn", "heck"], "policy": "reject"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    b.ingest.moderation().sync().await.unwrap();
    let r = b.send(&viewer, "r1", json!({"text": "oh DARN"})).await;
    assert_eq!(r.code(), "blocked_word");
    let r = b
        .call(Method::GET, "/v1/admin/filter", &admin, Value::Null)
        .await;
    assert_eq!(
        r.json,
        json!({"words": ["darn", "heck"], "policy": "reject"})
    );
    a.call(
        Method::PUT,
        "/v1/admin/filter",
        &admin,
        json!({"words": ["heck"]}),
    )
    .await;
    b.ingest.moderation().sync().await.unwrap();
    assert_eq!(
        b.send(&viewer, "r1", json!({"text": "oh darn"}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let items = b.published().await;
    assert_eq!(items.last().unwrap().text, "oh darn");
    b.send(&viewer, "r1", json!({"text": "what the heck"}))
        .await;
    assert_eq!(b.published().await.last().unwrap().text, "what the ****");
}

#[tokio::test]
async fn an_idempotent_retry_on_the_other_node_gets_the_same_id() {
    let (a, b, _dirs) = two_nodes();
    let alice = a.token("alice", Role::Viewer);
    let body = json!({"text": "once", "idempotency_key": "k-1"});
    let first = a.send(&alice, "r1", body.clone()).await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    let retry = b.send(&alice, "r1", body).await;
    assert_eq!(retry.status, StatusCode::ACCEPTED);
    assert_eq!(first.json["id"], retry.json["id"]);
    assert!(b.published().await.is_empty(), "B published nothing");
    let r = b
        .send(
            &alice,
            "r1",
            json!({"text": "different", "idempotency_key": "k-1"}),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );
}

/// A store whose change log can be made unreachable.
struct Flaky {
    inner: MemoryModerationStore,
    down: AtomicBool,
}

impl Flaky {
    fn check(&self) -> Result<(), ModerationError> {
        if self.down.load(Ordering::SeqCst) {
            Err(ModerationError::unavailable("test: down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ModerationStore for Flaky {
    async fn set_ban(&self, ban: &Ban) -> Result<(), ModerationError> {
        self.check()?;
        self.inner.set_ban(ban).await
    }
    async fn lift_ban(&self, room: Option<&str>, user: &str) -> Result<(), ModerationError> {
        self.check()?;
        self.inner.lift_ban(room, user).await
    }
    async fn bans(&self, room: Option<&str>, now_ms: i64) -> Result<Vec<Ban>, ModerationError> {
        self.check()?;
        self.inner.bans(room, now_ms).await
    }
    async fn update_room_settings(
        &self,
        room: &str,
        patch: &RoomSettingsPatch,
    ) -> Result<RoomSettings, ModerationError> {
        self.check()?;
        self.inner.update_room_settings(room, patch).await
    }
    async fn room_settings(&self, room: &str) -> Result<RoomSettings, ModerationError> {
        self.check()?;
        self.inner.room_settings(room).await
    }
    async fn set_word_list(&self, words: &WordList) -> Result<(), ModerationError> {
        self.check()?;
        self.inner.set_word_list(words).await
    }
    async fn word_list(&self) -> Result<Option<WordList>, ModerationError> {
        self.check()?;
        self.inner.word_list().await
    }
    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<ChangePage>, ModerationError> {
        self.check()?;
        self.inner.changes_after(after, limit).await
    }
    async fn snapshot(&self, now_ms: i64) -> Result<ModerationSnapshot, ModerationError> {
        self.check()?;
        self.inner.snapshot(now_ms).await
    }
    async fn claim_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        ttl: u64,
    ) -> Result<Claim, ModerationError> {
        self.check()?;
        self.inner.claim_key(key, fingerprint, ttl).await
    }
    async fn complete_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        id: u64,
        window: u64,
    ) -> Result<(), ModerationError> {
        self.check()?;
        self.inner.complete_key(key, fingerprint, id, window).await
    }
    async fn release_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
    ) -> Result<(), ModerationError> {
        self.check()?;
        self.inner.release_key(key, fingerprint).await
    }
    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, ModerationError> {
        self.check()?;
        self.inner.take(key, rate).await
    }
    async fn admit(&self, admission: &Admission<'_>) -> Result<Admit, ModerationError> {
        self.check()?;
        self.inner.admit(admission).await
    }
}

/// With the store unreachable past `moderation.stale_ms`, sends fail closed with
/// 503 (a ban made elsewhere could be missed); admins still send; back when the
/// store is.
#[tokio::test]
async fn an_unreachable_store_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Flaky {
        inner: MemoryModerationStore::new(),
        down: AtomicBool::new(false),
    });
    let n = node(dir.path(), store.clone(), |s| {
        s.moderation.sync_ms = 20;
        s.moderation.stale_ms = 100;
    });
    let viewer = n.token("v", Role::Viewer);
    assert_eq!(
        n.send(&viewer, "r1", json!({"text": "a"})).await.status,
        StatusCode::ACCEPTED
    );
    store.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = n.send(&viewer, "r1", json!({"text": "b"})).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(r.retry_after.is_some());
    let admin = n.token("root", Role::Admin);
    assert_eq!(
        n.send(&admin, "r1", json!({"text": "admin"})).await.status,
        StatusCode::ACCEPTED
    );
    let r = n
        .call(
            Method::POST,
            "/v1/admin/bans",
            &admin,
            json!({"user": "x", "seconds": 5}),
        )
        .await;
    assert_eq!(r.code(), "unavailable", "no internal text: {}", r.json);
    assert!(!r.json.to_string().contains("test: down"));
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(
        n.send(&viewer, "r1", json!({"text": "c"})).await.status,
        StatusCode::ACCEPTED
    );
}

/// Guests are held by the same rules: a ban of the guest's id, and limits.
#[tokio::test]
async fn guests_are_banned_like_everyone() {
    let (a, _b, _dirs) = two_nodes();
    let r = a
        .call(Method::POST, "/v1/auth/guest", "", Value::Null)
        .await;
    let guest = r.json["user"].as_str().unwrap().to_string();
    let token = r.json["token"].as_str().unwrap().to_string();
    assert_eq!(guest.len(), "guest-".len() + 16, "{guest}: 64 random bits");
    assert_eq!(
        a.send(&token, "r1", json!({"text": "hi"})).await.status,
        StatusCode::ACCEPTED
    );
    let admin = a.token("root", Role::Admin);
    a.call(
        Method::POST,
        "/v1/admin/rooms/r1/bans",
        &admin,
        json!({"user": guest, "seconds": 60}),
    )
    .await;
    assert_eq!(
        a.send(&token, "r1", json!({"text": "hi"})).await.code(),
        "banned"
    );
}
