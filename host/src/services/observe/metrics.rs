//! Prometheus metrics: lock-free counters and histograms, rendered as text on `/metrics`.
//!
//! The hot path touches one sharded map entry per metric per request (an atomic add on an
//! existing series); rendering walks the maps only when Prometheus scrapes. Names follow the
//! OpenTelemetry GenAI conventions where they exist and `switchyard_*` otherwise.

use std::fmt::{Display, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::base::CounterMap;

use crate::base::openai::Usage;

/// Upper bounds (seconds) for request-duration histograms: the GenAI semantic
/// conventions' recommended buckets for `gen_ai.client.operation.duration`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Upper bounds (seconds) for the gateway's own added time: microseconds matter here.
pub const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Upper bounds (tokens) for `gen_ai.client.token.usage`, as the GenAI conventions recommend.
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Upper bounds (seconds) for time to first token, as the GenAI conventions recommend.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Upper bounds (seconds) for time per output token, as the GenAI conventions recommend.
pub const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];

/// A histogram with fixed buckets, updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Box<[AtomicU64]>,
    /// Sum of observations in `unit`s (nanoseconds for durations, 1 for counts): an integer
    /// so that adding is one atomic instruction.
    sum: AtomicU64,
    unit: f64,
    count: AtomicU64,
}

