//! Validation: from the parsed file to the [`Runtime`] the request path reads.
//!
//! Every check records a [`Problem`] with its key path and carries on, so one run of
//! `switchyard check` lists every mistake. What is derived here (resolved addresses, parsed
//! upstream URIs, API-key headers, TLS configs, upstream clients) is computed once per config
//! version, never per request.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Uri};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::schema::{self, ConfigFile};
use super::{ConfigSource, Problem};
use crate::upstream::{self, HttpClient};

/// Default `[server] listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default `[server] max_body_bytes`: 32 MiB, room for a few base64 images.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Default `[server] shutdown_grace_secs`.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: f64 = 30.0;
const DEFAULT_CONNECT_TIMEOUT_SECS: f64 = 5.0;
const DEFAULT_FIRST_BYTE_TIMEOUT_SECS: f64 = 60.0;
const DEFAULT_TIMEOUT_SECS: f64 = 600.0;

/// A validated configuration, ready for the request path.
#[derive(Debug)]
pub struct Runtime {
    pub source: ConfigSource,
    pub server: ServerSettings,
    pub backends: Vec<Arc<Backend>>,
    /// Routes in file order (the catch-all, if any, included).
    pub routes: Vec<Arc<Route>>,
    route_index: HashMap<String, usize>,
    catch_all: Option<usize>,
    pub plugins_dir: Option<PathBuf>,
    /// `[plugins]`, checked; `None` when the file has no `[plugins] dir`.
    pub plugins: Option<Arc<crate::plugins::Settings>>,
    pub telemetry: Option<TelemetrySettings>,
    pub state: Option<StateSettings>,
    /// `[admin]`: the admin API's token, when enabled.
    pub admin: Option<crate::admin::AdminSettings>,
    /// `[traffic]`: retry budget and backoff.
    pub traffic: crate::attempt::TrafficSettings,
    /// `[local_worker]`: started once at `serve` (a reload does not restart it).
    pub local_worker: Option<crate::local_worker::LocalWorkerSettings>,
    pub governance: crate::governance::config::GovConfig,
}

impl Runtime {
    /// The route serving a client's `model`: its own route, else the catch-all.
    pub fn route_for(&self, model: &str) -> Option<&Arc<Route>> {
        self.route_index
            .get(model)
            .or(self.catch_all.as_ref())
            .map(|&i| &self.routes[i])
    }

    /// Route names clients can ask for (the catch-all `*` is not a model name).
    pub fn model_names(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| &*r.name).filter(|n| *n != "*")
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.name == name)
    }
}

/// `[server]`, resolved.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
}

/// `[telemetry]`, checked; used by the telemetry module.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: String,
    pub sample_ratio: f64,
    pub capture_content: bool,
    pub log_format: crate::telemetry::LogFormat,
}

/// `[state]`, checked; used by the store.
#[derive(Debug, Clone)]
pub struct StateSettings {
    pub path: PathBuf,
    pub redis: Option<String>,
}

