//! The ModerationStore port: the moderation state every ingest node shares —
//! bans, room settings, the sensitive-word list, idempotency keys and rate
//! limits — plus a change log through which each node keeps a local copy of
//! the first three (bans, settings, words are read on every send, so they are
//! never a store round trip per request; idempotency keys and rate limits are).
//!
//! Also here: [`Rate`], the one definition of the rate-limit arithmetic (GCRA)
//! every adapter implements, and [`MemoryModerationStore`], the port in memory
//! (the intake's default when no store is given, and the embedded adapter's
//! rate limits: in one process, memory is shared state).

use super::cause::{BoxError, Cause};
use crate::config::FilterPolicy;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// What kind of failure a [`ModerationError`] is, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModerationErrorKind {
    /// The store did not answer (down, timed out). Sends that need the state
    /// are refused with `503 unavailable`: never let a banned user through.
    Unavailable,
    /// Anything else (corrupt data, a script error).
    Other,
}

/// ModerationStore failures: what was being done, and the adapter's own error
/// as the source when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    /// See [`ModerationErrorKind::Unavailable`].
    #[error("moderation store unavailable: {context}{}", Cause(.source))]
    Unavailable {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`ModerationErrorKind::Other`].
    #[error("moderation store error: {context}{}", Cause(.source))]
    Other {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
}

impl ModerationError {
    /// An unavailable store; add the cause with [`Self::with_source`].
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    /// Any other failure; add the cause with [`Self::with_source`].
    pub fn other(context: impl Into<String>) -> Self {
        Self::Other {
            context: context.into(),
            source: None,
        }
    }

    /// Keeps `cause` (the adapter's own error) as the source.
    pub fn with_source(mut self, cause: impl Into<BoxError>) -> Self {
        match &mut self {
            Self::Unavailable { source, .. } | Self::Other { source, .. } => {
                *source = Some(cause.into())
            }
        }
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ModerationErrorKind {
        match self {
            Self::Unavailable { .. } => ModerationErrorKind::Unavailable,
            Self::Other { .. } => ModerationErrorKind::Other,
        }
    }
}

/// A ban of one user, in one room or in every room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The room; `None` bans the user in every room.
    pub room: Option<String>,
    /// The banned user (a token subject; guests' ids included).
    pub user: String,
    /// When the ban ends, ms since the epoch.
    pub until_ms: i64,
    /// A shadow ban: the user's comments are accepted but shown only to them.
    #[serde(default)]
    pub shadow: bool,
    /// Who banned (the admin token's subject).
    #[serde(default)]
    pub by: String,
    /// When, ms since the epoch.
    #[serde(default)]
    pub at_ms: i64,
}

/// A room's settings (API.md, Moderation). The default is what a room without
/// settings has: no slow mode, not muted, the configured display budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomSettings {
    /// Each viewer may send at most once per this many seconds; 0 = off.
    #[serde(default)]
    pub slow_mode_secs: u32,
    /// Only service and admin tokens may send.
    #[serde(default)]
    pub muted: bool,
    /// Comments per second the live role shows the room's viewers; `None` =
    /// `live.display_budget_per_sec`.
    #[serde(default)]
    pub display_budget_per_sec: Option<u32>,
}

/// A change to some of a room's settings; `None` fields stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomSettingsPatch {
    /// New slow mode, seconds (0 = off).
    pub slow_mode_secs: Option<u32>,
    /// New mute state.
    pub muted: Option<bool>,
    /// `Some(None)` goes back to the configured default.
    pub display_budget_per_sec: Option<Option<u32>>,
}

impl RoomSettingsPatch {
    /// `settings` with this patch applied.
    pub fn apply(&self, mut settings: RoomSettings) -> RoomSettings {
        if let Some(v) = self.slow_mode_secs {
            settings.slow_mode_secs = v;
        }
        if let Some(v) = self.muted {
            settings.muted = v;
        }
        if let Some(v) = self.display_budget_per_sec {
            settings.display_budget_per_sec = v;
        }
        settings
    }
}

/// The sensitive-word list and what to do with a match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordList {
    /// Words (ASCII case-insensitive).
    pub words: Vec<String>,
    /// Mask or reject.
    pub policy: FilterPolicy,
}

