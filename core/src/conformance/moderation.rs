//! The ModerationStore suite: what [`ModerationStore`] promises, one function per
//! guarantee, run by [`crate::moderation_suite!`]. Each case takes two handles on
//! one store — a writer and a reader, as two nodes would hold (the same one for an
//! in-process store) — and needs a store of its own (the change log and the word
//! list are per store: a fresh namespace or directory per case).

use super::unique;
use crate::config::FilterPolicy;
use crate::ports::{
    Admission, Admit, Ban, Claim, IdempotencyKey, KeyClaim, ModerationChange, ModerationStore,
    Rate, RoomSettings, RoomSettingsPatch, WordList,
};
use std::time::Duration;

/// Expands to one `#[tokio::test]` per ModerationStore guarantee; see
/// [`crate::conformance`]. The subject is a pair `(writer, reader)` of pointers.
#[macro_export]
macro_rules! moderation_suite {
    ($(#[$attr:meta])* $name:ident $(($($rt:tt)*))?, $make:expr $(,)?) => {
        $crate::__conformance_cases!(pair moderation [$(#[$attr])*] $name ($($($rt)*)?) ($make) [
            bans_are_set_listed_per_room_and_lifted
            ended_bans_are_never_returned
            settings_patches_merge_and_rooms_default
            the_word_list_is_replaced_whole
            every_write_logs_one_change_in_version_order
            a_reader_past_the_log_reloads
            the_snapshot_holds_everything_as_of_its_version
            concurrent_claims_of_a_key_give_one_owner
            a_completed_key_answers_its_id_and_refuses_other_bodies
            keys_are_scoped_by_user_and_room_or_vod
            a_released_or_abandoned_claim_frees_the_key
            rate_limits_allow_the_burst_then_answer_retry_after
            rate_limit_keys_are_independent
            admit_claims_the_key_and_counts_the_room_limits_together
            a_refused_admission_counts_nothing_and_claims_nothing
            concurrent_admissions_give_one_owner_and_respect_the_burst
        ]);
    };
}

fn now() -> i64 {
    crate::now_ms()
}

fn ban(room: Option<&str>, user: &str, secs: i64, shadow: bool) -> Ban {
    Ban {
        room: room.map(str::to_string),
        user: user.to_string(),
        until_ms: now() + secs * 1000,
        shadow,
        by: "admin".into(),
        at_ms: now(),
    }
}

fn key(user: &str, scope: &str, k: &str) -> IdempotencyKey {
    IdempotencyKey {
        user: user.into(),
        scope: scope.into(),
        key: k.into(),
    }
}

/// Bans are per room or global, listed separately, replaced by a new ban of the
/// same user, and lifted (lifting a missing ban is fine); a second handle sees it all.
pub async fn bans_are_set_listed_per_room_and_lifted(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let room = unique("r");
    let (alice, bob) = (unique("alice"), unique("bob"));
    writer
        .set_ban(&ban(Some(&room), &alice, 60, false))
        .await
        .unwrap();
    writer
        .set_ban(&ban(Some(&room), &bob, 60, true))
        .await
        .unwrap();
    writer.set_ban(&ban(None, &alice, 60, false)).await.unwrap();
    let listed = reader.bans(Some(&room), now()).await.unwrap();
    let mut users: Vec<_> = listed.iter().map(|b| b.user.clone()).collect();
    users.sort();
    let mut want = vec![alice.clone(), bob.clone()];
    want.sort();
    assert_eq!(users, want, "the room's bans");
    assert!(
        listed.iter().any(|b| b.user == bob && b.shadow),
        "shadow flag kept"
    );
    let global = reader.bans(None, now()).await.unwrap();
    assert_eq!(global.len(), 1, "global bans are listed apart: {global:?}");
    assert_eq!(global[0].user, alice);
    assert!(reader
        .bans(Some(&unique("other")), now())
        .await
        .unwrap()
        .is_empty());

    // A new ban replaces the old one.
    let longer = ban(Some(&room), &alice, 3600, true);
    writer.set_ban(&longer).await.unwrap();
    let listed = reader.bans(Some(&room), now()).await.unwrap();
    assert_eq!(listed.iter().filter(|b| b.user == alice).count(), 1);
    assert_eq!(
        listed.iter().find(|b| b.user == alice),
        Some(&longer),
        "the ban is stored as given"
    );

    writer.lift_ban(Some(&room), &alice).await.unwrap();
    writer
        .lift_ban(Some(&room), &unique("nobody"))
        .await
        .unwrap();
    let listed = reader.bans(Some(&room), now()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].user, bob);
    assert_eq!(
        reader.bans(None, now()).await.unwrap().len(),
        1,
        "global ban kept"
    );
    writer.lift_ban(None, &alice).await.unwrap();
    assert!(reader.bans(None, now()).await.unwrap().is_empty());
}

/// A ban past its end is left out of listings and snapshots.
pub async fn ended_bans_are_never_returned(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let room = unique("r");
    let user = unique("u");
    let mut past = ban(Some(&room), &user, 0, false);
    past.until_ms = now() - 1;
    writer.set_ban(&past).await.unwrap();
    writer
        .set_ban(&ban(Some(&room), &unique("live"), 60, false))
        .await
        .unwrap();
    let listed = reader.bans(Some(&room), now()).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed.iter().all(|b| b.user != user));
    // Listing "as of later" leaves out bans ending before then.
    assert!(reader
        .bans(Some(&room), now() + 120_000)
        .await
        .unwrap()
        .is_empty());
    let snap = reader.snapshot(now()).await.unwrap();
    assert!(snap.bans.iter().all(|b| b.user != user));
}

