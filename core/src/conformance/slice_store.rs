//! The SliceStore suite: what [`SliceStore`] promises, one function per guarantee,
//! run by [`crate::slice_store_suite!`]. Times are fixed (from [`BASE`]), never the
//! clock, so due times and claims are deterministic.

use super::unique;
use crate::ports::{ArchiveBatch, SliceItem, SliceStat, SliceStore};
use crate::slice::SliceRef;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Duration;

/// The start of every case's time line (a multiple of 10 s).
pub const BASE: i64 = 1_700_000_000_000;
const LEASE: Duration = Duration::from_secs(30);
const RETENTION: i64 = 60_000;

/// Expands to one `#[tokio::test]` per SliceStore guarantee; see [`crate::conformance`].
#[macro_export]
macro_rules! slice_store_suite {
    ($(#[$attr:meta])* $name:ident $(($($rt:tt)*))?, $make:expr $(,)?) => {
        $crate::__conformance_cases!(one slice_store [$(#[$attr])*] $name ($($($rt)*)?) ($make) [
            append_is_idempotent
            append_reports_the_slices_it_touched
            last_seq_is_the_highest_seq_ever_appended
            reads_by_cursor_come_in_seq_order_each_once
            the_key_walk_sees_every_slice_with_its_size
            a_slice_falls_due_at_its_end_plus_the_retention
            a_late_item_stays_readable_for_the_retention_after_its_append
            an_expired_lease_is_handed_out_again_unchanged
            a_lease_is_renewed_while_held
            items_of_a_claimed_or_archived_slice_stay_readable_until_their_retention_ends
            an_archived_slice_is_never_handed_out_again
            archived_slices_are_removed_after_their_retention_oldest_first
            expired_through_is_the_highest_seq_expiry_removed
            archived_through_is_below_the_oldest_item_not_archived
            expedite_makes_a_rooms_slices_due_including_later_ones
            expedite_all_makes_every_slice_due
            a_slice_written_after_its_namesake_was_claimed_starts_afresh
            late_timestamps_go_into_the_newest_slice
            late_timestamps_after_a_claim_never_reopen_an_older_slice
            a_shorter_slice_length_applies_from_the_next_slice
            a_longer_slice_length_applies_from_the_next_slice
            slices_of_a_room_stay_disjoint_in_time_and_seq
            redelivery_after_a_length_change_stores_nothing_twice_and_moves_nothing
            deleted_items_are_never_read_again_and_pages_fill_past_them
            an_item_deleted_before_its_append_stays_hidden
            claimed_batches_leave_deleted_items_out
            reports_ready
        ]);
    };
}

fn item(seq: u64, ts: i64) -> SliceItem {
    SliceItem {
        seq,
        ts_ms: ts,
        data: Bytes::from(format!("item-{seq}")),
    }
}

/// 30 items, seqs 2, 4, .., 60, one a second from [`BASE`]: three slices of 10 s.
fn thirty() -> Vec<SliceItem> {
    (1..=30)
        .map(|s| item(s * 2, BASE + (s as i64 - 1) * 1000))
        .collect()
}

fn seqs(items: &[SliceItem]) -> Vec<u64> {
    items.iter().map(|i| i.seq).collect()
}

/// The live slices of `room`, ordered by start.
async fn live_slices(store: &dyn SliceStore, room: &str) -> Vec<SliceStat> {
    let mut v: Vec<SliceStat> = store
        .largest_slices(100_000)
        .await
        .expect("largest_slices")
        .into_iter()
        .filter(|s| s.slice.room == room)
        .collect();
    v.sort_by_key(|s| s.slice.start_ms);
    v
}

/// The seqs of `room` in a claimed batch.
fn seqs_of(b: &ArchiveBatch, room: &str) -> Vec<u64> {
    b.items
        .iter()
        .filter(|(r, _)| r == room)
        .map(|(_, i)| i.seq)
        .collect()
}

/// Claims and completes, one slice per batch, everything due at `now`; returns the
/// slices of `room` with their items (other rooms' batches are completed too).
async fn archive_room(
    store: &dyn SliceStore,
    room: &str,
    now: i64,
) -> Vec<(SliceRef, Vec<SliceItem>)> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let Some(b) = store.claim_batch(now, 1, LEASE).await.expect("claim") else {
            return out;
        };
        let mine: Vec<&SliceRef> = b.slices.iter().filter(|s| s.room == room).collect();
        assert!(
            mine.len() <= 1,
            "a batch of at most one slice: {:?}",
            b.slices
        );
        if let Some(s) = mine.first() {
            let items = b
                .items
                .iter()
                .filter(|(r, _)| r == room)
                .map(|(_, i)| i.clone())
                .collect();
            out.push(((*s).clone(), items));
        }
        store.complete_batch(b.id).await.expect("complete");
    }
    panic!("claims never ran dry");
}

/// Redelivered items (an overlapping batch, or all of it again) are not stored
/// twice; each item is read back once.
pub async fn append_is_idempotent(store: &dyn SliceStore) {
    let room = unique("cr");
    let items = thirty();
    let out = store
        .append(&room, 10_000, RETENTION, &items[..20])
        .await
        .expect("append");
    assert_eq!(out.added, 20);
    let out = store
        .append(&room, 10_000, RETENTION, &items[10..])
        .await
        .expect("append again");
    assert_eq!(out.added, 10, "redelivered items are not stored twice");
    let out = store
        .append(&room, 10_000, RETENTION, &items)
        .await
        .expect("append all again");
    assert_eq!(out.added, 0, "a full redelivery stores nothing");
    assert_eq!(
        store.read_after(&room, 0, 1000).await.unwrap(),
        items,
        "every item once"
    );
}

