//! Checks of the deployment artifacts (issue 17), none of which needs a Docker
//! engine, a Kubernetes cluster or the network:
//!
//! - the `Dockerfile` and `.dockerignore`, parsed: a release build stage, a
//!   slim runtime stage running as a non-root user, a `HEALTHCHECK` on
//!   `/healthz`, `EXPOSE` = the default port, the data dir a volume, every
//!   `COPY` source present and not ignored;
//! - `infra/compose/compose.yaml` against the rules of the compose spec that
//!   can be checked offline (images or builds, `depends_on` targets, declared
//!   volumes, bind-mount sources) and against the project (the roles and their
//!   counts, the topic's settings from docs/OPERATIONS.md, the Redis Cluster,
//!   every `DANMAKU_<SECTION>__<KEY>` a key of docs/CONFIGURATION.md); with the
//!   compose plugin installed, `docker compose config -q` too;
//! - the nginx routing (compose and the Kubernetes gateway alike);
//! - the kustomize base and overlay: kinds and required fields, probes,
//!   resources, grace periods, PDBs, HPAs, Services and the names they refer to;
//! - the Grafana dashboards and Prometheus rules: a debug server is started,
//!   driven a little (a guest token, a send, a poll, a WebSocket, a VOD and its
//!   replay) and scraped; every metric a dashboard or rule names must be in the
//!   scrape, or in [`NOT_IN_A_FRESH_EMBEDDED_SCRAPE`] with the reason and
//!   present in the source;
//! - with Debian's `prometheus` package (`#[ignore]` otherwise): `promtool
//!   check` and `promtool test rules`, and a real Prometheus scraping a node;
//! - with Debian's `nginx-light` (`#[ignore]` otherwise): the proxy's config
//!   run by a real nginx, each request reaching the role it belongs to (stub
//!   upstreams), and a WebSocket and a send through it to a running node.

#[path = "e2e/helpers.rs"]
mod helpers;

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Shared helpers: files, YAML, the configuration reference.
// ---------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every YAML document of a file, aliases expanded and merge keys (`<<`)
/// applied, as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    docs.iter()
        .map(|d| to_json(d, rel))
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_doc(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel}: expected one YAML document");
    docs.remove(0)
}

fn to_json(y: &yaml_rust2::Yaml, rel: &str) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => json!(r
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{rel}: bad float {r}"))),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(a) => Value::Array(a.iter().map(|v| to_json(v, rel)).collect()),
        Yaml::Hash(h) => {
            let mut explicit = Map::new();
            let mut merged = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("{rel}: unsupported mapping key {other:?}"),
                };
                let value = to_json(v, rel);
                if key == "<<" {
                    let sources = match value {
                        Value::Array(list) => list,
                        one => vec![one],
                    };
                    for source in sources {
                        let Value::Object(m) = source else {
                            panic!("{rel}: a merge key (<<) must name mappings");
                        };
                        for (k, v) in m {
                            merged.entry(k).or_insert(v);
                        }
                    }
                } else {
                    explicit.insert(key, value);
                }
            }
            for (k, v) in merged {
                explicit.entry(k).or_insert(v);
            }
            Value::Object(explicit)
        }
        Yaml::Alias(_) | Yaml::BadValue => panic!("{rel}: unresolved YAML node {y:?}"),
    }
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// A scalar as the string a container would see (compose and Kubernetes pass
/// numbers and booleans as their text).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The configuration keys documented in docs/CONFIGURATION.md (`section.key`)
/// with their default column. core/tests/configuration_doc.rs keeps that file
/// equal to the settings struct.
fn config_keys() -> BTreeMap<String, String> {
    let doc = read("docs/CONFIGURATION.md");
    let mut keys = BTreeMap::new();
    for line in doc.lines() {
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let Some(end) = rest.find('`') else { continue };
        let key = &rest[..end];
        if !key.contains('.') {
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let default = cells
            .get(2)
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        keys.insert(key.to_string(), default);
    }
    assert!(
        keys.len() > 50,
        "found only {} keys in CONFIGURATION.md",
        keys.len()
    );
    keys
}

/// `DANMAKU_<SECTION>__<KEY>` -> `section.key` (CONFIGURATION.md, "Where
/// settings come from"); `None` for a variable that is not a setting.
fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix("DANMAKU_")?;
    let (section, key) = rest.split_once("__")?;
    Some(format!("{}.{}", section.to_lowercase(), key.to_lowercase()))
}

/// Fails unless every `DANMAKU_*` variable is a real setting.
fn check_env_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    keys: &BTreeMap<String, String>,
    what: &str,
) {
    for name in names {
        if !name.starts_with("DANMAKU_") {
            continue;
        }
        assert_ne!(
            name, "DANMAKU_CONFIG",
            "{what}: use DANMAKU_<SECTION>__<KEY> variables"
        );
        let key = env_key(name).unwrap_or_else(|| {
            panic!("{what}: {name} has no `__`; the server refuses such a DANMAKU_ variable")
        });
        assert!(
            keys.contains_key(&key),
            "{what}: {name} is not a configuration key ({key} is not in docs/CONFIGURATION.md)"
        );
    }
}

/// The default value of a key, without TOML quotes.
fn default_of(keys: &BTreeMap<String, String>, key: &str) -> String {
    let cell = keys
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from CONFIGURATION.md"));
    cell.trim_matches('`').trim_matches('"').to_string()
}

fn default_port(keys: &BTreeMap<String, String>) -> u16 {
    let listen = default_of(keys, "server.listen");
    listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .expect("server.listen default port")
}

fn shutdown_grace_secs(keys: &BTreeMap<String, String>) -> u64 {
    default_of(keys, "server.shutdown_grace_secs")
        .parse()
        .expect("server.shutdown_grace_secs default")
}

/// Parses `1.95`-style versions for comparison.
fn version(v: &str) -> (u32, u32) {
    let mut parts = v.trim_matches('"').split('.');
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

/// One instruction: keyword (upper case) and its arguments (continuations joined).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if !current.is_empty() && trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((keyword.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    assert!(
        current.is_empty(),
        "Dockerfile ends inside a continued instruction"
    );
    out
}

/// Whether `.dockerignore` excludes `path` (a repository-relative path): the
/// subset of its syntax used there (directory prefixes, `**/` for any depth,
/// exact names, `*.ext`).
fn docker_ignored(patterns: &[String], path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for p in patterns {
        let (negate, p) = match p.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, p.as_str()),
        };
        let p = p.trim_end_matches('/');
        let matched = if let Some(tail) = p.strip_prefix("**/") {
            parts.iter().any(|c| glob_component(tail, c))
                || (0..parts.len()).any(|i| glob_path(tail, &parts[i..].join("/")))
        } else {
            (1..=parts.len()).any(|n| glob_path(p, &parts[..n].join("/")))
        };
        if matched {
            ignored = !negate;
        }
    }
    ignored
}

fn glob_path(pattern: &str, path: &str) -> bool {
    let pp: Vec<&str> = pattern.split('/').collect();
    let cp: Vec<&str> = path.split('/').collect();
    pp.len() == cp.len() && pp.iter().zip(&cp).all(|(p, c)| glob_component(p, c))
}

fn glob_component(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, post)) => {
            name.len() >= pre.len() + post.len() && name.starts_with(pre) && name.ends_with(post)
        }
    }
}

/// Flags (`--from=x`, `--chown=...`) and the remaining words of a COPY/ADD.
fn split_flags(args: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut flags = BTreeMap::new();
    let mut words = Vec::new();
    if args.trim_start().starts_with('[') {
        let list: Vec<String> = serde_json::from_str(args).expect("JSON form of COPY");
        return (flags, list);
    }
    for w in args.split_whitespace() {
        if let Some(flag) = w.strip_prefix("--") {
            let (k, v) = flag.split_once('=').unwrap_or((flag, ""));
            flags.insert(k.to_string(), v.to_string());
        } else {
            words.push(w.to_string());
        }
    }
    (flags, words)
}

