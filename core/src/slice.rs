//! Time-slice maths: which slice of a room a comment lands in ([`SliceRef::assign`],
//! the one slice rule every SliceStore applies), slice key names
//! (`dm:{room}:s:<start>:<len>`, the `{room}` hash tag keeps a room on one Redis
//! Cluster slot), and when a slice becomes due for archiving.

/// Shortest and longest slice (DESIGN §6: 1 s .. 1 h).
pub const MIN_SLICE_MS: i64 = 1_000;
pub const MAX_SLICE_MS: i64 = 3_600_000;

/// One time slice of one room.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct SliceRef {
    pub room: String,
    pub start_ms: i64,
    pub len_ms: i64,
}

impl SliceRef {
    /// The slice of `len_ms` (clamped to [`MIN_SLICE_MS`]..=[`MAX_SLICE_MS`]) that
    /// contains `ts_ms`, aligned to multiples of the length (at the very start of
    /// time, where the aligned start does not exist, it starts at `i64::MIN`).
    pub fn containing(room: &str, ts_ms: i64, len_ms: i64) -> Self {
        let len_ms = len_ms.clamp(MIN_SLICE_MS, MAX_SLICE_MS);
        Self {
            room: room.to_string(),
            start_ms: ts_ms.saturating_sub(ts_ms.rem_euclid(len_ms)),
            len_ms,
        }
    }

    /// The slice rule: the slice of `room` an item stamped `ts_ms` goes into, given
    /// the room's newest slice so far (`None` for a room without one) and the
    /// room's current slice length `len_ms` (clamped like [`SliceRef::containing`]).
    ///
    /// - While `ts_ms` is before the newest slice's end, the item goes into the
    ///   newest slice, even if it is stamped before that slice's start (a late
    ///   clock): never into an older slice, which may be archived already.
    /// - Else it opens a new slice of `len_ms`, aligned on `ts_ms` but starting no
    ///   earlier than the newest slice's end, so a room's slices never overlap, and
    ///   a new length applies from the next slice on.
    ///
    /// So the slices of a room, in the order they are opened, are ordered and
    /// disjoint in time, and (items being assigned in seq order) in seq too; every
    /// item is stamped before its slice's end. Pure; saturating at the ends of time.
    pub fn assign(room: &str, newest: Option<&SliceRef>, ts_ms: i64, len_ms: i64) -> Self {
        let aligned = Self::containing(room, ts_ms, len_ms);
        let Some(newest) = newest else {
            return aligned;
        };
        let end = newest.end_ms();
        // A newest slice reaching the end of time takes everything after it.
        if ts_ms < end || end == i64::MAX {
            return Self {
                room: room.to_string(),
                start_ms: newest.start_ms,
                len_ms: newest.len_ms,
            };
        }
        Self {
            start_ms: aligned.start_ms.max(end),
            ..aligned
        }
    }

    pub fn end_ms(&self) -> i64 {
        self.start_ms.saturating_add(self.len_ms)
    }
    /// When the archiver may take it: after its end plus the hot retention.
    pub fn due_ms(&self, hot_retention_ms: i64) -> i64 {
        self.end_ms().saturating_add(hot_retention_ms)
    }