/// `append` reports every slice it touched, with its members and bytes after it.
pub async fn append_reports_the_slices_it_touched(store: &dyn SliceStore) {
    let room = unique("cr");
    let items = thirty();
    let out = store
        .append(&room, 10_000, RETENTION, &items[..15])
        .await
        .expect("append");
    let mut got: Vec<(i64, i64, u64)> = out
        .slices
        .iter()
        .map(|s| (s.slice.start_ms, s.slice.len_ms, s.members))
        .collect();
    got.sort();
    assert_eq!(got, vec![(BASE, 10_000, 10), (BASE + 10_000, 10_000, 5)]);
    assert!(out.slices.iter().all(|s| s.slice.room == room));
    // Ten items of at least 6 bytes ("item-2").
    assert!(out.slices.iter().all(|s| s.bytes >= 6 * s.members));
    let out = store
        .append(&room, 10_000, RETENTION, &items[15..])
        .await
        .expect("append");
    let mut got: Vec<(i64, u64)> = out
        .slices
        .iter()
        .map(|s| (s.slice.start_ms, s.members))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![(BASE + 10_000, 10), (BASE + 20_000, 10)],
        "members after the append"
    );
}

/// `last_seq` is the highest seq ever appended (0 for an unknown room), also once
/// everything is archived.
pub async fn last_seq_is_the_highest_seq_ever_appended(store: &dyn SliceStore) {
    let room = unique("cr");
    let items = thirty();
    store
        .append(&room, 10_000, RETENTION, &items[..20])
        .await
        .unwrap();
    assert_eq!(store.last_seq(&room).await.unwrap(), 40);
    store
        .append(&room, 10_000, RETENTION, &items[5..])
        .await
        .unwrap();
    assert_eq!(store.last_seq(&room).await.unwrap(), 60);
    assert_eq!(store.last_seq(&unique("none")).await.unwrap(), 0);
    store.expedite_all().await.unwrap();
    archive_room(store, &room, BASE).await;
    store
        .expire_archived(BASE + 30_000 + RETENTION)
        .await
        .unwrap();
    assert!(store.read_after(&room, 0, 1000).await.unwrap().is_empty());
    assert_eq!(
        store.last_seq(&room).await.unwrap(),
        60,
        "last seq survives archiving and expiry"
    );
}

/// Reads by cursor return the items after it in seq order, each once, at most
/// `limit`.
pub async fn reads_by_cursor_come_in_seq_order_each_once(store: &dyn SliceStore) {
    let room = unique("cr");
    let items = thirty();
    for chunk in items.chunks(7) {
        store.append(&room, 10_000, RETENTION, chunk).await.unwrap();
    }
    assert_eq!(store.read_after(&room, 0, 1000).await.unwrap(), items);
    let page = store.read_after(&room, 20, 5).await.unwrap();
    assert_eq!(seqs(&page), vec![22, 24, 26, 28, 30]);
    let page = store.read_after(&room, 21, 2).await.unwrap();
    assert_eq!(seqs(&page), vec![22, 24], "a cursor between seqs");
    assert!(store.read_after(&room, 60, 10).await.unwrap().is_empty());
    assert!(store
        .read_after(&unique("none"), 0, 10)
        .await
        .unwrap()
        .is_empty());
    for limit in [1usize, 7, 1000] {
        let mut after = 0;
        let mut got = Vec::new();
        loop {
            let page = store.read_after(&room, after, limit).await.unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            after = last.seq;
            got.extend(page);
        }
        assert_eq!(got, items, "page by page, limit {limit}");
    }
}

/// The key walk of the big-key scanner sees every slice with its size, in pages of
/// the requested size.
pub async fn the_key_walk_sees_every_slice_with_its_size(store: &dyn SliceStore) {
    let room = unique("cr");
    store
        .append(&room, 10_000, RETENTION, &thirty())
        .await
        .unwrap();
    let sizes = live_slices(store, &room).await;
    assert_eq!(sizes.len(), 3);
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
    for s in &sizes {
        let key = s.slice.key();
        let seen = walked
            .iter()
            .find(|k| k.key == key)
            .unwrap_or_else(|| panic!("the key walk misses {key}"));
        assert_eq!(seen.members, 10, "{key}");
        // Ten items of at least 6 bytes ("item-2") each.
        assert!(seen.bytes >= 60, "{key}: {seen:?}");
    }
}

/// A slice is due at its end plus the hot retention, not before; a claim takes it
/// with exactly its items, which leave the hot store once archived and expired
/// (at that same time).
pub async fn a_slice_falls_due_at_its_end_plus_the_retention(store: &dyn SliceStore) {
    let room = unique("cr");
    let items = thirty();
    store
        .append(&room, 10_000, RETENTION, &items)
        .await
        .unwrap();
    let first_end = BASE + 10_000;
    assert!(
        archive_room(store, &room, first_end + RETENTION - 1)
            .await
            .is_empty(),
        "nothing is due before its time"
    );
    let claimed = archive_room(store, &room, first_end + RETENTION).await;
    assert_eq!(claimed.len(), 1, "exactly the first slice is due");
    let (slice, got) = &claimed[0];
    assert_eq!((slice.start_ms, slice.len_ms), (BASE, 10_000));
    let want: Vec<SliceItem> = items
        .iter()
        .filter(|i| i.ts_ms < first_end)
        .cloned()
        .collect();
    assert_eq!(got, &want, "the batch holds the slice's items");
    assert_eq!(
        store.read_after(&room, 0, 1000).await.unwrap(),
        items,
        "archived items stay readable until expired"
    );
    store.expire_archived(first_end + RETENTION).await.unwrap();
    let left = store.read_after(&room, 0, 1000).await.unwrap();
    assert_eq!(
        left,
        items
            .iter()
            .filter(|i| i.ts_ms >= first_end)
            .cloned()
            .collect::<Vec<_>>(),
        "archived items leave the hot store when their retention ends"
    );
}

