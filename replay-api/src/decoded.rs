//! Decoded rows kept in process, so a request reads only what it returns:
//!
//! - [`Rows`]: every comment of one segment (uncapped), sorted by
//!   `(offset_ms, id)`, each already encoded as the range API's JSON item: a range
//!   page is a binary search and a slice ([`Rows::window`]).
//! - [`DocBase`]: a VOD's DPlayer document (each segment density-capped, then at
//!   most `replay.document_max_items`), item by item with what the strict cap
//!   reads, so every `max` is cut from it ([`DocBase::dplayer`]) without reading
//!   the store again.
//! - [`Decoded`]: the bytes-bounded cache of both (`replay.rows_cache_bytes`): one
//!   entry per segment or VOD, valid for one version of the VOD (its archived
//!   and deleted counts, and whether it ended) and replaced by the next; one load per entry
//!   and version under a stampede ([`get_or_load`]).
//! - [`cold_permit`]: the bound on ArchiveStore loads and document cuts running at
//!   once (`replay.max_cold_loads`), with `503 unavailable` + `Retry-After` past it.

use crate::cache::{SingleFlight, VodMeta};
use crate::density::Capped;
use crate::{formats, Replay};
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{ArchivedComment, VodVersion};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

/// The `(offset_ms, id)` order key of an archived comment.
fn order_key(c: &ArchivedComment) -> (i64, u64) {
    (c.offset_ms, c.item.id)
}

/// About the bytes of `items` once encoded with `fixed` bytes of field names,
/// numbers and punctuation each: the buffer is sized once (doubling a buffer of
/// a 100,000-comment segment would hold both copies at once).
fn encoded_size(items: &[ArchivedComment], fixed: usize) -> usize {
    items
        .iter()
        .map(|c| {
            let d = &c.item;
            fixed + d.text.len() + d.user.len() + d.name.len() + d.room.len() + c.vod.len()
        })
        .sum()
}

/// Every comment of one segment, sorted by `(offset_ms, id)`, encoded as the
/// range API's items.
#[derive(Debug, Default)]
pub struct Rows {
    keys: Vec<(i64, u64)>,
    /// End of item `i` in `json` (it starts where item `i - 1` ends).
    ends: Vec<usize>,
    json: String,
}

impl Rows {
    /// The rows of `items` (the ArchiveStore returns them ordered; sorted here
    /// if not, so paging never depends on an adapter getting it right). Each
    /// comment is dropped once encoded, so the load holds little more than one
    /// copy of the segment at a time.
    pub fn new(mut items: Vec<ArchivedComment>) -> Self {
        if !items
            .windows(2)
            .all(|w| order_key(&w[0]) <= order_key(&w[1]))
        {
            items.sort_by_key(order_key);
        }
        let mut rows = Rows {
            keys: Vec::with_capacity(items.len()),
            ends: Vec::with_capacity(items.len()),
            json: String::with_capacity(encoded_size(&items, 170)),
        };
        for c in items {
            rows.keys.push(order_key(&c));
            rows.json.push_str(&c.item.to_json());
            rows.ends.push(rows.json.len());
        }
        rows.json.shrink_to_fit();
        rows
    }

    /// Comments held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes held (the cache's weight).
    pub fn bytes(&self) -> usize {
        self.keys.len() * std::mem::size_of::<(i64, u64)>()
            + self.ends.len() * std::mem::size_of::<usize>()
            + self.json.len()
            + std::mem::size_of::<Self>()
    }

    /// The indices of the comments with `from_ms <= offset_ms < to_ms` and
    /// `(offset_ms, id) > after`: two binary searches.
    pub fn window(&self, from_ms: i64, to_ms: i64, after: Option<(i64, u64)>) -> Range<usize> {
        let mut lo = self.keys.partition_point(|k| k.0 < from_ms);
        if let Some(a) = after {
            lo = lo.max(self.keys.partition_point(|k| *k <= a));
        }
        let hi = self.keys.partition_point(|k| k.0 < to_ms);
        lo..hi.max(lo)
    }

    /// The order key of comment `i`.
    pub fn key(&self, i: usize) -> (i64, u64) {
        self.keys[i]
    }

    /// The JSON item of comment `i`.
    pub fn item(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.json[start..self.ends[i]]
    }
}

