//! The in-process adapters: [`MemoryReplayCache`], bounded in bytes (moka,
//! TinyLFU) with a TTL per entry, and [`LocalNotifier`], the Notifier of a process
//! that holds the writer and the hubs.

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

/// The in-process Notifier of the embedded default: one process holds the writer
/// and every hub, so a notice goes straight to this process's live role, for the
/// rooms it subscribed. Like every Notifier, each new subscription is followed by
/// a `Resync` of the room (the hub catches up from the SliceStore what was
/// published before).
pub struct LocalNotifier {
    tx: tokio::sync::mpsc::Sender<crate::ports::NotifierEvent>,
    rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::ports::NotifierEvent>>>,
    /// The subscribed rooms.
    rooms: std::sync::RwLock<std::collections::HashSet<String>>,
}

impl LocalNotifier {
    /// A notifier whose queue holds `capacity` events; `publish` waits when it is
    /// full (back-pressure on the writer, never unbounded memory).
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            rooms: std::sync::RwLock::new(std::collections::HashSet::new()),
        }
    }
}

#[async_trait]
impl crate::ports::Notifier for LocalNotifier {
    async fn publish(
        &self,
        room: &str,
        prev: Option<u64>,
        items: &[crate::ports::SliceItem],
    ) -> Result<(), crate::ports::NotifyError> {
        if !self.rooms.read().expect("rooms lock").contains(room) {
            return Ok(());
        }
        let notice = crate::ports::Notice {
            room: room.to_string(),
            prev,
            items: items.to_vec(),
        };
        // The live role gone (its receiver dropped) is not an error.
        let _ = self
            .tx
            .send(crate::ports::NotifierEvent::Notice(notice))
            .await;
        Ok(())
    }

    async fn subscribe(&self, room: &str) -> Result<(), crate::ports::NotifyError> {
        let newly = self
            .rooms
            .write()
            .expect("rooms lock")
            .insert(room.to_string());
        if newly {
            let _ = self
                .tx
                .send(crate::ports::NotifierEvent::Resync(room.to_string()))
                .await;
        }
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), crate::ports::NotifyError> {
        self.rooms.write().expect("rooms lock").remove(room);
        Ok(())
    }

    fn take_receiver(&self) -> Option<tokio::sync::mpsc::Receiver<crate::ports::NotifierEvent>> {
        self.rx.lock().expect("notifier lock").take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::replay_cache_suite!(replay_cache_in_memory, async {
        ((), MemoryReplayCache::new(1 << 20))
    });

    crate::notifier_suite!(local_notifier, async {
        let n = std::sync::Arc::new(LocalNotifier::new(64));
        ((), (n.clone(), n))
    });

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
