//! The Redis Notifier: the writer publishes a room's new items on the room's channel
//! `dm:{room}:ch` (`PUBLISH`; `SPUBLISH` on a cluster, so a message only travels to
//! the shard owning the room's slot, not to every node); a live node subscribes to
//! the channels of the rooms it has viewers in, on a RESP3 connection of its own
//! whose push messages feed [`Notifier::take_receiver`].
//!
//! Subscriptions survive reconnects: a watchdog pings the subscription connection
//! every 500 ms (which also makes it reconnect) and re-subscribes every wanted room
//! that is not confirmed; each successful (re)subscription yields `Resync(room)`, so
//! the hub catches up from the SliceStore whatever was published meanwhile. If the
//! node cannot keep up with the messages, excess ones are dropped and every room
//! gets a `Resync` instead (never unbounded memory).
//!
//! Message format: the previous seq of the room (u64 BE, `u64::MAX` when the
//! writer does not know it), then for each item, seq (u64 BE), ts (i64 BE), data
//! length (u32 BE), data.

use super::{channel, count_error, room_of_channel, timeouts, Conn, RedisSetupError, Target};
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{PushInfo, PushKind, Value};
use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use danmaku_core::config::RedisSettings;
use danmaku_core::ports::{Notice, Notifier, NotifierEvent, NotifyError, SliceItem};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Push messages buffered between the connection and the decoder.
const PUSH_QUEUE: usize = 8192;
/// Events buffered for the live role.
const EVENT_QUEUE: usize = 4096;
/// How often the watchdog checks the subscription connection.
const WATCHDOG: Duration = Duration::from_millis(500);

/// `prev` when the writer does not know it.
const NO_PREV: u64 = u64::MAX;

/// Encodes a channel message.
pub(crate) fn encode_items(prev: Option<u64>, items: &[SliceItem]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + items.iter().map(|i| 20 + i.data.len()).sum::<usize>());
    b.put_u64(prev.unwrap_or(NO_PREV));
    for i in items {
        b.put_u64(i.seq);
        b.put_i64(i.ts_ms);
        b.put_u32(i.data.len() as u32);
        b.put_slice(&i.data);
    }
    b.freeze()
}

/// Decodes a channel message into the previous seq and the items; `None` if it
/// is malformed.
pub(crate) fn decode_items(mut b: Bytes) -> Option<(Option<u64>, Vec<SliceItem>)> {
    if b.remaining() < 8 {
        return None;
    }
    let prev = Some(b.get_u64()).filter(|p| *p != NO_PREV);
    let mut out = Vec::new();
    while b.has_remaining() {
        if b.remaining() < 20 {
            return None;
        }
        let seq = b.get_u64();
        let ts_ms = b.get_i64();
        let len = b.get_u32() as usize;
        if b.remaining() < len {
            return None;
        }
        out.push(SliceItem {
            seq,
            ts_ms,
            data: b.split_to(len),
        });
    }
    Some((prev, out))
}

/// The subscription connection.
#[derive(Clone)]
enum SubConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl SubConn {
    async fn subscribe(&mut self, ch: &str) -> ::redis::RedisResult<()> {
        match self {
            SubConn::Single(c) => c.subscribe(ch).await,
            SubConn::Cluster(c) => c.ssubscribe(ch).await,
        }
    }

    async fn unsubscribe(&mut self, ch: &str) -> ::redis::RedisResult<()> {
        match self {
            SubConn::Single(c) => c.unsubscribe(ch).await,
            SubConn::Cluster(c) => c.sunsubscribe(ch).await,
        }
    }

    async fn ping(&mut self) -> ::redis::RedisResult<()> {
        match self {
            SubConn::Single(c) => ::redis::cmd("PING").query_async(c).await,
            SubConn::Cluster(c) => ::redis::cmd("PING").query_async(c).await,
        }
    }
}

#[derive(Default)]
struct Subs {
    /// Rooms this node wants.
    wanted: HashSet<String>,
    /// Rooms whose subscription is active on the current connection.
    confirmed: HashSet<String>,
}

