//! The ports: one trait per external system. Each trait documents what a call
//! guarantees and what happens on retry and on crash; every adapter passes the
//! suite of the same name in [`crate::conformance`].

mod archive_store;
mod bus;
mod cause;
mod moderation;
mod notifier;
mod object_store;
mod presence;
mod replay_cache;
mod slice_store;

pub use archive_store::{
    ArchiveError, ArchiveErrorKind, ArchiveStore, ArchivedComment, ArchivedDeletion, VodVersion,
};
pub use bus::{Bus, BusConsumer, BusError, BusErrorKind, BusRecord, RecordPosition};
pub use cause::BoxError;
pub use moderation::{
    ban_key, now_us, Admission, Admit, Ban, ChangePage, Claim, IdempotencyKey, KeyClaim,
    MemoryModerationStore, ModerationChange, ModerationError, ModerationErrorKind,
    ModerationSnapshot, ModerationStore, Rate, RoomSettings, RoomSettingsPatch, WordList, LOG_KEEP,
};
pub use notifier::{Notice, Notifier, NotifierEvent, NotifyError, NotifyErrorKind};
pub use object_store::{ObjectMeta, ObjectStore, ObjectStoreError, ObjectStoreErrorKind};
pub use presence::{MemoryPresence, Presence, PresenceError};
pub use replay_cache::{CachedBody, ReplayCache};
pub use slice_store::{
    AppendOutcome, ArchiveBatch, KeyScanPage, KeyStat, SliceError, SliceErrorKind, SliceItem,
    SliceStat, SliceStore,
};
