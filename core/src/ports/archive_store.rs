//! The ArchiveStore port: VOD sessions and archived comments by (VOD, offset).

use super::cause::{BoxError, Cause};
use crate::model::Danmaku;
use crate::vod::Session;
use async_trait::async_trait;

/// One archived comment: the comment with its VOD and offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedComment {
    pub vod: String,
    pub offset_ms: i64,
    /// The comment, with `vod` and `offset_ms` set.
    pub item: Danmaku,
}

/// One deletion to apply to the archive: comment `id` of `vod`, archived at
/// `offset_ms` (the deleted comment's offset, as its deletion record carries it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedDeletion {
    pub vod: String,
    pub offset_ms: i64,
    pub id: u64,
}

/// The version of a VOD's archived rows: `count` comments archived and not
/// deleted, and `deleted`, the number of archived comments deleted so far.
/// `deleted` never decreases and `count` only grows while `deleted` stays, so a
/// pair never comes back once the rows changed: it names one state of the rows
/// (for cache keys and ETags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VodVersion {
    pub count: u64,
    pub deleted: u64,
}

impl VodVersion {
    /// The version as a short URL-safe token (`<count>.<deleted>` in base 36).
    pub fn token(&self) -> String {
        format!("{}.{}", base36(self.count), base36(self.deleted))
    }
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// What kind of failure an [`ArchiveError`] is, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchiveErrorKind {
    /// No such session ([`ArchiveError::NotFound`]).
    NotFound,
    /// The session's state forbids the call ([`ArchiveError::AlreadyExists`],
    /// [`ArchiveError::AlreadyEnded`]).
    Conflict,
    /// The store did not answer; a retry may succeed (writes are idempotent).
    Unavailable,
    /// The store holds data the adapter cannot read.
    Corrupt,
    /// Anything else.
    Other,
}

/// ArchiveStore failures: the session outcomes callers map to API errors, and
/// store failures with what was being done and the adapter's own error as the
/// source when there is one.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("session not found")]
    NotFound,
    #[error("session already exists")]
    AlreadyExists,
    #[error("session already ended")]
    AlreadyEnded,
    /// See [`ArchiveErrorKind::Unavailable`].
    #[error("archive store unavailable: {context}{}", Cause(.source))]
    Unavailable {
        /// What failed (the operation, or the whole story without a source).
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`ArchiveErrorKind::Corrupt`].
    #[error("archive store data corrupt: {context}{}", Cause(.source))]
    Corrupt {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`ArchiveErrorKind::Other`].
    #[error("archive store error: {context}{}", Cause(.source))]
    Other {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
}

impl ArchiveError {
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

    /// Keeps `cause` (the adapter's own error) as the source; the session
    /// outcomes (`NotFound`, `AlreadyExists`, `AlreadyEnded`) have none and stay
    /// as they are.
    pub fn with_source(mut self, cause: impl Into<BoxError>) -> Self {
        match &mut self {
            Self::Unavailable { source, .. }
            | Self::Corrupt { source, .. }
            | Self::Other { source, .. } => *source = Some(cause.into()),
            Self::NotFound | Self::AlreadyExists | Self::AlreadyEnded => {}
        }
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ArchiveErrorKind {
        match self {
            Self::NotFound => ArchiveErrorKind::NotFound,
            Self::AlreadyExists | Self::AlreadyEnded => ArchiveErrorKind::Conflict,
            Self::Unavailable { .. } => ArchiveErrorKind::Unavailable,
            Self::Corrupt { .. } => ArchiveErrorKind::Corrupt,
            Self::Other { .. } => ArchiveErrorKind::Other,
        }
    }
}

/// VOD sessions and comments by (VOD, offset) (ScyllaDB, or the embedded store).
///
/// Guarantees:
/// - Writes return once durable.
/// - `upsert_comments` is idempotent by (vod, comment id): redoing a batch after a
///   crash stores nothing twice and does not change `count`.
/// - `read_segment` returns a segment's comments ordered by (offset_ms, id).
/// - `delete_comments` is idempotent: a deleted comment is never read again, not
///   counted, and stays deleted when the same comment is upserted again (a redone
///   batch), also when its deletion was applied before its upsert.
/// - `set_video_url` changes only the session's `video_url`; every read of the
///   session (`get_session`, `sessions_by_room`, `recent_sessions`,
///   `open_sessions`) returns the new value.
/// - `recent_sessions` lists sessions of every room, newest first by
///   (`started_at`, `vod`); `open_sessions` lists those not ended, in the same
///   order. Ending a session takes it out of `open_sessions` at once.
/// - `version` changes with every change of a VOD's readable rows (an upsert that
///   adds one, a deletion that removes one) and never comes back to an earlier
///   value; repeating a write that changes nothing leaves it as it is.
#[async_trait]
pub trait ArchiveStore: Send + Sync + 'static {
    /// Registers a new session; `AlreadyExists` if the vod id is taken.
    async fn create_session(&self, session: &Session) -> Result<(), ArchiveError>;

