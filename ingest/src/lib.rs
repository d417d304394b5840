//! `danmaku-ingest`: the intake of comments.
//!
//! - [`Ingest`]: validation, permissions, bans (room and global, shadow), room
//!   settings (mute, slow mode), the sensitive-word [`filter`], per-user,
//!   per-room and per-address (guest) rate limits, idempotency keys, and
//!   publishing to the Bus (202 only once the Bus acknowledged durably). The
//!   live WebSocket's `send` and the replay API's VOD comments call
//!   [`Ingest::submit`] too, so every path has the same checks. Everything a
//!   send is checked against is shared by every node through the
//!   ModerationStore port.
//! - [`moderation`]: this node's copy of bans, room settings and the word list,
//!   kept current from the store's change log; fails closed when it cannot be.
//! - [`router`]: `POST /v1/rooms/{room}/danmaku`, `POST /v1/auth/guest` and the
//!   admin API ([`admin`]: bans, room settings, the word list; every action an
//!   audit event).
//! - [`validate`]: the pure checks on a send request, unit-tested.
//! - [`json`]: request bodies as objects parsed member by member (each bad
//!   member gets the code of its field).
//! - [`client`]: the client address of a request (TCP peer or a trusted
//!   proxy's header) and the key per-address limits count.
//! - [`idempotency`]: the idempotency keys of the last window, in the store.

pub mod admin;
pub mod client;
mod delete;
pub mod filter;
mod http;
pub mod idempotency;
pub mod json;
pub mod moderation;
pub mod validate;

pub use http::{check_room, read_json, router};

use danmaku_core::auth::{Claims, Role};
use danmaku_core::context::Context;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::model::{Danmaku, Kind};
use danmaku_core::ports::{
    Ban, MemoryModerationStore, ModerationError, ModerationStore, Rate, RoomSettings,
    RoomSettingsPatch, WordList,
};
use idempotency::Scope;
use moderation::BanState;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
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

/// The intake: the moderation state's local copy (bans, settings, words), and
/// through the ModerationStore the idempotency keys and the rate limits.
pub struct Ingest {
    ctx: Context,
    moderation: Arc<moderation::Moderation>,
}

/// What a send counts against: the keys of the store's limits.
fn limit_key(kind: &str, parts: &[&str]) -> String {
    let mut k = String::from(kind);
    for p in parts {
        k.push('\u{0}');
        k.push_str(p);
    }
    k
}

fn store_failed(e: ModerationError) -> ApiError {
    tracing::warn!(error = %e, "moderation store failed");
    ApiError::unavailable()
}

impl Ingest {
    /// Builds the intake from the shared context with its moderation state in
    /// this process's memory (tests, benchmarks, one-process tools); a server
    /// uses [`Ingest::with_moderation`] with the store the settings select.
    pub fn new(ctx: Context) -> Result<Arc<Self>, filter::FilterError> {
        Self::with_moderation(ctx, Arc::new(MemoryModerationStore::new()))
    }

    /// Builds the intake on `store`, the moderation state every node shares, and
    /// starts following its change log (inside a Tokio runtime).
    pub fn with_moderation(
        ctx: Context,
        store: Arc<dyn ModerationStore>,
    ) -> Result<Arc<Self>, filter::FilterError> {
        let s = &ctx.settings;
        let moderation = moderation::Moderation::new(store, &s.filter, &s.moderation)?;
        moderation.start();
        Ok(Arc::new(Self { ctx, moderation }))
    }

    /// The shared context.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// This node's copy of the moderation state.
    pub fn moderation(&self) -> &Arc<moderation::Moderation> {
        &self.moderation
    }

    /// `room`'s settings (slow mode, mute, display budget) as this node knows
    /// them: current within `moderation.sync_ms` of a change on any node.
    pub fn room_settings(&self, room: &str) -> RoomSettings {
        self.moderation.room_settings(room)
    }