/// The files `include_str!`, `include_bytes!` and `include!` pull into a
/// crate's sources (`crate_dir` relative to the repository; "" is the root
/// package), as repository-relative paths, following included `.rs` files.
fn included_files(crate_dir: &str, out: &mut Vec<String>) {
    fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                rs_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = repo().join(crate_dir);
    let mut queue = Vec::new();
    rs_files(&root.join("src"), &mut queue);
    let mut seen = HashSet::new();
    while let Some(file) = queue.pop() {
        if !seen.insert(file.clone()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for mac in ["include_str!(", "include_bytes!(", "include!("] {
            for (at, _) in text.match_indices(mac) {
                // The macro's arguments: up to its closing parenthesis.
                let rest = &text[at + mac.len()..];
                let (mut depth, mut in_str, mut end) = (1, false, rest.len());
                for (i, c) in rest.char_indices() {
                    match c {
                        '"' => in_str = !in_str,
                        '(' if !in_str => depth += 1,
                        ')' if !in_str => {
                            depth -= 1;
                            if depth == 0 {
                                end = i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let args = &rest[..end];
                let literal: String = args
                    .split('"')
                    .skip(1)
                    .step_by(2)
                    .filter(|l| *l != "CARGO_MANIFEST_DIR")
                    .collect();
                if literal.is_empty() {
                    continue;
                }
                let path = if args.contains("CARGO_MANIFEST_DIR") {
                    root.join(literal.trim_start_matches('/'))
                } else {
                    file.parent().unwrap().join(&literal)
                };
                let path = PathBuf::from(normalize(&path.to_string_lossy()));
                let path = if path.is_absolute() {
                    path
                } else {
                    PathBuf::from("/").join(path)
                };
                let rel = path
                    .strip_prefix(repo())
                    .unwrap_or_else(|_| {
                        panic!(
                            "{}: includes {} from outside the repository",
                            file.display(),
                            path.display()
                        )
                    })
                    .to_string_lossy()
                    .to_string();
                if path.extension().is_some_and(|x| x == "rs") {
                    queue.push(path.clone());
                }
                out.push(rel);
            }
        }
    }
}

/// A build stage: its name, its base image and its instructions.
type Stage = (String, String, Vec<(String, String)>);

#[test]
fn dockerfile_builds_release_and_runs_unprivileged() {
    let keys = config_keys();
    let text = read("Dockerfile");
    let instructions = dockerfile_instructions(&text);
    let ignore: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();

    // ARG defaults before the first FROM (for the toolchain version).
    let mut args = BTreeMap::new();
    for (k, a) in &instructions {
        if k == "FROM" {
            break;
        }
        if k == "ARG" {
            if let Some((name, value)) = a.split_once('=') {
                args.insert(name.to_string(), value.to_string());
            }
        }
    }

    // Stages: (name, base image, its instructions).
    let mut stages: Vec<Stage> = Vec::new();
    for (k, a) in &instructions {
        if k == "FROM" {
            let words: Vec<&str> = a
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                [_] => stages.len().to_string(),
                other => panic!("FROM {other:?}"),
            };
            stages.push((name, words[0].to_string(), Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.2.push((k.clone(), a.clone()));
        }
    }
    assert!(
        stages.len() >= 2,
        "a multi-stage build: {} stage(s)",
        stages.len()
    );

    // The build stage: a release build of the danmaku binary from the locked sources.
    let (_, builder_base, builder) = &stages[0];
    assert!(
        builder_base.starts_with("rust:"),
        "the first stage builds with the rust image, not {builder_base}"
    );
    let build = builder
        .iter()
        .find(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .expect("a RUN cargo build in the first stage");
    for needed in ["--release", "--locked", "danmaku"] {
        assert!(
            build.1.contains(needed),
            "cargo build without {needed}: {}",
            build.1
        );
    }
    let rust_version = args
        .get("RUST_VERSION")
        .expect("ARG RUST_VERSION=<toolchain>");
    let workspace_msrv = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = ").map(str::to_string))
        .expect("workspace rust-version");
    assert!(
        version(rust_version) >= version(&workspace_msrv),
        "RUST_VERSION {rust_version} below the workspace's {workspace_msrv}"
    );

    // COPY sources: in the context and not ignored; --from names an earlier stage.
    for (i, (_, _, body)) in stages.iter().enumerate() {
        for (k, a) in body {
            if k != "COPY" && k != "ADD" {
                continue;
            }
            let (flags, words) = split_flags(a);
            assert!(words.len() >= 2, "{k} {a}: sources and a destination");
            let sources = &words[..words.len() - 1];
            if let Some(from) = flags.get("from") {
                assert!(
                    stages[..i].iter().any(|(n, _, _)| n == from),
                    "{k} --from={from}: no earlier stage of that name"
                );
                continue;
            }
            for src in sources {
                let rel = src.trim_start_matches("./");
                let path = repo().join(rel);
                assert!(path.exists(), "{k} {src}: not in the build context");
                if rel != "." && !rel.is_empty() {
                    assert!(
                        !docker_ignored(&ignore, rel),
                        "{k} {src}: excluded by .dockerignore"
                    );
                }
            }
        }
    }
    // What the build reads must reach the context: the manifests, the lockfile,
    // every workspace member and the files sources include from elsewhere.
    let mut needed: Vec<String> = ["Cargo.toml", "Cargo.lock", "src/main.rs"]
        .iter()
        .map(|p| p.to_string())
        .collect();
    let root_manifest = read("Cargo.toml");
    let members: Vec<String> = root_manifest
        .split("members = [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .expect("workspace members")
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    needed.extend(members.iter().map(|m| format!("{m}/Cargo.toml")));
    // Files the sources include from elsewhere (the CQL schema, the pages).
    for crate_dir in std::iter::once(String::new()).chain(members.iter().cloned()) {
        included_files(&crate_dir, &mut needed);
    }
    assert!(
        needed.iter().any(|p| p == "infra/cql/schema.cql"),
        "the include scan found the CQL schema: {needed:?}"
    );
    for path in &needed {
        assert!(
            repo().join(path).exists(),
            "{path} missing from the repository"
        );
        assert!(
            !docker_ignored(&ignore, path),
            ".dockerignore excludes {path}, which the build needs"
        );
    }
    for excluded in [
        "target/release/danmaku",
        ".git/HEAD",
        "web/node_modules/x",
        "fuzz/target/x",
    ] {
        assert!(
            docker_ignored(&ignore, excluded),
            ".dockerignore must exclude {excluded}"
        );
    }

    // The runtime stage.
    let (_, runtime_base, runtime) = stages.last().unwrap();
    assert!(
        runtime_base.contains("slim") || runtime_base.contains("distroless"),
        "a small runtime image, not {runtime_base}"
    );
    let last = |kw: &str| {
        runtime
            .iter()
            .rev()
            .find(|(k, _)| k == kw)
            .map(|(_, a)| a.clone())
    };
    let user = last("USER").expect("USER in the runtime stage");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid != "root" && uid != "0",
        "the runtime user must not be root: {user}"
    );
    let health = last("HEALTHCHECK").expect("HEALTHCHECK in the runtime stage");
    assert!(
        health.contains("/healthz"),
        "HEALTHCHECK must ask /healthz: {health}"
    );

    let mut env = BTreeMap::new();
    for (k, a) in runtime.iter().filter(|(k, _)| k == "ENV") {
        let _ = k;
        for pair in a.split_whitespace() {
            let (name, value) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {pair}: use NAME=value"));
            env.insert(name.to_string(), value.to_string());
        }
    }
    check_env_names(env.keys().map(String::as_str), &keys, "Dockerfile");
    let listen = env
        .get("DANMAKU_SERVER__LISTEN")
        .expect("ENV DANMAKU_SERVER__LISTEN (the default listens on loopback only)");
    assert!(
        listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:"),
        "listen on every interface: {listen}"
    );
    let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        port,
        default_port(&keys),
        "the image listens on the default port"
    );
    let expose = last("EXPOSE").expect("EXPOSE");
    assert_eq!(
        expose.split('/').next().unwrap().trim(),
        port.to_string(),
        "EXPOSE the port the server listens on"
    );
    assert!(
        health.contains(&format!(":{port}/")),
        "HEALTHCHECK on the listening port: {health}"
    );
    let data_dir = env
        .get("DANMAKU_SERVER__DATA_DIR")
        .expect("ENV DANMAKU_SERVER__DATA_DIR");
    let volume = last("VOLUME").expect("the data dir a VOLUME");
    assert!(
        volume.contains(data_dir.as_str()),
        "VOLUME {volume} must hold the data dir {data_dir}"
    );
    let entry = last("ENTRYPOINT").expect("ENTRYPOINT");
    assert!(
        entry.contains("danmaku"),
        "ENTRYPOINT runs danmaku: {entry}"
    );
}

// ---------------------------------------------------------------------------
// Compose
// ---------------------------------------------------------------------------

const COMPOSE: &str = "infra/compose/compose.yaml";

fn compose() -> Value {
    yaml_doc(COMPOSE)
}

/// A service's environment as name -> value (map or `NAME=value` list).
fn service_env(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    match service.get("environment") {
        None => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                env.insert(k.clone(), scalar(v));
            }
        }
        Some(Value::Array(list)) => {
            for item in list {
                let item = s(item, "environment entry");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                env.insert(k.to_string(), v.to_string());
            }
        }
        Some(other) => panic!("environment must be a map or a list: {other}"),
    }
    env
}

/// A service's `command`/`entrypoint` as one string.
fn service_cmd(service: &Value) -> String {
    ["entrypoint", "command"]
        .iter()
        .filter_map(|k| service.get(*k))
        .map(|v| match v {
            Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>().join(" "),
            other => scalar(other),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Roles a service runs: from `DANMAKU_SERVER__ROLES` (a TOML array).
fn service_roles(service: &Value) -> Vec<String> {
    let env = service_env(service);
    let Some(roles) = env.get("DANMAKU_SERVER__ROLES") else {
        return Vec::new();
    };
    let parsed: Vec<String> = serde_json::from_str(roles)
        .unwrap_or_else(|_| panic!("DANMAKU_SERVER__ROLES {roles}: a TOML array of strings"));
    parsed
}

/// Compose durations (`150s`, `2m`, `1m30s`) in seconds.
fn duration_secs(d: &str) -> u64 {
    let mut total = 0;
    let mut n = String::new();
    for c in d.chars() {
        if c.is_ascii_digit() {
            n.push(c);
        } else {
            let v: u64 = n.parse().unwrap_or_else(|_| panic!("duration {d}"));
            total += match c {
                's' => v,
                'm' => v * 60,
                'h' => v * 3600,
                _ => panic!("duration {d}"),
            };
            n.clear();
        }
    }
    assert!(n.is_empty(), "duration {d} needs a unit");
    total
}

/// The `kafka-topics.sh --create` settings of docs/OPERATIONS.md: flags and
/// `--config` values.
fn documented_topic_settings() -> Vec<String> {
    let ops = read("docs/OPERATIONS.md");
    let start = ops
        .find("kafka-topics.sh")
        .expect("OPERATIONS.md creates the topic with kafka-topics.sh");
    let block = &ops[start..ops[start..].find("```").map(|e| start + e).unwrap()];
    let words: Vec<&str> = block.split_whitespace().filter(|w| *w != "\\").collect();
    let mut settings = Vec::new();
    for (i, w) in words.iter().enumerate() {
        match *w {
            "--partitions" | "--replication-factor" => {
                settings.push(format!("{w} {}", words[i + 1]))
            }
            "--config" => settings.push(words[i + 1].to_string()),
            "--topic" => settings.push(format!("--topic {}", words[i + 1])),
            _ => {}
        }
    }
    assert!(
        settings.len() >= 5,
        "topic settings in OPERATIONS.md: {settings:?}"
    );
    settings
}

#[test]
fn compose_deployment_is_consistent() {
    let keys = config_keys();
    let doc = compose();
    let dir = repo().join("infra/compose");
    let services = doc["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let volumes: BTreeSet<String> = doc
        .get("volumes")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let networks: BTreeSet<String> = doc
        .get("networks")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let our_image_has_healthcheck = read("Dockerfile").contains("HEALTHCHECK");

    for (name, svc) in services {
        let what = format!("{COMPOSE}: service {name}");
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "{what}: neither image nor build"
        );
        if let Some(build) = svc.get("build") {
            let (context, dockerfile) = match build {
                Value::String(c) => (c.clone(), "Dockerfile".to_string()),
                b => (
                    s(&b["context"], "build.context").to_string(),
                    b.get("dockerfile")
                        .map(|d| s(d, "build.dockerfile").to_string())
                        .unwrap_or("Dockerfile".into()),
                ),
            };
            let ctx = dir.join(&context);
            assert!(
                ctx.is_dir(),
                "{what}: build context {context} is not a directory"
            );
            assert!(
                ctx.join(&dockerfile).is_file(),
                "{what}: {dockerfile} not found in {context}"
            );
        }
        // depends_on: existing services, known conditions, healthy only with a healthcheck.
        let deps: Vec<(String, String)> = match svc.get("depends_on") {
            None => Vec::new(),
            Some(Value::Array(list)) => list
                .iter()
                .map(|d| (s(d, "depends_on").to_string(), "service_started".into()))
                .collect(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.get("condition")
                            .map(|c| s(c, "condition").to_string())
                            .unwrap_or("service_started".into()),
                    )
                })
                .collect(),
            Some(other) => panic!("{what}: depends_on {other}"),
        };
        for (dep, condition) in deps {
            let target = services
                .get(&dep)
                .unwrap_or_else(|| panic!("{what}: depends_on {dep}, which is not a service"));
            assert_ne!(dep, *name, "{what}: depends on itself");
            match condition.as_str() {
                "service_started" => {}
                "service_healthy" => {
                    let built_here = target.get("build").is_some()
                        || target.get("image").and_then(Value::as_str) == Some("danmaku:local");
                    assert!(
                        target.get("healthcheck").is_some()
                            || (built_here && our_image_has_healthcheck),
                        "{what}: waits for {dep} to be healthy, which has no healthcheck"
                    );
                }
                "service_completed_successfully" => {
                    let restart = target.get("restart").map(scalar).unwrap_or_default();
                    assert!(
                        restart == "no" || restart.is_empty(),
                        "{what}: waits for one-shot {dep} to complete, but it restarts ({restart})"
                    );
                }
                other => panic!("{what}: unknown depends_on condition {other}"),
            }
        }
        // Volumes: named ones declared, bind mounts present.
        for v in svc
            .get("volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (source, target) = match v {
                Value::String(spec) => {
                    let mut parts = spec.split(':');
                    (
                        parts.next().unwrap().to_string(),
                        parts.next().unwrap_or("").to_string(),
                    )
                }
                m => (scalar(&m["source"]), scalar(&m["target"])),
            };
            assert!(
                target.starts_with('/'),
                "{what}: volume {v} needs an absolute target"
            );
            if source.starts_with('.') || source.starts_with('/') {
                assert!(
                    dir.join(&source).exists(),
                    "{what}: bind mount source {source} does not exist"
                );
            } else {
                assert!(
                    volumes.contains(&source),
                    "{what}: volume {source} is not declared under volumes:"
                );
            }
        }
        for n in svc
            .get("networks")
            .map(|n| match n {
                Value::Array(a) => a.iter().map(scalar).collect::<Vec<_>>(),
                Value::Object(m) => m.keys().cloned().collect(),
                _ => Vec::new(),
            })
            .into_iter()
            .flatten()
        {
            assert!(
                networks.contains(&n) || n == "default",
                "{what}: network {n} is not declared"
            );
        }
        let env = service_env(svc);
        check_env_names(env.keys().map(String::as_str), &keys, &what);
        for (k, v) in &env {
            assert!(
                !v.is_empty() || k.starts_with("AWS_"),
                "{what}: {k} is empty"
            );
        }
    }

    // The roles: 2 ingest, 2 live, 1 archive, 2 replay-api, each its own service.
    let mut per_role: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut node_ids = BTreeMap::new();
    let grace = shutdown_grace_secs(&keys);
    for (name, svc) in services {
        let roles = service_roles(svc);
        if roles.is_empty() {
            continue;
        }
        assert_eq!(
            roles.len(),
            1,
            "{name}: one role per service, not {roles:?}"
        );
        per_role.entry(roles[0].clone()).or_default().push(name);
        let env = service_env(svc);
        if roles[0] == "ingest" || roles[0] == "replay-api" {
            // Both mint comment ids, which carry the node id.
            let id = env.get("DANMAKU_SERVER__NODE_ID").unwrap_or_else(|| {
                panic!("{name}: DANMAKU_SERVER__NODE_ID (unique per node that mints ids)")
            });
            let id: u16 = id.parse().expect("node id");
            assert!(id <= 1023);
            assert!(
                node_ids.insert(id, name.clone()).is_none(),
                "{name}: node id {id} used twice"
            );
        }
        let stop = svc.get("stop_grace_period").map(scalar).unwrap_or_else(|| {
            panic!("{name}: stop_grace_period (the default 10 s cuts the drain)")
        });
        assert!(
            duration_secs(&stop) > 4 * grace,
            "{name}: stop_grace_period {stop} must exceed the drain (4 stages of {grace} s)"
        );
        let listen = env
            .get("DANMAKU_SERVER__LISTEN")
            .map(String::as_str)
            .unwrap_or("");
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{name}: listen on the container's network ({listen})"
        );
        assert_eq!(
            env.get("DANMAKU_SERVER__DEMO").map(String::as_str),
            Some("false"),
            "{name}: no demo session in a deployment"
        );
        assert!(
            env.contains_key("DANMAKU_AUTH__SECRET"),
            "{name}: every node needs the same auth.secret"
        );
    }
    let counts: BTreeMap<&str, usize> = per_role
        .iter()
        .map(|(r, v)| (r.as_str(), v.len()))
        .collect();
    assert_eq!(
        counts,
        BTreeMap::from([
            ("archive", 1),
            ("ingest", 2),
            ("live", 2),
            ("replay-api", 2)
        ]),
        "role services: {per_role:?}"
    );
    let role_services: BTreeSet<&str> = per_role.values().flatten().copied().collect();

    // The backends every role service points at exist as services.
    let host_of = |url: &str| -> String {
        let rest = url.split("://").nth(1).unwrap_or(url);
        rest.split(['/', ':']).next().unwrap().to_string()
    };
    let mut secret = None;
    for name in &role_services {
        let env = service_env(&services[*name]);
        for broker in env["DANMAKU_KAFKA__BROKERS"].split(',') {
            assert!(
                names.contains(host_of(broker).as_str()),
                "{name}: broker {broker} is not a service"
            );
        }
        let cluster: Vec<&str> = env["DANMAKU_REDIS__CLUSTER"].split(',').collect();
        assert_eq!(cluster.len(), 3, "{name}: a 3-master Redis Cluster");
        for node in &cluster {
            let host = host_of(node);
            let svc = &services[&host];
            let cmd = service_cmd(svc);
            assert!(
                cmd.contains("--cluster-enabled yes"),
                "{host}: cluster mode"
            );
            assert!(
                cmd.contains("--appendonly yes"),
                "{host}: AOF on (docs/OPERATIONS.md, Redis durability)"
            );
            assert!(
                cmd.contains("--maxmemory-policy noeviction"),
                "{host}: an evicted slice is a lost comment"
            );
        }
        for node in env["DANMAKU_SCYLLA__NODES"].split(',') {
            assert!(
                names.contains(host_of(node).as_str()),
                "{name}: Scylla node {node} is not a service"
            );
        }
        assert!(
            env["DANMAKU_ARCHIVE__URL"].starts_with("s3://"),
            "{name}: Parquet on MinIO"
        );
        let endpoint = host_of(&env["DANMAKU_ARCHIVE__S3_ENDPOINT"]);
        assert!(
            names.contains(endpoint.as_str()),
            "{name}: S3 endpoint {endpoint} is not a service"
        );
        if let Some(replay) = env.get("DANMAKU_REPLAY__REDIS_URL") {
            let host = host_of(replay);
            assert!(
                names.contains(host.as_str()),
                "{name}: replay Redis {host} is not a service"
            );
            assert!(
                !cluster.iter().any(|n| host_of(n) == host),
                "{name}: the replay cache needs its own Redis, not the live one"
            );
        }
        let this_secret = env["DANMAKU_AUTH__SECRET"].clone();
        assert!(
            secret.get_or_insert(this_secret.clone()) == &this_secret,
            "{name}: every node needs the same secret"
        );
    }
    for replay in &per_role["replay-api"] {
        assert!(
            service_env(&services[*replay]).contains_key("DANMAKU_REPLAY__REDIS_URL"),
            "{replay}: the replay cache's Redis"
        );
    }

    // Kafka: 3 brokers in KRaft mode, the topic created once with OPERATIONS.md's settings.
    let brokers: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| {
            service_env(&services[*n])
                .get("KAFKA_PROCESS_ROLES")
                .is_some_and(|r| r.contains("broker"))
        })
        .collect();
    assert_eq!(brokers.len(), 3, "3 Kafka brokers: {brokers:?}");
    for b in &brokers {
        let env = service_env(&services[*b]);
        assert!(
            env["KAFKA_PROCESS_ROLES"].contains("controller")
                || env.contains_key("KAFKA_CONTROLLER_QUORUM_VOTERS"),
            "{b}: KRaft"
        );
        assert!(
            !env.keys().any(|k| k.contains("ZOOKEEPER")),
            "{b}: KRaft, no ZooKeeper"
        );
    }
    let topic_creators: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| service_cmd(&services[*n]).contains("--create"))
        .collect();
    assert_eq!(
        topic_creators.len(),
        1,
        "one service creates the topic: {topic_creators:?}"
    );
    let create = service_cmd(&services[topic_creators[0]]);
    for setting in documented_topic_settings() {
        assert!(
            create.contains(&setting),
            "{}: the topic must be created with {setting} (docs/OPERATIONS.md)",
            topic_creators[0]
        );
    }
    assert!(
        names
            .iter()
            .any(|n| service_cmd(&services[*n]).contains("--cluster create")),
        "a one-shot service forms the Redis Cluster (redis-cli --cluster create)"
    );
    assert!(
        names
            .iter()
            .any(|n| service_cmd(&services[*n]).contains("mb ")),
        "a one-shot service creates the bucket"
    );
    assert!(
        names
            .iter()
            .any(|n| service_cmd(&services[*n]).contains("archive migrate")),
        "a one-shot service applies the CQL schema"
    );

    // Prometheus and Grafana provisioned from the repository's files.
    let mounts = |svc: &str| -> Vec<String> {
        services[svc]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(scalar)
            .collect()
    };
    let prom = mounts("prometheus").join(" ");
    assert!(
        prom.contains("../prometheus/prometheus.yml") && prom.contains("../prometheus/rules"),
        "prometheus mounts its config and rules: {prom}"
    );
    let graf = mounts("grafana").join(" ");
    assert!(
        graf.contains("../grafana/provisioning") && graf.contains("../grafana/dashboards"),
        "grafana mounts provisioning and dashboards: {graf}"
    );

    // Prometheus scrapes every role service.
    let prom_cfg = yaml_doc("infra/prometheus/prometheus.yml");
    let jobs = prom_cfg["scrape_configs"].as_array().unwrap();
    let danmaku_job = jobs
        .iter()
        .find(|j| j["job_name"] == "danmaku")
        .expect("job danmaku");
    let mut scraped = BTreeSet::new();
    for sc in danmaku_job["static_configs"].as_array().unwrap() {
        let role = s(&sc["labels"]["role"], "role label");
        for t in sc["targets"].as_array().unwrap() {
            let host = host_of(s(t, "target"));
            assert!(
                per_role[role].contains(&host.as_str()),
                "prometheus.yml: {host} is not a {role} service"
            );
            scraped.insert(host);
        }
    }
    let expected: BTreeSet<String> = role_services.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        scraped, expected,
        "prometheus.yml scrapes every role service"
    );

    // The proxy.
    let proxy = mounts("proxy").join(" ");
    assert!(
        proxy.contains("./nginx.conf"),
        "the proxy's config is committed: {proxy}"
    );
    let conf = read("infra/compose/nginx.conf");
    for (upstream, role) in [
        ("ingest", "ingest"),
        ("live", "live"),
        ("replay", "replay-api"),
    ] {
        let servers = nginx_upstream(&conf, upstream);
        let mut hosts: Vec<String> = servers.iter().map(|s| host_of(s)).collect();
        hosts.sort();
        let mut want: Vec<String> = per_role[role].iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(
            hosts, want,
            "nginx upstream {upstream}: every {role} service"
        );
    }

    // `docker compose config` where the plugin exists (it needs no engine).
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.as_ref().is_ok_and(|o| o.status.success()) {
        let out = Command::new("docker")
            .args(["compose", "-f", COMPOSE, "config", "-q"])
            .current_dir(repo())
            .env("DANMAKU_SECRET", "a-test-secret-for-compose-config")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker compose config: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "docker compose plugin not installed: checked the file against the rules above only"
        );
    }
}

