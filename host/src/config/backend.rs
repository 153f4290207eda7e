//! `[[backends]]`, validated: base URLs parsed once, the key header, timeouts, trust roots,
//! and the pool's and breaker's settings. Data only; `services::upstream` builds the live
//! side (clients, per-URL state) from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::api::{self, Api};
use super::schema::{self, BreakerSection, PoolSection};
use super::{Problem, positive_secs};
use crate::base::Endpoint;
use crate::base::protocols::Protocol;

pub(super) const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 5.0;
pub(super) const DEFAULT_FIRST_BYTE_TIMEOUT_SECS: f64 = 60.0;
pub(super) const DEFAULT_TIMEOUT_SECS: f64 = 600.0;

/// One upstream base URL with its endpoint URIs parsed in advance.
#[derive(Debug)]
pub struct BackendUrl {
    /// The base as configured, e.g. `http://10.0.0.5:9001/v1`.
    pub base: String,
    /// `host:port`, for logs.
    pub authority: String,
    /// The server as the attempt spans describe it.
    pub peer: Peer,
    uris: [Uri; 3],
    /// `/responses` and `/messages` under the base, for requests passed through.
    native_uris: [Uri; 2],
    pub models_uri: Uri,
}

impl BackendUrl {
    pub fn uri(&self, endpoint: Endpoint) -> &Uri {
        &self.uris[endpoint as usize]
    }

    /// Where a request in client protocol `p` goes when passed through (`None` for chat).
    pub fn native_uri(&self, p: Protocol) -> Option<&Uri> {
        match p {
            Protocol::Responses => Some(&self.native_uris[0]),
            Protocol::Messages => Some(&self.native_uris[1]),
            Protocol::OpenAi => None,
        }
    }
}

/// One `[[backends]]` entry, resolved. Data only: the live side of a backend (its
/// connection pool, breakers, in-flight counts, health) is `services::upstream::Upstream`,
/// built from this for each config version at the same `index`.
pub struct Backend {
    /// Position in `Runtime::backends`.
    pub index: usize,
    pub name: Arc<str>,
    pub urls: Vec<BackendUrl>,
    /// `Authorization: Bearer <key>` from `api_key_env`, marked sensitive.
    pub auth: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub timeout: Duration,
    /// Extra CA certificates trusted for this backend (`ca_file`), and the file they came from.
    pub tls: BackendTls,
    pub pool: PoolSettings,
    pub breaker: BreakerSettings,
    /// Which client request headers travel upstream (`forward_headers`).
    pub forward_headers: ForwardHeaders,
    /// `gpu_hour_usd`: USD per hour per worker; tokens are priced by measured throughput.
    pub gpu_hour_usd: Option<f64>,
    /// `api`: the request API it speaks natively.
    pub api: Api,
    /// For `api = "anthropic"`: the key as `x-api-key` (Anthropic's header), sensitive.
    pub x_api_key: Option<HeaderValue>,
}

/// Default `forward_headers`: what SDKs send that an upstream may use (content negotiation,
/// beta features, idempotency, trace context, the SDK's own telemetry), and nothing that
/// names the caller's account or network (`OpenAI-Organization`, `OpenAI-Project`,
/// `X-Forwarded-For`, cookies) next to the backend's key.
pub const DEFAULT_FORWARD_HEADERS: &[&str] = &[
    "accept",
    "user-agent",
    "openai-beta",
    "idempotency-key",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-stainless-*",
];

/// Request headers that never travel upstream, listed or not: hop-by-hop and framing
/// headers (hyper sets framing for the upstream connection itself), the client's
/// credentials (the backend's key replaces them), and `accept-encoding` (the gateway reads
/// usage from the answer, so it asks for it uncompressed).
pub fn never_forwarded(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "authorization"
            | "api-key"
            | "x-api-key"
            | "proxy-authorization"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "content-type"
            | "accept-encoding"
            | "expect"
            | "cookie"
    ) || name.starts_with("x-switchyard-")
}

