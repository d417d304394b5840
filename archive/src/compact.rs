//! Compaction of one hour partition (`danmaku archive compact --hour
//! YYYY-MM-DDTHH`): the hour's small `part-<batch>.parquet` files become one
//! `compacted-<hash>.parquet`, safely rerun and safely run while archivers write.
//!
//! How it stays exactly-once:
//!
//! - Every compacted file lists, in its key-value metadata
//!   ([`COMPACTED_FROM_KEY`]), the name of every file whose rows it holds,
//!   transitively (merging a compacted file carries its list over). A file listed
//!   by a compacted file of the same hour is *covered*: its rows are there.
//! - A run merges the hour's files that are not covered (parts and compacted
//!   files), keeping each comment id once, writes the result under a name derived
//!   from its list (the same inputs give the same name and the same bytes), with a
//!   single `put` (atomic by the [`ObjectStore`] port's guarantee; past
//!   [`MULTIPART_PART_BYTES`] a `put_multipart`, visible only once complete), and
//!   only then deletes its inputs and every covered file.
//!   A crash before the `put` leaves the inputs; a crash after it leaves covered
//!   files that the next run deletes without merging them again.
//! - An archiver redoing a batch after its part was compacted writes the part
//!   again: after its `put` it checks whether a compacted file of the hour covers
//!   that name ([`superseded`]) and, if so, deletes it again. Whatever the
//!   interleaving with a compaction, either the archiver sees the compacted file
//!   or the compaction, which lists before it writes, deletes the part after it.
//!   Two compactions of one hour at once can write two overlapping files; the next
//!   run merges them, still keeping each id once.
//!
//! Deletions: a run first reads the ids of the deletion files
//! (`deletions/date=YYYY-MM-DD/*.parquet`) of the hour's day and later days (a
//! comment is deleted after it was sent) and leaves those rows out of its
//! output; an hour with a single file is rewritten when that file holds a
//! deleted id, so running compaction again after a deletion drops it.
//!
//! Readers listing the hour between the `put` and the deletes (milliseconds) see
//! some rows twice; that is the one window plain files cannot close (a table
//! format such as Iceberg would).

use crate::parquet_file::{self, DecodeError, EncodeError, ParquetRow};
use bytes::Bytes;
use danmaku_core::ports::{ObjectStore, ObjectStoreError};
use futures::TryStreamExt;
use parquet::file::metadata::{KeyValue, ParquetMetaDataReader};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// Key-value metadata of a compacted file: the names (within the hour directory)
/// of every file whose rows it holds, sorted, separated by `,`.
pub const COMPACTED_FROM_KEY: &str = "danmaku.compacted_from";
/// Name prefix of the archiver's per-batch files.
pub const PART_PREFIX: &str = "part-";
/// Name prefix of compacted files.
pub const COMPACTED_PREFIX: &str = "compacted-";

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// The hour directory, `date=YYYY-MM-DD/hour=HH`.
    pub hour: String,
    /// Files merged into the output (0 when there was nothing to merge).
    pub files_merged: usize,
    /// Rows in the output.
    pub rows: usize,
    /// The output's object name, if one was written.
    pub output: Option<String>,
    /// Files deleted because a compacted file already held their rows (left by an
    /// earlier run that stopped before its deletes, or rewritten by a redo).
    pub covered_deleted: usize,
    /// Rows left out because their comment was deleted (`deletions/`).
    pub deleted_rows: usize,
}

