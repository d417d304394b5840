//! Independent read-back of the archive: pyarrow and DuckDB (installed by the test
//! command) read the Parquet tree the archiver and a compaction left, and must see
//! what was sent, row for row and column for column; the file properties the
//! issue asks for (ZSTD, statistics, page index, dictionaries, schema version) are
//! checked from pyarrow's view of the footer; and the SQL of docs/ANALYSTS.md
//! runs as written and gives the answers computed here from the sent comments.

mod common;

use common::*;
use danmaku_archive::{compact_hour, drain};
use danmaku_core::model::Danmaku;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The id of the deletion in the tree of [`archive_tree`].
const DELETED: u64 = 4242;

/// Archives comments over hours 15 and 16 (two rooms, one VOD, hostile texts),
/// compacts hour 16, and returns the comments as archived (vod/offset set).
async fn archive_tree(dir: &Path) -> Vec<Danmaku> {
    let (ctx, _db) = context(dir, Store::Embedded, |s| s.archive.batch_slices = 3).await;
    let session = create_session(&ctx, "v1", "r1", T - 120_000, 500).await;
    let r1 = comments(&ctx, "r1", T - 100_000, 1_700, 150);
    let r2 = comments(&ctx, "r2", T - 50_000, 2_300, 60);
    append(&ctx, "r1", &r1).await;
    append(&ctx, "r2", &r2).await;
    // A deletion (of a comment never archived here), so deletions/ exists and
    // the readers must keep it apart from the comments.
    let ghost = comment(DELETED, "r2", T, "never sent");
    append(&ctx, "r2", &[deletion_record(9, &ghost, None, T + 200_000)]).await;
    drain(&ctx, Duration::from_secs(20)).await.unwrap();
    let report = compact_hour(&*ctx.objects, "2025-11-24T16").await.unwrap();
    assert!(report.files_merged > 1);
    let mut all = Vec::new();
    for mut d in r1 {
        d.vod = Some("v1".into());
        d.offset_ms = Some(d.ts_ms - session.started_at - session.latency_ms);
        all.push(d);
    }
    all.extend(r2);
    assert_parquet_exactly(dir, &all);
    all
}

/// The row pyarrow/DuckDB should print for `d`.
fn expected_row(d: &Danmaku) -> Value {
    json!({
        "id": d.id.to_string(),
        "room": d.room,
        "vod": d.vod,
        "offset_ms": d.offset_ms,
        "ts": d.ts_ms,
        "user": d.user,
        "name": (!d.name.is_empty()).then_some(d.name.as_str()),
        "kind": d.kind().as_str(),
        "mode": d.mode().as_str(),
        "color": d.color,
        "text": d.text,
        "hidden": d.hidden,
    })
}

const PYARROW_SCRIPT: &str = r#"
import json, sys, glob, os
import pyarrow as pa, pyarrow.parquet as pq, pyarrow.dataset as ds
root = sys.argv[1]
files = sorted(glob.glob(os.path.join(root, "date=*", "*", "*.parquet")))
checks = []
for f in files:
    pf = pq.ParquetFile(f)
    md = pf.metadata
    kv = {k.decode(): v.decode() for k, v in (md.metadata or {}).items()}
    cols = {}
    for rg in range(md.num_row_groups):
        for c in range(md.num_columns):
            col = md.row_group(rg).column(c)
            cols.setdefault(col.path_in_schema, []).append({
                "compression": col.compression,
                "stats": col.is_stats_set and col.statistics.has_min_max,
                "column_index": col.has_column_index,
                "offset_index": col.has_offset_index,
                "dictionary": col.has_dictionary_page,
            })
    checks.append({"file": os.path.relpath(f, root), "rows": md.num_rows,
                   "version": kv.get("danmaku.schema_version"), "columns": cols,
                   "schema": {fl.name: str(fl.type) for fl in pf.schema_arrow}})
dataset = ds.dataset(root, format="parquet", partitioning="hive",
                     ignore_prefixes=[".", "_", "deletions"])
table = dataset.to_table()
table = table.set_column(table.schema.get_field_index("ts"), "ts", table["ts"].cast(pa.int64()))
rows = table.to_pylist()
for r in rows:
    r["id"] = str(r["id"])
    r["date"] = str(r["date"])
    r["hour"] = str(r["hour"])
print(json.dumps({"checks": checks, "rows": rows}, ensure_ascii=False))
"#;

