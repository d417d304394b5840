//! The Redis tier of the replay cache (DESIGN §9): [`RedisReplayCache`] keeps
//! encoded bodies in the replay cluster's own Redis (`replay.redis_url`,
//! separate from the live one), and [`TieredReplayCache`] puts the bytes-bounded
//! in-process [`MemoryReplayCache`] in front of it.
//!
//! One Redis value holds a whole [`CachedBody`] (body, gzip form and ETag) in a
//! small binary framing (see [`encode_entry`]), written with `SET .. PX ttl`, so a
//! hit is one round trip and costs neither encoding nor compression.
//!
//! A cache never fails a request: every Redis error or timeout is logged (at most
//! once every few seconds), counted in `danmaku_replay_redis_errors_total{op}`,
//! and answered as a miss (the caller recomputes from the ArchiveStore) or a
//! skipped write.

use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::memory::MemoryReplayCache;
use danmaku_core::ports::{CachedBody, ReplayCache};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Magic and version of the framing; a value without it is treated as a miss.
const MAGIC: &[u8; 4] = b"DMR1";

/// Encodes an entry: `DMR1`, etag length (u16 BE), etag, body length (u32 BE),
/// body, then the gzip form to the end.
pub fn encode_entry(v: &CachedBody) -> Vec<u8> {
    let etag = v.etag.as_bytes();
    let etag_len = etag.len().min(u16::MAX as usize);
    let mut out = Vec::with_capacity(4 + 2 + etag_len + 4 + v.body.len() + v.gzip.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(etag_len as u16).to_be_bytes());
    out.extend_from_slice(&etag[..etag_len]);
    out.extend_from_slice(&(v.body.len() as u32).to_be_bytes());
    out.extend_from_slice(&v.body);
    out.extend_from_slice(&v.gzip);
    out
}

/// Decodes what [`encode_entry`] wrote, without copying the body or its gzip
/// form; `None` for anything else.
pub fn decode_entry(raw: Bytes) -> Option<CachedBody> {
    let rest = raw.strip_prefix(MAGIC.as_slice())?;
    let etag_len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let etag = std::str::from_utf8(rest.get(2..2 + etag_len)?)
        .ok()?
        .to_string();
    let at = 4 + 2 + etag_len;
    let body_len = u32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?) as usize;
    let body_start = at + 4;
    let body_end = body_start.checked_add(body_len)?;
    if body_end > raw.len() {
        return None;
    }
    Some(CachedBody {
        body: raw.slice(body_start..body_end),
        gzip: raw.slice(body_end..),
        etag,
    })
}

/// Last time (ms) a Redis error was logged, to keep a Redis outage from flooding
/// the logs: one line per [`LOG_EVERY_MS`], every error counted.
static LAST_LOGGED: AtomicI64 = AtomicI64::new(0);
const LOG_EVERY_MS: i64 = 5_000;

fn redis_failed(op: &'static str, error: &dyn std::fmt::Display) {
    metrics::counter!("danmaku_replay_redis_errors_total", "op" => op).increment(1);
    let now = danmaku_core::now_ms();
    let last = LAST_LOGGED.load(Ordering::Relaxed);
    if now - last >= LOG_EVERY_MS
        && LAST_LOGGED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(op, error = %error, "replay cache Redis failed; serving from the ArchiveStore (errors are counted in danmaku_replay_redis_errors_total)");
    }
}

