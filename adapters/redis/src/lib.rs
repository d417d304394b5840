//! The Redis adapters of the live path (redis-rs, async): [`RedisSliceStore`] (the
//! SliceStore on a standalone Redis through a `ConnectionManager`, or on a Redis
//! Cluster through the cluster-async client) and [`RedisNotifier`] (Pub/Sub on a
//! standalone Redis, sharded Pub/Sub — `SPUBLISH`/`SSUBSCRIBE` — on a cluster).
//!
//! - `scripts` (private): the Lua scripts, one hash slot each.
//! - `store` (private): the SliceStore.
//! - `notifier` (private): the Notifier.
//! - `moderation` (private): [`RedisModerationStore`], the shared moderation
//!   state (its key layout is in its module documentation).
//! - `presence` (private): [`RedisPresence`], per-room viewer counts over every
//!   live node (its keys are in its module documentation).
//!
//! # Key layout (DESIGN §6)
//!
//! Every key of a room carries the `{room}` hash tag, so a room lives in one slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `dm:{room}:s:<start>:<len>` | ZSET | a slice: score = seq, member = seq (8 bytes BE) · ts (8 bytes BE) · encoded comment |
//! | `dm:{room}:idx` | ZSET | the slice index, every slice a cursor read walks: member `<start>:<len>` (a live slice) or `b:<batch>:<start>:<len>` (a claimed one, until it expires), score = the slice's highest seq |
//! | `dm:{room}:exp` | ZSET | the room's slices by due time (end + hot retention; 0 = expedited) |
//! | `dm:{room}:bytes` | HASH | bytes per slice (big-key tracking) |
//! | `dm:{room}:meta` | HASH | `last`: highest seq stored, the idempotency high-water mark; `head`: the room's newest slice `<start>:<len>`, kept after it is claimed (the slice rule places items against it); `ret`: the hot retention of the latest append (when claimed slices expire); `mark`: slices starting at or before it are due at once (a VOD ended); `qv`/`qc`: version of the room's queue state, and the version its queue shard has (TTL `redis.last_seq_ttl_secs`) |
//! | `dm:{room}:b:<batch>:<start>:<len>` | ZSET | a slice claimed by archive batch `<batch>`, readable until it expires |
//! | `dm:{room}:c:<batch>` | STRING | the slices batch `<batch>` claimed from this room, while the batch is not complete |
//! | `dm:{room}:a:<batch>` | STRING | the same once the batch completed (its slices are archived), until they expire |
//! | `dm:{room}:ch` | channel | new items of the room, for the live nodes |
//!
//! The expiry queue is sharded: `dm:{<ns>q<i>}:expiry` (ZSET room → the room's
//! earliest due time) and `dm:{<ns>q<i>}:ver` (HASH room → version), for
//! `i = hash(room) % redis.queue_shards`. Archive batches live under the
//! `{<ns>b}` tag: `dm:{<ns>b}:next` (id counter), `dm:{<ns>b}:leases` (ZSET
//! id → lease end), `dm:{<ns>b}:batch:<id>` (JSON record), `dm:{<ns>b}:gc` (SET of
//! ids being completed: their rooms are being marked archived), `dm:{<ns>b}:kept`
//! (ZSET of completed ids → the earliest end of their slices' hot retention).
//!
//! # Writes
//!
//! One `append` is one Lua script on the room's slot: it drops items at or below the
//! room's high-water mark (Bus redeliveries keep their seq), adds the rest with one
//! multi-member `ZADD` per slice, updates the index, the byte counts and the
//! room's due times, and reports each touched slice's members and bytes. When it
//! created a slice, the room's earliest due time is copied into its queue shard
//! (a second slot, so a second step, fenced by the room's version `qv`); the room
//! remembers which version the shard holds (`qc`), so if the writer dies between the
//! two steps, the redelivered records' append (which stores nothing) sees
//! `qv != qc` and repeats the copy. The writer runs the appends of a batch's rooms
//! concurrently on one multiplexed connection: they are pipelined.
//!
//! # Archive batches: claim with lease, exactly once
//!
//! A batch spans rooms, hence slots, so claiming is a short protocol of
//! single-slot atomic steps, each idempotent:
//!
//! 1. `claim_batch` first hands out again a batch whose lease expired (`BATCH_EXPIRED`,
//!    renewing the lease): same id, and its record names the same slices, whose keys
//!    nobody else can touch, so the same contents.
//! 2. Otherwise it picks rooms due at `now` from the queue shards and opens a batch
//!    (`BATCH_NEW`: id, record `claiming` with the rooms, lease — one step).
//! 3. For each room, `CLAIM_ROOM` renames the room's due slices to batch-owned keys
//!    (still in the room's index: their items stay readable) and records which, in
//!    the room's slot: a rerun for the same batch returns the same slices and
//!    moves nothing more.
//! 4. The record becomes `ready` with the slice list (`BATCH_SET`); the rooms' queue
//!    entries are updated; the contents are read from the batch-owned keys.
//!
//! An archiver dying after 2 or 3 leaves a `claiming` record whose lease expires;
//! the next claim reruns 3 (idempotent) and 4 for the recorded rooms. Dying after 4
//! leaves a `ready` batch that is handed out again unchanged. An archiver at work
//! renews its lease (`BATCH_RENEW`), so `archive.lease_ms` can be a few seconds.
//! `complete_batch` first removes the lease and lists the batch as completing
//! (`BATCH_COMPLETE`, one step: from then on it is never handed out again), then
//! marks each room's slices archived (`ROOM_ARCHIVED`: `c:<batch>` → `a:<batch>`),
//! then moves the batch to `kept` (`BATCH_KEEP`); a crash in between is finished
//! by the next claim. `expire_archived` takes the kept batches whose earliest
//! retention end passed and, in each of their rooms, deletes the claimed slices
//! from the oldest on while they are archived and past their retention
//! (`ROOM_EXPIRE`: end + `meta.ret`; never past a slice still held, so cursor
//! reads never skip a middle); a batch with nothing left is forgotten. With the archiver's
//! order — ArchiveStore upsert (idempotent) → Parquet put (same name, same bytes) →
//! `complete_batch` — every comment is archived exactly once: a batch is either
//! completed (never redone) or redone with identical contents.
//!
//! # Redis without persistence
//!
//! A restarted Redis without AOF/RDB comes back empty: the hot window (everything
//! not archived yet) and the high-water marks are gone. Records the writer had not
//! committed on the Bus are redelivered and stored again (the empty high-water mark
//! lets them in); records committed before the restart are in Kafka only. Run the
//! live Redis with `appendonly yes` (`appendfsync everysec` loses at most a second)
//! to survive restarts; see the README.

