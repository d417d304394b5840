//! Time-slice maths: which slice of a room a comment lands in, slice key names
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
    /// The slice of `len_ms` that contains `ts_ms` (aligned to multiples of the length).
    pub fn containing(room: &str, ts_ms: i64, len_ms: i64) -> Self {
        let len_ms = len_ms.clamp(MIN_SLICE_MS, MAX_SLICE_MS);
        Self {
            room: room.to_string(),
            start_ms: ts_ms - ts_ms.rem_euclid(len_ms),
            len_ms,
        }
    }
    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.len_ms
    }
    /// When the archiver may take it: after its end plus the hot retention.
    pub fn due_ms(&self, hot_retention_ms: i64) -> i64 {
        self.end_ms() + hot_retention_ms
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