/// The `server host:port;` lines of `upstream name { ... }`.
fn nginx_upstream(conf: &str, name: &str) -> Vec<String> {
    let start = conf
        .find(&format!("upstream {name} {{"))
        .unwrap_or_else(|| panic!("nginx: no upstream {name}"));
    let body = &conf[start..start + conf[start..].find('}').unwrap()];
    body.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("server "))
        .map(|l| {
            l.trim_end_matches(';')
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A location block's body, by its exact `location ...` head.
fn nginx_location<'a>(conf: &'a str, head: &str) -> &'a str {
    let start = conf
        .find(&format!("location {head} {{"))
        .unwrap_or_else(|| panic!("nginx: no `location {head}`"));
    &conf[start..start + conf[start..].find('}').unwrap()]
}

#[test]
fn proxy_routes_each_path_to_its_role() {
    let compose_conf = read("infra/compose/nginx.conf");
    let k8s_conf = read("infra/k8s/base/gateway/nginx.conf");
    for conf in [&compose_conf, &k8s_conf] {
        // Every request keeps the headers set at the http level (a location
        // that sets one of its own would drop them all, X-Forwarded-For too).
        let http_level: String = conf.split("server {").next().unwrap().to_string();
        for header in [
            "X-Forwarded-For $proxy_add_x_forwarded_for",
            "Upgrade $http_upgrade",
            "Connection $connection_upgrade",
        ] {
            assert!(
                http_level.contains(&format!("proxy_set_header {header}")),
                "nginx: proxy_set_header {header} at the http level"
            );
        }
        let server_block = conf.split("server {").nth(1).expect("a server block");
        assert!(
            !server_block.contains("proxy_set_header"),
            "nginx: no proxy_set_header inside locations (it would hide the http-level ones)"
        );
        assert!(
            conf.contains("proxy_http_version 1.1"),
            "nginx: HTTP/1.1 upstream (WebSocket upgrade, keep-alive)"
        );
        for ws in ["~ ^/v1/rooms/[^/]+/ws$", "= /sub"] {
            let body = nginx_location(conf, ws);
            assert!(
                body.contains("proxy_pass http://live;"),
                "WebSocket {ws} goes to live"
            );
            assert!(
                body.contains("proxy_read_timeout"),
                "WebSocket {ws} stays open past the default 60 s"
            );
        }
        let room = nginx_location(conf, "~ ^/v1/rooms/[^/]+/danmaku$");
        let var = room
            .split("proxy_pass http://$")
            .nth(1)
            .expect("room comments routed by method")
            .split(';')
            .next()
            .unwrap();
        let map_start = conf
            .find(&format!("map $request_method ${var} {{"))
            .expect("the method map");
        let map = &conf[map_start..map_start + conf[map_start..].find('}').unwrap()];
        assert!(
            map.contains("POST    ingest;") || map.contains("POST ingest;"),
            "sends (POST) go to ingest"
        );
        assert!(map.contains("default live;"), "polls (GET) go to live");
        assert!(nginx_location(conf, "/v1/vods/").contains("http://replay;"));
        assert!(nginx_location(conf, "/dplayer/").contains("http://replay;"));
        assert!(nginx_location(conf, "/v1/auth/").contains("http://ingest;"));
        assert!(
            nginx_location(conf, "= /metrics").contains("return 404"),
            "/metrics is not public"
        );
    }
    // The gateway is the compose proxy with other upstream servers.
    let routing = |conf: &str| -> Vec<String> {
        conf.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter(|l| !(l.starts_with("server ") && l.ends_with(';')))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        routing(&compose_conf),
        routing(&k8s_conf),
        "infra/k8s/base/gateway/nginx.conf must route as infra/compose/nginx.conf does"
    );
}

