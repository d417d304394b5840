//! This node's copy of the shared moderation state (bans, room settings, the
//! word list) and the checks that read it.
//!
//! Every send reads bans, the room's settings and the word filter, so they are
//! never a store round trip per request: a task per node reads the store's
//! change log every `moderation.sync_ms` (one small request, whatever the
//! traffic) and applies the changes to this copy; a node that fell behind the
//! log, or whose store lost its data, reloads a snapshot. An admin change made
//! through this node is applied here before its answer, and on every other node
//! within `sync_ms` plus a round trip.
//!
//! Fail closed: when the copy could not be confirmed current for
//! `moderation.stale_ms` (the store is unreachable), [`Moderation::ensure_fresh`]
//! tries one sync itself and otherwise refuses with `503 unavailable`, so a ban
//! made on another node is never silently missed.

use crate::filter::{FilterError, WordFilter};
use danmaku_core::config::{FilterSettings, ModerationSettings};
use danmaku_core::error::ApiError;
use danmaku_core::ports::{
    ban_key, Ban, ModerationChange, ModerationError, ModerationStore, RoomSettings, WordList,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

/// Changes read per request to the log.
const PAGE: usize = 1000;
/// Longest a send waits for a sync of its own when the copy is stale.
const INLINE_SYNC: Duration = Duration::from_secs(1);

/// What this node holds.
struct Local {
    /// The version of the last change applied.
    version: u64,
    /// A snapshot was loaded (before that, nothing can be confirmed).
    loaded: bool,
    /// `ban_key(room, user)` → ban.
    bans: HashMap<String, Ban>,
    settings: HashMap<String, RoomSettings>,
    /// The word list in force and its compiled filter.
    words: WordList,
    filter: Arc<WordFilter>,
}

/// This node's copy of the moderation state, kept current from the store.
pub struct Moderation {
    store: Arc<dyn ModerationStore>,
    /// The configured word list (`[filter]`), in force until an admin sets one.
    configured: WordList,
    local: RwLock<Local>,
    /// When the copy was last confirmed current.
    confirmed: Mutex<Option<Instant>>,
    /// One sync at a time.
    sync_lock: tokio::sync::Mutex<()>,
    sync_every: Duration,
    stale_after: Duration,
}

/// How a ban applies to a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanState {
    /// Not banned.
    None,
    /// Banned: `403 banned`.
    Banned,
    /// Shadow-banned: accepted, shown only to the sender.
    Shadow,
}

