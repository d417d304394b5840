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
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub filter: FilterSettings,
    pub moderation: ModerationSettings,
    pub live: LiveSettings,
    pub archive: ArchiveSettings,
    pub replay: ReplaySettings,
    pub import: ImportSettings,
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
    /// Most HTTP connections this node serves at once (WebSockets leave this
    /// budget once upgraded: `live.max_connections` counts them). Past it a new
    /// connection gets `503 unavailable`, except `/healthz`, `/readyz` and
    /// `/metrics`, which a small reserve of connections still answers.
    pub max_connections: usize,
    /// Most HTTP connections from one client address (IPv6: one /64); 0 = no
    /// per-address cap. Behind a reverse proxy every client has the proxy's
    /// address: raise it or set 0 there.
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and headers), bytes; past it `431`.
    pub max_header_bytes: usize,
    /// Page cache of the embedded database (`danmaku.redb`: the embedded Bus,
    /// SliceStore and ArchiveStore), MiB. It never shrinks: this bounds what a
    /// burst of cold reads (replay loading an archived segment) keeps.
    pub embedded_cache_mb: usize,
    /// A separate address for `/metrics` (and `/healthz`, `/readyz`), e.g.
    /// `127.0.0.1:9090`; empty = `/metrics` on `listen`.
    pub metrics_listen: String,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer
    /// <metrics_token>` (else `401 unauthorized`); empty = open.
    pub metrics_token: Secret,
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
            max_connections: 10_000,
            max_connections_per_ip: 1024,
            max_header_bytes: 16 * 1024,
            embedded_cache_mb: 1024,
            metrics_listen: String::new(),
            metrics_token: Secret::default(),
        }
    }
}

/// What every HTTP answer says to browsers (CORS).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Origins whose pages may call the API from a browser
    /// (`Access-Control-Allow-Origin`), each `scheme://host[:port]` without a
    /// path; `["*"]` (the default) allows every origin. The API uses no
    /// cookies, so allowing every origin exposes nothing a page could not
    /// already read without a browser.
    pub cors_origins: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            cors_origins: vec!["*".into()],
        }
    }
}

impl HttpSettings {
    /// Checks `http.cors_origins` (called when the configuration loads): `"*"`
    /// alone, or origins of the form `http(s)://host[:port]`.
    pub fn check(&self) -> Result<(), String> {
        if self.cors_origins.iter().any(|o| o == "*") {
            if self.cors_origins.len() > 1 {
                return Err("http.cors_origins: \"*\" must be the only entry".into());
            }
            return Ok(());
        }
        for origin in &self.cors_origins {
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            let valid = rest.is_some_and(|host| {
                !host.is_empty()
                    && host.chars().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']')
                    })
            });
            if !valid {
                return Err(format!(
                    "http.cors_origins: {origin:?} is not an origin (scheme://host[:port], no path)"
                ));
            }
        }
        Ok(())
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
    /// Guest tokens (`POST /v1/auth/guest`) one client address may mint per
    /// minute (also the burst); past it `429 rate_limited`. IPv6 counts by /64.
    pub guest_tokens_per_ip_per_min: u32,
    /// Sustained comments per second from all guests of one client address
    /// together (on top of each guest's own `user_per_sec`).
    pub guest_sends_per_ip_per_sec: u32,
    /// Burst of `guest_sends_per_ip_per_sec`.
    pub guest_sends_per_ip_burst: u32,
    /// The request header a trusted reverse proxy writes the client address
    /// into (e.g. `x-forwarded-for`), for the per-address limits: the
    /// right-most address in it, the one the proxy added, is the client. Empty
    /// = the TCP peer (set it only behind such a proxy: clients can send the
    /// header themselves).
    pub trusted_proxy_header: String,
    /// Longest wait for the Bus to acknowledge a comment before answering 503, ms.
    pub publish_timeout_ms: u64,
    /// Longest time a request body may take to arrive, from the end of its
    /// headers, ms; past it `408` and the connection is closed.
    pub body_timeout_ms: u64,
    /// Slowest a request body may arrive on average after its first 5 seconds,
    /// bytes per second (`408` and close below it); 0 = no minimum rate.
    pub body_min_bytes_per_sec: u64,
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
            guest_tokens_per_ip_per_min: 30,
            guest_sends_per_ip_per_sec: 10,
            guest_sends_per_ip_burst: 20,
            trusted_proxy_header: String::new(),
            publish_timeout_ms: 5000,
            body_timeout_ms: 10_000,
            body_min_bytes_per_sec: 256,
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

