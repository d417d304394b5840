//! The Notifier suite: what [`Notifier`] promises, one function per guarantee, run
//! by [`crate::notifier_suite!`]. Each case takes a publishing node's notifier and
//! a viewing node's (the same one for an in-process notifier) and takes the
//! viewer's receiver, so every case needs a fresh viewer.
//!
//! Notices are best effort, so the cases only publish once a subscription is
//! confirmed (its `Resync` arrived); "nothing arrives" is checked by waiting for
//! the notices that must come, then a short quiet period.

use super::unique;
use crate::ports::{Notice, Notifier, NotifierEvent, SliceItem};
use bytes::Bytes;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Receiver;

/// How long a case waits for an event that must come.
const WAIT: Duration = Duration::from_secs(15);
/// How long a case watches for an event that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// Expands to one `#[tokio::test]` per Notifier guarantee; see
/// [`crate::conformance`].
#[macro_export]
macro_rules! notifier_suite {
    ($(#[$attr:meta])* $name:ident $(($($rt:tt)*))?, $make:expr $(,)?) => {
        $crate::__conformance_cases!(pair notifier [$(#[$attr])*] $name ($($($rt)*)?) ($make) [
            the_receiver_is_taken_once
            every_subscription_brings_a_resync
            notices_carry_the_published_items
            notices_of_a_room_arrive_in_publish_order
            rooms_do_not_see_each_others_notices
            unsubscribe_stops_delivery
        ]);
    };
}

fn item(seq: u64, data: &[u8]) -> SliceItem {
    SliceItem {
        seq,
        ts_ms: 1_700_000_000_000 + seq as i64,
        data: Bytes::copy_from_slice(data),
    }
}

fn receiver(viewer: &dyn Notifier) -> Receiver<NotifierEvent> {
    viewer
        .take_receiver()
        .expect("a fresh notifier hands out its receiver")
}

/// The next event passing `want` (others are skipped), within [`WAIT`].
async fn next_event(
    rx: &mut Receiver<NotifierEvent>,
    what: &str,
    want: impl Fn(&NotifierEvent) -> bool,
) -> NotifierEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(ev)) if want(&ev) => return ev,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the notifier closed its receiver while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}"),
        }
    }
}

/// The next notice of `room`.
async fn next_notice(rx: &mut Receiver<NotifierEvent>, room: &str) -> Notice {
    match next_event(
        rx,
        &format!("notice of {room}"),
        |e| matches!(e, NotifierEvent::Notice(n) if n.room == room),
    )
    .await
    {
        NotifierEvent::Notice(n) => n,
        NotifierEvent::Resync(_) => unreachable!(),
    }
}

/// Subscribes `room` and waits for its resync (the subscription is confirmed).
async fn subscribed(viewer: &dyn Notifier, rx: &mut Receiver<NotifierEvent>, room: &str) {
    viewer.subscribe(room).await.expect("subscribe");
    next_event(
        rx,
        &format!("resync of {room}"),
        |e| matches!(e, NotifierEvent::Resync(r) if r == room),
    )
    .await;
}

/// Notices until `done` says the expected ones are there (within [`WAIT`]), then
/// whatever else arrives within [`QUIET`].
async fn collect_notices(
    rx: &mut Receiver<NotifierEvent>,
    what: &str,
    done: impl Fn(&[Notice]) -> bool,
) -> Vec<Notice> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(NotifierEvent::Notice(n))) => seen.push(n),
            Ok(Some(NotifierEvent::Resync(_))) => {}
            Ok(None) => panic!("the notifier closed its receiver while waiting for {what}"),
            Err(_) => panic!("no {what} within {WAIT:?}; got {seen:?}"),
        }
    }
    let quiet_until = Instant::now() + QUIET;
    while let Ok(Some(ev)) = tokio::time::timeout(
        quiet_until.saturating_duration_since(Instant::now()),
        rx.recv(),
    )
    .await
    {
        if let NotifierEvent::Notice(n) = ev {
            seen.push(n);
        }
    }
    seen
}

/// The seqs of `room`'s notices among `seen`.
fn seqs_of(seen: &[Notice], room: &str) -> Vec<u64> {
    seen.iter()
        .filter(|n| n.room == room)
        .flat_map(|n| n.items.iter().map(|i| i.seq))
        .collect()
}

/// The receiver is handed out once (to the live role).
pub async fn the_receiver_is_taken_once(_publisher: &dyn Notifier, viewer: &dyn Notifier) {
    let _rx = receiver(viewer);
    assert!(
        viewer.take_receiver().is_none(),
        "the receiver is taken once"
    );
}

/// Every subscription, including one after an unsubscription, is followed by a
/// `Resync` of the room: the subscriber catches up from the SliceStore.
pub async fn every_subscription_brings_a_resync(_publisher: &dyn Notifier, viewer: &dyn Notifier) {
    let mut rx = receiver(viewer);
    let (a, b) = (unique("na"), unique("nb"));
    subscribed(viewer, &mut rx, &a).await;
    subscribed(viewer, &mut rx, &b).await;
    viewer.unsubscribe(&a).await.expect("unsubscribe");
    subscribed(viewer, &mut rx, &a).await;
}