// ---------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------

/// The API version each kind used here must have.
const K8S_KINDS: &[(&str, &str)] = &[
    ("Deployment", "apps/v1"),
    ("StatefulSet", "apps/v1"),
    ("Service", "v1"),
    ("ConfigMap", "v1"),
    ("Secret", "v1"),
    ("Namespace", "v1"),
    ("PodDisruptionBudget", "policy/v1"),
    ("HorizontalPodAutoscaler", "autoscaling/v2"),
    ("Ingress", "networking.k8s.io/v1"),
];

/// A kustomization and everything it pulls in: (manifests, generated
/// ConfigMap/Secret names and their literals).
#[derive(Default)]
struct Kustomized {
    docs: Vec<(String, Value)>,
    config_maps: BTreeMap<String, Vec<String>>,
    secrets: BTreeMap<String, Vec<String>>,
    images: Vec<String>,
}

fn kustomize(dir: &str, out: &mut Kustomized) {
    let k = yaml_doc(&format!("{dir}/kustomization.yaml"));
    assert_eq!(
        k["apiVersion"], "kustomize.config.k8s.io/v1beta1",
        "{dir}: kustomization apiVersion"
    );
    assert_eq!(k["kind"], "Kustomization", "{dir}: kustomization kind");
    for r in k["resources"].as_array().expect("resources") {
        let rel = format!("{dir}/{}", s(r, "resource"));
        let path = repo().join(&rel);
        if path.is_dir() {
            kustomize(&normalize(&rel), out);
        } else {
            assert!(path.is_file(), "{dir}: resource {rel} missing");
            for d in yaml_docs(&rel) {
                out.docs.push((rel.clone(), d));
            }
        }
    }
    for (field, target) in [
        ("configMapGenerator", &mut out.config_maps),
        ("secretGenerator", &mut out.secrets),
    ] {
        for g in k.get(field).and_then(Value::as_array).into_iter().flatten() {
            let name = s(&g["name"], "generator name").to_string();
            let behavior = g
                .get("behavior")
                .and_then(Value::as_str)
                .unwrap_or("create");
            let entry = target.entry(name.clone()).or_default();
            match behavior {
                "create" => assert!(entry.is_empty(), "{dir}: {field} {name} created twice"),
                "merge" | "replace" => assert!(
                    !entry.is_empty() || field == "secretGenerator",
                    "{dir}: {field} {name} merges into nothing"
                ),
                other => panic!("{dir}: behavior {other}"),
            }
            for lit in g
                .get("literals")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let lit = s(lit, "literal");
                assert!(lit.contains('='), "{dir}: literal {lit} must be KEY=value");
                entry.push(lit.to_string());
            }
            for f in g
                .get("files")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = s(f, "file");
                let src = f.split('=').next_back().unwrap();
                assert!(
                    repo().join(dir).join(src).is_file(),
                    "{dir}: generator file {src} missing"
                );
                entry.push(format!("file:{src}"));
            }
        }
    }
    for img in k
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.images.push(s(&img["name"], "image name").to_string());
    }
    for p in k
        .get("patches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(path) = p.get("path") {
            assert!(
                repo().join(dir).join(s(path, "patch path")).is_file(),
                "{dir}: patch {path} missing"
            );
        }
        if let Some(t) = p.get("target") {
            let kind = s(&t["kind"], "patch target kind");
            let name = s(&t["name"], "patch target name");
            assert!(
                out.docs
                    .iter()
                    .any(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name),
                "{dir}: patch target {kind}/{name} does not exist"
            );
        }
    }
}

fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            ".." => {
                parts.pop();
            }
            "." | "" => {}
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|sel| !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[test]
fn kubernetes_manifests_are_sound() {
    let keys = config_keys();
    let grace = shutdown_grace_secs(&keys);
    let port = default_port(&keys);
    for overlay in ["infra/k8s/base", "infra/k8s/overlays/example"] {
        let mut k = Kustomized::default();
        kustomize(overlay, &mut k);
        let docs = &k.docs;
        let mut seen = BTreeSet::new();
        for (file, d) in docs {
            let kind = s(&d["kind"], "kind");
            let name = s(&d["metadata"]["name"], "metadata.name");
            let api = K8S_KINDS
                .iter()
                .find(|(k, _)| *k == kind)
                .unwrap_or_else(|| panic!("{file}: unexpected kind {kind}"))
                .1;
            assert_eq!(d["apiVersion"], api, "{file}: {kind}/{name} apiVersion");
            assert!(
                seen.insert((kind.to_string(), name.to_string())),
                "{file}: {kind}/{name} defined twice"
            );
        }
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
                .map(|(_, d)| d)
        };
        let workloads: Vec<&Value> = docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
            .collect();

        // Config literals: every DANMAKU_ one is a setting.
        for (name, lits) in &k.config_maps {
            check_env_names(
                lits.iter()
                    .filter_map(|l| l.split_once('=').map(|(k, _)| k)),
                &keys,
                &format!("{overlay}: ConfigMap {name}"),
            );
        }

        let mut roles = BTreeMap::new();
        for w in &workloads {
            let name = s(&w["metadata"]["name"], "name");
            let what = format!("{overlay}: {} {name}", s(&w["kind"], "kind"));
            let spec = &w["spec"];
            let pod_labels = &spec["template"]["metadata"]["labels"];
            assert!(
                labels_match(&spec["selector"]["matchLabels"], pod_labels),
                "{what}: selector must match the pod labels"
            );
            let pod = &spec["template"]["spec"];
            if w["kind"] == "StatefulSet" {
                let svc = s(&spec["serviceName"], "serviceName");
                let headless = find("Service", svc)
                    .unwrap_or_else(|| panic!("{what}: serviceName {svc} is not a Service"));
                assert_eq!(
                    headless["spec"]["clusterIP"], "None",
                    "{what}: {svc} must be headless"
                );
            }
            for vol in pod
                .get("volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(cm) = vol.get("configMap") {
                    let n = s(&cm["name"], "configMap name");
                    assert!(
                        k.config_maps.contains_key(n),
                        "{what}: volume ConfigMap {n} is not generated"
                    );
                }
            }
            let containers = pod["containers"].as_array().expect("containers");
            let danmaku = containers.iter().find(|c| {
                let image = s(&c["image"], "image");
                k.images.iter().any(|i| i == image)
                    || image == "danmaku"
                    || image.contains("/danmaku")
            });
            let Some(c) = danmaku else {
                // The gateway: probes of its own, still resources and a PDB.
                for c in containers {
                    assert!(
                        c["resources"]["requests"].get("cpu").is_some(),
                        "{what}: cpu request"
                    );
                }
                continue;
            };
            let mut env: BTreeMap<String, String> = BTreeMap::new();
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                let n = s(&e["name"], "env name").to_string();
                if let Some(sk) = e.get("valueFrom").and_then(|v| v.get("secretKeyRef")) {
                    let secret = s(&sk["name"], "secret name");
                    if overlay.contains("overlays") {
                        let lits = k
                            .secrets
                            .get(secret)
                            .unwrap_or_else(|| panic!("{what}: Secret {secret} is not generated"));
                        let key = s(&sk["key"], "secret key");
                        assert!(
                            lits.iter().any(|l| l.starts_with(&format!("{key}="))),
                            "{what}: Secret {secret} has no key {key}"
                        );
                    }
                }
                env.insert(n, e.get("value").map(scalar).unwrap_or_default());
            }
            check_env_names(env.keys().map(String::as_str), &keys, &what);
            for from in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let n = s(&from["configMapRef"]["name"], "configMapRef");
                assert!(
                    k.config_maps.contains_key(n),
                    "{what}: envFrom ConfigMap {n} is not generated"
                );
            }
            let role: Vec<String> =
                serde_json::from_str(&env["DANMAKU_SERVER__ROLES"]).expect("roles array");
            assert_eq!(role.len(), 1, "{what}: one role per workload");
            roles.insert(role[0].clone(), (*w).clone());

            let probe = |p: &str| -> (String, Value) {
                let probe = c.get(p).unwrap_or_else(|| panic!("{what}: {p}"));
                (
                    s(&probe["httpGet"]["path"], "probe path").to_string(),
                    probe["httpGet"]["port"].clone(),
                )
            };
            assert_eq!(
                probe("readinessProbe").0,
                "/readyz",
                "{what}: readiness on /readyz"
            );
            assert_eq!(
                probe("livenessProbe").0,
                "/healthz",
                "{what}: liveness on /healthz"
            );
            let ports = c["ports"].as_array().expect("ports");
            for p in ["readinessProbe", "livenessProbe"] {
                let port_ref = probe(p).1;
                assert!(
                    ports
                        .iter()
                        .any(|cp| cp["name"] == port_ref || cp["containerPort"] == port_ref),
                    "{what}: {p} port {port_ref} is not a container port"
                );
            }
            assert!(
                ports.iter().any(|cp| cp["containerPort"] == json!(port)),
                "{what}: container port {port}"
            );
            let req = &c["resources"]["requests"];
            assert!(
                req.get("cpu").is_some() && req.get("memory").is_some(),
                "{what}: cpu and memory requests (the capacity model)"
            );
            assert!(
                c["resources"]["limits"].get("memory").is_some(),
                "{what}: a memory limit"
            );
            let tgp = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
            assert!(tgp > 4 * grace, "{what}: terminationGracePeriodSeconds {tgp} must exceed the drain (4 stages of server.shutdown_grace_secs = {grace} s)");
            let sc = &pod["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{what}: runAsNonRoot");

            // Nodes that mint ids get distinct node ids from their ordinal.
            if role[0] == "ingest" || role[0] == "replay-api" {
                assert_eq!(w["kind"], "StatefulSet", "{what}: mints comment ids, so each pod needs its own server.node_id: a StatefulSet");
                let script = c["args"]
                    .as_array()
                    .map(|a| a.iter().map(scalar).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                assert!(
                    script.contains("DANMAKU_SERVER__NODE_ID") && script.contains("HOSTNAME##*-"),
                    "{what}: node id from the ordinal: {script}"
                );
                assert!(env.contains_key("NODE_ID_BASE"), "{what}: NODE_ID_BASE");
            }
        }
        let mut bases: Vec<(u64, String)> = Vec::new();
        for role in ["ingest", "live", "archive", "replay-api"] {
            let w = roles
                .get(role)
                .unwrap_or_else(|| panic!("{overlay}: no workload runs {role}"));
            let name = s(&w["metadata"]["name"], "name");
            let kind = s(&w["kind"], "kind");
            // PDB and, for live and ingest, an HPA.
            let pod_labels = &w["spec"]["template"]["metadata"]["labels"];
            assert!(
                docs.iter().any(|(_, d)| d["kind"] == "PodDisruptionBudget"
                    && labels_match(&d["spec"]["selector"]["matchLabels"], pod_labels)),
                "{overlay}: no PodDisruptionBudget selects {name}"
            );
            let hpa = docs.iter().map(|(_, d)| d).find(|d| {
                d["kind"] == "HorizontalPodAutoscaler"
                    && d["spec"]["scaleTargetRef"]["name"] == name
            });
            if role == "ingest" || role == "live" {
                let hpa = hpa.unwrap_or_else(|| panic!("{overlay}: no HPA for {role}"));
                assert_eq!(
                    hpa["spec"]["scaleTargetRef"]["kind"], kind,
                    "{overlay}: HPA {name} target kind"
                );
                let min = hpa["spec"]["minReplicas"].as_u64().unwrap();
                let max = hpa["spec"]["maxReplicas"].as_u64().unwrap();
                assert!(min >= 2 && max > min, "{overlay}: HPA {name} {min}..{max}");
                if let Some(base) = w["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .and_then(|e| e.iter().find(|e| e["name"] == "NODE_ID_BASE"))
                {
                    let base: u64 = scalar(&base["value"]).parse().unwrap();
                    bases.push((base, format!("{name} up to {max}")));
                    assert!(
                        base + max <= 1024,
                        "{overlay}: {name}'s node ids {base}..{} pass 1023",
                        base + max
                    );
                }
            }
            if role == "replay-api" {
                let base: u64 = w["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .and_then(|e| e.iter().find(|e| e["name"] == "NODE_ID_BASE"))
                    .map(|e| scalar(&e["value"]).parse().unwrap())
                    .expect("replay-api NODE_ID_BASE");
                bases.push((base, name.to_string()));
            }
        }
        bases.sort();
        for pair in bases.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "{overlay}: node id ranges overlap: {bases:?}"
            );
        }
        if let (Some(ingest_hpa), Some(replay)) = (
            docs.iter().map(|(_, d)| d).find(|d| {
                d["kind"] == "HorizontalPodAutoscaler"
                    && d["spec"]["scaleTargetRef"]["name"] == "ingest"
            }),
            bases.iter().find(|b| b.1.starts_with("replay-api")),
        ) {
            let ingest_base = bases
                .iter()
                .find(|b| b.1.starts_with("ingest"))
                .map(|b| b.0)
                .unwrap_or(0);
            assert!(
                ingest_base + ingest_hpa["spec"]["maxReplicas"].as_u64().unwrap() <= replay.0,
                "{overlay}: ingest's node ids reach replay-api's"
            );
        }

        // Every Service selects some workload and targets a named container port.
        for (_, svc) in docs.iter().filter(|(_, d)| d["kind"] == "Service") {
            let name = s(&svc["metadata"]["name"], "name");
            let w = workloads
                .iter()
                .find(|w| {
                    labels_match(
                        &svc["spec"]["selector"],
                        &w["spec"]["template"]["metadata"]["labels"],
                    )
                })
                .unwrap_or_else(|| panic!("{overlay}: Service {name} selects no workload"));
            for p in svc["spec"]["ports"].as_array().unwrap() {
                let target = &p["targetPort"];
                let ok = w["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| {
                        c["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|cp| cp["name"] == *target || cp["containerPort"] == *target)
                    });
                assert!(
                    ok,
                    "{overlay}: Service {name} targets port {target}, which its pods do not have"
                );
            }
        }
        for (_, ing) in docs.iter().filter(|(_, d)| d["kind"] == "Ingress") {
            for rule in ing["spec"]["rules"].as_array().unwrap() {
                for p in rule["http"]["paths"].as_array().unwrap() {
                    let svc = s(&p["backend"]["service"]["name"], "backend");
                    assert!(
                        find("Service", svc).is_some(),
                        "{overlay}: Ingress backend {svc} is not a Service"
                    );
                }
            }
        }
    }

    // Where kubectl (with its built-in kustomize) is installed, render the
    // overlay too; it works offline. Not required.
    let out = Command::new("kubectl")
        .args(["kustomize", "infra/k8s/overlays/example"])
        .current_dir(repo())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8(o.stdout).unwrap();
            let docs =
                yaml_rust2::YamlLoader::load_from_str(&text).expect("kustomize output is YAML");
            assert!(
                docs.len() >= 15,
                "kustomize rendered {} objects",
                docs.len()
            );
        }
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("unknown command") => {
            eprintln!(
                "this kubectl has no kustomize: the manifests were checked by the rules above only"
            )
        }
        Ok(o) => panic!(
            "kubectl kustomize failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => {
            eprintln!("kubectl not installed: the manifests were checked by the rules above only")
        }
    }
}

