//! `danmaku-core`: everything the roles share, with no role logic of its own.
//!
//! - [`model`]: the comment (`Danmaku`), its kinds, modes and colors, the protobuf
//!   encoding used on the Bus and in the SliceStore, and the client JSON of API.md.
//! - [`id`]: 64-bit time-ordered ids (milliseconds | node | sequence).
//! - [`cursor`], [`slice`], [`vod`]: the opaque live cursor, time-slice maths, VOD
//!   sessions, offset alignment and 6-minute segments. Pure functions, unit-tested here.
//! - [`auth`]: HS256 tokens with roles.
//! - [`error`]: the API error codes and the one place that maps them to HTTP.
//! - [`config`]: the typed settings (TOML file plus `DANMAKU_*` environment).
//! - [`ports`]: one trait per external system (Bus, SliceStore, ArchiveStore,
//!   ReplayCache, object store), documented with their guarantees.
//! - [`embedded`]: the crash-safe embedded adapters on one redb database under the
//!   data dir; [`memory`]: the in-process replay cache; [`redis_cache`]: its Redis
//!   tier and the two-tier cache (in-process in front of the replay Redis).
//! - [`scylla`]: the ScyllaDB ArchiveStore adapter, its schema migration, and (feature
//!   `kassandra` or in tests) an in-process CQL server for tests.
//! - [`kafka`]: the Kafka Bus (rdkafka); [`redis`]: the Redis SliceStore and Notifier
//!   (standalone or Cluster, Pub/Sub or sharded Pub/Sub).
//! - [`conformance`]: one test suite per port, run against every adapter.
//! - [`context`]: builds the adapters the settings select and hands them to the roles.
//! - [`serve`]: the HTTP/1.1 server loop with upgrades and graceful shutdown, and
//!   the edge's bounds (connection caps, request heads, lingering close);
//!   [`body`]: request bodies read into one buffer within a size and a deadline.
//! - [`testkit`]: real servers (redis-server, a Redis Cluster) on free loopback ports for tests.

pub mod auth;
pub mod body;
pub mod config;
#[cfg(any(test, feature = "testsuite"))]
pub mod conformance;
#[cfg(any(test, feature = "testsuite"))]
pub mod conformance_object_store;
pub mod context;
pub mod cursor;
pub mod error;
pub mod id;
pub mod memory;
pub mod model;
pub mod ports;
pub mod serve;
pub mod slice;
pub mod vod;

/// Milliseconds since the Unix epoch by the server clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
