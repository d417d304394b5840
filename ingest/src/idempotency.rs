//! Idempotency keys: a retry with the same key gets the id of the first send.
//!
//! A key is scoped to (user, room or VOD, key): the same key in another room is
//! another comment, never the first room's id. Each entry remembers a
//! fingerprint of the comment it stands for, so the same key with a different
//! comment is `409 idempotency_conflict` instead of the first id (which would
//! tell the client its new text was stored).
//!
//! Held in memory per process for `limits.idempotency_window_secs`; everything
//! the rest of the intake sees is [`IdempotencyStore::run`], so a shared store
//! can replace this one without touching the callers.

use danmaku_core::error::{ApiError, ErrorCode};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// Where a key is valid: a live room or a recording.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Live sends to this room.
    Room(String),
    /// Comments on this VOD.
    Vod(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    user: String,
    scope: Scope,
    key: String,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    fingerprint: u64,
    id: u64,
}

/// A stable 64-bit digest of what a comment says; equal comments give equal
/// fingerprints within a build (SipHash with fixed keys: `DefaultHasher::new`).
pub fn fingerprint(parts: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// The keys of the last window, with the id and fingerprint of each.
pub struct IdempotencyStore {
    cache: moka::future::Cache<Key, Entry>,
}

impl IdempotencyStore {
    /// A store keeping each key for `window`, at most `capacity` keys (the
    /// oldest go first past it).
    pub fn new(window: Duration, capacity: u64) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(window.max(Duration::from_secs(1)))
                .build(),
        }
    }

    /// The id stored under (`user`, `scope`, `key`) if its fingerprint is
    /// `fingerprint`, `idempotency_conflict` if it is another; else runs
    /// `publish` and keeps its id. Concurrent calls with one key run `publish`
    /// once and all see its outcome (an error is not kept: a later retry
    /// publishes again).
    pub async fn run<F>(
        &self,
        user: &str,
        scope: Scope,
        key: &str,
        fingerprint: u64,
        publish: F,
    ) -> Result<u64, ApiError>
    where
        F: Future<Output = Result<u64, ApiError>>,
    {
        let key = Key {
            user: user.to_string(),
            scope,
            key: key.to_string(),
        };
        let entry = self
            .cache
            .try_get_with(key, async move {
                publish.await.map(|id| Entry { fingerprint, id })
            })
            .await
            .map_err(|e: Arc<ApiError>| (*e).clone())?;
        if entry.fingerprint != fingerprint {
            return Err(ApiError::new(
                ErrorCode::IdempotencyConflict,
                "this idempotency_key was used for another comment; use a new key for a new comment",
            ));
        }
        Ok(entry.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[tokio::test]
    async fn scoped_and_conflicting() {
        let store = IdempotencyStore::new(Duration::from_secs(60), 100);
        let next = AtomicU64::new(1);
        let publish = || async { Ok(next.fetch_add(1, Ordering::SeqCst)) };
        let room = |r: &str| Scope::Room(r.into());
        let a = store.run("u", room("r1"), "k", 7, publish()).await;
        assert_eq!(a, Ok(1));
        // A retry: the same id, nothing published.
        assert_eq!(store.run("u", room("r1"), "k", 7, publish()).await, Ok(1));
        // Another room, another VOD, another user: new comments.
        assert_eq!(store.run("u", room("r2"), "k", 7, publish()).await, Ok(2));
        assert_eq!(
            store
                .run("u", Scope::Vod("r1".into()), "k", 7, publish())
                .await,
            Ok(3)
        );
        assert_eq!(store.run("v", room("r1"), "k", 7, publish()).await, Ok(4));
        // Another body under the same key.
        let e = store
            .run("u", room("r1"), "k", 8, publish())
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::IdempotencyConflict);
        assert_eq!(next.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_failed_publish_is_not_kept() {
        let store = IdempotencyStore::new(Duration::from_secs(60), 100);
        let failed = store
            .run("u", Scope::Room("r".into()), "k", 1, async {
                Err(ApiError::unavailable())
            })
            .await;
        assert_eq!(failed.unwrap_err().code, ErrorCode::Unavailable);
        let ok = store
            .run("u", Scope::Room("r".into()), "k", 2, async { Ok(9) })
            .await;
        assert_eq!(ok, Ok(9));
    }

    #[test]
    fn fingerprints_tell_bodies_apart() {
        assert_eq!(fingerprint(("a", 1u32)), fingerprint(("a", 1u32)));
        assert_ne!(fingerprint(("a", 1u32)), fingerprint(("b", 1u32)));
        assert_ne!(fingerprint(("a", 1u32)), fingerprint(("a", 2u32)));
    }
}
