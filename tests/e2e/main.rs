//! End-to-end tests of the `danmaku` binary: each test starts its own server
//! (port 0, fresh data dir) and checks the API.md contract from the outside.
//!
//! - [`helpers`]: spawn/stop/kill/restart, tokens, HTTP, WebSocket, Parquet.
//! - [`fanout`]: every viewer gets every comment once, in the same order.
//! - [`polling`]: 1,000 concurrent comments read back by cursor polling.
//! - [`resume`]: reconnecting with the last cursor loses and repeats nothing.
//! - [`vod`]: sessions, replay range API, segments, ETag and caching.
//! - [`shutdown`]: SIGTERM archives every accepted comment to Parquet once.
//! - [`crash`]: kill -9 loses no acknowledged comment.
//! - [`errors`]: every error code of API.md with its status.
//! - [`hardening_edge`]: issue 13's edge attacks (slow and huge bodies, bad heads,
//!   connection caps, page headers, /metrics protection), each with its bound.
//! - [`hardening_ingest`]: issue 13's intake and token cases (guest limits per
//!   address, WebSocket token times, the auth scheme) through the real server.
//! - [`hardening_live`]: issue 13's live bounds (stalled resumes, polls of empty
//!   rooms) and cursors from before a restart (items or `gap`).
//! - [`hardening_stores`]: issue 13's store cases: kill -9 while archiving
//!   (replay complete within 10 s of the restart), cursors from before a restart
//!   get their comments (archiving copies), embedded and Redis.
//! - [`deletion`]: deletion and recall on one node (viewers, polls, resumes,
//!   every replay format of an ended VOD) and online counts (issue 14).
//! - [`moderation_live_nodes`]: deletions and online counts across two live
//!   nodes on Kafka and Redis, and a deletion surviving kill -9 (issue 14).
//! - [`moderation_nodes`]: bans, idempotency keys, slow mode and mute shared by
//!   two ingest nodes on Kafka and Redis (issue 14).
//! - [`hostile_text`]: markup, quotes, emoji and CJK verbatim; control chars rejected.
//! - [`pipeline`]: the same flows and the faults on Kafka and Redis (standalone and Cluster).
//! - [`replay_formats`]: stream_pos_ms, posting on a recording, Bilibili XML, DPlayer.

mod helpers;

mod archive_crash;
mod archive_s3;
mod crash;
mod deletion;
mod errors;
mod fanout;
mod hardening_edge;
mod hardening_ingest;
mod hardening_live;
mod hardening_stores;
mod hostile_text;
mod moderation_live_nodes;
mod moderation_nodes;
mod pipeline;
mod polling;
mod replay_formats;
mod resume;
mod shutdown;
mod vod;