/// Moderation: recalls and how each node follows the shared moderation state
/// (bans, room settings, the word list; API.md, Moderation).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationSettings {
    /// How long after sending a viewer may recall (delete) their own comment, seconds.
    pub recall_secs: u64,
    /// How often each node reads the shared moderation state's change log, ms
    /// (a ban, setting or word list made on any node holds on every node within
    /// about this plus one store round trip).
    pub sync_ms: u64,
    /// How old this node's copy of the moderation state may be before sends are
    /// refused with `503 unavailable` (the store cannot be reached, so a ban made
    /// elsewhere might be missed: fail closed), ms.
    pub stale_ms: u64,
}

impl Default for ModerationSettings {
    fn default() -> Self {
        Self {
            recall_secs: 120,
            sync_ms: 250,
            stale_ms: 3_000,
        }
    }
}

/// The live path: slices, hubs, WebSocket and polling.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveSettings {
    /// Length of a time slice, ms (1,000 ..= 3,600,000).
    pub slice_ms: i64,
    /// How long a slice stays hot (readable by cursor) after its end, ms: it is
    /// archived then (or earlier: a VOD's end, a graceful shutdown), and deleted
    /// from the SliceStore once both happened (archiving copies).
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
    /// A room's hub sends at most one frame per flush interval (the first item
    /// after a quiet interval goes out at once). The interval adapts to the room's
    /// audience, since a frame costs one write per viewer:
    /// `clamp(viewers × flush_per_viewer_us, flush_min_ms, flush_ms)`. This is the
    /// longest interval (that of the biggest rooms), ms; 0 = no batching.
    pub flush_ms: u64,
    /// The shortest flush interval (that of small rooms), ms; at most `flush_ms`.
    pub flush_min_ms: u64,
    /// Flush interval per viewer of the room, µs (see `flush_ms`).
    pub flush_per_viewer_us: u64,
    /// Plain comments per second per room shown live; past it the excess is dropped
    /// from live frames (gifts, system items and each sender's own comments never
    /// are; everything stays stored and replayable).
    pub display_budget_per_sec: u32,
    /// Interval of server pings; a client silent for two intervals is dropped.
    pub ping_interval_secs: u64,
    /// Most WebSocket connections this node holds; past it new ones are closed with 1013.
    pub max_connections: usize,
    /// Origins allowed to open WebSockets (exact `Origin` values); empty = any.
    pub allowed_origins: Vec<String>,
    /// The host and port `GET /xlive/web-room/v1/index/getDanmuInfo` names
    /// for `/sub` (`host:port`); empty = the request's `Host` header.
    pub sub_public_host: String,
    /// Poll requests per second this node serves comfortably; above it
    /// `next_poll_ms` grows so every client slows down together.
    pub poll_capacity_per_sec: u32,
    /// Longest a write to a blocked WebSocket may wait before the client is dropped, ms.
    pub write_timeout_ms: u64,
    /// Kernel send buffer of each WebSocket, bytes (0 = the OS default); a small
    /// one bounds the kernel memory a slow client can pin.
    pub ws_send_buffer_bytes: usize,
    /// Rooms the writer stores concurrently within one batch (one SliceStore append
    /// per room, pipelined on the Redis connection).
    pub writer_concurrency: usize,
    /// A slice with at least this many members is a big key: a metric, a log event,
    /// and the room's next slices get shorter.
    pub bigkey_members: u64,
    /// A slice with at least this many bytes is a big key (same consequences).
    pub bigkey_bytes: u64,
    /// Adapt each room's slice length to its rate (shorter for hot rooms, longer for
    /// quiet ones, within `slice_min_ms ..= slice_max_ms`); false = always `slice_ms`.
    pub adaptive_slices: bool,
    /// Shortest adaptive slice, ms (at least 1,000).
    pub slice_min_ms: i64,
    /// Longest adaptive slice, ms (at most 3,600,000).
    pub slice_max_ms: i64,
    /// Members the adaptive slice length aims for per slice (well under `bigkey_members`).
    pub slice_target_members: u64,
    /// Pause between two passes of the SCAN + MEMORY USAGE big-key scanner, ms; 0 = off.
    pub bigkey_scan_interval_ms: u64,
    /// Keys per second the scanner inspects at most (its rate limit).
    pub bigkey_scan_keys_per_sec: u64,
    /// Keys per scanner step (the SCAN `COUNT` hint).
    pub bigkey_scan_batch: usize,
    /// Keys `GET /v1/admin/bigkeys` lists at most, and the scanner remembers.
    pub bigkey_top: usize,
    /// Most room hubs this node keeps. Rooms with WebSocket viewers or long
    /// polls hold theirs; the others are a cache, dropped first at the cap. A
    /// new room past it (every hub held) gets `503 unavailable`.
    pub max_rooms: usize,
    /// A room hub no viewer, long poll or poll used for this long is dropped,
    /// seconds (the SliceStore still has every item).
    pub room_idle_secs: u64,
    /// Most long polls (`wait_ms > 0`) waiting at once on this node; past it
    /// `503 unavailable` with `Retry-After`.
    pub max_long_polls: usize,
    /// Most WebSocket resumes (`?cursor=`) sending their backlog at once on this
    /// node; past it the upgrade gets `503 unavailable` with `Retry-After`.
    pub max_concurrent_resumes: usize,
    /// Most bytes of backlog one resume sends (a page at least); past it the
    /// client gets `gap` with the cursor it reached and the connection closes
    /// (1008): it continues from there by polling or by reconnecting.
    pub resume_max_bytes: u64,
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
            writer_batch: 8192,
            flush_ms: 50,
            flush_min_ms: 2,
            flush_per_viewer_us: 4,
            display_budget_per_sec: 500,
            ping_interval_secs: 30,
            max_connections: 100_000,
            allowed_origins: Vec::new(),
            sub_public_host: String::new(),
            poll_capacity_per_sec: 20_000,
            write_timeout_ms: 10_000,
            ws_send_buffer_bytes: 0,
            writer_concurrency: 64,
            bigkey_members: 5_000,
            bigkey_bytes: 1 << 20,
            adaptive_slices: true,
            slice_min_ms: 1_000,
            slice_max_ms: 3_600_000,
            slice_target_members: 1_000,
            bigkey_scan_interval_ms: 300_000,
            bigkey_scan_keys_per_sec: 2_000,
            bigkey_scan_batch: 200,
            bigkey_top: 100,
            max_rooms: 100_000,
            room_idle_secs: 120,
            max_long_polls: 5_000,
            max_concurrent_resumes: 256,
            resume_max_bytes: 16 << 20,
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
    /// How long a claimed batch is leased, ms: the archiver working on it renews
    /// the lease every third of it, so another archiver redoes the batch only
    /// this long after its archiver died (the embedded store, at once on restart).
    pub lease_ms: u64,
    /// Window within which a sender's `stream_pos_ms` is trusted over the server estimate, ms.
    pub plausible_window_ms: i64,
    /// With an `s3://` url: the endpoint of an S3-compatible server (MinIO, Ceph,
    /// moto...), e.g. `http://127.0.0.1:9000`; empty = `AWS_ENDPOINT_URL` /
    /// `AWS_ENDPOINT` from the environment, else AWS S3 itself. Credentials come
    /// only from the standard `AWS_*` environment variables (or the instance's role).
    pub s3_endpoint: String,
    /// With an `s3://` url: the bucket's region; empty = `AWS_REGION` /
    /// `AWS_DEFAULT_REGION` from the environment, else `us-east-1`.
    pub s3_region: String,
    /// With an `s3://` url: allow a plain `http://` endpoint (false = only when
    /// `AWS_ALLOW_HTTP=true` is set).
    pub s3_allow_http: bool,
    /// With an `s3://` url: virtual-hosted-style requests (`https://<bucket>.<host>/key`)
    /// instead of path-style (`https://<host>/<bucket>/key`); with `s3_endpoint` set,
    /// the endpoint must then already name the bucket's host.
    pub s3_virtual_hosted: bool,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            poll_ms: 500,
            batch_slices: 64,
            lease_ms: 5_000,
            plausible_window_ms: 30_000,
            s3_endpoint: String::new(),
            s3_region: String::new(),
            s3_allow_http: false,
            s3_virtual_hosted: false,
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
    /// Key prefix of every entry in the replay Redis.
    pub redis_prefix: String,
    /// Longest wait for one replay Redis command, ms; past it the request goes on
    /// without the Redis tier (a cache never fails a request).
    pub redis_timeout_ms: u64,
    /// How long a node trusts its cached view of a VOD (session and archived
    /// count) before asking the ArchiveStore again, ms; 0 = ask on every request.
    pub meta_ttl_ms: u64,
    /// How long cached bodies of an ended VOD live in the cache tiers, seconds.
    pub ended_ttl_secs: u64,
    /// Seconds after a VOD's end during which its segments still get the live
    /// `max-age` instead of `immutable`, on top of the rule that they are
    /// `immutable` only once the VOD is archived (0 = as soon as it is).
    pub settle_secs: u64,
    /// `max-age` of the whole-VOD documents (Bilibili XML, DPlayer) and of the
    /// plain segment URLs of an ended VOD, seconds (they change when someone
    /// posts on the recording or a comment is deleted; only a segment's
    /// versioned URL is immutable: API.md, Segment versions).
    pub document_max_age_secs: u64,
    /// Most comments in one whole-VOD document (Bilibili XML, DPlayer), after each
    /// segment's density cap; spread evenly over the recording, gifts first.
    pub document_max_items: usize,
    /// How long `POST /v1/vods/{vod}/danmaku` waits for its comment to reach the
    /// SliceStore, to store it in the ArchiveStore at once (read your writes), ms.
    /// Past it the answer is still 202 and the archiver stores it on schedule.
    pub post_visible_ms: u64,
    /// Bytes the in-process cache of decoded rows may hold: each segment's rows
    /// sorted by (offset_ms, id), which the range API pages through, and each
    /// VOD's DPlayer document, which every `max` is cut from.
    pub rows_cache_bytes: u64,
    /// How long decoded rows stay cached unused, seconds: a reader paging through
    /// a segment keeps them; after a spike they go, and their memory with them.
    pub rows_idle_secs: u64,
    /// Most ArchiveStore loads (a segment, its rows, a whole-recording document)
    /// and document cuts this node runs at once; a request needing one more waits
    /// up to `cold_load_wait_ms`, then gets `503 unavailable` with `Retry-After`.
    pub max_cold_loads: usize,
    /// How long a request waits for one of the `max_cold_loads`, ms (0 = not at all).
    pub cold_load_wait_ms: u64,
    /// How long a node serves its snapshot of live and recent sessions for
    /// `GET /v1/vods` (the home page's listing) before reading the ArchiveStore
    /// again, ms; 0 = read it on every request.
    pub list_ttl_ms: u64,
}