    /// When the slice is due once it received an item at `now_ms`: its end
    /// plus the retention, but never before the retention after the append
    /// (an item appended after the slice's end is held as long as any other).
    pub fn due_for(&self, hot_retention_ms: i64, now_ms: Option<i64>) -> i64 {
        let due = self.due_ms(hot_retention_ms);
        match now_ms {
            Some(now) => due.max(now.saturating_add(hot_retention_ms.max(0))),
            None => due,
        }
    }
    /// Redis key name.
    pub fn key(&self) -> String {
        format!("dm:{{{}}}:s:{}:{}", self.room, self.start_ms, self.len_ms)
    }
    /// Parses a key made by [`SliceRef::key`].
    pub fn parse_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix("dm:{")?;
        let close = rest.find('}')?;
        let room = &rest[..close];
        let mut parts = rest[close + 1..].strip_prefix(":s:")?.split(':');
        let start_ms = parts.next()?.parse().ok()?;
        let len_ms = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            room: room.to_string(),
            start_ms,
            len_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_receiving_a_late_item_is_due_a_retention_after_it() {
        let s = SliceRef {
            room: "r".into(),
            start_ms: 10_000,
            len_ms: 5_000,
        };
        // On time: its end plus the retention.
        assert_eq!(s.due_for(60_000, None), 75_000);
        assert_eq!(s.due_for(60_000, Some(14_000)), 75_000);
        // Late (appended a minute after its end): the retention from then.
        assert_eq!(s.due_for(60_000, Some(75_000)), 135_000);
        // No retention, and the ends of time.
        assert_eq!(s.due_for(0, Some(20_000)), 20_000);
        assert_eq!(s.due_for(60_000, Some(i64::MAX)), i64::MAX);
    }

    #[test]
    fn containing_aligns_and_clamps() {
        let s = SliceRef::containing("r", 12_345, 10_000);
        assert_eq!((s.start_ms, s.end_ms()), (10_000, 20_000));
        let s = SliceRef::containing("r", 20_000, 10_000);
        assert_eq!(s.start_ms, 20_000);
        let s = SliceRef::containing("r", -1, 10_000);
        assert_eq!(s.start_ms, -10_000);
        assert_eq!(SliceRef::containing("r", 5, 1).len_ms, MIN_SLICE_MS);
        assert_eq!(SliceRef::containing("r", 5, i64::MAX).len_ms, MAX_SLICE_MS);
        assert_eq!(s.due_ms(60_000), 60_000);
    }

    fn s(start_ms: i64, len_ms: i64) -> SliceRef {
        SliceRef {
            room: "r".into(),
            start_ms,
            len_ms,
        }
    }

    #[test]
    fn a_room_without_slices_starts_an_aligned_one() {
        assert_eq!(
            SliceRef::assign("r", None, 12_345, 10_000),
            s(10_000, 10_000)
        );
        assert_eq!(SliceRef::assign("r", None, -1, 10_000), s(-10_000, 10_000));
    }

    #[test]
    fn late_timestamps_go_into_the_newest_slice() {
        let newest = s(10_000, 10_000);
        // Before the newest slice's start, even slices back: still the newest.
        for ts in [19_999, 10_000, 9_999, 0, -50_000, i64::MIN] {
            assert_eq!(
                SliceRef::assign("r", Some(&newest), ts, 10_000),
                newest,
                "{ts}"
            );
        }
        // At its end: the next slice.
        assert_eq!(
            SliceRef::assign("r", Some(&newest), 20_000, 10_000),
            s(20_000, 10_000)
        );
        // Far later: aligned on the item, leaving a gap.
        assert_eq!(
            SliceRef::assign("r", Some(&newest), 95_000, 10_000),
            s(90_000, 10_000)
        );
    }

    #[test]
    fn a_shorter_length_applies_from_the_next_slice() {
        let newest = s(0, 10_000);
        assert_eq!(SliceRef::assign("r", Some(&newest), 5_000, 3_000), newest);
        // Aligned on 3 s would start at 9 s, inside the newest slice: moved to its end.
        let next = SliceRef::assign("r", Some(&newest), 11_000, 3_000);
        assert_eq!(next, s(10_000, 3_000));
        let after = SliceRef::assign("r", Some(&next), 14_000, 3_000);
        assert_eq!(after, s(13_000, 3_000));
        // Once a gap opens, slices are aligned again.
        assert_eq!(
            SliceRef::assign("r", Some(&after), 31_000, 3_000),
            s(30_000, 3_000)
        );
    }

