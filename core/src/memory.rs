//! The in-process ReplayCache: bounded in bytes (moka, TinyLFU), with a TTL per entry.

use crate::ports::{CachedBody, ReplayCache};
use async_trait::async_trait;
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Entry {
    value: CachedBody,
    expires: Instant,
}

/// In-process replay cache holding at most `max_bytes` of bodies.
pub struct MemoryReplayCache {
    cache: moka::future::Cache<String, Entry>,
}

impl MemoryReplayCache {
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, e: &Entry| e.value.weight().saturating_add(k.len() as u32))
            .time_to_live(Duration::from_secs(24 * 3600))
            .build();
        Self { cache }
    }

    /// Bytes currently held (approximate; moka settles its counters lazily).
    pub async fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.weighted_size()
    }
}

#[async_trait]
impl ReplayCache for MemoryReplayCache {
    async fn get(&self, key: &str) -> Option<CachedBody> {
        let e = self.cache.get(key).await?;
        if e.expires <= Instant::now() {
            self.cache.invalidate(key).await;
            return None;
        }
        Some(e.value)
    }

    async fn put(&self, key: &str, value: CachedBody, ttl: Duration) {
        let expires = Instant::now() + ttl;
        self.cache
            .insert(key.to_string(), Entry { value, expires })
            .await;
    }

    async fn invalidate(&self, key: &str) {
        self.cache.invalidate(key).await;
    }
}

/// The in-process Notifier of the embedded default: every notice goes to this
/// process's live role (one process holds the writer and every hub).
pub struct LocalNotifier {
    tx: tokio::sync::mpsc::Sender<crate::ports::NotifierEvent>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::ports::NotifierEvent>>>,
}

impl LocalNotifier {
    /// A notifier whose queue holds `capacity` notices; `publish` waits when it is
    /// full (back-pressure on the writer, never unbounded memory).
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

#[async_trait]
impl crate::ports::Notifier for LocalNotifier {
    async fn publish(
        &self,
        room: &str,
        items: &[crate::ports::SliceItem],
    ) -> Result<(), crate::ports::NotifyError> {
        let notice = crate::ports::Notice {
            room: room.to_string(),
            items: items.to_vec(),
        };
        // Nobody listening (no live role in this process) is not an error.
        let _ = self
            .tx
            .send(crate::ports::NotifierEvent::Notice(notice))
            .await;
        Ok(())
    }

    async fn subscribe(&self, _room: &str) -> Result<(), crate::ports::NotifyError> {
        Ok(())
    }

    async fn unsubscribe(&self, _room: &str) -> Result<(), crate::ports::NotifyError> {
        Ok(())
    }

    fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<crate::ports::NotifierEvent>> {
        self.rx.lock().expect("notifier lock").take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        crate::conformance::replay_cache_suite(&MemoryReplayCache::new(1 << 20)).await;
    }

    #[tokio::test]
    async fn stays_within_its_byte_bound() {
        let c = MemoryReplayCache::new(100_000);
        for i in 0..100 {
            let body = bytes::Bytes::from(vec![b'x'; 10_000]);
            c.put(
                &format!("k{i}"),
                CachedBody {
                    body: body.clone(),
                    gzip: body,
                    etag: "e".into(),
                },
                Duration::from_secs(60),
            )
            .await;
        }
        assert!(c.weighted_size().await <= 100_000);
    }
}
