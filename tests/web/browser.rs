//! The web SDK's unit tests (vitest) and the browser tests of `web/e2e`
//! (node's test runner driving Debian's Chromium through playwright-core,
//! against this build's `danmaku` binary): each test file of `web/e2e` starts
//! its own servers on free loopback ports. They need `npm ci` in `web/` and
//! `/usr/bin/chromium` (infra/dev/test.sh installs both).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One browser run at a time: their timing checks (a comment across two pages
/// within 1 s, players within 0.75 s of an offset) need the CPU they measure.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// Runs `program args` in web/, printing its output; panics unless it succeeds.
fn run_in_web(program: &str, args: &[&str]) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let web = web_dir();
    assert!(
        web.join("node_modules/.bin").exists(),
        "run `npm ci` in web/ first (infra/dev/test.sh does)"
    );
    let out = Command::new(program)
        .args(args)
        .current_dir(&web)
        .env("DANMAKU_BIN", env!("CARGO_BIN_EXE_danmaku"))
        .env("CI", "true")
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
#[ignore = "needs npm (npm ci in web/)"]
fn sdk_unit_tests() {
    run_in_web("node", &["node_modules/vitest/vitest.mjs", "run"]);
}

#[test]
#[ignore = "needs chromium and npm (npm ci in web/)"]
fn players_on_another_origin() {
    run_in_web("node", &["--test", "e2e/players.test.mjs"]);
}

#[test]
#[ignore = "needs chromium and npm (npm ci in web/)"]
fn live_room_page() {
    run_in_web("node", &["--test", "e2e/live.test.mjs"]);
}

#[test]
#[ignore = "needs chromium and npm (npm ci in web/)"]
fn replay_page() {
    run_in_web("node", &["--test", "e2e/vod.test.mjs"]);
}

#[test]
#[ignore = "needs chromium and npm (npm ci in web/)"]
fn admin_page() {
    run_in_web("node", &["--test", "e2e/admin.test.mjs"]);
}

#[test]
#[ignore = "needs chromium and npm (npm ci in web/)"]
fn polling_fallback_and_sdk_in_node() {
    run_in_web("node", &["--test", "e2e/fallback.test.mjs"]);
}

#[test]
#[ignore = "needs chromium and npm (npm ci in web/)"]
fn home_page_lists_live_rooms_and_recordings() {
    run_in_web("node", &["--test", "e2e/home.test.mjs"]);
}