struct Shared {
    subs: Mutex<Subs>,
    events: mpsc::Sender<NotifierEvent>,
    /// Push messages were dropped: every room needs a resync.
    overflowed: AtomicBool,
}

/// The Redis Notifier.
pub struct RedisNotifier {
    publish_conn: Conn,
    cluster: bool,
    sub: SubConn,
    shared: Arc<Shared>,
    receiver: Mutex<Option<mpsc::Receiver<NotifierEvent>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RedisNotifier {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisNotifier {
    /// Opens the subscription connection (lazily) and starts the decoder and the
    /// watchdog. Publishing goes through `publish_conn`.
    pub(crate) fn start(
        publish_conn: Conn,
        target: &Target,
        settings: &RedisSettings,
    ) -> Result<Self, RedisSetupError> {
        let (push_tx, push_rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            subs: Mutex::new(Subs::default()),
            events: events_tx,
            overflowed: AtomicBool::new(false),
        });
        let on_push = {
            let shared = shared.clone();
            move |info: PushInfo| -> Result<(), ()> {
                if push_tx.try_send(info).is_err() {
                    shared.overflowed.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
        };
        let (response, connect) = timeouts(settings);
        let sub = match target {
            Target::Single(url) => {
                let info = super::single_info(url)?;
                let redis_info = info
                    .redis_settings()
                    .clone()
                    .set_protocol(::redis::ProtocolVersion::RESP3);
                let client = ::redis::Client::open(info.set_redis_settings(redis_info))?;
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response))
                    .set_connection_timeout(Some(connect))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500))
                    .set_push_sender(on_push);
                SubConn::Single(ConnectionManager::new_lazy_with_config(client, config)?)
            }
            Target::Cluster(nodes) => {
                let client = ::redis::cluster::ClusterClientBuilder::new(nodes.clone())
                    .tcp_settings(super::tcp())
                    .use_protocol(::redis::ProtocolVersion::RESP3)
                    .response_timeout(response)
                    .connection_timeout(connect)
                    .retries(2)
                    .max_retry_wait(500)
                    .push_sender(on_push)
                    .build()?;
                SubConn::Cluster(
                    client.get_pending_async_connection_with_config(
                        ::redis::cluster::ClusterConfig::new()
                            .set_response_timeout(response)
                            .set_connection_timeout(connect),
                    ),
                )
            }
        };
        let decoder = tokio::spawn(decode_loop(push_rx, shared.clone()));
        let watchdog = tokio::spawn(watchdog(sub.clone(), shared.clone()));
        Ok(Self {
            publish_conn,
            cluster: matches!(target, Target::Cluster(_)),
            sub,
            shared,
            receiver: Mutex::new(Some(events_rx)),
            tasks: vec![decoder, watchdog],
        })
    }
}