/// An item appended after its slice's end plus the retention (a writer cut off
/// from the store, or behind) is held for the retention after its append, like
/// any other: its slice is not due before then, so it is not archived and
/// expired at once (readers catching up from the store would find it gone);
/// the same for a late item whose slice's namesake was archived already.
/// (Times far after the other cases', whose slices this case's claims would
/// otherwise take.)
pub async fn a_late_item_stays_readable_for_the_retention_after_its_append(store: &dyn SliceStore) {
    let t = BASE + 100_000_000;
    let len = 10_000;
    let due = t + len + RETENTION;
    let late = due + 5_000;
    // A live slice that receives a late item.
    let room = unique("cl");
    store
        .append_at(&room, len, RETENTION, &[item(1, t)], Some(t))
        .await
        .unwrap();
    store
        .append_at(&room, len, RETENTION, &[item(2, t + 1)], Some(late))
        .await
        .unwrap();
    assert!(
        archive_room(store, &room, late + RETENTION - 1)
            .await
            .is_empty(),
        "not due before the retention after the late append"
    );
    store.expire_archived(late + RETENTION - 1).await.unwrap();
    assert_eq!(
        seqs(&store.read_after(&room, 0, 10).await.unwrap()),
        vec![1, 2]
    );
    let got = archive_room(store, &room, late + RETENTION).await;
    assert_eq!(
        got.iter().map(|(_, its)| seqs(its)).collect::<Vec<_>>(),
        vec![vec![1, 2]],
        "archived once due"
    );
    // A late item after its slice was archived and expired: a new slice of
    // the same name, held for the retention after the append.
    let room = unique("cl");
    store
        .append_at(&room, len, RETENTION, &[item(1, t)], Some(t))
        .await
        .unwrap();
    assert_eq!(archive_room(store, &room, due).await.len(), 1);
    store.expire_archived(due).await.unwrap();
    assert!(store.read_after(&room, 0, 10).await.unwrap().is_empty());
    store
        .append_at(&room, len, RETENTION, &[item(2, t + 2)], Some(late))
        .await
        .unwrap();
    assert!(archive_room(store, &room, late + RETENTION - 1)
        .await
        .is_empty());
    store.expire_archived(late + RETENTION - 1).await.unwrap();
    assert_eq!(
        seqs(&store.read_after(&room, 0, 10).await.unwrap()),
        vec![2]
    );
    assert_eq!(archive_room(store, &room, late + RETENTION).await.len(), 1);
    // An expedited room's late item is due at once all the same.
    let room = unique("cl");
    store
        .append_at(&room, len, RETENTION, &[item(1, t)], Some(t))
        .await
        .unwrap();
    store.expedite(&room, t + len).await.unwrap();
    store
        .append_at(&room, len, RETENTION, &[item(2, t + 3)], Some(late))
        .await
        .unwrap();
    let got = archive_room(store, &room, t).await;
    assert_eq!(
        got.iter().map(|(_, its)| seqs(its)).collect::<Vec<_>>(),
        vec![vec![1, 2]]
    );
}

/// A batch whose lease expired is handed out again with the same id and
/// contents; once completed, never again.
pub async fn an_expired_lease_is_handed_out_again_unchanged(store: &dyn SliceStore) {
    let room = unique("cr");
    store
        .append(&room, 10_000, RETENTION, &thirty())
        .await
        .unwrap();
    let now = BASE + 10_000 + RETENTION;
    let mut claimed = None;
    while let Some(b) = store.claim_batch(now, 1, LEASE).await.unwrap() {
        if b.slices.iter().any(|s| s.room == room) {
            claimed = Some(b);
            break;
        }
        store.complete_batch(b.id).await.unwrap();
    }
    let b = claimed.expect("the first slice is due");
    assert_eq!(seqs_of(&b, &room).len(), 10);
    // Within the lease it is not handed out again.
    let within = now + LEASE.as_millis() as i64 - 1;
    while let Some(x) = store.claim_batch(within, 1, LEASE).await.unwrap() {
        assert_ne!(x.id, b.id, "handed out again within its lease");
        store.complete_batch(x.id).await.unwrap();
    }
    let later = now + LEASE.as_millis() as i64 + 1_000;
    let mut redo = None;
    while let Some(x) = store.claim_batch(later, 1, LEASE).await.unwrap() {
        if x.id == b.id {
            redo = Some(x);
            break;
        }
        store.complete_batch(x.id).await.unwrap();
    }
    let redo = redo.expect("an expired lease is handed out again");
    assert_eq!(redo, b, "same id, same contents");
    store.complete_batch(b.id).await.unwrap();
    store
        .complete_batch(b.id)
        .await
        .expect("completing twice is fine");
    let much_later = later + 10 * LEASE.as_millis() as i64;
    while let Some(x) = store.claim_batch(much_later, 1, LEASE).await.unwrap() {
        assert_ne!(x.id, b.id, "a completed batch comes back");
        store.complete_batch(x.id).await.unwrap();
    }
}

