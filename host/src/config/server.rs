//! `[server]`, validated: the listening address, inbound TLS, the body size limit and the
//! shutdown grace period.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{Problem, positive_secs, schema};

/// Default `[server] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `[server] max_body_bytes`: 32 MiB, room for a few base64 images.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Default `[server] shutdown_grace_secs`.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: f64 = 30.0;

/// `[server]`, resolved.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
}

pub(super) fn validate_server(
    s: &schema::ServerSection,
    problems: &mut Vec<Problem>,
) -> Option<ServerSettings> {
    let listen_text = s.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = match listen_text.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(addr)) => Some(addr),
        Ok(None) | Err(_) => {
            problems.push(Problem::new(
                "server.listen",
                format!("\"{listen_text}\" is not a host:port address"),
            ));
            None
        }
    };
    let tls = match (&s.tls_cert, &s.tls_key) {
        (None, None) => None,
        (Some(_), None) => {
            problems.push(Problem::new(
                "server.tls_key",
                "tls_cert is set, so tls_key is required",
            ));
            None
        }
        (None, Some(_)) => {
            problems.push(Problem::new(
                "server.tls_cert",
                "tls_key is set, so tls_cert is required",
            ));
            None
        }
        (Some(cert), Some(key)) => server_tls(cert, key, problems),
    };
    let max_body_bytes = s.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        problems.push(Problem::new(
            "server.max_body_bytes",
            "must be greater than 0",
        ));
    }
    let grace = s.shutdown_grace_secs.unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
    let shutdown_grace = if grace == 0.0 {
        Some(Duration::ZERO)
    } else {
        positive_secs(grace, "server.shutdown_grace_secs", problems)
    };
    Some(ServerSettings {
        listen: listen?,
        tls,
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        shutdown_grace: shutdown_grace?,
    })
}

fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    problems: &mut Vec<Problem>,
) -> Option<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
    {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            problems.push(Problem::new(
                "server.tls_cert",
                format!("{}: no PEM certificate found", cert.display()),
            ));
            return None;
        }
        Err(e) => {
            problems.push(Problem::new(
                "server.tls_cert",
                format!("{}: {e}", cert.display()),
            ));
            return None;
        }
    };
    let key_der = match rustls::pki_types::PrivateKeyDer::from_pem_file(key) {
        Ok(k) => k,
        Err(e) => {
            problems.push(Problem::new(
                "server.tls_key",
                format!("{}: {e}", key.display()),
            ));
            return None;
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let built = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der));
    match built {
        Ok(mut cfg) => {
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Some(Arc::new(cfg))
        }
        Err(e) => {
            problems.push(Problem::new(
                "server.tls_key",
                format!("certificate and key do not form a usable TLS config: {e}"),
            ));
            None
        }
    }
}
