//! What one client may hold: the time to send a body (HTTP/1.1 and HTTP/2), connections
//! open at once, and HTTP/2 streams per connection.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;
use switchyard_tests::{Gateway, config_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = r#"
[[routes]]
model = "*"
targets = [{ backend = "mock" }]
"#;

/// A gateway whose `[server]` table also holds `server_extra`.
fn gateway(mock: &MockUpstream, server_extra: &str) -> Gateway {
    let cfg = config_with(&mock.url(), ROUTES).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:0\"\n{server_extra}"),
    );
    Gateway::start(&cfg)
}

/// Read until the gateway closes the connection (a hang guard fails the test instead of
/// blocking it forever); what was read.
async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the gateway kept the connection open: {}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// The OpenAI error body at the end of a raw HTTP/1.1 answer.
fn error_code(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str::<Value>(body).unwrap_or_else(|e| panic!("{e}: {answer}"))["error"]["code"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_that_never_ends_is_answered_408_and_the_connection_closed() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "body_read_timeout_ms = 300");
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    conn.write_all(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n7\r\n{\"model\r\n",
    )
    .await
    .unwrap();
    let answer = read_to_close(&mut conn).await;
    eprintln!(
        "chunked body never ending: closed after {:?}",
        started.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(error_code(&answer), "request_timeout");
    assert_eq!(mock.completions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_sent_a_byte_at_a_time_is_cut_off_at_the_body_deadline() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "body_read_timeout_ms = 500");
    let conn = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let body =
        br#"{"model":"m","messages":[{"role":"user","content":"a slow body of some length"}]}"#;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        wr.write_all(head.as_bytes()).await.unwrap();
        // 10 bytes/s: the whole body would take about 8 s.
        for b in body {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the gateway kept a trickling body's connection open"),
        }
    }
    eprintln!("byte-at-a-time body: closed after {:?}", started.elapsed());
    writer.abort();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(error_code(&answer), "request_timeout");
}

/// A request body that never sends anything and never ends.
struct Silent;

impl Body for Silent {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Pending
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_without_a_body_are_answered_408() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "body_read_timeout_ms = 300");
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut send = send.clone();
        streams.push(tokio::spawn(async move {
            let req = Request::post("http://gw/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Silent)
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for s in streams {
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), s)
            .await
            .expect("an HTTP/2 stream without a body was held open")
            .unwrap();
        assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout");
    }
    eprintln!(
        "20 HTTP/2 streams without a body: all answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_advertises_its_http2_stream_cap() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "max_h2_streams = 3");
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    // One whole exchange first (the connection driven here, beside it): the server's
    // SETTINGS precede its first answer.
    let exchange = async move {
        let mut client = client.ready().await.unwrap();
        let req = Request::get("http://gw/healthz").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        resp.await.unwrap().status()
    };
    tokio::pin!(exchange);
    let status = tokio::select! {
        s = &mut exchange => s,
        c = &mut conn => panic!("the connection ended first: {c:?}"),
    };
    assert_eq!(status, 200);
    assert_eq!(conn.max_concurrent_send_streams(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_on_accept() {
    let mock = MockUpstream::start().await;
    let gw = gateway(&mock, "max_connections = 2");
    // Two idle connections hold both places (each proven served by one request).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(gw.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await;
    let answer = read_to_close(&mut third).await;
    assert!(answer.is_empty(), "a third connection was served: {answer}");
    // A place freed is a place taken again.
    drop(held.pop());
    let c = Client::new();
    let mut served = false;
    for _ in 0..200 {
        let mut conn = TcpStream::connect(gw.addr).await.unwrap();
        let _ = conn
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
            .await;
        let answer = read_to_close(&mut conn).await;
        if answer.starts_with("HTTP/1.1 200") {
            assert!(
                answer.contains("switchyard_connections_refused_total "),
                "{answer}"
            );
            assert!(!answer.contains("switchyard_connections_refused_total 0\n"));
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "the freed place was never given to a new connection"
    );
    drop(c);
}
