//! Plugins: user policies as WebAssembly components, run at three stages of the request
//! path (`classify` before routing, `adapt` after it, `validate` on a complete answer).
//!
//! ```text
//! plugins/*.wasm ──► engine (compile, disk cache) ──► Loaded (InstancePre, stages)
//!                                                          │
//!        watcher (poll dir, compile off the request path) ─┴─► ArcSwap<PluginSet>
//!                                                                   │ one load per request
//! proxy ──► Pass::classify ──► route ──► Pass::adapt ──► upstream ──► Pass::validate
//! ```
//!
//! A request loads the current [`PluginSet`] once (in [`Pass::new`]) and runs every stage
//! on that version, so a reload never changes plugins under a request in flight. Every
//! plugin failure (trap, timeout, memory, unusable answer) is contained here: counted,
//! logged with the plugin's name, and turned into "carry on without it" or a
//! `plugin_failed` error per `on_error` (`[plugins]`, or the plugin's own
//! `[plugins.overrides.<name>]`).

mod bindings;
mod convert;
mod engine;
mod exec;
mod hostapi;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderMap;

pub use crate::config::plugins::{OnError, PluginOptions, Settings, ValidateWhen};
pub use engine::{CacheUse, PluginEngine};
use exec::Scratch;
pub use exec::{CallError, FailureKind, Stages};
pub use hostapi::PluginMetrics;
pub use stats::{BackendStats, InFlight};

use bindings::types;
use exec::Loaded;
use hostapi::PluginHost;

use super::observe::metrics::Metrics;
use super::observe::telemetry;
use crate::base::openai::RequestBody;
use crate::base::{Endpoint, GatewayError};
use crate::config::{Route, Runtime, Target};

/// How often the watcher looks at the plugin folder.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Request header whose comma-separated values become the caller's tags.
pub const TAGS_HEADER: http::HeaderName = http::HeaderName::from_static("x-switchyard-tags");

/// Size, modification time: enough to notice a replaced file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        len: m.len(),
        modified: m.modified().ok(),
    })
}

/// One plugin file, loaded.
pub struct Plugin {
    pub name: Arc<str>,
    pub path: PathBuf,
    /// Short content hash: which version of the file this is.
    pub version: String,
    pub cache: CacheUse,
    pub load_time: Duration,
    loaded: Loaded,
    stamp: Option<Stamp>,
}

impl Plugin {
    pub fn stages(&self) -> Stages {
        self.loaded.stages
    }
    pub fn size(&self) -> usize {
        self.loaded.size
    }
    pub fn warm_pool(&self) -> bool {
        self.loaded.warm_pool()
    }
    /// Its `timeout_ms`, `memory_mb`, `on_error` and `validate_streams` (overrides applied).
    pub fn options(&self) -> PluginOptions {
        self.loaded.options
    }
}

/// The plugins in force, in stage order.
#[derive(Default)]
pub struct PluginSet {
    pub settings: Option<Arc<Settings>>,
    pub plugins: Vec<Arc<Plugin>>,
    /// Files that failed to load, with the stamp they had (not retried until they change).
    failed: HashMap<PathBuf, Option<Stamp>>,
}

impl PluginSet {
    fn any(&self, f: impl Fn(Stages) -> bool) -> bool {
        self.plugins.iter().any(|p| f(p.loaded.stages))
    }
}

/// The process-wide plugin runtime: the current set, the engine, metrics, per-plugin
/// key-value stores and backend observations.
#[derive(Default)]
pub struct Plugins {
    set: ArcSwap<PluginSet>,
    engine: OnceLock<Arc<PluginEngine>>,
    pub metrics: Arc<PluginMetrics>,
    pub stats: BackendStats,
    kv: Mutex<HashMap<Arc<str>, KvStore>>,
}

/// One plugin's key-value store (kept across reloads of that plugin).
type KvStore = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A decision checked against the config: route, target, and the plugin's own record.
type Resolved = (Option<Arc<Route>>, Option<Target>, types::Decision);