/// One entry of the change log: what a write changed. Nodes apply these to their
/// local copy in version order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ModerationChange {
    /// A ban was set or replaced.
    Ban(Ban),
    /// A ban was lifted (it may not have existed).
    Unban {
        /// The room, `None` for a global ban.
        room: Option<String>,
        /// The user.
        user: String,
    },
    /// A room's settings are now these.
    Settings {
        /// The room.
        room: String,
        /// Its whole settings after the change.
        settings: RoomSettings,
    },
    /// The word list was replaced; read it with [`ModerationStore::word_list`].
    Words,
}

/// Changes after a version, in version order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangePage {
    /// The store's current version (the last change's).
    pub version: u64,
    /// `(version, change)`, ascending, consecutive from the requested one + 1.
    pub changes: Vec<(u64, ModerationChange)>,
}

/// Everything a node copies: the current bans (not expired), every room with
/// non-default settings, the word list, and the version they are as of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModerationSnapshot {
    /// The version of the last change included.
    pub version: u64,
    /// Bans not ended at the time of the snapshot.
    pub bans: Vec<Ban>,
    /// Rooms whose settings were ever set.
    pub settings: Vec<(String, RoomSettings)>,
    /// The word list; `None` until one is set (the configured list applies).
    pub words: Option<WordList>,
}

/// An idempotency key: a key holds for one user in one room (live) or one VOD.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The sender.
    pub user: String,
    /// `room:<room>` or `vod:<vod>`.
    pub scope: String,
    /// The client's key.
    pub key: String,
}

impl IdempotencyKey {
    /// One byte string naming the key unambiguously (lengths before parts), for
    /// adapters' storage keys.
    pub fn encoded(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.user.len(),
            self.scope.len(),
            self.user,
            self.scope,
            self.key
        )
    }
}

/// What [`ModerationStore::claim_key`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody used the key in the window: the caller owns it now and must
    /// [`ModerationStore::complete_key`] or [`ModerationStore::release_key`].
    New,
    /// A send with the same fingerprint completed with this id.
    Existing(u64),
    /// The key was used for a different comment: `409 idempotency_conflict`.
    Conflict,
    /// A send with the same fingerprint is being published (on this node or
    /// another): ask again shortly.
    InProgress,
}

/// An idempotency key a send claims as it is admitted ([`ModerationStore::admit`]).
#[derive(Clone, Copy, Debug)]
pub struct KeyClaim<'a> {
    /// The key.
    pub key: &'a IdempotencyKey,
    /// The fingerprint of the send's body.
    pub fingerprint: u64,
    /// How long a new claim lives unless completed, ms.
    pub ttl_ms: u64,
}

/// One send on its way in: the limits of its room it counts against and the
/// idempotency key it claims, decided in one step ([`ModerationStore::admit`]).
#[derive(Clone, Copy, Debug)]
pub struct Admission<'a> {
    /// The room the send goes to (a VOD comment: the VOD's room).
    pub room: &'a str,
    /// The room's limits, in order of precedence, each `(key, rate)` with
    /// distinct keys: counters of `room` of their own, not the ones
    /// [`ModerationStore::take`] counts under the same key.
    pub limits: &'a [(String, Rate)],
    /// The idempotency key, when the send has one.
    pub claim: Option<KeyClaim<'a>>,
}

/// What [`ModerationStore::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Every limit allowed the send and counted it; the key, if any, is the
    /// caller's now: it must [`ModerationStore::complete_key`] or
    /// [`ModerationStore::release_key`] it.
    Admitted,
    /// `limits[index]` (the first that refused) allows the next send in
    /// `retry_after_ms`; nothing was counted and the key was not claimed.
    Limited {
        /// The refusing limit's position in [`Admission::limits`].
        index: usize,
        /// Its wait, ms (at least 1).
        retry_after_ms: u64,
    },
    /// The key is held: [`Claim::Existing`], [`Claim::Conflict`] or
    /// [`Claim::InProgress`] (never [`Claim::New`]); no limit was counted.
    Held(Claim),
}

/// A rate: `burst` sends at once, then one per `interval_us` (GCRA, the
/// algorithm governor and redis-cell use). A limiter keeps one number per key:
/// the theoretical arrival time (TAT, µs since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Microseconds between sends at the sustained rate (at least 1).
    pub interval_us: u64,
    /// Sends allowed at once (at least 1).
    pub burst: u32,
}

