//! One conformance suite per port: plain async functions that panic on a broken
//! guarantee. Every adapter's tests call the suite of its port, so the embedded
//! adapters cannot drift from the distributed ones. Each suite uses its own
//! random room/group/vod names, so it can run against a shared external server.

use crate::model::{Danmaku, Kind};
use crate::ports::*;
use crate::vod::Session;
use bytes::Bytes;
use std::collections::HashSet;
use std::time::Duration;

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", rand::random::<u32>())
}

/// The Bus port.
pub async fn bus_suite(bus: &dyn Bus) {
    let room_a = unique("ca");
    let room_b = unique("cb");
    let group = unique("g");
    // Start the group first so it begins at the end of whatever the bus already holds.
    let mut c = bus.consumer(&group).await.expect("consumer");
    drain(&mut *c).await;

    let mut sent = Vec::new();
    for i in 0..50u32 {
        let room = if i % 3 == 0 { &room_b } else { &room_a };
        let payload = Bytes::from(format!("{room}:{i}"));
        let pos = bus.publish(room, payload.clone()).await.expect("publish");
        sent.push((room.clone(), payload, pos));
    }
    // Positions grow within a room and rooms keep one partition.
    for room in [&room_a, &room_b] {
        let mine: Vec<_> = sent.iter().filter(|s| &s.0 == room).map(|s| s.2).collect();
        assert!(mine
            .windows(2)
            .all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset));
        assert!(mine.iter().all(|p| p.seq() == p.offset + 1));
    }

    let got = poll_until(
        &mut *c,
        |r| r.room == room_a || r.room == room_b,
        sent.len(),
    )
    .await;
    assert_eq!(
        got.len(),
        sent.len(),
        "every published record is delivered once"
    );
    for room in [&room_a, &room_b] {
        let want: Vec<_> = sent
            .iter()
            .filter(|s| &s.0 == room)
            .map(|s| s.1.clone())
            .collect();
        let have: Vec<_> = got
            .iter()
            .filter(|r| &r.room == room)
            .map(|r| r.payload.clone())
            .collect();
        assert_eq!(have, want, "per-room order is publish order");
    }
    // Commit the first 20 (per partition: the highest position among them).
    let upto = highest_per_partition(&got[..20]);
    c.commit(&upto).await.expect("commit");
    drop(c);

    // A new member of the group resumes after the committed positions: the
    // uncommitted records come again (at-least-once), the committed ones do not.
    let mut c2 = bus.consumer(&group).await.expect("consumer again");
    let again = poll_until(
        &mut *c2,
        |r| r.room == room_a || r.room == room_b,
        sent.len() - 20,
    )
    .await;
    let committed: HashSet<_> = got[..20].iter().map(|r| r.position).collect();
    let again_pos: HashSet<_> = again.iter().map(|r| r.position).collect();
    assert!(
        committed.is_disjoint(&again_pos),
        "committed records are not redelivered"
    );
    let expected: HashSet<_> = got
        .iter()
        .map(|r| r.position)
        .filter(|p| !committed.contains(p))
        .collect();
    assert!(
        expected.is_subset(&again_pos),
        "uncommitted records are redelivered"
    );
    c2.commit(&highest_per_partition(&again))
        .await
        .expect("commit all");
    assert_eq!(c2.lag().await.expect("lag"), 0);

    // Another group sees everything independently.
    let other = unique("g2");
    let mut c3 = bus.consumer(&other).await.expect("other group");
    let p = bus
        .publish(&room_a, Bytes::from_static(b"late"))
        .await
        .expect("publish");
    let late = poll_until(&mut *c3, |r| r.position == p, 1).await;
    assert_eq!(late[0].payload, Bytes::from_static(b"late"));

    // An empty poll returns after its wait.
    let t = std::time::Instant::now();
    let mut c4 = bus.consumer(&unique("g3")).await.expect("consumer");
    drain(&mut *c4).await;
    assert!(c4
        .poll(10, Duration::from_millis(200))
        .await
        .expect("poll")
        .is_empty());
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(bus.ready().await);
}

