//! [`FailingDeletes`]: an object store wrapper for crash tests of compaction.

use async_trait::async_trait;
use bytes::Bytes;
use danmaku_core::ports::{ObjectMeta, ObjectStore, ObjectStoreError};
use futures::stream::BoxStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An object store whose deletes (single and bulk) fail while `fail_deletes` is
/// set: a compaction that "crashes" after writing its output and before
/// removing its inputs. Everything else goes to `inner`.
pub struct FailingDeletes {
    pub inner: Arc<dyn ObjectStore>,
    pub fail_deletes: AtomicBool,
}

impl FailingDeletes {
    fn simulated_crash(&self) -> Result<(), ObjectStoreError> {
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(ObjectStoreError::Unavailable {
                source: "simulated crash before the deletes".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FailingDeletes {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ObjectStoreError> {
        self.inner.put(path, bytes).await
    }
    async fn put_multipart(
        &self,
        path: &str,
        bytes: Bytes,
        part_bytes: usize,
    ) -> Result<(), ObjectStoreError> {
        self.inner.put_multipart(path, bytes, part_bytes).await
    }
    async fn get(&self, path: &str) -> Result<Bytes, ObjectStoreError> {
        self.inner.get(path).await
    }
    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, ObjectStoreError> {
        self.inner.get_range(path, range).await
    }
    async fn head(&self, path: &str) -> Result<ObjectMeta, ObjectStoreError> {
        self.inner.head(path).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, ObjectStoreError>> {
        self.inner.list(prefix)
    }
    async fn delete(&self, path: &str) -> Result<(), ObjectStoreError> {
        self.simulated_crash()?;
        self.inner.delete(path).await
    }
    async fn delete_many(&self, paths: Vec<String>) -> Result<(), ObjectStoreError> {
        self.simulated_crash()?;
        // The inner store's own bulk delete (on S3 one request per 1,000 keys).
        self.inner.delete_many(paths).await
    }
}