impl Rate {
    /// `per_sec` sends per second (at least 1) with a burst of `burst` (at least 1).
    pub fn per_sec(per_sec: u32, burst: u32) -> Self {
        Self {
            interval_us: (1_000_000 / u64::from(per_sec.max(1))).max(1),
            burst: burst.max(1),
        }
    }

    /// One send per `secs` seconds (slow mode).
    pub fn once_per(secs: u32) -> Self {
        Self {
            interval_us: u64::from(secs.max(1)) * 1_000_000,
            burst: 1,
        }
    }

    /// The GCRA step at `now_us` with the stored TAT (`None`: the key is new or
    /// expired): `Ok(new_tat)` to store (for `new_tat - now_us` µs at least), or
    /// `Err(retry_after_us)` (store nothing).
    pub fn decide(&self, stored_tat_us: Option<u64>, now_us: u64) -> Result<u64, u64> {
        let tat = stored_tat_us.unwrap_or(now_us).max(now_us);
        let new_tat = tat.saturating_add(self.interval_us);
        let allow_at =
            new_tat.saturating_sub(self.interval_us.saturating_mul(u64::from(self.burst)));
        if now_us < allow_at {
            Err(allow_at - now_us)
        } else {
            Ok(new_tat)
        }
    }
}

/// Shared moderation state (Redis when `redis.url`/`redis.cluster` is set, the
/// embedded database otherwise).
///
/// Guarantees:
/// - Every write is atomic and durable when it returns (Redis: as durable as the
///   server's persistence; embedded: fsynced), and visible to every handle on
///   the same store at once.
/// - Every write of bans, settings or words appends one change to the log under
///   the next version (one counter per store, no gaps); [`Self::changes_after`]
///   returns them in order. The log keeps at least the last 1,000 changes; a
///   reader that fell further behind (or whose store lost its data) gets `None`
///   and reloads [`Self::snapshot`].
/// - Expired bans are never returned (listings, snapshots); lifting a ban that
///   does not exist is not an error.
/// - Idempotency keys: [`Self::claim_key`] is atomic (of concurrent claims on any
///   node exactly one gets [`Claim::New`]); a completed key lives for the window
///   given at completion, an unfinished claim only for its claim TTL (a node
///   that died mid-publish frees the key by itself).
/// - Rate limits are [`Rate::decide`] applied atomically per key, on one clock
///   (Redis: the server's), state kept only as long as it matters.
/// - [`Self::admit`] decides a send's key and its room's limits as one atomic
///   step where the adapter can (Redis Cluster: when the key's scope is the
///   room, see the adapter): a held key counts no limit, a refused send counts
///   none and claims nothing.
///
/// On retry: every call may be repeated. A write repeated after an unknown
/// outcome logs its change again (harmless: the change says the whole new
/// value).
#[async_trait]
pub trait ModerationStore: Send + Sync + 'static {
    /// Sets (or replaces) a ban.
    async fn set_ban(&self, ban: &Ban) -> Result<(), ModerationError>;

    /// Lifts the ban of `user` in `room` (`None`: the global ban).
    async fn lift_ban(&self, room: Option<&str>, user: &str) -> Result<(), ModerationError>;

    /// The bans of `room` (`None`: the global bans) not ended at `now_ms`, by user.
    async fn bans(&self, room: Option<&str>, now_ms: i64) -> Result<Vec<Ban>, ModerationError>;

    /// Applies `patch` to `room`'s settings; returns them after.
    async fn update_room_settings(
        &self,
        room: &str,
        patch: &RoomSettingsPatch,
    ) -> Result<RoomSettings, ModerationError>;

    /// `room`'s settings (the default when never set).
    async fn room_settings(&self, room: &str) -> Result<RoomSettings, ModerationError>;

    /// Replaces the word list.
    async fn set_word_list(&self, words: &WordList) -> Result<(), ModerationError>;

    /// The word list; `None` until one is set.
    async fn word_list(&self) -> Result<Option<WordList>, ModerationError>;

    /// At most `limit` changes after version `after`; `None` when the log does not
    /// reach back to `after + 1` or `after` is past the store's version (the
    /// store lost data): reload the snapshot.
    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<ChangePage>, ModerationError>;

    /// The whole state as of one version (bans ended at `now_ms` left out).
    async fn snapshot(&self, now_ms: i64) -> Result<ModerationSnapshot, ModerationError>;

    /// Claims `key` for a send whose body has `fingerprint`; a new claim lives
    /// `claim_ttl_ms` unless completed.
    async fn claim_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        claim_ttl_ms: u64,
    ) -> Result<Claim, ModerationError>;

    /// Records that the send claimed under `key` got `id`; kept `window_ms`.
    async fn complete_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        id: u64,
        window_ms: u64,
    ) -> Result<(), ModerationError>;

    /// Gives up an unfinished claim with `fingerprint` (the publish failed: a
    /// retry may publish). A completed key stays.
    async fn release_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
    ) -> Result<(), ModerationError>;

    /// One send against `rate` under `key`: `Ok(())`, or `Err(retry_after_ms)`
    /// (nothing counted).
    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, ModerationError>;

    /// Admits one send (the send path's one store round trip): if its key is
    /// held ([`Self::claim_key`] would not answer [`Claim::New`]), that, counting
    /// nothing; else if a limit refuses, the first that does, counting nothing;
    /// else every limit counted and the key claimed ([`Admit::Admitted`]).
    async fn admit(&self, admission: &Admission<'_>) -> Result<Admit, ModerationError>;
}

