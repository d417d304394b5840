//! Which store `archive.url` names:
//!
//! - empty: `<data dir>/archive` on the local filesystem;
//! - `file:///path` or a plain path: that local directory;
//! - `s3://bucket/prefix`: an S3 bucket (AWS or any S3-compatible server: MinIO,
//!   Ceph, moto), every object under `prefix/`. The `archive.s3_*` settings pick
//!   the endpoint, region and request style; credentials come only from the
//!   standard `AWS_*` environment variables (`AWS_ACCESS_KEY_ID`,
//!   `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...) or, without them, from the
//!   instance's or container's role, so no secret sits in the configuration file.

use crate::ObjectStoreAdapter;
use danmaku_core::config::ArchiveSettings;
use danmaku_core::ports::ObjectStore as Port;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;
use std::path::Path;
use std::sync::Arc;

/// Why an object store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `archive.url` has a scheme this build does not open.
    #[error("unsupported archive.url {0:?}: use s3://bucket/prefix, file:///path or a plain path")]
    Unsupported(String),
    /// `archive.url` is an `s3://` URL that does not name a usable bucket and prefix.
    #[error("invalid archive.url {url:?}: {reason}")]
    InvalidUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The local directory could not be created or opened.
    #[error("cannot open {0}: {1}")]
    Open(String, String),
    /// The S3 client could not be configured (a bad `archive.s3_*` setting or
    /// `AWS_*` variable).
    #[error(
        "cannot open archive.url {url:?} (check archive.s3_* and the AWS_* variables): {message}"
    )]
    S3 {
        /// The configured URL.
        url: String,
        /// What the S3 client said.
        message: String,
    },
}

/// Opens the store named by `url` (`s3://bucket/prefix`, `file:///path`, or a
/// plain path; empty means `<data_dir>/archive`), with the default `archive.s3_*`
/// settings. Same as [`open()`] with only `url` set.
pub fn open_url(url: &str, data_dir: &Path) -> Result<Arc<dyn Port>, OpenError> {
    let settings = ArchiveSettings {
        url: url.to_string(),
        ..ArchiveSettings::default()
    };
    open(&settings, data_dir)
}

/// Opens the store named by `archive.url` with the `archive.s3_*` settings; an
/// `s3://` store also reads the process's `AWS_*` environment variables.
pub fn open(settings: &ArchiveSettings, data_dir: &Path) -> Result<Arc<dyn Port>, OpenError> {
    open_with_env(settings, data_dir, std::env::vars())
}