/// One item of a [`DocBase`]: what the strict cap reads, and where its encoded
/// form lies.
#[derive(Clone, Copy, Debug)]
pub struct DocItem {
    offset_ms: i64,
    gift: bool,
    start: usize,
    end: usize,
}

impl Capped for DocItem {
    fn offset_ms(&self) -> i64 {
        self.offset_ms
    }
    fn is_gift(&self) -> bool {
        self.gift
    }
}

/// A VOD's whole-recording DPlayer document, item by item.
#[derive(Debug, Default)]
pub struct DocBase {
    items: Vec<DocItem>,
    text: String,
}

impl DocBase {
    /// The DPlayer items of `items` (already capped, in `(offset_ms, id)`
    /// order), each comment dropped once encoded.
    pub fn dplayer(items: Vec<ArchivedComment>) -> Self {
        let mut doc = DocBase {
            items: Vec::with_capacity(items.len()),
            text: String::with_capacity(encoded_size(&items, 40)),
        };
        for c in items {
            let start = doc.text.len();
            formats::dplayer_item(&mut doc.text, &c);
            doc.items.push(DocItem {
                offset_ms: c.offset_ms,
                gift: c.is_gift(),
                start,
                end: doc.text.len(),
            });
        }
        doc.text.shrink_to_fit();
        doc
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes held (the cache's weight).
    pub fn bytes(&self) -> usize {
        self.items.len() * std::mem::size_of::<DocItem>()
            + self.text.len()
            + std::mem::size_of::<Self>()
    }

    /// DPlayer's answer holding at most `max` items: the whole document when it
    /// fits, else [`crate::density::cap_strict`] of it (gifts first, the rest
    /// spread evenly). Byte for byte what [`formats::dplayer_json`] writes for
    /// the same items.
    pub fn dplayer_body(&self, max: usize) -> String {
        let picked: Vec<DocItem> = if self.items.len() <= max {
            self.items.clone()
        } else {
            crate::density::cap_strict(self.items.clone(), max)
        };
        let size: usize = picked.iter().map(|i| i.end - i.start + 1).sum();
        let mut out = String::with_capacity(size + 32);
        out.push_str(formats::DPLAYER_HEAD);
        for (n, i) in picked.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&self.text[i.start..i.end]);
        }
        out.push_str(formats::DPLAYER_TAIL);
        out
    }
}

/// What the [`Decoded`] cache holds.
#[derive(Debug)]
pub enum Data {
    Rows(Rows),
    Doc(DocBase),
}

impl Data {
    fn bytes(&self) -> usize {
        match self {
            Data::Rows(r) => r.bytes(),
            Data::Doc(d) => d.bytes(),
        }
    }
}

/// One cached value with the version of the VOD it was read at.
#[derive(Debug)]
pub struct Entry {
    version: VodVersion,
    ended: bool,
    data: Data,
}

impl Entry {
    fn fresh_for(&self, meta: &VodMeta) -> bool {
        self.version == meta.version && self.ended == meta.ended()
    }

    /// The segment rows held, if that is what this entry is.
    pub fn rows(&self) -> Option<&Rows> {
        match &self.data {
            Data::Rows(r) => Some(r),
            Data::Doc(_) => None,
        }
    }

    /// The DPlayer document held, if that is what this entry is.
    pub fn doc(&self) -> Option<&DocBase> {
        match &self.data {
            Data::Doc(d) => Some(d),
            Data::Rows(_) => None,
        }
    }
}

/// The bytes-bounded cache of decoded rows and document bases.
pub struct Decoded {
    cache: moka::future::Cache<String, Arc<Entry>>,
    flights: SingleFlight<Arc<Entry>>,
}

impl Decoded {
    /// A cache of at most `max_bytes`, each entry kept at most `ttl` after its
    /// last use (`replay.rows_idle_secs`).
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &String, v: &Arc<Entry>| v.data.bytes().min(u32::MAX as usize) as u32)
                .time_to_idle(ttl)
                .build(),
            flights: SingleFlight::default(),
        }
    }

    /// Drops the entries unused for their idle time now. The cache only does so
    /// when it is used; after a spike nobody may use it again.
    pub async fn sweep(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Bytes held (weighed as for the bound).
    pub fn bytes(&self) -> u64 {
        self.cache.weighted_size()
    }
}

