//! `danmaku-archive`: the role that drains expired slices from the SliceStore into
//! the ArchiveStore (by VOD and offset) and into Parquet files, exactly once
//! (DESIGN §8).
//!
//! - This file: the loop ([`run`]), one batch ([`archive_once`],
//!   [`process_batch`]), the expiry of archived slices ([`expire_once`]), the
//!   graceful-shutdown drain ([`drain`]), the error type and the metrics.
//! - `batch` (private): decoding a batch's comments, aligning them to their VOD
//!   session and encoding its files; pure, run on the blocking pool.
//! - [`parquet_file`]: the Parquet schema, writer settings, object names and hour
//!   partitions; pure functions.
//! - [`compact`]: compaction of one hour's files into one ([`compact_hour`], for
//!   `danmaku archive compact --hour YYYY-MM-DDTHH`), safe to rerun and to run
//!   while archivers write.
//!
//! Exactly once: a batch is claimed with a lease, then written in the order
//! ArchiveStore upsert (idempotent by vod and id) → ArchiveStore deletions (the
//! batch's deletion records; idempotent) → Parquet `put` (one object per
//! hour, named after the hour and the batch id only, so a redo overwrites it with
//! the same bytes; likewise one deletion file per day,
//! `deletions/date=YYYY-MM-DD/batch-<id>.parquet`) → `complete_batch`. A crash anywhere before the last step lets
//! the lease expire; the batch is then handed out again with the same id and
//! contents and redone, which adds nothing twice. A redo after its hour was
//! compacted deletes the part it rewrote again ([`compact::superseded`]).
//!
//! Leases: [`archive_once`] renews its batch's lease every third of
//! `archive.lease_ms` while it works, so the lease can be short (5 s by default)
//! and a crashed archiver's batch is redone within seconds; a batch that takes
//! longer than the lease keeps it. (The embedded store releases a dead process's
//! leases when it opens, so there a batch is redone as soon as the node is back.)
//!
//! Retention: archiving copies. The SliceStore keeps archived slices readable
//! (for cursors, resumes, polls) until their hot retention ends; [`run`] deletes
//! them then, with [`expire_once`] every `archive.poll_ms`.
//!
//! Crash points for the process-level tests (debug builds only):
//! `DMK_ARCHIVE_CRASH_AT=after_claim|after_upsert|after_first_file|before_complete|after_complete`
//! aborts the process (`std::process::abort`, like kill -9) the first time a batch
//! with at least one row reaches that step. (Not `DANMAKU_*`: the configuration
//! loader reads every `DANMAKU_*` variable as a setting.)
//!
//! Metrics (no per-room labels): `danmaku_archive_rows_total`,
//! `danmaku_archive_batches_total`, `danmaku_archive_batch_seconds`,
//! `danmaku_archive_decode_errors_total`, `danmaku_archive_lease_renewals_total{result}`,
//! `danmaku_archive_expired_slices_total`, `danmaku_archive_deletions_total`.

#![warn(missing_docs)]

pub mod batch;
pub mod compact;
pub mod parquet_file;

pub use compact::{compact_hour, CompactError, CompactReport};
pub use danmaku_core::context::Context;

use danmaku_core::ports::{ArchiveBatch, ArchiveError, ObjectStoreError, SliceError};
use danmaku_core::vod::Session;
use futures::future::try_join_all;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sessions loaded per room and batch: more than any room keeps open at once.
const SESSIONS_PER_ROOM: usize = 1000;
/// Longest wait between attempts after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Metric names.
pub mod metric {
    /// Counter: comments written to Parquet.
    pub const ROWS_TOTAL: &str = "danmaku_archive_rows_total";
    /// Counter: batches archived and completed.
    pub const BATCHES_TOTAL: &str = "danmaku_archive_batches_total";
    /// Histogram: seconds from claiming a batch to completing it.
    pub const BATCH_SECONDS: &str = "danmaku_archive_batch_seconds";
    /// Counter: slice records that did not decode and were skipped.
    pub const DECODE_ERRORS_TOTAL: &str = "danmaku_archive_decode_errors_total";
    /// Counter: lease renewals of batches in progress, by `result`: `renewed`,
    /// `lost` (the batch was completed elsewhere), `error`.
    pub const LEASE_RENEWALS_TOTAL: &str = "danmaku_archive_lease_renewals_total";
    /// Counter: archived slices deleted from the SliceStore once their hot
    /// retention ended.
    pub const EXPIRED_SLICES_TOTAL: &str = "danmaku_archive_expired_slices_total";
    /// Counter: deletion records archived (applied to the ArchiveStore where
    /// they name a VOD, and written to `deletions/`).
    pub const DELETIONS_TOTAL: &str = "danmaku_archive_deletions_total";
}

