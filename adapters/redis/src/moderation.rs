//! The Redis ModerationStore: the moderation state of every ingest node on a
//! standalone Redis or a Redis Cluster.
//!
//! # Key layout
//!
//! The shared state (read by every node into its local copy, written by admins)
//! lives under one hash tag, `{<ns>mod}`, so every write is one Lua script on one
//! slot (atomic, on a cluster too):
//!
//! | key | type | what |
//! |---|---|---|
//! | `dm:{<ns>mod}:ver` | STRING | the version: +1 per write |
//! | `dm:{<ns>mod}:log` | ZSET | the change log: score = version, member = `<version>\|<change JSON>`; the last 10,000 kept |
//! | `dm:{<ns>mod}:bans` | HASH | `<room or *>\0<user>` → ban JSON |
//! | `dm:{<ns>mod}:bexp` | ZSET | the same fields by end (ms): ended bans are swept by writes |
//! | `dm:{<ns>mod}:settings` | HASH | room → settings JSON |
//! | `dm:{<ns>mod}:words` | STRING | the word list JSON |
//!
//! The per-request state is one key per idempotency key or limit, spread over
//! the cluster's slots by room:
//!
//! | key | type | what |
//! |---|---|---|
//! | `dm:<ns>:{<scope>}:ik:<len(user)>:<len(scope)>:<user>:<scope>:<key>` | STRING | an idempotency key (`scope` = `room:<room>` or `vod:<vod>`): `p\|<fingerprint>` while claimed, `d\|<fingerprint>\|<id>` once completed; PX = the claim TTL, then the window |
//! | `dm:<ns>:{room:<room>}:rl:<limit key>` | STRING | a room's limit of [`ModerationStore::admit`] (per user, per room, slow mode): the GCRA theoretical arrival time in µs of the server's clock, PX until it no longer matters |
//! | `dm:<ns>:rl:<limit key>` | STRING | a limit of [`ModerationStore::take`] (guest addresses, guest tokens): the same, hashed on its whole name |
//!
//! # The send path: one round trip
//!
//! [`ModerationStore::admit`] is one script (`ADMIT`) over the send's key and
//! its room's limits: the key is looked at first (a held key answers and counts
//! nothing), then every limit decided, then all counted and the key claimed, or
//! nothing. A live send's key (scope `room:<room>`) carries the same hash tag as
//! its room's limits, so the script is one slot on a cluster too. A VOD
//! comment's key is tagged by its VOD: on a standalone Redis it is in the same
//! script all the same; on a cluster it is claimed first in a script of its own
//! and released again if a limit then refuses (two round trips, the only case).
//!
//! Completions ([`ModerationStore::complete_key`]) are group-committed: a task
//! per store collects the completions waiting while one group is on the wire
//! and writes the next group as one script (`COMPLETE_MANY`; on a cluster one
//! script per scope, concurrently); each caller is answered when its group is
//! written, as before, so a completion is never acknowledged before it is
//! stored. A caller dropped while waiting leaves its completion to be written.
//!
//! Before 2026-12-06 the per-request keys had no hash tag (`dm:<ns>:ik:...`,
//! `dm:<ns>:rl:...` for every limit): during a rolling upgrade across that
//! change a retry answered by a node of the other version does not see the
//! first send's key (it may be stored twice), and a room's limits restart.

use super::{count_error, Conn};
use ::redis::{RedisError, Script, Value};
use async_trait::async_trait;
use danmaku_core::ports::{
    ban_key, Admission, Admit, Ban, ChangePage, Claim, IdempotencyKey, KeyClaim, ModerationChange,
    ModerationError, ModerationSnapshot, ModerationStore, Rate, RoomSettings, RoomSettingsPatch,
    WordList, LOG_KEEP,
};
use std::sync::Arc;