fn highest_per_partition(recs: &[BusRecord]) -> Vec<RecordPosition> {
    let mut best: std::collections::BTreeMap<u32, u64> = Default::default();
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

async fn poll_until(
    c: &mut dyn BusConsumer,
    keep: impl Fn(&BusRecord) -> bool,
    want: usize,
) -> Vec<BusRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want && std::time::Instant::now() < deadline {
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

fn item(seq: u64, ts: i64) -> SliceItem {
    SliceItem {
        seq,
        ts_ms: ts,
        data: Bytes::from(format!("item-{seq}")),
    }
}

/// The SliceStore port.
pub async fn slice_store_suite(store: &dyn SliceStore) {
    let room = unique("cr");
    let base = 1_700_000_000_000i64;
    // 30 items over 3 slices of 10 s.
    let items: Vec<_> = (1..=30)
        .map(|s| item(s * 2, base + (s as i64 - 1) * 1000))
        .collect();
    let out = store
        .append(&room, 10_000, 60_000, &items[..20])
        .await
        .expect("append");
    assert_eq!(out.added, 20);
    assert!(out.slices.iter().all(|s| s.slice.room == room));
    assert_eq!(out.slices.iter().map(|s| s.members).sum::<u64>(), 20);
    // Redelivery of an overlapping batch stores only the new ones.
    let out = store
        .append(&room, 10_000, 60_000, &items[10..])
        .await
        .expect("append again");
    assert_eq!(out.added, 10, "redelivered items are not stored twice");
    assert_eq!(store.last_seq(&room).await.unwrap(), 60);
    assert_eq!(store.last_seq(&unique("none")).await.unwrap(), 0);

    // Cursor reads: seq order, each once, limit respected.
    let all = store.read_after(&room, 0, 1000).await.unwrap();
    assert_eq!(all, items);
    let page = store.read_after(&room, 20, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|i| i.seq).collect::<Vec<_>>(),
        vec![22, 24, 26, 28, 30]
    );
    assert!(store.read_after(&room, 60, 10).await.unwrap().is_empty());

    // Nothing is due before its time.
    let sizes = store.largest_slices(100).await.unwrap();
    assert!(sizes.iter().filter(|s| s.slice.room == room).count() == 3);
    // The key walk of the big-key scanner sees the room's three slices with their
    // sizes, in pages of the requested size.
    let mut cursor = String::new();
    let mut walked = Vec::new();
    for _ in 0..100_000 {
        let page = store.scan_keys(&cursor, 7).await.expect("scan_keys");
        walked.extend(page.keys);
        match page.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    for s in sizes.iter().filter(|s| s.slice.room == room) {
        let key = s.slice.key();
        let seen = walked
            .iter()
            .find(|k| k.key == key)
            .unwrap_or_else(|| panic!("the key walk misses {key}"));
        assert_eq!(seen.members, 10, "{key}");
        // Ten items of at least 6 bytes ("item-2") each.
        assert!(seen.bytes >= 60, "{key}: {seen:?}");
    }
    // Slices due at end + retention: the first one (base..base+10s) at base+70s.
    let first_end = crate::slice::SliceRef::containing(&room, base, 10_000).end_ms();
    let lease = Duration::from_secs(30);
    let mut claimed = Vec::new();
    while let Some(b) = store
        .claim_batch(first_end + 60_000, 1, lease)
        .await
        .unwrap()
    {
        if b.slices.iter().any(|s| s.room == room) {
            claimed.push(b);
        } else {
            store.complete_batch(b.id).await.unwrap();
        }
    }
    assert_eq!(claimed.len(), 1, "exactly the first slice is due");
    let b = claimed.pop().unwrap();
    assert!(b.items.iter().all(|(r, _)| r == &room));
    let first_seqs: Vec<_> = b.items.iter().map(|(_, i)| i.seq).collect();
    let want: Vec<_> = items
        .iter()
        .filter(|i| i.ts_ms < first_end)
        .map(|i| i.seq)
        .collect();
    assert_eq!(first_seqs, want);
    // Claimed items leave the hot store.
    assert!(store
        .read_after(&room, 0, 1000)
        .await
        .unwrap()
        .iter()
        .all(|i| i.ts_ms >= first_end));

    // A batch whose lease expired comes back with the same id and contents.
    let later = first_end + 60_000 + 31_000;
    let mut redo = None;
    let mut seen = Vec::new();
    while let Some(x) = store.claim_batch(later, 1, lease).await.unwrap() {
        if x.id == b.id {
            redo = Some(x);
            break;
        }
        // Another slice that fell due meanwhile: archive it here.
        seen.extend(
            x.items
                .iter()
                .filter(|(r, _)| r == &room)
                .map(|(_, i)| i.seq),
        );
        store.complete_batch(x.id).await.unwrap();
    }
    let redo = redo.expect("expired lease is handed out again");
    assert_eq!(redo, b);
    store.complete_batch(b.id).await.unwrap();

    // Expedite makes the rest due now, including slices created afterwards.
    store.expedite(&room, base + 100_000).await.unwrap();
    store
        .append(&room, 10_000, 60_000, &[item(100, base + 50_000)])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 11 && std::time::Instant::now() < deadline {
        match store.claim_batch(base, 100, lease).await.unwrap() {
            Some(x) => {
                seen.extend(
                    x.items
                        .iter()
                        .filter(|(r, _)| r == &room)
                        .map(|(_, i)| i.seq),
                );
                store.complete_batch(x.id).await.unwrap();
            }
            None => break,
        }
    }
    seen.sort();
    let mut want: Vec<_> = items
        .iter()
        .filter(|i| i.ts_ms >= first_end)
        .map(|i| i.seq)
        .collect();
    want.push(100);
    assert_eq!(seen, want, "expedited slices are archived, each item once");
    assert!(store.read_after(&room, 0, 1000).await.unwrap().is_empty());
    assert_eq!(
        store.last_seq(&room).await.unwrap(),
        100,
        "last seq survives archiving"
    );

    // A slice written after its namesake was claimed starts afresh.
    let room2 = unique("cr2");
    store
        .append(&room2, 10_000, 0, &[item(1, base)])
        .await
        .unwrap();
    store.expedite_all().await.unwrap();
    let mut got = Vec::new();
    while let Some(x) = store.claim_batch(base, 100, lease).await.unwrap() {
        got.extend(
            x.items
                .iter()
                .filter(|(r, _)| r == &room2)
                .map(|(_, i)| i.seq),
        );
        store.complete_batch(x.id).await.unwrap();
    }
    store
        .append(&room2, 10_000, 0, &[item(2, base + 1)])
        .await
        .unwrap();
    while let Some(x) = store.claim_batch(base + 10_000, 100, lease).await.unwrap() {
        got.extend(
            x.items
                .iter()
                .filter(|(r, _)| r == &room2)
                .map(|(_, i)| i.seq),
        );
        store.complete_batch(x.id).await.unwrap();
    }
    assert_eq!(got, vec![1, 2]);
    assert!(store.ready().await);
}

fn comment(id: u64, vod: &str, offset: i64, kind: Kind) -> ArchivedComment {
    ArchivedComment {
        vod: vod.to_string(),
        offset_ms: offset,
        item: Danmaku {
            id,
            room: "r".into(),
            user: "u".into(),
            ts_ms: 1_700_000_000_000 + offset,
            kind: kind as i32,
            text: format!("c{id}"),
            vod: Some(vod.to_string()),
            offset_ms: Some(offset),
            ..Default::default()
        },
    }
}

/// The ArchiveStore port.
pub async fn archive_store_suite(store: &dyn ArchiveStore) {
    let room = unique("ar");
    let v1 = unique("v");
    let v2 = unique("w");
    let s1 = Session {
        vod: v1.clone(),
        room: room.clone(),
        started_at: 1000,
        ended_at: None,
        latency_ms: 0,
    };
    let s2 = Session {
        vod: v2.clone(),
        room: room.clone(),
        started_at: 5000,
        ended_at: None,
        latency_ms: 250,
    };
    store.create_session(&s1).await.unwrap();
    assert!(matches!(
        store.create_session(&s1).await,
        Err(ArchiveError::AlreadyExists)
    ));
    store.create_session(&s2).await.unwrap();
    assert_eq!(store.get_session(&v1).await.unwrap(), Some(s1.clone()));
    assert_eq!(store.get_session(&unique("nope")).await.unwrap(), None);
    let list = store.sessions_by_room(&room, 10).await.unwrap();
    assert_eq!(
        list.iter().map(|s| s.vod.clone()).collect::<Vec<_>>(),
        vec![v2.clone(), v1.clone()],
        "newest first"
    );
    assert_eq!(store.sessions_by_room(&room, 1).await.unwrap().len(), 1);

    let ended = store.end_session(&v1, 4000).await.unwrap();
    assert_eq!(ended.ended_at, Some(4000));
    assert!(matches!(
        store.end_session(&v1, 4001).await,
        Err(ArchiveError::AlreadyEnded)
    ));
    assert!(matches!(
        store.end_session(&unique("nope"), 1).await,
        Err(ArchiveError::NotFound)
    ));

    // Rows over two segments, written out of order, twice.
    let rows = vec![
        comment(30, &v1, 400_000, Kind::Comment),
        comment(20, &v1, 1_000, Kind::Gift),
        comment(10, &v1, 1_000, Kind::Comment),
        comment(40, &v1, 0, Kind::Comment),
        comment(50, &v2, 10, Kind::Comment),
    ];
    store.upsert_comments(&rows).await.unwrap();
    store.upsert_comments(&rows[1..3]).await.unwrap();
    assert_eq!(store.count(&v1).await.unwrap(), 4, "upserts are idempotent");
    assert_eq!(store.count(&v2).await.unwrap(), 1);
    let seg0 = store.read_segment(&v1, 0).await.unwrap();
    let order: Vec<_> = seg0.iter().map(|c| (c.offset_ms, c.item.id)).collect();
    assert_eq!(
        order,
        vec![(0, 40), (1_000, 10), (1_000, 20)],
        "ordered by (offset, id)"
    );
    assert_eq!(seg0[2].item.kind(), Kind::Gift);
    assert_eq!(seg0[0].item.vod.as_deref(), Some(v1.as_str()));
    assert_eq!(seg0[0].item.offset_ms, Some(0));
    let seg1 = store.read_segment(&v1, 1).await.unwrap();
    assert_eq!(seg1.len(), 1);
    assert_eq!(seg1[0].item.text, "c30");
    assert!(store.read_segment(&v1, 7).await.unwrap().is_empty());
    assert_eq!(store.last_segment(&v1).await.unwrap(), Some(1));
    assert_eq!(store.last_segment(&unique("none")).await.unwrap(), None);
    assert!(store.ready().await);
}

/// The ReplayCache port.
pub async fn replay_cache_suite(cache: &dyn ReplayCache) {
    let k = unique("k");
    let v = CachedBody {
        body: Bytes::from_static(b"{\"items\":[]}"),
        gzip: Bytes::from_static(b"gz"),
        etag: "\"abc\"".into(),
    };
    assert_eq!(cache.get(&k).await, None);
    cache.put(&k, v.clone(), Duration::from_secs(60)).await;
    assert_eq!(cache.get(&k).await, Some(v.clone()));
    cache.invalidate(&k).await;
    assert_eq!(cache.get(&k).await, None);
    cache.put(&k, v.clone(), Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(cache.get(&k).await, None, "entries expire after their ttl");
}