    #[test]
    fn a_longer_length_applies_from_the_next_slice() {
        let newest = s(0, 10_000);
        assert_eq!(SliceRef::assign("r", Some(&newest), 9_999, 60_000), newest);
        let next = SliceRef::assign("r", Some(&newest), 12_000, 60_000);
        assert_eq!(next, s(10_000, 60_000));
        assert_eq!(SliceRef::assign("r", Some(&next), 69_999, 60_000), next);
        assert_eq!(
            SliceRef::assign("r", Some(&next), 70_000, 60_000),
            s(70_000, 60_000)
        );
    }

    #[test]
    fn lengths_are_clamped() {
        assert_eq!(SliceRef::assign("r", None, 5, 0).len_ms, MIN_SLICE_MS);
        assert_eq!(SliceRef::assign("r", None, 5, -7).len_ms, MIN_SLICE_MS);
        assert_eq!(
            SliceRef::assign("r", None, 5, i64::MAX).len_ms,
            MAX_SLICE_MS
        );
        let next = SliceRef::assign("r", Some(&s(0, 1_000)), 1_500, 1);
        assert_eq!(next, s(1_000, MIN_SLICE_MS));
    }

    #[test]
    fn the_ends_of_time_saturate() {
        let first = SliceRef::assign("r", None, i64::MIN, 1_000);
        assert_eq!(first.start_ms, i64::MIN);
        assert!(first.end_ms() > i64::MIN);
        let last = SliceRef::assign("r", None, i64::MAX, 1_000);
        assert_eq!(last.end_ms(), i64::MAX);
        assert_eq!(last.due_ms(60_000), i64::MAX);
        // Nothing comes after a slice that reaches the end of time.
        assert_eq!(SliceRef::assign("r", Some(&last), i64::MAX, 1_000), last);
        assert_eq!(SliceRef::assign("r", Some(&last), i64::MAX, 60_000), last);
        let mut newest = s(i64::MAX - 1_500, 1_000);
        newest = SliceRef::assign("r", Some(&newest), i64::MAX, 3_000);
        assert_eq!(newest.start_ms, i64::MAX - 500);
        assert_eq!(newest.end_ms(), i64::MAX);
    }

    /// Skewed clocks and changing lengths: slices only move forward, never
    /// overlap, and every item lands before its slice's end.
    #[test]
    fn slices_only_move_forward_and_never_overlap() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let lens = [1_000, 2_000, 5_000, 10_000, 60_000, 3_600_000];
        let mut newest: Option<SliceRef> = None;
        let mut opened: Vec<SliceRef> = Vec::new();
        let mut clock = 1_700_000_000_000i64;
        for _ in 0..10_000 {
            clock += (next() % 3_000) as i64;
            let ts = clock - (next() % 20_000) as i64;
            let len = lens[(next() % lens.len() as u64) as usize];
            let got = SliceRef::assign("r", newest.as_ref(), ts, len);
            assert!(ts < got.end_ms(), "{ts} goes before the end of {got:?}");
            match &newest {
                Some(n) if *n == got => {}
                Some(n) => {
                    assert!(got.start_ms >= n.end_ms(), "{got:?} overlaps {n:?}");
                    assert!(ts >= got.start_ms);
                    assert_eq!(got.len_ms, len, "a new slice has the current length");
                    opened.push(got.clone());
                }
                None => opened.push(got.clone()),
            }
            newest = Some(got);
        }
        assert!(opened.windows(2).all(|w| w[0].end_ms() <= w[1].start_ms));
    }

    #[test]
    fn keys_roundtrip_with_hash_tag() {
        let s = SliceRef::containing("room_1-x", 1_764_000_000_123, 10_000);
        let k = s.key();
        assert_eq!(k, "dm:{room_1-x}:s:1764000000000:10000");
        assert_eq!(SliceRef::parse_key(&k), Some(s));
        assert_eq!(SliceRef::parse_key("dm:{r}:idx"), None);
        assert_eq!(SliceRef::parse_key("dm:{r}:s:1:2:3"), None);
    }
}
