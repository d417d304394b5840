use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// An encoded response body, kept with its gzip form so a hit costs neither
/// encoding nor compression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedBody {
    pub body: Bytes,
    pub gzip: Bytes,
    pub etag: String,
}

impl CachedBody {
    /// Bytes this entry weighs in a bounded cache.
    pub fn weight(&self) -> u32 {
        (self.body.len() + self.gzip.len() + self.etag.len() + 64).min(u32::MAX as usize) as u32
    }
}

/// The replay cache (in-process, optionally in front of its own Redis).
///
/// Guarantees: a `get` returns what the last `put` of the key stored, unless it
/// expired, was evicted to respect the byte bound, or was invalidated. Losing an
/// entry is always safe: callers recompute it from the ArchiveStore.
#[async_trait]
pub trait ReplayCache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Option<CachedBody>;
    /// Stores `value` for at most `ttl`.
    async fn put(&self, key: &str, value: CachedBody, ttl: Duration);
    async fn invalidate(&self, key: &str);
}
