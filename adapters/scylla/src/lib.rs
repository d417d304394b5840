//! The ScyllaDB ArchiveStore ([`ScyllaArchiveStore`], selected by `scylla.nodes`),
//! its schema migration ([`migrate`], the CQL in `infra/cql/schema.cql`), and, for
//! tests (feature `kassandra`, or this crate's own tests), [`testserver`]: an
//! in-process CQL server.
//!
//! # What the adapter asks of the server
//!
//! Only what a whole-partition read by key needs: prepared INSERT/SELECT/DELETE of
//! int, bigint and text values, unlogged batches of one partition, logged batches
//! for the two session tables, and paged SELECTs by the full partition key. No
//! clustering-range predicates, ORDER BY, COUNT, TTL or lightweight transactions:
//! a 6-minute segment is the unit the replay API reads and caches anyway, so it is
//! read whole and sorted here. This is also exactly what the in-process test peer
//! (kassandra) implements correctly.
//!
//! # Layout (DESIGN §8)
//!
//! - `vods` (by vod) and `vods_by_room` (by room, every session field), written
//!   together in a logged batch; `sessions_by_room` reads the room's partition and
//!   sorts newest first here.
//! - `vod_video` (by vod): a session's `video_url`, read beside `vods` (and for
//!   each session a listing returns).
//! - `vods_by_day` (by the UTC day a session started) and `vods_open` (one
//!   partition: the sessions not ended), written in the same logged batch as
//!   `vods`: the listings across rooms. `recent_sessions` reads days from
//!   tomorrow (a clock ahead) back [`RECENT_DAYS`] days, stopping once it has
//!   enough.
//! - `comments`, partitioned by `(vod, segment, shard)` and clustered by
//!   `(offset_ms, id)`.
//! - `vod_segments`, one small partition per VOD: the shard generations of each
//!   segment and observed row counts (see below). `count` and `last_segment` read
//!   only this partition.
//!
//! # Shards
//!
//! A segment's rows go to a *generation* of `n` shards `[first, first + n)`; a row's
//! shard in it is `first + mix(id) % n`, a pure function, so rewriting a row (a
//! redone batch) overwrites it in place. The first generation of a segment is sized
//! from the observed density: the previous segment's rows (plus a quarter) and the
//! rows at hand, over `scylla.partition_rows`. When a write would push one of the
//! current generation's shards past that bound, a new generation, twice as wide, is
//! declared first and takes the new rows; full shards take no more. A generation is
//! declared in `vod_segments` before any row is written to it, so readers always
//! know every shard to read.
//!
//! # Counts without COUNT, idempotently
//!
//! After writing, the adapter reads back the ids of every partition it wrote and
//! records the number as an observation row `(segment, shard, n)` in
//! `vod_segments` (n is part of the clustering key, so concurrent observations
//! never overwrite each other). Rows are only ever added, so the largest
//! observation of a shard is its row count: the writer whose read-back comes last
//! saw every write acknowledged before it, including its own. Smaller observations
//! are deleted (single-row deletes). `count(vod)` is the sum of the largest
//! observations; a redo writes the same rows to the same keys and observes the same
//! numbers, so nothing is counted twice. The cost: one read of the ids of each
//! partition a batch wrote to.
//!
//! A row redone after its segment gained a generation would be placed in the new
//! one; so when a segment has older generations (or its current one looks full),
//! the shards every generation would hold the incoming ids in are read first, ids
//! already there are skipped, and the placement is planned again for the rest.
//! A segment with one generation (the usual case) needs no read before writing.
//!
//! The row bound holds exactly for one writer per segment; two archivers writing
//! the same segment at once may each add their rows to a shard that had room for
//! one of them (by at most one batch).
//!
//! # Deletions
//!
//! A deletion is a marker row in `deleted_comments` (one small partition per
//! VOD), never a removal from `comments`: rows are only ever added there, which
//! the counts above rely on. Before writing the marker the adapter looks the id
//! up in the shards every generation of the comment's segment would hold it in
//! (every segment of the VOD if it is not there) and records whether it was
//! stored (`present`). `read_segment` leaves marked ids out, `upsert_comments`
//! skips them (so a deletion applied before its comment's upsert keeps it out),
//! `count` is the observed rows minus the present markers, and the version is
//! (count, present markers). Applying a deletion again finds its marker and
//! changes nothing. `segments` and `last_segment` leave out a segment whose
//! every comment was deleted: a segment with more observed rows than the VOD
//! has present markers keeps one for sure; the ids of any other are read.
//!
//! # Races (no LWT)
//!
//! - `create_session` and `end_session` read, then write. Two concurrent creates of
//!   the same vod id both succeed (the last write wins); two concurrent ends both
//!   succeed and the later `ended_at` stays. Vod ids are generated by the server
//!   and sessions are ended by the site's backend, so neither happens in practice.
//! - Two archivers redoing the *same* batch at the same moment while its segment
//!   gains a generation may store a row in two shards: reads return it once (rows
//!   are deduplicated by id), `count` may count it twice.
//! - A comment redone with a different offset (its session was ended between the
//!   two attempts and the offset clamped) is stored at both offsets; reads return it
//!   once.

use async_trait::async_trait;
use danmaku_core::config::ScyllaSettings;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{
    ArchiveError, ArchiveStore, ArchivedComment, ArchivedDeletion, BoxError, VodVersion,
};
use danmaku_core::vod::{segment_of, Session};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session as CqlSession;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::frame::types::Consistency;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The CQL schema, as shipped in `infra/cql/schema.cql`.
pub const SCHEMA_CQL: &str = include_str!("../../../infra/cql/schema.cql");

/// `vod_segments.entry` of a shard generation.
const ENTRY_GENERATION: i32 = 0;
/// `vod_segments.entry` of a row-count observation.
const ENTRY_OBSERVED: i32 = 1;

/// Why the ScyllaDB adapter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ScyllaError {
    /// A `scylla.*` setting is invalid.
    #[error("invalid scylla settings: {0}")]
    Settings(String),
    /// No session could be opened to `scylla.nodes`.
    #[error("cannot connect to {nodes}: {message}")]
    Connect { nodes: String, message: String },
    /// A schema statement failed.
    #[error("schema statement failed: {statement}: {message}")]
    Schema { statement: String, message: String },
    /// Preparing the adapter's statements failed (usually: the schema is missing).
    #[error("cannot prepare statements (run `danmaku archive migrate` first?): {0}")]
    Prepare(String),
}

/// Parses a consistency level name (`local_quorum`, `one`, ...; any case).
pub fn parse_consistency(name: &str) -> Result<Consistency, String> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "any" => Consistency::Any,
        "one" => Consistency::One,
        "two" => Consistency::Two,
        "three" => Consistency::Three,
        "quorum" => Consistency::Quorum,
        "all" => Consistency::All,
        "local_quorum" => Consistency::LocalQuorum,
        "each_quorum" => Consistency::EachQuorum,
        "local_one" => Consistency::LocalOne,
        other => return Err(format!("unknown consistency level {other:?}")),
    })
}

/// Checks the `scylla.*` settings: the pure checks of
/// [`ScyllaSettings::check`](danmaku_core::config::ScyllaSettings::check), run again
/// when the adapter connects.
pub fn check_settings(s: &ScyllaSettings) -> Result<(), String> {
    s.check()
}

/// The schema statements of [`SCHEMA_CQL`] for `keyspace` and `replication`, in
/// order, without comments or the closing `;`.
pub fn schema_statements(keyspace: &str, replication: &str) -> Vec<String> {
    let text: String = SCHEMA_CQL
        .lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with("CREATE KEYSPACE") {
                format!("CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}")
            } else {
                s.replace(" danmaku.", &format!(" {keyspace}."))
            }
        })
        .collect()
}

/// Opens a driver session to `settings.nodes`.
async fn open_session(settings: &ScyllaSettings) -> Result<CqlSession, ScyllaError> {
    check_settings(settings).map_err(ScyllaError::Settings)?;
    let nodes: Vec<&str> = settings
        .nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if nodes.is_empty() {
        return Err(ScyllaError::Settings("scylla.nodes is empty".into()));
    }
    SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms.max(1)))
        .auto_await_schema_agreement(settings.schema_agreement)
        .build()
        .await
        .map_err(|e| ScyllaError::Connect {
            nodes: settings.nodes.clone(),
            message: e.to_string(),
        })
}