#[tokio::test]
#[ignore = "needs python3 with duckdb and pyarrow (bash infra/dev/test.sh installs them)"]
async fn pyarrow_reads_back_every_row_and_the_file_properties() {
    let dir = tempfile::tempdir().unwrap();
    let sent = archive_tree(dir.path()).await;
    let root = dir.path().join("archive");
    let out = run_python(PYARROW_SCRIPT, &[root.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&out).expect("pyarrow output is JSON");

    let checks = v["checks"].as_array().unwrap();
    assert!(checks.len() >= 2, "{checks:?}");
    assert!(checks
        .iter()
        .any(|c| c["file"].as_str().unwrap().contains("/compacted-")));
    for c in checks {
        let file = c["file"].as_str().unwrap();
        assert_eq!(c["version"], "2", "{file}: schema version");
        let schema = &c["schema"];
        for (col, ty) in [
            ("id", "uint64"),
            ("room", "string"),
            ("vod", "string"),
            ("offset_ms", "int64"),
            ("ts", "timestamp[ms, tz=UTC]"),
            ("user", "string"),
            ("name", "string"),
            ("kind", "string"),
            ("mode", "string"),
            ("color", "uint32"),
            ("text", "string"),
            ("hidden", "bool"),
        ] {
            assert_eq!(schema[col], ty, "{file}: column {col}");
        }
        for (col, chunks) in c["columns"].as_object().unwrap() {
            for chunk in chunks.as_array().unwrap() {
                assert_eq!(chunk["compression"], "ZSTD", "{file}: {col}");
                assert_eq!(chunk["column_index"], true, "{file}: {col} page index");
                assert_eq!(chunk["offset_index"], true, "{file}: {col} offset index");
                if col != "name" && col != "vod" && col != "offset_ms" {
                    assert_eq!(chunk["stats"], true, "{file}: {col} statistics");
                }
                if ["room", "user", "kind", "mode"].contains(&col.as_str()) {
                    assert_eq!(
                        chunk["dictionary"], true,
                        "{file}: {col} dictionary-encoded"
                    );
                }
            }
        }
    }

    // Row for row.
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), sent.len(), "row count");
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for r in rows {
        let mut r = r.clone();
        let (date, hour) = (r["date"].clone(), r["hour"].clone());
        let obj = r.as_object_mut().unwrap();
        obj.remove("date");
        obj.remove("hour");
        let id = r["id"].as_str().unwrap().to_string();
        let ts = r["ts"].as_i64().unwrap();
        let dir_of = danmaku_archive::parquet_file::object_path(ts, 0);
        assert!(
            dir_of.starts_with(&format!(
                "date={}/hour={:0>2}/",
                date.as_str().unwrap(),
                hour.as_str().unwrap()
            )),
            "row {id} in partition date={date} hour={hour}, expected {dir_of}"
        );
        assert!(by_id.insert(id.clone(), r).is_none(), "id {id} twice");
    }
    for d in &sent {
        assert_eq!(by_id[&d.id.to_string()], expected_row(d), "row {}", d.id);
    }
}

/// The SQL blocks of docs/ANALYSTS.md's "Querying with DuckDB" section, in order.
fn readme_sql() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/ANALYSTS.md"))
            .expect("read docs/ANALYSTS.md");
    let start = readme
        .find("## Querying with DuckDB")
        .expect("docs/ANALYSTS.md has a Querying with DuckDB section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```sql\n") {
        let body = &rest[i + 7..];
        let end = body.find("```").expect("closed block");
        blocks.push(body[..end].to_string());
        rest = &body[end..][3..];
    }
    blocks
}

const DUCKDB_SCRIPT: &str = r#"
import json, sys, duckdb, pyarrow as pa
setup, queries = sys.argv[1], json.loads(sys.argv[2])
con = duckdb.connect()
# No progress bar: DuckDB prints one to stdout for queries over 2 s (a busy machine).
con.execute("SET enable_progress_bar = false")
for stmt in setup.split(";"):
    if stmt.strip():
        con.execute(stmt)
def column(col):
    if pa.types.is_timestamp(col.type):
        return [None if v is None else v for v in col.cast(pa.timestamp("ms", col.type.tz)).cast(pa.int64()).to_pylist()]
    if pa.types.is_date(col.type):
        return [None if v is None else str(v) for v in col.to_pylist()]
    return col.to_pylist()
