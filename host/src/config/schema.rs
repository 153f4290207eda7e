//! The config file as written: strict serde structs, one per TOML table.
//!
//! Parsing only checks shape; every unknown key is an error that names it. Meaning (does
//! that backend exist, is that URL valid, do weights add up) is checked afterwards by
//! `validate`, which reports every problem at once with its key path.

use std::path::PathBuf;

use serde::Deserialize;

pub use super::governance::{AuthSection, BaselineSection, PriceSection, TeamSection};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub plugins: Option<PluginsSection>,
    #[serde(default)]
    pub backends: Vec<BackendSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub telemetry: Option<TelemetrySection>,
    #[serde(default)]
    pub state: Option<StateSection>,
    /// `[admin]`: the authenticated admin API (reload, rollback, breakers).
    #[serde(default)]
    pub admin: Option<AdminSection>,
    /// `[traffic]`: retry budget and backoff.
    #[serde(default)]
    pub traffic: Option<TrafficSection>,
    /// `[local_worker]`: an inference worker run inside the gateway process.
    #[serde(default)]
    pub local_worker: Option<LocalWorkerSection>,
    // Governance (keys, limits, budgets, prices): the sections are in `config::governance`.
    #[serde(default)]
    pub auth: Option<AuthSection>,
    #[serde(default)]
    pub teams: Vec<TeamSection>,
    #[serde(default)]
    pub prices: Vec<PriceSection>,
    /// `[cache]`: the exact response cache's store.
    #[serde(default)]
    pub cache: Option<CacheSection>,
}

/// `[cache]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// The memory store's size in bytes (not used with `[state] redis`).
    pub max_bytes: Option<u64>,
}

/// A route's `cache = { ttl_secs, deterministic_only }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSection {
    pub ttl_secs: Option<u64>,
    /// Cache only `temperature = 0` or seeded requests (default true).
    pub deterministic_only: Option<bool>,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Address to listen on, `host:port`. Port 0 picks a free port (printed at start).
    pub listen: Option<String>,
    /// PEM certificate chain for inbound TLS (needs `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for inbound TLS (needs `tls_cert`).
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: Option<u64>,
    /// How long a shutdown waits for in-flight requests and streams, in seconds.
    pub shutdown_grace_secs: Option<f64>,
    /// Time a client has to send a request's whole body, in milliseconds.
    pub body_read_timeout_ms: Option<u64>,
    /// Client connections open at once; more are closed on accept.
    pub max_connections: Option<u64>,
    /// Concurrent streams one HTTP/2 client connection may open.
    pub max_h2_streams: Option<u64>,
    /// Longest line (and held event) of an upstream stream, in bytes.
    pub max_event_bytes: Option<u64>,
    /// Largest upstream answer read whole (complete answers, held streams, shadow
    /// captures), in bytes.
    pub max_answer_bytes: Option<u64>,
    /// Threads that serve client connections, each with its own event loop and upstream
    /// connections (default: one per CPU).
    pub threads: Option<u64>,
}

/// `[plugins]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// Folder whose `*.wasm` files are loaded.
    pub dir: Option<PathBuf>,
    /// Plugin names (file stems) in the order their stages run; unlisted ones run after,
    /// by name.
    pub order: Option<Vec<String>>,
    /// Time one plugin call may take, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Memory one plugin instance may use, in MiB.
    pub memory_mb: Option<u64>,
    /// What a failing plugin call does to the request: `continue` or `reject`.
    pub on_error: Option<String>,
    /// Where compiled plugins are cached; `""` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// Request headers plugins may see (case-insensitive names).
    pub headers: Option<Vec<String>>,
    /// Watch `dir` and reload changed plugins live (default true).
    pub watch: Option<bool>,
    /// `pooled` (default): warm instances serve up to 1000 calls each; `per-call`: a fresh
    /// instance for every call, so no guest state outlives a request.
    pub instances: Option<String>,
    /// Per-plugin config values: `[plugins.config.<name>]`, read with `config-get`.
    pub config: Option<std::collections::BTreeMap<String, toml::Table>>,
    /// Streamed answers and `validate` plugins: `skip` (default; relayed live, not
    /// validated) or `buffer` (held until complete, validated, then served).
    pub validate_streams: Option<String>,
    /// Which answers `validate` plugins see: `["json"]` (the client asked for JSON),
    /// `["tools"]` (the request offers tools), both, or `["always"]` (the default).
    pub validate_when: Option<Vec<String>>,
    /// Per-plugin limits: `[plugins.overrides.<name>]`, replacing the section's defaults.
    pub overrides: Option<std::collections::BTreeMap<String, PluginOverrideSection>>,
}

