//! Idempotency keys: a retry with the same key gets the id of the first send,
//! on any ingest node, across restarts, within `limits.idempotency_window_secs`.
//!
//! A key is scoped to (user, room or VOD, key): the same key in another room is
//! another comment, never the first room's id. Each key remembers a fingerprint
//! of the comment it stands for, so the same key with a different comment is
//! `409 idempotency_conflict` instead of the first id (which would tell the
//! client its new text was stored).
//!
//! The keys live in the ModerationStore (shared by every node): [`run`] claims
//! the key, publishes only if the claim is new, and records the id; a send with
//! the same key in flight elsewhere is waited for (it answers with the same id,
//! or publishes itself if that send failed).

use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{Claim, IdempotencyKey, ModerationStore};
use std::future::Future;
use std::time::{Duration, Instant};

/// Where a key is valid: a live room or a recording.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Live sends to this room.
    Room(String),
    /// Comments on this VOD.
    Vod(String),
}

impl Scope {
    fn encoded(&self) -> String {
        match self {
            Scope::Room(r) => format!("room:{r}"),
            Scope::Vod(v) => format!("vod:{v}"),
        }
    }
}

/// The parts of a comment its fingerprint covers: what it says, as validated
/// (so `"mode": "scroll"` and no mode are the same comment), before the word
/// filter.
#[derive(Clone, Copy, Debug)]
pub struct Body<'a> {
    pub text: &'a str,
    pub mode: i32,
    pub color: u32,
    pub kind: i32,
    pub stream_pos_ms: Option<i64>,
    pub offset_ms: Option<i64>,
}

/// A stable 64-bit digest of a comment: FNV-1a over a fixed encoding, the same
/// on every node and every build (nodes of different versions share keys).
pub fn fingerprint(body: &Body<'_>) -> u64 {
    let mut h = Fnv::default();
    h.write(&(body.text.len() as u64).to_be_bytes());
    h.write(body.text.as_bytes());
    h.write(&body.mode.to_be_bytes());
    h.write(&body.color.to_be_bytes());
    h.write(&body.kind.to_be_bytes());
    for v in [body.stream_pos_ms, body.offset_ms] {
        match v {
            Some(v) => {
                h.write(&[1]);
                h.write(&v.to_be_bytes());
            }
            None => h.write(&[0]),
        }
    }
    h.0
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// How long and how often to wait for a send with the same key in flight.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long an unfinished claim holds the key (a node that died mid-publish
    /// frees it after this).
    pub claim_ttl: Duration,
    /// How long a completed key is remembered.
    pub window: Duration,
    /// Longest wait for another send's outcome before `503 unavailable`.
    pub wait: Duration,
}

