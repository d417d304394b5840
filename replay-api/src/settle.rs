//! When an ended VOD's segments may be served `immutable` (a CDN keeps such a
//! body for a year, so it must not be served before the archive holds the VOD).
//!
//! The rule (docs/PLAYERS.md, "What immutable means here"): a VOD is *settled*
//! once it ended and every comment of its room stamped within the session
//! (`started_at ..= ended_at`) that reached the SliceStore is archived.
//!
//! How it is checked, with the SliceStore's own answer to "archived?": every item
//! of the room at or below [`SliceStore::archived_through`] is archived (its batch
//! completed, after the ArchiveStore write). The items above it that the store
//! still holds (live, claimed or archived out of order: archiving copies, so a
//! claimed item stays readable until its batch is archived and its hot retention
//! ended) are read by cursor, at most [`PAGES`] pages of [`PAGE`]. One stamped
//! within the session means not settled; reaching the end means settled; so does
//! one stamped later than the end by more than `limits.publish_timeout_ms` plus
//! [`SKEW_MS`]: items are held in Bus order, and the Bus takes a comment at most
//! the publish timeout after its ingest node stamped it, so no later one can be
//! stamped within the session (clock skew between nodes aside, which the margin
//! covers). Anything else (a long backlog up to that point) is not settled *yet*:
//! the next view of the VOD asks again. Once settled, a VOD stays settled on this
//! node (a bounded memo), so old VODs cost no SliceStore read.
//!
//! [`SliceStore::archived_through`]: danmaku_core::ports::SliceStore::archived_through

use crate::Replay;
use danmaku_core::vod::Session;

/// Comments read per SliceStore page.
pub const PAGE: usize = 256;
/// Most pages read per check.
pub const PAGES: usize = 8;
/// Clock skew allowed between ingest nodes on top of the publish timeout, ms.
pub const SKEW_MS: i64 = 10_000;

/// What one check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// A comment stamped within the session is not known archived.
    Yes,
    /// None is (or none can be past the point read).
    No,
    /// The bounded read did not reach a conclusion.
    Unknown,
}

/// Classifies the room's items not known archived, given as the stamps (`ts_ms`)
/// of a page read in Bus order; `complete` when the page was the last.
pub fn classify(stamps: &[i64], complete: bool, session: &Session, beyond_ms: i64) -> Held {
    let Some(end) = session.ended_at else {
        return Held::Yes;
    };
    let horizon = end.saturating_add(beyond_ms.max(0));
    for &ts in stamps {
        if (session.started_at..=end).contains(&ts) {
            return Held::Yes;
        }
        if ts > horizon {
            return Held::No;
        }
    }
    if complete {
        Held::No
    } else {
        Held::Unknown
    }
}

/// Whether `session` is settled (see the module doc). Errors count as not yet.
pub async fn settled(r: &Replay, session: &Session) -> bool {
    if session.ended_at.is_none() {
        return false;
    }
    if r.settled.contains_key(&session.vod) {
        return true;
    }
    let beyond = (r
        .ctx
        .settings
        .limits
        .publish_timeout_ms
        .min(i64::MAX as u64) as i64)
        .saturating_add(SKEW_MS);
    let slices = &r.ctx.slices;
    let unknown = |e: danmaku_core::ports::SliceError| {
        tracing::debug!(error = %e, vod = session.vod, "cannot tell whether the VOD is archived yet");
    };
    let mut after = match slices.archived_through(&session.room).await {
        Ok(seq) => seq,
        Err(e) => {
            unknown(e);
            return false;
        }
    };
    let mut stamps = Vec::with_capacity(PAGE);
    for _ in 0..PAGES {
        let page = match slices.read_after(&session.room, after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                unknown(e);
                return false;
            }
        };
        let complete = page.len() < PAGE;
        stamps.clear();
        stamps.extend(page.iter().map(|i| i.ts_ms));
        after = page.last().map_or(after, |i| i.seq);
        match classify(&stamps, complete, session, beyond) {
            Held::Yes => return false,
            Held::No => {
                r.settled.insert(session.vod.clone(), ());
                return true;
            }
            Held::Unknown => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(end: Option<i64>) -> Session {
        Session {
            vod: "v".into(),
            room: "r".into(),
            started_at: 1_000,
            ended_at: end,
            latency_ms: 0,
            video_url: None,
        }
    }

    #[test]
    fn a_comment_within_the_session_is_held() {
        let s = session(Some(5_000));
        assert_eq!(classify(&[1_000], true, &s, 100), Held::Yes);
        assert_eq!(classify(&[5_000], true, &s, 100), Held::Yes);
        assert_eq!(classify(&[500, 3_000], true, &s, 100), Held::Yes);
        // A live VOD is never settled.
        assert_eq!(classify(&[], true, &session(None), 100), Held::Yes);
    }

    #[test]
    fn before_the_start_or_after_the_end_is_not() {
        let s = session(Some(5_000));
        assert_eq!(classify(&[], true, &s, 100), Held::No);
        assert_eq!(classify(&[999, 5_001], true, &s, 100), Held::No);
        // Not the end of the room's comments, and none past the horizon yet.
        assert_eq!(
            classify(&[999, 5_001, 5_100], false, &s, 100),
            Held::Unknown
        );
        // Past the horizon nothing later can fall within the session.
        assert_eq!(classify(&[999, 5_101], false, &s, 100), Held::No);
        // ...but one seen before it within the session still counts.
        assert_eq!(classify(&[4_000, 9_999], false, &s, 100), Held::Yes);
    }
}