/// A notice carries the room, the previous seq and the published items
/// unchanged (seq, time, data, empty and binary data included).
pub async fn notices_carry_the_published_items(publisher: &dyn Notifier, viewer: &dyn Notifier) {
    let mut rx = receiver(viewer);
    let room = unique("nc");
    subscribed(viewer, &mut rx, &room).await;
    let items = vec![
        item(1, b"first"),
        item(2, b""),
        item(u64::MAX >> 11, b"\x00\xff\n{\"json\":1}"),
    ];
    publisher
        .publish(&room, Some(u64::MAX >> 12), &items)
        .await
        .expect("publish");
    let n = next_notice(&mut rx, &room).await;
    assert_eq!(
        n,
        Notice {
            room: room.clone(),
            prev: Some(u64::MAX >> 12),
            items: items.clone()
        }
    );
    // Without a previous seq (a writer's first notice of the room), and with 0.
    publisher
        .publish(&room, None, &items)
        .await
        .expect("publish");
    assert_eq!(next_notice(&mut rx, &room).await.prev, None);
    publisher
        .publish(&room, Some(0), &items[..1])
        .await
        .expect("publish");
    let n = next_notice(&mut rx, &room).await;
    assert_eq!((n.prev, n.items.len()), (Some(0), 1));
}

/// A room's notices arrive in publish order.
pub async fn notices_of_a_room_arrive_in_publish_order(
    publisher: &dyn Notifier,
    viewer: &dyn Notifier,
) {
    let mut rx = receiver(viewer);
    let room = unique("no");
    subscribed(viewer, &mut rx, &room).await;
    let mut sent = Vec::new();
    for i in 1..=30u64 {
        let items = vec![item(2 * i - 1, b"x"), item(2 * i, b"y")];
        publisher
            .publish(&room, None, &items)
            .await
            .expect("publish");
        sent.push(items);
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(next_notice(&mut rx, &room).await.items);
    }
    assert_eq!(got, sent, "publish order");
}

/// A node gets the notices of the rooms it subscribed, each under its own room,
/// and none of the others.
pub async fn rooms_do_not_see_each_others_notices(publisher: &dyn Notifier, viewer: &dyn Notifier) {
    let mut rx = receiver(viewer);
    let (a, b, c) = (unique("na"), unique("nb"), unique("nc"));
    subscribed(viewer, &mut rx, &a).await;
    subscribed(viewer, &mut rx, &b).await;
    let order: [(&str, u64, &[u8]); 6] = [
        (&a, 1, b"a1"),
        (&c, 2, b"c2"),
        (&b, 3, b"b3"),
        (&c, 4, b"c4"),
        (&a, 5, b"a5"),
        (&b, 6, b"b6"),
    ];
    for (room, seq, data) in order {
        publisher
            .publish(room, None, &[item(seq, data)])
            .await
            .unwrap();
    }
    let seen = collect_notices(&mut rx, "the notices of a and b", |seen| {
        seqs_of(seen, &a).len() >= 2 && seqs_of(seen, &b).len() >= 2
    })
    .await;
    let of = |room: &str| seqs_of(&seen, room);
    assert_eq!(of(&a), vec![1, 5], "a's notices, under a");
    assert_eq!(of(&b), vec![3, 6], "b's notices, under b");
    assert!(of(&c).is_empty(), "nothing of a room not subscribed");
    assert!(
        seen.iter().all(|n| n.room == a || n.room == b),
        "only subscribed rooms: {seen:?}"
    );
}

/// After `unsubscribe` the room's notices stop; other rooms' go on.
pub async fn unsubscribe_stops_delivery(publisher: &dyn Notifier, viewer: &dyn Notifier) {
    let mut rx = receiver(viewer);
    let (a, b) = (unique("na"), unique("nb"));
    subscribed(viewer, &mut rx, &a).await;
    subscribed(viewer, &mut rx, &b).await;
    publisher
        .publish(&a, None, &[item(1, b"before")])
        .await
        .unwrap();
    assert_eq!(next_notice(&mut rx, &a).await.items[0].seq, 1);
    viewer.unsubscribe(&a).await.expect("unsubscribe");
    publisher
        .publish(&a, None, &[item(2, b"after")])
        .await
        .unwrap();
    publisher
        .publish(&b, None, &[item(3, b"marker")])
        .await
        .unwrap();
    let seen = collect_notices(&mut rx, "the marker notice of b", |seen| {
        seqs_of(seen, &b).contains(&3)
    })
    .await;
    assert!(
        seen.iter().all(|n| n.room != a),
        "a notice after unsubscribing: {seen:?}"
    );
}
