//! The embedded adapters: Bus, SliceStore and ArchiveStore in one redb database
//! under the data dir. Every write is one fsynced transaction, so whatever a call
//! acknowledged survives kill -9. redb is blocking, so every call runs on the
//! blocking pool (the Bus batches concurrent publishes into one transaction on a
//! thread of its own: group commit).

// redb's error type is large; these functions run on the blocking pool, once per
// transaction, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

mod archive;
mod bus;
mod slices;

pub use archive::EmbeddedArchiveStore;
pub use bus::EmbeddedBus;
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
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let db = redb::Database::create(dir.join("danmaku.redb"))?;
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