// ---------------------------------------------------------------------------
// Dashboards and rules against a running node's /metrics
// ---------------------------------------------------------------------------

/// Metrics the dashboards and rules use that a fresh node on the embedded
/// stores does not show after the little traffic of the test (the exporter
/// prints a metric once it has been touched): either their engine is not
/// running, or their event did not happen. Each must be named in the source.
const NOT_IN_A_FRESH_EMBEDDED_SCRAPE: &[(&str, &str)] = &[
    (
        "danmaku_kafka_produce_seconds",
        "Kafka Bus only (adapters/kafka)",
    ),
    (
        "danmaku_kafka_produce_errors_total",
        "Kafka Bus only, on a failed produce",
    ),
    (
        "danmaku_kafka_consumer_lag",
        "Kafka Bus only, from librdkafka statistics",
    ),
    (
        "danmaku_kafka_commit_errors_total",
        "Kafka Bus only, on a failed offset commit",
    ),
    (
        "danmaku_kafka_rebalances_total",
        "Kafka Bus only, on a consumer-group rebalance",
    ),
    (
        "danmaku_kafka_client_errors_total",
        "Kafka Bus only, on a librdkafka error",
    ),
    (
        "danmaku_redis_errors_total",
        "Redis SliceStore only, on a failed command",
    ),
    (
        "danmaku_replay_redis_errors_total",
        "replay.redis_url set (adapters/redis cache), on a failed command",
    ),
    (
        "danmaku_replay_cache_tier_hits_total",
        "replay.redis_url set: the two-tier cache counts hits per tier",
    ),
    (
        "danmaku_bigkey_events_total",
        "a slice past live.bigkey_members or live.bigkey_bytes",
    ),
    (
        "danmaku_bigkey_scan_keys_total",
        "after a big-key scanner pass (live.bigkey_scan_interval_ms)",
    ),
    (
        "danmaku_bigkey_scan_passes_total",
        "after a big-key scanner pass",
    ),
    ("danmaku_bigkey_scan_errors_total", "a failed scanner step"),
    (
        "danmaku_writer_store_errors_total",
        "a failed SliceStore write",
    ),
    (
        "danmaku_writer_commit_errors_total",
        "a failed Bus offset commit",
    ),
    (
        "danmaku_writer_notify_errors_total",
        "a failed live notification",
    ),
    (
        "danmaku_writer_decode_errors_total",
        "a Bus record that does not decode",
    ),
    (
        "danmaku_writer_rooms",
        "set when the writer closes slices (adaptive lengths)",
    ),
    ("danmaku_slice_members", "recorded when a slice closes"),
    ("danmaku_slice_bytes", "recorded when a slice closes"),
    (
        "danmaku_slice_length_changes_total",
        "a room's adaptive slice length changed",
    ),
    (
        "danmaku_ws_gaps_total",
        "a WebSocket client too slow for live.ws_queue",
    ),
    ("danmaku_ws_refused_total", "past live.max_connections"),
    (
        "danmaku_ws_dead_peers_total",
        "a client silent for two ping intervals",
    ),
    (
        "danmaku_ws_resume_bytes",
        "set while resumes (?cursor=) send their backlog",
    ),
    (
        "danmaku_ws_resume_over_budget_total",
        "a resume past live.resume_max_bytes",
    ),
    (
        "danmaku_live_dropped_total",
        "comments past live.display_budget_per_sec",
    ),
    (
        "danmaku_live_refused_total",
        "503s past live.max_rooms, max_long_polls, max_concurrent_resumes",
    ),
    (
        "danmaku_live_stale_cursors_total",
        "a cursor older than anything held",
    ),
    (
        "danmaku_http_connections_refused_total",
        "past server.max_connections(_per_ip)",
    ),
    (
        "danmaku_http_accept_errors_total",
        "accept(2) failing (out of descriptors)",
    ),
    (
        "danmaku_http_body_timeouts_total",
        "a request body past limits.body_timeout_ms",
    ),
    (
        "danmaku_archive_decode_errors_total",
        "a stored item that does not decode",
    ),
    (
        "danmaku_archive_lease_renewals_total",
        "a batch that takes a third of archive.lease_ms",
    ),
    (
        "danmaku_archive_expired_slices_total",
        "slices past live.hot_retention_ms (5 min)",
    ),
    (
        "danmaku_replay_vod_comments_total",
        "POST /v1/vods/{vod}/danmaku",
    ),
    (
        "danmaku_replay_post_not_visible_total",
        "a VOD post not in the SliceStore within replay.post_visible_ms",
    ),
    (
        "danmaku_replay_cold_loads_refused_total",
        "past replay.max_cold_loads",
    ),
    (
        "danmaku_ingest_refused_total",
        "a send refused by a ban, a mute or a rate limit",
    ),
    (
        "danmaku_moderation_stale_refusals_total",
        "the moderation store did not answer in time",
    ),
    (
        "danmaku_ingest_shadow_accepted_total",
        "a send of a shadow-banned user",
    ),
    (
        "danmaku_ingest_idempotent_replays_total",
        "a retry with a known idempotency key",
    ),
    (
        "danmaku_ingest_idempotency_unrecorded_total",
        "an idempotency key the store could not record",
    ),
    (
        "danmaku_admin_actions_total",
        "an admin action (ban, mute, ...)",
    ),
    (
        "danmaku_deletions_total",
        "a comment deleted by a moderator",
    ),
    (
        "danmaku_embedded_errors_total",
        "a failed embedded moderation-store operation",
    ),
    (
        "danmaku_archive_deletions_total",
        "a deletion applied to the archive",
    ),
    (
        "danmaku_replay_imported_total",
        "comments imported into a VOD",
    ),
    (
        "danmaku_sub_auth_total",
        "a Bilibili /sub connection authenticating",
    ),
    ("danmaku_sub_gaps_total", "a /sub resume past what is held"),
    (
        "danmaku_sub_ignored_packets_total",
        "a /sub packet of an unknown operation",
    ),
];

