//! The embedded ModerationStore: bans, room settings, the word list, the change
//! log and completed idempotency keys in their own redb file,
//! `<data dir>/moderation.redb`, every write fsynced before it returns (they
//! survive kill -9 and restarts on the same data dir).
//!
//! One process owns a data dir, so what only matters while the process runs
//! stays in memory ([`MemoryModerationStore`]): rate limits and unfinished
//! idempotency claims (a claim dies with its process anyway). Completed keys are
//! written to the file and loaded back into memory at open, so a claim is a
//! memory lookup and only a completion costs a write.

use async_trait::async_trait;
use danmaku_core::ports::{
    ban_key, Admission, Admit, Ban, ChangePage, Claim, IdempotencyKey, MemoryModerationStore,
    ModerationChange, ModerationError, ModerationSnapshot, ModerationStore, Rate, RoomSettings,
    RoomSettingsPatch, WordList, LOG_KEEP,
};
use redb::{ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// `version` → the last change's version.
const META: TableDefinition<&str, u64> = TableDefinition::new("mod_meta");
/// version → change JSON.
const LOG: TableDefinition<u64, &str> = TableDefinition::new("mod_log");
/// `<room or *>\0<user>` → ban JSON.
const BANS: TableDefinition<&str, &str> = TableDefinition::new("mod_bans");
/// (ban end ms, ban key): the bans by end, for the sweep.
const BANS_BY_END: TableDefinition<(i64, &str), ()> = TableDefinition::new("mod_bans_end");
/// room → settings JSON.
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("mod_settings");
/// `words` → word list JSON.
const WORDS: TableDefinition<&str, &str> = TableDefinition::new("mod_words");
/// encoded key → (fingerprint, id, expires ms).
const KEYS: TableDefinition<&str, (u64, u64, i64)> = TableDefinition::new("mod_keys");
/// (expires ms, encoded key): the completed keys by expiry, for the sweep.
const KEYS_BY_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("mod_keys_exp");

/// Expired keys (and ended bans) a write removes at most.
const SWEEP: usize = 64;

/// The embedded ModerationStore (see the module documentation).
#[derive(Clone)]
pub struct EmbeddedModerationStore {
    db: Arc<redb::Database>,
    memory: Arc<MemoryModerationStore>,
    committer: Arc<Committer>,
}

/// A completed idempotency key on its way to the file.
struct Completion {
    key: String,
    fingerprint: u64,
    id: u64,
    expires: i64,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Group commit of completed keys: a thread of its own writes every completion
/// waiting at once in one fsynced transaction (a completion is answered only
/// once on disk), so concurrent keyed sends share an fsync, as the embedded
/// Bus's publishes do.
struct Committer {
    tx: Option<tokio::sync::mpsc::Sender<Completion>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which releases the database.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Completions written in one transaction at most.
const GROUP: usize = 1024;

fn commit_loop(db: Arc<redb::Database>, mut rx: tokio::sync::mpsc::Receiver<Completion>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        let result = write_completions(&db, &batch).map_err(|e| e.to_string());
        for c in batch {
            let _ = c.done.send(result.clone());
        }
    }
}

fn write_completions(db: &redb::Database, batch: &[Completion]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut keys = txn.open_table(KEYS)?;
        let mut by_expiry = txn.open_table(KEYS_BY_EXPIRY)?;
        for c in batch {
            let value = (c.fingerprint, c.id, c.expires);
            if let Some(old) = keys.insert(c.key.as_str(), value)? {
                let (_, _, old_expires) = old.value();
                by_expiry.remove((old_expires, c.key.as_str()))?;
            }
            by_expiry.insert((c.expires, c.key.as_str()), ())?;
        }
        // Forget up to SWEEP keys past their window.
        let now = danmaku_core::now_ms();
        let expired: Vec<(i64, String)> = by_expiry
            .range(..(now, ""))?
            .take(SWEEP)
            .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
            .collect::<Result<_, _>>()?;
        for (at, k) in expired {
            by_expiry.remove((at, k.as_str()))?;
            keys.remove(k.as_str())?;
        }
    }
    Ok(txn.commit()?)
}

impl std::fmt::Debug for EmbeddedModerationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedModerationStore")
    }
}