/// A backend's request-header allowlist: exact names and `prefix-*` prefixes, lower case.
#[derive(Debug, Clone, Default)]
pub struct ForwardHeaders {
    names: Vec<HeaderName>,
    prefixes: Vec<Box<str>>,
}

impl ForwardHeaders {
    /// Whether the client's header `name` is on the list (the never-forwarded floor is
    /// the caller's to apply).
    pub fn allows(&self, name: &HeaderName) -> bool {
        self.names.iter().any(|n| n == name)
            || self
                .prefixes
                .iter()
                .any(|p| name.as_str().starts_with(&**p))
    }

    /// Parse the list, each problem with its key path.
    fn parse(list: &[impl AsRef<str>], path: &str, problems: &mut Vec<Problem>) -> Self {
        let mut out = ForwardHeaders::default();
        for (i, raw) in list.iter().enumerate() {
            let raw = raw.as_ref();
            let at = format!("{path}.forward_headers[{i}]");
            let lower = raw.trim().to_ascii_lowercase();
            let (stem, prefix) = match lower.strip_suffix('*') {
                Some(stem) => (stem.to_string(), true),
                None => (lower.clone(), false),
            };
            if stem.is_empty() || HeaderName::from_bytes(stem.as_bytes()).is_err() {
                problems.push(Problem::new(
                    at,
                    format!("\"{raw}\" is not a header name (or a prefix ending in *)"),
                ));
                continue;
            }
            if !prefix && never_forwarded(&stem) {
                problems.push(Problem::new(
                    at,
                    format!(
                        "\"{raw}\" is never forwarded upstream (hop-by-hop, framing, credentials or the gateway's own)"
                    ),
                ));
                continue;
            }
            match (prefix, HeaderName::from_bytes(stem.as_bytes())) {
                (true, _) => out.prefixes.push(stem.into_boxed_str()),
                (false, Ok(n)) => out.names.push(n),
                (false, Err(_)) => {}
            }
        }
        out
    }
}