/// `expedite` makes every slice of the room starting at or before the mark due
/// now, including slices written afterwards; each item is archived once.
pub async fn expedite_makes_a_rooms_slices_due_including_later_ones(store: &dyn SliceStore) {
    let room = unique("cr");
    let other = unique("co");
    let items = thirty();
    store
        .append(&room, 10_000, RETENTION, &items)
        .await
        .unwrap();
    store
        .append(&other, 10_000, RETENTION, &items)
        .await
        .unwrap();
    store.expedite(&room, BASE + 100_000).await.unwrap();
    store
        .append(&room, 10_000, RETENTION, &[item(100, BASE + 50_000)])
        .await
        .unwrap();
    // Past the mark: due on schedule only.
    store
        .append(&room, 10_000, RETENTION, &[item(102, BASE + 115_000)])
        .await
        .unwrap();
    let mut got: Vec<u64> = archive_room(store, &room, BASE)
        .await
        .iter()
        .flat_map(|(_, its)| seqs(its))
        .collect();
    got.sort();
    let mut want = seqs(&items);
    want.push(100);
    assert_eq!(got, want, "expedited slices are archived, each item once");
    let mut held = want.clone();
    held.push(102);
    assert_eq!(
        seqs(&store.read_after(&room, 0, 1000).await.unwrap()),
        held,
        "archived early, still readable"
    );
    store.expire_archived(BASE + 200_000).await.unwrap();
    assert_eq!(
        seqs(&store.read_after(&room, 0, 1000).await.unwrap()),
        vec![102]
    );
    assert_eq!(
        store.read_after(&other, 0, 1000).await.unwrap(),
        items,
        "other rooms are not expedited"
    );
}

/// `expedite_all` makes every slice of every room due now.
pub async fn expedite_all_makes_every_slice_due(store: &dyn SliceStore) {
    let rooms = [unique("ca"), unique("cb")];
    let items = thirty();
    for room in &rooms {
        store.append(room, 10_000, RETENTION, &items).await.unwrap();
    }
    store.expedite_all().await.unwrap();
    let mut per_room: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    while let Some(b) = store.claim_batch(BASE, 100, LEASE).await.unwrap() {
        for room in &rooms {
            per_room
                .entry(room.clone())
                .or_default()
                .extend(seqs_of(&b, room));
        }
        store.complete_batch(b.id).await.unwrap();
    }
    for room in &rooms {
        let mut got = per_room.remove(room).unwrap_or_default();
        got.sort();
        assert_eq!(got, seqs(&items), "{room}: every item archived once");
        assert_eq!(store.read_after(room, 0, 1000).await.unwrap(), items);
    }
    store
        .expire_archived(BASE + 30_000 + RETENTION)
        .await
        .unwrap();
    for room in &rooms {
        assert!(store.read_after(room, 0, 1000).await.unwrap().is_empty());
    }
}

/// Items appended to a slice's name after it was claimed start a new slice of the
/// same name, archived on its own.
pub async fn a_slice_written_after_its_namesake_was_claimed_starts_afresh(store: &dyn SliceStore) {
    let room = unique("cr2");
    store
        .append(&room, 10_000, 0, &[item(1, BASE)])
        .await
        .unwrap();
    store.expedite_all().await.unwrap();
    let first = archive_room(store, &room, BASE).await;
    store
        .append(&room, 10_000, 0, &[item(2, BASE + 1)])
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.read_after(&room, 0, 10).await.unwrap()),
        vec![1, 2],
        "the archived slice, then its namesake"
    );
    assert_eq!(store.expire_archived(BASE + 10_000).await.unwrap(), 1);
    assert_eq!(
        seqs(&store.read_after(&room, 0, 10).await.unwrap()),
        vec![2]
    );
    let second = archive_room(store, &room, BASE + 10_000).await;
    let got: Vec<(i64, Vec<u64>)> = first
        .iter()
        .chain(&second)
        .map(|(s, its)| (s.start_ms, seqs(its)))
        .collect();
    assert_eq!(got, vec![(BASE, vec![1]), (BASE, vec![2])]);
}

/// Claims every due slice of `room` at `now`, one per batch, without completing
/// them: the batches, each with the start of its slice, oldest slice first.
async fn claim_each(store: &dyn SliceStore, room: &str, now: i64) -> Vec<(i64, ArchiveBatch)> {
    let mut out = Vec::new();
    while let Some(b) = store.claim_batch(now, 1, LEASE).await.expect("claim") {
        match b.slices.iter().find(|s| s.room == room) {
            Some(s) => out.push((s.start_ms, b)),
            None => store.complete_batch(b.id).await.expect("complete"),
        }
    }
    out.sort_by_key(|(start, _)| *start);
    out
}

/// An archiver at work renews its lease: the batch is not handed out again
/// within the renewed lease, only after it; renewing a completed batch says so.
pub async fn a_lease_is_renewed_while_held(store: &dyn SliceStore) {
    let room = unique("cn");
    store
        .append(&room, 10_000, RETENTION, &thirty())
        .await
        .unwrap();
    store.expedite_all().await.unwrap();
    let lease = LEASE.as_millis() as i64;
    let held = claim_each(store, &room, BASE).await;
    assert_eq!(held.len(), 3);
    let (_, b) = &held[0];
    // Renewed just before its lease ends, for another lease from then.
    let renewed_at = BASE + lease - 1_000;
    assert!(store.renew_lease(b.id, renewed_at, LEASE).await.unwrap());
    for (_, other) in &held[1..] {
        store.complete_batch(other.id).await.unwrap();
    }
    let past_first = BASE + lease + 1_000;
    while let Some(x) = store.claim_batch(past_first, 1, LEASE).await.unwrap() {
        assert_ne!(x.id, b.id, "handed out again within its renewed lease");
        store.complete_batch(x.id).await.unwrap();
    }
    let past_renewed = renewed_at + lease;
    let redo = store
        .claim_batch(past_renewed, 1, LEASE)
        .await
        .unwrap()
        .expect("handed out again once the renewed lease expired");
    assert_eq!(&redo, b, "same id, same contents");
    store.complete_batch(b.id).await.unwrap();
    assert!(
        !store.renew_lease(b.id, past_renewed, LEASE).await.unwrap(),
        "a completed batch is no longer leased"
    );
    assert!(!store.renew_lease(u64::MAX / 2, BASE, LEASE).await.unwrap());
}