impl Default for ReplaySettings {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            density_cap: 6000,
            cache_bytes: 64 << 20,
            live_max_age_secs: 5,
            max_range_limit: 5000,
            redis_prefix: "dmr:".into(),
            redis_timeout_ms: 200,
            meta_ttl_ms: 1000,
            ended_ttl_secs: 24 * 3600,
            settle_secs: 0,
            document_max_age_secs: 10,
            document_max_items: 100_000,
            post_visible_ms: 3000,
            rows_cache_bytes: 64 << 20,
            rows_idle_secs: 30,
            max_cold_loads: 16,
            cold_load_wait_ms: 1000,
            list_ttl_ms: 1000,
        }
    }
}

/// Importing recordings' comments (`POST /v1/vods/{vod}/import`, `danmaku
/// import`): the document is streamed, never held whole.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImportSettings {
    /// Largest document, bytes (`413 payload_too_large` above).
    pub max_bytes: u64,
    /// Longest time one import may take to arrive, seconds (the body is read
    /// as it is imported, so this covers the import's own work too); the
    /// minimum rate of `limits.body_min_bytes_per_sec` applies as for every body.
    pub body_timeout_secs: u64,
}

impl Default for ImportSettings {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            body_timeout_secs: 600,
        }
    }
}

/// The embedded Bus.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// Partitions of the embedded log (a room always maps to one).
    pub partitions: u32,
    /// Shortest time between two group commits of the embedded Bus, ms: a publish
    /// that arrives sooner waits for the rest of it and shares the next commit's
    /// fsync (one fsync per publish costs a core dearly at 1,000 sends/s). A
    /// publish after a quiet interval commits at once. 0 = commit whatever is
    /// queued as soon as the previous commit is done.
    pub group_commit_ms: u64,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            partitions: 4,
            group_commit_ms: 5,
        }
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
    /// Partitions of the topic when this process creates it (`create_topic`). A room
    /// always maps to one partition; changing the count of an existing topic moves rooms.
    pub partitions: u32,
    /// Replication factor when this process creates the topic.
    pub replication_factor: u32,
    /// Create the topic at start when it does not exist (development; production
    /// creates it with the command in the README).
    pub create_topic: bool,
    /// Producer `linger.ms`: how long records wait to share a produce request.
    pub linger_ms: u64,
    /// Producer `message.timeout.ms`: a record not acknowledged by then fails (the
    /// sender gets 503). Keep it below `limits.publish_timeout_ms`.
    pub message_timeout_ms: u64,
    /// Producer `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Consumer `session.timeout.ms`: how long a silent writer keeps its partitions.
    pub session_timeout_ms: u64,
    /// Consumer `max.poll.interval.ms`: a writer stuck longer (say Redis down) leaves
    /// the group; its partitions resume elsewhere from the committed offsets.
    pub max_poll_interval_ms: u64,
    /// How often librdkafka reports statistics (consumer lag per partition), ms; 0 = off.
    pub statistics_interval_ms: u64,
    /// Consumer `fetch.wait.max.ms`: how long a broker may hold a fetch with no new
    /// records. A real broker answers as soon as records arrive; brokers that wait
    /// the full time (librdkafka's mock cluster) add it to every comment's latency.
    pub fetch_wait_max_ms: u64,
    /// Extra librdkafka properties for the producer (security, tuning), as strings.
    pub producer: ClientProperties,
    /// Extra librdkafka properties for the consumers.
    pub consumer: ClientProperties,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "danmaku.live".into(),
            partitions: 12,
            replication_factor: 3,
            create_topic: false,
            linger_ms: 1,
            message_timeout_ms: 4_000,
            compression: "lz4".into(),
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            statistics_interval_ms: 5_000,
            fetch_wait_max_ms: 100,
            producer: ClientProperties::default(),
            consumer: ClientProperties::default(),
        }
    }
}