/// A backend's extra trust roots: `ca_file`, read and checked at validation.
#[derive(Debug, Clone, Default)]
pub struct BackendTls {
    pub ca_file: Option<PathBuf>,
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Backend {
    // Hand-written so the API key can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("name", &self.name)
            .field(
                "urls",
                &self.urls.iter().map(|u| &u.base).collect::<Vec<_>>(),
            )
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A backend's pool settings (`pool = { ... }`), validated: how many requests a URL may
/// hold, how long a request may queue for one, how URLs are checked and ejected.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most requests one URL may hold at once; `None` is no limit.
    pub max_in_flight: Option<usize>,
    /// Requests that may wait for a free slot on a URL.
    pub queue: usize,
    pub queue_timeout: Duration,
    /// The URI checked on each URL (parallel to `Backend::urls`), or none when active
    /// checks are off.
    pub health: Option<Vec<Uri>>,
    pub health_interval: Duration,
    /// Consecutive failures that eject a URL.
    pub eject_after: u32,
    pub eject_for: Duration,
}

impl PoolSettings {
    /// Validate a backend's `pool` table (`path` is the backend's key path).
    fn from_section(
        pool: Option<&PoolSection>,
        urls: &[BackendUrl],
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> PoolSettings {
        let p = pool.cloned().unwrap_or_default();
        let pp = format!("{path}.pool");
        let mut secs = |key: &str, v: Option<f64>, default: f64| -> Duration {
            let v = v.unwrap_or(default);
            if v.is_finite() && v > 0.0 && v < 1e7 {
                Duration::from_secs_f64(v)
            } else {
                problems.push(Problem::new(
                    format!("{pp}.{key}"),
                    format!("must be a positive number of seconds, got {v}"),
                ));
                Duration::from_secs_f64(default)
            }
        };
        let queue_timeout = secs("queue_timeout_secs", p.queue_timeout_secs, 5.0);
        let health_interval = secs("health_interval_secs", p.health_interval_secs, 5.0);
        let eject_for = secs("eject_secs", p.eject_secs, 10.0);
        if p.max_in_flight == Some(0) {
            problems.push(Problem::new(
                format!("{pp}.max_in_flight"),
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        let checks = p.health_checks.unwrap_or(urls.len() > 1);
        let health = if checks {
            let mut uris = Vec::new();
            for u in urls {
                match &p.health_path {
                    None => uris.push(u.models_uri.clone()),
                    Some(hp) if hp.starts_with('/') => {
                        let scheme = if u.base.starts_with("https://") {
                            "https"
                        } else {
                            "http"
                        };
                        match format!("{scheme}://{}{hp}", u.authority).parse::<Uri>() {
                            Ok(uri) => uris.push(uri),
                            Err(e) => {
                                problems.push(Problem::new(
                                    format!("{pp}.health_path"),
                                    format!("\"{hp}\" is not a valid path: {e}"),
                                ));
                                break;
                            }
                        }
                    }
                    Some(hp) => {
                        problems.push(Problem::new(
                            format!("{pp}.health_path"),
                            format!("must start with '/', got \"{hp}\""),
                        ));
                        break;
                    }
                }
            }
            Some(uris)
        } else {
            None
        };
        PoolSettings {
            max_in_flight: p.max_in_flight,
            queue: p.queue.unwrap_or(64),
            queue_timeout,
            health,
            health_interval,
            eject_after: p.eject_after.unwrap_or(5).max(1),
            eject_for,
        }
    }
}

/// Breaker settings, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    pub enabled: bool,
    pub error_rate: f64,
    pub window: Duration,
    pub min_requests: u64,
    pub cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            enabled: true,
            error_rate: 0.02,
            window: Duration::from_secs(300),
            min_requests: 20,
            cooldown: Duration::from_secs(30),
        }
    }
}

impl BreakerSettings {
    /// Validate `path` (e.g. `backends[0].breaker`), recording every problem.
    pub fn from_section(
        s: Option<&BreakerSection>,
        path: &str,
        problems: &mut Vec<Problem>,
    ) -> BreakerSettings {
        let d = BreakerSettings::default();
        let Some(s) = s else { return d };
        let mut out = d;
        out.enabled = s.enabled.unwrap_or(true);
        if let Some(r) = s.error_rate {
            if r > 0.0 && r <= 1.0 {
                out.error_rate = r;
            } else {
                problems.push(Problem::new(
                    format!("{path}.error_rate"),
                    format!("must be above 0.0 and at most 1.0, got {r}"),
                ));
            }
        }
        for (key, v, slot) in [
            ("window_secs", s.window_secs, &mut out.window),
            ("cooldown_secs", s.cooldown_secs, &mut out.cooldown),
        ] {
            if let Some(v) = v {
                if v.is_finite() && v > 0.0 && v < 1e7 {
                    *slot = Duration::from_secs_f64(v);
                } else {
                    problems.push(Problem::new(
                        format!("{path}.{key}"),
                        format!("must be a positive number of seconds, got {v}"),
                    ));
                }
            }
        }
        if let Some(m) = s.min_requests {
            out.min_requests = m.max(1);
        }
        out
    }
}

/// What an attempt's span says about the server behind a backend URL: `server.address`,
/// `server.port`, and the well-known `gen_ai.provider.name` of a hosted API. Worked out
/// once, when the config is loaded, instead of parsing the URL on every request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub address: Arc<str>,
    pub port: Option<u16>,
    /// `None`: not a known hosted API; the span names the backend instead.
    pub provider: Option<&'static str>,
}

impl Peer {
    /// The peer of a backend base URL (`http://host:port/v1`).
    pub fn of(url: &str) -> Peer {
        let (host, port) = host_port(url);
        Peer {
            address: Arc::from(host),
            port,
            provider: known_provider(host),
        }
    }
}

/// Host and port of a backend base URL (`http://host:port/v1`).
fn host_port(url: &str) -> (&str, Option<u16>) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority
        .rsplit_once('@')
        .map(|(_, a)| a)
        .unwrap_or(authority);
    if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').unwrap_or((v6, ""));
        return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (authority, None),
    }
}