impl Histogram {
    /// A histogram of durations (observed with [`Histogram::observe`]).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self::with_unit(bounds, 1e-9)
    }

    /// A histogram of whole numbers such as token counts ([`Histogram::observe_count`]).
    pub fn counts(bounds: &'static [f64]) -> Self {
        Self::with_unit(bounds, 1.0)
    }

    fn with_unit(bounds: &'static [f64], unit: f64) -> Self {
        Histogram {
            bounds,
            buckets: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            unit,
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.record(
            d.as_secs_f64(),
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    pub fn observe_count(&self, n: u64) {
        self.record(n as f64, n);
    }

    fn record(&self, value: f64, units: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(units, Ordering::Relaxed);
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
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.unit;
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
    requests: CounterMap<(Arc<str>, Arc<str>, u16), AtomicU64>,
    duration: CounterMap<RouteBackend, Histogram>,
    overhead: Histogram,
    upstream_errors: CounterMap<(Arc<str>, &'static str), AtomicU64>,
    in_flight: AtomicI64,
    client_disconnects: AtomicU64,
    connections_refused: AtomicU64,
    genai: GenAiMetrics,
    ext: Extensions,
}

/// Label set of the GenAI metrics: operation, model sent upstream, backend.
type GenAiKey = (&'static str, Arc<str>, Arc<str>);

/// The OpenTelemetry GenAI client metrics, per operation, model and backend.
#[derive(Debug, Default)]
struct GenAiMetrics {
    /// `gen_ai.client.operation.duration`, with `error.type` ("" when it succeeded).
    operation: CounterMap<(GenAiKey, &'static str), Histogram>,
    /// `gen_ai.client.token.usage`, with the token type (`input`, `output`).
    tokens: CounterMap<(GenAiKey, &'static str), Histogram>,
    first_token: CounterMap<GenAiKey, Histogram>,
    per_output_token: CounterMap<GenAiKey, Histogram>,
    upstream: CounterMap<Arc<str>, Histogram>,
}

/// Metrics fed by the other subsystems (plugins, governance, shadow, telemetry export)
/// through the registration helpers on [`Metrics`]. Breaker state, per-URL in-flight and
/// health are rendered by `pool` from the live pool; refusals by `governance`.
#[derive(Debug, Default)]
struct Extensions {
    /// Nano-dollars, so that adding is one atomic instruction.
    cost_nano_usd: CounterMap<(Arc<str>, Arc<str>), AtomicU64>,
    plugin_duration: CounterMap<(Arc<str>, &'static str), Histogram>,
    shadow: CounterMap<(Arc<str>, Arc<str>, &'static str), AtomicU64>,
    spans_exported: AtomicU64,
    spans_dropped: AtomicU64,
    span_export_failures: AtomicU64,
}

/// Add `n` to the counter at `key`, creating it on first use (the hot path is a read lock
/// on one shard and an atomic add).
fn bump<K: std::hash::Hash + Eq>(map: &CounterMap<K, AtomicU64>, key: K, n: u64) {
    if let Some(c) = map.get(&key) {
        c.fetch_add(n, Ordering::Relaxed);
        return;
    }
    map.entry(key)
        .or_insert_with(|| AtomicU64::new(0))
        .fetch_add(n, Ordering::Relaxed);
}

/// The histogram at `key`, created with `make` on first use.
fn hist<K: std::hash::Hash + Eq>(
    map: &CounterMap<K, Histogram>,
    key: K,
    make: fn() -> Histogram,
    f: impl FnOnce(&Histogram),
) {
    if let Some(h) = map.get(&key) {
        f(&h);
        return;
    }
    f(&map.entry(key).or_insert_with(make));
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: CounterMap::default(),
            duration: CounterMap::default(),
            overhead: Histogram::new(OVERHEAD_BUCKETS),
            upstream_errors: CounterMap::default(),
            in_flight: AtomicI64::new(0),
            client_disconnects: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            genai: GenAiMetrics::default(),
            ext: Extensions::default(),
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

    /// Finished requests so far by (route, backend), every status together: read by the
    /// console's sampler, never on the request path.
    pub fn request_totals(&self) -> Vec<(Arc<str>, Arc<str>, u64)> {
        let mut sums: std::collections::BTreeMap<RouteBackend, u64> = Default::default();
        for e in self.requests.iter() {
            let (route, backend, _) = e.key();
            *sums.entry((route.clone(), backend.clone())).or_default() +=
                e.value().load(Ordering::Relaxed);
        }
        sums.into_iter().map(|((r, b), n)| (r, b, n)).collect()
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

    /// One upstream GenAI operation (an attempt) ended; `error_type` when it failed.
    pub fn genai_operation(
        &self,
        op: &'static str,
        model: &Arc<str>,
        backend: &Arc<str>,
        error_type: Option<&'static str>,
        took: Duration,
    ) {
        let key = (
            (op, model.clone(), backend.clone()),
            error_type.unwrap_or(""),
        );
        hist(
            &self.genai.operation,
            key,
            || Histogram::new(DURATION_BUCKETS),
            |h| h.observe(took),
        );
    }

    /// Tokens an answer reported (input and output).
    pub fn genai_tokens(&self, op: &'static str, model: &Arc<str>, backend: &Arc<str>, u: Usage) {
        let k = (op, model.clone(), backend.clone());
        let make = || Histogram::counts(TOKEN_BUCKETS);
        hist(&self.genai.tokens, (k.clone(), "input"), make, |h| {
            h.observe_count(u.prompt_tokens)
        });
        hist(&self.genai.tokens, (k, "output"), make, |h| {
            h.observe_count(u.completion_tokens)
        });
    }

    /// A stream's time to first token (from the attempt's start).
    pub fn genai_first_token(
        &self,
        op: &'static str,
        model: &Arc<str>,
        backend: &Arc<str>,
        d: Duration,
    ) {
        let k = (op, model.clone(), backend.clone());
        hist(
            &self.genai.first_token,
            k,
            || Histogram::new(TTFT_BUCKETS),
            |h| h.observe(d),
        );
    }

    /// A stream's average time per output token after the first.
    pub fn genai_time_per_output_token(
        &self,
        op: &'static str,
        model: &Arc<str>,
        backend: &Arc<str>,
        d: Duration,
    ) {
        let k = (op, model.clone(), backend.clone());
        hist(
            &self.genai.per_output_token,
            k,
            || Histogram::new(TPOT_BUCKETS),
            |h| h.observe(d),
        );
    }

    /// Time spent waiting on a backend for one request (answer complete, or first chunk).
    pub fn upstream(&self, backend: &Arc<str>, d: Duration) {
        hist(
            &self.genai.upstream,
            backend.clone(),
            || Histogram::new(DURATION_BUCKETS),
            |h| h.observe(d),
        );
    }

    /// Cost of a request (fed by the ledger), per backend and upstream model.
    pub fn cost(&self, backend: &Arc<str>, model: &Arc<str>, usd: f64) {
        if !(usd.is_finite() && usd > 0.0) {
            return;
        }
        let nano = (usd * 1e9).round() as u64;
        bump(
            &self.ext.cost_nano_usd,
            (backend.clone(), model.clone()),
            nano,
        );
    }

    /// One plugin call's duration, failed or not. (Failures are counted by kind in
    /// `switchyard_plugin_errors_total`, with the plugin runtime's own counters.)
    pub fn plugin_call(&self, plugin: &Arc<str>, stage: &'static str, took: Duration) {
        hist(
            &self.ext.plugin_duration,
            (plugin.clone(), stage),
            || Histogram::new(OVERHEAD_BUCKETS),
            |h| h.observe(took),
        );
    }

    /// One shadow comparison on `route` against the shadow `backend`: `result` is `agree`,
    /// `disagree` or `error`.
    pub fn shadow_result(&self, route: &Arc<str>, backend: &Arc<str>, result: &'static str) {
        bump(
            &self.ext.shadow,
            (route.clone(), backend.clone(), result),
            1,
        );
    }

    pub fn spans_exported(&self, n: u64) {
        self.ext.spans_exported.fetch_add(n, Ordering::Relaxed);
    }

    pub fn spans_dropped(&self, n: u64) {
        self.ext.spans_dropped.fetch_add(n, Ordering::Relaxed);
    }

    pub fn span_export_failed(&self, n: u64) {
        self.ext
            .span_export_failures
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn client_disconnect(&self) {
        self.client_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A client connection closed on accept: `[server] max_connections` were open.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
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
        single(
            &mut out,
            "switchyard_requests_in_flight",
            "gauge",
            "Requests being handled now.",
            self.in_flight.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "switchyard_client_disconnects_total",
            "counter",
            "Streams the client abandoned before the end.",
            self.client_disconnects.load(Ordering::Relaxed),
        );
        single(
            &mut out,
            "switchyard_connections_refused_total",
            "counter",
            "Client connections closed on accept because max_connections were open.",
            self.connections_refused.load(Ordering::Relaxed),
        );
        self.render_genai(&mut out);
        self.render_extensions(&mut out);
        out
    }

    fn render_genai(&self, out: &mut String) {
        let g = &self.genai;
        let genai_labels = |(op, model, backend): &GenAiKey| {
            format!(
                "gen_ai_operation_name=\"{op}\",gen_ai_request_model=\"{}\",backend=\"{}\"",
                escape(model),
                escape(backend)
            )
        };
        header(
            out,
            "gen_ai_client_operation_duration_seconds",
            "histogram",
            "GenAI operation duration: one upstream attempt, to the end of its answer or stream.",
        );
        for e in g.operation.iter() {
            let (k, error) = e.key();
            let mut l = genai_labels(k);
            if !error.is_empty() {
                let _ = write!(l, ",error_type=\"{error}\"");
            }
            e.value()
                .render(out, "gen_ai_client_operation_duration_seconds", &l);
        }
        header(
            out,
            "gen_ai_client_token_usage",
            "histogram",
            "Tokens used per GenAI operation, by token type (input, output).",
        );
        for e in g.tokens.iter() {
            let (k, ty) = e.key();
            let l = format!("{},gen_ai_token_type=\"{ty}\"", genai_labels(k));
            e.value().render(out, "gen_ai_client_token_usage", &l);
        }
        header(
            out,
            "gen_ai_server_time_to_first_token_seconds",
            "histogram",
            "Time from the upstream request to the first chunk of a streamed answer.",
        );
        for e in g.first_token.iter() {
            e.value().render(
                out,
                "gen_ai_server_time_to_first_token_seconds",
                &genai_labels(e.key()),
            );
        }
        header(
            out,
            "gen_ai_server_time_per_output_token_seconds",
            "histogram",
            "Average time per output token after the first, for streamed answers.",
        );
        for e in g.per_output_token.iter() {
            e.value().render(
                out,
                "gen_ai_server_time_per_output_token_seconds",
                &genai_labels(e.key()),
            );
        }
        header(
            out,
            "switchyard_upstream_duration_seconds",
            "histogram",
            "Time waiting on the backend: until the answer was complete, or until the first chunk of a stream.",
        );
        for e in g.upstream.iter() {
            let l = format!("backend=\"{}\"", escape(e.key()));
            e.value()
                .render(out, "switchyard_upstream_duration_seconds", &l);
        }
    }

    fn render_extensions(&self, out: &mut String) {
        let x = &self.ext;
        header(
            out,
            "switchyard_cost_usd_total",
            "counter",
            "Cost of answered requests in US dollars, by backend and upstream model.",
        );
        for e in x.cost_nano_usd.iter() {
            let (backend, model) = e.key();
            let _ = writeln!(
                out,
                "switchyard_cost_usd_total{{backend=\"{}\",model=\"{}\"}} {}",
                escape(backend),
                escape(model),
                e.value().load(Ordering::Relaxed) as f64 / 1e9
            );
        }
        header(
            out,
            "switchyard_plugin_duration_seconds",
            "histogram",
            "Duration of plugin calls, by plugin and stage.",
        );
        for e in x.plugin_duration.iter() {
            let (plugin, stage) = e.key();
            let l = format!("plugin=\"{}\",stage=\"{stage}\"", escape(plugin));
            e.value()
                .render(out, "switchyard_plugin_duration_seconds", &l);
        }
        header(
            out,
            "switchyard_shadow_comparisons_total",
            "counter",
            "Shadow answers compared with the served answer, by route, shadow backend and result (agree, disagree, error).",
        );
        for e in x.shadow.iter() {
            let (route, backend, result) = e.key();
            let _ = writeln!(
                out,
                "switchyard_shadow_comparisons_total{{route=\"{}\",backend=\"{}\",result=\"{result}\"}} {}",
                escape(route),
                escape(backend),
                e.value().load(Ordering::Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "switchyard_telemetry_spans_exported_total",
                "Spans sent to the OTLP collector.",
                &x.spans_exported,
            ),
            (
                "switchyard_telemetry_spans_dropped_total",
                "Spans dropped because the export queue was full.",
                &x.spans_dropped,
            ),
            (
                "switchyard_telemetry_span_export_failures_total",
                "Spans lost because an OTLP export failed.",
                &x.span_export_failures,
            ),
        ] {
            single(out, name, "counter", help, v.load(Ordering::Relaxed));
        }
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family (Prometheus text format); every
/// module that renders metrics goes through this and [`single`].
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric family with one unlabelled sample: its header and its value.
pub(crate) fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
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
pub(crate) fn escape(v: &str) -> String {
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
    fn genai_and_extension_metrics_render() {
        let m = Metrics::default();
        let model: Arc<str> = Arc::from("llama");
        let b: Arc<str> = Arc::from("local");
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 300,
            total_tokens: 310,
        };
        m.genai_tokens("chat", &model, &b, u);
        m.genai_operation(
            "chat",
            &model,
            &b,
            Some("upstream_timeout"),
            Duration::from_secs(3),
        );
        m.cost(&b, &model, 0.25);
        m.cost(&b, &model, 0.5);
        m.shadow_result(&Arc::from("r"), &b, "agree");
        let text = m.render();
        let l = "gen_ai_operation_name=\"chat\",gen_ai_request_model=\"llama\",backend=\"local\"";
        assert!(text.contains(&format!(
            "gen_ai_client_token_usage_bucket{{{l},gen_ai_token_type=\"output\",le=\"1024\"}} 1"
        )));
        assert!(text.contains(&format!(
            "gen_ai_client_token_usage_bucket{{{l},gen_ai_token_type=\"output\",le=\"256\"}} 0"
        )));
        assert!(text.contains(&format!(
            "gen_ai_client_token_usage_sum{{{l},gen_ai_token_type=\"input\"}} 10"
        )));
        assert!(text.contains(&format!(
            "gen_ai_client_operation_duration_seconds_count{{{l},error_type=\"upstream_timeout\"}} 1"
        )));
        assert!(text.contains("switchyard_cost_usd_total{backend=\"local\",model=\"llama\"} 0.75"));
        assert!(text.contains(
            "switchyard_shadow_comparisons_total{route=\"r\",backend=\"local\",result=\"agree\"} 1"
        ));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