pub mod cache;
mod moderation;
mod notifier;
mod presence;
mod scripts;
mod store;

pub use cache::{RedisReplayCache, TieredReplayCache};
pub use moderation::RedisModerationStore;
pub use notifier::RedisNotifier;
pub use presence::RedisPresence;
pub use store::RedisSliceStore;

/// redis-server and a 3-node Redis Cluster on free loopback ports, for tests.
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};
use danmaku_core::config::RedisSettings;
use std::time::Duration;

/// Why the Redis adapters could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid redis url {url:?}: {source}")]
    Url { url: String, source: RedisError },
    #[error("redis: {0}")]
    Client(#[from] RedisError),
}

/// A command connection to a standalone Redis or a cluster. Cheap to clone (both
/// are handles on multiplexed connections that reconnect by themselves).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where the adapters connect.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Single(String),
    Cluster(Vec<String>),
}

impl Target {
    fn from_settings(settings: &RedisSettings) -> Option<Self> {
        if !settings.cluster.trim().is_empty() {
            let nodes = settings
                .cluster
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if s.contains("://") {
                        s
                    } else {
                        format!("redis://{s}")
                    }
                })
                .collect();
            Some(Target::Cluster(nodes))
        } else if !settings.url.trim().is_empty() {
            Some(Target::Single(settings.url.trim().to_string()))
        } else {
            None
        }
    }
}

