//! The archive's Parquet files: the row type (and [`RowView`], so decoded comments
//! are encoded in place), the Arrow schema, the writer settings (ZSTD, page
//! statistics and page index, dictionaries on the repetitive string columns, delta
//! encodings for the rest, bloom filters on `user` and `room`, the schema version
//! in the file metadata), the Hive-style object names and the grouping of a batch's
//! rows by hour partition.
//!
//! Everything here is a pure function of its input: encoding the same rows twice
//! gives the same bytes, and an object name depends only on the hour and the batch
//! id, which is what lets a redone batch overwrite its own files instead of adding
//! rows (DESIGN §8).
//!
//! Deletions (API.md, Moderation) have files of their own, one per batch and
//! day: [`DeletionRow`], [`deletion_schema`], [`encode_deletions`] (named
//! `deletions/date=YYYY-MM-DD/batch-<batch id>.parquet`, exactly once like the
//! comment files) and [`decode_deletions`].

use arrow::array::{
    ArrayRef, BooleanArray, Int64Builder, StringBuilder, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use danmaku_core::model::Danmaku;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// File-metadata key holding [`SCHEMA_VERSION`].
pub const SCHEMA_VERSION_KEY: &str = "danmaku.schema_version";
/// Version of the column layout below; bump it when columns change meaning.
/// Version 2 added `hidden`; [`decode`] still reads version 1 files (every row
/// not hidden).
pub const SCHEMA_VERSION: &str = "2";
/// ZSTD level of every column.
pub const ZSTD_LEVEL: i32 = 3;
/// False-positive rate of the bloom filters of compacted files (and of [`encode`]).
pub const BLOOM_FPP: f64 = 0.01;
/// False-positive rate of the bloom filters of the archiver's per-batch files
/// ([`encode_batch`]). Filters come in powers of two: for the ~9,000 distinct users
/// of a 10,000-row batch this is 8 KiB (a measured 3.9 % false positives) instead of
/// 16 KiB, 0.8 bytes per comment (`docs/benchmarks/archive.md`). Compaction
/// rewrites an hour's batch files with [`BLOOM_FPP`].
pub const BATCH_BLOOM_FPP: f64 = 0.05;
/// `name` is dictionary-encoded when a file has at most one distinct user per this
/// many rows (a display name belongs to its user, so the users bound the names);
/// otherwise most names are unique in the file, a dictionary would repeat them
/// plus an index per row, and `name` is written with `DELTA_BYTE_ARRAY` (its
/// values share prefixes). Measured on 10,000-row batches: 0.97 bytes per comment
/// less; on a million rows the dictionary stays (0.58 less than the delta).
pub const DICTIONARY_MIN_REPEATS: usize = 4;
/// Length of one hour partition.
pub const HOUR_MS: i64 = 3_600_000;

/// Why a file could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Building the Arrow record batch failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// Configuring or running the Parquet writer failed.
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
}

/// One row of an archive file: a comment, with its VOD and offset when it was
/// aligned to a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParquetRow {
    /// The comment id (time-ordered, unique).
    pub id: u64,
    /// The room it was sent to.
    pub room: String,
    /// The VOD it was archived under; `None` outside any session.
    pub vod: Option<String>,
    /// Its offset in that VOD, ms; `None` without a VOD.
    pub offset_ms: Option<i64>,
    /// Server time, ms since the epoch (the `ts` column, UTC).
    pub ts_ms: i64,
    /// The sender's user id.
    pub user: String,
    /// Display name; `None` when the comment had none.
    pub name: Option<String>,
    /// `comment`, `gift`, `like` or `system`.
    pub kind: &'static str,
    /// `scroll`, `top` or `bottom`.
    pub mode: &'static str,
    /// RGB color, `0xRRGGBB`.
    pub color: u32,
    /// The comment text.
    pub text: String,
    /// Sent by a shadow-banned user: shown only to its sender, never replayed.
    pub hidden: bool,
}

impl ParquetRow {
    /// The row of comment `d`, with the VOD and offset it was archived under (if
    /// any). An empty `d.room` falls back to `room`, the SliceStore's key.
    pub fn from_danmaku(
        d: Danmaku,
        room: &str,
        vod: Option<String>,
        offset_ms: Option<i64>,
    ) -> Self {
        let kind = d.kind().as_str();
        let mode = d.mode().as_str();
        Self {
            id: d.id,
            room: if d.room.is_empty() {
                room.to_string()
            } else {
                d.room
            },
            vod,
            offset_ms,
            ts_ms: d.ts_ms,
            user: d.user,
            name: if d.name.is_empty() {
                None
            } else {
                Some(d.name)
            },
            kind,
            mode,
            color: d.color,
            text: d.text,
            hidden: d.hidden,
        }
    }
}

/// Read access to the columns of one archive row, so files can be encoded from
/// [`ParquetRow`]s or straight from decoded comments (the archiver's batches) without
/// copying them into rows first.
pub trait RowView {
    /// The `id` column.
    fn id(&self) -> u64;
    /// The `room` column.
    fn room(&self) -> &str;
    /// The `vod` column.
    fn vod(&self) -> Option<&str>;
    /// The `offset_ms` column.
    fn offset_ms(&self) -> Option<i64>;
    /// The `ts` column, ms since the epoch.
    fn ts_ms(&self) -> i64;
    /// The `user` column.
    fn user(&self) -> &str;
    /// The `name` column.
    fn name(&self) -> Option<&str>;
    /// The `kind` column.
    fn kind(&self) -> &'static str;
    /// The `mode` column.
    fn mode(&self) -> &'static str;
    /// The `color` column.
    fn color(&self) -> u32;
    /// The `text` column.
    fn text(&self) -> &str;
    /// The `hidden` column.
    fn hidden(&self) -> bool;
}