/// `[plugins.overrides.<name>]`: one plugin's own deadline, memory and failure handling.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginOverrideSection {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub on_error: Option<String>,
    pub validate_streams: Option<String>,
    pub validate_when: Option<Vec<String>>,
}

/// One `[[backends]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSection {
    pub name: Option<String>,
    /// Base URL of an OpenAI-compatible API, ending before `/chat/completions`.
    pub url: Option<String>,
    /// Several base URLs serving the same models (one worker per GPU).
    pub urls: Option<Vec<String>>,
    /// Name of the environment variable holding this backend's API key.
    pub api_key_env: Option<String>,
    /// Time allowed to open a connection, in seconds.
    pub connect_timeout_secs: Option<f64>,
    /// Time allowed until the response starts (headers, and for streams the first chunk).
    pub first_byte_timeout_secs: Option<f64>,
    /// Time allowed for a whole non-streamed answer, and between two chunks of a stream.
    pub timeout_secs: Option<f64>,
    /// Extra PEM CA bundle trusted for this backend, on top of the system and webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Circuit breaker settings for each of this backend's URLs.
    pub breaker: Option<BreakerSection>,
    /// Pool settings: in-flight limits, queueing, health checks, ejection.
    pub pool: Option<PoolSection>,
    /// Client request headers sent on to this backend (case-insensitive names; `prefix-*`
    /// matches a prefix). Replaces the default list; `[]` forwards none.
    pub forward_headers: Option<Vec<String>>,
    /// What one worker (URL) of this backend costs an hour, in USD: its cost per token is
    /// derived from this and the throughput the worker reports on `/metrics`.
    pub gpu_hour_usd: Option<f64>,
    /// The request API the backend speaks natively: "chat" (default), "responses" (default
    /// for api.openai.com) or "anthropic"; requests in that API are passed through.
    pub api: Option<String>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// The model name clients send; `"*"` catches every model no other route names.
    pub model: Option<String>,
    #[serde(default)]
    pub targets: Vec<TargetSection>,
    #[serde(default)]
    pub fallback: Vec<FallbackSection>,
    pub shadow: Option<ShadowSection>,
    /// Repeats of a failed target (after trying its other URLs) before the fallback.
    pub retries: Option<u32>,
    /// Caller-based rules that replace `targets` for matching requests.
    #[serde(default)]
    pub overrides: Vec<OverrideSection>,
    /// Teams whose callers may pin a target with the `x-switchyard-target` header.
    #[serde(default)]
    pub pin_teams: Vec<String>,
    /// The premium price this route's traffic is compared against (`switchyard spend`).
    pub baseline: Option<BaselineSection>,
    /// Store a sample of request/answer pairs as golden-set material (`switchyard capture
    /// export`).
    pub capture: Option<CaptureSection>,
    /// A staged rollout of a candidate target, moved through its steps by the gateway.
    pub rollout: Option<RolloutSection>,
    /// Sticky split: `"key"`, `"team"` or `"header:NAME"` keeps each caller on one target.
    pub sticky: Option<String>,
    /// The exact response cache for this route's answers.
    pub cache: Option<RouteCacheSection>,
    /// Where a request too long for the chosen target's `context_window` goes.
    pub context_fallback: Option<FallbackSection>,
}

/// `capture = { sample = 0.05 }` on a route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    /// Fraction of requests captured, 0.0 to 1.0.
    pub sample: Option<f64>,
}

/// `shadow.judge = { backend, model, sample, rubric }`: an LLM judge scoring shadow pairs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSection {
    pub backend: Option<String>,
    pub model: Option<String>,
    /// Fraction of shadow pairs judged, 0.0 to 1.0. Default 1.0.
    pub sample: Option<f64>,
    /// A rubric template file ({question}, {reference}, {answer}); default built in.
    pub rubric: Option<PathBuf>,
}

/// `routes[].rollout`: a candidate moved through `steps` (percent of the route's traffic).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    pub candidate: Option<FallbackSection>,
    #[serde(default)]
    pub steps: Vec<f64>,
    pub step_secs: Option<f64>,
    pub min_requests: Option<u64>,
    pub guard: Option<GuardSection>,
    /// URL that receives a JSON POST for each transition.
    pub webhook: Option<String>,
}

/// `routes[].rollout.guard`: the limits a candidate must hold at each step.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSection {
    pub max_error_rate: Option<f64>,
    pub max_p99_increase_ms: Option<f64>,
    pub max_reject_rate: Option<f64>,
    pub min_agreement: Option<f64>,
    pub min_judge_score: Option<f64>,
    pub min_feedback: Option<f64>,
}

/// A weighted target of a route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    pub backend: Option<String>,
    /// Model name sent upstream; omitted means the client's own model name.
    pub model: Option<String>,
    /// Relative weight; default 1.
    pub weight: Option<u32>,
    /// The model's context window in tokens (prompt + completion); a longer request goes to
    /// the route's `context_fallback` or is refused before any upstream call.
    pub context_window: Option<u64>,
}