/// `gen_ai.provider.name` of a known hosted API (a self-hosted OpenAI-compatible server has
/// no registered provider name; its spans carry the backend's name instead).
fn known_provider(host: &str) -> Option<&'static str> {
    let known = [
        ("api.openai.com", "openai"),
        (".openai.azure.com", "azure.ai.openai"),
        ("api.anthropic.com", "anthropic"),
        ("api.mistral.ai", "mistral_ai"),
        ("api.groq.com", "groq"),
        ("api.deepseek.com", "deepseek"),
        ("api.x.ai", "x_ai"),
        ("generativelanguage.googleapis.com", "gcp.gemini"),
    ];
    for (suffix, name) in known {
        if host == suffix.trim_start_matches('.') || host.ends_with(suffix) {
            return Some(name);
        }
    }
    None
}

pub(super) fn validate_backend(
    b: &schema::BackendSection,
    index: usize,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<Backend> {
    let before = problems.len();
    let name = match b.name.as_deref() {
        Some(n) if !n.trim().is_empty() => n.to_string(),
        Some(_) => {
            problems.push(Problem::new(format!("{path}.name"), "must not be empty"));
            String::new()
        }
        None => {
            problems.push(Problem::new(format!("{path}.name"), "is required"));
            String::new()
        }
    };
    let raw_urls: Vec<(String, String)> = match (&b.url, &b.urls) {
        (Some(u), None) => vec![(format!("{path}.url"), u.clone())],
        (None, Some(us)) if !us.is_empty() => us
            .iter()
            .enumerate()
            .map(|(j, u)| (format!("{path}.urls[{j}]"), u.clone()))
            .collect(),
        (None, Some(_)) => {
            problems.push(Problem::new(
                format!("{path}.urls"),
                "must list at least one URL",
            ));
            vec![]
        }
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                format!("{path}.url"),
                "set either url or urls, not both",
            ));
            vec![]
        }
        (None, None) => {
            problems.push(Problem::new(
                format!("{path}.url"),
                "is required (or urls = [...] for several)",
            ));
            vec![]
        }
    };
    let mut urls = Vec::new();
    for (p, u) in &raw_urls {
        match backend_url(u) {
            Ok(bu) => urls.push(bu),
            Err(msg) => problems.push(Problem::new(p.clone(), msg)),
        }
    }
    let auth = b.api_key_env.as_deref().and_then(|var| {
        let p = format!("{path}.api_key_env");
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => {
                match HeaderValue::from_str(&format!("Bearer {}", v.trim())) {
                    Ok(mut h) => {
                        h.set_sensitive(true);
                        Some(h)
                    }
                    Err(_) => {
                        problems.push(Problem::new(
                            p,
                            format!("environment variable {var} holds characters not allowed in an HTTP header"),
                        ));
                        None
                    }
                }
            }
            _ => {
                problems.push(Problem::new(
                    p,
                    format!("environment variable {var} is not set"),
                ));
                None
            }
        }
    });
    let connect = positive_secs(
        b.connect_timeout_secs
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
        &format!("{path}.connect_timeout_secs"),
        problems,
    );
    let first_byte = positive_secs(
        b.first_byte_timeout_secs
            .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT_SECS),
        &format!("{path}.first_byte_timeout_secs"),
        problems,
    );
    let timeout = positive_secs(
        b.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS),
        &format!("{path}.timeout_secs"),
        problems,
    );
    let extra_roots = match &b.ca_file {
        None => Vec::new(),
        Some(f) => match CertificateDer::pem_file_iter(f)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                problems.push(Problem::new(
                    format!("{path}.ca_file"),
                    format!("{}: no PEM certificate found", f.display()),
                ));
                Vec::new()
            }
            Err(e) => {
                problems.push(Problem::new(
                    format!("{path}.ca_file"),
                    format!("{}: {e}", f.display()),
                ));
                Vec::new()
            }
        },
    };
    let breaker =
        BreakerSettings::from_section(b.breaker.as_ref(), &format!("{path}.breaker"), problems);
    let pool = PoolSettings::from_section(b.pool.as_ref(), &urls, path, problems);
    let forward_headers = match &b.forward_headers {
        Some(list) => ForwardHeaders::parse(list, path, problems),
        None => ForwardHeaders::parse(DEFAULT_FORWARD_HEADERS, path, problems),
    };
    // Each extra root must be one a TLS client can trust; found here, `check` reports it.
    let mut store = rustls::RootCertStore::empty();
    for cert in &extra_roots {
        if let Err(e) = store.add(cert.clone()) {
            problems.push(Problem::new(
                format!("{path}.ca_file"),
                format!("certificate is not a usable CA: {e}"),
            ));
        }
    }
    let gpu_hour_usd = match b.gpu_hour_usd {
        Some(v) if !(v.is_finite() && v >= 0.0) => {
            problems.push(Problem::new(
                format!("{path}.gpu_hour_usd"),
                format!("must be a non-negative number of USD per hour, got {v}"),
            ));
            None
        }
        v => v,
    };
    let api = api::resolve(b.api.as_deref(), &urls, path, problems);
    if problems.len() > before {
        return None;
    }
    Some(Backend {
        gpu_hour_usd,
        api,
        x_api_key: api::x_api_key(api, auth.as_ref()),
        index,
        name: Arc::from(name),
        urls,
        auth,
        connect_timeout: connect?,
        first_byte_timeout: first_byte?,
        timeout: timeout?,
        tls: BackendTls {
            ca_file: b.ca_file.clone(),
            extra_roots,
        },
        pool,
        breaker,
        forward_headers,
    })
}

