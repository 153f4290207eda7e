//! Prometheus metrics: lock-free counters and histograms, rendered as text on `/metrics`.
//!
//! The hot path touches one sharded map entry per metric per request (an atomic add on an
//! existing series); rendering walks the maps only when Prometheus scrapes. Names follow the
//! OpenTelemetry GenAI conventions where they exist and `switchyard_*` otherwise.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

/// Upper bounds (seconds) for request-duration histograms: the GenAI semantic
/// conventions' recommended buckets for `gen_ai.client.operation.duration`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Upper bounds (seconds) for the gateway's own added time: microseconds matter here.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// A histogram with fixed buckets, updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}");
            let _ = writeln!(out, "{name}_count {count}");
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}

type RouteBackend = (Arc<str>, Arc<str>);

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    requests: DashMap<(Arc<str>, Arc<str>, u16), AtomicU64>,
    duration: DashMap<RouteBackend, Histogram>,
    overhead: Histogram,
    upstream_errors: DashMap<(Arc<str>, &'static str), AtomicU64>,
    in_flight: AtomicI64,
    client_disconnects: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: DashMap::new(),
            duration: DashMap::new(),
            overhead: Histogram::new(OVERHEAD_BUCKETS),
            upstream_errors: DashMap::new(),
            in_flight: AtomicI64::new(0),
            client_disconnects: AtomicU64::new(0),
        }
    }
}

/// Label value for requests that never reached a route or backend.
pub const NONE: &str = "none";

impl Metrics {
    /// One finished request: `route` and `backend` are `"none"` when it never got that far.
    pub fn request(&self, route: &Arc<str>, backend: &Arc<str>, status: u16, took: Duration) {
        let key = (route.clone(), backend.clone(), status);
        match self.requests.get(&key) {
            Some(c) => {
                c.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.requests
                    .entry(key)
                    .or_insert_with(|| AtomicU64::new(0))
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let key = (route.clone(), backend.clone());
        match self.duration.get(&key) {
            Some(h) => h.observe(took),
            None => self
                .duration
                .entry(key)
                .or_insert_with(|| Histogram::new(DURATION_BUCKETS))
                .observe(took),
        }
    }

    /// Time the gateway itself added to a request (everything but waiting on upstream).
    pub fn overhead(&self, d: Duration) {
        self.overhead.observe(d);
    }

    pub fn upstream_error(&self, backend: &Arc<str>, kind: &'static str) {
        self.upstream_errors
            .entry((backend.clone(), kind))
            .or_insert_with(|| AtomicU64::new(0))
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_disconnect(&self) {
        self.client_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a request as in flight until the guard drops.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn current_in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP switchyard_requests_total Requests answered, by route, serving backend and HTTP status.\n# TYPE switchyard_requests_total counter\n");
        for e in self.requests.iter() {
            let (route, backend, status) = e.key();
            let _ = writeln!(
                out,
                "switchyard_requests_total{{route=\"{}\",backend=\"{}\",status=\"{}\"}} {}",
                escape(route),
                escape(backend),
                status,
                e.value().load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP switchyard_request_duration_seconds Time from request received to response complete.\n# TYPE switchyard_request_duration_seconds histogram\n");
        for e in self.duration.iter() {
            let (route, backend) = e.key();
            let labels = format!(
                "route=\"{}\",backend=\"{}\"",
                escape(route),
                escape(backend)
            );
            e.value()
                .render(&mut out, "switchyard_request_duration_seconds", &labels);
        }
        out.push_str("# HELP switchyard_gateway_overhead_seconds Time the gateway added to a request, excluding time waiting on the upstream.\n# TYPE switchyard_gateway_overhead_seconds histogram\n");
        self.overhead
            .render(&mut out, "switchyard_gateway_overhead_seconds", "");
        out.push_str("# HELP switchyard_upstream_errors_total Failed upstream attempts, by backend and kind.\n# TYPE switchyard_upstream_errors_total counter\n");
        for e in self.upstream_errors.iter() {
            let (backend, kind) = e.key();
            let _ = writeln!(
                out,
                "switchyard_upstream_errors_total{{backend=\"{}\",kind=\"{}\"}} {}",
                escape(backend),
                kind,
                e.value().load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchyard_requests_in_flight Requests being handled now.\n# TYPE switchyard_requests_in_flight gauge\nswitchyard_requests_in_flight {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP switchyard_client_disconnects_total Streams the client abandoned before the end.\n# TYPE switchyard_client_disconnects_total counter\nswitchyard_client_disconnects_total {}",
            self.client_disconnects.load(Ordering::Relaxed)
        );
        out
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Escape a label value per the text exposition format.
fn escape(v: &str) -> String {
    if !v.contains(['\\', '"', '\n']) {
        return v.to_string();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_histograms_render() {
        let m = Metrics::default();
        let r: Arc<str> = Arc::from("gpt-4o");
        let b: Arc<str> = Arc::from("local");
        m.request(&r, &b, 200, Duration::from_millis(15));
        m.request(&r, &b, 200, Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains(
            "switchyard_requests_total{route=\"gpt-4o\",backend=\"local\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "switchyard_request_duration_seconds_bucket{route=\"gpt-4o\",backend=\"local\",le=\"0.02\"} 1"
        ));
        assert!(text.contains(
            "switchyard_request_duration_seconds_count{route=\"gpt-4o\",backend=\"local\"} 2"
        ));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
