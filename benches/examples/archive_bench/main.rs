//! The archive benchmark (`docs/benchmarks/archive.md`):
//!
//! ```text
//! cargo build --release -p danmaku-archive --example bench
//! taskset -c 0 target/release/examples/bench [--rows N] [--e2e-rows N] [--scylla-rows N]
//!     [--runs R] [--quiet-below PCT] [--quiet-max-wait SECS] [--no-python]
//!     [--only encode|e2e|explore|explore-small|phases|breakdown|append] [--paths SUBSTRING]
//!     [--dump FILE]
//! ```
//!
//! 1. Encoding on one core (this thread only): synthetic comments
//!    (`danmaku_archive::bench`) into Parquet: one big file, batch-sized files, and
//!    the archiver's whole pure step (protobuf decode + alignment + Parquet); next
//!    to the peers measured in the same run on the same comments: JSON lines,
//!    zstd-3 of the JSON lines, and pyarrow's Parquet writer with the same settings.
//! 2. Sizes: Parquet bytes per comment against JSON lines and zstd-3 JSON lines.
//! 3. End to end: comments in the embedded SliceStore, drained into Parquet and the
//!    embedded ArchiveStore (and the ScyllaDB adapter on the in-process CQL server,
//!    which only shows the adapter's overhead: kassandra is a single-threaded toy).
//!
//! `BENCH_WORKERS=N` runs N drains at once in the end-to-end runs (N archivers in
//! one process). `--only encode|e2e|explore|explore-small|phases|breakdown|append` runs one part
//! (`explore`: writer settings side by side; `explore-small`: the same on files of
//! 10,000 rows, with where their bytes go; `phases`: where encoding time goes;
//! `breakdown`: each step of the archiver timed, embedded SliceStore and ArchiveStore;
//! `append`: latency of one-comment appends to the embedded SliceStore, fsynced and
//! not; `--paths` keeps the end-to-end paths whose name contains it); `--dump FILE`
//! keeps the one-file Parquet of the encode section.
//!
//! Each figure is the median of `--runs` runs (3); the machine's busy % (all
//! tenants, 100 = one core) is printed before each section, after waiting up to
//! `--quiet-max-wait` seconds for it to drop below `--quiet-below`.

use bytes::Bytes;
mod synth;

use danmaku_archive::parquet_file::{self, ParquetRow};
use danmaku_archive::{drain, Context};
use danmaku_core::auth::TokenSigner;
use danmaku_core::config::Settings;
use danmaku_core::id::IdGenerator;
use danmaku_core::memory::{LocalNotifier, MemoryReplayCache};
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{ArchiveStore, SliceItem};
use danmaku_core::vod::Session;
use danmaku_embedded::{EmbeddedArchiveStore, EmbeddedBus, EmbeddedDb, EmbeddedSliceStore};
use danmaku_scylla::testserver::CqlTestServer;
use danmaku_scylla::{migrate, ScyllaArchiveStore};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synth::{json_lines, prepare_batch, rows, synthetic};

/// 2025-11-24T16:00:00Z.
const T: i64 = 1_764_000_000_000;
const ROOMS: u32 = 50;
const RATE: u32 = 2_000;

struct Args {
    rows: usize,
    e2e_rows: usize,
    scylla_rows: usize,
    runs: usize,
    quiet_below: u64,
    quiet_max_wait: u64,
    python: bool,
    only: Option<String>,
    dump: Option<String>,
    /// End-to-end paths whose name contains this (all when unset).
    paths: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        e2e_rows: 300_000,
        scylla_rows: 30_000,
        runs: 3,
        quiet_below: 25,
        quiet_max_wait: 120,
        python: true,
        only: None,
        dump: None,
        paths: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || -> u64 {
            argv.get(i + 1)
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| panic!("{} needs a number", argv[i]))
        };
        match argv[i].as_str() {
            "--rows" => a.rows = value() as usize,
            "--e2e-rows" => a.e2e_rows = value() as usize,
            "--scylla-rows" => a.scylla_rows = value() as usize,
            "--runs" => a.runs = value().max(1) as usize,
            "--quiet-below" => a.quiet_below = value(),
            "--quiet-max-wait" => a.quiet_max_wait = value(),
            "--only" => a.only = argv.get(i + 1).cloned(),
            "--dump" => a.dump = argv.get(i + 1).cloned(),
            "--paths" => a.paths = argv.get(i + 1).cloned(),
            "--no-python" => {
                a.python = false;
                i -= 1;
            }
            other => {
                panic!("unknown argument {other}; see the header of archive/examples/bench.rs")
            }
        }
        i += 2;
    }
    a
}

