//! The command line's work apart from serving: loading the settings (file then
//! `DANMAKU_*` environment), printing a signed token, printing the effective
//! configuration, the archive maintenance commands, and `import` (a recording's
//! comments sent to a running server). `src/main.rs` parses the flags and calls
//! these.

use anyhow::{bail, Context as _};
use danmaku_core::auth::{load_secret, Role, TokenSigner};
use danmaku_core::config::Settings;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Loads the settings from `config` (or `DANMAKU_CONFIG`) and the process
/// environment.
pub fn load_settings(config: Option<PathBuf>) -> anyhow::Result<Settings> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let file = config.or_else(|| env.get("DANMAKU_CONFIG").map(PathBuf::from));
    Ok(Settings::load(file.as_deref(), &env)?)
}

/// Checks roles given on the command line: each one of
/// [`danmaku_core::config::ALL_ROLES`] or `all`.
pub fn check_roles(roles: &[String]) -> anyhow::Result<()> {
    for role in roles {
        if role != "all" && !danmaku_core::config::ALL_ROLES.contains(&role.as_str()) {
            bail!(
                "unknown role {role:?}; roles are {:?} or all",
                danmaku_core::config::ALL_ROLES
            );
        }
    }
    Ok(())
}

/// Parses a token lifetime: `90s`, `30m`, `24h`, `7d` or plain seconds.
pub fn parse_ttl(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().with_context(|| format!("bad ttl {s:?}"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("bad ttl unit in {s:?}: use s, m, h or d"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("ttl {s:?} is too long"))
}

/// A token signed with the configured secret (or the one generated under the
/// data dir).
pub fn token(
    settings: &Settings,
    user: &str,
    name: Option<&str>,
    role: &str,
    ttl: &str,
) -> anyhow::Result<String> {
    let role = Role::parse(role)
        .with_context(|| format!("unknown role {role:?}: viewer, service or admin"))?;
    let secret = load_secret(&settings.auth.secret.0, &settings.server.data_dir)
        .map_err(|e| anyhow::anyhow!("auth secret: {e}"))?;
    let signer = TokenSigner::new(secret.as_bytes());
    Ok(signer.issue(
        user,
        name,
        role,
        danmaku_core::now_ms() / 1000,
        parse_ttl(ttl)?,
    ))
}

/// `danmaku archive migrate`: applies the CQL schema to the configured ScyllaDB.
pub async fn archive_migrate(settings: &Settings) -> anyhow::Result<()> {
    danmaku_scylla::migrate(&settings.scylla).await?;
    println!("schema applied to keyspace {}", settings.scylla.keyspace);
    Ok(())
}

/// `danmaku archive compact`: merges one hour's Parquet files into one.
pub async fn archive_compact(settings: &Settings, hour: &str) -> anyhow::Result<()> {
    let objects = crate::engines::object_store(settings)?;
    let report = danmaku_archive::compact_hour(&*objects, hour).await?;
    println!(
        "hour {}: merged {} files, {} rows, output {}",
        report.hour,
        report.files_merged,
        report.rows,
        report.output.as_deref().unwrap_or("(nothing to do)")
    );
    Ok(())
}

/// `danmaku import FILE --vod VOD`: streams the Bilibili or BililiveRecorder
/// XML document `file` to `POST /v1/vods/{vod}/import` of the server at
/// `server` (`http://host:port`; default: `server.listen` of the settings),
/// with `token` or, without one, a service token minted from the configured
/// secret. Returns the server's answer (`{"imported": n, "skipped": n}`).
pub async fn import(
    settings: &Settings,
    file: &Path,
    vod: &str,
    server: Option<&str>,
    token: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !danmaku_core::model::valid_id(vod) {
        bail!("vod ids match [A-Za-z0-9_-]{{1,64}}: {vod:?}");
    }
    let token = match token {
        Some(t) => t,
        None => self::token(settings, "import", None, "service", "1h")?,
    };
    let server = server.unwrap_or(&settings.server.listen);
    let authority = server
        .strip_prefix("http://")
        .unwrap_or(server)
        .trim_end_matches('/');
    if authority.contains('/') || server.starts_with("https://") {
        bail!("--server is http://host:port (a node, or a proxy in front of one), not {server:?}");
    }
    let mut doc = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let len = doc.metadata().await?.len();
    let mut conn = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let head = format!(
        "POST /v1/vods/{vod}/import HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/xml\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    // The server may answer early (a refusal) and stop reading: its answer
    // still comes back.
    let sent = tokio::io::copy(&mut doc, &mut conn).await;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .await
        .context("reading the answer")?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from {authority}"))?;
    let status = head.split(' ').nth(1).unwrap_or("?");
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|_| body.into());
    if status != "200" {
        bail!("import refused: HTTP {status} {json}");
    }
    sent.context("sending the document")?;
    Ok(json)
}

/// Overrides of `serve`'s flags on top of the loaded settings.
pub fn apply_serve_flags(
    settings: &mut Settings,
    listen: Option<String>,
    data_dir: Option<&Path>,
    roles: Option<Vec<String>>,
) -> anyhow::Result<()> {
    if let Some(l) = listen {
        settings.server.listen = l;
    }
    if let Some(d) = data_dir {
        settings.server.data_dir = d.to_path_buf();
    }
    if let Some(r) = roles {
        check_roles(&r)?;
        settings.server.roles = r;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units_and_overflow() {
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("7d").unwrap(), 604_800);
        assert!(parse_ttl("3w").is_err());
        assert!(parse_ttl("99999999999999999d").is_err());
    }

    #[test]
    fn roles_are_checked() {
        assert!(check_roles(&["live".into(), "archive".into()]).is_ok());
        assert!(check_roles(&["all".into()]).is_ok());
        assert!(check_roles(&["web".into()]).is_err());
    }
}
