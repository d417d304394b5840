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
/// - `claim_batch` moves due slices into a leased batch in one atomic step; items
///   appended to the same slice later start a new slice of the same name. A batch
///   whose lease expired is handed out again, same id, same contents, so a crashed
///   archiver's work is redone exactly. `complete_batch` deletes it.
#[async_trait]
pub trait SliceStore: Send + Sync + 'static {
    /// Stores `items` of `room` in slices of `slice_len_ms`; a slice is due
    /// `hot_retention_ms` after its end.
    async fn append(
        &self,
        room: &str,
        slice_len_ms: i64,
        hot_retention_ms: i64,
        items: &[SliceItem],
    ) -> Result<AppendOutcome, SliceError>;

    /// Up to `limit` items of `room` with `seq > after`, in seq order.
    async fn read_after(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SliceItem>, SliceError>;

    /// The highest seq ever appended to `room` (0 if none), even once archived.
    async fn last_seq(&self, room: &str) -> Result<u64, SliceError>;

    /// Makes every slice of `room` starting at or before `up_to_ms` due now,
    /// including slices written later (ending a VOD session).
    async fn expedite(&self, room: &str, up_to_ms: i64) -> Result<(), SliceError>;

    /// Makes every slice due now (graceful shutdown of the embedded default).
    async fn expedite_all(&self) -> Result<(), SliceError>;

    /// Claims up to `max_slices` slices due at `now_ms` (or a batch whose lease
    /// expired) for `lease`. `None` when nothing is due.
    async fn claim_batch(
        &self,
        now_ms: i64,
        max_slices: usize,
        lease: Duration,
    ) -> Result<Option<ArchiveBatch>, SliceError>;

    /// Deletes a claimed batch once it is archived.
    async fn complete_batch(&self, batch_id: u64) -> Result<(), SliceError>;

    /// Slices not yet archived plus batches not yet completed.
    async fn pending(&self) -> Result<u64, SliceError>;

    /// The largest live slices by bytes, at most `limit`.
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