/// Which OpenAI endpoint a request is for; also indexes a backend URL's upstream URIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub const ALL: [Endpoint; 3] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
    ];

    /// The path below the API base (`/v1`).
    pub fn suffix(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    /// The GenAI operation name (`chat`, `text_completion`, `embeddings`).
    pub fn operation(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// One upstream base URL with its endpoint URIs parsed in advance.
#[derive(Debug)]
pub struct BackendUrl {
    /// The base as configured, e.g. `http://10.0.0.5:9001/v1`.
    pub base: String,
    /// `host:port`, for logs.
    pub authority: String,
    /// The server as the attempt spans describe it.
    pub peer: crate::telemetry::Peer,
    uris: [Uri; 3],
    pub models_uri: Uri,
}

impl BackendUrl {
    pub fn uri(&self, endpoint: Endpoint) -> &Uri {
        &self.uris[endpoint as usize]
    }
}

/// One `[[backends]]` entry, resolved.
pub struct Backend {
    pub name: Arc<str>,
    pub urls: Vec<BackendUrl>,
    /// `Authorization: Bearer <key>` from `api_key_env`, marked sensitive.
    pub auth: Option<HeaderValue>,
    pub first_byte_timeout: Duration,
    pub timeout: Duration,
    pub client: HttpClient,
    /// Per-URL live state (breakers, in-flight, health) and the pool's settings.
    pub pool: crate::pool::Pool,
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

/// A target of a route: a backend and the model name sent to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub backend: Arc<Backend>,
    /// `None` sends the client's own model name.
    pub model: Option<Arc<str>>,
    pub weight: u32,
}

/// A shadow (mirror) target.
#[derive(Debug, Clone)]
pub struct Shadow {
    pub target: Target,
    pub sample: f64,
}

/// One `[[routes]]` entry, resolved.
#[derive(Debug)]
pub struct Route {
    /// The model name clients send (`*` for the catch-all).
    pub name: Arc<str>,
    pub targets: Vec<Target>,
    pub total_weight: u32,
    pub fallback: Vec<Target>,
    pub shadow: Option<Shadow>,
    /// Overrides, pinning and retries.
    pub flags: crate::flags::RouteFlags,
}

/// Check everything; on success the runtime, else every problem found.
pub fn validate(file: ConfigFile, source: ConfigSource) -> Result<Runtime, Vec<Problem>> {
    let mut problems = Vec::new();
    let server = validate_server(&file.server, &mut problems);

    let mut backends: Vec<Arc<Backend>> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (i, b) in file.backends.iter().enumerate() {
        let path = format!("backends[{i}]");
        if let Some(name) = b.name.as_deref()
            && !seen.insert(name)
        {
            problems.push(Problem::new(
                format!("{path}.name"),
                format!("duplicate backend name \"{name}\""),
            ));
            continue;
        }
        if let Some(backend) = validate_backend(b, &path, &mut problems) {
            backends.push(Arc::new(backend));
        }
    }
    let declared: HashSet<&str> = file
        .backends
        .iter()
        .filter_map(|b| b.name.as_deref())
        .collect();

    let mut routes = Vec::new();
    let mut route_index = HashMap::new();
    let mut catch_all = None;
    if file.routes.is_empty() {
        problems.push(Problem::new(
            "routes",
            "no routes are defined: add at least one [[routes]] table",
        ));
    }
    for (i, r) in file.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        let Some(route) = validate_route(r, &path, &backends, &declared, &mut problems) else {
            continue;
        };
        if route_index.contains_key(&*route.name) || (&*route.name == "*" && catch_all.is_some()) {
            problems.push(Problem::new(
                format!("{path}.model"),
                format!("another route already serves model \"{}\"", route.name),
            ));
            continue;
        }
        let idx = routes.len();
        if &*route.name == "*" {
            catch_all = Some(idx);
        } else {
            route_index.insert(route.name.to_string(), idx);
        }
        routes.push(Arc::new(route));
    }

    let admin = crate::admin::AdminSettings::from_section(file.admin.as_ref(), &mut problems);
    let traffic =
        crate::attempt::TrafficSettings::from_section(file.traffic.as_ref(), &mut problems);
    let local_worker = crate::local_worker::LocalWorkerSettings::from_section(
        file.local_worker.as_ref(),
        &mut problems,
    );
    let telemetry = file
        .telemetry
        .as_ref()
        .map(|t| validate_telemetry(t, &mut problems));
    let state = file
        .state
        .as_ref()
        .map(|s| validate_state(s, &mut problems));
    let plugins_dir = file.plugins.as_ref().and_then(|p| {
        if let Some(d) = &p.dir
            && d.as_os_str().is_empty()
        {
            problems.push(Problem::new("plugins.dir", "must not be empty"));
        }
        p.dir.clone()
    });
    let plugins = file
        .plugins
        .as_ref()
        .and_then(|p| crate::plugins::Settings::validate(p, &mut problems))
        .map(Arc::new);

    let governance = crate::governance::config::validate(&file, &mut problems);

    if !problems.is_empty() {
        return Err(problems);
    }
    let Some(server) = server else {
        return Err(vec![Problem::new("server", "invalid")]);
    };
    Ok(Runtime {
        source,
        server,
        backends,
        routes,
        route_index,
        catch_all,
        plugins_dir,
        plugins,
        telemetry,
        state,
        admin,
        traffic,
        local_worker,
        governance,
    })
}

fn secs(v: f64, path: &str, problems: &mut Vec<Problem>) -> Option<Duration> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Some(Duration::from_secs_f64(v))
    } else {
        problems.push(Problem::new(
            path,
            format!("must be a positive number of seconds, got {v}"),
        ));
        None
    }
}

fn validate_server(
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
        secs(grace, "server.shutdown_grace_secs", problems)
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

fn validate_backend(
    b: &schema::BackendSection,
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
    let connect = secs(
        b.connect_timeout_secs
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS),
        &format!("{path}.connect_timeout_secs"),
        problems,
    );
    let first_byte = secs(
        b.first_byte_timeout_secs
            .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT_SECS),
        &format!("{path}.first_byte_timeout_secs"),
        problems,
    );
    let timeout = secs(
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
    let pool = crate::pool::Pool::build(
        &name,
        &urls,
        b.breaker.as_ref(),
        b.pool.as_ref(),
        path,
        problems,
    );
    if problems.len() > before {
        return None;
    }
    let connect = connect?;
    let client = match upstream::client(connect, b.ca_file.as_deref(), &extra_roots) {
        Ok(c) => c,
        Err(e) => {
            problems.push(Problem::new(format!("{path}.ca_file"), e));
            return None;
        }
    };
    Some(Backend {
        name: Arc::from(name),
        urls,
        auth,
        first_byte_timeout: first_byte?,
        timeout: timeout?,
        client,
        pool,
    })
}

