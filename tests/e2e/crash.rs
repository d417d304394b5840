//! Crash safety: a comment acknowledged with 202 survives kill -9. The process is
//! killed during the tail of a burst (some requests still in flight), restarted
//! on the same data dir; polling from the pre-burst cursor returns every
//! acknowledged comment, and after SIGTERM each is in Parquet exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use crate::helpers::*;

enum Outcome {
    /// 202 with this id.
    Acked(String),
    /// No answer (the process died under the request): may or may not be stored.
    Unknown,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_comment() {
    let mut app = spawn_app(&[]).await;
    let room = "crash";
    const TOTAL: usize = 300;
    const KILL_AFTER: usize = 260;

    let mut senders = Vec::new();
    for u in 0..3 {
        let user = format!("crasher-{u}");
        senders.push((user.clone(), app.token(&user, "service").await));
    }
    let start = app.room_cursor(room).await;

    let pid = app.pid();
    let acked = Arc::new(AtomicUsize::new(0));
    let killer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while acked.load(Ordering::SeqCst) < KILL_AFTER && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("run kill -KILL");
            assert!(status.success(), "kill -KILL {pid}");
            acked.load(Ordering::SeqCst)
        })
    };

    let url = app.url(&format!("/v1/rooms/{room}/danmaku"));
    let http = app.http.clone();
    let senders_ref = &senders;
    let outcomes: Vec<(usize, Outcome)> = futures::stream::iter(0..TOTAL)
        .map(|i| {
            let acked = acked.clone();
            let http = http.clone();
            let url = url.clone();
            async move {
                let (_, token) = &senders_ref[i % senders_ref.len()];
                let sent = http
                    .post(&url)
                    .bearer_auth(token)
                    .json(&json!({ "text": format!("crash-{i}") }))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let resp = match sent {
                    Ok(resp) => resp,
                    Err(_) => return (i, Outcome::Unknown),
                };
                let status = resp.status().as_u16();
                let body = match resp.text().await {
                    Ok(body) => body,
                    Err(_) => return (i, Outcome::Unknown),
                };
                assert_eq!(status, 202, "send crash-{i} before the kill: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).expect("202 body is JSON");
                let id = v["id"].as_str().expect("202 id").to_string();
                acked.fetch_add(1, Ordering::SeqCst);
                (i, Outcome::Acked(id))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let acked_at_kill = tokio::time::timeout(Duration::from_secs(30), killer)
        .await
        .expect("killer task")
        .expect("killer task panicked");
    app.kill9().await;

    let mut acked_ids: HashMap<String, String> = HashMap::new(); // id -> text
    let mut unknown_texts: HashSet<String> = HashSet::new();
    for (i, outcome) in outcomes {
        match outcome {
            Outcome::Acked(id) => {
                assert!(
                    acked_ids.insert(id, format!("crash-{i}")).is_none(),
                    "duplicate 202 id"
                );
            }
            Outcome::Unknown => {
                unknown_texts.insert(format!("crash-{i}"));
            }
        }
    }
    eprintln!(
        "killed after {acked_at_kill} acks; {} acked in total, {} without an answer",
        acked_ids.len(),
        unknown_texts.len()
    );
    assert!(
        acked_ids.len() >= KILL_AFTER.min(TOTAL),
        "the burst must mostly succeed before the kill"
    );

    // Restart on the same data dir.
    app.restart().await;
    let expected: HashSet<String> = acked_ids.keys().cloned().collect();
    let (items, _) = app
        .poll_until(room, &start, 200, &expected, Duration::from_secs(20))
        .await;
    let ids = ids_of(&items);
    assert_no_duplicates(&ids, "polling after restart");
    let got: HashSet<String> = ids.iter().cloned().collect();
    let missing: Vec<&String> = expected.difference(&got).collect();
    assert!(
        missing.is_empty(),
        "{} of {} comments acknowledged with 202 are gone after kill -9 + restart, e.g. {:?} ({:?})",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)],
        missing.iter().take(5).map(|id| &acked_ids[*id]).collect::<Vec<_>>()
    );
    let mut texts_seen = HashSet::new();
    for item in &items {
        let id = item["id"].as_str().unwrap();
        let text = item["text"].as_str().unwrap().to_string();
        match acked_ids.get(id) {
            Some(t) => assert_eq!(&text, t, "text of {item}"),
            None => assert!(
                unknown_texts.contains(&text),
                "after restart, an item that was neither acknowledged nor in flight: {item}"
            ),
        }
        assert!(
            texts_seen.insert(text.clone()),
            "comment {text:?} stored twice: {item}"
        );
    }

    // Graceful stop: everything in Parquet exactly once.
    app.stop().await;
    let rows = read_parquet(&app.data_dir);
    let row_ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    assert_no_duplicates(&row_ids, "Parquet rows after crash + restart");
    let row_set: HashSet<String> = row_ids.iter().cloned().collect();
    let missing: Vec<&String> = expected.difference(&row_set).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged comments missing from Parquet, e.g. {:?}; archive: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        archive_listing(&app.data_dir)
    );
    assert_eq!(
        row_set, got,
        "Parquet must hold exactly what the live API returned after the restart"
    );
    for row in &rows {
        assert_eq!(row.room, room, "{row:?}");
        if let Some(text) = acked_ids.get(&row.id.to_string()) {
            assert_eq!(&row.text, text, "{row:?}");
        }
    }
}
