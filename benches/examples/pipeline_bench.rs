//! Writer throughput: comments per second from the Bus through the writer into one
//! Redis, next to `redis-benchmark -P 64` ZADD (the command of
//! `../shared/bench/redis_limits.sh`) on the same Redis in the same run.
//!
//! ```text
//! cargo run --release -p danmaku-benches --example pipeline_bench
//! ```
//!
//! Per run: the topic is filled with `N` comments over `ROOMS` rooms (Zipf
//! s = 1.1: a few hot rooms carry most comments, as on a real platform), then the
//! writer starts (consumer group `live-writer`) and the time from the first comment
//! stored to the last is measured; then `redis-benchmark` runs ZADD on the same
//! Redis. `RUNS` runs, medians printed. Environment: `N` (400000), `ROOMS` (200),
//! `RUNS` (3), `PIN` (1: redis-server on CPU 0, this process and redis-benchmark on
//! CPU 1, as `redis_limits.sh` pins), `DANMAKU_TEST_KAFKA` (a real broker; else
//! librdkafka's in-process mock cluster, 3 brokers).
#![allow(clippy::field_reassign_with_default)]

use danmaku_core::config::Settings;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::{Bus, RecordPosition};
use danmaku_kafka::{unique_topic, KafkaBus, TestKafka};
use danmaku_redis::testkit::free_port;
use futures::StreamExt;
use rand::Rng;
use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PAYLOAD: &str = r#"{"uid":1234567,"text":"hello-danmaku-0123456789"}"#;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis(pin: bool) -> Redis {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("danmaku-bench-redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "redis-server"]);
        c
    } else {
        Command::new("redis-server")
    };
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--dir", &dir.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = cmd.spawn().expect("redis-server");
    let r = Redis { child, port };
    for _ in 0..200 {
        if redis_cli(port, &["PING"]).contains("PONG") {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not start");
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Rooms by Zipf(1.1) weight: cumulative distribution.
fn zipf(rooms: usize) -> Vec<f64> {
    let w: Vec<f64> = (1..=rooms).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x / total;
            acc
        })
        .collect()
}

