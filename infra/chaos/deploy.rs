//! The backends of the chaos deployment, each in processes of its own:
//!
//! - [`MockKafka`]: librdkafka's mock cluster (3 brokers) in a child process —
//!   this test binary started again as its `mock_kafka_process` entry — driven
//!   over its stdin (`down N` / `up N`, brokers 1..=3), so a broker can be
//!   stopped and restarted while the `danmaku` nodes use the cluster;
//! - [`AofCluster`]: a 3-master Redis Cluster of `redis-server` processes with
//!   `appendonly yes` and `appendfsync always`, whose masters can be killed
//!   (`kill -9`) and restarted on the same port and directory (their AOF and
//!   `nodes.conf`), so they rejoin the cluster with their data;
//! - [`UidNode`] and [`Partition`]: a `danmaku` node run as another uid, and
//!   iptables rules that drop that uid's packets to the Redis ports (a
//!   partition between that node and Redis, when running as root).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that turns the `mock_kafka_process` entry into
/// the mock cluster: `TOPIC:PARTITIONS`.
pub const MOCK_ENV: &str = "CHAOS_MOCK_KAFKA";

/// The mock cluster's process.
pub struct MockKafka {
    child: Child,
    stdin: ChildStdin,
    acks: std::sync::mpsc::Receiver<String>,
    /// Bootstrap servers, as the child printed them.
    pub brokers: String,
}