pub(super) fn backend_url(raw: &str) -> Result<BackendUrl, String> {
    let base = raw.trim_end_matches('/').to_string();
    let uri: Uri = base
        .parse()
        .map_err(|e| format!("\"{raw}\" is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("\"{raw}\" must start with http:// or https://")),
    }
    let authority = uri
        .authority()
        .map(|a| a.to_string())
        .ok_or_else(|| format!("\"{raw}\" has no host"))?;
    if uri.query().is_some() {
        return Err(format!("\"{raw}\" must not have a query string"));
    }
    let mk = |suffix: &str| -> Result<Uri, String> {
        format!("{base}{suffix}")
            .parse()
            .map_err(|e| format!("\"{raw}{suffix}\" is not a valid URL: {e}"))
    };
    Ok(BackendUrl {
        uris: [
            mk(Endpoint::ChatCompletions.suffix())?,
            mk(Endpoint::Completions.suffix())?,
            mk(Endpoint::Embeddings.suffix())?,
        ],
        native_uris: [mk("/responses")?, mk("/messages")?],
        models_uri: mk("/models")?,
        authority,
        peer: Peer::of(&base),
        base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_backend_urls() {
        assert_eq!(
            host_port("http://127.0.0.1:9001/v1"),
            ("127.0.0.1", Some(9001))
        );
        assert_eq!(
            host_port("https://api.openai.com/v1"),
            ("api.openai.com", None)
        );
        assert_eq!(host_port("http://[::1]:8080/v1"), ("::1", Some(8080)));
    }

    #[test]
    fn provider_names() {
        assert_eq!(known_provider("api.openai.com"), Some("openai"));
        assert_eq!(
            known_provider("myres.openai.azure.com"),
            Some("azure.ai.openai")
        );
        assert_eq!(known_provider("10.0.0.7"), None);
        let p = Peer::of("https://api.mistral.ai/v1");
        assert_eq!(
            (&*p.address, p.port, p.provider),
            ("api.mistral.ai", None, Some("mistral_ai"))
        );
    }
}