/// CPU seconds (user + system) a process used so far.
fn cpu_secs(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// One writer run; returns comments/s.
async fn writer_run(kafka: &TestKafka, redis: &Redis, n: usize, rooms: usize) -> (f64, f64, f64) {
    let redis_port = redis.port;
    let redis_pid = redis.child.id().to_string();
    redis_cli(redis_port, &["FLUSHALL"]);
    let topic = unique_topic("bench");
    kafka.create_topic(&topic, 12).await;
    let mut ks = kafka.settings(&topic);
    ks.linger_ms = 5;
    let bus = KafkaBus::new(&ks).await.expect("kafka bus");
    let cdf = zipf(rooms);
    let mut rng = rand::thread_rng();
    let plan: Vec<String> = (0..n)
        .map(|_| {
            let x: f64 = rng.gen();
            let k = cdf.partition_point(|c| *c < x).min(rooms - 1);
            format!("room{k}")
        })
        .collect();
    let now = danmaku_core::now_ms();
    let fill = Instant::now();
    let bus_ref = &bus;
    let positions: Vec<(String, RecordPosition)> =
        futures::stream::iter(plan.into_iter().enumerate())
            .map(|(i, room)| async move {
                let d = Danmaku {
                    id: i as u64 + 1,
                    room: room.clone(),
                    user: format!("u{}", i % 1000),
                    ts_ms: now + (i as i64 / 100),
                    text: PAYLOAD.to_string(),
                    ..Default::default()
                };
                let pos = bus_ref
                    .publish(&room, d.encode_bytes())
                    .await
                    .expect("publish");
                (room, pos)
            })
            .buffer_unordered(20_000)
            .collect()
            .await;
    eprintln!(
        "# filled {n} comments in {:.1} s",
        fill.elapsed().as_secs_f64()
    );
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for (room, pos) in positions {
        seqs.entry(room).or_default().push(pos.seq());
    }
    for v in seqs.values_mut() {
        v.sort_unstable();
    }

    let mut settings = Settings::default();
    settings.kafka = ks;
    settings.redis.url = format!("redis://127.0.0.1:{redis_port}/");
    settings.redis.namespace = topic.clone();
    settings.live.hot_retention_ms = 3_600_000;
    settings.live.bigkey_scan_interval_ms = 0;
    if let Ok(v) = std::env::var("WRITER_BATCH") {
        settings.live.writer_batch = v.parse().unwrap();
    }
    if let Ok(v) = std::env::var("WRITER_CONCURRENCY") {
        settings.live.writer_concurrency = v.parse().unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    settings.server.data_dir = data.path().to_path_buf();
    settings.auth.secret.0 = "bench".into();
    let ctx = danmaku::engines::EngineSelection::build(settings)
        .await
        .expect("context");
    let stop = CancellationToken::new();
    let writer = tokio::spawn(danmaku_live::writer::run(
        ctx.clone(),
        Default::default(), // a big-key registry of its own
        stop.clone(),
        Duration::from_secs(1),
    ));

    let stored = |last: &BTreeMap<String, u64>| -> usize {
        seqs.iter()
            .map(|(room, s)| s.partition_point(|x| *x <= last.get(room).copied().unwrap_or(0)))
            .sum()
    };
    let mut t0: Option<(Instant, usize, f64, f64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    let rate = loop {
        let ctx_ref = &ctx;
        let last: BTreeMap<String, u64> = futures::stream::iter(seqs.keys())
            .map(|room| async move {
                (
                    room.clone(),
                    ctx_ref.slices.last_seq(room).await.unwrap_or(0),
                )
            })
            .buffer_unordered(256)
            .collect()
            .await;
        let done = stored(&last);
        let at = Instant::now();
        match t0 {
            None if done > 0 => t0 = Some((at, done, cpu_secs(&redis_pid), cpu_secs("self"))),
            Some((start, base, redis0, self0)) if done == n => {
                let secs = at.duration_since(start).as_secs_f64();
                break (
                    (n - base) as f64 / secs,
                    100.0 * (cpu_secs(&redis_pid) - redis0) / secs,
                    100.0 * (cpu_secs("self") - self0) / secs,
                );
            }
            _ => {}
        }
        assert!(Instant::now() < deadline, "writer did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if std::env::var_os("WRITER_PROBE").is_some() {
        eprintln!("{}", redis_cli(redis_port, &["INFO", "commandstats"]));
    }
    stop.cancel();
    let _ = writer.await;
    rate
}

/// Waits (at most `max`) until the machine is quiet: other tenants' builds change
/// every number here by 2x. Returns the last busy % seen.
fn wait_quiet(below: u64, max: Duration) -> u64 {
    let max = if env_num("QUIET", 1) == 0 {
        Duration::ZERO
    } else {
        max
    };
    let until = Instant::now() + max;
    loop {
        let b = busy_pct();
        if b < below || Instant::now() >= until {
            return b;
        }
    }
}

/// redis-benchmark ZADD -P 64; returns (ops/s, redis-server CPU % meanwhile).
fn zadd_benchmark(redis: &Redis, pin: bool) -> (f64, f64) {
    let port = redis.port;
    let pid = redis.child.id().to_string();
    redis_cli(port, &["FLUSHALL"]);
    let member = format!("{PAYLOAD}:__rand_int__");
    let mut cmd = if pin {
        let mut c = Command::new("taskset");
        c.args(["-c", "1", "redis-benchmark"]);
        c
    } else {
        Command::new("redis-benchmark")
    };
    let cpu0 = cpu_secs(&pid);
    let t0 = Instant::now();
    let out = cmd
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-c",
            "50",
            "-n",
            "1000000",
            "-P",
            "64",
            "-r",
            "100000000",
            "--csv",
        ])
        .args(["ZADD", "room:r1:dm", "__rand_int__", &member])
        .output()
        .expect("redis-benchmark");
    let cpu = 100.0 * (cpu_secs(&pid) - cpu0) / t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let ops = text
        .lines()
        .last()
        .and_then(|l| l.split("\",\"").nth(1))
        .and_then(|v| v.trim_matches('"').parse().ok())
        .unwrap_or(0.0);
    (ops, cpu)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn busy_pct() -> u64 {
    fn sample() -> (u64, u64) {
        let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let v: Vec<u64> = s
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        (v.iter().take(8).sum(), idle)
    }
    let (t1, i1) = sample();
    std::thread::sleep(Duration::from_secs(1));
    let (t2, i2) = sample();
    let (t, i) = (t2 - t1, i2 - i1);
    if t == 0 {
        return 0;
    }
    (t - i) * 100 * std::thread::available_parallelism().map_or(1, |n| n.get() as u64) / t
}

#[tokio::main]
async fn main() {
    let n = env_num("N", 400_000);
    let rooms = env_num("ROOMS", 200).max(1);
    let runs = env_num("RUNS", 3).max(1);
    let pin = env_num("PIN", 1) == 1;
    let redis = start_redis(pin);
    let kafka = TestKafka::start();
    let broker = if kafka.is_mock() {
        "librdkafka mock cluster (in-process, 3 brokers)"
    } else {
        "DANMAKU_TEST_KAFKA"
    };
    println!(
        "# pipeline_bench N={n} ROOMS={rooms} (Zipf 1.1) RUNS={runs} PIN={pin} bus={broker} redis={} background_busy_pct={}",
        redis_cli(redis.port, &["INFO", "server"])
            .lines()
            .find(|l| l.starts_with("redis_version"))
            .unwrap_or("")
            .trim(),
        busy_pct()
    );
    let mut writer = Vec::new();
    let mut zadd = Vec::new();
    let mut writer_cap = Vec::new();
    let mut zadd_cap = Vec::new();
    for run in 1..=runs {
        let busy = wait_quiet(25, Duration::from_secs(120));
        let (rate, redis_cpu, self_cpu) = writer_run(&kafka, &redis, n, rooms).await;
        let busy_z = wait_quiet(25, Duration::from_secs(120));
        let (z, z_cpu) = zadd_benchmark(&redis, pin);
        // Comments (or ZADDs) per second of Redis CPU: what one Redis core absorbs,
        // whatever limits the client side.
        let (wc, zc) = (
            rate * 100.0 / redis_cpu.max(1.0),
            z * 100.0 / z_cpu.max(1.0),
        );
        println!(
            "run {run}: writer {rate:.0} comments/s (redis-server {redis_cpu:.0}% CPU, writer+bus process {self_cpu:.0}% CPU, background_busy_pct={busy}); redis-benchmark -P 64 ZADD {z:.0} ops/s (redis-server {z_cpu:.0}% CPU, background_busy_pct={busy_z}); ratio {:.2}; per Redis CPU-second: {wc:.0} comments vs {zc:.0} ZADDs, ratio {:.2}",
            rate / z.max(1.0),
            wc / zc.max(1.0)
        );
        writer.push(rate);
        zadd.push(z);
        writer_cap.push(wc);
        zadd_cap.push(zc);
    }
    let (w, z) = (median(&mut writer), median(&mut zadd));
    let (wc, zc) = (median(&mut writer_cap), median(&mut zadd_cap));
    println!("case,median,min,max");
    for (name, m, v) in [
        ("writer_comments_per_s", w, &writer),
        ("redis_benchmark_zadd_p64_ops_per_s", z, &zadd),
        ("writer_comments_per_redis_cpu_s", wc, &writer_cap),
        ("zadd_p64_ops_per_redis_cpu_s", zc, &zadd_cap),
    ] {
        println!(
            "{name},{m:.0},{:.0},{:.0}",
            v.first().unwrap(),
            v.last().unwrap()
        );
    }
    println!("ratio_writer_over_zadd_p64,{:.2}", w / z.max(1.0));
    println!("ratio_per_redis_cpu_s,{:.2}", wc / zc.max(1.0));
}
