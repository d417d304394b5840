//! Big-key monitoring (seed 001's big-key problem: one hot room's slice grows into
//! a key Redis chokes on).
//!
//! - [`Thresholds`]: when a slice or key counts as big (`live.bigkey_members`,
//!   `live.bigkey_bytes`); pure.
//! - [`BigKeys`]: one server's registry (owned by its [`crate::Live`] and
//!   passed to its writer), shared by the writer (which reports every slice
//!   that crosses a threshold, once, with a metric and a structured log event)
//!   and the scanner, and read by the admin endpoint. Two servers in one
//!   process keep two registries.
//! - [`scan`]: the background scanner, a rate-limited walk over every key of the
//!   store (Redis: `SCAN` + `MEMORY USAGE` on every master), which also finds big
//!   keys the writer does not track (other tenants' keys, leftovers).
//! - [`handler`]: `GET /v1/admin/bigkeys` (admin token): the largest live slices
//!   and the largest keys the scanner saw, largest first, with the thresholds.
//!
//! Metrics: `danmaku_bigkey_events_total{source="writer"|"scan"}`,
//! `danmaku_bigkey_scan_keys_total`, `danmaku_bigkey_scan_passes_total`,
//! `danmaku_bigkey_scan_errors_total`.
//!
//! May import: `danmaku_core`, and [`Live`] for the handler's state; no module of
//! the connection layer.

use crate::Live;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use danmaku_core::auth::{authenticate, Role};
use danmaku_core::config::LiveSettings;
use danmaku_core::context::Context;
use danmaku_core::error::{ApiError, ErrorCode};
use danmaku_core::ports::{KeyStat, SliceStat};
use danmaku_core::slice::SliceRef;
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// When a key is big.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub members: u64,
    pub bytes: u64,
}

impl Thresholds {
    pub fn from_settings(s: &LiveSettings) -> Self {
        Self {
            members: s.bigkey_members.max(1),
            bytes: s.bigkey_bytes.max(1),
        }
    }

    /// Whether a key of this size is over a threshold.
    pub fn is_big(&self, members: u64, bytes: u64) -> bool {
        members >= self.members || bytes >= self.bytes
    }
}

/// One big-key sighting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BigKey {
    pub key: String,
    pub room: Option<String>,
    pub members: u64,
    pub bytes: u64,
    /// `writer` or `scan`.
    pub source: &'static str,
    /// When it was seen, ms since the epoch.
    pub seen_ms: i64,
}

/// Big keys reported by the writer at most once per key within this long.
const REPORT_MEMORY: Duration = Duration::from_secs(2 * 3600);
/// Recent writer events kept for the endpoint.
const EVENTS_KEPT: usize = 100;

#[derive(Default)]
struct Registry {
    /// Keys already reported by the writer, with when.
    reported: HashMap<String, i64>,
    /// The writer's recent events, newest last.
    events: VecDeque<BigKey>,
    /// The largest keys of the last complete scanner pass, largest first.
    scanned: Vec<KeyStat>,
    /// When the last pass completed.
    scanned_ms: Option<i64>,
}

/// One server's big-key registry: what its writer and scanner saw.
#[derive(Default)]
pub struct BigKeys {
    inner: Mutex<Registry>,
}

impl BigKeys {
    /// The writer saw `stat` after an append: if it is over a threshold for the
    /// first time, counts the event, logs it and returns true.
    pub fn observe_slice(&self, stat: &SliceStat, t: Thresholds) -> bool {
        if !t.is_big(stat.members, stat.bytes) {
            return false;
        }
        let key = stat.slice.key();
        let now = danmaku_core::now_ms();
        let mut reg = self.inner.lock().expect("bigkeys lock");
        if reg.reported.contains_key(&key) {
            return false;
        }
        if reg.reported.len() >= 10_000 {
            let horizon = now - REPORT_MEMORY.as_millis() as i64;
            reg.reported.retain(|_, at| *at >= horizon);
        }
        reg.reported.insert(key.clone(), now);
        reg.events.push_back(BigKey {
            key: key.clone(),
            room: Some(stat.slice.room.clone()),
            members: stat.members,
            bytes: stat.bytes,
            source: "writer",
            seen_ms: now,
        });
        while reg.events.len() > EVENTS_KEPT {
            reg.events.pop_front();
        }
        drop(reg);
        metrics::counter!("danmaku_bigkey_events_total", "source" => "writer").increment(1);
        tracing::warn!(
            event = "big_key",
            source = "writer",
            key = %key,
            room = %stat.slice.room,
            members = stat.members,
            bytes = stat.bytes,
            slice_ms = stat.slice.len_ms,
            threshold_members = t.members,
            threshold_bytes = t.bytes,
            "slice over the big-key threshold; the room's next slices get shorter"
        );
        true
    }