/// [`open()`] with the `AWS_*` variables taken from `env` instead of the process
/// environment (other names are ignored); for tests and embedders that hold
/// credentials themselves. The `archive.s3_*` settings, when set, win over the
/// variables.
pub fn open_with_env(
    settings: &ArchiveSettings,
    data_dir: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Arc<dyn Port>, OpenError> {
    let store = open_store(settings, data_dir, env)?;
    Ok(Arc::new(ObjectStoreAdapter::new(store)))
}

/// The `object_store` store `archive.url` names.
fn open_store(
    settings: &ArchiveSettings,
    data_dir: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let url = settings.url.as_str();
    if url.is_empty() {
        return local(&data_dir.join("archive"));
    }
    if let Some(p) = url.strip_prefix("file://") {
        return local(Path::new(p));
    }
    if url.starts_with("s3://") {
        let (bucket, prefix) = parse_s3_url(url)?;
        let s3 = s3_builder(settings, &bucket, env)
            .build()
            .map_err(|e| OpenError::S3 {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        return Ok(match prefix {
            Some(prefix) => Arc::new(PrefixStore::new(s3, prefix)),
            None => Arc::new(s3),
        });
    }
    if url.contains("://") {
        return Err(OpenError::Unsupported(url.to_string()));
    }
    local(Path::new(url))
}

/// A local directory, created if missing.
fn local(path: &Path) -> Result<Arc<dyn ObjectStore>, OpenError> {
    let open_err =
        |e: &dyn std::fmt::Display| OpenError::Open(path.display().to_string(), e.to_string());
    std::fs::create_dir_all(path).map_err(|e| open_err(&e))?;
    let fs = LocalFileSystem::new_with_prefix(path).map_err(|e| open_err(&e))?;
    Ok(Arc::new(fs))
}

/// The bucket and the key prefix (`None` for the bucket's root) of an
/// `s3://bucket[/prefix]` URL. Pure.
fn parse_s3_url(url: &str) -> Result<(String, Option<ObjectPath>), OpenError> {
    let invalid = |reason: &str| OpenError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| invalid("not s3://"))?;
    if rest.contains(['?', '#']) {
        return Err(invalid(
            "no query or fragment allowed: use s3://bucket/prefix and the archive.s3_* settings",
        ));
    }
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("no bucket: use s3://bucket/prefix"));
    }
    if bucket.contains('@') || bucket.contains(':') {
        return Err(invalid(
            "the bucket is a plain name: put credentials in AWS_* variables and the endpoint in archive.s3_endpoint",
        ));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(invalid(
            "a bucket name is letters, digits, '.', '-' and '_' only",
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok((bucket.to_string(), None));
    }
    let path = ObjectPath::parse(prefix).map_err(|e| invalid(&format!("bad prefix: {e}")))?;
    Ok((bucket.to_string(), Some(path)))
}

/// The S3 client configuration: the `AWS_*` variables of `env` (as
/// `AmazonS3Builder::from_env` reads them), then the non-empty `archive.s3_*`
/// settings over them. Pure.
fn s3_builder(
    settings: &ArchiveSettings,
    bucket: &str,
    env: impl IntoIterator<Item = (String, String)>,
) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::new();
    for (key, value) in env {
        if key.starts_with("AWS_") {
            if let Ok(config_key) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(config_key, value);
            }
        }
    }
    builder = builder.with_bucket_name(bucket);
    if !settings.s3_endpoint.is_empty() {
        builder = builder.with_endpoint(settings.s3_endpoint.trim_end_matches('/'));
    }
    if !settings.s3_region.is_empty() {
        builder = builder.with_region(&settings.s3_region);
    }
    if settings.s3_allow_http {
        builder = builder.with_allow_http(true);
    }
    if settings.s3_virtual_hosted {
        builder = builder.with_virtual_hosted_style_request(true);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ClientConfigKey;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn s3_urls_parse_into_bucket_and_prefix() {
        let ok = |url: &str| parse_s3_url(url).unwrap();
        assert_eq!(ok("s3://bucket"), ("bucket".to_string(), None));
        assert_eq!(ok("s3://bucket/"), ("bucket".to_string(), None));
        assert_eq!(
            ok("s3://my-bucket.v2/danmaku/archive/"),
            (
                "my-bucket.v2".to_string(),
                Some(ObjectPath::from("danmaku/archive"))
            )
        );
        assert_eq!(ok("s3://b/p").1.unwrap().as_ref(), "p");
        for bad in [
            "s3://",
            "s3:///prefix",
            "s3://user:secret@bucket/p",
            "s3://bucket?region=x",
            "s3://bucket/p#frag",
            "s3://bu cket/p",
            "s3://bucket/a//b",
            "s3://bucket/a/../b",
        ] {
            match parse_s3_url(bad) {
                Err(e @ OpenError::InvalidUrl { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("archive.url"), "{bad}: {msg}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_schemes_and_bad_s3_urls_are_typed_errors_naming_the_key() {
        let dir = std::env::temp_dir();
        for url in ["gs://bucket/p", "http://host/p", "S3://bucket/p"] {
            let settings = ArchiveSettings {
                url: url.into(),
                ..Default::default()
            };
            let err = open_with_env(&settings, &dir, vec![])
                .err()
                .expect("an error");
            assert!(matches!(err, OpenError::Unsupported(_)), "{url}: {err:?}");
            assert!(err.to_string().contains("archive.url"), "{err}");
        }
        let settings = ArchiveSettings {
            url: "s3:///nobucket".into(),
            ..Default::default()
        };
        let err = open_with_env(&settings, &dir, vec![])
            .err()
            .expect("an error");
        assert!(
            err.to_string().contains("archive.url") && err.to_string().contains("no bucket"),
            "{err}"
        );
    }

    #[test]
    fn settings_win_over_the_environment_which_fills_the_rest() {
        let env = vars(&[
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT", "http://env-endpoint:9000"),
            ("HOME", "/root"),
            ("AWS_NOT_A_KEY", "ignored"),
        ]);
        let defaults = ArchiveSettings::default();
        let b = s3_builder(&defaults, "bkt", env.clone());
        let get = |b: &AmazonS3Builder, k: AmazonS3ConfigKey| b.get_config_value(&k);
        assert_eq!(get(&b, AmazonS3ConfigKey::Bucket).as_deref(), Some("bkt"));
        assert_eq!(
            get(&b, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKID")
        );
        assert_eq!(
            get(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            get(&b, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://env-endpoint:9000")
        );
        assert_ne!(
            get(&b, AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(),
            Some("true")
        );

        let settings = ArchiveSettings {
            url: "s3://bkt/p".into(),
            s3_endpoint: "http://127.0.0.1:9000/".into(),
            s3_region: "ap-south-1".into(),
            s3_allow_http: true,
            s3_virtual_hosted: true,
            ..Default::default()
        };
        let b = s3_builder(&settings, "bkt", env);
        assert_eq!(
            get(&b, AmazonS3ConfigKey::Endpoint).as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            get(&b, AmazonS3ConfigKey::Region).as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            get(&b, AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)).as_deref(),
            Some("true")
        );
        assert_eq!(
            get(&b, AmazonS3ConfigKey::VirtualHostedStyleRequest).as_deref(),
            Some("true")
        );
        // The bucket of the URL wins over AWS_BUCKET.
        let b = s3_builder(&settings, "bkt", vars(&[("AWS_BUCKET", "other")]));
        assert_eq!(get(&b, AmazonS3ConfigKey::Bucket).as_deref(), Some("bkt"));
    }

    #[test]
    fn an_s3_url_opens_without_network_and_local_paths_still_work() {
        let settings = ArchiveSettings {
            url: "s3://bkt/some/prefix".into(),
            s3_endpoint: "http://127.0.0.1:1".into(),
            s3_allow_http: true,
            ..Default::default()
        };
        let env = vars(&[("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")]);
        let store = open_store(&settings, Path::new("/nonexistent"), env).unwrap();
        assert_eq!(store.to_string(), "PrefixObjectStore(some/prefix)");

        let dir = tempfile::tempdir().unwrap();
        open_url("", dir.path()).unwrap();
        assert!(dir.path().join("archive").is_dir());
        let sub = dir.path().join("elsewhere");
        open_url(&format!("file://{}", sub.display()), dir.path()).unwrap();
        assert!(sub.is_dir());
    }
}