/// The replay cache in its own Redis.
#[derive(Clone)]
pub struct RedisReplayCache {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl RedisReplayCache {
    /// Connects to `url` (fails if the server cannot be reached within a few
    /// seconds). Every key gets `prefix`; each command waits at most `timeout`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let timeout = timeout.max(Duration::from_millis(1));
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout.max(Duration::from_secs(1))))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            redis::RedisError::from((
                redis::ErrorKind::Io,
                "timed out connecting to the replay Redis",
            ))
        })??;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// The entry and its remaining time to live (`None` = no expiry set).
    pub async fn get_with_ttl(&self, key: &str) -> Option<(CachedBody, Option<Duration>)> {
        let mut conn = self.conn.clone();
        let k = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic().get(&k).pttl(&k);
        type Reply = (Option<Vec<u8>>, i64);
        let res: Result<redis::RedisResult<Reply>, _> =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await;
        let (raw, pttl) = match res {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                redis_failed("get", &e);
                return None;
            }
            Err(_) => {
                redis_failed("get", &"timed out");
                return None;
            }
        };
        let raw = raw?;
        let Some(value) = decode_entry(Bytes::from(raw)) else {
            redis_failed("decode", &format!("malformed entry under {k}"));
            return None;
        };
        let ttl = (pttl > 0).then(|| Duration::from_millis(pttl as u64));
        Some((value, ttl))
    }
}

#[async_trait]
impl ReplayCache for RedisReplayCache {
    async fn get(&self, key: &str) -> Option<CachedBody> {
        self.get_with_ttl(key).await.map(|(v, _)| v)
    }

    async fn put(&self, key: &str, value: CachedBody, ttl: Duration) {
        let mut conn = self.conn.clone();
        let k = self.key(key);
        let ms = (ttl.as_millis() as u64).max(1);
        let raw = encode_entry(&value);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&k).arg(raw).arg("PX").arg(ms);
        let res: Result<Result<(), _>, _> =
            tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await;
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => redis_failed("put", &e),
            Err(_) => redis_failed("put", &"timed out"),
        }
    }

    async fn invalidate(&self, key: &str) {
        let mut conn = self.conn.clone();
        let k = self.key(key);
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&k);
        let res: Result<Result<i64, _>, _> =
            tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await;
        match res {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => redis_failed("invalidate", &e),
            Err(_) => redis_failed("invalidate", &"timed out"),
        }
    }
}

/// When a Redis entry has no expiry (written by something else), how long the
/// in-process copy may live.
const LOCAL_FILL_DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The in-process cache in front of the replay Redis: `get` asks the local tier,
/// else Redis and then fills the local tier for the entry's remaining time to
/// live; `put` and `invalidate` go to both.
pub struct TieredReplayCache {
    pub local: MemoryReplayCache,
    pub remote: RedisReplayCache,
}

impl TieredReplayCache {
    pub fn new(local: MemoryReplayCache, remote: RedisReplayCache) -> Self {
        Self { local, remote }
    }
}

#[async_trait]
impl ReplayCache for TieredReplayCache {
    async fn get(&self, key: &str) -> Option<CachedBody> {
        if let Some(v) = self.local.get(key).await {
            metrics::counter!("danmaku_replay_cache_tier_hits_total", "tier" => "local")
                .increment(1);
            return Some(v);
        }
        let (value, ttl) = self.remote.get_with_ttl(key).await?;
        metrics::counter!("danmaku_replay_cache_tier_hits_total", "tier" => "redis").increment(1);
        self.local
            .put(key, value.clone(), ttl.unwrap_or(LOCAL_FILL_DEFAULT_TTL))
            .await;
        Some(value)
    }

    async fn put(&self, key: &str, value: CachedBody, ttl: Duration) {
        self.local.put(key, value.clone(), ttl).await;
        self.remote.put(key, value, ttl).await;
    }