/// How many changes the in-memory and embedded logs keep.
pub const LOG_KEEP: u64 = 10_000;

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `(room or "*", user)`: how the in-memory and embedded stores key a ban.
pub fn ban_key(room: Option<&str>, user: &str) -> String {
    format!("{}\u{0}{user}", room.unwrap_or("*"))
}

/// How the in-memory store keys a room's limit (the room's length first: no
/// two (room, key) pairs run together).
fn room_limit_key(room: &str, key: &str) -> String {
    format!("{}:{room}:{key}", room.len())
}

/// What a claim of `key` with `fingerprint` finds at `now` (ms) when the key is
/// held; `None` when it is free.
fn held(s: &MemoryState, key: &IdempotencyKey, fingerprint: u64, now: i64) -> Option<Claim> {
    match s.keys.get(key) {
        Some((fp, _, exp)) if *exp > now && *fp != fingerprint => Some(Claim::Conflict),
        Some((_, Some(id), exp)) if *exp > now => Some(Claim::Existing(*id)),
        Some((_, None, exp)) if *exp > now => Some(Claim::InProgress),
        _ => None,
    }
}

#[derive(Default)]
struct MemoryState {
    version: u64,
    log: BTreeMap<u64, ModerationChange>,
    bans: HashMap<String, Ban>,
    settings: HashMap<String, RoomSettings>,
    words: Option<WordList>,
    /// key -> (fingerprint, id when completed, expires at ms)
    keys: HashMap<IdempotencyKey, (u64, Option<u64>, i64)>,
    /// key -> (TAT µs, expires at µs)
    limits: HashMap<String, (u64, u64)>,
    /// The rooms' limits of [`ModerationStore::admit`]: `room_limit_key` -> (TAT
    /// µs, expires at µs).
    room_limits: HashMap<String, (u64, u64)>,
    /// Calls since the last sweep of expired keys and limits.
    since_sweep: u32,
}

impl MemoryState {
    fn log(&mut self, change: ModerationChange) {
        self.version += 1;
        self.log.insert(self.version, change);
        while self.log.len() as u64 > LOG_KEEP {
            self.log.pop_first();
        }
    }

    /// Drops expired keys and limits every 4,096 calls (amortized, bounded memory).
    fn maybe_sweep(&mut self) {
        self.since_sweep += 1;
        if self.since_sweep < 4096 {
            return;
        }
        self.since_sweep = 0;
        let now = crate::now_ms();
        let now_us = now_us();
        self.keys.retain(|_, (_, _, exp)| *exp > now);
        self.limits.retain(|_, (_, exp)| *exp > now_us);
        self.room_limits.retain(|_, (_, exp)| *exp > now_us);
        self.bans.retain(|_, b| b.until_ms > now);
    }
}

/// The port in one process's memory: nothing survives the process. The intake's
/// default (tests, benchmarks); the embedded adapter keeps its rate limits and
/// unfinished claims here.
#[derive(Default)]
pub struct MemoryModerationStore {
    state: Mutex<MemoryState>,
}