/// Why a compaction failed. Nothing is lost on failure: inputs are deleted only
/// after the output is in place.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// The hour argument is not `YYYY-MM-DDTHH`.
    #[error("invalid hour {0:?}: expected YYYY-MM-DDTHH (UTC), e.g. 2025-11-24T16")]
    Hour(String),
    /// Listing, reading, writing or deleting an object failed.
    #[error("object store: {0}")]
    Objects(#[from] ObjectStoreError),
    /// A file of the hour could not be read as an archive file.
    #[error("reading {file}: {source}")]
    Read {
        /// The object name.
        file: String,
        /// What went wrong.
        source: DecodeError,
    },
    /// Encoding the output failed.
    #[error("encoding the compacted file: {0}")]
    Encode(#[from] EncodeError),
    /// The blocking task that decodes and encodes panicked.
    #[error("compaction task failed: {0}")]
    Task(String),
}

/// The hour directory of `hour` (`YYYY-MM-DDTHH`, UTC): `date=YYYY-MM-DD/hour=HH`.
pub fn hour_dir(hour: &str) -> Result<String, CompactError> {
    let bad = || CompactError::Hour(hour.to_string());
    let (date, hh) = hour.split_once('T').ok_or_else(bad)?;
    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
    if hh.len() != 2 || !hh.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let hh: u32 = hh.parse().map_err(|_| bad())?;
    if hh > 23 {
        return Err(bad());
    }
    Ok(format!("date={}/hour={hh:02}", date.format("%Y-%m-%d")))
}

/// The hour directory and file name of an object name, if it is an archive file.
fn split_name(location: &str) -> Option<(&str, &str)> {
    let (dir, file) = location.rsplit_once('/')?;
    let archive_file = (file.starts_with(PART_PREFIX) || file.starts_with(COMPACTED_PREFIX))
        && file.ends_with(".parquet");
    archive_file.then_some((dir, file))
}

/// The files a compacted file's metadata lists.
fn listed_files(kv: &[KeyValue]) -> BTreeSet<String> {
    kv.iter()
        .find(|k| k.key == COMPACTED_FROM_KEY)
        .and_then(|k| k.value.as_deref())
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The file names (within the directory) of the archive files in `dir`.
async fn list_hour(objects: &dyn ObjectStore, dir: &str) -> Result<Vec<String>, CompactError> {
    let mut names: Vec<String> = objects
        .list(dir)
        .try_filter_map(|m| async move {
            // Only the directory's own files, not those of a subdirectory.
            Ok(split_name(&m.path).and_then(|(d, f)| (d == dir).then(|| f.to_string())))
        })
        .try_collect()
        .await?;
    names.sort();
    Ok(names)
}

/// The ids deleted on the day of hour directory `dir` (`date=YYYY-MM-DD/hour=HH`)
/// or later: every id of the deletion files under `deletions/date=D/` with
/// `D` at least that day.
pub async fn deleted_ids_since(
    objects: &dyn ObjectStore,
    dir: &str,
) -> Result<HashSet<u64>, CompactError> {
    let day = dir.split('/').next().unwrap_or(dir);
    let prefix = format!("{}/", parquet_file::DELETIONS_DIR);
    let files: Vec<String> = objects
        .list(parquet_file::DELETIONS_DIR)
        .try_filter_map(|m| {
            let keep = m
                .path
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(d, f)| {
                    d.starts_with("date=") && d >= day && f.ends_with(".parquet")
                });
            async move { Ok(keep.then_some(m.path)) }
        })
        .try_collect()
        .await?;
    let mut ids = HashSet::new();
    for file in files {
        let bytes = match objects.get(&file).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        let rows = tokio::task::spawn_blocking(move || parquet_file::decode_deletions(bytes))
            .await
            .map_err(|e| CompactError::Task(e.to_string()))?
            .map_err(|source| CompactError::Read {
                file: file.clone(),
                source,
            })?;
        ids.extend(rows.into_iter().map(|r| r.id));
    }
    Ok(ids)
}

/// The key-value metadata of a Parquet object, read from its footer only (two
/// ranged reads, not the whole file).
async fn footer_metadata(
    objects: &dyn ObjectStore,
    location: &str,
) -> Result<Vec<KeyValue>, CompactError> {
    let read_err = |e: parquet::errors::ParquetError| CompactError::Read {
        file: location.to_string(),
        source: DecodeError::Parquet(e),
    };
    let size = objects.head(location).await?.size;
    if size < 8 {
        return Err(read_err(parquet::errors::ParquetError::EOF(
            "shorter than a footer".into(),
        )));
    }
    let tail = objects.get_range(location, size - 8..size).await?;
    let tail: [u8; 8] = tail[..].try_into().expect("8 bytes");
    let len = ParquetMetaDataReader::decode_footer_tail(&tail)
        .map_err(read_err)?
        .metadata_length() as u64;
    if len + 8 > size {
        return Err(read_err(parquet::errors::ParquetError::EOF(
            "footer longer than the file".into(),
        )));
    }
    let meta = objects
        .get_range(location, size - 8 - len..size - 8)
        .await?;
    let meta = ParquetMetaDataReader::decode_metadata(&meta).map_err(read_err)?;
    Ok(meta
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default())
}

/// Whether the archive file `name` (a full object name such as
/// `date=.../hour=16/part-...parquet`) is covered by a compacted file of its
/// hour, i.e. its rows are already there. The archiver calls this after each
/// `put` and deletes the file again if so (a batch redone after compaction).
pub async fn superseded(objects: &dyn ObjectStore, name: &str) -> Result<bool, CompactError> {
    let Some((dir, file)) = split_name(name) else {
        return Ok(false);
    };
    for other in list_hour(objects, dir).await? {
        if !other.starts_with(COMPACTED_PREFIX) || other == file {
            continue;
        }
        let location = format!("{dir}/{other}");
        match footer_metadata(objects, &location).await {
            Ok(kv) if listed_files(&kv).contains(file) => return Ok(true),
            Ok(_) => {}
            // Deleted by a compaction in between: its successor is listed next time.
            Err(CompactError::Objects(e)) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// A stable 64-bit FNV-1a hash, for output names.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The output name for a compacted file holding the files of `listed`.
pub fn compacted_name(listed: &BTreeSet<String>) -> String {
    let joined = listed
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{COMPACTED_PREFIX}{:016x}.parquet",
        fnv1a(joined.as_bytes())
    )
}

/// Rows of several files, sorted into file order (room, ts, id), each comment id
/// once (the first file, in the given order, wins). Pure.
pub fn merge_rows(files: Vec<Vec<ParquetRow>>) -> Vec<ParquetRow> {
    let mut seen = HashSet::new();
    let mut rows: Vec<ParquetRow> = files
        .into_iter()
        .flatten()
        .filter(|r| seen.insert(r.id))
        .collect();
    parquet_file::sort_rows(&mut rows);
    rows
}

/// Compacts the hour `hour` (`YYYY-MM-DDTHH`, UTC) under `objects`: merges its
/// files that no compacted file covers into one (see the module documentation),
/// then deletes the merged and the covered files. Running it again, after a
/// crash, or while archivers write into the hour keeps every row exactly once.
pub async fn compact_hour(
    objects: &dyn ObjectStore,
    hour: &str,
) -> Result<CompactReport, CompactError> {
    let dir = hour_dir(hour)?;
    let mut report = CompactReport {
        hour: dir.clone(),
        ..Default::default()
    };
    let names = list_hour(objects, &dir).await?;
    let location = |file: &str| format!("{dir}/{file}");

    // What the existing compacted files cover.
    let mut covered: BTreeSet<String> = BTreeSet::new();
    let mut lists: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in names.iter().filter(|n| n.starts_with(COMPACTED_PREFIX)) {
        match footer_metadata(objects, &location(name)).await {
            Ok(kv) => {
                let listed = listed_files(&kv);
                covered.extend(listed.iter().filter(|f| *f != name).cloned());
                lists.insert(name.clone(), listed);
            }
            // Deleted meanwhile by a concurrent compaction.
            Err(CompactError::Objects(e)) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    let inputs: Vec<&String> = names
        .iter()
        .filter(|n| !covered.contains(*n))
        .filter(|n| !n.starts_with(COMPACTED_PREFIX) || lists.contains_key(*n))
        .collect();
    let covered_here: Vec<&String> = names.iter().filter(|n| covered.contains(*n)).collect();
    let deleted = if inputs.is_empty() {
        HashSet::new()
    } else {
        deleted_ids_since(objects, &dir).await?
    };

    if inputs.len() > 1 || (inputs.len() == 1 && !deleted.is_empty()) {
        // Read every input, then decode, merge and encode off the async runtime.
        let mut files: Vec<(String, Bytes)> = Vec::with_capacity(inputs.len());
        let mut listed: BTreeSet<String> = BTreeSet::new();
        for name in &inputs {
            let bytes = match objects.get(&location(name)).await {
                Ok(bytes) => bytes,
                // A concurrent compaction merged it; the next run reconciles.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            listed.insert((*name).clone());
            if let Some(l) = lists.get(*name) {
                listed.extend(l.iter().cloned());
            }
            files.push(((*name).clone(), bytes));
        }
        let output = compacted_name(&listed);
        let manifest = listed
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(",");
        let merged = files.len();
        let single = merged == 1;
        let outcome = tokio::task::spawn_blocking(move || {
            let mut decoded = Vec::with_capacity(files.len());
            for (name, bytes) in files {
                let (rows, _) =
                    parquet_file::decode(bytes).map_err(|source| CompactError::Read {
                        file: name.clone(),
                        source,
                    })?;
                decoded.push(rows);
            }
            let mut rows = merge_rows(decoded);
            let before = rows.len();
            rows.retain(|r| !deleted.contains(&r.id));
            let dropped = before - rows.len();
            if single && dropped == 0 {
                return Ok::<_, CompactError>(None); // one file, nothing deleted in it
            }
            let bytes = parquet_file::encode_sorted(
                &rows,
                vec![KeyValue::new(COMPACTED_FROM_KEY.to_string(), manifest)],
            )?;
            Ok(Some((rows.len(), dropped, bytes)))
        })
        .await
        .map_err(|e| CompactError::Task(e.to_string()))??;
        let Some((rows, dropped, bytes)) = outcome else {
            return finish(objects, report, &dir, covered_here).await;
        };
        put_whole(objects, &location(&output), bytes).await?;
        let doomed: Vec<String> = inputs
            .iter()
            .filter(|n| **n != &output)
            .map(|n| location(n))
            .collect();
        delete_all(objects, doomed).await?;
        report.files_merged = merged;
        report.rows = rows;
        report.deleted_rows = dropped;
        report.output = Some(format!("{dir}/{output}"));
        tracing::info!(hour = %dir, files = merged, rows, deleted_rows = dropped, output = %output, "hour compacted");
    }
    finish(objects, report, &dir, covered_here).await
}

/// Deletes the hour's covered files (but the output) and completes the report.
async fn finish(
    objects: &dyn ObjectStore,
    mut report: CompactReport,
    dir: &str,
    covered_here: Vec<&String>,
) -> Result<CompactReport, CompactError> {
    let leftovers: Vec<String> = covered_here
        .iter()
        .filter(|n| report.output.as_deref() != Some(&format!("{dir}/{n}")))
        .map(|n| format!("{dir}/{n}"))
        .collect();
    report.covered_deleted = leftovers.len();
    delete_all(objects, leftovers).await?;
    Ok(report)
}

/// Part size of the multipart uploads of [`put_whole`]; an object up to this size
/// goes up in one `put`. S3 wants parts of at least 5 MiB (but the last).
pub const MULTIPART_PART_BYTES: usize = 16 << 20;

/// Writes `bytes` to `location` atomically: readers see the old object or the
/// whole new one, never a part. Up to [`MULTIPART_PART_BYTES`] a single `put`;
/// beyond, a `put_multipart` (so a large compacted hour is not one request under
/// the S3 client's per-request timeout), abandoned again if a part fails.
pub async fn put_whole(
    objects: &dyn ObjectStore,
    location: &str,
    bytes: Bytes,
) -> Result<(), ObjectStoreError> {
    put_whole_with(objects, location, bytes, MULTIPART_PART_BYTES).await
}

/// [`put_whole`] with the part size `part_bytes` (for tests).
pub async fn put_whole_with(
    objects: &dyn ObjectStore,
    location: &str,
    bytes: Bytes,
    part_bytes: usize,
) -> Result<(), ObjectStoreError> {
    let part_bytes = part_bytes.max(1);
    if bytes.len() <= part_bytes {
        return objects.put(location, bytes).await;
    }
    objects.put_multipart(location, bytes, part_bytes).await
}

/// Deletes `paths` in bulk; one already gone is fine (the port's guarantee).
async fn delete_all(objects: &dyn ObjectStore, paths: Vec<String>) -> Result<(), CompactError> {
    if paths.is_empty() {
        return Ok(());
    }
    Ok(objects.delete_many(paths).await?)
}

/// Every hour directory (`date=.../hour=HH`) under `objects` holding archive
/// files, oldest first.
pub async fn list_hours(objects: &dyn ObjectStore) -> Result<Vec<String>, CompactError> {
    let mut hours: BTreeSet<String> = BTreeSet::new();
    let mut listing = objects.list("");
    while let Some(meta) = listing.try_next().await? {
        if let Some((dir, _)) = split_name(&meta.path) {
            // Hour directories only (not `deletions/`).
            if dir.starts_with("date=") {
                hours.insert(dir.to_string());
            }
        }
    }
    Ok(hours.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_parse_strictly() {
        assert_eq!(
            hour_dir("2025-11-24T16").unwrap(),
            "date=2025-11-24/hour=16"
        );
        assert_eq!(
            hour_dir("2025-01-02T05").unwrap(),
            "date=2025-01-02/hour=05"
        );
        for bad in [
            "2025-11-24",
            "2025-11-24T24",
            "2025-11-24T5",
            "2025-11-24T005",
            "2025-13-01T00",
            "2025-11-24 16",
            "2025-11-24T1a",
            "../x/T00",
            "",
        ] {
            assert!(matches!(hour_dir(bad), Err(CompactError::Hour(_))), "{bad}");
        }
    }

    #[test]
    fn names_split_and_lists_parse() {
        assert_eq!(
            split_name("date=2025-11-24/hour=16/part-00000000000000000007.parquet"),
            Some((
                "date=2025-11-24/hour=16",
                "part-00000000000000000007.parquet"
            ))
        );
        assert_eq!(
            split_name("date=2025-11-24/hour=16/compacted-00ff.parquet"),
            Some(("date=2025-11-24/hour=16", "compacted-00ff.parquet"))
        );
        assert_eq!(split_name("date=2025-11-24/hour=16/notes.txt"), None);
        assert_eq!(split_name("part-1.parquet"), None);
        let kv = vec![KeyValue::new(
            COMPACTED_FROM_KEY.into(),
            "a,b,,c".to_string(),
        )];
        assert_eq!(
            listed_files(&kv),
            BTreeSet::from(["a".to_string(), "b".into(), "c".into()])
        );
        assert!(listed_files(&[]).is_empty());
    }

    #[test]
    fn output_names_depend_only_on_the_list() {
        let a = BTreeSet::from(["p1".to_string(), "p2".into()]);
        let b = BTreeSet::from(["p2".to_string(), "p1".into()]);
        assert_eq!(compacted_name(&a), compacted_name(&b));
        assert_ne!(
            compacted_name(&a),
            compacted_name(&BTreeSet::from(["p1".to_string()]))
        );
        assert!(compacted_name(&a).starts_with(COMPACTED_PREFIX));
        assert!(compacted_name(&a).ends_with(".parquet"));
    }

    fn row(id: u64, room: &str, ts_ms: i64) -> ParquetRow {
        ParquetRow {
            id,
            room: room.into(),
            vod: None,
            offset_ms: None,
            ts_ms,
            user: "u".into(),
            name: None,
            kind: "comment",
            mode: "scroll",
            color: 0,
            text: format!("t{id}"),
            hidden: false,
        }
    }

    #[test]
    fn merging_keeps_each_id_once_in_file_order() {
        let merged = merge_rows(vec![
            vec![row(3, "b", 10), row(1, "a", 20)],
            vec![row(1, "a", 20), row(2, "a", 5)],
            vec![],
        ]);
        let ids: Vec<u64> = merged.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 1, 3]);
    }
}
