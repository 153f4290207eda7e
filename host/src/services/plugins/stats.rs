//! The backend snapshot `classify` sees: health, latency, error rate and in-flight count per
//! backend, from what the gateway itself observed.
//!
//! Each backend keeps exponentially weighted averages (no windows, no locks: a handful of
//! atomics updated once per request), fed by the request path's `finish` phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::base::CounterMap;

use super::bindings::types::{BackendStatus, Health};
use crate::config::Runtime;

/// Weight of the newest observation in the moving averages.
const ALPHA: f64 = 0.2;
/// Below this many observations a backend's health is `unknown`.
const MIN_SAMPLES: u64 = 3;

#[derive(Default)]
struct Stat {
    in_flight: AtomicU32,
    samples: AtomicU64,
    /// f64 bits of the error-rate average.
    error_rate: AtomicU64,
    /// f64 bits of the latency average (ms, successes only).
    latency_ms: AtomicU64,
}

/// Per-backend observations, keyed by backend name.
#[derive(Default)]
pub struct BackendStats {
    by_name: CounterMap<Arc<str>, Arc<Stat>>,
}

/// Counts a request in flight to a backend until dropped.
pub struct InFlight(Arc<Stat>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn ewma(cell: &AtomicU64, value: f64, first: bool) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        let old = f64::from_bits(old);
        let new = if first {
            value
        } else {
            old + ALPHA * (value - old)
        };
        Some(new.to_bits())
    });
}

impl BackendStats {
    fn stat(&self, backend: &Arc<str>) -> Arc<Stat> {
        if let Some(s) = self.by_name.get(backend) {
            return s.clone();
        }
        self.by_name.entry(backend.clone()).or_default().clone()
    }

    /// A request to `backend` starts.
    pub fn start(&self, backend: &Arc<str>) -> InFlight {
        let s = self.stat(backend);
        s.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(s)
    }

    /// A request to `backend` ended: `ok` (a 2xx answer) after `latency_ms`.
    pub fn record(&self, backend: &Arc<str>, ok: bool, latency_ms: f64) {
        let s = self.stat(backend);
        let first = s.samples.fetch_add(1, Ordering::Relaxed) == 0;
        ewma(&s.error_rate, if ok { 0.0 } else { 1.0 }, first);
        if ok {
            let had_latency = f64::from_bits(s.latency_ms.load(Ordering::Relaxed)) > 0.0;
            ewma(&s.latency_ms, latency_ms, !had_latency);
        }
    }

    /// The snapshot of every configured backend.
    pub fn snapshot(&self, rt: &Runtime) -> Vec<BackendStatus> {
        rt.backends
            .iter()
            .map(|b| {
                let s = self.by_name.get(&b.name).map(|s| s.clone());
                let (health, latency_ms, error_rate, in_flight) = match s {
                    None => (Health::Unknown, 0.0, 0.0, 0),
                    Some(s) => {
                        let samples = s.samples.load(Ordering::Relaxed);
                        let err = f64::from_bits(s.error_rate.load(Ordering::Relaxed));
                        let health = if samples < MIN_SAMPLES {
                            Health::Unknown
                        } else if err >= 0.5 {
                            Health::Unhealthy
                        } else if err >= 0.1 {
                            Health::Degraded
                        } else {
                            Health::Healthy
                        };
                        (
                            health,
                            f64::from_bits(s.latency_ms.load(Ordering::Relaxed)),
                            err,
                            s.in_flight.load(Ordering::Relaxed),
                        )
                    }
                };
                BackendStatus {
                    name: b.name.to_string(),
                    health,
                    latency_ms,
                    error_rate,
                    in_flight,
                    price: None,
                }
            })
            .collect()
    }
}