/// Archiving copies: the items of a claimed slice, and of an archived one, stay
/// readable by cursor, in order with the rest, until the slice's hot retention
/// ends (its end plus the retention, even when it was archived early); archived
/// slices are not pending.
pub async fn items_of_a_claimed_or_archived_slice_stay_readable_until_their_retention_ends(
    store: &dyn SliceStore,
) {
    let room = unique("ck");
    let items = thirty();
    store
        .append(&room, 10_000, RETENTION, &items)
        .await
        .unwrap();
    store.expedite_all().await.unwrap();
    let b = store
        .claim_batch(BASE, 100, LEASE)
        .await
        .unwrap()
        .expect("every slice is due");
    assert_eq!(seqs_of(&b, &room), seqs(&items));
    assert_eq!(
        store.read_after(&room, 0, 1000).await.unwrap(),
        items,
        "claimed items stay readable"
    );
    assert_eq!(
        seqs(&store.read_after(&room, 19, 3).await.unwrap()),
        vec![20, 22, 24],
        "a cursor across claimed slices"
    );
    store.complete_batch(b.id).await.unwrap();
    assert_eq!(store.pending().await.unwrap(), 0, "archived, not pending");
    assert_eq!(
        store.read_after(&room, 0, 1000).await.unwrap(),
        items,
        "archived items stay readable"
    );
    let first_until = BASE + 10_000 + RETENTION;
    assert_eq!(store.expire_archived(first_until - 1).await.unwrap(), 0);
    assert_eq!(store.read_after(&room, 0, 1000).await.unwrap(), items);
    let new = item(100, BASE + 29_500);
    store
        .append(&room, 10_000, RETENTION, std::slice::from_ref(&new))
        .await
        .unwrap();
    let mut all = items.clone();
    all.push(new);
    assert_eq!(
        store.read_after(&room, 40, 1000).await.unwrap(),
        all[20..],
        "archived items, then the newest slice's namesake"
    );
    assert_eq!(store.last_seq(&room).await.unwrap(), 100);
}

/// A slice, once archived, is never in a batch again: not after any lease, not
/// after its expiry; items appended to its name later go into a new slice.
pub async fn an_archived_slice_is_never_handed_out_again(store: &dyn SliceStore) {
    let room = unique("ca");
    store
        .append(&room, 10_000, RETENTION, &thirty())
        .await
        .unwrap();
    store.expedite_all().await.unwrap();
    assert_eq!(archive_room(store, &room, BASE).await.len(), 3);
    let much_later = BASE + 100 * LEASE.as_millis() as i64;
    assert!(
        archive_room(store, &room, much_later).await.is_empty(),
        "an archived slice came back"
    );
    store.expire_archived(much_later).await.unwrap();
    assert!(archive_room(store, &room, much_later).await.is_empty());
    // The newest slice's name again: a new slice with only the new item.
    store
        .append(&room, 10_000, RETENTION, &[item(100, BASE + 29_500)])
        .await
        .unwrap();
    store.expedite_all().await.unwrap();
    let again = archive_room(store, &room, much_later).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0.start_ms, BASE + 20_000);
    assert_eq!(seqs(&again[0].1), vec![100]);
}

/// `expired_through` is the highest seq that expiry removed (0 before any, and
/// for an archived slice still within its retention): every item at or below it
/// is gone, the ones above it are read; other rooms are untouched.
pub async fn expired_through_is_the_highest_seq_expiry_removed(store: &dyn SliceStore) {
    let room = unique("cx");
    let other = unique("cy");
    let items = thirty();
    for r in [&room, &other] {
        store.append(r, 10_000, RETENTION, &items).await.unwrap();
    }
    assert_eq!(store.expired_through(&room).await.unwrap(), 0);
    store.expedite(&room, BASE + 30_000).await.unwrap();
    for (_, batch) in claim_each(store, &room, BASE).await {
        store.complete_batch(batch.id).await.unwrap();
    }
    assert_eq!(
        store.expired_through(&room).await.unwrap(),
        0,
        "archived is not expired"
    );
    // The first slice (seqs 2..=20) reaches the end of its retention.
    store
        .expire_archived(BASE + 10_000 + RETENTION)
        .await
        .unwrap();
    assert_eq!(store.expired_through(&room).await.unwrap(), 20);
    assert_eq!(store.read_after(&room, 0, 1000).await.unwrap(), items[10..]);
    store.expire_archived(BASE + 1_000_000).await.unwrap();
    assert_eq!(store.expired_through(&room).await.unwrap(), 60);
    assert_eq!(
        store.expired_through(&other).await.unwrap(),
        0,
        "another room's slices were not archived"
    );
}

