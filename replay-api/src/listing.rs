//! The sessions behind `GET /v1/vods` (the home page's listing), read from the
//! ArchiveStore at most once per `replay.list_ttl_ms` per node however many
//! pages ask: a busy home page costs the store one read per interval.
//!
//! - One snapshot serves every `limit`: it holds the most a list may show
//!   ([`MAX_LIST_LIMIT`] live and as many recently ended), and each answer
//!   takes its first `limit`, so the cache is one entry of bounded size
//!   whatever the query strings.
//! - Single flight: when the snapshot is stale, one request reads the store
//!   while the others wait for its result (they do not read too).
//! - A session started, ended or changed through this node drops the snapshot
//!   ([`Listing::invalidate`]), so this node's listing shows it at once; other
//!   nodes show it within the TTL.
//! - A failed read is not cached: the next request tries again.

use danmaku_core::ports::{ArchiveError, ArchiveStore};
use danmaku_core::vod::Session;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Most sessions per list of `GET /v1/vods`.
pub(crate) const MAX_LIST_LIMIT: usize = 100;

/// The live and recently ended sessions of every room, as read once.
#[derive(Debug)]
pub struct Snapshot {
    /// Sessions not ended, newest first, at most [`MAX_LIST_LIMIT`].
    pub live: Vec<Session>,
    /// Ended sessions, newest first by start, at most [`MAX_LIST_LIMIT`].
    pub recent: Vec<Session>,
    taken: Instant,
    generation: u64,
}

/// The cached snapshot and the lock its refresh holds.
pub struct Listing {
    /// `replay.list_ttl_ms`; zero = read the store on every request.
    ttl: Duration,
    /// Bumped by [`Listing::invalidate`]; a snapshot read under an older one is stale.
    generation: AtomicU64,
    last: RwLock<Option<Arc<Snapshot>>>,
    /// Held by the one request refreshing the snapshot.
    refresh: tokio::sync::Mutex<()>,
    /// Store reads made for the listing, in all (tests assert on it).
    loads: AtomicU64,
}

impl Listing {
    /// A listing whose snapshot lives `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            last: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            loads: AtomicU64::new(0),
        }
    }

    /// Store reads made so far (each is one `open_sessions` and one
    /// `recent_sessions` call).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Forgets the snapshot: the next request reads the store (also one whose
    /// read is in flight now, which may have missed the change).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let last = self.last.read().unwrap_or_else(|e| e.into_inner());
        let s = last.as_ref()?;
        (s.generation == self.generation.load(Ordering::SeqCst) && s.taken.elapsed() < self.ttl)
            .then(|| s.clone())
    }

    /// The current snapshot: the cached one while fresh, else one read now
    /// (by this request, or by the one already reading).
    pub async fn get(&self, store: &dyn ArchiveStore) -> Result<Arc<Snapshot>, ArchiveError> {
        if self.ttl.is_zero() {
            return Ok(Arc::new(self.load(store).await?));
        }
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let _flight = self.refresh.lock().await;
        // Whoever held the lock before may have just refreshed it.
        if let Some(s) = self.fresh() {
            return Ok(s);
        }
        let s = Arc::new(self.load(store).await?);
        *self.last.write().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
        Ok(s)
    }

    async fn load(&self, store: &dyn ArchiveStore) -> Result<Snapshot, ArchiveError> {
        let generation = self.generation.load(Ordering::SeqCst);
        let taken = Instant::now();
        self.loads.fetch_add(1, Ordering::Relaxed);
        let live = store.open_sessions(MAX_LIST_LIMIT).await?;
        // Every live session is also among the newest: ask for that many
        // more, so `recent` gets MAX_LIST_LIMIT ended ones.
        let mut recent = store.recent_sessions(MAX_LIST_LIMIT + live.len()).await?;
        recent.retain(|s| s.ended_at.is_some());
        recent.truncate(MAX_LIST_LIMIT);
        Ok(Snapshot {
            live,
            recent,
            taken,
            generation,
        })
    }
}