/// The id stored under (`user`, `scope`, `key`) if its fingerprint is
/// `fingerprint`, `idempotency_conflict` if it is another; else runs `publish`
/// and records its id. Concurrent sends with one key (on any node) publish once.
/// A failed publish gives the key up (a later retry publishes again).
pub async fn run<F>(
    store: &dyn ModerationStore,
    user: &str,
    scope: &Scope,
    key: &str,
    fingerprint: u64,
    timing: Timing,
    publish: F,
) -> Result<u64, ApiError>
where
    F: Future<Output = Result<u64, ApiError>>,
{
    let key = IdempotencyKey {
        user: user.to_string(),
        scope: scope.encoded(),
        key: key.to_string(),
    };
    let claim_ttl_ms = timing.claim_ttl.as_millis().max(1) as u64;
    let deadline = Instant::now() + timing.wait;
    let store_failed = |e| {
        tracing::warn!(error = %e, "idempotency key store failed");
        ApiError::unavailable()
    };
    loop {
        match store
            .claim_key(&key, fingerprint, claim_ttl_ms)
            .await
            .map_err(store_failed)?
        {
            Claim::New => break,
            Claim::Existing(id) => {
                metrics::counter!("danmaku_ingest_idempotent_replays_total").increment(1);
                return Ok(id);
            }
            Claim::Conflict => {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    "this idempotency_key was used for another comment; use a new key for a new comment",
                ))
            }
            Claim::InProgress => {
                if Instant::now() >= deadline {
                    return Err(ApiError::unavailable());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    match publish.await {
        Ok(id) => {
            let window_ms = timing.window.as_millis().max(1) as u64;
            if let Err(e) = store.complete_key(&key, fingerprint, id, window_ms).await {
                // The comment is stored; answering an error would make the client
                // retry and store it twice. A retry after the claim's TTL may.
                tracing::warn!(error = %e, "cannot record an idempotency key's id");
                metrics::counter!("danmaku_ingest_idempotency_unrecorded_total").increment(1);
            }
            Ok(id)
        }
        Err(e) => {
            if let Err(release) = store.release_key(&key, fingerprint).await {
                tracing::warn!(error = %release, "cannot release an idempotency key");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::ports::MemoryModerationStore;
    use std::sync::atomic::{AtomicU64, Ordering};

    const TIMING: Timing = Timing {
        claim_ttl: Duration::from_secs(10),
        window: Duration::from_secs(60),
        wait: Duration::from_secs(5),
    };

    #[tokio::test]
    async fn scoped_and_conflicting() {
        let store = MemoryModerationStore::new();
        let next = AtomicU64::new(1);
        let publish = || async { Ok(next.fetch_add(1, Ordering::SeqCst)) };
        let room = |r: &str| Scope::Room(r.into());
        let run = |user: &'static str, scope: Scope, fp: u64| {
            let store = &store;
            let publish = publish();
            async move { run(store, user, &scope, "k", fp, TIMING, publish).await }
        };
        assert_eq!(run("u", room("r1"), 7).await, Ok(1));
        // A retry: the same id, nothing published.
        assert_eq!(run("u", room("r1"), 7).await, Ok(1));
        // Another room, another VOD, another user: new comments.
        assert_eq!(run("u", room("r2"), 7).await, Ok(2));
        assert_eq!(run("u", Scope::Vod("r1".into()), 7).await, Ok(3));
        assert_eq!(run("v", room("r1"), 7).await, Ok(4));
        // Another body under the same key.
        let e = run("u", room("r1"), 8).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::IdempotencyConflict);
        assert_eq!(next.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn a_failed_publish_is_not_kept() {
        let store = MemoryModerationStore::new();
        let scope = Scope::Room("r".into());
        let failed = run(&store, "u", &scope, "k", 1, TIMING, async {
            Err(ApiError::unavailable())
        })
        .await;
        assert_eq!(failed.unwrap_err().code, ErrorCode::Unavailable);
        let ok = run(&store, "u", &scope, "k", 2, TIMING, async { Ok(9) }).await;
        assert_eq!(ok, Ok(9));
    }

    /// Concurrent sends with one key publish once; all get the one id.
    #[tokio::test]
    async fn concurrent_retries_publish_once() {
        let store = MemoryModerationStore::new();
        let published = AtomicU64::new(0);
        let scope = Scope::Room("r".into());
        let sends = (0..8).map(|_| {
            run(&store, "u", &scope, "k", 1, TIMING, async {
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(77)
            })
        });
        let ids = futures::future::join_all(sends).await;
        assert!(ids.iter().all(|r| *r == Ok(77)), "{ids:?}");
        assert_eq!(published.load(Ordering::SeqCst), 1);
    }

    const EXPECTED: u64 = 0x12c8_e538_93e4_6186;

    #[test]
    fn fingerprints_tell_bodies_apart_and_are_stable() {
        let body = Body {
            text: "a",
            mode: 0,
            color: 0xFFFFFF,
            kind: 0,
            stream_pos_ms: None,
            offset_ms: Some(5),
        };
        assert_eq!(fingerprint(&body), fingerprint(&body.clone()));
        // Fixed across builds and nodes: a changed value breaks rolling deploys.
        assert_eq!(fingerprint(&body), EXPECTED);
        assert_ne!(fingerprint(&body), fingerprint(&Body { text: "b", ..body }));
        assert_ne!(fingerprint(&body), fingerprint(&Body { color: 1, ..body }));
        assert_ne!(
            fingerprint(&body),
            fingerprint(&Body {
                offset_ms: None,
                stream_pos_ms: Some(5),
                ..body
            })
        );
    }
}
