//! `danmaku`: the one binary's library; the only crate that knows every role and
//! every adapter.
//!
//! - [`engines`]: engine selection, the one place that turns configuration into
//!   adapters (embedded defaults or Kafka, Redis, ScyllaDB, S3).
//! - [`lifecycle`]: a node ([`lifecycle::Server`]): starts the roles the settings
//!   name and stops them in the order that keeps every acknowledged comment.
//! - [`app`]: the HTTP app (role routers, pages, fallbacks); [`headers`]: the
//!   security and CORS headers of every answer and the preflights (one layer);
//!   [`ops`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`commands`]: the command line's other work (token, config, archive).
//!
//! `src/main.rs` only parses the command line.

pub mod app;
pub mod commands;
pub mod engines;
pub mod headers;
pub mod lifecycle;
pub mod ops;
