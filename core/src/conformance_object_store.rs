//! The conformance suite of the [`ObjectStore`] port: one async function per
//! guarantee, each panicking with the guarantee it found broken, and the
//! [`object_store_suite!`](crate::object_store_suite) macro that turns them into
//! one named test each in an adapter's tests. Every case works under its own
//! random prefix, so the suite can run against a bucket other tests share.

use crate::ports::{ObjectStore, ObjectStoreErrorKind};
use bytes::Bytes;
use futures::TryStreamExt;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

/// Generates one `#[tokio::test]` per object-store guarantee, in a module `$name`.
/// `$fixture` is an async function returning `(guard, Arc<dyn ObjectStore>)`: a
/// fresh store, and whatever must live as long as it (a temporary directory, a
/// server); it is resolved from inside the module (`use super::*` is in scope).
///
/// ```text
/// async fn local() -> (tempfile::TempDir, Arc<dyn ObjectStore>) { ... }
/// danmaku_core::object_store_suite!(local_fs, local);
/// ```
#[macro_export]
macro_rules! object_store_suite {
    ($(#[$attr:meta])* $name:ident, $fixture:path) => {
        $crate::object_store_suite!(@module [$(#[$attr])*] $name, $fixture;
            put_then_get_returns_the_bytes,
            put_replaces_an_object_whole,
            readers_never_see_a_partial_put,
            a_multipart_put_appears_whole_only_when_complete,
            get_range_and_head_read_one_object,
            missing_objects_are_not_found,
            deleting_a_missing_object_succeeds,
            delete_many_removes_each_and_ignores_the_missing,
            list_gives_everything_under_a_prefix_and_nothing_else,
            the_empty_prefix_lists_every_object,
        );
    };
    (@test [$(#[$attr:meta])*] $fixture:path; $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $case() {
            let (_guard, store) = $fixture().await;
            $crate::conformance_object_store::$case(&*store).await;
        }
    };
    (@module $attrs:tt $name:ident, $fixture:path; $($case:ident),* $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                $crate::object_store_suite!(@test $attrs $fixture; $case);
            )*
        }
    };
}

/// A directory no other case (or run) uses.
fn unique_dir(name: &str) -> String {
    format!("conformance-{name}-{:08x}", rand::random::<u32>())
}

/// `len` bytes of a pattern that differs with `seed`, so two payloads of one
/// length never compare equal and a splice of two would be caught.
fn payload(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 32) as u8
                ^ seed
        })
        .collect::<Vec<u8>>()
        .into()
}

async fn list_paths(store: &dyn ObjectStore, prefix: &str) -> BTreeSet<String> {
    store
        .list(prefix)
        .map_ok(|m| m.path)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"))
}

/// `put` stores the bytes as given; `get` and `head` give them back, an empty
/// object included, at the path as given (Hive-style `key=value` segments).
pub async fn put_then_get_returns_the_bytes(store: &dyn ObjectStore) {
    let dir = unique_dir("put");
    let path = format!("{dir}/date=2025-11-24/hour=16/part-00000000000000000001.parquet");
    let bytes = payload(70_000, 1);
    store.put(&path, bytes.clone()).await.expect("put");
    assert!(
        store.get(&path).await.expect("get") == bytes,
        "get returns what put wrote"
    );
    assert_eq!(
        store.head(&path).await.expect("head").size,
        bytes.len() as u64
    );
    let listed: Vec<_> = store.list(&dir).try_collect().await.expect("list");
    assert_eq!(listed.len(), 1, "one object listed: {listed:?}");
    assert_eq!(
        listed[0].path, path,
        "the listed path is the path given to put"
    );
    assert_eq!(listed[0].size, bytes.len() as u64, "the listed size");

    let empty = format!("{dir}/empty");
    store.put(&empty, Bytes::new()).await.expect("put empty");
    assert!(store.get(&empty).await.expect("get empty").is_empty());
    assert_eq!(store.head(&empty).await.expect("head empty").size, 0);
}

/// A `put` over an existing object replaces it whole, whatever the sizes.
pub async fn put_replaces_an_object_whole(store: &dyn ObjectStore) {
    let path = format!("{}/object", unique_dir("replace"));
    let (long, short) = (payload(100_000, 2), payload(1_000, 3));
    store.put(&path, long).await.expect("put");
    store.put(&path, short.clone()).await.expect("put again");
    assert!(
        store.get(&path).await.expect("get") == short,
        "the second put wins whole"
    );
    assert_eq!(
        store.head(&path).await.expect("head").size,
        short.len() as u64
    );
    // The same bytes again (a retried put) change nothing.
    store.put(&path, short.clone()).await.expect("retried put");
    assert!(store.get(&path).await.expect("get") == short);
}

