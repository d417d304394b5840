//! The Bus port: the durable, per-room-ordered log of accepted comments.

use super::cause::{BoxError, Cause};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// Where a record sits on the Bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordPosition {
    pub partition: u32,
    pub offset: u64,
}

impl RecordPosition {
    /// The per-room `seq` derived from the position: a room always maps to one
    /// partition, so `offset + 1` only grows within a room, and a redelivered
    /// record gets the same seq (DESIGN §5). Seq 0 means "before everything".
    pub fn seq(self) -> u64 {
        self.offset + 1
    }
}

/// One record read from the Bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BusRecord {
    pub position: RecordPosition,
    /// The record key: the room.
    pub room: String,
    /// The encoded comment ([`crate::model::Danmaku`] protobuf).
    pub payload: Bytes,
}

/// What kind of failure a [`BusError`] is, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BusErrorKind {
    /// The Bus did not acknowledge in time or is unreachable; a published record
    /// may or may not have been stored, and the caller must not report success.
    Unavailable,
    /// Anything else (corruption, misuse).
    Other,
}

/// Bus failures: what was being done, and the adapter's own error as the source
/// when there is one.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// See [`BusErrorKind::Unavailable`].
    #[error("bus unavailable: {context}{}", Cause(.source))]
    Unavailable {
        /// What failed (the operation, or the whole story without a source).
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`BusErrorKind::Other`].
    #[error("bus error: {context}{}", Cause(.source))]
    Other {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
}

impl BusError {
    /// An unavailable Bus; add the cause with [`Self::with_source`].
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self::Unavailable {
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
            Self::Unavailable { source, .. } | Self::Other { source, .. } => {
                *source = Some(cause.into())
            }
        }
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> BusErrorKind {
        match self {
            Self::Unavailable { .. } => BusErrorKind::Unavailable,
            Self::Other { .. } => BusErrorKind::Other,
        }
    }
}

/// A durable, per-room-ordered log of accepted comments with consumer groups
/// (Kafka, or the embedded log under the data dir).
///
/// Guarantees:
/// - `publish` returns only once the record is durable (fsynced locally, or
///   acknowledged by all in-sync replicas); after a crash it is still there.
/// - Records of one room land in one partition, in publish order.
/// - A consumer group resumes from its last committed position: records after it
///   are delivered again after a crash or restart (at-least-once). Consumers make
///   their writes idempotent with [`RecordPosition::seq`].
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends one record keyed by `room`, returning its position once durable.
    async fn publish(&self, room: &str, payload: Bytes) -> Result<RecordPosition, BusError>;

    /// Appends several records, each keyed by its room, returning their
    /// positions (in the order given) once every one is durable. Records of one
    /// room keep their order within the batch. On an error some of them may have
    /// been appended: callers retry with records whose effects are idempotent.
    /// The default queues them concurrently, in order, with [`Bus::publish`];
    /// an adapter may append them in one commit (the embedded Bus does).
    async fn publish_batch(
        &self,
        records: Vec<(String, Bytes)>,
    ) -> Result<Vec<RecordPosition>, BusError> {
        futures::future::try_join_all(
            records
                .into_iter()
                .map(|(room, payload)| async move { self.publish(&room, payload).await }),
        )
        .await
    }

    /// Joins consumer group `group`. The embedded Bus assigns every partition to the
    /// one consumer of a group; Kafka balances partitions across the group.
    async fn consumer(&self, group: &str) -> Result<Box<dyn BusConsumer>, BusError>;

    /// Whether the Bus is reachable (for `/readyz`).
    async fn ready(&self) -> bool;
}

/// One member of a consumer group.
#[async_trait]
pub trait BusConsumer: Send {
    /// Up to `max` records after this consumer's position, waiting up to `wait` for
    /// the first one. Returns an empty vector on timeout. Records of one partition
    /// come in offset order. Advances the in-memory position, not the committed one.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<BusRecord>, BusError>;

    /// Marks every record up to and including each given position as done for the
    /// group. Call only once the records' effects are durable elsewhere.
    async fn commit(&mut self, upto: &[RecordPosition]) -> Result<(), BusError>;

    /// Records published but not yet polled by this consumer (0 = caught up).
    async fn lag(&mut self) -> Result<u64, BusError>;
}