/// Appends the change in `ARGV[1]` to the log under the next version (the last
/// `ARGV[2]` kept) and sweeps up to 100 ended bans (`ARGV[3]` = now, ms). KEYS:
/// ver, log, bans, bexp. Shared prologue of the write scripts.
const LOG_FN: &str = r#"
local function log_change(change)
  local v = redis.call('INCR', KEYS[1])
  redis.call('ZADD', KEYS[2], v, v .. '|' .. change)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[2]) + 1))
  local ended = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[3], 'LIMIT', 0, 100)
  for _, f in ipairs(ended) do
    redis.call('HDEL', KEYS[3], f)
    redis.call('ZREM', KEYS[4], f)
  end
  return v
end
"#;

/// KEYS: ver, log, bans, bexp. ARGV: change JSON, keep, now, field, ban JSON, until.
const SET_BAN: &str = r#"
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[4])
return log_change(ARGV[1])
"#;

/// KEYS: ver, log, bans, bexp. ARGV: change JSON, keep, now, field.
const LIFT_BAN: &str = r#"
redis.call('HDEL', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[4])
return log_change(ARGV[1])
"#;

/// KEYS: ver, log, bans, bexp, settings. ARGV: '', keep, now, room, slow ('' =
/// keep), muted ('', '0', '1'), budget ('' = keep, 'null' = default, a number).
/// Returns the settings JSON after.
const SETTINGS: &str = r#"
local cur = redis.call('HGET', KEYS[5], ARGV[4])
local s = {slow_mode_secs = 0, muted = false}
if cur then
  local t = cjson.decode(cur)
  s.slow_mode_secs = tonumber(t.slow_mode_secs) or 0
  s.muted = t.muted == true
  if type(t.display_budget_per_sec) == 'number' then
    s.display_budget_per_sec = t.display_budget_per_sec
  end
end
if ARGV[5] ~= '' then s.slow_mode_secs = tonumber(ARGV[5]) end
if ARGV[6] ~= '' then s.muted = (ARGV[6] == '1') end
if ARGV[7] == 'null' then s.display_budget_per_sec = nil
elseif ARGV[7] ~= '' then s.display_budget_per_sec = tonumber(ARGV[7]) end
local json = cjson.encode(s)
redis.call('HSET', KEYS[5], ARGV[4], json)
log_change('{"t":"settings","room":' .. cjson.encode(ARGV[4]) .. ',"settings":' .. json .. '}')
return json
"#;

/// KEYS: ver, log, bans, bexp, words. ARGV: change JSON, keep, now, words JSON.
const WORDS: &str = r#"
redis.call('SET', KEYS[5], ARGV[4])
return log_change(ARGV[1])
"#;

/// KEYS: ver, log. ARGV: after, limit. `{-1}` = reload; else `{version, members}`.
const CHANGES: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
local after = tonumber(ARGV[1])
if after > v then return {-1} end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local first = v + 1
if oldest[2] then first = tonumber(oldest[2]) end
if after + 1 < first then return {-1} end
return {v, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))}
"#;

/// KEYS: ver, bans, settings, words. `{version, bans HGETALL, settings HGETALL, words}`.
const SNAPSHOT: &str = r#"
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]), redis.call('GET', KEYS[4]) or ''}
"#;

/// Splits `p|fp` / `d|fp|id`.
const PARSE_KEY: &str = r#"
local function parse(cur)
  local state = string.sub(cur, 1, 1)
  local rest = string.sub(cur, 3)
  local sep = string.find(rest, '|', 1, true)
  if sep then return state, string.sub(rest, 1, sep - 1), string.sub(rest, sep + 1) end
  return state, rest, ''
end
"#;

/// KEYS: the key. ARGV: fingerprint, claim TTL ms. `{0}` new, `{1, id}` existing,
/// `{2}` conflict, `{3}` in progress.
const CLAIM: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], 'p|' .. ARGV[1], 'PX', ARGV[2])
  return {0}
end
local state, fp, id = parse(cur)
if fp ~= ARGV[1] then return {2} end
if state == 'd' then return {1, id} end
return {3}
"#;

/// KEYS: the key. ARGV: fingerprint, id, window ms. Another body's key is kept.
const COMPLETE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local state, fp = parse(cur)
  if fp ~= ARGV[1] then return 0 end
