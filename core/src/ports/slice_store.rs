//! The SliceStore port: recent comments per room in time slices, the expiry
//! queue, and leased archive batches.

use super::cause::{BoxError, Cause};
use crate::slice::SliceRef;
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// One comment in the SliceStore: its per-room seq, its server time (which picks
/// the slice) and the encoded comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceItem {
    pub seq: u64,
    pub ts_ms: i64,
    pub data: Bytes,
}

/// What an append did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Items newly stored (the rest were already there).
    pub added: usize,
    /// Member count and bytes of every slice touched, after the append.
    pub slices: Vec<SliceStat>,
}

/// Size of one slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceStat {
    pub slice: SliceRef,
    pub members: u64,
    pub bytes: u64,
}

/// Size of one key of the store, as the big-key scanner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyStat {
    /// The key (`dm:{room}:s:<start>:<len>` for a slice; any other key of the store
    /// too, on Redis).
    pub key: String,
    /// Members (ZSET/HASH/SET/LIST length; 1 for a string).
    pub members: u64,
    /// Bytes the store uses for it (Redis `MEMORY USAGE`; the embedded store: item bytes).
    pub bytes: u64,
}

/// One page of a walk over every key of the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyScanPage {
    pub keys: Vec<KeyStat>,
    /// Where the next page starts; `None` when the walk is complete.
    pub next: Option<String>,
}

/// A leased set of due slices, taken from the expiry queue by one archiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveBatch {
    /// Unique, stable across redos: a batch redone after its lease expired keeps its id
    /// and its contents.
    pub id: u64,
    pub slices: Vec<SliceRef>,
    /// Every item of those slices, with its room, in (room, seq) order.
    pub items: Vec<(String, SliceItem)>,
}

/// What kind of failure a [`SliceError`] is, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SliceErrorKind {
    /// The store did not answer (refused, timed out, failing over); a retry may
    /// succeed. A write that failed this way may or may not have happened, which
    /// is safe: appends are idempotent.
    Unavailable,
    /// The store holds or returned data the adapter cannot read.
    Corrupt,
    /// Anything else (a bad argument, an unexpected failure).
    Other,
}

/// SliceStore failures: what was being done, and the adapter's own error as the
/// source when there is one.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    /// See [`SliceErrorKind::Unavailable`].
    #[error("slice store unavailable: {context}{}", Cause(.source))]
    Unavailable {
        /// What failed (the operation, or the whole story without a source).
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`SliceErrorKind::Corrupt`].
    #[error("slice store data corrupt: {context}{}", Cause(.source))]
    Corrupt {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`SliceErrorKind::Other`].
    #[error("slice store error: {context}{}", Cause(.source))]
    Other {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
}

impl SliceError {
    /// An unavailable store; add the cause with [`Self::with_source`].
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    /// Unreadable data; add the cause with [`Self::with_source`].
    pub fn corrupt(context: impl Into<String>) -> Self {
        Self::Corrupt {
            context: context.into(),
            source: None,
        }
    }

    /// Any other failure; add the cause with [`Self::with_source`].
    pub fn other(context: impl Into<String>) -> Self {
        Self::Other {
            context: context.into(),
            source: None,
        }
    }

