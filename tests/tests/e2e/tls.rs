//! TLS in both directions: inbound with `[server] tls_cert/tls_key`, upstream with a
//! backend `ca_file` for a private CA.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use switchyard_tests::Gateway;
use switchyard_tests::client::Client;
use switchyard_tests::mock::MockUpstream;

struct TestCert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn cert() -> TestCert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    TestCert {
        pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        der: ck.cert.der().clone(),
        key_der: ck.signing_key.serialize_der(),
    }
}

fn server_config(c: &TestCert) -> Arc<rustls::ServerConfig> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![c.der.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_der.clone())),
    )
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_tls_serves_https() {
    let mock = MockUpstream::start().await;
    let c = cert();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, &c.pem).unwrap();
    std::fs::write(&key_path, &c.key_pem).unwrap();
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"
tls_cert = "{}"
tls_key = "{}"
[[backends]]
name = "mock"
url = "{}"
[[routes]]
model = "*"
targets = [{{ backend = "mock" }}]
"#,
        cert_path.display(),
        key_path.display(),
        mock.url()
    );
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.scheme, "https");
    let r = Client::with_roots(std::slice::from_ref(&c.der))
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"m","messages":[]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_with_a_private_ca_file() {
    let c = cert();
    let mock = MockUpstream::start_with(Some(server_config(&c))).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &c.pem).unwrap();
    let url = format!("https://127.0.0.1:{}/v1", mock.addr.port());
    let cfg = format!(
        r#"[server]
listen = "127.0.0.1:0"
[[backends]]
name = "trusted"
url = "{url}"
ca_file = "{}"
[[backends]]
name = "untrusted"
url = "{url}"
[[routes]]
model = "good"
targets = [{{ backend = "trusted" }}]
[[routes]]
model = "bad"
targets = [{{ backend = "untrusted" }}]
"#,
        ca.display()
    );
    let gw = Gateway::start(&cfg);
    let client = Client::new();
    let r = client
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"good","messages":[]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // HTTP/2 was negotiated with the TLS upstream.
    assert_eq!(mock.last_request().unwrap().version, http::Version::HTTP_2);
    let r = client
        .post_json(
            &gw.url("/v1/chat/completions"),
            &json!({"model":"bad","messages":[]}),
            &[],
        )
        .await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().to_lowercase().contains("certificate"),
        "{}",
        r.text()
    );
}
