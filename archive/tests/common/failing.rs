//! [`FailingDeletes`]: an object store wrapper for crash tests of compaction.

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An object store whose deletes (single and bulk) fail while `fail_deletes` is
/// set: a compaction that "crashes" after writing its output and before
/// removing its inputs. Everything else goes to `inner`.
#[derive(Debug)]
pub struct FailingDeletes {
    pub inner: Arc<dyn ObjectStore>,
    pub fail_deletes: AtomicBool,
}

impl std::fmt::Display for FailingDeletes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailingDeletes({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FailingDeletes {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "test",
                source: "simulated crash before the deletes".into(),
            });
        }
        self.inner.delete(location).await
    }
    fn delete_stream<'a>(
        &'a self,
        locations: BoxStream<'a, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'a, object_store::Result<ObjectPath>> {
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Box::pin(locations.and_then(|_| async {
                Err::<ObjectPath, _>(object_store::Error::Generic {
                    store: "test",
                    source: "simulated crash before the deletes".into(),
                })
            }));
        }
        // The inner store's own bulk delete (on S3 one request per 1,000 keys).
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}
