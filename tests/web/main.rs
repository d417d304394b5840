//! Browser-facing tests of the `danmaku` binary: each starts its own server
//! (port 0, fresh data dir, the e2e harness of `tests/e2e/helpers.rs`).
//!
//! - [`cors`]: CORS on every endpoint (preflights, simple requests, errors,
//!   a configured origin list).
//! - [`pages`]: the embedded pages and their cache headers, and the check that
//!   the committed assets are what `web/`'s lockfile builds (needs npm).
//! - [`browser`]: the SDK, the pages and three players in headless Chromium
//!   (web/e2e/*.mjs driven by playwright-core; needs chromium and npm).

#[path = "../e2e/helpers.rs"]
mod helpers;

mod browser;
mod cors;
mod pages;
