//! Per-room hubs: a ring of recent items (for resume and polling), a broadcast of
//! pre-encoded batch frames to the room's connections, and a watch of the room's
//! last seq for long polls.

use danmaku_core::cursor::Cursor;
use danmaku_core::model::Danmaku;
use danmaku_core::ports::Notifier;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{broadcast, watch};

/// One item as the hub keeps it: its seq, server time, kind and client JSON.
#[derive(Clone, Debug)]
pub struct RingItem {
    pub seq: u64,
    pub ts_ms: i64,
    pub json: Arc<str>,
}

/// A batch of items, encoded once for every connection of the room.
#[derive(Debug)]
pub struct Frame {
    pub first_seq: u64,
    pub last_seq: u64,
    pub items: Vec<RingItem>,
    /// `{"type":"batch",...}` as sent on the WebSocket.
    pub text: axum::extract::ws::Utf8Bytes,
}

/// `{"type":"batch","cursor":...,"items":[...]}` from pre-encoded items.
pub fn encode_batch(items: &[RingItem]) -> String {
    let cursor = Cursor(items.last().map_or(0, |i| i.seq)).encode();
    let mut s = String::with_capacity(64 + items.iter().map(|i| i.json.len() + 1).sum::<usize>());
    s.push_str("{\"type\":\"batch\",\"cursor\":\"");
    s.push_str(&cursor);
    s.push_str("\",\"items\":[");
    for (n, i) in items.iter().enumerate() {
        if n > 0 {
            s.push(',');
        }
        s.push_str(&i.json);
    }
    s.push_str("]}");
    s
}

struct State {
    ring: VecDeque<RingItem>,
    /// The ring holds every item of the room with seq > floor; `None` until the
    /// first delivery (a hub opened by a viewer knows nothing yet).
    floor: Option<u64>,
    last_seq: u64,
    /// Items per second, exponentially averaged.
    rate: f64,
    rate_at: Instant,
    last_active: Instant,
}

/// One room's hub.
pub struct Hub {
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Frame>>,
    seq: watch::Sender<u64>,
    ring_size: usize,
}

/// What the ring can answer for "items after cursor c".
pub enum RingRead {
    /// The ring covers the cursor: these are all the items after it.
    Covered(Vec<RingItem>),
    /// Items at or below the ring's floor may be missing: ask the SliceStore.
    NotCovered,
}

impl Hub {
    fn new(ring_size: usize, queue: usize) -> Self {
        let (tx, _) = broadcast::channel(queue.max(1));
        let (seq, _) = watch::channel(0);
        Self {
            state: Mutex::new(State {
                ring: VecDeque::with_capacity(ring_size.min(64)),
                floor: None,
                last_seq: 0,
                rate: 0.0,
                rate_at: Instant::now(),
                last_active: Instant::now(),
            }),
            tx,
            seq,
            ring_size: ring_size.max(1),
        }
    }

    /// Subscribes to live frames (call before reading any backlog).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.tx.subscribe()
    }

    /// Watches the room's last seq (for long polls).
    pub fn watch_seq(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }

    /// Adds items (in seq order) from the writer and broadcasts them as one frame.
    pub fn deliver(&self, items: &[(u64, Danmaku)]) {
        let mut st = self.state.lock().expect("hub lock");
        let fresh: Vec<RingItem> = items
            .iter()
            .filter(|(seq, _)| *seq > st.last_seq)
            .map(|(seq, d)| RingItem {
                seq: *seq,
                ts_ms: d.ts_ms,
                json: Arc::from(d.to_json()),
            })
            .collect();
        let (Some(first), Some(last)) = (fresh.first(), fresh.last()) else {
            return;
        };
        let (first_seq, last_seq) = (first.seq, last.seq);
        if st.floor.is_none() {
            st.floor = Some(first_seq - 1);
        }
        for it in &fresh {
            if st.ring.len() == self.ring_size {
                if let Some(old) = st.ring.pop_front() {
                    st.floor = Some(old.seq);
                }
            }
            st.ring.push_back(it.clone());
        }
        st.last_seq = last_seq;
        let now = Instant::now();
        let dt = now.duration_since(st.rate_at).as_secs_f64().max(0.001);
        let alpha = (dt / 5.0).min(1.0);
        st.rate = st.rate * (1.0 - alpha) + (fresh.len() as f64 / dt.max(0.2)) * alpha;
        st.rate_at = now;
        st.last_active = now;
        let text = encode_batch(&fresh);
        drop(st);
        let frame = Arc::new(Frame {
            first_seq,
            last_seq,
            items: fresh,
            text: text.into(),
        });
        let _ = self.tx.send(frame);
        self.seq.send_replace(last_seq);
    }

    /// Items after `cursor`, if the ring covers it.
    pub fn read_after(&self, cursor: u64, limit: usize) -> RingRead {
        let st = self.state.lock().expect("hub lock");
        match st.floor {
            Some(floor) if cursor >= floor => {
                let start = st.ring.partition_point(|i| i.seq <= cursor);
                RingRead::Covered(st.ring.iter().skip(start).take(limit).cloned().collect())
            }
            _ => RingRead::NotCovered,
        }
    }

    /// Items of the last `window_ms` (for clients without a cursor).
    pub fn recent(&self, now_ms: i64, window_ms: i64, limit: usize) -> Vec<RingItem> {
        let st = self.state.lock().expect("hub lock");
        let start = st.ring.partition_point(|i| i.ts_ms < now_ms - window_ms);
        let skip = (st.ring.len() - start).saturating_sub(limit);
        st.ring.iter().skip(start + skip).cloned().collect()
    }

    /// After a (re)subscription: a hub that knows nothing yet starts at the
    /// store's head `store_last` (older items are read from the store).
    pub fn settle_floor(&self, store_last: u64) {
        let mut st = self.state.lock().expect("hub lock");
        if st.floor.is_none() {
            st.floor = Some(store_last);
            st.last_seq = st.last_seq.max(store_last);
        }
    }

    /// The highest seq delivered (0 if none yet).
    pub fn last_seq(&self) -> u64 {
        self.state.lock().expect("hub lock").last_seq
    }

    /// Items per second lately.
    pub fn rate(&self) -> f64 {
        let st = self.state.lock().expect("hub lock");
        let idle = st.rate_at.elapsed().as_secs_f64();
        st.rate * (-idle / 10.0).exp()
    }

    fn idle_for(&self) -> std::time::Duration {
        self.state.lock().expect("hub lock").last_active.elapsed()
    }
}

