//! The running gateway: its services, its config history and whether it is ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::admin::console::history::History;
use super::admin::throttle::AdminThrottle;
use super::reload::Control;
use crate::config::Runtime;
use crate::services::{Services, Snapshot};

/// Everything the HTTP surface needs, shared by all connections.
pub struct Gateway {
    pub services: Arc<Services>,
    /// Config history: reload and rollback.
    pub control: Control,
    /// Wrong admin tokens, per client address.
    pub admin_throttle: AdminThrottle,
    /// The last hour of backend and route figures, for the console (`/ui`).
    pub console: History,
    /// The admin API has a listener of its own (`[admin] listen` at start), so the public
    /// port does not serve it.
    admin_listener: AtomicBool,
    ready: AtomicBool,
}

impl Gateway {
    pub fn new(services: Arc<Services>) -> Arc<Self> {
        Arc::new(Gateway {
            services,
            control: Control::default(),
            admin_throttle: AdminThrottle::default(),
            console: History::default(),
            admin_listener: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        })
    }

    /// The config version in force now, with its live upstreams.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.services.snapshot()
    }

    /// The config in force now.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.services.snapshot().config.clone()
    }

    /// `/readyz`: config and plugins are loaded and the listener is up.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn has_admin_listener(&self) -> bool {
        self.admin_listener.load(Ordering::Acquire)
    }

    /// The admin API got its own listener: the public port stops serving it.
    pub fn set_admin_listener(&self) {
        self.admin_listener.store(true, Ordering::Release);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