/// Free-form client properties (librdkafka names); values of keys that look like
/// secrets (`password`, `secret`, `jaas`, `token`) never print.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ClientProperties(pub BTreeMap<String, String>);

impl Serialize for ClientProperties {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            let lower = k.to_ascii_lowercase();
            let secret = ["password", "secret", "jaas", "token"]
                .iter()
                .any(|w| lower.contains(w));
            map.serialize_entry(k, if secret { "***" } else { v.as_str() })?;
        }
        map.end()
    }
}

/// Redis (the distributed SliceStore and the live nodes' notifications).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// Standalone Redis URL; set = the SliceStore is Redis.
    pub url: String,
    /// Comma-separated cluster node URLs; set = Redis Cluster.
    pub cluster: String,
    /// Prefix inside the hash tags of the shared keys (expiry-queue shards, archive
    /// batches), so several deployments or tests can share one Redis. Room keys are
    /// `dm:{room}:...` whatever it is.
    pub namespace: String,
    /// Shards of the expiry queue (`dm:{q<i>}:expiry`): on a cluster each shard is one
    /// slot, so more shards spread the archiver's work. Fixed for a deployment.
    pub queue_shards: u32,
    /// Longest wait for one Redis reply, ms (then the call fails and is retried).
    pub response_timeout_ms: u64,
    /// Longest wait for a connection, ms.
    pub connect_timeout_ms: u64,
    /// How long a room's highest seq (the idempotency high-water mark) outlives the
    /// room's last comment, seconds. Longer than any Bus redelivery.
    pub last_seq_ttl_secs: u64,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster: String::new(),
            namespace: String::new(),
            queue_shards: 16,
            response_timeout_ms: 2_000,
            connect_timeout_ms: 1_000,
            last_seq_ttl_secs: 7 * 24 * 3600,
        }
    }
}

