//! When an ended VOD's segments may be served `immutable` (a CDN keeps such a
//! body for a year, so it must not be served before the archive holds the VOD).
//!
//! The rule (docs/PLAYERS.md, "What immutable means here"): a VOD is *settled*
//! once it ended and the SliceStore holds no comment of its room stamped within
//! the session (`started_at ..= ended_at`). Ending a session makes every slice of
//! its room that began by then due at once, and a comment leaves the SliceStore's
//! readable set only when an archiver claims its slice, which stores it in the
//! ArchiveStore before completing the batch; so once no such comment is readable,
//! every one the SliceStore held at the end is archived or being archived.
//!
//! How it is checked, bounded: the room's held comments are read by cursor from
//! the oldest, at most [`PAGES`] pages of [`PAGE`]. A comment stamped within the
//! session means not settled; reaching the end means settled; so does a comment
//! stamped later than the end by more than `limits.publish_timeout_ms` plus
//! [`SKEW_MS`]: comments are held in Bus order, and the Bus takes a comment at
//! most the publish timeout after its ingest node stamped it, so no later one can
//! be stamped within the session (clock skew between nodes aside, which the
//! margin covers). Anything else (a long backlog before that point) is not
//! settled *yet*: the next view of the VOD asks again. Once settled, a VOD stays
//! settled on this node (a bounded memo), so old VODs cost no SliceStore read.
//!
//! Limitation: between an archiver's claim of the VOD's last slices and its
//! ArchiveStore write (milliseconds normally; the lease, `archive.lease_ms`, if
//! that archiver crashed in between) those comments are in neither store's
//! readable set, and a view taken then is settled with them missing. The exact
//! answer needs the SliceStore to say whether a claimed batch still holds the
//! room's comments (see the report of issue 13).

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
    /// A comment stamped within the session is still held.
    Yes,
    /// None is held (or none can be past the point read).
    No,
    /// The bounded read did not reach a conclusion.
    Unknown,
}

/// Classifies the room's held comments, given as the stamps (`ts_ms`) of the
/// pages read so far in Bus order; `complete` when the last page was the end.
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
    let mut after = 0u64;
    let mut stamps = Vec::with_capacity(PAGE);
    for _ in 0..PAGES {
        let page = match r.ctx.slices.read_after(&session.room, after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::debug!(error = %e, vod = session.vod, "cannot tell whether the VOD is archived yet");
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