/// What loading a plugin folder found.
pub struct LoadReport {
    pub loaded: Vec<Arc<Plugin>>,
    /// (file, why) for each file that failed.
    pub failed: Vec<(PathBuf, String)>,
}

impl Plugins {
    /// The set in force now.
    pub fn current(&self) -> Arc<PluginSet> {
        self.set.load_full()
    }

    fn engine_for(&self, settings: &Settings) -> Result<Arc<PluginEngine>, String> {
        if let Some(e) = self.engine.get() {
            return Ok(e.clone());
        }
        let e = PluginEngine::new(settings)
            .map_err(|e| format!("cannot start the plugin engine: {}", exec::describe(&e)))?;
        Ok(self.engine.get_or_init(|| e).clone())
    }

    fn kv_for(&self, name: &Arc<str>) -> KvStore {
        let mut kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        kv.entry(name.clone()).or_default().clone()
    }

    /// Load every plugin in `settings.dir` (compiling in parallel) and make them current.
    /// Files that fail are reported and left out.
    pub fn load_all(&self, settings: &Arc<Settings>) -> Result<LoadReport, String> {
        let engine = self.engine_for(settings)?;
        let files = wasm_files(&settings.dir)?;
        let results: Vec<(PathBuf, Result<Plugin, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .iter()
                .map(|path| {
                    let engine = engine.clone();
                    s.spawn(move || (path.clone(), self.load_file(&engine, settings, path)))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let mut set = PluginSet {
            settings: Some(settings.clone()),
            ..PluginSet::default()
        };
        let mut report = LoadReport {
            loaded: Vec::new(),
            failed: Vec::new(),
        };
        for (path, r) in results {
            match r {
                Ok(p) => set.plugins.push(Arc::new(p)),
                Err(e) => {
                    set.failed.insert(path.clone(), stamp(&path));
                    report.failed.push((path, e));
                }
            }
        }
        sort(&mut set.plugins, settings);
        report.loaded = set.plugins.clone();
        self.set.store(Arc::new(set));
        Ok(report)
    }

    fn load_file(
        &self,
        engine: &Arc<PluginEngine>,
        settings: &Settings,
        path: &Path,
    ) -> Result<Plugin, String> {
        let started = Instant::now();
        let name: Arc<str> = Arc::from(plugin_name(path));
        let stamp = stamp(path);
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let (component, cache) = engine
            .compile(&bytes)
            .map_err(|e| format!("not a valid component: {}", exec::describe(&e)))?;
        let host = Arc::new(PluginHost::new(
            name.clone(),
            settings.config_for(&name),
            self.kv_for(&name),
            self.metrics.clone(),
        ));
        let options = settings.options_for(&name);
        let loaded = Loaded::new(engine.clone(), &component, bytes.len(), host, options)
            .map_err(|e| exec::describe(&e))?;
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
        let version = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Ok(Plugin {
            name,
            path: path.to_path_buf(),
            version,
            cache,
            load_time: started.elapsed(),
            loaded,
            stamp,
        })
    }

    /// A config version whose `[plugins.config.*]` values differ from the loaded ones: load
    /// every plugin again with the new values (compiled code comes from the engine's cache),
    /// since a plugin reads its values once per instance. Prompt tables and models thus
    /// change with a config reload or rollback; the other `[plugins]` keys keep the values
    /// the gateway started with. Returns whether the set was swapped.
    pub fn reconfigure(&self, rt: &Runtime) -> bool {
        let current = self.current();
        let (Some(old), Some(new)) = (&current.settings, &rt.plugins) else {
            return false;
        };
        if old.config == new.config {
            return false;
        }
        let settings = Arc::new(Settings {
            config: new.config.clone(),
            ..(**old).clone()
        });
        match self.load_all(&settings) {
            Ok(report) => {
                tracing::info!(
                    loaded = report.loaded.len(),
                    failed = report.failed.len(),
                    "plugins reloaded with the new [plugins.config] values"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "plugins not reloaded; the loaded ones stay");
                false
            }
        }
    }

    /// Look at the folder once; reload what changed. Returns whether the set was swapped.
    pub fn rescan(&self) -> bool {
        let current = self.current();
        let Some(settings) = current.settings.clone() else {
            return false;
        };
        let Ok(engine) = self.engine_for(&settings) else {
            return false;
        };
        // A folder that disappeared means every plugin was removed.
        let files = wasm_files(&settings.dir).unwrap_or_default();
        let mut changed = false;
        let mut plugins: Vec<Arc<Plugin>> = Vec::new();
        let mut failed = HashMap::new();
        for path in &files {
            let now = stamp(path);
            let old = current.plugins.iter().find(|p| &p.path == path);
            if let Some(old) = old
                && old.stamp == now
            {
                plugins.push(old.clone());
                continue;
            }
            // A file that failed as it is now is not recompiled every poll.
            if current.failed.get(path) == Some(&now) {
                if let Some(old) = old {
                    plugins.push(old.clone());
                }
                failed.insert(path.clone(), now);
                continue;
            }
            match self.load_file(&engine, &settings, path) {
                Ok(p) => {
                    tracing::info!(
                        plugin = &*p.name,
                        version = %p.version,
                        stages = %p.stages().names().join(","),
                        load_ms = p.load_time.as_secs_f64() * 1e3,
                        "plugin {}",
                        if old.is_some() { "reloaded" } else { "added" }
                    );
                    plugins.push(Arc::new(p));
                    changed = true;
                }
                Err(e) => {
                    let name: Arc<str> = Arc::from(plugin_name(path));
                    self.metrics.load_error(&name);
                    match old {
                        Some(old) => {
                            tracing::error!(plugin = &*name, file = %path.display(), error = %e, version = %old.version, "plugin failed to load; the previous version stays");
                            plugins.push(old.clone());
                            failed.insert(path.clone(), now);
                        }
                        None => {
                            tracing::error!(plugin = &*name, file = %path.display(), error = %e, "plugin failed to load");
                            failed.insert(path.clone(), now);
                        }
                    }
                }
            }
        }
        for old in &current.plugins {
            if !files.contains(&old.path) {
                tracing::info!(plugin = &*old.name, "plugin removed");
                changed = true;
            }
        }
        if failed != current.failed {
            changed = true;
        }
        if !changed {
            return false;
        }
        sort(&mut plugins, &settings);
        self.set.store(Arc::new(PluginSet {
            settings: Some(settings),
            plugins,
            failed,
        }));
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Poll the plugin folder on a background thread for as long as `this` lives.
    pub fn watch(this: &Arc<Plugins>) {
        let weak: Weak<Plugins> = Arc::downgrade(this);
        let spawned = std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(POLL_INTERVAL);
                    let Some(p) = weak.upgrade() else { break };
                    p.rescan();
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the plugin watcher; plugins will not reload");
        }
    }
}

fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn wasm_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the plugin folder {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Stage order: `[plugins] order` first, the rest by name.
fn sort(plugins: &mut [Arc<Plugin>], settings: &Settings) {
    plugins.sort_by_key(|p| {
        let pos = settings
            .order
            .iter()
            .position(|n| **n == *p.name)
            .unwrap_or(usize::MAX);
        (pos, p.name.clone())
    });
}

/// Who is calling, as far as the gateway knows at classify time.
#[derive(Debug, Clone, Default)]
pub struct CallerInfo {
    pub key_id: Option<String>,
    pub team: Option<String>,
    pub tags: Vec<String>,
}

/// What `classify` changed.
#[derive(Debug, Default)]
pub struct Decision {
    /// Serve under this route instead of the client's.
    pub route: Option<Arc<Route>>,
    /// Send to exactly this target.
    pub target: Option<Target>,
    /// Tags added by plugins.
    pub tags: Vec<String>,
    /// (plugin, reason) of the plugins that explained themselves.
    pub reasons: Vec<(Arc<str>, String)>,
}

/// What `validate` decided about an answer: the typed value the fallback logic acts on.
#[derive(Debug, Clone)]
pub enum ValidateOutcome {
    /// Serve it.
    Accept,
    /// Do not serve it; try the fallback.
    Reject { plugin: Arc<str>, reason: String },
    /// Serve this body instead.
    Replace { plugin: Arc<str>, body: Bytes },
}

/// One request's passage through the plugins: the version it started with and the typed
/// view of its body (built only when some plugin will read it).
pub struct Pass {
    set: Arc<PluginSet>,
    metrics: Arc<PluginMetrics>,
    /// The request's span, parent of one span per plugin call.
    trace: telemetry::SpanParent,
    /// The gateway's metrics (plugin call durations), when the pass is observed.
    gateway_metrics: Option<Arc<Metrics>>,
    endpoint: Endpoint,
    /// The typed view of the client's request. `adapt` never changes it: each upstream
    /// attempt adapts this original, so it is built once per request.
    request: Option<types::Request>,
    caller: types::Caller,
    /// Each plugin's state for this request (`host.request-set`, WIT `0.2`), by its
    /// position in `set.plugins`. Shared with the stream's [`ChunkHook`], which outlives
    /// the pass.
    scratch: Arc<[Scratch]>,
}

impl Pass {
    pub fn new(
        plugins: &Plugins,
        body: &RequestBody,
        endpoint: Endpoint,
        headers: &HeaderMap,
        caller: CallerInfo,
    ) -> Pass {
        let set = plugins.current();
        let request = (!set.plugins.is_empty()).then(|| convert::request(body, endpoint));
        let mut tags = caller.tags;
        let mut allowed = Vec::new();
        if let Some(s) = &set.settings
            && !set.plugins.is_empty()
        {
            for name in &s.headers {
                for v in headers.get_all(name.as_str()) {
                    if let Ok(v) = v.to_str() {
                        allowed.push((name.clone(), v.to_string()));
                    }
                }
            }
            for v in headers.get_all(TAGS_HEADER) {
                if let Ok(v) = v.to_str() {
                    tags.extend(
                        v.split(',')
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(str::to_string),
                    );
                }
            }
        }
        let scratch = set.plugins.iter().map(|_| Scratch::default()).collect();
        Pass {
            set,
            scratch,
            metrics: plugins.metrics.clone(),
            trace: telemetry::SpanParent::default(),
            gateway_metrics: None,
            endpoint,
            request,
            caller: types::Caller {
                key_id: caller.key_id,
                team: caller.team,
                tags,
                headers: allowed,
            },
        }
    }

    /// No plugin will run for this request.
    pub fn is_empty(&self) -> bool {
        self.set.plugins.is_empty()
    }

    /// The request's span, as given to [`Pass::observed`].
    pub fn trace(&self) -> &telemetry::SpanParent {
        &self.trace
    }

    /// Trace each plugin call as a child of `trace` (the request's span; `validate` calls go
    /// under the span the caller gives) and time it into
    /// `metrics` (`switchyard_plugin_duration_seconds`).
    pub fn observed(mut self, trace: telemetry::SpanParent, metrics: Arc<Metrics>) -> Pass {
        self.trace = trace;
        self.gateway_metrics = Some(metrics);
        self
    }

    /// Run one plugin call under its span and timer. `outcome` names a successful result
    /// (`ok`, `rejected`, `replaced`, ...); a failure is named by its kind (`timeout`,
    /// `trap`, ...) and marks the span failed.
    fn observe<R>(
        &self,
        parent: &telemetry::SpanParent,
        p: &Plugin,
        stage: &'static str,
        call: impl FnOnce() -> Result<R, CallError>,
        outcome: impl FnOnce(&R) -> &'static str,
    ) -> Result<R, CallError> {
        self.metrics.call(&p.name, stage);
        let started = Instant::now();
        let mut span = telemetry::plugin_span(parent, &p.name, &p.version, stage);
        let result = call();
        let took = started.elapsed();
        match &result {
            Ok(r) => span.set("switchyard.plugin.outcome", outcome(r)),
            Err(e) => {
                span.set("switchyard.plugin.outcome", e.kind.label());
                span.fail(e.kind.label());
            }
        }
        span.end();
        if let Some(m) = &self.gateway_metrics {
            m.plugin_call(&p.name, stage, took);
        }
        result
    }

    /// The caller's tags after classify.
    pub fn tags(&self) -> &[String] {
        &self.caller.tags
    }

    /// Count and log a failure; decide whether the request goes on.
    fn contain(
        &self,
        plugin: &Plugin,
        stage: &'static str,
        e: CallError,
    ) -> Result<(), GatewayError> {
        self.metrics.error(&plugin.name, stage, e.kind.label());
        tracing::warn!(
            plugin = &*plugin.name,
            version = %plugin.version,
            stage,
            kind = e.kind.label(),
            error = %e.detail,
            "plugin call failed"
        );
        match plugin.loaded.options.on_error {
            OnError::Continue => Ok(()),
            OnError::Reject => Err(GatewayError::PluginFailed {
                plugin: plugin.name.to_string(),
                stage,
                detail: e.kind.label().to_string(),
            }),
        }
    }

    /// Stage `classify`: each plugin in order may override route and target (later ones
    /// win) and add tags (seen by the plugins after it).
    pub fn classify(
        &mut self,
        rt: &Runtime,
        stats: &BackendStats,
    ) -> Result<Decision, GatewayError> {
        let mut decision = Decision::default();
        let Some(req) = &self.request else {
            return Ok(decision);
        };
        if !self.set.any(|s| s.classify) {
            return Ok(decision);
        }
        let backends = stats.snapshot(rt);
        let set = self.set.clone();
        let scratches = self.scratch.clone();
        let with_scratch = set.plugins.iter().zip(scratches.iter());
        for (p, scratch) in with_scratch.filter(|(p, _)| p.loaded.stages.classify) {
            let result = self.observe(
                &self.trace,
                p,
                "classify",
                || {
                    p.loaded
                        .classify(scratch, req, &self.caller, &backends)
                        .and_then(|d| resolve(rt, d))
                },
                |(route, target, _)| {
                    if route.is_some() || target.is_some() {
                        "routed"
                    } else {
                        "ok"
                    }
                },
            );
            match result {
                Ok((route, target, d)) => {
                    if route.is_some() {
                        decision.route = route;
                        // A new route invalidates an earlier plugin's target choice.
                        decision.target = None;
                    }
                    if target.is_some() {
                        decision.target = target;
                    }
                    for t in d.tags {
                        if !self.caller.tags.contains(&t) {
                            self.caller.tags.push(t.clone());
                            decision.tags.push(t);
                        }
                    }
                    if let Some(r) = d.reason {
                        decision.reasons.push((p.name.clone(), r));
                    }
                }
                Err(e) => self.contain(p, "classify", e)?,
            }
        }
        Ok(decision)
    }

    /// Stage `adapt`: each plugin in order may rewrite the request for `target` (seeing the
    /// rewrites of the plugins before it); the result is the new body (parsed again, so it is
    /// checked like a client's), or `None` when no plugin changed anything. The pass keeps
    /// the client's original: each upstream attempt calls this again, so a fallback to
    /// another model family gets its own rewrite, with the plugin versions the request
    /// started with.
    pub fn adapt(
        &self,
        target: &Target,
        upstream_model: &str,
    ) -> Result<Option<RequestBody>, GatewayError> {
        if self.request.is_none() || !self.set.any(|s| s.adapt) {
            return Ok(None);
        }
        let t = types::Target {
            backend: target.backend.name.to_string(),
            model: upstream_model.to_string(),
        };
        let mut changed = None;
        let mut rewritten: Option<types::Request> = None;
        let with_scratch = self.set.plugins.iter().zip(self.scratch.iter());
        for (p, scratch) in with_scratch.filter(|(p, _)| p.loaded.stages.adapt) {
            let Some(req) = rewritten.as_ref().or(self.request.as_ref()) else {
                break;
            };
            let endpoint = self.endpoint;
            let result = self.observe(
                &self.trace,
                p,
                "adapt",
                || {
                    p.loaded.adapt(scratch, req, &t).and_then(|new| match new {
                        None => Ok(None),
                        Some(new) => {
                            let json = convert::request_json(&new, endpoint)?;
                            let body =
                                RequestBody::parse(Bytes::from(json), endpoint).map_err(|e| {
                                    CallError::bad_return(format!(
                                        "the adapted request is invalid: {e}"
                                    ))
                                })?;
                            Ok(Some((new, body)))
                        }
                    })
                },
                |r| if r.is_some() { "rewritten" } else { "ok" },
            );
            match result {
                Ok(None) => {}
                Ok(Some((new, body))) => {
                    rewritten = Some(new);
                    changed = Some(body);
                }
                Err(e) => self.contain(p, "adapt", e)?,
            }
        }
        Ok(changed)
    }

    /// Whether any plugin validates this request's answers (the proxy only buffers for them
    /// when so): one with the stage whose `validate_when` takes the request.
    pub fn validates(&self) -> bool {
        self.validators().next().is_some()
    }

    /// The plugins whose `validate` this request's answers go to, in order, with their
    /// state for the request.
    fn validators(&self) -> impl Iterator<Item = (&Arc<Plugin>, &Scratch)> {
        let req = self
            .request
            .as_ref()
            .filter(|_| self.set.any(|s| s.validate));
        let with_scratch = self.set.plugins.iter().zip(self.scratch.iter());
        with_scratch.filter(move |(p, _)| {
            req.is_some_and(|r| {
                p.loaded.stages.validate && validate_applies(p.loaded.options.validate_when, r)
            })
        })
    }

    /// Whether a streamed answer is held until complete so the `validate` plugins judge it
    /// (some `validate` plugin has `validate_streams = "buffer"`); otherwise streams are
    /// relayed as they come and not validated.
    pub fn holds_streams(&self) -> bool {
        self.validators()
            .any(|(p, _)| p.loaded.options.hold_streams)
    }

    /// The `chunks` plugins (WIT `0.2`) a streamed answer's text goes through as it is
    /// relayed; `None` when there are none, or the stream is held for `validate` instead.
    pub fn chunk_hook(&self) -> Option<ChunkHook> {
        if self.request.is_none() || !self.set.any(|s| s.chunks) || self.holds_streams() {
            return None;
        }
        let plugins = (self.set.plugins.iter().zip(self.scratch.iter()))
            .filter(|(p, _)| p.loaded.stages.chunks)
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect();
        Some(ChunkHook {
            plugins,
            metrics: self.metrics.clone(),
            gateway_metrics: self.gateway_metrics.clone(),
        })
    }

    /// Stage `validate` on a complete answer: the first plugin that rejects or replaces
    /// decides. Each plugin call's span goes under `parent` (the request's `validate` span).
    pub fn validate(
        &self,
        parent: &telemetry::SpanParent,
        body: &[u8],
        backend: &str,
        model: &str,
    ) -> Result<ValidateOutcome, GatewayError> {
        let Some(req) = &self.request else {
            return Ok(ValidateOutcome::Accept);
        };
        if !self.validates() {
            return Ok(ValidateOutcome::Accept);
        }
        let resp = convert::response(body, backend, model);
        for (p, scratch) in self.validators() {
            let call = || {
                p.loaded.validate(scratch, req, &resp).and_then(|v| match v {
                types::Verdict::Accept => Ok(ValidateOutcome::Accept),
                types::Verdict::Reject(reason) => Ok(ValidateOutcome::Reject {
                    plugin: p.name.clone(),
                    reason,
                }),
                types::Verdict::Replace(new) => {
                    match serde_json::from_str::<serde_json::Value>(&new) {
                        Ok(serde_json::Value::Object(_)) => Ok(ValidateOutcome::Replace {
                            plugin: p.name.clone(),
                            body: Bytes::from(new),
                        }),
                        _ => Err(CallError::bad_return(
                            "validate replaced the answer with something that is not a JSON object",
                        )),
                    }
                }
            })
            };
            let result = self.observe(parent, p, "validate", call, |o| match o {
                ValidateOutcome::Accept => "accepted",
                ValidateOutcome::Reject { .. } => "rejected",
                ValidateOutcome::Replace { .. } => "replaced",
            });
            match result {
                Ok(ValidateOutcome::Accept) => {}
                Ok(other) => return Ok(other),
                Err(e) => self.contain(p, "validate", e)?,
            }
        }
        Ok(ValidateOutcome::Accept)
    }
}

/// The `chunks` stage of one streamed answer: its plugins, with their state for the
/// request, run in order on each piece of text (each sees what the one before returned).
#[derive(Clone)]
pub struct ChunkHook {
    plugins: Vec<(Arc<Plugin>, Scratch)>,
    metrics: Arc<PluginMetrics>,
    /// Timed per call; no span per piece, a stream has hundreds.
    gateway_metrics: Option<Arc<Metrics>>,
}

impl ChunkHook {
    /// The text the client gets for `text`, the next piece of choice `choice`. A failed call
    /// is counted and logged; the text then goes on as the plugin got it (`on_error =
    /// "continue"`) or the stream ends with a `plugin_failed` error (`"reject"`).
    pub fn on_chunk(&self, choice: u32, text: &str, last: bool) -> Result<String, GatewayError> {
        let mut text = text.to_string();
        for (p, scratch) in &self.plugins {
            self.metrics.call(&p.name, "chunks");
            let started = Instant::now();
            let result = p.loaded.on_chunk(scratch, choice, &text, last);
            if let Some(m) = &self.gateway_metrics {
                m.plugin_call(&p.name, "chunks", started.elapsed());
            }
            match result {
                Ok(new) => text = new,
                Err(e) => {
                    self.metrics.error(&p.name, "chunks", e.kind.label());
                    tracing::warn!(plugin = &*p.name, version = %p.version, stage = "chunks", kind = e.kind.label(), error = %e.detail, "plugin call failed");
                    if p.loaded.options.on_error == OnError::Reject {
                        return Err(GatewayError::PluginFailed {
                            plugin: p.name.to_string(),
                            stage: "chunks",
                            detail: e.kind.label().to_string(),
                        });
                    }
                }
            }
        }
        Ok(text)
    }
}

/// Check a plugin's decision against the config: routes and backends must exist.
fn resolve(rt: &Runtime, d: types::Decision) -> Result<Resolved, CallError> {
    let route = match &d.route {
        None => None,
        Some(name) => Some(rt.route_for(name).cloned().ok_or_else(|| {
            CallError::bad_return(format!("decision names an unknown route {name:?}"))
        })?),
    };
    let target = match &d.target {
        None => None,
        Some(t) => {
            let backend = rt.backend(&t.backend).cloned().ok_or_else(|| {
                CallError::bad_return(format!("decision names an unknown backend {:?}", t.backend))
            })?;
            if t.model.is_empty() {
                return Err(CallError::bad_return("decision names an empty model"));
            }
            Some(Target {
                backend,
                model: Some(Arc::from(t.model.as_str())),
                weight: 1,
            })
        }
    };
    Ok((route, target, d))
}

/// `serve`: load the configured plugins before the gateway reports ready, then watch the
/// folder. A plugin that fails to load is logged and left out (a fixed file is picked up
/// live); a missing folder is watched until it appears.
pub fn start(plugins: &Arc<Plugins>, rt: &Runtime) {
    let Some(settings) = &rt.plugins else { return };
    let started = Instant::now();
    match plugins.load_all(settings) {
        Ok(report) => {
            for p in &report.loaded {
                tracing::info!(
                    plugin = &*p.name,
                    version = %p.version,
                    stages = %p.stages().names().join(","),
                    cache = ?p.cache,
                    load_ms = p.load_time.as_secs_f64() * 1e3,
                    "plugin loaded"
                );
            }
            for (path, e) in &report.failed {
                plugins.metrics.load_error(&Arc::from(plugin_name(path)));
                tracing::error!(file = %path.display(), error = %e, "plugin failed to load");
            }
            tracing::info!(
                loaded = report.loaded.len(),
                failed = report.failed.len(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "plugins ready"
            );
        }
        Err(e) => {
            tracing::warn!(dir = %settings.dir.display(), error = %e, "no plugins loaded");
            plugins.set.store(Arc::new(PluginSet {
                settings: Some(settings.clone()),
                ..PluginSet::default()
            }));
        }
    }
    if settings.watch {
        Plugins::watch(plugins);
    }
}

/// `check`: compile and instantiate every plugin, print the stages each implements; the
/// first failure is an error naming the file.
pub fn check(rt: &Runtime) -> Result<(), String> {
    let Some(settings) = &rt.plugins else {
        return Ok(());
    };
    let plugins = Plugins::default();
    let report = plugins
        .load_all(settings)
        .map_err(|e| format!("plugins.dir: {e}"))?;
    println!(
        "plugins: {} ({} loaded)",
        settings.dir.display(),
        report.loaded.len()
    );
    for p in &report.loaded {
        println!(
            "  {} ({}, {} KiB, version {}): stages {}{}",
            p.name,
            p.path.display(),
            p.size() / 1024,
            p.version,
            p.stages().names().join(", "),
            if p.warm_pool() { " [warm pool]" } else { "" }
        );
        let l = p.options();
        if l != settings.defaults {
            println!(
                "    overrides: timeout {} ms, memory {} MiB, on_error {}, validate_streams {}",
                l.timeout.as_millis(),
                l.memory_bytes / (1024 * 1024),
                match l.on_error {
                    OnError::Continue => "continue",
                    OnError::Reject => "reject",
                },
                if l.hold_streams { "buffer" } else { "skip" }
            );
        }
    }
    if let Some((path, e)) = report.failed.first() {
        return Err(format!("plugin {}: {e}", path.display()));
    }
    Ok(())
}

/// Whether an answer to `req` goes to a `validate` plugin configured with `when`.
fn validate_applies(when: ValidateWhen, req: &types::Request) -> bool {
    use types::ResponseFormat;
    match when {
        ValidateWhen::Always => true,
        ValidateWhen::Only { json, tools } => {
            (json
                && matches!(
                    req.response_format,
                    Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema(_))
                ))
                || (tools && !req.tools.is_empty())
        }
    }
}

/// The WIT conversion as the fuzz targets (`fuzz/`) drive it, on bytes from outside: a
/// parsed client body to the record plugins see and back to JSON (what `adapt` does with a
/// plugin's answer), and an upstream answer to the record `validate` sees. The JSON, or the
/// conversion's error.
#[doc(hidden)]
pub fn fuzz_convert(
    body: &RequestBody,
    endpoint: Endpoint,
    answer: &[u8],
) -> Result<Vec<u8>, CallError> {
    let _ = convert::response(answer, "backend", "model");
    convert::request_json(&convert::request(body, endpoint), endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_when_takes_the_requests_it_names() {
        use crate::base::Endpoint;
        use crate::base::openai::RequestBody;
        let req = |extra: &str| {
            let text =
                format!(r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#);
            let body = RequestBody::parse(bytes::Bytes::from(text), Endpoint::ChatCompletions);
            convert::request(&body.unwrap(), Endpoint::ChatCompletions)
        };
        let prose = req("");
        let text = req(r#","response_format":{"type":"text"}"#);
        let object = req(r#","response_format":{"type":"json_object"}"#);
        let schema = req(
            r#","response_format":{"type":"json_schema","json_schema":{"name":"p","schema":{}}}"#,
        );
        let tools =
            req(r#","tools":[{"type":"function","function":{"name":"f","parameters":{}}}]"#);
        let json = ValidateWhen::Only {
            json: true,
            tools: false,
        };
        let tool = ValidateWhen::Only {
            json: false,
            tools: true,
        };
        let both = ValidateWhen::Only {
            json: true,
            tools: true,
        };
        for r in [&prose, &text, &object, &schema, &tools] {
            assert!(validate_applies(ValidateWhen::Always, r));
        }
        let takes = |w: ValidateWhen| {
            [&prose, &text, &object, &schema, &tools].map(|r| validate_applies(w, r))
        };
        assert_eq!(takes(json), [false, false, true, true, false]);
        assert_eq!(takes(tool), [false, false, false, false, true]);
        assert_eq!(takes(both), [false, false, true, true, true]);
    }
}
