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

/// kill -9 while the archiver is busy (short hot retention: slices are archived
/// a fraction of a second after they close), restart, SIGTERM: every
/// acknowledged comment is in Parquet exactly once, whatever batch the kill
/// interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_archiving_keeps_parquet_exactly_once() {
    let mut app = spawn_app(&[
        ("DANMAKU_LIVE__HOT_RETENTION_MS", "300"),
        ("DANMAKU_ARCHIVE__POLL_MS", "100"),
        ("DANMAKU_ARCHIVE__LEASE_MS", "1500"),
    ])
    .await;
    let rooms = ["arch-crash-a", "arch-crash-b"];
    let mut senders = Vec::new();
    for u in 0..3 {
        senders.push(app.token(&format!("arch-crasher-{u}"), "service").await);
    }

    let pid = app.pid();
    let data_dir = app.data_dir.clone();
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let killed = killed.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            // Kill once the archiver has written something and is still running.
            while began.elapsed() < Duration::from_millis(2000)
                || (parquet_files(&data_dir).is_empty() && began.elapsed() < Duration::from_secs(6))
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("run kill -KILL");
            killed.store(true, Ordering::SeqCst);
            assert!(status.success(), "kill -KILL {pid}");
            parquet_files(&data_dir).len()
        })
    };

    let url_of = |room: &str| app.url(&format!("/v1/rooms/{room}/danmaku"));
    let urls = [url_of(rooms[0]), url_of(rooms[1])];
    let http = app.http.clone();
    let (senders_ref, urls_ref, killed_ref) = (&senders, &urls, &killed);
    let outcomes: Vec<(usize, Option<Outcome>)> = futures::stream::iter(0..20_000usize)
        .map(|i| {
            let http = http.clone();
            async move {
                if killed_ref.load(Ordering::SeqCst) {
                    return (i, None);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                let sent = http
                    .post(&urls_ref[i % 2])
                    .bearer_auth(&senders_ref[i % senders_ref.len()])
                    .json(&json!({ "text": format!("ac-{i}") }))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                let Ok(resp) = sent else {
                    return (i, Some(Outcome::Unknown));
                };
                let status = resp.status().as_u16();
                let Ok(body) = resp.text().await else {
                    return (i, Some(Outcome::Unknown));
                };
                assert_eq!(status, 202, "send ac-{i} before the kill: {body}");
                let v: serde_json::Value = serde_json::from_str(&body).expect("202 body is JSON");
                (
                    i,
                    Some(Outcome::Acked(
                        v["id"].as_str().expect("202 id").to_string(),
                    )),
                )
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let files_at_kill = tokio::time::timeout(Duration::from_secs(30), killer)
        .await
        .expect("killer task")
        .expect("killer task panicked");
    app.kill9().await;

    let mut acked_ids: HashMap<String, String> = HashMap::new();
    let mut unknown_texts: HashSet<String> = HashSet::new();
    for (i, outcome) in outcomes {
        match outcome {
            Some(Outcome::Acked(id)) => {
                assert!(
                    acked_ids.insert(id, format!("ac-{i}")).is_none(),
                    "duplicate 202 id"
                );
            }
            Some(Outcome::Unknown) => {
                unknown_texts.insert(format!("ac-{i}"));
            }
            None => {}
        }
    }
    eprintln!(
        "killed with {files_at_kill} Parquet files written; {} acked, {} without an answer",
        acked_ids.len(),
        unknown_texts.len()
    );
    assert!(
        files_at_kill > 0,
        "the archiver wrote nothing within 6 s (hot retention 300 ms)"
    );

    app.restart().await;
    // A few more after the restart, then let a lease from before the kill expire.
    for i in 0..20 {
        let text = format!("after-restart-{i}");
        let id = app.send_text(&senders[0], rooms[i % 2], &text).await;
        acked_ids.insert(id, text);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.stop().await;

    let rows = read_parquet(&app.data_dir);
    let row_ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    assert_no_duplicates(&row_ids, "Parquet rows after kill -9 during archiving");
    let row_set: HashSet<String> = row_ids.iter().cloned().collect();
    let expected: HashSet<String> = acked_ids.keys().cloned().collect();
    let missing: Vec<&String> = expected.difference(&row_set).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged comments missing from Parquet, e.g. {:?}; archive: {:?}",
        missing.len(),
        expected.len(),
        missing
            .iter()
            .take(5)
            .map(|id| (id, &acked_ids[*id]))
            .collect::<Vec<_>>(),
        archive_listing(&app.data_dir)
    );
    let mut texts = HashSet::new();
    for row in &rows {
        assert!(
            texts.insert(row.text.clone()),
            "comment {:?} archived twice",
            row.text
        );
        match acked_ids.get(&row.id.to_string()) {
            Some(text) => assert_eq!(&row.text, text, "{row:?}"),
            None => assert!(
                unknown_texts.contains(&row.text),
                "a row that was neither acknowledged nor in flight: {row:?}"
            ),
        }
    }
}
