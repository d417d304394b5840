//! The one shared [`Context`] the roles receive: the adapters behind every port,
//! the settings, the token signer and the id generator. Which adapter serves each
//! port is decided in one place, `danmaku::engines` (the root crate); tests
//! assemble a `Context` from their own adapters (`danmaku_embedded::testkit`).

use crate::auth::TokenSigner;
use crate::config::Settings;
use crate::id::IdGenerator;
use crate::ports::{ArchiveStore, Bus, Notifier, ObjectStore, Presence, ReplayCache, SliceStore};
use std::sync::Arc;

/// Everything the roles share.
#[derive(Clone)]
pub struct Context {
    pub settings: Arc<Settings>,
    pub bus: Arc<dyn Bus>,
    pub slices: Arc<dyn SliceStore>,
    /// Tells live nodes about new items of their rooms.
    pub notifier: Arc<dyn Notifier>,
    pub archive: Arc<dyn ArchiveStore>,
    /// Per-room viewer counts over every live node.
    pub presence: Arc<dyn Presence>,
    /// Where the archive's Parquet files go.
    pub objects: Arc<dyn ObjectStore>,
    pub cache: Arc<dyn ReplayCache>,
    pub signer: TokenSigner,
    pub ids: Arc<IdGenerator>,
}