out = []
for q in queries:
    r = con.execute(q)
    t = r.to_arrow_table() if hasattr(r, "to_arrow_table") else r.fetch_arrow_table()
    cols = [column(t.column(i)) for i in range(t.num_columns)]
    out.append([list(r) for r in zip(*cols)] if cols else [])
print(json.dumps(out, ensure_ascii=False))
"#;

#[tokio::test]
#[ignore = "needs python3 with duckdb and pyarrow (bash infra/dev/test.sh installs them)"]
async fn duckdb_runs_the_readme_queries_and_reads_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let sent = archive_tree(dir.path()).await;
    let blocks = readme_sql();
    assert_eq!(blocks.len(), 5, "setup + four queries in docs/ANALYSTS.md");
    let archive = dir.path().join("archive");
    let setup = blocks[0].replace("data/archive", archive.to_str().unwrap());
    assert_ne!(setup, blocks[0], "the setup names data/archive");
    let mut queries: Vec<String> = blocks[1..]
        .iter()
        .map(|b| b.replace("data/archive", archive.to_str().unwrap()))
        .collect();
    // Our own row-for-row read and the partition column types, through the view.
    queries.push(
        "SELECT id::VARCHAR, room, vod, offset_ms, epoch_ms(ts), \"user\", name, kind, mode, color, text \
         FROM danmaku ORDER BY id"
            .into(),
    );
    queries.push("SELECT DISTINCT typeof(date), typeof(hour) FROM danmaku".into());
    queries.push("SELECT count(*), count(DISTINCT id) FROM danmaku".into());
    let out = run_python(
        DUCKDB_SCRIPT,
        &[&setup, &serde_json::to_string(&queries).unwrap()],
    );
    let results: Vec<Value> = serde_json::from_str(&out).expect("duckdb output is JSON");

    // 1. Comments per minute in room r1 (kind comment) on 2025-11-24.
    let mut per_minute: BTreeMap<i64, i64> = BTreeMap::new();
    for d in sent
        .iter()
        .filter(|d| d.room == "r1" && d.kind().as_str() == "comment")
    {
        *per_minute
            .entry(d.ts_ms.div_euclid(60_000) * 60_000)
            .or_default() += 1;
    }
    let want: Vec<Value> = per_minute.into_iter().map(|(m, n)| json!([m, n])).collect();
    assert_eq!(results[0], Value::Array(want), "comments per minute");

    // 2. Top senders (ties by user).
    let mut per_user: BTreeMap<&str, i64> = BTreeMap::new();
    for d in &sent {
        *per_user.entry(d.user.as_str()).or_default() += 1;
    }
    let mut top: Vec<(&str, i64)> = per_user.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let want: Vec<Value> = top
        .into_iter()
        .take(10)
        .map(|(u, n)| json!([u, n]))
        .collect();
    assert_eq!(results[1], Value::Array(want), "top senders");

    // 3. Comments containing 好耶, oldest first.
    let mut hits: Vec<&Danmaku> = sent
        .iter()
        .filter(|d| d.text.to_lowercase().contains("好耶"))
        .collect();
    hits.sort_by_key(|d| (d.ts_ms, d.id));
    assert!(!hits.is_empty());
    let want: Vec<Value> = hits
        .iter()
        .take(100)
        .map(|d| json!([d.ts_ms, d.room, d.user, d.text]))
        .collect();
    assert_eq!(results[2], Value::Array(want), "comments containing a word");

    // 4. Deletions, with the comments viewers can still see.
    assert_eq!(
        results[3],
        json!([[
            DELETED,
            "r2",
            null,
            "moderator",
            format!("spam {DELETED}"),
            sent.len()
        ]]),
        "deletions"
    );

    // Every row, every column.
    let mut by_id: Vec<&Danmaku> = sent.iter().collect();
    by_id.sort_by_key(|d| d.id);
    let want: Vec<Value> = by_id
        .iter()
        .map(|d| {
            let e = expected_row(d);
            json!([
                e["id"],
                e["room"],
                e["vod"],
                e["offset_ms"],
                e["ts"],
                e["user"],
                e["name"],
                e["kind"],
                e["mode"],
                e["color"],
                e["text"]
            ])
        })
        .collect();
    assert_eq!(results[4], Value::Array(want), "DuckDB row for row");
    assert_eq!(
        results[5],
        json!([["DATE", "INTEGER"]]),
        "typed hive partitions"
    );
    assert_eq!(
        results[6],
        json!([[sent.len(), sent.len()]]),
        "each id once"
    );
}