    fn finish_pass(&self, top: Vec<KeyStat>) {
        let mut reg = self.inner.lock().expect("bigkeys lock");
        reg.scanned = top;
        reg.scanned_ms = Some(danmaku_core::now_ms());
    }

    /// The writer's recent big-key events, newest first.
    pub fn events(&self) -> Vec<BigKey> {
        let reg = self.inner.lock().expect("bigkeys lock");
        reg.events.iter().rev().cloned().collect()
    }

    /// The largest keys of the last scanner pass and when it completed.
    pub fn scanned(&self) -> (Vec<KeyStat>, Option<i64>) {
        let reg = self.inner.lock().expect("bigkeys lock");
        (reg.scanned.clone(), reg.scanned_ms)
    }
}

/// Keeps the `n` largest keys (by bytes, then members).
struct TopKeys {
    n: usize,
    keys: Vec<KeyStat>,
}

impl TopKeys {
    fn new(n: usize) -> Self {
        Self {
            n: n.max(1),
            keys: Vec::new(),
        }
    }

    fn offer(&mut self, k: KeyStat) {
        self.keys.push(k);
        if self.keys.len() > 2 * self.n {
            self.settle();
        }
    }

    fn settle(&mut self) {
        self.keys
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(b.members.cmp(&a.members)));
        self.keys.dedup_by(|a, b| a.key == b.key);
        self.keys.truncate(self.n);
    }

    fn into_sorted(mut self) -> Vec<KeyStat> {
        self.settle();
        self.keys
    }
}

/// How long to pause after inspecting `keys` keys to stay under `per_sec`.
pub fn scan_pause(keys: usize, per_sec: u64) -> Duration {
    Duration::from_secs_f64(keys as f64 / per_sec.max(1) as f64)
}