impl Moderation {
    /// A copy of `store`'s state (empty until the first sync), the configured
    /// word list from `filter`.
    pub fn new(
        store: Arc<dyn ModerationStore>,
        filter: &FilterSettings,
        settings: &ModerationSettings,
    ) -> Result<Arc<Self>, FilterError> {
        let mut words = filter.words.clone();
        if let Some(path) = &filter.words_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| FilterError::Read(path.display().to_string(), e))?;
            words.extend(text.lines().map(str::to_string));
        }
        let configured = WordList {
            words,
            policy: filter.policy,
        };
        let compiled = Arc::new(WordFilter::new(&configured.words, configured.policy)?);
        Ok(Arc::new(Self {
            store,
            local: RwLock::new(Local {
                version: 0,
                loaded: false,
                bans: HashMap::new(),
                settings: HashMap::new(),
                words: configured.clone(),
                filter: compiled,
            }),
            configured,
            confirmed: Mutex::new(None),
            sync_lock: tokio::sync::Mutex::new(()),
            sync_every: Duration::from_millis(settings.sync_ms.max(1)),
            stale_after: Duration::from_millis(settings.stale_ms.max(1)),
        }))
    }

    /// The store behind this copy (idempotency keys and limits go there directly).
    pub fn store(&self) -> &Arc<dyn ModerationStore> {
        &self.store
    }

    /// Starts the task that follows the change log, when called inside a Tokio
    /// runtime; it ends when this copy is dropped.
    pub fn start(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = self.sync_every;
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                let Some(me) = weak.upgrade() else { return };
                match me.sync().await {
                    Ok(()) => {
                        if failing {
                            tracing::info!("moderation state reachable again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot refresh the moderation state");
                        }
                        failing = true;
                    }
                }
            }
        });
    }

    fn is_fresh(&self) -> bool {
        self.confirmed
            .lock()
            .expect("confirmed lock")
            .is_some_and(|at| at.elapsed() <= self.stale_after)
    }

    /// Brings the copy up to the store's version (the log, or a snapshot when the
    /// log does not reach back), then marks it confirmed.
    pub async fn sync(&self) -> Result<(), ModerationError> {
        let _one = self.sync_lock.lock().await;
        let (loaded, mut version) = {
            let l = self.local.read().expect("moderation lock");
            (l.loaded, l.version)
        };
        if loaded {
            loop {
                let Some(page) = self.store.changes_after(version, PAGE).await? else {
                    self.reload().await?;
                    break;
                };
                let full = page.changes.len() >= PAGE;
                let words_changed = page
                    .changes
                    .iter()
                    .any(|(_, c)| matches!(c, ModerationChange::Words));
                let words = if words_changed {
                    Some(self.effective_words(self.store.word_list().await?))
                } else {
                    None
                };
                let filter = words.as_ref().map(|w| Arc::new(compile(w)));
                {
                    let mut l = self.local.write().expect("moderation lock");
                    for (v, change) in page.changes {
                        apply(&mut l, change);
                        l.version = v;
                    }
                    if let (Some(w), Some(f)) = (words, filter) {
                        l.words = w;
                        l.filter = f;
                    }
                    version = l.version;
                }
                if !full {
                    break;
                }
            }
        } else {
            self.reload().await?;
        }
        *self.confirmed.lock().expect("confirmed lock") = Some(Instant::now());
        Ok(())
    }

    async fn reload(&self) -> Result<(), ModerationError> {
        let snap = self.store.snapshot(danmaku_core::now_ms()).await?;
        let words = self.effective_words(snap.words);
        let filter = Arc::new(compile(&words));
        let mut l = self.local.write().expect("moderation lock");
        l.version = snap.version;
        l.loaded = true;
        l.bans = snap
            .bans
            .into_iter()
            .map(|b| (ban_key(b.room.as_deref(), &b.user), b))
            .collect();
        l.settings = snap.settings.into_iter().collect();
        l.words = words;
        l.filter = filter;
        Ok(())
    }

    fn effective_words(&self, stored: Option<WordList>) -> WordList {
        stored.unwrap_or_else(|| self.configured.clone())
    }

    /// `Ok` when the copy is current (confirmed within `moderation.stale_ms`, or
    /// after a sync made now); `503 unavailable` otherwise.
    pub async fn ensure_fresh(&self) -> Result<(), ApiError> {
        if self.is_fresh() {
            return Ok(());
        }
        match tokio::time::timeout(INLINE_SYNC, self.sync()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                metrics::counter!("danmaku_moderation_stale_refusals_total").increment(1);
                tracing::warn!(error = %e, "moderation state stale: refusing sends");
                Err(ApiError::unavailable())
            }
            Err(_) => {
                metrics::counter!("danmaku_moderation_stale_refusals_total").increment(1);
                Err(ApiError::unavailable())
            }
        }
    }

    /// How `user`'s bans apply in `room` now: a ban in the room or in every room;
    /// a plain ban wins over a shadow ban.
    pub fn ban_state(&self, room: &str, user: &str) -> BanState {
        let now = danmaku_core::now_ms();
        let l = self.local.read().expect("moderation lock");
        let mut state = BanState::None;
        for key in [ban_key(Some(room), user), ban_key(None, user)] {
            match l.bans.get(&key) {
                Some(b) if b.until_ms > now && !b.shadow => return BanState::Banned,
                Some(b) if b.until_ms > now => state = BanState::Shadow,
                _ => {}
            }
        }
        state
    }

    /// `room`'s settings as this node knows them.
    pub fn room_settings(&self, room: &str) -> RoomSettings {
        self.local
            .read()
            .expect("moderation lock")
            .settings
            .get(room)
            .copied()
            .unwrap_or_default()
    }

    /// The word filter in force.
    pub fn filter(&self) -> Arc<WordFilter> {
        self.local.read().expect("moderation lock").filter.clone()
    }

    /// The word list in force (the configured one until an admin set one).
    pub fn words(&self) -> WordList {
        self.local.read().expect("moderation lock").words.clone()
    }

    /// Forgets ended bans (they are ignored anyway; this bounds memory).
    pub fn housekeeping(&self) {
        let now = danmaku_core::now_ms();
        self.local
            .write()
            .expect("moderation lock")
            .bans
            .retain(|_, b| b.until_ms > now);
    }
}