/// What one archived batch wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchReport {
    /// The SliceStore's batch id (the same on a redo).
    pub batch_id: u64,
    /// Comments written to Parquet: every one of the batch that decoded.
    pub rows: usize,
    /// Of those, comments stored in the ArchiveStore under a VOD.
    pub vod_rows: usize,
    /// Deletion records of the batch (written to `deletions/`).
    pub deletions: usize,
    /// Object names written: one per hour partition, oldest first, then one
    /// deletion file per day.
    pub files: Vec<String>,
}

/// Why archiving a batch failed. Every failure leaves the batch claimed; it is
/// redone once its lease expires, so callers only log and retry.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveRoleError {
    /// Claiming, completing or counting slices failed.
    #[error("slice store: {0}")]
    Slices(#[from] SliceError),
    /// Loading sessions or storing comments failed.
    #[error("archive store: {0}")]
    Archive(#[from] ArchiveError),
    /// Writing a Parquet file failed.
    #[error("object store: {0}")]
    Objects(#[from] ObjectStoreError),
    /// Encoding a Parquet file failed.
    #[error("parquet encoding: {0}")]
    Encode(#[from] parquet_file::EncodeError),
    /// The blocking task that decodes and encodes a batch panicked or was cancelled.
    #[error("encoding task failed: {0}")]
    Task(String),
    /// [`drain`]'s deadline passed inside a batch; the batch will be redone.
    #[error("archive drain deadline passed")]
    Timeout,
    /// Checking whether a rewritten file was already compacted failed.
    #[error("compaction check: {0}")]
    Compaction(#[from] CompactError),
}

/// Aborts the process at `step` when `DMK_ARCHIVE_CRASH_AT` names it (debug
/// builds only; see the crate documentation). Release builds never read the variable.
fn crash_point(step: &str) {
    #[cfg(debug_assertions)]
    {
        static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let at = AT.get_or_init(|| std::env::var("DMK_ARCHIVE_CRASH_AT").ok());
        if at.as_deref() == Some(step) {
            eprintln!("DMK_ARCHIVE_CRASH_AT={step}: aborting");
            std::process::abort();
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

/// Runs the archive loop until `shutdown` is cancelled: claim a batch, process it,
/// repeat; when nothing is due, sleep `archive.poll_ms`. Archived slices whose
/// hot retention ended are deleted ([`expire_once`]) at most once per `poll_ms`.
/// Errors are logged and retried with exponential backoff (from `poll_ms` up to
/// 30 s). A batch in progress when `shutdown` fires is finished first (abandoning
/// it would only leave it to be redone after its lease); sleeps end at once.
pub async fn run(ctx: Context, shutdown: CancellationToken) {
    let poll = Duration::from_millis(ctx.settings.archive.poll_ms.max(1));
    let mut backoff = poll;
    let mut next_expiry = tokio::time::Instant::now();
    tracing::info!(
        poll_ms = ctx.settings.archive.poll_ms,
        batch_slices = ctx.settings.archive.batch_slices,
        lease_ms = ctx.settings.archive.lease_ms,
        "archive loop started"
    );
    while !shutdown.is_cancelled() {
        if tokio::time::Instant::now() >= next_expiry {
            next_expiry = tokio::time::Instant::now() + poll;
            if let Err(e) = expire_once(&ctx, danmaku_core::now_ms()).await {
                tracing::warn!(error = %e, "expiring archived slices failed; retrying later");
            }
        }
        let pause = match archive_once(&ctx, danmaku_core::now_ms()).await {
            Ok(Some(report)) => {
                backoff = poll;
                tracing::debug!(
                    batch_id = report.batch_id,
                    rows = report.rows,
                    vod_rows = report.vod_rows,
                    files = report.files.len(),
                    "batch archived"
                );
                // More may be due right away; let other tasks run, then go on.
                tokio::task::yield_now().await;
                continue;
            }
            Ok(None) => {
                backoff = poll;
                poll
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "archive batch failed; retrying");
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF.max(poll));
                pause
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    tracing::info!("archive loop stopped");
}

/// Claims and processes at most one batch due at `now_ms` (or one whose lease
/// expired by then). `Ok(None)` when nothing was due. While it works it renews
/// the batch's lease every third of `archive.lease_ms` (on the clock of `now_ms`:
/// `now_ms` plus the time since the claim); a renewal that fails is logged and
/// the work goes on (a batch redone by another archiver meanwhile is written the
/// same way twice, which adds nothing).
pub async fn archive_once(
    ctx: &Context,
    now_ms: i64,
) -> Result<Option<BatchReport>, ArchiveRoleError> {
    let settings = &ctx.settings.archive;
    let lease = Duration::from_millis(settings.lease_ms.max(1));
    let Some(batch) = ctx
        .slices
        .claim_batch(now_ms, settings.batch_slices.max(1), lease)
        .await?
    else {
        return Ok(None);
    };
    let batch_id = batch.id;
    let claimed = tokio::time::Instant::now();
    let every = (lease / 3).max(Duration::from_millis(1));
    let renew = async {
        let mut tick = tokio::time::interval_at(claimed + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let at = now_ms.saturating_add(claimed.elapsed().as_millis() as i64);
            let result = match ctx.slices.renew_lease(batch_id, at, lease).await {
                Ok(true) => "renewed",
                Ok(false) => {
                    tracing::debug!(batch_id, "lease no longer held (completed elsewhere)");
                    "lost"
                }
                Err(e) => {
                    tracing::warn!(batch_id, error = %e, "renewing the batch's lease failed");
                    "error"
                }
            };
            metrics::counter!(metric::LEASE_RENEWALS_TOTAL, "result" => result).increment(1);
        }
    };
    tokio::select! {
        done = process_batch(ctx, batch) => done.map(Some),
        () = renew => unreachable!("the renewal loop never ends"),
    }
}

/// Deletes the archived slices whose hot retention ended by `now_ms`
/// ([`danmaku_core::ports::SliceStore::expire_archived`]); returns how many.
pub async fn expire_once(ctx: &Context, now_ms: i64) -> Result<u64, ArchiveRoleError> {
    let n = ctx.slices.expire_archived(now_ms).await?;
    if n > 0 {
        metrics::counter!(metric::EXPIRED_SLICES_TOTAL).increment(n);
        tracing::debug!(slices = n, "archived slices expired");
    }
    Ok(n)
}

/// Archives a batch this archiver has claimed: aligns its comments, upserts those
/// of a VOD into the ArchiveStore, writes its Parquet files, then completes it in
/// the SliceStore. Processing the same batch again (a redo) writes the same rows
/// and the same files, so nothing comes out twice.
pub async fn process_batch(
    ctx: &Context,
    batch: ArchiveBatch,
) -> Result<BatchReport, ArchiveRoleError> {
    let started = std::time::Instant::now();
    let batch_id = batch.id;
    let sessions = load_sessions(ctx, &batch).await?;
    let window = ctx.settings.archive.plausible_window_ms;
    let items = batch.items;
    let task = |e: tokio::task::JoinError| ArchiveRoleError::Task(e.to_string());
    let aligned = tokio::task::spawn_blocking(move || {
        std::sync::Arc::new(batch::align(batch_id, items, &sessions, window))
    })
    .await
    .map_err(task)?;
    if aligned.decode_errors > 0 {
        metrics::counter!(metric::DECODE_ERRORS_TOTAL).increment(aligned.decode_errors as u64);
    }

    let crashable = aligned.rows() > 0 || !aligned.deletions.is_empty();
    if crashable {
        crash_point("after_claim");
    }
    // The files are encoded on the blocking pool while the rows are upserted; both
    // happen before any file is written, as before.
    let encoding = {
        let aligned = aligned.clone();
        tokio::task::spawn_blocking(move || {
            let mut files = batch::encode(batch_id, &aligned)?;
            files.extend(batch::encode_deletions(batch_id, &aligned)?);
            Ok::<_, parquet_file::EncodeError>(files)
        })
    };
    let (upserted, encoded) =
        tokio::join!(ctx.archive.upsert_comments(&aligned.archived), encoding);
    upserted?;
    // After the upsert: a redo re-applies them, and the store keeps a deleted
    // comment out of any later upsert.
    ctx.archive
        .delete_comments(&aligned.store_deletions)
        .await?;
    let encoded_files = encoded.map_err(task)??;
    if crashable {
        crash_point("after_upsert");
    }
    let mut files = Vec::with_capacity(encoded_files.len());
    for (name, bytes) in encoded_files {
        ctx.objects.put(&name, bytes).await?;
        if !name.starts_with(parquet_file::DELETIONS_DIR)
            && compact::superseded(&*ctx.objects, &name).await?
        {
            // A redo of a batch whose hour was compacted meanwhile: the rows are
            // in the compacted file already. (Deleting a missing object is Ok.)
            ctx.objects.delete(&name).await?;
            tracing::info!(batch_id, file = %name, "batch redone after compaction; its rows are already compacted");
        }
        if files.is_empty() {
            crash_point("after_first_file");
        }
        files.push(name);
    }
    if crashable {
        crash_point("before_complete");
    }
    ctx.slices.complete_batch(batch_id).await?;
    if crashable {
        crash_point("after_complete");
    }

    metrics::counter!(metric::ROWS_TOTAL).increment(aligned.rows() as u64);
    metrics::counter!(metric::DELETIONS_TOTAL).increment(aligned.deletions.len() as u64);
    metrics::counter!(metric::BATCHES_TOTAL).increment(1);
    metrics::histogram!(metric::BATCH_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(BatchReport {
        batch_id,
        rows: aligned.rows(),
        vod_rows: aligned.archived.len(),
        deletions: aligned.deletions.len(),
        files,
    })
}

/// The sessions of every room in `batch`, loaded once per room.
async fn load_sessions(
    ctx: &Context,
    batch: &ArchiveBatch,
) -> Result<HashMap<String, Vec<Session>>, ArchiveRoleError> {
    let rooms: BTreeSet<&str> = batch.items.iter().map(|(room, _)| room.as_str()).collect();
    let loads = rooms.into_iter().map(|room| async move {
        let sessions = ctx
            .archive
            .sessions_by_room(room, SESSIONS_PER_ROOM)
            .await?;
        Ok::<_, ArchiveError>((room.to_string(), sessions))
    });
    Ok(try_join_all(loads).await?.into_iter().collect())
}

/// Graceful shutdown of the embedded default: makes every slice due
/// (`expedite_all`), then archives batch after batch until nothing is pending or
/// `deadline` has passed. Returns the rows archived. Failures are retried until
/// the deadline; if slices are still pending then and the last attempt failed,
/// that error is returned (a batch cut off by the deadline is redone on the next
/// start). Slices still pending without an error (say, a batch another archiver
/// holds under its lease) are logged, not an error.
pub async fn drain(ctx: &Context, deadline: Duration) -> Result<u64, ArchiveRoleError> {
    use tokio::time::{timeout_at, Instant};
    let until = Instant::now() + deadline;
    let poll = Duration::from_millis(ctx.settings.archive.poll_ms.clamp(1, 50));
    let mut rows = 0u64;
    let mut expedited = false;
    let mut pending_left: Option<u64> = None;
    let mut last_error: Option<ArchiveRoleError> = None;
    let mut backoff = poll;
    loop {
        let attempt = async {
            if !expedited {
                ctx.slices.expedite_all().await?;
                expedited = true;
            }
            let pending = ctx.slices.pending().await?;
            pending_left = Some(pending);
            if pending == 0 {
                return Ok(None);
            }
            archive_once(ctx, danmaku_core::now_ms()).await.map(Some)
        };
        let pause = match timeout_at(until, attempt).await {
            Err(_) => {
                // Cut off inside a step; whatever it was doing is redone later.
                last_error.get_or_insert(ArchiveRoleError::Timeout);
                break;
            }
            Ok(Ok(None)) => {
                tracing::info!(rows, "archive drained");
                return Ok(rows);
            }
            Ok(Ok(Some(Some(report)))) => {
                rows += report.rows as u64;
                last_error = None;
                backoff = poll;
                continue;
            }
            // Pending, but nothing claimable: a batch leased elsewhere. Wait for it.
            Ok(Ok(Some(None))) => poll,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "archive drain: attempt failed; retrying");
                last_error = Some(e);
                let pause = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                pause
            }
        };
        if timeout_at(until, tokio::time::sleep(pause)).await.is_err() {
            break;
        }
    }
    match last_error {
        Some(e) => Err(e),
        None => {
            tracing::warn!(
                rows,
                pending = pending_left,
                "archive drain deadline passed with slices still pending"
            );
            Ok(rows)
        }
    }
}