/// `expire_archived` deletes archived slices whose retention ended, a room's
/// oldest first: never a slice not archived yet, however old, nor one newer than
/// it (a cursor read never skips items in the middle); live slices stay.
pub async fn archived_slices_are_removed_after_their_retention_oldest_first(
    store: &dyn SliceStore,
) {
    let room = unique("ce");
    let live = unique("cl");
    let items = thirty();
    store
        .append(&room, 10_000, RETENTION, &items)
        .await
        .unwrap();
    store
        .append(&live, 10_000, RETENTION, &items)
        .await
        .unwrap();
    store.expedite(&room, BASE + 30_000).await.unwrap();
    let held = claim_each(store, &room, BASE).await;
    let starts: Vec<i64> = held.iter().map(|(s, _)| *s).collect();
    assert_eq!(starts, vec![BASE, BASE + 10_000, BASE + 20_000]);
    // The two newer slices archived, the oldest still in its batch.
    store.complete_batch(held[1].1.id).await.unwrap();
    store.complete_batch(held[2].1.id).await.unwrap();
    let far = BASE + 1_000_000;
    assert_eq!(
        store.expire_archived(far).await.unwrap(),
        0,
        "nothing behind a slice not archived yet"
    );
    assert_eq!(store.read_after(&room, 0, 1000).await.unwrap(), items);
    store.complete_batch(held[0].1.id).await.unwrap();
    // The first two slices' retention ended; the third's (until BASE + 90 s) not.
    assert_eq!(
        store
            .expire_archived(BASE + 20_000 + RETENTION)
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.read_after(&room, 0, 1000).await.unwrap(), items[20..]);
    assert_eq!(store.expire_archived(far).await.unwrap(), 1);
    assert!(store.read_after(&room, 0, 1000).await.unwrap().is_empty());
    assert_eq!(store.expire_archived(far).await.unwrap(), 0, "idempotent");
    assert_eq!(
        store.read_after(&live, 0, 1000).await.unwrap(),
        items,
        "slices not archived are never expired"
    );
    assert_eq!(store.last_seq(&room).await.unwrap(), 60);
}

/// `archived_through` is below the oldest item not archived yet (whatever newer
/// batches completed), and the room's last seq once everything is archived.
pub async fn archived_through_is_below_the_oldest_item_not_archived(store: &dyn SliceStore) {
    let room = unique("ct");
    assert_eq!(store.archived_through(&room).await.unwrap(), 0);
    store
        .append(&room, 10_000, RETENTION, &thirty())
        .await
        .unwrap();
    assert!(store.archived_through(&room).await.unwrap() < 2);
    store.expedite_all().await.unwrap();
    let held = claim_each(store, &room, BASE).await;
    assert_eq!(held.len(), 3);
    assert!(
        store.archived_through(&room).await.unwrap() < 2,
        "claimed is not archived"
    );
    store.complete_batch(held[0].1.id).await.unwrap();
    let at = store.archived_through(&room).await.unwrap();
    assert!((20..22).contains(&at), "first slice archived: {at}");
    store.complete_batch(held[2].1.id).await.unwrap();
    let at = store.archived_through(&room).await.unwrap();
    assert!(
        (20..22).contains(&at),
        "the second slice is not archived yet: {at}"
    );
    store.complete_batch(held[1].1.id).await.unwrap();
    assert_eq!(store.archived_through(&room).await.unwrap(), 60);
    store.expire_archived(BASE + 1_000_000).await.unwrap();
    assert_eq!(store.archived_through(&room).await.unwrap(), 60);
    store
        .append(&room, 10_000, RETENTION, &[item(70, BASE + 45_000)])
        .await
        .unwrap();
    let at = store.archived_through(&room).await.unwrap();
    assert!((60..70).contains(&at), "a new slice: {at}");
}

/// An item stamped before the end of the room's newest slice goes into that slice,
/// however late: never into an older one.
pub async fn late_timestamps_go_into_the_newest_slice(store: &dyn SliceStore) {
    let room = unique("cl");
    store
        .append(
            &room,
            10_000,
            RETENTION,
            &[item(1, BASE + 1_000), item(2, BASE + 15_000)],
        )
        .await
        .unwrap();
    let newest = SliceRef {
        room: room.clone(),
        start_ms: BASE + 10_000,
        len_ms: 10_000,
    };
    let out = store
        .append(
            &room,
            10_000,
            RETENTION,
            &[item(3, BASE + 2_000), item(4, BASE - 30_000)],
        )
        .await
        .unwrap();
    let touched: Vec<&SliceRef> = out.slices.iter().map(|s| &s.slice).collect();
    assert_eq!(touched, vec![&newest], "late items join the newest slice");
    let live: Vec<(i64, u64)> = live_slices(store, &room)
        .await
        .iter()
        .map(|s| (s.slice.start_ms, s.members))
        .collect();
    assert_eq!(live, vec![(BASE, 1), (BASE + 10_000, 3)]);
    assert_eq!(
        seqs(&store.read_after(&room, 0, 100).await.unwrap()),
        vec![1, 2, 3, 4]
    );
    store.expedite_all().await.unwrap();
    let archived: Vec<(i64, Vec<u64>)> = archive_room(store, &room, BASE)
        .await
        .into_iter()
        .map(|(s, its)| (s.start_ms, seqs(&its)))
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(
        archived,
        vec![(BASE, vec![1]), (BASE + 10_000, vec![2, 3, 4])]
    );
}

/// Once the room's newest slice is claimed, a late item still goes into that
/// slice's name (a new slice of it), never an older slice.
pub async fn late_timestamps_after_a_claim_never_reopen_an_older_slice(store: &dyn SliceStore) {
    let room = unique("cl");
    store
        .append(
            &room,
            10_000,
            RETENTION,
            &[item(1, BASE + 1_000), item(2, BASE + 15_000)],
        )
        .await
        .unwrap();
    store.expedite_all().await.unwrap();
    assert_eq!(archive_room(store, &room, BASE).await.len(), 2);
    let out = store
        .append(&room, 10_000, RETENTION, &[item(3, BASE + 2_000)])
        .await
        .unwrap();
    let touched: Vec<(i64, i64)> = out
        .slices
        .iter()
        .map(|s| (s.slice.start_ms, s.slice.len_ms))
        .collect();
    assert_eq!(
        touched,
        vec![(BASE + 10_000, 10_000)],
        "the newest slice's name, not the older slice"
    );
    store.expedite_all().await.unwrap();
    let archived = archive_room(store, &room, BASE).await;
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0].0.start_ms, BASE + 10_000);
    assert_eq!(seqs(&archived[0].1), vec![3]);
}