/// Every hub of this node. Creating a hub subscribes this node to the room's
/// notices; sweeping it unsubscribes.
pub struct Hubs {
    map: Mutex<HashMap<String, Arc<Hub>>>,
    ring_size: usize,
    queue: usize,
    notifier: Option<Arc<dyn Notifier>>,
}

impl Hubs {
    pub fn new(ring_size: usize, queue: usize, notifier: Option<Arc<dyn Notifier>>) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ring_size,
            queue,
            notifier,
        }
    }

    /// The hub of `room`, created on first use.
    pub fn get(&self, room: &str) -> Arc<Hub> {
        let mut map = self.map.lock().expect("hubs lock");
        if let Some(h) = map.get(room) {
            return h.clone();
        }
        let h = Arc::new(Hub::new(self.ring_size, self.queue));
        map.insert(room.to_string(), h.clone());
        metrics::gauge!("danmaku_live_rooms").set(map.len() as f64);
        if let Some(n) = &self.notifier {
            let (n, room) = (n.clone(), room.to_string());
            tokio::spawn(async move {
                if let Err(e) = n.subscribe(&room).await {
                    tracing::warn!(error = %e, room, "subscribe failed; the notifier retries on reconnect");
                }
            });
        }
        h
    }

    /// Drops hubs nobody watches that saw nothing for `idle`.
    pub fn sweep(&self, idle: std::time::Duration) {
        let mut map = self.map.lock().expect("hubs lock");
        map.retain(|_, h| {
            h.tx.receiver_count() > 0 || h.seq.receiver_count() > 0 || h.idle_for() < idle
        });
        metrics::gauge!("danmaku_live_rooms").set(map.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: u64) -> Danmaku {
        Danmaku {
            id,
            room: "r".into(),
            user: "u".into(),
            ts_ms: 1000 + id as i64,
            text: format!("t{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn ring_covers_after_first_delivery_and_evicts() {
        let hub = Hub::new(3, 8);
        assert!(matches!(hub.read_after(0, 10), RingRead::NotCovered));
        hub.deliver(&[(5, d(5)), (7, d(7))]);
        let RingRead::Covered(v) = hub.read_after(4, 10) else {
            panic!()
        };
        assert_eq!(v.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![5, 7]);
        assert!(matches!(hub.read_after(3, 10), RingRead::NotCovered));
        hub.deliver(&[(9, d(9)), (11, d(11))]);
        // 5 was evicted: the ring covers cursors >= 5 only.
        assert!(matches!(hub.read_after(4, 10), RingRead::NotCovered));
        let RingRead::Covered(v) = hub.read_after(5, 10) else {
            panic!()
        };
        assert_eq!(v.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![7, 9, 11]);
        let RingRead::Covered(v) = hub.read_after(7, 1) else {
            panic!()
        };
        assert_eq!(v[0].seq, 9);
        assert_eq!(hub.last_seq(), 11);
    }

    #[test]
    fn redelivered_items_are_not_broadcast_twice() {
        let hub = Hub::new(10, 8);
        let mut rx = hub.subscribe();
        hub.deliver(&[(1, d(1)), (2, d(2))]);
        hub.deliver(&[(2, d(2)), (3, d(3))]);
        let a = rx.try_recv().unwrap();
        let b = rx.try_recv().unwrap();
        assert_eq!((a.first_seq, a.last_seq), (1, 2));
        assert_eq!((b.first_seq, b.last_seq), (3, 3));
        assert!(b
            .text
            .as_str()
            .starts_with("{\"type\":\"batch\",\"cursor\":\""));
    }

    #[test]
    fn recent_is_by_time() {
        let hub = Hub::new(10, 8);
        hub.deliver(&[(1, d(1)), (2, d(2)), (3, d(3))]);
        let r = hub.recent(1003, 1, 10);
        assert_eq!(r.iter().map(|i| i.seq).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(hub.recent(1003, 100, 1).len(), 1);
    }
}