impl RowView for ParquetRow {
    fn id(&self) -> u64 {
        self.id
    }
    fn room(&self) -> &str {
        &self.room
    }
    fn vod(&self) -> Option<&str> {
        self.vod.as_deref()
    }
    fn offset_ms(&self) -> Option<i64> {
        self.offset_ms
    }
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn mode(&self) -> &'static str {
        self.mode
    }
    fn color(&self) -> u32 {
        self.color
    }
    fn text(&self) -> &str {
        &self.text
    }
    fn hidden(&self) -> bool {
        self.hidden
    }
}

/// A decoded comment as the row [`ParquetRow::from_danmaku`] would make of it with
/// its own `vod` and `offset_ms` (so callers set those, and a non-empty `room`,
/// first).
impl RowView for Danmaku {
    fn id(&self) -> u64 {
        self.id
    }
    fn room(&self) -> &str {
        &self.room
    }
    fn vod(&self) -> Option<&str> {
        self.vod.as_deref()
    }
    fn offset_ms(&self) -> Option<i64> {
        self.offset_ms
    }
    fn ts_ms(&self) -> i64 {
        self.ts_ms
    }
    fn user(&self) -> &str {
        &self.user
    }
    fn name(&self) -> Option<&str> {
        (!self.name.is_empty()).then_some(self.name.as_str())
    }
    fn kind(&self) -> &'static str {
        Danmaku::kind(self).as_str()
    }
    fn mode(&self) -> &'static str {
        Danmaku::mode(self).as_str()
    }
    fn color(&self) -> u32 {
        self.color
    }
    fn text(&self) -> &str {
        &self.text
    }
    fn hidden(&self) -> bool {
        self.hidden
    }
}

impl<T: RowView + ?Sized> RowView for &T {
    fn id(&self) -> u64 {
        (**self).id()
    }
    fn room(&self) -> &str {
        (**self).room()
    }
    fn vod(&self) -> Option<&str> {
        (**self).vod()
    }
    fn offset_ms(&self) -> Option<i64> {
        (**self).offset_ms()
    }
    fn ts_ms(&self) -> i64 {
        (**self).ts_ms()
    }
    fn user(&self) -> &str {
        (**self).user()
    }
    fn name(&self) -> Option<&str> {
        (**self).name()
    }
    fn kind(&self) -> &'static str {
        (**self).kind()
    }
    fn mode(&self) -> &'static str {
        (**self).mode()
    }
    fn color(&self) -> u32 {
        (**self).color()
    }
    fn text(&self) -> &str {
        (**self).text()
    }
    fn hidden(&self) -> bool {
        (**self).hidden()
    }
}

/// The Arrow schema of an archive file, column order included.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("room", DataType::Utf8, false),
        Field::new("vod", DataType::Utf8, true),
        Field::new("offset_ms", DataType::Int64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("user", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("color", DataType::UInt32, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("hidden", DataType::Boolean, false),
    ]))
}

/// String columns stored with `DELTA_LENGTH_BYTE_ARRAY` instead of a dictionary:
/// `text` is mostly distinct; with the lengths apart, ZSTD sees the texts back to
/// back (measured: 0.44 bytes per comment less on 10,000-row batches, 0.29 on a
/// million rows, where a dictionary outgrows its 1 MiB page anyway).
pub const DELTA_LENGTH_COLUMNS: [&str; 1] = ["text"];

/// Integer columns stored with `DELTA_BINARY_PACKED` instead of dictionaries: in
/// file order (room, ts) they grow slowly, so deltas pack into a few bits; a
/// dictionary of mostly distinct values only costs time (measured in
/// `docs/benchmarks/archive.md`: a third smaller files, half the encoding time).
pub const DELTA_COLUMNS: [&str; 3] = ["id", "offset_ms", "ts"];

/// What the writer settings of one file depend on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FileShape {
    /// Distinct users (sizes the `user` bloom filter).
    pub users: u64,
    /// Distinct rooms (sizes the `room` bloom filter).
    pub rooms: u64,
    /// Whether `name` is dictionary-encoded (else `DELTA_BYTE_ARRAY`).
    pub name_dictionary: bool,
    /// False-positive rate of the bloom filters.
    pub bloom_fpp: f64,
}

impl FileShape {
    /// The shape of a file holding `rows`, with bloom filters at `bloom_fpp`.
    pub fn of<R: RowView>(rows: &[R], bloom_fpp: f64) -> Self {
        let rooms = distinct(rows.iter().map(|r| r.room()));
        Self::with_rooms(rows, rooms, bloom_fpp)
    }

    /// [`FileShape::of`] with the distinct rooms already counted.
    fn with_rooms<R: RowView>(rows: &[R], rooms: usize, bloom_fpp: f64) -> Self {
        let users = distinct(rows.iter().map(|r| r.user()));
        Self {
            users: users as u64,
            rooms: rooms as u64,
            name_dictionary: users.saturating_mul(DICTIONARY_MIN_REPEATS) <= rows.len(),
            bloom_fpp,
        }
    }
}

/// Writer settings for a file of `rows` rows. The bloom filters are sized for
/// `rows` distinct values (an upper bound), not parquet's default of a million,
/// which would add most of a megabyte to every small file.
pub fn writer_properties(rows: usize) -> Result<WriterProperties, EncodeError> {
    writer_properties_with(rows as u64, rows as u64, Vec::new())
}

/// Writer settings for a file with `users` distinct users and `rooms` distinct
/// rooms (the bloom filters are sized for them, at [`BLOOM_FPP`]), `name`
/// dictionary-encoded, with `extra` key-value metadata after the schema version.
pub fn writer_properties_with(
    users: u64,
    rooms: u64,
    extra: Vec<KeyValue>,
) -> Result<WriterProperties, EncodeError> {
    let shape = FileShape {
        users,
        rooms,
        name_dictionary: true,
        bloom_fpp: BLOOM_FPP,
    };
    writer_properties_for(&shape, extra)
}

