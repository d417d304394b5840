//! Hostile text: markup, quotes, backslashes, emoji, CJK and entities come back
//! verbatim (JSON-escaped, never HTML-escaped or altered) by polling and over
//! the WebSocket; control characters are rejected with `invalid_text`; the
//! character limit counts characters, not bytes; the mask policy masks.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

const HOSTILE: &[&str] = &[
    "<script>alert(1)</script>",
    "\"'\\",
    "🎉",
    "好耶",
    "&amp;",
    "a &lt;b&gt; & c",
    "</d><d p=\"1,1,25,0\">x</d>",
    "{\"type\":\"batch\",\"items\":[]}",
    "👨‍👩‍👧‍👦 family",
    "\u{3000}全角 スペース",
    "%00 %0A \\n \\u0000",
];

const CONTROL: &[&str] = &[
    "line\nbreak",
    "carriage\rreturn",
    "tab\tchar",
    "nul\u{0}",
    "bell\u{7}",
    "esc\u{1b}[2J",
    "unit\u{1f}sep",
    "del\u{7f}",
    "c1\u{80}",
    "nel\u{85}",
    "c1\u{9f}",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_returned_verbatim_and_control_chars_are_rejected() {
    let app = spawn_app(&[
        ("DANMAKU_FILTER__WORDS", r#"["badword"]"#),
        ("DANMAKU_FILTER__POLICY", "mask"),
    ])
    .await;
    let room = "hostile";
    let svc = app.token("hostile-svc", "service").await;
    let ws_user = app.token("hostile-ws", "viewer").await;

    let cursor0 = app.room_cursor(room).await;
    let mut viewer = app.ws(room, None, None).await;
    let mut sender = app.ws(room, None, Some(&ws_user)).await;

    let mut expected: Vec<(String, String)> = Vec::new(); // (id, text as it must come back)
    for text in HOSTILE {
        let id = app.send_text(&svc, room, text).await;
        expected.push((id, text.to_string()));
    }

    // The longest allowed text: 100 characters of 4 bytes each (400 bytes).
    let hundred_emoji = "🎉".repeat(100);
    let id = app.send_text(&svc, room, &hundred_emoji).await;
    expected.push((id, hundred_emoji));
    let resp = app
        .send(Some(&svc), room, json!({"text": "a".repeat(101)}))
        .await;
    resp.expect_error(400, "text_too_long", "101 characters");

    // Mask policy: each character of the word becomes '*'.
    let id = app.send_text(&svc, room, "a badword b").await;
    expected.push((id, "a ******* b".to_string()));

    // Over the WebSocket.
    let ws_text = "<img src=x onerror=alert('ws')> \"好耶\" 🎉 &amp;";
    let reply = sender
        .send_comment(json!({"n": 1}), json!({ "text": ws_text }))
        .await;
    assert_eq!(reply["type"], "ack", "WebSocket send: {reply}");
    assert_eq!(
        reply["ref"],
        json!({"n": 1}),
        "the ack echoes the ref: {reply}"
    );
    let ws_id = reply["id"]
        .as_str()
        .unwrap_or_else(|| panic!("ack id must be a string: {reply}"))
        .to_string();
    assert!(ws_id.parse::<u64>().is_ok(), "{reply}");
    expected.push((ws_id.clone(), ws_text.to_string()));

    // Control characters: rejected over HTTP and over the WebSocket.
    let mut violations = Vec::new();
    for text in CONTROL {
        let resp = app.send(Some(&svc), room, json!({ "text": text })).await;
        if let Some(problem) = resp.error_mismatch(400, "invalid_text") {
            violations.push(format!("HTTP send {text:?}: {problem}"));
        }
    }
    for (n, text) in ["ws\nnewline", "ws\u{0}nul", "ws\u{85}nel"]
        .iter()
        .enumerate()
    {
        let reply = sender
            .send_comment(json!(100 + n), json!({ "text": text }))
            .await;
        if reply["type"] != "error" || reply.pointer("/error/code") != Some(&json!("invalid_text"))
        {
            violations.push(format!(
                "WebSocket send {text:?}: want error invalid_text, got {reply}"
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "control characters must be rejected with 400 invalid_text:\n  - {}",
        violations.join("\n  - ")
    );

    let by_id: HashMap<&str, &str> = expected
        .iter()
        .map(|(id, t)| (id.as_str(), t.as_str()))
        .collect();
    let want_ids: Vec<String> = expected.iter().map(|(id, _)| id.clone()).collect();

    // WebSocket viewer.
    assert!(
        viewer
            .wait_items(expected.len(), Duration::from_secs(10))
            .await,
        "WebSocket viewer got {} of {} items",
        viewer.items.len(),
        expected.len()
    );
    viewer.settle(Duration::from_millis(300)).await;
    assert_eq!(
        viewer.item_ids(),
        want_ids,
        "WebSocket viewer: ids in send order, nothing else"
    );
    check_texts("WebSocket", &viewer.items, &by_id);

    // The sender's own socket sees its comment too.
    assert!(
        sender
            .wait_items(expected.len(), Duration::from_secs(10))
            .await,
        "sender socket got {} of {} items",
        sender.items.len(),
        expected.len()
    );
    check_texts("sender WebSocket", &sender.items, &by_id);
    let own = sender
        .items
        .iter()
        .find(|it| it["id"] == ws_id.as_str())
        .expect("own comment");
    assert_eq!(own["user"], "hostile-ws", "{own}");

    // Polling.
    let page = app.poll(room, Some(&cursor0), Some(1000), Some(0)).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(
        ids_of(items),
        want_ids,
        "polling: ids in send order, nothing else"
    );
    check_texts("polling", items, &by_id);

    viewer.close().await;
    sender.close().await;
}

fn check_texts(channel: &str, items: &[Value], by_id: &HashMap<&str, &str>) {
    for item in items {
        let id = item["id"].as_str().unwrap();
        let want = by_id[id];
        assert_eq!(
            item["text"].as_str(),
            Some(want),
            "{channel}: text must come back verbatim; item {item}"
        );
    }
}
