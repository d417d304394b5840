//! A send's admission and its idempotency key: a retry with the same key gets
//! the id of the first send, on any ingest node, across restarts, within
//! `limits.idempotency_window_secs`.
//!
//! A key is scoped to (user, room or VOD, key): the same key in another room is
//! another comment, never the first room's id. Each key remembers a fingerprint
//! of the comment it stands for, so the same key with a different comment is
//! `409 idempotency_conflict` instead of the first id (which would tell the
//! client its new text was stored).
//!
//! The keys and the room's rate limits live in the ModerationStore (shared by
//! every node). [`run`] admits the send in one store call
//! ([`ModerationStore::admit`]: a held key answers without counting a limit,
//! else the limits are counted and the key claimed together, or nothing),
//! publishes only if admitted, and records the id; a send with the same key in
//! flight elsewhere is waited for (it answers with the same id, or publishes
//! itself if that send failed).

use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{
    Admission, Admit, Claim, IdempotencyKey, KeyClaim, ModerationStore, Rate,
};
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

/// A send's idempotency key.
#[derive(Clone, Copy, Debug)]
pub struct Keyed<'a> {
    /// The sender.
    pub user: &'a str,
    /// Where the key holds.
    pub scope: &'a Scope,
    /// The client's key.
    pub key: &'a str,
    /// The comment's [`fingerprint`].
    pub fingerprint: u64,
    /// Claim TTL, window, wait.
    pub timing: Timing,
}

/// What a send is admitted against.
#[derive(Clone, Copy, Debug)]
pub struct Intake<'a> {
    /// The room it goes to (a VOD comment: the VOD's room).
    pub room: &'a str,
    /// The room's limits, in order of precedence (`refused` of [`run`] gets the
    /// refusing one's position).
    pub limits: &'a [(String, Rate)],
    /// The idempotency key, if the send has one.
    pub keyed: Option<Keyed<'a>>,
}

