//! 64-bit ids, time-ordered and unique cluster-wide: 41 bits of milliseconds since
//! 2024-01-01, 10 bits of node id, 12 bits of per-millisecond sequence.

use std::sync::Mutex;

/// 2024-01-01T00:00:00Z in ms since the Unix epoch.
pub const EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// Largest node id.
pub const MAX_NODE: u16 = (1 << NODE_BITS) - 1;

/// Generates ids for one node. Never goes backwards, even if the clock does.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    state: Mutex<(i64, u64)>,
}

impl IdGenerator {
    pub fn new(node: u16) -> Self {
        assert!(node <= MAX_NODE, "node id out of range");
        Self {
            node: node as u64,
            state: Mutex::new((0, 0)),
        }
    }

    /// Next id for a comment received at `now_ms`.
    pub fn next_id(&self, now_ms: i64) -> u64 {
        let mut st = self.state.lock().expect("id lock");
        let mut ms = (now_ms - EPOCH_MS).max(0);
        if ms < st.0 {
            ms = st.0; // clock went back: stay on the last millisecond
        }
        if ms == st.0 {
            st.1 += 1;
            if st.1 >= (1 << SEQ_BITS) {
                ms += 1; // sequence exhausted: borrow the next millisecond
                st.1 = 0;
            }
        } else {
            st.1 = 0;
        }
        st.0 = ms;
        ((ms as u64) << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | st.1
    }
}

/// The millisecond timestamp inside an id.
pub fn id_time_ms(id: u64) -> i64 {
    (id >> (NODE_BITS + SEQ_BITS)) as i64 + EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_grow_and_carry_time() {
        let g = IdGenerator::new(3);
        let t = 1_764_000_000_000;
        let mut last = 0;
        for i in 0..10_000 {
            let id = g.next_id(t + i / 100);
            assert!(id > last);
            last = id;
        }
        assert!(id_time_ms(g.next_id(t + 500)) >= t + 500);
    }

    #[test]
    fn clock_going_back_keeps_order() {
        let g = IdGenerator::new(1);
        let a = g.next_id(1_764_000_001_000);
        let b = g.next_id(1_764_000_000_000);
        assert!(b > a);
    }

    #[test]
    fn nodes_do_not_collide() {
        let a = IdGenerator::new(1).next_id(1_764_000_000_000);
        let b = IdGenerator::new(2).next_id(1_764_000_000_000);
        assert_ne!(a, b);
    }
}