/// Creates the keyspace (with `scylla.replication`) and the tables of
/// `infra/cql/schema.cql` where missing. Idempotent: run it as often as you like
/// (`danmaku archive migrate`).
pub async fn migrate(settings: &ScyllaSettings) -> Result<(), ScyllaError> {
    let session = open_session(settings).await?;
    migrate_session(&session, settings).await
}

async fn migrate_session(
    session: &CqlSession,
    settings: &ScyllaSettings,
) -> Result<(), ScyllaError> {
    for statement in schema_statements(&settings.keyspace, settings.replication.trim()) {
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(|e| ScyllaError::Schema {
                statement: statement.clone(),
                message: e.to_string(),
            })?;
    }
    tracing::info!(keyspace = %settings.keyspace, "scylla schema is in place");
    Ok(())
}

/// The stable hash that places a comment id within a generation of shards. Never
/// change it: stored rows were placed with it (splitmix64's finalizer).
pub fn mix(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A generation of shards: `[first, first + count)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Generation {
    pub first: i32,
    pub count: i32,
}

impl Generation {
    /// The shard of comment `id` in this generation.
    pub fn shard_of(&self, id: u64) -> i32 {
        self.first + (mix(id) % self.count.max(1) as u64) as i32
    }
}

/// What `vod_segments` says about one segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentState {
    /// Declared generations.
    pub generations: BTreeSet<Generation>,
    /// Every observation row: shard -> the row counts observed (ascending).
    pub observed: BTreeMap<i32, BTreeSet<i32>>,
}

impl SegmentState {
    /// The largest observation of `shard` (its row count), 0 if none.
    pub fn rows_in(&self, shard: i32) -> i64 {
        self.observed
            .get(&shard)
            .and_then(|ns| ns.last())
            .map_or(0, |&n| n as i64)
    }

    /// Rows of the segment: the sum of each shard's largest observation.
    pub fn rows(&self) -> i64 {
        self.observed.keys().map(|&s| self.rows_in(s)).sum()
    }

    /// Every shard that may hold rows of the segment.
    pub fn shards(&self) -> BTreeSet<i32> {
        let mut out: BTreeSet<i32> = self.observed.keys().copied().collect();
        for g in &self.generations {
            out.extend(g.first..g.first + g.count);
        }
        out
    }

    /// The generation new rows go to: the one starting last (the widest on a tie,
    /// so that every writer picks the same one).
    pub fn current(&self) -> Option<Generation> {
        self.generations
            .iter()
            .max_by_key(|g| (g.first, g.count))
            .copied()
    }

    fn end(&self) -> i32 {
        self.shards().last().map_or(0, |s| s + 1)
    }
}

/// Where a write of new rows to one segment goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// A generation to declare before writing (not yet in `vod_segments`).
    pub declare: Option<Generation>,
    /// The generation the rows are written to.
    pub place: Generation,
    /// Other generations, which may already hold some of the rows (a redo).
    pub check: Vec<Generation>,
}

/// Chooses where `ids` (the rows about to be written to a segment) go, given what
/// the segment holds (`state`), the previous segment's row count (`prev_rows`), the
/// row bound per partition and the most shards per segment. Pure.
pub fn place_rows(
    state: &SegmentState,
    prev_rows: i64,
    ids: &[u64],
    bound: i64,
    max_shards: i32,
) -> Placement {
    let bound = bound.max(1);
    let incoming = ids.len() as i64;
    let width =
        |rows: i64| -> i32 { ((rows + bound - 1) / bound).clamp(1, i32::MAX as i64) as i32 };
    let check_except = |g: Generation| -> Vec<Generation> {
        state
            .generations
            .iter()
            .copied()
            .filter(|o| *o != g)
            .collect()
    };
    let Some(current) = state.current() else {
        // The segment's first rows: room for the previous segment's density plus a
        // quarter, and for twice the rows at hand.
        let want = width((prev_rows + prev_rows / 4).max(incoming * 2));
        let g = Generation {
            first: 0,
            count: want.min(max_shards.max(1)),
        };
        return Placement {
            declare: Some(g),
            place: g,
            check: Vec::new(),
        };
    };
    let mut adding: HashMap<i32, i64> = HashMap::new();
    for &id in ids {
        *adding.entry(current.shard_of(id)).or_default() += 1;
    }
    let fits = adding
        .iter()
        .all(|(&shard, &n)| state.rows_in(shard) + n <= bound);
    let first = state.end();
    if fits || first >= max_shards {
        if !fits {
            tracing::warn!(
                shards = first,
                "segment has reached scylla.max_shards; its partitions grow past scylla.partition_rows"
            );
        }
        return Placement {
            declare: None,
            place: current,
            check: check_except(current),
        };
    }
    let want = (current.count.saturating_mul(2)).max(width(incoming * 2));
    let g = Generation {
        first,
        count: want.min(max_shards - first).max(1),
    };
    Placement {
        declare: Some(g),
        place: g,
        check: check_except(g),
    }
}

/// The prepared statements, each with its consistency level and page size.
struct Statements {
    vod_get: PreparedStatement,
    vod_put: PreparedStatement,
    by_room_put: PreparedStatement,
    by_room_get: PreparedStatement,
    comment_put: PreparedStatement,
    comments_get: PreparedStatement,
    comment_ids_get: PreparedStatement,
    segments_get: PreparedStatement,
    segment_put: PreparedStatement,
    segment_del: PreparedStatement,
    video_get: PreparedStatement,
    video_put: PreparedStatement,
    video_del: PreparedStatement,
    by_day_put: PreparedStatement,
    by_day_get: PreparedStatement,
    open_put: PreparedStatement,
    open_del: PreparedStatement,
    open_get: PreparedStatement,
    deleted_get: PreparedStatement,
    deleted_put: PreparedStatement,
}

/// The ScyllaDB ArchiveStore. See the module documentation for the layout, the
/// shards, the counters and the races.
pub struct ScyllaArchiveStore {
    session: Arc<CqlSession>,
    st: Statements,
    write_consistency: Consistency,
    bound: i64,
    max_shards: i32,
    batch_rows: usize,
    write_concurrency: usize,
}

type SessionRow = (Option<String>, Option<i64>, Option<i64>, Option<i64>);
type ByRoomRow = (i64, String, Option<i64>, Option<i64>);
/// `vods_by_day`: started_at, vod, room, ended_at, latency_ms.
type ByDayRow = (i64, String, Option<String>, Option<i64>, Option<i64>);
/// `vods_open`: started_at, vod, room, latency_ms.
type OpenRow = (i64, String, Option<String>, Option<i64>);

/// How many days back `recent_sessions` looks (`vods_by_day`).
pub const RECENT_DAYS: i64 = 31;
/// Milliseconds per `vods_by_day` partition.
const DAY_MS: i64 = 86_400_000;
/// The only partition of `vods_open`.
const OPEN_BUCKET: i32 = 0;
/// Concurrent reads when filling a listing's `video_url`s or reading days.
const LIST_CONCURRENCY: usize = 8;

/// The `vods_by_day` partition of a session started at `started_at`.
fn day_of(started_at: i64) -> i32 {
    started_at
        .div_euclid(DAY_MS)
        .clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

/// Newest first by (started_at, vod), at most `limit`.
fn newest_first(mut list: Vec<Session>, limit: usize) -> Vec<Session> {
    list.sort_by(|a, b| (b.started_at, &b.vod).cmp(&(a.started_at, &a.vod)));
    list.truncate(limit);
    list
}
type CommentRow = (
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<String>,
    Option<i64>,
);
type CommentValues<'a> = (
    &'a str,
    i32,
    i32,
    i64,
    i64,
    &'a str,
    &'a str,
    &'a str,
    i64,
    i32,
    i32,
    i32,
    &'a str,
    Option<i64>,
);

fn unavailable(e: impl Into<BoxError>) -> ArchiveError {
    ArchiveError::unavailable("scylla").with_source(e)
}

impl ScyllaArchiveStore {
    /// Connects to `settings.nodes` and prepares the statements. The schema must be
    /// in place ([`migrate`]).
    pub async fn connect(settings: &ScyllaSettings) -> Result<Self, ScyllaError> {
        let session = open_session(settings).await?;
        Self::with_session(Arc::new(session), settings).await
    }

    /// Runs [`migrate`] on an open session, then prepares the statements. For tests
    /// and tools that already hold a session.
    pub async fn migrate_and_connect(
        session: Arc<CqlSession>,
        settings: &ScyllaSettings,
    ) -> Result<Self, ScyllaError> {
        migrate_session(&session, settings).await?;
        Self::with_session(session, settings).await
    }

    /// Prepares the statements on an open session.
    pub async fn with_session(
        session: Arc<CqlSession>,
        settings: &ScyllaSettings,
    ) -> Result<Self, ScyllaError> {
        check_settings(settings).map_err(ScyllaError::Settings)?;
        let write =
            parse_consistency(&settings.write_consistency).map_err(ScyllaError::Settings)?;
        let read = parse_consistency(&settings.read_consistency).map_err(ScyllaError::Settings)?;
        let ks = &settings.keyspace;
        let page = settings.page_size.min(i32::MAX as u32) as i32;
        let prepare = |cql: String, consistency: Consistency| {
            let session = session.clone();
            async move {
                let mut p = session
                    .prepare(cql.as_str())
                    .await
                    .map_err(|e| ScyllaError::Prepare(format!("{cql}: {e}")))?;
                p.set_consistency(consistency);
                p.set_page_size(page);
                p.set_is_idempotent(true);
                Ok::<_, ScyllaError>(p)
            }
        };
        let st = Statements {
            vod_get: prepare(
                format!("SELECT room, started_at, ended_at, latency_ms FROM {ks}.vods WHERE vod = ?"),
                read,
            )
            .await?,
            vod_put: prepare(
                format!("INSERT INTO {ks}.vods (vod, room, started_at, ended_at, latency_ms) VALUES (?, ?, ?, ?, ?)"),
                write,
            )
            .await?,
            by_room_put: prepare(
                format!("INSERT INTO {ks}.vods_by_room (room, started_at, vod, ended_at, latency_ms) VALUES (?, ?, ?, ?, ?)"),
                write,
            )
            .await?,
            by_room_get: prepare(
                format!("SELECT started_at, vod, ended_at, latency_ms FROM {ks}.vods_by_room WHERE room = ?"),
                read,
            )
            .await?,
            comment_put: prepare(
                format!(
                    "INSERT INTO {ks}.comments (vod, segment, shard, offset_ms, id, room, user_id, name, ts, kind, mode, color, text, stream_pos_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                write,
            )
            .await?,
            comments_get: prepare(
                format!(
                    "SELECT offset_ms, id, room, user_id, name, ts, kind, mode, color, text, stream_pos_ms \
                     FROM {ks}.comments WHERE vod = ? AND segment = ? AND shard = ?"
                ),
                read,
            )
            .await?,
            comment_ids_get: prepare(
                format!("SELECT id FROM {ks}.comments WHERE vod = ? AND segment = ? AND shard = ?"),
                read,
            )
            .await?,
            segments_get: prepare(
                format!("SELECT segment, entry, shard, n FROM {ks}.vod_segments WHERE vod = ?"),
                read,
            )
            .await?,
            segment_put: prepare(
                format!("INSERT INTO {ks}.vod_segments (vod, segment, entry, shard, n) VALUES (?, ?, ?, ?, ?)"),
                write,
            )
            .await?,
            segment_del: prepare(
                format!(
                    "DELETE FROM {ks}.vod_segments WHERE vod = ? AND segment = ? AND entry = ? AND shard = ? AND n = ?"
                ),
                write,
            )
            .await?,
            video_get: prepare(
                format!("SELECT video_url FROM {ks}.vod_video WHERE vod = ?"),
                read,
            )
            .await?,
            video_put: prepare(
                format!("INSERT INTO {ks}.vod_video (vod, video_url) VALUES (?, ?)"),
                write,
            )
            .await?,
            video_del: prepare(
                format!("DELETE FROM {ks}.vod_video WHERE vod = ?"),
                write,
            )
            .await?,
            by_day_put: prepare(
                format!("INSERT INTO {ks}.vods_by_day (day, started_at, vod, room, ended_at, latency_ms) VALUES (?, ?, ?, ?, ?, ?)"),
                write,
            )
            .await?,
            by_day_get: prepare(
                format!("SELECT started_at, vod, room, ended_at, latency_ms FROM {ks}.vods_by_day WHERE day = ?"),
                read,
            )
            .await?,
            open_put: prepare(
                format!("INSERT INTO {ks}.vods_open (bucket, started_at, vod, room, latency_ms) VALUES (?, ?, ?, ?, ?)"),
                write,
            )
            .await?,
            open_del: prepare(
                format!("DELETE FROM {ks}.vods_open WHERE bucket = ? AND started_at = ? AND vod = ?"),
                write,
            )
            .await?,
            open_get: prepare(
                format!("SELECT started_at, vod, room, latency_ms FROM {ks}.vods_open WHERE bucket = ?"),
                read,
            )
            .await?,
            deleted_get: prepare(
                format!("SELECT id, present FROM {ks}.deleted_comments WHERE vod = ?"),
                read,
            )
            .await?,
            deleted_put: prepare(
                format!("INSERT INTO {ks}.deleted_comments (vod, id, present) VALUES (?, ?, ?)"),
                write,
            )
            .await?,
        };
        Ok(Self {
            session,
            st,
            write_consistency: write,
            bound: settings.partition_rows as i64,
            max_shards: settings.max_shards as i32,
            batch_rows: settings.batch_rows,
            write_concurrency: settings.write_concurrency,
        })
    }

    /// Every row of a paged SELECT.
    async fn read_all<R>(
        &self,
        statement: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<Vec<R>, ArchiveError>
    where
        R: for<'f, 'm> DeserializeRow<'f, 'm>,
    {
        self.session
            .execute_iter(statement.clone(), values)
            .await
            .map_err(unavailable)?
            .rows_stream::<R>()
            .map_err(|e| ArchiveError::other("row types").with_source(e))?
            .try_collect()
            .await
            .map_err(unavailable)
    }

    /// Runs unlogged batches of `statement` with `rows`, at most `batch_rows` per
    /// batch and `write_concurrency` batches at once. Callers group by partition.
    async fn write_batches<V: SerializeRow + Sync>(
        &self,
        statement: &PreparedStatement,
        rows: &[V],
    ) -> Result<(), ArchiveError> {
        let mut batches = Vec::with_capacity(rows.len().div_ceil(self.batch_rows));
        for chunk in rows.chunks(self.batch_rows) {
            let mut batch = Batch::new(BatchType::Unlogged);
            for _ in chunk {
                batch.append_statement(statement.clone());
            }
            batch.set_consistency(self.write_consistency);
            batch.set_is_idempotent(true);
            batches.push(self.run_batch(batch, chunk));
        }
        futures::stream::iter(batches)
            .buffer_unordered(self.write_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn run_batch<V: SerializeRow>(
        &self,
        batch: Batch,
        rows: &[V],
    ) -> Result<(), ArchiveError> {
        self.session
            .batch(&batch, rows)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn session_row(&self, vod: &str) -> Result<Option<Session>, ArchiveError> {
        let (rows, video_url) = futures::try_join!(
            self.read_all::<SessionRow>(&self.st.vod_get, (vod,)),
            self.video_url(vod)
        )?;
        Ok(rows
            .into_iter()
            .next()
            .map(|(room, started_at, ended_at, latency_ms)| Session {
                vod: vod.to_string(),
                room: room.unwrap_or_default(),
                started_at: started_at.unwrap_or(0),
                ended_at,
                latency_ms: latency_ms.unwrap_or(0),
                video_url,
            }))
    }

    /// The `video_url` of `vod` (`vod_video`), if set.
    async fn video_url(&self, vod: &str) -> Result<Option<String>, ArchiveError> {
        let rows: Vec<(Option<String>,)> = self.read_all(&self.st.video_get, (vod,)).await?;
        Ok(rows.into_iter().next().and_then(|(url,)| url))
    }

    /// Fills in the `video_url` of every session of `list` (reads at most
    /// [`LIST_CONCURRENCY`] at once).
    async fn with_video_urls(&self, list: Vec<Session>) -> Result<Vec<Session>, ArchiveError> {
        futures::stream::iter(list.into_iter().map(|mut s| async move {
            s.video_url = self.video_url(&s.vod).await?;
            Ok::<_, ArchiveError>(s)
        }))
        .buffered(LIST_CONCURRENCY)
        .try_collect()
        .await
    }

    /// Writes `s` to the session tables at once (a logged batch): `vods`,
    /// `vods_by_room`, `vods_by_day`, and `vods_open` (a row while it is open,
    /// deleted once it ended). `video_url` is written by `set_video_url` alone.
    async fn put_session(&self, s: &Session) -> Result<(), ArchiveError> {
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(self.st.vod_put.clone());
        batch.append_statement(self.st.by_room_put.clone());
        batch.append_statement(self.st.by_day_put.clone());
        batch.set_consistency(self.write_consistency);
        let common = (
            (
                s.vod.as_str(),
                s.room.as_str(),
                s.started_at,
                s.ended_at,
                s.latency_ms,
            ),
            (
                s.room.as_str(),
                s.started_at,
                s.vod.as_str(),
                s.ended_at,
                s.latency_ms,
            ),
            (
                day_of(s.started_at),
                s.started_at,
                s.vod.as_str(),
                s.room.as_str(),
                s.ended_at,
                s.latency_ms,
            ),
        );
        let result = if s.ended_at.is_none() {
            batch.append_statement(self.st.open_put.clone());
            let open = (
                OPEN_BUCKET,
                s.started_at,
                s.vod.as_str(),
                s.room.as_str(),
                s.latency_ms,
            );
            self.session
                .batch(&batch, (common.0, common.1, common.2, open))
                .await
        } else {
            batch.append_statement(self.st.open_del.clone());
            let open = (OPEN_BUCKET, s.started_at, s.vod.as_str());
            self.session
                .batch(&batch, (common.0, common.1, common.2, open))
                .await
        };
        result.map_err(unavailable)?;
        Ok(())
    }

    /// The `vod_segments` partition of `vod`, by segment.
    async fn segment_states(&self, vod: &str) -> Result<BTreeMap<u32, SegmentState>, ArchiveError> {
        let rows: Vec<(i32, i32, i32, i32)> = self.read_all(&self.st.segments_get, (vod,)).await?;
        let mut out: BTreeMap<u32, SegmentState> = BTreeMap::new();
        for (segment, entry, shard, n) in rows {
            let Ok(segment) = u32::try_from(segment) else {
                continue;
            };
            let state = out.entry(segment).or_default();
            match entry {
                ENTRY_GENERATION if n > 0 && shard >= 0 => {
                    state.generations.insert(Generation {
                        first: shard,
                        count: n,
                    });
                }
                ENTRY_OBSERVED if shard >= 0 => {
                    state.observed.entry(shard).or_default().insert(n);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The distinct comment ids stored in one partition.
    async fn ids_in(
        &self,
        vod: &str,
        segment: i32,
        shard: i32,
    ) -> Result<HashSet<u64>, ArchiveError> {
        let rows: Vec<(i64,)> = self
            .read_all(&self.st.comment_ids_get, (vod, segment, shard))
            .await?;
        Ok(rows.into_iter().map(|(id,)| id as u64).collect())
    }

    /// The deletion markers of `vod`: id -> whether the comment was stored when
    /// it was deleted.
    async fn deleted_of(&self, vod: &str) -> Result<HashMap<u64, bool>, ArchiveError> {
        let rows: Vec<(i64, Option<i32>)> = self.read_all(&self.st.deleted_get, (vod,)).await?;
        Ok(rows
            .into_iter()
            .map(|(id, present)| (id as u64, present.unwrap_or(0) != 0))
            .collect())
    }

    /// Whether segment `segment` of `vod` holds a comment that was not deleted.
    /// A segment with more rows than the VOD's `present` deleted stored
    /// comments holds one for sure (no read); otherwise the ids of its
    /// partitions are read and looked up in `deleted` (the VOD's markers).
    async fn holds_a_kept_row(
        &self,
        vod: &str,
        segment: u32,
        state: &SegmentState,
        deleted: &HashMap<u64, bool>,
        present: u64,
    ) -> Result<bool, ArchiveError> {
        let rows = state.rows();
        if rows <= 0 {
            return Ok(false);
        }
        if rows as u64 > present {
            return Ok(true);
        }
        let Ok(seg) = i32::try_from(segment) else {
            return Ok(false);
        };
        for shard in state.shards() {
            let ids = self.ids_in(vod, seg, shard).await?;
            if ids.iter().any(|id| !deleted.contains_key(id)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether comment `id` is stored in segment `segment` of `vod` (in any shard
    /// a generation of the segment would hold it in).
    async fn stored_in(
        &self,
        vod: &str,
        segment: u32,
        state: &SegmentState,
        id: u64,
    ) -> Result<bool, ArchiveError> {
        let Ok(seg) = i32::try_from(segment) else {
            return Ok(false);
        };
        let shards: BTreeSet<i32> = state.generations.iter().map(|g| g.shard_of(id)).collect();
        for shard in shards {
            if self.ids_in(vod, seg, shard).await?.contains(&id) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stores the rows of one segment of `vod` (see the module documentation).
    async fn upsert_segment(
        &self,
        vod: &str,
        segment: u32,
        state: &SegmentState,
        prev_rows: i64,
        rows: Vec<&ArchivedComment>,
    ) -> Result<(), ArchiveError> {
        let seg = i32::try_from(segment)
            .map_err(|_| ArchiveError::other(format!("segment {segment} out of range")))?;
        let ids: Vec<u64> = rows.iter().map(|r| r.item.id).collect();
        let mut plan = place_rows(state, prev_rows, &ids, self.bound, self.max_shards);
        // Shards read before writing, with the ids they held.
        let mut read_before: BTreeMap<i32, HashSet<u64>> = BTreeMap::new();
        if !plan.check.is_empty() || (plan.declare.is_some() && state.current().is_some()) {
            // Older generations exist, or the current one looks full: some of these
            // rows may be stored already (a redo). Read the shards every generation
            // would hold them in, skip the ids found there, and plan again.
            let shards: BTreeSet<i32> = state
                .generations
                .iter()
                .flat_map(|g| ids.iter().map(move |&id| g.shard_of(id)))
                .collect();
            for shard in shards {
                read_before.insert(shard, self.ids_in(vod, seg, shard).await?);
            }
            let missing: Vec<u64> = ids
                .iter()
                .copied()
                .filter(|id| !read_before.values().any(|held| held.contains(id)))
                .collect();
            if missing.len() < ids.len() {
                plan = place_rows(state, prev_rows, &missing, self.bound, self.max_shards);
            }
        }
        let present = |id: u64| read_before.values().any(|held| held.contains(&id));
        let mut by_shard: BTreeMap<i32, Vec<&ArchivedComment>> = BTreeMap::new();
        for r in rows {
            if !present(r.item.id) {
                by_shard
                    .entry(plan.place.shard_of(r.item.id))
                    .or_default()
                    .push(r);
            }
        }
        if by_shard.is_empty() {
            plan.declare = None;
        }
        if let Some(g) = plan.declare {
            // Declared before any row is written to it, so readers know to read it.
            self.session
                .execute_unpaged(
                    &self.st.segment_put,
                    (vod, seg, ENTRY_GENERATION, g.first, g.count),
                )
                .await
                .map_err(unavailable)?;
        }
        for (&shard, rows) in &by_shard {
            let values: Vec<CommentValues<'_>> = rows
                .iter()
                .map(|r| {
                    let d = &r.item;
                    (
                        vod,
                        seg,
                        shard,
                        r.offset_ms,
                        d.id as i64,
                        d.room.as_str(),
                        d.user.as_str(),
                        d.name.as_str(),
                        d.ts_ms,
                        d.kind,
                        d.mode,
                        d.color as i32,
                        d.text.as_str(),
                        d.stream_pos_ms,
                    )
                })
                .collect();
            self.write_batches(&self.st.comment_put, &values).await?;
        }
        // Observe what each partition written now holds (read back after the
        // write), and what the ones read before held: a previous attempt may have
        // written them without getting to observe them.
        let mut observed: BTreeMap<i32, usize> = read_before
            .iter()
            .map(|(&shard, held)| (shard, held.len()))
            .collect();
        for &shard in by_shard.keys() {
            observed.insert(shard, self.ids_in(vod, seg, shard).await?.len());
        }
        for (shard, n) in observed {
            self.observe(vod, seg, state, shard, n.min(i32::MAX as usize) as i32)
                .await?;
        }
        Ok(())
    }

    /// Records that `shard` of segment `seg` held `n` rows, unless a larger number
    /// is already known, and deletes the smaller observations `state` lists.
    async fn observe(
        &self,
        vod: &str,
        seg: i32,
        state: &SegmentState,
        shard: i32,
        n: i32,
    ) -> Result<(), ArchiveError> {
        let known = state.observed.get(&shard);
        if n == 0 || known.and_then(|ns| ns.last()).is_some_and(|&m| m >= n) {
            return Ok(());
        }
        self.session
            .execute_unpaged(&self.st.segment_put, (vod, seg, ENTRY_OBSERVED, shard, n))
            .await
            .map_err(unavailable)?;
        for &old in known.into_iter().flatten().filter(|&&m| m < n) {
            self.session
                .execute_unpaged(&self.st.segment_del, (vod, seg, ENTRY_OBSERVED, shard, old))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

fn comment_from_row(vod: &str, row: CommentRow) -> ArchivedComment {
    let (offset_ms, id, room, user, name, ts, kind, mode, color, text, stream_pos_ms) = row;
    ArchivedComment {
        vod: vod.to_string(),
        offset_ms,
        item: Danmaku {
            id: id as u64,
            room: room.unwrap_or_default(),
            user: user.unwrap_or_default(),
            name: name.unwrap_or_default(),
            ts_ms: ts.unwrap_or(0),
            kind: kind.unwrap_or(0),
            mode: mode.unwrap_or(0),
            color: color.unwrap_or(0) as u32,
            text: text.unwrap_or_default(),
            stream_pos_ms,
            vod: Some(vod.to_string()),
            offset_ms: Some(offset_ms),
            hidden: false,
            deletes: None,
        },
    }
}

#[async_trait]
impl ArchiveStore for ScyllaArchiveStore {
    async fn create_session(&self, session: &Session) -> Result<(), ArchiveError> {
        // Read, then write: no LWT (see "Races" in the module documentation).
        if self.session_row(&session.vod).await?.is_some() {
            return Err(ArchiveError::AlreadyExists);
        }
        self.put_session(session).await
    }

    async fn end_session(&self, vod: &str, ended_at: i64) -> Result<Session, ArchiveError> {
        let Some(mut s) = self.session_row(vod).await? else {
            return Err(ArchiveError::NotFound);
        };
        if s.ended_at.is_some() {
            return Err(ArchiveError::AlreadyEnded);
        }
        s.ended_at = Some(ended_at.max(s.started_at));
        self.put_session(&s).await?;
        Ok(s)
    }

    async fn get_session(&self, vod: &str) -> Result<Option<Session>, ArchiveError> {
        self.session_row(vod).await
    }

    async fn sessions_by_room(
        &self,
        room: &str,
        limit: usize,
    ) -> Result<Vec<Session>, ArchiveError> {
        let rows: Vec<ByRoomRow> = self.read_all(&self.st.by_room_get, (room,)).await?;
        let mut out: Vec<Session> = rows
            .into_iter()
            .map(|(started_at, vod, ended_at, latency_ms)| Session {
                vod,
                room: room.to_string(),
                started_at,
                ended_at,
                latency_ms: latency_ms.unwrap_or(0),
                video_url: None,
            })
            .collect();
        // Newest first, sorted here: the server's clustering order is not relied on.
        out.sort_by(|a, b| (b.started_at, &b.vod).cmp(&(a.started_at, &a.vod)));
        out.truncate(limit);
        self.with_video_urls(out).await
    }

    async fn set_video_url(
        &self,
        vod: &str,
        video_url: Option<&str>,
    ) -> Result<Session, ArchiveError> {
        let Some(mut s) = self.session_row(vod).await? else {
            return Err(ArchiveError::NotFound);
        };
        // Cleared by deleting the row (not by writing a null).
        match video_url {
            Some(url) => {
                self.session
                    .execute_unpaged(&self.st.video_put, (vod, url))
                    .await
            }
            None => {
                self.session
                    .execute_unpaged(&self.st.video_del, (vod,))
                    .await
            }
        }
        .map_err(unavailable)?;
        s.video_url = video_url.map(str::to_string);
        Ok(s)
    }

    async fn recent_sessions(&self, limit: usize) -> Result<Vec<Session>, ArchiveError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // From tomorrow (a clock ahead of ours) back RECENT_DAYS days, a few days
        // at a time, until `limit` sessions are found.
        let newest = day_of(danmaku_core::now_ms()).saturating_add(1);
        let days: Vec<i32> = (0..=RECENT_DAYS as i32)
            .map(|back| newest.saturating_sub(back))
            .collect();
        let mut out = Vec::new();
        for chunk in days.chunks(LIST_CONCURRENCY) {
            let reads = chunk
                .iter()
                .map(|&day| self.read_all::<ByDayRow>(&self.st.by_day_get, (day,)));
            for rows in futures::future::try_join_all(reads).await? {
                out.extend(rows.into_iter().map(
                    |(started_at, vod, room, ended_at, latency_ms)| Session {
                        vod,
                        room: room.unwrap_or_default(),
                        started_at,
                        ended_at,
                        latency_ms: latency_ms.unwrap_or(0),
                        video_url: None,
                    },
                ));
            }
            if out.len() >= limit {
                break; // every later chunk holds older days
            }
        }
        self.with_video_urls(newest_first(out, limit)).await
    }

    async fn open_sessions(&self, limit: usize) -> Result<Vec<Session>, ArchiveError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<OpenRow> = self.read_all(&self.st.open_get, (OPEN_BUCKET,)).await?;
        let list = rows
            .into_iter()
            .map(|(started_at, vod, room, latency_ms)| Session {
                vod,
                room: room.unwrap_or_default(),
                started_at,
                ended_at: None,
                latency_ms: latency_ms.unwrap_or(0),
                video_url: None,
            })
            .collect();
        self.with_video_urls(newest_first(list, limit)).await
    }

    async fn upsert_comments(&self, rows: &[ArchivedComment]) -> Result<(), ArchiveError> {
        let mut by_vod: BTreeMap<&str, BTreeMap<u32, Vec<&ArchivedComment>>> = BTreeMap::new();
        for r in rows {
            by_vod
                .entry(r.vod.as_str())
                .or_default()
                .entry(segment_of(r.offset_ms))
                .or_default()
                .push(r);
        }
        for (vod, segments) in by_vod {
            let states = self.segment_states(vod).await?;
            let deleted = self.deleted_of(vod).await?;
            let empty = SegmentState::default();
            for (segment, mut rows) in segments {
                // Deleted comments stay out, also when redone or deleted first.
                rows.retain(|r| !deleted.contains_key(&r.item.id));
                if rows.is_empty() {
                    continue;
                }
                let state = states.get(&segment).unwrap_or(&empty);
                let prev_rows = segment
                    .checked_sub(1)
                    .and_then(|p| states.get(&p))
                    .map_or(0, SegmentState::rows);
                self.upsert_segment(vod, segment, state, prev_rows, rows)
                    .await?;
            }
        }
        Ok(())
    }

    async fn read_segment(
        &self,
        vod: &str,
        segment: u32,
    ) -> Result<Vec<ArchivedComment>, ArchiveError> {
        let Ok(seg) = i32::try_from(segment) else {
            return Ok(Vec::new());
        };
        let states = self.segment_states(vod).await?;
        let Some(state) = states.get(&segment) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for shard in state.shards() {
            let rows: Vec<CommentRow> = self
                .read_all(&self.st.comments_get, (vod, seg, shard))
                .await?;
            out.extend(rows.into_iter().map(|r| comment_from_row(vod, r)));
        }
        // The whole partition came back; order and trim here.
        out.sort_by_key(|c| (c.offset_ms, c.item.id));
        let deleted = self.deleted_of(vod).await?;
        let mut seen = HashSet::with_capacity(out.len());
        out.retain(|c| seen.insert(c.item.id) && !deleted.contains_key(&c.item.id));
        Ok(out)
    }

    async fn count(&self, vod: &str) -> Result<u64, ArchiveError> {
        Ok(self.version(vod).await?.count)
    }

    async fn delete_comments(&self, deletions: &[ArchivedDeletion]) -> Result<u64, ArchiveError> {
        let mut by_vod: BTreeMap<&str, Vec<&ArchivedDeletion>> = BTreeMap::new();
        for d in deletions {
            by_vod.entry(d.vod.as_str()).or_default().push(d);
        }
        let mut removed = 0;
        for (vod, list) in by_vod {
            let mut known = self.deleted_of(vod).await?;
            let states = self.segment_states(vod).await?;
            for d in list {
                if known.contains_key(&d.id) {
                    continue; // applied before
                }
                let seg = segment_of(d.offset_ms);
                let mut present = match states.get(&seg) {
                    Some(state) => self.stored_in(vod, seg, state, d.id).await?,
                    None => false,
                };
                if !present {
                    // Not where the deletion says: look in the VOD's other segments.
                    for (&other, state) in states.iter().filter(|(&s, _)| s != seg) {
                        if self.stored_in(vod, other, state, d.id).await? {
                            present = true;
                            break;
                        }
                    }
                }
                self.session
                    .execute_unpaged(&self.st.deleted_put, (vod, d.id as i64, i32::from(present)))
                    .await
                    .map_err(unavailable)?;
                known.insert(d.id, present);
                removed += u64::from(present);
            }
        }
        Ok(removed)
    }

    async fn version(&self, vod: &str) -> Result<VodVersion, ArchiveError> {
        let states = self.segment_states(vod).await?;
        let rows: u64 = states.values().map(|s| s.rows().max(0) as u64).sum();
        let deleted = present_markers(&self.deleted_of(vod).await?);
        Ok(VodVersion {
            count: rows.saturating_sub(deleted),
            deleted,
        })
    }

    async fn segments(&self, vod: &str) -> Result<Vec<u32>, ArchiveError> {
        let states = self.segment_states(vod).await?;
        let deleted = self.deleted_of(vod).await?;
        let present = present_markers(&deleted);
        let mut out = Vec::new();
        for (&segment, state) in &states {
            if self
                .holds_a_kept_row(vod, segment, state, &deleted, present)
                .await?
            {
                out.push(segment);
            }
        }
        Ok(out)
    }

    async fn last_segment(&self, vod: &str) -> Result<Option<u32>, ArchiveError> {
        let states = self.segment_states(vod).await?;
        let deleted = self.deleted_of(vod).await?;
        let present = present_markers(&deleted);
        for (&segment, state) in states.iter().rev() {
            if self
                .holds_a_kept_row(vod, segment, state, &deleted, present)
                .await?
            {
                return Ok(Some(segment));
            }
        }
        Ok(None)
    }

    async fn ready(&self) -> bool {
        self.read_all::<SessionRow>(&self.st.vod_get, ("",))
            .await
            .is_ok()
    }
}

/// How many of a VOD's deletion markers name a comment that was stored.
fn present_markers(deleted: &HashMap<u64, bool>) -> u64 {
    deleted.values().filter(|&&present| present).count() as u64
}

/// An in-process CQL server for tests: kassandra (an in-memory, single-node CQL v4
/// server) behind a TCP accept loop on a free loopback port, on its own thread.
///
/// What kassandra cannot exercise (so the tests against it cannot either):
/// replication and consistency levels (one node), schema agreement (it has no
/// `system.peers`; sessions to it need `scylla.schema_agreement = false`), and
/// concurrency inside the server (it runs one request at a time).
#[cfg(any(test, feature = "kassandra"))]
pub mod testserver {
    use futures::{SinkExt, StreamExt};
    use kassandra::error::DbError;
    use kassandra::frame::request::Request;
    use kassandra::frame::response::{error::Error as CqlError, Response};
    use kassandra::frame::{request_stream, response_sink};
    use kassandra::KassandraSession;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    /// A kassandra server on a free loopback port; stopped on drop.
    pub struct CqlTestServer {
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl CqlTestServer {
        /// Starts the server; it accepts connections when this returns.
        pub fn start() -> Self {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let addr = listener.local_addr().expect("local addr");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name("kassandra".into())
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, async move {
                        let listener =
                            tokio::net::TcpListener::from_std(listener).expect("listener");
                        let db = Arc::new(Mutex::new(KassandraSession::new()));
                        let accept = async {
                            loop {
                                let Ok((stream, _)) = listener.accept().await else {
                                    continue;
                                };
                                let _ = stream.set_nodelay(true);
                                tokio::task::spawn_local(serve(db.clone(), stream));
                            }
                        };
                        tokio::select! {
                            _ = accept => {}
                            _ = stopped => {}
                        }
                    });
                })
                .expect("spawn the kassandra thread");
            Self {
                addr,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        /// `host:port` to connect to (a `scylla.nodes` value).
        pub fn node(&self) -> String {
            self.addr.to_string()
        }

        /// Settings that select this server (schema agreement off; keyspace as given).
        pub fn settings(&self, keyspace: &str) -> danmaku_core::config::ScyllaSettings {
            danmaku_core::config::ScyllaSettings {
                nodes: self.node(),
                keyspace: keyspace.to_string(),
                schema_agreement: false,
                ..Default::default()
            }
        }
    }

    impl Drop for CqlTestServer {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    async fn serve(db: Arc<Mutex<KassandraSession>>, mut stream: tokio::net::TcpStream) {
        let (read, write) = stream.split();
        let mut requests = request_stream(read);
        let mut responses = response_sink(write);
        while let Some(frame) = requests.next().await {
            let Ok((params, opcode, data)) = frame else {
                break;
            };
            let response = match Request::deserialize(opcode, &data, params.flags) {
                Ok(request) => answer(&db, request),
                Err(_) => Response::Error(CqlError::new(
                    DbError::ProtocolError,
                    "cannot parse the request",
                )),
            };
            if responses.send((response, params.stream)).await.is_err() {
                break;
            }
        }
    }

    fn answer(db: &Mutex<KassandraSession>, request: Request<'_>) -> Response {
        // kassandra panics on a few inputs (bound tinyint/smallint); the adapter
        // never sends them, and a poisoned lock still holds usable data.
        let mut db = match db.lock() {
            Ok(db) => db,
            Err(poisoned) => poisoned.into_inner(),
        };
        let result = match request {
            Request::StartUp(_) | Request::Register { .. } => return Response::Ready,
            Request::Options => return Response::options(),
            Request::Query(q) => db.process(q),
            Request::Prepare(p) => db.prepare(p),
            Request::Execute(e) => db.execute(e),
            Request::Batch(b) => db.process_batch(b),
            Request::AuthResponse => {
                return Response::Error(CqlError::new(
                    DbError::ProtocolError,
                    "authentication is not supported",
                ))
            }
        };
        match result {
            Ok(r) => Response::Result(r),
            Err(e) => Response::Error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testserver::CqlTestServer;
    use super::*;

    #[test]
    fn schema_statements_use_the_keyspace_and_replication() {
        let stmts = schema_statements("dm_test", "{'class': 'NetworkTopologyStrategy', 'dc1': 3}");
        assert_eq!(stmts.len(), 9);
        assert_eq!(
            stmts[0],
            "CREATE KEYSPACE IF NOT EXISTS dm_test WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3}"
        );
        for s in &stmts[1..] {
            assert!(s.starts_with("CREATE TABLE IF NOT EXISTS dm_test."), "{s}");
            assert!(!s.contains("danmaku"), "{s}");
        }
        assert!(stmts
            .iter()
            .any(|s| s.contains("PRIMARY KEY ((vod, segment, shard), offset_ms, id)")));
    }

    #[test]
    fn settings_are_checked() {
        let ok = ScyllaSettings::default();
        assert!(check_settings(&ok).is_ok());
        for bad in [
            ScyllaSettings {
                keyspace: "a; DROP".into(),
                ..Default::default()
            },
            ScyllaSettings {
                keyspace: "1abc".into(),
                ..Default::default()
            },
            ScyllaSettings {
                replication: "{}; x".into(),
                ..Default::default()
            },
            ScyllaSettings {
                write_consistency: "most".into(),
                ..Default::default()
            },
            ScyllaSettings {
                partition_rows: 0,
                ..Default::default()
            },
            ScyllaSettings {
                max_shards: 0,
                ..Default::default()
            },
        ] {
            assert!(check_settings(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_consistency("LOCAL_QUORUM").unwrap(),
            Consistency::LocalQuorum
        );
    }

    fn state(gens: &[(i32, i32)], obs: &[(i32, i32)]) -> SegmentState {
        let mut s = SegmentState::default();
        for &(first, count) in gens {
            s.generations.insert(Generation { first, count });
        }
        for &(shard, n) in obs {
            s.observed.entry(shard).or_default().insert(n);
        }
        s
    }

    #[test]
    fn a_first_generation_is_sized_from_the_observed_density() {
        let ids: Vec<u64> = (0..10).collect();
        let p = place_rows(&SegmentState::default(), 0, &ids, 100, 64);
        let one = Generation { first: 0, count: 1 };
        assert_eq!((p.declare, p.place, p.check.len()), (Some(one), one, 0));
        // The previous segment held 1,000 rows: 1,250 over 100 per shard.
        let p = place_rows(&SegmentState::default(), 1_000, &ids, 100, 64);
        assert_eq!(
            p.place,
            Generation {
                first: 0,
                count: 13
            }
        );
        // A big first write: twice its rows.
        let many: Vec<u64> = (0..500).collect();
        let p = place_rows(&SegmentState::default(), 0, &many, 100, 64);
        assert_eq!(p.place.count, 10);
        // Never more than max_shards.
        let p = place_rows(&SegmentState::default(), 1_000_000, &ids, 100, 8);
        assert_eq!(p.place.count, 8);
    }

    #[test]
    fn rows_stay_in_the_current_generation_while_its_shards_fit() {
        let s = state(&[(0, 2)], &[(0, 40), (1, 45)]);
        let ids: Vec<u64> = (0..20).collect();
        let p = place_rows(&s, 0, &ids, 100, 64);
        assert_eq!(p.declare, None);
        assert_eq!(p.place, Generation { first: 0, count: 2 });
        assert!(p.check.is_empty());
        assert_eq!(s.rows(), 85);
        assert_eq!(s.shards(), BTreeSet::from([0, 1]));
    }

    #[test]
    fn a_full_shard_opens_a_wider_generation_and_older_ones_are_checked() {
        let s = state(&[(0, 1)], &[(0, 95), (0, 60)]);
        assert_eq!(s.rows_in(0), 95, "the largest observation counts");
        let ids: Vec<u64> = (0..10).collect();
        let p = place_rows(&s, 0, &ids, 100, 64);
        let g = Generation { first: 1, count: 2 };
        assert_eq!((p.declare, p.place), (Some(g), g));
        assert_eq!(p.check, vec![Generation { first: 0, count: 1 }]);
        // Once declared, later writes use it and still check generation 0.
        let s2 = state(&[(0, 1), (1, 2)], &[(0, 95), (1, 3), (2, 4)]);
        let p = place_rows(&s2, 0, &ids, 100, 64);
        assert_eq!((p.declare, p.place), (None, g));
        assert_eq!(p.check, vec![Generation { first: 0, count: 1 }]);
        assert_eq!(s2.shards(), BTreeSet::from([0, 1, 2]));
        // At max_shards no new generation: the current one grows.
        let p = place_rows(&s, 0, &ids, 100, 1);
        assert_eq!(
            (p.declare, p.place),
            (None, Generation { first: 0, count: 1 })
        );
    }

    #[test]
    fn placement_is_a_pure_function_of_the_id() {
        let g = Generation { first: 3, count: 5 };
        for id in [0u64, 1, 42, u64::MAX, 7_263_549_816_238_080_001] {
            let s = g.shard_of(id);
            assert!((3..8).contains(&s));
            assert_eq!(s, g.shard_of(id));
        }
        // Spread: 10,000 ids over 5 shards, each within 20% of even.
        let mut counts = [0usize; 5];
        for id in 0..10_000u64 {
            counts[(g.shard_of(id) - 3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (1_600..=2_400).contains(&c)),
            "{counts:?}"
        );
    }

    async fn store_on(
        server: &CqlTestServer,
        tweak: impl FnOnce(&mut ScyllaSettings),
    ) -> ScyllaArchiveStore {
        let mut settings = server.settings(&format!("t{}", rand::random::<u32>()));
        tweak(&mut settings);
        migrate(&settings).await.expect("migrate");
        migrate(&settings).await.expect("migrate is idempotent");
        ScyllaArchiveStore::connect(&settings)
            .await
            .expect("connect")
    }

    /// A keyspace made before `vod_video`, `vods_by_day` and `vods_open`
    /// existed: migrate adds them (twice is the same as once) and keeps its
    /// sessions; an old session reads with no `video_url` and takes one.
    #[tokio::test]
    async fn migrating_a_keyspace_from_before_the_session_listings() {
        let server = CqlTestServer::start();
        let settings = server.settings(&format!("t{}", rand::random::<u32>()));
        let new_tables = ["vod_video", "vods_by_day", "vods_open"];
        let session = open_session(&settings).await.expect("session");
        let ks = &settings.keyspace;
        for statement in schema_statements(ks, settings.replication.trim()) {
            if new_tables
                .iter()
                .any(|t| statement.contains(&format!(" {ks}.{t} ")))
            {
                continue;
            }
            session.query_unpaged(statement.as_str(), ()).await.unwrap();
        }
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.vods (vod, room, started_at, ended_at, latency_ms) VALUES (?, ?, ?, ?, ?)"),
                ("old", "r", 1000_i64, None::<i64>, 0_i64),
            )
            .await
            .unwrap();
        migrate(&settings).await.expect("migrate adds the tables");
        migrate(&settings).await.expect("and again");
        let store = ScyllaArchiveStore::connect(&settings)
            .await
            .expect("connect");
        let old = store.get_session("old").await.unwrap().expect("kept");
        assert_eq!(
            (old.room.as_str(), old.started_at, old.video_url),
            ("r", 1000, None)
        );
        let url = "https://cdn.example/old.mp4";
        let set = store.set_video_url("old", Some(url)).await.unwrap();
        assert_eq!(set.video_url.as_deref(), Some(url));
        assert_eq!(
            store
                .get_session("old")
                .await
                .unwrap()
                .unwrap()
                .video_url
                .as_deref(),
            Some(url)
        );
        // Listed by room only: it predates the listing tables.
        assert!(store.open_sessions(10).await.unwrap().is_empty());
        store.end_session("old", 2000).await.unwrap();
        assert!(store.open_sessions(10).await.unwrap().is_empty());
    }

    danmaku_core::archive_store_suite!(archive_store_on_kassandra, async {
        let server = CqlTestServer::start();
        let store = store_on(&server, |_| {}).await;
        (server, store)
    });

    fn row(vod: &str, id: u64, offset_ms: i64) -> ArchivedComment {
        ArchivedComment {
            vod: vod.into(),
            offset_ms,
            item: Danmaku {
                id,
                room: "r".into(),
                user: format!("u{}", id % 5),
                name: if id.is_multiple_of(2) {
                    String::new()
                } else {
                    format!("N{id}")
                },
                ts_ms: 1_764_000_000_000 + offset_ms,
                kind: (id % 4) as i32,
                mode: (id % 3) as i32,
                color: 0xFF00FF,
                text: format!("弹幕 {id} '\"quoted\""),
                stream_pos_ms: id.is_multiple_of(3).then_some(offset_ms + 5),
                vod: Some(vod.into()),
                offset_ms: Some(offset_ms),
                hidden: false,
                deletes: None,
            },
        }
    }

    async fn partition_sizes(store: &ScyllaArchiveStore, vod: &str, segment: u32) -> Vec<usize> {
        let states = store.segment_states(vod).await.unwrap();
        let mut out = Vec::new();
        for shard in states[&segment].shards() {
            out.push(
                store
                    .ids_in(vod, segment as i32, shard)
                    .await
                    .unwrap()
                    .len(),
            );
        }
        out
    }

    async fn all_rows(store: &ScyllaArchiveStore, vod: &str) -> Vec<ArchivedComment> {
        let mut out = Vec::new();
        let last = store.last_segment(vod).await.unwrap().unwrap_or(0);
        for seg in 0..=last {
            out.extend(store.read_segment(vod, seg).await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn dense_segments_stay_within_the_row_bound_and_redos_add_nothing() {
        let server = CqlTestServer::start();
        let store = store_on(&server, |s| {
            s.partition_rows = 10;
            s.batch_rows = 4;
        })
        .await;
        let vod = "dense";
        let rows: Vec<ArchivedComment> = (0..200u64)
            .map(|i| row(vod, 1_000 + i, (i as i64 * 997) % 360_000))
            .collect();
        for chunk in rows.chunks(7) {
            store.upsert_comments(chunk).await.unwrap();
        }
        assert_eq!(store.count(vod).await.unwrap(), 200);
        let sizes = partition_sizes(&store, vod, 0).await;
        assert!(
            sizes.iter().all(|&n| n <= 10),
            "a partition past the bound: {sizes:?}"
        );
        assert!(sizes.len() >= 20, "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 200, "each row stored once");

        // Redone in other chunks, then all at once: nothing is added or moved.
        for chunk in rows.chunks(13) {
            store.upsert_comments(chunk).await.unwrap();
        }
        store.upsert_comments(&rows).await.unwrap();
        assert_eq!(store.count(vod).await.unwrap(), 200);
        assert_eq!(partition_sizes(&store, vod, 0).await, sizes);

        let mut expected = rows.clone();
        expected.sort_by_key(|c| (c.offset_ms, c.item.id));
        assert_eq!(
            store.read_segment(vod, 0).await.unwrap(),
            expected,
            "every column round-trips, in order"
        );
        assert_eq!(store.last_segment(vod).await.unwrap(), Some(0));
    }

    /// Forgets every observation of `vod`, as if each write had crashed after
    /// storing its rows and before recording what the partitions held.
    async fn forget_observations(store: &ScyllaArchiveStore, vod: &str) {
        for (segment, state) in store.segment_states(vod).await.unwrap() {
            for (shard, ns) in &state.observed {
                for &n in ns {
                    store
                        .session
                        .execute_unpaged(
                            &store.st.segment_del,
                            (vod, segment as i32, ENTRY_OBSERVED, *shard, n),
                        )
                        .await
                        .unwrap();
                }
            }
        }
    }

    #[tokio::test]
    async fn a_crash_before_the_observation_is_repaired_by_the_redo() {
        let server = CqlTestServer::start();
        for bound in [10u32, 50_000] {
            let store = store_on(&server, |s| s.partition_rows = bound).await;
            let vod = format!("crash{bound}");
            let rows: Vec<ArchivedComment> = (0..120u64)
                .map(|i| row(&vod, 5_000 + i, (i as i64 * 6_007) % 720_000))
                .collect();
            for chunk in rows.chunks(9) {
                store.upsert_comments(chunk).await.unwrap();
            }
            assert_eq!(store.count(&vod).await.unwrap(), 120);
            let sizes = partition_sizes(&store, &vod, 0).await;
            forget_observations(&store, &vod).await;
            assert_eq!(store.count(&vod).await.unwrap(), 0);
            // The redo (the same batches, whole) finds the rows, stores nothing
            // twice and records what the partitions hold.
            store.upsert_comments(&rows).await.unwrap();
            assert_eq!(store.count(&vod).await.unwrap(), 120, "bound {bound}");
            assert_eq!(
                partition_sizes(&store, &vod, 0).await,
                sizes,
                "bound {bound}"
            );
            assert_eq!(all_rows(&store, &vod).await.len(), 120);
        }
    }

    #[tokio::test]
    async fn the_next_segment_is_sharded_from_the_previous_density() {
        let server = CqlTestServer::start();
        let store = store_on(&server, |s| s.partition_rows = 10).await;
        let vod = "busy";
        let seg0: Vec<ArchivedComment> = (0..40u64).map(|i| row(vod, i, i as i64 * 10)).collect();
        store.upsert_comments(&seg0).await.unwrap();
        let seg1 = vec![row(vod, 100, 360_000)];
        store.upsert_comments(&seg1).await.unwrap();
        let states = store.segment_states(vod).await.unwrap();
        // 40 rows, plus a quarter, over 10 per shard: 5 shards from the start.
        assert_eq!(
            states[&1].current(),
            Some(Generation { first: 0, count: 5 })
        );
        assert_eq!(store.count(vod).await.unwrap(), 41);
        assert_eq!(store.last_segment(vod).await.unwrap(), Some(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_count_every_row_once() {
        let server = CqlTestServer::start();
        let store = Arc::new(store_on(&server, |s| s.partition_rows = 15).await);
        let vod = "conc";
        // Four writers, disjoint rows over three segments, small interleaved writes.
        let tasks: Vec<_> = (0..4u64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    let rows: Vec<ArchivedComment> = (0..60u64)
                        .map(|i| {
                            row(
                                vod,
                                w * 1_000 + i,
                                ((i * 17_000 + w * 333) % 1_080_000) as i64,
                            )
                        })
                        .collect();
                    for chunk in rows.chunks(5) {
                        store.upsert_comments(chunk).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store.count(vod).await.unwrap(), 240);
        let got = all_rows(&store, vod).await;
        assert_eq!(got.len(), 240);
        assert_eq!(
            got.iter().map(|c| c.item.id).collect::<HashSet<_>>().len(),
            240
        );

        // Two writers redoing the same rows at once (a batch whose lease expired
        // mid-way), in one generation: stored and counted once.
        let vod2 = "same";
        let rows: Arc<Vec<ArchivedComment>> = Arc::new(
            (0..100u64)
                .map(|i| row(vod2, i, i as i64 * 1_000))
                .collect(),
        );
        let store2 = Arc::new(store_on(&server, |_| {}).await);
        let tasks: Vec<_> = [3usize, 7]
            .into_iter()
            .map(|n| {
                let (store, rows) = (store2.clone(), rows.clone());
                tokio::spawn(async move {
                    for chunk in rows.chunks(n) {
                        store.upsert_comments(chunk).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(store2.count(vod2).await.unwrap(), 100);
        assert_eq!(all_rows(&store2, vod2).await.len(), 100);
    }

    // With feature `real-node`, `DANMAKU_TEST_SCYLLA=host:port[,host:port]` runs
    // the suite against a real ScyllaDB or Cassandra node (in a fresh keyspace);
    // without the variable these cases fail rather than pass having run nothing.
    #[cfg(feature = "real-node")]
    danmaku_core::archive_store_suite!(archive_store_on_a_real_node, async {
        let nodes = std::env::var("DANMAKU_TEST_SCYLLA")
            .expect("feature real-node: set DANMAKU_TEST_SCYLLA=host:port[,host:port]");
        let settings = ScyllaSettings {
            nodes,
            keyspace: format!("danmaku_test_{}", rand::random::<u32>()),
            ..Default::default()
        };
        migrate(&settings).await.expect("migrate");
        let store = ScyllaArchiveStore::connect(&settings)
            .await
            .expect("connect");
        ((), store)
    });
}
