//! The backends of the chaos deployment, each in processes of its own:
//!
//! - [`MockKafka`]: librdkafka's mock cluster (3 brokers) in a child process —
//!   this test binary started again as its `mock_kafka_process` entry — driven
//!   over its stdin (`down N` / `up N`, brokers 1..=3), so a broker can be
//!   stopped and restarted while the `danmaku` nodes use the cluster;
//! - [`AofCluster`]: a 3-master Redis Cluster of `redis-server` processes with
//!   `appendonly yes` and `appendfsync always`, whose masters can be killed
//!   (`kill -9`) and restarted on the same port and directory (their AOF and
//!   `nodes.conf`), so they rejoin the cluster with their data.

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