/// A fallback target, tried in order.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSection {
    pub backend: Option<String>,
    pub model: Option<String>,
    pub context_window: Option<u64>,
}

/// A mirrored target whose answers are recorded, never served.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    pub backend: Option<String>,
    pub model: Option<String>,
    /// Fraction of requests mirrored, 0.0 to 1.0.
    pub sample: Option<f64>,
    /// Score a sample of the pairs with an LLM judge.
    pub judge: Option<JudgeSection>,
}

/// `[telemetry]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySection {
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub sample_ratio: Option<f64>,
    /// Record prompts and answers on spans (`gen_ai.input.messages`); off by default.
    pub capture_content: Option<bool>,
    /// `"auto"` (text on a terminal, else JSON), `"json"` or `"text"`.
    pub log_format: Option<String>,
}

/// `[state]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    pub path: Option<PathBuf>,
    pub redis: Option<String>,
    /// `postgres://user@host:port/db`: every replica's state in one PostgreSQL database.
    pub postgres: Option<String>,
    /// The environment variable holding the PostgreSQL password.
    pub postgres_password_env: Option<String>,
}

/// One override rule, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSection {
    /// Matches callers of this team.
    pub team: Option<String>,
    /// Matches this virtual key id.
    pub key: Option<String>,
    /// Matches requests carrying this header, `"name: value"` (or just `"name"`).
    pub header: Option<String>,
    #[serde(default)]
    pub targets: Vec<TargetSection>,
}

/// `pool = { ... }` on a backend, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Most requests one URL may hold at once; unset means no limit.
    pub max_in_flight: Option<usize>,
    /// Requests that may wait for a free slot on a URL before the gateway answers 503.
    pub queue: Option<usize>,
    /// Longest a request waits in that queue, in seconds. Default 5.
    pub queue_timeout_secs: Option<f64>,
    /// Active health checks: on by default for backends with several `urls`.
    pub health_checks: Option<bool>,
    /// Path checked on each URL's host, e.g. `/healthz`. Default: the base URL + `/models`.
    pub health_path: Option<String>,
    /// Seconds between health checks of one URL. Default 5.
    pub health_interval_secs: Option<f64>,
    /// Consecutive failures that eject a URL. Default 5 (a refused connection ejects at once).
    pub eject_after: Option<u32>,
    /// Seconds an ejected URL sits out (unless a health check passes sooner). Default 10.
    pub eject_secs: Option<f64>,
}

/// `breaker = { ... }` on a backend, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSection {
    /// Error rate (0.0–1.0) over the window that opens the breaker. Default 0.02.
    pub error_rate: Option<f64>,
    /// Length of the rolling window in seconds. Default 300.
    pub window_secs: Option<f64>,
    /// Requests the window must hold before the rate is trusted. Default 20.
    pub min_requests: Option<u64>,
    /// Seconds an open breaker waits before a half-open probe. Default 30.
    pub cooldown_secs: Option<f64>,
    /// `false` turns the breaker off for this backend. Default true.
    pub enabled: Option<bool>,
}

/// `[traffic]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficSection {
    /// Retries allowed as a share of requests (token bucket refill per request). Default 0.2.
    pub retry_budget_ratio: Option<f64>,
    /// Retries always allowed per second, whatever the request rate. Default 10.
    pub retry_budget_min_per_sec: Option<f64>,
    /// First backoff before repeating a target, in milliseconds (jittered, doubling). Default 25.
    pub backoff_base_ms: Option<u64>,
    /// Longest backoff, in milliseconds. Default 1000.
    pub backoff_max_ms: Option<u64>,
}

/// `[admin]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Name of the environment variable holding the admin bearer token.
    pub token_env: Option<String>,
    /// Config versions kept for rollback. Default 10.
    pub keep_versions: Option<usize>,
    /// Reload when the config file changes. Default true.
    pub watch: Option<bool>,
    /// A listener of its own for the admin API (plain HTTP). Unset: the admin API is served
    /// on `[server] listen`, to loopback clients only.
    pub listen: Option<String>,
}

/// `[local_worker]`, as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalWorkerSection {
    /// A GGUF path, or a known model name (`smollm2`) fetched on first use.
    pub model: Option<String>,
    /// Where the worker listens. Default `127.0.0.1:9001`.
    pub listen: Option<String>,
    /// The name the worker reports. Default: the known model's name or the file's stem.
    pub served_model_name: Option<String>,
    /// Context size in tokens. Default: the model's trained context, at most 8192.
    pub ctx_size: Option<usize>,
    /// Sequences decoded together. Default 8.
    pub max_batch: Option<usize>,
}