    async fn invalidate(&self, key: &str) {
        // Remote first: a concurrent local miss then cannot refill from Redis
        // what is being invalidated.
        self.remote.invalidate(key).await;
        self.local.invalidate(key).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::RedisServer;

    fn body(n: usize) -> CachedBody {
        CachedBody {
            body: Bytes::from(vec![b'{'; n]),
            gzip: Bytes::from(vec![0x1f; n / 3]),
            etag: "\"0123456789abcdef\"".into(),
        }
    }

    #[test]
    fn framing_roundtrips_and_rejects_garbage() {
        for n in [0, 1, 100, 70_000] {
            let v = body(n);
            assert_eq!(decode_entry(Bytes::from(encode_entry(&v))), Some(v));
        }
        let empty = CachedBody {
            body: Bytes::new(),
            gzip: Bytes::new(),
            etag: String::new(),
        };
        assert_eq!(decode_entry(Bytes::from(encode_entry(&empty))), Some(empty));
        assert_eq!(decode_entry(Bytes::from_static(b"")), None);
        assert_eq!(decode_entry(Bytes::from_static(b"DMR2....")), None);
        let mut truncated = encode_entry(&body(100));
        truncated.truncate(40);
        assert_eq!(decode_entry(Bytes::from(truncated)), None);
        assert_eq!(decode_entry(Bytes::from_static(b"DMR1\xff\xff")), None);
    }

    async fn redis(server: &RedisServer) -> RedisReplayCache {
        let prefix = format!("t{}:", rand::random::<u32>());
        RedisReplayCache::connect(&server.url(), &prefix, Duration::from_millis(500))
            .await
            .expect("connects to the test redis-server")
    }

    danmaku_core::replay_cache_suite!(
        #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
        replay_cache_on_redis,
        async {
            let server = crate::tests::shared_server();
            let cache = redis(&server).await;
            (server, cache)
        }
    );

    danmaku_core::replay_cache_suite!(
        #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
        tiered_replay_cache,
        async {
            let server = crate::tests::shared_server();
            let tiered =
                TieredReplayCache::new(MemoryReplayCache::new(1 << 20), redis(&server).await);
            (server, tiered)
        }
    );

    #[tokio::test]
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    async fn tiers_fill_and_invalidate_each_other() {
        let server = RedisServer::start();
        let remote = redis(&server).await;
        let a = TieredReplayCache::new(MemoryReplayCache::new(1 << 20), remote.clone());
        let b = TieredReplayCache::new(MemoryReplayCache::new(1 << 20), remote.clone());
        let v = body(1000);
        // A node's put reaches Redis, so another node's local miss is a Redis hit,
        // and fills that node's local tier with the remaining ttl.
        a.put("k", v.clone(), Duration::from_millis(400)).await;
        assert_eq!(b.local.get("k").await, None);
        assert_eq!(b.get("k").await, Some(v.clone()));
        assert_eq!(b.local.get("k").await, Some(v.clone()));
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            b.local.get("k").await,
            None,
            "the filled copy keeps the ttl"
        );
        // Invalidation clears both tiers of the node that invalidates.
        a.put("k2", v.clone(), Duration::from_secs(60)).await;
        a.invalidate("k2").await;
        assert_eq!(a.local.get("k2").await, None);
        assert_eq!(remote.get("k2").await, None);
        assert_eq!(b.get("k2").await, None);
    }

    #[tokio::test]
    #[ignore = "needs redis-server (bash infra/dev/test.sh installs it)"]
    async fn a_dead_redis_is_a_miss_not_an_error() {
        let mut server = RedisServer::start();
        server.assert_local();
        let remote = redis(&server).await;
        let tiered = TieredReplayCache::new(MemoryReplayCache::new(1 << 20), remote.clone());
        tiered.put("k", body(10), Duration::from_secs(60)).await;
        server.kill();
        let started = std::time::Instant::now();
        // The local tier still answers; Redis misses, puts and deletes are swallowed.
        assert_eq!(tiered.get("k").await, Some(body(10)));
        assert_eq!(remote.get("k").await, None);
        tiered.put("k3", body(10), Duration::from_secs(60)).await;
        assert_eq!(tiered.get("k3").await, Some(body(10)));
        tiered.invalidate("k3").await;
        assert_eq!(tiered.get("k3").await, None);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a dead Redis must not stall requests: {:?}",
            started.elapsed()
        );
        // It comes back (empty): the tier works again after reconnecting.
        server.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            remote.put("back", body(5), Duration::from_secs(60)).await;
            if remote.get("back").await == Some(body(5)) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never reconnected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