/// Writer settings for a file of the given shape, with `extra` key-value metadata
/// after the schema version: ZSTD, page statistics and page index, the integer
/// columns delta-encoded, bloom filters on `user` and `room`, every string column
/// dictionary-encoded except `text` ([`DELTA_LENGTH_COLUMNS`]) and, when its values
/// hardly repeat, `name` ([`DICTIONARY_MIN_REPEATS`]).
pub fn writer_properties_for(
    shape: &FileShape,
    extra: Vec<KeyValue>,
) -> Result<WriterProperties, EncodeError> {
    let mut metadata = vec![KeyValue::new(
        SCHEMA_VERSION_KEY.to_string(),
        SCHEMA_VERSION.to_string(),
    )];
    metadata.extend(extra);
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_dictionary_enabled(true)
        .set_key_value_metadata(Some(metadata));
    for column in DELTA_COLUMNS {
        let path = ColumnPath::from(column);
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
    }
    for column in DELTA_LENGTH_COLUMNS {
        let path = ColumnPath::from(column);
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_LENGTH_BYTE_ARRAY);
    }
    if !shape.name_dictionary {
        let path = ColumnPath::from("name");
        builder = builder
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_BYTE_ARRAY);
    }
    for (column, ndv) in [("user", shape.users), ("room", shape.rooms)] {
        let path = ColumnPath::from(column);
        builder = builder
            .set_column_bloom_filter_enabled(path.clone(), true)
            .set_column_bloom_filter_fpp(path.clone(), shape.bloom_fpp)
            .set_column_bloom_filter_ndv(path, ndv.max(1));
    }
    Ok(builder.build())
}

/// Sorts `rows` into file order: by (room, ts, id).
pub fn sort_rows(rows: &mut [ParquetRow]) {
    rows.sort_by(|a, b| (a.room.as_str(), a.ts_ms, a.id).cmp(&(b.room.as_str(), b.ts_ms, b.id)));
}

/// A fast, non-cryptographic hasher for the per-file sets of rooms and users (the
/// FxHash step of rustc; inputs are our own rows, so no flooding concern).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last) ^ rest.len() as u64);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// The number of distinct values of `values`.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> usize {
    values.collect::<HashSet<&str, FxBuild>>().len()
}

/// The file order of `rows` (by room, ts, id) as indices into it, and the number
/// of distinct rooms. Sorts integer keys (rooms ranked first), not the rows.
pub fn file_order<R: RowView>(rows: &[R]) -> (Vec<usize>, usize) {
    let mut rooms: Vec<&str> = rows
        .iter()
        .map(|r| r.room())
        .collect::<HashSet<&str, FxBuild>>()
        .into_iter()
        .collect();
    rooms.sort_unstable();
    let rank: HashMap<&str, u32, FxBuild> = rooms
        .iter()
        .enumerate()
        .map(|(i, r)| (*r, i as u32))
        .collect();
    let mut keys: Vec<(u32, i64, u64, u32)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (rank[r.room()], r.ts_ms(), r.id(), i as u32))
        .collect();
    keys.sort_unstable();
    (
        keys.into_iter().map(|k| k.3 as usize).collect(),
        rooms.len(),
    )
}

/// `rows` as one Arrow record batch, in the given order.
pub fn to_record_batch<R: RowView>(rows: &[R]) -> Result<RecordBatch, EncodeError> {
    let order: Vec<usize> = (0..rows.len()).collect();
    to_record_batch_in(rows, &order)
}

/// `rows[order[0]], rows[order[1]], ...` as one Arrow record batch. One pass over
/// the rows in that order fills every column (the rows are visited in a random
/// order, so visiting each once matters more than anything else here).
pub fn to_record_batch_in<R: RowView>(
    rows: &[R],
    order: &[usize],
) -> Result<RecordBatch, EncodeError> {
    let n = order.len();
    // Exact string sizes, from a sequential pass.
    let mut sizes = [0usize; 7];
    for r in rows {
        sizes[0] += r.room().len();
        sizes[1] += r.vod().map_or(0, str::len);
        sizes[2] += r.user().len();
        sizes[3] += r.name().map_or(0, str::len);
        sizes[4] += r.kind().len();
        sizes[5] += r.mode().len();
        sizes[6] += r.text().len();
    }
    let mut id = Vec::with_capacity(n);
    let mut offset = Int64Builder::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut color = Vec::with_capacity(n);
    let mut hidden = Vec::with_capacity(n);
    let mut strings: Vec<StringBuilder> = sizes
        .iter()
        .map(|&bytes| StringBuilder::with_capacity(n, bytes))
        .collect();
    for &i in order {
        let r = &rows[i];
        id.push(r.id());
        offset.append_option(r.offset_ms());
        ts.push(r.ts_ms());
        color.push(r.color());
        hidden.push(r.hidden());
        strings[0].append_value(r.room());
        strings[1].append_option(r.vod());
        strings[2].append_value(r.user());
        strings[3].append_option(r.name());
        strings[4].append_value(r.kind());
        strings[5].append_value(r.mode());
        strings[6].append_value(r.text());
    }
    let mut s = strings
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef);
    let mut next = || s.next().expect("seven string columns");
    let (room, vod, user, name, kind, mode, text) =
        (next(), next(), next(), next(), next(), next(), next());
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(id)),
        room,
        vod,
        Arc::new(offset.finish()),
        Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
        user,
        name,
        kind,
        mode,
        Arc::new(UInt32Array::from(color)),
        text,
        Arc::new(BooleanArray::from(hidden)),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// One complete Parquet file holding `rows`, sorted by (room, ts, id) whatever
/// their order here. Deterministic: the same rows give the same bytes.
pub fn encode<R: RowView>(rows: &[R]) -> Result<Bytes, EncodeError> {
    encode_with(rows, Vec::new())
}

