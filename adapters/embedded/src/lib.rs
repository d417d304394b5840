//! The embedded adapters: Bus, SliceStore and ArchiveStore in one redb database
//! under the data dir, and the ModerationStore in a file of its own
//! ([`EmbeddedModerationStore`], `moderation.redb`). redb is blocking, so every call runs on the blocking pool
//! (the Bus batches concurrent publishes into one transaction on a thread of its
//! own: group commit).
//!
//! Durability: every write is one transaction, and every transaction is fsynced
//! (`redb::Durability::Immediate`) before the call returns, so whatever a call
//! acknowledged survives kill -9, with one exception: a SliceStore built with
//! [`EmbeddedSliceStore::with_unsynced_appends`] (what [`danmaku_core::context::Context`]
//! builds when the Bus is the embedded one) commits `append` with
//! `Durability::None`. Such a commit is visible to readers at once but reaches the
//! disk only with the next durable commit of this database (redb: "will not be
//! persisted to disk unless followed by a commit with a higher durability level"),
//! and redb commits form one history, so that durable commit persists every earlier
//! one. Why no acknowledged comment is lost: the live writer commits the Bus
//! offsets of a batch in a durable transaction of this database right after the
//! batch's appends succeeded (`live/src/writer.rs`). A crash before that commit
//! (or, since that commit is not fsynced either, before the next durable commit)
//! loses the appends together with the offsets and the rooms' high-water marks;
//! the Bus then redelivers the records, which are stored again under the same seqs
//! (seqs come from Bus offsets), so the SliceStore ends up as if nothing happened.
//! Anything else that commits durably meanwhile (a publish, a claim, an archive
//! upsert) only persists the appends earlier. This saves one of the two fsyncs per
//! batch on the live path (the Bus's group commit on publish, then the append).
//! With a Bus outside this database (Kafka), appends stay fsynced: its offsets
//! would be committed elsewhere while the items were not yet on disk.
//!
//! The embedded Bus's consumer offsets also commit with `Durability::None`: an
//! offset is not acknowledged data, and a commit lost to a crash rolls back
//! together with everything the writer did after the last durable commit (the
//! appends, the high-water marks), so the Bus redelivers those records and they
//! are stored again under the same seqs. Every publish is a durable group commit,
//! so offsets reach the disk within one publish, and the consumer commits durably
//! itself at least once a second (redb frees pages only in durable commits, so
//! a backlog drained while nobody publishes does not grow the file). Together: one fsync per group of
//! publishes on the live path, none per writer batch.

// redb's error type is large; these functions run on the blocking pool, once per
// transaction, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod archive;
mod bus;
mod moderation;
mod slices;

pub use archive::EmbeddedArchiveStore;
pub use bus::EmbeddedBus;
pub use moderation::EmbeddedModerationStore;
pub use slices::EmbeddedSliceStore;

use std::path::Path;
use std::sync::Arc;

/// The one database file shared by the embedded adapters.
#[derive(Clone)]
pub struct EmbeddedDb {
    pub(crate) db: Arc<redb::Database>,
}

impl std::fmt::Debug for EmbeddedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedDb")
    }
}

impl EmbeddedDb {
    /// Opens (or creates) `<dir>/danmaku.redb` and its tables.
    pub fn open(dir: &Path) -> Result<Self, redb::Error> {
        Self::open_with_cache(dir, 1 << 30)
    }

    /// [`EmbeddedDb::open`] with a page cache of at most `cache_bytes`
    /// (`server.embedded_cache_mb`).
    pub fn open_with_cache(dir: &Path, cache_bytes: usize) -> Result<Self, redb::Error> {
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let db = redb::Database::builder()
            .set_cache_size(cache_bytes.max(1 << 20))
            .create(dir.join("danmaku.redb"))?;
        let txn = db.begin_write()?;
        bus::create_tables(&txn)?;
        slices::create_tables(&txn)?;
        archive::create_tables(&txn)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs `f` on the blocking pool.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, redb::Error>
    where
        T: Send + 'static,
        F: FnOnce(&redb::Database) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r,
            Err(e) => Err(redb::Error::Io(std::io::Error::other(format!(
                "blocking task failed: {e}"
            )))),
        }
    }
}

/// Fixtures for other crates' tests (feature `testkit`).
#[cfg(any(test, feature = "testkit"))]
pub mod testkit {
    use super::*;
    use danmaku_core::auth::{load_secret, TokenSigner};
    use danmaku_core::config::Settings;
    use danmaku_core::context::Context;
    use danmaku_core::id::IdGenerator;
    use danmaku_core::memory::{LocalNotifier, MemoryReplayCache};

    /// A [`Context`] of embedded adapters only, under `settings.server.data_dir`, as
    /// `danmaku::engines` builds it when no distributed key is set. For role tests,
    /// which cannot depend on the root crate.
    pub fn context(settings: Settings) -> Context {
        let dir = settings.server.data_dir.clone();
        let db = EmbeddedDb::open(&dir).expect("embedded database");
        let bus = EmbeddedBus::open_with(
            db.clone(),
            settings.bus.partitions,
            std::time::Duration::from_millis(settings.bus.group_commit_ms),
        )
        .expect("embedded bus");
        let secret = load_secret(&settings.auth.secret.0, &dir).expect("secret");
        Context {
            bus: Arc::new(bus),
            slices: Arc::new(EmbeddedSliceStore::new(db.clone()).with_unsynced_appends()),
            notifier: Arc::new(LocalNotifier::new(1024)),
            archive: Arc::new(EmbeddedArchiveStore::new(db)),
            presence: Arc::new(danmaku_core::ports::MemoryPresence::default()),
            objects: danmaku_object_store::open(&settings.archive, &dir).expect("object store"),
            cache: Arc::new(MemoryReplayCache::new(settings.replay.cache_bytes)),
            signer: TokenSigner::new(secret.as_bytes()),
            ids: Arc::new(IdGenerator::new(settings.server.node_id)),
            settings: Arc::new(settings),
        }
    }
}
