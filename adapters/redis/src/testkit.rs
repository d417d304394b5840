//! Test harness for the adapters' tests: real servers on free loopback ports,
//! started here and stopped (killed) on drop. `DANMAKU_TEST_REDIS` (a URL) makes
//! [`RedisServer::start`] use an external server instead, and
//! `DANMAKU_TEST_REDIS_CLUSTER` (comma-separated node URLs) does the same for
//! [`RedisCluster::start`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; a race is unlikely and
/// the callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "danmaku-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Sends `PING` over RESP and waits for `+PONG`.
fn redis_ping(port: u16) -> bool {
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

fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> std::io::Result<Child> {
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
    ])
    .args(["--dir", &dir.display().to_string()])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd.spawn()
}

fn wait_ping(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if redis_ping(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A standalone `redis-server` (from the OS packages) on a free loopback port.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    external: Option<String>,
    /// Extra `redis-server` arguments, kept for restarts.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server, or uses `DANMAKU_TEST_REDIS` when set.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (they override the
    /// defaults, e.g. `["--appendonly", "yes", "--appendfsync", "always"]` for a
    /// durable one), or uses `DANMAKU_TEST_REDIS` when set.
    pub fn start_with(args: &[&str]) -> Self {
        let extra: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if let Ok(url) = std::env::var("DANMAKU_TEST_REDIS") {
            return Self {
                child: None,
                port: 0,
                dir: PathBuf::new(),
                external: Some(url),
                extra,
            };
        }
        let dir = scratch_dir("redis");
        for _ in 0..5 {
            let port = free_port();
            let child = spawn_redis(port, &dir, args)
                .expect("redis-server is installed (infra/dev/test.sh installs it)");
            let mut me = Self {
                child: Some(child),
                port,
                dir: dir.clone(),
                external: None,
                extra: extra.clone(),
            };
            if wait_ping(port) {
                return me;
            }
            me.kill();
        }
        panic!("redis-server did not start");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        self.external
            .clone()
            .unwrap_or_else(|| format!("redis://127.0.0.1:{}/", self.port))
    }

    /// The port (0 for an external server).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Fails the calling test when the server is an external one
    /// (`DANMAKU_TEST_REDIS`): for tests that kill or restart their Redis, which
    /// must fail rather than pass having run nothing.
    pub fn assert_local(&self) {
        assert!(
            self.external.is_none(),
            "this test kills or restarts its Redis: run it without DANMAKU_TEST_REDIS"
        );
    }

    /// Kills the server (a crash: nothing is saved).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory: empty by default (no
    /// persistence); with the data of its append-only file if started with one.
    pub fn restart(&mut self) {
        assert!(self.external.is_none(), "cannot restart an external server");
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let child = spawn_redis(self.port, &self.dir, &extra).expect("redis-server restarts");
        self.child = Some(child);
        assert!(wait_ping(self.port), "redis-server did not come back");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if self.external.is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A Redis Cluster of `n` masters (no replicas) on free loopback ports.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    dir: PathBuf,
    external: Option<Vec<String>>,
}

impl RedisCluster {
    /// Starts the cluster (and waits for `cluster_state:ok`), or uses
    /// `DANMAKU_TEST_REDIS_CLUSTER` when set.
    pub fn start(n: usize) -> Self {
        if let Ok(urls) = std::env::var("DANMAKU_TEST_REDIS_CLUSTER") {
            return Self {
                nodes: Vec::new(),
                dir: PathBuf::new(),
                external: Some(urls.split(',').map(str::to_string).collect()),
            };
        }
        let dir = scratch_dir("redis-cluster");
        let mut nodes = Vec::new();
        for i in 0..n {
            let port = free_port();
            let node_dir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let child = spawn_redis(
                port,
                &node_dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
            .expect("redis-server is installed");
            nodes.push((port, Some(child)));
        }
        let me = Self {
            nodes,
            dir,
            external: None,
        };
        for (port, _) in &me.nodes {
            assert!(wait_ping(*port), "cluster node did not start");
        }
        let addrs: Vec<String> = me
            .nodes
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = me.nodes.iter().all(|(p, _)| {
                Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            });
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "cluster did not reach cluster_state:ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// The node URLs, `redis://127.0.0.1:<port>/`.
    pub fn urls(&self) -> Vec<String> {
        match &self.external {
            Some(u) => u.clone(),
            None => self
                .nodes
                .iter()
                .map(|(p, _)| format!("redis://127.0.0.1:{p}/"))
                .collect(),
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            if let Some(mut c) = c.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if self.external.is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_server_starts_and_restarts() {
        let mut r = RedisServer::start();
        r.assert_local();
        assert!(redis_ping(r.port()));
        r.restart();
        assert!(redis_ping(r.port()));
    }

    #[test]
    fn redis_cluster_forms() {
        let c = RedisCluster::start(3);
        assert_eq!(c.urls().len(), 3);
    }
}