/// [`encode`] with `extra` key-value metadata after the schema version.
pub fn encode_with<R: RowView>(rows: &[R], extra: Vec<KeyValue>) -> Result<Bytes, EncodeError> {
    let (order, rooms) = file_order(rows);
    encode_in(rows, &order, rooms, BLOOM_FPP, extra)
}

/// One complete Parquet file holding `rows` in the given order (callers sort
/// them with [`sort_rows`]), with `extra` key-value metadata after the schema
/// version.
pub fn encode_sorted<R: RowView>(rows: &[R], extra: Vec<KeyValue>) -> Result<Bytes, EncodeError> {
    let order: Vec<usize> = (0..rows.len()).collect();
    let rooms = distinct(rows.iter().map(|r| r.room()));
    encode_in(rows, &order, rooms, BLOOM_FPP, extra)
}

fn encode_in<R: RowView>(
    rows: &[R],
    order: &[usize],
    rooms: usize,
    bloom_fpp: f64,
    extra: Vec<KeyValue>,
) -> Result<Bytes, EncodeError> {
    let shape = FileShape::with_rooms(rows, rooms, bloom_fpp);
    let batch = to_record_batch_in(rows, order)?;
    let mut out = Vec::with_capacity(rows.len() * 24 + 4096);
    let mut writer = ArrowWriter::try_new(
        &mut out,
        schema(),
        Some(writer_properties_for(&shape, extra)?),
    )?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Bytes::from(out))
}

/// Why a file could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a Parquet file, or a damaged one.
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    /// Reading a record batch failed.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// A Parquet file, but not an archive file of this schema version.
    #[error("not an archive file of schema version {SCHEMA_VERSION}: {0}")]
    Schema(String),
}

/// The `&'static str` label of a `kind` or `mode` value read back from a file.
fn known_label(value: &str) -> Option<&'static str> {
    const LABELS: [&str; 7] = [
        "comment", "gift", "like", "system", "scroll", "top", "bottom",
    ];
    LABELS.into_iter().find(|l| *l == value)
}

/// Reads an archive file back: its rows in file order, and its key-value metadata.
/// Checks the schema version and the columns.
pub fn decode(bytes: Bytes) -> Result<(Vec<ParquetRow>, Vec<KeyValue>), DecodeError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType, UInt32Type, UInt64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let kv = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned()
        .unwrap_or_default();
    let version = kv
        .iter()
        .find(|k| k.key == SCHEMA_VERSION_KEY)
        .and_then(|k| k.value.as_deref());
    let want = schema();
    let columns = match version {
        Some(SCHEMA_VERSION) => &want.fields()[..],
        // Version 1: the same columns but `hidden`.
        Some("1") => &want.fields()[..want.fields().len() - 1],
        _ => return Err(DecodeError::Schema(format!("schema version {version:?}"))),
    };
    if &builder.schema().fields()[..] != columns {
        return Err(DecodeError::Schema("unexpected columns".into()));
    }
    let mut out = Vec::with_capacity(builder.metadata().file_metadata().num_rows().max(0) as usize);
    for batch in builder.build()? {
        let b = batch?;
        let strings = |i: usize| b.column(i).as_string::<i32>();
        let (id, room, vod) = (
            b.column(0).as_primitive::<UInt64Type>(),
            strings(1),
            strings(2),
        );
        let offset = b.column(3).as_primitive::<Int64Type>();
        let ts = b.column(4).as_primitive::<TimestampMillisecondType>();
        let (user, name, kind, mode) = (strings(5), strings(6), strings(7), strings(8));
        let (color, text) = (b.column(9).as_primitive::<UInt32Type>(), strings(10));
        let hidden = (b.num_columns() > 11).then(|| b.column(11).as_boolean());
        for i in 0..b.num_rows() {
            let label = |a: &arrow::array::StringArray| {
                known_label(a.value(i))
                    .ok_or_else(|| DecodeError::Schema(format!("unknown label {:?}", a.value(i))))
            };
            out.push(ParquetRow {
                id: id.value(i),
                room: room.value(i).to_string(),
                vod: vod.is_valid(i).then(|| vod.value(i).to_string()),
                offset_ms: offset.is_valid(i).then(|| offset.value(i)),
                ts_ms: ts.value(i),
                user: user.value(i).to_string(),
                name: name.is_valid(i).then(|| name.value(i).to_string()),
                kind: label(kind)?,
                mode: label(mode)?,
                color: color.value(i),
                text: text.value(i).to_string(),
                hidden: hidden.is_some_and(|h| h.value(i)),
            });
        }
    }
    Ok((out, kv))
}

