//! [`Runtime`]: one validated config version, the snapshot every reader loads once.

use std::collections::HashMap;
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
