//! Graceful shutdown: after SIGTERM the process archives everything still live
//! and exits 0; the Parquet files hold every accepted comment exactly once.

use std::collections::{HashMap, HashSet};

use arrow::datatypes::{DataType, TimeUnit};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::*;

/// The Parquet columns of the contract: name, type, nullable.
fn expected_columns() -> Vec<(&'static str, DataType, bool)> {
    vec![
        ("id", DataType::UInt64, false),
        ("room", DataType::Utf8, false),
        ("vod", DataType::Utf8, true),
        ("offset_ms", DataType::Int64, true),
        (
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        ("user", DataType::Utf8, false),
        ("name", DataType::Utf8, true),
        ("kind", DataType::Utf8, false),
        ("mode", DataType::Utf8, false),
        ("color", DataType::UInt32, false),
        ("text", DataType::Utf8, false),
    ]
}

/// Checks names and types of every file; returns the problems found.
pub fn schema_problems(files: &[std::path::PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    for file in files {
        let schema = parquet_schema(file);
        for (name, want, _nullable) in expected_columns() {
            match schema.field_with_name(name) {
                Err(_) => problems.push(format!("{}: no column {name}", file.display())),
                Ok(field) => {
                    let same = match (field.data_type(), &want) {
                        (DataType::Timestamp(u, Some(tz)), DataType::Timestamp(wu, _)) => {
                            u == wu && matches!(tz.as_ref(), "UTC" | "+00:00" | "Z" | "Etc/UTC")
                        }
                        (got, want) => got == want,
                    };
                    if !same {
                        problems.push(format!(
                            "{}: column {name} is {}, want {want}",
                            file.display(),
                            field.data_type()
                        ));
                    }
                }
            }
        }
    }
    problems
}

/// Checks `archive/date=YYYY-MM-DD/hour=HH/part-<batch>.parquet`.
pub fn path_problems(data_dir: &std::path::Path, rows: &[ParquetRow]) -> Vec<String> {
    let mut problems = Vec::new();
    let archive = data_dir.join("archive");
    for row in rows {
        let rel = row.file.strip_prefix(&archive).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().to_string())
            .collect();
        let ok_shape = parts.len() == 3
            && parts[0].starts_with("date=")
            && parts[1].starts_with("hour=")
            && parts[2].starts_with("part-")
            && parts[2].ends_with(".parquet");
        if !ok_shape {
            problems.push(format!(
                "{} is not date=YYYY-MM-DD/hour=HH/part-<batch>.parquet",
                rel.display()
            ));
            continue;
        }
        let (date, hour) = utc_date_hour(row.ts);
        if parts[0] != format!("date={date}") || parts[1] != format!("hour={hour}") {
            problems.push(format!(
                "row {} with ts {} ({date} {hour}h UTC) is in {}",
                row.id,
                row.ts,
                rel.display()
            ));
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_archives_every_accepted_comment_to_parquet_exactly_once() {
    let mut app = spawn_app(&[]).await;
    let rooms = ["arch-a", "arch-b"];
    let svc_tokens: Vec<(String, String)> = {
        let mut v = Vec::new();
        for u in 0..4 {
            let user = format!("archiver-{u}");
            v.push((user.clone(), app.token(&user, "service").await));
        }
        v
    };

    // arch-a has an open session (latency 0): its rows carry the vod.
    let resp = app
        .post(
            "/v1/rooms/arch-a/sessions",
            Some(&svc_tokens[0].1),
            json!({"latency_ms": 0}),
        )
        .await;
    resp.expect_status(201, "POST sessions");
    let vod = resp.json["vod"].as_str().unwrap().to_string();
    let started_at = resp.json["started_at"].as_i64().unwrap();

    let modes = ["scroll", "top", "bottom"];
    let app_ref = &app;
    let tokens_ref = &svc_tokens;
    let results: Vec<(String, String, Value)> = futures::stream::iter(0..200usize)
        .map(|i| async move {
            let (user, token) = &tokens_ref[i % tokens_ref.len()];
            let room = rooms[i % 2];
            let kind = if i % 50 == 7 { "gift" } else { "comment" };
            let body = json!({
                "text": format!("arch-{i} 好耶 🎉 \"q\" <b>"),
                "mode": modes[i % 3],
                "color": (i * 4099) % 16_777_216,
                "kind": kind,
            });
            let id = app_ref.send_ok(token, room, body.clone()).await;
            let mut expect = body;
            expect["room"] = json!(room);
            expect["user"] = json!(user);
            (id, room.to_string(), expect)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut expected: HashMap<u64, Value> = HashMap::new();
    for (id, _room, expect) in results {
        assert!(
            expected.insert(id.parse().unwrap(), expect).is_none(),
            "duplicate 202 id {id}"
        );
    }

    // Idempotency: the same key sent three times at once by one user gives one id
    // (and one row); the same key from another user is another comment.
    for k in 0..5 {
        let body = json!({
            "text": format!("idem-{k}"),
            "mode": "scroll",
            "color": 123,
            "kind": "comment",
            "idempotency_key": format!("key-{k}"),
        });
        let token = &svc_tokens[1].1;
        let (a, b, c) = tokio::join!(
            app.send_ok(token, "arch-b", body.clone()),
            app.send_ok(token, "arch-b", body.clone()),
            app.send_ok(token, "arch-b", body.clone()),
        );
        assert!(
            a == b && b == c,
            "same idempotency_key, same user: one id expected, got {a} {b} {c}"
        );
        let later = app.send_ok(token, "arch-b", body.clone()).await;
        assert_eq!(later, a, "same idempotency_key again later: same id");
        let mut expect = body.clone();
        expect["room"] = json!("arch-b");
        expect["user"] = json!(svc_tokens[1].0);
        assert!(expected.insert(a.parse().unwrap(), expect).is_none());

        let other_body = json!({
            "text": format!("idem-{k}-other-user"),
            "mode": "scroll",
            "color": 123,
            "kind": "comment",
            "idempotency_key": format!("key-{k}"),
        });
        let other = app
            .send_ok(&svc_tokens[2].1, "arch-b", other_body.clone())
            .await;
        assert_ne!(
            other, a,
            "the same key from another user is another comment"
        );
        let mut expect = other_body;
        expect["room"] = json!("arch-b");
        expect["user"] = json!(svc_tokens[2].0);
        assert!(expected.insert(other.parse().unwrap(), expect).is_none());
    }

    // Shut down with a WebSocket viewer and a long poll still open: neither may
    // keep the process from archiving and exiting.
    let viewer = app.ws("arch-b", None, None).await;
    let quiet_cursor = app.room_cursor("quiet-room").await;
    let long_poll = {
        let http = app.http.clone();
        let url = app.url(&format!(
            "/v1/rooms/quiet-room/danmaku?cursor={quiet_cursor}&wait_ms=20000"
        ));
        tokio::spawn(async move { http.get(url).send().await.map(|r| r.status().as_u16()) })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let stop_began = std::time::Instant::now();
    app.stop().await;
    eprintln!(
        "graceful stop with an open WebSocket and long poll took {:?}",
        stop_began.elapsed()
    );
    drop(viewer);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), long_poll).await;

    let files = parquet_files(&app.data_dir);
    assert!(
        !files.is_empty(),
        "no Parquet under {}/archive after SIGTERM; archive holds {:?}",
        app.data_dir.display(),
        archive_listing(&app.data_dir)
    );
    let problems = schema_problems(&files);
    assert!(problems.is_empty(), "Parquet schema: {problems:#?}");

    let rows = read_parquet(&app.data_dir);
    let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    assert_no_duplicates(&ids, "Parquet rows");
    let got: HashSet<u64> = rows.iter().map(|r| r.id).collect();
    let want: HashSet<u64> = expected.keys().copied().collect();
    let missing: Vec<&u64> = want.difference(&got).collect();
    let extra: Vec<&u64> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "Parquet ids differ from the 202 ids: {} missing (e.g. {:?}), {} extra (e.g. {:?}); files {:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
        archive_listing(&app.data_dir)
    );

    for row in &rows {
        let e = &expected[&row.id];
        assert_eq!(row.room, e["room"].as_str().unwrap(), "room of {row:?}");
        assert_eq!(row.user, e["user"].as_str().unwrap(), "user of {row:?}");
        assert_eq!(row.text, e["text"].as_str().unwrap(), "text of {row:?}");
        assert_eq!(row.kind, e["kind"].as_str().unwrap(), "kind of {row:?}");
        assert_eq!(row.mode, e["mode"].as_str().unwrap(), "mode of {row:?}");
        assert_eq!(
            row.color as u64,
            e["color"].as_u64().unwrap(),
            "color of {row:?}"
        );
        assert!(
            (row.ts - now_ms()).abs() < 120_000,
            "ts of {row:?} must be ms since epoch"
        );
        if row.room == "arch-a" {
            assert_eq!(
                row.vod.as_deref(),
                Some(vod.as_str()),
                "vod of {row:?} (session open in arch-a)"
            );
            assert_eq!(
                row.offset_ms,
                Some((row.ts - started_at).max(0)),
                "offset_ms of {row:?} (session started_at {started_at}, latency 0)"
            );
        } else {
            assert_eq!(row.vod, None, "no session in arch-b: {row:?}");
            assert_eq!(row.offset_ms, None, "no session in arch-b: {row:?}");
        }
    }

    let problems = path_problems(&app.data_dir, &rows);
    assert!(problems.is_empty(), "Parquet layout: {problems:#?}");
}

/// SIGTERM while comments are still being sent: whatever got a 202 before the
/// process went away is in Parquet exactly once; a 503 was not accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_sends_archives_every_acknowledged_comment() {
    let mut app = spawn_app(&[]).await;
    let room = "arch-racing";
    let mut tokens = Vec::new();
    for u in 0..4 {
        tokens.push(app.token(&format!("racer-{u}"), "service").await);
    }
    let url = app.url(&format!("/v1/rooms/{room}/danmaku"));
    let http = app.http.clone();
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let (tokens_ref, url_ref, http_ref, stopped_ref) = (&tokens, &url, &http, &stopped);

    // Outcome per text: Some(Ok(id)) acked, Some(Err(503)) refused, None no answer.
    let sends = futures::stream::iter(0..20_000usize)
        .map(|i| async move {
            if stopped_ref.load(std::sync::atomic::Ordering::SeqCst) {
                return (i, None, false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            let sent = http_ref
                .post(url_ref)
                .bearer_auth(&tokens_ref[i % tokens_ref.len()])
                .json(&json!({ "text": format!("race-{i}") }))
                .timeout(std::time::Duration::from_secs(10))
                .send()
                .await;
            let Ok(resp) = sent else {
                return (i, None, true);
            };
            let status = resp.status().as_u16();
            let Ok(body) = resp.text().await else {
                return (i, None, true);
            };
            let outcome = match status {
                202 => {
                    let v: Value = serde_json::from_str(&body).expect("202 body is JSON");
                    Ok(v["id"].as_str().expect("202 id").to_string())
                }
                503 => Err(body),
                other => panic!("send race-{i} around SIGTERM: unexpected {other} {body}"),
            };
            (i, Some(outcome), true)
        })
        .buffer_unordered(8)
        .collect::<Vec<(usize, Option<Result<String, String>>, bool)>>();
    let stop = async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        app.stop().await;
        stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (outcomes, ()) = tokio::join!(sends, stop);

    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut refused: HashSet<String> = HashSet::new();
    let mut unknown: HashSet<String> = HashSet::new();
    for (i, outcome, attempted) in outcomes {
        let text = format!("race-{i}");
        match outcome {
            Some(Ok(id)) => {
                assert!(
                    acked.insert(id.parse().unwrap(), text).is_none(),
                    "duplicate 202 id"
                );
            }
            Some(Err(_)) => {
                refused.insert(text);
            }
            None if attempted => {
                unknown.insert(text);
            }
            None => {}
        }
    }
    eprintln!(
        "around SIGTERM: {} acked, {} refused with 503, {} without an answer",
        acked.len(),
        refused.len(),
        unknown.len()
    );
    assert!(acked.len() > 50, "too few sends succeeded before SIGTERM");

    let rows = read_parquet(&app.data_dir);
    let ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    assert_no_duplicates(&ids, "Parquet rows");
    let got: HashSet<u64> = rows.iter().map(|r| r.id).collect();
    let missing: Vec<(&u64, &String)> = acked.iter().filter(|(id, _)| !got.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} comments acknowledged with 202 around SIGTERM are not in Parquet, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    for row in &rows {
        match acked.get(&row.id) {
            Some(text) => assert_eq!(&row.text, text, "{row:?}"),
            None => {
                assert!(
                    !refused.contains(&row.text),
                    "a comment refused with 503 was archived anyway: {row:?}"
                );
                assert!(
                    unknown.contains(&row.text),
                    "a row that was never sent: {row:?}"
                );
            }
        }
    }
}