/// A shorter slice length applies from the next slice: items still fitting the
/// newest slice join it, later ones open slices of the new length at or after its
/// end.
pub async fn a_shorter_slice_length_applies_from_the_next_slice(store: &dyn SliceStore) {
    let room = unique("cs");
    store
        .append(&room, 10_000, RETENTION, &[item(1, BASE + 1_000)])
        .await
        .unwrap();
    let out = store
        .append(
            &room,
            3_000,
            RETENTION,
            &[
                item(2, BASE + 5_000),
                item(3, BASE + 11_000),
                item(4, BASE + 14_000),
            ],
        )
        .await
        .unwrap();
    let mut touched: Vec<(i64, i64, u64)> = out
        .slices
        .iter()
        .map(|s| (s.slice.start_ms, s.slice.len_ms, s.members))
        .collect();
    touched.sort();
    assert_eq!(
        touched,
        vec![
            (BASE, 10_000, 2),
            (BASE + 10_000, 3_000, 1),
            (BASE + 13_000, 3_000, 1),
        ]
    );
    assert_disjoint(&live_slices(store, &room).await);
}

/// A longer slice length applies from the next slice, which starts at the newest
/// slice's end, never inside it.
pub async fn a_longer_slice_length_applies_from_the_next_slice(store: &dyn SliceStore) {
    let room = unique("cg");
    store
        .append(&room, 10_000, RETENTION, &[item(1, BASE + 1_000)])
        .await
        .unwrap();
    let out = store
        .append(
            &room,
            60_000,
            RETENTION,
            &[
                item(2, BASE + 9_000),
                item(3, BASE + 12_000),
                item(4, BASE + 69_999),
                item(5, BASE + 70_000),
            ],
        )
        .await
        .unwrap();
    let mut touched: Vec<(i64, i64, u64)> = out
        .slices
        .iter()
        .map(|s| (s.slice.start_ms, s.slice.len_ms, s.members))
        .collect();
    touched.sort();
    assert_eq!(
        touched,
        vec![
            (BASE, 10_000, 2),
            (BASE + 10_000, 60_000, 2),
            (BASE + 70_000, 60_000, 1),
        ]
    );
    assert_disjoint(&live_slices(store, &room).await);
}

fn assert_disjoint(slices: &[SliceStat]) {
    for w in slices.windows(2) {
        assert!(
            w[0].slice.end_ms() <= w[1].slice.start_ms,
            "overlapping slices: {:?} and {:?}",
            w[0].slice,
            w[1].slice
        );
    }
}

/// Skewed clocks and a length that keeps changing: the room's slices never
/// overlap in time, hold ordered disjoint seq ranges, every item is stamped before
/// its slice's end, and every item is read and archived once.
pub async fn slices_of_a_room_stay_disjoint_in_time_and_seq(store: &dyn SliceStore) {
    let room = unique("cd");
    // A fixed pseudo-random walk (xorshift), the same on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let lens = [1_000i64, 2_000, 5_000, 10_000, 60_000];
    let mut clock = BASE;
    let mut seq = 0;
    let mut all = Vec::new();
    for _ in 0..12 {
        let len = lens[(next() % lens.len() as u64) as usize];
        let mut batch = Vec::new();
        for _ in 0..10 {
            seq += 1 + next() % 3;
            clock += (next() % 1_500) as i64;
            // Now and then stamped by a clock up to 5 s behind.
            let skew = if next() % 4 == 0 {
                (next() % 5_000) as i64
            } else {
                0
            };
            batch.push(item(seq, clock - skew));
        }
        let out = store.append(&room, len, RETENTION, &batch).await.unwrap();
        assert_eq!(out.added, batch.len());
        all.extend(batch);
    }
    assert_eq!(store.read_after(&room, 0, 10_000).await.unwrap(), all);
    assert_disjoint(&live_slices(store, &room).await);
    store.expedite_all().await.unwrap();
    let mut archived = archive_room(store, &room, BASE).await;
    archived.sort_by_key(|(s, _)| s.start_ms);
    let mut prev: Option<(&SliceRef, u64)> = None;
    for (slice, items) in &archived {
        assert!(!items.is_empty(), "{slice:?} is empty");
        for it in items {
            assert!(
                it.ts_ms < slice.end_ms(),
                "seq {} at {} is past the end of {slice:?}",
                it.seq,
                it.ts_ms
            );
        }
        if let Some((p, top)) = prev {
            assert!(p.end_ms() <= slice.start_ms, "{p:?} overlaps {slice:?}");
            assert!(
                top < items[0].seq,
                "{p:?} and {slice:?} are out of seq order"
            );
        }
        prev = Some((slice, items.last().expect("not empty").seq));
    }
    let mut got: Vec<SliceItem> = archived.into_iter().flat_map(|(_, its)| its).collect();
    got.sort_by_key(|i| i.seq);
    assert_eq!(got, all, "every item archived once");
}

