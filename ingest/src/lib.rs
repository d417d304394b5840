//! `danmaku-ingest`: the intake of comments.
//!
//! - [`Ingest`]: validation, permissions, bans, the sensitive-word [`filter`],
//!   per-user, per-room and per-address (guest) rate limits, idempotency keys,
//!   and publishing to the Bus (202 only once the Bus acknowledged durably). The
//!   live WebSocket's `send` and the replay API's VOD comments call
//!   [`Ingest::submit`] too, so every path has the same checks.
//! - [`router`]: `POST /v1/rooms/{room}/danmaku`, `POST /v1/auth/guest`,
//!   `POST /v1/admin/rooms/{room}/bans`.
//! - [`validate`]: the pure checks on a send request, unit-tested.
//! - [`json`]: request bodies as objects parsed member by member (each bad
//!   member gets the code of its field).
//! - [`client`]: the client address of a request (TCP peer or a trusted
//!   proxy's header) and the key per-address limits count.
//! - [`idempotency`]: the idempotency keys of the last window.

pub mod client;
pub mod filter;
mod http;
pub mod idempotency;
pub mod json;
pub mod validate;

pub use http::{check_room, read_json, router};

use danmaku_core::auth::{Claims, Role};
use danmaku_core::context::Context;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::{Danmaku, Kind};
use governor::{DefaultKeyedRateLimiter, Quota};
use idempotency::{IdempotencyStore, Scope};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest ban, seconds: 10 years of 365.25 days. Longer is `invalid_json`.
pub const MAX_BAN_SECS: u64 = 315_576_000;

/// A send request: the JSON body of `POST /v1/rooms/{room}/danmaku`, of a
/// WebSocket `send`, or of a VOD comment. Loosely typed so that each bad field
/// gets its own error code.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SendRequest {
    #[serde(default)]
    pub text: Option<serde_json::Value>,
    #[serde(default)]
    pub mode: Option<serde_json::Value>,
    #[serde(default)]
    pub color: Option<serde_json::Value>,
    #[serde(default)]
    pub kind: Option<serde_json::Value>,
    #[serde(default)]
    pub idempotency_key: Option<serde_json::Value>,
    #[serde(default)]
    pub stream_pos_ms: Option<serde_json::Value>,
}

impl SendRequest {
    /// Takes the send fields out of `obj` (other members stay); a member whose
    /// value cannot be represented (`1e400`) gets the code of its field.
    pub fn from_object(obj: &mut json::JsonObject) -> Result<Self, ApiError> {
        Ok(Self {
            text: obj.take("text", ErrorCode::InvalidText)?,
            mode: obj.take("mode", ErrorCode::InvalidMode)?,
            color: obj.take("color", ErrorCode::InvalidColor)?,
            kind: obj.take("kind", ErrorCode::InvalidKind)?,
            idempotency_key: obj.take("idempotency_key", ErrorCode::InvalidJson)?,
            stream_pos_ms: obj.take("stream_pos_ms", ErrorCode::InvalidOffset)?,
        })
    }
}

/// Where a comment goes: the live room, or a recording at an offset.
#[derive(Clone, Debug)]
pub enum Target {
    Live {
        room: String,
    },
    Vod {
        room: String,
        vod: String,
        offset_ms: i64,
    },
}

impl Target {
    fn room(&self) -> &str {
        match self {
            Target::Live { room } | Target::Vod { room, .. } => room,
        }
    }

    /// Where an idempotency key of this target holds.
    fn scope(&self) -> Scope {
        match self {
            Target::Live { room } => Scope::Room(room.clone()),
            Target::Vod { vod, .. } => Scope::Vod(vod.clone()),
        }
    }
}

/// The intake: holds the limiters, the idempotency window, the filter and the bans.
pub struct Ingest {
    ctx: Context,
    filter: filter::WordFilter,
    user_limiter: DefaultKeyedRateLimiter<String>,
    room_limiter: DefaultKeyedRateLimiter<String>,
    /// Guest tokens minted, per client address key.
    guest_token_limiter: DefaultKeyedRateLimiter<String>,
    /// Sends of all guests together, per client address key.
    guest_send_limiter: DefaultKeyedRateLimiter<String>,
    idempotency: IdempotencyStore,
    /// (room, user) -> banned until (ms)
    bans: Mutex<HashMap<(String, String), i64>>,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let per = NonZeroU32::new(per_sec.max(1)).expect("positive");
    let burst = NonZeroU32::new(burst.max(per_sec).max(1)).expect("positive");
    Quota::per_second(per).allow_burst(burst)
}