/// Series that are not the server's: Prometheus' own `up`, the blackbox
/// exporter's `probe_success` (the /readyz probe of prometheus.yml).
const NOT_FROM_THE_SERVER: &[(&str, &str)] = &[
    ("up", "Prometheus: 1 when the scrape of a target succeeded"),
    (
        "probe_success",
        "the blackbox exporter's /readyz probe (infra/prometheus/blackbox.yml)",
    ),
];

/// Metric names a PromQL expression reads: identifiers outside label
/// matchers, ranges, strings and grouping lists that are not functions,
/// keywords or numbers.
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    // Keywords, and aggregation operators (`max by (x) (...)` is not a call
    // by the next character).
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, close: char| -> usize {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != close {
            if chars[j] == '"' {
                j += 1;
                while j < chars.len() && chars[j] != '"' {
                    if chars[j] == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
            }
            j += 1;
        }
        j + 1
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            i = skip_to(i, c);
        } else if c == '{' {
            i = skip_to(i, '}');
        } else if c == '[' {
            i = skip_to(i, ']');
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            if call
                && [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word.as_str())
            {
                i = skip_to(j, ')');
            } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Every `expr` of the dashboards (any depth: rows may nest panels).
fn dashboard_exprs() -> Vec<(String, String)> {
    fn walk(v: &Value, file: &str, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push((file.to_string(), e.clone()));
                }
                m.values().for_each(|c| walk(c, file, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, file, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let dir = repo().join("infra/grafana/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let provisioned = yaml_doc("infra/grafana/provisioning/datasources/prometheus.yml");
    let uid = provisioned["datasources"][0]["uid"].clone();
    let mut uids = HashSet::new();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "json"))
    {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let d: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            uids.insert(s(&d["uid"], "dashboard uid").to_string()),
            "{name}: dashboard uid used twice"
        );
        for p in d["panels"].as_array().expect("panels") {
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], uid,
                    "{name}: panel {} must use the provisioned data source",
                    p["title"]
                );
                assert!(
                    !p["targets"].as_array().map(Vec::is_empty).unwrap_or(true),
                    "{name}: panel {} has no query",
                    p["title"]
                );
            }
        }
        walk(&d, &name, &mut out);
    }
    assert!(
        files.len() >= 5,
        "dashboards: the four roles and the backends"
    );
    out
}

/// Every alert and recording rule expression, with a check of the alerts'
/// runbook links and unit tests.
fn rule_exprs() -> Vec<(String, String)> {
    let ops = read("docs/OPERATIONS.md");
    let anchors: HashSet<String> = ops
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .replace(' ', "-")
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                .collect()
        })
        .collect();
    let tests = read("infra/prometheus/tests/danmaku_test.yml");
    let mut out = Vec::new();
    let dir = repo().join("infra/prometheus/rules");
    for f in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
        let rel = format!(
            "infra/prometheus/rules/{}",
            f.file_name().unwrap().to_string_lossy()
        );
        for g in yaml_doc(&rel)["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                let expr = s(&r["expr"], "expr").to_string();
                if let Some(alert) = r.get("alert") {
                    let alert = s(alert, "alert");
                    let url = s(&r["annotations"]["runbook_url"], "runbook_url");
                    let anchor = url
                        .split_once("docs/OPERATIONS.md#")
                        .unwrap_or_else(|| panic!("{alert}: runbook_url into docs/OPERATIONS.md"))
                        .1;
                    assert!(
                        anchors.contains(anchor),
                        "{alert}: docs/OPERATIONS.md has no section #{anchor}"
                    );
                    assert!(
                        tests.contains(&format!("alertname: {alert}")),
                        "{alert}: no promtool unit test"
                    );
                    assert!(
                        r["labels"].get("severity").is_some(),
                        "{alert}: severity label"
                    );
                }
                out.push((rel.clone(), expr));
            }
        }
    }
    assert!(!out.is_empty());
    out
}

/// Whether the crates' sources name `metric` as a string literal.
fn named_in_source(metric: &str) -> bool {
    fn walk(dir: &Path, needle: &str) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if name != "target" && name != "tests" && walk(&p, needle) {
                    return true;
                }
            } else if name.ends_with(".rs")
                && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle))
            {
                return true;
            }
        }
        false
    }
    let needle = format!("\"{metric}\"");
    [
        "src",
        "core/src",
        "adapters",
        "ingest/src",
        "live/src",
        "archive/src",
        "replay-api/src",
    ]
    .iter()
    .any(|d| walk(&repo().join(d), &needle))
}