    /// Keeps `cause` (the adapter's own error) as the source.
    pub fn with_source(mut self, cause: impl Into<BoxError>) -> Self {
        match &mut self {
            Self::Unavailable { source, .. }
            | Self::Corrupt { source, .. }
            | Self::Other { source, .. } => *source = Some(cause.into()),
        }
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> SliceErrorKind {
        match self {
            Self::Unavailable { .. } => SliceErrorKind::Unavailable,
            Self::Corrupt { .. } => SliceErrorKind::Corrupt,
            Self::Other { .. } => SliceErrorKind::Other,
        }
    }
}

/// Recent comments per room in time slices (Redis ZSETs, or the embedded store).
///
/// Guarantees:
/// - `append` is idempotent: an item whose seq the room's slice already holds is
///   not stored again, so a Bus redelivery changes nothing. It returns only once
///   the items are stored and visible to readers. They are durable then too, except
///   in an adapter set up to let a later durable commit persist them (the embedded
///   store next to the embedded Bus, see `crate::embedded`): there a crash can lose
///   the latest appends, but only together with the Bus offsets committed after
///   them, so the Bus redelivers those records and they come back under the same seqs.
/// - Reads by cursor return items in seq order, each once.
/// - A slice enters the expiry queue when first written, due at its end plus the
///   hot retention (or at once if its room was expedited up to its start).
///
/// # Archive batches and leases
///
/// - `claim_batch` hands due slices to a leased batch in one atomic step; items
///   appended to the same slice later start a new slice of the same name. A
///   claimed slice is never due again: it is in exactly one batch.
/// - A batch whose lease expired is handed out again, same id, same contents, so
///   a crashed archiver's work is redone exactly. An archiver at work keeps its
///   lease with [`SliceStore::renew_lease`], so the lease can be short (seconds,
///   `archive.lease_ms`) and a crashed archiver's batch is redone within it.
/// - `complete_batch` marks the batch archived: it is never handed out again.
/// - Adapters may release leases sooner: the embedded store, the only process on
///   its database, releases every lease left by its previous process when it opens
///   (that process is dead), so its batches are redone at once after a restart.
///
/// # Hot retention: archiving copies, expiry deletes
///
/// Archiving never makes an item unreadable: the items of a claimed slice, and of
/// an archived one, stay readable by `read_after` (in seq order with the rest)
/// until the slice's hot retention has ended, at its end plus the hot retention
/// (the room's `hot_retention_ms` of its latest append; what it would have been
/// due at without expediting). Then [`SliceStore::expire_archived`] deletes it,
/// once it is archived: a slice not archived yet is never deleted, however old.
/// So a cursor from before a restart or a VOD's end still gets its items for the
/// whole hot retention, and a slice expedited and archived early (a shutdown, an
/// ended VOD) is still served live until then. A room's slices end in seq order,
/// so they expire oldest first: what `read_after` returns after a cursor is
/// never missing an item in the middle.
#[async_trait]
pub trait SliceStore: Send + Sync + 'static {
    /// Stores `items` of `room` in slices of `slice_len_ms`; a slice is due
    /// `hot_retention_ms` after its end. [`SliceStore::append_at`] without an
    /// append time (for callers whose clock is the items' own, such as tests).
    async fn append(
        &self,
        room: &str,
        slice_len_ms: i64,
        hot_retention_ms: i64,
        items: &[SliceItem],
    ) -> Result<AppendOutcome, SliceError> {
        self.append_at(room, slice_len_ms, hot_retention_ms, items, None)
            .await
    }

    /// [`SliceStore::append`] at `now_ms` (the writer's clock, the same as
    /// `claim_batch`'s): a slice that receives an item is due no earlier than
    /// `now_ms + hot_retention_ms` ([`SliceRef::due_for`]), so an item appended
    /// late (a writer that was cut off from the store, or behind) stays readable
    /// for the whole hot retention after its append, like any other, instead of
    /// being archived and expired at once because its slice's end is long past
    /// (found by the chaos suite: live nodes that caught up from the store after
    /// such an append found the items gone). An expedited slice stays due at
    /// once. `None`: due at its end plus the retention only.
    ///
    /// [`SliceRef::due_for`]: crate::slice::SliceRef::due_for
    async fn append_at(
        &self,
        room: &str,
        slice_len_ms: i64,
        hot_retention_ms: i64,
        items: &[SliceItem],
        now_ms: Option<i64>,
    ) -> Result<AppendOutcome, SliceError>;

    /// Up to `limit` items of `room` with `seq > after`, in seq order: items of
    /// slices not yet claimed, claimed, or archived but within their hot retention,
    /// except deleted ones ([`SliceStore::delete_items`]): a page is filled past
    /// them, so fewer than `limit` items means nothing more is held.
    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SliceItem>, SliceError>;

    /// Records that the comments `ids` of `room` were deleted (API.md,
    /// Moderation): from the call's return on, [`SliceStore::read_after`] and
    /// [`SliceStore::claim_batch`] (a redo too) leave them out, for at least
    /// `keep_ms` (the room's hot retention: by then the items themselves are
    /// gone). An id deleted before it is appended (a Bus redelivery) is left
    /// out as well. Deleting an id again, or one the room never held, is a
    /// no-op. The deletion record itself is appended like a comment by the
    /// caller, after this call, so a reader that sees it never sees its target.
    /// The default, for test doubles, refuses.
    async fn delete_items(&self, room: &str, ids: &[u64], keep_ms: i64) -> Result<(), SliceError> {
        let _ = (room, ids, keep_ms);
        Err(SliceError::other(
            "delete_items: not supported by this store",
        ))
    }

    /// Whether comment `id` of `room` was deleted ([`SliceStore::delete_items`])
    /// and the deletion is still kept. The default, for test doubles, says no.
    async fn is_deleted(&self, room: &str, id: u64) -> Result<bool, SliceError> {
        let _ = (room, id);
        Ok(false)
    }

