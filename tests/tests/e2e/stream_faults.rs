//! Broken upstream streams: truncated, garbage, oversized. Each ends the client's stream with
//! an OpenAI-style error event and a ledger row that is not `ok`; where nothing reached the
//! client yet, a fallback answers instead.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_tests::Gateway;
use switchyard_tests::client::{Client, StreamResp};
use switchyard_tests::mock::{Behaviour, MockUpstream};

fn stream_req() -> Value {
    json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

/// One backend `mock` (and a `fallback` when given), a ledger in `db`.
fn config(primary: &str, fallback: Option<&str>, db: &Path, server_extra: &str) -> String {
    let fb = fallback.map_or(String::new(), |u| {
        format!("[[backends]]\nname = \"fallback\"\nurl = \"{u}\"\n")
    });
    let route_fb = if fallback.is_some() {
        "fallback = [{ backend = \"fallback\" }]"
    } else {
        ""
    };
    format!(
        r#"[server]
listen = "127.0.0.1:0"
{server_extra}

[state]
path = "{db}"

[[backends]]
name = "mock"
url = "{primary}"
first_byte_timeout_secs = 5
timeout_secs = 10
breaker = {{ enabled = false }}

{fb}

[[routes]]
model = "*"
targets = [{{ backend = "mock" }}]
{route_fb}
"#,
        db = db.display()
    )
}

/// (status, outcome) of every ledger row, in order.
pub fn ledger_rows(db: &Path) -> Vec<(i64, String)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT status, outcome FROM ledger ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Stop the gateway cleanly so everything queued for the store is written.
pub fn stop(mut gw: Gateway) {
    gw.terminate();
    assert!(
        gw.wait_exit(Duration::from_secs(20)).is_some(),
        "gateway did not exit"
    );
}

/// The stream's last event, parsed: where the gateway puts its error.
fn last_event(r: &StreamResp) -> Value {
    let events = r.events();
    let last = events
        .last()
        .unwrap_or_else(|| panic!("no events: {}", r.body()));
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last event not JSON ({e}): {last}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_without_done_ends_with_an_error_event_and_a_failed_row() {
    let mock = MockUpstream::start().await;
    // The role chunk and two content chunks, then a clean close: no finish, no [DONE].
    mock.set_behaviour(Behaviour {
        end_after: Some(3),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let gw = Gateway::start(&config(&mock.url(), None, &db, ""));
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &stream_req(), &[])
        .await;
    assert_eq!(r.status, 200);
    let last = last_event(&r);
    assert_eq!(
        last["error"]["code"],
        "upstream_connection_broken",
        "{}",
        r.body()
    );
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("[DONE]"),
        "{last}"
    );
    assert!(!r.events().iter().any(|e| e == "[DONE]"), "{}", r.body());
    stop(gw);
    assert_eq!(ledger_rows(&db), vec![(502, "stream_failed".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_in_the_middle_of_a_stream_is_not_relayed_and_ends_it_with_an_error() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        junk_after: Some(2),
        chunk_delay: Duration::from_millis(10),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let gw = Gateway::start(&config(&mock.url(), None, &db, ""));
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &stream_req(), &[])
        .await;
    assert_eq!(r.status, 200);
    // The junk line itself never reaches the client (the error message quotes it).
    assert!(
        !r.body().lines().any(|l| l.starts_with("<html>")),
        "{}",
        r.body()
    );
    assert_eq!(
        last_event(&r)["error"]["code"],
        "upstream_invalid_response",
        "{}",
        r.body()
    );
    stop(gw);
    assert_eq!(ledger_rows(&db), vec![(502, "stream_failed".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_to_a_stream_is_a_failed_attempt_and_the_fallback_serves() {
    let primary = MockUpstream::start().await;
    let fallback = MockUpstream::start().await;
    primary.set_behaviour(Behaviour {
        garbage: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let gw = Gateway::start(&config(&primary.url(), Some(&fallback.url()), &db, ""));
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &stream_req(), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-switchyard-backend"), Some("fallback"));
    let attempts = r.header("x-switchyard-attempts").unwrap_or_default();
    assert!(
        attempts.starts_with(&format!("mock@{} invalid_answer", primary.addr)),
        "{attempts}"
    );
    assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    assert!(!r.body().contains("not json"), "{}", r.body());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_never_ends_is_cut_at_the_cap_and_the_upstream_dropped() {
    let mock = MockUpstream::start().await;
    // 32 MiB in one line without a newline; the gateway keeps at most 1 MiB of it.
    mock.set_behaviour(Behaviour {
        huge_line_mb: Some(32),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let gw = Gateway::start(&config(&mock.url(), None, &db, "max_event_bytes = 1048576"));
    let r = Client::new()
        .post_stream(&gw.url("/v1/chat/completions"), &stream_req(), &[])
        .await;
    assert_eq!(r.status, 200);
    let body = r.body();
    assert!(
        body.len() < 4 << 20,
        "{} bytes relayed: the line was not cut",
        body.len()
    );
    let last = last_event(&r);
    assert_eq!(last["error"]["code"], "upstream_invalid_response", "{last}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_event_bytes"),
        "{last}"
    );
    // The gateway stopped reading: the mock's sender saw its reader go.
    let mut waited = 0;
    while mock.disconnects() == 0 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    assert_eq!(mock.disconnects(), 1);
    stop(gw);
    assert_eq!(ledger_rows(&db), vec![(502, "stream_failed".to_string())]);
}
