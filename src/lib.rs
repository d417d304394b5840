//! `danmaku`: the one binary's library.
//!
//! - [`engines`]: engine selection, the one place that turns configuration into
//!   adapters (embedded defaults or Kafka, Redis, ScyllaDB, S3).
//!
//! `src/main.rs` only parses the command line.

pub mod engines;