    /// The highest seq ever appended to `room` (0 if none), even once archived.
    async fn last_seq(&self, room: &str) -> Result<u64, SliceError>;

    /// Makes every slice of `room` starting at or before `up_to_ms` due now,
    /// including slices written later (ending a VOD session).
    async fn expedite(&self, room: &str, up_to_ms: i64) -> Result<(), SliceError>;

    /// Makes every slice due now (graceful shutdown of the embedded default).
    async fn expedite_all(&self) -> Result<(), SliceError>;

    /// Claims up to `max_slices` slices due at `now_ms` (or a batch whose lease
    /// expired) for `lease`, until `now_ms + lease`. `None` when nothing is due.
    /// The claimed items stay readable (see the trait doc).
    async fn claim_batch(
        &self,
        now_ms: i64,
        max_slices: usize,
        lease: Duration,
    ) -> Result<Option<ArchiveBatch>, SliceError>;

    /// Marks a claimed batch archived: never handed out again; its slices stay
    /// readable until their hot retention ends ([`SliceStore::expire_archived`]).
    /// Completing a batch again (or an unknown one) is a no-op.
    async fn complete_batch(&self, batch_id: u64) -> Result<(), SliceError>;

    /// Extends the lease of batch `batch_id` to `now_ms + lease`, for an archiver
    /// still at work on it (same clock as `claim_batch`). `false` when the batch is
    /// no longer leased (completed, or unknown); the archiver may finish anyway: a
    /// batch processed twice writes nothing twice. A lease that expired and was
    /// handed out again is extended for whoever holds it now, which is harmless
    /// for the same reason. The default, for test doubles, renews nothing.
    async fn renew_lease(
        &self,
        batch_id: u64,
        now_ms: i64,
        lease: Duration,
    ) -> Result<bool, SliceError> {
        let _ = (batch_id, now_ms, lease);
        Err(SliceError::other(
            "renew_lease: not supported by this store",
        ))
    }

    /// Deletes the archived slices whose hot retention ended at or before
    /// `now_ms` (see the trait doc), with their items; returns how many. Slices not
    /// archived yet stay. Idempotent; safe to run from several archivers at once.
    /// The default, for test doubles, deletes nothing.
    async fn expire_archived(&self, now_ms: i64) -> Result<u64, SliceError> {
        let _ = now_ms;
        Ok(0)
    }

    /// The highest seq of `room` that [`SliceStore::expire_archived`] removed (0
    /// if none): slices expire oldest first, so every item at or below it is
    /// gone from the hot store. A reader whose cursor is below it has missed
    /// items, even when `read_after` still returns later ones (the live role
    /// answers `gap`). The default, for test doubles, says nothing expired (0).
    async fn expired_through(&self, room: &str) -> Result<u64, SliceError> {
        let _ = room;
        Ok(0)
    }

    /// The highest seq `s` of `room` such that every item with a seq at or below
    /// `s` is archived (its batch completed): the seq before the oldest item not
    /// archived yet, or [`SliceStore::last_seq`] when everything is. Items above it
    /// may be archived already (batches complete out of order). For callers that
    /// must tell "archived" from "still readable" (the replay API's settle check).
    /// The default, for test doubles, says nothing is known archived (0).
    async fn archived_through(&self, room: &str) -> Result<u64, SliceError> {
        let _ = room;
        Ok(0)
    }

    /// Slices not yet claimed plus batches not yet completed (archived slices
    /// kept for their retention are not pending).
    async fn pending(&self) -> Result<u64, SliceError>;

    /// The largest live slices (not yet claimed: the ones still growing) by bytes,
    /// at most `limit`. Claimed and archived slices kept for their retention show
    /// in [`SliceStore::scan_keys`].
    async fn largest_slices(&self, limit: usize) -> Result<Vec<SliceStat>, SliceError>;

    /// One page of about `count` keys of a walk over every key of the store, with
    /// their sizes (the big-key scanner: Redis `SCAN` + `MEMORY USAGE` on every
    /// master). Start with `cursor = ""` and pass each page's `next` until it is
    /// `None`. Keys written during the walk may or may not be seen; keys present
    /// throughout are seen at least once. Cheap enough to rate-limit per page.
    /// Every adapter implements it (the conformance suite checks it); the default,
    /// an empty walk, only keeps test doubles short.
    async fn scan_keys(&self, cursor: &str, count: usize) -> Result<KeyScanPage, SliceError> {
        let _ = (cursor, count);
        Ok(KeyScanPage::default())
    }

    /// Whether the store is reachable (for `/readyz`).
    async fn ready(&self) -> bool;
}
