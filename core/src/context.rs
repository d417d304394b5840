//! Builds the adapters the settings select and hands them to the roles as one
//! shared [`Context`]. The binary calls [`Context::build`]; tests may assemble a
//! `Context` from their own adapters.

use crate::auth::TokenSigner;
use crate::config::Settings;
use crate::embedded::{EmbeddedArchiveStore, EmbeddedBus, EmbeddedDb, EmbeddedSliceStore};
use crate::id::IdGenerator;
use crate::memory::{LocalNotifier, MemoryReplayCache};
use crate::ports::{
    object_store_from_settings, ArchiveStore, Bus, Notifier, ReplayCache, SliceStore,
};
use object_store::ObjectStore;
use std::path::Path;
use std::sync::Arc;

/// Everything the roles share.
#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    pub bus: Arc<dyn Bus>,
    pub slices: Arc<dyn SliceStore>,
    /// Tells live nodes about new items of their rooms.
    pub notifier: Arc<dyn Notifier>,
    pub archive: Arc<dyn ArchiveStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub cache: Arc<dyn ReplayCache>,
    pub signer: TokenSigner,
    pub ids: Arc<IdGenerator>,
}

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
    Objects(#[from] crate::ports::ObjectStoreError),
}

impl Context {
    /// Opens the stores the settings select: each distributed adapter when its key
    /// is set (API.md, "Configuration keys that select the engines"), else the
    /// embedded default.
    pub async fn build(settings: Settings) -> Result<Self, ContextError> {
        let dir = settings.server.data_dir.clone();
        let embedded_err = |e: redb::Error| ContextError::Embedded {
            dir: dir.display().to_string(),
            message: e.to_string(),
        };
        let db = EmbeddedDb::open(&dir).map_err(embedded_err)?;

        // Bus: Kafka when kafka.brokers is set.
        let bus: Arc<dyn Bus> = if !settings.kafka.brokers.is_empty() {
            Arc::new(
                crate::kafka::KafkaBus::new(&settings.kafka)
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
            crate::redis::connect(&settings.redis)
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
                crate::scylla::ScyllaArchiveStore::connect(&settings.scylla)
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
            let remote = crate::redis_cache::RedisReplayCache::connect(
                &r.redis_url,
                &r.redis_prefix,
                std::time::Duration::from_millis(r.redis_timeout_ms),
            )
            .await
            .map_err(|e| ContextError::Adapter {
                which: "replay.redis_url",
                message: e.to_string(),
            })?;
            Arc::new(crate::redis_cache::TieredReplayCache::new(
                MemoryReplayCache::new(r.cache_bytes),
                remote,
            ))
        } else {
            Arc::new(MemoryReplayCache::new(settings.replay.cache_bytes))
        };

        let secret = load_secret(&settings.auth.secret.0, &dir)?;
        let objects = object_store_from_settings(&settings.archive, &dir)?;
        Ok(Self {
            bus,
            slices,
            notifier,
            archive,
            objects,
            cache,
            signer: TokenSigner::new(secret.as_bytes()),
            ids: Arc::new(IdGenerator::new(settings.server.node_id)),
            settings: Arc::new(settings),
        })
    }
}

/// The configured secret, or the one generated once and kept in `<data dir>/secret`.
pub fn load_secret(configured: &str, data_dir: &Path) -> Result<String, ContextError> {
    if !configured.is_empty() {
        return Ok(configured.to_string());
    }
    let path = data_dir.join("secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir).map_err(|e| ContextError::Secret(e.to_string()))?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    let tmp = data_dir.join("secret.tmp");
    std::fs::write(&tmp, &secret).map_err(|e| ContextError::Secret(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600));
    }
    std::fs::rename(&tmp, &path).map_err(|e| ContextError::Secret(e.to_string()))?;
    Ok(secret)
}