/// Start (ms since the epoch, UTC) of the hour holding `ts_ms`.
pub fn hour_start(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// The object name of batch `batch_id`'s file for the hour holding `ts_ms`:
/// `date=YYYY-MM-DD/hour=HH/part-<batch id, 20 digits>.parquet`, in UTC.
pub fn object_path(ts_ms: i64, batch_id: u64) -> String {
    // Out of chrono's range (hundreds of thousands of years away) only with a
    // corrupt timestamp; such rows still get a stable name.
    let hour = chrono::DateTime::from_timestamp_millis(hour_start(ts_ms))
        .unwrap_or(chrono::DateTime::UNIX_EPOCH);
    format!(
        "{}/part-{batch_id:020}.parquet",
        hour.format("date=%Y-%m-%d/hour=%H")
    )
}

/// Splits `rows` by hour partition: `(start of the hour, its rows)`, oldest hour
/// first, each hour's rows in their original order.
pub fn group_by_hour<R: RowView>(rows: Vec<R>) -> Vec<(i64, Vec<R>)> {
    let mut hours: BTreeMap<i64, Vec<R>> = BTreeMap::new();
    for row in rows {
        hours.entry(hour_start(row.ts_ms())).or_default().push(row);
    }
    hours.into_iter().collect()
}

/// Every file of batch `batch_id`: `(object name, Parquet bytes)`, one per hour
/// the rows span, oldest first, each like [`encode`]'s but with bloom filters at
/// [`BATCH_BLOOM_FPP`]. No rows, no files.
pub fn encode_batch<R: RowView>(
    batch_id: u64,
    rows: Vec<R>,
) -> Result<Vec<(String, Bytes)>, EncodeError> {
    group_by_hour(rows)
        .into_iter()
        .map(|(hour, rows)| {
            let (order, rooms) = file_order(&rows);
            let file = encode_in(&rows, &order, rooms, BATCH_BLOOM_FPP, Vec::new())?;
            Ok((object_path(hour, batch_id), file))
        })
        .collect()
}

/// Directory of the deletion files.
pub const DELETIONS_DIR: &str = "deletions";
/// File-metadata value of [`SCHEMA_VERSION_KEY`] in deletion files.
pub const DELETION_SCHEMA_VERSION: &str = "deletions-1";

/// One row of a deletion file: comment `id` was deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeletionRow {
    /// The deleted comment's id.
    pub id: u64,
    /// Its room.
    pub room: String,
    /// Its VOD, when it belonged to one.
    pub vod: Option<String>,
    /// When it was deleted, ms since the epoch (the `deleted_at` column, UTC).
    pub deleted_at_ms: i64,
    /// Who deleted it (a user id).
    pub by: String,
    /// The reason given, if any.
    pub reason: Option<String>,
}

impl DeletionRow {
    /// The row of a deletion record (`d.deletes` set), with the SliceStore's room
    /// when the record has none. `None` for a record that is not a deletion.
    pub fn from_record(d: &Danmaku, room: &str) -> Option<Self> {
        Some(Self {
            id: d.deletes?,
            room: if d.room.is_empty() {
                room.to_string()
            } else {
                d.room.clone()
            },
            vod: d.vod.clone(),
            deleted_at_ms: d.ts_ms,
            by: d.user.clone(),
            reason: (!d.text.is_empty()).then(|| d.text.clone()),
        })
    }
}

/// The Arrow schema of a deletion file.
pub fn deletion_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("room", DataType::Utf8, false),
        Field::new("vod", DataType::Utf8, true),
        Field::new(
            "deleted_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("by", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
    ]))
}

/// The object name of batch `batch_id`'s deletion file for the day holding
/// `ts_ms`: `deletions/date=YYYY-MM-DD/batch-<batch id, 20 digits>.parquet` (UTC).
pub fn deletion_path(ts_ms: i64, batch_id: u64) -> String {
    let day =
        chrono::DateTime::from_timestamp_millis(ts_ms.div_euclid(24 * HOUR_MS) * 24 * HOUR_MS)
            .unwrap_or(chrono::DateTime::UNIX_EPOCH);
    format!(
        "{DELETIONS_DIR}/{}/batch-{batch_id:020}.parquet",
        day.format("date=%Y-%m-%d")
    )
}

/// Every deletion file of batch `batch_id`: `(object name, bytes)`, one per day
/// the deletions span, oldest first, rows sorted by (room, deleted_at, id).
/// Deterministic, so a redone batch overwrites its files with the same bytes.
pub fn encode_deletions(
    batch_id: u64,
    rows: &[DeletionRow],
) -> Result<Vec<(String, Bytes)>, EncodeError> {
    let mut days: BTreeMap<String, Vec<&DeletionRow>> = BTreeMap::new();
    for r in rows {
        days.entry(deletion_path(r.deleted_at_ms, batch_id))
            .or_default()
            .push(r);
    }
    let mut out = Vec::with_capacity(days.len());
    for (name, mut rows) in days {
        rows.sort_by(|a, b| {
            (a.room.as_str(), a.deleted_at_ms, a.id).cmp(&(b.room.as_str(), b.deleted_at_ms, b.id))
        });
        let mut room = StringBuilder::new();
        let mut vod = StringBuilder::new();
        let mut by = StringBuilder::new();
        let mut reason = StringBuilder::new();
        for r in &rows {
            room.append_value(&r.room);
            vod.append_option(r.vod.as_deref());
            by.append_value(&r.by);
            reason.append_option(r.reason.as_deref());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.id))),
            Arc::new(room.finish()),
            Arc::new(vod.finish()),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.deleted_at_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(by.finish()),
            Arc::new(reason.finish()),
        ];
        let batch = RecordBatch::try_new(deletion_schema(), columns)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                SCHEMA_VERSION_KEY.to_string(),
                DELETION_SCHEMA_VERSION.to_string(),
            )]))
            .build();
        let mut bytes = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut bytes, deletion_schema(), Some(props))?;
        writer.write(&batch)?;
        writer.close()?;
        out.push((name, Bytes::from(bytes)));
    }
    Ok(out)
}

