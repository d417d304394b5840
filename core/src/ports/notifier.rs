//! The Notifier port: tells live nodes about new items of their rooms.

use super::cause::{BoxError, Cause};
use super::SliceItem;
use async_trait::async_trait;
use tokio::sync::mpsc;

/// New items of one room, as the writer stored them (seq, ts, encoded comment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub room: String,
    /// The seq of the room's last item the writer stored before these, when
    /// it knows it (`None` for its first notice of the room since it started).
    /// A hub whose last delivered seq is lower missed a notice (lost in a
    /// reconnect, a publish given up, a writer that moved): it catches up
    /// from the SliceStore before delivering this one.
    pub prev: Option<u64>,
    pub items: Vec<SliceItem>,
}

/// What kind of failure a [`NotifyError`] is, for callers that branch on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotifyErrorKind {
    /// The notifier's server did not answer; a subscription is retried by the
    /// notifier itself, a lost notice is made up by the resync.
    Unavailable,
    /// Anything else.
    Other,
}

/// Notifier failures: what was being done, and the adapter's own error as the
/// source when there is one.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// See [`NotifyErrorKind::Unavailable`].
    #[error("notifier unavailable: {context}{}", Cause(.source))]
    Unavailable {
        /// What failed (the operation, or the whole story without a source).
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
    /// See [`NotifyErrorKind::Other`].
    #[error("notifier error: {context}{}", Cause(.source))]
    Other {
        /// What failed.
        context: String,
        /// The adapter's own error.
        #[source]
        source: Option<BoxError>,
    },
}

impl NotifyError {
    /// An unavailable notifier; add the cause with [`Self::with_source`].
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
    pub fn kind(&self) -> NotifyErrorKind {
        match self {
            Self::Unavailable { .. } => NotifyErrorKind::Unavailable,
            Self::Other { .. } => NotifyErrorKind::Other,
        }
    }
}

/// Tells live nodes about new items of the rooms they have viewers in (Redis
/// Pub/Sub, sharded Pub/Sub on a cluster; in-process for the embedded default).
///
/// Guarantees: best effort. A notice may be lost (a subscriber reconnecting, a
/// publish given up) or repeated; live nodes deduplicate by seq and catch up
/// from the SliceStore by cursor after every (re)subscription and whenever a
/// notice's `prev` is past what they delivered, so viewers lose nothing that
/// was stored.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Publishes `items` (seq order) of `room` to every node subscribed to it,
    /// with `prev`, the seq of the room's last item stored before them when the
    /// writer knows it ([`Notice::prev`]).
    async fn publish(
        &self,
        room: &str,
        prev: Option<u64>,
        items: &[SliceItem],
    ) -> Result<(), NotifyError>;

    /// This node wants `room`'s notices.
    async fn subscribe(&self, room: &str) -> Result<(), NotifyError>;

    /// This node no longer wants `room`'s notices.
    async fn unsubscribe(&self, room: &str) -> Result<(), NotifyError>;

    /// The notices of this node's subscribed rooms, plus `Resync(room)` events after
    /// a (re)subscription. Taken once, by the live role.
    fn take_receiver(&self) -> Option<mpsc::Receiver<NotifierEvent>>;
}

/// What a live node receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifierEvent {
    Notice(Notice),
    /// The subscription to this room was (re)established: notices may have been
    /// missed before; catch up from the SliceStore.
    Resync(String),
}
