//! The ReplayCache suite: what [`ReplayCache`] promises, one function per
//! guarantee, run by [`crate::replay_cache_suite!`].

use super::unique;
use crate::ports::{CachedBody, ReplayCache};
use bytes::Bytes;
use std::time::Duration;

/// Expands to one `#[tokio::test]` per ReplayCache guarantee; see
/// [`crate::conformance`].
#[macro_export]
macro_rules! replay_cache_suite {
    ($(#[$attr:meta])* $name:ident $(($($rt:tt)*))?, $make:expr $(,)?) => {
        $crate::__conformance_cases!(one replay_cache [$(#[$attr])*] $name ($($($rt)*)?) ($make) [
            a_get_returns_the_last_put
            invalidate_removes_an_entry
            entries_expire_after_their_ttl
        ]);
    };
}

fn body(text: &'static [u8], etag: &str) -> CachedBody {
    CachedBody {
        body: Bytes::from_static(text),
        gzip: Bytes::from_static(b"gz"),
        etag: etag.into(),
    }
}

/// A miss before any put; then what the last put of the key stored.
pub async fn a_get_returns_the_last_put(cache: &dyn ReplayCache) {
    let k = unique("k");
    let v = body(b"{\"items\":[]}", "\"abc\"");
    assert_eq!(cache.get(&k).await, None);
    cache.put(&k, v.clone(), Duration::from_secs(60)).await;
    assert_eq!(cache.get(&k).await, Some(v));
    let w = body(b"{\"items\":[1]}", "\"def\"");
    cache.put(&k, w.clone(), Duration::from_secs(60)).await;
    assert_eq!(cache.get(&k).await, Some(w), "a put replaces the entry");
    assert_eq!(cache.get(&unique("other")).await, None);
}

/// An invalidated entry is gone; other keys stay.
pub async fn invalidate_removes_an_entry(cache: &dyn ReplayCache) {
    let (k, other) = (unique("k"), unique("k"));
    let v = body(b"{\"items\":[]}", "\"abc\"");
    cache.put(&k, v.clone(), Duration::from_secs(60)).await;
    cache.put(&other, v.clone(), Duration::from_secs(60)).await;
    cache.invalidate(&k).await;
    assert_eq!(cache.get(&k).await, None);
    assert_eq!(cache.get(&other).await, Some(v));
    cache.invalidate(&unique("never")).await;
}

/// Entries expire after their ttl.
pub async fn entries_expire_after_their_ttl(cache: &dyn ReplayCache) {
    let k = unique("k");
    cache
        .put(&k, body(b"{}", "\"e\""), Duration::from_millis(50))
        .await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cache.get(&k).await, None, "entries expire after their ttl");
}