fn failed(op: &'static str) -> impl Fn(redb::Error) -> ModerationError {
    move |e| {
        metrics::counter!("danmaku_embedded_errors_total", "op" => op).increment(1);
        ModerationError::unavailable(op).with_source(e)
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("moderation values serialize")
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, redb::Error> {
    serde_json::from_str(s)
        .map_err(|e| redb::Error::Io(std::io::Error::other(format!("corrupt {what}: {e}"))))
}

impl EmbeddedModerationStore {
    /// Opens (or creates) `<dir>/moderation.redb` and loads the completed
    /// idempotency keys still in their window.
    pub fn open(dir: &Path) -> Result<Self, redb::Error> {
        std::fs::create_dir_all(dir).map_err(redb::Error::Io)?;
        let db = redb::Database::create(dir.join("moderation.redb"))?;
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?;
            txn.open_table(LOG)?;
            txn.open_table(BANS)?;
            txn.open_table(BANS_BY_END)?;
            txn.open_table(SETTINGS)?;
            txn.open_table(WORDS)?;
            txn.open_table(KEYS)?;
            txn.open_table(KEYS_BY_EXPIRY)?;
        }
        txn.commit()?;
        let memory = Arc::new(MemoryModerationStore::new());
        let now = danmaku_core::now_ms();
        let read = db.begin_read()?;
        let keys = read.open_table(KEYS)?;
        for row in keys.iter()? {
            let (k, v) = row?;
            let (fingerprint, id, expires) = v.value();
            if expires > now {
                if let Some(key) = decode_key(k.value()) {
                    memory.complete_now(&key, fingerprint, id, (expires - now) as u64);
                }
            }
        }
        drop(keys);
        drop(read);
        let db = Arc::new(db);
        let (tx, rx) = tokio::sync::mpsc::channel(4 * GROUP);
        let thread = {
            let db = db.clone();
            std::thread::Builder::new()
                .name("moderation-commit".into())
                .spawn(move || commit_loop(db, rx))
                .map_err(redb::Error::Io)?
        };
        Ok(Self {
            db,
            memory,
            committer: Arc::new(Committer {
                tx: Some(tx),
                thread: Some(thread),
            }),
        })
    }

    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, ModerationError>
    where
        T: Send + 'static,
        F: FnOnce(&redb::Database) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r.map_err(failed(op)),
            Err(e) => Err(ModerationError::other(op).with_source(e)),
        }
    }

    /// One write transaction that logs `change` under the next version after `f`.
    async fn logged<F>(&self, op: &'static str, f: F) -> Result<String, ModerationError>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(String, String), redb::Error>
            + Send
            + 'static,
    {
        self.run(op, move |db| {
            let txn = db.begin_write()?;
            let out = {
                let (change, out) = f(&txn)?;
                let mut meta = txn.open_table(META)?;
                let version = meta.get("version")?.map_or(0, |v| v.value()) + 1;
                meta.insert("version", version)?;
                let mut log = txn.open_table(LOG)?;
                log.insert(version, change.as_str())?;
                if version > LOG_KEEP {
                    let old: Vec<u64> = log
                        .range(..=version - LOG_KEEP)?
                        .take(SWEEP)
                        .map(|r| r.map(|(k, _)| k.value()))
                        .collect::<Result<_, _>>()?;
                    for v in old {
                        log.remove(v)?;
                    }
                }
                sweep_bans(&txn)?;
                out
            };
            txn.commit()?;
            Ok(out)
        })
        .await
    }
}

/// Removes up to [`SWEEP`] ended bans (through their index by end).
fn sweep_bans(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let now = danmaku_core::now_ms();
    let mut bans = txn.open_table(BANS)?;
    let mut by_end = txn.open_table(BANS_BY_END)?;
    let ended: Vec<(i64, String)> = by_end
        .range(..=(now, ""))?
        .take(SWEEP)
        .map(|r| r.map(|(k, _)| (k.value().0, k.value().1.to_string())))
        .collect::<Result<_, _>>()?;
    for (end, key) in ended {
        by_end.remove((end, key.as_str()))?;
        bans.remove(key.as_str())?;
    }
    Ok(())
}

