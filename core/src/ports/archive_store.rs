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

/// ArchiveStore failures.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("session not found")]
    NotFound,
    #[error("session already exists")]
    AlreadyExists,
    #[error("session already ended")]
    AlreadyEnded,
    #[error("archive store unavailable: {0}")]
    Unavailable(String),
    #[error("archive store error: {0}")]
    Other(String),
}

/// VOD sessions and comments by (VOD, offset) (ScyllaDB, or the embedded store).
///
/// Guarantees:
/// - Writes return once durable.
/// - `upsert_comments` is idempotent by (vod, comment id): redoing a batch after a
///   crash stores nothing twice and does not change `count`.
/// - `read_segment` returns a segment's comments ordered by (offset_ms, id).
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

    /// Stores comments (any VODs) idempotently.
    async fn upsert_comments(&self, rows: &[ArchivedComment]) -> Result<(), ArchiveError>;

    /// Every comment of segment `segment` of `vod`, ordered by (offset_ms, id).
    async fn read_segment(
        &self,
        vod: &str,
        segment: u32,
    ) -> Result<Vec<ArchivedComment>, ArchiveError>;

    /// Comments archived for `vod` so far.
    async fn count(&self, vod: &str) -> Result<u64, ArchiveError>;

    /// The highest segment holding a comment of `vod`, if any.
    async fn last_segment(&self, vod: &str) -> Result<Option<u32>, ArchiveError>;

    /// Whether the store is reachable (for `/readyz`).
    async fn ready(&self) -> bool;
}