end
redis.call('SET', KEYS[1], 'd|' .. ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
"#;

/// KEYS: the key. ARGV: fingerprint. Deletes an unfinished claim of that body.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == 'p|' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// KEYS: the keys, one group after another. ARGV: per key its fingerprint, id,
/// window ms. [`COMPLETE`] for each; returns how many were written.
const COMPLETE_MANY: &str = r#"
local written = 0
for i, key in ipairs(KEYS) do
  local fp = ARGV[3 * i - 2]
  local cur = redis.call('GET', key)
  local mine = true
  if cur then
    local state, cfp = parse(cur)
    mine = cfp == fp
  end
  if mine then
    redis.call('SET', key, 'd|' .. fp .. '|' .. ARGV[3 * i - 1], 'PX', ARGV[3 * i])
    written = written + 1
  end
end
return written
"#;

/// One send's admission ([`ModerationStore::admit`]). KEYS: the idempotency key
/// when ARGV[1] is '1', then the room's limits. ARGV: '1' or '0', fingerprint,
/// claim TTL ms, then per limit its interval µs and burst. `{1, id}` existing,
/// `{2}` conflict, `{3}` in progress (nothing counted), `{4, index, wait µs}` a
/// limit refused (nothing counted, no claim), `{0}` admitted (every limit
/// counted, the key claimed). GCRA as in [`TAKE`], on the server's clock.
const ADMIT: &str = r#"
local base = 0
if ARGV[1] == '1' then
  base = 1
  local cur = redis.call('GET', KEYS[1])
  if cur then
    local state, fp, id = parse(cur)
    if fp ~= ARGV[2] then return {2} end
    if state == 'd' then return {1, id} end
    return {3}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i = base + 1, #KEYS do
  local j = 4 + 2 * (i - base - 1)
  local interval = tonumber(ARGV[j])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * tonumber(ARGV[j + 1])
  if now < allow_at then return {4, i - base - 1, allow_at - now} end
  tats[i] = new_tat
end
for i = base + 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
end
if base == 1 then redis.call('SET', KEYS[1], 'p|' .. ARGV[2], 'PX', ARGV[3]) end
return {0}
"#;

/// KEYS: the limit. ARGV: interval µs, burst. GCRA on the server's clock
/// (`Rate::decide`): 0 = allowed, else the wait in µs.
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local interval = tonumber(ARGV[1])
local new_tat = tat + interval
local allow_at = new_tat - interval * tonumber(ARGV[2])
if now < allow_at then return allow_at - now end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"#;

struct Scripts {
    set_ban: Script,
    lift_ban: Script,
    settings: Script,
    words: Script,
    changes: Script,
    snapshot: Script,
    claim: Script,
    complete: Script,
    release: Script,
    take: Script,
    complete_many: Script,
    admit: Script,
}

impl Scripts {
    fn new() -> Self {
        let logged = |body: &str| Script::new(&format!("{LOG_FN}{body}"));
        let keyed = |body: &str| Script::new(&format!("{PARSE_KEY}{body}"));
        Self {
            set_ban: logged(SET_BAN),
            lift_ban: logged(LIFT_BAN),
            settings: logged(SETTINGS),
            words: logged(WORDS),
            changes: Script::new(CHANGES),
            snapshot: Script::new(SNAPSHOT),
            claim: keyed(CLAIM),
            complete: keyed(COMPLETE),
            release: Script::new(RELEASE),
            take: Script::new(TAKE),
            complete_many: keyed(COMPLETE_MANY),
            admit: keyed(ADMIT),
        }
    }
}

/// The ModerationStore on Redis (standalone or Cluster).
#[derive(Clone)]
pub struct RedisModerationStore {
    conn: Conn,
    scripts: Arc<Scripts>,
    /// `dm:{<ns>mod}:`
    shared: String,
    /// `dm:<ns>:`
    per_request: String,
    completer: Arc<Completer>,
}

/// A completed idempotency key on its way to Redis.
struct Completion {
    /// The Redis key.
    key: String,
    /// Its hash tag's content (the key's scope): completions of one scope share
    /// a slot.
    tag: String,
    fingerprint: u64,
    id: u64,
    window_ms: u64,
    /// The outcome (the error's text when the group failed).
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Completions written in one script at most.
const GROUP: usize = 256;

/// Group commit of completed keys (see the module documentation): the sending
/// half of the channel to the task that writes them, started on first use in
/// the caller's runtime (and again if that runtime ended).
struct Completer {
    conn: Conn,
    scripts: Arc<Scripts>,
    tx: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Completion>>>,
}

impl Completer {
    /// The channel to a running task, starting one if there is none.
    fn sender(&self) -> tokio::sync::mpsc::Sender<Completion> {
        let mut tx = self.tx.lock().expect("completer lock");
        if let Some(tx) = tx.as_ref().filter(|t| !t.is_closed()) {
            return tx.clone();
        }
        let (sender, rx) = tokio::sync::mpsc::channel(4 * GROUP);
        tokio::spawn(complete_groups(self.conn.clone(), self.scripts.clone(), rx));
        *tx = Some(sender.clone());
        sender
    }
}

/// The completer's task: writes every completion waiting at once (at most
/// [`GROUP`]) and answers each; ends when the store is dropped.
async fn complete_groups(
    conn: Conn,
    scripts: Arc<Scripts>,
    mut rx: tokio::sync::mpsc::Receiver<Completion>,
) {
    let mut batch = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut batch, GROUP).await > 0 {
        let mut groups: Vec<Vec<Completion>> = Vec::new();
        if matches!(conn, Conn::Cluster(_)) {
            // One script per slot: completions of one scope share its hash tag.
            let mut by_tag: std::collections::HashMap<String, Vec<Completion>> =
                std::collections::HashMap::new();
            for c in batch.drain(..) {
                by_tag.entry(c.tag.clone()).or_default().push(c);
            }
            groups.extend(by_tag.into_values());
        } else {
            groups.push(std::mem::take(&mut batch));
            batch.reserve(GROUP);
        }
        futures::future::join_all(groups.into_iter().map(|group| {
            let mut conn = conn.clone();
            let scripts = scripts.clone();
            async move {
                let mut inv = scripts.complete_many.prepare_invoke();
                for c in &group {
                    inv.key(&c.key)
                        .arg(c.fingerprint.to_string())
                        .arg(c.id.to_string())
                        .arg(c.window_ms.max(1));
                }
                let result = inv
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        count_error("moderation_complete");
                        e.to_string()
                    });
                for c in group {
                    let _ = c.done.send(result.clone());
                }
            }
        }))
        .await;
    }
}

