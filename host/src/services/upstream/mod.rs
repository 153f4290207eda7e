//! The live side of the backends: connection pools, per-URL state (breaker, in-flight,
//! latency, health), the retry budget and attempt counts.
//!
//! ```text
//! config::Backend (data) ──Upstreams::build──► Upstream { backend, client, urls: [UrlState] }
//!                                               one per backend of a config version
//! ```
//!
//! [`Upstreams`] is the long-lived owner: it keeps one HTTP client per distinct (connect
//! timeout, extra CA) pair and one [`pool::UrlState`] per (backend name, base URL), so a
//! config reload that rebuilds every [`Upstream`] keeps warm connections, breakers and
//! latency history. It knows nothing of requests; the request path's attempt loop drives it.

pub mod breaker;
pub mod client;
pub mod health;
pub mod pool;
pub mod throughput;
pub mod traffic;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;

use crate::config::{Backend, Runtime};
use client::HttpClient;
use pool::UrlState;

/// One backend of one config version, live: its settings, its clients and its URLs' state.
pub struct Upstream {
    pub backend: Arc<Backend>,
    clients: Arc<ShardClients>,
    /// Live state of each URL, parallel to `backend.urls`.
    pub urls: Vec<Arc<UrlState>>,
}

impl Upstream {
    /// The client for the calling thread's shard (see [`crate::base::shard`]).
    pub fn client(&self) -> &HttpClient {
        self.clients.get()
    }
}

/// One client per serving shard, one for the background thread and one for threads of no
/// shard: a pooled connection is used by the runtime that opened it.
pub struct ShardClients {
    shards: Vec<HttpClient>,
    background: HttpClient,
    other: HttpClient,
}

impl ShardClients {
    fn get(&self) -> &HttpClient {
        match crate::base::shard::current() {
            Some(crate::base::shard::BACKGROUND) => &self.background,
            Some(i) => self.shards.get(i).unwrap_or(&self.other),
            None => &self.other,
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// What one client is shared by: backends with the same connect timeout and extra CA file.
type ClientKey = (Duration, Option<std::path::PathBuf>);

/// Everything upstream that outlives a config version.
pub struct Upstreams {
    clients: Mutex<HashMap<ClientKey, Arc<ShardClients>>>,
    /// Serving shards (`[server] threads` at start): each gets its own clients.
    shards: usize,
    /// The platform's CA roots, read on first use.
    native_roots: OnceLock<Vec<CertificateDer<'static>>>,
    urls: Mutex<HashMap<(String, String), Arc<UrlState>>>,
    /// The origin of the URL states' millisecond clocks.
    epoch: Instant,
    /// The retry budget and the attempt counters.
    pub traffic: traffic::Traffic,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::with_shards(0)
    }
}

impl Upstreams {
    /// Upstreams whose clients are kept per serving shard, `shards` of them.
    pub fn with_shards(shards: usize) -> Self {
        Upstreams {
            clients: Mutex::new(HashMap::new()),
            shards,
            native_roots: OnceLock::new(),
            urls: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            traffic: traffic::Traffic::default(),
        }
    }

    /// The live backends of `rt`, in its order (`Upstream` i serves `rt.backends[i]`).
    /// Fails only when a backend's TLS roots cannot make a client, which validation checks
    /// beforehand.
    pub fn build(&self, rt: &Runtime) -> Result<Vec<Arc<Upstream>>, String> {
        rt.backends
            .iter()
            .map(|b| {
                Ok(Arc::new(Upstream {
                    backend: b.clone(),
                    clients: self
                        .clients(b)
                        .map_err(|e| format!("backend {}: {e}", b.name))?,
                    urls: b
                        .urls
                        .iter()
                        .map(|u| self.url_state(&b.name, &u.base))
                        .collect(),
                }))
            })
            .collect()
    }

    fn clients(&self, b: &Backend) -> Result<Arc<ShardClients>, String> {
        let key = (b.connect_timeout, b.tls.ca_file.clone());
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let native = self
            .native_roots
            .get_or_init(|| rustls_native_certs::load_native_certs().certs);
        let build = || client::build_client(b.connect_timeout, native, &b.tls.extra_roots);
        let c = Arc::new(ShardClients {
            shards: (0..self.shards)
                .map(|_| build())
                .collect::<Result<_, _>>()?,
            background: build()?,
            other: build()?,
        });
        map.insert(key, c.clone());
        Ok(c)
    }

    /// The live state of `backend`'s URL `base` (created on first use).
    fn url_state(&self, backend: &str, base: &str) -> Arc<UrlState> {
        let mut map = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((backend.to_string(), base.to_string()))
            .or_insert_with(|| Arc::new(UrlState::new(backend, base, self.epoch)))
            .clone()
    }
}