/// Redelivered records under a changed slice length keep their seqs: nothing is
/// stored twice, and nothing already stored moves to another slice.
pub async fn redelivery_after_a_length_change_stores_nothing_twice_and_moves_nothing(
    store: &dyn SliceStore,
) {
    let room = unique("cx");
    let first: Vec<SliceItem> = (1..=20)
        .map(|s| item(s, BASE + (s as i64 - 1) * 1_000))
        .collect();
    store
        .append(&room, 10_000, RETENTION, &first)
        .await
        .unwrap();
    let before = live_slices(store, &room).await;
    assert_eq!(before.len(), 2);
    let out = store
        .append(&room, 3_000, RETENTION, &first[5..])
        .await
        .unwrap();
    assert_eq!(out.added, 0, "a redelivery stores nothing");
    assert_eq!(live_slices(store, &room).await, before, "nothing moved");
    assert_eq!(store.read_after(&room, 0, 100).await.unwrap(), first);
    // Redelivered records followed by new ones: only the new ones are stored, in
    // slices of the new length after the old ones.
    let new: Vec<SliceItem> = (21..=25)
        .map(|s| item(s, BASE + (s as i64 - 1) * 1_000))
        .collect();
    let mut batch = first[15..].to_vec();
    batch.extend(new.iter().cloned());
    let out = store.append(&room, 3_000, RETENTION, &batch).await.unwrap();
    assert_eq!(out.added, new.len());
    let after = live_slices(store, &room).await;
    assert_eq!(&after[..2], &before[..], "the old slices are unchanged");
    assert!(after[2..]
        .iter()
        .all(|s| s.slice.len_ms == 3_000 && s.slice.start_ms >= BASE + 20_000));
    assert_disjoint(&after);
    let mut want = first.clone();
    want.extend(new);
    assert_eq!(store.read_after(&room, 0, 100).await.unwrap(), want);
    store.expedite_all().await.unwrap();
    let archived = archive_room(store, &room, BASE).await;
    let by_start: BTreeMap<i64, Vec<u64>> = archived
        .iter()
        .map(|(s, its)| (s.start_ms, seqs(its)))
        .collect();
    assert_eq!(by_start[&BASE], (1..=10).collect::<Vec<u64>>());
    assert_eq!(by_start[&(BASE + 10_000)], (11..=20).collect::<Vec<u64>>());
    let mut got: Vec<u64> = archived.iter().flat_map(|(_, its)| seqs(its)).collect();
    got.sort();
    assert_eq!(
        got,
        (1..=25).collect::<Vec<u64>>(),
        "each item archived once"
    );
}

/// A reachable store says so.
pub async fn reports_ready(store: &dyn SliceStore) {
    assert!(store.ready().await);
}

/// A comment item whose data is an encoded comment with id `1_000 + seq` (the
/// deletion guarantees need real ids; other cases use opaque data).
fn comment(seq: u64, ts: i64) -> SliceItem {
    let d = crate::model::Danmaku {
        id: 1_000 + seq,
        text: format!("c{seq}"),
        ts_ms: ts,
        ..Default::default()
    };
    SliceItem {
        seq,
        ts_ms: ts,
        data: d.encode_bytes(),
    }
}

fn thirty_comments() -> Vec<SliceItem> {
    (1..=30)
        .map(|s| comment(s * 2, BASE + (s as i64 - 1) * 1000))
        .collect()
}

/// Deleted comments are left out of every later read, a page is filled past
/// them (so a reader behind deleted items is never stuck), and deleting again
/// or deleting an id the room never held changes nothing.
pub async fn deleted_items_are_never_read_again_and_pages_fill_past_them(store: &dyn SliceStore) {
    let room = unique("dl");
    store
        .append(&room, 10_000, RETENTION, &thirty_comments())
        .await
        .unwrap();
    // Seqs 2, 4, 6 (ids 1002, 1004, 1006) and 20 (id 1020).
    store
        .delete_items(&room, &[1002, 1004, 1006, 1020], RETENTION)
        .await
        .unwrap();
    assert!(store.is_deleted(&room, 1004).await.unwrap());
    assert!(!store.is_deleted(&room, 1008).await.unwrap());
    let first = store.read_after(&room, 0, 3).await.unwrap();
    assert_eq!(
        seqs(&first),
        vec![8, 10, 12],
        "the page fills past deleted items"
    );
    let one = store.read_after(&room, 0, 1).await.unwrap();
    assert_eq!(seqs(&one), vec![8]);
    let all = store.read_after(&room, 0, 1000).await.unwrap();
    let expected: Vec<u64> = (1..=30)
        .map(|s| s * 2)
        .filter(|s| ![2, 4, 6, 20].contains(s))
        .collect();
    assert_eq!(seqs(&all), expected);
    store
        .delete_items(&room, &[1002, 99_999], RETENTION)
        .await
        .unwrap();
    assert_eq!(
        seqs(&store.read_after(&room, 0, 1000).await.unwrap()),
        expected
    );
    let tail = store.read_after(&room, 18, 2).await.unwrap();
    assert_eq!(seqs(&tail), vec![22, 24]);
}

/// An id deleted before it is appended (a Bus redelivery of the comment after
/// its deletion was stored) is never read either.
pub async fn an_item_deleted_before_its_append_stays_hidden(store: &dyn SliceStore) {
    let room = unique("dp");
    store.delete_items(&room, &[1004], RETENTION).await.unwrap();
    store
        .append(&room, 10_000, RETENTION, &thirty_comments()[..5])
        .await
        .unwrap();
    let all = store.read_after(&room, 0, 100).await.unwrap();
    assert_eq!(seqs(&all), vec![2, 6, 8, 10]);
}

/// A batch claimed after a deletion leaves the deleted comment out.
pub async fn claimed_batches_leave_deleted_items_out(store: &dyn SliceStore) {
    let room = unique("db");
    store
        .append(&room, 10_000, RETENTION, &thirty_comments())
        .await
        .unwrap();
    store
        .delete_items(&room, &[1002, 1040], RETENTION)
        .await
        .unwrap();
    let slices = archive_room(store, &room, BASE + 40_000 + RETENTION).await;
    let archived: Vec<u64> = slices
        .iter()
        .flat_map(|(_, items)| items.iter().map(|i| i.seq))
        .collect();
    let expected: Vec<u64> = (1..=30)
        .map(|s| s * 2)
        .filter(|s| ![2, 40].contains(s))
        .collect();
    let mut archived_sorted = archived.clone();
    archived_sorted.sort_unstable();
    assert_eq!(archived_sorted, expected);
}
