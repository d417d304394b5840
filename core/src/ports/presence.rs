//! The Presence port: how many WebSocket viewers each room has, summed over
//! every live node (API.md, "Idempotency and online counts across nodes").
//!
//! Each live node reports its own per-room counts (only the rooms whose count
//! changed, plus a full report when it starts) with a time to live; a node that
//! stops reporting (a crash) drops out when its report expires. Reading sums the
//! fresh reports. Cheap at 100,000 rooms: one record per node holding its
//! rooms, no per-room timer and no per-viewer key.

use super::cause::{BoxError, Cause};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Presence failures: what was being done, and the adapter's own error.
#[derive(Debug, thiserror::Error)]
#[error("presence store unavailable: {context}{}", Cause(.source))]
pub struct PresenceError {
    /// What failed.
    pub context: String,
    /// The adapter's own error.
    #[source]
    pub source: Option<BoxError>,
}

impl PresenceError {
    /// A failure of `context`, with the adapter's error as its source.
    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            context: context.into(),
            source: Some(source.into()),
        }
    }
}

/// Per-room viewer counts over every live node.
///
/// Guarantees:
/// - `online(rooms)` is the sum, per room, of the latest count each node
///   reported for it, over the nodes whose latest report is younger than its
///   `ttl`; a room nobody reported is 0.
/// - A report with `full = true` replaces everything the node reported before
///   (rooms it does not name count 0 for it); otherwise it updates only the
///   rooms it names, and a count of 0 removes the room from the node's record.
/// - Every report renews the node's whole record for `ttl`.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Reports `node`'s viewer counts (see the trait doc).
    async fn report(
        &self,
        node: &str,
        counts: &[(String, u64)],
        full: bool,
        ttl: Duration,
    ) -> Result<(), PresenceError>;

    /// The viewers of each of `rooms`, summed over the fresh reports, in order.
    async fn online(&self, rooms: &[String]) -> Result<Vec<u64>, PresenceError>;
}

/// The in-process Presence of a single-process deployment (the embedded
/// defaults): the same guarantees, within one process.
#[derive(Default)]
pub struct MemoryPresence {
    nodes: Mutex<HashMap<String, NodeReport>>,
}

/// One node's report: until when it counts, and its rooms' viewers.
type NodeReport = (Instant, HashMap<String, u64>);

#[async_trait]
impl Presence for MemoryPresence {
    async fn report(
        &self,
        node: &str,
        counts: &[(String, u64)],
        full: bool,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let mut nodes = self.nodes.lock().expect("presence lock");
        let now = Instant::now();
        let entry = nodes
            .entry(node.to_string())
            .or_insert_with(|| (now + ttl, HashMap::new()));
        if full || entry.0 <= now {
            entry.1.clear();
        }
        entry.0 = now + ttl;
        for (room, n) in counts {
            if *n == 0 {
                entry.1.remove(room);
            } else {
                entry.1.insert(room.clone(), *n);
            }
        }
        nodes.retain(|_, (until, _)| *until > now);
        Ok(())
    }

    async fn online(&self, rooms: &[String]) -> Result<Vec<u64>, PresenceError> {
        let nodes = self.nodes.lock().expect("presence lock");
        let now = Instant::now();
        Ok(rooms
            .iter()
            .map(|r| {
                nodes
                    .values()
                    .filter(|(until, _)| *until > now)
                    .filter_map(|(_, counts)| counts.get(r))
                    .sum()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::presence_suite!(presence_in_memory, async {
        ((), MemoryPresence::default())
    });
}