/// Reads a deletion file back, rows in file order.
pub fn decode_deletions(bytes: Bytes) -> Result<Vec<DeletionRow>, DecodeError> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{TimestampMillisecondType, UInt64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let version = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == SCHEMA_VERSION_KEY))
        .and_then(|k| k.value.clone());
    if version.as_deref() != Some(DELETION_SCHEMA_VERSION) {
        return Err(DecodeError::Schema(format!(
            "deletion file version {version:?}"
        )));
    }
    if builder.schema().fields() != deletion_schema().fields() {
        return Err(DecodeError::Schema("unexpected deletion columns".into()));
    }
    let mut out = Vec::new();
    for batch in builder.build()? {
        let b = batch?;
        let strings = |i: usize| b.column(i).as_string::<i32>();
        let id = b.column(0).as_primitive::<UInt64Type>();
        let at = b.column(3).as_primitive::<TimestampMillisecondType>();
        let (room, vod, by, reason) = (strings(1), strings(2), strings(4), strings(5));
        for i in 0..b.num_rows() {
            out.push(DeletionRow {
                id: id.value(i),
                room: room.value(i).to_string(),
                vod: vod.is_valid(i).then(|| vod.value(i).to_string()),
                deleted_at_ms: at.value(i),
                by: by.value(i).to_string(),
                reason: reason.is_valid(i).then(|| reason.value(i).to_string()),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType, UInt32Type, UInt64Type};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// 2025-11-24T16:00:00Z.
    const T: i64 = 1_764_000_000_000;

    fn row(id: u64, room: &str, ts_ms: i64, text: &str) -> ParquetRow {
        ParquetRow {
            id,
            room: room.into(),
            vod: None,
            offset_ms: None,
            ts_ms,
            user: format!("u{}", id % 3),
            name: None,
            kind: "comment",
            mode: "scroll",
            color: 0xFFFFFF,
            text: text.into(),
            hidden: false,
        }
    }

    fn hostile_rows() -> Vec<ParquetRow> {
        vec![
            ParquetRow {
                vod: Some("vod-1".into()),
                offset_ms: Some(1234),
                name: Some("Ålice \"the\" 🦀".into()),
                kind: "gift",
                mode: "top",
                color: 0x00FF00,
                ..row(3, "r2", T + 5, "<script>alert('x')</script>")
            },
            row(1, "r1", T + 10, "好耶 \"quoted\" 'single' \\ backslash"),
            ParquetRow {
                kind: "system",
                mode: "bottom",
                color: 0,
                ..row(2, "r1", T + 10, "🎉🎉 emoji, ZWJ 👨‍👩‍👧 and RTL مرحبا")
            },
            ParquetRow {
                kind: "like",
                ..row(4, "r1", T - 1, "")
            },
            row(5, "r10", T, "a,b;c\td"),
        ]
    }

    fn read_back(bytes: Bytes) -> (Vec<ParquetRow>, Option<Vec<KeyValue>>) {
        let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let kv = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .cloned();
        assert_eq!(builder.schema().fields(), schema().fields());
        let mut out = Vec::new();
        for batch in builder.build().unwrap() {
            let b = batch.unwrap();
            let s = |i: usize| b.column(i).as_string::<i32>().clone();
            let (id, room, vod, off) = (
                b.column(0).as_primitive::<UInt64Type>(),
                s(1),
                s(2),
                b.column(3).as_primitive::<Int64Type>(),
            );
            let ts = b.column(4).as_primitive::<TimestampMillisecondType>();
            let (user, name, kind, mode) = (s(5), s(6), s(7), s(8));
            let (color, text) = (b.column(9).as_primitive::<UInt32Type>(), s(10));
            let hidden = b.column(11).as_boolean().clone();
            let leak = |v: &str| -> &'static str { Box::leak(v.to_string().into_boxed_str()) };
            for i in 0..b.num_rows() {
                out.push(ParquetRow {
                    id: id.value(i),
                    room: room.value(i).into(),
                    vod: vod.is_valid(i).then(|| vod.value(i).to_string()),
                    offset_ms: off.is_valid(i).then(|| off.value(i)),
                    ts_ms: ts.value(i),
                    user: user.value(i).into(),
                    name: name.is_valid(i).then(|| name.value(i).to_string()),
                    kind: leak(kind.value(i)),
                    mode: leak(mode.value(i)),
                    color: color.value(i),
                    text: text.value(i).into(),
                    hidden: hidden.value(i),
                });
            }
        }
        (out, kv)
    }

    #[test]
    fn roundtrip_every_column_sorted_by_room_ts_id() {
        let rows = hostile_rows();
        let (back, kv) = read_back(encode(&rows).unwrap());
        let mut expected = rows.clone();
        sort_rows(&mut expected);
        assert_eq!(back, expected);
        let order: Vec<u64> = back.iter().map(|r| r.id).collect();
        assert_eq!(order, vec![4, 1, 2, 5, 3], "room, then ts, then id");
        let kv = kv.unwrap();
        let version = kv.iter().find(|k| k.key == SCHEMA_VERSION_KEY).unwrap();
        assert_eq!(version.value.as_deref(), Some(SCHEMA_VERSION));
    }

    #[test]
    fn encoding_is_deterministic_and_order_independent() {
        let rows = hostile_rows();
        let mut reversed = rows.clone();
        reversed.reverse();
        assert_eq!(encode(&rows).unwrap(), encode(&reversed).unwrap());
    }

    #[test]
    fn file_has_zstd_page_index_dictionaries_and_bloom_filters() {
        let rows: Vec<_> = (0..500)
            .map(|i| {
                row(
                    i,
                    if i % 2 == 0 { "ra" } else { "rb" },
                    T + i as i64,
                    "same text",
                )
            })
            .collect();
        let bytes = encode(&rows).unwrap();
        let options = parquet::arrow::arrow_reader::ArrowReaderOptions::new().with_page_index(true);
        let mut builder =
            ParquetRecordBatchReaderBuilder::try_new_with_options(bytes.clone(), options).unwrap();
        let meta = builder.metadata().clone();
        assert!(
            meta.column_index().is_some() && meta.offset_index().is_some(),
            "page index written"
        );
        let rg = meta.row_group(0);
        let names: Vec<String> = rg
            .columns()
            .iter()
            .map(|c| c.column_path().string())
            .collect();
        for (i, c) in rg.columns().iter().enumerate() {
            assert!(
                matches!(c.compression(), Compression::ZSTD(_)),
                "{} compressed",
                names[i]
            );
            let bloom = builder.get_row_group_column_bloom_filter(0, i).unwrap();
            assert_eq!(
                bloom.is_some(),
                names[i] == "user" || names[i] == "room",
                "bloom filter on {}",
                names[i]
            );
        }
        let room_idx = names.iter().position(|n| n == "room").unwrap();
        let room_col = rg.column(room_idx);
        assert!(
            room_col.dictionary_page_offset().is_some(),
            "room is dictionary-encoded"
        );
        let bloom = builder
            .get_row_group_column_bloom_filter(0, room_idx)
            .unwrap()
            .unwrap();
        assert!(bloom.check(&"ra") && bloom.check(&"rb"));
        // A filter sized for the file, not for a million values.
        assert!(bytes.len() < 64 * 1024, "{} bytes", bytes.len());
        let user_idx = names.iter().position(|n| n == "user").unwrap();
        let user_bloom = builder
            .get_row_group_column_bloom_filter(0, user_idx)
            .unwrap()
            .unwrap();
        assert!(user_bloom.check(&"u1"));
    }

    #[test]
    fn growing_integers_are_delta_encoded_and_blooms_sized_to_distinct_values() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let rows: Vec<_> = (0..5_000)
            .map(|i| row(i, "r", T + i as i64 * 3, "t"))
            .collect();
        let bytes = encode(&rows).unwrap();
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let rg = reader.metadata().row_group(0);
        for c in rg.columns() {
            let name = c.column_path().string();
            let delta = c.encodings().contains(&Encoding::DELTA_BINARY_PACKED);
            assert_eq!(
                delta,
                DELTA_COLUMNS.contains(&name.as_str()),
                "{name}: {:?}",
                c.encodings()
            );
        }
        // Three users and one room: filters of a few hundred bytes, not 5,000 values'.
        assert!(bytes.len() < 16 * 1024, "{} bytes", bytes.len());
        let (back, _) = decode(bytes).unwrap();
        assert_eq!(back, rows);
    }

    /// Column chunk encodings and bloom filter bytes by column name.
    fn layout(bytes: &Bytes) -> HashMap<String, (Vec<Encoding>, i32)> {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let rg = reader.metadata().row_group(0);
        rg.columns()
            .iter()
            .map(|c| {
                (
                    c.column_path().string(),
                    (c.encodings().to_vec(), c.bloom_filter_length().unwrap_or(0)),
                )
            })
            .collect()
    }

    #[test]
    fn texts_and_names_of_mostly_distinct_users_are_delta_encoded() {
        // Every comment from another user, with a name of its own.
        let unique: Vec<_> = (0..1_000)
            .map(|i| ParquetRow {
                user: format!("user{i}"),
                name: (i % 3 != 0).then(|| format!("viewer{i}")),
                ..row(i, "r", T + i as i64, &format!("text number {i}"))
            })
            .collect();
        let bytes = encode(&unique).unwrap();
        let l = layout(&bytes);
        assert!(
            l["name"].0.contains(&Encoding::DELTA_BYTE_ARRAY),
            "{:?}",
            l["name"]
        );
        assert!(
            l["text"].0.contains(&Encoding::DELTA_LENGTH_BYTE_ARRAY),
            "{:?}",
            l["text"]
        );
        for c in ["room", "user", "kind", "mode", "vod"] {
            assert!(
                l[c].0.contains(&Encoding::RLE_DICTIONARY),
                "{c}: {:?}",
                l[c]
            );
        }
        assert_eq!(decode(bytes).unwrap().0, unique, "read back");

        // A few users writing often: their names take a dictionary.
        let regulars: Vec<_> = (0..1_000)
            .map(|i| ParquetRow {
                user: format!("user{}", i % 10),
                name: Some(format!("viewer{}", i % 10)),
                ..row(
                    i,
                    "r",
                    T + i as i64,
                    ["好耶", "awsl", "666"][i as usize % 3],
                )
            })
            .collect();
        let bytes = encode(&regulars).unwrap();
        let l = layout(&bytes);
        assert!(
            l["name"].0.contains(&Encoding::RLE_DICTIONARY),
            "{:?}",
            l["name"]
        );
        assert!(
            l["text"].0.contains(&Encoding::DELTA_LENGTH_BYTE_ARRAY),
            "{:?}",
            l["text"]
        );
        assert_eq!(decode(bytes).unwrap().0, regulars, "read back");
    }

    #[test]
    fn batch_files_have_smaller_bloom_filters_than_compacted_ones() {
        let rows: Vec<_> = (0..9_000)
            .map(|i| ParquetRow {
                user: format!("user{i}"),
                ..row(i, "r", T + i as i64, "t")
            })
            .collect();
        let whole = layout(&encode(&rows).unwrap())["user"].1;
        let files = encode_batch(1, rows.clone()).unwrap();
        assert_eq!(files.len(), 1);
        let batch = layout(&files[0].1)["user"].1;
        assert!(
            batch > 0 && batch < whole,
            "batch {batch} B, whole {whole} B"
        );
        // Still a working filter: every user it holds is found.
        let reader = ParquetRecordBatchReaderBuilder::try_new(files[0].1.clone()).unwrap();
        let user_idx = reader
            .metadata()
            .row_group(0)
            .columns()
            .iter()
            .position(|c| c.column_path().string() == "user")
            .unwrap();
        let mut reader = reader;
        let bloom = reader
            .get_row_group_column_bloom_filter(0, user_idx)
            .unwrap()
            .unwrap();
        assert!(rows.iter().all(|r| bloom.check(&r.user.as_str())));
    }

    #[test]
    fn empty_input_is_a_valid_empty_file() {
        let (back, _) = read_back(encode::<ParquetRow>(&[]).unwrap());
        assert!(back.is_empty());
        assert!(encode_batch(1, Vec::<ParquetRow>::new())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn object_paths_are_utc_hive_and_zero_padded() {
        assert_eq!(
            object_path(T, 42),
            "date=2025-11-24/hour=16/part-00000000000000000042.parquet"
        );
        assert_eq!(object_path(T + HOUR_MS - 1, 42), object_path(T, 42));
        assert_eq!(
            object_path(T - 1, 7),
            "date=2025-11-24/hour=15/part-00000000000000000007.parquet"
        );
        assert_eq!(
            object_path(0, u64::MAX),
            "date=1970-01-01/hour=00/part-18446744073709551615.parquet"
        );
        assert_eq!(
            object_path(-1, 1),
            "date=1969-12-31/hour=23/part-00000000000000000001.parquet"
        );
        // Crossing midnight UTC changes the date, whatever the local zone.
        let midnight = 1_764_028_800_000; // 2025-11-25T00:00:00Z
        assert_eq!(
            object_path(midnight, 1),
            "date=2025-11-25/hour=00/part-00000000000000000001.parquet"
        );
        assert_eq!(
            object_path(midnight - 1, 1),
            "date=2025-11-24/hour=23/part-00000000000000000001.parquet"
        );
        assert_eq!(
            object_path(i64::MAX, 1),
            "date=1970-01-01/hour=00/part-00000000000000000001.parquet"
        );
    }

    #[test]
    fn rows_group_by_hour_partition() {
        let rows = vec![
            row(1, "r", T + HOUR_MS, "b"),
            row(2, "r", T, "a"),
            row(3, "r", T + HOUR_MS + 5, "c"),
            row(4, "r", T - 1, "z"),
        ];
        let groups = group_by_hour(rows);
        let summary: Vec<(i64, Vec<u64>)> = groups
            .iter()
            .map(|(h, rs)| (*h, rs.iter().map(|r| r.id).collect()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (T - HOUR_MS, vec![4]),
                (T, vec![2]),
                (T + HOUR_MS, vec![1, 3])
            ]
        );
        let files = encode_batch(9, groups.into_iter().flat_map(|(_, r)| r).collect()).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "date=2025-11-24/hour=15/part-00000000000000000009.parquet",
                "date=2025-11-24/hour=16/part-00000000000000000009.parquet",
                "date=2025-11-24/hour=17/part-00000000000000000009.parquet",
            ]
        );
    }

    #[test]
    fn rows_from_comments_map_kind_mode_and_empty_names() {
        use danmaku_core::model::{Kind, Mode};
        let d = Danmaku {
            id: 9,
            room: String::new(),
            user: "bob".into(),
            name: String::new(),
            ts_ms: T,
            kind: Kind::Gift as i32,
            mode: Mode::Bottom as i32,
            color: 0x123456,
            text: "hi".into(),
            stream_pos_ms: None,
            vod: None,
            offset_ms: None,
            hidden: false,
            deletes: None,
        };
        let r = ParquetRow::from_danmaku(d, "fallback", Some("v".into()), Some(5));
        assert_eq!(
            (r.room.as_str(), r.name.as_deref(), r.kind, r.mode),
            ("fallback", None, "gift", "bottom")
        );
        assert_eq!(
            (r.vod.as_deref(), r.offset_ms, r.color),
            (Some("v"), Some(5), 0x123456)
        );
    }

    #[test]
    fn hidden_rows_keep_their_flag_and_version_1_files_still_read() {
        let rows = vec![
            ParquetRow {
                hidden: true,
                ..row(1, "r", T, "shadow")
            },
            row(2, "r", T + 1, "plain"),
        ];
        let (back, kv) = decode(encode(&rows).unwrap()).unwrap();
        assert_eq!(back, rows);
        assert!(kv
            .iter()
            .any(|k| k.key == SCHEMA_VERSION_KEY && k.value.as_deref() == Some("2")));
        // A file of the first layout: eleven columns, version 1.
        let old_schema = Arc::new(Schema::new(schema().fields()[..11].to_vec()));
        let batch = to_record_batch(&rows).unwrap();
        let old = RecordBatch::try_new(old_schema.clone(), batch.columns()[..11].to_vec()).unwrap();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(
                SCHEMA_VERSION_KEY.to_string(),
                "1".to_string(),
            )]))
            .build();
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, old_schema, Some(props)).unwrap();
        w.write(&old).unwrap();
        w.close().unwrap();
        let (back, _) = decode(Bytes::from(bytes)).unwrap();
        assert_eq!(back.len(), 2);
        assert!(
            back.iter().all(|r| !r.hidden),
            "version 1 rows are not hidden"
        );
    }

    #[test]
    fn deletion_files_are_named_by_day_and_batch_and_read_back() {
        let day = 24 * HOUR_MS;
        let rows = vec![
            DeletionRow {
                id: 9,
                room: "r2".into(),
                vod: Some("v1".into()),
                deleted_at_ms: T + 5,
                by: "admin".into(),
                reason: Some("spam <b>".into()),
            },
            DeletionRow {
                id: 7,
                room: "r1".into(),
                vod: None,
                deleted_at_ms: T + day,
                by: "alice".into(),
                reason: None,
            },
        ];
        let files = encode_deletions(42, &rows).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "deletions/date=2025-11-24/batch-00000000000000000042.parquet",
                "deletions/date=2025-11-25/batch-00000000000000000042.parquet"
            ]
        );
        assert_eq!(encode_deletions(42, &rows).unwrap(), files, "deterministic");
        assert_eq!(
            decode_deletions(files[0].1.clone()).unwrap(),
            vec![rows[0].clone()]
        );
        assert_eq!(
            decode_deletions(files[1].1.clone()).unwrap(),
            vec![rows[1].clone()]
        );
        assert!(decode_deletions(encode(&[row(1, "r", T, "x")]).unwrap()).is_err());
        assert!(decode(files[0].1.clone()).is_err(), "not a comment file");
        assert!(encode_deletions(1, &[]).unwrap().is_empty());
        let record = Danmaku {
            deletes: Some(5),
            user: "mod".into(),
            text: String::new(),
            ts_ms: T,
            ..Default::default()
        };
        let d = DeletionRow::from_record(&record, "room-x").unwrap();
        assert_eq!((d.id, d.room.as_str(), d.reason), (5, "room-x", None));
        assert!(DeletionRow::from_record(&Danmaku::default(), "r").is_none());
    }
}
