use super::SliceItem;
use async_trait::async_trait;
use tokio::sync::mpsc;

/// New items of one room, as the writer stored them (seq, ts, encoded comment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub room: String,
    pub items: Vec<SliceItem>,
}

/// Notifier failures.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifier unavailable: {0}")]
    Unavailable(String),
}

/// Tells live nodes about new items of the rooms they have viewers in (Redis
/// Pub/Sub, sharded Pub/Sub on a cluster; in-process for the embedded default).
///
/// Guarantees: best effort. A notice may be lost (a subscriber reconnecting) or
/// repeated; live nodes deduplicate by seq and, after every (re)subscription,
/// catch up from the SliceStore by cursor, so viewers lose nothing that was stored.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Publishes `items` (seq order) of `room` to every node subscribed to it.
    async fn publish(&self, room: &str, items: &[SliceItem]) -> Result<(), NotifyError>;

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