    /// Sets `ended_at`; `NotFound`, or `AlreadyEnded` if it was set.
    async fn end_session(&self, vod: &str, ended_at: i64) -> Result<Session, ArchiveError>;

    async fn get_session(&self, vod: &str) -> Result<Option<Session>, ArchiveError>;

    /// Sessions of `room`, newest first, at most `limit`.
    async fn sessions_by_room(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Vec<Session>, ArchiveError>;

    /// Sets (`Some`) or clears (`None`) the session's `video_url` and returns
    /// the session; `NotFound`. Allowed on ended sessions too (the recording is
    /// often published after the end).
    async fn set_video_url(
        &self,
        vod: &str,
        video_url: Option<&str>,
    ) -> Result<Session, ArchiveError>;

    /// Sessions of every room (live and ended), newest first by (`started_at`,
    /// `vod`), at most `limit`. An adapter may look back only so far (the
    /// ScyllaDB one: 31 days); older sessions are found by room.
    async fn recent_sessions(&self, limit: usize) -> Result<Vec<Session>, ArchiveError>;

    /// Sessions not ended yet (live), of every room, newest first by
    /// (`started_at`, `vod`), at most `limit`.
    async fn open_sessions(&self, limit: usize) -> Result<Vec<Session>, ArchiveError>;

    /// Stores comments (any VODs) idempotently.
    async fn upsert_comments(&self, rows: &[ArchivedComment]) -> Result<(), ArchiveError>;

    /// Every comment of segment `segment` of `vod`, ordered by (offset_ms, id).
    async fn read_segment(
        &self,
        vod: &str,
        segment: u32,
    ) -> Result<Vec<ArchivedComment>, ArchiveError>;

    /// Comments archived for `vod` so far and not deleted.
    async fn count(&self, vod: &str) -> Result<u64, ArchiveError>;

    /// Deletes comments (any VODs) idempotently: each is removed (or marked and
    /// never read again), leaves `count`, and adds one to its VOD's `deleted` if
    /// it was stored and not deleted yet. A deletion of a comment not stored yet
    /// keeps that comment out when it is upserted later. `offset_ms` is where the
    /// comment was archived (adapters may look elsewhere in the VOD when it is
    /// not there). Returns how many stored comments were deleted by this call.
    async fn delete_comments(&self, deletions: &[ArchivedDeletion]) -> Result<u64, ArchiveError>;

    /// The version of `vod`'s rows ([`VodVersion`]); zero for a VOD without rows.
    async fn version(&self, vod: &str) -> Result<VodVersion, ArchiveError>;

    /// The segments holding a comment of `vod` that was not deleted, ascending.
    async fn segments(&self, vod: &str) -> Result<Vec<u32>, ArchiveError>;

    /// The highest segment holding a comment of `vod` that was not deleted, if
    /// any.
    async fn last_segment(&self, vod: &str) -> Result<Option<u32>, ArchiveError>;

    /// Whether the store is reachable (for `/readyz`).
    async fn ready(&self) -> bool;
}