/// Metric names in a Prometheus text exposition.
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// A node with a little of everything: a guest token, a send, a poll, a
/// WebSocket, a refused send (an API error), a VOD with a comment, ended
/// (archived at once) and read back through the replay API.
async fn drive_traffic(app: &helpers::TestApp) {
    let guest = app.post("/v1/auth/guest", None, json!({})).await;
    guest.expect_status(200, "guest token");
    let token = s(&guest.json["token"], "token").to_string();
    let mut ws = app.ws("ops", None, None).await;
    app.send_ok(&token, "ops", json!({"text": "hello"})).await;
    app.send(None, "ops", json!({"text": "no token"}))
        .await
        .expect_status(401, "send without a token");
    let service = app.token("ops-service", "service").await;
    let vod = app
        .post(
            "/v1/rooms/ops/sessions",
            Some(&service),
            json!({"vod": "ops-vod"}),
        )
        .await;
    vod.expect_status(201, "session start");
    app.send_ok(&token, "ops", json!({"text": "in the VOD"}))
        .await;
    assert!(
        ws.wait_items(2, Duration::from_secs(10)).await,
        "the WebSocket got both comments"
    );
    app.get("/v1/rooms/ops/danmaku?limit=10")
        .await
        .expect_status(200, "poll");
    app.post("/v1/vods/ops-vod/end", Some(&service), json!({}))
        .await
        .expect_status(200, "session end");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = app
            .get("/v1/vods/ops-vod/danmaku?from_ms=0&to_ms=360000")
            .await;
        page.expect_status(200, "replay range");
        if page.json["items"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VOD's comment was not replayable within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.get("/v1/vods/ops-vod/segments/0")
        .await
        .expect_status(200, "segment");
    app.get("/v1/vods/ops-vod/segments/0")
        .await
        .expect_status(200, "segment again (cached)");
    drop(ws);
}

#[tokio::test]
async fn dashboards_and_rules_use_only_exported_metrics() {
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for (file, expr) in dashboard_exprs().into_iter().chain(rule_exprs()) {
        let names = promql_metrics(&expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr}");
        for n in names {
            used.entry(n).or_insert(file.clone());
        }
    }

    let app = helpers::spawn_app(&[]).await;
    drive_traffic(&app).await;
    // The archive batch of the ended VOD and the counters it touches.
    let deadline = Instant::now() + Duration::from_secs(20);
    let scraped = loop {
        let text = app.get("/metrics").await.text;
        let names = scraped_names(&text);
        if names.contains("danmaku_archive_batches_total")
            && names.contains("danmaku_replay_cache_hits_total")
        {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "no archive batch in /metrics within 20 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let listed: BTreeMap<&str, &str> = NOT_IN_A_FRESH_EMBEDDED_SCRAPE.iter().copied().collect();
    let foreign: BTreeMap<&str, &str> = NOT_FROM_THE_SERVER.iter().copied().collect();
    let mut problems = Vec::new();
    for (name, file) in &used {
        if scraped.contains(name) || foreign.contains_key(name.as_str()) {
            continue;
        }
        // A summary's series are <name>{quantile}, <name>_sum and <name>_count.
        let base = name
            .strip_suffix("_sum")
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(name);
        if scraped.contains(base) {
            continue;
        }
        if let Some(reason) = listed.get(base) {
            if !named_in_source(base) {
                problems.push(format!(
                    "{file}: {name} ({reason}) is not named in the server's source"
                ));
            }
            continue;
        }
        problems.push(format!(
            "{file}: {name} is neither in a node's /metrics nor listed with a reason"
        ));
    }
    for (name, _) in NOT_IN_A_FRESH_EMBEDDED_SCRAPE {
        assert!(
            named_in_source(name),
            "{name} is listed but the server's source does not name it"
        );
    }
    assert!(
        problems.is_empty(),
        "metrics the server does not export:\n{}\nscraped: {scraped:?}",
        problems.join("\n")
    );
}

#[test]
fn promql_metric_names_are_found() {
    let names = promql_metrics(
        r#"sum by (code) (rate(danmaku_api_errors_total{code="unavailable"}[5m])) / on() group_left () (sum(danmaku_x_total offset 10m) + 1e3) > 0.2 * max(up{job="a"}) and (sum(foo:bar[1m:10s])) or vector(0)"#,
    );
    let want: BTreeSet<String> = [
        "danmaku_api_errors_total",
        "danmaku_x_total",
        "up",
        "foo:bar",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
}

// ---------------------------------------------------------------------------
// promtool and a real Prometheus (Debian's prometheus package)
// ---------------------------------------------------------------------------

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (install Debian's prometheus package)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
#[ignore = "needs promtool (Debian's prometheus package)"]
fn promtool_checks_and_tests_the_rules() {
    run_ok(
        Command::new("promtool").args(["check", "rules", "infra/prometheus/rules/danmaku.yml"]),
        "promtool check rules",
    );
    run_ok(
        Command::new("promtool").args(["check", "config", "infra/prometheus/prometheus.yml"]),
        "promtool check config",
    );
    let out = run_ok(
        Command::new("promtool").args(["test", "rules", "infra/prometheus/tests/danmaku_test.yml"]),
        "promtool test rules",
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
#[ignore = "needs prometheus (Debian's prometheus package)"]
async fn prometheus_scrapes_a_running_node() {
    let app = helpers::spawn_app(&[]).await;
    let guest = app.post("/v1/auth/guest", None, json!({})).await;
    let token = s(&guest.json["token"], "token").to_string();
    app.send_ok(&token, "scraped", json!({"text": "counted"}))
        .await;

    let node = app.base_url.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let rules = repo().join("infra/prometheus/rules/danmaku.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: danmaku\n    static_configs:\n      - targets: [\"{node}\"]\n        labels: {{role: all}}\n",
        rules.display()
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut prom = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus (Debian's prometheus package)");

    let query = |q: &str| {
        format!(
            "http://127.0.0.1:{port}/api/v1/query?query={}",
            urlencode(q)
        )
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let ok = loop {
        let up = http.get(query("up{job=\"danmaku\"}")).send().await;
        let accepted = http
            .get(query("danmaku_ingest_accepted_total{job=\"danmaku\"}"))
            .send()
            .await;
        if let (Ok(up), Ok(accepted)) = (up, accepted) {
            let up: Value = up.json().await.unwrap_or_default();
            let accepted: Value = accepted.json().await.unwrap_or_default();
            let up_value = up["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_string);
            let acc_value = accepted["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok());
            last = format!("up: {up}\naccepted: {accepted}");
            if up_value.as_deref() == Some("1") && acc_value.is_some_and(|v| v >= 1.0) {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        if let Ok(Some(status)) = prom.try_wait() {
            panic!(
                "prometheus exited ({status}): {}",
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(ok, "Prometheus did not show up == 1 and the node's accepted counter within 60 s\n{last}\nlog:\n{log}");

    // The rules loaded and evaluate without errors against the live series.
    let rules: Value = http
        .get(format!("http://127.0.0.1:{port}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    assert!(
        groups.iter().any(|g| g["name"] == "danmaku"),
        "the danmaku rule group is loaded: {rules}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rules: Value = http
            .get(format!("http://127.0.0.1:{port}/api/v1/rules"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        let unhealthy: Vec<String> = all
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if all.iter().all(|r| r["health"] == "ok") {
            // A node that answers is not down.
            assert!(
                all.iter()
                    .all(|r| r["name"] != "DanmakuNodeDown" || r["state"] == "inactive"),
                "DanmakuNodeDown fired for a node that answers"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rules not all evaluated ok: {unhealthy:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = prom.start_kill();
    let _ = prom.wait().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The proxy's routing through a real nginx (Debian's nginx-light)
// ---------------------------------------------------------------------------

/// One request as a stub upstream saw it: method, path, X-Forwarded-For.
type Seen = (String, String, String);

/// A stub upstream that answers every request with its own name and records
/// what it got.
async fn stub_upstream(
    name: &'static str,
    seen: std::sync::Arc<std::sync::Mutex<Vec<(&'static str, Seen)>>>,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request head (and its body, by Content-Length) at a time.
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let mut lines = head.lines();
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let method = first.next().unwrap_or("").to_string();
                    let path = first.next().unwrap_or("").to_string();
                    let mut xff = String::new();
                    let mut length = 0usize;
                    for l in lines {
                        let (k, v) = l.split_once(':').unwrap_or((l, ""));
                        match k.trim().to_ascii_lowercase().as_str() {
                            "x-forwarded-for" => xff = v.trim().to_string(),
                            "content-length" => length = v.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    while buf.len() < end + 4 + length {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + length);
                    seen.lock().unwrap().push((name, (method, path, xff)));
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if sock.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Starts nginx (one process, no daemon) on the routing of
/// infra/compose/nginx.conf with each upstream's servers replaced.
async fn start_nginx(dir: &Path, upstreams: &[(&str, String)]) -> (tokio::process::Child, u16) {
    let mut conf = read("infra/compose/nginx.conf");
    for (name, addr) in upstreams {
        let start = conf.find(&format!("upstream {name} {{")).unwrap();
        let end = start + conf[start..].find('}').unwrap();
        let block: String = conf[start..end]
            .lines()
            .filter(|l| !l.trim_start().starts_with("server "))
            .map(|l| format!("{l}\n"))
            .collect();
        let block = block.replacen('{', &format!("{{\n    server {addr};"), 1);
        conf.replace_range(start..end, &block);
    }
    let port = free_port();
    conf = conf
        .replace(
            "worker_processes auto;",
            "worker_processes 1;\nmaster_process off;",
        )
        .replace(
            "pid /tmp/nginx.pid;",
            &format!("pid {}/nginx.pid;", dir.display()),
        )
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
        .replace("/tmp/nginx-client-body", &format!("{}/body", dir.display()))
        .replace("/tmp/nginx-proxy", &format!("{}/proxy", dir.display()))
        .replace(
            "events {",
            &format!("error_log {}/error.log;\nevents {{", dir.display()),
        );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = tokio::process::Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-g")
        .arg("daemon off;")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start nginx (Debian's nginx-light)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not listen within 10 s: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

#[tokio::test]
#[ignore = "needs nginx (Debian's nginx-light)"]
async fn nginx_sends_each_request_to_its_role() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut upstreams = Vec::new();
    for name in ["ingest", "live", "replay"] {
        let port = stub_upstream(name, seen.clone()).await;
        upstreams.push((name, format!("127.0.0.1:{port}")));
    }
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, port) = start_nginx(dir.path(), &upstreams).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let cases = [
        ("POST", "/v1/rooms/r1/danmaku", Some("ingest")),
        (
            "GET",
            "/v1/rooms/r1/danmaku?cursor=x&wait_ms=0",
            Some("live"),
        ),
        ("GET", "/v1/rooms/r1/ws", Some("live")),
        ("GET", "/sub", Some("live")),
        ("POST", "/v1/auth/guest", Some("ingest")),
        ("POST", "/v1/admin/rooms/r1/bans", Some("ingest")),
        ("GET", "/v1/admin/bigkeys", Some("live")),
        ("POST", "/v1/rooms/r1/sessions", Some("replay")),
        ("GET", "/v1/rooms/r1/vods", Some("replay")),
        ("GET", "/v1/vods/v1", Some("replay")),
        ("POST", "/v1/vods/v1/end", Some("replay")),
        ("GET", "/v1/vods/v1/segments/0", Some("replay")),
        ("POST", "/v1/vods/v1/danmaku", Some("replay")),
        ("GET", "/dplayer/v3/?id=v1", Some("replay")),
        ("GET", "/", Some("live")),
        ("GET", "/metrics", None),
        ("GET", "/healthz", None),
    ];
    for (method, path, want) in cases {
        seen.lock().unwrap().clear();
        let req = http.request(
            method.parse().unwrap(),
            format!("http://127.0.0.1:{port}{path}"),
        );
        let req = if method == "POST" {
            req.body("{}")
        } else {
            req
        };
        let resp = req
            .header("x-forwarded-for", "203.0.113.9")
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        let got = seen.lock().unwrap().clone();
        match want {
            Some(role) => {
                assert_eq!(status, 200, "{method} {path}: {body}");
                assert_eq!(body, role, "{method} {path} went to {body}, not {role}");
                assert_eq!(got.len(), 1, "{method} {path}: {got:?}");
                let (m, p, xff) = &got[0].1;
                assert_eq!(
                    (m.as_str(), p.as_str()),
                    (method, path),
                    "{method} {path} forwarded as is"
                );
                // The client's header first, the address nginx saw last (the
                // one limits.trusted_proxy_header counts).
                assert_eq!(
                    xff, "203.0.113.9, 127.0.0.1",
                    "{method} {path}: X-Forwarded-For"
                );
            }
            None => {
                assert_eq!(status, 404, "{method} {path} must not be public");
                assert!(got.is_empty(), "{method} {path} reached {got:?}");
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs nginx (Debian's nginx-light)"]
async fn nginx_carries_websockets_and_sends_to_a_node() {
    use futures::StreamExt;
    let app = helpers::spawn_app(&[
        ("DANMAKU_LIMITS__TRUSTED_PROXY_HEADER", "x-forwarded-for"),
        ("DANMAKU_SERVER__MAX_CONNECTIONS_PER_IP", "0"),
    ])
    .await;
    let node = app.base_url.trim_start_matches("http://").to_string();
    let dir = tempfile::tempdir().unwrap();
    let upstreams = [
        ("ingest", node.clone()),
        ("live", node.clone()),
        ("replay", node.clone()),
    ];
    let (_nginx, port) = start_nginx(dir.path(), &upstreams).await;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/rooms/proxied/ws"))
            .await
            .expect("WebSocket upgrade through nginx");
    let next_json = |m: tokio_tungstenite::tungstenite::Message| -> Value {
        serde_json::from_str(m.to_text().unwrap()).unwrap()
    };
    let hello = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("hello within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(next_json(hello)["type"], "hello");

    let guest: Value = http
        .post(format!("{base}/v1/auth/guest"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = s(&guest["token"], "guest token").to_string();
    let sent = http
        .post(format!("{base}/v1/rooms/proxied/danmaku"))
        .bearer_auth(&token)
        .json(&json!({"text": "through the proxy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status().as_u16(), 202, "send through nginx");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            ws.next(),
        )
        .await
        .expect("the comment over the proxied WebSocket within 10 s")
        .unwrap()
        .unwrap();
        if !msg.is_text() {
            continue;
        }
        let v = next_json(msg);
        if v["type"] == "batch"
            && v["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["text"] == "through the proxy")
        {
            break;
        }
    }
    // A poll through the proxy sees it too.
    let poll: Value = http
        .get(format!("{base}/v1/rooms/proxied/danmaku?limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(poll["items"].is_array(), "poll through nginx: {poll}");
}
