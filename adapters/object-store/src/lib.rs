//! The archive's object store through the `object_store` crate: a local
//! directory or an S3 bucket (AWS or any S3-compatible server: MinIO, Ceph, moto)
//! behind danmaku-core's [`ObjectStore`] port.
//!
//! - This file: [`ObjectStoreAdapter`], the port over any `object_store` store, and
//!   how its errors map to the port's kinds.
//! - [`open`](mod@open): which store `archive.url` names, with the `archive.s3_*`
//!   settings and the `AWS_*` environment ([`open()`], [`open_url`],
//!   [`open_with_env`]).
//! - [`testkit`] (feature `testkit`): moto's S3 server on a free loopback port,
//!   for tests.
//!
//! How the port's guarantees hold here: a local `put` writes a temporary file
//! (`<name>#<n>`, which listings skip) and renames it into place; an S3 `put` is a
//! single PUT, atomic by S3's rules. `put_multipart` is a local staged file renamed
//! on completion, or an S3 multipart upload, which S3 makes visible only when it
//! completes and which is aborted again if a part fails. Deleting a missing object
//! is success on S3; the local store's `NotFound` is turned into success here.

mod open;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

pub use open::{open, open_url, open_with_env, OpenError};

use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::ports::{ObjectMeta, ObjectStore, ObjectStoreError};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::PutPayload;
use std::ops::Range;
use std::sync::Arc;

/// Parts of one multipart upload in flight at once.
const MULTIPART_CONCURRENCY: usize = 4;

/// The [`ObjectStore`] port over a store of the `object_store` crate. Paths are
/// parsed as `object_store` paths (`/`-separated segments), as the archive always
/// named its objects.
#[derive(Clone, Debug)]
pub struct ObjectStoreAdapter {
    inner: Arc<dyn object_store::ObjectStore>,
}

impl ObjectStoreAdapter {
    /// Wraps `inner` (any `object_store` store: local, S3, in-memory, prefixed).
    pub fn new(inner: Arc<dyn object_store::ObjectStore>) -> Self {
        Self { inner }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn object_store::ObjectStore> {
        &self.inner
    }
}

impl std::fmt::Display for ObjectStoreAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// The port's error for an `object_store` error about `path`. `Generic` (network,
/// timeouts, server errors, local I/O) and a failed blocking task are the ones a
/// retry may cure; refusals, bad paths and unsupported calls are not.
fn port_error(path: &str, e: object_store::Error) -> ObjectStoreError {
    match e {
        object_store::Error::NotFound { .. } => ObjectStoreError::NotFound {
            path: path.to_string(),
            source: Box::new(e),
        },
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            ObjectStoreError::Unavailable {
                source: Box::new(e),
            }
        }
        _ => ObjectStoreError::Other {
            source: Box::new(e),
        },
    }
}

fn port_meta(meta: object_store::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        path: meta.location.to_string(),
        size: meta.size,
        e_tag: meta.e_tag,
    }
}

#[async_trait]
impl ObjectStore for ObjectStoreAdapter {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ObjectStoreError> {
        self.inner
            .put(&ObjectPath::from(path), PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| port_error(path, e))
    }

    async fn put_multipart(
        &self,
        path: &str,
        bytes: Bytes,
        part_bytes: usize,
    ) -> Result<(), ObjectStoreError> {
        let location = ObjectPath::from(path);
        let part_bytes = part_bytes.max(1);
        let mut upload = self
            .inner
            .put_multipart(&location)
            .await
            .map_err(|e| port_error(path, e))?;
        let parts: Vec<_> = (0..bytes.len().max(1))
            .step_by(part_bytes)
            .map(|at| {
                let end = (at + part_bytes).min(bytes.len());
                upload.put_part(PutPayload::from(bytes.slice(at..end)))
            })
            .collect();
        let uploaded: Result<(), object_store::Error> = futures::stream::iter(parts)
            .buffer_unordered(MULTIPART_CONCURRENCY)
            .try_collect()
            .await;
        let done = match uploaded {
            Ok(()) => upload.complete().await.map(|_| ()),
            Err(e) => Err(e),
        };
        if done.is_err() {
            // Leave no parts behind (S3 keeps and bills an unfinished upload's parts).
            if let Err(e) = upload.abort().await {
                tracing::warn!(location = %location, error = %e, "aborting a failed multipart upload");
            }
        }
        done.map_err(|e| port_error(path, e))
    }

    async fn get(&self, path: &str) -> Result<Bytes, ObjectStoreError> {
        let got = self
            .inner
            .get(&ObjectPath::from(path))
            .await
            .map_err(|e| port_error(path, e))?;
        got.bytes().await.map_err(|e| port_error(path, e))
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, ObjectStoreError> {
        self.inner
            .get_range(&ObjectPath::from(path), range)
            .await
            .map_err(|e| port_error(path, e))
    }

    async fn head(&self, path: &str) -> Result<ObjectMeta, ObjectStoreError> {
        self.inner
            .head(&ObjectPath::from(path))
            .await
            .map(port_meta)
            .map_err(|e| port_error(path, e))
    }

    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, ObjectStoreError>> {
        let location = (!prefix.is_empty()).then(|| ObjectPath::from(prefix));
        let prefix = prefix.to_string();
        self.inner
            .list(location.as_ref())
            .map(move |r| r.map(port_meta).map_err(|e| port_error(&prefix, e)))
            .boxed()
    }

    async fn delete(&self, path: &str) -> Result<(), ObjectStoreError> {
        match self.inner.delete(&ObjectPath::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(port_error(path, e)),
        }
    }

    async fn delete_many(&self, paths: Vec<String>) -> Result<(), ObjectStoreError> {
        let locations = paths.iter().map(|p| Ok(ObjectPath::from(p.as_str())));
        // The store's own bulk delete: on S3 one request per 1,000 keys.
        let results: Vec<_> = self
            .inner
            .delete_stream(futures::stream::iter(locations).boxed())
            .collect()
            .await;
        for r in results {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(port_error("", e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::ports::ObjectStoreErrorKind;

    #[test]
    fn errors_map_to_the_kinds_callers_branch_on() {
        let source = || -> Box<dyn std::error::Error + Send + Sync> { "cause".into() };
        let not_found = port_error(
            "a/b",
            object_store::Error::NotFound {
                path: "/root/a/b".into(),
                source: source(),
            },
        );
        assert_eq!(not_found.kind(), ObjectStoreErrorKind::NotFound);
        assert!(not_found.to_string().contains("\"a/b\""), "{not_found}");
        let generic = object_store::Error::Generic {
            store: "S3",
            source: source(),
        };
        assert_eq!(
            port_error("a", generic).kind(),
            ObjectStoreErrorKind::Unavailable
        );
        let denied = object_store::Error::PermissionDenied {
            path: "a".into(),
            source: source(),
        };
        let denied = port_error("a", denied);
        assert_eq!(denied.kind(), ObjectStoreErrorKind::Other);
        let cause = std::error::Error::source(&denied).expect("the cause is kept");
        assert!(cause.to_string().contains("privileges"), "{cause}");
    }
}
