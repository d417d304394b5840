//! Engine selection: the one place that turns configuration into adapters.
//!
//! Each port gets its distributed adapter when that adapter's key is set (API.md,
//! "Configuration keys that select the engines"), else the embedded default:
//!
//! | port | key | adapter | default |
//! |---|---|---|---|
//! | Bus | `kafka.brokers` | `danmaku_kafka::KafkaBus` | `danmaku_embedded::EmbeddedBus` |
//! | SliceStore + Notifier | `redis.url` / `redis.cluster` | `danmaku_redis` | `EmbeddedSliceStore` + `LocalNotifier` |
//! | ArchiveStore | `scylla.nodes` | `danmaku_scylla::ScyllaArchiveStore` | `EmbeddedArchiveStore` |
//! | ReplayCache | `replay.redis_url` | `danmaku_redis::TieredReplayCache` | `MemoryReplayCache` |
//! | ObjectStore | `archive.url` (`s3://…`) | `danmaku_object_store` on S3 | `danmaku_object_store` on local files under the data dir |
//! | Presence (online counts) | `redis.url` / `redis.cluster` | `danmaku_redis::RedisPresence` | `MemoryPresence` (one process) |
//! | ModerationStore ([`moderation_store`]) | `redis.url` / `redis.cluster` | `danmaku_redis::RedisModerationStore` | `danmaku_embedded::EmbeddedModerationStore` (`moderation.redb`) |
//!
//! A new backend for a port: an adapter crate under `adapters/`, a settings key in
//! `danmaku_core::config`, and one branch here.

use danmaku_core::auth::{load_secret, TokenSigner};
use danmaku_core::config::Settings;
use danmaku_core::context::Context;
use danmaku_core::id::IdGenerator;
use danmaku_core::memory::{LocalNotifier, MemoryReplayCache};
use danmaku_core::ports::{
    ArchiveStore, Bus, ModerationStore, Notifier, ObjectStore, ReplayCache, SliceStore,
};
use danmaku_embedded::{EmbeddedArchiveStore, EmbeddedBus, EmbeddedDb, EmbeddedSliceStore};
use std::sync::Arc;

/// Builds the [`Context`] the settings select.
pub struct EngineSelection;

