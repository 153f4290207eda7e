//! [`Runtime`]: one validated config version, the snapshot every reader loads once.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use super::ConfigSource;
use super::admin::AdminSettings;
use super::backend::Backend;
use super::governance::GovConfig;
use super::local_worker::LocalWorkerSettings;
use super::plugins::Settings as PluginSettings;
use super::route::Route;
use super::server::ServerSettings;
use super::state::StateSettings;
use super::telemetry::TelemetrySettings;
use super::traffic::TrafficSettings;

/// The metric label of every model name the config does not name.
pub const OTHER_MODEL: &str = "other";

/// The model names `routes` and `gov` name, for [`Runtime::metric_model`].
pub(super) fn metric_models(routes: &[Arc<Route>], gov: &GovConfig) -> HashSet<Arc<str>> {
    let mut out: HashSet<Arc<str>> = HashSet::new();
    for r in routes {
        if &*r.name != "*" {
            out.insert(r.name.clone());
        }
        let overrides = r.flags.overrides.iter().flat_map(|o| &o.targets);
        let shadow = r.shadow.iter().map(|s| &s.target);
        for t in r
            .targets
            .iter()
            .chain(&r.fallback)
            .chain(overrides)
            .chain(shadow)
        {
            if let Some(m) = &t.model {
                out.insert(m.clone());
            }
        }
    }
    for m in gov.priced_models() {
        if !out.contains(m) {
            out.insert(Arc::from(m));
        }
    }
    out
}

/// A validated configuration: one version of the config, as the rest of the gateway reads it.
/// Data only; the live objects built from it (upstream clients and URL state, plugins) belong
/// to `services`, which pairs each version with them in a `services::Snapshot`.
#[derive(Debug)]
pub struct Runtime {
    pub source: ConfigSource,
    pub server: ServerSettings,
    pub backends: Vec<Arc<Backend>>,
    /// Routes in file order (the catch-all, if any, included).
    pub routes: Vec<Arc<Route>>,
    pub(super) route_index: HashMap<String, usize>,
    pub(super) catch_all: Option<usize>,
    /// Every model name the config itself names: the only model label values metrics use.
    pub(super) metric_models: HashSet<Arc<str>>,
    pub(super) other_model: Arc<str>,
    pub plugins_dir: Option<PathBuf>,
    /// `[plugins]`, checked; `None` when the file has no `[plugins] dir`.
    pub plugins: Option<Arc<PluginSettings>>,
    pub telemetry: Option<TelemetrySettings>,
    pub state: Option<StateSettings>,
    /// `[admin]`: the admin API's token, when enabled.
    pub admin: Option<AdminSettings>,
    /// `[traffic]`: retry budget and backoff.
    pub traffic: TrafficSettings,
    /// `[local_worker]`: started once at `serve` (a reload does not restart it).
    pub local_worker: Option<LocalWorkerSettings>,
    pub governance: GovConfig,
    /// `[cache]`: the response cache's memory store (routes opt in with their `cache`).
    pub cache: super::cache::CacheSettings,
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

    /// The label metrics give the model `sent` upstream: the name itself when the config
    /// names it (a route, a target's or fallback's model, a priced model), else
    /// [`OTHER_MODEL`]. A client's free text on a `*` route would otherwise mint new series
    /// without bound.
    pub fn metric_model(&self, sent: &str) -> Arc<str> {
        self.metric_models
            .get(sent)
            .unwrap_or(&self.other_model)
            .clone()
    }

    pub fn backend(&self, name: &str) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| &*b.name == name)
    }
}