fn timeouts(settings: &RedisSettings) -> (Duration, Duration) {
    (
        Duration::from_millis(settings.response_timeout_ms.max(1)),
        Duration::from_millis(settings.connect_timeout_ms.max(1)),
    )
}

/// TCP settings of every connection: no Nagle delay (requests are small and
/// latency matters: a notice waiting 40 ms for a delayed ACK is a late comment).
pub(crate) fn tcp() -> ::redis::io::tcp::TcpSettings {
    ::redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// Connection info of a standalone Redis URL, with [`tcp`] settings.
pub(crate) fn single_info(url: &str) -> Result<::redis::ConnectionInfo, RedisSetupError> {
    ::redis::IntoConnectionInfo::into_connection_info(url)
        .map(|info| info.set_tcp_settings(tcp()))
        .map_err(|source| RedisSetupError::Url {
            url: url.to_string(),
            source,
        })
}

/// A command connection; it connects lazily (and reconnects) in the background,
/// so a Redis that is down at start only makes calls fail until it is back.
pub(crate) fn command_conn(
    target: &Target,
    settings: &RedisSettings,
) -> Result<Conn, RedisSetupError> {
    let (response, connect) = timeouts(settings);
    match target {
        Target::Single(url) => {
            let client = ::redis::Client::open(single_info(url)?)?;
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(response))
                .set_connection_timeout(Some(connect))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500))
                .set_pipeline_buffer_size(4096);
            Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
        Target::Cluster(nodes) => {
            let client = ::redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .tcp_settings(tcp())
                .response_timeout(response)
                .connection_timeout(connect)
                .retries(2)
                .max_retry_wait(500)
                .build()?;
            Ok(Conn::Cluster(
                client.get_pending_async_connection_with_config(
                    ::redis::cluster::ClusterConfig::new()
                        .set_response_timeout(response)
                        .set_connection_timeout(connect),
                ),
            ))
        }
    }
}

/// Opens the SliceStore and the Notifier the settings select (`redis.cluster`, else
/// `redis.url`); `None` when neither is set.
pub async fn connect(
    settings: &RedisSettings,
) -> Result<Option<(RedisSliceStore, RedisNotifier)>, RedisSetupError> {
    let Some(target) = Target::from_settings(settings) else {
        return Ok(None);
    };
    let conn = command_conn(&target, settings)?;
    let store = RedisSliceStore::new(conn.clone(), settings, matches!(target, Target::Cluster(_)));
    let notifier = RedisNotifier::start(conn, &target, settings)?;
    match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
        Ok(Ok(())) => tracing::info!(target = ?target, "redis slice store ready"),
        _ => tracing::warn!(
            target = ?target,
            "redis not reachable yet; /readyz stays failing until it is"
        ),
    }
    Ok(Some((store, notifier)))
}

/// `dm:{room}:`, the prefix of every key of `room`.
pub(crate) fn room_prefix(room: &str) -> String {
    format!("dm:{{{room}}}:")
}

/// The room's notification channel.
pub(crate) fn channel(room: &str) -> String {
    format!("dm:{{{room}}}:ch")
}

/// The room a channel name belongs to.
pub(crate) fn room_of_channel(channel: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(channel).ok()?;
    let rest = s.strip_prefix("dm:{")?;
    let room = rest.strip_suffix("}:ch")?;
    Some(room.to_string())
}

/// FNV-1a: a stable hash (rooms must keep their queue shard across restarts).
pub(crate) fn stable_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Counts a Redis failure by operation (no per-room labels).
pub(crate) fn count_error(op: &'static str) {
    metrics::counter!("danmaku_redis_errors_total", "op" => op).increment(1);
}

#[cfg(test)]
mod tests;
