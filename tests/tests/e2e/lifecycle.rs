//! Starting, failing to start, and stopping.

use std::time::Duration;

use serde_json::json;
use switchyard_tests::client::Client;
use switchyard_tests::mock::{Behaviour, MockUpstream};
use switchyard_tests::{Gateway, config_with, run_switchyard};

const ROUTES: &str = r#"
[[routes]]
model = "*"
targets = [{ backend = "mock" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_streams_then_exits_cleanly() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        chunks: 10,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let mut gw = Gateway::start(&config_with(&mock.url(), ROUTES));
    let url = gw.url("/v1/chat/completions");
    let client = Client::new();
    let stream = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            client
                .post_stream(&url, &json!({"model":"m","stream":true,"messages":[]}), &[])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    gw.terminate();
    let r = stream.await.unwrap();
    // The stream that was running finished completely.
    assert_eq!(
        r.events().last().map(String::as_str),
        Some("[DONE]"),
        "{}",
        r.body()
    );
    assert_eq!(r.json_events().len(), 12);
    let status = gw
        .wait_exit(Duration::from_secs(5))
        .expect("gateway did not exit");
    assert!(status.success());
    assert!(gw.log().contains("draining"));
    // And it no longer accepts connections.
    assert!(std::net::TcpStream::connect(gw.addr).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        chunks: 100,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let cfg = config_with(&mock.url(), ROUTES).replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nshutdown_grace_secs = 0.5",
    );
    let mut gw = Gateway::start(&cfg);
    let url = gw.url("/v1/chat/completions");
    let stream = tokio::spawn(async move {
        Client::new()
            .post_stream(&url, &json!({"model":"m","stream":true,"messages":[]}), &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.terminate();
    let status = gw
        .wait_exit(Duration::from_secs(3))
        .expect("gateway ignored its grace bound");
    assert!(status.success());
    assert!(gw.log().contains("grace period elapsed"), "{}", gw.log());
    let _ = stream.await;
}

#[test]
fn port_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n[[backends]]\nname = \"x\"\nurl = \"http://127.0.0.1:1/v1\"\n[[routes]]\nmodel = \"*\"\ntargets = [{{ backend = \"x\" }}]\n"
    );
    std::fs::write(dir.path().join("switchyard.toml"), cfg).unwrap();
    let (code, _out, err) = run_switchyard(&["serve"], dir.path(), &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("already in use") && err.contains(&port.to_string()),
        "{err}"
    );
}

#[test]
fn no_config_runs_the_embedded_default_and_says_so_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut child =
        std::process::Command::new(switchyard_tests::binary("switchyard", "switchyard"))
            .arg("serve")
            .current_dir(dir.path())
            .env_remove("SWITCHYARD_CONFIG")
            .env_remove("OPENAI_API_KEY")
            .env("SWITCHYARD_LOG_FORMAT", "text")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("embedded default"), "{first}");
    assert!(first.contains("OPENAI_API_KEY is not set"), "{first}");
    assert!(first.contains("127.0.0.1:9001"), "{first}");
}

#[test]
fn switchyard_config_env_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, "[[routes]]\nmodel = \"x\"\n").unwrap();
    let (code, _out, err) = run_switchyard(
        &["check"],
        dir.path(),
        &[("SWITCHYARD_CONFIG", path.to_str().unwrap())],
    );
    assert_ne!(code, 0);
    assert!(err.contains("elsewhere.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cut_by_the_grace_period_get_an_error_event_and_a_ledger_row() {
    let mock = MockUpstream::start().await;
    mock.set_behaviour(Behaviour {
        chunks: 100,
        chunk_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let cfg = config_with(
        &mock.url(),
        &format!("{ROUTES}\n[state]\npath = \"{}\"\n", db.display()),
    )
    .replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nshutdown_grace_secs = 0.5",
    );
    let mut gw = Gateway::start(&cfg);
    let url = gw.url("/v1/chat/completions");
    let stream = tokio::spawn(async move {
        Client::new()
            .post_stream(&url, &json!({"model":"m","stream":true,"messages":[]}), &[])
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.terminate();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("gateway did not exit");
    assert!(status.success());
    let r = stream.await.unwrap();
    // The client learns why its stream ended, in OpenAI's shape...
    assert!(!r.broken, "the connection was cut: {}", r.body());
    let events = r.events();
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "shutting_down", "{}", r.body());
    // ...and the stream has its ledger row, written before the store closed.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT status, outcome FROM ledger")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, vec![(503, "shutdown".to_string())]);
}