fn unavailable(op: &'static str) -> impl Fn(RedisError) -> ModerationError {
    move |e| {
        count_error(op);
        ModerationError::unavailable(op).with_source(e)
    }
}

fn corrupt(what: &str) -> ModerationError {
    ModerationError::other(format!("unexpected reply: {what}"))
}

fn bulk_str(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => bulk_str(v).and_then(|s| s.parse().ok()),
    }
}

/// A flat `[field, value, ...]` (HGETALL in a script) as pairs.
fn pairs(v: &Value) -> Result<Vec<(String, String)>, ModerationError> {
    let Value::Array(items) = v else {
        return Err(corrupt("hash"));
    };
    items
        .chunks(2)
        .map(|c| match c {
            [f, v] => Ok((
                bulk_str(f).ok_or_else(|| corrupt("hash field"))?,
                bulk_str(v).ok_or_else(|| corrupt("hash value"))?,
            )),
            _ => Err(corrupt("odd hash")),
        })
        .collect()
}

impl RedisModerationStore {
    /// The store on `conn`, its keys under `namespace` (`redis.namespace`).
    pub(crate) fn new(conn: Conn, namespace: &str) -> Self {
        let scripts = Arc::new(Scripts::new());
        Self {
            completer: Arc::new(Completer {
                conn: conn.clone(),
                scripts: scripts.clone(),
                tx: std::sync::Mutex::new(None),
            }),
            conn,
            scripts,
            shared: format!("dm:{{{namespace}mod}}:"),
            per_request: format!("dm:{namespace}:"),
        }
    }

