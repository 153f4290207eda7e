//! Long-lived state built from config, knowing nothing of requests.
//!
//! ```text
//! services
//! ├── upstream     clients, pools, breakers, health, retry budget  (per backend URL)
//! ├── governance   keys, limits, budgets, the ledger and its store
//! ├── plugins      the WebAssembly engine, the loaded plugins, one request's plugin pass
//! ├── rollout      staged rollouts: live weights, outcome counters, the controller
//! ├── shadow       the mirror queue, comparison and the pairs' store
//! └── observe      metrics, traces, the access log
//! ```
//!
//! [`Services`] bundles them for the request path, which receives it as a handle; the config
//! version in force is a [`Snapshot`] (the validated config and the live upstreams built for
//! it), loaded once per request and replaced atomically by a reload.

pub mod cache;
pub mod capture;
pub mod config_history;
pub mod context;
pub mod governance;
pub mod judge;
pub mod observe;
pub mod plugins;
pub mod rollout;
pub mod shadow;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Backend, Runtime};
use governance::Governance;
use observe::metrics::Metrics;
use observe::telemetry::Tracer;
use plugins::Plugins;
use shadow::ShadowEngine;
use upstream::{Upstream, Upstreams};

/// One config version with the live upstreams built for it.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Runtime>,
    /// `upstreams[i]` serves `config.backends[i]`.
    pub upstreams: Arc<[Arc<Upstream>]>,
}

impl Snapshot {
    /// Build the live side of `config` from the long-lived upstream state.
    pub fn build(config: Arc<Runtime>, upstreams: &Upstreams) -> Result<Snapshot, String> {
        let built = upstreams.build(&config)?;
        Ok(Snapshot {
            config,
            upstreams: built.into(),
        })
    }

    /// The live upstream of `backend`, one of this version's backends.
    pub fn upstream(&self, backend: &Backend) -> &Arc<Upstream> {
        let up = &self.upstreams[backend.index];
        debug_assert!(Arc::ptr_eq(
            &up.backend,
            &self.config.backends[backend.index]
        ));
        up
    }
}

/// Everything the request path uses beside the request itself.
pub struct Services {
    snapshot: ArcSwap<Snapshot>,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    pub plugins: Arc<Plugins>,
    /// Keys, limits, budgets and the ledger; `None` only where a gateway runs without a
    /// store (tests and benchmarks that build one by hand).
    pub governance: Option<Arc<Governance>>,
    /// The mirror queue; `None` likewise.
    pub shadow: Option<ShadowEngine>,
    /// The capture queue (`routes[].capture`); `None` likewise.
    pub capture: Option<capture::CaptureEngine>,
    pub tracer: Tracer,
    /// Ends the streams still relayed when a shutdown's grace period is over.
    pub cutoff: StreamCutoff,
    /// Staged rollouts: the weights the request path reads and the counters it bumps.
    pub rollouts: rollout::Rollouts,
    /// The exact response cache (routes opt in with their `cache`).
    pub cache: Arc<cache::ResponseCache>,
    /// Context windows the backends reported, and the overflow counts.
    pub context: Arc<context::ContextWindows>,
}

/// The signal that ends streams still running at the end of a shutdown's grace period, so
/// each gets its error event and ledger row while the store is still open (rather than
/// being dropped with the process).
#[derive(Debug)]
pub struct StreamCutoff(tokio::sync::watch::Sender<bool>);

impl Default for StreamCutoff {
    fn default() -> Self {
        StreamCutoff(tokio::sync::watch::Sender::new(false))
    }
}

impl StreamCutoff {
    /// End every stream now.
    pub fn cut(&self) {
        self.0.send_replace(true);
    }

    /// Resolves when [`cut`](Self::cut) is called (never, if it never is).
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            if rx.wait_for(|cut| *cut).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// What [`Services::new`] is made from.
pub struct ServicesParts {
    pub snapshot: Snapshot,
    pub upstreams: Upstreams,
    pub metrics: Arc<Metrics>,
    pub plugins: Arc<Plugins>,
    pub governance: Option<Arc<Governance>>,
    pub shadow: Option<ShadowEngine>,
    pub capture: Option<capture::CaptureEngine>,
    pub tracer: Tracer,
}

impl Services {
    pub fn new(parts: ServicesParts) -> Services {
        Services {
            snapshot: ArcSwap::from_pointee(parts.snapshot),
            upstreams: parts.upstreams,
            metrics: parts.metrics,
            plugins: parts.plugins,
            governance: parts.governance,
            shadow: parts.shadow,
            capture: parts.capture,
            tracer: parts.tracer,
            cutoff: StreamCutoff::default(),
            rollouts: rollout::Rollouts::default(),
            cache: Arc::default(),
            context: Arc::default(),
        }
    }

    /// Services for `config` with nothing beside the upstreams: no store, no shadow, no
    /// tracing, no plugins loaded.
    pub fn bare(config: Runtime) -> Result<Services, String> {
        let upstreams = Upstreams::default();
        let snapshot = Snapshot::build(Arc::new(config), &upstreams)?;
        Ok(Services::new(ServicesParts {
            snapshot,
            upstreams,
            metrics: Arc::new(Metrics::default()),
            plugins: Arc::new(Plugins::default()),
            governance: None,
            shadow: None,
            capture: None,
            tracer: Tracer::off(),
        }))
    }

    /// The config version in force now; a request loads it once and finishes on it.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Put a version in force; requests in flight keep the one they loaded.
    pub fn install(&self, snapshot: Arc<Snapshot>) {
        self.plugins.reconfigure(&snapshot.config);
        self.snapshot.store(snapshot);
    }
}
