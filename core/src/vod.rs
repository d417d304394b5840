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
}

impl Session {
    /// Length of the recording, once ended.
    pub fn duration_ms(&self) -> Option<i64> {
        self.ended_at.map(|e| (e - self.started_at).max(0))
    }

    /// Whether a comment written at server time `ts` belongs to this session.
    pub fn covers(&self, ts: i64) -> bool {
        ts >= self.started_at && self.ended_at.is_none_or(|e| ts <= e)
    }

    /// Offset in the recording of a comment written at `ts`:
    /// `clamp(ts - started_at - latency_ms, 0, duration)`, or the sender's
    /// `stream_pos_ms` when it lies within `plausible_window_ms` of that estimate.
    pub fn align(&self, ts: i64, stream_pos_ms: Option<i64>, plausible_window_ms: i64) -> i64 {
        let estimate = ts - self.started_at - self.latency_ms;
        let raw = match stream_pos_ms {
            Some(p) if p >= 0 && (p - estimate).abs() <= plausible_window_ms => p,
            _ => estimate,
        };
        let hi = self.duration_ms().unwrap_or(i64::MAX);
        raw.clamp(0, hi)
    }
}

/// The session of `sessions` a comment written at `ts` belongs to: the latest one
/// started at or before `ts` that had not ended by then.
pub fn session_for(sessions: &[Session], ts: i64) -> Option<&Session> {
    sessions
        .iter()
        .filter(|s| s.covers(ts))
        .max_by_key(|s| s.started_at)
}

/// The segment holding `offset_ms`.
pub fn segment_of(offset_ms: i64) -> u32 {
    (offset_ms.max(0) / SEGMENT_MS) as u32
}

/// `[start, end)` of segment `n`.
pub fn segment_range(n: u32) -> (i64, i64) {
    let start = n as i64 * SEGMENT_MS;
    (start, start + SEGMENT_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(start: i64, end: Option<i64>, lat: i64) -> Session {
        Session {
            vod: "v".into(),
            room: "r".into(),
            started_at: start,
            ended_at: end,
            latency_ms: lat,
        }
    }

    #[test]
    fn align_subtracts_start_and_latency() {
        assert_eq!(s(1000, None, 200).align(5000, None, 30_000), 3800);
    }

    #[test]
    fn align_clamps_before_start_and_after_end() {
        let sess = s(1000, Some(11_000), 500);
        assert_eq!(sess.align(1200, None, 0), 0);
        assert_eq!(sess.align(50_000, None, 0), 10_000);
    }

    #[test]
    fn align_uses_plausible_stream_position_only() {
        let sess = s(0, None, 0);
        assert_eq!(sess.align(10_000, Some(9_000), 5_000), 9_000);
        assert_eq!(sess.align(10_000, Some(100_000), 5_000), 10_000);
        assert_eq!(sess.align(10_000, Some(-5), 5_000), 10_000);
    }

    #[test]
    fn clock_skew_before_start_clamps_to_zero() {
        // A node whose clock runs 2 s behind stamps a comment before the session began.
        let sess = s(100_000, None, 0);
        assert_eq!(sess.align(98_000, None, 0), 0);
    }

    #[test]
    fn back_to_back_sessions_pick_the_right_one() {
        let a = Session {
            vod: "a".into(),
            ..s(0, Some(1000), 0)
        };
        let b = Session {
            vod: "b".into(),
            ..s(1000, None, 0)
        };
        let all = vec![a, b];
        assert_eq!(session_for(&all, 500).unwrap().vod, "a");
        assert_eq!(session_for(&all, 1000).unwrap().vod, "b");
        assert_eq!(session_for(&all, 5000).unwrap().vod, "b");
        assert!(session_for(&all, -1).is_none());
    }

    #[test]
    fn segments() {
        assert_eq!(segment_of(0), 0);
        assert_eq!(segment_of(359_999), 0);
        assert_eq!(segment_of(360_000), 1);
        assert_eq!(segment_range(2), (720_000, 1_080_000));
    }
}