/// A patch changes only its fields, `Some(None)` resets the display budget, and
/// a room never set has the default settings.
pub async fn settings_patches_merge_and_rooms_default(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let room = unique("r");
    assert_eq!(
        reader.room_settings(&room).await.unwrap(),
        RoomSettings::default()
    );
    let after = writer
        .update_room_settings(
            &room,
            &RoomSettingsPatch {
                slow_mode_secs: Some(30),
                display_budget_per_sec: Some(Some(50)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        after,
        RoomSettings {
            slow_mode_secs: 30,
            muted: false,
            display_budget_per_sec: Some(50)
        }
    );
    let after = writer
        .update_room_settings(
            &room,
            &RoomSettingsPatch {
                muted: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(after.slow_mode_secs, 30, "untouched field kept");
    assert!(after.muted);
    assert_eq!(reader.room_settings(&room).await.unwrap(), after);
    let after = writer
        .update_room_settings(
            &room,
            &RoomSettingsPatch {
                display_budget_per_sec: Some(None),
                slow_mode_secs: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        after,
        RoomSettings {
            slow_mode_secs: 0,
            muted: true,
            display_budget_per_sec: None
        }
    );
    assert_eq!(reader.room_settings(&room).await.unwrap(), after);
}

/// The word list is replaced as a whole, policy included.
pub async fn the_word_list_is_replaced_whole(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    assert_eq!(reader.word_list().await.unwrap(), None, "unset at first");
    let first = WordList {
        words: vec!["bad".into(), "坏蛋".into()],
        policy: FilterPolicy::Reject,
    };
    writer.set_word_list(&first).await.unwrap();
    assert_eq!(reader.word_list().await.unwrap(), Some(first));
    let second = WordList {
        words: vec!["worse".into()],
        policy: FilterPolicy::Mask,
    };
    writer.set_word_list(&second).await.unwrap();
    assert_eq!(reader.word_list().await.unwrap(), Some(second));
    // An empty list is a list (it overrides the configured one), not "unset".
    let empty = WordList::default();
    writer.set_word_list(&empty).await.unwrap();
    assert_eq!(reader.word_list().await.unwrap(), Some(empty));
}

/// Each write of bans, settings or words is one change under the next version;
/// pages are consecutive and bounded by their limit.
pub async fn every_write_logs_one_change_in_version_order(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let start = reader.snapshot(now()).await.unwrap().version;
    let room = unique("r");
    let user = unique("u");
    let b = ban(Some(&room), &user, 60, true);
    writer.set_ban(&b).await.unwrap();
    let settings = writer
        .update_room_settings(
            &room,
            &RoomSettingsPatch {
                muted: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    writer
        .set_word_list(&WordList {
            words: vec!["x".into()],
            policy: FilterPolicy::Mask,
        })
        .await
        .unwrap();
    writer.lift_ban(None, &user).await.unwrap();
    let want = vec![
        ModerationChange::Ban(b),
        ModerationChange::Settings {
            room: room.clone(),
            settings,
        },
        ModerationChange::Words,
        ModerationChange::Unban { room: None, user },
    ];
    let page = reader
        .changes_after(start, 1000)
        .await
        .unwrap()
        .expect("the log reaches back to our writes");
    assert_eq!(page.version, start + 4);
    let versions: Vec<u64> = page.changes.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, vec![start + 1, start + 2, start + 3, start + 4]);
    let changes: Vec<_> = page.changes.into_iter().map(|(_, c)| c).collect();
    assert_eq!(changes, want);
    // Bounded pages, resumed from the last version read.
    let first = reader.changes_after(start, 3).await.unwrap().unwrap();
    assert_eq!(first.changes.len(), 3);
    let rest = reader
        .changes_after(first.changes[2].0, 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest.changes.len(), 1);
    assert_eq!(rest.changes[0].0, start + 4);
    // Caught up: an empty page at the current version.
    let none = reader.changes_after(start + 4, 10).await.unwrap().unwrap();
    assert!(none.changes.is_empty());
    assert_eq!(none.version, start + 4);
}

/// A reader whose version is past the store's (the store lost its data) is told
/// to reload, not handed an empty page.
pub async fn a_reader_past_the_log_reloads(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    writer
        .set_ban(&ban(Some(&unique("r")), &unique("u"), 60, false))
        .await
        .unwrap();
    let version = reader.snapshot(now()).await.unwrap().version;
    assert!(version >= 1);
    assert_eq!(reader.changes_after(version + 5, 10).await.unwrap(), None);
}

/// The snapshot holds the bans (room and global), every set room's settings and
/// the word list, with the version of the last change in it.
pub async fn the_snapshot_holds_everything_as_of_its_version(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let room = unique("r");
    let (a, b) = (unique("a"), unique("b"));
    writer
        .set_ban(&ban(Some(&room), &a, 60, false))
        .await
        .unwrap();
    writer.set_ban(&ban(None, &b, 60, true)).await.unwrap();
    let settings = writer
        .update_room_settings(
            &room,
            &RoomSettingsPatch {
                slow_mode_secs: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let words = WordList {
        words: vec!["w".into()],
        policy: FilterPolicy::Reject,
    };
    writer.set_word_list(&words).await.unwrap();
    let snap = reader.snapshot(now()).await.unwrap();
    assert!(snap
        .bans
        .iter()
        .any(|x| x.user == a && x.room.as_deref() == Some(room.as_str())));
    assert!(snap
        .bans
        .iter()
        .any(|x| x.user == b && x.room.is_none() && x.shadow));
    assert!(snap.settings.contains(&(room.clone(), settings)));
    assert_eq!(snap.words, Some(words));
    let page = reader
        .changes_after(snap.version, 10)
        .await
        .unwrap()
        .unwrap();
    assert!(
        page.changes.is_empty(),
        "nothing after the snapshot's version"
    );
    writer.lift_ban(Some(&room), &a).await.unwrap();
    let later = reader.snapshot(now()).await.unwrap();
    assert_eq!(later.version, snap.version + 1);
    assert!(!later.bans.iter().any(|x| x.user == a));
}

/// Of concurrent claims of one key (from both handles), exactly one owns it; the
/// others see it in progress.
pub async fn concurrent_claims_of_a_key_give_one_owner(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let k = key(&unique("u"), &format!("room:{}", unique("r")), "k1");
    let claims = futures::future::join_all((0..16).map(|i| {
        let store = if i % 2 == 0 { writer } else { reader };
        let k = k.clone();
        async move { store.claim_key(&k, 42, 30_000).await.unwrap() }
    }))
    .await;
    assert_eq!(
        claims.iter().filter(|c| **c == Claim::New).count(),
        1,
        "{claims:?}"
    );
    assert!(claims
        .iter()
        .all(|c| matches!(c, Claim::New | Claim::InProgress)));
    // Another body while in progress: a conflict already.
    assert_eq!(
        reader.claim_key(&k, 43, 30_000).await.unwrap(),
        Claim::Conflict
    );
}

/// A completed key gives its id to the same body on any handle, a conflict to
/// another body; completion outlives the claim's TTL.
pub async fn a_completed_key_answers_its_id_and_refuses_other_bodies(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let k = key(&unique("u"), &format!("room:{}", unique("r")), "k");
    assert_eq!(writer.claim_key(&k, 7, 1000).await.unwrap(), Claim::New);
    writer
        .complete_key(&k, 7, 123_456_789_012_345, 60_000)
        .await
        .unwrap();
    assert_eq!(
        reader.claim_key(&k, 7, 1000).await.unwrap(),
        Claim::Existing(123_456_789_012_345)
    );
    assert_eq!(
        reader.claim_key(&k, 8, 1000).await.unwrap(),
        Claim::Conflict
    );
    // A release after completion changes nothing.
    reader.release_key(&k, 7).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        reader.claim_key(&k, 7, 1000).await.unwrap(),
        Claim::Existing(123_456_789_012_345),
        "kept for the window, not the claim TTL"
    );
    // Fingerprints use all 64 bits.
    let k2 = key(&unique("u"), "vod:v", "k");
    assert_eq!(
        writer.claim_key(&k2, u64::MAX, 1000).await.unwrap(),
        Claim::New
    );
    writer
        .complete_key(&k2, u64::MAX, u64::MAX - 1, 60_000)
        .await
        .unwrap();
    assert_eq!(
        reader.claim_key(&k2, u64::MAX, 1000).await.unwrap(),
        Claim::Existing(u64::MAX - 1)
    );
    assert_eq!(
        reader.claim_key(&k2, u64::MAX - 1, 1000).await.unwrap(),
        Claim::Conflict
    );
}

/// The same client key of another user, room or VOD is another key.
pub async fn keys_are_scoped_by_user_and_room_or_vod(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let (u, v) = (unique("u"), unique("v"));
    let room = format!("room:{}", unique("r"));
    let k = key(&u, &room, "same");
    assert_eq!(writer.claim_key(&k, 1, 10_000).await.unwrap(), Claim::New);
    writer.complete_key(&k, 1, 1, 60_000).await.unwrap();
    for other in [
        key(&v, &room, "same"),
        key(&u, &format!("room:{}", unique("r")), "same"),
        key(&u, "vod:x", "same"),
        // Parts that would run together if concatenated.
        key(&format!("{u}:room"), &room[5..], "same"),
    ] {
        assert_eq!(
            reader.claim_key(&other, 2, 10_000).await.unwrap(),
            Claim::New,
            "{other:?}"
        );
    }
}

/// A released claim (the publish failed) and a claim never completed (its node
/// died) free the key: the next claim owns it, even with another body.
pub async fn a_released_or_abandoned_claim_frees_the_key(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let k = key(&unique("u"), "room:r", "k");
    assert_eq!(writer.claim_key(&k, 1, 30_000).await.unwrap(), Claim::New);
    // Releasing with another fingerprint is not the owner's release.
    reader.release_key(&k, 2).await.unwrap();
    assert_eq!(
        reader.claim_key(&k, 1, 30_000).await.unwrap(),
        Claim::InProgress
    );
    writer.release_key(&k, 1).await.unwrap();
    assert_eq!(reader.claim_key(&k, 1, 30_000).await.unwrap(), Claim::New);

    let k = key(&unique("u"), "room:r", "abandoned");
    assert_eq!(writer.claim_key(&k, 1, 300).await.unwrap(), Claim::New);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        reader.claim_key(&k, 2, 30_000).await.unwrap(),
        Claim::New,
        "an abandoned claim expires after its TTL"
    );
}

/// A rate lets its burst through at once (from either handle), then answers the
/// wait until the next send is allowed.
pub async fn rate_limits_allow_the_burst_then_answer_retry_after(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let k = unique("limit");
    // One per 60 s, burst 3: no refill within the test.
    let rate = Rate {
        interval_us: 60_000_000,
        burst: 3,
    };
    for i in 0..3 {
        let store = if i % 2 == 0 { writer } else { reader };
        assert_eq!(store.take(&k, rate).await.unwrap(), Ok(()), "send {i}");
    }
    let wait = reader.take(&k, rate).await.unwrap().unwrap_err();
    assert!(
        (1..=60_000).contains(&wait),
        "retry after {wait} ms, within one interval"
    );
    // A refused send counts nothing: still refused, never a longer wait than the interval.
    let again = writer.take(&k, rate).await.unwrap().unwrap_err();
    assert!(again <= 60_000);
    // Slow mode: one, then the whole interval.
    let slow = unique("slow");
    assert_eq!(
        writer.take(&slow, Rate::once_per(30)).await.unwrap(),
        Ok(())
    );
    let wait = reader
        .take(&slow, Rate::once_per(30))
        .await
        .unwrap()
        .unwrap_err();
    assert!((25_000..=30_000).contains(&wait), "slow mode wait {wait}");
}

/// Limits of different keys do not share a budget.
pub async fn rate_limit_keys_are_independent(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let rate = Rate::once_per(60);
    let (a, b) = (unique("a"), unique("b"));
    assert_eq!(writer.take(&a, rate).await.unwrap(), Ok(()));
    assert!(reader.take(&a, rate).await.unwrap().is_err());
    assert_eq!(reader.take(&b, rate).await.unwrap(), Ok(()));
}

/// `admission` of one send to `room` with `limits` and, when given, `key`
/// (fingerprint `fp`, claim TTL `ttl_ms`).
async fn admit(
    store: &dyn ModerationStore,
    room: &str,
    limits: &[(String, Rate)],
    key: Option<(&IdempotencyKey, u64, u64)>,
) -> Admit {
    store
        .admit(&Admission {
            room,
            limits,
            claim: key.map(|(key, fingerprint, ttl_ms)| KeyClaim {
                key,
                fingerprint,
                ttl_ms,
            }),
        })
        .await
        .unwrap()
}

/// An admission claims its key and counts its room's limits; while the key is
/// held (in progress, completed, another body) an admission answers that and
/// counts nothing; an abandoned claim expires after its TTL.
pub async fn admit_claims_the_key_and_counts_the_room_limits_together(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let room = unique("r");
    let user = unique("u");
    // Two sends per minute for the user, plenty for the room.
    let limits = [
        (
            format!("u:{user}"),
            Rate {
                interval_us: 60_000_000,
                burst: 2,
            },
        ),
        (format!("r:{room}"), Rate::per_sec(1000, 1000)),
    ];
    let k = key(&user, &format!("room:{room}"), "k");
    assert_eq!(
        admit(writer, &room, &limits, Some((&k, 7, 30_000))).await,
        Admit::Admitted
    );
    // A retry while the first is published, and one with another body.
    assert_eq!(
        admit(reader, &room, &limits, Some((&k, 7, 30_000))).await,
        Admit::Held(Claim::InProgress)
    );
    assert_eq!(
        admit(reader, &room, &limits, Some((&k, 8, 30_000))).await,
        Admit::Held(Claim::Conflict)
    );
    writer.complete_key(&k, 7, 99, 60_000).await.unwrap();
    assert_eq!(
        admit(reader, &room, &limits, Some((&k, 7, 30_000))).await,
        Admit::Held(Claim::Existing(99))
    );
    assert_eq!(
        reader.claim_key(&k, 7, 30_000).await.unwrap(),
        Claim::Existing(99)
    );
    // The held answers counted nothing: one send of the burst is left.
    let k2 = key(&user, &format!("room:{room}"), "k2");
    assert_eq!(
        admit(reader, &room, &limits, Some((&k2, 1, 300))).await,
        Admit::Admitted
    );
    assert_eq!(
        writer.claim_key(&k2, 1, 30_000).await.unwrap(),
        Claim::InProgress,
        "an admission's claim is a claim"
    );
    match admit(writer, &room, &limits, None).await {
        Admit::Limited {
            index: 0,
            retry_after_ms,
        } => assert!((1..=60_000).contains(&retry_after_ms), "{retry_after_ms}"),
        other => panic!("the user's third send: {other:?}"),
    }
    // The claim of k2 was never completed (its node died): it expires.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        admit(reader, &room, &[], Some((&k2, 2, 30_000))).await,
        Admit::Admitted,
        "an abandoned claim expires after its TTL"
    );
    // Without limits or key there is nothing to refuse.
    assert_eq!(admit(writer, &room, &[], None).await, Admit::Admitted);
}

/// A send refused by one of its room's limits counts none of them and claims no
/// key (a key scoped to a VOD of the room too); a room's limits are its own:
/// another room's, and `take`'s under the same key, are other counters.
pub async fn a_refused_admission_counts_nothing_and_claims_nothing(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let room = unique("r");
    let once = Rate::once_per(60);
    let (a, b) = ((unique("a"), once), (unique("b"), once));
    assert_eq!(
        admit(writer, &room, std::slice::from_ref(&b), None).await,
        Admit::Admitted
    );
    let both = [a.clone(), b.clone()];
    let user = unique("u");
    for scope in [format!("room:{room}"), format!("vod:{}", unique("v"))] {
        let k = key(&user, &scope, "k");
        match admit(reader, &room, &both, Some((&k, 5, 30_000))).await {
            Admit::Limited {
                index: 1,
                retry_after_ms,
            } => assert!(
                (25_000..=60_000).contains(&retry_after_ms),
                "{retry_after_ms}"
            ),
            other => panic!("b refuses ({scope}): {other:?}"),
        }
        assert_eq!(
            writer.claim_key(&k, 6, 30_000).await.unwrap(),
            Claim::New,
            "a refused send claims nothing ({scope})"
        );
    }
    // `a` counted nothing: one send, then refused.
    assert_eq!(
        admit(writer, &room, std::slice::from_ref(&a), None).await,
        Admit::Admitted
    );
    assert!(matches!(
        admit(reader, &room, std::slice::from_ref(&a), None).await,
        Admit::Limited { index: 0, .. }
    ));
    // Another room's `a`, and `take`'s `a`, are other counters.
    assert_eq!(
        admit(reader, &unique("r"), std::slice::from_ref(&a), None).await,
        Admit::Admitted
    );
    assert_eq!(writer.take(&a.0, once).await.unwrap(), Ok(()));
}

/// Of concurrent admissions with one key (from both handles) exactly one is
/// admitted; of concurrent admissions against a burst of 5, exactly 5.
pub async fn concurrent_admissions_give_one_owner_and_respect_the_burst(
    writer: &dyn ModerationStore,
    reader: &dyn ModerationStore,
) {
    let room = unique("r");
    let k = key(&unique("u"), &format!("room:{room}"), "k");
    let outcomes = futures::future::join_all((0..16).map(|i| {
        let store = if i % 2 == 0 { writer } else { reader };
        let (k, room) = (k.clone(), room.clone());
        async move { admit(store, &room, &[], Some((&k, 3, 30_000))).await }
    }))
    .await;
    assert_eq!(
        outcomes.iter().filter(|o| **o == Admit::Admitted).count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Admit::Admitted | Admit::Held(Claim::InProgress))));

    let limits = [(
        unique("burst"),
        Rate {
            interval_us: 60_000_000,
            burst: 5,
        },
    )];
    let outcomes = futures::future::join_all((0..16).map(|i| {
        let store = if i % 2 == 0 { writer } else { reader };
        let (limits, room) = (&limits, room.clone());
        async move { admit(store, &room, limits, None).await }
    }))
    .await;
    assert_eq!(
        outcomes.iter().filter(|o| **o == Admit::Admitted).count(),
        5,
        "{outcomes:?}"
    );
}