/// Writes (`Some`) or removes (`None`) the ban under `key`, keeping its index by end.
fn put_ban(txn: &redb::WriteTransaction, key: &str, ban: Option<&Ban>) -> Result<(), redb::Error> {
    let mut bans = txn.open_table(BANS)?;
    let mut by_end = txn.open_table(BANS_BY_END)?;
    let old = match bans.remove(key)? {
        Some(v) => Some(parse::<Ban>("ban", v.value())?),
        None => None,
    };
    if let Some(old) = old {
        by_end.remove((old.until_ms, key))?;
    }
    if let Some(ban) = ban {
        bans.insert(key, json(ban).as_str())?;
        by_end.insert((ban.until_ms, key), ())?;
    }
    Ok(())
}

/// The inverse of [`IdempotencyKey::encoded`].
fn decode_key(s: &str) -> Option<IdempotencyKey> {
    let (ulen, rest) = s.split_once(':')?;
    let (slen, rest) = rest.split_once(':')?;
    let (ulen, slen): (usize, usize) = (ulen.parse().ok()?, slen.parse().ok()?);
    let user = rest.get(..ulen)?;
    let rest = rest.get(ulen..)?.strip_prefix(':')?;
    let scope = rest.get(..slen)?;
    let key = rest.get(slen..)?.strip_prefix(':')?;
    Some(IdempotencyKey {
        user: user.to_string(),
        scope: scope.to_string(),
        key: key.to_string(),
    })
}

#[async_trait]
impl ModerationStore for EmbeddedModerationStore {
    async fn set_ban(&self, ban: &Ban) -> Result<(), ModerationError> {
        let ban = ban.clone();
        self.logged("moderation_ban", move |txn| {
            put_ban(txn, &ban_key(ban.room.as_deref(), &ban.user), Some(&ban))?;
            Ok((json(&ModerationChange::Ban(ban)), String::new()))
        })
        .await
        .map(|_| ())
    }

    async fn lift_ban(&self, room: Option<&str>, user: &str) -> Result<(), ModerationError> {
        let room = room.map(str::to_string);
        let user = user.to_string();
        self.logged("moderation_unban", move |txn| {
            put_ban(txn, &ban_key(room.as_deref(), &user), None)?;
            Ok((json(&ModerationChange::Unban { room, user }), String::new()))
        })
        .await
        .map(|_| ())
    }

