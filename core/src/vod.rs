//! VOD sessions, the alignment of live comments to the recording, and 6-minute
//! replay segments.

use serde::{Deserialize, Serialize};

/// Length of one replay segment (Bilibili's replay unit).
pub const SEGMENT_MS: i64 = 360_000;

/// One live session of a room: the recording that later replays its comments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub vod: String,
    pub room: String,
    /// Server time the session started, ms since the epoch.
    pub started_at: i64,
    /// Server time it ended; `None` while live.
    pub ended_at: Option<i64>,
    /// How late viewers see the stream; subtracted when aligning comments.
    pub latency_ms: i64,
    /// The recording or stream the pages play (an http(s) URL), if any.
    #[serde(default)]
    pub video_url: Option<String>,
}

impl Session {
    /// Length of the recording, once ended.
    pub fn duration_ms(&self) -> Option<i64> {
        self.ended_at
            .map(|e| e.saturating_sub(self.started_at).max(0))
    }

    /// Whether a comment written at server time `ts` belongs to this session.
    pub fn covers(&self, ts: i64) -> bool {
        ts >= self.started_at && self.ended_at.is_none_or(|e| ts <= e)
    }

    /// Offset in the recording of a comment written at `ts`:
    /// `clamp(ts - started_at - latency_ms, 0, duration)`, or the sender's
    /// `stream_pos_ms` when it lies within `plausible_window_ms` of that estimate
    /// (also clamped to the recording).
    ///
    /// Edge cases (unit-tested below):
    /// - before the start (a lagging clock, or `latency_ms` longer than the time
    ///   since the start): 0;
    /// - after the end (a clock running ahead): the recording's duration;
    /// - a live session has no upper bound yet;
    /// - any input, however absurd, neither overflows nor panics (saturating maths).
    pub fn align(&self, ts: i64, stream_pos_ms: Option<i64>, plausible_window_ms: i64) -> i64 {
        let estimate = ts
            .saturating_sub(self.started_at)
            .saturating_sub(self.latency_ms.max(0));
        let window = plausible_window_ms.max(0) as u64;
        let raw = match stream_pos_ms {
            Some(p) if p >= 0 && p.abs_diff(estimate) <= window => p,
            _ => estimate,
        };
        let hi = self.duration_ms().unwrap_or(i64::MAX);
        raw.clamp(0, hi)
    }

    /// Length of the recording as of server time `now_ms`: its duration once
    /// ended, else the time since the start (0 for a start in the future, which a
    /// skewed clock can produce).
    pub fn length_at(&self, now_ms: i64) -> i64 {
        match self.duration_ms() {
            Some(d) => d,
            None => now_ms.saturating_sub(self.started_at).max(0),
        }
    }

    /// Whether a comment may be posted on the recording at `offset_ms` (a VOD
    /// comment): within `[0, length_at(now_ms)]`.
    pub fn accepts_offset(&self, offset_ms: i64, now_ms: i64) -> bool {
        (0..=self.length_at(now_ms)).contains(&offset_ms)
    }
}

/// The session of `sessions` a comment written at `ts` belongs to: the latest one
/// started at or before `ts` that had not ended by then.
///
/// Sessions back to back in one room share their boundary millisecond (the new
/// one starts when the old one ends); a comment written exactly then belongs to
/// the new one. Ties (two sessions started in the same millisecond) go to the one
/// still open, then the one that ended last, then the greatest vod id, so the
/// answer never depends on the order of `sessions`.
///
/// Membership is by the server time the ingest node stamped: a node whose clock
/// lags can stamp a comment sent just after a start before it (then it belongs
/// to the previous session, at its end, or to none), and one whose clock runs
/// ahead can stamp it after an end. Keep the nodes' clocks synchronised (NTP);
/// the sender's `stream_pos_ms` corrects the offset, not the membership.
pub fn session_for(sessions: &[Session], ts: i64) -> Option<&Session> {
    sessions.iter().filter(|s| s.covers(ts)).max_by(|a, b| {
        (a.started_at, a.ended_at.unwrap_or(i64::MAX), &a.vod).cmp(&(
            b.started_at,
            b.ended_at.unwrap_or(i64::MAX),
            &b.vod,
        ))
    })
}

