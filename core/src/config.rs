//! One typed settings struct, read from an optional TOML file and then
//! `DANMAKU_<SECTION>__<KEY>` environment overrides. Unknown keys, in the file or
//! the environment, are errors. The loader takes the environment as an argument so
//! tests pass their own.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A secret that never prints.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

/// Everything the platform reads from its configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub filter: FilterSettings,
    pub live: LiveSettings,
    pub archive: ArchiveSettings,
    pub replay: ReplaySettings,
    pub bus: BusSettings,
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub scylla: ScyllaSettings,
}

/// Process-level settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address the HTTP/WebSocket server listens on.
    pub listen: String,
    /// Directory for the embedded stores, the generated secret and local Parquet.
    pub data_dir: PathBuf,
    /// Roles this process runs: any of `ingest`, `live`, `archive`, `replay-api`, or `all`.
    pub roles: Vec<String>,
    /// Node id (0..=1023) inside comment ids; unique per ingest node in a cluster.
    pub node_id: u16,
    /// Create a demo room session on start (`demo`), so a new user sees something.
    pub demo: bool,
    /// Seconds to wait for connections and the archive to drain on shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            roles: vec!["all".into()],
            node_id: 0,
            demo: true,
            shutdown_grace_secs: 30,
        }
    }
}

/// Token settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HMAC secret for tokens; empty = generated once and kept in the data dir.
    pub secret: Secret,
    /// Whether `POST /v1/auth/guest` hands out guest tokens.
    pub guest: bool,
    /// Lifetime of guest tokens, seconds.
    pub guest_ttl_secs: i64,
    /// Require a token to read (WebSocket, polling, replay).
    pub require_token_to_read: bool,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            secret: Secret::default(),
            guest: true,
            guest_ttl_secs: 24 * 3600,
            require_token_to_read: false,
        }
    }
}

/// Limits on what senders may do.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Longest comment, in characters (Unicode scalar values).
    pub max_text_chars: usize,
    /// Longest comment, in UTF-8 bytes.
    pub max_text_bytes: usize,
    /// Sustained comments per second per user.
    pub user_per_sec: u32,
    /// Burst per user.
    pub user_burst: u32,
    /// Sustained comments per second per room (all users).
    pub room_per_sec: u32,
    /// Burst per room.
    pub room_burst: u32,
    /// How long an idempotency key maps to its first id, seconds.
    pub idempotency_window_secs: u64,
    /// Longest wait for the Bus to acknowledge a comment before answering 503, ms.
    pub publish_timeout_ms: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 4096,
            max_text_chars: 100,
            max_text_bytes: 400,
            user_per_sec: 5,
            user_burst: 10,
            room_per_sec: 2000,
            room_burst: 4000,
            idempotency_window_secs: 600,
            publish_timeout_ms: 5000,
        }
    }
}

/// What to do with a comment containing a listed word.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FilterPolicy {
    /// Replace each listed word by `*`s and accept the comment.
    #[default]
    Mask,
    /// Reject the comment with `blocked_word`.
    Reject,
}

/// The sensitive-word filter.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSettings {
    /// Words to match (case-insensitive for ASCII).
    pub words: Vec<String>,
    /// Optional file with one word per line, added to `words`.
    pub words_file: Option<PathBuf>,
    /// Mask or reject.
    pub policy: FilterPolicy,
}

/// The live path: slices, hubs, WebSocket and polling.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveSettings {
    /// Length of a time slice, ms (1,000 ..= 3,600,000).
    pub slice_ms: i64,
    /// How long a slice stays hot (readable by cursor) after its end, ms; then it is archived.
    pub hot_retention_ms: i64,
    /// How far back "the most recent items" reach for a client without a cursor, ms.
    pub recent_ms: i64,
    /// Most recent items each room keeps in memory for resume and polling.
    pub ring_size: usize,
    /// Frames a WebSocket connection may have queued before it gets `gap`.
    pub ws_queue: usize,
    /// Longest long poll, ms.
    pub max_wait_ms: u64,
    /// Largest `limit` on polling.
    pub max_poll_limit: usize,
    /// Records the writer takes from the Bus per batch.
    pub writer_batch: usize,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            slice_ms: 10_000,
            hot_retention_ms: 300_000,
            recent_ms: 5_000,
            ring_size: 1024,
            ws_queue: 256,
            max_wait_ms: 30_000,
            max_poll_limit: 1000,
            writer_batch: 1024,
        }
    }
}

/// The archiver.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSettings {
    /// Where Parquet goes: `file:///path` or `s3://bucket/prefix`; empty = `<data dir>/archive`.
    pub url: String,
    /// How often the archiver looks for due slices, ms.
    pub poll_ms: u64,
    /// Most slices per batch.
    pub batch_slices: usize,
    /// How long a claimed batch is leased before another archiver may redo it, ms.
    pub lease_ms: u64,
    /// Window within which a sender's `stream_pos_ms` is trusted over the server estimate, ms.
    pub plausible_window_ms: i64,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            poll_ms: 500,
            batch_slices: 64,
            lease_ms: 30_000,
            plausible_window_ms: 30_000,
        }
    }
}

/// The replay API.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplaySettings {
    /// The replay cache's own Redis; empty = in-process only.
    pub redis_url: String,
    /// Most comments per 6-minute segment (gifts always kept).
    pub density_cap: usize,
    /// Bytes the in-process cache may hold.
    pub cache_bytes: u64,
    /// `max-age` of segments of a VOD still live, seconds.
    pub live_max_age_secs: u64,
    /// Largest `limit` on the range API.
    pub max_range_limit: usize,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            density_cap: 6000,
            cache_bytes: 64 << 20,
            live_max_age_secs: 5,
            max_range_limit: 5000,
        }
    }
}