    async fn bans(&self, room: Option<&str>, now_ms: i64) -> Result<Vec<Ban>, ModerationError> {
        let prefix = ban_key(room, "");
        let room = room.map(str::to_string);
        self.run("moderation_bans", move |db| {
            let read = db.begin_read()?;
            let bans = read.open_table(BANS)?;
            let mut out = Vec::new();
            for row in bans.range(prefix.as_str()..)? {
                let (k, v) = row?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                let ban: Ban = parse("ban", v.value())?;
                if ban.until_ms > now_ms && ban.room == room {
                    out.push(ban);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn update_room_settings(
        &self,
        room: &str,
        patch: &RoomSettingsPatch,
    ) -> Result<RoomSettings, ModerationError> {
        let room = room.to_string();
        let patch = *patch;
        let out = self
            .logged("moderation_settings", move |txn| {
                let mut table = txn.open_table(SETTINGS)?;
                let current: RoomSettings = match table.get(room.as_str())? {
                    Some(v) => parse("settings", v.value())?,
                    None => RoomSettings::default(),
                };
                let settings = patch.apply(current);
                let encoded = json(&settings);
                table.insert(room.as_str(), encoded.as_str())?;
                Ok((
                    json(&ModerationChange::Settings { room, settings }),
                    encoded,
                ))
            })
            .await?;
        serde_json::from_str(&out).map_err(|e| ModerationError::other("settings").with_source(e))
    }

    async fn room_settings(&self, room: &str) -> Result<RoomSettings, ModerationError> {
        let room = room.to_string();
        self.run("moderation_settings_get", move |db| {
            let read = db.begin_read()?;
            let table = read.open_table(SETTINGS)?;
            match table.get(room.as_str())? {
                Some(v) => parse("settings", v.value()),
                None => Ok(RoomSettings::default()),
            }
        })
        .await
    }

    async fn set_word_list(&self, words: &WordList) -> Result<(), ModerationError> {
        let encoded = json(words);
        self.logged("moderation_words", move |txn| {
            txn.open_table(WORDS)?.insert("words", encoded.as_str())?;
            Ok((json(&ModerationChange::Words), String::new()))
        })
        .await
        .map(|_| ())
    }

    async fn word_list(&self) -> Result<Option<WordList>, ModerationError> {
        self.run("moderation_words_get", |db| {
            let read = db.begin_read()?;
            let table = read.open_table(WORDS)?;
            match table.get("words")? {
                Some(v) => parse("word list", v.value()).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Option<ChangePage>, ModerationError> {
        self.run("moderation_changes", move |db| {
            let read = db.begin_read()?;
            let version = read
                .open_table(META)?
                .get("version")?
                .map_or(0, |v| v.value());
            if after > version {
                return Ok(None);
            }
            let log = read.open_table(LOG)?;
            let oldest = log.first()?.map_or(version + 1, |(k, _)| k.value());
            if after + 1 < oldest {
                return Ok(None);
            }
            let mut changes = Vec::new();
            for row in log.range(after + 1..)?.take(limit.max(1)) {
                let (k, v) = row?;
                changes.push((k.value(), parse::<ModerationChange>("change", v.value())?));
            }
            Ok(Some(ChangePage { version, changes }))
        })
        .await
    }

    async fn snapshot(&self, now_ms: i64) -> Result<ModerationSnapshot, ModerationError> {
        self.run("moderation_snapshot", move |db| {
            let read = db.begin_read()?;
            let mut snap = ModerationSnapshot {
                version: read
                    .open_table(META)?
                    .get("version")?
                    .map_or(0, |v| v.value()),
                ..Default::default()
            };
            for row in read.open_table(BANS)?.iter()? {
                let (_, v) = row?;
                let ban: Ban = parse("ban", v.value())?;
                if ban.until_ms > now_ms {
                    snap.bans.push(ban);
                }
            }
            for row in read.open_table(SETTINGS)?.iter()? {
                let (k, v) = row?;
                snap.settings
                    .push((k.value().to_string(), parse("settings", v.value())?));
            }
            if let Some(v) = read.open_table(WORDS)?.get("words")? {
                snap.words = Some(parse("word list", v.value())?);
            }
            Ok(snap)
        })
        .await
    }

    async fn claim_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        claim_ttl_ms: u64,
    ) -> Result<Claim, ModerationError> {
        Ok(self.memory.claim_now(key, fingerprint, claim_ttl_ms))
    }

    async fn complete_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
        id: u64,
        window_ms: u64,
    ) -> Result<(), ModerationError> {
        let expires = danmaku_core::now_ms().saturating_add(window_ms as i64);
        let (done, written) = tokio::sync::oneshot::channel();
        let completion = Completion {
            key: key.encoded(),
            fingerprint,
            id,
            expires,
            done,
        };
        let closed = || ModerationError::other("moderation_complete: the committer stopped");
        let tx = self.committer.tx.as_ref().ok_or_else(closed)?;
        tx.send(completion).await.map_err(|_| closed())?;
        match written.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                metrics::counter!("danmaku_embedded_errors_total", "op" => "moderation_complete")
                    .increment(1);
                return Err(ModerationError::unavailable("moderation_complete").with_source(e));
            }
            Err(_) => return Err(closed()),
        }
        self.memory.complete_now(key, fingerprint, id, window_ms);
        Ok(())
    }

    async fn release_key(
        &self,
        key: &IdempotencyKey,
        fingerprint: u64,
    ) -> Result<(), ModerationError> {
        self.memory.release_now(key, fingerprint);
        Ok(())
    }

    async fn take(&self, key: &str, rate: Rate) -> Result<Result<(), u64>, ModerationError> {
        Ok(self.memory.take_now(key, rate))
    }

    async fn admit(&self, admission: &Admission<'_>) -> Result<Admit, ModerationError> {
        // Limits and unfinished claims are memory; completed keys are loaded
        // into it: the whole decision is one memory step.
        Ok(self.memory.admit_now(admission))
    }
}

/// How many completed keys the file holds (tests).
#[cfg(test)]
fn stored_keys(store: &EmbeddedModerationStore) -> u64 {
    use redb::ReadableTableMetadata;
    let read = store.db.begin_read().unwrap();
    read.open_table(KEYS).unwrap().len().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    danmaku_core::moderation_suite!(moderation_embedded, async {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedModerationStore::open(dir.path()).unwrap());
        (dir, (store.clone(), store))
    });

    /// Ended bans leave the file with the next write (through the index by end),
    /// a replaced ban leaves no stale index entry behind.
    #[tokio::test]
    async fn ended_bans_are_swept() {
        use redb::ReadableTableMetadata;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedModerationStore::open(dir.path()).unwrap();
        let now = danmaku_core::now_ms();
        let ban = |user: &str, until_ms: i64| Ban {
            room: Some("r".into()),
            user: user.into(),
            until_ms,
            shadow: false,
            by: "a".into(),
            at_ms: now,
        };
        store.set_ban(&ban("old", now - 1)).await.unwrap();
        store.set_ban(&ban("kept", now + 60_000)).await.unwrap();
        store.set_ban(&ban("kept", now + 120_000)).await.unwrap();
        let read = store.db.begin_read().unwrap();
        assert_eq!(read.open_table(BANS).unwrap().len().unwrap(), 1);
        assert_eq!(read.open_table(BANS_BY_END).unwrap().len().unwrap(), 1);
    }

    #[test]
    fn keys_decode_back() {
        for k in [
            IdempotencyKey {
                user: "u:1".into(),
                scope: "room:r".into(),
                key: "a:b".into(),
            },
            IdempotencyKey {
                user: String::new(),
                scope: "vod:v".into(),
                key: String::new(),
            },
        ] {
            assert_eq!(decode_key(&k.encoded()), Some(k));
        }
        assert_eq!(decode_key("9:1:x"), None);
    }

    /// Bans, settings, words, the log and completed keys survive a reopen.
    #[tokio::test]
    async fn state_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let key = IdempotencyKey {
            user: "u".into(),
            scope: "room:r".into(),
            key: "k".into(),
        };
        let ban = Ban {
            room: Some("r".into()),
            user: "troll".into(),
            until_ms: danmaku_core::now_ms() + 60_000,
            shadow: true,
            by: "admin".into(),
            at_ms: 1,
        };
        {
            let store = EmbeddedModerationStore::open(dir.path()).unwrap();
            store.set_ban(&ban).await.unwrap();
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
            assert_eq!(store.claim_key(&key, 5, 10_000).await.unwrap(), Claim::New);
            store.complete_key(&key, 5, 99, 60_000).await.unwrap();
            assert_eq!(stored_keys(&store), 1);
        }
        let store = EmbeddedModerationStore::open(dir.path()).unwrap();
        assert_eq!(store.bans(Some("r"), 0).await.unwrap(), vec![ban]);
        assert!(store.room_settings("r").await.unwrap().muted);
        assert_eq!(
            store.claim_key(&key, 5, 10_000).await.unwrap(),
            Claim::Existing(99)
        );
        assert_eq!(
            store.claim_key(&key, 6, 10_000).await.unwrap(),
            Claim::Conflict
        );
        let page = store.changes_after(0, 10).await.unwrap().unwrap();
        assert_eq!(page.version, 2);
    }
}