    /// Opens the store the settings select (`redis.cluster`, else `redis.url`);
    /// `None` when neither is set. Connects lazily: a Redis that is down makes
    /// calls fail (`Unavailable`) until it is back.
    pub fn connect(
        settings: &danmaku_core::config::RedisSettings,
    ) -> Result<Option<Self>, super::RedisSetupError> {
        let Some(target) = super::Target::from_settings(settings) else {
            return Ok(None);
        };
        let conn = super::command_conn(&target, settings)?;
        Ok(Some(Self::new(conn, &settings.namespace)))
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.shared)
    }

    /// A write script's invocation with the log keys and arguments in place.
    fn logged<'a>(
        &self,
        script: &'a Script,
        change: &str,
        extra_keys: &[&str],
    ) -> ::redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.key("ver"))
            .key(self.key("log"))
            .key(self.key("bans"))
            .key(self.key("bexp"));
        for k in extra_keys {
            inv.key(self.key(k));
        }
        inv.arg(change).arg(LOG_KEEP).arg(danmaku_core::now_ms());
        inv
    }

    /// `dm:<ns>:{<scope>}:ik:<encoded key>`: tagged by its scope, so a live
    /// send's key shares its room's slot.
    fn idem_key(&self, key: &IdempotencyKey) -> String {
        format!("{}{{{}}}:ik:{}", self.per_request, key.scope, key.encoded())
    }

    /// `dm:<ns>:{room:<room>}:rl:<limit key>`: a room's limit of `admit`.
    fn room_limit_key(&self, room: &str, key: &str) -> String {
        format!("{}{{room:{room}}}:rl:{key}", self.per_request)
    }

    /// The `ADMIT` script over `limits` of `room`, with `claim` first when given.
    async fn admit_script(
        &self,
        room: &str,
        limits: &[(String, Rate)],
        claim: Option<&KeyClaim<'_>>,
    ) -> Result<Admit, ModerationError> {
        let mut inv = self.scripts.admit.prepare_invoke();
        match claim {
            Some(c) => {
                inv.key(self.idem_key(c.key))
                    .arg("1")
                    .arg(c.fingerprint.to_string())
                    .arg(c.ttl_ms.max(1));
            }
            None => {
                inv.arg("0").arg("").arg(0);
            }
        }
        for (key, rate) in limits {
            inv.key(self.room_limit_key(room, key))
                .arg(rate.interval_us.max(1))
                .arg(rate.burst.max(1));
        }
        let reply: Value = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_admit"))?;
        let Value::Array(parts) = reply else {
            return Err(corrupt("admit"));
        };
        match parts.first().and_then(int) {
            Some(0) => Ok(Admit::Admitted),
            Some(1) => parts
                .get(1)
                .and_then(bulk_str)
                .and_then(|s| s.parse().ok())
                .map(|id| Admit::Held(Claim::Existing(id)))
                .ok_or_else(|| corrupt("claimed id")),
            Some(2) => Ok(Admit::Held(Claim::Conflict)),
            Some(3) => Ok(Admit::Held(Claim::InProgress)),
            Some(4) => {
                let index = parts.get(1).and_then(int).ok_or_else(|| corrupt("limit"))?;
                let wait_us = parts.get(2).and_then(int).ok_or_else(|| corrupt("wait"))?;
                Ok(Admit::Limited {
                    index: usize::try_from(index).map_err(|_| corrupt("limit"))?,
                    retry_after_ms: (wait_us.max(1) as u64).div_ceil(1000),
                })
            }
            _ => Err(corrupt("admit state")),
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("moderation values serialize")
}

#[async_trait]
impl ModerationStore for RedisModerationStore {
    async fn set_ban(&self, ban: &Ban) -> Result<(), ModerationError> {
        let change = to_json(&ModerationChange::Ban(ban.clone()));
        let mut inv = self.logged(&self.scripts.set_ban, &change, &[]);
        inv.arg(ban_key(ban.room.as_deref(), &ban.user))
            .arg(to_json(ban))
            .arg(ban.until_ms);
        inv.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(unavailable("moderation_ban"))
    }

    async fn lift_ban(&self, room: Option<&str>, user: &str) -> Result<(), ModerationError> {
        let change = to_json(&ModerationChange::Unban {
            room: room.map(str::to_string),
            user: user.to_string(),
        });
        let mut inv = self.logged(&self.scripts.lift_ban, &change, &[]);
        inv.arg(ban_key(room, user));
        inv.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(unavailable("moderation_unban"))
    }

    async fn bans(&self, room: Option<&str>, now_ms: i64) -> Result<Vec<Ban>, ModerationError> {
        // The bans hash holds every room's bans; a room's are the fields with its
        // prefix. HSCAN with a MATCH pattern walks the whole hash; moderation
        // state is small (bans, not comments), and this is an admin listing.
        let prefix = ban_key(room, "");
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = ::redis::cmd("HSCAN")
                .arg(self.key("bans"))
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(unavailable("moderation_bans"))?;
            for (_, json) in fields {
                let ban: Ban = serde_json::from_str(&json)
                    .map_err(|e| ModerationError::other("ban record").with_source(e))?;
                if ban.until_ms > now_ms && ban.room.as_deref() == room {
                    out.push(ban);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out.dedup_by(|a, b| a.user == b.user);
        Ok(out)
    }

    async fn update_room_settings(
        &self,
        room: &str,
        patch: &RoomSettingsPatch,
    ) -> Result<RoomSettings, ModerationError> {
        let mut inv = self.logged(&self.scripts.settings, "", &["settings"]);
        inv.arg(room)
            .arg(
                patch
                    .slow_mode_secs
                    .map_or(String::new(), |v| v.to_string()),
            )
            .arg(match patch.muted {
                None => "",
                Some(true) => "1",
                Some(false) => "0",
            })
            .arg(match patch.display_budget_per_sec {
                None => String::new(),
                Some(None) => "null".to_string(),
                Some(Some(v)) => v.to_string(),
            });
        let json: String = inv
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_settings"))?;
        serde_json::from_str(&json)
            .map_err(|e| ModerationError::other("settings record").with_source(e))
    }

    async fn room_settings(&self, room: &str) -> Result<RoomSettings, ModerationError> {
        let json: Option<String> = ::redis::cmd("HGET")
            .arg(self.key("settings"))
            .arg(room)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_settings_get"))?;
        match json {
            None => Ok(RoomSettings::default()),
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| ModerationError::other("settings record").with_source(e)),
        }
    }

    async fn set_word_list(&self, words: &WordList) -> Result<(), ModerationError> {
        let change = to_json(&ModerationChange::Words);
        let mut inv = self.logged(&self.scripts.words, &change, &["words"]);
        inv.arg(to_json(words));
        inv.invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(unavailable("moderation_words"))
    }

    async fn word_list(&self) -> Result<Option<WordList>, ModerationError> {
        let json: Option<String> = ::redis::cmd("GET")
            .arg(self.key("words"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_words_get"))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| ModerationError::other("word list").with_source(e))
        })
        .transpose()
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<ChangePage>, ModerationError> {
        let reply: Value = self
            .scripts
            .changes
            .key(self.key("ver"))
            .key(self.key("log"))
            .arg(after)
            .arg(limit.max(1))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_changes"))?;
        let Value::Array(parts) = reply else {
            return Err(corrupt("changes"));
        };
        let version = parts
            .first()
            .and_then(int)
            .ok_or_else(|| corrupt("version"))?;
        if version < 0 {
            return Ok(None);
        }
        let Some(Value::Array(members)) = parts.get(1) else {
            return Err(corrupt("changes list"));
        };
        let mut changes = Vec::with_capacity(members.len());
        for m in members {
            let s = bulk_str(m).ok_or_else(|| corrupt("change"))?;
            let (v, json) = s.split_once('|').ok_or_else(|| corrupt("change member"))?;
            let v: u64 = v.parse().map_err(|_| corrupt("change version"))?;
            let change: ModerationChange = serde_json::from_str(json)
                .map_err(|e| ModerationError::other("change record").with_source(e))?;
            changes.push((v, change));
        }
        Ok(Some(ChangePage {
            version: version as u64,
            changes,
        }))
    }

    async fn snapshot(&self, now_ms: i64) -> Result<ModerationSnapshot, ModerationError> {
        let reply: Value = self
            .scripts
            .snapshot
            .key(self.key("ver"))
            .key(self.key("bans"))
            .key(self.key("settings"))
            .key(self.key("words"))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_snapshot"))?;
        let Value::Array(parts) = reply else {
            return Err(corrupt("snapshot"));
        };
        let [version, bans, settings, words] = parts.as_slice() else {
            return Err(corrupt("snapshot parts"));
        };
        let version = int(version).ok_or_else(|| corrupt("version"))?.max(0) as u64;
        let mut snap = ModerationSnapshot {
            version,
            ..Default::default()
        };
        for (_, json) in pairs(bans)? {
            let ban: Ban = serde_json::from_str(&json)
                .map_err(|e| ModerationError::other("ban record").with_source(e))?;
            if ban.until_ms > now_ms {
                snap.bans.push(ban);
            }
        }
        for (room, json) in pairs(settings)? {
            let s: RoomSettings = serde_json::from_str(&json)
                .map_err(|e| ModerationError::other("settings record").with_source(e))?;
            snap.settings.push((room, s));
        }
        let words = bulk_str(words).unwrap_or_default();
        if !words.is_empty() {
            snap.words = serde_json::from_str(&words)
                .map(Some)
                .map_err(|e| ModerationError::other("word list").with_source(e))?;
        }
        Ok(snap)
    }

    async fn claim_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        claim_ttl_ms: u64,
    ) -> Result<Claim, ModerationError> {
        let reply: Value = self
            .scripts
            .claim
            .key(self.idem_key(key))
            .arg(fingerprint.to_string())
            .arg(claim_ttl_ms.max(1))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_claim"))?;
        let Value::Array(parts) = reply else {
            return Err(corrupt("claim"));
        };
        match parts.first().and_then(int) {
            Some(0) => Ok(Claim::New),
            Some(1) => parts
                .get(1)
                .and_then(bulk_str)
                .and_then(|s| s.parse().ok())
                .map(Claim::Existing)
                .ok_or_else(|| corrupt("claimed id")),
            Some(2) => Ok(Claim::Conflict),
            Some(3) => Ok(Claim::InProgress),
            _ => Err(corrupt("claim state")),
        }
    }

    async fn complete_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        id: u64,
        window_ms: u64,
    ) -> Result<(), ModerationError> {
        let (done, written) = tokio::sync::oneshot::channel();
        let completion = Completion {
            key: self.idem_key(key),
            tag: key.scope.clone(),
            fingerprint,
            id,
            window_ms,
            done,
        };
        if self.completer.sender().send(completion).await.is_ok() {
            match written.await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    return Err(ModerationError::unavailable("moderation_complete").with_source(e))
                }
                // The task's runtime ended with the completion: write it here.
                Err(_) => {}
            }
        }
        self.scripts
            .complete
            .key(self.idem_key(key))
            .arg(fingerprint.to_string())
            .arg(id.to_string())
            .arg(window_ms.max(1))
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(unavailable("moderation_complete"))
    }

    async fn release_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
    ) -> Result<(), ModerationError> {
        self.scripts
            .release
            .key(self.idem_key(key))
            .arg(fingerprint.to_string())
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|_| ())
            .map_err(unavailable("moderation_release"))
    }

    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, ModerationError> {
        let wait_us: i64 = self
            .scripts
            .take
            .key(format!("{}rl:{key}", self.per_request))
            .arg(rate.interval_us.max(1))
            .arg(rate.burst.max(1))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable("moderation_take"))?;
        if wait_us <= 0 {
            Ok(Ok(()))
        } else {
            Ok(Err((wait_us as u64).div_ceil(1000)))
        }
    }

    async fn admit(&self, admission: &Admission<'_>) -> Result<Admit, ModerationError> {
        let Admission {
            room,
            limits,
            claim,
        } = admission;
        if limits.is_empty() && claim.is_none() {
            return Ok(Admit::Admitted);
        }
        // On a cluster every key of a script must be in one slot: a key scoped
        // otherwise than by the room (a VOD's) is claimed in a step of its own.
        let apart = matches!(self.conn, Conn::Cluster(_))
            && !limits.is_empty()
            && claim.is_some_and(|c| c.key.scope.strip_prefix("room:") != Some(*room));
        let Some(c) = claim.as_ref().filter(|_| apart) else {
            return self.admit_script(room, limits, claim.as_ref()).await;
        };
        match self.claim_key(c.key, c.fingerprint, c.ttl_ms).await? {
            Claim::New => {}
            held => return Ok(Admit::Held(held)),
        }
        let decided = self.admit_script(room, limits, None).await;
        if !matches!(decided, Ok(Admit::Admitted)) {
            if let Err(e) = self.release_key(c.key, c.fingerprint).await {
                tracing::warn!(error = %e, "cannot release an idempotency key");
            }
        }
        decided
    }
}

