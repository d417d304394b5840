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
        if r.port() == 0 {
            return; // external server: nothing to restart
        }
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

// ---- S3 (issue 6: `archive.url = s3://bucket/prefix`) -------------------------

/// Sends one bodiless HTTP/1.1 request to `127.0.0.1:port` and returns the
/// status code (`None` when nothing answers).
fn http_status(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    // "HTTP/1.1 200 OK"
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What to do when moto is missing.
const MOTO_MISSING: &str = "the S3 tests need moto's S3 server: install it with \
    `python3 -m pip install 'moto[server]'` (infra/dev/test.sh does it), or set \
    DANMAKU_TEST_S3 (endpoint URL) and DANMAKU_TEST_S3_BUCKET to use another S3 server";

/// How to start moto's S3 server: `moto_server` when it is on the PATH, else
/// `python3 -m moto.server` (pip may put scripts outside the PATH). Panics with
/// [`MOTO_MISSING`] when neither works. Looked up once per process.
fn moto_command() -> (&'static str, &'static [&'static str]) {
    static FOUND: std::sync::OnceLock<Option<(&'static str, &'static [&'static str])>> =
        std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if works("moto_server", &["--help"]) {
            Some(("moto_server", &[][..]))
        } else if works("python3", &["-c", "import moto.server"]) {
            Some(("python3", &["-m", "moto.server"][..]))
        } else {
            None
        }
    });
    found.unwrap_or_else(|| {
        panic!("neither moto_server nor python3 -m moto.server runs: {MOTO_MISSING}")
    })
}

/// An S3 API server for tests: moto's `moto_server` (`python3 -m pip install
/// 'moto[server]'`; infra/dev/test.sh installs it) on a free loopback port with a
/// fresh bucket, killed on drop. With `DANMAKU_TEST_S3` set (an endpoint URL), the
/// tests use that server instead: the bucket named by `DANMAKU_TEST_S3_BUCKET`
/// must exist, and credentials come from the `AWS_*` environment variables.
///
/// Tests share a bucket on an external server: give each its own prefix
/// ([`S3Server::fresh_prefix`]).
pub struct S3Server {
    child: Option<Child>,
    endpoint: String,
    bucket: String,
    external: bool,
    dir: PathBuf,
}

impl S3Server {
    /// Starts `moto_server` and creates the bucket, or uses `DANMAKU_TEST_S3`.
    /// Panics, saying how to install it, when `moto_server` is missing: a test that
    /// needs S3 never passes without one.
    pub fn start() -> Self {
        if let Ok(endpoint) = std::env::var("DANMAKU_TEST_S3") {
            let bucket = std::env::var("DANMAKU_TEST_S3_BUCKET").expect(
                "DANMAKU_TEST_S3 is set: DANMAKU_TEST_S3_BUCKET must name an existing bucket",
            );
            return Self {
                child: None,
                endpoint: endpoint.trim_end_matches('/').to_string(),
                bucket,
                external: true,
                dir: PathBuf::new(),
            };
        }
        let (program, args) = moto_command();
        let dir = scratch_dir("moto");
        let log = dir.join("moto.log");
        for _ in 0..5 {
            let port = free_port();
            let out = std::fs::File::create(&log).expect("moto log file");
            let err = out.try_clone().expect("moto log file");
            let mut child = match Command::new(program)
                .args(args)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err))
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!("cannot run {program} ({e}): {MOTO_MISSING}"),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited (say, the port was taken meanwhile)
                }
                if http_status(port, "GET", "/") == Some(200) {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            if up {
                let me = Self {
                    child: Some(child),
                    endpoint: format!("http://127.0.0.1:{port}"),
                    bucket: "danmaku-test".into(),
                    external: false,
                    dir,
                };
                let status = http_status(port, "PUT", &format!("/{}", me.bucket));
                assert_eq!(status, Some(200), "moto_server: creating the bucket");
                return me;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        panic!("moto_server did not start ({MOTO_MISSING}); its log:\n{log}");
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket the tests write into.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Whether this is an external server (`DANMAKU_TEST_S3`).
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// A prefix no other test uses: `<name>-<pid>-<random>`.
    pub fn fresh_prefix(name: &str) -> String {
        format!(
            "{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix)
    }

    /// Archive settings pointing at `prefix` of the bucket on this server.
    pub fn settings(&self, prefix: &str) -> danmaku_core::config::ArchiveSettings {
        danmaku_core::config::ArchiveSettings {
            url: self.url(prefix),
            s3_endpoint: self.endpoint.clone(),
            s3_allow_http: self.endpoint.starts_with("http://"),
            ..Default::default()
        }
    }

    /// The `AWS_*` variables a client of this server needs: moto accepts any
    /// credentials, so dummy ones; an external server's come from the process
    /// environment.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        if self.external {
            return std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .collect();
        }
        vec![
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// The object store of `prefix` (the whole bucket when empty), opened through
    /// `archive.url` like the server opens it.
    pub fn store(&self, prefix: &str) -> std::sync::Arc<dyn object_store::ObjectStore> {
        danmaku_core::ports::object_store_with_env(
            &self.settings(prefix),
            std::path::Path::new("."),
            self.aws_env(),
        )
        .expect("open the S3 store")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
        if !self.external {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod s3_tests {
    use super::*;
    use futures::{StreamExt, TryStreamExt};
    use object_store::path::Path as ObjectPath;

    /// The S3 API server answers object_store: put, get, ranged get, list by
    /// prefix and with a delimiter, bulk delete (also of a missing key), and
    /// everything stays under the prefix.
    #[tokio::test]
    async fn s3_server_serves_object_store() {
        let s3 = S3Server::start();
        let prefix = S3Server::fresh_prefix("kit");
        let store = s3.store(&prefix);
        let a = ObjectPath::from("date=2025-11-24/hour=16/part-1.parquet");
        let b = ObjectPath::from("date=2025-11-24/hour=16/part-2.parquet");
        store.put(&a, b"hello".to_vec().into()).await.unwrap();
        store.put(&b, b"world!".to_vec().into()).await.unwrap();
        store.put(&a, b"HELLO".to_vec().into()).await.unwrap();
        let got = store.get(&a).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"HELLO");
        assert_eq!(&store.get_range(&b, 1..4).await.unwrap()[..], b"orl");
        assert_eq!(store.head(&b).await.unwrap().size, 6);
        let dir = ObjectPath::from("date=2025-11-24/hour=16");
        let listed = store.list_with_delimiter(Some(&dir)).await.unwrap();
        let mut names: Vec<String> = listed
            .objects
            .iter()
            .map(|m| m.location.to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec![a.to_string(), b.to_string()]);
        let empty = ObjectPath::from("date=2020-01-01/hour=00");
        assert!(store
            .list_with_delimiter(Some(&empty))
            .await
            .unwrap()
            .objects
            .is_empty());
        let whole = s3.store("");
        let all: Vec<_> = whole
            .list(Some(&ObjectPath::from(prefix.as_str())))
            .try_collect()
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
        assert!(all
            .iter()
            .all(|m| m.location.as_ref().starts_with(&format!("{prefix}/date="))));
        let missing = ObjectPath::from("date=2025-11-24/hour=16/none.parquet");
        let deleted: Vec<_> = store
            .delete_stream(futures::stream::iter(vec![Ok(a.clone()), Ok(b), Ok(missing)]).boxed())
            .collect()
            .await;
        assert!(deleted.iter().all(|r| r.is_ok()), "{deleted:?}");
        assert!(matches!(
            store.get(&a).await,
            Err(object_store::Error::NotFound { .. })
        ));
        assert!(store
            .list(None)
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .is_empty());
    }
}
