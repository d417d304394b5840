//! The command line's work apart from serving: loading the settings (file then
//! `DANMAKU_*` environment), printing a signed token, printing the effective
//! configuration, and the archive maintenance commands. `src/main.rs` parses the
//! flags and calls these.

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