impl MemoryModerationStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().expect("moderation state lock")
    }

    /// [`ModerationStore::take`] without the async wrapper.
    pub fn take_now(&self, key: &str, rate: Rate) -> Result<(), u64> {
        let now = now_us();
        let mut s = self.lock();
        s.maybe_sweep();
        let stored = s
            .limits
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(tat, _)| *tat);
        match rate.decide(stored, now) {
            Ok(tat) => {
                s.limits.insert(key.to_string(), (tat, tat));
                Ok(())
            }
            Err(wait_us) => Err(wait_us.div_ceil(1000)),
        }
    }

    /// [`ModerationStore::claim_key`] without the async wrapper.
    pub fn claim_now(&self, key: &IdempotencyKey, fingerprint: u64, claim_ttl_ms: u64) -> Claim {
        let now = crate::now_ms();
        let mut s = self.lock();
        s.maybe_sweep();
        if let Some(held) = held(&s, key, fingerprint, now) {
            return held;
        }
        let exp = now.saturating_add(claim_ttl_ms as i64);
        s.keys.insert(key.clone(), (fingerprint, None, exp));
        Claim::New
    }

    /// [`ModerationStore::admit`] without the async wrapper.
    pub fn admit_now(&self, admission: &Admission<'_>) -> Admit {
        let now = crate::now_ms();
        let now_us = now_us();
        let mut s = self.lock();
        s.maybe_sweep();
        if let Some(c) = &admission.claim {
            if let Some(held) = held(&s, c.key, c.fingerprint, now) {
                return Admit::Held(held);
            }
        }
        let mut counted = Vec::with_capacity(admission.limits.len());
        for (index, (key, rate)) in admission.limits.iter().enumerate() {
            let key = room_limit_key(admission.room, key);
            let stored = s
                .room_limits
                .get(&key)
                .filter(|(_, exp)| *exp > now_us)
                .map(|(tat, _)| *tat);
            match rate.decide(stored, now_us) {
                Ok(tat) => counted.push((key, tat)),
                Err(wait_us) => {
                    return Admit::Limited {
                        index,
                        retry_after_ms: wait_us.div_ceil(1000).max(1),
                    }
                }
            }
        }
        for (key, tat) in counted {
            s.room_limits.insert(key, (tat, tat));
        }
        if let Some(c) = &admission.claim {
            let exp = now.saturating_add(c.ttl_ms as i64);
            s.keys.insert(c.key.clone(), (c.fingerprint, None, exp));
        }
        Admit::Admitted
    }

    /// [`ModerationStore::complete_key`] without the async wrapper.
    pub fn complete_now(&self, key: &IdempotencyKey, fingerprint: u64, id: u64, window_ms: u64) {
        let now = crate::now_ms();
        let mut s = self.lock();
        let exp = now.saturating_add(window_ms as i64);
        match s.keys.get(key) {
            Some((fp, _, e)) if *e > now && *fp != fingerprint => {}
            _ => {
                s.keys.insert(key.clone(), (fingerprint, Some(id), exp));
            }
        }
    }

    /// [`ModerationStore::release_key`] without the async wrapper.
    pub fn release_now(&self, key: &IdempotencyKey, fingerprint: u64) {
        let mut s = self.lock();
        if matches!(s.keys.get(key), Some((fp, None, _)) if *fp == fingerprint) {
            s.keys.remove(key);
        }
    }
}

#[async_trait]
impl ModerationStore for MemoryModerationStore {
    async fn set_ban(&self, ban: &Ban) -> Result<(), ModerationError> {
        let mut s = self.lock();
        s.bans
            .insert(ban_key(ban.room.as_deref(), &ban.user), ban.clone());
        s.log(ModerationChange::Ban(ban.clone()));
        Ok(())
    }

    async fn lift_ban(&self, room: Option<&str>, user: &str) -> Result<(), ModerationError> {
        let mut s = self.lock();
        s.bans.remove(&ban_key(room, user));
        s.log(ModerationChange::Unban {
            room: room.map(str::to_string),
            user: user.to_string(),
        });
        Ok(())
    }

    async fn bans(&self, room: Option<&str>, now_ms: i64) -> Result<Vec<Ban>, ModerationError> {
        let s = self.lock();
        let mut out: Vec<Ban> = s
            .bans
            .values()
            .filter(|b| b.room.as_deref() == room && b.until_ms > now_ms)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(out)
    }