/// The entry `key` at the version of `meta`: cached, or loaded once (per node,
/// however many ask at once) under a [`cold_permit`], then cached in place of
/// any older version.
pub async fn get_or_load<F, Fut>(
    r: &Replay,
    key: String,
    meta: &VodMeta,
    load: F,
) -> Result<Arc<Entry>, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Data, ApiError>>,
{
    let d = &r.decoded;
    if let Some(e) = d.cache.get(&key).await {
        if e.fresh_for(meta) {
            return Ok(e);
        }
    }
    let flight = format!("{key}@{}:{}", meta.version.token(), meta.ended());
    d.flights
        .run(&flight, async {
            if let Some(e) = d.cache.get(&key).await {
                if e.fresh_for(meta) {
                    return Ok(e);
                }
            }
            let _permit = cold_permit(r).await?;
            let data = load().await?;
            let entry = Arc::new(Entry {
                version: meta.version,
                ended: meta.ended(),
                data,
            });
            d.cache.insert(key.clone(), entry.clone()).await;
            Ok(entry)
        })
        .await
}

/// One of the `replay.max_cold_loads`, waiting at most
/// `replay.cold_load_wait_ms` for it; else `503 unavailable` with `Retry-After`.
pub async fn cold_permit(r: &Replay) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
    let permit = match r.cold_wait {
        Duration::ZERO => r.cold.try_acquire().ok(),
        wait => tokio::time::timeout(wait, r.cold.acquire())
            .await
            .ok()
            .and_then(Result::ok),
    };
    permit.ok_or_else(|| {
        r.cold_refused.increment(1);
        ApiError::new(
            ErrorCode::Unavailable,
            "too many replay loads at once on this node; retry shortly",
        )
        .retry_after(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use danmaku_core::model::{Danmaku, Kind};

    fn c(id: u64, offset: i64, kind: Kind) -> ArchivedComment {
        ArchivedComment {
            vod: "v".into(),
            offset_ms: offset,
            item: Danmaku {
                id,
                room: "r".into(),
                user: format!("u{id}"),
                kind: kind as i32,
                text: format!("t{id}"),
                vod: Some("v".into()),
                offset_ms: Some(offset),
                ..Default::default()
            },
        }
    }

    #[test]
    fn windows_are_binary_searches_over_the_order() {
        // Offsets 0, 10, 10, 20, ... with two ids at offset 10.
        let mut items: Vec<_> = (0..10)
            .map(|i| c(100 + i, i as i64 * 10, Kind::Comment))
            .collect();
        items.push(c(5, 10, Kind::Comment));
        let rows = Rows::new(items);
        assert_eq!(rows.len(), 11);
        assert_eq!(rows.key(1), (10, 5), "sorted by (offset, id)");
        assert_eq!(rows.key(2), (10, 101));
        assert_eq!(rows.window(0, i64::MAX, None), 0..11);
        assert_eq!(rows.window(10, 20, None), 1..3);
        assert_eq!(rows.window(10, 20, Some((10, 5))), 2..3);
        assert_eq!(rows.window(0, 20, Some((10, 101))), 3..3);
        assert_eq!(rows.window(0, i64::MAX, Some((95, 0))), 11..11);
        assert_eq!(rows.window(50, 40, None), 6..6, "empty, never reversed");
        for i in 0..rows.len() {
            let v: serde_json::Value = serde_json::from_str(rows.item(i)).unwrap();
            assert_eq!(v["id"], rows.key(i).1.to_string());
        }
        assert!(rows.bytes() > rows.json.len());
    }

    #[test]
    fn documents_are_cut_as_the_strict_cap_cuts() {
        let items: Vec<_> = (0..50)
            .map(|i| {
                let kind = if i % 7 == 0 {
                    Kind::Gift
                } else {
                    Kind::Comment
                };
                c(i, i as i64 * 1_000, kind)
            })
            .collect();
        let doc = DocBase::dplayer(items.clone());
        assert_eq!(doc.len(), 50);
        assert_eq!(doc.dplayer_body(50), formats::dplayer_json(&items));
        assert_eq!(doc.dplayer_body(1000), formats::dplayer_json(&items));
        for max in [0, 1, 5, 8, 20, 49] {
            let want = crate::density::cap_strict(items.clone(), max);
            assert_eq!(
                doc.dplayer_body(max),
                formats::dplayer_json(&want),
                "max {max}"
            );
        }
    }
}