impl MockKafka {
    /// Starts this test binary again as the mock cluster with `topic`
    /// (`partitions` partitions, replicated on the 3 brokers).
    pub fn start(topic: &str, partitions: i32) -> Self {
        let exe = std::env::current_exe().expect("current test binary");
        let mut child = Command::new(exe)
            .args(["mock_kafka_process", "--exact", "--nocapture"])
            .env(MOCK_ENV, format!("{topic}:{partitions}"))
            .env_remove("DANMAKU_TEST_KAFKA")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the mock Kafka process");
        let stdin = child.stdin.take().expect("mock stdin");
        let stdout = child.stdout.take().expect("mock stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let brokers = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(b) = line.trim().strip_prefix("bootstrap=") {
                        break b.to_string();
                    }
                }
                Err(_) => panic!("the mock Kafka process printed no bootstrap= line"),
            }
        };
        Self {
            child,
            stdin,
            acks: rx,
            brokers,
        }
    }

    fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to the mock Kafka process");
        self.stdin.flush().expect("flush the mock Kafka stdin");
        let want = format!("ok {cmd}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(line) if line.trim() == want => return,
                Ok(_) => continue,
                Err(_) => panic!("the mock Kafka process did not confirm {cmd:?}"),
            }
        }
    }

    /// Stops broker `id` (1..=3): its connections are dropped and refused.
    pub fn broker_down(&mut self, id: i32) {
        self.command(&format!("down {id}"));
    }

    /// Starts broker `id` again.
    pub fn broker_up(&mut self, id: i32) {
        self.command(&format!("up {id}"));
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of the `mock_kafka_process` entry when [`MOCK_ENV`] is set: runs
/// the mock cluster, answers `down N` / `up N` on stdin with `ok <command>` on
/// stdout, and exits when stdin closes (the suite went away).
pub fn serve_mock(spec: &str) {
    let (topic, partitions) = spec.split_once(':').expect("TOPIC:PARTITIONS");
    let partitions: i32 = partitions.parse().expect("partition count");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let kafka = danmaku_kafka::TestKafka::start();
    rt.block_on(kafka.create_topic(topic, partitions));
    println!("bootstrap={}", kafka.brokers());
    let _ = std::io::stdout().flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|w| w.parse::<i32>().ok()),
        ) {
            (Some("down"), Some(id)) => kafka.broker_down(id),
            (Some("up"), Some(id)) => kafka.broker_up(id),
            _ => continue,
        }
        println!("ok {}", line.trim());
        let _ = std::io::stdout().flush();
    }
    std::process::exit(0);
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn ping(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

/// A 3-master Redis Cluster with the append-only file on (`always`).
pub struct AofCluster {
    nodes: Vec<(u16, PathBuf, Option<Child>)>,
}

fn spawn_node(port: u16, dir: &Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--protected-mode", "no", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", "2000"])
        .args(["--maxmemory-policy", "noeviction"])
        .args(["--dir", &dir.display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (infra/dev/test.sh installs it)")
}

fn cluster_ok(port: u16) -> bool {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "cluster", "info"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        .unwrap_or(false)
}

impl AofCluster {
    /// Starts `n` masters under `dir` and creates the cluster.
    pub fn start(dir: &Path, n: usize) -> Self {
        let mut nodes = Vec::new();
        for i in 0..n {
            let port = free_port();
            let node_dir = dir.join(format!("redis{i}"));
            std::fs::create_dir_all(&node_dir).expect("redis dir");
            let child = spawn_node(port, &node_dir);
            nodes.push((port, node_dir, Some(child)));
        }
        let me = Self { nodes };
        for (port, _, _) in &me.nodes {
            me.wait_ping(*port);
        }
        let addrs: Vec<String> = me
            .nodes
            .iter()
            .map(|(p, _, _)| format!("127.0.0.1:{p}"))
            .collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli is installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        me.wait_ok(Duration::from_secs(30));
        me
    }

    fn wait_ping(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ping(port) {
            assert!(
                Instant::now() < deadline,
                "redis-server :{port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every node says `cluster_state:ok`.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.nodes.iter().all(|(p, _, _)| cluster_ok(*p)) {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node URLs for `redis.cluster`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _, _)| format!("redis://127.0.0.1:{p}/"))
            .collect()
    }

    /// `kill -9` of master `i` (its AOF is fsynced on every write).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].2.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts master `i` again on its port and directory (AOF, nodes.conf).
    pub fn start_node(&mut self, i: usize) {
        let (port, dir, _) = &self.nodes[i];
        let child = spawn_node(*port, dir);
        let port = *port;
        self.nodes[i].2 = Some(child);
        self.wait_ping(port);
    }
}

impl Drop for AofCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The uid the partitionable live node runs as: a partition is an iptables
/// rule dropping that uid's packets to the Redis ports on loopback.
pub const PARTITION_UID: u32 = 65534;

/// Why a partition cannot be made here, or None when it can: it needs root,
/// `iptables` that answers, and `setpriv` (to run the node as another uid).
/// `CHAOS_PARTITION=0` turns it off.
pub fn partition_unavailable() -> Option<String> {
    if std::env::var("CHAOS_PARTITION").as_deref() == Ok("0") {
        return Some("turned off (CHAOS_PARTITION=0)".into());
    }
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        return Some(format!("not running as root (uid {uid})"));
    }
    let works = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !works("iptables", &["-L", "OUTPUT", "-n"]) {
        return Some("iptables is missing or not permitted".into());
    }
    if !works("setpriv", &["--version"]) {
        return Some("setpriv is missing".into());
    }
    None
}

/// iptables rules that drop [`PARTITION_UID`]'s packets to the given ports on
/// loopback (the Redis masters): a partition between that node and Redis.
/// Dropped (not refused), like a network that lost its route; removed on
/// [`Partition::heal`] or drop.
pub struct Partition {
    ports: Vec<u16>,
}

fn rule(op: &str, port: u16) -> bool {
    Command::new("iptables")
        .args([
            op,
            "OUTPUT",
            "-o",
            "lo",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
        ])
        .args([
            "-m",
            "owner",
            "--uid-owner",
            &PARTITION_UID.to_string(),
            "-j",
            "DROP",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Partition {
    /// Adds the rules.
    pub fn cut(ports: &[u16]) -> Self {
        let mut me = Self { ports: Vec::new() };
        for &p in ports {
            assert!(rule("-A", p), "iptables -A for port {p} failed");
            me.ports.push(p);
        }
        me
    }

    /// Removes the rules.
    pub fn heal(&mut self) {
        for p in std::mem::take(&mut self.ports) {
            while rule("-D", p) {}
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.heal();
    }
}

impl AofCluster {
    /// The masters' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|(p, _, _)| *p).collect()
    }
}

impl Drop for UidNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
            // The whole log, for the analysis of a failure.
            let _ = std::fs::write("target/chaos-uid-node.log", &log);
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "---- danmaku server log of the uid {PARTITION_UID} node, last 80 lines (all of it in target/chaos-uid-node.log) ----\n{}\n---- end of log ----",
                lines[lines.len().saturating_sub(80)..].join("\n")
            );
        }
    }
}

/// A `danmaku serve` process run as [`PARTITION_UID`] (through `setpriv`),
/// with its own data dir; killed on drop.
pub struct UidNode {
    /// Killed when dropped (`kill_on_drop`).
    _child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Its stderr.
    pub log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl UidNode {
    /// Starts the binary with `env` (plus `RUST_LOG=info`, no inherited
    /// `DANMAKU_*`) and waits for its `listening on` line.
    pub async fn start(env: &[(String, String)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::Builder::new()
            .prefix("danmaku-chaos-uid-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        for p in [dir.path(), data.as_path()] {
            std::os::unix::fs::chown(p, Some(PARTITION_UID), Some(PARTITION_UID))
                .expect("chown the data dir");
        }
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = tokio::process::Command::new("setpriv");
        let id = PARTITION_UID.to_string();
        cmd.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
            .arg(crate::helpers::BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DANMAKU_") {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                "info,danmaku_live::resync=debug,danmaku_live::notices=debug",
            );
        let mut child = cmd.spawn().expect("setpriv danmaku serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.trim().strip_prefix("listening on ") {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the node run as uid {id} did not start:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            base_url: url,
            log_path,
            _dir: dir,
        }
    }
}
