//! The pages for people as the binary serves them: `/`, `/rooms/{room}`,
//! `/vods/{vod}`, their hashed assets and `/favicon.ico`, with their cache
//! headers and the page policy; and the committed build in `web/dist` is
//! exactly what `web/`'s lockfile and sources build (needs npm: `npm ci` in
//! `web/` first, as infra/dev/test.sh does).

use crate::helpers::spawn_app;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every `/assets/...` path a page names.
fn asset_paths(html: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("\"/assets/") {
        let tail = &rest[start + 1..];
        let end = tail.find('"').expect("a closing quote");
        paths.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    paths
}

#[tokio::test]
async fn pages_assets_and_favicon_with_their_cache_headers() {
    let app = spawn_app(&[("DANMAKU_LIMITS__MAX_TEXT_CHARS", "42")]).await;
    for path in ["/", "/rooms/r1", "/vods/v1"] {
        let page = app.get(path).await;
        page.expect_status(200, path);
        assert!(
            page.header("content-type")
                .is_some_and(|c| c.starts_with("text/html")),
            "{path}"
        );
        assert_eq!(
            page.header("cache-control").as_deref(),
            Some("no-cache"),
            "{path}"
        );
        let csp = page.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(!page.text.contains("<script>"), "{path}: no inline script");
        assert!(
            !page.text.contains("{{"),
            "{path}: every placeholder filled"
        );
        let assets = asset_paths(&page.text);
        assert!(
            assets.len() >= 2,
            "{path} loads a script and a style: {assets:?}"
        );
        for asset in assets {
            let r = app.get(&asset).await;
            r.expect_status(200, &asset);
            assert_eq!(
                r.header("cache-control").as_deref(),
                Some("public, max-age=31536000, immutable"),
                "{asset}"
            );
            let ty = r.header("content-type").unwrap_or_default();
            assert!(
                ty.starts_with("text/javascript") || ty.starts_with("text/css"),
                "{asset}: {ty}"
            );
        }
    }
    let room = app.get("/rooms/r1").await;
    assert!(
        room.text.contains("data-max-chars=\"42\""),
        "the limits come from the settings"
    );

    let icon = app.get("/favicon.ico").await;
    icon.expect_status(200, "favicon");
    assert_eq!(icon.header("content-type").as_deref(), Some("image/x-icon"));
    let missing = app.get("/assets/nope-123.js").await;
    missing.expect_error(404, "not_found", "unknown asset");
}

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

fn files_under(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {d:?}: {e}")) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Rebuilds web/ in a temp copy (with the node_modules `npm ci` installed from
/// the lockfile) and compares every built file with the committed web/dist.
#[test]
#[ignore = "needs npm (npm ci in web/)"]
fn committed_assets_are_what_the_lockfile_builds() {
    let web = web_dir();
    assert!(
        web.join("node_modules/esbuild").exists(),
        "run `npm ci` in web/ first (infra/dev/test.sh does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("web");
    std::fs::create_dir_all(&copy).unwrap();
    for file in [
        "build.mjs",
        "package.json",
        "package-lock.json",
        "tsconfig.json",
        "tsconfig.sdk.json",
    ] {
        std::fs::copy(web.join(file), copy.join(file)).unwrap();
    }
    copy_dir(&web.join("src"), &copy.join("src"));
    std::os::unix::fs::symlink(web.join("node_modules"), copy.join("node_modules")).unwrap();
    let status = std::process::Command::new("node")
        .arg("build.mjs")
        .current_dir(&copy)
        .status()
        .expect("run node build.mjs");
    assert!(status.success(), "node build.mjs failed: {status}");

    let built = files_under(&copy.join("dist"));
    let committed = files_under(&web.join("dist"));
    let built_names: Vec<_> = built.keys().collect();
    let committed_names: Vec<_> = committed.keys().collect();
    assert_eq!(
        built_names, committed_names,
        "web/dist differs from a fresh build: run `npm run build` in web/ and commit web/dist"
    );
    for (name, bytes) in &built {
        assert!(
            committed[name] == *bytes,
            "web/dist/{name} differs from a fresh build: run `npm run build` in web/ and commit web/dist"
        );
    }
}
