//! The Bus suite: what [`Bus`] and [`BusConsumer`] promise, one function per
//! guarantee, run by [`crate::bus_suite!`].

use super::unique;
use crate::ports::{Bus, BusConsumer, BusRecord, RecordPosition};
use bytes::Bytes;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// Expands to one `#[tokio::test]` per Bus guarantee; see [`crate::conformance`].
#[macro_export]
macro_rules! bus_suite {
    ($(#[$attr:meta])* $name:ident $(($($rt:tt)*))?, $make:expr $(,)?) => {
        $crate::__conformance_cases!(one bus [$(#[$attr])*] $name ($($($rt)*)?) ($make) [
            positions_grow_per_room_on_one_partition
            every_record_is_delivered_once_in_publish_order_per_room
            a_batch_is_delivered_once_in_its_order_per_room
            a_group_resumes_after_its_committed_positions
            groups_consume_independently
            an_empty_poll_returns_after_its_wait
            reports_ready
        ]);
    };
}

/// Publishes 50 records over two rooms (every third to the second room); returns
/// (room, payload, position) in publish order.
async fn publish_50(bus: &dyn Bus, rooms: [&str; 2]) -> Vec<(String, Bytes, RecordPosition)> {
    let mut sent = Vec::new();
    for i in 0..50u32 {
        let room = if i % 3 == 0 { rooms[1] } else { rooms[0] };
        let payload = Bytes::from(format!("{room}:{i}"));
        let pos = bus.publish(room, payload.clone()).await.expect("publish");
        sent.push((room.to_string(), payload, pos));
    }
    sent
}

/// A consumer of a new group, positioned after whatever the bus already holds.
async fn fresh_consumer(bus: &dyn Bus) -> Box<dyn BusConsumer> {
    let mut c = bus.consumer(&unique("g")).await.expect("consumer");
    drain(&mut *c).await;
    c
}

fn highest_per_partition(recs: &[BusRecord]) -> Vec<RecordPosition> {
    let mut best: BTreeMap<u32, u64> = BTreeMap::new();
    for r in recs {
        let e = best.entry(r.position.partition).or_insert(0);
        *e = (*e).max(r.position.offset);
    }
    best.into_iter()
        .map(|(partition, offset)| RecordPosition { partition, offset })
        .collect()
}

async fn drain(c: &mut dyn BusConsumer) {
    loop {
        let recs = c
            .poll(10_000, Duration::from_millis(300))
            .await
            .expect("poll");
        if recs.is_empty() {
            return;
        }
        c.commit(&highest_per_partition(&recs))
            .await
            .expect("commit");
    }
}

/// Polls until `want` records passing `keep` arrived, or 30 s passed.
async fn poll_until(
    c: &mut dyn BusConsumer,
    keep: impl Fn(&BusRecord) -> bool,
    want: usize,
) -> Vec<BusRecord> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        for r in c
            .poll(1000, Duration::from_millis(500))
            .await
            .expect("poll")
        {
            if keep(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// Positions grow within a room, a room keeps one partition, and a record's seq
/// is its offset + 1.
pub async fn positions_grow_per_room_on_one_partition(bus: &dyn Bus) {
    let rooms = [unique("ca"), unique("cb")];
    let sent = publish_50(bus, [&rooms[0], &rooms[1]]).await;
    for room in &rooms {
        let mine: Vec<RecordPosition> = sent.iter().filter(|s| &s.0 == room).map(|s| s.2).collect();
        assert!(
            mine.windows(2)
                .all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset),
            "{room}: {mine:?}"
        );
        assert!(mine.iter().all(|p| p.seq() == p.offset + 1));
    }
}

/// A group gets every record published once, a room's records in publish order.
pub async fn every_record_is_delivered_once_in_publish_order_per_room(bus: &dyn Bus) {
    let rooms = [unique("ca"), unique("cb")];
    let mut c = fresh_consumer(bus).await;
    let sent = publish_50(bus, [&rooms[0], &rooms[1]]).await;
    let got = poll_until(&mut *c, |r| rooms.contains(&r.room), sent.len()).await;
    assert_eq!(
        got.len(),
        sent.len(),
        "every published record is delivered once"
    );
    let positions: HashSet<RecordPosition> = got.iter().map(|r| r.position).collect();
    assert_eq!(positions.len(), got.len(), "no record twice");
    for room in &rooms {
        let want: Vec<&Bytes> = sent.iter().filter(|s| &s.0 == room).map(|s| &s.1).collect();
        let have: Vec<&Bytes> = got
            .iter()
            .filter(|r| &r.room == room)
            .map(|r| &r.payload)
            .collect();
        assert_eq!(have, want, "{room}: per-room order is publish order");
    }
    // Nothing more comes.
    let more = c
        .poll(1000, Duration::from_millis(300))
        .await
        .expect("poll");
    assert!(
        more.iter().all(|r| !rooms.contains(&r.room)),
        "delivered twice: {more:?}"
    );
}

/// `publish_batch` returns one position per record, in the order given (a
/// room's positions growing), and a group gets each record once, a room's in
/// batch order; single publishes around it keep their places.
pub async fn a_batch_is_delivered_once_in_its_order_per_room(bus: &dyn Bus) {
    let rooms = [unique("ba"), unique("bb")];
    let mut c = fresh_consumer(bus).await;
    let before = Bytes::from(format!("{}:before", rooms[0]));
    bus.publish(&rooms[0], before.clone())
        .await
        .expect("publish");
    let batch: Vec<(String, Bytes)> = (0..300u32)
        .map(|i| {
            let room = &rooms[(i % 2) as usize];
            (room.clone(), Bytes::from(format!("{room}:{i}")))
        })
        .collect();
    let positions = bus
        .publish_batch(batch.clone())
        .await
        .expect("publish_batch");
    assert_eq!(positions.len(), batch.len(), "one position per record");
    for room in &rooms {
        let mine: Vec<RecordPosition> = batch
            .iter()
            .zip(&positions)
            .filter(|(r, _)| &r.0 == room)
            .map(|(_, p)| *p)
            .collect();
        assert!(
            mine.windows(2)
                .all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset),
            "{room}: positions grow in batch order: {mine:?}"
        );
    }
    let after = Bytes::from(format!("{}:after", rooms[0]));
    bus.publish(&rooms[0], after.clone())
        .await
        .expect("publish");
    assert!(bus
        .publish_batch(Vec::new())
        .await
        .expect("an empty batch")
        .is_empty());
    let want = batch.len() + 2;
    let got = poll_until(&mut *c, |r| rooms.contains(&r.room), want).await;
    assert_eq!(got.len(), want, "every record of the batch once");
    let distinct: HashSet<RecordPosition> = got.iter().map(|r| r.position).collect();
    assert_eq!(distinct.len(), got.len(), "no record twice");
    for (n, room) in rooms.iter().enumerate() {
        let mut want: Vec<&Bytes> = batch
            .iter()
            .filter(|r| &r.0 == room)
            .map(|r| &r.1)
            .collect();
        if n == 0 {
            want.insert(0, &before);
            want.push(&after);
        }
        let have: Vec<&Bytes> = got
            .iter()
            .filter(|r| &r.room == room)
            .map(|r| &r.payload)
            .collect();
        assert_eq!(have, want, "{room}: delivered in publish order");
    }
}

/// A new member of a group resumes after the committed positions: uncommitted
/// records come again (at-least-once), committed ones do not; once all is
/// committed the lag is 0.
pub async fn a_group_resumes_after_its_committed_positions(bus: &dyn Bus) {
    let rooms = [unique("ca"), unique("cb")];
    let group = unique("g");
    // Join first, so the group starts at the end of whatever the bus holds.
    let mut c = bus.consumer(&group).await.expect("consumer");
    drain(&mut *c).await;
    let sent = publish_50(bus, [&rooms[0], &rooms[1]]).await;
    let got = poll_until(&mut *c, |r| rooms.contains(&r.room), sent.len()).await;
    assert_eq!(got.len(), sent.len());
    // Commit the first 20 (per partition: the highest position among them).
    c.commit(&highest_per_partition(&got[..20]))
        .await
        .expect("commit");
    drop(c);

    let mut c2 = bus.consumer(&group).await.expect("consumer again");
    let again = poll_until(&mut *c2, |r| rooms.contains(&r.room), sent.len() - 20).await;
    let committed: HashSet<RecordPosition> = got[..20].iter().map(|r| r.position).collect();
    let again_pos: HashSet<RecordPosition> = again.iter().map(|r| r.position).collect();
    assert!(
        committed.is_disjoint(&again_pos),
        "committed records are not redelivered"
    );
    let expected: HashSet<RecordPosition> = got
        .iter()
        .map(|r| r.position)
        .filter(|p| !committed.contains(p))
        .collect();
    assert!(
        expected.is_subset(&again_pos),
        "uncommitted records are redelivered"
    );
    for r in &again {
        let first = got.iter().find(|g| g.position == r.position);
        assert_eq!(
            first.map(|g| &g.payload),
            Some(&r.payload),
            "a redelivered record is the same record"
        );
    }
    c2.commit(&highest_per_partition(&again))
        .await
        .expect("commit all");
    assert_eq!(c2.lag().await.expect("lag"), 0);
}

/// Groups keep their own positions: each group gets every record, and a group
/// formed later gets what is published after it joined.
pub async fn groups_consume_independently(bus: &dyn Bus) {
    let room = unique("ca");
    let mut a = fresh_consumer(bus).await;
    let mut b = fresh_consumer(bus).await;
    let p = bus
        .publish(&room, Bytes::from_static(b"one"))
        .await
        .expect("publish");
    // (Both poll before either commits: the embedded Bus trims what every group
    // that ever committed has consumed, and a group counts from its first commit.)
    let got_a = poll_until(&mut *a, |r| r.position == p, 1).await;
    assert_eq!(got_a.len(), 1, "group a gets the record");
    let got_b = poll_until(&mut *b, |r| r.position == p, 1).await;
    assert_eq!(
        got_b.first().map(|r| &r.payload),
        Some(&Bytes::from_static(b"one")),
        "group b gets it too"
    );
    a.commit(&[p]).await.expect("commit");
    b.commit(&[p]).await.expect("commit");
    // A group formed later starts after what the bus held when it joined, and
    // still gets what is published afterwards.
    let mut c = fresh_consumer(bus).await;
    let late = bus
        .publish(&room, Bytes::from_static(b"late"))
        .await
        .expect("publish");
    let got_c = poll_until(&mut *c, |r| r.position == late, 1).await;
    assert_eq!(
        got_c.first().map(|r| &r.payload),
        Some(&Bytes::from_static(b"late"))
    );
}

/// A poll with nothing to deliver returns empty after its wait.
pub async fn an_empty_poll_returns_after_its_wait(bus: &dyn Bus) {
    let t = Instant::now();
    let mut c = fresh_consumer(bus).await;
    assert!(c
        .poll(10, Duration::from_millis(200))
        .await
        .expect("poll")
        .is_empty());
    assert!(t.elapsed() < Duration::from_secs(30));
}

/// A reachable bus says so.
pub async fn reports_ready(bus: &dyn Bus) {
    assert!(bus.ready().await);
}