/// The scanner: a pass over every key, rate-limited, then a pause of
/// `live.bigkey_scan_interval_ms`; until `stop`. Keys over a threshold that are not
/// slices (the writer tracks those) raise a `scan` event, once per pass.
pub async fn scan(ctx: Context, registry: Arc<BigKeys>, stop: CancellationToken) {
    let s = &ctx.settings.live;
    if s.bigkey_scan_interval_ms == 0 {
        return;
    }
    let interval = Duration::from_millis(s.bigkey_scan_interval_ms);
    let batch = s.bigkey_scan_batch.max(1);
    // The first pass starts after a short while, not during start-up.
    let mut pause = interval.min(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = interval;
        let t = Thresholds::from_settings(s);
        let mut top = TopKeys::new(s.bigkey_top);
        let mut cursor = String::new();
        let mut complete = false;
        while !stop.is_cancelled() {
            let page = match ctx.slices.scan_keys(&cursor, batch).await {
                Ok(p) => p,
                Err(e) => {
                    metrics::counter!("danmaku_bigkey_scan_errors_total").increment(1);
                    tracing::warn!(error = %e, "big-key scan step failed; retrying later");
                    break;
                }
            };
            metrics::counter!("danmaku_bigkey_scan_keys_total").increment(page.keys.len() as u64);
            let n = page.keys.len();
            for k in page.keys {
                if t.is_big(k.members, k.bytes) && SliceRef::parse_key(&k.key).is_none() {
                    metrics::counter!("danmaku_bigkey_events_total", "source" => "scan")
                        .increment(1);
                    tracing::warn!(
                        event = "big_key",
                        source = "scan",
                        key = %k.key,
                        members = k.members,
                        bytes = k.bytes,
                        "big key found by the scanner (not a slice the writer tracks)"
                    );
                }
                top.offer(k);
            }
            match page.next {
                Some(next) => cursor = next,
                None => {
                    complete = true;
                    break;
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(scan_pause(n.max(1), s.bigkey_scan_keys_per_sec)) => {}
            }
        }
        if complete {
            metrics::counter!("danmaku_bigkey_scan_passes_total").increment(1);
            registry.finish_pass(top.into_sorted());
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct BigKeysQuery {
    limit: Option<String>,
}

fn key_json(key: &str, members: u64, bytes: u64, source: &str, t: Thresholds) -> serde_json::Value {
    let slice = SliceRef::parse_key(key);
    json!({
        "key": key,
        "members": members,
        "bytes": bytes,
        "room": slice.as_ref().map(|s| s.room.clone()),
        "slice_ms": slice.as_ref().map(|s| s.len_ms),
        "source": source,
        "big": t.is_big(members, bytes),
    })
}

/// `GET /v1/admin/bigkeys[?limit=N]` (admin): `{"keys": [{"key", "members",
/// "bytes", "room", "slice_ms", "source", "big"}...], "thresholds": {"members",
/// "bytes"}, "events": [...], "scanned_at": ms|null}`. `keys` merges the largest
/// live slices (from the SliceStore, so every writer's) with the largest keys of
/// the last scanner pass, largest first; `events` are this node's recent writer
/// events, newest first.
pub(crate) async fn handler(
    State(live): State<Arc<Live>>,
    Query(q): Query<BigKeysQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let claims = authenticate(&live.ctx.signer, &headers, None)?;
    if claims.role != Role::Admin {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the big-key report needs an admin token",
        ));
    }
    let s = &live.ctx.settings.live;
    let t = Thresholds::from_settings(s);
    let limit = q
        .limit
        .as_deref()
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(s.bigkey_top)
        .clamp(1, 1000);
    let slices = live.ctx.slices.largest_slices(limit).await.map_err(|e| {
        tracing::warn!(error = %e, "big-key report: slice sizes unavailable");
        ApiError::unavailable()
    })?;
    let registry = &live.bigkeys;
    let (scanned, scanned_ms) = registry.scanned();
    let mut rows: Vec<(String, u64, u64, &'static str)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for st in &slices {
        let key = st.slice.key();
        seen.insert(key.clone());
        rows.push((key, st.members, st.bytes, "store"));
    }
    for k in scanned {
        if seen.insert(k.key.clone()) {
            rows.push((k.key, k.members, k.bytes, "scan"));
        }
    }
    rows.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
    rows.truncate(limit);
    let keys: Vec<_> = rows
        .iter()
        .map(|(k, m, b, src)| key_json(k, *m, *b, src, t))
        .collect();
    let events: Vec<_> = registry
        .events()
        .iter()
        .map(|e| {
            let mut v = key_json(&e.key, e.members, e.bytes, e.source, t);
            v["seen_at"] = json!(e.seen_ms);
            v
        })
        .collect();
    Ok(Json(json!({
        "keys": keys,
        "thresholds": {"members": t.members, "bytes": t.bytes},
        "events": events,
        "scanned_at": scanned_ms,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(room: &str, start: i64, members: u64, bytes: u64) -> SliceStat {
        SliceStat {
            slice: SliceRef {
                room: room.into(),
                start_ms: start,
                len_ms: 1000,
            },
            members,
            bytes,
        }
    }

    #[test]
    fn thresholds_are_inclusive_on_either_dimension() {
        let t = Thresholds {
            members: 5000,
            bytes: 1 << 20,
        };
        assert!(!t.is_big(4999, (1 << 20) - 1));
        assert!(t.is_big(5000, 0));
        assert!(t.is_big(1, 1 << 20));
    }

    #[test]
    fn a_big_slice_is_reported_once() {
        let reg = BigKeys::default();
        let t = Thresholds {
            members: 10,
            bytes: 1000,
        };
        assert!(!reg.observe_slice(&stat("r", 0, 9, 10), t));
        assert!(reg.observe_slice(&stat("r", 0, 10, 10), t));
        assert!(!reg.observe_slice(&stat("r", 0, 11, 10), t), "once");
        assert!(
            reg.observe_slice(&stat("r", 1000, 1, 5000), t),
            "another slice"
        );
        let ev = reg.events();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].bytes, 5000, "newest first");
        assert_eq!(ev[1].room.as_deref(), Some("r"));
    }

    #[test]
    fn top_keys_keeps_the_largest() {
        let mut top = TopKeys::new(3);
        for i in 0..100u64 {
            top.offer(KeyStat {
                key: format!("k{i}"),
                members: i,
                bytes: (i * 37) % 101,
            });
        }
        let v = top.into_sorted();
        assert_eq!(v.len(), 3);
        assert!(v.windows(2).all(|w| w[0].bytes >= w[1].bytes));
        assert_eq!(v[0].bytes, 100);
    }

    #[test]
    fn the_scan_pause_follows_the_rate() {
        assert_eq!(scan_pause(100, 1000), Duration::from_millis(100));
        assert_eq!(scan_pause(5, 0), Duration::from_secs(5));
    }
}
