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
    run_in_web_with(program, args, &[]);
}

/// [`run_in_web`] with more environment for the program.
fn run_in_web_with(program: &str, args: &[&str], env: &[(&str, &Path)]) {
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
        .envs(env.iter().copied())
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

/// A recording longer than one segment cannot be made through the API without
/// waiting its length (sessions start now), so this one, 12 minutes long and
/// ended, is written into the data dir's embedded stores before the server of
/// `e2e/vod_long.test.mjs` starts on it: comments at 1 s and 2 s (segment 0) and
/// at 401-403 s (segment 1).
#[test]
#[ignore = "needs chromium and npm (npm ci in web/)"]
fn replay_page_loads_segment_1_after_a_seek() {
    use danmaku_core::model::{Danmaku, Kind, Mode};
    use danmaku_core::ports::ArchivedComment;
    use danmaku_core::vod::Session;

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut s = danmaku_core::config::Settings::default();
        s.server.data_dir = data.clone();
        s.auth.secret.0 = "seed".into();
        let ctx = danmaku::engines::EngineSelection::build(s)
            .await
            .expect("embedded stores");
        let (vod, room) = ("long-vod", "long-room");
        let now = danmaku_core::now_ms();
        let session = Session {
            vod: vod.into(),
            room: room.into(),
            started_at: now - 720_000,
            ended_at: None,
            latency_ms: 0,
            video_url: None,
        };
        ctx.archive.create_session(&session).await.expect("session");
        ctx.archive.end_session(vod, now).await.expect("end");
        let rows: Vec<ArchivedComment> = [1_000i64, 2_000, 401_000, 402_000, 403_000]
            .iter()
            .enumerate()
            .map(|(i, &offset)| ArchivedComment {
                vod: vod.into(),
                offset_ms: offset,
                item: Danmaku {
                    id: 7_000_000_000_000_000 + i as u64,
                    room: room.into(),
                    user: "seeded".into(),
                    name: String::new(),
                    ts_ms: session.started_at + offset,
                    kind: Kind::Comment as i32,
                    mode: Mode::Scroll as i32,
                    color: 0xff_ffff,
                    text: format!("at {offset}"),
                    stream_pos_ms: None,
                    vod: Some(vod.into()),
                    offset_ms: Some(offset),
                    hidden: false,
                    deletes: None,
                },
            })
            .collect();
        ctx.archive.upsert_comments(&rows).await.expect("comments");
    });
    // The stores close with the runtime: the server opens them next.
    drop(rt);
    run_in_web_with(
        "node",
        &["--test", "e2e/vod_long.test.mjs"],
        &[("VOD_LONG_DIR", dir.path())],
    );
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
