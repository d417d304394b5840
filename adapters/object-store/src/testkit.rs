//! Test fixtures (feature `testkit`): [`S3Server`], moto's S3 API server on a
//! free loopback port with a fresh bucket, killed on drop; or, with
//! `DANMAKU_TEST_S3` set, an external S3 server.

use danmaku_core::ports::ObjectStore;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound and released; a race is unlikely and
/// the caller retries).
fn free_port() -> u16 {
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
    pub fn store(&self, prefix: &str) -> Arc<dyn ObjectStore> {
        crate::open_with_env(
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
