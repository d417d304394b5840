//! The object-store conformance suite (`danmaku_core::object_store_suite!`, one
//! test per guarantee) on the local filesystem (`archive.url` empty, a plain path,
//! and `file://`) and on S3, against moto's S3 server on loopback
//! (`testkit::S3Server`; or the server named by `DANMAKU_TEST_S3`). Without moto
//! installed the S3 tests fail, saying how to install it.

use danmaku_core::ports::ObjectStore;
use danmaku_object_store::testkit::S3Server;
use futures::TryStreamExt;
use std::sync::Arc;

/// A fresh local store: `<data dir>/archive`, as with `archive.url` empty.
async fn local_default() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store = danmaku_object_store::open_url("", dir.path()).unwrap();
    (dir, store)
}

/// A fresh local store named by a `file://` URL.
async fn local_file_url() -> (tempfile::TempDir, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("objects").display());
    let store = danmaku_object_store::open_url(&url, std::path::Path::new("/nonexistent")).unwrap();
    (dir, store)
}

/// A fresh prefix of moto's bucket, opened through `archive.url = s3://…`.
async fn s3() -> (S3Server, Arc<dyn ObjectStore>) {
    let server = S3Server::start();
    let store = server.store(&S3Server::fresh_prefix("conformance"));
    (server, store)
}

danmaku_core::object_store_suite!(local_fs, local_default);
danmaku_core::object_store_suite!(local_fs_file_url, local_file_url);
danmaku_core::object_store_suite!(
    #[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
    s3_moto,
    s3
);

/// An S3 store opened at a prefix keeps every object under that prefix of the
/// bucket, and its paths are relative to it.
#[tokio::test]
#[ignore = "needs moto (bash infra/dev/test.sh installs it)"]
async fn an_s3_store_at_a_prefix_stays_under_it() {
    let server = S3Server::start();
    let prefix = S3Server::fresh_prefix("kit");
    let store = server.store(&prefix);
    let a = "date=2025-11-24/hour=16/part-1.parquet";
    let b = "date=2025-11-24/hour=16/part-2.parquet";
    store.put(a, "hello".into()).await.unwrap();
    store.put(b, "world!".into()).await.unwrap();
    let whole = server.store("");
    let mut all: Vec<String> = whole
        .list(&prefix)
        .map_ok(|m| m.path)
        .try_collect()
        .await
        .unwrap();
    all.sort();
    assert_eq!(all, vec![format!("{prefix}/{a}"), format!("{prefix}/{b}")]);
    assert_eq!(
        &whole.get(&format!("{prefix}/{b}")).await.unwrap()[..],
        b"world!"
    );
    let mine: Vec<String> = store
        .list("")
        .map_ok(|m| m.path)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|p| p.starts_with("date=")), "{mine:?}");
    store.delete_many(vec![a.into(), b.into()]).await.unwrap();
    assert!(whole
        .list(&prefix)
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .is_empty());
}