/// Why the context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(
        "{0} is set, but this build has no adapter for it yet (embedded defaults only); unset it"
    )]
    NotAvailable(&'static str),
    #[error("cannot open the embedded store under {dir}: {message}")]
    Embedded { dir: String, message: String },
    /// A distributed adapter could not be reached or set up.
    #[error("{which}: {message}")]
    Adapter {
        which: &'static str,
        message: String,
    },
    #[error("auth secret: {0}")]
    Secret(String),
    #[error(transparent)]
    Objects(#[from] danmaku_object_store::OpenError),
}

impl EngineSelection {
    /// Opens the stores the settings select: each distributed adapter when its key
    /// is set (API.md, "Configuration keys that select the engines"), else the
    /// embedded default.
    pub async fn build(settings: Settings) -> Result<Context, ContextError> {
        let dir = settings.server.data_dir.clone();
        let embedded_err = |e: redb::Error| ContextError::Embedded {
            dir: dir.display().to_string(),
            message: e.to_string(),
        };
        let db = EmbeddedDb::open_with_cache(
            &dir,
            settings.server.embedded_cache_mb.saturating_mul(1 << 20),
        )
        .map_err(embedded_err)?;

        // Bus: Kafka when kafka.brokers is set.
        let bus: Arc<dyn Bus> = if !settings.kafka.brokers.is_empty() {
            Arc::new(
                danmaku_kafka::KafkaBus::new(&settings.kafka)
                    .await
                    .map_err(|e| ContextError::Adapter {
                        which: "kafka.brokers",
                        message: e.to_string(),
                    })?,
            )
        } else {
            Arc::new(
                EmbeddedBus::open_with(
                    db.clone(),
                    settings.bus.partitions,
                    std::time::Duration::from_millis(settings.bus.group_commit_ms),
                )
                .map_err(embedded_err)?,
            )
        };

        // SliceStore and Notifier: Redis Cluster when redis.cluster is set, else Redis
        // when redis.url is set.
        let redis =
            danmaku_redis::connect(&settings.redis)
                .await
                .map_err(|e| ContextError::Adapter {
                    which: if settings.redis.cluster.is_empty() {
                        "redis.url"
                    } else {
                        "redis.cluster"
                    },
                    message: e.to_string(),
                })?;
        let (slices, notifier): (Arc<dyn SliceStore>, Arc<dyn Notifier>) = match redis {
            Some((store, notifier)) => (Arc::new(store), Arc::new(notifier)),
            None => {
                let store = EmbeddedSliceStore::new(db.clone());
                // With the embedded Bus in the same database, the writer's durable
                // offset commit persists each append: appends need no fsync of their own.
                let store = if settings.kafka.brokers.is_empty() {
                    store.with_unsynced_appends()
                } else {
                    store
                };
                (Arc::new(store), Arc::new(LocalNotifier::new(1024)))
            }
        };

        // ArchiveStore: ScyllaDB when scylla.nodes is set.
        let archive: Arc<dyn ArchiveStore> = if !settings.scylla.nodes.is_empty() {
            Arc::new(
                danmaku_scylla::ScyllaArchiveStore::connect(&settings.scylla)
                    .await
                    .map_err(|e| ContextError::Adapter {
                        which: "scylla.nodes",
                        message: e.to_string(),
                    })?,
            )
        } else {
            Arc::new(EmbeddedArchiveStore::new(db))
        };

        // ReplayCache: in-process, in front of its own Redis when replay.redis_url is set.
        let cache: Arc<dyn ReplayCache> = if !settings.replay.redis_url.is_empty() {
            let r = &settings.replay;
            let remote = danmaku_redis::RedisReplayCache::connect(
                &r.redis_url,
                &r.redis_prefix,
                std::time::Duration::from_millis(r.redis_timeout_ms),
            )
            .await
            .map_err(|e| ContextError::Adapter {
                which: "replay.redis_url",
                message: e.to_string(),
            })?;
            Arc::new(danmaku_redis::TieredReplayCache::new(
                MemoryReplayCache::new(r.cache_bytes),
                remote,
            ))
        } else {
            Arc::new(MemoryReplayCache::new(settings.replay.cache_bytes))
        };

        // Presence: the live Redis when redis.url / redis.cluster is set.
        let presence: Arc<dyn danmaku_core::ports::Presence> =
            match danmaku_redis::RedisPresence::connect(&settings.redis).map_err(|e| {
                ContextError::Adapter {
                    which: "redis.url",
                    message: e.to_string(),
                }
            })? {
                Some(p) => Arc::new(p),
                None => Arc::new(danmaku_core::ports::MemoryPresence::default()),
            };

        let secret = load_secret(&settings.auth.secret.0, &dir).map_err(ContextError::Secret)?;
        let objects = object_store(&settings)?;
        Ok(Context {
            bus,
            slices,
            notifier,
            archive,
            presence,
            objects,
            cache,
            signer: TokenSigner::new(secret.as_bytes()),
            ids: Arc::new(IdGenerator::new(settings.server.node_id)),
            settings: Arc::new(settings),
        })
    }
}

/// The object store `archive.url` selects (a local directory under the data dir
/// by default), for the archive role and `danmaku archive compact`.
pub fn object_store(settings: &Settings) -> Result<Arc<dyn ObjectStore>, ContextError> {
    Ok(danmaku_object_store::open(
        &settings.archive,
        &settings.server.data_dir,
    )?)
}

/// The ModerationStore the settings select: Redis (the SliceStore's, `redis.cluster`
/// or `redis.url`, keys under `redis.namespace`) when set, else
/// `<data_dir>/moderation.redb`. The intake's; held outside [`Context`] since only
/// the ingest checks use it (live and replay reach it through the intake).
pub fn moderation_store(settings: &Settings) -> Result<Arc<dyn ModerationStore>, ContextError> {
    let which = if settings.redis.cluster.is_empty() {
        "redis.url"
    } else {
        "redis.cluster"
    };
    match danmaku_redis::RedisModerationStore::connect(&settings.redis).map_err(|e| {
        ContextError::Adapter {
            which,
            message: e.to_string(),
        }
    })? {
        Some(store) => Ok(Arc::new(store)),
        None => {
            let dir = &settings.server.data_dir;
            let store = danmaku_embedded::EmbeddedModerationStore::open(dir).map_err(|e| {
                ContextError::Embedded {
                    dir: dir.display().to_string(),
                    message: e.to_string(),
                }
            })?;
            Ok(Arc::new(store))
        }
    }
}
