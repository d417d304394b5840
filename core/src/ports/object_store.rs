//! The object store port: where the archive's Parquet files live (a local
//! directory, or an S3 bucket under a prefix). Only the calls the archiver and the
//! compactor make. The adapter over the `object_store` crate, which opens a store
//! from `archive.url`, is `danmaku-object-store` (`adapters/object-store`); the
//! suite every adapter passes is [`crate::object_store_suite`].

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::ops::Range;

/// What kind of failure an [`ObjectStoreError`] is, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectStoreErrorKind {
    /// No object at that path.
    NotFound,
    /// The store did not complete the request (network, timeout, I/O); a retry may
    /// succeed. A write that failed this way may or may not have happened.
    Unavailable,
    /// Anything else: refused credentials, an invalid path, an unsupported call.
    /// Retrying the same call is not expected to help.
    Other,
}

/// Why an object store call failed. The adapter's own error is kept as the source.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// No object at `path`.
    #[error("object {path:?} not found")]
    NotFound {
        /// The path asked for.
        path: String,
        /// What the store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The store did not complete the request; a retry may succeed.
    #[error("object store unavailable: {source}")]
    Unavailable {
        /// What the store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Any other failure.
    #[error("object store error: {source}")]
    Other {
        /// What the store said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl ObjectStoreError {
    /// The kind of failure.
    pub fn kind(&self) -> ObjectStoreErrorKind {
        match self {
            Self::NotFound { .. } => ObjectStoreErrorKind::NotFound,
            Self::Unavailable { .. } => ObjectStoreErrorKind::Unavailable,
            Self::Other { .. } => ObjectStoreErrorKind::Other,
        }
    }

    /// Whether there was no object at the path.
    pub fn is_not_found(&self) -> bool {
        self.kind() == ObjectStoreErrorKind::NotFound
    }
}

/// What the store knows about one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The object's path, as given to `put` (e.g. `date=2025-11-24/hour=16/part-….parquet`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// An opaque version tag when the store has one (S3's ETag): unchanged as long
    /// as the object is not written again.
    pub e_tag: Option<String>,
}

/// A flat namespace of immutable objects named by `/`-separated paths (a local
/// directory, or an S3 bucket under a prefix). Paths are relative to the store's
/// root and made of non-empty segments (`date=2025-11-24/hour=16/part-1.parquet`).
///
/// Guarantees:
/// - `put` replaces the object atomically: a reader sees the old object (or none)
///   or the whole new one, never a part, and a listing never shows a half-written
///   object. A crash during a `put` leaves the old object or none. Rewriting the
///   same bytes is harmless, so a retried `put` is safe.
/// - `put_multipart` gives the same guarantee for large objects sent in parts:
///   the object appears whole once the last part is in, not before. If a part
///   fails the upload is abandoned (and its parts discarded where the store
///   allows) and the old object stays. A crash mid-upload leaves the old object;
///   on S3 the unfinished parts linger, invisible, until a lifecycle rule aborts
///   them.
/// - `delete` of a missing object succeeds, so a retried or repeated delete is
///   safe; `delete_many` likewise ignores the missing ones.
/// - `list(prefix)` gives every object whose path lies under the directory
///   `prefix` (whole segments: `a/b` does not list `a/bc/x`), at any depth, each
///   once, in no particular order; a prefix nothing lies under lists nothing.
/// - `get`, `get_range` and `head` of a missing object fail with
///   [`ObjectStoreErrorKind::NotFound`]; they read one version of the object,
///   never a mix of two.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes `bytes` as the object at `path`, replacing it atomically.
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ObjectStoreError>;

    /// Writes `bytes` as the object at `path` in parts of `part_bytes` (the last
    /// one shorter), sent concurrently, replacing it atomically once complete. S3
    /// wants parts of at least 5 MiB (but the last).
    async fn put_multipart(
        &self,
        path: &str,
        bytes: Bytes,
        part_bytes: usize,
    ) -> Result<(), ObjectStoreError>;

    /// The whole object at `path`.
    async fn get(&self, path: &str) -> Result<Bytes, ObjectStoreError>;

    /// The bytes `range` of the object at `path`.
    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, ObjectStoreError>;

    /// The size (and version tag) of the object at `path`.
    async fn head(&self, path: &str) -> Result<ObjectMeta, ObjectStoreError>;

    /// Every object under the directory `prefix` (all objects when empty), at any
    /// depth, as a stream so a large bucket is not held in memory.
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, ObjectStoreError>>;

    /// Deletes the object at `path`; `Ok` if there is none.
    async fn delete(&self, path: &str) -> Result<(), ObjectStoreError>;

    /// Deletes every object of `paths` (in bulk where the store can: on S3 one
    /// request per 1,000 keys); the missing ones are fine. On an error some may
    /// be deleted and others not; the first error is returned.
    async fn delete_many(&self, paths: Vec<String>) -> Result<(), ObjectStoreError>;
}
