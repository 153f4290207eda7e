//! `[server]`, validated: the listening address, inbound TLS, the body size limit, what a
//! client may hold (body read time, connections, HTTP/2 streams) and the shutdown grace
//! period.

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
/// Default `[server] body_read_timeout_ms`: a 32 MiB body needs about 4 Mbit/s.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 60_000;
/// Default `[server] max_connections`: far above what a gateway's clients (SDK pools behind
/// a load balancer) open, well below what exhausts file descriptors raised for a server.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// Default `[server] max_h2_streams`: what common servers allow (nginx 128, Go 250).
pub const DEFAULT_MAX_H2_STREAMS: u64 = 128;
/// Default `[server] max_answer_bytes`: 256 MiB, room for a 2048-input embeddings answer
/// in JSON floats.
pub const DEFAULT_MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// Most `[server] threads`: beyond a machine's cores extra threads only add switching.
const MAX_THREADS: u64 = 1024;

/// `[server]`, resolved.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// Time a client has to send a whole request body.
    pub body_read_timeout: Duration,
    /// Client connections served at once.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_h2_streams: u32,
    /// Longest line (and held event) of an upstream stream.
    pub max_event_bytes: usize,
    /// Largest upstream answer read whole.
    pub max_answer_bytes: usize,
    /// Serving threads (`[server] threads`): each accepts connections and serves them, their
    /// requests and their upstream connections on itself. `None`: one runtime whose worker
    /// threads (one per CPU) share all connections and steal work from each other.
    pub threads: Option<usize>,
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
    let body_ms = positive(
        s.body_read_timeout_ms,
        DEFAULT_BODY_READ_TIMEOUT_MS,
        "server.body_read_timeout_ms",
        problems,
    );
    let max_connections = positive(
        s.max_connections,
        DEFAULT_MAX_CONNECTIONS,
        "server.max_connections",
        problems,
    );
    let max_h2_streams = positive(
        s.max_h2_streams,
        DEFAULT_MAX_H2_STREAMS,
        "server.max_h2_streams",
        problems,
    )
    .and_then(|n| match u32::try_from(n) {
        Ok(n) if n <= i32::MAX as u32 => Some(n),
        _ => {
            problems.push(Problem::new(
                "server.max_h2_streams",
                format!("{n} is more than HTTP/2 allows (2^31 - 1)"),
            ));
            None
        }
    });
    let max_event_bytes = positive(
        s.max_event_bytes,
        crate::base::sse::DEFAULT_MAX_EVENT_BYTES as u64,
        "server.max_event_bytes",
        problems,
    );
    let max_answer_bytes = positive(
        s.max_answer_bytes,
        DEFAULT_MAX_ANSWER_BYTES,
        "server.max_answer_bytes",
        problems,
    );
    let threads = match s.threads {
        None => Some(None),
        Some(0) => {
            problems.push(Problem::new("server.threads", "must be at least 1"));
            None
        }
        Some(n) if n > MAX_THREADS => {
            problems.push(Problem::new(
                "server.threads",
                format!("{n} is more than {MAX_THREADS}"),
            ));
            None
        }
        Some(n) => Some(Some(n as usize)),
    };
    Some(ServerSettings {
        listen: listen?,
        threads: threads?,
        tls,
        max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
        shutdown_grace: shutdown_grace?,
        body_read_timeout: Duration::from_millis(body_ms?),
        max_connections: usize::try_from(max_connections?).unwrap_or(usize::MAX),
        max_h2_streams: max_h2_streams?,
        max_event_bytes: usize::try_from(max_event_bytes?).unwrap_or(usize::MAX),
        max_answer_bytes: usize::try_from(max_answer_bytes?).unwrap_or(usize::MAX),
    })
}

/// `value` (or `default` when unset), which must be at least 1.
fn positive(
    value: Option<u64>,
    default: u64,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<u64> {
    match value.unwrap_or(default) {
        0 => {
            problems.push(Problem::new(key, "must be at least 1"));
            None
        }
        n => Some(n),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn validated(text: &str) -> (Option<ServerSettings>, Vec<Problem>) {
        let section: schema::ServerSection = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        (validate_server(&section, &mut problems), problems)
    }

    #[test]
    fn client_limits_have_defaults_and_refuse_zero() {
        let (s, problems) = validated("");
        let s = s.unwrap();
        assert!(problems.is_empty());
        assert_eq!(
            s.body_read_timeout,
            Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS)
        );
        assert_eq!(s.max_connections as u64, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(u64::from(s.max_h2_streams), DEFAULT_MAX_H2_STREAMS);
        let (s, problems) =
            validated("body_read_timeout_ms = 0\nmax_connections = 0\nmax_h2_streams = 4294967296");
        assert!(s.is_none());
        let keys: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.body_read_timeout_ms",
                "server.max_connections",
                "server.max_h2_streams"
            ]
        );
    }

    #[test]
    fn threads_is_opt_in_and_refuses_zero_and_absurd_counts() {
        assert_eq!(validated("").0.unwrap().threads, None);
        assert_eq!(validated("threads = 2").0.unwrap().threads, Some(2));
        for bad in ["threads = 0", "threads = 100000"] {
            let (s, problems) = validated(bad);
            assert!(s.is_none(), "{bad}");
            assert_eq!(problems[0].path, "server.threads", "{bad}");
        }
    }
}
