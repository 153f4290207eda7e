//! The live gateway: the current config version and the process-wide state beside it.
//!
//! The config is an `ArcSwap<Runtime>`: a request loads the `Arc` once at its start and
//! finishes on that version, and a reload is one atomic store, never a lock on the request
//! path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;

use crate::config::Runtime;
use crate::metrics::Metrics;

/// Everything a request handler needs, shared by all connections.
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    ready: AtomicBool,
    /// Config history: reload and rollback.
    pub control: crate::reload::Control,
    /// The answer check run before a complete answer is served (`validate` plugins); a
    /// rejection moves the request to the next fallback.
    pub validator: arc_swap::ArcSwapOption<Box<dyn crate::attempt::Validate>>,
    /// Keys, limits, budgets and the ledger; `None` only in tests that build a bare gateway.
    pub governance: Option<Arc<crate::governance::Governance>>,
}

impl Gateway {
    pub fn new(runtime: Runtime) -> Arc<Self> {
        Self::with_governance(runtime, None)
    }

    pub fn with_governance(
        runtime: Runtime,
        governance: Option<Arc<crate::governance::Governance>>,
    ) -> Arc<Self> {
        Arc::new(Gateway {
            runtime: ArcSwap::from_pointee(runtime),
            metrics: Arc::new(Metrics::default()),
            ready: AtomicBool::new(false),
            control: crate::reload::Control::default(),
            validator: arc_swap::ArcSwapOption::empty(),
            governance,
        })
    }

    /// The config version in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Replace the config version; requests in flight keep the one they loaded.
    pub fn swap_runtime(&self, rt: Runtime) -> Arc<Runtime> {
        self.runtime.swap(Arc::new(rt))
    }

    /// Put an already validated version in force (reload, rollback).
    pub fn store_runtime(&self, rt: Arc<Runtime>) {
        self.runtime.store(rt);
    }

    /// `/readyz`: config and plugins are loaded and the listener is up.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