/// Admits a send and publishes it. One store call decides the room's limits
/// and the key ([`ModerationStore::admit`]); `also` (a check the store cannot
/// make in that call: a guest address's limit) runs beside it, once. A key
/// stored with the same fingerprint answers its id, with another
/// `idempotency_conflict`, without publishing or counting; a send with the key
/// in flight (on any node) is waited for. Otherwise: a refusing limit is
/// `refused(position, retry_after_ms)`, a failed `also` its error (the claim
/// given back); else `publish` runs once and its id is recorded under the key.
/// A failed publish gives the key up (a later retry publishes again).
pub async fn run<R, A, F>(
    store: &dyn ModerationStore,
    intake: Intake<'_>,
    refused: R,
    also: A,
    publish: F,
) -> Result<u64, ApiError>
where
    R: Fn(usize, u64) -> ApiError,
    A: Future<Output = Result<(), ApiError>>,
    F: Future<Output = Result<u64, ApiError>>,
{
    let key = intake.keyed.map(|k| IdempotencyKey {
        user: k.user.to_string(),
        scope: k.scope.encoded(),
        key: k.key.to_string(),
    });
    let claim = key.as_ref().zip(intake.keyed).map(|(key, k)| KeyClaim {
        key,
        fingerprint: k.fingerprint,
        ttl_ms: k.timing.claim_ttl.as_millis().max(1) as u64,
    });
    let admission = Admission {
        room: intake.room,
        limits: intake.limits,
        claim,
    };
    let deadline = Instant::now() + intake.keyed.map_or(Duration::ZERO, |k| k.timing.wait);
    let store_failed = |e| {
        tracing::warn!(error = %e, "moderation store failed");
        ApiError::unavailable()
    };
    // Nothing to decide (a privileged send without a key): no store call, so
    // admins still send while the store is down.
    let first = async {
        if admission.limits.is_empty() && admission.claim.is_none() {
            Ok(Admit::Admitted)
        } else {
            store.admit(&admission).await
        }
    };
    let (first, also) = tokio::join!(first, also);
    let mut admitted = first.map_err(store_failed)?;
    loop {
        match admitted {
            Admit::Admitted => break,
            Admit::Limited {
                index,
                retry_after_ms,
            } => return Err(refused(index, retry_after_ms)),
            Admit::Held(Claim::Existing(id)) => {
                metrics::counter!("danmaku_ingest_idempotent_replays_total").increment(1);
                return Ok(id);
            }
            Admit::Held(Claim::Conflict) => {
                return Err(ApiError::new(
                    ErrorCode::IdempotencyConflict,
                    "this idempotency_key was used for another comment; use a new key for a new comment",
                ))
            }
            Admit::Held(Claim::InProgress | Claim::New) => {
                if Instant::now() >= deadline {
                    return Err(ApiError::unavailable());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        admitted = store.admit(&admission).await.map_err(store_failed)?;
    }
    let give_back = || async {
        if let Some(c) = &claim {
            if let Err(e) = store.release_key(c.key, c.fingerprint).await {
                tracing::warn!(error = %e, "cannot release an idempotency key");
            }
        }
    };
    if let Err(e) = also {
        give_back().await;
        return Err(e);
    }
    match publish.await {
        Ok(id) => {
            if let (Some(c), Some(k)) = (&claim, intake.keyed) {
                let window_ms = k.timing.window.as_millis().max(1) as u64;
                if let Err(e) = store
                    .complete_key(c.key, c.fingerprint, id, window_ms)
                    .await
                {
                    // The comment is stored; answering an error would make the
                    // client retry and store it twice. A retry after the claim's
                    // TTL may.
                    tracing::warn!(error = %e, "cannot record an idempotency key's id");
                    metrics::counter!("danmaku_ingest_idempotency_unrecorded_total").increment(1);
                }
            }
            Ok(id)
        }
        Err(e) => {
            give_back().await;
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

    /// A keyed send of `user` to `scope` (room "r", no limits).
    async fn keyed<F>(
        store: &dyn ModerationStore,
        user: &str,
        scope: &Scope,
        fingerprint: u64,
        publish: F,
    ) -> Result<u64, ApiError>
    where
        F: Future<Output = Result<u64, ApiError>>,
    {
        let intake = Intake {
            room: "r",
            limits: &[],
            keyed: Some(Keyed {
                user,
                scope,
                key: "k",
                fingerprint,
                timing: TIMING,
            }),
        };
        let refused = |_: usize, _: u64| -> ApiError { unreachable!("no limits") };
        run(store, intake, refused, async { Ok(()) }, publish).await
    }

    #[tokio::test]
    async fn scoped_and_conflicting() {
        let store = MemoryModerationStore::new();
        let next = AtomicU64::new(1);
        let publish = || async { Ok(next.fetch_add(1, Ordering::SeqCst)) };
        let room = |r: &str| Scope::Room(r.into());
        let run = |user: &'static str, scope: Scope, fp: u64| {
            let store = &store;
            let publish = publish();
            async move { keyed(store, user, &scope, fp, publish).await }
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
        let failed = keyed(&store, "u", &scope, 1, async {
            Err(ApiError::unavailable())
        })
        .await;
        assert_eq!(failed.unwrap_err().code, ErrorCode::Unavailable);
        let ok = keyed(&store, "u", &scope, 2, async { Ok(9) }).await;
        assert_eq!(ok, Ok(9));
    }

    /// Concurrent sends with one key publish once; all get the one id.
    #[tokio::test]
    async fn concurrent_retries_publish_once() {
        let store = MemoryModerationStore::new();
        let published = AtomicU64::new(0);
        let scope = Scope::Room("r".into());
        let sends = (0..8).map(|_| {
            keyed(&store, "u", &scope, 1, async {
                published.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(77)
            })
        });
        let ids = futures::future::join_all(sends).await;
        assert!(ids.iter().all(|r| *r == Ok(77)), "{ids:?}");
        assert_eq!(published.load(Ordering::SeqCst), 1);
    }

    /// A refusing limit publishes nothing and keeps no claim; a replay counts no
    /// limit; a failing `also` gives the claim back.
    #[tokio::test]
    async fn limits_and_checks_beside_the_key() {
        let store = MemoryModerationStore::new();
        let scope = Scope::Room("r".into());
        let limits = [("u".to_string(), Rate::once_per(60))];
        let send = |key: &'static str, also: Result<(), ApiError>, id: u64| {
            let (store, scope, limits) = (&store, &scope, &limits);
            async move {
                let intake = Intake {
                    room: "r",
                    limits,
                    keyed: Some(Keyed {
                        user: "u",
                        scope,
                        key,
                        fingerprint: 1,
                        timing: TIMING,
                    }),
                };
                let refused = |index: usize, wait: u64| {
                    assert_eq!(index, 0);
                    ApiError::new(ErrorCode::RateLimited, "slow").retry_after(wait)
                };
                run(store, intake, refused, async { also }, async { Ok(id) }).await
            }
        };
        let refused_by_also = send("a", Err(ApiError::new(ErrorCode::RateLimited, "x")), 1).await;
        assert_eq!(refused_by_also.unwrap_err().code, ErrorCode::RateLimited);
        // The limit was counted by that admission; the key was given back.
        let limited = send("a", Ok(()), 2).await.unwrap_err();
        assert_eq!(limited.code, ErrorCode::RateLimited);
        assert!(limited.retry_after_secs.is_some());
        let k = IdempotencyKey {
            user: "u".into(),
            scope: scope.encoded(),
            key: "a".into(),
        };
        assert_eq!(store.claim_now(&k, 1, 1000), Claim::New, "no claim left");
        store.complete_now(&k, 1, 5, 60_000);
        // A replay answers its id though the limit would refuse.
        assert_eq!(send("a", Ok(()), 3).await, Ok(5));
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