/// ScyllaDB (the distributed ArchiveStore).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScyllaSettings {
    /// Comma-separated host:port; set = the ArchiveStore is ScyllaDB.
    pub nodes: String,
    /// Keyspace.
    pub keyspace: String,
    /// Replication of the keyspace, as a CQL map, used when `danmaku archive migrate`
    /// creates it (an existing keyspace is left alone). Production:
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`.
    pub replication: String,
    /// Consistency level of writes: `any`, `one`, `two`, `three`, `quorum`, `all`,
    /// `local_quorum`, `each_quorum` or `local_one`.
    pub write_consistency: String,
    /// Consistency level of reads (same names as `write_consistency`). Counts stay
    /// exact when reads and writes overlap (`quorum`/`local_quorum` on both).
    pub read_consistency: String,
    /// Most rows one comments partition `(vod, segment, shard)` may hold; a segment
    /// denser than this is spread over more shards (ScyllaDB warns from 100,000).
    pub partition_rows: u32,
    /// Most shards one 6-minute segment may be spread over.
    pub max_shards: u32,
    /// Rows per unlogged batch (every batch holds rows of one partition only).
    pub batch_rows: usize,
    /// Batches in flight at once while storing comments.
    pub write_concurrency: usize,
    /// Rows per page of paged reads.
    pub page_size: u32,
    /// Whether the driver waits for schema agreement after schema changes. Turn off
    /// only for single-node test peers without `system.peers` (kassandra).
    pub schema_agreement: bool,
    /// How long to wait for a connection to a node, ms.
    pub connect_timeout_ms: u64,
}

impl Default for ScyllaSettings {
    fn default() -> Self {
        Self {
            nodes: String::new(),
            keyspace: "danmaku".into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            write_consistency: "local_quorum".into(),
            read_consistency: "local_quorum".into(),
            partition_rows: 50_000,
            max_shards: 64,
            batch_rows: 64,
            write_concurrency: 16,
            page_size: 5_000,
            schema_agreement: true,
            connect_timeout_ms: 5_000,
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
        self.http.check()?;
        for r in &self.server.roles {
            if r != "all" && !ALL_ROLES.contains(&r.as_str()) {
                return Err(format!(
                    "unknown role {r:?}; roles are {ALL_ROLES:?} or \"all\""
                ));
            }
        }
        if self.moderation.sync_ms == 0 || self.moderation.stale_ms <= self.moderation.sync_ms {
            return Err(
                "moderation.sync_ms must be positive and below moderation.stale_ms".to_string(),
            );
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
        let (lo, hi) = (self.live.slice_min_ms, self.live.slice_max_ms);
        if lo < crate::slice::MIN_SLICE_MS || hi > crate::slice::MAX_SLICE_MS || lo > hi {
            return Err(
                "live.slice_min_ms ..= live.slice_max_ms must lie within 1000..=3600000".into(),
            );
        }
        if self.live.max_rooms == 0
            || self.live.max_long_polls == 0
            || self.live.max_concurrent_resumes == 0
        {
            return Err(
                "live.max_rooms, live.max_long_polls and live.max_concurrent_resumes must be positive"
                    .into(),
            );
        }
        if self.redis.queue_shards == 0 || self.redis.queue_shards > 16_384 {
            return Err("redis.queue_shards must be within 1..=16384".into());
        }
        if self.bus.partitions == 0 || self.bus.partitions > 1024 {
            return Err("bus.partitions must be within 1..=1024".into());
        }
        if self.server.max_connections == 0 {
            return Err("server.max_connections must be positive".into());
        }
        if !(1024..=1 << 20).contains(&self.server.max_header_bytes) {
            return Err("server.max_header_bytes must be within 1024..=1048576".into());
        }
        if self.limits.body_timeout_ms == 0 {
            return Err("limits.body_timeout_ms must be positive".into());
        }
        if self.limits.user_per_sec == 0 || self.limits.room_per_sec == 0 {
            return Err("rate limits must be positive".into());
        }
        if self.limits.guest_tokens_per_ip_per_min == 0
            || self.limits.guest_sends_per_ip_per_sec == 0
        {
            return Err(
                "limits.guest_* rates must be positive (turn guests off with auth.guest = false)"
                    .into(),
            );
        }
        if !self.limits.trusted_proxy_header.is_empty()
            && axum::http::HeaderName::from_bytes(self.limits.trusted_proxy_header.as_bytes())
                .is_err()
        {
            return Err("limits.trusted_proxy_header is not a valid header name".into());
        }
        self.scylla.check()?;
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

impl ScyllaSettings {
    /// Checks the `scylla.*` settings (called when the configuration loads).
    pub fn check(&self) -> Result<(), String> {
        let s = self;
        let ks = &s.keyspace;
        let ident_ok = !ks.is_empty()
            && ks.len() <= 48
            && ks.starts_with(|c: char| c.is_ascii_alphabetic())
            && ks.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident_ok {
            return Err(format!(
                "scylla.keyspace {ks:?}: letters, digits and _ only, starting with a letter, at most 48"
            ));
        }
        let r = s.replication.trim();
        if !(r.starts_with('{') && r.ends_with('}')) || r.contains(';') {
            return Err(format!(
                "scylla.replication {r:?} must be a CQL map such as {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ));
        }
        check_consistency(&s.write_consistency)
            .map_err(|e| format!("scylla.write_consistency: {e}"))?;
        check_consistency(&s.read_consistency)
            .map_err(|e| format!("scylla.read_consistency: {e}"))?;
        if s.partition_rows == 0 || s.partition_rows > i32::MAX as u32 {
            return Err("scylla.partition_rows must be positive".into());
        }
        if !(1..=1024).contains(&s.max_shards) {
            return Err("scylla.max_shards must be within 1..=1024".into());
        }
        if s.batch_rows == 0 || s.write_concurrency == 0 || s.page_size == 0 {
            return Err(
                "scylla.batch_rows, write_concurrency and page_size must be positive".into(),
            );
        }
        Ok(())
    }
}

/// The CQL consistency level names `scylla.*_consistency` accepts.
pub const CONSISTENCY_LEVELS: [&str; 9] = [
    "any",
    "one",
    "two",
    "three",
    "quorum",
    "all",
    "local_quorum",
    "each_quorum",
    "local_one",
];

fn check_consistency(name: &str) -> Result<(), String> {
    if CONSISTENCY_LEVELS.contains(&name.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(format!("unknown consistency level {name:?}"))
    }
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
    fn cors_origins_are_star_alone_or_origins() {
        let s = Settings::load(None, &env(&[])).unwrap();
        assert_eq!(s.http.cors_origins, vec!["*".to_string()]);
        let s = Settings::load(
            None,
            &env(&[(
                "DANMAKU_HTTP__CORS_ORIGINS",
                "[\"https://site.example\", \"http://127.0.0.1:9000\"]",
            )]),
        )
        .unwrap();
        assert_eq!(s.http.cors_origins.len(), 2);
        for bad in [
            "[\"*\", \"https://a.example\"]",
            "[\"https://a.example/path\"]",
            "[\"a.example\"]",
        ] {
            let err = Settings::load(None, &env(&[("DANMAKU_HTTP__CORS_ORIGINS", bad)]));
            assert!(err.is_err(), "{bad} must be refused");
        }
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