fn apply(l: &mut Local, change: ModerationChange) {
    match change {
        ModerationChange::Ban(b) => {
            l.bans.insert(ban_key(b.room.as_deref(), &b.user), b);
        }
        ModerationChange::Unban { room, user } => {
            l.bans.remove(&ban_key(room.as_deref(), &user));
        }
        ModerationChange::Settings { room, settings } => {
            if settings == RoomSettings::default() {
                l.settings.remove(&room);
            } else {
                l.settings.insert(room, settings);
            }
        }
        // Read with the page (see `sync`).
        ModerationChange::Words => {}
    }
}

/// The filter of `words`; a list that cannot be compiled (it was validated when
/// set) filters nothing rather than stopping the node.
fn compile(words: &WordList) -> WordFilter {
    WordFilter::new(&words.words, words.policy).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot compile the word list; filtering nothing");
        WordFilter::new(&[], words.policy).expect("an empty list compiles")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::config::FilterPolicy;
    use danmaku_core::ports::{MemoryModerationStore, RoomSettingsPatch};

    fn copy(store: Arc<MemoryModerationStore>) -> Arc<Moderation> {
        Moderation::new(
            store,
            &FilterSettings {
                words: vec!["bad".into()],
                ..Default::default()
            },
            &ModerationSettings::default(),
        )
        .unwrap()
    }

    fn ban(room: Option<&str>, user: &str, shadow: bool) -> Ban {
        Ban {
            room: room.map(str::to_string),
            user: user.into(),
            until_ms: danmaku_core::now_ms() + 60_000,
            shadow,
            by: "a".into(),
            at_ms: 0,
        }
    }

    /// Two nodes on one store: what one writes, the other applies on its next sync.
    #[tokio::test]
    async fn copies_follow_the_log() {
        let store = Arc::new(MemoryModerationStore::new());
        let (a, b) = (copy(store.clone()), copy(store.clone()));
        a.sync().await.unwrap();
        b.sync().await.unwrap();
        assert_eq!(b.filter().apply("so bad").unwrap(), "so ***");
        store.set_ban(&ban(Some("r"), "u", false)).await.unwrap();
        store.set_ban(&ban(None, "g", true)).await.unwrap();
        store
            .update_room_settings(
                "r",
                &RoomSettingsPatch {
                    muted: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        store
            .set_word_list(&WordList {
                words: vec!["worse".into()],
                policy: FilterPolicy::Reject,
            })
            .await
            .unwrap();
        assert_eq!(b.ban_state("r", "u"), BanState::None, "not synced yet");
        b.sync().await.unwrap();
        assert_eq!(b.ban_state("r", "u"), BanState::Banned);
        assert_eq!(b.ban_state("other", "u"), BanState::None);
        assert_eq!(b.ban_state("any", "g"), BanState::Shadow);
        assert!(b.room_settings("r").muted);
        assert_eq!(b.filter().apply("so bad").unwrap(), "so bad");
        assert!(b.filter().apply("worse").is_err());
        // A plain ban wins over a shadow ban.
        store.set_ban(&ban(Some("r"), "g", false)).await.unwrap();
        store.lift_ban(Some("r"), "u").await.unwrap();
        b.sync().await.unwrap();
        assert_eq!(b.ban_state("r", "g"), BanState::Banned);
        assert_eq!(b.ban_state("r", "u"), BanState::None);
    }

    /// A copy never synced is stale and refuses; a sync made on demand fixes it.
    #[tokio::test]
    async fn a_stale_copy_syncs_on_demand() {
        let store = Arc::new(MemoryModerationStore::new());
        let m = copy(store.clone());
        store.set_ban(&ban(Some("r"), "u", false)).await.unwrap();
        assert!(!m.is_fresh());
        m.ensure_fresh().await.unwrap();
        assert_eq!(m.ban_state("r", "u"), BanState::Banned);
    }
}