/// While `put`s replace an object, every read gives one whole version, and a
/// listing shows the one object only (no temporary files).
pub async fn readers_never_see_a_partial_put(store: &dyn ObjectStore) {
    let dir = unique_dir("atomic");
    let path = format!("{dir}/object");
    let versions = [payload(600_000, 4), payload(400_000, 5)];
    store.put(&path, versions[0].clone()).await.expect("put");
    let done = AtomicBool::new(false);
    let writer = async {
        for i in 0..12 {
            store
                .put(&path, versions[i % 2].clone())
                .await
                .expect("put while read");
        }
        done.store(true, Ordering::SeqCst);
    };
    let reader = async {
        let mut reads = 0;
        while !done.load(Ordering::SeqCst) || reads == 0 {
            let got = store.get(&path).await.expect("get while written");
            assert!(
                versions.contains(&got),
                "a read saw a partial or mixed object ({} bytes)",
                got.len()
            );
            assert_eq!(
                list_paths(store, &dir).await,
                BTreeSet::from([path.clone()]),
                "a listing shows only whole objects"
            );
            reads += 1;
        }
    };
    futures::future::join(writer, reader).await;
}

/// A `put_multipart` shows nothing of the new object until it is complete, then
/// the whole of it; it leaves no part or temporary object behind.
pub async fn a_multipart_put_appears_whole_only_when_complete(store: &dyn ObjectStore) {
    let dir = unique_dir("multipart");
    let path = format!("{dir}/date=2025-11-24/hour=16/compacted-big.parquet");
    let old = payload(1_000, 6);
    store.put(&path, old.clone()).await.expect("put");
    // 11 MiB in 5 MiB parts (S3's smallest but the last): three parts.
    let part = 5 << 20;
    let big = payload((11 << 20) + 123, 7);
    let done = AtomicBool::new(false);
    let writer = async {
        store
            .put_multipart(&path, big.clone(), part)
            .await
            .expect("multipart put");
        done.store(true, Ordering::SeqCst);
    };
    let reader = async {
        while !done.load(Ordering::SeqCst) {
            let got = store.get(&path).await.expect("get during the upload");
            assert!(
                got == old || got == big,
                "a read during a multipart upload saw neither the old nor the whole new object ({} bytes)",
                got.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    futures::future::join(writer, reader).await;
    assert!(
        store.get(&path).await.expect("get") == big,
        "reads back whole"
    );
    assert_eq!(
        store.head(&path).await.expect("head").size,
        big.len() as u64
    );
    // Overwriting in parts replaces the object whole too.
    let other = payload((10 << 20) + 7, 8);
    store
        .put_multipart(&path, other.clone(), part)
        .await
        .expect("multipart overwrite");
    assert!(
        store.get(&path).await.expect("get") == other,
        "multipart overwrite"
    );
    assert_eq!(
        list_paths(store, &dir).await,
        BTreeSet::from([path]),
        "no part or temporary object left"
    );
}

/// `get_range` gives exactly the bytes asked for; `head` gives the size, the
/// same every time while nobody writes.
pub async fn get_range_and_head_read_one_object(store: &dyn ObjectStore) {
    let path = format!("{}/object", unique_dir("range"));
    let bytes = payload(10_000, 9);
    store.put(&path, bytes.clone()).await.expect("put");
    for range in [0..8u64, 1_234..5_678, 9_992..10_000, 0..10_000] {
        let got = store
            .get_range(&path, range.clone())
            .await
            .unwrap_or_else(|e| panic!("get_range {range:?}: {e}"));
        let want = bytes.slice(range.start as usize..range.end as usize);
        assert!(got == want, "get_range {range:?} gives those bytes");
    }
    let meta = store.head(&path).await.expect("head");
    assert_eq!(meta.size, bytes.len() as u64);
    assert_eq!(
        store.head(&path).await.expect("head again"),
        meta,
        "head is stable"
    );
}

/// `get`, `get_range` and `head` of a missing object fail as `NotFound`, with
/// the store's own error kept as the source.
pub async fn missing_objects_are_not_found(store: &dyn ObjectStore) {
    let dir = unique_dir("missing");
    let path = format!("{dir}/date=2020-01-01/hour=00/none.parquet");
    let errors = [
        ("get", store.get(&path).await.map(|_| ())),
        ("get_range", store.get_range(&path, 0..4).await.map(|_| ())),
        ("head", store.head(&path).await.map(|_| ())),
    ];
    for (call, result) in errors {
        let err = result.expect_err(call);
        assert_eq!(err.kind(), ObjectStoreErrorKind::NotFound, "{call}: {err}");
        assert!(err.is_not_found());
        assert!(
            std::error::Error::source(&err).is_some(),
            "{call}: the cause is kept"
        );
    }
    // Deleted objects are missing too.
    store.put(&path, payload(10, 10)).await.expect("put");
    store.delete(&path).await.expect("delete");
    let err = store.get(&path).await.expect_err("get after delete");
    assert_eq!(err.kind(), ObjectStoreErrorKind::NotFound, "{err}");
}

/// `delete` removes an object, and deleting one that is not there (again, or
/// never written) succeeds.
pub async fn deleting_a_missing_object_succeeds(store: &dyn ObjectStore) {
    let dir = unique_dir("delete");
    let path = format!("{dir}/object");
    store
        .delete(&format!("{dir}/never-written"))
        .await
        .expect("deleting a missing object is Ok");
    store.put(&path, payload(100, 11)).await.expect("put");
    store.delete(&path).await.expect("delete");
    assert!(list_paths(store, &dir).await.is_empty(), "deleted");
    store.delete(&path).await.expect("deleting again is Ok");
}

/// `delete_many` removes every object named, ignores the missing ones, and
/// leaves the others.
pub async fn delete_many_removes_each_and_ignores_the_missing(store: &dyn ObjectStore) {
    let dir = unique_dir("delete-many");
    let names: Vec<String> = (0..5).map(|i| format!("{dir}/hour=16/part-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        store.put(name, payload(10, i as u8)).await.expect("put");
    }
    let doomed = vec![
        names[0].clone(),
        names[2].clone(),
        format!("{dir}/hour=16/missing"),
        names[4].clone(),
    ];
    store.delete_many(doomed).await.expect("delete_many");
    assert_eq!(
        list_paths(store, &dir).await,
        BTreeSet::from([names[1].clone(), names[3].clone()]),
        "exactly the named objects are gone"
    );
    store
        .delete_many(Vec::new())
        .await
        .expect("nothing to delete");
}

/// `list(prefix)` gives every object under the directory `prefix` at any depth
/// and nothing else: whole segments only, nothing for a missing directory.
pub async fn list_gives_everything_under_a_prefix_and_nothing_else(store: &dyn ObjectStore) {
    let dir = unique_dir("list");
    let under_1_16 = [
        format!("{dir}/date=1/hour=16/part-1.parquet"),
        format!("{dir}/date=1/hour=16/part-2.parquet"),
    ];
    let under_1_17 = format!("{dir}/date=1/hour=17/part-3.parquet");
    let others = [
        format!("{dir}/date=10/hour=16/part-4.parquet"),
        format!("{dir}/date=1x"),
        format!("{dir}/date=1/hour=160/part-5.parquet"),
    ];
    for (i, path) in under_1_16
        .iter()
        .chain([&under_1_17])
        .chain(&others)
        .enumerate()
    {
        store
            .put(path, payload(100 + i, i as u8))
            .await
            .expect("put");
    }
    assert_eq!(
        list_paths(store, &format!("{dir}/date=1/hour=16")).await,
        BTreeSet::from(under_1_16.clone()),
        "one directory"
    );
    let mut date_1: BTreeSet<String> = under_1_16.iter().cloned().collect();
    date_1.insert(under_1_17);
    date_1.insert(others[2].clone());
    assert_eq!(
        list_paths(store, &format!("{dir}/date=1")).await,
        date_1,
        "every depth, whole segments only"
    );
    let metas: Vec<_> = store
        .list(&format!("{dir}/date=1/hour=16"))
        .try_collect()
        .await
        .expect("list");
    for meta in metas {
        let i = under_1_16.iter().position(|p| *p == meta.path).unwrap();
        assert_eq!(meta.size, 100 + i as u64, "listed size of {}", meta.path);
    }
    assert!(
        list_paths(store, &format!("{dir}/date=2")).await.is_empty(),
        "a missing directory lists nothing"
    );
}

/// `list("")` gives every object of the store.
pub async fn the_empty_prefix_lists_every_object(store: &dyn ObjectStore) {
    let dir = unique_dir("root");
    let paths: BTreeSet<String> = (0..3).map(|i| format!("{dir}/a/{i}")).collect();
    for path in &paths {
        store.put(path, payload(10, 1)).await.expect("put");
    }
    let mine: BTreeSet<String> = list_paths(store, "")
        .await
        .into_iter()
        .filter(|p| p.starts_with(&format!("{dir}/")))
        .collect();
    assert_eq!(mine, paths);
}
