//! `/metrics` in Prometheus text format: request and token counters, the engine's batch,
//! queue and KV cache gauges (blocks of the paged cache, prefix-cache hits, preemptions),
//! time-to-first-token and queue-time histograms, the model load, and span export.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{Response, header};

use super::{AppState, Body, Shared, full};
use crate::trace::Tracer;

/// While the model loads: its progress and the span export.
pub(super) fn loading(sh: &Shared) -> Response<Body> {
    let mut text = String::new();
    sh.load.render(&mut text);
    render_export(&mut text, sh.tracer.as_deref());
    metrics_response(text)
}

/// Once serving: everything.
pub(super) fn serving(st: &AppState, sh: &Shared) -> Response<Body> {
    let m = &st.engine.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // Read once: the ratio and the count in one scrape must agree.
    let (used, capacity) = (g(&m.kv_blocks_used), g(&m.kv_blocks_total));
    let mut text = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: f64| {
        use std::fmt::Write;
        let _ = write!(
            text,
            "# HELP switchyard_worker_{name} {help}\n# TYPE switchyard_worker_{name} {kind}\nswitchyard_worker_{name} {value}\n"
        );
    };
    let c = |a: &AtomicU64| g(a) as f64;
    put(
        "requests_total",
        "counter",
        "Generation requests received.",
        c(&m.requests),
    );
    put(
        "prompt_tokens_total",
        "counter",
        "Prompt tokens processed.",
        c(&m.prompt_tokens),
    );
    put(
        "generation_tokens_total",
        "counter",
        "Tokens generated.",
        c(&m.generated_tokens),
    );
    put(
        "busy_seconds_total",
        "counter",
        "Seconds the engine spent working (forward steps, embeddings): with the token counters, the worker's throughput per second of busy time.",
        g(&m.busy_micros) as f64 / 1e6,
    );
    put(
        "cancelled_total",
        "counter",
        "Requests cancelled by client disconnect.",
        c(&m.cancelled),
    );
    put(
        "engine_steps_total",
        "counter",
        "Batched forward steps.",
        c(&m.steps),
    );
    put(
        "active_sequences",
        "gauge",
        "Sequences in the running batch.",
        c(&m.active),
    );
    put(
        "queued_requests",
        "gauge",
        "Requests waiting for a batch slot.",
        c(&m.queued),
    );
    put(
        "kv_cache_tokens",
        "gauge",
        "Tokens held in the KV cache for running sequences.",
        c(&m.kv_tokens),
    );
    put(
        "kv_cache_blocks_used",
        "gauge",
        "Blocks of the paged KV cache held by running sequences (16 tokens each).",
        used as f64,
    );
    put(
        "kv_cache_blocks_capacity",
        "gauge",
        "Blocks in the paged KV cache (--kv-cache-mb).",
        capacity as f64,
    );
    put(
        "kv_cache_usage_ratio",
        "gauge",
        "KV cache use: blocks held over blocks in the cache.",
        used as f64 / capacity.max(1) as f64,
    );
    put(
        "prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache when a request joined the batch.",
        c(&m.prefix_queried),
    );
    put(
        "prefix_cache_hits_total",
        "counter",
        "Prompt tokens whose keys and values came from the prefix cache instead of being computed.",
        c(&m.prefix_hits),
    );
    put(
        "preemptions_total",
        "counter",
        "Sequences preempted for KV cache space, to be recomputed.",
        c(&m.preemptions),
    );
    put(
        "generation_tokens_per_second",
        "gauge",
        "Tokens generated per second over the last second of work (0 when idle).",
        f64::from_bits(g(&m.tokens_per_second)),
    );
    m.ttft.render(
        &mut text,
        "switchyard_worker_time_to_first_token_seconds",
        "Time from a request's arrival to its first generated token.",
    );
    m.queue_time.render(
        &mut text,
        "switchyard_worker_queue_time_seconds",
        "Time a request waited for a slot in the running batch.",
    );
    sh.load.render(&mut text);
    render_export(&mut text, sh.tracer.as_deref());
    metrics_response(text)
}

fn metrics_response(text: String) -> Response<Body> {
    let mut r = Response::new(full(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// The span export counters, when tracing.
fn render_export(out: &mut String, tracer: Option<&Tracer>) {
    use std::fmt::Write;
    let Some(t) = tracer else { return };
    let c = &t.counters;
    let _ = write!(
        out,
        "# HELP switchyard_worker_spans_exported_total Trace spans the OTLP collector accepted.\n# TYPE switchyard_worker_spans_exported_total counter\nswitchyard_worker_spans_exported_total {}\n\
# HELP switchyard_worker_spans_dropped_total Trace spans dropped because the export queue was full.\n# TYPE switchyard_worker_spans_dropped_total counter\nswitchyard_worker_spans_dropped_total {}\n\
# HELP switchyard_worker_span_export_failures_total Trace spans lost to failed exports.\n# TYPE switchyard_worker_span_export_failures_total counter\nswitchyard_worker_span_export_failures_total {}\n",
        c.exported.load(Ordering::Relaxed),
        c.dropped.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
    );
}