/// The embedded Bus.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// Partitions of the embedded log (a room always maps to one).
    pub partitions: u32,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self { partitions: 4 }
    }
}

/// Kafka (the distributed Bus).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated; set = the Bus is Kafka.
    pub brokers: String,
    /// Topic of live comments.
    pub topic: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "danmaku.live".into(),
        }
    }
}

/// Redis (the distributed SliceStore).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Standalone Redis URL; set = the SliceStore is Redis.
    pub url: String,
    /// Comma-separated cluster node URLs; set = Redis Cluster.
    pub cluster: String,
}

/// ScyllaDB (the distributed ArchiveStore).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaSettings {
    /// Comma-separated host:port; set = the ArchiveStore is ScyllaDB.
    pub nodes: String,
    /// Keyspace.
    pub keyspace: String,
}

impl Default for ScyllaSettings {
    fn default() -> Self {
        Self {
            nodes: String::new(),
            keyspace: "danmaku".into(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration in {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Every role name.
pub const ALL_ROLES: [&str; 4] = ["ingest", "live", "archive", "replay-api"];

impl Settings {
    /// Loads `file` (if any), then applies `DANMAKU_<SECTION>__<KEY>` entries of `env`.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut root = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Invalid {
                        origin: path.display().to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("DANMAKU_") else {
                continue;
            };
            if rest == "CONFIG" {
                continue;
            }
            let Some((section, key)) = rest.split_once("__") else {
                return Err(ConfigError::Invalid {
                    origin: name.clone(),
                    message: "expected DANMAKU_<SECTION>__<KEY>".into(),
                });
            };
            let section = section.to_ascii_lowercase();
            let key = key.to_ascii_lowercase();
            let entry = root
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(table) = entry.as_table_mut() else {
                return Err(ConfigError::Invalid {
                    origin: name.clone(),
                    message: format!("{section} is not a section"),
                });
            };
            table.insert(key, env_value(value));
        }
        let origin = file
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "environment".into());
        let settings: Settings =
            toml::Value::Table(root)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Invalid {
                    origin: origin.clone(),
                    message: e.message().to_string(),
                })?;
        settings
            .validate()
            .map_err(|message| ConfigError::Invalid { origin, message })?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), String> {
        for r in &self.server.roles {
            if r != "all" && !ALL_ROLES.contains(&r.as_str()) {
                return Err(format!(
                    "unknown role {r:?}; roles are {ALL_ROLES:?} or \"all\""
                ));
            }
        }
        if self.server.node_id > crate::id::MAX_NODE {
            return Err(format!(
                "server.node_id must be at most {}",
                crate::id::MAX_NODE
            ));
        }
        if !(crate::slice::MIN_SLICE_MS..=crate::slice::MAX_SLICE_MS).contains(&self.live.slice_ms)
        {
            return Err("live.slice_ms must be within 1000..=3600000".into());
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            return Err("bus.partitions must be within 1..=1024".into());
        }
        if self.limits.user_per_sec == 0 || self.limits.room_per_sec == 0 {
            return Err("rate limits must be positive".into());
        }
        Ok(())
    }

    /// Whether this process runs `role`.
    pub fn runs(&self, role: &str) -> bool {
        self.server.roles.iter().any(|r| r == "all" || r == role)
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// Environment values are TOML scalars when they parse as one, else strings;
/// comma-separated lists for list-valued keys are handled by `split_list`.
fn env_value(raw: &str) -> toml::Value {
    if let Ok(v) = raw.parse::<i64>() {
        return toml::Value::Integer(v);
    }
    if let Ok(v) = raw.parse::<bool>() {
        return toml::Value::Boolean(v);
    }
    if raw.starts_with('[') {
        if let Ok(t) = format!("v = {raw}").parse::<toml::Table>() {
            if let Some(v) = t.get("v") {
                return v.clone();
            }
        }
    }
    toml::Value::String(raw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_anything() {
        let s = Settings::load(None, &env(&[])).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert!(s.auth.guest);
        assert_eq!(s.kafka.topic, "danmaku.live");
        assert!(s.runs("archive"));
    }

    #[test]
    fn file_then_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[auth]\nsecret = \"from-file\"\nguest = false\n[live]\nslice_ms = 2000\n",
        )
        .unwrap();
        let s = Settings::load(
            Some(&p),
            &env(&[
                ("DANMAKU_AUTH__SECRET", "from-env"),
                ("DANMAKU_SERVER__ROLES", "[\"ingest\"]"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.auth.secret.0, "from-env");
        assert!(!s.auth.guest);
        assert_eq!(s.live.slice_ms, 2000);
        assert!(s.runs("ingest") && !s.runs("live"));
    }

    #[test]
    fn unknown_keys_are_rejected_clearly() {
        let e = Settings::load(None, &env(&[("DANMAKU_AUTH__SECRTE", "x")])).unwrap_err();
        assert!(e.to_string().contains("secrte"), "{e}");
        let e = Settings::load(None, &env(&[("DANMAKU_NOPE__X", "1")])).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[server]\nlisten = \"x\"\ncolour = 1\n").unwrap();
        assert!(Settings::load(Some(&p), &env(&[]))
            .unwrap_err()
            .to_string()
            .contains("colour"));
    }

    #[test]
    fn secrets_are_masked() {
        let s = Settings::load(None, &env(&[("DANMAKU_AUTH__SECRET", "hunter2")])).unwrap();
        assert!(!s.to_toml().contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Settings::load(None, &env(&[("DANMAKU_LIVE__SLICE_MS", "5")])).is_err());
        assert!(Settings::load(None, &env(&[("DANMAKU_SERVER__ROLES", "[\"bogus\"]")])).is_err());
    }
}