/// Turns push messages into events.
async fn decode_loop(mut rx: mpsc::Receiver<PushInfo>, shared: Arc<Shared>) {
    while let Some(info) = rx.recv().await {
        match info.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) =
                    (info.data.first(), info.data.get(1))
                else {
                    continue;
                };
                let Some(room) = room_of_channel(ch) else {
                    continue;
                };
                if !shared
                    .subs
                    .lock()
                    .expect("subs lock")
                    .wanted
                    .contains(&room)
                {
                    continue;
                }
                let Some((prev, items)) = decode_items(Bytes::copy_from_slice(payload)) else {
                    count_error("notify_decode");
                    continue;
                };
                if shared
                    .events
                    .send(NotifierEvent::Notice(Notice { room, prev, items }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            PushKind::Disconnection => {
                // The connection is gone with its subscriptions; the watchdog
                // subscribes again (and each success brings a resync).
                shared.subs.lock().expect("subs lock").confirmed.clear();
                tracing::warn!("redis notifier connection lost; resubscribing");
            }
            _ => {}
        }
        if shared.overflowed.swap(false, Ordering::Relaxed) {
            count_error("notify_overflow");
            let rooms: Vec<String> = {
                let subs = shared.subs.lock().expect("subs lock");
                subs.confirmed.iter().cloned().collect()
            };
            tracing::warn!(
                rooms = rooms.len(),
                "notifier overflowed; resyncing every room"
            );
            for room in rooms {
                if shared
                    .events
                    .send(NotifierEvent::Resync(room))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Keeps the subscription connection alive and every wanted room subscribed.
async fn watchdog(mut sub: SubConn, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(WATCHDOG);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if sub.ping().await.is_err() {
            shared.subs.lock().expect("subs lock").confirmed.clear();
            continue;
        }
        let missing: Vec<String> = {
            let subs = shared.subs.lock().expect("subs lock");
            subs.wanted.difference(&subs.confirmed).cloned().collect()
        };
        for room in missing {
            if subscribe_room(&mut sub, &shared, &room).await.is_err() {
                break;
            }
        }
    }
}

/// Subscribes `room`; on success marks it confirmed and asks for a resync.
async fn subscribe_room(sub: &mut SubConn, shared: &Shared, room: &str) -> Result<(), NotifyError> {
    match sub.subscribe(&channel(room)).await {
        Ok(()) => {
            let newly = {
                let mut subs = shared.subs.lock().expect("subs lock");
                subs.wanted.contains(room) && subs.confirmed.insert(room.to_string())
            };
            if newly {
                let _ = shared
                    .events
                    .send(NotifierEvent::Resync(room.to_string()))
                    .await;
            }
            Ok(())
        }
        Err(e) => {
            count_error("subscribe");
            Err(NotifyError::unavailable("subscribe").with_source(e))
        }
    }
}

#[async_trait]
impl Notifier for RedisNotifier {
    async fn publish(
        &self,
        room: &str,
        prev: Option<u64>,
        items: &[SliceItem],
    ) -> Result<(), NotifyError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut c = self.publish_conn.clone();
        let cmd = if self.cluster { "SPUBLISH" } else { "PUBLISH" };
        ::redis::cmd(cmd)
            .arg(channel(room))
            .arg(encode_items(prev, items).as_ref())
            .query_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| {
                count_error("publish");
                NotifyError::unavailable("publish").with_source(e)
            })
    }

    async fn subscribe(&self, room: &str) -> Result<(), NotifyError> {
        {
            let mut subs = self.shared.subs.lock().expect("subs lock");
            if !subs.wanted.insert(room.to_string()) && subs.confirmed.contains(room) {
                return Ok(());
            }
        }
        // On failure the watchdog keeps trying.
        subscribe_room(&mut self.sub.clone(), &self.shared, room).await
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), NotifyError> {
        let was = {
            let mut subs = self.shared.subs.lock().expect("subs lock");
            subs.wanted.remove(room);
            subs.confirmed.remove(room)
        };
        if was {
            self.sub
                .clone()
                .unsubscribe(&channel(room))
                .await
                .map_err(|e| NotifyError::unavailable("unsubscribe").with_source(e))?;
        }
        Ok(())
    }

    fn take_receiver(&self) -> Option<mpsc::Receiver<NotifierEvent>> {
        self.receiver.lock().expect("receiver lock").take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_roundtrip_and_garbage_is_refused() {
        let items = vec![
            SliceItem {
                seq: 7,
                ts_ms: -3,
                data: Bytes::from_static(b"abc"),
            },
            SliceItem {
                seq: u64::MAX,
                ts_ms: 1_764_000_000_000,
                data: Bytes::new(),
            },
        ];
        let b = encode_items(Some(6), &items);
        assert_eq!(decode_items(b.clone()), Some((Some(6), items.clone())));
        assert_eq!(decode_items(b.slice(..b.len() - 1)), None);
        assert_eq!(
            decode_items(encode_items(None, &items)),
            Some((None, items))
        );
        assert_eq!(
            decode_items(encode_items(Some(0), &[])),
            Some((Some(0), vec![]))
        );
        assert_eq!(decode_items(Bytes::new()), None);
        assert_eq!(decode_items(Bytes::from_static(b"1234567")), None);
        assert_eq!(room_of_channel(b"dm:{r-1}:ch").as_deref(), Some("r-1"));
        assert_eq!(room_of_channel(b"dm:{r-1}:idx"), None);
    }
}