impl Ingest {
    /// Builds the intake from the shared context.
    pub fn new(ctx: Context) -> Result<Arc<Self>, filter::FilterError> {
        let s = &ctx.settings;
        let filter = filter::WordFilter::from_settings(&s.filter)?;
        let idempotency = IdempotencyStore::new(
            Duration::from_secs(s.limits.idempotency_window_secs),
            1_000_000,
        );
        let per_min =
            NonZeroU32::new(s.limits.guest_tokens_per_ip_per_min.max(1)).expect("positive");
        Ok(Arc::new(Self {
            guest_token_limiter: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_min)),
            guest_send_limiter: DefaultKeyedRateLimiter::keyed(quota(
                s.limits.guest_sends_per_ip_per_sec,
                s.limits.guest_sends_per_ip_burst,
            )),
            user_limiter: DefaultKeyedRateLimiter::keyed(quota(
                s.limits.user_per_sec,
                s.limits.user_burst,
            )),
            room_limiter: DefaultKeyedRateLimiter::keyed(quota(
                s.limits.room_per_sec,
                s.limits.room_burst,
            )),
            filter,
            idempotency,
            bans: Mutex::new(HashMap::new()),
            ctx,
        }))
    }

    /// The shared context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Bans `user` from sending to `room` for `seconds` (0 lifts the ban);
    /// returns the end of the ban, ms. The HTTP API refuses more than
    /// [`MAX_BAN_SECS`]; here a longer ban saturates, it never wraps into the
    /// past (which would lift the ban).
    pub fn ban(&self, room: &str, user: &str, seconds: u64) -> i64 {
        let ms = i64::try_from(seconds)
            .ok()
            .and_then(|s| s.checked_mul(1000))
            .unwrap_or(i64::MAX);
        let until = danmaku_core::now_ms().saturating_add(ms);
        let mut bans = self.bans.lock().expect("bans lock");
        if seconds == 0 {
            bans.remove(&(room.to_string(), user.to_string()));
        } else {
            bans.insert((room.to_string(), user.to_string()), until);
        }
        until
    }

    fn is_banned(&self, room: &str, user: &str) -> bool {
        let now = danmaku_core::now_ms();
        let mut bans = self.bans.lock().expect("bans lock");
        let key = (room.to_string(), user.to_string());
        match bans.get(&key) {
            Some(until) if *until > now => true,
            Some(_) => {
                bans.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Mints a guest token for a client at `client` (`None`: unknown, all
    /// such clients share one budget): `forbidden` when guests are off,
    /// `rate_limited` past `limits.guest_tokens_per_ip_per_min`. Returns the
    /// token and the guest's user id.
    pub fn mint_guest(&self, client: Option<IpAddr>) -> Result<(String, String), ApiError> {
        let auth = &self.ctx.settings.auth;
        if !auth.guest {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "guest access is disabled",
            ));
        }
        let address = client.map_or_else(|| "unknown".to_string(), client::address_key);
        self.check_limit(
            &self.guest_token_limiter,
            address.clone(),
            "too many guest tokens from this address",
        )?;
        metrics::counter!("danmaku_ingest_guest_tokens_total").increment(1);
        let user = format!("guest-{:08x}", rand::random::<u32>());
        let token = self.ctx.signer.issue_guest(
            &user,
            &address,
            danmaku_core::now_ms() / 1000,
            auth.guest_ttl_secs,
        );
        Ok((token, user))
    }

    /// Validates, checks permissions, bans, words and limits, then publishes.
    /// Returns the comment id once the Bus acknowledged it durably. A guest's
    /// sends count against the address its token was minted for; callers that
    /// know the request's address use [`Ingest::submit_from`].
    pub async fn submit(
        &self,
        claims: &Claims,
        target: Target,
        req: SendRequest,
    ) -> Result<u64, ApiError> {
        self.submit_from(claims, None, target, req).await
    }

    /// [`Ingest::submit`] for a request from `client`: a guest's sends count
    /// against that address (else the token's).
    pub async fn submit_from(
        &self,
        claims: &Claims,
        client: Option<IpAddr>,
        target: Target,
        req: SendRequest,
    ) -> Result<u64, ApiError> {
        let limits = &self.ctx.settings.limits;
        let room = target.room().to_string();
        let checked = validate::check(&req, limits)?;
        if matches!(checked.kind, Kind::Gift | Kind::System) && !claims.role.is_privileged() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "kind {} needs a service or admin token",
                    checked.kind.as_str()
                ),
            ));
        }
        if claims.role != Role::Admin && self.is_banned(&room, &claims.sub) {
            return Err(ApiError::new(
                ErrorCode::Banned,
                "you are banned from this room",
            ));
        }
        let text = self.filter.apply(&checked.text)?;
        let guest_address = claims
            .is_guest()
            .then(|| {
                client
                    .map(client::address_key)
                    .or_else(|| claims.guest.clone())
            })
            .flatten();
        if let Some(key) = checked.idempotency_key.clone() {
            let offset_ms = match &target {
                Target::Live { .. } => None,
                Target::Vod { offset_ms, .. } => Some(*offset_ms),
            };
            // What the comment says, as validated (so `"mode": "scroll"` and
            // no mode are the same comment), before the word filter.
            let fingerprint = idempotency::fingerprint((
                &checked.text,
                checked.mode as i32,
                checked.color,
                checked.kind as i32,
                checked.stream_pos_ms,
                offset_ms,
            ));
            // Single flight: concurrent retries with the same key wait for the first.
            return self
                .idempotency
                .run(
                    &claims.sub,
                    target.scope(),
                    &key,
                    fingerprint,
                    self.limit_and_publish(claims, guest_address, &target, checked, text),
                )
                .await;
        }
        self.limit_and_publish(claims, guest_address, &target, checked, text)
            .await
    }

    async fn limit_and_publish(
        &self,
        claims: &Claims,
        guest_address: Option<String>,
        target: &Target,
        checked: validate::Checked,
        text: String,
    ) -> Result<u64, ApiError> {
        let room = target.room();
        if !claims.role.is_privileged() {
            self.check_limit(
                &self.user_limiter,
                format!("{room}\u{0}{}", claims.sub),
                "you are sending too fast",
            )?;
            if let Some(address) = guest_address {
                self.check_limit(
                    &self.guest_send_limiter,
                    address,
                    "guests at this address are sending too fast",
                )?;
            }
            self.check_limit(
                &self.room_limiter,
                room.to_string(),
                "this room receives too many comments",
            )?;
        }
        let now = danmaku_core::now_ms();
        let (vod, offset_ms) = match target {
            Target::Live { .. } => (None, None),
            Target::Vod { vod, offset_ms, .. } => (Some(vod.clone()), Some(*offset_ms)),
        };
        let item = Danmaku {
            id: self.ctx.ids.next_id(now),
            room: room.to_string(),
            user: claims.sub.clone(),
            name: claims.name.clone().unwrap_or_default(),
            ts_ms: now,
            kind: checked.kind as i32,
            mode: checked.mode as i32,
            color: checked.color,
            text,
            stream_pos_ms: checked.stream_pos_ms,
            vod,
            offset_ms,
            hidden: false,
            deletes: None,
        };
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(self.ctx.settings.limits.publish_timeout_ms.max(1));
        match tokio::time::timeout(timeout, self.ctx.bus.publish(room, item.encode_bytes())).await {
            Ok(Ok(_)) => {
                metrics::histogram!("danmaku_ingest_publish_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("danmaku_ingest_accepted_total").increment(1);
                Ok(item.id)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, room, "publish failed");
                Err(ApiError::unavailable())
            }
            Err(_) => {
                tracing::warn!(
                    room,
                    timeout_ms = timeout.as_millis() as u64,
                    "publish timed out"
                );
                Err(ApiError::unavailable())
            }
        }
    }

    fn check_limit(
        &self,
        limiter: &DefaultKeyedRateLimiter<String>,
        key: String,
        message: &str,
    ) -> Result<(), ApiError> {
        match limiter.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                Err(ApiError::new(ErrorCode::RateLimited, message)
                    .retry_after(wait.as_secs_f64().ceil() as u64))
            }
        }
    }

    /// Drops limiter state of idle keys; call periodically.
    pub fn housekeeping(&self) {
        self.user_limiter.retain_recent();
        self.room_limiter.retain_recent();
        self.guest_token_limiter.retain_recent();
        self.guest_send_limiter.retain_recent();
        let now = danmaku_core::now_ms();
        self.bans
            .lock()
            .expect("bans lock")
            .retain(|_, until| *until > now);
    }
}