/// The segment holding `offset_ms`.
pub fn segment_of(offset_ms: i64) -> u32 {
    (offset_ms.max(0) / SEGMENT_MS).min(u32::MAX as i64) as u32
}

/// `[start, end)` of segment `n`.
pub fn segment_range(n: u32) -> (i64, i64) {
    let start = n as i64 * SEGMENT_MS;
    (start, start + SEGMENT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: i64 = 30_000;

    fn s(start: i64, end: Option<i64>, lat: i64) -> Session {
        Session {
            vod: "v".into(),
            room: "r".into(),
            started_at: start,
            ended_at: end,
            latency_ms: lat,
            video_url: None,
        }
    }

    fn named(vod: &str, start: i64, end: Option<i64>, lat: i64) -> Session {
        Session {
            vod: vod.into(),
            ..s(start, end, lat)
        }
    }

    #[test]
    fn align_subtracts_start_and_latency() {
        assert_eq!(s(1000, None, 200).align(5000, None, WINDOW), 3800);
    }

    #[test]
    fn before_the_start_clamps_to_zero() {
        let sess = s(1000, Some(11_000), 500);
        // Within the latency: the picture had not started yet for viewers.
        assert_eq!(sess.align(1200, None, 0), 0);
        // Stamped before the start at all.
        assert_eq!(sess.align(0, None, WINDOW), 0);
        // A plausible position is still clamped to the recording.
        assert_eq!(sess.align(1000, Some(0), WINDOW), 0);
        // Latency longer than the whole recording so far.
        assert_eq!(s(1000, None, 60_000).align(30_000, None, 0), 0);
    }

    #[test]
    fn after_the_end_clamps_to_the_duration() {
        let sess = s(1000, Some(11_000), 500);
        assert_eq!(sess.align(50_000, None, 0), 10_000);
        // The last millisecond of the session, with latency: inside.
        assert_eq!(sess.align(11_000, None, 0), 9_500);
        // A sender's position past the end (its player ran on) clamps too.
        assert_eq!(sess.align(10_900, Some(10_400 + 5_000), WINDOW), 10_000);
        // A live session has no end yet: nothing to clamp above.
        assert_eq!(s(0, None, 0).align(86_400_000, None, 0), 86_400_000);
    }

    #[test]
    fn align_uses_plausible_stream_position_only() {
        let sess = s(0, None, 0);
        assert_eq!(sess.align(10_000, Some(9_000), 5_000), 9_000);
        // Exactly at the window's edge counts as plausible, one past does not.
        assert_eq!(sess.align(10_000, Some(15_000), 5_000), 15_000);
        assert_eq!(sess.align(10_000, Some(15_001), 5_000), 10_000);
        assert_eq!(sess.align(10_000, Some(100_000), 5_000), 10_000);
        assert_eq!(sess.align(10_000, Some(-5), 5_000), 10_000);
        // A negative window trusts nothing but an exact match.
        assert_eq!(sess.align(10_000, Some(9_999), -1), 10_000);
    }

    #[test]
    fn absurd_inputs_neither_overflow_nor_panic() {
        let sess = s(1_764_000_000_000, None, 0);
        assert_eq!(sess.align(i64::MIN, Some(i64::MAX), i64::MAX), 0);
        assert_eq!(sess.align(i64::MIN, None, WINDOW), 0);
        assert_eq!(
            sess.align(i64::MAX, Some(i64::MAX), 0),
            i64::MAX - 1_764_000_000_000
        );
        let ended = s(i64::MIN, Some(i64::MAX), i64::MAX);
        assert_eq!(ended.duration_ms(), Some(i64::MAX));
        assert_eq!(ended.align(0, Some(86_400_000_000), WINDOW), 0);
        assert_eq!(segment_of(i64::MAX), u32::MAX);
    }

    #[test]
    fn clock_skew_between_nodes() {
        // The session was started by a node with the right time.
        let sess = s(100_000, Some(200_000), 0);
        let sessions = vec![sess.clone()];
        // An ingest node 2 s behind stamps a comment sent 1 s after the start at
        // 99 000: before the start, so it belongs to no session (Parquet only).
        assert!(session_for(&sessions, 99_000).is_none());
        // ...and one sent 3 s after the start lands 2 s early: at 1 000 not 3 000,
        // unless the sender's player position (plausible) gives the truth.
        assert_eq!(sess.align(101_000, None, WINDOW), 1_000);
        assert_eq!(sess.align(101_000, Some(3_000), WINDOW), 3_000);
        // A node 2 s ahead stamps a comment sent 1 s before the end at 201 000:
        // after the end, so not this session's.
        assert!(session_for(&sessions, 201_000).is_none());
        // A skewed stamp that still falls inside aligns within the recording.
        assert_eq!(sess.align(199_999, Some(120_000), WINDOW), 100_000);
        // Skew against a session started by a node whose clock ran ahead (start
        // in the future): its length so far is 0, not negative.
        assert_eq!(s(100_000, None, 0).length_at(99_000), 0);
    }

    #[test]
    fn back_to_back_sessions_pick_the_right_one() {
        let a = named("a", 0, Some(1000), 0);
        let b = named("b", 1000, None, 0);
        let all = vec![a.clone(), b.clone()];
        assert_eq!(session_for(&all, 500).unwrap().vod, "a");
        // The boundary millisecond belongs to the new session, at offset 0.
        assert_eq!(session_for(&all, 1000).unwrap().vod, "b");
        assert_eq!(b.align(1000, None, 0), 0);
        assert_eq!(session_for(&all, 5000).unwrap().vod, "b");
        assert!(session_for(&all, -1).is_none());
        // Order of the input does not matter.
        let rev = vec![b.clone(), a.clone()];
        assert_eq!(session_for(&rev, 1000).unwrap().vod, "b");
        assert_eq!(session_for(&rev, 999).unwrap().vod, "a");
        // A lagging clock puts a comment sent just after b's start into a, at
        // a's end (clamped to its duration).
        let late = session_for(&all, 999).unwrap();
        assert_eq!(late.align(999, None, 0), 999);
        assert_eq!(late.align(999, Some(5_000), WINDOW), 1000);
        // A gap between sessions belongs to neither.
        let gap = vec![named("a", 0, Some(1000), 0), named("c", 2000, None, 0)];
        assert!(session_for(&gap, 1500).is_none());
    }

    #[test]
    fn sessions_started_in_the_same_millisecond_are_deterministic() {
        // A session started and ended at once, then a new one in the same ms.
        let empty = named("empty", 1000, Some(1000), 0);
        let open = named("open", 1000, None, 0);
        for all in [
            vec![empty.clone(), open.clone()],
            vec![open.clone(), empty.clone()],
        ] {
            assert_eq!(session_for(&all, 1000).unwrap().vod, "open");
        }
        let x = named("x", 1000, Some(5000), 0);
        let y = named("y", 1000, Some(5000), 0);
        for all in [vec![x.clone(), y.clone()], vec![y.clone(), x.clone()]] {
            assert_eq!(session_for(&all, 2000).unwrap().vod, "y");
        }
    }

    #[test]
    fn posting_offsets_stay_within_the_recording() {
        let live = s(10_000, None, 0);
        assert!(live.accepts_offset(0, 20_000));
        assert!(live.accepts_offset(10_000, 20_000));
        assert!(!live.accepts_offset(10_001, 20_000));
        assert!(!live.accepts_offset(-1, 20_000));
        let ended = s(10_000, Some(15_000), 0);
        assert!(ended.accepts_offset(5_000, i64::MAX));
        assert!(!ended.accepts_offset(5_001, i64::MAX));
        assert_eq!(ended.length_at(0), 5_000);
    }

    #[test]
    fn segments() {
        assert_eq!(segment_of(0), 0);
        assert_eq!(segment_of(-5), 0);
        assert_eq!(segment_of(359_999), 0);
        assert_eq!(segment_of(360_000), 1);
        assert_eq!(segment_range(2), (720_000, 1_080_000));
    }
}