/// Machine-wide CPU busy % over `secs` (100 = one core), from /proc/stat.
fn busy_pct(secs: f64) -> u64 {
    fn sample() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = cpu.get(3)? + cpu.get(4)?;
        Some((idle, cpu.iter().sum()))
    }
    let (Some((i0, t0)), ()) = (sample(), std::thread::sleep(Duration::from_secs_f64(secs))) else {
        return 0;
    };
    let Some((i1, t1)) = sample() else { return 0 };
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let (idle, total) = (i1 - i0, (t1 - t0).max(1));
    (total - idle) * 100 * ncpu / total
}

/// Waits for a quiet machine (see the header), prints the busy % and returns it.
fn quiet(args: &Args, section: &str) -> u64 {
    let start = Instant::now();
    loop {
        let b = busy_pct(2.0);
        if b < args.quiet_below || start.elapsed().as_secs() >= args.quiet_max_wait {
            println!("\n## {section}  (background busy {b}% before the run; 100 = one core)\n");
            return b;
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median seconds of `runs` runs of `f` (its output kept from the last run).
fn time<R>(runs: usize, mut f: impl FnMut() -> R) -> (f64, R) {
    let mut secs = Vec::with_capacity(runs);
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        secs.push(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (median(secs), out.expect("at least one run"))
}

/// Comments of the benchmark, each in its room's session.
fn comments(n: usize) -> (Vec<Danmaku>, Vec<Session>) {
    let comments = synthetic(n, 42, T, RATE, ROOMS);
    let sessions = (0..ROOMS)
        .map(|r| Session {
            vod: format!("v{r}"),
            room: format!("r{r}"),
            started_at: T - 60_000,
            ended_at: None,
            latency_ms: 1_500,
            video_url: None,
        })
        .collect();
    (comments, sessions)
}

fn archived_rows(comments: &[Danmaku]) -> Vec<ParquetRow> {
    let mut out = rows(comments);
    for r in &mut out {
        r.offset_ms = Some(r.ts_ms - (T - 60_000) - 1_500);
        r.vod = Some(format!("v{}", &r.room[1..]));
    }
    out
}

fn rate(rows: usize, secs: f64) -> String {
    format!("{:.0} rows/s", rows as f64 / secs)
}

fn encode_section(args: &Args) -> (Vec<Danmaku>, Bytes) {
    quiet(args, "Encoding on one core");
    let (comments, sessions) = comments(args.rows);
    let parquet_rows = archived_rows(&comments);
    let n = parquet_rows.len();

    let (t_arrival, _) = time(args.runs, || parquet_file::encode(&parquet_rows).unwrap());
    println!(
        "parquet, one file of {n} rows, rows in arrival (time) order:      {:>7.3} s  {}",
        t_arrival,
        rate(n, t_arrival)
    );

    // The archiver hands the encoder a batch's rows grouped by room, in seq order
    // (and decoded in that order, so their strings lie in that order in memory).
    let mut room_order = comments.clone();
    room_order
        .sort_by(|a, b| (a.room.as_str(), a.ts_ms, a.id).cmp(&(b.room.as_str(), b.ts_ms, b.id)));
    let room_rows = archived_rows(&room_order);
    drop(room_order);
    let (t_one, one_file) = time(args.runs, || parquet_file::encode(&room_rows).unwrap());
    println!(
        "parquet, one file of {n} rows, rows in archiver order (room, seq): {:>7.3} s  {}",
        t_one,
        rate(n, t_one)
    );
    drop(room_rows);

    // Batch-sized files: 10,000 consecutive comments each (5 s of traffic over 50
    // rooms), in archiver order within the batch.
    let chunk = 10_000;
    let batches: Vec<Vec<ParquetRow>> = comments
        .chunks(chunk)
        .map(|c| {
            let mut c = c.to_vec();
            c.sort_by(|a, b| (a.room.as_str(), a.ts_ms).cmp(&(b.room.as_str(), b.ts_ms)));
            archived_rows(&c)
        })
        .collect();
    // As the archiver writes them: `encode_batch` (per-batch bloom filter rate; a
    // chunk crossing an hour makes two files).
    let (t_chunks, chunk_bytes) = time(args.runs, || {
        batches
            .iter()
            .enumerate()
            .map(|(b, c)| {
                parquet_file::encode_batch(b as u64, c.iter().collect::<Vec<&ParquetRow>>())
                    .unwrap()
                    .iter()
                    .map(|(_, f)| f.len())
                    .sum::<usize>()
            })
            .sum::<usize>()
    });
    println!(
        "parquet, files of {chunk} rows, archiver order:                   {:>7.3} s  {}",
        t_chunks,
        rate(n, t_chunks)
    );
    drop(batches);

    // The archiver's pure step: slice items (protobuf) -> aligned -> hour files.
    let by_room: HashMap<String, Vec<Session>> = sessions
        .iter()
        .map(|s| (s.room.clone(), vec![s.clone()]))
        .collect();
    let items: Vec<Vec<(String, SliceItem)>> = comments
        .chunks(chunk)
        .map(|c| {
            let mut c: Vec<&Danmaku> = c.iter().collect();
            c.sort_by(|a, b| (a.room.as_str(), a.ts_ms).cmp(&(b.room.as_str(), b.ts_ms)));
            c.iter()
                .enumerate()
                .map(|(i, d)| {
                    (
                        d.room.clone(),
                        SliceItem {
                            seq: i as u64 + 1,
                            ts_ms: d.ts_ms,
                            data: d.encode_bytes(),
                        },
                    )
                })
                .collect()
        })
        .collect();
    let (t_prepare, archived) = time(args.runs, || {
        let mut archived = 0;
        for (b, c) in items.iter().enumerate() {
            let (_, a, _) = prepare_batch(b as u64, c.clone(), &by_room, 30_000).unwrap();
            archived += a;
        }
        archived
    });
    assert_eq!(archived, n, "every comment aligned to its session");
    println!(
        "archiver step (decode + align + parquet), batches of {chunk}:     {:>7.3} s  {}",
        t_prepare,
        rate(n, t_prepare)
    );

    // Peers on the same comments, same thread.
    let (t_json, jl) = time(args.runs, || json_lines(&comments));
    println!(
        "peer: JSON lines (serde_json):          {:>8.3} s  {}",
        t_json,
        rate(n, t_json)
    );
    let (t_zstd, zjl) = time(args.runs, || zstd::encode_all(&jl[..], 3).unwrap());
    println!(
        "peer: JSON lines + zstd-3:               {:>8.3} s  {}",
        t_json + t_zstd,
        rate(n, t_json + t_zstd)
    );
    println!(
        "ratio parquet one file / JSON lines + zstd-3 (time): {:.2}",
        t_one / (t_json + t_zstd)
    );

    quiet(args, "Sizes");
    let per = |b: usize| b as f64 / n as f64;
    println!(
        "| encoding | bytes | bytes per comment | vs zstd-3 JSON lines of the same grouping |"
    );
    println!("|---|---:|---:|---:|");
    // The same 10,000-comment chunks as JSON lines, each compressed on its own
    // (what an archive of per-batch JSON files would hold).
    let zjl_chunks: usize = comments
        .chunks(chunk)
        .map(|c| zstd::encode_all(&json_lines(c)[..], 3).unwrap().len())
        .sum();
    for (name, bytes, peer) in [
        ("JSON lines (API item JSON)", jl.len(), zjl.len()),
        ("JSON lines, zstd -3", zjl.len(), zjl.len()),
        ("Parquet, one file", one_file.len(), zjl.len()),
        (
            "JSON lines, zstd -3, per 10,000-comment chunk",
            zjl_chunks,
            zjl_chunks,
        ),
        ("Parquet, files of 10,000 rows", chunk_bytes, zjl_chunks),
    ] {
        println!(
            "| {name} | {bytes} | {:.1} | {:.2}x |",
            per(bytes),
            bytes as f64 / peer as f64
        );
    }
    (comments, one_file)
}

const PYARROW: &str = r#"
import sys, time, json, pyarrow as pa, pyarrow.parquet as pq
pa.set_cpu_count(1); pa.set_io_thread_count(1)
src, runs = sys.argv[1], int(sys.argv[2])
table = pq.read_table(src)
out = sys.argv[3]
times = []
for _ in range(runs):
    t = time.perf_counter()
    pq.write_table(table, out, compression="zstd", compression_level=3, use_dictionary=True,
                   write_statistics=True, write_page_index=True, row_group_size=1024 * 1024)
    times.append(time.perf_counter() - t)
times.sort()
import os
print(json.dumps({"median_s": times[len(times) // 2], "bytes": os.path.getsize(out), "rows": table.num_rows}))
"#;

fn pyarrow_section(args: &Args, one_file: &Bytes) {
    quiet(
        args,
        "Peer: pyarrow's Parquet writer on one core, same rows and settings",
    );
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ours.parquet");
    std::fs::write(&src, one_file).unwrap();
    let out = std::process::Command::new("taskset")
        .args(["-c", "0", "python3", "-c", PYARROW])
        .arg(&src)
        .arg(args.runs.to_string())
        .arg(dir.path().join("pyarrow.parquet"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let (secs, bytes, n) = (
                v["median_s"].as_f64().unwrap(),
                v["bytes"].as_u64().unwrap(),
                v["rows"].as_u64().unwrap(),
            );
            println!(
                "pyarrow write_table (zstd-3, dictionary, statistics, page index; no bloom filters, input already sorted): {secs:.3} s  {}  {:.1} bytes/row",
                rate(n as usize, secs),
                bytes as f64 / n as f64
            );
        }
        Ok(o) => println!(
            "pyarrow peer failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("pyarrow peer not run: {e}"),
    }
}

/// The SliceStore of an end-to-end run.
#[derive(Clone, Copy)]
enum Slices<'a> {
    Embedded,
    /// A `redis-server` of `danmaku_core::testkit`.
    Redis(&'a str),
}

/// The ArchiveStore of an end-to-end run.
#[derive(Clone, Copy)]
enum Archive<'a> {
    Embedded,
    /// The ScyllaDB adapter on the in-process CQL server.
    Scylla(&'a CqlTestServer),
}

async fn context(dir: &std::path::Path, slices: Slices<'_>, archive: Archive<'_>) -> Context {
    let db = EmbeddedDb::open(dir).expect("open db");
    let mut settings = Settings::default();
    settings.server.data_dir = dir.to_path_buf();
    let archive: Arc<dyn ArchiveStore> = match archive {
        Archive::Embedded => Arc::new(EmbeddedArchiveStore::new(db.clone())),
        Archive::Scylla(server) => {
            let s = server.settings(&format!("bench{}", danmaku_core::now_ms() % 1_000_000));
            migrate(&s).await.unwrap();
            Arc::new(ScyllaArchiveStore::connect(&s).await.unwrap())
        }
    };
    let slices: Arc<dyn danmaku_core::ports::SliceStore> = match slices {
        Slices::Embedded => Arc::new(EmbeddedSliceStore::new(db.clone())),
        Slices::Redis(url) => {
            settings.redis.url = url.to_string();
            settings.redis.namespace = format!("bench{}", danmaku_core::now_ms());
            let (store, _) = danmaku_redis::connect(&settings.redis)
                .await
                .unwrap()
                .unwrap();
            Arc::new(store)
        }
    };
    Context {
        settings: Arc::new(settings),
        bus: Arc::new(EmbeddedBus::open(db.clone(), 1).expect("bus")),
        slices,
        notifier: Arc::new(LocalNotifier::new(16)),
        archive,
        presence: Arc::new(danmaku_core::ports::MemoryPresence::default()),
        objects: danmaku_object_store::open_url("", dir).expect("objects"),
        cache: Arc::new(MemoryReplayCache::new(1 << 20)),
        signer: TokenSigner::new(b"bench"),
        ids: Arc::new(IdGenerator::new(0)),
    }
}

/// Loads `n` comments into a fresh SliceStore (untimed), then times `drain` into
/// Parquet, and into the ArchiveStore when `in_sessions` (else the comments belong
/// to no VOD and go to Parquet only). Returns seconds.
async fn end_to_end(n: usize, slices: Slices<'_>, archive: Archive<'_>, in_sessions: bool) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), slices, archive).await;
    let (mut comments, sessions) = comments(n);
    // Rooms of their own per run, so runs on a shared Redis do not meet.
    let tag = danmaku_core::now_ms() % 1_000_000;
    for d in &mut comments {
        d.room = format!("{}x{tag}", d.room);
    }
    if in_sessions {
        for s in &sessions {
            let mut s = s.clone();
            s.room = format!("{}x{tag}", s.room);
            s.vod = format!("{}x{tag}", s.vod);
            ctx.archive.create_session(&s).await.unwrap();
        }
    }
    let mut by_room: BTreeMap<&str, Vec<&Danmaku>> = BTreeMap::new();
    for d in &comments {
        by_room.entry(d.room.as_str()).or_default().push(d);
    }
    for (room, list) in by_room {
        for (c, chunk) in list.chunks(5_000).enumerate() {
            let items: Vec<SliceItem> = chunk
                .iter()
                .enumerate()
                .map(|(i, d)| SliceItem {
                    seq: (c * 5_000 + i) as u64 + 1,
                    ts_ms: d.ts_ms,
                    data: d.encode_bytes(),
                })
                .collect();
            ctx.slices.append(room, 10_000, 0, &items).await.unwrap();
        }
    }
    ctx.slices.expedite_all().await.unwrap();
    let t = Instant::now();
    let workers = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1usize);
    let drains = (0..workers).map(|_| drain(&ctx, Duration::from_secs(3_600)));
    let rows: u64 = futures::future::join_all(drains)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .sum();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(rows, n as u64);
    if in_sessions {
        let mut total = 0;
        for s in &sessions {
            total += ctx
                .archive
                .count(&format!("{}x{tag}", s.vod))
                .await
                .unwrap();
        }
        assert_eq!(total, n as u64, "every comment in the ArchiveStore");
    }
    secs
}

/// `--only breakdown`: where the end-to-end time goes, step by step (the steps of
/// `process_batch`, run one after the other here), embedded stores.
async fn breakdown(args: &Args) {
    quiet(args, "End to end, by step");
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), Slices::Embedded, Archive::Embedded).await;
    let (comments, sessions) = comments(args.e2e_rows);
    for s in &sessions {
        ctx.archive.create_session(s).await.unwrap();
    }
    let t = Instant::now();
    let mut by_room: BTreeMap<&str, Vec<&Danmaku>> = BTreeMap::new();
    for d in &comments {
        by_room.entry(d.room.as_str()).or_default().push(d);
    }
    for (room, list) in by_room {
        let items: Vec<SliceItem> = list
            .iter()
            .enumerate()
            .map(|(i, d)| SliceItem {
                seq: i as u64 + 1,
                ts_ms: d.ts_ms,
                data: d.encode_bytes(),
            })
            .collect();
        ctx.slices.append(room, 10_000, 0, &items).await.unwrap();
    }
    println!("load (untimed in e2e): {:.3} s", t.elapsed().as_secs_f64());
    ctx.slices.expedite_all().await.unwrap();
    let steps = [
        "claim + read",
        "sessions",
        "decode + align",
        "ArchiveStore upsert",
        "Parquet encode",
        "put files",
        "complete",
    ];
    let mut secs = [0.0f64; 7];
    let (mut batches, mut rows) = (0, 0);
    let total = Instant::now();
    loop {
        let mut t = Instant::now();
        let mut lap = |i: usize, secs: &mut [f64; 7]| {
            secs[i] += t.elapsed().as_secs_f64();
            t = Instant::now();
        };
        let Some(batch) = ctx
            .slices
            .claim_batch(danmaku_core::now_ms(), 64, Duration::from_secs(600))
            .await
            .unwrap()
        else {
            break;
        };
        lap(0, &mut secs);
        let mut sessions = HashMap::new();
        for (room, _) in &batch.items {
            if !sessions.contains_key(room) {
                let s = ctx.archive.sessions_by_room(room, 1000).await.unwrap();
                sessions.insert(room.clone(), s);
            }
        }
        lap(1, &mut secs);
        let aligned = synth::align_batch(batch.id, batch.items, &sessions, 30_000);
        lap(2, &mut secs);
        ctx.archive
            .upsert_comments(aligned.archived())
            .await
            .unwrap();
        lap(3, &mut secs);
        let files = synth::encode_aligned(batch.id, &aligned).unwrap();
        lap(4, &mut secs);
        for (name, bytes) in files {
            ctx.objects.put(&name, bytes).await.unwrap();
        }
        lap(5, &mut secs);
        ctx.slices.complete_batch(batch.id).await.unwrap();
        lap(6, &mut secs);
        batches += 1;
        rows += aligned.rows();
    }
    let all = total.elapsed().as_secs_f64();
    println!(
        "{batches} batches, {rows} rows in {all:.3} s ({}), one step after the other:",
        rate(rows, all)
    );
    for (name, s) in steps.iter().zip(secs) {
        println!(
            "  {name:<20} {s:>7.3} s  {:>5.2} us/row",
            s * 1e6 / rows.max(1) as f64
        );
    }
}

/// `--only append`: latency of one live-path append (one comment) to the embedded
/// SliceStore, fsynced and with `Durability::None` (what the embedded pipeline
/// uses: the writer's durable Bus offset commit persists it).
async fn append_latency(args: &Args) {
    quiet(
        args,
        "Embedded SliceStore append latency, one comment per append",
    );
    let n = 300usize;
    println!("| append commit | appends | median ms | p90 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, unsynced) in [
        ("fsynced (Durability::Immediate)", false),
        ("Durability::None", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedSliceStore::new(EmbeddedDb::open(dir.path()).unwrap());
        let store = if unsynced {
            store.with_unsynced_appends()
        } else {
            store
        };
        let mut ms = Vec::with_capacity(n);
        for i in 0..n {
            let item = SliceItem {
                seq: i as u64 + 1,
                ts_ms: T + i as i64,
                data: Bytes::from_static(b"a comment of about a hundred bytes, as protobuf, with its user, room and text"),
            };
            let t = Instant::now();
            danmaku_core::ports::SliceStore::append(&store, "r", 10_000, 60_000, &[item])
                .await
                .unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let at = |q: f64| ms[((n as f64 * q) as usize).min(n - 1)];
        println!(
            "| {name} | {n} | {:.3} | {:.3} | {:.3} |",
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
}

async fn e2e_section(args: &Args) {
    quiet(args, "End to end: SliceStore -> Parquet (+ ArchiveStore)");
    let redis = danmaku_redis::testkit::RedisServer::start();
    let url = redis.url();
    let server = CqlTestServer::start();
    let variants: Vec<(&str, usize, Slices, Archive, bool)> = vec![
        (
            "Parquet alone; embedded SliceStore",
            args.e2e_rows,
            Slices::Embedded,
            Archive::Embedded,
            false,
        ),
        (
            "Parquet alone; Redis SliceStore",
            args.e2e_rows,
            Slices::Redis(&url),
            Archive::Embedded,
            false,
        ),
        (
            "Parquet + embedded ArchiveStore; embedded SliceStore",
            args.e2e_rows,
            Slices::Embedded,
            Archive::Embedded,
            true,
        ),
        (
            "Parquet + embedded ArchiveStore; Redis SliceStore",
            args.e2e_rows,
            Slices::Redis(&url),
            Archive::Embedded,
            true,
        ),
        (
            "Parquet + ScyllaDB adapter on kassandra; Redis SliceStore",
            args.scylla_rows,
            Slices::Redis(&url),
            Archive::Scylla(&server),
            true,
        ),
    ];
    println!("| path | comments | seconds (median) | rows/s |");
    println!("|---|---:|---:|---:|");
    for (name, n, slices, archive, in_sessions) in variants {
        if n == 0 || args.paths.as_deref().is_some_and(|p| !name.contains(p)) {
            continue;
        }
        let mut secs = Vec::new();
        for _ in 0..args.runs {
            secs.push(end_to_end(n, slices, archive, in_sessions).await);
        }
        let t = median(secs);
        println!("| {name} | {n} | {t:.3} | {:.0} |", n as f64 / t);
    }
}

/// `--only explore`: writer settings side by side on the same sorted rows (time on
/// one core, total and per-column bytes), to choose the defaults.
fn explore(args: &Args) {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, Encoding, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::schema::types::ColumnPath;
    quiet(args, "Writer settings explored");
    let (comments, _) = comments(args.rows);
    let mut rows = archived_rows(&comments);
    parquet_file::sort_rows(&mut rows);
    let t = Instant::now();
    let batch = parquet_file::to_record_batch(&rows).unwrap();
    println!("to_record_batch: {:.3} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut sorted = rows.clone();
    parquet_file::sort_rows(&mut sorted);
    println!("clone + sort: {:.3} s", t.elapsed().as_secs_f64());
    let n = rows.len();
    let base = || {
        let mut b = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap()))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_dictionary_enabled(true);
        for c in ["user", "room"] {
            b = b
                .set_column_bloom_filter_enabled(ColumnPath::from(c), true)
                .set_column_bloom_filter_fpp(ColumnPath::from(c), 0.01)
                .set_column_bloom_filter_ndv(ColumnPath::from(c), n as u64);
        }
        b
    };
    let delta = |mut b: parquet::file::properties::WriterPropertiesBuilder| {
        for c in ["id", "ts", "offset_ms"] {
            b = b
                .set_column_dictionary_enabled(ColumnPath::from(c), false)
                .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
        }
        b
    };
    let variants: Vec<(&str, WriterProperties)> = vec![
        ("current", base().build()),
        ("delta ints", delta(base()).build()),
        (
            "delta ints, zstd 1",
            delta(base())
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap()))
                .build(),
        ),
        ("delta ints, no bloom", {
            let mut b = delta(base());
            for c in ["user", "room"] {
                b = b.set_column_bloom_filter_enabled(ColumnPath::from(c), false);
            }
            b.build()
        }),
        (
            "delta ints, chunk stats",
            delta(base())
                .set_statistics_enabled(EnabledStatistics::Chunk)
                .build(),
        ),
        (
            "delta ints, text DELTA_LENGTH_BYTE_ARRAY",
            delta(base())
                .set_column_dictionary_enabled(ColumnPath::from("text"), false)
                .set_column_encoding(ColumnPath::from("text"), Encoding::DELTA_LENGTH_BYTE_ARRAY)
                .build(),
        ),
        (
            "delta ints, name DELTA_BYTE_ARRAY",
            delta(base())
                .set_column_dictionary_enabled(ColumnPath::from("name"), false)
                .set_column_encoding(ColumnPath::from("name"), Encoding::DELTA_BYTE_ARRAY)
                .build(),
        ),
        (
            "delta ints, text plain",
            delta(base())
                .set_column_dictionary_enabled(ColumnPath::from("text"), false)
                .build(),
        ),
        (
            "delta ints, row groups of 128k",
            delta(base()).set_max_row_group_size(128 * 1024).build(),
        ),
        (
            "delta ints, 256 KiB dictionary pages",
            delta(base())
                .set_dictionary_page_size_limit(256 * 1024)
                .build(),
        ),
        (
            "delta ints, large pages",
            delta(base())
                .set_data_page_size_limit(4 << 20)
                .set_write_batch_size(8192)
                .build(),
        ),
    ];
    for (name, props) in variants {
        let (secs, bytes) = time(args.runs, || {
            let mut out = Vec::with_capacity(n * 32);
            let mut w =
                ArrowWriter::try_new(&mut out, batch.schema(), Some(props.clone())).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
            out
        });
        let meta = parquet::file::reader::FileReader::metadata(
            &parquet::file::serialized_reader::SerializedFileReader::new(Bytes::from(
                bytes.clone(),
            ))
            .unwrap(),
        )
        .clone();
        let mut cols: BTreeMap<String, i64> = BTreeMap::new();
        for rg in meta.row_groups() {
            for c in rg.columns() {
                *cols.entry(c.column_path().string()).or_default() += c.compressed_size();
            }
        }
        let per: Vec<String> = cols
            .iter()
            .map(|(c, b)| format!("{c} {:.2}", *b as f64 / n as f64))
            .collect();
        println!(
            "{name:<28} {secs:.3} s {:>9}  {:.2} B/row  [{}]",
            rate(n, secs),
            bytes.len() as f64 / n as f64,
            per.join(", ")
        );
    }
}

/// `--only explore-small`: writer settings side by side on batch-sized files (10,000
/// rows, archiver order), with where each file's bytes go: column pages, bloom
/// filters, and the rest (footer, page index).
fn explore_small(args: &Args) {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::{Compression, Encoding, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterPropertiesBuilder};
    use parquet::schema::types::ColumnPath;
    quiet(args, "Writer settings explored on files of 10,000 rows");
    let (comments, _) = comments(args.rows);
    let chunk = 10_000;
    let chunks: Vec<Vec<ParquetRow>> = comments
        .chunks(chunk)
        .map(|c| {
            let mut c = c.to_vec();
            c.sort_by(|a, b| (a.room.as_str(), a.ts_ms).cmp(&(b.room.as_str(), b.ts_ms)));
            archived_rows(&c)
        })
        .collect();
    let n: usize = chunks.iter().map(Vec::len).sum();
    let jl_zstd: usize = comments
        .chunks(chunk)
        .map(|c| zstd::encode_all(&json_lines(c)[..], 3).unwrap().len())
        .sum();
    println!(
        "peer: zstd-3 JSON lines, each chunk on its own: {:.2} B/row",
        jl_zstd as f64 / n as f64
    );
    // Each chunk as the archiver encodes it: its record batch and its shape.
    let prepared: Vec<(arrow::record_batch::RecordBatch, parquet_file::FileShape)> = chunks
        .iter()
        .map(|rows| {
            let (order, _) = parquet_file::file_order(rows);
            (
                parquet_file::to_record_batch_in(rows, &order).unwrap(),
                parquet_file::FileShape::of(rows, parquet_file::BATCH_BLOOM_FPP),
            )
        })
        .collect();
    type Tweak = Box<dyn Fn(WriterPropertiesBuilder) -> WriterPropertiesBuilder>;
    let encoding = |cols: &'static [&'static str], e: Encoding| -> Tweak {
        Box::new(move |mut b| {
            for c in cols {
                b = b
                    .set_column_dictionary_enabled(ColumnPath::from(*c), false)
                    .set_column_encoding(ColumnPath::from(*c), e);
            }
            b
        })
    };
    let dictionary = |cols: &'static [&'static str]| -> Tweak {
        Box::new(move |mut b| {
            for c in cols {
                b = b
                    .set_column_dictionary_enabled(ColumnPath::from(*c), true)
                    .set_column_encoding(ColumnPath::from(*c), Encoding::PLAIN);
            }
            b
        })
    };
    let bloom_fpp = |fpp: f64| -> Tweak {
        Box::new(move |mut b| {
            for c in ["user", "room"] {
                b = b.set_column_bloom_filter_fpp(ColumnPath::from(c), fpp);
            }
            b
        })
    };
    // Tweaks of the archiver's per-batch settings (`encode_batch`).
    let variants: Vec<(&str, Tweak)> = vec![
        ("archiver's per-batch settings", Box::new(|b| b)),
        (
            "before: all strings dictionary, fpp 0.01",
            Box::new(move |b| bloom_fpp(0.01)(dictionary(&["name", "text"])(b))),
        ),
        ("bloom fpp 0.01", bloom_fpp(0.01)),
        (
            "no user bloom filter",
            Box::new(|b| b.set_column_bloom_filter_enabled(ColumnPath::from("user"), false)),
        ),
        (
            "no bloom filters",
            Box::new(|mut b| {
                for c in ["user", "room"] {
                    b = b.set_column_bloom_filter_enabled(ColumnPath::from(c), false);
                }
                b
            }),
        ),
        ("text dictionary", dictionary(&["text"])),
        (
            "text DELTA_BYTE_ARRAY",
            encoding(&["text"], Encoding::DELTA_BYTE_ARRAY),
        ),
        ("text PLAIN", encoding(&["text"], Encoding::PLAIN)),
        ("name dictionary", dictionary(&["name"])),
        ("name PLAIN", encoding(&["name"], Encoding::PLAIN)),
        (
            "name DELTA_LENGTH_BYTE_ARRAY",
            encoding(&["name"], Encoding::DELTA_LENGTH_BYTE_ARRAY),
        ),
        (
            "user PLAIN (no dictionary)",
            encoding(&["user"], Encoding::PLAIN),
        ),
        (
            "user DELTA_BYTE_ARRAY (no dictionary)",
            encoding(&["user"], Encoding::DELTA_BYTE_ARRAY),
        ),
        ("id PLAIN", encoding(&["id"], Encoding::PLAIN)),
        (
            "id BYTE_STREAM_SPLIT",
            encoding(&["id"], Encoding::BYTE_STREAM_SPLIT),
        ),
        (
            "zstd 6",
            Box::new(|b| b.set_compression(Compression::ZSTD(ZstdLevel::try_new(6).unwrap()))),
        ),
        (
            "zstd 9",
            Box::new(|b| b.set_compression(Compression::ZSTD(ZstdLevel::try_new(9).unwrap()))),
        ),
        (
            "statistics truncated to 16 B",
            Box::new(|b| {
                b.set_statistics_truncate_length(Some(16))
                    .set_column_index_truncate_length(Some(16))
            }),
        ),
        (
            "chunk statistics (no page index)",
            Box::new(|b| b.set_statistics_enabled(EnabledStatistics::Chunk)),
        ),
    ];
    for (name, tweak) in variants {
        let t = Instant::now();
        let mut total = 0usize;
        let mut cols: BTreeMap<String, i64> = BTreeMap::new();
        let mut blooms = 0i64;
        for (batch, shape) in &prepared {
            let props = tweak(
                parquet_file::writer_properties_for(shape, Vec::new())
                    .unwrap()
                    .into_builder(),
            )
            .build();
            let mut out = Vec::with_capacity(chunk * 24);
            let mut w = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
            w.write(batch).unwrap();
            w.close().unwrap();
            total += out.len();
            let reader =
                parquet::file::serialized_reader::SerializedFileReader::new(Bytes::from(out))
                    .unwrap();
            let meta = parquet::file::reader::FileReader::metadata(&reader);
            for rg in meta.row_groups() {
                for c in rg.columns() {
                    *cols.entry(c.column_path().string()).or_default() += c.compressed_size();
                    blooms += c.bloom_filter_length().unwrap_or(0) as i64;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let pages: i64 = cols.values().sum();
        let per: Vec<String> = cols
            .iter()
            .map(|(c, b)| format!("{c} {:.2}", *b as f64 / n as f64))
            .collect();
        println!(
            "{name:<34} {:.2} B/row = {:.3}x zstd JSON  (pages {:.2}, bloom {:.2}, footer+index {:.2})  {secs:.2} s  [{}]",
            total as f64 / n as f64,
            total as f64 / jl_zstd as f64,
            pages as f64 / n as f64,
            blooms as f64 / n as f64,
            (total as i64 - pages - blooms) as f64 / n as f64,
            per.join(", ")
        );
    }
}

fn main() {
    let args = args();
    println!(
        "archive benchmark: {} rows to encode, {} end to end, {} through the ScyllaDB adapter; median of {} runs",
        args.rows, args.e2e_rows, args.scylla_rows, args.runs
    );
    if args.only.as_deref() == Some("phases") {
        let (comments, _) = comments(args.rows);
        let rows = archived_rows(&comments);
        for _ in 0..args.runs {
            let t = Instant::now();
            let (order, _) = parquet_file::file_order(&rows);
            let t_order = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let shape = parquet_file::FileShape::of(&rows, parquet_file::BLOOM_FPP);
            let t_shape = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let batch = parquet_file::to_record_batch_in(&rows, &order).unwrap();
            let t_batch = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let bytes = parquet_file::encode(&rows).unwrap();
            let t_all = t.elapsed().as_secs_f64();
            println!(
                "file_order {t_order:.3} s, FileShape::of {t_shape:.3} s ({shape:?}), to_record_batch_in {t_batch:.3} s, encode {t_all:.3} s ({} rows, {} bytes)",
                batch.num_rows(),
                bytes.len()
            );
        }
        return;
    }
    if args.only.as_deref() == Some("explore") {
        explore(&args);
        return;
    }
    if args.only.as_deref() == Some("explore-small") {
        explore_small(&args);
        return;
    }
    let run = |s: &str| args.only.as_deref().is_none_or(|o| o == s);
    if run("encode") {
        let (_comments, one_file) = encode_section(&args);
        if let Some(path) = &args.dump {
            std::fs::write(path, &one_file).unwrap();
        }
        if args.python {
            pyarrow_section(&args, &one_file);
        }
    }
    if args.only.as_deref() == Some("append") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(append_latency(&args));
        return;
    }
    if args.only.as_deref() == Some("breakdown") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(breakdown(&args));
        return;
    }
    if !run("e2e") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(e2e_section(&args));
}
