//! The running gateway: its services, its config history and whether it is ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::reload::Control;
use crate::config::Runtime;
use crate::services::{Services, Snapshot};

/// Everything the HTTP surface needs, shared by all connections.
pub struct Gateway {
    pub services: Arc<Services>,
    /// Config history: reload and rollback.
    pub control: Control,
    ready: AtomicBool,
}

impl Gateway {
    pub fn new(services: Arc<Services>) -> Arc<Self> {
        Arc::new(Gateway {
            services,
            control: Control::default(),
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

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