fn backend_url(raw: &str) -> Result<BackendUrl, String> {
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
        models_uri: mk("/models")?,
        authority,
        peer: crate::telemetry::Peer::of(&base),
        base,
    })
}

fn resolve_target(
    backend: Option<&str>,
    model: Option<&str>,
    weight: u32,
    path: &str,
    backends: &[Arc<Backend>],
    declared: &HashSet<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Target> {
    let Some(name) = backend else {
        problems.push(Problem::new(format!("{path}.backend"), "is required"));
        return None;
    };
    if let Some(m) = model
        && m.trim().is_empty()
    {
        problems.push(Problem::new(format!("{path}.model"), "must not be empty"));
        return None;
    }
    match backends.iter().find(|b| &*b.name == name) {
        Some(b) => Some(Target {
            backend: b.clone(),
            model: model.map(Arc::from),
            weight,
        }),
        None => {
            // A backend that exists but failed its own validation is already reported.
            if !declared.contains(name) {
                let known: Vec<&str> = declared.iter().copied().collect();
                problems.push(Problem::new(
                    format!("{path}.backend"),
                    format!(
                        "no backend named \"{name}\" (known: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            None
        }
    }
}

fn validate_route(
    r: &schema::RouteSection,
    path: &str,
    backends: &[Arc<Backend>],
    declared: &HashSet<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Route> {
    let before = problems.len();
    let name = match r.model.as_deref() {
        Some(m) if !m.trim().is_empty() => m.to_string(),
        Some(_) => {
            problems.push(Problem::new(format!("{path}.model"), "must not be empty"));
            String::new()
        }
        None => {
            problems.push(Problem::new(
                format!("{path}.model"),
                "is required: the model name clients send, or \"*\" for all others",
            ));
            String::new()
        }
    };
    if r.targets.is_empty() {
        problems.push(Problem::new(
            format!("{path}.targets"),
            "must list at least one target",
        ));
    }
    let mut targets = Vec::new();
    for (j, t) in r.targets.iter().enumerate() {
        let tp = format!("{path}.targets[{j}]");
        if let Some(target) = resolve_target(
            t.backend.as_deref(),
            t.model.as_deref(),
            t.weight.unwrap_or(1),
            &tp,
            backends,
            declared,
            problems,
        ) {
            targets.push(target);
        }
    }
    let total_weight: u64 = targets.iter().map(|t| u64::from(t.weight)).sum();
    if !targets.is_empty() && total_weight == 0 {
        problems.push(Problem::new(
            format!("{path}.targets"),
            "weights add up to 0: at least one target needs a positive weight",
        ));
    }
    let total_weight = match u32::try_from(total_weight) {
        Ok(w) => w,
        Err(_) => {
            problems.push(Problem::new(
                format!("{path}.targets"),
                "weights add up to more than 4294967295",
            ));
            0
        }
    };
    let mut fallback = Vec::new();
    for (j, f) in r.fallback.iter().enumerate() {
        let fp = format!("{path}.fallback[{j}]");
        if let Some(t) = resolve_target(
            f.backend.as_deref(),
            f.model.as_deref(),
            1,
            &fp,
            backends,
            declared,
            problems,
        ) {
            fallback.push(t);
        }
    }
    let shadow = r.shadow.as_ref().and_then(|s| {
        let sp = format!("{path}.shadow");
        let sample = s.sample.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&sample) {
            problems.push(Problem::new(
                format!("{sp}.sample"),
                format!("must be between 0.0 and 1.0, got {sample}"),
            ));
        }
        resolve_target(
            s.backend.as_deref(),
            s.model.as_deref(),
            1,
            &sp,
            backends,
            declared,
            problems,
        )
        .map(|target| Shadow { target, sample })
    });
    let flags = crate::flags::RouteFlags::build(r, path, problems, |t, tp, problems| {
        resolve_target(
            t.backend.as_deref(),
            t.model.as_deref(),
            t.weight.unwrap_or(1),
            tp,
            backends,
            declared,
            problems,
        )
    });
    if problems.len() > before {
        return None;
    }
    Some(Route {
        name: Arc::from(name),
        targets,
        total_weight,
        fallback,
        shadow,
        flags,
    })
}

fn validate_telemetry(
    t: &schema::TelemetrySection,
    problems: &mut Vec<Problem>,
) -> TelemetrySettings {
    let protocol = t.otlp_protocol.clone().unwrap_or_else(|| "grpc".into());
    if protocol != "grpc" && protocol != "http" {
        problems.push(Problem::new(
            "telemetry.otlp_protocol",
            format!("must be \"grpc\" or \"http\", got \"{protocol}\""),
        ));
    }
    if let Some(ep) = &t.otlp_endpoint
        && backend_url(ep).is_err()
    {
        problems.push(Problem::new(
            "telemetry.otlp_endpoint",
            format!("\"{ep}\" is not an http(s) URL"),
        ));
    }
    let sample_ratio = t.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        problems.push(Problem::new(
            "telemetry.sample_ratio",
            format!("must be between 0.0 and 1.0, got {sample_ratio}"),
        ));
    }
    let log_format = match t.log_format.as_deref() {
        None => crate::telemetry::LogFormat::Auto,
        Some(f) => crate::telemetry::LogFormat::parse(f).unwrap_or_else(|| {
            problems.push(Problem::new(
                "telemetry.log_format",
                format!("must be \"auto\", \"json\" or \"text\", got \"{f}\""),
            ));
            crate::telemetry::LogFormat::Auto
        }),
    };
    TelemetrySettings {
        otlp_endpoint: t.otlp_endpoint.clone(),
        otlp_protocol: protocol,
        sample_ratio,
        capture_content: t.capture_content.unwrap_or(false),
        log_format,
    }
}

fn validate_state(s: &schema::StateSection, problems: &mut Vec<Problem>) -> StateSettings {
    let path = s
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from("switchyard.db"));
    if path.as_os_str().is_empty() {
        problems.push(Problem::new("state.path", "must not be empty"));
    }
    if let Some(r) = &s.redis
        && !(r.starts_with("redis://") || r.starts_with("rediss://") || r.starts_with("unix://"))
    {
        problems.push(Problem::new(
            "state.redis",
            "must be a redis://, rediss:// or unix:// URL",
        ));
    }
    StateSettings {
        path,
        redis: s.redis.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigSource, load_str};

    fn problems(text: &str) -> Vec<Problem> {
        load_str(text, ConfigSource::Embedded).unwrap_err().problems
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = problems(
            r#"
[server]
listen = "nonsense"

[[backends]]
name = "local"
url = "ftp://x"

[[backends]]
name = "local"
url = "http://127.0.0.1:9001/v1"

[[routes]]
model = "gpt-4o"
targets = [{ backend = "lcoal" }, { backend = "local", weight = 0 }]
fallback = [{ backend = "nope" }]
shadow = { backend = "local", sample = 2.0 }
"#,
        );
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"server.listen"), "{p:#?}");
        assert!(paths.contains(&"backends[0].url"), "{p:#?}");
        assert!(paths.contains(&"backends[1].name"), "{p:#?}");
        assert!(paths.contains(&"routes[0].targets[0].backend"), "{p:#?}");
        assert!(paths.contains(&"routes[0].fallback[0].backend"), "{p:#?}");
        assert!(paths.contains(&"routes[0].shadow.sample"), "{p:#?}");
        let lcoal = p
            .iter()
            .find(|p| p.path == "routes[0].targets[0].backend")
            .unwrap();
        assert!(lcoal.message.contains("\"lcoal\""));
    }

    #[test]
    fn missing_api_key_env_names_the_variable_not_a_value() {
        let p = problems(
            r#"
[[backends]]
name = "openai"
url = "https://api.openai.com/v1"
api_key_env = "SWITCHYARD_TEST_SURELY_UNSET_KEY"
[[routes]]
model = "*"
targets = [{ backend = "openai" }]
"#,
        );
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].path, "backends[0].api_key_env");
        assert!(p[0].message.contains("SWITCHYARD_TEST_SURELY_UNSET_KEY"));
    }

    #[test]
    fn routes_resolve_with_catch_all() {
        let rt = load_str(
            r#"
[[backends]]
name = "local"
urls = ["http://127.0.0.1:9001/v1/", "http://127.0.0.1:9002/v1"]
[[routes]]
model = "gpt-4o"
targets = [{ backend = "local", model = "llama", weight = 9 }, { backend = "local", weight = 1 }]
[[routes]]
model = "*"
targets = [{ backend = "local" }]
"#,
            ConfigSource::Embedded,
        )
        .unwrap();
        assert_eq!(rt.route_for("gpt-4o").unwrap().total_weight, 10);
        assert_eq!(&*rt.route_for("anything").unwrap().name, "*");
        assert_eq!(rt.model_names().collect::<Vec<_>>(), vec!["gpt-4o"]);
        let b = rt.backend("local").unwrap();
        assert_eq!(
            b.urls[0].uri(Endpoint::ChatCompletions).to_string(),
            "http://127.0.0.1:9001/v1/chat/completions"
        );
        assert_eq!(b.urls[1].authority, "127.0.0.1:9002");
    }

    #[test]
    fn no_routes_is_a_problem() {
        let p = problems("[[backends]]\nname = \"a\"\nurl = \"http://x/v1\"\n");
        assert_eq!(p[0].path, "routes");
    }
}
