//! The role lifecycle in-process: a node with every role on the embedded
//! defaults takes comments right up to the shutdown, then stops in the order of
//! `danmaku::lifecycle` so that every acknowledged comment is in the archive.

use danmaku::lifecycle::{Server, Stage};
use danmaku_core::auth::Role;
use danmaku_core::config::Settings;
use danmaku_core::vod::Session;
use std::collections::{BTreeMap, HashSet};

fn settings(dir: &std::path::Path) -> Settings {
    let env: BTreeMap<String, String> = [
        ("DANMAKU_SERVER__LISTEN", "127.0.0.1:0".to_string()),
        ("DANMAKU_SERVER__DATA_DIR", dir.display().to_string()),
        ("DANMAKU_SERVER__DEMO", "false".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    Settings::load(None, &env).expect("settings")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_archives_every_acknowledged_comment_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::build(settings(dir.path())).await.expect("server");
    let addr = server.local_addr();
    let ctx = server.context().clone();
    let now = danmaku_core::now_ms();
    let vod = format!("v-{now}");
    ctx.archive
        .create_session(&Session {
            vod: vod.clone(),
            room: "r1".into(),
            started_at: now - 1_000,
            ended_at: None,
            latency_ms: 0,
            video_url: None,
        })
        .await
        .unwrap();
    let token = ctx
        .signer
        .issue("svc", None, Role::Service, now / 1000, 3600);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    // Sends until the shutdown: the last ones are acknowledged moments before
    // the HTTP server stops, so only a writer drained before the final archive
    // gets them into it.
    let http = reqwest::Client::new();
    let mut acknowledged = HashSet::new();
    for i in 0..60 {
        let resp = http
            .post(format!("http://{addr}/v1/rooms/r1/danmaku"))
            .bearer_auth(&token)
            .json(&serde_json::json!({ "text": format!("c{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "send {i}");
        let body: serde_json::Value = resp.json().await.unwrap();
        acknowledged.insert(body["id"].as_str().unwrap().to_string());
    }
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap().expect("clean shutdown");

    assert_eq!(
        report.stages,
        vec![
            Stage::HttpStopped,
            Stage::WriterDrained,
            Stage::ArchiverStopped,
            Stage::FinalArchive
        ]
    );
    assert!(
        report.archived_rows.is_some(),
        "the final archive succeeded"
    );
    let mut archived = HashSet::new();
    let last = ctx.archive.last_segment(&vod).await.unwrap().unwrap_or(0);
    for segment in 0..=last {
        for row in ctx.archive.read_segment(&vod, segment).await.unwrap() {
            assert!(
                archived.insert(row.item.id.to_string()),
                "archived twice: {}",
                row.item.id
            );
        }
    }
    let missing: Vec<_> = acknowledged.difference(&archived).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not archived: {missing:?}"
    );
    assert_eq!(ctx.archive.count(&vod).await.unwrap(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_not_named_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.server.roles = vec!["replay-api".into()];
    let server = Server::build(s).await.expect("server");
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let poll = http
        .get(format!("http://{addr}/v1/rooms/r1/danmaku"))
        .send()
        .await
        .unwrap();
    assert_eq!(poll.status(), 404, "live is not running on this node");
    stop_tx.send(()).unwrap();
    let report = running.await.unwrap().expect("clean shutdown");
    assert_eq!(report.stages, vec![Stage::HttpStopped]);
}