/// Escapes Redis glob metacharacters (`*?[]\`) so `s` matches only itself.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{shared_cluster, shared_server};
    use danmaku_core::config::RedisSettings;

    /// Two handles (two nodes' connections) on one store in a fresh namespace.
    fn pair(settings: RedisSettings) -> (Arc<RedisModerationStore>, Arc<RedisModerationStore>) {
        let settings = RedisSettings {
            namespace: format!("t{}", rand::random::<u32>()),
            response_timeout_ms: 2000,
            ..settings
        };
        let open = || Arc::new(RedisModerationStore::connect(&settings).unwrap().unwrap());
        (open(), open())
    }

    danmaku_core::moderation_suite!(
        #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
        moderation_on_redis,
        async {
            let server = shared_server();
            let stores = pair(RedisSettings {
                url: server.url(),
                ..Default::default()
            });
            (server, stores)
        }
    );

    danmaku_core::moderation_suite!(
        #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
        moderation_on_a_redis_cluster(flavor = "multi_thread", worker_threads = 2),
        async {
            let cluster = shared_cluster();
            let stores = pair(RedisSettings {
                cluster: cluster.urls().join(","),
                ..Default::default()
            });
            (cluster, stores)
        }
    );

    /// A Redis that is down answers `Unavailable` (the intake then fails closed),
    /// and the same handle works again once it is back.
    #[tokio::test]
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    async fn a_down_redis_is_unavailable_then_recovers() {
        use danmaku_core::ports::ModerationErrorKind;
        let mut server = crate::testkit::RedisServer::start();
        let (store, _) = pair(RedisSettings {
            url: server.url(),
            response_timeout_ms: 500,
            connect_timeout_ms: 500,
            ..Default::default()
        });
        store.changes_after(0, 10).await.unwrap();
        server.kill();
        let e = store.changes_after(0, 10).await.unwrap_err();
        assert_eq!(e.kind(), ModerationErrorKind::Unavailable, "{e}");
        let e = store.take("k", Rate::once_per(1)).await.unwrap_err();
        assert_eq!(e.kind(), ModerationErrorKind::Unavailable);
        server.restart();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match store.snapshot(0).await {
                Ok(snap) => {
                    assert_eq!(
                        snap.version, 0,
                        "a Redis without persistence comes back empty"
                    );
                    break;
                }
                Err(e) => {
                    assert!(std::time::Instant::now() < deadline, "never recovered: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    #[test]
    fn globs_match_only_themselves() {
        assert_eq!(glob_escape("*\u{0}a?b"), "\\*\u{0}a\\?b");
        assert_eq!(glob_escape("room-1\u{0}"), "room-1\u{0}");
    }
}