    async fn update_room_settings(
        &self,
        room: &str,
        patch: &RoomSettingsPatch,
    ) -> Result<RoomSettings, ModerationError> {
        let mut s = self.lock();
        let settings = patch.apply(s.settings.get(room).copied().unwrap_or_default());
        s.settings.insert(room.to_string(), settings);
        s.log(ModerationChange::Settings {
            room: room.to_string(),
            settings,
        });
        Ok(settings)
    }

    async fn room_settings(&self, room: &str) -> Result<RoomSettings, ModerationError> {
        Ok(self.lock().settings.get(room).copied().unwrap_or_default())
    }

    async fn set_word_list(&self, words: &WordList) -> Result<(), ModerationError> {
        let mut s = self.lock();
        s.words = Some(words.clone());
        s.log(ModerationChange::Words);
        Ok(())
    }

    async fn word_list(&self) -> Result<Option<WordList>, ModerationError> {
        Ok(self.lock().words.clone())
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<ChangePage>, ModerationError> {
        let s = self.lock();
        if after > s.version {
            return Ok(None);
        }
        let oldest = s.log.first_key_value().map_or(s.version + 1, |(v, _)| *v);
        if after + 1 < oldest {
            return Ok(None);
        }
        let changes = s
            .log
            .range(after + 1..)
            .take(limit.max(1))
            .map(|(v, c)| (*v, c.clone()))
            .collect();
        Ok(Some(ChangePage {
            version: s.version,
            changes,
        }))
    }

    async fn snapshot(&self, now_ms: i64) -> Result<ModerationSnapshot, ModerationError> {
        let s = self.lock();
        Ok(ModerationSnapshot {
            version: s.version,
            bans: s
                .bans
                .values()
                .filter(|b| b.until_ms > now_ms)
                .cloned()
                .collect(),
            settings: s.settings.iter().map(|(r, v)| (r.clone(), *v)).collect(),
            words: s.words.clone(),
        })
    }

    async fn claim_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        claim_ttl_ms: u64,
    ) -> Result<Claim, ModerationError> {
        Ok(self.claim_now(key, fingerprint, claim_ttl_ms))
    }

    async fn complete_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        id: u64,
        window_ms: u64,
    ) -> Result<(), ModerationError> {
        self.complete_now(key, fingerprint, id, window_ms);
        Ok(())
    }

    async fn release_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
    ) -> Result<(), ModerationError> {
        self.release_now(key, fingerprint);
        Ok(())
    }

    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, ModerationError> {
        Ok(self.take_now(key, rate))
    }

    async fn admit(&self, admission: &Admission<'_>) -> Result<Admit, ModerationError> {
        Ok(self.admit_now(admission))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::moderation_suite!(moderation_in_memory, async {
        let store = std::sync::Arc::new(MemoryModerationStore::new());
        ((), (store.clone(), store))
    });

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let rate = Rate::per_sec(2, 3);
        let now = 1_000_000_000u64;
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(rate.decide(tat, now).expect("within the burst"));
        }
        let wait = rate.decide(tat, now).unwrap_err();
        assert_eq!(wait, 500_000);
        assert!(rate.decide(tat, now + wait).is_ok());
        // Slow mode: one, then a wait of the whole interval.
        let slow = Rate::once_per(10);
        let t = slow.decide(None, now).unwrap();
        assert_eq!(slow.decide(Some(t), now + 1).unwrap_err(), 9_999_999);
        assert!(slow.decide(Some(t), now + 10_000_000).is_ok());
    }

    #[test]
    fn patches_touch_only_their_fields() {
        let s = RoomSettings {
            slow_mode_secs: 5,
            muted: true,
            display_budget_per_sec: Some(10),
        };
        let p = RoomSettingsPatch {
            muted: Some(false),
            display_budget_per_sec: Some(None),
            ..Default::default()
        };
        assert_eq!(
            p.apply(s),
            RoomSettings {
                slow_mode_secs: 5,
                muted: false,
                display_budget_per_sec: None
            }
        );
    }

    #[test]
    fn changes_serialize_tagged() {
        let c = ModerationChange::Unban {
            room: None,
            user: "u".into(),
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(s, r#"{"t":"unban","room":null,"user":"u"}"#);
        assert_eq!(serde_json::from_str::<ModerationChange>(&s).unwrap(), c);
    }
}