    /// Bans `user` from sending to `room` (`None`: every room) for `seconds` (0
    /// lifts the ban), a shadow ban when `shadow`; `by` is the admin. Returns
    /// the end of the ban, ms (`None` when lifted). The HTTP API refuses more
    /// than [`MAX_BAN_SECS`]; here a longer ban saturates, it never wraps into
    /// the past (which would lift the ban). In force on this node when it
    /// returns, on every node within `moderation.sync_ms`.
    pub async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        seconds: u64,
        shadow: bool,
        by: &str,
    ) -> Result<Option<i64>, ApiError> {
        let store = self.moderation.store();
        let until = if seconds == 0 {
            store.lift_ban(room, user).await.map_err(store_failed)?;
            None
        } else {
            let ms = i64::try_from(seconds)
                .ok()
                .and_then(|s| s.checked_mul(1000))
                .unwrap_or(i64::MAX);
            let now = danmaku_core::now_ms();
            let until = now.saturating_add(ms);
            store
                .set_ban(&Ban {
                    room: room.map(str::to_string),
                    user: user.to_string(),
                    until_ms: until,
                    shadow,
                    by: by.to_string(),
                    at_ms: now,
                })
                .await
                .map_err(store_failed)?;
            Some(until)
        };
        self.moderation.sync().await.map_err(store_failed)?;
        Ok(until)
    }

    /// The bans of `room` (`None`: the global bans) in force.
    pub async fn bans(&self, room: Option<&str>) -> Result<Vec<Ban>, ApiError> {
        self.moderation
            .store()
            .bans(room, danmaku_core::now_ms())
            .await
            .map_err(store_failed)
    }

    /// Changes `room`'s settings; in force here when it returns.
    pub async fn update_room_settings(
        &self,
        room: &str,
        patch: &RoomSettingsPatch,
    ) -> Result<RoomSettings, ApiError> {
        let settings = self
            .moderation
            .store()
            .update_room_settings(room, patch)
            .await
            .map_err(store_failed)?;
        self.moderation.sync().await.map_err(store_failed)?;
        Ok(settings)
    }

    /// Replaces the word list (`blocked_word` matching); in force here when it
    /// returns. `invalid_json` if it cannot be compiled.
    pub async fn set_word_list(&self, words: &WordList) -> Result<(), ApiError> {
        filter::WordFilter::new(&words.words, words.policy).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the word list cannot be used: {e}"),
            )
        })?;
        self.moderation
            .store()
            .set_word_list(words)
            .await
            .map_err(store_failed)?;
        self.moderation.sync().await.map_err(store_failed)
    }

    /// Mints a guest token for a client at `client` (`None`: unknown, all
    /// such clients share one budget): `forbidden` when guests are off,
    /// `rate_limited` past `limits.guest_tokens_per_ip_per_min` (counted in the
    /// shared store, so on every node together). Returns the token and the
    /// guest's user id: `guest-` and 64 random bits, so ids do not collide and
    /// cannot be guessed; bans, slow mode and limits apply to that id, and a
    /// guest's sends also count against the address (limits.guest_sends_*).
    pub async fn mint_guest(&self, client: Option<IpAddr>) -> Result<(String, String), ApiError> {
        let auth = &self.ctx.settings.auth;
        if !auth.guest {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "guest access is disabled",
            ));
        }
        let address = client.map_or_else(|| "unknown".to_string(), client::address_key);
        let per_min = self.ctx.settings.limits.guest_tokens_per_ip_per_min.max(1);
        let rate = Rate {
            interval_us: 60_000_000 / u64::from(per_min),
            burst: per_min,
        };
        self.check_limit(
            limit_key("gt", &[&address]),
            rate,
            "too many guest tokens from this address",
        )
        .await?;
        metrics::counter!("danmaku_ingest_guest_tokens_total").increment(1);
        let user = format!("guest-{:016x}", rand::random::<u64>());
        let token = self.ctx.signer.issue_guest(
            &user,
            &address,
            danmaku_core::now_ms() / 1000,
            auth.guest_ttl_secs,
        );
        Ok((token, user))
    }

    /// Validates, checks permissions, bans, mute, words and limits, then publishes.
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
        let mut hidden = false;
        if claims.role != Role::Admin {
            // Fail closed: a copy that cannot be confirmed current might miss a ban.
            self.moderation.ensure_fresh().await?;
            match self.moderation.ban_state(&room, &claims.sub) {
                BanState::Banned => {
                    metrics::counter!("danmaku_ingest_refused_total", "reason" => "banned")
                        .increment(1);
                    return Err(ApiError::new(
                        ErrorCode::Banned,
                        "you are banned from this room",
                    ));
                }
                BanState::Shadow => hidden = true,
                BanState::None => {}
            }
        }
        // Room modes (mute, slow mode) are the live chat's; comments on a
        // recording are not held by them (bans are).
        let settings = match &target {
            Target::Live { .. } => self.moderation.room_settings(&room),
            Target::Vod { .. } => RoomSettings::default(),
        };
        if settings.muted && !claims.role.is_privileged() {
            metrics::counter!("danmaku_ingest_refused_total", "reason" => "muted").increment(1);
            return Err(ApiError::new(
                ErrorCode::Muted,
                "this room is muted: only the streamer's service and admins may send",
            ));
        }
        let text = self.moderation.filter().apply(&checked.text)?;
        let guest_address = claims
            .is_guest()
            .then(|| {
                client
                    .map(client::address_key)
                    .or_else(|| claims.guest.clone())
            })
            .flatten();
        let send = Send {
            claims,
            target: &target,
            checked: &checked,
            text,
            hidden,
        };
        let keyed = checked.idempotency_key.as_deref().map(|key| {
            let offset_ms = match &target {
                Target::Live { .. } => None,
                Target::Vod { offset_ms, .. } => Some(*offset_ms),
            };
            let fingerprint = idempotency::fingerprint(&idempotency::Body {
                text: &checked.text,
                mode: checked.mode as i32,
                color: checked.color,
                kind: checked.kind as i32,
                stream_pos_ms: checked.stream_pos_ms,
                offset_ms,
            });
            let publish_timeout = Duration::from_millis(limits.publish_timeout_ms.max(1));
            let timing = idempotency::Timing {
                // An unfinished claim outlives any publish of a live node.
                claim_ttl: publish_timeout + Duration::from_secs(5),
                window: Duration::from_secs(limits.idempotency_window_secs.max(1)),
                wait: publish_timeout + Duration::from_secs(1),
            };
            (key, fingerprint, timing)
        });
        let scope = target.scope();
        // The room's limits, in the order their refusals are reported; slow mode
        // last. Admitted together with the key (one store call): nothing is
        // counted for a refused send or a retry of a stored one.
        let mut room_limits: Vec<(String, Rate)> = Vec::new();
        let mut messages: Vec<&str> = Vec::new();
        if !claims.role.is_privileged() {
            room_limits.push((
                limit_key("u", &[&room, &claims.sub]),
                Rate::per_sec(
                    limits.user_per_sec,
                    limits.user_burst.max(limits.user_per_sec),
                ),
            ));
            messages.push("you are sending too fast");
            room_limits.push((
                limit_key("r", &[&room]),
                Rate::per_sec(
                    limits.room_per_sec,
                    limits.room_burst.max(limits.room_per_sec),
                ),
            ));
            messages.push("this room receives too many comments");
            if settings.slow_mode_secs > 0 {
                room_limits.push((
                    limit_key("s", &[&room, &claims.sub]),
                    Rate::once_per(settings.slow_mode_secs),
                ));
                messages.push("slow mode: wait before sending again");
            }
        }
        // A guest's address spans rooms: its limit is counted beside the
        // admission (concurrently), not in it.
        let guest = async {
            match &guest_address {
                Some(address) if !claims.role.is_privileged() => {
                    self.check_limit(
                        limit_key("ga", &[address]),
                        Rate::per_sec(
                            limits.guest_sends_per_ip_per_sec,
                            limits
                                .guest_sends_per_ip_burst
                                .max(limits.guest_sends_per_ip_per_sec),
                        ),
                        "guests at this address are sending too fast",
                    )
                    .await
                }
                _ => Ok(()),
            }
        };
        let intake = idempotency::Intake {
            room: &room,
            limits: &room_limits,
            keyed: keyed.map(|(key, fingerprint, timing)| idempotency::Keyed {
                user: &claims.sub,
                scope: &scope,
                key,
                fingerprint,
                timing,
            }),
        };
        // Concurrent retries with the same key, on any node, publish once.
        idempotency::run(
            self.moderation.store().as_ref(),
            intake,
            |index, wait_ms| {
                let message = messages.get(index).copied();
                rate_limited(message.unwrap_or("too many comments"), wait_ms)
            },
            guest,
            self.publish(send),
        )
        .await
    }

    async fn publish(&self, send: Send<'_>) -> Result<u64, ApiError> {
        let Send {
            claims,
            target,
            checked,
            text,
            hidden,
        } = send;
        let room = target.room();
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
            hidden,
            deletes: None,
        };
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(self.ctx.settings.limits.publish_timeout_ms.max(1));
        match tokio::time::timeout(timeout, self.ctx.bus.publish(room, item.encode_bytes())).await {
            Ok(Ok(_)) => {
                metrics::histogram!("danmaku_ingest_publish_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("danmaku_ingest_accepted_total").increment(1);
                if hidden {
                    metrics::counter!("danmaku_ingest_shadow_accepted_total").increment(1);
                }
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

    /// One send against `rate` under `key` in the shared store: `rate_limited`
    /// with the wait when refused, `unavailable` when the store is down.
    async fn check_limit(&self, key: String, rate: Rate, message: &str) -> Result<(), ApiError> {
        match self
            .moderation
            .store()
            .take(&key, rate)
            .await
            .map_err(store_failed)?
        {
            Ok(()) => Ok(()),
            Err(wait_ms) => Err(rate_limited(message, wait_ms)),
        }
    }

    /// Drops ended bans from this node's copy; call periodically.
    pub fn housekeeping(&self) {
        self.moderation.housekeeping();
    }
}

/// `429 rate_limited` saying `message`, retry after `wait_ms` (whole seconds,
/// at least 1); counted.
fn rate_limited(message: &str, wait_ms: u64) -> ApiError {
    metrics::counter!("danmaku_ingest_refused_total", "reason" => "rate_limited").increment(1);
    ApiError::new(ErrorCode::RateLimited, message).retry_after(wait_ms.div_ceil(1000).max(1))
}

/// A send past its checks and admitted, on its way to the Bus.
struct Send<'a> {
    claims: &'a Claims,
    target: &'a Target,
    checked: &'a validate::Checked,
    text: String,
    hidden: bool,
}
